//! The room host driven with no sockets: each protocol's join, sync, updates, read-only
//! refusal, acks after commit, presence, errors, close codes, TTLs, writers and timers.

use super::*;
use crate::awareness::FLUSH_MS;
use crate::room::CompactionPolicy;
use crate::Document;

const ROOM: &str = "r";

fn host() -> RoomHost {
    let state = RoomState::new(CompactionPolicy::default(), 0);
    let config = HostConfig {
        idle_ms: 10_000,
        ..HostConfig::default()
    };
    RoomHost::new(ROOM.into(), state, config, 0)
}

fn joiner(protocol: Protocol, writable: bool) -> Joiner {
    Joiner {
        protocol,
        user: format!("u-{protocol:?}"),
        name: None,
        writable,
        sv: None,
        cpu: CpuBudget::default().full_bucket(0),
    }
}

fn outputs(host: &mut RoomHost) -> Vec<Output> {
    std::iter::from_fn(|| host.poll_output()).collect()
}

/// Joins `conn` and returns what the join produced.
fn join(host: &mut RoomHost, conn: u64, protocol: Protocol, writable: bool) -> Vec<Output> {
    let conn = ConnId(conn);
    let joiner = joiner(protocol, writable);
    host.handle(Input::Join { conn, joiner }, 0);
    outputs(host)
}

fn text_of(frame: &Frame) -> ServerMessage {
    let Frame::Text(bytes) = frame else {
        panic!("a JSON frame is text: {frame:?}")
    };
    ServerMessage::parse(std::str::from_utf8(bytes).unwrap())
        .unwrap()
        .unwrap()
}

fn sent_to(outs: &[Output], conn: u64) -> Vec<&Frame> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } if *to == ConnId(conn) => Some(frame),
            _ => None,
        })
        .collect()
}

fn broadcasts(outs: &[Output]) -> Vec<(&Frames, &Vec<ConnId>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Broadcast { frames, except, .. } => Some((frames, except)),
            _ => None,
        })
        .collect()
}

fn json_op(doc: &mut Document, text: &str, id: &str) -> Request {
    let update = doc.insert(0, text).unwrap();
    Request::Json(ClientMessage::Op {
        id: Some(id.into()),
        update,
        base: None,
    })
}

fn frame(
    host: &mut RoomHost,
    conn: u64,
    request: Request,
    writable: bool,
    now: u64,
) -> Vec<Output> {
    host.handle(
        Input::Frame {
            conn: ConnId(conn),
            request,
            writable,
        },
        now,
    );
    outputs(host)
}

fn commit(outs: &[Output]) -> Option<&Vec<Vec<u8>>> {
    outs.iter().find_map(|o| match o {
        Output::Commit { batch, .. } => Some(batch),
        _ => None,
    })
}

#[test]
fn each_protocol_joins_with_its_own_first_frames() {
    let mut host = host();
    let outs = join(&mut host, 1, Protocol::Json, true);
    let first = sent_to(&outs, 1);
    assert!(matches!(
        text_of(first[0]),
        ServerMessage::Sync { seq: 0, .. }
    ));
    assert!(matches!(text_of(first[1]), ServerMessage::Presence(p) if p.you && p.user == "u-Json"));
    assert!(matches!(outs.last(), Some(Output::Joined(ConnId(1)))));

    let outs = join(&mut host, 2, Protocol::Json, false);
    let reader = sent_to(&outs, 2);
    assert!(
        reader
            .iter()
            .any(|f| matches!(text_of(f), ServerMessage::Access { role } if role == "read")),
        "a JSON reader is told its role"
    );

    let outs = join(&mut host, 3, Protocol::Yjs, true);
    let step1 = yjs::sync_step1(&host.state().document().state_vector()).unwrap();
    assert_eq!(sent_to(&outs, 3), vec![&Frame::binary(step1.clone())]);

    let outs = join(&mut host, 4, Protocol::Hocuspocus, true);
    assert_eq!(
        sent_to(&outs, 4),
        vec![&Frame::binary(hocuspocus::wrap(ROOM, &step1))]
    );
    assert_eq!(host.members(), 4);
}

