//! One WebSocket connection: a thin bridge between the socket and its room.
//!
//! The reader parses frames and forwards them to the room's bounded queue (so a busy room
//! slows its readers instead of buffering without bound). The writer drains this connection's
//! outbound queue (bounded in bytes, see [`crate::outbox`]) and sends pings. Either side ending
//! ends the other; the room is told the connection left.
//!
//! Every write has a timeout: a peer that stops reading is dropped after `WRITE_TIMEOUT_SECS`
//! and its memory and connection permit are freed, instead of pinning both for as long as the
//! TCP stack keeps the socket. A peer that is being written to successfully is alive even if
//! its pong is stuck behind a backlog, so write progress counts as a sign of life too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use concord_engine::ConnId;
use futures_util::{Sink, SinkExt, StreamExt};

use crate::auth::limits::Payer;
use crate::auth::{AccessEvent, Admission, Denied, LiveRole, Principal, Role};
use crate::clock::now_ms;
use crate::error::ServerError;
use crate::outbox::Kill;
use crate::outbox::{self, Frame, Outbound};
use crate::room::{new_conn, presence_user, Member, RoomCmd};
use crate::rooms::RoomLink;
use crate::state::AppState;
use concord_engine::host::protocol::{self, Decoded, Inbound};
use concord_engine::host::{Protocol, Request};
use concord_engine::rate::{Pace, Pacer};

/// Frames up to this size are parsed on the reader's task; larger ones on the CPU pool.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// One socket operation, bounded in time: `false` if it failed or timed out.
pub(crate) async fn within<F: std::future::Future<Output = Result<(), E>>, E>(
    limit: Duration,
    op: F,
) -> bool {
    matches!(tokio::time::timeout(limit, op).await, Ok(Ok(())))
}

pub(crate) async fn close<S>(sink: &mut S, limit: Duration, code: u16, reason: &'static str)
where
    S: Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    within(limit, sink.send(frame)).await;
}

/// Runs a parser on this task for small frames, on the CPU pool for large ones (decoding
/// megabytes takes milliseconds: not on an async worker). `None` if the pool is gone.
pub(crate) async fn parse<T, F>(cpu: &crate::cpu::CpuPool, len: usize, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if len <= PARSE_INLINE_BYTES {
        Some(f())
    } else {
        cpu.run(f).await.ok().map(|ran| ran.value)
    }
}

/// The close code for a socket read that failed: 1009 for a frame over the size bound (the
/// WebSocket layer refused to buffer it), else 1002. The layer's error type is not exported
/// through axum, so its kind is told by its text, which names the bound it hit.
fn read_error_close(e: &axum::Error) -> (u16, &'static str) {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") {
        (1009, "frame too large")
    } else {
        (1002, "protocol error")
    }
}

/// The next message from the peer; `None` once the socket ended, the connection was killed,
/// or the peer was silent for `silence` while nothing could be written to it either.
pub(crate) async fn next_message<S>(
    stream: &mut S,
    kill: &Kill,
    silence: Duration,
    wrote_at: &AtomicU64,
) -> Option<Message>
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(silence, stream.next()) => next,
            _ = kill.killed() => return None,
        };
        match next {
            Ok(Some(Ok(msg))) => {
                let len = match &msg {
                    Message::Text(text) => text.len(),
                    Message::Binary(bytes) => bytes.len(),
                    _ => 0,
                };
                crate::metrics::get().bytes_in.inc_by(len as u64);
                return Some(msg);
            }
            Ok(Some(Err(e))) => {
                // The reader is done; the writer still closes the socket with a code that says
                // why, rather than dropping it (1006 on the client's side).
                let (code, reason) = read_error_close(&e);
                kill.kill(code, reason);
                return None;
            }
            Ok(None) => return None,
            Err(_) => {
                let wrote = wrote_at.load(Ordering::Relaxed);
                if now_ms().saturating_sub(wrote) < silence.as_millis() as u64 {
                    continue; // busy writing to it: alive
                }
                kill.kill(1001, "heartbeat timeout");
                return None;
            }
        }
    }
}

/// Holds an update back while the connection is over its rate (unread, so TCP pushes back);
/// a flood that never pauses is told so (on `out`, where its protocol has words for it) and
/// closed with 4429. `false` once the connection is closing.
pub(crate) async fn pace(
    pacer: &mut Pacer,
    kill: &Kill,
    conn: ConnId,
    out: &outbox::Outbox,
    protocol: Protocol,
) -> bool {
    match pacer.next(now_ms()) {
        Pace::Go => true,
        Pace::Wait(ms) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
                _ = kill.killed() => false,
            }
        }
        Pace::Flooding => {
            tracing::info!(
                conn = conn.0,
                "connection over its update rate for too long; closing it"
            );
            if let Some(frame) = protocol::rate_limited(protocol) {
                crate::metrics::get().error_frame("rate_limited");
                out.offer(frame);
            }
            kill.kill(4429, "update rate exceeded: retry later");
            false
        }
    }
}

