//! Log levels and their detection from a line's text.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Severity of a line. `Unknown` when the text carries no recognisable level (most plain
/// build output), which is different from `Info`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Fatal = 5,
    #[default]
    Unknown = 6,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
        Level::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
            Level::Unknown => "unknown",
        }
    }

    /// Stable numeric code used by storage formats.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Level> {
        Level::ALL.get(code as usize).copied()
    }

    /// Parses a level name as users and log libraries spell it (`warn`, `WARNING`,
    /// `err`, `critical`, ...). Case-insensitive.
    pub fn parse(name: &str) -> Option<Level> {
        if name.len() > 11 {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "trace" | "trc" | "silly" | "sill" | "verbose" | "finest" => Level::Trace,
            "debug" | "dbg" => Level::Debug,
            "info" | "inf" | "information" | "informational" | "notice" => Level::Info,
            "warn" | "warning" | "wrn" => Level::Warn,
            "error" | "err" | "severe" => Level::Error,
            "fatal" | "critical" | "crit" | "panic" | "emerg" | "emergency" | "alert" => {
                Level::Fatal
            }
            "unknown" => Level::Unknown,
            _ => return None,
        })
    }

    /// Detects the level of a line from its text.
    ///
    /// Recognised, in this order (ANSI colour codes are ignored for detection):
    /// 1. JSON objects with a `level`, `severity`, `lvl` or `loglevel` key (string names or
    ///    pino/bunyan numbers 10..60);
    /// 2. logfmt `level=`, `lvl=` or `severity=`;
    /// 3. glog/klog prefixes `E1123 10:00:00.000000 ...` (`I`, `W`, `E`, `F`);
    /// 4. a level word among the first words of the line: upper case anywhere there
    ///    (`INFO`, `WARN:`), any case when bracketed (`[error]`, `<warn>`), capitalised
    ///    (`Info`) within the first four words, lower case when it starts the line or
    ///    follows `path:` or `npm` and is followed by `:` or `[` (`error[E0308]:`,
    ///    `main.c:3: warning:`, `npm warn`), apt's `E:`/`W:`, and logcat's single-letter
    ///    `V/D/I/W/E/F` after the pid columns.
    pub fn detect(message: &str) -> Level {
        let text = strip_ansi(message);
        let text = text.trim_start();
        if text.starts_with('{')
            && let Some(level) = json_level(text)
        {
            return level;
        }
        if let Some(level) = logfmt_level(text) {
            return level;
        }
        if let Some(level) = glog_level(text) {
            return level;
        }
        word_level(text).unwrap_or(Level::Unknown)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \\`,
/// charset designations `ESC ( x`, and two-byte `ESC x`); borrows when there are none.
/// Level detection reads through it, and `kubectl logstream logs --strip-ansi` prints
/// through it.
pub fn strip_ansi(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e.
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // OSC: up to BEL or ESC \.
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        chars.next();
                        break;
                    }
                }
            }
            // Character set designation: `ESC ( B` and the like.
            Some('(' | ')' | '*' | '+') => {
                chars.next();
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

fn json_level(text: &str) -> Option<Level> {
    for key in [
        "\"level\"",
        "\"severity\"",
        "\"lvl\"",
        "\"loglevel\"",
        "\"log.level\"",
    ] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(key) {
            let rest = text[from + pos + key.len()..].trim_start();
            from += pos + key.len();
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                let end = rest.find('"')?;
                if let Some(level) = Level::parse(&rest[..end]) {
                    return Some(level);
                }
            } else {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(n) = digits.parse::<u32>() {
                    return Some(match n {
                        10..=19 => Level::Trace,
                        20..=29 => Level::Debug,
                        30..=39 => Level::Info,
                        40..=49 => Level::Warn,
                        50..=59 => Level::Error,
                        60..=69 => Level::Fatal,
                        _ => continue,
                    });
                }
            }
        }
    }
    None
}

fn logfmt_level(text: &str) -> Option<Level> {
    for key in ["level=", "lvl=", "severity="] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(key) {
            let at = from + pos;
            from = at + key.len();
            if at > 0 && !text.as_bytes()[at - 1].is_ascii_whitespace() {
                continue;
            }
            let value = text[from..].trim_start_matches('"');
            let end = value
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(value.len());
            if let Some(level) = Level::parse(&value[..end]) {
                return Some(level);
            }
        }
    }
    None
}

fn glog_level(text: &str) -> Option<Level> {
    let b = text.as_bytes();
    if b.len() < 6 || !b[1..5].iter().all(u8::is_ascii_digit) || b[5] != b' ' {
        return None;
    }
    match b[0] {
        b'I' => Some(Level::Info),
        b'W' => Some(Level::Warn),
        b'E' => Some(Level::Error),
        b'F' => Some(Level::Fatal),
        _ => None,
    }
}

/// How many leading words `word_level` looks at.
const MAX_WORDS: usize = 16;
/// How many leading bytes `word_level` looks at.
const MAX_PREFIX: usize = 256;

fn word_level(text: &str) -> Option<Level> {
    let mut cut = text.len().min(MAX_PREFIX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let window = &text[..cut];
    let mut prev: Option<&str> = None;
    for (index, word) in window.split_ascii_whitespace().take(MAX_WORDS).enumerate() {
        if let Some(level) = word_is_level(word, index, prev) {
            return Some(level);
        }
        prev = Some(word);
    }
    None
}

fn word_is_level(word: &str, index: usize, prev: Option<&str>) -> Option<Level> {
    // apt's "E: ..." / "W: ..." at the start of a line.
    if index == 0 {
        match word {
            "E:" => return Some(Level::Error),
            "W:" => return Some(Level::Warn),
            _ => {}
        }
    }
    // logcat threadtime: "03-17 16:13:38.811  1702  2395 D WindowManager: ..."
    if word.len() == 1 && prev.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) && index >= 3
    {
        return match word {
            "V" => Some(Level::Trace),
            "D" => Some(Level::Debug),
            "I" => Some(Level::Info),
            "W" => Some(Level::Warn),
            "E" => Some(Level::Error),
            "F" | "A" => Some(Level::Fatal),
            _ => None,
        };
    }
    let (open, inner) = match word.as_bytes().first() {
        Some(b'[') => (Some(b']'), &word[1..]),
        Some(b'<') => (Some(b'>'), &word[1..]),
        Some(b'(') => (Some(b')'), &word[1..]),
        _ => (None, word),
    };
    let core_len = inner.bytes().take_while(u8::is_ascii_alphabetic).count();
    if !(3..=11).contains(&core_len) {
        return None;
    }
    let core = &inner[..core_len];
    let after = &inner.as_bytes()[core_len..];
    let level = Level::parse(core)?;
    if level == Level::Unknown {
        return None;
    }
    let bracketed = open.is_some_and(|close| after.first() == Some(&close));
    if open.is_some() && !bracketed {
        return None;
    }
    match after.first() {
        None | Some(b']' | b':' | b'>' | b')' | b'|' | b'[' | b',') => {}
        Some(_) => return None,
    }
    let upper = core.bytes().all(|b| b.is_ascii_uppercase());
    let capitalised = core.as_bytes()[0].is_ascii_uppercase()
        && core.bytes().skip(1).all(|b| b.is_ascii_lowercase());
    let colon_or_code = matches!(after.first(), Some(b':' | b'['));
    let accept = bracketed
        || upper
        || (capitalised && index < 4)
        || (colon_or_code && (index == 0 || prev.is_some_and(|p| p.ends_with(':'))))
        || prev == Some("npm");
    accept.then_some(level)
}

/// A set of levels, as a bitmask over `Level::code()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelSet(u8);

impl LevelSet {
    pub const ALL: LevelSet = LevelSet(0x7f);
    pub const EMPTY: LevelSet = LevelSet(0);

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> LevelSet {
        LevelSet(bits & 0x7f)
    }

    pub fn with(self, level: Level) -> LevelSet {
        LevelSet(self.0 | (1 << level.code()))
    }

    pub fn contains(self, level: Level) -> bool {
        self.0 & (1 << level.code()) != 0
    }

    pub fn union(self, other: LevelSet) -> LevelSet {
        LevelSet(self.0 | other.0)
    }

    pub fn intersects(self, other: LevelSet) -> bool {
        self.0 & other.0 != 0
    }

    /// `level` and every more severe known level (`warn+` = warn, error, fatal).
    pub fn at_least(level: Level) -> LevelSet {
        Level::ALL
            .iter()
            .filter(|l| **l != Level::Unknown && **l >= level)
            .fold(LevelSet::EMPTY, |set, l| set.with(*l))
    }

    /// Parses `warn+`, `error`, `warn,error`, `info+,unknown`.
    pub fn parse(spec: &str) -> Option<LevelSet> {
        let mut set = LevelSet::EMPTY;
        for part in spec.split(',').map(str::trim) {
            if let Some(name) = part.strip_suffix('+') {
                set = set.union(LevelSet::at_least(Level::parse(name)?));
            } else {
                set = set.with(Level::parse(part)?);
            }
        }
        Some(set)
    }
}

impl Default for LevelSet {
    fn default() -> Self {
        LevelSet::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines and the level they carry, in the formats real pipelines print.
    pub(crate) fn valid_cases() -> Vec<(&'static str, Level)> {
        vec![
            (r#"{"level":"warn","msg":"disk almost full"}"#, Level::Warn),
            (r#"{"ts":1,"severity":"ERROR","message":"x"}"#, Level::Error),
            (r#"{"lvl": "dbg", "m": 1}"#, Level::Debug),
            (r#"{"level":30,"msg":"pino"}"#, Level::Info),
            (r#"{"level":50,"msg":"pino"}"#, Level::Error),
            (
                "ts=2024-01-01T00:00:00Z level=error msg=\"boom\"",
                Level::Error,
            ),
            ("time=now lvl=warn msg=x", Level::Warn),
            ("E1123 10:00:00.123456  1 main.go:3] failed", Level::Error),
            ("W0101 00:00:00.000000 1 x.go:1] careful", Level::Warn),
            ("[ERROR] connection refused", Level::Error),
            ("2024-01-01 12:00:00 [warn] slow", Level::Warn),
            ("WARN: deprecated flag", Level::Warn),
            ("2015-10-18 18:01:47,978 INFO [main] started", Level::Info),
            ("error[E0308]: mismatched types", Level::Error),
            ("warning: unused variable: `x`", Level::Warn),
            ("src/main.c:3:5: error: expected ';'", Level::Error),
            ("npm warn deprecated inflight@1.0.6", Level::Warn),
            ("npm verbose cli /usr/bin/node", Level::Trace),
            ("E: Unable to locate package foo", Level::Error),
            (
                "03-17 16:13:38.811  1702  2395 D WindowManager: x",
                Level::Debug,
            ),
            ("\x1b[31mERROR\x1b[0m build failed", Level::Error),
            ("\x1b[1;33mwarning\x1b[0m: colored", Level::Warn),
            (
                "2016-09-28 04:30:30, Info                  CBS    Loaded",
                Level::Info,
            ),
            ("panic: runtime error: index out of range", Level::Fatal),
            ("Compiling serde v1.0.0", Level::Unknown),
            ("instruction cache parity error corrected", Level::Unknown),
            ("no errors found, 0 warnings", Level::Unknown),
            ("the INFORMATIONAL_X flag", Level::Unknown),
            ("ERR_CONNECTION_RESET while fetching", Level::Unknown),
            ("", Level::Unknown),
        ]
    }

    #[test]
    fn detects_levels_in_common_formats() {
        for (line, want) in valid_cases() {
            assert_eq!(Level::detect(line), want, "line {line:?}");
        }
    }

    #[test]
    fn ansi_codes_are_stripped_for_detection_only() {
        assert_eq!(strip_ansi("\x1b[31mred\x1b[0m plain"), "red plain");
        assert_eq!(strip_ansi("\x1b]0;title\x07text"), "text");
        assert!(matches!(strip_ansi("plain"), Cow::Borrowed(_)));
        assert_eq!(
            strip_ansi("\x1b]8;;https://x.dev\x07link\x1b]8;;\x07 done"),
            "link done"
        );
        assert_eq!(strip_ansi("\x1b]0;title\x1b\\ok"), "ok");
        assert_eq!(strip_ansi("\x1b(Bplain\x1b="), "plain");
        assert_eq!(strip_ansi("no escapes é"), "no escapes é");
    }

    #[test]
    fn level_sets_parse_ranges_and_lists() {
        let warn_up = LevelSet::parse("warn+").unwrap();
        assert!(warn_up.contains(Level::Warn) && warn_up.contains(Level::Fatal));
        assert!(!warn_up.contains(Level::Info) && !warn_up.contains(Level::Unknown));
        let list = LevelSet::parse("debug, unknown").unwrap();
        assert!(list.contains(Level::Debug) && list.contains(Level::Unknown));
        assert!(!list.contains(Level::Error));
        assert_eq!(LevelSet::parse("loud"), None);
        assert_eq!(LevelSet::parse(""), None);
    }
}
