//! A row of results (one system, transport, viewer count and rate) as JSON, and the
//! markdown tables the run prints from all rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// p99 under this held, in milliseconds (the bar).
pub const P99_BAR_MS: f64 = 1_000.0;

/// Gauges per metrics page (`store`, `edge1`, ... or `nginx`), `None` when absent.
pub type Metrics = BTreeMap<String, BTreeMap<String, Option<f64>>>;

/// One benchmark row: what was asked, what happened, what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    /// `logstream` or `nchan`.
    pub system: String,
    /// `sse` or `ws`.
    pub transport: String,
    pub viewers: usize,
    /// Lines per second pushed.
    pub rate: u32,
    /// Seconds of pushing.
    pub seconds: u32,
    /// Share of viewers that stop reading after their first line.
    pub stalled_percent: u32,
    /// The deployment (logstream) or channel (nchan) of this row.
    pub deployment: String,

    /// Viewers whose stream opened and delivered the warm-up line.
    pub connected: usize,
    /// Viewers that did not (refused, failed or still connecting at the deadline).
    pub connect_failures: usize,
    pub first_connect_error: Option<String>,
    /// From the first connect to the last viewer ready.
    pub connect_seconds: f64,
    /// The server's own count of connected viewers once all were ready, summed over the
    /// fan-out tier (`logstream_live_viewers` of the edges, nchan's `subscribers`).
    pub viewer_gauge: Option<f64>,

    /// Lines the pusher was asked to send (rate x seconds).
    pub lines_scheduled: u64,
    /// Lines the publisher acknowledged (2xx).
    pub lines_accepted: u64,
    pub push_errors: u64,
    pub first_push_error: Option<String>,
    /// How late the pusher sent, p99 (all connections busy); 0 when it kept its schedule.
    pub push_lag_p99_ms: Option<f64>,
    /// From the first scheduled send to the last answer.
    pub push_seconds: f64,

    /// Viewers that read (all but the stalled ones).
    pub measured_viewers: usize,
    pub stalled_viewers: usize,
    /// Lines accepted x measured viewers.
    pub expected: u64,
    /// Accepted lines received by measured viewers (each counted once per viewer).
    pub received: u64,
    /// `expected - received`: lines a measured viewer never got within the drain.
    pub lost: u64,
    /// Lines a viewer received more than once.
    pub duplicates: u64,
    /// Measured viewers whose stream ended before the row did.
    pub disconnected: usize,
    pub first_disconnect_error: Option<String>,
    /// Agent -> viewer latency over every line received by every measured viewer.
    pub latency_ms: Option<Latency>,
    /// Every measured viewer had every accepted line before the drain timeout.
    pub drained: bool,
    /// From the last push answer to drained (or to the timeout).
    pub drain_seconds: f64,

    /// (RSS of the fan-out tier with every viewer connected and idle - RSS before any
    /// viewer) / viewers, KiB.
    pub rss_per_idle_viewer_kib: Option<f64>,
    /// CPU seconds (user + system) over push + drain.
    pub store_cpu_seconds: Option<f64>,
    pub edge_cpu_seconds: Option<f64>,
    /// The load generator's own CPU over the same window (it shares the two cores).
    pub generator_cpu_seconds: Option<f64>,
    /// Wall time of that window.
    pub window_seconds: f64,
    pub processes: Vec<Process>,
    /// Gauges with every viewer connected and idle, and at the end of the drain.
    pub metrics_idle: Metrics,
    pub metrics_end: Metrics,

    /// Why the row could not be measured at all (the numbers above are then partial).
    pub error: Option<String>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Nearest-rank percentiles of microsecond samples (sorted here).
    pub fn of(mut us: Vec<u32>) -> Option<Latency> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
            f64::from(us[rank - 1]) / 1_000.0
        };
        Some(Latency {
            samples: us.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        })
    }
}

/// One measured process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Process {
    pub name: String,
    /// `store` or `edge` (nginx workers are the edge tier of nchan).
    pub tier: String,
    pub pid: u32,
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// Still there after the drain.
    pub alive_at_end: bool,
}

