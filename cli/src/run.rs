//! `run`: a CI agent. Runs a command, streams its stdout/stderr to the gateway in
//! idempotent batches (retried across gateway restarts), completes the deployment with
//! the command's exit code, and exits with it.
//!
//! ```text
//! child stdout ─┐                         bounded (backpressure on the child's pipes)
//! child stderr ─┴─> lines ──mpsc(10k)──> batcher (1,000 lines / 50 ms)
//!   (or --pty: one terminal, so the command colours and line-buffers as it would
//!    for a person; stdout and stderr arrive merged, as on a terminal)
//!        │                                   └─POST /logs, Logstream-Source + -Batch,
//!        └─ echoed locally                     retried with backoff until acked
//! exit ──> drain, POST /complete ──> exit with the child's code
//! ```

use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use logstream_model::wire;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::{ApiError, Client, Exit, api_error, usage};

#[derive(Args)]
pub struct RunArgs {
    /// Deployment id the output goes to.
    #[arg(long)]
    deployment: String,
    /// Step name [default: the command's name].
    #[arg(long)]
    step: Option<String>,
    /// Register the value of this environment variable as a secret to mask (repeatable).
    #[arg(long = "mask-env", value_name = "NAME")]
    mask_env: Vec<String>,
    /// Do not echo the command's output locally.
    #[arg(long)]
    quiet: bool,
    /// Run the command in a pseudo-terminal (it sees a terminal: colours, progress,
    /// line buffering); its stdout and stderr arrive as one stream, as on a terminal.
    /// Width from $COLUMNS, else 120.
    #[arg(long)]
    pty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

struct Line {
    stderr: bool,
    ts: i64,
    text: String,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub async fn run(c: Client, args: RunArgs) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(&args.deployment)
        .map_err(|e| usage(format!("--deployment {:?}: {e}", args.deployment)))?;
    let step = args.step.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.command[0])
            .file_name()
            .map_or_else(
                || args.command[0].clone(),
                |n| n.to_string_lossy().into_owned(),
            )
    });
    let mut values = Vec::new();
    for name in &args.mask_env {
        match std::env::var(name) {
            Ok(v) if v.len() >= 4 => values.push(v),
            Ok(_) => {
                return Err(usage(format!(
                    "--mask-env {name}: the value is shorter than 4 characters; too short to mask safely"
                )));
            }
            Err(_) => {
                return Err(usage(format!(
                    "--mask-env {name}: no such environment variable"
                )));
            }
        }
    }
    if !values.is_empty() {
        let resp = c
            .request(
                reqwest::Method::POST,
                &format!("/v1/deployments/{}/secrets", args.deployment),
            )?
            .json(&wire::SecretsRequest { values })
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
    }
    let (tx, rx) = mpsc::channel::<Line>(10_000);
    let cannot =
        |e: &dyn std::fmt::Display| Exit(127, format!("cannot run {:?}: {e}", args.command[0]));
    let (mut child, out, err) = if args.pty {
        let (pty, pts) = pty_process::open().map_err(|e| cannot(&e))?;
        let cols = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|c| *c >= 20)
            .unwrap_or(120);
        pty.resize(pty_process::Size::new(40, cols))
            .map_err(|e| cannot(&e))?;
        let child = pty_process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .spawn(pts)
            .map_err(|e| cannot(&e))?;
        let (read, mut write) = pty.into_split();
        // Our stdin goes to the terminal; at its end the terminal gets ^D (end of input).
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut write).await;
            let _ = write.write_all(b"\x04").await;
            // Keep the terminal's writing half open while the command runs.
            std::future::pending::<()>().await;
        });
        let out = tokio::spawn(pump(read, false, tx, args.quiet));
        (child, out, None)
    } else {
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cannot(&e))?;
        let out = tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            false,
            tx.clone(),
            args.quiet,
        ));
        let err = tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            true,
            tx,
            args.quiet,
        ));
        (child, out, Some(err))
    };
    let sender = tokio::spawn(send_batches(c.clone(), args.deployment.clone(), step, rx));
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = tokio::signal::ctrl_c() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = out.await;
            if let Some(err) = err {
                let _ = err.await;
            }
            sender.await??;
            complete(&c, &args.deployment, "cancelled", 130).await?;
            return Ok(130);
        }
    };
    out.await??;
    if let Some(err) = err {
        err.await??;
    }
    sender.await??;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    complete(
        &c,
        &args.deployment,
        if code == 0 { "succeeded" } else { "failed" },
        code,
    )
    .await?;
    Ok(code)
}

