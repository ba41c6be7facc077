//! The store-independent suite (see `main.rs` for how it is instantiated per store).

use std::time::Duration;

use concord_engine::Document;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn start(backend: Backend) -> Option<(TestServer, String)> {
    let db = database(backend).await?;
    Some((TestServer::start(test_config(&db)).await, db))
}

pub async fn concurrent_typing_at_one_spot_converges(backend: Backend) {
    let Some((server, _db)) = start(backend).await else {
        return;
    };
    let room = unique("same-spot");
    let mut a = TestClient::new(&server.ws_base(), &room, 1);
    let mut b = TestClient::new(&server.ws_base(), &room, 2);
    a.connect().await;
    b.connect().await;
    // Both type at offset 0 without seeing each other first, several rounds.
    for round in 0..20 {
        a.session.insert(0, &format!("a{round} ")).unwrap();
        b.session.insert(0, &format!("b{round} ")).unwrap();
        a.send_pending().await;
        b.send_pending().await;
    }
    converge(&mut [&mut a, &mut b]).await;
    let text = a.text();
    // "a0 ".."a9 " are 3 characters, "a10 ".."a19 " are 4: 70 per client.
    assert_eq!(text.len(), 140, "{text}");
    for round in 0..20 {
        assert!(text.contains(&format!("a{round} ")) && text.contains(&format!("b{round} ")));
    }
    // A third client joining late gets exactly the same bytes.
    let mut c = TestClient::new(&server.ws_base(), &room, 3);
    c.connect().await;
    assert_eq!(c.state(), a.state());
    server.stop().await;
}

pub async fn offline_edits_replay_on_reconnect(backend: Backend) {
    let Some((server, _db)) = start(backend).await else {
        return;
    };
    let room = unique("offline");
    let mut a = TestClient::new(&server.ws_base(), &room, 11);
    let mut b = TestClient::new(&server.ws_base(), &room, 12);
    a.connect().await;
    b.connect().await;
    a.session.insert(0, "shared start. ").unwrap();
    converge(&mut [&mut a, &mut b]).await;

    a.disconnect();
    for i in 0..500u32 {
        let len = a.session.document().len();
        a.session.insert(len, &format!("{}", i % 10)).unwrap();
        if i % 7 == 0 {
            a.session.flush().unwrap();
        }
    }
    a.session.delete(0, 7).unwrap();
    // Meanwhile b keeps typing online.
    b.session.insert(0, "b-online ").unwrap();
    b.pump_until(|c| c.session.pending_count() == 0).await;
    a.session.flush().unwrap();
    assert_eq!(
        a.session.pending_count(),
        1,
        "the offline queue is one merged op"
    );

    a.connect().await;
    converge(&mut [&mut a, &mut b]).await;
    assert!(a.text().starts_with("b-online "), "{}", a.text());
    assert!(a.text().contains("start. 0123456789"));
    server.stop().await;
}

pub async fn restart_keeps_every_room(backend: Backend) {
    let Some((server, db)) = start(backend).await else {
        return;
    };
    let rooms: Vec<String> = (0..3).map(|_| unique("restart")).collect();
    let mut states = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let mut c = TestClient::new(&server.ws_base(), room, 100 + i as u64);
        c.connect().await;
        for k in 0..(50 * (i + 1)) {
            c.session.insert(0, &format!("{k};")).unwrap();
            if k % 5 == 0 {
                c.send_pending().await;
            }
        }
        c.pump_until(|c| c.session.pending_count() == 0).await;
        states.push(c.state());
    }
    server.stop().await;

    let server = TestServer::start(test_config(&db)).await;
    for (i, room) in rooms.iter().enumerate() {
        let mut fresh = TestClient::new(&server.ws_base(), room, 200 + i as u64);
        fresh.connect().await;
        assert_eq!(
            fresh.state(),
            states[i],
            "room {room} byte-equal after restart"
        );
    }
    server.stop().await;
}

