//! Concord's engine in the browser and in Node: a thin `wasm-bindgen` skin over
//! `concord-engine`, in the manner of `ywasm` over `yrs`.
//!
//! # Layout
//! - [`document`]: `Document`, a collaborative text addressed in UTF-16 offsets.
//! - [`session`]: `ClientSession`, pending ops, offline queue and reconnection replay.
//! - [`convert`]: the one place where Rust values become JS values and errors become JS
//!   `Error`s with a `code`.
//!
//! There is no logic here: every decision is the engine's. Names are camelCase, bytes cross as
//! `Uint8Array`, objects through `serde-wasm-bindgen`.
//!
//! ```js
//! import init, { ClientSession } from './pkg/concord_wasm.js';
//! await init();
//! const session = new ClientSession(clientId, 'tab-1');
//! const ws = new WebSocket(`${url}/rooms/demo/ws?sv=${encodeURIComponent(session.connect())}`);
//! ws.onmessage = (e) => { session.handleFrame(e.data); drain(); };
//! ```

pub mod convert;
pub mod document;
pub mod session;

pub use document::Document;
pub use session::ClientSession;

/// Results crossing into JavaScript: errors are JS `Error`s with a `code` property.
pub type Result<T> = std::result::Result<T, wasm_bindgen::JsValue>;
