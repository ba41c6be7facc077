//! One task per loaded room: the only owner of its [`RoomState`], so the CRDT is never touched
//! concurrently and needs no lock.
//!
//! The task loads the room from the store, then loops over: commands from connections (a
//! bounded channel, drained in bursts so a busy room batches), the result of its in-flight group
//! commit, compaction and catch-up results, and a tick for idle unload and time-based
//! compaction. After every step it hands staged updates to the committer (one commit in
//! flight per room) and carries out the engine's events: acks to senders, broadcasts to the
//! other members.
//!
//! A member whose outbound queue is full is a slow consumer: it is dropped and its connection
//! closed (the client resyncs on reconnect) instead of letting the queue grow.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use concord_engine::wire::Presence;
use concord_engine::{ClientMessage, ConnId, RoomEvent, RoomState, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Result, ServerError};
use crate::hub::{Hub, HubEvent};
use crate::rooms::Rooms;
use crate::store::Loaded;

/// A frame for a connection's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame (shared bytes: one serialization per broadcast).
    Text(Utf8Bytes),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

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

/// How the room reaches one connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// Bounded outbound queue of the connection's writer.
    pub out: mpsc::Sender<Outbound>,
    /// Closes the connection.
    pub kill: Arc<Kill>,
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
        msg: ClientMessage,
    },
    /// The connection closed.
    Leave {
        /// The connection.
        conn: ConnId,
    },
}

struct MemberState {
    member: Member,
    presence: Option<Presence>,
}

/// A presence entry lives this long unless refreshed (a vanished instance's users expire).
const PRESENCE_TTL_MS: u64 = 30_000;
/// Local presences are re-announced this often, well inside the TTL.
const PRESENCE_HEARTBEAT_MS: u64 = 10_000;

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

fn text(msg: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(msg.to_json())
}

