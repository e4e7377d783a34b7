//! The anchor prefilter: every occurrence of every detector's literal anchors in a line,
//! overlapping ones included, at SIMD speed.
//!
//! An overlapping Aho-Corasick search cannot use a prefilter (and an ASCII
//! case-insensitive one cannot use Teddy), so it walked every byte of every line through
//! a DFA: most of the redaction cost. Instead there are two packed (Teddy) searches,
//! leftmost-first with the longest pattern first:
//!
//! ```text
//! line ───────────────────────────> exact set  (AKIA, ghp_, ://, eyJ …)   case-sensitive
//! line ─ASCII-lowercased copy─────> folded set (pass, token, auth, curl …) any case
//! ```
//!
//! Each search restarts one byte after the start of its last match, so every start
//! position yields its longest pattern; the shorter patterns at that position are its
//! prefixes (precomputed), so every (pattern, position) pair is reported, as an
//! overlapping search would. Where Teddy is not available (no SSSE3/NEON), the same
//! leftmost-first loop runs on an Aho-Corasick automaton.

use std::cell::RefCell;

use aho_corasick::packed;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};

/// Searches one set of patterns; reports each occurrence's owners.
pub(super) struct AnchorSet {
    finder: Finder,
    /// Per pattern (in search order): the detectors it anchors.
    owners: Vec<Vec<usize>>,
    /// Per pattern: the other patterns that are its proper prefixes (they match wherever
    /// it does).
    prefixes: Vec<Vec<usize>>,
    lengths: Vec<usize>,
}

enum Finder {
    None,
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl AnchorSet {
    /// `anchors`: (pattern, owning detector); a pattern may have several owners.
    pub(super) fn new(anchors: &[(Vec<u8>, usize)]) -> AnchorSet {
        let mut patterns: Vec<Vec<u8>> = anchors.iter().map(|(p, _)| p.clone()).collect();
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        let owners = patterns
            .iter()
            .map(|p| {
                let mut o: Vec<usize> = anchors
                    .iter()
                    .filter(|(q, _)| q == p)
                    .map(|(_, d)| *d)
                    .collect();
                o.dedup();
                o
            })
            .collect();
        let prefixes = patterns
            .iter()
            .map(|p| {
                (0..patterns.len())
                    .filter(|&j| patterns[j].len() < p.len() && p.starts_with(&patterns[j]))
                    .collect()
            })
            .collect();
        let finder = if patterns.is_empty() {
            Finder::None
        } else {
            let packed = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostFirst)
                .builder()
                .extend(&patterns)
                .build();
            match packed {
                Some(s) => Finder::Packed(s),
                None => Finder::Automaton(
                    AhoCorasickBuilder::new()
                        .match_kind(MatchKind::LeftmostFirst)
                        .build(&patterns)
                        .expect("anchors build"),
                ),
            }
        };
        AnchorSet {
            finder,
            owners,
            lengths: patterns.iter().map(Vec::len).collect(),
            prefixes,
        }
    }

    /// Calls `f(detector, start, end)` for every occurrence of every pattern in `hay`, in
    /// order of start.
    pub(super) fn each(&self, hay: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        let mut at = 0;
        while at < hay.len() {
            let Some((pattern, start)) = self.find_at(hay, at) else {
                return;
            };
            for &p in std::iter::once(&pattern).chain(&self.prefixes[pattern]) {
                for &d in &self.owners[p] {
                    f(d, start, start + self.lengths[p]);
                }
            }
            at = start + 1;
        }
    }

    fn find_at(&self, hay: &[u8], at: usize) -> Option<(usize, usize)> {
        match &self.finder {
            Finder::None => None,
            Finder::Packed(s) => s
                .find_in(hay, aho_corasick::Span::from(at..hay.len()))
                .map(|m| (m.pattern().as_usize(), m.start())),
            Finder::Automaton(ac) => ac
                .find(Input::new(hay).span(at..hay.len()))
                .map(|m| (m.pattern().as_usize(), m.start())),
        }
    }
}

thread_local! {
    /// The lowercased copy of the line being scanned (reused: no allocation per line).
    static FOLDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `line` with ASCII letters lowercased (same length, same offsets).
pub(super) fn with_folded<R>(line: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    FOLDED.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        // Branch-free so the compiler vectorizes it.
        buf.extend(
            line.iter()
                .map(|&b| b | (((b.wrapping_sub(b'A') < 26) as u8) << 5)),
        );
        f(&buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(set: &AnchorSet, hay: &str) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        set.each(hay.as_bytes(), |d, s, e| out.push((d, s, e)));
        out.sort();
        out
    }

    /// The reference: every occurrence of every anchor, by brute force.
    fn naive(anchors: &[(Vec<u8>, usize)], hay: &str) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for (p, d) in anchors {
            for s in 0..hay.len() {
                if hay.as_bytes()[s..].starts_with(p) {
                    out.push((*d, s, s + p.len()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn reports_overlapping_and_nested_anchors_like_an_overlapping_search() {
        let anchors: Vec<(Vec<u8>, usize)> = [
            ("auth", 0),
            ("authorization", 1),
            ("author", 2),
            ("thor", 3),
            ("pass", 0),
            ("passwd", 4),
            ("sig=", 5),
            ("7z", 6),
            ("auth", 7),
        ]
        .iter()
        .map(|(p, d)| (p.as_bytes().to_vec(), *d))
        .collect();
        let set = AnchorSet::new(&anchors);
        for hay in [
            "",
            "authorization: basic x",
            "authauthorization passpasswd sig=sig=7z7z",
            "a pass word with no authority but an author of thor",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxauthorization",
        ] {
            assert_eq!(all(&set, hay), naive(&anchors, hay), "{hay:?}");
        }
    }

    proptest::proptest! {
        /// Any haystack over the anchors' own letters (so that anchors overlap, nest and
        /// repeat): the same occurrences as brute force, long haystacks (Teddy) and
        /// short ones (its fallback) alike.
        #[test]
        fn every_occurrence_is_reported(hay in "[authorizpsw7=: ]{0,200}") {
            let anchors: Vec<(Vec<u8>, usize)> = [
                ("auth", 0), ("authorization", 1), ("author", 2), ("tho", 3), ("pass", 0),
                ("passw", 4), ("ssw", 5), ("7z ", 6), ("z=:", 7), ("rizat", 8), ("aut", 9),
            ]
            .iter()
            .map(|(p, d)| (p.as_bytes().to_vec(), *d))
            .collect();
            let set = AnchorSet::new(&anchors);
            proptest::prop_assert_eq!(all(&set, &hay), naive(&anchors, &hay));
        }
    }

    #[test]
    fn folding_lowercases_ascii_letters_only() {
        let line = "Authorization: Bearer ÄÖ é [AZ]@`{z} 09";
        with_folded(line.as_bytes(), |f| {
            assert_eq!(f, line.to_ascii_lowercase().as_bytes());
        });
    }
}
