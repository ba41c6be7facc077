//! One task per loaded room, split in two halves.
//!
//! - [`Core`] owns the engine's [`RoomState`] and does every piece of CRDT work: loading,
//!   integrating client and hub updates, encoding `sync` frames, rebuilding after a failed
//!   commit, encoding broadcasts. It runs on the [`CpuPool`], one job at a time per room, so a
//!   room that is busy (or was sent something expensive) never stalls an async worker: other
//!   rooms, `/healthz` and shutdown keep going.
//! - The task itself (this file's [`RoomTask`]) is the async half: it loops over commands from
//!   connections (a bounded channel, drained in bursts so a busy room batches), the result of
//!   its in-flight group commit, compaction and catch-up results and hub events, hands each
//!   burst to the core as one job, and carries out what the core decided: frames to members,
//!   publishes to the hub, the next group commit. Presence stays here, coalesced per short
//!   tick ([`awareness::Coalescer`]: one message per dialect per flush, the latest entry per
//!   user); a flush goes through the core only when cursors must be mapped between offsets and
//!   Yjs relative positions, which needs the document.
//!
//! Budgets applied here: each member's outbound queue is bounded in bytes (see [`outbox`]) and a
//! member that cannot keep up is dropped as a slow consumer (it resyncs on reconnect); each
//! member has a CPU budget (time its frames cost on the pool) and a presence rate, and one that
//! exhausts its CPU budget is told so and closed, to come back after backoff.
//!
//! [`outbox`]: crate::outbox

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use concord_engine::awareness::{self, Coalescer, Pending};
use concord_engine::hocuspocus;
use concord_engine::wire::Presence;
use concord_engine::yjs::{self, YjsRequest};
use concord_engine::{ClientMessage, ConnId, EngineError, RoomEvent, RoomState, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cpu::CpuPool;
use crate::error::{Result, ServerError};
use crate::hub::{Hub, HubEvent};
use crate::outbox::{Frame, Outbox};
use crate::rate::TokenBucket;
use crate::rooms::Rooms;
use crate::store::Loaded;

/// Why a connection is being closed from the server side.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: Mutex<Option<(u16, &'static str)>>,
}

impl Kill {
    /// Asks the connection to close with `code`; the first reason wins.
    pub fn kill(&self, code: u16, reason: &'static str) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert((code, reason));
        }
        self.token.cancel();
    }

    /// Resolves once the connection should close.
    pub async fn killed(&self) {
        self.token.cancelled().await
    }

    /// The close code and reason, if one was given.
    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.lock().ok().and_then(|r| *r)
    }
}

/// The wire format a member speaks: the room answers each member in its own, encoding every
/// broadcast once per format present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Concord's JSON protocol (`/rooms/{id}/ws`).
    Json,
    /// y-protocols binary messages (`/yjs/{room}`, y-websocket).
    Yjs,
    /// Hocuspocus (`/hocuspocus`): y-protocols messages behind the document's name, a
    /// `SyncStatus` for each update once it is durable.
    Hocuspocus,
}

impl Dialect {
    /// Speaks y-protocols messages (y-websocket, or Hocuspocus around them).
    fn is_yjs(self) -> bool {
        matches!(self, Dialect::Yjs | Dialect::Hocuspocus)
    }
}

/// A y-protocols message as `dialect` carries it in room `room`: as is for y-websocket,
/// behind the document name for Hocuspocus (whose document names are room ids).
fn yjs_frame(room: &str, dialect: Dialect, body: Vec<u8>) -> Frame {
    match dialect {
        Dialect::Hocuspocus => Frame::binary(hocuspocus::wrap(room, &body)),
        _ => Frame::binary(body),
    }
}

/// How the room reaches one connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its wire format.
    pub dialect: Dialect,
    /// The connection's outbound queue, bounded in bytes.
    pub out: Outbox,
    /// Closes the connection.
    pub kill: Arc<Kill>,
    /// Who this connection is in presence frames: set by the server, never by the client.
    pub user: String,
    /// The authenticated user's display name, which replaces any name the client claims in
    /// presence (`None` with auth off).
    pub name: Option<String>,
    /// Read or write; readers' updates are refused here, once for every protocol.
    pub role: Arc<crate::auth::LiveRole>,
    /// Whose CPU budget this connection spends (`None`: the server's own, never limited); a
    /// reconnect of the same payer resumes what the last connection left.
    pub payer: Option<crate::auth::limits::Payer>,
}

/// What connections ask of a room.
#[derive(Debug)]
pub enum RoomCmd {
    /// A connection opened; `sv` is its `?sv=` state vector.
    Join {
        /// The connection.
        conn: ConnId,
        /// Its state vector (v1), if it resumes.
        sv: Option<Vec<u8>>,
        /// Its outbound side.
        member: Member,
        /// `Err(RoomClosing)` means: ask the registry again.
        reply: oneshot::Sender<Result<()>>,
    },
    /// A parsed frame from a member.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The frame.
        msg: Request,
    },
    /// The connection closed.
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// The room's stored data is being deleted: close every member (4404) and unload without
    /// writing anything more. `done` is dropped once the room task has stopped.
    Delete {
        /// Dropped when the room has stopped.
        done: Option<oneshot::Sender<()>>,
    },
}

/// A member's frame, decoded by its protocol's adapter.
#[derive(Debug)]
pub enum Request {
    /// From the JSON protocol.
    Json(ClientMessage),
    /// From y-websocket or Hocuspocus.
    Yjs(YjsRequest),
    /// A Hocuspocus stateless string, relayed to the room's other Hocuspocus members.
    Stateless(String),
}

/// A presence entry lives this long unless refreshed (a vanished instance's users expire).
const PRESENCE_TTL_MS: u64 = 30_000;
/// Local presences are re-announced this often, well inside the TTL.
const PRESENCE_HEARTBEAT_MS: u64 = 10_000;
/// Presences of other instances' clients a room keeps (beyond this, newcomers are not shown).
const MAX_REMOTE_PRESENCE: usize = 4096;
/// Presence frames a member may send in a burst, and per second after it. Frames beyond are
/// coalesced: the latest is relayed on the next tick, so a flood slows only its sender.
const PRESENCE_BURST: f64 = 20.0;
const PRESENCE_PER_SEC: f64 = 20.0;
/// Commands drained from the queue into one core job.
const BURST: usize = 1024;
/// Cursors mapped between offsets and relative positions per presence flush at most (each
/// walks the text); beyond, entries go out with the cursor their sender gave.
const MAX_MAPPED_CURSORS: usize = 256;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A compaction in flight: the new snapshot and its op seq, if there was anything to fold.
type Compaction = Option<BoxFut<Result<Option<(Vec<u8>, u64)>>>>;
/// A catch-up read in flight: ops after the room's seq.
type CatchUp = Option<BoxFut<Result<Vec<(u64, Vec<u8>)>>>>;

