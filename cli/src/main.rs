//! `kubectl logstream`: the viewer and CI agent of logstream.
//!
//! ```text
//! logs ID [-f] ──GET /logs (history pages)──> print
//!          └─ -f: GET /stream (SSE) ──reconnect with Last-Event-ID──> print ──end──> exit code
//! run -- CMD ──pipes──> batch ──POST /logs (idempotent batches, retried)──> complete ──> exit CMD's code
//! ```
//!
//! Exit codes: 0 success (or the deployment succeeded, with `-f`), 1 the deployment
//! failed, 3 it was cancelled, 5 it timed out (nobody completed it), 2 usage errors and
//! final refusals (an error code the contract says not to retry), 130 interrupted,
//! 4 server/network errors.
//!
//! The gateway client (connection, pushes, follow, export, retries) is the
//! `logstream-agent` crate; this binary parses arguments, finds the gateway through the
//! kubeconfig, and prints. Retries are decided by the error body's code alone
//! (`logstream_model::retry`); a refusal's exit code is [`refusal`]'s.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod export;
mod hotfix;
mod kube;
mod output;
mod run;
mod style;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use logstream_agent::{ApiError, Event, FollowOptions};
use logstream_model::wire;
use serde::de::DeserializeOwned;

use crate::output::{Format, Printer};

#[derive(Parser)]
#[command(
    name = "kubectl-logstream",
    bin_name = "kubectl logstream",
    version,
    about = "Tail, query and export logstream deployments; run CI steps that stream their output"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

/// Where the gateway is and who we are.
#[derive(Args, Clone)]
struct Conn {
    /// Gateway URL, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "LOGSTREAM_SERVER")]
    server: Option<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (re-read on every reconnect, so rotation works).
    #[arg(long, global = true, env = "LOGSTREAM_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Colour output.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: style::ColorWhen,
    /// Without --server: the kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Without --server: the namespace of the LogStream (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Without --server: which LogStream, when the namespace has several.
    #[arg(long, global = true)]
    logstream: Option<String>,
    /// Without --server: the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Set when the server was found through the kubeconfig.
    #[arg(skip)]
    via_kubeconfig: bool,
    /// Gets the kubeconfig user's token again (exec plugin, token file).
    #[arg(skip)]
    refresh: Option<Refresh>,
}

/// Gets a fresh token (the kubeconfig user's exec plugin run again).
pub use logstream_agent::Refresh;

#[derive(Subcommand)]
enum Command {
    /// Print a deployment's log; with -f, follow it until it completes.
    Logs(LogsArgs),
    /// List deployments.
    Get {
        /// What to list: `deployments`.
        #[arg(value_parser = ["deployments", "deployment", "deploy"])]
        what: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ListFormat,
        /// After the table, print a row each time a deployment appears or changes
        /// (status, steps or line count; the gateway's change feed, no polling), like
        /// `kubectl get -w`; Ctrl+C to stop.
        #[arg(short = 'w', long)]
        watch: bool,
        /// At most this many deployments, newest first [default: all].
        #[arg(long)]
        limit: Option<usize>,
        /// Only these statuses (comma-separated: running, succeeded, failed, cancelled,
        /// timed_out, completed).
        #[arg(long)]
        status: Option<String>,
    },
    /// One deployment's status and counts.
    Describe { id: String },
    /// Download a deployment's whole log (progress bar on a terminal; with -o,
    /// resumable: run the same command again after an interruption).
    Export {
        id: String,
        #[arg(long, value_parser = ["text", "ndjson", "csv"], default_value = "text")]
        format: String,
        /// Write to this file instead of standard output (via FILE.part, which a later
        /// run resumes).
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
        /// Discard an interrupted FILE.part and start over.
        #[arg(long, requires = "output")]
        restart: bool,
        /// Print a signed link instead (no token needed to download it, until it
        /// expires; cacheable and resumable once the deployment completed).
        #[arg(long, conflicts_with_all = ["output", "restart"])]
        link: bool,
        /// With --link: how long it works, 1m to 168h.
        #[arg(
            long,
            requires = "link",
            value_name = "DURATION",
            default_value = "24h"
        )]
        expires: String,
    },
    /// Run a command as a pipeline step: stream its output, exit with its code; a failing
    /// step completes the deployment (see --help for a three-step pipeline).
    #[command(after_long_help = run::PIPELINE_EXAMPLE)]
    Run(run::RunArgs),
    /// Complete a deployment (for a wrapper that decides how the pipeline ended).
    Complete(run::CompleteArgs),
    /// Mask a leaked secret in a stored log (scope logs:admin): --seq A-B and/or
    /// --match REGEX, --reason; audited, and `store verify` still passes and names it.
    Redact(hotfix::RedactArgs),
    /// Delete a deployment and every line of it (scope logs:admin); audited.
    Delete(hotfix::DeleteArgs),
    /// Serve the Model Context Protocol on stdin/stdout for an assistant or IDE (its
    /// tools and resources read deployments with this CLI's gateway and token; see the
    /// README for client configuration).
    Mcp,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Args)]
