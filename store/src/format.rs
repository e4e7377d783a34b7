//! On-disk formats of the segment store: pure encode/decode over byte slices, no I/O.
//!
//! ```text
//! segment file  {first_seq:020}.seg = SEGMENT_MAGIC(8) version(u32) reserved(u32) block*
//! block         = header payload
//! header        = BLOCK_MAGIC(u32) header_len(u32) payload_len(u32)
//!                 first_seq(u64) count(u32) min_ts(i64) max_ts(i64) written_at(i64)
//!                 level_mask(u8) stream_mask(u8) codec(u8) flags(u8)
//!                 uncompressed_len(u32) prev_hash([u8;32])
//!                 n_steps(u16) { len(u16) bytes }*      steps present in the block
//!                 n_marks(u16) { len(u16) source batch_id(u64) last_seq(u64) }*
//!                 [ link_hash([u8;32]) record_hash([u8;32]) ]   only with REWRITTEN
//!                 crc32c(u32)   over the header before it and the whole payload
//! flags         = bit 0 REWRITTEN; other bits must be 0 (blocks written before flags
//!                 existed have 0 there: they decode as before)
//! payload       = zstd( columns: ts deltas from the previous line, levels, streams, step indexes, message
//!                 lengths, metadata, redaction, messages )
//! index file    {first_seq:020}.idx = IndexEntry(64 bytes)*   (rebuildable from .seg)
//! ```
//!
//! A block's hash is BLAKE3 over its header and payload; the next block stores it as
//! `prev_hash`, so editing, removing or reordering blocks breaks the chain. All integers
//! are little endian.
//!
//! A REWRITTEN block is an audited hotfix of an earlier version (a redaction): same
//! first seq, count, timestamps, marks, `written_at` and `prev_hash`, new payload. Its
//! `link_hash` is the hash the next block's `prev_hash` committed to (the original
//! block's, kept through later rewrites), so the chain still links; its `record_hash`
//! names the ledger record that authorised it (see `ledger`). The hash a block passes
//! on down the chain is its *link hash*: `link_hash` when rewritten, else its own hash.

use logstream_model::{Level, LevelSet, LogRecord, RedactionState, Stream};

pub const SEGMENT_MAGIC: &[u8; 8] = b"LSSEG\0\0\x01";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"LSBK");
/// Bytes of the fixed part of a block header (up to and including `prev_hash`).
pub const FIXED_HEADER_LEN: usize = 4 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 4 + 4 + 32;
/// The three length fields at the start of every block.
pub const PREFIX_LEN: usize = 12;
const CODEC_ZSTD: u8 = 1;
/// Header flag: the block is an audited rewrite of an earlier version.
pub const FLAG_REWRITTEN: u8 = 1;
const KNOWN_FLAGS: u8 = FLAG_REWRITTEN;
/// Refuse headers/payloads larger than this when reading (a corrupt length must not make
/// us allocate gigabytes).
pub const MAX_HEADER_LEN: u32 = 1 << 20;
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;

pub type Hash = [u8; 32];

/// Why bytes could not be decoded as a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad block magic")]
    Magic,
    #[error("block length field out of range ({0})")]
    Length(u32),
    #[error("block is truncated")]
    Truncated,
    #[error("CRC32C mismatch")]
    Crc,
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("unknown header flags {0:#04x}")]
    Flags(u8),
}

/// What a REWRITTEN block carries after its marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// The hash the next block's `prev_hash` committed to: the original block's.
    pub link_hash: Hash,
    /// BLAKE3 of the ledger record that authorised this version (see `ledger`).
    pub record_hash: Hash,
}

/// A producer batch recorded in the block holding the batch's last line, so retried
/// batches are recognised after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMark {
    pub source: String,
    pub batch_id: u64,
    /// Seq of the batch's last line.
    pub last_seq: u64,
}

