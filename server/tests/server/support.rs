//! Test support: a real server on 127.0.0.1:0 (in-process or as a child process) and a real
//! WebSocket client driven by the engine's `ClientSession`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_engine::{ClientEvent, ClientSession, ServerMessage};
use concord_server::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any wait-for-condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Which store a suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The Postgres the tests use: `CONCORD_TEST_PG` or the machine's local one.
pub fn pg_url() -> String {
    std::env::var("CONCORD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Unique names per test run, so suites can share the Postgres database.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database for one test: a fresh SQLite file, or the shared Postgres. Returns `None` (and
/// says so) when Postgres is down outside CI; in CI a missing service fails the test.
pub async fn database(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(unique("concord-test"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Some(format!("sqlite://{}", dir.join("concord.db").display()))
        }
        Backend::Postgres => {
            let url = pg_url();
            match concord_server::store::connect(&url).await {
                Ok(_) => Some(url),
                Err(e) => {
                    if std::env::var("CI").is_ok_and(|v| v == "true") {
                        panic!("Postgres at {url} is required in CI: {e}");
                    }
                    eprintln!("SKIPPED: Postgres at {url} unavailable: {e}");
                    None
                }
            }
        }
    }
}

/// Test defaults: quick idle unload and heartbeats so tests exercise them.
pub fn test_config(database_url: &str) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().expect("addr"),
        database_url: database_url.to_owned(),
        room_idle: Duration::from_secs(2),
        heartbeat: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(10),
        ..Config::default()
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<concord_server::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(concord_server::run(config, listener, async move {
            let _ = stopped.await;
        }));
        wait_healthy(addr).await;
        TestServer {
            addr,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Graceful shutdown, as on SIGTERM; waits until the server has drained.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("server drains within the deadline")
                .expect("server task")
                .expect("server run");
        }
    }
}

/// Polls /healthz until it answers (bounded).
pub async fn wait_healthy(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_secs(1), http_get_status(addr, "/healthz")).await
        {
            if status == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {addr} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET returning the status code.
pub async fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))
}

/// A minimal HTTP/1.1 GET with extra headers, returning the status code and the body.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// The `concord` binary as a child process (for kill -9).
pub struct ChildServer {
    pub addr: SocketAddr,
    child: Child,
}

impl ChildServer {
    pub async fn start(database_url: &str, port: u16) -> ChildServer {
        Self::start_with(database_url, None, port).await
    }

    pub async fn start_with(database_url: &str, redis_url: Option<&str>, port: u16) -> ChildServer {
        let env: Vec<(&str, &str)> = redis_url.map(|r| ("REDIS_URL", r)).into_iter().collect();
        Self::start_env(database_url, &env, port).await
    }

    /// The binary with extra environment variables (budgets, timeouts), under an 8 GiB
    /// address-space cap (an idle server maps about 1.6 GiB): an attack that got past the
    /// budgets kills this server, not the machine.
    pub async fn start_env(database_url: &str, env: &[(&str, &str)], port: u16) -> ChildServer {
        Self::start_capped(database_url, env, port, Some(8 << 30)).await
    }

