//! `kubectl logstream`: the viewer and CI agent of logstream.
//!
//! ```text
//! logs ID [-f] ──GET /logs (history pages)──> print
//!          └─ -f: GET /stream (SSE) ──reconnect with Last-Event-ID──> print ──end──> exit code
//! run -- CMD ──pipes──> batch ──POST /logs (idempotent batches, retried)──> complete ──> exit CMD's code
//! ```
//!
//! Exit codes: 0 success (or the deployment succeeded, with `-f`), 1 the deployment
//! failed, 3 it was cancelled, 2 usage errors, 130 interrupted, 4 server/network errors.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod export;
mod kube;
mod output;
mod run;
mod style;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

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
pub type Refresh = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

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
        /// (status or line count), like `kubectl get -w`; Ctrl+C to stop.
        #[arg(short = 'w', long)]
        watch: bool,
        /// How often to look for changes with -w.
        #[arg(long, default_value = "2s", requires = "watch")]
        interval: String,
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
    },
    /// Run a command as a pipeline step: stream its output, report its exit code.
    Run(run::RunArgs),
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
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only lines newer than a duration (10m, 1h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only the last N lines (then follow, with -f).
    #[arg(long)]
    tail: Option<usize>,
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
        tokio::select! {
            r = dispatch(cli) => match r {
                Ok(code) => code,
                Err(e) => {
                    let code = e.downcast_ref::<Exit>().map_or(4, |x| x.0);
                    eprintln!("error: {e:#}");
                    code
                }
            },
            _ = tokio::signal::ctrl_c() => {
                style::restore_terminal();
                130
            }
        }
    });
    std::process::exit(code);
}

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
            ..
        } => list(&Client::new(&conn)?, output).await,
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
            interval,
            ..
        } => {
            let every = logstream_model::time::parse_duration(&interval)
                .filter(|n| *n >= 100_000_000)
                .ok_or_else(|| {
                    Exit(
                        2,
                        format!(
                            "--interval {interval:?}: use a duration of at least 100ms, e.g. 2s"
                        ),
                    )
                })?;
            watch_list(
                &Client::new(&conn)?,
                std::time::Duration::from_nanos(every as u64),
            )
            .await
        }
        Command::Describe { id } => describe(&Client::new(&conn)?, &id).await,
        Command::Export {
            id,
            format,
            output,
            restart,
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
    }
}

/// The gateway client: base URL, token source, HTTP client.
#[derive(Clone)]
pub struct Client {
    base: String,
    /// The bearer token (replaced by `refresh` after a 401).
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    refresh: Option<Refresh>,
    token_file: Option<std::path::PathBuf>,
    http: reqwest::Client,
    color: bool,
    /// The server is the local forwarder to the API server's service proxy.
    via_kubeconfig: bool,
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
        let color = style::enabled(conn.color);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            base,
            token: std::sync::Arc::new(std::sync::Mutex::new(conn.token.clone())),
            refresh: conn.refresh.clone(),
            token_file: conn.token_file.clone(),
            http,
            color,
            via_kubeconfig: conn.via_kubeconfig,
        })
    }

    /// The current token (the file is re-read each time, so a rotated token is picked up).
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(self.token.lock().expect("token lock").clone())
    }

    /// Whether a 401 may be cured by getting the token again.
    fn refreshable(&self) -> bool {
        self.token_file.is_some() || self.refresh.is_some()
    }

    /// Gets the token again where it comes from a command (the file is re-read anyway).
    fn refresh_token(&self) {
        if let Some(r) = &self.refresh
            && let Some(t) = r()
        {
            *self.token.lock().expect("token lock") = Some(t);
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = self.token()? {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }
}

/// GETs `path` and parses the JSON answer; an error answer becomes its message.
async fn get_json(c: &Client, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
    let resp = c
        .request(reqwest::Method::GET, path)?
        .query(query)
        .send()
        .await
        .context("connecting to the gateway")?;
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    Ok(resp.json().await?)
}

/// Turns a gateway error body into a message and exit code.
async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    api_error_of(status, &body)
}

fn api_error_of(status: reqwest::StatusCode, body: &Value) -> anyhow::Error {
    let msg = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
        2
    } else {
        4
    };
    Exit(code, format!("{msg} (HTTP {})", status.as_u16())).into()
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
    if !args.follow {
        return history(c, &args, &mut printer).await.map(|()| 0);
    }
    if args.transport == Transport::Ws && c.via_kubeconfig {
        return Err(usage(format!(
            "--transport ws: the route found from the kubeconfig (context {}) carries SSE only; drop --transport or pass --server",
            conn.context.as_deref().unwrap_or("current")
        )));
    }
    // Follow: reconnect with the last cursor after any disconnect, backoff with jitter.
    let mut f = Follow {
        cursor: args.cursor.clone(),
        tail: args.tail,
        attempt: 0,
        unauthorized: 0,
    };
    loop {
        let ended = match args.transport {
            Transport::Sse => follow_sse(c, &args, &mut f, &mut printer).await?,
            Transport::Ws => follow_ws(c, &args, &mut f, &mut printer).await?,
        };
        printer.flush()?;
        match ended {
            Session::End(status) => {
                return Ok(match status.as_deref() {
                    Some("succeeded") => 0,
                    Some("cancelled") => 3,
                    _ => 1,
                });
            }
            Session::Dropped(why) => {
                f.attempt += 1;
                reconnect_wait(c, f.attempt, &why).await;
            }
        }
    }
}

