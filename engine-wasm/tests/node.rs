//! The WebAssembly suite in Node: `wasm-pack test --node engine-wasm`.
//!
//! `browser.rs` runs the same tests in headless Chromium; the tests themselves live in `suite/`
//! and go through the exported API only (`concord_wasm::Document`, `ClientSession`).
//! wasm-bindgen-test picks the runtime per test binary (`wasm_bindgen_test_configure!`), so one
//! binary per runtime is what lets plain `wasm-pack test --node` and `wasm-pack test --chrome`
//! each run everything. Native builds compile neither: the skin calls into JavaScript.
#![cfg(target_arch = "wasm32")]

mod suite;
