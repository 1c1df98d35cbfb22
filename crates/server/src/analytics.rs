//! The history and insights endpoints: a queue's samples from the history store, and what
//! `insights` makes of them (trends, anomalies, forecasts, backlog, worker sizing,
//! health), plus the server-wide health score.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use sluice_core::{JobState, Millis, State};
use sluice_proto::{self as proto, rfc3339};

use crate::api::{ApiQuery, AppState};
use crate::broker::system_now_ms;
use crate::error::ApiError;
use crate::history::{Reader, Sample, COARSE_KEEP_MS, FINE_KEEP_MS};
use crate::insights::{self, AnomalyConfig, HealthInputs, Series};

/// Points one history answer may hold (a day of 10 s samples, a month of 5 min ones).
pub const HISTORY_POINTS_MAX: u64 = 8_640;
/// The longest window insights look at: all the 5-minute history.
pub const INSIGHTS_WINDOW_MS_MAX: u64 = COARSE_KEEP_MS as u64;
pub const INSIGHTS_WINDOW_MS_DEFAULT: u64 = 3_600_000;
/// The p95 wait a queue is judged against when the request names none.
pub const WAIT_TARGET_MS_DEFAULT: u64 = 1_000;
/// Workers the sizing model may recommend at most.
const RECOMMEND_WORKERS_MAX: u32 = 100_000;
/// Anomalies this recent count against a queue's health.
const RECENT_ANOMALY_MS: Millis = 10 * 60_000;
/// Anomalies one answer lists at most (the newest).
const ANOMALIES_LEN_MAX: usize = 100;
/// History behind the current arrival and throughput rates.
const RATE_WINDOW_MS: Millis = 5 * 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    resolution: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightsQuery {
    window_ms: Option<u64>,
    wait_target_ms: Option<u64>,
    horizon_ms: Option<u64>,
    depth_threshold: Option<u64>,
}

fn queue_missing(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("queue {name} not found"),
    )
}

/// Reads `queue`'s samples (or every queue's) off the runtime.
async fn read(
    reader: Reader,
    queue: Option<String>,
    from_ms: Millis,
    to_ms: Millis,
) -> Result<rustc_hash::FxHashMap<String, Vec<(Millis, Sample)>>, ApiError> {
    tokio::task::spawn_blocking(move || match queue {
        Some(queue) => {
            let samples = reader.read(&queue, from_ms, to_ms)?;
            Ok(std::iter::once((queue, samples)).collect())
        }
        None => reader.read_all(from_ms, to_ms),
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "history_unreadable",
            format!("cannot read the metric history: {e}"),
        )
    })
}

/// One sample per step over `[from_ms, to_ms)`, zeros where none was written.
fn dense(
    samples: &[(Millis, Sample)],
    from_ms: Millis,
    to_ms: Millis,
    step_ms: Millis,
) -> Vec<(Millis, Sample)> {
    let mut out = Vec::new();
    let mut given = samples.iter().peekable();
    let mut at = from_ms;
    while at < to_ms {
        while given.peek().is_some_and(|(t, _)| *t < at) {
            given.next();
        }
        let sample = match given.peek() {
            Some((t, s)) if *t == at => *s,
            _ => Sample::default(),
        };
        out.push((at, sample));
        at += step_ms;
    }
    out
}

/// `[from, to)` aligned to the step: the last complete step ends at or before `to`.
fn aligned(from_ms: Millis, to_ms: Millis, step_ms: Millis) -> (Millis, Millis) {
    let to = to_ms - to_ms.rem_euclid(step_ms);
    let from = from_ms - from_ms.rem_euclid(step_ms);
    (from, to)
}

