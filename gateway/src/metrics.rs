//! Prometheus metrics of the gateway, registered under the `logstream_` prefix, plus the
//! standard unprefixed `process_*` metrics. Every metric is listed in `docs/metrics.md`
//! (a test checks that each listed one is exported).

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Latency buckets in seconds, 0.5 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    /// `process_*` (RSS, CPU, descriptors and their limit), unprefixed by convention.
    process: Registry,
    pub ingest_lines: IntCounter,
    pub ingest_bytes: IntCounter,
    pub ingest_duplicates: IntCounter,
    /// Seconds from receiving a batch to its durable ack.
    pub ack_latency: Histogram,
    pub live_viewers: IntGauge,
    /// Open `Tail.Subscribe` streams (each edge holds one per deployment it serves).
    pub tail_subscribers: IntGauge,
    /// Times a viewer fell behind the broadcast and switched to store catch-up.
    pub lagging_viewers: IntCounter,
    /// Kafka mode: records applied (not duplicates), records skipped as undecodable,
    /// producer/consumer/store errors, partitions owned now.
    pub kafka_applied: IntCounter,
    pub kafka_skipped: IntCounter,
    pub kafka_errors: IntCounter,
    pub kafka_owned_partitions: IntGauge,
    pub store_bytes: IntGauge,
    /// Deployment logs open now (a running one holds two descriptors).
    pub open_logs: IntGauge,
    /// Deployments in the catalog.
    pub known_deployments: IntGauge,
    /// Deployments not completed.
    pub open_deployments: IntGauge,
    /// Per tenant: age of the oldest line still stored.
    pub oldest_line_age: IntGaugeVec,
    /// Per tenant: segment bytes.
    pub tenant_bytes: IntGaugeVec,
    pub fsync: Histogram,
    pub group_commit: Histogram,
    pub auth_failures: IntCounter,
    pub requests_refused: IntCounterVec,
    pub retention_deleted_bytes: IntCounter,
    /// Deployments completed as `timed_out` after the idle timeout.
    pub deployments_timed_out: IntCounter,
    /// Secrets masked at ingest, by detector.
    pub redactions: IntCounterVec,
    pub audit_queue: IntGauge,
    /// How long served requests waited for their audit record.
    pub audit_wait: Histogram,
    /// One audit batch's append (and fsync).
    pub audit_write: Histogram,
    pub audit_write_failures: IntCounter,
    /// Requests refused because their audit record could not be written in time.
    pub audit_refused: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    /// `[object_store]`: the offloader's gauges (`offload_*`, set from the store's
    /// figures at each scrape) and counters.
    pub offload_gauges: [IntGauge; 5],
    pub offload_counters: [IntCounter; 7],
    /// Ingest batches refused, by error code (any transport).
    pub ingest_errors: IntCounterVec,
    /// Per tenant: the oldest line age retention should keep below (retention plus a
    /// segment's age plus a retention interval), for the retention alert.
    pub retention_limit: IntGaugeVec,
    /// Kafka mode: records behind the high watermark per owned partition.
    pub kafka_lag: IntGaugeVec,
    /// Log alerts pending or firing now, per tenant, rule and state.
    pub alerts: IntGaugeVec,
    /// Lines matching a rule, per tenant and rule.
    pub alert_matches: IntCounterVec,
    /// Deployments a rule could not track (its `max_series_per_rule` was reached).
    pub alert_series_dropped: IntCounterVec,
    /// Alert notices per tenant, receiver and result (`sent`, `failed`).
    pub alert_notifications: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("logstream".into()), None).expect("registry");
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("register");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            register(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY.to_vec()))
                .expect("metric");
            register(Box::new(h.clone()));
            h
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            register(Box::new(c.clone()));
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
            register(Box::new(g.clone()));
            g
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY.to_vec()),
                labels,
            )
            .expect("metric");
            register(Box::new(h.clone()));
            h
        };
        let process = process_registry();
        register(Box::new(crate::auth::KEY_FETCH_FAILURES.clone()));
        let offload_gauges = [
            gauge(
                "offload_local_bytes",
                "Object storage: bytes of segments on local disk (active, not yet uploaded, and cached copies).",
            ),
            gauge(
                "offload_remote_only_bytes",
                "Object storage: bytes of segments held only in object storage.",
            ),
            gauge(
                "offload_pending_logs",
                "Object storage: logs with sealed segments waiting for upload.",
            ),
            gauge(
                "offload_budget_exceeded",
                "Object storage: 1 while local segments exceed local_cache_bytes and nothing more can be evicted (uploads behind or failing; nothing is dropped).",
            ),
            gauge(
                "offload_failing",
                "Object storage: 1 while the last upload pass failed (sealed segments stay local).",
            ),
        ];
        let offload_counters = [
            counter(
                "offload_uploaded_segments_total",
                "Object storage: sealed segments uploaded and verified.",
            ),
            counter(
                "offload_uploaded_bytes_total",
                "Object storage: bytes of segments uploaded.",
            ),
            counter(
                "offload_evicted_segments_total",
                "Object storage: local copies evicted (least recently read first).",
            ),
            counter(
                "offload_remote_reads_total",
                "Object storage: ranged GETs of blocks of segments held only there.",
            ),
            counter(
                "offload_remote_read_bytes_total",
                "Object storage: bytes read by ranged GETs.",
            ),
            counter(
                "offload_swept_objects_total",
                "Object storage: orphaned objects deleted by the sweep.",
            ),
            counter(
                "offload_deleted_objects_total",
                "Object storage: objects of expired segments deleted.",
            ),
        ];
        Metrics {
            offload_gauges,
            offload_counters,
            ingest_errors: counters(
                "ingest_errors_total",
                "Ingest batches answered with an error, by its code (HTTP, gRPC Push, Kafka produce alike).",
                &["code"],
            ),
            retention_limit: gauges(
                "store_retention_limit_seconds",
                "Per tenant: the age the oldest stored line should stay below (retention + segment_max_age + retention_interval); above it, retention is behind.",
                &["tenant"],
            ),
            kafka_lag: gauges(
                "kafka_consumer_lag_records",
                "Kafka mode: records of an owned partition not applied yet (high watermark - next offset).",
                &["topic", "partition"],
            ),
            alerts: gauges(
                "alerts",
                "Log alerts pending or firing now (tenant_alerts rules), per tenant, rule and state.",
                &["tenant", "rule", "state"],
            ),
            alert_matches: counters(
                "alert_rule_matches_total",
                "Stored lines that matched a log alert rule, per tenant and rule.",
                &["tenant", "rule"],
            ),
            alert_series_dropped: counters(
                "alert_series_dropped_total",
                "Lines of deployments a rule could not track because it holds alerting.max_series_per_rule deployments already.",
                &["tenant", "rule"],
            ),
            alert_notifications: counters(
                "alert_notifications_total",
                "Alert notices per tenant, receiver and result: sent, or failed (a 4xx, attempts used up, or a full queue).",
                &["tenant", "receiver", "result"],
            ),
            ingest_lines: counter("ingest_lines_total", "Lines made durable."),
            ingest_bytes: counter("ingest_bytes_total", "Message bytes made durable."),
            ingest_duplicates: counter(
                "ingest_duplicate_batches_total",
                "Retried batches recognised and not stored again.",
            ),
            ack_latency: histogram(
                "ack_latency_seconds",
                "From receiving a batch to its durable acknowledgement.",
            ),
            live_viewers: gauge(
                "live_viewers",
                "Live viewers connected (SSE, WebSocket, gRPC).",
            ),
            tail_subscribers: gauge(
                "tail_subscribers",
                "Open gRPC Tail.Subscribe streams: an edge holds one per deployment with viewers on it.",
            ),
            lagging_viewers: counter(
                "lagging_viewers_total",
                "Times a live viewer fell behind and caught up from the store.",
            ),
            kafka_applied: counter(
                "kafka_records_applied_total",
                "Kafka mode: topic records applied to this replica's store (duplicates excluded).",
            ),
            kafka_skipped: counter(
                "kafka_records_skipped_total",
                "Kafka mode: topic records that are not KafkaEntry messages, skipped.",
            ),
            kafka_errors: counter(
                "kafka_errors_total",
                "Kafka mode: consumer errors and failed applies (retried).",
            ),
            kafka_owned_partitions: gauge(
                "kafka_owned_partitions",
                "Kafka mode: topic partitions this store replica owns now.",
            ),
            store_bytes: gauge("store_bytes", "Bytes of segment files of every deployment."),
            open_logs: gauge(
                "store_open_logs",
                "Deployment logs open now (a running one holds two descriptors).",
            ),
            known_deployments: gauge("store_deployments", "Deployments in the catalog."),
            open_deployments: gauge(
                "store_open_deployments",
                "Deployments in the catalog not completed yet.",
            ),
            oldest_line_age: gauges(
                "store_oldest_line_age_seconds",
                "Per tenant, the age of the oldest line still stored (compare with the tenant's retention).",
                &["tenant"],
            ),
            tenant_bytes: gauges(
                "store_tenant_bytes",
                "Per tenant, segment bytes stored.",
                &["tenant"],
            ),
            fsync: histogram("store_fsync_seconds", "One segment write and its fsync."),
            group_commit: histogram(
                "store_group_commit_seconds",
                "One group commit, from the leading append to every appender answered.",
            ),
            auth_failures: counter(
                "auth_failures_total",
                "Requests refused for a missing or invalid token.",
            ),
            requests_refused: counters(
                "requests_refused_total",
                "Requests refused by a quota or limit, by which one.",
                &["code"],
            ),
            retention_deleted_bytes: counter(
                "retention_deleted_bytes_total",
                "Segment bytes deleted by retention.",
            ),
            deployments_timed_out: counter(
                "deployments_timed_out_total",
                "Deployments nobody completed, completed as timed_out after the idle timeout.",
            ),
            redactions: counters(
                "redactions_total",
                "Secrets masked at ingest, by detector.",
                &["detector"],
            ),
            audit_queue: gauge("audit_queue_depth", "Audit records queued for the writer."),
            audit_wait: histogram(
                "audit_wait_seconds",
                "How long a served request waited for its audit record to be durable.",
            ),
            audit_write: histogram("audit_write_seconds", "One audit batch's append and fsync."),
            audit_write_failures: counter(
                "audit_write_failures_total",
                "Audit batch writes that failed (retried before the writer takes more; exports and admin actions waiting on them refused).",
            ),
            audit_refused: counter(
                "audit_refused_total",
                "Requests refused because their audit record could not be written in time.",
            ),
            http_requests: counters(
                "http_requests_total",
                "HTTP requests by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histograms(
                "http_request_duration_seconds",
                "HTTP request latency to the response head (streams: to their first byte), by route and method.",
                &["route", "method"],
            ),
            grpc_requests: counters(
                "grpc_requests_total",
                "gRPC calls by method and status code.",
                &["method", "code"],
            ),
            grpc_duration: histograms(
                "grpc_request_duration_seconds",
                "gRPC call latency (streams: their whole life), by method.",
                &["method"],
            ),
            registry,
            process,
        }
    }

    /// Counts one HTTP request.
    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// Counts one gRPC call.
    pub fn grpc(&self, method: &str, code: tonic::Code, took: Duration) {
        self.grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.grpc_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// Sets the `offload_*` metrics from the store's figures.
    pub fn set_offload(&self, t: &logstream_store::TierStats) {
        let levels = [
            t.local_bytes,
            t.remote_only_bytes,
            t.pending_logs,
            u64::from(t.budget_exceeded),
            u64::from(t.failing),
        ];
        for (g, v) in self.offload_gauges.iter().zip(levels) {
            g.set(v as i64);
        }
        let totals = [
            t.uploaded_segments,
            t.uploaded_bytes,
            t.evicted_segments,
            t.remote_reads,
            t.remote_read_bytes,
            t.swept_objects,
            t.deleted_objects,
        ];
        for (c, v) in self.offload_counters.iter().zip(totals) {
            c.inc_by(v.saturating_sub(c.get()));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        render(&[&self.registry, &self.process])
    }
}

/// The standard unprefixed `process_*` metrics (RSS, CPU seconds, open descriptors and
/// their limit, start time) of this process.
pub fn process_registry() -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("register");
    r
}

/// The text exposition of `registries` together.
pub fn render(registries: &[&Registry]) -> String {
    let families: Vec<_> = registries.iter().flat_map(|r| r.gather()).collect();
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .expect("text encoding");
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl logstream_store::Observer for Metrics {
    fn fsync(&self, took: Duration) {
        self.fsync.observe(took.as_secs_f64());
    }

    fn group_commit(&self, took: Duration, _appends: usize) {
        self.group_commit.observe(took.as_secs_f64());
    }
}
