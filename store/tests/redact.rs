//! Audited hotfixes on real files: redaction masks a leaked secret in every copy of a
//! log (local segments, their indexes, object storage) while seqs stay and `verify`
//! accepts the audited rewrite; any unaudited change still fails verify; a crash
//! between the audit record and the swap leaves a log that verifies; deletion removes
//! everything of a deployment.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use logstream_model::{Filter, LogRecord};
use logstream_store::{
    Clock, DeploymentId, DeploymentLog, Direction, HOTFIX_DETECTOR, Outcome, RedactRequest, Remote,
    RemoteError, RemoteObject, Store, StoreConfig, StoreError, StoreHooks, compact, verify_dir,
};
use parking_lot::Mutex;
use regex::Regex;

const SECRET: &str = "ghp_S3cr3tT0k3nV4lu3XyZ";
const SECRET_RE: &str = "ghp_[A-Za-z0-9]+";
const MASK: &str = "[REDACTED]";

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// Object storage in memory.
#[derive(Default)]
struct MemRemote(Mutex<BTreeMap<String, Vec<u8>>>);

impl Remote for MemRemote {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), RemoteError> {
        self.0.lock().insert(key.to_owned(), data.to_vec());
        Ok(())
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, RemoteError> {
        self.0.lock().get(key).cloned().ok_or(RemoteError::NotFound)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, RemoteError> {
        let all = self.get(key)?;
        all.get(range.start as usize..range.end as usize)
            .map(<[u8]>::to_vec)
            .ok_or(RemoteError::Unavailable("range out of bounds".into()))
    }
    fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.0.lock().remove(key);
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, RemoteError> {
        Ok(self
            .0
            .lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| RemoteObject {
                key: k.clone(),
                size: v.len() as u64,
                last_modified: 0,
            })
            .collect())
    }
    fn describe(&self) -> String {
        "mem://".into()
    }
}

fn config() -> StoreConfig {
    // Several blocks per segment, several segments per log.
    StoreConfig {
        segment_bytes: 4096,
        segment_blocks: 4,
        block_records: 10,
        ..StoreConfig::default()
    }
}

fn hooks(remote: Option<Arc<MemRemote>>) -> StoreHooks {
    StoreHooks {
        clock: Arc::new(TestClock(AtomicI64::new(1_000_000))),
        remote: remote.map(|r| r as Arc<dyn Remote>),
        ..StoreHooks::default()
    }
}

fn open(root: &Path, remote: Option<Arc<MemRemote>>) -> Store {
    Store::open(root, config(), hooks(remote)).unwrap()
}

/// Lines carrying the secret (line 120 also in a metadata value).
const LEAKY: [u64; 5] = [7, 55, 120, 190, 233];

fn line(i: u64) -> LogRecord {
    let message = if LEAKY.contains(&i) {
        format!("line {i} export GITHUB_TOKEN={SECRET} done")
    } else {
        format!("line {i} {}", "compiling crate ".repeat((i % 5) as usize))
    };
    let mut r = LogRecord::new(
        1_000 + i as i64,
        ["build", "test"][(i % 2) as usize],
        message,
    );
    r.metadata.insert("pod".into(), format!("p-{}", i % 3));
    if i == 120 {
        r.metadata.insert("env".into(), format!("TOKEN={SECRET}"));
    }
    r
}

/// Appends lines `from..to` (seqs `from..to` when the log held `from - 1`) in batches.
fn fill(log: &DeploymentLog, seqs: Range<u64>) {
    let all: Vec<u64> = seqs.collect();
    for chunk in all.chunks(15) {
        let o = log
            .append(chunk.iter().map(|&i| line(i)).collect(), None)
            .unwrap();
        assert_eq!(o.first_seq, chunk[0]);
    }
}

fn read_all(log: &DeploymentLog) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = log
            .read(Direction::Forward, from, &Filter::default(), 37)
            .unwrap();
        out.extend(page.records);
        from = page.scanned_to;
        if page.exhausted {
            return out;
        }
    }
}

