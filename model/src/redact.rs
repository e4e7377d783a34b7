//! Redaction: secrets are masked before a line leaves the first hop.
//!
//! ```text
//! line ──two Teddy searches over the detectors' literal anchors──> no hit: done
//!        (case-sensitive ones in the line, the others in a lowercased copy: [`anchors`])
//!                 │ hits
//!                 ▼
//!      only the detectors whose anchors hit run their regex ──> masked spans
//!      registered values (exact, base64, URL- and JSON-escaped) ──> masked spans
//! ```
//!
//! `Redactor` is immutable and shared; `StreamRedactor` holds per-stream state: PEM
//! blocks spanning lines and GitHub-style `::add-mask::VALUE` commands. A clean line
//! costs the two anchor searches and no allocation.
//!
//! Secrets without a format of their own (`SECRET_KEY_BASE=...`, `--password VALUE`,
//! `docker login -p VALUE`) are found by the names and commands around them: see
//! [`generic`] (`secret_assignment` and `cli_credential`).

mod anchors;
mod generic;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use crate::RedactionState;

/// How a masked secret is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskStyle {
    /// Keep the detector's public prefix (`AKIA`, `ghp_`) and replace the rest with `*`,
    /// one per character (lines keep their shape).
    #[default]
    Stars,
    /// `[REDACTED:detector_name]`.
    Label,
}

/// How a detector finds its secrets.
enum Matcher {
    /// The secret is group 1 of each match (or the whole match without groups).
    Regex(Regex),
    /// [`generic`]: `NAME = VALUE` where NAME holds a secret word.
    Assignment,
    /// [`generic`]: credentials passed as command-line options.
    CommandLine,
}

/// A built-in or custom detector.
struct Detector {
    name: String,
    /// Literal substrings, one of which every match contains.
    anchors: Vec<String>,
    case_insensitive_anchors: bool,
    matcher: Matcher,
    /// Bytes at the start of the secret group kept visible (`AKIA`).
    keep_prefix: usize,
    /// Minimum Shannon entropy (bits/char) of the secret, for generic detectors.
    min_entropy: f64,
}

/// Why a redaction configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    #[error("pattern {name:?}: {reason}")]
    Pattern { name: String, reason: String },
    #[error("pattern name {0:?} must be 1 to 64 characters of [a-z0-9_]")]
    Name(String),
    #[error("a registered secret must be 4 to 4096 bytes long")]
    SecretLength,
}

/// (name, anchors, anchors case-insensitive, regex, kept prefix, min entropy).
type Builtin = (
    &'static str,
    &'static [&'static str],
    bool,
    &'static str,
    usize,
    f64,
);

