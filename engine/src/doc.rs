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

use yrs::block::ClientID;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Doc, GetString, Observable, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact,
    Update,
};

use crate::changes::{self, ChangeLog, TextChange, LOCAL_ORIGIN};
use crate::error::{EngineError, Result};

/// Key of the observer that records remote changes.
const CHANGES_OBSERVER: &str = "concord-changes";

mod bounds;
pub(crate) mod depth;
mod yjs_order;

pub(crate) use bounds::Refs;

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
    /// Remote changes recorded since the last [`Document::take_changes`], when tracking.
    changes: Option<ChangeLog>,
    /// Updates that arrived ahead of earlier changes of one of their clients, kept here
    /// instead of in yrs (see [`Document::apply_decoded`]) and retried after every change.
    /// v2 bytes: a decoded `Update` is not `Send`, and a room lives in a server task.
    held: Vec<Vec<u8>>,
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
        Document::with_gc(client_id, true)
    }

    /// A document that keeps deleted content (yrs `skip_gc`): for a short-lived copy that is
    /// edited once and dropped, where collecting what an edit deletes is wasted work (it was
    /// most of the commit of a whole-document restore, measured in
    /// `server/benches/history.rs`). A long-lived replica uses [`Document::new`].
    pub fn keeping_deleted(client_id: u64) -> Self {
        Document::with_gc(client_id, false)
    }

    fn with_gc(client_id: u64, gc: bool) -> Self {
        let options = Options {
            client_id: ClientID::new(client_id & MAX_CLIENT_ID),
            offset_kind: OffsetKind::Utf16,
            skip_gc: !gc,
            ..Options::default()
        };
        let doc = Doc::with_options(options);
        let body = doc.get_or_insert_text(BODY);
        Document {
            doc,
            body,
            changes: None,
            held: Vec::new(),
        }
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
        let mut txn = self.doc.transact_mut_with(LOCAL_ORIGIN);
        self.edit_in(&mut txn, index, len, text)?;
        Ok(txn.encode_update_v2())
    }

    /// Applies `edits` (`(index, len, text)`, each against the text the ones before it left) in
    /// one transaction and returns their single v2 update. One transaction instead of one per
    /// edit: a restore of a large document is hundreds of hunks, and committing and encoding
    /// each one alone costs several times the edits themselves. On an out-of-bounds edit the
    /// ones before it stay applied here and no update is returned.
    ///
    /// Edits in document order (each at or after where the one before it ended, as a diff
    /// gives them) are applied in one walk of the text (see [`apply_edits`]).
    pub fn replace_many(&mut self, edits: &[(u32, u32, &str)]) -> Result<Vec<u8>> {
        let mut txn = self.doc.transact_mut_with(LOCAL_ORIGIN);
        if !apply_edits(&self.body, &mut txn, edits)? {
            for &(index, len, text) in edits {
                self.edit_in(&mut txn, index, len, text)?;
            }
        }
        Ok(txn.encode_update_v2())
    }

    /// Applies an edit without encoding it: for callers that encode many edits at once later.
    pub fn replace_silent(&mut self, index: u32, len: u32, text: &str) -> Result<()> {
        let mut txn = self.doc.transact_mut_with(LOCAL_ORIGIN);
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

    /// This document's state vector, v1-encoded (the encoding Yjs uses for state vectors), with
    /// clients in Yjs's order, so the bytes are the ones Yjs writes.
    pub fn state_vector(&self) -> Vec<u8> {
        yjs_order::state_vector(&self.doc.transact().state_vector())
    }

    /// Everything this document has that a peer with state vector `sv` (v1 bytes) lacks, as one
    /// v2 update. `None` means the whole document.
    ///
    /// Only what is integrated: not what yrs holds pending (unlike Yjs's
    /// `encodeStateAsUpdate`). A replica must not pass on changes it does not have itself: a
    /// pending deletion of text it never received makes the room refuse the whole update as
    /// `missing_dependencies`, and when several clients each forward such a deletion of what
    /// only another has, every resend is refused forever (found by the lossy-network tests).
    /// And a saved state that includes a pending update holds back every later block of its
    /// client when loaded, so a reload would hide text it showed. What is pending came from a
    /// peer that has it.
    pub fn encode_state_as_update(&self, sv: Option<&[u8]>) -> Result<Vec<u8>> {
        let sv = match sv {
            Some(bytes) => decode_state_vector(bytes)?,
            None => StateVector::default(),
        };
        let txn = self.doc.transact();
        let update = txn.encode_diff_v2(&sv);
        // Delete-set clients in Yjs's order, so the bytes are the ones Yjs writes.
        Ok(yjs_order::yjs_order(update, &txn.snapshot().delete_set))
    }

    /// [`Document::encode_state_as_update`] in the v1 encoding, for the Yjs protocols
    /// (y-websocket and Hocuspocus clients speak v1).
    pub fn encode_state_as_update_v1(&self, sv: Option<&[u8]>) -> Result<Vec<u8>> {
        let sv = match sv {
            Some(bytes) => decode_state_vector(bytes)?,
            None => StateVector::default(),
        };
        Ok(self.doc.transact().encode_diff_v1(&sv))
    }

    /// Whether a v1 update would change this document: items it does not hold, or deletions
    /// of items not yet deleted. For a client that may not write: Hocuspocus answers a
    /// read-only provider's sync step 2 with `SyncStatus` 1 when it adds nothing (the usual
    /// case, a client holding only what the room sent it) and 0 when it was refused.
    pub fn would_change_v1(&self, bytes: &[u8]) -> Result<bool> {
        guarded(|| bounds::check_v1(bytes, bounds::Source::Untrusted))
            .map_err(|reason| EngineError::InvalidUpdate { reason })?
            .map_err(|reason| EngineError::InvalidUpdate { reason })?;
        let update = guarded(|| Update::decode_v1(bytes))
            .map_err(|reason| EngineError::InvalidUpdate { reason })?
            .map_err(|e| EngineError::InvalidUpdate {
                reason: e.to_string(),
            })?;
        let txn = self.doc.transact();
        let have = txn.state_vector();
        if update
            .state_vector()
            .iter()
            .any(|(client, clock)| *clock > have.get(client))
        {
            return Ok(true);
        }
        let deleted = txn.snapshot().delete_set;
        Ok(!update.delete_set().diff(&deleted).is_empty())
    }

    /// The full state in canonical form: byte-equal on every replica holding the same changes.
    ///
    /// `encode_state_as_update(None)` means the same document on every such replica but not
    /// always the same bytes: depending on the order updates arrived in, yrs 0.28.1 can leave
    /// adjacent blocks of one client split where Yjs merges them (a few percent of random
    /// delivery orders in the convergence tests). Loading the state into a fresh document merges
    /// them, so this costs one extra load and encode; use it to compare replicas, not on hot
    /// paths.
    pub fn canonical_state(&self) -> Result<Vec<u8>> {
        let state = self.encode_state_as_update(None)?;
        Document::from_update(self.client_id(), &state)?.encode_state_as_update(None)
    }

    /// The whole document including what is pending, for the compaction fold: a committed
    /// update that waits for another must survive into the snapshot.
    ///
    /// Encoded as v1 and converted: yrs 0.28.1's v2 encoder writes the length of a skip (a gap
    /// in a pending update) into the length column while its decoder reads it from the main
    /// stream, and yrs unwraps its own re-decode of that, which panics. In v1 both are one
    /// stream, and `Update::encode_v2` uses the correct skip encoder. Without gaps the bytes
    /// are the same as a direct v2 encoding.
    pub(crate) fn encode_state_with_pending(&self) -> Result<Vec<u8>> {
        let state =
            self.encode_via_v1(|txn| txn.encode_state_as_update_v1(&StateVector::default()))?;
        if self.held.is_empty() {
            return Ok(state);
        }
        let mut all = vec![state];
        all.extend(self.held.iter().cloned());
        merge_updates(&all)
    }

    /// Encodes with `encode` (v1) and converts to v2 (see
    /// [`Document::encode_state_with_pending`]).
    fn encode_via_v1(
        &self,
        encode: impl FnOnce(&yrs::Transaction<'_>) -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        let v1 = guarded(|| encode(&self.doc.transact()))
            .map_err(|reason| EngineError::InvalidUpdate { reason })?;
        let update = guarded(|| Update::decode_v1(&v1))
            .map_err(|reason| EngineError::InvalidUpdate { reason })?
            .map_err(|e| EngineError::InvalidUpdate {
                reason: e.to_string(),
            })?;
        // Delete-set clients in Yjs's order, so the bytes are the ones Yjs writes.
        Ok(yjs_order::yjs_order(
            update.encode_v2(),
            update.delete_set(),
        ))
    }

    /// Applies a v2 update (from a peer, the server or a snapshot).
    ///
    /// The bytes are fully decoded before the document is touched, so undecodable input changes
    /// nothing. Nesting is bounded but the number of blocks is not, because a document's own
    /// state can be denser than any one update (see [`decode_update`], which bounds both and is
    /// what [`crate::RoomState::handle_op`] uses for bytes from clients). If yrs panics while
    /// integrating a decodable but hostile update, the error is returned and the document must
    /// be treated as poisoned: [`crate::RoomState`] rebuilds from its checkpoint in that case.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<Applied> {
        check_bounds(update, bounds::Source::Accepted)?;
        let decoded = decode_unchecked(update)?;
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

    /// Applies a decoded update (see [`Document::apply_update`]).
    ///
    /// An update with blocks ahead of this document's clock for their client (earlier blocks of
    /// that client missing, before it or inside it) is held here, not given to yrs: yrs 0.28.1
    /// would integrate those blocks at once over a "skip", and a document with skips encodes
    /// its state wrongly in v2 (the skip's length goes to the wrong column), sends diffs that
    /// stop at the gap, and can leave blocks pending forever after their dependency arrived
    /// (all found by the convergence and lossy-network tests). Held updates are retried after
    /// every change, and with what yrs holds pending when none fits alone.
    pub(crate) fn apply_decoded(&mut self, update: Update) -> Result<Applied> {
        let mut applied = if self.follows(&update) {
            self.integrate(update)?
        } else {
            self.held.push(update.encode_v2());
            Applied::default()
        };
        applied.changed |= self.retry_held();
        applied.pending = self.has_pending();
        Ok(applied)
    }

    /// Integrates every held update that now follows, and all of them merged with what yrs
    /// holds pending once none does alone: together they may leave no gap (a held update can
    /// carry what a pending one waits for, while it waits for that one's blocks itself).
    /// Returns whether anything changed.
    fn retry_held(&mut self) -> bool {
        let mut changed = false;
        while !self.held.is_empty() {
            let mut ready = Vec::new();
            for bytes in std::mem::take(&mut self.held) {
                match decode_unchecked(&bytes) {
                    Ok(update) if self.follows(&update) => ready.push(update),
                    Ok(_) => self.held.push(bytes),
                    Err(_) => {}
                }
            }
            if !ready.is_empty() {
                for update in ready {
                    // A held update that fails now would have failed on arrival too.
                    if let Ok(applied) = self.integrate(update) {
                        changed |= applied.changed;
                    }
                }
                continue;
            }
            let mut encoded = self.held.clone();
            if let Some(pending) = self.doc.transact().store().pending_update() {
                encoded.push(pending.update.encode_v2());
            }
            if encoded.len() < 2 {
                break;
            }
            match merge_updates(&encoded).and_then(|m| decode_unchecked(&m)) {
                Ok(merged) if self.follows(&merged) => {
                    self.held.clear();
                    if let Ok(applied) = self.integrate(merged) {
                        changed |= applied.changed;
                    }
                }
                _ => break,
            }
        }
        changed
    }

    /// True when every block of `update` continues what this document has of its client.
    fn follows(&self, update: &Update) -> bool {
        let local = self.doc.transact().state_vector();
        update.insertions(true).iter().all(|(client, ranges)| {
            let mut clock = local.get(client);
            ranges.iter().all(|range| {
                let next = range.start <= clock;
                clock = clock.max(range.end);
                next
            })
        })
    }

    fn integrate(&mut self, update: Update) -> Result<Applied> {
        self.integrate_recording(update, false)
            .map(|(applied, _)| applied)
    }

    /// Applies `update` like [`Document::apply_decoded`] and also returns the v2 update of
    /// exactly what it integrated: the part of `update` this document did not have.
    ///
    /// That is what a room must log and broadcast, not the bytes it received. An update can
    /// repeat items the room has with other content (a forged or corrupted resend); applied,
    /// the repeats are ignored as known, but logged as received they could win when the log is
    /// merged (`RoomState::load`, the compaction fold, a client merging its queue), and the
    /// room would come back from a restart with a document nobody saw (found by the bad-input
    /// tests). An update that does not follow (see [`Document::apply_decoded`]) is held and
    /// integrates nothing.
    pub(crate) fn apply_decoded_recording(&mut self, update: Update) -> Result<(Applied, Vec<u8>)> {
        if !self.follows(&update) {
            self.held.push(update.encode_v2());
            let pending = Applied {
                changed: false,
                pending: true,
            };
            return Ok((pending, Update::EMPTY_V2.to_vec()));
        }
        self.integrate_recording(update, true)
    }

    fn integrate_recording(&mut self, update: Update, record: bool) -> Result<(Applied, Vec<u8>)> {
        let doc = &self.doc;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            let result = txn.apply_update(update);
            let changed = txn.has_changes();
            let integrated = if record && result.is_ok() {
                txn.encode_update_v2()
            } else {
                Vec::new()
            };
            let store = txn.store();
            let pending = store.pending_update().is_some() || store.pending_ds().is_some();
            (result, changed, pending, integrated)
        }));
        match outcome {
            Ok((Ok(()), changed, pending, integrated)) => {
                Ok((Applied { changed, pending }, integrated))
            }
            Ok((Err(e), _, _, _)) => Err(EngineError::InvalidUpdate {
                reason: e.to_string(),
            }),
            Err(panic) => Err(EngineError::InvalidUpdate {
                reason: format!("rejected while integrating: {}", panic_message(&panic)),
            }),
        }
    }

    /// Keeps a position index for the text (yrs's `track_positions`, Concord's patch in
    /// `vendor/yrs`): a few marks kept current through every change, so a local edit finds its
    /// place from the nearest mark instead of walking the text from its start. For replicas
    /// that edit by index (an editor's); a server's room, which only merges updates, does not
    /// need the upkeep.
    pub fn index_positions(&mut self) {
        self.body.track_positions(self.changes.is_some());
    }

    /// Starts recording what remote updates do to the text, as [`TextChange`]s to collect with
    /// [`Document::take_changes`]. Local edits are not recorded (their caller made them).
    /// Indexes positions too ([`Document::index_positions`]): each change's index then comes
    /// from the nearest mark, not from a walk of the whole text.
    pub fn track_changes(&mut self) {
        if self.changes.is_some() {
            return;
        }
        self.body.track_positions(true);
        let log = ChangeLog::default();
        if let Ok(mut log) = log.lock() {
            log.plain_len = self.text().encode_utf16().count() as u32;
        }
        let sink = log.clone();
        let body = self.body.clone();
        self.body.observe(CHANGES_OBSERVER, move |txn, event| {
            changes::record(&sink, &body, txn, event)
        });
        self.changes = Some(log);
    }

    /// The remote changes recorded since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<TextChange> {
        match &self.changes {
            Some(log) => log
                .lock()
                .map(|mut l| std::mem::take(&mut l.changes))
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// True when yrs holds changes it could not integrate yet (waiting for missing updates).
    pub fn has_pending(&self) -> bool {
        let txn = self.doc.transact();
        let store = txn.store();
        store.pending_update().is_some() || store.pending_ds().is_some() || !self.held.is_empty()
    }

    /// Borrow of the underlying yrs document, for observers and advanced callers.
    pub fn yrs(&self) -> &Doc {
        &self.doc
    }

    /// The `body` text, for positions in it (see [`crate::awareness`]).
    pub(crate) fn body(&self) -> &TextRef {
        &self.body
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

/// Decodes a v2 update from an untrusted sender without panicking, and without letting forged
/// counts or nesting in it cost unbounded memory, time or stack: it may declare at most
/// `max(2^20, bytes.len())` blocks, nest values at most 64 deep and create no nested shared
/// type or sub-document (see `doc/bounds.rs`).
pub fn decode_update(bytes: &[u8]) -> Result<Update> {
    decode_untrusted(bytes).map(|(update, _)| update)
}

/// [`decode_update`], with the ids the update refers to (for [`Refs::missing_from`]).
pub(crate) fn decode_untrusted(bytes: &[u8]) -> Result<(Update, Refs)> {
    let refs = check_bounds(bytes, bounds::Source::Untrusted)?;
    Ok((decode_unchecked(bytes)?, refs))
}

/// The items of an update the room already holds (for [`depth::Depths`]), without decoding it.
pub(crate) fn items_of(bytes: &[u8]) -> Result<Vec<bounds::ItemInfo>> {
    Ok(check_bounds(bytes, bounds::Source::Accepted)?.items)
}

/// Decodes an update the room already accepted, with the ids it refers to.
pub(crate) fn decode_accepted(bytes: &[u8]) -> Result<(Update, Refs)> {
    let refs = check_bounds(bytes, bounds::Source::Accepted)?;
    Ok((decode_unchecked(bytes)?, refs))
}

fn decode_unchecked(bytes: &[u8]) -> Result<Update> {
    guarded(|| Update::decode_v2(bytes))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// A v1 update from an untrusted sender (a Yjs client) as v2, the one encoding the room and the
/// store keep. The v1 bytes are walked under the same bounds as a v2 op before yrs decodes
/// them, and the v2 result is checked again as an op when the room applies it.
pub fn update_v1_to_v2(bytes: &[u8]) -> Result<Vec<u8>> {
    guarded(|| bounds::check_v1(bytes, bounds::Source::Untrusted))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|reason| EngineError::InvalidUpdate { reason })?;
    let update = guarded(|| Update::decode_v1(bytes))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })?;
    guarded(|| update.encode_v2()).map_err(|reason| EngineError::InvalidUpdate { reason })
}

