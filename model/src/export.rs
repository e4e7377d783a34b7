//! The `text` and `csv` export formats, written the same way by the gateway (from the
//! store) and by `kubectl logstream export` (which downloads NDJSON so it knows each
//! line's cursor and can resume, and renders the other formats itself).

/// First line of a CSV export.
pub const CSV_HEADER: &[u8] = b"seq,ts,step,stream,level,message\r\n";

/// `<ts> <message>\n`.
pub fn text_line(out: &mut Vec<u8>, ts: &str, message: &str) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
}

/// One RFC 4180 record: `seq,ts,step,stream,level,message\r\n`.
pub fn csv_line(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    step: &str,
    stream: &str,
    level: &str,
    message: &str,
) {
    out.extend_from_slice(format!("{seq},{ts},").as_bytes());
    csv_field(out, step);
    out.extend_from_slice(format!(",{stream},{level},").as_bytes());
    csv_field(out, message);
    out.extend_from_slice(b"\r\n");
}

/// A CSV field, quoted when it holds a separator, quote or line break.
pub fn csv_field(out: &mut Vec<u8>, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let mut out = Vec::new();
        csv_line(&mut out, 7, "T", "build", "stderr", "warn", "a \"b\", c");
        assert_eq!(out, b"7,T,build,stderr,warn,\"a \"\"b\"\", c\"\r\n");
        out.clear();
        text_line(&mut out, "T", "hello");
        assert_eq!(out, b"T hello\n");
    }
}
