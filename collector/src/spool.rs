//! The on-disk spool: batches that could not be delivered in time, kept durably in
//! `<state-dir>/spool/` so the files they came from may be rotated and deleted by
//! kubelet while the gateway is away.
//!
//! A batch goes to the spool (and only then does its file's checkpoint move past it)
//! when its container's batch in flight waited longer than `spool_after` for an
//! acknowledgement, or while older batches of that container are still spooled (order
//! per container is kept). Spooled batches are sent oldest first with their original
//! source and batch id, so the gateway stores each once however often it is sent. When
//! the spool holds `limit` bytes nothing more is read: the backlog waits in the node's
//! files (backpressure), counted in metrics.
//!
//! One file per batch, `<seq>.batch`: magic, a JSON header (container, file identity,
//! batch end and resume offsets, gateway), the `PushRequest` protobuf, and a CRC32C of
//! all of it. Written to a temp file, fsync'd, renamed, directory fsync'd; deleted once
//! acknowledged. After a crash the spool is the write-ahead log: a checkpoint behind a
//! spooled batch is moved up to it at start (see [`Spool::entries`]).

use crate::checkpoint::FileId;
use logstream_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LSSPOOL1";

/// What a spooled batch is, besides its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The container it belongs to (its log directory, or a sidecar's file).
    pub key: PathBuf,
    pub pod_uid: String,
    pub container: String,
    /// The tenant gateway (`None`: the collector's `--gateway`).
    pub gateway: Option<String>,
    /// The file the lines came from, its generation, and where the batch ends and the
    /// next read resumes: what the file's checkpoint moves to once this is spooled.
    pub file: FileId,
    pub generation: u32,
    pub end: u64,
    pub resume: u64,
}

/// One spooled batch.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub size: u64,
    pub head: Header,
}

/// The spool directory and what it holds, per container in order.
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    bytes: u64,
    next_seq: u64,
    queues: BTreeMap<PathBuf, VecDeque<Entry>>,
}

fn encode(head: &Header, req: &pb::PushRequest) -> Vec<u8> {
    let h = serde_json::to_vec(head).expect("header serialises");
    let body = req.encode_to_vec();
    let mut out = Vec::with_capacity(8 + 8 + h.len() + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(Header, pb::PushRequest), String> {
    let bad = |what: &str| format!("not a spooled batch ({what})");
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad("magic"));
    }
    let (data, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(data).to_le_bytes() != crc {
        return Err(bad("checksum"));
    }
    let word = |at: usize| -> Result<usize, String> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("length"))
    };
    let hl = word(8)?;
    let head_bytes = data.get(12..12 + hl).ok_or_else(|| bad("header"))?;
    let head: Header = serde_json::from_slice(head_bytes).map_err(|e| bad(&e.to_string()))?;
    let bl = word(12 + hl)?;
    let body = data.get(16 + hl..16 + hl + bl).ok_or_else(|| bad("body"))?;
    let req = pb::PushRequest::decode(body).map_err(|e| bad(&e.to_string()))?;
    Ok((head, req))
}

