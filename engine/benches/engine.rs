//! Engine vs raw yrs on the B4 trace (`seq-automerge-paper`: ~260k single-character edits).
//!
//! Every engine measurement sits in one criterion group beside the same work done with raw yrs
//! in the same run, so the ratio engine/raw is read off one report (see `docs/benchmarks.md`).
//!
//! - `local`: apply every edit locally.
//! - `remote`: apply the ~260k per-edit updates one by one (and, the engine's batched path,
//!   64 queued updates merged per apply, as a client does per animation frame).
//! - `encode_load`: encode the final document as one update, and load it into a fresh doc.
//! - `offline_replay`: 10,000 offline edits, then reconnect and replay them into a room.
//!
//! Run with `cargo bench -p concord-engine`. The trace is loaded once, outside every timing loop.

use std::time::Duration;

use concord_engine::room::{CompactionPolicy, ConnId, RoomEvent, RoomState};
use concord_engine::wire::{decode_b64, ClientMessage, ServerMessage};
use concord_engine::{ClientSession, Document};
use concord_testkit::traces;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use yrs::block::ClientID;
use yrs::updates::decoder::Decode;
use yrs::{
    Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact, Update,
};

/// One edit of the trace: at `pos` delete `del` UTF-16 units, then insert `ins`.
struct Edit {
    pos: u32,
    del: u32,
    ins: String,
}

/// The trace, loaded once.
struct Trace {
    edits: Vec<Edit>,
    end_content: String,
}

fn load_trace() -> Trace {
    let trace = traces::load_seq(traces::AUTOMERGE_PAPER);
    assert!(trace.start_content.is_empty(), "the B4 trace starts empty");
    assert!(
        trace.end_content.is_ascii(),
        "offsets are UTF-16 only for ASCII"
    );
    let edits = trace
        .patches()
        .map(|p| Edit {
            pos: p.pos,
            del: p.del,
            ins: p.ins.clone(),
        })
        .collect();
    Trace {
        edits,
        end_content: trace.end_content,
    }
}

/// A raw yrs document configured as the engine configures its own (UTF-16 offsets).
fn raw_doc(client_id: u64) -> (Doc, TextRef) {
    let doc = Doc::with_options(Options {
        client_id: ClientID::new(client_id),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let text = doc.get_or_insert_text("body");
    (doc, text)
}

fn raw_text(doc: &Doc, text: &TextRef) -> String {
    text.get_string(&doc.transact())
}

/// Applies the edits to a raw yrs doc, one transaction each.
fn raw_apply_all(edits: &[Edit], client_id: u64) -> (Doc, TextRef) {
    let (doc, text) = raw_doc(client_id);
    for e in edits {
        let mut txn = doc.transact_mut();
        if e.del > 0 {
            text.remove_range(&mut txn, e.pos, e.del);
        }
        if !e.ins.is_empty() {
            text.insert(&mut txn, e.pos, &e.ins);
        }
    }
    (doc, text)
}

/// Settings for groups whose single iteration takes seconds: ten samples of one iteration.
fn slow_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    elements: usize,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(elements as u64));
    group
}

fn local(c: &mut Criterion, trace: &Trace) {
    let edits = &trace.edits;
    let mut group = slow_group(c, "local", edits.len());

    group.bench_function("raw_yrs", |b| {
        b.iter_with_large_drop(|| raw_apply_all(edits, 1))
    });

    group.bench_function("engine_client_session_flush16", |b| {
        b.iter_with_large_drop(|| {
            let mut session = ClientSession::new(1, "bench");
            for (i, e) in edits.iter().enumerate() {
                session.replace(e.pos, e.del, &e.ins).unwrap();
                if i % 16 == 15 {
                    session.flush().unwrap();
                }
            }
            session.flush().unwrap();
            session
        })
    });

    group.bench_function("engine_document_replace", |b| {
        b.iter_with_large_drop(|| {
            let mut doc = Document::new(1);
            for e in edits {
                doc.replace(e.pos, e.del, &e.ins).unwrap();
            }
            doc
        })
    });

    group.finish();
}

/// The per-edit v2 updates of the trace, from raw yrs (one transaction per edit).
fn per_edit_updates(trace: &Trace) -> Vec<Vec<u8>> {
    let (doc, text) = raw_doc(1);
    let updates: Vec<Vec<u8>> = trace
        .edits
        .iter()
        .map(|e| {
            let mut txn = doc.transact_mut();
            if e.del > 0 {
                text.remove_range(&mut txn, e.pos, e.del);
            }
            if !e.ins.is_empty() {
                text.insert(&mut txn, e.pos, &e.ins);
            }
            txn.encode_update_v2()
        })
        .collect();
    assert_eq!(raw_text(&doc, &text), trace.end_content);
    updates
}