#[test]
fn a_bad_state_vector_is_refused_with_1008() {
    let mut host = host();
    let conn = ConnId(1);
    let joiner = Joiner {
        sv: Some(vec![0xff, 0xff, 0xff]),
        ..joiner(Protocol::Json, true)
    };
    host.handle(Input::Join { conn, joiner }, 0);
    let outs = outputs(&mut host);
    assert!(matches!(
        text_of(sent_to(&outs, 1)[0]),
        ServerMessage::Error { .. }
    ));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Joined(c) if *c == conn)));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Close { conn: c, code: 1008, .. } if *c == conn)));
    assert!(matches!(outs.last(), Some(Output::Removed { .. })));
    assert_eq!(host.members(), 0);
}

#[test]
fn an_update_is_rendered_once_per_protocol_and_acked_after_its_commit() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Yjs, true);
    join(&mut host, 3, Protocol::Hocuspocus, true);
    let mut doc = Document::new(7);
    let outs = frame(&mut host, 1, json_op(&mut doc, "hi", "op-1"), true, 1);

    let b = broadcasts(&outs);
    assert_eq!(b.len(), 1);
    let (frames, except) = b[0];
    assert_eq!(except, &vec![ConnId(1)], "the sender already has it");
    let v1 = doc.encode_state_as_update_v1(None).unwrap();
    let update = yjs::update(v1);
    assert_eq!(frames.yjs, Some(Frame::binary(update.clone())));
    assert_eq!(
        frames.hocuspocus,
        Some(Frame::binary(hocuspocus::wrap(ROOM, &update)))
    );
    assert!(matches!(
        text_of(frames.json.as_ref().unwrap()),
        ServerMessage::Op { seq: 0, .. }
    ));
    assert_eq!(commit(&outs).map(Vec::len), Some(1));
    assert!(sent_to(&outs, 1).is_empty(), "no ack before it is durable");

    host.handle(Input::Committed(Ok(1)), 2);
    let outs = outputs(&mut host);
    assert_eq!(
        sent_to(&outs, 1)
            .iter()
            .map(|f| text_of(f))
            .collect::<Vec<_>>(),
        vec![ServerMessage::Ack {
            id: "op-1".into(),
            seq: 1
        }]
    );
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::PublishUpdate { seq: 1, .. })));
    assert_eq!(host.state().text(), "hi");
}

#[test]
fn a_hocuspocus_update_gets_its_sync_status_once_durable() {
    let mut host = host();
    join(&mut host, 1, Protocol::Hocuspocus, true);
    let mut doc = Document::new(7);
    doc.insert(0, "x").unwrap();
    let v1 = doc.encode_state_as_update_v1(None).unwrap();
    let outs = frame(&mut host, 1, Request::Yjs(YjsRequest::Update(v1)), true, 1);
    assert!(sent_to(&outs, 1).is_empty());
    assert!(commit(&outs).is_some());
    host.handle(Input::Committed(Ok(1)), 2);
    let outs = outputs(&mut host);
    assert_eq!(
        sent_to(&outs, 1),
        vec![&Frame::binary(hocuspocus::sync_status(ROOM, true))]
    );
}

#[test]
fn readers_are_refused_in_their_protocol_and_nothing_is_staged() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, false);
    join(&mut host, 2, Protocol::Yjs, false);
    join(&mut host, 3, Protocol::Hocuspocus, false);
    let mut doc = Document::new(7);
    let outs = frame(&mut host, 1, json_op(&mut doc, "no", "op-1"), false, 1);
    assert!(
        matches!(text_of(sent_to(&outs, 1)[0]), ServerMessage::Error { code, .. } if code == "forbidden")
    );
    let v1 = doc.encode_state_as_update_v1(None).unwrap();
    let outs = frame(
        &mut host,
        2,
        Request::Yjs(YjsRequest::Update(v1.clone())),
        false,
        1,
    );
    assert_eq!(
        sent_to(&outs, 2),
        vec![&Frame::binary(yjs::permission_denied(
            "read-only access: the update was not applied"
        ))]
    );
    // A Hocuspocus reader's update that would change the room: SyncStatus false.
    let outs = frame(&mut host, 3, Request::Yjs(YjsRequest::Update(v1)), false, 1);
    assert_eq!(
        sent_to(&outs, 3),
        vec![&Frame::binary(hocuspocus::sync_status(ROOM, false))]
    );
    assert_eq!(host.state().uncommitted(), 0);
    assert_eq!(host.state().text(), "");
    // Nor may a reader speak to the others with stateless strings.
    let stateless = Request::Stateless("hello".into());
    assert!(broadcasts(&frame(&mut host, 3, stateless, false, 1)).is_empty());
}

