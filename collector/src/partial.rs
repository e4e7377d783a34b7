//! Joins partial lines (`P` in CRI, no trailing newline in Docker) into logical lines,
//! separately per stream, so stdout and stderr fragments never mix (Fluent Bit #4387),
//! and with a size bound: a logical line that grows past `max_bytes` is emitted in
//! parts marked `split = "i/n"`-style by the caller (`truncated` here), never held
//! without limit.

use logstream_model::Stream;

use crate::parser::ContainerLine;

/// A complete logical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Timestamp of its first fragment.
    pub ts: i64,
    pub stream: Stream,
    pub message: String,
    /// Emitted early because it reached the size bound; the rest follows as another line.
    pub cut: bool,
}

/// Per-container joiner state: one pending buffer per stream.
#[derive(Debug, Default)]
pub struct Joiner {
    /// Pending fragments: index 0 stdout, 1 stderr.
    pending: [Option<(i64, String)>; 2],
}

impl Joiner {
    /// Feeds one parsed line; returns the logical lines it completes.
    pub fn push(&mut self, line: &ContainerLine<'_>, max_bytes: usize) -> Vec<Joined> {
        let slot = &mut self.pending[line.stream.code() as usize];
        let (ts, mut buf) = slot.take().unwrap_or((line.ts, String::new()));
        buf.push_str(&line.message);
        let mut out = Vec::new();
        while buf.len() > max_bytes {
            let mut cut = max_bytes;
            while !buf.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = buf.split_off(cut);
            out.push(Joined {
                ts,
                stream: line.stream,
                message: buf,
                cut: true,
            });
            buf = rest;
        }
        if line.partial {
            *slot = Some((ts, buf));
        } else {
            out.push(Joined {
                ts,
                stream: line.stream,
                message: buf,
                cut: false,
            });
        }
        out
    }

    /// Bytes held in pending fragments (for memory accounting).
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().flatten().map(|(_, b)| b.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(stream: Stream, partial: bool, message: &str) -> ContainerLine<'static> {
        ContainerLine {
            ts: 1,
            stream,
            partial,
            message: message.to_owned().into(),
        }
    }

    #[test]
    fn partials_join_per_stream_without_mixing() {
        let mut j = Joiner::default();
        assert!(
            j.push(&line(Stream::Stdout, true, "out-a "), 1 << 20)
                .is_empty()
        );
        assert!(
            j.push(&line(Stream::Stderr, true, "err-a "), 1 << 20)
                .is_empty()
        );
        let out = j.push(&line(Stream::Stdout, false, "out-b"), 1 << 20);
        assert_eq!(
            out,
            vec![Joined {
                ts: 1,
                stream: Stream::Stdout,
                message: "out-a out-b".into(),
                cut: false
            }]
        );
        let err = j.push(&line(Stream::Stderr, false, "err-b"), 1 << 20);
        assert_eq!(err[0].message, "err-a err-b");
        assert_eq!(j.pending_bytes(), 0);
    }

    proptest! {
        /// Whatever the fragmentation and interleaving, each stream's logical lines come
        /// out whole, in order, and memory stays under the bound.
        #[test]
        fn any_fragmentation_reassembles_each_stream(
            lines in prop::collection::vec(("[a-z]{0,30}", any::<bool>()), 1..20),
            cuts in prop::collection::vec(1usize..8, 1..40),
            max in 16usize..64,
        ) {
            let mut j = Joiner::default();
            let mut got: [Vec<String>; 2] = Default::default();
            let mut want: [Vec<String>; 2] = Default::default();
            let mut cut_iter = cuts.iter().cycle();
            for (text, err) in &lines {
                let stream = if *err { Stream::Stderr } else { Stream::Stdout };
                want[stream.code() as usize].push(text.clone());
                // Split the logical line into fragments: all but the last are partial.
                let mut rest = text.as_str();
                loop {
                    let n = (*cut_iter.next().unwrap()).min(rest.len());
                    let (frag, tail) = rest.split_at(n);
                    let last = tail.is_empty();
                    for out in j.push(&line(stream, !last, frag), max) {
                        let v = &mut got[out.stream.code() as usize];
                        // Cut parts are glued back to compare logical lines.
                        match v.last_mut() {
                            Some(prev) if prev.ends_with('\u{1}') => { prev.pop(); prev.push_str(&out.message); }
                            _ => v.push(out.message.clone()),
                        }
                        if out.cut { v.last_mut().unwrap().push('\u{1}'); }
                    }
                    prop_assert!(j.pending_bytes() <= 2 * max);
                    if last { break; }
                    rest = tail;
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