/// The decoded header of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub header_len: u32,
    pub payload_len: u32,
    pub first_seq: u64,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Store wallclock when the block was written (Unix ns); drives retention.
    pub written_at: i64,
    pub levels: LevelSet,
    /// Bit `Stream::code()` set for each stream present.
    pub streams: u8,
    pub codec: u8,
    /// `FLAG_*` bits (0 for blocks written before flags existed).
    pub flags: u8,
    pub uncompressed_len: u32,
    pub prev_hash: Hash,
    pub steps: Vec<String>,
    pub marks: Vec<BatchMark>,
    /// Set exactly when `flags` has `FLAG_REWRITTEN`.
    pub rewritten: Option<Rewritten>,
    pub crc: u32,
}

impl BlockHeader {
    pub fn total_len(&self) -> u64 {
        u64::from(self.header_len) + u64::from(self.payload_len)
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }

    /// The hash the next block chains to, given this block's own hash: the original
    /// block's for a rewritten one, else `hash`.
    pub fn link_hash(&self, hash: &Hash) -> Hash {
        self.rewritten.map_or(*hash, |r| r.link_hash)
    }
}

/// Reads the two length fields from the first `PREFIX_LEN` bytes of a block.
pub fn block_lengths(prefix: &[u8]) -> Result<(u32, u32), FormatError> {
    if prefix.len() < PREFIX_LEN {
        return Err(FormatError::Truncated);
    }
    if u32::from_le_bytes(prefix[0..4].try_into().expect("4")) != BLOCK_MAGIC {
        return Err(FormatError::Magic);
    }
    let header_len = u32::from_le_bytes(prefix[4..8].try_into().expect("4"));
    let payload_len = u32::from_le_bytes(prefix[8..12].try_into().expect("4"));
    if (header_len as usize) < FIXED_HEADER_LEN + 8 || header_len > MAX_HEADER_LEN {
        return Err(FormatError::Length(header_len));
    }
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(FormatError::Length(payload_len));
    }
    Ok((header_len, payload_len))
}

/// An encoded block: bytes ready to append, plus what the index and the chain need.
pub struct EncodedBlock {
    pub bytes: Vec<u8>,
    pub header: BlockHeader,
    pub hash: Hash,
}

/// Encodes `records` (seqs `first_seq..`) as one block chained to `prev_hash`.
pub fn encode_block(
    records: &[LogRecord],
    first_seq: u64,
    written_at: i64,
    prev_hash: &Hash,
    marks: &[BatchMark],
    zstd_level: i32,
) -> EncodedBlock {
    encode(
        records, first_seq, written_at, prev_hash, marks, zstd_level, None,
    )
}

/// Encodes `records` (the same lines as `original`'s, changed) as a REWRITTEN version
/// of the block `original` describes: same first seq, written_at, prev_hash and marks.
pub fn encode_rewritten(
    records: &[LogRecord],
    original: &BlockHeader,
    rewritten: Rewritten,
    zstd_level: i32,
) -> EncodedBlock {
    assert_eq!(
        records.len(),
        original.count as usize,
        "a rewrite keeps every line"
    );
    encode(
        records,
        original.first_seq,
        original.written_at,
        &original.prev_hash,
        &original.marks,
        zstd_level,
        Some(rewritten),
    )
}

