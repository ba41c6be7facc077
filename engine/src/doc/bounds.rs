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

use yrs::block::{
    BLOCK_GC_REF_NUMBER, BLOCK_ITEM_ANY_REF_NUMBER, BLOCK_ITEM_BINARY_REF_NUMBER,
    BLOCK_ITEM_DELETED_REF_NUMBER, BLOCK_ITEM_DOC_REF_NUMBER, BLOCK_ITEM_EMBED_REF_NUMBER,
    BLOCK_ITEM_FORMAT_REF_NUMBER, BLOCK_ITEM_JSON_REF_NUMBER, BLOCK_ITEM_STRING_REF_NUMBER,
    BLOCK_ITEM_TYPE_REF_NUMBER, BLOCK_SKIP_REF_NUMBER, HAS_ORIGIN, HAS_PARENT_SUB,
    HAS_RIGHT_ORIGIN,
};
use yrs::encoding::read::{Cursor, Read};
use yrs::types::TypeRef;
use yrs::updates::decoder::{Decode, Decoder, DecoderV2};

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

/// Ok when `bytes`, decoded as a v2 update, stays inside the bounds for `source`. An error means
/// either "over the bounds" or "malformed" (yrs would fail on it too).
pub(crate) fn check(bytes: &[u8], source: Source) -> Result<(), String> {
    let max_elements = match source {
        Source::Untrusted => max_elements(bytes.len()),
        Source::Accepted => MAX_STATE_ELEMENTS,
    };
    let mut walk = Walk {
        decoder: DecoderV2::new(Cursor::new(bytes)).map_err(|e| e.to_string())?,
        budget: max_elements,
        allow_types: source == Source::Accepted,
    };
    walk.update().map_err(|e| match e {
        Stop::Yrs(e) => e.to_string(),
        Stop::TooMany => format!(
            "declares more than {max_elements} blocks for its {} bytes",
            bytes.len()
        ),
        Stop::TooDeep => format!("nests values deeper than {MAX_ANY_DEPTH} levels"),
        Stop::Malformed(what) => what.to_owned(),
    })
}

enum Stop {
    Yrs(yrs::encoding::read::Error),
    TooMany,
    TooDeep,
    Malformed(&'static str),
}

impl From<yrs::encoding::read::Error> for Stop {
    fn from(e: yrs::encoding::read::Error) -> Self {
        Stop::Yrs(e)
    }
}

struct Walk<'a> {
    decoder: DecoderV2<'a>,
    budget: u64,
    allow_types: bool,
}

impl Walk<'_> {
    fn spend(&mut self, n: u64) -> Result<(), Stop> {
        self.budget = self.budget.checked_sub(n).ok_or(Stop::TooMany)?;
        Ok(())
    }

    /// Mirrors `Update::decode` up to the delete set.
    fn update(&mut self) -> Result<(), Stop> {
        let clients: u32 = self.decoder.read_var()?;
        for _ in 0..clients {
            let blocks = self.decoder.read_var::<u32>()?;
            self.decoder.read_client()?;
            let _clock: u32 = self.decoder.read_var()?;
            // yrs reserves room for `blocks` up front, so the declared count is what costs.
            self.spend(u64::from(blocks))?;
            for _ in 0..blocks {
                self.block()?;
            }
        }
        Ok(())
    }

    /// Mirrors `Update::decode_block`.
    fn block(&mut self) -> Result<(), Stop> {
        let d = &mut self.decoder;
        let info = d.read_info()?;
        match info {
            BLOCK_SKIP_REF_NUMBER => {
                let _len: u32 = d.read_var()?;
            }
            BLOCK_GC_REF_NUMBER => {
                d.read_len()?;
            }
            info => {
                let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
                if info & HAS_ORIGIN != 0 {
                    d.read_left_id()?;
                }
                if info & HAS_RIGHT_ORIGIN != 0 {
                    d.read_right_id()?;
                }
                if cant_copy_parent_info {
                    if d.read_parent_info()? {
                        d.read_string()?;
                    } else {
                        d.read_left_id()?;
                    }
                    if info & HAS_PARENT_SUB != 0 {
                        d.read_string()?;
                    }
                }
                self.content(info)?;
            }
        }
        Ok(())
    }

    /// Mirrors `ItemContent::decode`.
    fn content(&mut self, info: u8) -> Result<(), Stop> {
        match info & 0b1111 {
            BLOCK_ITEM_DELETED_REF_NUMBER => {
                self.decoder.read_len()?;
            }
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
            }
            BLOCK_ITEM_BINARY_REF_NUMBER => {
                self.decoder.read_buf()?;
            }
            BLOCK_ITEM_STRING_REF_NUMBER => {
                self.decoder.read_string()?;
            }
            BLOCK_ITEM_EMBED_REF_NUMBER => self.any(0)?,
            BLOCK_ITEM_FORMAT_REF_NUMBER => {
                self.decoder.read_key()?;
                self.any(0)?;
            }
            BLOCK_ITEM_TYPE_REF_NUMBER | BLOCK_ITEM_DOC_REF_NUMBER if !self.allow_types => {
                return Err(Stop::Malformed(
                    "nested shared types and sub-documents are not accepted: \
                     a Concord document is one text",
                ));
            }
            BLOCK_ITEM_TYPE_REF_NUMBER => {
                TypeRef::decode(&mut self.decoder)?;
            }
            BLOCK_ITEM_ANY_REF_NUMBER => {
                let len = self.decoder.read_len()?;
                self.spend(u64::from(len))?;
                for _ in 0..len {
                    self.any(0)?;
                }
            }
            BLOCK_ITEM_DOC_REF_NUMBER => {
                self.spend(DOC_ELEMENT_COST)?;
                // `Options::decode`: a guid from the string column, then options as `Any`.
                self.decoder.read_string()?;
                self.any(0)?;
            }
            _ => return Err(Stop::Malformed("unknown content type")),
        }
        Ok(())
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
            assert!(decode_update(&small).is_ok());
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
    fn nested_shared_types_are_not_accepted_from_clients() {
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
        for n in [10, 100_000] {
            let err = decode_update(&nested(n)).unwrap_err();
            assert!(err.to_string().contains("nested shared types"), "{err}");
        }
        let sub_docs = forged(9, 3);
        let err = decode_update(&sub_docs).unwrap_err();
        assert!(err.to_string().contains("sub-documents"), "{err}");
    }
}
