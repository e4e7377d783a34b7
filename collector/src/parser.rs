//! Container log line parsers: pure, over `&[u8]`, no I/O.
//!
//! CRI (containerd, CRI-O; what kubelet writes under `/var/log/pods`):
//! `<RFC3339Nano> <stdout|stderr> <P|F> <message>`, as a regex
//! `^(\S+) (stdout|stderr) ([PF])(?: (.*))?$` (tags may carry more flags after `:`, e.g.
//! `F:x`; the message may be empty). Docker's `json-file`: one JSON object per line,
//! `{"log":"...\n","stream":"stdout","time":"..."}`, where a line without a trailing
//! `\n` in `log` is a partial. `parse` picks the format from the first byte (`{` means
//! Docker), as kubelet's own reader does.

use logstream_model::Stream;

/// One parsed physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLine<'a> {
    /// Unix nanoseconds.
    pub ts: i64,
    pub stream: Stream,
    /// More of this logical line follows in the next line of the same stream.
    pub partial: bool,
    pub message: std::borrow::Cow<'a, str>,
}

/// Parses one CRI line (without its trailing newline). `None` when it is not CRI.
pub fn parse_cri(line: &[u8]) -> Option<ContainerLine<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let sp1 = memchr::memchr(b' ', line)?;
    let ts = logstream_model::time::parse_rfc3339(std::str::from_utf8(&line[..sp1]).ok()?)?;
    let rest = &line[sp1 + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        (Stream::Stdout, r)
    } else if let Some(r) = rest.strip_prefix(b"stderr ") {
        (Stream::Stderr, r)
    } else {
        return None;
    };
    let tag_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    let partial = match tag.split(|b| *b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let message = rest.get(tag_end + 1..).unwrap_or(b"");
    Some(ContainerLine {
        ts,
        stream,
        partial,
        message: String::from_utf8_lossy(message),
    })
}

#[derive(serde::Deserialize)]
struct DockerLine {
    log: String,
    stream: String,
    time: String,
}

/// Parses one Docker `json-file` line. `None` when it is not one.
pub fn parse_docker(line: &[u8]) -> Option<ContainerLine<'static>> {
    let d: DockerLine = serde_json::from_slice(line).ok()?;
    let stream = Stream::parse(&d.stream)?;
    let ts = logstream_model::time::parse_rfc3339(&d.time)?;
    let (message, partial) = match d.log.strip_suffix('\n') {
        Some(m) => (m.to_owned(), false),
        None => (d.log, true),
    };
    Some(ContainerLine {
        ts,
        stream,
        partial,
        message: message.into(),
    })
}

/// A line of a plain log file (sidecar mode): the whole line is the message, stamped
/// with `now`, on stdout; a trailing `\r` is dropped, invalid UTF-8 replaced.
pub fn parse_raw(line: &[u8], now: i64) -> ContainerLine<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    ContainerLine {
        ts: now,
        stream: Stream::Stdout,
        partial: false,
        message: String::from_utf8_lossy(line),
    }
}

/// Parses a line of either format, chosen by its first byte.
pub fn parse(line: &[u8]) -> Option<ContainerLine<'_>> {
    if line.first() == Some(&b'{') {
        parse_docker(line)
    } else {
        parse_cri(line)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Lines and what they parse to: (input, (ts, stream, partial, message)), shared by
    /// every parser test.
    /// (timestamp, stream, partial, message)
    type Parsed = (i64, Stream, bool, &'static str);

    pub(crate) fn valid_cases() -> Vec<(&'static [u8], Parsed)> {
        vec![
            (b"2024-01-02T03:04:05.123456789Z stdout F hello world", (1_704_164_645_123_456_789, Stream::Stdout, false, "hello world")),
            (b"2024-01-02T03:04:05Z stderr P part one ", (1_704_164_645_000_000_000, Stream::Stderr, true, "part one ")),
            (b"2024-01-02T03:04:05.5+01:00 stdout F:x tagged", (1_704_161_045_500_000_000, Stream::Stdout, false, "tagged")),
            (b"2024-01-02T03:04:05Z stdout F ", (1_704_164_645_000_000_000, Stream::Stdout, false, "")),
            (b"2024-01-02T03:04:05Z stdout F", (1_704_164_645_000_000_000, Stream::Stdout, false, "")),
            (b"2024-01-02T03:04:05Z stdout F  two spaces kept", (1_704_164_645_000_000_000, Stream::Stdout, false, " two spaces kept")),
            (b"2024-01-02T03:04:05Z stdout F line\n", (1_704_164_645_000_000_000, Stream::Stdout, false, "line")),
            (br#"{"log":"docker line\n","stream":"stderr","time":"2024-01-02T03:04:05.000000001Z"}"#, (1_704_164_645_000_000_001, Stream::Stderr, false, "docker line")),
            (br#"{"log":"docker partial","stream":"stdout","time":"2024-01-02T03:04:05Z"}"#, (1_704_164_645_000_000_000, Stream::Stdout, true, "docker partial")),
        ]
    }

    #[test]
    fn parses_cri_and_docker_lines() {
        for (input, (ts, stream, partial, message)) in valid_cases() {
            let got = parse(input)
                .unwrap_or_else(|| panic!("{:?} did not parse", String::from_utf8_lossy(input)));
            assert_eq!(
                (got.ts, got.stream, got.partial, got.message.as_ref()),
                (ts, stream, partial, message),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn cri_lines_round_trip(ts in 0i64..4_000_000_000_000_000_000, err: bool, partial: bool, message in "[^\n]{0,200}") {
            let stream = if err { Stream::Stderr } else { Stream::Stdout };
            let line = format!("{} {} {} {message}", logstream_model::time::format_rfc3339(ts), stream.as_str(), if partial { "P" } else { "F" });
            let got = parse_cri(line.as_bytes()).unwrap();
            proptest::prop_assert_eq!((got.ts, got.stream, got.partial, got.message.as_ref()), (ts, stream, partial, message.as_str()));
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn refuses_what_is_not_a_container_line() {
        for bad in [
            &b""[..],
            b"hello",
            b"2024-01-02T03:04:05Z stdin F x",
            b"2024-01-02T03:04:05Z stdout X x",
            b"yesterday stdout F x",
            b"{\"log\":1}",
            b"{not json",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
