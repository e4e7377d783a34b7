//! Redaction throughput on the loghub corpus (the collector's hottest path):
//! `cargo run --release -p logstream-model --example redact_speed`.

use logstream_model::RedactionState;
use logstream_model::redact::{Redactor, StreamRedactor};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub");
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).expect("loghub data beside the repository") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read(&p).expect("readable");
            lines.extend(String::from_utf8_lossy(&text).lines().map(str::to_owned));
        }
    }
    let mut s = StreamRedactor::new(Arc::new(Redactor::builtin()));
    let rounds = 1_000_000 / lines.len() + 1;
    let start = Instant::now();
    let mut masked = 0usize;
    for _ in 0..rounds {
        for l in &lines {
            let mut st = RedactionState::default();
            if let std::borrow::Cow::Owned(_) = s.redact(l, &mut st) {
                masked += 1;
            }
        }
    }
    let n = rounds * lines.len();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} lines in {secs:.3} s: {:.0} lines/s ({masked} changed)",
        n as f64 / secs
    );
}