impl Spool {
    /// Opens (creating) `dir` and indexes what it holds. Damaged files are renamed to
    /// `*.damaged` and reported, never deleted.
    pub fn open(dir: &Path, limit: u64) -> Result<Spool, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("spool {}: {e}", dir.display()))?;
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| format!("spool {}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let seq = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".batch")?
                    .parse()
                    .ok()?;
                Some((seq, p))
            })
            .collect();
        found.sort();
        let mut s = Spool {
            dir: dir.to_owned(),
            limit,
            bytes: 0,
            next_seq: found.last().map_or(1, |(n, _)| n + 1),
            queues: BTreeMap::new(),
        };
        for (seq, path) in found {
            let read = std::fs::read(&path).map_err(|e| e.to_string());
            match read.and_then(|b| decode(&b).map(|(h, _)| (h, b.len() as u64))) {
                Ok((head, size)) => {
                    s.bytes += size;
                    s.queues
                        .entry(head.key.clone())
                        .or_default()
                        .push_back(Entry { seq, size, head });
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "a damaged spool file is set aside (renamed *.damaged)");
                    let _ = std::fs::rename(&path, path.with_extension("damaged"));
                }
            }
        }
        Ok(s)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.batch"))
    }

    /// Whether `size` more bytes fit. An empty spool takes one batch of any size: a
    /// spool smaller than a batch (`--spool-bytes` below the batch size) would otherwise
    /// hold the container back forever, its lines never sent (found by e2e/local); the
    /// limit is then exceeded by at most that one batch.
    pub fn has_room(&self, size: u64) -> bool {
        self.bytes == 0 || self.bytes + size <= self.limit
    }

    /// Writes a batch durably; returns its size on disk.
    pub fn push(&mut self, head: Header, req: &pb::PushRequest) -> std::io::Result<u64> {
        let bytes = encode(&head, req);
        let seq = self.next_seq;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.next_seq += 1;
        let size = bytes.len() as u64;
        self.bytes += size;
        self.queues
            .entry(head.key.clone())
            .or_default()
            .push_back(Entry { seq, size, head });
        Ok(size)
    }

    /// The oldest spooled batch of a container.
    pub fn front(&self, key: &Path) -> Option<&Entry> {
        self.queues.get(key).and_then(VecDeque::front)
    }

    /// Whether a container has spooled batches.
    pub fn holds(&self, key: &Path) -> bool {
        self.front(key).is_some()
    }

    /// Reads a spooled batch back.
    pub fn load(&self, e: &Entry) -> Result<pb::PushRequest, String> {
        let path = self.path(e.seq);
        let bytes = std::fs::read(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        decode(&bytes).map(|(_, req)| req)
    }

    /// Takes a batch out of its container's queue (its file stays as it is).
    fn take(&mut self, key: &Path, seq: u64) -> Option<Entry> {
        let q = self.queues.get_mut(key)?;
        let e = q.remove(q.iter().position(|e| e.seq == seq)?)?;
        if q.is_empty() {
            self.queues.remove(key);
        }
        self.bytes -= e.size;
        Some(e)
    }

    /// Deletes an acknowledged batch (a deletion lost in a crash only means the batch
    /// is sent again, which the gateway recognises).
    pub fn remove(&mut self, key: &Path, seq: u64) {
        if self.take(key, seq).is_none() {
            return;
        }
        if let Err(err) = std::fs::remove_file(self.path(seq)) {
            tracing::warn!(seq, error = %err, "deleting a delivered spool file failed");
        }
    }

    /// Takes an unreadable batch out of the queue, renaming its file `*.damaged`.
    pub fn set_aside(&mut self, key: &Path, seq: u64) {
        let path = self.path(seq);
        let _ = std::fs::rename(&path, path.with_extension("damaged"));
        self.take(key, seq);
    }

    /// Every spooled batch, per container in order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.queues.values().flatten()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn batches(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: &str, end: u64) -> Header {
        Header {
            key: key.into(),
            pod_uid: "u".into(),
            container: "main".into(),
            gateway: None,
            file: FileId { dev: 1, ino: 2 },
            generation: 0,
            end,
            resume: end,
        }
    }

    fn req(id: u64) -> pb::PushRequest {
        pb::PushRequest {
            deployment: "d".into(),
            source: "node/u/main/2.0".into(),
            batch_id: id,
            lines: vec![pb::Line {
                message: format!("line {id}"),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn batches_survive_a_reopen_in_order_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for id in [10, 20, 30] {
            s.push(head("/a", id), &req(id)).unwrap();
        }
        s.push(head("/b", 5), &req(5)).unwrap();
        let first = s.front(Path::new("/a")).unwrap().clone();
        s.remove(Path::new("/a"), first.seq);
        let total = s.bytes();
        drop(s);
        // A torn write of another file: detected, renamed, the rest still loads.
        std::fs::write(
            dir.path().join("00000000000000000099.batch"),
            b"LSSPOOL1garbage!!!!!",
        )
        .unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.bytes(), total);
        let ids: Vec<u64> = s.entries().map(|e| e.head.end).collect();
        assert_eq!(ids, [20, 30, 5]);
        let e = s.front(Path::new("/a")).unwrap();
        assert_eq!(s.load(e).unwrap(), req(20));
        assert!(dir.path().join("00000000000000000099.damaged").exists());
        assert!(!s.has_room(1 << 20));
    }

    #[test]
    fn an_empty_spool_takes_one_batch_larger_than_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64).unwrap();
        assert!(s.has_room(1 << 20), "empty: one batch of any size");
        s.push(head("/a", 10), &req(10)).unwrap();
        assert!(!s.has_room(1), "then nothing until it drains");
        let e = s.front(Path::new("/a")).unwrap().seq;
        s.remove(Path::new("/a"), e);
        assert!(s.has_room(1 << 20));
    }
}