/// Where a follow is, across reconnections.
struct Follow {
    cursor: Option<String>,
    /// `--tail N`, until the first line arrives (then the cursor rules).
    tail: Option<usize>,
    attempt: u32,
    unauthorized: u32,
}

impl Follow {
    fn query(&self, args: &LogsArgs) -> Vec<(&'static str, String)> {
        let mut q = query(args);
        if self.cursor.is_none()
            && let Some(n) = self.tail
        {
            q.push(("tail", n.to_string()));
        }
        q
    }

    /// A line arrived: print it now (live output shows up at once, also through a pipe).
    fn line(&mut self, printer: &mut Printer, line: &Value, cursor: String) -> anyhow::Result<()> {
        self.attempt = 0;
        self.unauthorized = 0;
        printer.line(line)?;
        self.cursor = Some(cursor);
        self.tail = None;
        Ok(())
    }

    /// Whether an HTTP refusal is worth reconnecting for: 5xx, 429, or a 401 while a
    /// token file may be rotating (a projected token, an exec plugin writing it).
    fn retry(&mut self, c: &Client, status: reqwest::StatusCode) -> bool {
        let refreshable =
            status == reqwest::StatusCode::UNAUTHORIZED && c.refreshable() && self.unauthorized < 5;
        if refreshable {
            self.unauthorized += 1;
            c.refresh_token();
        }
        status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS || refreshable
    }
}

/// How one connection of a follow ended.
enum Session {
    /// The deployment completed with this status.
    End(Option<String>),
    /// Reconnect (with why, for the status line).
    Dropped(String),
}

async fn follow_sse(
    c: &Client,
    args: &LogsArgs,
    f: &mut Follow,
    printer: &mut Printer,
) -> anyhow::Result<Session> {
    let mut req = c
        .request(
            reqwest::Method::GET,
            &format!("/v1/deployments/{}/stream", args.id),
        )?
        .query(&f.query(args))
        .header("accept", "text/event-stream");
    if let Some(cur) = &f.cursor {
        req = req.header("last-event-id", cur);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Session::Dropped(e.to_string())),
    };
    if !resp.status().is_success() {
        if f.retry(c, resp.status()) {
            return Ok(Session::Dropped(format!("HTTP {}", resp.status())));
        }
        return Err(api_error(resp).await);
    }
    let mut events = resp.bytes_stream().eventsource();
    while let Some(Ok(ev)) = events.next().await {
        match ev.event.as_str() {
            "line" => {
                let line: Value =
                    serde_json::from_str(&ev.data).context("a line from the gateway")?;
                f.line(printer, &line, ev.id)?;
                printer.flush()?;
            }
            "end" => {
                let end: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                return Ok(Session::End(end["status"].as_str().map(str::to_owned)));
            }
            // reconnect (gateway restarting), auth_expired (token re-read on reconnect)
            _ => break,
        }
    }
    Ok(Session::Dropped("stream interrupted".into()))
}

async fn follow_ws(
    c: &Client,
    args: &LogsArgs,
    f: &mut Follow,
    printer: &mut Printer,
) -> anyhow::Result<Session> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let mut q = f.query(args);
    if let Some(cur) = &f.cursor {
        q.push(("cursor", cur.clone()));
    }
    let mut url = reqwest::Url::parse(&format!("{}/v1/deployments/{}/stream", c.base, args.id))
        .context("--server")?;
    url.query_pairs_mut().extend_pairs(&q);
    let ws_url = url.as_str().replacen("http", "ws", 1);
    let mut req = ws_url.into_client_request().context("--server")?;
    if let Some(t) = c.token()? {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().context("the token")?,
        );
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let status = reqwest::StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            if f.retry(c, status) {
                return Ok(Session::Dropped(format!("HTTP {status}")));
            }
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            return Err(api_error_of(status, &body));
        }
        Err(e) => return Ok(Session::Dropped(e.to_string())),
    };
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(tungstenite::Message::Text(t)) => t,
            Ok(tungstenite::Message::Close(frame)) => {
                let why = frame.map_or_else(|| "closed".to_owned(), |f| f.reason.to_string());
                return Ok(Session::Dropped(why));
            }
            Ok(_) => continue,
            Err(e) => return Ok(Session::Dropped(e.to_string())),
        };
        let frame: Value = serde_json::from_str(&text).context("a frame from the gateway")?;
        match frame["type"].as_str() {
            Some("lines") => {
                for line in frame["lines"].as_array().into_iter().flatten() {
                    let cursor = line["cursor"].as_str().unwrap_or_default().to_owned();
                    f.line(printer, line, cursor)?;
                }
                printer.flush()?;
            }
            Some("end") => return Ok(Session::End(frame["status"].as_str().map(str::to_owned))),
            _ => {}
        }
    }
    Ok(Session::Dropped("stream interrupted".into()))
}