pub async fn crash_keeps_every_acked_op(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let server = ChildServer::start(&db, free_port()).await;
    let rooms: Vec<String> = (0..4).map(|_| unique("crash")).collect();
    let mut clients: Vec<TestClient> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| TestClient::new(&server.ws_base(), r, 300 + i as u64))
        .collect();
    for c in clients.iter_mut() {
        c.connect().await;
    }
    // Type and keep ops in flight; kill -9 once plenty have been acked.
    let mut typed = 0u32;
    loop {
        for c in clients.iter_mut() {
            let len = c.session.document().len();
            c.session.insert(len, "x").unwrap();
            c.pump_for(Duration::from_millis(1)).await;
        }
        typed += 1;
        let acked: usize = clients.iter().map(|c| c.acked.len()).sum();
        if acked >= 200 || typed > 5_000 {
            break;
        }
    }
    let in_flight: usize = clients.iter().map(|c| c.session.pending_count()).sum();
    server.kill9();
    let acked: usize = clients.iter().map(|c| c.acked.len()).sum();
    assert!(acked >= 200, "only {acked} acks before the crash");
    eprintln!("crash: {acked} acked ops, {in_flight} in flight at kill -9");

    let server = ChildServer::start(&db, free_port()).await;
    for (i, c) in clients.iter().enumerate() {
        let mut fresh = TestClient::new(&server.ws_base(), &c.room, 400 + i as u64);
        fresh.connect().await;
        let mut doc = Document::from_update(1, &fresh.state()).unwrap();
        for (id, update) in &c.sent {
            if c.acked.contains(id) {
                let applied = doc.apply_update(update).unwrap();
                assert!(!applied.changed, "acked op {id} lost in the crash");
            }
        }
    }
    // And the clients themselves reconnect, replay what was in flight, and converge.
    let base = server.ws_base();
    for c in clients.iter_mut() {
        c.disconnect();
        c.set_base(&base);
        c.connect().await;
        c.pump_until(|c| c.session.pending_count() == 0).await;
        let mut fresh = TestClient::new(&base, &c.room, 500);
        fresh.connect().await;
        assert_eq!(fresh.state(), c.state());
    }
}

/// Types `n` one-character ops into `room` and waits until all are acked; returns the client.
async fn type_ops(base: &str, room: &str, client: u64, n: u32) -> TestClient {
    let mut c = TestClient::new(base, room, client);
    c.connect().await;
    for k in 0..n {
        let len = c.session.document().len();
        c.session.insert(len, &format!("{}", k % 10)).unwrap();
        if k % 3 == 0 {
            c.send_pending().await;
            c.pump_for(Duration::from_millis(0)).await;
        }
    }
    c.pump_until(|c| c.session.pending_count() == 0).await;
    c
}

/// Compaction bounds what a load reads (snapshot + a short tail) while the ops stay as
/// history, with checkpoints; a restart is byte-equal.
pub async fn compaction_bounds_the_log(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let mut config = test_config(&db);
    config.history.checkpoint_ops = 250;
    let server = TestServer::start(config).await;
    let room = unique("compact");
    let c = type_ops(&server.ws_base(), &room, 600, 3_000).await;
    let expected = c.state();

    // Compaction runs every 200 ops or 5 s: wait for the log to be folded.
    let store = concord_server::store::connect(&db).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let loaded = store.load(&room).await.unwrap();
        if loaded.snapshot.is_some() && loaded.ops.len() < 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never compacted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = store.head_seq(&room).await.unwrap();
    assert!(head >= 1_000, "only {head} ops");
    assert_eq!(count_ops(&db, &room).await, head as i64, "history is kept");
    assert_eq!(store.history_floor(&room).await.unwrap(), 0);
    let past = store.past(&room, head).await.unwrap();
    assert!(past.checkpoint.is_some(), "a checkpoint every 1000 ops");
    assert!(
        past.ops.len() < 1_000,
        "{} ops after the checkpoint",
        past.ops.len()
    );
    server.stop().await;

    let server = TestServer::start(test_config(&db)).await;
    let mut fresh = TestClient::new(&server.ws_base(), &room, 601);
    fresh.connect().await;
    assert_eq!(
        fresh.state(),
        expected,
        "reload after compaction is byte-equal"
    );
    assert!(
        store.load(&room).await.unwrap().ops.is_empty(),
        "shutdown leaves a snapshot, no tail"
    );
    server.stop().await;

    // With a retention window, history older than it is folded away up to a checkpoint.
    let mut config = test_config(&db);
    config.history.retention_ms = Some(1);
    config.history.checkpoint_ops = 100;
    let server = TestServer::start(config).await;
    let pruned = unique("retention");
    let c = type_ops(&server.ws_base(), &pruned, 602, 600).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while store.history_floor(&pruned).await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never folded history"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let floor = store.history_floor(&pruned).await.unwrap();
    let head = store.head_seq(&pruned).await.unwrap();
    assert_eq!(
        count_ops(&db, &pruned).await,
        (head - floor) as i64,
        "ops up to the floor dropped"
    );
    let mut fresh = TestClient::new(&server.ws_base(), &pruned, 603);
    fresh.connect().await;
    assert_eq!(fresh.state(), c.state(), "nothing current was lost");
    server.stop().await;
}

