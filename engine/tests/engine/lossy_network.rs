//! Several [`ClientSession`]s against one [`RoomState`] over a lossy network, in virtual time.
//!
//! The simulator is quinn-proto's `Pair` idea: no sockets, no threads, no sleeps. Time is a tick
//! counter; every connection has one [`Link`] per direction carrying JSON text frames, so the
//! wire layer is exercised too (`ClientMessage::to_json` / `parse`, `ServerMessage::to_json` /
//! `ClientSession::handle_frame`). The "server" is a small loop in this file: on connect it
//! sends `room.sync_for(sv)`, routes ops to `handle_op` (errors go back as `error` frames),
//! group-commits with a random delay so ops are in flight, turns acks and broadcasts into
//! frames, and compacts the log when the room says so.
//!
//! Faults, all from the run's seed: frames dropped, duplicated and reordered both ways;
//! disconnects that discard everything in flight; long offline periods with hundreds of edits;
//! forced reconnects (a client that lost a server frame is behind until its next sync). At the
//! end the faults stop, everyone reconnects, and the run goes on until quiet (bounded).
//!
//! Then: every client and the room hold the same document; every op a client saw acked is in
//! the room; nothing is pending anywhere; the committed log replays with every entry adding
//! something (nothing was logged twice) and loads into the same room, from scratch and from the
//! last snapshot.

use std::collections::{BTreeMap, HashMap};

use concord_engine::room::{self, CompactionPolicy, ConnId, RoomEvent, RoomState};
use concord_engine::wire::decode_b64;
use concord_engine::{
    ClientEvent, ClientMessage, ClientSession, Document, EngineError, Limits, ServerMessage,
    SessionStatus,
};
use concord_testkit::edits::{random_edit, EditConfig};
use concord_testkit::net::{Faults, Link, LinkStats};
use concord_testkit::seed::{for_each_seed, iterations};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::convergence::assert_same_state;

const SEED: u64 = 0x10_55E5_0001;

/// Ticks of faulty weather per run.
const STORM_TICKS: u64 = 400;
/// Most ticks the calm end may take to go quiet before the run fails.
const QUIET_WITHIN: u64 = 2_000;
/// Virtual milliseconds per tick, for the compaction policy's clock.
const MS_PER_TICK: u64 = 10;
/// A client stuck connecting (its `sync` was lost) gives up and reconnects after this long.
const CONNECT_TIMEOUT: u64 = 30;

#[test]
fn lossy_network_converges() {
    let mut total = Totals::default();
    for_each_seed(
        "--release -p concord-engine --test engine lossy_network_converges",
        SEED,
        iterations(100),
        |seed| total.add(run(seed)),
    );
    eprintln!("lossy_network_converges: {total}");
}

/// One client: its session, its connection (if any) and its two links.
struct Peer {
    session: ClientSession,
    conn: Option<ConnId>,
    /// Client -> server frames.
    up: Link<String>,
    /// Server -> client frames.
    down: Link<String>,
    /// Offline (typing, no socket) until this tick.
    offline_until: u64,
    /// When the current connection was opened.
    connected_at: u64,
    /// The next forced reconnect.
    next_reconnect: u64,
}

/// The store, as far as the test needs one: the log of committed updates and the snapshot.
#[derive(Default)]
struct Store {
    /// Every committed update with its seq, never pruned (the test's record).
    log: Vec<(u64, Vec<u8>)>,
    /// The compaction snapshot and the seq it covers.
    snapshot: Option<(Vec<u8>, u64)>,
}

#[derive(Default, Clone, Copy)]
struct Stats {
    ticks: u64,
    edits: u64,
    offline_periods: u64,
    reloads: u64,
    failed_commits: u64,
    disconnects: u64,
    reconnects: u64,
    ops_sent: u64,
    refused: u64,
    commits: u64,
    compactions: u64,
    offline_edits: u64,
    links: LinkStats,
}

struct Sim {
    rng: SmallRng,
    now: u64,
    faults: Faults,
    /// Per-tick chances of a disconnect, of going offline for a while and of a tab reload.
    disconnect_chance: f64,
    offline_chance: f64,
    reload_chance: f64,
    /// Chance that a group commit fails.
    commit_failure_chance: f64,
    room: RoomState,
    store: Store,
    /// A group commit in flight: it lands at this tick.
    commit_at: Option<u64>,
    peers: Vec<Peer>,
    conns: BTreeMap<ConnId, usize>,
    next_conn: u64,
    /// Every op id sent, with the update it carried.
    sent_ops: HashMap<String, Vec<u8>>,
    /// Every op id some client saw acked.
    acked: Vec<String>,
    stats: Stats,
    edit_config: EditConfig,
}

