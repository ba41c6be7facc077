//! One Hocuspocus socket (`/hocuspocus`): many documents, each a member of its room.
//!
//! The protocol's decisions are the engine's [`Session`] (which documents are open, what
//! waits for an auth, when unauthenticated traffic is too much); this task moves bytes. Each
//! document it opens joins its room as a [`Member`] speaking [`Protocol::Hocuspocus`] with its
//! own connection id, sharing the socket's outbound queue and close, so limits, access checks,
//! awareness and acks are the room's, exactly as for the other protocols. A document's auth
//! goes through [`crate::auth::Auth::admit`] (the token from the auth message; none with auth
//! off), and its [`Watch`] keeps the grant true while it is open.
//!
//! Differences from the stock server, on purpose: `SyncStatus` is sent once the update is
//! durable, not once it is in memory; a client's own updates are not echoed back to it; and
//! document names are Concord room ids (a name the room id rules refuse gets a permission
//! denied saying so).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket};
use concord_engine::hocuspocus::{self, Action, DocMessage, Session};
use concord_engine::wire::validate_room_id;
use concord_engine::yjs::YjsRequest;
use concord_engine::ConnId;
use futures_util::StreamExt;

use crate::auth::{LiveRole, Role};
use crate::clock::now_ms;
use crate::connection::{self, next_message, pace, parse, Timing, Watch};
use crate::outbox::Kill;
use crate::outbox::{self, Frame, Outbox};
use crate::room::{Member, RoomCmd};
use crate::rooms::RoomLink;
use crate::state::AppState;
use concord_engine::host::{protocol, Protocol, Request};
use concord_engine::rate::Pacer;

/// One open document of the socket.
struct Doc {
    conn: ConnId,
    link: RoomLink,
    /// Its access watch, stopped when the document closes.
    watch: Option<tokio::task::JoinHandle<()>>,
}

/// The socket's open documents and what they need.
struct Docs<'a> {
    app: &'a AppState,
    /// The client's address, whose CPU budget documents opened without auth spend.
    ip: std::net::IpAddr,
    out: &'a Outbox,
    kill: &'a Arc<Kill>,
    open: HashMap<String, Doc>,
    /// A document name the writer's keep-alive can use.
    any: &'a Mutex<Option<String>>,
}

impl Docs<'_> {
    /// Checks `token` for document `name` and, if it is let in, joins its room: the provider
    /// gets `Authenticated` (then the room's sync step 1), or `PermissionDenied`.
    async fn open(&mut self, session: &mut Session, name: String, token: String) -> Option<()> {
        if validate_room_id(&name).is_err() {
            session.refused(&name);
            self.send(hocuspocus::permission_denied(
                &name,
                "bad document name: use 1-128 characters of A-Z a-z 0-9 _ - .",
            ));
            return Some(());
        }
        let token = (!token.is_empty()).then_some(token);
        let admission = match self.app.auth.admit(token.as_deref(), &name).await {
            Ok(admission) => admission,
            Err(denied) => {
                session.refused(&name);
                self.send(hocuspocus::permission_denied(&name, denied.message()));
                return Some(());
            }
        };
        let conn = crate::room::new_conn();
        let role = LiveRole::new(admission.role);
        let member = Member {
            protocol: Protocol::Hocuspocus,
            out: self.out.clone(),
            kill: self.kill.clone(),
            user: crate::room::presence_user(conn),
            name: admission.principal.as_ref().map(|p| p.name.clone()),
            role: role.clone(),
            payer: Some(connection::payer(self.app, &admission, self.ip)),
        };
        // Subscribed before the join, so no grant change between the check and the join is
        // missed.
        let events = admission
            .principal
            .as_ref()
            .map(|_| self.app.auth.subscribe());
        // Before the join: the room's first frame (its sync step 1) must follow it.
        self.send(hocuspocus::authenticated(
            &name,
            admission.role == Role::Read,
        ));
        let link = match self.app.rooms.join(&name, conn, None, member).await {
            Ok(link) => link,
            Err(e) => {
                let reason = match e {
                    crate::error::ServerError::Overloaded { .. } => {
                        "server at capacity; retry shortly"
                    }
                    _ => {
                        tracing::warn!(room = %name, error = %e, "join failed");
                        "room unavailable; retry shortly"
                    }
                };
                session.closed(&name);
                self.send(hocuspocus::close(&name, reason));
                return Some(());
            }
        };
        let watch = admission.principal.zip(events).map(|(principal, events)| {
            let watch = Watch {
                protocol: Protocol::Hocuspocus,
                auth: self.app.auth.clone(),
                principal,
                room: name.clone(),
                role,
                out: self.out.clone(),
                kill: self.kill.clone(),
            };
            tokio::spawn(async move { watch.run(events).await })
        });
        if let Ok(mut any) = self.any.lock() {
            any.get_or_insert_with(|| name.clone());
        }
        let queued = session.opened(&name);
        self.open.insert(name.clone(), Doc { conn, link, watch });
        for msg in queued.into_iter().flatten() {
            self.deliver(&name, msg).await?;
        }
        Some(())
    }

    /// Hands a message to the document's room; `None` if the socket must close.
    async fn deliver(&self, name: &str, msg: DocMessage) -> Option<()> {
        let Some(doc) = self.open.get(name) else {
            return Some(());
        };
        let msg = match msg {
            DocMessage::Yjs(req) => Request::Yjs(req),
            DocMessage::Stateless(payload) => Request::Stateless(payload),
            _ => return Some(()),
        };
        let sent = tokio::select! {
            sent = doc.link.tx.send(RoomCmd::Frame { conn: doc.conn, msg }) => sent.is_ok(),
            _ = self.kill.killed() => return None,
        };
        if !sent {
            self.kill.kill(1012, "room restarting: reconnect");
            return None;
        }
        Some(())
    }

    /// Leaves the document's room.
    async fn close(&mut self, name: &str) {
        let Some(doc) = self.open.remove(name) else {
            return;
        };
        if let Some(watch) = doc.watch {
            watch.abort();
        }
        if let Ok(mut any) = self.any.lock() {
            if any.as_deref() == Some(name) {
                *any = self.open.keys().next().cloned();
            }
        }
        // A room stuck on a long job must not hold this socket open; if the leave cannot be
        // queued, the room finds the queue closed at its next send and drops the member.
        let leave = doc.link.tx.send(RoomCmd::Leave { conn: doc.conn });
        let _ = tokio::time::timeout(self.app.config.write_timeout, leave).await;
    }

    fn send(&self, bytes: Vec<u8>) {
        if !self.out.offer(Frame::binary(bytes)) {
            crate::metrics::get().slow_consumer_closes.inc();
            self.kill.kill(1013, "too slow: reconnect to resync");
        }
    }
}

