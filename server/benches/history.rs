//! History benchmark (not a test): a room holding a whole editing trace as committed ops, one
//! op per edit, in a real store; then the document at random seqs cold from the store, the
//! storage cost of keeping history, and a restore of the whole document.
//!
//! ```text
//! cargo bench -p concord-server --bench history                      # automerge-paper, SQLite
//! CONCORD_BENCH_TRACE=seq-friendsforever_flat.json.gz cargo bench -p concord-server --bench history
//! CONCORD_BENCH_DB=postgres://postgres@127.0.0.1:5432/test cargo bench -p concord-server --bench history
//! ```
//!
//! Figures go to docs/benchmarks.md ("History").

use std::time::{Duration, Instant};

use concord_engine::history::{self, Past};
use concord_engine::Document;
use concord_server::api::history::RESTORE_BY_IDS_WITHIN;
use concord_server::store::history::HistoryPolicy;
use concord_server::store::{self, Append, OpMeta};
use rand::{Rng, SeedableRng};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |p: f64| ms(v[((v.len() - 1) as f64 * p).round() as usize]);
    println!(
        "{name:<44} median {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms  ({} samples)",
        at(0.5),
        at(0.95),
        at(1.0),
        v.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trace_name =
        std::env::var("CONCORD_BENCH_TRACE").unwrap_or("seq-automerge-paper.json.gz".into());
    let trace = concord_testkit::traces::load_seq(&trace_name);
    let dir = tempdir();
    let url = std::env::var("CONCORD_BENCH_DB")
        .unwrap_or_else(|_| format!("sqlite://{}/history.db", dir.display()));
    let store = store::connect(&url).await.expect("store");
    let room = format!("hist-bench-{}", std::process::id());
    let policy = HistoryPolicy::default();
    let folds = store::Folds::new(concord_server::cpu::CpuPool::start(1, 16), 1, 8 << 20);

    // Every edit its own op, committed in groups of 500, compacted every 200 ops as a room is.
    let mut doc = Document::new(42);
    doc.insert(0, &trace.start_content).ok();
    let start = Instant::now();
    let (mut batch, mut committed, mut op_bytes) = (Vec::new(), 0u64, 0u64);
    let patches: Vec<_> = trace.patches().cloned().collect();
    for (i, p) in patches.iter().enumerate() {
        let update = doc.replace(p.pos, p.del, &p.ins).expect("edit");
        op_bytes += update.len() as u64;
        batch.push(update);
        if batch.len() == 500 || i + 1 == patches.len() {
            let n = batch.len();
            store
                .append(&[Append {
                    room: room.clone(),
                    updates: std::mem::take(&mut batch),
                    meta: vec![OpMeta::default(); n],
                }])
                .await
                .expect("append");
            let before = committed;
            committed += n as u64;
            if committed / 200 > before / 200 || i + 1 == patches.len() {
                store
                    .compact(&room, &policy, &folds)
                    .await
                    .expect("compact");
            }
        }
    }
    assert_eq!(doc.text(), trace.end_content);
    println!(
        "== {trace_name}: {committed} ops committed into {} in {:.1} s ({} cores)",
        url.split("://").next().unwrap_or("?"),
        start.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // The document at random seqs, cold from the store (read rows + rebuild).
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut times = Vec::new();
    for _ in 0..60 {
        let seq = rng.gen_range(1..=committed);
        let t = Instant::now();
        let rows = store.past(&room, seq).await.expect("past");
        let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
        let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
        let past = Past::build(checkpoint, &ops, seq).expect("build");
        let _ = past.text();
        times.push(t.elapsed());
    }
    summary("state at a random seq, cold (store + rebuild)", times);

    // Storage: what history keeps against the compacted-only store (one snapshot).
    let snapshot = store
        .load(&room)
        .await
        .expect("load")
        .snapshot
        .unwrap_or_default();
    let checkpoints = checkpoint_bytes(&url, &room).await;
    println!(
        "storage: ops {:.1} B/op, checkpoints {:.1} B/op, snapshot {} B \
         (compacted-only keeps {:.2} B/op; history {:.1} B/op, {:.0}x)",
        op_bytes as f64 / committed as f64,
        checkpoints as f64 / committed as f64,
        snapshot.len(),
        snapshot.len() as f64 / committed as f64,
        (op_bytes + checkpoints + snapshot.len() as u64) as f64 / committed as f64,
        (op_bytes + checkpoints + snapshot.len() as u64) as f64 / snapshot.len().max(1) as f64,
    );

    // Restore, as the server computes it: points up to RESTORE_BY_IDS_WITHIN ops back by ids
    // (replaying what was written since), further ones by comparing the texts of two cheap
    // rebuilds. Each point is restored three times and its best time kept (the machine runs
    // other work; the best run is the restore's own cost).
    let head_len = doc.text().len();
    let (mut by_ids, mut by_text, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for back in [
        50u64,
        500,
        1_000,
        2_000,
        5_000,
        20_000,
        committed / 2,
        committed * 2 / 3,
        committed * 9 / 10,
        committed - 1,
    ] {
        let target = committed - back;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(restore(&store, &room, target, committed).await);
        }
        all.push(best);
        if back <= RESTORE_BY_IDS_WITHIN {
            by_ids.push(best);
        } else {
            by_text.push(best);
        }
    }
    let kb = head_len / 1024;
    summary(
        &format!("restore by ids, {kb} KB doc, up to {RESTORE_BY_IDS_WITHIN} ops back"),
        by_ids,
    );
    summary(
        &format!("restore by text, {kb} KB doc, further back"),
        by_text,
    );
    summary(
        &format!("restore, {kb} KB doc, 10 points from 50 ops back to the start"),
        all,
    );

    // Document API: a thin client's positional edits against an older seq, rebased to now as
    // `POST /api/rooms/{id}/edits` does (read the rows at base_seq, rebuild, apply the edits,
    // encode one update), and checked to apply to the head.
    let head_state = store.past(&room, committed).await.expect("past");
    let head_doc = || {
        let ops: Vec<&[u8]> = head_state.ops.iter().map(|r| r.op.as_slice()).collect();
        let checkpoint = head_state.checkpoint.as_ref().map(|(s, _)| s.as_slice());
        history::document_at(5, checkpoint, &ops).expect("head")
    };
    let mut rebases = Vec::new();
    for back in [0u64, 50, 1_000, 20_000, committed / 2, committed - 1] {
        let base_seq = committed - back;
        let mut best = Duration::MAX;
        let mut update = None;
        for _ in 0..3 {
            let t = Instant::now();
            let rows = store.past(&room, base_seq).await.expect("past");
            let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
            let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
            let mut base = history::document_at(80, checkpoint, &ops).expect("rebuild");
            // Ten edits spread over the base text, as a form or a script would send them.
            let len = base.len();
            let edits: Vec<(u32, u32, &str)> = (0..10u32)
                .map(|i| (len / 10 * (9 - i), u32::from(len > 20), "edited "))
                .collect();
            update = history::rebase_edits(&mut base, &edits).expect("rebase");
            best = best.min(t.elapsed());
        }
        let mut head = head_doc();
        assert!(
            head.apply_update(&update.expect("an update"))
                .expect("applies")
                .changed
        );
        rebases.push(best);
    }
    summary(
        &format!("edits rebased from base_seq, {kb} KB doc, 0 ops back to the start"),
        rebases,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// One restore of `room` to `target` as the server computes it (both reads together; by ids
/// near the head, in place in the past built for the restoring client; by text further back,
/// the two rebuilds side by side), checked to read as the target did.
async fn restore(
    store: &std::sync::Arc<dyn store::Store>,
    room: &str,
    target: u64,
    head: u64,
) -> Duration {
    let t = Instant::now();
    if head - target <= RESTORE_BY_IDS_WITHIN {
        let (rows, later) = tokio::try_join!(
            store.past(room, target),
            store.op_rows(room, target + 1, head)
        )
        .expect("rows");
        let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
        let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
        let mut past = Past::build_as(78, checkpoint, &ops, target).expect("build");
        let at = past.snapshot();
        let later: Vec<&[u8]> = later.iter().map(|r| r.op.as_slice()).collect();
        past.advance(&later, head).expect("advance");
        let update = history::restore_in_place(&mut past, &at).expect("restore");
        let took = t.elapsed();
        let then = Past::build(checkpoint, &ops, target).expect("build").text();
        assert_eq!(past.text(), then);
        assert!(update.is_some());
        took
    } else {
        let at = |rows: &concord_server::store::history::PastRows, client| {
            let ops: Vec<&[u8]> = rows.ops.iter().map(|r| r.op.as_slice()).collect();
            let checkpoint = rows.checkpoint.as_ref().map(|(s, _)| s.as_slice());
            history::document_at(client, checkpoint, &ops).expect("rebuild")
        };
        let (then_rows, now_rows) =
            tokio::try_join!(store.past(room, target), store.past(room, head)).expect("past");
        let (then, mut now) = std::thread::scope(|s| {
            let then = s.spawn(|| at(&then_rows, 1).text());
            let now = at(&now_rows, 79);
            (then.join().expect("then"), now)
        });
        let update = history::restore_edits(&mut now, &then).expect("restore");
        let took = t.elapsed();
        let mut check = at(&now_rows, 5);
        if let Some(update) = update {
            check.apply_update(&update).expect("applies");
        }
        assert_eq!(check.text(), then);
        took
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-history-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn checkpoint_bytes(url: &str, room: &str) -> u64 {
    let q = "SELECT COALESCE(SUM(LENGTH(state)), 0) FROM checkpoints WHERE room_id = $1";
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        let n: i64 = sqlx::query_scalar(q)
            .bind(room)
            .fetch_one(&pool)
            .await
            .expect("sum");
        n as u64
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("pg");
        let n: i64 = sqlx::query_scalar(q)
            .bind(room)
            .fetch_one(&pool)
            .await
            .expect("sum");
        n as u64
    }
}
