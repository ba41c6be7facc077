//! The one error type of the engine.
//!
//! Every variant maps to a stable wire `code` (see [`EngineError::code`]) so the server can send
//! clients an actionable code and a safe message while logging the detail.

use thiserror::Error;

/// Everything that can go wrong inside the engine. Inputs from the network, disk or a user never
/// panic; they end up here.
// Variant fields are spelled out in each variant's message.
#[allow(missing_docs)]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A frame was not the JSON the protocol expects.
    #[error("malformed message: {reason}")]
    MalformedMessage { reason: String },

    /// A base64 field did not decode.
    #[error("field `{field}` is not valid base64")]
    BadBase64 { field: &'static str },

    /// A frame or field is larger than the configured limit; the sender should split it.
    #[error("{what} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },

    /// Bytes that yrs cannot decode or integrate as a v2 update.
    #[error("invalid update: {reason}")]
    InvalidUpdate { reason: String },

    /// A state vector that does not decode.
    #[error("invalid state vector: {reason}")]
    InvalidStateVector { reason: String },

    /// The update builds on changes the room has not seen yet (a dropped or reordered frame).
    /// Nothing was applied; the client should resend its pending ops from the start.
    #[error("update depends on changes the room has not seen; resend pending ops in order")]
    MissingDependencies,

    /// A local edit addressed text outside the document.
    #[error("edit at {index}+{len} is outside the text of length {text_len} (UTF-16 units)")]
    OutOfBounds { index: u32, len: u32, text_len: u32 },

    /// A positional edit's start or end fell between the two UTF-16 units of one character (a
    /// surrogate pair): applied, it would have broken the character in two.
    #[error(
        "an edit starts or ends inside a character (between the UTF-16 units of a surrogate pair)"
    )]
    SplitsCharacter,

    /// Room ids are 1-128 characters of `A-Z a-z 0-9 _ - .` so they are safe in URLs, keys and logs.
    #[error("room id must be 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.'")]
    BadRoomId,

    /// Op ids are 1-128 printable ASCII characters.
    #[error("op id must be 1-128 printable ASCII characters")]
    BadOpId,

    /// Exported client state that does not decode (corrupt IndexedDB entry, wrong version).
    #[error("saved client state is corrupt: {reason}")]
    CorruptSavedState { reason: String },

    /// A seq out of order with what the room knows (a bug in the caller, not bad input).
    #[error("seq {got} does not follow the room's seq {expected}")]
    SeqOutOfOrder { expected: u64, got: u64 },

    /// A local edit while this replica may only read (the server sent `access` `read`). Nothing
    /// was applied or queued.
    #[error("this replica has read access only; the edit was not applied")]
    ReadOnly,

    /// Accepting the op would put more bytes in the room's memory than its budget allows
    /// (see [`crate::room::RoomLimits`]): the store is behind. Nothing was applied; retry later.
    #[error("room is over its {what} budget: {bytes} + {len} bytes > {max} bytes")]
    Overloaded {
        what: &'static str,
        bytes: usize,
        len: usize,
        max: usize,
    },

    /// An update passed every check before integration and still failed inside yrs (an error or
    /// a panic). The room rebuilt its document from its checkpoint to drop whatever was
    /// half-applied, which costs the whole document: a sender that causes this is hostile or
    /// broken, and the server should close its connection.
    #[error("update failed while integrating (document rebuilt): {reason}")]
    IntegrationFailed { reason: String },
}

impl EngineError {
    /// The stable code sent to clients in `{"t":"error","code":...}`.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::MalformedMessage { .. } => "malformed_message",
            EngineError::BadBase64 { .. } => "bad_base64",
            EngineError::TooLarge { .. } => "too_large",
            EngineError::InvalidUpdate { .. } => "invalid_update",
            EngineError::InvalidStateVector { .. } => "invalid_state_vector",
            EngineError::MissingDependencies => "missing_dependencies",
            EngineError::OutOfBounds { .. } => "out_of_bounds",
            EngineError::SplitsCharacter => "splits_character",
            EngineError::BadRoomId => "bad_room_id",
            EngineError::BadOpId => "bad_op_id",
            EngineError::CorruptSavedState { .. } => "corrupt_saved_state",
            EngineError::SeqOutOfOrder { .. } => "seq_out_of_order",
            EngineError::ReadOnly => "read_only",
            EngineError::Overloaded { .. } => "overloaded",
            EngineError::IntegrationFailed { .. } => "integration_failed",
        }
    }

    /// A fixed message for clients, one per code: what to do about it, without echoing input or
    /// naming internals (serde_json positions, yrs panic messages, sizes of server state). The
    /// detailed `Display` is for server logs.
    pub fn client_message(&self) -> &'static str {
        match self {
            EngineError::MalformedMessage { .. } => {
                "the frame is not a valid protocol message; check the client version"
            }
            EngineError::BadBase64 { .. } => "a binary field is not valid base64",
            EngineError::TooLarge { .. } => "the frame is too large; split the update",
            EngineError::InvalidUpdate { .. } => {
                "the update is not valid or not accepted by this server; it was not applied"
            }
            EngineError::InvalidStateVector { .. } => {
                "the state vector is not valid; reconnect without one"
            }
            EngineError::MissingDependencies => {
                "the update depends on changes the room has not seen; resend pending ops in order"
            }
            EngineError::OutOfBounds { .. } => "the edit is outside the text",
            EngineError::SplitsCharacter => {
                "an edit starts or ends inside a character (a surrogate pair); use offsets between characters"
            }
            EngineError::BadRoomId => {
                "room id must be 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.'"
            }
            EngineError::BadOpId => "op id must be 1-128 printable ASCII characters",
            EngineError::CorruptSavedState { .. } => "saved client state is corrupt",
            EngineError::SeqOutOfOrder { .. } => "internal sequencing error; reconnect",
            EngineError::ReadOnly => "you have read access only; the edit was not applied",
            EngineError::Overloaded { .. } => {
                "the room is overloaded; the op was not applied, retry it later"
            }
            EngineError::IntegrationFailed { .. } => {
                "the update could not be integrated; it was not applied"
            }
        }
    }
}

/// Result alias used across the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
