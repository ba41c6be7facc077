//! Convergence properties: replicas that have seen the same updates, in any order, with
//! duplicates and batching, hold the same document, down to the bytes.
//!
//! - `convergence_property`: 3-5 [`Document`]s edit concurrently in rounds (edit, partial
//!   exchange, edit, ...), colliding at offset 0, at the end and at a shared offset, with emoji,
//!   flags and CJK text. Updates arrive shuffled, duplicated, before their dependencies (yrs
//!   holds those pending), one at a time or merged through [`Document::apply_updates`].
//! - `convergence_through_room`: the same edits go through a [`RoomState`]: out-of-order ops are
//!   refused with `MissingDependencies` and change nothing, everything is eventually accepted
//!   in some order, committed in group commits and broadcast back; the room, every client and a
//!   room rebuilt from the committed log (by [`RoomState::load`] and by [`room::fold`]) agree
//!   byte for byte, and the log holds nothing twice.
//!
//! "Byte for byte" is on the canonical encoding (see [`canonical_state`]): yrs encodes equal
//! documents as different bytes when their blocks are split differently, which happens for
//! equal replicas in about one iteration in ten. Both tests print how often.
//!
//! Every iteration has its own seed; a failure prints it with the command that replays it.

use std::collections::{HashMap, HashSet};

use concord_engine::doc::decode_state_vector;
use concord_engine::room::{self, CompactionPolicy, ConnId, RoomEvent, RoomState};
use concord_engine::{Document, EngineError};
use concord_testkit::edits::{random_edit, EditConfig};
use concord_testkit::seed::{for_each_seed, iterations};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const DOCS_SEED: u64 = 0xC0_4C0D_0001;
const ROOM_SEED: u64 = 0xC0_4C0D_1001;

/// Distinct, random yrs client ids (53-bit, as Yjs uses), so tie-breaks between concurrent
/// inserts at the same position go both ways.
fn client_ids(rng: &mut SmallRng, n: usize) -> Vec<u64> {
    let mut ids = HashSet::new();
    while ids.len() < n {
        ids.insert(rng.gen_range(1..(1u64 << 53)));
    }
    let mut ids: Vec<u64> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.shuffle(rng);
    ids
}

/// One random local edit on `doc`; returns its update.
fn edit(rng: &mut SmallRng, doc: &mut Document, config: &EditConfig) -> Vec<u8> {
    let e = random_edit(rng, &doc.text(), config);
    doc.replace(e.index, e.delete, &e.insert)
        .unwrap_or_else(|err| panic!("edit {e:?} on {:?}: {err}", doc.text()))
}

/// Applies `updates` to `doc`, one at a time or merged in random chunks.
fn deliver(rng: &mut SmallRng, doc: &mut Document, updates: &[&[u8]]) {
    let mut rest = updates;
    while !rest.is_empty() {
        let n = if rng.gen_bool(0.5) {
            1
        } else {
            rng.gen_range(1..=rest.len().min(6))
        };
        let (chunk, tail) = rest.split_at(n);
        let result = if n == 1 {
            doc.apply_update(chunk[0])
        } else {
            doc.apply_updates(chunk)
        };
        result.unwrap_or_else(|e| panic!("a valid update was refused: {e}"));
        rest = tail;
    }
}

/// `doc`'s full state as yrs encodes it after loading it in one transaction.
///
/// yrs does not encode equal documents as equal bytes: when it integrates an item whose origin
/// lies inside a block, it splits that block and does not merge the halves again, so replicas
/// that saw the same updates in different orders (or one room applying ops one at a time and
/// another loading them at once) can hold the same items in differently split blocks. Loading
/// the state into a fresh document in one transaction merges every mergeable neighbour, which
/// makes the bytes canonical; the tests compare those, and count how often the raw bytes differ.
pub(crate) fn canonical_state(state: &[u8]) -> Vec<u8> {
    // Loading once and encoding is what `Document::canonical_state` does.
    Document::from_update(1, state)
        .expect("a full state loads")
        .encode_state_as_update(None)
        .unwrap()
}