    /// [`ChildServer::start_env`], with the process's address space capped at `max_bytes`
    /// (`prlimit --as`, which execs the server in its place): a runaway dies alone instead of
    /// taking the machine, and the test sees it die.
    pub async fn start_capped(
        database_url: &str,
        env: &[(&str, &str)],
        port: u16,
        max_bytes: Option<u64>,
    ) -> ChildServer {
        let binary = env!("CARGO_BIN_EXE_concord");
        let mut command = match max_bytes {
            Some(max) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={max}")).arg("--").arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.envs(env.iter().copied());
        let child = command
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn concord");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_healthy(addr).await;
        ChildServer { addr, child }
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory of the server process, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// CPU time the server process has used so far (user + system), in milliseconds.
    pub fn cpu_ms(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at state, field 3;
        // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (ticks(11) + ticks(12)) * 10
    }

    /// The process's resident-memory high-water mark, in KiB.
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// SIGTERM, then waits up to `limit` for the process to exit; returns how long it took.
    pub async fn sigterm(&mut self, limit: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGKILL: no drain, no final snapshot.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn url_encode(b64: &str) -> String {
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A client id no test client uses (they take small fixed ones).
fn rand_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A real client: a `ClientSession` over a real WebSocket.
pub struct TestClient {
    pub session: ClientSession,
    ws: Option<Ws>,
    base: String,
    pub room: String,
    pub errors: Vec<String>,
    /// Every `{id -> update}` this client sent with an id, and which ids were acked.
    pub sent: Vec<(String, Vec<u8>)>,
    pub acked: Vec<String>,
    pub closed: bool,
    /// `?token=` for servers with access control.
    pub token: Option<String>,
    /// The close code the server sent, if it closed the socket.
    pub close_code: Option<u16>,
    /// The last `access` frame's role.
    pub access: Option<String>,
}

impl TestClient {
    pub fn new(base: &str, room: &str, client_id: u64) -> TestClient {
        TestClient {
            session: ClientSession::new(client_id, format!("c{client_id}")),
            ws: None,
            base: base.to_owned(),
            room: room.to_owned(),
            errors: Vec::new(),
            sent: Vec::new(),
            acked: Vec::new(),
            closed: false,
            token: None,
            close_code: None,
            access: None,
        }
    }

    pub fn set_base(&mut self, base: &str) {
        self.base = base.to_owned();
    }

    /// Opens the socket with `?sv=` and waits for the first sync.
    pub async fn connect(&mut self) {
        let sv = self.session.connect();
        let mut url = format!(
            "{}/rooms/{}/ws?sv={}",
            self.base,
            self.room,
            url_encode(&sv)
        );
        if let Some(token) = &self.token {
            url.push_str("&token=");
            url.push_str(token);
        }
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        self.ws = Some(ws);
        self.closed = false;
        self.pump_until(|c| c.session.status() == concord_engine::SessionStatus::Online)
            .await;
    }

    pub fn disconnect(&mut self) {
        self.ws = None;
        self.session.disconnect();
    }

    /// Flushes local edits and sends every frame the session has queued.
    pub async fn send_pending(&mut self) {
        self.session.flush().expect("flush");
        while let Some(msg) = self.session.poll_transmit() {
            if let concord_engine::ClientMessage::Op {
                id: Some(id),
                update,
                ..
            } = &msg
            {
                self.sent.push((id.clone(), update.clone()));
            }
            let Some(ws) = self.ws.as_mut() else { return };
            if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
                self.closed = true;
                return;
            }
        }
    }

    /// Sends an op the session did not make, as a client ignoring its `access` role would (the
    /// session itself refuses a reader's edits): `text` inserted at 0 by a fresh replica.
    pub async fn send_forged_insert(&mut self, text: &str) {
        let id = rand_id();
        let update = concord_engine::Document::new(id)
            .insert(0, text)
            .expect("insert");
        let msg = concord_engine::ClientMessage::Op {
            id: Some(format!("forged-{id}")),
            update,
            base: None,
        };
        let Some(ws) = self.ws.as_mut() else { return };
        if ws.send(Message::Text(msg.to_json().into())).await.is_err() {
            self.closed = true;
        }
    }

    /// Reads frames for up to `wait`, feeding the session. Returns false if the socket closed.
    pub async fn pump_for(&mut self, wait: Duration) -> bool {
        self.send_pending().await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return false;
            };
            let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return true,
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(r#"{"t":"access""#) {
                        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                        self.access = v["role"].as_str().map(str::to_owned);
                    }
                    let msg = ServerMessage::parse(text.as_str())
                        .expect("server frames parse")
                        .expect("known frame");
                    self.session
                        .handle_message(msg)
                        .expect("apply server frame");
                    while let Some(ev) = self.session.poll_event() {
                        match ev {
                            ClientEvent::Acked { id, .. } => self.acked.push(id),
                            ClientEvent::ServerError { code, .. } => self.errors.push(code),
                            _ => {}
                        }
                    }
                    self.send_pending().await;
                }
                Some(Ok(Message::Close(frame))) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    self.closed = true;
                    self.ws = None;
                    self.session.disconnect();
                    return false;
                }
                None | Some(Err(_)) => {
                    self.closed = true;
                    self.ws = None;
                    self.session.disconnect();
                    return false;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Pumps until `cond` holds, failing the test after [`DEADLINE`].
    pub async fn pump_until(&mut self, cond: impl Fn(&TestClient) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached in time (room {}, pending {}, errors {:?})",
                self.room,
                self.session.pending_count(),
                self.errors
            );
            if !self.pump_for(Duration::from_millis(50)).await && self.ws.is_none() {
                panic!("socket closed while waiting (room {})", self.room);
            }
        }
    }

    /// Full state as one v2 update.
    pub fn state(&self) -> Vec<u8> {
        self.session
            .document()
            .encode_state_as_update(None)
            .expect("encode")
    }

    pub fn text(&self) -> String {
        self.session.text()
    }
}

/// Pumps every client until all have nothing pending and identical state (byte-equal), or
/// fails after [`DEADLINE`].
pub async fn converge(clients: &mut [&mut TestClient]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        for c in clients.iter_mut() {
            c.pump_for(Duration::from_millis(20)).await;
        }
        let settled = clients.iter().all(|c| c.session.pending_count() == 0);
        let first = clients[0].state();
        if settled && clients.iter().all(|c| c.state() == first) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not converge: texts {:?}, pending {:?}",
            clients.iter().map(|c| c.text()).collect::<Vec<_>>(),
            clients
                .iter()
                .map(|c| c.session.pending_count())
                .collect::<Vec<_>>()
        );
    }
}

/// The shared Redis for tests that do not kill it: `CONCORD_TEST_REDIS` or the local one.
pub fn redis_url() -> String {
    std::env::var("CONCORD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether Postgres and the shared Redis are reachable; in CI their absence fails the test.
pub async fn scale_out_services() -> Option<(String, String)> {
    let pg = database(Backend::Postgres).await?;
    let redis = redis_url();
    let reachable = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(redis.trim_start_matches("redis://")),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !reachable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Redis at {redis} is required in CI");
        }
        eprintln!("SKIPPED: Redis at {redis} unavailable");
        return None;
    }
    Some((pg, redis))
}

/// A `redis-server` of the test's own, on a free port, so the test can kill and restart it.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the scale-out tests");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Compaction folds on a pool of their own, as a server would run them (one at a time, the
/// default byte bound).
pub fn folds() -> concord_server::store::Folds {
    concord_server::store::Folds::new(
        concord_server::cpu::CpuPool::start(1, 16),
        1,
        concord_server::Config::default().compact_bytes,
    )
}