async fn pump(
    r: impl AsyncRead + Unpin,
    stderr: bool,
    tx: mpsc::Sender<Line>,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    let mut echo_out = tokio::io::stdout();
    let mut echo_err = tokio::io::stderr();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A terminal whose other side closed (the command exited) reads EIO: the end,
            // after the unterminated last line, if any.
            Err(e) if e.raw_os_error() == Some(libc::EIO) && !buf.is_empty() => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if !quiet {
            if stderr {
                echo_err.write_all(&buf).await?;
            } else {
                echo_out.write_all(&buf).await?;
            }
        }
        let text = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf));
        let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
        if tx
            .send(Line {
                stderr,
                ts: now_ns(),
                text,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Batches lines and posts them; a failed post is retried (same batch id, so the
/// gateway stores it once) until it is acknowledged.
async fn send_batches(
    c: Client,
    deployment: String,
    step: String,
    mut rx: mpsc::Receiver<Line>,
) -> anyhow::Result<()> {
    let source = format!("run/{}/{}", std::process::id(), rand::random::<u32>());
    let mut batch_id = 0u64;
    let mut pending: Vec<Line> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if open {
            let deadline = tokio::time::sleep(Duration::from_millis(50));
            tokio::pin!(deadline);
            while pending.len() < 1000 {
                tokio::select! {
                    l = rx.recv() => match l {
                        Some(l) => pending.push(l),
                        None => { open = false; break; }
                    },
                    () = &mut deadline => break,
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        batch_id += 1;
        let body: String = pending
            .iter()
            .map(|l| json!({"ts": l.ts, "step": step, "stream": if l.stderr { "stderr" } else { "stdout" }, "message": l.text}).to_string() + "\n")
            .collect();
        let mut attempt = 0u32;
        loop {
            let req = c
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/deployments/{deployment}/logs"),
                )?
                .header("content-type", "application/x-ndjson")
                .header("logstream-source", &source)
                .header("logstream-batch", batch_id.to_string())
                .body(body.clone());
            let mut at_least = None;
            match req.send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    // The durable acknowledgement.
                    Ok(body) => match serde_json::from_slice::<wire::IngestReply>(&body) {
                        Ok(_) => break,
                        Err(e) => {
                            return Err(Exit(
                                4,
                                format!(
                                    "the answer to POST /v1/deployments/{deployment}/logs is not an ingest reply ({e}); is the server a logstream gateway?"
                                ),
                            )
                            .into());
                        }
                    },
                    // Cut off while reading the answer: send the batch again (it is
                    // stored once).
                    Err(e) => eprintln!("logstream: {e}; retrying"),
                },
                Ok(r) => {
                    let e = ApiError::read(r).await;
                    // Final codes (the deployment completed, a missing scope, ...) end
                    // the run; the rest are retried, not sooner than Retry-After.
                    if !e.retryable() {
                        return Err(e.exit());
                    }
                    eprintln!(
                        "logstream: gateway answered HTTP {}; retrying",
                        e.status.as_u16()
                    );
                    at_least = e.retry_after;
                }
                Err(e) => {
                    if attempt == 0 {
                        eprintln!(
                            "logstream: cannot reach the gateway ({e}); buffering and retrying"
                        );
                    }
                }
            }
            attempt += 1;
            tokio::time::sleep(
                logstream_model::retry::backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    rand::random(),
                )
                .max(at_least.unwrap_or_default()),
            )
            .await;
        }
        pending.clear();
    }
    Ok(())
}

async fn complete(c: &Client, deployment: &str, status: &str, code: i32) -> anyhow::Result<()> {
    let mut attempt = 0u32;
    loop {
        match c
            .request(
                reqwest::Method::POST,
                &format!("/v1/deployments/{deployment}/complete"),
            )?
            .json(&wire::CompleteRequest {
                status: status.to_owned(),
                exit_code: Some(code),
            })
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let e = ApiError::read(r).await;
                if !e.retryable() || attempt >= 20 {
                    return Err(e.exit());
                }
                attempt += 1;
                let wait = Duration::from_millis(200 * u64::from(attempt.min(10)));
                tokio::time::sleep(wait.max(e.retry_after.unwrap_or_default())).await;
            }
            Err(_) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
