//! `ClientSession`: the browser's replica with its pending ops and connection state.

use wasm_bindgen::prelude::*;

use crate::convert::{client_id, error, event, status};
use crate::Result;

/// One replica with its offline queue. Feed it the socket's frames, send what it polls out.
///
/// ```js
/// const s = new ClientSession(clientId, 'tab-1');
/// s.insert(0, 'hi'); s.flush();
/// const ws = new WebSocket(`${base}/rooms/demo/ws?sv=${encodeURIComponent(s.connect())}`);
/// ws.onmessage = (e) => {
///   s.handleFrame(e.data);
///   for (let f; (f = s.pollTransmit()) !== undefined;) ws.send(f);
///   for (let ev; (ev = s.pollEvent()) !== undefined;) console.log(ev);
/// };
/// ws.onclose = () => s.disconnect();
/// ```
#[wasm_bindgen]
pub struct ClientSession {
    inner: concord_engine::ClientSession,
}

#[wasm_bindgen]
impl ClientSession {
    /// A new session. `clientId`: random, below 2^53, unique per replica; `session`: a unique
    /// prefix for op ids.
    #[wasm_bindgen(constructor)]
    pub fn new(client_id_value: f64, session: &str) -> Result<ClientSession> {
        let mut inner = concord_engine::ClientSession::new(client_id(client_id_value)?, session);
        inner.track_changes();
        Ok(ClientSession { inner })
    }

    /// Restores a session saved with `exportState` (e.g. from IndexedDB). `clientId` must be
    /// fresh, never the saved session's.
    #[wasm_bindgen(js_name = importState)]
    pub fn import_state(
        client_id_value: f64,
        session: &str,
        saved: &[u8],
    ) -> Result<ClientSession> {
        let mut inner = concord_engine::ClientSession::import_state(
            client_id(client_id_value)?,
            session,
            saved,
        )
        .map_err(error)?;
        inner.track_changes();
        Ok(ClientSession { inner })
    }

    /// Folds another saved session (another tab's record of the same room) into this one: its
    /// text is merged in and its unsent edits are resent after the next sync.
    #[wasm_bindgen(js_name = mergeSaved)]
    pub fn merge_saved(&mut self, saved: &[u8]) -> Result<()> {
        self.inner.merge_saved(saved).map_err(error)
    }

    /// The document and pending ops as bytes, for IndexedDB.
    #[wasm_bindgen(js_name = exportState)]
    pub fn export_state(&mut self) -> Result<Vec<u8>> {
        self.inner.export_state().map_err(error)
    }

    /// The text.
    pub fn text(&self) -> String {
        self.inner.text()
    }

    /// Length in UTF-16 units.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> u32 {
        self.inner.document().len()
    }

    /// `online`, `connecting` or `offline`.
    #[wasm_bindgen(getter)]
    pub fn status(&self) -> String {
        status(self.inner.status()).to_owned()
    }

    /// `write`, or `read` after the server said so: local edits then throw (`code`
    /// `read_only`) and nothing is queued.
    #[wasm_bindgen(getter)]
    pub fn role(&self) -> String {
        self.inner.role().as_str().to_owned()
    }

    /// Ops not yet acknowledged as durable by the server.
    #[wasm_bindgen(getter, js_name = pendingCount)]
    pub fn pending_count(&self) -> u32 {
        self.inner.pending_count() as u32
    }

    /// Inserts at a UTF-16 offset (queued until `flush`).
    pub fn insert(&mut self, index: u32, text: &str) -> Result<()> {
        self.inner.insert(index, text).map_err(error)
    }

    /// Deletes at a UTF-16 offset (queued until `flush`).
    pub fn delete(&mut self, index: u32, length: u32) -> Result<()> {
        self.inner.delete(index, length).map_err(error)
    }

    /// Replaces a UTF-16 range (queued until `flush`).
    pub fn replace(&mut self, index: u32, length: u32, text: &str) -> Result<()> {
        self.inner.replace(index, length, text).map_err(error)
    }

    /// Turns the edits since the last flush into one op (call once per animation frame).
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(error)
    }

    /// A socket is opening: returns the base64 state vector for the `?sv=` query parameter.
    pub fn connect(&mut self) -> String {
        self.inner.connect()
    }

    /// The socket closed.
    pub fn disconnect(&mut self) {
        self.inner.disconnect()
    }

    /// Feeds one text frame from the server.
    #[wasm_bindgen(js_name = handleFrame)]
    pub fn handle_frame(&mut self, frame: &str) -> Result<()> {
        self.inner.handle_frame(frame).map_err(error)
    }

    /// Feeds a burst of text frames in order (e.g. everything that arrived since the last
    /// task): consecutive `op` frames are applied as one update with one `remote` event, which
    /// is much cheaper than one `handleFrame` each. Throws the first error after processing all.
    #[wasm_bindgen(js_name = handleFrames)]
    pub fn handle_frames(&mut self, frames: Vec<String>) -> Result<()> {
        self.inner.handle_frames(&frames).map_err(error)
    }

    /// The next frame to send (a JSON string), or `undefined`.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.inner.poll_transmit().map(|m| m.to_json())
    }

    /// The next event, or `undefined`.
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Result<JsValue> {
        match self.inner.poll_event() {
            Some(ev) => event(&ev),
            None => Ok(JsValue::UNDEFINED),
        }
    }

    /// Sets this client's presence: `{user, cursor?, color?, name?}`. Sent when online and
    /// again after every reconnect.
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(&mut self, presence: JsValue) -> Result<()> {
        let presence = serde_wasm_bindgen::from_value(presence)
            .map_err(|e| crate::convert::coded("bad_presence", &e.to_string()))?;
        self.inner.set_presence(presence);
        Ok(())
    }

    /// The state vector (v1).
    #[wasm_bindgen(js_name = stateVector)]
    pub fn state_vector(&self) -> Vec<u8> {
        self.inner.document().state_vector()
    }

    /// What a peer with state vector `sv` lacks (everything without one), v2 encoded.
    #[wasm_bindgen(js_name = encodeStateAsUpdate)]
    pub fn encode_state_as_update(&self, sv: Option<Vec<u8>>) -> Result<Vec<u8>> {
        self.inner
            .document()
            .encode_state_as_update(sv.as_deref())
            .map_err(error)
    }
}

impl ClientSession {
    /// The engine session (for Rust callers and tests).
    pub fn engine(&self) -> &concord_engine::ClientSession {
        &self.inner
    }
}
