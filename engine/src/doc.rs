//! [`Document`]: one yrs `Doc` holding one `Y.Text` named `body`, addressed in UTF-16 offsets.
//!
//! Browsers count text in UTF-16 code units (`textarea.selectionStart`, CodeMirror positions), so
//! every offset here is UTF-16, and the yrs document is created with `OffsetKind::Utf16` to match
//! what Yjs does in JavaScript. That is also what keeps a Yjs peer and a Concord peer byte-equal.
//!
//! Remote bytes are decoded before anything touches the document, and yrs is called behind
//! `catch_unwind`: a malformed update must come back as an error, never as a panic in a caller's
//! room.

use std::panic::{catch_unwind, AssertUnwindSafe};

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::block::ClientID;
use yrs::{
    Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact, Update,
};

use crate::error::{EngineError, Result};

/// The name of the shared text inside every Concord document (Yjs: `doc.getText('body')`).
pub const BODY: &str = "body";

/// Client ids are 53-bit (a JavaScript safe integer), as in Yjs.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// What applying a remote update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// The update inserted or deleted something this document did not have.
    pub changed: bool,
    /// Part of the update (or of an earlier one) waits for changes this document has not seen.
    /// yrs keeps it aside and integrates it once the missing changes arrive.
    pub pending: bool,
}

/// A collaborative plain-text document.
pub struct Document {
    doc: Doc,
    body: TextRef,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("client_id", &self.client_id())
            .field("len", &self.len())
            .finish()
    }
}

impl Document {
    /// A new, empty document. `client_id` must be unique among every replica that ever edits the
    /// document (yrs ids are `(client_id, clock)`); the caller supplies it because the engine
    /// does not own a source of randomness. Only its low 53 bits are used, as in Yjs, so ids
    /// survive a trip through a JavaScript number.
    pub fn new(client_id: u64) -> Self {
        let options = Options {
            client_id: ClientID::new(client_id & MAX_CLIENT_ID),
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        };
        let doc = Doc::with_options(options);
        let body = doc.get_or_insert_text(BODY);
        Document { doc, body }
    }

    /// A document loaded from a full-state update (a snapshot).
    pub fn from_update(client_id: u64, update: &[u8]) -> Result<Self> {
        let mut doc = Document::new(client_id);
        doc.apply_update(update)?;
        Ok(doc)
    }

    /// This replica's yrs client id.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// The current text.
    pub fn text(&self) -> String {
        let txn = self.doc.transact();
        self.body.get_string(&txn)
    }

    /// Length of the text in UTF-16 code units.
    pub fn len(&self) -> u32 {
        let txn = self.doc.transact();
        self.body.len(&txn)
    }

    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `text` at UTF-16 offset `index`; returns the v2 update of this edit.
    pub fn insert(&mut self, index: u32, text: &str) -> Result<Vec<u8>> {
        self.replace(index, 0, text)
    }

    /// Deletes `len` UTF-16 units at `index`; returns the v2 update of this edit.
    pub fn delete(&mut self, index: u32, len: u32) -> Result<Vec<u8>> {
        self.replace(index, len, "")
    }

    /// Replaces `len` UTF-16 units at `index` with `text` in one transaction; returns its v2
    /// update (empty-update bytes when nothing changed).
    pub fn replace(&mut self, index: u32, len: u32, text: &str) -> Result<Vec<u8>> {
        let mut txn = self.doc.transact_mut();
        self.edit_in(&mut txn, index, len, text)?;
        Ok(txn.encode_update_v2())
    }

    /// Applies an edit without encoding it: for callers that encode many edits at once later.
    pub fn replace_silent(&mut self, index: u32, len: u32, text: &str) -> Result<()> {
        let mut txn = self.doc.transact_mut();
        self.edit_in(&mut txn, index, len, text)
    }

    fn edit_in(
        &self,
        txn: &mut yrs::TransactionMut<'_>,
        index: u32,
        len: u32,
        text: &str,
    ) -> Result<()> {
        let text_len = self.body.len(txn);
        let end = index.checked_add(len);
        match end {
            Some(end) if end <= text_len => {}
            _ => {
                return Err(EngineError::OutOfBounds {
                    index,
                    len,
                    text_len,
                })
            }
        }
        if len > 0 {
            self.body.remove_range(txn, index, len);
        }
        if !text.is_empty() {
            self.body.insert(txn, index, text);
        }
        Ok(())
    }

    /// This document's state vector, v1-encoded (the encoding Yjs uses for state vectors).
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// Everything this document has that a peer with state vector `sv` (v1 bytes) lacks, as one
    /// v2 update. `None` means the whole document.
    pub fn encode_state_as_update(&self, sv: Option<&[u8]>) -> Result<Vec<u8>> {
        let sv = match sv {
            Some(bytes) => decode_state_vector(bytes)?,
            None => StateVector::default(),
        };
        Ok(self.doc.transact().encode_state_as_update_v2(&sv))
    }