/// Whose CPU budget a connection admitted as `admission` from `ip` spends: its user's with
/// auth on, else its address's.
pub(crate) fn payer(app: &AppState, admission: &Admission, ip: std::net::IpAddr) -> Payer {
    let user = admission.principal.as_ref().map(|p| p.id.as_str());
    app.rooms.ctx().cpu_ledger.payer(user, ip)
}

/// Serves one upgraded socket for `room` until either side closes, speaking `protocol` (the
/// JSON protocol, or y-websocket's binary one: each frame goes through its adapter in the
/// engine, and everything else, from limits to access, is the same). `admission` is what the
/// access check decided at upgrade; while the socket is open, [`Watch`] keeps it true. `ip`
/// is the client's address, whose CPU budget the connection spends when auth is off.
pub async fn serve(
    socket: WebSocket,
    room: String,
    sv: Option<Vec<u8>>,
    admission: Admission,
    ip: std::net::IpAddr,
    app: AppState,
    protocol: Protocol,
) {
    let conn = new_conn();
    let config = app.config.clone();
    let write_timeout = config.write_timeout;
    let (out, mut inbox) = outbox::channel(app.outbound.clone(), config.conn_queue);
    let kill = Arc::new(Kill::default());
    let role = LiveRole::new(admission.role);
    let member = Member {
        protocol,
        out: out.clone(),
        kill: kill.clone(),
        user: presence_user(conn),
        name: admission.principal.as_ref().map(|p| p.name.clone()),
        role: role.clone(),
        payer: Some(payer(&app, &admission, ip)),
    };
    // Subscribed before the join, so no grant change between the check and the join is missed.
    let events = admission.principal.as_ref().map(|_| app.auth.subscribe());
    let (mut sink, mut stream) = socket.split();

    let link = match app.rooms.join(&room, conn, sv, member).await {
        Ok(link) => link,
        Err(e) => {
            let overloaded = matches!(e, ServerError::Overloaded { .. });
            if !overloaded {
                tracing::warn!(room = %room, error = %e, "join failed");
            }
            let (frame, code, reason) = protocol::join_failed(protocol, overloaded);
            if let Some(frame) = frame {
                let frame = Frame::from(frame).into_message();
                within(write_timeout, sink.send(frame)).await;
            }
            close(&mut sink, write_timeout, code, reason).await;
            return;
        }
    };

    let heartbeat = config.heartbeat;
    // When the writer last got bytes to the peer (monotonic ms).
    let wrote_at = AtomicU64::new(now_ms());
    let writer = write(
        &mut sink,
        &mut inbox,
        &kill,
        &wrote_at,
        Timing {
            heartbeat,
            write_timeout,
        },
        &|| None,
    );

    let mut reader = Reader {
        app: &app,
        conn,
        protocol,
        link: &link,
        kill: &kill,
        out: &out,
        pacer: Pacer::new(
            config.update_rate.0,
            config.update_rate.1,
            config.update_patience.as_millis() as u64,
            now_ms(),
        ),
    };
    let reader = reader.run(&mut stream, heartbeat * 3, &wrote_at);

    let watch = async {
        if let (Some(principal), Some(events)) = (admission.principal.clone(), events) {
            let access = Watch {
                protocol,
                auth: app.auth.clone(),
                principal,
                room: room.clone(),
                role: role.clone(),
                out: out.clone(),
                kill: kill.clone(),
            };
            access.run(events).await;
        }
    };

    tokio::join!(reader, writer, watch);
}

/// The reading half of a JSON or y-websocket socket: each frame is decoded (on the CPU pool if
/// it is large), paced if it is an update, and handed to the room.
struct Reader<'a> {
    app: &'a AppState,
    conn: ConnId,
    protocol: Protocol,
    link: &'a RoomLink,
    kill: &'a Kill,
    out: &'a outbox::Outbox,
    pacer: Pacer,
}

