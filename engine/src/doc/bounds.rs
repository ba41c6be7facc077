//! A pre-decode pass over v2 update bytes that bounds the work yrs would do with them.
//!
//! yrs trusts things in an update that cost nothing to forge, and three of them take a server
//! down (each found by the bad-input tests, each pinned by a test below):
//! - counts: v2 stores block fields in run-length-encoded columns, and a column that runs out
//!   repeats its last value forever, so a 25-byte update can declare hundreds of millions of
//!   blocks (each one allocated) or empty strings (each one a loop turn). That is gigabytes of
//!   memory or minutes of CPU per frame, and an out-of-memory abort on a busy server.
//! - nesting of values: `Any` values (embeds, formats, `Y.Array` content, sub-document options)
//!   decode recursively, so a 20 KB update of nested one-element arrays overflows the stack,
//!   which aborts the process (`catch_unwind` cannot catch it).
//! - nesting of shared types: a 36-byte update declares 100,000 maps each inside the previous
//!   one (the parent ids are a run too); it applies fine, and a 20-byte update deleting the
//!   outer map then recurses 100,000 deep inside yrs and aborts the process the same way.
//!
//! [`check`] walks the update with yrs's own `DecoderV2` column readers, in exactly the order
//! `Update::decode` reads them, allocating nothing per element. For every source it stops at
//! `Any` nesting deeper than [`MAX_ANY_DEPTH`]. For bytes from an untrusted sender it also stops
//! once the declared elements exceed [`max_elements`] for the input's size, and at any nested
//! shared type or sub-document: a Concord document is one `Y.Text`, which needs neither, and
//! without them no chain of parents can form. The delete set after the blocks is not walked:
//! every range in it consumes input bytes, so it is bounded by the input already.

use std::collections::HashMap;
use yrs::block::{
    BLOCK_GC_REF_NUMBER, BLOCK_ITEM_ANY_REF_NUMBER, BLOCK_ITEM_BINARY_REF_NUMBER,
    BLOCK_ITEM_DELETED_REF_NUMBER, BLOCK_ITEM_DOC_REF_NUMBER, BLOCK_ITEM_EMBED_REF_NUMBER,
    BLOCK_ITEM_FORMAT_REF_NUMBER, BLOCK_ITEM_JSON_REF_NUMBER, BLOCK_ITEM_STRING_REF_NUMBER,
    BLOCK_ITEM_TYPE_REF_NUMBER, BLOCK_SKIP_REF_NUMBER, HAS_ORIGIN, HAS_PARENT_SUB,
    HAS_RIGHT_ORIGIN,
};

use yrs::block::{ClientID, ID};
use yrs::encoding::read::{Cursor, Read};
use yrs::types::TypeRef;
use yrs::updates::decoder::{Decode, Decoder, DecoderV1, DecoderV2};
use yrs::StateVector;

/// Deepest `Any` nesting accepted (serde_json's default recursion limit is 128; rich-text
/// attributes and embeds in practice nest a handful of levels).
pub(crate) const MAX_ANY_DEPTH: usize = 64;

/// Most blocks (plus strings of JSON content and values of `Any` content) an update of `len`
/// bytes from an untrusted sender may declare: one per input byte, and never less than
/// [`MIN_ELEMENTS`].
///
/// Not a tighter ratio: legitimate updates can be far denser than one block per byte. Typing
/// 20,000 characters one at a time at offset 0 and then deleting them all encodes as 20,000
/// blocks in 45 bytes, and forged updates look exactly like that. So small inputs get a fixed
/// allowance (about a million blocks: a few hundred MB and well under a second to decode at
/// worst), and large ones cost at most what a real update of their size full of one-character
/// insertions costs anyway.
///
/// The same density is why a document's own full state (a snapshot, a `sync`) is not held to
/// this bound: updates accepted one at a time can add up to a state denser than any one of them.
pub(crate) fn max_elements(len: usize) -> u64 {
    MIN_ELEMENTS.max(len as u64)
}

/// The allowance of [`max_elements`] for small inputs.
pub(crate) const MIN_ELEMENTS: u64 = 1 << 20;

