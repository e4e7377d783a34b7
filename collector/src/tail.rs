//! Following one container log file: reads complete lines from an open handle (which
//! follows the file through renames), parses and joins them, and notices truncation.
//! Rotation is decided by the caller (the path now names another inode): the old handle
//! is read to its end before the new file is started.

use crate::checkpoint::{self, FINGERPRINT_BYTES, FileId, FileState, Seen};
use crate::parser;
use crate::partial::{Joined, Joiner};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one physical line produced.
#[derive(Debug)]
pub struct Emitted {
    /// Offset just past the physical line: the batch id if a batch ends here.
    pub end: u64,
    /// Where to resume reading if a batch ends here (before any unfinished partial).
    pub resume: u64,
    pub records: Vec<Joined>,
}

/// Result of one read.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub lines: Vec<Emitted>,
    /// Bytes consumed.
    pub bytes: u64,
    /// Physical lines consumed (including partial fragments).
    pub physical: u64,
    pub parse_errors: u64,
    /// The read stopped at the file's end (nothing more right now).
    pub eof: bool,
    /// The file was truncated (copytruncate) before this read.
    pub truncated: bool,
}

/// One open log file.
pub struct FileTail {
    /// Where it was opened (after rotation the path names another file).
    pub path: PathBuf,
    file: File,
    pub state: FileState,
    offset: u64,
    buf: Vec<u8>,
    joiner: Joiner,
    pending_start: [Option<u64>; 2],
    max_line: usize,
    /// Plain lines (sidecar mode), not CRI/Docker container log lines.
    pub raw: bool,
    /// A named pipe (sidecar mode): read as it comes, never seeked or re-read; offsets
    /// count the bytes read since it was opened.
    pub fifo: bool,
}

/// Identity of the file at `path` now.
pub fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Whether `saved` is the progress of the file now at `path`: the same inode and the
/// same first bytes. An inode number alone is not enough: a file deleted with its pod
/// frees its inode, and a new pod's file can take it before the old checkpoint is
/// forgotten.
pub fn is_same_file(path: &Path, saved: &FileState) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(m) = file.metadata() else {
        return false;
    };
    let id = FileId {
        dev: m.dev(),
        ino: m.ino(),
    };
    id == saved.id && head(&file, FINGERPRINT_BYTES).is_ok_and(|h| saved.same_start(&h))
}

fn head(file: &File, n: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        let k = file.read_at(&mut buf[got..], got as u64)?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}

