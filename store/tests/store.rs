//! Segment store behaviour on real files: paging, recovery, tamper evidence, retention,
//! idempotent batches, I/O errors, and a model-based property test.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use logstream_model::{Filter, Level, LevelSet, LogRecord, Stream};
use logstream_store::{
    BatchId, Clock, DeploymentId, Direction, ListPage, ListQuery, Outcome, Store, StoreConfig,
    StoreError, StoreHooks, verify_dir,
};
use proptest::prelude::*;

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const DAY: i64 = 86_400_000_000_000;

fn small_config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 4096,
        segment_blocks: 4,
        block_records: 50,
        ..StoreConfig::default()
    }
}

fn open(dir: &Path, cfg: StoreConfig) -> Store {
    Store::open(dir, cfg, StoreHooks::default()).unwrap()
}

fn line(i: u64) -> LogRecord {
    let mut r = LogRecord::new(
        1_000 + i as i64,
        ["build", "test"][(i % 2) as usize],
        format!("line {i} {}", "x".repeat((i % 7) as usize * 10)),
    );
    r.level = Level::ALL[(i % 7) as usize];
    r.stream = if i.is_multiple_of(3) {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    r
}

fn lines(range: std::ops::Range<u64>) -> Vec<LogRecord> {
    range.map(line).collect()
}

fn read_all(store: &Store, id: &DeploymentId) -> Vec<LogRecord> {
    let log = store.log(id, false).unwrap().unwrap();
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = log
            .read(Direction::Forward, from, &Filter::default(), 97)
            .unwrap();
        out.extend(page.records);
        from = page.scanned_to;
        if page.exhausted {
            return out;
        }
    }
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn log_dir(root: &Path, id: &DeploymentId) -> PathBuf {
    root.join("tenants")
        .join(&id.tenant)
        .join("deployments")
        .join(&id.deployment)
}

#[test]
fn appended_lines_read_back_in_order_across_segments_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "build-1");
    {
        let store = open(tmp.path(), small_config());
        let log = store.log(&id, true).unwrap().unwrap();
        for chunk in 0..20 {
            let o = log
                .append(lines(chunk * 30..chunk * 30 + 30), None)
                .unwrap();
            assert_eq!((o.first_seq, o.last_seq), (chunk * 30 + 1, chunk * 30 + 30));
        }
        assert!(log.stats().segments > 3, "small segments roll");
    }
    let store = open(tmp.path(), small_config());
    let got = read_all(&store, &id);
    assert_eq!(got.len(), 600);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.message, line(i as u64).message);
        assert_eq!(r.level, line(i as u64).level);
    }
    assert!(verify_dir(&log_dir(tmp.path(), &id)).unwrap().is_clean());
}

#[test]
fn backward_pages_and_filters_never_skip_or_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), small_config());
    let id = DeploymentId::new("acme", "d");
    let log = store.log(&id, true).unwrap().unwrap();
    log.append(lines(0..500), None).unwrap();
    let filter = Filter {
        levels: LevelSet::parse("warn+").unwrap(),
        steps: vec!["build".into()],
        ..Filter::default()
    };
    let want: Vec<u64> = (1..=500)
        .filter(|s| {
            filter.matches(&{
                let mut r = line(s - 1);
                r.seq = *s;
                r
            })
        })
        .collect();
    let mut got = Vec::new();
    let mut from = u64::MAX;
    loop {
        let page = log.read(Direction::Backward, from, &filter, 7).unwrap();
        got.extend(page.records.iter().map(|r| r.seq));
        from = page.scanned_to;
        if page.exhausted {
            break;
        }
    }
    got.reverse();
    assert_eq!(got, want);
}

#[test]
fn time_seek_starts_at_the_first_block_at_or_after_since() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), small_config());
    let log = store
        .log(&DeploymentId::new("a", "t"), true)
        .unwrap()
        .unwrap();
    for chunk in 0..10u64 {
        log.append(lines(chunk * 50..chunk * 50 + 50), None)
            .unwrap();
    }
    let since = 1_000 + 321;
    let page = log
        .read(
            Direction::Forward,
            0,
            &Filter {
                since: Some(since),
                ..Filter::default()
            },
            5,
        )
        .unwrap();
    assert_eq!(page.records.first().map(|r| r.ts), Some(since));
}