/// Most blocks even a document's own state may declare. yrs spends on the order of 100 bytes a
/// block, so a real document this dense would not fit in memory anyway; without a cap, a forged
/// 31-byte state claiming 50 million blocks makes yrs allocate gigabytes, which on wasm32's
/// 4 GiB address space traps and kills the module (found by engine-wasm's bad-input tests).
#[cfg(target_pointer_width = "32")]
pub(crate) const MAX_STATE_ELEMENTS: u64 = 1 << 24;
/// See the wasm32 value; native servers have more memory, but not unbounded.
#[cfg(not(target_pointer_width = "32"))]
pub(crate) const MAX_STATE_ELEMENTS: u64 = 1 << 27;

/// Most items of one untrusted update that may share one insertion point: the same origin (or
/// none), in the same parent and map key (see [`Anchor`]).
///
/// yrs integrates an item by scanning the concurrent items already between its origin and its
/// right origin (`Item::integrate`, Yjs's conflict resolution), so `n` items at one point
/// against `m` already there cost `n * m` steps. That is quadratic for free: two forged 30-byte
/// updates of ~1M and ~10k deleted items, all without origins, from a lower and a higher client,
/// froze the server (10k against 10k alone is 15 s of yrs in one frame). In an honest update
/// items share an origin only when their author typed at one spot with the cursor standing
/// still (each keystroke left of the previous one); every other edit chains each item to the
/// one before it, and a paste is one item. So this is sized for the densest honest shape there
/// is, typing 20,000 characters backwards at one spot, with room to spare; it does not grow with
/// the input, because those items cost no bytes (their right origins are an arithmetic run).
pub(crate) const MAX_ITEMS_PER_ANCHOR: u32 = 1 << 15;

/// A nested shared type costs a `Branch` (a few hundred bytes): it counts as this many elements.
const TYPE_ELEMENT_COST: u64 = 4;

/// Sub-documents cost a whole `Doc` each when decoded: they count as this many elements.
const DOC_ELEMENT_COST: u64 = 64;

/// Where update bytes come from, which decides the bounds [`check`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client's op: element count, value nesting and shared types are all bounded.
    Untrusted,
    /// A document's own state or updates it already accepted (snapshots, the log, `sync`
    /// frames, saved client state): only value nesting is bounded, since a state built from
    /// many accepted updates can be denser than any one of them.
    Accepted,
}

/// The ids an update refers to outside its own blocks, per client: the end (last clock + 1) of
/// the highest origin, right origin or parent item it names. With the update's own blocks and
/// delete set, this is enough to tell before integrating whether a document has everything
/// the update builds on (see [`Refs::missing_from`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Refs {
    ends: HashMap<ClientID, u32>,
    /// Every item of the update, in order: where it sits, for the nesting depth of shared
    /// types (see `doc/depth.rs`).
    pub(crate) items: Vec<ItemInfo>,
}

/// Where an item is placed, as far as the bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In a root type.
    Root,
    /// In the shared type created by this item.
    In(ID),
    /// In the same parent as this item (its origin, or right origin).
    Beside(ID),
}

/// One item of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ItemInfo {
    pub(crate) id: ID,
    pub(crate) len: u32,
    pub(crate) place: Place,
    /// It creates a nested shared type.
    pub(crate) is_type: bool,
}

impl Refs {
    fn add(&mut self, id: ID) {
        let end = id.clock.saturating_add(1);
        let e = self.ends.entry(id.client).or_insert(0);
        *e = (*e).max(end);
    }

    /// True when `update` (whose references are `self`) builds on something a document with
    /// state vector `sv` lacks: a client's blocks start after that document's clock or leave a
    /// gap, an item's origin, right origin or parent is neither in the document nor in the
    /// update, or the delete set names such an id. yrs would keep such an update pending (or
    /// integrate it over a gap); this decides it from the update alone.
    pub(crate) fn missing_from(&self, update: &yrs::Update, sv: &StateVector) -> bool {
        let mut have = sv.clone();
        for (client, ranges) in update.insertions(true).iter() {
            let mut clock = sv.get(client);
            for range in ranges.iter() {
                if range.start > clock {
                    return true;
                }
                clock = clock.max(range.end);
            }
            have.set_max(*client, clock);
        }
        let refs_ok = self
            .ends
            .iter()
            .all(|(client, &end)| end <= have.get(client));
        let deletes_ok = update.delete_set().iter().all(|(client, ranges)| {
            let clock = have.get(client);
            ranges.iter().all(|r| r.end <= clock)
        });
        !(refs_ok && deletes_ok)
    }
}

