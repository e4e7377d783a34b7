//! What the benchmark reads off the processes it measures: RSS and CPU time from `/proc`,
//! gauges from `/metrics` pages, and the generator's own descriptor limit.

use std::collections::BTreeMap;

use anyhow::Context;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit (10,000 viewers
/// need 10,000 sockets) and returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// `VmRSS` from `/proc/PID/status`, KiB.
    pub rss_kib: u64,
    /// `utime + stime` from `/proc/PID/stat`, clock ticks.
    pub cpu_ticks: u64,
}

/// Samples process `pid` (`self` for this one).
pub fn sample(pid: &str) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    Ok(Sample {
        rss_kib: vm_rss_kib(&status).with_context(|| format!("/proc/{pid}/status: no VmRSS"))?,
        cpu_ticks: cpu_ticks(&stat).with_context(|| format!("/proc/{pid}/stat: unreadable"))?,
    })
}

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// `VmRSS:   123456 kB` -> 123456.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Fields 14 and 15 of `/proc/PID/stat` (utime, stime). The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from its closing `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After `)`: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value of each of `names` on a metrics page: the sum of its samples over all label
/// sets, `None` when the page has no sample of it. Reads the Prometheus text format
/// (`name{labels} value`) and nchan's stub status (`name: value`).
pub fn metric_values(page: &str, names: &[String]) -> BTreeMap<String, Option<f64>> {
    let mut values: BTreeMap<String, Option<f64>> =
        names.iter().map(|n| (n.clone(), None)).collect();
    for line in page.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = if let Some(brace) = line.find('{') {
            let Some(close) = line.rfind('}') else {
                continue;
            };
            (&line[..brace], &line[close + 1..])
        } else if let Some((name, value)) = line.split_once(": ") {
            (name, value)
        } else {
            match line.split_once(' ') {
                Some(pair) => pair,
                None => continue,
            }
        };
        let Some(slot) = values.get_mut(name.trim()) else {
            continue;
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *slot = Some(slot.unwrap_or(0.0) + v);
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_give_rss_and_cpu_ticks() {
        assert_eq!(
            vm_rss_kib("Name:\tx\nVmRSS:\t   20480 kB\nThreads: 3\n"),
            Some(20480)
        );
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 35 0 0 20 0 3 0 1 0 0";
        assert_eq!(cpu_ticks(stat), Some(285));
        let me = sample("self").unwrap();
        assert!(me.rss_kib > 0);
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn metric_pages_are_summed_over_labels_and_missing_names_are_none() {
        let names = [
            "logstream_live_viewers",
            "logstream_tail_subscribers",
            "subscribers",
            "logstream_edge_upstreams",
        ]
        .map(String::from);
        let page = "# HELP logstream_live_viewers x\n# TYPE logstream_live_viewers gauge\n\
                    logstream_live_viewers{transport=\"sse\"} 3\nlogstream_live_viewers{transport=\"ws\"} 2\n\
                    logstream_tail_subscribers 2\nlogstream_live_viewers_total 9\n";
        let v = metric_values(page, &names);
        assert_eq!(v["logstream_live_viewers"], Some(5.0));
        assert_eq!(v["logstream_tail_subscribers"], Some(2.0));
        assert_eq!(v["logstream_edge_upstreams"], None);
        let nchan = "total published messages: 11\nchannels: 1\nsubscribers: 50\n";
        assert_eq!(metric_values(nchan, &names)["subscribers"], Some(50.0));
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let now = raise_nofile();
        assert_eq!(Some(now), getrlimit(Resource::Nofile).maximum.or(Some(now)));
    }
}
