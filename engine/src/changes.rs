//! [`TextChange`]: what a remote update did to the text, as ranges an editor can apply without
//! replacing its whole content (which would lose the caret, the selection and the scroll).

use std::sync::{Arc, Mutex};

use serde::Serialize;
use yrs::types::text::TextEvent;
use yrs::types::Delta;
use yrs::{GetString, IndexedEdit, Out, Text, TextRef, TransactionMut, Untracked};

/// One change: at `index` (UTF-16 units, in the text as it is after the changes before it in
/// the same list) delete `delete` units, then insert `insert`. Apply a list in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextChange {
    /// Where, in UTF-16 units.
    pub index: u32,
    /// How many UTF-16 units are deleted.
    pub delete: u32,
    /// What is inserted.
    pub insert: String,
}

/// Changes recorded by a text observer, taken by the document's owner after each apply.
pub(crate) type ChangeLog = Arc<Mutex<Log>>;

#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) changes: Vec<TextChange>,
    /// The plain text's length in UTF-16 units after the last transaction seen, for the one
    /// case where a change must replace the whole text.
    pub(crate) plain_len: u32,
}

/// The origin local edits are made with, so the observer can skip them: the editor made those
/// changes itself and needs no echo.
pub(crate) const LOCAL_ORIGIN: &str = "concord-local";

/// Appends what a remote transaction did to the text to `log`. The edits come from the text's
/// position index (each with its index when it was made, found from the nearest mark); for a
/// transaction too large for the index, from the event's delta, which walks the whole text. A
/// text holding content other than strings (an embed from a foreign Yjs client) has indexes
/// that count it where the plain text does not: its changes are reported as one replacement of
/// the whole text, which is right if not minimal.
pub(crate) fn record(log: &ChangeLog, body: &TextRef, txn: &TransactionMut, event: &TextEvent) {
    // Taken in every transaction, local ones included: the log lives for one transaction.
    let edits = body.take_indexed_edits();
    let remote = txn
        .origin()
        .is_none_or(|o| o.as_ref() != LOCAL_ORIGIN.as_bytes());
    let Ok(mut log) = log.lock() else { return };
    let log = &mut *log;
    match edits {
        Err(Untracked::NotPlainText) => {
            let text = body.get_string(txn);
            let len = utf16_len(&text);
            if remote {
                log.changes.push(TextChange {
                    index: 0,
                    delete: log.plain_len,
                    insert: text,
                });
            }
            log.plain_len = len;
        }
        Ok(edits) => {
            if remote {
                for edit in edits {
                    match edit {
                        IndexedEdit::Insert {
                            index,
                            text: Some(text),
                            ..
                        } => push(&mut log.changes, index, 0, text),
                        // Not given: these edits come only while the text holds only strings.
                        IndexedEdit::Insert { text: None, .. } => {}
                        IndexedEdit::Delete { index, len } => {
                            push(&mut log.changes, index, len, String::new())
                        }
                    }
                }
            }
            log.plain_len = body.len(txn);
        }
        Err(Untracked::TooLarge | Untracked::NotRecording) => {
            if remote {
                record_delta(&mut log.changes, txn, event);
            }
            // Only strings: the text's length is the plain text's.
            log.plain_len = body.len(txn);
        }
    }
}

/// The changes of one transaction from its delta.
fn record_delta(log: &mut Vec<TextChange>, txn: &TransactionMut, event: &TextEvent) {
    let mut index: u32 = 0;
    for delta in event.delta(txn) {
        match delta {
            Delta::Retain(len, _) => index += len,
            Delta::Deleted(len) => push(log, index, *len, String::new()),
            Delta::Inserted(value, _) => {
                let text = match value {
                    Out::Any(yrs::Any::String(s)) => s.to_string(),
                    // Only strings are inserted into `body` by Concord peers; anything else (an
                    // embed from a foreign Yjs client) is not part of the plain text.
                    _ => continue,
                };
                let units = utf16_len(&text);
                push(log, index, 0, text);
                index += units;
            }
        }
    }
}

fn utf16_len(text: &str) -> u32 {
    text.encode_utf16().count() as u32
}

