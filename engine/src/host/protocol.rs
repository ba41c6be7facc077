//! What each protocol's frames mean to the room, and how each says what the room decided: the
//! one place that knows that a JSON member gets an `ack`, a Hocuspocus member a `SyncStatus`
//! and a y-websocket member nothing, or that a text frame closes a y-websocket socket. Each
//! protocol's own file ([`crate::wire`], [`crate::yjs`], [`crate::hocuspocus`]) holds its
//! decoder and encoders; this file picks one per protocol, so the server's socket tasks branch
//! on none.

use bytes::Bytes;

use super::Request;
use crate::error::EngineError;
use crate::wire::{ClientMessage, Limits, Presence, ServerMessage};
use crate::yjs::YjsRequest;
use crate::{hocuspocus, yjs};

/// The wire format a member speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Concord's JSON protocol (`/rooms/{id}/ws`).
    Json,
    /// y-protocols binary messages (`/yjs/{room}`, y-websocket).
    Yjs,
    /// Hocuspocus (`/hocuspocus`): y-protocols messages behind the document's name, a
    /// `SyncStatus` for each update once it is durable.
    Hocuspocus,
}

impl Protocol {
    /// Every protocol, in [`Protocol::slot`] order.
    pub const ALL: [Protocol; 3] = [Protocol::Json, Protocol::Yjs, Protocol::Hocuspocus];

    /// Its index in per-protocol arrays.
    pub fn slot(self) -> usize {
        match self {
            Protocol::Json => 0,
            Protocol::Yjs => 1,
            Protocol::Hocuspocus => 2,
        }
    }

    /// Speaks y-protocols messages (y-websocket, or Hocuspocus around them).
    pub fn is_yjs(self) -> bool {
        matches!(self, Protocol::Yjs | Protocol::Hocuspocus)
    }
}

/// One WebSocket data frame, shared (reference-counted) between every member it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (the JSON protocol); always UTF-8.
    Text(Bytes),
    /// A binary frame (y-websocket, Hocuspocus).
    Binary(Bytes),
}

impl Frame {
    /// A text frame of this string.
    pub fn text(text: String) -> Frame {
        Frame::Text(Bytes::from(text))
    }

