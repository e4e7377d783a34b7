//! Redaction: a corpus of real-format secrets in realistic lines (all caught), near
//! misses (none touched), stream state (PEM blocks, `::add-mask::`), and properties.
//!
//! The corpus is generated: every run draws new values (the seed is printed; set
//! `REDACT_SEED=0x...` to replay a run). Classes of issue 17 (credentials passed as
//! command-line options, assignments whose name contains a secret word anywhere, prose
//! after `Bearer`) are measured per class: recall on the generated secrets and false
//! positives on their near misses (`cargo test --test redaction -- --nocapture` prints
//! the table).

use logstream_model::RedactionState;
use logstream_model::redact::{MaskStyle, RedactError, Redactor, StreamRedactor};
use proptest::prelude::*;

/// Xorshift, seeded per run (new values every run) unless `REDACT_SEED` is set.
struct Rng(u64);

impl Rng {
    fn per_run() -> Rng {
        let seed = std::env::var("REDACT_SEED")
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
            })
            | 1;
        eprintln!("redaction corpus seed: REDACT_SEED={seed:#x}");
        Rng(seed)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn one<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const HEX: &[u8] = b"0123456789abcdef";

/// GitHub's token format: prefix, 30 random base62 characters, then the CRC32 of those
/// in base62, zero-padded to 6.
fn github_token(rng: &mut Rng, prefix: &str) -> String {
    let body = rng.pick(ALNUM, 30);
    let mut crc = crc32c_ieee(body.as_bytes());
    let mut check = Vec::new();
    for _ in 0..6 {
        check.push(ALNUM[(crc % 62) as usize]);
        crc /= 62;
    }
    check.reverse();
    format!("{prefix}{body}{}", String::from_utf8(check).unwrap())
}

/// CRC-32 (IEEE), as GitHub's checksum uses.
fn crc32c_ieee(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn b64url(rng: &mut Rng, n: usize) -> String {
    rng.pick(URLSAFE, n)
}

/// (detector, secret, line containing it).
fn corpus(rng: &mut Rng) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let templates = [
        "2024-05-01T10:00:00Z INFO deploy: using {} for upload",
        "[build] step 3/7 exported {} to the environment",
        "+ curl -fsSL https://api.example.com/v1/items?key={}",
        "    at config (env: {})",
        "DEBUG loaded credentials {} from vault",
    ];
    for i in 0..20 {
        let t = templates[i % templates.len()];
        let mut add =
            |det: &'static str, secret: String, line: String| out.push((det, secret, line));
        let s = format!("AKIA{}", rng.pick(UPPER32, 16));
        add("aws_access_key_id", s.clone(), t.replace("{}", &s));
        let s = rng.pick(B64, 40);
        add(
            "aws_secret_access_key",
            s.clone(),
            format!("aws_secret_access_key = {s}"),
        );
        for p in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            let s = github_token(rng, p);
            add("github_token", s.clone(), t.replace("{}", &s));
        }
        let s = format!("github_pat_{}_{}", rng.pick(ALNUM, 22), rng.pick(ALNUM, 59));
        add(
            "github_fine_grained_pat",
            s.clone(),
            format!("git clone https://x:{s}@github.com/acme/repo.git"),
        );
        let s = format!("glpat-{}", b64url(rng, 20));
        add("gitlab_token", s.clone(), t.replace("{}", &s));
        let s = format!(
            "xoxb-{}-{}-{}",
            rng.pick(b"0123456789", 12),
            rng.pick(b"0123456789", 13),
            rng.pick(ALNUM, 24)
        );
        add("slack_token", s.clone(), t.replace("{}", &s));
        let s = format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            rng.pick(UPPER32, 8),
            rng.pick(UPPER32, 10),
            rng.pick(ALNUM, 24)
        );
        add(
            "slack_webhook",
            s.clone(),
            format!("notify: posting to {s}"),
        );
        let s = format!("sk_live_{}", rng.pick(ALNUM, 24));
        add("stripe_key", s.clone(), t.replace("{}", &s));
        let s = format!("AIza{}", b64url(rng, 35));
        add("google_api_key", s.clone(), t.replace("{}", &s));
        let s = format!(
            "-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n",
            rng.pick(B64, 64)
        );
        add(
            "private_key",
            s.clone(),
            format!(
                r#"{{"type": "service_account", "project_id": "p", "private_key": "{s}", "client_email": "a@p.iam.gserviceaccount.com"}}"#
            ),
        );
        let s = format!(
            "eyJ{}.eyJ{}.{}",
            b64url(rng, 20),
            b64url(rng, 40),
            b64url(rng, 43)
        );
        add("jwt", s.clone(), t.replace("{}", &s));
        let s = b64url(rng, 32);
        add(
            "authorization_header",
            s.clone(),
            format!("> Authorization: Bearer {s}"),
        );
        let s = rng.pick(B64, 28);
        add(
            "authorization_header",
            s.clone(),
            format!("curl -H 'Authorization: Basic {s}' https://registry.example.com"),
        );
        let s = format!("{}Pw{}", rng.pick(ALNUM, 6), rng.pick(ALNUM, 6));
        add(
            "url_password",
            s.clone(),
            format!("connecting to postgres://app:{s}@db.internal:5432/prod"),
        );
        let s = format!("{}!{}", rng.pick(ALNUM, 8), rng.pick(ALNUM, 5));
        add(
            "secret_assignment",
            s.clone(),
            format!("time=2024-05-01 level=info msg=login password={s} user=ci"),
        );
        let s = rng.pick(ALNUM, 24);
        add(
            "secret_assignment",
            s.clone(),
            format!(r#"{{"user":"ci","client_secret":"{s}","ok":true}}"#),
        );
        let s = rng.pick(ALNUM, 20);
        add(
            "secret_assignment",
            s.clone(),
            format!("  DATABASE_PASSWORD: {s}"),
        );
        let s = format!("npm_{}", rng.pick(ALNUM, 36));
        add(
            "npm_token",
            s.clone(),
            format!("//registry.npmjs.org/:_authToken={s}"),
        );
        let s = format!("pypi-AgEIcHlwaS5vcmc{}", b64url(rng, 70));
        add(
            "pypi_token",
            s.clone(),
            format!("twine upload -p {s} dist/*"),
        );
        let s = format!("{}==", rng.pick(B64, 86));
        add(
            "azure_storage_key",
            s.clone(),
            format!(
                "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net"
            ),
        );
        let s = format!("SK{}", rng.pick(HEX, 32));
        add("twilio_api_key", s.clone(), t.replace("{}", &s));
        let s = format!("SG.{}.{}", b64url(rng, 22), b64url(rng, 43));
        add("sendgrid_api_key", s.clone(), t.replace("{}", &s));
    }
    out
}

