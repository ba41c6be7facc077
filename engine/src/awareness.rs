//! Presence and awareness per room, without I/O: coalescing changes into one flush per short
//! tick, and mapping cursors between Concord's UTF-16 offsets and Yjs relative positions.
//!
//! # Coalescing
//!
//! A room relays presence (JSON clients) and awareness (y-websocket and Hocuspocus clients) as
//! they change. Relaying each message as it comes costs one encoding per dialect and one frame
//! per recipient per message; with many members each moving a cursor, that is most of a room's
//! work. A [`Coalescer`] keeps, per user, the latest entry changed since the last flush; the
//! room flushes it at most every [`FLUSH_MS`] and sends one message per dialect: one awareness
//! update carrying every changed entry for the Yjs protocols, one `presence` frame per user for
//! JSON (whose wire protocol is one presence per frame).
//!
//! Call order: [`Coalescer::handle_presence`] for every change (a `left` one too), then arm a
//! timer for [`Coalescer::poll_timeout`] (`None`: nothing pending, no timer); when it fires,
//! [`Coalescer::poll_flush`] returns the entries due, oldest change first. The latest entry for
//! a user replaces an earlier one still pending (the latest wins), keeping its place. Entries
//! are bounded in number and bytes: past the budget, the flush is due at once (so an entry is
//! never refused, and a `left` is never lost). [`Coalescer::take_all`] drains everything, for
//! shutdown.
//!
//! # Cursors
//!
//! A Concord client's cursor is an offset, or `{anchor, head}`, in UTF-16 code units into the
//! `body` text. Yjs editor bindings (y-codemirror.next) put `cursor: {anchor, head}` in
//! awareness, each a relative position as `Y.relativePositionToJSON` (or `JSON.stringify` of a
//! `RelativePosition`) gives it: `{type, tname, item, assoc}`. [`offsets_to_relative`] and
//! [`relative_to_offsets`] map one to the other against the room's [`Document`] with yrs'
//! [`StickyIndex`]. Relative positions into any other type (Tiptap's are into an
//! `XmlFragment`, which has no text offsets) map to nothing and are left as they are. Both walk
//! the text's blocks: CRDT work, for the room's worker, once per flush.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use yrs::block::ClientID;
use yrs::branch::{Branch, BranchPtr};
use yrs::{Assoc, IndexScope, IndexedSequence, StickyIndex, Text, Transact, ID};

use crate::doc::{Document, BODY};
use crate::room::ConnId;
use crate::wire::Presence;

/// How long a change may wait for others to share its flush, in milliseconds.
pub const FLUSH_MS: u64 = 50;

/// What a [`Coalescer`] holds at most before its flush is due at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Distinct users pending.
    pub max_entries: usize,
    /// Bytes pending (the entries' text: ids, names, colors, cursors, awareness states).
    pub max_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_entries: 4096,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One change waiting for the flush.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The latest presence of its user (`left` once gone).
    pub presence: Presence,
    /// The member it came from, which is not sent its own entry; `None` for everyone (entries
    /// from other instances, and removals).
    pub origin: Option<ConnId>,
    /// It came from a member here: other instances are told (through the hub) at the flush.
    pub publish: bool,
}

/// The latest presence per user since the last flush (see the module docs).
#[derive(Debug, Default)]
pub struct Coalescer {
    budget: Budget,
    /// Pending entries in order of their first change since the last flush.
    entries: Vec<Pending>,
    /// Index into `entries` by user.
    index: HashMap<String, usize>,
    bytes: usize,
    /// When the oldest pending change came.
    first_at: Option<u64>,
}

/// What an entry counts against the byte budget.
fn cost(p: &Presence) -> usize {
    let cursor = p.cursor.as_ref().map_or(0, |c| c.to_string().len());
    let yjs = p.yjs.as_ref().map_or(0, |y| y.state.len() + 16);
    64 + p.user.len()
        + p.name.as_ref().map_or(0, String::len)
        + p.color.as_ref().map_or(0, String::len)
        + cursor
        + yjs
}

impl Coalescer {
    /// An empty coalescer with this budget.
    pub fn new(budget: Budget) -> Self {
        Coalescer {
            budget,
            ..Coalescer::default()
        }
    }

    /// A change of `presence` (its `user` is the key) at `now` (ms), from member `origin`.
    pub fn handle_presence(
        &mut self,
        presence: Presence,
        origin: Option<ConnId>,
        publish: bool,
        now: u64,
    ) {
        let bytes = cost(&presence);
        self.first_at.get_or_insert(now);
        match self.index.get(&presence.user) {
            Some(&i) => {
                let old = &mut self.entries[i];
                self.bytes = self.bytes - cost(&old.presence) + bytes;
                // Told to other instances if any of the coalesced changes was to be.
                let publish = publish || old.publish;
                *old = Pending {
                    presence,
                    origin,
                    publish,
                };
            }
            None => {
                self.bytes += bytes;
                self.index.insert(presence.user.clone(), self.entries.len());
                self.entries.push(Pending {
                    presence,
                    origin,
                    publish,
                });
            }
        }
    }

