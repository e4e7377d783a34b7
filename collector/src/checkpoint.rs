//! Where each file was read up to, written atomically (temp file, fsync, rename, fsync
//! of the directory), so a restarted collector resumes exactly.
//!
//! Per file (keyed by device, inode and a fingerprint of its first bytes):
//! - `resume`: the offset to read from again (at or before the first fragment of any
//!   partial line not yet complete, so joins are rebuilt);
//! - `acked`: the batch id the gateway last acknowledged, which is the end offset of the
//!   last physical line of that batch; records ending at or before it are skipped on
//!   replay;
//! - `pending`: the id of a batch sent but not yet acknowledged (written before it is
//!   sent). After a crash the first batch is rebuilt exactly as (`acked`, `pending`], so
//!   the gateway's idempotency (same source, same id) stores it once whether or not it
//!   arrived before the crash.
//! - `generation`: bumped on truncation (copytruncate), part of the source name, so batch
//!   ids stay increasing per source. The fingerprint is taken again from the new
//!   generation's first bytes (and checked on every read, so a file grown back past the
//!   read offset is noticed too), so a restart resumes in that generation: see
//!   [`resume`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file's identity: it survives renames, not truncation or replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Progress in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Where the file was when last seen (informational; identity is `id` + fingerprint).
    pub path: PathBuf,
    pub id: FileId,
    /// CRC32C of the first `fingerprint_len` bytes.
    pub fingerprint: u32,
    pub fingerprint_len: u32,
    pub generation: u32,
    pub resume: u64,
    pub acked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Deployment completion already sent for this file's pod.
    #[serde(default)]
    pub finished: bool,
    /// Read to its end and let go after rotation: never read again.
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<FileState>,
}

/// Bytes of a file's start that identify it.
pub const FINGERPRINT_BYTES: usize = 256;

/// Fingerprint of a file's first bytes (up to [`FINGERPRINT_BYTES`]).
pub fn fingerprint(head: &[u8]) -> (u32, u32) {
    let n = head.len().min(FINGERPRINT_BYTES);
    (crc32c::crc32c(&head[..n]), n as u32)
}

impl FileState {
    /// Whether `head` (the file's first bytes now, up to [`FINGERPRINT_BYTES`]) starts
    /// with the bytes this state was fingerprinted on. A file that is only appended to
    /// always does; one emptied in place (copytruncate) or replaced under the same inode
    /// does not once it holds other bytes, nor while it is shorter than they were.
    pub fn same_start(&self, head: &[u8]) -> bool {
        let n = self.fingerprint_len as usize;
        head.len() >= n && crc32c::crc32c(&head[..n]) == self.fingerprint
    }

    /// Takes in more of the file's first bytes when it was fingerprinted short (only
    /// when it still starts with those: a fingerprint always covers every byte read
    /// below [`FINGERPRINT_BYTES`], so a rewritten start is told apart after a restart).
    pub fn extend_fingerprint(&mut self, head: &[u8]) {
        if head.len() > self.fingerprint_len as usize && self.same_start(head) {
            (self.fingerprint, self.fingerprint_len) = fingerprint(head);
        }
    }

    /// The same inode holds other bytes from offset 0 now (copytruncate emptied it, or
    /// another file took the inode): the next generation, read from the start and
    /// fingerprinted by what it starts with now (`head`), so that a restart resumes in
    /// this generation, not in the one before and not as an unknown file from 0 again.
    /// Batch ids start again from 0; the source names the generation, so the gateway's
    /// ids stay increasing per source.
    pub fn next_generation(&self, head: &[u8]) -> FileState {
        let (fp, n) = fingerprint(head);
        FileState {
            fingerprint: fp,
            fingerprint_len: n,
            generation: self.generation + 1,
            resume: 0,
            acked: 0,
            pending: None,
            done: false,
            ..self.clone()
        }
    }
}

/// What is seen of a file as it is opened.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub path: &'a Path,
    pub id: FileId,
    pub len: u64,
    /// Its first bytes (up to [`FINGERPRINT_BYTES`]).
    pub head: &'a [u8],
}

/// Where to read a file from as it is opened: `saved` goes on when it describes this
/// very file in this generation (same inode, it starts with the fingerprinted bytes and
/// holds at least the bytes up to the resume point); otherwise the file is read from
/// its start, as a generation after any `saved` had under this inode (copytruncated
/// while the collector was down, or another file under a reused inode).
pub fn resume(saved: Option<&FileState>, seen: &Seen<'_>) -> FileState {
    let saved = saved.filter(|s| s.id == seen.id);
    match saved {
        Some(s) if s.same_start(seen.head) && seen.len >= s.resume => {
            let mut st = FileState {
                path: seen.path.to_owned(),
                ..s.clone()
            };
            st.extend_fingerprint(seen.head);
            st
        }
        Some(s) => FileState {
            path: seen.path.to_owned(),
            finished: false,
            ..s.next_generation(seen.head)
        },
        None => {
            let (fp, n) = fingerprint(seen.head);
            FileState {
                path: seen.path.to_owned(),
                id: seen.id,
                fingerprint: fp,
                fingerprint_len: n,
                generation: 0,
                resume: 0,
                acked: 0,
                pending: None,
                finished: false,
                done: false,
            }
        }
    }
}

