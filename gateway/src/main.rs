//! `logstream-gateway`: serve (the default), mint tokens, and administer the store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use logstream_gateway::auth::{Authenticator, Scope};
use logstream_gateway::config::{self, Config, Role};
use logstream_gateway::core::Gateway;
use logstream_gateway::server::{self, Listeners};
use logstream_gateway::store::{self, DeploymentId, Store, StoreConfig, StoreHooks};

#[derive(Parser)]
#[command(
    name = "logstream-gateway",
    version,
    about = "logstream gateway: ingest, store, live tail, history, export"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and gRPC (the default when no command is given).
    Serve(ServeArgs),
    /// Print a token signed with this gateway's key.
    Token(TokenArgs),
    /// Administer the segment store (run while the gateway is stopped, or on a copy).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// What to serve.
    #[arg(long, env = "LOGSTREAM_ROLE", value_parser = role_parser())]
    role: Option<Role>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "LOGSTREAM_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// gRPC listen address [default: 127.0.0.1:8081].
    #[arg(long, env = "LOGSTREAM_GRPC_LISTEN")]
    grpc_listen: Option<std::net::SocketAddr>,
    /// Data directory [default: ./logstream-data].
    #[arg(long, env = "LOGSTREAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file; flags override it.
    #[arg(long, env = "LOGSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long, env = "LOGSTREAM_DATA_DIR", default_value = "logstream-data")]
    data_dir: PathBuf,
    /// Configuration file (for a configured signing key, audience, issuer).
    #[arg(long, env = "LOGSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    tenant: String,
    /// Comma-separated: logs:write, logs:read, logs:export, logs:admin, admin.
    #[arg(long, default_value = "logs:read,logs:write")]
    scopes: String,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Subject recorded in the audit log.
    #[arg(long, default_value = "cli")]
    subject: String,
    /// Limit the token to deployments matching these globs (comma-separated).
    #[arg(long)]
    deployments: Option<String>,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Walk CRCs and the hash chain of every block; report the first bad block.
    Verify(StoreTarget),
    /// Lines, bytes, segments and state of each deployment.
    Stats(StoreTarget),
    /// Rewrite completed deployments into large blocks (after verifying them).
    Compact(StoreTarget),
}