fn encode(
    records: &[LogRecord],
    first_seq: u64,
    written_at: i64,
    prev_hash: &Hash,
    marks: &[BatchMark],
    zstd_level: i32,
    rewritten: Option<Rewritten>,
) -> EncodedBlock {
    assert!(!records.is_empty(), "a block holds at least one record");
    let min_ts = records.iter().map(|r| r.ts).min().expect("non-empty");
    let max_ts = records.iter().map(|r| r.ts).max().expect("non-empty");
    let mut steps: Vec<&str> = Vec::new();
    let mut levels = LevelSet::EMPTY;
    let mut streams = 0u8;
    let mut cols = Columns::default();
    let mut prev_ts = min_ts;
    for r in records {
        levels = levels.with(r.level);
        streams |= 1 << r.stream.code();
        let step_idx = match steps.iter().position(|s| *s == r.step) {
            Some(i) => i,
            None => {
                steps.push(&r.step);
                steps.len() - 1
            }
        };
        // Delta from the previous line: steady clocks give near-constant deltas that
        // compress to almost nothing.
        put_varint(&mut cols.ts, zigzag(r.ts.wrapping_sub(prev_ts)));
        prev_ts = r.ts;
        cols.levels.push(r.level.code());
        cols.streams.push(r.stream.code());
        put_varint(&mut cols.steps, step_idx as u64);
        put_varint(&mut cols.lens, r.message.len() as u64);
        put_varint(&mut cols.meta, r.metadata.len() as u64);
        for (k, v) in &r.metadata {
            put_bytes(&mut cols.meta, k.as_bytes());
            put_bytes(&mut cols.meta, v.as_bytes());
        }
        put_varint(&mut cols.redaction, r.redaction.0.len() as u64);
        for (name, n) in &r.redaction.0 {
            put_bytes(&mut cols.redaction, name.as_bytes());
            put_varint(&mut cols.redaction, u64::from(*n));
        }
        cols.messages.extend_from_slice(r.message.as_bytes());
    }
    let raw = cols.concat();
    let payload = zstd::bulk::compress(&raw, zstd_level).expect("zstd compression of a buffer");

    let mut h = Vec::with_capacity(FIXED_HEADER_LEN + 64);
    h.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // header_len, patched below
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    h.extend_from_slice(&(records.len() as u32).to_le_bytes());
    h.extend_from_slice(&min_ts.to_le_bytes());
    h.extend_from_slice(&max_ts.to_le_bytes());
    h.extend_from_slice(&written_at.to_le_bytes());
    let flags = if rewritten.is_some() {
        FLAG_REWRITTEN
    } else {
        0
    };
    h.extend_from_slice(&[levels.bits(), streams, CODEC_ZSTD, flags]);
    h.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    h.extend_from_slice(prev_hash);
    h.extend_from_slice(&(steps.len() as u16).to_le_bytes());
    for s in &steps {
        put_short(&mut h, s.as_bytes());
    }
    h.extend_from_slice(&(marks.len() as u16).to_le_bytes());
    for m in marks {
        put_short(&mut h, m.source.as_bytes());
        h.extend_from_slice(&m.batch_id.to_le_bytes());
        h.extend_from_slice(&m.last_seq.to_le_bytes());
    }
    if let Some(r) = &rewritten {
        h.extend_from_slice(&r.link_hash);
        h.extend_from_slice(&r.record_hash);
    }
    let header_len = (h.len() + 4) as u32;
    h[4..8].copy_from_slice(&header_len.to_le_bytes());
    let mut crc = crc32c::crc32c(&h);
    crc = crc32c::crc32c_append(crc, &payload);
    h.extend_from_slice(&crc.to_le_bytes());
    let header = decode_header(&h).expect("a header we just encoded decodes");
    h.extend_from_slice(&payload);
    let hash = *blake3::hash(&h).as_bytes();
    EncodedBlock {
        bytes: h,
        header,
        hash,
    }
}

/// Decodes a block header from its bytes (exactly `header_len` long). Does not check
/// the CRC, which also covers the payload: see `check_block`.
pub fn decode_header(h: &[u8]) -> Result<BlockHeader, FormatError> {
    let (header_len, payload_len) = block_lengths(h)?;
    if h.len() < header_len as usize {
        return Err(FormatError::Truncated);
    }
    let h = &h[..header_len as usize];
    let mut r = Reader {
        buf: h,
        pos: PREFIX_LEN,
    };
    let first_seq = r.u64()?;
    let count = r.u32()?;
    let min_ts = r.u64()? as i64;
    let max_ts = r.u64()? as i64;
    let written_at = r.u64()? as i64;
    let bits = r.take(4)?;
    let (levels, streams, codec, flags) = (LevelSet::from_bits(bits[0]), bits[1], bits[2], bits[3]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FormatError::Flags(flags));
    }
    let uncompressed_len = r.u32()?;
    let prev_hash: Hash = r.take(32)?.try_into().expect("32");
    let n_steps = r.u16()?;
    let mut steps = Vec::with_capacity(usize::from(n_steps));
    for _ in 0..n_steps {
        steps.push(r.short_string()?);
    }
    let n_marks = r.u16()?;
    let mut marks = Vec::with_capacity(usize::from(n_marks));
    for _ in 0..n_marks {
        let source = r.short_string()?;
        let batch_id = r.u64()?;
        marks.push(BatchMark {
            source,
            batch_id,
            last_seq: r.u64()?,
        });
    }
    let rewritten = if flags & FLAG_REWRITTEN != 0 {
        let link_hash: Hash = r.take(32)?.try_into().expect("32");
        let record_hash: Hash = r.take(32)?.try_into().expect("32");
        Some(Rewritten {
            link_hash,
            record_hash,
        })
    } else {
        None
    };
    let crc = r.u32()?;
    if r.pos != h.len() || count == 0 {
        return Err(FormatError::Length(header_len));
    }
    Ok(BlockHeader {
        header_len,
        payload_len,
        first_seq,
        count,
        min_ts,
        max_ts,
        written_at,
        levels,
        streams,
        codec,
        flags,
        uncompressed_len,
        prev_hash,
        steps,
        marks,
        rewritten,
        crc,
    })
}

