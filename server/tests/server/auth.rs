//! Access control against a real server: every denial's status and code, readers refused
//! without a byte of the room changing, live revocation and expiry, the accounts API on both
//! stores, and the rate limits under a bounded flood.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_server::auth::{AuthSettings, Claims, Keys, Mode, Role};
use concord_server::secret::Secret;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const SECRET: &str = "concord-test-secret-0123456789-abcdefghij";

fn keys() -> Keys {
    Keys::new(Some(SECRET.as_bytes()), None).expect("keys")
}

fn now() -> u64 {
    concord_server::auth::unix_now()
}

/// An HS256 token for `sub` with `rooms`, valid for `ttl` seconds (negative: expired).
fn token(sub: &str, rooms: &[(&str, Role)], ttl: i64) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        name: Some(format!("{sub} name")),
        exp: (now() as i64 + ttl) as u64,
        nbf: None,
        rooms: rooms
            .iter()
            .map(|(r, role)| (r.to_string(), *role))
            .collect(),
    };
    keys().mint(&claims).expect("mint")
}

fn settings(mode: Mode) -> AuthSettings {
    AuthSettings {
        mode,
        secret: Some(Secret::new(SECRET)),
        public_key: Some(include_bytes!("../../../testdata/keys/ed25519-public.pem").to_vec()),
        ..AuthSettings::default()
    }
}

async fn server(db: &str, mode: Mode) -> TestServer {
    let mut config = test_config(db);
    config.auth = settings(mode);
    TestServer::start(config).await
}

/// A minimal HTTP/1.1 request: status, lower-case headers, JSON body (or `Null`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, HashMap<String, String>, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (
        status,
        headers,
        serde_json::from_str(&rest).unwrap_or(Value::Null),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Tries a WebSocket upgrade; `Ok` if it opened, else the HTTP status and JSON error code.
async fn upgrade(base: &str, room: &str, token: Option<&str>) -> Result<Ws, (u16, String)> {
    let mut url = format!("{base}/rooms/{room}/ws");
    if let Some(t) = token {
        url.push_str(&format!("?token={t}"));
    }
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), code(&body).to_owned()))
        }
        Err(e) => panic!("upgrade failed oddly: {e}"),
    }
}

/// The room's full state as a fresh client with `token` receives it.
async fn room_state(base: &str, room: &str, token: Option<String>) -> Vec<u8> {
    let mut c = TestClient::new(base, room, rand::random::<u32>() as u64 + 1);
    c.token = token;
    c.connect().await;
    let state = c.state();
    c.disconnect();
    state
}

/// A writer types `text` and waits for the ack.
async fn write(c: &mut TestClient, text: &str) {
    let at = c.session.text().chars().count() as u32;
    c.session.insert(at, text).expect("insert");
    c.send_pending().await;
    let want = c.sent.len();
    c.pump_until(|c| c.acked.len() >= want).await;
}

/// A reader tries to write: the server answers `forbidden`, and the room is byte-equal.
async fn reader_write_is_refused(base: &str, room: &str, reader: &str, witness: &str) {
    let before = room_state(base, room, Some(witness.to_owned())).await;
    let mut r = TestClient::new(base, room, 7_001);
    r.token = Some(reader.to_owned());
    r.connect().await;
    r.pump_until(|c| c.access.as_deref() == Some("read")).await;
    assert!(
        r.session.insert(0, "not allowed").is_err(),
        "the session refuses a reader's edit"
    );
    r.send_forged_insert("not allowed").await;
    r.pump_until(|c| c.errors.iter().any(|e| e == "forbidden"))
        .await;
    assert!(r.acked.is_empty(), "a reader's op was acked");
    let after = room_state(base, room, Some(witness.to_owned())).await;
    assert_eq!(before, after, "a refused write changed the room");
}

