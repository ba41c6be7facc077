//! The document API against a real server and store: reads match what clients see, a POSTed
//! update reaches connected clients and survives a restart, positional edits against an old
//! `base_seq` land where they were meant while others type, bad bodies change nothing, and a
//! deleted room closes its members (4404) and reads empty.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use concord_engine::doc::{update_v1_to_v2, update_v2_to_v1};
use concord_engine::Document;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::http;
use crate::support::*;

/// One HTTP/1.1 request with a raw body; the status, headers (lower-case names) and body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading a large body, and close.
    let _ = stream.write_all(body).await;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
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
    assert_ne!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked"),
        "bodies here have a length"
    );
    (status, headers, buf[split + 4..].to_vec())
}

/// The durable text and seq, checking the header agrees with the body.
async fn text_of(addr: SocketAddr, room: &str) -> (u64, String) {
    let (status, headers, body) =
        http(addr, "GET", &format!("/api/rooms/{room}/text"), None, None).await;
    assert_eq!(status, 200, "{body}");
    let seq = body["seq"].as_u64().expect("seq");
    assert_eq!(headers.get("concord-seq"), Some(&seq.to_string()));
    (seq, body["text"].as_str().expect("text").to_owned())
}

/// The durable state, v1, as Yjs would read it.
async fn state_of(addr: SocketAddr, room: &str) -> Vec<u8> {
    let (status, _, body) = raw(addr, "GET", &format!("/api/rooms/{room}/state"), b"").await;
    assert_eq!(status, 200);
    body
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

pub async fn document_api(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let mut config = test_config(&db);
    // Small enough to test the 413 without sending megabytes.
    config.limits.max_update_bytes = 64 * 1024;
    let server = TestServer::start(config.clone()).await;
    let (base, addr) = (server.ws_base(), server.addr);
    let room = unique("docapi");
    let api = |p: &str| format!("/api/rooms/{room}/{p}");

    let mut ada = TestClient::new(&base, &room, 21);
    let mut bob = TestClient::new(&base, &room, 22);
    ada.connect().await;
    bob.connect().await;
    ada.session.insert(0, "hello world").unwrap();
    ada.pump_until(|c| c.session.pending_count() == 0).await;

    // Reads match what clients see.
    let (seq1, text) = text_of(addr, &room).await;
    assert_eq!(text, "hello world");
    assert!(seq1 >= 1);
    let v1 = state_of(addr, &room).await;
    let read = Document::from_update(5, &update_v1_to_v2(&v1).unwrap()).unwrap();
    assert_eq!(read.text(), ada.text());
    assert_eq!(
        read.canonical_state().unwrap(),
        ada.session.document().canonical_state().unwrap()
    );
    // What a replica at ada's state vector lacks: nothing.
    let sv = concord_engine::wire::encode_b64(&ada.session.document().state_vector());
    let (status, headers, diff) = raw(
        addr,
        "GET",
        &format!("{}?format=v2&sv={}", api("state"), sv.replace('+', "%2B")),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("concord-seq"), Some(&seq1.to_string()));
    let mut copy = Document::from_update(6, &ada.state()).unwrap();
    assert!(!copy.apply_update(&diff).unwrap().changed);

    // A POSTed update (v1, as Yjs writes it) reaches connected clients, acked once durable.
    let mut backend_doc = Document::from_update(77, &update_v1_to_v2(&v1).unwrap()).unwrap();
    let bang = update_v2_to_v1(&backend_doc.insert(11, "!").unwrap()).unwrap();
    let (status, headers, body) = raw(addr, "POST", &api("update"), &bang).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let seq2 = answer["seq"].as_u64().expect("seq");
    assert!(seq2 > seq1);
    assert_eq!(headers.get("concord-seq"), Some(&seq2.to_string()));
    ada.pump_until(|c| c.text() == "hello world!").await;
    bob.pump_until(|c| c.text() == "hello world!").await;

    // Positional edits against seq1 while others type: bob adds "big " (seq3); the thin client,
    // still at seq1, capitalises "hello" and adds a comma after it.
    bob.session.insert(6, "big ").unwrap();
    bob.pump_until(|c| c.session.pending_count() == 0).await;
    let (status, _, answer) = http(
        addr,
        "POST",
        &api("edits"),
        None,
        Some(&json!({"base_seq": seq1, "edits": [
            {"index": 0, "delete": 5, "insert": "HELLO"},
            {"index": 5, "insert": ","}
        ]})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"], true);
    let want = "HELLO, big world!";
    ada.pump_until(|c| c.text() == want).await;
    bob.pump_until(|c| c.text() == want).await;
    converge(&mut [&mut ada, &mut bob]).await;
    let (head, text) = text_of(addr, &room).await;
    assert_eq!(text, want);
    assert_eq!(head, answer["seq"].as_u64().unwrap());

    // Bad requests get a clear 4xx and change nothing, byte for byte.
    let before = state_of(addr, &room).await;
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for (path, body, status_want, code_want) in [
        (api("update"), garbage.clone(), 400, "bad_request"),
        (format!("{}?format=v2", api("update")), garbage.clone(), 400, "bad_request"),
        (api("update"), Vec::new(), 400, "bad_request"),
        (format!("{}?format=v3", api("update")), bang.clone(), 400, "bad_request"),
        (api("update"), vec![0u8; 64 * 1024 + 1], 413, "too_large"),
        (api("edits"), b"{not json".to_vec(), 400, "bad_request"),
        (api("edits"), br#"{"edits": []}"#.to_vec(), 400, "bad_request"),
        (
            api("edits"),
            json!({"base_seq": head + 100, "edits": [{"index": 0, "insert": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            "base_seq_ahead",
        ),
        (
            api("edits"),
            json!({"base_seq": seq1, "edits": [{"index": 12, "insert": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            "out_of_bounds",
        ),
        (
            api("edits"),
            json!({"base_seq": seq1, "edits": [{"index": 0, "delete": 1, "insert": "x"}, {"index": 11, "delete": 1}]})
                .to_string()
                .into_bytes(),
            400,
            "out_of_bounds",
        ),
        (
            "/api/rooms/bad%20room/update".to_owned(),
            bang.clone(),
            400,
            "bad_request",
        ),
    ] {
        let (status, _, body) = raw(addr, "POST", &path, &body).await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, status_want, "POST {path}: {body}");
        assert_eq!(code(&body), code_want, "POST {path}: {body}");
    }
    let (status, _, _) = raw(addr, "GET", &format!("{}?sv=%21%21", api("state")), b"").await;
    assert_eq!(status, 400);
    // Edits that change nothing are not an op.
    let (status, _, answer) = http(
        addr,
        "POST",
        &api("edits"),
        None,
        Some(&json!({"base_seq": seq1, "edits": [{"index": 3}]})),
    )
    .await;
    assert_eq!((status, answer["applied"].clone()), (200, json!(false)));
    assert_eq!(
        state_of(addr, &room).await,
        before,
        "a refused write changed the room"
    );
    assert_eq!(text_of(addr, &room).await, (head, want.to_owned()));

    // Everything written through the API survives a restart.
    ada.disconnect();
    bob.disconnect();
    server.stop().await;
    let server = TestServer::start(config).await;
    let addr = server.addr;
    assert_eq!(text_of(addr, &room).await, (head, want.to_owned()));
    let mut cy = TestClient::new(&server.ws_base(), &room, 23);
    cy.connect().await;
    assert_eq!(cy.text(), want);

    // Delete: members are closed with 4404, the room reads empty, a second delete is a 404.
    let (status, _, body) = http(addr, "DELETE", &format!("/api/rooms/{room}"), None, None).await;
    assert_eq!(status, 204, "{body}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while cy.pump_for(Duration::from_millis(50)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed after delete"
        );
    }
    assert_eq!(cy.close_code, Some(4404));
    assert_eq!(text_of(addr, &room).await, (0, String::new()));
    let (status, _, body) = http(addr, "DELETE", &format!("/api/rooms/{room}"), None, None).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    server.stop().await;
}
