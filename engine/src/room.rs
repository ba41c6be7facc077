//! [`RoomState`]: the server's state machine for one room, without I/O.
//!
//! # Call order
//! 1. [`RoomState::load`] with the stored snapshot and the ops after it.
//! 2. For each client frame: [`RoomState::handle_op`] (or [`RoomState::sync_for`] when a
//!    connection opens). Accepted updates are applied at once (so the next op dedupes against
//!    them) and staged for the store.
//! 3. [`RoomState::take_batch`] hands the staged updates to the store as one group commit; the
//!    store assigns consecutive seqs inside its transaction and the caller reports back with
//!    [`RoomState::handle_committed`] (or [`RoomState::handle_commit_failed`]).
//! 4. Updates committed elsewhere (another instance, a catch-up read) come in through
//!    [`RoomState::handle_remote`] in any order; gaps produce a [`RoomEvent::CatchUp`].
//! 5. Drain [`RoomState::poll_event`] after every call: acks, broadcasts, catch-up requests.
//!
//! Acks are only ever emitted from `handle_committed`: an ack means durable. An op that adds
//! nothing new is acked once everything already staged ahead of it is durable, because the
//! content it duplicates may still be in flight.
//!
//! A rejected op costs what the op costs, not what the room costs: bounds, dependencies (every
//! origin, right origin, parent and deleted id, and each client's first clock, must be in the
//! room or in the op) and the memory budget are all decided from the op's bytes and the room's
//! state vector before the document is touched. Only an update that passes all of that and
//! still fails inside yrs (an error or a panic) makes the room rebuild its document from the
//! last checkpoint plus every accepted update since, which it keeps for exactly this purpose
//! (and for compaction, which bounds it). That costs the whole document, so it is reported as
//! [`EngineError::IntegrationFailed`] and counted ([`RoomState::rebuilds`]): the server should
//! close such a connection.

use std::collections::{BTreeMap, HashMap, VecDeque};

use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::doc::depth::{Depths, MAX_TYPE_DEPTH};
use crate::doc::{decode_accepted, decode_untrusted, items_of, Document};
use crate::error::{EngineError, Result};
use crate::wire::ServerMessage;

/// The server's handle for one connection, so acks find their way back. Opaque to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// An op id for an update whose sender names none (a Hocuspocus provider's, acked with
/// `SyncStatus`): unlike a client's id (printable ASCII, see [`crate::wire::validate_op_id`]) it
/// holds a space, so the two can never meet.
pub fn server_op_id(n: u64) -> String {
    format!(" {n}")
}

fn is_server_op_id(id: &str) -> bool {
    id.starts_with(' ')
}

/// What the room decided; the server carries these out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// Tell `conn` its op `id` is durable at `seq`.
    Ack {
        /// Connection that sent the op.
        conn: ConnId,
        /// The client's op id.
        id: String,
        /// Room seq at which the op (or the content it duplicates) is durable.
        seq: u64,
    },
    /// Send this update to every local connection except `origin`.
    ///
    /// A local client's update is broadcast as soon as the room has integrated it, before it
    /// is durable (`seq` 0: not known until the commit assigns it); its ack still waits for
    /// the commit. That is safe because every replica that received it holds it: if the
    /// commit fails, [`RoomState::handle_commit_failed`] asks for every member to resync, and
    /// two-way sync on reconnect gives the room back whatever it lost. Updates committed
    /// elsewhere (hub, catch-up) carry their seq.
    Broadcast {
        /// Room seq of the update, or 0 if it is not committed yet.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
        /// The local connection that sent it, if any (it already has it).
        origin: Option<ConnId>,
    },
    /// This room's update is now committed at `seq`: tell other instances (it was already
    /// broadcast to local connections).
    Committed {
        /// Room seq of the update.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// Seqs after `after` are missing here: read ops with `seq > after` from the store and feed
    /// them to [`RoomState::handle_remote`].
    CatchUp {
        /// The last seq this room has contiguously.
        after: u64,
    },
}

/// When to fold the op log into a new snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact after this many committed ops.
    pub max_ops: u64,
    /// Or after this long (ms) with at least one op.
    pub max_age_ms: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            max_ops: 200,
            max_age_ms: 5_000,
        }
    }
}

/// The wait before retrying a failed compaction, doubled per failure in a row up to
/// [`COMPACTION_BACKOFF_MAX_MS`].
pub const COMPACTION_BACKOFF_MIN_MS: u64 = 1_000;
/// The longest wait between failed compactions of one room.
pub const COMPACTION_BACKOFF_MAX_MS: u64 = 60_000;

/// Memory budgets of one room, in bytes. An op that would take the room over one is refused
/// with [`EngineError::Overloaded`] (retryable) and changes nothing: when the store stalls,
/// memory stops growing instead of the server running out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Accepted updates not yet durable: staged plus the batch in flight.
    pub max_staged_bytes: usize,
    /// Committed updates since the last checkpoint, kept for rebuilds until compaction folds
    /// them; grows when compaction cannot run.
    pub max_tail_bytes: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_staged_bytes: 64 * 1024 * 1024,
            max_tail_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Staged {
    conn: ConnId,
    id: Option<String>,
    update: Vec<u8>,
    /// Duplicates that arrived while this was staged: acked when this is durable.
    dup_acks: Vec<(ConnId, String)>,
    /// The room seq its sender said it had seen (history: edits made against an older state).
    base: Option<u64>,
}

/// Committed updates seen out of order, waiting for the gap below them to fill.
#[derive(Debug)]
enum Ahead {
    /// Committed by this room; already applied to the document.
    Own,
    /// Committed elsewhere; applied when its turn comes.
    Remote(Vec<u8>),
}

/// How many recent op ids the room remembers for the fast duplicate path. Older duplicates are
/// still caught by content ("adds nothing new"); this only saves a decode.
const RECENT_IDS: usize = 4096;

