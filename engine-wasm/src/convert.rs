//! Conversions between engine values and JavaScript values, in one place.

use concord_engine::client::ClientEvent;
use concord_engine::{EngineError, SessionStatus};
use serde::Serialize;
use wasm_bindgen::JsValue;

/// An engine error as a JS `Error` whose `code` is the engine's stable code
/// (`invalid_update`, `out_of_bounds`, ...).
pub fn error(err: EngineError) -> JsValue {
    coded(err.code(), &err.to_string())
}

/// A JS `Error` with a `code`.
pub fn coded(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

/// JavaScript numbers hold 53-bit integers; client ids are 53-bit too.
pub fn client_id(id: f64) -> crate::Result<u64> {
    if id.is_finite()
        && id >= 0.0
        && id.fract() == 0.0
        && id <= concord_engine::doc::MAX_CLIENT_ID as f64
    {
        Ok(id as u64)
    } else {
        Err(coded(
            "bad_client_id",
            "client id must be an integer in 0..2^53",
        ))
    }
}

/// `online` / `connecting` / `offline`.
pub fn status(status: SessionStatus) -> &'static str {
    match status {
        SessionStatus::Online => "online",
        SessionStatus::Connecting => "connecting",
        SessionStatus::Offline => "offline",
    }
}

/// A session event as a plain JS object: `{type: 'synced', seq}`,
/// `{type: 'remote', changed, changes: [{index, delete, insert}]}`,
/// `{type: 'acked', id, seq}`, `{type: 'presence', presence}`, `{type: 'access', role}`,
/// `{type: 'error', code, message}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum JsEvent<'a> {
    Synced {
        seq: u64,
    },
    Remote {
        changed: bool,
        changes: &'a [concord_engine::TextChange],
    },
    Acked {
        id: &'a str,
        seq: u64,
    },
    Presence {
        presence: &'a concord_engine::wire::Presence,
    },
    Access {
        role: &'static str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
}

/// Converts a session event to a JS object.
pub fn event(ev: &ClientEvent) -> crate::Result<JsValue> {
    let js = match ev {
        ClientEvent::Synced { seq } => JsEvent::Synced { seq: *seq },
        ClientEvent::RemoteUpdate { changed, changes } => JsEvent::Remote {
            changed: *changed,
            changes,
        },
        ClientEvent::Acked { id, seq } => JsEvent::Acked { id, seq: *seq },
        ClientEvent::Presence(p) => JsEvent::Presence { presence: p },
        ClientEvent::Access { role } => JsEvent::Access {
            role: role.as_str(),
        },
        ClientEvent::ServerError { code, message } => JsEvent::Error { code, message },
    };
    to_js(&js)
}

/// Any serializable value as a plain JS object (maps as objects, u64 as numbers).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> crate::Result<JsValue> {
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true);
    value
        .serialize(&serializer)
        .map_err(|e| coded("conversion", &e.to_string()))
}