struct LogsArgs {
    /// Deployment id.
    id: String,
    /// Follow: stream new lines until the deployment completes; exit with its status.
    /// A deployment with no line yet (a queued pipeline) is waited for.
    #[arg(short = 'f', long)]
    follow: bool,
    /// With -f: give up waiting for a deployment with no line yet after this long
    /// (exit 5) [default: wait until Ctrl+C].
    #[arg(long, requires = "follow", value_name = "DURATION")]
    wait_timeout: Option<String>,
    /// No lines of our own on stderr (the waiting notice, the summary at the end).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Remove the log's own ANSI escape sequences (colours, cursor moves) from messages
    /// [default: keep them, as raw logs do].
    #[arg(long)]
    strip_ansi: bool,
    /// Only lines newer than a duration (10m, 1h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only the last N lines (then follow, with -f).
    #[arg(long)]
    tail: Option<usize>,
    /// With -f: resume after this bookmark of your token's subject (kept on the gateway,
    /// so another machine continues where this one stopped) and keep it on the last
    /// line shown; without the bookmark yet, start as the other flags say.
    #[arg(
        long,
        requires = "follow",
        conflicts_with = "cursor",
        value_name = "NAME"
    )]
    bookmark: Option<String>,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
    /// Levels: `error`, `warn+` (warn and above), `info,warn`.
    #[arg(long)]
    level: Option<String>,
    /// Only these steps (comma-separated).
    #[arg(long)]
    step: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Resume after this cursor.
    #[arg(long)]
    cursor: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// How -f receives live lines: Server-Sent Events, or a WebSocket (batched frames;
    /// needs --server: the kubeconfig route carries SSE only).
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Transport {
    Sse,
    Ws,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Exit(pub i32, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `run` handles Ctrl+C itself (it completes the deployment as cancelled).
    let is_run = matches!(cli.command, Command::Run(_));
    let code = rt.block_on(async move {
        if is_run {
            return match dispatch(cli).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    e.downcast_ref::<Exit>().map_or(4, |x| x.0)
                }
            };
        }
        let outcome = |r: anyhow::Result<i32>| match r {
            Ok(code) => code,
            Err(e) => {
                let code = e.downcast_ref::<Exit>().map_or(4, |x| x.0);
                eprintln!("error: {e:#}");
                code
            }
        };
        let run = dispatch(cli);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => outcome(r),
            _ = tokio::signal::ctrl_c() => {
                if SAVES_ON_INTERRUPT.load(std::sync::atomic::Ordering::Relaxed) {
                    // The command saves its place first (a follow's bookmark), briefly.
                    INTERRUPT.notify_one();
                    if let Ok(r) = tokio::time::timeout(Duration::from_secs(6), &mut run).await {
                        style::restore_terminal();
                        return outcome(r);
                    }
                }
                style::restore_terminal();
                130
            }
        }
    });
    std::process::exit(code);
}