impl FileTail {
    /// Opens `path`, resuming from `saved` when it is the same file (same inode and the
    /// same first bytes), else from the start.
    pub fn open(
        path: &Path,
        saved: Option<&FileState>,
        max_line: usize,
    ) -> std::io::Result<FileTail> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        if std::fs::metadata(path)?.file_type().is_fifo() {
            // Non-blocking: opening waits for no writer, reading for no data.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            let m = file.metadata()?;
            let id = FileId {
                dev: m.dev(),
                ino: m.ino(),
            };
            // What a pipe held before is gone: each opening is a new source.
            let state = FileState {
                path: path.to_owned(),
                id,
                fingerprint: 0,
                fingerprint_len: 0,
                generation: saved.filter(|s| s.id == id).map_or(0, |s| s.generation + 1),
                resume: 0,
                acked: 0,
                pending: None,
                finished: false,
                done: false,
            };
            let mut t = FileTail::with(path, file, state, max_line);
            t.fifo = true;
            return Ok(t);
        }
        let file = File::open(path)?;
        let m = file.metadata()?;
        let id = FileId {
            dev: m.dev(),
            ino: m.ino(),
        };
        let head = head(&file, FINGERPRINT_BYTES)?;
        let seen = Seen {
            path,
            id,
            len: m.len(),
            head: &head,
        };
        let state = checkpoint::resume(saved, &seen);
        Ok(FileTail::with(path, file, state, max_line))
    }

    fn with(path: &Path, file: File, state: FileState, max_line: usize) -> FileTail {
        FileTail {
            path: path.to_owned(),
            file,
            offset: state.resume,
            state,
            buf: Vec::new(),
            joiner: Joiner::default(),
            pending_start: [None, None],
            max_line,
            raw: false,
            fifo: false,
        }
    }

    pub fn id(&self) -> FileId {
        self.state.id
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Goes back to the last acknowledged position (the batch in flight was lost and
    /// is rebuilt from the file).
    pub fn rewind(&mut self) {
        self.offset = self.state.resume;
        self.buf.clear();
        self.joiner = Joiner::default();
        self.pending_start = [None, None];
    }

    /// The file's last name was removed while we hold it open (its disk space is held
    /// until we close it).
    pub fn deleted(&self) -> bool {
        !self.fifo && self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Bytes in the file not read yet.
    pub fn lag(&self) -> u64 {
        if self.fifo {
            return 0;
        }
        self.file
            .metadata()
            .map(|m| m.len().saturating_sub(self.offset))
            .unwrap_or(0)
    }

    /// Bytes in the file not even read into the buffer yet (a partial line read and
    /// waiting for its end does not count): 0 when a read now would find nothing new.
    pub fn unread(&self) -> u64 {
        if self.fifo {
            return 0;
        }
        self.file
            .metadata()
            .map(|m| m.len().saturating_sub(self.offset + self.buf.len() as u64))
            .unwrap_or(0)
    }

    /// Reads up to `budget` bytes of complete lines.
    pub fn read(&mut self, budget: usize) -> std::io::Result<ReadOutcome> {
        let mut out = ReadOutcome::default();
        let len = if self.fifo {
            u64::MAX
        } else {
            self.file.metadata()?.len()
        };
        if !self.fifo {
            // copytruncate empties the file in place and its writer goes on from offset
            // 0: the file is shorter than what was read, or (grown back past it before
            // this read) no longer starts with the fingerprinted bytes.
            let head = head(&self.file, FINGERPRINT_BYTES)?;
            if len < self.offset + self.buf.len() as u64 || !self.state.same_start(&head) {
                out.truncated = true;
                self.state = self.state.next_generation(&head);
                self.offset = 0;
                self.buf.clear();
                self.joiner = Joiner::default();
                self.pending_start = [None, None];
            } else {
                self.state.extend_fingerprint(&head);
            }
        }
        let start = self.offset + self.buf.len() as u64;
        if !self.fifo && len <= start {
            // Nothing new: no read, and an idle file holds no buffer (a node follows
            // hundreds of idle containers).
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = Vec::new();
            }
            out.eof = true;
            return Ok(out);
        }
        if !self.fifo {
            self.file.seek(SeekFrom::Start(start))?;
        }
        let old = self.buf.len();
        let want = budget.max(64 * 1024);
        self.buf.resize(old + want, 0);
        let n = match self.file.read(&mut self.buf[old..]) {
            Ok(n) => n,
            // A pipe with a writer but nothing written yet.
            Err(e) if self.fifo && e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.buf.truncate(old);
                return Err(e);
            }
        };
        self.buf.truncate(old + n);
        out.eof = n < want;
        let mut pos = 0;
        let now = if self.raw { now_ns() } else { 0 };
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[pos..]) {
            let line = &self.buf[pos..pos + nl];
            let line_start = self.offset + pos as u64;
            let end = line_start + nl as u64 + 1;
            pos += nl + 1;
            out.physical += 1;
            let parsed = if self.raw {
                parser::parse_raw(line, now)
            } else if let Some(p) = parser::parse(line) {
                p
            } else {
                out.parse_errors += 1;
                continue;
            };
            let s = parsed.stream.code() as usize;
            let records = self.joiner.push(&parsed, self.max_line);
            if parsed.partial {
                self.pending_start[s].get_or_insert(line_start);
            } else {
                self.pending_start[s] = None;
            }
            let resume = self
                .pending_start
                .iter()
                .flatten()
                .copied()
                .fold(end, u64::min);
            // Replay after a restart: what the gateway acknowledged is skipped.
            if records.is_empty() || end <= self.state.acked {
                continue;
            }
            out.lines.push(Emitted {
                end,
                resume,
                records,
            });
        }
        if pos == 0 && self.buf.len() > 4 * self.max_line {
            // No newline in far more than a line's worth: not a log file we understand.
            out.parse_errors += 1;
            pos = self.buf.len();
        }
        self.buf.drain(..pos);
        self.offset += pos as u64;
        out.bytes = pos as u64;
        Ok(out)
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// stdout partials span many stderr lines, so resume points fall far behind acked
    /// ones.
    fn write_log(path: &Path) -> Vec<String> {
        let mut f = File::create(path).unwrap();
        let mut want = Vec::new();
        let t = "2026-11-23T10:00:00.000000001Z";
        for block in 0..20 {
            writeln!(f, "{t} stdout P out-{block}-a").unwrap();
            for i in 0..15 {
                writeln!(f, "{t} stderr F err-{block}-{i}").unwrap();
                want.push(format!("err-{block}-{i}"));
            }
            writeln!(f, "{t} stdout P -b").unwrap();
            writeln!(f, "{t} stdout F -c").unwrap();
            want.push(format!("out-{block}-a-b-c"));
        }
        want
    }

    fn messages(lines: &[Emitted]) -> Vec<String> {
        lines
            .iter()
            .flat_map(|e| e.records.iter().map(|r| r.message.clone()))
            .collect()
    }

    #[test]
    fn resuming_after_any_acked_line_yields_every_record_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut want = write_log(&path);
        want.sort();
        let mut t = FileTail::open(&path, None, 1 << 20).unwrap();
        let all = t.read(1 << 20).unwrap().lines;
        let mut full = messages(&all);
        full.sort();
        assert_eq!(full, want);
        // Pretend the gateway acked up to each emitted line, then the collector crashed.
        for cut in 0..all.len() {
            let mut state = t.state.clone();
            state.acked = all[cut].end;
            state.resume = all[cut].resume;
            let mut again = FileTail::open(&path, Some(&state), 1 << 20).unwrap();
            let rest = again.read(1 << 20).unwrap().lines;
            let mut got = messages(&all[..=cut]);
            got.extend(messages(&rest));
            got.sort();
            assert_eq!(got, want, "resuming after line {cut}");
            assert!(rest.iter().all(|e| e.end > state.acked));
        }
    }

    #[test]
    fn truncation_restarts_from_the_top_with_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write_log(&path);
        let mut t = FileTail::open(&path, None, 1 << 20).unwrap();
        t.read(1 << 20).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "2026-11-23T10:00:00Z stdout F after").unwrap();
        let r = t.read(1 << 20).unwrap();
        assert!(r.truncated);
        assert_eq!(t.state.generation, 1);
        assert_eq!(messages(&r.lines), ["after"]);
    }

    #[test]
    fn another_file_under_the_same_inode_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        write_log(&path);
        let mut t = FileTail::open(&path, None, 1 << 20).unwrap();
        t.read(1 << 20).unwrap();
        let mut saved = t.state.clone();
        saved.acked = 100;
        saved.resume = 100;
        saved.fingerprint ^= 1; // different first bytes: not our file
        let t2 = FileTail::open(&path, Some(&saved), 1 << 20).unwrap();
        assert_eq!(
            (t2.offset(), t2.state.acked, t2.state.generation),
            (0, 0, saved.generation + 1)
        );
    }
}
