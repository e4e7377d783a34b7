//! Bearer-token authentication: JWTs whose claims name the tenant and scopes.
//!
//! The dev default signs with an HS256 key kept in the data dir (generated on first
//! start, mode 0600); `logstream-gateway token` mints tokens with it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Write,
    Read,
    Export,
    /// Hotfixes of stored logs: redactions and deletions (implied by `admin`).
    LogsAdmin,
    Admin,
    /// Append audit records made elsewhere: what an edge's own tokens carry (it has no
    /// disk and sends its records to its store). Not implied by `admin`, so a tenant's
    /// admin cannot write into the audit log.
    AuditWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "logs:write",
            Scope::Read => "logs:read",
            Scope::Export => "logs:export",
            Scope::LogsAdmin => "logs:admin",
            Scope::Admin => "admin",
            Scope::AuditWrite => "audit:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "logs:write" => Some(Scope::Write),
            "logs:read" => Some(Scope::Read),
            "logs:export" => Some(Scope::Export),
            "logs:admin" => Some(Scope::LogsAdmin),
            "admin" => Some(Scope::Admin),
            "audit:write" => Some(Scope::AuditWrite),
            _ => None,
        }
    }
}

/// The claims logstream reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a user, a ServiceAccount, a CI job.
    pub sub: String,
    pub tenant: String,
    /// Space- or comma-separated scopes, or a list.
    #[serde(deserialize_with = "scopes_de", serialize_with = "scopes_ser")]
    pub scopes: Vec<String>,
    /// Optional globs (`build-*`) limiting the deployments this token reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<String>>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

fn scopes_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    Ok(match S::deserialize(d)? {
        S::One(s) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        S::Many(v) => v,
    })
}

fn scopes_ser<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(" "))
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub deployments: Option<Vec<String>>,
    /// Token expiry, Unix seconds.
    pub expires_at: u64,
    /// Identifies the token itself (a hash of it), for per-token limits.
    pub token_id: u64,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (scope != Scope::AuditWrite && self.scopes.contains(&Scope::Admin))
    }

    /// Whether the token's `deployments` globs (if any) cover `deployment`.
    pub fn may_access(&self, deployment: &str) -> bool {
        self.deployments
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| glob_match(g, deployment)))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first)
        || !s[first.len()..].ends_with(last)
        || s.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why a token was refused: each maps to 401 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no bearer token; send `Authorization: Bearer <token>` (mint one with `logstream-gateway token`)"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the token has expired; get a fresh one")]
    Expired,
    #[error("the token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("the token's signature does not verify with this gateway's key")]
    Signature,
    #[error(
        "the token's algorithm {0} is not accepted here (alg none and HS/RS confusion are refused; see the gateway's auth configuration)"
    )]
    Algorithm(String),
    #[error("the token's key id {0:?} is unknown to this gateway")]
    UnknownKid(String),
    #[error(
        "ServiceAccount {0} is not mapped to a tenant; add it to `service_accounts` (the LogStream's allowed ServiceAccounts)"
    )]
    Unmapped(String),
    #[error("the token's audience is not {0:?}")]
    Audience(String),
    #[error("the token's issuer is not {0:?}")]
    Issuer(String),
    #[error("the token is not a valid JWT: {0}")]
    Invalid(String),
    #[error("the token's tenant claim is invalid: {0}")]
    Tenant(String),
    #[error(
        "the token has an unknown scope {0:?}; scopes are logs:write, logs:read, logs:export, logs:admin, admin"
    )]
    Scope(String),
}