/// The public prefix a detector leaves visible (`AKIA`, `ghp_`).
fn kept_prefix(detector: &str) -> usize {
    match detector {
        "aws_access_key_id" | "github_token" | "google_api_key" | "npm_token" => 4,
        "github_fine_grained_pat" => 11,
        "gitlab_token" => 6,
        "slack_token" | "pypi_token" => 5,
        "slack_webhook" => 23,
        "stripe_key" => 8,
        "twilio_api_key" => 2,
        "sendgrid_api_key" => 3,
        _ => 0,
    }
}

/// Whether every character of `secret` (its first occurrence in `line`) after its
/// first `keep` is masked in `out`, masking with stars keeping the line's shape.
fn masked_after(line: &str, out: &str, secret: &str, keep: usize) -> bool {
    let Some(at) = line.find(secret) else {
        return false;
    };
    let start = line[..at].chars().count();
    let n = secret.chars().count();
    let out: Vec<char> = out.chars().collect();
    out.len() == line.chars().count()
        && out[start + keep.min(n)..start + n]
            .iter()
            .all(|c| *c == '*')
}

#[test]
fn every_secret_of_the_corpus_is_caught() {
    let r = Redactor::builtin();
    let corpus = corpus(&mut Rng::per_run());
    assert!(corpus.len() >= 300, "corpus has {} secrets", corpus.len());
    let mut missed = Vec::new();
    for (det, secret, line) in &corpus {
        let mut state = RedactionState::default();
        let out = r.redact(line, &mut state);
        // The kept prefix (AKIA, ghp_) is public; the rest must be gone.
        if !masked_after(line, &out, secret, kept_prefix(det)) || state.0.is_empty() {
            missed.push(format!("{det}: {line} -> {out} {:?}", state.0));
        }
    }
    assert!(
        missed.is_empty(),
        "{} missed:\n{}",
        missed.len(),
        missed.join("\n")
    );
}

#[test]
fn detectors_name_what_they_caught() {
    let r = Redactor::builtin();
    for (det, _, line) in corpus(&mut Rng::per_run()) {
        let mut state = RedactionState::default();
        r.redact(&line, &mut state);
        assert!(
            state.0.contains_key(det),
            "{det} not named for {line}: {:?}",
            state.0
        );
    }
}

#[test]
fn near_misses_are_left_alone() {
    let r = Redactor::builtin();
    let lines = [
        "AKIA is the prefix of AWS access keys",
        "AKIAIOSFODNN7EXAMPL", // one character short
        "ghp_short_token_example",
        "the secret to fast builds is caching",
        "token count: 5",
        "password: ********",
        "password=[REDACTED:secret_assignment]",
        "Basic usage: logstream --help",
        "see https://example.com/docs/path?x=1",
        "sk_live_ is the prefix of live Stripe keys",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b",
        "request id 123e4567-e89b-12d3-a456-426614174000",
        "Compiling aws-sdk-s3 v1.2.3",
        "warning: unused variable `token`",
        "let token = lexer.next_token();",
        "SKIPPED 32 tests",
        "eyJ is how a base64 JSON object starts",
        "Authorization: Bearer",
        "ftp://anonymous@ftp.example.com/pub",
        "Using cached wheel for secretstorage-3.3.3",
        "passwords must be at least 12 characters",
    ];
    for l in lines {
        let mut state = RedactionState::default();
        let out = r.redact(l, &mut state);
        assert_eq!(out, l, "{:?}", state.0);
    }
}

/// Values earlier runs of the generated corpus drew and missed (kept as regressions).
#[test]
fn values_generated_runs_once_missed_are_caught() {
    let r = Redactor::builtin();
    for (line, secret) in [
        // Word-shaped letters around a password symbol were taken for prose.
        (
            "time=2024-05-01 level=info msg=login password=IgoXvwku!yuDug user=ci",
            "IgoXvwku!yuDug",
        ),
        // `-pwd...` was read as an option named for a password, not mysql's `-p`.
        (
            "+ mysql -h gateway.lffhus.internal -u ci67 -pwdZ~J^Qoi7 api_db",
            "wdZ~J^Qoi7",
        ),
        // Pronounceable pieces with one-letter camel humps (`aIlE`) and a `^` beside an
        // underscore were taken for prose (REDACT_SEED=0x86db8f96353d15d3).
        (
            r#"ConnectionStrings__Default="Server=web.vchuts.internal;Database=app;User Id=build50;Password=cvel^_aIlE;""#,
            "cvel^_aIlE",
        ),
        ("Password=cvelxaIlE", "cvelxaIlE"),
    ] {
        let mut state = RedactionState::default();
        let out = r.redact(line, &mut state);
        assert!(!out.contains(secret), "{line} -> {out}");
    }
}

#[test]
fn label_style_names_the_detector() {
    let r = Redactor::new(true, &[], MaskStyle::Label).unwrap();
    let mut state = RedactionState::default();
    let out = r.redact("key AKIAIOSFODNN7EXAMPLE here", &mut state);
    assert_eq!(out, "key AKIA[REDACTED:aws_access_key_id] here");
    let stars = Redactor::builtin();
    let out = stars.redact(
        "key AKIAIOSFODNN7EXAMPLE here",
        &mut RedactionState::default(),
    );
    assert_eq!(out, "key AKIA**************** here");
}

