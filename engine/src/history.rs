//! Reading the past of a room: its state at any seq, what changed between two points (by the
//! CRDT's stable ids), the edit that brings a past version back, who wrote what, and the
//! history grouped for a scrubber. Pure functions over bytes the store hands in (a checkpoint
//! and the committed ops after it); the server only reads rows and serves JSON.
//!
//! The past is rebuilt in a yrs document that keeps deleted content (`skip_gc`), so text
//! removed between two points can still be shown and restored. Positions are UTF-16 offsets
//! into the room's `body` text, as everywhere in the engine. Only `body` is compared and
//! restored: other shared types (a ProseMirror `XmlFragment`, maps) come back through the
//! full `state` of [`Past::state`], not through a text diff.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use yrs::types::text::{ChangeKind, Diff, YChange};
use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, GetString, IdSet, OffsetKind, Options, ReadTxn, Snapshot, StateVector, Text,
    TextRef, Transact, Update,
};

use crate::doc::{merge_updates, BODY};
use crate::error::{EngineError, Result};

/// What was visible at a point: its state vector and delete set (yrs' snapshot).
pub use yrs::Snapshot as PastSnapshot;

/// The yrs client id the past is rebuilt under (it never edits).
const PAST_CLIENT_ID: u64 = 0;

/// One committed op as the store keeps it.
#[derive(Debug, Clone, Copy)]
pub struct OpRecord<'a> {
    /// Room seq.
    pub seq: u64,
    /// v2 update bytes.
    pub update: &'a [u8],
    /// Commit time, unix ms.
    pub time_ms: i64,
    /// Who sent it, if known.
    pub author: Option<&'a str>,
}

/// A room's document at one seq, rebuilt with its deleted content kept.
pub struct Past {
    doc: Doc,
    body: TextRef,
    seq: u64,
}

impl std::fmt::Debug for Past {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Past").field("seq", &self.seq).finish()
    }
}

fn invalid(e: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidUpdate {
        reason: e.to_string(),
    }
}

/// Decodes a stored update (written by the room, so trusted, but still not allowed to panic).
fn decode(update: &[u8]) -> Result<Update> {
    std::panic::catch_unwind(|| Update::decode_v2(update))
        .map_err(|_| invalid("update decoder panicked"))?
        .map_err(invalid)
}

impl Past {
    /// The document at `seq`: `checkpoint` (the full state at some seq at or below it, if any)
    /// plus every op after the checkpoint up to `seq`, in order. The ops are merged and applied
    /// in one transaction (yrs pays per transaction).
    pub fn build<B: AsRef<[u8]>>(checkpoint: Option<&[u8]>, ops: &[B], seq: u64) -> Result<Past> {
        Past::build_as(PAST_CLIENT_ID, checkpoint, ops, seq)
    }

    /// [`Past::build`] under the yrs client `client_id`: a past that will be edited by
    /// [`restore_in_place`] as that (new, unique) client.
    pub fn build_as<B: AsRef<[u8]>>(
        client_id: u64,
        checkpoint: Option<&[u8]>,
        ops: &[B],
        seq: u64,
    ) -> Result<Past> {
        let doc = Doc::with_options(Options {
            client_id: ClientID::new(client_id & crate::doc::MAX_CLIENT_ID),
            offset_kind: OffsetKind::Utf16,
            skip_gc: true,
            ..Options::default()
        });
        let body = doc.get_or_insert_text(BODY);
        let mut past = Past { doc, body, seq };
        if let Some(checkpoint) = checkpoint {
            past.apply(checkpoint)?;
        }
        past.advance(ops, seq)?;
        Ok(past)
    }

    /// Moves this document forward to `seq` with the ops after its current seq, in order.
    pub fn advance<B: AsRef<[u8]>>(&mut self, ops: &[B], seq: u64) -> Result<()> {
        match ops.len() {
            0 => {}
            1 => self.apply(ops[0].as_ref())?,
            _ => self.apply(&merge_updates(ops)?)?,
        }
        self.seq = seq;
        Ok(())
    }

    fn apply(&self, update: &[u8]) -> Result<()> {
        let update = decode(update)?;
        let mut txn = self.doc.transact_mut();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| txn.apply_update(update)))
            .map_err(|_| invalid("update panicked while applying"))?
            .map_err(invalid)
    }

    /// The seq this is the document at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The text of `body`.
    pub fn text(&self) -> String {
        self.body.get_string(&self.doc.transact())
    }

    /// The full state as one v2 update (every shared type, not only `body`).
    pub fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v2(&StateVector::default())
    }

    /// What was visible at this point: the state vector and the delete set.
    pub fn snapshot(&self) -> Snapshot {
        self.doc.transact().snapshot()
    }

    /// The `body` chunks visible in `hi` or `lo`, in document order, each marked added (only
    /// in `hi`... see yrs' `diff_range`), removed, or unchanged.
    fn chunks(&self, hi: &Snapshot, lo: &Snapshot) -> Vec<Diff<YChange>> {
        let mut txn = self.doc.transact_mut();
        self.body
            .diff_range(&mut txn, Some(hi), Some(lo), YChange::identity)
    }
}

