//! Bad input through the exported API: random bytes, mutated valid updates, saved states and
//! frames, bad client ids and out-of-range edits. Each call either succeeds or throws a JS
//! `Error` with a `code`, and a call that throws changes nothing.
//!
//! On wasm32 a panic inside yrs is not caught (`catch_unwind` does nothing when panics abort):
//! it would abort the whole module. What protects it is the engine's pre-decode bounds check
//! (`engine/src/doc/bounds.rs`) and the decoder's own errors, so these tests are the evidence
//! that garbage cannot abort the module. Each input is recorded while it is fed ([`Feeding`]);
//! if the module does abort, the panic hook prints that input (hex) before the trap.
//!
//! One abort was not random: a forged ~35-byte update that declares tens of millions of blocks
//! in exhausted run-length columns ([`forged`]); the engine now caps declared blocks (the test
//! at the bottom).
//! `Document.applyUpdate`, `fromUpdate`, `importState` and the session's `sync` /
//! `op` frames treat their bytes as already-accepted state, which the engine bounds in nesting
//! but not in count, so yrs allocates block by block until the 4 GiB wasm32 memory runs out.

use concord_engine::wire::{encode_b64, ServerMessage};
use concord_wasm::{ClientSession, Document};
use wasm_bindgen_test::wasm_bindgen_test;

use super::{cases, expect_error, hex, random_edit, Case, Feeding, Rng};

// The randomized tests run on release builds only (`wasm-pack test --release`, as
// `scripts/test-wasm.sh` does), because that is what ships: in a debug build yrs's own
// `debug_assert!`s and integer overflow checks panic (an abort, on wasm32) on garbage that a
// release build decodes into an error, e.g. a state vector naming a client id over 53 bits
// (`ClientID::new`, yrs `block.rs`) or a string length that underflows (`read_str`, yrs
// `updates/decoder.rs`). Natively the engine's `catch_unwind` turns those into errors.

/// A document with some history: two clients, deletes, emoji and CJK. Returns its full state
/// and the updates that built it.
fn history(rng: &mut Rng) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut a = Document::new(101.0).unwrap();
    let mut b = Document::new(202.0).unwrap();
    let mut updates = Vec::new();
    for i in 0..12 {
        let (me, peer) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let text = me.text();
        let e = random_edit(rng, &text, 2);
        let u = me.replace(e.index, e.delete, &e.insert).unwrap();
        peer.apply_update(&u).unwrap();
        updates.push(u);
    }
    (a.encode_state_as_update(None).unwrap(), updates)
}

/// Flips, overwrites, inserts, removes, truncates and duplicates bytes, 1-4 times.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.range(1, 4) {
        let at = if b.is_empty() {
            0
        } else {
            rng.below(b.len() as u64) as usize
        };
        match rng.below(6) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => {
                let random = rng.next_u64() as u8;
                b[at] = *rng.pick(&[0u8, 1, 0x3f, 0x40, 0x7f, 0x80, 0xff, random])
            }
            2 => b.truncate(at),
            3 => b.insert(at, rng.next_u64() as u8),
            4 if !b.is_empty() => {
                b.remove(at);
            }
            _ => {
                let end = (at + rng.range(1, 8) as usize).min(b.len());
                let slice = b[at..end].to_vec();
                b.splice(at..at, slice);
            }
        }
    }
    b
}

/// Random bytes of 0-96 bytes; half start with the v2 format byte (0) to get past it.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(97) as usize;
    let mut b = rng.bytes(len);
    if !b.is_empty() && rng.chance(0.5) {
        b[0] = 0;
    }
    b
}