#[utoipa::path(get, path = "/v1/queues/{queue}/history", tag = "metrics", params(("queue" = String, Path, description = "Queue name", pattern = "^[A-Za-z0-9_.:-]{1,128}$"), ("resolution" = Option<String>, Query, description = "`10s` (default; kept 24 h) or `5m` (kept 30 days)."), ("from" = Option<String>, Query, description = "RFC 3339; default `to` minus an hour (10s) or a day (5m)."), ("to" = Option<String>, Query, description = "RFC 3339; default now.")), responses((status = 200, body = proto::QueueHistory), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse)))]
pub async fn queue_history(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<proto::QueueHistory>, ApiError> {
    let (resolution_ms, from, to, points) = history(&app, Some(name.clone()), query).await?;
    Ok(Json(proto::QueueHistory {
        queue: name,
        resolution_ms,
        from,
        to,
        points,
    }))
}

#[utoipa::path(get, path = "/v1/history", tag = "metrics", params(("resolution" = Option<String>, Query, description = "`10s` (default; kept 24 h) or `5m` (kept 30 days)."), ("from" = Option<String>, Query, description = "RFC 3339; default `to` minus an hour (10s) or a day (5m)."), ("to" = Option<String>, Query, description = "RFC 3339; default now.")), responses((status = 200, body = proto::ServerHistory), (status = 400, description = "bad input", body = proto::ErrorResponse)))]
pub async fn server_history(
    app: axum::extract::State<AppState>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<proto::ServerHistory>, ApiError> {
    let (resolution_ms, from, to, points) = history(&app, None, query).await?;
    Ok(Json(proto::ServerHistory {
        resolution_ms,
        from,
        to,
        points,
    }))
}

/// The history of one queue, or of all summed: resolution, from, to and the points.
async fn history(
    app: &AppState,
    queue: Option<String>,
    query: HistoryQuery,
) -> Result<(u64, String, String, Vec<proto::HistoryPoint>), ApiError> {
    let broker = app.broker()?;
    let now = system_now_ms();
    let (reader, default_span_ms) = {
        let history = broker.history.lock();
        match query.resolution.as_deref().unwrap_or("10s") {
            "10s" => (history.fine.reader(), 3_600_000),
            "5m" => (history.coarse.reader(), 24 * 3_600_000),
            _ => return Err(ApiError::bad_input("resolution", "10s or 5m")),
        }
    };
    let to_ms = match &query.to {
        Some(text) => parse_time(text, "to")?,
        None => now,
    };
    let from_ms = match &query.from {
        Some(text) => parse_time(text, "from")?,
        None => to_ms - default_span_ms,
    };
    let step_ms = reader.step_ms;
    let (from_ms, to_ms) = aligned(from_ms, to_ms, step_ms);
    if from_ms >= to_ms {
        return Err(ApiError::bad_input(
            "from",
            "must be before to by at least one step",
        ));
    }
    if (to_ms - from_ms) / step_ms > HISTORY_POINTS_MAX as Millis {
        return Err(ApiError::bad_input(
            "from",
            format!("at most {HISTORY_POINTS_MAX} points per answer"),
        ));
    }
    let samples = match queue {
        Some(name) => {
            let known = broker.read(|s, _| Ok(s.queue_id(&name).is_some())).await?;
            if !known {
                return Err(queue_missing(&name));
            }
            let mut samples = read(reader, Some(name.clone()), from_ms, to_ms).await?;
            samples.remove(&name).unwrap_or_default()
        }
        None => tokio::task::spawn_blocking(move || reader.sum_all(from_ms, to_ms))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(|e: std::io::Error| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "history_unreadable",
                    format!("cannot read the metric history: {e}"),
                )
            })?
            .into_iter()
            .collect(),
    };
    let points = dense(&samples, from_ms, to_ms, step_ms)
        .into_iter()
        .map(|(at, s)| proto::HistoryPoint {
            at: rfc3339::format_ms(at),
            ready: u64::from(s.ready),
            leased: u64::from(s.leased),
            enqueued: u64::from(s.enqueued),
            succeeded: u64::from(s.succeeded),
            failed: u64::from(s.failed),
            wait_p95_ms: s.wait_p95_ms.map(u64::from),
            run_p95_ms: s.run_p95_ms.map(u64::from),
            scheduled: u64::from(s.scheduled),
            retrying: u64::from(s.retrying),
            dead: u64::from(s.dead),
        })
        .collect();
    Ok((
        step_ms as u64,
        rfc3339::format_ms(from_ms),
        rfc3339::format_ms(to_ms),
        points,
    ))
}

fn parse_time(text: &str, path: &str) -> Result<Millis, ApiError> {
    rfc3339::parse_ms(text).ok_or_else(|| ApiError::bad_input(path, "not an RFC 3339 time"))
}

