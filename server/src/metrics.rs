//! Prometheus metrics, served on `/metrics` in the text exposition format.
//!
//! One process-wide registry of typed handles (`prometheus`, tikv's crate), so the hot paths
//! pay an atomic add and nothing else, and any module counts with one line (`metrics::get()`).
//! Gauges that are a view of state the server already keeps (rooms loaded, bytes queued
//! outbound, store and hub health) are set when scraped rather than kept in step by hand.
//!
//! Labels are bounded by construction: `protocol` has three values and `code` is one of the
//! engine's and the server's fixed error codes. Never a room id, a user or a token.
//!
//! `/metrics` is open unless `METRICS=off` (404) or `METRICS_TOKEN` is set (then it wants
//! `Authorization: Bearer <token>` and answers 401 without it).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use concord_engine::host::Protocol;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// `concord_connections{protocol}`: open WebSockets.
    pub connections: IntGaugeVec,
    /// `concord_rooms_loaded`: set when scraped.
    pub rooms_loaded: IntGauge,
    /// `concord_ops_committed_total`: updates durable in the store.
    pub ops_committed: IntCounter,
    /// `concord_commit_seconds`: one group commit (transaction, retries included).
    pub commit_seconds: Histogram,
    /// `concord_fanout_seconds`: a room's burst of input to its frames queued to members.
    pub fanout_seconds: Histogram,
    /// `concord_outbound_queued_bytes`: set when scraped.
    pub outbound_queued_bytes: IntGauge,
    /// `concord_slow_consumer_closes_total`.
    pub slow_consumer_closes: IntCounter,
    /// `concord_bytes_in_total`: WebSocket data frames read.
    pub bytes_in: IntCounter,
    /// `concord_bytes_out_total`: WebSocket data frames handed to sockets.
    pub bytes_out: IntCounter,
    /// `concord_error_frames_total{code}`.
    pub error_frames: IntCounterVec,
    /// `concord_store_up`: 1 if the last check passed.
    pub store_up: IntGauge,
    /// `concord_hub_up`: 1 if the last check passed.
    pub hub_up: IntGauge,
    /// `concord_webhook_deliveries_total{result}`: `ok` (2xx) or `failed` (retried later).
    pub webhook_deliveries: IntCounterVec,
    /// `concord_webhook_outbox_depth`: events waiting in the outbox (all instances).
    pub webhook_outbox_depth: IntGauge,
    /// `concord_refused_total{budget}`: work refused because an instance budget was full.
    pub refused: IntCounterVec,
}

/// Latency buckets from 0.5 ms to 10 s: a commit is an fsync (ms) but a stalled store is
/// bounded by `COMMIT_TIMEOUT_MS` (s).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.into()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let connections = IntGaugeVec::new(
            Opts::new("concord_connections", "Open WebSockets by protocol."),
            &["protocol"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        let error_frames = IntCounterVec::new(
            Opts::new(
                "concord_error_frames_total",
                "Error frames sent to clients, by error code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(error_frames.clone()))?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "concord_webhook_deliveries_total",
                "Webhook deliveries: ok (the receiver answered 2xx) or failed (retried later).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "concord_refused_total",
                "Work refused (overloaded, 1013 / 503) because an instance budget was full, \
                 by budget.",
            ),
            &["budget"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        // Present from the start, at 0, so dashboards see every protocol.
        for p in [Protocol::Json, Protocol::Yjs, Protocol::Hocuspocus] {
            connections.with_label_values(&[label(p)]);
        }
        Ok(Metrics {
            connections,
            rooms_loaded: gauge("concord_rooms_loaded", "Rooms loaded in this instance.")?,
            ops_committed: counter(
                "concord_ops_committed_total",
                "Updates committed to the store (each one acked op).",
            )?,
            commit_seconds: histogram(
                "concord_commit_seconds",
                "Duration of one group commit (many rooms' updates in one transaction).",
            )?,
            fanout_seconds: histogram(
                "concord_fanout_seconds",
                "From a room taking a burst of updates to their frames queued to its members.",
            )?,
            outbound_queued_bytes: gauge(
                "concord_outbound_queued_bytes",
                "Bytes queued to clients and not yet written, across connections.",
            )?,
            slow_consumer_closes: counter(
                "concord_slow_consumer_closes_total",
                "Connections closed (1013) for not reading fast enough.",
            )?,
            bytes_in: counter(
                "concord_bytes_in_total",
                "Bytes of WebSocket data frames read from clients.",
            )?,
            bytes_out: counter(
                "concord_bytes_out_total",
                "Bytes of WebSocket data frames written to clients.",
            )?,
            error_frames,
            store_up: gauge(
                "concord_store_up",
                "1 if the store answered its last health check (/readyz or a scrape), else 0.",
            )?,
            hub_up: gauge(
                "concord_hub_up",
                "1 if the hub (Redis, or in-memory) answered its last health check, else 0.",
            )?,
            webhook_deliveries,
            webhook_outbox_depth: gauge(
                "concord_webhook_outbox_depth",
                "Webhook events waiting for delivery (read from the store every few seconds).",
            )?,
            refused,
            registry,
        })
    }

    /// Work was refused for the instance budget `budget` (a fixed name, e.g. `rooms`).
    pub fn refused(&self, budget: &'static str) {
        self.refused.with_label_values(&[budget]).inc();
    }

    /// One more open socket of `protocol`, until the guard is dropped.
    pub fn connection(&self, protocol: Protocol) -> ConnectionGuard {
        let gauge = self.connections.with_label_values(&[label(protocol)]);
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// A webhook delivery ended.
    pub fn webhook_delivery(&self, ok: bool) {
        self.webhook_deliveries
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// The outbox holds `depth` events.
    pub fn webhook_depth(&self, depth: i64) {
        self.webhook_outbox_depth.set(depth);
    }

    /// An error frame with `code` is being sent.
    pub fn error_frame(&self, code: &str) {
        self.error_frames.with_label_values(&[code]).inc();
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Keeps `concord_connections{protocol}` one higher while it lives.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `protocol` label of a protocol.
pub fn label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Json => "json",
        Protocol::Yjs => "y-websocket",
        Protocol::Hocuspocus => "hocuspocus",
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Only fails on a duplicate or malformed name, which the unit test below rules out.
    Metrics::new().expect("metric definitions are valid")
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Seconds since `start`, for the histograms.
pub fn seconds(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_name() {
        let m = Metrics::new().expect("valid definitions");
        m.ops_committed.inc_by(3);
        m.error_frame("bad_base64");
        let _open = m.connection(Protocol::Yjs);
        m.commit_seconds.observe(0.002);
        let text = m.render();
        for name in [
            "concord_connections{protocol=\"json\"} 0",
            "concord_connections{protocol=\"y-websocket\"} 1",
            "concord_connections{protocol=\"hocuspocus\"} 0",
            "concord_rooms_loaded 0",
            "concord_ops_committed_total 3",
            "concord_commit_seconds_bucket{le=\"0.0025\"} 1",
            "concord_fanout_seconds_count 0",
            "concord_outbound_queued_bytes 0",
            "concord_slow_consumer_closes_total 0",
            "concord_bytes_in_total 0",
            "concord_bytes_out_total 0",
            "concord_error_frames_total{code=\"bad_base64\"} 1",
            "concord_store_up 0",
            "concord_hub_up 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        drop(_open);
        assert!(m
            .render()
            .contains("concord_connections{protocol=\"y-websocket\"} 0"));
    }
}
