//! The JSON wire protocol (text frames on `GET /rooms/{id}/ws`), as typed messages.
//!
//! Parsing is two-step on purpose: serde reads the JSON shape into `Raw*` structs with string
//! fields, then [`ClientMessage::parse`] / [`ServerMessage::parse`] check sizes and decode base64
//! into bytes. That way every malformed input maps to a specific [`EngineError`] (bad JSON, bad
//! base64 in which field, too large) instead of one opaque serde error, and nothing downstream
//! ever sees base64.
//!
//! Message tags are the constants in [`tag`]; `web/src` mirrors them, and the golden tests at the
//! bottom of this file pin the exact JSON.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EngineError, Result};

/// The `t` values of the protocol.
pub mod tag {
    /// Full or differential state, always the first server frame.
    pub const SYNC: &str = "sync";
    /// One update.
    pub const OP: &str = "op";
    /// An op id is durable.
    pub const ACK: &str = "ack";
    /// Ephemeral cursor / who-is-here data.
    pub const PRESENCE: &str = "presence";
    /// Something was rejected.
    pub const ERROR: &str = "error";
}

/// Standard base64 (what `btoa` produces); padding is accepted but not required on input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as standard padded base64.
pub fn encode_b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64 (padded or not); `field` names the JSON field for the error.
pub fn decode_b64(field: &'static str, text: &str) -> Result<Vec<u8>> {
    B64.decode(text)
        .map_err(|_| EngineError::BadBase64 { field })
}

/// Size limits, enforced before any decoding work. The defaults allow multi-megabyte pastes
/// and long offline replays (peers that cap frames at 1 MB lose exactly those) while bounding
/// what one frame can cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest text frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Largest decoded update accepted, in bytes.
    pub max_update_bytes: usize,
    /// Largest presence frame, in bytes (presence is relayed to every peer).
    pub max_presence_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024 * 1024,
            max_update_bytes: 12 * 1024 * 1024,
            max_presence_bytes: 4 * 1024,
        }
    }
}

/// An `op` frame as the server writes it (`t` first), read without the tagged enum: serde
/// buffers an internally tagged object, base64 included, before it can pick the variant, which
/// was a seventh of a client's cost per remote op. `None` when `text` is not such a frame; the
/// general parse then reads it (and agrees: `an_op_frame_parses_the_same_on_both_paths`).
fn parse_op_fast(text: &str) -> Option<Result<ServerMessage>> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(default)]
        seq: u64,
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        update: Cow<'a, str>,
    }
    if !text.starts_with(r#"{"t":"op","#) {
        return None;
    }
    let frame: Frame = serde_json::from_str(text).ok()?;
    if frame.t != "op" {
        return None;
    }
    Some(
        decode_b64("data.update", &frame.data.update).map(|update| ServerMessage::Op {
            seq: frame.seq,
            update,
        }),
    )
}

/// The payload of an `op` frame: `{"update":"<b64 v2>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RawOpData {
    update: String,
}

/// Presence: ephemeral, relayed to the room, never stored in the document.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Presence {
    /// Who: set by the server from the connection (whatever a client puts here is replaced),
    /// so no one can speak or leave for someone else.
    pub user: String,
    /// Where: an offset, or `{anchor, head}`, or whatever the client's binding uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Value>,
    /// Display color, e.g. `#2DD4BF`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// True in the frame that says this user has left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    /// True in the frame the server sends a connection right after its `sync`, naming the
    /// `user` id its own presence carries (so it can tell its own frames from others').
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub you: bool,
    /// Set by the server: rises with every change of this presence, so Yjs clients (whose
    /// awareness keeps the entry with the highest clock) take the latest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock: u32,
    /// Set by the server for a Yjs client's awareness entry: relayed to Yjs clients as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yjs: Option<YjsAwareness>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_seq(n: &u64) -> bool {
    *n == 0
}

/// A Yjs client's awareness entry, carried inside its [`Presence`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct YjsAwareness {
    /// Its awareness client id (the Yjs document's client id).
    pub client: u64,
    /// Its awareness clock.
    pub clock: u32,
    /// Its state, JSON text (`null` once it left).
    pub state: String,
}

/// A client frame's kind, read without parsing the rest of it.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
}

