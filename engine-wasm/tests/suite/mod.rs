//! The WebAssembly test suite, run by `node.rs` (Node) and `browser.rs` (headless Chromium).
//!
//! # Layout
//! - [`convergence`]: three replicas, random concurrent edits, shuffled and duplicated
//!   delivery; all end with the same document.
//! - [`session`]: `ClientSession` offline queue, reconnection replay, resend and acks against a
//!   real [`concord_engine::RoomState`]; `exportState` / `importState`.
//! - [`bad_input`]: random and mutated bytes and frames come back as JS `Error`s with a `code`
//!   and change nothing.
//! - [`utf16`]: offsets, `length` and remote `changes` in UTF-16 units, around emoji and CJK.
//!
//! Everything goes through the exported API (what JavaScript calls). Randomness comes from a
//! fixed seed per test; iteration `i` uses `base + i`, and every assertion message names the
//! seed. `CONCORD_SEED=<seed> CONCORD_ITERATIONS=1 wasm-pack test --release --node engine-wasm --
//! <test name>` replays one (read at compile time: a wasm module has no environment).
//!
//! On wasm32 a panic aborts the whole module, so a test cannot catch one: the bad-input tests
//! record the input they are feeding ([`Feeding`]) and a panic hook prints it before the abort.

mod bad_input;
mod convergence;
mod session;
mod utf16;

use std::cell::RefCell;
use std::fmt;

use concord_engine::room::{CompactionPolicy, ConnId, RoomEvent, RoomState};
use concord_engine::wire::{decode_b64, ClientMessage, Limits, ServerMessage};
use concord_wasm::Document;
use wasm_bindgen::{JsCast, JsValue};

/// A small, fast, seedable generator (SplitMix64); no dependency, identical on every runtime.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// One seeded iteration of a test, for assertion messages.
#[derive(Clone, Copy)]
pub struct Case {
    pub test: &'static str,
    pub seed: u64,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seed {} (replay: CONCORD_SEED={} CONCORD_ITERATIONS=1 wasm-pack test --release \
             --node engine-wasm -- {})",
            self.test, self.seed, self.seed, self.test
        )
    }
}

