//! [`RoomHost`]: one room as the server runs it, without I/O.
//!
//! Members of every protocol (JSON, y-websocket, Hocuspocus) and in-process writers (a REST
//! write, a restore) join the same host. It takes [`Input`]s (frames already decoded by the
//! protocol's adapter, the results of the store commands it asked for, hub events, time) and
//! gives [`Output`]s: frames per member, each rendered once per protocol per event; store
//! commands (commit, compact, catch up); hub publishes; replies to writers. Its timers live
//! inside it ([`RoomHost::poll_timeout`]). The server's room task only moves bytes between
//! sockets, the CPU pool, the store and the hub, in the manner of `quinn` beside `quinn-proto`.
//!
//! # Call order
//! 1. [`RoomHost::new`] with the room's loaded [`RoomState`].
//! 2. [`RoomHost::handle`] for each input, in arrival order, with the time; inputs that cost
//!    CPU ([`RoomHost::is_light`] says which do not) belong on a worker pool.
//! 3. Drain [`RoomHost::poll_output`] after every batch of inputs, and carry each out in order.
//! 4. Arm a timer for [`RoomHost::poll_timeout`]; when it fires, handle [`Input::Timeout`].
//!
//! The host asks for at most one commit, one compaction and one catch-up read at a time and
//! waits for its answer ([`Input::Committed`], [`Input::Compacted`], [`Input::CaughtUp`]).
//! Every member removed, for whatever reason, ends with [`Output::Removed`], which hands back
//! what it left of its CPU budget; [`Output::Close`] asks for its connection to be closed.

mod presence;
pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::awareness::{self, Coalescer};
use crate::error::EngineError;
use crate::rate::TokenBucket;
use crate::room::{server_op_id, ConnId, RoomEvent, RoomState};
use crate::wire::{ClientMessage, Presence, ServerMessage};
use crate::yjs::{self, YjsRequest};
use crate::{doc, hocuspocus};

pub use presence::{PRESENCE_HEARTBEAT_MS, PRESENCE_TTL_MS};
pub use protocol::{Frame, Protocol};

use presence::{RemotePresence, PRESENCE_BURST, PRESENCE_PER_SEC};
use protocol::yjs_frame;

/// Housekeeping (expiries, heartbeats, compaction and idle checks) runs this often.
const TICK_MS: u64 = 250;

/// The CPU budget of each member: `burst_ms` of pool CPU time, refilled at `share` of a core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuBudget {
    /// Milliseconds of pool CPU time a connection may spend at once.
    pub burst_ms: f64,
    /// Fraction of one core a connection may use over time.
    pub share: f64,
}