/// The verifier a gateway of `config` uses: the HS256 key (`signing_key_file`, or the dev
/// key in the data dir, created when `create_key` and missing), public keys, a JWKS
/// file or URL and ServiceAccount issuers. Stores and edges build theirs here from the
/// same configuration, so an edge accepts exactly the tokens its store accepts.
pub fn from_config(
    config: &crate::config::Config,
    create_key: bool,
) -> anyhow::Result<Authenticator> {
    let key_path = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("dev-signing-key"));
    let key = if create_key || key_path.exists() {
        Authenticator::load_or_create_key(&key_path)
            .map_err(|e| anyhow::anyhow!("signing key {}: {e}", key_path.display()))?
    } else {
        anyhow::bail!(
            "invalid configuration: signing_key_file: {} does not exist (an edge needs its store's key, to verify tokens and sign its requests to the store)",
            key_path.display()
        );
    };
    let mut auth = Authenticator::hs256(&key, config.audience.clone(), config.issuer.clone());
    let mut keys = Vec::new();
    for k in &config.public_keys {
        let alg: jsonwebtoken::Algorithm = k.alg.parse().map_err(|_| anyhow::anyhow!("invalid configuration: public_keys: alg {:?} is not one of RS256, RS384, RS512, PS256, ES256, ES384, EdDSA", k.alg))?;
        let pem = std::fs::read(&k.file).map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: public_keys: {}: {e}",
                k.file.display()
            )
        })?;
        keys.push(PublicKey::from_pem(&pem, alg, k.kid.clone()).map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: public_keys: {}: {e}",
                k.file.display()
            )
        })?);
    }
    auth = auth.with_public_keys(keys);
    if let Some(f) = &config.jwks_file {
        auth = auth
            .with_jwks_file(f.clone())
            .map_err(|e| anyhow::anyhow!("invalid configuration: jwks_file: {e}"))?;
    }
    if !config.accept_hs256 {
        auth = auth.without_hs256();
    }
    let mut issuers = Vec::new();
    for i in &config.service_account_issuers {
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &i.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!(
                    "invalid configuration: service_account_issuers: ca_file {}: {e}",
                    ca.display()
                )
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "invalid configuration: service_account_issuers: ca_file {}: {e}",
                    ca.display()
                )
            })? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?;
        issuers.push(
            SaIssuer::new(
                i.issuer.clone(),
                i.audience.clone(),
                i.jwks_url.clone(),
                http,
            )
            .with_token_file(i.token_file.clone()),
        );
    }
    let mappings = config
        .service_accounts
        .iter()
        .map(|m| SaMapping {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            tenant: m.tenant.clone(),
            scopes: m.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        })
        .collect();
    auth = auth.with_service_accounts(issuers, mappings);
    if let Some(url) = &config.jwks_url {
        auth = auth.with_jwks_url(url.clone(), reqwest::Client::new());
    }
    Ok(auth)
}

/// A public key accepted for RS256/ES256/EdDSA tokens.
pub struct PublicKey {
    /// Key id (`kid`); tokens naming another kid do not match this key.
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl PublicKey {
    /// Loads a PEM public key for `alg` (RS256/RS384/RS512/PS*, ES256/ES384, EdDSA).
    pub fn from_pem(pem: &[u8], alg: Algorithm, kid: Option<String>) -> Result<PublicKey, String> {
        use Algorithm as A;
        let key = match alg {
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                DecodingKey::from_rsa_pem(pem)
            }
            A::ES256 | A::ES384 => DecodingKey::from_ec_pem(pem),
            A::EdDSA => DecodingKey::from_ed_pem(pem),
            A::HS256 | A::HS384 | A::HS512 => {
                return Err("HMAC algorithms take a shared secret, not a public key".into());
            }
        }
        .map_err(|e| format!("not a {alg:?} public key in PEM: {e}"))?;
        Ok(PublicKey { kid, alg, key })
    }

