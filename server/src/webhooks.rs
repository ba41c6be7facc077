//! Webhooks: `document.changed` (debounced per room), `room.loaded` and `room.unloaded`,
//! POSTed as signed JSON to `WEBHOOK_URL` from the durable outbox in the store
//! ([`crate::store::webhooks`]).
//!
//! Delivery is at least once: an event is deleted from the outbox only after the receiver
//! answered 2xx, so a restart, a crash or a receiver outage delays events but loses none.
//! Receivers deduplicate by `id` (also in `Concord-Event-Id`). A failed delivery is retried
//! with exponential backoff and jitter, forever: while it waits, later changes of the room
//! extend the same event, so the outbox holds at most three rows per room.
//!
//! Each body is signed like Stripe's webhooks: `Concord-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>" under WEBHOOK_SECRET>`; a receiver recomputes it, compares in
//! constant time, and refuses old `t` to stop replays.
//!
//! The HTTP client is `reqwest` (rustls, no system OpenSSL): pooled connections, https, and
//! timeouts on connect and on the whole request.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use rand::Rng;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;
use crate::store::webhooks::{OutboxRow, Timing, CHANGED};
use crate::store::{now_unix_ms, Store};

/// Webhook settings (`WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where events are POSTed.
    pub url: String,
    /// The HMAC key of `Concord-Signature`.
    pub secret: Secret,
    /// `document.changed` goes out this long after a room's latest change...
    pub debounce: Duration,
    /// ...and at the latest this long after its first undelivered one.
    pub max_delay: Duration,
    /// Bound on one delivery (connect and response).
    pub timeout: Duration,
    /// First retry delay; doubled per failed attempt.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// Shortest webhook secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

impl WebhookSettings {
    /// The defaults of every setting but the URL and the secret.
    pub const DEFAULT: WebhookSettings = WebhookSettings {
        url: String::new(),
        secret: Secret::empty(),
        debounce: Duration::from_millis(2000),
        max_delay: Duration::from_millis(10_000),
        timeout: Duration::from_millis(5000),
        retry_min: Duration::from_millis(1000),
        retry_max: Duration::from_millis(300_000),
    };

    /// Whether the settings make sense; else the variable at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|_| ("WEBHOOK_URL", "expected an http:// or https:// URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(("WEBHOOK_URL", "expected an http:// or https:// URL"));
        }
        if self.secret.expose().len() < MIN_SECRET_BYTES {
            return Err((
                "WEBHOOK_SECRET",
                "required with WEBHOOK_URL: expected at least 16 bytes (or WEBHOOK_SECRET_FILE)",
            ));
        }
        if self.max_delay < self.debounce {
            return Err((
                "WEBHOOK_MAX_DELAY_MS",
                "expected at least WEBHOOK_DEBOUNCE_MS",
            ));
        }
        if self.retry_max < self.retry_min {
            return Err((
                "WEBHOOK_RETRY_MAX_MS",
                "expected at least WEBHOOK_RETRY_MIN_MS",
            ));
        }
        Ok(())
    }

    /// What the store needs to schedule `document.changed`.
    pub fn timing(&self) -> Timing {
        Timing {
            debounce_ms: self.debounce.as_millis() as i64,
            max_delay_ms: self.max_delay.as_millis() as i64,
        }
    }
}