fn run(seed: u64) -> Stats {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(2..=5);
    let faults = Faults {
        drop: rng.gen_range(0.0..0.15),
        duplicate: rng.gen_range(0.0..0.1),
        reorder: rng.gen_range(0.0..0.15),
        reorder_delay: rng.gen_range(1..=8),
        min_latency: 1,
        max_latency: rng.gen_range(1..=4),
    };
    let policy = CompactionPolicy {
        max_ops: rng.gen_range(5..=60),
        max_age_ms: rng.gen_range(100..=2_000),
    };
    let peers = (0..n)
        .map(|i| Peer {
            session: ClientSession::new(rng.gen_range(1..(1u64 << 53)), format!("s{i}")),
            conn: None,
            up: Link::new(),
            down: Link::new(),
            offline_until: 0,
            connected_at: 0,
            next_reconnect: 0,
        })
        .collect();
    let mut sim = Sim {
        disconnect_chance: rng.gen_range(0.0..0.02),
        offline_chance: rng.gen_range(0.0..0.01),
        reload_chance: rng.gen_range(0.0..0.005),
        commit_failure_chance: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.1)
        } else {
            0.0
        },
        rng,
        now: 0,
        faults,
        room: RoomState::new(policy, 0),
        store: Store::default(),
        commit_at: None,
        peers,
        conns: BTreeMap::new(),
        next_conn: 1,
        sent_ops: HashMap::new(),
        acked: Vec::new(),
        stats: Stats::default(),
        edit_config: EditConfig {
            hot: 0,
            raw_offsets: 0.0,
            max_len: 1_500,
        },
    };
    for i in 0..n {
        sim.connect(i);
    }
    while sim.now < STORM_TICKS {
        sim.tick(true);
    }
    sim.calm_down();
    sim.check_end();
    sim.stats.ticks = sim.now;
    for p in &sim.peers {
        sim.stats.links += p.up.stats();
        sim.stats.links += p.down.stats();
    }
    sim.stats
}

impl Sim {
    fn tick(&mut self, storm: bool) {
        self.now += 1;
        if storm && self.rng.gen_bool(0.2) {
            self.edit_config.hot = self.rng.gen_range(0..40);
        }
        for i in 0..self.peers.len() {
            self.client_step(i, storm);
        }
        self.server_step();
    }

    /// One client's tick: receive, type, flush, maybe lose the connection, transmit.
    fn client_step(&mut self, i: usize, storm: bool) {
        let now = self.now;
        if self.peers[i].offline_until > now {
            // Offline: many edits, flushed now and then (merged into one pending op).
            let burst = self.rng.gen_range(1..=12);
            self.edit(i, burst);
            self.stats.offline_edits += burst;
            if self.rng.gen_bool(0.5) {
                self.peers[i].session.flush().unwrap();
            }
            return;
        }
        if self.peers[i].conn.is_none() {
            self.connect(i);
        }
        while let Some(frame) = self.peers[i].down.recv(now) {
            self.peers[i]
                .session
                .handle_frame(&frame)
                .unwrap_or_else(|e| panic!("client {i} refused a server frame ({e}): {frame}"));
        }
        if storm {
            if self.rng.gen_bool(0.3) {
                let n = self.rng.gen_range(1..=4);
                self.edit(i, n);
            }
            if self.rng.gen_bool(0.4) {
                self.peers[i].session.flush().unwrap();
            }
            if self.rng.gen_bool(self.offline_chance) {
                self.disconnect(i);
                self.peers[i].offline_until = now + self.rng.gen_range(20..=120);
                self.stats.offline_periods += 1;
                return;
            }
            if self.rng.gen_bool(self.disconnect_chance) {
                self.disconnect(i);
                self.connect(i);
            }
            if self.rng.gen_bool(self.reload_chance) {
                self.reload(i);
            }
        } else {
            self.peers[i].session.flush().unwrap();
        }
        let peer = &self.peers[i];
        let stuck = peer.session.status() == SessionStatus::Connecting
            && now - peer.connected_at > CONNECT_TIMEOUT;
        if stuck || (storm && now >= peer.next_reconnect) {
            self.stats.reconnects += 1;
            self.disconnect(i);
            self.connect(i);
        }
        self.transmit(i);
    }

