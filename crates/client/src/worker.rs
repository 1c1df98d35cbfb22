//! The worker runtime: leases jobs, runs typed handlers with a concurrency limit,
//! heartbeats while they run, acks and fails in batches, isolates panics, and shuts down
//! gracefully. Retries are the broker's: a failed job comes back after its backoff.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use sluice_proto::limits::{self, truncate_utf8};
use sluice_proto::{rfc3339, AckItem, FailItem, LeasedJob, WorkerBeat};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::client::{Client, Error, QueueOrder};

/// Aborts its task when dropped: a `run` future dropped before it finishes must not
/// leave its beats going (the server would never see the worker leave).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a running worker tells the server it is alive (`PUT /v1/workers/{name}`): a
/// sixth of the server's default stale time, so a few lost beats do not drop it.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Why a handler's job was cancelled; see [`Job::cancelled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The server no longer holds the lease for this worker: the job was cancelled, or
    /// the lease expired (a heartbeat came too late) and the job may run elsewhere.
    LeaseLost,
    /// The worker's job timeout passed.
    TimedOut,
    /// The worker is shutting down and its deadline passed.
    ShuttingDown,
}

/// A leased job as a handler sees it, with its payload decoded into `T`.
#[derive(Debug)]
pub struct Job<T> {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: T,
    /// 1 on the first run.
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i16,
    pub tags: Vec<String>,
    pub enqueued_at: String,
    cancel: watch::Receiver<Option<CancelReason>>,
}

impl<T> Job<T> {
    /// Why the job was cancelled, if it was. A handler doing long work checks this (or
    /// awaits [`Job::cancelled`]) and stops: its result no longer counts.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        *self.cancel.borrow()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel_reason().is_some()
    }

    /// Resolves when the job is cancelled (use in `tokio::select!` beside the work).
    pub async fn cancelled(&self) -> CancelReason {
        let mut cancel = self.cancel.clone();
        loop {
            if let Some(reason) = *cancel.borrow_and_update() {
                return reason;
            }
            if cancel.changed().await.is_err() {
                // The runtime dropped the job: treat as a shutdown.
                return CancelReason::ShuttingDown;
            }
        }
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type ErasedHandler = Arc<
    dyn Fn(LeasedJob, watch::Receiver<Option<CancelReason>>) -> Result<HandlerFuture, String>
        + Send
        + Sync,
>;

/// What a worker did, returned by [`Worker::run`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub leased: u64,
    pub succeeded: u64,
    /// Handler returned an error (or its payload did not decode, or no handler matched).
    pub failed: u64,
    pub panicked: u64,
    pub timed_out: u64,
    /// Lease lost while running (cancelled or expired): the result was dropped.
    pub lease_lost: u64,
    /// Handed back at shutdown (failed with `retry_at` now: it counts as an attempt).
    pub released: u64,
    /// Acks or fails the server refused as stale (the lease ended before it arrived).
    pub stale: u64,
    /// Lease calls that failed (server down or restarting) and were retried.
    pub lease_errors: u64,
    /// Acks or fails that could not be delivered (the server refused the batch, or stayed
    /// unreachable): their leases expire and the broker runs those jobs again.
    pub undelivered: u64,
}

#[derive(Default)]
struct Counters {
    leased: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    lease_lost: AtomicU64,
    released: AtomicU64,
    stale: AtomicU64,
    lease_errors: AtomicU64,
    undelivered: AtomicU64,
}

