//! Loading the editing traces.
//!
//! The directory is `$CONCORD_TRACES` if set, else the repository's own `testdata/traces` (see its
//! README for the source and licence). A missing trace is a hard error: a test that silently
//! skipped its data would prove nothing.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;

/// One patch: at `pos` (character offset, equal to UTF-16 in these ASCII traces) delete `del`
/// characters, then insert `ins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Offset in characters.
    pub pos: u32,
    /// Characters deleted at `pos`.
    pub del: u32,
    /// Text inserted at `pos` after the delete.
    pub ins: String,
}

impl<'de> Deserialize<'de> for Patch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (pos, del, ins) = <(u32, u32, String)>::deserialize(d)?;
        Ok(Patch { pos, del, ins })
    }
}

/// A sequential trace: apply every patch in order to `start_content` to get `end_content`.
#[derive(Debug, Clone, Deserialize)]
pub struct SeqTrace {
    /// Text before the first patch.
    #[serde(rename = "startContent")]
    pub start_content: String,
    /// Text after the last patch.
    #[serde(rename = "endContent")]
    pub end_content: String,
    /// Transactions, each a list of patches.
    pub txns: Vec<SeqTxn>,
}

/// One transaction of a sequential trace.
#[derive(Debug, Clone, Deserialize)]
pub struct SeqTxn {
    /// The patches of this transaction, in order.
    pub patches: Vec<Patch>,
}

impl SeqTrace {
    /// Every patch of every transaction, in order.
    pub fn patches(&self) -> impl Iterator<Item = &Patch> {
        self.txns.iter().flat_map(|t| t.patches.iter())
    }
}

/// A concurrent trace: each transaction names its parents (indexes of earlier transactions) and
/// its patches are relative to the merge of its parents' documents.
#[derive(Debug, Clone, Deserialize)]
pub struct ConcTrace {
    /// Text after merging everything.
    #[serde(rename = "endContent")]
    pub end_content: String,
    /// Number of agents (editors).
    #[serde(rename = "numAgents")]
    pub num_agents: usize,
    /// Transactions in a causal order.
    pub txns: Vec<ConcTxn>,
}

/// One transaction of a concurrent trace.
#[derive(Debug, Clone, Deserialize)]
pub struct ConcTxn {
    /// Which agent made it.
    pub agent: usize,
    /// Indexes of the transactions it was made on top of (none: the empty document).
    pub parents: Vec<usize>,
    /// The patches, relative to the merged parents.
    pub patches: Vec<Patch>,
}

/// The traces directory: `$CONCORD_TRACES`, or `testdata/traces` in this checkout.
pub fn traces_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCORD_TRACES") {
        return PathBuf::from(dir);
    }
    // testkit/ sits at the workspace root, beside testdata/.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join("traces")
}

fn read_json(name: &str) -> Vec<u8> {
    let path = traces_dir().join(name);
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open trace {}: {e}", path.display()));
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut json)
        .unwrap_or_else(|e| panic!("cannot gunzip {}: {e}", path.display()));
    json
}

/// Loads a sequential trace by file name (e.g. `seq-automerge-paper.json.gz`).
pub fn load_seq(name: &str) -> SeqTrace {
    serde_json::from_slice(&read_json(name)).unwrap_or_else(|e| panic!("trace {name}: {e}"))
}

/// Loads a concurrent trace by file name (e.g. `conc-friendsforever.json.gz`).
pub fn load_conc(name: &str) -> ConcTrace {
    serde_json::from_slice(&read_json(name)).unwrap_or_else(|e| panic!("trace {name}: {e}"))
}

/// The B4 trace: ~260k single-character edits writing the automerge paper.
pub const AUTOMERGE_PAPER: &str = "seq-automerge-paper.json.gz";
/// The friendsforever session, linearised.
pub const FRIENDSFOREVER_FLAT: &str = "seq-friendsforever_flat.json.gz";
/// Two agents typing at once, with merges.
pub const FRIENDSFOREVER_CONC: &str = "conc-friendsforever.json.gz";