    fn edit(&mut self, i: usize, n: u64) {
        for _ in 0..n {
            let session = &mut self.peers[i].session;
            let e = random_edit(&mut self.rng, &session.text(), &self.edit_config);
            session
                .replace(e.index, e.delete, &e.insert)
                .unwrap_or_else(|err| panic!("client {i}: edit {e:?}: {err}"));
            self.stats.edits += 1;
        }
    }

    /// Drains the session's outbox onto its link (recording each op's update by id) and its
    /// events (recording acks).
    fn transmit(&mut self, i: usize) {
        let now = self.now;
        let peer = &mut self.peers[i];
        while let Some(msg) = peer.session.poll_transmit() {
            if let ClientMessage::Op {
                id: Some(id),
                update,
                ..
            } = &msg
            {
                self.stats.ops_sent += 1;
                if let Some(old) = self.sent_ops.insert(id.clone(), update.clone()) {
                    assert!(old == *update, "op id {id} was reused for other content");
                }
            }
            if peer.conn.is_some() {
                peer.up
                    .send(now, msg.to_json(), &self.faults, &mut self.rng);
            }
        }
        while let Some(event) = peer.session.poll_event() {
            if let ClientEvent::Acked { id, .. } = event {
                self.acked.push(id);
            }
        }
    }

    /// The tab is closed and opened again: the session is saved (as for IndexedDB), restored
    /// under a fresh client id and session name, and reconnects.
    fn reload(&mut self, i: usize) {
        self.disconnect(i);
        self.stats.reloads += 1;
        let saved = self.peers[i].session.export_state().unwrap();
        let client_id = self.rng.gen_range(1..(1u64 << 53));
        let name = format!("s{i}r{}", self.stats.reloads);
        let restored = ClientSession::import_state(client_id, name, &saved)
            .unwrap_or_else(|e| panic!("client {i}: its own saved state does not load: {e}"));
        assert_eq!(
            restored.text(),
            self.peers[i].session.text(),
            "reload changed the text"
        );
        self.peers[i].session = restored;
        self.connect(i);
    }

    /// Opens a connection: the client's `?sv=` reaches the server, which answers with `sync`.
    fn connect(&mut self, i: usize) {
        let sv = self.peers[i].session.connect();
        let sv = decode_b64("sv", &sv).expect("the client's ?sv= is base64");
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(conn, i);
        let sync = self
            .room
            .sync_for(Some(&sv))
            .expect("the room answers a valid ?sv=");
        let peer = &mut self.peers[i];
        peer.conn = Some(conn);
        peer.connected_at = self.now;
        peer.next_reconnect = self.now + self.rng.gen_range(40..=160);
        peer.down
            .send(self.now, sync.to_json(), &self.faults, &mut self.rng);
    }

    /// The socket closes: both directions lose what is in flight.
    fn disconnect(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        if let Some(conn) = peer.conn.take() {
            self.conns.remove(&conn);
            self.stats.disconnects += 1;
        }
        peer.session.disconnect();
        peer.up.clear();
        peer.down.clear();
    }

    /// The server's tick: read every connection, commit, fan out, compact.
    fn server_step(&mut self) {
        let now = self.now;
        let conns: Vec<(ConnId, usize)> = self.conns.iter().map(|(c, i)| (*c, *i)).collect();
        for (conn, i) in conns {
            while let Some(frame) = self.peers[i].up.recv(now) {
                let msg = ClientMessage::parse(&frame, &Limits::default())
                    .unwrap_or_else(|e| panic!("server refused a client frame ({e}): {frame}"))
                    .expect("clients send no unknown frames");
                let result = match msg {
                    ClientMessage::Op { id, update, .. } => self.room.handle_op(conn, id, &update),
                    ClientMessage::Sync { update } => self.room.handle_op(conn, None, &update),
                    ClientMessage::Presence(_) => Ok(()),
                };
                match result {
                    Ok(()) => {}
                    Err(EngineError::MissingDependencies) => {
                        self.stats.refused += 1;
                        let frame = ServerMessage::error(&EngineError::MissingDependencies);
                        self.send_down(conn, frame.to_json());
                    }
                    Err(e) => panic!("the room refused a client's op: {e}"),
                }
                self.route_events();
            }
        }
        // Group commit: take a batch, let it be in flight for a few ticks, then land it.
        match self.commit_at {
            Some(at) if now >= at => {
                self.commit_at = None;
                if self.rng.gen_bool(self.commit_failure_chance) {
                    // The store's transaction failed: the batch is not in the log and the
                    // room takes it back out. It was broadcast already, so, as the server
                    // does, every connection is closed and resyncs (two-way sync gives the
                    // room back what only the replicas still hold).
                    let first = self.room.seq() + 1;
                    self.store.log.retain(|(seq, _)| *seq < first);
                    self.stats.failed_commits += 1;
                    if !self.room.handle_commit_failed().is_empty() {
                        let open: Vec<usize> = self.conns.values().copied().collect();
                        for i in open {
                            self.disconnect(i);
                        }
                    }
                } else {
                    let first = self.room.seq() + 1;
                    self.room.handle_committed(first).unwrap();
                    self.stats.commits += 1;
                }
            }
            Some(_) => {}
            None => {
                if self.rng.gen_bool(0.6) {
                    if let Some(batch) = self.room.take_batch() {
                        let first = self.room.seq() + 1;
                        for (k, update) in batch.into_iter().enumerate() {
                            self.store.log.push((first + k as u64, update));
                        }
                        self.commit_at = Some(now + self.rng.gen_range(0..=3));
                    }
                }
            }
        }
        self.route_events();
        self.compact();
    }