/// The built-in detectors: (name, anchors, anchors case-insensitive, regex with the
/// secret in group 1, kept prefix, min entropy).
fn builtins() -> Vec<Builtin> {
    vec![
        (
            "aws_access_key_id",
            &["AKIA", "ASIA", "ABIA", "ACCA"],
            false,
            r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
            4,
            0.0,
        ),
        (
            "aws_secret_access_key",
            &["aws"],
            true,
            r#"(?i)aws_?(?:secret)?_?(?:access)?_?key(?:_id)?["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            0,
            3.0,
        ),
        (
            "github_token",
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            false,
            r"\b(gh[pousr]_[A-Za-z0-9]{36,251})\b",
            4,
            0.0,
        ),
        (
            "github_fine_grained_pat",
            &["github_pat_"],
            false,
            r"\b(github_pat_[A-Za-z0-9_]{22,242})\b",
            11,
            0.0,
        ),
        (
            "gitlab_token",
            &["glpat-", "gldt-", "glrt-", "glptt-"],
            false,
            r"\b((?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_-]{20,})",
            6,
            0.0,
        ),
        (
            "slack_token",
            &["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xapp-"],
            false,
            r"\b((?:xox[abprs]|xapp)-[A-Za-z0-9-]{10,})",
            5,
            0.0,
        ),
        (
            "slack_webhook",
            &["hooks.slack.com"],
            false,
            r"(https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/_-]{20,})",
            23,
            0.0,
        ),
        (
            "stripe_key",
            &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
            false,
            r"\b([sr]k_(?:live|test)_[A-Za-z0-9]{16,})\b",
            8,
            0.0,
        ),
        (
            "google_api_key",
            &["AIza"],
            false,
            r"\b(AIza[0-9A-Za-z_-]{35})",
            4,
            0.0,
        ),
        (
            "private_key",
            &["PRIVATE KEY"],
            false,
            r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[^-]|-[^-])*(?:-----END [A-Z0-9 ]*PRIVATE KEY-----)?)",
            0,
            0.0,
        ),
        (
            "jwt",
            &["eyJ"],
            false,
            r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
            0,
            0.0,
        ),
        // The value must look like a credential (`credential_like`): not the prose of
        // `Bearer authentication is required`.
        (
            "authorization_header",
            &["authorization", "bearer", "basic "],
            true,
            r"(?i)(?:authorization\s*[:=]\s*(?:bearer|basic|token|bot)?\s*|\bbearer\s+|\bbasic\s+)([A-Za-z0-9._~+/-]{12,}=*)",
            0,
            2.5,
        ),
        // `scheme://user:PASSWORD@`, or a token alone as the userinfo
        // (`https://TOKEN@github.com`, checked by `credential_like`).
        (
            "url_password",
            &["://"],
            false,
            r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://(?:[^/\s:@]{1,128}:([^/\s@]{1,256})|([A-Za-z0-9._~-]{20,256}))@",
            0,
            0.0,
        ),
        (
            "npm_token",
            &["npm_"],
            false,
            r"\b(npm_[A-Za-z0-9]{36})\b",
            4,
            0.0,
        ),
        (
            "pypi_token",
            &["pypi-AgEIcHlwaS5vcmc"],
            false,
            r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})",
            5,
            0.0,
        ),
        (
            "azure_storage_key",
            &["AccountKey=", "SharedAccessSignature=", "sig="],
            false,
            r"(?:AccountKey=|SharedAccessSignature=|[?&]sig=)([A-Za-z0-9+/%=]{20,})",
            0,
            0.0,
        ),
        (
            "twilio_api_key",
            // `SK` and a hex digit: three-byte anchors keep the prefilter fast.
            &[
                "SK0", "SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8", "SK9", "SKa", "SKb",
                "SKc", "SKd", "SKe", "SKf",
            ],
            false,
            r"\b(SK[0-9a-f]{32})\b",
            2,
            0.0,
        ),
        (
            "sendgrid_api_key",
            &["SG."],
            false,
            r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
            3,
            0.0,
        ),
    ]
}

/// The compiled detectors of one configuration. Cheap to share (`Arc`).
pub struct Redactor {
    detectors: Vec<Detector>,
    /// Indices of the `secret_assignment` and `cli_credential` detectors, which share
    /// one scanner.
    assignment: Option<usize>,
    command_line: Option<usize>,
    generic: generic::Scanner,
    /// Case-sensitive anchors, searched in the line as it is.
    exact: anchors::AnchorSet,
    /// Case-insensitive anchors (lowercased), searched in a lowercased copy.
    folded: anchors::AnchorSet,
    /// Detectors without an anchor (custom patterns): run on every line.
    always: Vec<usize>,
    style: MaskStyle,
}

