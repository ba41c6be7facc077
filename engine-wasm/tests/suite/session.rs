//! `ClientSession` through its exported API against a real `concord_engine::RoomState` speaking
//! the JSON wire protocol: offline edits queue as one op, reconnecting replays it, lost frames
//! are resent, acks retire pending ops, and `exportState` / `importState` keep all of it.

use concord_engine::wire::{ClientMessage, Limits};
use concord_wasm::ClientSession;
use serde::Deserialize;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{canonical, cases, client_ids, expect_error, random_edit, Case, Rng, Server};

/// A session event as JavaScript sees it (`pollEvent()`), field names included.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    Synced {
        seq: u64,
    },
    Remote {
        changed: bool,
        changes: Vec<Change>,
    },
    Acked {
        id: String,
        seq: u64,
    },
    Presence {
        presence: concord_engine::wire::Presence,
    },
    Error {
        code: String,
        message: String,
    },
}

/// One entry of a `remote` event's `changes`.
#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    pub index: u32,
    pub delete: u32,
    pub insert: String,
}

/// Every event the session has queued.
pub fn events(s: &mut ClientSession) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let ev: JsValue = s.poll_event().expect("events convert");
        if ev.is_undefined() {
            return out;
        }
        out.push(serde_wasm_bindgen::from_value(ev).expect("events have the documented shape"));
    }
}

/// Every frame the session wants to send.
fn transmits(s: &mut ClientSession) -> Vec<String> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// Frames to the server and the server's replies back, until nothing moves. `sessions` are
/// the connected ones, with their connection ids.
fn pump(server: &mut Server, sessions: &mut [(u64, &mut ClientSession)]) {
    loop {
        let mut frames = Vec::new();
        for (conn, s) in sessions.iter_mut() {
            frames.extend(transmits(s).into_iter().map(|f| (*conn, f)));
        }
        if frames.is_empty() {
            return;
        }
        for (conn, frame) in frames {
            for (to, reply) in server.receive(conn, &frame) {
                if let Some((_, s)) = sessions.iter_mut().find(|(c, _)| *c == to) {
                    s.handle_frame(&reply).expect("server frames are valid");
                }
            }
        }
    }
}

/// Opens a connection: `connect()`, then the server's `sync` for the state vector it returned.
fn connect(server: &Server, s: &mut ClientSession) {
    let sv = s.connect();
    assert_eq!(s.status(), "connecting");
    s.handle_frame(&server.sync_frame(&sv))
        .expect("a sync frame applies");
    assert_eq!(s.status(), "online");
}

/// `n` random edits on a session, flushing after some of them.
fn type_edits(rng: &mut Rng, s: &mut ClientSession, n: u64, case: Case) {
    for _ in 0..n {
        let text = s.text();
        let e = random_edit(rng, &text, 3);
        s.replace(e.index, e.delete, &e.insert)
            .unwrap_or_else(|err| panic!("{case}: edit {e:?} on {text:?}: {err:?}"));
        if rng.chance(0.4) {
            s.flush().expect("flush");
        }
    }
}

fn assert_same_as_room(server: &Server, s: &ClientSession, what: &dyn std::fmt::Display) {
    assert_eq!(
        s.text(),
        server.room.text(),
        "{what}: text differs from the room"
    );
    assert_eq!(
        canonical(&s.encode_state_as_update(None).expect("encodes")),
        canonical(&server.room.encode_state()),
        "{what}: state differs from the room"
    );
}