fn log_dir(root: &Path, id: &DeploymentId) -> PathBuf {
    root.join("tenants")
        .join(&id.tenant)
        .join("deployments")
        .join(&id.deployment)
}

fn by_regex() -> RedactRequest {
    request(None, Some(SECRET_RE))
}

fn request(seqs: Option<(u64, u64)>, pattern: Option<&str>) -> RedactRequest {
    RedactRequest {
        seqs,
        pattern: pattern.map(|p| Regex::new(p).unwrap()),
        replacement: MASK.into(),
        subject: "alice@acme".into(),
        reason: "INC-42: token leaked in build output".into(),
    }
}

/// The (offset, len) of every block of a segment file's bytes.
fn blocks(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 16;
    while off + 12 <= data.len() {
        let hl = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap()) as usize;
        let pl = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
        out.push((off, hl + pl));
        off += hl + pl;
    }
    out
}

/// Whether `needle` is in `data`: its raw bytes, or (a segment) a decompressed payload.
fn holds(data: &[u8], needle: &[u8], segment: bool) -> bool {
    let raw = data.windows(needle.len()).any(|w| w == needle);
    raw || (segment
        && data.starts_with(b"LSSEG")
        && blocks(data).into_iter().any(|(off, len)| {
            let hl = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap()) as usize;
            let payload = &data[off + hl..off + len];
            zstd::decode_all(payload)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        }))
}

/// Every file under `root` and every object holding `needle` (raw or decompressed).
fn leaks(root: &Path, remote: Option<&MemRemote>, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if holds(&fs::read(&p).unwrap(), needle.as_bytes(), true) {
                out.push(p.display().to_string());
            }
        }
    }
    if let Some(r) = remote {
        for (k, v) in r.0.lock().iter() {
            if holds(v, needle.as_bytes(), true) {
                out.push(format!("object {k}"));
            }
        }
    }
    out
}

/// The line as a redaction `req` leaves it.
fn masked(i: u64, req: &RedactRequest) -> LogRecord {
    let mut r = line(i);
    r.seq = i;
    if req.seqs.is_some_and(|(a, b)| !(a..=b).contains(&i)) {
        return r;
    }
    let mut n = 0;
    match &req.pattern {
        None => {
            // Whole lines go whole: their metadata too (it can hold what the line held),
            // but for the store's own split marker.
            r.message = MASK.into();
            for (k, v) in r.metadata.iter_mut() {
                if k != "split" {
                    *v = MASK.into();
                }
            }
            n = 1;
        }
        Some(re) => {
            n += re.find_iter(&r.message).count();
            r.message = re.replace_all(&r.message, MASK).into_owned();
            for v in r.metadata.values_mut() {
                n += re.find_iter(v).count();
                *v = re.replace_all(v, MASK).into_owned();
            }
        }
    }
    if n > 0 {
        r.redaction.add(HOTFIX_DETECTOR, n as u32);
    }
    r
}

fn assert_lines(got: &[LogRecord], want: impl Fn(u64) -> LogRecord, n: u64) {
    assert_eq!(got.len() as u64, n, "every line is still there");
    for (i, r) in got.iter().enumerate() {
        let w = want(i as u64 + 1);
        assert_eq!(r.seq, w.seq, "seqs stay");
        assert_eq!(
            (&r.message, &r.metadata, &r.redaction),
            (&w.message, &w.metadata, &w.redaction),
            "line {}",
            r.seq
        );
        assert_eq!((r.ts, &r.step), (w.ts, &w.step));
    }
}

