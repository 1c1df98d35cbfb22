//! HTTP handlers under `/v1`: parse and check the wire form, run the command, shape replies.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::{
    Backoff as CoreBackoff, EnqueueSpec, FailInput, Job as CoreJob, JobId, Settled, State,
};
use sluice_proto::{self as proto, ids, limits, rfc3339};
use tokio::sync::watch;

use crate::broker::{Broker, Wakes};
use crate::error::{body_of, status_of, ApiError};

#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<OnceLock<Arc<Broker>>>,
    /// Turns true when the server begins to shut down: long-polls return at once.
    pub shutting_down: watch::Receiver<bool>,
}

impl AppState {
    pub fn broker(&self) -> Result<&Arc<Broker>, ApiError> {
        self.broker.get().ok_or_else(ApiError::not_ready)
    }
}

/// JSON body extractor whose errors are in the API's format, with the path of the bad
/// field (`jobs[3].queue`).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        decode_json(&bytes).map(ApiJson)
    }
}

/// A request's body, within `REQUEST_BYTES_MAX`, with errors in the API's format.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!(
                        "request bodies are limited to {} bytes",
                        limits::REQUEST_BYTES_MAX
                    ),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    rejection.body_text(),
                )
            }
        })
}

/// Parses a request body as [`ApiJson`] does. Public for the fuzz targets only.
#[doc(hidden)]
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The fast parser first; only a body that fails is parsed again to find the
    // path of the bad field.
    match serde_json::from_slice(bytes) {
        Ok(value) => return Ok(value),
        Err(error) if error.is_eof() || error.is_syntax() => {
            return Err(ApiError::bad_input("", error.to_string()))
        }
        Err(_) => {}
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_input(
            if path == "." { String::new() } else { path },
            e.inner().to_string(),
        )
    })
}

/// Query-string extractor with errors in the API's format.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_input("query", e.body_text()))
    }
}

fn parse_id(text: &str) -> Result<JobId, ApiError> {
    ids::decode(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {text} not found"),
        )
    })
}

fn parse_lease_id(text: &str, path: &str) -> Result<u64, ApiError> {
    ids::decode(text).ok_or_else(|| ApiError::bad_input(path, "not a lease id"))
}

fn parse_time(text: &str, path: &str) -> Result<i64, ApiError> {
    rfc3339::parse_ms(text).ok_or_else(|| ApiError::bad_input(path, "not an RFC 3339 time"))
}

fn core_backoff(backoff: proto::Backoff) -> CoreBackoff {
    match backoff {
        proto::Backoff::Exponential { base_ms, max_ms } => {
            CoreBackoff::Exponential { base_ms, max_ms }
        }
        proto::Backoff::Fixed { delay_ms } => CoreBackoff::Fixed { delay_ms },
    }
}

fn proto_backoff(backoff: CoreBackoff) -> proto::Backoff {
    match backoff {
        CoreBackoff::Exponential { base_ms, max_ms } => {
            proto::Backoff::Exponential { base_ms, max_ms }
        }
        CoreBackoff::Fixed { delay_ms } => proto::Backoff::Fixed { delay_ms },
    }
}

/// Wire spec to core spec: what needs the wire form (sizes, times) is checked here; the
/// rules of the job model are checked by the core. Public for the fuzz targets only.
#[doc(hidden)]
pub fn to_spec(spec: proto::JobSpec, path: &str, now: i64) -> Result<EnqueueSpec, ApiError> {
    let payload_len = spec.payload.get().len();
    if payload_len > limits::PAYLOAD_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "payload is {payload_len} bytes; the limit is {}",
                limits::PAYLOAD_BYTES_MAX
            ),
        )
        .with_detail(format!("{path}payload"), "too large"));
    }
    let run_at = match (&spec.run_at, spec.delay_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_input(
                format!("{path}run_at"),
                "give run_at or delay_ms, not both",
            ))
        }
        (Some(text), None) => Some(parse_time(text, &format!("{path}run_at"))?),
        (None, Some(delay_ms)) => {
            if delay_ms > limits::DELAY_MS_MAX {
                return Err(ApiError::bad_input(
                    format!("{path}delay_ms"),
                    format!("must be at most {}", limits::DELAY_MS_MAX),
                ));
            }
            Some(now.saturating_add(delay_ms as i64))
        }
        (None, None) => None,
    };
    let mut core = EnqueueSpec::new(&spec.queue, &spec.kind, spec.payload.get());
    core.priority = spec.priority;
    core.run_at = run_at;
    core.max_attempts = spec.max_attempts.unwrap_or(core.max_attempts);
    core.backoff = spec.backoff.map_or(core.backoff, core_backoff);
    core.timeout_ms = spec.timeout_ms.unwrap_or(core.timeout_ms);
    core.unique_key = spec.unique_key;
    core.unique_ttl_ms = spec.unique_ttl_ms.unwrap_or(core.unique_ttl_ms);
    core.tags = spec.tags;
    core.limit_key = spec.limit_key;
    Ok(core)
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap_or_else(|_| {
        // Payloads were validated as JSON on the way in; keep replies well-formed anyway.
        RawValue::from_string("null".to_owned()).unwrap_or_default()
    })
}

pub fn job_view(state: &State, job: &CoreJob) -> proto::Job {
    let extra = job.extra();
    proto::Job {
        id: ids::encode(job.id),
        queue: state.queue_name(job.queue).to_owned(),
        kind: state.kind_name(job.kind).to_owned(),
        payload: raw(&job.payload),
        state: job.state,
        priority: job.priority,
        attempts: u32::from(job.attempts),
        max_attempts: u32::from(job.max_attempts),
        backoff: proto_backoff(job.backoff),
        timeout_ms: u64::from(job.timeout_ms),
        enqueued_at: rfc3339::format_ms(job.enqueued_at()),
        run_at: rfc3339::format_ms(job.run_at),
        finished_at: (job.finished_at != 0).then(|| rfc3339::format_ms(job.finished_at)),
        lease: (job.lease_id != 0).then(|| proto::Lease {
            lease_id: ids::encode(job.lease_id),
            expires_at: rfc3339::format_ms(job.lease_expires_at),
        }),
        progress: extra.and_then(|e| e.progress.as_deref()).map(raw),
        unique_key: extra
            .and_then(|e| e.unique_key.as_deref())
            .map(str::to_owned),
        tags: extra.map_or_else(Vec::new, |e| e.tags.iter().map(|t| t.to_string()).collect()),
        limit_key: state.limit_key(job.id).map(str::to_owned),
        history: extra.map_or_else(Vec::new, |e| {
            e.history
                .iter()
                .map(|a| proto::Attempt {
                    attempt: u32::from(a.attempt),
                    leased_at: rfc3339::format_ms(a.leased_at),
                    finished_at: a.finished_at.map(rfc3339::format_ms),
                    outcome: a.outcome.map(|o| o.as_str().to_owned()),
                    error: a.error.as_deref().map(str::to_owned),
                    worker: a.worker.as_deref().map(str::to_owned),
                })
                .collect()
        }),
    }
}