    /// When the next flush is due (ms), or `None` while nothing is pending.
    pub fn poll_timeout(&self) -> Option<u64> {
        let first = self.first_at?;
        if self.entries.len() >= self.budget.max_entries || self.bytes >= self.budget.max_bytes {
            Some(first)
        } else {
            Some(first + FLUSH_MS)
        }
    }

    /// The pending entries, oldest change first, if the flush is due at `now`; else none.
    pub fn poll_flush(&mut self, now: u64) -> Vec<Pending> {
        match self.poll_timeout() {
            Some(due) if due <= now => self.take_all(),
            _ => Vec::new(),
        }
    }

    /// Every pending entry, due or not (shutdown).
    pub fn take_all(&mut self) -> Vec<Pending> {
        self.index.clear();
        self.bytes = 0;
        self.first_at = None;
        std::mem::take(&mut self.entries)
    }

    /// The entries pending, oldest change first.
    pub fn pending(&self) -> &[Pending] {
        &self.entries
    }

    /// Entries pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A Concord cursor (an offset or `{anchor, head}`, UTF-16 offsets into `body`) as
/// `{anchor, head}` relative positions (the JSON of Yjs `RelativePosition`s, `tname: "body"`),
/// as y-codemirror.next puts in awareness. `None` if the cursor is neither shape.
pub fn offsets_to_relative(doc: &Document, cursor: &Value) -> Option<Value> {
    let (anchor, head) = cursor_offsets(cursor)?;
    let txn = doc.yrs().transact();
    let body = doc.body();
    let len = body.len(&txn);
    let sticky = |offset: u32| -> Value {
        let offset = offset.min(len);
        // Yjs' `createRelativePositionFromTypeIndex` with assoc 0: the item at the offset, or
        // the type itself at its end (where yrs has no index to give).
        let scope = body
            .sticky_index(&txn, offset, Assoc::After)
            .map(|s| s.scope().clone());
        match scope {
            Some(IndexScope::Relative(id)) => relative_json(Some(&id)),
            _ => relative_json(None),
        }
    };
    Some(json!({ "anchor": sticky(anchor), "head": sticky(head) }))
}

/// A relative position's JSON into `body`: at `item`, or at the end of the text.
fn relative_json(item: Option<&ID>) -> Value {
    json!({
        "type": null,
        "tname": BODY,
        "item": item.map(|id| json!({ "client": id.client.get(), "clock": id.clock })),
        "assoc": 0,
    })
}

/// The offsets of a Concord cursor: a number, or `{anchor, head}` numbers.
fn cursor_offsets(cursor: &Value) -> Option<(u32, u32)> {
    let offset = |v: &Value| {
        v.as_f64()
            .filter(|n| n.is_finite())
            .map(|n| n.clamp(0.0, f64::from(u32::MAX)) as u32)
    };
    match cursor {
        Value::Number(_) => offset(cursor).map(|at| (at, at)),
        Value::Object(o) => Some((offset(o.get("anchor")?)?, offset(o.get("head")?)?)),
        _ => None,
    }
}

/// A Yjs awareness cursor (`{anchor, head}` relative positions) as `{anchor, head}` UTF-16
/// offsets into `body`. `None` unless both positions are in `body` and resolve in `doc` (a
/// position into another type, such as Tiptap's `XmlFragment`, or into changes the room has
/// not seen).
pub fn relative_to_offsets(doc: &Document, cursor: &Value) -> Option<Value> {
    let anchor = sticky_of(cursor.get("anchor")?)?;
    let head = sticky_of(cursor.get("head")?)?;
    let txn = doc.yrs().transact();
    let body = BranchPtr::from(AsRef::<Branch>::as_ref(doc.body()));
    let resolve = |s: &StickyIndex| {
        let offset = s.get_offset(&txn)?;
        (offset.branch == body).then_some(offset.index)
    };
    let (anchor, head) = (resolve(&anchor)?, resolve(&head)?);
    Some(json!({ "anchor": anchor, "head": head }))
}

/// A relative position's JSON (`{type, tname, item, assoc}`, as Yjs gives it) as a yrs sticky
/// index, if it points into `body`: by `tname` at the text's start or end, by `item` inside it
/// (checked to be in `body` when resolved). A nested type's (`type` set) is not `body`.
fn sticky_of(json: &Value) -> Option<StickyIndex> {
    let o: &Map<String, Value> = json.as_object()?;
    if !o.get("type").is_none_or(Value::is_null) || o.get("tname")?.as_str()? != BODY {
        return None;
    }
    let assoc = match o.get("assoc").and_then(Value::as_i64).unwrap_or(0) {
        n if n < 0 => Assoc::Before,
        _ => Assoc::After,
    };
    let scope = match o.get("item").filter(|v| !v.is_null()) {
        None => IndexScope::Root(BODY.into()),
        Some(item) => {
            let client = item.get("client")?.as_u64()?;
            let clock = u32::try_from(item.get("clock")?.as_u64()?).ok()?;
            IndexScope::Relative(ID::new(ClientID::new(client), clock))
        }
    };
    Some(StickyIndex::new(scope, assoc))
}

/// The `cursor` of a Yjs awareness state (JSON text), if it has one.
pub fn awareness_cursor(state: &str) -> Option<Value> {
    let mut state: Value = serde_json::from_str(state).ok()?;
    state
        .get_mut("cursor")
        .map(Value::take)
        .filter(|c| !c.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::YjsAwareness;

    fn presence(user: &str, cursor: u32) -> Presence {
        Presence {
            user: user.into(),
            cursor: Some(json!(cursor)),
            ..Presence::default()
        }
    }

    #[test]
    fn nothing_pending_means_no_timer() {
        let mut c = Coalescer::new(Budget::default());
        assert_eq!(c.poll_timeout(), None);
        assert!(c.poll_flush(1_000_000).is_empty());
    }

    #[test]
    fn changes_in_one_tick_flush_together_and_the_latest_wins() {
        let mut c = Coalescer::new(Budget::default());
        c.handle_presence(presence("a", 1), Some(ConnId(1)), true, 100);
        c.handle_presence(presence("b", 5), Some(ConnId(2)), true, 110);
        c.handle_presence(presence("a", 2), Some(ConnId(1)), true, 120);
        c.handle_presence(presence("a", 3), Some(ConnId(1)), true, 130);
        assert_eq!(c.poll_timeout(), Some(100 + FLUSH_MS));
        assert!(c.poll_flush(100 + FLUSH_MS - 1).is_empty(), "not due yet");
        let flushed = c.poll_flush(100 + FLUSH_MS);
        let got: Vec<(&str, Value)> = flushed
            .iter()
            .map(|p| (p.presence.user.as_str(), p.presence.cursor.clone().unwrap()))
            .collect();
        assert_eq!(got, vec![("a", json!(3)), ("b", json!(5))]);
        assert_eq!(
            c.poll_timeout(),
            None,
            "the timer is disarmed after a flush"
        );
        // The next change starts a new tick from its own time.
        c.handle_presence(presence("b", 6), Some(ConnId(2)), true, 500);
        assert_eq!(c.poll_timeout(), Some(500 + FLUSH_MS));
    }

    #[test]
    fn a_removal_replaces_a_pending_state_and_goes_to_everyone() {
        let mut c = Coalescer::new(Budget::default());
        c.handle_presence(presence("a", 1), Some(ConnId(1)), true, 0);
        let mut gone = presence("a", 0);
        gone.left = true;
        gone.cursor = None;
        c.handle_presence(gone, None, true, 10);
        let flushed = c.take_all();
        assert_eq!(flushed.len(), 1);
        assert!(flushed[0].presence.left);
        assert_eq!(flushed[0].origin, None);
        assert!(flushed[0].publish);
        // A state from another instance replaced by a local one is still published.
        c.handle_presence(presence("r", 1), None, false, 0);
        c.handle_presence(presence("r", 2), None, true, 1);
        assert!(c.take_all()[0].publish);
    }

    #[test]
    fn past_the_budget_the_flush_is_due_at_once_and_nothing_is_refused() {
        let mut c = Coalescer::new(Budget {
            max_entries: 3,
            max_bytes: 1 << 20,
        });
        for (i, user) in ["a", "b"].iter().enumerate() {
            c.handle_presence(presence(user, 0), None, false, 10 + i as u64);
        }
        assert_eq!(c.poll_timeout(), Some(10 + FLUSH_MS));
        c.handle_presence(presence("c", 0), None, false, 20);
        assert_eq!(c.poll_timeout(), Some(10), "due at once");
        c.handle_presence(presence("d", 0), None, false, 21);
        assert_eq!(c.poll_flush(21).len(), 4);

        let mut c = Coalescer::new(Budget {
            max_entries: 100,
            max_bytes: 1000,
        });
        let mut big = presence("a", 0);
        big.yjs = Some(YjsAwareness {
            client: 1,
            clock: 1,
            state: "x".repeat(2000),
        });
        c.handle_presence(big, None, false, 5);
        assert_eq!(c.poll_timeout(), Some(5));
        // Replacing the big entry with a small one gives its bytes back.
        c.handle_presence(presence("a", 1), None, false, 6);
        assert_eq!(c.poll_timeout(), Some(5 + FLUSH_MS));
        assert_eq!(c.len(), 1);
    }

    fn doc_with(text: &str) -> Document {
        let mut doc = Document::new(7);
        doc.insert(0, text).unwrap();
        doc
    }

    #[test]
    fn offsets_round_trip_through_relative_positions() {
        // A surrogate pair: offsets are UTF-16 code units, as in the browser.
        let mut doc = doc_with("hello 😀 world");
        doc.insert(0, ">> ").unwrap();
        let len = doc.len();
        for (anchor, head) in [(0, 0), (3, 8), (9, 9), (len, len), (len - 1, 2)] {
            let rel =
                offsets_to_relative(&doc, &json!({ "anchor": anchor, "head": head })).unwrap();
            assert_eq!(rel["anchor"]["tname"], "body");
            assert_eq!(rel["anchor"]["type"], Value::Null);
            let back = relative_to_offsets(&doc, &rel).unwrap();
            assert_eq!(back, json!({ "anchor": anchor, "head": head }), "{rel}");
        }
        // An offset alone is a caret; past the end it is the end.
        let rel = offsets_to_relative(&doc, &json!(4)).unwrap();
        assert_eq!(rel["anchor"], rel["head"]);
        let end = offsets_to_relative(&doc, &json!(10_000)).unwrap();
        assert_eq!(end["anchor"]["item"], Value::Null);
        assert_eq!(
            relative_to_offsets(&doc, &end).unwrap(),
            json!({"anchor": len, "head": len})
        );
        for bad in [json!("x"), json!({"anchor": 1}), json!(null), json!([1, 2])] {
            assert_eq!(offsets_to_relative(&doc, &bad), None, "{bad}");
        }
    }

    #[test]
    fn a_relative_position_follows_its_character_through_later_edits() {
        let mut doc = doc_with("abcdef");
        let rel = offsets_to_relative(&doc, &json!({"anchor": 2, "head": 4})).unwrap();
        doc.insert(0, "XYZ").unwrap();
        doc.delete(5, 1).unwrap(); // "XYZabdef": the anchor's `c` is gone, it stays in its place
        assert_eq!(
            relative_to_offsets(&doc, &rel).unwrap(),
            json!({"anchor": 5, "head": 6})
        );
    }

    #[test]
    fn positions_elsewhere_or_unknown_map_to_nothing() {
        let doc = doc_with("abc");
        let at = |v: Value| json!({ "anchor": v.clone(), "head": v });
        let cases = [
            // Tiptap's: into an XmlFragment.
            at(
                json!({"type": null, "tname": "default", "item": {"client": 7, "clock": 1}, "assoc": 0}),
            ),
            // A nested type's.
            at(json!({"type": {"client": 7, "clock": 0}, "tname": null, "item": null, "assoc": 0})),
            // An item the room has not seen.
            at(
                json!({"type": null, "tname": "body", "item": {"client": 99, "clock": 0}, "assoc": 0}),
            ),
            at(json!({"tname": "body", "item": {"client": 7, "clock": 4_294_967_296u64}})),
            at(json!({"tname": "body", "item": {"client": -1, "clock": 0}})),
            json!({"anchor": 1, "head": 2}),
            json!(null),
        ];
        for cursor in cases {
            assert_eq!(relative_to_offsets(&doc, &cursor), None, "{cursor}");
        }
        // An item of another root type is not in `body`.
        let other = doc.yrs().get_or_insert_text("other");
        other.insert(&mut doc.yrs().transact_mut(), 0, "zz");
        let id = doc.yrs().client_id().get();
        let cursor = at(
            json!({"type": null, "tname": "body", "item": {"client": id, "clock": 3}, "assoc": 0}),
        );
        assert_eq!(relative_to_offsets(&doc, &cursor), None);
    }

    #[test]
    fn the_compact_json_form_and_left_association_resolve_too() {
        let doc = doc_with("abcdef");
        let id = doc.client_id();
        // `Y.relativePositionToJSON` leaves out null fields; assoc -1 sticks to the left.
        let cursor = json!({
            "anchor": {"tname": "body", "item": {"client": id, "clock": 1}},
            "head": {"tname": "body", "item": {"client": id, "clock": 2}, "assoc": -1},
        });
        assert_eq!(
            relative_to_offsets(&doc, &cursor).unwrap(),
            json!({"anchor": 1, "head": 3})
        );
        assert_eq!(
            awareness_cursor(r#"{"user":{"name":"A"},"cursor":{"anchor":1,"head":2}}"#),
            Some(json!({"anchor": 1, "head": 2}))
        );
        assert_eq!(awareness_cursor(r#"{"cursor":null}"#), None);
        assert_eq!(awareness_cursor("not json"), None);
    }
}
