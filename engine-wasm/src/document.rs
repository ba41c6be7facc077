//! `Document`: a collaborative plain text, edited at UTF-16 offsets (the offsets of
//! `textarea.selectionStart` and of CodeMirror).

use wasm_bindgen::prelude::*;

use crate::convert::{client_id, error, to_js};
use crate::Result;

/// A collaborative text. Every edit returns its update (`Uint8Array`, Yjs v2 encoding) to send
/// to peers; `applyUpdate` merges theirs.
///
/// ```js
/// const a = new Document(1), b = new Document(2);
/// b.applyUpdate(a.insert(0, 'hello'));
/// b.text(); // 'hello'
/// ```
#[wasm_bindgen]
pub struct Document {
    inner: concord_engine::Document,
}

#[wasm_bindgen]
impl Document {
    /// A new empty document. `clientId` must be unique per replica (draw it with
    /// `crypto.getRandomValues`), an integer below 2^53.
    #[wasm_bindgen(constructor)]
    pub fn new(client_id_value: f64) -> Result<Document> {
        let mut inner = concord_engine::Document::new(client_id(client_id_value)?);
        inner.index_positions();
        Ok(Document { inner })
    }

    /// A document loaded from a full-state update.
    #[wasm_bindgen(js_name = fromUpdate)]
    pub fn from_update(client_id_value: f64, update: &[u8]) -> Result<Document> {
        let mut inner = concord_engine::Document::from_update(client_id(client_id_value)?, update)
            .map_err(error)?;
        inner.index_positions();
        Ok(Document { inner })
    }

    /// This replica's client id.
    #[wasm_bindgen(getter, js_name = clientId)]
    pub fn client_id(&self) -> f64 {
        self.inner.client_id() as f64
    }

    /// The text.
    pub fn text(&self) -> String {
        self.inner.text()
    }

    /// Length in UTF-16 units (as `String.prototype.length`).
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> u32 {
        self.inner.len()
    }

    /// Inserts at a UTF-16 offset; returns the update.
    pub fn insert(&mut self, index: u32, text: &str) -> Result<Vec<u8>> {
        self.inner.insert(index, text).map_err(error)
    }

    /// Deletes `length` UTF-16 units at `index`; returns the update.
    pub fn delete(&mut self, index: u32, length: u32) -> Result<Vec<u8>> {
        self.inner.delete(index, length).map_err(error)
    }

    /// Replaces a range in one transaction; returns the update.
    pub fn replace(&mut self, index: u32, length: u32, text: &str) -> Result<Vec<u8>> {
        self.inner.replace(index, length, text).map_err(error)
    }

    /// The state vector (v1, as `Y.encodeStateVector`).
    #[wasm_bindgen(js_name = stateVector)]
    pub fn state_vector(&self) -> Vec<u8> {
        self.inner.state_vector()
    }

    /// What a peer with state vector `sv` lacks (everything without one), v2 encoded
    /// (as `Y.encodeStateAsUpdateV2`).
    #[wasm_bindgen(js_name = encodeStateAsUpdate)]
    pub fn encode_state_as_update(&self, sv: Option<Vec<u8>>) -> Result<Vec<u8>> {
        self.inner
            .encode_state_as_update(sv.as_deref())
            .map_err(error)
    }

    /// Applies a peer's v2 update; returns `{changed, pending}`.
    #[wasm_bindgen(js_name = applyUpdate)]
    pub fn apply_update(&mut self, update: &[u8]) -> Result<JsValue> {
        let applied = self.inner.apply_update(update).map_err(error)?;
        to_js(&Applied {
            changed: applied.changed,
            pending: applied.pending,
        })
    }

    /// Applies several v2 updates at once (merged, then integrated in one transaction: yrs pays
    /// per transaction, so a queue of incoming updates is much cheaper this way); returns
    /// `{changed, pending}`. Nothing is applied if one of them does not decode.
    ///
    /// ```js
    /// doc.applyUpdates(queued); // e.g. every update received since the last animation frame
    /// ```
    #[wasm_bindgen(js_name = applyUpdates)]
    pub fn apply_updates(&mut self, updates: Vec<js_sys::Uint8Array>) -> Result<JsValue> {
        let updates: Vec<Vec<u8>> = updates.iter().map(|u| u.to_vec()).collect();
        let applied = self.inner.apply_updates(&updates).map_err(error)?;
        to_js(&Applied {
            changed: applied.changed,
            pending: applied.pending,
        })
    }
}

#[derive(serde::Serialize)]
struct Applied {
    changed: bool,
    pending: bool,
}

impl Document {
    /// The engine document (for Rust callers and tests).
    pub fn engine(&self) -> &concord_engine::Document {
        &self.inner
    }
}
