//! Store faults at the `Store`/`Committer` level, against SQLite and the local Postgres: a
//! stalled store answers a commit with a typed timeout within its bound and commits again
//! once released; one poisoned room does not fail the rooms it was grouped with; a pool whose
//! connections were killed serves the next commit.
//!
//! Postgres runs in a private schema per test (`search_path` set through the URL), so holding
//! `LOCK TABLE ops` stalls only this test's store, not the suites sharing the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_server::store::committer::{commit_group, Committer};
use concord_server::store::{self, Append, Store, StoreTimeouts};
use sqlx::{Connection, Executor};
use tokio_util::task::TaskTracker;

use crate::support::{self, Backend};

/// Short bounds so the tests are quick; the statement bound is below the commit bound, as in
/// the defaults.
const BOUND: StoreTimeouts = StoreTimeouts {
    commit: Duration::from_millis(1500),
    statement: Duration::from_millis(500),
};

/// Scheduling slack on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// One test's database: a fresh SQLite file, or a fresh schema in the shared Postgres.
struct Db {
    backend: Backend,
    url: String,
    schema: Option<String>,
}

impl Db {
    async fn open(backend: Backend) -> Option<Db> {
        let base = support::database(backend).await?;
        if backend == Backend::Sqlite {
            return Some(Db {
                backend,
                url: base,
                schema: None,
            });
        }
        let schema = support::unique("faults").replace('-', "_");
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("pg admin");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url =
            format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
        Some(Db {
            backend,
            url,
            schema: Some(schema),
        })
    }

    async fn store(&self, timeouts: StoreTimeouts) -> Arc<dyn Store> {
        store::connect_with(&self.url, timeouts)
            .await
            .expect("store opens")
    }

    /// Takes the whole store's write lock from another connection, as another process would.
    async fn hold_write_lock(&self) -> Holder {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("second sqlite connection");
                conn.execute(sqlx::raw_sql("BEGIN IMMEDIATE"))
                    .await
                    .expect("BEGIN IMMEDIATE");
                Holder::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("second pg connection");
                conn.execute(sqlx::raw_sql(
                    "BEGIN; LOCK TABLE ops IN ACCESS EXCLUSIVE MODE",
                ))
                .await
                .expect("LOCK TABLE");
                Holder::Pg(conn)
            }
        }
    }

    async fn drop_schema(self) {
        if let Some(schema) = self.schema {
            let mut admin = sqlx::PgConnection::connect(&support::pg_url())
                .await
                .expect("pg admin");
            admin
                .execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await
                .expect("drop schema");
        }
    }
}

enum Holder {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Holder {
    async fn release(self) {
        match self {
            Holder::Sqlite(mut c) => {
                c.execute(sqlx::raw_sql("ROLLBACK")).await.expect("release");
            }
            Holder::Pg(mut c) => {
                c.execute(sqlx::raw_sql("ROLLBACK")).await.expect("release");
            }
        }
    }
}

/// One real update (client `n` types a character): compaction folds what it reads, so the
/// ops must be updates, and independent ones, so any subset folds.
fn op(n: u8) -> Vec<Vec<u8>> {
    let mut doc = concord_engine::Document::new(u64::from(n));
    vec![doc.insert(0, "x").expect("an insert encodes")]
}

/// Runs `call`, returning its result and how long it took.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = call.await;
    (out, start.elapsed())
}

/// The store's write lock held by another connection past the commit bound: the commit (and a
/// compaction, whose read and fold go on but whose write waits) fail with a typed timeout
/// within the bound, nothing is half-written, and the
/// next commit after the release succeeds on the same store.
pub async fn stalled_store_times_out_then_recovers(backend: Backend) {
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let store = db.store(BOUND).await;
    let tracker = TaskTracker::new();
    let committer = Committer::start(store.clone(), &tracker);
    let room = support::unique("stalled");
    assert_eq!(
        committer
            .commit(room.clone(), op(1), Vec::new())
            .await
            .expect("warm"),
        1
    );

    let holder = db.hold_write_lock().await;
    let (result, took) = timed(committer.commit(room.clone(), op(2), Vec::new())).await;
    let err = result.expect_err("no commit while the store is locked");
    eprintln!("{backend:?}: stalled commit -> `{err}` after {took:?}");
    assert!(err.is_timeout(), "typed timeout, got {err:?}");
    assert!(took <= BOUND.commit + MARGIN, "answered after {took:?}");

    let (compacted, took) =
        timed(store.compact(&room, &Default::default(), &support::folds())).await;
    let err = compacted.expect_err("no compaction while the store is locked");
    eprintln!("{backend:?}: stalled compact -> `{err}` after {took:?}");
    assert!(err.is_timeout(), "typed timeout, got {err:?}");
    assert!(took <= BOUND.commit + MARGIN, "answered after {took:?}");

    let (loaded, took) = timed(store.load(&room)).await;
    eprintln!(
        "{backend:?}: load under the write lock -> ok={} after {took:?}",
        loaded.is_ok()
    );
    match backend {
        // WAL readers do not wait for the writer.
        Backend::Sqlite => assert_eq!(loaded.expect("wal read").ops.len(), 1),
        Backend::Postgres => assert!(loaded.expect_err("ACCESS EXCLUSIVE").is_timeout()),
    }
    assert!(took <= BOUND.commit + MARGIN, "answered after {took:?}");

    holder.release().await;
    let (result, took) = timed(committer.commit(room.clone(), op(3), Vec::new())).await;
    eprintln!("{backend:?}: commit after release took {took:?}");
    // Seq 2 again: the failed commit left nothing behind.
    assert_eq!(result.expect("commits once the lock is released"), 2);
    let loaded = store.load(&room).await.expect("load");
    assert_eq!(loaded.ops, vec![(1, op(1).remove(0)), (2, op(3).remove(0))]);
    drop(committer);
    tracker.close();
    db.drop_schema().await;
}

