//! One row of the benchmark, start to end:
//!
//! ```text
//! warm-up line ─> RSS before ─> N viewers connect (bounded) ─> all got the warm-up line
//!   ─> server's viewer gauge == N ─> RSS idle, gauges ─> CPU mark ─> push rate x seconds
//!   ─> drain (every reading viewer has every line, or timeout) ─> CPU mark, gauges
//!   ─> stop viewers ─> latency, lost, duplicates
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::sync::{Semaphore, watch};

use crate::http::{self, Endpoint};
use crate::probe::{self, Sample};
use crate::push::{self, Target};
use crate::report::{Latency, Metrics, Process, Row};
use crate::viewer::{self, Format, Plan, Shared, Transport};

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// logstream: push to the store, view on the edges.
    Logstream,
    /// nginx + nchan: publish to `/pub/{id}`, subscribe on `/sub/{id}`.
    Nchan,
}

/// A `name=value` flag value (`edge1=4242`, `edge1=http://127.0.0.1:9000/metrics`).
#[derive(Debug, Clone)]
pub struct Named {
    pub name: String,
    pub value: String,
}

fn named(s: &str) -> Result<Named, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected name=value"))?;
    Ok(Named {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

/// One row: a system, a transport, N viewers, a rate.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Viewer base URLs, comma-separated; viewer i connects to target i mod count (half
    /// on each of two edges).
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Base URL lines are pushed to: the store (logstream) or nginx (nchan).
    #[arg(long)]
    pub publish: String,
    /// Deployment id (logstream) or channel id (nchan); use a fresh one per row.
    #[arg(long)]
    pub deployment: String,
    /// Bearer token for pushes and viewers (logstream).
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub viewers: usize,
    /// Lines per second.
    #[arg(long)]
    pub rate: u32,
    /// Seconds of pushing.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Percent of viewers that stop reading after their first line, spread evenly over
    /// the targets and over each target's viewers.
    #[arg(long, default_value_t = 0)]
    pub stalled_percent: u32,
    /// Seconds after the last push to wait for the last lines.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    /// Viewers connecting at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds for all viewers to connect (and for the viewer gauge to agree).
    #[arg(long, default_value_t = 120)]
    pub connect_timeout_seconds: u64,
    /// Keep-alive connections the pusher spreads its requests over (an ack waits for
    /// the store's fsync: 1,000 lines/s at 50 ms per ack needs 50 in flight).
    #[arg(long, default_value_t = 64)]
    pub push_connections: usize,
    /// Store-tier processes, `name=pid` comma-separated (RSS and CPU).
    #[arg(long, value_delimiter = ',', value_parser = named)]
    pub store_pids: Vec<Named>,
    /// Fan-out-tier processes (edges, nginx workers), `name=pid` comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = named)]
    pub edge_pids: Vec<Named>,
    /// The store's metrics URL (reported as page `store`).
    #[arg(long)]
    pub store_metrics: Option<String>,
    /// Fan-out-tier metrics pages, `name=url` comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = named)]
    pub edge_metrics: Vec<Named>,
    /// Gauges read from every page.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "logstream_tail_subscribers,logstream_live_viewers,logstream_edge_upstreams,subscribers,channels"
    )]
    pub metric_names: Vec<String>,
    /// Gauge of connected viewers on the fan-out pages: before measuring, wait until its
    /// sum equals the viewers that connected (`logstream_live_viewers`, nchan's
    /// `subscribers`).
    #[arg(long)]
    pub viewer_gauge: Option<String>,
    /// The system's name in the report (default: the mode), e.g. `logstream-store` for
    /// viewers on a store with no edges.
    #[arg(long)]
    pub system: Option<String>,
}

