//! Log alerts: every tenant's rules (`[tenant_alerts.<tenant>]`, the LogStream's
//! `spec.alerts`) evaluated as lines are stored, not by querying.
//!
//! ```text
//! store commit ──committed(id, records)──> rules of id.tenant whose selector takes the
//!   line ─> count selected / matching lines in the (rule, deployment) series' buckets
//!   ─> condition ─> pending ─`for`─> firing ──Notice──> notify (per receiver queue,
//!   retries) ; tick (evaluation_interval): windows slide, `for`, silences, resends,
//!   resolve, cooldown ends, idle series are dropped
//! ```
//!
//! An alert is one (rule, deployment) series. Memory is bounded: a series holds 60
//! count buckets over its window (about 1 KiB with its labels), a rule at most
//! `max_series_per_rule` of them; lines of further deployments are counted in
//! `logstream_alert_series_dropped_total` and not evaluated by that rule until a series
//! ends. Lines are evaluated as stored, so `{{ $line }}` is already redacted.

pub mod notify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use logstream_model::alert::{AlertRule, AlertsSpec, Condition, Piece, parse_template};
use logstream_model::config::AlertingConfig;
use logstream_model::wire::Alert;
use logstream_model::{Level, LogRecord};
use parking_lot::Mutex;
use regex::Regex;

use crate::auth::glob_match;
use crate::metrics::Metrics;
use crate::store::{Clock, CommitListener, Completion, DeploymentId};

pub use notify::Notifier;

/// Buckets per window.
const BUCKETS: usize = 60;
/// The longest first matching line kept for `{{ $line }}`, in bytes.
const MAX_LINE: usize = 512;

/// One rule, compiled.
struct Rule {
    spec: AlertRule,
    regex: Option<Regex>,
    condition: Condition,
    min_level: Option<Level>,
    pending_ns: i64,
    repeat_ns: i64,
    /// Indexes into the tenant's receivers.
    receivers: Vec<usize>,
}

impl Rule {
    fn selects(&self, r: &LogRecord) -> bool {
        self.spec
            .selector
            .step
            .as_deref()
            .is_none_or(|g| glob_match(g, &r.step))
            && self
                .min_level
                .is_none_or(|min| r.level != Level::Unknown && r.level >= min)
    }

    /// Whether a selected line counts as a match: the line match, or without one
    /// every line (for `errorRatio`: lines at level `error` or worse).
    fn matches(&self, r: &LogRecord) -> bool {
        match &self.regex {
            Some(re) => re.is_match(&r.message),
            None => match self.condition {
                Condition::ErrorRatio { .. } => {
                    r.level != Level::Unknown && r.level >= Level::Error
                }
                _ => true,
            },
        }
    }
}

struct Tenant {
    rules: Vec<Rule>,
}

/// Counts of selected and matching lines over a sliding window, in buckets.
struct Buckets {
    width: i64,
    /// (bucket number, selected, matching)
    slots: Box<[(i64, u32, u32)]>,
}

impl Buckets {
    fn new(window_ns: i64) -> Buckets {
        Buckets {
            width: (window_ns / BUCKETS as i64).max(1_000_000),
            slots: vec![(i64::MIN, 0, 0); BUCKETS].into_boxed_slice(),
        }
    }