/// Where an item is inserted, as far as conflict resolution is concerned: its origin, or for an
/// item without one the start of its parent (a root by name, an item by id, or "the parent of
/// its right origin", which the bytes do not say), and its map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Anchor {
    After(ID),
    Start(Parent, Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    Root(String),
    Item(ID),
    OfRightOrigin,
}

/// Everything that places one item: two consecutive items of one client with the same placement
/// cannot both be honest (the first sits between the origins the second claims are adjacent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    anchor: Anchor,
    right: Option<ID>,
}

/// Ok (with what it refers to) when `bytes`, decoded as a v2 update, stays inside the bounds
/// for `source`. An error means either "over the bounds" or "malformed" (yrs would fail on it
/// too).
pub(crate) fn check(bytes: &[u8], source: Source) -> Result<Refs, String> {
    let decoder = DecoderV2::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    walk(decoder, bytes.len(), source, false)
}

/// [`check`] for v1 bytes (the encoding y-websocket and Hocuspocus clients send), before they
/// are decoded to be converted: v1 reads the same fields from one cursor instead of columns,
/// and embeds and formats are JSON text (parsed by serde_json, whose recursion is bounded).
pub(crate) fn check_v1(bytes: &[u8], source: Source) -> Result<Refs, String> {
    walk(
        DecoderV1::new(Cursor::new(bytes)),
        bytes.len(),
        source,
        true,
    )
}

fn walk<D: Decoder>(decoder: D, len: usize, source: Source, v1: bool) -> Result<Refs, String> {
    let max_elements = match source {
        Source::Untrusted => max_elements(len),
        Source::Accepted => MAX_STATE_ELEMENTS,
    };
    let mut walk = Walk {
        decoder,
        v1,
        budget: max_elements,
        allow_types: source == Source::Accepted,
        untrusted: source == Source::Untrusted,
        refs: Refs::default(),
        anchors: HashMap::new(),
        previous: None,
        previous_gap: None,
        clock: 0,
        client: None,
    };
    walk.update().map_err(|e| match e {
        Stop::Yrs(e) => e.to_string(),
        Stop::TooMany => format!("declares more than {max_elements} blocks for its {len} bytes"),
        Stop::TooDeep => format!("nests values deeper than {MAX_ANY_DEPTH} levels"),
        Stop::Malformed(what) => what.to_owned(),
        Stop::Crowded => format!("inserts more than {MAX_ITEMS_PER_ANCHOR} items at one position"),
        Stop::Repeated => "repeats one item placement for consecutive items of a client \
                           (a forged run-length count)"
            .to_owned(),
        Stop::GapRun => "declares consecutive GC or skip blocks of one client, which an \
                         encoder merges (a forged run-length count)"
            .to_owned(),
    })?;
    Ok(walk.refs)
}

enum Stop {
    Yrs(yrs::encoding::read::Error),
    TooMany,
    TooDeep,
    Malformed(&'static str),
    Crowded,
    Repeated,
    GapRun,
}

impl From<yrs::encoding::read::Error> for Stop {
    fn from(e: yrs::encoding::read::Error) -> Self {
        Stop::Yrs(e)
    }
}

struct Walk<D> {
    decoder: D,
    /// v1 bytes: embeds and formats are JSON strings rather than `Any` values.
    v1: bool,
    budget: u64,
    allow_types: bool,
    /// Apply the placement bounds ([`MAX_ITEMS_PER_ANCHOR`], no repeated placement).
    untrusted: bool,
    refs: Refs,
    anchors: HashMap<Anchor, u32>,
    /// The placement of the previous item of the current client.
    previous: Option<Placement>,
    /// The kind of the current client's previous block, if it was a GC or skip block.
    previous_gap: Option<u8>,
    /// Where the current client's next block starts, and that client.
    clock: u32,
    client: Option<ClientID>,
}

impl<D: Decoder> Walk<D> {
    fn spend(&mut self, n: u64) -> Result<(), Stop> {
        self.budget = self.budget.checked_sub(n).ok_or(Stop::TooMany)?;
        Ok(())
    }