fn leased_view(state: &State, job: &CoreJob) -> proto::LeasedJob {
    proto::LeasedJob {
        id: ids::encode(job.id),
        queue: state.queue_name(job.queue).to_owned(),
        kind: state.kind_name(job.kind).to_owned(),
        payload: raw(&job.payload),
        priority: job.priority,
        attempt: u32::from(job.attempts),
        max_attempts: u32::from(job.max_attempts),
        lease_id: ids::encode(job.lease_id),
        lease_expires_at: rfc3339::format_ms(job.lease_expires_at),
        enqueued_at: rfc3339::format_ms(job.enqueued_at()),
        tags: job
            .extra()
            .map_or_else(Vec::new, |e| e.tags.iter().map(|t| t.to_string()).collect()),
        timeout_ms: u64::from(job.timeout_ms),
    }
}

fn queue_view(queue: &sluice_core::Queue, now: i64) -> proto::QueueInfo {
    use sluice_proto::JobState as S;
    let count = |s| queue.count(s) as u64;
    proto::QueueInfo {
        name: queue.name.to_string(),
        paused: queue.paused,
        counts: proto::StateCounts {
            scheduled: count(S::Scheduled),
            ready: count(S::Ready),
            leased: count(S::Leased),
            succeeded: count(S::Succeeded),
            failed: count(S::Failed),
            dead: count(S::Dead),
            cancelled: count(S::Cancelled),
        },
        limits: (queue.limits != sluice_core::QueueLimits::default()
            || queue.key_limits != sluice_core::QueueLimits::default())
        .then(|| proto::QueueLimits {
            concurrency: queue.limits.concurrency,
            rate: queue.limits.rate.map(wire_rate),
            key_concurrency: queue.key_limits.concurrency,
            key_rate: queue.key_limits.rate.map(wire_rate),
        }),
        rate_tokens: queue.tokens(now),
        limit_keys: (queue.key_len() > 0).then_some(queue.key_len() as u64),
        recent: None,
    }
}

/// The queue's view with its last minute from the metrics.
fn queue_view_recent(
    state: &State,
    metrics: &crate::metrics::Metrics,
    queue: &sluice_core::Queue,
    now: i64,
) -> proto::QueueInfo {
    let mut view = queue_view(queue, now);
    if let Some(id) = state.queue_id(&queue.name) {
        let recent = metrics.recent(id, now);
        view.recent = Some(proto::QueueRecent {
            wait_p50_ms: recent.wait_p50_ms,
            wait_p95_ms: recent.wait_p95_ms,
            wait_p99_ms: recent.wait_p99_ms,
            run_p50_ms: recent.run_p50_ms,
            run_p95_ms: recent.run_p95_ms,
            run_p99_ms: recent.run_p99_ms,
            succeeded: recent.succeeded,
            failed: recent.failed,
        });
    }
    view
}

fn wire_rate(rate: sluice_core::Rate) -> proto::RateLimit {
    proto::RateLimit {
        limit: rate.limit,
        per_ms: rate.per_ms,
    }
}

fn core_rate(rate: proto::RateLimit) -> sluice_core::Rate {
    sluice_core::Rate {
        limit: rate.limit,
        per_ms: rate.per_ms,
    }
}

fn job_or_404(state: &State, id: JobId) -> Result<proto::Job, ApiError> {
    state
        .job(id)
        .map(|job| job_view(state, job))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("job {} not found", ids::encode(id)),
            )
        })
}

// ---- jobs ---------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = proto::JobSpec, responses(
    (status = 201, description = "enqueued", body = proto::EnqueueResult, links(
        ("lease" = (operation_id = "lease", description = "Lease from the job's queue.",
            request_body = json!({"queues": ["$request.body#/queue"]}))),
    )),
    (status = 200, description = "a unique key matched: the existing job", body = proto::EnqueueResult),
    (status = 400, description = "bad input", body = proto::ErrorResponse),
    (status = 413, description = "payload or body too large", body = proto::ErrorResponse),
    (status = 429, description = "queue limit", body = proto::ErrorResponse)))]
pub async fn enqueue(
    app: axum::extract::State<AppState>,
    ApiJson(spec): ApiJson<proto::JobSpec>,
) -> Result<Response, ApiError> {
    let broker = app.broker()?;
    let spec = to_spec(spec, "", crate::broker::system_now_ms())?;
    let mut results = broker
        .execute(|s, now| s.enqueue(now, vec![spec], false))
        .await?;
    let result = results
        .pop()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no result"))?;
    let status = if result.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(proto::EnqueueResult {
            id: ids::encode(result.id),
            duplicate: result.duplicate,
        }),
    )
        .into_response())
}

/// The jobs of a batch request as specs (paths `jobs[i].…`); 413 past the batch limit.
fn batch_specs(jobs: Vec<proto::JobSpec>, now: i64) -> Result<Vec<EnqueueSpec>, ApiError> {
    if jobs.len() > limits::ENQUEUE_BATCH_LEN_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} jobs in one batch; the limit is {}",
                jobs.len(),
                limits::ENQUEUE_BATCH_LEN_MAX
            ),
        )
        .with_detail("jobs", "too many"));
    }
    jobs.into_iter()
        .enumerate()
        .map(|(i, spec)| to_spec(spec, &format!("jobs[{i}]."), now))
        .collect()
}

#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = proto::EnqueueBatchRequest, responses((status = 201, description = "all enqueued (or matched by unique key)", body = proto::EnqueueBatchResponse), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 413, description = "batch, payload or body too large", body = proto::ErrorResponse)))]
pub async fn enqueue_batch(
    app: axum::extract::State<AppState>,
    ApiJson(request): ApiJson<proto::EnqueueBatchRequest>,
) -> Result<Response, ApiError> {
    let broker = app.broker()?;
    if request.jobs.is_empty() {
        return Err(ApiError::bad_input("jobs", "must hold at least one job"));
    }
    let now = crate::broker::system_now_ms();
    let specs = batch_specs(request.jobs, now)?;
    let results = broker.execute(|s, now| s.enqueue(now, specs, true)).await?;
    let jobs = results
        .into_iter()
        .map(|r| proto::EnqueueResult {
            id: ids::encode(r.id),
            duplicate: r.duplicate,
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(proto::EnqueueBatchResponse { jobs }),
    )
        .into_response())
}