#[test]
fn masking_by_seqs_by_regex_and_by_both_keeps_seqs_verifies_and_lists_the_rewrite() {
    let cases = [
        ("seqs", request(Some((50, 60)), None)),
        ("regex", by_regex()),
        ("both", request(Some((100, 200)), Some(SECRET_RE))),
    ];
    for running in [false, true] {
        for (name, req) in &cases {
            let tmp = tempfile::tempdir().unwrap();
            let id = DeploymentId::new("acme", format!("{name}-{running}"));
            let dir = log_dir(tmp.path(), &id);
            let n = 250;
            {
                let store = open(tmp.path(), None);
                let log = store.log(&id, true).unwrap().unwrap();
                fill(&log, 1..n + 1);
                if !running {
                    log.complete(Outcome::Failed, 1).unwrap();
                }
                assert!(log.stats().segments >= 4, "several segments");
                assert!(
                    !leaks(tmp.path(), None, SECRET).is_empty(),
                    "the secret is found before"
                );

                let out = store.redact(&id, req).unwrap();
                let want: Vec<u64> = (1..=n)
                    .filter(|&i| {
                        masked(i, req) != {
                            let mut r = line(i);
                            r.seq = i;
                            r
                        }
                    })
                    .collect();
                assert_eq!(out.lines, want.len() as u64, "{name}");
                assert_eq!(
                    out.seqs.iter().map(|(a, b)| b - a + 1).sum::<u64>(),
                    out.lines
                );
                assert!(out.blocks >= 2, "{name}: several blocks rewritten");
                assert_lines(&read_all(&log), |i| masked(i, req), n);

                let report = verify_dir(&dir).unwrap();
                assert!(report.is_clean(), "{name}: {:?}", report.first_bad);
                assert_eq!(report.rewrites.len() as u64, out.blocks);
                assert!(
                    report
                        .rewrites
                        .iter()
                        .all(|r| r.subject == "alice@acme" && r.reason.starts_with("INC-42"))
                );
                let listed: u64 = report
                    .rewrites
                    .iter()
                    .flat_map(|r| &r.seqs)
                    .map(|(a, b)| b - a + 1)
                    .sum();
                assert_eq!(listed, out.lines);
                if *name == "regex" {
                    assert_eq!(out.matches, LEAKY.len() as u64 + 1, "one in metadata");
                    assert_eq!(leaks(tmp.path(), None, SECRET), Vec::<String>::new());
                }
                // The pattern itself is never written (it may be the secret).
                let ledger = fs::read_to_string(dir.join("redactions.ndjson")).unwrap();
                assert!(!ledger.contains("ghp_"), "{ledger}");
                assert_eq!(ledger.lines().count() as u64, out.blocks);
                if running {
                    fill(&log, n + 1..n + 31);
                    assert!(verify_dir(&dir).unwrap().is_clean());
                }
            }
            // Recovery after a reopen: the masked log reads, appends and verifies.
            let store = open(tmp.path(), None);
            let log = store.log(&id, false).unwrap().unwrap();
            let total = if running { n + 30 } else { n };
            if running {
                fill(&log, total + 1..total + 11);
            }
            let got = read_all(&log);
            assert_lines(&got[..n as usize], |i| masked(i, req), n);
            let report = verify_dir(&dir).unwrap();
            assert!(
                report.is_clean(),
                "{name} {running}: {:?}",
                report.first_bad
            );
            assert_eq!(report.last_seq, got.len() as u64);
        }
    }
}

#[test]
fn a_later_append_chains_after_a_rewritten_last_block_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "active");
    let dir = log_dir(tmp.path(), &id);
    {
        let store = open(tmp.path(), None);
        let log = store.log(&id, true).unwrap().unwrap();
        fill(&log, 1..233);
        let o = log.append(vec![line(233)], None).unwrap();
        assert_eq!(o.last_seq, 233);
        let head = verify_dir(&dir).unwrap().head;
        // The last line of the active segment's last block.
        let out = store.redact(&id, &request(Some((233, 233)), None)).unwrap();
        assert_eq!((out.lines, out.blocks), (1, 1));
        let report = verify_dir(&dir).unwrap();
        assert!(report.is_clean(), "{:?}", report.first_bad);
        assert_eq!(
            report.head, head,
            "an audited rewrite does not move the head"
        );
        fill(&log, 234..260);
        let report = verify_dir(&dir).unwrap();
        assert!(report.is_clean(), "{:?}", report.first_bad);
        assert_eq!(report.last_seq, 259);
    }
    let store = open(tmp.path(), None);
    let log = store.log(&id, false).unwrap().unwrap();
    fill(&log, 260..300);
    let got = read_all(&log);
    assert_eq!(got.len(), 299);
    assert_eq!(got[232].message, MASK);
    assert_eq!(got[233].message, line(234).message);
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(report.rewrites.len(), 1);
}

