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
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "logs:write",
            Scope::Read => "logs:read",
            Scope::Export => "logs:export",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "logs:write" => Some(Scope::Write),
            "logs:read" => Some(Scope::Read),
            "logs:export" => Some(Scope::Export),
            "admin" => Some(Scope::Admin),
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
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
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
    #[error("the token's algorithm {0} is not accepted; this gateway accepts HS256")]
    Algorithm(String),
    #[error("the token's audience is not {0:?}")]
    Audience(String),
    #[error("the token's issuer is not {0:?}")]
    Issuer(String),
    #[error("the token is not a valid JWT: {0}")]
    Invalid(String),
    #[error("the token's tenant claim is invalid: {0}")]
    Tenant(String),
    #[error(
        "the token has an unknown scope {0:?}; scopes are logs:write, logs:read, logs:export, admin"
    )]
    Scope(String),
}

/// Verifies and mints tokens.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Authenticator {
    pub fn hs256(secret: &[u8], audience: Option<String>, issuer: Option<String>) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
        match &audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &issuer {
            validation.set_issuer(&[i]);
        }
        Authenticator {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            audience,
            issuer,
        }
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

    /// Checks a token and returns who it is for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => AuthError::Expired,
                    K::ImmatureSignature => AuthError::NotYetValid,
                    K::InvalidSignature => AuthError::Signature,
                    K::InvalidAudience => {
                        AuthError::Audience(self.audience.clone().unwrap_or_default())
                    }
                    K::InvalidIssuer => AuthError::Issuer(self.issuer.clone().unwrap_or_default()),
                    K::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        let c = data.claims;
        logstream_model::validate_tenant(&c.tenant)
            .map_err(|e| AuthError::Tenant(e.to_string()))?;
        let scopes = c
            .scopes
            .iter()
            .map(|s| Scope::parse(s).ok_or_else(|| AuthError::Scope(s.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Principal {
            subject: c.sub,
            tenant: c.tenant,
            scopes,
            deployments: c.deployments,
            expires_at: c.exp,
        })
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
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
