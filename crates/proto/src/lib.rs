//! Wire types of the Sluice HTTP API, shared by the server, the CLI and SDKs; no I/O here.
//!
//! API Boundary: these types are the public contract. Fields are only ever added (with a
//! default), never renamed or removed, within `/v1`.

pub mod limits;
pub mod rfc3339;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// OpenAPI pattern of queue names and kinds (`limits::is_valid_name`): 1 to 128 bytes of
/// `A-Z a-z 0-9 _ . : -`. Attributes need it as a literal, so it is repeated there.
const NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";

/// Schema of `LeaseRequest.queues`: 1 to 100 queue names.
fn queue_names_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NAME_PATTERN)),
        )
        .min_items(Some(1))
        .max_items(Some(limits::LEASE_QUEUES_LEN_MAX))
        .description(Some(
            "Queues to lease from; across them the highest priority, then earliest run_at wins.",
        ))
        .build()
}

/// Schema of `JobSpec.tags`: at most 16 tags of 1 to 64 bytes.
fn tags_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(limits::TAG_BYTES_MAX)),
        )
        .max_items(Some(limits::TAGS_LEN_MAX))
        .build()
}

/// `{"error":{...}}`: the body of every 4xx/5xx response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `stale_lease`, `payload_too_large`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Where in the request the problem is, e.g. `jobs[3].queue`.
    pub path: String,
    pub message: String,
}

/// Retry backoff of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backoff {
    /// `min(base_ms * 2^(attempt-1), max_ms)`, scaled by a deterministic jitter in [0.5, 1.0].
    Exponential {
        #[schema(minimum = 1, maximum = 604_800_000)]
        base_ms: u32,
        #[schema(minimum = 1, maximum = 604_800_000)]
        max_ms: u32,
    },
    /// The same delay after every failure.
    Fixed {
        #[schema(maximum = 604_800_000)]
        delay_ms: u32,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential {
            base_ms: 1_000,
            max_ms: 3_600_000,
        }
    }
}

/// One job to enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
    /// What the job is: the worker picks its handler by kind.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub kind: String,
    /// Any JSON value, at most `limits::PAYLOAD_BYTES_MAX` bytes as sent.
    #[schema(value_type = Value)]
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
    /// Higher runs first. Default 0.
    #[serde(default)]
    #[schema(minimum = -32768, maximum = 32767)]
    pub priority: i16,
    /// RFC 3339 time before which the job does not run. Exclusive with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 31_622_400_000_u64)]
    pub delay_ms: Option<u64>,
    /// Attempts before the job goes to the dead set. Default 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Lease length for each attempt; heartbeats extend it by the same amount. Default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1000, maximum = 3_600_000)]
    pub timeout_ms: Option<u64>,
    /// While a job with this key in this queue is unfinished (and younger than
    /// `unique_ttl_ms`), enqueueing another returns the existing job. 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2_592_000_000_u64)]
    pub unique_ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = tags_schema)]
    pub tags: Vec<String>,
    /// The key the queue's per-key limits count this job under (a customer, an API
    /// token): see `key_concurrency` and `key_rate` in `QueueLimits`. 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub limit_key: Option<String>,
}

fn null_payload() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatchRequest {
    pub jobs: Vec<JobSpec>,
}