/// Feeds `update` to a document loaded from `base`: an error must carry `invalid_update` and
/// leave the document as it was.
fn check_apply(case: Case, base: &[u8], update: &[u8]) {
    let mut doc = Document::from_update(7.0, base).unwrap();
    let (text, state) = (doc.text(), doc.encode_state_as_update(None).unwrap());
    let result = Feeding::run(
        || format!("{case}: Document.applyUpdate({})", hex(update)),
        || doc.apply_update(update),
    );
    if result.is_err() {
        let code = expect_error(result, &case);
        assert_eq!(code, "invalid_update", "{case}: {}", hex(update));
        assert_eq!(
            doc.text(),
            text,
            "{case}: a refused update changed the text"
        );
        assert_eq!(
            doc.encode_state_as_update(None).unwrap(),
            state,
            "{case}: a refused update changed the state"
        );
    }
    // In a batch with a valid update: all or nothing.
    let mut batch_doc = Document::from_update(7.0, base).unwrap();
    let valid = Document::new(70.0).unwrap().insert(0, "valid").unwrap();
    let batch = Feeding::run(
        || format!("{case}: Document.applyUpdates([valid, {}])", hex(update)),
        || {
            batch_doc.apply_updates(vec![
                js_sys::Uint8Array::from(&valid[..]),
                js_sys::Uint8Array::from(update),
            ])
        },
    );
    if batch.is_err() {
        assert_eq!(expect_error(batch, &case), "invalid_update", "{case}");
        assert_eq!(
            batch_doc.text(),
            text,
            "{case}: a refused batch changed the text"
        );
    }
    // Usable either way.
    doc.insert(0, "ok").unwrap();
    doc.encode_state_as_update(None).unwrap();

    let loaded = Feeding::run(
        || format!("{case}: Document.fromUpdate({})", hex(update)),
        || Document::from_update(8.0, update),
    );
    if loaded.is_err() {
        assert_eq!(expect_error(loaded, &case), "invalid_update", "{case}");
    }
}

/// Feeds `update` as an `op` frame and as a `sync` frame to a session holding `base`.
fn check_frames(case: Case, base: &[u8], update: &[u8]) {
    for frame in [
        ServerMessage::Op {
            seq: 5,
            update: update.to_vec(),
        }
        .to_json(),
        ServerMessage::Sync {
            state: update.to_vec(),
            sv: None,
            seq: 5,
        }
        .to_json(),
    ] {
        check_frame(case, base, &frame);
    }
}

/// Feeds one text frame to a session holding `base`: an error must carry a code and leave the
/// session as it was.
fn check_frame(case: Case, base: &[u8], frame: &str) {
    let mut s = ClientSession::new(9.0, "s").unwrap();
    s.handle_frame(
        &ServerMessage::Sync {
            state: base.to_vec(),
            sv: None,
            seq: 1,
        }
        .to_json(),
    )
    .unwrap();
    s.insert(0, "mine").unwrap();
    s.flush().unwrap();
    while s.poll_event().unwrap() != wasm_bindgen::JsValue::UNDEFINED {}
    let (text, state, pending, status) = (
        s.text(),
        s.encode_state_as_update(None).unwrap(),
        s.pending_count(),
        s.status(),
    );
    let result = Feeding::run(
        || format!("{case}: ClientSession.handleFrame({frame:?})"),
        || s.handle_frame(frame),
    );
    if result.is_err() {
        let code = expect_error(result, &case);
        assert!(
            [
                "malformed_message",
                "bad_base64",
                "invalid_update",
                "invalid_state_vector"
            ]
            .contains(&code.as_str()),
            "{case}: unexpected code {code} for {frame:?}"
        );
        assert_eq!(s.text(), text, "{case}: a refused frame changed the text");
        assert_eq!(
            s.encode_state_as_update(None).unwrap(),
            state,
            "{case}: a refused frame changed the state"
        );
        assert_eq!(s.pending_count(), pending, "{case}: pending ops changed");
        assert_eq!(s.status(), status, "{case}: status changed");
    }
    s.insert(0, "ok").unwrap();
    s.flush().unwrap();
    s.export_state().unwrap();
}

