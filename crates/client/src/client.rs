//! The HTTP client: enqueue with typed payloads, read jobs, and the lease calls the
//! worker runtime is built on.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use sluice_proto::{
    AckBatchRequest, AckItem, Backoff, BatchCreated, BatchInfo, BatchRequest, BatchResultResponse,
    EnqueueBatchRequest, EnqueueBatchResponse, EnqueueResult, ErrorResponse, FailBatchRequest,
    FailItem, HeartbeatRequest, HeartbeatResponse, ItemResult, Job, JobSpec, KeyInfo, LeaseRequest,
    LeaseResponse, QueueInfo, QueueLimits, RateLimit, WorkerBeat, WorkerInfo, WorkerList,
};

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error (`{"error": {...}}`, see `docs/api.md`).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// `path: message` of each invalid field.
        details: Vec<String>,
    },
    /// No answer: the server is down or unreachable, or the request timed out. The call
    /// may or may not have taken effect.
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server's answer could not be read.
    #[error("unexpected reply from the server: {0}")]
    Decode(String),
    /// A payload could not be turned into JSON (or a leased one into the handler's type).
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
}

impl Error {
    /// The API error code (`stale_lease`, `not_found`, ...), if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for errors worth retrying as they are: no answer, or a 5xx/429 the server
    /// may recover from (storage unavailable, shutting down, too many connections).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429,
            Error::Decode(_) | Error::Payload(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A queue's flow control, enforced by the server when jobs are leased. Unset fields mean
/// no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// At most this many of the queue's jobs leased at once, across all workers.
    pub concurrency: Option<u32>,
    /// At most `.0` leases per `.1` (a token bucket: bursts up to `.0`).
    pub rate: Option<(u32, Duration)>,
    /// At most this many jobs of any one limit key leased at once.
    pub key_concurrency: Option<u32>,
    /// At most `.0` leases per `.1` for each limit key.
    pub key_rate: Option<(u32, Duration)>,
}

/// A job to enqueue: queue, kind, a payload of any `Serialize` type, and options with
/// the server's defaults unless set (25 attempts, exponential backoff from 1 s to 1 h,
/// a 30 s lease per attempt, priority 0, no delay).
#[derive(Debug, Clone)]
pub struct NewJob<T> {
    queue: String,
    kind: String,
    payload: T,
    priority: i16,
    run_at: Option<String>,
    delay: Option<Duration>,
    max_attempts: Option<u32>,
    backoff: Option<Backoff>,
    timeout: Option<Duration>,
    unique: Option<(String, Option<Duration>)>,
    tags: Vec<String>,
    limit_key: Option<String>,
}

impl<T: Serialize> NewJob<T> {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: T) -> NewJob<T> {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            priority: 0,
            run_at: None,
            delay: None,
            max_attempts: None,
            backoff: None,
            timeout: None,
            unique: None,
            tags: Vec::new(),
            limit_key: None,
        }
    }

    /// Higher runs first.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Run no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Run no earlier than this RFC 3339 time.
    pub fn run_at(mut self, rfc3339: impl Into<String>) -> Self {
        self.run_at = Some(rfc3339.into());
        self
    }

    /// Attempts before the job goes to the dead set.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Lease length per attempt; the worker runtime heartbeats to extend it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// While an unfinished job with this key exists in the queue (for at most `ttl`, the
    /// server's default 24 h if `None`), enqueueing another returns the existing one.
    pub fn unique(mut self, key: impl Into<String>, ttl: Option<Duration>) -> Self {
        self.unique = Some((key.into(), ttl));
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The key the queue's per-key limits count this job under: a customer, an API
    /// token (see [`Limits::key_concurrency`] and [`Limits::key_rate`]).
    pub fn limit_key(mut self, key: impl Into<String>) -> Self {
        self.limit_key = Some(key.into());
        self
    }

    /// The wire form.
    pub fn to_spec(&self) -> Result<JobSpec> {
        let payload = RawValue::from_string(serde_json::to_string(&self.payload)?)?;
        let (unique_key, unique_ttl_ms) = match &self.unique {
            Some((key, ttl)) => (Some(key.clone()), ttl.map(millis)),
            None => (None, None),
        };
        Ok(JobSpec {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload,
            priority: self.priority,
            run_at: self.run_at.clone(),
            delay_ms: self.delay.map(millis),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            timeout_ms: self.timeout.map(millis),
            unique_key,
            unique_ttl_ms,
            tags: self.tags.clone(),
            limit_key: self.limit_key.clone(),
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How a lease from several queues chooses among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueueOrder {
    /// Across all the queues, the highest job priority first (the server's default).
    #[default]
    Priority,
    /// The queues in the order given: a later one only when the earlier have nothing.
    Strict,
    /// Each lease orders the queues at random in proportion to these weights (one per
    /// queue, in the same order, 1 to 1,000), as Sidekiq's weighted queues do.
    Weighted(Vec<u32>),
}

/// What an enqueue returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    /// True when a unique key matched an unfinished job: `id` is that job.
    pub duplicate: bool,
}

impl From<EnqueueResult> for Enqueued {
    fn from(result: EnqueueResult) -> Self {
        Enqueued {
            id: result.id,
            duplicate: result.duplicate,
        }
    }
}

/// A connection to one Sluice server. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Requests time out after this; a long-poll adds its own wait to it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// `base_url` is the server's address, e.g. `http://127.0.0.1:7440`.
    pub fn new(base_url: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(Error::Transport)?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Enqueues one job.
    pub async fn enqueue<T: Serialize>(&self, job: &NewJob<T>) -> Result<Enqueued> {
        let result: EnqueueResult = self.post("/v1/jobs", &job.to_spec()?, None).await?;
        Ok(result.into())
    }

    /// Enqueues jobs all-or-nothing (at most 10,000 per call); ids in the same order.
    pub async fn enqueue_batch<T: Serialize>(&self, jobs: &[NewJob<T>]) -> Result<Vec<Enqueued>> {
        let jobs = jobs.iter().map(NewJob::to_spec).collect::<Result<_>>()?;
        let reply: EnqueueBatchResponse = self
            .post("/v1/jobs/batch", &EnqueueBatchRequest { jobs }, None)
            .await?;
        Ok(reply.jobs.into_iter().map(Enqueued::from).collect())
    }

    /// Enqueues `jobs` as a batch: `callback` is enqueued exactly once, when every one of
    /// them has finished, with its payload wrapped as
    /// `{"batch":{"id","total","succeeded","dead","cancelled"},"payload":<callback's>}`.
    /// Returns the batch id (also the callback job's id) and the jobs' ids.
    pub async fn enqueue_with_callback<T: Serialize, C: Serialize>(
        &self,
        jobs: &[NewJob<T>],
        callback: &NewJob<C>,
    ) -> Result<BatchCreated> {
        let request = BatchRequest {
            jobs: jobs.iter().map(NewJob::to_spec).collect::<Result<_>>()?,
            callback: callback.to_spec()?,
        };
        self.post("/v1/batches", &request, None).await
    }

    /// A batch's progress.
    pub async fn batch(&self, id: &str) -> Result<BatchInfo> {
        self.get(&format!("/v1/batches/{id}")).await
    }

    /// A job as the server has it, with its attempt history.
    pub async fn job(&self, id: &str) -> Result<Job> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// A queue's counts per state and whether it is paused.
    pub async fn queue(&self, name: &str) -> Result<QueueInfo> {
        self.get(&format!("/v1/queues/{name}")).await
    }

    /// Sets (replaces) a queue's flow control; `Limits::default()` removes every limit.
    pub async fn set_limits(&self, queue: &str, limits: Limits) -> Result<QueueInfo> {
        let rate = |(limit, per): (u32, Duration)| RateLimit {
            limit,
            per_ms: millis(per),
        };
        let limits = QueueLimits {
            concurrency: limits.concurrency,
            rate: limits.rate.map(rate),
            key_concurrency: limits.key_concurrency,
            key_rate: limits.key_rate.map(rate),
        };
        self.post(&format!("/v1/queues/{queue}/limits"), &limits, None)
            .await
    }

    /// How one limit key of a queue stands (jobs, leased, tokens left).
    pub async fn queue_key(&self, queue: &str, key: &str) -> Result<KeyInfo> {
        let key = sluice_proto::encode_path_segment(key);
        self.get(&format!("/v1/queues/{queue}/keys/{key}")).await
    }

    /// Cancels a job that has not finished.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        self.post(
            &format!("/v1/jobs/{id}/cancel"),
            &serde_json::json!({}),
            None,
        )
        .await
    }

    /// Leases up to `max_jobs` from `queues`, waiting up to `wait` for one (long-poll),
    /// acking `acks` first in the same round trip.
    pub async fn lease(
        &self,
        queues: &[String],
        max_jobs: u32,
        wait: Duration,
        worker: Option<&str>,
        acks: Vec<AckItem>,
    ) -> Result<LeaseResponse> {
        self.lease_in_order(queues, &QueueOrder::Priority, max_jobs, wait, worker, acks)
            .await
    }

    /// [`Client::lease`] choosing among the queues as `order` says.
    pub async fn lease_in_order(
        &self,
        queues: &[String],
        order: &QueueOrder,
        max_jobs: u32,
        wait: Duration,
        worker: Option<&str>,
        acks: Vec<AckItem>,
    ) -> Result<LeaseResponse> {
        let (order, weights) = match order {
            QueueOrder::Priority => (None, Vec::new()),
            QueueOrder::Strict => (Some("strict".to_owned()), Vec::new()),
            QueueOrder::Weighted(weights) => (Some("weighted".to_owned()), weights.clone()),
        };
        let request = LeaseRequest {
            queues: queues.to_vec(),
            max_jobs,
            wait_ms: millis(wait),
            worker: worker.map(str::to_owned),
            acks,
            order,
            weights,
        };
        self.post("/v1/lease", &request, Some(wait)).await
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        progress: Option<Box<RawValue>>,
    ) -> Result<HeartbeatResponse> {
        let request = HeartbeatRequest {
            lease_id: lease_id.to_owned(),
            progress,
        };
        self.post(&format!("/v1/jobs/{id}/heartbeat"), &request, None)
            .await
    }

    /// Acks many leases in one call; one result per item.
    pub async fn ack_batch(&self, acks: Vec<AckItem>) -> Result<Vec<ItemResult>> {
        let reply: BatchResultResponse = self
            .post("/v1/ack", &AckBatchRequest { acks }, None)
            .await?;
        Ok(reply.results)
    }

    /// Fails many leases in one call; the server retries each after its backoff (or at
    /// its `retry_at`) or moves it to the dead set.
    pub async fn fail_batch(&self, fails: Vec<FailItem>) -> Result<Vec<ItemResult>> {
        let reply: BatchResultResponse = self
            .post("/v1/fail", &FailBatchRequest { fails }, None)
            .await?;
        Ok(reply.results)
    }

    /// Registers worker `name`, or says it is still alive (`PUT /v1/workers/{name}`).
    pub async fn beat_worker(&self, name: &str, beat: &WorkerBeat) -> Result<WorkerInfo> {
        let name = sluice_proto::encode_path_segment(name);
        let response = self
            .send(
                reqwest::Method::PUT,
                &format!("/v1/workers/{name}"),
                Some(beat),
                None,
            )
            .await?;
        reply(response).await
    }

    /// Unregisters worker `name` (jobs it holds keep their leases).
    pub async fn remove_worker(&self, name: &str) -> Result<()> {
        let name = sluice_proto::encode_path_segment(name);
        let response = self
            .send::<()>(
                reqwest::Method::DELETE,
                &format!("/v1/workers/{name}"),
                None,
                None,
            )
            .await?;
        no_content(response).await
    }

    /// The registered workers with the jobs they hold.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let list: WorkerList = self.get("/v1/workers").await?;
        Ok(list.workers)
    }

    /// One request: the method, a path under the base URL, a JSON body if any, and the
    /// usual timeout plus how long the server may hold it (a long-poll).
    async fn send<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        long_poll: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT + long_poll.unwrap_or_default());
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.map_err(Error::Transport)
    }

    pub(crate) async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        reply(
            self.send::<()>(reqwest::Method::GET, path, None, None)
                .await?,
        )
        .await
    }

    pub(crate) async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        long_poll: Option<Duration>,
    ) -> Result<R> {
        reply(
            self.send(reqwest::Method::POST, path, Some(body), long_poll)
                .await?,
        )
        .await
    }

    /// A POST of `body` in `content_type`, answered in JSON.
    pub(crate) async fn post_raw<R: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<R> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        reply(request.send().await.map_err(Error::Transport)?).await
    }

    /// A GET asking for `accept`: on success the reply's headers and body as sent; an
    /// error comes in JSON as for every request. `long_poll` is how long the server may
    /// hold it.
    pub(crate) async fn get_raw(
        &self,
        path: &str,
        accept: &str,
        long_poll: Duration,
    ) -> Result<(reqwest::header::HeaderMap, impl AsRef<[u8]>)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT + long_poll)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(Error::Transport)?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok((headers, body))
    }

    pub(crate) async fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R> {
        reply(
            self.send(reqwest::Method::PUT, path, Some(body), None)
                .await?,
        )
        .await
    }

    /// A POST whose success has no body (204).
    pub(crate) async fn post_no_content<B: Serialize>(&self, path: &str, body: &B) -> Result<()> {
        no_content(
            self.send(reqwest::Method::POST, path, Some(body), None)
                .await?,
        )
        .await
    }
}

/// A reply whose success has no body: any 2xx is done, else the error as `reply` reads it.
async fn no_content(response: reqwest::Response) -> Result<()> {
    if response.status().is_success() {
        return Ok(());
    }
    reply::<serde_json::Value>(response).await.map(|_| ())
}

async fn reply<R: DeserializeOwned>(response: reqwest::Response) -> Result<R> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(Error::Transport)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
    }
    Err(api_error(status, &bytes))
}

/// The error a reply of a failed request carries (`{"error": ...}`), or its text.
fn api_error(status: reqwest::StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorResponse>(bytes) {
        Ok(body) => Error::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            details: body
                .error
                .details
                .into_iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect(),
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: "http_error".to_owned(),
            message: String::from_utf8_lossy(bytes).chars().take(300).collect(),
            details: Vec::new(),
        },
    }
}
