//! The fault and abuse suite, short form: each attack runs against the `concord` binary on loopback,
//! bounded in size and time, while a prober measures `/healthz` latency and a bystander in
//! another room measures its ack latency. Figures are printed (`cargo test --release abuse --
//! --nocapture` shows them; `docs/reliability.md` records a run); assertions are on outcomes
//! (the attacker is cut off, the bystander's edits are acked, nothing acked is lost) with
//! latency bounds loose enough for a loaded CI machine yet far below the freezes they guard
//! against (minutes, before these budgets).
//!
//! The soak form runs the same attacks larger: `CONCORD_ABUSE_SCALE=10 cargo test --release -p
//! concord-server --test server abuse -- --nocapture --test-threads=1`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_engine::wire::{encode_b64, ClientMessage};
use concord_engine::Document;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::suite::{next_text, your_presence_id};
use crate::support::*;

/// How much larger than the short form the attacks are (`CONCORD_ABUSE_SCALE`, default 1).
fn scale() -> usize {
    std::env::var("CONCORD_ABUSE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .clamp(1, 100)
}

/// Latencies seen while an attack ran.
#[derive(Debug, Default)]
struct Probe {
    healthz: Vec<Duration>,
    acks: Vec<Duration>,
    lost: usize,
    /// The server's resident memory before the attack and its high-water mark after, in KiB.
    rss_before: u64,
    rss_peak: u64,
    /// CPU time the server spent during the attack, and the attack's wall time.
    cpu: Duration,
    wall: Duration,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

impl Probe {
    fn report(&self, attack: &str) {
        println!(
            "abuse[{attack}]: /healthz n={} p50={:?} p99={:?} max={:?}; bystander acks n={} p50={:?} p99={:?}; acked ops lost={}; server RSS {} KiB before, peak {} KiB; server CPU {:?} in {:?}",
            self.healthz.len(),
            pct(&self.healthz, 0.5),
            pct(&self.healthz, 0.99),
            pct(&self.healthz, 1.0),
            self.acks.len(),
            pct(&self.acks, 0.5),
            pct(&self.acks, 0.99),
            self.lost,
            self.rss_before,
            self.rss_peak,
            self.cpu,
            self.wall,
        );
    }

    /// No freeze: the server answered health checks and acked the bystander throughout.
    fn assert_alive(&self, attack: &str) {
        self.assert_alive_within(attack, 256);
    }

    /// [`Probe::assert_alive`] with a bound on the server's memory growth, in MiB.
    fn assert_alive_within(&self, attack: &str, max_growth_mib: u64) {
        self.report(attack);
        assert!(
            !self.healthz.is_empty() && !self.acks.is_empty(),
            "{attack}: no probes ran"
        );
        assert!(
            pct(&self.healthz, 0.99) < Duration::from_secs(1),
            "{attack}: /healthz stalled: {self:?}"
        );
        assert!(
            pct(&self.acks, 0.99) < Duration::from_secs(2),
            "{attack}: the bystander room stalled"
        );
        assert_eq!(self.lost, 0, "{attack}: acked ops lost");
        // Far above what each attack needs within its budgets, far below what the attacks
        // cost before them (hundreds of MB to GB).
        let growth_mib = self.rss_peak.saturating_sub(self.rss_before) / 1024;
        assert!(
            growth_mib < max_growth_mib,
            "{attack}: server memory grew {growth_mib} MiB"
        );
    }
}

async fn timed_healthz(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let status = tokio::time::timeout(DEADLINE, http_get_status(addr, "/healthz"))
        .await
        .expect("/healthz answers within the deadline")
        .expect("/healthz");
    assert_eq!(status, 200);
    start.elapsed()
}

/// A server to probe: in this process or the `concord` binary.
trait Target {
    fn addr(&self) -> SocketAddr;
    fn ws_base(&self) -> String {
        format!("ws://{}", self.addr())
    }
    /// (resident, high-water mark) of the server process in KiB.
    fn memory_kib(&self) -> (u64, u64);
    /// CPU time the server process has used, in ms.
    fn cpu_ms(&self) -> u64;
}

impl Target for ChildServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn memory_kib(&self) -> (u64, u64) {
        (self.rss_kib(), self.hwm_kib())
    }
    fn cpu_ms(&self) -> u64 {
        ChildServer::cpu_ms(self)
    }
}

/// Runs `attack` while probing the server; the probes stop when the attack ends.
async fn probe_during<F: std::future::Future>(
    server: &impl Target,
    attack: F,
) -> (F::Output, Probe) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let health = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(timed_healthz(addr).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }
    });
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let bystander = tokio::spawn({
        let stop = stop.clone();
        let base = server.ws_base();
        async move {
            // A raw socket, so the ack is timed the moment it arrives.
            let room = unique("bystander");
            let url = format!("{base}/rooms/{room}/ws");
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect");
            assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
            let mut doc = Document::new(9_001);
            let mut acks = Vec::new();
            let mut n = 0u32;
            let mut ready = Some(ready_tx);
            while !stop.load(Ordering::Relaxed) || acks.is_empty() {
                let update = doc.insert(n, "b").expect("insert");
                let frame = op_frame(&format!("b-{n}"), &update);
                let start = Instant::now();
                ws.send(frame).await.expect("send");
                let ack = format!(r#""id":"b-{n}""#);
                while !next_text(&mut ws).await.contains(&ack) {}
                acks.push(start.elapsed());
                n += 1;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Every acked edit is in a fresh reader's copy.
            let mut check = TestClient::new(&base, &room, 9_002);
            check.connect().await;
            let lost = (n as usize).saturating_sub(check.text().len());
            (acks, lost)
        }
    });
    // The attack starts once the bystander is in.
    let _ = ready.await;
    let (rss_before, _) = server.memory_kib();
    let (cpu_before, started) = (server.cpu_ms(), Instant::now());
    let out = attack.await;
    let (_, rss_peak) = server.memory_kib();
    let cpu = Duration::from_millis(server.cpu_ms().saturating_sub(cpu_before));
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let healthz = health.await.expect("prober");
    let (acks, lost) = bystander.await.expect("bystander");
    (
        out,
        Probe {
            healthz,
            acks,
            lost,
            rss_before,
            rss_peak,
            cpu,
            wall,
        },
    )
}

fn presence_frame(user: &str, left: bool) -> Message {
    let left = if left { r#","left":true"# } else { "" };
    Message::Text(
        format!(r#"{{"t":"presence","user":"{user}","name":"x","cursor":1{left}}}"#).into(),
    )
}

/// A connection's CPU budget runs out: it is told `cpu_budget` and closed with 1013, while
/// everyone else carries on; and reconnecting does not buy a fresh budget (the next connection
/// from the same client resumes the one the last left). The budget (60 ms, then 1% of a core)
/// is far above what the probe's one-character ops cost (tens of microseconds of CPU each, 50 a
/// second) and far below what the hog's cost: each of its ops is 1,024 one-character inserts
/// spread over the text (1,024 items to integrate and as many to split: milliseconds of CPU),
/// so even a hog slowed to a few ops a second by a loaded machine runs out.
pub async fn cpu_budget_cuts_off_the_costly_connection() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [("CPU_BURST_MS", "60"), ("CPU_SHARE", "0.01")];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let base = server.ws_base();
    let ((first, again), probe) = probe_during(&server, async {
        let first = hog(&format!("{base}/rooms/{}/ws", unique("hog")), 4_242).await;
        // Straight back, in another room: the budget is the client's, not the room's.
        let again = hog(&format!("{base}/rooms/{}/ws", unique("hog")), 4_243).await;
        (first, again)
    })
    .await;
    println!(
        "abuse[cpu]: the hog sent {} ops of 1,024 inserts before its close; reconnected, {}",
        first.2, again.2
    );
    probe.assert_alive("cpu hog");
    for (code, close, _) in [&first, &again] {
        assert_eq!(code.as_deref(), Some("cpu_budget"));
        assert_eq!(*close, Some(1013));
    }
    // A fresh 60 ms burst takes about 30 such ops; what a second of refill buys, about 5.
    assert!(
        first.2 >= 12,
        "the first connection had its burst: {}",
        first.2
    );
    assert!(
        again.2 <= 8,
        "the reconnect started from the debt, not a fresh burst: {}",
        again.2
    );
}

/// A client that sends one costly update and closes at once, again and again, each time on a
/// new connection in a new room: every update is charged to it (also one still being applied
/// when its connection is gone), so it runs out of budget like a client that stays.
pub async fn hit_and_run_updates_are_still_paid_for() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [("CPU_BURST_MS", "30"), ("CPU_SHARE", "0.005")];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    // The same two frames for every room: a text, then 1,024 inserts spread over it.
    let (mut doc, text) = costly_text(5_151);
    let costly = spread_inserts(&mut doc, 0);
    // Well under the per-address connection burst (100).
    let mut cut_after = None;
    for visit in 0..90u32 {
        let url = format!("{}/rooms/{}/ws", server.ws_base(), unique("run"));
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
        ws.send(op_frame("text", &text)).await.expect("send");
        // The cheap op is acked, unless the client's budget is spent.
        let refused = loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""t":"ack""#) => break false,
                Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""code":"cpu_budget""#) => {
                    break true
                }
                Ok(Some(Ok(Message::Close(_)))) => panic!("closed without cpu_budget"),
                Ok(Some(Ok(_))) => {}
                other => panic!("no ack nor cpu_budget: {other:?}"),
            }
        };
        if refused {
            cut_after = Some(visit);
            break;
        }
        // The costly one, and gone before it is applied.
        ws.send(op_frame("costly", &costly)).await.expect("send");
        drop(ws);
    }
    println!("abuse[hit and run]: cut off on visit {cut_after:?}");
    let visits = cut_after.expect("a hit-and-run client ran out of budget within 90 visits");
    assert!(visits >= 5, "the first visits had the burst: {visits}");
}

