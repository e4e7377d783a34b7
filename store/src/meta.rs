//! Small durable metadata files, written atomically (tmp, fsync, rename, fsync dir) and
//! versioned; readers try a leftover `.tmp` first (a crash between write and rename).

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Nobody completed it and no line arrived for the deployment idle timeout (its
    /// runner died): completed by the gateway so followers do not wait forever.
    #[serde(rename = "timed_out")]
    TimedOut,
}

impl Outcome {
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "succeeded" => Some(Outcome::Succeeded),
            "failed" => Some(Outcome::Failed),
            "cancelled" | "canceled" => Some(Outcome::Cancelled),
            "timed_out" => Some(Outcome::TimedOut),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// A deployment's completion, as recorded when its log is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub status: Outcome,
    pub exit_code: i32,
    /// Store wallclock at completion, Unix ns.
    pub at: i64,
    /// Seq of the last line of the log.
    pub last_seq: u64,
}

/// `meta.json` of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum MetaFile {
    #[serde(rename = "1")]
    V1(Meta),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Store wallclock when the deployment's first line arrived, Unix ns.
    pub created_at: i64,
    /// Set once the deployment completed; the log is sealed from then on.
    pub completion: Option<Completion>,
    /// First seq still stored (> 1 once retention deleted the oldest segments).
    pub retained_from: u64,
    /// Hex BLAKE3 hash the first retained block chains to (empty when `retained_from` is 1).
    pub retained_prev_hash: String,
}

/// `producers.json`: the last batch id per producer source, snapshotted at each segment
/// roll so retried batches are still recognised after older segments are sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum ProducersFile {
    #[default]
    #[serde(rename = "0")]
    Empty,
    #[serde(rename = "1")]
    V1 {
        /// source -> (last batch id, seq of that batch's last line)
        sources: Vec<(String, u64, u64)>,
    },
}

pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).expect("metadata serialises");
    let io = |e| StoreError::io(format!("writing {}", path.display()), e);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path.parent().expect("file in a dir"))
}

/// Reads a file written by `write_atomic`; `Ok(None)` when neither it nor a tmp exists.
pub fn read_atomic<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let tmp = path.with_extension("tmp");
    for candidate in [&tmp, path] {
        match fs::read(candidate) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(Some(v)),
                // A torn tmp file: the rename never happened, the stable file is current.
                Err(_) if *candidate == tmp => continue,
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("unreadable metadata: {e}"),
                    });
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StoreError::io(
                    format!("reading {}", candidate.display()),
                    e,
                ));
            }
        }
    }
    Ok(None)
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
