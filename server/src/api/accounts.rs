//! Built-in accounts (`CONCORD_AUTH=accounts`): sign up, log in, search users, documents and
//! their grants. These routes decide who may touch a document, never how it changes.
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /api/auth` | anyone | `{"mode"}` |
//! | `POST /api/signup` `{name,password}` | anyone | 201 `{token,user}` |
//! | `POST /api/login` `{name,password}` | anyone | 200 `{token,user}` |
//! | `GET /api/me` | signed in | `{user}` |
//! | `GET /api/users?q=` | signed in | `{users}` (≤ 20) |
//! | `POST /api/docs` `{title,id?}` | an account | 201 `{doc}` |
//! | `GET /api/docs` | signed in | `{docs}` mine and shared with me |
//! | `GET /api/docs/{id}` | granted | `{doc}` (+ `grants` for the owner) |
//! | `PUT /api/docs/{id}/grants/{user}` `{role}` | owner | `{grant}` |
//! | `DELETE /api/docs/{id}/grants/{user}` | owner | 204 |
//! | `DELETE /api/docs/{id}` | owner | 204 |

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{token_of, ApiError, Body, ClientIp};
use crate::auth::{AccessChange, Mode, Principal, Role};
use crate::clock::now_ms;
use crate::state::AppState;
use crate::store::directory::{like_escape, DocInfo, DocRole, User};

/// The `/api` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/auth", get(mode))
        .route("/api/signup", post(signup))
        .route("/api/login", post(login))
        .route("/api/me", get(me))
        .route("/api/users", get(search_users))
        .route("/api/docs", post(create_doc).get(list_docs))
        .route("/api/docs/{id}", get(get_doc).delete(delete_doc))
        .route(
            "/api/docs/{id}/grants/{user}",
            put(set_grant).delete(revoke_grant),
        )
}

/// A signed-in caller (a valid token); extraction fails with 401 otherwise.
pub struct SignedIn(pub Principal);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        if app.auth.mode() != Mode::Accounts {
            return Err(ApiError::not_found(
                "accounts are not enabled on this server",
            ));
        }
        let token = token_of(parts);
        match app.auth.authenticate(token.as_deref())? {
            Some(p) => Ok(SignedIn(p)),
            None => Err(ApiError::from(crate::auth::Denied::Unauthorized)),
        }
    }
}

async fn mode(State(app): State<AppState>) -> Response {
    Json(json!({"mode": app.auth.mode().as_str()})).into_response()
}

#[derive(Deserialize)]
struct Credentials {
    name: String,
    password: String,
}

/// Names are 3-32 characters of `A-Z a-z 0-9 _ - .`; unique regardless of case.
fn name_key(name: &str) -> Result<String, ApiError> {
    let ok = (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(
            "a name is 3-32 characters of A-Z a-z 0-9 _ - .",
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if (8..=crate::auth::password::MAX_PASSWORD_BYTES).contains(&password.len()) {
        Ok(())
    } else {
        Err(ApiError::bad_request("a password is 8-256 bytes"))
    }
}

fn accounts_on(app: &AppState) -> Result<(), ApiError> {
    if app.auth.mode() == Mode::Accounts {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "accounts are not enabled on this server",
        ))
    }
}

fn signed_in(app: &AppState, user: &User, status: StatusCode) -> Result<Response, ApiError> {
    let token = app.auth.mint(user).ok_or_else(ApiError::unavailable)?;
    Ok((status, Json(json!({"token": token, "user": user}))).into_response())
}

/// Where accounts' documents live among room ids: integrators keep their tokens' rooms and
/// patterns outside it.
pub const DOC_PREFIX: &str = "d-";

fn random_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

async fn signup(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Body(c): Body<Credentials>,
) -> Result<Response, ApiError> {
    accounts_on(&app)?;
    app.auth
        .limits
        .login(ip, now_ms())
        .map_err(ApiError::rate_limited)?;
    let key = name_key(&c.name)?;
    check_password(&c.password)?;
    let hash = app
        .auth
        .passwords
        .hash(c.password)
        .await
        .map_err(|_| ApiError::unavailable())?;
    let user = User {
        id: random_id("u_"),
        name: c.name,
    };
    let created = app
        .auth
        .directory()
        .create_user(&user, &key, &hash, unix_secs())
        .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            "that name is taken",
        ));
    }
    tracing::info!(user = %user.id, "account created");
    signed_in(&app, &user, StatusCode::CREATED)
}

async fn login(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Body(c): Body<Credentials>,
) -> Result<Response, ApiError> {
    accounts_on(&app)?;
    let now = now_ms();
    app.auth
        .limits
        .login(ip, now)
        .map_err(ApiError::rate_limited)?;
    let bad = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_credentials",
        "wrong name or password",
    );
    let Ok(key) = name_key(&c.name) else {
        return Err(bad);
    };
    if c.password.len() > crate::auth::password::MAX_PASSWORD_BYTES {
        return Err(bad);
    }
    // Failures back off per (name, address): guesses from one place slow down that place,
    // and cannot lock the account's owner out from anywhere else (a name-wide backoff let five
    // wrong guesses keep anyone's right password refused). Each address is also held to its
    // login rate above.
    let failure_key = format!("{key}\n{ip}");
    if let Ok(failures) = app.auth.limits.failures.lock() {
        failures
            .check(&failure_key, now)
            .map_err(|ms| ApiError::rate_limited(ms.div_ceil(1000)))?;
    }
    let account = app.auth.directory().account(&key).await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let ok = app
        .auth
        .passwords
        .verify(c.password, stored)
        .await
        .map_err(|_| ApiError::unavailable())?;
    match account {
        Some(account) if ok => {
            if let Ok(mut f) = app.auth.limits.failures.lock() {
                f.succeeded(&failure_key);
            }
            signed_in(&app, &account.user, StatusCode::OK)
        }
        _ => {
            if let Ok(mut f) = app.auth.limits.failures.lock() {
                f.failed(&failure_key, now_ms());
            }
            Err(bad)
        }
    }
}

async fn me(SignedIn(p): SignedIn) -> Response {
    Json(json!({"user": {"id": p.id, "name": p.name}})).into_response()
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn search_users(
    State(app): State<AppState>,
    SignedIn(_): SignedIn,
    Query(s): Query<Search>,
) -> Result<Response, ApiError> {
    let q = s.q.trim();
    if q.is_empty() || q.len() > 64 {
        return Err(ApiError::bad_request("q is 1-64 characters"));
    }
    let pattern = format!("%{}%", like_escape(&q.to_lowercase()));
    let users = app.auth.directory().search_users(&pattern, 20).await?;
    Ok(Json(json!({"users": users})).into_response())
}

#[derive(Deserialize)]
struct NewDoc {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

fn doc_json(doc: &DocInfo, role: DocRole) -> serde_json::Value {
    json!({"id": doc.id, "title": doc.title, "owner": doc.owner, "role": role.as_str()})
}

async fn create_doc(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
    Body(n): Body<NewDoc>,
) -> Result<Response, ApiError> {
    let title = n.title.unwrap_or_else(|| "Untitled".to_owned());
    let title = title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::bad_request("a title is 1-200 characters"));
    }
    let id = match n.id {
        Some(id) => {
            concord_engine::wire::validate_room_id(&id).map_err(|_| {
                ApiError::bad_request("a document id is 1-128 characters of A-Z a-z 0-9 _ - .")
            })?;
            // Accounts own documents only in their own namespace: an account that could take
            // any free id would own (read, share, delete) a room that integrators' tokens
            // grant by name or pattern, such as `team-roadmap` under `team-*`.
            if !id.starts_with(DOC_PREFIX) || id.len() == DOC_PREFIX.len() {
                return Err(ApiError::bad_request(
                    "an account's document id starts with d- (other ids belong to tokens' rooms)",
                ));
            }
            id
        }
        None => random_id(DOC_PREFIX),
    };
    let dir = app.auth.directory();
    // Integrators' users exist only in their tokens: documents need an account as owner.
    let Some(owner) = dir.user(&p.id).await? else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only accounts of this server can own documents",
        ));
    };
    let doc = DocInfo {
        id,
        title: title.to_owned(),
        owner,
    };
    if !dir.create_doc(&doc, unix_secs()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            "a document with that id exists",
        ));
    }
    // The creator may have been refused this room a moment ago: forget that.
    app.auth.changed(AccessChange {
        room: doc.id.clone(),
        user: Some(p.id.clone()),
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({"doc": doc_json(&doc, DocRole::Owner)})),
    )
        .into_response())
}

async fn list_docs(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
) -> Result<Response, ApiError> {
    let docs = app.auth.directory().docs_for(&p.id, 1000).await?;
    let docs: Vec<_> = docs.iter().map(|(d, r)| doc_json(d, *r)).collect();
    Ok(Json(json!({"docs": docs})).into_response())
}

/// The document and the caller's role on it; 404 if it does not exist or the caller has no
/// role (so its existence is not revealed), 403 if `owner` is needed and they are not it.
async fn doc_for(
    app: &AppState,
    p: &Principal,
    id: &str,
    owner: bool,
) -> Result<(DocInfo, DocRole), ApiError> {
    let dir = app.auth.directory();
    let missing = ApiError::not_found("no such document");
    let Some(doc) = dir.doc(id).await? else {
        return Err(missing);
    };
    let Some(role) = dir.role(id, &p.id).await? else {
        return Err(missing);
    };
    if owner && role != DocRole::Owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the document's owner may do this",
        ));
    }
    Ok((doc, role))
}

async fn get_doc(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (doc, role) = doc_for(&app, &p, &id, false).await?;
    let mut body = doc_json(&doc, role);
    if role == DocRole::Owner {
        let grants = app.auth.directory().grants(&id).await?;
        body["grants"] = grants
            .iter()
            .map(|(u, r)| json!({"user": u, "role": r.as_str()}))
            .collect();
    }
    Ok(Json(json!({ "doc": body })).into_response())
}

#[derive(Deserialize)]
struct GrantBody {
    role: String,
}

async fn set_grant(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
    Path((id, user)): Path<(String, String)>,
    Body(g): Body<GrantBody>,
) -> Result<Response, ApiError> {
    let role =
        Role::parse(&g.role).ok_or(ApiError::bad_request("role is \"read\" or \"write\""))?;
    let (doc, _) = doc_for(&app, &p, &id, true).await?;
    let dir = app.auth.directory();
    let Some(target) = dir.user(&user).await? else {
        return Err(ApiError::not_found("no such user"));
    };
    if target.id == doc.owner.id {
        return Err(ApiError::bad_request("the owner already has full access"));
    }
    dir.set_grant(&id, &target.id, role).await?;
    app.auth.changed(AccessChange {
        room: id,
        user: Some(target.id.clone()),
    });
    Ok(Json(json!({"grant": {"user": target, "role": role.as_str()}})).into_response())
}

async fn revoke_grant(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
    Path((id, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    doc_for(&app, &p, &id, true).await?;
    if !app.auth.directory().remove_grant(&id, &user).await? {
        return Err(ApiError::not_found(
            "that user has no grant on this document",
        ));
    }
    app.auth.changed(AccessChange {
        room: id,
        user: Some(user),
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_doc(
    State(app): State<AppState>,
    SignedIn(p): SignedIn,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    doc_for(&app, &p, &id, true).await?;
    if !app.auth.directory().delete_doc(&id).await? {
        return Err(ApiError::not_found("no such document"));
    }
    // Its content goes with it (members are closed 4404 before the grants are re-checked).
    app.rooms.delete(&id).await?;
    // Everyone in the room re-checks, finds no grant, and is closed (4403).
    app.auth.changed(AccessChange {
        room: id.clone(),
        user: None,
    });
    tracing::info!(doc = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn unix_secs() -> i64 {
    i64::try_from(crate::auth::unix_now()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_and_refuse_odd_characters() {
        assert_eq!(name_key("Ada.L-1_").unwrap(), "ada.l-1_");
        assert!(name_key("ab").is_err());
        assert!(name_key(&"a".repeat(33)).is_err());
        assert!(name_key("ada%").is_err());
        assert!(name_key("a'; DROP").is_err());
        assert!(name_key("adä").is_err());
    }
}
