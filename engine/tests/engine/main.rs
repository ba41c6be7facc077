//! Integration tests of `concord-engine`, in one test binary (one link step; cheap on 2 cores).
//!
//! Every randomized test is seeded: the seed is printed on failure and `CONCORD_SEED=<n>`
//! replays it.

mod attacks;
mod bad_input;
mod convergence;
mod history;
mod lossy_network;
mod traces;