/// Checks the CRC of a whole block (header bytes + payload bytes) and returns its hash.
pub fn check_block(block: &[u8], header: &BlockHeader) -> Result<Hash, FormatError> {
    if block.len() as u64 != header.total_len() {
        return Err(FormatError::Truncated);
    }
    let crc_at = header.header_len as usize - 4;
    let mut crc = crc32c::crc32c(&block[..crc_at]);
    crc = crc32c::crc32c_append(crc, &block[header.header_len as usize..]);
    if crc != header.crc {
        return Err(FormatError::Crc);
    }
    Ok(*blake3::hash(block).as_bytes())
}

/// Decodes the records of a block (whole block bytes; CRC already checked).
pub fn decode_records(block: &[u8], header: &BlockHeader) -> Result<Vec<LogRecord>, FormatError> {
    if header.codec != CODEC_ZSTD {
        return Err(FormatError::Codec(header.codec));
    }
    let payload = &block[header.header_len as usize..];
    let raw = zstd::bulk::decompress(payload, header.uncompressed_len as usize)
        .map_err(|e| FormatError::Payload(e.to_string()))?;
    if raw.len() != header.uncompressed_len as usize {
        return Err(FormatError::Payload("uncompressed length differs".into()));
    }
    let n = header.count as usize;
    let bad = |what: &str| FormatError::Payload(what.to_owned());
    let mut r = Reader { buf: &raw, pos: 0 };
    let col_lens: Vec<usize> = (0..COLUMNS)
        .map(|_| r.u32().map(|v| v as usize))
        .collect::<Result<_, _>>()?;
    let mut cols = Vec::with_capacity(COLUMNS);
    for len in col_lens {
        cols.push(Reader {
            buf: r.take(len)?,
            pos: 0,
        });
    }
    let [ts, levels, streams, steps, lens, meta, redaction, messages]: [Reader<'_>; COLUMNS] =
        cols.try_into().map_err(|_| bad("columns"))?;
    let (
        mut ts,
        mut levels,
        mut streams,
        mut steps,
        mut lens,
        mut meta,
        mut redaction,
        mut messages,
    ) = (ts, levels, streams, steps, lens, meta, redaction, messages);
    let mut out = Vec::with_capacity(n);
    let mut prev_ts = header.min_ts;
    for i in 0..n {
        let t = prev_ts.wrapping_add(unzigzag(ts.varint()?));
        prev_ts = t;
        let level = Level::from_code(levels.take(1)?[0]).ok_or_else(|| bad("level"))?;
        let stream = Stream::from_code(streams.take(1)?[0]).ok_or_else(|| bad("stream"))?;
        let step = header
            .steps
            .get(steps.varint()? as usize)
            .ok_or_else(|| bad("step index"))?;
        let len = lens.varint()? as usize;
        let message = String::from_utf8(messages.take(len)?.to_vec()).map_err(|_| bad("utf-8"))?;
        let mut metadata = std::collections::BTreeMap::new();
        for _ in 0..meta.varint()? {
            let k = meta.string()?;
            metadata.insert(k, meta.string()?);
        }
        let mut red = RedactionState::default();
        for _ in 0..redaction.varint()? {
            let name = redaction.string()?;
            red.add(&name, redaction.varint()? as u32);
        }
        out.push(LogRecord {
            seq: header.first_seq + i as u64,
            ts: t,
            step: step.clone(),
            stream,
            level,
            message,
            metadata,
            redaction: red,
        });
    }
    Ok(out)
}

const COLUMNS: usize = 8;

#[derive(Default)]
struct Columns {
    ts: Vec<u8>,
    levels: Vec<u8>,
    streams: Vec<u8>,
    steps: Vec<u8>,
    lens: Vec<u8>,
    meta: Vec<u8>,
    redaction: Vec<u8>,
    messages: Vec<u8>,
}

impl Columns {
    fn concat(self) -> Vec<u8> {
        let cols = [
            self.ts,
            self.levels,
            self.streams,
            self.steps,
            self.lens,
            self.meta,
            self.redaction,
            self.messages,
        ];
        let total: usize = cols.iter().map(Vec::len).sum::<usize>() + 4 * COLUMNS;
        let mut out = Vec::with_capacity(total);
        for c in &cols {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        }
        for c in &cols {
            out.extend_from_slice(c);
        }
        out
    }
}

/// One fixed-size entry of a segment's index file: where a block is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub len: u32,
    pub count: u32,
    pub first_seq: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Running maximum of `max_ts` over the segment up to this block: monotonic, so a
    /// time seek is a binary search even when producers' clocks go backwards.
    pub max_ts_cum: i64,
    pub written_at: i64,
    pub levels: LevelSet,
    pub streams: u8,
}

