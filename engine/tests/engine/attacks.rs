//! Attacks found on the release server, each as the bytes an attacker sent, against a
//! [`RoomState`]: they are rejected before yrs integrates anything, the room is unchanged and
//! was not rebuilt, and honest updates of the same density still go in.
//!
//! Timings are printed for the report, never asserted.

use std::time::Instant;

use concord_engine::room::{ConnId, RoomState};
use concord_engine::{CompactionPolicy, Document, EngineError};
use concord_testkit::lib0::forged_blocks;
use concord_testkit::traces;

/// A room with some honest content, committed.
fn room_with_content() -> RoomState {
    let mut room = RoomState::new(CompactionPolicy::default(), 0);
    let mut w = Document::new(77);
    let u = w.insert(0, "honest text").unwrap();
    room.handle_op(ConnId(1), Some("w-1".into()), &u).unwrap();
    room.take_batch().unwrap();
    room.handle_committed(1).unwrap();
    while room.poll_event().is_some() {}
    room
}

fn assert_rejected_unchanged(room: &mut RoomState, update: &[u8], what: &str) -> EngineError {
    let before = room.encode_state();
    let (seq, rebuilds) = (room.seq(), room.rebuilds());
    let started = Instant::now();
    let err = room
        .handle_op(ConnId(666), Some("evil".into()), update)
        .expect_err(what);
    eprintln!(
        "{what}: {} bytes rejected as {} in {:?}",
        update.len(),
        err.code(),
        started.elapsed()
    );
    assert_eq!(room.encode_state(), before, "{what}: the room changed");
    assert_eq!(room.seq(), seq);
    assert_eq!(room.uncommitted(), 0, "{what}: staged");
    assert_eq!(room.rebuilds(), rebuilds, "{what}: the room was rebuilt");
    err
}

/// ~1M and ~10k deleted items, all without origins in the root text, from a lower and then a
/// higher client: each item of the second scans every item of the first in yrs's conflict
/// resolution. Both are rejected by the bounds walk.
#[test]
fn two_forged_sibling_floods_are_rejected() {
    let mut room = room_with_content();
    for (client, n) in [(1i64, 1_000_000u64), (2, 10_000), (3, 1_000), (4, 2)] {
        for info in [1u8, 4] {
            // 1: deleted items; 4: empty strings.
            let forged = forged_blocks(client, info, n);
            assert!(forged.len() < 40, "{} bytes", forged.len());
            let what = format!("forged info {info}: {n} items of client {client}");
            let err = assert_rejected_unchanged(&mut room, &forged, &what);
            assert!(
                matches!(err, EngineError::InvalidUpdate { .. }),
                "{what}: {err}"
            );
        }
    }
    assert_eq!(room.text(), "honest text");
}

/// Runs of GC blocks cost no input bytes and about 40 bytes of memory each, kept in the
/// document: 40 updates of 30 bytes declaring a million each held 1.6 GB. Two in a row are
/// refused, whatever the count, so such blocks cost input bytes like everything else.
#[test]
fn forged_gc_runs_are_rejected() {
    let mut room = room_with_content();
    for (client, n) in [(1i64, 1_000_000u64), (2, 1_000), (3, 2)] {
        let forged = forged_blocks(client, 0, n);
        let what = format!("{n} GC blocks of client {client}");
        let err = assert_rejected_unchanged(&mut room, &forged, &what);
        assert!(
            err.to_string().contains("consecutive GC or skip blocks"),
            "{what}: {err}"
        );
    }
    // One GC block is an ordinary (if odd) update.
    room.handle_op(concord_engine::ConnId(1), None, &forged_blocks(4, 0, 1))
        .expect("a single GC block");
    assert_eq!(room.text(), "honest text");
}

/// The same flood with distinct right origins (typing backwards at the start, the densest
/// honest shape, as a forger would write it): over the per-position allowance.
#[test]
fn a_forged_backward_run_over_the_allowance_is_rejected() {
    let mut room = room_with_content();
    let mut d = Document::new(5);
    for _ in 0..40_000 {
        d.replace_silent(0, 0, "x").unwrap();
    }
    d.delete(0, 40_000).unwrap();
    let update = d.encode_state_as_update(None).unwrap();
    assert!(update.len() < 100, "{} bytes", update.len());
    let err = assert_rejected_unchanged(&mut room, &update, "40k backwards at one spot");
    assert!(err.to_string().contains("one position"), "{err}");
}

/// Dense honest updates: 20,000 characters typed backwards at offset 0 then deleted (20,000
/// blocks in ~45 bytes), the same without deleting, a 1 MB paste, and the offline merge of a
/// trace prefix (one update for a long session).
#[test]
fn dense_honest_updates_are_accepted() {
    let mut room = room_with_content();
    let mut accept = |update: &[u8], what: &str| {
        let started = Instant::now();
        room.handle_op(ConnId(2), None, update)
            .unwrap_or_else(|e| panic!("{what}: refused: {e}"));
        eprintln!(
            "{what}: {} bytes accepted in {:?}",
            update.len(),
            started.elapsed()
        );
        assert_eq!(room.rebuilds(), 0);
    };

    let mut front = Document::new(10);
    for _ in 0..20_000 {
        front.replace_silent(0, 0, "y").unwrap();
    }
    let typed = front.encode_state_as_update(None).unwrap();
    front.delete(0, 20_000).unwrap();
    let deleted = front.encode_state_as_update(None).unwrap();
    assert!(deleted.len() < 100, "{} bytes", deleted.len());
    accept(&deleted, "20k typed backwards at 0, then deleted");

    // Typed after seeing the first (two such runs concurrently are quadratic in yrs whatever
    // the engine does; see the module doc of `doc/bounds.rs`).
    let mut front2 = Document::from_update(11, &deleted).unwrap();
    let seen = front2.state_vector();
    for _ in 0..20_000 {
        front2.replace_silent(0, 0, "z").unwrap();
    }
    accept(
        &front2.encode_state_as_update(Some(&seen)).unwrap(),
        "20k typed backwards",
    );
    let _ = typed;

    let mut paster = Document::new(12);
    let paste: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    accept(&paster.insert(0, &paste).unwrap(), "1 MB paste");

    let trace = traces::load_seq(traces::AUTOMERGE_PAPER);
    let mut offline = Document::new(13);
    for patch in trace.patches().take(50_000) {
        offline
            .replace_silent(patch.pos, patch.del, &patch.ins)
            .unwrap();
    }
    accept(
        &offline.encode_state_as_update(None).unwrap(),
        "offline merge of 50k trace edits",
    );
    let batch = room.take_batch().unwrap();
    assert_eq!(batch.len(), 4);
}

/// What the two forged updates would have cost if yrs had integrated them (the path before this
/// bound): 10,000 deleted items against 10,000. Minutes at a million; run by hand:
/// `cargo test --release -p concord-engine --test engine attacks_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn attacks_cost_if_integrated() {
    for (big, small) in [(10_000u64, 1_000u64), (10_000, 10_000)] {
        let mut doc = Document::new(9);
        let started = Instant::now();
        doc.apply_update(&forged_blocks(1, 1, big)).unwrap();
        let first = started.elapsed();
        let started = Instant::now();
        doc.apply_update(&forged_blocks(2, 1, small)).unwrap();
        eprintln!(
            "yrs integrating {big} then {small} forged deleted items: {first:?} + {:?}",
            started.elapsed()
        );
    }
}
