//! Prints the level detected for each line of the files given: `cargo run -p
//! logstream-model --example levels -- FILE...`. Used to review detection by eye.
fn main() {
    for path in std::env::args().skip(1) {
        let text = std::fs::read(&path).expect("readable file");
        for line in String::from_utf8_lossy(&text).lines() {
            let level = logstream_model::Level::detect(line);
            if level != logstream_model::Level::Unknown {
                println!("{level}\t{}", line.chars().take(150).collect::<String>());
            }
        }
    }
}
