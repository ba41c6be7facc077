//! Several instances on one Postgres and one Redis.

use std::time::Duration;

use concord_engine::Document;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::suite::{next_text, your_presence_id};
use crate::support::*;

async fn instance(pg: &str, redis: &str) -> TestServer {
    let mut config = test_config(pg);
    config.redis_url = Some(redis.to_owned());
    TestServer::start(config).await
}

/// Every op a client saw acked is in `state`.
fn assert_acked_present(client: &TestClient, state: &[u8]) {
    let mut doc = Document::from_update(1, state).unwrap();
    for (id, update) in &client.sent {
        if client.acked.contains(id) {
            assert!(
                !doc.apply_update(update).unwrap().changed,
                "acked op {id} missing"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_converge_and_share_presence() {
    let Some((pg, redis)) = scale_out_services().await else {
        return;
    };
    let a = instance(&pg, &redis).await;
    let b = instance(&pg, &redis).await;
    let room = unique("two");
    let mut on_a = TestClient::new(&a.ws_base(), &room, 801);
    let mut on_b = TestClient::new(&b.ws_base(), &room, 802);
    on_a.connect().await;
    on_b.connect().await;
    for round in 0..30 {
        on_a.session.insert(0, &format!("A{round}|")).unwrap();
        on_b.session.insert(0, &format!("B{round}|")).unwrap();
        on_a.send_pending().await;
        on_b.send_pending().await;
        on_a.pump_for(Duration::from_millis(2)).await;
        on_b.pump_for(Duration::from_millis(2)).await;
    }
    converge(&mut [&mut on_a, &mut on_b]).await;
    assert!(on_a.text().contains("A29|") && on_a.text().contains("B29|"));

    // Presence from A reaches B, and its "left" follows when A's client goes.
    let (mut pa, _) = tokio_tungstenite::connect_async(format!("{}/rooms/{room}/ws", a.ws_base()))
        .await
        .unwrap();
    let (mut pb, _) = tokio_tungstenite::connect_async(format!("{}/rooms/{room}/ws", b.ws_base()))
        .await
        .unwrap();
    assert!(next_text(&mut pa).await.starts_with(r#"{"t":"sync""#));
    assert!(next_text(&mut pb).await.starts_with(r#"{"t":"sync""#));
    let ana = your_presence_id(&mut pa).await;
    assert_ne!(
        ana,
        your_presence_id(&mut pb).await,
        "ids are unique across instances"
    );
    pa.send(Message::Text(
        r##"{"t":"presence","user":"ana","cursor":1,"color":"#f00"}"##.into(),
    ))
    .await
    .unwrap();
    let seen = next_presence(&mut pb).await;
    assert_eq!(
        seen,
        format!(r##"{{"t":"presence","user":"{ana}","cursor":1,"color":"#f00"}}"##)
    );
    pa.close(None).await.unwrap();
    let left = next_presence(&mut pb).await;
    assert_eq!(
        left,
        format!(r##"{{"t":"presence","user":"{ana}","color":"#f00","left":true}}"##)
    );
    a.stop().await;
    b.stop().await;
}

async fn next_presence(ws: &mut Ws) -> String {
    loop {
        let frame = next_text(ws).await;
        if frame.starts_with(r#"{"t":"presence""#) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_load_loses_nothing() {
    let Some((pg, _)) = scale_out_services().await else {
        return;
    };
    let mut redis = OwnRedis::start().await;
    let a = instance(&pg, &redis.url()).await;
    let b = instance(&pg, &redis.url()).await;
    let room = unique("redis-restart");
    let mut clients = vec![
        TestClient::new(&a.ws_base(), &room, 811),
        TestClient::new(&b.ws_base(), &room, 812),
        TestClient::new(&a.ws_base(), &room, 813),
        TestClient::new(&b.ws_base(), &room, 814),
    ];
    for c in clients.iter_mut() {
        c.connect().await;
    }
    let type_round = |clients: &mut Vec<TestClient>, tag: &str, n: usize| {
        for (i, c) in clients.iter_mut().enumerate() {
            for k in 0..n {
                let len = c.session.document().len();
                c.session.insert(len, &format!("{tag}{i}.{k} ")).unwrap();
            }
        }
    };
    for round in 0..20 {
        type_round(&mut clients, "before", 1);
        for c in clients.iter_mut() {
            c.pump_for(Duration::from_millis(3)).await;
        }
        if round == 10 {
            redis.kill();
        }
    }
    // Redis is down: every instance keeps serving and acking its own clients.
    for _ in 0..20 {
        type_round(&mut clients, "down", 1);
        for c in clients.iter_mut() {
            c.pump_for(Duration::from_millis(3)).await;
        }
    }
    for c in clients.iter_mut() {
        c.pump_until(|c| c.session.pending_count() == 0).await;
    }
    redis.restart().await;
    let back = tokio::time::Instant::now();
    {
        let mut refs: Vec<&mut TestClient> = clients.iter_mut().collect();
        converge(&mut refs).await;
    }
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "converged {took:?} after Redis returned"
    );
    eprintln!("converged {took:?} after Redis returned");
    let state = clients[0].state();
    for c in &clients {
        assert_acked_present(c, &state);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_clients_move_over_and_converge() {
    let Some((pg, redis)) = scale_out_services().await else {
        return;
    };
    let a = ChildServer::start_with(&pg, Some(&redis), free_port()).await;
    let b = instance(&pg, &redis).await;
    let room = unique("kill9");
    let mut on_a = TestClient::new(&a.ws_base(), &room, 821);
    let mut on_b = TestClient::new(&b.ws_base(), &room, 822);
    on_a.connect().await;
    on_b.connect().await;
    for k in 0..300u32 {
        on_a.session.insert(0, &format!("a{k};")).unwrap();
        if k % 3 == 0 {
            on_b.session.insert(0, &format!("b{k};")).unwrap();
        }
        on_a.pump_for(Duration::from_millis(1)).await;
        on_b.pump_for(Duration::from_millis(1)).await;
    }
    a.kill9();
    // A's client reconnects to B with ?sv= and replays whatever was not acked.
    on_a.disconnect();
    on_a.set_base(&b.ws_base());
    on_a.connect().await;
    converge(&mut [&mut on_a, &mut on_b]).await;
    let mut fresh = TestClient::new(&b.ws_base(), &room, 823);
    fresh.connect().await;
    assert_eq!(fresh.state(), on_a.state());
    assert_acked_present(&on_a, &fresh.state());
    assert_acked_present(&on_b, &fresh.state());
    b.stop().await;
}

/// What arrives through Redis is checked like what a client sends: a forged update is not
/// integrated (the room reads the truth from the store instead) and an oversized presence is
/// not relayed, while ordinary hub traffic still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_input_is_checked_like_client_input() {
    let Some((pg, redis_url)) = scale_out_services().await else {
        return;
    };
    let a = instance(&pg, &redis_url).await;
    let room = unique("hubcheck");
    let mut c = TestClient::new(&a.ws_base(), &room, 811);
    c.connect().await;
    c.session.insert(0, "truth").unwrap();
    c.pump_until(|c| c.session.pending_count() == 0).await;
    let before = c.state();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/rooms/{room}/ws", a.ws_base()))
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.starts_with(r#"{"t":"sync""#));

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let forged =
        concord_engine::wire::encode_b64(&concord_testkit::lib0::forged_blocks(5, 1, 1 << 20));
    let huge = "n".repeat(8 * 1024);
    for payload in [
        // Seq 2: the next one after "truth".
        format!(r#"{{"o":"evil","seq":2,"update":"{forged}"}}"#),
        format!(r#"{{"o":"evil","presence":{{"user":"huge","name":"{huge}"}}}}"#),
        r#"{"o":"evil","presence":{"user":"ghost","name":"g"}}"#.to_owned(),
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("room:{room}"))
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The ordinary presence arrives; the huge one, published before it, never did.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ghost presence never relayed"
        );
        let frame = next_text(&mut ws).await;
        assert!(
            !frame.contains(r#""user":"huge""#),
            "an oversized presence was relayed"
        );
        if frame.contains(r#""user":"ghost""#) {
            break;
        }
    }
    // The forged update did not land, and the room still takes edits at the next seq.
    c.pump_for(Duration::from_millis(100)).await;
    assert_eq!(c.state(), before);
    c.session.insert(5, " holds").unwrap();
    c.pump_until(|c| c.session.pending_count() == 0).await;
    let mut fresh = TestClient::new(&a.ws_base(), &room, 812);
    fresh.connect().await;
    assert_eq!(fresh.text(), "truth holds");
    a.stop().await;
}

/// `DELETE /api/rooms/{id}` on one instance closes the room's members on another (4404,
/// through the hub), and the next client there finds the room empty, not the old document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_deleted_on_one_instance_closes_on_the_other() {
    let Some((pg, redis)) = scale_out_services().await else {
        return;
    };
    let a = instance(&pg, &redis).await;
    let b = instance(&pg, &redis).await;
    let room = unique("deleted");
    let mut on_b = TestClient::new(&b.ws_base(), &room, 811);
    on_b.connect().await;
    on_b.session.insert(0, "to be deleted").unwrap();
    on_b.pump_until(|c| c.session.pending_count() == 0).await;

    let (status, _, body) =
        crate::auth::http(a.addr, "DELETE", &format!("/api/rooms/{room}"), None, None).await;
    assert_eq!(status, 204, "{body}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while on_b.pump_for(Duration::from_millis(50)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's member not closed"
        );
    }
    assert_eq!(on_b.close_code, Some(4404));
    let mut fresh = TestClient::new(&b.ws_base(), &room, 812);
    fresh.connect().await;
    assert_eq!(fresh.text(), "");
    let (status, _, body) = crate::auth::http(
        b.addr,
        "GET",
        &format!("/api/rooms/{room}/text"),
        None,
        None,
    )
    .await;
    assert_eq!((status, body["text"].as_str()), (200, Some("")), "{body}");
}