/// With the database's own bound longer than the commit bound, the committer's deadline is
/// what answers; the abandoned transaction does not break the store for the next commit.
pub async fn commit_deadline_bounds_a_hung_commit(backend: Backend) {
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let bound = StoreTimeouts {
        commit: Duration::from_millis(1000),
        statement: Duration::from_secs(30),
    };
    let store = db.store(bound).await;
    let tracker = TaskTracker::new();
    let committer = Committer::start(store.clone(), &tracker);
    let room = support::unique("hung");
    assert_eq!(
        committer
            .commit(room.clone(), op(1), Vec::new())
            .await
            .expect("warm"),
        1
    );

    let holder = db.hold_write_lock().await;
    let (result, took) = timed(committer.commit(room.clone(), op(2), Vec::new())).await;
    let err = result.expect_err("no commit while the store is locked");
    eprintln!("{backend:?}: hung commit -> `{err}` after {took:?}");
    assert!(err.is_timeout(), "typed timeout, got {err:?}");
    assert!(took <= bound.commit + MARGIN, "answered after {took:?}");

    holder.release().await;
    let (result, took) = timed(committer.commit(room.clone(), op(3), Vec::new())).await;
    eprintln!("{backend:?}: commit after release took {took:?}");
    assert_eq!(result.expect("commits once the lock is released"), 2);
    drop(committer);
    tracker.close();
    db.drop_schema().await;
}

/// A room the database rejects (SQLite: a trigger refusing its inserts; Postgres: a NUL byte
/// in its id, which `text` refuses) fails alone; the rooms grouped with it commit.
pub async fn poisoned_room_fails_alone(backend: Backend) {
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let store = db.store(BOUND).await;
    let good_a = support::unique("good-a");
    let good_b = support::unique("good-b");
    let bad = match backend {
        Backend::Sqlite => {
            let bad = support::unique("poisoned");
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("sqlite");
            conn.execute(sqlx::AssertSqlSafe(format!(
                "CREATE TRIGGER poison BEFORE INSERT ON ops WHEN NEW.room_id = '{bad}' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned room'); END"
            )))
            .await
            .expect("trigger");
            bad
        }
        Backend::Postgres => format!("{}\0", support::unique("poisoned")),
    };
    let batch = vec![
        Append {
            room: good_a.clone(),
            updates: op(1),
            meta: Vec::new(),
        },
        Append {
            room: bad.clone(),
            updates: op(2),
            meta: Vec::new(),
        },
        Append {
            room: good_b.clone(),
            updates: vec![vec![3; 8], vec![4; 8]],
            meta: Vec::new(),
        },
    ];
    let (results, took) = timed(commit_group(store.as_ref(), &batch)).await;
    eprintln!("{backend:?}: group with a poisoned room took {took:?}: {results:?}");
    assert_eq!(results.len(), 3);
    assert_eq!(*results[0].as_ref().expect("good room a commits"), 1);
    assert_eq!(*results[2].as_ref().expect("good room b commits"), 1);
    let err = results[1].as_ref().expect_err("poisoned room fails");
    assert!(!err.is_timeout(), "the database's refusal, got {err:?}");
    assert!(took <= BOUND.commit + MARGIN, "answered after {took:?}");
    assert_eq!(store.load(&good_b).await.expect("load").ops.len(), 2);
    db.drop_schema().await;
}

