//! Random text edits for property tests, addressed in UTF-16 code units like Concord's API.
//!
//! Edits pile up where collaborative editors collide: at offset 0, at the end, and at a "hot"
//! offset the test shares between replicas, with multi-character and non-ASCII text (emoji,
//! flags, skin tones, CJK, combining marks) so UTF-16 offsets are exercised.

use rand::seq::SliceRandom;
use rand::Rng;

/// Replace `delete` UTF-16 units at `index` with `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// UTF-16 offset.
    pub index: u32,
    /// UTF-16 units removed at `index`.
    pub delete: u32,
    /// Text inserted at `index` after the removal.
    pub insert: String,
}

/// How edits are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditConfig {
    /// An offset the test shares between replicas, so their concurrent edits collide there.
    pub hot: u32,
    /// Chance that an offset is any UTF-16 unit, possibly inside a surrogate pair, instead of a
    /// character boundary.
    pub raw_offsets: f64,
    /// Above this many UTF-16 units every edit deletes (up to 64 characters), so long runs keep
    /// documents small enough to stay fast. 0: no limit.
    pub max_len: u32,
}

impl Default for EditConfig {
    fn default() -> Self {
        EditConfig {
            hot: 0,
            raw_offsets: 0.0,
            max_len: 0,
        }
    }
}

const PIECES: &[&str] = &[
    "a", "b", "c", "x", "y", "z", " ", "hello ", "world", "\n", "é", "e\u{301}", "中", "文字",
    "😀", "👍🏽", "🇫🇷", "Ω", "ß", "∑", "🙂🙃",
];

/// Random text of 1-8 pieces, ASCII and not.
pub fn random_text(rng: &mut impl Rng) -> String {
    let n = if rng.gen_bool(0.1) {
        rng.gen_range(8..=40)
    } else {
        rng.gen_range(1..=8)
    };
    (0..n)
        .map(|_| *PIECES.choose(rng).unwrap_or(&"?"))
        .collect()
}

/// UTF-16 offsets of every character boundary of `text`, from 0 to its length inclusive.
pub fn boundaries(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() + 1);
    let mut at = 0u32;
    out.push(0);
    for c in text.chars() {
        at += c.len_utf16() as u32;
        out.push(at);
    }
    out
}

/// A random edit of `text` (its current content).
pub fn random_edit(rng: &mut impl Rng, text: &str, config: &EditConfig) -> Edit {
    let bounds = boundaries(text);
    let len = *bounds.last().unwrap_or(&0);
    let raw = config.raw_offsets > 0.0 && rng.gen_bool(config.raw_offsets);
    // Index into `bounds` (or a raw offset) where the edit starts.
    let start_slot = match rng.gen_range(0..100) {
        0..=29 => 0,
        30..=54 => bounds.len() - 1,
        55..=74 => bounds.partition_point(|&b| b <= config.hot.min(len)) - 1,
        _ => rng.gen_range(0..bounds.len()),
    };
    let start = if raw {
        rng.gen_range(0..=len)
    } else {
        bounds[start_slot]
    };
    let too_long = config.max_len > 0 && len > config.max_len;
    let start = if too_long && start == len {
        bounds[rng.gen_range(0..bounds.len() - 1)]
    } else {
        start
    };
    let insert_only = !too_long && (len == 0 || start == len || rng.gen_bool(0.55));
    if insert_only {
        return Edit {
            index: start,
            delete: 0,
            insert: random_text(rng),
        };
    }
    let max_chars = if too_long {
        64
    } else if rng.gen_bool(0.1) {
        40
    } else {
        8
    };
    let delete = if raw {
        rng.gen_range(1..=(len - start).min(max_chars * 2))
    } else {
        let first = bounds.partition_point(|&b| b < start);
        let available = bounds.len() - 1 - first;
        let chars = rng.gen_range(1..=available.min(max_chars as usize));
        bounds[first + chars] - start
    };
    let insert = if !too_long && rng.gen_bool(0.45) {
        random_text(rng)
    } else {
        String::new()
    };
    Edit {
        index: start,
        delete,
        insert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn utf16_len(s: &str) -> u32 {
        s.encode_utf16().count() as u32
    }

    /// Applies an edit made at character boundaries to a Rust string.
    fn apply(text: &str, edit: &Edit) -> String {
        let units: Vec<u16> = text.encode_utf16().collect();
        let (i, d) = (edit.index as usize, edit.delete as usize);
        let mut out: Vec<u16> = units[..i].to_vec();
        out.extend(edit.insert.encode_utf16());
        out.extend_from_slice(&units[i + d..]);
        String::from_utf16(&out).expect("edits at boundaries keep valid UTF-16")
    }

    #[test]
    fn edits_stay_in_bounds_and_on_character_boundaries() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut text = String::new();
        let config = EditConfig {
            hot: 5,
            raw_offsets: 0.0,
            max_len: 0,
        };
        for _ in 0..5000 {
            let edit = random_edit(&mut rng, &text, &config);
            assert!(edit.index + edit.delete <= utf16_len(&text));
            assert!(edit.delete > 0 || !edit.insert.is_empty());
            text = apply(&text, &edit);
            if utf16_len(&text) > 400 {
                text.clear();
            }
        }
    }

    #[test]
    fn raw_offsets_stay_in_bounds() {
        let mut rng = SmallRng::seed_from_u64(4);
        let text = "a😀b中🇫🇷";
        let config = EditConfig {
            hot: 2,
            raw_offsets: 1.0,
            max_len: 0,
        };
        for _ in 0..1000 {
            let edit = random_edit(&mut rng, text, &config);
            assert!(edit.index + edit.delete <= utf16_len(text));
        }
    }

    #[test]
    fn max_len_turns_edits_into_deletes() {
        let mut rng = SmallRng::seed_from_u64(5);
        let text = "abc😀".repeat(50);
        let config = EditConfig {
            max_len: 20,
            ..EditConfig::default()
        };
        for _ in 0..1000 {
            let edit = random_edit(&mut rng, &text, &config);
            assert!(edit.insert.is_empty() && edit.delete > 0, "{edit:?}");
            assert!(edit.index + edit.delete <= utf16_len(&text));
        }
    }
}
