//! A position index for one indexed sequence (Concord's patch to yrs 0.28.1).
//!
//! yrs finds the item at an index by walking the sequence from its start, and reports what a
//! transaction did to a text only as a delta that walks the whole sequence again. Both are linear
//! in the size of the document on every keystroke. This module keeps a few *marks* — a unit's
//! ID and its index — like Yjs's search markers, but kept up to date across remote changes too:
//! every insert and delete of a tracked branch passes through [Positions::inserted] and
//! [Positions::deleted], which find the change's index by walking both ways to the nearest mark,
//! shift the marks behind it, and (when asked) record the change with its index at that moment.
//!
//! Invariants:
//! - a mark names a unit (an ID) that is visible: not deleted, countable. Deleting it drops the
//!   mark, so index comparisons never meet a tie between a mark and a change;
//! - a mark's `index` is the number of visible units before its unit, in block units (clock
//!   units: UTF-16 code units for strings, one for an embed or a nested type);
//! - marks are IDs, never pointers: splitting, squashing and garbage collection move units
//!   between blocks without invalidating them.

use crate::block::{Item, ItemContent, ItemPtr};
use crate::ID;

/// How many marks a branch keeps. Each walked item is compared with every mark, so more marks
/// cost more per step and shorten the walks only for editing spread over many places.
const MAX_MARKS: usize = 16;

/// How many items one transaction may walk, beyond the sequence's length, before tracking gives
/// up for the rest of it. A transaction that integrates a whole document out of order (a first
/// sync) would otherwise walk the sequence once per item; past this budget one walk of the delta
/// is cheaper. The first walk of a transaction always runs, so a lone change far from every mark
/// still gets its index (and a mark).
const WALK_BUDGET: u32 = 4096;

/// One change to a tracked sequence, with its index in the sequence as it was at that moment
/// (so a list of edits applies in order). Indexes and lengths are in block units: UTF-16 code
/// units for strings, one per embed or nested type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexedEdit {
    /// `len` units were inserted at `index`; `text` holds them when they are a string.
    Insert {
        index: u32,
        len: u32,
        text: Option<String>,
    },
    /// `len` units were deleted at `index`.
    Delete { index: u32, len: u32 },
}

/// Why a transaction's [IndexedEdit]s cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untracked {
    /// Positions are not tracked, or tracked without recording edits.
    NotRecording,
    /// The transaction changed too much at once for tracking to pay: read its delta instead.
    TooLarge,
    /// The sequence holds, or has held, content other than strings (embeds, nested types),
    /// whose units a plain-text reader does not count.
    NotPlainText,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    id: ID,
    index: u32,
    /// Last use, for evicting the least recently used mark.
    used: u64,
}

/// What a walk from an item found.
#[derive(Default)]
struct Found {
    index: u32,
    /// The nearest visible items on each side, when the walk met one.
    left: Option<ItemPtr>,
    right: Option<ItemPtr>,
}

/// The marks of one branch and, when recording, the edits made to it since they were last taken.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    marks: Vec<Mark>,
    tick: u64,
    /// `Some` while recording.
    edits: Option<Vec<IndexedEdit>>,
    /// Items walked in the current transaction, against [WALK_BUDGET].
    walked: u32,
    /// The walks of this transaction went over budget: the marks are gone and nothing more is
    /// tracked or recorded until the transaction ends (the caller reads its delta instead).
    overflowed: bool,
    /// Content other than strings was seen (an embed or a nested type): the edits' units then
    /// differ from the string's, which a plain-text consumer must know.
    pub(crate) saw_non_string: bool,
}

impl Positions {
    pub(crate) fn new(record: bool) -> Self {
        Positions {
            edits: record.then(Vec::new),
            ..Default::default()
        }
    }

    pub(crate) fn set_recording(&mut self, record: bool) {
        match (record, self.edits.is_some()) {
            (true, false) => self.edits = Some(Vec::new()),
            (false, true) => self.edits = None,
            _ => {}
        }
    }

    /// The edits of the current transaction, or why they cannot be given.
    pub(crate) fn take_edits(&mut self) -> Result<Vec<IndexedEdit>, Untracked> {
        let edits = std::mem::take(self.edits.as_mut().ok_or(Untracked::NotRecording)?);
        if self.saw_non_string {
            Err(Untracked::NotPlainText)
        } else if self.overflowed {
            Err(Untracked::TooLarge)
        } else {
            Ok(edits)
        }
    }

    /// Called once the transaction's observers have run.
    pub(crate) fn end_transaction(&mut self) {
        self.walked = 0;
        self.overflowed = false;
        if let Some(edits) = &mut self.edits {
            edits.clear();
        }
    }

    /// True when the marks can be used (tracking has not given up in this transaction).
    pub(crate) fn usable(&self) -> bool {
        !self.overflowed
    }