/// Resolves an optional in-flight future; pending forever when there is none.
async fn poll_opt<T>(fut: &mut Option<BoxFut<T>>) -> T {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A server frame as shared text, ready for any number of outbound queues.
pub(crate) fn text(msg: &ServerMessage) -> Utf8Bytes {
    if let ServerMessage::Error { code, .. } = msg {
        crate::metrics::get().error_frame(code);
    }
    Utf8Bytes::from(msg.to_json())
}

/// An `error` frame the server itself decides on (not an engine error).
pub(crate) fn error_text(code: &str, message: &str) -> Utf8Bytes {
    text(&ServerMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// Milliseconds on a monotonic clock, for the engine's time-based decisions.
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Work for the core, in arrival order.
enum Input {
    Join {
        conn: ConnId,
        sv: Option<Vec<u8>>,
        dialect: Dialect,
    },
    Leave {
        conn: ConnId,
    },
    /// A Yjs client's sync step 1: answer with what its state vector (v1) lacks.
    SyncStep1 {
        conn: ConnId,
        sv: Vec<u8>,
    },
    Update {
        conn: ConnId,
        id: Option<String>,
        update: Vec<u8>,
        /// v1 bytes (a Yjs client's), converted here before the room sees them.
        v1: bool,
        /// The room seq the sender said it had seen (JSON ops may say).
        base: Option<u64>,
    },
    /// An update from a Hocuspocus member that may not write: not applied; its `SyncStatus`
    /// says whether it would have changed anything (a provider's sync step 2 usually does not).
    ReadonlyUpdate {
        conn: ConnId,
        update: Vec<u8>,
    },
    /// Committed elsewhere.
    Remote {
        seq: u64,
        update: Vec<u8>,
        /// Said by the hub, so checked like a client's update first (and if it fails, read
        /// from the store instead); a catch-up read from the store is trusted, since the
        /// store only holds what a room accepted.
        from_hub: bool,
    },
    Committed(Result<u64>),
    /// A presence flush whose cursors need the document (see [`presence_frames`]).
    Presence(Vec<Pending>),
}

/// What the core decided, in order; the task carries it out.
enum Out {
    /// A join's first frame: the member is added right after it.
    Joined {
        conn: ConnId,
        sync: Frame,
    },
    /// A join that cannot be served (a bad state vector): this frame, then close.
    JoinRefused {
        conn: ConnId,
        frame: Frame,
    },
    To(ConnId, Frame),
    All {
        frames: Frames,
        except: Option<ConnId>,
    },
    Publish {
        seq: u64,
        update: Vec<u8>,
    },
    /// The commit of this member's op failed: tell it and close it so it resends.
    CommitFailed(ConnId),
    /// Close every member so it resyncs: a commit failed after its updates were broadcast.
    ResyncAll,
    /// Close this member (after the frames already queued for it).
    Close(ConnId, u16, &'static str),
    /// A presence flush, encoded.
    Presence(PresenceFrames),
}

/// One frame in each format present in the room (`None` where no member speaks it).
#[derive(Debug, Clone, Default)]
struct Frames {
    json: Option<Frame>,
    yjs: Option<Frame>,
    hocuspocus: Option<Frame>,
}

impl Frames {
    fn get(&self, dialect: Dialect) -> Option<&Frame> {
        match dialect {
            Dialect::Json => self.json.as_ref(),
            Dialect::Yjs => self.yjs.as_ref(),
            Dialect::Hocuspocus => self.hocuspocus.as_ref(),
        }
    }
}

/// A presence flush in each format present, each encoded once: what
/// [`Room::send_presence_frames`] hands out.
#[derive(Debug, Default)]
struct PresenceFrames {
    /// One `presence` frame per entry (the JSON protocol has one presence per frame), with the
    /// member it came from, which is not sent it.
    json: Vec<(Frame, Option<ConnId>)>,
    /// One awareness message with every entry, per Yjs dialect present.
    yjs: Option<Frame>,
    hocuspocus: Option<Frame>,
    /// Yjs members that sent some of the entries get the message without their own (`None`:
    /// nothing left for them).
    own: HashMap<ConnId, Option<Frame>>,
}

/// Whether a presence flush has cursors to map for members of another dialect present
/// (`speaks`: JSON, y-websocket, Hocuspocus), which needs the document.
fn needs_document(entries: &[Pending], speaks: [bool; 3]) -> bool {
    let [json, yjs, hp] = speaks;
    entries.iter().any(|e| {
        let p = &e.presence;
        !p.left
            && match &p.yjs {
                Some(y) => json && p.cursor.is_none() && y.state.contains("\"cursor\""),
                None => (yjs || hp) && p.cursor.is_some(),
            }
    })
}

/// Encodes a presence flush once per dialect present (`speaks`: JSON, y-websocket,
/// Hocuspocus). Given the room's document (on the core only), cursors are mapped for the other
/// side, at most [`MAX_MAPPED_CURSORS`] each way: a Concord client's offsets become relative
/// positions (`cursor`) for Yjs members, a Yjs client's relative positions into `body` become
/// `{anchor, head}` offsets for JSON members. Positions into other types (Tiptap's) stay as
/// they came.
fn presence_frames(
    room: &str,
    entries: &[Pending],
    speaks: [bool; 3],
    dialect_of: impl Fn(ConnId) -> Option<Dialect>,
    doc: Option<&concord_engine::Document>,
) -> PresenceFrames {
    let [json, yjs_present, hp_present] = speaks;
    let mut out = PresenceFrames::default();
    if json {
        let mut budget = MAX_MAPPED_CURSORS;
        for e in entries {
            let p = &e.presence;
            let mut cursor = None;
            if let (Some(y), Some(doc)) = (&p.yjs, doc) {
                if p.cursor.is_none() && !p.left && budget > 0 {
                    cursor = awareness::awareness_cursor(&y.state).and_then(|c| {
                        budget -= 1;
                        awareness::relative_to_offsets(doc, &c)
                    });
                }
            }
            let frame = match cursor {
                Some(cursor) => text(&ServerMessage::Presence(Presence {
                    cursor: Some(cursor),
                    ..p.clone()
                })),
                None => text(&ServerMessage::Presence(p.clone())),
            };
            out.json.push((frame.into(), e.origin));
        }
    }
    if yjs_present || hp_present {
        let mut budget = MAX_MAPPED_CURSORS;
        let encoded: Vec<_> = entries
            .iter()
            .map(|e| {
                let p = &e.presence;
                let mut cursor = None;
                if let (Some(c), Some(doc)) = (&p.cursor, doc) {
                    if p.yjs.is_none() && !p.left && budget > 0 {
                        budget -= 1;
                        cursor = awareness::offsets_to_relative(doc, c);
                    }
                }
                yjs::awareness_entry(p, cursor.as_ref())
            })
            .collect();
        let all = yjs::awareness_message(&encoded);
        if hp_present {
            out.hocuspocus = Some(yjs_frame(room, Dialect::Hocuspocus, all.clone()));
        }
        if yjs_present {
            out.yjs = Some(Frame::binary(all));
        }
        // A member is not sent its own entry back.
        let mut origins: Vec<ConnId> = entries.iter().filter_map(|e| e.origin).collect();
        origins.sort_unstable_by_key(|c| c.0);
        origins.dedup();
        for conn in origins {
            let Some(dialect) = dialect_of(conn).filter(|d| d.is_yjs()) else {
                continue;
            };
            let rest: Vec<_> = entries
                .iter()
                .zip(&encoded)
                .filter(|(e, _)| e.origin != Some(conn))
                .map(|(_, entry)| entry)
                .collect();
            let frame =
                (!rest.is_empty()).then(|| yjs_frame(room, dialect, yjs::awareness_message(rest)));
            out.own.insert(conn, frame);
        }
    }
    out
}

#[derive(Default)]
struct Effects {
    outs: Vec<Out>,
    catch_up: bool,
    /// Time each connection's updates cost.
    charges: Vec<(ConnId, Duration)>,
}

/// The CRDT half of a room (see the module docs). Moved onto a pool thread for each job.
struct Core {
    id: String,
    state: RoomState,
    /// The `sync` frame for joins without `?sv=`, shared until the document changes: a burst
    /// of joins (a reconnect storm, a popular document) encodes the state once.
    full_sync: Option<Frame>,
    /// Each member's wire format, and how many speak each.
    dialects: HashMap<ConnId, Dialect>,
    /// Members per dialect, indexed by [`Core::slot`].
    speakers: [usize; 3],
}

impl Core {
    fn dialect(&self, conn: ConnId) -> Dialect {
        self.dialects.get(&conn).copied().unwrap_or(Dialect::Json)
    }

    fn slot(dialect: Dialect) -> usize {
        match dialect {
            Dialect::Json => 0,
            Dialect::Yjs => 1,
            Dialect::Hocuspocus => 2,
        }
    }

    fn speaks(&self, dialect: Dialect) -> bool {
        self.speakers[Self::slot(dialect)] > 0
    }

    /// A y-protocols message for `conn`, in its dialect.
    fn yjs_to(&self, conn: ConnId, body: Vec<u8>) -> Frame {
        yjs_frame(&self.id, self.dialect(conn), body)
    }

    /// A `SyncStatus` for `conn`, if it speaks Hocuspocus.
    fn sync_status(&self, conn: ConnId, applied: bool, fx: &mut Effects) {
        if self.dialect(conn) == Dialect::Hocuspocus {
            let frame = Frame::binary(hocuspocus::sync_status(&self.id, applied));
            fx.outs.push(Out::To(conn, frame));
        }
    }

    fn step(&mut self, inputs: Vec<Input>) -> Effects {
        let mut fx = Effects::default();
        for input in inputs {
            match input {
                Input::Join { conn, sv, dialect } => {
                    if self.dialects.insert(conn, dialect).is_none() {
                        self.speakers[Self::slot(dialect)] += 1;
                    }
                    match dialect {
                        Dialect::Json => self.join(conn, sv, &mut fx),
                        Dialect::Yjs | Dialect::Hocuspocus => self.join_yjs(conn, &mut fx),
                    }
                }
                Input::Leave { conn } => {
                    if let Some(dialect) = self.dialects.remove(&conn) {
                        self.speakers[Self::slot(dialect)] -= 1;
                    }
                }
                Input::SyncStep1 { conn, sv } => {
                    match self.state.document().encode_state_as_update_v1(Some(&sv)) {
                        Ok(diff) => {
                            let frame = self.yjs_to(conn, yjs::sync_step2(diff));
                            fx.outs.push(Out::To(conn, frame));
                        }
                        Err(e) => {
                            tracing::debug!(room = %self.id, conn = conn.0, error = %e, "bad sync step 1");
                            fx.outs.push(Out::Close(conn, 1008, "bad state vector"));
                        }
                    }
                }
                Input::Update {
                    conn,
                    id,
                    update,
                    v1,
                    base,
                } => {
                    self.full_sync = None;
                    let start = CpuClock::start();
                    let update = if v1 {
                        match concord_engine::doc::update_v1_to_v2(&update) {
                            Ok(update) => update,
                            Err(e) => {
                                // As y-websocket's server does: the message is dropped.
                                tracing::debug!(room = %self.id, conn = conn.0, error = %e, "v1 update rejected");
                                self.sync_status(conn, false, &mut fx);
                                fx.charges.push((conn, start.elapsed()));
                                continue;
                            }
                        }
                    } else {
                        update
                    };
                    if let Err(e) = self.state.handle_op_based(conn, id, &update, base) {
                        tracing::debug!(room = %self.id, conn = conn.0, error = %e, "update rejected");
                        if self.dialect(conn) == Dialect::Json {
                            fx.outs
                                .push(Out::To(conn, text(&ServerMessage::error(&e)).into()));
                        }
                        self.sync_status(conn, false, &mut fx);
                        match e {
                            // It cost a rebuild: no second chance on this connection.
                            EngineError::IntegrationFailed { .. } => {
                                fx.outs.push(Out::Close(conn, 1008, "update rejected"));
                            }
                            // The room is full of work not yet durable: come back later and
                            // resend (the op is still the client's pending op).
                            EngineError::Overloaded { .. } => {
                                fx.outs.push(Out::Close(
                                    conn,
                                    1013,
                                    "room overloaded: retry later",
                                ));
                            }
                            _ => {}
                        }
                    }
                    fx.charges.push((conn, start.elapsed()));
                }
                Input::ReadonlyUpdate { conn, update } => {
                    let start = CpuClock::start();
                    let changes = self.state.document().would_change_v1(&update);
                    self.sync_status(conn, matches!(changes, Ok(false)), &mut fx);
                    fx.charges.push((conn, start.elapsed()));
                }
                Input::Remote {
                    seq,
                    update,
                    from_hub,
                } => {
                    if from_hub {
                        if let Err(e) = concord_engine::doc::decode_update(&update) {
                            tracing::warn!(room = %self.id, seq, error = %e, "update from the hub rejected; catching up from the store");
                            fx.catch_up = true;
                            continue;
                        }
                    }
                    self.full_sync = None;
                    if let Err(e) = self.state.handle_remote(seq, &update) {
                        tracing::error!(room = %self.id, seq, error = %e, "committed update rejected");
                    }
                }
                Input::Committed(result) => {
                    self.full_sync = None;
                    self.committed(result, &mut fx);
                }
                Input::Presence(entries) => {
                    let speaks =
                        [Dialect::Json, Dialect::Yjs, Dialect::Hocuspocus].map(|d| self.speaks(d));
                    let frames = presence_frames(
                        &self.id,
                        &entries,
                        speaks,
                        |conn| self.dialects.get(&conn).copied(),
                        Some(self.state.document()),
                    );
                    fx.outs.push(Out::Presence(frames));
                }
            }
            self.dispatch_events(&mut fx);
        }
        fx
    }

    fn join(&mut self, conn: ConnId, sv: Option<Vec<u8>>, fx: &mut Effects) {
        // An empty state vector (a fresh client) asks for everything, like none at all.
        let sv = sv.filter(|sv| sv.as_slice() != [0]);
        if sv.is_none() {
            if let Some(sync) = &self.full_sync {
                fx.outs.push(Out::Joined {
                    conn,
                    sync: sync.clone(),
                });
                return;
            }
        }
        match self.state.sync_for(sv.as_deref()) {
            Ok(sync) => {
                let sync = Frame::from(text(&sync));
                if sv.is_none() {
                    self.full_sync = Some(sync.clone());
                }
                fx.outs.push(Out::Joined { conn, sync });
            }
            Err(e) => fx.outs.push(Out::JoinRefused {
                conn,
                frame: text(&ServerMessage::error(&e)).into(),
            }),
        }
    }

    /// A Yjs client's first frame is the room's sync step 1, as y-websocket's server sends it:
    /// the client answers with what the room lacks and asks (its own step 1) for the rest.
    fn join_yjs(&mut self, conn: ConnId, fx: &mut Effects) {
        match yjs::sync_step1(&self.state.document().state_vector()) {
            Ok(step1) => fx.outs.push(Out::Joined {
                conn,
                sync: self.yjs_to(conn, step1),
            }),
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room state vector does not encode");
                let frame = match self.dialect(conn) {
                    Dialect::Hocuspocus => {
                        Frame::binary(hocuspocus::close(&self.id, "room unavailable"))
                    }
                    _ => Frame::binary(yjs::permission_denied("room unavailable")),
                };
                fx.outs.push(Out::JoinRefused { conn, frame });
            }
        }
    }

    fn committed(&mut self, result: Result<u64>, fx: &mut Effects) {
        match result {
            Ok(first) => {
                if let Err(e) = self.state.handle_committed(first) {
                    tracing::error!(room = %self.id, error = %e, "commit result out of order");
                }
            }
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "commit failed; closing its senders");
                let senders = self.state.handle_commit_failed();
                let lost = !senders.is_empty();
                for conn in senders {
                    fx.outs.push(Out::CommitFailed(conn));
                }
                if lost {
                    // The lost updates were broadcast already: everyone resyncs (two-way
                    // sync gives the room back what it lost), see `handle_commit_failed`.
                    fx.outs.push(Out::ResyncAll);
                }
            }
        }
    }

    fn dispatch_events(&mut self, fx: &mut Effects) {
        while let Some(event) = self.state.poll_event() {
            match event {
                RoomEvent::Ack { conn, id, seq } => match self.dialect(conn) {
                    Dialect::Json => {
                        fx.outs
                            .push(Out::To(conn, text(&ServerMessage::Ack { id, seq }).into()));
                    }
                    // Durable now: the provider counts it as synced.
                    Dialect::Hocuspocus => self.sync_status(conn, true, fx),
                    Dialect::Yjs => {}
                },
                RoomEvent::Broadcast {
                    seq,
                    update,
                    origin,
                } => {
                    let mut frames = Frames::default();
                    if self.speaks(Dialect::Json) {
                        frames.json = Some(
                            text(&ServerMessage::Op {
                                seq,
                                update: update.clone(),
                            })
                            .into(),
                        );
                    }
                    if self.speaks(Dialect::Yjs) || self.speaks(Dialect::Hocuspocus) {
                        match concord_engine::doc::update_v2_to_v1(&update) {
                            Ok(v1) => {
                                let body = yjs::update(v1);
                                if self.speaks(Dialect::Hocuspocus) {
                                    frames.hocuspocus =
                                        Some(Frame::binary(hocuspocus::wrap(&self.id, &body)));
                                }
                                if self.speaks(Dialect::Yjs) {
                                    frames.yjs = Some(Frame::binary(body));
                                }
                            }
                            Err(e) => {
                                tracing::error!(room = %self.id, seq, error = %e, "update does not convert to v1")
                            }
                        }
                    }
                    fx.outs.push(Out::All {
                        frames,
                        except: origin,
                    });
                }
                // Committed here (and already broadcast here): other instances learn it from
                // the hub.
                RoomEvent::Committed { seq, update } => fx.outs.push(Out::Publish { seq, update }),
                RoomEvent::CatchUp { .. } => fx.catch_up = true,
            }
        }
    }
}

struct MemberState {
    member: Member,
    presence: Option<Presence>,
    /// A presence frame held back by the rate limit; the latest wins.
    presence_held: Option<Presence>,
    presence_rate: TokenBucket,
    /// Milliseconds of pool CPU time this member may still spend.
    cpu: TokenBucket,
    /// When its presence last came (a Yjs client's awareness times out without renewal).
    presence_seen: u64,
    /// The awareness client id a Yjs member speaks for (the first it announced).
    awareness_client: Option<u64>,
}

/// A room's task. Created and registered by [`Rooms`].
pub(crate) struct RoomTask {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) rx: mpsc::Receiver<RoomCmd>,
}