/// The fields of a client `op` frame (its `t` is skipped).
#[derive(Deserialize)]
struct RawOp {
    #[serde(default)]
    id: Option<String>,
    data: RawOpData,
    #[serde(default)]
    base: Option<u64>,
}

/// The fields of a client `sync` frame.
#[derive(Deserialize)]
struct RawSync {
    update: String,
}

/// A client frame as it is written (parsing goes through [`Tag`] and the structs above).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum RawClient {
    Op {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        data: RawOpData,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<u64>,
    },
    Sync {
        update: String,
    },
    Presence(Presence),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum RawServer {
    Sync {
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sv: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    Op {
        #[serde(default, skip_serializing_if = "is_zero_seq")]
        seq: u64,
        data: RawOpData,
    },
    Ack {
        id: String,
        seq: u64,
    },
    Presence(Presence),
    Error {
        code: String,
        message: String,
    },
    Access {
        role: String,
    },
    #[serde(other)]
    Unknown,
}

/// A frame from a client, validated and with its bytes decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// An update; with an `id`, the server acks it once durable.
    Op {
        /// Client-unique op id.
        id: Option<String>,
        /// v2 update bytes.
        update: Vec<u8>,
        /// The room seq this replica had seen when the edits were made (optional; history
        /// shows edits made against an older state, e.g. offline, as such).
        base: Option<u64>,
    },
    /// What the server lacks, sent after the first `sync` (two-way sync).
    Sync {
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// Cursor / presence.
    Presence(Presence),
}

/// A frame from the server, validated and with its bytes decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The first frame: state the client lacks, the server's state vector and seq.
    Sync {
        /// v2 update: the whole document, or only what the client lacks after `?sv=`.
        state: Vec<u8>,
        /// The server's state vector (v1), if sent; lets the client compute what the server lacks.
        sv: Option<Vec<u8>>,
        /// The room's seq at the time of the sync.
        seq: u64,
    },
    /// An update from someone else, in room order.
    Op {
        /// Room seq of this update; 0 (absent on the wire) when it is broadcast before its
        /// commit, which is how a local client's update is fanned out.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// The op `id` is committed to the store.
    Ack {
        /// The client's op id.
        id: String,
        /// Room seq at which it is durable.
        seq: u64,
    },
    /// Someone's cursor / presence.
    Presence(Presence),
    /// Something the client sent was rejected.
    Error {
        /// Stable machine-readable code ([`EngineError::code`]).
        code: String,
        /// Human-readable, safe to show.
        message: String,
    },
    /// What this connection may do, when access control is on: sent after `sync` to a reader,
    /// and whenever a grant changes while connected.
    Access {
        /// `"read"` (updates are refused) or `"write"`.
        role: String,
    },
}

fn check_size(what: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        Err(EngineError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

fn malformed(e: serde_json::Error) -> EngineError {
    EngineError::MalformedMessage {
        reason: e.to_string(),
    }
}

/// Checks an op id: 1-128 printable ASCII characters.
pub fn validate_op_id(id: &str) -> Result<()> {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(EngineError::BadOpId)
    }
}

/// Checks a room id: 1-128 characters of `A-Z a-z 0-9 _ - .`, not `.` or `..`.
pub fn validate_room_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadRoomId)
    }
}

fn decode_update_field(field: &'static str, b64: &str, limits: &Limits) -> Result<Vec<u8>> {
    // base64 is 4 chars per 3 bytes: reject before allocating.
    check_size("update", b64.len() / 4 * 3, limits.max_update_bytes)?;
    decode_b64(field, b64)
}