/// The state of one room.
pub struct RoomState {
    doc: Document,
    /// Highest seq this room has contiguously.
    seq: u64,
    /// Full-state update at `checkpoint_seq`: where a rebuild starts.
    checkpoint: Vec<u8>,
    checkpoint_seq: u64,
    /// Committed updates after the checkpoint, in seq order (rebuild and memory accounting).
    tail: Vec<(u64, Vec<u8>)>,
    staged: Vec<Staged>,
    in_flight: Vec<Staged>,
    ahead: BTreeMap<u64, Ahead>,
    /// The `after` of the last catch-up asked for, so a gap is reported once.
    catch_up_asked: Option<u64>,
    recent_ids: HashMap<String, u64>,
    recent_order: VecDeque<String>,
    events: VecDeque<RoomEvent>,
    policy: CompactionPolicy,
    limits: RoomLimits,
    last_compaction_ms: u64,
    /// After a failed compaction: no new one before this time (ms), and the wait before the
    /// next retry if this one fails too.
    compaction_retry_at: u64,
    compaction_backoff_ms: u64,
    /// Times the document was rebuilt from the checkpoint (see [`RoomState::rebuilds`]).
    rebuilds: u64,
    /// Where every accepted item sits, to bound how deep shared types nest.
    depths: Depths,
}