impl RoomTask {
    pub(crate) async fn run(mut self) {
        let ctx = self.rooms.ctx().clone();
        // Subscribe before reading the store, so nothing committed elsewhere falls between.
        let mut sub = ctx.hub.subscribe(&self.id).await;
        let mut hub_open = true;
        let loaded = match self.rooms.load(&self.id).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room load failed");
                return self.fail_joins(ServerError::Unavailable).await;
            }
        };
        let (id, config) = (self.id.clone(), ctx.config.clone());
        let core = match ctx
            .cpu
            .run(move || load_state(&id, loaded, &config))
            .await
            .and_then(|ran| ran.value)
        {
            Ok(state) => Box::new(Core {
                id: self.id.clone(),
                state,
                full_sync: None,
                dialects: HashMap::new(),
                speakers: [0; 3],
            }),
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room data rejected");
                return self.fail_joins(ServerError::Unavailable).await;
            }
        };
        tracing::debug!(room = %self.id, seq = core.state.seq(), "room loaded");
        if ctx.config.webhooks.is_some() {
            // Off the room's path: joins do not wait for the outbox write.
            let (store, id, seq) = (ctx.store.clone(), self.id.clone(), core.state.seq());
            ctx.tracker.spawn(async move {
                if let Err(e) = store.webhook_event(&id, crate::store::webhooks::LOADED, seq).await {
                    tracing::warn!(room = %id, error = %e, "webhooks: recording room.loaded failed");
                }
            });
        }
        let mut room = Room {
            id: self.id.clone(),
            core: Some(core),
            members: HashMap::new(),
            joining: HashMap::new(),
            closing: false,
            hub: ctx.hub.clone(),
            cpu: ctx.cpu.clone(),
            cpu_budget: ctx.config.cpu_budget,
            cpu_ledger: ctx.cpu_ledger.clone(),
            max_update_bytes: ctx.config.limits.max_update_bytes,
            max_presence_bytes: ctx.config.limits.max_presence_bytes,
            remote_presence: HashMap::new(),
            presence_clock: 0,
            inputs: Vec::new(),
            server_ops: 0,
            presence_out: Coalescer::new(awareness::Budget::default()),
            deleted: None,
            departed: HashMap::new(),
        };
        for p in ctx.hub.live_presence(&self.id).await {
            room.hub_event(HubEvent::Presence(Box::new(p)));
        }
        let mut resync = false;
        let mut last_heartbeat = now_ms();

        let mut commit: Option<BoxFut<Result<u64>>> = None;
        let mut compaction: Compaction = None;
        let mut catch_up: CatchUp = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since = Some(tokio::time::Instant::now());
        let mut closing = false;
        let mut rx_done = false;

        loop {
            // Armed only while presence changes wait for their flush.
            let presence_due = room.presence_out.poll_timeout().map(|due| {
                tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()))
            });
            tokio::select! {
                _ = tokio::time::sleep_until(presence_due.unwrap_or_else(tokio::time::Instant::now)),
                    if presence_due.is_some() => room.flush_presence(now_ms()),
                _ = ctx.shutdown.cancelled(), if !closing => {
                    closing = true;
                    room.closing = true;
                    // Take what is already queued, refuse what comes later.
                    self.rx.close();
                }
                result = poll_opt(&mut commit) => {
                    commit = None;
                    room.inputs.push(Input::Committed(result));
                }
                result = poll_opt(&mut compaction) => {
                    compaction = None;
                    if let Some(core) = room.core.as_mut() {
                        match result {
                            Ok(Some((snapshot, op_seq))) => {
                                core.state.handle_compacted(snapshot, op_seq, now_ms());
                            }
                            Ok(None) => core.state.handle_compaction_skipped(now_ms()),
                            Err(e) => {
                                core.state.handle_compaction_failed(now_ms());
                                tracing::warn!(room = %room.id, error = %e, "compaction failed");
                            }
                        }
                    }
                }
                result = poll_opt(&mut catch_up) => {
                    catch_up = None;
                    match result {
                        Ok(ops) => room.inputs.extend(
                            ops.into_iter().map(|(seq, update)| Input::Remote {
                                seq,
                                update,
                                from_hub: false,
                            }),
                        ),
                        Err(e) => tracing::warn!(room = %room.id, error = %e, "catch-up failed"),
                    }
                }
                event = sub.recv(), if hub_open => {
                    let mut next = event;
                    for _ in 0..BURST {
                        match next {
                            Some(event) => resync |= room.hub_event(event),
                            None => {
                                hub_open = false;
                                break;
                            }
                        }
                        let Some(event) = sub.try_recv() else { break };
                        next = Some(event);
                    }
                }
                cmd = self.rx.recv(), if !rx_done => match cmd {
                    Some(cmd) => {
                        room.handle(cmd);
                        // Drain a burst: everything queued goes to the core as one job.
                        for _ in 0..BURST {
                            match self.rx.try_recv() {
                                Ok(cmd) => room.handle(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    // Closed (shutdown or unregistered) and drained.
                    None => {
                        rx_done = true;
                        closing = true;
                        room.closing = true;
                    }
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    room.expire_remote_presence(now);
                    room.expire_local_awareness(now);
                    room.release_held_presence(now);
                    if now.saturating_sub(last_heartbeat) >= PRESENCE_HEARTBEAT_MS {
                        last_heartbeat = now;
                        room.announce_local_presence();
                    }
                    let due = room.core.as_ref().is_some_and(|c| c.state.compaction_due(now));
                    if compaction.is_none() && due {
                        let store = ctx.store.clone();
                        let id = room.id.clone();
                        let history = ctx.config.history;
                        let folds = ctx.folds.clone();
                        compaction = Some(Box::pin(async move {
                            store.compact(&id, &history, &folds).await
                        }));
                    }
                    if room.members.is_empty() && commit.is_none() && room.uncommitted() == 0 {
                        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                        let idle_enough = since.elapsed() >= ctx.config.room_idle
                            || self.rooms.shedding();
                        if !closing && idle_enough
                            && self.rooms.unregister_if_idle(&self.id, self.generation, &self.rx)
                        {
                            self.rx.close();
                            closing = true;
                            room.closing = true;
                        }
                    } else {
                        idle_since = None;
                    }
                }
            }

            if room.deleted.is_some() {
                // Whatever is in flight is dropped: a commit not yet done rolls back, and the
                // deleter removes whatever did commit after this room has stopped.
                tracing::info!(room = %room.id, "room deleted; closing its members");
                room.close_all(4404, "room deleted");
                drop((commit, compaction, catch_up));
                self.rooms.unregister(&self.id, self.generation);
                return self.fail_joins(ServerError::RoomClosing).await;
            }
            if !room.inputs.is_empty() {
                match room.run_core().await {
                    Ok(catch_up) => resync |= catch_up,
                    Err(e) => {
                        // The core is gone with whatever it held that was not durable; its
                        // senders still hold those ops and resend after reconnecting.
                        tracing::error!(room = %room.id, error = %e, "room failed; restarting it");
                        room.abandon();
                        self.rooms.unregister(&self.id, self.generation);
                        return self.fail_joins(ServerError::RoomClosing).await;
                    }
                }
            }
            if commit.is_none() {
                if let Some(batch) = room.core.as_mut().and_then(|c| c.state.take_batch()) {
                    let committer = ctx.committer.clone();
                    let id = room.id.clone();
                    let meta = room.batch_meta();
                    commit = Some(Box::pin(
                        async move { committer.commit(id, batch, meta).await },
                    ));
                }
            }
            if resync && catch_up.is_none() {
                resync = false;
                let store = ctx.store.clone();
                let id = room.id.clone();
                let after = room.core.as_ref().map_or(0, |c| c.state.seq());
                catch_up = Some(Box::pin(async move { store.ops_after(&id, after).await }));
            }
            if rx_done && commit.is_none() && room.uncommitted() == 0 {
                break;
            }
        }

        // Drained: everything accepted is durable and acked. Other instances hear of the last
        // presence changes; close the members, then leave a snapshot behind so the next load
        // is one read.
        for e in room
            .presence_out
            .take_all()
            .into_iter()
            .filter(|e| e.publish)
        {
            room.hub
                .publish_presence(&room.id, &e.presence, PRESENCE_TTL_MS);
        }
        room.close_all(1001, "server shutting down");
        if let Some(f) = compaction.take() {
            let _ = f.await;
        }
        // Folded in steps of COMPACT_BYTES until the snapshot is at the room's seq, so the
        // next load reads no tail (bounded: a step that folds nothing ends it).
        let seq = room.core.as_ref().map_or(0, |c| c.state.seq());
        loop {
            match ctx
                .store
                .compact(&room.id, &ctx.config.history, &ctx.folds)
                .await
            {
                Ok(Some((_, folded))) if folded < seq => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(room = %room.id, error = %e, "final compaction failed");
                    break;
                }
            }
        }
        self.rooms.unregister(&self.id, self.generation);
        // Joins that raced the close are told to retry with a fresh room task.
        while let Ok(cmd) = self.rx.try_recv() {
            if let RoomCmd::Join { reply, .. } = cmd {
                let _ = reply.send(Err(ServerError::RoomClosing));
            }
        }
        if ctx.config.webhooks.is_some() {
            let seq = room.core.as_ref().map_or(0, |c| c.state.seq());
            if let Err(e) = ctx
                .store
                .webhook_event(&room.id, crate::store::webhooks::UNLOADED, seq)
                .await
            {
                tracing::warn!(room = %room.id, error = %e, "webhooks: recording room.unloaded failed");
            }
        }
        tracing::debug!(room = %room.id, "room unloaded");
    }

    async fn fail_joins(mut self, err: ServerError) {
        self.rooms.unregister(&self.id, self.generation);
        self.rx.close();
        let mut err = Some(err);
        while let Some(cmd) = self.rx.recv().await {
            if let RoomCmd::Join { reply, .. } = cmd {
                let e = err.take().unwrap_or(ServerError::Unavailable);
                let _ = reply.send(Err(e));
            }
        }
    }
}