/// Set by a command that has something to save on Ctrl+C; `INTERRUPT` then tells it.
static SAVES_ON_INTERRUPT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
static INTERRUPT: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let mut conn = cli.conn;
    let needs_server = !matches!(cli.command, Command::Completion { .. } | Command::Version);
    if needs_server && conn.server.is_none() {
        let found = kube::discover(&kube::KubeOpts {
            kubeconfig: conn.kubeconfig.clone(),
            context: conn.context.clone(),
            namespace: conn.namespace.clone(),
            logstream: conn.logstream.clone(),
        })
        .await?;
        if std::env::var_os("LOGSTREAM_DEBUG").is_some() {
            eprintln!("gateway: {}", found.describe);
        }
        conn.server = Some(found.server);
        conn.via_kubeconfig = true;
        if conn.token.is_none() && conn.token_file.is_none() {
            conn.token = found.user_token;
            conn.refresh = found.refresh;
        }
    }
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubectl-logstream",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Version => {
            println!("kubectl-logstream {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Logs(args) => logs(&Client::new(&conn)?, &conn, args).await,
        Command::Get {
            output,
            watch: false,
            limit,
            status,
            ..
        } => list(&Client::new(&conn)?, output, limit, status).await,
        Command::Get {
            output: ListFormat::Json,
            watch: true,
            ..
        } => Err(Exit(
            2,
            "-w prints table rows; use it without -o json (or poll `get deployments -o json`)"
                .into(),
        )
        .into()),
        Command::Get {
            watch: true,
            limit,
            status,
            ..
        } => watch_list(&Client::new(&conn)?, limit, status).await,
        Command::Describe { id } => describe(&Client::new(&conn)?, &id).await,
        Command::Export {
            id,
            format,
            link: true,
            expires,
            ..
        } => {
            logstream_model::validate_deployment_id(&id)
                .map_err(|e| Exit(2, format!("ID {id:?}: {e}")))?;
            let c = Client::new(&conn)?;
            let req = wire::ExportLinkRequest {
                format: Some(format),
                expires_in: Some(expires),
                ..Default::default()
            };
            let l = c.export_link(&id, &req).await.map_err(agent_error)?;
            println!("{}", l.url);
            eprintln!(
                "{}",
                style::dim(c.color, format!("expires {}", l.expires_at))
            );
            Ok(0)
        }
        Command::Export {
            id,
            format,
            output,
            restart,
            ..
        } => {
            export::export(
                &Client::new(&conn)?,
                export::ExportArgs {
                    id: &id,
                    format: &format,
                    output,
                    restart,
                },
            )
            .await
        }
        Command::Run(args) => run::run(Client::new(&conn)?, args).await,
        Command::Mcp => mcp(Client::new(&conn)?).await,
        Command::Complete(args) => run::complete_cmd(Client::new(&conn)?, args).await,
        Command::Redact(args) => hotfix::redact(&Client::new(&conn)?, args).await,
        Command::Delete(args) => hotfix::delete(&Client::new(&conn)?, args).await,
    }
}

/// The gateway client (`logstream_agent::Client`: base URL, token source, HTTP client)
/// and how this CLI prints.
#[derive(Clone)]
pub struct Client {
    api: logstream_agent::Client,
    color: bool,
    /// The server is the local forwarder to the API server's service proxy.
    via_kubeconfig: bool,
}

impl std::ops::Deref for Client {
    type Target = logstream_agent::Client;

    fn deref(&self) -> &logstream_agent::Client {
        &self.api
    }
}

impl Client {
    fn new(conn: &Conn) -> anyhow::Result<Client> {
        let Some(server) = conn.server.clone() else {
            return Err(Exit(
                2,
                "no gateway: pass --server URL or set LOGSTREAM_SERVER".into(),
            )
            .into());
        };
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Exit(
                2,
                format!("--server {server:?}: must start with http:// or https://"),
            )
            .into());
        }
        let mut api = logstream_agent::Client::new(&base)?;
        if let Some(t) = &conn.token {
            api = api.with_token(t);
        }
        if let Some(f) = &conn.token_file {
            api = api.with_token_file(f);
        }
        if let Some(r) = &conn.refresh {
            api = api.with_refresh(r.clone());
        }
        Ok(Client {
            api,
            color: style::enabled(conn.color),
            via_kubeconfig: conn.via_kubeconfig,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        self.api.request(method, path).map_err(agent_error)
    }
}

impl logstream_mcp::api::TokenSource for Client {
    fn token(&self) -> Result<Option<String>, String> {
        self.api
            .token()
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
    }

    fn refresh(&self) -> bool {
        if !self.refreshable() {
            return false;
        }
        self.refresh_token();
        true
    }
}

/// `mcp`: the MCP server on stdio, calling the gateway as this CLI does.
async fn mcp(c: Client) -> anyhow::Result<i32> {
    let api = logstream_mcp::api::Api::new(c.base())?;
    let shared = logstream_mcp::server::Shared::new(api, Default::default());
    logstream_mcp::serve_stdio(shared, std::sync::Arc::new(c))
        .await
        .context("serving MCP on stdin/stdout")?;
    Ok(0)
}

