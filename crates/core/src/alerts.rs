//! Alert rules, silences and alert state as the log records them. Rules are evaluated by
//! the server (it has the clock and the metrics); what it decides — a rule firing or
//! resolving — is logged here, so a restart neither forgets a firing alert nor notifies
//! it twice, and the history of transitions survives.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sluice_proto::limits;

use crate::error::{CoreError, Detail};
use crate::Millis;

/// Alert rules that may exist.
pub const ALERT_RULES_MAX: usize = 1_000;
/// Silences that may exist at once (expired ones are dropped when a new one is set).
pub const SILENCES_MAX: usize = 1_000;
/// Notifiers per rule.
pub const NOTIFIERS_MAX: usize = 10;
/// Transitions kept in the alert history (the oldest go first).
pub const ALERT_HISTORY_LEN_MAX: usize = 1_000;
/// How long a condition may have to hold before firing, and how long a silence may last.
pub const ALERT_FOR_MS_MAX: u64 = 24 * 3_600_000;
pub const SILENCE_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// URLs of notifiers, secrets, and free text (silence comments).
pub const URL_BYTES_MAX: usize = 2_048;
pub const SECRET_BYTES_MAX: usize = 256;
pub const COMMENT_BYTES_MAX: usize = 1_024;

/// What a rule watches, per queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertMetric {
    /// Ready jobs now.
    Depth,
    /// Dead jobs now.
    Dead,
    /// Age of the oldest ready job, in ms.
    OldestReadyMs,
    /// p95 wait (due to leased) over the last minute, in ms.
    WaitP95Ms,
    /// p95 run time over the last minute, in ms.
    RunP95Ms,
    /// Failed or expired attempts over all finished ones in the last minute (0 to 1).
    FailureRate,
    /// Jobs that succeeded in the last minute.
    ThroughputPerMin,
}

impl AlertMetric {
    pub const ALL: [AlertMetric; 7] = [
        AlertMetric::Depth,
        AlertMetric::Dead,
        AlertMetric::OldestReadyMs,
        AlertMetric::WaitP95Ms,
        AlertMetric::RunP95Ms,
        AlertMetric::FailureRate,
        AlertMetric::ThroughputPerMin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::Depth => "depth",
            AlertMetric::Dead => "dead",
            AlertMetric::OldestReadyMs => "oldest_ready_ms",
            AlertMetric::WaitP95Ms => "wait_p95_ms",
            AlertMetric::RunP95Ms => "run_p95_ms",
            AlertMetric::FailureRate => "failure_rate",
            AlertMetric::ThroughputPerMin => "throughput_per_min",
        }
    }

    pub fn parse(text: &str) -> Option<AlertMetric> {
        AlertMetric::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    Above,
    Below,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::Below => value < threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::Below => "<",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Critical]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Where a rule's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notifier {
    /// A JSON POST; with a secret, signed: `X-Sluice-Signature: sha256=<hex HMAC>`.
    Webhook { url: String, secret: Option<String> },
    /// A Slack-compatible incoming webhook (`{"text": ...}`).
    Slack { url: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub name: String,
    pub queue: String,
    pub metric: AlertMetric,
    pub comparison: Comparison,
    pub threshold: f64,
    /// The condition must hold this long (each evaluation in between) before it fires.
    pub for_ms: u64,
    pub severity: Severity,
    pub notifiers: Vec<Notifier>,
}

/// Mutes notifications of matching alerts until `until` (transitions are still logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// `None` matches every rule.
    pub rule: Option<String>,
    /// `None` matches every queue.
    pub queue: Option<String>,
    pub created_at: Millis,
    pub until: Millis,
    pub comment: String,
}

impl Silence {
    pub fn matches(&self, rule: &AlertRule, now: Millis) -> bool {
        now < self.until
            && self.rule.as_ref().is_none_or(|r| *r == rule.name)
            && self.queue.as_ref().is_none_or(|q| *q == rule.queue)
    }
}

/// A rule that fired or resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTransition {
    pub at: Millis,
    pub rule: String,
    pub firing: bool,
    pub value: f64,
    /// Whether a silence muted its notifications.
    pub silenced: bool,
}

/// A rule and whether it fires now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub rule: AlertRule,
    pub firing_since: Option<Millis>,
    /// The value at the last transition.
    pub value: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    pub rules: BTreeMap<String, RuleState>,
    pub silences: BTreeMap<String, Silence>,
    pub history: VecDeque<AlertTransition>,
}

