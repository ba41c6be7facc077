//! Budgets on what the instance holds, whoever asks: compaction folds a long tail in steps of
//! bounded bytes, loaded rooms are capped (idle ones make way, the rest are refused with a
//! typed error), and a frame is held to its kind's size before it is parsed. Each test replays
//! an attack of the resources audit (issue 29: C1, H4, H7), scaled to run in seconds.

use std::time::Duration;

use concord_engine::Document;
use concord_server::store::{self, Append, OpMeta};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::suite::next_text;
use crate::support::*;

/// C1: a room ~3 MiB behind its snapshot, compacted with folds of at most 256 KiB, moves its
/// snapshot forward a step at a time (each step's ops within the bound plus one op), ends with
/// the same state as one whole fold, and every step's fold is its own snapshot.
pub async fn a_long_tail_is_folded_in_steps(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let store = store::connect(&db).await.expect("store");
    let room = unique("long-tail");
    // 96 updates of ~32 KiB each: one writer pasting, as a client would.
    let mut doc = Document::new(7);
    let mut ops = Vec::new();
    for i in 0..96u32 {
        let chunk: String =
            std::iter::repeat_n(char::from(b'a' + (i % 26) as u8), 32 * 1024).collect();
        ops.push(doc.insert(0, &chunk).expect("insert"));
    }
    let op_bytes = ops[0].len();
    for batch in ops.chunks(16) {
        store
            .append(&[Append {
                room: room.clone(),
                updates: batch.to_vec(),
                meta: vec![OpMeta::default(); batch.len()],
            }])
            .await
            .expect("append");
    }
    let max_bytes = 256 * 1024;
    let folds = store::Folds::new(concord_server::cpu::CpuPool::start(1, 16), 1, max_bytes);
    let history = store::history::HistoryPolicy::default();
    let mut steps = Vec::new();
    let mut last = 0;
    while let Some((_, seq)) = store
        .compact(&room, &history, &folds)
        .await
        .expect("compact")
    {
        assert!(seq > last, "each step moves the snapshot forward");
        steps.push(seq - last);
        last = seq;
        assert!(steps.len() <= 96, "compaction does not end");
    }
    println!(
        "resources[{backend:?}]: a {} KiB tail in {} folds of at most {} KiB (ops of {} bytes): steps {steps:?}",
        ops.iter().map(Vec::len).sum::<usize>() / 1024,
        steps.len(),
        max_bytes / 1024,
        op_bytes,
    );
    assert_eq!(last, 96, "the whole log is folded");
    let per_step = (max_bytes / op_bytes + 1) as u64;
    assert!(steps.iter().all(|&n| n <= per_step), "{steps:?}");
    assert!(steps.len() >= 96 / per_step as usize, "{steps:?}");
    let loaded = store.load(&room).await.expect("load");
    assert_eq!((loaded.snapshot_seq, loaded.ops.len()), (96, 0));
    let folded = Document::from_update(9, &loaded.snapshot.expect("snapshot")).expect("decodes");
    assert_eq!(
        folded.text(),
        doc.text(),
        "the steps add up to the document"
    );
}

