//! `run`: a CI agent. Runs a command as one step of a deployment, streams its
//! stdout/stderr to the gateway in idempotent batches (retried across gateway restarts),
//! and exits with the command's code. A failing step completes the deployment (a failure
//! ends a pipeline); a passing one leaves it open for the next step unless `--complete`.
//! `complete` is the same completion for wrappers that decide at the end.
//!
//! ```text
//! child stdout ─┐ one reader loop:       logstream_agent::Pusher: bounded (10k lines
//! child stderr ─┴─> lines stamped in ──────> unacknowledged: backpressure on the child's
//!                   read order                pipes), batches of 1,000 lines / 50 ms
//!   (or --pty: one terminal, so the command colours and line-buffers as it would
//!    for a person; stdout and stderr arrive merged, as on a terminal)
//!        │                                   └─POST /logs, Logstream-Source + -Batch,
//!        └─ echoed locally                     retried with backoff until acked
//! exit ──> drain ──> failed (or --complete): POST /complete ──> exit with the child's code
//! ```
//!
//! The pushing, retrying and completing is `logstream-agent`'s; this module runs the
//! command, reads its output and says on stderr what the agent retries.

use std::process::Stdio;
use std::sync::Arc;

use clap::Args;
use logstream_agent::{PushOptions, Pusher, RetryReason};
use logstream_model::wire;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::{Client, Exit, agent_error, usage};

/// A three-step pipeline, shown in `run --help`.
pub const PIPELINE_EXAMPLE: &str = "\
A deployment is a pipeline: run each step with the same --deployment. A failing step
completes the deployment as failed (with its exit code) and the pipeline stops there;
passing steps leave it open, and --complete on the last step completes it as succeeded.
Followers (`logs -f`) end when it completes and exit with its status.

  export LOGSTREAM_SERVER=https://logstream.example.com LOGSTREAM_TOKEN=...
  D=build-$CI_PIPELINE_ID
  kubectl logstream run --deployment $D --step checkout -- git clone $REPO src
  kubectl logstream run --deployment $D --step build -- make -C src
  kubectl logstream run --deployment $D --step test --complete -- make -C src test

A step allowed to fail takes --no-complete. A wrapper that decides at the end uses
`kubectl logstream complete $D --status succeeded|failed|cancelled [--exit-code N]`.
A deployment nobody completes ends as timed_out after the gateway's idle timeout.

Without --pty, stdout and stderr are two pipes read by one loop: lines are stamped in
the order they are read, never out of it, but a command's writes to the two pipes may
be read in another order than it made them. --pty gives the exact interleaving (one
terminal, as a person sees it), with both streams recorded as stdout.";

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
    /// line buffering); its stdout and stderr arrive as one stream in their exact order,
    /// as on a terminal. Width from $COLUMNS, else 120.
    #[arg(long)]
    pty: bool,
    /// Also complete the deployment when the command succeeds (the pipeline's last step).
    #[arg(long, conflicts_with = "no_complete")]
    complete: bool,
    /// Never complete the deployment, even when the command fails (a step allowed to
    /// fail).
    #[arg(long)]
    no_complete: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
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
        c.register_secrets(&args.deployment, values)
            .await
            .map_err(agent_error)?;
    }
    let pusher = c.push(
        &args.deployment,
        PushOptions {
            source: Some(format!(
                "run/{}/{}",
                std::process::id(),
                rand::random::<u32>()
            )),
            on_retry: Some(Arc::new(say_retry)),
            ..PushOptions::default()
        },
    );
    let cannot =
        |e: &dyn std::fmt::Display| Exit(127, format!("cannot run {:?}: {e}", args.command[0]));
    let (mut child, reader) = if args.pty {
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
        let reader = tokio::spawn(pump(read, None, pusher, step.clone(), args.quiet));
        (child, reader)
    } else {
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cannot(&e))?;
        let reader = tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            child.stderr.take(),
            pusher,
            step.clone(),
            args.quiet,
        ));
        (child, reader)
    };
    let (status, code) = tokio::select! {
        s = child.wait() => {
            let s = s?;
            let code = s.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(0)
            });
            (if code == 0 { "succeeded" } else { "failed" }, code)
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            ("cancelled", 130)
        }
    };
    let pusher = reader.await??;
    // Every line acknowledged; a final refusal (the deployment completed, a missing
    // scope, ...) ends the run with the gateway's message.
    pusher.finish().await.map_err(|e| match e {
        logstream_agent::Error::Protocol(m) => Exit(4, m).into(),
        e => agent_error(e),
    })?;
    // A failure (or Ctrl+C) ends the pipeline; a success leaves the deployment open for
    // the next step unless this is the last one.
    let completes = if code == 0 {
        args.complete
    } else {
        !args.no_complete
    };
    if completes {
        c.complete(&args.deployment, status, Some(code))
            .await
            .map_err(agent_error)?;
    }
    Ok(code)
}