/// The checkpoint file.
pub struct Checkpoints {
    path: PathBuf,
    pub files: BTreeMap<FileId, FileState>,
}

impl Checkpoints {
    /// Loads `<state_dir>/checkpoints.json` (absent: empty). A file that does not parse is
    /// an error naming it: resuming from a guess could duplicate or lose lines.
    pub fn load(state_dir: &Path) -> Result<Checkpoints, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("--state-dir {}: {e}", state_dir.display()))?;
        let path = state_dir.join("checkpoints.json");
        let files = match std::fs::read(&path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is damaged ({e}); move it away to start over from the files' current ends",
                        path.display()
                    )
                })?;
                if d.version != 1 {
                    return Err(format!(
                        "{} has version {}, this collector reads version 1",
                        path.display(),
                        d.version
                    ));
                }
                d.files.into_iter().map(|f| (f.id, f)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Checkpoints { path, files })
    }

    /// Writes atomically and durably.
    pub fn save(&self) -> std::io::Result<()> {
        let d = OnDisk {
            version: 1,
            files: self.files.values().cloned().collect(),
        };
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&d).expect("serialises"))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoints::load(dir.path()).unwrap();
        assert!(c.files.is_empty());
        let id = FileId { dev: 1, ino: 2 };
        c.files.insert(
            id,
            FileState {
                path: "/x/0.log".into(),
                id,
                fingerprint: 7,
                fingerprint_len: 9,
                generation: 0,
                resume: 10,
                acked: 20,
                pending: Some(30),
                finished: false,
                done: false,
            },
        );
        c.save().unwrap();
        let back = Checkpoints::load(dir.path()).unwrap();
        assert_eq!(back.files, c.files);
        std::fs::write(dir.path().join("checkpoints.json"), b"{not json").unwrap();
        let e = Checkpoints::load(dir.path()).err().unwrap();
        assert!(e.contains("is damaged"), "{e}");
    }
}

/// The resume decision over random histories of one inode: appends, truncations in
/// place (copytruncate), reads (as [`crate::tail::FileTail::read`] decides them) and
/// checkpoints taken along the way, each checked against the file as it is now.
#[cfg(test)]
mod resume_props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Truncate,
        Read,
        Save,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..8).prop_map(Op::Append),
            1 => Just(Op::Truncate),
            3 => Just(Op::Read),
            2 => Just(Op::Save),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A checkpoint resumes exactly while the file is still in the generation it was
        /// taken in (only appended to since), and otherwise starts the generation after
        /// it from offset 0; a reader never misses a truncation, even one the file grew
        /// back past the read offset from.
        #[test]
        fn a_checkpoint_resumes_in_its_own_generation_only(
            ops in proptest::collection::vec(op(), 1..50)
        ) {
            let id = FileId { dev: 1, ino: 7 };
            let path = Path::new("/pods/x/0.log");
            let seen = |bytes: &[u8]| -> (u64, Vec<u8>) {
                (bytes.len() as u64, bytes[..bytes.len().min(FINGERPRINT_BYTES)].to_vec())
            };
            let mut bytes: Vec<u8> = Vec::new();
            let mut truncations = 0u32;
            let mut next = 0u64;
            let (len, head) = seen(&bytes);
            let mut reader = resume(None, &Seen { path, id, len, head: &head });
            // How many truncations the content the reader's state describes had seen.
            let mut reader_in = 0u32;
            let mut saves: Vec<(FileState, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(n) => {
                        for _ in 0..n {
                            // Every line different, as CRI lines are (timestamped).
                            bytes.extend_from_slice(
                                format!("2026-11-23T10:00:00.{next:09}Z stdout F line {next}\n")
                                    .as_bytes(),
                            );
                            next += 1;
                        }
                    }
                    Op::Truncate => {
                        bytes.clear();
                        truncations += 1;
                    }
                    Op::Read => {
                        let (len, head) = seen(&bytes);
                        if len < reader.resume || !reader.same_start(&head) {
                            reader = reader.next_generation(&head);
                            reader_in = truncations;
                        } else {
                            reader.extend_fingerprint(&head);
                        }
                        if reader.resume == 0 {
                            // Nothing read yet: no generation to tell apart.
                            reader_in = truncations;
                        }
                        prop_assert_eq!(reader_in, truncations, "a truncation went unnoticed");
                        reader.resume = len;
                        reader.acked = len;
                    }
                    Op::Save => saves.push((reader.clone(), reader_in)),
                }
                let (len, head) = seen(&bytes);
                let now = Seen { path, id, len, head: &head };
                for (s, taken_in) in &saves {
                    let r = resume(Some(s), &now);
                    if *taken_in == truncations {
                        prop_assert_eq!(
                            (r.generation, r.resume, r.acked),
                            (s.generation, s.resume, s.acked),
                            "the same generation resumes where it was"
                        );
                    } else if s.resume > 0 {
                        prop_assert_eq!(
                            (r.generation, r.resume, r.acked, r.pending),
                            (s.generation + 1, 0, 0, None),
                            "a truncated file is the next generation, from its start"
                        );
                    } else {
                        prop_assert_eq!((r.resume, r.acked), (0, 0));
                        prop_assert!(r.generation >= s.generation);
                    }
                }
            }
        }
    }
}