/// `PUT /v1/cron/{name}`: a schedule that enqueues `job` at each occurrence.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronRequest {
    /// croner syntax: 5 fields (minute hour day month weekday) or 6 with seconds first,
    /// e.g. `0 9 * * MON-FRI`, `*/10 * * * * *`.
    pub schedule: String,
    /// An IANA time zone, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// What occurrences missed while the server was down (more than 60 s late) do:
    /// `skip` (default), `run_once` (one job for all of them), `run_all` (one each).
    #[serde(default = "skip")]
    #[schema(pattern = "^(skip|run_once|run_all)$")]
    pub missed: String,
    /// The job each occurrence enqueues (no `unique_key`, `run_at` or `delay_ms`).
    pub job: JobSpec,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn skip() -> String {
    "skip".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CronInfo {
    pub name: String,
    pub schedule: String,
    pub timezone: String,
    pub missed: String,
    pub queue: String,
    pub kind: String,
    /// The next occurrence; absent when the expression has none left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CronList {
    pub schedules: Vec<CronInfo>,
}

/// `POST /v1/batches`: jobs enqueued together, and a callback job enqueued exactly once
/// when every one of them has finished (succeeded, dead or cancelled). The callback's
/// payload becomes `{"batch":{"id","total","succeeded","dead","cancelled"},"payload":<its
/// payload>}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to `limits::ENQUEUE_BATCH_LEN_MAX` jobs, without `unique_key`.
    pub jobs: Vec<JobSpec>,
    /// Without `unique_key`; its `delay_ms`/`run_at` count from the batch's creation.
    pub callback: JobSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCreated {
    /// The batch's id, which is also the id its callback job will have.
    pub id: String,
    /// The jobs' ids, in the order given.
    pub jobs: Vec<String>,
}

/// A batch's progress: `GET /v1/batches/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchInfo {
    pub id: String,
    pub total: u32,
    /// Members not finished yet.
    pub pending: u32,
    pub succeeded: u32,
    pub dead: u32,
    /// Cancelled, or purged before they ran.
    pub cancelled: u32,
    pub created_at: String,
    /// When the last member finished and the callback job (id = `id`) was enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub callback_queue: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueResult {
    pub id: String,
    /// True when a unique key matched and this is the existing job.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueBatchResponse {
    pub jobs: Vec<EnqueueResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Scheduled,
    Ready,
    Leased,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Succeeded, dead and cancelled jobs do not run again unless retried.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub leased_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `succeeded`, `failed`, `expired`, `cancelled`; absent while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub lease_id: String,
    pub expires_at: String,
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    pub state: JobState,
    pub priority: i16,
    pub attempts: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    pub enqueued_at: String,
    pub run_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub progress: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Queues to lease from; across them the highest priority, then earliest run_at wins.
    #[schema(schema_with = queue_names_schema)]
    pub queues: Vec<String>,
    /// At most `limits::LEASE_BATCH_LEN_MAX`. Default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_jobs: u32,
    /// Long-poll: wait up to this long for a job when none is ready. Default 0.
    #[serde(default)]
    #[schema(maximum = 30_000)]
    pub wait_ms: u64,
    /// Free-form worker name, kept in the attempt history. At most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub worker: Option<String>,
    /// Jobs to ack before leasing, so that a worker finishing one job and taking the next
    /// needs one round trip, not two (BullMQ's and Faktory's fetch-next-on-completion).
    /// Each gets its own result in the response's `acks`; a stale one changes nothing and
    /// does not stop the lease. At most `limits::ACK_BATCH_LEN_MAX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<AckItem>,
    /// How to choose among `queues`: `priority` (default: across all of them the highest
    /// job priority, then the earliest run_at), `strict` (in the order given: a later queue
    /// only when the earlier ones have nothing ready) or `weighted` (each lease orders the
    /// queues at random, in proportion to `weights`, then takes them in that order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(priority|strict|weighted)$")]
    pub order: Option<String>,
    /// With `order: weighted`: one weight (1 to 1,000) per queue, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeasedJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    pub priority: i16,
    /// 1 for the first run.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_id: String,
    pub lease_expires_at: String,
    pub enqueued_at: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The lease length, which each heartbeat extends the lease by: a worker can pace its
    /// heartbeats by this without comparing its clock with the server's.
    #[serde(default)]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    pub jobs: Vec<LeasedJob>,
    /// One result per item of the request's `acks`, in order; absent when it had none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<ItemResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// A lease id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub lease_id: String,
    /// Any JSON value, shown on the job; at most `limits::PROGRESS_BYTES_MAX` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub progress: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub lease_expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// A lease id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub lease_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// A lease id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub lease_id: String,
    /// Kept in the attempt history; longer messages are cut to `limits::ERROR_BYTES_MAX`.
    #[serde(default)]
    pub error: String,
    /// Retry at this RFC 3339 time instead of after the job's backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub retry_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    /// A job id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub id: String,
    /// A lease id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub lease_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBatchRequest {
    pub acks: Vec<AckItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailItem {
    /// A job id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub id: String,
    /// A lease id: 13 characters of Crockford base32.
    #[schema(pattern = "^[0-9a-fA-F][0-9a-hjkmnp-tv-zA-HJKMNP-TV-Z]{12}$")]
    pub lease_id: String,
    #[serde(default)]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub retry_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBatchRequest {
    pub fails: Vec<FailItem>,
}

/// Outcome of one item of a batch ack/fail: `error` is set when that item changed nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemResult {
    pub id: String,
    /// The job's state after the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResultResponse {
    pub results: Vec<ItemResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StateCounts {
    pub scheduled: u64,
    pub ready: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    pub name: String,
    pub paused: bool,
    pub counts: StateCounts,
    /// Flow control, when the queue has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<QueueLimits>,
    /// Leases the rate limit allows right now (whole tokens in its bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tokens: Option<u64>,
    /// Limit keys the queue tracks: keys some job carries, and keys whose rate bucket
    /// is still refilling. Shown when the queue has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_keys: Option<u64>,
    /// Wait and run times and outcomes over the last minute (in the queue and queue-list
    /// views, not in the replies of admin actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<QueueRecent>,
}

/// A queue over the last minute: wait time (due to leased) and run time (leased to
/// finished) percentiles in ms, each reported as the upper bound of its bucket (at most
/// 9 % above the true value), and finished attempts. Percentiles are absent without data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueRecent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_p99_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p99_ms: Option<u64>,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed, or whose lease expired.
    pub failed: u64,
}

