//! Concord's sync engine: everything that can be decided without I/O.
//!
//! # Layout
//! - [`doc`]: [`Document`], a yrs document with one `Y.Text` (`body`) edited at UTF-16 offsets.
//! - [`wire`]: the JSON messages of the WebSocket protocol, base64, validation and size limits.
//! - [`client`]: [`ClientSession`], the browser side's state machine: pending ops, acks, offline
//!   queue and reconnection replay.
//! - [`room`]: [`RoomState`], the server side's state machine for one room: validate, dedupe,
//!   sequence, and the compaction fold.
//! - [`host`]: [`host::RoomHost`], one room as the server runs it: members of every protocol
//!   and in-process writers, frames rendered once per protocol, presence, timers, store and
//!   hub commands.
//! - [`rate`]: token buckets and the update pacer (time as an argument).
//! - [`changes`]: [`TextChange`], what a remote update did to the text, for editor bindings.
//! - [`yjs`]: the Yjs binary protocol (y-websocket): client frames to room requests, room
//!   answers to frames, presence as awareness.
//! - [`hocuspocus`]: the Hocuspocus protocol: many documents on one socket, auth per document,
//!   `SyncStatus`, stateless strings, v4 ping; a per-socket state machine.
//! - [`awareness`]: presence/awareness per room: changes coalesced per short tick (bounded),
//!   cursors mapped between UTF-16 offsets and Yjs relative positions.
//! - [`error`]: [`EngineError`], the one error type, with stable wire codes.
//!
//! The engine never touches sockets, files, clocks or randomness: time and ids come in as
//! arguments and decisions come out as values or events (the sans-IO style of `quinn-proto`).
//! The server and the browser only move bytes.

#![warn(missing_docs)]

pub mod awareness;
pub mod changes;
pub mod client;
pub mod doc;
pub mod error;
pub mod history;
pub mod hocuspocus;
pub mod host;
pub mod rate;
pub mod room;
pub mod wire;
pub mod yjs;

pub use changes::TextChange;
pub use client::{ClientEvent, ClientSession, Role, SessionStatus};
pub use doc::{Applied, Document, BODY};
pub use error::{EngineError, Result};
pub use room::{CompactionPolicy, ConnId, RoomEvent, RoomLimits, RoomState};
pub use wire::{ClientMessage, Limits, ServerMessage};
