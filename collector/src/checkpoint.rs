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
//!   ids stay increasing per source.

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
