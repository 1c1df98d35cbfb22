//! Crash test: the real `sluice` binary under concurrent load, killed with SIGKILL at a
//! random moment, restarted on the same data directory, and checked against what its
//! clients were told with 2xx replies. The kill cycles run once with `--fsync always` and
//! once with `--fsync batch --fsync-interval-ms 20` (see [`Mode`]): in both a 2xx means at
//! least "written to the OS", which a killed process cannot take back. A third test stops
//! the server with SIGTERM under load.
//!
//! Replay a failure with the seed it prints: `SLUICE_CRASH_SEED=<seed>`.
//! Long mode: `SLUICE_CRASH_CYCLES=500 cargo test -p sluice --test crash -j2 -- sigkill`
//! (default 20 cycles per mode; add `always` or `batch` to the filter for one mode).
//!
//! What a 2xx promised, and so what must hold after every restart:
//! - an enqueued job exists (`GET /v1/jobs/{id}` is 200) in its queue with its payload;
//! - an acked job is `succeeded`, its acked attempt closed as `succeeded`;
//! - a failed job is not lost (failed, ready, leased, dead or succeeded) and its failed
//!   attempt is in its history as `failed`;
//! - a leased attempt is recorded (the job's attempts reached it, the history holds it);
//! - a lease that has not expired still belongs to its holder (ack gives 2xx, not 409);
//! - lease ids and job ids handed out are never handed out again;
//! - each queue's counts equal the jobs found by listing every state, each job once.
//!
//! Always: no 5xx, no transport error while the server is meant to be up, no "panicked"
//! in the server's stderr. A request cut by the kill has an unknown outcome: either is fine.

mod support;

use support::Server;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sluice_proto::{
    BatchResultResponse, EnqueueBatchResponse, EnqueueResult, ItemResult, Job, JobList, JobState,
    LeaseResponse, QueueInfo, StateCounts,
};

const QUEUES: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
const PRODUCERS: usize = 2;
const WORKERS: usize = 3;
const BATCH_LEN: usize = 50;
/// Producers hold off while this many enqueued jobs have never been leased, so that the
/// workers keep up and most jobs see the whole life cycle within a run.
const BACKLOG_MAX: usize = 1_500;
/// A 409 stale lease is only acceptable once the lease is this close to its expiry.
const EXPIRY_SLACK_MS: i64 = 250;
/// Histories keep the newest 25 attempts; jobs here have at most 4.
const MAX_ATTEMPTS_MAX: u64 = 4;
/// Each check GETs every job touched since the previous check and this many others (the
/// listing covers all of them anyway), so that the GETs of long runs stay linear.
const GET_SAMPLE_OLD: usize = 1_000;
/// Kill cycles per mode unless `SLUICE_CRASH_CYCLES` says otherwise.
const CYCLES_DEFAULT: u32 = 20;
/// The load runs this long (uniformly, in ms) before each SIGKILL. Short, so that many
/// cycles fit in CI and the state (which every check lists in full) grows slowly; the kill
/// still lands at an arbitrary point of a busy server: the first batches are written
/// within milliseconds of the load starting.
const RUN_MS: (u64, u64) = (50, 450);

/// How the server is started: its durability policy. In each, a 2xx means the record was
/// at least written to the OS, so a SIGKILL must lose nothing acknowledged.
#[derive(Clone, Copy, Debug)]
struct Mode {
    name: &'static str,
    args: &'static [&'static str],
}

const FSYNC_ALWAYS: Mode = Mode {
    name: "fsync always",
    args: &["--fsync", "always"],
};

/// A power loss may lose up to the last interval of acknowledged records in this mode;
/// SIGKILL cannot produce that (the page cache survives it), so it is not tested here.
const FSYNC_BATCH: Mode = Mode {
    name: "fsync batch 20 ms",
    args: &["--fsync", "batch", "--fsync-interval-ms", "20"],
};

// ---- seeded randomness ------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// xorshift64.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Inclusive on both ends.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }
}

