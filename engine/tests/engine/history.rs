//! History property: for random multi-client histories committed through a room, with
//! compactions (checkpoints) at random points and restarts (the room reloaded from its store)
//! in between, the document rebuilt at every seq from the nearest checkpoint plus the ops
//! after it equals the document replayed from nothing with exactly the ops up to that seq.
//! And restoring any seq from the head gives that seq's text back.

use concord_engine::history::{self, Past};
use concord_engine::{CompactionPolicy, ConnId, Document, RoomEvent, RoomState};
use concord_testkit::edits::{random_edit, EditConfig};
use concord_testkit::seed::{for_each_seed, iterations};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x4157_0000;

/// The "store": every committed op, and checkpoints (seq, full state) from compactions.
#[derive(Default)]
struct Log {
    ops: Vec<Vec<u8>>,
    checkpoints: Vec<(u64, Vec<u8>)>,
}

impl Log {
    /// The checkpoint at or below `seq` and the ops after it up to `seq`.
    fn past(&self, seq: u64) -> Past {
        let cp = self.checkpoints.iter().rev().find(|(s, _)| *s <= seq);
        let from = cp.map_or(0, |(s, _)| *s) as usize;
        Past::build(
            cp.map(|(_, state)| state.as_slice()),
            &self.ops[from..seq as usize],
            seq,
        )
        .expect("history rebuilds")
    }
}

fn iteration(seed: u64) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut log = Log::default();
    let mut room = RoomState::new(CompactionPolicy::default(), 0);
    let clients = rng.gen_range(2..=4);
    let mut docs: Vec<Document> = (0..clients)
        .map(|i| Document::new(100 + i as u64))
        .collect();
    let steps = rng.gen_range(10..60);
    for _ in 0..steps {
        // A client edits its replica (which may lag behind the room) and sends the update.
        let c = rng.gen_range(0..clients);
        let text = docs[c].text();
        let edit = random_edit(&mut rng, &text, &EditConfig::default());
        let update = docs[c]
            .replace(edit.index, edit.delete, &edit.insert)
            .expect("edit");
        if room.handle_op(ConnId(c as u64), None, &update).is_ok() {
            if let Some(batch) = room.take_batch() {
                let first = room.seq() + 1;
                log.ops.extend(batch);
                room.handle_committed(first).expect("commit");
            }
        }
        while let Some(event) = room.poll_event() {
            if let RoomEvent::Broadcast { update, origin, .. } = event {
                for (i, d) in docs.iter_mut().enumerate() {
                    if Some(ConnId(i as u64)) != origin && rng.gen_bool(0.8) {
                        let _ = d.apply_update(&update);
                    }
                }
            }
        }
        // Catch every replica up now and then (late deliveries are fine for a CRDT).
        if rng.gen_bool(0.2) {
            let state = room.encode_state();
            for d in docs.iter_mut() {
                d.apply_update(&state).expect("catch up");
            }
        }
        // A compaction writes a checkpoint; a restart reloads the room from its store.
        if rng.gen_bool(0.15) && !log.ops.is_empty() {
            let seq = log.ops.len() as u64;
            let from = log.checkpoints.last().map_or(0, |(s, _)| *s);
            let base = log.checkpoints.last().map(|(_, s)| s.as_slice());
            let state = concord_engine::room::fold(base, &log.ops[from as usize..]).expect("fold");
            log.checkpoints.push((seq, state));
        }
        if rng.gen_bool(0.1) {
            let (cp_seq, cp) = log.checkpoints.last().cloned().unwrap_or_default();
            let tail: Vec<(u64, Vec<u8>)> = log.ops[cp_seq as usize..]
                .iter()
                .enumerate()
                .map(|(i, u)| (cp_seq + 1 + i as u64, u.clone()))
                .collect();
            room = RoomState::load(
                (cp_seq > 0).then_some(cp.as_slice()),
                cp_seq,
                &tail,
                CompactionPolicy::default(),
                0,
            )
            .expect("reload");
        }
    }

    let head = log.ops.len() as u64;
    let at_head = log.past(head);
    for seq in 0..=head {
        let mut replay = Document::new(1);
        replay
            .apply_updates(&log.ops[..seq as usize])
            .expect("replay");
        let past = log.past(seq);
        assert_eq!(past.text(), replay.text(), "text at seq {seq}");
        let mut rebuilt = Document::new(2);
        rebuilt.apply_update(&past.state()).expect("state");
        assert_eq!(
            rebuilt.canonical_state().unwrap(),
            replay.canonical_state().unwrap(),
            "state at seq {seq}"
        );
        // Restoring seq from the head brings its text back.
        let mut head_doc = log.past(seq);
        let later: Vec<&[u8]> = log.ops[seq as usize..].iter().map(Vec::as_slice).collect();
        let target = head_doc.snapshot();
        head_doc.advance(&later, head).expect("advance");
        if let Some(update) = history::restore_update(&head_doc, &target, 999).expect("restore") {
            let mut doc = Document::from_update(3, &at_head.state()).unwrap();
            doc.apply_update(&update).expect("restore applies");
            assert_eq!(doc.text(), replay.text(), "restore of seq {seq}");
        } else {
            assert_eq!(at_head.text(), replay.text(), "nothing to restore at {seq}");
        }
    }
    head as usize
}

#[test]
fn history_at_every_seq_equals_replay() {
    let mut runs = 0;
    let mut ops = 0;
    for_each_seed(
        "--release -p concord-engine --test engine history_at_every_seq",
        SEED,
        iterations(200),
        |seed| {
            ops += iteration(seed);
            runs += 1;
        },
    );
    eprintln!("history_at_every_seq_equals_replay: {runs} histories, {ops} committed ops");
    assert!(ops > runs, "histories too short");
}