impl CpuBudget {
    /// A new payer's budget: the whole burst, in milliseconds.
    pub fn full_bucket(&self, now_ms: u64) -> TokenBucket {
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

/// How a host behaves; the server fills it from its settings.
#[derive(Debug, Clone, Copy)]
pub struct HostConfig {
    /// Updates from the hub larger than this are not trusted (read from the store instead).
    pub max_update_bytes: usize,
    /// Presences from the hub larger than this are dropped.
    pub max_presence_bytes: usize,
    /// A room with no one in it and nothing in flight asks to unload after this long.
    pub idle_ms: u64,
    /// The CPU time a thread has spent so far: what an update cost is measured with it, not
    /// with the wall clock (on a busy machine the OS takes the core away mid-apply, and that
    /// is no client's doing). Zero where no such clock exists: the budget then never bites.
    pub cpu_clock: fn() -> Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        let limits = crate::wire::Limits::default();
        HostConfig {
            max_update_bytes: limits.max_update_bytes,
            max_presence_bytes: limits.max_presence_bytes,
            idle_ms: 30_000,
            cpu_clock: || Duration::ZERO,
        }
    }
}

/// A connection joining the room.
#[derive(Debug, Clone)]
pub struct Joiner {
    /// Its wire format.
    pub protocol: Protocol,
    /// Who it is in presence frames: set by the server, never by the client.
    pub user: String,
    /// The authenticated user's display name, which replaces any name the client claims in
    /// presence (`None` with auth off).
    pub name: Option<String>,
    /// Whether it may write (a reader is told so when it joins, in JSON).
    pub writable: bool,
    /// Its state vector (v1), if it resumes (JSON `?sv=`).
    pub sv: Option<Vec<u8>>,
    /// Pool CPU time it may spend, in milliseconds (what its payer left, or a full budget).
    pub cpu: TokenBucket,
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

/// What happens to a room, in the order it happened.
#[derive(Debug)]
pub enum Input {
    /// A connection joins; the host answers with [`Output::Joined`] after its first frames.
    Join {
        /// The connection.
        conn: ConnId,
        /// Who it is.
        joiner: Joiner,
    },
    /// A connection left (or was dropped by the server as a slow consumer).
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// A member's frame.
    Frame {
        /// The member.
        conn: ConnId,
        /// The frame.
        request: Request,
        /// Whether it may write now (access can change while a connection is open).
        writable: bool,
    },
    /// An in-process write (REST, restore): one v2 update, answered with
    /// [`Output::Written`] once durable or refused. `conn` is the writer's own id.
    Write {
        /// The writer's id (never a member's).
        conn: ConnId,
        /// v2 update bytes.
        update: Vec<u8>,
        /// Who history records as its author.
        author: Option<String>,
    },
    /// The commit asked for with [`Output::Commit`] ended: its first seq, or failed.
    Committed(Result<u64, ()>),
    /// The compaction asked for with [`Output::Compact`] ended: the new snapshot and the seq
    /// it folds to (`None`: nothing to fold), or failed.
    Compacted(Result<Option<(Vec<u8>, u64)>, ()>),
    /// The catch-up read asked for with [`Output::CatchUp`] ended: ops after the seq asked.
    CaughtUp(Result<Vec<(u64, Vec<u8>)>, ()>),
    /// An update another instance committed, as the hub says (checked before it is trusted).
    HubUpdate {
        /// Its seq.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// A presence from another instance.
    HubPresence(Presence),
    /// The hub may have lost messages: read what was missed from the store.
    Resync,
    /// The time given to [`RoomHost::handle`] reached [`RoomHost::poll_timeout`]. `shedding`:
    /// the instance is out of room for rooms, so an idle room should unload now.
    Timeout {
        /// Unload at once when idle.
        shedding: bool,
    },
}

/// One frame in each protocol present in the room (`None` where no member speaks it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frames {
    /// For JSON members.
    pub json: Option<Frame>,
    /// For y-websocket members.
    pub yjs: Option<Frame>,
    /// For Hocuspocus members.
    pub hocuspocus: Option<Frame>,
}

impl Frames {
    /// The frame for members speaking `protocol`.
    pub fn get(&self, protocol: Protocol) -> Option<&Frame> {
        match protocol {
            Protocol::Json => self.json.as_ref(),
            Protocol::Yjs => self.yjs.as_ref(),
            Protocol::Hocuspocus => self.hocuspocus.as_ref(),
        }
    }

    fn only(protocol: Protocol, frame: Frame) -> Frames {
        let mut frames = Frames::default();
        *frames.slot(protocol) = Some(frame);
        frames
    }

    fn slot(&mut self, protocol: Protocol) -> &mut Option<Frame> {
        match protocol {
            Protocol::Json => &mut self.json,
            Protocol::Yjs => &mut self.yjs,
            Protocol::Hocuspocus => &mut self.hocuspocus,
        }
    }
}

/// What an in-process write came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Durable at this seq (the room's seq if it changed nothing).
    Durable(u64),
    /// Refused by the room's checks; nothing changed.
    Rejected(EngineError),
    /// The store failed: nothing is durable; retry.
    Unavailable,
}

/// Who made one update of a commit, for history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The author's name: authenticated, else the name its presence declares, else unknown.
    pub author: Option<String>,
    /// The room seq its sender said it had seen.
    pub base_seq: Option<u64>,
}

