//! Per-tenant quotas: ingest lines/s and bytes/s (token buckets), new deployments per
//! day, stored bytes. Checked before any work is done, so an over-quota request costs
//! almost nothing and one tenant's flood never slows another tenant.
//!
//! A bucket may go into debt by one request (a batch larger than a second's worth is
//! accepted when the bucket is full), then refuses until refilled: the average rate holds
//! and large batches are not starved.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Limits of one tenant (a part of the configuration file).
pub use logstream_model::config::QuotaLimits;

/// Which quota refused a request, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct OverQuota {
    /// `ingest_lines_per_sec`, `ingest_bytes_per_sec`, `deployments_per_day`,
    /// `max_stored_bytes`, `max_open_deployments`.
    pub quota: &'static str,
    pub limit: u64,
    pub retry_after: Duration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(now: Instant, rate: u64) -> Bucket {
        Bucket {
            tokens: rate as f64,
            updated: now,
        }
    }

    /// Adds what `rate`/s earned since the last call, up to one second's worth.
    fn refill(&mut self, now: Instant, rate: u64) {
        let rate_f = rate as f64;
        self.tokens =
            (self.tokens + now.duration_since(self.updated).as_secs_f64() * rate_f).min(rate_f);
        self.updated = now;
    }

    /// How long until the bucket is out of debt (`None`: it may be charged now).
    fn wait(&self, rate: u64) -> Option<Duration> {
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate as f64))
    }
}

#[derive(Default)]
struct TenantState {
    lines: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Creation times of deployments in the last 24 h.
    created: std::collections::VecDeque<Instant>,
}

/// The quota book-keeping of every tenant.
pub struct Quotas {
    default: QuotaLimits,
    tenants: HashMap<String, QuotaLimits>,
    state: Mutex<HashMap<String, TenantState>>,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Quotas {
    pub fn new(default: QuotaLimits, tenants: HashMap<String, QuotaLimits>) -> Quotas {
        Quotas {
            default,
            tenants,
            state: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self, tenant: &str) -> QuotaLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }

    /// Charges an ingest of `lines` lines and `bytes` bytes; `new_deployment` when it
    /// creates one; `stored` gives the tenant's stored bytes (from the catalog, in
    /// memory: exact, no cache), asked only when the tenant has a stored-bytes quota.
    pub fn check_ingest(
        &self,
        tenant: &str,
        lines: u64,
        bytes: u64,
        new_deployment: bool,
        stored: impl FnOnce() -> u64,
        running: impl FnOnce() -> usize,
    ) -> Result<(), OverQuota> {
        let l = self.limits(tenant);
        let now = Instant::now();
        // Measured before the lock: other tenants' checks do not wait for it.
        let used = (l.max_stored_bytes > 0).then(stored);
        let mut state = self.state.lock();
        let st = state.entry(tenant.to_owned()).or_default();
        if used.is_some_and(|used| used >= l.max_stored_bytes) {
            return Err(OverQuota {
                quota: "max_stored_bytes",
                limit: l.max_stored_bytes,
                retry_after: Duration::from_secs(3600),
            });
        }
        if new_deployment && l.max_open_deployments > 0 {
            let open = running() as u64;
            if open >= l.max_open_deployments {
                return Err(OverQuota {
                    quota: "max_open_deployments",
                    limit: l.max_open_deployments,
                    retry_after: Duration::from_secs(60),
                });
            }
        }
        if new_deployment && l.deployments_per_day > 0 {
            while st
                .created
                .front()
                .is_some_and(|t| now.duration_since(*t) >= DAY)
            {
                st.created.pop_front();
            }
            if st.created.len() as u64 >= l.deployments_per_day {
                let wait = DAY - now.duration_since(*st.created.front().expect("non-empty"));
                return Err(OverQuota {
                    quota: "deployments_per_day",
                    limit: l.deployments_per_day,
                    retry_after: wait,
                });
            }
        }
        // Refill and check both buckets before charging either, so a refusal charges
        // nothing.
        let mut buckets = [
            (
                &mut st.lines,
                l.ingest_lines_per_sec,
                lines,
                "ingest_lines_per_sec",
            ),
            (
                &mut st.bytes,
                l.ingest_bytes_per_sec,
                bytes,
                "ingest_bytes_per_sec",
            ),
        ];
        for (bucket, rate, _, quota) in buckets.iter_mut() {
            if *rate == 0 {
                continue;
            }
            let b = bucket.get_or_insert_with(|| Bucket::new(now, *rate));
            b.refill(now, *rate);
            if let Some(retry_after) = b.wait(*rate) {
                return Err(OverQuota {
                    quota,
                    limit: *rate,
                    retry_after,
                });
            }
        }
        for (bucket, rate, n, _) in buckets {
            if let Some(b) = bucket.as_mut().filter(|_| rate > 0) {
                b.tokens -= n as f64;
            }
        }
        if new_deployment && l.deployments_per_day > 0 {
            st.created.push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_in_debt_and_name_the_quota() {
        let q = Quotas::new(
            QuotaLimits {
                ingest_lines_per_sec: 100,
                ..QuotaLimits::default()
            },
            HashMap::new(),
        );
        assert!(
            q.check_ingest("a", 150, 0, false, || 0, || 0).is_ok(),
            "a full bucket takes one oversized batch"
        );
        let err = q.check_ingest("a", 1, 0, false, || 0, || 0).unwrap_err();
        assert_eq!(err.quota, "ingest_lines_per_sec");
        assert!(err.retry_after > Duration::ZERO && err.retry_after <= Duration::from_secs(1));
        assert!(
            q.check_ingest("b", 100, 0, false, || 0, || 0).is_ok(),
            "tenants have their own buckets"
        );
    }

    #[test]
    fn deployments_per_day_and_stored_bytes() {
        let mut tenants = HashMap::new();
        tenants.insert(
            "small".to_owned(),
            QuotaLimits {
                deployments_per_day: 2,
                max_stored_bytes: 1000,
                ..QuotaLimits::default()
            },
        );
        let q = Quotas::new(QuotaLimits::default(), tenants);
        assert!(q.check_ingest("small", 1, 1, true, || 10, || 0).is_ok());
        assert!(q.check_ingest("small", 1, 1, true, || 10, || 0).is_ok());
        assert_eq!(
            q.check_ingest("small", 1, 1, true, || 10, || 0)
                .unwrap_err()
                .quota,
            "deployments_per_day"
        );
        assert!(
            q.check_ingest("small", 1, 1, false, || 10, || 0).is_ok(),
            "existing deployments still ingest"
        );
        let q = Quotas::new(
            QuotaLimits {
                max_stored_bytes: 1000,
                ..QuotaLimits::default()
            },
            HashMap::new(),
        );
        assert_eq!(
            q.check_ingest("full", 1, 1, false, || 5000, || 0)
                .unwrap_err()
                .quota,
            "max_stored_bytes"
        );
        assert!(q.check_ingest("other", 1, 1, false, || 10, || 0).is_ok());
        let q = Quotas::new(
            QuotaLimits {
                max_open_deployments: 3,
                ..QuotaLimits::default()
            },
            HashMap::new(),
        );
        let e = q.check_ingest("busy", 1, 1, true, || 0, || 3).unwrap_err();
        assert_eq!((e.quota, e.limit), ("max_open_deployments", 3));
        assert!(q.check_ingest("busy", 1, 1, true, || 0, || 2).is_ok());
        assert!(
            q.check_ingest("busy", 1, 1, false, || 0, || 3).is_ok(),
            "open deployments still ingest"
        );
    }
}
