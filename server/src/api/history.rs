//! The history API under `/rooms/{id}/…`: versions, diff, restore, the document at a point
//! (playback), the timeline and blame. Handlers read rows ([`crate::store::history`]) and hand
//! them to `concord_engine::history` on the CPU pool; a restore is one room write
//! ([`crate::rooms::Rooms::write`]), the keystroke's path.
//!
//! Access: reading history needs read access to the room, saving a version or restoring needs
//! write access (with auth off, everyone may do both).
//!
//! Points in history are seqs (`seq:41`) or version ids (`12`, as in the seed's API).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_engine::history::{self, OpBase, OpRecord, Past};
use concord_engine::wire::{encode_b64, validate_room_id};
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{ApiError, Body};
use crate::auth::{Principal, Role};
use crate::state::AppState;
use crate::store::history::{OpRow, PastRows};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/rooms/{id}/versions",
            post(save_version).get(list_versions),
        )
        .route("/rooms/{id}/diff", get(diff))
        .route("/rooms/{id}/restore", post(restore))
        .route("/rooms/{id}/at", get(at))
        .route("/rooms/{id}/timeline", get(timeline))
        .route("/rooms/{id}/blame", get(blame))
}

/// A restore replays what was written since the point (to restore by ids) up to this many
/// ops; further back it compares the texts instead (see `restore_update_by_text`). Replaying
/// costs about as much as a rebuild from a checkpoint per 1,000 ops (automerge-paper, 100 KB:
/// `cargo bench -p concord-server --bench history`), so beyond that the texts are cheaper.
pub const RESTORE_BY_IDS_WITHIN: u64 = 1_000;

/// Most ops one timeline or blame request reads.
const MAX_ROWS: u64 = 300_000;

pub(super) const GONE: ApiError = ApiError::new(
    StatusCode::GONE,
    "history_pruned",
    "that point is older than the history this server keeps (HISTORY_RETENTION)",
);
const NO_VERSION: ApiError = ApiError::not_found("no such version in this room");

/// The caller's token (header or `?token=`).
pub(super) struct Token(pub(super) Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Token {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Token(super::token_of(parts)))
    }
}

/// Checks the room id and the caller's access; returns who they are (with auth on).
pub(super) async fn access(
    app: &AppState,
    token: &Token,
    room: &str,
    need: Role,
) -> Result<Option<Principal>, ApiError> {
    validate_room_id(room)
        .map_err(|_| ApiError::bad_request("a room id is 1-128 characters of A-Z a-z 0-9 _ - ."))?;
    let admission = app.auth.admit(token.0.as_deref(), room).await?;
    if need == Role::Write && admission.role != Role::Write {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you have read access to this room only",
        ));
    }
    Ok(admission.principal)
}

fn rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Runs history work on the CPU pool (never on the async workers).
async fn on_pool<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce() -> concord_engine::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match app.cpu.run(f).await {
        Ok(ran) => ran.value.map_err(|e| {
            tracing::error!(error = %e, "history: stored ops do not rebuild");
            ApiError::unavailable()
        }),
        Err(e) => Err(e.into()),
    }
}

/// The document these rows hold (no deleted content: for its text, or to edit it).
fn rebuild_doc(rows: &PastRows, client: u64) -> concord_engine::Result<concord_engine::Document> {
    let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
    let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
    history::document_at(client, checkpoint, &ops)
}

/// The room at `seq`, with the ops up to `more_to` applied on top when given: a document that
/// keeps what was deleted between `seq` and `more_to`.
async fn rebuild(
    app: &AppState,
    room: &str,
    seq: u64,
    more_to: Option<u64>,
) -> Result<(Past, concord_engine::history::PastSnapshot), ApiError> {
    rebuild_as(app, room, seq, more_to, None).await
}

/// [`rebuild`] under the yrs client `editor`, when given: a past to restore in place.
async fn rebuild_as(
    app: &AppState,
    room: &str,
    seq: u64,
    more_to: Option<u64>,
    editor: Option<u64>,
) -> Result<(Past, concord_engine::history::PastSnapshot), ApiError> {
    let store = &app.rooms.ctx().store;
    let more = async {
        match more_to {
            Some(to) if to > seq => store.op_rows(room, seq + 1, to).await,
            _ => Ok(Vec::new()),
        }
    };
    let (rows, more): (PastRows, Vec<OpRow>) = tokio::try_join!(store.past(room, seq), more)?;
    let to = more_to.unwrap_or(seq).max(seq);
    on_pool(app, move || {
        let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
        let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
        let mut past = match editor {
            Some(client) => Past::build_as(client, checkpoint, &ops, seq)?,
            None => Past::build(checkpoint, &ops, seq)?,
        };
        let at_seq = past.snapshot();
        let later: Vec<&[u8]> = more.iter().map(|r| r.op.as_slice()).collect();
        past.advance(&later, to)?;
        Ok((past, at_seq))
    })
    .await
}

/// Where history starts and ends for this room: `(floor, head)`.
pub(super) async fn bounds(app: &AppState, room: &str) -> Result<(u64, u64), ApiError> {
    let store = &app.rooms.ctx().store;
    Ok((
        store.history_floor(room).await?,
        store.head_seq(room).await?,
    ))
}

