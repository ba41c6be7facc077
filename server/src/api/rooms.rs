//! The document API under `/api/rooms/{id}`: a backend reads and writes a room's document
//! without a CRDT of its own.
//!
//! - `GET …/text`: the `body` text and the seq it is at (`{seq, text}`).
//! - `GET …/state?format=v1|v2&sv=<base64>`: the document as a Yjs update (v1 by default, as
//!   Yjs writes it), or only what a replica at state vector `sv` lacks.
//! - `POST …/update?format=v1|v2`: apply a binary update; answers once it is durable.
//! - `POST …/edits`: positional edits made against an older seq (`base_seq`), rebased to now
//!   by the CRDT (`concord_engine::history::rebase_edits`): for thin clients with no CRDT.
//! - `DELETE /api/rooms/{id}`: delete the room's stored data and close its members (4404).
//!
//! Reads answer the durable document (snapshot and committed ops, never an op that could still
//! be lost), with its seq in `Concord-Seq`. Writes are one room write ([`crate::rooms::Rooms::write`]),
//! the keystroke's path: the room's checks and limits, the group commit, the ack after it, the
//! broadcast to every member on every instance. CRDT work runs on the CPU pool. Access: reads
//! need read, writes and delete need write.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_engine::wire::decode_b64;
use concord_engine::EngineError;
use serde::Deserialize;
use serde_json::json;

use super::history::{access, bounds, check_point, Token, GONE};
use super::ApiError;
use crate::auth::{Mode, Role};
use crate::error::ServerError;
use crate::state::AppState;
use crate::store::directory::DocRole;

/// Positional edits one `POST …/edits` may carry.
pub const MAX_EDITS: usize = 10_000;

/// The seq a read or write is at, for clients that only look at headers.
const SEQ_HEADER: &str = "concord-seq";

/// The routes of this module; bodies (updates, edits) may be as large as an update a client
/// may send (`MAX_UPDATE_BYTES`), and larger ones are refused before they are read whole.
pub fn routes(max_body: usize) -> Router<AppState> {
    Router::new()
        .route("/api/rooms/{id}", axum::routing::delete(delete_room))
        .route("/api/rooms/{id}/text", get(text))
        .route("/api/rooms/{id}/state", get(state))
        .route("/api/rooms/{id}/update", post(update))
        .route("/api/rooms/{id}/edits", post(edits))
        .layer(DefaultBodyLimit::max(max_body))
}

const TOO_LARGE: ApiError = ApiError::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "too_large",
    "the body is larger than MAX_UPDATE_BYTES",
);

/// A body read whole within the route's limit.
fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            TOO_LARGE
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })
}

/// Runs CRDT work on the CPU pool; the engine's error is the caller's to map.
async fn on_pool<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce() -> concord_engine::Result<T> + Send + 'static,
) -> Result<concord_engine::Result<T>, ApiError> {
    Ok(app.cpu.run(f).await?.value)
}

/// The room's durable document: its seq, and the document under yrs client `client`.
async fn durable(app: &AppState, room: &str) -> Result<(u64, concord_engine::Document), ApiError> {
    let loaded = app.rooms.ctx().store.load(room).await?;
    let seq = loaded.ops.last().map_or(loaded.snapshot_seq, |(s, _)| *s);
    let doc = on_pool(app, move || {
        let ops: Vec<&[u8]> = loaded.ops.iter().map(|(_, op)| op.as_slice()).collect();
        let state = concord_engine::room::fold(loaded.snapshot.as_deref(), &ops)?;
        concord_engine::Document::from_update(1, &state)
    })
    .await?
    .map_err(|e| {
        tracing::error!(room, error = %e, "document api: stored ops do not rebuild");
        ApiError::unavailable()
    })?;
    Ok((seq, doc))
}

fn with_seq(mut response: Response, seq: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
        response.headers_mut().insert(SEQ_HEADER, v);
    }
    response
}

async fn text(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let (seq, doc) = durable(&app, &room).await?;
    let text = doc.text();
    Ok(with_seq(
        Json(json!({"seq": seq, "text": text})).into_response(),
        seq,
    ))
}

/// Which update encoding a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    /// Yjs's default (`Y.encodeStateAsUpdate`, `Y.applyUpdate`).
    #[default]
    V1,
    /// `Y.encodeStateAsUpdateV2`: what Concord stores.
    V2,
}

#[derive(Deserialize)]
struct StateQuery {
    #[serde(default)]
    format: Format,
    sv: Option<String>,
}

async fn state(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    query: Result<Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "`format` is v1 or v2; `sv` is a base64 state vector",
        ));
    };
    let sv = match q.sv.as_deref().filter(|s| !s.is_empty()) {
        // A '+' that was not percent-encoded arrives as a space.
        Some(b64) => match decode_b64("sv", &b64.replace(' ', "+")) {
            Ok(sv) if concord_engine::room::is_valid_state_vector(&sv) => Some(sv),
            _ => {
                return Err(ApiError::bad_request(
                    "`sv` is a base64 Yjs state vector (Y.encodeStateVector)",
                ))
            }
        },
        None => None,
    };
    let (seq, doc) = durable(&app, &room).await?;
    let bytes = on_pool(&app, move || match q.format {
        Format::V1 => doc.encode_state_as_update_v1(sv.as_deref()),
        Format::V2 => doc.encode_state_as_update(sv.as_deref()),
    })
    .await?
    .map_err(|_| ApiError::bad_request("`sv` is not a state vector this document can read"))?;
    let response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    )
        .into_response();
    Ok(with_seq(response, seq))
}

#[derive(Deserialize)]
struct UpdateQuery {
    #[serde(default)]
    format: Format,
}

