//! One WebSocket connection: a thin bridge between the socket and its room.
//!
//! The reader parses frames and forwards them to the room's bounded queue (so a busy room
//! slows its readers instead of buffering without bound). The writer drains this connection's
//! bounded outbound queue and sends pings. Either side ending ends the other; the room is told
//! the connection left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use concord_engine::{ClientMessage, ConnId, EngineError, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::room::{Kill, Member, Outbound, RoomCmd};
use crate::routes::AppState;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn error_frame(code: &str, message: &str) -> Outbound {
    Outbound::Text(Utf8Bytes::from(
        ServerMessage::Error {
            code: code.to_owned(),
            message: message.to_owned(),
        }
        .to_json(),
    ))
}

fn engine_error_frame(e: &EngineError) -> Outbound {
    Outbound::Text(Utf8Bytes::from(ServerMessage::error(e).to_json()))
}

/// Serves one upgraded socket for `room` until either side closes.
pub async fn serve(socket: WebSocket, room: String, sv: Option<Vec<u8>>, app: AppState) {
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let config = app.config.clone();
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(config.conn_queue);
    let kill = Arc::new(Kill::default());
    let member = Member {
        out: out_tx.clone(),
        kill: kill.clone(),
    };
    let (mut sink, mut stream) = socket.split();

    let link = match app.rooms.join(&room, conn, sv, member).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "join failed");
            let frame = ServerMessage::Error {
                code: "unavailable".to_owned(),
                message: "the room cannot be opened now; retry shortly".to_owned(),
            };
            let _ = sink.send(Message::Text(frame.to_json().into())).await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: "room unavailable".into(),
                })))
                .await;
            return;
        }
    };

    let heartbeat = config.heartbeat;
    let writer = async {
        let mut ping = tokio::time::interval(heartbeat);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = out_rx.recv() => match msg {
                    Some(Outbound::Text(text)) => {
                        // Everything already queued goes out in one write and one flush.
                        if sink.feed(Message::Text(text)).await.is_err() {
                            break;
                        }
                        let mut close = None;
                        while let Ok(next) = out_rx.try_recv() {
                            match next {
                                Outbound::Text(text) => {
                                    if sink.feed(Message::Text(text)).await.is_err() {
                                        break;
                                    }
                                }
                                Outbound::Close(code, reason) => {
                                    close = Some((code, reason));
                                    break;
                                }
                            }
                        }
                        if sink.flush().await.is_err() {
                            break;
                        }
                        if let Some((code, reason)) = close {
                            let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                            break;
                        }
                    }
                    Some(Outbound::Close(code, reason)) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
                _ = kill.killed() => {
                    // Send what is already queued (acks, the closing frame), then close.
                    while let Ok(Outbound::Text(text)) = out_rx.try_recv() {
                        if sink.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    let (code, reason) = kill.reason().unwrap_or((1000, "closing"));
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            }
        }
        kill.kill(1000, "closing");
    };

    let limits = config.limits;
    let silence = heartbeat * 3;
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
                    kill.kill(1001, "heartbeat timeout");
                    break;
                }
            };
            match msg {
                Message::Text(text) => match ClientMessage::parse(text.as_str(), &limits) {
                    Ok(Some(msg)) => {
                        if link.tx.send(RoomCmd::Frame { conn, msg }).await.is_err() {
                            kill.kill(1012, "room restarting: reconnect");
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if out_tx.try_send(engine_error_frame(&e)).is_err() {
                            break;
                        }
                    }
                },
                Message::Binary(_) => {
                    let frame = error_frame(
                        "unsupported_frame",
                        "binary frames are not part of the protocol; send JSON text frames",
                    );
                    if out_tx.try_send(frame).is_err() {
                        break;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => break,
            }
        }
        let _ = link.tx.send(RoomCmd::Leave { conn }).await;
        kill.kill(1000, "closing");
    };

    tokio::join!(reader, writer);
}