/// How one limit key of a queue stands: `GET /v1/queues/{queue}/keys/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub queue: String,
    pub key: String,
    /// Jobs of the queue, in any state, that carry the key.
    pub jobs: u64,
    pub ready: u64,
    pub leased: u64,
    /// Leases of this key the per-key rate limit allows right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tokens: Option<u64>,
}

/// A queue's flow control: `POST /v1/queues/{queue}/limits`. Omit a field for no limit
/// of that kind; `{}` removes every limit. The `key_` limits apply to each limit key of
/// the queue on its own (jobs without a `limit_key` are bound by the queue's limits only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// At most this many of the queue's jobs leased at once, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
    /// At most this many jobs of any one limit key leased at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub key_concurrency: Option<u32>,
    /// A token bucket per limit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rate: Option<RateLimit>,
}

/// At most `limit` leases per `per_ms`: a token bucket of `limit` tokens, refilled evenly
/// over `per_ms` (bursts up to `limit`; `limit / per_ms` sustained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub per_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/queues/{queue}/move`: move jobs of one state to another queue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub to: String,
    /// `scheduled`, `ready` (default), `failed` or `dead`.
    #[serde(default = "ready_state")]
    pub state: JobState,
    /// Oldest first, at most this many (default and maximum 10,000).
    #[serde(default = "move_limit")]
    #[schema(minimum = 1, maximum = 10_000)]
    pub limit: u32,
}

fn ready_state() -> JobState {
    JobState::Ready
}

