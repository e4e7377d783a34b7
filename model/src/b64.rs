//! Base64 without padding, in the standard and URL-safe alphabets (RFC 4648), on the
//! `base64` crate.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, NO_PAD};
use base64::engine::{DecodePaddingMode, general_purpose};

/// Which of the two alphabets to encode with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// `A-Z a-z 0-9 + /`
    Standard,
    /// `A-Z a-z 0-9 - _`
    UrlSafe,
}

/// `A-Z a-z 0-9 + /`
pub const STANDARD: Alphabet = Alphabet::Standard;
/// `A-Z a-z 0-9 - _`
pub const URL_SAFE: Alphabet = Alphabet::UrlSafe;

/// Decoding: padding optional, unused trailing bits ignored.
const LENIENT: GeneralPurposeConfig = NO_PAD
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Encodes `bytes` without `=` padding.
pub fn encode(bytes: &[u8], alphabet: Alphabet) -> String {
    match alphabet {
        Alphabet::Standard => general_purpose::STANDARD_NO_PAD.encode(bytes),
        Alphabet::UrlSafe => general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    }
}

/// Decodes either alphabet, with or without `=` padding; `None` on any other character
/// (or a length no encoding has).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let url = s.contains(['-', '_']);
    if url && s.contains(['+', '/']) {
        return None; // one alphabet or the other
    }
    let engine = if url {
        &URL_SAFE_LENIENT
    } else {
        &STANDARD_LENIENT
    };
    engine.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_both_alphabets() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\xfe\xfd\x00"] {
            for alphabet in [STANDARD, URL_SAFE] {
                assert_eq!(decode(&encode(data, alphabet)).as_deref(), Some(data));
            }
        }
        assert_eq!(encode(b"hello", STANDARD), "aGVsbG8");
        assert_eq!(decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode("a b"), None);
    }

    #[test]
    fn alphabets_differ_only_in_the_last_two_characters() {
        let data = b"\xfb\xff\xbf";
        assert_eq!(encode(data, STANDARD), "+/+/");
        assert_eq!(encode(data, URL_SAFE), "-_-_");
        assert_eq!(decode("+/+/").as_deref(), Some(&data[..]));
        assert_eq!(decode("-_-_").as_deref(), Some(&data[..]));
        assert_eq!(decode("+_-/"), None, "mixed alphabets");
        // Unused trailing bits are ignored, as before.
        assert_eq!(decode("aGVsbG9"), Some(b"hello".to_vec()));
    }
}
