//! Finding the gateway from the kubeconfig: the current (or `--context`) context's
//! cluster and namespace (or `-n`), the LogStream there (or `--logstream`), and its
//! edge Service from `status.endpoints`, reached through the API server's service proxy
//! (no port-forward). A local forwarder on 127.0.0.1 carries the CLI's requests to
//! `/api/v1/namespaces/NS/services/SVC:PORT/proxy/...` with the kubeconfig's
//! credentials (certificates, tokens, exec plugins: kube's client does them), and moves
//! the gateway token to `Logstream-Authorization` because the API server keeps
//! `Authorization` for itself.

use crate::Exit;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::config::{KubeConfigOptions, Kubeconfig};
use logstream_crds::LogStream;
use std::sync::Arc;

/// What `--context`, `-n`, `--logstream` and `--kubeconfig` asked for.
pub struct KubeOpts {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub logstream: Option<String>,
}

struct Target {
    client: kube::Client,
    base: String,
}

/// The gateway found through the kubeconfig: a local URL that reaches it, and the
/// kubeconfig user's own token (static or from its exec plugin), if it has one.
pub struct Found {
    pub server: String,
    pub user_token: Option<String>,
    /// Gets the user's token again (its exec plugin run again, its token file re-read),
    /// for a 401 from the gateway; `None` when the token is a fixed string.
    pub refresh: Option<crate::Refresh>,
    pub describe: String,
}

fn usage(msg: String) -> anyhow::Error {
    Exit(2, msg).into()
}

/// Finds the gateway and starts the local forwarder.
pub async fn discover(opts: &KubeOpts) -> anyhow::Result<Found> {
    let kc = match &opts.kubeconfig {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|e| {
        usage(format!(
            "no gateway: pass --server URL or set LOGSTREAM_SERVER, or use a kubeconfig (reading it failed: {e})"
        ))
    })?;
    let token = user_token(&kc, opts.context.as_deref());
    let refresh: Option<crate::Refresh> = refreshable(&kc, opts.context.as_deref()).then(|| {
        let (kc, ctx) = (kc.clone(), opts.context.clone());
        Arc::new(move || user_token(&kc, ctx.as_deref())) as crate::Refresh
    });
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| {
            usage(format!(
                "--context {:?}: {e}",
                opts.context.as_deref().unwrap_or("(current)")
            ))
        })?;
    let ns = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?;
    let api: kube::Api<LogStream> = kube::Api::namespaced(client.clone(), &ns);
    let list = api.list(&Default::default()).await.map_err(|e| {
        anyhow::anyhow!(
            "listing LogStreams in namespace {ns:?} through the kubeconfig's API server: {e}"
        )
    })?;
    let candidates: Vec<&LogStream> = list
        .items
        .iter()
        .filter(|l| {
            opts.logstream
                .as_deref()
                .is_none_or(|n| l.metadata.name.as_deref() == Some(n))
        })
        .collect();
    let ls = match candidates.as_slice() {
        [one] => *one,
        [] => {
            return Err(usage(match &opts.logstream {
                Some(n) => format!(
                    "--logstream {n:?}: no such LogStream in namespace {ns:?} (-n to pick another)"
                ),
                None => {
                    format!("no LogStream in namespace {ns:?}: pass -n NAMESPACE, or --server URL")
                }
            }));
        }
        many => {
            let names: Vec<_> = many
                .iter()
                .filter_map(|l| l.metadata.name.clone())
                .collect();
            return Err(usage(format!(
                "namespace {ns:?} has {} LogStreams ({}): pass --logstream NAME",
                names.len(),
                names.join(", ")
            )));
        }
    };
    let name = ls.metadata.name.clone().unwrap_or_default();
    let ep = ls.status.as_ref().and_then(|s| s.endpoints.clone()).ok_or_else(|| {
        anyhow::anyhow!("LogStream {ns}/{name} has no endpoints in its status yet (is the operator running? `kubectl -n {ns} describe logstream {name}`)")
    })?;
    let base = format!(
        "/api/v1/namespaces/{}/services/{}:{}/proxy",
        ep.namespace, ep.service, ep.port
    );
    let target = Arc::new(Target { client, base });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(forward).with_state(target);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Found {
        server,
        user_token: token,
        refresh,
        describe: format!("LogStream {ns}/{name} via the API server's service proxy"),
    })
}

/// The context's user.
fn auth_info<'a>(kc: &'a Kubeconfig, context: Option<&str>) -> Option<&'a kube::config::AuthInfo> {
    let ctx_name = context
        .map(str::to_owned)
        .or_else(|| kc.current_context.clone())?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .as_ref()?;
    let user = ctx.user.as_deref()?;
    kc.auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()
}

/// Whether the user's token can change (a token file, an exec plugin).
fn refreshable(kc: &Kubeconfig, context: Option<&str>) -> bool {
    auth_info(kc, context)
        .is_some_and(|a| a.token.is_none() && (a.token_file.is_some() || a.exec.is_some()))
}

/// The kubeconfig user's token: `token`, `tokenFile`, or its exec plugin's output.
fn user_token(kc: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let auth = auth_info(kc, context)?;
    if let Some(t) = &auth.token {
        use secrecy::ExposeSecret;
        return Some(t.expose_secret().to_owned());
    }
    if let Some(f) = &auth.token_file {
        return std::fs::read_to_string(f).ok().map(|t| t.trim().to_owned());
    }
    let exec = auth.exec.as_ref()?;
    let mut cmd = std::process::Command::new(exec.command.as_deref()?);
    cmd.args(exec.args.iter().flatten());
    for e in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (e.get("name"), e.get("value")) {
            cmd.env(k, v);
        }
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"]["token"].as_str().map(str::to_owned)
}

async fn forward(State(t): State<Arc<Target>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 256 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut builder = http::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{pq}", t.base));
    for (k, v) in &parts.headers {
        match k.as_str() {
            "host" | "connection" | "content-length" => {}
            "authorization" => {
                builder = builder.header("logstream-authorization", v.clone());
            }
            _ => builder = builder.header(k, v.clone()),
        }
    }
    let req = match builder.body(kube::client::Body::from(bytes.to_vec())) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match t.client.send(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            parts.headers.remove("transfer-encoding");
            parts.headers.insert(
                "x-logstream-via",
                HeaderValue::from_static("kube-apiserver-proxy"),
            );
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            // `unavailable`: a contract code the CLI retries (the API server may be back
            // in a moment), like the gateway's own.
            let body = logstream_model::wire::ErrorBody::new(
                "unavailable",
                &format!("the Kubernetes API server (service proxy) failed: {e}"),
            );
            (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
        }
    }
}
