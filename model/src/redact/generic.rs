//! Secrets without a format of their own, found by what names them.
//!
//! Two detectors share this scanner:
//!
//! - `secret_assignment`: `NAME = VALUE` in the forms logs print (env listings,
//!   `export`/`set`/`declare -x`, YAML, JSON, .env, logfmt, properties), where NAME holds
//!   a secret word anywhere (`SECRET_KEY_BASE`, `DB_PASSWORD_PROD`, `stripeApiKeyLive`).
//! - `cli_credential`: credentials passed as command-line options, as `set -x` echoes them
//!   or tools print their invocation: long options named for a secret (`--password`,
//!   `--registry-password=`, `-storepass`, `-Drepo.password=`), short options that mean a
//!   password for the tool that takes them (`docker login -p`, `mysql -pVALUE`,
//!   `sshpass -p`, `curl -u user:VALUE`), `config set NAME VALUE`, the argument of
//!   `cargo login`/`vault login`, and a value echoed into a `--password-stdin` pipe.
//!
//! Like gitleaks' `generic-api-key` rule (keyword in the name, stop words, entropy) the
//! name decides whether a value is a secret and the value must then look like one: not a
//! reference (`$VAR`, `${{ secrets.X }}`, `{{ .Values.x }}`), a mask (`***`,
//! `<redacted>`), a path, a boolean, a number where a length or port is meant, or prose.
//! A name whose secret word is followed by a word that says the value is *about* the
//! secret (`PASSWORD_MIN_LENGTH`, `--password-file`, `TOKEN_TTL`, `SECRET_NAME`) holds
//! no secret.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Substrings (any case) of every secret word a name can hold; the prefilter's anchors.
pub(super) const KEYWORDS: &[&str] = &["pass", "pwd", "secret", "token", "key", "cred", "auth"];

/// Command words that give short options or arguments a secret meaning; anchors of
/// `cli_credential` besides [`KEYWORDS`]. Every anchor is at least three bytes long, which
/// keeps the prefilter fast (`7z` is spelled with what can follow it).
pub(super) const TOOL_ANCHORS: &[&str] = &[
    "login",
    "mysql",
    "mariadb",
    "sshpass",
    "twine",
    "mongo",
    "redis-cli",
    "sqlcmd",
    "bcp",
    "zip",
    "7z ",
    "7z\t",
    "7z'",
    "7z\"",
    "7za",
    "7zr",
    "7z.",
    "unrar",
    "ldap",
    "smbclient",
    "curl",
    "ssh-keygen",
    "openssl",
    "codecov",
    "nuget",
    "config",
    "snyk",
];

/// Which detector found a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Assignment,
    CommandLine,
}

/// How much a name says about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// A password: any value but a placeholder, reference, mask, path or prose.
    Password,
    /// A token, key, secret or credential: the value must also look like one
    /// (length, no pure number, entropy).
    Credential,
}

/// What the prefilter saw of the generic detectors' anchors in a line: where the
/// keywords are (the first 16, in the order found) and where tool words are (the
/// first 4).
#[derive(Default)]
pub(super) struct Hits {
    keywords: [(usize, usize); 16],
    len: usize,
    /// More than 16 keywords: the scanner finds them again itself.
    overflow: bool,
    tools: [(usize, usize); 4],
    tools_len: usize,
    /// More than 4 tool words: the line is read as a command line.
    many_tools: bool,
}

impl Hits {
    pub(super) fn keyword(&mut self, s: usize, e: usize) {
        if self.len == self.keywords.len() {
            self.overflow = true;
        } else {
            self.keywords[self.len] = (s, e);
            self.len += 1;
        }
    }

    pub(super) fn tool(&mut self, s: usize, e: usize) {
        if self.tools_len == self.tools.len() {
            self.many_tools = true;
        } else {
            self.tools[self.tools_len] = (s, e);
            self.tools_len += 1;
        }
    }
}

/// Whether the tool anchor at `[s, e)` is part of a word that is a command the walk
/// knows (`mysql`, `/usr/bin/curl`, `login`), not of another word (`Configuration`,
/// `gzip`).
fn command_at(line: &str, mut s: usize, mut e: usize) -> bool {
    let b = line.as_bytes();
    let word_byte = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    // An anchor may end with what follows the word (`7z `).
    while e > s && !word_byte(b[e - 1]) {
        e -= 1;
    }
    while s > 0 && word_byte(b[s - 1]) {
        s -= 1;
    }
    while e < b.len() && word_byte(b[e]) {
        e += 1;
    }
    let w = command_word(&line[s..e]);
    known_command(w).is_some()
        || w.eq_ignore_ascii_case("config")
        || w.eq_ignore_ascii_case("configure")
}

pub(super) struct Scanner {
    /// KEYWORDS, ASCII case-insensitive, overlapping: for lines with many.
    keywords: AhoCorasick,
}

impl Scanner {
    pub(super) fn new() -> Scanner {
        let keywords = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(KEYWORDS)
            .expect("keywords build");
        Scanner { keywords }
    }