/// Serves one upgraded Hocuspocus socket from `ip` until either side closes.
pub async fn serve(socket: WebSocket, app: AppState, ip: std::net::IpAddr) {
    let config = app.config.clone();
    let (out, mut inbox) = outbox::channel(app.outbound.clone(), config.conn_queue);
    let kill = Arc::new(Kill::default());
    let (mut sink, mut stream) = socket.split();
    let wrote_at = AtomicU64::new(now_ms());
    let any = Mutex::new(None::<String>);
    // The provider closes a socket it heard nothing from for 30 s (v3 knows no ping).
    let keepalive = || {
        let name = any.lock().ok()?.clone()?;
        Some(Frame::binary(hocuspocus::keepalive(&name)))
    };
    let timing = Timing {
        heartbeat: config.heartbeat,
        write_timeout: config.write_timeout,
    };
    let writer = connection::write(&mut sink, &mut inbox, &kill, &wrote_at, timing, &keepalive);

    let reader = async {
        let limits = config.limits;
        let mut pacer = Pacer::new(
            config.update_rate.0,
            config.update_rate.1,
            config.update_patience.as_millis() as u64,
            now_ms(),
        );
        let mut session = Session::new();
        let mut docs = Docs {
            app: &app,
            ip,
            out: &out,
            kill: &kill,
            open: HashMap::new(),
            any: &any,
        };
        let silence = config.heartbeat * 3;
        while let Some(msg) = next_message(&mut stream, &kill, silence, &wrote_at).await {
            let bytes = match msg {
                Message::Binary(bytes) => bytes,
                Message::Text(_) => {
                    kill.kill(1003, "Hocuspocus frames are binary");
                    break;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break,
            };
            let len = bytes.len();
            let Ok(_parsing) = app.inbound.acquire(len).await else {
                break;
            };
            let incoming =
                match parse(&app.cpu, len, move || hocuspocus::decode(&bytes, &limits)).await {
                    Some(Ok(incoming)) => incoming,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "bad Hocuspocus frame");
                        kill.kill(protocol::close_code(&e), "bad Hocuspocus message");
                        break;
                    }
                    None => break,
                };
            let done = match session.receive(incoming, len) {
                Action::None => Some(()),
                Action::Send(bytes) => {
                    docs.send(bytes);
                    Some(())
                }
                Action::Close { code, reason } => {
                    kill.kill(code, reason);
                    None
                }
                Action::Authenticate { name, token } => docs.open(&mut session, name, token).await,
                Action::Detach { name } => {
                    docs.close(&name).await;
                    Some(())
                }
                Action::Deliver { name, msg } => {
                    let update = matches!(msg, DocMessage::Yjs(YjsRequest::Update(_)));
                    if update
                        && !pace(&mut pacer, &kill, ConnId(0), &out, Protocol::Hocuspocus).await
                    {
                        break;
                    }
                    docs.deliver(&name, msg).await
                }
            };
            if done.is_none() {
                break;
            }
        }
        let names: Vec<String> = docs.open.keys().cloned().collect();
        for name in names {
            docs.close(&name).await;
        }
        kill.kill(1000, "closing");
    };

    tokio::join!(reader, writer);
}