/// Asserts that `a` and `b` (full-state updates) are the same document, byte for byte once
/// canonical; `what` names them for the failure message. Returns whether the raw bytes differed.
pub(crate) fn assert_same_state(a: &[u8], b: &[u8], what: &str) -> bool {
    if a == b {
        return false;
    }
    assert!(
        canonical_state(a) == canonical_state(b),
        "{what}: different states, even once canonical"
    );
    true
}

/// Asserts that every document is the same: text, state vector, and encoded state. Returns
/// how many replicas differed from replica 0 in raw bytes only.
fn assert_converged(docs: &[Document]) -> usize {
    let first = &docs[0];
    let state = first.encode_state_as_update(None).unwrap();
    let mut raw_differences = 0;
    for (i, doc) in docs.iter().enumerate() {
        assert!(
            !doc.has_pending(),
            "replica {i} still holds pending updates"
        );
        assert_eq!(
            doc.text(),
            first.text(),
            "replica {i} text differs from replica 0"
        );
        // Compared decoded: the v1 encoding lists clients in hash-map order, which differs
        // between replicas holding the same state vector.
        assert_eq!(
            decode_state_vector(&doc.state_vector()).unwrap(),
            decode_state_vector(&first.state_vector()).unwrap(),
            "replica {i} state vector differs"
        );
        raw_differences += usize::from(assert_same_state(
            &doc.encode_state_as_update(None).unwrap(),
            &state,
            &format!("replica {i} vs replica 0"),
        ));
    }
    raw_differences
}

#[test]
fn convergence_property() {
    let (mut runs, mut updates, mut raw) = (0, 0, 0);
    for_each_seed(
        "--release -p concord-engine --test engine convergence_property",
        DOCS_SEED,
        iterations(1000),
        |seed| {
            let (made, raw_differences) = docs_iteration(seed);
            runs += 1;
            updates += made;
            raw += usize::from(raw_differences > 0);
        },
    );
    eprintln!(
        "convergence_property: {runs} iterations, {updates} updates; equal replicas had \
         different raw encodings in {raw} iterations (canonical encodings always equal)"
    );
}

/// One iteration; returns how many updates were made and how many replicas differed from
/// replica 0 in raw encoding only.
fn docs_iteration(seed: u64) -> (usize, usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(3..=5);
    let ids = client_ids(&mut rng, n);
    let mut docs: Vec<Document> = ids.iter().map(|&id| Document::new(id)).collect();
    // Every update made so far, and which replica has seen which.
    let mut updates: Vec<Vec<u8>> = Vec::new();
    let mut seen: Vec<Vec<bool>> = vec![Vec::new(); n];
    let rounds = rng.gen_range(2..=5);
    for round in 0..=rounds {
        let last = round == rounds;
        if !last {
            let config = EditConfig {
                hot: rng.gen_range(0..24),
                raw_offsets: 0.02,
                max_len: 0,
            };
            for (r, doc) in docs.iter_mut().enumerate() {
                for _ in 0..rng.gen_range(0..=6) {
                    updates.push(edit(&mut rng, doc, &config));
                    for (s, row) in seen.iter_mut().enumerate() {
                        row.push(s == r);
                    }
                }
            }
        }
        // Exchange: partial in the middle rounds, everything at the end. Duplicates of what a
        // replica has seen are mixed in, and order is random, so dependencies arrive late.
        for r in 0..n {
            let mut batch: Vec<usize> = (0..updates.len())
                .filter(|&i| {
                    if seen[r][i] {
                        rng.gen_bool(0.1)
                    } else {
                        last || rng.gen_bool(0.5)
                    }
                })
                .collect();
            if batch.is_empty() {
                continue;
            }
            let dups: Vec<usize> = batch
                .iter()
                .copied()
                .filter(|_| rng.gen_bool(0.15))
                .collect();
            batch.extend(dups);
            batch.shuffle(&mut rng);
            let bytes: Vec<&[u8]> = batch.iter().map(|&i| updates[i].as_slice()).collect();
            deliver(&mut rng, &mut docs[r], &bytes);
            for i in batch {
                seen[r][i] = true;
            }
        }
    }
    let raw_differences = assert_converged(&docs);
    // Canonical means stable: loading the canonical state again changes nothing.
    let canonical = canonical_state(&docs[0].encode_state_as_update(None).unwrap());
    assert!(
        canonical_state(&canonical) == canonical,
        "the canonical encoding is not stable"
    );
    (updates.len(), raw_differences)
}

