//! The cursor: an opaque, URL-safe resume token for one deployment's log.
//!
//! Binary layout (29 bytes), then base64url without padding (39 characters):
//!
//! ```text
//! [0]      version (1)
//! [1..9]   log tag: FNV-1a 64 of "tenant\0deployment" (big endian)
//! [9..17]  seq of the last line the holder has seen (0 = before the first line)
//! [17..25] wallclock of that line, Unix nanoseconds (big endian, signed)
//! [25..29] CRC32C of bytes 0..25 (big endian)
//! ```
//!
//! The tag binds a cursor to one tenant's deployment, so a cursor taken from another
//! deployment or tenant is refused; the checksum and the canonical-encoding check refuse
//! any mangled character.

const VERSION: u8 = 1;
const RAW_LEN: usize = 29;
const ENCODED_LEN: usize = 39;

/// A position in one deployment's log: "everything after `seq`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    tag: u64,
    /// Seq of the last line seen; the next line to deliver is `seq + 1`.
    pub seq: u64,
    /// Timestamp of that line (Unix nanoseconds), informative only.
    pub wallclock: i64,
}

/// Why a cursor string was refused. Every variant maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is empty; omit the parameter to start from the beginning")]
    Empty,
    #[error(
        "cursor has {0} characters, a logstream cursor has 39; copy the whole value of a `cursor` or `next_cursor` field"
    )]
    Length(usize),
    #[error(
        "cursor contains {0:?}, which is not a base64url character; it was mangled (URL-decode it once, not twice)"
    )]
    Character(char),
    #[error("cursor is not canonically encoded; it was mangled")]
    NonCanonical,
    #[error("cursor version {0} is not supported by this server; take a fresh cursor")]
    Version(u8),
    #[error("cursor checksum does not match; it was mangled or truncated")]
    Checksum,
    #[error(
        "cursor belongs to another deployment; a cursor only resumes the deployment it came from"
    )]
    Foreign,
}

impl Cursor {
    /// A cursor on `tenant`'s `deployment` after line `seq`.
    pub fn new(tenant: &str, deployment: &str, seq: u64, wallclock: i64) -> Cursor {
        Cursor {
            tag: log_tag(tenant, deployment),
            seq,
            wallclock,
        }
    }

    /// The URL-safe string form.
    pub fn encode(&self) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&self.tag.to_be_bytes());
        raw[9..17].copy_from_slice(&self.seq.to_be_bytes());
        raw[17..25].copy_from_slice(&self.wallclock.to_be_bytes());
        let crc = crc32c::crc32c(&raw[..25]);
        raw[25..29].copy_from_slice(&crc.to_be_bytes());
        base64url_encode(&raw)
    }

    /// Parses a cursor and checks that it belongs to `tenant`'s `deployment`.
    pub fn decode(s: &str, tenant: &str, deployment: &str) -> Result<Cursor, CursorError> {
        if s.is_empty() {
            return Err(CursorError::Empty);
        }
        if s.len() != ENCODED_LEN {
            return Err(CursorError::Length(s.chars().count()));
        }
        let raw = base64url_decode(s)?;
        if raw[0] != VERSION {
            // Checked before the CRC only when the CRC also matches, so that a mangled
            // first byte reads as mangled rather than as a future version.
            let crc = u32::from_be_bytes([raw[25], raw[26], raw[27], raw[28]]);
            if crc == crc32c::crc32c(&raw[..25]) {
                return Err(CursorError::Version(raw[0]));
            }
            return Err(CursorError::Checksum);
        }
        let crc = u32::from_be_bytes([raw[25], raw[26], raw[27], raw[28]]);
        if crc != crc32c::crc32c(&raw[..25]) {
            return Err(CursorError::Checksum);
        }
        let tag = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
        if tag != log_tag(tenant, deployment) {
            return Err(CursorError::Foreign);
        }
        Ok(Cursor {
            tag,
            seq: u64::from_be_bytes(raw[9..17].try_into().expect("8 bytes")),
            wallclock: i64::from_be_bytes(raw[17..25].try_into().expect("8 bytes")),
        })
    }
}

fn log_tag(tenant: &str, deployment: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    tenant
        .bytes()
        .chain(std::iter::once(0))
        .chain(deployment.bytes())
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

fn base64url_encode(raw: &[u8; RAW_LEN]) -> String {
    crate::b64::encode(raw, crate::b64::URL_SAFE)
}

/// Strict decoding: URL-safe characters only, exactly `RAW_LEN` bytes, unused bits zero
/// (so every cursor has exactly one spelling).
fn base64url_decode(s: &str) -> Result<[u8; RAW_LEN], CursorError> {
    use base64::Engine as _;
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(CursorError::Character(c));
    }
    // 39 characters carry 234 bits: 232 of data and 2 that must be zero (the engine
    // refuses set trailing bits).
    // (The engine wants room for its length estimate, up to 2 bytes more.)
    let mut buf = [0u8; RAW_LEN + 3];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(s, &mut buf) {
        Ok(RAW_LEN) => Ok(buf[..RAW_LEN].try_into().expect("RAW_LEN bytes")),
        _ => Err(CursorError::NonCanonical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_to_39_url_safe_characters() {
        let c = Cursor::new("acme", "build-1", 42, 1_700_000_000_000_000_000);
        let s = c.encode();
        assert_eq!(s.len(), ENCODED_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&s, "acme", "build-1"), Ok(c));
    }

    #[test]
    fn refuses_foreign_and_mangled_cursors() {
        let s = Cursor::new("acme", "build-1", 7, 0).encode();
        assert_eq!(
            Cursor::decode(&s, "acme", "build-2"),
            Err(CursorError::Foreign)
        );
        assert_eq!(
            Cursor::decode(&s, "other", "build-1"),
            Err(CursorError::Foreign)
        );
        assert_eq!(Cursor::decode("", "a", "b"), Err(CursorError::Empty));
        assert_eq!(Cursor::decode("abc", "a", "b"), Err(CursorError::Length(3)));
        let mut bad = s.clone();
        bad.replace_range(3..4, "+");
        assert_eq!(
            Cursor::decode(&bad, "acme", "build-1"),
            Err(CursorError::Character('+'))
        );
    }
}
