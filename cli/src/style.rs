//! Terminal styling, in one place: whether to colour, and one function per style. Every
//! ANSI escape code the CLI prints is written here.
//!
//! A style wraps any `Display` value and costs no allocation; with colour off it prints
//! the value unchanged.

use std::fmt;
use std::io::IsTerminal;

/// `--color`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// Whether to colour: `always`, `never`, or (`auto`) when standard output is a terminal
/// and `NO_COLOR` is unset or empty.
pub fn enabled(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// SGR codes.
const DIM: &str = "2";
const RED: &str = "31";
const YELLOW: &str = "33";
/// Step prefixes, in order of first appearance: cyan, magenta, blue, green, yellow,
/// bright cyan, then again.
const STEP_COLOURS: [&str; 6] = ["36", "35", "34", "32", "33", "96"];
/// Back to the terminal's normal rendition.
const RESET: &str = "\x1b[0m";

/// `text` in an SGR style (or plain).
pub struct Styled<T> {
    sgr: Option<&'static str>,
    text: T,
}

impl<T: fmt::Display> fmt::Display for Styled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sgr {
            Some(code) => write!(f, "\x1b[{code}m{}{RESET}", self.text),
            None => self.text.fmt(f),
        }
    }
}

fn styled<T>(on: bool, sgr: Option<&'static str>, text: T) -> Styled<T> {
    Styled {
        sgr: sgr.filter(|_| on),
        text,
    }
}

/// Secondary text: timestamps, status lines on standard error.
pub fn dim<T>(on: bool, text: T) -> Styled<T> {
    styled(on, Some(DIM), text)
}

/// The `n`th distinct step's prefix (0 for the first seen).
pub fn step<T>(on: bool, n: usize, text: T) -> Styled<T> {
    styled(on, Some(STEP_COLOURS[n % STEP_COLOURS.len()]), text)
}

/// A message by its level: error and fatal red, warn yellow, debug and trace dim, the
/// rest plain.
pub fn level<T>(on: bool, level: &str, text: T) -> Styled<T> {
    let sgr = match level {
        "error" | "fatal" => Some(RED),
        "warn" => Some(YELLOW),
        "debug" | "trace" => Some(DIM),
        _ => None,
    };
    styled(on, sgr, text)
}

/// After Ctrl+C: whatever was cut short, leave the terminal in its normal colours and
/// on a fresh line.
pub fn restore_terminal() {
    if std::io::stdout().is_terminal() {
        print!("{RESET}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    if std::io::stderr().is_terminal() {
        eprintln!("{RESET}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_are_ansi_sgr_or_plain() {
        assert_eq!(dim(true, "x").to_string(), "\x1b[2mx\x1b[0m");
        assert_eq!(dim(false, "x").to_string(), "x");
        assert_eq!(level(true, "error", "e").to_string(), "\x1b[31me\x1b[0m");
        assert_eq!(level(true, "fatal", "e").to_string(), "\x1b[31me\x1b[0m");
        assert_eq!(level(true, "warn", "w").to_string(), "\x1b[33mw\x1b[0m");
        assert_eq!(level(true, "trace", "t").to_string(), "\x1b[2mt\x1b[0m");
        assert_eq!(level(true, "info", "i").to_string(), "i");
        assert_eq!(level(false, "error", "e").to_string(), "e");
        assert_eq!(step(true, 0, "a").to_string(), "\x1b[36ma\x1b[0m");
        assert_eq!(step(true, 1, "b").to_string(), "\x1b[35mb\x1b[0m");
        assert_eq!(step(true, 6, "a").to_string(), "\x1b[36ma\x1b[0m");
        assert_eq!(step(false, 1, "b").to_string(), "b");
        assert!(enabled(ColorWhen::Always) && !enabled(ColorWhen::Never));
    }
}