    /// Applies a v2 update (from a peer, the server or a snapshot).
    ///
    /// The bytes are fully decoded before the document is touched, so undecodable input changes
    /// nothing. If yrs panics while integrating a decodable but hostile update, the error is
    /// returned and the document must be treated as poisoned: [`crate::RoomState`] rebuilds
    /// from its checkpoint in that case.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<Applied> {
        let decoded = decode_update(update)?;
        self.apply_decoded(decoded)
    }

    /// Applies several v2 updates in one yrs transaction. yrs pays per transaction, so a queue
    /// of incoming updates is merged first and integrated once.
    pub fn apply_updates<B: AsRef<[u8]>>(&mut self, updates: &[B]) -> Result<Applied> {
        match updates {
            [] => Ok(Applied::default()),
            [one] => self.apply_update(one.as_ref()),
            many => {
                let merged = merge_updates(many)?;
                self.apply_update(&merged)
            }
        }
    }

    pub(crate) fn apply_decoded(&mut self, update: Update) -> Result<Applied> {
        let doc = &self.doc;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            let result = txn.apply_update(update);
            let changed = txn.has_changes();
            let store = txn.store();
            let pending = store.pending_update().is_some() || store.pending_ds().is_some();
            (result, changed, pending)
        }));
        match outcome {
            Ok((Ok(()), changed, pending)) => Ok(Applied { changed, pending }),
            Ok((Err(e), _, _)) => Err(EngineError::InvalidUpdate {
                reason: e.to_string(),
            }),
            Err(panic) => Err(EngineError::InvalidUpdate {
                reason: format!("rejected while integrating: {}", panic_message(&panic)),
            }),
        }
    }

    /// True when yrs holds changes it could not integrate yet (waiting for missing updates).
    pub fn has_pending(&self) -> bool {
        let txn = self.doc.transact();
        let store = txn.store();
        store.pending_update().is_some() || store.pending_ds().is_some()
    }

    /// Borrow of the underlying yrs document, for observers and advanced callers.
    pub fn yrs(&self) -> &Doc {
        &self.doc
    }
}

/// Decodes a v1 state vector without panicking on hostile input.
pub fn decode_state_vector(bytes: &[u8]) -> Result<StateVector> {
    guarded(|| StateVector::decode_v1(bytes))
        .map_err(|reason| EngineError::InvalidStateVector { reason })?
        .map_err(|e| EngineError::InvalidStateVector {
            reason: e.to_string(),
        })
}

/// Decodes a v2 update without panicking on hostile input.
pub fn decode_update(bytes: &[u8]) -> Result<Update> {
    guarded(|| Update::decode_v2(bytes))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// Merges v2 updates into one (no document needed), guarding yrs against hostile input.
pub fn merge_updates<B: AsRef<[u8]>>(updates: &[B]) -> Result<Vec<u8>> {
    let slices: Vec<&[u8]> = updates.iter().map(|u| u.as_ref()).collect();
    guarded(|| yrs::merge_updates_v2(slices))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// The state vector (v1 bytes) an update would bring a document to, read from the update alone.
pub fn state_vector_of_update(update: &[u8]) -> Result<Vec<u8>> {
    guarded(|| yrs::encode_state_vector_from_update_v2(update))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&p))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_offsets_address_emoji_and_cjk() {
        let mut doc = Document::new(1);
        doc.insert(0, "a😀b").unwrap();
        assert_eq!(doc.len(), 4, "😀 is two UTF-16 units");
        doc.insert(3, "中").unwrap();
        assert_eq!(doc.text(), "a😀中b");
        doc.delete(1, 2).unwrap();
        assert_eq!(doc.text(), "a中b");
    }

    #[test]
    fn out_of_bounds_edits_are_errors_and_change_nothing() {
        let mut doc = Document::new(1);
        doc.insert(0, "abc").unwrap();
        let sv = doc.state_vector();
        assert!(matches!(
            doc.insert(4, "x"),
            Err(EngineError::OutOfBounds { .. })
        ));
        assert!(matches!(
            doc.delete(2, 2),
            Err(EngineError::OutOfBounds { .. })
        ));
        assert!(matches!(
            doc.delete(u32::MAX, 2),
            Err(EngineError::OutOfBounds { .. })
        ));
        assert_eq!(doc.text(), "abc");
        assert_eq!(doc.state_vector(), sv);
    }

    #[test]
    fn apply_reports_whether_anything_changed() {
        let mut a = Document::new(1);
        let u = a.insert(0, "hello").unwrap();
        let mut b = Document::new(2);
        assert!(b.apply_update(&u).unwrap().changed);
        assert!(!b.apply_update(&u).unwrap().changed, "a duplicate adds nothing");
        let d = a.delete(0, 1).unwrap();
        assert!(b.apply_update(&d).unwrap().changed, "a delete-only update changes the text");
        assert!(!b.apply_update(&d).unwrap().changed);
        assert_eq!(b.text(), "ello");
    }

    #[test]
    fn out_of_order_updates_wait_as_pending() {
        let mut a = Document::new(1);
        let u1 = a.insert(0, "ab").unwrap();
        let u2 = a.insert(2, "cd").unwrap();
        let mut b = Document::new(2);
        let r = b.apply_update(&u2).unwrap();
        assert!(r.pending && !r.changed);
        let r = b.apply_update(&u1).unwrap();
        assert!(!r.pending && r.changed);
        assert_eq!(b.text(), "abcd");
    }

    #[test]
    fn diff_against_a_state_vector_is_what_the_peer_lacks() {
        let mut a = Document::new(1);
        a.insert(0, "shared").unwrap();
        let mut b = Document::from_update(2, &a.encode_state_as_update(None).unwrap()).unwrap();
        a.insert(6, " more").unwrap();
        let diff = a.encode_state_as_update(Some(&b.state_vector())).unwrap();
        assert!(b.apply_update(&diff).unwrap().changed);
        assert_eq!(b.text(), "shared more");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut doc = Document::new(1);
        for bytes in [&b""[..], b"\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"hello"] {
            assert!(doc.apply_update(bytes).is_err() || doc.is_empty());
        }
        assert!(decode_state_vector(b"\xff\xff\xff").is_err());
    }
}
