//! Segment store benchmark: `cargo bench -p logstream-store --bench store`.
//!
//! For every loghub sample and every captured CI log (`../shared/data/`), replayed as
//! deployments:
//! - append throughput with fsync per batch, against writing the same raw bytes to a
//!   plain file with the same fsync cadence (the baseline), in the same run;
//! - bytes on disk per line (segments + index) against `zstd -3` of the raw file;
//! - p50/p99 latency of a 500-line page at a random cursor and of a time seek.
//!
//! Environment: `LOGSTREAM_BENCH_DATA` (default `../shared/data` from the repo root),
//! `LOGSTREAM_BENCH_ZSTD_LEVELS` (default `1,3,6`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logstream_model::{Filter, LogRecord};
use logstream_store::{DeploymentId, Direction, Store, StoreConfig, StoreHooks};
use rand::Rng;

fn data_dir() -> PathBuf {
    std::env::var_os("LOGSTREAM_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn datasets() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for sub in ["loghub", "ci"] {
        let mut files: Vec<_> = std::fs::read_dir(data_dir().join(sub))
            .expect("benchmark data (set LOGSTREAM_BENCH_DATA)")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for f in files {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            out.push((
                format!("{sub}/{}", f.file_name().unwrap().to_string_lossy()),
                lines,
            ));
        }
    }
    out
}

fn records(lines: &[String], start_ts: i64) -> Vec<LogRecord> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| LogRecord::new(start_ts + i as i64 * 1_000_000, "main", l.clone()))
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".seg") || name.ends_with(".idx") {
            total += std::fs::metadata(&e).unwrap().len();
        }
    }
    total
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn zstd3_size(raw: &[u8]) -> (u64, &'static str) {
    let cli = std::process::Command::new("zstd")
        .args(["-3", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut child) = cli {
        let mut stdin = child.stdin.take().unwrap();
        let raw = raw.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&raw));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        if out.status.success() {
            return (out.stdout.len() as u64, "zstd CLI -3");
        }
    }
    (
        zstd::bulk::compress(raw, 3).unwrap().len() as u64,
        "libzstd level 3",
    )
}

fn raw_bytes(lines: &[String]) -> Vec<u8> {
    let mut raw = Vec::new();
    for l in lines {
        raw.extend_from_slice(l.as_bytes());
        raw.push(b'\n');
    }
    raw
}

/// Appends `reps` replays of `lines` in batches of `batch`, fsync per batch; returns
/// (elapsed store, elapsed baseline).
fn append_run(
    root: &Path,
    lines: &[String],
    reps: usize,
    batch: usize,
    level: i32,
) -> (Duration, Duration) {
    let cfg = StoreConfig {
        zstd_level: level,
        ..base_config()
    };
    let store = Store::open(root.join("store"), cfg, StoreHooks::default()).unwrap();
    let log = store
        .log(&DeploymentId::new("bench", "append"), true)
        .unwrap()
        .unwrap();
    let mut all = Vec::with_capacity(lines.len() * reps);
    for r in 0..reps {
        all.extend(records(lines, r as i64 * 10_000_000_000));
    }
    let batches: Vec<Vec<LogRecord>> = all.chunks(batch).map(<[LogRecord]>::to_vec).collect();
    let t = Instant::now();
    for b in batches {
        log.append(b, None).unwrap();
    }
    let store_time = t.elapsed();

    let raw: Vec<Vec<u8>> = (0..reps)
        .flat_map(|_| lines.chunks(batch).map(raw_bytes))
        .collect();
    let mut f = std::fs::File::create(root.join("baseline.log")).unwrap();
    let t = Instant::now();
    for chunk in &raw {
        f.write_all(chunk).unwrap();
        f.sync_data().unwrap();
    }
    (store_time, t.elapsed())
}