/// The metrics insights looks at, each as a series over the window.
struct Metrics {
    step_ms: Millis,
    start_ms: Millis,
    depth: Vec<Option<f64>>,
    arrival_per_s: Vec<Option<f64>>,
    throughput_per_s: Vec<Option<f64>>,
    wait_p95_ms: Vec<Option<f64>>,
    failure_rate: Vec<Option<f64>>,
    failed: u64,
    finished: u64,
}

impl Metrics {
    /// Queue `name`'s metrics over `[from_ms, to_ms)` from what `samples` read.
    fn of(
        samples: &mut rustc_hash::FxHashMap<String, Vec<(Millis, Sample)>>,
        name: &str,
        from_ms: Millis,
        to_ms: Millis,
        step_ms: Millis,
    ) -> Metrics {
        let points = dense(
            &samples.remove(name).unwrap_or_default(),
            from_ms,
            to_ms,
            step_ms,
        );
        Metrics::from_samples(&points, from_ms, step_ms)
    }

    fn from_samples(points: &[(Millis, Sample)], start_ms: Millis, step_ms: Millis) -> Metrics {
        let step_s = step_ms as f64 / 1_000.0;
        let mut metrics = Metrics {
            step_ms,
            start_ms,
            depth: Vec::with_capacity(points.len()),
            arrival_per_s: Vec::with_capacity(points.len()),
            throughput_per_s: Vec::with_capacity(points.len()),
            wait_p95_ms: Vec::with_capacity(points.len()),
            failure_rate: Vec::with_capacity(points.len()),
            failed: 0,
            finished: 0,
        };
        for (_, s) in points {
            metrics.depth.push(Some(f64::from(s.ready)));
            metrics
                .arrival_per_s
                .push(Some(f64::from(s.enqueued) / step_s));
            metrics
                .throughput_per_s
                .push(Some(f64::from(s.succeeded) / step_s));
            metrics.wait_p95_ms.push(s.wait_p95_ms.map(f64::from));
            let finished = u64::from(s.succeeded) + u64::from(s.failed);
            metrics
                .failure_rate
                .push((finished > 0).then(|| f64::from(s.failed) / finished as f64));
            metrics.failed += u64::from(s.failed);
            metrics.finished += finished;
        }
        metrics
    }

    fn series(&self, values: &[Option<f64>]) -> Series {
        Series {
            start_ms: self.start_ms,
            step_ms: self.step_ms,
            values: values.to_vec(),
        }
    }