fn load_state(id: &str, loaded: Loaded, config: &crate::config::Config) -> Result<RoomState> {
    RoomState::load(
        loaded.snapshot.as_deref(),
        loaded.snapshot_seq,
        &loaded.ops,
        config.compaction,
        now_ms(),
    )
    .map(|state| state.with_limits(config.room_limits))
    .map_err(|source| ServerError::Corrupt {
        room: id.to_owned(),
        source,
    })
}

/// What a connection's update cost the pool thread that applied it: the thread's CPU time, not
/// the wall clock. On a busy machine the OS takes the core away mid-apply, and that time is no
/// client's doing; charging it would cut off ordinary clients whenever the host is loaded.
struct CpuClock(Option<cpu_time::ThreadTime>);

impl CpuClock {
    fn start() -> CpuClock {
        CpuClock(cpu_time::ThreadTime::try_now().ok())
    }

    /// Zero where the thread clock is unavailable (no platform Concord runs on): the budget
    /// then never bites, which is the safe way for it to fail.
    fn elapsed(&self) -> Duration {
        self.0
            .as_ref()
            .and_then(|t| t.try_elapsed().ok())
            .unwrap_or_default()
    }
}

/// The CPU budget of each connection: `burst` of pool CPU time, refilled at `share` of a core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuBudget {
    /// Milliseconds of pool CPU time a connection may spend at once.
    pub burst_ms: f64,
    /// Fraction of one core a connection may use over time.
    pub share: f64,
}

