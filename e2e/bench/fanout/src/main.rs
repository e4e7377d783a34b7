//! `logstream-fanout-bench`: the load generator and report of `e2e/bench/fanout` (the
//! fan-out acceptance benchmark; `e2e/bench/fanout/run` starts the servers and drives it).
//!
//! ```text
//! pusher ── one line per POST, stamped with its send time ──> store | nchan publisher
//!                                                               │
//!                                           edges (logstream) | nginx workers (nchan)
//!                                                               │ SSE or WebSocket
//! N viewers (spread over the targets) ── now - sent per line ──> latency, lost, duplicates
//! RSS / CPU from /proc, gauges from /metrics ──────────────────> one JSON row per run
//! ```
//!
//! Subcommands: `run` measures one row and prints it as one JSON line; `report` turns
//! rows into markdown tables and a results file; `ports` prints free loopback ports.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod http;
mod probe;
mod push;
mod report;
mod row;
mod viewer;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "logstream-fanout-bench",
    about = "Fan-out benchmark: N live viewers of one deployment, logstream vs nginx + nchan"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure one row and print it as one JSON line on stdout (progress on stderr).
    Run(Box<row::RunArgs>),
    /// Print markdown tables of the rows in a JSON Lines file; optionally write them all
    /// as one JSON document.
    Report {
        /// Rows, one JSON object per line (what `run` printed).
        #[arg(long)]
        rows: PathBuf,
        /// Where to write `{"rows":[...]}`.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print COUNT distinct free ports on 127.0.0.1, space-separated.
    Ports { count: usize },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            // Two worker threads: the machine has two cores, shared with the servers.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let row = rt.block_on(row::run(&args));
            println!("{}", serde_json::to_string(&row)?);
            // Viewer tasks still open are dropped with the runtime, not awaited.
            rt.shutdown_background();
            Ok(())
        }
        Command::Report { rows, json } => {
            let text = std::fs::read_to_string(&rows)
                .with_context(|| format!("--rows {}", rows.display()))?;
            let rows: Vec<report::Row> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).with_context(|| format!("row {l:?}")))
                .collect::<anyhow::Result<_>>()?;
            print!("{}", report::markdown(&rows));
            if let Some(path) = json {
                let doc = serde_json::json!({ "rows": rows });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
                    .with_context(|| format!("--json {}", path.display()))?;
            }
            Ok(())
        }
        Command::Ports { count } => {
            // All bound at once so they differ; released on return for the servers.
            let listeners = (0..count)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<Vec<_>, _>>()?;
            let ports: Vec<String> = listeners
                .iter()
                .map(|l| Ok(l.local_addr()?.port().to_string()))
                .collect::<std::io::Result<_>>()?;
            println!("{}", ports.join(" "));
            Ok(())
        }
    }
}
