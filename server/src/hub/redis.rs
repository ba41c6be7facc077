//! The Redis hub: committed updates and presence on channel `room:{id}`, presence membership in
//! the sorted set `presence:{room}` (score = expiry in unix ms) with each user's last frame in
//! the hash `presence-state:{room}`.
//!
//! Two background tasks own the connections. The publisher drains a bounded queue (a room never
//! waits on Redis; if Redis is down the queue fills and messages are dropped, which is safe
//! because other instances catch up from the store). The subscriber holds one pub/sub
//! connection, reconnects with backoff, re-subscribes every loaded room and tells each room to
//! [`HubEvent::Resync`] after every (re)subscription, since messages may have been missed.
//!
//! Grant changes go on the one channel `concord:access`, which every instance subscribes to
//! (not only instances with the room loaded: their grant caches must forget it too). After a
//! reconnect the feed says [`AccessSignal::Missed`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use concord_engine::wire::{decode_b64, encode_b64, Presence};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AccessSignal, Hub, HubEvent, Subscription};
use crate::error::{Result, ServerError};

/// A message on `room:{id}`.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The publishing instance, so it can skip its own messages.
    o: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<Presence>,
    /// The room was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The channel of grant changes.
const ACCESS_CHANNEL: &str = "concord:access";

/// A message on [`ACCESS_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct AccessWire {
    o: String,
    change: super::AccessChange,
}

enum PubCmd {
    Access {
        payload: String,
    },
    Update {
        room: String,
        payload: String,
    },
    Presence {
        room: String,
        user: String,
        payload: String,
        state: String,
        expiry_ms: u64,
        left: bool,
    },
}

enum SubCmd {
    Subscribe {
        room: String,
        generation: u64,
        tx: mpsc::Sender<HubEvent>,
    },
    Unsubscribe {
        room: String,
        generation: u64,
    },
}

struct Unsubscribe {
    tx: mpsc::UnboundedSender<SubCmd>,
    room: String,
    generation: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self.tx.send(SubCmd::Unsubscribe {
            room: std::mem::take(&mut self.room),
            generation: self.generation,
        });
    }
}

/// Fan-out through Redis.
pub struct RedisHub {
    instance: String,
    describe: String,
    publish: mpsc::Sender<PubCmd>,
    subscribe: mpsc::UnboundedSender<SubCmd>,
    reads: ConnectionManager,
    next_generation: AtomicU64,
    access: std::sync::Mutex<Option<mpsc::Receiver<AccessSignal>>>,
}

fn channel(room: &str) -> String {
    format!("room:{room}")
}

fn presence_key(room: &str) -> String {
    format!("presence:{room}")
}

