//! The words of access decisions: [`Role`], what a connection may do in a room; [`LiveRole`],
//! the role of an open connection, which changes when a grant does; [`Denied`], why a request
//! is refused. A leaf: the store keeps roles, tokens refuse with `Denied`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a connection may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Receive everything; send presence and awareness, never an update.
    Read,
    /// Also send updates.
    Write,
}

impl Role {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
        }
    }

    /// Parses `read` / `write`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            _ => None,
        }
    }
}

/// A connection's current role in its room, shared by the room (which refuses a reader's
/// updates) and the connection (which changes it when a grant changes).
#[derive(Debug)]
pub struct LiveRole(AtomicU8);

impl LiveRole {
    /// Starting at `role`.
    pub fn new(role: Role) -> Arc<LiveRole> {
        Arc::new(LiveRole(AtomicU8::new(role as u8)))
    }

    /// The role now.
    pub fn get(&self) -> Role {
        if self.0.load(Ordering::Acquire) == Role::Write as u8 {
            Role::Write
        } else {
            Role::Read
        }
    }

    /// Changes it; returns whether it changed.
    pub fn set(&self, role: Role) -> bool {
        self.0.swap(role as u8, Ordering::AcqRel) != role as u8
    }

    /// Whether updates are allowed.
    pub fn can_write(&self) -> bool {
        self.get() == Role::Write
    }
}

/// Why a request or connection is refused. Each has a stable code and a message safe to show;
/// neither ever says more (which check failed, what the token held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed one, a bad signature, an algorithm not configured.
    Unauthorized,
    /// A valid token past its `exp`.
    Expired,
    /// Authenticated, but not granted this room (or this action).
    Forbidden,
    /// Too many attempts; retry after this many seconds.
    RateLimited(u64),
    /// The accounts store did not answer; retry.
    Unavailable,
}

impl Denied {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Denied::Unauthorized => "unauthorized",
            Denied::Expired => "token_expired",
            Denied::Forbidden => "forbidden",
            Denied::RateLimited(_) => "rate_limited",
            Denied::Unavailable => "unavailable",
        }
    }

    /// Human-readable and safe to show.
    pub fn message(self) -> &'static str {
        match self {
            Denied::Unauthorized => "a valid token is required",
            Denied::Expired => "the token has expired; get a new one",
            Denied::Forbidden => "you do not have access to this",
            Denied::RateLimited(_) => "too many attempts; retry later",
            Denied::Unavailable => "access cannot be checked now; retry shortly",
        }
    }

    /// The HTTP status of this denial (also on a refused WebSocket upgrade).
    pub fn status(self) -> u16 {
        match self {
            Denied::Unauthorized | Denied::Expired => 401,
            Denied::Forbidden => 403,
            Denied::RateLimited(_) => 429,
            Denied::Unavailable => 503,
        }
    }
}