/// Tokens mode: every kind of token on the JSON protocol and the REST API.
pub async fn token_matrix() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let s = server(&db, Mode::Tokens).await;
    let base = s.ws_base();
    let room = unique("team-doc");
    let writer = token("w", &[("team-*", Role::Write)], 600);
    let reader = token("r", &[(&room, Role::Read)], 600);

    // Writers write.
    let mut w = TestClient::new(&base, &room, 1);
    w.token = Some(writer.clone());
    w.connect().await;
    assert_eq!(w.access, None, "writers get no access frame");
    write(&mut w, "hello").await;

    // Denied upgrades: status and code, before any room work.
    let other_key = Keys::new(Some(b"some other secret, long enough to be valid"), None)
        .expect("keys")
        .mint(&Claims {
            sub: "w".into(),
            name: None,
            exp: now() + 600,
            nbf: None,
            rooms: [("*".to_owned(), Role::Write)].into_iter().collect(),
        })
        .expect("mint");
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "unauthorized"),
        ("malformed", Some("not-a-jwt".into()), 401, "unauthorized"),
        ("bad signature", Some(other_key), 401, "unauthorized"),
        (
            "expired",
            Some(token("w", &[("*", Role::Write)], -5)),
            401,
            "token_expired",
        ),
        (
            "other room",
            Some(token("w", &[("elsewhere", Role::Write)], 600)),
            403,
            "forbidden",
        ),
    ];
    let before = room_state(&base, &room, Some(writer.clone())).await;
    for (what, t, status, want) in &cases {
        match upgrade(&base, &room, t.as_deref()).await {
            Ok(_) => panic!("{what}: the upgrade was accepted"),
            Err((got, c)) => {
                assert_eq!((got, c.as_str()), (*status, *want), "{what}");
            }
        }
    }
    assert_eq!(before, room_state(&base, &room, Some(writer.clone())).await);

    // EdDSA tokens from an integrator's key pair are accepted too.
    let ed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &Claims {
            sub: "ed".into(),
            name: None,
            exp: now() + 600,
            nbf: None,
            rooms: [(room.clone(), Role::Write)].into_iter().collect(),
        },
        &jsonwebtoken::EncodingKey::from_ed_pem(include_bytes!(
            "../../../testdata/keys/ed25519-private.pem"
        ))
        .expect("ed key"),
    )
    .expect("sign");
    let mut e = TestClient::new(&base, &room, 2);
    e.token = Some(ed);
    e.connect().await;
    write(&mut e, " from ed").await;

    reader_write_is_refused(&base, &room, &reader, &writer).await;

    // The document API, under the same rules: reading needs read, writing and deleting need
    // write, and every denied write leaves the room byte-equal.
    let before = room_state(&base, &room, Some(writer.clone())).await;
    let edits = json!({"base_seq": 0, "edits": [{"index": 0, "insert": "x"}]});
    let mut api_cases = cases.clone();
    api_cases.push(("reader writing", Some(reader.clone()), 403, "forbidden"));
    for (what, t, status, want) in &api_cases {
        let reads = t.as_deref() == Some(reader.as_str());
        for (method, path, body) in [
            ("GET", format!("/api/rooms/{room}/text"), None),
            ("POST", format!("/api/rooms/{room}/edits"), Some(&edits)),
            ("DELETE", format!("/api/rooms/{room}"), None),
        ] {
            let (got, _, answer) = http(s.addr, method, &path, t.as_deref(), body).await;
            if reads && method == "GET" {
                assert_eq!(got, 200, "{what}: {method} {path}: {answer}");
                assert_eq!(answer["text"], "hello from ed", "{what}");
            } else {
                assert_eq!(
                    (got, code(&answer)),
                    (*status, *want),
                    "{what}: {method} {path}: {answer}"
                );
            }
        }
    }
    assert_eq!(before, room_state(&base, &room, Some(writer.clone())).await);
    let (got, _, answer) = http(
        s.addr,
        "GET",
        &format!("/api/rooms/{room}/text"),
        Some(&writer),
        None,
    )
    .await;
    assert_eq!((got, answer["text"].as_str()), (200, Some("hello from ed")));

    // REST in tokens mode: the accounts routes are not there, and say so in JSON.
    let (status, _, body) = http(s.addr, "GET", "/api/docs", Some(&writer), None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _, body) = http(s.addr, "GET", "/api/auth", None, None).await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("tokens")));

    // A token expiring while connected closes the socket with 4401 (within a second).
    let short = token("w", &[("team-*", Role::Write)], 2);
    let mut x = TestClient::new(&base, &room, 3);
    x.token = Some(short);
    x.connect().await;
    let deadline = Instant::now() + Duration::from_secs(4);
    while !x.closed && Instant::now() < deadline {
        x.pump_for(Duration::from_millis(100)).await;
    }
    assert_eq!(x.close_code, Some(4401));
    w.disconnect();
    s.stop().await;
}