#[test]
fn torn_and_corrupt_tails_are_truncated_and_acked_lines_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "torn");
    {
        let store = open(tmp.path(), StoreConfig::default());
        let log = store.log(&id, true).unwrap().unwrap();
        log.append(lines(0..10), None).unwrap();
        log.append(lines(10..20), None).unwrap();
    }
    let dir = log_dir(tmp.path(), &id);
    let seg = seg_files(&dir).pop().unwrap();
    // A torn write: half a block of garbage at the end.
    let f = OpenOptions::new().append(true).open(&seg).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(b"LSBK\x40\x00\x00\x00garbage", len).unwrap();
    drop(f);
    {
        let store = open(tmp.path(), StoreConfig::default());
        assert_eq!(read_all(&store, &id).len(), 20);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            len,
            "torn tail truncated"
        );
        // Appending continues the chain.
        store
            .log(&id, false)
            .unwrap()
            .unwrap()
            .append(lines(20..25), None)
            .unwrap();
    }
    // Corrupt the last block's payload by hand: recovery drops that block (it was the
    // tail, as after a crash mid-write) and verify is clean again.
    let len = fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(b"\xff", len - 3).unwrap();
    drop(f);
    let store = open(tmp.path(), StoreConfig::default());
    assert_eq!(read_all(&store, &id).len(), 20);
    assert!(verify_dir(&dir).unwrap().is_clean());
}

/// Writes 5 blocks into one segment and returns (dir, segment path, block offsets).
fn five_blocks(root: &Path) -> (PathBuf, PathBuf, Vec<(u64, u64)>) {
    let id = DeploymentId::new("acme", "tamper");
    let store = open(root, StoreConfig::default());
    let log = store.log(&id, true).unwrap().unwrap();
    for i in 0..5 {
        log.append(lines(i * 10..i * 10 + 10), None).unwrap();
    }
    log.complete(Outcome::Succeeded, 0).unwrap();
    let dir = log_dir(root, &id);
    let seg = seg_files(&dir).pop().unwrap();
    let idx = fs::read(seg.with_extension("idx")).unwrap();
    let blocks = idx
        .chunks(64)
        .map(|e| {
            (
                u64::from_le_bytes(e[0..8].try_into().unwrap()),
                u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap())),
            )
        })
        .collect();
    (dir, seg, blocks)
}

#[test]
fn verify_names_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, blocks) = five_blocks(tmp.path());
    assert!(verify_dir(&dir).unwrap().is_clean());
    let mut bytes = fs::read(&seg).unwrap();
    let (off, len) = blocks[2];
    bytes[(off + len / 2) as usize] ^= 0x20;
    fs::write(&seg, bytes).unwrap();
    let bad = verify_dir(&dir)
        .unwrap()
        .first_bad
        .expect("tamper detected");
    assert_eq!((bad.offset, bad.expected_seq), (off, 21), "{bad:?}");
    assert!(bad.reason.contains("CRC"), "{}", bad.reason);
}

#[test]
fn verify_names_a_deleted_block() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, blocks) = five_blocks(tmp.path());
    let bytes = fs::read(&seg).unwrap();
    let (off, len) = blocks[1];
    let spliced = [&bytes[..off as usize], &bytes[(off + len) as usize..]].concat();
    fs::write(&seg, spliced).unwrap();
    let bad = verify_dir(&dir)
        .unwrap()
        .first_bad
        .expect("deletion detected");
    assert_eq!((bad.offset, bad.expected_seq), (off, 11), "{bad:?}");
    assert!(
        bad.reason.contains("removed or reordered"),
        "{}",
        bad.reason
    );
}