fn detail(path: &str, message: impl Into<String>) -> Detail {
    Detail {
        path: path.into(),
        message: message.into(),
    }
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= URL_BYTES_MAX
}

impl AlertRule {
    /// What is wrong with the rule, each with its field.
    pub fn check(&self) -> Vec<Detail> {
        let mut details = Vec::new();
        if !limits::is_valid_name(&self.name, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(detail("name", "1 to 128 bytes of A-Z a-z 0-9 _ . : -"));
        }
        if !limits::is_valid_name(&self.queue, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(detail("queue", "not a valid queue name"));
        }
        if !self.threshold.is_finite() {
            details.push(detail("threshold", "must be a finite number"));
        }
        if self.for_ms > ALERT_FOR_MS_MAX {
            details.push(detail("for_ms", format!("at most {ALERT_FOR_MS_MAX}")));
        }
        if self.notifiers.len() > NOTIFIERS_MAX {
            details.push(detail("notifiers", format!("at most {NOTIFIERS_MAX}")));
        }
        for (i, notifier) in self.notifiers.iter().enumerate() {
            let (url, secret) = match notifier {
                Notifier::Webhook { url, secret } => (url, secret.as_ref()),
                Notifier::Slack { url } => (url, None),
            };
            if !is_http_url(url) {
                details.push(detail(
                    &format!("notifiers[{i}].url"),
                    format!("an http:// or https:// URL of at most {URL_BYTES_MAX} bytes"),
                ));
            }
            if secret.is_some_and(|s| s.is_empty() || s.len() > SECRET_BYTES_MAX) {
                details.push(detail(
                    &format!("notifiers[{i}].secret"),
                    format!("1 to {SECRET_BYTES_MAX} bytes"),
                ));
            }
        }
        details
    }
}

impl Silence {
    pub fn check(&self, now: Millis) -> Vec<Detail> {
        let mut details = Vec::new();
        if !limits::is_valid_name(&self.id, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(detail("id", "1 to 128 bytes of A-Z a-z 0-9 _ . : -"));
        }
        let longest = now.saturating_add(SILENCE_MS_MAX as Millis);
        if self.until <= now || self.until > longest {
            details.push(detail(
                "until",
                format!("must be in the future, at most {SILENCE_MS_MAX} ms ahead"),
            ));
        }
        if self.comment.len() > COMMENT_BYTES_MAX {
            details.push(detail(
                "comment",
                format!("at most {COMMENT_BYTES_MAX} bytes"),
            ));
        }
        details
    }
}

impl Alerts {
    pub fn set_rule(&mut self, rule: &AlertRule) {
        let previous = self.rules.remove(&rule.name);
        // Replacing a rule keeps its state only if it watches the same thing the same way.
        let same = previous.as_ref().is_some_and(|p| {
            p.rule.queue == rule.queue
                && p.rule.metric == rule.metric
                && p.rule.comparison == rule.comparison
                && p.rule.threshold == rule.threshold
        });
        let (firing_since, value) = match previous {
            Some(p) if same => (p.firing_since, p.value),
            _ => (None, None),
        };
        self.rules.insert(
            rule.name.clone(),
            RuleState {
                rule: rule.clone(),
                firing_since,
                value,
            },
        );
    }

    pub fn set_silence(&mut self, at: Millis, silence: &Silence) {
        self.silences.retain(|_, s| s.until > at);
        self.silences.insert(silence.id.clone(), silence.clone());
    }

    /// Applies a transition; an unknown rule (removed since) only enters the history.
    pub fn changed(&mut self, transition: &AlertTransition) {
        if let Some(state) = self.rules.get_mut(&transition.rule) {
            state.firing_since = transition.firing.then_some(transition.at);
            state.value = Some(transition.value);
        }
        if self.history.len() >= ALERT_HISTORY_LEN_MAX {
            self.history.pop_front();
        }
        self.history.push_back(transition.clone());
    }

    pub fn silenced(&self, rule: &AlertRule, now: Millis) -> bool {
        self.silences.values().any(|s| s.matches(rule, now))
    }

    pub fn rule_count_error(&self, name: &str) -> Option<CoreError> {
        (!self.rules.contains_key(name) && self.rules.len() >= ALERT_RULES_MAX).then(|| {
            CoreError::new(
                crate::error::ErrorKind::Limit,
                "too_many_alert_rules",
                format!("at most {ALERT_RULES_MAX} alert rules may exist"),
            )
        })
    }
}