#[test]
fn a_refused_update_is_an_error_frame_and_changes_nothing() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    let request = Request::Json(ClientMessage::Op {
        id: Some("bad".into()),
        update: vec![0xde, 0xad, 0xbe, 0xef],
        base: None,
    });
    let outs = frame(&mut host, 1, request, true, 1);
    assert!(matches!(
        text_of(sent_to(&outs, 1)[0]),
        ServerMessage::Error { .. }
    ));
    assert!(outs.iter().any(|o| matches!(o, Output::ErrorSent(_))));
    assert!(commit(&outs).is_none());
    assert_eq!(
        host.members(),
        1,
        "a malformed update does not close the member"
    );
}

#[test]
fn a_member_in_cpu_debt_is_told_and_closed_with_1013() {
    let mut host = host();
    let conn = ConnId(1);
    let mut cpu = CpuBudget::default().full_bucket(0);
    cpu.charge(1_000_000.0, 0);
    let joiner = Joiner {
        cpu,
        ..joiner(Protocol::Json, true)
    };
    host.handle(Input::Join { conn, joiner }, 0);
    outputs(&mut host);
    let mut doc = Document::new(7);
    let outs = frame(&mut host, 1, json_op(&mut doc, "x", "op-1"), true, 1);
    assert!(
        matches!(text_of(sent_to(&outs, 1)[0]), ServerMessage::Error { code, .. } if code == "cpu_budget")
    );
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Close { code: 1013, .. })));
    let left = outs.iter().find_map(|o| match o {
        Output::Removed { cpu, .. } => Some(*cpu),
        _ => None,
    });
    assert!(
        left.is_some_and(|mut b| b.level(1) < 0.0),
        "its debt goes back to its payer"
    );
    assert_eq!(host.state().uncommitted(), 0);
}

#[test]
fn an_in_process_write_takes_the_keystroke_path() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    let mut doc = Document::new(9);
    let update = doc.insert(0, "api").unwrap();
    let writer = ConnId(100);
    let author = Some("bot".to_owned());
    host.handle(
        Input::Write {
            conn: writer,
            update,
            author,
        },
        1,
    );
    let outs = outputs(&mut host);
    let b = broadcasts(&outs);
    assert_eq!(b.len(), 1, "members see it at once");
    let origins = outs.iter().find_map(|o| match o {
        Output::Commit { origins, .. } => Some(origins.clone()),
        _ => None,
    });
    assert_eq!(
        origins,
        Some(vec![Origin {
            author: Some("bot".into()),
            base_seq: None
        }])
    );
    host.handle(Input::Committed(Ok(1)), 2);
    let outs = outputs(&mut host);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Written { conn, result: Written::Durable(1) } if *conn == writer
    )));
    assert!(
        sent_to(&outs, 1).is_empty(),
        "the member gets no ack for it"
    );

    // Bad bytes are refused, with the engine's error, and change nothing.
    let bad = vec![1, 2, 3];
    host.handle(
        Input::Write {
            conn: ConnId(101),
            update: bad,
            author: None,
        },
        3,
    );
    let outs = outputs(&mut host);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Written {
            result: Written::Rejected(_),
            ..
        }
    )));
    assert_eq!(host.state().text(), "api");
}

#[test]
fn a_failed_commit_fails_the_writer_and_resyncs_every_member() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Yjs, true);
    let mut doc = Document::new(9);
    let update = doc.insert(0, "lost").unwrap();
    host.handle(
        Input::Write {
            conn: ConnId(100),
            update,
            author: None,
        },
        1,
    );
    outputs(&mut host);
    host.handle(Input::Committed(Err(())), 2);
    let outs = outputs(&mut host);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Written {
            result: Written::Unavailable,
            ..
        }
    )));
    let closed: Vec<u64> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Close {
                conn, code: 1011, ..
            } => Some(conn.0),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 2, "every member resyncs: {closed:?}");
    assert_eq!(host.members(), 0);
    assert_eq!(host.state().text(), "");
}