    fn route_events(&mut self) {
        while let Some(event) = self.room.poll_event() {
            match event {
                RoomEvent::Ack { conn, id, seq } => {
                    self.send_down(conn, ServerMessage::Ack { id, seq }.to_json());
                }
                RoomEvent::Broadcast {
                    seq,
                    update,
                    origin,
                } => {
                    let frame = ServerMessage::Op { seq, update }.to_json();
                    let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                    for conn in conns {
                        if Some(conn) != origin {
                            self.send_down(conn, frame.clone());
                        }
                    }
                }
                RoomEvent::CatchUp { after } => panic!("catch-up after {after} with one room"),
                // One instance: no hub to tell.
                RoomEvent::Committed { .. } => {}
            }
        }
    }

    fn send_down(&mut self, conn: ConnId, frame: String) {
        if let Some(&i) = self.conns.get(&conn) {
            self.peers[i]
                .down
                .send(self.now, frame, &self.faults, &mut self.rng);
        }
    }

    /// What the server does when the room says compaction is due: fold the snapshot and the ops
    /// after it into a new snapshot.
    fn compact(&mut self) {
        let now_ms = self.now * MS_PER_TICK;
        if !self.room.compaction_due(now_ms) {
            return;
        }
        let (snapshot, from) = match &self.store.snapshot {
            Some((s, seq)) => (Some(s.as_slice()), *seq),
            None => (None, 0),
        };
        let upto = self.room.seq();
        let ops: Vec<&[u8]> = self
            .store
            .log
            .iter()
            .filter(|(seq, _)| *seq > from && *seq <= upto)
            .map(|(_, u)| u.as_slice())
            .collect();
        let folded = room::fold(snapshot, &ops).expect("the log folds");
        self.room.handle_compacted(folded.clone(), upto, now_ms);
        self.store.snapshot = Some((folded, upto));
        self.stats.compactions += 1;
    }

    /// The weather clears: no more faults or edits, everyone reconnects, and the run goes on
    /// until nothing moves.
    fn calm_down(&mut self) {
        self.faults = Faults::NONE;
        for i in 0..self.peers.len() {
            self.peers[i].offline_until = 0;
            self.disconnect(i);
            self.connect(i);
        }
        let deadline = self.now + QUIET_WITHIN;
        while !self.quiet() {
            assert!(
                self.now < deadline,
                "not quiet {QUIET_WITHIN} ticks after the faults stopped: {}",
                self.describe()
            );
            self.tick(false);
        }
    }

    fn quiet(&self) -> bool {
        self.commit_at.is_none()
            && self.room.uncommitted() == 0
            && self.peers.iter().all(|p| {
                p.session.status() == SessionStatus::Online
                    && p.session.pending_count() == 0
                    && p.up.is_empty()
                    && p.down.is_empty()
            })
    }

