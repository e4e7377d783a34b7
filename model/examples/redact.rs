//! Prints every line the built-in redaction changes, for review by eye:
//! `cargo run -p logstream-model --example redact -- FILE...`
fn main() {
    let r = logstream_model::redact::Redactor::builtin();
    let (mut total, mut changed) = (0, 0);
    for path in std::env::args().skip(1) {
        let text = std::fs::read(&path).expect("readable file");
        for line in String::from_utf8_lossy(&text).lines() {
            total += 1;
            let mut state = logstream_model::RedactionState::default();
            let out = r.redact(line, &mut state);
            if out != line {
                changed += 1;
                println!("{path}: {:?}\n  - {line}\n  + {out}", state.0);
            }
        }
    }
    println!("{changed} of {total} lines changed");
}
