//! The Yjs binary protocol (y-protocols' sync, awareness and auth messages, as the stock
//! y-websocket provider speaks it), without I/O: what a client's frame asks of a room, and the
//! room's answers as frames.
//!
//! Message types and their lib0 encoding are `yrs::sync`'s; this module adds what a server must
//! decide about them: size limits before anything is decoded, which messages a room serves and
//! which it ignores (as y-websocket's server does), and how a Concord presence looks to a Yjs
//! client (an awareness entry with `user: {name, color}`, the convention of y-codemirror.next
//! and Tiptap) and back.
//!
//! Updates stay v1 here: converting to the room's v2 decodes the update, which is CRDT work
//! for the room's worker ([`crate::doc::update_v1_to_v2`]), not for whoever reads the socket.

use std::sync::Arc;

use serde_json::Value;
use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use crate::error::{EngineError, Result};
use crate::wire::{Limits, Presence, YjsAwareness};

/// What one y-protocols frame from a client asks.
#[derive(Debug, Clone, PartialEq)]
pub enum YjsRequest {
    /// Sync step 1: the client's state vector (v1); answer with what it lacks.
    SyncStep1(Vec<u8>),
    /// Sync step 2 or an update: v1 bytes, not yet decoded.
    Update(Vec<u8>),
    /// The client's awareness (decoded; the entries' JSON is not).
    Awareness(AwarenessUpdate),
    /// The client asks for every awareness state.
    QueryAwareness,
    /// A message a server ignores (auth sent by a client, a custom type).
    Ignored,
}

/// Decodes one binary frame of the y-websocket protocol. Sizes are checked before decoding.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<YjsRequest> {
    if frame.len() > limits.max_frame_bytes {
        return Err(EngineError::TooLarge {
            what: "frame",
            len: frame.len(),
            max: limits.max_frame_bytes,
        });
    }
    let msg = Message::decode_v1(frame).map_err(|e| EngineError::MalformedMessage {
        reason: format!("not a y-protocols message: {e}"),
    })?;
    request(msg, limits)
}

/// What a decoded message asks, with its sizes checked against `limits`.
pub fn request(msg: Message, limits: &Limits) -> Result<YjsRequest> {
    Ok(match msg {
        Message::Sync(SyncMessage::SyncStep1(sv)) => YjsRequest::SyncStep1(sv.encode_v1()),
        Message::Sync(SyncMessage::SyncStep2(update))
        | Message::Sync(SyncMessage::Update(update)) => {
            if update.len() > limits.max_update_bytes {
                return Err(EngineError::TooLarge {
                    what: "update",
                    len: update.len(),
                    max: limits.max_update_bytes,
                });
            }
            YjsRequest::Update(update)
        }
        Message::Awareness(update) => {
            let len: usize = update.clients.values().map(|e| e.json.len() + 16).sum();
            if len > limits.max_presence_bytes {
                return Err(EngineError::TooLarge {
                    what: "awareness",
                    len,
                    max: limits.max_presence_bytes,
                });
            }
            YjsRequest::Awareness(update)
        }
        Message::AwarenessQuery => YjsRequest::QueryAwareness,
        Message::Auth(_) | Message::Custom(..) => YjsRequest::Ignored,
    })
}

/// Sync step 1 with the room's state vector (v1 bytes), which the server sends first, as
/// y-websocket's server does: a client that was offline learns what the room lacks.
pub fn sync_step1(sv: &[u8]) -> Result<Vec<u8>> {
    let sv = StateVector::decode_v1(sv).map_err(|e| EngineError::InvalidStateVector {
        reason: e.to_string(),
    })?;
    Ok(Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1())
}

/// Sync step 2: what the client lacks (a v1 update).
pub fn sync_step2(update_v1: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep2(update_v1)).encode_v1()
}

/// An update for the client (v1).
pub fn update(update_v1: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update_v1)).encode_v1()
}

/// "Permission denied": the client's update was refused (read-only access).
pub fn permission_denied(reason: &str) -> Vec<u8> {
    Message::Auth(Some(reason.to_owned())).encode_v1()
}

/// An awareness message carrying these presences, each as one awareness entry.
pub fn awareness(presences: &[&Presence]) -> Vec<u8> {
    let entries: Vec<_> = presences.iter().map(|p| awareness_entry(p, None)).collect();
    awareness_message(&entries)
}

/// An awareness message carrying these entries: one y-protocols awareness update, which holds
/// any number of clients.
pub fn awareness_message<'a>(
    entries: impl IntoIterator<Item = &'a (ClientID, AwarenessUpdateEntry)>,
) -> Vec<u8> {
    let clients = entries
        .into_iter()
        .map(|(client, entry)| (*client, entry.clone()))
        .collect();
    Message::Awareness(AwarenessUpdate { clients }).encode_v1()
}