/// Runs one row; a failure that stops the row is recorded in `Row::error`.
pub async fn run(args: &RunArgs) -> Row {
    let mut row = Row {
        system: args
            .system
            .clone()
            .unwrap_or_else(|| format!("{:?}", args.mode).to_lowercase()),
        transport: format!("{:?}", args.transport).to_lowercase(),
        viewers: args.viewers,
        rate: args.rate,
        seconds: args.seconds,
        stalled_percent: args.stalled_percent,
        deployment: args.deployment.clone(),
        ..Row::default()
    };
    if let Err(e) = measure(args, &mut row).await {
        row.error = Some(format!("{e:#}"));
    }
    row
}

/// A process being watched.
struct Watched {
    name: String,
    tier: &'static str,
    pid: u32,
}

impl Watched {
    fn sample(&self) -> Option<Sample> {
        probe::sample(&self.pid.to_string()).ok()
    }
}

fn cpu_seconds(start: Option<Sample>, end: Option<Sample>) -> Option<f64> {
    let (s, e) = (start?, end?);
    Some(e.cpu_ticks.saturating_sub(s.cpu_ticks) as f64 / probe::ticks_per_second() as f64)
}

async fn measure(args: &RunArgs, row: &mut Row) -> anyhow::Result<()> {
    let nofile = probe::raise_nofile();
    ensure!(
        nofile as usize > args.viewers + args.push_connections + 64,
        "RLIMIT_NOFILE is {nofile}, too low for {} viewers (raise the hard limit: ulimit -Hn)",
        args.viewers
    );
    let (stream_path, publish_path, format) = match args.mode {
        Mode::Logstream => (
            format!("/v1/deployments/{}/stream", args.deployment),
            format!("/v1/deployments/{}/logs", args.deployment),
            Format::LineJson,
        ),
        Mode::Nchan => (
            format!("/sub/{}", args.deployment),
            format!("/pub/{}", args.deployment),
            Format::Raw,
        ),
    };
    let publish = Target {
        endpoint: Endpoint::parse(&args.publish)?.with_path(&publish_path),
        ndjson: args.mode == Mode::Logstream,
        token: args.token.clone(),
    };
    let targets: Vec<Endpoint> = args
        .targets
        .iter()
        .map(|t| Ok(Endpoint::parse(t)?.with_path(&stream_path)))
        .collect::<anyhow::Result<_>>()?;
    let watched: Vec<Watched> = [("store", &args.store_pids), ("edge", &args.edge_pids)]
        .into_iter()
        .flat_map(|(tier, list)| list.iter().map(move |n| (tier, n)))
        .map(|(tier, n)| {
            Ok(Watched {
                name: n.name.clone(),
                tier,
                pid: n.value.parse().with_context(|| format!("pid {n:?}"))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let pages: Vec<Named> = args
        .store_metrics
        .iter()
        .map(|u| Named {
            name: "store".into(),
            value: u.clone(),
        })
        .chain(args.edge_metrics.iter().cloned())
        .collect();

    publish.warm_up().await.context("warm-up line")?;
    let before: Vec<Option<Sample>> = watched.iter().map(Watched::sample).collect();

    // Viewers.
    let lines = u64::from(args.rate) * u64::from(args.seconds);
    let shared = Arc::new(Shared::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stalled = |i: usize| is_stalled(i, targets.len(), args.stalled_percent);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.connect_timeout_seconds);
    eprintln!(
        "fanout: {} {} {} viewers: connecting",
        row.system, row.transport, args.viewers
    );
    let viewers: Vec<_> = (0..args.viewers)
        .map(|i| {
            let plan = Plan {
                endpoint: targets[i % targets.len()].clone(),
                transport: args.transport,
                format,
                token: args.token.clone(),
                stalled: stalled(i),
                lines,
            };
            tokio::spawn(viewer::run(
                plan,
                shared.clone(),
                gate.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    row.stalled_viewers = (0..args.viewers).filter(|&i| stalled(i)).count();
    row.measured_viewers = args.viewers - row.stalled_viewers;
    loop {
        let settled = shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if settled >= args.viewers || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = shared.progress.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    row.connect_seconds = started.elapsed().as_secs_f64();
    row.connected = shared.ready.load(Ordering::Relaxed);
    row.connect_failures = args.viewers - row.connected;
    let measured_ready = shared.measured_ready.load(Ordering::Relaxed);
    eprintln!(
        "fanout: {} of {} viewers connected in {:.1} s",
        row.connected, args.viewers, row.connect_seconds
    );
    if let Some(gauge) = &args.viewer_gauge {
        // Servers count a viewer as it attaches, so they agree within milliseconds; a
        // gauge that never agrees costs 10 s, and the report notes the mismatch.
        let agree_by = deadline.min(Instant::now() + Duration::from_secs(10));
        row.viewer_gauge = await_gauge(&pages, gauge, row.connected as f64, agree_by).await;
    }

    // Idle: every viewer connected, nothing pushed since the warm-up line.
    let idle: Vec<Option<Sample>> = watched.iter().map(Watched::sample).collect();
    row.metrics_idle = scrape(&pages, &args.metric_names).await;

    // Load.
    let me_start = probe::sample("self").ok();
    let cpu_start: Vec<Option<Sample>> = watched.iter().map(Watched::sample).collect();
    let window = Instant::now();
    eprintln!(
        "fanout: pushing {lines} lines at {}/s to {}",
        args.rate, publish.endpoint.path
    );
    // The pusher gets a thread and runtime of its own: on the viewers' runtime it would
    // queue behind thousands of reads and send late, offering less than the rate.
    let pushed = {
        let (publish, rate, connections) = (publish.clone(), args.rate, args.push_connections);
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(push::push(&publish, rate, lines, connections))
        })
        .await??
    };
    let accepted = pushed.accepted.iter().filter(|a| **a).count() as u64;
    let target = accepted * measured_ready as u64;
    let pushed_at = Instant::now();
    let drain_deadline = pushed_at + Duration::from_secs_f64(args.drain_seconds);
    // The drain polls an in-process counter; 5 ms is far below what is measured.
    loop {
        if shared.received.load(Ordering::Relaxed) >= target {
            row.drained = true;
            break;
        }
        if Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    row.drain_seconds = pushed_at.elapsed().as_secs_f64();
    let cpu_end: Vec<Option<Sample>> = watched.iter().map(Watched::sample).collect();
    let me_end = probe::sample("self").ok();
    row.window_seconds = window.elapsed().as_secs_f64();
    row.metrics_end = scrape(&pages, &args.metric_names).await;
    stop_tx.send_replace(true);

    // Results.
    row.lines_scheduled = lines;
    row.lines_accepted = accepted;
    row.push_errors = pushed.errors;
    row.first_push_error = pushed.first_error;
    row.push_seconds = pushed.elapsed.as_secs_f64();
    row.push_lag_p99_ms = Latency::of(pushed.lag_us).map(|l| l.p99);
    let accepted_bits = bits(&pushed.accepted);
    let mut latencies = Vec::new();
    for v in viewers {
        let outcome = v.await?;
        if !outcome.connected {
            row.first_connect_error = row.first_connect_error.take().or(outcome.error);
            continue;
        }
        if outcome.stalled {
            continue;
        }
        row.received += outcome.tally.seen_among(&accepted_bits);
        row.duplicates += outcome.tally.duplicates;
        if outcome.disconnected {
            row.disconnected += 1;
            row.first_disconnect_error = row.first_disconnect_error.take().or(outcome.error);
        }
        latencies.extend_from_slice(&outcome.tally.latencies_us);
    }
    row.expected = accepted * row.measured_viewers as u64;
    row.lost = row.expected - row.received;
    row.latency_ms = Latency::of(latencies);

    row.generator_cpu_seconds = cpu_seconds(me_start, me_end);
    let mut per_viewer_kib = 0.0;
    let mut has_edges = false;
    for (i, w) in watched.iter().enumerate() {
        let cpu = cpu_seconds(cpu_start[i], cpu_end[i]);
        let tier_cpu = if w.tier == "store" {
            &mut row.store_cpu_seconds
        } else {
            &mut row.edge_cpu_seconds
        };
        if let Some(c) = cpu {
            *tier_cpu = Some(tier_cpu.unwrap_or(0.0) + c);
        }
        if w.tier == "edge"
            && let (Some(b), Some(i)) = (before[i], idle[i])
        {
            has_edges = true;
            per_viewer_kib += (i.rss_kib as f64 - b.rss_kib as f64) / args.viewers.max(1) as f64;
        }
        row.processes.push(Process {
            name: w.name.clone(),
            tier: w.tier.into(),
            pid: w.pid,
            rss_before_kib: before[i].map(|s| s.rss_kib),
            rss_idle_kib: idle[i].map(|s| s.rss_kib),
            cpu_seconds: cpu,
            alive_at_end: cpu_end[i].is_some(),
        });
    }
    if has_edges {
        row.rss_per_idle_viewer_kib = Some(per_viewer_kib);
    }
    eprintln!(
        "fanout: p99 {} ms, lost {}, duplicates {}",
        row.latency_ms
            .map_or_else(|| "n/a".into(), |l| format!("{:.1}", l.p99)),
        row.lost,
        row.duplicates
    );
    Ok(())
}

/// Whether viewer `i` stalls. Viewer i goes to target i mod `targets`; within a target,
/// its k-th viewer stalls when floor((k+1)p/100) > floor(kp/100), so each target gets
/// floor(its viewers x p / 100) stalled viewers, evenly spaced (a plain "i mod 100 < p"
/// would put 10 of 50 viewers, not 5, in a 50-viewer row).
fn is_stalled(i: usize, targets: usize, percent: u32) -> bool {
    let k = i / targets.max(1);
    let p = percent.min(100) as usize;
    (k + 1) * p / 100 > k * p / 100
}

/// A bitset of the accepted seqs, in the tally's layout.
fn bits(accepted: &[bool]) -> Vec<u64> {
    let mut b = vec![0u64; accepted.len().div_ceil(64)];
    for (seq, _) in accepted.iter().enumerate().filter(|(_, a)| **a) {
        b[seq / 64] |= 1 << (seq % 64);
    }
    b
}

/// Reads each page's gauges; a page that cannot be read reports every gauge as absent.
async fn scrape(pages: &[Named], names: &[String]) -> Metrics {
    let mut out = Metrics::new();
    for p in pages {
        let text = match http::get(&p.value).await {
            Ok((200, text)) => text,
            _ => String::new(),
        };
        out.insert(p.name.clone(), probe::metric_values(&text, names));
    }
    out
}

/// Polls the fan-out pages until `gauge` sums to `want` (the server agrees every viewer
/// is attached) or the deadline; returns the last sum, `None` when a page lacks the gauge.
async fn await_gauge(pages: &[Named], gauge: &str, want: f64, deadline: Instant) -> Option<f64> {
    let names = [gauge.to_owned()];
    let edges: Vec<Named> = pages
        .iter()
        .filter(|p| p.name != "store")
        .cloned()
        .collect();
    loop {
        let metrics = scrape(&edges, &names).await;
        let sum: Option<f64> = metrics.values().map(|m| m[gauge]).sum();
        match sum {
            None => {
                eprintln!("fanout: no {gauge} gauge on the fan-out pages; not waiting for it");
                return None;
            }
            Some(v) if v == want || Instant::now() >= deadline => return Some(v),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_viewers_are_the_percent_asked_on_every_target() {
        let count = |n: usize, targets: usize, p: u32, t: usize| {
            (0..n)
                .filter(|&i| i % targets == t && is_stalled(i, targets, p))
                .count()
        };
        assert_eq!((count(1000, 2, 10, 0), count(1000, 2, 10, 1)), (50, 50));
        assert_eq!(count(10_000, 1, 10, 0), 1000);
        assert_eq!(count(50, 2, 10, 0) + count(50, 2, 10, 1), 4);
        assert_eq!(count(1000, 2, 0, 0), 0);
        assert_eq!(count(1000, 2, 100, 1), 500);
    }
}