/// A run of text with a stable id: the id of its first character (`"client:clock"`), which
/// stays the same on every replica, across restarts and instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    /// `client:clock` of the first character.
    pub id: String,
    /// UTF-16 offset: in the later text for added runs, in the earlier text for removed ones.
    pub index: u32,
    /// UTF-16 units.
    pub len: u32,
    /// The characters.
    pub text: String,
}

/// What changed in `body` between two points.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TextDiff {
    /// Runs present at the later point only.
    pub added: Vec<Span>,
    /// Runs present at the earlier point only.
    pub removed: Vec<Span>,
    /// Always empty: a Yjs text has no move operation (a cut and paste is a removal and an
    /// addition of new characters).
    pub moved: Vec<Span>,
}

fn utf16_len(s: &str) -> u32 {
    s.encode_utf16().count() as u32
}

fn chunk_text(chunk: &Diff<YChange>) -> Option<String> {
    match &chunk.insert {
        yrs::Out::Any(yrs::Any::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn id_string(change: &YChange) -> String {
    format!("{}:{}", change.id.client.get(), change.id.clock)
}

/// What changed in `body` from the point `from` to the document `to` (which must be the same
/// history at a later or equal seq, rebuilt from a checkpoint at or below `from`, so that text
/// removed in between is still in it).
pub fn diff(from: &Snapshot, to: &Past) -> TextDiff {
    let mut out = TextDiff::default();
    let (mut at_to, mut at_from) = (0u32, 0u32);
    for chunk in to.chunks(&to.snapshot(), from) {
        let Some(text) = chunk_text(&chunk) else {
            continue;
        };
        let len = utf16_len(&text);
        match &chunk.ychange {
            None => {
                at_to += len;
                at_from += len;
            }
            Some(change) if change.kind == ChangeKind::Added => {
                out.added.push(Span {
                    id: id_string(change),
                    index: at_to,
                    len,
                    text,
                });
                at_to += len;
            }
            Some(change) => {
                out.removed.push(Span {
                    id: id_string(change),
                    index: at_from,
                    len,
                    text,
                });
                at_from += len;
            }
        }
    }
    out
}

/// The edit that makes `body` of `head` read as it did at the point `target` (an earlier point
/// of the same history; `head` rebuilt from a checkpoint at or below it): deletes what was
/// written since and writes again what was deleted since, as ordinary ops of a new client
/// `client_id`. Restoring is an edit, not a rollback: edits made concurrently merge with it,
/// and it can itself be undone by restoring a later point. `None` if nothing differs.
pub fn restore_update(head: &Past, target: &Snapshot, client_id: u64) -> Result<Option<Vec<u8>>> {
    let edits = restore_edits_by_ids(head, target);
    if edits.is_empty() {
        return Ok(None);
    }
    let mut doc = crate::Document::from_update(client_id, &head.state())?;
    let edits: Vec<(u32, u32, &str)> = edits.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
    doc.replace_many(&edits).map(Some)
}

/// [`restore_update`] made by editing `head` itself, which must have been built with
/// [`Past::build_as`] for the restoring client: no copy of the whole document (an encode and a
/// decode, most of a restore's cost on a large document). Afterwards `head` reads as `target`.
pub fn restore_in_place(head: &mut Past, target: &Snapshot) -> Result<Option<Vec<u8>>> {
    let edits = restore_edits_by_ids(head, target);
    if edits.is_empty() {
        return Ok(None);
    }
    let mut txn = head.doc.transact_mut();
    let edits: Vec<(u32, u32, &str)> = edits.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
    // In document order by construction, so one walk of the text.
    if !crate::doc::apply_edits(&head.body, &mut txn, &edits)? {
        return Err(invalid("restore edits out of order"));
    }
    Ok(Some(txn.encode_update_v2()))
}

/// The edits (`(index, delete, insert)`, each against the text the ones before it left) that
/// make `head` read as at `target`: what was written since goes, what was deleted since comes
/// back.
fn restore_edits_by_ids(head: &Past, target: &Snapshot) -> Vec<(u32, u32, String)> {
    let chunks = head.chunks(target, &head.snapshot());
    let mut edits = Vec::new();
    let mut at = 0u32;
    for chunk in &chunks {
        let Some(text) = chunk_text(chunk) else {
            continue;
        };
        let len = utf16_len(&text);
        match &chunk.ychange {
            None => at += len,
            // Only at the target point: write it again.
            Some(change) if change.kind == ChangeKind::Added => {
                edits.push((at, 0, text));
                at += len;
            }
            // Written since the target point: delete it.
            Some(_) => edits.push((at, len, String::new())),
        }
    }
    edits
}

/// The edit that makes `body` of the document `head_state` (a full state) read `target`, from a
/// line diff of the two texts: what a restore falls back to when the point is so far back
/// that rebuilding everything written since (to restore by ids, [`restore_update`]) would
/// cost more than the document itself. Lines are the unit, so unchanged lines keep their
/// identity and concurrent edits inside them merge; the result reads exactly `target`.
pub fn restore_update_by_text(
    head_state: &[u8],
    target: &str,
    client_id: u64,
) -> Result<Option<Vec<u8>>> {
    let mut doc = crate::Document::from_update(client_id, head_state)?;
    restore_edits(&mut doc, target)
}

/// A room's document at a seq for editing or reading its text: `checkpoint` (a full state at
/// or below the seq) plus the ops after it, as a [`crate::Document`] of `client_id`. Cheaper
/// than [`Past`] when deleted content is not needed (no second decode of an encoded state).
pub fn document_at<B: AsRef<[u8]>>(
    client_id: u64,
    checkpoint: Option<&[u8]>,
    ops: &[B],
) -> Result<crate::Document> {
    // A copy to read or edit once: collecting deleted content would be wasted work.
    let mut doc = crate::Document::keeping_deleted(client_id);
    if let Some(state) = checkpoint {
        doc.apply_update(state)?;
    }
    match ops.len() {
        0 => {}
        1 => {
            doc.apply_update(ops[0].as_ref())?;
        }
        _ => {
            doc.apply_update(&merge_updates(ops)?)?;
        }
    }
    Ok(doc)
}

/// Positional edits a thin client made against the room as it was at an older seq, turned
/// into one update that lands where they were meant in the room as it is now.
///
/// `base` is the room at that seq ([`document_at`], under a client id of its own). The edits
/// (`(index, delete, insert)` in UTF-16 units, each against the text the ones before it left)
/// are applied to it, and the update they produce is returned. That update names what it
/// touched by the CRDT's ids, not by offsets: each insertion is anchored to the characters
/// that surrounded it at the base seq and each deletion names the characters it removed, so
/// applied to the room now it keeps what others typed since, deletes nothing they wrote, and a
/// range someone else already deleted is simply deleted once. No transform functions: the
/// rebase is the CRDT's own merge. `None` when the edits change nothing.
///
/// Fails with [`EngineError::OutOfBounds`] if an edit addresses text outside the base version,
/// and with [`EngineError::SplitsCharacter`] if one starts or ends inside a surrogate pair.
pub fn rebase_edits(
    base: &mut crate::Document,
    edits: &[(u32, u32, &str)],
) -> Result<Option<Vec<u8>>> {
    if edits
        .iter()
        .all(|&(_, delete, insert)| delete == 0 && insert.is_empty())
    {
        return Ok(None);
    }
    // yrs splits a character whose surrogate pair an offset falls inside, leaving two U+FFFD
    // in its place. The offsets move with every edit, so rather than track them, compare the
    // replacement characters before and after: more after than were there or inserted means
    // a split (the scratch `base` is the caller's to drop).
    let replacements = |text: &str| text.matches('\u{FFFD}').count();
    let allowed = replacements(&base.text())
        + edits
            .iter()
            .map(|&(_, _, insert)| replacements(insert))
            .sum::<usize>();
    let update = base.replace_many(edits)?;
    if replacements(&base.text()) > allowed {
        return Err(EngineError::SplitsCharacter);
    }
    Ok(Some(update))
}

/// [`restore_update_by_text`] on a document already at the head (see [`document_at`]).
pub fn restore_edits(doc: &mut crate::Document, target: &str) -> Result<Option<Vec<u8>>> {
    let current = doc.text();
    if current == target {
        return Ok(None);
    }
    // A line diff by imara-diff's Histogram algorithm (git's): a far restore compares two
    // unrelated-looking versions of a thousand lines, where Myers (the `similar` crate) spent
    // most of the restore's budget.
    let input = imara_diff::intern::InternedInput::new(
        imara_diff::sources::lines_with_terminator(&current),
        imara_diff::sources::lines_with_terminator(target),
    );
    let old: Vec<&str> = current.split_inclusive('\n').collect();
    let new: Vec<&str> = target.split_inclusive('\n').collect();
    // UTF-16 offset of every old line's start.
    let mut starts = Vec::with_capacity(old.len() + 1);
    let mut units = 0u32;
    starts.push(0);
    for line in &old {
        units += utf16_len(line);
        starts.push(units);
    }
    let mut edits: Vec<(u32, u32, String)> = Vec::new();
    // How much the edits so far moved the old text's offsets.
    let mut shift = 0i64;
    imara_diff::diff(
        imara_diff::Algorithm::Histogram,
        &input,
        |before: std::ops::Range<u32>, after: std::ops::Range<u32>| {
            let (b, a) = (
                before.start as usize..before.end as usize,
                after.start as usize..after.end as usize,
            );
            let deleted = starts[b.end] - starts[b.start];
            let text = new[a].concat();
            let inserted = utf16_len(&text);
            edits.push(((starts[b.start] as i64 + shift) as u32, deleted, text));
            shift += inserted as i64 - deleted as i64;
        },
    );
    let edits: Vec<(u32, u32, &str)> = edits.iter().map(|(i, n, t)| (*i, *n, t.as_str())).collect();
    doc.replace_many(&edits).map(Some)
}

/// Who wrote a run of the current text, and when it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlameSpan {
    /// UTF-16 offset in the text.
    pub index: u32,
    /// UTF-16 units.
    pub len: u32,
    /// The op that wrote it (0 if it is older than the history kept).
    pub seq: u64,
    /// Its author, if known.
    pub author: Option<String>,
    /// Its commit time, unix ms (0 if unknown).
    pub time_ms: i64,
}

/// Which op inserted each id: per client, clock ranges to the op's index in `ops`.
struct Origins {
    by_client: HashMap<u64, BTreeMap<u32, (u32, usize)>>,
}

impl Origins {
    fn of(ops: &[OpRecord<'_>]) -> Result<Origins> {
        let mut by_client: HashMap<u64, BTreeMap<u32, (u32, usize)>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let update = decode(op.update)?;
            for (client, ranges) in update.insertions(true).iter() {
                let map = by_client.entry(client.get()).or_default();
                for range in ranges.iter() {
                    map.insert(range.start, (range.end, i));
                }
            }
        }
        Ok(Origins { by_client })
    }

    /// The op holding `(client, clock)` and the clock its range ends at.
    fn find(&self, client: u64, clock: u32) -> Option<(usize, u32)> {
        let (_, &(end, op)) = self.by_client.get(&client)?.range(..=clock).next_back()?;
        (clock < end).then_some((op, end))
    }
}

/// Who wrote each run of `head`'s text: every visible character's id is looked up in the op
/// that inserted it (`ops`: every op of the room, in seq order). Adjacent runs of the same op
/// are one span.
pub fn blame(head: &Past, ops: &[OpRecord<'_>]) -> Result<Vec<BlameSpan>> {
    let origins = Origins::of(ops)?;
    let empty = Snapshot::new(StateVector::default(), IdSet::default());
    let mut spans: Vec<BlameSpan> = Vec::new();
    let mut at = 0u32;
    let mut push = |index: u32, len: u32, op: Option<&OpRecord<'_>>| {
        let (seq, author, time_ms) = match op {
            Some(op) => (op.seq, op.author.map(str::to_owned), op.time_ms),
            None => (0, None, 0),
        };
        if let Some(last) = spans.last_mut() {
            if last.seq == seq && last.index + last.len == index {
                last.len += len;
                return;
            }
        }
        spans.push(BlameSpan {
            index,
            len,
            seq,
            author,
            time_ms,
        });
    };
    for chunk in head.chunks(&head.snapshot(), &empty) {
        let Some(text) = chunk_text(&chunk) else {
            continue;
        };
        let len = utf16_len(&text);
        let Some(change) = &chunk.ychange else {
            push(at, len, None);
            at += len;
            continue;
        };
        // One chunk is one item, which may merge characters of several ops of one client.
        let client = change.id.client.get();
        let (mut clock, end) = (change.id.clock, change.id.clock + len);
        while clock < end {
            match origins.find(client, clock) {
                Some((op, op_end)) => {
                    let n = op_end.min(end) - clock;
                    push(at, n, Some(&ops[op]));
                    at += n;
                    clock += n;
                }
                None => {
                    push(at, end - clock, None);
                    at += end - clock;
                    clock = end;
                }
            }
        }
    }
    Ok(spans)
}

/// A stretch of history for a scrubber: consecutive ops by the same authors with no pause
/// longer than the grouping gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineGroup {
    /// First and last seq.
    pub from_seq: u64,
    /// Last seq.
    pub to_seq: u64,
    /// Commit time of the first op, unix ms.
    pub start_ms: i64,
    /// Commit time of the last op, unix ms.
    pub end_ms: i64,
    /// Who wrote in it (in order of first appearance).
    pub authors: Vec<String>,
    /// Units inserted (characters, in UTF-16 units, and embedded items).
    pub added: u64,
    /// Units deleted.
    pub removed: u64,
    /// Set when the group holds edits made against an older state than the one it was
    /// committed on: the seq its author's client had last seen (an offline session merged at
    /// reconnect shows up like this).
    pub made_against_seq: Option<u64>,
}

/// Per-op facts the timeline needs besides [`OpRecord`]: the seq the sender had seen when it
/// made the op, when the client said so.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpBase {
    /// The room seq the sender's replica held when it made the op.
    pub base_seq: Option<u64>,
}