async fn count_ops(db: &str, room: &str) -> i64 {
    if db.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(db).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM ops WHERE room_id = ?")
            .bind(room)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(db).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM ops WHERE room_id = $1")
            .bind(room)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

pub async fn presence_is_relayed_and_left_on_close(backend: Backend) {
    let Some((server, _db)) = start(backend).await else {
        return;
    };
    let room = unique("presence");
    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut ids = Vec::new();
    for ws in [&mut a, &mut b] {
        let first = next_text(ws).await;
        assert!(first.starts_with(r#"{"t":"sync""#), "{first}");
        ids.push(your_presence_id(ws).await);
    }
    assert_ne!(ids[0], ids[1]);
    // Claiming to be someone else changes nothing: the server names the sender.
    a.send(Message::Text(
        r##"{"t":"presence","user":"ana","cursor":3,"color":"#2DD4BF"}"##.into(),
    ))
    .await
    .unwrap();
    let seen = next_text(&mut b).await;
    let ana = &ids[0];
    assert_eq!(
        seen,
        format!(r##"{{"t":"presence","user":"{ana}","cursor":3,"color":"#2DD4BF"}}"##)
    );
    a.close(None).await.unwrap();
    let left = next_text(&mut b).await;
    assert_eq!(
        left,
        format!(r##"{{"t":"presence","user":"{ana}","color":"#2DD4BF","left":true}}"##)
    );
    server.stop().await;
}

pub async fn routes_and_upgrade_errors(backend: Backend) {
    let Some((server, _db)) = start(backend).await else {
        return;
    };
    assert_eq!(http_get_status(server.addr, "/healthz").await.unwrap(), 200);
    assert_eq!(http_get_status(server.addr, "/").await.unwrap(), 200);
    assert_eq!(
        http_get_status(server.addr, "/rooms/demo/ws")
            .await
            .unwrap(),
        400,
        "not an upgrade"
    );
    assert_eq!(
        http_get_status(server.addr, "/rooms/a%20b/ws")
            .await
            .unwrap(),
        400,
        "bad room id"
    );
    let long = "x".repeat(200);
    assert_eq!(
        http_get_status(server.addr, &format!("/rooms/{long}/ws"))
            .await
            .unwrap(),
        400
    );
    let bad_sv = format!("ws://{}/rooms/ok/ws?sv=%FF%FF", server.addr);
    assert!(
        tokio_tungstenite::connect_async(bad_sv).await.is_err(),
        "bad sv is refused"
    );
    server.stop().await;
}

/// Reads the frame that follows `sync`: the presence id the server gave this connection.
pub async fn your_presence_id(ws: &mut Ws) -> String {
    let frame = next_text(ws).await;
    let v: serde_json::Value = serde_json::from_str(&frame).expect("json");
    assert!(v["t"] == "presence" && v["you"] == true, "{frame}");
    let id = v["user"].as_str().expect("user").to_owned();
    assert!(id.starts_with("c-"), "{id}");
    id
}

pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Close(f) => panic!("socket closed by the server: {f:?}"),
            _ => {}
        }
    }
}

/// Fan-out does not wait for durability: an update reaches the other clients while its commit
/// is stuck, the server is killed (-9) before the commit lands, and its sender never comes
/// back. The update is not lost: the bystander that received it holds it, and two-way sync at
/// its reconnect gives it back to the room, where it becomes durable.
pub async fn broadcast_before_commit_survives_a_crash(backend: Backend) {
    use sqlx::{Connection, Executor};
    let Some(db) = database(backend).await else {
        return;
    };
    // Bounds far beyond the test, so the stuck commit is still waiting at the kill.
    let env = [
        ("COMMIT_TIMEOUT_MS", "60000"),
        ("STATEMENT_TIMEOUT_MS", "60000"),
    ];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let room = unique("early");
    let mut sender = TestClient::new(&server.ws_base(), &room, 1);
    let mut bystander = TestClient::new(&server.ws_base(), &room, 2);
    sender.connect().await;
    bystander.connect().await;
    sender.session.insert(0, "durable ").unwrap();
    sender.pump_until(|c| c.session.pending_count() == 0).await;
    bystander.pump_until(|c| c.text() == "durable ").await;

    // Stall every commit: the store's write lock is held elsewhere.
    let holder: Box<dyn std::any::Any> = match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db).await.expect("sqlite");
            conn.execute(sqlx::raw_sql("BEGIN IMMEDIATE"))
                .await
                .expect("BEGIN IMMEDIATE");
            Box::new(conn)
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db).await.expect("pg");
            conn.execute(sqlx::raw_sql("BEGIN; LOCK TABLE ops IN EXCLUSIVE MODE"))
                .await
                .expect("LOCK TABLE");
            Box::new(conn)
        }
    };
    let len = sender.session.document().len();
    sender.session.insert(len, "broadcast first").unwrap();
    sender.send_pending().await;
    bystander
        .pump_until(|c| c.text() == "durable broadcast first")
        .await;
    assert_eq!(
        sender.session.pending_count(),
        1,
        "the bystander saw the update before it was acked"
    );
    server.kill9();
    drop(holder);
    drop(sender); // never reconnects

    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let mut fresh = TestClient::new(&server.ws_base(), &room, 3);
    fresh.connect().await;
    assert_eq!(fresh.text(), "durable ", "the stuck commit did not land");
    drop(fresh);

    // The bystander reconnects: its sync hands the room what it lacks. One more edit of its
    // own, acked after that sync (same connection, committed in order), marks it durable.
    bystander.disconnect();
    bystander.set_base(&server.ws_base());
    bystander.connect().await;
    let len = bystander.session.document().len();
    bystander.session.insert(len, "!").unwrap();
    bystander
        .pump_until(|c| c.session.pending_count() == 0)
        .await;
    server.kill9();

    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let mut fresh = TestClient::new(&server.ws_base(), &room, 4);
    fresh.connect().await;
    assert_eq!(fresh.text(), "durable broadcast first!");
    assert_eq!(fresh.state(), bystander.state());
}