    /// Mirrors `Update::decode` up to the delete set.
    fn update(&mut self) -> Result<(), Stop> {
        let clients: u32 = self.decoder.read_var()?;
        for _ in 0..clients {
            let blocks = self.decoder.read_var::<u32>()?;
            let client = self.decoder.read_client()?;
            self.clock = self.decoder.read_var()?;
            self.client = Some(client);
            // yrs reserves room for `blocks` up front, so the declared count is what costs.
            self.spend(u64::from(blocks))?;
            self.previous = None;
            self.previous_gap = None;
            for _ in 0..blocks {
                self.block()?;
            }
        }
        Ok(())
    }

    /// Mirrors `Update::decode_block`.
    fn block(&mut self) -> Result<(), Stop> {
        let info = self.decoder.read_info()?;
        self.gap(info)?;
        let d = &mut self.decoder;
        let start = self.clock;
        match info {
            BLOCK_SKIP_REF_NUMBER => {
                let len: u32 = d.read_var()?;
                self.clock = self.clock.saturating_add(len);
            }
            BLOCK_GC_REF_NUMBER => {
                let len = d.read_len()?;
                self.clock = self.clock.saturating_add(len);
            }
            info => {
                let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
                let origin = if info & HAS_ORIGIN != 0 {
                    Some(d.read_left_id()?)
                } else {
                    None
                };
                let right = if info & HAS_RIGHT_ORIGIN != 0 {
                    Some(d.read_right_id()?)
                } else {
                    None
                };
                let mut parent = Parent::OfRightOrigin;
                let mut sub = None;
                if cant_copy_parent_info {
                    if d.read_parent_info()? {
                        parent = Parent::Root(d.read_string()?.to_owned());
                    } else {
                        let id = d.read_left_id()?;
                        parent = Parent::Item(id);
                    }
                    if info & HAS_PARENT_SUB != 0 {
                        sub = Some(d.read_string()?.to_owned());
                    }
                }
                for id in [origin, right].into_iter().flatten() {
                    self.refs.add(id);
                }
                if let Parent::Item(id) = parent {
                    self.refs.add(id);
                }
                let place = match (&parent, origin, right) {
                    (Parent::Root(_), ..) => Place::Root,
                    (Parent::Item(id), ..) => Place::In(*id),
                    (Parent::OfRightOrigin, Some(o), _) => Place::Beside(o),
                    (Parent::OfRightOrigin, None, Some(r)) => Place::Beside(r),
                    (Parent::OfRightOrigin, None, None) => Place::Root,
                };
                if self.untrusted {
                    let anchor = match origin {
                        Some(id) => Anchor::After(id),
                        None => Anchor::Start(parent, sub),
                    };
                    self.place(Placement { anchor, right })?;
                }
                let (len, is_type) = self.content(info)?;
                self.clock = self.clock.saturating_add(len);
                if let Some(client) = self.client {
                    self.refs.items.push(ItemInfo {
                        id: ID::new(client, start),
                        len,
                        place,
                        is_type,
                    });
                }
            }
        }
        Ok(())
    }

    /// For an untrusted sender, refuses a GC or skip block right after another of its kind.
    ///
    /// Each costs yrs a block (about 40 bytes, kept in the document) and in v2 a run of them
    /// costs no input bytes: one 30-byte update declared a million. Yjs and yrs merge adjacent
    /// GC blocks (and `mergeUpdates` adjacent skips), so an honest update never holds two in a
    /// row, and alternating them with items costs bytes in the info column: with this, such
    /// blocks are bounded by the input's size like everything else.
    fn gap(&mut self, info: u8) -> Result<(), Stop> {
        let gap = matches!(info, BLOCK_GC_REF_NUMBER | BLOCK_SKIP_REF_NUMBER).then_some(info);
        if self.untrusted && gap.is_some() && gap == self.previous_gap {
            return Err(Stop::GapRun);
        }
        self.previous_gap = gap;
        Ok(())
    }

    /// Counts an item at its anchor and compares it with the previous item of its client.
    fn place(&mut self, placement: Placement) -> Result<(), Stop> {
        if self.previous.as_ref() == Some(&placement) {
            return Err(Stop::Repeated);
        }
        let count = self.anchors.entry(placement.anchor.clone()).or_insert(0);
        *count += 1;
        if *count > MAX_ITEMS_PER_ANCHOR {
            return Err(Stop::Crowded);
        }
        self.previous = Some(placement);
        Ok(())
    }