#[test]
fn verify_names_reordered_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, blocks) = five_blocks(tmp.path());
    let bytes = fs::read(&seg).unwrap();
    let b = |i: usize| &bytes[blocks[i].0 as usize..(blocks[i].0 + blocks[i].1) as usize];
    let reordered = [&bytes[..blocks[0].0 as usize], b(0), b(2), b(1), b(3), b(4)].concat();
    fs::write(&seg, reordered).unwrap();
    let bad = verify_dir(&dir)
        .unwrap()
        .first_bad
        .expect("reorder detected");
    assert_eq!(bad.expected_seq, 11, "{bad:?}");
}

#[test]
fn verify_detects_a_block_rewritten_with_a_valid_crc() {
    // An attacker who recomputes the CRC of an edited block still breaks the chain.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, blocks) = five_blocks(tmp.path());
    let mut bytes = fs::read(&seg).unwrap();
    let (off, len) = blocks[1];
    let block = &mut bytes[off as usize..(off + len) as usize];
    let hl = u32::from_le_bytes(block[4..8].try_into().unwrap()) as usize;
    block[24] ^= 1; // min_ts low byte
    let mut crc = crc32c::crc32c(&block[..hl - 4]);
    crc = crc32c::crc32c_append(crc, &block[hl..]);
    block[hl - 4..hl].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, bytes).unwrap();
    let bad = verify_dir(&dir)
        .unwrap()
        .first_bad
        .expect("chain break detected");
    assert_eq!(
        bad.expected_seq, 21,
        "the next block's prev_hash no longer matches: {bad:?}"
    );
    assert!(bad.reason.contains("hash chain"), "{}", bad.reason);
}

#[test]
fn retried_batches_are_stored_once_even_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "dedup");
    let batch = |n| {
        Some(BatchId {
            source: "node-1/pod".into(),
            batch_id: n,
        })
    };
    {
        let store = open(tmp.path(), small_config());
        let log = store.log(&id, true).unwrap().unwrap();
        assert_eq!(log.append(lines(0..5), batch(1)).unwrap().last_seq, 5);
        let again = log.append(lines(0..5), batch(1)).unwrap();
        assert!(again.duplicate && again.last_seq == 5 && again.accepted() == 0);
        log.append(lines(5..8), batch(2)).unwrap();
    }
    let store = open(tmp.path(), small_config());
    let log = store.log(&id, false).unwrap().unwrap();
    let again = log.append(lines(5..8), batch(2)).unwrap();
    assert!(again.duplicate && again.last_seq == 8, "{again:?}");
    assert!(log.append(lines(0..5), batch(1)).unwrap().duplicate);
    assert_eq!(log.append(lines(8..9), batch(3)).unwrap().last_seq, 9);
    assert_eq!(read_all(&store, &id).len(), 9);
}

#[test]
fn write_errors_reach_the_writer_and_leave_no_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), StoreConfig::default());
    let id = DeploymentId::new("acme", "io");
    let log = store.log(&id, true).unwrap().unwrap();
    log.append(lines(0..3), None).unwrap();
    store
        .hooks()
        .faults
        .arm("segment_sync", std::io::ErrorKind::StorageFull);
    let err = log.append(lines(3..6), None).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    store.hooks().faults.disarm("segment_sync");
    let o = log.append(lines(3..6), None).unwrap();
    assert_eq!(
        (o.first_seq, o.last_seq),
        (4, 6),
        "the failed batch took no seqs"
    );
    assert_eq!(
        read_all(&store, &id)
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert!(verify_dir(&log_dir(tmp.path(), &id)).unwrap().is_clean());
}