fn state_key(room: &str) -> String {
    format!("presence-state:{room}")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisHub {
    /// Connects to Redis at `url` (failing if it is not reachable at startup) and starts the
    /// publisher and subscriber tasks.
    pub async fn connect(url: &str) -> Result<RedisHub> {
        // Startup prints this error: the URL's password must not be in it.
        let bad = |e: redis::RedisError| ServerError::Config {
            name: "REDIS_URL",
            value: crate::secret::redact_url(url),
            reason: format!(
                "{}; expected a reachable Redis at redis://[:password@]host:port",
                crate::secret::scrub(&e.to_string(), url)
            ),
        };
        let client = redis::Client::open(url).map_err(bad)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let publisher = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(bad)?;
        let reads = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(bad)?;
        let instance = format!("{:016x}", rand::random::<u64>());
        let (publish, publish_rx) = mpsc::channel(16_384);
        let (subscribe, subscribe_rx) = mpsc::unbounded_channel();
        let (access_tx, access_rx) = mpsc::channel(1024);
        tokio::spawn(publisher_task(publisher, publish_rx));
        tokio::spawn(subscriber_task(
            client,
            instance.clone(),
            subscribe_rx,
            access_tx,
        ));
        let host = url.rsplit('@').next().unwrap_or(url).to_owned();
        Ok(RedisHub {
            describe: format!("redis {host} (instance {instance})"),
            instance,
            publish,
            subscribe,
            reads,
            next_generation: AtomicU64::new(1),
            access: std::sync::Mutex::new(Some(access_rx)),
        })
    }

    fn enqueue(&self, cmd: PubCmd) {
        if self.publish.try_send(cmd).is_err() {
            tracing::debug!(
                "redis publish queue full; other instances will catch up from the store"
            );
        }
    }
}

#[async_trait]
impl Hub for RedisHub {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn subscribe(&self, room: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(4096);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let _ = self.subscribe.send(SubCmd::Subscribe {
            room: room.to_owned(),
            generation,
            tx,
        });
        let guard = Unsubscribe {
            tx: self.subscribe.clone(),
            room: room.to_owned(),
            generation,
        };
        Subscription::new(rx, Some(Box::new(guard)))
    }

    fn publish_update(&self, room: &str, seq: u64, update: &[u8]) {
        let wire = Wire {
            o: self.instance.clone(),
            seq: Some(seq),
            update: Some(encode_b64(update)),
            presence: None,
            deleted: false,
        };
        if let Ok(payload) = serde_json::to_string(&wire) {
            self.enqueue(PubCmd::Update {
                room: room.to_owned(),
                payload,
            });
        }
    }

    fn publish_deleted(&self, room: &str) {
        let wire = Wire {
            o: self.instance.clone(),
            seq: None,
            update: None,
            presence: None,
            deleted: true,
        };
        if let Ok(payload) = serde_json::to_string(&wire) {
            self.enqueue(PubCmd::Update {
                room: room.to_owned(),
                payload,
            });
        }
    }

    fn publish_presence(&self, room: &str, presence: &Presence, ttl_ms: u64) {
        let wire = Wire {
            o: self.instance.clone(),
            seq: None,
            update: None,
            presence: Some(presence.clone()),
            deleted: false,
        };
        let (Ok(payload), Ok(state)) = (
            serde_json::to_string(&wire),
            serde_json::to_string(presence),
        ) else {
            return;
        };
        self.enqueue(PubCmd::Presence {
            room: room.to_owned(),
            user: presence.user.clone(),
            payload,
            state,
            expiry_ms: unix_ms() + ttl_ms,
            left: presence.left,
        });
    }

    fn publish_access(&self, change: &super::AccessChange) {
        let wire = AccessWire {
            o: self.instance.clone(),
            change: change.clone(),
        };
        if let Ok(payload) = serde_json::to_string(&wire) {
            self.enqueue(PubCmd::Access { payload });
        }
    }

    fn access_feed(&self) -> mpsc::Receiver<AccessSignal> {
        match self.access.lock().ok().and_then(|mut a| a.take()) {
            Some(rx) => rx,
            None => mpsc::channel(1).1,
        }
    }

    async fn live_presence(&self, room: &str) -> Vec<Presence> {
        let mut conn = self.reads.clone();
        let now = unix_ms();
        let users: Vec<String> = match redis::cmd("ZRANGEBYSCORE")
            .arg(presence_key(room))
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await
        {
            Ok(users) => users,
            Err(e) => {
                tracing::debug!(room, error = %e, "presence read failed");
                return Vec::new();
            }
        };
        if users.is_empty() {
            return Vec::new();
        }
        let states: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(state_key(room))
            .arg(&users)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        states
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect()
    }

    /// A `PING` on the reads connection (which reconnects by itself, so this turns ok again
    /// once Redis is back).
    async fn ping(&self) -> Result<()> {
        let mut conn = self.reads.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| ServerError::Hub {
                reason: e.to_string(),
            })
    }
}

async fn publisher_task(mut conn: ConnectionManager, mut rx: mpsc::Receiver<PubCmd>) {
    let mut failing = false;
    while let Some(cmd) = rx.recv().await {
        let result: redis::RedisResult<()> = match cmd {
            PubCmd::Access { payload } => {
                redis::cmd("PUBLISH")
                    .arg(ACCESS_CHANNEL)
                    .arg(payload)
                    .query_async(&mut conn)
                    .await
            }
            PubCmd::Update { room, payload } => {
                redis::cmd("PUBLISH")
                    .arg(channel(&room))
                    .arg(payload)
                    .query_async(&mut conn)
                    .await
            }
            PubCmd::Presence {
                room,
                user,
                payload,
                state,
                expiry_ms,
                left,
            } => {
                let (set, states) = (presence_key(&room), state_key(&room));
                let now = unix_ms();
                let mut pipe = redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(channel(&room))
                    .arg(payload)
                    .ignore();
                if left {
                    pipe.cmd("ZREM").arg(&set).arg(&user).ignore();
                    pipe.cmd("HDEL").arg(&states).arg(&user).ignore();
                } else {
                    pipe.cmd("ZADD")
                        .arg(&set)
                        .arg(expiry_ms)
                        .arg(&user)
                        .ignore();
                    pipe.cmd("HSET").arg(&states).arg(&user).arg(state).ignore();
                }
                // Sweep entries of vanished instances, and let an abandoned room's keys expire.
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&set)
                    .arg("-inf")
                    .arg(now)
                    .ignore();
                let keep = expiry_ms.saturating_sub(now).max(1000) * 4;
                pipe.cmd("PEXPIRE").arg(&set).arg(keep).ignore();
                pipe.cmd("PEXPIRE").arg(&states).arg(keep).ignore();
                pipe.query_async(&mut conn).await
            }
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("redis publishing recovered");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "redis publish failed; serving local clients, others catch up from the store");
            }
            Err(_) => {}
        }
    }
}