    /// Loads every signing key of a JSON Web Key Set.
    pub fn from_jwks(json: &[u8]) -> Result<Vec<PublicKey>, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let Some(ka) = jwk.common.key_algorithm else {
                continue;
            };
            let Ok(alg) = format!("{ka:?}").parse::<Algorithm>() else {
                continue;
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
            keys.push(PublicKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        Ok(keys)
    }
}

/// Verifies and mints tokens: an HS256 shared key (the dev default) and any number of
/// public keys (PEM files, a JWKS file re-read when a token names an unknown kid).
pub struct Authenticator {
    /// The HS256 key, when HS256 tokens are accepted.
    hs: Option<(DecodingKey, EncodingKey)>,
    /// Signs export links (derived from the HS256 key, kept when HS256 tokens are not
    /// accepted: stores and edges share the key either way).
    link_key: [u8; 32],
    keys: parking_lot::RwLock<Vec<PublicKey>>,
    /// JWKS file to re-read on an unknown kid, and when it was last read.
    jwks_file: Option<(std::path::PathBuf, parking_lot::Mutex<std::time::Instant>)>,
    audience: Option<String>,
    issuer: Option<String>,
    /// Keys from a JWKS URL (tokens carrying tenant claims), fetched on first use and on
    /// unknown kids.
    remote: Option<SaIssuer>,
    /// Issuers of ServiceAccount tokens and the accounts' tenants.
    sa_issuers: Vec<SaIssuer>,
    sa_mappings: Vec<SaMapping>,
}

/// Failed fetches or re-reads of token-verification keys, by source (`jwks_url`,
/// `service_account_issuer`, `jwks_file`): one counter for the process, exported by
/// the gateway's and the edge's `/metrics` alike (both verify tokens).
pub static KEY_FETCH_FAILURES: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "auth_key_fetch_failures_total",
                "Failed fetches or re-reads of token-verification keys, by source (jwks_url, service_account_issuer, jwks_file).",
            ),
            &["source"],
        )
        .expect("metric");
        for s in ["jwks_url", "service_account_issuer", "jwks_file"] {
            c.with_label_values(&[s]);
        }
        c
    });

/// A Kubernetes (or any OIDC) issuer of ServiceAccount tokens, whose keys are fetched
/// from its JWKS URL (given, or found by OIDC discovery) and refreshed on unknown kids.
pub struct SaIssuer {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: Option<String>,
    /// Bearer token file sent with the fetches (re-read each time).
    pub token_file: Option<std::path::PathBuf>,
    http: reqwest::Client,
    keys: parking_lot::RwLock<Vec<PublicKey>>,
    /// When keys were last fetched (None: never).
    fetched: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The `source` label of its fetch failures.
    source: &'static str,
}

impl SaIssuer {
    pub fn new(
        issuer: String,
        audience: String,
        jwks_url: Option<String>,
        http: reqwest::Client,
    ) -> SaIssuer {
        SaIssuer {
            issuer,
            audience,
            jwks_url,
            token_file: None,
            http,
            keys: parking_lot::RwLock::new(Vec::new()),
            fetched: tokio::sync::Mutex::new(None),
            source: "service_account_issuer",
        }
    }

    /// Sends the token in `file` (re-read on every fetch) with discovery and key fetches.
    pub fn with_token_file(mut self, file: Option<std::path::PathBuf>) -> SaIssuer {
        self.token_file = file;
        self
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<DecodingKey>, AuthError> {
        let keys = self.keys.read();
        match keys
            .iter()
            .find(|k| kid.is_none() || k.kid.as_deref() == kid)
        {
            None => Ok(None),
            Some(k) if k.alg != alg => Err(AuthError::Algorithm(format!("{alg:?}"))),
            Some(k) => Ok(Some(k.key.clone())),
        }
    }

    /// Fetches the issuer's keys, at most once per `JWKS_REFRESH` (the first time always).
    async fn refresh(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|t| t.elapsed() < JWKS_REFRESH) {
            return;
        }
        *fetched = Some(std::time::Instant::now());
        match self.fetch().await {
            Ok(keys) => *self.keys.write() = keys,
            Err(e) => {
                KEY_FETCH_FAILURES.with_label_values(&[self.source]).inc();
                tracing::warn!(issuer = %self.issuer, error = %e, "fetching ServiceAccount signing keys failed; keeping the keys loaded before")
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<PublicKey>, String> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("token_file {}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let token = &token;
        let get = |url: String| async move {
            let mut req = self.http.get(&url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let r = req
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("{url}: HTTP {}", r.status()));
            }
            r.bytes().await.map_err(|e| format!("{url}: {e}"))
        };
        let url = match &self.jwks_url {
            Some(u) => u.clone(),
            None => {
                let doc = get(format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                ))
                .await?;
                let v: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|e| format!("discovery document: {e}"))?;
                v["jwks_uri"]
                    .as_str()
                    .ok_or("discovery document has no jwks_uri")?
                    .to_owned()
            }
        };
        PublicKey::from_jwks(&get(url).await?)
    }
}

