//! `export`: a deployment's whole log to a file (or standard output), with a progress
//! bar on a terminal, resumable after any interruption.
//!
//! The log is downloaded as NDJSON, so every line carries its cursor, and rendered here
//! in the format asked for (the same writer as the gateway's, `logstream_model::export`).
//! With `-o FILE` the data goes to `FILE.part` and, after every page, the cursor of the
//! last line written and the file's length go to `FILE.part.json` (data flushed first,
//! so the state is never ahead of the data). A later run with the same arguments cuts
//! `FILE.part` back to that length and asks the gateway for the lines after the cursor;
//! when the log ends, `FILE.part` is renamed to `FILE`. A dropped connection is resumed
//! the same way within one run (the download and its resumption are
//! `logstream_agent::Export`'s; this module renders, writes and keeps the state).

use std::io::{IsTerminal, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use logstream_agent::{ExportEvent, ExportOptions};
use logstream_model::wire;
use serde::{Deserialize, Serialize};

use crate::{Client, Exit, get_json, output, refusal};

/// Lines between two state saves.
const SAVE_EVERY: u64 = 5000;
/// Downloads tried within one run (the first and the resumptions of a dropped one).
const ATTEMPTS: u32 = 8;

/// `FILE.part.json`: where an interrupted export stopped.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct State {
    deployment: String,
    format: String,
    /// Cursor of the last line in `FILE.part` within `bytes`.
    cursor: String,
    lines: u64,
    bytes: u64,
}

pub struct ExportArgs<'a> {
    pub id: &'a str,
    pub format: &'a str,
    pub output: Option<PathBuf>,
    pub restart: bool,
}

/// Where the rendered lines go.
enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        part: PathBuf,
        state: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
    },
}

fn part_paths(out: &Path) -> (PathBuf, PathBuf) {
    let mut part = out.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut state = part.as_os_str().to_owned();
    state.push(".json");
    (part, PathBuf::from(state))
}

fn read_state(path: &Path) -> anyhow::Result<Option<State>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is not an export state file; delete it or pass --restart",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the state next to the part file atomically (temp file, rename).
fn save_state(path: &Path, st: &State) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(st)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Renders one NDJSON line of the gateway (`raw`, parsed as `line`) in `format`.
fn render(out: &mut Vec<u8>, format: &str, raw: &[u8], line: &wire::Line) {
    match format {
        "ndjson" => {
            out.extend_from_slice(raw);
            out.push(b'\n');
        }
        "csv" => logstream_model::export::csv_line(
            out,
            line.seq,
            &line.ts,
            &line.step,
            &line.stream,
            &line.level,
            &line.message,
        ),
        _ => logstream_model::export::text_line(out, &line.ts, &line.message),
    }
}