fn move_limit() -> u32 {
    10_000
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MoveResponse {
    pub moved: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PurgeResponse {
    /// Ready, scheduled and failed jobs removed.
    pub purged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Job ids and lease ids: 13 characters of Crockford base32, so that ids sort as strings
/// in the order they were made.
pub mod ids {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    pub const LEN: usize = 13;

    pub fn encode(value: u64) -> String {
        let mut out = [0u8; LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            // 13 * 5 = 65 bits: the first character carries the top 4 bits.
            let shift = 5 * (LEN - 1 - i);
            *slot = ALPHABET[((value >> shift) & 31) as usize];
        }
        out.iter().map(|&b| b as char).collect()
    }

    pub fn decode(text: &str) -> Option<u64> {
        if text.len() != LEN {
            return None;
        }
        let mut value: u64 = 0;
        for (i, byte) in text.bytes().enumerate() {
            let digit = ALPHABET
                .iter()
                .position(|&a| a == byte.to_ascii_lowercase())? as u64;
            if i == 0 && digit > 15 {
                return None;
            }
            value = (value << 5) | digit;
        }
        Some(value)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ids_round_trip_and_sort_like_numbers() {
            let values = [0u64, 1, 31, 32, 1 << 40, u64::MAX - 1, u64::MAX];
            for v in values {
                assert_eq!(decode(&encode(v)), Some(v));
            }
            for pair in values.windows(2) {
                assert!(encode(pair[0]) < encode(pair[1]));
            }
            assert_eq!(decode("zzzzzzzzzzzzz"), None);
            assert_eq!(decode("short"), None);
            assert_eq!(decode("0000000000-00"), None);
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so any key is one
/// path segment.
pub fn encode_path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `PUT /v1/workers/{name}`: a worker registers, or says it is still alive. Every field is
/// optional; the last beat's values are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerBeat {
    /// At most `limits::WORKER_HOST_BYTES_MAX` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// At most `limits::WORKER_VERSION_BYTES_MAX` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub version: Option<String>,
    /// Handlers it runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 100)]
    pub queues: Vec<String>,
}

/// A job a worker holds now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerJob {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub leased_at: String,
}

/// A registered worker: what it said, when it was last heard from, what it runs now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    pub registered_at: String,
    /// Its last beat, lease poll or job heartbeat.
    pub last_seen_at: String,
    /// When it is dropped (and its leases end) unless heard from again.
    pub stale_at: String,
    pub current_jobs: Vec<WorkerJob>,
    /// Jobs held / concurrency, when it gave its concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilisation: Option<f64>,
    /// Attempts it finished since it registered: acked, and failed or expired.
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// One sample of a queue's history: gauges as sampled, counts over the step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    pub at: String,
    pub ready: u64,
    pub leased: u64,
    pub enqueued: u64,
    pub succeeded: u64,
    /// Attempts that failed or whose lease expired.
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p95_ms: Option<u64>,
    /// Jobs scheduled, failed and waiting to retry, and dead, as sampled (with `ready`
    /// and `leased`, the queue's depth per state; 0 in history written before they were
    /// recorded).
    #[serde(default)]
    pub scheduled: u64,
    #[serde(default)]
    pub retrying: u64,
    #[serde(default)]
    pub dead: u64,
}

/// `GET /v1/queues/{queue}/history`: one point per step from `from` to `to` (zeros where
/// nothing happened or the server was down).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueHistory {
    pub queue: String,
    pub resolution_ms: u64,
    pub from: String,
    pub to: String,
    pub points: Vec<HistoryPoint>,
}

/// `GET /v1/history`: every queue's history summed per step (`ready`, `leased`,
/// `enqueued`, `succeeded`, `failed`); `wait_p95_ms` and `run_p95_ms` are the largest
/// of any queue in the step (percentiles do not add up).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerHistory {
    pub resolution_ms: u64,
    pub from: String,
    pub to: String,
    pub points: Vec<HistoryPoint>,
}

/// A least-squares trend of one metric over the window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrendInfo {
    pub metric: String,
    pub slope_per_hour: f64,
    pub r2: f64,
    /// `rising`, `falling` or `flat`.
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_change: Option<f64>,
    pub summary: String,
}

/// A point one of the detectors (`zscore`, `iqr`, `ewma`) found out of line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnomalyInfo {
    pub metric: String,
    pub at: String,
    pub value: f64,
    pub expected: f64,
    pub detector: String,
    pub score: f64,
    pub above: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForecastPointInfo {
    pub at: String,
    pub value: f64,
    /// 95 % prediction interval.
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForecastInfo {
    pub metric: String,
    /// `holt`, or `holt_winters` when a daily season is present.
    pub method: String,
    pub points: Vec<ForecastPointInfo>,
}

/// The backlog now and where it is going.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BacklogInfo {
    pub ready: u64,
    /// Over the last 5 minutes of history.
    pub arrival_per_s: f64,
    pub throughput_per_s: f64,
    /// When the backlog is gone at these rates; absent when it is not draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_at: Option<String>,
    /// When the forecast depth first reaches `depth_threshold`, if asked and it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_at: Option<String>,
}