/// Which ServiceAccounts act for which tenant (from the LogStream).
#[derive(Debug, Clone)]
pub struct SaMapping {
    pub namespace: String,
    /// Glob over the ServiceAccount name (`*` for all in the namespace).
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
}

#[derive(Deserialize)]
struct SaClaims {
    sub: String,
    exp: u64,
}

/// Least time between two re-reads of the JWKS file (a flood of unknown kids must not
/// turn into a flood of reads).
const JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

impl Authenticator {
    /// The MAC of an export link's canonical form (keyed BLAKE3).
    pub fn link_mac(&self, canonical: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.link_key, canonical).as_bytes()
    }

    pub fn hs256(secret: &[u8], audience: Option<String>, issuer: Option<String>) -> Authenticator {
        Authenticator {
            hs: Some((
                DecodingKey::from_secret(secret),
                EncodingKey::from_secret(secret),
            )),
            link_key: blake3::derive_key("logstream export links v1", secret),
            keys: parking_lot::RwLock::new(Vec::new()),
            jwks_file: None,
            audience,
            issuer,
            remote: None,
            sa_issuers: Vec::new(),
            sa_mappings: Vec::new(),
        }
    }

    /// Also accept tokens signed by the keys at this JWKS URL.
    pub fn with_jwks_url(mut self, url: String, http: reqwest::Client) -> Authenticator {
        let mut remote = SaIssuer::new(String::new(), String::new(), Some(url), http);
        remote.source = "jwks_url";
        self.remote = Some(remote);
        self
    }

    /// Also accept ServiceAccount tokens of these issuers, mapped to tenants by `mappings`.
    pub fn with_service_accounts(
        mut self,
        issuers: Vec<SaIssuer>,
        mappings: Vec<SaMapping>,
    ) -> Authenticator {
        self.sa_issuers = issuers;
        self.sa_mappings = mappings;
        self
    }

    /// Checks a token, including ServiceAccount tokens (whose issuer keys may need
    /// fetching); every HTTP, WebSocket, SSE and gRPC request comes through here.
    pub async fn verify_request(&self, token: &str) -> Result<Principal, AuthError> {
        let issuer = token
            .split('.')
            .nth(1)
            .and_then(logstream_model::b64::decode)
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|v| v["iss"].as_str().map(str::to_owned));
        if let Some(i) = issuer.and_then(|iss| self.sa_issuers.iter().find(|i| i.issuer == iss)) {
            return self.verify_service_account(i, token).await;
        }
        match (self.verify(token), &self.remote) {
            // Keys from the JWKS URL: fetch on first use and when a kid is unknown.
            (Err(AuthError::UnknownKid(_) | AuthError::Algorithm(_)), Some(remote)) => {
                remote.refresh().await;
                self.verify(token)
            }
            (result, _) => result,
        }
    }

    async fn verify_service_account(
        &self,
        i: &SaIssuer,
        token: &str,
    ) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.as_deref();
        let key = match i.find(kid, header.alg)? {
            Some(k) => k,
            None => {
                i.refresh().await;
                i.find(kid, header.alg)?
                    .ok_or_else(|| AuthError::UnknownKid(kid.unwrap_or("").to_owned()))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        validation.set_audience(&[&i.audience]);
        validation.set_issuer(&[&i.issuer]);
        let c = jsonwebtoken::decode::<SaClaims>(token, &key, &validation)
            .map_err(|e| jwt_error(&e, header.alg, &i.audience, &i.issuer))?
            .claims;
        let account = c
            .sub
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| {
                AuthError::Invalid(
                    "not a ServiceAccount token (sub is not system:serviceaccount:NS:NAME)".into(),
                )
            })?;
        let (ns, name) = account
            .split_once(':')
            .ok_or_else(|| AuthError::Invalid("malformed ServiceAccount subject".into()))?;
        let m = self
            .sa_mappings
            .iter()
            .find(|m| m.namespace == ns && glob_match(&m.name, name))
            .ok_or_else(|| AuthError::Unmapped(format!("{ns}/{name}")))?;
        Ok(Principal {
            subject: c.sub.clone(),
            tenant: m.tenant.clone(),
            scopes: m.scopes.clone(),
            deployments: None,
            expires_at: c.exp,
            token_id: token_hash(token),
        })
    }

    /// Also accept tokens signed by these public keys.
    pub fn with_public_keys(mut self, keys: Vec<PublicKey>) -> Authenticator {
        self.keys.get_mut().extend(keys);
        self
    }

    /// Also accept the keys of a JWKS file (read now, re-read on unknown kids).
    pub fn with_jwks_file(mut self, path: std::path::PathBuf) -> Result<Authenticator, String> {
        let json = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.keys.get_mut().extend(PublicKey::from_jwks(&json)?);
        self.jwks_file = Some((path, parking_lot::Mutex::new(std::time::Instant::now())));
        Ok(self)
    }

    /// Without the HS256 key (production: only public keys).
    pub fn without_hs256(mut self) -> Authenticator {
        self.hs = None;
        self
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
        match &self.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            validation.set_issuer(&[i]);
        }
        validation
    }

    /// Re-reads the JWKS file if it has not been read in the last `JWKS_REFRESH`.
    fn refresh_jwks(&self) {
        let Some((path, last)) = &self.jwks_file else {
            return;
        };
        let mut last = last.lock();
        if last.elapsed() < JWKS_REFRESH {
            return;
        }
        *last = std::time::Instant::now();
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|j| PublicKey::from_jwks(&j))
        {
            Ok(keys) => {
                let mut all = self.keys.write();
                all.retain(|k| k.kid.is_none());
                all.extend(keys);
            }
            Err(e) => {
                KEY_FETCH_FAILURES.with_label_values(&["jwks_file"]).inc();
                tracing::warn!(file = %path.display(), error = %e, "JWKS re-read failed; keeping the keys loaded before")
            }
        }
    }

    /// Checks a token and returns who it is for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => {
                // `alg: none` (and other unknown algorithms) fail to parse: say which.
                let alg = token
                    .split('.')
                    .next()
                    .and_then(logstream_model::b64::decode)
                    .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
                    .and_then(|v| v["alg"].as_str().map(str::to_owned));
                return Err(match alg {
                    Some(a) => AuthError::Algorithm(a),
                    None => AuthError::Invalid(e.to_string()),
                });
            }
        };
        let decoding = if header.alg == Algorithm::HS256 {
            let (key, _) = self
                .hs
                .as_ref()
                .ok_or_else(|| AuthError::Algorithm("HS256".into()))?;
            key.clone()
        } else {
            let find = |keys: &[PublicKey]| -> Result<Option<DecodingKey>, AuthError> {
                let mut candidates = keys
                    .iter()
                    .filter(|k| header.kid.is_none() || k.kid == header.kid);
                match candidates.next() {
                    None => Ok(None),
                    // The key decides the algorithm, never the token (no alg confusion).
                    Some(k) if k.alg != header.alg => {
                        Err(AuthError::Algorithm(format!("{:?}", header.alg)))
                    }
                    Some(k) => Ok(Some(k.key.clone())),
                }
            };
            let found = match find(&self.keys.read())? {
                Some(k) => Some(k),
                None => match &self.remote {
                    Some(r) => find(&r.keys.read())?,
                    None => None,
                },
            };
            match found {
                Some(k) => k,
                None => {
                    self.refresh_jwks();
                    find(&self.keys.read())?.ok_or_else(|| match &header.kid {
                        Some(kid) => AuthError::UnknownKid(kid.clone()),
                        None => AuthError::Algorithm(format!("{:?}", header.alg)),
                    })?
                }
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &decoding, &self.validation(header.alg))
            .map_err(|e| {
            jwt_error(
                &e,
                header.alg,
                self.audience.as_deref().unwrap_or_default(),
                self.issuer.as_deref().unwrap_or_default(),
            )
        })?;
        let c = data.claims;
        logstream_model::validate_tenant(&c.tenant)
            .map_err(|e| AuthError::Tenant(e.to_string()))?;
        let scopes = c
            .scopes
            .iter()
            .map(|s| Scope::parse(s).ok_or_else(|| AuthError::Scope(s.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let token_id = token_hash(token);
        Ok(Principal {
            subject: c.sub,
            tenant: c.tenant,
            scopes,
            deployments: c.deployments,
            expires_at: c.exp,
            token_id,
        })
    }

    /// Loads the HS256 key from `path`, creating a random one (mode 0600) if missing.
    pub fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
        match std::fs::read(path) {
            Ok(k) if !k.is_empty() => return Ok(k),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut f, hex.as_bytes())?;
        f.sync_all()?;
        Ok(hex.into_bytes())
    }

    /// Mints a token for `tenant` with `scopes`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        tenant: &str,
        scopes: &[Scope],
        ttl: std::time::Duration,
        deployments: Option<Vec<String>>,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: subject.to_owned(),
            tenant: tenant.to_owned(),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            deployments,
            exp: now + ttl.as_secs(),
            iat: now,
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        };
        let (_, key) = self.hs.as_ref().expect("minting needs the HS256 key");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).expect("HS256 signing")
    }
}

