//! The audit ledger of a log's rewrites: `redactions.ndjson` in the deployment dir,
//! append-only, one JSON object per line, each line chained to the one before it.
//!
//! ```text
//! {"block":41,"segment":1,"seqs":[[42,42]],"subject":"admin@acme","reason":"leaked token",
//!  "at":1700000000000000000,"replaced_hash":"<hex>","new_hash":"<hex>","link_hash":"<hex>",
//!  "matches":1,"prev":"<hex BLAKE3 of the line before, \"\" for the first>"}
//! ```
//!
//! One line per rewritten block version: `block` is the block's first seq, `segment`
//! its segment's, `seqs` the changed lines (ranges), `replaced_hash` the hash of the
//! version it replaced, `new_hash` the hash of the new version, `link_hash` the hash the
//! next block chains to (the original version's). Never the pattern or the matched text:
//! the pattern may be the secret itself.
//!
//! The new block's `record_hash` is the line's *authorisation hash*: BLAKE3 of the line's
//! exact bytes (no newline) with the value of `new_hash` emptied (`"new_hash":""`). The
//! block cannot commit to a line that holds the block's own hash, so the line commits to
//! the block (`new_hash`) and the block to everything else in the line (`record_hash`);
//! the next line's `prev` covers the whole line.
//!
//! The line is written and fsync'd before the segment holding the new block is swapped
//! in: a crash in between leaves a record whose `replaced_hash` is still the block's
//! hash, which names no block version and is ignored (the redaction can be retried). A
//! torn last line (no newline) was never followed by a swap: readers ignore it and the
//! next append cuts it off.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::format::{BlockHeader, Hash, Rewritten};
use crate::meta;

pub(crate) const LEDGER_FILE: &str = "redactions.ndjson";

/// One line of the ledger: who rewrote which block version, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LedgerRecord {
    /// First seq of the rewritten block.
    pub block: u64,
    /// First seq of its segment.
    pub segment: u64,
    /// The lines changed, as inclusive ranges.
    pub seqs: Vec<(u64, u64)>,
    pub subject: String,
    pub reason: String,
    /// Store wallclock, Unix ns.
    pub at: i64,
    /// Hex BLAKE3 of the block version replaced.
    pub replaced_hash: String,
    /// Hex BLAKE3 of the new block version.
    pub new_hash: String,
    /// Hex hash the next block's `prev_hash` holds (the original version's).
    pub link_hash: String,
    /// Matches replaced (1 per line when the whole message was replaced).
    pub matches: u64,
    /// Hex BLAKE3 of the previous line ("" for the first).
    pub prev: String,
}

impl LedgerRecord {
    /// The record's line: compact JSON, without the newline.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a ledger record serialises")
    }
}

/// BLAKE3 of `line` with the value of its `new_hash` field (`new_hash`) emptied: what
/// the rewritten block's `record_hash` holds. None when the field is not there exactly
/// once. (Inside a JSON string every `"` is escaped, so `"new_hash":"` can only be the
/// key itself.)
pub(crate) fn authorisation_hash(line: &str, new_hash: &str) -> Option<Hash> {
    let field = format!("\"new_hash\":\"{new_hash}\"");
    if line.matches(&field).count() != 1 {
        return None;
    }
    let blank = line.replacen(&field, "\"new_hash\":\"\"", 1);
    Some(*blake3::hash(blank.as_bytes()).as_bytes())
}

/// One complete line of the ledger.
#[derive(Debug, Clone)]
pub(crate) struct LedgerLine {
    /// 1-based line number, for messages.
    pub number: usize,
    pub record: LedgerRecord,
    /// Its authorisation hash (see [`authorisation_hash`]).
    pub auth: Option<Hash>,
}

/// Where the ledger's own chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken {
    pub number: usize,
    pub offset: u64,
    pub reason: String,
}

