//! Delete sets and state vectors in Yjs's order, so a document's state encodes to the bytes
//! Yjs writes.
//!
//! A v2 update ends with its delete set: the number of clients, then per client its id and its
//! deleted clock ranges. Yjs writes the clients in descending id order (`writeDeleteSet` sorts
//! them, "to ensure the delete set is written in a deterministic order"); yrs 0.28.1 keeps them
//! in a `BTreeMap` and writes them ascending. Everything else, blocks included, is written the
//! same way (yrs sorts block clients descending too), so the same document encodes to different
//! bytes in Yjs and in Concord as soon as two clients have deleted something, which breaks
//! byte-for-byte comparison with Yjs peers and golden tests (found by
//! `web/test/interop.test.mjs`: about two runs in three differed only there).
//!
//! [`yjs_order`] rewrites that tail. It is a pure byte rewrite of the suffix yrs wrote: if the
//! bytes do not end the way yrs writes the delete set, they are returned unchanged.
//!
//! State vectors likewise: Yjs writes clients descending, yrs in hash-map order, which is not
//! even the same for two replicas with the same state. [`state_vector`] writes Yjs's order.

use std::ops::Range;
use yrs::encoding::write::Write as _;

use yrs::{IdSet, StateVector};

/// `sv` v1-encoded as Yjs's `encodeStateVector` writes it: the number of clients, then
/// `(client, clock)` pairs, clients descending.
pub(crate) fn state_vector(sv: &StateVector) -> Vec<u8> {
    let mut clients: Vec<(u64, u32)> = sv.iter().map(|(c, &clock)| (c.get(), clock)).collect();
    clients.sort_unstable_by_key(|&(client, _)| std::cmp::Reverse(client));
    let mut out = Vec::new();
    out.write_var(clients.len() as u64);
    for (client, clock) in clients {
        out.write_var(client);
        out.write_var(u64::from(clock));
    }
    out
}

/// `encoded` (a v2 update whose delete set is `ds`, as yrs encoded it) with the delete set's
/// clients in descending order, as Yjs writes them.
pub(crate) fn yjs_order(encoded: Vec<u8>, ds: &IdSet) -> Vec<u8> {
    if ds.len() < 2 {
        return encoded;
    }
    let clients: Vec<(u64, Vec<Range<u32>>)> = ds
        .iter()
        .map(|(client, ranges)| (client.get(), ranges.iter().cloned().collect()))
        .collect();
    let ascending = write_delete_set(clients.iter());
    if !encoded.ends_with(&ascending) {
        return encoded;
    }
    let descending = write_delete_set(clients.iter().rev());
    let mut out = encoded;
    out.truncate(out.len() - ascending.len());
    out.extend_from_slice(&descending);
    out
}

/// The v2 delete-set bytes for `clients` in the given order (lib0 `DSEncoderV2`: clocks as
/// differences from the end of the previous range of the same client, lengths minus one).
fn write_delete_set<'a>(
    clients: impl ExactSizeIterator<Item = &'a (u64, Vec<Range<u32>>)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.write_var(clients.len() as u64);
    for (client, ranges) in clients {
        out.write_var(*client);
        out.write_var(ranges.len() as u64);
        let mut current = 0u32;
        for range in ranges {
            out.write_var(u64::from(range.start.wrapping_sub(current)));
            let len = range.end.wrapping_sub(range.start);
            out.write_var(u64::from(len.wrapping_sub(1)));
            current = range.end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use yrs::{ReadTxn, Transact};

    use crate::Document;

    /// Clients 3, 1 and 2 each type a character; a fourth replica deletes all three.
    fn three_clients_deleted() -> Document {
        let mut d = Document::new(9);
        for (id, ch) in [(3, "c"), (1, "a"), (2, "b")] {
            let mut peer = Document::new(id);
            let u = peer.insert(0, ch).unwrap();
            d.apply_update(&u).unwrap();
        }
        d.delete(0, 3).unwrap();
        d
    }

    #[test]
    fn delete_set_clients_are_written_descending_as_yjs_does() {
        let d = three_clients_deleted();
        let state = d.encode_state_as_update(None).unwrap();
        // 3 clients; then client 3, 1 range, clock 0, length 1 (written as 0); then 2; then 1.
        assert!(
            state.ends_with(&[3, 3, 1, 0, 0, 2, 1, 0, 0, 1, 1, 0, 0]),
            "{state:?}"
        );
        let copy = Document::from_update(5, &state).unwrap();
        assert_eq!(copy.text(), "");
        assert_eq!(copy.encode_state_as_update(None).unwrap(), state);
    }

    #[test]
    fn ranges_keep_their_clock_differences() {
        let mut a = Document::new(1);
        let mut b = Document::new(2);
        b.apply_update(&a.insert(0, "abcdef").unwrap()).unwrap();
        a.apply_update(&b.insert(6, "ghij").unwrap()).unwrap();
        // Client 1: clocks 1 and 3..5; client 2: clock 2 of its 0..4.
        a.delete(1, 1).unwrap();
        a.delete(2, 2).unwrap();
        a.delete(5, 1).unwrap();
        let state = a.encode_state_as_update(None).unwrap();
        assert_eq!(a.text(), "acfghj");
        let copy = Document::from_update(3, &state).unwrap();
        assert_eq!(copy.text(), "acfghj");
        assert!(
            state.ends_with(&[2, 2, 1, 2, 0, 1, 2, 1, 0, 1, 1]),
            "{state:?}"
        );
    }

    #[test]
    fn state_vectors_list_clients_descending_and_decode() {
        let d = three_clients_deleted();
        let sv = d.state_vector();
        // 3 clients: 3 at clock 1, 2 at 1, 1 at 1 (9, which only deleted, has no clock).
        assert_eq!(sv, vec![3, 3, 1, 2, 1, 1, 1]);
        let decoded = crate::doc::decode_state_vector(&sv).unwrap();
        assert_eq!(decoded, d.yrs().transact().state_vector());
    }

    #[test]
    fn one_client_or_none_is_unchanged() {
        let mut d = Document::new(1);
        d.insert(0, "abc").unwrap();
        let before = d.encode_state_as_update(None).unwrap();
        d.delete(0, 1).unwrap();
        let after = d.encode_state_as_update(None).unwrap();
        assert!(before.ends_with(&[0]) && after.ends_with(&[1, 1, 1, 0, 0]));
    }
}
