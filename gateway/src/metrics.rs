//! Prometheus metrics of the gateway, registered under the `logstream_` prefix.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    pub ingest_lines: IntCounter,
    pub ingest_bytes: IntCounter,
    pub ingest_duplicates: IntCounter,
    /// Seconds from receiving a batch to its durable ack.
    pub ack_latency: Histogram,
    pub live_viewers: IntGauge,
    /// Times a viewer fell behind the broadcast and switched to store catch-up.
    pub lagging_viewers: IntCounter,
    pub store_bytes: IntGauge,
    /// Deployment logs open now (a running one holds two descriptors).
    pub open_logs: IntGauge,
    /// Deployments in the catalog.
    pub known_deployments: IntGauge,
    pub auth_failures: IntCounter,
    pub requests_refused: IntCounterVec,
    pub retention_deleted_bytes: IntCounter,
    /// Deployments completed as `timed_out` after the idle timeout.
    pub deployments_timed_out: IntCounter,
    /// Secrets masked at ingest, by detector.
    pub redactions: IntCounterVec,
    /// Audit events that could not be written (queue full or write error).
    pub audit_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("logstream".into()), None).expect("registry");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let ingest_lines = counter("ingest_lines_total", "Lines made durable.");
        let ingest_bytes = counter("ingest_bytes_total", "Message bytes made durable.");
        let ingest_duplicates = counter(
            "ingest_duplicate_batches_total",
            "Retried batches recognised and not stored again.",
        );
        let lagging_viewers = counter(
            "lagging_viewers_total",
            "Times a live viewer fell behind and caught up from the store.",
        );
        let auth_failures = counter(
            "auth_failures_total",
            "Requests refused for a missing or invalid token.",
        );
        let retention_deleted_bytes = counter(
            "retention_deleted_bytes_total",
            "Segment bytes deleted by retention.",
        );
        let deployments_timed_out = counter(
            "deployments_timed_out_total",
            "Deployments nobody completed, completed as timed_out after the idle timeout.",
        );
        let audit_dropped = counter(
            "audit_dropped_total",
            "Audit events that could not be written.",
        );
        let ack_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ack_latency_seconds",
                "From receiving a batch to its durable acknowledgement.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("metric");
        registry
            .register(Box::new(ack_latency.clone()))
            .expect("register");
        let live_viewers = IntGauge::new(
            "live_viewers",
            "Live viewers connected (SSE, WebSocket, gRPC).",
        )
        .expect("metric");
        registry
            .register(Box::new(live_viewers.clone()))
            .expect("register");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let store_bytes = gauge("store_bytes", "Bytes of segment files of every deployment.");
        let open_logs = gauge(
            "store_open_logs",
            "Deployment logs open now (a running one holds two descriptors).",
        );
        let known_deployments = gauge("store_deployments", "Deployments in the catalog.");
        let requests_refused = IntCounterVec::new(
            Opts::new("requests_refused_total", "Requests refused, by error code."),
            &["code"],
        )
        .expect("metric");
        registry
            .register(Box::new(requests_refused.clone()))
            .expect("register");
        let redactions = IntCounterVec::new(
            Opts::new("redactions_total", "Secrets masked at ingest, by detector."),
            &["detector"],
        )
        .expect("metric");
        registry
            .register(Box::new(redactions.clone()))
            .expect("register");
        Metrics {
            registry,
            redactions,
            audit_dropped,
            ingest_lines,
            ingest_bytes,
            ingest_duplicates,
            ack_latency,
            live_viewers,
            lagging_viewers,
            store_bytes,
            open_logs,
            known_deployments,
            auth_failures,
            requests_refused,
            retention_deleted_bytes,
            deployments_timed_out,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
