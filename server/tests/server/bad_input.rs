//! Hostile frames against a live room: each gets an error frame (or a clean close), nothing is
//! applied, other connections and the server carry on.

use concord_engine::wire::encode_b64;
use concord_engine::{Document, Limits};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::suite::{next_text, your_presence_id};
use crate::support::*;

fn error_code(frame: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(frame).expect("json");
    assert_eq!(v["t"], "error", "{frame}");
    v["code"].as_str().unwrap_or_default().to_owned()
}

pub async fn bad_input_changes_nothing(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let mut config = test_config(&db);
    config.limits = Limits {
        max_frame_bytes: 64 * 1024,
        max_update_bytes: 48 * 1024,
        max_presence_bytes: 1024,
    };
    let server = TestServer::start(config).await;
    let room = unique("bad");
    let mut good = TestClient::new(&server.ws_base(), &room, 700);
    good.connect().await;
    good.session.insert(0, "hello").unwrap();
    good.pump_until(|c| c.session.pending_count() == 0).await;
    let before = good.state();

    let url = format!("{}/rooms/{room}/ws", server.ws_base());
    let (mut bad, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert!(next_text(&mut bad).await.starts_with(r#"{"t":"sync""#));
    your_presence_id(&mut bad).await;

    // An update that depends on something the room never saw.
    let mut other = Document::new(701);
    other.insert(0, "never sent").unwrap();
    let orphan = other.insert(0, "orphan").unwrap();
    let garbage = encode_b64(&[0xff, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef]);
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("not json".into()), "malformed_message"),
        (Message::Text(r#"{"t":"op"}"#.into()), "malformed_message"),
        (
            Message::Text(r#"{"t":"op","data":{"update":"!!!"}}"#.into()),
            "bad_base64",
        ),
        (
            Message::Text(
                format!(r#"{{"t":"op","id":"x-1","data":{{"update":"{garbage}"}}}}"#).into(),
            ),
            "invalid_update",
        ),
        (
            Message::Text(format!(r#"{{"t":"sync","update":"{garbage}"}}"#).into()),
            "invalid_update",
        ),
        (
            Message::Text(
                format!(
                    r#"{{"t":"op","id":"x-2","data":{{"update":"{}"}}}}"#,
                    encode_b64(&orphan)
                )
                .into(),
            ),
            "missing_dependencies",
        ),
        (
            Message::Text(r#"{"t":"op","id":"has space","data":{"update":"AA=="}}"#.into()),
            "bad_op_id",
        ),
        (
            Message::Text(
                format!(
                    r#"{{"t":"op","data":{{"update":"{}"}}}}"#,
                    "A".repeat(80_000)
                )
                .into(),
            ),
            "too_large",
        ),
        (Message::Binary(vec![1u8, 2, 3].into()), "unsupported_frame"),
    ];
    for (frame, code) in cases {
        bad.send(frame).await.unwrap();
        let reply = next_text(&mut bad).await;
        assert_eq!(error_code(&reply), code, "{reply}");
    }
    // Unknown message types are ignored (no reply); the connection stays usable.
    bad.send(Message::Text(r#"{"t":"hello"}"#.into()))
        .await
        .unwrap();

    // Nothing was applied: the good client sees no change, a newcomer gets the same bytes.
    good.pump_for(std::time::Duration::from_millis(100)).await;
    assert_eq!(good.state(), before);
    let mut newcomer = TestClient::new(&server.ws_base(), &room, 702);
    newcomer.connect().await;
    assert_eq!(newcomer.state(), before);

    // The good client keeps working, and the bad connection still receives broadcasts.
    good.session.insert(5, " world").unwrap();
    good.pump_until(|c| c.session.pending_count() == 0).await;
    let op = next_text(&mut bad).await;
    assert!(op.starts_with(r#"{"t":"op""#), "{op}");

    // A frame over twice the limit is not buffered: the socket is closed.
    let huge = format!(
        r#"{{"t":"op","data":{{"update":"{}"}}}}"#,
        "A".repeat(200_000)
    );
    let _ = bad.send(Message::Text(huge.into())).await;
    let closed = loop {
        match tokio::time::timeout(DEADLINE, bad.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
            Some(Ok(_)) => continue,
        }
    };
    assert!(closed);

    assert_eq!(http_get_status(server.addr, "/healthz").await.unwrap(), 200);
    newcomer.pump_until(|c| c.text() == "hello world").await;
    assert_eq!(newcomer.state(), good.state());
    server.stop().await;
}