impl CpuBudget {
    /// A new client's budget: the whole burst, in milliseconds.
    fn full_bucket(&self, now_ms: u64) -> TokenBucket {
        TokenBucket::new(self.burst_ms, self.share * 1000.0, now_ms)
    }
}

impl Default for CpuBudget {
    fn default() -> Self {
        CpuBudget {
            burst_ms: 5_000.0,
            share: 0.25,
        }
    }
}

/// The async half of a room (see the module docs).
struct Room {
    id: String,
    /// `None` only while a job runs (or after one failed).
    core: Option<Box<Core>>,
    members: HashMap<ConnId, MemberState>,
    /// Joins waiting for their `sync` frame from the core.
    joining: HashMap<ConnId, (Member, oneshot::Sender<Result<()>>)>,
    /// Unloading or shutting down: joins are sent back to the registry.
    closing: bool,
    hub: Arc<dyn Hub>,
    cpu: CpuPool,
    cpu_budget: CpuBudget,
    /// Where members' CPU budgets outlive their connections.
    cpu_ledger: Arc<crate::auth::limits::CpuLedger>,
    max_update_bytes: usize,
    max_presence_bytes: usize,
    /// Presences of clients on other instances, with their expiry (monotonic ms).
    remote_presence: HashMap<String, (Presence, u64)>,
    /// The clock given to the next presence of a Concord client (see [`Presence::clock`]).
    presence_clock: u32,
    /// Work gathered for the next core job.
    inputs: Vec<Input>,
    /// Hocuspocus updates given an op id so far (see [`concord_engine::room::server_op_id`]).
    server_ops: u64,
    /// Presence changes waiting for the next flush (local and from other instances).
    presence_out: Coalescer,
    /// Deleted (here or on another instance): stop without writing anything more. Holds the
    /// deleters waiting for the stop.
    deleted: Option<Vec<oneshot::Sender<()>>>,
    /// Payers of members that left since the last core job: an update they sent just before
    /// closing may still be in it, and its cost goes to the ledger, not to no one.
    departed: HashMap<ConnId, crate::auth::limits::Payer>,
}