#[derive(Args)]
struct StoreTarget {
    #[arg(long, env = "LOGSTREAM_DATA_DIR", default_value = "logstream-data")]
    data_dir: PathBuf,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this deployment (needs --tenant).
    #[arg(long)]
    deployment: Option<String>,
    /// The gateway's configuration file: with `[object_store]`, segments held there are
    /// verified too (each object against the manifest, and the chain across them).
    #[arg(long, env = "LOGSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

/// `--role`: one of the file format's role names (listed in `--help`).
fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Role::ALL.map(Role::as_str))
        .try_map(|s| s.parse::<Role>())
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let ServeArgs {
        role,
        listen,
        grpc_listen,
        data_dir,
        config,
    } = args.clone();
    let mut c = match &config {
        Some(p) => config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(r) = role {
        c.role = r;
    }
    if let Some(l) = listen {
        c.listen = l;
    }
    if let Some(g) = grpc_listen {
        c.grpc_listen = g;
    }
    if let Some(d) = data_dir {
        c.data_dir = d;
    }
    c.validate()?;
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Token(t)) => token(t),
        Some(Command::Store { command }) => store_admin(command),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rmcp=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = load_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if config.role == logstream_gateway::config::Role::Edge {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", config.listen))?;
            println!(
                "logstream gateway ready (role edge): HTTP http://{}, forwarding to {}",
                listener.local_addr()?,
                config.upstream.as_deref().unwrap_or_default()
            );
            return server::serve_edge(&config, listener, server::shutdown_signal()).await;
        }
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let listeners = Listeners::bind(config.listen, config.grpc_listen).await?;
        let http = listeners.http.local_addr()?;
        let grpc = listeners.grpc.local_addr()?;
        let state = Gateway::open(config.clone(), shutdown_rx)?;
        if !config.accept_hs256 {
            println!("logstream gateway ready (role {}): HTTP http://{http}, gRPC {grpc}; tokens come from the configured public keys", format!("{:?}", config.role).to_lowercase());
            return server::serve(state, listeners, shutdown_tx, server::shutdown_signal()).await;
        }
        let token = state.auth.mint("dev", "dev", &[Scope::Read, Scope::Write, Scope::Export], Duration::from_secs(24 * 3600), None);
        println!(
            "logstream gateway ready (role {})\n  HTTP http://{http}   gRPC {grpc}   data {}\n\n\
             A token for tenant \"dev\" (logs:read, logs:write, logs:export; valid 24h):\n  export LOGSTREAM_TOKEN={token}\n\n\
             Open the web UI (the token stays in the tab, not in the address bar):\n  http://{http}/#token={token}\n\n\
             Push a line:\n  echo 'hello from logstream' | curl -sS -H \"Authorization: Bearer $LOGSTREAM_TOKEN\" -H 'Content-Type: text/plain' --data-binary @- http://{http}/v1/deployments/demo/logs\n\n\
             Tail it live (Ctrl+C to stop):\n  curl -N -H \"Authorization: Bearer $LOGSTREAM_TOKEN\" -H 'Accept: text/event-stream' http://{http}/v1/deployments/demo/stream\n\n\
             Finish the deployment (live viewers get `end`):\n  curl -sS -H \"Authorization: Bearer $LOGSTREAM_TOKEN\" -H 'Content-Type: application/json' -d '{{\"status\":\"succeeded\",\"exit_code\":0}}' http://{http}/v1/deployments/demo/complete\n",
            format!("{:?}", config.role).to_lowercase(),
            config.data_dir.display()
        );
        server::serve(state, listeners, shutdown_tx, server::shutdown_signal()).await
    })
}