    /// Mirrors `ItemContent::decode`.
    fn content(&mut self, info: u8) -> Result<(u32, bool), Stop> {
        match info & 0b1111 {
            BLOCK_ITEM_DELETED_REF_NUMBER => return Ok((self.decoder.read_len()?, false)),
            BLOCK_ITEM_JSON_REF_NUMBER => {
                // yrs: `remaining = read_len() as i32`, then `remaining + 1` strings.
                let remaining = self.decoder.read_len()? as i32;
                if remaining < 0 {
                    return Err(Stop::Malformed("negative JSON content length"));
                }
                self.spend(remaining as u64 + 1)?;
                for _ in 0..=remaining {
                    self.decoder.read_string()?;
                }
                return Ok((remaining as u32 + 1, false));
            }
            BLOCK_ITEM_BINARY_REF_NUMBER => {
                self.decoder.read_buf()?;
            }
            BLOCK_ITEM_STRING_REF_NUMBER => {
                let len = self.decoder.read_string()?.encode_utf16().count();
                return Ok((len as u32, false));
            }
            BLOCK_ITEM_EMBED_REF_NUMBER if self.v1 => {
                self.decoder.read_string()?;
            }
            BLOCK_ITEM_EMBED_REF_NUMBER => self.any(0)?,
            BLOCK_ITEM_FORMAT_REF_NUMBER => {
                self.decoder.read_key()?;
                if self.v1 {
                    self.decoder.read_string()?;
                } else {
                    self.any(0)?;
                }
            }
            BLOCK_ITEM_DOC_REF_NUMBER if !self.allow_types => {
                return Err(Stop::Malformed("sub-documents are not accepted"));
            }
            BLOCK_ITEM_TYPE_REF_NUMBER => {
                self.spend(TYPE_ELEMENT_COST)?;
                TypeRef::decode(&mut self.decoder)?;
                return Ok((1, true));
            }
            BLOCK_ITEM_ANY_REF_NUMBER => {
                let len = self.decoder.read_len()?;
                self.spend(u64::from(len))?;
                for _ in 0..len {
                    self.any(0)?;
                }
                return Ok((len, false));
            }
            BLOCK_ITEM_DOC_REF_NUMBER => {
                self.spend(DOC_ELEMENT_COST)?;
                // `Options::decode`: a guid from the string column, then options as `Any`.
                self.decoder.read_string()?;
                self.any(0)?;
            }
            _ => return Err(Stop::Malformed("unknown content type")),
        }
        Ok((1, false))
    }

