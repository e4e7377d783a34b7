//! What the plots are drawn from: the figures `e2e/bench/run` combined over its runs (one
//! JSON document, [`Figures`]), or the rows `e2e/bench/fanout/run` wrote
//! ([`FanoutResults`], turned into [`LatencyPoint`]s by [`latency_points`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The figures of one report, as `e2e/bench/run` writes them for the plots.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Figures {
    /// One line under each plot's title: machine, date, commit. Default: empty.
    pub caption: String,
    /// Fan-out latency by viewers (plot `latency.png`). Default: none, no plot.
    pub latency: Vec<LatencyPoint>,
    /// Throughput per component, ours and the peers' (plot `throughput.png`). Default:
    /// none, no plot.
    pub throughput: Vec<Throughput>,
    /// Stored bytes per line per data set (plot `bytes-per-line.png`). Default: none, no
    /// plot.
    pub bytes_per_line: Vec<BytesPerLine>,
}

/// A figure over several runs: the median and the smallest and largest run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median (mean of the two middle values for an even count) and the extremes of
    /// `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Agent -> viewer latency of one system at one number of viewers of one deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyPoint {
    /// `logstream`, `nchan`, ...: one colour each.
    pub system: String,
    /// `sse` or `ws`: one panel per transport and rate.
    pub transport: String,
    /// Lines per second pushed.
    pub rate: u32,
    pub viewers: u32,
    pub p50: Spread,
    pub p99: Spread,
    pub max: Spread,
    /// A run lost lines or left viewers unconnected: its percentiles cover only what
    /// arrived (the point is ringed).
    #[serde(default)]
    pub incomplete: bool,
}

/// One bar of the throughput plot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throughput {
    /// What was measured, e.g. "store append, 1,000-line batches"; bars of one component
    /// are drawn together.
    pub component: String,
    /// Who: "logstream" or the peer's name.
    pub system: String,
    /// Whether `system` is the peer baseline (drawn grey).
    #[serde(default)]
    pub peer: bool,
    /// "lines/s" or "MB/s": one panel per unit.
    pub unit: String,
    pub value: Spread,
}

/// Stored size of one data set, per line, against `zstd -3` of the raw file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesPerLine {
    pub dataset: String,
    /// Segments and index on disk (zstd level 3, the default), bytes per line.
    pub store: Spread,
    /// `zstd -3` of the raw file, bytes per line (the peer).
    pub zstd: Spread,
}

/// `e2e/bench/fanout/run`'s results file: `{"rows": [...]}`.
#[derive(Debug, Deserialize)]
pub struct FanoutResults {
    pub rows: Vec<FanoutRow>,
}

/// The fields of a fan-out row the plot needs (the file has many more).
#[derive(Debug, Clone, Deserialize)]
pub struct FanoutRow {
    pub system: String,
    pub transport: String,
    pub viewers: u32,
    pub rate: u32,
    #[serde(default)]
    pub stalled_percent: u32,
    pub latency_ms: Option<FanoutLatency>,
    #[serde(default)]
    pub lost: u64,
    #[serde(default)]
    pub connect_failures: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct FanoutLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One point per system, transport, rate and viewer count over `rows` (rows of several
/// runs of the same point are combined into a spread). Rows with stalled viewers or no
/// latency (nothing arrived) are left out: the tables have them.
pub fn latency_points(rows: &[FanoutRow]) -> Vec<LatencyPoint> {
    let mut groups: BTreeMap<(String, String, u32, u32), Vec<&FanoutRow>> = BTreeMap::new();
    for r in rows {
        if r.stalled_percent == 0 && r.latency_ms.is_some() {
            groups
                .entry((r.system.clone(), r.transport.clone(), r.rate, r.viewers))
                .or_default()
                .push(r);
        }
    }
    groups
        .into_iter()
        .filter_map(|((system, transport, rate, viewers), rows)| {
            let pick = |f: fn(&FanoutLatency) -> f64| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter_map(|r| r.latency_ms.as_ref().map(f))
                    .collect();
                Spread::of(&v)
            };
            Some(LatencyPoint {
                system,
                transport,
                rate,
                viewers,
                p50: pick(|l| l.p50)?,
                p99: pick(|l| l.p99)?,
                max: pick(|l| l.max)?,
                incomplete: rows.iter().any(|r| r.lost > 0 || r.connect_failures > 0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_and_extremes_of_finite_values() {
        let s = Spread::of(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn fanout_rows_of_several_runs_become_one_point_each() {
        let results: FanoutResults = serde_json::from_str(
            r#"{"rows": [
              {"system": "logstream", "transport": "sse", "viewers": 100, "rate": 100,
               "latency_ms": {"p50": 2.0, "p99": 9.0, "max": 12.0, "p999": 10.0}, "lost": 0,
               "extra": {"ignored": true}},
              {"system": "logstream", "transport": "sse", "viewers": 100, "rate": 100,
               "latency_ms": {"p50": 4.0, "p99": 7.0, "max": 20.0}, "lost": 3},
              {"system": "logstream", "transport": "sse", "viewers": 100, "rate": 100,
               "latency_ms": {"p50": 3.0, "p99": 8.0, "max": 15.0}},
              {"system": "nchan", "transport": "sse", "viewers": 100, "rate": 100,
               "stalled_percent": 10, "latency_ms": {"p50": 1.0, "p99": 1.0, "max": 1.0}},
              {"system": "nchan", "transport": "sse", "viewers": 1000, "rate": 100,
               "latency_ms": null}
            ]}"#,
        )
        .unwrap();
        let points = latency_points(&results.rows);
        assert_eq!(points.len(), 1, "stalled and empty rows are left out");
        let p = &points[0];
        assert_eq!((p.system.as_str(), p.viewers), ("logstream", 100));
        assert_eq!(
            p.p99,
            Spread {
                median: 8.0,
                min: 7.0,
                max: 9.0
            }
        );
        assert_eq!(p.max.median, 15.0);
        assert!(p.incomplete, "one run lost lines");
    }

    #[test]
    fn figures_refuse_unknown_fields() {
        let bad = serde_json::from_str::<Figures>(r#"{"latency": [], "typo": 1}"#);
        assert!(bad.is_err());
        let ok: Figures = serde_json::from_str(r#"{"caption": "x"}"#).unwrap();
        assert!(ok.throughput.is_empty());
    }
}