#[test]
fn redacting_a_block_twice_verifies_and_lists_both_rewrites_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "twice");
    let dir = log_dir(tmp.path(), &id);
    let store = open(tmp.path(), None);
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..100);
    log.complete(Outcome::Succeeded, 0).unwrap();
    let first = store
        .redact(&id, &request(Some((55, 55)), Some("GITHUB_TOKEN")))
        .unwrap();
    assert_eq!((first.lines, first.matches), (1, 1));
    let mut second = request(Some((51, 56)), None);
    second.reason = "INC-43: the whole lines".into();
    let out = store.redact(&id, &second).unwrap();
    assert_eq!(out.lines, 6);
    assert_eq!(out.ledger_head, verify_dir(&dir).unwrap().ledger_head);
    assert_ne!(out.ledger_head, first.ledger_head);
    // The same again changes nothing (the lines are masked already).
    assert_eq!(store.redact(&id, &second).unwrap().lines, 0);
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    let of_55: Vec<&str> = report
        .rewrites
        .iter()
        .filter(|r| r.seqs.iter().any(|(a, b)| (*a..=*b).contains(&55)))
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(
        of_55,
        [
            "INC-42: token leaked in build output",
            "INC-43: the whole lines"
        ]
    );
    assert_eq!(read_all(&log)[54].message, MASK);
    drop(log);
    drop(store);
    let store = open(tmp.path(), None);
    assert!(store.verify(&id).unwrap().is_clean());
}

/// A deployment with a redaction applied twice (two ledger lines at least) and its dir.
fn redacted_twice(root: &Path) -> (DeploymentId, PathBuf) {
    let id = DeploymentId::new("acme", "tamper");
    let store = open(root, None);
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..150);
    log.complete(Outcome::Succeeded, 0).unwrap();
    store.redact(&id, &request(Some((7, 7)), None)).unwrap();
    store.redact(&id, &request(None, Some(SECRET_RE))).unwrap();
    let dir = log_dir(root, &id);
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    (id, dir)
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

/// Whether the block at `off` of a segment is a REWRITTEN one (its flags byte).
fn rewritten(data: &[u8], off: usize) -> bool {
    data[off + 51] & 1 == 1
}

#[test]
fn a_byte_flipped_by_hand_elsewhere_fails_verify_and_names_that_block() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = redacted_twice(tmp.path());
    for want_rewritten in [false, true] {
        let segs = seg_files(&dir);
        let (seg, off) = segs
            .iter()
            .rev()
            .find_map(|s| {
                let data = fs::read(s).unwrap();
                blocks(&data)
                    .into_iter()
                    .find(|(off, _)| rewritten(&data, *off) == want_rewritten)
                    .map(|(off, _)| (s.clone(), off))
            })
            .unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8; 1];
        let at = off as u64 + 40;
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
        let bad = verify_dir(&dir).unwrap().first_bad.expect("detected");
        assert_eq!((bad.segment, bad.offset), (seg.clone(), off as u64));
        f.write_all_at(&b, at).unwrap();
        assert!(verify_dir(&dir).unwrap().is_clean());
    }
}