#[test]
fn presence_is_coalesced_rendered_per_protocol_and_published() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Json, true);
    join(&mut host, 3, Protocol::Yjs, true);
    let presence = Presence {
        user: "forged".into(),
        name: Some("Ann".into()),
        ..Presence::default()
    };
    let outs = frame(
        &mut host,
        1,
        Request::Json(ClientMessage::Presence(presence)),
        true,
        10,
    );
    assert!(broadcasts(&outs).is_empty(), "held for the flush");
    let due = host.poll_timeout();
    assert_eq!(due, 10 + FLUSH_MS);
    host.handle(Input::Timeout { shedding: false }, due);
    let outs = outputs(&mut host);
    let published: Vec<&Presence> = outs
        .iter()
        .filter_map(|o| match o {
            Output::PublishPresence(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(
        published[0].user, "u-Json",
        "the user is the server's to say"
    );
    let b = broadcasts(&outs);
    let json = b.iter().find(|(f, _)| f.json.is_some()).unwrap();
    assert_eq!(json.1, &vec![ConnId(1)], "not sent back to its sender");
    assert!(
        b.iter().any(|(f, _)| f.yjs.is_some()),
        "Yjs members see it as awareness"
    );
}

#[test]
fn a_silent_yjs_client_leaves_after_the_ttl() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Yjs, true);
    // A y-protocols awareness update from client 42 with a name.
    let mut awareness = yrs::sync::Awareness::new(yrs::Doc::with_client_id(42));
    awareness
        .set_local_state(serde_json::json!({"user": {"name": "Yan"}}))
        .unwrap();
    let update = awareness.update().unwrap();
    frame(
        &mut host,
        2,
        Request::Yjs(YjsRequest::Awareness(update)),
        true,
        0,
    );
    host.handle(Input::Timeout { shedding: false }, FLUSH_MS);
    let outs = outputs(&mut host);
    assert!(broadcasts(&outs).iter().any(|(f, _)| f.json.is_some()));

    let mut now = FLUSH_MS;
    let mut left = false;
    while now <= PRESENCE_TTL_MS + 1_000 && !left {
        now = host.poll_timeout();
        host.handle(Input::Timeout { shedding: false }, now);
        left = outputs(&mut host).iter().any(|o| match o {
            Output::Broadcast { frames, .. } => frames
                .json
                .as_ref()
                .is_some_and(|f| matches!(text_of(f), ServerMessage::Presence(p) if p.left)),
            _ => false,
        });
    }
    assert!(left, "gone by {now} ms");
    assert!(now >= PRESENCE_TTL_MS, "not before the TTL: {now}");
}

#[test]
fn presence_from_another_instance_expires_unless_refreshed() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    let remote = Presence {
        user: "c-other-1".into(),
        ..Presence::default()
    };
    host.handle(Input::HubPresence(remote), 0);
    let mut now = 0;
    let mut seen = Vec::new();
    while now <= PRESENCE_TTL_MS + 1_000 {
        now = host.poll_timeout();
        host.handle(Input::Timeout { shedding: false }, now);
        for o in outputs(&mut host) {
            if let Output::Broadcast { frames, .. } = o {
                if let Some(ServerMessage::Presence(p)) = frames.json.as_ref().map(text_of) {
                    seen.push((now, p.left));
                }
            }
        }
    }
    assert_eq!(seen.first().map(|s| s.1), Some(false));
    let gone = seen.iter().find(|s| s.1).expect("told it left");
    assert!(gone.0 >= PRESENCE_TTL_MS);
}

#[test]
fn a_leave_hands_back_the_budget_and_the_presence_leaves() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Json, true);
    let p = Presence::default();
    frame(
        &mut host,
        1,
        Request::Json(ClientMessage::Presence(p)),
        true,
        0,
    );
    host.handle(Input::Leave { conn: ConnId(1) }, 1);
    let outs = outputs(&mut host);
    assert!(matches!(
        outs[..],
        [Output::Removed {
            conn: ConnId(1),
            ..
        }]
    ));
    host.handle(Input::Timeout { shedding: false }, FLUSH_MS + 1);
    let outs = outputs(&mut host);
    let left = broadcasts(&outs).iter().any(|(f, _)| {
        f.json
            .as_ref()
            .is_some_and(|f| matches!(text_of(f), ServerMessage::Presence(p) if p.left))
    });
    assert!(left);
}