/// The ledger as read: its parsed lines, where its chain breaks (lines from there on
/// are not trusted), and its head (the hash the next line's `prev` holds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    pub lines: Vec<LedgerLine>,
    pub broken: Option<Broken>,
    pub head: Option<Hash>,
    /// Bytes up to the end of the last complete line (a torn tail follows).
    pub valid_len: u64,
}

/// Parses a ledger file's bytes (pure; see the module doc).
pub(crate) fn parse(bytes: &[u8]) -> Ledger {
    let mut out = Ledger::default();
    let mut offset = 0u64;
    let mut number = 0;
    let mut rest = bytes;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let raw = &rest[..nl];
        number += 1;
        let expected_prev = out.head.map(|h| meta::hex(&h)).unwrap_or_default();
        let mut fail = |reason: String| {
            if out.broken.is_none() {
                out.broken = Some(Broken {
                    number,
                    offset,
                    reason,
                });
            }
        };
        match std::str::from_utf8(raw)
            .ok()
            .and_then(|s| Some((s, serde_json::from_str::<LedgerRecord>(s).ok()?)))
        {
            Some((text, record)) => {
                if record.prev != expected_prev {
                    fail(format!(
                        "line {number} of {LEDGER_FILE} does not chain to the line before it: a line was edited, removed or inserted"
                    ));
                }
                let auth = authorisation_hash(text, &record.new_hash);
                out.lines.push(LedgerLine {
                    number,
                    record,
                    auth,
                });
            }
            None => fail(format!(
                "line {number} of {LEDGER_FILE} is not an audit record"
            )),
        }
        out.head = Some(*blake3::hash(raw).as_bytes());
        offset += nl as u64 + 1;
        rest = &rest[nl + 1..];
    }
    out.valid_len = offset;
    out
}

