//! Test and benchmark support for Concord (never shipped).
//!
//! # Layout
//! - [`traces`]: the editing traces in `testdata/traces` (Joseph Gentle's `editing-traces`),
//!   loaded into plain structs.
//! - [`edits`]: random text edits at UTF-16 offsets, biased to where replicas collide.
//! - [`seed`]: base seeds from `CONCORD_SEED`, per-iteration seeds, replayable failures.
//! - [`net`]: a seeded lossy link in virtual time (drops, duplicates, reordering) for sans-IO
//!   simulations.

pub mod edits;
pub mod lib0;
pub mod net;
pub mod seed;
pub mod traces;