/// H4: rooms loaded at once are capped per instance. At the cap a new room is refused with
/// `overloaded` (close 1013, or 503 with `Retry-After` over REST) and rooms without members
/// unload at once, so the refused client's retry gets in; rooms with members stay.
pub async fn loaded_rooms_are_capped() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [("MAX_ROOMS", "8"), ("ROOM_IDLE_SECS", "3600")];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let base = server.ws_base();
    let mut held = Vec::new();
    for i in 0..8 {
        let url = format!("{base}/rooms/{}/ws", unique(&format!("cap-{i}")));
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
        held.push(ws);
    }
    let (code, close) = refused(&format!("{base}/rooms/{}/ws", unique("cap-over"))).await;
    assert_eq!(code.as_deref(), Some("overloaded"));
    assert_eq!(close, Some(1013));
    let edits = serde_json::json!({"base_seq": 0, "edits": [{"index": 0, "insert": "x"}]});
    let path = format!("/api/rooms/{}/edits", unique("cap-rest"));
    let (status, headers, body) =
        crate::auth::http(server.addr, "POST", &path, None, Some(&edits)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    // Half the members leave: their rooms make way for the next room at once, not after
    // ROOM_IDLE_SECS. The retry is a client's reconnect, bounded.
    for mut ws in held.drain(4..) {
        ws.close(None).await.expect("close");
    }
    let url = format!("{base}/rooms/{}/ws", unique("cap-retry"));
    let mut tries = 0;
    let mut ws = loop {
        tries += 1;
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let first = next_text(&mut ws).await;
        if first.starts_with(r#"{"t":"sync""#) {
            break ws;
        }
        assert!(first.contains("overloaded"), "{first}");
        assert!(tries < 50, "idle rooms never made way");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "resources[rooms]: at the cap of 8, a new room got in on try {tries} after 4 rooms emptied"
    );
    // The rooms still held were not unloaded: their members still edit through them.
    let mut doc = Document::new(11);
    let update = doc.insert(0, "still here").expect("insert");
    let frame = concord_engine::wire::ClientMessage::Op {
        id: Some("k-1".into()),
        update,
        base: None,
    }
    .to_json();
    held[0]
        .send(Message::Text(frame.into()))
        .await
        .expect("send");
    while !next_text(&mut held[0]).await.contains(r#""id":"k-1""#) {}
    ws.close(None).await.ok();
}

/// What a refused join heard: its error code and close code.
async fn refused(url: &str) -> (Option<String>, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(DEADLINE, ws.next()).await {
        match msg {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                if v["t"] == "error" {
                    code = v["code"].as_str().map(str::to_owned);
                }
            }
            Ok(Message::Close(frame)) => return (code, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (code, None)
}

/// H7: four presence frames of 12 MiB at once (each under `MAX_FRAME_BYTES`) are refused as
/// `too_large` for their kind's bound before their body is parsed. Parsed first, each cost
/// about 23 times its size (a 16 MiB frame +373 MiB; four at once a 1.45 GB high-water mark).
pub async fn oversized_presence_is_refused_before_parsing() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = ChildServer::start_env(&db, &[], free_port()).await;
    let base = server.ws_base();
    let before = server.hwm_kib();
    let cursor = format!("[{}0]", "{\"a\":[1,2,3]},".repeat(12 * 1024 * 1024 / 14));
    let frame = format!(r#"{{"t":"presence","user":"x","cursor":{cursor}}}"#);
    let mut sockets = Vec::new();
    for i in 0..4 {
        let url = format!("{base}/rooms/{}/ws", unique(&format!("big-presence-{i}")));
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
        sockets.push(ws);
    }
    let sent = futures_util::future::join_all(sockets.iter_mut().map(|ws| {
        let frame = frame.clone();
        async move {
            ws.send(Message::Text(frame.into())).await.expect("send");
            loop {
                let text = next_text(ws).await;
                if text.contains(r#""t":"error""#) {
                    return text;
                }
            }
        }
    }))
    .await;
    let growth_mib = server.hwm_kib().saturating_sub(before) / 1024;
    println!(
        "resources[presence]: 4 presence frames of {} MiB at once: {:?}; server high-water mark +{growth_mib} MiB",
        frame.len() >> 20,
        sent.iter().map(|t| t.contains("too_large")).collect::<Vec<_>>()
    );
    for text in &sent {
        assert!(text.contains(r#""code":"too_large""#), "{text}");
    }
    // The frames themselves (and their reads) are 48 MiB; the parse was 23 times that.
    assert!(
        growth_mib < 400,
        "presence frames were parsed: +{growth_mib} MiB"
    );
}

/// M6: with auth off (the `npm start` default), a page of another site may not open a room
/// socket or change a document, a name that merely resolves to the server (DNS rebinding) is
/// refused, and state-changing requests in the content types a page may send cross-site
/// unasked are refused; pages of this machine (a dev server on another port) and clients that
/// are not browsers (no `Origin`) carry on.
pub async fn cross_site_pages_and_rebound_names_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = TestServer::start(test_config(&db)).await;
    let url = format!("{}/yjs/{}", server.ws_base(), unique("guard"));
    let upgrade = |origin: Option<&str>| {
        let mut request = url.as_str().into_client_request().expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(request)
    };
    assert!(upgrade(None).await.is_ok(), "no Origin: not a browser");
    assert!(
        upgrade(Some("http://localhost:5173")).await.is_ok(),
        "a dev server"
    );
    match upgrade(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!(
            "a cross-site page opened a room socket: {:?}",
            other.map(|_| ())
        ),
    }
    let raw = |head: String| async move {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    };
    let path = format!("/api/rooms/{}/edits", unique("guard"));
    let body = r#"{"base_seq":0,"edits":[{"index":0,"insert":"x"}]}"#;
    let post = |host: &str, origin: &str, content_type: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let here = server.addr.to_string();
    let own = format!("http://{here}");
    let rebound = raw(post(
        "evil.example:8080",
        "http://evil.example:8080",
        "application/json",
    ))
    .await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("host_not_allowed"), "{rebound}");
    let cross = raw(post(&here, "https://evil.example", "application/json")).await;
    assert!(cross.contains("origin_not_allowed"), "{cross}");
    let plain = raw(post(&here, &own, "text/plain;charset=UTF-8")).await;
    assert!(plain.starts_with("HTTP/1.1 415"), "{plain}");
    let ok = raw(post(&here, &own, "application/json")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let health =
        raw("GET /healthz HTTP/1.1\r\nHost: lb.internal\r\nConnection: close\r\n\r\n".into()).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    server.stop().await;
}

/// Behind a reverse proxy every client shares the proxy's address: per-address limits then
/// lump them together (898 of 1,000 clients reconnecting through one address got 429). With
/// `TRUSTED_PROXIES` the limits key on the address the proxy forwarded; a client that is not
/// a trusted proxy cannot pick its own address by sending the header.
pub async fn per_address_limits_see_through_trusted_proxies() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let connect = |server: &TestServer, forwarded: &str| {
        let url = format!("{}/yjs/{}", server.ws_base(), unique("proxied"));
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("x-forwarded-for", forwarded.parse().expect("header"));
        async move {
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("connect: {e}"),
            }
        }
    };
    for trusted in [false, true] {
        let mut config = test_config(&db);
        config.auth.limits.connect_burst = 3.0;
        config.auth.limits.connect_per_sec = 0.01;
        if trusted {
            config.trusted_proxies =
                concord_server::proxy::TrustedProxies::parse("127.0.0.1").expect("list");
        }
        let server = TestServer::start(config).await;
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(connect(&server, "198.51.100.1, 203.0.113.1").await);
        }
        let other = connect(&server, "203.0.113.2").await;
        println!("resources[proxy]: trusted={trusted}: one client x4 {first:?}, another {other}");
        assert_eq!(
            first,
            [101, 101, 101, 429],
            "the fourth attempt is over the burst"
        );
        // Trusted: another client behind the proxy has its own budget. Not trusted: the header
        // is ignored and everyone is the proxy.
        assert_eq!(other, if trusted { 101 } else { 429 });
        server.stop().await;
    }
}

/// M2: a y-websocket connection that names another client's awareness id (every member sees
/// it) may not move, hide or rename that client's cursor: a connection speaks only for an
/// awareness id no one else in the room holds. With auth on, the name inside a Yjs state is
/// the authenticated one.
pub async fn awareness_ids_cannot_be_taken_over() {
    use concord_engine::yjs;
    use yrs::block::ClientID;
    use yrs::sync::awareness::AwarenessUpdateEntry;
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = TestServer::start(test_config(&db)).await;
    let url = format!("{}/yjs/{}", server.ws_base(), unique("awareness"));
    let open = || async {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        ws
    };
    let say = |client: u64, clock: u32, json: &str| {
        let entry = (
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: json.into(),
            },
        );
        Message::Binary(yjs::awareness_message([&entry]).into())
    };
    let mut observer = open().await;
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut alice = open().await;
    alice
        .send(say(
            1111,
            1,
            r#"{"user":{"name":"Alice"},"cursor":{"anchor":1}}"#,
        ))
        .await
        .expect("send");
    read_awareness_until(&mut observer, &mut seen, 1111).await;
    let mut mallory = open().await;
    for (clock, json) in [(5, "null"), (6, r#"{"user":{"name":"CEO (trust me)"}}"#)] {
        mallory.send(say(1111, clock, json)).await.expect("send");
    }
    // Its own id afterwards: once the observer sees it, everything before it was handled.
    mallory
        .send(say(2222, 1, r#"{"user":{"name":"Mallory"}}"#))
        .await
        .expect("send");
    read_awareness_until(&mut observer, &mut seen, 2222).await;
    println!("resources[awareness]: the observer saw {seen:?}");
    let alices: Vec<&String> = seen
        .iter()
        .filter(|(c, _)| *c == 1111)
        .map(|(_, j)| j)
        .collect();
    assert!(!alices.is_empty(), "Alice's cursor was relayed");
    assert!(
        alices.iter().all(|j| j.contains("Alice")),
        "someone else spoke for Alice's awareness id: {alices:?}"
    );
    drop((alice, mallory));
    server.stop().await;
}

/// Reads awareness entries (client id, state) from a y-websocket socket into `seen` until one
/// of client `id` has come.
async fn read_awareness_until(observer: &mut Ws, seen: &mut Vec<(u64, String)>, id: u64) {
    use concord_engine::yjs::{self, YjsRequest};
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !seen.iter().any(|(c, _)| *c == id) {
        let frame = tokio::time::timeout_at(deadline, observer.next())
            .await
            .unwrap_or_else(|_| panic!("awareness of {id} never came; saw {seen:?}"))
            .expect("open")
            .expect("frame");
        let Message::Binary(bytes) = frame else {
            continue;
        };
        if let Ok(YjsRequest::Awareness(update)) = yjs::decode(&bytes, &Default::default()) {
            for (client, entry) in update.clients.iter() {
                seen.push((client.get(), entry.json.to_string()));
            }
        }
    }
}

/// H6: named versions are full copies of the document: a room keeps at most 100, and the
/// next save is refused (409 `too_many_versions`), nothing stored.
pub async fn versions_per_room_are_capped() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = TestServer::start(test_config(&db)).await;
    let room = unique("versions");
    let edits = serde_json::json!({"base_seq": 0, "edits": [{"index": 0, "insert": "v"}]});
    let (status, _, body) = crate::auth::http(
        server.addr,
        "POST",
        &format!("/api/rooms/{room}/edits"),
        None,
        Some(&edits),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/rooms/{room}/versions");
    let cap = concord_server::api::history::MAX_VERSIONS_PER_ROOM;
    for i in 0..cap {
        let label = serde_json::json!({"label": format!("v{i}")});
        let (status, _, body) =
            crate::auth::http(server.addr, "POST", &path, None, Some(&label)).await;
        assert_eq!(status, 201, "save {i}: {body}");
    }
    let label = serde_json::json!({"label": "one too many"});
    let (status, _, body) = crate::auth::http(server.addr, "POST", &path, None, Some(&label)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_versions"))
    );
    let (_, _, list) = crate::auth::http(server.addr, "GET", &path, None, None).await;
    println!(
        "resources[versions]: {cap} saved, the next refused; listed {}",
        list.as_array().map_or(0, Vec::len)
    );
    assert_eq!(list.as_array().map(Vec::len), Some(cap));
    server.stop().await;
}

/// A frame over twice `MAX_FRAME_BYTES` is not buffered: the socket is closed with 1009 (too
/// big), so the client knows why, instead of dropped (1006).
pub async fn a_frame_over_the_hard_bound_closes_with_1009() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let mut config = test_config(&db);
    config.limits.max_frame_bytes = 64 * 1024;
    let server = TestServer::start(config).await;
    let url = format!("{}/rooms/{}/ws", server.ws_base(), unique("hard-bound"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
    let huge = format!(
        r#"{{"t":"op","data":{{"update":"{}"}}}}"#,
        "A".repeat(200 * 1024)
    );
    let _ = ws.send(Message::Text(huge.into())).await;
    let mut close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(DEADLINE, ws.next()).await {
        match msg {
            Ok(Message::Close(frame)) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(close, Some(1009));
    server.stop().await;
}
