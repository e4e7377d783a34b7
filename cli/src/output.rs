//! Printing lines and tables the way kubectl users expect: colours by level, aligned
//! and coloured step prefixes, `-o text|json|csv`.

use std::collections::HashMap;
use std::io::{BufWriter, Stdout, Write};

use logstream_model::wire;

use crate::style;

/// `-o` for lines.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// Writes lines to standard output.
pub struct Printer {
    format: Format,
    color: bool,
    timestamps: bool,
    out: BufWriter<Stdout>,
    /// Width of the widest step seen, for alignment.
    step_width: usize,
    /// Each step's number in order of first appearance (its colour).
    steps: HashMap<String, usize>,
    csv_header: bool,
    /// Remove the log's own ANSI escape sequences from messages.
    pub strip_ansi: bool,
}

impl Printer {
    pub fn new(format: Format, color: bool, timestamps: bool) -> Printer {
        Printer {
            format,
            color,
            timestamps,
            out: BufWriter::new(std::io::stdout()),
            step_width: 0,
            steps: HashMap::new(),
            csv_header: false,
            strip_ansi: false,
        }
    }

    pub fn line(&mut self, l: &wire::Line) -> anyhow::Result<()> {
        let stripped;
        let l = if self.strip_ansi && l.message.contains('\x1b') {
            stripped = wire::Line {
                message: logstream_model::strip_ansi(&l.message).into_owned(),
                ..l.clone()
            };
            &stripped
        } else {
            l
        };
        match self.format {
            Format::Json => writeln!(self.out, "{}", json_line(l)?)?,
            Format::Csv => {
                if !self.csv_header {
                    self.csv_header = true;
                    self.out.write_all(logstream_model::export::CSV_HEADER)?;
                }
                let mut rec = Vec::new();
                logstream_model::export::csv_line(
                    &mut rec, l.seq, &l.ts, &l.step, &l.stream, &l.level, &l.message,
                );
                self.out.write_all(&rec)?;
            }
            Format::Text => {
                if self.timestamps {
                    write!(self.out, "{} ", style::dim(self.color, &l.ts))?;
                }
                let step = l.step.as_str();
                if !step.is_empty() {
                    self.step_width = self.step_width.max(step.chars().count());
                    let n = self.steps.len();
                    let nth = *self.steps.entry(step.to_owned()).or_insert(n);
                    let pad = self.step_width - step.chars().count();
                    let step = style::step(self.color, nth, step);
                    write!(self.out, "{step}{:pad$} | ", "")?;
                }
                let message = style::level(self.color, &l.level, &l.message);
                writeln!(self.out, "{message}")?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

/// `-o json`: one line as JSON, its keys sorted (through serde_json's map, as this has
/// always printed lines).
fn json_line(l: &wire::Line) -> serde_json::Result<String> {
    Ok(serde_json::to_value(l)?.to_string())
}

/// `42s`, `5m`, `3h`, `2d`, like kubectl's AGE column.
pub fn age(ns: i64) -> String {
    let s = (ns / 1_000_000_000).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.1}KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.1}GiB", n as f64 / 1_073_741_824.0),
    }
}

/// Prints an aligned table with kubectl's look (two spaces between columns).
/// Prints a kubectl-style table; returns the column widths (for rows printed later).
pub fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    row(&widths, &headers.map(str::to_owned));
    for r in rows {
        row(&widths, r);
    }
    widths
}

/// One table row with the given column widths (wider cells push the rest right).
pub fn row<const N: usize>(widths: &[usize], cells: &[String; N]) {
    let mut s = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == N {
            s.push_str(c);
        } else {
            s.push_str(&format!("{c:w$}  "));
        }
    }
    println!("{}", s.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_print_as_before_with_sorted_keys() {
        // What the gateway sends, in its field order.
        let sent = r#"{"cursor":"c9","seq":9,"ts":"2024-01-02T03:04:05.123456789Z","step":"build","stream":"stderr","level":"warn","message":"key \u001b[31mAKIA****\u001b[0m \"q\", ü","metadata":{"split":"1/2"},"redaction":{"aws_access_key_id":1}}"#;
        let line: wire::Line = serde_json::from_str(sent).unwrap();
        let printed = json_line(&line).unwrap();
        // The bytes the CLI printed when it kept lines as `serde_json::Value`.
        let before = serde_json::from_str::<serde_json::Value>(sent)
            .unwrap()
            .to_string();
        assert_eq!(printed, before);
        assert!(printed.starts_with(r#"{"cursor":"c9","level":"warn","message":"#));
    }
}