fn cron_view(cron: &sluice_core::Cron) -> proto::CronInfo {
    proto::CronInfo {
        name: cron.spec.name.clone(),
        schedule: cron.spec.schedule.clone(),
        timezone: cron.spec.timezone.clone(),
        missed: cron.spec.missed.as_str().to_owned(),
        queue: cron.spec.job.queue.clone(),
        kind: cron.spec.job.kind.clone(),
        next_at: cron.next_at.map(rfc3339::format_ms),
        last_fired_at: cron.last_fired_at.map(rfc3339::format_ms),
    }
}

fn cron_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("cron schedule {name} not found"),
    )
}

#[utoipa::path(put, path = "/v1/cron/{name}", tag = "cron", params(("name" = String, Path, description = "Schedule name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = proto::CronRequest, responses((status = 200, body = proto::CronInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "too many schedules", body = proto::ErrorResponse)))]
pub async fn set_cron(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<proto::CronRequest>,
) -> Result<Json<proto::CronInfo>, ApiError> {
    let broker = app.broker()?;
    let missed = sluice_core::cron::Missed::parse(&request.missed)
        .ok_or_else(|| ApiError::bad_input("missed", "must be skip, run_once or run_all"))?;
    let now = crate::broker::system_now_ms();
    let job = to_spec(request.job, "job.", now)?;
    broker
        .execute(|s, now| {
            s.set_cron(
                now,
                &name,
                &request.schedule,
                &request.timezone,
                job,
                missed,
            )
        })
        .await?;
    broker
        .read(|s, _| {
            s.cron(&name)
                .map(|c| Json(cron_view(c)))
                .ok_or_else(|| cron_not_found(&name))
        })
        .await
}

#[utoipa::path(get, path = "/v1/cron", tag = "cron", responses((status = 200, body = proto::CronList)))]
pub async fn list_crons(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::CronList>, ApiError> {
    let schedules = app
        .broker()?
        .read(|s, _| Ok(s.crons().map(cron_view).collect()))
        .await?;
    Ok(Json(proto::CronList { schedules }))
}

#[utoipa::path(get, path = "/v1/cron/{name}", tag = "cron", params(("name" = String, Path, description = "Schedule name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 200, body = proto::CronInfo), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_cron(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::CronInfo>, ApiError> {
    app.broker()?
        .read(|s, _| {
            s.cron(&name)
                .map(|c| Json(cron_view(c)))
                .ok_or_else(|| cron_not_found(&name))
        })
        .await
}

#[utoipa::path(delete, path = "/v1/cron/{name}", tag = "cron", params(("name" = String, Path, description = "Schedule name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 204, description = "removed"), (status = 404, body = proto::ErrorResponse)))]
pub async fn remove_cron(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.broker()?.execute(|s, _| s.remove_cron(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/batches", tag = "jobs", request_body = proto::BatchRequest, responses((status = 201, description = "the batch and its jobs are enqueued", body = proto::BatchCreated), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 413, description = "batch, payload or body too large", body = proto::ErrorResponse), (status = 429, description = "queue limit", body = proto::ErrorResponse)))]
pub async fn create_batch(
    app: axum::extract::State<AppState>,
    ApiJson(request): ApiJson<proto::BatchRequest>,
) -> Result<Response, ApiError> {
    let broker = app.broker()?;
    let now = crate::broker::system_now_ms();
    let specs = batch_specs(request.jobs, now)?;
    let callback = to_spec(request.callback, "callback.", now)?;
    let (batch, jobs) = broker
        .execute(|s, now| s.enqueue_batch_with_callback(now, specs, callback))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(proto::BatchCreated {
            id: ids::encode(batch),
            jobs: jobs.into_iter().map(ids::encode).collect(),
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "jobs", params(("id" = String, Path, description = "Batch id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), responses((status = 200, body = proto::BatchInfo), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_batch(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<proto::BatchInfo>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("batch {id} not found"),
        )
    };
    let batch_id = ids::decode(&id).ok_or_else(not_found)?;
    let info = app
        .broker()?
        .read(|s, _| {
            Ok(s.batch(batch_id).map(|b| proto::BatchInfo {
                id: ids::encode(b.id),
                total: b.total,
                pending: b.pending(),
                succeeded: b.succeeded,
                dead: b.dead,
                cancelled: b.cancelled,
                created_at: rfc3339::format_ms(b.created_at),
                finished_at: b.finished_at.map(rfc3339::format_ms),
                callback_queue: b.callback_queue().to_owned(),
            }))
        })
        .await?;
    info.map(Json).ok_or_else(not_found)
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), responses((status = 200, body = proto::Job), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_job(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<proto::Job>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(app.broker()?.read(|s, _| job_or_404(s, id)).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), responses((status = 200, body = proto::Job), (status = 404, body = proto::ErrorResponse), (status = 422, description = "already finished", body = proto::ErrorResponse)))]
pub async fn cancel_job(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<proto::Job>, ApiError> {
    let id = parse_id(&id)?;
    let broker = app.broker()?;
    broker.execute(|s, now| s.cancel(now, id)).await?;
    Ok(Json(broker.read(|s, _| job_or_404(s, id)).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), responses((status = 200, body = proto::Job), (status = 404, body = proto::ErrorResponse), (status = 422, description = "not dead, cancelled or failed", body = proto::ErrorResponse)))]
pub async fn retry_job(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<proto::Job>, ApiError> {
    let id = parse_id(&id)?;
    let broker = app.broker()?;
    broker.execute(|s, now| s.retry(now, id)).await?;
    Ok(Json(broker.read(|s, _| job_or_404(s, id)).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "workers", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), request_body = proto::HeartbeatRequest, responses((status = 200, body = proto::HeartbeatResponse), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse), (status = 409, description = "stale lease", body = proto::ErrorResponse), (status = 413, description = "progress too large", body = proto::ErrorResponse)))]
pub async fn heartbeat(
    app: axum::extract::State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<proto::HeartbeatRequest>,
) -> Result<Json<proto::HeartbeatResponse>, ApiError> {
    let id = parse_id(&id)?;
    let lease_id = parse_lease_id(&request.lease_id, "lease_id")?;
    let progress = request.progress.map(|p| p.get().to_owned());
    let broker = app.broker()?;
    let (expires_at, worker) = broker
        .execute(|s, now| {
            let (event, expires_at) = s.heartbeat(now, id, lease_id, progress)?;
            let worker = s.job(id).and_then(|j| j.worker()).map(str::to_owned);
            Ok((event, (expires_at, worker)))
        })
        .await?;
    if let Some(worker) = worker {
        broker
            .workers
            .lock()
            .touch(&worker, crate::broker::system_now_ms());
    }
    Ok(Json(proto::HeartbeatResponse {
        lease_expires_at: rfc3339::format_ms(expires_at),
    }))
}

fn item_result(
    id: &str,
    result: Result<Settled, sluice_core::CoreError>,
) -> (StatusCode, proto::ItemResult) {
    match result {
        Ok(settled) => (
            StatusCode::OK,
            proto::ItemResult {
                id: id.to_owned(),
                state: Some(settled.state),
                retry_at: settled.retry_at.map(rfc3339::format_ms),
                error: None,
            },
        ),
        Err(error) => (
            status_of(error.kind),
            proto::ItemResult {
                id: id.to_owned(),
                state: None,
                retry_at: None,
                error: Some(body_of(error)),
            },
        ),
    }
}

/// A single ack/fail answers with the item's own status: 409 for a stale lease.
fn single(
    id: &str,
    mut results: Vec<Result<Settled, sluice_core::CoreError>>,
) -> Result<Json<proto::ItemResult>, ApiError> {
    match results.pop() {
        Some(Ok(settled)) => Ok(Json(item_result(id, Ok(settled)).1)),
        Some(Err(error)) => Err(error.into()),
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no result",
        )),
    }
}

#[utoipa::path(post, path = "/v1/jobs/{id}/ack", tag = "workers", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), request_body = proto::AckRequest, responses((status = 200, body = proto::ItemResult), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse), (status = 409, description = "stale lease", body = proto::ErrorResponse)))]
pub async fn ack(
    app: axum::extract::State<AppState>,
    Path(id_text): Path<String>,
    ApiJson(request): ApiJson<proto::AckRequest>,
) -> Result<Json<proto::ItemResult>, ApiError> {
    let id = parse_id(&id_text)?;
    let lease_id = parse_lease_id(&request.lease_id, "lease_id")?;
    let results = app
        .broker()?
        .execute(|s, now| Ok(s.ack(now, &[(id, lease_id)])))
        .await?;
    single(&id_text, results)
}

fn fail_input(
    id: JobId,
    lease_id: &str,
    error: String,
    retry_at: Option<&str>,
    path: &str,
) -> Result<FailInput, ApiError> {
    Ok(FailInput {
        id,
        lease_id: parse_lease_id(lease_id, &format!("{path}lease_id"))?,
        error,
        retry_at: retry_at
            .map(|t| {
                let path = format!("{path}retry_at");
                let at = parse_time(t, &path)?;
                let latest =
                    crate::broker::system_now_ms().saturating_add(limits::DELAY_MS_MAX as i64);
                if at > latest {
                    return Err(ApiError::bad_input(path, "must be at most one year ahead"));
                }
                Ok(at)
            })
            .transpose()?,
    })
}

#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "workers", params(("id" = String, Path, description = "Job id: 13 characters of Crockford base32; an unknown or malformed one is 404.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")), request_body = proto::FailRequest, responses((status = 200, body = proto::ItemResult), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse), (status = 409, description = "stale lease", body = proto::ErrorResponse)))]
pub async fn fail(
    app: axum::extract::State<AppState>,
    Path(id_text): Path<String>,
    ApiJson(request): ApiJson<proto::FailRequest>,
) -> Result<Json<proto::ItemResult>, ApiError> {
    let id = parse_id(&id_text)?;
    let input = fail_input(
        id,
        &request.lease_id,
        request.error,
        request.retry_at.as_deref(),
        "",
    )?;
    let results = app
        .broker()?
        .execute(|s, now| Ok(s.fail(now, vec![input])))
        .await?;
    single(&id_text, results)
}

fn check_batch_len(len: usize, field: &str) -> Result<(), ApiError> {
    if len > limits::ACK_BATCH_LEN_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{len} items in one batch; the limit is {}",
                limits::ACK_BATCH_LEN_MAX
            ),
        )
        .with_detail(field, "too many"));
    }
    Ok(())
}