impl Counters {
    fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            leased: get(&self.leased),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            panicked: get(&self.panicked),
            timed_out: get(&self.timed_out),
            lease_lost: get(&self.lease_lost),
            released: get(&self.released),
            stale: get(&self.stale),
            lease_errors: get(&self.lease_errors),
            undelivered: get(&self.undelivered),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Builds and runs a worker:
///
/// ```no_run
/// # async fn example() -> Result<(), sluice_client::Error> {
/// use sluice_client::{Client, Job, Worker};
///
/// #[derive(serde::Deserialize)]
/// struct Email { to: String }
///
/// let client = Client::new("http://127.0.0.1:7440")?;
/// let report = Worker::new(client, ["emails"])
///     .concurrency(16)
///     .handle("email.send", |job: Job<Email>| async move {
///         println!("sending to {}", job.payload.to);
///         Ok::<(), std::io::Error>(())
///     })
///     .run(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    client: Client,
    queues: Vec<String>,
    name: String,
    concurrency: usize,
    prefetch: usize,
    poll_wait: Duration,
    job_timeout: Option<Duration>,
    shutdown_timeout: Duration,
    cancel_grace: Duration,
    ack_batch_max: usize,
    handlers: HashMap<String, ErasedHandler>,
    fallback: Option<ErasedHandler>,
    order: QueueOrder,
    quiet: Arc<watch::Sender<bool>>,
}

/// Quiets and resumes a running [`Worker`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerController {
    quiet: Arc<watch::Sender<bool>>,
}

impl WorkerController {
    /// Stop leasing: jobs already leased (and a poll in flight) run to the end; the
    /// worker keeps its connection and waits for [`WorkerController::resume`] or shutdown.
    pub fn quiet(&self) {
        self.quiet.send_replace(true);
    }

    pub fn resume(&self) {
        self.quiet.send_replace(false);
    }

    pub fn is_quiet(&self) -> bool {
        *self.quiet.borrow()
    }
}

impl Worker {
    /// A worker leasing from `queues` (across them the highest priority, then the earliest
    /// due job wins), with concurrency 10, no prefetch, a 2 s long-poll, no job timeout
    /// and 30 s to finish at shutdown.
    pub fn new<Q: Into<String>>(client: Client, queues: impl IntoIterator<Item = Q>) -> Worker {
        Worker {
            client,
            queues: queues.into_iter().map(Into::into).collect(),
            name: format!("{}:{}", hostname(), std::process::id()),
            concurrency: 10,
            prefetch: 0,
            poll_wait: Duration::from_secs(2),
            job_timeout: None,
            shutdown_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(1),
            ack_batch_max: 1_000,
            handlers: HashMap::new(),
            fallback: None,
            order: QueueOrder::Priority,
            quiet: Arc::new(watch::channel(false).0),
        }
    }

    /// A handle to quiet the worker (stop leasing, let running jobs finish, stay up) and
    /// to resume it — Sidekiq's TSTP. Take it before [`Worker::run`].
    pub fn controller(&self) -> WorkerController {
        WorkerController {
            quiet: Arc::clone(&self.quiet),
        }
    }

    /// How leases choose among the worker's queues (default: by job priority across all).
    /// `QueueOrder::Weighted(vec![6, 2, 1])` gives one weight per queue, in order.
    pub fn order(mut self, order: QueueOrder) -> Self {
        self.order = order;
        self
    }