/// A JSON `op` frame, as a client sends it.
fn op_frame(id: &str, update: &[u8]) -> Message {
    let op = ClientMessage::Op {
        id: Some(id.to_owned()),
        update: update.to_vec(),
        base: None,
    };
    Message::Text(op.to_json().into())
}

/// A replica of `client` holding a 2,400-character text, and that text as one update.
fn costly_text(client: u64) -> (Document, Vec<u8>) {
    let mut doc = Document::new(client);
    doc.insert(0, &"lorem ipsum ".repeat(200)).expect("insert");
    let text = doc.encode_state_as_update(None).expect("state");
    (doc, text)
}

/// 1,024 one-character inserts spread evenly over `doc`'s text, `shift` units from the even
/// spots, in one update: as many items to integrate and split, milliseconds of a server's CPU.
fn spread_inserts(doc: &mut Document, shift: u32) -> Vec<u8> {
    let step = doc.len() / 1024;
    // In document order, each index counting the inserts before it.
    let edits: Vec<(u32, u32, &str)> = (0..1024)
        .map(|k| (k * (step + 1) + shift % step, 0, "x"))
        .collect();
    doc.replace_many(&edits).expect("inserts")
}

/// Connects to `url` and sends costly ops as fast as it can until the server closes the
/// socket: (the error code it was told, the close code, ops sent before the close was seen).
async fn hog(url: &str, client: u64) -> (Option<String>, Option<u16>, u32) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
    let (mut doc, text) = costly_text(client);
    let mut code = None;
    let mut close = None;
    let mut sent = 0;
    for i in 0..5_000u32 {
        let update = if i == 0 {
            text.clone()
        } else {
            spread_inserts(&mut doc, i)
        };
        if ws
            .send(op_frame(&format!("hog-{i}"), &update))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        // Read whatever came back without waiting.
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_millis(1), ws.next()).await
        {
            match msg {
                Message::Text(t) if t.contains(r#""t":"error""#) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                    code = v["code"].as_str().map(str::to_owned);
                }
                Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
        if close.is_some() {
            break;
        }
    }
    // Drain until the close arrives.
    while close.is_none() {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""t":"error""#) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                code = v["code"].as_str().map(str::to_owned);
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = Some(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    (code, close, sent)
}

/// A client that never reads: its writes time out, it is dropped, and its connection permit
/// and queued memory come back, so newcomers are not locked out.
pub async fn a_client_that_never_reads_is_dropped() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [
        ("WRITE_TIMEOUT_SECS", "1"),
        ("CONN_OUT_BYTES", "262144"),
        ("MAX_CONNECTIONS", "4"),
    ];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let room = unique("big");
    // A room of 8 MB: its `sync` frame is more than the kernel's socket buffers hold.
    let mut writer = TestClient::new(&server.ws_base(), &room, 77);
    writer.connect().await;
    for _ in 0..8 {
        let at = writer.session.text().len() as u32;
        writer
            .session
            .insert(at, &"x".repeat(1024 * 1024))
            .expect("insert");
        writer.pump_until(|c| c.session.pending_count() == 0).await;
    }
    let ((), probe) = probe_during(&server, async {
        // Two readers that never read, with tiny receive buffers: with the writer and the
        // bystander they take every permit.
        let mut stuck = Vec::new();
        for _ in 0..2 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("rcvbuf");
            let stream = socket.connect(server.addr()).await.expect("connect");
            let url = format!("{}/rooms/{room}/ws", server.ws_base());
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .expect("upgrade");
            stuck.push(ws);
        }
        // The writer keeps the room busy, so the stuck readers' queues grow.
        let started = Instant::now();
        let url = format!("{}/rooms/{}/ws", server.ws_base(), unique("newcomer"));
        loop {
            let at = writer.session.text().len() as u32;
            writer
                .session
                .insert(at, &"y".repeat(1024))
                .expect("insert");
            writer.pump_for(Duration::from_millis(50)).await;
            match tokio_tungstenite::connect_async(&url).await {
                Ok(_) => break,
                Err(_) => assert!(
                    started.elapsed() < DEADLINE,
                    "stuck readers still hold their permits"
                ),
            }
        }
        println!(
            "abuse[never reads]: permits freed {:?} after the stuck joins",
            started.elapsed()
        );
        drop(stuck);
    })
    .await;
    probe.assert_alive("never reads");
}