/// One client of the room property: a document and the ops it made.
struct Client {
    doc: Document,
    conn: ConnId,
    /// Broadcast updates not yet delivered to this client.
    inbox: Vec<Vec<u8>>,
    next_op: u64,
}

/// An op on its way to the room.
#[derive(Clone)]
struct Op {
    client: usize,
    id: String,
    update: Vec<u8>,
}

#[test]
fn convergence_through_room() {
    let (mut runs, mut ops, mut refused, mut raw) = (0, 0, 0, 0);
    for_each_seed(
        "--release -p concord-engine --test engine convergence_through_room",
        ROOM_SEED,
        iterations(1000),
        |seed| {
            let stats = room_iteration(seed);
            runs += 1;
            ops += stats.accepted;
            refused += stats.refused;
            raw += usize::from(stats.raw_differences > 0);
        },
    );
    eprintln!(
        "convergence_through_room: {runs} iterations, {ops} ops accepted, {refused} refused as \
         missing dependencies; equal states had different raw encodings in {raw} iterations"
    );
}

/// What one room iteration did.
struct RoomStats {
    accepted: usize,
    refused: usize,
    raw_differences: usize,
}

struct RoomRun {
    rng: SmallRng,
    room: RoomState,
    clients: Vec<Client>,
    /// Ops made and not yet accepted by the room.
    outbox: Vec<Op>,
    /// Ops the room accepted, by id.
    accepted: HashMap<String, Op>,
    /// Every committed update, with its seq: the store's log.
    log: Vec<(u64, Vec<u8>)>,
    /// Op ids acked, with the seq of the ack.
    acks: HashMap<String, u64>,
    refused: usize,
}

impl RoomRun {
    /// Offers a random selection of the outbox (random order, so some arrive before what they
    /// build on) plus duplicates of accepted ops, under their own ids or merged under new ones.
    fn offer(&mut self, everything: bool) {
        let mut picks: Vec<Op> = self
            .outbox
            .iter()
            .filter(|_| everything || self.rng.gen_bool(0.5))
            .cloned()
            .collect();
        picks.shuffle(&mut self.rng);
        if !self.accepted.is_empty() {
            let mut old: Vec<Op> = self.accepted.values().cloned().collect();
            old.sort_by(|a, b| a.id.cmp(&b.id));
            for _ in 0..self.rng.gen_range(0..3) {
                let op = old[self.rng.gen_range(0..old.len())].clone();
                if self.rng.gen_bool(0.5) {
                    picks.push(op);
                } else {
                    // A client resending what it has as one merged op under a fresh id.
                    let c = op.client;
                    let mine: Vec<&[u8]> = old
                        .iter()
                        .filter(|o| o.client == c)
                        .map(|o| o.update.as_slice())
                        .collect();
                    let update = concord_engine::doc::merge_updates(&mine).unwrap();
                    let id = self.new_id(c);
                    picks.push(Op {
                        client: c,
                        id,
                        update,
                    });
                }
            }
        }
        for op in picks {
            self.submit(op);
            if self.rng.gen_bool(0.2) {
                self.maybe_commit();
            }
        }
    }