/// The awareness client id a Concord client's presence appears under: a stable hash of its
/// server-given user id, inside the 32-bit range Yjs uses for client ids.
pub fn presence_client_id(user: &str) -> u64 {
    // FNV-1a: stable across instances and releases (std's hasher is neither).
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

/// One presence as an awareness entry (client id and entry), for [`awareness_message`]. A Yjs
/// client's own state goes back out as it came; a Concord client's becomes
/// `{"user":{"name","color"},"concordCursor":...}`, with its clock taken from the presence, plus
/// `cursor` when given: its offsets as relative positions into `body`, which the room maps
/// ([`crate::awareness::offsets_to_relative`]); Yjs bindings read `cursor` as relative
/// positions, never as offsets.
pub fn awareness_entry(p: &Presence, cursor: Option<&Value>) -> (ClientID, AwarenessUpdateEntry) {
    if let Some(y) = &p.yjs {
        let json: Arc<str> = if p.left {
            "null".into()
        } else {
            y.state.as_str().into()
        };
        let clock = if p.left {
            y.clock.saturating_add(1)
        } else {
            y.clock
        };
        return (
            ClientID::new(y.client),
            AwarenessUpdateEntry { clock, json },
        );
    }
    let json: Arc<str> = if p.left {
        "null".into()
    } else {
        let mut user = serde_json::Map::new();
        if let Some(name) = &p.name {
            user.insert("name".into(), Value::String(name.clone()));
        }
        if let Some(color) = &p.color {
            user.insert("color".into(), Value::String(color.clone()));
        }
        let mut state = serde_json::Map::new();
        state.insert("user".into(), Value::Object(user));
        if let Some(cursor) = &p.cursor {
            state.insert("concordCursor".into(), cursor.clone());
        }
        if let Some(cursor) = cursor {
            state.insert("cursor".into(), cursor.clone());
        }
        Value::Object(state).to_string().into()
    };
    (
        ClientID::new(presence_client_id(&p.user)),
        AwarenessUpdateEntry {
            clock: p.clock,
            json,
        },
    )
}

/// The presence a Yjs client's awareness entry stands for, on connection `user` (the server's
/// id for it). `None` for an entry whose JSON is not an object or `null`.
///
/// `name` is the connection's authenticated name, if any: it replaces `user.name` in the state
/// itself, which is relayed to Yjs clients as it came, so no one shows under a name that is
/// not theirs.
pub fn presence_of(
    user: &str,
    client: u64,
    entry: &AwarenessUpdateEntry,
    name: Option<&str>,
) -> Option<Presence> {
    let mut state: Value = serde_json::from_str(&entry.json).ok()?;
    let left = state.is_null();
    if !left && !state.is_object() {
        return None;
    }
    let mut json = None;
    if let (Some(name), Some(fields)) = (name, state.as_object_mut()) {
        let who = fields
            .entry("user")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !who.is_object() {
            *who = Value::Object(serde_json::Map::new());
        }
        if let Some(who) = who.as_object_mut() {
            who.insert("name".into(), Value::String(name.to_owned()));
        }
        json = Some(state.to_string());
    }
    let field = |key: &str| {
        state
            .get("user")
            .and_then(|u| u.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(Presence {
        user: user.to_owned(),
        name: field("name"),
        color: field("color"),
        left,
        clock: entry.clock,
        yjs: Some(YjsAwareness {
            client,
            clock: entry.clock,
            state: if left {
                "null".to_owned()
            } else {
                json.unwrap_or_else(|| entry.json.to_string())
            },
        }),
        ..Presence::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn sync_messages_round_trip() {
        let sv = crate::Document::new(1).state_vector();
        let step1 = sync_step1(&sv).unwrap();
        assert_eq!(
            decode(&step1, &limits()).unwrap(),
            YjsRequest::SyncStep1(sv.clone())
        );
        let u = vec![0, 0];
        assert_eq!(
            decode(&update(u.clone()), &limits()).unwrap(),
            YjsRequest::Update(u.clone())
        );
        assert_eq!(
            decode(&sync_step2(u.clone()), &limits()).unwrap(),
            YjsRequest::Update(u)
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let l = limits();
        for frame in [
            &[][..],
            &[0],
            &[0, 9],
            &[
                0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            &[0, 1, 0xff, 0xff, 0xff, 0x7f],
            &[1, 5, 1, 2, 3],
        ] {
            assert!(decode(frame, &l).is_err(), "{frame:?}");
        }
        assert_eq!(decode(&[3], &l).unwrap(), YjsRequest::QueryAwareness);
        assert_eq!(decode(&[2, 1], &l).unwrap(), YjsRequest::Ignored);
        let big = vec![0u8; l.max_frame_bytes + 1];
        assert!(matches!(
            decode(&big, &l),
            Err(EngineError::TooLarge { .. })
        ));
    }

    /// A v1 update of one `Any` item in `body` whose value is `depth` nested one-element arrays.
    fn nested_any_v1(depth: usize) -> Vec<u8> {
        let mut u = vec![1, 1, 7, 0, 8, 1, 4];
        u.extend_from_slice(b"body");
        u.push(1);
        for _ in 0..depth {
            u.extend_from_slice(&[117, 1]);
        }
        u.extend_from_slice(&[127, 0]);
        u
    }

    #[test]
    fn v1_updates_are_bounded_before_yrs_decodes_them() {
        use crate::doc::update_v1_to_v2;
        let ok = update_v1_to_v2(&nested_any_v1(3)).expect("a shallow value converts");
        let mut doc = crate::Document::new(9);
        assert!(doc.apply_update(&ok).unwrap().changed);
        // Unchecked, yrs's v1 decoder recurses once per level and overflows the stack.
        for depth in [100, 1_000_000] {
            let err = update_v1_to_v2(&nested_any_v1(depth)).unwrap_err();
            assert!(err.to_string().contains("nests values"), "{err}");
        }
        for garbage in [&[][..], &[1], &[1, 1, 7, 0, 0xff], &[0xff; 12]] {
            assert!(update_v1_to_v2(garbage).is_err(), "{garbage:?}");
        }
    }

    /// With auth on, the name in a Yjs client's own state is the authenticated one: the state
    /// is relayed to Yjs clients as it came, so the claim must not survive in it.
    #[test]
    fn an_authenticated_name_replaces_the_claimed_one() {
        let entry = AwarenessUpdateEntry {
            clock: 2,
            json: r##"{"user":{"name":"CEO (trust me)","color":"#f00"},"cursor":null}"##.into(),
        };
        let p = presence_of("y-1", 77, &entry, Some("Mallory")).unwrap();
        assert_eq!(p.name.as_deref(), Some("Mallory"));
        let state: Value = serde_json::from_str(&p.yjs.unwrap().state).unwrap();
        assert_eq!(state["user"]["name"], "Mallory");
        assert_eq!(state["user"]["color"], "#f00", "the rest is kept");
        for json in [r#"{"user":"CEO"}"#, "{}"] {
            let entry = AwarenessUpdateEntry {
                clock: 1,
                json: json.into(),
            };
            let p = presence_of("y-1", 77, &entry, Some("Mallory")).unwrap();
            assert!(
                p.yjs.unwrap().state.contains(r#""name":"Mallory""#),
                "{json}"
            );
        }
        // Auth off: relayed as it came.
        let p = presence_of("y-1", 77, &entry, None).unwrap();
        assert_eq!(p.yjs.unwrap().state, entry.json.to_string());
    }

    #[test]
    fn presences_become_awareness_and_back() {
        let p = Presence {
            user: "c-1".into(),
            name: Some("Ada".into()),
            color: Some("#123456".into()),
            clock: 3,
            ..Presence::default()
        };
        let frame = awareness(&[&p]);
        let YjsRequest::Awareness(update) = decode(&frame, &limits()).unwrap() else {
            panic!("awareness expected");
        };
        let (client, entry) = update.clients.iter().next().unwrap();
        assert_eq!(client.get(), presence_client_id("c-1"));
        assert_eq!(entry.clock, 3);
        let back = presence_of("y-1", client.get(), entry, None).unwrap();
        assert_eq!(back.name.as_deref(), Some("Ada"));
        assert_eq!(back.color.as_deref(), Some("#123456"));
        // A Yjs client's own state is relayed verbatim; leaving bumps the clock.
        let mut gone = back.clone();
        gone.left = true;
        let YjsRequest::Awareness(update) = decode(&awareness(&[&gone]), &limits()).unwrap() else {
            panic!("awareness expected");
        };
        let entry = update.clients.values().next().unwrap();
        assert_eq!((&*entry.json, entry.clock), ("null", 4));
    }

    #[test]
    fn one_awareness_message_carries_many_entries_and_a_mapped_cursor() {
        let a = Presence {
            user: "c-a".into(),
            name: Some("Ada".into()),
            cursor: Some(serde_json::json!(3)),
            clock: 2,
            ..Presence::default()
        };
        let b = Presence {
            user: "c-b".into(),
            clock: 5,
            ..Presence::default()
        };
        let rel = serde_json::json!({"type": null, "tname": "body", "item": {"client": 1, "clock": 3}, "assoc": 0});
        let cursor = serde_json::json!({ "anchor": rel, "head": rel });
        let entries = [
            awareness_entry(&a, Some(&cursor)),
            awareness_entry(&b, None),
        ];
        let YjsRequest::Awareness(update) =
            decode(&awareness_message(&entries), &limits()).unwrap()
        else {
            panic!("awareness expected");
        };
        assert_eq!(update.clients.len(), 2);
        let entry = &update.clients[&ClientID::new(presence_client_id("c-a"))];
        let state: Value = serde_json::from_str(&entry.json).unwrap();
        assert_eq!(state["cursor"], cursor);
        assert_eq!(state["concordCursor"], 3);
        assert_eq!(state["user"]["name"], "Ada");
        let entry = &update.clients[&ClientID::new(presence_client_id("c-b"))];
        assert_eq!(entry.clock, 5);
        assert!(!entry.json.contains("cursor"));
    }
}