impl std::fmt::Debug for RoomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomState")
            .field("seq", &self.seq)
            .field("checkpoint_seq", &self.checkpoint_seq)
            .field("tail", &self.tail.len())
            .field("staged", &self.staged.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// The room's own yrs client id. The room never edits, so it never mints ids with it.
const ROOM_CLIENT_ID: u64 = 0;

impl RoomState {
    /// An empty room at seq 0.
    pub fn new(policy: CompactionPolicy, now_ms: u64) -> Self {
        let doc = Document::new(ROOM_CLIENT_ID);
        let checkpoint = doc
            .encode_state_as_update(None)
            .unwrap_or_else(|_| yrs::Update::EMPTY_V2.to_vec());
        RoomState {
            doc,
            seq: 0,
            checkpoint,
            checkpoint_seq: 0,
            tail: Vec::new(),
            staged: Vec::new(),
            in_flight: Vec::new(),
            ahead: BTreeMap::new(),
            catch_up_asked: None,
            recent_ids: HashMap::new(),
            recent_order: VecDeque::new(),
            events: VecDeque::new(),
            policy,
            limits: RoomLimits::default(),
            last_compaction_ms: now_ms,
            compaction_retry_at: 0,
            compaction_backoff_ms: 0,
            rebuilds: 0,
            depths: Depths::default(),
        }
    }

    /// The same room with memory budgets `limits` instead of [`RoomLimits::default`]. Applies
    /// to ops from now on; what the room holds already is kept.
    pub fn with_limits(mut self, limits: RoomLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Bytes of accepted updates not yet durable (staged and in flight), for metrics and
    /// [`RoomLimits::max_staged_bytes`].
    pub fn staged_bytes(&self) -> usize {
        self.staged
            .iter()
            .chain(self.in_flight.iter())
            .map(|s| s.update.len())
            .sum()
    }

    /// Bytes of committed updates since the last checkpoint, for metrics and
    /// [`RoomLimits::max_tail_bytes`].
    pub fn tail_bytes(&self) -> usize {
        self.tail.iter().map(|(_, u)| u.len()).sum()
    }

    /// How often the document was rebuilt from the checkpoint: once per failed commit, once per
    /// committed update that did not apply, and once per [`EngineError::IntegrationFailed`].
    /// Rejected ops (bounds, dependencies, budgets) never rebuild.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// A room loaded from the store: `snapshot` (state at `snapshot_seq`, if any) and the ops
    /// after it, which must be exactly `snapshot_seq + 1 ..` with no gap.
    pub fn load<B: AsRef<[u8]>>(
        snapshot: Option<&[u8]>,
        snapshot_seq: u64,
        ops: &[(u64, B)],
        policy: CompactionPolicy,
        now_ms: u64,
    ) -> Result<Self> {
        let mut room = RoomState::new(policy, now_ms);
        if let Some(snapshot) = snapshot {
            room.doc = Document::from_update(ROOM_CLIENT_ID, snapshot)?;
            room.checkpoint = snapshot.to_vec();
        }
        room.seq = snapshot_seq;
        room.checkpoint_seq = snapshot_seq;
        let mut expected = snapshot_seq + 1;
        for (seq, _) in ops {
            if *seq != expected {
                return Err(EngineError::SeqOutOfOrder {
                    expected,
                    got: *seq,
                });
            }
            expected += 1;
        }
        let updates: Vec<&[u8]> = ops.iter().map(|(_, u)| u.as_ref()).collect();
        room.doc.apply_updates(&updates)?;
        let state = room.doc.encode_state_as_update(None)?;
        if let Ok(resolved) = room.depths.resolve(&items_of(&state)?, None) {
            room.depths.insert(resolved);
        }
        room.tail = ops.iter().map(|(s, u)| (*s, u.as_ref().to_vec())).collect();
        room.seq = expected - 1;
        Ok(room)
    }

    /// The highest seq this room has contiguously.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The room's document (read-only).
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// The text of the room.
    pub fn text(&self) -> String {
        self.doc.text()
    }

    /// Full state of the room as one v2 update (includes staged, not-yet-durable updates).
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc
            .encode_state_as_update(None)
            .unwrap_or_else(|_| yrs::Update::EMPTY_V2.to_vec())
    }

    /// Ops accepted but not yet committed (staged or in flight).
    pub fn uncommitted(&self) -> usize {
        self.staged.len() + self.in_flight.len()
    }

    /// The first frame for a connection that sent `?sv=` (or nothing): what it lacks, the
    /// room's state vector and seq.
    pub fn sync_for(&self, client_sv: Option<&[u8]>) -> Result<ServerMessage> {
        Ok(ServerMessage::Sync {
            state: self.doc.encode_state_as_update(client_sv)?,
            sv: Some(self.doc.state_vector()),
            seq: self.seq,
        })
    }

    /// A client's update (an `op`, or the update of a client `sync`).
    ///
    /// Returns an error, with the room unchanged, for bytes yrs cannot decode or integrate and
    /// for updates that build on changes the room has not seen. A duplicate (by id, or because
    /// it adds nothing new) is not staged; it is acked once what it duplicates is durable.
    pub fn handle_op(&mut self, conn: ConnId, id: Option<String>, update: &[u8]) -> Result<()> {
        self.handle_op_based(conn, id, update, None)
    }

    /// [`RoomState::handle_op`] for an op whose sender said which room seq it had seen when it
    /// made it (`base`), which history keeps (see [`RoomState::in_flight_origins`]).
    pub fn handle_op_based(
        &mut self,
        conn: ConnId,
        id: Option<String>,
        update: &[u8],
        base: Option<u64>,
    ) -> Result<()> {
        if let Some(id) = &id {
            if let Some(&seq) = self.recent_ids.get(id) {
                self.events.push_back(RoomEvent::Ack {
                    conn,
                    id: id.clone(),
                    seq,
                });
                return Ok(());
            }
            if let Some(s) = self
                .staged
                .iter_mut()
                .chain(self.in_flight.iter_mut())
                .find(|s| s.id.as_deref() == Some(id.as_str()))
            {
                s.dup_acks.push((conn, id.clone()));
                return Ok(());
            }
        }

        let staged = self.staged_bytes();
        if staged.saturating_add(update.len()) > self.limits.max_staged_bytes {
            return Err(EngineError::Overloaded {
                what: "staged",
                bytes: staged,
                len: update.len(),
                max: self.limits.max_staged_bytes,
            });
        }
        let tail = self.tail_bytes();
        if tail.saturating_add(update.len()) > self.limits.max_tail_bytes {
            return Err(EngineError::Overloaded {
                what: "tail",
                bytes: tail,
                len: update.len(),
                max: self.limits.max_tail_bytes,
            });
        }

        let (decoded, refs) = decode_untrusted(update)?;
        let have = self.doc.yrs().transact().state_vector();
        if refs.missing_from(&decoded, &have) {
            return Err(EngineError::MissingDependencies);
        }
        let resolved = self
            .depths
            .resolve(&refs.items, Some(MAX_TYPE_DEPTH))
            .map_err(|depth| EngineError::InvalidUpdate {
                reason: format!(
                    "nests shared types {depth} deep, over the limit of {MAX_TYPE_DEPTH}"
                ),
            })?;
        let pending_before = self.doc.has_pending();
        let (applied, integrated) = match self.doc.apply_decoded_recording(decoded) {
            Ok(applied) => applied,
            Err(e) => {
                self.rebuild();
                return Err(EngineError::IntegrationFailed {
                    reason: e.to_string(),
                });
            }
        };
        if applied.pending && !pending_before {
            // The static check above should make this unreachable; if yrs still left part of
            // the update waiting, the document is rebuilt without it.
            self.rebuild();
            return Err(EngineError::IntegrationFailed {
                reason: "the update left changes pending".to_owned(),
            });
        }
        if applied.changed {
            self.depths.insert(resolved);
            // Fan-out does not wait for durability (see `RoomEvent::Broadcast`).
            self.events.push_back(RoomEvent::Broadcast {
                seq: 0,
                update: integrated.clone(),
                origin: Some(conn),
            });
            // What the document integrated, not the bytes received: see
            // `Document::apply_decoded_recording`.
            self.staged.push(Staged {
                conn,
                id,
                update: integrated,
                dup_acks: Vec::new(),
                base,
            });
        } else if let Some(id) = id {
            match self.staged.last_mut().or(self.in_flight.last_mut()) {
                Some(last) => last.dup_acks.push((conn, id)),
                None => self.events.push_back(RoomEvent::Ack {
                    conn,
                    id,
                    seq: self.seq,
                }),
            }
        }
        Ok(())
    }

    /// Takes the staged updates for one group commit, in order; `None` if nothing is staged or
    /// a commit is already in flight (commits of one room are sequential).
    pub fn take_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        if self.staged.is_empty() || !self.in_flight.is_empty() {
            return None;
        }
        self.in_flight = std::mem::take(&mut self.staged);
        Some(self.in_flight.iter().map(|s| s.update.clone()).collect())
    }

    /// Who sent each update of the batch in flight (from [`RoomState::take_batch`]) and the
    /// seq they said they had seen, in order: what history records of them.
    pub fn in_flight_origins(&self) -> Vec<(ConnId, Option<u64>)> {
        self.in_flight.iter().map(|s| (s.conn, s.base)).collect()
    }

    /// The batch from [`RoomState::take_batch`] is committed with seqs `first_seq ..`.
    ///
    /// With several instances, a catch-up read can return this room's own ops before the
    /// commit reply does (another instance's later seq revealed a gap). Those seqs are already
    /// applied and counted; they are still acked and announced here with their sender, because
    /// only this call knows who sent them.
    pub fn handle_committed(&mut self, first_seq: u64) -> Result<()> {
        if self.in_flight.is_empty() || first_seq == 0 {
            return Err(EngineError::SeqOutOfOrder {
                expected: self.seq + 1,
                got: first_seq,
            });
        }
        let batch = std::mem::take(&mut self.in_flight);
        for (offset, staged) in batch.into_iter().enumerate() {
            let seq = first_seq + offset as u64;
            let Staged {
                conn,
                id,
                update,
                dup_acks,
                ..
            } = staged;
            if let Some(id) = id {
                self.remember_id(id.clone(), seq);
                self.events.push_back(RoomEvent::Ack { conn, id, seq });
            }
            for (conn, id) in dup_acks {
                self.events.push_back(RoomEvent::Ack { conn, id, seq });
            }
            self.events.push_back(RoomEvent::Committed {
                seq,
                update: update.clone(),
            });
            if seq > self.seq {
                // Replaces a catch-up's copy of this same op if one came first (not applied
                // yet, not in the tail); the update itself is already in the document.
                self.ahead.insert(seq, Ahead::Own);
                self.tail.push((seq, update));
            }
        }
        self.advance()
    }

    /// The batch from [`RoomState::take_batch`] could not be committed. Its updates are taken
    /// out of the document again (nothing un-durable may linger to be acked later as a
    /// duplicate); their senders still hold them as pending and resend after reconnecting.
    /// Staged updates that built on the failed batch go too: committed without it they would be
    /// acked while they cannot integrate. So do the duplicates waiting for a staged update's
    /// commit: what they duplicate may have been in the failed batch. Returns the connections
    /// that should be told (and closed so they resync).
    ///
    /// The failed updates were already broadcast, so every connection of the room may hold
    /// content the room no longer has, and later edits built on it would be refused as
    /// missing dependencies: the server closes *every* member, and two-way sync on reconnect
    /// (each replica sends what the room lacks) brings the lost updates back.
    pub fn handle_commit_failed(&mut self) -> Vec<ConnId> {
        let mut failed = std::mem::take(&mut self.in_flight);
        failed.extend(self.rebuild_dropping_dangling());
        let unconfirmed: Vec<ConnId> = self
            .staged
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.dup_acks))
            .map(|(conn, _)| conn)
            .collect();
        let mut conns: Vec<ConnId> = failed
            .iter()
            .flat_map(|s| std::iter::once(s.conn).chain(s.dup_acks.iter().map(|(c, _)| *c)))
            .chain(unconfirmed)
            .collect();
        conns.sort();
        conns.dedup();
        conns
    }

    /// [`RoomState::rebuild`] without the in-flight batch, dropping (and returning) every staged
    /// update that no longer has what it builds on. Which ones dangle is decided statically
    /// ([`crate::doc::Refs::missing_from`], in staging order against the rebuilt state plus the
    /// staged updates kept before it), so the document is rebuilt once however many are dropped.
    fn rebuild_dropping_dangling(&mut self) -> Vec<Staged> {
        let mut doc = Document::new(ROOM_CLIENT_ID);
        let base = std::iter::once(self.checkpoint.as_slice())
            .chain(self.tail.iter().map(|(_, u)| u.as_slice()))
            .chain(self.in_flight.iter().map(|s| s.update.as_slice()));
        for update in base {
            let _ = doc.apply_update(update);
        }
        let mut have = doc.yrs().transact().state_vector();
        let mut dropped = Vec::new();
        for staged in std::mem::take(&mut self.staged) {
            match decode_accepted(&staged.update) {
                Ok((update, refs)) if !refs.missing_from(&update, &have) => {
                    for (client, ranges) in update.insertions(true).iter() {
                        for range in ranges.iter() {
                            have.set_max(*client, range.end);
                        }
                    }
                    let _ = doc.apply_update(&staged.update);
                    self.staged.push(staged);
                }
                _ => dropped.push(staged),
            }
        }
        self.doc = doc;
        self.rebuilds += 1;
        dropped
    }

    /// An update committed elsewhere at `seq` (another instance via the hub, or a catch-up read
    /// from the store). Applied in seq order; duplicates are ignored; a gap asks for catch-up.
    pub fn handle_remote(&mut self, seq: u64, update: &[u8]) -> Result<()> {
        if seq <= self.seq || self.ahead.contains_key(&seq) {
            return Ok(());
        }
        self.ahead.insert(seq, Ahead::Remote(update.to_vec()));
        let result = self.advance();
        if seq > self.seq && self.catch_up_asked != Some(self.seq) {
            self.catch_up_asked = Some(self.seq);
            self.events
                .push_back(RoomEvent::CatchUp { after: self.seq });
        }
        result
    }

    /// Moves `seq` over every contiguous entry of `ahead`, applying remote ones.
    fn advance(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(entry) = self.ahead.remove(&(self.seq + 1)) {
            self.seq += 1;
            if let Ahead::Remote(update) = entry {
                // Checked where it was accepted: only recorded here.
                if let Ok(Ok(resolved)) =
                    items_of(&update).map(|items| self.depths.resolve(&items, None))
                {
                    self.depths.insert(resolved);
                }
                // Committed truth: apply even if part of it waits for a later seq.
                if let Err(e) = self.doc.apply_update(&update) {
                    // The store only holds updates a room accepted; if one does not apply, the
                    // document is rebuilt without it and the error reported once.
                    self.rebuild();
                    first_err.get_or_insert(e);
                    continue;
                }
                self.events.push_back(RoomEvent::Broadcast {
                    seq: self.seq,
                    update: update.clone(),
                    origin: None,
                });
                self.tail.push((self.seq, update));
            }
        }
        if self.ahead.is_empty() {
            self.catch_up_asked = None;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn remember_id(&mut self, id: String, seq: u64) {
        if is_server_op_id(&id) {
            // Never resent, so never deduplicated: it would only push clients' ids out.
            return;
        }
        if self.recent_ids.insert(id.clone(), seq).is_none() {
            self.recent_order.push_back(id);
            if self.recent_order.len() > RECENT_IDS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent_ids.remove(&old);
                }
            }
        }
    }

    /// Rebuilds the document from the checkpoint and every update accepted since, dropping
    /// whatever a failed apply may have left half-integrated.
    fn rebuild(&mut self) {
        let mut doc = Document::new(ROOM_CLIENT_ID);
        let mut updates: Vec<&[u8]> = vec![&self.checkpoint];
        updates.extend(self.tail.iter().map(|(_, u)| u.as_slice()));
        updates.extend(self.in_flight.iter().map(|s| s.update.as_slice()));
        updates.extend(self.staged.iter().map(|s| s.update.as_slice()));
        for update in updates {
            // Each of these was applied successfully before, so this cannot fail; if it ever
            // did, skipping it keeps the room serving and the error is visible in its text.
            let _ = doc.apply_update(update);
        }
        self.doc = doc;
        self.rebuilds += 1;
    }

    /// True when the log since the last snapshot should be folded (`now_ms` is the caller's
    /// clock).
    pub fn compaction_due(&self, now_ms: u64) -> bool {
        if now_ms < self.compaction_retry_at {
            return false;
        }
        let ops = self.seq.saturating_sub(self.checkpoint_seq);
        ops >= self.policy.max_ops
            || (ops > 0 && now_ms.saturating_sub(self.last_compaction_ms) >= self.policy.max_age_ms)
    }

    /// The store folded ops up to `op_seq` into `snapshot`: it becomes the rebuild checkpoint
    /// and the in-memory tail before it is dropped. A fold bounded in bytes may stop short of
    /// [`RoomState::seq`]; the room is then still due and the next compaction goes on.
    pub fn handle_compacted(&mut self, snapshot: Vec<u8>, op_seq: u64, now_ms: u64) {
        self.handle_compaction_skipped(now_ms);
        if op_seq <= self.checkpoint_seq || op_seq > self.seq {
            return;
        }
        self.checkpoint = snapshot;
        self.checkpoint_seq = op_seq;
        self.tail.retain(|(seq, _)| *seq > op_seq);
    }

    /// A compaction ended with nothing to fold (or another instance's compaction won): the
    /// checkpoint stays, the age clock restarts.
    pub fn handle_compaction_skipped(&mut self, now_ms: u64) {
        self.last_compaction_ms = now_ms;
        self.compaction_retry_at = 0;
        self.compaction_backoff_ms = 0;
    }

    /// A compaction failed (store down, timed out): the next one waits, twice as long after
    /// each failure in a row ([`COMPACTION_BACKOFF_MIN_MS`] to [`COMPACTION_BACKOFF_MAX_MS`]),
    /// so a room whose fold cannot finish does not start a new one every tick.
    pub fn handle_compaction_failed(&mut self, now_ms: u64) {
        self.compaction_backoff_ms = (self.compaction_backoff_ms.saturating_mul(2))
            .clamp(COMPACTION_BACKOFF_MIN_MS, COMPACTION_BACKOFF_MAX_MS);
        self.compaction_retry_at = now_ms.saturating_add(self.compaction_backoff_ms);
    }

    /// When the next compaction may start after a failure (ms), if one failed last.
    pub fn compaction_retry_at(&self) -> Option<u64> {
        (self.compaction_backoff_ms > 0).then_some(self.compaction_retry_at)
    }

    /// Next decision for the server to carry out.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }
}