/// The text of every item's id, whether it parsed, and the parsed inputs.
type ParsedBatch<T> = (Vec<String>, Vec<bool>, Vec<T>);

/// Parses the items of a batch ack/fail. An item whose job id does not parse is kept only
/// as its text, so it gets a 404 result of its own and one typo does not fail the batch;
/// a malformed lease id or time fails the whole request (400), as its path says.
///
/// Returns the text of every item's id, whether it parsed, and the parsed inputs.
fn parse_batch<I, T>(
    items: Vec<I>,
    mut parse: impl FnMut(usize, I) -> Result<(String, Option<T>), ApiError>,
) -> Result<ParsedBatch<T>, ApiError> {
    let mut texts = Vec::with_capacity(items.len());
    let mut parsed = Vec::with_capacity(items.len());
    let mut inputs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (text, input) = parse(i, item)?;
        texts.push(text);
        parsed.push(input.is_some());
        inputs.extend(input);
    }
    Ok((texts, parsed, inputs))
}

/// One result per item, in request order: the settled ones in turn, 404 for the others.
fn batch_results(
    texts: Vec<String>,
    parsed: Vec<bool>,
    settled: Vec<Result<Settled, sluice_core::CoreError>>,
) -> proto::BatchResultResponse {
    let mut settled = settled.into_iter();
    let results = texts
        .into_iter()
        .zip(parsed)
        .map(|(text, parsed)| {
            let result = parsed
                .then(|| settled.next())
                .flatten()
                .unwrap_or_else(|| Err(sluice_core::CoreError::not_found("job", &text)));
            item_result(&text, result).1
        })
        .collect();
    proto::BatchResultResponse { results }
}

#[utoipa::path(post, path = "/v1/ack", tag = "workers", request_body = proto::AckBatchRequest, responses((status = 200, description = "one result per item", body = proto::BatchResultResponse), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 413, description = "batch too large", body = proto::ErrorResponse)))]
pub async fn ack_batch(
    app: axum::extract::State<AppState>,
    ApiJson(request): ApiJson<proto::AckBatchRequest>,
) -> Result<Json<proto::BatchResultResponse>, ApiError> {
    check_batch_len(request.acks.len(), "acks")?;
    let (texts, parsed, items) = parse_batch(request.acks, |i, item| {
        let lease_id = parse_lease_id(&item.lease_id, &format!("acks[{i}].lease_id"))?;
        let input = ids::decode(&item.id).map(|id| (id, lease_id));
        Ok((item.id, input))
    })?;
    let settled = app
        .broker()?
        .execute(|s, now| Ok(s.ack(now, &items)))
        .await?;
    Ok(Json(batch_results(texts, parsed, settled)))
}

