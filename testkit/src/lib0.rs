//! Hand-written lib0 / Yjs v2 bytes, for tests that forge updates no honest peer would send.

/// An unsigned lib0 varint.
pub fn var(out: &mut Vec<u8>, v: u64) {
    yrs::encoding::write::Write::write_var(out, v);
}

/// lib0's signed varint: sign in bit 6 of the first byte.
pub fn var_signed(out: &mut Vec<u8>, v: i64) {
    let signed = yrs::encoding::varint::Signed::new(v, v < 0);
    yrs::encoding::write::Write::write_var_signed(out, &signed);
}

/// A length-prefixed byte run (a v2 column, or a lib0 buffer).
pub fn column(out: &mut Vec<u8>, bytes: &[u8]) {
    yrs::encoding::write::Write::write_buf(out, bytes);
}

/// A v2 update of `blocks` blocks of `client`, every field read from exhausted run-length
/// columns: `info` repeats forever (0: GC blocks, 1: deleted items), every length is 1, every
/// string empty, and an empty delete set. About 35 bytes whatever the count.
pub fn forged_blocks(client: i64, info: u8, blocks: u64) -> Vec<u8> {
    let mut u = vec![0u8];
    column(&mut u, &[]); // key clocks
    let mut clients = Vec::new();
    var_signed(&mut clients, client);
    column(&mut u, &clients);
    column(&mut u, &[]); // left clocks
    column(&mut u, &[]); // right clocks
    column(&mut u, &[info]); // info, repeated forever
    let mut strings = vec![0u8, 0x40]; // no string bytes; lengths: 0, `blocks` times
    var(&mut strings, blocks);
    column(&mut u, &strings);
    column(&mut u, &[1]); // parent info: a named root, forever
    column(&mut u, &[]); // type refs
    let mut lens = Vec::new();
    var_signed(&mut lens, -1); // lengths: 1, `blocks` times
    var(&mut lens, blocks);
    column(&mut u, &lens);
    var(&mut u, 1); // one client
    var(&mut u, blocks);
    var(&mut u, 0); // first clock
    var(&mut u, 0); // empty delete set
    u
}