#[test]
fn completed_logs_refuse_appends_and_keep_their_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "done");
    {
        let store = open(tmp.path(), StoreConfig::default());
        let log = store.log(&id, true).unwrap().unwrap();
        log.append(lines(0..3), None).unwrap();
        let c = log.complete(Outcome::Failed, 2).unwrap();
        assert_eq!(c.last_seq, 3);
        assert!(log.complete(Outcome::Failed, 2).is_ok(), "idempotent");
        assert!(matches!(
            log.complete(Outcome::Succeeded, 0),
            Err(StoreError::Completed { .. })
        ));
        assert!(matches!(
            log.append(lines(3..4), None),
            Err(StoreError::Completed { .. })
        ));
    }
    let store = open(tmp.path(), StoreConfig::default());
    let log = store.log(&id, false).unwrap().unwrap();
    assert_eq!(
        log.completion().map(|c| (c.status, c.exit_code)),
        Some((Outcome::Failed, 2))
    );
    assert!(matches!(
        log.append(lines(3..4), None),
        Err(StoreError::Completed { .. })
    ));
}

#[test]
fn concurrent_appends_share_fsyncs_and_keep_every_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open(tmp.path(), StoreConfig::default()));
    let id = DeploymentId::new("acme", "group");
    let log = store.log(&id, true).unwrap().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    log.append(
                        vec![LogRecord::new(1, format!("t{t}"), format!("{t}:{i}"))],
                        None,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let all = read_all(&store, &id);
    assert_eq!(all.len(), 400);
    for t in 0..8 {
        let mine: Vec<_> = all
            .iter()
            .filter(|r| r.step == format!("t{t}"))
            .map(|r| r.message.clone())
            .collect();
        assert_eq!(
            mine,
            (0..50).map(|i| format!("{t}:{i}")).collect::<Vec<_>>(),
            "per-producer order kept"
        );
    }
    let report = verify_dir(&log_dir(tmp.path(), &id)).unwrap();
    assert!(report.is_clean());
    assert!(
        report.blocks < 400,
        "400 appends from 8 threads were grouped into {} blocks",
        report.blocks
    );
}

#[test]
fn retention_deletes_only_sealed_segments_past_the_tenant_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(100 * DAY)));
    let hooks = StoreHooks {
        clock: clock.clone(),
        ..StoreHooks::default()
    };
    let store = Store::open(tmp.path(), small_config(), hooks).unwrap();
    let old = DeploymentId::new("acme", "old");
    let live = DeploymentId::new("acme", "live");
    let other = DeploymentId::new("beta", "old");
    for id in [&old, &other] {
        let log = store.log(id, true).unwrap().unwrap();
        for i in 0..10 {
            log.append(lines(i * 40..i * 40 + 40), None).unwrap();
        }
        log.complete(Outcome::Succeeded, 0).unwrap();
    }
    let live_log = store.log(&live, true).unwrap().unwrap();
    live_log.append(lines(0..200), None).unwrap();
    clock.0.store(100 * DAY + 20 * DAY, Ordering::SeqCst);
    live_log.append(lines(200..400), None).unwrap();

    // acme keeps 10 days, beta 30: only acme's data written 20 days ago goes.
    clock.0.store(100 * DAY + 21 * DAY, Ordering::SeqCst);
    let retention = |t: &str| {
        Duration::from_nanos(if t == "acme" {
            10 * DAY as u64
        } else {
            30 * DAY as u64
        })
    };
    let expired = store.expire(retention).unwrap();
    assert!(expired.iter().all(|e| e.log.tenant == "acme"));
    assert!(expired.iter().any(|e| e.log == old) && expired.iter().any(|e| e.log == live));
    assert!(
        !log_dir(tmp.path(), &old).exists(),
        "completed and fully expired: directory removed"
    );
    assert_eq!(read_all(&store, &other).len(), 400, "beta untouched");
    let remaining = read_all(&store, &live);
    assert_eq!(remaining.last().unwrap().seq, 400);
    assert!(
        remaining.first().unwrap().seq > 1 && remaining.first().unwrap().seq <= 201,
        "old sealed segments gone, recent ones kept"
    );
    let report = verify_dir(&log_dir(tmp.path(), &live)).unwrap();
    assert!(
        report.is_clean(),
        "chain verifies from the retention anchor: {report:?}"
    );
    assert_eq!(report.first_seq, remaining.first().unwrap().seq);
    // Nothing more to expire now.
    assert!(store.expire(retention).unwrap().is_empty());
}

