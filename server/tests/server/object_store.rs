//! Snapshots in an S3-compatible bucket, against a real S3 server the test starts itself: moto
//! from PyPI (`scripts/ensure-s3.sh`), reached through a TCP proxy the test can cut, so an
//! outage loses the connection but not the bucket's content. Compaction moves the snapshot to
//! the bucket; a restart loads byte-equal from it; with the bucket unreachable, ops are still
//! acked (they are durable in the database), `/readyz` says so, and reads of the room fail
//! rather than answer a wrong document; when it returns, everything recovers, byte-equal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_server::secret::Secret;
use concord_server::store::objects::{ObjectSettings, Objects};
use concord_server::ServerError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::auth::http;
use crate::support::*;

const BUCKET: &str = "concord-test";

/// moto's S3 server on a free loopback port, killed with the test.
struct Moto {
    port: u16,
    _child: tokio::process::Child,
}

impl Moto {
    async fn start() -> Moto {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-s3.sh");
        let out = tokio::process::Command::new("bash")
            .arg(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .expect("run scripts/ensure-s3.sh");
        assert!(
            out.status.success(),
            "scripts/ensure-s3.sh failed: moto is needed"
        );
        let server = String::from_utf8(out.stdout).expect("a path");
        let port = free_port();
        let child = tokio::process::Command::new(server.trim())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        // Creating the bucket is also the readiness probe.
        loop {
            if let Ok(status) = raw(addr, "PUT", &format!("/{BUCKET}")).await {
                assert_eq!(status, 200, "create the bucket");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Moto {
            port,
            _child: child,
        }
    }
}

/// One unsigned HTTP request to moto (it does not check signatures); the status.
async fn raw(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))
}

/// A TCP proxy in front of moto that the test can cut: down, it drops every connection (open
/// ones included) at once, as an unreachable bucket does; the bucket keeps its content.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (up, links) = (up.clone(), links.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: connection reset
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        });
        Proxy {
            port,
            up,
            links,
            task,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for link in self.links.lock().unwrap().drain(..) {
                link.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set_up(false);
    }
}

/// The room's snapshot row: (op_seq, inline state length, object key).
async fn snapshot_row(db: &str, room: &str) -> Option<(i64, usize, Option<String>)> {
    const Q: &str = "SELECT op_seq, state, object_key FROM snapshots WHERE room_id = $1";
    type Row = (i64, Vec<u8>, Option<String>);
    let row: Option<Row> = if db.starts_with("sqlite:") {
        let pool = sqlx::sqlite::SqlitePool::connect(db).await.unwrap();
        let row = sqlx::query_as(Q)
            .bind(room)
            .fetch_optional(&pool)
            .await
            .unwrap();
        pool.close().await;
        row
    } else {
        let pool = sqlx::postgres::PgPool::connect(db).await.unwrap();
        let row = sqlx::query_as(Q)
            .bind(room)
            .fetch_optional(&pool)
            .await
            .unwrap();
        pool.close().await;
        row
    };
    row.map(|(seq, state, key)| (seq, state.len(), key))
}

/// The room's checkpoints: (seq, inline state length, object key), oldest first.
async fn checkpoint_rows(db: &str, room: &str) -> Vec<(i64, usize, Option<String>)> {
    const Q: &str =
        "SELECT seq, state, object_key FROM checkpoints WHERE room_id = $1 ORDER BY seq";
    type Row = (i64, Vec<u8>, Option<String>);
    let rows: Vec<Row> = if db.starts_with("sqlite:") {
        let pool = sqlx::sqlite::SqlitePool::connect(db).await.unwrap();
        let rows = sqlx::query_as(Q).bind(room).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::postgres::PgPool::connect(db).await.unwrap();
        let rows = sqlx::query_as(Q).bind(room).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    };
    rows.into_iter()
        .map(|(seq, state, key)| (seq, state.len(), key))
        .collect()
}