/// Adds a change, merged into the previous one when the two touch: typing on after an insert,
/// deleting on after it or before it, inserting where a delete was. The list stays sequential
/// (each index in the text after the changes before it).
fn push(log: &mut Vec<TextChange>, index: u32, delete: u32, insert: String) {
    if let Some(last) = log.last_mut() {
        let last_end = last.index + utf16_len(&last.insert);
        if delete == 0 && index == last_end {
            // Typing on: the previous change's insert grows.
            last.insert.push_str(&insert);
            return;
        }
        if insert.is_empty() && index == last_end {
            // Deleting forward from the end of what the previous change inserted.
            last.delete += delete;
            return;
        }
        if insert.is_empty() && index + delete == last.index {
            // Backspacing, or the delete half of a replacement (an update integrates its
            // inserts before its deletes): this delete ends where the previous change starts.
            last.index = index;
            last.delete += delete;
            return;
        }
    }
    log.push(TextChange {
        index,
        delete,
        insert,
    });
}

#[cfg(test)]
mod tests {
    use super::TextChange;
    use crate::Document;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    /// What an editor binding does with a change list.
    fn replay(mirror: &mut Vec<u16>, changes: &[TextChange]) {
        for c in changes {
            let at = c.index as usize;
            mirror.splice(at..at + c.delete as usize, c.insert.encode_utf16());
        }
    }