    /// Handlers running at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Jobs leased ahead of a free slot, so a slot that frees up starts the next job
    /// without a round trip. Their leases tick (and are heartbeated) while they wait.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// The name the server keeps in each attempt's history (default `host:pid`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long one lease request waits for a job (long-poll), at most 30 s. Shutdown
    /// waits for the poll in flight, so this bounds how long an idle worker takes to stop.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait.min(Duration::from_secs(30));
        self
    }

    /// A handler running longer than this is cancelled ([`CancelReason::TimedOut`]) and
    /// its job failed; the broker retries it after its backoff.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// At shutdown, running handlers get this long to finish; then they are cancelled
    /// and their jobs handed back.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Once a job is cancelled (see [`CancelReason`]) its handler has this long to return
    /// on its own before its task is aborted (default 1 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Registers the handler of job kind `kind`. Its payload is decoded into `T`; a
    /// payload that does not decode fails the job with the decoder's message. `Ok` acks
    /// the job; `Err(e)` fails it with `e` (its `{:#}` form) as the error; a panic fails
    /// it with the panic message, and the worker goes on.
    pub fn handle<T, F, Fut, E>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.handlers.insert(kind.into(), erase(handler));
        self
    }

    /// Registers the handler of every kind that has no handler of its own (without one,
    /// such a job fails with "no handler for kind").
    pub fn handle_any<T, F, Fut, E>(mut self, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.fallback = Some(erase(handler));
        self
    }

    /// Runs until `shutdown` resolves, then stops leasing, lets running handlers finish
    /// within the shutdown timeout, hands back the rest, flushes acks and returns what it
    /// did. Errors only for what retrying cannot fix (e.g. an invalid queue name); while
    /// the server is down or restarting it retries with backoff (100 ms doubling to 5 s).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport, Error> {
        let capacity = self.concurrency + self.prefetch;
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            handlers: self.handlers,
            fallback: self.fallback,
            slots: Semaphore::new(self.concurrency),
            in_flight: AtomicUsize::new(0),
            finished: Notify::new(),
            counters: Counters::default(),
            job_timeout: self.job_timeout,
            cancel_grace: self.cancel_grace,
            stop_tx: watch::channel(false).0,
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let acker = tokio::spawn(acker(
            self.client.clone(),
            done_rx,
            self.ack_batch_max,
            Arc::clone(&shared),
        ));

        // Registration and liveness: a beat now and every BEAT_INTERVAL; the server drops
        // a worker it has not heard from (beats, polls, heartbeats) and ends its leases.
        let beat = WorkerBeat {
            host: Some(hostname()),
            pid: Some(std::process::id()),
            version: Some(format!("sluice-client {}", env!("CARGO_PKG_VERSION"))),
            concurrency: u32::try_from(self.concurrency).ok(),
            queues: self.queues.clone(),
        };
        let beater = {
            let (client, name) = (self.client.clone(), self.name.clone());
            AbortOnDrop(tokio::spawn(async move {
                let mut interval = tokio::time::interval(BEAT_INTERVAL);
                loop {
                    interval.tick().await;
                    if let Err(error) = client.beat_worker(&name, &beat).await {
                        tracing::debug!(%error, "worker beat failed");
                    }
                }
            }))
        };

        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        // The shutdown future is never polled again once it has resolved: every branch
        // that sees it resolve leaves this loop.
        let mut quiet = self.quiet.subscribe();
        let result = 'fetch: loop {
            // Wait until not quieted and there is room, or for the shutdown.
            loop {
                if *quiet.borrow_and_update() {
                    tokio::select! {
                        changed = quiet.changed() => {
                            if changed.is_err() {
                                break 'fetch Ok(());
                            }
                            continue;
                        }
                        () = &mut shutdown => break 'fetch Ok(()),
                    }
                }
                let notified = shared.finished.notified();
                if shared.in_flight.load(Ordering::SeqCst) < capacity {
                    break;
                }
                tokio::select! {
                    () = notified => {}
                    () = &mut shutdown => break 'fetch Ok(()),
                }
            }
            let free = capacity.saturating_sub(shared.in_flight.load(Ordering::SeqCst));
            if free == 0 {
                break Ok(());
            }
            let max_jobs = u32::try_from(free.min(1_000)).unwrap_or(1_000);
            // A shutdown during a poll waits for it to return (at most `poll_wait`):
            // dropping it could strand jobs the server already leased into its reply.
            // Jobs it brings run like the others, within the shutdown timeout (handing
            // them back would spend an attempt, and kill a job on its last one).
            let lease = self.client.lease_in_order(
                &self.queues,
                &self.order,
                max_jobs,
                self.poll_wait,
                Some(&self.name),
                Vec::new(),
            );
            let mut lease = std::pin::pin!(lease);
            let mut stopping = false;
            let polled = tokio::select! {
                polled = &mut lease => polled,
                () = &mut shutdown => {
                    stopping = true;
                    lease.await
                }
            };
            match polled {
                Ok(reply) => {
                    if failures > 0 {
                        tracing::info!("server reachable again");
                    }
                    failures = 0;
                    for leased in reply.jobs {
                        bump(&shared.counters.leased);
                        shared.in_flight.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(run_job(Arc::clone(&shared), leased, done_tx.clone()));
                    }
                    if stopping {
                        break Ok(());
                    }
                }
                Err(_) if stopping => break Ok(()),
                Err(error) if error.is_retryable() => {
                    bump(&shared.counters.lease_errors);
                    failures += 1;
                    let delay = backoff(failures);
                    if failures == 1 {
                        tracing::warn!(%error, "lease failed; retrying with backoff");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => break Ok(()),
                    }
                }
                Err(error) => break Err(error),
            }
        };

        // Shutdown: no more leases; running handlers get the deadline.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.shutdown_timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        loop {
            let notified = shared.finished.notified();
            if shared.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        // Past the deadline: cancel what still runs (and what waits for a slot); each
        // hands its job back and finishes.
        let _ = shared.stop_tx.send(true);
        loop {
            let notified = shared.finished.notified();
            if shared.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        drop(done_tx);
        let _ = acker.await;
        drop(beater);
        // Best effort, briefly: a server that is down forgets the worker by itself.
        let removed = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.remove_worker(&self.name),
        );
        if let Ok(Err(error)) = removed.await {
            tracing::debug!(%error, "worker unregistration failed");
        }
        result.map(|()| shared.counters.report())
    }
}

