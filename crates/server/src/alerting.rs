//! Alerts: the rules and silences API, the evaluation the broker's tick runs every second,
//! and the notifier that delivers. A transition is logged together with its notifications,
//! which are jobs in the `sluice.alerts` queue: delivery gets the job queue's retries
//! with backoff, its dead set, and survives restarts. The notifier is an internal worker
//! of that queue.

use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use sluice_core::alerts::{
    AlertMetric, AlertRule, AlertTransition, Comparison, Notifier, RuleState, Severity, Silence,
};
use sluice_core::{Backoff, CoreError, EnqueueSpec, JobState, Millis, State};
use sluice_proto::{self as proto, ids, limits, rfc3339};

use crate::api::{ApiJson, AppState};
use crate::broker::{system_now_ms, Broker};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The queue notifications are delivered from (a normal queue: its jobs, dead set and
/// metrics are visible like any other's).
pub const ALERTS_QUEUE: &str = "sluice.alerts";
/// How often rules are evaluated.
pub const EVALUATE_EVERY_MS: Millis = 1_000;
/// Delivery: attempts, backoff between them, the time one POST may take, and the lease
/// of a notification job (well above one POST: the notifier holds one job at a time).
const DELIVERY_ATTEMPTS: u32 = 10;
const DELIVERY_LEASE_MS: u64 = 60_000;
const DELIVERY_BACKOFF: Backoff = Backoff::Exponential {
    base_ms: 1_000,
    max_ms: 300_000,
};
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the notifier waits before looking again when it found nothing.
const NOTIFIER_IDLE: Duration = Duration::from_millis(250);

// ---- views ----------------------------------------------------------------------------

fn notifier_view(notifier: &Notifier) -> proto::NotifierSpec {
    match notifier {
        Notifier::Webhook { url, secret } => proto::NotifierSpec::Webhook {
            url: url.clone(),
            secret: None,
            keep_secret: false,
            signed: Some(secret.is_some()),
        },
        Notifier::Slack { url } => proto::NotifierSpec::Slack { url: url.clone() },
    }
}

fn rule_view(state: &State, rule_state: &RuleState, now: Millis) -> proto::AlertRuleInfo {
    let rule = &rule_state.rule;
    proto::AlertRuleInfo {
        name: rule.name.clone(),
        queue: rule.queue.clone(),
        metric: rule.metric.as_str().to_owned(),
        op: rule.comparison.as_str().to_owned(),
        threshold: rule.threshold,
        for_ms: rule.for_ms,
        severity: rule.severity.as_str().to_owned(),
        notifiers: rule.notifiers.iter().map(notifier_view).collect(),
        firing: rule_state.firing_since.is_some(),
        firing_since: rule_state.firing_since.map(rfc3339::format_ms),
        value: rule_state.value,
        silenced: state.alerts().silenced(rule, now),
    }
}

fn silence_view(silence: &Silence, now: Millis) -> proto::SilenceInfo {
    proto::SilenceInfo {
        id: silence.id.clone(),
        rule: silence.rule.clone(),
        queue: silence.queue.clone(),
        created_at: rfc3339::format_ms(silence.created_at),
        until: rfc3339::format_ms(silence.until),
        comment: silence.comment.clone(),
        active: now < silence.until,
    }
}

/// A webhook that keeps its secret: its index, its URL, which webhook to that URL it is
/// (the first, second...), and the field that asked (`keep_secret`, or `signed` sent
/// back as read).
type KeptSecrets = Vec<(usize, String, usize, &'static str)>;

fn rule_from_spec(
    name: String,
    spec: proto::AlertRuleSpec,
) -> Result<(AlertRule, KeptSecrets), ApiError> {
    let mut kept = Vec::new();
    for (i, notifier) in spec.notifiers.iter().enumerate() {
        let proto::NotifierSpec::Webhook {
            url,
            secret,
            keep_secret,
            signed,
        } = notifier
        else {
            continue;
        };
        if *keep_secret && secret.is_some() {
            return Err(ApiError::bad_input(
                format!("notifiers[{i}].keep_secret"),
                "not together with secret",
            ));
        }
        // A webhook read back as signed and sent without a secret keeps it: a rule read
        // and sent back as it is stays as it was.
        let field = match (keep_secret, signed, secret) {
            (true, _, _) => "keep_secret",
            (false, Some(true), None) => "signed",
            _ => continue,
        };
        let occurrence = spec.notifiers[..i]
            .iter()
            .filter(|n| matches!(n, proto::NotifierSpec::Webhook { url: u, .. } if u == url))
            .count();
        kept.push((i, url.clone(), occurrence, field));
    }
    let metric = AlertMetric::parse(&spec.metric).ok_or_else(|| {
        let names: Vec<&str> = AlertMetric::ALL.iter().map(|m| m.as_str()).collect();
        ApiError::bad_input("metric", format!("one of {}", names.join(", ")))
    })?;
    let comparison = match spec.op.as_str() {
        ">" => Comparison::Above,
        "<" => Comparison::Below,
        _ => return Err(ApiError::bad_input("op", "> or <")),
    };
    let severity = match spec.severity.as_deref() {
        None => Severity::Warning,
        Some(text) => Severity::parse(text)
            .ok_or_else(|| ApiError::bad_input("severity", "info, warning or critical"))?,
    };
    let rule = AlertRule {
        name,
        queue: spec.queue,
        metric,
        comparison,
        threshold: spec.threshold,
        for_ms: spec.for_ms,
        severity,
        notifiers: spec
            .notifiers
            .into_iter()
            .map(|n| match n {
                proto::NotifierSpec::Webhook { url, secret, .. } => {
                    Notifier::Webhook { url, secret }
                }
                proto::NotifierSpec::Slack { url } => Notifier::Slack { url },
            })
            .collect(),
    };
    Ok((rule, kept))
}

/// Gives the webhooks of `rule` that keep their secret the one the rule in `state`
/// has now for the same URL.
fn keep_secrets(state: &State, rule: &mut AlertRule, kept: &KeptSecrets) -> Result<(), CoreError> {
    for (i, url, occurrence, field) in kept {
        let now = state.alerts().rules.get(&rule.name).and_then(|r| {
            r.rule
                .notifiers
                .iter()
                .filter_map(|n| match n {
                    Notifier::Webhook { url: u, secret } if u == url => Some(secret.clone()),
                    _ => None,
                })
                .nth(*occurrence)
        });
        let Some(secret) = now else {
            return Err(CoreError::bad_input(
                format!("notifiers[{i}].{field}"),
                format!(
                    "rule {} has no webhook to this url to keep a secret from",
                    rule.name
                ),
            ));
        };
        if let Some(Notifier::Webhook { secret: to, .. }) = rule.notifiers.get_mut(*i) {
            *to = secret;
        }
    }
    Ok(())
}

fn rule_or_404(state: &State, name: &str, now: Millis) -> Result<proto::AlertRuleInfo, ApiError> {
    state
        .alerts()
        .rules
        .get(name)
        .map(|r| rule_view(state, r, now))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("alert rule {name} not found"),
            )
        })
}

