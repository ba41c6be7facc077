//! Trace replays: real editing histories (`testdata/traces`, Joseph Gentle's `editing-traces`)
//! replayed through the engine must end at the trace's `endContent`, and every replica that saw
//! the same updates must encode to the same bytes.
//!
//! - Sequential traces go through a [`Document`], a [`ClientSession`] working offline, and a
//!   second replica that only ever sees the first one's updates as remote updates.
//! - The concurrent trace is replayed with one replica per agent: before each transaction the
//!   agent's replica is brought to exactly the version the transaction was made on (the merge of
//!   its parents) by applying the other agents' missing updates, merged into one.

use concord_engine::doc::merge_updates;
use concord_engine::{ClientMessage, ClientSession, Document, ServerMessage, SessionStatus};
use concord_testkit::traces::{self, ConcTrace, Patch, SeqTrace};

/// Applies one trace patch (delete, then insert, in one transaction); returns its update.
fn apply_patch(doc: &mut Document, patch: &Patch) -> Vec<u8> {
    doc.replace(patch.pos, patch.del, &patch.ins)
        .unwrap_or_else(|e| panic!("patch {patch:?} on a text of {} units: {e}", doc.len()))
}

/// The traces are ASCII, so their character offsets are UTF-16 offsets. Checked, not assumed.
fn assert_ascii_seq(trace: &SeqTrace) {
    assert!(trace.start_content.is_ascii() && trace.end_content.is_ascii());
    assert!(trace.patches().all(|p| p.ins.is_ascii()));
}

/// How many edits a [`ClientSession`] collects before each flush (an animation frame's worth).
const FLUSH_EVERY: usize = 16;

fn replay_sequential(name: &str) {
    let trace = traces::load_seq(name);
    assert_ascii_seq(&trace);
    let patches: Vec<&Patch> = trace.patches().collect();
    assert!(!patches.is_empty(), "{name}: no patches");

    // 1. A Document, one transaction per patch, finding its places from position marks; a
    //    second replica applies each update remotely; a third, tracking changes as an editor
    //    binding does, replays every reported change list on a copy of the text.
    let mut local = Document::new(1);
    local.index_positions();
    let mut remote = Document::new(2);
    let mut tracked = Document::new(3);
    tracked.track_changes();
    let mut mirror = String::new();
    if !trace.start_content.is_empty() {
        let u = local.insert(0, &trace.start_content).unwrap();
        remote.apply_update(&u).unwrap();
        tracked.apply_update(&u).unwrap();
        replay_changes(&mut mirror, &tracked.take_changes());
    }
    for (i, patch) in patches.iter().enumerate() {
        let update = apply_patch(&mut local, patch);
        let applied = remote
            .apply_update(&update)
            .unwrap_or_else(|e| panic!("{name}: remote apply of edit {i}: {e}"));
        assert!(
            !applied.pending,
            "{name}: edit {i} left pending on the remote replica"
        );
        tracked.apply_update(&update).unwrap();
        replay_changes(&mut mirror, &tracked.take_changes());
        if i % 4096 == 0 {
            assert_eq!(
                mirror,
                tracked.text(),
                "{name}: changes replayed to edit {i}"
            );
        }
    }
    assert_eq!(local.text(), trace.end_content, "{name}: local document");
    assert_eq!(remote.text(), trace.end_content, "{name}: remote replica");
    assert_eq!(mirror, trace.end_content, "{name}: changes replayed");
    assert!(!remote.has_pending());
    let local_state = local.encode_state_as_update(None).unwrap();
    assert_eq!(
        local_state,
        remote.encode_state_as_update(None).unwrap(),
        "{name}: local and remote replicas encode differently"
    );
    assert_eq!(local.state_vector(), remote.state_vector());

    // 2. A ClientSession, offline, flushing every FLUSH_EVERY edits. Same client id as `local`
    //    and the same one-transaction-per-edit history, so the document must be byte-equal
    //    (which also proves that edits placed from position marks get the origins a walk from
    //    the start gives: the session does not index positions).
    let mut session = ClientSession::new(1, "trace");
    if !trace.start_content.is_empty() {
        session.insert(0, &trace.start_content).unwrap();
    }
    for (i, patch) in patches.iter().enumerate() {
        session
            .replace(patch.pos, patch.del, &patch.ins)
            .unwrap_or_else(|e| panic!("{name}: session edit {i}: {e}"));
        if (i + 1) % FLUSH_EVERY == 0 {
            session.flush().unwrap();
        }
    }
    session.flush().unwrap();
    assert_eq!(session.status(), SessionStatus::Offline);
    assert_eq!(session.text(), trace.end_content, "{name}: client session");
    assert_eq!(
        session.pending_count(),
        1,
        "{name}: an offline queue is one op"
    );
    assert_eq!(
        session.document().encode_state_as_update(None).unwrap(),
        local_state,
        "{name}: session and local document encode differently"
    );
    assert!(
        session.poll_transmit().is_none(),
        "offline: nothing to send"
    );

    // 3. The offline queue itself carries the whole history: exported and restored, and sent
    //    as one op when the server's sync gives no state vector (so the session resends its
    //    pending ops merged, rather than a diff of its document).
    let saved = session.export_state().unwrap();
    let mut restored = ClientSession::import_state(3, "restored", &saved).unwrap();
    assert_eq!(restored.text(), trace.end_content, "{name}: exported state");
    assert_eq!(restored.pending_count(), 1);
    for (label, s) in [("session", &mut session), ("restored", &mut restored)] {
        let queued = resend_without_state_vector(s);
        let replayed = Document::from_update(4, &queued).unwrap();
        assert_eq!(replayed.text(), trace.end_content, "{name}: {label} queue");
        assert_eq!(
            replayed.encode_state_as_update(None).unwrap(),
            local_state,
            "{name}: {label} queue rebuilds a different document"
        );
    }
}