#[test]
fn pem_blocks_spanning_lines_are_masked_whole() {
    let r = Redactor::builtin();
    let mut s = StreamRedactor::new(std::sync::Arc::new(r));
    let mut state = RedactionState::default();
    let lines = [
        "writing key.pem",
        "-----BEGIN RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH",
        "lTkBaLoYqNqSEJJ9SfW0ZgzLTaT7rpbA2S5t5B5m3XfPn",
        "-----END RSA PRIVATE KEY-----",
        "done",
    ];
    let out: Vec<String> = lines
        .iter()
        .map(|l| s.redact(l, &mut state).into_owned())
        .collect();
    assert_eq!(out[0], "writing key.pem");
    assert_eq!(out[5], "done");
    for (i, o) in out[1..5].iter().enumerate() {
        assert!(o.chars().all(|c| c == '*'), "line {}: {o}", i + 1);
    }
    assert!(state.0["private_key"] >= 4);
}

#[test]
fn add_mask_is_never_echoed_and_masks_later_lines_in_every_encoding() {
    let r = Redactor::builtin();
    let mut s = StreamRedactor::new(std::sync::Arc::new(r));
    let mut state = RedactionState::default();
    let secret = "hunter2/with spaces&\"quotes\"";
    assert_eq!(
        s.redact(&format!("::add-mask::{secret}"), &mut state),
        "::add-mask::***"
    );
    let b64 = "aHVudGVyMi93aXRoIHNwYWNlcyYicXVvdGVzIg"; // base64 of the secret, unpadded prefix
    let url = "hunter2%2Fwith%20spaces%26%22quotes%22";
    let json = r#"hunter2/with spaces&\"quotes\""#;
    for line in [
        format!("echo {secret}"),
        format!("auth={b64}=="),
        format!("GET /x?p={url}"),
        format!(r#"{{"p":"{json}"}}"#),
    ] {
        let out = s.redact(&line, &mut state);
        assert!(
            !out.contains("hunter2") && !out.contains(b64) && !out.contains(url),
            "{line} -> {out}"
        );
    }
    assert!(state.0["registered_secret"] >= 4);
    assert!(s.add_mask("abc").is_err(), "too short to mask safely");
}

#[test]
fn custom_patterns_are_validated_with_a_clear_error() {
    let ok = Redactor::new(
        false,
        &[("ticket".into(), r"TICKET-[0-9]{6}".into())],
        MaskStyle::Label,
    )
    .unwrap();
    assert_eq!(
        ok.redact("see TICKET-123456", &mut RedactionState::default()),
        "see [REDACTED:ticket]"
    );
    let err = |name: &str, pattern: &str| {
        Redactor::new(false, &[(name.into(), pattern.into())], MaskStyle::Stars)
            .err()
            .unwrap()
    };
    assert!(matches!(err("bad", "("), RedactError::Pattern { .. }));
    assert!(matches!(
        err("huge", "(?:[a-z]{1,100}){1,100}[0-9]{1000}"),
        RedactError::Pattern { .. }
    ));
    assert!(matches!(err("empty", "x*"), RedactError::Pattern { .. }));
    assert!(matches!(err("Bad Name", "x"), RedactError::Name(_)));
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._:=/@-]{0,20}",
        Just("AKIAIOSFODNN7EXAMPLE".to_owned()),
        Just("password=".to_owned()),
        Just("token: ".to_owned()),
        Just("Bearer ".to_owned()),
        Just("https://u:p4ssw0rd@h/".to_owned()),
        Just("ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned()),
        Just("-----BEGIN PRIVATE KEY-----".to_owned()),
        Just("*".to_owned()),
        Just("é✓".to_owned()),
        Just(" --password ".to_owned()),
        Just("docker login -p ".to_owned()),
        Just("curl -u ".to_owned()),
        Just("DB_PASSWORD_PROD=".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just(" | ".to_owned()),
    ]
}

proptest! {
    #[test]
    fn redaction_is_idempotent_and_never_grows_a_line(parts in prop::collection::vec(fragment(), 0..12)) {
        let line: String = parts.concat();
        let r = Redactor::builtin();
        let once = r.redact(&line, &mut RedactionState::default()).into_owned();
        let twice = r.redact(&once, &mut RedactionState::default()).into_owned();
        prop_assert_eq!(&once, &twice);
        prop_assert_eq!(once.chars().count(), line.chars().count());
        let l = Redactor::new(true, &[], MaskStyle::Label).unwrap();
        let once = l.redact(&line, &mut RedactionState::default()).into_owned();
        let twice = l.redact(&once, &mut RedactionState::default()).into_owned();
        prop_assert_eq!(&once, &twice);
        prop_assert!(once.len() <= line.len() * 2 + 64);
    }

    #[test]
    fn redaction_never_panics(line in any::<String>()) {
        let r = std::sync::Arc::new(Redactor::builtin());
        let _ = r.redact(&line, &mut RedactionState::default());
        let mut s = StreamRedactor::new(r);
        let _ = s.redact(&line, &mut RedactionState::default());
    }
}

// ---------------------------------------------------------------------------------
// Issue 17: generated classes. Each class has secrets in the sentences CI output really
// contains (new values every run) and near misses that must stay untouched.
// ---------------------------------------------------------------------------------

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
/// Characters of generated passwords after the first (which is alphanumeric): what
/// password policies ask for, minus shell/YAML/URL syntax (`$ ' " / : & ; , * ( )`).
const PASSWORD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@#%^_+-~";

/// A password as a policy makes people choose them: 10 to 24 characters, at least one
/// upper, lower, digit and symbol, starting with a letter or digit.
fn password(rng: &mut Rng) -> String {
    let n = 10 + rng.below(15);
    let mut p: Vec<u8> = rng.pick(PASSWORD, n).into_bytes();
    p[0] = ALNUM[rng.below(ALNUM.len())];
    let classes: [&[u8]; 4] = [b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", LOWER, DIGITS, b"!@#%^_+-~"];
    for (i, class) in classes.iter().enumerate() {
        let at = 1 + (rng.below(n - 1) + i * 3) % (n - 1);
        p[at] = class[rng.below(class.len())];
    }
    String::from_utf8(p).unwrap()
}

/// An API token in one of the generic formats services issue (none of them has a
/// vendor prefix a dedicated detector knows).
fn token(rng: &mut Rng) -> String {
    match rng.below(7) {
        0 => rng.pick(HEX, 40),
        1 => {
            let h = rng.pick(HEX, 32);
            format!(
                "{}-{}-4{}-a{}-{}",
                &h[..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..]
            )
        }
        2 => {
            let n = 32 + rng.below(32);
            loop {
                let t = b64url(rng, n);
                if t.bytes().next().unwrap().is_ascii_alphanumeric() {
                    break t;
                }
            }
        }
        3 => format!("{}{}", rng.pick(ALNUM, 31), rng.pick(DIGITS, 1)),
        4 => format!("dop_v1_{}", rng.pick(HEX, 64)),
        5 => rng.pick(HEX, 64),
        _ => format!("hvs.{}", rng.pick(ALNUM, 90)),
    }
}

/// Secret values for names that say what they hold: Rails' `secret_key_base` (128
/// hex), Django's insecure development key, or a token.
fn named_value(rng: &mut Rng, strong: bool) -> String {
    if strong {
        return password(rng);
    }
    match rng.below(5) {
        0 => rng.pick(HEX, 128),
        1 => format!(
            "django-insecure-{}",
            rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789!@#^-_=+", 50)
        ),
        _ => token(rng),
    }
}

fn word(rng: &mut Rng) -> &'static str {
    rng.one(&[
        "api", "web", "billing", "search", "worker", "gateway", "frontend", "payments", "auth",
        "ingest", "reports", "assets", "orders", "catalog", "mailer",
    ])
}

fn user(rng: &mut Rng) -> String {
    format!(
        "{}{}",
        rng.one(&["ci", "deploy", "svc", "build", "release", "bot"]),
        rng.below(100)
    )
}

fn host(rng: &mut Rng) -> String {
    format!(
        "{}.{}.{}",
        word(rng),
        rng.pick(LOWER, 6),
        rng.one(&["internal", "example.com", "corp.net", "io"])
    )
}

fn registry(rng: &mut Rng) -> String {
    format!(
        "{}.{}.io",
        rng.one(&["registry", "cr", "harbor", "docker"]),
        rng.pick(LOWER, 5)
    )
}

fn port(rng: &mut Rng) -> u32 {
    [22, 80, 443, 2222, 3000, 3306, 5432, 6379, 8080, 8443, 9000][rng.below(11)]
        + rng.below(3) as u32 * 10
}

fn path(rng: &mut Rng) -> String {
    format!(
        "{}/{}/{}",
        rng.one(&[
            "/run/secrets",
            "/home/ci/.config",
            "/etc/ssl/private",
            "/tmp",
            "/builds"
        ]),
        word(rng),
        rng.one(&["token", "password.txt", "key.pem", "creds.json", "auth"])
    )
}

/// One generated line: its class, the secret (empty for a near miss) and the line.
struct Case {
    class: &'static str,
    secret: String,
    line: String,
}

fn case(class: &'static str, secret: &str, line: String) -> Case {
    assert!(
        secret.is_empty() || line.contains(secret),
        "{line} lacks {secret}"
    );
    Case {
        class,
        secret: secret.to_owned(),
        line,
    }
}

/// Percent-encodes what a URL's userinfo cannot hold as is.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Credentials passed as command-line options, as `set -x` echoes them or tools print
/// their invocation.
fn cli_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // Long options whose name holds a secret word, `--name VALUE` or `--name=VALUE`,
    // single-dash long options (`-storepass`, `-Password`), `-D`/`-P` properties.
    let p = password(rng);
    let (u, h, r, w) = (user(rng), host(rng), registry(rng), word(rng));
    let long = [
        format!("+ podman login --username {u} --password {p} {r}"),
        format!("+ docker login {r} --username={u} --password={p}"),
        format!("+ helm repo add {w} https://{h}/charts --username {u} --password {p}"),
        format!("+ wget --user={u} --password={p} https://{h}/dist/{w}.tar.gz"),
        format!("+ wget --http-user={u} --http-password=\"{p}\" https://{h}/{w}.zip"),
        format!(
            "+ kubectl create secret docker-registry regcred --docker-server={r} --docker-username={u} --docker-password={p}"
        ),
        format!("+ ./deploy.sh --registry-password {p} --registry {r}"),
        format!("+ argocd login {h} --username admin --password '{p}' --grpc-web"),
        format!(
            "+ keytool -importkeystore -srckeystore in.p12 -srcstorepass {p} -destkeystore out.jks"
        ),
        format!("+ mvn -B deploy -Drepo.username={u} -Drepo.password={p}"),
        format!(
            "+ ./gradlew publish -PsigningPassword={p} -PsigningKeyId={}",
            rng.pick(HEX, 8)
        ),
        format!("+ influx -username {u} -password {p} -execute 'SHOW DATABASES'"),
        format!(
            "+ nuget sources add -Name {w} -Source https://{h}/nuget -Username {u} -Password {p}"
        ),
        format!("+ gpg --batch --pinentry-mode loopback --passphrase {p} --decrypt {w}.gpg"),
        format!("+ {w}-cli migrate --db-pass {p} --db-host {h}"),
        format!("2024-05-01T10:00:00Z exec /usr/local/bin/{w} --admin-password={p} --verbose"),
    ];
    for l in long {
        out.push(case("cli_long_option", &p, l));
    }
    let t = token(rng);
    let (h, w) = (host(rng), word(rng));
    let tokens = [
        format!("+ kubectl --server=https://{h}:6443 --token={t} get pods -A"),
        format!("+ oc login --token={t} --server=https://{h}:6443"),
        format!("+ {w} deploy --token {t} --prod"),
        format!(
            "+ sentry-cli --auth-token {t} releases new {w}@1.2.{}",
            rng.below(99)
        ),
        format!("+ doctl auth init --access-token {t}"),
        format!("+ cargo publish --token {t} --allow-dirty"),
        format!("+ ./release --api-key={t} --channel stable"),
        format!("+ az ad sp create --client-secret {t} --name {w}"),
        format!(
            "+ dotnet nuget push out/{w}.nupkg --api-key {t} --source https://{h}/v3/index.json"
        ),
        format!("+ nuget push {w}.nupkg -ApiKey {t} -Source https://{h}/api/v2/package"),
        format!("+ terraform apply -auto-approve -var-file=prod.tfvars --secret-key {t}"),
        format!("Running: {w} --refresh-token \"{t}\" --scope read"),
    ];
    for l in tokens {
        out.push(case("cli_long_option", &t, l));
    }

    // Short options that mean a password only for the tool that takes them.
    let p = password(rng);
    let (u, h, r, w) = (user(rng), host(rng), registry(rng), word(rng));
    let db = format!("{w}_db");
    let short = [
        format!("+ docker login -u {u} -p {p} {r}"),
        format!("+ helm registry login {r} -u {u} -p {p}"),
        format!("+ oc login https://{h}:6443 -u {u} -p {p} --insecure-skip-tls-verify"),
        format!(
            "+ az login --service-principal -u {} -p {p} --tenant {}",
            token(rng),
            rng.pick(HEX, 8)
        ),
        format!("+ cf login -a https://api.{h} -u {u} -p '{p}'"),
        format!("+ mysql -h {h} -u {u} -p{p} {db}"),
        format!("+ mysqldump -u{u} -p{p} --single-transaction {db} > dump.sql"),
        format!("+ mariadb -u {u} -p'{p}' -e 'SELECT 1'"),
        format!("+ sshpass -p {p} ssh -o StrictHostKeyChecking=no {u}@{h}"),
        format!("+ sshpass -p'{p}' scp build.tar.gz {u}@{h}:/srv/{w}"),
        format!("+ twine upload --repository-url https://{h}/simple -u {u} -p {p} dist/*"),
        format!("+ mongosh --host {h} -u {u} -p {p} --authenticationDatabase admin"),
        format!("+ mongodump -u {u} -p {p} --db {db} --out /backup"),
        format!("+ redis-cli -h {h} -p 6379 -a {p} ping"),
        format!("+ sqlcmd -S {h} -U sa -P {p} -Q \"SELECT 1\""),
        format!("+ zip -r -P {p} {w}.zip out/"),
        format!("+ 7z a -p{p} -mhe=on {w}.7z data/"),
        format!("+ unzip -o -P {p} {w}.zip -d out"),
        format!(
            "+ ldapsearch -x -H ldap://{h} -D cn=admin,dc=example,dc=org -w {p} -b dc=example,dc=org"
        ),
        format!("+ ssh-keygen -t ed25519 -N {p} -f deploy_key"),
        format!(
            "+ openssl pkcs12 -export -in cert.pem -inkey key.pem -out {w}.p12 -passout pass:{p}"
        ),
        format!("+ openssl enc -aes-256-cbc -salt -in secrets.tar -out secrets.enc -k {p}"),
    ];
    for l in short {
        out.push(case("cli_short_option", &p, l));
    }
    let t = token(rng);
    out.push(case(
        "cli_short_option",
        &t,
        format!("+ codecov -t {t} -f coverage.xml"),
    ));
    out.push(case(
        "cli_short_option",
        &t,
        format!(
            "+ dotnet nuget push out/{}.nupkg -k {t} -s https://api.nuget.org/v3/index.json",
            word(rng)
        ),
    ));

    // user:password arguments.
    let p = password(rng);
    let (u, h, w) = (user(rng), host(rng), word(rng));
    let userpass = [
        format!("+ curl -fsSL -u {u}:{p} https://{h}/api/v1/{w}"),
        format!("+ curl -X PUT --user \"{u}:{p}\" --upload-file {w}.tgz https://{h}/repo/"),
        format!("+ curl -s -u'{u}:{p}' https://{h}/health"),
        format!("+ curl --proxy-user {u}:{p} -x http://proxy.{h}:3128 https://{h}"),
        format!("+ smbclient //{h}/builds -U {u}%{p} -c 'put {w}.zip'"),
        format!("+ skopeo copy --src-creds {u}:{p} docker://{h}/{w}:1 docker://{h}/{w}:2"),
    ];
    for l in userpass {
        out.push(case("cli_user_password", &p, l));
    }

    // `config set NAME VALUE`, tokens as the argument of a login command.
    let t = token(rng);
    let aws = rng.pick(B64, 40);
    out.push(case(
        "cli_config_or_login_argument",
        &aws,
        format!(
            "+ aws configure set aws_secret_access_key {aws} --profile {}",
            word(rng)
        ),
    ));
    let config = [
        format!("+ npm config set _authToken {t}"),
        format!("+ yarn config set npmAuthToken {t}"),
        format!("+ poetry config pypi-token.{} {t}", word(rng)),
        format!("+ git config --global {}.token {t}", word(rng)),
        format!("+ cargo login {t}"),
        format!("+ vault login {t}"),
        format!("+ snyk auth {t}"),
    ];
    for l in config {
        out.push(case("cli_config_or_login_argument", &t, l));
    }
    let p = password(rng);
    out.push(case(
        "cli_config_or_login_argument",
        &p,
        format!("+ poetry config http-basic.{} {} {p}", word(rng), user(rng)),
    ));

    // Credentials in a URL's userinfo.
    let t = token(rng);
    let p = password(rng);
    let (u, h, w) = (user(rng), host(rng), word(rng));
    let url = [
        (
            t.clone(),
            format!("+ git clone https://{u}:{t}@github.com/acme/{w}.git"),
        ),
        (
            t.clone(),
            format!("+ git clone https://oauth2:{t}@gitlab.com/acme/{w}.git"),
        ),
        (
            t.clone(),
            format!("+ git remote set-url origin https://x-access-token:{t}@github.com/acme/{w}"),
        ),
        (
            t.clone(),
            format!("Cloning into '{w}'... https://{t}@github.com/acme/{w}.git"),
        ),
        (
            url_escape(&p),
            format!(
                "+ pip install --index-url https://{u}:{}@{h}/simple {w}",
                url_escape(&p)
            ),
        ),
    ];
    for (s, l) in url {
        out.push(case("url_credentials", &s, l));
    }

    // A secret echoed into a command that reads it from standard input, argv printed as
    // a list, and commands run through `sh -c`.
    let p = password(rng);
    let (u, r, w) = (user(rng), registry(rng), word(rng));
    let piped = [
        format!("+ echo {p} | docker login -u {u} --password-stdin {r}"),
        format!("+ printf '%s' '{p}' | helm registry login {r} --username {u} --password-stdin"),
        format!("DEBUG exec: ['docker', 'login', '-u', '{u}', '-p', '{p}', '{r}']"),
        format!(
            r#"{{"level":"debug","cmd":"helm","args":["repo","add","{w}","https://{r}","--password","{p}"]}}"#
        ),
        format!("+ bash -c \"docker login -u {u} -p {p} {r}\""),
        format!("+ sh -c 'mysql -u{u} -p{p} -e \"SHOW TABLES\" {w}'"),
    ];
    for l in piped {
        out.push(case("cli_piped_listed_or_nested", &p, l));
    }
    let t = token(rng);
    out.push(case(
        "cli_piped_listed_or_nested",
        &t,
        format!("+ echo \"{t}\" | gh auth login --with-token"),
    ));
}