impl Row {
    /// The bar: p99 < 1 s with every viewer connected and no line lost.
    pub fn held(&self) -> bool {
        self.error.is_none()
            && self.connect_failures == 0
            && self.lost == 0
            && self.latency_ms.is_some_and(|l| l.p99 < P99_BAR_MS)
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

/// One gauge per fan-out page, joined (`2500+2500`); `n/a` where a page lacks it.
fn per_edge(metrics: &Metrics, names: &[&str]) -> String {
    let values: Vec<String> = metrics
        .iter()
        .filter(|(page, _)| page.as_str() != "store")
        .map(|(_, m)| {
            names
                .iter()
                .find_map(|n| m.get(*n).copied().flatten())
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
        })
        .collect();
    if values.iter().all(|v| v == "n/a") {
        "n/a".to_owned()
    } else {
        values.join("+")
    }
}

fn store_gauge(metrics: &Metrics, name: &str) -> String {
    metrics
        .get("store")
        .and_then(|m| m.get(name).copied().flatten())
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

fn key(r: &Row) -> (String, String, u32, u32, usize) {
    (
        r.system.clone(),
        r.transport.clone(),
        r.rate,
        r.stalled_percent,
        r.viewers,
    )
}

/// The markdown report of all rows.
pub fn markdown(rows: &[Row]) -> String {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| key(r));
    let mut out = String::new();
    let seconds: Vec<String> = {
        let mut s: Vec<u32> = rows.iter().map(|r| r.seconds).collect();
        s.dedup();
        s.iter().map(|s| s.to_string()).collect()
    };
    let _ = writeln!(
        out,
        "## Fan-out: N live viewers of one deployment ({} s of pushing per row)\n",
        seconds.join("/")
    );
    let _ = writeln!(
        out,
        "logstream: one store and two edges, half the viewers on each. nchan: nginx with two \
         workers. Latency is agent -> viewer (each line carries its send time; each viewer \
         takes now - sent on receipt), over every line at every reading viewer; stalled \
         viewers read nothing after their first line and are not measured. lost = lines \
         accepted x reading viewers - lines received within the drain. push lag: how late \
         the pusher sent against its schedule (every connection waiting for an ack); \
         latency starts at the real send.\n"
    );
    let _ = writeln!(out, "### Latency and delivery");
    let _ = writeln!(
        out,
        "| system | transport | viewers | lines/s | stalled | p50 ms | p99 ms | p99.9 ms | max ms | pushed | push lag p99 ms | lost | dup | disconnected | not connected |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let l = r.latency_ms;
        let pushed = if r.push_errors > 0 {
            format!("{} ({} failed)", r.lines_accepted, r.push_errors)
        } else {
            r.lines_accepted.to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}% | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.transport,
            r.viewers,
            r.rate,
            r.stalled_percent,
            opt(l.map(|l| l.p50), ms),
            opt(l.map(|l| l.p99), ms),
            opt(l.map(|l| l.p999), ms),
            opt(l.map(|l| l.max), ms),
            pushed,
            opt(r.push_lag_p99_ms, ms),
            r.lost,
            r.duplicates,
            r.disconnected,
            r.connect_failures,
        );
    }

    let _ = writeln!(
        out,
        "\n### Resources (RSS with every viewer connected and idle; CPU over push + drain)"
    );
    let _ = writeln!(
        out,
        "| system | transport | viewers | lines/s | stalled | RSS per idle viewer KiB | store CPU s | edges CPU s | generator CPU s | store tail subscribers | edge live viewers | edge upstreams |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}% | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.transport,
            r.viewers,
            r.rate,
            r.stalled_percent,
            opt(r.rss_per_idle_viewer_kib, |v| format!("{v:.1}")),
            opt(r.store_cpu_seconds, |v| format!("{v:.2}")),
            opt(r.edge_cpu_seconds, |v| format!("{v:.2}")),
            opt(r.generator_cpu_seconds, |v| format!("{v:.2}")),
            store_gauge(&r.metrics_idle, "logstream_tail_subscribers"),
            per_edge(&r.metrics_idle, &["logstream_live_viewers", "subscribers"]),
            per_edge(&r.metrics_idle, &["logstream_edge_upstreams"]),
        );
    }

