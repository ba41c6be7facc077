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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use concord_engine::{ClientMessage, ConnId, ServerMessage};
use futures_util::{Sink, SinkExt, StreamExt};

use crate::auth::{AccessEvent, Admission, Denied, LiveRole, Principal, Role};
use crate::outbox::{self, Outbound};
use crate::rate::{Pace, Pacer};
use crate::room::{error_text, now_ms, Dialect, Kill, Member, Request, RoomCmd};
use crate::routes::AppState;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Frames up to this size are parsed on the reader's task; larger ones on the CPU pool.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// The presence id of a connection: unique across instances (a random tag per process), so
/// presence relayed through the hub never collides, and never chosen by the client.
fn presence_user(conn: ConnId) -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("c-{tag}-{}", conn.0)
}

/// One socket operation, bounded in time: `false` if it failed or timed out.
async fn within<F: std::future::Future<Output = Result<(), E>>, E>(limit: Duration, op: F) -> bool {
    matches!(tokio::time::timeout(limit, op).await, Ok(Ok(())))
}

async fn close<S>(sink: &mut S, limit: Duration, code: u16, reason: &'static str)
where
    S: Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    within(limit, sink.send(frame)).await;
}

/// Serves one upgraded socket for `room` until either side closes, speaking `dialect` (the
/// JSON protocol, or y-websocket's binary one: each frame goes through its adapter in the
/// engine, and everything else, from limits to access, is the same). `admission` is what the
/// access check decided at upgrade; while the socket is open, [`Watch`] keeps it true.
pub async fn serve(
    socket: WebSocket,
    room: String,
    sv: Option<Vec<u8>>,
    admission: Admission,
    app: AppState,
    dialect: Dialect,
) {
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let config = app.config.clone();
    let write_timeout = config.write_timeout;
    let (out, mut inbox) = outbox::channel(app.outbound.clone(), config.conn_queue);
    let kill = Arc::new(Kill::default());
    let role = LiveRole::new(admission.role);
    let member = Member {
        dialect,
        out: out.clone(),
        kill: kill.clone(),
        user: presence_user(conn),
        name: admission.principal.as_ref().map(|p| p.name.clone()),
        role: role.clone(),
    };
    // Subscribed before the join, so no grant change between the check and the join is missed.
    let events = admission.principal.as_ref().map(|_| app.auth.subscribe());
    let (mut sink, mut stream) = socket.split();

    let link = match app.rooms.join(&room, conn, sv, member).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "join failed");
            let frame = error_text(
                "unavailable",
                "the room cannot be opened now; retry shortly",
            );
            if dialect == Dialect::Json {
                within(write_timeout, sink.send(Message::Text(frame))).await;
            }
            close(&mut sink, write_timeout, 1011, "room unavailable").await;
            return;
        }
    };

    let heartbeat = config.heartbeat;
    // When the writer last got bytes to the peer (monotonic ms).
    let wrote_at = AtomicU64::new(now_ms());
    let writer = async {
        let mut ping = tokio::time::interval(heartbeat);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(Outbound::Frame(frame)) => {
                        // Everything already queued goes out in one write and one flush.
                        if !within(write_timeout, sink.feed(frame.into_message())).await {
                            break;
                        }
                        let mut close_with = None;
                        let mut ok = true;
                        while let Some(next) = inbox.try_recv() {
                            match next {
                                Outbound::Frame(frame) => {
                                    if !within(write_timeout, sink.feed(frame.into_message())).await {
                                        ok = false;
                                        break;
                                    }
                                }
                                Outbound::Close(code, reason) => {
                                    close_with = Some((code, reason));
                                    break;
                                }
                            }
                        }
                        if !ok || !within(write_timeout, sink.flush()).await {
                            break;
                        }
                        wrote_at.store(now_ms(), Ordering::Relaxed);
                        if let Some((code, reason)) = close_with {
                            close(&mut sink, write_timeout, code, reason).await;
                            break;
                        }
                    }
                    Some(Outbound::Close(code, reason)) => {
                        close(&mut sink, write_timeout, code, reason).await;
                        break;
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    if !within(write_timeout, sink.send(Message::Ping(Default::default()))).await {
                        break;
                    }
                }
                _ = kill.killed() => {
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
                    close(&mut sink, write_timeout, code, reason).await;
                    break;
                }
            }
        }
        kill.kill(1000, "closing");
    };

    let limits = config.limits;
    let silence = heartbeat * 3;
    let (burst, per_sec) = config.update_rate;
    let mut pacer = Pacer::new(
        burst,
        per_sec,
        config.update_patience.as_millis() as u64,
        now_ms(),
    );
    // Updates beyond the connection's rate wait here, unread; a flood that never pauses is
    // told so and closed.
    let pace = |pacer: &mut Pacer| {
        let decision = pacer.next(now_ms());
        let (out, kill) = (&out, &kill);
        async move {
            match decision {
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
                    out.offer(error_text(
                        "rate_limited",
                        "too many updates for too long; batch them and reconnect later",
                    ));
                    kill.kill(4429, "update rate exceeded: retry later");
                    false
                }
            }
        }
    };
    let reader = async {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(silence, stream.next()) => next,
                _ = kill.killed() => break,
            };
            let msg = match next {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(_))) | Ok(None) => break,
                Err(_) => {
                    let wrote = wrote_at.load(Ordering::Relaxed);
                    if now_ms().saturating_sub(wrote) < silence.as_millis() as u64 {
                        continue; // busy writing to it: alive
                    }
                    kill.kill(1001, "heartbeat timeout");
                    break;
                }
            };
            match msg {
                Message::Text(_) if dialect == Dialect::Yjs => {
                    kill.kill(1003, "y-websocket frames are binary");
                    break;
                }
                Message::Binary(bytes) if dialect == Dialect::Yjs => {
                    let Ok(_parsing) = app.inbound.acquire(bytes.len()).await else {
                        break;
                    };
                    let parsed = if bytes.len() <= PARSE_INLINE_BYTES {
                        concord_engine::yjs::decode(&bytes, &limits)
                    } else {
                        match app
                            .cpu
                            .run(move || concord_engine::yjs::decode(&bytes, &limits))
                            .await
                        {
                            Ok(ran) => ran.value,
                            Err(_) => break,
                        }
                    };
                    let req = match parsed {
                        Ok(req) => req,
                        Err(e) => {
                            tracing::debug!(conn = conn.0, error = %e, "bad y-websocket frame");
                            let code = match e {
                                concord_engine::EngineError::TooLarge { .. } => 1009,
                                _ => 1002,
                            };
                            kill.kill(code, "bad y-protocols message");
                            break;
                        }
                    };
                    if matches!(req, concord_engine::yjs::YjsRequest::Update(_))
                        && !pace(&mut pacer).await
                    {
                        break;
                    }
                    let sent = tokio::select! {
                        sent = link.tx.send(RoomCmd::Frame { conn, msg: Request::Yjs(req) }) => sent.is_ok(),
                        _ = kill.killed() => break,
                    };
                    if !sent {
                        kill.kill(1012, "room restarting: reconnect");
                        break;
                    }
                }
                Message::Text(text) => {
                    // Parsing costs a few times the frame's size: the instance parses at most
                    // its inbound budget's worth at once, and a flood waits here.
                    let Ok(_parsing) = app.inbound.acquire(text.len()).await else {
                        break;
                    };
                    let parsed = if text.len() <= PARSE_INLINE_BYTES {
                        ClientMessage::parse(text.as_str(), &limits)
                    } else {
                        // Decoding megabytes of JSON and base64 takes milliseconds: not on an
                        // async worker.
                        match app
                            .cpu
                            .run(move || ClientMessage::parse(text.as_str(), &limits))
                            .await
                        {
                            Ok(ran) => ran.value,
                            Err(_) => break,
                        }
                    };
                    match parsed {
                        Ok(Some(msg)) => {
                            if !matches!(msg, ClientMessage::Presence(_)) && !pace(&mut pacer).await
                            {
                                break;
                            }
                            let sent = tokio::select! {
                                sent = link.tx.send(RoomCmd::Frame { conn, msg: Request::Json(msg) }) => sent.is_ok(),
                                _ = kill.killed() => break,
                            };
                            if !sent {
                                kill.kill(1012, "room restarting: reconnect");
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if !out.offer(crate::room::text(&ServerMessage::error(&e))) {
                                break;
                            }
                        }
                    }
                }
                Message::Binary(_) => {
                    let frame = error_text(
                        "unsupported_frame",
                        "binary frames are not part of the protocol; send JSON text frames",
                    );
                    if !out.offer(frame) {
                        break;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => break,
            }
        }
        // A room stuck on a long job must not hold this connection open; if the leave cannot
        // be queued, the room finds the queue closed at its next send and drops the member.
        let leave = link.tx.send(RoomCmd::Leave { conn });
        let _ = tokio::time::timeout(write_timeout, leave).await;
        kill.kill(1000, "closing");
    };

    let watch = async {
        if let (Some(principal), Some(events)) = (admission.principal.as_ref(), events) {
            let access = Watch {
                dialect,
                auth: &app.auth,
                principal,
                room: &room,
                role: &role,
                out: &out,
                kill: &kill,
            };
            access.run(events).await;
        }
    };

    tokio::join!(reader, writer, watch);
}

/// Keeps a live connection's access true: closes it at its token's expiry (4401), and on every
/// grant change that concerns it re-checks, downgrading or upgrading it in place (an `access`
/// frame tells the client) or closing it if it lost the room (4403).
struct Watch<'a> {
    dialect: Dialect,
    auth: &'a crate::auth::Auth,
    principal: &'a Principal,
    room: &'a str,
    role: &'a LiveRole,
    out: &'a crate::outbox::Outbox,
    kill: &'a Kill,
}

impl Watch<'_> {
    async fn run(&self, mut events: tokio::sync::broadcast::Receiver<AccessEvent>) {
        let expiry = std::time::UNIX_EPOCH + Duration::from_secs(self.principal.exp);
        let left = expiry
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
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
                self.recheck().await;
            }
        }
    }

    async fn recheck(&self) {
        match self.auth.role(self.principal, self.room).await {
            Ok(Some(role)) => {
                if self.role.set(role) && self.dialect == Dialect::Json {
                    let frame = crate::room::text(&ServerMessage::Access {
                        role: role.as_str().to_owned(),
                    });
                    if !self.out.offer(frame) {
                        self.kill.kill(1013, "too slow: reconnect to resync");
                    }
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
