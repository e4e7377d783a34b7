//! `logstream-collector`: follows this node's container logs and forwards them.

use anyhow::Context as _;
use clap::Parser;
use logstream_collector::engine::{Engine, Event, Settings, Sidecar};
use logstream_collector::forward::{TokenFile, route};
use logstream_collector::metrics::Metrics;
use logstream_collector::pods::{
    PodMap, Selection, build_map, parse_logstream_list, parse_pod_list,
};
use logstream_model::redact::{MaskStyle, Redactor};
use notify::Watcher as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Follows container logs on this node and forwards them to the logstream gateway"
)]
struct Cli {
    /// `node`: a DaemonSet following every selected pod on the node. `sidecar`: a
    /// container of one pod following plain log files (--path) in a volume shared
    /// with the app; identity from the Downward API (POD_NAMESPACE, POD_NAME, POD_UID,
    /// LOGSTREAM_DEPLOYMENT, optional LOGSTREAM_STEP).
    #[arg(long, value_enum, default_value = "node")]
    mode: Mode,
    /// Sidecar mode: a plain log file or named pipe to follow (repeatable); each is a
    /// step named by its stem unless LOGSTREAM_STEP names one. Rotation by rename or
    /// copytruncate is followed; the file may appear later. A pipe's lines go through
    /// the spool (it cannot be read twice).
    #[arg(long = "path", value_name = "FILE")]
    paths: Vec<PathBuf>,
    /// Where kubelet writes container logs (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// One gateway for every selected pod (its gRPC endpoint, e.g.
    /// http://acme-store.ci.svc:8081). Without it, each pod goes to the gateway of the
    /// LogStream that selects it (LogStreams from the Kubernetes API or --logstreams).
    #[arg(long, env = "LOGSTREAM_GATEWAY")]
    gateway: Option<String>,
    /// LogStreams from a file holding `kubectl get logstreams -A -o json` output
    /// (with --pods), re-read when it changes.
    #[arg(long, requires = "pods")]
    logstreams: Option<PathBuf>,
    /// Bearer token file (a projected ServiceAccount token); re-read when it changes.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where checkpoints are kept (a hostPath in the DaemonSet).
    #[arg(long, default_value = "/var/lib/logstream-collector")]
    state_dir: PathBuf,
    /// This node's name (batch sources are named after it). Node mode only.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Pod metadata from a file holding `kubectl get pods -o json` output, re-read when
    /// it changes. Without it, pods come from the Kubernetes API (in-cluster config or
    /// kubeconfig), watched by node name.
    #[arg(long)]
    pods: Option<PathBuf>,
    /// Label naming a pod's deployment; pods without it are skipped.
    #[arg(long, default_value = "logstream.dev/deployment")]
    deployment_label: String,
    /// Label naming a pod's step (default: the container name).
    #[arg(long, default_value = "logstream.dev/step")]
    step_label: String,
    /// Extra redaction pattern `name=regex` (repeatable); built-ins are always on.
    #[arg(long = "redact", value_name = "NAME=REGEX")]
    redact: Vec<String>,
    /// Bytes the on-disk spool (under --state-dir) may hold for batches the gateway is
    /// slow to take, so rotated files may go while it is away: 256Mi, 1Gi, 0 (no
    /// spool: the backlog waits in the log files only).
    #[arg(long, default_value = "256Mi", value_parser = parse_size)]
    spool_bytes: u64,
    /// How long a batch may wait for the gateway's acknowledgement before its
    /// container's batches go to the spool.
    #[arg(long, default_value = "2s", value_parser = parse_wait)]
    spool_after: Duration,
    /// How long a replaced (rotated) file, or a finished pod's last file, must stay quiet
    /// at its end before it is let go (a writer may still flush into it).
    #[arg(long, default_value = "1s", value_parser = parse_wait)]
    rotate_wait: Duration,
    /// How long after a finished pod's completion is acknowledged (everything of it
    /// read and delivered) its files stay open before they are closed.
    #[arg(long, default_value = "2s", value_parser = parse_wait)]
    close_grace: Duration,
    /// Log files held open at most: beyond it the files of the containers idle longest
    /// are closed and reopened at their checkpoint when they change (an LRU).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_open_files: u64,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Node,
    Sidecar,
}