/// A typed handler as the runtime stores it: decodes the payload, builds the job, boxes
/// the future.
fn erase<T, F, Fut, E>(handler: F) -> ErasedHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    Arc::new(move |leased: LeasedJob, cancel| {
        let payload: T = serde_json::from_str(leased.payload.get())
            .map_err(|e| format!("payload does not decode: {e}"))?;
        let job = Job {
            id: leased.id,
            queue: leased.queue,
            kind: leased.kind,
            payload,
            attempt: leased.attempt,
            max_attempts: leased.max_attempts,
            priority: leased.priority,
            tags: leased.tags,
            enqueued_at: leased.enqueued_at,
            cancel,
        };
        let future = handler(job);
        Ok(Box::pin(async move { future.await.map_err(|e| format!("{e:#}")) }) as HandlerFuture)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// 100 ms doubling to 5 s, with up to 25% jitter.
fn backoff(failures: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << failures.clamp(1, 7).saturating_sub(1))
        .min(5_000);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(base + (base / 4) * (nanos % 1_000) / 1_000)
}

struct Shared {
    client: Client,
    handlers: HashMap<String, ErasedHandler>,
    fallback: Option<ErasedHandler>,
    slots: Semaphore,
    in_flight: AtomicUsize,
    finished: Notify,
    counters: Counters,
    job_timeout: Option<Duration>,
    cancel_grace: Duration,
    /// true once the shutdown deadline passed.
    stop_tx: watch::Sender<bool>,
}

/// How a job ended, for the acker.
enum Done {
    Ack(AckItem),
    Fail(FailItem),
}

/// Decrements the in-flight count when a job task ends, however it ends.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.notify_waiters();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Heartbeats every third of the lease until the job ends; a refused heartbeat (the
/// lease is gone: cancelled, or expired) cancels the job.
async fn heartbeat(
    client: Client,
    id: String,
    lease_id: String,
    lease_ms: u64,
    cancel: Arc<watch::Sender<Option<CancelReason>>>,
) {
    // Each heartbeat extends the lease by its length: a third of it leaves two tries.
    let every = Duration::from_millis((lease_ms / 3).clamp(100, 10_000));
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        match client.heartbeat(&id, &lease_id, None).await {
            Ok(_) => wait = every,
            Err(error) if error.is_retryable() => {
                // Try again soon rather than a whole interval later.
                tracing::debug!(%error, id, "heartbeat failed; retrying");
                wait = every.min(Duration::from_secs(1));
            }
            Err(error) => {
                tracing::warn!(%error, id, "lease lost; cancelling the job");
                cancel.send_if_modified(|reason| {
                    let unset = reason.is_none();
                    if unset {
                        *reason = Some(CancelReason::LeaseLost);
                    }
                    unset
                });
                return;
            }
        }
    }
}

