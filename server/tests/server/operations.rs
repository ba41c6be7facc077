//! Running it like a product: `concord --help` and `--version`, startup errors (exit 2, the
//! variable named, no password), `/readyz` following Redis, `/metrics` under a short load,
//! `METRICS_TOKEN`, and JSON logs that carry no token.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    free_port, http_get, unique, wait_healthy, ChildServer, OwnRedis, TestClient, DEADLINE,
};

const BIN: &str = env!("CARGO_BIN_EXE_concord");

/// A fresh SQLite URL in its own directory.
fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(unique("concord-ops"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}", dir.join("concord.db").display())
}

/// Runs the binary with `args` and `env` (nothing else from this process's environment that
/// the server reads), bounded by [`DEADLINE`]; returns the exit code, stdout and stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOST", "127.0.0.1")
        .env("PORT", free_port().to_string())
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdin(Stdio::null());
    let out = tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("concord exits in time")
        .expect("run concord");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn help_and_version() {
    let (code, help, _) = run(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for setting in concord_server::config::SETTINGS {
        assert!(help.contains(setting.name), "--help lacks {}", setting.name);
    }
    for word in ["/readyz", "/metrics", "default: 8080"] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    let (code, version, _) = run(&["--version"], &[]).await;
    assert_eq!(code, 0);
    assert!(
        version.starts_with(&format!("concord {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let (code, _, err) = run(&["--port", "1"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("environment"), "{err}");
}

pub async fn bad_settings_exit_2_naming_the_variable() {
    const PASSWORD: &str = "hunter2-s3cret";
    let closed = free_port();
    let not_a_dir = std::env::temp_dir().join(unique("concord-file"));
    std::fs::write(&not_a_dir, b"").expect("temp file");
    let unwritable = format!("sqlite://{}/data/concord.db", not_a_dir.display());
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "DATABASE_URL",
            vec![("DATABASE_URL", format!("mysql://u:{PASSWORD}@db/x"))],
        ),
        (
            "DATABASE_URL",
            vec![(
                "DATABASE_URL",
                format!("postgres://u:{PASSWORD}@127.0.0.1:{closed}/x"),
            )],
        ),
        (
            "REDIS_URL",
            vec![
                ("DATABASE_URL", sqlite_url()),
                (
                    "REDIS_URL",
                    format!("redis://:{PASSWORD}@127.0.0.1:{closed}"),
                ),
            ],
        ),
        ("DATABASE_URL", vec![("DATABASE_URL", unwritable)]),
        ("PORT", vec![("PORT", "eighty".to_owned())]),
        ("COMPACT_OPS", vec![("COMPACT_OPS", "-1".to_owned())]),
        ("LOG_FORMAT", vec![("LOG_FORMAT", "xml".to_owned())]),
        ("METRICS", vec![("METRICS", "maybe".to_owned())]),
        (
            "WEBHOOK_URL",
            vec![
                ("DATABASE_URL", sqlite_url()),
                ("WEBHOOK_URL", format!("ftp://u:{PASSWORD}@127.0.0.1/hook")),
                ("WEBHOOK_SECRET", "0123456789abcdef0123".to_owned()),
            ],
        ),
        (
            "WEBHOOK_SECRET",
            vec![
                ("DATABASE_URL", sqlite_url()),
                ("WEBHOOK_URL", "http://127.0.0.1:9/hook".to_owned()),
            ],
        ),
        (
            "WEBHOOK_SECRET",
            vec![
                ("DATABASE_URL", sqlite_url()),
                ("WEBHOOK_URL", "http://127.0.0.1:9/hook".to_owned()),
                ("WEBHOOK_SECRET", PASSWORD.to_owned()),
            ],
        ),
        (
            "WEBHOOK_DEBOUNCE_MS",
            vec![("WEBHOOK_DEBOUNCE_MS", "soon".to_owned())],
        ),
        (
            "WEBHOOK_MAX_DELAY_MS",
            vec![
                ("DATABASE_URL", sqlite_url()),
                ("WEBHOOK_URL", "http://127.0.0.1:9/hook".to_owned()),
                ("WEBHOOK_SECRET", "0123456789abcdef0123".to_owned()),
                ("WEBHOOK_DEBOUNCE_MS", "5000".to_owned()),
                ("WEBHOOK_MAX_DELAY_MS", "1000".to_owned()),
            ],
        ),
    ];
    for (name, env) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, _, err) = run(&[], &env).await;
        assert_eq!(code, 2, "{env:?}: exit {code}, stderr {err}");
        assert!(
            err.contains(name),
            "{env:?}: stderr does not name {name}: {err}"
        );
        assert!(
            err.contains("expected"),
            "{env:?}: says what is expected: {err}"
        );
        assert!(!err.contains(PASSWORD), "{env:?}: password leaked: {err}");
    }
    let _ = std::fs::remove_file(&not_a_dir);
}

/// The value of one sample (`name{labels}` exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let (status, body) = http_get(addr, "/metrics", &[("Authorization", &auth)])
        .await
        .expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until `cond` holds on the exposition text, failing after [`DEADLINE`].