    /// Mirrors `Any::decode` on the decoder's main cursor (where `read_any` reads), bounded in
    /// depth. Strings inside `Any` are length-prefixed bytes of that cursor, not the string column.
    fn any(&mut self, depth: usize) -> Result<(), Stop> {
        if depth >= MAX_ANY_DEPTH {
            return Err(Stop::TooDeep);
        }
        let d = &mut self.decoder;
        match d.read_u8()? {
            127 | 126 | 121 | 120 => {}
            125 => {
                d.read_var::<i64>()?;
            }
            124 => {
                d.read_exact(4)?;
            }
            123 | 122 => {
                d.read_exact(8)?;
            }
            119 | 116 => {
                Read::read_buf(d)?;
            }
            118 => {
                let len: usize = d.read_var()?;
                for _ in 0..len {
                    Read::read_buf(&mut self.decoder)?;
                    self.any(depth + 1)?;
                }
            }
            117 => {
                let len: usize = d.read_var()?;
                for _ in 0..len {
                    self.any(depth + 1)?;
                }
            }
            _ => return Err(Stop::Malformed("unknown value type")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{decode_update, Document};

    use concord_testkit::lib0::{column, var, var_signed};

    fn forged(info: u8, blocks: u64) -> Vec<u8> {
        concord_testkit::lib0::forged_blocks(1, info, blocks)
    }

    #[test]
    fn forged_block_counts_are_rejected_before_decoding() {
        // 0: GC blocks; 1: deleted items (a boxed item each).
        for info in [0u8, 1] {
            let small = forged(info, 1000);
            assert!(small.len() < 40);
            let mut doc = Document::new(9);
            assert!(
                doc.apply_update(&small).unwrap().changed,
                "a dense update is valid"
            );
            // Deleted items repeat one placement through the run, and GC blocks follow one
            // another unmerged: no honest update does either.
            let err = decode_update(&small).unwrap_err().to_string();
            match info {
                0 => assert!(err.contains("consecutive GC or skip blocks"), "{err}"),
                _ => assert!(err.contains("repeats one item placement"), "{err}"),
            }
            // A document's own state is not held to it (it decodes as accepted bytes).
            assert!(Document::from_update(2, &small).is_ok());
            // A few hundred million blocks from ~35 bytes: gigabytes if decoded.
            let bomb = forged(info, 300_000_000);
            assert!(bomb.len() < 40);
            let err = decode_update(&bomb).unwrap_err();
            assert!(err.to_string().contains("blocks"), "{err}");
            let over = forged(info, MIN_ELEMENTS + 1);
            assert!(decode_update(&over).is_err());
        }
    }

    #[test]
    fn dense_real_updates_stay_inside_the_bound() {
        // Typing backwards then deleting everything: 20,000 blocks in a few dozen bytes.
        let mut doc = Document::new(1);
        for _ in 0..20_000 {
            doc.insert(0, "x").unwrap();
        }
        doc.delete(0, 20_000).unwrap();
        let state = doc.encode_state_as_update(None).unwrap();
        assert!(state.len() < 100, "{} bytes", state.len());
        assert!(decode_update(&state).is_ok());
        assert!(Document::from_update(2, &state).is_ok());
    }

    /// `n` characters typed backwards at offset 0 by `client`, then deleted: `n` items at one
    /// position in a few dozen bytes.
    fn backwards(client: u64, n: u32) -> Vec<u8> {
        let mut doc = Document::new(client);
        for _ in 0..n {
            doc.replace_silent(0, 0, "x").unwrap();
        }
        doc.delete(0, n).unwrap();
        doc.encode_state_as_update(None).unwrap()
    }

    #[test]
    fn items_at_one_position_are_bounded_per_update() {
        let honest = backwards(1, 20_000);
        assert!(decode_update(&honest).is_ok(), "the densest honest shape");
        let over = backwards(1, MAX_ITEMS_PER_ANCHOR + 2);
        assert!(over.len() < 100);
        let err = decode_update(&over).unwrap_err();
        assert!(err.to_string().contains("one position"), "{err}");
        // A document's own state is not held to it: accepted updates add up.
        assert!(Document::from_update(2, &over).is_ok());
    }

    #[test]
    fn map_keys_do_not_share_a_position() {
        // Keys of a map each have their own position though none has an origin (a Yjs client's
        // `Y.Map`; nested types are refused, so the map is a root).
        let doc = yrs::Doc::with_client_id(3);
        let map = doc.get_or_insert_map("m");
        {
            use yrs::{Map, Transact};
            let mut txn = doc.transact_mut();
            for i in 0..(MAX_ITEMS_PER_ANCHOR + 10) {
                map.insert(&mut txn, format!("k{i}"), i);
            }
        }
        use yrs::{ReadTxn, Transact};
        let state = doc
            .transact()
            .encode_state_as_update_v2(&StateVector::default());
        assert!(decode_update(&state).is_ok());
    }

    #[test]
    fn references_outside_the_update_and_the_document_are_missing() {
        use yrs::{ReadTxn, Transact};
        let mut a = Document::new(1);
        let u1 = a.insert(0, "ab").unwrap();
        let u2 = a.insert(2, "cd").unwrap(); // 1#2, after 1#1
        let mut c = Document::from_update(2, &u1).unwrap();
        let after = c.insert(1, "z").unwrap(); // 2#0, between 1#0 and 1#1
        let delete = c.delete(0, 1).unwrap(); // deletes 1#0
        let empty = Document::new(9).yrs().transact().state_vector();
        let mut room = Document::new(9);
        room.apply_update(&u1).unwrap();
        let has_u1 = room.yrs().transact().state_vector();
        let missing = |bytes: &[u8], sv: &StateVector| {
            let (update, refs) = crate::doc::decode_untrusted(bytes).unwrap();
            refs.missing_from(&update, sv)
        };
        assert!(missing(&u2, &empty), "a clock gap");
        assert!(!missing(&u2, &has_u1));
        assert!(missing(&after, &empty), "origins the document lacks");
        assert!(!missing(&after, &has_u1));
        assert!(
            missing(&delete, &empty),
            "a delete of what the document lacks"
        );
        assert!(!missing(&delete, &has_u1));
        let both = crate::doc::merge_updates(&[&u1, &after]).unwrap();
        assert!(
            !missing(&both, &empty),
            "what the update brings itself is there"
        );
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow() {
        // One item of `Any` content (info 8) in the root `body` whose value is `depth` nested
        // one-element arrays. Unchecked, depth 10,000 (20 KB) overflows the stack and aborts.
        let nested = |depth: usize| {
            let mut u = vec![0u8];
            column(&mut u, &[]);
            column(&mut u, &[1]);
            column(&mut u, &[]);
            column(&mut u, &[]);
            column(&mut u, &[8]);
            let mut strings = Vec::new();
            column(&mut strings, b"body");
            var_signed(&mut strings, 4);
            column(&mut u, &strings);
            column(&mut u, &[1]);
            column(&mut u, &[]);
            column(&mut u, &[1]); // one value
            var(&mut u, 1);
            var(&mut u, 1);
            var(&mut u, 0);
            for _ in 0..depth {
                u.extend_from_slice(&[117, 1]); // array of one
            }
            u.push(126); // null
            var(&mut u, 0);
            u
        };
        let mut doc = Document::new(9);
        assert!(
            doc.apply_update(&nested(MAX_ANY_DEPTH - 1))
                .unwrap()
                .changed
        );
        for depth in [MAX_ANY_DEPTH, 10_000, 1_000_000] {
            let u = nested(depth);
            assert!(decode_update(&u).is_err());
            let mut doc = Document::new(9);
            assert!(doc.apply_update(&u).is_err(), "depth {depth}");
            assert!(doc.is_empty());
        }
    }

    #[test]
    fn nested_shared_types_are_bounded_in_depth_by_the_room() {
        // `n` maps, each inside the previous one: info 7 (type content) forever, parent ids
        // (1, 0), (1, 1), ... as one run. Applied unchecked, deleting the outer map recurses `n`
        // deep in yrs; at 100,000 that overflows the stack and aborts the process.
        let nested = |n: u64| {
            let mut u = vec![0u8];
            column(&mut u, &[]);
            let mut clients = vec![0x41]; // client 1, n times
            var(&mut clients, n - 2);
            column(&mut u, &clients);
            let mut clocks = vec![0u8, 3]; // 0, then +1 for n - 1 more
            var(&mut clocks, n - 3);
            column(&mut u, &clocks);
            column(&mut u, &[]);
            column(&mut u, &[7]);
            let mut strings = Vec::new();
            column(&mut strings, b"m");
            var_signed(&mut strings, 1);
            column(&mut u, &strings);
            column(&mut u, &[1, 0, 0]); // a named root once, then parent ids
            let mut type_refs = vec![0x41]; // Y.Map, n times
            var(&mut type_refs, n - 2);
            column(&mut u, &type_refs);
            column(&mut u, &[]);
            var(&mut u, 1);
            var(&mut u, n);
            var(&mut u, 0);
            var(&mut u, 0);
            u
        };
        let small = nested(10);
        assert!(Document::new(9).apply_update(&small).unwrap().changed);
        // The bytes pass (types are allowed); the room refuses the depth (see `doc/depth.rs`).
        let mut room = crate::RoomState::new(Default::default(), 0);
        room.handle_op(crate::ConnId(1), None, &small).unwrap();
        let mut room = crate::RoomState::new(Default::default(), 0);
        let err = room
            .handle_op(crate::ConnId(1), None, &nested(100_000))
            .unwrap_err();
        assert!(err.to_string().contains("nests shared types"), "{err}");
        assert_eq!(
            room.encode_state(),
            crate::RoomState::new(Default::default(), 0).encode_state()
        );
        let sub_docs = forged(9, 3);
        let err = decode_update(&sub_docs).unwrap_err();
        assert!(err.to_string().contains("sub-documents"), "{err}");
    }
}