impl ClientMessage {
    /// Parses one text frame from a client. `Ok(None)` is a frame with an unknown `t`, which
    /// the protocol says to ignore.
    pub fn parse(text: &str, limits: &Limits) -> Result<Option<ClientMessage>> {
        check_size("frame", text.len(), limits.max_frame_bytes)?;
        // The tag first, by a pass that allocates nothing (serde skips the other fields), so
        // each kind's size bound holds before its body is parsed: a 16 MiB `presence` frame
        // is refused for its length, not after building a tree of its values. (A tagged enum
        // would also buffer the whole frame before reading it as its variant.)
        let tag: Tag = serde_json::from_str(text).map_err(malformed)?;
        Ok(Some(match tag.t.as_ref() {
            "op" => {
                let RawOp { id, data, base } = serde_json::from_str(text).map_err(malformed)?;
                if let Some(id) = &id {
                    validate_op_id(id)?;
                }
                let update = decode_update_field("data.update", &data.update, limits)?;
                ClientMessage::Op { id, update, base }
            }
            "sync" => {
                let RawSync { update } = serde_json::from_str(text).map_err(malformed)?;
                ClientMessage::Sync {
                    update: decode_update_field("update", &update, limits)?,
                }
            }
            "presence" => {
                check_size("presence", text.len(), limits.max_presence_bytes)?;
                ClientMessage::Presence(serde_json::from_str(text).map_err(malformed)?)
            }
            _ => return Ok(None),
        }))
    }

    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        let raw = match self {
            ClientMessage::Op { id, update, base } => RawClient::Op {
                id: id.clone(),
                data: RawOpData {
                    update: encode_b64(update),
                },
                base: *base,
            },
            ClientMessage::Sync { update } => RawClient::Sync {
                update: encode_b64(update),
            },
            ClientMessage::Presence(p) => RawClient::Presence(p.clone()),
        };
        to_json(&raw)
    }
}

impl ServerMessage {
    /// Parses one text frame from the server. `Ok(None)` is an unknown `t` (ignored).
    pub fn parse(text: &str) -> Result<Option<ServerMessage>> {
        match parse_op_fast(text) {
            Some(op) => op.map(Some),
            None => Self::parse_tagged(text),
        }
    }

