//! `concord-load`: N WebSocket clients over M rooms at a given edit rate, against one or more
//! running `concord` instances (loopback only).
//!
//! Each client types one character per tick at a random offset and flushes it as one op, so
//! every edit is an acked op. It reports durable-ack latency (send -> ack), fan-out latency
//! (send -> another client receives the op, across instances too), acked ops/s,
//! the server's RSS (`--server-pid`, repeatable), and the number of lost or duplicated edits,
//! counted from a fresh read of every room after the run: each client types only its own
//! marker character, so a room's final text must hold exactly as many of each marker as that
//! client had acked.
//!
//! Load clients do not apply other clients' updates (that would measure the load generator,
//! not the server); they read the id of the op's first item and move on.
//!
//! `--protocol` picks the wire: `json` (Concord's, acked per op), `y-websocket` (`/yjs/{room}`:
//! no acks, so lost edits are counted against those sent) or `hocuspocus` (`/hocuspocus`: the
//! ack is `SyncStatus`, which comes in send order). Fan-out is matched by the id of the
//! update's first item: the server broadcasts before the commit assigns a seq.
//!
//! `--presence R` has each client also send its presence (JSON) or awareness (Yjs protocols)
//! R times a second, with a name, a color and a cursor (offsets, or relative positions into
//! `body` as y-codemirror.next sends them); with `--rate 0` that is all it sends. Presence and
//! awareness messages received (and the entries they carry) are counted; with `--server-pid`,
//! the servers' CPU time over the window says what relaying them cost. `--rate 0` without
//! presence leaves the clients idle once joined: with `--server-pid`, what an idle connection
//! costs in memory (`bench/peers/idle.sh`).
//!
//! ```text
//! concord-load --url ws://127.0.0.1:8080 --clients 1000 --rooms 100 --rate 20 --secs 30
//! concord-load --protocol hocuspocus --clients 1000 --rooms 100 --rate 1 --secs 20
//! concord-load --protocol y-websocket --clients 500 --rooms 1 --rate 0 --presence 1 --secs 20
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_engine::{ClientMessage, ClientSession, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
struct Args {
    urls: Vec<String>,
    clients: usize,
    rooms: usize,
    rate: f64,
    /// Presence (or awareness) messages per second per client.
    presence: f64,
    secs: u64,
    server_pids: Vec<u32>,
    prefix: String,
    seed: u64,
    json: bool,
    protocol: Protocol,
    /// The server is not Concord (a peer run side by side): no room read at the end; lost
    /// edits are judged from deliveries instead.
    peer: bool,
}

/// The wire format the load clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Json,
    YWebsocket,
    Hocuspocus,
}