#[test]
fn compaction_rewrites_small_blocks_and_keeps_every_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), StoreConfig::default());
    let id = DeploymentId::new("acme", "small");
    let log = store.log(&id, true).unwrap().unwrap();
    for i in 0..300 {
        log.append(vec![line(i)], None).unwrap();
    }
    assert!(
        logstream_store::compact(&store, &id).is_err(),
        "running logs are not compacted"
    );
    log.complete(Outcome::Succeeded, 0).unwrap();
    drop(log);
    let (before, after) = logstream_store::compact(&store, &id).unwrap();
    assert_eq!((before.blocks, before.lines), (300, 300));
    assert_eq!(after.lines, 300);
    assert!(after.blocks < 5, "{after:?}");
    let got = read_all(&store, &id);
    assert_eq!(
        got.iter().map(|r| r.message.clone()).collect::<Vec<_>>(),
        (0..300).map(|i| line(i).message).collect::<Vec<_>>()
    );
    assert!(
        store
            .log(&id, false)
            .unwrap()
            .unwrap()
            .completion()
            .is_some()
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Read {
        forward: bool,
        from: u16,
        limit: u8,
        levels: u8,
        step: Option<bool>,
    },
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Append),
        4 => (any::<bool>(), 0u16..400, 1u8..30, 1u8..0x80, prop::option::of(any::<bool>()))
            .prop_map(|(forward, from, limit, levels, step)| Op::Read { forward, from, limit, levels, step }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving of appends, reads from any cursor with any filter in either
    /// direction, and reopens agrees with a Vec.
    #[test]
    fn store_matches_an_in_memory_model(ops in prop::collection::vec(arb_op(), 1..30)) {
        let tmp = tempfile::tempdir().unwrap();
        let id = DeploymentId::new("t", "model");
        let mut store = open(tmp.path(), small_config());
        let mut model: Vec<LogRecord> = Vec::new();
        for op in ops {
            match op {
                Op::Append(n) => {
                    let start = model.len() as u64;
                    let recs = lines(start..start + u64::from(n));
                    let o = store.log(&id, true).unwrap().unwrap().append(recs.clone(), None).unwrap();
                    prop_assert_eq!(o.first_seq, start + 1);
                    for (i, mut r) in recs.into_iter().enumerate() { r.seq = start + 1 + i as u64; model.push(r); }
                }
                Op::Read { forward, from, limit, levels, step } => {
                    let Some(log) = store.log(&id, false).unwrap() else { continue };
                    let filter = Filter { levels: LevelSet::from_bits(levels), steps: step.map(|b| vec![if b { "build" } else { "test" }.to_owned()]).unwrap_or_default(), ..Filter::default() };
                    let from = u64::from(from);
                    let page = log.read(if forward { Direction::Forward } else { Direction::Backward }, from, &filter, limit as usize).unwrap();
                    let want: Vec<u64> = if forward {
                        model.iter().filter(|r| r.seq > from && filter.matches(r)).take(limit as usize).map(|r| r.seq).collect()
                    } else {
                        model.iter().rev().filter(|r| r.seq < from && filter.matches(r)).take(limit as usize).map(|r| r.seq).collect()
                    };
                    let got: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
                    prop_assert_eq!(&got, &want);
                    for r in &page.records { prop_assert_eq!(r, &model[r.seq as usize - 1]); }
                    // Nothing matching lies between the page and where it says to continue.
                    let (lo, hi) = if forward { (from + 1, page.scanned_to) } else { (page.scanned_to, from.saturating_sub(1)) };
                    let between = model.iter().filter(|r| r.seq >= lo && r.seq <= hi && filter.matches(r)).count();
                    prop_assert_eq!(between, got.len());
                }
                Op::Reopen => {
                    drop(store);
                    store = open(tmp.path(), small_config());
                }
            }
        }
        if !model.is_empty() {
            prop_assert!(verify_dir(&log_dir(tmp.path(), &id)).unwrap().is_clean());
        }
    }
}