pub async fn export(c: &Client, a: ExportArgs<'_>) -> anyhow::Result<i32> {
    let id = a.id;
    logstream_model::validate_deployment_id(id).map_err(|e| Exit(2, format!("ID {id:?}: {e}")))?;
    let info: wire::Deployment = get_json(c, &format!("/v1/deployments/{id}"), &[]).await?;
    let total = info.lines;
    let running = info.status == "running";

    let mut st = State {
        deployment: id.to_owned(),
        format: a.format.to_owned(),
        cursor: String::new(),
        lines: 0,
        bytes: 0,
    };
    let mut sink = match &a.output {
        None => Sink::Stdout(std::io::BufWriter::new(std::io::stdout())),
        Some(out) => {
            let (part, state) = part_paths(out);
            let previous = if a.restart { None } else { read_state(&state)? };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&part)
                .with_context(|| {
                    format!("-o {}: cannot write {}", out.display(), part.display())
                })?;
            match previous {
                Some(p) if p.deployment != id || p.format != a.format => {
                    return Err(Exit(
                        2,
                        format!(
                            "{} is an interrupted export of {} as {}; run that export again to finish it, or pass --restart to start this one over",
                            part.display(),
                            p.deployment,
                            p.format
                        ),
                    )
                    .into());
                }
                Some(p) => {
                    // Cut off whatever was written after the last saved state.
                    file.set_len(p.bytes)?;
                    eprintln!(
                        "resuming {} after line {} ({} already written)",
                        part.display(),
                        p.lines,
                        output::bytes(p.bytes)
                    );
                    st = p;
                }
                None => file.set_len(0)?,
            }
            file.seek(std::io::SeekFrom::End(0))?;
            Sink::File {
                part,
                state,
                file: std::io::BufWriter::with_capacity(1 << 20, file),
            }
        }
    };

    let bar = progress_bar(&sink, total.max(st.lines), st.lines);
    let mut download = c.export(
        id,
        ExportOptions {
            cursor: (!st.cursor.is_empty()).then(|| st.cursor.clone()),
            attempts: ATTEMPTS,
            ..ExportOptions::default()
        },
    );
    let mut rendered = Vec::with_capacity(1 << 16);
    let mut since_save = 0u64;
    loop {
        let event = match download.next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            // A code the contract says not to retry is final at once.
            Err(logstream_agent::Error::Api(e)) if !e.retryable() => return Err(refusal(e)),
            Err(e) => {
                bar.abandon();
                let again = match &a.output {
                    Some(_) => "run the same command again to resume",
                    None => "run it again, or use -o FILE to make it resumable",
                };
                return Err(anyhow::Error::new(e).context(format!(
                    "export interrupted after line {}; {again}",
                    st.lines
                )));
            }
        };
        match event {
            ExportEvent::Started => {
                if st.bytes == 0 && a.format == "csv" {
                    write(&mut sink, logstream_model::export::CSV_HEADER)?;
                    st.bytes += logstream_model::export::CSV_HEADER.len() as u64;
                }
            }
            ExportEvent::Line { raw, line } => {
                rendered.clear();
                render(&mut rendered, a.format, &raw, &line);
                write(&mut sink, &rendered)?;
                st.bytes += rendered.len() as u64;
                st.lines += 1;
                st.cursor = line.cursor;
                since_save += 1;
                if since_save >= SAVE_EVERY {
                    since_save = 0;
                    save(&mut sink, &st)?;
                }
                if st.lines.is_multiple_of(256) {
                    if bar.length().is_some_and(|l| st.lines > l) {
                        bar.set_length(st.lines);
                    }
                    bar.set_position(st.lines);
                }
            }
            ExportEvent::Resuming { error, wait } => {
                bar.suspend(|| {
                    eprintln!(
                        "export interrupted ({:#}); resuming after line {} in {:.1}s",
                        anyhow::Error::new(error),
                        st.lines,
                        wait.as_secs_f64()
                    )
                });
            }
        }
    }
    save(&mut sink, &st)?;
    if bar.length().is_some_and(|l| st.lines > l) {
        bar.set_length(st.lines);
    }
    bar.set_position(st.lines);
    bar.finish_and_clear();
    match sink {
        Sink::Stdout(mut out) => out.flush()?,
        Sink::File {
            part,
            state,
            mut file,
        } => {
            file.flush()?;
            file.get_ref().sync_all()?;
            let out = a.output.as_ref().expect("file sink has a path");
            std::fs::rename(&part, out)
                .with_context(|| format!("renaming {} to {}", part.display(), out.display()))?;
            let _ = std::fs::remove_file(&state);
            eprintln!(
                "wrote {} lines ({}) to {}{}",
                st.lines,
                output::bytes(st.bytes),
                out.display(),
                if running {
                    "; the deployment is still running, so this is the log so far"
                } else {
                    ""
                }
            );
        }
    }
    Ok(0)
}

/// A bar on standard error when it is a terminal (and the data is not going to it).
fn progress_bar(sink: &Sink, total: u64, done: u64) -> indicatif::ProgressBar {
    let visible = std::io::stderr().is_terminal()
        && !(matches!(sink, Sink::Stdout(_)) && std::io::stdout().is_terminal());
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} lines  {binary_bytes} written  {per_sec}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(done);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn write(sink: &mut Sink, b: &[u8]) -> anyhow::Result<()> {
    match sink {
        Sink::Stdout(o) => o.write_all(b)?,
        Sink::File { file, .. } => file.write_all(b)?,
    }
    Ok(())
}

/// Flushes the data, then records how far it goes (the state never runs ahead).
fn save(sink: &mut Sink, st: &State) -> anyhow::Result<()> {
    if let Sink::File { file, state, .. } = sink {
        file.flush()?;
        save_state(state, st)?;
    }
    Ok(())
}