/// One connection floods presence and tries to speak for another user: its readers get a
/// bounded rate of frames, always under the flooder's own server-set id, and stay connected.
pub async fn a_presence_flood_slows_only_the_flooder() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = ChildServer::start_env(&db, &[], free_port()).await;
    let room = unique("flood");
    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let (mut reader, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    assert!(next_text(&mut reader).await.starts_with(r#"{"t":"sync""#));
    your_presence_id(&mut reader).await;
    let (mut flooder, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    assert!(next_text(&mut flooder).await.starts_with(r#"{"t":"sync""#));
    your_presence_id(&mut flooder).await;

    let ((elapsed, users), probe) = probe_during(&server, async {
        let start = Instant::now();
        for i in 0..4_000 * scale() {
            flooder
                .send(presence_frame("victim", i % 100 == 99))
                .await
                .expect("flood");
        }
        flooder
            .send(presence_frame("victim", true))
            .await
            .expect("flood");
        // Whatever the reader gets in the flood and one second after it.
        let mut users = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, reader.next()).await {
            match msg {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                    if v["t"] == "presence" {
                        users.push(v["user"].as_str().unwrap_or_default().to_owned());
                    }
                }
                Message::Close(_) => panic!("the reader was closed by someone else's flood"),
                _ => {}
            }
        }
        (start.elapsed(), users)
    })
    .await;
    probe.assert_alive("presence flood");
    println!(
        "abuse[presence flood]: {} frames sent in {elapsed:?}; the reader got {}",
        4_000 * scale() + 1,
        users.len()
    );
    assert!(!users.is_empty(), "presence is still relayed");
    assert!(
        users.iter().all(|u| u != "victim" && u.starts_with("c-")),
        "presence names its real sender: {:?}",
        &users[..users.len().min(5)]
    );
    let allowed = 20.0 + 20.0 * (elapsed.as_secs_f64() + 1.5) + 5.0;
    assert!(
        (users.len() as f64) <= allowed,
        "{} presence frames relayed, over the rate ({allowed})",
        users.len()
    );
}

/// Half-sent requests and idle connections are closed after the header timeout, and shutdown
/// ends within its grace even with them open.
pub async fn slowloris_is_timed_out_and_shutdown_is_bounded() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [("HEADER_TIMEOUT_SECS", "1"), ("SHUTDOWN_GRACE_SECS", "2")];
    let mut server = ChildServer::start_env(&db, &env, free_port()).await;
    let addr = server.addr();
    let ((), probe) = probe_during(&server, async {
        let mut slow = Vec::new();
        for i in 0..300 * scale() {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if i % 3 != 0 {
                // Headers that never end; the idle third sends nothing at all.
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
                    .await
                    .expect("write");
            }
            slow.push(s);
        }
        let start = Instant::now();
        for mut s in slow {
            let mut buf = [0u8; 512];
            // Closed by the server: EOF (or a 408 then EOF, or a reset).
            loop {
                match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a slowloris connection was never closed"),
                }
            }
        }
        println!(
            "abuse[slowloris]: {} half-open connections closed within {:?}",
            300 * scale(),
            start.elapsed()
        );
    })
    .await;
    probe.assert_alive("slowloris");

    // Shutdown with a never-finished request and a silent WebSocket open.
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let url = format!("{}/rooms/{}/ws", server.ws_base(), unique("quiet"));
    let (_quiet, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let took = server
        .sigterm(Duration::from_secs(10))
        .await
        .expect("exits after SIGTERM");
    println!("abuse[shutdown]: drained in {took:?} (grace 2 s)");
    assert!(took < Duration::from_secs(4), "shutdown exceeded its grace");
}

/// Sends `update` as an op and returns the error code it got back (skipping other frames).
async fn op_error(ws: &mut Ws, id: &str, update: &[u8]) -> String {
    ws.send(op_frame(id, update)).await.expect("send");
    loop {
        let text = next_text(ws).await;
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        if v["t"] == "error" {
            return v["code"].as_str().unwrap_or_default().to_owned();
        }
    }
}

/// Forged item floods (the ~30-byte updates that froze the server for minutes) and updates
/// with a clock gap are rejected at the cost of their own size; a legitimately expensive pair of
/// updates (two people typing backwards at one spot, quadratic inside yrs) runs on the CPU pool
/// without stalling anyone else.
pub async fn forged_and_costly_updates_stall_no_one() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let server = ChildServer::start_env(&db, &[], free_port()).await;
    let room = unique("forged");
    let mut owner = TestClient::new(&server.ws_base(), &room, 31);
    owner.connect().await;
    owner.session.insert(0, "honest text").expect("insert");
    owner.pump_until(|c| c.session.pending_count() == 0).await;
    let before = owner.state();

    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let (mut evil, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    assert!(next_text(&mut evil).await.starts_with(r#"{"t":"sync""#));
    your_presence_id(&mut evil).await;

    let (rejected, probe) = probe_during(&server, async {
        let mut rejected = Vec::new();
        for (client, n) in [(1i64, 1_000_000u64), (2, 1_000_000), (3, 10_000)] {
            for info in [0u8, 1, 4] {
                let forged = concord_testkit::lib0::forged_blocks(client, info, n);
                let start = Instant::now();
                let code = op_error(&mut evil, &format!("f-{client}-{info}"), &forged).await;
                rejected.push((forged.len(), code, start.elapsed()));
            }
        }
        // A clock gap: built on an edit the room never saw.
        let mut other = Document::new(909);
        other.insert(0, "never sent").expect("insert");
        for i in 0..200 * scale() {
            let gap = other.insert(0, "x").expect("insert");
            let start = Instant::now();
            let code = op_error(&mut evil, &format!("gap-{i}"), &gap).await;
            rejected.push((gap.len(), code, start.elapsed()));
        }
        rejected
    })
    .await;
    probe.assert_alive("forged updates");
    for (len, code, _) in &rejected[..9] {
        assert_eq!(code, "invalid_update", "a forged {len}-byte flood");
    }
    assert!(rejected[9..]
        .iter()
        .all(|(_, c, _)| c == "missing_dependencies"));
    let worst = rejected.iter().map(|r| r.2).max().unwrap_or_default();
    println!(
        "abuse[forged]: 9 forged floods of 1M/10k GC blocks and items ({}-{} bytes) and {} gap ops rejected; slowest round trip {worst:?}",
        rejected[..9].iter().map(|r| r.0).min().unwrap_or(0),
        rejected[..9].iter().map(|r| r.0).max().unwrap_or(0),
        200 * scale(),
    );
    owner.pump_for(Duration::from_millis(100)).await;
    assert_eq!(owner.state(), before, "nothing rejected reached the room");

    // Two honest-looking backward runs at one spot: accepted, and costly, on the pool only.
    let costly = unique("costly");
    let mut a = TestClient::new(&server.ws_base(), &costly, 41);
    let mut b = TestClient::new(&server.ws_base(), &costly, 42);
    a.connect().await;
    b.connect().await;
    for c in [&mut a, &mut b] {
        for _ in 0..3_000 {
            c.session.insert(0, "z").expect("insert");
        }
    }
    let ((), probe) = probe_during(&server, async {
        let start = Instant::now();
        a.send_pending().await;
        b.send_pending().await;
        converge(&mut [&mut a, &mut b]).await;
        println!(
            "abuse[costly]: two 3,000-item backward runs at one spot integrated and converged in {:?}",
            start.elapsed()
        );
    })
    .await;
    probe.assert_alive("costly updates");
}

/// C1: a writer fills one room with about a million items (600 ops of 1,024 scattered
/// inserts) while compaction folds it under a commit bound (400 ms) that whole-room folds
/// overrun. Before, each timed-out fold kept running while the next tick started another, and
/// memory grew until the kernel killed the server. Now a fold keeps its turn until it really
/// ends, one runs at a time on the CPU pool, a failed one is retried with backoff, and a long
/// tail is folded in steps: the server stays up inside its address-space cap, the bystander is
/// served, and the log is folded in the end.
pub async fn compaction_of_a_heavy_room_cannot_run_away() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [
        ("COMMIT_TIMEOUT_MS", "400"),
        ("COMPACT_OPS", "50"),
        ("COMPACT_BYTES", "1048576"),
        ("CPU_BURST_MS", "600000"),
        ("CPU_SHARE", "1"),
    ];
    let server = ChildServer::start_capped(&db, &env, free_port(), Some(6 << 30)).await;
    let room = unique("heavy");
    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let ops = 600 * scale() as u32;
    let (acked, probe) = probe_during(&server, async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
        let (mut doc, text) = costly_text(4_300);
        let mut acked = 0u32;
        for i in 0..=ops {
            let update = if i == 0 {
                text.clone()
            } else {
                spread_inserts(&mut doc, i)
            };
            ws.send(op_frame(&format!("h-{i}"), &update))
                .await
                .expect("send");
            // At most 32 unacked: a client's pace, not a flood (the flood has its own budget).
            while i.saturating_sub(acked) >= 32 || (i == ops && acked <= ops) {
                let text = next_text(&mut ws).await;
                assert!(!text.contains(r#""t":"error""#), "{text}");
                if text.contains(r#""t":"ack""#) {
                    acked += 1;
                }
            }
        }
        acked
    })
    .await;
    probe.assert_alive_within("heavy-room compaction", 1536);
    assert_eq!(acked, ops + 1, "every op acked");
    // The log is folded in the end (steps of 1 MiB, each retried after a timeout).
    let store = concord_server::store::connect(&db).await.expect("store");
    let head = store.head_seq(&room).await.expect("head");
    let deadline = Instant::now() + Duration::from_secs(120);
    let folded = loop {
        let loaded = store.load(&room).await.expect("load");
        if loaded.snapshot_seq == head || Instant::now() > deadline {
            break loaded.snapshot_seq;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "abuse[heavy]: {} ops of 1,024 scattered inserts; snapshot at {folded} of {head}; server alive at {} MiB resident",
        ops,
        server.rss_kib() / 1024
    );
    assert!(
        timed_healthz(server.addr).await < DEADLINE,
        "the server still answers"
    );
    assert_eq!(folded, head, "the log was folded");
}

/// The `concord` binary on a SQLite file whose write lock another process holds: no false ack,
/// the sender hears `unavailable` within the commit bound, memory stays put, and once the lock
/// is released the same server takes the resent ops without a restart.
pub async fn a_stalled_store_tells_the_sender_in_time() {
    use sqlx::{Connection, Executor};
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [
        ("COMMIT_TIMEOUT_MS", "1000"),
        ("STATEMENT_TIMEOUT_MS", "500"),
    ];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let room = unique("stall");
    let mut c = TestClient::new(&server.ws_base(), &room, 51);
    c.connect().await;
    c.session.insert(0, "before the stall. ").expect("insert");
    c.pump_until(|c| c.session.pending_count() == 0).await;
    let acked_before = c.acked.len();
    let rss_before = server.rss_kib();

    let mut lock = sqlx::SqliteConnection::connect(&db)
        .await
        .expect("second connection");
    lock.execute(sqlx::raw_sql("BEGIN IMMEDIATE"))
        .await
        .expect("take the write lock");
    let start = Instant::now();
    for i in 0..50 {
        let at = c.session.text().encode_utf16().count() as u32;
        c.session.insert(at, &format!("{i} ")).expect("insert");
        c.send_pending().await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !c.errors.iter().any(|e| e == "unavailable") && !c.closed {
        assert!(tokio::time::Instant::now() < deadline, "never told");
        c.pump_for(Duration::from_millis(20)).await;
    }
    let told = start.elapsed();
    assert_eq!(
        c.acked.len(),
        acked_before,
        "no ack while the store is stalled"
    );
    let rss_stalled = server.rss_kib();
    lock.execute(sqlx::raw_sql("ROLLBACK"))
        .await
        .expect("release");
    drop(lock);

    // Same server, no restart: reconnect, resend, everything lands.
    if c.closed || c.session.status() != concord_engine::SessionStatus::Online {
        c.disconnect();
        c.connect().await;
    }
    c.pump_until(|c| c.session.pending_count() == 0).await;
    let mut check = TestClient::new(&server.ws_base(), &room, 52);
    check.connect().await;
    assert_eq!(check.text(), c.text());
    assert!(check.text().ends_with("49 "), "{}", check.text());
    println!(
        "abuse[stalled store]: sender told `unavailable` {told:?} after the stall began (commit bound 1 s, statement 0.5 s); server RSS {} -> {} KiB while stalled; recovered without restart",
        rss_before, rss_stalled
    );
}

/// SIGTERM to the `concord` binary exits within the grace whatever is going on: a room busy
/// for a minute on the CPU pool (two concurrent 20,000-item backward runs, quadratic in yrs),
/// half-sent requests, and a WebSocket that never reads.
pub async fn sigterm_exits_within_grace_whatever_clients_do() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [
        ("SHUTDOWN_GRACE_SECS", "2"),
        ("WRITE_TIMEOUT_SECS", "60"),
        ("HEADER_TIMEOUT_SECS", "60"),
    ];
    let mut server = ChildServer::start_env(&db, &env, free_port()).await;
    let room = unique("busy");
    // Both runs are made offline, so they are concurrent at one spot.
    let mut a = TestClient::new(&server.ws_base(), &room, 61);
    let mut b = TestClient::new(&server.ws_base(), &room, 62);
    for c in [&mut a, &mut b] {
        for _ in 0..20_000 {
            c.session.insert(0, "z").expect("insert");
        }
    }
    a.connect().await;
    a.pump_until(|c| c.session.pending_count() == 0).await;
    b.connect().await;
    b.pump_for(Duration::from_millis(300)).await;
    assert_eq!(
        b.session.pending_count(),
        1,
        "the costly op is still integrating"
    );

    let mut half = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(server.addr()).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        half.push(s);
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr()).await.expect("connect");
    let url = format!("{}/rooms/{}/ws", server.ws_base(), unique("deaf"));
    let (_deaf, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    assert_eq!(
        http_get_status(server.addr, "/healthz")
            .await
            .expect("healthz"),
        200,
        "healthy while a room is busy"
    );

    let rss = server.rss_kib();
    let took = server
        .sigterm(Duration::from_secs(10))
        .await
        .expect("the server exits after SIGTERM");
    println!("abuse[sigterm]: exited {took:?} after SIGTERM (grace 2 s) with a room busy on the pool; RSS at SIGTERM {rss} KiB");
    assert!(
        took < Duration::from_millis(3_500),
        "exceeded the grace: {took:?}"
    );
    drop(half);
}

/// Four connections send maximum-size frames at once (an 11 MiB update each, ~15 MiB of JSON):
/// the instance parses at most `INBOUND_BYTES` of them at a time, so memory stays a small
/// multiple of one frame instead of many times all of them.
pub async fn big_frames_at_once_stay_inside_the_inbound_budget() {
    let db = database(Backend::Sqlite).await.expect("sqlite");
    let env = [("INBOUND_BYTES", "16777216")];
    let server = ChildServer::start_env(&db, &env, free_port()).await;
    let room = unique("big-frames");
    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let mut doc = Document::new(5_151);
    let update = doc
        .insert(0, &"p".repeat(11 * 1024 * 1024))
        .expect("insert");
    let frame = format!(
        r#"{{"t":"op","id":"big-1","data":{{"update":"{}"}}}}"#,
        encode_b64(&update)
    );
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));
        senders.push(ws);
    }
    let (acks, probe) = probe_during(&server, async {
        let sends = senders.iter_mut().map(|ws| {
            let frame = frame.clone();
            async move {
                ws.send(Message::Text(frame.into())).await.expect("send");
                // Each sender's op is acked (the later ones as duplicates of the first).
                loop {
                    let text = next_text(ws).await;
                    if text.contains(r#""t":"ack""#) {
                        return 1usize;
                    }
                    assert!(
                        !text.contains(r#""t":"error""#),
                        "{}",
                        &text[..text.len().min(200)]
                    );
                }
            }
        });
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .sum::<usize>()
    })
    .await;
    // Each connection's WebSocket reader buffers its whole frame (growing its buffer as it
    // reads) before any budget of ours sees it: about 4x the frames in flight.
    probe.assert_alive_within("big frames", 512);
    assert_eq!(acks, 4);
    println!(
        "abuse[big frames]: 4 frames of {:.1} MiB at once, all acked; server RSS {:.1} -> peak {:.1} MiB",
        frame.len() as f64 / 1048576.0,
        probe.rss_before as f64 / 1024.0,
        probe.rss_peak as f64 / 1024.0
    );
}