#[test]
fn idle_completed_logs_are_forgotten_and_reopen_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), StoreConfig::default());
    let done = DeploymentId::new("acme", "done");
    let running = DeploymentId::new("acme", "running");
    let log = store.log(&done, true).unwrap().unwrap();
    log.append(lines(0..5), None).unwrap();
    log.complete(Outcome::Succeeded, 0).unwrap();
    let held = store.log(&running, true).unwrap().unwrap();
    held.append(lines(0..5), None).unwrap();
    let in_use = store.log(&done, false).unwrap().unwrap();
    drop(log);
    assert_eq!(store.evict_idle(), 0, "a completed log someone holds stays");
    drop(in_use);
    assert_eq!(
        store.evict_idle(),
        1,
        "the idle completed log goes, the running one stays"
    );
    assert_eq!(store.open_logs(), 1);
    assert_eq!(read_all(&store, &done).len(), 5, "and reopens from disk");
}

#[test]
fn running_logs_idle_past_the_cutoff_are_found_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(100 * DAY)));
    let hooks = || StoreHooks {
        clock: clock.clone(),
        ..StoreHooks::default()
    };
    let hour = DAY / 24;
    let store = Store::open(tmp.path(), small_config(), hooks()).unwrap();
    let quiet = DeploymentId::new("acme", "quiet");
    let busy = DeploymentId::new("acme", "busy");
    let empty = DeploymentId::new("beta", "empty");
    let done = DeploymentId::new("acme", "done");
    let append = |id: &DeploymentId| {
        store
            .log(id, true)
            .unwrap()
            .unwrap()
            .append(lines(0..5), None)
            .unwrap()
    };
    append(&quiet);
    store.log(&empty, true).unwrap().unwrap();
    append(&done);
    store
        .log(&done, false)
        .unwrap()
        .unwrap()
        .complete(Outcome::Failed, 2)
        .unwrap();
    clock.0.store(100 * DAY + 5 * hour, Ordering::SeqCst);
    append(&busy);
    assert_eq!(
        store.log(&quiet, false).unwrap().unwrap().last_write_at(),
        100 * DAY
    );
    store.sync_catalog().unwrap();
    drop(store);

    // After a restart nothing is open; the catalog names the candidates, each is
    // checked against its log: only those quiet past the cutoff (their last append, or
    // their creation when empty) are idle, completed ones never.
    let store = Store::open(tmp.path(), small_config(), hooks()).unwrap();
    assert_eq!(store.open_logs(), 0, "no log is opened at start");
    let idle = |cutoff: i64| {
        let mut ids: Vec<String> = store
            .idle_running(|_| cutoff)
            .unwrap()
            .iter()
            .map(|l| l.id.deployment.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(idle(100 * DAY), Vec::<String>::new());
    assert_eq!(idle(100 * DAY + hour), ["empty", "quiet"]);
    assert_eq!(idle(100 * DAY + 6 * hour), ["busy", "empty", "quiet"]);
    let per_tenant = store
        .idle_running(|t| if t == "beta" { 100 * DAY + hour } else { 0 })
        .unwrap();
    assert_eq!(per_tenant.len(), 1);
    assert_eq!(per_tenant[0].id, empty);
}

fn page_ids(p: &ListPage) -> Vec<String> {
    p.entries.iter().map(|(id, _)| id.clone()).collect()
}

/// Pages through `tenant`'s catalog with `q` and returns every id in order.
fn list_all(store: &Store, tenant: &str, mut q: ListQuery) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let page = store.catalog().list(tenant, &q, |_| true);
        out.extend(page_ids(&page));
        match page.next {
            Some(n) => q.after = Some(n),
            None => return out,
        }
    }
}