    /// A binary frame of these bytes.
    pub fn binary(bytes: Vec<u8>) -> Frame {
        Frame::Binary(Bytes::from(bytes))
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A data frame as it came off a member's socket.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    /// A text frame.
    Text(&'a str),
    /// A binary frame.
    Binary(&'a [u8]),
}

impl Inbound<'_> {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Inbound::Text(t) => t.len(),
            Inbound::Binary(b) => b.len(),
        }
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a member's frame comes to.
#[derive(Debug)]
pub enum Decoded {
    /// A request for the room.
    Request(Request),
    /// Refused, the connection stays: send this `error` frame (its code, for metrics).
    Refused(Frame, &'static str),
    /// Refused, the connection closes with this code and reason.
    Close(u16, &'static str),
    /// Nothing for the room (a message type this server does not know).
    Nothing,
}

/// Decodes one frame of a socket that speaks `protocol` (JSON or y-websocket; a Hocuspocus
/// socket's frames go through its [`hocuspocus::Session`]). Sizes are checked before parsing.
pub fn decode(protocol: Protocol, frame: Inbound<'_>, limits: &Limits) -> Decoded {
    match (protocol, frame) {
        (Protocol::Json, Inbound::Text(text)) => match ClientMessage::parse(text, limits) {
            Ok(Some(msg)) => Decoded::Request(Request::Json(msg)),
            Ok(None) => Decoded::Nothing,
            Err(e) => Decoded::Refused(json(&ServerMessage::error(&e)), e.code()),
        },
        (Protocol::Json, Inbound::Binary(_)) => Decoded::Refused(
            json_error(
                "unsupported_frame",
                "binary frames are not part of the protocol; send JSON text frames",
            ),
            "unsupported_frame",
        ),
        (Protocol::Yjs, Inbound::Binary(bytes)) => match yjs::decode(bytes, limits) {
            Ok(req) => Decoded::Request(Request::Yjs(req)),
            Err(e) => Decoded::Close(close_code(&e), "bad y-protocols message"),
        },
        (Protocol::Yjs, Inbound::Text(_)) => Decoded::Close(1003, "y-websocket frames are binary"),
        (Protocol::Hocuspocus, _) => Decoded::Close(1003, "Hocuspocus frames go to /hocuspocus"),
    }
}

/// The WebSocket close code for a frame the engine refused to decode: 1009 for one too
/// large, else 1002.
pub fn close_code(e: &EngineError) -> u16 {
    match e {
        EngineError::TooLarge { .. } => 1009,
        _ => 1002,
    }
}

/// Whether a request is an update, which the update rate paces (presence has its own rate).
pub fn is_update(request: &Request) -> bool {
    matches!(
        request,
        Request::Json(ClientMessage::Op { .. } | ClientMessage::Sync { .. })
            | Request::Yjs(YjsRequest::Update(_))
    )
}

/// What a connection over its update rate for too long is told before its close (4429).
pub fn rate_limited(protocol: Protocol) -> Option<Frame> {
    (protocol == Protocol::Json).then(|| {
        json_error(
            "rate_limited",
            "too many updates for too long; batch them and reconnect later",
        )
    })
}

/// What a connection whose room cannot be joined is told before its close: the instance is
/// at capacity (`overloaded`, 1013) or the room cannot be opened (1011). The close code and
/// reason, and the frame for protocols that have words for it.
pub fn join_failed(protocol: Protocol, overloaded: bool) -> (Option<Frame>, u16, &'static str) {
    let (code, message, close, reason) = if overloaded {
        let message = "the server is at capacity; retry shortly";
        ("overloaded", message, 1013, "server at capacity")
    } else {
        let message = "the room cannot be opened now; retry shortly";
        ("unavailable", message, 1011, "room unavailable")
    };
    let frame = (protocol == Protocol::Json).then(|| json_error(code, message));
    (frame, close, reason)
}

/// A JSON server frame.
pub fn json(msg: &ServerMessage) -> Frame {
    Frame::text(msg.to_json())
}

/// A JSON `error` frame with a stable code and a safe message.
pub fn json_error(code: &str, message: &str) -> Frame {
    json(&ServerMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// A y-protocols message as `protocol` carries it in room `room`: as is for y-websocket,
/// behind the document name for Hocuspocus (whose document names are room ids).
pub fn yjs_frame(room: &str, protocol: Protocol, body: Vec<u8>) -> Frame {
    match protocol {
        Protocol::Hocuspocus => Frame::binary(hocuspocus::wrap(room, &body)),
        _ => Frame::binary(body),
    }
}

/// What a member is told when its update was refused for `e` (`None`: nothing, as
/// y-websocket's server does). Hocuspocus members get their `SyncStatus` separately.
pub fn update_refused(protocol: Protocol, e: &EngineError) -> Option<Frame> {
    (protocol == Protocol::Json).then(|| json(&ServerMessage::error(e)))
}

/// A reader's update, refused before it costs anything.
pub fn read_only(room: &str, protocol: Protocol) -> Frame {
    match protocol {
        Protocol::Json => json_error(
            "forbidden",
            "you have read-only access to this document; the update was not applied",
        ),
        Protocol::Yjs => Frame::binary(yjs::permission_denied(
            "read-only access: the update was not applied",
        )),
        Protocol::Hocuspocus => Frame::binary(hocuspocus::sync_status(room, false)),
    }
}

/// An op is durable: the JSON `ack`, the Hocuspocus `SyncStatus` (the provider counts it as
/// synced); y-websocket has no word for it.
pub fn ack(room: &str, protocol: Protocol, id: String, seq: u64) -> Option<Frame> {
    match protocol {
        Protocol::Json => Some(json(&ServerMessage::Ack { id, seq })),
        Protocol::Hocuspocus => Some(Frame::binary(hocuspocus::sync_status(room, true))),
        Protocol::Yjs => None,
    }
}

/// The member's access changed to `read_only` or back (y-websocket has no word for it).
pub fn access(room: &str, protocol: Protocol, read_only: bool) -> Option<Frame> {
    match protocol {
        Protocol::Json => Some(json(&ServerMessage::Access {
            role: if read_only { "read" } else { "write" }.to_owned(),
        })),
        Protocol::Hocuspocus => Some(Frame::binary(hocuspocus::authenticated(room, read_only))),
        Protocol::Yjs => None,
    }
}

/// A join the room cannot serve (its state vector does not encode).
pub fn room_unavailable(room: &str, protocol: Protocol) -> Frame {
    match protocol {
        Protocol::Json => json_error("unavailable", "the room cannot be opened now"),
        Protocol::Yjs => Frame::binary(yjs::permission_denied("room unavailable")),
        Protocol::Hocuspocus => Frame::binary(hocuspocus::close(room, "room unavailable")),
    }
}

/// Every presence of the room for a member who just joined (JSON: one frame each, after the
/// one naming the member itself and, for a reader, its role).
pub fn welcome(
    room: &str,
    protocol: Protocol,
    user: &str,
    read_only: bool,
    all: &[Presence],
) -> Vec<Frame> {
    match protocol {
        Protocol::Json => {
            let you = Presence {
                user: user.to_owned(),
                you: true,
                ..Presence::default()
            };
            let mut frames = vec![json(&ServerMessage::Presence(you))];
            frames.extend(read_only.then(|| {
                json(&ServerMessage::Access {
                    role: "read".into(),
                })
            }));
            frames.extend(
                all.iter()
                    .map(|p| json(&ServerMessage::Presence(p.clone()))),
            );
            frames
        }
        _ if all.is_empty() => Vec::new(),
        _ => {
            let all: Vec<&Presence> = all.iter().collect();
            vec![yjs_frame(room, protocol, yjs::awareness(&all))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_socket_decodes_its_own_frames_and_refuses_the_others() {
        let limits = Limits::default();
        let op = r#"{"t":"presence","user":"u","cursor":3}"#;
        assert!(matches!(
            decode(Protocol::Json, Inbound::Text(op), &limits),
            Decoded::Request(Request::Json(ClientMessage::Presence(_)))
        ));
        assert!(matches!(
            decode(Protocol::Json, Inbound::Text("{"), &limits),
            Decoded::Refused(_, "malformed_message")
        ));
        assert!(matches!(
            decode(Protocol::Json, Inbound::Binary(&[1]), &limits),
            Decoded::Refused(_, "unsupported_frame")
        ));
        assert!(matches!(
            decode(Protocol::Yjs, Inbound::Text(op), &limits),
            Decoded::Close(1003, _)
        ));
        assert!(matches!(
            decode(Protocol::Yjs, Inbound::Binary(&[0, 9]), &limits),
            Decoded::Close(1002, _)
        ));
        let small = Limits {
            max_frame_bytes: 4,
            ..limits
        };
        assert!(matches!(
            decode(Protocol::Yjs, Inbound::Binary(&[0; 8]), &small),
            Decoded::Close(1009, _)
        ));
    }

    #[test]
    fn each_protocol_acks_in_its_own_words() {
        let json = ack("r", Protocol::Json, "a".into(), 3).unwrap();
        assert_eq!(json, Frame::text(r#"{"t":"ack","id":"a","seq":3}"#.into()));
        let hp = ack("r", Protocol::Hocuspocus, "a".into(), 3).unwrap();
        assert_eq!(hp, Frame::binary(hocuspocus::sync_status("r", true)));
        assert!(ack("r", Protocol::Yjs, "a".into(), 3).is_none());
    }

    #[test]
    fn readers_are_refused_in_their_protocol() {
        let Frame::Text(json) = read_only("r", Protocol::Json) else {
            panic!("a JSON refusal is text")
        };
        assert!(std::str::from_utf8(&json)
            .unwrap()
            .contains("\"forbidden\""));
        assert_eq!(
            read_only("r", Protocol::Hocuspocus),
            Frame::binary(hocuspocus::sync_status("r", false))
        );
    }
}
