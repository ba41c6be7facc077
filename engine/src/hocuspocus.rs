//! The Hocuspocus protocol (`@hocuspocus/provider` v3 and v4), without I/O.
//!
//! One socket carries many documents. Every frame is `varString documentName`, `varUint type`,
//! payload; types 0 (sync), 1 (awareness) and 3 (query awareness) carry exactly what a
//! y-websocket frame of the same type carries, so this module strips or adds the name and hands
//! the rest to [`crate::yjs`]. What is Hocuspocus's own: the auth handshake per document (a
//! token in, `Authenticated {scope}` or `PermissionDenied {reason}` out, with everything a
//! document sends before its auth completes held back), `SyncStatus` (the server's word that an
//! update is applied; Concord says it once the update is durable), stateless strings, a
//! per-document close, and v4's bare ping/pong frames. `docs/hocuspocus-protocol.md` has the
//! wire facts this follows.
//!
//! [`Session`] is the per-socket state machine: the server feeds it decoded frames and the
//! results of its access checks, and carries out the [`Action`]s it returns.

use std::collections::{HashMap, VecDeque};

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::error::{EngineError, Result};
use crate::wire::Limits;
use crate::yjs::{self, YjsRequest};

/// Message types (`@hocuspocus/common`'s `MessageType`).
const SYNC: u32 = 0;
const AWARENESS: u32 = 1;
const AUTH: u32 = 2;
const QUERY_AWARENESS: u32 = 3;
const STATELESS: u32 = 5;
const CLOSE: u32 = 7;
const SYNC_STATUS: u32 = 8;

/// Auth sub-types.
const AUTH_TOKEN: u32 = 0;
const AUTH_PERMISSION_DENIED: u32 = 1;
const AUTH_AUTHENTICATED: u32 = 2;

/// v4's keep-alive: a bare one-byte frame each way, no document name.
pub const PING: [u8; 1] = [9];
/// The answer to [`PING`].
pub const PONG: [u8; 1] = [10];

/// Longest document name decoded; a longer one closes the socket (1009). Names the room id
/// rules refuse, but under this, get a permission-denied answer instead.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest auth token.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest stateless payload.
pub const MAX_STATELESS_BYTES: usize = 64 * 1024;
/// Documents waiting for their auth on one socket (as Hocuspocus v4 bounds them).
pub const MAX_PENDING_DOCS: usize = 100;
/// Frames held for documents still authenticating, per socket: count and bytes.
pub const MAX_QUEUED_FRAMES: usize = 1000;
/// See [`MAX_QUEUED_FRAMES`].
pub const MAX_QUEUED_BYTES: usize = 5 * 1024 * 1024;
/// Documents open at once on one socket; each is a member of a room.
pub const MAX_OPEN_DOCS: usize = 256;

/// One decoded frame from a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// v4 ping: answer [`PONG`].
    Ping,
    /// v4 pong: the peer is alive.
    Pong,
    /// A message for one document.
    Doc {
        /// The document name (the routing key).
        name: String,
        /// What it says.
        msg: DocMessage,
    },
}

/// What a provider says about one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocMessage {
    /// Authenticate this document with a token (empty when the provider has none).
    Auth {
        /// The token, unchecked.
        token: String,
    },
    /// A y-protocols sync or awareness message, as y-websocket's.
    Yjs(YjsRequest),
    /// An application's string, relayed to the document's other connections.
    Stateless(String),
    /// The provider detached the document.
    Close,
    /// Something a server ignores (a client's `SyncStatus`, an unknown type).
    Ignored,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::MalformedMessage {
        reason: format!("bad Hocuspocus {what}: {e}"),
    }
}

