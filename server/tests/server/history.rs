//! The history API against a real server and store: versions, diff by stable ids, playback at
//! a seq or a time, restore while others type (an edit, converging), timeline, blame, bad
//! requests that change nothing, and ids that survive a restart.

use serde_json::{json, Value};

use crate::auth::http;
use crate::support::*;

async fn text_of(base: &str, room: &str, client: u64) -> (String, Vec<u8>) {
    let mut c = TestClient::new(base, room, client);
    c.connect().await;
    (c.text(), c.state())
}

async fn type_text(c: &mut TestClient, at: u32, text: &str) {
    c.session.insert(at, text).unwrap();
    c.pump_until(|c| c.session.pending_count() == 0).await;
}

pub async fn versions_diff_playback_restore(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let server = TestServer::start(test_config(&db)).await;
    let base = server.ws_base();
    let addr = server.addr;
    let room = unique("history");
    let mut ada = TestClient::new(&base, &room, 11);
    let mut bob = TestClient::new(&base, &room, 12);
    ada.connect().await;
    bob.connect().await;
    // Names from presence become the ops' authors.
    ada.session.set_presence(concord_engine::wire::Presence {
        name: Some("Ada".into()),
        ..Default::default()
    });
    ada.pump_for(std::time::Duration::from_millis(0)).await;
    type_text(&mut ada, 0, "hello world").await;

    let path = |p: &str| format!("/rooms/{room}/{p}");
    let (status, _, v1) = http(
        addr,
        "POST",
        &path("versions"),
        None,
        Some(&json!({"label": "first draft", "author": "ada"})),
    )
    .await;
    assert_eq!(status, 201, "{v1}");
    let v1_id = v1["id"].as_i64().expect("id");
    let v1_seq = v1["op_seq"].as_u64().expect("op_seq");
    assert!(v1_seq >= 1);

    bob.pump_until(|c| c.text() == "hello world").await;
    bob.session.replace(6, 5, "there").unwrap();
    bob.pump_until(|c| c.session.pending_count() == 0).await;
    ada.pump_until(|c| c.text() == "hello there").await;

    let (status, _, list) = http(addr, "GET", &path("versions"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"].as_i64(), Some(v1_id));
    assert_eq!(list[0]["label"], "first draft");
    assert_eq!(list[0]["author"], "ada");

    // Diff by stable ids, between the version and now.
    let (status, _, d) = http(
        addr,
        "GET",
        &path(&format!("diff?from={v1_id}")),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["removed"][0]["text"], "world");
    assert_eq!(d["added"][0]["text"], "there");
    assert_eq!(d["added"][0]["index"], 6);
    assert_eq!(d["moved"], json!([]));
    let removed_id = d["removed"][0]["id"].clone();

    // Playback.
    let (status, _, at) = http(addr, "GET", &path(&format!("at?seq={v1_seq}")), None, None).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(at["text"], "hello world");
    assert!(at["time"].is_string());
    let head = at["head_seq"].as_u64().unwrap();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, _, at) = http(addr, "GET", &path(&format!("at?time={now}")), None, None).await;
    assert_eq!(status, 200, "{at}");
    assert_eq!(at["text"], "hello there");
    let (_, _, at) = http(
        addr,
        "GET",
        &path("at?time=2000-01-01T00:00:00Z"),
        None,
        None,
    )
    .await;
    assert_eq!(at["text"], "", "before the first op");

    // Bad requests: a JSON error, nothing changed.
    let before = text_of(&base, &room, 20).await;
    let bad: [(&str, &str, Option<Value>, u16); 7] = [
        ("GET", &format!("at?seq={}", head + 5), None, 400),
        ("GET", "at?time=yesterday", None, 400),
        ("GET", &format!("diff?from=seq:{head}&to=seq:1"), None, 400),
        ("GET", "diff?from=999999999", None, 404),
        ("GET", "diff?from=v1", None, 400),
        (
            "POST",
            "restore",
            Some(json!({"version_id": 999_999_999})),
            404,
        ),
        ("POST", "versions", Some(json!({"label": ""})), 400),
    ];
    for (method, p, body, want) in bad {
        let (status, _, v) = http(addr, method, &path(p), None, body.as_ref()).await;
        assert_eq!(status, want, "{method} {p}: {v}");
        assert!(v["error"]["code"].is_string(), "{method} {p}: {v}");
    }
    assert_eq!(
        text_of(&base, &room, 21).await,
        before,
        "bad requests changed nothing"
    );

    // Restore while both type: an edit that merges with theirs. Their edits are made on
    // their replicas before they see the restore, and the restore before it sees theirs
    // (they are cut off meanwhile), so the three are concurrent whatever the timing.
    ada.disconnect();
    bob.disconnect();
    ada.session.insert(0, ">> ").unwrap();
    let len = bob.session.document().len();
    bob.session.insert(len, " :)").unwrap();
    let (status, _, r) = http(
        addr,
        "POST",
        &path("restore"),
        None,
        Some(&json!({"version_id": v1_id})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["applied"], true);
    ada.connect().await;
    bob.connect().await;
    converge(&mut [&mut ada, &mut bob]).await;
    let text = ada.text();
    assert!(text.contains("hello world"), "{text}");
    assert!(!text.contains("there"), "{text}");
    assert!(text.starts_with(">> ") && text.ends_with(" :)"), "{text}");
    let (fresh, state) = text_of(&base, &room, 22).await;
    assert_eq!(fresh, text);
    assert_eq!(state, ada.state());

    // Timeline and blame.
    let (status, _, t) = http(
        addr,
        "GET",
        &path("timeline?gap_ms=0&stale_ms=0"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let groups = t["groups"].as_array().unwrap();
    assert!(groups.len() >= 3, "{t}");
    assert!(
        groups.iter().any(|g| g["authors"] == json!(["Ada"])),
        "Ada's presence name is her ops' author: {t}"
    );
    assert!(
        groups.iter().any(|g| g["authors"] == json!(["restore"])),
        "{t}"
    );
    // The edits made while cut off from the room were merged after the restore: the timeline
    // shows them as made against the older state.
    assert!(
        groups
            .iter()
            .any(|g| g["authors"] == json!(["Ada"]) && g["made_against_seq"].is_u64()),
        "{t}"
    );
    let (status, _, b) = http(addr, "GET", &path("blame"), None, None).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["text"], text);
    let covered: u64 = b["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["len"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, text.encode_utf16().count() as u64);

    // Ids survive a restart.
    ada.disconnect();
    bob.disconnect();
    server.stop().await;
    let server = TestServer::start(test_config(&db)).await;
    let addr = server.addr;
    let (_, _, list) = http(addr, "GET", &path("versions"), None, None).await;
    assert_eq!(list[0]["id"].as_i64(), Some(v1_id));
    let (_, _, d) = http(
        addr,
        "GET",
        &path(&format!("diff?from={v1_id}&to=seq:{head}")),
        None,
        None,
    )
    .await;
    assert_eq!(d["removed"][0]["id"], removed_id, "diff ids are stable");
    // And the same on a second instance over the same store.
    let other = TestServer::start(test_config(&db)).await;
    let (_, _, list_b) = http(other.addr, "GET", &path("versions"), None, None).await;
    assert_eq!(list_b, list);
    let (_, _, d_b) = http(
        other.addr,
        "GET",
        &path(&format!("diff?from={v1_id}&to=seq:{head}")),
        None,
        None,
    )
    .await;
    assert_eq!(d_b, d, "diffs agree across instances");
    other.stop().await;
    server.stop().await;
}
