//! A room's task: the thin actor around the engine's [`RoomHost`].
//!
//! The host decides everything about the room (which frame each member gets, in its protocol;
//! read-only refusals; acks once durable; presence, its TTLs and heartbeat; when to commit,
//! compact, catch up or unload). This task only moves bytes: commands from connections and
//! in-process writers (a bounded channel, drained in bursts so a busy room batches), results
//! of the store commands the host asked for, hub events and the host's timer go in; frames go
//! to members' outbound queues, commands to the committer and the store, publishes to the hub.
//! A burst that costs CPU (an update to apply, a document to encode) is handled on the
//! [`CpuPool`], one job at a time per room, so a busy room never stalls an async worker;
//! a burst of presence, leaves and commit results is handled here.
//!
//! Budgets applied here: each member's outbound queue is bounded in bytes (see [`outbox`]) and
//! a member that cannot keep up is dropped as a slow consumer (it resyncs on reconnect). The
//! host charges each member the CPU time its frames cost and closes one in debt; what it left
//! goes back to its payer's ledger when it leaves.
//!
//! [`outbox`]: crate::outbox

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_engine::host::{self, Input, Joiner, Output, Protocol, RoomHost, Written};
use concord_engine::ConnId;
use tokio::sync::{mpsc, oneshot};

mod command;

pub use command::{new_conn, presence_user, Member, Registry, RoomCmd, RoomContext};

use crate::clock::now_ms;
use crate::error::{Result, ServerError};
use crate::hub::HubEvent;
use crate::outbox::Frame;

/// Commands drained from the queue into one burst.
const BURST: usize = 1024;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A compaction in flight: the new snapshot and its op seq, if there was anything to fold.
type Compaction = Option<BoxFut<Result<Option<(Vec<u8>, u64)>>>>;
/// A catch-up read in flight: ops after the room's seq.
type CatchUp = Option<BoxFut<Result<Vec<(u64, Vec<u8>)>>>>;

/// Resolves an optional in-flight future; pending forever when there is none.
async fn poll_opt<T>(fut: &mut Option<BoxFut<T>>) -> T {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A store answer as the host takes it: the error is logged here, the host needs only to know
/// that it failed.
fn logged<T>(room: &str, what: &str, result: Result<T>) -> std::result::Result<T, ()> {
    result.map_err(|e| tracing::warn!(room = %room, error = %e, "{what} failed"))
}

/// What a room still hears from.
struct Open {
    /// The hub subscription.
    hub: bool,
    /// The command queue (closed once unloading or shutting down, then drained).
    queue: bool,
}

/// One connection as the room task knows it.
struct Link {
    member: Member,
    /// The host has answered its join: broadcasts reach it.
    joined: bool,
    /// Being closed (a slow consumer, a close the host asked for): nothing more is queued.
    dead: bool,
}

/// A room's task, started by the registry (which the task knows only as a [`Registry`]).
pub(crate) struct RoomTask {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) ctx: RoomContext,
    pub(crate) rx: mpsc::Receiver<RoomCmd>,
}

/// The running room: its host and the links to everyone it answers.
struct Room {
    id: String,
    generation: u64,
    registry: Arc<dyn Registry>,
    ctx: RoomContext,
    rx: mpsc::Receiver<RoomCmd>,
    /// `None` only while a job runs on the pool (or after one failed).
    host: Option<Box<RoomHost>>,
    links: HashMap<ConnId, Link>,
    joining: HashMap<ConnId, oneshot::Sender<Result<()>>>,
    writers: HashMap<ConnId, oneshot::Sender<Result<u64>>>,
    /// Inputs gathered for the next step of the host.
    inputs: Vec<Input>,
    commit: Option<BoxFut<Result<u64>>>,
    compaction: Compaction,
    catch_up: CatchUp,
    /// Unloading or shutting down: the queue is closed, joins go back to the registry.
    closing: bool,
    /// Deleted (here or on another instance): stop without writing anything more. Holds the
    /// deleters waiting for the stop.
    deleted: Option<Vec<oneshot::Sender<()>>>,
}