fn base_config() -> StoreConfig {
    let block_bytes: usize = std::env::var("LOGSTREAM_BENCH_BLOCK_KIB")
        .map_or(StoreConfig::default().block_bytes, |v| {
            v.parse::<usize>().unwrap() << 10
        });
    StoreConfig {
        block_bytes,
        block_records: 16_384,
        ..StoreConfig::default()
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let levels: Vec<i32> = std::env::var("LOGSTREAM_BENCH_ZSTD_LEVELS")
        .unwrap_or_else(|_| "1,3,6".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let only = std::env::var("LOGSTREAM_BENCH_ONLY").unwrap_or_default();
    let block_bytes: usize = std::env::var("LOGSTREAM_BENCH_BLOCK_KIB")
        .map_or(StoreConfig::default().block_bytes, |v| {
            v.parse::<usize>().unwrap() << 10
        });
    let base = base_config();
    let sets = datasets();
    println!(
        "## Segment store (blocks of up to {} KiB)\n",
        block_bytes >> 10
    );
    if only.is_empty() || only == "append" {
        println!(
            "Append: each file replayed until >= 100,000 lines, batches of 1,000 and 10,000 lines, fdatasync per batch; baseline = the same raw bytes to a plain file, same fsync cadence, same run.\n"
        );
        for &batch in &[1_000usize, 10_000] {
            println!("### batch {batch} lines\n");
            println!(
                "| dataset | zstd | store lines/s | store MB/s (raw) | baseline lines/s | store / baseline |"
            );
            println!("|---|---:|---:|---:|---:|---:|");
            for level in &levels {
                let (mut lines_total, mut bytes_total, mut store_t, mut base_t) =
                    (0usize, 0usize, Duration::ZERO, Duration::ZERO);
                for (name, lines) in &sets {
                    let reps = 100_000usize.div_ceil(lines.len().max(1));
                    let tmp = tempfile::tempdir().unwrap();
                    let (s, b) = append_run(tmp.path(), lines, reps, batch, *level);
                    let n = lines.len() * reps;
                    let bytes = raw_bytes(lines).len() * reps;
                    if *level == 3 {
                        println!(
                            "| {name} | {level} | {:.0} | {:.1} | {:.0} | {:.2} |",
                            n as f64 / s.as_secs_f64(),
                            bytes as f64 / 1e6 / s.as_secs_f64(),
                            n as f64 / b.as_secs_f64(),
                            b.as_secs_f64() / s.as_secs_f64()
                        );
                    }
                    lines_total += n;
                    bytes_total += bytes;
                    store_t += s;
                    base_t += b;
                }
                println!(
                    "| **all** | {level} | **{:.0}** | **{:.1}** | {:.0} | **{:.2}** |",
                    lines_total as f64 / store_t.as_secs_f64(),
                    bytes_total as f64 / 1e6 / store_t.as_secs_f64(),
                    lines_total as f64 / base_t.as_secs_f64(),
                    base_t.as_secs_f64() / store_t.as_secs_f64()
                );
            }
            println!();
        }
    }
    if only.is_empty() || only == "size" {
        println!("### Size on disk (one replay of each file, batches of 1,000 lines)\n");
        println!(
            "| dataset | lines | raw bytes | zstd -3 bytes | store bytes (level 1 / 3 / 6) | store B/line (level 3) | store / zstd -3 (level 3) | compacted / zstd -3 |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut sums = (0u64, 0u64, vec![0u64; levels.len()], 0u64);
        let mut zstd_kind = "";
        for (name, lines) in &sets {
            let raw = raw_bytes(lines);
            let (z, kind) = zstd3_size(&raw);
            zstd_kind = kind;
            let mut sizes = Vec::new();
            let mut compacted = 0;
            for level in &levels {
                let tmp = tempfile::tempdir().unwrap();
                let cfg = StoreConfig {
                    zstd_level: *level,
                    ..base.clone()
                };
                let store = Store::open(tmp.path(), cfg, StoreHooks::default()).unwrap();
                let log = store
                    .log(&DeploymentId::new("bench", "size"), true)
                    .unwrap()
                    .unwrap();
                for chunk in records(lines, 0).chunks(1000) {
                    log.append(chunk.to_vec(), None).unwrap();
                }
                sizes.push(dir_bytes(tmp.path()));
                if *level == 3 {
                    log.complete(logstream_store::Outcome::Succeeded, 0)
                        .unwrap();
                    drop(log);
                    logstream_store::compact(&store, &DeploymentId::new("bench", "size")).unwrap();
                    compacted = dir_bytes(tmp.path());
                }
            }
            sums.3 += compacted;
            let l3 = sizes[levels.iter().position(|l| *l == 3).unwrap_or(0)];
            println!(
                "| {name} | {} | {} | {z} | {} | {:.1} | {:.2} | {:.2} |",
                lines.len(),
                raw.len(),
                sizes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" / "),
                l3 as f64 / lines.len() as f64,
                l3 as f64 / z as f64,
                compacted as f64 / z as f64
            );
            sums.0 += raw.len() as u64;
            sums.1 += z;
            for (i, s) in sizes.iter().enumerate() {
                sums.2[i] += s;
            }
        }
        let l3 = sums.2[levels.iter().position(|l| *l == 3).unwrap_or(0)];
        println!(
            "| **all** | | {} | {} | {} | | **{:.2}** | **{:.2}** |\n",
            sums.0,
            sums.1,
            sums.2
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            l3 as f64 / sums.1 as f64,
            sums.3 as f64 / sums.1 as f64
        );
        println!("(zstd reference: {zstd_kind})\n");
    }
    if !(only.is_empty() || only == "read") {
        return;
    }

    // Read latency on one large deployment: every dataset replayed to ~1M lines.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), base.clone(), StoreHooks::default()).unwrap();
    let log = store
        .log(&DeploymentId::new("bench", "read"), true)
        .unwrap()
        .unwrap();
    let mut ts = 0i64;
    let mut total = 0u64;
    while total < 1_000_000 {
        for (_, lines) in &sets {
            for chunk in records(lines, ts).chunks(1000) {
                log.append(chunk.to_vec(), None).unwrap();
            }
            ts += lines.len() as i64 * 1_000_000;
            total += lines.len() as u64;
        }
    }
    let mut rng = rand::rng();
    let all = Filter::default();
    let mut page_t = Vec::new();
    let mut back_t = Vec::new();
    let mut seek_t = Vec::new();
    for _ in 0..2000 {
        let from = rng.random_range(0..total);
        let t = Instant::now();
        let p = log.read(Direction::Forward, from, &all, 500).unwrap();
        page_t.push(t.elapsed());
        assert!(!p.records.is_empty());
        let t = Instant::now();
        log.read(Direction::Backward, from + 1, &all, 500).unwrap();
        back_t.push(t.elapsed());
        let since = Filter {
            since: Some(rng.random_range(0..ts)),
            ..Filter::default()
        };
        let t = Instant::now();
        log.read(Direction::Forward, 0, &since, 500).unwrap();
        seek_t.push(t.elapsed());
    }
    println!(
        "### Reads on one deployment of {total} lines ({} MiB on disk), 2,000 random positions\n",
        dir_bytes(tmp.path()) >> 20
    );
    println!("| read | p50 | p99 |");
    println!("|---|---:|---:|");
    for (name, v) in [
        ("500-line page forward from a random cursor", &mut page_t),
        ("500-line page backward from a random cursor", &mut back_t),
        ("time seek (since=random) + 500-line page", &mut seek_t),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms |",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3
        );
    }
}