#[test]
fn an_empty_room_asks_to_unload_after_its_idle_time_or_at_once_when_shedding() {
    let mut host = host();
    let idle_after = |host: &mut RoomHost, shedding: bool| {
        let mut now = 0;
        while now < 60_000 {
            now = host.poll_timeout();
            host.handle(Input::Timeout { shedding }, now);
            if outputs(host).iter().any(|o| matches!(o, Output::Idle)) {
                return now;
            }
        }
        panic!("never idle");
    };
    assert!(idle_after(&mut host, false) >= 10_000);
    let mut host = self::host();
    assert!(idle_after(&mut host, true) <= 2 * TICK_MS);

    let mut busy = self::host();
    join(&mut busy, 1, Protocol::Json, true);
    let mut now = 0;
    while now < 20_000 {
        now = busy.poll_timeout();
        busy.handle(Input::Timeout { shedding: true }, now);
        assert!(!outputs(&mut busy).iter().any(|o| matches!(o, Output::Idle)));
    }
}

#[test]
fn compaction_is_asked_once_at_a_time_and_backs_off_after_a_failure() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    let mut doc = Document::new(7);
    frame(&mut host, 1, json_op(&mut doc, "x", "a"), true, 0);
    host.handle(Input::Committed(Ok(1)), 0);
    outputs(&mut host);
    let compacts = |host: &mut RoomHost, until: u64| {
        let mut n = 0;
        let mut now = host.poll_timeout();
        while now <= until {
            host.handle(Input::Timeout { shedding: false }, now);
            n += outputs(host)
                .iter()
                .filter(|o| matches!(o, Output::Compact))
                .count();
            now = host.poll_timeout();
        }
        n
    };
    // Due after max_age (5 s); asked once while it runs.
    assert_eq!(compacts(&mut host, 8_000), 1);
    host.handle(Input::Compacted(Err(())), 8_000);
    // Backoff: not again within the first second after the failure.
    assert_eq!(compacts(&mut host, 8_900), 0);
    assert_eq!(compacts(&mut host, 9_300), 1);
    host.handle(Input::Compacted(Ok(None)), 9_300);
}

#[test]
fn an_update_from_the_hub_too_large_for_a_client_is_read_from_the_store() {
    let mut host = host();
    let update = vec![0; host.config.max_update_bytes + 1];
    host.handle(Input::HubUpdate { seq: 1, update }, 0);
    let outs = outputs(&mut host);
    assert!(matches!(outs[..], [Output::CatchUp { after: 0 }]));
    // One catch-up at a time: a resync asked meanwhile reads again once this one ends.
    host.handle(Input::Resync, 0);
    assert!(outputs(&mut host).is_empty());
    host.handle(Input::CaughtUp(Ok(Vec::new())), 0);
    assert!(matches!(
        outputs(&mut host)[..],
        [Output::CatchUp { after: 0 }]
    ));
    host.handle(Input::CaughtUp(Ok(Vec::new())), 0);
    assert!(outputs(&mut host).is_empty());
}

#[test]
fn light_inputs_need_no_pool() {
    let host = host();
    let presence = Request::Json(ClientMessage::Presence(Presence::default()));
    let light = |input: Input| host.is_light(&input, 0);
    assert!(light(Input::Frame {
        conn: ConnId(1),
        request: presence,
        writable: true
    }));
    assert!(light(Input::Leave { conn: ConnId(1) }));
    assert!(light(Input::Committed(Ok(1))));
    assert!(
        !light(Input::Committed(Err(()))),
        "a failed commit rebuilds"
    );
    assert!(!light(Input::Join {
        conn: ConnId(1),
        joiner: joiner(Protocol::Json, true)
    }));
    let update = Request::Yjs(YjsRequest::Update(vec![0, 0]));
    assert!(!light(Input::Frame {
        conn: ConnId(1),
        request: update,
        writable: true
    }));
}

#[test]
fn only_update_broadcasts_are_marked_as_updates() {
    let mut host = host();
    join(&mut host, 1, Protocol::Json, true);
    join(&mut host, 2, Protocol::Json, true);
    let marks = |outs: &[Output]| -> Vec<bool> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Broadcast { update, .. } => Some(*update),
                _ => None,
            })
            .collect()
    };
    let mut doc = Document::new(7);
    let outs = frame(&mut host, 1, json_op(&mut doc, "x", "a"), true, 0);
    assert_eq!(marks(&outs), vec![true]);
    let p = Request::Json(ClientMessage::Presence(Presence::default()));
    frame(&mut host, 1, p, true, 0);
    host.handle(Input::Timeout { shedding: false }, FLUSH_MS);
    assert_eq!(marks(&outputs(&mut host)), vec![false]);
}