/// How a handler run ended, other than with `Ok`.
enum Ended {
    Failed(String),
    Panicked(String),
    TimedOut(String),
    /// Cancelled at the shutdown deadline: hand the job back.
    Released,
    LeaseLost,
}

async fn run_job(shared: Arc<Shared>, leased: LeasedJob, done: mpsc::UnboundedSender<Done>) {
    let _in_flight = InFlight(Arc::clone(&shared));
    let id = leased.id.clone();
    let lease_id = leased.lease_id.clone();
    // The lease length from the server; an older server does not send it, and then the
    // time left on the lease (which trusts the local clock) stands in.
    let lease_ms = match leased.timeout_ms {
        0 => rfc3339::parse_ms(&leased.lease_expires_at).map_or(30_000, |expires| {
            u64::try_from(expires - now_ms()).unwrap_or(1_000)
        }),
        timeout_ms => timeout_ms,
    };
    let cancel = Arc::new(watch::channel(None::<CancelReason>).0);
    let beat = tokio::spawn(heartbeat(
        shared.client.clone(),
        id.clone(),
        lease_id.clone(),
        lease_ms,
        Arc::clone(&cancel),
    ));
    let mut stop = shared.stop_tx.subscribe();

    // Wait for a slot (prefetched jobs wait here), unless the shutdown deadline or the end
    // of the lease comes first.
    let mut lost = cancel.subscribe();
    let permit = tokio::select! {
        permit = shared.slots.acquire() => permit.ok(),
        _ = stop.wait_for(|stopped| *stopped) => None,
        _ = lost.wait_for(Option::is_some) => None,
    };
    let outcome = match permit {
        None if cancel.borrow().is_some() => Err(Ended::LeaseLost),
        None => Err(Ended::Released),
        Some(_permit) => match shared
            .handlers
            .get(&leased.kind)
            .or(shared.fallback.as_ref())
        {
            None => Err(Ended::Failed(format!(
                "no handler for kind {:?} in this worker",
                leased.kind
            ))),
            Some(handler) => match handler(leased, cancel.subscribe()) {
                Err(message) => Err(Ended::Failed(message)),
                Ok(future) => run_handler(&shared, future, &cancel, &mut stop).await,
            },
        },
    };
    beat.abort();
    let counters = &shared.counters;
    let fail = |error: String, retry_now: bool| {
        Done::Fail(FailItem {
            id: id.clone(),
            lease_id: lease_id.clone(),
            // The server keeps 4 KiB of it; a huge message must not sink the whole batch.
            error: truncate_utf8(&error, limits::ERROR_BYTES_MAX).to_owned(),
            retry_at: retry_now.then(|| rfc3339::format_ms(now_ms())),
        })
    };
    let finished = match outcome {
        Ok(()) => {
            bump(&counters.succeeded);
            Done::Ack(AckItem {
                id: id.clone(),
                lease_id: lease_id.clone(),
            })
        }
        Err(Ended::LeaseLost) => {
            // The job may be running elsewhere: its result here no longer counts.
            bump(&counters.lease_lost);
            return;
        }
        Err(Ended::Failed(message)) => {
            bump(&counters.failed);
            fail(message, false)
        }
        Err(Ended::Panicked(message)) => {
            bump(&counters.panicked);
            fail(message, false)
        }
        Err(Ended::TimedOut(message)) => {
            bump(&counters.timed_out);
            fail(message, false)
        }
        Err(Ended::Released) => {
            bump(&counters.released);
            fail("worker shut down before the job finished".into(), true)
        }
    };
    let _ = done.send(finished);
}