/// Sidecar mode: the pod's identity from the Downward API environment.
fn sidecar_identity(cli: &Cli) -> anyhow::Result<(Sidecar, PodMap)> {
    if cli.paths.is_empty() {
        anyhow::bail!("--mode sidecar: pass --path FILE for each log file to follow");
    }
    if cli.gateway.is_none() {
        anyhow::bail!("--mode sidecar: pass --gateway URL (or LOGSTREAM_GATEWAY)");
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let need = |k: &str, how: &str| {
        env(k).ok_or_else(|| anyhow::anyhow!("--mode sidecar: set {k} ({how})"))
    };
    let namespace = need("POD_NAMESPACE", "Downward API fieldRef metadata.namespace")?;
    let name = need("POD_NAME", "Downward API fieldRef metadata.name")?;
    let uid = need("POD_UID", "Downward API fieldRef metadata.uid")?;
    let deployment = need(
        "LOGSTREAM_DEPLOYMENT",
        "e.g. Downward API fieldRef metadata.labels['logstream.dev/deployment']",
    )?;
    logstream_model::validate_deployment_id(&deployment)
        .map_err(|e| anyhow::anyhow!("LOGSTREAM_DEPLOYMENT {deployment:?}: {e}"))?;
    let pod = logstream_collector::pods::PodInfo {
        namespace,
        name,
        uid: uid.clone(),
        deployment: Some(deployment),
        step: env("LOGSTREAM_STEP"),
        // A sidecar cannot see its pod's final status: the pipeline (or the node
        // collector) completes the deployment.
        finished: None,
        gateway: None,
        complete: logstream_collector::pods::CompletePolicy::Never,
    };
    if cli.spool_bytes == 0 {
        use std::os::unix::fs::FileTypeExt;
        if let Some(p) = cli
            .paths
            .iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo()))
        {
            anyhow::bail!(
                "--path {}: a named pipe cannot be read twice, so its lines go through the spool; drop --spool-bytes 0",
                p.display()
            );
        }
    }
    let sc = Sidecar {
        files: cli.paths.clone(),
        pod_uid: uid.clone(),
    };
    Ok((sc, PodMap::from([(uid, pod)])))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut patterns = Vec::new();
    for r in &cli.redact {
        let (name, regex) = r.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--redact {r:?}: use NAME=REGEX, e.g. ticket=TICKET-[0-9]{{6}}")
        })?;
        patterns.push((name.to_owned(), regex.to_owned()));
    }
    let redactor = Redactor::new(true, &patterns, MaskStyle::Stars)
        .map_err(|e| anyhow::anyhow!("--redact: {e}"))?;
    let sel = Selection {
        deployment_label: cli.deployment_label.clone(),
        step_label: cli.step_label.clone(),
    };
    let sidecar = match cli.mode {
        Mode::Sidecar => Some(sidecar_identity(&cli)?),
        Mode::Node => None,
    };
    if sidecar.is_none() && !cli.paths.is_empty() {
        anyhow::bail!(
            "--path is for --mode sidecar; in node mode files are found under --log-root"
        );
    }
    let source = match (&sidecar, &cli.node_name) {
        (Some((_, pods)), _) => {
            let p = pods.values().next().expect("one pod");
            format!("sidecar/{}/{}", p.namespace, p.name)
        }
        (None, Some(n)) => n.clone(),
        (None, None) => anyhow::bail!(
            "--node-name (or NODE_NAME, from the Downward API's spec.nodeName) is required in node mode"
        ),
    };
    if cli.gateway.is_none() && cli.pods.is_some() && cli.logstreams.is_none() {
        anyhow::bail!(
            "no gateway: pass --gateway URL, or --logstreams FILE so each pod goes to its LogStream's gateway"
        );
    }
    let initial = match (&cli.pods, &sidecar) {
        (_, Some((_, pods))) => Some(pods.clone()),
        (Some(path), None) => Some(read_metadata(path, cli.logstreams.as_deref(), &sel)?),
        (None, None) => None,
    };
    if sidecar.is_none() && !cli.log_root.is_dir() {
        anyhow::bail!("--log-root {}: not a directory", cli.log_root.display());
    }
    let mut settings = Settings::new(cli.log_root.clone(), cli.state_dir.clone(), source);
    settings.redactor = Arc::new(redactor);
    settings.sidecar = sidecar.as_ref().map(|(sc, _)| sc.clone());
    settings.spool_bytes = cli.spool_bytes;
    settings.spool_after = cli.spool_after;
    settings.rotate_wait = cli.rotate_wait;
    settings.close_grace = cli.close_grace;
    settings.max_open_files = cli.max_open_files as usize;
    let metrics = Metrics::default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (events_tx, events_rx) = std::sync::mpsc::channel::<Event>();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(settings, out_tx, metrics.clone()).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(pods) = initial {
        events_tx.send(Event::Pods(pods)).ok();
    }

    // inotify: new files are seen at once; the engine's rescan is the safety net.
    let tx = events_tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let created = matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let _ = tx.send(Event::Fs { created });
        }
    })?;
    match &settings_dirs(&cli) {
        None => watcher
            .watch(&cli.log_root, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching --log-root {}", cli.log_root.display()))?,
        Some(dirs) => {
            for d in dirs {
                watcher
                    .watch(d, notify::RecursiveMode::NonRecursive)
                    .with_context(|| format!("--path: watching directory {}", d.display()))?;
            }
        }
    }

    // Pod metadata files: re-read when they change.
    let tx = events_tx.clone();
    if let Some(pods_path) = cli.pods.clone() {
        let sel = sel.clone();
        let ls_path = cli.logstreams.clone();
        // Their directories are watched (inotify), so a new pod is known at once; a
        // slow poll is the safety net (and covers files replaced by rename elsewhere).
        let (changed_tx, changed) = std::sync::mpsc::channel::<()>();
        let mut meta_watcher =
            notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
                let _ = changed_tx.send(());
            })?;
        for p in [Some(pods_path.as_path()), ls_path.as_deref()]
            .into_iter()
            .flatten()
        {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            meta_watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", dir.display()))?;
        }
        std::thread::spawn(move || {
            let _watching = meta_watcher;
            let stamp = || {
                [Some(pods_path.as_path()), ls_path.as_deref()].map(|p| {
                    // mtime alone may not change between two quick writes: inode
                    // (files are replaced by rename) and length too.
                    use std::os::unix::fs::MetadataExt;
                    let m = std::fs::metadata(p?).ok()?;
                    Some((m.modified().ok(), m.ino(), m.len()))
                })
            };
            let mut seen = stamp();
            loop {
                let _ = changed.recv_timeout(Duration::from_secs(1));
                while changed.try_recv().is_ok() {}
                let now = stamp();
                if now == seen {
                    continue;
                }
                seen = now;
                match read_metadata(&pods_path, ls_path.as_deref(), &sel) {
                    Ok(p) => {
                        if tx.send(Event::Pods(p)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading pod metadata failed; keeping the previous")
                    }
                }
            }
        });
    }
    // Or from the Kubernetes API: this node's pods (and, without --gateway, the
    // LogStreams that route them).
    if cli.pods.is_none() && cli.mode == Mode::Node {
        let client = rt
            .block_on(kube::Client::try_default())
            .context("no --pods FILE and no Kubernetes configuration (in-cluster or kubeconfig)")?;
        let tx = events_tx.clone();
        let node = cli
            .node_name
            .clone()
            .expect("node mode has --node-name (checked above)");
        let sel = sel.clone();
        let by_logstreams = cli.gateway.is_none();
        rt.spawn(async move {
            logstream_collector::pods::watch_node_pods(
                client,
                &node,
                sel,
                by_logstreams,
                move |p| {
                    let _ = tx.send(Event::Pods(p));
                },
            )
            .await;
        });
    }

    let tx = events_tx.clone();
    let fwd = rt.spawn(route(
        cli.gateway.clone(),
        TokenFile::new(cli.token_file.clone()),
        out_rx,
        move |r| {
            let _ = tx.send(Event::Forwarder(r));
        },
    ));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(cli.metrics_listen))
        .with_context(|| format!("--metrics-listen {}", cli.metrics_listen))?;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        );
    rt.spawn(async move { axum::serve(listener, app).await });
    let tx = events_tx.clone();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(Event::Stop);
    });
    let following = match cli.mode {
        Mode::Node => cli.log_root.display().to_string(),
        Mode::Sidecar => cli
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    eprintln!(
        "logstream collector ({} mode): following {following} -> {} (metrics on http://{})",
        if cli.mode == Mode::Node {
            "node"
        } else {
            "sidecar"
        },
        cli.gateway.as_deref().unwrap_or("each LogStream's gateway"),
        cli.metrics_listen
    );
    drop(events_tx);
    let result = engine.run(events_rx);
    drop(watcher);
    // Give in-flight batches a moment to be acknowledged; checkpoints are already safe.
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), fwd).await.ok() });
    result.map_err(|e| anyhow::anyhow!(e))
}