pub const INDEX_ENTRY_LEN: usize = 64;

impl IndexEntry {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }

    pub fn from_header(h: &BlockHeader, offset: u64, prev_cum: i64) -> IndexEntry {
        IndexEntry {
            offset,
            len: h.total_len() as u32,
            count: h.count,
            first_seq: h.first_seq,
            min_ts: h.min_ts,
            max_ts: h.max_ts,
            max_ts_cum: prev_cum.max(h.max_ts),
            written_at: h.written_at,
            levels: h.levels,
            streams: h.streams,
        }
    }

    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.min_ts.to_le_bytes());
        b[32..40].copy_from_slice(&self.max_ts.to_le_bytes());
        b[40..48].copy_from_slice(&self.max_ts_cum.to_le_bytes());
        b[48..56].copy_from_slice(&self.written_at.to_le_bytes());
        b[56] = self.levels.bits();
        b[57] = self.streams;
        b
    }

    pub fn decode(b: &[u8]) -> IndexEntry {
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8"));
        IndexEntry {
            offset: u(0..8),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4")),
            count: u32::from_le_bytes(b[12..16].try_into().expect("4")),
            first_seq: u(16..24),
            min_ts: u(24..32) as i64,
            max_ts: u(32..40) as i64,
            max_ts_cum: u(40..48) as i64,
            written_at: u(48..56) as i64,
            levels: LevelSet::from_bits(b[56]),
            streams: b[57],
        }
    }
}

pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    b[..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    b
}

pub fn check_segment_header(b: &[u8]) -> bool {
    b.len() >= SEGMENT_HEADER_LEN as usize
        && &b[..8] == SEGMENT_MAGIC
        && u32::from_le_bytes(b[8..12].try_into().expect("4")) == SEGMENT_VERSION
}

/// `00000000000000000001.seg` for first seq 1; the name sorts like the seq.
pub fn segment_file_name(first_seq: u64, ext: &str) -> String {
    format!("{first_seq:020}.{ext}")
}