/// What the host decided; the server carries these out in order.
#[derive(Debug)]
pub enum Output {
    /// Queue `frame` for member `to`.
    Send {
        /// The member.
        to: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// Queue each member its protocol's frame, except the members in `except`.
    Broadcast {
        /// One frame per protocol.
        frames: Frames,
        /// Members that are not sent it (the sender of an update, of a presence).
        except: Vec<ConnId>,
        /// It carries a document update (not presence or a stateless string): its fan-out
        /// latency is what the server measures.
        update: bool,
    },
    /// A join's first frames are queued: answer the joiner.
    Joined(ConnId),
    /// Close this member's connection (after what is queued for it).
    Close {
        /// The member.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// The member is gone from the room; `cpu` is what it left of its CPU budget, for its
    /// payer's next connection.
    Removed {
        /// The member.
        conn: ConnId,
        /// Its CPU budget now.
        cpu: TokenBucket,
    },
    /// An in-process write ended.
    Written {
        /// The writer.
        conn: ConnId,
        /// How.
        result: Written,
    },
    /// Commit these updates (v2, in order) as one group; answer with [`Input::Committed`].
    Commit {
        /// The updates.
        batch: Vec<Vec<u8>>,
        /// Who made each.
        origins: Vec<Origin>,
    },
    /// Fold the room's log into a new snapshot; answer with [`Input::Compacted`].
    Compact,
    /// Read the ops after `after` from the store; answer with [`Input::CaughtUp`].
    CatchUp {
        /// The last seq this room has contiguously.
        after: u64,
    },
    /// Tell other instances about this committed update.
    PublishUpdate {
        /// Its seq.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// Tell other instances about this presence (it lives [`PRESENCE_TTL_MS`] there).
    PublishPresence(Presence),
    /// No one is here and nothing is in flight: the room may unload.
    Idle,
    /// An `error` frame with this code went to a member (for metrics).
    ErrorSent(&'static str),
}

/// A member of the room.
#[derive(Debug)]
struct Member {
    protocol: Protocol,
    user: String,
    name: Option<String>,
    presence: Option<Presence>,
    /// A presence held back by the rate limit; the latest wins.
    presence_held: Option<Presence>,
    presence_rate: TokenBucket,
    /// Milliseconds of pool CPU time this member may still spend.
    cpu: TokenBucket,
    /// When its presence last came (a Yjs client's awareness times out without renewal).
    presence_seen: u64,
    /// The awareness client id a Yjs member speaks for (the first it announced).
    awareness_client: Option<u64>,
}

/// One room as the server runs it (see the module docs).
pub struct RoomHost {
    id: String,
    state: RoomState,
    config: HostConfig,
    members: HashMap<ConnId, Member>,
    /// Members per protocol, by [`Protocol::slot`].
    speakers: [usize; 3],
    /// In-process writers waiting for their update to be durable, with its author.
    writers: HashMap<ConnId, Option<String>>,
    /// The JSON `sync` frame for joins without a state vector, shared until the document
    /// changes: a burst of joins (a reconnect storm) encodes the state once.
    full_sync: Option<Frame>,
    /// Presences of clients on other instances, with their expiry.
    remote_presence: RemotePresence,
    /// The clock given to the next presence of a Concord client (see [`Presence::clock`]).
    presence_clock: u32,
    /// Presence changes waiting for the next flush.
    coalescer: Coalescer,
    /// Updates given a server op id so far (see [`server_op_id`]).
    server_ops: u64,
    commit_in_flight: bool,
    compaction_in_flight: bool,
    catch_up_in_flight: bool,
    /// A catch-up is wanted once the one in flight ends.
    catch_up_wanted: bool,
    next_tick: u64,
    last_heartbeat: u64,
    idle_since: Option<u64>,
    out: VecDeque<Output>,
}

impl std::fmt::Debug for RoomHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHost")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("members", &self.members.len())
            .field("writers", &self.writers.len())
            .finish()
    }
}

impl RoomHost {
    /// The host of room `id` (its name on the wire) over its loaded state, at `now` (ms).
    pub fn new(id: String, state: RoomState, config: HostConfig, now: u64) -> RoomHost {
        RoomHost {
            id,
            state,
            config,
            members: HashMap::new(),
            speakers: [0; 3],
            writers: HashMap::new(),
            full_sync: None,
            remote_presence: HashMap::new(),
            presence_clock: 0,
            coalescer: Coalescer::new(awareness::Budget::default()),
            server_ops: 0,
            commit_in_flight: false,
            compaction_in_flight: false,
            catch_up_in_flight: false,
            catch_up_wanted: false,
            next_tick: now + TICK_MS,
            last_heartbeat: now,
            idle_since: None,
            out: VecDeque::new(),
        }
    }

    /// The room's CRDT state (read-only).
    pub fn state(&self) -> &RoomState {
        &self.state
    }

    /// Members now.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// True once nothing accepted is waiting to be durable: a stopping room may go.
    pub fn is_drained(&self) -> bool {
        !self.commit_in_flight && self.state.uncommitted() == 0
    }

    /// The next decision to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Input::Timeout`] is due (ms): the next presence flush or housekeeping tick.
    pub fn poll_timeout(&self) -> u64 {
        self.coalescer
            .poll_timeout()
            .map_or(self.next_tick, |due| due.min(self.next_tick))
    }

    /// Whether `input` is cheap enough to handle on an async worker: no update to apply, no
    /// document to encode or walk. Everything else belongs on the CPU pool.
    pub fn is_light(&self, input: &Input, now: u64) -> bool {
        match input {
            Input::Leave { .. }
            | Input::HubPresence(_)
            | Input::Resync
            | Input::Committed(Ok(_))
            | Input::Compacted(_) => true,
            Input::Frame { request, .. } => matches!(
                request,
                Request::Json(ClientMessage::Presence(_))
                    | Request::Yjs(
                        YjsRequest::Awareness(_) | YjsRequest::QueryAwareness | YjsRequest::Ignored
                    )
                    | Request::Stateless(_)
            ),
            Input::Timeout { .. } => !self.flush_needs_document(now),
            _ => false,
        }
    }

    /// Handles one input at `now` (ms, monotonic).
    pub fn handle(&mut self, input: Input, now: u64) {
        match input {
            Input::Join { conn, joiner } => self.join(conn, joiner, now),
            Input::Leave { conn } => self.remove(conn, now),
            Input::Frame {
                conn,
                request,
                writable,
            } => self.frame(conn, request, writable, now),
            Input::Write {
                conn,
                update,
                author,
            } => {
                self.writers.insert(conn, author);
                self.server_ops += 1;
                let id = server_op_id(self.server_ops);
                if let Err(e) = self.apply(conn, Some(id), &update, None) {
                    self.writers.remove(&conn);
                    let result = Written::Rejected(e);
                    self.out.push_back(Output::Written { conn, result });
                }
            }
            Input::Committed(result) => {
                self.commit_in_flight = false;
                self.full_sync = None;
                self.committed(result, now);
            }
            Input::Compacted(result) => {
                self.compaction_in_flight = false;
                match result {
                    Ok(Some((snapshot, seq))) => self.state.handle_compacted(snapshot, seq, now),
                    Ok(None) => self.state.handle_compaction_skipped(now),
                    Err(()) => self.state.handle_compaction_failed(now),
                }
            }
            Input::CaughtUp(result) => {
                self.catch_up_in_flight = false;
                for (seq, update) in result.unwrap_or_default() {
                    self.remote(seq, &update);
                }
            }
            Input::HubUpdate { seq, update } => {
                // The hub is input like any other: an update no client could have sent is
                // not trusted; the store has the real one, so it is read from there.
                if update.len() > self.config.max_update_bytes {
                    tracing::warn!(room = %self.id, seq, len = update.len(), "oversized update from the hub; catching up from the store");
                    self.catch_up_wanted = true;
                } else if let Err(e) = doc::decode_update(&update) {
                    tracing::warn!(room = %self.id, seq, error = %e, "update from the hub rejected; catching up from the store");
                    self.catch_up_wanted = true;
                } else {
                    self.remote(seq, &update);
                }
            }
            Input::HubPresence(p) => self.remote_presence_event(p, now),
            Input::Resync => self.catch_up_wanted = true,
            Input::Timeout { shedding } => self.timeout(shedding, now),
        }
        self.dispatch_events();
        self.ask_store();
    }

    fn join(&mut self, conn: ConnId, joiner: Joiner, now: u64) {
        let Joiner {
            protocol,
            user,
            name,
            writable,
            sv,
            cpu,
        } = joiner;
        let first = match protocol {
            Protocol::Json => self.json_sync(sv),
            // A Yjs client's first frame is the room's sync step 1, as y-websocket's server
            // sends it: the client answers with what the room lacks and asks for the rest.
            _ => yjs::sync_step1(&self.state.document().state_vector())
                .map(|step1| yjs_frame(&self.id, protocol, step1)),
        };
        let first = match first {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(room = %self.id, conn = conn.0, error = %e, "join refused");
                let frame = match protocol {
                    Protocol::Json => protocol::json(&ServerMessage::error(&e)),
                    _ => protocol::room_unavailable(&self.id, protocol),
                };
                self.out.push_back(Output::Send { to: conn, frame });
                self.out.push_back(Output::Joined(conn));
                self.close(conn, 1008, "bad state vector");
                self.out.push_back(Output::Removed { conn, cpu });
                return;
            }
        };
        self.out.push_back(Output::Send {
            to: conn,
            frame: first,
        });
        let all = self.all_presence();
        for frame in protocol::welcome(&self.id, protocol, &user, !writable, &all) {
            self.out.push_back(Output::Send { to: conn, frame });
        }
        self.speakers[protocol.slot()] += 1;
        self.members.insert(
            conn,
            Member {
                protocol,
                user,
                name,
                presence: None,
                presence_held: None,
                presence_rate: TokenBucket::new(PRESENCE_BURST, PRESENCE_PER_SEC, now),
                cpu,
                presence_seen: now,
                awareness_client: None,
            },
        );
        self.out.push_back(Output::Joined(conn));
    }

    /// The JSON `sync` frame for a state vector: what it lacks, the room's state vector and
    /// seq. An empty state vector (a fresh client) asks for everything, like none at all.
    fn json_sync(&mut self, sv: Option<Vec<u8>>) -> crate::Result<Frame> {
        let sv = sv.filter(|sv| sv.as_slice() != [0]);
        if sv.is_none() {
            if let Some(sync) = &self.full_sync {
                return Ok(sync.clone());
            }
        }
        let sync = protocol::json(&self.state.sync_for(sv.as_deref())?);
        if sv.is_none() {
            self.full_sync = Some(sync.clone());
        }
        Ok(sync)
    }

    /// Takes a member out (its presence leaves with it).
    fn remove(&mut self, conn: ConnId, now: u64) {
        let Some(m) = self.members.remove(&conn) else {
            return;
        };
        self.speakers[m.protocol.slot()] -= 1;
        if let Some(p) = m.presence {
            self.presence_left(p, now);
        }
        self.out.push_back(Output::Removed { conn, cpu: m.cpu });
    }

    /// Closes a member's connection and takes it out.
    fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        self.out.push_back(Output::Close { conn, code, reason });
    }