/// Feeds bytes to `importState`: an error must be `corrupt_saved_state`.
fn check_import(case: Case, saved: &[u8]) {
    let result = Feeding::run(
        || format!("{case}: ClientSession.importState({})", hex(saved)),
        || ClientSession::import_state(12.0, "restored", saved),
    );
    match result {
        Ok(mut s) => {
            s.insert(0, "ok").unwrap();
            s.export_state().unwrap();
        }
        Err(_) => assert_eq!(
            expect_error(result.map(|_| ()), &case),
            "corrupt_saved_state",
            "{case}"
        ),
    }
}

#[wasm_bindgen_test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug build: yrs debug assertions abort on garbage that release rejects; run --release"
)]
fn random_bytes_are_coded_errors_and_change_nothing() {
    for case in cases(
        "random_bytes_are_coded_errors_and_change_nothing",
        0xBAD_0001,
        300,
    ) {
        let mut rng = Rng::new(case.seed);
        let (base, _) = history(&mut Rng::new(1));
        let bytes = garbage(&mut rng);
        check_apply(case, &base, &bytes);
        check_frames(case, &base, &bytes);
        check_import(case, &bytes);
        let mut saved = b"CCS1".to_vec();
        saved.extend_from_slice(&bytes);
        check_import(case, &saved);
        // As a state vector.
        let doc = Document::from_update(3.0, &base).unwrap();
        let diff = Feeding::run(
            || format!("{case}: encodeStateAsUpdate({})", hex(&bytes)),
            || doc.encode_state_as_update(Some(bytes.clone())),
        );
        if diff.is_err() {
            assert_eq!(expect_error(diff, &case), "invalid_state_vector", "{case}");
        }
    }
}

#[wasm_bindgen_test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug build: yrs debug assertions abort on garbage that release rejects; run --release"
)]
fn mutated_updates_and_states_are_coded_errors_or_apply() {
    for case in cases(
        "mutated_updates_and_states_are_coded_errors_or_apply",
        0xBAD_1001,
        300,
    ) {
        let mut rng = Rng::new(case.seed);
        let (state, updates) = history(&mut Rng::new(case.seed / 16));
        let (base, _) = history(&mut Rng::new(2));
        let original = if rng.chance(0.3) {
            state.clone()
        } else {
            rng.pick(&updates).clone()
        };
        let bytes = mutate(&mut rng, &original);
        check_apply(case, &base, &bytes);
        check_frames(case, &base, &bytes);
    }
}

#[wasm_bindgen_test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug build: yrs debug assertions abort on garbage that release rejects; run --release"
)]
fn mutated_saved_states_are_corrupt_saved_state_or_load() {
    let mut s = ClientSession::new(5.0, "s").unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..20 {
        let text = s.text();
        let e = random_edit(&mut rng, &text, 1);
        s.replace(e.index, e.delete, &e.insert).unwrap();
        s.flush().unwrap();
    }
    let saved = s.export_state().unwrap();
    let case = Case {
        test: "mutated_saved_states_are_corrupt_saved_state_or_load",
        seed: 0,
    };
    // Every truncation is an error.
    for cut in 0..saved.len() {
        let result = ClientSession::import_state(6.0, "r", &saved[..cut]);
        assert_eq!(
            expect_error(result.map(|_| ()), &format!("cut at {cut}")),
            "corrupt_saved_state"
        );
    }
    for case in cases(case.test, 0xBAD_2001, 300) {
        let bytes = mutate(&mut Rng::new(case.seed), &saved);
        check_import(case, &bytes);
    }
}