fn remote(c: &mut Criterion, trace: &Trace) {
    let updates = &per_edit_updates(trace);
    // Checked once, outside the timings: each path reaches the trace's end.
    let mut check = Document::new(2);
    for chunk in updates.chunks(64) {
        check.apply_updates(chunk).unwrap();
    }
    assert_eq!(check.text(), trace.end_content);

    let mut group = slow_group(c, "remote", updates.len());

    group.bench_function("raw_yrs", |b| {
        b.iter_with_large_drop(|| {
            let (doc, text) = raw_doc(2);
            for u in updates {
                let update = Update::decode_v2(u).unwrap();
                doc.transact_mut().apply_update(update).unwrap();
            }
            (doc, text)
        })
    });

    group.bench_function("engine_apply_update", |b| {
        b.iter_with_large_drop(|| {
            let mut doc = Document::new(2);
            for u in updates {
                doc.apply_update(u).unwrap();
            }
            doc
        })
    });

    group.bench_function("raw_yrs_merge64", |b| {
        b.iter_with_large_drop(|| {
            let (doc, text) = raw_doc(2);
            for chunk in updates.chunks(64) {
                let merged = yrs::merge_updates_v2(chunk).unwrap();
                let update = Update::decode_v2(&merged).unwrap();
                doc.transact_mut().apply_update(update).unwrap();
            }
            (doc, text)
        })
    });

    group.bench_function("engine_apply_updates64", |b| {
        b.iter_with_large_drop(|| {
            let mut doc = Document::new(2);
            for chunk in updates.chunks(64) {
                doc.apply_updates(chunk).unwrap();
            }
            doc
        })
    });

    group.finish();
}

fn encode_load(c: &mut Criterion, trace: &Trace) {
    let (raw, raw_body) = raw_apply_all(&trace.edits, 1);
    let mut engine = Document::new(1);
    for e in &trace.edits {
        engine.replace_silent(e.pos, e.del, &e.ins).unwrap();
    }
    let raw_state = raw
        .transact()
        .encode_state_as_update_v2(&StateVector::default());
    let engine_state = engine.encode_state_as_update(None).unwrap();
    assert_eq!(
        raw_state, engine_state,
        "same history, same client id, same bytes"
    );
    assert_eq!(raw_text(&raw, &raw_body), trace.end_content);

    let mut group = c.benchmark_group("encode_load");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(raw_state.len() as u64));

    group.bench_function("encode/raw_yrs", |b| {
        b.iter(|| {
            raw.transact()
                .encode_state_as_update_v2(&StateVector::default())
        })
    });
    group.bench_function("encode/engine", |b| {
        b.iter(|| engine.encode_state_as_update(None).unwrap())
    });
    group.bench_function("load/raw_yrs", |b| {
        b.iter_with_large_drop(|| {
            let (doc, text) = raw_doc(3);
            let update = Update::decode_v2(&raw_state).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
            (doc, text)
        })
    });
    group.bench_function("load/engine", |b| {
        b.iter_with_large_drop(|| Document::from_update(3, &engine_state).unwrap())
    });

    group.finish();
}

/// Edits in the offline queue of `offline_replay`.
const OFFLINE_EDITS: usize = 10_000;

/// The engine's whole offline-then-reconnect path; returns the room (its text is the result).
fn engine_offline_replay(edits: &[Edit]) -> (ClientSession, RoomState) {
    let mut session = ClientSession::new(1, "bench");
    for e in edits {
        session.replace(e.pos, e.del, &e.ins).unwrap();
        session.flush().unwrap();
    }
    let mut room = RoomState::new(CompactionPolicy::default(), 0);
    let sv = decode_b64("sv", &session.connect()).unwrap();
    session
        .handle_message(room.sync_for(Some(&sv)).unwrap())
        .unwrap();
    let Some(ClientMessage::Op { id, update, .. }) = session.poll_transmit() else {
        panic!("the offline queue is resent as one op");
    };
    assert!(session.poll_transmit().is_none());
    room.handle_op(ConnId(1), id, &update).unwrap();
    room.take_batch().unwrap();
    room.handle_committed(room.seq() + 1).unwrap();
    while let Some(event) = room.poll_event() {
        if let RoomEvent::Ack { id, seq, .. } = event {
            session
                .handle_message(ServerMessage::Ack { id, seq })
                .unwrap();
        }
    }
    (session, room)
}

/// The same with raw yrs: edits on A, then what B lacks (A's diff against B's state vector).
fn raw_offline_replay(edits: &[Edit]) -> ((Doc, TextRef), (Doc, TextRef)) {
    let a = raw_apply_all(edits, 1);
    let b = raw_doc(0);
    let sv = b.0.transact().state_vector();
    let diff = a.0.transact().encode_state_as_update_v2(&sv);
    let update = Update::decode_v2(&diff).unwrap();
    b.0.transact_mut().apply_update(update).unwrap();
    (a, b)
}

fn offline_replay(c: &mut Criterion, trace: &Trace) {
    let edits = &trace.edits[..OFFLINE_EDITS.min(trace.edits.len())];
    let (session, room) = engine_offline_replay(edits);
    assert_eq!(session.pending_count(), 0, "the replay is acked");
    let (a, b) = raw_offline_replay(edits);
    assert_eq!(room.text(), raw_text(&b.0, &b.1));
    assert_eq!(session.text(), raw_text(&a.0, &a.1));

    let mut group = c.benchmark_group("offline_replay");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(edits.len() as u64));
    group.bench_function("raw_yrs", |b| {
        b.iter_batched(
            || (),
            |()| raw_offline_replay(edits),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("engine", |b| {
        b.iter_batched(
            || (),
            |()| engine_offline_replay(edits),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let trace = load_trace();
    local(c, &trace);
    remote(c, &trace);
    encode_load(c, &trace);
    offline_replay(c, &trace);
}

criterion_group!(engine, benches);
criterion_main!(engine);