#[utoipa::path(post, path = "/v1/fail", tag = "workers", request_body = proto::FailBatchRequest, responses((status = 200, description = "one result per item", body = proto::BatchResultResponse), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 413, description = "batch too large", body = proto::ErrorResponse)))]
pub async fn fail_batch(
    app: axum::extract::State<AppState>,
    ApiJson(request): ApiJson<proto::FailBatchRequest>,
) -> Result<Json<proto::BatchResultResponse>, ApiError> {
    check_batch_len(request.fails.len(), "fails")?;
    let (texts, parsed, items) = parse_batch(request.fails, |i, item| {
        let input = match ids::decode(&item.id) {
            Some(id) => Some(fail_input(
                id,
                &item.lease_id,
                item.error,
                item.retry_at.as_deref(),
                &format!("fails[{i}]."),
            )?),
            None => None,
        };
        Ok((item.id, input))
    })?;
    let settled = app
        .broker()?
        .execute(|s, now| Ok(s.fail(now, items)))
        .await?;
    Ok(Json(batch_results(texts, parsed, settled)))
}

/// The lease request's `order` and `weights`, checked.
fn queue_order(request: &proto::LeaseRequest) -> Result<sluice_core::QueueOrder, ApiError> {
    let weighted = match request.order.as_deref() {
        None | Some("priority") => false,
        Some("strict") => {
            if !request.weights.is_empty() {
                return Err(ApiError::bad_input(
                    "weights",
                    "weights go with order: weighted",
                ));
            }
            return Ok(sluice_core::QueueOrder::Strict);
        }
        Some("weighted") => true,
        Some(_) => {
            return Err(ApiError::bad_input(
                "order",
                "must be priority, strict or weighted",
            ))
        }
    };
    if !weighted {
        if !request.weights.is_empty() {
            return Err(ApiError::bad_input(
                "weights",
                "weights go with order: weighted",
            ));
        }
        return Ok(sluice_core::QueueOrder::Priority);
    }
    if request.weights.len() != request.queues.len() {
        return Err(ApiError::bad_input(
            "weights",
            "one weight per queue, in the same order",
        ));
    }
    if let Some(i) = request
        .weights
        .iter()
        .position(|&w| w == 0 || w > limits::QUEUE_WEIGHT_MAX)
    {
        return Err(ApiError::bad_input(
            format!("weights[{i}]"),
            format!("must be 1 to {}", limits::QUEUE_WEIGHT_MAX),
        ));
    }
    // Any seed will do: it only has to differ between leases.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ LEASE_SEED.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    Ok(sluice_core::QueueOrder::Weighted {
        weights: request.weights.clone(),
        seed,
    })
}

static LEASE_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[utoipa::path(post, path = "/v1/lease", tag = "workers", request_body = proto::LeaseRequest, responses(
    (status = 200, description = "leased jobs, possibly none", body = proto::LeaseResponse, links(
        ("heartbeat" = (operation_id = "heartbeat", description = "Heartbeat the first leased job.",
            parameters(("id" = "$response.body#/jobs/0/id")),
            request_body = json!({"lease_id": "$response.body#/jobs/0/lease_id"}))),
        ("ack" = (operation_id = "ack", description = "Ack the first leased job.",
            parameters(("id" = "$response.body#/jobs/0/id")),
            request_body = json!({"lease_id": "$response.body#/jobs/0/lease_id"}))),
        ("fail" = (operation_id = "fail", description = "Fail the first leased job.",
            parameters(("id" = "$response.body#/jobs/0/id")),
            request_body = json!({"lease_id": "$response.body#/jobs/0/lease_id"}))),
        ("ack_batch" = (operation_id = "ack_batch", description = "Ack the first leased job in a batch.",
            request_body = json!({"acks": [{"id": "$response.body#/jobs/0/id", "lease_id": "$response.body#/jobs/0/lease_id"}]}))),
        ("fail_batch" = (operation_id = "fail_batch", description = "Fail the first leased job in a batch.",
            request_body = json!({"fails": [{"id": "$response.body#/jobs/0/id", "lease_id": "$response.body#/jobs/0/lease_id"}]}))),
    )),
    (status = 400, description = "bad input", body = proto::ErrorResponse),
    (status = 413, description = "too many acks", body = proto::ErrorResponse)))]
pub async fn lease(
    app: axum::extract::State<AppState>,
    ApiJson(request): ApiJson<proto::LeaseRequest>,
) -> Result<Json<proto::LeaseResponse>, ApiError> {
    let broker = app.broker()?;
    if request.queues.is_empty() || request.queues.len() > limits::LEASE_QUEUES_LEN_MAX {
        return Err(ApiError::bad_input(
            "queues",
            format!("name 1 to {} queues", limits::LEASE_QUEUES_LEN_MAX),
        ));
    }
    for (i, queue) in request.queues.iter().enumerate() {
        if !limits::is_valid_name(queue, limits::QUEUE_NAME_BYTES_MAX) {
            return Err(ApiError::bad_input(
                format!("queues[{i}]"),
                "not a valid queue name",
            ));
        }
    }
    if request.max_jobs == 0 || request.max_jobs > limits::LEASE_BATCH_LEN_MAX {
        return Err(ApiError::bad_input(
            "max_jobs",
            format!("must be 1 to {}", limits::LEASE_BATCH_LEN_MAX),
        ));
    }
    if request.wait_ms > limits::LONG_POLL_WAIT_MS_MAX {
        return Err(ApiError::bad_input(
            "wait_ms",
            format!("must be at most {}", limits::LONG_POLL_WAIT_MS_MAX),
        ));
    }
    if request
        .worker
        .as_ref()
        .is_some_and(|w| w.len() > limits::WORKER_BYTES_MAX)
    {
        return Err(ApiError::bad_input(
            "worker",
            format!("at most {} bytes", limits::WORKER_BYTES_MAX),
        ));
    }
    let order = queue_order(&request)?;
    if let Some(worker) = &request.worker {
        broker
            .workers
            .lock()
            .touch(worker, crate::broker::system_now_ms());
    }
    check_batch_len(request.acks.len(), "acks")?;
    let (ack_texts, ack_parsed, ack_items) = parse_batch(request.acks, |i, item| {
        let lease_id = parse_lease_id(&item.lease_id, &format!("acks[{i}].lease_id"))?;
        Ok((
            item.id.clone(),
            ids::decode(&item.id).map(|id| (id, lease_id)),
        ))
    })?;
    // The acks are settled once, with the first lease attempt; a long-poll then waits
    // for jobs only.
    let mut acks = None;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms);
    let mut shutting_down = app.shutting_down.clone();
    // A poll parks only once an attempt found nothing: it registers, then tries once more,
    // so that a job made ready between the two attempts wakes it; a job already there
    // costs no registration.
    let mut registration = None;
    loop {
        let waiter = registration
            .as_ref()
            .map(|r: &crate::waiters::Registration<'_>| r.waiter.clone());
        let worker = request.worker.clone();
        let settle = acks.is_none() && !ack_texts.is_empty();
        let stopping = *shutting_down.borrow();
        let (jobs, settled, cascade) = broker
            .execute_all(|s, now| {
                let mut events = Vec::with_capacity(2);
                let mut settled = None;
                if settle {
                    let (event, results) = s.ack(now, &ack_items);
                    events.extend(event);
                    settled = Some(results);
                }
                let (event, ids) = s.lease_ordered(
                    now,
                    &request.queues,
                    &order,
                    request.max_jobs as usize,
                    worker,
                )?;
                events.extend(event);
                let mut cascade = Wakes::default();
                if !ids.is_empty() || request.wait_ms == 0 || stopping {
                    // This poller is done: later wake-ups must pass it by. Ready jobs it
                    // left in its queues wake one more poller each, so that none is left
                    // behind by a wake-up this poller took.
                    if let Some(waiter) = &waiter {
                        waiter.close();
                    }
                    for name in &request.queues {
                        if s.queue(name).is_some_and(|q| {
                            !q.paused && q.count(sluice_proto::JobState::Ready) > 0
                        }) {
                            cascade.add(name, 1);
                        }
                    }
                }
                let views: Vec<proto::LeasedJob> = ids
                    .iter()
                    .filter_map(|&id| s.job(id))
                    .map(|job| leased_view(s, job))
                    .collect();
                Ok((events, (views, settled, cascade)))
            })
            .await?;
        cascade.wake(&broker.waiters);
        if let Some(settled) = settled {
            acks = Some(batch_results(ack_texts.clone(), ack_parsed.clone(), settled).results);
        }
        let reply = |jobs| {
            Ok(Json(proto::LeaseResponse {
                jobs,
                acks: acks.clone().unwrap_or_default(),
            }))
        };
        if !jobs.is_empty() || request.wait_ms == 0 || stopping {
            return reply(jobs);
        }
        let Some(waiter) = waiter else {
            registration = Some(broker.waiters.register(&request.queues));
            continue;
        };
        tokio::select! {
            // Woken: leave every queue and start over.
            _ = waiter.notify.notified() => registration = None,
            _ = tokio::time::sleep_until(deadline) => return reply(Vec::new()),
            _ = shutting_down.changed() => return reply(Vec::new()),
        }
    }
}