    fn close_member(&mut self, conn: ConnId, code: u16, reason: &'static str, now: u64) {
        if self.members.contains_key(&conn) {
            self.close(conn, code, reason);
            self.remove(conn, now);
        }
    }

    fn send(&mut self, to: ConnId, frame: Frame) {
        self.out.push_back(Output::Send { to, frame });
    }

    fn send_error(&mut self, to: ConnId, code: &'static str, message: &str) {
        self.out.push_back(Output::ErrorSent(code));
        self.send(to, protocol::json_error(code, message));
    }

    fn frame(&mut self, conn: ConnId, request: Request, writable: bool, now: u64) {
        let Some(m) = self.members.get(&conn) else {
            return;
        };
        let protocol = m.protocol;
        let (id, update, v1, base) = match request {
            Request::Json(ClientMessage::Op { id, update, base }) => (id, update, false, base),
            Request::Json(ClientMessage::Sync { update }) => (None, update, false, None),
            Request::Json(ClientMessage::Presence(p)) => return self.json_presence(conn, p, now),
            Request::Yjs(YjsRequest::Awareness(update)) => {
                return self.yjs_awareness(conn, update, now)
            }
            Request::Yjs(YjsRequest::QueryAwareness) => {
                let all = self.all_presence();
                let body = yjs::awareness(&all.iter().collect::<Vec<_>>());
                let frame = yjs_frame(&self.id, protocol, body);
                return self.send(conn, frame);
            }
            Request::Yjs(YjsRequest::Ignored) => return,
            Request::Stateless(payload) => {
                // Relayed like presence, under the same rate, and only from writers: a
                // reader may not speak to the document's other clients.
                let Some(m) = self.members.get_mut(&conn) else {
                    return;
                };
                if writable && m.presence_rate.try_take(now) {
                    let frame = Frame::binary(hocuspocus::stateless(&self.id, &payload));
                    self.out.push_back(Output::Broadcast {
                        frames: Frames::only(Protocol::Hocuspocus, frame),
                        except: vec![conn],
                        update: false,
                    });
                }
                return;
            }
            Request::Yjs(YjsRequest::SyncStep1(sv)) => {
                match self.state.document().encode_state_as_update_v1(Some(&sv)) {
                    Ok(diff) => {
                        let frame = yjs_frame(&self.id, protocol, yjs::sync_step2(diff));
                        self.send(conn, frame);
                    }
                    Err(e) => {
                        tracing::debug!(room = %self.id, conn = conn.0, error = %e, "bad sync step 1");
                        self.close_member(conn, 1008, "bad state vector", now);
                    }
                }
                return;
            }
            Request::Yjs(YjsRequest::Update(update)) if protocol == Protocol::Hocuspocus => {
                if !writable {
                    // Not applied; its `SyncStatus` says whether it would have changed
                    // anything (a provider's sync step 2 usually does not).
                    return self.charged(conn, now, |host| {
                        let changes = host.state.document().would_change_v1(&update);
                        let status =
                            hocuspocus::sync_status(&host.id, matches!(changes, Ok(false)));
                        host.send(conn, Frame::binary(status));
                    });
                }
                // Acked (as `SyncStatus`) once durable, like a JSON op.
                self.server_ops += 1;
                (Some(server_op_id(self.server_ops)), update, true, None)
            }
            Request::Yjs(YjsRequest::Update(update)) => (None, update, true, None),
        };
        // Access first: a reader's update is refused whatever it costs or holds.
        if !writable {
            if protocol == Protocol::Json {
                self.out.push_back(Output::ErrorSent("forbidden"));
            }
            return self.send(conn, protocol::read_only(&self.id, protocol));
        }
        self.charged(conn, now, |host| {
            let update = if v1 {
                match doc::update_v1_to_v2(&update) {
                    Ok(update) => update,
                    Err(e) => {
                        // As y-websocket's server does: the message is dropped.
                        tracing::debug!(room = %host.id, conn = conn.0, error = %e, "v1 update rejected");
                        host.sync_status(conn, false);
                        return;
                    }
                }
            } else {
                update
            };
            if let Err(e) = host.apply(conn, id, &update, base) {
                host.refused(conn, protocol, e, now);
            }
        });
    }

