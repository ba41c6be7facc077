//! The room registry: lazy load on first join, one task per room, unload when idle.
//!
//! The map is behind a std `Mutex` (held only to look up or swap a handle, never across an
//! await), as in mini-redis' `db.rs`. A room task that is unloading removes itself under the
//! same lock, and only when its queue is empty; a join that still raced it gets `RoomClosing`
//! and comes back here for a fresh task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_engine::ConnId;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::now_ms;
use crate::error::{Result, ServerError};
use crate::room::{Member, Registry, RoomCmd, RoomContext, RoomTask};
use crate::store::Loaded;
use concord_engine::host::{HostConfig, RoomHost};
use concord_engine::RoomState;

#[derive(Clone)]
struct Handle {
    tx: mpsc::Sender<RoomCmd>,
    generation: u64,
}

/// A joined room, for sending it frames.
#[derive(Clone, Debug)]
pub struct RoomLink {
    /// The room's command queue.
    pub tx: mpsc::Sender<RoomCmd>,
}

/// All loaded rooms of this instance.
pub struct Rooms {
    map: Mutex<HashMap<String, Handle>>,
    next_generation: AtomicU64,
    /// Turns to read a room from the store (FIFO). After a restart every client reconnects at
    /// once and thousands of cold rooms load together; without a queue they all waited on
    /// the pool and those past its acquire timeout answered `unavailable`.
    loads: Semaphore,
    /// Set when a room could not be loaded for [`crate::Config::max_rooms`]: rooms with no members
    /// unload at their next tick instead of after `ROOM_IDLE_SECS`. Cleared once a tenth of
    /// the cap is free again.
    shedding: AtomicBool,
    ctx: RoomContext,
}

/// How long a cold room waits for its turn to load before its joins answer `unavailable`.
const LOAD_QUEUE_WAIT: Duration = Duration::from_secs(30);

impl Rooms {
    /// An empty registry.
    pub fn new(ctx: RoomContext) -> Arc<Rooms> {
        Arc::new(Rooms {
            map: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            loads: Semaphore::new(ctx.store.parallel_loads().max(1)),
            shedding: AtomicBool::new(false),
            ctx,
        })
    }

    /// Loads a room's host: reads the room from the store once it is its turn (waiting at
    /// most [`LOAD_QUEUE_WAIT`]) and rebuilds its state on the CPU pool.
    pub(crate) async fn load(&self, room: &str) -> Result<Box<RoomHost>> {
        let Ok(Ok(turn)) = tokio::time::timeout(LOAD_QUEUE_WAIT, self.loads.acquire()).await else {
            return Err(ServerError::Timeout {
                what: "room load queue",
                after_ms: LOAD_QUEUE_WAIT.as_millis() as u64,
            });
        };
        let loaded = self.ctx.store.load(room).await?;
        drop(turn);
        let (id, config) = (room.to_owned(), self.ctx.config.clone());
        let state = self
            .ctx
            .cpu
            .run(move || load_state(&id, loaded, &config))
            .await?
            .value?;
        let config = &self.ctx.config;
        let host = HostConfig {
            max_update_bytes: config.limits.max_update_bytes,
            max_presence_bytes: config.limits.max_presence_bytes,
            idle_ms: config.room_idle.as_millis() as u64,
            cpu_clock: crate::cpu::thread_cpu_time,
        };
        Ok(Box::new(RoomHost::new(
            room.to_owned(),
            state,
            host,
            now_ms(),
        )))
    }

    pub(crate) fn ctx(&self) -> &RoomContext {
        &self.ctx
    }

    /// Number of rooms loaded now.
    pub fn loaded(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Joins `conn` to `room` (loading it if needed). The room queues the member's first
    /// frames before this returns.
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        conn: ConnId,
        sv: Option<Vec<u8>>,
        member: Member,
    ) -> Result<RoomLink> {
        let (tx, ()) = self
            .call(room, |reply| RoomCmd::Join {
                conn,
                sv: sv.clone(),
                member: member.clone(),
                reply,
            })
            .await?;
        Ok(RoomLink { tx })
    }

    /// Writes `update` (v2) into `room` as `author`, through the same checks, group commit,
    /// broadcast and hub as a keystroke, and returns the seq at which it is durable (the
    /// room's seq if it changed nothing). [`ServerError::Rejected`] if the room refused it.
    pub async fn write(
        self: &Arc<Self>,
        room: &str,
        update: Vec<u8>,
        author: Option<String>,
    ) -> Result<u64> {
        let call = self.call(room, |reply| RoomCmd::Write {
            update: update.clone(),
            author: author.clone(),
            reply,
        });
        // The commit is bounded by COMMIT_TIMEOUT_MS; the room answers within it and a margin.
        let bound = self.ctx.config.commit_timeout + Duration::from_secs(5);
        match tokio::time::timeout(bound, call).await {
            Ok(answer) => answer.map(|(_, seq)| seq),
            Err(_) => Err(ServerError::Timeout {
                what: "room write",
                after_ms: bound.as_millis() as u64,
            }),
        }
    }