fn usage() -> ! {
    eprintln!(
        "usage: concord-load [--url ws://127.0.0.1:8080]... [--clients 1000] [--rooms 100] \
         [--rate 10 (edits/s per client)] [--presence 0 (presences/s per client)] [--secs 30] [--server-pid PID]... [--prefix load] \
         [--seed 1] [--json] [--protocol json|y-websocket|hocuspocus] [--peer]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        urls: Vec::new(),
        clients: 1000,
        rooms: 100,
        rate: 10.0,
        presence: 0.0,
        secs: 30,
        server_pids: Vec::new(),
        prefix: format!("load{}", std::process::id()),
        seed: 1,
        json: false,
        protocol: Protocol::Json,
        peer: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => args.urls.push(value()),
            "--clients" => args.clients = value().parse().unwrap_or_else(|_| usage()),
            "--rooms" => args.rooms = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => args.rate = value().parse().unwrap_or_else(|_| usage()),
            "--presence" => args.presence = value().parse().unwrap_or_else(|_| usage()),
            "--secs" => args.secs = value().parse().unwrap_or_else(|_| usage()),
            "--server-pid" => args
                .server_pids
                .push(value().parse().unwrap_or_else(|_| usage())),
            "--prefix" => args.prefix = value(),
            "--seed" => args.seed = value().parse().unwrap_or_else(|_| usage()),
            "--json" => args.json = true,
            "--peer" => args.peer = true,
            "--protocol" => {
                args.protocol = match value().as_str() {
                    "json" => Protocol::Json,
                    "y-websocket" => Protocol::YWebsocket,
                    "hocuspocus" => Protocol::Hocuspocus,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if args.urls.is_empty() {
        args.urls.push("ws://127.0.0.1:8080".to_owned());
    }
    if args.clients == 0 || args.rooms == 0 || args.rate < 0.0 || args.presence < 0.0 {
        usage();
    }
    args
}

/// What one client measured.
#[derive(Default)]
struct ClientReport {
    sent: u64,
    acked: u64,
    ack_latency_us: Vec<u64>,
    /// (first-item key, when received) of other clients' ops.
    received: Vec<(u64, Instant)>,
    errors: u64,
    unacked_at_end: u64,
    presence_sent: u64,
    /// Presence frames (JSON) or awareness messages (Yjs) received.
    presence_received: u64,
    /// Entries in them (one per JSON frame; an awareness message may carry many).
    presence_entries: u64,
}

/// A ticker every `1 / rate` s, its first tick at a random phase after `start`; `None` at 0.
fn ticker_at(rate: f64, start: Instant, rng: &mut SmallRng) -> Option<tokio::time::Interval> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the clients' ticks over one period.
    let phase = Duration::from_secs_f64(rng.gen_range(0.0..period.as_secs_f64()));
    let mut ticker = tokio::time::interval_at((start + phase).into(), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    Some(ticker)
}

/// Ticks of an optional ticker (never, without one).
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The awareness state a load client announces: as y-codemirror.next's, a user and a cursor
/// of relative positions into `body` (at its end, in an empty room).
fn awareness_state(index: usize, n: u64) -> String {
    let at = serde_json::json!({"type": null, "tname": "body", "item": null, "assoc": 0});
    serde_json::json!({
        "user": {"name": format!("load-{index}"), "color": "#30bced"},
        "cursor": {"anchor": at, "head": at},
        "n": n,
    })
    .to_string()
}

/// Per room: when the op with each first-item key was sent.
type SentByKey = Arc<Mutex<HashMap<u64, Instant>>>;

fn marker(index_in_room: usize) -> char {
    // Distinct printable characters per client of a room (CJK block: plenty, one UTF-16 unit).
    char::from_u32(0x4E00 + index_in_room as u32).unwrap_or('?')
}

fn room_url(base: &str, room: &str, sv: Option<&str>) -> String {
    match sv {
        Some(sv) => format!(
            "{base}/rooms/{room}/ws?sv={}",
            sv.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        ),
        None => format!("{base}/rooms/{room}/ws"),
    }
}

/// A small read buffer: tungstenite zero-fills the whole buffer before every read, and a
/// thousand clients at the default 128 KiB would measure memset, not the server.
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// [`first_item_key`] of a v2 update (a JSON op's): the first inserted id. The server fans an
/// update out before its commit gives it a seq, so deliveries are matched by content.
fn first_item_key_v2(update_v2: &[u8]) -> Option<u64> {
    use yrs::updates::decoder::Decode;
    let update = yrs::Update::decode_v2(update_v2).ok()?;
    let insertions = update.insertions(true);
    let (client, ranges) = insertions.iter().next()?;
    let clock = ranges.iter().next()?.start;
    Some(client.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(clock))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket, retrying a refused or reset connect a few times with jittered backoff, as
/// a real client's reconnect does: thousands of clients connecting at once overflow the
/// listener's accept backlog, which says nothing about the server once they are in.
async fn connect(url: String, rng: &mut SmallRng) -> Result<Socket, String> {
    let mut wait_ms = 50u64;
    let mut attempt = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(
            url.as_str(),
            Some(socket_config()),
            false,
        )
        .await
        {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if attempt >= 5 => return Err(format!("{e} (after {attempt} retries)")),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(wait_ms + rng.gen_range(0..wait_ms)))
                    .await;
                wait_ms *= 2;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    index: usize,
    url: String,
    room: String,
    marker: char,
    (rate, presence): (f64, f64),
    start: Instant,
    end: Instant,
    sent_by_key: SentByKey,
    seed: u64,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut session = ClientSession::new(rng.gen_range(1..(1u64 << 53)), format!("l{index}"));
    let sv = session.connect();
    let ws = match connect(room_url(&url, &room, Some(&sv)), &mut rng).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("client {index}: connect failed: {e}");
            report.errors += 1;
            return report;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut ticker = ticker_at(rate, start, &mut rng);
    let mut presence_ticker = ticker_at(presence, start, &mut rng);
    let drain_deadline = end + Duration::from_secs(15);
    let mut synced = false;
    loop {
        let now = Instant::now();
        if now >= end && in_flight.is_empty() {
            break;
        }
        if now >= drain_deadline {
            break;
        }
        tokio::select! {
            _ = tick(&mut presence_ticker), if synced && Instant::now() < end => {
                let len = session.document().len();
                let at = if len == 0 { 0 } else { rng.gen_range(0..=len) };
                let frame = serde_json::json!({
                    "t": "presence", "user": "", "name": format!("load-{index}"), "color": "#30bced",
                    "cursor": {"anchor": at, "head": at},
                });
                report.presence_sent += 1;
                if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                    report.errors += 1;
                    return report;
                }
            }
            _ = tick(&mut ticker), if synced && Instant::now() < end => {
                let len = session.document().len();
                let at = if len == 0 { 0 } else { rng.gen_range(0..=len) };
                if session.insert(at, &marker.to_string()).is_err() || session.flush().is_err() {
                    report.errors += 1;
                    continue;
                }
                while let Some(msg) = session.poll_transmit() {
                    if let ClientMessage::Op { id: Some(id), update, .. } = &msg {
                        let now = Instant::now();
                        in_flight.insert(id.clone(), now);
                        report.sent += 1;
                        if let (Some(key), Ok(mut map)) = (first_item_key_v2(update), sent_by_key.lock()) {
                            map.insert(key, now);
                        }
                    }
                    if sink.send(Message::Text(msg.to_json().into())).await.is_err() {
                        report.errors += 1;
                        return report;
                    }
                }
            }
            frame = tokio::time::timeout_at(drain_deadline.into(), stream.next()) => {
                let frame = match frame {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                let at = Instant::now();
                match ServerMessage::parse(frame.as_str()) {
                    Ok(Some(ServerMessage::Op { update, .. })) => {
                        if let Some(key) = first_item_key_v2(&update) {
                            report.received.push((key, at));
                        }
                    }
                    Ok(Some(ServerMessage::Ack { id, seq })) => {
                        if let Some(sent) = in_flight.remove(&id) {
                            report.acked += 1;
                            report.ack_latency_us.push(at.duration_since(sent).as_micros() as u64);
                        }
                        let _ = session.handle_message(ServerMessage::Ack { id, seq });
                    }
                    Ok(Some(msg @ ServerMessage::Sync { .. })) => {
                        let _ = session.handle_message(msg);
                        synced = true;
                    }
                    Ok(Some(ServerMessage::Error { code, message })) => {
                        eprintln!("client {index}: server error {code}: {message}");
                        report.errors += 1;
                    }
                    Ok(Some(ServerMessage::Presence(_))) => {
                        report.presence_received += 1;
                        report.presence_entries += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    report.unacked_at_end = in_flight.len() as u64;
    let _ = sink.close().await;
    report
}

/// The id of an update's first item (v1: clients, then per client its struct count, client
/// and clock), folded into one key: what matches a delivery to its send over the Yjs protocols.
fn first_item_key(update_v1: &[u8]) -> Option<u64> {
    use yrs::encoding::read::{Cursor, Read};
    let mut cur = Cursor::new(update_v1);
    let clients: u32 = cur.read_var().ok()?;
    let structs: u32 = cur.read_var().ok()?;
    if clients == 0 || structs == 0 {
        return None;
    }
    let client: u64 = cur.read_var().ok()?;
    let clock: u32 = cur.read_var().ok()?;
    Some(client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(clock))
}

/// A y-protocols frame a load client cares about, read by hand (cheaply: a load generator that
/// decodes every update measures itself).
enum YjsFrame<'a> {
    Step1,
    Step2(&'a [u8]),
    Update(&'a [u8]),
    SyncStatus,
    /// An awareness message with this many entries.
    Awareness(u64),
    Other,
}

fn read_yjs_frame(frame: &[u8], hocuspocus: bool) -> YjsFrame<'_> {
    use yrs::encoding::read::{Cursor, Read};
    let mut cur = Cursor::new(frame);
    if hocuspocus && cur.read_string().is_err() {
        return YjsFrame::Other;
    }
    match cur.read_var::<u32>() {
        Ok(0) => {}
        Ok(8) if hocuspocus => return YjsFrame::SyncStatus,
        Ok(1) => {
            // The update's length, then its entry count.
            let entries = cur.read_var::<u32>().and_then(|_| cur.read_var::<u64>());
            return YjsFrame::Awareness(entries.unwrap_or(0));
        }
        _ => return YjsFrame::Other,
    }
    let kind: u32 = match cur.read_var() {
        Ok(kind) => kind,
        Err(_) => return YjsFrame::Other,
    };
    if kind == 0 {
        return YjsFrame::Step1;
    }
    let Ok(len) = cur.read_var::<u32>() else {
        return YjsFrame::Other;
    };
    let Some(update) = frame.get(cur.next..cur.next + len as usize) else {
        return YjsFrame::Other;
    };
    match kind {
        1 => YjsFrame::Step2(update),
        2 => YjsFrame::Update(update),
        _ => YjsFrame::Other,
    }
}

/// One load client over y-websocket or Hocuspocus (see the module docs).
#[allow(clippy::too_many_arguments)]
async fn run_yjs_client(
    index: usize,
    url: String,
    room: String,
    marker: char,
    (rate, presence): (f64, f64),
    start: Instant,
    end: Instant,
    sent_by_key: SentByKey,
    seed: u64,
    protocol: Protocol,
) -> ClientReport {
    use concord_engine::{doc, hocuspocus, yjs};
    let hp = protocol == Protocol::Hocuspocus;
    let mut report = ClientReport::default();
    let mut rng =
        SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut document = concord_engine::Document::new(rng.gen_range(1..(1u64 << 32)));
    let endpoint = if hp {
        format!("{url}/hocuspocus")
    } else {
        format!("{url}/yjs/{room}")
    };
    let ws = match connect(endpoint, &mut rng).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("client {index}: connect failed: {e}");
            report.errors += 1;
            return report;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let frame = |body: Vec<u8>| {
        let bytes = if hp {
            hocuspocus::wrap(&room, &body)
        } else {
            body
        };
        Message::Binary(bytes.into())
    };
    if hp {
        // Auth (no token: auth off), as the provider sends it first.
        let mut auth = hocuspocus::wrap(&room, &[2, 0, 0]);
        auth.extend_from_slice(&[5, b'4', b'.', b'8', b'.', b'0']);
        if sink.send(Message::Binary(auth.into())).await.is_err() {
            report.errors += 1;
            return report;
        }
    }
    let step1 = yjs::sync_step1(&document.state_vector()).unwrap_or_default();
    if sink.send(frame(step1)).await.is_err() {
        report.errors += 1;
        return report;
    }
    // Sends waiting for their SyncStatus, in order (`None`: a sync step 2, not an edit).
    let mut in_flight: std::collections::VecDeque<Option<Instant>> = Default::default();
    let mut own: std::collections::HashSet<u64> = Default::default();
    let mut ticker = ticker_at(rate, start, &mut rng);
    let mut presence_ticker = ticker_at(presence, start, &mut rng);
    let mut awareness_clock = 0u32;
    let drain_deadline = end + Duration::from_secs(15);
    let mut synced = false;
    loop {
        let now = Instant::now();
        if now >= end && (!hp || in_flight.is_empty()) {
            break;
        }
        if now >= drain_deadline {
            break;
        }
        tokio::select! {
            _ = tick(&mut presence_ticker), if synced && Instant::now() < end => {
                use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
                use yrs::updates::encoder::Encode;
                awareness_clock += 1;
                let entry = AwarenessUpdateEntry {
                    clock: awareness_clock,
                    json: awareness_state(index, u64::from(awareness_clock)).into(),
                };
                let client = yrs::block::ClientID::new(document.client_id());
                let update = AwarenessUpdate { clients: [(client, entry)].into_iter().collect() };
                report.presence_sent += 1;
                let body = yrs::sync::Message::Awareness(update).encode_v1();
                if sink.send(frame(body)).await.is_err() {
                    report.errors += 1;
                    return report;
                }
            }
            _ = tick(&mut ticker), if synced && Instant::now() < end => {
                let len = document.len();
                let at = if len == 0 { 0 } else { rng.gen_range(0..=len) };
                let v1 = match document.insert(at, &marker.to_string()).and_then(|u| doc::update_v2_to_v1(&u)) {
                    Ok(v1) => v1,
                    Err(_) => {
                        report.errors += 1;
                        continue;
                    }
                };
                let sent = Instant::now();
                if let Some(key) = first_item_key(&v1) {
                    own.insert(key);
                    if let Ok(mut map) = sent_by_key.lock() {
                        map.insert(key, sent);
                    }
                }
                report.sent += 1;
                if hp {
                    in_flight.push_back(Some(sent));
                }
                if sink.send(frame(yjs::update(v1))).await.is_err() {
                    report.errors += 1;
                    return report;
                }
            }
            msg = tokio::time::timeout_at(drain_deadline.into(), stream.next()) => {
                let bytes = match msg {
                    Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                };
                let at = Instant::now();
                match read_yjs_frame(&bytes, hp) {
                    YjsFrame::Update(update) => {
                        // Peers echo a client's own updates back to it: not a delivery.
                        if let Some(key) = first_item_key(update).filter(|k| !own.contains(k)) {
                            report.received.push((key, at));
                        }
                    }
                    YjsFrame::Step1 => {
                        // What the room lacks of ours: nothing but our edits, which it has.
                        let diff = document.encode_state_as_update_v1(None).unwrap_or_default();
                        if hp {
                            in_flight.push_back(None);
                        }
                        if sink.send(frame(yjs::sync_step2(diff))).await.is_err() {
                            report.errors += 1;
                            return report;
                        }
                    }
                    YjsFrame::Step2(update) => {
                        if let Ok(v2) = doc::update_v1_to_v2(update) {
                            let _ = document.apply_update(&v2);
                        }
                        synced = true;
                    }
                    YjsFrame::SyncStatus => {
                        if let Some(Some(sent)) = in_flight.pop_front() {
                            report.acked += 1;
                            report.ack_latency_us.push(at.duration_since(sent).as_micros() as u64);
                        }
                    }
                    YjsFrame::Awareness(entries) => {
                        report.presence_received += 1;
                        report.presence_entries += entries;
                    }
                    YjsFrame::Other => {}
                }
            }
        }
    }
    report.unacked_at_end = in_flight.iter().filter(|s| s.is_some()).count() as u64;
    let _ = sink.close().await;
    report
}

/// The room's text as the server has it now (a fresh connection's first sync).
async fn fetch_text(url: &str, room: &str) -> Option<String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(room_url(url, room, None))
        .await
        .ok()?;
    while let Some(Ok(frame)) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .ok()?
    {
        if let Message::Text(text) = frame {
            if let Ok(Some(ServerMessage::Sync { state, .. })) = ServerMessage::parse(text.as_str())
            {
                let doc = concord_engine::Document::from_update(1, &state).ok()?;
                let _ = ws.close(None).await;
                return Some(doc.text());
            }
        }
    }
    None
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) the process has used, in ms (clock ticks of 10 ms).
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn fmt_ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("{}-{r}", args.prefix))
        .collect();
    let sent_by_key: Vec<SentByKey> = (0..args.rooms).map(|_| SentByKey::default()).collect();
    // Connections ramp up for a moment before typing starts.
    let ramp = Duration::from_millis((args.clients as u64 * 3).clamp(500, 10_000));
    let start = Instant::now() + ramp;
    let end = start + Duration::from_secs(args.secs);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let room_index = i % args.rooms;
        let url = args.urls[(i / args.rooms) % args.urls.len()].clone();
        let (room, marker, sent) = (
            rooms[room_index].clone(),
            marker(i / args.rooms),
            sent_by_key[room_index].clone(),
        );
        tasks.push(match args.protocol {
            Protocol::Json => tokio::spawn(run_client(
                i,
                url,
                room,
                marker,
                (args.rate, args.presence),
                start,
                end,
                sent,
                args.seed,
            )),
            protocol => tokio::spawn(run_yjs_client(
                i,
                url,
                room,
                marker,
                (args.rate, args.presence),
                start,
                end,
                sent,
                args.seed,
                protocol,
            )),
        });
    }
    // Sample the servers' RSS while the clients run.
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let pids = args.server_pids.clone();
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut peak = vec![0u64; pids.len()];
            let mut last = vec![0u64; pids.len()];
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for (i, pid) in pids.iter().enumerate() {
                    last[i] = rss_kib(*pid).unwrap_or(0);
                    peak[i] = peak[i].max(last[i]);
                }
            }
            (peak, last)
        })
    };
    // Server CPU over the typing window (connections are made before it starts).
    let cpu_window = {
        let pids = args.server_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let before: Vec<u64> = pids.iter().map(|p| cpu_ms(*p).unwrap_or(0)).collect();
            tokio::time::sleep_until(end.into()).await;
            let after: Vec<u64> = pids.iter().map(|p| cpu_ms(*p).unwrap_or(0)).collect();
            after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.saturating_sub(*b))
                .sum::<u64>()
        })
    };
    let mut reports = Vec::with_capacity(args.clients);
    for task in tasks {
        reports.push(task.await.unwrap_or_default());
    }
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    // Peak, and at the end of the window (all clients still connected: steady state).
    let (peak_rss, end_rss) = sampler.await.unwrap_or_default();
    let server_cpu_ms = cpu_window.await.unwrap_or(0);

    let sent_maps: Vec<HashMap<u64, Instant>> = sent_by_key
        .iter()
        .map(|m| m.lock().map(|m| m.clone()).unwrap_or_default())
        .collect();
    let mut ack_lat: Vec<u64> = Vec::new();
    let mut fanout: Vec<u64> = Vec::new();
    let (mut sent, mut acked, mut errors, mut unacked) = (0u64, 0u64, 0u64, 0u64);
    let (mut presence_sent, mut presence_received, mut presence_entries) = (0u64, 0u64, 0u64);
    for (i, r) in reports.iter().enumerate() {
        presence_sent += r.presence_sent;
        presence_received += r.presence_received;
        presence_entries += r.presence_entries;
        sent += r.sent;
        acked += r.acked;
        errors += r.errors;
        unacked += r.unacked_at_end;
        ack_lat.extend_from_slice(&r.ack_latency_us);
        let sent_at = &sent_maps[i % args.rooms];
        for (key, at) in &r.received {
            if let Some(sent) = sent_at.get(key) {
                fanout.push(at.saturating_duration_since(*sent).as_micros() as u64);
            }
        }
    }
    ack_lat.sort_unstable();
    fanout.sort_unstable();

    // Every edit sent should reach every other client of its room.
    let mut deliveries_expected = 0u64;
    for r in 0..args.rooms {
        let in_room: Vec<&ClientReport> = reports
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.rooms == r)
            .map(|(_, c)| c)
            .collect();
        let sent: u64 = in_room.iter().map(|c| c.sent).sum();
        deliveries_expected += sent * (in_room.len() as u64).saturating_sub(1);
    }
    let deliveries = fanout.len() as u64;

    // Every acked edit must be in its room exactly once (read back from a Concord server).
    let (mut lost, mut duplicated, mut unreadable) = (0u64, 0u64, 0u64);
    for (r, room) in rooms.iter().enumerate().filter(|_| !args.peer) {
        let Some(text) = fetch_text(&args.urls[0], room).await else {
            unreadable += 1;
            continue;
        };
        let mut counts: HashMap<char, u64> = HashMap::new();
        for c in text.chars() {
            *counts.entry(c).or_default() += 1;
        }
        for (i, report) in reports
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.rooms == r)
        {
            let present = counts.get(&marker(i / args.rooms)).copied().unwrap_or(0);
            // y-websocket has no acks: every edit sent must be there.
            let promised = match args.protocol {
                Protocol::YWebsocket => report.sent,
                _ => report.acked,
            };
            lost += promised.saturating_sub(present);
            duplicated += present.saturating_sub(report.sent);
        }
    }

    let secs = args.secs as f64;
    let acked_per_sec = acked as f64 / secs;
    let rss: Vec<String> = peak_rss
        .iter()
        .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "protocol": format!("{:?}", args.protocol),
                "clients": args.clients, "rooms": args.rooms, "instances": args.urls.len(),
                "rate_per_client": args.rate, "secs": args.secs,
                "sent": sent, "acked": acked, "acked_per_sec": acked_per_sec,
                "ack_p50_us": percentile(&ack_lat, 50.0), "ack_p99_us": percentile(&ack_lat, 99.0),
                "ack_max_us": ack_lat.last().copied().unwrap_or(0),
                "fanout_p50_us": percentile(&fanout, 50.0), "fanout_p99_us": percentile(&fanout, 99.0),
                "fanout_max_us": fanout.last().copied().unwrap_or(0), "fanout_samples": fanout.len(),
                "server_peak_rss_kib": peak_rss, "server_end_rss_kib": end_rss, "lost": lost, "duplicated": duplicated,
                "errors": errors, "unacked_at_end": unacked, "unreadable_rooms": unreadable,
                "deliveries": deliveries, "deliveries_expected": deliveries_expected,
                "server_cpu_ms": server_cpu_ms, "peer": args.peer,
                "presence_per_client": args.presence, "presence_sent": presence_sent,
                "presence_received": presence_received, "presence_entries": presence_entries,
            })
        );
    } else {
        println!(
            "{:?}: clients {} over {} rooms on {} instance(s), {} edits/s each, {} s",
            args.protocol,
            args.clients,
            args.rooms,
            args.urls.len(),
            args.rate,
            args.secs
        );
        println!("ops sent {sent}, acked {acked} ({acked_per_sec:.0} acked ops/s)");
        println!(
            "durable ack latency  p50 {}  p99 {}  max {}",
            fmt_ms(percentile(&ack_lat, 50.0)),
            fmt_ms(percentile(&ack_lat, 99.0)),
            fmt_ms(ack_lat.last().copied().unwrap_or(0))
        );
        println!(
            "fan-out latency      p50 {}  p99 {}  max {}  ({} deliveries)",
            fmt_ms(percentile(&fanout, 50.0)),
            fmt_ms(percentile(&fanout, 99.0)),
            fmt_ms(fanout.last().copied().unwrap_or(0)),
            fanout.len()
        );
        println!(
            "server peak RSS      {}",
            if rss.is_empty() {
                "(pass --server-pid)".to_owned()
            } else {
                rss.join(", ")
            }
        );
        println!(
            "server CPU           {server_cpu_ms} ms over the {} s window ({:.1} us per edit sent)",
            args.secs,
            server_cpu_ms as f64 * 1000.0 / sent.max(1) as f64
        );
        println!("deliveries           {deliveries} of {deliveries_expected} expected");
        if args.presence > 0.0 {
            println!(
                "presence             {presence_sent} sent ({} /s each); {presence_received} messages received carrying {presence_entries} entries",
                args.presence
            );
        }
        if args.peer {
            println!("(peer server: rooms not read back; errors {errors})");
        } else {
            println!("lost edits {lost}, duplicated edits {duplicated}, errors {errors}, unacked at end {unacked}, unreadable rooms {unreadable}");
        }
    }
    if lost > 0 || duplicated > 0 || unreadable > 0 {
        std::process::exit(1);
    }
}