    /// Appends the secret spans of `line` to `out`, given the prefilter's `hits`.
    pub(super) fn scan(&self, line: &str, hits: &Hits, out: &mut Vec<(usize, usize, Found)>) {
        let bytes = line.as_bytes();
        let mut done_until = 0;
        let mut command_line = hits.many_tools
            || hits.tools[..hits.tools_len]
                .iter()
                .any(|&(s, e)| command_at(line, s, e));
        let mut keyword = |s: usize, e: usize| {
            if s < done_until {
                return;
            }
            let (ns, ne) = ident_around(bytes, s, e);
            done_until = ne;
            if bytes[ns] == b'-' {
                command_line = true;
            } else if let Some((vs, ve)) = assignment(line, ns, ne) {
                out.push((vs, ve, Found::Assignment));
            }
        };
        if hits.overflow {
            for m in self.keywords.find_overlapping_iter(line) {
                keyword(m.start(), m.end());
            }
        } else {
            for &(s, e) in &hits.keywords[..hits.len] {
                keyword(s, e);
            }
        }
        if command_line {
            let toks = tokenize(line, 0, line.len());
            walk(line, &toks, out, 0);
        }
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// The identifier (`[A-Za-z0-9_.-]+`) around `[s, e)`.
fn ident_around(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s > 0 && is_ident(b[s - 1]) {
        s -= 1;
    }
    while e < b.len() && is_ident(b[e]) {
        e += 1;
    }
    // A name does not end with the dot of a sentence.
    while e > s + 1 && b[e - 1] == b'.' {
        e -= 1;
    }
    (s, e)
}

// ------------------------------------------------------------------------------------
// Names
// ------------------------------------------------------------------------------------

/// Words after the secret word that make the value something *about* the secret.
const ABOUT: &[&str] = &[
    "length",
    "len",
    "min",
    "max",
    "minlength",
    "maxlength",
    "size",
    "bits",
    "count",
    "limit",
    "file",
    "files",
    "filename",
    "path",
    "paths",
    "dir",
    "directory",
    "folder",
    "location",
    "url",
    "uri",
    "urls",
    "endpoint",
    "host",
    "hostname",
    "port",
    "name",
    "names",
    "id",
    "ids",
    "arn",
    "type",
    "kind",
    "policy",
    "policies",
    "rule",
    "rules",
    "expiry",
    "expires",
    "expire",
    "expiration",
    "exp",
    "ttl",
    "timeout",
    "lifetime",
    "age",
    "duration",
    "interval",
    "period",
    "at",
    "time",
    "timestamp",
    "date",
    "ref",
    "env",
    "var",
    "variable",
    "field",
    "header",
    "param",
    "parameter",
    "prefix",
    "suffix",
    "format",
    "mode",
    "method",
    "provider",
    "helper",
    "manager",
    "enabled",
    "enable",
    "disabled",
    "disable",
    "required",
    "require",
    "strength",
    "complexity",
    "algorithm",
    "algo",
    "alg",
    "version",
    "retries",
    "attempts",
    "regex",
    "pattern",
    "label",
    "description",
    "desc",
    "hint",
    "prompt",
    "placeholder",
    "source",
    "src",
    "stdin",
    "fd",
    "cmd",
    "command",
    "script",
    "mount",
    "template",
    "schema",
    "digest",
    "checksum",
    "rotation",
    "reset",
    "changed",
    "set",
    "exists",
    "present",
    "provided",
    "configured",
    "missing",
    "status",
    "state",
    "error",
    "index",
    "idx",
    "num",
    "number",
    "level",
    "scope",
    "scopes",
    "audience",
    "aud",
    "issuer",
    "iss",
    "claim",
    "claims",
    "usage",
    "valid",
    "validity",
    "validation",
    "encoding",
    "generator",
    "output",
    "input",
    "lookup",
    "sock",
    "socket",
    "store",
    "storage",
    "keyring",
    "vault",
    "ssm",
    "secretsmanager",
    "mgr",
];

/// First words of an option that is a switch, not a value (`--no-password`,
/// `--with-token`).
const SWITCH: &[&str] = &[
    "no", "with", "without", "use", "enable", "disable", "skip", "allow", "require", "show",
    "hide", "ignore", "prompt", "ask", "save", "read", "from", "insecure", "print",
];

/// Words before `key` that make it a secret key (`API_KEY`, `signingKey`).
const KEY_KINDS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "signing",
    "sign",
    "encryption",
    "encrypt",
    "master",
    "client",
    "account",
    "auth",
    "license",
    "licence",
    "deploy",
    "ssh",
    "service",
    "shared",
    "sas",
    "subscription",
    "admin",
    "root",
    "session",
    "webhook",
    "hmac",
    "jwt",
    "crypto",
    "cipher",
    "aes",
    "consumer",
    "app",
    "application",
    "ingest",
    "write",
    "gpg",
    "pgp",
];

/// Words that may follow `auth` in a name that holds a credential (`DB_AUTH_PROD`):
/// environments, versions, `value`. Any other (`AuthFail`, `auth_method`) makes `auth`
/// mean authentication, not a credential.
const QUALIFIERS: &[&str] = &[
    "prod",
    "production",
    "live",
    "test",
    "testing",
    "staging",
    "stage",
    "dev",
    "development",
    "qa",
    "uat",
    "new",
    "old",
    "current",
    "value",
    "base",
    "string",
    "str",
    "data",
    "default",
    "main",
    "primary",
    "secondary",
    "local",
    "remote",
    "ci",
    "v",
];

/// Words ending in `pass` that hold no password.
const NOT_PASS: &[&str] = &[
    "bypass",
    "compass",
    "surpass",
    "trespass",
    "encompass",
    "overpass",
    "underpass",
];

/// Splits a name into lowercase words: at non-alphanumerics, camelCase humps and
/// letter/digit changes (`stripeApiKeyLive2` -> stripe api key live 2). Calls `f`
/// with each word (at most 48 bytes; longer ones are cut).
fn words(name: &str, mut f: impl FnMut(&str)) {
    let b = name.as_bytes();
    let mut buf = [0u8; 48];
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            let (p, c) = (b[i - 1], b[i]);
            let hump = p.is_ascii_lowercase() && c.is_ascii_uppercase();
            let acronym_end = p.is_ascii_uppercase()
                && c.is_ascii_uppercase()
                && b.get(i + 1).is_some_and(u8::is_ascii_lowercase);
            let digit_change = p.is_ascii_digit() != c.is_ascii_digit();
            if hump || digit_change {
                break;
            }
            if acronym_end {
                i += 1;
                break;
            }
            i += 1;
        }
        // `APIKey`: the acronym ends before the hump's capital.
        let mut end = i;
        if end - start >= 3
            && b[end - 1].is_ascii_uppercase()
            && b.get(end).is_some_and(u8::is_ascii_lowercase)
        {
            end -= 1;
            i = end;
        }
        let n = (end - start).min(buf.len());
        for (d, s) in buf.iter_mut().zip(&b[start..start + n]) {
            *d = s.to_ascii_lowercase();
        }
        f(std::str::from_utf8(&buf[..n]).expect("ASCII"));
    }
}