fn seed() -> u64 {
    match std::env::var("SLUICE_CRASH_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .expect("SLUICE_CRASH_SEED must be an unsigned integer"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

fn cycles() -> u32 {
    std::env::var("SLUICE_CRASH_CYCLES").map_or(CYCLES_DEFAULT, |text| {
        text.trim()
            .parse()
            .expect("SLUICE_CRASH_CYCLES must be an unsigned integer")
    })
}

/// A full check (listing every job) after every `n`th kill, light checks (the jobs touched
/// since the last check and a sample) after the others; the last check is always full.
/// Default 1: every check is full. Long runs set `SLUICE_CRASH_FULL_EVERY` so that their
/// time grows linearly rather than with the square of the cycles.
fn full_every() -> u32 {
    std::env::var("SLUICE_CRASH_FULL_EVERY").map_or(1, |text| {
        text.trim()
            .parse::<u32>()
            .expect("SLUICE_CRASH_FULL_EVERY must be an unsigned integer")
            .max(1)
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---- what the clients were told ------------------------------------------------------

#[derive(Clone)]
struct Sent {
    queue: String,
    payload: Value,
}

#[derive(Clone)]
struct Held {
    id: String,
    lease_id: String,
    attempt: u32,
    expires_at: i64,
    /// Which server process handed it out.
    life: u32,
}

#[derive(Default, Clone, Copy, Debug)]
struct Stats {
    enqueued: usize,
    leased: usize,
    acked: usize,
    failed: usize,
    stale: usize,
    unknown: usize,
    /// Acks and fails with 2xx of leases handed out by an earlier server process.
    carried: usize,
}

#[derive(Default)]
struct Ledger {
    /// Jobs whose enqueue got a 2xx, by id.
    enqueued: HashMap<String, Sent>,
    /// Jobs in enqueue requests with an unknown outcome: they may or may not exist.
    unknown_enqueue_jobs: usize,
    /// `(job, attempt)` of every job a 2xx lease reply handed out.
    leased: Vec<(String, u32)>,
    /// Lease id -> the lease call that got it.
    lease_calls: HashMap<String, u64>,
    next_lease_call: u64,
    /// Job -> the attempt whose ack got a 2xx.
    acked: HashMap<String, u32>,
    /// `(job, attempt)` of every fail that got a 2xx.
    failed: Vec<(String, u32)>,
    /// Leases taken and neither acked nor failed yet; any worker may settle them later,
    /// also after a restart.
    held: Vec<Held>,
    /// Jobs enqueued, leased, acked or failed since the last check.
    fresh: HashSet<String>,
    /// Jobs leased for their first attempt: the backlog is `stats.enqueued` minus this.
    first_leases: usize,
    stats: Stats,
    problems: Vec<String>,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    base: String,
    /// Set just before the server is killed or told to stop: from then on, transport
    /// errors are expected and mean "unknown outcome".
    dying: Arc<AtomicBool>,
    /// Load tasks stop at their next turn.
    stop: Arc<AtomicBool>,
    /// Woken when workers took jobs: producers waiting for the backlog to shrink.
    leased: Arc<tokio::sync::Notify>,
    ledger: Arc<Mutex<Ledger>>,
    /// Counts server processes: 0 for the first.
    life: u32,
}

enum Reply {
    /// 2xx with its status and body.
    Ok(u16, Vec<u8>),
    /// 4xx (5xx are recorded as problems and also land here).
    Rejected(u16, Vec<u8>),
    /// No reply: the request may or may not have taken effect.
    Unknown,
}

impl Ctx {
    fn new(base: &str, ledger: Arc<Mutex<Ledger>>, life: u32) -> Ctx {
        Ctx {
            http: http_client(),
            base: base.to_owned(),
            dying: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            leased: Arc::new(tokio::sync::Notify::new()),
            ledger,
            life,
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    fn problem(&self, text: String) {
        self.ledger().problems.push(text);
    }

    fn dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Reply {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return self.transport_error(what, &error),
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(error) => return self.transport_error(what, &error),
        };
        if status >= 500 {
            self.problem(format!(
                "{what}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if (200..300).contains(&status) {
            Reply::Ok(status, body)
        } else {
            Reply::Rejected(status, body)
        }
    }

    fn transport_error(&self, what: &str, error: &reqwest::Error) -> Reply {
        if !self.dying() {
            self.problem(format!(
                "{what}: transport error while the server was up: {error}"
            ));
        }
        self.ledger().stats.unknown += 1;
        Reply::Unknown
    }

    async fn post(&self, what: &str, path: &str, body: &Value) -> Reply {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(what, request).await
    }

    async fn get(&self, what: &str, path: &str) -> Reply {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(what, request).await
    }

    fn parse<T: DeserializeOwned>(&self, what: &str, body: &[u8]) -> Option<T> {
        match serde_json::from_slice(body) {
            Ok(value) => Some(value),
            Err(error) => {
                self.problem(format!(
                    "{what}: undecodable 2xx body ({error}): {}",
                    String::from_utf8_lossy(body)
                ));
                None
            }
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---- load -------------------------------------------------------------------------

fn job_spec(rng: &mut Rng, producer: usize, seq: u64) -> (Sent, Value) {
    let queue = QUEUES[rng.below(QUEUES.len() as u64) as usize].to_owned();
    let payload =
        json!({ "producer": producer, "seq": seq, "pad": "x".repeat(rng.below(64) as usize) });
    let mut spec = json!({
        "queue": queue,
        "kind": "crash.test",
        "payload": payload,
        "priority": rng.range(0, 4) as i64 - 2,
        "max_attempts": rng.range(1, MAX_ATTEMPTS_MAX),
        "backoff": { "type": "fixed", "delay_ms": rng.range(0, 300) },
        // Some leases expire during the run (and across restarts), most do not.
        "timeout_ms": if rng.chance(10) { 1_000 } else { 30_000 },
    });
    if rng.chance(10) {
        spec["delay_ms"] = json!(rng.range(1, 500));
    }
    (Sent { queue, payload }, spec)
}

async fn producer(ctx: Ctx, mut rng: Rng, who: usize) {
    let mut seq = 0u64;
    while !ctx.stopping() {
        // Wait (on a condition, re-checked on every wake-up) while the backlog is full.
        let wake = ctx.leased.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let backlog = {
            let ledger = ctx.ledger();
            ledger.stats.enqueued.saturating_sub(ledger.first_leases)
        };
        if backlog > BACKLOG_MAX {
            // Time out now and then to see `stop`, and in case every ready job is gone
            // (delayed jobs only, or leases lost to a kill).
            let _ = tokio::time::timeout(Duration::from_millis(100), wake).await;
            continue;
        }
        let len = if rng.chance(50) { 1 } else { BATCH_LEN };
        let mut sent = Vec::with_capacity(len);
        let mut specs = Vec::with_capacity(len);
        for _ in 0..len {
            let (s, spec) = job_spec(&mut rng, who, seq);
            seq += 1;
            sent.push(s);
            specs.push(spec);
        }
        let reply = if len == 1 {
            ctx.post("enqueue", "/v1/jobs", &specs[0]).await
        } else {
            ctx.post("enqueue batch", "/v1/jobs/batch", &json!({ "jobs": specs }))
                .await
        };
        let ids: Vec<EnqueueResult> = match reply {
            Reply::Ok(201, body) if len == 1 => ctx
                .parse::<EnqueueResult>("enqueue", &body)
                .into_iter()
                .collect(),
            Reply::Ok(201, body) => ctx
                .parse::<EnqueueBatchResponse>("enqueue batch", &body)
                .map_or_else(Vec::new, |r| r.jobs),
            Reply::Ok(status, body) | Reply::Rejected(status, body) => {
                ctx.problem(format!(
                    "enqueue of {len}: unexpected {status} {}",
                    String::from_utf8_lossy(&body)
                ));
                continue;
            }
            Reply::Unknown => {
                ctx.ledger().unknown_enqueue_jobs += len;
                if ctx.dying() {
                    break;
                }
                continue;
            }
        };
        let mut ledger = ctx.ledger();
        if ids.len() != len {
            ledger
                .problems
                .push(format!("enqueue of {len} answered {} ids", ids.len()));
        }
        for (result, sent) in ids.into_iter().zip(sent) {
            if result.duplicate {
                ledger.problems.push(format!(
                    "job {} reported duplicate without a unique key",
                    result.id
                ));
            }
            ledger.fresh.insert(result.id.clone());
            if ledger.enqueued.insert(result.id.clone(), sent).is_some() {
                ledger.problems.push(format!(
                    "job id {} handed out by two enqueues that both got 2xx",
                    result.id
                ));
            }
            ledger.stats.enqueued += 1;
        }
    }
}

/// Records the outcome of settling `held` that the server refused: 409 is fine once the
/// lease is (about to be) expired, anything else is a problem.
fn refused(ctx: &Ctx, what: &str, held: &Held, status: u16, code: &str, message: &str) {
    let now = now_ms();
    if status == 409 && code == "stale_lease" && now + EXPIRY_SLACK_MS >= held.expires_at {
        ctx.ledger().stats.stale += 1;
        return;
    }
    ctx.problem(format!(
        "{what} of job {} attempt {} (lease {} expires in {} ms): {status} {code} {message}",
        held.id,
        held.attempt,
        held.lease_id,
        held.expires_at - now
    ));
}

fn record_ack(ctx: &Ctx, held: &Held, state: Option<JobState>) {
    let mut ledger = ctx.ledger();
    ledger.fresh.insert(held.id.clone());
    if held.life < ctx.life {
        ledger.stats.carried += 1;
    }
    if state != Some(JobState::Succeeded) {
        ledger.problems.push(format!(
            "ack of job {} answered 2xx with state {state:?}",
            held.id
        ));
    }
    if let Some(before) = ledger.acked.insert(held.id.clone(), held.attempt) {
        ledger.problems.push(format!(
            "job {} acked twice with 2xx (attempts {before} and {})",
            held.id, held.attempt
        ));
    }
    ledger.stats.acked += 1;
}

async fn ack_one(ctx: &Ctx, held: &Held) {
    let path = format!("/v1/jobs/{}/ack", held.id);
    match ctx
        .post("ack", &path, &json!({ "lease_id": held.lease_id }))
        .await
    {
        Reply::Ok(_, body) => {
            if let Some(item) = ctx.parse::<ItemResult>("ack", &body) {
                record_ack(ctx, held, item.state);
            }
        }
        Reply::Rejected(status, body) => refused(
            ctx,
            "ack",
            held,
            status,
            &error_code(&body),
            &String::from_utf8_lossy(&body),
        ),
        Reply::Unknown => {}
    }
}

async fn fail_one(ctx: &Ctx, held: &Held) {
    let path = format!("/v1/jobs/{}/fail", held.id);
    let body = json!({ "lease_id": held.lease_id, "error": "crash test says no" });
    match ctx.post("fail", &path, &body).await {
        Reply::Ok(_, body) => {
            if let Some(item) = ctx.parse::<ItemResult>("fail", &body) {
                let mut ledger = ctx.ledger();
                if !matches!(
                    item.state,
                    Some(JobState::Failed | JobState::Ready | JobState::Dead)
                ) {
                    ledger.problems.push(format!(
                        "fail of job {} answered 2xx with state {:?}",
                        held.id, item.state
                    ));
                }
                ledger.fresh.insert(held.id.clone());
                if held.life < ctx.life {
                    ledger.stats.carried += 1;
                }
                ledger.failed.push((held.id.clone(), held.attempt));
                ledger.stats.failed += 1;
            }
        }
        Reply::Rejected(status, body) => refused(
            ctx,
            "fail",
            held,
            status,
            &error_code(&body),
            &String::from_utf8_lossy(&body),
        ),
        Reply::Unknown => {}
    }
}

async fn ack_batch(ctx: &Ctx, batch: &[Held]) {
    if batch.is_empty() {
        return;
    }
    let acks: Vec<Value> = batch
        .iter()
        .map(|h| json!({ "id": h.id, "lease_id": h.lease_id }))
        .collect();
    match ctx
        .post("batch ack", "/v1/ack", &json!({ "acks": acks }))
        .await
    {
        Reply::Ok(_, body) => {
            let Some(reply) = ctx.parse::<BatchResultResponse>("batch ack", &body) else {
                return;
            };
            if reply.results.len() != batch.len() {
                ctx.problem(format!(
                    "batch ack of {} answered {} results",
                    batch.len(),
                    reply.results.len()
                ));
                return;
            }
            for (held, item) in batch.iter().zip(reply.results) {
                if item.id != held.id {
                    ctx.problem(format!(
                        "batch ack results out of order: {} for {}",
                        item.id, held.id
                    ));
                    continue;
                }
                match item.error {
                    None => record_ack(ctx, held, item.state),
                    Some(error) => refused(
                        ctx,
                        "batch ack item",
                        held,
                        409,
                        &error.code,
                        &error.message,
                    ),
                }
            }
        }
        Reply::Rejected(status, body) => ctx.problem(format!(
            "batch ack of {}: {status} {}",
            batch.len(),
            String::from_utf8_lossy(&body)
        )),
        Reply::Unknown => {}
    }
}

async fn worker(ctx: Ctx, mut rng: Rng, who: usize) {
    let name = format!("crash-worker-{who}");
    while !ctx.stopping() {
        // Now and then settle leases someone took earlier, perhaps before a restart.
        if rng.chance(15) {
            let picked: Vec<Held> = {
                let mut ledger = ctx.ledger();
                (0..rng.range(1, 5))
                    .filter_map(|_| {
                        if ledger.held.is_empty() {
                            return None;
                        }
                        let i = rng.below(ledger.held.len() as u64) as usize;
                        Some(ledger.held.swap_remove(i))
                    })
                    .collect()
            };
            for held in &picked {
                if rng.chance(75) {
                    ack_one(&ctx, held).await;
                } else {
                    fail_one(&ctx, held).await;
                }
            }
            if !picked.is_empty() {
                continue;
            }
        }
        let max_jobs = rng.range(1, 20);
        let request =
            json!({ "queues": QUEUES, "max_jobs": max_jobs, "wait_ms": 100, "worker": name });
        let jobs = match ctx.post("lease", "/v1/lease", &request).await {
            Reply::Ok(_, body) => match ctx.parse::<LeaseResponse>("lease", &body) {
                Some(reply) => reply.jobs,
                None => continue,
            },
            Reply::Rejected(status, body) => {
                ctx.problem(format!(
                    "lease: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
                continue;
            }
            Reply::Unknown if ctx.dying() => break,
            Reply::Unknown => continue,
        };
        let mut taken = Vec::with_capacity(jobs.len());
        {
            let mut ledger = ctx.ledger();
            if jobs.len() as u64 > max_jobs {
                ledger
                    .problems
                    .push(format!("lease of max {max_jobs} handed out {}", jobs.len()));
            }
            let call = ledger.next_lease_call;
            ledger.next_lease_call += 1;
            for job in jobs {
                let previous = ledger.lease_calls.insert(job.lease_id.clone(), call);
                if previous.is_some_and(|p| p != call) {
                    ledger.problems.push(format!(
                        "lease id {} handed out by two lease calls",
                        job.lease_id
                    ));
                }
                let Some(expires_at) = sluice_proto::rfc3339::parse_ms(&job.lease_expires_at)
                else {
                    ledger.problems.push(format!(
                        "job {}: lease_expires_at {:?} is not RFC 3339",
                        job.id, job.lease_expires_at
                    ));
                    continue;
                };
                ledger.fresh.insert(job.id.clone());
                ledger.leased.push((job.id.clone(), job.attempt));
                ledger.stats.leased += 1;
                if job.attempt == 1 {
                    ledger.first_leases += 1;
                }
                taken.push(Held {
                    id: job.id,
                    lease_id: job.lease_id,
                    attempt: job.attempt,
                    expires_at,
                    life: ctx.life,
                });
            }
        }
        ctx.leased.notify_waiters();
        let mut batch = Vec::new();
        for held in taken {
            match rng.below(100) {
                0..=34 => batch.push(held),
                35..=69 => ack_one(&ctx, &held).await,
                70..=89 => fail_one(&ctx, &held).await,
                _ => ctx.ledger().held.push(held),
            }
        }
        ack_batch(&ctx, &batch).await;
    }
}

struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(ctx: &Ctx, rng: &mut Rng) -> Load {
    let mut tasks = Vec::new();
    for who in 0..PRODUCERS {
        tasks.push(tokio::spawn(producer(ctx.clone(), rng.fork(), who)));
    }
    for who in 0..WORKERS {
        tasks.push(tokio::spawn(worker(ctx.clone(), rng.fork(), who)));
    }
    Load { tasks }
}

impl Load {
    /// Stops the tasks; each must notice within the deadline (requests time out at 10 s).
    async fn stop(self, ctx: &Ctx) {
        ctx.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a load task did not stop within 20 s")
                .expect("a load task panicked");
        }
    }
}

// ---- checking -------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Checked {
    jobs_listed: usize,
    enqueued: usize,
    acked: usize,
    failed: usize,
    leased: usize,
    fetched: usize,
    /// Listings taken until the counts held still around one (leases expire meanwhile).
    views: usize,
    /// Time spent listing (with the counts around it) and fetching one by one.
    list_ms: u128,
    get_ms: u128,
}

fn counts_of(counts: &StateCounts) -> [u64; 7] {
    [
        counts.scheduled,
        counts.ready,
        counts.leased,
        counts.succeeded,
        counts.failed,
        counts.dead,
        counts.cancelled,
    ]
}

async fn queue_counts(ctx: &Ctx, q: usize) -> Result<Option<[u64; 7]>, String> {
    let queue = QUEUES[q];
    let what = format!("GET queue {queue}");
    match ctx.get(&what, &format!("/v1/queues/{queue}")).await {
        Reply::Ok(_, body) => {
            let info: QueueInfo = ctx.parse(&what, &body).ok_or(what.clone())?;
            Ok(Some(counts_of(&info.counts)))
        }
        Reply::Rejected(404, _) => Ok(None),
        Reply::Rejected(status, body) => Err(format!(
            "{what}: {status} {}",
            String::from_utf8_lossy(&body)
        )),
        Reply::Unknown => Err(format!("{what}: no reply")),
    }
}

/// Every job of queue `q`, read by listing each state with cursor paging:
/// `(queue index, listed state, job)`.
async fn list_queue(ctx: &Ctx, q: usize) -> Result<Vec<(usize, JobState, Job)>, String> {
    let queue = QUEUES[q];
    let mut out = Vec::new();
    for state in JobState::ALL {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!(
                "/v1/queues/{queue}/jobs?state={}&limit=1000",
                state.as_str()
            );
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let what = format!("list {queue} {}", state.as_str());
            let page: JobList = match ctx.get(&what, &path).await {
                Reply::Ok(_, body) => ctx.parse(&what, &body).ok_or(what.clone())?,
                Reply::Rejected(status, body) => {
                    return Err(format!(
                        "{what}: {status} {}",
                        String::from_utf8_lossy(&body)
                    ))
                }
                Reply::Unknown => return Err(format!("{what}: no reply")),
            };
            out.extend(page.jobs.into_iter().map(|job| (q, state, job)));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(out)
}

/// A view of queue `q` in which nothing moved: its counts before and after the listing
/// agree. Leases expire and delayed jobs come due meanwhile (the tick), so the view is
/// taken again until one is still. Jobs never change queue, so each queue's view may be
/// taken at its own moment.
async fn still_view(
    ctx: &Ctx,
    q: usize,
    deadline: Instant,
    views: &mut usize,
) -> Result<(Option<[u64; 7]>, Vec<(usize, JobState, Job)>), String> {
    loop {
        *views += 1;
        let before = queue_counts(ctx, q).await?;
        let listed = match before {
            Some(_) => list_queue(ctx, q).await?,
            None => Vec::new(),
        };
        let after = queue_counts(ctx, q).await?;
        if before == after {
            return Ok((before, listed));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "queue {}: counts never held still for a listing in 30 s",
                QUEUES[q]
            ));
        }
    }
}

fn has_attempt(job: &Job, attempt: u32, outcome: Option<&str>) -> bool {
    job.history
        .iter()
        .any(|a| a.attempt == attempt && (outcome.is_none() || a.outcome.as_deref() == outcome))
}

/// Checks the server (idle: no load running) against the ledger. Returns the problems.
async fn verify(ctx: &Ctx, rng: &mut Rng, full: bool) -> (Checked, Vec<String>) {
    let mut problems = Vec::new();
    let mut checked = Checked::default();

    // Full: every job, from a listing of every state of every queue.
    let mut found: HashMap<String, (usize, Job)> = HashMap::new();
    if full {
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut counts = Vec::with_capacity(QUEUES.len());
        let mut listed = Vec::new();
        for q in 0..QUEUES.len() {
            match still_view(ctx, q, deadline, &mut checked.views).await {
                Ok((c, l)) => {
                    counts.push(c);
                    listed.extend(l);
                }
                Err(e) => return (checked, vec![e]),
            }
        }
        checked.jobs_listed = listed.len();
        checked.list_ms = started.elapsed().as_millis();
        found.reserve(listed.len());
        check_listing(listed, &counts, &mut found, &mut problems);
    }

    let (enqueued, unknown_jobs, acked, failed, leased, fresh) = {
        let mut ledger = ctx.ledger();
        let fresh = std::mem::take(&mut ledger.fresh);
        (
            ledger.enqueued.clone(),
            ledger.unknown_enqueue_jobs,
            ledger.acked.clone(),
            ledger.failed.clone(),
            ledger.leased.clone(),
            fresh,
        )
    };

    // Each job answers on its own URL: all that changed since the last check, and a
    // sample of the others.
    let mut ids: Vec<String> = Vec::new();
    let mut old: Vec<&String> = Vec::new();
    for id in enqueued.keys() {
        if fresh.contains(id) {
            ids.push(id.clone());
        } else {
            old.push(id);
        }
    }
    for _ in 0..GET_SAMPLE_OLD.min(old.len()) {
        let i = rng.below(old.len() as u64) as usize;
        ids.push(old.swap_remove(i).clone());
    }
    let started = Instant::now();
    let fetched = fetch_jobs(ctx, &ids, &mut problems).await;
    checked.fetched = ids.len();
    checked.get_ms = started.elapsed().as_millis();
    if !full {
        // Light: the ledger is checked against the jobs fetched one by one.
        for (id, job) in fetched {
            match QUEUES.iter().position(|&q| q == job.queue) {
                Some(q) => {
                    found.insert(id, (q, job));
                }
                None => problems.push(format!("job {id} is in unknown queue {}", job.queue)),
            }
        }
    } else {
        // Jobs nobody was told about can only come from enqueues with an unknown outcome.
        let strangers = found
            .keys()
            .filter(|id| !enqueued.contains_key(*id))
            .count();
        if strangers > unknown_jobs {
            problems.push(format!(
                "{strangers} jobs exist that no 2xx enqueue returned, but only {unknown_jobs} \
                 were in enqueues with an unknown outcome"
            ));
        }
    }
    // A full check reports any ledger entry missing from the listing; a light one looks
    // only at what it fetched (a fetched job that is gone was reported by the GET).
    let lookup = |what: &str, id: &str, problems: &mut Vec<String>| -> Option<Job> {
        match found.get(id) {
            Some((_, job)) => Some(job.clone()),
            None => {
                if full {
                    problems.push(format!("job {id} ({what} got 2xx) is lost"));
                }
                None
            }
        }
    };

    // Every 2xx-enqueued job is there, where it was put, with what it was given.
    for (id, sent) in &enqueued {
        let Some(job) = lookup("enqueue", id, &mut problems) else {
            continue;
        };
        checked.enqueued += 1;
        if job.queue != sent.queue {
            problems.push(format!(
                "job {id} was enqueued to {} but is in {}",
                sent.queue, job.queue
            ));
        }
        let payload: Result<Value, _> = serde_json::from_str(job.payload.get());
        if payload.as_ref().ok() != Some(&sent.payload) {
            problems.push(format!(
                "job {id}: payload {} is not what was sent ({})",
                job.payload.get(),
                sent.payload
            ));
        }
    }

    for (id, attempt) in &acked {
        let Some(job) = lookup("ack", id, &mut problems) else {
            continue;
        };
        checked.acked += 1;
        if matches!(job.state, JobState::Ready | JobState::Scheduled) {
            problems.push(format!(
                "job {id} was acked with 2xx but is {} again",
                job.state.as_str()
            ));
        } else if job.state != JobState::Succeeded {
            problems.push(format!(
                "job {id} was acked with 2xx (attempt {attempt}) but is {}",
                job.state.as_str()
            ));
        }
        if !has_attempt(&job, *attempt, Some("succeeded")) {
            problems.push(format!(
                "job {id}: acked attempt {attempt} is not in its history as succeeded: {:?}",
                job.history
            ));
        }
    }

    for (id, attempt) in &failed {
        let Some(job) = lookup("fail", id, &mut problems) else {
            continue;
        };
        checked.failed += 1;
        if !matches!(
            job.state,
            JobState::Failed
                | JobState::Ready
                | JobState::Leased
                | JobState::Dead
                | JobState::Succeeded
        ) {
            problems.push(format!(
                "job {id} failed with 2xx is {}",
                job.state.as_str()
            ));
        }
        if job.attempts < *attempt || !has_attempt(&job, *attempt, Some("failed")) {
            problems.push(format!(
                "job {id}: failed attempt {attempt} is not recorded (attempts {}, history {:?})",
                job.attempts, job.history
            ));
        }
    }

    for (id, attempt) in &leased {
        let Some(job) = lookup("lease", id, &mut problems) else {
            continue;
        };
        checked.leased += 1;
        if job.attempts < *attempt || !has_attempt(&job, *attempt, None) {
            problems.push(format!(
                "job {id}: leased attempt {attempt} is not recorded (attempts {}, history {:?})",
                job.attempts, job.history
            ));
        }
    }

    (checked, problems)
}

/// Counts equal the listing, each job is listed once, in the state it says it is in.
/// Fills `found` with every listed job by id.
fn check_listing(
    listed: Vec<(usize, JobState, Job)>,
    counts: &[Option<[u64; 7]>],
    found: &mut HashMap<String, (usize, Job)>,
    problems: &mut Vec<String>,
) {
    let mut per_state = vec![[0u64; 7]; QUEUES.len()];
    for (q, state, job) in listed {
        let s = JobState::ALL
            .iter()
            .position(|&x| x == state)
            .expect("a state");
        per_state[q][s] += 1;
        if job.state != state {
            problems.push(format!(
                "job {} listed under {} says {}",
                job.id,
                state.as_str(),
                job.state.as_str()
            ));
        }
        if job.queue != QUEUES[q] {
            problems.push(format!(
                "job {} listed in {} says queue {}",
                job.id, QUEUES[q], job.queue
            ));
        }
        if state == JobState::Cancelled {
            problems.push(format!("job {} is cancelled; nobody cancelled it", job.id));
        }
        if let Some((other, _)) = found.insert(job.id.clone(), (q, job)) {
            problems.push(format!("a job is listed twice (also in {})", QUEUES[other]));
        }
    }
    for (q, counts) in counts.iter().enumerate() {
        let counts = counts.unwrap_or_default();
        if counts != per_state[q] {
            problems.push(format!(
                "queue {}: counts {:?} but listing found {:?} (order: {:?})",
                QUEUES[q],
                counts,
                per_state[q],
                JobState::ALL.map(JobState::as_str)
            ));
        }
    }
}

/// `GET /v1/jobs/{id}` for each id, 8 at a time; every one must be 200.
async fn fetch_jobs(ctx: &Ctx, ids: &[String], problems: &mut Vec<String>) -> Vec<(String, Job)> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(8).max(1)) {
        let ctx = ctx.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut missing = Vec::new();
            let mut jobs = Vec::with_capacity(chunk.len());
            for id in chunk {
                let what = format!("GET /v1/jobs/{id}");
                match ctx.get("GET job", &format!("/v1/jobs/{id}")).await {
                    Reply::Ok(200, body) => match ctx.parse::<Job>(&what, &body) {
                        Some(job) => jobs.push((id, job)),
                        None => missing.push(format!("{what}: unreadable body")),
                    },
                    Reply::Ok(status, _) | Reply::Rejected(status, _) => {
                        missing.push(format!("{what}: {status}"))
                    }
                    Reply::Unknown => missing.push(format!("{what}: no reply")),
                }
            }
            (jobs, missing)
        });
    }
    let mut fetched = Vec::with_capacity(ids.len());
    while let Some(done) = tasks.join_next().await {
        let (jobs, missing) = done.expect("a GET task panicked");
        fetched.extend(jobs);
        problems.extend(missing);
    }
    fetched
}

/// The kind of a problem: its text without the words that hold digits (ids, numbers).
fn problem_kind(problem: &str) -> String {
    problem
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(8)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fail_with(seed: u64, context: &str, problems: &[String], log: &str) -> ! {
    // A few of each kind, so one flood does not hide the others.
    let mut per_kind: HashMap<String, usize> = HashMap::new();
    let shown: Vec<&String> = problems
        .iter()
        .filter(|p| {
            let seen = per_kind.entry(problem_kind(p)).or_default();
            *seen += 1;
            *seen <= 5
        })
        .take(60)
        .collect();
    let tail: String = {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    panic!(
        "{context}: {} problem(s) (replay with SLUICE_CRASH_SEED={seed}):\n{}\n\
         --- server stderr (tail) ---\n{tail}",
        problems.len(),
        shown
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn take_problems(ledger: &Arc<Mutex<Ledger>>) -> Vec<String> {
    std::mem::take(&mut ledger.lock().expect("ledger lock").problems)
}

fn check_log(seed: u64, logs: &str) {
    if logs.contains("panicked") {
        fail_with(
            seed,
            "server stderr",
            &["the server panicked".to_owned()],
            logs,
        );
    }
}

/// What stays the same over the server processes of one test.
struct Run<'a> {
    seed: u64,
    dir: &'a Path,
    ledger: &'a Arc<Mutex<Ledger>>,
    mode: Mode,
}

/// Starts the server on `run.dir`, waits for ready, checks it against the ledger (fully or
/// lightly, see [`full_every`]).
async fn restart_and_verify(
    run: &Run<'_>,
    rng: &mut Rng,
    life: u32,
    context: &str,
    full: bool,
) -> (Server, Ctx) {
    let Run {
        seed,
        dir,
        ledger,
        mode,
    } = *run;
    let args: Vec<&str> = mode
        .args
        .iter()
        .copied()
        // Long runs must not have finished jobs forgotten by the count limit.
        .chain([
            "--snapshot-every-records",
            "500",
            "--retention-len-max",
            "100000000",
        ])
        .collect();
    let mut server = Server::start(dir, &args);
    let ctx = Ctx::new(&server.base, ledger.clone(), life);
    server.wait_ready(&ctx.http).await;
    let started = Instant::now();
    let (checked, mut problems) = verify(&ctx, rng, full).await;
    problems.extend(take_problems(ledger));
    println!(
        "{context}: {} check in {} ms: {checked:?}",
        if full { "full" } else { "light" },
        started.elapsed().as_millis()
    );
    if !problems.is_empty() {
        let log = server.kill();
        fail_with(seed, context, &problems, &log);
    }
    (server, ctx)
}

/// Acks every lease still held (all from earlier server processes), then checks again.
async fn settle_held(seed: u64, rng: &mut Rng, server: &mut Server, ctx: &Ctx, context: &str) {
    let held = std::mem::take(&mut ctx.ledger().held);
    let before = ctx.ledger().stats;
    for h in &held {
        ack_one(ctx, h).await;
    }
    let (checked, mut problems) = verify(ctx, rng, true).await;
    problems.extend(take_problems(&ctx.ledger));
    let after = ctx.ledger().stats;
    println!(
        "{context}: settled {} held leases ({} acked, {} stale), checked again: {checked:?}",
        held.len(),
        after.carried - before.carried,
        after.stale - before.stale
    );
    if !problems.is_empty() {
        let log = server.kill();
        fail_with(
            seed,
            &format!("{context}: settling held leases"),
            &problems,
            &log,
        );
    }
}

// ---- the tests ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fsync_always_loses_nothing_acknowledged() {
    sigkill_cycles(FSYNC_ALWAYS, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fsync_batch_loses_nothing_acknowledged() {
    sigkill_cycles(FSYNC_BATCH, 0xba7c_4000).await;
}

/// Starts, loads, SIGKILLs and checks the server `cycles()` times on one data directory,
/// then restarts it once more, checks, settles the leases still held and checks again.
async fn sigkill_cycles(mode: Mode, stream: u64) {
    let seed = seed();
    let cycles = cycles();
    let full_every = full_every();
    let began = Instant::now();
    println!(
        "{}: SLUICE_CRASH_SEED={seed} SLUICE_CRASH_CYCLES={cycles} \
         SLUICE_CRASH_FULL_EVERY={full_every}",
        mode.name
    );
    let mut rng = Rng::new(seed ^ stream);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let run = Run {
        seed,
        dir: dir.path(),
        ledger: &ledger,
        mode,
    };
    let mut checks = 0usize;
    let mut full_checks = 0usize;

    for cycle in 0..cycles {
        let context = format!("{}: cycle {cycle}: after restart", mode.name);
        let full = cycle % full_every == 0;
        let (mut server, ctx) = restart_and_verify(&run, &mut rng, cycle, &context, full).await;
        checks += 1;
        full_checks += usize::from(full);
        let before = ctx.ledger().stats;
        let load = start_load(&ctx, &mut rng);
        let run_for = Duration::from_millis(rng.range(RUN_MS.0, RUN_MS.1));
        // The one intended sleep: the load runs for a random time, then the kill lands
        // wherever it lands.
        tokio::time::sleep(run_for).await;
        ctx.dying.store(true, Ordering::SeqCst);
        let log = server.kill();
        load.stop(&ctx).await;
        // Only the log of this process: the others were checked already.
        check_log(seed, &log);
        let problems = take_problems(&ledger);
        let after = ctx.ledger().stats;
        println!(
            "{}: cycle {cycle}: ran {} ms, then SIGKILL; this cycle: enqueued {} leased {} \
             acked {} failed {} stale {} unknown {} carried over a restart {}",
            mode.name,
            run_for.as_millis(),
            after.enqueued - before.enqueued,
            after.leased - before.leased,
            after.acked - before.acked,
            after.failed - before.failed,
            after.stale - before.stale,
            after.unknown - before.unknown,
            after.carried - before.carried,
        );
        if !problems.is_empty() {
            fail_with(seed, &format!("cycle {cycle}: under load"), &problems, &log);
        }
    }

    let context = format!("{}: after the last restart", mode.name);
    let (mut server, ctx) = restart_and_verify(&run, &mut rng, cycles, &context, true).await;
    // Leases still held were handed out by earlier processes: unexpired ones must ack.
    settle_held(seed, &mut rng, &mut server, &ctx, &context).await;
    checks += 2;
    full_checks += 2;
    check_log(seed, &server.kill());
    let ledger = ledger.lock().expect("ledger lock");
    // Reached only if every check passed: nothing acknowledged was lost.
    println!(
        "{}: SUMMARY cycles {cycles} (SIGKILLs), checks {checks} ({full_checks} full), jobs checked: enqueued with \
         2xx {} (acked {}, failed {}, leases {}), lost 0, run time {:.1} s, seed {seed}",
        mode.name,
        ledger.enqueued.len(),
        ledger.acked.len(),
        ledger.failed.len(),
        ledger.leased.len(),
        began.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_nothing_acknowledged() {
    let seed = seed();
    println!("SLUICE_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed ^ 0x5151_7e4e);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let run = Run {
        seed,
        dir: dir.path(),
        ledger: &ledger,
        mode: FSYNC_ALWAYS,
    };

    let (mut server, ctx) = restart_and_verify(&run, &mut rng, 0, "first start", true).await;
    let load = start_load(&ctx, &mut rng);
    let run_for = Duration::from_millis(rng.range(300, 2_000));
    tokio::time::sleep(run_for).await;
    ctx.dying.store(true, Ordering::SeqCst);
    let Some((exit, took)) = server.terminate(Duration::from_secs(15)).await else {
        let log = server.finish_log();
        fail_with(
            seed,
            "SIGTERM",
            &["the server did not exit within 15 s of SIGTERM".into()],
            &log,
        );
    };
    load.stop(&ctx).await;
    let log = server.finish_log();
    let stats = ctx.ledger().stats;
    println!(
        "ran {} ms, SIGTERM, exited {exit} after {} ms; enqueued {} leased {} acked {} failed {} \
         stale {} unknown {}",
        run_for.as_millis(),
        took.as_millis(),
        stats.enqueued,
        stats.leased,
        stats.acked,
        stats.failed,
        stats.stale,
        stats.unknown
    );
    if !exit.success() {
        fail_with(
            seed,
            "SIGTERM",
            &[format!("the server exited with {exit}")],
            &log,
        );
    }
    let problems = take_problems(&ledger);
    if !problems.is_empty() {
        fail_with(seed, "SIGTERM: under load", &problems, &log);
    }
    check_log(seed, &log);

    let (mut server, ctx) = restart_and_verify(&run, &mut rng, 1, "after SIGTERM", true).await;
    settle_held(seed, &mut rng, &mut server, &ctx, "after SIGTERM").await;
    let log = server.kill();
    // A clean stop ends with a snapshot of everything: nothing is left to replay.
    if !log.contains("records_replayed=0") {
        fail_with(
            seed,
            "after SIGTERM",
            &["the restart replayed log records: the final snapshot is missing".into()],
            &log,
        );
    }
    check_log(seed, &log);
}