fn token(t: TokenArgs) -> anyhow::Result<()> {
    let mut config = match &t.config {
        Some(p) => config::from_file(p)?,
        None => Config::default(),
    };
    config.data_dir = t.data_dir;
    logstream_model::validate_tenant(&t.tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let scopes = t
        .scopes
        .split(',')
        .map(|s| {
            Scope::parse(s.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--scopes: {s:?} is not a scope; use logs:write, logs:read, logs:export, logs:admin, admin"
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ttl = logstream_model::time::parse_duration(&t.ttl)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            anyhow::anyhow!("--ttl: {:?} is not a duration; use e.g. 1h, 30m, 7d", t.ttl)
        })?;
    let key_path = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("dev-signing-key"));
    let key = Authenticator::load_or_create_key(&key_path)
        .with_context(|| format!("signing key {}", key_path.display()))?;
    let auth = Authenticator::hs256(&key, config.audience, config.issuer);
    let deployments = t
        .deployments
        .map(|d| d.split(',').map(|s| s.trim().to_owned()).collect());
    println!(
        "{}",
        auth.mint(
            &t.subject,
            &t.tenant,
            &scopes,
            Duration::from_nanos(ttl as u64),
            deployments
        )
    );
    Ok(())
}

fn store_admin(cmd: StoreCommand) -> anyhow::Result<()> {
    let (target, action) = match cmd {
        StoreCommand::Verify(t) => (t, "verify"),
        StoreCommand::Stats(t) => (t, "stats"),
        StoreCommand::Compact(t) => (t, "compact"),
    };
    let root = target.data_dir.join("store");
    if !root.join("tenants").exists() {
        bail!(
            "--data-dir {}: no store there (expected {})",
            target.data_dir.display(),
            root.join("tenants").display()
        );
    }
    let remote = match &target.config {
        Some(path) => {
            let cfg = config::from_file(path).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
            match &cfg.object_store {
                Some(o) => Some(std::sync::Arc::new(
                    logstream_gateway::objstore::ObjectStorage::open(o)
                        .map_err(|e| anyhow::anyhow!("--config: {e:#}"))?,
                )),
                None => None,
            }
        }
        None => None,
    };
    let hooks = StoreHooks {
        remote: remote.map(|r| r as std::sync::Arc<dyn store::Remote>),
        ..StoreHooks::default()
    };
    let store = Store::open(&root, StoreConfig::default(), hooks)?;
    if target.deployment.is_some() && target.tenant.is_none() {
        bail!("--deployment needs --tenant");
    }
    let tenants = match &target.tenant {
        Some(t) => vec![t.clone()],
        None => store.tenants()?,
    };
    let mut bad = 0;
    for tenant in tenants {
        let deployments = match &target.deployment {
            Some(d) => vec![d.clone()],
            None => store.deployments(&tenant)?,
        };
        for d in deployments {
            let id = DeploymentId::new(tenant.clone(), d);
            let log = store
                .log(&id, false)?
                .with_context(|| format!("{id}: no such deployment"))?;
            match action {
                "verify" => {
                    let r = store.verify(&id)?;
                    match &r.first_bad {
                        None => {
                            println!(
                                "ok   {id}: seqs {}..={}, {} blocks in {} segments, head {}{}",
                                r.first_seq,
                                r.last_seq,
                                r.blocks,
                                r.segments,
                                &r.head[..16],
                                match r.rewrites.len() {
                                    0 => String::new(),
                                    n => format!(
                                        ", {n} audited rewrites (ledger {})",
                                        &r.ledger_head[..16.min(r.ledger_head.len())]
                                    ),
                                }
                            );
                            for w in &r.rewrites {
                                let seqs: Vec<String> =
                                    w.seqs.iter().map(|(a, z)| format!("{a}-{z}")).collect();
                                println!(
                                    "       rewritten block at seq {}: lines {} masked by {} at {}: {}",
                                    w.block,
                                    seqs.join(","),
                                    w.subject,
                                    logstream_model::time::format_rfc3339(w.at),
                                    w.reason
                                );
                            }
                        }
                        Some(b) => {
                            bad += 1;
                            println!(
                                "BAD  {id}: {} at offset {} (expected seq {}): {}",
                                b.segment.display(),
                                b.offset,
                                b.expected_seq,
                                b.reason
                            );
                        }
                    }
                }
                "stats" => {
                    let s = log.stats();
                    let status = s.completion.map_or("running".to_owned(), |c| {
                        format!("{} ({})", c.status.as_str(), c.exit_code)
                    });
                    println!(
                        "{id}: {status}, {} lines (seqs {}..={}), {} bytes in {} segments",
                        s.lines(),
                        s.first_seq,
                        s.last_seq,
                        s.bytes,
                        s.segments
                    );
                }
                _ => {
                    if log.completion().is_none() {
                        println!("skip {id}: still running");
                        continue;
                    }
                    drop(log);
                    let (before, after) = store::compact(&store, &id)?;
                    println!(
                        "done {id}: {} lines, {} -> {} blocks",
                        after.lines, before.blocks, after.blocks
                    );
                }
            }
        }
    }
    // The audit log is hash-chained in the same format: verify it too.
    let audit_dir = root.join("system").join("audit");
    if action == "verify" && target.tenant.is_none() && audit_dir.join("meta.json").exists() {
        let r = store::verify_dir(&audit_dir)?;
        match &r.first_bad {
            None => println!(
                "ok   audit log: seqs {}..={}, {} blocks, head {}",
                r.first_seq,
                r.last_seq,
                r.blocks,
                &r.head[..16]
            ),
            Some(b) => {
                bad += 1;
                println!(
                    "BAD  audit log: {} at offset {}: {}",
                    b.segment.display(),
                    b.offset,
                    b.reason
                );
            }
        }
    }
    if bad > 0 {
        bail!("{bad} log(s) failed verification");
    }
    Ok(())
}