#[test]
fn the_catalog_lists_newest_first_in_pages_and_survives_restarts_and_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(DAY)));
    let hooks = || StoreHooks {
        clock: clock.clone(),
        ..StoreHooks::default()
    };
    let store = Store::open(tmp.path(), small_config(), hooks()).unwrap();
    for i in 0..250u64 {
        clock.0.store(DAY + (i as i64 / 2) * 1000, Ordering::SeqCst); // pairs share a time
        let id = DeploymentId::new("acme", format!("build-{i:03}"));
        let log = store.log(&id, true).unwrap().unwrap();
        let mut recs = lines(0..3);
        recs[1].step = format!("step-{}", i % 3);
        log.append(recs, None).unwrap();
        if i % 5 == 0 {
            log.complete(Outcome::Failed, 3).unwrap();
        }
    }
    let all = list_all(
        &store,
        "acme",
        ListQuery {
            limit: 7,
            ..ListQuery::default()
        },
    );
    let mut want: Vec<(i64, String)> = (0..250i64)
        .map(|i| (-(i / 2), format!("build-{i:03}")))
        .collect();
    want.sort();
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    assert_eq!(all, want, "newest first, ties by id, each exactly once");
    let failed = list_all(
        &store,
        "acme",
        ListQuery {
            limit: 4,
            status: vec!["failed".into()],
            q: Some("BUILD-1".into()),
            ..ListQuery::default()
        },
    );
    assert_eq!(failed.len(), 20, "{failed:?}");
    let e = store.catalog().get("acme", "build-005").unwrap();
    assert_eq!((e.lines(), e.completion.map(|c| c.exit_code)), (3, Some(3)));
    assert_eq!(e.steps, ["build", "step-2"]);
    store.sync_catalog().unwrap();
    drop(store);

    // A restart serves the listing without opening a log.
    let store = Store::open(tmp.path(), small_config(), hooks()).unwrap();
    assert_eq!(store.open_logs(), 0);
    assert_eq!(store.catalog().len(), 250);
    assert_eq!(store.catalog().get("acme", "build-005").unwrap(), e);

    // Crash damage: the catalog's tail torn, a deployment created behind its back, one
    // directory gone: the catalog is squared with the logs at start.
    let cat = tmp.path().join("tenants/acme/catalog.log");
    let len = std::fs::metadata(&cat).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&cat).unwrap();
    f.set_len(len - 40).unwrap();
    drop(store);
    std::fs::remove_dir_all(tmp.path().join("tenants/acme/deployments/build-007")).unwrap();
    let store = Store::open(tmp.path(), small_config(), hooks()).unwrap();
    let all = list_all(
        &store,
        "acme",
        ListQuery {
            limit: 1000,
            ..ListQuery::default()
        },
    );
    assert_eq!(all.len(), 249);
    assert!(!all.contains(&"build-007".to_owned()));
    // Counts lag at most until the log is next opened.
    for id in &all {
        store
            .log(&DeploymentId::new("acme", id.clone()), false)
            .unwrap()
            .unwrap();
        assert_eq!(store.catalog().get("acme", id).unwrap().lines(), 3, "{id}");
    }
}

#[test]
fn open_logs_are_bounded_and_a_closed_log_reopens_where_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_open_logs: 10,
        ..small_config()
    };
    let store = Store::open(tmp.path(), cfg, StoreHooks::default()).unwrap();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    for round in 0..3u64 {
        for i in 0..60 {
            let id = DeploymentId::new("acme", format!("d{i}"));
            let log = store.log(&id, true).unwrap().unwrap();
            let mark = BatchId {
                source: "runner".into(),
                batch_id: round + 1,
            };
            log.append(lines(round * 10..round * 10 + 10), Some(mark.clone()))
                .unwrap();
            // A retried batch after the log was closed and reopened: stored once.
            let again = log
                .append(lines(round * 10..round * 10 + 10), Some(mark))
                .unwrap();
            assert!(again.duplicate);
            drop(log);
            assert!(store.open_logs() <= 11, "{}", store.open_logs());
        }
    }
    assert!(
        fds() <= before + 2 * 11,
        "{} descriptors open",
        fds() - before
    );
    for i in 0..60 {
        let id = DeploymentId::new("acme", format!("d{i}"));
        let got = read_all(&store, &id);
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
    }
}