impl Reader<'_> {
    /// Reads until the socket ends, the peer is silent for `silence` or the connection is
    /// killed; then leaves the room.
    async fn run<S>(&mut self, stream: &mut S, silence: Duration, wrote_at: &AtomicU64)
    where
        S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        while let Some(msg) = next_message(stream, self.kill, silence, wrote_at).await {
            // Boxed, so the idle reader (waiting above) is not as large as the busiest path
            // through a frame: an idle connection's task is most of what it costs.
            if !Box::pin(self.frame(msg)).await {
                break;
            }
        }
        // A room stuck on a long job must not hold this connection open; if the leave cannot
        // be queued, the room finds the queue closed at its next send and drops the member.
        let leave = self.link.tx.send(RoomCmd::Leave { conn: self.conn });
        let _ = tokio::time::timeout(self.app.config.write_timeout, leave).await;
        self.kill.kill(1000, "closing");
    }

    /// One message from the peer; `false` once the connection is closing.
    async fn frame(&mut self, msg: Message) -> bool {
        let len = match &msg {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
            Message::Ping(_) | Message::Pong(_) => return true,
            Message::Close(_) => return false,
        };
        // Parsing costs a few times the frame's size: the instance parses at most its inbound
        // budget's worth at once, and a flood waits here.
        let Ok(_parsing) = self.app.inbound.acquire(len).await else {
            return false;
        };
        let (protocol, limits) = (self.protocol, self.app.config.limits);
        let decoded = parse(&self.app.cpu, len, move || {
            let frame = match &msg {
                Message::Text(text) => Inbound::Text(text.as_str()),
                Message::Binary(bytes) => Inbound::Binary(bytes),
                _ => Inbound::Binary(&[]),
            };
            protocol::decode(protocol, frame, &limits)
        });
        match decoded.await {
            Some(Decoded::Request(request)) => {
                if protocol::is_update(&request)
                    && !pace(&mut self.pacer, self.kill, self.conn, self.out, protocol).await
                {
                    return false;
                }
                self.forward(request).await
            }
            Some(Decoded::Refused(frame, code)) => {
                crate::metrics::get().error_frame(code);
                self.out.offer(frame)
            }
            Some(Decoded::Close(code, reason)) => {
                tracing::debug!(conn = self.conn.0, code, reason, "frame refused");
                self.kill.kill(code, reason);
                false
            }
            Some(Decoded::Nothing) => true,
            None => false,
        }
    }

    /// Hands a request to the room; `false` if the room is gone (the client reconnects).
    async fn forward(&self, msg: Request) -> bool {
        let cmd = RoomCmd::Frame {
            conn: self.conn,
            msg,
        };
        let sent = tokio::select! {
            sent = self.link.tx.send(cmd) => sent.is_ok(),
            _ = self.kill.killed() => return false,
        };
        if !sent {
            self.kill.kill(1012, "room restarting: reconnect");
        }
        sent
    }
}

/// Keeps a live connection's access true: closes it at its token's expiry (4401), and on every
/// grant change that concerns it re-checks, downgrading or upgrading it in place (an `access`
/// frame tells the client) or closing it if it lost the room (4403).
pub(crate) struct Watch {
    pub(crate) protocol: Protocol,
    pub(crate) auth: Arc<crate::auth::Auth>,
    pub(crate) principal: Principal,
    pub(crate) room: String,
    pub(crate) role: Arc<LiveRole>,
    pub(crate) out: crate::outbox::Outbox,
    pub(crate) kill: Arc<Kill>,
}

impl Watch {
    pub(crate) async fn run(&self, mut events: tokio::sync::broadcast::Receiver<AccessEvent>) {
        // `exp` is the token's to choose: one past what a `SystemTime` holds never expires
        // rather than panicking this watch (which left the connection unwatched).
        let left = std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(self.principal.exp))
            .map_or(Duration::MAX, |expiry| {
                expiry
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            });
        let expires = tokio::time::sleep(left);
        tokio::pin!(expires);
        loop {
            let recheck = tokio::select! {
                _ = &mut expires => {
                    self.kill.kill(4401, "token expired");
                    return;
                }
                _ = self.kill.killed() => return,
                event = events.recv() => match event {
                    Ok(AccessEvent::Changed(change)) => {
                        change.room == self.room
                            && change.user.as_deref().is_none_or(|u| u == self.principal.id)
                    }
                    Ok(AccessEvent::All) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // No more changes can come; expiry still applies.
                        (&mut expires).await;
                        self.kill.kill(4401, "token expired");
                        return;
                    }
                },
            };
            if recheck {
                // Boxed: a grant lookup is a store query, rare, and large to keep inline.
                Box::pin(self.recheck()).await;
            }
        }
    }

    async fn recheck(&self) {
        match self.auth.role(&self.principal, &self.room).await {
            Ok(Some(role)) => {
                if !self.role.set(role) {
                    return;
                }
                // Told in the client's protocol (y-websocket has no word for it).
                let frame = protocol::access(&self.room, self.protocol, role == Role::Read);
                if frame.is_some_and(|frame| !self.out.offer(Frame::from(frame))) {
                    crate::metrics::get().slow_consumer_closes.inc();
                    self.kill.kill(1013, "too slow: reconnect to resync");
                }
            }
            Ok(None) | Err(Denied::Forbidden) => {
                // Refuse updates at once, even before the close is through.
                self.role.set(Role::Read);
                self.kill.kill(4403, "access revoked");
            }
            Err(e) => {
                // The grant store did not answer: fail closed for writes until it does.
                tracing::warn!(room = %self.room, code = e.code(), "access re-check failed");
                self.role.set(Role::Read);
                self.kill
                    .kill(1013, "access cannot be checked now: retry shortly");
            }
        }
    }
}