// ---- handlers -------------------------------------------------------------------------

#[utoipa::path(put, path = "/v1/alerts/rules/{name}", tag = "alerts", params(("name" = String, Path, description = "Rule name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = proto::AlertRuleSpec, responses((status = 200, body = proto::AlertRuleInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "too many rules", body = proto::ErrorResponse)))]
pub async fn set_rule(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<proto::AlertRuleSpec>,
) -> Result<Json<proto::AlertRuleInfo>, ApiError> {
    let (mut rule, kept) = rule_from_spec(name.clone(), spec)?;
    let broker = app.broker()?;
    broker
        .execute(|s, now| {
            keep_secrets(s, &mut rule, &kept)?;
            s.set_alert_rule(now, rule)
        })
        .await?;
    Ok(Json(
        broker.read(|s, now| rule_or_404(s, &name, now)).await?,
    ))
}

#[utoipa::path(get, path = "/v1/alerts/rules/{name}", tag = "alerts", params(("name" = String, Path, description = "Rule name")), responses((status = 200, body = proto::AlertRuleInfo), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_rule(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::AlertRuleInfo>, ApiError> {
    Ok(Json(
        app.broker()?
            .read(|s, now| rule_or_404(s, &name, now))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/alerts/rules/{name}", tag = "alerts", params(("name" = String, Path, description = "Rule name")), responses((status = 204, description = "removed"), (status = 404, body = proto::ErrorResponse)))]
pub async fn remove_rule(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let broker = app.broker()?;
    broker.execute(|s, _| s.remove_alert_rule(&name)).await?;
    broker.alert_pending.lock().remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// The rules `keep` picks, as views.
async fn rules(
    app: &AppState,
    keep: fn(&RuleState) -> bool,
) -> Result<Json<proto::AlertRuleList>, ApiError> {
    let rules = app
        .broker()?
        .read(|s, now| {
            Ok(s.alerts()
                .rules
                .values()
                .filter(|r| keep(r))
                .map(|r| rule_view(s, r, now))
                .collect())
        })
        .await?;
    Ok(Json(proto::AlertRuleList { rules }))
}

#[utoipa::path(get, path = "/v1/alerts/rules", tag = "alerts", responses((status = 200, body = proto::AlertRuleList)))]
pub async fn list_rules(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::AlertRuleList>, ApiError> {
    rules(&app, |_| true).await
}

#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", responses((status = 200, description = "the rules firing now", body = proto::AlertRuleList)))]
pub async fn firing(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::AlertRuleList>, ApiError> {
    rules(&app, |r| r.firing_since.is_some()).await
}

#[utoipa::path(get, path = "/v1/alerts/history", tag = "alerts", responses((status = 200, body = proto::AlertHistory)))]
pub async fn history(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::AlertHistory>, ApiError> {
    let transitions = app
        .broker()?
        .read(|s, _| {
            Ok(s.alerts()
                .history
                .iter()
                .rev()
                .map(|t| proto::AlertTransitionInfo {
                    at: rfc3339::format_ms(t.at),
                    rule: t.rule.clone(),
                    status: if t.firing { "firing" } else { "resolved" }.to_owned(),
                    value: t.value,
                    silenced: t.silenced,
                })
                .collect())
        })
        .await?;
    Ok(Json(proto::AlertHistory { transitions }))
}

#[utoipa::path(put, path = "/v1/alerts/silences/{id}", tag = "alerts", params(("id" = String, Path, description = "Silence id", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = proto::SilenceSpec, responses((status = 200, body = proto::SilenceInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "too many silences", body = proto::ErrorResponse)))]
pub async fn set_silence(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<proto::SilenceSpec>,
) -> Result<Json<proto::SilenceInfo>, ApiError> {
    let broker = app.broker()?;
    let silence = broker
        .execute(|s, now| {
            let silence = Silence {
                id: id.clone(),
                rule: spec.rule.clone(),
                queue: spec.queue.clone(),
                created_at: now,
                until: now
                    .saturating_add(Millis::try_from(spec.duration_ms).unwrap_or(Millis::MAX)),
                comment: spec.comment.clone(),
            };
            let (event, ()) = s.set_silence(now, silence.clone())?;
            Ok((event, silence))
        })
        .await?;
    Ok(Json(silence_view(&silence, system_now_ms())))
}

#[utoipa::path(get, path = "/v1/alerts/silences", tag = "alerts", responses((status = 200, body = proto::SilenceList)))]
pub async fn list_silences(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::SilenceList>, ApiError> {
    let silences = app
        .broker()?
        .read(|s, now| {
            Ok(s.alerts()
                .silences
                .values()
                .map(|x| silence_view(x, now))
                .collect())
        })
        .await?;
    Ok(Json(proto::SilenceList { silences }))
}

#[utoipa::path(delete, path = "/v1/alerts/silences/{id}", tag = "alerts", params(("id" = String, Path, description = "Silence id")), responses((status = 204, description = "removed"), (status = 404, body = proto::ErrorResponse)))]
pub async fn remove_silence(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.broker()?.execute(|s, _| s.remove_silence(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- evaluation -----------------------------------------------------------------------

/// A rule's metric for its queue now; `None` when there is nothing to judge (no such
/// queue, no wait or run in the last minute, no finished attempt for a rate).
pub fn value_of(state: &State, metrics: &Metrics, rule: &AlertRule, now: Millis) -> Option<f64> {
    let id = state.queue_id(&rule.queue)?;
    let queue = state.queue_by_id(id)?;
    let recent = metrics.recent(id, now);
    match rule.metric {
        AlertMetric::Depth => Some(queue.count(JobState::Ready) as f64),
        AlertMetric::Dead => Some(queue.count(JobState::Dead) as f64),
        AlertMetric::OldestReadyMs => Some(state.oldest_ready_age_ms(queue, now) as f64),
        AlertMetric::WaitP95Ms => recent.wait_p95_ms.map(|v| v as f64),
        AlertMetric::RunP95Ms => recent.run_p95_ms.map(|v| v as f64),
        AlertMetric::FailureRate => {
            let finished = recent.succeeded + recent.failed;
            (finished > 0).then(|| recent.failed as f64 / finished as f64)
        }
        AlertMetric::ThroughputPerMin => Some(recent.succeeded as f64),
    }
}

/// The body a notifier sends, and the job that delivers it.
fn notification(
    rule: &AlertRule,
    transition: &AlertTransition,
    notifier: &Notifier,
) -> EnqueueSpec {
    let status = if transition.firing {
        "firing"
    } else {
        "resolved"
    };
    let (kind, url, body, signature) = match notifier {
        Notifier::Webhook { url, secret } => {
            let body = json!({
                "alert": rule.name,
                "status": status,
                "severity": rule.severity.as_str(),
                "queue": rule.queue,
                "metric": rule.metric.as_str(),
                "op": rule.comparison.as_str(),
                "threshold": rule.threshold,
                "value": transition.value,
                "at": rfc3339::format_ms(transition.at),
            })
            .to_string();
            let signature = secret.as_ref().map(|secret| sign(secret, &body));
            ("alert.webhook", url, body, signature)
        }
        Notifier::Slack { url } => {
            let icon = if transition.firing {
                ":red_circle:"
            } else {
                ":white_check_mark:"
            };
            let text = format!(
                "{icon} [{}] {} {status}: queue {} {} {} {} (now {})",
                rule.severity.as_str(),
                rule.name,
                rule.queue,
                rule.metric.as_str(),
                rule.comparison.as_str(),
                rule.threshold,
                transition.value
            );
            (
                "alert.slack",
                url,
                json!({ "text": text }).to_string(),
                None,
            )
        }
    };
    let payload = json!({ "url": url, "body": body, "signature": signature }).to_string();
    let mut spec = EnqueueSpec::new(ALERTS_QUEUE, kind, &payload);
    const _: () = assert!(DELIVERY_LEASE_MS > 3 * DELIVERY_TIMEOUT.as_millis() as u64);
    spec.max_attempts = DELIVERY_ATTEMPTS;
    spec.backoff = DELIVERY_BACKOFF;
    spec.timeout_ms = DELIVERY_LEASE_MS;
    spec
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Evaluates every rule and logs what fired or resolved, each with its notifications.
/// Errors are logged: the tick's other work goes on.
pub async fn evaluate(broker: &Broker) {
    let values: Result<Vec<(AlertRule, bool, Option<f64>)>, ApiError> = broker
        .read_with_metrics(|s, m, now| {
            Ok(s.alerts()
                .rules
                .values()
                .map(|r| {
                    (
                        r.rule.clone(),
                        r.firing_since.is_some(),
                        value_of(s, m, &r.rule, now),
                    )
                })
                .collect())
        })
        .await;
    let values = match values {
        Ok(values) => values,
        Err(error) => {
            tracing::warn!(?error, "cannot evaluate alert rules");
            return;
        }
    };
    let now = system_now_ms();
    for (rule, firing, value) in values {
        // No data (no wait in the last minute, no finished attempt) changes nothing: a
        // firing alert must not resolve because its workers stopped.
        let Some(value) = value else {
            continue;
        };
        let holds = rule.comparison.holds(value, rule.threshold);
        let due = {
            let mut pending = broker.alert_pending.lock();
            if holds {
                let since = *pending.entry(rule.name.clone()).or_insert(now);
                !firing && now - since >= Millis::try_from(rule.for_ms).unwrap_or(Millis::MAX)
            } else {
                pending.remove(&rule.name);
                firing
            }
        };
        if !due {
            continue;
        }
        let transition = broker
            .execute_all(|s, now| {
                let changes = s
                    .alerts()
                    .rules
                    .get(&rule.name)
                    .is_some_and(|r| r.firing_since.is_some() == firing);
                if !changes {
                    return Ok((Vec::new(), None));
                }
                // The notifications first: if they cannot be enqueued, nothing changes
                // (deciding the transition applies it at once).
                let mut events = Vec::new();
                if !s.alerts().silenced(&rule, now) {
                    let next = AlertTransition {
                        at: now,
                        rule: rule.name.clone(),
                        firing: !firing,
                        value,
                        silenced: false,
                    };
                    let specs: Vec<EnqueueSpec> = rule
                        .notifiers
                        .iter()
                        .map(|n| notification(&rule, &next, n))
                        .collect();
                    if !specs.is_empty() {
                        let (event, _) = s.enqueue(now, specs, true)?;
                        events.extend(event);
                    }
                }
                let (event, transition) = s.alert_changed(now, &rule.name, !firing, value);
                events.extend(event);
                Ok((events, transition))
            })
            .await;
        let transition = match transition {
            Ok(transition) => transition,
            Err(error) => {
                tracing::warn!(rule = rule.name, ?error, "cannot log an alert transition");
                continue;
            }
        };
        if let Some(t) = transition {
            tracing::info!(
                rule = rule.name,
                firing = t.firing,
                value = t.value,
                silenced = t.silenced,
                "alert {}",
                if t.firing { "firing" } else { "resolved" }
            );
        }
    }
}

// ---- delivery -------------------------------------------------------------------------

/// Delivers notification jobs until `stop` turns true: leases from `sluice.alerts`,
/// POSTs each, acks a 2xx and fails anything else (the queue retries with backoff).
pub async fn notifier(
    broker: std::sync::Arc<Broker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the alert notifier's HTTP client");
            return;
        }
    };
    let queues = vec![ALERTS_QUEUE.to_owned()];
    while !*stop.borrow() {
        // One at a time: each delivery starts within its job's lease.
        let leased = broker
            .execute(|s, now| s.lease(now, &queues, 1, Some("sluice-notifier".to_owned())))
            .await;
        let ids = match leased {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(?error, "alert notifier cannot lease");
                Vec::new()
            }
        };
        if ids.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(NOTIFIER_IDLE) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for id in ids {
            let job = broker
                .read(|s, _| Ok(s.job(id).map(|j| (j.lease_id, j.payload.to_string()))))
                .await;
            let Ok(Some((lease_id, payload))) = job else {
                continue;
            };
            let outcome = deliver(&http, &payload).await;
            let settled = match outcome {
                Ok(()) => {
                    broker
                        .execute(|s, now| Ok(s.ack(now, &[(id, lease_id)])))
                        .await
                }
                Err(error) => {
                    tracing::warn!(job = ids::encode(id), error, "alert delivery failed");
                    let input = sluice_core::FailInput {
                        id,
                        lease_id,
                        error,
                        retry_at: None,
                    };
                    broker.execute(|s, now| Ok(s.fail(now, vec![input]))).await
                }
            };
            if let Err(error) = settled {
                tracing::warn!(?error, "alert notifier cannot settle a delivery");
            }
        }
    }
}

async fn deliver(http: &reqwest::Client, payload: &str) -> Result<(), String> {
    let payload: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("bad notification: {e}"))?;
    let url = payload["url"]
        .as_str()
        .ok_or("notification without a url")?;
    let body = payload["body"].as_str().unwrap_or("{}").to_owned();
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = payload["signature"].as_str() {
        request = request.header("x-sluice-signature", signature);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!(
        "POST {url}: {status}: {}",
        limits::truncate_utf8(&text, 300)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
