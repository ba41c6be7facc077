//! A client inside the server. Writes that come over HTTP (a history restore; the document
//! API) join the room as a member and send one op, so they take exactly the keystroke's path:
//! the room's checks, the group commit, the ack after it, the broadcast to everyone, the hub.
//! There is no privileged write path.

use std::sync::Arc;
use std::time::Duration;

use concord_engine::{ClientMessage, ServerMessage};

use crate::auth::{LiveRole, Role};
use crate::connection::{new_conn, presence_user};
use crate::error::{Result, ServerError};
use crate::outbox::{self, Frame, Outbound};
use crate::room::{Dialect, Kill, Member, Request, RoomCmd};
use crate::routes::AppState;

/// Frames the local member may have queued (its `sync`, presence, the ack): it reads them all.
const QUEUE_FRAMES: usize = 256;

/// Applies `update` (v2) to `room` as `author` and returns the seq at which it is durable
/// (the room's current seq if it changed nothing). Fails with [`ServerError::Rejected`] if the
/// room refused it (the room's error code), or a timeout if the store does not commit in time.
pub async fn apply(app: &AppState, room: &str, update: Vec<u8>, author: &str) -> Result<u64> {
    let conn = new_conn();
    let (out, mut inbox) = outbox::channel(app.outbound.clone(), QUEUE_FRAMES);
    let member = Member {
        dialect: Dialect::Json,
        out,
        kill: Arc::new(Kill::default()),
        user: presence_user(conn),
        name: Some(author.to_owned()),
        role: LiveRole::new(Role::Write),
        payer: None,
    };
    let link = app.rooms.join(room, conn, None, member).await?;
    let id = format!("local-{}", conn.0);
    let sent = link
        .tx
        .send(RoomCmd::Frame {
            conn,
            msg: Request::Json(ClientMessage::Op {
                id: Some(id.clone()),
                update,
                base: None,
            }),
        })
        .await;
    let answer = async {
        sent.map_err(|_| ServerError::RoomClosing)?;
        while let Some(msg) = inbox.recv().await {
            let Outbound::Frame(Frame::Text(text)) = msg else {
                if let Outbound::Close(..) = msg {
                    return Err(ServerError::Unavailable);
                }
                continue;
            };
            match ServerMessage::parse(text.as_str()) {
                Ok(Some(ServerMessage::Ack { id: acked, seq })) if acked == id => return Ok(seq),
                Ok(Some(ServerMessage::Error { code, .. })) => {
                    return Err(ServerError::Rejected { code })
                }
                _ => {}
            }
        }
        Err(ServerError::Unavailable)
    };
    // The commit is bounded by COMMIT_TIMEOUT_MS; the room answers within it and a margin.
    let bound = app.config.commit_timeout + Duration::from_secs(5);
    let result = match tokio::time::timeout(bound, answer).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout {
            what: "local write",
            after_ms: bound.as_millis() as u64,
        }),
    };
    let _ = link.tx.send(RoomCmd::Leave { conn }).await;
    result
}