    /// Runs `work` for member `conn` if its CPU budget is not in debt, and charges it the CPU
    /// time the work took; a member already in debt is told so and closed instead.
    fn charged(&mut self, conn: ConnId, now: u64, work: impl FnOnce(&mut RoomHost)) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if !m.cpu.available(now) {
            tracing::info!(room = %self.id, conn = conn.0, "connection over its CPU budget; closing it");
            if m.protocol == Protocol::Json {
                self.send_error(
                    conn,
                    "cpu_budget",
                    "your updates are costing the server too much time; reconnect later",
                );
            }
            return self.close_member(conn, 1013, "cpu budget exhausted: retry later", now);
        }
        let clock = self.config.cpu_clock;
        let start = clock();
        work(self);
        let ms = clock().saturating_sub(start).as_secs_f64() * 1000.0;
        if let Some(m) = self.members.get_mut(&conn) {
            m.cpu.charge(ms, now);
        }
    }

    /// Applies an update (v2) from a member or writer: staged for the next commit and
    /// broadcast to everyone else at once, acked once durable.
    fn apply(
        &mut self,
        conn: ConnId,
        id: Option<String>,
        update: &[u8],
        base: Option<u64>,
    ) -> crate::Result<()> {
        self.full_sync = None;
        self.state.handle_op_based(conn, id, update, base)
    }

    /// A member's update was refused: it is told in its protocol, and closed where the
    /// refusal calls for it.
    fn refused(&mut self, conn: ConnId, protocol: Protocol, e: EngineError, now: u64) {
        tracing::debug!(room = %self.id, conn = conn.0, error = %e, "update rejected");
        if let Some(frame) = protocol::update_refused(protocol, &e) {
            self.out.push_back(Output::ErrorSent(e.code()));
            self.send(conn, frame);
        }
        self.sync_status(conn, false);
        match e {
            // It cost a rebuild: no second chance on this connection.
            EngineError::IntegrationFailed { .. } => {
                self.close_member(conn, 1008, "update rejected", now)
            }
            // The room is full of work not yet durable: come back later and resend (the op is
            // still the client's pending op).
            EngineError::Overloaded { .. } => {
                self.close_member(conn, 1013, "room overloaded: retry later", now)
            }
            _ => {}
        }
    }

    /// A `SyncStatus` for `conn`, if it speaks Hocuspocus.
    fn sync_status(&mut self, conn: ConnId, applied: bool) {
        if self.members.get(&conn).map(|m| m.protocol) == Some(Protocol::Hocuspocus) {
            let frame = Frame::binary(hocuspocus::sync_status(&self.id, applied));
            self.send(conn, frame);
        }
    }

    /// An update committed elsewhere (hub or store), applied in seq order.
    fn remote(&mut self, seq: u64, update: &[u8]) {
        self.full_sync = None;
        if let Err(e) = self.state.handle_remote(seq, update) {
            tracing::error!(room = %self.id, seq, error = %e, "committed update rejected");
        }
    }

    fn committed(&mut self, result: Result<u64, ()>, now: u64) {
        match result {
            Ok(first) => {
                if let Err(e) = self.state.handle_committed(first) {
                    tracing::error!(room = %self.id, error = %e, "commit result out of order");
                }
            }
            Err(()) => {
                tracing::error!(room = %self.id, "commit failed; closing its senders");
                let senders = self.state.handle_commit_failed();
                let lost = !senders.is_empty();
                for conn in senders {
                    if self.writers.remove(&conn).is_some() {
                        let result = Written::Unavailable;
                        self.out.push_back(Output::Written { conn, result });
                        continue;
                    }
                    if self.members.get(&conn).map(|m| m.protocol) == Some(Protocol::Json) {
                        self.send_error(
                            conn,
                            "unavailable",
                            "the store is unavailable; reconnect and resend",
                        );
                    }
                    self.close_member(conn, 1011, "store unavailable", now);
                }
                if lost {
                    // The lost updates were broadcast already: everyone resyncs (two-way sync
                    // gives the room back what it lost), see `RoomState::handle_commit_failed`.
                    let all: Vec<ConnId> = self.members.keys().copied().collect();
                    for conn in all {
                        self.close_member(
                            conn,
                            1011,
                            "store unavailable: reconnect to resync",
                            now,
                        );
                    }
                }
            }
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(event) = self.state.poll_event() {
            match event {
                RoomEvent::Ack { conn, id, seq } => {
                    if self.writers.remove(&conn).is_some() {
                        let result = Written::Durable(seq);
                        self.out.push_back(Output::Written { conn, result });
                    } else if let Some(m) = self.members.get(&conn) {
                        if let Some(frame) = protocol::ack(&self.id, m.protocol, id, seq) {
                            self.send(conn, frame);
                        }
                    }
                }
                RoomEvent::Broadcast {
                    seq,
                    update,
                    origin,
                } => {
                    let frames = self.render_update(seq, update);
                    let except = origin.into_iter().collect();
                    self.out.push_back(Output::Broadcast {
                        frames,
                        except,
                        update: true,
                    });
                }
                // Committed here (and already broadcast here): other instances learn it from
                // the hub.
                RoomEvent::Committed { seq, update } => {
                    self.out.push_back(Output::PublishUpdate { seq, update })
                }
                RoomEvent::CatchUp { .. } => self.catch_up_wanted = true,
            }
        }
    }

    /// An update (v2) for every protocol present: a JSON `op`, a y-protocols update (v1) as
    /// is for y-websocket and behind the room's name for Hocuspocus.
    fn render_update(&self, seq: u64, update: Vec<u8>) -> Frames {
        let speaks = |p: Protocol| self.speakers[p.slot()] > 0;
        let mut frames = Frames::default();
        if speaks(Protocol::Yjs) || speaks(Protocol::Hocuspocus) {
            match doc::update_v2_to_v1(&update) {
                Ok(v1) => {
                    let body = yjs::update(v1);
                    if speaks(Protocol::Hocuspocus) {
                        frames.hocuspocus =
                            Some(yjs_frame(&self.id, Protocol::Hocuspocus, body.clone()));
                    }
                    if speaks(Protocol::Yjs) {
                        frames.yjs = Some(Frame::binary(body));
                    }
                }
                Err(e) => {
                    tracing::error!(room = %self.id, seq, error = %e, "update does not convert to v1")
                }
            }
        }
        if speaks(Protocol::Json) {
            frames.json = Some(protocol::json(&ServerMessage::Op { seq, update }));
        }
        frames
    }

    /// Asks the store for what is due: the next group commit (one at a time), a catch-up read.
    fn ask_store(&mut self) {
        if !self.commit_in_flight {
            if let Some(batch) = self.state.take_batch() {
                self.commit_in_flight = true;
                let origins = self.origins();
                self.out.push_back(Output::Commit { batch, origins });
            }
        }
        if self.catch_up_wanted && !self.catch_up_in_flight {
            self.catch_up_wanted = false;
            self.catch_up_in_flight = true;
            let after = self.state.seq();
            self.out.push_back(Output::CatchUp { after });
        }
    }

    /// What history keeps of each update in flight: its author is the member's authenticated
    /// name (or the writer's), else the name its presence declares (set by the client, shown as
    /// such), else unknown.
    fn origins(&self) -> Vec<Origin> {
        self.state
            .in_flight_origins()
            .into_iter()
            .map(|(conn, base_seq)| Origin {
                author: match self.writers.get(&conn) {
                    Some(author) => author.clone(),
                    None => self.members.get(&conn).and_then(|m| {
                        m.name
                            .clone()
                            .or_else(|| m.presence.as_ref().and_then(|p| p.name.clone()))
                    }),
                },
                base_seq,
            })
            .collect()
    }

    fn timeout(&mut self, shedding: bool, now: u64) {
        self.flush_presence(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK_MS;
        self.presence_tick(now);
        if !self.compaction_in_flight && self.state.compaction_due(now) {
            self.compaction_in_flight = true;
            self.out.push_back(Output::Compact);
        }
        let idle = self.members.is_empty() && self.writers.is_empty() && self.is_drained();
        if !idle {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert(now);
        if shedding || now.saturating_sub(since) >= self.config.idle_ms {
            self.out.push_back(Output::Idle);
        }
    }
}

#[cfg(test)]
mod tests;
