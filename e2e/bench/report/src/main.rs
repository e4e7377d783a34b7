//! `logstream-bench-report`: the PNG plots of the benchmark report, drawn with plotters.
//!
//! ```text
//! e2e/bench/run ── figures.json (medians and spreads over runs) ──> plots --out-dir docs/bench
//!                                                  latency.png, throughput.png, bytes-per-line.png
//! e2e/bench/fanout/run ── fanout-results.json (rows) ─────────────> fanout --out PNG
//! ```
//!
//! Text is drawn with a TrueType font read at run time (Debian's `fonts-dejavu-core` by
//! default). A plot whose figures are absent is not drawn; every file written is printed
//! on stdout, one path per line.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod input;
mod plot;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use plotters::style::FontStyle;

use crate::input::{FanoutResults, Figures, latency_points};

#[derive(Parser)]
#[command(
    name = "logstream-bench-report",
    about = "Draws the benchmark report's plots (PNG) from the figures e2e/bench/run combined"
)]
struct Cli {
    /// The TrueType font for all text.
    #[arg(
        long,
        env = "LOGSTREAM_BENCH_FONT",
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw latency.png, throughput.png and bytes-per-line.png into OUT_DIR from the
    /// figures `e2e/bench/run` wrote.
    Plots {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Draw the latency plot from the rows `e2e/bench/fanout/run` wrote.
    Fanout {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The line under the title.
        #[arg(long, default_value = "")]
        caption: String,
    },
}

/// Registers `path` as the sans-serif font (plotters keeps it for the process).
fn register_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the font {} (Debian: apt-get install fonts-dejavu-core, or pass --font)",
            path.display()
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    if plotters::style::register_font(plot::FONT, FontStyle::Normal, bytes).is_err() {
        bail!("{} is not a TrueType/OpenType font", path.display());
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    register_font(&cli.font)?;
    match cli.command {
        Command::Plots { input, out_dir } => {
            let figures: Figures = read_json(&input)?;
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            if !figures.latency.is_empty() {
                let out = out_dir.join("latency.png");
                plot::latency(&figures.latency, &figures.caption, &out)?;
                println!("{}", out.display());
            }
            if !figures.throughput.is_empty() {
                let out = out_dir.join("throughput.png");
                plot::throughput(&figures.throughput, &figures.caption, &out)?;
                println!("{}", out.display());
            }
            if !figures.bytes_per_line.is_empty() {
                let out = out_dir.join("bytes-per-line.png");
                plot::bytes_per_line(&figures.bytes_per_line, &figures.caption, &out)?;
                println!("{}", out.display());
            }
        }
        Command::Fanout {
            results,
            out,
            caption,
        } => {
            let results: FanoutResults = read_json(&results)?;
            let points = latency_points(&results.rows);
            if points.is_empty() {
                bail!("no fan-out row with latencies to plot");
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            plot::latency(&points, &caption, &out)?;
            println!("{}", out.display());
        }
    }
    Ok(())
}