impl Room {
    fn uncommitted(&self) -> usize {
        self.core.as_ref().map_or(0, |c| c.state.uncommitted())
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join {
                conn,
                sv,
                member,
                reply,
            } => {
                if self.closing {
                    let _ = reply.send(Err(ServerError::RoomClosing));
                    return;
                }
                self.inputs.push(Input::Join {
                    conn,
                    sv,
                    dialect: member.dialect,
                });
                self.joining.insert(conn, (member, reply));
            }
            RoomCmd::Delete { done } => {
                let waiting = self.deleted.get_or_insert_with(Vec::new);
                waiting.extend(done);
            }
            RoomCmd::Frame { conn, msg } => {
                let now = now_ms();
                let Some(m) = self.members.get_mut(&conn) else {
                    return;
                };
                let mut base = None;
                let (id, update, v1) = match msg {
                    Request::Json(ClientMessage::Op {
                        id,
                        update,
                        base: said,
                    }) => {
                        base = said;
                        (id, update, false)
                    }
                    Request::Json(ClientMessage::Sync { update }) => (None, update, false),
                    Request::Json(ClientMessage::Presence(mut p)) => {
                        // Who it is from, and its clock, are the server's to say.
                        p.user = m.member.user.clone();
                        p.yjs = None;
                        p.you = false;
                        p.left = false;
                        self.presence_clock = self.presence_clock.wrapping_add(1).max(1);
                        p.clock = self.presence_clock;
                        return self.presence_from(conn, p, now);
                    }
                    Request::Yjs(YjsRequest::Update(update)) => {
                        if m.member.dialect != Dialect::Hocuspocus {
                            (None, update, true)
                        } else if m.member.role.can_write() {
                            // Acked (as `SyncStatus`) once durable, like a JSON op.
                            self.server_ops += 1;
                            (
                                Some(concord_engine::room::server_op_id(self.server_ops)),
                                update,
                                true,
                            )
                        } else {
                            if !m.cpu.available(now) {
                                return self.over_cpu_budget(conn);
                            }
                            self.inputs.push(Input::ReadonlyUpdate { conn, update });
                            return;
                        }
                    }
                    Request::Stateless(payload) => {
                        // Relayed like presence, under the same rate.
                        if m.presence_rate.try_take(now) {
                            let frame = Frame::binary(hocuspocus::stateless(&self.id, &payload));
                            self.send_each(Some(conn), |d| {
                                (d == Dialect::Hocuspocus).then(|| frame.clone())
                            });
                        }
                        return;
                    }
                    Request::Yjs(YjsRequest::SyncStep1(sv)) => {
                        self.inputs.push(Input::SyncStep1 { conn, sv });
                        return;
                    }
                    Request::Yjs(YjsRequest::Awareness(update)) => {
                        let claimed = m.awareness_client;
                        // A connection speaks for one awareness client: the first it names
                        // that no one else in the room speaks for (so no one can move, hide or
                        // rename another's cursor by naming its id, which every member sees).
                        let entry = update.clients.iter().find(|(id, _)| match claimed {
                            Some(c) => c == id.get(),
                            None => !self.awareness_id_taken(conn, id.get()),
                        });
                        let Some((client, entry)) = entry else {
                            return;
                        };
                        let client = client.get();
                        let Some(m) = self.members.get_mut(&conn) else {
                            return;
                        };
                        m.awareness_client = Some(client);
                        let name = m.member.name.as_deref();
                        let Some(p) = yjs::presence_of(&m.member.user, client, entry, name) else {
                            return;
                        };
                        if p.left {
                            m.presence_held = None;
                            if let Some(old) = m.presence.take() {
                                self.presence_left(old);
                            }
                            return;
                        }
                        return self.presence_from(conn, p, now);
                    }
                    Request::Yjs(YjsRequest::QueryAwareness) => {
                        let dialect = m.member.dialect;
                        let all = self.all_presence();
                        let body = yjs::awareness(&all.iter().collect::<Vec<_>>());
                        let frame = yjs_frame(&self.id, dialect, body);
                        return self.send_to(conn, frame);
                    }
                    Request::Yjs(YjsRequest::Ignored) => return,
                };
                // Access first: a reader's update is refused whatever it costs or holds.
                if !m.member.role.can_write() {
                    let frame = match m.member.dialect {
                        Dialect::Json => error_text(
                            "forbidden",
                            "you have read-only access to this document; the update was not applied",
                        )
                        .into(),
                        Dialect::Yjs => Frame::binary(yjs::permission_denied(
                            "read-only access: the update was not applied",
                        )),
                        // Handled above (as a read-only update).
                        Dialect::Hocuspocus => Frame::binary(hocuspocus::sync_status(&self.id, false)),
                    };
                    return self.send_to(conn, frame);
                }
                if !m.cpu.available(now) {
                    return self.over_cpu_budget(conn);
                }
                self.inputs.push(Input::Update {
                    conn,
                    id,
                    update,
                    v1,
                    base,
                });
            }
            RoomCmd::Leave { conn } => {
                self.joining.remove(&conn);
                self.inputs.push(Input::Leave { conn });
                if let Some(m) = self.remove_member(conn) {
                    if let Some(p) = m.presence {
                        self.presence_left(p);
                    }
                }
            }
        }
    }

    /// Whether awareness client `id` already stands for someone else in this room: another
    /// local connection's Yjs client, or any presence (local or from another instance) that
    /// Yjs clients see under that id.
    fn awareness_id_taken(&self, conn: ConnId, id: u64) -> bool {
        let shown_as = |p: &Presence| {
            p.yjs
                .as_ref()
                .map_or_else(|| yjs::presence_client_id(&p.user), |y| y.client)
        };
        self.members.iter().any(|(c, m)| {
            *c != conn
                && (m.awareness_client == Some(id)
                    || m.presence.as_ref().is_some_and(|p| shown_as(p) == id))
        }) || self
            .remote_presence
            .values()
            .any(|(p, _)| !p.left && shown_as(p) == id)
    }

    /// A member's presence (set by the server where it must be): relayed now, or held back
    /// until the member's presence rate allows (the latest wins).
    fn presence_from(&mut self, conn: ConnId, mut p: Presence, now: u64) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if let Some(name) = &m.member.name {
            p.name = Some(name.clone());
        }
        m.presence_seen = now;
        if m.presence_rate.try_take(now) {
            m.presence_held = None;
            self.relay_presence(conn, p);
        } else {
            m.presence_held = Some(p);
        }
    }

    /// Tells everyone (here and on other instances) that this presence left, at the next
    /// flush (it replaces any state of the same user still waiting, so it is never overtaken).
    fn presence_left(&mut self, mut p: Presence) {
        p.left = true;
        p.cursor = None;
        self.presence_out.handle_presence(p, None, true, now_ms());
    }

    /// Every live presence in the room, local and remote.
    /// What history keeps of each update in flight: its author is the connection's
    /// authenticated name, else the name its presence declares (set by the client, shown as
    /// such), else unknown.
    fn batch_meta(&self) -> Vec<crate::store::OpMeta> {
        let Some(core) = self.core.as_ref() else {
            return Vec::new();
        };
        core.state
            .in_flight_origins()
            .into_iter()
            .map(|(conn, base_seq)| crate::store::OpMeta {
                author: self.members.get(&conn).and_then(|m| {
                    m.member
                        .name
                        .clone()
                        .or_else(|| m.presence.as_ref().and_then(|p| p.name.clone()))
                }),
                base_seq,
            })
            .collect()
    }

    fn all_presence(&self) -> Vec<Presence> {
        let local = self.members.values().filter_map(|m| m.presence.clone());
        let remote = self.remote_presence.values().map(|(p, _)| p.clone());
        local.chain(remote).collect()
    }

    /// Takes a member out; what it left of its CPU budget goes to the ledger.
    fn remove_member(&mut self, conn: ConnId) -> Option<MemberState> {
        let m = self.members.remove(&conn)?;
        self.settle(conn, &m);
        Some(m)
    }

    fn drain_members(&mut self) -> Vec<MemberState> {
        let all: Vec<(ConnId, MemberState)> = self.members.drain().collect();
        all.into_iter()
            .map(|(conn, m)| {
                self.settle(conn, &m);
                m
            })
            .collect()
    }

    /// Leaves what a departing member did not spend to its payer's next connection.
    fn settle(&mut self, conn: ConnId, m: &MemberState) {
        if let Some(payer) = m.member.payer {
            self.cpu_ledger.save(payer, m.cpu, now_ms());
            self.departed.insert(conn, payer);
        }
    }

    fn over_cpu_budget(&mut self, conn: ConnId) {
        tracing::info!(room = %self.id, conn = conn.0, "connection over its CPU budget; closing it");
        if self.members.get(&conn).map(|m| m.member.dialect) == Some(Dialect::Json) {
            self.send_to(
                conn,
                error_text(
                    "cpu_budget",
                    "your updates are costing the server too much time; reconnect later",
                )
                .into(),
            );
        }
        if let Some(m) = self.remove_member(conn) {
            m.member
                .kill
                .kill(1013, "cpu budget exhausted: retry later");
        }
    }

    /// Runs the gathered inputs on the pool; true if the room must catch up from the store.
    async fn run_core(&mut self) -> Result<bool> {
        let Some(mut core) = self.core.take() else {
            return Err(ServerError::Internal("room core missing"));
        };
        let inputs = std::mem::take(&mut self.inputs);
        // Fan-out latency runs from here: the burst was taken from the queue just now.
        let received = Instant::now();
        let ran = self
            .cpu
            .run(move || {
                let fx = core.step(inputs);
                (core, fx)
            })
            .await?;
        let (core, fx) = ran.value;
        self.core = Some(core);
        let now = now_ms();
        for (conn, took) in fx.charges {
            let ms = took.as_secs_f64() * 1000.0;
            if let Some(m) = self.members.get_mut(&conn) {
                m.cpu.charge(ms, now);
            } else if let Some(&payer) = self.departed.get(&conn) {
                let budget = self.cpu_budget;
                self.cpu_ledger
                    .charge(payer, ms, now, || budget.full_bucket(now));
            }
        }
        self.departed.clear();
        for out in fx.outs {
            let broadcast = matches!(out, Out::All { .. });
            self.carry_out(out, now);
            if broadcast {
                crate::metrics::get()
                    .fanout_seconds
                    .observe(crate::metrics::seconds(received));
            }
        }
        Ok(fx.catch_up)
    }

    fn carry_out(&mut self, out: Out, now: u64) {
        match out {
            Out::Joined { conn, sync } => {
                let Some((member, reply)) = self.joining.remove(&conn) else {
                    return;
                };
                if !member.out.offer(sync) {
                    crate::metrics::get().slow_consumer_closes.inc();
                    let _ = reply.send(Ok(()));
                    member.kill.kill(1013, "too slow: reconnect to resync");
                    return;
                }
                let all = self.all_presence();
                match member.dialect {
                    Dialect::Json => {
                        // Tell the member who it is in presence frames.
                        let you = Presence {
                            user: member.user.clone(),
                            you: true,
                            ..Presence::default()
                        };
                        member.out.offer(text(&ServerMessage::Presence(you)));
                        if !member.role.can_write() {
                            member.out.offer(text(&ServerMessage::Access {
                                role: crate::auth::Role::Read.as_str().to_owned(),
                            }));
                        }
                        for p in all {
                            member.out.offer(text(&ServerMessage::Presence(p)));
                        }
                    }
                    Dialect::Yjs | Dialect::Hocuspocus => {
                        if !all.is_empty() {
                            let all: Vec<&Presence> = all.iter().collect();
                            let body = yjs::awareness(&all);
                            member.out.offer(yjs_frame(&self.id, member.dialect, body));
                        }
                    }
                }
                let cpu = member
                    .payer
                    .and_then(|payer| self.cpu_ledger.resume(payer, now))
                    .unwrap_or_else(|| self.cpu_budget.full_bucket(now));
                self.members.insert(
                    conn,
                    MemberState {
                        member,
                        presence: None,
                        presence_held: None,
                        presence_rate: TokenBucket::new(PRESENCE_BURST, PRESENCE_PER_SEC, now),
                        cpu,
                        presence_seen: now,
                        awareness_client: None,
                    },
                );
                let _ = reply.send(Ok(()));
            }
            Out::JoinRefused { conn, frame } => {
                if let Some((member, reply)) = self.joining.remove(&conn) {
                    member.out.offer(frame);
                    let _ = reply.send(Ok(()));
                    member.kill.kill(1008, "bad state vector");
                }
            }
            Out::To(conn, frame) => self.send_to(conn, frame),
            Out::All { frames, except } => self.send_frames(&frames, except),
            Out::Publish { seq, update } => self.hub.publish_update(&self.id, seq, &update),
            Out::Close(conn, code, reason) => {
                if let Some(m) = self.remove_member(conn) {
                    m.member.kill.kill(code, reason);
                }
            }
            Out::Presence(frames) => self.send_presence_frames(&frames),
            Out::CommitFailed(conn) => {
                if self.members.get(&conn).map(|m| m.member.dialect) == Some(Dialect::Json) {
                    self.send_to(
                        conn,
                        error_text(
                            "unavailable",
                            "the store is unavailable; reconnect and resend",
                        )
                        .into(),
                    );
                }
                if let Some(m) = self.remove_member(conn) {
                    m.member.kill.kill(1011, "store unavailable");
                }
            }
            Out::ResyncAll => {
                for m in self.drain_members() {
                    m.member
                        .kill
                        .kill(1011, "store unavailable: reconnect to resync");
                }
            }
        }
    }

    /// A hub event; true if the room must catch up from the store.
    fn hub_event(&mut self, event: HubEvent) -> bool {
        match event {
            HubEvent::Update { seq, update } => {
                // The hub is input like any other: an update no client could have sent is
                // not trusted; the store has the real one, so read it from there.
                if update.len() > self.max_update_bytes {
                    tracing::warn!(room = %self.id, seq, len = update.len(), "oversized update from the hub; catching up from the store");
                    return true;
                }
                self.inputs.push(Input::Remote {
                    seq,
                    update,
                    from_hub: true,
                });
                false
            }
            HubEvent::Presence(p) => {
                // Held to the size a client's presence frame may have.
                let len = serde_json::to_vec(&p).map_or(usize::MAX, |v| v.len());
                if len <= self.max_presence_bytes {
                    self.remote_presence_event(*p);
                }
                false
            }
            HubEvent::Deleted => {
                self.deleted.get_or_insert_with(Vec::new);
                false
            }
            HubEvent::Resync => true,
        }
    }

    /// A member's presence, for the next flush (to the others here and on other instances).
    fn relay_presence(&mut self, conn: ConnId, p: Presence) {
        self.presence_out
            .handle_presence(p.clone(), Some(conn), true, now_ms());
        if let Some(m) = self.members.get_mut(&conn) {
            m.presence = Some(p);
        }
    }

    /// The coalesced presence changes, if due at `now`: told to other instances, then sent to
    /// the members here once per dialect (through the core when cursors need the document).
    fn flush_presence(&mut self, now: u64) {
        let entries = self.presence_out.poll_flush(now);
        if entries.is_empty() {
            return;
        }
        for e in entries.iter().filter(|e| e.publish) {
            self.hub
                .publish_presence(&self.id, &e.presence, PRESENCE_TTL_MS);
        }
        let mut speaks = [false; 3];
        for m in self.members.values() {
            speaks[Core::slot(m.member.dialect)] = true;
        }
        if self.core.is_some() && needs_document(&entries, speaks) {
            self.inputs.push(Input::Presence(entries));
            return;
        }
        let members = &self.members;
        let frames = presence_frames(
            &self.id,
            &entries,
            speaks,
            |conn| members.get(&conn).map(|m| m.member.dialect),
            None,
        );
        self.send_presence_frames(&frames);
    }

    /// Presence frames held back by the rate limit go out once their sender has tokens again.
    fn release_held_presence(&mut self, now: u64) {
        let ready: Vec<(ConnId, Presence)> = self
            .members
            .iter_mut()
            .filter(|(_, m)| m.presence_held.is_some())
            .filter_map(|(conn, m)| {
                if m.presence_rate.try_take(now) {
                    m.presence_held.take().map(|p| (*conn, p))
                } else {
                    None
                }
            })
            .collect();
        for (conn, p) in ready {
            self.relay_presence(conn, p);
        }
    }

    fn remote_presence_event(&mut self, p: Presence) {
        if p.left {
            self.remote_presence.remove(&p.user);
        } else if self.remote_presence.len() < MAX_REMOTE_PRESENCE
            || self.remote_presence.contains_key(&p.user)
        {
            self.remote_presence
                .insert(p.user.clone(), (p.clone(), now_ms() + PRESENCE_TTL_MS));
        } else {
            return;
        }
        self.presence_out.handle_presence(p, None, false, now_ms());
    }

    /// Users of a vanished instance stop being refreshed: tell local members they left.
    fn expire_remote_presence(&mut self, now: u64) {
        let expired: Vec<String> = self
            .remote_presence
            .iter()
            .filter(|(_, (_, expiry))| *expiry <= now)
            .map(|(user, _)| user.clone())
            .collect();
        for user in expired {
            if let Some((mut p, _)) = self.remote_presence.remove(&user) {
                p.left = true;
                p.cursor = None;
                self.presence_out.handle_presence(p, None, false, now);
            }
        }
    }

    /// A Yjs client that stopped renewing its awareness (y-protocols renews every 15 s) is
    /// gone for everyone after [`PRESENCE_TTL_MS`], as y-protocols' own timeout says.
    fn expire_local_awareness(&mut self, now: u64) {
        let stale: Vec<ConnId> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.member.dialect.is_yjs()
                    && m.presence.is_some()
                    && now.saturating_sub(m.presence_seen) >= PRESENCE_TTL_MS
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stale {
            if let Some(p) = self.members.get_mut(&conn).and_then(|m| m.presence.take()) {
                self.presence_left(p);
            }
        }
    }

    fn announce_local_presence(&self) {
        for m in self.members.values() {
            if let Some(p) = &m.presence {
                self.hub.publish_presence(&self.id, p, PRESENCE_TTL_MS);
            }
        }
    }

    fn send_to(&mut self, conn: ConnId, frame: Frame) {
        let ok = match self.members.get(&conn) {
            Some(m) => m.member.out.offer(frame),
            None => return,
        };
        if !ok {
            self.drop_slow(conn);
        }
    }

    /// Sends each member the frame in its format, encoding each format at most once.
    fn send_each(
        &mut self,
        except: Option<ConnId>,
        mut frame: impl FnMut(Dialect) -> Option<Frame>,
    ) {
        let (mut json, mut yjs, mut hp) = (None, None, None);
        let mut slow = Vec::new();
        for (conn, m) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            let slot = match m.member.dialect {
                Dialect::Json => &mut json,
                Dialect::Yjs => &mut yjs,
                Dialect::Hocuspocus => &mut hp,
            };
            let f = match slot {
                Some(f) => f,
                None => slot.insert(frame(m.member.dialect)),
            };
            if let Some(f) = f {
                if !m.member.out.offer(f.clone()) {
                    slow.push(*conn);
                }
            }
        }
        for conn in slow {
            self.drop_slow(conn);
        }
    }

    fn send_frames(&mut self, frames: &Frames, except: Option<ConnId>) {
        self.send_each(except, |d| frames.get(d).cloned());
    }

    /// A presence flush to every member in its format: the JSON frames but those it sent,
    /// the awareness message (without its own entries if it sent some).
    fn send_presence_frames(&mut self, frames: &PresenceFrames) {
        let mut slow = Vec::new();
        for (conn, m) in &self.members {
            let offer = |f: &Frame| m.member.out.offer(f.clone());
            let ok = match m.member.dialect {
                Dialect::Json => frames
                    .json
                    .iter()
                    .filter(|(_, origin)| *origin != Some(*conn))
                    .all(|(f, _)| offer(f)),
                dialect => {
                    let frame = match frames.own.get(conn) {
                        Some(own) => own.as_ref(),
                        None if dialect == Dialect::Yjs => frames.yjs.as_ref(),
                        None => frames.hocuspocus.as_ref(),
                    };
                    frame.is_none_or(offer)
                }
            };
            if !ok {
                slow.push(*conn);
            }
        }
        for conn in slow {
            self.drop_slow(conn);
        }
    }

    fn drop_slow(&mut self, conn: ConnId) {
        if let Some(m) = self.remove_member(conn) {
            tracing::debug!(room = %self.id, conn = conn.0, "slow consumer disconnected");
            crate::metrics::get().slow_consumer_closes.inc();
            m.member.kill.kill(1013, "too slow: reconnect to resync");
        }
    }

    fn close_all(&mut self, code: u16, reason: &'static str) {
        for m in self.drain_members() {
            m.member.out.close(code, reason);
            m.member.kill.kill(code, reason);
        }
        // Joins still waiting are sent back to the registry (which retries or gives up).
        for (_, (_, reply)) in self.joining.drain() {
            let _ = reply.send(Err(ServerError::RoomClosing));
        }
    }

    /// The core failed: everyone reconnects to a fresh room task.
    fn abandon(&mut self) {
        self.close_all(1012, "room restarting: reconnect");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection is charged for the CPU its update used, not for time the thread was off
    /// the core: a loaded host must not cut off ordinary clients.
    #[test]
    fn the_cpu_clock_counts_work_not_waiting() {
        let waited = CpuClock::start();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            waited.elapsed() < Duration::from_millis(10),
            "{:?}",
            waited.elapsed()
        );

        let worked = CpuClock::start();
        let until = Instant::now() + Duration::from_millis(20);
        let mut spins = 0u64;
        while Instant::now() < until {
            spins = std::hint::black_box(spins + 1);
        }
        assert!(
            worked.elapsed() > Duration::ZERO,
            "{spins} spins cost nothing"
        );
    }
}