/// The `Concord-Signature` value for `body` sent at unix second `t`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Delay before the attempt after `attempts` failed ones: `min * 2^(attempts-1)` capped at
/// `max`, then scaled by `jitter` in [0.8, 1.2) so instances and rooms spread their retries.
pub fn backoff(attempts: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let doubled = min.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(jitter.clamp(0.8, 1.2))
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The JSON body of an outbox row. `id` is stable across retries of the same content.
pub fn body(row: &OutboxRow) -> Vec<u8> {
    let value = if row.kind == CHANGED {
        json!({
            "id": format!("{}:{}:{}-{}", row.kind, row.room, row.first_seq, row.last_seq),
            "type": row.kind,
            "room": row.room,
            "first_seq": row.first_seq,
            "seq": row.last_seq,
            "first_changed_at": rfc3339(row.first_at),
            "changed_at": rfc3339(row.last_at),
        })
    } else {
        json!({
            "id": format!("{}:{}:{}", row.kind, row.room, row.last_at),
            "type": row.kind,
            "room": row.room,
            "seq": row.last_seq,
            "time": rfc3339(row.last_at),
        })
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Rows claimed per pass, and deliveries in flight at once.
const BATCH: i64 = 16;
/// How often the outbox is looked at when nothing is due.
const POLL: Duration = Duration::from_millis(100);

/// Delivers the outbox until `shutdown`. Rows stay leased for twice the delivery timeout, so
/// if this instance dies mid-delivery another one (or this one, restarted) retries them.
pub async fn run(store: Arc<dyn Store>, settings: WebhookSettings, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("concord/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot build the HTTP client; not delivering");
            return;
        }
    };
    let lease_ms = settings.timeout.as_millis() as i64 * 2 + 1000;
    let mut last_depth = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        if last_depth.elapsed() >= Duration::from_secs(5) {
            last_depth = std::time::Instant::now();
            if let Ok(depth) = store.webhook_depth().await {
                crate::metrics::get().webhook_depth(depth);
            }
        }
        let now = now_unix_ms();
        let rows = match store.webhook_due(now).await {
            Ok(true) => match store.webhook_claim(now, lease_ms, BATCH).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: claiming due events failed");
                    Vec::new()
                }
            },
            Ok(false) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: reading the outbox failed");
                Vec::new()
            }
        };
        let full = rows.len() as i64 == BATCH;
        let deliveries = rows
            .into_iter()
            .map(|row| deliver(&client, &store, &settings, row));
        let all = futures_util::future::join_all(deliveries);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = all => {}
        }
        if !full {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// One delivery and its bookkeeping.
async fn deliver(
    client: &reqwest::Client,
    store: &Arc<dyn Store>,
    settings: &WebhookSettings,
    row: OutboxRow,
) {
    let body = body(&row);
    let t = (now_unix_ms() / 1000).max(0) as u64;
    let sig = signature(settings.secret.expose().as_bytes(), t, &body);
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let sent = client
        .post(&settings.url)
        .header("content-type", "application/json")
        .header("concord-signature", sig)
        .header("concord-event-id", id)
        .header("concord-event", row.kind.as_str())
        .body(body)
        .send()
        .await;
    let outcome = match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("status {}", r.status().as_u16())),
        // Without the URL: it may carry credentials.
        Err(e) => Err(if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        }),
    };
    let metrics = crate::metrics::get();
    let booked = match outcome {
        Ok(()) => {
            metrics.webhook_delivery(true);
            tracing::debug!(room = %row.room, kind = %row.kind, seq = row.last_seq, "webhook delivered");
            store.webhook_done(&row, now_unix_ms()).await
        }
        Err(why) => {
            metrics.webhook_delivery(false);
            let attempts = u32::try_from(row.attempts).unwrap_or(0) + 1;
            let wait = backoff(
                attempts,
                settings.retry_min,
                settings.retry_max,
                rand::thread_rng().gen_range(0.8..1.2),
            );
            tracing::warn!(room = %row.room, kind = %row.kind, attempts, error = %why,
                retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
            store
                .webhook_retry(&row, now_unix_ms() + wait.as_millis() as i64)
                .await
        }
    };
    if let Err(e) = booked {
        // The lease expires and the row is delivered again: at least once.
        tracing::warn!(room = %row.room, error = %e, "webhooks: recording a delivery failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the README, so receivers can test their check against it.
    #[test]
    fn signature_is_hmac_sha256_of_t_dot_body() {
        let sig = signature(
            b"0123456789abcdef",
            1_700_000_000,
            br#"{"type":"room.loaded"}"#,
        );
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        let hex = &sig["t=1700000000,v1=".len()..];
        assert_eq!(hex.len(), 64);
        // Any change of key, time or body changes it.
        assert_ne!(
            sig,
            signature(
                b"0123456789abcdeF",
                1_700_000_000,
                br#"{"type":"room.loaded"}"#
            )
        );
        assert_ne!(
            sig,
            signature(
                b"0123456789abcdef",
                1_700_000_001,
                br#"{"type":"room.loaded"}"#
            )
        );
        assert_ne!(
            sig,
            signature(
                b"0123456789abcdef",
                1_700_000_000,
                br#"{"type":"room.loadeD"}"#
            )
        );
        // RFC 4231 test case 2 (key "Jefe"): the construction is plain HMAC-SHA256.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(1000), Duration::from_millis(300_000));
        let at = |n| backoff(n, min, max, 1.0).as_millis();
        assert_eq!([at(1), at(2), at(3), at(4)], [1000, 2000, 4000, 8000]);
        assert_eq!(at(9), 256_000);
        assert_eq!(at(10), 300_000);
        assert_eq!(at(1000), 300_000);
        assert_eq!(backoff(1, min, max, 0.5).as_millis(), 800);
        assert_eq!(backoff(1, min, max, 1.19).as_millis(), 1190);
    }

    #[test]
    fn settings_are_checked() {
        let ok = WebhookSettings {
            url: "https://hooks.example.com/concord".into(),
            secret: Secret::new("0123456789abcdef"),
            ..WebhookSettings::DEFAULT
        };
        assert!(ok.check().is_ok());
        let bad = |s: WebhookSettings| s.check().unwrap_err().0;
        assert_eq!(
            bad(WebhookSettings {
                url: "ftp://x/y".into(),
                ..ok.clone()
            }),
            "WEBHOOK_URL"
        );
        assert_eq!(
            bad(WebhookSettings {
                url: "not a url".into(),
                ..ok.clone()
            }),
            "WEBHOOK_URL"
        );
        assert_eq!(
            bad(WebhookSettings {
                secret: Secret::new("short"),
                ..ok.clone()
            }),
            "WEBHOOK_SECRET"
        );
        assert_eq!(
            bad(WebhookSettings {
                max_delay: Duration::from_millis(10),
                ..ok.clone()
            }),
            "WEBHOOK_MAX_DELAY_MS"
        );
    }

    #[test]
    fn change_events_name_their_range_and_keep_their_id_across_retries() {
        let row = OutboxRow {
            room: "r".into(),
            kind: CHANGED.into(),
            first_seq: 4,
            last_seq: 9,
            first_at: 1_700_000_000_000,
            last_at: 1_700_000_001_500,
            attempts: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&row)).unwrap();
        assert_eq!(v["id"], "document.changed:r:4-9");
        assert_eq!(
            (v["first_seq"].as_i64(), v["seq"].as_i64()),
            (Some(4), Some(9))
        );
        assert_eq!(v["changed_at"], "2023-11-14T22:13:21.5Z");
        let retried = OutboxRow { attempts: 3, ..row };
        assert_eq!(body(&retried), serde_json::to_vec(&v).unwrap());
    }
}