#[test]
fn a_rewritten_block_altered_with_a_valid_crc_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = redacted_twice(tmp.path());
    let seg = seg_files(&dir)
        .into_iter()
        .find(|s| {
            let d = fs::read(s).unwrap();
            blocks(&d).iter().any(|(o, _)| rewritten(&d, *o))
        })
        .unwrap();
    let mut data = fs::read(&seg).unwrap();
    let (off, len) = blocks(&data)
        .into_iter()
        .find(|(o, _)| rewritten(&data, *o))
        .unwrap();
    // A different written_at, and a CRC made to match.
    data[off + 40] ^= 1;
    let hl = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&data[off..off + hl - 4]),
        &data[off + hl..off + len],
    );
    data[off + hl - 4..off + hl].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, &data).unwrap();
    let bad = verify_dir(&dir).unwrap().first_bad.expect("detected");
    assert_eq!((bad.segment, bad.offset), (seg, off as u64));
    assert!(bad.reason.contains("audit record"), "{}", bad.reason);
}

#[test]
fn a_rewritten_block_whose_audit_record_is_edited_or_removed_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = redacted_twice(tmp.path());
    let path = dir.join("redactions.ndjson");
    let original = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 3);
    let last = lines.len() - 1;
    let joined = |ls: Vec<String>| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let edit = |i: usize| {
        let mut ls: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        ls[i] = ls[i].replace("INC-42", "INC-99");
        joined(ls)
    };
    let remove = |i: usize| {
        let mut ls: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        ls.remove(i);
        joined(ls)
    };
    for (what, ledger) in [
        ("last line edited", edit(last)),
        ("first line edited", edit(0)),
        ("last line removed", remove(last)),
        ("first line removed", remove(0)),
        ("ledger removed", String::new()),
    ] {
        fs::write(&path, ledger).unwrap();
        let report = verify_dir(&dir).unwrap();
        let bad = report
            .first_bad
            .unwrap_or_else(|| panic!("{what}: not detected"));
        assert!(
            bad.reason.contains("audit record") || bad.reason.contains("chain"),
            "{what}: {}",
            bad.reason
        );
    }
    fs::write(&path, &original).unwrap();
    assert!(verify_dir(&dir).unwrap().is_clean());
}

#[test]
fn a_crash_between_the_audit_record_and_the_swap_verifies_clean_and_a_retry_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "crash");
    let dir = log_dir(tmp.path(), &id);
    {
        let store = open(tmp.path(), None);
        let log = store.log(&id, true).unwrap().unwrap();
        fill(&log, 1..250);
        store
            .hooks()
            .faults
            .arm("redact_swap", std::io::ErrorKind::Other);
        let e = store.redact(&id, &by_regex()).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        // Written, not applied: the record names a version that never was.
        let ledger = fs::read_to_string(dir.join("redactions.ndjson")).unwrap();
        assert!(ledger.lines().count() >= 1);
        let report = verify_dir(&dir).unwrap();
        assert!(report.is_clean(), "{:?}", report.first_bad);
        assert!(report.rewrites.is_empty());
        assert!(read_all(&log)[6].message.contains(SECRET));
    }
    // After a restart the retry applies every rewrite.
    let store = open(tmp.path(), None);
    assert!(verify_dir(&dir).unwrap().is_clean());
    let out = store.redact(&id, &by_regex()).unwrap();
    assert_eq!(out.lines, LEAKY.len() as u64);
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(report.rewrites.len() as u64, out.blocks);
    assert_eq!(leaks(tmp.path(), None, SECRET), Vec::<String>::new());
    let log = store.log(&id, false).unwrap().unwrap();
    fill(&log, 250..260);
    assert!(verify_dir(&dir).unwrap().is_clean());
}