/// Groups `ops` (in seq order) for a scrubber: a new group starts when the author changes, when
/// more than `gap_ms` passed since the previous op, or when an op was made against a stale
/// state: its sender had not seen ops committed more than `stale_ms` before it (so an offline
/// session merged at reconnect stands apart). A live client always lags by the ops in flight
/// (fan-out precedes commit, so it learns their seqs late); `stale_ms` keeps that lag from
/// counting.
pub fn timeline(
    ops: &[OpRecord<'_>],
    bases: &[OpBase],
    gap_ms: i64,
    stale_ms: i64,
) -> Result<Vec<TimelineGroup>> {
    let mut groups: Vec<TimelineGroup> = Vec::new();
    let first_seq = ops.first().map_or(0, |op| op.seq);
    let time_of = |seq: u64| -> Option<i64> {
        let i = usize::try_from(seq.checked_sub(first_seq)?).ok()?;
        ops.get(i).filter(|op| op.seq == seq).map(|op| op.time_ms)
    };
    for (i, op) in ops.iter().enumerate() {
        let update = decode(op.update)?;
        let added: u64 = update
            .insertions(true)
            .iter()
            .flat_map(|(_, r)| r.iter().map(|r| u64::from(r.end - r.start)))
            .sum();
        let removed: u64 = update
            .delete_set()
            .iter()
            .flat_map(|(_, r)| r.iter().map(|r| u64::from(r.end - r.start)))
            .sum();
        let author = op.author.unwrap_or("").to_owned();
        // Made against a state older than the one just before it: it missed ops in between.
        let behind = bases
            .get(i)
            .and_then(|b| b.base_seq)
            .filter(|&base| base + 1 < op.seq)
            .filter(|&base| {
                // The first op it missed was committed long enough before it.
                time_of(base + 1).is_none_or(|t| op.time_ms - t >= stale_ms)
            });
        let joins = groups.last().is_some_and(|g| {
            op.time_ms - g.end_ms <= gap_ms
                && g.authors.last().map(String::as_str) == Some(author.as_str())
                && behind.is_none() == g.made_against_seq.is_none()
        });
        if joins {
            let g = groups.last_mut().expect("checked above");
            g.to_seq = op.seq;
            g.end_ms = op.time_ms;
            g.added += added;
            g.removed += removed;
            if let (Some(b), Some(gb)) = (behind, g.made_against_seq.as_mut()) {
                *gb = (*gb).min(b);
            }
        } else {
            groups.push(TimelineGroup {
                from_seq: op.seq,
                to_seq: op.seq,
                start_ms: op.time_ms,
                end_ms: op.time_ms,
                authors: if author.is_empty() {
                    Vec::new()
                } else {
                    vec![author]
                },
                added,
                removed,
                made_against_seq: behind,
            });
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Document;

    /// A little history: (seq, update) for "hello world" typed, "world" replaced by "there",
    /// then "!" appended, by two clients.
    fn history() -> Vec<Vec<u8>> {
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        let u1 = a.insert(0, "hello world").unwrap();
        b.apply_update(&u1).unwrap();
        let u2 = b.replace(6, 5, "there").unwrap();
        a.apply_update(&u2).unwrap();
        let u3 = a.insert(11, "!").unwrap();
        vec![u1, u2, u3]
    }

    fn records(ops: &[Vec<u8>]) -> Vec<OpRecord<'_>> {
        ops.iter()
            .enumerate()
            .map(|(i, u)| OpRecord {
                seq: i as u64 + 1,
                update: u,
                time_ms: 1_000 * (i as i64 + 1),
                author: Some(if i == 1 { "bob" } else { "ada" }),
            })
            .collect()
    }

    #[test]
    fn the_past_at_every_seq() {
        let ops = history();
        let texts = ["", "hello world", "hello there", "hello there!"];
        for (seq, want) in texts.iter().enumerate() {
            let past = Past::build(None, &ops[..seq], seq as u64).unwrap();
            assert_eq!(past.text(), *want, "at seq {seq}");
        }
        // From a checkpoint (a room's compaction fold) plus the ops after it.
        let checkpoint = crate::room::fold(None, &ops[..2]).unwrap();
        let past = Past::build(Some(&checkpoint), &ops[2..], 3).unwrap();
        assert_eq!(past.text(), "hello there!");
    }

    #[test]
    fn diff_by_stable_ids() {
        let ops = history();
        let from = Past::build(None, &ops[..1], 1).unwrap().snapshot();
        let to = Past::build(None, &ops, 3).unwrap();
        let d = diff(&from, &to);
        assert_eq!(
            d.removed,
            vec![Span {
                id: "1:6".into(),
                index: 6,
                len: 5,
                text: "world".into()
            }]
        );
        let added: Vec<(&str, u32, &str)> = d
            .added
            .iter()
            .map(|s| (s.id.as_str(), s.index, s.text.as_str()))
            .collect();
        assert_eq!(added, vec![("2:0", 6, "there"), ("1:11", 11, "!")]);
        assert!(d.moved.is_empty());
        // No change: nothing.
        let same = Past::build(None, &ops, 3).unwrap();
        assert_eq!(diff(&same.snapshot(), &same), TextDiff::default());
    }

    #[test]
    fn restore_is_an_edit_that_merges_with_concurrent_typing() {
        let ops = history();
        let target = Past::build(None, &ops[..1], 1).unwrap().snapshot();
        let head = Past::build(None, &ops, 3).unwrap();
        let restore = restore_update(&head, &target, 99)
            .unwrap()
            .expect("a change");
        let mut room = Document::from_update(7, &head.state()).unwrap();
        // Someone types at the start meanwhile, on their own replica.
        let mut c = Document::from_update(3, &head.state()).unwrap();
        let typed = c.insert(0, ">> ").unwrap();
        room.apply_update(&restore).unwrap();
        assert_eq!(room.text(), "hello world");
        room.apply_update(&typed).unwrap();
        c.apply_update(&restore).unwrap();
        assert_eq!(room.text(), ">> hello world");
        assert_eq!(
            room.canonical_state().unwrap(),
            c.canonical_state().unwrap()
        );
        // Made in place on a past built for the restoring client: the same edit.
        let mut editable = Past::build_as(99, None, &ops, 3).unwrap();
        let in_place = restore_in_place(&mut editable, &target).unwrap().unwrap();
        assert_eq!(editable.text(), "hello world");
        let mut other = Document::from_update(7, &head.state()).unwrap();
        other.apply_update(&in_place).unwrap();
        assert_eq!(other.text(), "hello world");
        assert_eq!(in_place, restore);
        // Restoring the present changes nothing.
        assert!(restore_update(&head, &head.snapshot(), 99)
            .unwrap()
            .is_none());
        // The restore can be undone by restoring the point before it.
        let mut all = ops.clone();
        all.push(restore);
        let after = Past::build(None, &all, 4).unwrap();
        let undo = restore_update(&after, &head.snapshot(), 100)
            .unwrap()
            .unwrap();
        room = Document::from_update(7, &after.state()).unwrap();
        room.apply_update(&undo).unwrap();
        assert_eq!(room.text(), "hello there!");
    }

    #[test]
    fn restore_by_text_reads_the_target_and_keeps_unchanged_lines() {
        let mut a = Document::new(1);
        let u1 = a.insert(0, "one\ntwo\nthree\n").unwrap();
        let u2 = a.replace(4, 3, "TWO, rewritten").unwrap();
        let u3 = a.insert(0, "zero\n").unwrap();
        let head = Past::build(None, &[&u1, &u2, &u3], 3).unwrap();
        let restore = restore_update_by_text(&head.state(), "one\ntwo\nthree\n", 5)
            .unwrap()
            .unwrap();
        let mut doc = Document::from_update(7, &head.state()).unwrap();
        // Someone edits an unchanged line meanwhile: it survives the restore.
        let mut c = Document::from_update(3, &head.state()).unwrap();
        let typed = c.insert(5 + 4 + 15 + 2, "!").unwrap(); // "th!ree"
        doc.apply_update(&restore).unwrap();
        assert_eq!(doc.text(), "one\ntwo\nthree\n");
        doc.apply_update(&typed).unwrap();
        assert_eq!(doc.text(), "one\ntwo\nth!ree\n");
        assert!(restore_update_by_text(&head.state(), &head.text(), 5)
            .unwrap()
            .is_none());
    }

    /// Between random line-structured texts (shared, moved, changed and unterminated lines,
    /// characters outside the BMP), the restore by text reads exactly the target.
    #[test]
    fn restore_by_text_reads_any_target_exactly() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let seed = 0x5eed_0016;
        println!("seed {seed:#x}");
        let mut rng = SmallRng::seed_from_u64(seed);
        let pool = [
            "alpha\n",
            "beta\n",
            "\n",
            "gamma 😀\n",
            "δ\n",
            "x",
            "中文\n",
            "alpha",
        ];
        let text = |rng: &mut SmallRng| -> String {
            (0..rng.gen_range(0..30))
                .map(|_| pool[rng.gen_range(0..pool.len())])
                .collect()
        };
        for round in 0..300 {
            let (from, to) = (text(&mut rng), text(&mut rng));
            let mut head = Document::new(1);
            head.insert(0, &from).unwrap();
            let state = head.encode_state_as_update(None).unwrap();
            let restore = restore_update_by_text(&state, &to, 9).unwrap();
            let mut doc = Document::from_update(7, &state).unwrap();
            if let Some(update) = restore {
                doc.apply_update(&update).unwrap();
            }
            assert_eq!(doc.text(), to, "round {round}: {from:?} -> {to:?}");
        }
    }

    #[test]
    fn rebased_edits_land_where_they_were_meant() {
        let mut a = Document::new(1);
        let ops = vec![a.insert(0, "The quick fox.").unwrap()];
        // Meanwhile, at the head: "brown " before "fox", a prefix, and "quick " deleted by
        // someone who did not see the thin client's edit.
        let mut others =
            Document::from_update(2, &a.encode_state_as_update(None).unwrap()).unwrap();
        let mut head_ops = ops.clone();
        head_ops.push(others.insert(10, "brown ").unwrap());
        head_ops.push(others.insert(0, "Intro: ").unwrap());
        let mut head = document_at(3, None, &head_ops).unwrap();
        assert_eq!(head.text(), "Intro: The quick brown fox.");

        // Against seq 1: replace "quick" with "slow", then (in the text that left) add " jumps"
        // before the full stop.
        let mut base = document_at(9, None, &ops).unwrap();
        let update = rebase_edits(&mut base, &[(4, 5, "slow"), (12, 0, " jumps")])
            .unwrap()
            .unwrap();
        assert_eq!(base.text(), "The slow fox jumps.");
        head.apply_update(&update).unwrap();
        assert_eq!(head.text(), "Intro: The slow brown fox jumps.");

        // A range someone else deleted meanwhile is deleted once; nothing of theirs goes.
        let mut head = document_at(5, None, &head_ops).unwrap();
        head.apply_update(&others.delete(11, 6).unwrap()).unwrap(); // "quick "
        assert_eq!(head.text(), "Intro: The brown fox.");
        let mut base = document_at(10, None, &ops).unwrap();
        let update = rebase_edits(&mut base, &[(4, 6, "")]).unwrap().unwrap();
        head.apply_update(&update).unwrap();
        assert_eq!(head.text(), "Intro: The brown fox.");

        // Nothing to do, and edits outside the base version.
        let mut base = document_at(11, None, &ops).unwrap();
        assert!(rebase_edits(&mut base, &[(3, 0, "")]).unwrap().is_none());
        assert!(matches!(
            rebase_edits(&mut base, &[(15, 0, "x")]),
            Err(EngineError::OutOfBounds { .. })
        ));
    }

    /// Random histories: a thin client edits the base version by offsets while others edit
    /// the head. After the rebased update, every base character is kept unless one side
    /// deleted it, in base order; everything the others wrote is kept in their order; and
    /// the thin client's own text is exactly what it typed, in its order.
    /// An offset inside a surrogate pair would break the character in two (yrs leaves two
    /// U+FFFD): refused, whichever edit of the batch does it; replacement characters that were
    /// there or are inserted are not mistaken for a split.
    #[test]
    fn rebased_edits_inside_a_character_are_refused() {
        let base = || {
            let mut d = crate::Document::new(1);
            d.insert(0, "a😀b\u{FFFD}").unwrap();
            d
        };
        for edits in [
            vec![(2, 0, "X")],
            vec![(2, 1, "")],
            vec![(0, 0, "zz"), (4, 0, "X")],
        ] {
            let err = rebase_edits(&mut base(), &edits).unwrap_err();
            assert_eq!(err.code(), "splits_character", "{edits:?}");
        }
        for edits in [
            vec![(1, 2, "")],
            vec![(3, 0, "\u{FFFD}")],
            vec![(0, 0, "😀"), (5, 0, "X")],
        ] {
            assert!(
                rebase_edits(&mut base(), &edits).unwrap().is_some(),
                "{edits:?}"
            );
        }
    }

    #[test]
    fn rebased_edits_keep_both_sides() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let seed = 0x5eed_0161;
        println!("seed {seed:#x}");
        let mut rng = SmallRng::seed_from_u64(seed);
        // Base characters are unique (CJK, one UTF-16 unit each); others type A-Z; the thin
        // client types digits.
        let is_base = |c: char| ('\u{4e00}'..'\u{9fff}').contains(&c);
        // Edits against a model of the text, so each is in bounds as the engine applies them.
        fn edit(rng: &mut SmallRng, model: &mut Vec<char>, alphabet: &[u8]) -> (u32, u32, String) {
            let index = rng.gen_range(0..=model.len());
            let delete = if rng.gen_bool(0.4) {
                rng.gen_range(0..=(model.len() - index).min(4))
            } else {
                0
            };
            let insert: String = (0..rng.gen_range(0..4))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect();
            model.splice(index..index + delete, insert.chars());
            (index as u32, delete as u32, insert)
        }
        for round in 0..200 {
            let base_text: Vec<char> = (0..rng.gen_range(0..40))
                .map(|i| char::from_u32(0x4e00 + i).unwrap())
                .collect();
            let mut a = Document::new(1);
            let ops = vec![a.insert(0, &base_text.iter().collect::<String>()).unwrap()];
            let mut others = document_at(2, None, &ops).unwrap();
            let mut head_model = base_text.clone();
            let mut head_ops = ops.clone();
            for _ in 0..rng.gen_range(0..6) {
                let (i, d, t) = edit(&mut rng, &mut head_model, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ");
                head_ops.push(others.replace(i, d, &t).unwrap());
            }
            let mut thin_model = base_text.clone();
            let edits: Vec<(u32, u32, String)> = (0..rng.gen_range(0..6))
                .map(|_| edit(&mut rng, &mut thin_model, b"0123456789"))
                .collect();
            let edits: Vec<(u32, u32, &str)> =
                edits.iter().map(|(i, d, t)| (*i, *d, t.as_str())).collect();
            let mut base = document_at(3, None, &ops).unwrap();
            let update = rebase_edits(&mut base, &edits).unwrap();
            let mut head = document_at(4, None, &head_ops).unwrap();
            if let Some(update) = update {
                head.apply_update(&update).unwrap();
            }
            let got: Vec<char> = head.text().chars().collect();
            let kept: Vec<char> = base_text
                .iter()
                .copied()
                .filter(|c| head_model.contains(c) && thin_model.contains(c))
                .collect();
            let ctx = format!("round {round}: edits {edits:?}");
            let only = |text: &[char], keep: &dyn Fn(char) -> bool| -> Vec<char> {
                text.iter().copied().filter(|&c| keep(c)).collect()
            };
            assert_eq!(only(&got, &is_base), kept, "{ctx}");
            let upper = |c: char| c.is_ascii_uppercase();
            assert_eq!(only(&got, &upper), only(&head_model, &upper), "{ctx}");
            let digit = |c: char| c.is_ascii_digit();
            assert_eq!(only(&got, &digit), only(&thin_model, &digit), "{ctx}");
        }
    }

    #[test]
    fn blame_names_the_op_of_every_character() {
        let ops = history();
        let recs = records(&ops);
        let head = Past::build(None, &ops, 3).unwrap();
        let spans = blame(&head, &recs).unwrap();
        let got: Vec<(u32, u32, u64, Option<&str>)> = spans
            .iter()
            .map(|s| (s.index, s.len, s.seq, s.author.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 6, 1, Some("ada")),
                (6, 5, 2, Some("bob")),
                (11, 1, 3, Some("ada"))
            ]
        );
    }

    #[test]
    fn blame_splits_an_item_merged_across_ops() {
        // One client types "ab" then "cd": yrs merges them into one item.
        let mut a = Document::new(5);
        let ops = vec![a.insert(0, "ab").unwrap(), a.insert(2, "cd").unwrap()];
        let recs = records(&ops);
        let head = Past::build(None, &ops, 2).unwrap();
        let spans = blame(&head, &recs).unwrap();
        let got: Vec<(u32, u32, u64)> = spans.iter().map(|s| (s.index, s.len, s.seq)).collect();
        assert_eq!(got, vec![(0, 2, 1), (2, 2, 2)]);
    }

    #[test]
    fn timeline_groups_by_author_pause_and_offline_merge() {
        let ops = history();
        let mut recs = records(&ops);
        recs[2].time_ms = recs[1].time_ms + 500;
        recs[1].author = Some("ada");
        let bases = vec![OpBase::default(); 3];
        let groups = timeline(&recs, &bases, 60_000, 0).unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!((groups[0].from_seq, groups[0].to_seq), (1, 3));
        assert_eq!(groups[0].added, 11 + 5 + 1);
        assert_eq!(groups[0].removed, 5);
        // The last op was made against seq 1 (it missed seq 2): it stands apart.
        let bases = vec![
            OpBase::default(),
            OpBase::default(),
            OpBase { base_seq: Some(1) },
        ];
        let groups = timeline(&recs, &bases, 60_000, 0).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].made_against_seq, Some(1));
        // Unless what it missed was committed only just before it (a live client's lag).
        let groups = timeline(&recs, &bases, 60_000, 10_000).unwrap();
        assert_eq!(groups.len(), 1);
        // A pause starts a new group too.
        recs[2].time_ms += 120_000;
        let groups = timeline(&recs, &[OpBase::default(); 3], 60_000, 0).unwrap();
        assert_eq!(groups.len(), 2);
    }
}