    let _ = writeln!(
        out,
        "\n### Largest N that held p99 < 1 s (every viewer connected, no line lost; no stalled viewers)"
    );
    let _ = writeln!(
        out,
        "| system | transport | lines/s | largest N held | p99 ms there | rows measured (N) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
    let mut groups: BTreeMap<(String, String, u32), Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.stalled_percent == 0) {
        groups
            .entry((r.system.clone(), r.transport.clone(), r.rate))
            .or_default()
            .push(r);
    }
    for ((system, transport, rate), rs) in &groups {
        let best = rs.iter().filter(|r| r.held()).max_by_key(|r| r.viewers);
        let measured: Vec<String> = rs.iter().map(|r| r.viewers.to_string()).collect();
        let _ = writeln!(
            out,
            "| {system} | {transport} | {rate} | {} | {} | {} |",
            best.map_or_else(|| "none".to_owned(), |r| r.viewers.to_string()),
            best.map_or_else(|| "-".to_owned(), |r| opt(r.latency_ms.map(|l| l.p99), ms)),
            measured.join(", "),
        );
    }

    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let name = format!(
                "{} {} {} viewers {} lines/s{}",
                r.system,
                r.transport,
                r.viewers,
                r.rate,
                if r.stalled_percent > 0 {
                    format!(" {}% stalled", r.stalled_percent)
                } else {
                    String::new()
                }
            );
            let mut n = Vec::new();
            if let Some(e) = &r.error {
                n.push(format!("- {name}: not measured: {e}"));
            }
            if let Some(e) = &r.first_connect_error {
                n.push(format!(
                    "- {name}: {} viewers not connected, first: {e}",
                    r.connect_failures
                ));
            }
            if let Some(e) = &r.first_push_error {
                n.push(format!(
                    "- {name}: {} pushes failed, first: {e}",
                    r.push_errors
                ));
            }
            if r.disconnected > 0 {
                n.push(format!(
                    "- {name}: {} reading viewers disconnected early, first: {}",
                    r.disconnected,
                    r.first_disconnect_error
                        .as_deref()
                        .unwrap_or("closed by the server")
                ));
            }
            for p in r.processes.iter().filter(|p| !p.alive_at_end) {
                n.push(format!(
                    "- {name}: {} (pid {}) died during the row",
                    p.name, p.pid
                ));
            }
            if let Some(lag) = r.push_lag_p99_ms.filter(|l| *l > 100.0) {
                n.push(format!(
                    "- {name}: the pusher fell behind its schedule (p99 {} ms late; {} lines in {:.1} s), so less than {} lines/s was offered",
                    ms(lag),
                    r.lines_accepted,
                    r.push_seconds,
                    r.rate
                ));
            }
            if let Some(g) = r.viewer_gauge.filter(|g| *g != r.connected as f64) {
                n.push(format!(
                    "- {name}: the servers counted {g:.0} viewers, {} were connected",
                    r.connected
                ));
            }
            if r.system == "logstream" {
                n.extend(shape_notes(&name, &r.metrics_idle));
            }
            n
        })
        .collect();
    let mut notes = notes;
    for (page, gauge) in [
        ("the store", "logstream_tail_subscribers"),
        ("the edges", "logstream_live_viewers"),
        ("the edges", "logstream_edge_upstreams"),
    ] {
        let missing = rows
            .iter()
            .filter(|r| r.system == "logstream" && r.error.is_none())
            .filter(|r| {
                r.metrics_idle
                    .iter()
                    .filter(|(p, _)| (p.as_str() == "store") == (page == "the store"))
                    .any(|(_, m)| m.get(gauge).copied().flatten().is_none())
            })
            .count();
        if missing > 0 {
            notes.push(format!(
                "- {page} exported no `{gauge}` in {missing} logstream rows (n/a above)"
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n### Notes\n{}", notes.join("\n"));
    }
    out
}

/// logstream's shape with every viewer idle: the store has one upstream subscriber per
/// edge (`logstream_tail_subscribers` == edges) and each edge one upstream for the one
/// deployment (`logstream_edge_upstreams` == 1). Gauges that are absent are reported
/// once for all rows, not here.
fn shape_notes(name: &str, metrics: &Metrics) -> Vec<String> {
    let edges = metrics.keys().filter(|p| p.as_str() != "store").count();
    let mut n = Vec::new();
    if let Some(v) = metrics
        .get("store")
        .and_then(|m| m.get("logstream_tail_subscribers").copied().flatten())
        .filter(|v| *v != edges as f64)
    {
        n.push(format!(
            "- {name}: the store had {v:.0} tail subscribers, not {edges} (one per edge)"
        ));
    }
    for (page, m) in metrics.iter().filter(|(p, _)| p.as_str() != "store") {
        if let Some(v) = m
            .get("logstream_edge_upstreams")
            .copied()
            .flatten()
            .filter(|v| *v != 1.0)
        {
            n.push(format!(
                "- {name}: {page} had {v:.0} upstreams for one deployment, not 1"
            ));
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=1000).rev().map(|v| v * 1000).collect()).unwrap();
        assert_eq!((l.p50, l.p99, l.p999, l.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(l.samples, 1000);
        assert_eq!(Latency::of(vec![7]).unwrap().p999, 0.007);
        assert!(Latency::of(vec![]).is_none());
    }

    fn row(system: &str, viewers: usize, p99: f64, lost: u64) -> Row {
        Row {
            system: system.into(),
            transport: "sse".into(),
            viewers,
            rate: 100,
            seconds: 10,
            lost,
            latency_ms: Some(Latency {
                samples: 1,
                p50: 1.0,
                p99,
                p999: p99,
                max: p99,
            }),
            ..Row::default()
        }
    }

    #[test]
    fn the_largest_n_held_needs_p99_under_a_second_and_nothing_lost() {
        let rows = [
            row("nchan", 1000, 5.0, 0),
            row("nchan", 5000, 900.0, 3),
            row("nchan", 10000, 2500.0, 0),
            row("logstream", 1000, 999.0, 0),
        ];
        let md = markdown(&rows);
        assert!(
            md.contains("| nchan | sse | 100 | 1000 | 5.00 | 1000, 5000, 10000 |"),
            "{md}"
        );
        assert!(
            md.contains("| logstream | sse | 100 | 1000 | 999 | 1000 |"),
            "{md}"
        );
    }
}