#[test]
fn offloaded_segments_are_redacted_in_object_storage_and_the_manifest_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Arc::new(MemRemote::default());
    let id = DeploymentId::new("acme", "offloaded");
    {
        let store = open(tmp.path(), Some(remote.clone()));
        let log = store.log(&id, true).unwrap().unwrap();
        // Lines 1..=100 only in object storage, 101..=200 uploaded and local, the rest
        // local only (sealed or active).
        fill(&log, 1..101);
        let pass = store.offload(|_| true);
        assert!(pass.error.is_none() && pass.uploaded > 0, "{pass:?}");
        assert!(store.evict(0) > 0);
        fill(&log, 101..201);
        assert!(store.offload(|_| true).uploaded > 0);
        fill(&log, 201..250);
        assert!(!leaks(tmp.path(), Some(&remote), SECRET).is_empty());
        let local_before = seg_files(&log_dir(tmp.path(), &id)).len();

        let out = store.redact(&id, &by_regex()).unwrap();
        assert_eq!(out.lines, LEAKY.len() as u64);
        assert_eq!(
            seg_files(&log_dir(tmp.path(), &id)).len(),
            local_before,
            "evicted segments stay evicted"
        );
        assert_eq!(
            leaks(tmp.path(), Some(&remote), SECRET),
            Vec::<String>::new()
        );
        assert_lines(&read_all(&log), |i| masked(i, &by_regex()), 249);
        let report = store.verify(&id).unwrap();
        assert!(report.is_clean(), "{:?}", report.first_bad);
        assert_eq!(report.rewrites.len() as u64, out.blocks);
        // Only what the manifest names is left in object storage.
        let manifest: serde_json::Value =
            serde_json::from_slice(&remote.get("tenants/acme/offloaded/manifest.json").unwrap())
                .unwrap();
        let mut named = vec!["tenants/acme/offloaded/manifest.json".to_owned()];
        for s in manifest["segments"].as_array().unwrap() {
            let stem = format!(
                "tenants/acme/offloaded/{:020}-{}",
                s["first_seq"].as_u64().unwrap(),
                &s["seg_blake3"].as_str().unwrap()[..16]
            );
            named.extend([format!("{stem}.seg"), format!("{stem}.idx")]);
        }
        let ledger = &manifest["ledger"]["blake3"];
        named.push(format!(
            "tenants/acme/offloaded/redactions-{}.ndjson",
            &ledger.as_str().expect("the ledger is in object storage")[..16]
        ));
        named.sort();
        let stored: Vec<String> = remote.0.lock().keys().cloned().collect();
        assert_eq!(stored, named, "the unredacted objects are deleted");
        // Later segments upload and chain on.
        fill(&log, 250..300);
        log.complete(Outcome::Succeeded, 0).unwrap();
        assert!(store.offload(|_| true).error.is_none());
        store.evict(0);
        assert!(store.verify(&id).unwrap().is_clean());
    }
    let store = open(tmp.path(), Some(remote.clone()));
    let log = store.log(&id, false).unwrap().unwrap();
    let got = read_all(&log);
    assert_lines(&got, |i| masked(i, &by_regex()), 299);
    let report = store.verify(&id).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(
        leaks(tmp.path(), Some(&remote), SECRET),
        Vec::<String>::new()
    );
    assert_eq!(
        store.sweep(std::time::Duration::ZERO).unwrap(),
        0,
        "no orphan"
    );

    // A replica adopting the log from its manifest (Kafka mode) verifies the rewrites.
    let other = tempfile::tempdir().unwrap();
    let adopter = Store::open(
        other.path(),
        config(),
        StoreHooks {
            adopt_remote: true,
            ..hooks(Some(remote.clone()))
        },
    )
    .unwrap();
    let adopted = adopter.log(&id, true).unwrap().unwrap();
    assert_lines(&read_all(&adopted), |i| masked(i, &by_regex()), 299);
    let there = adopter.verify(&id).unwrap();
    assert!(there.is_clean(), "{:?}", there.first_bad);
    assert_eq!(there.rewrites, report.rewrites);
    assert_eq!(there.ledger_head, report.ledger_head);
}