/// Why a JWT failed validation, as the caller should read it.
fn jwt_error(
    e: &jsonwebtoken::errors::Error,
    alg: Algorithm,
    audience: &str,
    issuer: &str,
) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::Signature,
        K::InvalidAudience => AuthError::Audience(audience.to_owned()),
        K::InvalidIssuer => AuthError::Issuer(issuer.to_owned()),
        K::InvalidAlgorithm => AuthError::Algorithm(format!("{alg:?}")),
        _ => AuthError::Invalid(e.to_string()),
    }
}

fn token_hash(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_files_scope_names_are_exactly_the_scopes() {
        use logstream_model::config::SCOPE_NAMES;
        let every = [
            Scope::Write,
            Scope::Read,
            Scope::Export,
            Scope::LogsAdmin,
            Scope::Admin,
            Scope::AuditWrite,
        ];
        for s in every {
            // A new variant breaks this match: add it to `every` and to SCOPE_NAMES.
            match s {
                Scope::Write
                | Scope::Read
                | Scope::Export
                | Scope::LogsAdmin
                | Scope::Admin
                | Scope::AuditWrite => {}
            }
            assert!(SCOPE_NAMES.contains(&s.as_str()), "{s:?}");
        }
        for name in SCOPE_NAMES {
            assert_eq!(Scope::parse(name).map(Scope::as_str), Some(name));
        }
        assert_eq!(SCOPE_NAMES.len(), every.len());
    }

    #[test]
    fn minted_tokens_verify_and_bad_ones_say_why() {
        let a = Authenticator::hs256(b"secret-one", None, None);
        let t = a.mint(
            "me",
            "acme",
            &[Scope::Read],
            std::time::Duration::from_secs(60),
            None,
        );
        let p = a.verify(&t).unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.has(Scope::Read), p.has(Scope::Write)),
            ("acme", true, false)
        );
        let other = Authenticator::hs256(b"secret-two", None, None);
        assert_eq!(other.verify(&t).unwrap_err(), AuthError::Signature);
        let expired = a.mint(
            "me",
            "acme",
            &[Scope::Read],
            std::time::Duration::ZERO,
            None,
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
        // exp == now is within the 30 s leeway; forge one an hour in the past instead.
        let _ = expired;
        let past = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "me".into(),
                tenant: "acme".into(),
                scopes: vec!["logs:read".into()],
                deployments: None,
                exp: 1,
                iat: 0,
                aud: None,
                iss: None,
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert_eq!(a.verify(&past).unwrap_err(), AuthError::Expired);
        assert!(matches!(a.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn deployment_globs() {
        assert!(glob_match("build-*", "build-42"));
        assert!(glob_match("*-prod", "api-prod"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("build-*", "test-1"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exact2"));
    }
}