/// Postgres: one room's advisory lock held by another session (a stuck instance) fails only
/// that room's commit, within the bound; its group neighbour commits.
pub async fn room_locked_elsewhere_fails_alone(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let store = db.store(BOUND).await;
    let locked = support::unique("locked");
    let free = support::unique("free");
    let mut other = sqlx::PgConnection::connect(&db.url).await.expect("pg");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 7217))")
        .bind(&locked)
        .execute(&mut other)
        .await
        .expect("advisory lock");
    let batch = vec![
        Append {
            room: locked.clone(),
            updates: op(1),
            meta: Vec::new(),
        },
        Append {
            room: free.clone(),
            updates: op(2),
            meta: Vec::new(),
        },
    ];
    let (results, took) = timed(commit_group(store.as_ref(), &batch)).await;
    eprintln!("{backend:?}: group with a room locked elsewhere took {took:?}: {results:?}");
    let err = results[0].as_ref().expect_err("locked room fails");
    assert!(err.is_timeout(), "typed timeout, got {err:?}");
    assert_eq!(*results[1].as_ref().expect("free room commits"), 1);
    assert!(took <= BOUND.commit + MARGIN, "answered after {took:?}");

    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut other)
        .await
        .expect("unlock");
    let again = commit_group(store.as_ref(), &batch[..1]).await;
    assert_eq!(*again[0].as_ref().expect("commits once unlocked"), 1);
    db.drop_schema().await;
}

/// Postgres: every connection of the store killed (a database restart, a failover) — the next
/// commit gets a fresh connection from the pool instead of an error, without a restart.
pub async fn killed_connections_are_replaced(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let store = db.store(BOUND).await;
    let room = support::unique("killed");
    assert_eq!(
        *commit_group(
            store.as_ref(),
            &[Append {
                room: room.clone(),
                updates: op(1),
                meta: Vec::new(),
            }]
        )
        .await[0]
            .as_ref()
            .expect("warm"),
        1
    );
    let schema = db.schema.clone().expect("pg schema");
    let mut admin = sqlx::PgConnection::connect(&support::pg_url())
        .await
        .expect("pg");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&schema)
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(killed >= 1, "the store had connections to kill");
    let (result, took) = timed(commit_group(
        store.as_ref(),
        &[Append {
            room: room.clone(),
            updates: op(2),
            meta: Vec::new(),
        }],
    ))
    .await;
    eprintln!("{backend:?}: commit after killing {killed} connections took {took:?}");
    assert_eq!(*result[0].as_ref().expect("commits on a new connection"), 2);
    db.drop_schema().await;
}

/// Connection failures name the store and the reason, never the password in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_do_not_echo_passwords() {
    let secret = "hunter2-Pa%24%24";
    for url in [
        format!("postgres://concord:{secret}@127.0.0.1:1/concord"),
        format!("mysql://concord:{secret}@127.0.0.1/concord"),
    ] {
        let (opened, took) = timed(store::connect_with(&url, BOUND)).await;
        let err = match opened {
            Ok(_) => panic!("{url} must not open"),
            Err(e) => e,
        };
        let text = format!("{err} / {err:?}");
        eprintln!("store connect failed after {took:?}: {err}");
        assert!(!text.contains("hunter2"), "store error leaks: {text}");
        assert!(text.contains("***"), "names the redacted target: {text}");
    }
    // Redis answers AUTH with an error when it has no password set, or refuses a wrong one.
    let redis = format!("redis://:{secret}@127.0.0.1:6379");
    let (opened, took) = timed(concord_server::hub::connect(Some(&redis))).await;
    eprintln!(
        "hub connect with a password took {took:?}: ok={}",
        opened.is_ok()
    );
    if let Err(err) = opened {
        let text = format!("{err} / {err:?}");
        assert!(!text.contains("hunter2"), "hub error leaks: {text}");
    }
    // A URL the client refuses outright.
    let malformed = format!("redis://:{secret}@[::1");
    let err = match concord_server::hub::connect(Some(&malformed)).await {
        Ok(_) => panic!("malformed URL"),
        Err(e) => e,
    };
    let text = format!("{err} / {err:?}");
    eprintln!("hub connect failed: {err}");
    assert!(!text.contains("hunter2"), "hub error leaks: {text}");
}

mod sqlite {
    use crate::support::Backend::Sqlite;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_store_times_out_then_recovers() {
        super::stalled_store_times_out_then_recovers(Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_deadline_bounds_a_hung_commit() {
        super::commit_deadline_bounds_a_hung_commit(Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poisoned_room_fails_alone() {
        super::poisoned_room_fails_alone(Sqlite).await
    }
}

mod postgres {
    use crate::support::Backend::Postgres;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_store_times_out_then_recovers() {
        super::stalled_store_times_out_then_recovers(Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_deadline_bounds_a_hung_commit() {
        super::commit_deadline_bounds_a_hung_commit(Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poisoned_room_fails_alone() {
        super::poisoned_room_fails_alone(Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn room_locked_elsewhere_fails_alone() {
        super::room_locked_elsewhere_fails_alone(Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_connections_are_replaced() {
        super::killed_connections_are_replaced(Postgres).await
    }
}