/// The strength of a secret word, given the word before it.
fn secret_word(w: &str, prev: &str, option: bool) -> Option<Strength> {
    if w.contains("password") || w.contains("passwd") || w.contains("passphrase") {
        return Some(Strength::Password);
    }
    if w == "pwd" || w.ends_with("pwd") && w != "oldpwd" {
        return Some(Strength::Password);
    }
    if (w == "pass" && (option || !prev.is_empty()))
        || (w.len() > 4 && w.ends_with("pass") && !NOT_PASS.contains(&w))
        || (option && (w == "passin" || w == "passout"))
    {
        return Some(Strength::Password);
    }
    if (w.contains("secret") && !w.starts_with("secretar"))
        || w == "token"
        || w.ends_with("token")
        || w.contains("credential")
        || w == "creds"
        || w.ends_with("creds")
        || w.ends_with("apikey")
    {
        return Some(Strength::Credential);
    }
    if w == "key" && KEY_KINDS.contains(&prev) {
        return Some(Strength::Credential);
    }
    if w.len() > 3 && w.ends_with("key") && KEY_KINDS.contains(&&w[..w.len() - 3]) {
        return Some(Strength::Credential);
    }
    None
}

/// Whether `name` holds a secret, and how strongly it says so. `option`: the name of a
/// command-line option (without its dashes).
fn classify(name: &str, option: bool) -> Option<Strength> {
    if name.eq_ignore_ascii_case("pwd") || name.eq_ignore_ascii_case("oldpwd") {
        return None;
    }
    let mut found: Option<Strength> = None;
    let mut about_after = false;
    // `auth` seen, and only qualifiers after it so far.
    let mut auth_last = false;
    let mut first = true;
    let mut switch = false;
    let mut prev = [0u8; 48];
    let mut prev_len = 0;
    words(name, |w| {
        if first && option && SWITCH.contains(&w) {
            switch = true;
        }
        first = false;
        let p = std::str::from_utf8(&prev[..prev_len]).unwrap_or("");
        if let Some(s) = secret_word(w, p, option) {
            found = Some(s);
            about_after = false;
            auth_last = false;
        } else if w == "auth" || w.ends_with("auth") {
            auth_last = true;
            about_after = false;
        } else {
            if auth_last && !QUALIFIERS.contains(&w) && !w.bytes().all(|c| c.is_ascii_digit()) {
                auth_last = false;
            }
            if found.is_some() && ABOUT.contains(&w) {
                about_after = true;
            }
        }
        prev_len = w.len();
        prev[..prev_len].copy_from_slice(w.as_bytes());
    });
    if switch || about_after {
        return None;
    }
    if auth_last {
        return Some(Strength::Credential);
    }
    found
}

// ------------------------------------------------------------------------------------
// Values
// ------------------------------------------------------------------------------------

const VOWELS: &[u8] = b"aeiouyAEIOUY";

/// A chunk of letters shaped like a word of prose: 1 to 15 letters, a vowel, no run of
/// five consonants (`authentication`, `Bearer`, `API`; not `qzXvbT`).
fn wordlike(chunk: &[u8]) -> bool {
    if chunk.is_empty() || chunk.len() > 15 {
        return false;
    }
    if chunk.len() == 1 {
        return VOWELS.contains(&chunk[0]) || chunk[0].is_ascii_uppercase();
    }
    let mut run = 0;
    let mut vowels = 0;
    for &c in chunk {
        if VOWELS.contains(&c) {
            vowels += 1;
            run = 0;
        } else {
            run += 1;
            if run >= 5 {
                return false;
            }
        }
    }
    // Short words may be vowel-poor (`htpasswd`); long ones are not.
    vowels > 0 && (chunk.len() <= 10 || vowels * 5 >= chunk.len())
}