/// Names that hold a secret word anywhere, in the forms logs print assignments.
fn name_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    const PREFIX: &[&str] = &[
        "DB",
        "DJANGO",
        "STRIPE",
        "APP",
        "PROD",
        "POSTGRES",
        "MYSQL_ROOT",
        "REDIS",
        "SMTP",
        "SENTRY",
        "GITHUB",
        "NPM",
        "REGISTRY",
        "AZURE",
        "VAULT",
        "SONAR",
        "JWT",
        "OAUTH",
        "CI",
        "DEPLOY",
        "SLACK",
        "MAILGUN",
        "DATADOG",
        "RAILS",
    ];
    // (words, strong): a strong name holds a password and takes any value but a
    // placeholder; the others need a value that looks like a credential.
    const SECRET: &[(&str, bool)] = &[
        ("PASSWORD", true),
        ("PASSWD", true),
        ("PWD", true),
        ("PASS", true),
        ("PASSPHRASE", true),
        ("SECRET", false),
        ("SECRET_KEY", false),
        ("API_KEY", false),
        ("APIKEY", false),
        ("ACCESS_KEY", false),
        ("ENCRYPTION_KEY", false),
        ("SIGNING_KEY", false),
        ("MASTER_KEY", false),
        ("AUTH_TOKEN", false),
        ("ACCESS_TOKEN", false),
        ("TOKEN", false),
        ("REFRESH_TOKEN", false),
        ("CLIENT_SECRET", false),
        ("CREDENTIALS", false),
        ("CREDS", false),
        ("AUTH", false),
        ("WEBHOOK_SECRET", false),
        ("LICENSE_KEY", false),
    ];
    const SUFFIX: &[&str] = &[
        "", "", "BASE", "LIVE", "PROD", "V2", "VALUE", "TEST", "STAGING", "NEW",
    ];
    for _ in 0..12 {
        let (secret, strong) = SECRET[rng.below(SECRET.len())];
        let mut words: Vec<String> = Vec::new();
        // `PASS` alone is test output (`--- PASS: TestX`) and `PWD` the working
        // directory, so they are names only in a compound (`DB_PASS`, `MYSQL_PWD`).
        if rng.below(3) > 0 || secret == "PASS" || secret == "PWD" {
            words.push(rng.one(PREFIX).to_owned());
        }
        words.extend(secret.split('_').map(str::to_owned));
        let suffix = rng.one(SUFFIX);
        if !suffix.is_empty() {
            words.push(suffix.to_owned());
        }
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let upper = words.join("_");
        let snake = lower.join("_");
        let camel: String = lower
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.clone()
                } else {
                    let mut c = w.clone();
                    c[..1].make_ascii_uppercase();
                    c
                }
            })
            .collect();
        let kebab = lower.join("-");
        let dotted = lower.join(".");
        let any = [&upper, &snake, &camel, &kebab, &dotted][rng.below(5)].clone();
        let v = named_value(rng, strong);
        let (w, h) = (word(rng), host(rng));
        let forms = [
            ("name_env_listing", format!("{upper}={v}")),
            ("name_env_listing", format!("+ export {upper}={v}")),
            ("name_env_listing", format!("declare -x {upper}=\"{v}\"")),
            ("name_env_listing", format!("C:\\> set {upper}={v}")),
            ("name_env_listing", format!("{upper}='{v}'")),
            ("name_env_listing", format!("$env:{upper} = \"{v}\"")),
            (
                "name_env_listing",
                format!("+ docker run --rm -e {upper}={v} {w}:latest"),
            ),
            (
                "name_env_listing",
                format!("+ docker build --build-arg {upper}={v} -t {w} ."),
            ),
            ("name_yaml", format!("  {any}: {v}")),
            ("name_yaml", format!("    {snake}: \"{v}\"")),
            ("name_yaml", format!("- {upper}={v}")),
            (
                "name_json",
                format!(r#"{{"{camel}": "{v}", "region": "eu-west-1"}}"#),
            ),
            ("name_json", format!(r#"{{"{snake}":"{v}","ok":true}}"#)),
            (
                "name_json",
                format!(r#"level=debug msg="payload {{\"{camel}\":\"{v}\"}}""#),
            ),
            (
                "name_logfmt",
                format!(
                    "ts=2024-05-01T10:00:00Z level=info msg=\"config loaded\" {snake}={v} env=prod"
                ),
            ),
            ("name_logfmt", format!("{kebab}=\"{v}\" host={h}")),
            ("name_properties", format!("{dotted} = \"{v}\"")),
            ("name_properties", format!("{dotted}={v}")),
            (
                "name_properties",
                format!("+ helm upgrade --install {w} ./chart --set {dotted}={v}"),
            ),
            (
                "name_properties",
                format!("+ kubectl create secret generic {w} --from-literal={snake}={v}"),
            ),
            ("name_properties", format!(":{snake} => '{v}',")),
        ];
        for (class, line) in forms {
            out.push(case(class, &v, line));
        }
    }
    let t = token(rng);
    out.push(case(
        "name_properties",
        &t,
        format!("//{}/:_authToken={t}", host(rng)),
    ));
    let p = password(rng);
    out.push(case(
        "name_properties",
        &p,
        format!(
            "ConnectionStrings__Default=\"Server={};Database=app;User Id={};Password={p};\"",
            host(rng),
            user(rng)
        ),
    ));
}

/// Lines that resemble the classes above but hold no secret.
fn near_miss_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let (u, h, r, w) = (user(rng), host(rng), registry(rng), word(rng));
    let (p1, p2) = (port(rng), port(rng));
    let n = 1 + rng.below(64);
    let cli = [
        format!("+ docker run -d -p {p1}:{p2} --name {w} {r}/{w}:latest"),
        format!("+ docker run --rm -p {p1} {w}"),
        format!("+ ssh -p {p1} {u}@{h} uptime"),
        format!("+ cargo test -p logstream-{w} --release"),
        format!("+ mkdir -p /var/tmp/{w}/{n}"),
        format!("+ mysql -h {h} -u {u} -p {w}_db"),
        format!("+ redis-cli -h {h} -p {p1} ping"),
        format!("+ docker login -u {u} -p $REGISTRY_PASSWORD {r}"),
        format!("+ docker login -u {u} --password-stdin {r}"),
        format!(
            "+ cat {} | docker login -u {u} --password-stdin {r}",
            path(rng)
        ),
        format!("+ sshpass -e ssh {u}@{h}"),
        format!("+ ssh-keygen -t ed25519 -N \"\" -f {}", path(rng)),
        format!("+ docker run -u {n}:{n} {w}"),
        format!("+ curl -u {u} https://{h}/api"),
        format!("+ curl -u \"$CI_USER:$CI_PASS\" https://{h}/api"),
        format!("+ curl -fsSL --user \"${{NEXUS_USER}}:${{NEXUS_PASSWORD}}\" https://{h}/"),
        format!("+ zip -r -q {w}.zip dist/"),
        format!("+ ps -p {n} -o comm="),
        format!("+ python -m pytest -p no:cacheprovider tests/{w}"),
        format!("+ openssl pkcs12 -export -passout env:P12_PASSWORD -out {w}.p12"),
        format!(
            "+ openssl enc -d -aes-256-cbc -pass file:{} -in a -out b",
            path(rng)
        ),
        format!("+ {w} --password-file {}", path(rng)),
        format!("+ {w} --token-file={}", path(rng)),
        format!("+ gpg --batch --passphrase-fd 0 --decrypt {w}.gpg"),
        "  -p, --password string   Password".to_owned(),
        "      --password-stdin    Take the password from stdin".to_owned(),
        format!(
            "  --token TOKEN         API token (default: ${}_TOKEN)",
            w.to_uppercase()
        ),
        "  --api-key <key>       The API key to use".to_owned(),
        format!(
            "+ helm repo add {w} https://{h}/charts --username {u} --password \"${{HELM_PASSWORD}}\""
        ),
        format!("+ {w} --password '***'"),
        format!("+ {w} --token=<redacted>"),
        format!("+ docker build --secret id={w},src=$HOME/.npmrc -t {w} ."),
        "+ gh auth login --with-token < token.txt".to_owned(),
        format!("+ {w} --auth-type basic --token-ttl {n}"),
        format!("+ {w} --no-password --skip-auth"),
        format!(
            "+ kubectl create secret generic {w} --from-file=ssh-privatekey={}",
            path(rng)
        ),
        format!("+ {w} --ssh-private-key ~/.ssh/id_ed25519"),
        format!("+ {w} --private-key-path /etc/ssl/private/{w}.pem"),
        format!("+ aws configure set region eu-west-{n}"),
        format!("+ npm config set registry https://{h}/npm/"),
        "+ cargo login".to_owned(),
        format!(
            "+ vault login -method=github token=${}_TOKEN",
            w.to_uppercase()
        ),
        format!("+ git clone https://github.com/acme/{w}.git"),
        format!("+ git clone git@github.com:acme/{w}.git"),
        format!("+ echo {w} | docker login -u {u} --password-stdin {r}"),
        format!("+ echo $CI_JOB_TOKEN | docker login -u {u} --password-stdin {r}"),
        format!("DEBUG exec: ['docker', 'run', '-p', '{p1}:{p2}', '{w}']"),
        format!("+ bash -c \"ssh -p {p1} {u}@{h} true\""),
    ];
    for l in cli {
        out.push(case("cli (near miss)", "", l));
    }
    let hex = rng.pick(HEX, 40);
    let names = [
        "SECRET_KEY_BASE=".to_owned(),
        "SECRET_KEY_BASE=${SECRET_KEY_BASE}".to_owned(),
        format!("+ export DB_PASSWORD_{}=\"$DB_PASSWORD\"", w.to_uppercase()),
        "  API_TOKEN: ${{ secrets.API_TOKEN }}".to_owned(),
        format!("PASSWORD_MIN_LENGTH={}", 8 + rng.below(10)),
        format!("TOKEN_TTL={}", 60 * n),
        format!("SECRET_NAME={w}-tls"),
        format!("  secretName: {w}-creds"),
        format!("  existingSecret: {w}-postgresql"),
        "  AUTH_TYPE: basic".to_owned(),
        "PASSWORD_AUTH=true".to_owned(),
        "MYSQL_ALLOW_EMPTY_PASSWORD=yes".to_owned(),
        format!(
            "GOOGLE_APPLICATION_CREDENTIALS=/home/runner/work/_temp/{w}-{}.json",
            rng.pick(HEX, 8)
        ),
        "credential.helper=store".to_owned(),
        "token_type=bearer".to_owned(),
        "  DB_PASSWORD: ***".to_owned(),
        "password=<redacted>".to_owned(),
        "api_key: [REDACTED]".to_owned(),
        format!("PWD=/builds/acme/{w}"),
        format!("OLDPWD=/home/{u}"),
        format!("KEY_SIZE={}", [1024, 2048, 4096][rng.below(3)]),
        format!("Cache restored from key: Linux-cargo-{hex}"),
        format!(
            "--- PASS: Test{}{} (0.0{n}s)",
            w[..1].to_uppercase(),
            &w[1..]
        ),
        "=== RUN   TestLogin/password=valid".to_owned(),
        format!("max_tokens={}", 256 * n),
        "SECRETS_DIR=/run/secrets".to_owned(),
        "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID".to_owned(),
        format!("TOKEN_ENDPOINT=https://{h}/oauth/token"),
        format!("AUTH_URL=https://{h}/v3"),
        "password: \"{{ vault_db_password }}\"".to_owned(),
        "client_secret = os.environ[\"CLIENT_SECRET\"]".to_owned(),
        "token = lexer.next_token()".to_owned(),
        "password_hash_algorithm: argon2id".to_owned(),
        format!("SSH_AUTH_SOCK=/tmp/ssh-{}/agent.{n}", rng.pick(ALNUM, 10)),
        "POSTGRES_HOST_AUTH_METHOD=trust".to_owned(),
        "    secrets: inherit".to_owned(),
        r#"{"password": null, "user": "ci"}"#.to_owned(),
        r#"{"api_key": "", "ok": true}"#.to_owned(),
        format!("token count: {n}"),
        format!("DB_PASSWORD_FILE=/run/secrets/{w}"),
        "REGISTRY_AUTH=htpasswd".to_owned(),
        format!(
            "  password: {}",
            ["changeme", "string", "required", "hidden"][rng.below(4)]
        ),
        format!("{w}.api_key.id = {}", rng.pick(DIGITS, 6)),
    ];
    for l in names {
        out.push(case("name (near miss)", "", l));
    }
    let prose = [
        format!("Bearer authentication is required for /v1/{w}"),
        "HTTP 401: Bearer token missing or expired".to_owned(),
        format!("WWW-Authenticate: Bearer realm=\"{h}\", error=\"invalid_token\""),
        format!("Basic authentication failed for user {u}"),
        format!("using Bearer Authentication scheme for {h}"),
        "Falling back to Basic Authentication".to_owned(),
        format!("> Authorization: Bearer ${}_TOKEN", w.to_uppercase()),
        "> Authorization: Bearer <token>".to_owned(),
        "> Authorization: Bearer ***".to_owned(),
        "Authorization: token ${{ secrets.GITHUB_TOKEN }}".to_owned(),
        format!("Authorization: Bearer authorization-{w}-required"),
        "the Bearer scheme requires an access token".to_owned(),
    ];
    for l in prose {
        out.push(case("bearer_prose (near miss)", "", l));
    }
}

#[test]
fn generated_classes_are_caught_and_their_near_misses_left_alone() {
    let r = Redactor::builtin();
    let mut rng = Rng::per_run();
    let mut cases = Vec::new();
    for _ in 0..8 {
        cli_cases(&mut rng, &mut cases);
    }
    name_cases(&mut rng, &mut cases);
    for _ in 0..4 {
        near_miss_cases(&mut rng, &mut cases);
    }
    // class -> (lines, caught) for secrets; (lines, changed) for near misses.
    let mut table: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut failures = Vec::new();
    for c in &cases {
        let out = r.redact(&c.line, &mut RedactionState::default());
        let e = table.entry(c.class).or_default();
        e.0 += 1;
        if c.secret.is_empty() {
            if out != c.line {
                e.1 += 1;
                failures.push(format!(
                    "false positive [{}]: {}\n    -> {out}",
                    c.class, c.line
                ));
            }
        } else if masked_after(&c.line, &out, &c.secret, 0) {
            e.1 += 1;
        } else {
            failures.push(format!("missed [{}]: {}\n    -> {out}", c.class, c.line));
        }
    }
    println!("| class | generated lines | recall | near-miss lines | false positives |");
    println!("|---|---:|---:|---:|---:|");
    let (mut secrets, mut caught, mut near, mut fps) = (0, 0, 0, 0);
    for (class, (lines, n)) in &table {
        if class.ends_with("(near miss)") {
            near += lines;
            fps += n;
            println!("| {class} | | | {lines} | {n} |");
        } else {
            secrets += lines;
            caught += n;
            println!(
                "| {class} | {lines} | {:.1}% | | |",
                *n as f64 * 100.0 / *lines as f64
            );
        }
    }
    println!(
        "| **all** | {secrets} | {:.1}% | {near} | {fps} |",
        caught as f64 * 100.0 / secrets as f64
    );
    assert!(
        failures.is_empty(),
        "{} of {} lines wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