/// The compaction fold: the state of `snapshot` plus `ops`, as one canonical full-state update.
/// Pure, so the store can run it on the ops it read inside its transaction.
pub fn fold<B: AsRef<[u8]>>(snapshot: Option<&[u8]>, ops: &[B]) -> Result<Vec<u8>> {
    let mut doc = match snapshot {
        Some(s) => Document::from_update(ROOM_CLIENT_ID, s)?,
        None => Document::new(ROOM_CLIENT_ID),
    };
    doc.apply_updates(ops)?;
    doc.encode_state_with_pending()
}

/// True if `sv` (v1 bytes) decodes; a cheap check for the `?sv=` query before a room is touched.
pub fn is_valid_state_vector(sv: &[u8]) -> bool {
    std::panic::catch_unwind(|| StateVector::decode_v1(sv).is_ok()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomState {
        RoomState::new(CompactionPolicy::default(), 0)
    }

    fn drain(room: &mut RoomState) -> Vec<RoomEvent> {
        std::iter::from_fn(|| room.poll_event()).collect()
    }

    /// Builds a chain of XML elements `levels` deep, one update per element, each placed
    /// beside a sibling (so its parent is known only through that sibling), and feeds the
    /// updates to `room`; returns the first error.
    fn xml_chain(room: &mut RoomState, levels: u16) -> Result<()> {
        use yrs::{Doc, XmlElementPrelim, XmlFragment};
        let doc = Doc::with_client_id(7);
        let root = doc.get_or_insert_xml_fragment("prosemirror");
        let mut send = |f: &dyn Fn(&mut yrs::TransactionMut)| -> Result<()> {
            let before = doc.transact().state_vector();
            f(&mut doc.transact_mut());
            let update = doc.transact().encode_diff_v2(&before);
            room.handle_op(ConnId(1), None, &update)?;
            if let Some(batch) = room.take_batch() {
                let n = batch.len() as u64;
                room.handle_committed(room.seq() + 1).unwrap();
                let _ = n;
            }
            Ok(())
        };
        let first = std::cell::RefCell::new(None);
        send(&|txn| {
            root.insert(txn, 0, XmlElementPrelim::empty("p"));
            let b = root.insert(txn, 1, XmlElementPrelim::empty("p"));
            *first.borrow_mut() = Some(b);
        })?;
        let mut parent = first.borrow_mut().take().unwrap();
        for _ in 1..levels {
            let sibling = std::cell::RefCell::new(None);
            send(&|txn| {
                parent.insert(txn, 0, XmlElementPrelim::empty("li"));
            })?;
            send(&|txn| {
                *sibling.borrow_mut() = Some(parent.insert(txn, 1, XmlElementPrelim::empty("li")));
            })?;
            parent = sibling.borrow_mut().take().unwrap();
        }
        Ok(())
    }

    #[test]
    fn shared_types_nest_to_the_limit_and_no_deeper_across_updates() {
        let mut ok = room();
        xml_chain(&mut ok, MAX_TYPE_DEPTH).expect("nesting up to the limit is accepted");
        let mut deep = room();
        let err = xml_chain(&mut deep, MAX_TYPE_DEPTH + 1).unwrap_err();
        assert!(err.to_string().contains("nests shared types"), "{err}");
        // A room loaded from the accepted state knows the depths too.
        let state = ok.encode_state();
        let mut loaded = RoomState::load(
            Some(&state),
            1,
            &[] as &[(u64, Vec<u8>)],
            CompactionPolicy::default(),
            0,
        )
        .unwrap();
        assert!(loaded.depths.len() > 0);
        let _ = &mut loaded;
    }

    #[test]
    fn ack_only_after_commit() {
        let mut r = room();
        let mut a = Document::new(1);
        let u = a.insert(0, "hi").unwrap();
        r.handle_op(ConnId(1), Some("a-1".into()), &u).unwrap();
        assert_eq!(
            drain(&mut r),
            vec![RoomEvent::Broadcast {
                seq: 0,
                update: u.clone(),
                origin: Some(ConnId(1))
            }],
            "broadcast at once, nothing acked before the commit"
        );
        assert_eq!(r.take_batch().unwrap(), vec![u.clone()]);
        r.handle_committed(1).unwrap();
        let events = drain(&mut r);
        assert_eq!(
            events[0],
            RoomEvent::Ack {
                conn: ConnId(1),
                id: "a-1".into(),
                seq: 1
            }
        );
        assert!(matches!(events[1], RoomEvent::Committed { seq: 1, .. }));
        assert_eq!(r.seq(), 1);
    }

    #[test]
    fn duplicates_are_acked_but_not_logged() {
        let mut r = room();
        let mut a = Document::new(1);
        let u = a.insert(0, "hi").unwrap();
        r.handle_op(ConnId(1), Some("a-1".into()), &u).unwrap();
        // Same content under another id while the first is still staged: acked with it.
        r.handle_op(ConnId(2), Some("b-1".into()), &u).unwrap();
        assert_eq!(r.take_batch().unwrap().len(), 1);
        r.handle_committed(1).unwrap();
        let acks: Vec<_> = drain(&mut r)
            .into_iter()
            .filter(|e| matches!(e, RoomEvent::Ack { .. }))
            .collect();
        assert_eq!(acks.len(), 2);
        // Same id again: acked at once from memory.
        r.handle_op(ConnId(1), Some("a-1".into()), &u).unwrap();
        assert_eq!(
            drain(&mut r),
            vec![RoomEvent::Ack {
                conn: ConnId(1),
                id: "a-1".into(),
                seq: 1
            }]
        );
        assert!(r.take_batch().is_none());
    }

    #[test]
    fn missing_dependencies_change_nothing() {
        let mut r = room();
        let mut a = Document::new(1);
        let _u1 = a.insert(0, "ab").unwrap();
        let u2 = a.insert(2, "cd").unwrap();
        let before = r.encode_state();
        assert_eq!(
            r.handle_op(ConnId(1), None, &u2),
            Err(EngineError::MissingDependencies)
        );
        assert_eq!(r.encode_state(), before);
        assert!(r.take_batch().is_none());
        assert_eq!(r.rebuilds(), 0, "decided before the document was touched");
    }

    #[test]
    fn unknown_origins_and_deletes_are_missing_without_a_rebuild() {
        let mut r = room();
        let mut a = Document::new(1);
        let u1 = a.insert(0, "ab").unwrap();
        let mut c = Document::from_update(2, &u1).unwrap();
        let between = c.insert(1, "z").unwrap(); // origin 1#0: the room never saw it
        let delete = c.delete(0, 1).unwrap(); // only a delete set, of 1#0
        let mut w = Document::new(3);
        let ok = w.insert(0, "w").unwrap();
        r.handle_op(ConnId(3), None, &ok).unwrap();
        let before = r.encode_state();
        for u in [&between, &delete] {
            assert_eq!(
                r.handle_op(ConnId(2), Some("c".into()), u),
                Err(EngineError::MissingDependencies)
            );
            assert_eq!(r.encode_state(), before);
            assert!(!r.document().has_pending());
        }
        assert_eq!(r.rebuilds(), 0);
        assert_eq!(r.uncommitted(), 1);
        // Once the room has 1#0, both go in.
        r.handle_op(ConnId(1), None, &u1).unwrap();
        r.handle_op(ConnId(2), None, &between).unwrap();
        r.handle_op(ConnId(2), None, &delete).unwrap();
        assert_eq!(r.text(), "zbw");
        assert_eq!(r.rebuilds(), 0);
    }

    #[test]
    fn commit_failure_drops_exactly_the_dependent_ops_in_one_rebuild() {
        let mut r = room();
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        let a1 = a.insert(0, "a").unwrap();
        r.handle_op(ConnId(1), Some("a-1".into()), &a1).unwrap();
        r.take_batch().unwrap();
        // k = 3 ops built on a-1 (client 1's later clocks, a client 3 insert after a-1's
        // character, and a client 3 delete of it), and two that are independent of it.
        let a2 = a.insert(1, "b").unwrap();
        let mut c = Document::from_update(3, &a1).unwrap();
        let c1 = c.insert(1, "c").unwrap();
        let mut d = Document::from_update(4, &a1).unwrap();
        let d1 = d.delete(0, 1).unwrap();
        let b1 = b.insert(0, "x").unwrap();
        let b2 = b.insert(1, "y").unwrap();
        for (conn, id, u) in [
            (1, "a-2", &a2),
            (2, "b-1", &b1),
            (3, "c-1", &c1),
            (4, "d-1", &d1),
            (2, "b-2", &b2),
        ] {
            r.handle_op(ConnId(conn), Some(id.into()), u).unwrap();
        }
        let rebuilds = r.rebuilds();
        let mut told = r.handle_commit_failed();
        told.sort();
        assert_eq!(told, vec![ConnId(1), ConnId(3), ConnId(4)]);
        assert_eq!(r.rebuilds(), rebuilds + 1, "one rebuild for all of them");
        assert_eq!(r.text(), "xy");
        assert!(!r.document().has_pending());
        assert_eq!(r.take_batch().unwrap(), vec![b1, b2]);
    }

    #[test]
    fn staged_bytes_over_the_budget_are_overloaded_and_change_nothing() {
        let limits = RoomLimits {
            max_staged_bytes: 100,
            max_tail_bytes: 150,
        };
        let mut r = room().with_limits(limits);
        let mut a = Document::new(1);
        let u1 = a.insert(0, &"x".repeat(40)).unwrap();
        let u2 = a.insert(40, &"y".repeat(40)).unwrap();
        r.handle_op(ConnId(1), Some("a-1".into()), &u1).unwrap();
        assert_eq!(r.staged_bytes(), u1.len());
        r.take_batch().unwrap();
        let before = r.encode_state();
        let err = r.handle_op(ConnId(1), Some("a-2".into()), &u2).unwrap_err();
        assert_eq!(err.code(), "overloaded");
        assert_eq!(r.encode_state(), before);
        assert_eq!(r.uncommitted(), 1);
        // Durable frees the budget: the retry goes in, and the tail is counted instead.
        r.handle_committed(1).unwrap();
        assert_eq!((r.staged_bytes(), r.tail_bytes()), (0, u1.len()));
        r.handle_op(ConnId(1), Some("a-2".into()), &u2).unwrap();
        r.take_batch().unwrap();
        r.handle_committed(2).unwrap();
        // The tail is over its budget until compaction folds it.
        let u3 = a.insert(0, &"z".repeat(40)).unwrap();
        let err = r.handle_op(ConnId(1), None, &u3).unwrap_err();
        assert!(
            matches!(err, EngineError::Overloaded { what: "tail", .. }),
            "{err}"
        );
        r.handle_compacted(r.encode_state(), 2, 0);
        assert_eq!(r.tail_bytes(), 0);
        r.handle_op(ConnId(1), None, &u3).unwrap();
    }

    #[test]
    fn remote_gaps_ask_for_catch_up_and_fill_in_order() {
        let mut r = room();
        let mut a = Document::new(1);
        let u1 = a.insert(0, "ab").unwrap();
        let u2 = a.insert(2, "cd").unwrap();
        r.handle_remote(2, &u2).unwrap();
        assert_eq!(drain(&mut r), vec![RoomEvent::CatchUp { after: 0 }]);
        r.handle_remote(1, &u1).unwrap();
        r.handle_remote(2, &u2).unwrap();
        assert_eq!(r.seq(), 2);
        assert_eq!(r.text(), "abcd");
        let seqs: Vec<u64> = drain(&mut r)
            .into_iter()
            .map(|e| match e {
                RoomEvent::Broadcast { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn commit_failure_takes_the_batch_back_out() {
        let mut r = room();
        let mut a = Document::new(1);
        let u = a.insert(0, "lost").unwrap();
        r.handle_op(ConnId(3), Some("a-1".into()), &u).unwrap();
        r.take_batch().unwrap();
        assert_eq!(r.handle_commit_failed(), vec![ConnId(3)]);
        assert_eq!(r.text(), "");
        // The resend is new again and gets staged.
        r.handle_op(ConnId(3), Some("a-1".into()), &u).unwrap();
        assert_eq!(r.take_batch().unwrap().len(), 1);
    }

    #[test]
    fn commit_failure_drops_ops_built_on_the_batch() {
        let mut r = room();
        let mut a = Document::new(1);
        let u1 = a.insert(0, "ab").unwrap();
        let u2 = a.insert(2, "cd").unwrap(); // builds on u1
        r.handle_op(ConnId(1), Some("a-1".into()), &u1).unwrap();
        r.take_batch().unwrap();
        r.handle_op(ConnId(1), Some("a-2".into()), &u2).unwrap();
        assert_eq!(r.handle_commit_failed(), vec![ConnId(1)]);
        assert_eq!(r.text(), "");
        assert!(!r.document().has_pending());
        assert!(
            r.take_batch().is_none(),
            "a-2 cannot be committed without a-1"
        );
        assert!(
            !drain(&mut r)
                .iter()
                .any(|e| matches!(e, RoomEvent::Ack { .. })),
            "nothing acked"
        );
    }

    #[test]
    fn commit_failure_unacks_duplicates_of_the_batch() {
        let mut r = room();
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        let x = a.insert(0, "x").unwrap();
        let s = b.insert(0, "s").unwrap();
        r.handle_op(ConnId(1), Some("a-1".into()), &x).unwrap();
        r.take_batch().unwrap();
        r.handle_op(ConnId(2), Some("b-1".into()), &s).unwrap();
        // The same content again (a resend after a reconnect): it waits for the staged op.
        r.handle_op(ConnId(3), Some("a-2".into()), &x).unwrap();
        let mut told = r.handle_commit_failed();
        told.sort();
        assert_eq!(
            told,
            vec![ConnId(1), ConnId(3)],
            "a-2 duplicated the failed batch"
        );
        r.take_batch().unwrap();
        r.handle_committed(1).unwrap();
        let acked: Vec<String> = drain(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                RoomEvent::Ack { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(
            acked,
            vec!["b-1".to_owned()],
            "x is not durable: a-2 is not acked"
        );
        assert_eq!(r.text(), "s");
    }

    #[test]
    fn a_resend_with_altered_repeats_logs_only_what_is_new() {
        let mut r = room();
        let mut a = Document::new(1);
        let u1 = a.insert(0, "sum ").unwrap(); // 1#0..4
        let u2 = a.insert(4, "∑").unwrap(); // 1#4
        for (seq, (id, u)) in [("a-1", &u1), ("a-2", &u2)].into_iter().enumerate() {
            r.handle_op(ConnId(1), Some(id.into()), u).unwrap();
            r.take_batch().unwrap();
            r.handle_committed(seq as u64 + 1).unwrap();
        }
        // Client 1's ids again, as one block with other content, and one new character.
        let forged = Document::new(1).insert(0, "sum ∾!").unwrap(); // 1#0..6
        r.handle_op(ConnId(2), Some("b-1".into()), &forged).unwrap();
        assert_eq!(r.text(), "sum ∑!", "the repeats are known, only 1#5 is new");
        let batch = r.take_batch().unwrap();
        r.handle_committed(3).unwrap();
        let log: Vec<(u64, Vec<u8>)> = vec![(1, u1), (2, u2), (3, batch[0].clone())];
        let loaded = RoomState::load(None, 0, &log, CompactionPolicy::default(), 0).unwrap();
        assert_eq!(
            loaded.text(),
            "sum ∑!",
            "the log holds what the room applied"
        );
        let updates: Vec<&[u8]> = log.iter().map(|(_, u)| u.as_slice()).collect();
        let folded = Document::from_update(3, &fold(None, &updates).unwrap()).unwrap();
        assert_eq!(folded.text(), "sum ∑!");
    }

    #[test]
    fn load_and_fold_agree() {
        let mut a = Document::new(1);
        let ops: Vec<(u64, Vec<u8>)> = (0..10)
            .map(|i| (i + 1, a.insert(i as u32, "x").unwrap()))
            .collect();
        let r = RoomState::load::<Vec<u8>>(None, 0, &ops, CompactionPolicy::default(), 0).unwrap();
        assert_eq!(r.text(), "xxxxxxxxxx");
        let updates: Vec<&[u8]> = ops[..5].iter().map(|(_, u)| u.as_slice()).collect();
        let snap = fold(None, &updates).unwrap();
        let r2 =
            RoomState::load(Some(&snap), 5, &ops[5..], CompactionPolicy::default(), 0).unwrap();
        assert_eq!(r2.encode_state(), r.encode_state());
        assert_eq!(r2.seq(), 10);
        let gap = RoomState::load(Some(&snap), 5, &ops[6..], CompactionPolicy::default(), 0);
        assert!(matches!(gap, Err(EngineError::SeqOutOfOrder { .. })));
    }

    #[test]
    fn compaction_policy() {
        let mut r = RoomState::new(
            CompactionPolicy {
                max_ops: 3,
                max_age_ms: 1000,
            },
            0,
        );
        assert!(!r.compaction_due(10_000), "nothing to compact");
        let mut a = Document::new(1);
        for i in 0..3u64 {
            let u = a.insert(0, "x").unwrap();
            r.handle_remote(i + 1, &u).unwrap();
            if i < 2 {
                assert!(!r.compaction_due(10) && r.compaction_due(1000));
            }
        }
        assert!(r.compaction_due(10));
        r.handle_compacted(r.encode_state(), 3, 10);
        assert!(!r.compaction_due(2000));
    }

    /// A room whose compaction keeps failing waits longer each time instead of starting a new
    /// fold every tick; one success resets the wait.
    #[test]
    fn failed_compactions_back_off() {
        let mut r = RoomState::new(
            CompactionPolicy {
                max_ops: 1,
                max_age_ms: 1000,
            },
            0,
        );
        let mut a = Document::new(1);
        r.handle_remote(1, &a.insert(0, "x").unwrap()).unwrap();
        assert!(r.compaction_due(0));
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            r.handle_compaction_failed(now);
            let retry = r.compaction_retry_at().unwrap();
            assert!(!r.compaction_due(retry - 1), "due before its retry time");
            assert!(r.compaction_due(retry));
            waits.push(retry - now);
            now = retry;
        }
        assert_eq!(
            waits,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        // A partial fold (up to seq 1 of 2) ends the backoff and leaves the room due.
        r.handle_remote(2, &a.insert(0, "y").unwrap()).unwrap();
        let partial = fold(Some(&r.checkpoint.clone()), &[&r.tail[0].1]).unwrap();
        r.handle_compacted(partial, 1, now);
        assert_eq!(r.compaction_retry_at(), None);
        assert!(r.compaction_due(now), "the rest of the tail is still due");
        assert_eq!(r.tail_bytes(), r.tail[0].1.len());
        // Nothing to fold keeps the checkpoint (seq 1) and restarts the age clock.
        r.handle_compaction_skipped(now);
        assert_eq!(r.checkpoint_seq, 1);
    }
}

#[cfg(test)]
mod multi_instance_tests {
    use super::*;

    fn drain(room: &mut RoomState) -> Vec<RoomEvent> {
        std::iter::from_fn(|| room.poll_event()).collect()
    }

    /// Instance A commits seq 1; before its commit reply, B's seq 2 reveals a gap and A's
    /// catch-up reads back both seqs. The late commit reply must still ack, and the room must
    /// keep committing afterwards.
    #[test]
    fn commit_reply_after_catch_up_still_acks_and_unblocks() {
        let mut a = RoomState::new(CompactionPolicy::default(), 0);
        let mut alice = Document::new(1);
        let mut bob = Document::new(2);
        let mine = alice.insert(0, "a").unwrap();
        let theirs = bob.insert(0, "b").unwrap();
        a.handle_op(ConnId(1), Some("a-1".into()), &mine).unwrap();
        a.take_batch().unwrap();
        a.handle_remote(2, &theirs).unwrap();
        assert!(drain(&mut a).contains(&RoomEvent::CatchUp { after: 0 }));
        a.handle_remote(1, &mine).unwrap();
        a.handle_remote(2, &theirs).unwrap();
        assert_eq!(a.seq(), 2);
        drain(&mut a);
        a.handle_committed(1).unwrap();
        let events = drain(&mut a);
        assert!(events.contains(&RoomEvent::Ack {
            conn: ConnId(1),
            id: "a-1".into(),
            seq: 1
        }));
        assert_eq!(a.seq(), 2);
        let next = alice.insert(1, "c").unwrap();
        a.handle_op(ConnId(1), Some("a-2".into()), &next).unwrap();
        assert_eq!(
            a.take_batch().map(|b| b.len()),
            Some(1),
            "the room still commits"
        );
        a.handle_committed(3).unwrap();
        assert_eq!(a.seq(), 3);
        assert_eq!(a.text().chars().filter(|c| *c == 'a').count(), 1);
    }

    /// The reply comes while a catch-up copy of the same seq waits in `ahead`.
    #[test]
    fn commit_reply_replaces_a_waiting_catch_up_copy() {
        let mut a = RoomState::new(CompactionPolicy::default(), 0);
        let mut bob = Document::new(2);
        let mut alice = Document::new(1);
        let b1 = bob.insert(0, "b").unwrap();
        let mine = alice.insert(0, "a").unwrap();
        a.handle_op(ConnId(1), Some("a-1".into()), &mine).unwrap();
        a.take_batch().unwrap();
        // seq 1 (bob's) is missing; our op comes back from a catch-up as seq 2 first.
        a.handle_remote(2, &mine).unwrap();
        a.handle_committed(2).unwrap();
        a.handle_remote(1, &b1).unwrap();
        assert_eq!(a.seq(), 2);
        let acks = drain(&mut a)
            .into_iter()
            .filter(|e| matches!(e, RoomEvent::Ack { .. }))
            .count();
        assert_eq!(acks, 1);
        let rebuilt = RoomState::load(
            None,
            0,
            &[(1, b1.clone()), (2, mine.clone())],
            CompactionPolicy::default(),
            0,
        )
        .unwrap();
        assert_eq!(rebuilt.encode_state(), a.encode_state());
    }
}
