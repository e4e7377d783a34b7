//! Log alert rules: what a tenant wants to hear about its pipelines' logs. One shape for
//! the `LogStream` CRD's `spec.alerts` and the gateway's `[tenant_alerts.<tenant>]`
//! (the operator copies one into the other), so rules work without Kubernetes too.
//!
//! ```text
//! AlertsSpec { rules: [AlertRule], receivers: [Receiver] }
//! AlertRule  selector (deployment glob, step glob, level) ─> line match (text or regex)
//!            ─> one condition: matches >= N in a window | error ratio > R in a window
//!               (with a minimum volume) | silence (no line for a duration)
//!            ─> `for` (pending) ─> firing ─> receivers; `repeatInterval` between
//!               notifications of one alert (cooldown)
//! ```
//!
//! Validation names the field (`rules[2].match.regex`) and the fix; the gateway refuses
//! to start and the operator reports the LogStream as invalid on the first problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Level;

/// Longest accepted regex, in characters (as custom redaction patterns).
pub const MAX_REGEX_LEN: usize = 1024;
/// Rules per tenant.
pub const MAX_RULES: usize = 100;
/// Receivers per tenant.
pub const MAX_RECEIVERS: usize = 32;
/// Template variables an annotation or label value may use.
pub const TEMPLATE_VARS: [&str; 6] = [
    "$labels.<name>",
    "$value",
    "$line",
    "$rule",
    "$tenant",
    "$deployment",
];

/// A tenant's alerting: rules and where they notify.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Rules evaluated on every line the tenant's deployments append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AlertRule>,
    /// Notification targets the rules name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<Receiver>,
}

/// One alert rule. An alert is one (rule, deployment) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertRule {
    /// The alert's name (its `alertname` label): letters, digits, `_`, `-`, `.`, `:`,
    /// 1-128 characters, unique in the tenant.
    pub name: String,
    /// Which lines the rule looks at. Default: every line of every deployment.
    #[serde(default)]
    pub selector: AlertSelector,
    /// Which of the selected lines count as matches (text or regex). Without it every
    /// selected line matches, and `errorRatio` counts lines at level `error` or worse.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub line_match: Option<LineMatch>,
    /// When the alert is active: exactly one condition.
    pub condition: AlertCondition,
    /// How long the condition must hold before the alert fires (pending until then),
    /// as a duration (`0s`, `30s`, `5m`). Default `0s`.
    #[serde(default = "zero", rename = "for")]
    pub pending_for: String,
    /// Labels added to the alert's (`alertname`, `tenant`, `deployment` are set by
    /// logstream). Values may use templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (`summary`, `description`, ...), with templates:
    /// `{{ $labels.deployment }}`, `{{ $value }}`, `{{ $line }}` (the first matching
    /// line, as stored: redacted), `{{ $rule }}`, `{{ $tenant }}`, `{{ $deployment }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Cooldown: one alert is notified at most once per this interval (re-sent while it
    /// keeps firing; one that fires again sooner after its last notification waits).
    /// Default `1h`.
    #[serde(default = "one_hour")]
    pub repeat_interval: String,
    /// Receivers to notify, by name. Default: every receiver of the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<String>,
}

fn zero() -> String {
    "0s".into()
}

fn one_hour() -> String {
    "1h".into()
}

/// Which lines a rule looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertSelector {
    /// Deployment ids, as a glob (`*` matches any run of characters). Default `*`.
    #[serde(default = "star")]
    pub deployment: String,
    /// Step names, as a glob. Default: every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Lines at this level or more severe (`trace` < `debug` < `info` < `warn` <
    /// `error` < `fatal`). Default: every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl Default for AlertSelector {
    fn default() -> Self {
        AlertSelector {
            deployment: star(),
            step: None,
            level: None,
        }
    }
}

fn star() -> String {
    "*".into()
}

