//! UTF-16 offsets, as JavaScript counts them: edits around surrogate pairs (emoji, flags,
//! `𝄞`) and CJK land where a `textarea` would put them, `length` equals the JS string's
//! `length`, and the `changes` of remote events (`{type: 'remote', changes: [{index, delete,
//! insert}]}`) patch a UTF-16 copy of the text into exactly the session's new text.

use concord_engine::wire::ServerMessage;
use concord_wasm::{ClientSession, Document};
use wasm_bindgen_test::wasm_bindgen_test;

use super::session::{events, Event};
use super::{cases, js_length, random_edit, splice, Case, Rng};

/// Asserts that `text` is the UTF-16 `model` and that both lengths agree with JavaScript's.
fn assert_model(text: &str, length: u32, model: &[u16], what: &dyn std::fmt::Display) {
    let expected = String::from_utf16(model)
        .unwrap_or_else(|_| panic!("{what}: the model holds a lone surrogate: {model:?}"));
    assert_eq!(text, expected, "{what}: text");
    assert_eq!(length as usize, model.len(), "{what}: length vs model");
    assert_eq!(
        length,
        js_length(text),
        "{what}: length vs JS String length"
    );
}

#[wasm_bindgen_test]
fn edits_around_surrogate_pairs_and_cjk_land_at_utf16_offsets() {
    let mut doc = Document::new(1.0).unwrap();
    let mut peer = Document::new(2.0).unwrap();
    let mut model: Vec<u16> = Vec::new();
    // (index, delete, insert), each checked against the model and mirrored to a peer.
    let steps: &[(u32, u32, &str)] = &[
        (0, 0, "a😀b中文🇫🇷"), // a=0 😀=1..3 b=3 中=4 文=5 🇫🇷=6..10
        (1, 0, "X"),          // before 😀
        (4, 0, "Y"),          // right after 😀 (X shifted it to 2..4)
        (2, 2, ""),           // the whole pair
        (3, 0, "𝄞"),          // between Y and b: another pair
        (5, 1, "漢"),         // replace b by CJK, right after 𝄞
        (8, 4, "🇯🇵"),         // replace the flag (two pairs) by another
        (0, 0, "👍🏽"),         // emoji + skin tone modifier: four units
        (4, 0, "|"),          // between the thumb and the next char
        (17, 0, "end😀"),     // at the very end
        (0, 4, ""),           // delete the thumb with its tone
    ];
    for (n, &(index, delete, insert)) in steps.iter().enumerate() {
        let what = format!("step {n}: replace({index}, {delete}, {insert:?})");
        let update = doc
            .replace(index, delete, insert)
            .unwrap_or_else(|e| panic!("{what}: {e:?} on {:?}", doc.text()));
        splice(&mut model, index, delete, insert);
        assert_model(&doc.text(), doc.length(), &model, &what);
        peer.apply_update(&update).unwrap();
        assert_model(&peer.text(), peer.length(), &model, &format!("peer {what}"));
    }
    assert_eq!(doc.text(), "|aXY𝄞漢中文🇯🇵end😀");
}

#[wasm_bindgen_test]
fn random_edits_keep_length_equal_to_the_js_length() {
    for case in cases(
        "random_edits_keep_length_equal_to_the_js_length",
        0x0716_0001,
        20,
    ) {
        let mut rng = Rng::new(case.seed);
        let mut doc = Document::new(3.0).unwrap();
        let mut s = ClientSession::new(4.0, "s").unwrap();
        let mut model: Vec<u16> = Vec::new();
        for step in 0..60 {
            let text = doc.text();
            let hot = rng.below(12) as u32;
            let e = random_edit(&mut rng, &text, hot);
            doc.replace(e.index, e.delete, &e.insert).unwrap();
            s.replace(e.index, e.delete, &e.insert).unwrap();
            splice(&mut model, e.index, e.delete, &e.insert);
            let what = format!("{case} step {step}: {e:?}");
            assert_model(&doc.text(), doc.length(), &model, &what);
            assert_model(&s.text(), s.length(), &model, &what);
        }
    }
}