struct Account {
    id: String,
    token: String,
}

async fn signup(addr: SocketAddr, name: &str) -> Account {
    let (status, _, body) = http(
        addr,
        "POST",
        "/api/signup",
        None,
        Some(&json!({"name": name, "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, 201, "signup {name}: {body}");
    Account {
        id: body["user"]["id"].as_str().expect("id").to_owned(),
        token: body["token"].as_str().expect("token").to_owned(),
    }
}

/// Short unique user names (≤ 32 characters).
fn name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Accounts mode on one store: sign-up and login errors, search, documents, grants, the
/// REST denials, readers, live downgrade, revocation and deletion.
pub async fn accounts(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let s = server(&db, Mode::Accounts).await;
    let base = s.ws_base();
    let (ada_name, bob_name) = (name("ada"), name("bob"));
    let ada = signup(s.addr, &ada_name).await;
    let bob = signup(s.addr, &bob_name).await;

    // Duplicate sign-up (any case), bad names, wrong password.
    let dup = json!({"name": ada_name.to_uppercase(), "password": "another one"});
    let (status, _, body) = http(s.addr, "POST", "/api/signup", None, Some(&dup)).await;
    assert_eq!((status, code(&body)), (409, "name_taken"));
    let bad = json!({"name": "x'; DROP TABLE users; --", "password": "whatever1"});
    let (status, _, body) = http(s.addr, "POST", "/api/signup", None, Some(&bad)).await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    let wrong = json!({"name": ada_name, "password": "wrong horse"});
    let (status, _, body) = http(s.addr, "POST", "/api/login", None, Some(&wrong)).await;
    assert_eq!((status, code(&body)), (401, "bad_credentials"));
    let right = json!({"name": ada_name, "password": "correct horse"});
    let (status, _, body) = http(s.addr, "POST", "/api/login", None, Some(&right)).await;
    assert_eq!(status, 200);
    assert!(body["token"].is_string());

    // Search: substring, case-insensitive; SQL and LIKE metacharacters match literally.
    let q = format!("/api/users?q={}", &bob_name[..6].to_uppercase());
    let (status, _, body) = http(s.addr, "GET", &q, Some(&ada.token), None).await;
    assert_eq!(status, 200);
    assert!(body["users"]
        .as_array()
        .expect("users")
        .iter()
        .any(|u| u["id"] == json!(bob.id)));
    for q in ["%25", "_", "%27%20OR%201%3D1%20--", "%5C"] {
        let (status, _, body) = http(
            s.addr,
            "GET",
            &format!("/api/users?q={q}"),
            Some(&ada.token),
            None,
        )
        .await;
        assert_eq!(status, 200, "q={q}");
        assert_eq!(body["users"], json!([]), "q={q} matched: {body}");
    }

    // REST denials for every kind of bad token.
    let expired = token(&ada.id, &[], -5);
    let forged = Keys::new(Some(b"some other secret, long enough to be valid"), None)
        .expect("keys")
        .mint(&Claims {
            sub: ada.id.clone(),
            name: None,
            exp: now() + 600,
            nbf: None,
            rooms: Default::default(),
        })
        .expect("mint");
    for (what, t, status, want) in [
        ("no token", None, 401, "unauthorized"),
        ("malformed", Some("x.y.z"), 401, "unauthorized"),
        ("bad signature", Some(forged.as_str()), 401, "unauthorized"),
        ("expired", Some(expired.as_str()), 401, "token_expired"),
    ] {
        for path in ["/api/me", "/api/docs", "/api/users?q=a"] {
            let (got, headers, body) = http(s.addr, "GET", path, t, None).await;
            assert_eq!((got, code(&body)), (status, want), "{what} {path}");
            assert_eq!(
                headers.get("www-authenticate").map(String::as_str),
                Some("Bearer")
            );
        }
    }

    // Documents: ada creates one; bob has no access.
    let (status, _, body) = http(
        s.addr,
        "POST",
        "/api/docs",
        Some(&ada.token),
        Some(&json!({"title": "Plans"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let doc = body["doc"]["id"].as_str().expect("doc id").to_owned();
    assert_eq!(body["doc"]["role"], "owner");
    // A chosen id lives in the accounts' namespace: a room tokens grant by name or pattern
    // (`team-*`) cannot be taken over by creating it first.
    let own = format!("d-{}", unique("roadmap"));
    for (id, status_wanted) in [("team-roadmap", 400), ("d-", 400), (own.as_str(), 201)] {
        let chosen = json!({"title": "Mine", "id": id});
        let (status, _, body) =
            http(s.addr, "POST", "/api/docs", Some(&ada.token), Some(&chosen)).await;
        assert_eq!(status, status_wanted, "{id}: {body}");
    }
    let mut a = TestClient::new(&base, &doc, 1);
    a.token = Some(ada.token.clone());
    a.connect().await;
    write(&mut a, "the plan").await;
    assert_eq!(
        upgrade(&base, &doc, Some(&bob.token)).await.err(),
        Some((403, "forbidden".into()))
    );
    let path = format!("/api/docs/{doc}");
    let (status, _, body) = http(s.addr, "GET", &path, Some(&bob.token), None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _, body) = http(s.addr, "DELETE", &path, Some(&bob.token), None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));

    // Invites: an unknown user, a bad role, a non-owner inviting.
    let grant = |user: &str| format!("/api/docs/{doc}/grants/{user}");
    let read = json!({"role": "read"});
    let (status, _, body) = http(
        s.addr,
        "PUT",
        &grant("u_nobody"),
        Some(&ada.token),
        Some(&read),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _, body) = http(
        s.addr,
        "PUT",
        &grant(&bob.id),
        Some(&ada.token),
        Some(&json!({"role": "admin"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    let (status, _, _) = http(
        s.addr,
        "PUT",
        &grant(&bob.id),
        Some(&ada.token),
        Some(&read),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = http(
        s.addr,
        "PUT",
        &grant(&ada.id),
        Some(&bob.token),
        Some(&read),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (403, "forbidden"),
        "a reader cannot share"
    );
    let (status, _, body) = http(s.addr, "DELETE", &path, Some(&bob.token), None).await;
    assert_eq!(
        (status, code(&body)),
        (403, "forbidden"),
        "a reader cannot delete"
    );

    // Lists: ada owns it, bob reads it; ada sees the grant.
    let (_, _, body) = http(s.addr, "GET", "/api/docs", Some(&bob.token), None).await;
    let listed = body["docs"].as_array().expect("docs");
    assert!(listed
        .iter()
        .any(|d| d["id"] == json!(doc) && d["role"] == "read"));
    let (_, _, body) = http(s.addr, "GET", &path, Some(&ada.token), None).await;
    assert_eq!(body["doc"]["grants"][0]["user"]["id"], json!(bob.id));

    // Bob reads: sees ada's text, and his writes are refused byte for byte.
    reader_write_is_refused(&base, &doc, &bob.token, &ada.token).await;
    let mut b = TestClient::new(&base, &doc, 2);
    b.token = Some(bob.token.clone());
    b.connect().await;
    b.pump_until(|c| c.access.as_deref() == Some("read")).await;
    assert_eq!(b.text(), "the plan");
    write(&mut a, ", live").await;
    b.pump_until(|c| c.text() == "the plan, live").await;

    // Upgraded live to writer: an access frame, and his writes land.
    let (status, _, _) = http(
        s.addr,
        "PUT",
        &grant(&bob.id),
        Some(&ada.token),
        Some(&json!({"role": "write"})),
    )
    .await;
    assert_eq!(status, 200);
    b.pump_until(|c| c.access.as_deref() == Some("write")).await;
    write(&mut b, " +bob").await;
    a.pump_until(|c| c.text().ends_with("+bob")).await;

    // Revoked: closed with 4403 within a second; reconnecting is refused.
    let t0 = Instant::now();
    let (status, _, _) = http(s.addr, "DELETE", &grant(&bob.id), Some(&ada.token), None).await;
    assert_eq!(status, 204);
    while !b.closed && t0.elapsed() < Duration::from_secs(5) {
        b.pump_for(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    assert_eq!(b.close_code, Some(4403));
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    eprintln!("revocation closed the writer in {took:?}");
    assert_eq!(
        upgrade(&base, &doc, Some(&bob.token)).await.err(),
        Some((403, "forbidden".into()))
    );

    // Deleted: the owner's own socket closes, the document and its data are gone.
    let (status, _, _) = http(s.addr, "DELETE", &path, Some(&ada.token), None).await;
    assert_eq!(status, 204);
    while !a.closed {
        a.pump_for(Duration::from_millis(20)).await;
    }
    // 4404, room deleted (its content went with the document), before the grant re-check.
    assert_eq!(a.close_code, Some(4404));
    let (status, _, _) = http(s.addr, "GET", &path, Some(&ada.token), None).await;
    assert_eq!(status, 404);
    s.stop().await;
}

/// Two instances over Redis: the owner revokes on A, the writer on B is closed within 1 s.
pub async fn revocation_reaches_every_instance() {
    let Some((pg, redis)) = scale_out_services().await else {
        return;
    };
    let mut ca = test_config(&pg);
    ca.redis_url = Some(redis.clone());
    ca.auth = settings(Mode::Accounts);
    let mut cb = ca.clone();
    cb.addr = "127.0.0.1:0".parse().expect("addr");
    let a = TestServer::start(ca).await;
    let b = TestServer::start(cb).await;
    let ada = signup(a.addr, &name("ada")).await;
    let bob = signup(a.addr, &name("bob")).await;
    let (_, _, body) = http(
        a.addr,
        "POST",
        "/api/docs",
        Some(&ada.token),
        Some(&json!({"title": "Shared"})),
    )
    .await;
    let doc = body["doc"]["id"].as_str().expect("doc").to_owned();
    let grant = format!("/api/docs/{doc}/grants/{}", bob.id);
    let write_role = json!({"role": "write"});
    let (status, _, _) = http(a.addr, "PUT", &grant, Some(&ada.token), Some(&write_role)).await;
    assert_eq!(status, 200);
    let mut on_b = TestClient::new(&b.ws_base(), &doc, 1);
    on_b.token = Some(bob.token.clone());
    on_b.connect().await;
    write(&mut on_b, "bob was here").await;

    // Downgrade on A: B's connection becomes a reader.
    let (status, _, _) = http(
        a.addr,
        "PUT",
        &grant,
        Some(&ada.token),
        Some(&json!({"role": "read"})),
    )
    .await;
    assert_eq!(status, 200);
    on_b.pump_until(|c| c.access.as_deref() == Some("read"))
        .await;
    let witness = Some(ada.token.clone());
    let before = room_state(&a.ws_base(), &doc, witness.clone()).await;
    on_b.send_forged_insert("sneaky ").await;
    on_b.pump_until(|c| c.errors.iter().any(|e| e == "forbidden"))
        .await;
    assert_eq!(before, room_state(&a.ws_base(), &doc, witness).await);

    // Revoke on A: closed on B within a second.
    let t0 = Instant::now();
    let (status, _, _) = http(a.addr, "DELETE", &grant, Some(&ada.token), None).await;
    assert_eq!(status, 204);
    while !on_b.closed && t0.elapsed() < Duration::from_secs(5) {
        on_b.pump_for(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    eprintln!("cross-instance revocation took {took:?}");
    assert_eq!(on_b.close_code, Some(4403));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        upgrade(&b.ws_base(), &doc, Some(&bob.token)).await.err(),
        Some((403, "forbidden".into()))
    );
    a.stop().await;
    b.stop().await;
}

/// Opens a TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all local).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("from"))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Bounded floods: upgrades from one address, logins against one account, updates on one
/// connection. Each is refused (429 / 4429) while clients elsewhere keep working.
pub async fn rate_limits_hold_under_a_flood() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let mut config = test_config(&db);
    config.auth = settings(Mode::Accounts);
    config.auth.limits.connect_burst = 20.0;
    config.auth.limits.connect_per_sec = 5.0;
    config.auth.limits.login_burst = 50.0;
    config.auth.limits.login_per_sec = 5.0;
    config.update_rate = (50.0, 100.0);
    config.update_patience = Duration::from_secs(2);
    let s = TestServer::start(config).await;
    let ada = signup(s.addr, &name("ada")).await;
    let (_, _, body) = http(
        s.addr,
        "POST",
        "/api/docs",
        Some(&ada.token),
        Some(&json!({"title": "Busy"})),
    )
    .await;
    let doc = body["doc"]["id"].as_str().expect("doc").to_owned();

    // 200 upgrade attempts from 127.0.0.2: most get 429, a client from 127.0.0.1 still joins.
    let mut limited = 0;
    for _ in 0..200 {
        let stream = connect_from("127.0.0.2", s.addr).await;
        let url = format!("ws://{}/rooms/{doc}/ws?token={}", s.addr, ada.token);
        match tokio_tungstenite::client_async(url, stream).await {
            Ok(_) => {}
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    eprintln!("connection flood: {limited} of 200 upgrades refused with 429");
    assert!(limited >= 150, "only {limited} refused");
    let mut a = TestClient::new(&s.ws_base(), &doc, 1);
    a.token = Some(ada.token.clone());
    a.connect().await;
    write(&mut a, "still here").await;

    // Wrong passwords against one account back off; the right one from elsewhere works
    // once the backoff passes, and other accounts are unaffected.
    let bob_name = name("bob");
    signup(s.addr, &bob_name).await;
    let mut backoff = None;
    for _ in 0..8 {
        let wrong = json!({"name": bob_name, "password": "nope nope"});
        let (status, headers, _) = http(s.addr, "POST", "/api/login", None, Some(&wrong)).await;
        if status == 429 {
            backoff = headers.get("retry-after").cloned();
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(backoff.is_some(), "failed logins never backed off");
    // The backoff is the guessing address's: the owner's right password from elsewhere works.
    let right = json!({"name": bob_name, "password": "correct horse"}).to_string();
    let mut stream = connect_from("127.0.0.2", s.addr).await;
    let request = format!(
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{right}",
        s.addr,
        right.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let carol = name("carol");
    signup(s.addr, &carol).await;
    let ok = json!({"name": carol, "password": "correct horse"});
    let (status, _, _) = http(s.addr, "POST", "/api/login", None, Some(&ok)).await;
    assert_eq!(status, 200, "another account is not locked out");

    // An honest burst beyond the rate is slowed down, not refused: 120 ops at 50 + 100/s
    // cannot all be acked in less than 0.7 s, and all are.
    let mut ws = upgrade(&s.ws_base(), &doc, Some(&ada.token))
        .await
        .expect("open");
    let mut doc_local = concord_engine::Document::new(99);
    let start = Instant::now();
    send_ops(&mut ws, &mut doc_local, "b", 120).await;
    let mut acked = 0;
    while acked < 120 {
        let frame = tokio::time::timeout(DEADLINE, ws.next()).await;
        match frame {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"t":"ack""#) => acked += 1,
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => panic!("the burst's socket ended: {other:?}"),
        }
    }
    let paced = start.elapsed();
    eprintln!("update burst: 120 ops acked in {paced:?} (50 at once, then 100/s)");
    assert!(paced >= Duration::from_millis(690), "not paced: {paced:?}");

    // One connection floods updates without pause: closed with 4429 once its patience is
    // spent; the other writer is fine.
    let mut flood = TestClient::new(&s.ws_base(), &doc, 2);
    flood.token = Some(ada.token.clone());
    flood.connect().await;
    send_ops(&mut ws, &mut doc_local, "f", 600).await;
    let mut close = None;
    let mut error = None;
    while close.is_none() {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => close = Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"t":"error""#) => error = Some(t),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    assert!(
        error.as_deref().is_some_and(|e| e.contains("rate_limited")),
        "told why: {error:?}"
    );
    assert_eq!(close, Some(4429));
    write(&mut a, " and writing").await;
    flood.disconnect();
    s.stop().await;
}

/// Sends `n` single-character ops on a raw socket, ids `{prefix}{i}`.
async fn send_ops(ws: &mut Ws, doc: &mut concord_engine::Document, prefix: &str, n: usize) {
    for i in 0..n {
        let update = doc.insert(0, "x").expect("insert");
        let frame = format!(
            r#"{{"t":"op","id":"{prefix}{i}","data":{{"update":"{}"}}}}"#,
            concord_engine::wire::encode_b64(&update)
        );
        ws.send(Message::Text(frame.into())).await.expect("send");
    }
}