/// Prose or an identifier rather than a credential: every alphanumeric run is letters
/// in word shapes (lower, Capitalized, UPPER or CamelCase of such words).
pub(super) fn prose_like(v: &str) -> bool {
    let b = v.as_bytes();
    // A password symbol between two alphanumerics (`Igo!yuDug`, `a#b`) is not prose,
    // however word-shaped the letters around it are.
    if b.windows(3).any(|w| {
        w[0].is_ascii_alphanumeric()
            && w[2].is_ascii_alphanumeric()
            && b"!@#$%^&*+=~?|;".contains(&w[1])
    }) {
        return false;
    }
    // Nor one inside the value at all (`cvel^_aIlE`): prose has no `^` or `|` mid-word.
    if b.len() > 2 && b[1..b.len() - 1].iter().any(|c| b"^|~".contains(c)) {
        return false;
    }
    let mut any = false;
    for run in b.split(|c| !c.is_ascii_alphanumeric()) {
        if run.is_empty() {
            continue;
        }
        any = true;
        if !run.iter().all(u8::is_ascii_alphabetic) {
            return false;
        }
        // CamelCase humps.
        let mut s = 0;
        for i in 1..=run.len() {
            if i == run.len() || run[i - 1].is_ascii_lowercase() && run[i].is_ascii_uppercase() {
                let chunk = &run[s..i];
                let upper = chunk.iter().all(u8::is_ascii_uppercase);
                let normal = chunk[1..].iter().all(u8::is_ascii_lowercase);
                // A one-letter hump inside a camel run (`aIlE`, `xKcd`) is no word.
                let lone = chunk.len() == 1 && run.len() > 1;
                if !(upper || normal) || lone || !wordlike(chunk) {
                    return false;
                }
                s = i;
            }
        }
    }
    any
}