/// Applies a change list to an ASCII text (character offsets are UTF-16 offsets).
fn replay_changes(text: &mut String, changes: &[concord_engine::TextChange]) {
    for c in changes {
        let at = c.index as usize;
        text.replace_range(at..at + c.delete as usize, &c.insert);
    }
}

/// Connects `session` to a server that sends an empty sync without its state vector; returns
/// the one op the session resends.
fn resend_without_state_vector(session: &mut ClientSession) -> Vec<u8> {
    session.connect();
    let empty = Document::new(0).encode_state_as_update(None).unwrap();
    session
        .handle_message(ServerMessage::Sync {
            state: empty,
            sv: None,
            seq: 0,
        })
        .unwrap();
    assert_eq!(session.status(), SessionStatus::Online);
    let ops: Vec<(Option<String>, Vec<u8>)> = std::iter::from_fn(|| session.poll_transmit())
        .filter_map(|msg| match msg {
            ClientMessage::Op { id, update, .. } => Some((id, update)),
            _ => None,
        })
        .collect();
    match ops.as_slice() {
        [(Some(_), update)] => update.clone(),
        other => panic!("expected one op with an id, got {}", other.len()),
    }
}

#[test]
fn automerge_paper_replays_to_end_content() {
    replay_sequential(traces::AUTOMERGE_PAPER);
}

#[test]
fn friendsforever_flat_replays_to_end_content() {
    replay_sequential(traces::FRIENDSFOREVER_FLAT);
}

/// The other sequential traces of the collection: code with multi-cursor edits and
/// refactorings, blog posts with large pastes, a two-person session flattened.
#[test]
fn every_other_sequential_trace_replays_to_end_content() {
    for name in [
        "seq-rustcode.json.gz",
        "seq-sveltecomponent.json.gz",
        "seq-seph-blog1.json.gz",
        "seq-json-crdt-patch.json.gz",
        "seq-json-crdt-blog-post.json.gz",
        "seq-clownschool_flat.json.gz",
    ] {
        replay_sequential(name);
    }
}

/// A version of the concurrent trace: for each agent, how many of its transactions (a prefix
/// of its chain) are included.
type Version = Vec<usize>;

/// The causal structure of a concurrent trace.
struct Causal {
    /// For each agent, the indexes of its transactions in order.
    chains: Vec<Vec<usize>>,
    /// For each transaction, the version its patches apply to (the merge of its parents).
    base: Vec<Version>,
}

/// Computes each transaction's base version, checking that every agent's transactions form a
/// chain (each one sees all earlier ones of the same agent), which makes versions downward
/// closed: the history of a version is exactly the per-agent prefixes it names.
fn causal(trace: &ConcTrace) -> Causal {
    let n = trace.num_agents;
    let mut chains: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut base: Vec<Version> = Vec::with_capacity(trace.txns.len());
    let mut after: Vec<Version> = Vec::with_capacity(trace.txns.len());
    for (i, txn) in trace.txns.iter().enumerate() {
        assert!(txn.agent < n, "txn {i}: agent {} of {n}", txn.agent);
        let mut version = vec![0; n];
        for &p in &txn.parents {
            assert!(p < i, "txn {i}: parent {p} is not earlier");
            for (v, pv) in version.iter_mut().zip(&after[p]) {
                *v = (*v).max(*pv);
            }
        }
        assert_eq!(
            version[txn.agent],
            chains[txn.agent].len(),
            "txn {i}: agent {} does not see its own previous transaction",
            txn.agent
        );
        base.push(version.clone());
        version[txn.agent] += 1;
        after.push(version);
        chains[txn.agent].push(i);
    }
    Causal { chains, base }
}

/// One agent's replica and the version it holds.
struct Replica {
    doc: Document,
    version: Version,
}

/// A replica's client id: distinct per agent, and never 0 (the room's id).
fn client_id(agent: usize) -> u64 {
    agent as u64 + 1
}

