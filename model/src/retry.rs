//! The retry rule of the contract, and the one backoff every client uses.
//!
//! A refusal carries one of the contract's snake_case error codes (`PushAck.error.code`,
//! the code prefix of a gRPC status message `"{code}: {message}"`, the `code` of an
//! HTTP error body). A client MAY retry only [`RETRYABLE_CODES`] (`quota_exceeded`
//! after its `retry_after`); every other code is final for that request and MUST NOT
//! be retried.
//!
//! Pure: the caller supplies the jitter (a random number in `[0, 1)`), so nothing here
//! draws random numbers or sleeps.

use std::time::Duration;

/// The only codes a client may retry; every other code is final.
pub const RETRYABLE_CODES: &[&str] = &[
    "quota_exceeded",
    "unavailable",
    "storage_unavailable",
    "audit_unavailable",
    "shutting_down",
    "internal",
    // Kafka mode: the brokers did not acknowledge (retry with the same batch id), the
    // deployment's partition is moving between store replicas, a completion is durable
    // but not applied yet.
    "kafka_unavailable",
    "kafka_unreachable",
    "not_owner",
    "moved",
    "not_applied_yet",
    // Object storage: lines held only there cannot be read while it does not answer.
    "object_store_unavailable",
    // An edge could not reach the tenant's store (it restarts, or is not ready): the
    // request was relayed unchanged, so a retry with the same batch id is stored once.
    "store_unreachable",
];

/// Whether a refusal with this contract error code may be retried.
///
/// Anything not in [`RETRYABLE_CODES`] is final, including codes this version does not
/// know and transport-level names such as `NotFound`.
pub fn is_retryable(code: &str) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// The code of a gRPC status message formatted `"{code}: {message}"` (the gateway's
/// form), if it starts with a snake_case code.
///
/// ```
/// use logstream_model::retry::status_code;
/// assert_eq!(status_code("deployment_completed: sealed"), Some("deployment_completed"));
/// assert_eq!(status_code("no bearer token"), None);
/// ```
pub fn status_code(message: &str) -> Option<&str> {
    let (code, _) = message.split_once(": ")?;
    let snake = !code.is_empty()
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    snake.then_some(code)
}

/// The delay before retry number `attempt` (0 for the first retry): `base * 2^attempt`,
/// capped at `cap`, with full jitter on the upper half: `jitter` in `[0, 1)` (drawn by
/// the caller) takes up to half of the capped delay off, so the result lies in
/// `(capped / 2, capped]` and many clients do not retry in step. `jitter` 0 gives the
/// plain exponential delay; values outside `[0, 1]` are clamped.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = 1u32
        .checked_shl(attempt)
        .and_then(|m| base.checked_mul(m))
        .unwrap_or(Duration::MAX);
    let capped = exp.min(cap);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    capped - (capped / 2).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_the_listed_codes_are_retryable() {
        for c in RETRYABLE_CODES {
            assert!(is_retryable(c), "{c}");
        }
        for c in [
            "invalid_deployment_id",
            "missing_scope",
            "deployment_not_found",
            "deployment_completed",
            "unauthorized",
            "auth_expired",
            "viewers_per_deployment",
            "",
            "QUOTA_EXCEEDED",
            "quota_exceeded ",
            // tonic's names are not contract codes: final.
            "NotFound",
            "Unavailable",
            "Internal",
        ] {
            assert!(!is_retryable(c), "{c:?}");
        }
        assert_eq!(RETRYABLE_CODES.len(), 13);
    }

    #[test]
    fn status_messages_yield_their_code_prefix() {
        assert_eq!(
            status_code("deployment_completed: the deployment has completed"),
            Some("deployment_completed")
        );
        assert_eq!(
            status_code("storage_unavailable: retry later: soon"),
            Some("storage_unavailable")
        );
        assert_eq!(status_code("quota_exceeded: x"), Some("quota_exceeded"));
        for m in [
            "",
            "no bearer token",
            "deployment_completed",
            ": x",
            "Not Found: x",
            "status 400: bad",
            "transport error",
            "_x: y",
        ] {
            assert_eq!(status_code(m), None, "{m:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, cap) = (100 * MS, 5000 * MS);
        let plain: Vec<_> = (0..9).map(|a| backoff(a, base, cap, 0.0)).collect();
        assert_eq!(
            plain,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(|m| m * MS)
        );
        // No overflow for huge attempts or bases.
        assert_eq!(backoff(u32::MAX, base, cap, 0.0), cap);
        assert_eq!(backoff(40, Duration::MAX, cap, 0.0), cap);
        assert_eq!(backoff(3, base, Duration::ZERO, 0.5), Duration::ZERO);
        // Operator-style: 5 s doubling, at most 5 min.
        let secs = |a| backoff(a, Duration::from_secs(5), Duration::from_secs(300), 0.0);
        assert_eq!(secs(0), Duration::from_secs(5));
        assert_eq!(secs(1), Duration::from_secs(10));
        assert_eq!(secs(29), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let (base, cap) = (100 * MS, 5000 * MS);
        for attempt in 0..12 {
            let full = backoff(attempt, base, cap, 0.0);
            for j in [0.0, 0.1, 0.25, 0.5, 0.75, 0.999_999] {
                let d = backoff(attempt, base, cap, j);
                assert!(
                    d <= full && d > full / 2,
                    "{attempt} {j}: {d:?} of {full:?}"
                );
            }
            // Half the jitter takes a quarter off.
            assert_eq!(backoff(attempt, base, cap, 0.5), full - full / 4);
        }
        // Out-of-range jitter is clamped, never panics or exceeds the delay.
        assert_eq!(backoff(2, base, cap, -3.0), 400 * MS);
        assert_eq!(backoff(2, base, cap, 7.0), 200 * MS);
        assert_eq!(backoff(2, base, cap, f64::NAN), 400 * MS);
    }
}