    fn add(&mut self, now: i64, selected: u32, matching: u32) {
        let n = now.div_euclid(self.width);
        let slot = &mut self.slots[n.rem_euclid(BUCKETS as i64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 = slot.1.saturating_add(selected);
        slot.2 = slot.2.saturating_add(matching);
    }

    /// (selected, matching) within the window ending now.
    fn sums(&self, now: i64) -> (u64, u64) {
        let n = now.div_euclid(self.width);
        self.slots
            .iter()
            .filter(|s| s.0 <= n && s.0 > n - BUCKETS as i64)
            .fold((0, 0), |(a, b), s| (a + u64::from(s.1), b + u64::from(s.2)))
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Inactive,
    Pending {
        since: i64,
    },
    /// `notified`: receivers were told of this firing (false while the cooldown holds
    /// it back).
    Firing {
        since: i64,
        notified: bool,
    },
    /// Listed as resolved until `resolved_retention` has passed.
    Resolved {
        since: i64,
        at: i64,
    },
}

/// One (rule, deployment).
struct Series {
    buckets: Buckets,
    /// Store clock of the last matching line (of the series' start before one).
    last_match: i64,
    /// The first matching line of the window (ts of arrival, text).
    first_line: Option<(i64, String)>,
    phase: Phase,
    value: f64,
    /// When receivers were last told of a firing (the cooldown runs from it).
    last_notified: Option<i64>,
    /// When Alertmanager receivers were last sent this firing alert.
    last_resent: i64,
    /// The deployment completed (silence no longer applies).
    completed: bool,
}

impl Series {
    /// Whether receivers may be told of a firing now: never told, or last told at
    /// least `repeat_ns` ago (the cooldown).
    fn cooled(&self, now: i64, repeat_ns: i64) -> bool {
        self.last_notified.is_none_or(|t| now - t >= repeat_ns)
    }
}

type Key = (String, usize, String);

/// Something receivers are to be told.
#[derive(Debug, Clone)]
pub struct Notice {
    pub tenant: String,
    /// Indexes into the tenant's receivers.
    pub receivers: Vec<usize>,
    /// Only Alertmanager receivers (a resend that keeps the alert alive there).
    pub alertmanager_only: bool,
    pub firing: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Unix ns.
    pub starts_at: i64,
    /// Unix ns: the resolve time, or (firing) when Alertmanager should consider it
    /// resolved without news.
    pub ends_at: i64,
    /// Where to look: the deployment in the web UI.
    pub generator_url: String,
}

/// The alert engine: rules, series, and the notifier it hands notices to.
pub struct Alerts {
    tenants: HashMap<String, Tenant>,
    series: Mutex<HashMap<Key, Series>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    resend_ns: i64,
    retention_ns: i64,
    max_series: usize,
    external_url: String,
    /// Kafka mode: only deployments of partitions this replica serves are evaluated
    /// (not a partition it replays while catching up, nor one that moved away).
    kafka: std::sync::OnceLock<Arc<crate::kafka::Kafka>>,
}

impl Alerts {
    /// Compiles every tenant's rules (validated with the config) and starts nothing:
    /// [`Alerts::run`] ticks, the notifier's tasks start with it.
    pub fn new(
        specs: &BTreeMap<String, AlertsSpec>,
        cfg: &AlertingConfig,
        external_url: String,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Alerts> {
        let mut tenants = HashMap::new();
        for (tenant, spec) in specs {
            spec.validate().map_err(|e| {
                anyhow::anyhow!("invalid configuration: tenant_alerts: {tenant}.{e}")
            })?;
            let mut rules = Vec::new();
            for (i, r) in spec.rules.iter().enumerate() {
                let at = format!("rules[{i}]");
                let regex = match r.match_regex() {
                    Some(re) => Some(
                        regex::RegexBuilder::new(&re)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| anyhow::anyhow!("tenant_alerts: {tenant}.{at}: {e}"))?,
                    ),
                    None => None,
                };
                let receivers = match r.receivers.is_empty() {
                    true => (0..spec.receivers.len()).collect(),
                    false => r
                        .receivers
                        .iter()
                        .filter_map(|n| spec.receivers.iter().position(|x| &x.name == n))
                        .collect(),
                };
                rules.push(Rule {
                    condition: r
                        .checked_condition(&at)
                        .map_err(|e| anyhow::anyhow!("tenant_alerts: {tenant}.{e}"))?,
                    min_level: r.min_level(),
                    pending_ns: r.pending_ns(),
                    repeat_ns: r.repeat_ns(),
                    regex,
                    receivers,
                    spec: r.clone(),
                });
            }
            tenants.insert(tenant.clone(), Tenant { rules });
        }
        let notifier = Notifier::new(specs, cfg, external_url.clone(), metrics.clone())?;
        Ok(Alerts {
            tenants,
            series: Mutex::new(HashMap::new()),
            clock,
            metrics,
            notifier,
            resend_ns: cfg.resend_interval().as_nanos() as i64,
            retention_ns: cfg.resolved_retention().as_nanos() as i64,
            max_series: cfg.max_series_per_rule,
            external_url,
            kafka: std::sync::OnceLock::new(),
        })
    }

    /// Kafka mode: evaluate only what this replica serves (set once at start).
    pub fn serve_only_owned(&self, kafka: Arc<crate::kafka::Kafka>) {
        let _ = self.kafka.set(kafka);
    }

    fn serves(&self, id: &DeploymentId) -> bool {
        self.kafka.get().is_none_or(|k| k.serves(id))
    }

    /// Drops every series of `id` (the deployment was deleted).
    pub fn forget(&self, id: &DeploymentId) {
        self.series
            .lock()
            .retain(|(t, _, d), _| !(t == &id.tenant && d == &id.deployment));
    }

    /// Lines of `id` were masked by a hotfix: the first matching line kept for
    /// `{{ $line }}` may hold what was masked, so it is dropped.
    pub fn redacted(&self, id: &DeploymentId) {
        for ((t, _, d), s) in self.series.lock().iter_mut() {
            if t == &id.tenant && d == &id.deployment {
                s.first_line = None;
            }
        }
    }

    /// Whether any tenant has a rule.
    pub fn is_empty(&self) -> bool {
        self.tenants.values().all(|t| t.rules.is_empty())
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Ticks every `interval` until shutdown: windows slide, `for` and silences
    /// elapse, cooldowns end, resends go out.
    pub async fn run(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One evaluation of every series at the clock's now.
    pub fn tick(&self) {
        let now = self.clock.now();
        let mut notices = Vec::new();
        {
            let mut series = self.series.lock();
            series.retain(|(tenant, ri, dep), s| {
                let Some(rule) = self.rule(tenant, *ri) else {
                    return false;
                };
                if self.kafka.get().is_some()
                    && !self.serves(&DeploymentId::new(tenant.as_str(), dep.as_str()))
                {
                    // Its partition moved to another replica (which evaluates it now).
                    return false;
                }
                self.evaluate(tenant, rule, dep, s, now, &mut notices);
                // Dropped when nothing is left to show or count: inactive, and the
                // window (or a completed deployment's silence) holds nothing.
                let idle = match rule.condition {
                    Condition::Silence { .. } => s.completed,
                    _ => s.buckets.sums(now) == (0, 0),
                };
                // Kept through its cooldown, so a re-fire still waits for it.
                !(s.phase == Phase::Inactive && idle && s.cooled(now, rule.repeat_ns))
            });
        }
        self.publish_gauges();
        for n in notices {
            self.notifier.send(n);
        }
    }

    fn rule(&self, tenant: &str, i: usize) -> Option<&Rule> {
        self.tenants.get(tenant)?.rules.get(i)
    }

    /// The tenant's alerts: pending, firing, and resolved within `resolved_retention`.
    pub fn list(&self, tenant: &str) -> Vec<Alert> {
        let series = self.series.lock();
        let mut out: Vec<Alert> = series
            .iter()
            .filter(|((t, _, _), _)| t == tenant)
            .filter_map(|((t, ri, dep), s)| {
                let rule = self.rule(t, *ri)?;
                let (state, since) = match s.phase {
                    Phase::Inactive => return None,
                    Phase::Pending { since } => ("pending", since),
                    Phase::Firing { since, .. } => ("firing", since),
                    Phase::Resolved { at, .. } => ("resolved", at),
                };
                let (labels, annotations) = self.render(t, rule, dep, s);
                Some(Alert {
                    rule: rule.spec.name.clone(),
                    deployment: dep.clone(),
                    state: state.to_owned(),
                    labels,
                    annotations,
                    since: logstream_model::time::format_rfc3339(since),
                    value: s.value,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.rule, &a.deployment).cmp(&(&b.rule, &b.deployment)));
        out
    }

    /// Labels and annotations of one alert, templates filled in.
    fn render(
        &self,
        tenant: &str,
        rule: &Rule,
        deployment: &str,
        s: &Series,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut labels = BTreeMap::from([
            ("alertname".to_owned(), rule.spec.name.clone()),
            ("tenant".to_owned(), tenant.to_owned()),
            ("deployment".to_owned(), deployment.to_owned()),
        ]);
        let line = s.first_line.as_ref().map(|(_, l)| l.as_str()).unwrap_or("");
        let value = format_value(s.value);
        let fill = |t: &str, labels: &BTreeMap<String, String>| -> String {
            let mut out = String::new();
            for p in parse_template(t).unwrap_or_default() {
                match p {
                    Piece::Text(x) => out.push_str(x),
                    Piece::Label(n) => {
                        out.push_str(labels.get(n).map(String::as_str).unwrap_or(""))
                    }
                    Piece::Var("$value") => out.push_str(&value),
                    Piece::Var("$line") => out.push_str(line),
                    Piece::Var("$rule") => out.push_str(&rule.spec.name),
                    Piece::Var("$tenant") => out.push_str(tenant),
                    Piece::Var("$deployment") => out.push_str(deployment),
                    Piece::Var(_) => {}
                }
            }
            out
        };
        let base = labels.clone();
        for (k, v) in &rule.spec.labels {
            labels.insert(k.clone(), fill(v, &base));
        }
        let annotations = rule
            .spec
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, &labels)))
            .collect();
        (labels, annotations)
    }

    /// Moves one series along at `now`; what receivers are to hear goes to `out`.
    fn evaluate(
        &self,
        tenant: &str,
        rule: &Rule,
        deployment: &str,
        s: &mut Series,
        now: i64,
        out: &mut Vec<Notice>,
    ) {
        let (selected, matching) = s.buckets.sums(now);
        if matching == 0 && !matches!(s.phase, Phase::Pending { .. } | Phase::Firing { .. }) {
            s.first_line = None;
        }
        let active = match rule.condition {
            Condition::Matches { count, .. } => {
                s.value = matching as f64;
                matching >= count
            }
            Condition::ErrorRatio {
                above, min_lines, ..
            } => {
                s.value = if selected == 0 {
                    0.0
                } else {
                    matching as f64 / selected as f64
                };
                selected >= min_lines && s.value > above
            }
            Condition::Silence { for_ns } => {
                let silent = now.saturating_sub(s.last_match);
                s.value = (silent / 1_000_000) as f64 / 1000.0;
                !s.completed && silent >= for_ns
            }
        };
        match (s.phase, active) {
            (Phase::Inactive | Phase::Resolved { .. }, true) => {
                s.phase = Phase::Pending { since: now };
                if rule.pending_ns == 0 {
                    self.fire(tenant, rule, deployment, s, now, out);
                }
            }
            (Phase::Pending { since }, true) if now - since >= rule.pending_ns => {
                self.fire(tenant, rule, deployment, s, now, out);
            }
            (Phase::Pending { .. }, false) => s.phase = Phase::Inactive,
            (Phase::Firing { since, notified }, true) => {
                if s.cooled(now, rule.repeat_ns) {
                    // A firing the cooldown held back, or one still firing after the
                    // repeat interval: every receiver (again).
                    s.phase = Phase::Firing {
                        since,
                        notified: true,
                    };
                    self.notify(tenant, rule, deployment, s, now, out);
                } else if notified && now - s.last_resent >= self.resend_ns {
                    s.last_resent = now;
                    out.push(self.notice(tenant, rule, deployment, s, now, true, true));
                }
            }
            (Phase::Firing { since, notified }, false) => {
                s.phase = Phase::Resolved { since, at: now };
                if notified {
                    out.push(self.notice(tenant, rule, deployment, s, now, false, false));
                }
            }
            (Phase::Resolved { at, .. }, false) if now - at >= self.retention_ns => {
                s.phase = Phase::Inactive;
            }
            _ => {}
        }
    }

    fn fire(
        &self,
        tenant: &str,
        rule: &Rule,
        deployment: &str,
        s: &mut Series,
        now: i64,
        out: &mut Vec<Notice>,
    ) {
        let cooled = s.cooled(now, rule.repeat_ns);
        s.phase = Phase::Firing {
            since: now,
            notified: cooled,
        };
        if cooled {
            self.notify(tenant, rule, deployment, s, now, out);
        }
    }

    /// Tells every receiver that `s` fires; the cooldown and the resends run from now.
    fn notify(
        &self,
        tenant: &str,
        rule: &Rule,
        deployment: &str,
        s: &mut Series,
        now: i64,
        out: &mut Vec<Notice>,
    ) {
        s.last_notified = Some(now);
        s.last_resent = now;
        out.push(self.notice(tenant, rule, deployment, s, now, true, false));
    }

    #[allow(clippy::too_many_arguments)]
    fn notice(
        &self,
        tenant: &str,
        rule: &Rule,
        deployment: &str,
        s: &Series,
        now: i64,
        firing: bool,
        alertmanager_only: bool,
    ) -> Notice {
        let (labels, annotations) = self.render(tenant, rule, deployment, s);
        let starts_at = match s.phase {
            Phase::Firing { since, .. } | Phase::Resolved { since, .. } => since,
            _ => now,
        };
        Notice {
            tenant: tenant.to_owned(),
            receivers: rule.receivers.clone(),
            alertmanager_only,
            firing,
            labels,
            annotations,
            starts_at,
            // As Prometheus: a firing alert Alertmanager stops hearing about resolves
            // after four resend intervals.
            ends_at: if firing {
                now + 4 * self.resend_ns
            } else {
                now
            },
            generator_url: format!(
                "{}/deployments/{}",
                self.external_url.trim_end_matches('/'),
                deployment
            ),
        }
    }

    fn publish_gauges(&self) {
        let series = self.series.lock();
        let mut counts: HashMap<(&str, &str, &str), i64> = HashMap::new();
        for (tenant, t) in &self.tenants {
            for r in &t.rules {
                for state in ["pending", "firing"] {
                    counts.insert((tenant, &r.spec.name, state), 0);
                }
            }
        }
        for ((tenant, ri, _), s) in series.iter() {
            let Some(rule) = self.rule(tenant, *ri) else {
                continue;
            };
            let state = match s.phase {
                Phase::Pending { .. } => "pending",
                Phase::Firing { .. } => "firing",
                _ => continue,
            };
            *counts.entry((tenant, &rule.spec.name, state)).or_default() += 1;
        }
        for ((tenant, rule, state), n) in counts {
            self.metrics
                .alerts
                .with_label_values(&[tenant, rule, state])
                .set(n);
        }
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl CommitListener for Alerts {
    fn committed(&self, id: &DeploymentId, records: &[LogRecord]) {
        let Some(tenant) = self.tenants.get(&id.tenant) else {
            return;
        };
        if !self.serves(id) {
            // Kafka mode: a partition replayed while catching up (old lines, not news).
            return;
        }
        let now = self.clock.now();
        let mut notices = Vec::new();
        for (ri, rule) in tenant.rules.iter().enumerate() {
            if !glob_match(&rule.spec.selector.deployment, &id.deployment) {
                continue;
            }
            let (mut selected, mut matching) = (0u32, 0u32);
            let mut first: Option<&LogRecord> = None;
            for r in records.iter().filter(|r| rule.selects(r)) {
                selected += 1;
                if rule.matches(r) {
                    matching += 1;
                    first.get_or_insert(r);
                }
            }
            if selected == 0 {
                continue;
            }
            if matching > 0 {
                self.metrics
                    .alert_matches
                    .with_label_values(&[&id.tenant, &rule.spec.name])
                    .inc_by(u64::from(matching));
            }
            let key = (id.tenant.clone(), ri, id.deployment.clone());
            let mut series = self.series.lock();
            if !series.contains_key(&key) {
                let held = series
                    .keys()
                    .filter(|(t, i, _)| *i == ri && t == &id.tenant)
                    .count();
                if held >= self.max_series {
                    self.metrics
                        .alert_series_dropped
                        .with_label_values(&[&id.tenant, &rule.spec.name])
                        .inc();
                    continue;
                }
            }
            let s = series.entry(key).or_insert_with(|| Series {
                buckets: Buckets::new(rule.condition.window_ns()),
                last_match: now,
                first_line: None,
                phase: Phase::Inactive,
                value: 0.0,
                last_notified: None,
                last_resent: 0,
                completed: false,
            });
            s.buckets.add(now, selected, matching);
            if let Some(r) = first {
                s.last_match = now;
                if s.first_line.is_none() {
                    s.first_line = Some((now, truncate(&r.message, MAX_LINE)));
                }
            }
            self.evaluate(&id.tenant, rule, &id.deployment, s, now, &mut notices);
        }
        for n in notices {
            self.notifier.send(n);
        }
    }

    fn completed(&self, id: &DeploymentId, _completion: &Completion) {
        let Some(tenant) = self.tenants.get(&id.tenant) else {
            return;
        };
        let now = self.clock.now();
        let mut notices = Vec::new();
        let mut series = self.series.lock();
        for (ri, rule) in tenant.rules.iter().enumerate() {
            let key = (id.tenant.clone(), ri, id.deployment.clone());
            if let Some(s) = series.get_mut(&key) {
                s.completed = true;
                // A finished deployment is no longer silent: its silence ends now.
                if matches!(rule.condition, Condition::Silence { .. }) {
                    self.evaluate(&id.tenant, rule, &id.deployment, s, now, &mut notices);
                }
            }
        }
        drop(series);
        for n in notices {
            self.notifier.send(n);
        }
    }
}

/// The store's listeners: the hub (live viewers) and the alerts.
pub struct Listeners(pub Vec<Arc<dyn CommitListener>>);

impl CommitListener for Listeners {
    fn committed(&self, id: &DeploymentId, records: &[LogRecord]) {
        for l in &self.0 {
            l.committed(id, records);
        }
    }

    fn completed(&self, id: &DeploymentId, completion: &Completion) {
        for l in &self.0 {
            l.completed(id, completion);
        }
    }
}

#[cfg(test)]
mod tests;