fn env_u64(value: Option<&str>) -> Option<u64> {
    let text = value?.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The seeds of a randomized test: `iterations` seeds from `base` (or `$CONCORD_SEED` and
/// `$CONCORD_ITERATIONS` at build time). Debug builds run a tenth of them: debug wasm is about
/// ten times slower, and the browser runner's default timeout (20 s) covers the whole suite.
/// `scripts/test-wasm.sh` runs release builds, with every iteration.
pub fn cases(test: &'static str, base: u64, iterations: u64) -> impl Iterator<Item = Case> {
    let base = env_u64(option_env!("CONCORD_SEED")).unwrap_or(base);
    let default = if cfg!(debug_assertions) {
        iterations.div_ceil(10)
    } else {
        iterations
    };
    let iterations = env_u64(option_env!("CONCORD_ITERATIONS")).unwrap_or(default);
    (0..iterations).map(move |i| Case {
        test,
        seed: base.wrapping_add(i),
    })
}

/// Distinct random client ids below 2^53 (as JavaScript would draw them).
pub fn client_ids(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut ids: Vec<u64> = Vec::new();
    while ids.len() < n {
        let id = rng.range(1, (1 << 53) - 1);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.into_iter().map(|id| id as f64).collect()
}

// ---- text and edits ------------------------------------------------------------------------

const PIECES: &[&str] = &[
    "a", "b", "c", "x", "y", " ", "hello ", "world", "\n", "é", "e\u{301}", "中", "文字", "😀",
    "👍🏽", "🇫🇷", "Ω", "🙂🙃", "𝄞",
];

/// Random text of 1-8 pieces (sometimes up to 30), ASCII, CJK, emoji and combining marks.
pub fn random_text(rng: &mut Rng) -> String {
    let n = if rng.chance(0.1) {
        rng.range(8, 30)
    } else {
        rng.range(1, 8)
    };
    (0..n).map(|_| *rng.pick(PIECES)).collect()
}

/// UTF-16 length, as JavaScript's `String.prototype.length`.
pub fn utf16_len(text: &str) -> u32 {
    text.encode_utf16().count() as u32
}

/// `text.length` computed by JavaScript itself.
pub fn js_length(text: &str) -> u32 {
    js_sys::JsString::from(text).length()
}

/// UTF-16 offsets of every character boundary, 0 to the length inclusive.
pub fn boundaries(text: &str) -> Vec<u32> {
    let mut out = vec![0];
    let mut at = 0;
    for c in text.chars() {
        at += c.len_utf16() as u32;
        out.push(at);
    }
    out
}

/// Replace `delete` UTF-16 units at `index` with `insert`.
#[derive(Debug, Clone)]
pub struct Edit {
    pub index: u32,
    pub delete: u32,
    pub insert: String,
}

/// A random edit of `text` at character boundaries, piling up where replicas collide: offset
/// 0, the end, and a `hot` offset shared between replicas.
pub fn random_edit(rng: &mut Rng, text: &str, hot: u32) -> Edit {
    let bounds = boundaries(text);
    let len = *bounds.last().unwrap_or(&0);
    let slot = match rng.below(100) {
        0..=29 => 0,
        30..=54 => bounds.len() - 1,
        55..=74 => bounds.partition_point(|&b| b <= hot.min(len)) - 1,
        _ => rng.below(bounds.len() as u64) as usize,
    };
    let index = bounds[slot];
    if len == 0 || index == len || rng.chance(0.55) {
        return Edit {
            index,
            delete: 0,
            insert: random_text(rng),
        };
    }
    let available = bounds.len() - 1 - slot;
    let chars = rng.range(1, available.min(8) as u64) as usize;
    let insert = if rng.chance(0.45) {
        random_text(rng)
    } else {
        String::new()
    };
    Edit {
        index,
        delete: bounds[slot + chars] - index,
        insert,
    }
}

/// Applies an edit to a UTF-16 model of a text.
pub fn splice(model: &mut Vec<u16>, index: u32, delete: u32, insert: &str) {
    let (i, d) = (index as usize, delete as usize);
    model.splice(i..i + d, insert.encode_utf16());
}

// ---- JavaScript values ---------------------------------------------------------------------

/// The `code` of a JS `Error` thrown by the module, or `None` if `err` is not such an error.
pub fn error_code(err: &JsValue) -> Option<String> {
    if !err.is_instance_of::<js_sys::Error>() {
        return None;
    }
    js_sys::Reflect::get(err, &JsValue::from_str("code"))
        .ok()?
        .as_string()
}

/// The code of the error `result` must be; panics (naming `what`) if it is `Ok` or not a JS
/// `Error` with a string `code`.
pub fn expect_error<T>(result: Result<T, JsValue>, what: &dyn fmt::Display) -> String {
    match result {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(err) => error_code(&err)
            .unwrap_or_else(|| panic!("{what}: thrown value is not an Error with a code: {err:?}")),
    }
}

/// A boolean property of a plain JS object (`applyUpdate`'s `{changed, pending}`).
pub fn flag(value: &JsValue, name: &str) -> bool {
    js_sys::Reflect::get(value, &JsValue::from_str(name))
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or_else(|| panic!("no boolean `{name}` in {value:?}"))
}

/// A full state re-encoded after loading it into a fresh document in one transaction.
///
/// yrs does not merge blocks it split while integrating concurrent inserts, so replicas that
/// saw the same updates in different orders can encode the same document with differently
/// split blocks; loading a state in one go merges every mergeable neighbour, which makes the
/// bytes canonical (see `engine/tests/engine/convergence.rs`).
pub fn canonical(state: &[u8]) -> Vec<u8> {
    Document::from_update(1.0, state)
        .and_then(|d| d.encode_state_as_update(None))
        .unwrap_or_else(|e| panic!("a full state must load: {e:?}"))
}

// ---- naming the input that aborts the module -----------------------------------------------

thread_local! {
    static FEEDING: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records what is being fed to the module while `f` runs, so that if the module aborts
/// (a panic is an abort on wasm32) the panic hook prints the exact input first.
pub struct Feeding;

impl Feeding {
    pub fn run<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        install_panic_hook();
        FEEDING.with(|c| *c.borrow_mut() = Some(what()));
        let out = f();
        FEEDING.with(|c| *c.borrow_mut() = None);
        out
    }
}

fn install_panic_hook() {
    thread_local! {
        static INSTALLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    // After a failed test the module has trapped mid-panic and still counts as panicking;
    // the hook cannot be changed then (and the test that failed has said why).
    if INSTALLED.with(|i| i.replace(true)) || std::thread::panicking() {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(input) = FEEDING.with(|c| c.borrow().clone()) {
            wasm_bindgen_test::console_error!("the module panicked (aborts) on: {input}");
        }
        previous(info)
    }));
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- a server, in process --------------------------------------------------------------------

/// A room as the server runs it: `RoomState` with every accepted op committed at once (group
/// commit of one), speaking the JSON wire protocol. Frames go in and out as strings, exactly as
/// the WebSocket carries them.
pub struct Server {
    pub room: RoomState,
}

impl Server {
    pub fn new() -> Self {
        Server {
            room: RoomState::new(CompactionPolicy::default(), 0),
        }
    }

    /// The first frame for a connection that opened with `?sv=<sv_b64>`.
    pub fn sync_frame(&self, sv_b64: &str) -> String {
        let sv = decode_b64("sv", sv_b64).expect("connect() returns base64");
        self.room
            .sync_for(Some(&sv))
            .expect("the session's state vector decodes")
            .to_json()
    }

    /// Handles one client frame from `conn`; returns the frames to send, per connection.
    pub fn receive(&mut self, conn: u64, frame: &str) -> Vec<(u64, String)> {
        let conn = ConnId(conn);
        let msg = ClientMessage::parse(frame, &Limits::default())
            .expect("the session sends valid frames")
            .expect("the session sends known frames");
        let result = match msg {
            ClientMessage::Op { id, update, .. } => self.room.handle_op(conn, id, &update),
            ClientMessage::Sync { update } => self.room.handle_op(conn, None, &update),
            ClientMessage::Presence(_) => Ok(()),
        };
        let mut out = Vec::new();
        if let Err(err) = result {
            out.push((conn.0, ServerMessage::error(&err).to_json()));
        }
        if self.room.take_batch().is_some() {
            let first = self.room.seq() + 1;
            self.room.handle_committed(first).expect("commits in order");
        }
        while let Some(ev) = self.room.poll_event() {
            match ev {
                RoomEvent::Ack { conn, id, seq } => {
                    out.push((conn.0, ServerMessage::Ack { id, seq }.to_json()))
                }
                RoomEvent::Broadcast {
                    seq,
                    update,
                    origin,
                } => {
                    // Every other connection; the tests name theirs 1..=4.
                    for c in (1..=4).filter(|&c| Some(ConnId(c)) != origin) {
                        out.push((
                            c,
                            ServerMessage::Op {
                                seq,
                                update: update.clone(),
                            }
                            .to_json(),
                        ));
                    }
                }
                RoomEvent::CatchUp { .. } => unreachable!("one instance, no gaps"),
                // One instance: no hub to tell.
                RoomEvent::Committed { .. } => {}
            }
        }
        out
    }
}