/// How often a socket is pinged, and how long one write may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) heartbeat: Duration,
    pub(crate) write_timeout: Duration,
}

/// A socket's writer: drains its outbound queue (batched into one flush), pings every
/// heartbeat (with `keepalive`'s frame too, if the protocol has one and the socket was quiet),
/// and closes with the room's or the connection's reason. Ends when either side is done.
pub(crate) async fn write<S>(
    sink: &mut S,
    inbox: &mut outbox::Inbox,
    kill: &Kill,
    wrote_at: &AtomicU64,
    timing: Timing,
    keepalive: &(dyn Fn() -> Option<Frame> + Sync),
) where
    S: Sink<Message> + Unpin,
{
    /// What woke the writer.
    enum Wake {
        Queued(Option<Outbound>),
        Ping,
        Killed,
    }
    let Timing {
        heartbeat,
        write_timeout,
    } = timing;
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    loop {
        let wake = tokio::select! {
            msg = inbox.recv() => Wake::Queued(msg),
            _ = ping.tick() => Wake::Ping,
            _ = kill.killed() => Wake::Killed,
        };
        // Boxed, so an idle writer (waiting above) is not as large as a write in progress.
        let go_on = Box::pin(async {
            match wake {
                Wake::Queued(Some(Outbound::Frame(frame))) => {
                    // Everything already queued goes out in one write and one flush.
                    if !within(write_timeout, sink.feed(frame.into_message())).await {
                        return false;
                    }
                    let mut close_with = None;
                    while let Some(next) = inbox.try_recv() {
                        match next {
                            Outbound::Frame(frame) => {
                                if !within(write_timeout, sink.feed(frame.into_message())).await {
                                    return false;
                                }
                            }
                            Outbound::Close(code, reason) => {
                                close_with = Some((code, reason));
                                break;
                            }
                        }
                    }
                    if !within(write_timeout, sink.flush()).await {
                        return false;
                    }
                    wrote_at.store(now_ms(), Ordering::Relaxed);
                    if let Some((code, reason)) = close_with {
                        close(sink, write_timeout, code, reason).await;
                        return false;
                    }
                    true
                }
                Wake::Queued(Some(Outbound::Close(code, reason))) => {
                    close(sink, write_timeout, code, reason).await;
                    false
                }
                Wake::Queued(None) => false,
                Wake::Ping => {
                    if !within(write_timeout, sink.send(Message::Ping(Default::default()))).await {
                        return false;
                    }
                    // WebSocket pings are invisible to page scripts; a protocol that needs
                    // traffic the client's code can see gets its keep-alive after half a period
                    // of quiet.
                    let quiet = now_ms().saturating_sub(wrote_at.load(Ordering::Relaxed));
                    if quiet >= heartbeat.as_millis() as u64 / 2 {
                        if let Some(frame) = keepalive() {
                            if !within(write_timeout, sink.send(frame.into_message())).await {
                                return false;
                            }
                            wrote_at.store(now_ms(), Ordering::Relaxed);
                        }
                    }
                    true
                }
                Wake::Killed => {
                    // Send what is already queued (acks, the closing frame), then close; all
                    // of it within one write timeout.
                    let drain = async {
                        while let Some(Outbound::Frame(frame)) = inbox.try_recv() {
                            if sink.send(frame.into_message()).await.is_err() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(write_timeout, drain).await;
                    let (code, reason) = kill.reason().unwrap_or((1000, "closing"));
                    close(sink, write_timeout, code, reason).await;
                    false
                }
            }
        })
        .await;
        if !go_on {
            break;
        }
    }
    kill.kill(1000, "closing");
}
