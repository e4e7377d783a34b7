//! Redaction benchmark: `cargo bench -p logstream-model --bench redact`.
//!
//! One core, every built-in detector on. Throughput over the loghub samples and the CI
//! logs (clean lines), over lines that all carry a secret, and the false-positive count
//! (lines changed in loghub + CI; each is printed for review).

use std::time::{Duration, Instant};

use logstream_model::RedactionState;
use logstream_model::redact::Redactor;

fn lines(sub: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(sub);
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("benchmark data")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for f in files {
        out.extend(
            String::from_utf8_lossy(&std::fs::read(f).unwrap())
                .lines()
                .map(str::to_owned),
        );
    }
    out
}

fn throughput(r: &Redactor, lines: &[String]) -> (f64, f64) {
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let (mut n, t) = (0usize, Instant::now());
    while t.elapsed() < Duration::from_secs(3) {
        for l in lines {
            let mut st = RedactionState::default();
            std::hint::black_box(r.redact(l, &mut st));
        }
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    (
        (bytes * n) as f64 / 1e6 / secs,
        (lines.len() * n) as f64 / secs,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let r = Redactor::builtin();
    let loghub = lines("loghub");
    let ci = lines("ci");
    let secrets: Vec<String> = [
        "deploy with AKIAIOSFODNN7EXAMPLE now",
        "export GITHUB_TOKEN=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "> Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
        "connecting to postgres://app:s3cr3tP4ss@db:5432/prod",
        "level=info msg=login password=Xy9!kq2Lm8 user=ci",
        r#"{"client_secret":"q8Wv2Lk9Zr4Tn6Yp1Hs3","ok":true}"#,
        // Issue 17: command-line options and names holding a secret word anywhere.
        "+ docker login -u ci -p Xk9#mQ2vL7pR registry.example.io",
        "+ curl -fsSL -u deploy:Tq4!zR8wLm2x https://nexus.internal/api/v1",
        "SECRET_KEY_BASE=9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6",
        "  stripeApiKeyLive: 4eC39HqLyjWDarjtT1zdp7dc",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    println!(
        "## Redaction (one core, all {} built-in detectors)\n",
        r.detector_names().len()
    );
    println!("| input | lines | MB/s | lines/s |");
    println!("|---|---:|---:|---:|");
    for (name, set) in [
        ("loghub, 16 systems (clean)", &loghub),
        ("CI build output (clean)", &ci),
        ("lines that each carry a secret", &secrets),
    ] {
        let (mbs, lps) = throughput(&r, set);
        println!("| {name} | {} | {mbs:.0} | {lps:.0} |", set.len());
    }
    let mut changed = Vec::new();
    for l in loghub.iter().chain(ci.iter()) {
        let mut st = RedactionState::default();
        let out = r.redact(l, &mut st);
        if out != *l {
            changed.push(format!("- `{l}` -> `{out}`"));
        }
    }
    println!(
        "\nFalse positives: {} of {} lines changed ({:.3}%).",
        changed.len(),
        loghub.len() + ci.len(),
        changed.len() as f64 * 100.0 / (loghub.len() + ci.len()) as f64
    );
    for c in changed {
        println!("{c}");
    }
}