fn too_large(what: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(EngineError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Decodes one binary frame. Sizes are checked before anything is copied or decoded.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Incoming> {
    too_large("frame", frame.len(), limits.max_frame_bytes)?;
    match frame {
        [9] => return Ok(Incoming::Ping),
        [10] => return Ok(Incoming::Pong),
        _ => {}
    }
    let mut cur = Cursor::new(frame);
    let len: u32 = cur.read_var().map_err(|e| malformed("document name", e))?;
    too_large("document name", len as usize, MAX_NAME_BYTES)?;
    cur.next -= varuint_len(len);
    let name = cur
        .read_string()
        .map_err(|e| malformed("document name", e))?
        .to_owned();
    let body = &frame[cur.next..];
    let mut cur = Cursor::new(body);
    let kind: u32 = cur.read_var().map_err(|e| malformed("message type", e))?;
    let msg = match kind {
        SYNC | AWARENESS | QUERY_AWARENESS => DocMessage::Yjs(yjs::decode(body, limits)?),
        AUTH => match cur.read_var::<u32>().map_err(|e| malformed("auth", e))? {
            AUTH_TOKEN => {
                let len: u32 = cur.read_var().map_err(|e| malformed("token", e))?;
                too_large("token", len as usize, MAX_TOKEN_BYTES)?;
                cur.next -= varuint_len(len);
                let token = cur.read_string().map_err(|e| malformed("token", e))?;
                // v4 adds the provider's version; nothing depends on it.
                DocMessage::Auth {
                    token: token.to_owned(),
                }
            }
            _ => DocMessage::Ignored,
        },
        STATELESS => {
            let len: u32 = cur.read_var().map_err(|e| malformed("stateless", e))?;
            too_large("stateless payload", len as usize, MAX_STATELESS_BYTES)?;
            cur.next -= varuint_len(len);
            let payload = cur.read_string().map_err(|e| malformed("stateless", e))?;
            DocMessage::Stateless(payload.to_owned())
        }
        CLOSE => DocMessage::Close,
        _ => DocMessage::Ignored,
    };
    Ok(Incoming::Doc { name, msg })
}

/// Bytes of `n` as a lib0 varuint (to step back over a length already read).
fn varuint_len(mut n: u32) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn header(name: &str, kind: u32, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 6 + extra);
    out.write_string(name);
    out.write_var(kind);
    out
}

/// A y-websocket frame (sync, awareness, query awareness: the types the two protocols share)
/// for document `name`.
pub fn wrap(name: &str, yjs_frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 5 + yjs_frame.len());
    out.write_string(name);
    out.extend_from_slice(yjs_frame);
    out
}

/// `Authenticated`: the document is open, read-only or read-write.
pub fn authenticated(name: &str, readonly: bool) -> Vec<u8> {
    let mut out = header(name, AUTH, 12);
    out.write_var(AUTH_AUTHENTICATED);
    out.write_string(if readonly { "readonly" } else { "read-write" });
    out
}

/// `PermissionDenied`: the document stays closed (the socket stays open).
pub fn permission_denied(name: &str, reason: &str) -> Vec<u8> {
    let mut out = header(name, AUTH, reason.len() + 2);
    out.write_var(AUTH_PERMISSION_DENIED);
    out.write_string(reason);
    out
}

/// `SyncStatus`: the client's update was applied (Concord: and is durable), or refused.
pub fn sync_status(name: &str, applied: bool) -> Vec<u8> {
    let mut out = header(name, SYNC_STATUS, 1);
    out.write_var(u32::from(applied));
    out
}

/// A stateless string for document `name`.
pub fn stateless(name: &str, payload: &str) -> Vec<u8> {
    let mut out = header(name, STATELESS, payload.len() + 4);
    out.write_string(payload);
    out
}

/// Closes one document, not the socket (the provider treats it as that document's close).
pub fn close(name: &str, reason: &str) -> Vec<u8> {
    let mut out = header(name, CLOSE, reason.len() + 2);
    out.write_string(reason);
    out
}

/// An awareness message with no entries: changes nothing, but counts as traffic for a
/// provider that closes sockets it has heard nothing from (v3 knows no ping).
pub fn keepalive(name: &str) -> Vec<u8> {
    let mut out = header(name, AWARENESS, 1);
    out.write_buf([0u8]);
    out
}