    /// The mark closest to `index`, on either side.
    pub(crate) fn nearest_mark(&mut self, index: u32) -> Option<(ID, u32)> {
        self.tick += 1;
        let tick = self.tick;
        let best = self
            .marks
            .iter_mut()
            .min_by_key(|m| m.index.abs_diff(index))?;
        best.used = tick;
        Some((best.id, best.index))
    }

    /// Forgets a mark whose unit could not be resolved to a visible item.
    pub(crate) fn forget(&mut self, id: &ID) {
        self.marks.retain(|m| m.id != *id);
    }

    /// A visible, countable `item` was linked into the sequence.
    pub(crate) fn inserted(&mut self, item: &Item, sequence_len: u32) {
        if !matches!(item.content, ItemContent::String(_)) {
            self.saw_non_string = true;
        }
        // The marks do not count the new item yet.
        let Some(found) = self.index_of(item, 0, sequence_len) else {
            return;
        };
        let (index, len) = (found.index, item.len);
        for m in self.marks.iter_mut() {
            // Marks are on visible units: one at `index` is the unit the insert went before.
            if m.index >= index {
                m.index += len;
            }
        }
        self.mark(item.id, index);
        if let Some(edits) = &mut self.edits {
            let text = match &item.content {
                ItemContent::String(s) => Some(s.as_str().to_owned()),
                _ => None,
            };
            edits.push(IndexedEdit::Insert { index, len, text });
        }
    }

    /// A visible, countable `item` is being deleted.
    pub(crate) fn deleted(&mut self, item: &Item, sequence_len: u32) {
        if !matches!(item.content, ItemContent::String(_)) {
            self.saw_non_string = true;
        }
        // The marks still count the item.
        let Some(found) = self.index_of(item, item.len, sequence_len) else {
            return;
        };
        let (index, len) = (found.index, item.len);
        self.marks.retain(|m| !item.contains(&m.id));
        for m in self.marks.iter_mut() {
            if m.index >= index {
                m.index -= len;
            }
        }
        // A visible neighbour met on the way: where the next backspace or delete starts.
        if let Some(left) = found.left {
            self.mark(left.id, index - left.len);
        } else if let Some(right) = found.right {
            self.mark(right.id, index);
        }
        if let Some(edits) = &mut self.edits {
            edits.push(IndexedEdit::Delete { index, len });
        }
    }

    /// The number of visible units before `item`, found by walking both ways at once to the
    /// nearest mark (or to the start), with the nearest visible neighbours met on the way.
    /// `counted` is how many of the item's own units the marks' indexes include. `None` once
    /// this transaction has walked more than its budget.
    fn index_of(&mut self, item: &Item, counted: u32, sequence_len: u32) -> Option<Found> {
        if !self.overflowed && self.walked > WALK_BUDGET.saturating_add(sequence_len) {
            self.overflowed = true;
            self.marks.clear();
        }
        if self.overflowed {
            return None;
        }
        let mut found = Found::default();
        let (mut left, mut right) = (item.left, item.right);
        let (mut before, mut after) = (0u32, 0u32);
        loop {
            let Some(ptr) = left else {
                // The start: everything visible on the way is all there is before the item.
                found.index = before;
                return Some(found);
            };
            self.walked = self.walked.saturating_add(1);
            if !ptr.is_deleted() && ptr.is_countable() {
                found.left.get_or_insert(ptr);
                if let Some(start) = self.mark_start(&ptr) {
                    found.index = start + ptr.len + before;
                    return Some(found);
                }
                before += ptr.len;
            }
            left = ptr.left;

            if let Some(ptr) = right {
                self.walked = self.walked.saturating_add(1);
                if !ptr.is_deleted() && ptr.is_countable() {
                    found.right.get_or_insert(ptr);
                    if let Some(start) = self.mark_start(&ptr) {
                        found.index = start - after - counted;
                        return Some(found);
                    }
                    after += ptr.len;
                }
                right = ptr.right;
            }
        }
    }

    /// The index of the first unit of a visible `item` holding a mark, if one does.
    fn mark_start(&mut self, item: &Item) -> Option<u32> {
        let k = self.mark_within(item)?;
        self.tick += 1;
        let m = &mut self.marks[k];
        m.used = self.tick;
        Some(m.index - (m.id.clock - item.id.clock))
    }

    /// The mark whose unit lies in `item`, if any.
    fn mark_within(&self, item: &Item) -> Option<usize> {
        self.marks.iter().position(|m| item.contains(&m.id))
    }

    /// Marks the unit `id` (visible, with `index` visible units before it), replacing a mark on
    /// the same unit or the least recently used one when all are taken.
    pub(crate) fn mark(&mut self, id: ID, index: u32) {
        self.tick += 1;
        let mark = Mark {
            id,
            index,
            used: self.tick,
        };
        if let Some(m) = self.marks.iter_mut().find(|m| m.id == id) {
            *m = mark;
        } else if self.marks.len() < MAX_MARKS {
            self.marks.push(mark);
        } else if let Some(m) = self.marks.iter_mut().min_by_key(|m| m.used) {
            *m = mark;
        }
    }
}