    /// The general parse, through the tagged enum: every frame that is not an `op` as the
    /// server writes it.
    fn parse_tagged(text: &str) -> Result<Option<ServerMessage>> {
        let raw: RawServer = serde_json::from_str(text).map_err(malformed)?;
        Ok(Some(match raw {
            RawServer::Sync { state, sv, seq } => ServerMessage::Sync {
                state: decode_b64("state", &state)?,
                sv: sv.map(|s| decode_b64("sv", &s)).transpose()?,
                seq: seq.unwrap_or(0),
            },
            RawServer::Op { seq, data } => ServerMessage::Op {
                seq,
                update: decode_b64("data.update", &data.update)?,
            },
            RawServer::Ack { id, seq } => ServerMessage::Ack { id, seq },
            RawServer::Presence(p) => ServerMessage::Presence(p),
            RawServer::Error { code, message } => ServerMessage::Error { code, message },
            RawServer::Access { role } => ServerMessage::Access { role },
            RawServer::Unknown => return Ok(None),
        }))
    }

    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        let raw = match self {
            ServerMessage::Sync { state, sv, seq } => RawServer::Sync {
                state: encode_b64(state),
                sv: sv.as_deref().map(encode_b64),
                seq: Some(*seq),
            },
            ServerMessage::Op { seq, update } => RawServer::Op {
                seq: *seq,
                data: RawOpData {
                    update: encode_b64(update),
                },
            },
            ServerMessage::Ack { id, seq } => RawServer::Ack {
                id: id.clone(),
                seq: *seq,
            },
            // The clock and the Yjs entry are for the server and Yjs clients; a Concord
            // client's frame stays as the base contract has it.
            ServerMessage::Presence(p) => RawServer::Presence(Presence {
                clock: 0,
                yjs: None,
                ..p.clone()
            }),
            ServerMessage::Error { code, message } => RawServer::Error {
                code: code.clone(),
                message: message.clone(),
            },
            ServerMessage::Access { role } => RawServer::Access { role: role.clone() },
        };
        to_json(&raw)
    }

    /// The `error` frame for an engine error: its code and the fixed message for that code
    /// ([`EngineError::client_message`]). Never the `Display` text, which carries parser and yrs
    /// internals and parts of the input; log that on the server instead.
    pub fn error(err: &EngineError) -> ServerMessage {
        ServerMessage::Error {
            code: err.code().to_owned(),
            message: err.client_message().to_owned(),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs (strings, integers, serde_json::Value) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_frame_parses_the_same_on_both_paths() {
        let update = vec![0u8, 1, 2, 250, 251, 252, 253, 254, 255, 63, 62];
        let b64 = encode_b64(&update);
        assert!(b64.contains('/'), "{b64}");
        let frames = [
            ServerMessage::Op {
                seq: 42,
                update: update.clone(),
            }
            .to_json(),
            format!(r#"{{"t":"op","data":{{"update":"{b64}"}}}}"#),
            // An escaped slash cannot be borrowed from the text.
            format!(
                r#"{{"t":"op","seq":7,"data":{{"update":"{}"}}}}"#,
                b64.replace('/', "\\/")
            ),
            format!(r#"{{"t":"op","seq":7,"extra":[1,2],"data":{{"update":"{b64}","x":1}}}}"#),
            format!(r#"{{"t":"op","seq":7,"data":{{"update":"!!{b64}"}}}}"#),
            r#"{"t":"op","seq":7}"#.to_string(),
            r#"{"t":"op","seq":-1,"data":{"update":""}}"#.to_string(),
        ];
        for frame in &frames {
            let fast = ServerMessage::parse(frame);
            let general = ServerMessage::parse_tagged(frame);
            match (&fast, &general) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{frame}"),
                (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{frame}"),
                _ => panic!("{frame}: fast {fast:?}, general {general:?}"),
            }
        }
        assert_eq!(
            ServerMessage::parse(&frames[0]).unwrap(),
            Some(ServerMessage::Op {
                seq: 42,
                update: update.clone()
            })
        );
        assert_eq!(
            ServerMessage::parse(&frames[2]).unwrap(),
            Some(ServerMessage::Op { seq: 7, update })
        );
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn golden_server_frames() {
        let sync = ServerMessage::Sync {
            state: vec![1, 2, 3],
            sv: Some(vec![0]),
            seq: 7,
        };
        assert_eq!(
            sync.to_json(),
            r#"{"t":"sync","state":"AQID","sv":"AA==","seq":7}"#
        );
        let op = ServerMessage::Op {
            seq: 41,
            update: vec![255],
        };
        assert_eq!(
            op.to_json(),
            r#"{"t":"op","seq":41,"data":{"update":"/w=="}}"#
        );
        let ack = ServerMessage::Ack {
            id: "c1-3".into(),
            seq: 9,
        };
        assert_eq!(ack.to_json(), r#"{"t":"ack","id":"c1-3","seq":9}"#);
        let err = ServerMessage::error(&EngineError::BadRoomId);
        assert_eq!(
            err.to_json(),
            r#"{"t":"error","code":"bad_room_id","message":"room id must be 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.'"}"#
        );
        for m in [sync, op, ack, err] {
            assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), Some(m));
        }
    }

    #[test]
    fn error_frames_carry_no_internals() {
        // A serde error (with a position) and a yrs-style reason (with input and internals).
        let json = ClientMessage::parse("{\"t\":\"op\",\"secret-input", &limits()).unwrap_err();
        let update = EngineError::InvalidUpdate {
            reason: "rejected while integrating: called `Option::unwrap()` at block.rs:42 \
                     for <secret-input>"
                .into(),
        };
        let overloaded = EngineError::Overloaded {
            what: "staged",
            bytes: 1 << 26,
            len: 10,
            max: 1 << 26,
        };
        assert_eq!(
            ServerMessage::error(&json).to_json(),
            r#"{"t":"error","code":"malformed_message","message":"the frame is not a valid protocol message; check the client version"}"#
        );
        assert_eq!(
            ServerMessage::error(&update).to_json(),
            r#"{"t":"error","code":"invalid_update","message":"the update is not valid or not accepted by this server; it was not applied"}"#
        );
        assert_eq!(
            ServerMessage::error(&overloaded).to_json(),
            r#"{"t":"error","code":"overloaded","message":"the room is overloaded; the op was not applied, retry it later"}"#
        );
        for e in [&json, &update, &overloaded] {
            let frame = ServerMessage::error(e).to_json();
            for leak in ["secret", "line", "column", "unwrap", "rs:", "67108864"] {
                assert!(!frame.contains(leak), "{frame} leaks {leak}");
            }
            assert!(
                e.to_string().len() > e.code().len(),
                "Display keeps the detail for logs"
            );
        }
    }

    #[test]
    fn golden_client_frames() {
        let op = ClientMessage::Op {
            id: Some("a-1".into()),
            update: vec![0, 1],
            base: None,
        };
        assert_eq!(
            op.to_json(),
            r#"{"t":"op","id":"a-1","data":{"update":"AAE="}}"#
        );
        let presence = ClientMessage::Presence(Presence {
            user: "kerim".into(),
            cursor: Some(serde_json::json!(128)),
            color: Some("#2DD4BF".into()),
            name: None,
            left: false,
            you: false,
            ..Presence::default()
        });
        assert_eq!(
            presence.to_json(),
            r##"{"t":"presence","user":"kerim","cursor":128,"color":"#2DD4BF"}"##
        );
        // The frame that tells a connection its own presence id.
        let you = ServerMessage::Presence(Presence {
            user: "c-1f2e3d4c-7".into(),
            you: true,
            ..Presence::default()
        });
        assert_eq!(
            you.to_json(),
            r#"{"t":"presence","user":"c-1f2e3d4c-7","you":true}"#
        );
        for m in [op, presence] {
            assert_eq!(
                ClientMessage::parse(&m.to_json(), &limits()).unwrap(),
                Some(m)
            );
        }
    }

    #[test]
    fn seed_contract_op_without_id_parses() {
        let m = ClientMessage::parse(r#"{"t":"op","data":{"update":"AAE"}}"#, &limits()).unwrap();
        assert_eq!(
            m,
            Some(ClientMessage::Op {
                id: None,
                update: vec![0, 1],
                base: None,
            })
        );
    }

    #[test]
    fn unknown_tags_are_ignored() {
        assert_eq!(
            ClientMessage::parse(r#"{"t":"hello","x":1}"#, &limits()).unwrap(),
            None
        );
        assert_eq!(ServerMessage::parse(r#"{"t":"future"}"#).unwrap(), None);
    }

    #[test]
    fn malformed_inputs_map_to_typed_errors() {
        let l = limits();
        let cases: &[(&str, &str)] = &[
            ("not json", "malformed_message"),
            ("{}", "malformed_message"),
            (r#"{"t":"op"}"#, "malformed_message"),
            (r#"{"t":"op","data":{"update":5}}"#, "malformed_message"),
            (r#"{"t":"op","data":{"update":"!!!"}}"#, "bad_base64"),
            (r#"{"t":"sync","update":"@@"}"#, "bad_base64"),
            (
                r#"{"t":"op","id":"","data":{"update":"AA=="}}"#,
                "bad_op_id",
            ),
            (
                r#"{"t":"op","id":"a b","data":{"update":"AA=="}}"#,
                "bad_op_id",
            ),
            (r#"[1,2]"#, "malformed_message"),
        ];
        for (text, code) in cases {
            let err = ClientMessage::parse(text, &l).unwrap_err();
            assert_eq!(err.code(), *code, "{text}");
        }
    }

    #[test]
    fn oversized_frames_are_rejected_before_parsing() {
        let l = Limits {
            max_frame_bytes: 64,
            max_update_bytes: 16,
            max_presence_bytes: 40,
        };
        let big = format!(r#"{{"t":"op","data":{{"update":"{}"}}}}"#, "A".repeat(100));
        assert_eq!(
            ClientMessage::parse(&big, &l).unwrap_err().code(),
            "too_large"
        );
        let update = format!(r#"{{"t":"op","data":{{"update":"{}"}}}}"#, "A".repeat(28));
        assert_eq!(
            ClientMessage::parse(&update, &l).unwrap_err().code(),
            "too_large"
        );
        let presence = r#"{"t":"presence","user":"someone-with-a-long-name"}"#;
        assert_eq!(
            ClientMessage::parse(presence, &l).unwrap_err().code(),
            "too_large"
        );
        // The tag comes first whatever its place, and the body is never parsed: a presence
        // frame is held to its bound before its values are built.
        let l = Limits {
            max_frame_bytes: 1 << 20,
            ..l
        };
        let wide = format!(
            r#"{{"user":"x","cursor":[{}0],"t":"presence"}}"#,
            "{\"a\":[1,2,3]},".repeat(20_000)
        );
        assert_eq!(
            ClientMessage::parse(&wide, &l).unwrap_err().code(),
            "too_large"
        );
    }

    #[test]
    fn room_ids() {
        for ok in ["demo", "a", "team-1.notes_v2", &"x".repeat(128)] {
            assert!(validate_room_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129), "a%2F"] {
            assert!(validate_room_id(bad).is_err(), "{bad}");
        }
    }
}