impl Redactor {
    /// `builtins`: use the built-in detectors; `custom`: named regexes (the whole match
    /// is the secret, or group 1 when present).
    pub fn new(
        builtins_on: bool,
        custom: &[(String, String)],
        style: MaskStyle,
    ) -> Result<Redactor, RedactError> {
        let mut detectors = Vec::new();
        if builtins_on {
            for (name, anchors, ci, re, keep, entropy) in builtins() {
                detectors.push(Detector {
                    name: name.to_owned(),
                    anchors: anchors.iter().map(|a| (*a).to_owned()).collect(),
                    case_insensitive_anchors: ci,
                    matcher: Matcher::Regex(Regex::new(re).expect("built-in pattern compiles")),
                    keep_prefix: keep,
                    min_entropy: entropy,
                });
            }
            for (name, matcher, anchors) in [
                (
                    "secret_assignment",
                    Matcher::Assignment,
                    generic::KEYWORDS.to_vec(),
                ),
                // Also run when a keyword names an option (`--password`): the
                // scanner serves both detectors.
                (
                    "cli_credential",
                    Matcher::CommandLine,
                    generic::TOOL_ANCHORS.to_vec(),
                ),
            ] {
                detectors.push(Detector {
                    name: name.to_owned(),
                    anchors: anchors.into_iter().map(str::to_owned).collect(),
                    case_insensitive_anchors: true,
                    matcher,
                    keep_prefix: 0,
                    min_entropy: 0.0,
                });
            }
        }
        for (name, pattern) in custom {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(RedactError::Name(name.clone()));
            }
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .build()
                .map_err(|e| RedactError::Pattern {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            if re.is_match("") {
                return Err(RedactError::Pattern {
                    name: name.clone(),
                    reason: "matches the empty string".into(),
                });
            }
            // Custom patterns have no literal anchor: they run on every line. The empty
            // anchor makes the prefilter always select them.
            detectors.push(Detector {
                name: name.clone(),
                anchors: vec![String::new()],
                case_insensitive_anchors: false,
                matcher: Matcher::Regex(re),
                keep_prefix: 0,
                min_entropy: 0.0,
            });
        }
        let (mut exact, mut folded) = (Vec::new(), Vec::new());
        for (i, d) in detectors.iter().enumerate() {
            for a in d.anchors.iter().filter(|a| !a.is_empty()) {
                if d.case_insensitive_anchors {
                    folded.push((a.to_ascii_lowercase().into_bytes(), i));
                } else {
                    exact.push((a.clone().into_bytes(), i));
                }
            }
        }
        let always = detectors
            .iter()
            .enumerate()
            .filter(|(_, d)| d.anchors.iter().any(String::is_empty))
            .map(|(i, _)| i)
            .collect();
        let find = |m: fn(&Matcher) -> bool| detectors.iter().position(|d| m(&d.matcher));
        let assignment = find(|m| matches!(m, Matcher::Assignment));
        let command_line = find(|m| matches!(m, Matcher::CommandLine));
        Ok(Redactor {
            detectors,
            assignment,
            command_line,
            generic: generic::Scanner::new(),
            exact: anchors::AnchorSet::new(&exact),
            folded: anchors::AnchorSet::new(&folded),
            always,
            style,
        })
    }

    /// The default: every built-in detector, stars.
    pub fn builtin() -> Redactor {
        Redactor::new(true, &[], MaskStyle::Stars).expect("built-ins compile")
    }

    /// Names of the detectors, for docs and metrics.
    pub fn detector_names(&self) -> Vec<&str> {
        self.detectors.iter().map(|d| d.name.as_str()).collect()
    }

    /// Finds secret spans in `line`: (start, end, detector index, kept prefix).
    fn spans(&self, line: &str) -> Vec<(usize, usize, usize)> {
        // Most lines match no anchor: nothing is allocated for them (the selection is a
        // bit set unless there are more than 128 detectors).
        let mut selected = Selected::new(self.detectors.len());
        for &i in &self.always {
            selected.set(i);
        }
        // Where the generic detectors' keywords are, for their scanner.
        let mut hits = generic::Hits::default();
        let mut hit = |owner: usize, start: usize, end: usize| {
            if Some(owner) == self.assignment {
                hits.keyword(start, end);
            } else if Some(owner) == self.command_line {
                hits.tool(start, end);
            }
            selected.set(owner);
        };
        self.exact.each(line.as_bytes(), &mut hit);
        anchors::with_folded(line.as_bytes(), |folded| self.folded.each(folded, &mut hit));
        if !selected.any() {
            return Vec::new();
        }
        let mut spans = Vec::new();
        let generic_selected = |i: Option<usize>| i.is_some_and(|i| selected.get(i));
        if generic_selected(self.assignment) || generic_selected(self.command_line) {
            let mut found = Vec::new();
            self.generic.scan(line, &hits, &mut found);
            for (s, e, which) in found {
                let owner = match which {
                    generic::Found::Assignment => self.assignment,
                    generic::Found::CommandLine => self.command_line,
                };
                if let Some(i) = owner {
                    spans.push((s, e, i));
                }
            }
        }
        for (i, d) in self
            .detectors
            .iter()
            .enumerate()
            .filter(|(i, _)| selected.get(*i))
        {
            let Matcher::Regex(re) = &d.matcher else {
                continue;
            };
            for caps in re.captures_iter(line) {
                // url_password's second form (a token alone as the userinfo) is group 2.
                let m = caps
                    .get(1)
                    .or_else(|| caps.get(2).filter(|_| d.name == "url_password"))
                    .or_else(|| caps.get(0))
                    .expect("group 0");
                if m.as_str().chars().all(|c| c == '*') {
                    continue; // already masked
                }
                if d.min_entropy > 0.0 && generic::entropy(m.as_str()) < d.min_entropy {
                    continue;
                }
                // Prose after `Bearer`, a word as a URL's user: not credentials.
                let token_only = d.name == "url_password" && caps.get(1).is_none();
                if (d.name == "authorization_header" || token_only)
                    && !generic::credential_like(m.as_str())
                {
                    continue;
                }
                if token_only && generic::entropy(m.as_str()) < 3.0 {
                    continue;
                }
                let start = m.start() + d.keep_prefix.min(m.len());
                if start < m.end() {
                    spans.push((start, m.end(), i));
                }
            }
        }
        spans
    }

    /// Masks secrets in `line`; borrows when nothing matched.
    ///
    /// Masking can shift what a generic detector sees (`password=password=ghp_…`), so
    /// passes repeat until the line stops changing: redacting twice equals once.
    pub fn redact<'a>(&self, line: &'a str, state: &mut RedactionState) -> Cow<'a, str> {
        let spans = self.named_spans(line);
        if spans.is_empty() {
            return Cow::Borrowed(line);
        }
        let mut out = apply(line, spans, self.style, state);
        for _ in 0..MAX_PASSES {
            let spans = self.named_spans(&out);
            if spans.is_empty() {
                break;
            }
            out = apply(&out, spans, self.style, state);
        }
        Cow::Owned(out)
    }

    fn named_spans(&self, line: &str) -> Vec<(usize, usize, &str)> {
        self.spans(line)
            .into_iter()
            .map(|(s, e, i)| (s, e, self.detectors[i].name.as_str()))
            .collect()
    }
}