/// A reference to a secret kept elsewhere, a mask or a placeholder.
fn reference_or_mask(v: &str) -> bool {
    let b = v.as_bytes();
    let first = b[0];
    let last = b[b.len() - 1];
    first == b'$'
        || v.starts_with("{{")
        || v.starts_with("#{")
        || v.starts_with("<%")
        || v.starts_with("@Microsoft.KeyVault")
        || (first == b'%' && last == b'%')
        || (first == b'<' && last == b'>')
        || first == b'['
        || (first == b'(' && last == b')')
        || v.ends_with("****")
        || v.bytes().all(|c| c == b'*' || c == b'.')
        || v.contains("\u{2022}")
        // `xxxx`, `XXXX-XXXX`, `0000`: one character repeated.
        || b.split(|c| !c.is_ascii_alphanumeric())
            .filter(|r| !r.is_empty())
            .all(|r| r.len() >= 2 && r.iter().all(|c| c.eq_ignore_ascii_case(&r[0])))
        // A `key=value,...` spec (`docker build --secret id=npmrc,src=...`).
        || spec_like(b)
        || ["env:", "file:", "fd:", "stdin", "keychain:", "secretref:", "vault:", "arn:"]
            .iter()
            .any(|p| b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

fn spec_like(b: &[u8]) -> bool {
    let n = b.iter().take_while(|c| c.is_ascii_lowercase()).count();
    n >= 2 && b.get(n) == Some(&b'=')
}

/// A file path (`/run/secrets/db`, `~/.ssh/id_rsa`, `C:\keys\a.pfx`) rather than a
/// secret; a leading `/` followed by a credential-shaped segment is not a path.
fn path_like(v: &str) -> bool {
    let b = v.as_bytes();
    if v.starts_with("./") || v.starts_with("../") || v.starts_with("~/") || v.starts_with("\\\\") {
        return true;
    }
    if b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
    {
        return true;
    }
    if b[0] != b'/' {
        return false;
    }
    !v.split('/').any(|seg| {
        let s = seg.as_bytes();
        s.contains(&b'+')
            || s.contains(&b'=')
            || (s.len() >= 12
                && s.iter().any(u8::is_ascii_uppercase)
                && s.iter().any(u8::is_ascii_lowercase)
                && s.iter().any(u8::is_ascii_digit))
    })
}

/// Shannon entropy in bits per byte.
pub(super) fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values after `token=`/`secret:` that are program identifiers, not secrets: an
/// object (`Token{a64f}`, `Foo(`), or a dotted lowercase name (`android.os.Binder@2b`,
/// `com.apple.xpc/45`).
pub(super) fn looks_like_code(value: &str, after: &str) -> bool {
    if after.starts_with(['{', '(', '[']) {
        return true;
    }
    let mut parts = value.split('.');
    let first = parts.next().unwrap_or("");
    let second = parts.next().unwrap_or("").as_bytes();
    // The whole alphanumeric run after the dot is a lowercase word (`os`, `apple`,
    // `next_token`), not the start of a random string (`hvs.jOJW8...`).
    let word = &second[..second
        .iter()
        .position(|c| !c.is_ascii_alphanumeric())
        .unwrap_or(second.len())];
    first.len() >= 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && word.iter().all(u8::is_ascii_lowercase)
        && wordlike(word)
}

/// Whether `v`, named as a secret of `strength`, is one.
fn secret_value(v: &str, strength: Strength) -> bool {
    if v.is_empty() || reference_or_mask(v) || path_like(v) || prose_like(v) {
        return false;
    }
    let letters = v.bytes().any(|c| c.is_ascii_alphabetic());
    match strength {
        Strength::Password => {
            let distinct = {
                let mut seen = [false; 256];
                v.bytes()
                    .filter(|b| !std::mem::replace(&mut seen[*b as usize], true))
                    .count()
            };
            v.len() >= 6 && distinct >= 4
        }
        Strength::Credential => letters && v.len() >= 8 && entropy(v) >= 2.5,
    }
}

/// Whether the value after `Bearer`/`Basic`/`token` looks like a credential: not prose
/// (`Bearer authentication is required`), not one repeated character.
pub(super) fn credential_like(v: &str) -> bool {
    !prose_like(v) && !reference_or_mask(v)
}

// ------------------------------------------------------------------------------------
// Assignments
// ------------------------------------------------------------------------------------

/// For a name at `[ns, ne)` holding a secret word: the value span of `NAME = VALUE` when
/// it is a secret.
fn assignment(line: &str, ns: usize, ne: usize) -> Option<(usize, usize)> {
    let b = line.as_bytes();
    // `https://token:x@host`: a URL's userinfo is `url_password`'s.
    if line[..ns].ends_with("://") {
        return None;
    }
    // Closing quote of a quoted key (`"key":`, `\"key\":`, `'key' =>`).
    let mut i = ne;
    if b.get(i) == Some(&b'\\') && matches!(b.get(i + 1), Some(b'"' | b'\'')) {
        i += 2;
    } else if matches!(b.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    // Operator: = : := => ?= (not ==, ::, :/).
    match (b.get(i), b.get(i + 1)) {
        (Some(b'='), Some(b'=')) | (Some(b':'), Some(b':')) | (Some(b':'), Some(b'/')) => {
            return None;
        }
        (Some(b':' | b'?'), Some(b'=')) | (Some(b'='), Some(b'>')) => i += 2,
        (Some(b'=' | b':'), _) => i += 1,
        _ => return None,
    }
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    // Only now (most keywords are prose, without an operator) look at the name.
    let strength = classify(&line[ns..ne], false)?;
    let (vs, ve, after) = value_at(line, i)?;
    let v = &line[vs..ve];
    if !secret_value(v, strength) || looks_like_code(v, &line[after..]) {
        return None;
    }
    Some((vs, ve))
}

/// The value starting at `i`: quoted (to its closing quote) or bare. Returns its span
/// and where the text after it (and its closing quote) starts.
fn value_at(line: &str, mut i: usize) -> Option<(usize, usize, usize)> {
    let b = line.as_bytes();
    let escaped = b.get(i) == Some(&b'\\') && matches!(b.get(i + 1), Some(b'"' | b'\''));
    if escaped {
        i += 1;
    }
    if let Some(&q @ (b'"' | b'\'' | b'`')) = b.get(i) {
        let vs = i + 1;
        let mut j = vs;
        while j < b.len() && b[j] != q {
            j += 1;
        }
        let ve = if escaped && j > vs && b[j - 1] == b'\\' {
            j - 1
        } else {
            j
        };
        return (ve > vs).then_some((vs, ve, (j + 1).min(b.len())));
    }
    let vs = i;
    let mut j = i;
    let mut depth = 0i32;
    while j < b.len() {
        match b[j] {
            b' ' | b'\t' | b'"' | b'\'' | b'`' | b',' | b';' | b'\\' => break,
            // `?token=x&page=2`: a query's next parameter.
            b'&' if next_is_param(b, j + 1) => break,
            // `Token{a64f}`, `getenv(`: an identifier opening a bracket is code
            // (`looks_like_code` sees the bracket after the value).
            b'(' | b'[' | b'{'
                if j > vs
                    && b[vs..j]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.')) =>
            {
                break;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            _ => {}
        }
        j += 1;
    }
    (j > vs).then_some((vs, j, j))
}

fn next_is_param(b: &[u8], mut i: usize) -> bool {
    let s = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    i > s && b.get(i) == Some(&b'=')
}

// ------------------------------------------------------------------------------------
// Command lines
// ------------------------------------------------------------------------------------

/// A shell-ish token: the span of its text without the quotes around it.
#[derive(Debug, Clone, Copy)]
struct Tok {
    s: usize,
    e: usize,
    quoted: bool,
}

/// Tokens of `line[from..to]`: whitespace-separated words, quoted strings as one token,
/// and list punctuation around quoted tokens dropped so an argv printed as a list
/// (`['docker', 'login', '-p', 'x']`, `"args":["-p","x"]`) reads as a command line.
fn tokenize(line: &str, from: usize, to: usize) -> Vec<Tok> {
    let b = &line.as_bytes()[..to];
    let mut out = Vec::new();
    let mut i = from;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b"[]{}(),:`".contains(&b[i])) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'"' || b[i] == b'\'' {
            let q = b[i];
            let s = i + 1;
            let mut j = s;
            while j < b.len() && b[j] != q {
                j += if b[j] == b'\\' && q == b'"' { 2 } else { 1 };
            }
            let e = j.min(b.len());
            out.push(Tok { s, e, quoted: true });
            i = e + 1;
            continue;
        }
        let s = i;
        let mut j = i;
        while j < b.len() && !b[j].is_ascii_whitespace() {
            match b[j] {
                // A quoted part inside a word (`--password="a b"`, `-p'x'`).
                q @ (b'"' | b'\'') => {
                    j += 1;
                    while j < b.len() && b[j] != q {
                        j += 1;
                    }
                    j += 1;
                }
                // List punctuation before a quote ends the word (`["a","b"]`).
                b'[' | b']' | b'{' | b'}' | b',' | b':' | b'(' | b')'
                    if matches!(b.get(j + 1), Some(b'"' | b'\'')) =>
                {
                    break;
                }
                _ => j += 1,
            }
        }
        // An unclosed quote runs to the end.
        let j = j.min(b.len());
        let mut e = j;
        // `-p,` in help output, `cmd;`.
        while e > s + 1 && matches!(b[e - 1], b',' | b';' | b'`') {
            e -= 1;
        }
        out.push(Tok {
            s,
            e,
            quoted: false,
        });
        if e < j && b[e] == b';' {
            out.push(Tok {
                s: e,
                e: e + 1,
                quoted: false,
            });
        }
        i = j;
    }
    out
}

/// Short options that carry a password (or token) for the tools that take them.
/// (tool, options, value may follow as the next word)
const SHORT: &[(&str, &[u8], bool)] = &[
    ("login", b"p", true),
    ("mysql", b"p", false),
    ("mysqldump", b"p", false),
    ("mysqladmin", b"p", false),
    ("mysqlimport", b"p", false),
    ("mysqlcheck", b"p", false),
    ("mysqlshow", b"p", false),
    ("mysqlpump", b"p", false),
    ("mariadb", b"p", false),
    ("mariadb-dump", b"p", false),
    ("mariadb-admin", b"p", false),
    ("sshpass", b"p", true),
    ("twine", b"p", true),
    ("mongo", b"p", true),
    ("mongosh", b"p", true),
    ("mongodump", b"p", true),
    ("mongorestore", b"p", true),
    ("mongoexport", b"p", true),
    ("mongoimport", b"p", true),
    ("redis-cli", b"a", true),
    ("sqlcmd", b"P", true),
    ("bcp", b"P", true),
    ("osql", b"P", true),
    ("zip", b"P", true),
    ("unzip", b"P", true),
    ("zipcloak", b"P", true),
    ("7z", b"p", false),
    ("7za", b"p", false),
    ("7zr", b"p", false),
    ("unrar", b"p", false),
    ("rar", b"p", false),
    ("ldapsearch", b"w", true),
    ("ldapadd", b"w", true),
    ("ldapmodify", b"w", true),
    ("ldapdelete", b"w", true),
    ("ldapwhoami", b"w", true),
    ("ldappasswd", b"ws", true),
    ("ssh-keygen", b"NP", true),
    ("openssl", b"k", true),
    ("codecov", b"t", true),
    ("nuget", b"k", true),
    ("dotnet", b"k", true),
    // user:password (curl) and user%password (smbclient): the part after the separator.
    ("curl", b"uU", true),
    ("smbclient", b"U", true),
];

/// Commands whose first argument is a token (`cargo login TOKEN`).
const ARGUMENT: &[(&str, &str)] = &[("cargo", "login"), ("vault", "login"), ("snyk", "auth")];

/// The table's name of a command the walk knows.
fn known_command(word: &str) -> Option<&'static str> {
    if !(2..=13).contains(&word.len()) {
        return None;
    }
    SHORT
        .iter()
        .map(|(n, ..)| *n)
        .chain(ARGUMENT.iter().map(|(n, _)| *n))
        .find(|n| n.eq_ignore_ascii_case(word))
}

/// The command word of a token: its basename, lowercase, without `.exe`.
fn command_word(t: &str) -> &str {
    let base = t.rsplit(['/', '\\']).next().unwrap_or(t);
    base.strip_suffix(".exe").unwrap_or(base)
}

fn is_separator(t: &str) -> bool {
    matches!(t, "|" | "||" | "&&" | ";" | "&" | "|&")
}

/// Where the secret part of a value starts: after `user:` (curl) or `user%` (smbclient)
/// or openssl's `pass:`.
fn secret_part(v: &str, tool: &str, flag: u8) -> Option<usize> {
    if let Some(rest) = v.strip_prefix("pass:") {
        return Some(v.len() - rest.len());
    }
    match (tool, flag) {
        ("curl", _) => v.find(':').map(|i| i + 1),
        ("smbclient", _) => v.find('%').map(|i| i + 1),
        _ => Some(0),
    }
}

/// Strips one layer of matching quotes from `[s, e)`.
fn unquote(line: &str, s: usize, e: usize) -> (usize, usize) {
    let b = line.as_bytes();
    if e >= s + 2 && matches!(b[s], b'"' | b'\'') && b[e - 1] == b[s] {
        (s + 1, e - 1)
    } else {
        (s, e)
    }
}

fn push_value(
    line: &str,
    (s, e): (usize, usize),
    strength: Strength,
    out: &mut Vec<(usize, usize, Found)>,
) -> bool {
    let (s, e) = unquote(line, s, e);
    if s < e && secret_value(&line[s..e], strength) {
        out.push((s, e, Found::CommandLine));
        return true;
    }
    false
}

/// Walks the tokens of one command line (and of `sh -c '...'` strings inside it).
fn walk(line: &str, toks: &[Tok], out: &mut Vec<(usize, usize, Found)>, depth: usize) {
    let text = |t: &Tok| &line[t.s..t.e];
    // The tools seen in the current pipeline segment.
    let mut tools: Vec<&'static str> = Vec::new();
    // Start of the current segment and of the previous one when joined by `|`.
    let mut seg_start = 0;
    let mut piped_from: Option<usize> = None;
    // `config [set]`: the next plain word is a name, the one after it its value.
    let mut config_state = 0u8;
    let mut config_name: Option<Strength> = None;
    let mut basic_auth = false;
    let mut arg_for: Option<()> = None;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let s = text(t);
        if t.quoted && depth < 2 && s.contains(' ') {
            let inner = tokenize(line, t.s, t.e);
            walk(line, &inner, out, depth + 1);
        }
        if !t.quoted && is_separator(s) {
            piped_from = (s == "|").then_some(seg_start);
            tools.clear();
            seg_start = i + 1;
            config_state = 0;
            arg_for = None;
            i += 1;
            continue;
        }
        let bytes = s.as_bytes();
        let is_option = bytes.len() >= 2
            && bytes[0] == b'-'
            && (bytes[1].is_ascii_alphabetic() || (bytes[1] == b'-' && bytes.len() > 2));
        if is_option {
            arg_for = None;
            let body = s.trim_start_matches('-');
            let dashes = s.len() - body.len();
            let (name, attached) = match body.find('=') {
                Some(eq) => (&body[..eq], Some(t.s + dashes + eq + 1)),
                None => (body, None),
            };
            let next_value = toks.get(i + 1).filter(|n| {
                let nt = text(n);
                n.quoted || !(nt.starts_with('-') || is_separator(nt) || nt.starts_with('<'))
            });
            // `--password-stdin`, `--with-token`: the secret came through a pipe from
            // `echo VALUE` / `printf '%s' VALUE`.
            if reads_stdin(name) {
                if let Some(from) = piped_from {
                    echoed(line, &toks[from..seg_start.saturating_sub(1)], out);
                }
                i += 1;
                continue;
            }
            // A tool's own short flag with its value attached comes first (`mysql
            // -pwdZ~J^Qoi7` is `-p` and a password, not an option named `pwd...`).
            let short_first = dashes == 1
                && tools.iter().any(|tool| {
                    *tool != "openssl"
                        && SHORT
                            .iter()
                            .any(|(n, flags, _)| n == tool && flags.contains(&bytes[1]))
                });
            // Long options (and single-dash long ones: `-storepass`, `-Password`,
            // `-Drepo.password=`) named for a secret.
            if name.len() >= 2
                && !short_first
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
                && let Some(strength) = classify(name, true)
            {
                let creds = name.to_ascii_lowercase().contains("cred");
                let span = match attached {
                    Some(a) => Some((a, t.e)),
                    None => next_value.map(|n| (n.s, n.e)),
                };
                if let Some((vs, ve)) = span {
                    let (vs, ve) = unquote(line, vs, ve);
                    let v = &line[vs..ve];
                    let (skip, strength) = if let Some(rest) = v.strip_prefix("pass:") {
                        (v.len() - rest.len(), strength)
                    } else if let (true, Some(c)) = (creds, v.find(':')) {
                        // `--creds user:password`
                        (c + 1, Strength::Password)
                    } else {
                        (0, strength)
                    };
                    push_value(line, (vs + skip, ve), strength, out);
                }
                i += 1 + usize::from(attached.is_none() && next_value.is_some());
                continue;
            }
            // `curl --user u:p`, `--proxy-user u:p`.
            if dashes == 2 && (name == "user" || name == "proxy-user") && tools.contains(&"curl") {
                let span = match attached {
                    Some(a) => Some((a, t.e)),
                    None => next_value.map(|n| (n.s, n.e)),
                };
                if let Some((vs, ve)) = span {
                    let (vs, ve) = unquote(line, vs, ve);
                    if let Some(c) = line[vs..ve].find(':') {
                        push_value(line, (vs + c + 1, ve), Strength::Password, out);
                    }
                }
                i += 1;
                continue;
            }
            // Short options of the tools in this segment.
            if dashes == 1 {
                let flag = bytes[1];
                let rest = &body[1..];
                let mut consumed = false;
                for &tool in &tools {
                    let Some(&(_, flags, detached)) = SHORT.iter().find(|(n, ..)| *n == tool)
                    else {
                        continue;
                    };
                    // openssl's options are single-dash words (`-kfile`, `-keyform`).
                    if !flags.contains(&flag) || (tool == "openssl" && !rest.is_empty()) {
                        continue;
                    }
                    let span = if !rest.is_empty() {
                        let skip = usize::from(rest.starts_with('='));
                        Some((t.s + 2 + skip, t.e))
                    } else if detached {
                        consumed = next_value.is_some();
                        next_value.map(|n| (n.s, n.e))
                    } else {
                        None
                    };
                    if let Some((vs, ve)) = span {
                        let (vs, ve) = unquote(line, vs, ve);
                        if let Some(off) = secret_part(&line[vs..ve], tool, flag) {
                            let strength = if matches!(flag, b't' | b'k') && tool != "openssl" {
                                Strength::Credential
                            } else {
                                Strength::Password
                            };
                            push_value(line, (vs + off, ve), strength, out);
                        }
                    }
                    break;
                }
                i += 1 + usize::from(consumed);
                continue;
            }
            i += 1;
            continue;
        }
        // A plain word: a command (tool) word, a `config set` name or value, or the
        // argument of `cargo login`.
        let word = command_word(s);
        if arg_for.take().is_some() && !s.contains('=') {
            push_value(line, (t.s, t.e), Strength::Credential, out);
        }
        match config_state {
            1 if word == "set" => {}
            1 | 2 if !s.contains('=') => {
                config_name = classify(s, false);
                basic_auth = s.to_ascii_lowercase().starts_with("http-basic");
                config_state = if config_name.is_some() || basic_auth {
                    3
                } else {
                    0
                };
                i += 1;
                continue;
            }
            3 => {
                if basic_auth {
                    // `poetry config http-basic.repo USER PASSWORD`.
                    basic_auth = false;
                    config_name = Some(Strength::Password);
                } else {
                    if let Some(strength) = config_name.take() {
                        push_value(line, (t.s, t.e), strength, out);
                    }
                    config_state = 0;
                }
                i += 1;
                continue;
            }
            _ => config_state = 0,
        }
        if word == "config" || word == "configure" {
            config_state = 1;
        }
        if ARGUMENT.iter().any(|(tool, sub)| {
            sub.eq_ignore_ascii_case(word) && tools.last().is_some_and(|t| t == tool)
        }) {
            arg_for = Some(());
        }
        if let Some(n) = known_command(word) {
            tools.push(n);
        }
        i += 1;
    }
}