/// Parses a name built by `segment_file_name`.
pub fn parse_segment_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    let len = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&b[..len]);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).ok_or(FormatError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(FormatError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn short_string(&mut self) -> Result<String, FormatError> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| FormatError::Payload("utf-8".into()))
    }
    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::Payload("varint too long".into()))
    }
    fn string(&mut self) -> Result<String, FormatError> {
        let len = self.varint()? as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| FormatError::Payload("utf-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<LogRecord> {
        let mut a = LogRecord::new(1_000, "build", "\x1b[31merror\x1b[0m: boom");
        a.metadata.insert("pod".into(), "p-1".into());
        a.redaction.add("github_token", 2);
        let mut b = LogRecord::new(900, "test", "ok");
        b.stream = Stream::Stderr;
        vec![a, b]
    }

    #[test]
    fn block_round_trips_records_and_summary() {
        let recs = sample();
        let marks = [BatchMark {
            source: "s".into(),
            batch_id: 7,
            last_seq: 42,
        }];
        let b = encode_block(&recs, 41, 5, &[9; 32], &marks, 3);
        let h = decode_header(&b.bytes).unwrap();
        assert_eq!(h, b.header);
        assert_eq!(
            (h.first_seq, h.count, h.min_ts, h.max_ts),
            (41, 2, 900, 1_000)
        );
        assert_eq!(h.steps, ["build", "test"]);
        assert_eq!(h.marks, marks);
        assert_eq!(check_block(&b.bytes, &h).unwrap(), b.hash);
        let got = decode_records(&b.bytes, &h).unwrap();
        let want: Vec<_> = recs
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.seq = 41 + i as u64;
                r
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn any_flipped_byte_fails_the_crc_or_the_parse() {
        let b = encode_block(&sample(), 1, 0, &[0; 32], &[], 3);
        for i in 0..b.bytes.len() {
            let mut bytes = b.bytes.clone();
            bytes[i] ^= 0x01;
            let ok = decode_header(&bytes).and_then(|h| check_block(&bytes, &h).map(|_| ()));
            assert!(ok.is_err(), "flip at byte {i} not detected");
        }
    }

    #[test]
    fn a_rewritten_block_keeps_its_place_in_the_chain_and_round_trips() {
        let marks = [BatchMark {
            source: "s".into(),
            batch_id: 3,
            last_seq: 12,
        }];
        let original = encode_block(&sample(), 11, 77, &[5; 32], &marks, 3);
        assert_eq!(original.header.flags, 0);
        assert_eq!(original.header.rewritten, None);
        assert_eq!(original.header.link_hash(&original.hash), original.hash);
        let mut recs = decode_records(&original.bytes, &original.header).unwrap();
        recs[0].message = "[REDACTED]".into();
        let rw = Rewritten {
            link_hash: original.hash,
            record_hash: [8; 32],
        };
        let b = encode_rewritten(&recs, &original.header, rw, 3);
        let h = decode_header(&b.bytes).unwrap();
        assert_eq!(h, b.header);
        assert_eq!(h.flags, FLAG_REWRITTEN);
        assert_eq!(h.rewritten, Some(rw));
        assert_eq!(
            (h.first_seq, h.count, h.written_at, h.prev_hash, &h.marks),
            (11, 2, 77, [5; 32], &marks.to_vec())
        );
        assert_eq!(
            h.link_hash(&b.hash),
            original.hash,
            "links like the original"
        );
        assert_eq!(check_block(&b.bytes, &h).unwrap(), b.hash);
        assert_eq!(decode_records(&b.bytes, &h).unwrap(), recs);
        for i in 0..b.bytes.len() {
            let mut bytes = b.bytes.clone();
            bytes[i] ^= 0x01;
            let ok = decode_header(&bytes).and_then(|h| check_block(&bytes, &h).map(|_| ()));
            assert!(
                ok.is_err(),
                "flip at byte {i} of a rewritten block not detected"
            );
        }
    }

    #[test]
    fn blocks_without_flags_keep_the_layout_of_before_and_unknown_flags_are_refused() {
        let b = encode_block(&sample(), 1, 0, &[0; 32], &[], 3);
        // The flags byte is the old reserved byte, still 0; nothing follows the marks.
        assert_eq!(b.bytes[4 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 3], 0);
        let steps: usize = b.header.steps.iter().map(|s| 2 + s.len()).sum();
        assert_eq!(
            b.header.header_len as usize,
            FIXED_HEADER_LEN + 2 + steps + 2 + 4
        );
        let mut bytes = b.bytes.clone();
        bytes[4 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 3] = 0x80;
        assert_eq!(decode_header(&bytes), Err(FormatError::Flags(0x80)));
    }

    #[test]
    fn index_entries_and_names_round_trip() {
        let b = encode_block(&sample(), 3, 11, &[0; 32], &[], 1);
        let e = IndexEntry::from_header(&b.header, 16, i64::MIN);
        assert_eq!(IndexEntry::decode(&e.encode()), e);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(42, "seg"), "seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg", "seg"), None);
    }
}