/// Which detectors a line's anchors selected.
enum Selected {
    Bits(u128),
    Many(Vec<bool>),
}

impl Selected {
    fn new(detectors: usize) -> Selected {
        if detectors <= 128 {
            Selected::Bits(0)
        } else {
            Selected::Many(vec![false; detectors])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Selected::Bits(b) => *b |= 1 << i,
            Selected::Many(v) => v[i] = true,
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Selected::Bits(b) => *b & (1 << i) != 0,
            Selected::Many(v) => v[i],
        }
    }

    fn any(&self) -> bool {
        match self {
            Selected::Bits(b) => *b != 0,
            Selected::Many(v) => v.contains(&true),
        }
    }
}

/// Passes after the first; masking only turns characters into `*` or a bracketed
/// label that no detector matches, so this converges well before the bound.
const MAX_PASSES: usize = 8;

/// Replaces the union of `spans` (merged when they overlap) and counts each detector.
fn apply(
    line: &str,
    mut spans: Vec<(usize, usize, &str)>,
    style: MaskStyle,
    state: &mut RedactionState,
) -> String {
    spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    let mut counted: BTreeMap<&str, u32> = BTreeMap::new();
    let mut i = 0;
    while i < spans.len() {
        let (start, mut end, name) = spans[i];
        let mut names = vec![name];
        i += 1;
        while i < spans.len() && spans[i].0 < end {
            end = end.max(spans[i].1);
            if !names.contains(&spans[i].2) {
                names.push(spans[i].2);
            }
            i += 1;
        }
        let start = start.max(pos);
        if start >= end {
            continue;
        }
        out.push_str(&line[pos..start]);
        match style {
            MaskStyle::Stars => {
                out.extend(std::iter::repeat_n('*', line[start..end].chars().count()))
            }
            MaskStyle::Label => {
                out.push_str("[REDACTED:");
                out.push_str(name);
                out.push(']');
            }
        }
        for n in names {
            *counted.entry(n).or_default() += 1;
        }
        pos = end;
    }
    out.push_str(&line[pos..]);
    for (name, n) in counted {
        state.add(name, n);
    }
    out
}