    fn describe(&self) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                format!(
                    "{:?} pending={} up={} down={}",
                    p.session.status(),
                    p.session.pending_count(),
                    p.up.len(),
                    p.down.len()
                )
            })
            .collect();
        format!(
            "room seq {} uncommitted {}; clients: {}",
            self.room.seq(),
            self.room.uncommitted(),
            peers.join("; ")
        )
    }

    fn check_end(&self) {
        let state = self.room.encode_state();
        assert!(
            !self.room.document().has_pending(),
            "the room holds pending updates"
        );
        for (i, p) in self.peers.iter().enumerate() {
            if p.session.text() != self.room.text() {
                let theirs = p.session.document().encode_state_as_update(None).unwrap();
                let mut r = Document::from_update(9, &state).unwrap();
                let a = r.apply_update(&theirs).unwrap();
                let mut c = Document::from_update(9, &theirs).unwrap();
                let b = c.apply_update(&state).unwrap();
                eprintln!("DBG client {i}: client-state into room copy {a:?} (room text now equals client? {}), room-state into client copy {b:?} (equals room? {})", r.text() == p.session.text(), c.text() == self.room.text());
                eprintln!(
                    "DBG client sv {:?}\nDBG room sv {:?}",
                    concord_engine::doc::decode_state_vector(&p.session.document().state_vector()),
                    concord_engine::doc::decode_state_vector(&self.room.document().state_vector())
                );
                eprintln!(
                    "DBG stats: reloads {} failed commits {} ",
                    self.stats.reloads, self.stats.failed_commits
                );
            }
            assert_eq!(p.session.pending_count(), 0, "client {i} has unacked ops");
            assert!(
                !p.session.document().has_pending(),
                "client {i} holds pending updates"
            );
            assert_eq!(
                p.session.text(),
                self.room.text(),
                "client {i} differs from the room"
            );
            let theirs = p.session.document().encode_state_as_update(None).unwrap();
            assert_same_state(&theirs, &state, &format!("client {i} vs room"));
        }
        // Every acked op is durable: its content is in the room.
        let mut check = Document::from_update(7, &state).unwrap();
        for id in &self.acked {
            let update = self
                .sent_ops
                .get(id)
                .unwrap_or_else(|| panic!("ack for {id}, which no client sent"));
            let applied = check.apply_update(update).unwrap();
            assert!(!applied.changed, "op {id} was acked but is not in the room");
        }
        // Nothing was logged twice: replayed in order, every entry adds something.
        let mut replay = Document::new(8);
        for (seq, update) in &self.store.log {
            let applied = replay.apply_update(update).unwrap();
            assert!(!applied.pending, "log entry {seq} depends on a later one");
            assert!(
                applied.changed,
                "log entry {seq} adds nothing: logged twice"
            );
        }
        assert_eq!(
            self.store.log.len() as u64,
            self.room.seq(),
            "log and seq disagree"
        );
        let policy = CompactionPolicy::default();
        let loaded = RoomState::load(None, 0, &self.store.log, policy, 0).expect("the log loads");
        assert_same_state(&loaded.encode_state(), &state, "load(log) vs room");
        if let Some((snapshot, upto)) = &self.store.snapshot {
            let tail: Vec<(u64, Vec<u8>)> = self
                .store
                .log
                .iter()
                .filter(|(seq, _)| seq > upto)
                .cloned()
                .collect();
            let resumed = RoomState::load(Some(snapshot), *upto, &tail, policy, 0)
                .expect("snapshot and tail load");
            assert_eq!(resumed.seq(), self.room.seq());
            assert_same_state(
                &resumed.encode_state(),
                &state,
                "load(snapshot, tail) vs room",
            );
        }
    }
}

#[derive(Default)]
struct Totals {
    runs: u64,
    stats: Stats,
    ticks: u64,
}

impl Totals {
    fn add(&mut self, s: Stats) {
        self.runs += 1;
        self.ticks += s.ticks;
        let t = &mut self.stats;
        t.edits += s.edits;
        t.offline_periods += s.offline_periods;
        t.reloads += s.reloads;
        t.failed_commits += s.failed_commits;
        t.disconnects += s.disconnects;
        t.reconnects += s.reconnects;
        t.ops_sent += s.ops_sent;
        t.refused += s.refused;
        t.commits += s.commits;
        t.compactions += s.compactions;
        t.offline_edits = t.offline_edits.max(s.offline_edits);
        t.links += s.links;
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} runs, {} ticks, {} edits, {} ops sent, {} refused (missing dependencies), {} \
             commits ({} failed), {} compactions, {} disconnects, {} reconnects, {} tab reloads, \
             {} offline periods (most offline edits in one run: {}); frames: {} sent, {} \
             dropped, {} duplicated, {} reordered, {} lost to disconnects",
            self.runs,
            self.ticks,
            s.edits,
            s.ops_sent,
            s.refused,
            s.commits,
            s.failed_commits,
            s.compactions,
            s.disconnects,
            s.reconnects,
            s.reloads,
            s.offline_periods,
            s.offline_edits,
            s.links.sent,
            s.links.dropped,
            s.links.duplicated,
            s.links.reordered,
            s.links.cleared,
        )
    }
}
