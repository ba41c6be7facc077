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
        /// Its value, with any URL password replaced by `***` (`secret::redact_url`): this
        /// error is printed at startup, and logs must not carry credentials.
        value: String,
        /// Why it is rejected.
        reason: String,
    },

    /// The database failed (connect, migrate, query).
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),

    /// Opening the store failed. The target is redacted (`secret::redact_url`) and the reason
    /// scrubbed of the URL and its password, since this is printed at startup.
    #[error(
        "cannot open the store at DATABASE_URL={target}: {reason}; expected a database this \
         server can reach, log in to and migrate"
    )]
    Connect {
        /// `DATABASE_URL`, password replaced by `***`.
        target: String,
        /// The driver's error, scrubbed.
        reason: String,
    },

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

    /// The instance is at a budget (`what`: `rooms`, ...) and refuses new work rather than
    /// take more than it can hold; the caller may retry shortly (close 1013, HTTP 503 with
    /// `Retry-After`).
    #[error("overloaded: too many {what}")]
    Overloaded {
        /// Which budget is full.
        what: &'static str,
    },

    /// The store could not be reached in time, or the commit pipeline is gone.
    #[error("store unavailable")]
    Unavailable,

    /// Something inside the server broke (a room job panicked, a worker is gone). Logged;
    /// clients see `unavailable`.
    #[error("internal: {0}")]
    Internal(&'static str),

    /// The store as a whole did not answer within its bound: the committer's
    /// `COMMIT_TIMEOUT_MS` around a group transaction (or around a load, catch-up or
    /// compaction), a pool that could not hand out a connection, or SQLite's file lock held
    /// past `STATEMENT_TIMEOUT_MS`. Every room behind it is stalled alike, so the committer
    /// does not retry room by room.
    #[error("store {what} timed out after {after_ms} ms")]
    Timeout {
        /// What was waiting (`commit`, `load`, `ops_after`, `compact`, `connect`).
        what: &'static str,
        /// The bound that elapsed.
        after_ms: u64,
    },

    /// The database cancelled one statement after `STATEMENT_TIMEOUT_MS` (Postgres
    /// `statement_timeout` or `lock_timeout`). Unlike [`ServerError::Timeout`] this can be one
    /// room's problem (another instance holding that room's lock), so a group commit that hits
    /// it is retried room by room.
    #[error("store statement cancelled after {after_ms} ms ({what})")]
    StatementTimeout {
        /// What the database reported (`statement timeout`, `lock timeout`).
        what: &'static str,
        /// The configured bound.
        after_ms: u64,
    },

    /// The room refused an update written from inside the server (see [`crate::rooms::Rooms::write`]):
    /// the engine's stable error code (`invalid_update`, `overloaded`, ...).
    #[error("the room refused the update: {code}")]
    Rejected {
        /// The engine's error code.
        code: String,
    },

    /// The object store (`OBJECT_STORE_URL`) failed or did not answer in time.
    #[error("object store {what}: {reason}")]
    Objects {
        /// The call (`put`, `get`, `delete`, `ping`).
        what: &'static str,
        /// What went wrong, without credentials.
        reason: String,
    },

    /// The hub (Redis) did not answer a health check.
    #[error("hub: {reason}")]
    Hub {
        /// The driver's error (it never carries the URL).
        reason: String,
    },

    /// Binding or serving the listener failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// Whether this is a store stall (either kind of timeout): what a stalled store yields
    /// instead of hanging, and what a caller may retry once the store is back.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ServerError::Timeout { .. } | ServerError::StatementTimeout { .. }
        )
    }
}

/// Result alias for the server crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
