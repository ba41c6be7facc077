//! [`AppState`]: what every HTTP handler and socket task is given. Below the handlers and the
//! router, above the services it holds, so no handler imports the router.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::rooms::Rooms;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Loaded rooms.
    pub rooms: Arc<Rooms>,
    /// Settings.
    pub config: Arc<Config>,
    /// One permit per open WebSocket.
    pub connections: Arc<Semaphore>,
    /// Byte budgets of the outbound queues.
    pub outbound: Arc<crate::outbox::Budget>,
    /// Byte budget of frames being parsed.
    pub inbound: crate::inbound::Inbound,
    /// Where large frames are parsed.
    pub cpu: crate::cpu::CpuPool,
    /// Who may read and write which room.
    pub auth: Arc<crate::auth::Auth>,
}