pub(super) fn check_point(seq: u64, floor: u64, head: u64) -> Result<(), ApiError> {
    if seq > head {
        return Err(ApiError::bad_request(
            "that seq is beyond the room's last op",
        ));
    }
    if seq < floor {
        return Err(GONE);
    }
    Ok(())
}

#[derive(Deserialize)]
struct NewVersion {
    label: String,
    author: Option<String>,
}

/// Most named versions one room keeps (each a full copy of the document).
pub const MAX_VERSIONS_PER_ROOM: usize = 100;

async fn save_version(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    Body(v): Body<NewVersion>,
) -> Result<Response, ApiError> {
    let who = access(&app, &token, &room, Role::Write).await?;
    let label = v.label.trim().to_owned();
    if label.is_empty() || label.chars().count() > 200 {
        return Err(ApiError::bad_request("a label is 1-200 characters"));
    }
    // The authenticated name when there is one: a body cannot speak for someone else.
    let author = match who {
        Some(p) => p.name,
        None => v
            .author
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "anonymous".to_owned()),
    };
    if author.chars().count() > 100 {
        return Err(ApiError::bad_request("an author is at most 100 characters"));
    }
    // Each version is a full copy of the document, kept until deleted: a room holds a
    // bounded number of them, or a loop of saves fills the disk (300 saves of a 1 MiB document
    // were 584 MiB in 10 s).
    let saved = app.rooms.ctx().store.versions(&room).await?.len();
    if saved >= MAX_VERSIONS_PER_ROOM {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_versions",
            "this room already keeps the most named versions it may (100)",
        ));
    }
    let (_, head) = bounds(&app, &room).await?;
    let (past, _) = rebuild(&app, &room, head, None).await?;
    let state = past.state();
    let id = app
        .rooms
        .ctx()
        .store
        .create_version(
            &room,
            &label,
            &author,
            &state,
            head,
            crate::store::now_unix_ms(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "op_seq": head })),
    )
        .into_response())
}

async fn list_versions(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let versions = app.rooms.ctx().store.versions(&room).await?;
    let list: Vec<_> = versions
        .iter()
        .map(|v| {
            json!({"id": v.id, "label": v.label, "author": v.author, "op_seq": v.op_seq,
                   "created_at": rfc3339(v.created_at)})
        })
        .collect();
    Ok(Json(list).into_response())
}

/// A point in history: a version id (`12`) or a seq (`seq:41`).
async fn resolve(app: &AppState, room: &str, point: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request("a point is a version id (12) or a seq (seq:41)");
    if let Some(seq) = point.strip_prefix("seq:") {
        return seq.parse().map_err(|_| bad());
    }
    let id: i64 = point.parse().map_err(|_| bad())?;
    match app.rooms.ctx().store.version(room, id).await? {
        Some((v, _)) => Ok(v.op_seq),
        None => Err(NO_VERSION),
    }
}

#[derive(Deserialize)]
struct DiffQuery {
    from: String,
    to: Option<String>,
}