/// Exponential backoff with jitter (200 ms doubling, at most 10 s), one dim status line
/// on stderr. `attempt` counts from 1.
async fn reconnect_wait(c: &Client, attempt: u32, why: &str) {
    let wait = logstream_model::retry::backoff(
        attempt.saturating_sub(1),
        Duration::from_millis(200),
        Duration::from_secs(10),
        rand::random(),
    );
    let msg = format!("reconnecting in {:.1}s ({why})", wait.as_secs_f64());
    eprintln!("{}", style::dim(c.color, msg));
    tokio::time::sleep(wait).await;
}

async fn history(c: &Client, args: &LogsArgs, printer: &mut Printer) -> anyhow::Result<()> {
    let path = format!("/v1/deployments/{}/logs", args.id);
    let mut q = query(args);
    // --tail N: the last N lines, read backwards then printed in order.
    if let Some(n) = args.tail {
        q.push(("direction", "backward".into()));
        q.push(("limit", n.clamp(1, 5000).to_string()));
        let page = get_json(c, &path, &q).await?;
        let mut lines = page["lines"].as_array().cloned().unwrap_or_default();
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
        let page = get_json(c, &path, &q).await?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        for l in &lines {
            printer.line(l)?;
        }
        if lines.is_empty() {
            return printer.flush();
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
}

const LIST_HEADERS: [&str; 6] = ["ID", "STATUS", "STEPS", "LINES", "SIZE", "AGE"];

async fn list(c: &Client, output: ListFormat) -> anyhow::Result<i32> {
    let body = get_json(c, "/v1/deployments", &[]).await?;
    if let ListFormat::Json = output {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(0);
    }
    output::table(&LIST_HEADERS, &list_rows(&body));
    Ok(0)
}

/// `get deployments -w`: the table, then one row per appearance or change. Runs until
/// interrupted; a failed poll is reported once (dim) and retried.
async fn watch_list(c: &Client, every: std::time::Duration) -> anyhow::Result<i32> {
    let body = get_json(c, "/v1/deployments", &[]).await?;
    let rows = list_rows(&body);
    let widths = output::table(&LIST_HEADERS, &rows);
    // Key: id -> (status, steps and lines): what makes a row worth printing again.
    let key = |r: &[String; 6]| (r[1].clone(), r[2].clone() + " " + &r[3]);
    let mut seen: std::collections::HashMap<String, (String, String)> =
        rows.iter().map(|r| (r[0].clone(), key(r))).collect();
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let body = match get_json(c, "/v1/deployments", &[]).await {
            Ok(b) => {
                failing = false;
                b
            }
            Err(e) => {
                if !failing {
                    eprintln!("{}", style::dim(c.color, format!("watch: {e:#}; retrying")));
                }
                failing = true;
                continue;
            }
        };
        for r in list_rows(&body) {
            if seen.get(&r[0]) != Some(&key(&r)) {
                seen.insert(r[0].clone(), key(&r));
                output::row(&widths, &r);
            }
        }
    }
}

fn list_rows(body: &Value) -> Vec<[String; 6]> {
    let items = body["deployments"].as_array().cloned().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    items
        .iter()
        .map(|d| {
            let age = d["created_at"]
                .as_str()
                .and_then(logstream_model::time::parse_rfc3339)
                .map_or("?".into(), |t| output::age(now - t));
            let status = match (d["status"].as_str(), d["exit_code"].as_i64()) {
                (Some("running"), _) | (Some(_), None) => {
                    d["status"].as_str().unwrap_or("?").to_owned()
                }
                (Some(s), Some(code)) => format!("{s} ({code})"),
                _ => "?".into(),
            };
            [
                d["id"].as_str().unwrap_or("?").to_owned(),
                status,
                steps_cell(&d["steps"]),
                d["lines"].to_string(),
                output::bytes(d["bytes"].as_u64().unwrap_or(0)),
                age,
            ]
        })
        .collect()
}

/// `build,test,+3`: the first steps by name, then how many more.
fn steps_cell(steps: &Value) -> String {
    let names: Vec<&str> = steps
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
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
    let d = get_json(c, &format!("/v1/deployments/{id}"), &[]).await?;
    for key in [
        "id",
        "status",
        "exit_code",
        "lines",
        "bytes",
        "first_ts",
        "last_ts",
        "created_at",
        "completed_at",
        "steps",
        "viewers",
    ] {
        let value = match &d[key] {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(", "),
            v => v.to_string(),
        };
        println!("{:<13}{value}", format!("{key}:"));
    }
    Ok(0)
}

/// Exit code 2 and a message, for usage errors found after parsing.
fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}