/// Reads the ledger of the log in `dir` (empty when there is none).
pub(crate) fn read(dir: &Path) -> Result<Ledger, StoreError> {
    let path = dir.join(LEDGER_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(parse(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

/// The end of the ledger a redaction appends to: where, and the hash to chain to.
pub(crate) struct LedgerTail {
    pub head: Option<Hash>,
    len: u64,
    torn: bool,
}

impl LedgerTail {
    /// Reads where the ledger of `dir` ends.
    pub fn open(dir: &Path) -> Result<LedgerTail, StoreError> {
        let path = dir.join(LEDGER_FILE);
        let (ledger, total) = match fs::read(&path) {
            Ok(bytes) => (parse(&bytes), bytes.len() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Ledger::default(), 0),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        Ok(LedgerTail {
            head: ledger.head,
            len: ledger.valid_len,
            torn: total > ledger.valid_len,
        })
    }

    /// Appends `lines` (each without its newline) and fsyncs the file (and the directory
    /// when the file is new); a torn last line is cut off first.
    pub fn append(&mut self, dir: &Path, lines: &[String]) -> Result<(), StoreError> {
        let path = dir.join(LEDGER_FILE);
        let io = |e| StoreError::io(format!("appending to {}", path.display()), e);
        // The first line (the file may be new): its directory entry is fsync'd too.
        let first = self.len == 0;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if self.torn {
            file.set_len(self.len).map_err(io)?;
        }
        let mut buf = Vec::new();
        for l in lines {
            debug_assert!(!l.contains('\n'));
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let written = file
            .write_all_at(&buf, self.len)
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            // Nothing after this may chain to a line that might not be there.
            let _ = file.set_len(self.len);
            return Err(io(e));
        }
        if first {
            meta::sync_dir(dir)?;
        }
        self.len += buf.len() as u64;
        self.torn = false;
        if let Some(last) = lines.last() {
            self.head = Some(*blake3::hash(last.as_bytes()).as_bytes());
        }
        Ok(())
    }
}

/// Checks a REWRITTEN block (header `h`, own hash `hash`) against the ledger and returns
/// its audited history, oldest rewrite first; `Err` says why it is not accepted.
pub(crate) fn check_rewrite<'a>(
    ledger: &'a Ledger,
    h: &BlockHeader,
    hash: &Hash,
    rw: &Rewritten,
) -> Result<Vec<&'a LedgerRecord>, String> {
    let trusted = |l: &LedgerLine| ledger.broken.as_ref().is_none_or(|b| l.number < b.number);
    let Some(pos) = ledger
        .lines
        .iter()
        .position(|l| l.auth == Some(rw.record_hash))
    else {
        return Err(format!(
            "block rewritten without a matching audit record in {LEDGER_FILE}"
        ));
    };
    let line = &ledger.lines[pos];
    if !trusted(line) {
        return Err(format!(
            "block rewritten; its audit record (line {} of {LEDGER_FILE}) comes after the line where the ledger's chain breaks",
            line.number
        ));
    }
    let rec = &line.record;
    let link = meta::hex(&rw.link_hash);
    if rec.block != h.first_seq || rec.new_hash != meta::hex(hash) || rec.link_hash != link {
        return Err(format!(
            "block rewritten; its audit record (line {} of {LEDGER_FILE}) describes another block or version",
            line.number
        ));
    }
    let mut history = vec![rec];
    let mut at = pos;
    while history.last().expect("non-empty").replaced_hash != link {
        let replaced = &history.last().expect("non-empty").replaced_hash;
        let Some(p) = ledger.lines[..at].iter().rposition(|l| {
            l.record.block == h.first_seq
                && l.record.new_hash == *replaced
                && l.record.link_hash == link
        }) else {
            return Err(format!(
                "block rewritten; the version its audit record (line {}) replaced is neither the original nor an audited rewrite",
                ledger.lines[at].number
            ));
        };
        at = p;
        history.push(&ledger.lines[p].record);
    }
    history.reverse();
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prev: &str) -> LedgerRecord {
        LedgerRecord {
            block: 41,
            segment: 1,
            seqs: vec![(42, 42)],
            subject: "admin \"quoted\"".into(),
            reason: "leaked \"new_hash\":\"x\" token".into(),
            at: 7,
            replaced_hash: "aa".into(),
            new_hash: String::new(),
            link_hash: "aa".into(),
            matches: 1,
            prev: prev.into(),
        }
    }

    #[test]
    fn the_authorisation_hash_is_the_line_with_new_hash_emptied() {
        let mut r = record("");
        let blank = r.line();
        r.new_hash = "bb".repeat(32);
        let line = r.line();
        assert_eq!(
            authorisation_hash(&line, &r.new_hash),
            Some(*blake3::hash(blank.as_bytes()).as_bytes())
        );
        // A quoted key inside a string value is escaped, so it never counts.
        assert!(r.reason.contains("\"new_hash\":\""));
        assert_eq!(line.matches("\"new_hash\":\"").count(), 1);
    }

    #[test]
    fn the_chain_names_an_edited_or_removed_line_and_a_torn_tail_is_ignored() {
        let l1 = record("").line();
        let l2 = record(&meta::hex(blake3::hash(l1.as_bytes()).as_bytes())).line();
        let l3 = record(&meta::hex(blake3::hash(l2.as_bytes()).as_bytes())).line();
        let good = format!("{l1}\n{l2}\n{l3}\n{{\"torn");
        let g = parse(good.as_bytes());
        assert_eq!((g.lines.len(), g.broken.clone()), (3, None));
        assert_eq!(g.valid_len as usize, good.len() - "{\"torn".len());
        let removed = format!("{l1}\n{l3}\n");
        assert_eq!(parse(removed.as_bytes()).broken.unwrap().number, 2);
        let edited = format!("{l1}\n{}\n{l3}\n", l2.replace("leaked", "LEAKED"));
        assert_eq!(parse(edited.as_bytes()).broken.unwrap().number, 3);
        let garbage = format!("{l1}\nnot json\n");
        assert_eq!(parse(garbage.as_bytes()).broken.unwrap().number, 2);
    }
}
