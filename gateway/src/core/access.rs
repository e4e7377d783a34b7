//! Who is asking and what they may touch, the same for every transport: one token
//! parser (`Authorization` or `Logstream-Authorization`, scheme case-insensitive), one
//! scope check, one deployment-id check.

use std::net::SocketAddr;

use crate::auth::{AuthError, Principal, Scope};
use crate::core::{Error, Gateway, Result};
use crate::store::DeploymentId;

/// The header clients use when `Authorization` is taken by a proxy (the Kubernetes API
/// server's service proxy keeps `Authorization` for itself).
pub const PROXY_SAFE_AUTHORIZATION: &str = "logstream-authorization";

/// The token of an `Authorization` value: `Bearer <token>`, the scheme in any case
/// (RFC 9110 §11.1), surrounding whitespace ignored.
pub fn bearer_token(value: &str) -> std::result::Result<&str, AuthError> {
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Picks the token from the request's headers (or gRPC metadata): `authorization`,
/// else `logstream-authorization`. `None` when neither is present.
pub fn token_from_headers<'a>(
    authorization: Option<&'a [u8]>,
    proxy_safe: Option<&'a [u8]>,
) -> Option<std::result::Result<&'a str, AuthError>> {
    let raw = authorization.or(proxy_safe)?;
    Some(
        std::str::from_utf8(raw)
            .map_err(|_| AuthError::Malformed)
            .and_then(bearer_token),
    )
}

impl Gateway {
    /// Verifies `token`. A token that does not verify is counted and audited; a missing
    /// or malformed header is refused without either (nothing was presented to check).
    pub async fn authenticate(
        &self,
        token: std::result::Result<&str, AuthError>,
        client: Option<SocketAddr>,
    ) -> Result<Principal> {
        let token = token?;
        self.auth.verify_request(token).await.map_err(|e| {
            self.metrics.auth_failures.inc();
            // Noise: one record per client and reason per interval, with a count.
            let client = client.map(|c| c.ip().to_string()).unwrap_or_default();
            self.audit
                .noise("auth_rejected", "", &client, &e.to_string());
            Error::from(e)
        })
    }
}

/// Refuses a principal without `scope`.
pub fn require(p: &Principal, scope: Scope) -> Result<()> {
    if p.has(scope) {
        Ok(())
    } else {
        Err(Error::forbidden(
            "missing_scope",
            format!("this token lacks the {} scope", scope.as_str()),
        ))
    }
}

/// The deployment `deployment` of the caller's tenant, for an action needing `scope`:
/// checks the scope, the id's syntax and the token's deployment globs (outside them the
/// answer is the same as for a missing deployment).
pub fn deployment(p: &Principal, deployment: &str, scope: Scope) -> Result<DeploymentId> {
    require(p, scope)?;
    logstream_model::validate_deployment_id(deployment)
        .map_err(|e| Error::invalid("invalid_deployment_id", e.to_string()))?;
    if !p.may_access(deployment) {
        return Err(Error::deployment_not_found());
    }
    Ok(DeploymentId::new(p.tenant.clone(), deployment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            assert_eq!(bearer_token(v).unwrap(), "abc", "{v:?}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "abc", ""] {
            assert!(bearer_token(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn authorization_wins_over_the_proxy_safe_header() {
        let t = token_from_headers(Some(b"Bearer a"), Some(b"Bearer b"));
        assert_eq!(t.unwrap().unwrap(), "a");
        let t = token_from_headers(None, Some(b"bearer b"));
        assert_eq!(t.unwrap().unwrap(), "b");
        assert!(token_from_headers(None, None).is_none());
    }
}