type Subs = HashMap<String, (u64, mpsc::Sender<HubEvent>)>;

fn apply_sub_cmd(subs: &mut Subs, cmd: SubCmd) -> Option<(String, bool)> {
    match cmd {
        SubCmd::Subscribe {
            room,
            generation,
            tx,
        } => {
            subs.insert(room.clone(), (generation, tx));
            Some((room, true))
        }
        SubCmd::Unsubscribe { room, generation } => {
            if subs.get(&room).map(|(g, _)| *g) == Some(generation) {
                subs.remove(&room);
                Some((room, false))
            } else {
                None
            }
        }
    }
}

async fn subscriber_task(
    client: redis::Client,
    instance: String,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
    access: mpsc::Sender<AccessSignal>,
) {
    let mut subs: Subs = HashMap::new();
    let mut lagged: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis subscriber cannot connect");
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        cmd = cmds.recv() => match cmd {
                            Some(cmd) => { apply_sub_cmd(&mut subs, cmd); }
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = sink.subscribe(ACCESS_CHANNEL).await.is_ok();
        for room in subs.keys() {
            if sink.subscribe(channel(room)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        if connected_before {
            tracing::info!(
                rooms = subs.len(),
                "redis subscriber reconnected; rooms catch up from the store"
            );
        }
        if connected_before {
            // Grant changes published while we were away are lost: caches start over.
            let _ = access.try_send(AccessSignal::Missed);
        }
        connected_before = true;
        backoff = Duration::from_millis(100);
        // Whatever was published while we were not subscribed is only in the store now.
        for (room, (_, tx)) in &subs {
            if tx.try_send(HubEvent::Resync).is_err() {
                lagged.insert(room.clone());
            }
        }
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    match apply_sub_cmd(&mut subs, cmd) {
                        Some((room, true)) => {
                            if sink.subscribe(channel(&room)).await.is_err() {
                                break;
                            }
                            // Active from here on; anything earlier comes from the store.
                            if let Some((_, tx)) = subs.get(&room) {
                                if tx.try_send(HubEvent::Resync).is_err() {
                                    lagged.insert(room);
                                }
                            }
                        }
                        Some((room, false)) => {
                            lagged.remove(&room);
                            if sink.unsubscribe(channel(&room)).await.is_err() {
                                break;
                            }
                        }
                        None => {}
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("redis subscriber connection lost");
                        break;
                    };
                    if msg.get_channel_name() == ACCESS_CHANNEL {
                        if let Ok(wire) = serde_json::from_slice::<AccessWire>(msg.get_payload_bytes()) {
                            if wire.o != instance
                                && access.try_send(AccessSignal::Changed(wire.change)).is_err()
                            {
                                let _ = access.try_send(AccessSignal::Missed);
                            }
                        }
                        continue;
                    }
                    let Some(room) = msg.get_channel_name().strip_prefix("room:") else { continue };
                    let Some((_, tx)) = subs.get(room) else { continue };
                    let Some(event) = decode(&instance, msg.get_payload_bytes()) else { continue };
                    if tx.try_send(event).is_err() {
                        lagged.insert(room.to_owned());
                    }
                }
                _ = retry.tick(), if !lagged.is_empty() => {
                    lagged.retain(|room| match subs.get(room) {
                        Some((_, tx)) => tx.try_send(HubEvent::Resync).is_err(),
                        None => false,
                    });
                }
            }
        }
        // Connection lost: every room may miss messages until we are back.
        tokio::time::sleep(backoff).await;
    }
}

fn decode(instance: &str, payload: &[u8]) -> Option<HubEvent> {
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    if wire.o == instance {
        return None;
    }
    if wire.deleted {
        return Some(HubEvent::Deleted);
    }
    if let Some(p) = wire.presence {
        return Some(HubEvent::Presence(Box::new(p)));
    }
    let update = decode_b64("update", wire.update.as_deref()?).ok()?;
    Some(HubEvent::Update {
        seq: wire.seq?,
        update,
    })
}