/// A line match: exactly one of a substring or a regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LineMatch {
    /// The line contains this text (case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// The line matches this regular expression (Rust/RE2 syntax, no look-around), at
    /// most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// When an alert is active: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertCondition {
    /// At least `count` matching lines within `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<MatchesCondition>,
    /// Matching lines over selected lines above `above` within `window`, once at least
    /// `minLines` lines were selected in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<ErrorRatioCondition>,
    /// A running deployment had no matching line for `for` (a stuck pipeline); it ends
    /// with the next line or the deployment's completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<SilenceCondition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchesCondition {
    /// Matching lines needed, at least 1.
    pub count: u64,
    /// The sliding window, as a duration (`1m`, `15m`), at most 24h.
    pub window: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ErrorRatioCondition {
    /// The ratio the alert is active above, in [0, 1).
    pub above: f64,
    /// The sliding window, as a duration, at most 24h.
    pub window: String,
    /// Selected lines the window must hold before the ratio counts. Default 10.
    #[serde(default = "ten")]
    pub min_lines: u64,
}

fn ten() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SilenceCondition {
    /// How long without a matching line, as a duration (`10m`).
    #[serde(rename = "for")]
    pub silent_for: String,
}

/// A notification target: exactly one of `alertmanager`, `webhook`, `slack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Receiver {
    /// The name rules use: letters, digits, `_`, `-`, 1-64 characters, unique.
    pub name: String,
    /// An Alertmanager: alerts are posted to `<url>/api/v2/alerts`, re-sent while
    /// firing, with `endsAt` on resolve (as Prometheus and the Loki ruler do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<Endpoint>,
    /// Any HTTP endpoint, sent Alertmanager's webhook payload (version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Endpoint>,
    /// A Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<Endpoint>,
}

/// Where a receiver sends: a URL, given inline or read from a file (a mounted Secret:
/// a Slack webhook URL is a credential).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the URL (read at start): the gateway's config file form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<String>,
    /// A key of a Secret in the LogStream's namespace holding the URL: the LogStream's
    /// form (the operator mounts the Secret into the store and sets `urlFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKey>,
    /// Seconds one delivery attempt may take. Default 10.
    #[serde(default = "ten")]
    pub timeout_secs: u64,
}

/// A key of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

/// Which kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    Alertmanager,
    Webhook,
    Slack,
}

impl ReceiverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Alertmanager => "alertmanager",
            ReceiverKind::Webhook => "webhook",
            ReceiverKind::Slack => "slack",
        }
    }
}

impl Receiver {
    /// The receiver's kind and endpoint (valid receivers have exactly one).
    pub fn target(&self) -> Option<(ReceiverKind, &Endpoint)> {
        match (&self.alertmanager, &self.webhook, &self.slack) {
            (Some(e), None, None) => Some((ReceiverKind::Alertmanager, e)),
            (None, Some(e), None) => Some((ReceiverKind::Webhook, e)),
            (None, None, Some(e)) => Some((ReceiverKind::Slack, e)),
            _ => None,
        }
    }
}

/// A rule's condition, checked and in numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Matches {
        count: u64,
        window_ns: i64,
    },
    ErrorRatio {
        above: f64,
        window_ns: i64,
        min_lines: u64,
    },
    Silence {
        for_ns: i64,
    },
}

impl Condition {
    /// The window counts are kept over (0 for silence).
    pub fn window_ns(&self) -> i64 {
        match *self {
            Condition::Matches { window_ns, .. } | Condition::ErrorRatio { window_ns, .. } => {
                window_ns
            }
            Condition::Silence { .. } => 0,
        }
    }
}

/// The longest window or duration a rule may name.
const MAX_WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;

fn parse_dur(field: &str, s: &str, allow_zero: bool) -> Result<i64, String> {
    match crate::time::parse_duration(s) {
        Some(n) if (n > 0 || (allow_zero && n == 0)) && n <= MAX_WINDOW_NS => Ok(n),
        Some(_) => Err(format!(
            "{field}: {s:?} is out of range; use a duration {}up to 24h",
            if allow_zero { "" } else { "above 0 and " }
        )),
        None => Err(format!(
            "{field}: {s:?} is not a duration; use e.g. 30s, 5m, 1h"
        )),
    }
}