    fn new_id(&mut self, client: usize) -> String {
        let c = &mut self.clients[client];
        c.next_op += 1;
        format!("c{client}-{}", c.next_op)
    }

    fn submit(&mut self, op: Op) {
        let before = self.room.encode_state();
        let (seq, uncommitted) = (self.room.seq(), self.room.uncommitted());
        let conn = self.clients[op.client].conn;
        match self.room.handle_op(conn, Some(op.id.clone()), &op.update) {
            Ok(()) => {
                self.outbox.retain(|o| o.id != op.id);
                self.accepted.insert(op.id.clone(), op);
            }
            Err(EngineError::MissingDependencies) => {
                self.refused += 1;
                assert!(
                    self.room.encode_state() == before,
                    "a refused op changed the room's state"
                );
                assert_eq!(self.room.seq(), seq, "a refused op changed the seq");
                assert_eq!(
                    self.room.uncommitted(),
                    uncommitted,
                    "a refused op was staged"
                );
                if !self.outbox.iter().any(|o| o.id == op.id) && !self.accepted.contains_key(&op.id)
                {
                    // A merged resend the room refused: the client would resend again later.
                    self.outbox.push(op);
                }
            }
            Err(e) => panic!("op {} refused with {e}", op.id),
        }
        self.drain_events();
    }

    /// Commits what is staged, if no commit is in flight: the store assigns the next seqs.
    fn maybe_commit(&mut self) {
        if let Some(batch) = self.room.take_batch() {
            let first = self.room.seq() + 1;
            // Sometimes the commit takes a while and more ops arrive meanwhile.
            if self.rng.gen_bool(0.3) && !self.outbox.is_empty() {
                let op = self.outbox[self.rng.gen_range(0..self.outbox.len())].clone();
                self.submit(op);
                assert!(self.room.take_batch().is_none(), "one commit at a time");
            }
            self.room.handle_committed(first).unwrap();
            for (i, update) in batch.into_iter().enumerate() {
                self.log.push((first + i as u64, update));
            }
            self.drain_events();
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.room.poll_event() {
            match event {
                RoomEvent::Ack { conn, id, seq } => {
                    let op = self
                        .accepted
                        .get(&id)
                        .unwrap_or_else(|| panic!("ack for {id}, which the room never accepted"));
                    assert_eq!(self.clients[op.client].conn, conn, "ack to the wrong conn");
                    assert!(seq <= self.room.seq(), "ack of {id} beyond the durable seq");
                    self.acks.insert(id, seq);
                }
                RoomEvent::Broadcast { update, origin, .. } => {
                    for c in self.clients.iter_mut() {
                        if Some(c.conn) != origin {
                            c.inbox.push(update.clone());
                        }
                    }
                }
                RoomEvent::CatchUp { after } => panic!("catch-up after {after} with one room"),
                // One instance: no hub to tell.
                RoomEvent::Committed { .. } => {}
            }
        }
    }

    /// Delivers a random part of each client's inbox (all of it when `everything`).
    fn broadcast_to_clients(&mut self, everything: bool) {
        for c in self.clients.iter_mut() {
            let take = if everything {
                c.inbox.len()
            } else {
                self.rng.gen_range(0..=c.inbox.len())
            };
            let now: Vec<Vec<u8>> = c.inbox.drain(..take).collect();
            let bytes: Vec<&[u8]> = now.iter().map(Vec::as_slice).collect();
            deliver(&mut self.rng, &mut c.doc, &bytes);
        }
    }
}

fn room_iteration(seed: u64) -> RoomStats {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(3..=5);
    let ids = client_ids(&mut rng, n);
    let clients = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Client {
            doc: Document::new(id),
            conn: ConnId(100 + i as u64),
            inbox: Vec::new(),
            next_op: 0,
        })
        .collect();
    let mut run = RoomRun {
        rng,
        room: RoomState::new(CompactionPolicy::default(), 0),
        clients,
        outbox: Vec::new(),
        accepted: HashMap::new(),
        log: Vec::new(),
        acks: HashMap::new(),
        refused: 0,
    };
    let rounds = run.rng.gen_range(2..=6);
    for _ in 0..rounds {
        let config = EditConfig {
            hot: run.rng.gen_range(0..24),
            raw_offsets: 0.02,
            max_len: 0,
        };
        for c in 0..n {
            for _ in 0..run.rng.gen_range(0..=5) {
                let update = edit(&mut run.rng, &mut run.clients[c].doc, &config);
                let id = run.new_id(c);
                run.outbox.push(Op {
                    client: c,
                    id,
                    update,
                });
            }
            // Now and then a client passes an update straight to another (peer to peer), so
            // ops can also depend on another client's op the room has not seen.
            if run.rng.gen_bool(0.2) {
                if let Some(op) = run.outbox.iter().rev().find(|o| o.client != c).cloned() {
                    run.clients[c].doc.apply_update(&op.update).unwrap();
                }
            }
        }
        run.offer(false);
        if run.rng.gen_bool(0.7) {
            run.maybe_commit();
        }
        run.broadcast_to_clients(false);
    }
    // The end: everything is offered until the room has accepted all of it (each pass accepts
    // at least the ops whose dependencies are in), then committed and broadcast.
    let mut passes = 0;
    while !run.outbox.is_empty() {
        passes += 1;
        assert!(
            passes < 1000,
            "the room never accepted {} ops",
            run.outbox.len()
        );
        run.offer(true);
        run.maybe_commit();
    }
    while run.room.uncommitted() > 0 {
        run.maybe_commit();
    }
    run.broadcast_to_clients(true);