/// `complete`: completes a deployment for a wrapper that decides at the end.
#[derive(Args)]
pub struct CompleteArgs {
    /// Deployment id.
    deployment: String,
    /// How the pipeline ended.
    #[arg(long, value_parser = ["succeeded", "failed", "cancelled"])]
    status: String,
    /// Exit code to record [default: 0 when succeeded, else 1].
    #[arg(long)]
    exit_code: Option<i32>,
}

/// Completes the deployment; one already completed with the same status is fine (a
/// failing step completed it before the wrapper's final word), another status is a
/// refusal naming what was recorded.
pub async fn complete_cmd(c: Client, args: CompleteArgs) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(&args.deployment)
        .map_err(|e| usage(format!("DEPLOYMENT {:?}: {e}", args.deployment)))?;
    match c
        .complete(&args.deployment, &args.status, args.exit_code)
        .await
    {
        Ok(done) => {
            eprintln!(
                "deployment {} completed: {} (exit code {})",
                args.deployment, done.status, done.exit_code
            );
            Ok(0)
        }
        Err(e) if e.api().is_some_and(|e| e.code == "deployment_completed") => {
            let d: wire::Deployment =
                crate::get_json(&c, &format!("/v1/deployments/{}", args.deployment), &[]).await?;
            if d.status == args.status {
                eprintln!(
                    "deployment {} had already completed: {}",
                    args.deployment, d.status
                );
                return Ok(0);
            }
            Err(Exit(
                2,
                format!(
                    "deployment {} had already completed as {} (exit code {}); a completion is final",
                    args.deployment,
                    d.status,
                    d.exit_code.unwrap_or_default()
                ),
            )
            .into())
        }
        Err(e) => Err(agent_error(e)),
    }
}

/// What the agent retries, said on stderr: a refusal each time, an unreachable gateway
/// once per batch.
fn say_retry(r: &logstream_agent::Retry) {
    match &r.reason {
        RetryReason::Refused(e) => eprintln!(
            "logstream: gateway answered HTTP {}; retrying",
            e.status.as_u16()
        ),
        RetryReason::Unreachable(e) if r.attempt == 0 => {
            eprintln!("logstream: cannot reach the gateway ({e}); buffering and retrying")
        }
        RetryReason::Unreachable(_) => {}
        RetryReason::CutOff(e) => eprintln!("logstream: {e}; retrying"),
    }
}

/// Reads the command's output: one loop over stdout and (without a terminal) stderr, so
/// lines are stamped in the order they are read and a later-read line never gets an
/// earlier timestamp (the stamp never goes back, even if the wall clock does).
async fn pump(
    out: impl AsyncRead + Unpin,
    err: Option<tokio::process::ChildStderr>,
    pusher: Pusher,
    step: String,
    quiet: bool,
) -> anyhow::Result<Pusher> {
    let mut out = BufReader::new(out);
    let mut err = err.map(BufReader::new);
    // Partial reads stay in these across the select (read_until is cancel-safe so).
    let (mut obuf, mut ebuf) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, err.is_some());
    let mut echo_out = tokio::io::stdout();
    let mut echo_err = tokio::io::stderr();
    let mut last_ts = 0i64;
    while out_open || err_open {
        let (stderr, read) = tokio::select! {
            r = out.read_until(b'\n', &mut obuf), if out_open => (false, r),
            r = async { err.as_mut().expect("open").read_until(b'\n', &mut ebuf).await }, if err_open => (true, r),
        };
        let buf = if stderr { &mut ebuf } else { &mut obuf };
        let end = match read {
            Ok(0) => true,
            Ok(_) => false,
            // A terminal whose other side closed (the command exited) reads EIO: the end,
            // after the unterminated last line, if any.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => true,
            Err(e) => return Err(e.into()),
        };
        if end {
            if stderr {
                err_open = false;
            } else {
                out_open = false;
            }
            if buf.is_empty() {
                continue;
            }
        }
        if !quiet {
            if stderr {
                echo_err.write_all(buf).await?;
            } else {
                echo_out.write_all(buf).await?;
            }
        }
        let text = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(buf));
        let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
        buf.clear();
        last_ts = now_ns().max(last_ts + 1);
        let line = if stderr {
            logstream_agent::Line::stderr(text)
        } else {
            logstream_agent::Line::stdout(text)
        };
        // Waits while the agent's buffer is full. An error: the pusher stopped (its
        // refusal is what `finish` returns).
        if pusher.send(line.ts(last_ts).step(&step)).await.is_err() {
            return Ok(pusher);
        }
    }
    Ok(pusher)
}
