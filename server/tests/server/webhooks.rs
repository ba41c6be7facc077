//! Webhooks against a real receiver on loopback: it fails the first deliveries, the server is
//! killed (-9) between two typing phases, and still every change arrives (the delivered
//! `document.changed` ranges cover every seq), every signature verifies, a burst is coalesced,
//! a long burst still gets an event within the maximum delay, and an event with no failure
//! arrives the debounce after the last change, not much later.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_server::webhooks::signature;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::auth::http;
use crate::support::*;

const SECRET: &str = "a webhook secret for the tests";
const DEBOUNCE_MS: i64 = 300;
const MAX_DELAY_MS: i64 = 1000;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at_ms: i64,
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
    raw: Vec<u8>,
}

/// A minimal HTTP/1.1 receiver: answers 500 to the first `fail_first` requests, then 204.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let hits = hits.clone();
            async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (hits, seen) = (hits.clone(), seen.clone());
                    tokio::spawn(async move {
                        // One request per connection (answered with Connection: close).
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        let (head_end, length) = loop {
                            let Ok(Ok(n)) = tokio::time::timeout(
                                Duration::from_secs(5),
                                socket.read(&mut chunk),
                            )
                            .await
                            else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                break (end + 4, length);
                            }
                        };
                        while buf.len() < head_end + length {
                            let Ok(n) = socket.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let headers = head
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        let raw = buf[head_end..head_end + length].to_vec();
                        let status = if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                            500
                        } else {
                            204
                        };
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = socket.write_all(answer.as_bytes()).await;
                        hits.lock().unwrap().push(Hit {
                            at_ms: concord_server::store::now_unix_ms(),
                            status,
                            headers,
                            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                            raw,
                        });
                    });
                }
            }
        });
        Receiver { addr, hits, task }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Polls until `cond` holds over the hits so far (bounded by [`DEADLINE`]).
    async fn wait_for(&self, what: &str, cond: impl Fn(&[Hit]) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !cond(&self.hits()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhooks: {what} not seen in time; hits: {:#?}",
                self.hits()
                    .iter()
                    .map(|h| (h.status, h.body.to_string()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok_changed(hits: &[Hit]) -> Vec<&Hit> {
    hits.iter()
        .filter(|h| h.status == 204 && h.body["type"] == "document.changed")
        .collect()
}

fn unix_ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn type_chars(c: &mut TestClient, n: usize, gap: Duration) {
    for i in 0..n {
        let at = c.text().encode_utf16().count() as u32;
        c.session
            .insert(at, &char::from(b'a' + (i % 26) as u8).to_string())
            .unwrap();
        c.pump_for(gap).await;
    }
    c.pump_until(|c| c.session.pending_count() == 0).await;
}

pub async fn every_change_arrives_signed(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let receiver = Receiver::start(3).await;
    let url = format!("http://{}/hooks/concord", receiver.addr);
    let env = [
        ("WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_DEBOUNCE_MS", "300"),
        ("WEBHOOK_MAX_DELAY_MS", "1000"),
        ("WEBHOOK_TIMEOUT_MS", "2000"),
        ("WEBHOOK_RETRY_MIN_MS", "100"),
        ("WEBHOOK_RETRY_MAX_MS", "400"),
        ("ROOM_IDLE_SECS", "1"),
    ];
    let port = free_port();
    let server = ChildServer::start_env(&db, &env, port).await;
    let room = unique("hooks");

    // Phase 1: a burst, while the receiver fails; then kill -9.
    let mut ada = TestClient::new(&server.ws_base(), &room, 31);
    ada.connect().await;
    type_chars(&mut ada, 20, Duration::from_millis(5)).await;
    receiver
        .wait_for("the first failures", |h| h.iter().any(|h| h.status == 500))
        .await;
    ada.disconnect();
    server.kill9();

    // Phase 2, after a restart: the outbox is still there and the failures are over.
    let server = ChildServer::start_env(&db, &env, port).await;
    receiver
        .wait_for("a delivery after the failures", |h| {
            h.iter().filter(|h| h.status == 500).count() == 3 && h.iter().any(|h| h.status == 204)
        })
        .await;
    let mut bob = TestClient::new(&server.ws_base(), &room, 32);
    bob.connect().await;
    // Longer than the maximum delay, a character every 50 ms: an event arrives meanwhile.
    let typing_from = concord_server::store::now_unix_ms();
    type_chars(&mut bob, 30, Duration::from_millis(50)).await;
    let typing_until = concord_server::store::now_unix_ms();
    assert!(typing_until - typing_from > MAX_DELAY_MS + DEBOUNCE_MS);
    bob.disconnect();
    let (_, _, text) = http(
        server.addr,
        "GET",
        &format!("/api/rooms/{room}/text"),
        None,
        None,
    )
    .await;
    let head = text["seq"].as_i64().expect("seq");
    assert!(head >= 20, "{text}");
    receiver
        .wait_for("document.changed up to the head", |h| {
            ok_changed(h).iter().any(|h| h.body["seq"] == head)
        })
        .await;
    receiver
        .wait_for("room.unloaded", |h| {
            h.iter()
                .any(|h| h.status == 204 && h.body["type"] == "room.unloaded")
        })
        .await;
    let hits = receiver.hits();

    // Every request is signed, with its id in a header.
    for h in &hits {
        let sig = h.headers.get("concord-signature").expect("a signature");
        let t: u64 = sig
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("t=");
        assert_eq!(sig, &signature(SECRET.as_bytes(), t, &h.raw), "{}", h.body);
        assert_eq!(
            h.headers.get("concord-event-id").map(String::as_str),
            h.body["id"].as_str()
        );
        assert_eq!(h.body["room"], room.as_str());
    }
    // What failed was delivered later (a change event grown since, a room event by its
    // latest occurrence).
    for failed in hits.iter().filter(|h| h.status == 500) {
        assert!(
            hits.iter().any(|h| h.status == 204
                && h.at_ms >= failed.at_ms
                && h.body["type"] == failed.body["type"]),
            "failed event {} never delivered",
            failed.body
        );
    }
    // The delivered change events cover every seq from 1 to the head, in order.
    let changed = ok_changed(&hits);
    let mut covered = 0;
    for h in &changed {
        let (first, last) = (
            h.body["first_seq"].as_i64().unwrap(),
            h.body["seq"].as_i64().unwrap(),
        );
        assert!(
            first <= covered + 1,
            "a gap before {first}: {:?}",
            changed
                .iter()
                .map(|h| h.body.to_string())
                .collect::<Vec<_>>()
        );
        covered = covered.max(last);
    }
    assert_eq!(covered, head);
    // Coalesced: far fewer calls than changes.
    assert!(
        changed.len() * 3 <= head as usize,
        "{} change events for {head} ops",
        changed.len()
    );
    // At least one per maximum delay: one arrived while bob was still typing.
    assert!(
        changed
            .iter()
            .any(|h| h.at_ms > typing_from && h.at_ms < typing_until),
        "no change event during {} ms of typing",
        typing_until - typing_from
    );
    // With no failure in the way, the last event comes at most the debounce after the last
    // change (sooner when the maximum delay since its first change came first).
    let last = changed.iter().find(|h| h.body["seq"] == head).unwrap();
    let late = last.at_ms - unix_ms(last.body["changed_at"].as_str().unwrap());
    eprintln!(
        "webhooks: last change delivered {late} ms after its commit (debounce {DEBOUNCE_MS} ms)"
    );
    assert!(late <= DEBOUNCE_MS + 700, "late by {late} ms");
    assert!(hits
        .iter()
        .any(|h| h.status == 204 && h.body["type"] == "room.loaded"));
    // Delivered means deleted: nothing is left waiting.
    drop(server);
}
