//! Collector metrics (`/metrics`, prefix `logstream_collector_`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub files_watched: IntGauge,
    pub lag_bytes: IntGauge,
    pub lines_read: IntCounter,
    pub bytes_read: IntCounter,
    pub lines_forwarded: IntCounter,
    pub bytes_forwarded: IntCounter,
    pub lines_rejected: IntCounter,
    /// By the gateway's error code.
    pub batches_rejected: IntCounterVec,
    pub retries: IntCounter,
    pub redactions: IntCounter,
    pub parse_errors: IntCounter,
    pub rotations: IntCounter,
    pub truncations: IntCounter,
    pub spool_bytes: IntGauge,
    pub spool_batches: IntGauge,
    pub spooled: IntCounter,
    pub spool_full: IntCounter,
    pub stalled: IntGauge,
    /// Containers followed now (their pods alive, or not drained yet).
    pub containers: IntGauge,
    /// Containers let go of (drained and closed, or their directory gone).
    pub containers_pruned: IntCounter,
    /// Open log files whose last name was removed: must stay 0 beyond a moment (their
    /// disk space is held while open).
    pub files_deleted_open: IntGauge,
    /// Containers whose file is closed while idle (the `--max-open-files` LRU).
    pub files_parked: IntGauge,
    /// Per container with a backlog: bytes written and not read yet.
    pub backlog: IntGaugeVec,
    /// The label sets of `backlog` set by the last pass (removed when caught up).
    backlog_labels: Arc<Mutex<HashSet<[String; 3]>>>,
    /// `process_*`, unprefixed by convention.
    process: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry =
            Registry::new_custom(Some("logstream_collector".into()), None).expect("registry");
        let gauge = |n: &str, h: &str| {
            let g = IntGauge::new(n, h).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let counter = |n: &str, h: &str| {
            let c = IntCounter::new(n, h).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        Metrics {
            files_watched: gauge("files_watched", "Container log files followed."),
            lag_bytes: gauge(
                "lag_bytes",
                "Bytes written to followed files and not read yet (while the gateway is away, the backlog waits here).",
            ),
            lines_read: counter(
                "lines_read_total",
                "Physical lines read (fragments included).",
            ),
            bytes_read: counter("bytes_read_total", "Bytes read from log files."),
            lines_forwarded: counter("lines_forwarded_total", "Lines the gateway acknowledged."),
            bytes_forwarded: counter(
                "bytes_forwarded_total",
                "Message bytes the gateway acknowledged.",
            ),
            lines_rejected: counter(
                "lines_rejected_total",
                "Lines the gateway refused for good (skipped; see batches_rejected_total for the codes).",
            ),
            batches_rejected: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "batches_rejected_total",
                        "Batches the gateway refused for good, by error code (not retried: the lines are skipped; the first refusal per deployment and code is logged).",
                    ),
                    &["code"],
                )
                .expect("metric");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
            retries: counter("retries_total", "Reconnects and re-sends to the gateway."),
            redactions: counter(
                "redactions_total",
                "Secrets masked before leaving the node.",
            ),
            parse_errors: counter(
                "parse_errors_total",
                "Lines that were neither CRI nor Docker json-file.",
            ),
            rotations: counter(
                "rotations_total",
                "Files replaced by rotation or a container restart.",
            ),
            truncations: counter(
                "truncations_total",
                "Files truncated in place (copytruncate).",
            ),
            spool_bytes: gauge(
                "spool_bytes",
                "Bytes of undelivered batches in the on-disk spool.",
            ),
            spool_batches: gauge("spool_batches", "Undelivered batches in the on-disk spool."),
            containers: gauge(
                "containers",
                "Containers followed now (pods alive, or not drained yet).",
            ),
            containers_pruned: counter(
                "containers_pruned_total",
                "Containers let go of: drained and closed after their pod ended, or their directory removed.",
            ),
            files_deleted_open: gauge(
                "files_deleted_open",
                "Open log files whose directory entry is gone (disk space held while open); stays 0 but for a moment.",
            ),
            spooled: counter(
                "spooled_lines_total",
                "Lines written to the spool because the gateway was slow or away.",
            ),
            spool_full: counter(
                "spool_full_total",
                "Times a container stopped reading because the spool was full (backpressure: the data waits in its files).",
            ),
            stalled: gauge(
                "backpressure_containers",
                "Containers not being read now because the spool is full.",
            ),
            files_parked: gauge(
                "files_parked",
                "Live containers whose file is closed while idle (the --max-open-files LRU); reopened at their checkpoint when the file changes.",
            ),
            backlog: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "backlog_bytes",
                        "Per container with a backlog (namespace, pod, container): bytes written to its files and not read yet; a caught-up container has no series.",
                    ),
                    &["namespace", "pod", "container"],
                )
                .expect("metric");
                registry.register(Box::new(g.clone())).expect("register");
                g
            },
            backlog_labels: Arc::default(),
            process: {
                let r = Registry::new();
                #[cfg(target_os = "linux")]
                r.register(Box::new(
                    prometheus::process_collector::ProcessCollector::for_self(),
                ))
                .expect("register");
                r
            },
            registry,
        }
    }
}

impl Metrics {
    /// Sets the per-container backlog: (namespace, pod, container, bytes) of every
    /// container behind; the series of containers caught up or gone are removed (labels
    /// follow the live backlog, not history).
    pub fn set_backlog(&self, behind: Vec<(String, String, String, u64)>) {
        let mut labels = self.backlog_labels.lock().expect("not poisoned");
        let mut now = HashSet::with_capacity(behind.len());
        for (ns, pod, container, bytes) in behind {
            self.backlog
                .with_label_values(&[&ns, &pod, &container])
                .set(bytes as i64);
            now.insert([ns, pod, container]);
        }
        for gone in labels.difference(&now) {
            let _ = self
                .backlog
                .remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
        }
        *labels = now;
    }

    /// The Prometheus text exposition, `process_*` included.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut out)
            .expect("text encoding");
        out
    }

    /// Counts a batch refused for good. The code comes from the gateway: anything not
    /// shaped like an error code is counted as `other`, so labels stay few.
    pub fn batch_rejected(&self, code: &str) {
        let code = if !code.is_empty()
            && code.len() <= 64
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            code
        } else {
            "other"
        };
        self.batches_rejected.with_label_values(&[code]).inc();
    }
}