    fn all(&self) -> [(&'static str, &[Option<f64>]); 5] {
        [
            ("depth", &self.depth),
            ("arrival_per_s", &self.arrival_per_s),
            ("throughput_per_s", &self.throughput_per_s),
            ("wait_p95_ms", &self.wait_p95_ms),
            ("failure_rate", &self.failure_rate),
        ]
    }

    /// The mean of `values` over the last `span_ms` of the window.
    fn recent_mean(&self, values: &[Option<f64>], span_ms: Millis) -> f64 {
        let len = usize::try_from(span_ms / self.step_ms).unwrap_or(1).max(1);
        let tail: Vec<f64> = values.iter().rev().take(len).flatten().copied().collect();
        if tail.is_empty() {
            0.0
        } else {
            tail.iter().sum::<f64>() / tail.len() as f64
        }
    }
}

/// What the live state and metrics say about a queue now.
struct Now {
    ready: u64,
    paused: bool,
    oldest_ready_age_ms: Option<u64>,
    wait_p95_ms: Option<u64>,
    run_p50_ms: Option<u64>,
}

fn queue_now(
    state: &State,
    metrics: &crate::metrics::Metrics,
    name: &str,
    now: Millis,
) -> Option<Now> {
    let id = state.queue_id(name)?;
    let queue = state.queue_by_id(id)?;
    let recent = metrics.recent(id, now);
    Some(Now {
        ready: queue.count(JobState::Ready) as u64,
        paused: queue.paused,
        oldest_ready_age_ms: (queue.count(JobState::Ready) > 0)
            .then(|| state.oldest_ready_age_ms(queue, now)),
        wait_p95_ms: recent.wait_p95_ms,
        run_p50_ms: recent.run_p50_ms,
    })
}

fn anomalies_of(metrics: &Metrics) -> Vec<(&'static str, insights::Anomaly)> {
    let config = AnomalyConfig::default();
    let mut found: Vec<(&'static str, insights::Anomaly)> = metrics
        .all()
        .into_iter()
        .flat_map(|(name, values)| {
            insights::anomalies(&metrics.series(values), &config)
                .into_iter()
                .map(move |a| (name, a))
        })
        .collect();
    found.sort_by_key(|(_, a)| a.at_ms);
    found
}

/// What a queue's health takes from its history over the window.
#[derive(Debug, Clone)]
struct FromHistory {
    failed: u64,
    finished: u64,
    backlog_trend: Option<insights::Direction>,
    anomalies_at_ms: Vec<Millis>,
}

impl FromHistory {
    fn of(metrics: &Metrics, anomalies: &[(&'static str, insights::Anomaly)]) -> FromHistory {
        FromHistory {
            failed: metrics.failed,
            finished: metrics.finished,
            backlog_trend: insights::trend(&metrics.series(&metrics.depth)).map(|t| t.direction),
            anomalies_at_ms: anomalies.iter().map(|(_, a)| a.at_ms).collect(),
        }
    }
}

fn health_of(
    metrics: &Metrics,
    now: &Now,
    anomalies: &[(&'static str, insights::Anomaly)],
    wait_target_ms: u64,
    at_ms: Millis,
) -> insights::Health {
    health_from(
        &FromHistory::of(metrics, anomalies),
        now,
        wait_target_ms,
        at_ms,
    )
}

fn health_from(
    history: &FromHistory,
    now: &Now,
    wait_target_ms: u64,
    at_ms: Millis,
) -> insights::Health {
    insights::health(&HealthInputs {
        failure_rate: (history.finished > 0)
            .then(|| history.failed as f64 / history.finished as f64),
        wait_p95_ms: now.wait_p95_ms,
        wait_target_ms,
        backlog_trend: history.backlog_trend,
        oldest_ready_age_ms: now.oldest_ready_age_ms,
        anomalies_len: history
            .anomalies_at_ms
            .iter()
            .filter(|&&at| at >= at_ms - RECENT_ANOMALY_MS)
            .count(),
        paused: now.paused,
    })
}

/// What each queue's history says over a window, by queue; queues not in it had no
/// samples in the window.
type HistoryHealth = rustc_hash::FxHashMap<String, FromHistory>;

/// The window a history read covered and the last sample written when it was made.
type HealthKey = (Millis, Millis, Option<Millis>);

/// What `GET /v1/health` read from every queue's history, and for which window (aligned
/// to the 10 s step) and last sample written. When either moves on by one step at most,
/// requests are answered from it while one task reads the history again: the history
/// part of the health is then at most one sample behind. An older read is not used: the
/// request waits for a new one. One read at a time (`HealthCache::reading`), so that
/// requests arriving together wait for one read rather than each making one.
#[derive(Default)]
pub struct HealthCache {
    read: parking_lot::Mutex<Option<(HealthKey, Arc<HistoryHealth>)>>,
    refreshing: std::sync::atomic::AtomicBool,
    reading: tokio::sync::Mutex<()>,
}

impl HealthCache {
    /// The last read if it is for `key`, or for the window one step before.
    fn usable(&self, key: HealthKey, step_ms: Millis) -> Option<(bool, Arc<HistoryHealth>)> {
        let read = self.read.lock();
        let (at, read) = read.as_ref()?;
        if *at == key {
            Some((true, read.clone()))
        } else if at.1 + step_ms >= key.1 {
            Some((false, read.clone()))
        } else {
            None
        }
    }

    /// Reads the history for `key` unless a read for it is there once this request's
    /// turn comes.
    async fn read_now(
        &self,
        reader: Reader,
        key: HealthKey,
    ) -> Result<Arc<HistoryHealth>, ApiError> {
        let _turn = self.reading.lock().await;
        if let Some((at, read)) = self.read.lock().as_ref() {
            if *at == key {
                return Ok(read.clone());
            }
        }
        match history_health(reader, key.0, key.1).await {
            Ok(read) => {
                let read = Arc::new(read);
                *self.read.lock() = Some((key, read.clone()));
                Ok(read)
            }
            Err(error) => {
                // Not answered from an ever older read: the next request tries again.
                *self.read.lock() = None;
                Err(error)
            }
        }
    }
}

/// Reads every queue's history over `[from_ms, to_ms)` and sums up what health takes.
async fn history_health(
    reader: Reader,
    from_ms: Millis,
    to_ms: Millis,
) -> Result<HistoryHealth, ApiError> {
    let step_ms = reader.step_ms;
    let mut samples = read(reader, None, from_ms, to_ms).await?;
    tokio::task::spawn_blocking(move || {
        let names: Vec<String> = samples.keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let metrics = Metrics::of(&mut samples, &name, from_ms, to_ms, step_ms);
                let found = anomalies_of(&metrics);
                let history = FromHistory::of(&metrics, &found);
                (name, history)
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

fn health_view(health: insights::Health) -> proto::HealthInfo {
    proto::HealthInfo {
        score: health.score,
        components: health
            .components
            .into_iter()
            .map(|c| proto::HealthComponentInfo {
                name: c.name.to_owned(),
                score: c.score,
                weight: c.weight,
                detail: c.detail,
            })
            .collect(),
    }
}

/// The resolution for a window: 10 s samples while they cover it, else 5 min.
fn reader_for(broker: &crate::broker::Broker, window_ms: u64) -> Reader {
    let history = broker.history.lock();
    if window_ms <= FINE_KEEP_MS as u64 {
        history.fine.reader()
    } else {
        history.coarse.reader()
    }
}

#[utoipa::path(get, path = "/v1/queues/{queue}/insights", tag = "metrics", params(("queue" = String, Path, description = "Queue name", pattern = "^[A-Za-z0-9_.:-]{1,128}$"), ("window_ms" = Option<u64>, Query, description = "History looked at: default 3,600,000 (an hour), at most 30 days; up to a day uses 10 s samples, beyond 5 min ones.", minimum = 60000, maximum = 2592000000u64), ("wait_target_ms" = Option<u64>, Query, description = "The p95 wait the queue should keep under (health, worker sizing); default 1000."), ("horizon_ms" = Option<u64>, Query, description = "How far to forecast; default a quarter of the window, at most the window."), ("depth_threshold" = Option<u64>, Query, description = "Report when the forecast depth first reaches this.")), responses((status = 200, body = proto::QueueInsights), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse)))]
pub async fn queue_insights(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<InsightsQuery>,
) -> Result<Json<proto::QueueInsights>, ApiError> {
    let broker = app.broker()?;
    let window_ms = query.window_ms.unwrap_or(INSIGHTS_WINDOW_MS_DEFAULT);
    if !(60_000..=INSIGHTS_WINDOW_MS_MAX).contains(&window_ms) {
        return Err(ApiError::bad_input(
            "window_ms",
            format!("must be 60000 to {INSIGHTS_WINDOW_MS_MAX}"),
        ));
    }
    let horizon_ms = query.horizon_ms.unwrap_or(window_ms / 4);
    if horizon_ms == 0 || horizon_ms > window_ms {
        return Err(ApiError::bad_input("horizon_ms", "must be 1 to window_ms"));
    }
    let wait_target_ms = query
        .wait_target_ms
        .unwrap_or(WAIT_TARGET_MS_DEFAULT)
        .max(1);
    let reader = reader_for(broker, window_ms);
    let step_ms = reader.step_ms;
    let at_ms = system_now_ms();
    let (from_ms, to_ms) = aligned(at_ms - window_ms as Millis, at_ms, step_ms);
    let now = broker
        .read_with_metrics(|s, m, now| Ok(queue_now(s, m, &name, now)))
        .await?
        .ok_or_else(|| queue_missing(&name))?;
    let mut samples = read(reader, Some(name.clone()), from_ms, to_ms).await?;
    let metrics = Metrics::of(&mut samples, &name, from_ms, to_ms, step_ms);

    let trends = metrics
        .all()
        .into_iter()
        .filter_map(|(metric, values)| {
            let trend = insights::trend(&metrics.series(values))?;
            Some(proto::TrendInfo {
                metric: metric.to_owned(),
                slope_per_hour: trend.slope_per_hour,
                r2: trend.r2,
                direction: trend.direction.as_str().to_owned(),
                relative_change: trend.relative_change,
                summary: trend.summary,
            })
        })
        .collect();
    let found = anomalies_of(&metrics);
    let anomalies = found
        .iter()
        .rev()
        .take(ANOMALIES_LEN_MAX)
        .rev()
        .map(|(metric, a)| proto::AnomalyInfo {
            metric: (*metric).to_owned(),
            at: rfc3339::format_ms(a.at_ms),
            value: a.value,
            expected: a.expected,
            detector: a.detector.as_str().to_owned(),
            score: a.score,
            above: a.above,
        })
        .collect();
    // A daily season only shows in a window of two days or more.
    let day_steps = usize::try_from(86_400_000 / step_ms).unwrap_or(usize::MAX);
    let season = (window_ms >= 2 * 86_400_000).then_some(day_steps);
    let horizon_len = usize::try_from(horizon_ms as Millis / step_ms)
        .unwrap_or(1)
        .clamp(1, HISTORY_POINTS_MAX as usize);
    let mut depth_forecast = None;
    let forecasts = [
        ("depth", &metrics.depth),
        ("arrival_per_s", &metrics.arrival_per_s),
    ]
    .into_iter()
    .filter_map(|(metric, values)| {
        let forecast = insights::forecast(&metrics.series(values), horizon_len, season)?;
        let info = proto::ForecastInfo {
            metric: metric.to_owned(),
            method: forecast.method.as_str().to_owned(),
            points: forecast
                .points
                .iter()
                .map(|p| proto::ForecastPointInfo {
                    at: rfc3339::format_ms(p.at_ms),
                    value: p.value,
                    lower: p.lower,
                    upper: p.upper,
                })
                .collect(),
        };
        if metric == "depth" {
            depth_forecast = Some(forecast);
        }
        Some(info)
    })
    .collect();

    let arrival_per_s = metrics.recent_mean(&metrics.arrival_per_s, RATE_WINDOW_MS);
    let throughput_per_s = metrics.recent_mean(&metrics.throughput_per_s, RATE_WINDOW_MS);
    let drained_at = insights::time_to_drain_ms(now.ready as f64, arrival_per_s, throughput_per_s)
        .map(|ms| rfc3339::format_ms(at_ms.saturating_add(ms)));
    let threshold_at = query.depth_threshold.and_then(|threshold| {
        let forecast = depth_forecast.as_ref()?;
        insights::time_to_cross(forecast, threshold as f64, true).map(rfc3339::format_ms)
    });
    // The mean run time is taken as the median's: run times are skewed, and the
    // history keeps p95s, not means; stated in the docs.
    let recommendation = now.run_p50_ms.and_then(|run_ms| {
        let r = insights::recommend_workers(
            arrival_per_s,
            run_ms.max(1) as f64 / 1_000.0,
            wait_target_ms as f64 / 1_000.0,
            RECOMMEND_WORKERS_MAX,
        )?;
        Some(proto::RecommendationInfo {
            workers: r.workers,
            utilisation: r.utilisation,
            wait_p95_ms: (r.wait_p95_s * 1_000.0).round() as u64,
            target_wait_p95_ms: wait_target_ms,
            arrival_per_s,
            mean_run_ms: run_ms,
            model: r.model.to_owned(),
        })
    });
    let health = health_of(&metrics, &now, &found, wait_target_ms, at_ms);
    Ok(Json(proto::QueueInsights {
        queue: name,
        window_ms,
        resolution_ms: step_ms as u64,
        trends,
        anomalies,
        forecasts,
        backlog: proto::BacklogInfo {
            ready: now.ready,
            arrival_per_s,
            throughput_per_s,
            drained_at,
            threshold_at,
        },
        recommendation,
        health: health_view(health),
    }))
}

#[utoipa::path(get, path = "/v1/health", tag = "metrics", responses((status = 200, body = proto::ServerHealth)))]
pub async fn server_health(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::ServerHealth>, ApiError> {
    let broker = app.broker()?;
    let window_ms = INSIGHTS_WINDOW_MS_DEFAULT;
    let reader = reader_for(broker, window_ms);
    let step_ms = reader.step_ms;
    let at_ms = system_now_ms();
    let (from_ms, to_ms) = aligned(at_ms - window_ms as Millis, at_ms, step_ms);
    let live: Vec<(String, Now)> = broker
        .read_with_metrics(|s, m, now| {
            Ok((0..s.queue_len() as u32)
                .filter_map(|id| {
                    let name = s.queue_name(id).to_owned();
                    let live = queue_now(s, m, &name, now)?;
                    Some((name, live))
                })
                .collect())
        })
        .await?;
    // Every queue's history over the window is read once per sample written (every
    // 10 s), not per request, and off the request's path but the first (`HealthCache`):
    // on a server of 10,000 queues that read is most of the work.
    let key = (from_ms, to_ms, broker.history.lock().last_slot_ms());
    let cache = &broker.health_cache;
    let cached = match cache.usable(key, step_ms) {
        Some((current, read)) => {
            let refresh = !current
                && !cache
                    .refreshing
                    .swap(true, std::sync::atomic::Ordering::AcqRel);
            if refresh {
                let (broker, reader) = (broker.clone(), reader.clone());
                tokio::spawn(async move {
                    let cache = &broker.health_cache;
                    if let Err(error) = cache.read_now(reader, key).await {
                        tracing::warn!(?error, "cannot read the metric history for health");
                    }
                    cache
                        .refreshing
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            }
            read
        }
        None => cache.read_now(reader, key).await?,
    };
    // A queue without samples in the window, as its history reads then.
    let none = {
        let metrics = Metrics::from_samples(&dense(&[], from_ms, to_ms, step_ms), from_ms, step_ms);
        FromHistory::of(&metrics, &anomalies_of(&metrics))
    };
    let mut queues = Vec::with_capacity(live.len());
    let mut weighted = Vec::with_capacity(live.len());
    for (name, now) in live {
        let history = cached.get(&name).unwrap_or(&none);
        let health = health_from(history, &now, WAIT_TARGET_MS_DEFAULT, at_ms);
        queues.push(proto::QueueHealth {
            queue: name,
            score: health.score,
            finished: history.finished,
        });
        weighted.push((health, history.finished.max(1) as f64));
    }
    Ok(Json(proto::ServerHealth {
        score: insights::overall(&weighted),
        queues,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_fills_the_steps_nothing_was_written_for() {
        let given = [
            (
                20,
                Sample {
                    ready: 2,
                    ..Sample::default()
                },
            ),
            (
                40,
                Sample {
                    ready: 4,
                    ..Sample::default()
                },
            ),
        ];
        let got: Vec<(Millis, u32)> = dense(&given, 0, 60, 10)
            .into_iter()
            .map(|(at, s)| (at, s.ready))
            .collect();
        assert_eq!(
            got,
            vec![(0, 0), (10, 0), (20, 2), (30, 0), (40, 4), (50, 0)]
        );
        assert_eq!(aligned(15, 65, 10), (10, 60));
    }

    #[test]
    fn backlog_direction_feeds_the_health_score() {
        let points: Vec<(Millis, Sample)> = (0..60)
            .map(|i| {
                (
                    i * 10_000,
                    Sample {
                        ready: (i * 10) as u32,
                        succeeded: 5,
                        failed: 5,
                        ..Sample::default()
                    },
                )
            })
            .collect();
        let metrics = Metrics::from_samples(&points, 0, 10_000);
        let now = Now {
            ready: 600,
            paused: false,
            oldest_ready_age_ms: Some(100),
            wait_p95_ms: Some(10),
            run_p50_ms: Some(10),
        };
        let health = health_of(&metrics, &now, &[], 1_000, 600_000);
        let backlog = health
            .components
            .iter()
            .find(|c| c.name == "backlog")
            .expect("backlog component");
        assert_eq!(backlog.score, 50, "a rising backlog: {backlog:?}");
        let failures = health
            .components
            .iter()
            .find(|c| c.name == "failures")
            .expect("failures component");
        assert_eq!(failures.score, 0, "half the attempts failed");
        assert!(health.score < 70, "{health:?}");
        assert!(matches!(
            insights::trend(&metrics.series(&metrics.depth)).map(|t| t.direction),
            Some(insights::Direction::Rising)
        ));
    }
}