/// Applies the `changes` of every remote event to `model`; returns how many changes there were.
fn apply_remote_changes(
    s: &mut ClientSession,
    model: &mut Vec<u16>,
    what: &dyn std::fmt::Display,
) -> usize {
    let mut count = 0;
    for ev in events(s) {
        if let Event::Remote { changes, changed } = ev {
            // `changed` without `changes` is legitimate: an insert whose delete arrived first
            // (held pending) integrates already deleted, adding to the document, not the text.
            assert!(
                changed || changes.is_empty(),
                "{what}: changes without `changed`"
            );
            for c in changes {
                assert!(
                    (c.index + c.delete) as usize <= model.len(),
                    "{what}: change {c:?} outside a text of {} units",
                    model.len()
                );
                splice(model, c.index, c.delete, &c.insert);
                count += 1;
            }
        }
    }
    count
}

#[wasm_bindgen_test]
fn remote_changes_have_utf16_indices() {
    let (mut total, mut iterations) = (0, 0);
    for case in cases("remote_changes_have_utf16_indices", 0x0716_1001, 30) {
        total += remote_changes_iteration(case);
        iterations += 1;
    }
    assert!(
        total >= 10 * iterations,
        "{iterations} iterations saw only {total} remote changes"
    );
}

fn remote_changes_iteration(case: Case) -> usize {
    let mut rng = Rng::new(case.seed);
    // `s` is the browser's session; `peer` edits concurrently and its updates arrive as `op`
    // frames, sometimes out of order (held pending, then reported when they integrate).
    let mut s = ClientSession::new(10.0 + (case.seed % 1000) as f64, "s").unwrap();
    let mut peer = Document::new(5_000_000.0 + (case.seed % 1000) as f64).unwrap();
    let mut model: Vec<u16> = Vec::new();
    let mut seq = 0;
    let mut changes = 0;
    for round in 0..8 {
        let what = format!("{case} round {round}");
        let hot = rng.below(10) as u32;
        // Local edits: no events, the model follows them directly.
        for _ in 0..rng.range(0, 3) {
            let e = random_edit(&mut rng, &s.text(), hot);
            s.replace(e.index, e.delete, &e.insert).unwrap();
            splice(&mut model, e.index, e.delete, &e.insert);
        }
        s.flush().unwrap();
        // Concurrent remote edits, delivered shuffled.
        let mut updates = Vec::new();
        for _ in 0..rng.range(1, 4) {
            let e = random_edit(&mut rng, &peer.text(), hot);
            updates.push(peer.replace(e.index, e.delete, &e.insert).unwrap());
        }
        rng.shuffle(&mut updates);
        for update in updates {
            seq += 1;
            s.handle_frame(&ServerMessage::Op { seq, update }.to_json())
                .unwrap();
            changes += apply_remote_changes(&mut s, &mut model, &what);
            assert_model(&s.text(), s.length(), &model, &what);
        }
        // The peer catches up with the session.
        let sv = peer.state_vector();
        peer.apply_update(&s.encode_state_as_update(Some(sv)).unwrap())
            .unwrap();
        assert_eq!(peer.text(), s.text(), "{what}: peer and session converge");
    }
    // A sync frame reports its changes the same way.
    let mut fresh = ClientSession::new(77.0, "fresh").unwrap();
    fresh.insert(0, "😀").unwrap();
    let mut fresh_model: Vec<u16> = "😀".encode_utf16().collect();
    let sync = ServerMessage::Sync {
        state: s.encode_state_as_update(None).unwrap(),
        sv: None,
        seq,
    }
    .to_json();
    fresh.handle_frame(&sync).unwrap();
    changes += apply_remote_changes(&mut fresh, &mut fresh_model, &case);
    assert_model(&fresh.text(), fresh.length(), &fresh_model, &case);
    changes
}
