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
            EngineError::BadRoomId => "bad_room_id",
            EngineError::BadOpId => "bad_op_id",
            EngineError::CorruptSavedState { .. } => "corrupt_saved_state",
            EngineError::SeqOutOfOrder { .. } => "seq_out_of_order",
        }
    }
}

/// Result alias used across the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