/// Polls the snapshot row until `cond` holds (bounded by [`DEADLINE`]).
async fn wait_row(
    db: &str,
    room: &str,
    what: &str,
    cond: impl Fn(&(i64, usize, Option<String>)) -> bool,
) -> (i64, usize, Option<String>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(row) = snapshot_row(db, room).await {
            if cond(&row) {
                return row;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_until(addr: SocketAddr, path: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, _, _) = http(addr, "GET", path, None, None).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {status}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn type_chars(c: &mut TestClient, text: &str) {
    for ch in text.chars() {
        let at = c.text().encode_utf16().count() as u32;
        c.session.insert(at, &ch.to_string()).unwrap();
        c.pump_for(Duration::from_millis(2)).await;
    }
    c.pump_until(|c| c.session.pending_count() == 0).await;
}

pub async fn snapshots_in_a_bucket(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let moto = Moto::start().await;
    let proxy = Proxy::start(moto.port).await;
    let mut config = test_config(&db);
    config.compaction.max_ops = 10;
    config.history.checkpoint_ops = 10;
    config.objects = Some(ObjectSettings {
        url: format!("s3://{BUCKET}/{}", unique("t")),
        endpoint: Some(format!("http://127.0.0.1:{}", proxy.port)),
        region: "us-east-1".into(),
        access_key: Some(Secret::new("test-key")),
        secret_key: Some(Secret::new("test-secret")),
        timeout: Duration::from_millis(1000),
    });
    let server = TestServer::start(config.clone()).await;
    let room = unique("bucket");
    let mut ada = TestClient::new(&server.ws_base(), &room, 41);
    ada.connect().await;
    type_chars(&mut ada, "snapshots live in the bucket").await;

    // Compaction writes the object; the row names it and holds no state.
    let (_, inline, key) =
        wait_row(&db, &room, "a snapshot in the bucket", |r| r.2.is_some()).await;
    assert_eq!(inline, 0, "the state is in the bucket, not the row");
    let key = key.unwrap();
    // Read straight from moto, signed, past the proxy.
    let direct = Objects::open(&ObjectSettings {
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        ..config.objects.clone().unwrap()
    })
    .unwrap();
    assert!(!direct.get(&key).await.unwrap().is_empty());
    // History's checkpoints are there too, and the past reads from them.
    let checkpoints = checkpoint_rows(&db, &room).await;
    assert!(!checkpoints.is_empty());
    for (_, inline, ck) in &checkpoints {
        assert_eq!(*inline, 0);
        assert!(!direct.get(ck.as_ref().unwrap()).await.unwrap().is_empty());
    }
    let at = checkpoints[0].0;
    let past = format!("/rooms/{room}/at?seq={at}");
    let (status, _, body) = http(server.addr, "GET", &past, None, None).await;
    assert_eq!(status, 200, "{body}");
    // Typing only appended, so any past text is a prefix of the present one.
    let then = body["text"].as_str().unwrap_or_default().to_owned();
    assert!(
        !then.is_empty() && "snapshots live in the bucket".starts_with(&then),
        "{body}"
    );

    // A restart loads from the bucket, byte-equal.
    let want = ada.session.document().canonical_state().unwrap();
    ada.disconnect();
    server.stop().await;
    let (_, _, key) = wait_row(&db, &room, "the final snapshot", |r| r.2.is_some()).await;
    let server = TestServer::start(config.clone()).await;
    let mut bob = TestClient::new(&server.ws_base(), &room, 42);
    bob.connect().await;
    assert_eq!(bob.session.document().canonical_state().unwrap(), want);

    // The bucket goes away. Ops are still acked: they are durable in the database.
    proxy.set_up(false);
    type_chars(&mut bob, ", and the log in the database").await;
    let text = bob.text();
    status_until(server.addr, "/readyz", 503).await;
    // Reading the room needs its snapshot: a clean 503, never a wrong or empty document.
    let (status, _, body) = http(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/text"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let (seq, _, same) = snapshot_row(&db, &room).await.unwrap();
    assert_eq!(same, key, "no compaction can succeed without the bucket");
    let (status, _, _) = http(server.addr, "GET", &past, None, None).await;
    assert_eq!(status, 503, "the past needs its checkpoint");

    // It comes back: reads, readiness and compaction recover, and a restart is byte-equal.
    proxy.set_up(true);
    status_until(server.addr, "/readyz", 200).await;
    let (status, _, body) = http(server.addr, "GET", &past, None, None).await;
    assert_eq!((status, body["text"].as_str()), (200, Some(then.as_str())));
    let (status, _, body) = http(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/text"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["text"].as_str()),
        (200, Some(text.as_str())),
        "{body}"
    );
    wait_row(&db, &room, "compaction after the outage", |r| {
        r.0 > seq && r.2.is_some() && r.2 != key
    })
    .await;
    let want = bob.session.document().canonical_state().unwrap();
    bob.disconnect();
    server.stop().await;
    let server = TestServer::start(config).await;
    let mut cy = TestClient::new(&server.ws_base(), &room, 43);
    cy.connect().await;
    assert_eq!(cy.session.document().canonical_state().unwrap(), want);
    assert_eq!(cy.text(), text);
    // A replaced snapshot's object is deleted unless a checkpoint still names it.
    let (_, _, latest) = snapshot_row(&db, &room).await.unwrap();
    let key = key.unwrap();
    let named = checkpoint_rows(&db, &room)
        .await
        .iter()
        .any(|c| c.2.as_deref() == Some(key.as_str()));
    let old = direct.get(&key).await;
    if named {
        assert!(old.is_ok(), "{old:?}");
    } else {
        assert!(
            matches!(&old, Err(ServerError::Objects { reason, .. }) if reason == "not found"),
            "{old:?}"
        );
    }
    assert!(!direct.get(&latest.unwrap()).await.unwrap().is_empty());
    // Deleting the room deletes its objects.
    let (status, _, _) = http(
        server.addr,
        "DELETE",
        &format!("/api/rooms/{room}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let gone = direct.get(&key).await;
    assert!(
        matches!(&gone, Err(ServerError::Objects { reason, .. }) if reason == "not found"),
        "{gone:?}"
    );
    cy.disconnect();
    server.stop().await;
}

/// A bucket that does not exist is not ready (startup refuses it, `/readyz` reports it): S3
/// answers a HEAD in a missing bucket like a missing key, so the check lists instead.
pub async fn a_missing_bucket_is_not_ready() {
    let moto = Moto::start().await;
    let settings = |bucket: &str| ObjectSettings {
        url: format!("s3://{bucket}/{}", unique("t")),
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        region: "us-east-1".into(),
        access_key: Some(Secret::new("test-key")),
        secret_key: Some(Secret::new("test-secret")),
        timeout: Duration::from_millis(1000),
    };
    let open = |bucket: &str| {
        concord_server::store::objects::Objects::open(&settings(bucket)).expect("settings")
    };
    assert!(open(BUCKET).ping().await.is_ok(), "the bucket exists");
    let missing = open("no-such-bucket-here").ping().await;
    assert!(missing.is_err(), "a missing bucket looked ready");
    println!("objects: a missing bucket -> {}", missing.unwrap_err());
}