impl RoomTask {
    /// Runs the room until it unloads; `load` reads it from the store.
    pub(crate) async fn run(self, load: impl Future<Output = Result<Box<RoomHost>>>) {
        let ctx = self.ctx.clone();
        // Subscribe before reading the store, so nothing committed elsewhere falls between.
        let mut sub = ctx.hub.subscribe(&self.id).await;
        let host = match load.await {
            Ok(host) => host,
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "room load failed");
                let registry = self.registry.as_ref();
                return fail_waiting(registry, &self.id, self.generation, self.rx).await;
            }
        };
        let seq = host.state().seq();
        tracing::debug!(room = %self.id, seq, "room loaded");
        if ctx.config.webhooks.is_some() {
            // Off the room's path: joins do not wait for the outbox write.
            let (store, id) = (ctx.store.clone(), self.id.clone());
            ctx.tracker.spawn(async move {
                if let Err(e) = store.webhook_event(&id, crate::store::webhooks::LOADED, seq).await {
                    tracing::warn!(room = %id, error = %e, "webhooks: recording room.loaded failed");
                }
            });
        }
        let mut room = Room {
            id: self.id,
            generation: self.generation,
            registry: self.registry,
            ctx: ctx.clone(),
            rx: self.rx,
            host: Some(host),
            links: HashMap::new(),
            joining: HashMap::new(),
            writers: HashMap::new(),
            inputs: Vec::new(),
            commit: None,
            compaction: None,
            catch_up: None,
            closing: false,
            deleted: None,
        };
        for p in ctx.hub.live_presence(&room.id).await {
            room.inputs.push(Input::HubPresence(p));
        }
        room.run(&mut sub).await;
    }
}

impl Room {
    async fn run(&mut self, sub: &mut crate::hub::Subscription) {
        let mut open = Open {
            hub: true,
            queue: true,
        };
        loop {
            self.gather(sub, &mut open).await;
            if let Some(waiting) = self.deleted.take() {
                // Whatever is in flight is dropped: a commit not yet done rolls back, and the
                // deleter removes whatever did commit after this room has stopped.
                tracing::info!(room = %self.id, "room deleted; closing its members");
                self.close_all(4404, "room deleted");
                drop((
                    self.commit.take(),
                    self.compaction.take(),
                    self.catch_up.take(),
                ));
                self.stop_waiting().await;
                // The deleters go on once this room has stopped.
                drop(waiting);
                return;
            }
            while !self.inputs.is_empty() {
                if let Err(e) = self.step().await {
                    // The host is gone with whatever it held that was not durable; its senders
                    // still hold those ops and resend after reconnecting.
                    tracing::error!(room = %self.id, error = %e, "room failed; restarting it");
                    self.close_all(1012, "room restarting: reconnect");
                    return self.stop_waiting().await;
                }
            }
            if !open.queue && self.host.as_ref().is_none_or(|h| h.is_drained()) {
                break;
            }
        }
        self.unload().await;
    }