async fn diff(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let (floor, head) = bounds(&app, &room).await?;
    let from = resolve(&app, &room, &q.from).await?;
    let to = match &q.to {
        Some(to) => resolve(&app, &room, to).await?,
        None => head,
    };
    if from > to {
        return Err(ApiError::bad_request("`from` is after `to`"));
    }
    check_point(from, floor, head)?;
    check_point(to, floor, head)?;
    let (past, at_from) = rebuild(&app, &room, from, Some(to)).await?;
    let d = on_pool(&app, move || Ok(history::diff(&at_from, &past))).await?;
    Ok(Json(json!({
        "from_seq": from, "to_seq": to,
        "added": d.added, "removed": d.removed, "moved": d.moved,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct RestoreBody {
    version_id: Option<i64>,
    seq: Option<u64>,
}

async fn restore(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    Body(r): Body<RestoreBody>,
) -> Result<Response, ApiError> {
    let who = access(&app, &token, &room, Role::Write).await?;
    let (floor, head) = bounds(&app, &room).await?;
    let target = match (r.version_id, r.seq) {
        (Some(id), None) => match app.rooms.ctx().store.version(&room, id).await? {
            Some((v, _)) => v.op_seq,
            None => return Err(NO_VERSION),
        },
        (None, Some(seq)) => seq,
        _ => {
            return Err(ApiError::bad_request(
                "give either `version_id` or `seq` to restore",
            ))
        }
    };
    check_point(target, floor, head)?;
    let client = rand::random::<u64>() & ((1 << 53) - 1);
    let update = if head - target <= RESTORE_BY_IDS_WITHIN {
        // Everything written since is replayed once: restore by the CRDT's ids.
        let (mut past, at_target) =
            rebuild_as(&app, &room, target, Some(head), Some(client)).await?;
        on_pool(&app, move || {
            history::restore_in_place(&mut past, &at_target)
        })
        .await?
    } else {
        // Far back: two cheap rebuilds (each from its nearest checkpoint), side by side on
        // the pool, and a line diff.
        let store = &app.rooms.ctx().store;
        let (then, now) = tokio::try_join!(store.past(&room, target), store.past(&room, head))?;
        let (target_text, mut now) = tokio::try_join!(
            on_pool(&app, move || Ok(rebuild_doc(&then, 1)?.text())),
            on_pool(&app, move || rebuild_doc(&now, client)),
        )?;
        on_pool(&app, move || history::restore_edits(&mut now, &target_text)).await?
    };
    let Some(update) = update else {
        return Ok(Json(json!({"applied": false, "seq": head})).into_response());
    };
    let author = who.map_or_else(|| "restore".to_owned(), |p| p.name);
    match app.rooms.write(&room, update, Some(author)).await {
        Ok(seq) => {
            Ok(Json(json!({"applied": true, "seq": seq, "restored_seq": target})).into_response())
        }
        Err(crate::error::ServerError::Rejected { code }) => {
            tracing::warn!(room = %room, code = %code, "restore refused by the room");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "restore_refused",
                "the room refused the restore; retry",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct AtQuery {
    seq: Option<u64>,
    time: Option<String>,
}

async fn at(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    Query(q): Query<AtQuery>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let (floor, head) = bounds(&app, &room).await?;
    let seq = match (q.seq, q.time.as_deref()) {
        (Some(seq), None) => seq,
        (None, Some(t)) => {
            let when = OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
                ApiError::bad_request("`time` is an RFC 3339 time, e.g. 2026-12-03T10:45:00Z")
            })?;
            let ms = (when.unix_timestamp_nanos() / 1_000_000) as i64;
            app.rooms.ctx().store.seq_at_time(&room, ms).await?
        }
        (None, None) => head,
        _ => return Err(ApiError::bad_request("give `seq` or `time`, not both")),
    };
    check_point(seq, floor, head)?;
    let time = match seq {
        0 => None,
        _ => app
            .rooms
            .ctx()
            .store
            .op_rows(&room, seq, seq)
            .await?
            .first()
            .and_then(|r| rfc3339(r.committed_at)),
    };
    let (past, _) = rebuild(&app, &room, seq, None).await?;
    let (text, state) = on_pool(&app, move || Ok((past.text(), past.state()))).await?;
    Ok(Json(json!({
        "seq": seq, "time": time, "text": text, "state": encode_b64(&state),
        "head_seq": head, "floor_seq": floor,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct TimelineQuery {
    /// A pause longer than this starts a new group (default 60 s).
    gap_ms: Option<i64>,
    /// Edits whose sender had missed ops committed this long before them were made against a
    /// stale state (an offline session); default 5 s.
    stale_ms: Option<i64>,
}

/// Every op after the floor, with the row's metadata, bounded.
async fn all_rows(app: &AppState, room: &str) -> Result<(u64, Vec<OpRow>), ApiError> {
    let (floor, head) = bounds(app, room).await?;
    let from = (floor + 1).max(head.saturating_sub(MAX_ROWS) + 1);
    Ok((head, app.rooms.ctx().store.op_rows(room, from, head).await?))
}

async fn timeline(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let gap = q.gap_ms.unwrap_or(60_000).clamp(0, 86_400_000);
    let stale = q.stale_ms.unwrap_or(5_000).clamp(0, 86_400_000);
    let (head, rows) = all_rows(&app, &room).await?;
    let groups = on_pool(&app, move || {
        let recs = records(&rows);
        let bases: Vec<OpBase> = rows
            .iter()
            .map(|r| OpBase {
                base_seq: r.base_seq,
            })
            .collect();
        history::timeline(&recs, &bases, gap, stale)
    })
    .await?;
    let groups: Vec<_> = groups
        .iter()
        .map(|g| {
            json!({"from_seq": g.from_seq, "to_seq": g.to_seq,
                   "start": rfc3339(g.start_ms), "end": rfc3339(g.end_ms),
                   "authors": g.authors, "added": g.added, "removed": g.removed,
                   "made_against_seq": g.made_against_seq})
        })
        .collect();
    Ok(Json(json!({"head_seq": head, "groups": groups})).into_response())
}

fn records(rows: &[OpRow]) -> Vec<OpRecord<'_>> {
    rows.iter()
        .map(|r| OpRecord {
            seq: r.seq,
            update: &r.op,
            time_ms: r.committed_at,
            author: r.author.as_deref(),
        })
        .collect()
}

async fn blame(
    State(app): State<AppState>,
    token: Token,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    access(&app, &token, &room, Role::Read).await?;
    let (head, rows) = all_rows(&app, &room).await?;
    let (past, _) = rebuild(&app, &room, head, None).await?;
    let (text, spans) = on_pool(&app, move || {
        let spans = history::blame(&past, &records(&rows))?;
        Ok((past.text(), spans))
    })
    .await?;
    let spans: Vec<_> = spans
        .iter()
        .map(|s| {
            json!({"index": s.index, "len": s.len, "seq": s.seq, "author": s.author,
                   "time": rfc3339(s.time_ms)})
        })
        .collect();
    Ok(Json(json!({"seq": head, "text": text, "spans": spans})).into_response())
}