/// What the server must do about a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing.
    None,
    /// Send these bytes (a pong, a refusal).
    Send(Vec<u8>),
    /// Check `token` for document `name`, then call [`Session::opened`] or
    /// [`Session::refused`]. Frames for it are held until then.
    Authenticate {
        /// The document.
        name: String,
        /// The token the provider sent.
        token: String,
    },
    /// Hand this to the document's room.
    Deliver {
        /// The document.
        name: String,
        /// A [`DocMessage::Yjs`] or [`DocMessage::Stateless`].
        msg: DocMessage,
    },
    /// The provider closed the document: leave its room.
    Detach {
        /// The document.
        name: String,
    },
    /// Close the socket.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

#[derive(Debug)]
enum DocState {
    /// Its auth is being checked; what it sends meanwhile waits here.
    Authenticating(VecDeque<(DocMessage, usize)>),
    /// Sent frames before its auth: held until the auth comes.
    Waiting(VecDeque<(DocMessage, usize)>),
    Open,
}

/// How many refused document names a socket remembers (their frames are dropped until a new
/// auth); older ones are forgotten, so a provider cycling through names cannot grow the
/// session, and a forgotten name's frames merely wait for an auth like any unknown name's.
pub const MAX_DENIED_DOCS: usize = 256;

/// One socket's documents and their auth state (see the module docs).
#[derive(Debug, Default)]
pub struct Session {
    /// Documents open or waiting for their auth: at most [`MAX_OPEN_DOCS`] plus
    /// [`MAX_PENDING_DOCS`].
    docs: HashMap<String, DocState>,
    /// Refused documents, oldest first, at most [`MAX_DENIED_DOCS`].
    denied: VecDeque<String>,
    queued_frames: usize,
    queued_bytes: usize,
}

impl Session {
    /// A socket with no documents yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do about one decoded frame of `len` bytes.
    pub fn receive(&mut self, incoming: Incoming, len: usize) -> Action {
        let (name, msg) = match incoming {
            Incoming::Ping => return Action::Send(PONG.to_vec()),
            Incoming::Pong => return Action::None,
            Incoming::Doc { name, msg } => (name, msg),
        };
        match msg {
            DocMessage::Ignored => Action::None,
            DocMessage::Auth { token } => match self.docs.get_mut(&name) {
                // Already open or being checked: the first auth stands.
                Some(DocState::Open) | Some(DocState::Authenticating(_)) => Action::None,
                Some(state @ DocState::Waiting(_)) => {
                    let DocState::Waiting(queue) = std::mem::replace(state, DocState::Open) else {
                        unreachable!("matched above");
                    };
                    *state = DocState::Authenticating(queue);
                    Action::Authenticate { name, token }
                }
                None => {
                    if self.pending() >= MAX_PENDING_DOCS {
                        return Action::Close {
                            code: 4205,
                            reason: "too many documents waiting for authentication",
                        };
                    }
                    let open = self.open();
                    if open >= MAX_OPEN_DOCS {
                        return Action::Send(permission_denied(
                            &name,
                            "too many documents open on one connection",
                        ));
                    }
                    self.denied.retain(|d| *d != name);
                    self.docs
                        .insert(name.clone(), DocState::Authenticating(VecDeque::new()));
                    Action::Authenticate { name, token }
                }
            },
            DocMessage::Close => match self.docs.remove(&name) {
                Some(DocState::Open) => Action::Detach { name },
                Some(DocState::Authenticating(q)) | Some(DocState::Waiting(q)) => {
                    self.forget(&q);
                    // A check in flight finds the document gone and closes nothing.
                    Action::None
                }
                _ => Action::None,
            },
            msg => {
                if !self.docs.contains_key(&name) && self.denied.contains(&name) {
                    return Action::None;
                }
                if !self.docs.contains_key(&name) && self.pending() >= MAX_PENDING_DOCS {
                    return Action::Close {
                        code: 4205,
                        reason: "too many documents waiting for authentication",
                    };
                }
                let state = self
                    .docs
                    .entry(name.clone())
                    .or_insert_with(|| DocState::Waiting(VecDeque::new()));
                match state {
                    DocState::Open => Action::Deliver { name, msg },
                    DocState::Authenticating(queue) | DocState::Waiting(queue) => {
                        if self.queued_frames + 1 > MAX_QUEUED_FRAMES
                            || self.queued_bytes + len > MAX_QUEUED_BYTES
                        {
                            return Action::Close {
                                code: 4205,
                                reason: "too much sent before authentication",
                            };
                        }
                        queue.push_back((msg, len));
                        self.queued_frames += 1;
                        self.queued_bytes += len;
                        Action::None
                    }
                }
            }
        }
    }

