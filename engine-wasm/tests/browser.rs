//! The WebAssembly suite in a browser: `wasm-pack test --headless --chrome engine-wasm`
//! (`scripts/test-wasm.sh` passes Debian's chromedriver and `tests/webdriver.json`).
//!
//! The same tests as `node.rs`, from `suite/`; only the runtime differs.
#![cfg(target_arch = "wasm32")]

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

mod suite;