async fn scrape_until(addr: SocketAddr, token: &str, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr, token).await;
        if cond(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never held; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn readyz_follows_redis() {
    let mut redis = OwnRedis::start().await;
    let server = ChildServer::start_with(&sqlite_url(), Some(&redis.url()), free_port()).await;
    let (status, body) = http_get(server.addr, "/readyz", &[]).await.expect("readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"store":"ok","hub":"ok"}"#)
    );

    redis.kill();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        let (status, body) = http_get(server.addr, "/readyz", &[]).await.expect("readyz");
        if status == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never 503: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(v["store"], "ok", "{body}");
    assert_ne!(v["hub"], "ok", "{body}");
    let text = scrape(server.addr, "").await;
    assert_eq!(sample(&text, "concord_hub_up"), 0.0);
    assert_eq!(sample(&text, "concord_store_up"), 1.0);

    redis.restart().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while http_get(server.addr, "/readyz", &[])
        .await
        .expect("readyz")
        .0
        != 200
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn metrics_move_under_load() {
    const TOKEN: &str = "metrics-token-0123456789";
    let env = [("METRICS_TOKEN", TOKEN)];
    let server = ChildServer::start_env(&sqlite_url(), &env, free_port()).await;
    let addr = server.addr;

    // The token binds /metrics.
    let (status, _) = http_get(addr, "/metrics", &[]).await.expect("get");
    assert_eq!(status, 401);
    let (status, _) = http_get(addr, "/metrics", &[("Authorization", "Bearer nope")])
        .await
        .expect("get");
    assert_eq!(status, 401);

    let before = scrape(addr, TOKEN).await;
    let committed_before = sample(&before, "concord_ops_committed_total");
    assert_eq!(
        sample(&before, "concord_connections{protocol=\"json\"}"),
        0.0
    );

    let room = unique("metrics");
    let mut clients: Vec<TestClient> = (0..3)
        .map(|i| TestClient::new(&server.ws_base(), &room, 900 + i))
        .collect();
    for c in clients.iter_mut() {
        c.connect().await;
    }
    let (_yjs, _) = tokio_tungstenite::connect_async(format!("{}/yjs/{room}", server.ws_base()))
        .await
        .expect("y-websocket connect");
    scrape_until(addr, TOKEN, "3 json and 1 y-websocket sockets", |t| {
        sample(t, "concord_connections{protocol=\"json\"}") == 3.0
            && sample(t, "concord_connections{protocol=\"y-websocket\"}") == 1.0
            && sample(t, "concord_rooms_loaded") == 1.0
    })
    .await;

    // Each insert is its own op, acked before the next.
    for round in 0..5 {
        for c in clients.iter_mut() {
            c.session.insert(0, &format!("r{round};")).expect("insert");
            c.send_pending().await;
            let want = c.sent.len();
            c.pump_until(|c| c.acked.len() == want).await;
        }
    }
    let sent: usize = clients.iter().map(|c| c.sent.len()).sum();
    assert_eq!(sent, 15);
    let want = committed_before + sent as f64;
    scrape_until(addr, TOKEN, "ops committed = sent", |t| {
        sample(t, "concord_ops_committed_total") == want
    })
    .await;

    // A malformed frame is answered with an error frame, counted by its code.
    let (mut raw, _) =
        tokio_tungstenite::connect_async(format!("{}/rooms/{room}/ws", server.ws_base()))
            .await
            .expect("raw connect");
    raw.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    scrape_until(addr, TOKEN, "the error frame counted", |t| {
        sample(t, "concord_error_frames_total{code=\"malformed_message\"}") == 1.0
    })
    .await;

    let text = scrape(addr, TOKEN).await;
    assert!(sample(&text, "concord_bytes_in_total") > 0.0);
    assert!(sample(&text, "concord_bytes_out_total") > 0.0);
    assert!(sample(&text, "concord_commit_seconds_count") >= 1.0);
    assert!(sample(&text, "concord_fanout_seconds_count") >= 1.0);
    assert_eq!(sample(&text, "concord_store_up"), 1.0);
    assert_eq!(sample(&text, "concord_hub_up"), 1.0);
    assert_eq!(sample(&text, "concord_connections{protocol=\"json\"}"), 4.0);
    assert!(!text.contains(&room), "no room id in labels");

    drop(raw);
    drop(_yjs);
    for c in clients.iter_mut() {
        c.disconnect();
    }
    scrape_until(addr, TOKEN, "every socket closed", |t| {
        sample(t, "concord_connections{protocol=\"json\"}") == 0.0
            && sample(t, "concord_connections{protocol=\"y-websocket\"}") == 0.0
    })
    .await;
}

pub async fn metrics_can_be_turned_off() {
    let server = ChildServer::start_env(&sqlite_url(), &[("METRICS", "off")], free_port()).await;
    let (status, _) = http_get(server.addr, "/metrics", &[]).await.expect("get");
    assert_eq!(status, 404);
    let (status, _) = http_get(server.addr, "/readyz", &[]).await.expect("get");
    assert_eq!(status, 200);
}

pub async fn json_logs_carry_no_token() {
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.bm90LWEtc2lnbmF0dXJl";
    let port = free_port();
    let mut child = std::process::Command::new(BIN)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", sqlite_url())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("CONCORD_AUTH", "tokens")
        .env("CONCORD_AUTH_SECRET", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn concord");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().expect("stdout");
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines").push(line);
        }
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_healthy(addr).await;
    // A forged token on the URL and in a header: refused, and never logged.
    let url = format!("ws://{addr}/rooms/logs/ws?token={TOKEN}");
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = http_get(addr, "/api/me", &[("Authorization", &bearer)])
        .await
        .expect("get");
    assert_ne!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let lines = lines.lock().expect("lines");
    assert!(!lines.is_empty(), "the server logged nothing");
    let mut listening = false;
    for line in lines.iter() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        listening |= v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("concord listening"));
        assert!(!line.contains(TOKEN), "token logged: {line}");
        assert!(
            !line.contains("c2VjcmV0LXRva2Vu"),
            "token part logged: {line}"
        );
    }
    assert!(listening, "no startup line in {lines:?}");
}