    /// The access check let document `name` in: it is open, and what it sent meanwhile is
    /// returned in order, to be delivered now. `None` if the provider closed it meanwhile.
    pub fn opened(&mut self, name: &str) -> Option<Vec<DocMessage>> {
        let state = self.docs.get_mut(name)?;
        let DocState::Authenticating(queue) = std::mem::replace(state, DocState::Open) else {
            self.refused(name);
            return None;
        };
        self.forget(&queue);
        Some(queue.into_iter().map(|(msg, _)| msg).collect())
    }

    /// The access check refused document `name`: what it sent is dropped, and so is what it
    /// sends until a new auth.
    pub fn refused(&mut self, name: &str) {
        if let Some(DocState::Authenticating(q) | DocState::Waiting(q)) = self.docs.remove(name) {
            self.forget(&q);
        }
        if !self.denied.iter().any(|d| d == name) {
            if self.denied.len() >= MAX_DENIED_DOCS {
                self.denied.pop_front();
            }
            self.denied.push_back(name.to_owned());
        }
    }

    /// The server closed document `name` (its access was revoked, its room went away).
    pub fn closed(&mut self, name: &str) {
        self.refused(name);
    }

    /// Documents open now.
    pub fn open_docs(&self) -> impl Iterator<Item = &str> {
        self.docs
            .iter()
            .filter(|(_, s)| matches!(s, DocState::Open))
            .map(|(n, _)| n.as_str())
    }

    fn open(&self) -> usize {
        self.open_docs().count()
    }

    fn pending(&self) -> usize {
        self.docs
            .values()
            .filter(|s| matches!(s, DocState::Authenticating(_) | DocState::Waiting(_)))
            .count()
    }