    /// Sends the command `ask` makes to `room` (loading it if needed) and waits for its
    /// reply; a room that was closing is asked again, through a fresh task.
    async fn call<T>(
        self: &Arc<Self>,
        room: &str,
        ask: impl Fn(oneshot::Sender<Result<T>>) -> RoomCmd,
    ) -> Result<(mpsc::Sender<RoomCmd>, T)> {
        for _ in 0..8 {
            if self.ctx.shutdown.is_cancelled() {
                return Err(ServerError::RoomClosing);
            }
            let handle = self.handle(room)?;
            let (reply, rx) = oneshot::channel();
            if handle.tx.send(ask(reply)).await.is_err() {
                self.unregister(room, handle.generation);
                continue;
            }
            match rx.await {
                Ok(Ok(value)) => return Ok((handle.tx, value)),
                Ok(Err(ServerError::RoomClosing)) | Err(_) => {
                    self.unregister(room, handle.generation);
                    continue;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(ServerError::Unavailable)
    }

    /// The room's task, started if it is not loaded and the instance has room for it.
    fn handle(self: &Arc<Self>, room: &str) -> Result<Handle> {
        let mut map = match self.map.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(h) = map.get(room) {
            if !h.tx.is_closed() {
                return Ok(h.clone());
            }
            map.remove(room);
        }
        if map.len() >= self.ctx.config.max_rooms {
            // Idle rooms make way at their next tick; this join is refused, and its retry
            // (a client's reconnect backoff) finds the room they leave.
            self.shedding.store(true, Ordering::Relaxed);
            crate::metrics::get().refused("rooms");
            return Err(ServerError::Overloaded { what: "rooms" });
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.ctx.config.room_queue);
        let handle = Handle { tx, generation };
        map.insert(room.to_owned(), handle.clone());
        let task = RoomTask {
            id: room.to_owned(),
            generation,
            registry: self.clone(),
            ctx: self.ctx.clone(),
            rx,
        };
        let (rooms, id) = (self.clone(), room.to_owned());
        self.ctx
            .tracker
            .spawn(async move { task.run(rooms.load(&id)).await });
        Ok(handle)
    }

    /// Deletes the room's stored data and stops it on every instance: its members are closed
    /// (4404). The room here is stopped first and waited for, so nothing it has in flight
    /// commits after the delete; it is told again afterwards in case a client reloaded it in
    /// between; other instances hear it through the hub, after the delete (a commit of theirs
    /// racing that message can outlive the delete: see the README). Returns whether anything
    /// was stored or loaded.
    pub async fn delete(&self, room: &str) -> Result<bool> {
        let (done, stopped) = oneshot::channel();
        let was_loaded = self.tell(room, RoomCmd::Delete { done: Some(done) }).await;
        if was_loaded {
            let _ = stopped.await;
        }
        let stored = self.ctx.store.delete_room(room).await?;
        self.tell(room, RoomCmd::Delete { done: None }).await;
        self.ctx.hub.publish_deleted(room);
        Ok(stored || was_loaded)
    }

    /// Sends `cmd` to the room if it is loaded here (never loads it); false if it is not.
    async fn tell(&self, room: &str, cmd: RoomCmd) -> bool {
        let tx = {
            let map = match self.map.lock() {
                Ok(map) => map,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.get(room).map(|h| h.tx.clone())
        };
        match tx {
            Some(tx) => tx.send(cmd).await.is_ok(),
            None => false,
        }
    }

    /// Stops shedding once a tenth of [`crate::Config::max_rooms`] is free.
    fn relieved(&self, loaded: usize) {
        let max = self.ctx.config.max_rooms;
        if loaded < max - max / 10 {
            self.shedding.store(false, Ordering::Relaxed);
        }
    }
}

impl Registry for Rooms {
    fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Removes the room's entry if it is still this generation.
    fn unregister(&self, room: &str, generation: u64) {
        let mut map = match self.map.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.get(room).map(|h| h.generation) == Some(generation) {
            map.remove(room);
            self.relieved(map.len());
        }
    }

    /// Unregisters an idle room, but only if nothing is queued for it: checked under the map
    /// lock, so no new join can get this handle afterwards.
    fn unregister_if_idle(
        &self,
        room: &str,
        generation: u64,
        rx: &mpsc::Receiver<RoomCmd>,
    ) -> bool {
        let mut map = match self.map.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !rx.is_empty() || map.get(room).map(|h| h.generation) != Some(generation) {
            return false;
        }
        map.remove(room);
        self.relieved(map.len());
        true
    }
}

fn load_state(id: &str, loaded: Loaded, config: &crate::config::Config) -> Result<RoomState> {
    RoomState::load(
        loaded.snapshot.as_deref(),
        loaded.snapshot_seq,
        &loaded.ops,
        config.compaction,
        now_ms(),
    )
    .map(|state| state.with_limits(config.room_limits))
    .map_err(|source| ServerError::Corrupt {
        room: id.to_owned(),
        source,
    })
}