async fn update(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    query: Result<Query<UpdateQuery>, axum::extract::rejection::QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = access(&app, &token, &room, Role::Write).await?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request("`format` is v1 or v2"));
    };
    let bytes = body(bytes)?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body is a binary Yjs update (Y.encodeStateAsUpdate)",
        ));
    }
    // The room reads v2; a v1 update is converted here, which also decodes it whole, so a
    // malformed one is refused before it reaches the room.
    let v2 = on_pool(&app, move || match q.format {
        Format::V1 => concord_engine::doc::update_v1_to_v2(&bytes),
        Format::V2 => concord_engine::doc::decode_update(&bytes).map(|_| bytes.to_vec()),
    })
    .await?
    .map_err(|_| {
        ApiError::bad_request(match q.format {
            Format::V1 => "the body is not a Yjs v1 update (use ?format=v2 for v2)",
            Format::V2 => "the body is not a Yjs v2 update",
        })
    })?;
    let author = who.map_or_else(|| "api".to_owned(), |p| p.name);
    let seq = write(&app, &room, v2, &author).await?;
    Ok(with_seq(Json(json!({"seq": seq})).into_response(), seq))
}

/// One positional edit: delete `delete` UTF-16 units at `index`, then insert `insert` there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    index: u32,
    #[serde(default)]
    delete: u32,
    #[serde(default)]
    insert: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditsBody {
    base_seq: u64,
    edits: Vec<EditBody>,
}

async fn edits(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = access(&app, &token, &room, Role::Write).await?;
    let bytes = body(bytes)?;
    let shape = "expected {\"base_seq\": N, \"edits\": [{\"index\", \"delete\", \"insert\"}, …]}";
    let r: EditsBody = serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request(shape))?;
    if r.edits.len() > MAX_EDITS {
        return Err(ApiError::bad_request("at most 10,000 edits per request"));
    }
    let (floor, head) = bounds(&app, &room).await?;
    if r.base_seq > head {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "base_seq_ahead",
            "base_seq is beyond the room's last op",
        ));
    }
    check_point(r.base_seq, floor, head).map_err(|_| GONE)?;
    let rows = app.rooms.ctx().store.past(&room, r.base_seq).await?;
    let client = rand::random::<u64>() & ((1 << 53) - 1);
    let rebased = on_pool(&app, move || {
        let ops: Vec<&[u8]> = rows.ops.iter().map(|o| o.op.as_slice()).collect();
        let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
        let mut base = concord_engine::history::document_at(client, checkpoint, &ops)?;
        let edits: Vec<(u32, u32, &str)> = r
            .edits
            .iter()
            .map(|e| (e.index, e.delete, e.insert.as_str()))
            .collect();
        concord_engine::history::rebase_edits(&mut base, &edits)
    })
    .await?;
    let update = match rebased {
        Ok(Some(update)) => update,
        Ok(None) => {
            return Ok(with_seq(
                Json(json!({"applied": false, "seq": head, "base_seq": r.base_seq}))
                    .into_response(),
                head,
            ))
        }
        Err(EngineError::OutOfBounds { .. }) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "out_of_bounds",
                "an edit is outside the text at base_seq (UTF-16 units, each edit against the text the ones before it left)",
            ))
        }
        Err(EngineError::SplitsCharacter) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "splits_character",
                "an edit starts or ends inside a character (between the UTF-16 units of a surrogate pair)",
            ))
        }
        Err(e) => {
            tracing::error!(room = %room, error = %e, "document api: stored ops do not rebuild");
            return Err(ApiError::unavailable());
        }
    };
    let author = who.map_or_else(|| "api".to_owned(), |p| p.name);
    let seq = write(&app, &room, update, &author).await?;
    Ok(with_seq(
        Json(json!({"applied": true, "seq": seq, "base_seq": r.base_seq})).into_response(),
        seq,
    ))
}

/// Writes a v2 update through the room; the seq at which it is durable.
async fn write(app: &AppState, room: &str, update: Vec<u8>, author: &str) -> Result<u64, ApiError> {
    match app.rooms.write(room, update, Some(author.to_owned())).await {
        Ok(seq) => Ok(seq),
        Err(ServerError::Rejected { code }) => {
            tracing::info!(room, code = %code, "document api: the room refused the update");
            Err(refused(&code))
        }
        Err(e) => Err(e.into()),
    }
}

/// The room's refusal as an API error with a stable code.
fn refused(code: &str) -> ApiError {
    match code {
        "too_large" => TOO_LARGE,
        "overloaded" => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the room is overloaded; retry shortly",
        ),
        "missing_dependencies" => ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_dependencies",
            "the update depends on changes the room has not seen",
        ),
        "read_only" | "forbidden" => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you have read access to this room only",
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_update",
            "the room refused the update",
        ),
    }
}

async fn delete_room(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let who = access(&app, &token, &room, Role::Write).await?;
    // A document of the built-in accounts is deleted by its owner only, as `DELETE
    // /api/docs/{id}` does; other rooms by anyone who may write them.
    if app.auth.mode() == Mode::Accounts {
        let dir = app.auth.directory();
        if dir.doc(&room).await?.is_some() {
            let role = match &who {
                Some(p) => dir.role(&room, &p.id).await?,
                None => None,
            };
            if role != Some(DocRole::Owner) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only the document's owner may delete it",
                ));
            }
        }
    }
    if !app.rooms.delete(&room).await? {
        return Err(ApiError::not_found("no such room"));
    }
    tracing::info!(room = %room, "room deleted through the document api");
    Ok(StatusCode::NO_CONTENT.into_response())
}