/// A crowd joining cold rooms at once (every client reconnecting after a restart) all get in:
/// room loads wait their turn in the registry instead of on the store's pool, whose acquire
/// timeout (here 100 ms) is meant for a stalled store. Without the queue, from a few to most
/// of these 1,200 joins (600 rooms) were answered `unavailable`. SQLite only: Postgres's pool
/// of 16 took this crowd either way at a 400 ms timeout.
pub async fn a_crowd_joining_cold_rooms_all_get_in() {
    let Some(db) = database(Backend::Sqlite).await else {
        return;
    };
    let mut config = test_config(&db);
    // Short, so the crowd outlasts it.
    config.statement_timeout = Duration::from_millis(100);
    // One address opens them all; this test is about loads, not the per-address limit.
    config.auth.limits.connect_burst = 10_000.0;
    config.auth.limits.connect_per_sec = 10_000.0;
    let server = TestServer::start(config).await;
    let prefix = unique("crowd");
    let joins = (0..1200).map(|i| {
        let url = format!("{}/rooms/{prefix}-{}/ws", server.ws_base(), i % 600);
        tokio::spawn(async move {
            let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect in time")
                .expect("connect");
            let first = next_text(&mut ws).await;
            let v: serde_json::Value = serde_json::from_str(&first).expect("json");
            (v["t"] == "sync").then_some(()).ok_or(first)
        })
    });
    let mut refused = Vec::new();
    for join in futures_util::future::join_all(joins).await {
        if let Err(first) = join.expect("client task") {
            refused.push(first);
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 1200 joins refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    server.stop().await;
}