// ---- queues -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    /// Queues whose name starts with this (the queue list only).
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    state: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// Only jobs carrying this tag.
    tag: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(limits::LIST_LIMIT_DEFAULT),
        Some(n) if (1..=limits::LIST_LIMIT_MAX).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_input(
            "limit",
            format!("must be 1 to {}", limits::LIST_LIMIT_MAX),
        )),
    }
}

#[utoipa::path(get, path = "/v1/queues", tag = "queues", params(("cursor" = Option<String>, Query), ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000), ("prefix" = Option<String>, Query, description = "Only queues whose name starts with this")), responses((status = 200, body = proto::QueueList), (status = 400, description = "bad input", body = proto::ErrorResponse)))]
pub async fn list_queues(
    app: axum::extract::State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<proto::QueueList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let list = app
        .broker()?
        .read_with_metrics(|s, metrics, now| {
            let page = s.queues_page_with(
                query.cursor.as_deref(),
                query.prefix.as_deref().unwrap_or(""),
                limit + 1,
            );
            let more = page.len() > limit;
            let queues: Vec<proto::QueueInfo> = page
                .into_iter()
                .take(limit)
                .map(|q| queue_view_recent(s, metrics, q, now))
                .collect();
            let next_cursor = if more {
                queues.last().map(|q| q.name.clone())
            } else {
                None
            };
            Ok(proto::QueueList {
                queues,
                next_cursor,
            })
        })
        .await?;
    Ok(Json(list))
}

fn queue_or_404<'a>(s: &'a State, name: &str) -> Result<&'a sluice_core::Queue, ApiError> {
    s.queue(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("queue {name} not found"),
        )
    })
}