/// `256Mi`, `1Gi`, `500k`, `1048576`.
fn parse_size(v: &str) -> Result<u64, String> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?}: use a size like 256Mi, 1Gi or 0"))?;
    let mult = match unit {
        "" => 1,
        "k" | "K" | "Ki" => 1 << 10,
        "M" | "Mi" => 1 << 20,
        "G" | "Gi" => 1 << 30,
        _ => return Err(format!("{v:?}: unit {unit:?} is not one of Ki, Mi, Gi")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{v:?}: too large"))
}

/// `2s`, `500ms`, `1m`.
fn parse_wait(v: &str) -> Result<Duration, String> {
    logstream_model::time::parse_duration(v)
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(n as u64))
        .ok_or_else(|| format!("{v:?}: use a duration like 2s or 500ms"))
}

/// Sidecar mode: the directories holding the --path files (watched for creations and
/// renames). `None` in node mode.
fn settings_dirs(cli: &Cli) -> Option<Vec<PathBuf>> {
    (cli.mode == Mode::Sidecar).then(|| {
        let mut dirs: Vec<PathBuf> = cli
            .paths
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    })
}

/// Pods (and LogStreams, if given) from files, as the engine's pod map.
fn read_metadata(
    pods: &std::path::Path,
    logstreams: Option<&std::path::Path>,
    sel: &Selection,
) -> anyhow::Result<PodMap> {
    let bytes = std::fs::read(pods).with_context(|| format!("--pods {}", pods.display()))?;
    let pods_list =
        parse_pod_list(&bytes).map_err(|e| anyhow::anyhow!("--pods {}: {e}", pods.display()))?;
    let ls = match logstreams {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("--logstreams {}", p.display()))?;
            parse_logstream_list(&b)
                .map_err(|e| anyhow::anyhow!("--logstreams {}: {e}", p.display()))?
        }
        None => Vec::new(),
    };
    Ok(build_map(&pods_list, sel, &ls))
}