fn name_ok(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

impl AlertRule {
    /// `for` in ns.
    pub fn pending_ns(&self) -> i64 {
        crate::time::parse_duration(&self.pending_for).unwrap_or(0)
    }

    /// `repeatInterval` in ns.
    pub fn repeat_ns(&self) -> i64 {
        crate::time::parse_duration(&self.repeat_interval).unwrap_or(3_600_000_000_000)
    }

    /// The selector's level floor.
    pub fn min_level(&self) -> Option<Level> {
        self.selector.level.as_deref().and_then(Level::parse)
    }

    /// The condition, checked (`at` is the rule's field path for messages).
    pub fn checked_condition(&self, at: &str) -> Result<Condition, String> {
        let c = &self.condition;
        match (&c.matches, &c.error_ratio, &c.silence) {
            (Some(m), None, None) => {
                if m.count == 0 {
                    return Err(format!("{at}.condition.matches.count: must be at least 1"));
                }
                Ok(Condition::Matches {
                    count: m.count,
                    window_ns: parse_dur(
                        &format!("{at}.condition.matches.window"),
                        &m.window,
                        false,
                    )?,
                })
            }
            (None, Some(r), None) => {
                if !(0.0..1.0).contains(&r.above) {
                    return Err(format!(
                        "{at}.condition.errorRatio.above: {} is not a ratio in [0, 1); use e.g. 0.05 for 5%",
                        r.above
                    ));
                }
                if r.min_lines == 0 {
                    return Err(format!(
                        "{at}.condition.errorRatio.minLines: must be at least 1"
                    ));
                }
                Ok(Condition::ErrorRatio {
                    above: r.above,
                    window_ns: parse_dur(
                        &format!("{at}.condition.errorRatio.window"),
                        &r.window,
                        false,
                    )?,
                    min_lines: r.min_lines,
                })
            }
            (None, None, Some(s)) => Ok(Condition::Silence {
                for_ns: parse_dur(&format!("{at}.condition.silence.for"), &s.silent_for, false)?,
            }),
            _ => Err(format!(
                "{at}.condition: set exactly one of matches, errorRatio, silence"
            )),
        }
    }

    /// The line match's regex source (a `contains` text escaped), if any.
    pub fn match_regex(&self) -> Option<String> {
        let m = self.line_match.as_ref()?;
        m.regex
            .clone()
            .or_else(|| m.contains.as_ref().map(|t| regex::escape(t)))
    }
}

impl AlertsSpec {
    /// Checks every rule and receiver; the first problem names its field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!(
                "rules: {} rules; at most {MAX_RULES} per tenant",
                self.rules.len()
            ));
        }
        if self.receivers.len() > MAX_RECEIVERS {
            return Err(format!(
                "receivers: {} receivers; at most {MAX_RECEIVERS} per tenant",
                self.receivers.len()
            ));
        }
        for (i, r) in self.receivers.iter().enumerate() {
            let at = format!("receivers[{i}]");
            if !name_ok(&r.name, 64, &[]) {
                return Err(format!(
                    "{at}.name: {:?}: use letters, digits, `_` and `-`, 1-64 characters",
                    r.name
                ));
            }
            if self.receivers[..i].iter().any(|o| o.name == r.name) {
                return Err(format!("{at}.name: {:?} is used twice", r.name));
            }
            let Some((_, e)) = r.target() else {
                return Err(format!(
                    "{at}: set exactly one of alertmanager, webhook, slack"
                ));
            };
            match (&e.url, &e.url_file, &e.url_secret) {
                (Some(u), None, None) => {
                    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                        return Err(format!(
                            "{at}: url {u:?} is not an http(s) URL; use e.g. http://alertmanager.monitoring:9093"
                        ));
                    }
                }
                (None, Some(f), None) if !f.is_empty() => {}
                (None, None, Some(k)) if !k.name.is_empty() && !k.key.is_empty() => {}
                _ => {
                    return Err(format!(
                        "{at}: set exactly one of url, urlFile (a file with the URL), urlSecret (a Secret's name and key)"
                    ));
                }
            }
            if e.timeout_secs == 0 || e.timeout_secs > 300 {
                return Err(format!("{at}.timeoutSecs: must be between 1 and 300"));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if !name_ok(&rule.name, 128, &['.', ':']) {
                return Err(format!(
                    "{at}.name: {:?}: use letters, digits, `_`, `-`, `.`, `:`, 1-128 characters",
                    rule.name
                ));
            }
            if self.rules[..i].iter().any(|o| o.name == rule.name) {
                return Err(format!("{at}.name: {:?} is used twice", rule.name));
            }
            if rule.selector.deployment.is_empty() {
                return Err(format!(
                    "{at}.selector.deployment: empty; use a glob such as build-* or *"
                ));
            }
            if let Some(l) = &rule.selector.level
                && Level::parse(l).is_none_or(|l| l == Level::Unknown)
            {
                return Err(format!(
                    "{at}.selector.level: {l:?}: use trace, debug, info, warn, error or fatal"
                ));
            }
            if let Some(m) = &rule.line_match {
                match (&m.contains, &m.regex) {
                    (Some(t), None) if !t.is_empty() => {}
                    (None, Some(re)) => {
                        if re.chars().count() > MAX_REGEX_LEN {
                            return Err(format!(
                                "{at}.match.regex: longer than {MAX_REGEX_LEN} characters"
                            ));
                        }
                        regex::RegexBuilder::new(re)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| format!("{at}.match.regex: invalid: {e}"))?;
                    }
                    _ => {
                        return Err(format!(
                            "{at}.match: set exactly one of contains (non-empty) or regex"
                        ));
                    }
                }
            }
            rule.checked_condition(&at)?;
            parse_dur(&format!("{at}.for"), &rule.pending_for, true)?;
            parse_dur(
                &format!("{at}.repeatInterval"),
                &rule.repeat_interval,
                false,
            )?;
            for (k, v) in &rule.labels {
                if !label_name_ok(k) {
                    return Err(format!(
                        "{at}.labels: {k:?} is not a label name; use [a-zA-Z_][a-zA-Z0-9_]*"
                    ));
                }
                if ["alertname", "tenant", "deployment"].contains(&k.as_str()) {
                    return Err(format!(
                        "{at}.labels.{k}: set by logstream; choose another name"
                    ));
                }
                check_template(&format!("{at}.labels.{k}"), v)?;
            }
            for (k, v) in &rule.annotations {
                if !label_name_ok(k) {
                    return Err(format!(
                        "{at}.annotations: {k:?} is not a name; use [a-zA-Z_][a-zA-Z0-9_]*"
                    ));
                }
                check_template(&format!("{at}.annotations.{k}"), v)?;
            }
            for name in &rule.receivers {
                if !self.receivers.iter().any(|r| &r.name == name) {
                    return Err(format!(
                        "{at}.receivers: {name:?} is not a receiver; define it under receivers"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn label_name_ok(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Label(&'a str),
    Var(&'a str),
}

/// Splits a template into text and `{{ $var }}` / `{{ $labels.name }}` pieces.
pub fn parse_template(t: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Err("`{{` without `}}`".into());
        };
        let var = after[..j].trim();
        if let Some(name) = var.strip_prefix("$labels.") {
            if !label_name_ok(name) {
                return Err(format!("{{{{ {var} }}}}: {name:?} is not a label name"));
            }
            out.push(Piece::Label(name));
        } else if ["$value", "$line", "$rule", "$tenant", "$deployment"].contains(&var) {
            out.push(Piece::Var(var));
        } else {
            return Err(format!(
                "{{{{ {var} }}}}: unknown; use one of {}",
                TEMPLATE_VARS.join(", ")
            ));
        }
        rest = &after[j + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn check_template(at: &str, t: &str) -> Result<(), String> {
    parse_template(t)
        .map(|_| ())
        .map_err(|e| format!("{at}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> AlertsSpec {
        toml::from_str(toml_text).unwrap()
    }

    const GOOD: &str = r#"
        [[receivers]]
        name = "am"
        alertmanager = { url = "http://127.0.0.1:9093" }

        [[rules]]
        name = "panics"
        selector = { deployment = "build-*", level = "error" }
        match = { regex = "panicked at" }
        condition = { matches = { count = 3, window = "5m" } }
        for = "30s"
        labels = { severity = "page" }
        annotations = { summary = "{{ $labels.deployment }}: {{ $value }} panics, first: {{ $line }}" }
        receivers = ["am"]
    "#;

    #[test]
    fn a_good_spec_is_valid_and_its_condition_in_numbers() {
        let s = spec(GOOD);
        s.validate().unwrap();
        let r = &s.rules[0];
        assert_eq!(
            r.checked_condition("r").unwrap(),
            Condition::Matches {
                count: 3,
                window_ns: 300_000_000_000
            }
        );
        assert_eq!(r.pending_ns(), 30_000_000_000);
        assert_eq!(r.repeat_ns(), 3_600_000_000_000);
        assert_eq!(r.min_level(), Some(Level::Error));
        assert_eq!(r.match_regex().as_deref(), Some("panicked at"));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "regex = \"panicked at\"",
                "regex = \"(unclosed\"",
                "rules[0].match.regex: invalid",
            ),
            ("count = 3", "count = 0", "rules[0].condition.matches.count"),
            (
                "window = \"5m\"",
                "window = \"5 minutes\"",
                "rules[0].condition.matches.window",
            ),
            ("window = \"5m\"", "window = \"48h\"", "out of range"),
            ("for = \"30s\"", "for = \"soon\"", "rules[0].for"),
            (
                "level = \"error\"",
                "level = \"loud\"",
                "rules[0].selector.level",
            ),
            (
                "receivers = [\"am\"]",
                "receivers = [\"pager\"]",
                "\"pager\" is not a receiver",
            ),
            ("{{ $value }}", "{{ $vlaue }}", "unknown; use one of"),
            (
                "{{ $labels.deployment }}",
                "{{ $labels.9x }}",
                "not a label name",
            ),
            ("severity = \"page\"", "tenant = \"x\"", "set by logstream"),
            (
                "url = \"http://127.0.0.1:9093\"",
                "url = \"ftp://x\"",
                "not an http(s) URL",
            ),
            ("name = \"panics\"", "name = \"no spaces\"", "rules[0].name"),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let err = spec(&GOOD.replacen(from, to, 1)).validate().unwrap_err();
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    #[test]
    fn a_condition_and_a_receiver_take_exactly_one_kind() {
        let two = GOOD.replace(
            "condition = { matches = { count = 3, window = \"5m\" } }",
            "condition = { matches = { count = 3, window = \"5m\" }, silence = { for = \"1m\" } }",
        );
        assert!(
            spec(&two)
                .validate()
                .unwrap_err()
                .contains("exactly one of matches")
        );
        let none = GOOD.replace("alertmanager = { url = \"http://127.0.0.1:9093\" }", "");
        assert!(
            spec(&none)
                .validate()
                .unwrap_err()
                .contains("exactly one of alertmanager")
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = toml::from_str::<AlertsSpec>(&GOOD.replace("for = \"30s\"", "fro = \"30s\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fro"), "{e}");
    }

    #[test]
    fn templates_split_into_text_labels_and_variables() {
        assert_eq!(
            parse_template("x {{ $labels.a }}-{{$value}}").unwrap(),
            vec![
                Piece::Text("x "),
                Piece::Label("a"),
                Piece::Text("-"),
                Piece::Var("$value")
            ]
        );
        assert!(parse_template("{{ $value").is_err());
    }
}