    fn utf16(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    /// An index moved off the second half of a surrogate pair (editors cut on characters).
    fn on_char(text: &[u16], at: usize) -> usize {
        if at < text.len() && (0xDC00..0xE000).contains(&text[at]) {
            at - 1
        } else {
            at
        }
    }

    /// A random local edit on `doc`, returned as the change it made.
    fn edit(rng: &mut SmallRng, doc: &mut Document) -> TextChange {
        const CHARS: &[&str] = &["a", "b", " ", "\n", "é", "中", "😀", "xyz"];
        let text = utf16(&doc.text());
        let at = on_char(&text, rng.gen_range(0..=text.len()));
        if text.is_empty() || rng.gen_bool(0.6) {
            let insert: String = (0..rng.gen_range(1..4))
                .map(|_| CHARS[rng.gen_range(0..CHARS.len())])
                .collect();
            doc.insert(at as u32, &insert).unwrap();
            TextChange {
                index: at as u32,
                delete: 0,
                insert,
            }
        } else {
            let end = on_char(&text, (at + rng.gen_range(1..6)).min(text.len()));
            let delete = end.saturating_sub(at) as u32;
            doc.delete(at as u32, delete).unwrap();
            TextChange {
                index: at as u32,
                delete,
                insert: String::new(),
            }
        }
    }

    /// The change lists a tracked replica reports, replayed in order on a copy of its text,
    /// give its text after every remote update: single edits, batches of many edits from
    /// several clients at once (which integrate out of order), and local edits in between
    /// (which find their place from the position marks and must land where they were asked).
    #[test]
    fn change_lists_replay_to_the_text_after_every_update() {
        for seed in [0x7e57_0001u64, 0x7e57_0002, 0x7e57_0003] {
            println!("seed {seed:#x}");
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut docs: Vec<Document> = (1..=4).map(Document::new).collect();
            docs[0].track_changes();
            let mut mirror: Vec<u16> = Vec::new();
            for step in 0..2_500 {
                let k = rng.gen_range(0..docs.len());
                if rng.gen_bool(0.7) {
                    let change = edit(&mut rng, &mut docs[k]);
                    if k == 0 {
                        replay(&mut mirror, &[change]);
                        assert!(
                            docs[0].take_changes().is_empty(),
                            "local edits are not reported"
                        );
                    }
                } else {
                    let to = if rng.gen_bool(0.6) {
                        0
                    } else {
                        rng.gen_range(1..docs.len())
                    };
                    if to == k {
                        continue;
                    }
                    let sv = docs[to].state_vector();
                    let update = docs[k].encode_state_as_update(Some(&sv)).unwrap();
                    docs[to].apply_update(&update).unwrap();
                    if to == 0 {
                        replay(&mut mirror, &docs[0].take_changes());
                    }
                }
                assert_eq!(
                    String::from_utf16(&mirror).unwrap(),
                    docs[0].text(),
                    "seed {seed:#x}, step {step}"
                );
            }
            // Everyone converges, so the tracked replica's local edits went where asked.
            for from in 0..docs.len() {
                for to in 0..docs.len() {
                    let sv = docs[to].state_vector();
                    let update = docs[from].encode_state_as_update(Some(&sv)).unwrap();
                    docs[to].apply_update(&update).unwrap();
                }
            }
            replay(&mut mirror, &docs[0].take_changes());
            assert_eq!(String::from_utf16(&mirror).unwrap(), docs[0].text());
            for doc in &docs[1..] {
                assert_eq!(doc.text(), docs[0].text(), "seed {seed:#x}");
            }
        }
    }

    /// A first sync of a large document into a tracked replica is one transaction integrating
    /// thousands of items out of order: tracking gives up for it and the delta answers, and
    /// the next single edits are indexed again.
    #[test]
    fn a_large_first_sync_falls_back_to_the_delta_and_tracking_resumes() {
        let seed = 0x7e57_0010u64;
        println!("seed {seed:#x}");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut writers: Vec<Document> = (1..=3).map(Document::new).collect();
        for _ in 0..6_000 {
            let k = rng.gen_range(0..writers.len());
            edit(&mut rng, &mut writers[k]);
            let j = rng.gen_range(0..writers.len());
            if j != k && rng.gen_bool(0.3) {
                let sv = writers[j].state_vector();
                let update = writers[k].encode_state_as_update(Some(&sv)).unwrap();
                writers[j].apply_update(&update).unwrap();
            }
        }
        let mut reader = Document::new(9);
        reader.track_changes();
        let mut mirror = Vec::new();
        for writer in &writers {
            let sv = reader.state_vector();
            reader
                .apply_update(&writer.encode_state_as_update(Some(&sv)).unwrap())
                .unwrap();
            replay(&mut mirror, &reader.take_changes());
            assert_eq!(String::from_utf16(&mirror).unwrap(), reader.text());
        }
        // Edits all over the text, arriving at once: far more walking than one delta.
        for writer in writers.iter_mut() {
            for _ in 0..1_000 {
                edit(&mut rng, writer);
            }
        }
        let sv = reader.state_vector();
        let mut all = Vec::new();
        for writer in &writers {
            all.push(writer.encode_state_as_update(Some(&sv)).unwrap());
        }
        reader.apply_updates(&all).unwrap();
        replay(&mut mirror, &reader.take_changes());
        assert_eq!(String::from_utf16(&mirror).unwrap(), reader.text());
        for _ in 0..300 {
            let k = rng.gen_range(0..writers.len());
            edit(&mut rng, &mut writers[k]);
            let sv = reader.state_vector();
            reader
                .apply_update(&writers[k].encode_state_as_update(Some(&sv)).unwrap())
                .unwrap();
            replay(&mut mirror, &reader.take_changes());
            assert_eq!(String::from_utf16(&mirror).unwrap(), reader.text());
        }
    }

    /// Content other than strings (an embed from a foreign Yjs client) is not in the plain
    /// text; the changes then come from the delta, which leaves it out.
    #[test]
    fn an_embed_in_the_text_falls_back_to_the_delta() {
        use yrs::{Any, Text, Transact};
        let mut writer = Document::new(1);
        writer.insert(0, "hello world").unwrap();
        {
            let body = writer.yrs().get_or_insert_text("body");
            let mut txn = writer.yrs().transact_mut();
            body.insert_embed(&mut txn, 5, Any::Bool(true));
        }
        let mut reader = Document::new(2);
        reader.track_changes();
        let mut mirror = Vec::new();
        let update = writer.encode_state_as_update(None).unwrap();
        reader.apply_update(&update).unwrap();
        replay(&mut mirror, &reader.take_changes());
        assert_eq!(String::from_utf16(&mirror).unwrap(), reader.text());
        let sv = reader.state_vector();
        writer.insert(8, "!").unwrap();
        writer.delete(0, 2).unwrap();
        reader
            .apply_update(&writer.encode_state_as_update(Some(&sv)).unwrap())
            .unwrap();
        replay(&mut mirror, &reader.take_changes());
        assert_eq!(String::from_utf16(&mirror).unwrap(), reader.text());
    }
}
