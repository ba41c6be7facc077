//! `concord`: the sync server binary. Settings come from the environment only (see
//! `concord --help`, generated from `concord_server::config::SETTINGS`), so no secret is ever
//! on a command line where `ps` shows it.
//!
//! Exit codes: 0 after a clean shutdown (or `--help`, `--version`); 2 when the server cannot
//! start because of its settings or the services they name (a bad value, a store or Redis that
//! cannot be reached, a data directory that cannot be written, a port that cannot be bound),
//! with one line on stderr saying which variable and what was expected, passwords redacted.

use std::process::ExitCode;

use concord_server::config::LogFormat;
use concord_server::Config;
use tokio::net::TcpListener;

/// mimalloc instead of glibc's malloc: with thousands of sockets every handshake's short-lived
/// buffers sat between long-lived connection state, and glibc kept the holes (RSS was about
/// twice the live heap per idle connection; see docs/benchmarks.md, "Idle connections").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version `--version` prints: the crate's, and the commit when the build was given one
/// (`CONCORD_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`), with no build script.
fn version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("CONCORD_GIT_COMMIT").filter(|c| !c.is_empty()) {
        Some(commit) => format!("concord {version} ({commit})"),
        None => format!("concord {version}"),
    }
}

fn help() -> String {
    format!(
        "{}\n\
         Concord's sync server: collaborative editing rooms over WebSocket (JSON, y-websocket on\n\
         /yjs/{{room}}, Hocuspocus on /hocuspocus), durable in SQLite or Postgres.\n\n\
         Usage: concord [--help | --version]\n\n\
         Every setting comes from the environment; unset ones take the default shown.\n\
         Endpoints for operators: /healthz (the process answers), /readyz (the store and the\n\
         hub answer: 200, or 503 naming which failed), /metrics (Prometheus text format).\n\n\
         Environment:\n{}",
        version(),
        concord_server::config::settings_help()
    )
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Help,
    Version,
    Unknown(String),
}

/// Two flags and no options (settings are environment variables), so no argument parser.
fn command(mut args: impl Iterator<Item = String>) -> Command {
    match args.next().as_deref() {
        None => Command::Serve,
        Some("-h" | "--help" | "help") => Command::Help,
        Some("-V" | "--version" | "version") => Command::Version,
        Some(other) => Command::Unknown(other.to_owned()),
    }
}

fn main() -> ExitCode {
    match command(std::env::args().skip(1)) {
        Command::Serve => {}
        Command::Help => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", version());
            return ExitCode::SUCCESS;
        }
        // Not echoed: it may be a secret someone tried to pass as an argument.
        Command::Unknown(_) => {
            eprintln!(
                "concord: unexpected argument; settings come from the environment (see concord --help)"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => return startup_failed(&e),
    };
    init_logs(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("concord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(config.addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "concord: cannot listen on HOST:PORT = {}: {e}; expected a free port on an \
                     address of this machine",
                    config.addr
                );
                return ExitCode::from(2);
            }
        };
        // Every error `run` returns comes from opening what the settings name (store, hub,
        // auth keys) before it serves; once serving, it only returns after shutdown.
        match concord_server::run(config, listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => startup_failed(&e),
        }
    })
}

/// Says why the server cannot start (the error names the variable, passwords redacted) and
/// exits 2.
fn startup_failed(e: &concord_server::ServerError) -> ExitCode {
    eprintln!("concord: cannot start: {e}");
    ExitCode::from(2)
}

/// Text or JSON lines, filtered by `RUST_LOG`.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn flags() {
        assert_eq!(command(args(&[])), Command::Serve);
        assert_eq!(command(args(&["--help"])), Command::Help);
        assert_eq!(command(args(&["-h"])), Command::Help);
        assert_eq!(command(args(&["--version"])), Command::Version);
        assert_eq!(
            command(args(&["--port=1"])),
            Command::Unknown("--port=1".to_owned())
        );
    }

    #[test]
    fn help_names_every_setting() {
        let text = help();
        for s in concord_server::config::SETTINGS {
            assert!(text.contains(s.name), "{} missing from --help", s.name);
        }
        assert!(text.contains("default: 8080"));
    }
}