    // Every accepted op was acked, at a seq where it is durable.
    for id in run.accepted.keys() {
        assert!(
            run.acks.contains_key(id),
            "op {id} was accepted but never acked"
        );
    }
    let state = run.room.encode_state();
    assert!(
        !run.room.document().has_pending(),
        "the room holds pending updates"
    );
    let docs: Vec<Document> = run.clients.drain(..).map(|c| c.doc).collect();
    let mut raw_differences = assert_converged(&docs);
    assert_eq!(docs[0].text(), run.room.text(), "clients and room differ");
    let client_state = docs[0].encode_state_as_update(None).unwrap();
    raw_differences += usize::from(assert_same_state(&client_state, &state, "client vs room"));
    // The log rebuilds the room, by load and by fold, and from a snapshot plus a tail.
    let policy = CompactionPolicy::default();
    let loaded = RoomState::load::<Vec<u8>>(None, 0, &run.log, policy, 0).expect("the log loads");
    assert_eq!(loaded.seq(), run.room.seq());
    let loaded = loaded.encode_state();
    raw_differences += usize::from(assert_same_state(&loaded, &state, "load(log) vs room"));
    let updates: Vec<&[u8]> = run.log.iter().map(|(_, u)| u.as_slice()).collect();
    let folded = room::fold(None, &updates).unwrap();
    raw_differences += usize::from(assert_same_state(&folded, &state, "fold(log) vs room"));
    let cut = run.rng.gen_range(0..=run.log.len());
    let snapshot = room::fold(None, &updates[..cut]).unwrap();
    let resumed = RoomState::load(Some(&snapshot), cut as u64, &run.log[cut..], policy, 0)
        .expect("snapshot and tail load")
        .encode_state();
    raw_differences += usize::from(assert_same_state(&resumed, &state, "snapshot+tail vs room"));
    // Nothing was logged twice: replayed in order, every entry adds something.
    let mut replay = Document::new(1);
    for (seq, update) in &run.log {
        let applied = replay.apply_update(update).unwrap();
        assert!(
            applied.changed,
            "log entry {seq} adds nothing: logged twice"
        );
        assert!(!applied.pending, "log entry {seq} depends on a later one");
    }
    RoomStats {
        accepted: run.accepted.len(),
        refused: run.refused,
        raw_differences,
    }
}