#[wasm_bindgen_test]
fn offline_edits_are_one_op_replayed_on_reconnect_and_acked() {
    for case in cases(
        "offline_edits_are_one_op_replayed_on_reconnect_and_acked",
        0x5E55_0001,
        12,
    ) {
        let mut rng = Rng::new(case.seed);
        let ids = client_ids(&mut rng, 2);
        let mut server = Server::new();
        let mut other = ClientSession::new(ids[1], "other").unwrap();
        let mut s = ClientSession::new(ids[0], "tab").unwrap();

        // Someone else writes while `s` is offline.
        connect(&server, &mut other);
        let n = rng.range(1, 20);
        type_edits(&mut rng, &mut other, n, case);
        other.flush().unwrap();
        pump(&mut server, &mut [(2, &mut other)]);
        assert_eq!(other.pending_count(), 0, "{case}: other's ops are acked");

        // Offline: every flush joins the one pending op; nothing is sent.
        assert_eq!(s.status(), "offline");
        let edits = rng.range(1, 60);
        type_edits(&mut rng, &mut s, edits, case);
        s.flush().unwrap();
        assert_eq!(s.pending_count(), 1, "{case}: offline edits are one op");
        assert!(s.poll_transmit().is_none(), "{case}: nothing sent offline");
        let room_before = server.room.text();
        let seq_at_sync = server.room.seq();

        // Reconnect: the sync merges the room into `s`, and `s` sends exactly one op.
        connect(&server, &mut s);
        let frames = transmits(&mut s);
        let ops: Vec<ClientMessage> = frames
            .iter()
            .map(|f| {
                ClientMessage::parse(f, &Limits::default())
                    .expect("valid frame")
                    .expect("known frame")
            })
            .collect();
        assert!(
            matches!(ops.as_slice(), [ClientMessage::Op { id: Some(_), .. }]),
            "{case}: one op with an id replays the offline edits, got {frames:?}"
        );
        for frame in &frames {
            for (to, reply) in server.receive(1, frame) {
                match to {
                    1 => s.handle_frame(&reply).unwrap(),
                    2 => other.handle_frame(&reply).unwrap(),
                    _ => {}
                }
            }
        }
        assert_eq!(s.pending_count(), 0, "{case}: the replayed op is acked");

        let evs = events(&mut s);
        let synced = evs
            .iter()
            .position(|e| matches!(e, Event::Synced { seq } if *seq == seq_at_sync))
            .unwrap_or_else(|| panic!("{case}: synced at seq {seq_at_sync}: {evs:?}"));
        assert!(
            synced <= 1,
            "{case}: synced comes first (after the sync's changes): {evs:?}"
        );
        let room_seq = server.room.seq();
        assert!(
            evs.iter().any(
                |e| matches!(e, Event::Acked { id, seq } if id.starts_with("tab-") && *seq == room_seq)
            ),
            "{case}: acked at seq {room_seq}: {evs:?}"
        );
        if !room_before.is_empty() {
            assert!(
                evs.iter()
                    .any(|e| matches!(e, Event::Remote { changed: true, .. })),
                "{case}: the room's text arrived as a remote change: {evs:?}"
            );
        }
        assert_same_as_room(&server, &s, &case);
        assert_same_as_room(&server, &other, &case);
    }
}

#[wasm_bindgen_test]
fn lost_frames_are_resent_and_duplicates_acked_once() {
    let case = Case {
        test: "lost_frames_are_resent_and_duplicates_acked_once",
        seed: 0,
    };
    let mut server = Server::new();
    let mut s = ClientSession::new(11.0, "tab").unwrap();
    connect(&server, &mut s);

    // op 1 is lost; op 2 builds on it, so the room refuses it and says why.
    s.insert(0, "héllo ").unwrap();
    s.flush().unwrap();
    let lost = transmits(&mut s);
    assert_eq!(lost.len(), 1);
    s.insert(6, "wörld 😀").unwrap();
    s.flush().unwrap();
    assert_eq!(s.pending_count(), 2);
    for frame in transmits(&mut s) {
        for (_, reply) in server.receive(1, &frame) {
            s.handle_frame(&reply).unwrap();
        }
    }
    let evs = events(&mut s);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Error { code, message }
                if code == "missing_dependencies" && !message.is_empty())),
        "{case}: {evs:?}"
    );
    assert_eq!(server.room.text(), "", "the refused op changed nothing");
    // The session answered with everything pending, as one op.
    let resend = transmits(&mut s);
    assert_eq!(resend.len(), 1, "{case}: {resend:?}");
    // Delivered twice (a retry racing the first copy): acked, applied once.
    for frame in [&resend[0], &resend[0]] {
        for (_, reply) in server.receive(1, frame) {
            s.handle_frame(&reply).unwrap();
        }
    }
    assert_eq!(s.pending_count(), 0);
    assert_eq!(server.room.text(), "héllo wörld 😀");
    assert_same_as_room(&server, &s, &case);
    let acks = events(&mut s)
        .into_iter()
        .filter(|e| matches!(e, Event::Acked { .. }))
        .count();
    assert_eq!(acks, 1, "an op is acked once, duplicates are silent");

    // An op whose ack is lost with the connection is resent on reconnect, merged with what was
    // typed offline, and the room keeps one copy.
    s.insert(0, "» ").unwrap();
    s.flush().unwrap();
    for frame in transmits(&mut s) {
        let _ack_lost = server.receive(1, &frame);
    }
    s.disconnect();
    assert_eq!(s.status(), "offline");
    assert_eq!(s.pending_count(), 1);
    s.insert(s.length(), " 中文").unwrap();
    s.flush().unwrap();
    assert_eq!(s.pending_count(), 1, "offline edits join the unacked op");
    connect(&server, &mut s);
    pump(&mut server, &mut [(1, &mut s)]);
    assert_eq!(s.pending_count(), 0);
    assert_eq!(server.room.text(), "» héllo wörld 😀 中文");
    assert_same_as_room(&server, &s, &case);
}