/// The updates of `agent`'s transactions `from..to` (chain positions), merged into one.
fn chain_updates(
    causal: &Causal,
    updates: &[Option<Vec<u8>>],
    agent: usize,
    from: usize,
    to: usize,
) -> Vec<u8> {
    let slice: Vec<&[u8]> = causal.chains[agent][from..to]
        .iter()
        .map(|&t| {
            updates[t]
                .as_deref()
                .expect("a transaction in a version was replayed before")
        })
        .collect();
    match slice.as_slice() {
        [one] => one.to_vec(),
        many => merge_updates(many).unwrap(),
    }
}

/// Brings `replica` (of `agent`) to exactly `target`. Returns how many remote updates (merged
/// groups) were applied.
fn catch_up(
    replica: &mut Replica,
    agent: usize,
    target: &Version,
    causal: &Causal,
    updates: &[Option<Vec<u8>>],
) -> usize {
    let ahead = replica
        .version
        .iter()
        .zip(target)
        .any(|(have, want)| have > want);
    if ahead {
        // Cannot happen for a trace whose agents are chains (checked by `causal`), but if it
        // did, the replica is rebuilt from exactly the prefixes the target names.
        let mut doc = Document::new(client_id(agent));
        for (b, &want) in target.iter().enumerate() {
            if want > 0 {
                let u = chain_updates(causal, updates, b, 0, want);
                doc.apply_update(&u).unwrap();
            }
        }
        assert!(!doc.has_pending(), "a downward-closed version has no gaps");
        replica.doc = doc;
        replica.version = target.clone();
        return target.iter().filter(|&&w| w > 0).count();
    }
    let mut groups = Vec::new();
    for (b, (&have, &want)) in replica.version.iter().zip(target).enumerate() {
        if have < want {
            groups.push(chain_updates(causal, updates, b, have, want));
        }
    }
    let applied = groups.len();
    if applied > 0 {
        let result = replica.doc.apply_updates(&groups).unwrap();
        assert!(
            !result.pending,
            "agent {agent}: catching up to {target:?} left changes pending"
        );
        replica.version = target.clone();
    }
    applied
}

#[test]
fn friendsforever_concurrent_replays_to_end_content() {
    let trace = traces::load_conc(traces::FRIENDSFOREVER_CONC);
    assert!(trace.end_content.is_ascii());
    assert!(trace
        .txns
        .iter()
        .flat_map(|t| &t.patches)
        .all(|p| p.ins.is_ascii()));
    let n = trace.num_agents;
    let causal = causal(&trace);

    let mut replicas: Vec<Replica> = (0..n)
        .map(|a| Replica {
            doc: Document::new(client_id(a)),
            version: vec![0; n],
        })
        .collect();
    let mut updates: Vec<Option<Vec<u8>>> = vec![None; trace.txns.len()];
    let mut merges = 0usize;

    for (i, txn) in trace.txns.iter().enumerate() {
        let replica = &mut replicas[txn.agent];
        merges += catch_up(replica, txn.agent, &causal.base[i], &causal, &updates);
        let mut edits = Vec::with_capacity(txn.patches.len());
        for patch in &txn.patches {
            let u = replica
                .doc
                .replace(patch.pos, patch.del, &patch.ins)
                .unwrap_or_else(|e| panic!("txn {i} (agent {}), {patch:?}: {e}", txn.agent));
            edits.push(u);
        }
        updates[i] = Some(match edits.len() {
            0 => yrs_empty_update(),
            1 => edits.pop().unwrap(),
            _ => merge_updates(&edits).unwrap(),
        });
        replica.version[txn.agent] += 1;
    }
    assert!(merges > 0, "a concurrent trace must merge something");

    // Every replica receives everything it lacks; all must agree, byte for byte.
    let full: Version = causal.chains.iter().map(Vec::len).collect();
    for (a, replica) in replicas.iter_mut().enumerate() {
        catch_up(replica, a, &full, &causal, &updates);
        assert!(!replica.doc.has_pending());
        assert_eq!(
            replica.doc.text(),
            trace.end_content,
            "agent {a}'s replica after receiving everything"
        );
    }
    let state = replicas[0].doc.encode_state_as_update(None).unwrap();
    for (a, replica) in replicas.iter().enumerate().skip(1) {
        assert_eq!(
            replica.doc.encode_state_as_update(None).unwrap(),
            state,
            "agent {a}'s replica encodes differently from agent 0's"
        );
    }

    // A fresh replica that gets every transaction's update in trace order (a room's view) and
    // one loaded from the final state agree with the agents.
    let mut room_view = Document::new(0);
    for (i, u) in updates.iter().enumerate() {
        let applied = room_view.apply_update(u.as_deref().unwrap()).unwrap();
        assert!(!applied.pending, "txn {i} arrived before its parents");
    }
    assert_eq!(room_view.text(), trace.end_content);
    assert_eq!(room_view.encode_state_as_update(None).unwrap(), state);
    let loaded = Document::from_update(9, &state).unwrap();
    assert_eq!(loaded.text(), trace.end_content);
}

/// The v2 encoding of an empty update (a transaction with no patches).
fn yrs_empty_update() -> Vec<u8> {
    Document::new(0).encode_state_as_update(None).unwrap()
}