#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 200, body = proto::QueueInfo), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_queue(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::QueueInfo>, ApiError> {
    Ok(Json(
        app.broker()?
            .read_with_metrics(|s, metrics, now| {
                queue_or_404(s, &name).map(|q| queue_view_recent(s, metrics, q, now))
            })
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/queues/{queue}/keys/{key}", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$"), ("key" = String, Path, description = "A limit key, 1 to 256 bytes (percent-encoded in the path).")), responses((status = 200, body = proto::KeyInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_queue_key(
    app: axum::extract::State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<proto::KeyInfo>, ApiError> {
    if !limits::is_valid_limit_key(&key) {
        return Err(ApiError::bad_input(
            "key",
            format!(
                "must be 1 to {} bytes, not . or ..",
                limits::LIMIT_KEY_BYTES_MAX
            ),
        ));
    }
    let info = app
        .broker()?
        .read(|s, now| {
            let queue = queue_or_404(s, &name)?;
            // A key no job carries is at rest: nothing leased, its bucket full.
            let status = queue.key(&key, now).unwrap_or(sluice_core::KeyStatus {
                jobs: 0,
                ready: 0,
                leased: 0,
                tokens: queue.key_limits.rate.map(|r| u64::from(r.limit)),
            });
            Ok(proto::KeyInfo {
                queue: name.clone(),
                key: key.clone(),
                jobs: u64::from(status.jobs),
                ready: status.ready as u64,
                leased: u64::from(status.leased),
                rate_tokens: status.tokens,
            })
        })
        .await?;
    Ok(Json(info))
}

#[utoipa::path(get, path = "/v1/queues/{queue}/jobs", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$"), ("state" = Option<proto::JobState>, Query, description = "Default ready."), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page: a job id.", pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$"), ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000), ("kind" = Option<String>, Query, description = "Only jobs of this kind"), ("tag" = Option<String>, Query, description = "Only jobs with this tag")), responses((status = 200, body = proto::JobList), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, body = proto::ErrorResponse)))]
pub async fn list_jobs(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<proto::JobList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let state_text = query.state.as_deref().unwrap_or("ready");
    let state = sluice_proto::JobState::parse(state_text).ok_or_else(|| {
        ApiError::bad_input(
            "state",
            "one of scheduled, ready, leased, succeeded, failed, dead, cancelled",
        )
    })?;
    let after = match query.cursor.as_deref() {
        Some(c) => Some(
            ids::decode(c)
                .ok_or_else(|| ApiError::bad_input("cursor", "not a cursor from this API"))?,
        ),
        None => None,
    };
    let list = app
        .broker()?
        .read(|s, _| {
            let queue = queue_or_404(s, &name)?;
            if query.kind.is_none() && query.tag.is_none() {
                let page = s.jobs_page(queue, state, after, limit + 1);
                let more = page.len() > limit;
                let jobs: Vec<proto::Job> = page
                    .into_iter()
                    .take(limit)
                    .map(|j| job_view(s, j))
                    .collect();
                let next_cursor = if more {
                    jobs.last().map(|j| j.id.clone())
                } else {
                    None
                };
                return Ok(proto::JobList { jobs, next_cursor });
            }
            // A kind no job ever had matches nothing.
            let kind = match query.kind.as_deref() {
                Some(name) => match s.kind_number(name) {
                    Some(kind) => Some(kind),
                    None => {
                        return Ok(proto::JobList {
                            jobs: Vec::new(),
                            next_cursor: None,
                        })
                    }
                },
                None => None,
            };
            let tag = query.tag.as_deref();
            let (page, stopped_at) =
                s.jobs_page_where(queue, state, after, limit, limits::JOB_SCAN_MAX, |job| {
                    kind.is_none_or(|k| job.kind == k)
                        && tag.is_none_or(|t| {
                            job.extra
                                .as_ref()
                                .is_some_and(|e| e.tags.iter().any(|have| &**have == t))
                        })
                });
            Ok(proto::JobList {
                jobs: page.into_iter().map(|j| job_view(s, j)).collect(),
                next_cursor: stopped_at.map(ids::encode),
            })
        })
        .await?;
    Ok(Json(list))
}

async fn set_paused(
    app: AppState,
    name: String,
    paused: bool,
) -> Result<Json<proto::QueueInfo>, ApiError> {
    let broker = app.broker()?;
    broker.execute(|s, _| s.set_paused(&name, paused)).await?;
    Ok(Json(
        broker
            .read(|s, now| queue_or_404(s, &name).map(|q| queue_view(q, now)))
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 200, body = proto::QueueInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "queue limit", body = proto::ErrorResponse)))]
pub async fn pause_queue(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::QueueInfo>, ApiError> {
    set_paused(app.0, name, true).await
}

#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 200, body = proto::QueueInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, description = "unknown queue", body = proto::ErrorResponse)))]
pub async fn resume_queue(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::QueueInfo>, ApiError> {
    set_paused(app.0, name, false).await
}

#[utoipa::path(post, path = "/v1/queues/{queue}/limits", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = proto::QueueLimits, responses((status = 200, body = proto::QueueInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "queue limit", body = proto::ErrorResponse)))]
pub async fn set_queue_limits(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<proto::QueueLimits>,
) -> Result<Json<proto::QueueInfo>, ApiError> {
    let limits = sluice_core::QueueLimits {
        concurrency: request.concurrency,
        rate: request.rate.map(core_rate),
    };
    let key_limits = sluice_core::QueueLimits {
        concurrency: request.key_concurrency,
        rate: request.key_rate.map(core_rate),
    };
    let broker = app.broker()?;
    broker
        .execute(|s, now| s.set_limits(now, &name, limits, key_limits))
        .await?;
    Ok(Json(
        broker
            .read(|s, now| queue_or_404(s, &name).map(|q| queue_view(q, now)))
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/queues/{queue}/move", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = proto::MoveRequest, responses((status = 200, body = proto::MoveResponse), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 404, description = "unknown queue", body = proto::ErrorResponse), (status = 429, description = "queue limit", body = proto::ErrorResponse)))]
pub async fn move_jobs(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<proto::MoveRequest>,
) -> Result<Json<proto::MoveResponse>, ApiError> {
    if request.limit == 0 || request.limit as usize > limits::MOVE_LEN_MAX {
        return Err(ApiError::bad_input(
            "limit",
            format!("must be 1 to {}", limits::MOVE_LEN_MAX),
        ));
    }
    let moved = app
        .broker()?
        .execute(|s, _| s.move_jobs(&name, &request.to, request.state, request.limit as usize))
        .await?;
    Ok(Json(proto::MoveResponse {
        moved: moved as u64,
    }))
}

#[utoipa::path(post, path = "/v1/queues/{queue}/purge", tag = "queues", params(("queue" = String, Path, description = "Queue name: 1 to 128 bytes of A-Z a-z 0-9 _ . : -", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), responses((status = 200, body = proto::PurgeResponse), (status = 404, body = proto::ErrorResponse)))]
pub async fn purge_queue(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::PurgeResponse>, ApiError> {
    let purged = app.broker()?.execute(|s, _| s.purge(&name)).await?;
    Ok(Json(proto::PurgeResponse {
        purged: purged as u64,
    }))
}

// ---- workers ------------------------------------------------------------------------

const WORKER_NAME: &str = "Worker name: 1 to 256 bytes (percent-encoded in the path).";

fn check_worker_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > limits::WORKER_BYTES_MAX {
        return Err(ApiError::bad_input(
            "name",
            format!("must be 1 to {} bytes", limits::WORKER_BYTES_MAX),
        ));
    }
    Ok(())
}

fn worker_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("worker {name} is not registered"),
    )
}

/// The registered workers named in `names` (all when `None`) with the jobs they hold.
fn worker_views(
    state: &State,
    registry: &crate::workers::Registry,
    names: Option<&str>,
    stale_ms: u64,
) -> Vec<proto::WorkerInfo> {
    let mut jobs: std::collections::HashMap<&str, Vec<proto::WorkerJob>> = Default::default();
    for job in state.leased_jobs() {
        let Some(worker) = job.worker() else { continue };
        if names.is_some_and(|n| n != worker) || registry.get(worker).is_none() {
            continue;
        }
        let leased_at = job
            .extra()
            .and_then(|e| e.history.last())
            .map_or(0, |a| a.leased_at);
        jobs.entry(worker).or_default().push(proto::WorkerJob {
            id: ids::encode(job.id),
            queue: state.queue_name(job.queue).to_owned(),
            kind: state.kind_name(job.kind).to_owned(),
            leased_at: rfc3339::format_ms(leased_at),
        });
    }
    registry
        .iter()
        .filter(|(name, _)| names.is_none_or(|n| n == *name))
        .map(|(name, worker)| {
            let current_jobs = jobs.remove(name).unwrap_or_default();
            worker_view(name, worker, Some(current_jobs), stale_ms)
        })
        .collect()
}

/// One registered worker; without `current_jobs` (not looked up) no utilisation either.
fn worker_view(
    name: &str,
    worker: &crate::workers::Registered,
    current_jobs: Option<Vec<proto::WorkerJob>>,
    stale_ms: u64,
) -> proto::WorkerInfo {
    let beat = &worker.beat;
    proto::WorkerInfo {
        name: name.to_owned(),
        host: beat.host.clone(),
        pid: beat.pid,
        version: beat.version.clone(),
        concurrency: beat.concurrency,
        queues: beat.queues.clone(),
        registered_at: rfc3339::format_ms(worker.registered_at),
        last_seen_at: rfc3339::format_ms(worker.last_seen_at),
        stale_at: rfc3339::format_ms(
            worker
                .last_seen_at
                .saturating_add(i64::try_from(stale_ms).unwrap_or(i64::MAX)),
        ),
        utilisation: current_jobs.as_ref().and_then(|jobs| {
            beat.concurrency
                .filter(|&c| c > 0)
                .map(|c| jobs.len() as f64 / f64::from(c))
        }),
        current_jobs: current_jobs.unwrap_or_default(),
        succeeded: worker.succeeded,
        failed: worker.failed,
    }
}

#[utoipa::path(put, path = "/v1/workers/{name}", tag = "workers", params(("name" = String, Path, description = WORKER_NAME)), request_body = proto::WorkerBeat, responses((status = 200, body = proto::WorkerInfo), (status = 400, description = "bad input", body = proto::ErrorResponse), (status = 429, description = "too many workers", body = proto::ErrorResponse)))]
pub async fn register_worker(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(beat): ApiJson<proto::WorkerBeat>,
) -> Result<Json<proto::WorkerInfo>, ApiError> {
    check_worker_name(&name)?;
    if beat
        .host
        .as_ref()
        .is_some_and(|h| h.len() > limits::WORKER_HOST_BYTES_MAX)
    {
        return Err(ApiError::bad_input(
            "host",
            format!("at most {} bytes", limits::WORKER_HOST_BYTES_MAX),
        ));
    }
    if beat
        .version
        .as_ref()
        .is_some_and(|v| v.len() > limits::WORKER_VERSION_BYTES_MAX)
    {
        return Err(ApiError::bad_input(
            "version",
            format!("at most {} bytes", limits::WORKER_VERSION_BYTES_MAX),
        ));
    }
    if beat
        .concurrency
        .is_some_and(|c| c == 0 || c > limits::QUEUE_CONCURRENCY_MAX)
    {
        return Err(ApiError::bad_input(
            "concurrency",
            format!("must be 1 to {}", limits::QUEUE_CONCURRENCY_MAX),
        ));
    }
    if beat.queues.len() > limits::LEASE_QUEUES_LEN_MAX {
        return Err(ApiError::bad_input(
            "queues",
            format!("at most {} queues", limits::LEASE_QUEUES_LEN_MAX),
        ));
    }
    if let Some(i) = beat
        .queues
        .iter()
        .position(|q| !limits::is_valid_name(q, limits::QUEUE_NAME_BYTES_MAX))
    {
        return Err(ApiError::bad_input(
            format!("queues[{i}]"),
            "not a valid queue name",
        ));
    }
    let broker = app.broker()?;
    broker
        .workers
        .lock()
        .register(&name, beat, crate::broker::system_now_ms())
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_workers",
                format!("at most {} workers may be registered", limits::WORKERS_MAX),
            )
        })?;
    // The reply leaves out current jobs: finding them means a pass over every leased
    // job, and workers beat often (GET has them).
    let registry = broker.workers.lock();
    let worker = registry.get(&name).ok_or_else(|| worker_not_found(&name))?;
    Ok(Json(worker_view(
        &name,
        worker,
        None,
        broker.worker_stale_ms,
    )))
}

#[utoipa::path(get, path = "/v1/workers/{name}", tag = "workers", params(("name" = String, Path, description = WORKER_NAME)), responses((status = 200, body = proto::WorkerInfo), (status = 404, body = proto::ErrorResponse)))]
pub async fn get_worker(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::WorkerInfo>, ApiError> {
    check_worker_name(&name)?;
    let broker = app.broker()?;
    let stale_ms = broker.worker_stale_ms;
    let views = broker
        .read(|s, _| {
            Ok(worker_views(
                s,
                &broker.workers.lock(),
                Some(&name),
                stale_ms,
            ))
        })
        .await?;
    views
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| worker_not_found(&name))
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers", responses((status = 200, body = proto::WorkerList)))]
pub async fn list_workers(
    app: axum::extract::State<AppState>,
) -> Result<Json<proto::WorkerList>, ApiError> {
    let broker = app.broker()?;
    let stale_ms = broker.worker_stale_ms;
    let workers = broker
        .read(|s, _| Ok(worker_views(s, &broker.workers.lock(), None, stale_ms)))
        .await?;
    Ok(Json(proto::WorkerList { workers }))
}

#[utoipa::path(delete, path = "/v1/workers/{name}", tag = "workers", params(("name" = String, Path, description = WORKER_NAME)), responses((status = 204, description = "unregistered; jobs it holds keep their leases"), (status = 404, body = proto::ErrorResponse)))]
pub async fn remove_worker(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_worker_name(&name)?;
    if app.broker()?.workers.lock().remove(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(worker_not_found(&name))
    }
}

// ---- metrics ------------------------------------------------------------------------

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text exposition format 0.0.4, or OpenMetrics 1.0.0 when the Accept header asks for application/openmetrics-text", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub async fn prometheus_metrics(
    app: axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let broker = app.broker()?;
    // Copied under the locks, written out after: a scrape does not hold up commands.
    let (export, groups, jobs_len, metrics_bytes, now) = broker
        .read_with_metrics(|s, metrics, now| {
            let groups: Vec<(String, String, u32, std::collections::BTreeMap<u32, u64>)> = s
                .groups()
                .groups
                .iter()
                .filter_map(|((stream, group), state)| {
                    let partitions = s.streams().streams.get(stream)?.partitions;
                    Some((
                        stream.clone(),
                        group.clone(),
                        partitions,
                        state.offsets.clone(),
                    ))
                })
                .collect();
            Ok((
                metrics.export(s, now),
                groups,
                s.job_len(),
                metrics.bytes(),
                now,
            ))
        })
        .await?;
    let streams = broker.clone();
    let mut text = tokio::task::spawn_blocking(move || {
        let mut text = export.render();
        crate::metrics::group_lag_prometheus(&mut text, &groups, |stream, p| {
            let handle = streams.streams.handle(stream, p).ok()?;
            let partition = handle.partition.lock();
            Some((partition.earliest_offset(), handle.readable_end(&partition)))
        });
        text
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    crate::metrics::server_prometheus(
        &mut text,
        &broker.wal().stats(),
        broker.last_snapshot_at_ms(),
        jobs_len,
        metrics_bytes,
        now,
    );
    let (content_type, text) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::to_openmetrics(&text),
        )
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", text)
    };
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text))
}

// ---- health -------------------------------------------------------------------------

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the log is replayed and writable"), (status = 503, body = proto::ErrorResponse)))]
pub async fn readyz(
    app: axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let broker = app.broker()?;
    if broker.wal().is_poisoned() {
        return Err(sluice_wal::WalError::Poisoned.into());
    }
    if *app.shutting_down.borrow() {
        return Err(ApiError::shutting_down());
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method",
    )
}