/// GETs `path` and parses the JSON answer; an error answer becomes its message.
async fn get_json<T: DeserializeOwned>(
    c: &Client,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<T> {
    c.api.get_json(path, query).await.map_err(agent_error)
}

/// The error to end with: a refusal by its code (see [`refusal`]), anything else as
/// itself (exit code 4: the server or the network).
fn agent_error(e: logstream_agent::Error) -> anyhow::Error {
    match e {
        logstream_agent::Error::Api(e) => refusal(e),
        e => e.into(),
    }
}

/// A refusal ends with exit code 4 for what may pass (a retryable code: the server or
/// the network), 2 for a final refusal, and the gateway's message.
fn refusal(e: ApiError) -> anyhow::Error {
    let code = if e.retryable() { 4 } else { 2 };
    Exit(code, e.to_string()).into()
}

fn query(args: &LogsArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("since", &args.since),
        ("level", &args.level),
        ("step", &args.step),
        ("q", &args.grep),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

async fn logs(c: &Client, conn: &Conn, args: LogsArgs) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(&args.id)
        .map_err(|e| Exit(2, format!("ID {:?}: {e}", args.id)))?;
    let mut printer = Printer::new(args.output, c.color, args.timestamps);
    printer.strip_ansi = args.strip_ansi;
    let wait_timeout = match &args.wait_timeout {
        None => None,
        Some(v) => Some(
            logstream_model::time::parse_duration(v)
                .filter(|n| *n > 0)
                .map(|n| Duration::from_nanos(n as u64))
                .ok_or_else(|| {
                    usage(format!(
                        "--wait-timeout {v:?}: use a duration like 10m or 90s"
                    ))
                })?,
        ),
    };
    if !args.follow {
        return history(c, &args, &mut printer).await.map(|()| 0);
    }
    if args.transport == Transport::Ws && c.via_kubeconfig {
        return Err(usage(format!(
            "--transport ws: the route found from the kubeconfig (context {}) carries SSE only; drop --transport or pass --server",
            conn.context.as_deref().unwrap_or("current")
        )));
    }
    // Follow: the agent reconnects after the last line's cursor after any disconnect
    // (backoff with jitter, 200 ms doubling, at most 10 s; at least the server's
    // `Retry-After`) and gets the token again after a 401.
    let mut start = args.cursor.clone();
    let mut tail = args.tail;
    let mut bookmark = match &args.bookmark {
        None => None,
        Some(name) => {
            logstream_model::validate_bookmark_name(name)
                .map_err(|e| usage(format!("--bookmark {name:?}: {e}")))?;
            if let Some(b) = c.bookmark(&args.id, name).await.map_err(agent_error)? {
                if !args.quiet {
                    eprintln!(
                        "{}",
                        style::dim(
                            c.color,
                            format!("resuming after line {} (bookmark {name})", b.seq)
                        )
                    );
                }
                start = Some(b.cursor);
                tail = None;
            }
            SAVES_ON_INTERRUPT.store(true, std::sync::atomic::Ordering::Relaxed);
            Some(Bookmarker::start(c.clone(), args.id.clone(), name.clone()))
        }
    };
    let mut follow = c.follow(
        &args.id,
        FollowOptions {
            cursor: start,
            tail,
            filters: query(&args)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            transport: match args.transport {
                Transport::Sse => logstream_agent::Transport::Sse,
                Transport::Ws => logstream_agent::Transport::Ws,
            },
            ..FollowOptions::default()
        },
    );
    // The gateway said the deployment has no line yet (cleared by the first line).
    let waiting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut said_waiting = args.quiet;
    // Fires once the deadline has passed while the gateway says the deployment has no
    // line yet; never once it started.
    let deadline = wait_timeout.map(|t| tokio::time::Instant::now() + t);
    let still_waiting = waiting.clone();
    let gave_up = async move {
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(deadline).await;
        while !still_waiting.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::pin!(gave_up);
    loop {
        let event = tokio::select! {
            event = follow.next() => event.map_err(agent_error)?,
            // Ctrl+C with a bookmark: save the last line shown before leaving.
            () = INTERRUPT.notified(), if bookmark.is_some() => {
                printer.flush()?;
                if let Some(b) = bookmark.take() {
                    b.finish().await;
                }
                return Ok(130);
            }
            () = &mut gave_up => {
                return Err(Exit(
                    5,
                    format!(
                        "deployment {} did not start within {} (--wait-timeout)",
                        args.id,
                        args.wait_timeout.as_deref().unwrap_or_default()
                    ),
                )
                .into());
            }
        };
        match event {
            // A line: print it now (live output shows up at once, also through a pipe).
            Some(Event::Line(line)) => {
                waiting.store(false, std::sync::atomic::Ordering::Relaxed);
                printer.line(&line)?;
                printer.flush()?;
                if let Some(b) = &bookmark {
                    b.at(&line.cursor);
                }
            }
            // The gateway holds the stream until the deployment's first line.
            Some(Event::Waiting) => {
                waiting.store(true, std::sync::atomic::Ordering::Relaxed);
                if !said_waiting {
                    said_waiting = true;
                    eprintln!(
                        "waiting for deployment {} to start (no line yet)...",
                        args.id
                    );
                }
            }
            Some(Event::Reconnecting { why, wait, .. }) => {
                printer.flush()?;
                let msg = format!("reconnecting in {:.1}s ({why})", wait.as_secs_f64());
                eprintln!("{}", style::dim(c.color, msg));
            }
            Some(Event::End(end)) => {
                printer.flush()?;
                if let Some(b) = bookmark {
                    b.finish().await;
                }
                let code = follow_code(&end);
                if !args.quiet {
                    eprintln!("{}", summary(c, &args.id, &end).await);
                }
                return Ok(code);
            }
            None => {
                return Err(anyhow::anyhow!(
                    "the follow ended without the deployment's end"
                ));
            }
        }
    }
}

/// Keeps a bookmark on the last line shown: set at most every 5 s in the background (a
/// follow never waits for it), and once more at the end (waiting at most 5 s).
struct Bookmarker {
    last: tokio::sync::watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    c: Client,
    id: String,
    name: String,
}

impl Bookmarker {
    fn start(c: Client, id: String, name: String) -> Bookmarker {
        let (last, mut rx) = tokio::sync::watch::channel::<Option<String>>(None);
        let (tc, tid, tname) = (c.clone(), id.clone(), name.clone());
        let task = tokio::spawn(async move {
            let mut warned = false;
            while rx.changed().await.is_ok() {
                let Some(cursor) = rx.borrow_and_update().clone() else {
                    continue;
                };
                if let Err(e) = tc.set_bookmark(&tid, &tname, &cursor).await
                    && !warned
                {
                    warned = true;
                    eprintln!("warning: bookmark {tname} not saved: {e}");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        Bookmarker {
            last,
            task,
            c,
            id,
            name,
        }
    }

    fn at(&self, cursor: &str) {
        self.last.send_replace(Some(cursor.to_owned()));
    }

    /// Saves the last position (at most 5 s: a gateway away must not hold the exit).
    async fn finish(self) {
        self.task.abort();
        let last = self.last.borrow().clone();
        if let Some(cursor) = last {
            let save = self.c.set_bookmark(&self.id, &self.name, &cursor);
            match tokio::time::timeout(Duration::from_secs(5), save).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("warning: bookmark {} not saved: {e}", self.name),
                Err(_) => eprintln!(
                    "warning: bookmark {} not saved: the gateway did not answer in 5s",
                    self.name
                ),
            }
        }
    }
}

/// The exit code of a follow that saw its deployment complete.
fn follow_code(end: &wire::Completion) -> i32 {
    match end.status.as_str() {
        "succeeded" => 0,
        "cancelled" => 3,
        "timed_out" => 5,
        _ => 1,
    }
}

/// The line said on stderr after the last log line of a follow: status, exit code,
/// duration and lines (the output may be a pipe nobody reads; `-q` leaves it out).
async fn summary(c: &Client, id: &str, end: &wire::Completion) -> String {
    let what = match end.status.as_str() {
        "succeeded" => "succeeded".to_owned(),
        "failed" => format!("failed (exit code {})", end.exit_code),
        "cancelled" => "was cancelled".to_owned(),
        "timed_out" => "timed out: nobody completed it and no line came for the gateway's deployment idle timeout (its runner may have died)".to_owned(),
        other => format!("ended as {other} (exit code {})", end.exit_code),
    };
    // Duration and lines from the deployment itself; without them the status still says
    // what matters.
    let d: Option<wire::Deployment> = get_json(c, &format!("/v1/deployments/{id}"), &[])
        .await
        .ok();
    let Some(d) = d else {
        return format!("deployment {id} {what}");
    };
    let took = match (
        logstream_model::time::parse_rfc3339(&d.created_at),
        d.completed_at
            .as_deref()
            .and_then(logstream_model::time::parse_rfc3339),
    ) {
        (Some(a), Some(b)) if b >= a => format!(" after {}", output::age(b - a)),
        _ => String::new(),
    };
    let lines = if d.lines == 1 { "line" } else { "lines" };
    format!("deployment {id} {what}{took}, {} {lines}", d.lines)
}

async fn history(c: &Client, args: &LogsArgs, printer: &mut Printer) -> anyhow::Result<()> {
    let path = format!("/v1/deployments/{}/logs", args.id);
    let mut q = query(args);
    // --tail N: the last N lines, read backwards then printed in order.
    if let Some(n) = args.tail {
        q.push(("direction", "backward".into()));
        q.push(("limit", n.clamp(1, 5000).to_string()));
        let page: wire::HistoryPage = get_json(c, &path, &q).await?;
        let mut lines = page.lines;
        lines.truncate(n);
        for l in lines.iter().rev() {
            printer.line(l)?;
        }
        return printer.flush();
    }
    let mut cursor = args.cursor.clone();
    loop {
        let mut q = q.clone();
        q.push(("limit", "5000".into()));
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.clone()));
        }
        let page: wire::HistoryPage = get_json(c, &path, &q).await?;
        for l in &page.lines {
            printer.line(l)?;
        }
        if page.lines.is_empty() {
            return printer.flush();
        }
        cursor = Some(page.next_cursor);
    }
}

const LIST_HEADERS: [&str; 6] = ["ID", "STATUS", "STEPS", "LINES", "SIZE", "AGE"];

/// The deployments, newest first: pages of up to 1,000 until `limit` or the end.
async fn list_all(
    c: &Client,
    limit: Option<usize>,
    status: &Option<String>,
) -> anyhow::Result<wire::DeploymentList> {
    let mut all = wire::DeploymentList {
        deployments: Vec::new(),
        next_cursor: None,
    };
    let mut cursor: Option<String> = None;
    loop {
        let want = limit.map_or(1000, |l| (l - all.deployments.len()).min(1000));
        if want == 0 {
            return Ok(all);
        }
        let mut q = vec![("limit", want.to_string())];
        q.extend(cursor.take().map(|c| ("cursor", c)));
        q.extend(status.clone().map(|s| ("status", s)));
        let page: wire::DeploymentList = get_json(c, "/v1/deployments", &q).await?;
        all.deployments.extend(page.deployments);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

async fn list(
    c: &Client,
    output: ListFormat,
    limit: Option<usize>,
    status: Option<String>,
) -> anyhow::Result<i32> {
    let body = list_all(c, limit, &status).await?;
    if let ListFormat::Json = output {
        // Through serde_json's map: keys sorted, as this has always printed them.
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&body)?)?
        );
        return Ok(0);
    }
    output::table(&LIST_HEADERS, &list_rows(&body));
    Ok(0)
}

/// `get deployments -w`: the table, then one row per appearance or change, from the
/// gateway's change feed (`/v1/deployments/events`). The feed is opened before the
/// listing, so no change falls between the two; after a drop (or a `resync`) it is
/// opened and the listing read again, and only rows that changed meanwhile are printed.
/// Runs until interrupted; a dropped feed is reported once (dim) and retried.
async fn watch_list(
    c: &Client,
    limit: Option<usize>,
    status: Option<String>,
) -> anyhow::Result<i32> {
    let mut widths: Option<Vec<usize>> = None;
    // Key: id -> (status, steps and lines): what makes a row worth printing again.
    let key = |r: &[String; 6]| (r[1].clone(), r[2].clone() + " " + &r[3]);
    let mut seen: std::collections::HashMap<String, (String, String)> = Default::default();
    let mut attempt = 0u32;
    loop {
        let dropped = match c
            .request(reqwest::Method::GET, "/v1/deployments/events")?
            .header("accept", "text/event-stream")
            .send()
            .await
        {
            Err(e) => e.to_string(),
            Ok(r) if !r.status().is_success() => {
                let e = ApiError::read(r).await;
                if !e.retryable() && e.status != reqwest::StatusCode::UNAUTHORIZED {
                    return Err(refusal(e));
                }
                c.refresh_token();
                e.to_string()
            }
            Ok(resp) => {
                let body = list_all(c, limit, &status).await?;
                let rows = list_rows(&body);
                let w = match &widths {
                    Some(w) => w.clone(),
                    None => {
                        let w = output::table(&LIST_HEADERS, &rows);
                        seen = rows.iter().map(|r| (r[0].clone(), key(r))).collect();
                        widths = Some(w.clone());
                        w
                    }
                };
                for r in &rows {
                    if seen.get(&r[0]) != Some(&key(r)) {
                        seen.insert(r[0].clone(), key(r));
                        output::row(&w, r);
                    }
                }
                if attempt > 0 {
                    eprintln!("{}", style::dim(c.color, "watch: following changes again"));
                }
                attempt = 0;
                let wanted = |d: &wire::Deployment| {
                    status.as_deref().is_none_or(|s| {
                        s.split(',').any(|s| {
                            let s = s.trim();
                            s == d.status || (s == "completed" && d.status != "running")
                        })
                    })
                };
                let mut events = resp.bytes_stream().eventsource();
                let mut why = "the change feed ended".to_owned();
                while let Some(ev) = events.next().await {
                    let Ok(ev) = ev else {
                        why = "the change feed broke".into();
                        break;
                    };
                    match ev.event.as_str() {
                        "created" | "updated" | "completed" => {
                            let d: wire::Deployment = serde_json::from_str(&ev.data)
                                .context("a change from the gateway")?;
                            if !wanted(&d) {
                                continue;
                            }
                            let rows = list_rows(&wire::DeploymentList {
                                deployments: vec![d],
                                next_cursor: None,
                            });
                            let r = &rows[0];
                            if seen.get(&r[0]) != Some(&key(r)) {
                                seen.insert(r[0].clone(), key(r));
                                output::row(&w, r);
                            }
                        }
                        "deleted" => {
                            if let Ok(d) = serde_json::from_str::<wire::Deployment>(&ev.data) {
                                seen.remove(&d.id);
                            }
                        }
                        // resync (changes missed), reconnect (restart), auth_expired
                        // (the token is read again on reconnect).
                        "resync" | "reconnect" | "auth_expired" => {
                            why = format!("the gateway said {}", ev.event);
                            if ev.event == "auth_expired" {
                                c.refresh_token();
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                why
            }
        };
        attempt += 1;
        if attempt == 1 {
            eprintln!(
                "{}",
                style::dim(c.color, format!("watch: {dropped}; reconnecting"))
            );
        }
        tokio::time::sleep(logstream_model::retry::backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(10),
            rand::random(),
        ))
        .await;
    }
}

fn list_rows(body: &wire::DeploymentList) -> Vec<[String; 6]> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    body.deployments
        .iter()
        .map(|d| {
            let age = logstream_model::time::parse_rfc3339(&d.created_at)
                .map_or("?".into(), |t| output::age(now - t));
            let status = match (d.status.as_str(), d.exit_code) {
                ("running", _) | (_, None) => d.status.clone(),
                (s, Some(code)) => format!("{s} ({code})"),
            };
            [
                d.id.clone(),
                status,
                steps_cell(&d.steps),
                d.lines.to_string(),
                output::bytes(d.bytes),
                age,
            ]
        })
        .collect()
}

/// `build,test,+3`: the first steps by name, then how many more.
fn steps_cell(names: &[String]) -> String {
    if names.is_empty() {
        return "<none>".into();
    }
    let mut cell = String::new();
    for (i, n) in names.iter().enumerate() {
        if cell.len() + n.len() > 30 && i > 0 {
            cell.push_str(&format!(",+{}", names.len() - i));
            break;
        }
        if i > 0 {
            cell.push(',');
        }
        cell.push_str(n);
    }
    cell
}

async fn describe(c: &Client, id: &str) -> anyhow::Result<i32> {
    logstream_model::validate_deployment_id(id).map_err(|e| Exit(2, format!("ID {id:?}: {e}")))?;
    let d: wire::Deployment = get_json(c, &format!("/v1/deployments/{id}"), &[]).await?;
    print!("{}", describe_text(&d));
    Ok(0)
}

/// `key:` and value, one a line; absent values are left out.
fn describe_text(d: &wire::Deployment) -> String {
    let rows: [(&str, Option<String>); 11] = [
        ("id", Some(d.id.clone())),
        ("status", Some(d.status.clone())),
        ("exit_code", d.exit_code.map(|c| c.to_string())),
        ("lines", Some(d.lines.to_string())),
        ("bytes", Some(d.bytes.to_string())),
        ("first_ts", d.first_ts.clone()),
        ("last_ts", d.last_ts.clone()),
        ("created_at", Some(d.created_at.clone())),
        ("completed_at", d.completed_at.clone()),
        ("steps", Some(d.steps.join(", "))),
        ("viewers", d.viewers.map(|v| v.to_string())),
    ];
    let mut out = String::new();
    for (key, value) in rows {
        if let Some(value) = value {
            out.push_str(&format!("{:<13}{value}\n", format!("{key}:")));
        }
    }
    out
}

/// Exit code 2 and a message, for usage errors found after parsing.
fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn exit_of(e: anyhow::Error) -> (i32, String) {
        let x = e.downcast_ref::<Exit>().expect("an Exit");
        (x.0, x.1.clone())
    }

    #[test]
    fn refusals_are_retried_by_their_code_not_their_status() {
        let body = |code: &str| {
            serde_json::to_vec(&wire::ErrorBody::new(code, &format!("{code} happened"))).unwrap()
        };
        // Viewer limits are 429s but final: exit 2 with the gateway's message.
        for code in [
            "viewers_per_deployment",
            "viewers_per_tenant",
            "streams_per_token",
        ] {
            let e = ApiError::parse(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(5)),
                &body(code),
            );
            assert!(!e.retryable(), "{code}");
            assert_eq!(
                exit_of(refusal(e)),
                (2, format!("{code} happened (HTTP 429)"))
            );
        }
        let e = ApiError::parse(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            &body("quota_exceeded"),
        );
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(exit_of(refusal(e)).0, 4);
        for (status, code) in [
            (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ] {
            assert!(
                ApiError::parse(status, None, &body(code)).retryable(),
                "{code}"
            );
        }
        for (status, code) in [
            (StatusCode::CONFLICT, "deployment_completed"),
            (StatusCode::NOT_FOUND, "deployment_not_found"),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            (StatusCode::FORBIDDEN, "missing_scope"),
            // An unknown code is final, whatever the status.
            (StatusCode::SERVICE_UNAVAILABLE, "something_new"),
        ] {
            let e = ApiError::parse(status, None, &body(code));
            assert!(!e.retryable(), "{code}");
            assert_eq!(exit_of(refusal(e)).0, 2, "{code}");
        }
    }

    #[test]
    fn an_answer_that_is_not_the_gateways_is_unavailable_when_5xx_or_429() {
        let html = b"<html><body>502 Bad Gateway</body></html>";
        let status_json = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no endpoints available","reason":"ServiceUnavailable","code":503}"#;
        for (status, body) in [
            (StatusCode::BAD_GATEWAY, html.as_slice()),
            (StatusCode::SERVICE_UNAVAILABLE, status_json.as_slice()),
            (StatusCode::GATEWAY_TIMEOUT, b"".as_slice()),
            (StatusCode::TOO_MANY_REQUESTS, b"slow down".as_slice()),
        ] {
            let e = ApiError::parse(status, None, body);
            assert_eq!(e.code, "unavailable", "{status}");
            assert!(e.retryable());
        }
        let e = ApiError::parse(StatusCode::BAD_GATEWAY, None, html);
        assert_eq!(
            exit_of(refusal(e)),
            (4, "HTTP 502 Bad Gateway (HTTP 502)".to_owned())
        );
        // A foreign 4xx (a proxy's 404 or 403 page) is final, as before.
        let e = ApiError::parse(StatusCode::NOT_FOUND, None, html);
        assert!(!e.retryable());
        assert_eq!(
            exit_of(refusal(e)),
            (2, "HTTP 404 Not Found (HTTP 404)".to_owned())
        );
    }

    fn deployment() -> wire::Deployment {
        wire::Deployment {
            id: "d1".into(),
            status: "failed".into(),
            exit_code: Some(3),
            lines: 42,
            first_seq: 1,
            last_seq: 42,
            bytes: 2048,
            first_ts: Some("2024-01-02T03:04:05.000000000Z".into()),
            last_ts: None,
            created_at: "2024-01-02T03:04:00.000000000Z".into(),
            updated_at: None,
            completed_at: None,
            steps: vec!["build".into(), "test".into()],
            viewers: Some(2),
        }
    }

    #[test]
    fn describe_prints_the_present_fields_in_order() {
        assert_eq!(
            describe_text(&deployment()),
            "id:          d1\n\
             status:      failed\n\
             exit_code:   3\n\
             lines:       42\n\
             bytes:       2048\n\
             first_ts:    2024-01-02T03:04:05.000000000Z\n\
             created_at:  2024-01-02T03:04:00.000000000Z\n\
             steps:       build, test\n\
             viewers:     2\n"
        );
    }

    #[test]
    fn list_rows_show_status_with_exit_code_and_abbreviated_steps() {
        let mut running = deployment();
        running.status = "running".into();
        running.exit_code = None;
        running.steps = (0..10).map(|i| format!("step-number-{i}")).collect();
        let rows = list_rows(&wire::DeploymentList {
            deployments: vec![deployment(), running],
            next_cursor: None,
        });
        assert_eq!(
            rows[0][..5],
            ["d1", "failed (3)", "build,test", "42", "2.0KiB"]
        );
        assert_eq!(rows[1][1], "running");
        assert_eq!(rows[1][2], "step-number-0,step-number-1,+8");
        assert!(rows[0][5].ends_with('d'), "{}", rows[0][5]);
        assert_eq!(steps_cell(&[]), "<none>");
    }
}