    fn forget(&mut self, queue: &VecDeque<(DocMessage, usize)>) {
        self.queued_frames -= queue.len();
        self.queued_bytes -= queue.iter().map(|(_, len)| len).sum::<usize>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn auth_frame(name: &str, token: &str, version: Option<&str>) -> Vec<u8> {
        let mut out = header(name, AUTH, 0);
        out.write_var(AUTH_TOKEN);
        out.write_string(token);
        if let Some(v) = version {
            out.write_string(v);
        }
        out
    }

    #[test]
    fn decodes_the_v4_handshake_trace() {
        // From docs/hocuspocus-protocol.md: the stock v4 provider's first frames for "d".
        let auth = [
            0x01, 0x64, 0x02, 0x00, 0x03, b't', b'o', b'k', 0x05, b'4', b'.', b'8', b'.', b'0',
        ];
        assert_eq!(
            decode(&auth, &limits()).unwrap(),
            Incoming::Doc {
                name: "d".into(),
                msg: DocMessage::Auth {
                    token: "tok".into()
                }
            }
        );
        let step1 = [0x01, 0x64, 0x00, 0x00, 0x01, 0x00];
        assert_eq!(
            decode(&step1, &limits()).unwrap(),
            Incoming::Doc {
                name: "d".into(),
                msg: DocMessage::Yjs(YjsRequest::SyncStep1(vec![0]))
            }
        );
        assert_eq!(decode(&[9], &limits()).unwrap(), Incoming::Ping);
        assert_eq!(decode(&[10], &limits()).unwrap(), Incoming::Pong);
    }

    #[test]
    fn encodes_what_the_provider_reads() {
        assert_eq!(
            authenticated("d", false),
            [&[0x01, 0x64, 0x02, 0x02, 0x0a][..], b"read-write"].concat()
        );
        assert_eq!(sync_status("d", true), [0x01, 0x64, 0x08, 0x01]);
        assert_eq!(sync_status("d", false), [0x01, 0x64, 0x08, 0x00]);
        let step1 = yjs::sync_step1(&[0]).unwrap();
        assert_eq!(wrap("d", &step1), [0x01, 0x64, 0x00, 0x00, 0x01, 0x00]);
        // An empty awareness update decodes as one.
        let Incoming::Doc { msg, .. } = decode(&keepalive("d"), &limits()).unwrap() else {
            panic!("not a document message");
        };
        assert!(matches!(msg, DocMessage::Yjs(YjsRequest::Awareness(u)) if u.clients.is_empty()));
        let Incoming::Doc { msg, .. } = decode(&stateless("d", "hi"), &limits()).unwrap() else {
            panic!("not a document message");
        };
        assert_eq!(msg, DocMessage::Stateless("hi".into()));
    }

    #[test]
    fn sizes_are_checked_before_copying() {
        // A name declared 1 GiB long, with no bytes behind it.
        let mut frame = Vec::new();
        frame.write_var(1u32 << 30);
        assert!(matches!(
            decode(&frame, &limits()),
            Err(EngineError::TooLarge {
                what: "document name",
                ..
            })
        ));
        let mut frame = header("d", AUTH, 0);
        frame.write_var(AUTH_TOKEN);
        frame.write_var(u32::MAX);
        assert!(matches!(
            decode(&frame, &limits()),
            Err(EngineError::TooLarge { what: "token", .. })
        ));
        // Truncated: a name shorter than declared, a missing type.
        assert!(decode(&[0x05, b'a'], &limits()).is_err());
        assert!(decode(&[0x01, b'a'], &limits()).is_err());
        assert!(decode(&[], &limits()).is_err());
        // Unknown types are ignored, as the stock server does.
        assert_eq!(
            decode(&[0x01, b'a', 0x7f], &limits()).unwrap(),
            Incoming::Doc {
                name: "a".into(),
                msg: DocMessage::Ignored
            }
        );
    }

    fn doc(name: &str, msg: DocMessage) -> Incoming {
        Incoming::Doc {
            name: name.into(),
            msg,
        }
    }

    #[test]
    fn frames_before_auth_wait_and_are_delivered_in_order() {
        let mut s = Session::new();
        let update = DocMessage::Yjs(YjsRequest::Update(vec![0, 0]));
        assert_eq!(s.receive(doc("d", update.clone()), 10), Action::None);
        let Incoming::Doc { msg, .. } =
            decode(&auth_frame("d", "t", Some("4.8.0")), &limits()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            s.receive(doc("d", msg), 10),
            Action::Authenticate {
                name: "d".into(),
                token: "t".into()
            }
        );
        let step1 = DocMessage::Yjs(YjsRequest::SyncStep1(vec![0]));
        assert_eq!(s.receive(doc("d", step1.clone()), 6), Action::None);
        assert_eq!(s.opened("d"), Some(vec![update, step1.clone()]));
        assert_eq!(s.queued_frames, 0);
        assert_eq!(s.queued_bytes, 0);
        assert_eq!(
            s.receive(doc("d", step1.clone()), 6),
            Action::Deliver {
                name: "d".into(),
                msg: step1
            }
        );
        assert_eq!(
            s.receive(doc("d", DocMessage::Close), 3),
            Action::Detach { name: "d".into() }
        );
        assert_eq!(s.open_docs().count(), 0);
    }

    #[test]
    fn a_refused_document_drops_its_frames_until_a_new_auth() {
        let mut s = Session::new();
        let auth = DocMessage::Auth { token: "t".into() };
        assert!(matches!(
            s.receive(doc("d", auth.clone()), 5),
            Action::Authenticate { .. }
        ));
        let update = DocMessage::Yjs(YjsRequest::Update(vec![0, 0]));
        s.receive(doc("d", update.clone()), 4);
        s.refused("d");
        assert_eq!(s.queued_frames, 0);
        assert_eq!(s.receive(doc("d", update), 4), Action::None);
        assert!(matches!(
            s.receive(doc("d", auth), 5),
            Action::Authenticate { .. }
        ));
        // Closed by the provider while being checked: the check's result opens nothing.
        assert_eq!(s.receive(doc("d", DocMessage::Close), 3), Action::None);
        assert_eq!(s.opened("d"), None);
    }

    /// 80,000 refused names on one socket grew the session without bound and made every auth
    /// rescan all of them: refused names are remembered up to a bound, and forgotten ones
    /// merely wait for an auth again.
    #[test]
    fn refused_names_are_bounded() {
        let mut s = Session::new();
        let auth = DocMessage::Auth { token: "t".into() };
        for i in 0..20_000 {
            let name = format!("d{i}");
            assert!(matches!(
                s.receive(doc(&name, auth.clone()), 5),
                Action::Authenticate { .. }
            ));
            s.refused(&name);
        }
        assert_eq!(s.docs.len(), 0);
        assert_eq!(s.denied.len(), MAX_DENIED_DOCS);
        let update = DocMessage::Yjs(YjsRequest::Update(vec![0, 0]));
        // The latest refused are still dropped; a forgotten one waits for its auth.
        assert_eq!(s.receive(doc("d19999", update.clone()), 4), Action::None);
        assert_eq!(s.queued_frames, 0);
        assert_eq!(s.receive(doc("d0", update), 4), Action::None);
        assert_eq!(s.queued_frames, 1);
    }

    #[test]
    fn unauthenticated_traffic_is_bounded() {
        let mut s = Session::new();
        for i in 0..MAX_PENDING_DOCS {
            let a = s.receive(
                doc(
                    &format!("d{i}"),
                    DocMessage::Auth {
                        token: String::new(),
                    },
                ),
                4,
            );
            assert!(matches!(a, Action::Authenticate { .. }));
        }
        let a = s.receive(
            doc(
                "one-more",
                DocMessage::Auth {
                    token: String::new(),
                },
            ),
            4,
        );
        assert!(matches!(a, Action::Close { code: 4205, .. }));
        let a = s.receive(
            doc("one-more", DocMessage::Yjs(YjsRequest::QueryAwareness)),
            4,
        );
        assert!(matches!(a, Action::Close { code: 4205, .. }));

        let mut s = Session::new();
        let update = DocMessage::Yjs(YjsRequest::Update(vec![0, 0]));
        for _ in 0..MAX_QUEUED_FRAMES {
            assert_eq!(s.receive(doc("d", update.clone()), 8), Action::None);
        }
        assert!(matches!(
            s.receive(doc("d", update.clone()), 8),
            Action::Close { code: 4205, .. }
        ));
        let mut s = Session::new();
        assert!(matches!(
            s.receive(doc("d", update), MAX_QUEUED_BYTES + 1),
            Action::Close { code: 4205, .. }
        ));
    }

    #[test]
    fn open_documents_per_socket_are_bounded() {
        let mut s = Session::new();
        for i in 0..MAX_OPEN_DOCS {
            let name = format!("d{i}");
            s.receive(
                doc(
                    &name,
                    DocMessage::Auth {
                        token: String::new(),
                    },
                ),
                4,
            );
            s.opened(&name);
        }
        let a = s.receive(
            doc(
                "more",
                DocMessage::Auth {
                    token: String::new(),
                },
            ),
            4,
        );
        assert!(matches!(a, Action::Send(_)));
    }
}