/// Workers (handler slots) to keep the p95 wait under the target, from an M/M/c model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecommendationInfo {
    pub workers: u32,
    pub utilisation: f64,
    pub wait_p95_ms: u64,
    pub target_wait_p95_ms: u64,
    pub arrival_per_s: f64,
    pub mean_run_ms: u64,
    pub model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthComponentInfo {
    pub name: String,
    pub score: u8,
    pub weight: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthInfo {
    /// 0 to 100: the weighted mean of the components.
    pub score: u8,
    pub components: Vec<HealthComponentInfo>,
}

/// `GET /v1/queues/{queue}/insights`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueInsights {
    pub queue: String,
    pub window_ms: u64,
    pub resolution_ms: u64,
    pub trends: Vec<TrendInfo>,
    pub anomalies: Vec<AnomalyInfo>,
    pub forecasts: Vec<ForecastInfo>,
    pub backlog: BacklogInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<RecommendationInfo>,
    pub health: HealthInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueHealth {
    pub queue: String,
    pub score: u8,
    /// Jobs finished over the window: the queue's weight in the overall score.
    pub finished: u64,
}

/// `GET /v1/health`: every queue's health score over the last hour and the overall one
/// (weighted by jobs finished, so busy queues count for more).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerHealth {
    pub score: u8,
    pub queues: Vec<QueueHealth>,
}

/// Where an alert's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierSpec {
    /// A JSON POST; with a `secret`, signed: `X-Sluice-Signature: sha256=<hex HMAC-SHA256
    /// of the body>`. The secret is never shown back.
    Webhook {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// In a PUT that replaces a rule: keep the secret (or none) that the rule's
        /// webhook to this `url` has now, to edit a rule without knowing its secret.
        /// Not with `secret`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_secret: bool,
        /// In answers: whether the webhook has a secret. Ignored in a PUT, so that a rule
        /// read can be sent back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed: Option<bool>,
    },
    /// A Slack-compatible incoming webhook: `{"text": "..."}`.
    Slack { url: String },
}

/// `PUT /v1/alerts/rules/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSpec {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
    /// `depth`, `dead`, `oldest_ready_ms`, `wait_p95_ms`, `run_p95_ms`, `failure_rate`,
    /// `throughput_per_min`.
    pub metric: String,
    /// `>` or `<`.
    pub op: String,
    pub threshold: f64,
    /// The condition must hold this long before the alert fires. Default 0.
    #[serde(default)]
    #[schema(maximum = 86_400_000)]
    pub for_ms: u64,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default)]
    #[schema(max_items = 10)]
    pub notifiers: Vec<NotifierSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRuleInfo {
    pub name: String,
    pub queue: String,
    pub metric: String,
    pub op: String,
    pub threshold: f64,
    pub for_ms: u64,
    pub severity: String,
    /// Notifiers, secrets left out.
    pub notifiers: Vec<NotifierSpec>,
    pub firing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing_since: Option<String>,
    /// The value at the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub silenced: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertRuleList {
    pub rules: Vec<AlertRuleInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertTransitionInfo {
    pub at: String,
    pub rule: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub value: f64,
    pub silenced: bool,
}

/// `GET /v1/alerts/history`: the newest transitions first (at most 1,000 are kept).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertHistory {
    pub transitions: Vec<AlertTransitionInfo>,
}

/// `PUT /v1/alerts/silences/{id}`: mute notifications of matching alerts for a while.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceSpec {
    /// Only this rule (default: every rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Only rules on this queue (default: every queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// How long from now, at most 30 days.
    #[schema(minimum = 1, maximum = 2_592_000_000_u64)]
    pub duration_ms: u64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SilenceInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub created_at: String,
    pub until: String,
    pub comment: String,
    /// False once `until` has passed.
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SilenceList {
    pub silences: Vec<SilenceInfo>,
}
