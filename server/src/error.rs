//! The one error type of the server crate.
//!
//! Clients never see these messages: connections send an engine error code or a generic
//! `unavailable`, and the detail goes to the log.

use thiserror::Error;

/// What can go wrong in the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A configuration variable has a value the server cannot use.
    #[error("bad configuration: {name}={value:?}: {reason}")]
    Config {
        /// Environment variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: String,
    },

    /// The database failed (connect, migrate, query).
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),

    /// Migrations failed to apply.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Stored data the engine rejects (a corrupt snapshot or op).
    #[error("stored data for room {room}: {source}")]
    Corrupt {
        /// The room.
        room: String,
        /// What the engine said.
        source: concord_engine::EngineError,
    },

    /// The room task is gone (shutting down or unloading); the caller may retry.
    #[error("room is closing")]
    RoomClosing,

    /// The store could not be reached in time, or the commit pipeline is gone.
    #[error("store unavailable")]
    Unavailable,

    /// Something inside the server broke (a room job panicked, a worker is gone). Logged;
    /// clients see `unavailable`.
    #[error("internal: {0}")]
    Internal(&'static str),

    /// Binding or serving the listener failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for the server crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
