//! [`TextChange`]: what a remote update did to the text, as ranges an editor can apply without
//! replacing its whole content (which would lose the caret, the selection and the scroll).

use std::sync::{Arc, Mutex};

use serde::Serialize;
use yrs::types::text::TextEvent;
use yrs::types::Delta;
use yrs::{Out, TransactionMut};

/// One change: at `index` (UTF-16 units, in the text as it is after the changes before it in
/// the same list) delete `delete` units, then insert `insert`. Lists are sorted by position.
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
pub(crate) type ChangeLog = Arc<Mutex<Vec<TextChange>>>;

/// The origin local edits are made with, so the observer can skip them: the editor made those
/// changes itself and needs no echo.
pub(crate) const LOCAL_ORIGIN: &str = "concord-local";

/// Appends a text event's delta to `log` as changes (remote transactions only).
pub(crate) fn record(log: &ChangeLog, txn: &TransactionMut, event: &TextEvent) {
    if txn
        .origin()
        .is_some_and(|o| o.as_ref() == LOCAL_ORIGIN.as_bytes())
    {
        return;
    }
    let Ok(mut log) = log.lock() else { return };
    let mut index: u32 = 0;
    for delta in event.delta(txn) {
        match delta {
            Delta::Retain(len, _) => index += len,
            Delta::Deleted(len) => push(&mut log, index, *len, String::new()),
            Delta::Inserted(value, _) => {
                let text = match value {
                    Out::Any(yrs::Any::String(s)) => s.to_string(),
                    // Only strings are inserted into `body` by Concord peers; anything else (an
                    // embed from a foreign Yjs client) is not part of the plain text.
                    _ => continue,
                };
                let units = text.encode_utf16().count() as u32;
                push(&mut log, index, 0, text);
                index += units;
            }
        }
    }
}

/// Adds a change, coalescing a delete directly followed by an insert at the same place.
fn push(log: &mut Vec<TextChange>, index: u32, delete: u32, insert: String) {
    if let Some(last) = log.last_mut() {
        if last.insert.is_empty() && last.index == index && delete == 0 {
            last.insert = insert;
            return;
        }
    }
    log.push(TextChange {
        index,
        delete,
        insert,
    });
}