/// An update the room accepted (v2) in the v1 encoding, for Yjs clients.
pub fn update_v2_to_v1(bytes: &[u8]) -> Result<Vec<u8>> {
    check_bounds(bytes, bounds::Source::Accepted)?;
    let update = decode_unchecked(bytes)?;
    guarded(|| update.encode_v1()).map_err(|reason| EngineError::InvalidUpdate { reason })
}

/// Applies `edits` (`(index, len, text)`, each against the text the ones before it left) to
/// `body` in one walk from its start, as a Yjs delta (retain, delete, insert), and returns true;
/// or returns false, changing nothing, when they are not in document order (an edit starting
/// before the end of the one before it), for the caller to apply one by one.
///
/// Why: every positional edit looks its index up from the start of the text (or a nearby
/// search marker), through every deleted item on the way; a restore of a document with a long
/// history is hundreds of hunks over tens of thousands of tombstones, and one walk for all of
/// them is several times cheaper (measured in `server/benches/history.rs`).
pub(crate) fn apply_edits(
    body: &TextRef,
    txn: &mut yrs::TransactionMut<'_>,
    edits: &[(u32, u32, &str)],
) -> Result<bool> {
    let text_len = body.len(txn);
    // Validate everything before touching the document: yrs panics on a delete past the end.
    let (mut at, mut len_now) = (0u32, text_len);
    for &(index, len, text) in edits {
        if index < at {
            return Ok(false);
        }
        match index.checked_add(len) {
            Some(end) if end <= len_now => {}
            _ => {
                return Err(EngineError::OutOfBounds {
                    index,
                    len,
                    text_len: len_now,
                })
            }
        }
        let inserted = text.encode_utf16().count() as u32;
        len_now = len_now - len + inserted;
        at = index + inserted;
    }
    let mut delta: Vec<yrs::types::Delta<String>> = Vec::with_capacity(edits.len() * 3);
    let mut at = 0u32;
    for &(index, len, text) in edits {
        if index > at {
            delta.push(yrs::types::Delta::Retain(index - at, None));
        }
        if len > 0 {
            delta.push(yrs::types::Delta::Deleted(len));
        }
        let inserted = text.encode_utf16().count() as u32;
        if inserted > 0 {
            delta.push(yrs::types::Delta::Inserted(text.to_owned(), None));
        }
        at = index + inserted;
    }
    catch_unwind(AssertUnwindSafe(|| body.apply_delta(txn, delta))).map_err(|_| {
        EngineError::InvalidUpdate {
            reason: "edits panicked while applying".to_owned(),
        }
    })?;
    Ok(true)
}