/// Per-stream redaction state: registered values, `::add-mask::` commands and PEM
/// blocks that span lines.
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    /// Registered secret values and their encodings.
    masks: Vec<String>,
    masks_ac: Option<AhoCorasick>,
    /// Inside a PEM private key block that began on an earlier line.
    in_pem: bool,
}

impl StreamRedactor {
    pub fn new(redactor: Arc<Redactor>) -> StreamRedactor {
        StreamRedactor {
            redactor,
            masks: Vec::new(),
            masks_ac: None,
            in_pem: false,
        }
    }

    /// Registers a value to mask (a CI secret), with its base64, URL- and JSON-escaped
    /// forms.
    pub fn add_mask(&mut self, value: &str) -> Result<(), RedactError> {
        if value.len() < 4 || value.len() > 4096 {
            return Err(RedactError::SecretLength);
        }
        for v in encodings(value) {
            if v.len() >= 4 && !self.masks.contains(&v) {
                self.masks.push(v);
            }
        }
        // Longest first so the longest encoding wins where they overlap.
        self.masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
        self.masks_ac = Some(
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&self.masks)
                .expect("masks build"),
        );
        Ok(())
    }

    /// Redacts a value that is not a line of the stream (an OTLP attribute, a label):
    /// the same detectors and registered secrets, every line of it, a PEM block masked
    /// to the value's end when it does not close; the stream's own PEM state is left as
    /// it was.
    pub fn redact_value(&mut self, value: &str, state: &mut RedactionState) -> String {
        let outer = std::mem::replace(&mut self.in_pem, false);
        let out: Vec<String> = value
            .split('\n')
            .map(|l| self.redact(l, state).into_owned())
            .collect();
        self.in_pem = outer;
        out.join("\n")
    }

    /// Redacts one line of this stream; borrows when there is nothing to mask.
    pub fn redact<'a>(&mut self, line: &'a str, state: &mut RedactionState) -> Cow<'a, str> {
        if !self.in_pem
            && !line.contains("::add-mask::")
            && !line.contains("PRIVATE KEY-----")
            && self.redactor.spans(line).is_empty()
            && self
                .masks_ac
                .as_ref()
                .is_none_or(|ac| ac.find(line).is_none())
        {
            return Cow::Borrowed(line);
        }
        Cow::Owned(self.redact_owned(line, state))
    }

    fn redact_owned(&mut self, line: &str, state: &mut RedactionState) -> String {
        // GitHub Actions' `::add-mask::VALUE`: register, and never emit the value.
        if let Some(rest) = line.trim_start().strip_prefix("::add-mask::") {
            let value = rest.trim_end();
            if self.add_mask(value).is_ok() {
                state.add("add_mask", 1);
                return "::add-mask::***".to_owned();
            }
        }
        if self.in_pem {
            if let Some(end) = line.find("-----END ") {
                self.in_pem = false;
                let tail_end = line[end..]
                    .find("PRIVATE KEY-----")
                    .map_or(line.len(), |i| end + i + "PRIVATE KEY-----".len());
                let rest = self.redact_owned(&line[tail_end..], state);
                state.add("private_key", 1);
                return format!("{}{}", "*".repeat(line[..tail_end].chars().count()), rest);
            }
            state.add("private_key", 1);
            return "*".repeat(line.chars().count());
        }
        if line.contains("PRIVATE KEY-----")
            && line.contains("-----BEGIN ")
            && !line.contains("-----END ")
        {
            self.in_pem = true;
        }
        let mut out = line.to_owned();
        for _ in 0..=MAX_PASSES {
            let mut spans = self.redactor.named_spans(&out);
            if let Some(ac) = &self.masks_ac {
                spans.extend(
                    ac.find_iter(&out)
                        .map(|m| (m.start(), m.end(), "registered_secret")),
                );
            }
            if spans.is_empty() {
                break;
            }
            out = apply(&out, spans, self.redactor.style, state);
        }
        out
    }
}

fn encodings(v: &str) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    // Unpadded: a prefix of every padded spelling.
    out.push(crate::b64::encode(v.as_bytes(), crate::b64::STANDARD));
    let url: String = v
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    out.push(url);
    let json = serde_json::to_string(v).expect("string serialises");
    out.push(json[1..json.len() - 1].to_owned());
    out
}