/// An option through which a command reads its secret from standard input.
fn reads_stdin(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l == "with-token"
        || (l.ends_with("-stdin")
            && (l.contains("pass") || l.contains("token") || l.contains("secret")))
}

/// The arguments of `echo VALUE` / `printf '%s' VALUE` that feed a `--password-stdin`.
fn echoed(line: &str, toks: &[Tok], out: &mut Vec<(usize, usize, Found)>) {
    // After a prompt (`+ echo x`, `$ printf ...`).
    let Some(at) = toks
        .iter()
        .position(|t| matches!(command_word(&line[t.s..t.e]), "echo" | "printf"))
    else {
        return;
    };
    let printf = command_word(&line[toks[at].s..toks[at].e]) == "printf";
    for (n, t) in toks[at + 1..].iter().enumerate() {
        let s = &line[t.s..t.e];
        // Options, and printf's format (`printf '%s' VALUE`).
        if (!t.quoted && s.starts_with('-')) || (printf && n == 0 && s.contains('%')) {
            continue;
        }
        push_value(line, (t.s, t.e), Strength::Password, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &str) -> Vec<String> {
        let mut v = Vec::new();
        words(n, |w| v.push(w.to_owned()));
        v
    }

    #[test]
    fn words_split_every_naming_style() {
        assert_eq!(
            names("stripeApiKeyLive2"),
            ["stripe", "api", "key", "live", "2"]
        );
        assert_eq!(names("APIKey"), ["api", "key"]);
        assert_eq!(names("SECRET_KEY_BASE"), ["secret", "key", "base"]);
        assert_eq!(names("--db-pass"), ["db", "pass"]);
        assert_eq!(names("_authToken"), ["auth", "token"]);
    }

    #[test]
    fn names_with_a_secret_word_anywhere() {
        for n in [
            "SECRET_KEY_BASE",
            "DJANGO_SECRET_KEY",
            "STRIPE_API_KEY_LIVE",
            "DB_PASSWORD_PROD",
            "AUTH_TOKEN_V2",
            "PGPASSWORD",
            "MYSQL_PWD",
            "DB_PASS",
            "_authToken",
            "npmAuthToken",
            "aws_secret_access_key",
            "signingKey",
            "_auth",
            "BASIC_AUTH",
            "DB_AUTH_PROD",
        ] {
            assert!(classify(n, false).is_some(), "{n}");
        }
        for n in [
            "PASSWORD_MIN_LENGTH",
            "TOKEN_TTL",
            "SECRET_NAME",
            "KEY_SIZE",
            "PWD",
            "PASS",
            "primary_key",
            "author",
            "tokens",
            "credential.helper",
            "AUTH_TYPE",
            "cache_key",
            "AuthFail",
            "auth_method",
            "PASSWORD_AUTH_METHOD",
        ] {
            assert!(classify(n, false).is_none(), "{n}");
        }
        assert!(classify("password-stdin", true).is_none());
        assert!(classify("password-file", true).is_none());
        assert!(classify("no-password", true).is_none());
        assert!(classify("storepass", true).is_some());
        assert!(classify("pass", true).is_some());
    }

    #[test]
    fn prose_is_not_a_credential() {
        for v in [
            "authentication",
            "Authentication",
            "API_KEY",
            "MyAppSecret",
            "changeme",
        ] {
            assert!(prose_like(v), "{v}");
        }
        for v in [
            "abcdefghijklmnopqrstuvwxyz012345",
            "YWxhZGRpbjpvcGVuc2VzYW1l",
            "qzXvbTkPwm",
            // Word-shaped letters joined by a password symbol (a generated corpus
            // value that slipped through).
            "IgoXvwku!yuDug",
            "Summer#Rain",
        ] {
            assert!(!prose_like(v), "{v}");
        }
    }
}
