//! Three replicas edit concurrently in rounds (edit, partial exchange, edit, ..., everything),
//! colliding at offset 0, at the end and at a shared offset, with emoji and CJK. Updates arrive
//! shuffled, duplicated and before their dependencies (held pending), one at a time or a few
//! at once (`applyUpdates`). At the end every replica
//! has the same text and, once canonical, the same `encodeStateAsUpdate()` bytes.
//!
//! The native suite (`engine/tests/engine/convergence.rs`) runs 1000 iterations of a wider
//! version; this one checks that the same engine behaves the same compiled to WebAssembly.

use concord_wasm::Document;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{canonical, cases, client_ids, flag, js_length, random_edit, utf16_len, Case, Rng};

const SEED: u64 = 0x57A5_C001;
const ITERATIONS: u64 = 100;
const REPLICAS: usize = 3;

#[wasm_bindgen_test]
fn three_replicas_converge_under_shuffled_duplicated_delivery() {
    let mut raw_differences = 0;
    let mut updates = 0;
    for case in cases(
        "three_replicas_converge_under_shuffled_duplicated_delivery",
        SEED,
        ITERATIONS,
    ) {
        let (made, raw_differed) = iteration(case);
        updates += made;
        raw_differences += usize::from(raw_differed);
    }
    wasm_bindgen_test::console_log!(
        "convergence: {updates} updates; equal replicas had different raw encodings in \
         {raw_differences} iterations (canonical encodings always equal)"
    );
}

/// One iteration; returns how many updates were made and whether raw encodings differed.
fn iteration(case: Case) -> (usize, bool) {
    let mut rng = Rng::new(case.seed);
    let ids = client_ids(&mut rng, REPLICAS);
    let mut docs: Vec<Document> = ids
        .iter()
        .map(|&id| Document::new(id).expect("a valid client id"))
        .collect();
    let mut updates: Vec<Vec<u8>> = Vec::new();
    // seen[r][i]: replica r has applied (or made) update i.
    let mut seen: Vec<Vec<bool>> = vec![Vec::new(); REPLICAS];
    // What the last applyUpdate said about updates held back for missing dependencies.
    let mut pending = [false; REPLICAS];
    let rounds = rng.range(2, 4);
    for round in 0..=rounds {
        let last = round == rounds;
        if !last {
            let hot = rng.below(24) as u32;
            for (r, doc) in docs.iter_mut().enumerate() {
                for _ in 0..rng.range(0, 5) {
                    let text = doc.text();
                    let e = random_edit(&mut rng, &text, hot);
                    let update = doc
                        .replace(e.index, e.delete, &e.insert)
                        .unwrap_or_else(|err| panic!("{case}: edit {e:?} on {text:?}: {err:?}"));
                    updates.push(update);
                    for (s, row) in seen.iter_mut().enumerate() {
                        row.push(s == r);
                    }
                }
            }
        }
        for r in 0..REPLICAS {
            let mut batch: Vec<usize> = (0..updates.len())
                .filter(|&i| {
                    if seen[r][i] {
                        rng.chance(0.1)
                    } else {
                        last || rng.chance(0.5)
                    }
                })
                .collect();
            let dups: Vec<usize> = batch.iter().copied().filter(|_| rng.chance(0.15)).collect();
            batch.extend(dups);
            rng.shuffle(&mut batch);
            // One at a time, or a few at once through `applyUpdates` (merged, one transaction).
            let mut rest = &batch[..];
            while !rest.is_empty() {
                let n = if rng.chance(0.5) {
                    1
                } else {
                    rng.range(1, rest.len().min(6) as u64) as usize
                };
                let (chunk, tail) = rest.split_at(n);
                let applied = if n == 1 {
                    docs[r].apply_update(&updates[chunk[0]])
                } else {
                    let chunk_updates = chunk
                        .iter()
                        .map(|&i| js_sys::Uint8Array::from(&updates[i][..]))
                        .collect();
                    docs[r].apply_updates(chunk_updates)
                }
                .unwrap_or_else(|err| {
                    panic!("{case}: replica {r} refused valid updates {chunk:?}: {err:?}")
                });
                pending[r] = flag(&applied, "pending");
                for &i in chunk {
                    seen[r][i] = true;
                }
                rest = tail;
            }
        }
    }

    let first_text = docs[0].text();
    let first_state = docs[0].encode_state_as_update(None).expect("encodes");
    let mut raw_differed = false;
    for (r, doc) in docs.iter().enumerate() {
        assert!(
            !pending[r],
            "{case}: replica {r} still holds pending updates"
        );
        let text = doc.text();
        assert_eq!(text, first_text, "{case}: replica {r} text differs");
        assert_eq!(doc.length(), utf16_len(&text), "{case}: replica {r} length");
        assert_eq!(
            doc.length(),
            js_length(&text),
            "{case}: replica {r} JS length"
        );
        let state = doc.encode_state_as_update(None).expect("encodes");
        if state != first_state {
            raw_differed = true;
            assert_eq!(
                canonical(&state),
                canonical(&first_state),
                "{case}: replica {r} state differs from replica 0, even once canonical"
            );
        }
        // A replica built from the state alone has the same text.
        let copy = Document::from_update(99.0, &state).expect("a full state loads");
        assert_eq!(copy.text(), first_text, "{case}: replica {r} state reloads");
    }
    (updates.len(), raw_differed)
}
