//! Test and benchmark support for Concord (never shipped).
//!
//! # Layout
//! - [`traces`]: the editing traces of `../shared/traces` (Joseph Gentle's `editing-traces`),
//!   loaded into plain structs.

pub mod traces;
