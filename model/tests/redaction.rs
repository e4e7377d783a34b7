//! Redaction: a corpus of real-format secrets in realistic lines (all caught), near
//! misses (none touched), stream state (PEM blocks, `::add-mask::`), and properties.

use logstream_model::RedactionState;
use logstream_model::redact::{MaskStyle, RedactError, Redactor, StreamRedactor};
use proptest::prelude::*;

/// Deterministic xorshift so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
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
fn corpus() -> Vec<(&'static str, String, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
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
            let s = github_token(&mut rng, p);
            add("github_token", s.clone(), t.replace("{}", &s));
        }
        let s = format!("github_pat_{}_{}", rng.pick(ALNUM, 22), rng.pick(ALNUM, 59));
        add(
            "github_fine_grained_pat",
            s.clone(),
            format!("git clone https://x:{s}@github.com/acme/repo.git"),
        );
        let s = format!("glpat-{}", b64url(&mut rng, 20));
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
        let s = format!("AIza{}", b64url(&mut rng, 35));
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
            b64url(&mut rng, 20),
            b64url(&mut rng, 40),
            b64url(&mut rng, 43)
        );
        add("jwt", s.clone(), t.replace("{}", &s));
        let s = b64url(&mut rng, 32);
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
        let s = format!("pypi-AgEIcHlwaS5vcmc{}", b64url(&mut rng, 70));
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
        let s = format!("SG.{}.{}", b64url(&mut rng, 22), b64url(&mut rng, 43));
        add("sendgrid_api_key", s.clone(), t.replace("{}", &s));
    }
    out
}

#[test]
fn every_secret_of_the_corpus_is_caught() {
    let r = Redactor::builtin();
    let corpus = corpus();
    assert!(corpus.len() >= 300, "corpus has {} secrets", corpus.len());
    let mut missed = Vec::new();
    for (det, secret, line) in &corpus {
        let mut state = RedactionState::default();
        let out = r.redact(line, &mut state);
        // The kept prefix (AKIA, ghp_) is public; the rest must be gone.
        let tail = &secret[secret.len().min(12)..];
        if out.contains(secret.as_str()) || out.contains(tail) || state.0.is_empty() {
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
    for (det, _, line) in corpus() {
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
