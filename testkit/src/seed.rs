//! Seeds for randomized tests, so every failure can be replayed exactly.
//!
//! A test has a fixed default base seed; `CONCORD_SEED=<n>` replaces it. Iteration `i` runs with
//! seed `base + i`, so the seed a failure reports is the base of a run whose first iteration is
//! the failing one. Tests draw their randomness only from that seed (no clocks, no OS entropy).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The environment variable that overrides the base seed.
pub const SEED_ENV: &str = "CONCORD_SEED";

/// The environment variable that overrides a test's iteration count (a soak run: larger).
pub const ITERATIONS_ENV: &str = "CONCORD_ITERATIONS";

/// The base seed: `$CONCORD_SEED` (decimal, or hex with `0x`) if set, else `default`.
///
/// # Panics
/// If `CONCORD_SEED` is set but is not a number: a typo must not silently run other seeds.
pub fn base_seed(default: u64) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => parse(&text).unwrap_or_else(|| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => default,
    }
}

/// The iteration count: `$CONCORD_ITERATIONS` if set, else `default`.
///
/// # Panics
/// If `CONCORD_ITERATIONS` is set but is not a number.
pub fn iterations(default: u64) -> u64 {
    match std::env::var(ITERATIONS_ENV) {
        Ok(text) => {
            parse(&text).unwrap_or_else(|| panic!("{ITERATIONS_ENV}={text:?} is not a u64"))
        }
        Err(_) => default,
    }
}

fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Runs `iterations` iterations of `run`, iteration `i` with seed `base_seed(default) + i`.
///
/// A panic in an iteration fails the test at once, re-raised with a message that names the
/// seed and the command that replays it, that iteration alone:
/// `CONCORD_SEED=<seed> CONCORD_ITERATIONS=1 cargo test <replay>`, where
/// `replay` is the rest of the command line, e.g.
/// `"--release -p concord-engine --test engine convergence_property"`. Nothing is swallowed.
pub fn for_each_seed(replay: &str, default: u64, iterations: u64, run: impl FnMut(u64)) {
    run_seeds(replay, base_seed(default), iterations, run);
}

fn run_seeds(replay: &str, base: u64, iterations: u64, mut run: impl FnMut(u64)) {
    for i in 0..iterations {
        let seed = base.wrapping_add(i);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            panic!(
                "iteration {i} of {iterations} failed with seed {seed}: {}\n\
                 replay: {SEED_ENV}={seed} {ITERATIONS_ENV}=1 cargo test {replay}",
                panic_message(&*panic)
            );
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_decimal_or_hex() {
        assert_eq!(parse("42"), Some(42));
        assert_eq!(parse(" 0x2a\n"), Some(42));
        assert_eq!(parse("forty-two"), None);
    }

    #[test]
    fn a_failing_iteration_names_its_seed() {
        let result = catch_unwind(|| {
            run_seeds("-p x --test y", 100, 10, |seed| assert_ne!(seed, 103));
        });
        let message = panic_message(&*result.unwrap_err());
        assert!(message.contains("seed 103"), "{message}");
        assert!(
            message.contains("CONCORD_SEED=103 CONCORD_ITERATIONS=1 cargo test -p x --test y"),
            "{message}"
        );
    }
}