#[wasm_bindgen_test]
fn export_import_round_trip_keeps_text_and_pending_ops() {
    for case in cases(
        "export_import_round_trip_keeps_text_and_pending_ops",
        0x5E55_1001,
        8,
    ) {
        let mut rng = Rng::new(case.seed);
        let ids = client_ids(&mut rng, 4);
        let mut server = Server::new();
        let mut other = ClientSession::new(ids[3], "other").unwrap();
        connect(&server, &mut other);
        let n = rng.range(1, 10);
        type_edits(&mut rng, &mut other, n, case);
        other.flush().unwrap();
        pump(&mut server, &mut [(2, &mut other)]);

        let mut s = ClientSession::new(ids[0], "tab").unwrap();
        let n = rng.range(1, 30);
        type_edits(&mut rng, &mut s, n, case);
        // Unflushed edits are saved too.
        s.insert(0, "😀中").unwrap();
        let saved = s.export_state().expect("exports");
        assert_eq!(s.pending_count(), 1, "{case}");

        let mut restored = ClientSession::import_state(ids[1], "tab-2", &saved).expect("imports");
        assert_eq!(restored.text(), s.text(), "{case}: text survives");
        assert_eq!(restored.length(), s.length(), "{case}: length survives");
        assert_eq!(
            restored.pending_count(),
            1,
            "{case}: the pending op survives"
        );
        assert_eq!(restored.status(), "offline");
        // Saved again and restored again (a second reload) it is still the same.
        let again = restored.export_state().expect("exports");
        let mut restored = ClientSession::import_state(ids[2], "tab-3", &again).expect("imports");
        assert_eq!(restored.text(), s.text(), "{case}: text survives twice");
        assert_eq!(restored.pending_count(), 1, "{case}");

        connect(&server, &mut restored);
        pump(&mut server, &mut [(1, &mut restored), (2, &mut other)]);
        assert_eq!(restored.pending_count(), 0, "{case}: replayed and acked");
        assert_same_as_room(&server, &restored, &case);
        assert_same_as_room(&server, &other, &case);
    }
}

#[wasm_bindgen_test]
fn presence_goes_out_online_and_comes_in_as_events() {
    use concord_engine::wire::{Presence, ServerMessage};
    let server = Server::new();
    let mut s = ClientSession::new(21.0, "tab").unwrap();
    let mine = Presence {
        user: "me".into(),
        cursor: None,
        color: Some("#2DD4BF".into()),
        name: Some("Zoë 😀".into()),
        left: false,
        you: false,
        ..Presence::default()
    };
    let js = serde_wasm_bindgen::to_value(&mine).unwrap();
    s.set_presence(js.clone()).unwrap();
    assert!(s.poll_transmit().is_none(), "offline: kept for later");
    connect(&server, &mut s);
    let sent: Vec<ClientMessage> = transmits(&mut s)
        .iter()
        .filter_map(|f| ClientMessage::parse(f, &Limits::default()).unwrap())
        .collect();
    assert_eq!(
        sent,
        vec![ClientMessage::Presence(mine.clone())],
        "sent after the sync"
    );
    s.set_presence(js).unwrap();
    assert_eq!(transmits(&mut s).len(), 1, "online: sent at once");
    assert_eq!(
        expect_error(s.set_presence(JsValue::from_str("me")), &"a string"),
        "bad_presence"
    );

    let theirs = Presence {
        user: "them".into(),
        cursor: None,
        color: None,
        name: None,
        left: true,
        you: false,
        ..Presence::default()
    };
    s.handle_frame(&ServerMessage::Presence(theirs.clone()).to_json())
        .unwrap();
    let evs = events(&mut s);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Presence { presence } if *presence == theirs)),
        "{evs:?}"
    );
}