/// Runs the handler in its own task (a panic fails the job, not the worker) against the
/// job timeout, the shutdown deadline and the loss of the lease. On each of those the
/// job's cancellation is signalled, and the handler's task is aborted unless it returns
/// within the cancel grace.
async fn run_handler(
    shared: &Shared,
    future: HandlerFuture,
    cancel: &watch::Sender<Option<CancelReason>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Ended> {
    let mut task = tokio::spawn(future);
    let timeout = async {
        match shared.job_timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let mut lost = cancel.subscribe();
    let ended = tokio::select! {
        joined = &mut task => {
            // A handler that returned because its lease was lost (it watched
            // `cancelled()`) has no result that counts, however it returned.
            if matches!(*cancel.borrow(), Some(CancelReason::LeaseLost)) {
                return Err(Ended::LeaseLost);
            }
            return match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(Ended::Failed(message)),
                Err(error) if error.is_panic() => Err(Ended::Panicked(format!(
                    "handler panicked: {}",
                    panic_message(error.into_panic())
                ))),
                Err(_) => Err(Ended::Failed("handler task was cancelled".into())),
            };
        }
        () = timeout => {
            let ms = shared.job_timeout.map_or(0, |t| t.as_millis());
            (CancelReason::TimedOut, Ended::TimedOut(format!("timed out after {ms} ms")))
        }
        _ = stop.wait_for(|stopped| *stopped) => (CancelReason::ShuttingDown, Ended::Released),
        _ = lost.wait_for(Option::is_some) => (CancelReason::LeaseLost, Ended::LeaseLost),
    };
    let (reason, ended) = ended;
    cancel.send_if_modified(|current| {
        let unset = current.is_none();
        if unset {
            *current = Some(reason);
        }
        unset
    });
    // A handler that watches its cancellation gets a moment to stop on its own (and
    // clean up); then it is aborted. Its result is not used either way.
    if tokio::time::timeout(shared.cancel_grace, &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
    Err(ended)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Sends acks and fails in batches: whatever finished while the previous batch was on
/// the wire goes in the next. Retries a batch with backoff while the server is down, for
/// up to about a minute; after that the leases expire and the broker retries the jobs.
async fn acker(
    client: Client,
    mut done: mpsc::UnboundedReceiver<Done>,
    batch_max: usize,
    shared: Arc<Shared>,
) {
    while let Some(first) = done.recv().await {
        let mut acks = Vec::new();
        let mut fails = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Done::Ack(ack) => acks.push(ack),
                Done::Fail(fail) => fails.push(fail),
            }
            if acks.len() + fails.len() < batch_max {
                next = done.try_recv().ok();
            }
        }
        if !acks.is_empty() {
            let results = with_retry("ack", || client.ack_batch(acks.clone())).await;
            count_results(&shared, acks.len(), results);
        }
        if !fails.is_empty() {
            let results = with_retry("fail", || client.fail_batch(fails.clone())).await;
            count_results(&shared, fails.len(), results);
        }
    }
}

fn count_results(shared: &Shared, sent: usize, results: Option<Vec<sluice_proto::ItemResult>>) {
    match results {
        Some(results) => {
            for result in results {
                if result.error.is_some() {
                    bump(&shared.counters.stale);
                }
            }
        }
        None => {
            shared
                .counters
                .undelivered
                .fetch_add(sent as u64, Ordering::Relaxed);
        }
    }
}

async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    for failures in 1..=16u32 {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) if error.is_retryable() => {
                tracing::debug!(%error, "{what} batch failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "{what} batch refused");
                return None;
            }
        }
    }
    tracing::warn!(
        "{what} batch dropped after 16 tries; the leases will expire and the jobs run again"
    );
    None
}
