//! `logstream-operator`: `run` reconciles LogStreams (leader-elected), `crds` prints the
//! CRD, `render FILE` prints the objects a LogStream file would produce.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use logstream_crds::LogStream;
use logstream_operator::{Config, controller, desired, leader::LeaderElection};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Reconciles LogStream resources into per-tenant gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile LogStreams in the cluster of the current kubeconfig / in-cluster config.
    Run(RunArgs),
    /// Print the LogStream CRD as YAML.
    Crds,
    /// Print, as YAML, the objects the operator would apply for a LogStream file.
    Render {
        /// A LogStream manifest (YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: Settings,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "logstream-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile without a Lease (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
}

#[derive(clap::Args)]
struct Settings {
    /// Gateway image for LogStreams that name none.
    #[arg(long, env = "LOGSTREAM_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    /// Namespace of the collector DaemonSet.
    #[arg(long, default_value = "logstream-system")]
    collector_namespace: String,
    /// ServiceAccount of the collector.
    #[arg(long, default_value = "logstream-collector")]
    collector_service_account: String,
    /// Namespace the operator runs in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "logstream-system")]
    operator_namespace: String,
    /// `iss` of the cluster's ServiceAccount tokens.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    service_account_issuer: String,
    /// JWKS of those tokens ("" for OIDC discovery at the issuer).
    #[arg(long, default_value = "https://kubernetes.default.svc/openid/v1/jwks")]
    service_account_jwks_url: String,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Namespace of the Prometheus that scrapes the stores' /metrics (their
    /// NetworkPolicy admits it on the HTTP port); empty: stores are not scraped.
    #[arg(long, default_value = "")]
    prometheus_namespace: String,
}

impl Settings {
    fn config(&self) -> Config {
        let mut c = Config::default();
        if let Some(i) = &self.gateway_image {
            c.gateway_image = i.clone();
        }
        c.collector_namespace = self.collector_namespace.clone();
        c.collector_service_account = self.collector_service_account.clone();
        c.operator_namespace = self.operator_namespace.clone();
        c.service_account_issuer = self.service_account_issuer.clone();
        c.service_account_jwks_url =
            Some(self.service_account_jwks_url.clone()).filter(|u| !u.is_empty());
        c.cluster_domain = self.cluster_domain.clone();
        c.prometheus_namespace = Some(self.prometheus_namespace.clone()).filter(|n| !n.is_empty());
        c
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", logstream_crds::crd_yaml());
            Ok(())
        }
        Command::Render { file, settings } => render(&file, &settings.config()),
        Command::Run(args) => run(args).await,
    }
}

fn render(file: &PathBuf, cfg: &Config) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut ls: LogStream = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a LogStream", file.display()))?;
    // Offline there is no API server to assign a uid: use a fixed one so owner
    // references are complete.
    ls.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let objects =
        desired::desired(&ls, cfg).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    for o in objects {
        println!("---");
        if let desired::Owned::Secret(s) = &o {
            // Applying this empty Secret (GitOps) would leave the gateways without a key:
            // the operator makes it, with a random key, only where it does not exist.
            println!(
                "# {}: created by the operator with a random key when absent, never \
                 updated; leave it out, or create it with your own key in `{}`",
                o.describe(),
                desired::SIGNING_KEY
            );
            debug_assert!(s.data.is_none(), "desired() never carries the key");
        }
        print!("{}", serde_yaml::to_string(&o.to_json())?);
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .json()
        .init();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("logstream-operator-{}", std::process::id()));
    let ctx = controller::Context::new(
        client.clone(),
        args.settings.config(),
        Reporter {
            controller: "logstream-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let metrics = ctx.metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    if args.no_leader_election {
        controller::run(ctx).await;
        return Ok(());
    }
    let election = LeaderElection::new(
        client,
        &args.lease_namespace,
        "logstream-operator",
        &identity,
    );
    tracing::info!(%identity, "waiting for the leader Lease");
    election.acquire().await;
    tracing::info!(%identity, "leading");
    tokio::select! {
        () = controller::run(ctx) => Ok(()),
        () = election.hold() => {
            // Lost the lease: stop at once so the new leader is the only one acting.
            anyhow::bail!("lost the leader Lease; exiting so that only one replica reconciles")
        }
    }
}