#[wasm_bindgen_test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug build: yrs debug assertions abort on garbage that release rejects; run --release"
)]
fn malformed_frames_are_coded_errors_and_change_nothing() {
    let (base, updates) = history(&mut Rng::new(3));
    let valid_op = ServerMessage::Op {
        seq: 9,
        update: updates[0].clone(),
    }
    .to_json();
    let case = |seed| Case {
        test: "malformed_frames_are_coded_errors_and_change_nothing",
        seed,
    };
    let fixed: &[(&str, Option<&str>)] = &[
        ("", Some("malformed_message")),
        ("not json", Some("malformed_message")),
        ("null", Some("malformed_message")),
        ("[1,2]", Some("malformed_message")),
        (r#"{"t":5}"#, Some("malformed_message")),
        (r#"{"t":"op"}"#, Some("malformed_message")),
        (r#"{"t":"op","seq":1,"data":{}}"#, Some("malformed_message")),
        (
            r#"{"t":"op","seq":1,"data":{"update":"!!!"}}"#,
            Some("bad_base64"),
        ),
        (
            r#"{"t":"op","seq":1,"data":{"update":"AQID"}}"#,
            Some("invalid_update"),
        ),
        (
            r#"{"t":"sync","state":"AQID","seq":0}"#,
            Some("invalid_update"),
        ),
        (
            r#"{"t":"sync","state":"AAAAAAAAAAAAAA==","sv":"*","seq":0}"#,
            Some("bad_base64"),
        ),
        (r#"{"t":"ack","id":"not-mine","seq":3}"#, None),
        (r#"{"t":"from-the-future","x":1}"#, None),
    ];
    for (i, (frame, code)) in fixed.iter().enumerate() {
        check_frame(case(i as u64), &base, frame);
        let mut s = ClientSession::new(4.0, "s").unwrap();
        let result = s.handle_frame(frame);
        match code {
            Some(code) => assert_eq!(&expect_error(result, &frame), code, "{frame}"),
            None => assert!(result.is_ok(), "{frame} is ignored"),
        }
    }
    for case in cases(case(0).test, 0xBAD_3001, 300) {
        let mut rng = Rng::new(case.seed);
        let frame = String::from_utf8_lossy(&mutate(&mut rng, valid_op.as_bytes())).into_owned();
        check_frame(case, &base, &frame);
    }
    // A frame whose base64 decodes to garbage.
    for case in cases(case(0).test, 0xBAD_4001, 100) {
        let mut rng = Rng::new(case.seed);
        let frame = format!(
            r#"{{"t":"op","seq":2,"data":{{"update":"{}"}}}}"#,
            encode_b64(&garbage(&mut rng))
        );
        check_frame(case, &base, &frame);
    }
}

#[wasm_bindgen_test]
fn bad_client_ids_and_out_of_range_edits_are_coded_errors() {
    for id in [-1.0, 1.5, f64::NAN, f64::INFINITY, 9_007_199_254_740_992.0] {
        assert_eq!(
            expect_error(Document::new(id).map(|_| ()), &id),
            "bad_client_id"
        );
        assert_eq!(
            expect_error(ClientSession::new(id, "s").map(|_| ()), &id),
            "bad_client_id"
        );
    }
    assert!(
        Document::new(9_007_199_254_740_991.0).is_ok(),
        "2^53 - 1 is fine"
    );

    let mut doc = Document::new(1.0).unwrap();
    doc.insert(0, "a😀b").unwrap();
    let state = doc.encode_state_as_update(None).unwrap();
    for (index, delete, insert) in [
        (5, 0, "x"),
        (4, 1, ""),
        (0, 5, ""),
        (u32::MAX, 1, ""),
        (1, u32::MAX, "y"),
    ] {
        let what = format!("replace({index}, {delete}, {insert:?})");
        assert_eq!(
            expect_error(doc.replace(index, delete, insert), &what),
            "out_of_bounds"
        );
    }
    assert_eq!(doc.text(), "a😀b");
    assert_eq!(doc.encode_state_as_update(None).unwrap(), state);

    let mut s = ClientSession::new(2.0, "s").unwrap();
    s.insert(0, "中文").unwrap();
    s.flush().unwrap();
    assert_eq!(expect_error(s.insert(3, "x"), &"insert"), "out_of_bounds");
    assert_eq!(expect_error(s.delete(1, 2), &"delete"), "out_of_bounds");
    assert_eq!(s.text(), "中文");
    assert_eq!(s.pending_count(), 1);
}

/// A v2 update of one client's `blocks` blocks, all read from exhausted run-length columns:
/// `info` repeats forever (0: GC blocks, 1: deleted items), every length is 1, every string
/// empty. About 35 bytes whatever the count. The same as `concord_testkit::lib0::forged_blocks`,
/// which this crate cannot use: testkit's `rand` does not build for wasm32-unknown-unknown.
pub fn forged(info: u8, blocks: u64) -> Vec<u8> {
    // lib0 varints, written by yrs's own encoder.
    fn var(out: &mut Vec<u8>, v: u64) {
        yrs::encoding::write::Write::write_var(out, v);
    }

    fn column(out: &mut Vec<u8>, bytes: &[u8]) {
        yrs::encoding::write::Write::write_buf(out, bytes);
    }
    let mut u = vec![0u8];
    column(&mut u, &[]); // key clocks
    column(&mut u, &[1]); // clients: 1
    column(&mut u, &[]); // left clocks
    column(&mut u, &[]); // right clocks
    column(&mut u, &[info]); // info, repeated forever
    let mut strings = vec![0u8, 0x40]; // no string bytes; lengths: 0, `blocks` times
    var(&mut strings, blocks);
    column(&mut u, &strings);
    column(&mut u, &[1]); // parent info: a named root, forever
    column(&mut u, &[]); // type refs
    let mut lens = vec![0x41]; // signed varint -1: the next value (1) repeats ...
    var(&mut lens, blocks); // ... `blocks` times
    column(&mut u, &lens);
    var(&mut u, 1); // one client
    var(&mut u, blocks);
    var(&mut u, 0); // first clock
    var(&mut u, 0); // empty delete set
    u
}

#[wasm_bindgen_test]
fn forged_block_counts_within_memory_apply_and_beyond_usize_are_errors() {
    // Dense but real: a million GC blocks in 35 bytes is a valid state (typing backwards and
    // deleting encodes like this), and it applies (a tenth of that in debug builds, where it
    // takes half a minute).
    let mut doc = Document::new(1.0).unwrap();
    doc.insert(0, "keep").unwrap();
    let dense = forged(
        0,
        if cfg!(debug_assertions) {
            100_000
        } else {
            1_000_000
        },
    );
    assert!(dense.len() < 40);
    doc.apply_update(&dense)
        .expect("a dense valid update applies");
    assert_eq!(doc.text(), "keep");
    // A count over the engine's cap on declared blocks is refused by its bounds check, which
    // stops counting at the cap (16M on wasm32): debug builds skip this part, being slow.
    for info in [0, 1].into_iter().filter(|_| !cfg!(debug_assertions)) {
        let bomb = forged(info, 300_000_000);
        let result = Feeding::run(
            || format!("Document.applyUpdate({})", hex(&bomb)),
            || doc.apply_update(&bomb),
        );
        assert_eq!(expect_error(result, &"300M blocks"), "invalid_update");
        assert_eq!(doc.text(), "keep");
    }
}

/// Before the engine capped the blocks a state may declare, this took ~10 s and ~2.8 GB and
/// then trapped the module (`RuntimeError: unreachable`), leaving the `Document` poisoned.
#[wasm_bindgen_test]
fn forged_block_count_of_fifty_million_is_refused() {
    let mut doc = Document::new(1.0).unwrap();
    let bomb = forged(0, 50_000_000);
    let result = Feeding::run(
        || format!("Document.applyUpdate({})", hex(&bomb)),
        || doc.apply_update(&bomb),
    );
    assert_eq!(expect_error(result, &"50M blocks"), "invalid_update");
}