#[test]
fn delete_removes_the_log_its_objects_and_its_entry_and_a_racing_append_cannot_recreate_it() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Arc::new(MemRemote::default());
    let id = DeploymentId::new("acme", "doomed");
    let other = DeploymentId::new("acme", "kept");
    let store = open(tmp.path(), Some(remote.clone()));
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..120);
    let kept = store.log(&other, true).unwrap().unwrap();
    fill(&kept, 1..60);
    assert!(store.offload(|_| true).uploaded > 0);
    store.evict(0);
    assert!(store.catalog().get("acme", "doomed").is_some());

    store.delete(&id).unwrap();
    assert!(!log_dir(tmp.path(), &id).exists());
    let left: Vec<String> = fs::read_dir(log_dir(tmp.path(), &other).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["kept"], "nothing of it is left beside the others");
    assert!(remote.list("tenants/acme/doomed/").unwrap().is_empty());
    assert!(!remote.list("tenants/acme/kept/").unwrap().is_empty());
    assert!(store.catalog().get("acme", "doomed").is_none());
    assert_eq!(store.deployments("acme").unwrap(), ["kept"]);
    // A handle taken before cannot write into the deleted log.
    assert!(matches!(
        log.append(vec![line(1)], None),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        log.complete(Outcome::Succeeded, 0),
        Err(StoreError::NotFound)
    ));
    assert!(!log_dir(tmp.path(), &id).exists(), "not recreated");
    assert!(store.log(&id, false).unwrap().is_none());
    assert!(matches!(store.delete(&id), Err(StoreError::NotFound)));
    // The other deployment is untouched.
    assert_eq!(read_all(&kept).len(), 59);
    assert!(store.verify(&other).unwrap().is_clean());
    // A later append starts a new log under the same id.
    let again = store.log(&id, true).unwrap().unwrap();
    assert_eq!(again.append(vec![line(1)], None).unwrap().first_seq, 1);
    drop((log, again, kept));
    drop(store);
    let store = open(tmp.path(), Some(remote));
    assert_eq!(store.deployments("acme").unwrap(), ["doomed", "kept"]);
}

#[test]
fn appends_racing_a_delete_either_land_before_it_or_fail_and_never_recreate_the_log() {
    for round in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(open(tmp.path(), None));
        let id = DeploymentId::new("acme", format!("race-{round}"));
        fill(&store.log(&id, true).unwrap().unwrap(), 1..30);
        let stop = Arc::new(AtomicBool::new(false));
        let appender = {
            let (store, id, stop) = (store.clone(), id.clone(), stop.clone());
            std::thread::spawn(move || {
                // Looks the log up and appends, until an append answers NotFound.
                while !stop.load(Ordering::Relaxed) {
                    let r = store
                        .log(&id, true)
                        .and_then(|l| l.expect("created").append(vec![line(1)], None));
                    match r {
                        Ok(_) => {}
                        Err(StoreError::NotFound) => return true,
                        Err(e) => panic!("{e}"),
                    }
                }
                false
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        store.delete(&id).unwrap();
        stop.store(true, Ordering::Relaxed);
        let raced = appender.join().unwrap();
        let dir = log_dir(tmp.path(), &id);
        if raced {
            // The append that raced the deletion failed and created nothing.
            assert!(!dir.exists(), "round {round}: recreated by a racing append");
        } else if dir.exists() {
            // Appends after `delete` returned: a new log, from seq 1.
            assert!(verify_dir(&dir).unwrap().is_clean());
        }
    }
}

#[test]
fn compaction_refuses_a_log_with_audited_rewrites() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), None);
    let id = DeploymentId::new("acme", "compacted");
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..100);
    log.complete(Outcome::Succeeded, 0).unwrap();
    store.redact(&id, &by_regex()).unwrap();
    drop(log);
    let e = compact(&store, &id).unwrap_err();
    assert!(e.to_string().contains("audited rewrites"), "{e}");
    assert!(verify_dir(&log_dir(tmp.path(), &id)).unwrap().is_clean());
}