/// Merges v2 updates into one (no document needed), guarding yrs against hostile input.
pub fn merge_updates<B: AsRef<[u8]>>(updates: &[B]) -> Result<Vec<u8>> {
    let slices: Vec<&[u8]> = updates.iter().map(|u| u.as_ref()).collect();
    for slice in &slices {
        check_bounds(slice, bounds::Source::Accepted)?;
    }
    guarded(|| yrs::merge_updates_v2(slices))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// The state vector (v1 bytes) an update would bring a document to, read from the update alone.
pub fn state_vector_of_update(update: &[u8]) -> Result<Vec<u8>> {
    check_bounds(update, bounds::Source::Accepted)?;
    guarded(|| yrs::encode_state_vector_from_update_v2(update))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|e| EngineError::InvalidUpdate {
            reason: e.to_string(),
        })
}

/// Rejects v2 bytes whose decoding or integration yrs could not survive (out of memory, or a
/// stack overflow, which aborts the process: `catch_unwind` cannot stop it). See `doc/bounds.rs`.
fn check_bounds(bytes: &[u8], source: bounds::Source) -> Result<Refs> {
    guarded(|| bounds::check(bytes, source))
        .map_err(|reason| EngineError::InvalidUpdate { reason })?
        .map_err(|reason| EngineError::InvalidUpdate { reason })
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

    /// The one-walk path of `replace_many` reads exactly as the edits applied one by one, on
    /// a text with tombstones and non-ASCII characters; edits out of order still apply (one by
    /// one); an out-of-bounds edit is refused before anything changes.
    #[test]
    fn replace_many_in_one_walk_equals_edit_by_edit() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let seed = 0x5eed_0015;
        println!("seed {seed:#x}");
        let mut rng = SmallRng::seed_from_u64(seed);
        // The base text has no surrogate pairs, so that no random index falls inside one (a
        // caller's positions are on character boundaries); inserted text may have them.
        let bmp: Vec<char> = "ab c\nd中é".chars().collect();
        let any: Vec<char> = "ab c\nd😀中é".chars().collect();
        let pick = |rng: &mut SmallRng, set: &[char], n: usize| -> String {
            (0..n).map(|_| set[rng.gen_range(0..set.len())]).collect()
        };
        for round in 0..200 {
            let mut base = Document::new(1);
            let first = pick(&mut rng, &bmp, 60);
            base.insert(0, &first).unwrap();
            // Tombstones: delete a few runs.
            for _ in 0..5 {
                let len = base.len();
                let at = rng.gen_range(0..len);
                let n = rng.gen_range(0..=(len - at).min(4));
                base.delete(at, n).unwrap();
            }
            let state = base.encode_state_as_update(None).unwrap();
            // Edits in document order against a growing cursor.
            let mut edits: Vec<(u32, u32, String)> = Vec::new();
            let (mut at, mut len_now) = (0u32, base.len());
            for _ in 0..rng.gen_range(0..8) {
                if at > len_now {
                    break;
                }
                let index = rng.gen_range(at..=len_now);
                let del = rng.gen_range(0..=(len_now - index).min(6));
                let n = rng.gen_range(0..5);
                let text = pick(&mut rng, &any, n);
                let ins = text.encode_utf16().count() as u32;
                len_now = len_now - del + ins;
                at = index + ins;
                edits.push((index, del, text));
            }
            let edits: Vec<(u32, u32, &str)> =
                edits.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
            let mut one_walk = Document::from_update(2, &state).unwrap();
            let mut one_by_one = Document::from_update(3, &state).unwrap();
            let walked = one_walk.replace_many(&edits);
            let mut stepped = Ok(());
            for &(i, n, t) in &edits {
                if let Err(e) = one_by_one.replace_silent(i, n, t) {
                    stepped = Err(e);
                    break;
                }
            }
            walked.unwrap();
            stepped.unwrap();
            assert_eq!(
                one_walk.text(),
                one_by_one.text(),
                "round {round}: {edits:?}"
            );
        }

        let mut doc = Document::new(4);
        doc.insert(0, "hello world").unwrap();
        // Out of order: applied one by one.
        doc.replace_many(&[(6, 5, "there"), (0, 5, "HELLO")])
            .unwrap();
        assert_eq!(doc.text(), "HELLO there");
        // Out of bounds, found before anything is touched.
        let before = doc.encode_state_as_update(None).unwrap();
        assert!(doc.replace_many(&[(0, 1, "h"), (11, 1, "")]).is_err());
        assert_eq!(doc.encode_state_as_update(None).unwrap(), before);
    }

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
    fn a_readers_step_2_changes_nothing_unless_it_carries_edits() {
        let mut room = Document::new(1);
        room.insert(0, "hello world").unwrap();
        room.delete(0, 6).unwrap(); // the delete set is not empty
        let state = room.encode_state_as_update_v1(None).unwrap();
        let mut reader = Document::new(2);
        reader
            .apply_update(&room.encode_state_as_update(None).unwrap())
            .unwrap();
        // What a provider sends in answer to the room's step 1: its diff, with its whole
        // delete set.
        let room_sv = room.state_vector();
        let step2 = reader.encode_state_as_update_v1(Some(&room_sv)).unwrap();
        assert!(!room.would_change_v1(&step2).unwrap());
        assert!(!room.would_change_v1(&state).unwrap());
        reader.insert(0, "x").unwrap();
        let step2 = reader.encode_state_as_update_v1(Some(&room_sv)).unwrap();
        assert!(room.would_change_v1(&step2).unwrap());
        let mut deleter =
            Document::from_update(3, &room.encode_state_as_update(None).unwrap()).unwrap();
        deleter.delete(0, 1).unwrap();
        let step2 = deleter.encode_state_as_update_v1(Some(&room_sv)).unwrap();
        assert!(room.would_change_v1(&step2).unwrap());
        assert!(room.would_change_v1(&[0xff, 0xff]).is_err());
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
        assert!(
            !b.apply_update(&u).unwrap().changed,
            "a duplicate adds nothing"
        );
        let d = a.delete(0, 1).unwrap();
        assert!(
            b.apply_update(&d).unwrap().changed,
            "a delete-only update changes the text"
        );
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
        for bytes in [
            &b""[..],
            b"\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"hello",
        ] {
            assert!(doc.apply_update(bytes).is_err() || doc.is_empty());
        }
        assert!(decode_state_vector(b"\xff\xff\xff").is_err());
    }

    /// Client 1 and client 2 build on each other: 1 types "x" then "y", 2 puts "z" between
    /// them, 1 puts "w" before "z".
    fn interleaved() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut a = Document::new(1);
        let mut c = Document::new(2);
        let base = a.insert(0, "x").unwrap();
        let a1 = a.insert(1, "y").unwrap(); // 1#1, right of x
        c.apply_update(&base).unwrap();
        c.apply_update(&a1).unwrap();
        let c0 = c.insert(1, "z").unwrap(); // 2#0, between x and 1#1
        a.apply_update(&c0).unwrap();
        let a2 = a.insert(1, "w").unwrap(); // 1#2, between x and 2#0
        assert_eq!(a.text(), "xwzy");
        (base, a1, c0, a2)
    }

    #[test]
    fn updates_that_arrive_in_any_order_all_integrate() {
        let (base, a1, c0, a2) = interleaved();
        let mut d = Document::new(3);
        d.apply_update(&base).unwrap();
        assert!(d.apply_update(&a2).unwrap().pending, "1#2 comes before 1#1");
        assert!(d.apply_update(&c0).unwrap().pending, "2#0 waits for 1#1");
        let last = d.apply_update(&a1).unwrap();
        assert!(last.changed && !last.pending && !d.has_pending());
        assert_eq!(d.text(), "xwzy");
    }

    #[test]
    fn an_update_ahead_of_its_client_waits_instead_of_leaving_a_gap() {
        let (base, a1, c0, a2) = interleaved();
        let mut a = Document::from_update(1, &base).unwrap();
        for u in [&a1, &c0, &a2] {
            a.apply_update(u).unwrap();
        }
        let a3 = a.insert(0, "<").unwrap(); // 1#3, placed by "x" alone
        let mut d = Document::from_update(3, &base).unwrap();
        // yrs alone would show "<x" at once over a gap where 1#1 and 1#2 belong; documents with
        // such gaps encode states that do not decode, and diffs that stop at the gap.
        let held = d.apply_update(&a3).unwrap();
        assert!(held.pending && !held.changed);
        assert_eq!(d.text(), "x");
        let state = d.encode_state_as_update(None).unwrap();
        assert_eq!(Document::from_update(4, &state).unwrap().text(), "x");
        // 1#1 and 1#3 merged: a gap inside, so all of it waits too.
        let merged = merge_updates(&[&a1, &a3]).unwrap();
        assert!(d.apply_update(&merged).unwrap().pending);
        assert_eq!(d.text(), "x");
        assert!(d.apply_update(&c0).unwrap().pending);
        // 1#2 fills the gap: what waits goes in together.
        let last = d.apply_update(&a2).unwrap();
        assert!(last.changed && !last.pending && !d.has_pending());
        assert_eq!(d.text(), a.text());
    }

    #[test]
    fn documents_can_move_between_threads() {
        // A room lives in a server task: nothing a document holds (held updates included) may
        // make it `!Send`.
        fn send<T: Send>() {}
        send::<Document>();
        send::<crate::RoomState>();
        send::<crate::ClientSession>();
    }

    #[test]
    fn the_state_with_pending_keeps_what_waits() {
        let (base, a1, c0, a2) = interleaved();
        let mut d = Document::from_update(3, &base).unwrap();
        d.apply_update(&a1).unwrap();
        d.apply_update(&a2).unwrap(); // waits for 2#0
        assert!(d.has_pending());
        // The state is what the document shows; the fold's state keeps what waits.
        let shown = d.encode_state_as_update(None).unwrap();
        assert!(!Document::from_update(4, &shown).unwrap().has_pending());
        let full = d.encode_state_with_pending().unwrap();
        let mut e = Document::from_update(5, &full).unwrap();
        assert!(e.has_pending());
        e.apply_update(&c0).unwrap();
        assert!(!e.has_pending());
        assert_eq!(e.text(), "xwzy");
    }
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    /// Replicas that received the same changes in different orders have the same canonical
    /// state, and canonicalizing is idempotent.
    #[test]
    fn canonical_state_is_order_independent() {
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        let ua = [
            a.insert(0, "hello").unwrap(),
            a.insert(5, " world").unwrap(),
        ];
        let ub = [b.insert(0, "abc").unwrap(), b.delete(1, 1).unwrap()];
        let mut x = Document::new(3);
        let mut y = Document::new(4);
        for u in ua.iter().chain(ub.iter()) {
            x.apply_update(u).unwrap();
        }
        for u in ub.iter().rev().chain(ua.iter().rev()) {
            y.apply_update(u).unwrap();
        }
        let cx = x.canonical_state().unwrap();
        assert_eq!(cx, y.canonical_state().unwrap());
        assert_eq!(
            Document::from_update(5, &cx)
                .unwrap()
                .canonical_state()
                .unwrap(),
            cx
        );
    }
}