/// Milliseconds on a monotonic clock, for the engine's time-based decisions.
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
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
        let loaded = match ctx.store.load(&self.id).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room load failed");
                return self.fail_joins(ServerError::Unavailable).await;
            }
        };
        let state = match load_state(&self.id, loaded, &ctx.config) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room data rejected");
                return self.fail_joins(ServerError::Unavailable).await;
            }
        };
        tracing::debug!(room = %self.id, seq = state.seq(), "room loaded");
        let mut room = Room {
            id: self.id.clone(),
            state,
            members: HashMap::new(),
            closing: false,
            hub: ctx.hub.clone(),
            remote_presence: HashMap::new(),
        };
        for p in ctx.hub.live_presence(&self.id).await {
            room.remote_presence
                .insert(p.user.clone(), (p, now_ms() + PRESENCE_TTL_MS));
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
            tokio::select! {
                _ = ctx.shutdown.cancelled(), if !closing => {
                    closing = true;
                    room.closing = true;
                    // Take what is already queued, refuse what comes later.
                    self.rx.close();
                }
                result = poll_opt(&mut commit) => {
                    commit = None;
                    room.committed(result);
                }
                result = poll_opt(&mut compaction) => {
                    compaction = None;
                    match result {
                        Ok(Some((snapshot, op_seq))) => {
                            room.state.handle_compacted(snapshot, op_seq, now_ms());
                        }
                        Ok(None) => room.state.handle_compacted(Vec::new(), 0, now_ms()),
                        Err(e) => tracing::warn!(room = %room.id, error = %e, "compaction failed"),
                    }
                }
                result = poll_opt(&mut catch_up) => {
                    catch_up = None;
                    match result {
                        Ok(ops) => {
                            for (seq, update) in ops {
                                if let Err(e) = room.state.handle_remote(seq, &update) {
                                    tracing::error!(room = %room.id, seq, error = %e, "stored op rejected");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(room = %room.id, error = %e, "catch-up failed"),
                    }
                }
                event = sub.rx.recv(), if hub_open => match event {
                    Some(HubEvent::Update { seq, update }) => {
                        if let Err(e) = room.state.handle_remote(seq, &update) {
                            tracing::error!(room = %room.id, seq, error = %e, "update from the hub rejected");
                        }
                    }
                    Some(HubEvent::Presence(p)) => room.remote_presence_event(p),
                    Some(HubEvent::Resync) => resync = true,
                    None => hub_open = false,
                },
                cmd = self.rx.recv(), if !rx_done => match cmd {
                    Some(cmd) => {
                        room.handle(cmd);
                        // Drain a burst: everything queued is applied before the next commit.
                        for _ in 0..1024 {
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
                    if now.saturating_sub(last_heartbeat) >= PRESENCE_HEARTBEAT_MS {
                        last_heartbeat = now;
                        room.announce_local_presence();
                    }
                    if compaction.is_none() && room.state.compaction_due(now) {
                        let store = ctx.store.clone();
                        let id = room.id.clone();
                        compaction = Some(Box::pin(async move { store.compact(&id).await }));
                    }
                    if room.members.is_empty() && commit.is_none() && room.state.uncommitted() == 0 {
                        let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                        if !closing && since.elapsed() >= ctx.config.room_idle
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

            if commit.is_none() {
                if let Some(batch) = room.state.take_batch() {
                    let committer = ctx.committer.clone();
                    let id = room.id.clone();
                    commit = Some(Box::pin(async move { committer.commit(id, batch).await }));
                }
            }
            resync |= room.dispatch_events();
            if resync && catch_up.is_none() {
                resync = false;
                let store = ctx.store.clone();
                let id = room.id.clone();
                let after = room.state.seq();
                catch_up = Some(Box::pin(async move { store.ops_after(&id, after).await }));
            }
            if rx_done && commit.is_none() && room.state.uncommitted() == 0 {
                break;
            }
        }

        // Drained: everything accepted is durable and acked. Close the members, then leave a
        // snapshot behind so the next load is one read.
        for (_, m) in room.members.drain() {
            let _ = m
                .member
                .out
                .try_send(Outbound::Close(1001, "server shutting down"));
            m.member.kill.kill(1001, "server shutting down");
        }
        if let Some(f) = compaction.take() {
            let _ = f.await;
        }
        if let Err(e) = ctx.store.compact(&room.id).await {
            tracing::warn!(room = %room.id, error = %e, "final compaction failed");
        }
        self.rooms.unregister(&self.id, self.generation);
        // Joins that raced the close are told to retry with a fresh room task.
        while let Ok(cmd) = self.rx.try_recv() {
            if let RoomCmd::Join { reply, .. } = cmd {
                let _ = reply.send(Err(ServerError::RoomClosing));
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
    .map_err(|source| ServerError::Corrupt {
        room: id.to_owned(),
        source,
    })
}

struct Room {
    id: String,
    state: RoomState,
    members: HashMap<ConnId, MemberState>,
    /// Unloading or shutting down: joins are sent back to the registry.
    closing: bool,
    hub: Arc<dyn Hub>,
    /// Presences of clients on other instances, with their expiry (monotonic ms).
    remote_presence: HashMap<String, (Presence, u64)>,
}

impl Room {
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
                let sync = match self.state.sync_for(sv.as_deref()) {
                    Ok(sync) => sync,
                    Err(e) => {
                        let _ = member
                            .out
                            .try_send(Outbound::Text(text(&ServerMessage::error(&e))));
                        let _ = reply.send(Ok(()));
                        member.kill.kill(1008, "bad state vector");
                        return;
                    }
                };
                if member.out.try_send(Outbound::Text(text(&sync))).is_err() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let local = self.members.values().filter_map(|m| m.presence.as_ref());
                let remote = self.remote_presence.values().map(|(p, _)| p);
                for p in local.chain(remote) {
                    let _ = member
                        .out
                        .try_send(Outbound::Text(text(&ServerMessage::Presence(p.clone()))));
                }
                self.members.insert(
                    conn,
                    MemberState {
                        member,
                        presence: None,
                    },
                );
                let _ = reply.send(Ok(()));
            }
            RoomCmd::Frame { conn, msg } => {
                if !self.members.contains_key(&conn) {
                    return;
                }
                match msg {
                    ClientMessage::Op { id, update } => self.client_update(conn, id, &update),
                    ClientMessage::Sync { update } => self.client_update(conn, None, &update),
                    ClientMessage::Presence(p) => {
                        self.hub.publish_presence(&self.id, &p, PRESENCE_TTL_MS);
                        let frame = text(&ServerMessage::Presence(p.clone()));
                        if let Some(m) = self.members.get_mut(&conn) {
                            m.presence = Some(p);
                        }
                        self.send_all(frame, Some(conn));
                    }
                }
            }
            RoomCmd::Leave { conn } => {
                if let Some(m) = self.members.remove(&conn) {
                    if let Some(mut p) = m.presence {
                        p.left = true;
                        p.cursor = None;
                        self.hub.publish_presence(&self.id, &p, PRESENCE_TTL_MS);
                        self.send_all(text(&ServerMessage::Presence(p)), None);
                    }
                }
            }
        }
    }

    fn client_update(&mut self, conn: ConnId, id: Option<String>, update: &[u8]) {
        if let Err(e) = self.state.handle_op(conn, id, update) {
            tracing::debug!(room = %self.id, conn = conn.0, error = %e, "update rejected");
            self.send_to(conn, text(&ServerMessage::error(&e)));
        }
    }

    fn committed(&mut self, result: Result<u64>) {
        match result {
            Ok(first) => {
                if let Err(e) = self.state.handle_committed(first) {
                    tracing::error!(room = %self.id, error = %e, "commit result out of order");
                }
            }
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "commit failed; closing its senders");
                for conn in self.state.handle_commit_failed() {
                    let frame = ServerMessage::Error {
                        code: "unavailable".to_owned(),
                        message: "the store is unavailable; reconnect and resend".to_owned(),
                    };
                    self.send_to(conn, text(&frame));
                    if let Some(m) = self.members.remove(&conn) {
                        m.member.kill.kill(1011, "store unavailable");
                    }
                }
            }
        }
    }

    /// Carries out the engine's events; returns true if the room must catch up from the store.
    fn dispatch_events(&mut self) -> bool {
        let mut catch_up = false;
        while let Some(event) = self.state.poll_event() {
            match event {
                RoomEvent::Ack { conn, id, seq } => {
                    self.send_to(conn, text(&ServerMessage::Ack { id, seq }));
                }
                RoomEvent::Broadcast {
                    seq,
                    update,
                    origin,
                } => {
                    if origin.is_some() {
                        // Committed here: other instances learn it from the hub.
                        self.hub.publish_update(&self.id, seq, &update);
                    }
                    if self.members.len() > usize::from(origin.is_some()) {
                        let frame = text(&ServerMessage::Op { seq, update });
                        self.send_all(frame, origin);
                    }
                }
                RoomEvent::CatchUp { .. } => catch_up = true,
            }
        }
        catch_up
    }

    fn remote_presence_event(&mut self, p: Presence) {
        let frame = text(&ServerMessage::Presence(p.clone()));
        if p.left {
            self.remote_presence.remove(&p.user);
        } else {
            self.remote_presence
                .insert(p.user.clone(), (p, now_ms() + PRESENCE_TTL_MS));
        }
        self.send_all(frame, None);
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
                self.send_all(text(&ServerMessage::Presence(p)), None);
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

    fn send_to(&mut self, conn: ConnId, frame: Utf8Bytes) {
        let ok = match self.members.get(&conn) {
            Some(m) => m.member.out.try_send(Outbound::Text(frame)).is_ok(),
            None => return,
        };
        if !ok {
            self.drop_slow(conn);
        }
    }

    fn send_all(&mut self, frame: Utf8Bytes, except: Option<ConnId>) {
        let mut slow = Vec::new();
        for (conn, m) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            if m.member
                .out
                .try_send(Outbound::Text(frame.clone()))
                .is_err()
            {
                slow.push(*conn);
            }
        }
        for conn in slow {
            self.drop_slow(conn);
        }
    }

    fn drop_slow(&mut self, conn: ConnId) {
        if let Some(m) = self.members.remove(&conn) {
            tracing::debug!(room = %self.id, conn = conn.0, "slow consumer disconnected");
            m.member.kill.kill(1013, "too slow: reconnect to resync");
        }
    }
}