    /// Waits for the next thing to happen to the room (the host's timer, shutdown, a store
    /// answer, hub events, commands) and gathers it, with whatever else is already queued, as
    /// inputs for the next step.
    async fn gather(&mut self, sub: &mut crate::hub::Subscription, open: &mut Open) {
        let due = self.host.as_ref().map_or(u64::MAX, |h| h.poll_timeout());
        let due = tokio::time::Instant::now()
            + Duration::from_millis(due.saturating_sub(now_ms()).min(60_000));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                let shedding = self.registry.shedding();
                self.inputs.push(Input::Timeout { shedding });
            }
            _ = self.ctx.shutdown.cancelled(), if !self.closing => self.close_queue(),
            result = poll_opt(&mut self.commit) => {
                self.commit = None;
                let result = logged(&self.id, "commit", result);
                self.inputs.push(Input::Committed(result));
            }
            result = poll_opt(&mut self.compaction) => {
                self.compaction = None;
                let result = logged(&self.id, "compaction", result);
                self.inputs.push(Input::Compacted(result));
            }
            result = poll_opt(&mut self.catch_up) => {
                self.catch_up = None;
                let result = logged(&self.id, "catch-up", result);
                self.inputs.push(Input::CaughtUp(result));
            }
            event = sub.recv(), if open.hub => {
                let mut next = event;
                for _ in 0..BURST {
                    let Some(event) = next else {
                        open.hub = false;
                        break;
                    };
                    self.hub_event(event);
                    next = sub.try_recv();
                    if next.is_none() {
                        break;
                    }
                }
            }
            cmd = self.rx.recv(), if open.queue => match cmd {
                Some(cmd) => {
                    self.command(cmd);
                    // Drain a burst: everything queued goes to the host as one step.
                    for _ in 0..BURST {
                        match self.rx.try_recv() {
                            Ok(cmd) => self.command(cmd),
                            Err(_) => break,
                        }
                    }
                }
                // Closed (shutdown or unloading) and drained.
                None => {
                    open.queue = false;
                    self.closing = true;
                }
            },
        }
    }

    /// Takes what is already queued, refuses what comes later.
    fn close_queue(&mut self) {
        self.closing = true;
        self.rx.close();
    }

    fn command(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join {
                conn,
                sv,
                member,
                reply,
            } => {
                if self.closing {
                    let _ = reply.send(Err(ServerError::RoomClosing));
                    return;
                }
                let now = now_ms();
                let cpu = member
                    .payer
                    .and_then(|payer| self.ctx.cpu_ledger.resume(payer, now))
                    .unwrap_or_else(|| self.ctx.config.cpu_budget.full_bucket(now));
                let joiner = Joiner {
                    protocol: member.protocol,
                    user: member.user.clone(),
                    name: member.name.clone(),
                    writable: member.role.can_write(),
                    sv,
                    cpu,
                };
                self.inputs.push(Input::Join { conn, joiner });
                self.joining.insert(conn, reply);
                let link = Link {
                    member,
                    joined: false,
                    dead: false,
                };
                self.links.insert(conn, link);
            }
            RoomCmd::Frame { conn, msg } => {
                if let Some(link) = self.links.get(&conn).filter(|l| !l.dead) {
                    let writable = link.member.role.can_write();
                    let request = msg;
                    self.inputs.push(Input::Frame {
                        conn,
                        request,
                        writable,
                    });
                }
            }
            RoomCmd::Leave { conn } => {
                self.joining.remove(&conn);
                self.inputs.push(Input::Leave { conn });
            }
            RoomCmd::Write {
                update,
                author,
                reply,
            } => {
                if self.closing {
                    let _ = reply.send(Err(ServerError::RoomClosing));
                    return;
                }
                let conn = new_conn();
                self.writers.insert(conn, reply);
                self.inputs.push(Input::Write {
                    conn,
                    update,
                    author,
                });
            }
            RoomCmd::Delete { done } => {
                let waiting = self.deleted.get_or_insert_with(Vec::new);
                waiting.extend(done);
            }
        }
    }

    fn hub_event(&mut self, event: HubEvent) {
        let input = match event {
            HubEvent::Update { seq, update } => Input::HubUpdate { seq, update },
            HubEvent::Presence(p) => Input::HubPresence(*p),
            HubEvent::Resync => Input::Resync,
            HubEvent::Deleted => {
                self.deleted.get_or_insert_with(Vec::new);
                return;
            }
        };
        self.inputs.push(input);
    }

    /// Hands the gathered inputs to the host (here if they are all light, else on the pool)
    /// and carries out what it decided.
    async fn step(&mut self) -> Result<()> {
        let Some(mut host) = self.host.take() else {
            return Err(ServerError::Internal("room host missing"));
        };
        let inputs = std::mem::take(&mut self.inputs);
        // Fan-out latency runs from here: the burst was taken from the queue just now.
        let received = Instant::now();
        let now = now_ms();
        let light = inputs.iter().all(|input| host.is_light(input, now));
        let run = move || {
            for input in inputs {
                host.handle(input, now);
            }
            let outputs: Vec<Output> = std::iter::from_fn(|| host.poll_output()).collect();
            (host, outputs)
        };
        let (host, outputs) = if light {
            run()
        } else {
            self.ctx.cpu.run(run).await?.value
        };
        self.host = Some(host);
        for output in outputs {
            self.carry_out(output, received);
        }
        Ok(())
    }

    fn carry_out(&mut self, output: Output, received: Instant) {
        match output {
            Output::Send { to, frame } => {
                let frame = Frame::from(frame);
                self.offer(to, |_| Some(frame.clone()));
            }
            Output::Broadcast {
                frames,
                except,
                update,
            } => {
                let frames = Protocol::ALL.map(|p| frames.get(p).cloned().map(Frame::from));
                let recipients: Vec<ConnId> = self
                    .links
                    .iter()
                    .filter(|(conn, link)| link.joined && !except.contains(conn))
                    .map(|(conn, _)| *conn)
                    .collect();
                for conn in recipients {
                    self.offer(conn, |p| frames[p.slot()].clone());
                }
                // Fan-out latency is an update's, as before the host: presence flushes and
                // stateless strings are not edits.
                if update {
                    crate::metrics::get()
                        .fanout_seconds
                        .observe(crate::metrics::seconds(received));
                }
            }
            Output::Joined(conn) => {
                if let Some(link) = self.links.get_mut(&conn) {
                    link.joined = true;
                }
                if let Some(reply) = self.joining.remove(&conn) {
                    let _ = reply.send(Ok(()));
                }
            }
            Output::Close { conn, code, reason } => {
                if let Some(link) = self.links.get_mut(&conn) {
                    link.dead = true;
                    link.member.kill.kill(code, reason);
                }
            }
            Output::Removed { conn, cpu } => {
                if let Some(link) = self.links.remove(&conn) {
                    if let Some(payer) = link.member.payer {
                        self.ctx.cpu_ledger.save(payer, cpu, now_ms());
                    }
                }
            }
            Output::Written { conn, result } => {
                if let Some(reply) = self.writers.remove(&conn) {
                    let _ = reply.send(match result {
                        Written::Durable(seq) => Ok(seq),
                        Written::Rejected(e) => Err(ServerError::Rejected {
                            code: e.code().to_owned(),
                        }),
                        Written::Unavailable => Err(ServerError::Unavailable),
                    });
                }
            }
            Output::Commit { batch, origins } => {
                let committer = self.ctx.committer.clone();
                let id = self.id.clone();
                let meta = origins
                    .into_iter()
                    .map(|o| crate::store::OpMeta {
                        author: o.author,
                        base_seq: o.base_seq,
                    })
                    .collect();
                self.commit = Some(Box::pin(
                    async move { committer.commit(id, batch, meta).await },
                ));
            }
            Output::Compact => {
                let (store, id) = (self.ctx.store.clone(), self.id.clone());
                let (history, folds) = (self.ctx.config.history, self.ctx.folds.clone());
                self.compaction = Some(Box::pin(async move {
                    store.compact(&id, &history, &folds).await
                }));
            }
            Output::CatchUp { after } => {
                let (store, id) = (self.ctx.store.clone(), self.id.clone());
                self.catch_up = Some(Box::pin(async move { store.ops_after(&id, after).await }));
            }
            Output::PublishUpdate { seq, update } => {
                self.ctx.hub.publish_update(&self.id, seq, &update)
            }
            Output::PublishPresence(p) => {
                self.ctx
                    .hub
                    .publish_presence(&self.id, &p, host::PRESENCE_TTL_MS)
            }
            Output::Idle => {
                if !self.closing
                    && self
                        .registry
                        .unregister_if_idle(&self.id, self.generation, &self.rx)
                {
                    self.close_queue();
                }
            }
            Output::ErrorSent(code) => crate::metrics::get().error_frame(code),
        }
    }

    /// Queues a member its frame (`frame` picks it by protocol); one that cannot take it is
    /// dropped as a slow consumer, and the host hears that it left.
    fn offer(&mut self, conn: ConnId, frame: impl FnOnce(Protocol) -> Option<Frame>) {
        let Some(link) = self.links.get_mut(&conn).filter(|l| !l.dead) else {
            return;
        };
        let Some(frame) = frame(link.member.protocol) else {
            return;
        };
        if !link.member.out.offer(frame) {
            tracing::debug!(room = %self.id, conn = conn.0, "slow consumer disconnected");
            crate::metrics::get().slow_consumer_closes.inc();
            link.dead = true;
            link.member.kill.kill(1013, "too slow: reconnect to resync");
            self.inputs.push(Input::Leave { conn });
        }
    }

    /// Closes every connection with `code`; joins still waiting go back to the registry and
    /// writers are told the room is closing.
    fn close_all(&mut self, code: u16, reason: &'static str) {
        for (_, link) in self.links.drain() {
            link.member.out.close(code, reason);
            link.member.kill.kill(code, reason);
        }
        for (_, reply) in self.joining.drain() {
            let _ = reply.send(Err(ServerError::RoomClosing));
        }
        for (_, reply) in self.writers.drain() {
            let _ = reply.send(Err(ServerError::Unavailable));
        }
    }

    /// Stops at once: unregistered, and whatever is still queued is sent back.
    async fn stop_waiting(&mut self) {
        let rx = std::mem::replace(&mut self.rx, mpsc::channel(1).1);
        fail_waiting(self.registry.as_ref(), &self.id, self.generation, rx).await;
    }

    /// Drained: everything accepted is durable and acked. Other instances hear of the last
    /// presence changes; the members are closed, then a snapshot is left behind so the next
    /// load is one read.
    async fn unload(&mut self) {
        let host = self.host.take();
        if let Some(mut host) = host {
            for p in host.take_presence_publishes() {
                self.ctx
                    .hub
                    .publish_presence(&self.id, &p, host::PRESENCE_TTL_MS);
            }
            self.host = Some(host);
        }
        self.close_all(1001, "server shutting down");
        if let Some(f) = self.compaction.take() {
            let _ = f.await;
        }
        // Folded in steps of COMPACT_BYTES until the snapshot is at the room's seq, so the
        // next load reads no tail (bounded: a step that folds nothing ends it).
        let seq = self.host.as_ref().map_or(0, |h| h.state().seq());
        let (store, config) = (&self.ctx.store, &self.ctx.config);
        loop {
            match store
                .compact(&self.id, &config.history, &self.ctx.folds)
                .await
            {
                Ok(Some((_, folded))) if folded < seq => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(room = %self.id, error = %e, "final compaction failed");
                    break;
                }
            }
        }
        self.registry.unregister(&self.id, self.generation);
        // Joins and writes that raced the close are told to retry with a fresh room task.
        while let Ok(cmd) = self.rx.try_recv() {
            cmd.refuse(ServerError::RoomClosing);
        }
        if config.webhooks.is_some() {
            let event = crate::store::webhooks::UNLOADED;
            if let Err(e) = store.webhook_event(&self.id, event, seq).await {
                tracing::warn!(room = %self.id, error = %e, "webhooks: recording room.unloaded failed");
            }
        }
        tracing::debug!(room = %self.id, "room unloaded");
    }
}

/// A room that cannot go on: unregistered, its queue closed, and everyone still waiting in it
/// told to ask the registry again (a fresh task loads the room anew).
async fn fail_waiting(
    registry: &dyn Registry,
    id: &str,
    generation: u64,
    mut rx: mpsc::Receiver<RoomCmd>,
) {
    registry.unregister(id, generation);
    rx.close();
    while let Some(cmd) = rx.recv().await {
        cmd.refuse(ServerError::RoomClosing);
    }
}