#[test]
fn reads_and_appends_during_redactions_never_see_a_torn_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open(tmp.path(), None));
    // Reads dawdle between taking a segment's index and opening its file, where a
    // swap would hurt them.
    store
        .hooks()
        .faults
        .pause_at("read_open", std::time::Duration::from_millis(1));
    let id = DeploymentId::new("acme", "busy");
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..200);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = read_all(&log);
                for (i, r) in got.iter().enumerate() {
                    assert_eq!(r.seq, i as u64 + 1);
                    let want = line(r.seq);
                    assert!(
                        r.message == want.message || r.message == MASK,
                        "seq {}: {}",
                        r.seq,
                        r.message
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    let appender = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 200;
            while !stop.load(Ordering::Relaxed) && next < 600 {
                log.append(vec![line(next)], None).unwrap();
                next += 1;
            }
        })
    };
    for k in 0..25u64 {
        let seq = 1 + (k * 37) % 199;
        store
            .redact(&id, &request(Some((seq, seq + 3)), None))
            .unwrap();
        // The active segment too (its last lines).
        let last = log.durable_seq();
        store
            .redact(&id, &request(Some((last, last)), None))
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    assert!(reader.join().unwrap() > 0);
    let report = verify_dir(&log_dir(tmp.path(), &id)).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(report.last_seq, log.durable_seq());
}

#[test]
fn a_torn_ledger_line_is_ignored_by_verify_and_cut_off_by_the_next_redaction() {
    let tmp = tempfile::tempdir().unwrap();
    let id = DeploymentId::new("acme", "torn");
    let dir = log_dir(tmp.path(), &id);
    let store = open(tmp.path(), None);
    let log = store.log(&id, true).unwrap().unwrap();
    fill(&log, 1..100);
    store.redact(&id, &request(Some((7, 7)), None)).unwrap();
    // A crash in the middle of the next ledger write (never followed by a swap).
    let path = dir.join("redactions.ndjson");
    let whole = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("{whole}{{\"block\":51,\"segm")).unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(report.rewrites.len(), 1);
    store.redact(&id, &by_regex()).unwrap();
    let after = fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&whole) && !after.contains("segm\n") && after.ends_with('\n'));
    let report = verify_dir(&dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.first_bad);
    assert_eq!(report.rewrites.len(), 2, "7, then 55");
}

#[test]
fn what_an_interrupted_delete_or_compaction_left_is_finished_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ["gone", "compacting", "swapping"].map(|d| DeploymentId::new("acme", d));
    {
        let store = open(tmp.path(), None);
        for id in &ids {
            let log = store.log(id, true).unwrap().unwrap();
            fill(&log, 1..20);
            log.complete(Outcome::Succeeded, 0).unwrap();
        }
    }
    let deployments = log_dir(tmp.path(), &ids[0]).parent().unwrap().to_owned();
    // A delete cut short after its rename, a compaction before its swap, and one
    // between its two renames.
    fs::rename(deployments.join("gone"), deployments.join(".gone.deleted")).unwrap();
    let copy = |from: &str, to: &str| {
        fs::create_dir(deployments.join(to)).unwrap();
        for e in fs::read_dir(deployments.join(from)).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), deployments.join(to).join(e.file_name())).unwrap();
        }
    };
    copy("compacting", ".compacting.compact");
    copy("swapping", ".swapping.compact");
    fs::rename(
        deployments.join("swapping"),
        deployments.join(".swapping.old"),
    )
    .unwrap();

    let store = open(tmp.path(), None);
    let mut left: Vec<String> = fs::read_dir(&deployments)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["compacting", "swapping"]);
    assert_eq!(
        store.deployments("acme").unwrap(),
        ["compacting", "swapping"]
    );
    for id in &ids[1..] {
        assert_eq!(read_all(&store.log(id, false).unwrap().unwrap()).len(), 19);
    }
}
