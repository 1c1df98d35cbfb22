//! The job state and its indexes. Every command is decided against the state at `now`
//! (validation, picking jobs, computing retry times) into at most one [`Event`], which is
//! then applied. Replay applies the same events, so live and replayed state agree.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sluice_proto::limits;
use sluice_proto::limits::truncate_utf8;
use sluice_proto::JobState;

use crate::alerts::{AlertRule, AlertTransition, Alerts, Silence, SILENCES_MAX};
use crate::cron::{CronSpec, Missed, Schedule, CATCH_UP_MAX, MISSED_AFTER_MS};
use crate::error::{CoreError, Detail, ErrorKind};
use crate::event::{Backoff, CronFire, Event, FailedItem, LeasedItem, NewJob, QueueLimits, Rate};
use crate::streams::{
    Compaction, Compactions, Feed, Feeds, GroupState, Groups, StreamSpec, Streams, FEEDS_MAX,
    GROUPS_PER_STREAM_MAX,
};
use crate::table::JobTable;
use crate::{JobId, LeaseId, Millis};

/// Low bits of a job id that count jobs made in the same millisecond.
const ID_COUNTER_BITS: u32 = 16;
/// Leases expired or finished jobs removed per tick, so that one tick stays short.
pub const TICK_BATCH_LEN_MAX: usize = 10_000;
/// Ready jobs a lease passes over because their limit key is at its limit, before it
/// gives up on the queue: only each key's first ready job is a candidate, so this many
/// keys blocked at once ahead of a free one is what it takes to miss it.
pub const KEY_SCAN_MAX: usize = 10_000;

/// A ready job's place in lease order: highest priority, then earliest run_at, then oldest.
type ReadyEntry = (Reverse<i16>, Millis, JobId);

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Finished jobs (succeeded, dead, cancelled) are forgotten this long after finishing.
    pub retention_ms: u64,
    /// ... or when their queue holds more finished jobs than this (oldest first).
    pub retention_len_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retention_ms: 24 * 3_600_000,
            retention_len_max: 100_000,
        }
    }
}

/// One attempt at running a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u16,
    pub leased_at: Millis,
    pub finished_at: Option<Millis>,
    pub outcome: Option<Outcome>,
    pub error: Option<Box<str>>,
    pub worker: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What most jobs never need, kept out of line so a plain pending job stays small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobExtra {
    pub unique_key: Option<Box<str>>,
    pub tags: Vec<Box<str>>,
    pub history: Vec<Attempt>,
    pub progress: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub queue: u32,
    pub state: JobState,
    pub priority: i16,
    pub attempts: u16,
    pub max_attempts: u16,
    pub timeout_ms: u32,
    pub backoff: Backoff,
    pub run_at: Millis,
    /// 0 unless leased.
    pub lease_id: LeaseId,
    pub lease_expires_at: Millis,
    /// 0 unless finished.
    pub finished_at: Millis,
    /// Number of the kind: `State::kind_name` gives its name.
    pub kind: u32,
    pub payload: Box<str>,
    pub extra: Option<Box<JobExtra>>,
}

// Every pending job pays this; the issue's budget is 250 bytes a job beyond its payload,
// of which the indexes and the id map take about 100.
const _: () = assert!(std::mem::size_of::<Job>() <= 96);

impl Job {
    /// Ids are made from the enqueue time, so it need not be stored.
    pub fn enqueued_at(&self) -> Millis {
        (self.id >> ID_COUNTER_BITS) as Millis
    }

    pub fn extra(&self) -> Option<&JobExtra> {
        self.extra.as_deref()
    }

    /// The worker named on the current attempt of a leased job.
    pub fn worker(&self) -> Option<&str> {
        if self.state != JobState::Leased {
            return None;
        }
        self.extra()?.history.last()?.worker.as_deref()
    }

    fn extra_mut(&mut self) -> &mut JobExtra {
        self.extra.get_or_insert_with(Default::default)
    }
}

const STATE_COUNT: usize = JobState::ALL.len();

fn state_index(state: JobState) -> usize {
    state as usize
}

#[derive(Debug, Default)]
pub struct Queue {
    pub name: Box<str>,
    pub paused: bool,
    pub limits: QueueLimits,
    /// The rate limit's token bucket (unused without one).
    bucket: Bucket,
    /// Flow control of each limit key of the queue (each key on its own).
    pub key_limits: QueueLimits,
    /// Limit keys that jobs of the queue carry (or that still hold a refilling bucket).
    keys: FxHashMap<Arc<str>, KeySlot>,
    /// Ready jobs in lease order, except that of the jobs with a limit key only each
    /// key's first is here (the rest wait in the key's own `ready`).
    ready: BTreeSet<ReadyEntry>,
    /// Every job of the queue by state, in id (enqueue) order: counts and listing.
    by_state: [BTreeSet<JobId>; STATE_COUNT],
}

/// A token bucket in units of 1/`per_ms` token, so that refilling is exact integer
/// arithmetic: `level` as of `at`, refilled by `limit` units a millisecond up to
/// `limit * per_ms`; a lease takes `per_ms` units.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    level: u64,
    at: Millis,
}

impl Bucket {
    /// Full whatever the rate (levels are capped at the capacity when read).
    const FULL: Bucket = Bucket {
        level: u64::MAX,
        at: 0,
    };

    /// When the bucket will be full again if nothing is taken.
    fn full_at(self, rate: Rate) -> Millis {
        let missing = Bucket::capacity(rate).saturating_sub(self.level);
        let limit = u64::from(rate.limit).max(1);
        let ms = missing.div_ceil(limit);
        self.at
            .saturating_add(Millis::try_from(ms).unwrap_or(Millis::MAX))
    }

    /// The bucket after one lease at `at`.
    fn take(self, rate: Rate, at: Millis) -> Bucket {
        Bucket {
            level: self.level_at(rate, at).saturating_sub(rate.per_ms),
            at: at.max(self.at),
        }
    }

    fn capacity(rate: Rate) -> u64 {
        u64::from(rate.limit).saturating_mul(rate.per_ms)
    }

    fn level_at(self, rate: Rate, now: Millis) -> u64 {
        let elapsed = u64::try_from(now.saturating_sub(self.at)).unwrap_or(0);
        self.level
            .saturating_add(elapsed.saturating_mul(u64::from(rate.limit)))
            .min(Bucket::capacity(rate))
    }
}

impl Queue {
    pub fn count(&self, state: JobState) -> usize {
        self.by_state[state_index(state)].len()
    }

    /// Whole tokens in the rate bucket at `now`; `None` without a rate limit.
    pub fn tokens(&self, now: Millis) -> Option<u64> {
        let rate = self.limits.rate?;
        Some(self.bucket.level_at(rate, now) / rate.per_ms.max(1))
    }

    /// How many more jobs of this queue may be leased at `now` under its limits.
    pub fn lease_room(&self, now: Millis) -> usize {
        let mut room = usize::MAX;
        if let Some(concurrency) = self.limits.concurrency {
            let concurrency = usize::try_from(concurrency).unwrap_or(usize::MAX);
            room = room.min(concurrency.saturating_sub(self.count(JobState::Leased)));
        }
        if let Some(tokens) = self.tokens(now) {
            room = room.min(usize::try_from(tokens).unwrap_or(usize::MAX));
        }
        room
    }

    /// Takes one token for a lease at `at` of a job with limit key `key` (no-ops without
    /// rate limits).
    fn take_token(&mut self, at: Millis, key: Option<&str>) {
        if let Some(rate) = self.limits.rate {
            self.bucket = self.bucket.take(rate, at);
        }
        if let (Some(rate), Some(slot)) =
            (self.key_limits.rate, key.and_then(|k| self.keys.get_mut(k)))
        {
            slot.bucket = slot.bucket.take(rate, at);
        }
    }

    /// Limit keys the queue tracks.
    pub fn key_len(&self) -> usize {
        self.keys.len()
    }

    /// The limit keys the queue tracks, in no order.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| &**k)
    }

    /// How limit key `key` stands at `now`: `None` when no job of the queue carries it
    /// (and its bucket, if any, is full).
    pub fn key(&self, key: &str, now: Millis) -> Option<KeyStatus> {
        let slot = self.keys.get(key)?;
        Some(KeyStatus {
            jobs: slot.jobs,
            ready: slot.ready.len(),
            leased: slot.leased,
            tokens: self
                .key_limits
                .rate
                .map(|rate| slot.bucket.level_at(rate, now) / rate.per_ms.max(1)),
        })
    }

    /// Up to `room` of the queue's ready jobs in lease order, passing over those whose
    /// limit key is at its limits at `now`.
    fn pick(
        &self,
        job_keys: &FxHashMap<JobId, Arc<str>>,
        now: Millis,
        room: usize,
        out: &mut Vec<ReadyEntry>,
    ) {
        if room == 0 {
            return;
        }
        if self.keys.is_empty() {
            out.extend(self.ready.iter().take(room).copied());
            return;
        }
        let limited = self.key_limits != QueueLimits::default();
        // The queue's own order merged with each taken key's next job, so a key whose
        // limits allow it gives more than one job to a lease.
        let mut heads = self.ready.iter().copied().peekable();
        let mut next: BinaryHeap<Reverse<ReadyEntry>> = BinaryHeap::new();
        let mut taken: FxHashMap<&str, u32> = FxHashMap::default();
        let mut picked = 0;
        let mut passed = 0;
        while picked < room {
            let from_heads = match (heads.peek(), next.peek()) {
                (Some(head), Some(Reverse(queued))) => head < queued,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let entry = if from_heads {
                heads.next()
            } else {
                next.pop().map(|Reverse(e)| e)
            };
            let Some(entry) = entry else { break };
            let Some((key, slot)) = job_keys
                .get(&entry.2)
                .and_then(|k| self.keys.get_key_value(&**k))
            else {
                out.push(entry);
                picked += 1;
                continue;
            };
            let count = taken.entry(&**key).or_default();
            if limited && !slot.allows(self.key_limits, now, *count) {
                passed += 1;
                if passed >= KEY_SCAN_MAX {
                    break;
                }
                continue;
            }
            *count += 1;
            out.push(entry);
            picked += 1;
            if let Some(&after) = slot
                .ready
                .range((Bound::Excluded(entry), Bound::Unbounded))
                .next()
            {
                next.push(Reverse(after));
            }
        }
    }

    /// Forgets key `key` once no job carries it and its bucket (if any) is full;
    /// otherwise returns when that will be, for a later sweep.
    fn forget_key_if_idle(&mut self, key: &str) -> Option<Millis> {
        let slot = self.keys.get(key)?;
        if slot.jobs > 0 {
            return None;
        }
        match self.key_limits.rate {
            Some(rate) if slot.bucket.level_at(rate, slot.bucket.at) < Bucket::capacity(rate) => {
                Some(slot.bucket.full_at(rate))
            }
            _ => {
                self.keys.remove(key);
                None
            }
        }
    }

    fn finished_len(&self) -> usize {
        self.count(JobState::Succeeded)
            + self.count(JobState::Dead)
            + self.count(JobState::Cancelled)
    }
}

/// One limit key of a queue.
#[derive(Debug)]
struct KeySlot {
    /// Jobs of the queue (in any state) that carry the key.
    jobs: u32,
    leased: u32,
    /// The per-key rate limit's token bucket.
    bucket: Bucket,
    /// The key's ready jobs in lease order; only the first is in the queue's `ready`.
    ready: BTreeSet<ReadyEntry>,
}

impl KeySlot {
    fn new() -> Self {
        KeySlot {
            jobs: 0,
            leased: 0,
            bucket: Bucket::FULL,
            ready: BTreeSet::new(),
        }
    }

    /// Whether one more job of the key may be leased at `now`, `taken` being leased by
    /// the same lease already.
    fn allows(&self, limits: QueueLimits, now: Millis, taken: u32) -> bool {
        let leased = self.leased.saturating_add(taken);
        if limits.concurrency.is_some_and(|c| leased >= c) {
            return false;
        }
        match limits.rate {
            Some(rate) => {
                let need = u64::from(taken)
                    .saturating_add(1)
                    .saturating_mul(rate.per_ms);
                self.bucket.level_at(rate, now) >= need
            }
            None => true,
        }
    }
}

/// How one limit key of a queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    /// Jobs of the queue, in any state, that carry the key.
    pub jobs: u32,
    pub ready: usize,
    pub leased: u32,
    /// Whole tokens in the key's rate bucket; `None` without a per-key rate limit.
    pub tokens: Option<u64>,
}

/// The indexes over `jobs`, apart from the map so both can be borrowed at once.
#[derive(Debug, Default)]
struct Indexes {
    queues: Vec<Queue>,
    queue_ids: FxHashMap<Box<str>, u32>,
    /// Scheduled and failed (waiting to retry) jobs by run_at.
    delayed: BTreeSet<(Millis, JobId)>,
    /// Leased jobs by lease expiry.
    lease_expiry: BTreeSet<(Millis, JobId)>,
    /// Finished jobs by finish time, for retention.
    finished: BTreeSet<(Millis, JobId)>,
    /// The limit key of each job that has one.
    job_keys: FxHashMap<JobId, Arc<str>>,
    /// Keys no job carries any more whose bucket is refilling: `(full at, queue, key)`.
    idle_keys: BTreeSet<(Millis, u32, Arc<str>)>,
}

impl Indexes {
    fn insert(&mut self, job: &Job) {
        let queue = &mut self.queues[job.queue as usize];
        queue.by_state[state_index(job.state)].insert(job.id);
        let slot = match self.job_keys.is_empty() {
            true => None,
            false => self
                .job_keys
                .get(&job.id)
                .map(|key| queue.keys.entry(key.clone()).or_insert_with(KeySlot::new)),
        };
        match job.state {
            JobState::Ready => {
                let entry = (Reverse(job.priority), job.run_at, job.id);
                match slot {
                    None => {
                        queue.ready.insert(entry);
                    }
                    Some(slot) => {
                        match slot.ready.first() {
                            Some(&head) if head < entry => {}
                            Some(&head) => {
                                queue.ready.remove(&head);
                                queue.ready.insert(entry);
                            }
                            None => {
                                queue.ready.insert(entry);
                            }
                        }
                        slot.ready.insert(entry);
                    }
                }
            }
            JobState::Scheduled | JobState::Failed => {
                self.delayed.insert((job.run_at, job.id));
            }
            JobState::Leased => {
                self.lease_expiry.insert((job.lease_expires_at, job.id));
                if let Some(slot) = slot {
                    slot.leased += 1;
                }
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                self.finished.insert((job.finished_at, job.id));
            }
        }
    }

    fn remove(&mut self, job: &Job) {
        let queue = &mut self.queues[job.queue as usize];
        let removed = queue.by_state[state_index(job.state)].remove(&job.id);
        debug_assert!(removed, "job {} missing from its state index", job.id);
        let slot = match self.job_keys.is_empty() {
            true => None,
            false => self
                .job_keys
                .get(&job.id)
                .and_then(|key| queue.keys.get_mut(&**key)),
        };
        match job.state {
            JobState::Ready => {
                let entry = (Reverse(job.priority), job.run_at, job.id);
                match slot {
                    None => {
                        queue.ready.remove(&entry);
                    }
                    Some(slot) => {
                        let was_head = slot.ready.first() == Some(&entry);
                        slot.ready.remove(&entry);
                        if was_head {
                            queue.ready.remove(&entry);
                            if let Some(&head) = slot.ready.first() {
                                queue.ready.insert(head);
                            }
                        }
                    }
                }
            }
            JobState::Scheduled | JobState::Failed => {
                self.delayed.remove(&(job.run_at, job.id));
            }
            JobState::Leased => {
                self.lease_expiry.remove(&(job.lease_expires_at, job.id));
                if let Some(slot) = slot {
                    slot.leased = slot.leased.saturating_sub(1);
                }
            }
            JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
                self.finished.remove(&(job.finished_at, job.id));
            }
        }
    }

    /// Counts a job of `queue` carrying `key` (call before indexing the job).
    fn hold_key(&mut self, queue: u32, key: &Arc<str>) {
        let slot = self.queues[queue as usize]
            .keys
            .entry(key.clone())
            .or_insert_with(KeySlot::new);
        slot.jobs += 1;
    }

    /// Uncounts a job of `queue` carrying `key` (after unindexing it); an idle key goes,
    /// at once or when its bucket has refilled.
    fn release_key(&mut self, queue: u32, key: &Arc<str>) {
        let queue_ref = &mut self.queues[queue as usize];
        if let Some(slot) = queue_ref.keys.get_mut(&**key) {
            slot.jobs = slot.jobs.saturating_sub(1);
        }
        if let Some(full_at) = queue_ref.forget_key_if_idle(key) {
            self.idle_keys.insert((full_at, queue, key.clone()));
        }
    }

    /// Forgets idle keys whose buckets are full by `at`.
    fn sweep_idle_keys(&mut self, at: Millis) {
        while let Some((full_at, _, _)) = self.idle_keys.first() {
            if *full_at > at {
                break;
            }
            let Some((_, queue, key)) = self.idle_keys.pop_first() else {
                break;
            };
            // A key may have come back and gone again since: then a later entry is due.
            if let Some(queue) = self.queues.get_mut(queue as usize) {
                let rate = queue.key_limits.rate;
                let full = |slot: &KeySlot| {
                    rate.is_none_or(|r| slot.bucket.level_at(r, at) >= Bucket::capacity(r))
                };
                if queue
                    .keys
                    .get(&*key)
                    .is_some_and(|slot| slot.jobs == 0 && full(slot))
                {
                    queue.keys.remove(&*key);
                }
            }
        }
    }

    fn queue_id_or_create(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.queue_ids.get(name) {
            return id;
        }
        let id = self.queues.len() as u32;
        self.queues.push(Queue {
            name: name.into(),
            ..Queue::default()
        });
        self.queue_ids.insert(name.into(), id);
        id
    }
}

/// A job to enqueue, parsed from the wire and with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueSpec {
    pub queue: String,
    pub kind: String,
    /// JSON text.
    pub payload: String,
    pub priority: i16,
    /// Absolute time; `None` for now.
    pub run_at: Option<Millis>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    pub unique_key: Option<String>,
    pub unique_ttl_ms: u64,
    pub tags: Vec<String>,
    /// The key the queue's per-key limits count this job under (e.g. a customer id).
    pub limit_key: Option<String>,
}

impl EnqueueSpec {
    /// The job as the enqueue event records it, with id `id`, decided at `now`.
    fn into_new_job(self, id: JobId, now: Millis) -> NewJob {
        NewJob {
            id,
            queue: self.queue,
            kind: self.kind,
            payload: self.payload,
            priority: self.priority,
            run_at: self.run_at.unwrap_or(now).max(now),
            max_attempts: self.max_attempts as u16,
            backoff: self.backoff,
            timeout_ms: self.timeout_ms as u32,
            unique: self
                .unique_key
                .map(|k| (k, now.saturating_add(self.unique_ttl_ms as Millis))),
            tags: self.tags,
        }
    }

    /// A job with every option at its default.
    pub fn new(queue: &str, kind: &str, payload: &str) -> Self {
        EnqueueSpec {
            queue: queue.into(),
            kind: kind.into(),
            payload: payload.into(),
            priority: 0,
            run_at: None,
            max_attempts: limits::MAX_ATTEMPTS_DEFAULT,
            backoff: Backoff::Exponential {
                base_ms: 1_000,
                max_ms: 3_600_000,
            },
            timeout_ms: limits::TIMEOUT_MS_DEFAULT,
            unique_key: None,
            unique_ttl_ms: limits::UNIQUE_TTL_MS_DEFAULT,
            limit_key: None,
            tags: Vec::new(),
        }
    }

    fn validate(&self, path: &str, now: Millis, details: &mut Vec<Detail>) {
        let mut bad = |field: &str, message: String| {
            details.push(Detail {
                path: format!("{path}{field}"),
                message,
            })
        };
        if !limits::is_valid_name(&self.queue, limits::QUEUE_NAME_BYTES_MAX) {
            bad(
                "queue",
                format!(
                    "must be 1 to {} bytes of A-Z a-z 0-9 _ . : -",
                    limits::QUEUE_NAME_BYTES_MAX
                ),
            );
        }
        if !limits::is_valid_name(&self.kind, limits::KIND_BYTES_MAX) {
            bad(
                "kind",
                format!(
                    "must be 1 to {} bytes of A-Z a-z 0-9 _ . : -",
                    limits::KIND_BYTES_MAX
                ),
            );
        }
        if self.max_attempts == 0 || self.max_attempts > limits::MAX_ATTEMPTS_MAX {
            bad(
                "max_attempts",
                format!("must be 1 to {}", limits::MAX_ATTEMPTS_MAX),
            );
        }
        if !(limits::TIMEOUT_MS_MIN..=limits::TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            bad(
                "timeout_ms",
                format!(
                    "must be {} to {}",
                    limits::TIMEOUT_MS_MIN,
                    limits::TIMEOUT_MS_MAX
                ),
            );
        }
        if let Some(run_at) = self.run_at {
            if run_at > now.saturating_add(limits::DELAY_MS_MAX as Millis) {
                bad("run_at", "must be at most one year ahead".into());
            }
        }
        let backoff_ok = match self.backoff {
            Backoff::Exponential { base_ms, max_ms } => {
                base_ms > 0 && base_ms <= max_ms && u64::from(max_ms) <= limits::BACKOFF_MS_MAX
            }
            Backoff::Fixed { delay_ms } => u64::from(delay_ms) <= limits::BACKOFF_MS_MAX,
        };
        if !backoff_ok {
            bad(
                "backoff",
                format!(
                    "needs 0 < base_ms <= max_ms <= {} (fixed: delay_ms <= {})",
                    limits::BACKOFF_MS_MAX,
                    limits::BACKOFF_MS_MAX
                ),
            );
        }
        if let Some(key) = &self.unique_key {
            if key.is_empty() || key.len() > limits::UNIQUE_KEY_BYTES_MAX {
                bad(
                    "unique_key",
                    format!("must be 1 to {} bytes", limits::UNIQUE_KEY_BYTES_MAX),
                );
            }
        }
        if self.unique_ttl_ms == 0 || self.unique_ttl_ms > limits::UNIQUE_TTL_MS_MAX {
            bad(
                "unique_ttl_ms",
                format!("must be 1 to {}", limits::UNIQUE_TTL_MS_MAX),
            );
        }
        if let Some(key) = &self.limit_key {
            if !limits::is_valid_limit_key(key) {
                bad(
                    "limit_key",
                    format!(
                        "must be 1 to {} bytes, not . or ..",
                        limits::LIMIT_KEY_BYTES_MAX
                    ),
                );
            }
        }
        if self.tags.len() > limits::TAGS_LEN_MAX {
            bad("tags", format!("at most {} tags", limits::TAGS_LEN_MAX));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > limits::TAG_BYTES_MAX {
                bad(
                    &format!("tags[{i}]"),
                    format!("must be 1 to {} bytes", limits::TAG_BYTES_MAX),
                );
            }
        }
    }
}

/// Result of enqueueing one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: JobId,
    pub duplicate: bool,
}

/// A job's state after an ack or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub state: JobState,
    pub retry_at: Option<Millis>,
}

pub struct FailInput {
    pub id: JobId,
    pub lease_id: LeaseId,
    pub error: String,
    pub retry_at: Option<Millis>,
}

/// What a decided command returns: the event to log (if anything changed) and the reply.
pub type Decided<T> = (Option<Event>, T);

#[derive(Debug, Default)]
pub struct State {
    config: Config,
    jobs: JobTable,
    ix: Indexes,
    unique: FxHashMap<(u32, Box<str>), (JobId, Millis)>,
    /// Job kinds by number: a job stores 4 bytes instead of a 16-byte pointer.
    kinds: Vec<Box<str>>,
    kind_ids: FxHashMap<Box<str>, u32>,
    last_id: JobId,
    last_lease_id: LeaseId,
    /// Queues with a rate limit (their buckets refill with time).
    rate_limited: BTreeSet<u32>,
    /// Batches by id (the id of their callback job).
    batches: BTreeMap<JobId, Batch>,
    /// Unfinished members of batches: job -> batch.
    batch_of: FxHashMap<JobId, JobId>,
    /// Queues that got a batch callback job since the last `take_fired` (not state: a
    /// side channel for the server to wake their long-polls).
    fired: Vec<u32>,
    /// Cron schedules by name.
    crons: BTreeMap<String, Cron>,
    /// Alert rules with their state, silences, and the history of transitions.
    alerts: Alerts,
    streams: Streams,
    groups: Groups,
    feeds: Feeds,
    compactions: Compactions,
}

/// A cron schedule and when it next fires.
#[derive(Debug, Clone)]
pub struct Cron {
    pub spec: CronSpec,
    schedule: Schedule,
    /// `None` when the expression has no further occurrence.
    pub next_at: Option<Millis>,
    pub last_fired_at: Option<Millis>,
}

/// A group of jobs whose callback job is enqueued exactly once, when every member has
/// finished (succeeded, dead, cancelled or purged). A member counts once, at its first
/// finish; retrying a dead member later changes nothing here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The callback job's id.
    pub id: JobId,
    pub created_at: Millis,
    pub total: u32,
    pub succeeded: u32,
    pub dead: u32,
    /// Cancelled, or purged before it ran.
    pub cancelled: u32,
    /// When the last member finished and the callback was enqueued.
    pub finished_at: Option<Millis>,
    /// The callback as enqueued when the batch finishes (its payload then wrapped with
    /// the counts).
    callback: NewJob,
}

impl Batch {
    pub fn pending(&self) -> u32 {
        self.total
            .saturating_sub(self.succeeded + self.dead + self.cancelled)
    }

    pub fn callback_queue(&self) -> &str {
        &self.callback.queue
    }
}

/// How a lease from several queues chooses among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOrder {
    /// Across all the queues, the highest job priority first, then the earliest run_at.
    Priority,
    /// The queues in the order given: a later queue only when the earlier ones have no
    /// ready job (or no room under their limits).
    Strict,
    /// Each lease orders the queues at random, a queue coming first with a chance
    /// proportional to its weight (Sidekiq's weighted queues), then takes them strictly in
    /// that order. `weights[i]` belongs to `queues[i]`; the `seed` makes the draw
    /// repeatable (the server passes a random one).
    Weighted { weights: Vec<u32>, seed: u64 },
}

/// Orders `queues` (`(index into weights, queue)`) by repeated weighted draws.
fn weighted_shuffle(queues: &mut [(usize, &Queue)], weights: &[u32], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(1).max(1));
    for start in 0..queues.len() {
        let total: u64 = queues[start..].iter().map(|(i, _)| weight(*i)).sum();
        let mut pick = next() % total.max(1);
        let mut chosen = start;
        for (offset, (i, _)) in queues[start..].iter().enumerate() {
            let w = weight(*i);
            if pick < w {
                chosen = start + offset;
                break;
            }
            pick -= w;
        }
        queues.swap(start, chosen);
    }
}

/// Deterministic jitter in [0.5, 1.0] from the job and attempt (splitmix64), so a replay
/// or a simulation computes the same retry time.
fn jitter(id: JobId, attempt: u16) -> f64 {
    let mut z = id ^ (u64::from(attempt) << 48) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64)
}

/// Delay before the retry that follows failed attempt number `attempt` (1-based).
pub fn backoff_delay_ms(backoff: Backoff, id: JobId, attempt: u16) -> u64 {
    match backoff {
        Backoff::Fixed { delay_ms } => u64::from(delay_ms),
        Backoff::Exponential { base_ms, max_ms } => {
            let exponent = u32::from(attempt.saturating_sub(1)).min(40);
            let raw = u64::from(base_ms).saturating_mul(1u64 << exponent);
            let capped = raw.min(u64::from(max_ms));
            (capped as f64 * jitter(id, attempt)) as u64
        }
    }
}

/// 400 `invalid_request` with every problem found (at most 100).
/// Checks one set of limits; `prefix` names their fields (`key_` for per-key limits).
fn check_limits(prefix: &str, limits: QueueLimits) -> Result<(), CoreError> {
    if limits
        .concurrency
        .is_some_and(|c| c == 0 || c > limits::QUEUE_CONCURRENCY_MAX)
    {
        return Err(CoreError::bad_input(
            format!("{prefix}concurrency"),
            format!(
                "must be 1 to {} (pause the queue to stop it)",
                limits::QUEUE_CONCURRENCY_MAX
            ),
        ));
    }
    if let Some(rate) = limits.rate {
        if rate.limit == 0 || rate.limit > limits::RATE_LIMIT_MAX {
            return Err(CoreError::bad_input(
                format!("{prefix}rate.limit"),
                format!("must be 1 to {}", limits::RATE_LIMIT_MAX),
            ));
        }
        if rate.per_ms == 0 || rate.per_ms > limits::RATE_PER_MS_MAX {
            return Err(CoreError::bad_input(
                format!("{prefix}rate.per_ms"),
                format!("must be 1 to {} (one day)", limits::RATE_PER_MS_MAX),
            ));
        }
    }
    Ok(())
}

fn invalid_request(mut details: Vec<Detail>) -> CoreError {
    details.truncate(100);
    CoreError {
        kind: ErrorKind::BadInput,
        code: "invalid_request",
        message: "the request is invalid".into(),
        details,
    }
}

/// Only a state restored from a corrupt or foreign log gets here (2^64 ids at one a
/// nanosecond last 584 years).
fn ids_exhausted() -> CoreError {
    CoreError::new(
        ErrorKind::Limit,
        "ids_exhausted",
        "no job or lease id is left",
    )
}

impl State {
    pub fn new(config: Config) -> Self {
        State {
            config,
            ..State::default()
        }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn job_len(&self) -> usize {
        self.jobs.len()
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        let id = *self.ix.queue_ids.get(name)?;
        self.ix.queues.get(id as usize)
    }

    /// Queues with a rate limit (of the queue or per key) whose buckets now allow leases
    /// of ready jobs: `(name, how many could be leased now)`, for waking long-polls as
    /// tokens refill.
    pub fn rate_limited_ready(&self, now: Millis) -> Vec<(&str, usize)> {
        self.rate_limited
            .iter()
            .filter_map(|&id| {
                let queue = self.ix.queues.get(id as usize)?;
                let ready = queue.count(JobState::Ready);
                let mut room = queue.lease_room(now).min(ready);
                if queue.key_limits.rate.is_some() && room > 0 && !queue.paused {
                    let mut picked = Vec::new();
                    queue.pick(&self.ix.job_keys, now, room.min(KEY_SCAN_MAX), &mut picked);
                    room = picked.len();
                }
                (room > 0 && !queue.paused).then_some((&*queue.name, room))
            })
            .collect()
    }

    /// How long the longest-waiting ready job of `queue` has been due at `now` (0 when
    /// none is ready): due since its run_at, or since it was enqueued if that was later.
    /// Looked at: the next job to lease (earliest run_at of the top priority) and the
    /// oldest enqueued, so with several priorities a lower one's job that came due
    /// earlier than both but was enqueued later is not seen.
    pub fn oldest_ready_age_ms(&self, queue: &Queue, now: Millis) -> u64 {
        let due = |job: &Job| job.run_at.max(job.enqueued_at());
        let next = queue
            .ready
            .first()
            .and_then(|&(_, _, id)| self.jobs.get(&id));
        let oldest = queue.by_state[state_index(JobState::Ready)]
            .first()
            .and_then(|id| self.jobs.get(id));
        next.into_iter()
            .chain(oldest)
            .map(due)
            .min()
            .map_or(0, |since| {
                u64::try_from(now.saturating_sub(since)).unwrap_or(0)
            })
    }

    /// The limit key job `id` carries, if any.
    pub fn limit_key(&self, id: JobId) -> Option<&str> {
        self.ix.job_keys.get(&id).map(|k| &**k)
    }

    /// The number of queue `name` (`queue_by_id` gives it back).
    pub fn queue_id(&self, name: &str) -> Option<u32> {
        self.ix.queue_ids.get(name).copied()
    }

    pub fn queue_by_id(&self, id: u32) -> Option<&Queue> {
        self.ix.queues.get(id as usize)
    }

    pub fn queue_name(&self, id: u32) -> &str {
        self.ix.queues.get(id as usize).map_or("", |q| &q.name)
    }

    /// Queues in name order, from after `after`, at most `limit`.
    pub fn queues_page(&self, after: Option<&str>, limit: usize) -> Vec<&Queue> {
        self.queues_page_with(after, "", limit)
    }

    /// As `queues_page`, only queues whose name starts with `prefix`.
    pub fn queues_page_with(&self, after: Option<&str>, prefix: &str, limit: usize) -> Vec<&Queue> {
        let mut names: Vec<&Queue> = self
            .ix
            .queues
            .iter()
            .filter(|q| after.is_none_or(|a| &*q.name > a) && q.name.starts_with(prefix))
            .collect();
        names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        names.truncate(limit);
        names
    }

    pub fn queue_len(&self) -> usize {
        self.ix.queues.len()
    }

    /// Jobs of `queue` in `state` with id above `after`, in id order.
    pub fn jobs_page(
        &self,
        queue: &Queue,
        state: JobState,
        after: Option<JobId>,
        limit: usize,
    ) -> Vec<&Job> {
        let set = &queue.by_state[state_index(state)];
        let iter: Box<dyn Iterator<Item = &JobId>> = match after {
            Some(after) => {
                Box::new(set.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)))
            }
            None => Box::new(set.iter()),
        };
        iter.take(limit)
            .filter_map(|id| self.jobs.get(id))
            .collect()
    }

    /// The number of kind `name`, if any job ever had it.
    pub fn kind_number(&self, name: &str) -> Option<u32> {
        self.kind_ids.get(name).copied()
    }

    /// As `jobs_page`, keeping only jobs `keep` accepts, looking at no more than
    /// `scan_max` jobs. Returns the page and, when the scan stopped before the end of the
    /// set, the last id it looked at (where the next page starts).
    pub fn jobs_page_where(
        &self,
        queue: &Queue,
        state: JobState,
        after: Option<JobId>,
        limit: usize,
        scan_max: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> (Vec<&Job>, Option<JobId>) {
        let set = &queue.by_state[state_index(state)];
        let iter: Box<dyn Iterator<Item = &JobId>> = match after {
            Some(after) => {
                Box::new(set.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)))
            }
            None => Box::new(set.iter()),
        };
        let mut page = Vec::new();
        let mut last = None;
        for (scanned, id) in iter.enumerate() {
            if page.len() == limit || scanned == scan_max {
                return (page, last);
            }
            last = Some(*id);
            if let Some(job) = self.jobs.get(id).filter(|j| keep(j)) {
                page.push(job);
            }
        }
        (page, None)
    }

    /// Earliest time at which a tick has work: a lease expiring or a delayed job due.
    pub fn next_deadline(&self) -> Option<Millis> {
        let lease = self.ix.lease_expiry.first().map(|&(at, _)| at);
        let delayed = self.ix.delayed.first().map(|&(at, _)| at);
        match (lease, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `None` once the ids are used up: u64::MAX is never decided (see `apply`).
    fn next_id(&self, now: Millis, previous: JobId) -> Option<JobId> {
        let from_clock = (now.max(0) as u64) << ID_COUNTER_BITS;
        let id = from_clock.max(previous.checked_add(1)?);
        (id != JobId::MAX).then_some(id)
    }

    /// Moves scheduled and failed jobs whose time has come to their ready sets. Not an
    /// event: which of the two states a due job is in does not change what it does.
    ///
    /// Returns the queue of each job promoted, so that pollers of those queues can be woken.
    pub fn promote_due(&mut self, now: Millis) -> Vec<u32> {
        let mut queues = Vec::new();
        while let Some(&(run_at, id)) = self.ix.delayed.first() {
            if run_at > now {
                break;
            }
            let Some(job) = self.jobs.get_mut(&id) else {
                self.ix.delayed.pop_first();
                continue;
            };
            self.ix.remove(job);
            job.state = JobState::Ready;
            self.ix.insert(job);
            queues.push(job.queue);
        }
        queues
    }

    // ---- commands -------------------------------------------------------------------

    pub fn enqueue(
        &mut self,
        now: Millis,
        specs: Vec<EnqueueSpec>,
        batch: bool,
    ) -> Result<Decided<Vec<Enqueued>>, CoreError> {
        let mut details = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let path = if batch {
                format!("jobs[{i}].")
            } else {
                String::new()
            };
            spec.validate(&path, now, &mut details);
        }
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        self.check_new_queues(specs.iter().map(|s| s.queue.as_str()))?;
        let mut replies = Vec::with_capacity(specs.len());
        let mut jobs = Vec::with_capacity(specs.len());
        // Owned keys: the specs are moved into the event below.
        let mut batch_keys: FxHashMap<(String, String), JobId> = FxHashMap::default();
        let mut last_id = self.last_id;
        let mut limit_keys = Vec::new();
        for mut spec in specs {
            if let Some(key) = spec.unique_key.as_deref() {
                if let Some(&id) = batch_keys.get(&(spec.queue.clone(), key.to_owned())) {
                    replies.push(Enqueued {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
                if let Some(id) = self.unique_holder(&spec.queue, key, now) {
                    replies.push(Enqueued {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let id = self.next_id(now, last_id).ok_or_else(ids_exhausted)?;
            last_id = id;
            if let Some(key) = spec.unique_key.as_deref() {
                batch_keys.insert((spec.queue.clone(), key.to_owned()), id);
            }
            replies.push(Enqueued {
                id,
                duplicate: false,
            });
            if let Some(key) = spec.limit_key.take() {
                limit_keys.push((id, key));
            }
            jobs.push(spec.into_new_job(id, now));
        }
        let event = match (jobs.is_empty(), limit_keys.is_empty()) {
            (true, _) => None,
            (false, true) => Some(Event::Enqueued { at: now, jobs }),
            (false, false) => Some(Event::EnqueuedKeyed {
                at: now,
                jobs,
                limit_keys,
            }),
        };
        self.commit(replies, event)
    }

    /// Enqueues `specs` as one batch with `callback`, which is enqueued once every job of
    /// the batch has finished. Replies `(batch id, job ids)`; the batch id is the id the
    /// callback job will have. All or nothing; unique keys are refused in a batch (a
    /// duplicate would be a job that is not the batch's).
    pub fn enqueue_batch_with_callback(
        &mut self,
        now: Millis,
        specs: Vec<EnqueueSpec>,
        callback: EnqueueSpec,
    ) -> Result<Decided<(JobId, Vec<JobId>)>, CoreError> {
        let mut details = Vec::new();
        if specs.is_empty() {
            details.push(Detail {
                path: "jobs".into(),
                message: "a batch needs at least one job".into(),
            });
        }
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("jobs[{i}].");
            spec.validate(&path, now, &mut details);
            if spec.unique_key.is_some() {
                details.push(Detail {
                    path: format!("{path}unique_key"),
                    message: "unique keys are not supported in a batch".into(),
                });
            }
            if spec.limit_key.is_some() {
                details.push(Detail {
                    path: format!("{path}limit_key"),
                    message: "limit keys are not supported in a batch".into(),
                });
            }
        }
        callback.validate("callback.", now, &mut details);
        if callback.unique_key.is_some() {
            details.push(Detail {
                path: "callback.unique_key".into(),
                message: "unique keys are not supported in a batch".into(),
            });
        }
        if callback.limit_key.is_some() {
            details.push(Detail {
                path: "callback.limit_key".into(),
                message: "limit keys are not supported in a batch".into(),
            });
        }
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        self.check_new_queues(
            specs
                .iter()
                .chain(std::iter::once(&callback))
                .map(|s| s.queue.as_str()),
        )?;
        let mut last_id = self.last_id;
        let mut jobs = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.next_id(now, last_id).ok_or_else(ids_exhausted)?;
            last_id = id;
            jobs.push(spec.into_new_job(id, now));
        }
        let batch_id = self.next_id(now, last_id).ok_or_else(ids_exhausted)?;
        let ids = jobs.iter().map(|j| j.id).collect();
        self.commit(
            (batch_id, ids),
            Some(Event::BatchEnqueued {
                at: now,
                jobs,
                callback: callback.into_new_job(batch_id, now),
            }),
        )
    }

    /// Sets (creates or replaces) the cron schedule `name`: each occurrence of `schedule`
    /// (croner syntax, 5 fields or 6 with seconds) in `timezone` enqueues `job`. Replies
    /// with the first occurrence after `now`.
    pub fn set_cron(
        &mut self,
        now: Millis,
        name: &str,
        schedule: &str,
        timezone: &str,
        job: EnqueueSpec,
        missed: Missed,
    ) -> Result<Decided<Option<Millis>>, CoreError> {
        let mut details = Vec::new();
        if !limits::is_valid_name(name, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(Detail {
                path: "name".into(),
                message: "1 to 128 bytes of A-Z a-z 0-9 _ . : -".into(),
            });
        }
        let parsed = match Schedule::parse(schedule, timezone) {
            Ok(parsed) => Some(parsed),
            Err((path, message)) => {
                details.push(Detail {
                    path: path.into(),
                    message,
                });
                None
            }
        };
        job.validate("job.", now, &mut details);
        if job.limit_key.is_some() {
            details.push(Detail {
                path: "job.limit_key".into(),
                message: "limit keys are not supported in a cron job".into(),
            });
        }
        if job.unique_key.is_some() {
            details.push(Detail {
                path: "job.unique_key".into(),
                message: "unique keys are not supported in a cron job".into(),
            });
        }
        if job.run_at.is_some() {
            details.push(Detail {
                path: "job.run_at".into(),
                message: "a cron job runs at its occurrences".into(),
            });
        }
        let (Some(parsed), true) = (parsed, details.is_empty()) else {
            return Err(invalid_request(details));
        };
        if !self.crons.contains_key(name) && self.crons.len() >= limits::CRONS_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_crons",
                format!("at most {} cron schedules may exist", limits::CRONS_MAX),
            ));
        }
        let next_at = parsed.next_after(now);
        let spec = CronSpec {
            name: name.to_owned(),
            schedule: schedule.to_owned(),
            timezone: timezone.to_owned(),
            job: job.into_new_job(0, 0),
            missed,
        };
        self.commit(
            next_at,
            Some(Event::CronSet {
                at: now,
                spec,
                next_at,
            }),
        )
    }

    pub fn remove_cron(&mut self, name: &str) -> Result<Decided<()>, CoreError> {
        if !self.crons.contains_key(name) {
            return Err(CoreError::not_found("cron schedule", name));
        }
        self.commit(
            (),
            Some(Event::CronRemoved {
                name: name.to_owned(),
            }),
        )
    }

    /// Fires every schedule with an occurrence due at `now`: one job per occurrence on time
    /// (at most [`MISSED_AFTER_MS`] late), and for missed ones what the schedule's
    /// [`Missed`] policy says. Each schedule's next occurrence moves past `now` in the same
    /// event, so an occurrence fires once across restarts. Replies with the jobs enqueued.
    pub fn fire_crons(&mut self, now: Millis) -> Decided<usize> {
        let mut fired = Vec::new();
        let mut last_id = self.last_id;
        let mut enqueued = 0;
        for cron in self.crons.values() {
            let Some(first) = cron.next_at.filter(|&at| at <= now) else {
                continue;
            };
            let mut due = vec![first];
            let mut next = cron.schedule.next_after(first);
            while let Some(at) = next.filter(|&at| at <= now) {
                if due.len() < CATCH_UP_MAX {
                    due.push(at);
                }
                next = cron.schedule.next_after(at);
            }
            let (missed, on_time): (Vec<Millis>, Vec<Millis>) = due
                .into_iter()
                .partition(|&at| now.saturating_sub(at) > MISSED_AFTER_MS);
            let runs = on_time.len()
                + match cron.spec.missed {
                    Missed::Skip => 0,
                    Missed::RunOnce => usize::from(!missed.is_empty() && on_time.is_empty()),
                    Missed::RunAll => missed.len(),
                };
            let mut jobs = Vec::with_capacity(runs);
            for _ in 0..runs.min(CATCH_UP_MAX) {
                let Some(id) = self.next_id(now, last_id) else {
                    break;
                };
                last_id = id;
                let mut job = cron.spec.job.clone();
                job.id = id;
                job.run_at = now;
                jobs.push(job);
            }
            enqueued += jobs.len();
            fired.push(CronFire {
                name: cron.spec.name.clone(),
                jobs,
                next_at: next,
            });
        }
        if fired.is_empty() {
            return (None, 0);
        }
        self.commit_infallible(enqueued, Some(Event::CronFired { at: now, fired }))
    }

    pub fn crons(&self) -> impl Iterator<Item = &Cron> {
        self.crons.values()
    }

    pub fn cron(&self, name: &str) -> Option<&Cron> {
        self.crons.get(name)
    }

    /// 429 `too_many_queues` if the queues among `names` that do not exist yet would take
    /// the count past `QUEUES_MAX`.
    fn check_new_queues<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<(), CoreError> {
        let new_queues: FxHashSet<&str> = names
            .filter(|q| !self.ix.queue_ids.contains_key(*q))
            .collect();
        if self.ix.queues.len() + new_queues.len() > limits::QUEUES_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_queues",
                format!("at most {} queues may exist", limits::QUEUES_MAX),
            ));
        }
        Ok(())
    }

    fn unique_holder(&self, queue: &str, key: &str, now: Millis) -> Option<JobId> {
        let queue_id = *self.ix.queue_ids.get(queue)?;
        let &(id, expires_at) = self.unique.get(&(queue_id, Box::from(key)))?;
        let job = self.jobs.get(&id)?;
        (expires_at > now && !job.state.is_finished()).then_some(id)
    }

    /// Leases from `queues` in [`QueueOrder::Priority`] order.
    pub fn lease(
        &mut self,
        now: Millis,
        queues: &[String],
        max_jobs: usize,
        worker: Option<String>,
    ) -> Result<Decided<Vec<JobId>>, CoreError> {
        self.lease_ordered(now, queues, &QueueOrder::Priority, max_jobs, worker)
    }

    /// Leases up to `max_jobs` ready jobs from `queues` (paused ones skipped, each queue
    /// within its limits), choosing across queues as `order` says.
    pub fn lease_ordered(
        &mut self,
        now: Millis,
        queues: &[String],
        order: &QueueOrder,
        max_jobs: usize,
        worker: Option<String>,
    ) -> Result<Decided<Vec<JobId>>, CoreError> {
        self.promote_due(now);
        let mut seen = FxHashSet::default();
        let mut open: Vec<(usize, &Queue)> = Vec::new();
        for (i, name) in queues.iter().enumerate() {
            let Some(queue) = self.queue(name) else {
                continue;
            };
            if queue.paused || !seen.insert(name.as_str()) {
                continue;
            }
            open.push((i, queue));
        }
        let mut candidates: Vec<ReadyEntry> = Vec::new();
        match order {
            QueueOrder::Priority => {
                for (_, queue) in &open {
                    let room = max_jobs.min(queue.lease_room(now));
                    queue.pick(&self.ix.job_keys, now, room, &mut candidates);
                }
                candidates.sort_unstable();
                candidates.truncate(max_jobs);
            }
            QueueOrder::Strict | QueueOrder::Weighted { .. } => {
                if let QueueOrder::Weighted { weights, seed } = order {
                    weighted_shuffle(&mut open, weights, *seed);
                }
                for (_, queue) in &open {
                    let room = (max_jobs - candidates.len()).min(queue.lease_room(now));
                    queue.pick(&self.ix.job_keys, now, room, &mut candidates);
                    if candidates.len() >= max_jobs {
                        break;
                    }
                }
            }
        }
        if candidates.is_empty() {
            return Ok((None, Vec::new()));
        }
        let lease_id = match self.last_lease_id.checked_add(1) {
            Some(id) if id != LeaseId::MAX => id,
            _ => return Err(ids_exhausted()),
        };
        let jobs: Vec<LeasedItem> = candidates
            .iter()
            .filter_map(|&(_, _, id)| {
                let job = self.jobs.get(&id)?;
                Some(LeasedItem {
                    id,
                    expires_at: now.saturating_add(Millis::from(job.timeout_ms)),
                })
            })
            .collect();
        let ids = jobs.iter().map(|j| j.id).collect();
        let worker = worker.map(|w| truncate_utf8(&w, limits::WORKER_BYTES_MAX).to_owned());
        self.commit(
            ids,
            Some(Event::Leased {
                at: now,
                lease_id,
                worker,
                jobs,
            }),
        )
    }

    fn leased_job(&self, id: JobId, lease_id: LeaseId) -> Result<&Job, CoreError> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| CoreError::not_found("job", &sluice_proto::ids::encode(id)))?;
        if job.state != JobState::Leased || job.lease_id != lease_id {
            return Err(CoreError::stale_lease(&sluice_proto::ids::encode(id)));
        }
        Ok(job)
    }

    pub fn heartbeat(
        &mut self,
        now: Millis,
        id: JobId,
        lease_id: LeaseId,
        progress: Option<String>,
    ) -> Result<Decided<Millis>, CoreError> {
        let job = self.leased_job(id, lease_id)?;
        if progress
            .as_ref()
            .is_some_and(|p| p.len() > limits::PROGRESS_BYTES_MAX)
        {
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                "progress_too_large",
                format!("progress is above {} bytes", limits::PROGRESS_BYTES_MAX),
            ));
        }
        let expires_at = now
            .saturating_add(Millis::from(job.timeout_ms))
            .max(job.lease_expires_at);
        self.commit(
            expires_at,
            Some(Event::Heartbeat {
                at: now,
                id,
                expires_at,
                progress,
            }),
        )
    }

    /// Acks each `(job, lease)`; each item succeeds or fails on its own.
    pub fn ack(
        &mut self,
        now: Millis,
        items: &[(JobId, LeaseId)],
    ) -> Decided<Vec<Result<Settled, CoreError>>> {
        let mut seen = FxHashSet::default();
        let mut ids = Vec::new();
        let results = items
            .iter()
            .map(|&(id, lease_id)| {
                self.leased_job(id, lease_id)?;
                if !seen.insert(id) {
                    return Err(CoreError::stale_lease(&sluice_proto::ids::encode(id)));
                }
                ids.push(id);
                Ok(Settled {
                    state: JobState::Succeeded,
                    retry_at: None,
                })
            })
            .collect();
        let event = (!ids.is_empty()).then_some(Event::Acked { at: now, ids });
        self.commit_infallible(results, event)
    }

    pub fn fail(
        &mut self,
        now: Millis,
        items: Vec<FailInput>,
    ) -> Decided<Vec<Result<Settled, CoreError>>> {
        let mut seen = FxHashSet::default();
        let mut failed = Vec::new();
        let results = items
            .into_iter()
            .map(|item| {
                let job = self.leased_job(item.id, item.lease_id)?;
                if !seen.insert(item.id) {
                    return Err(CoreError::stale_lease(&sluice_proto::ids::encode(item.id)));
                }
                let retry_at = (job.attempts < job.max_attempts).then(|| {
                    item.retry_at
                        .unwrap_or_else(|| {
                            now.saturating_add(
                                backoff_delay_ms(job.backoff, job.id, job.attempts) as Millis
                            )
                        })
                        .max(now)
                });
                failed.push(FailedItem {
                    id: item.id,
                    error: truncate_utf8(&item.error, limits::ERROR_BYTES_MAX).to_owned(),
                    retry_at,
                });
                Ok(Settled {
                    // A retry due now makes the job ready at once (see `transition`).
                    state: match retry_at {
                        Some(at) if at > now => JobState::Failed,
                        Some(_) => JobState::Ready,
                        None => JobState::Dead,
                    },
                    retry_at,
                })
            })
            .collect();
        let event = (!failed.is_empty()).then_some(Event::Failed {
            at: now,
            jobs: failed,
        });
        self.commit_infallible(results, event)
    }

    /// Takes back leases that expired by `now`: each counts as an attempt.
    pub fn expire_leases(&mut self, now: Millis) -> Decided<usize> {
        let jobs: Vec<(JobId, Option<Millis>)> = self
            .ix
            .lease_expiry
            .iter()
            .take_while(|&&(at, _)| at <= now)
            .take(TICK_BATCH_LEN_MAX)
            .filter_map(|&(_, id)| {
                let job = self.jobs.get(&id)?;
                Some((id, (job.attempts < job.max_attempts).then_some(now)))
            })
            .collect();
        let len = jobs.len();
        self.commit_infallible(len, (len > 0).then_some(Event::Expired { at: now, jobs }))
    }

    /// Ends now every lease held by `worker` (the name on the jobs' current attempts), as
    /// if each had run out: for a worker known to be gone, so its jobs need not wait for
    /// their timeouts. Each job runs again now, or is dead on its last attempt.
    pub fn expire_worker_leases(&mut self, now: Millis, worker: &str) -> Decided<usize> {
        let jobs: Vec<(JobId, Option<Millis>)> = self
            .leased_jobs()
            .filter(|job| job.worker() == Some(worker))
            .take(TICK_BATCH_LEN_MAX)
            .map(|job| (job.id, (job.attempts < job.max_attempts).then_some(now)))
            .collect();
        let len = jobs.len();
        self.commit_infallible(len, (len > 0).then_some(Event::Expired { at: now, jobs }))
    }

    /// Every leased job, by lease expiry.
    pub fn leased_jobs(&self) -> impl Iterator<Item = &Job> {
        self.ix
            .lease_expiry
            .iter()
            .filter_map(|(_, id)| self.jobs.get(id))
    }

    /// Forgets finished jobs past the retention time or count.
    pub fn retain(&mut self, now: Millis) -> Decided<usize> {
        let cutoff = now.saturating_sub(self.config.retention_ms as Millis);
        let mut ids: Vec<JobId> = self
            .ix
            .finished
            .iter()
            .take_while(|&&(at, _)| at <= cutoff)
            .take(TICK_BATCH_LEN_MAX)
            .map(|&(_, id)| id)
            .collect();
        let mut picked: FxHashSet<JobId> = ids.iter().copied().collect();
        // Jobs removed by time already count towards a queue's excess.
        let mut picked_per_queue: FxHashMap<u32, usize> = FxHashMap::default();
        for job in ids.iter().filter_map(|id| self.jobs.get(id)) {
            *picked_per_queue.entry(job.queue).or_default() += 1;
        }
        for (queue_id, queue) in self.ix.queues.iter().enumerate() {
            let already = picked_per_queue
                .get(&(queue_id as u32))
                .copied()
                .unwrap_or(0);
            let len = queue.finished_len() - already;
            if len <= self.config.retention_len_max || ids.len() >= TICK_BATCH_LEN_MAX {
                continue;
            }
            let excess = (len - self.config.retention_len_max).min(TICK_BATCH_LEN_MAX - ids.len());
            // The oldest `excess` not yet picked are among the oldest `excess + already`.
            let mut oldest: Vec<JobId> = [JobState::Succeeded, JobState::Dead, JobState::Cancelled]
                .iter()
                .flat_map(|&s| {
                    queue.by_state[state_index(s)]
                        .iter()
                        .take(excess + already)
                        .copied()
                })
                .collect();
            oldest.sort_unstable();
            let fresh: Vec<JobId> = oldest
                .into_iter()
                .filter(|id| !picked.contains(id))
                .take(excess)
                .collect();
            picked.extend(fresh.iter().copied());
            ids.extend(fresh);
        }
        let len = ids.len();
        self.commit_infallible(len, (len > 0).then_some(Event::Removed { ids }))
    }

    pub fn cancel(&mut self, now: Millis, id: JobId) -> Result<Decided<()>, CoreError> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| CoreError::not_found("job", &sluice_proto::ids::encode(id)))?;
        if job.state.is_finished() {
            return Err(CoreError::new(
                ErrorKind::InvalidState,
                "invalid_state",
                format!(
                    "job is {}; only unfinished jobs can be cancelled",
                    job.state.as_str()
                ),
            ));
        }
        self.commit((), Some(Event::Cancelled { at: now, id }))
    }

    pub fn retry(&mut self, now: Millis, id: JobId) -> Result<Decided<()>, CoreError> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| CoreError::not_found("job", &sluice_proto::ids::encode(id)))?;
        if !matches!(
            job.state,
            JobState::Dead | JobState::Cancelled | JobState::Failed
        ) {
            return Err(CoreError::new(
                ErrorKind::InvalidState,
                "invalid_state",
                format!(
                    "job is {}; only dead, cancelled and failed jobs can be retried",
                    job.state.as_str()
                ),
            ));
        }
        self.commit((), Some(Event::Retried { at: now, id }))
    }

    /// Sets a queue's flow control (creating the queue if needed): `limits` for the queue
    /// as a whole, `key_limits` for each limit key in it. Every rate bucket starts full.
    /// `QueueLimits::default()` for both removes every limit.
    pub fn set_limits(
        &mut self,
        now: Millis,
        queue: &str,
        limits: QueueLimits,
        key_limits: QueueLimits,
    ) -> Result<Decided<()>, CoreError> {
        if !limits::is_valid_name(queue, limits::QUEUE_NAME_BYTES_MAX) {
            return Err(CoreError::bad_input("queue", "not a valid queue name"));
        }
        check_limits("", limits)?;
        check_limits("key_", key_limits)?;
        if self.queue(queue).is_none() && self.ix.queues.len() >= limits::QUEUES_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_queues",
                format!("at most {} queues may exist", limits::QUEUES_MAX),
            ));
        }
        self.commit(
            (),
            Some(Event::LimitsSet {
                at: now,
                queue: queue.to_owned(),
                limits,
                key_limits,
            }),
        )
    }

    // ---- streams --------------------------------------------------------------------

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The compaction of stream `name`, if it is on.
    pub fn compaction(&self, name: &str) -> Option<Compaction> {
        self.compactions.streams.get(name).copied()
    }

    /// Turns compaction of an existing stream on (or changes it), or off.
    pub fn set_stream_compaction(
        &mut self,
        stream: &str,
        compaction: Option<Compaction>,
    ) -> Result<Decided<()>, CoreError> {
        if !self.streams.streams.contains_key(stream) {
            return Err(CoreError::not_found("stream", stream));
        }
        if let Some(c) = compaction {
            let details = c.check();
            if !details.is_empty() {
                return Err(invalid_request(details));
            }
        }
        if self.compaction(stream) == compaction {
            return self.commit((), None);
        }
        self.commit(
            (),
            Some(Event::StreamCompactionSet {
                stream: stream.to_owned(),
                compaction,
            }),
        )
    }

    /// Creates a stream, or updates one: its partitions may grow (records already
    /// written stay where they are) and its retention change. Replies whether it is new.
    pub fn set_stream(
        &mut self,
        now: Millis,
        mut spec: StreamSpec,
    ) -> Result<Decided<bool>, CoreError> {
        let details = spec.check();
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        if let Some(error) = self.streams.too_many(&spec.name) {
            return Err(error);
        }
        let existing = self.streams.streams.get(&spec.name);
        if let Some(existing) = existing {
            if spec.partitions < existing.partitions {
                return Err(CoreError::bad_input(
                    "partitions",
                    format!(
                        "partitions can only grow: the stream has {}",
                        existing.partitions
                    ),
                ));
            }
            spec.created_at = existing.created_at;
            if *existing == spec {
                return Ok((None, false));
            }
        } else {
            spec.created_at = now;
        }
        let new = existing.is_none();
        self.commit(new, Some(Event::StreamSet { spec }))
    }

    pub fn feeds(&self) -> &Feeds {
        &self.feeds
    }

    /// Sets up (or re-kinds) a feed from `stream` into `queue`; a new one starts at
    /// `start` per partition. Replies whether it is new.
    pub fn set_feed(
        &mut self,
        now: Millis,
        stream: &str,
        queue: &str,
        kind: &str,
        start: BTreeMap<u32, u64>,
    ) -> Result<Decided<bool>, CoreError> {
        if !self.streams.streams.contains_key(stream) {
            return Err(CoreError::not_found("stream", stream));
        }
        let mut details = Vec::new();
        if !limits::is_valid_name(queue, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(Detail {
                path: "queue".into(),
                message: "not a valid queue name".into(),
            });
        }
        if !limits::is_valid_name(kind, limits::KIND_BYTES_MAX) {
            details.push(Detail {
                path: "kind".into(),
                message: "1 to 128 bytes of A-Z a-z 0-9 _ . : -".into(),
            });
        }
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        let key = (stream.to_owned(), queue.to_owned());
        let existing = self.feeds.feeds.get(&key);
        if existing.is_none() && self.feeds.feeds.len() >= FEEDS_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_feeds",
                format!("at most {FEEDS_MAX} feeds may exist"),
            ));
        }
        self.check_new_queues(std::iter::once(queue))?;
        let feed = match existing {
            Some(feed) if feed.kind == kind => return Ok((None, false)),
            Some(feed) => Feed {
                kind: kind.to_owned(),
                ..feed.clone()
            },
            None => Feed {
                stream: stream.to_owned(),
                queue: queue.to_owned(),
                kind: kind.to_owned(),
                created_at: now,
                offsets: start,
            },
        };
        let new = existing.is_none();
        self.commit(new, Some(Event::FeedSet { feed }))
    }

    pub fn remove_feed(&mut self, stream: &str, queue: &str) -> Result<Decided<()>, CoreError> {
        if !self
            .feeds
            .feeds
            .contains_key(&(stream.to_owned(), queue.to_owned()))
        {
            return Err(CoreError::not_found(
                "feed",
                &format!("{stream} -> {queue}"),
            ));
        }
        self.commit(
            (),
            Some(Event::FeedRemoved {
                stream: stream.to_owned(),
                queue: queue.to_owned(),
            }),
        )
    }

    /// Delivers records to a feed's queue: `payloads` (JSON text, one per record, in
    /// offset order) become jobs, and the feed moves to `offsets`. Replies with the ids.
    pub fn deliver_feed(
        &mut self,
        now: Millis,
        stream: &str,
        queue: &str,
        payloads: Vec<String>,
        offsets: Vec<(u32, u64)>,
    ) -> Result<Decided<Vec<JobId>>, CoreError> {
        let Some(feed) = self.feeds.feeds.get(&(stream.to_owned(), queue.to_owned())) else {
            return Err(CoreError::not_found(
                "feed",
                &format!("{stream} -> {queue}"),
            ));
        };
        let kind = feed.kind.clone();
        let mut last_id = self.last_id;
        let mut jobs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let id = self.next_id(now, last_id).ok_or_else(ids_exhausted)?;
            last_id = id;
            jobs.push(EnqueueSpec::new(queue, &kind, &payload).into_new_job(id, now));
        }
        let ids = jobs.iter().map(|j| j.id).collect();
        self.commit(
            ids,
            Some(Event::FeedDelivered {
                at: now,
                stream: stream.to_owned(),
                queue: queue.to_owned(),
                jobs,
                offsets,
            }),
        )
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The names of stream `stream`'s consumer groups, in order.
    pub fn groups_of(&self, stream: &str) -> Vec<String> {
        self.groups
            .groups
            .range((stream.to_owned(), String::new())..)
            .take_while(|((s, _), _)| s == stream)
            .map(|((_, g), _)| g.clone())
            .collect()
    }

    /// The durable state of a group, made empty on its first event.
    fn group_entry(&mut self, stream: &str, group: &str) -> &mut GroupState {
        self.groups
            .groups
            .entry((stream.to_owned(), group.to_owned()))
            .or_default()
    }

    pub fn group(&self, stream: &str, group: &str) -> Option<&GroupState> {
        self.groups
            .groups
            .get(&(stream.to_owned(), group.to_owned()))
    }

    /// Starts the next generation of a consumer group (creating it); replies with it.
    pub fn next_generation(
        &mut self,
        stream: &str,
        group: &str,
    ) -> Result<Decided<u64>, CoreError> {
        if !self.streams.streams.contains_key(stream) {
            return Err(CoreError::not_found("stream", stream));
        }
        if !limits::is_valid_name(group, limits::QUEUE_NAME_BYTES_MAX) {
            return Err(CoreError::bad_input(
                "group",
                "1 to 128 bytes of A-Z a-z 0-9 _ . : -",
            ));
        }
        let key = (stream.to_owned(), group.to_owned());
        let current = self.groups.groups.get(&key).map(|g| g.generation);
        if current.is_none()
            && self
                .groups
                .groups
                .keys()
                .filter(|(s, _)| s == stream)
                .count()
                >= GROUPS_PER_STREAM_MAX
        {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_groups",
                format!("at most {GROUPS_PER_STREAM_MAX} consumer groups per stream"),
            ));
        }
        let generation = current.unwrap_or(0) + 1;
        self.commit(
            generation,
            Some(Event::GroupGeneration {
                stream: stream.to_owned(),
                group: group.to_owned(),
                generation,
            }),
        )
    }

    /// Commits offsets for a member of `generation`; refused (409 `stale_generation`)
    /// when the group has moved on, and for partitions the stream does not have.
    pub fn commit_offsets(
        &mut self,
        stream: &str,
        group: &str,
        generation: u64,
        offsets: Vec<(u32, u64)>,
    ) -> Result<Decided<()>, CoreError> {
        let Some(spec) = self.streams.streams.get(stream) else {
            return Err(CoreError::not_found("stream", stream));
        };
        if let Some(&(p, _)) = offsets.iter().find(|(p, _)| *p >= spec.partitions) {
            return Err(CoreError::bad_input(
                "offsets",
                format!("the stream has no partition {p}"),
            ));
        }
        let current = self.group(stream, group).map_or(0, |g| g.generation);
        if generation != current {
            return Err(CoreError::new(
                ErrorKind::Conflict,
                "stale_generation",
                format!("the group is at generation {current}, not {generation}: rejoin"),
            ));
        }
        if offsets.is_empty() {
            return Ok((None, ()));
        }
        self.commit(
            (),
            Some(Event::GroupCommitted {
                stream: stream.to_owned(),
                group: group.to_owned(),
                generation,
                offsets,
            }),
        )
    }

    // ---- alerts ---------------------------------------------------------------------

    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// Sets (creates or replaces) an alert rule. Replacing keeps its firing state when
    /// it still watches the same queue, metric, comparison and threshold.
    pub fn set_alert_rule(
        &mut self,
        now: Millis,
        rule: AlertRule,
    ) -> Result<Decided<()>, CoreError> {
        let details = rule.check();
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        if let Some(error) = self.alerts.rule_count_error(&rule.name) {
            return Err(error);
        }
        self.commit((), Some(Event::AlertRuleSet { at: now, rule }))
    }

    pub fn remove_alert_rule(&mut self, name: &str) -> Result<Decided<()>, CoreError> {
        if !self.alerts.rules.contains_key(name) {
            return Err(CoreError::not_found("alert rule", name));
        }
        self.commit(
            (),
            Some(Event::AlertRuleRemoved {
                name: name.to_owned(),
            }),
        )
    }

    pub fn set_silence(&mut self, now: Millis, silence: Silence) -> Result<Decided<()>, CoreError> {
        let details = silence.check(now);
        if !details.is_empty() {
            return Err(invalid_request(details));
        }
        let live = self
            .alerts
            .silences
            .values()
            .filter(|s| s.until > now && s.id != silence.id)
            .count();
        if live >= SILENCES_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_silences",
                format!("at most {SILENCES_MAX} silences may be in force"),
            ));
        }
        self.commit((), Some(Event::SilenceSet { at: now, silence }))
    }

    pub fn remove_silence(&mut self, id: &str) -> Result<Decided<()>, CoreError> {
        if !self.alerts.silences.contains_key(id) {
            return Err(CoreError::not_found("silence", id));
        }
        self.commit((), Some(Event::SilenceRemoved { id: id.to_owned() }))
    }

    /// Records that rule `name` now fires (or no longer does) with `value`, if that is a
    /// change. Replies with the transition logged.
    pub fn alert_changed(
        &mut self,
        now: Millis,
        name: &str,
        firing: bool,
        value: f64,
    ) -> Decided<Option<AlertTransition>> {
        let Some(state) = self.alerts.rules.get(name) else {
            return (None, None);
        };
        if state.firing_since.is_some() == firing || !value.is_finite() {
            return (None, None);
        }
        let transition = AlertTransition {
            at: now,
            rule: name.to_owned(),
            firing,
            value,
            silenced: self.alerts.silenced(&state.rule, now),
        };
        self.commit_infallible(
            Some(transition.clone()),
            Some(Event::AlertChanged { transition }),
        )
    }

    pub fn set_paused(&mut self, queue: &str, paused: bool) -> Result<Decided<()>, CoreError> {
        if !limits::is_valid_name(queue, limits::QUEUE_NAME_BYTES_MAX) {
            return Err(CoreError::bad_input("queue", "not a valid queue name"));
        }
        match self.queue(queue) {
            Some(q) if q.paused == paused => return Ok((None, ())),
            // Pausing a queue before its first job is useful; resuming one that does
            // not exist is a typo.
            None if !paused => return Err(CoreError::not_found("queue", queue)),
            None if self.ix.queues.len() >= limits::QUEUES_MAX => {
                return Err(CoreError::new(
                    ErrorKind::Limit,
                    "too_many_queues",
                    format!("at most {} queues may exist", limits::QUEUES_MAX),
                ))
            }
            _ => {}
        }
        self.commit(
            (),
            Some(Event::QueuePaused {
                queue: queue.to_owned(),
                paused,
            }),
        )
    }

    /// Removes every ready, scheduled and failed job of a queue; leased jobs run on.
    pub fn purge(&mut self, queue: &str) -> Result<Decided<usize>, CoreError> {
        let q = self
            .queue(queue)
            .ok_or_else(|| CoreError::not_found("queue", queue))?;
        let ids: Vec<JobId> = [JobState::Ready, JobState::Scheduled, JobState::Failed]
            .iter()
            .flat_map(|&s| q.by_state[state_index(s)].iter().copied())
            .collect();
        let len = ids.len();
        let event = (len > 0).then(|| Event::Purged {
            queue: queue.to_owned(),
            ids,
        });
        Ok(self.commit_infallible(len, event))
    }

    /// Moves up to `limit` jobs of `from` in `state` (scheduled, ready, failed or dead:
    /// not leased, not finished otherwise) to the queue `to`, oldest first. They keep
    /// their state, attempts, history and unique key (now held in `to`). Replies with the
    /// number moved.
    pub fn move_jobs(
        &mut self,
        from: &str,
        to: &str,
        state: JobState,
        limit: usize,
    ) -> Result<Decided<usize>, CoreError> {
        if !limits::is_valid_name(to, limits::QUEUE_NAME_BYTES_MAX) {
            return Err(CoreError::bad_input("to", "not a valid queue name"));
        }
        if from == to {
            return Err(CoreError::bad_input("to", "is the queue the jobs are in"));
        }
        if !matches!(
            state,
            JobState::Scheduled | JobState::Ready | JobState::Failed | JobState::Dead
        ) {
            return Err(CoreError::bad_input(
                "state",
                "only scheduled, ready, failed and dead jobs can be moved",
            ));
        }
        let q = self
            .queue(from)
            .ok_or_else(|| CoreError::not_found("queue", from))?;
        if self.queue(to).is_none() && self.ix.queues.len() >= limits::QUEUES_MAX {
            return Err(CoreError::new(
                ErrorKind::Limit,
                "too_many_queues",
                format!("at most {} queues may exist", limits::QUEUES_MAX),
            ));
        }
        let ids: Vec<JobId> = q.by_state[state_index(state)]
            .iter()
            .take(limit)
            .copied()
            .collect();
        let len = ids.len();
        let event = (len > 0).then(|| Event::Moved {
            to: to.to_owned(),
            ids,
        });
        self.commit(len, event)
    }

    fn commit<T>(&mut self, reply: T, event: Option<Event>) -> Result<Decided<T>, CoreError> {
        Ok(self.commit_infallible(reply, event))
    }

    fn commit_infallible<T>(&mut self, reply: T, event: Option<Event>) -> Decided<T> {
        if let Some(event) = &event {
            let applied = self.apply(event);
            debug_assert!(applied.is_ok(), "a decided event must apply: {applied:?}");
        }
        (event, reply)
    }

    // ---- apply ----------------------------------------------------------------------

    fn intern_kind(&mut self, kind: &str) -> u32 {
        if let Some(&id) = self.kind_ids.get(kind) {
            return id;
        }
        let id = self.kinds.len() as u32;
        self.kinds.push(kind.into());
        self.kind_ids.insert(kind.into(), id);
        id
    }

    /// The name of a job's `kind` number.
    /// Job kinds seen (numbered from 0).
    pub fn kind_len(&self) -> usize {
        self.kinds.len()
    }

    pub fn kind_name(&self, kind: u32) -> &str {
        self.kinds.get(kind as usize).map_or("", |k| k)
    }

    /// Applies one event. An error means the log does not fit the state (a corrupt or
    /// foreign log); the state is then unusable and start-up must stop.
    pub fn apply(&mut self, event: &Event) -> Result<(), String> {
        if let Some(at) = event.at() {
            self.ix.sweep_idle_keys(at);
        }
        match event {
            Event::Enqueued { at, jobs } => {
                for new in jobs {
                    self.insert_new_job(*at, new, None)?;
                }
            }
            Event::EnqueuedKeyed {
                at,
                jobs,
                limit_keys,
            } => {
                let mut keys = limit_keys.iter().peekable();
                for new in jobs {
                    let key = keys
                        .next_if(|(id, _)| *id == new.id)
                        .map(|(_, k)| k.as_str());
                    if key.is_some_and(|k| !limits::is_valid_limit_key(k)) {
                        return Err(format!("job {} has an invalid limit key", new.id));
                    }
                    self.insert_new_job(*at, new, key)?;
                }
                if let Some((id, _)) = keys.next() {
                    return Err(format!(
                        "limit key for job {id} which is not enqueued there"
                    ));
                }
            }
            Event::LimitsSet {
                at,
                queue,
                limits,
                key_limits,
            } => self.set_queue_limits(*at, queue, *limits, *key_limits),
            Event::CronSet { spec, next_at, .. } => {
                let schedule = Schedule::parse(&spec.schedule, &spec.timezone)
                    .map_err(|(_, message)| format!("cron {}: {message}", spec.name))?;
                let last_fired_at = self.crons.get(&spec.name).and_then(|c| c.last_fired_at);
                self.crons.insert(
                    spec.name.clone(),
                    Cron {
                        spec: spec.clone(),
                        schedule,
                        next_at: *next_at,
                        last_fired_at,
                    },
                );
            }
            Event::CronRemoved { name } => {
                self.crons.remove(name);
            }
            Event::CronFired { at, fired } => {
                for fire in fired {
                    for job in &fire.jobs {
                        self.insert_new_job(*at, job, None)?;
                    }
                    if let Some(cron) = self.crons.get_mut(&fire.name) {
                        cron.next_at = fire.next_at;
                        cron.last_fired_at = Some(*at);
                    }
                }
            }
            Event::Moved { to, ids } => {
                let to = self.ix.queue_id_or_create(to);
                for id in ids {
                    let job = self
                        .jobs
                        .get_mut(id)
                        .ok_or_else(|| format!("moved job {id} does not exist"))?;
                    let from = job.queue;
                    self.ix.remove(job);
                    // A limit key counts per queue: it moves with its job.
                    if let Some(key) = self.ix.job_keys.get(id).cloned() {
                        self.ix.release_key(from, &key);
                        self.ix.hold_key(to, &key);
                    }
                    job.queue = to;
                    self.ix.insert(job);
                    // A unique key is held per queue: it moves with its holder.
                    if let Some(key) = job.extra().and_then(|e| e.unique_key.clone()) {
                        if let Some(entry) = self.unique.remove(&(from, key.clone())) {
                            if entry.0 == *id {
                                self.unique.insert((to, key), entry);
                            } else {
                                self.unique.insert((from, key), entry);
                            }
                        }
                    }
                }
            }
            Event::BatchEnqueued { at, jobs, callback } => {
                if callback.id == JobId::MAX
                    || self.jobs.contains_key(&callback.id)
                    || self.batches.contains_key(&callback.id)
                    || jobs.iter().any(|j| j.id == callback.id)
                {
                    return Err(format!("batch id {} is taken or out of range", callback.id));
                }
                for new in jobs {
                    self.insert_new_job(*at, new, None)?;
                    self.batch_of.insert(new.id, callback.id);
                }
                // The callback's id is reserved now, so later ids never take it.
                self.last_id = self.last_id.max(callback.id);
                self.batches.insert(
                    callback.id,
                    Batch {
                        id: callback.id,
                        created_at: *at,
                        total: u32::try_from(jobs.len()).unwrap_or(u32::MAX),
                        succeeded: 0,
                        dead: 0,
                        cancelled: 0,
                        finished_at: None,
                        callback: callback.clone(),
                    },
                );
            }
            Event::Leased {
                at,
                lease_id,
                worker,
                jobs,
            } => {
                if *lease_id == LeaseId::MAX {
                    return Err(format!("lease id {lease_id} is out of range"));
                }
                self.last_lease_id = self.last_lease_id.max(*lease_id);
                for item in jobs {
                    let job = self
                        .jobs
                        .get_mut(&item.id)
                        .ok_or_else(|| format!("leased job {} does not exist", item.id))?;
                    let key = self.ix.job_keys.get(&item.id);
                    if let Some(queue) = self.ix.queues.get_mut(job.queue as usize) {
                        queue.take_token(*at, key.map(|k| &**k));
                    }
                    self.ix.remove(job);
                    job.state = JobState::Leased;
                    job.attempts = job.attempts.saturating_add(1);
                    job.lease_id = *lease_id;
                    job.lease_expires_at = item.expires_at;
                    let attempt = job.attempts;
                    let history = &mut job.extra_mut().history;
                    if history.len() >= limits::HISTORY_LEN_MAX {
                        history.remove(0);
                    }
                    history.push(Attempt {
                        attempt,
                        leased_at: *at,
                        finished_at: None,
                        outcome: None,
                        error: None,
                        worker: worker.as_deref().map(Into::into),
                    });
                    self.ix.insert(job);
                }
            }
            Event::Heartbeat {
                id,
                expires_at,
                progress,
                ..
            } => {
                let job = self
                    .jobs
                    .get_mut(id)
                    .ok_or_else(|| format!("heartbeat for missing job {id}"))?;
                self.ix.remove(job);
                job.lease_expires_at = *expires_at;
                if let Some(progress) = progress {
                    job.extra_mut().progress = Some(progress.as_str().into());
                }
                self.ix.insert(job);
            }
            Event::Acked { at, ids } => {
                for id in ids {
                    self.finish_attempt(
                        *id,
                        *at,
                        Outcome::Succeeded,
                        None,
                        JobState::Succeeded,
                        None,
                    )?;
                }
            }
            Event::Failed { at, jobs } => {
                for item in jobs {
                    let (state, run_at) = match item.retry_at {
                        Some(retry_at) => (JobState::Failed, Some(retry_at)),
                        None => (JobState::Dead, None),
                    };
                    self.finish_attempt(
                        item.id,
                        *at,
                        Outcome::Failed,
                        Some(&item.error),
                        state,
                        run_at,
                    )?;
                }
            }
            Event::Expired { at, jobs } => {
                for &(id, retry_at) in jobs {
                    let state = if retry_at.is_some() {
                        JobState::Ready
                    } else {
                        JobState::Dead
                    };
                    self.finish_attempt(
                        id,
                        *at,
                        Outcome::Expired,
                        Some("lease expired"),
                        state,
                        retry_at,
                    )?;
                }
            }
            Event::Cancelled { at, id } => {
                let leased = self
                    .jobs
                    .get(id)
                    .is_some_and(|j| j.state == JobState::Leased);
                if leased {
                    self.finish_attempt(
                        *id,
                        *at,
                        Outcome::Cancelled,
                        None,
                        JobState::Cancelled,
                        None,
                    )?;
                } else {
                    self.transition(*id, *at, JobState::Cancelled, None)?;
                }
            }
            Event::Retried { at, id } => {
                let job = self
                    .jobs
                    .get_mut(id)
                    .ok_or_else(|| format!("retry of missing job {id}"))?;
                if job.state != JobState::Failed {
                    job.attempts = 0;
                }
                self.transition(*id, *at, JobState::Ready, Some(*at))?;
            }
            Event::QueuePaused { queue, paused } => {
                let id = self.ix.queue_id_or_create(queue);
                self.ix.queues[id as usize].paused = *paused;
            }
            Event::QueueLimitsSet { at, queue, limits } => {
                self.set_queue_limits(*at, queue, *limits, QueueLimits::default());
            }
            Event::AlertRuleSet { rule, .. } => {
                // A log this state machine wrote holds only rules it checked.
                if !rule.check().is_empty() {
                    return Err(format!("alert rule {:?} is not valid", rule.name));
                }
                self.alerts.set_rule(rule);
            }
            Event::AlertRuleRemoved { name } => {
                self.alerts.rules.remove(name);
            }
            Event::SilenceSet { at, silence } => {
                // Its end may be past by now; anything else wrong, this machine did not write.
                let details = silence.check(silence.created_at);
                if details.iter().any(|d| d.path != "until") {
                    return Err(format!("silence {:?} is not valid", silence.id));
                }
                self.alerts.set_silence(*at, silence);
            }
            Event::SilenceRemoved { id } => {
                self.alerts.silences.remove(id);
            }
            Event::AlertChanged { transition } => self.alerts.changed(transition),
            Event::FeedSet { feed } => {
                self.ix.queue_id_or_create(&feed.queue);
                self.feeds
                    .feeds
                    .insert((feed.stream.clone(), feed.queue.clone()), feed.clone());
            }
            Event::FeedRemoved { stream, queue } => {
                self.feeds.feeds.remove(&(stream.clone(), queue.clone()));
            }
            Event::FeedDelivered {
                at,
                stream,
                queue,
                jobs,
                offsets,
            } => {
                for new in jobs {
                    self.insert_new_job(*at, new, None)?;
                }
                if let Some(feed) = self.feeds.feeds.get_mut(&(stream.clone(), queue.clone())) {
                    for &(partition, offset) in offsets {
                        feed.offsets.insert(partition, offset);
                    }
                }
            }
            Event::GroupGeneration {
                stream,
                group,
                generation,
            } => {
                let state = self.group_entry(stream, group);
                if *generation <= state.generation {
                    return Err(format!(
                        "group {group} went back to generation {generation}"
                    ));
                }
                state.generation = *generation;
            }
            Event::GroupCommitted {
                stream,
                group,
                offsets,
                ..
            } => {
                let state = self.group_entry(stream, group);
                for &(partition, offset) in offsets {
                    state.offsets.insert(partition, offset);
                }
            }
            Event::StreamCompactionSet { stream, compaction } => {
                if !self.streams.streams.contains_key(stream)
                    || compaction.is_some_and(|c| !c.check().is_empty())
                {
                    return Err(format!("compaction of {stream:?} set to an invalid value"));
                }
                match compaction {
                    Some(c) => self.compactions.streams.insert(stream.clone(), *c),
                    None => self.compactions.streams.remove(stream),
                };
            }
            Event::StreamSet { spec } => {
                let shrinks = self
                    .streams
                    .streams
                    .get(&spec.name)
                    .is_some_and(|s| s.partitions > spec.partitions);
                if !spec.check().is_empty() || shrinks {
                    return Err(format!("stream {:?} set to an invalid spec", spec.name));
                }
                self.streams.streams.insert(spec.name.clone(), spec.clone());
            }
            Event::Purged { ids, .. } | Event::Removed { ids } => {
                for id in ids {
                    self.remove_job(*id)?;
                }
            }
        }
        Ok(())
    }

    fn set_queue_limits(
        &mut self,
        at: Millis,
        queue: &str,
        limits: QueueLimits,
        key_limits: QueueLimits,
    ) {
        let id = self.ix.queue_id_or_create(queue);
        let queue = &mut self.ix.queues[id as usize];
        queue.limits = limits;
        queue.bucket = Bucket {
            level: limits.rate.map_or(0, Bucket::capacity),
            at,
        };
        queue.key_limits = key_limits;
        // Every key's bucket starts full; keys no job carries go.
        queue.keys.retain(|_, slot| slot.jobs > 0);
        for slot in queue.keys.values_mut() {
            slot.bucket = Bucket::FULL;
        }
        if limits.rate.is_some() || key_limits.rate.is_some() {
            self.rate_limited.insert(id);
        } else {
            self.rate_limited.remove(&id);
        }
    }

    fn insert_new_job(
        &mut self,
        at: Millis,
        new: &NewJob,
        limit_key: Option<&str>,
    ) -> Result<(), String> {
        if self.jobs.contains_key(&new.id) {
            return Err(format!("job {} enqueued twice", new.id));
        }
        // An unfinished batch holds its callback's id until it fires (the callback is
        // inserted after `finished_at` is set).
        if self
            .batches
            .get(&new.id)
            .is_some_and(|b| b.finished_at.is_none())
        {
            return Err(format!("job id {} is reserved by a batch", new.id));
        }
        // The next id is one more than the last: u64::MAX is never decided.
        if new.id == JobId::MAX {
            return Err(format!("job id {} is out of range", new.id));
        }
        let queue = self.ix.queue_id_or_create(&new.queue);
        let kind = self.intern_kind(&new.kind);
        let mut extra = None;
        if new.unique.is_some() || !new.tags.is_empty() {
            extra = Some(Box::new(JobExtra {
                unique_key: new.unique.as_ref().map(|(k, _)| k.as_str().into()),
                tags: new.tags.iter().map(|t| t.as_str().into()).collect(),
                ..JobExtra::default()
            }));
        }
        if let Some((key, expires_at)) = &new.unique {
            self.unique
                .insert((queue, key.as_str().into()), (new.id, *expires_at));
        }
        let job = Job {
            id: new.id,
            queue,
            state: if new.run_at > at {
                JobState::Scheduled
            } else {
                JobState::Ready
            },
            priority: new.priority,
            attempts: 0,
            max_attempts: new.max_attempts,
            timeout_ms: new.timeout_ms,
            backoff: new.backoff,
            run_at: new.run_at,
            lease_id: 0,
            lease_expires_at: 0,
            finished_at: 0,
            kind,
            payload: new.payload.as_str().into(),
            extra,
        };
        if let Some(key) = limit_key {
            // Jobs of a key share one copy of it.
            let key: Arc<str> = self.ix.queues[queue as usize]
                .keys
                .get_key_value(key)
                .map_or_else(|| Arc::from(key), |(k, _)| k.clone());
            self.ix.hold_key(queue, &key);
            self.ix.job_keys.insert(new.id, key);
        }
        self.ix.insert(&job);
        self.last_id = self.last_id.max(new.id);
        self.jobs.insert(new.id, job);
        Ok(())
    }

    /// Counts a batch member's first finish; the last one enqueues the callback job, its
    /// payload wrapped with the counts: `{"batch":{...},"payload":<the callback's>}`.
    fn batch_member_finished(
        &mut self,
        id: JobId,
        state: JobState,
        at: Millis,
    ) -> Result<(), String> {
        let Some(batch_id) = self.batch_of.remove(&id) else {
            return Ok(());
        };
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return Ok(());
        };
        match state {
            JobState::Succeeded => batch.succeeded += 1,
            JobState::Dead => batch.dead += 1,
            _ => batch.cancelled += 1,
        }
        if batch.pending() > 0 || batch.finished_at.is_some() {
            return Ok(());
        }
        batch.finished_at = Some(at);
        let mut callback = batch.callback.clone();
        callback.payload = format!(
            r#"{{"batch":{{"id":"{}","total":{},"succeeded":{},"dead":{},"cancelled":{}}},"payload":{}}}"#,
            sluice_proto::ids::encode(batch.id),
            batch.total,
            batch.succeeded,
            batch.dead,
            batch.cancelled,
            callback.payload
        );
        callback.run_at = callback.run_at.max(at);
        self.insert_new_job(at, &callback, None)?;
        if let Some(&queue) = self.ix.queue_ids.get(callback.queue.as_str()) {
            self.fired.push(queue);
        }
        Ok(())
    }

    /// Queues that got a batch callback job since the last call (to wake their polls).
    pub fn take_fired(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.fired)
    }

    pub fn batch(&self, id: JobId) -> Option<&Batch> {
        self.batches.get(&id)
    }

    /// Closes the running attempt of a leased job and moves it to `state`.
    fn finish_attempt(
        &mut self,
        id: JobId,
        at: Millis,
        outcome: Outcome,
        error: Option<&str>,
        state: JobState,
        run_at: Option<Millis>,
    ) -> Result<(), String> {
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| format!("missing job {id}"))?;
        if let Some(last) = job.extra_mut().history.last_mut() {
            last.finished_at = Some(at);
            last.outcome = Some(outcome);
            last.error = error.map(Into::into);
        }
        self.transition(id, at, state, run_at)
    }

    fn transition(
        &mut self,
        id: JobId,
        at: Millis,
        state: JobState,
        run_at: Option<Millis>,
    ) -> Result<(), String> {
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| format!("missing job {id}"))?;
        self.ix.remove(job);
        job.state = state;
        job.lease_id = 0;
        job.lease_expires_at = 0;
        if let Some(run_at) = run_at {
            job.run_at = run_at;
            // A retry due now is ready now; one due later waits in the delayed set.
            if state == JobState::Failed && run_at <= at {
                job.state = JobState::Ready;
            }
        }
        job.finished_at = if state.is_finished() { at } else { 0 };
        self.ix.insert(job);
        if state.is_finished() {
            self.release_unique(id);
            self.batch_member_finished(id, state, at)?;
        }
        Ok(())
    }

    fn release_unique(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let Some(key) = job.extra().and_then(|e| e.unique_key.as_ref()) else {
            return;
        };
        let map_key = (job.queue, key.clone());
        if self
            .unique
            .get(&map_key)
            .is_some_and(|&(holder, _)| holder == id)
        {
            self.unique.remove(&map_key);
        }
    }

    fn remove_job(&mut self, id: JobId) -> Result<(), String> {
        self.release_unique(id);
        if let Some(job) = self.jobs.remove(&id) {
            self.ix.remove(&job);
            if let Some(key) = self.ix.job_keys.remove(&id) {
                self.ix.release_key(job.queue, &key);
            }
        }
        // An unfinished member purged: it will never run, so it counts as cancelled, at
        // the batch's own creation time (a purge records no time).
        if let Some(&batch_id) = self.batch_of.get(&id) {
            let at = self.batches.get(&batch_id).map_or(0, |b| b.created_at);
            self.batch_member_finished(id, JobState::Cancelled, at)?;
        }
        // A batch lives as long as its callback job.
        self.batches.remove(&id);
        Ok(())
    }

    // ---- snapshots ------------------------------------------------------------------

    /// The state as snapshot bytes. Canonical: equal states encode to equal bytes, and
    /// decoding then encoding gives back the same bytes (hash-map entries are sorted).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut unique: Vec<(u32, &str, JobId, Millis)> = self
            .unique
            .iter()
            .map(|((q, k), &(id, at))| (*q, &**k, id, at))
            .collect();
        unique.sort_unstable();
        let mut keys: Vec<(u32, &str, u64, Millis)> = Vec::new();
        for (queue_id, queue) in self.ix.queues.iter().enumerate() {
            keys.extend(
                queue
                    .keys
                    .iter()
                    .map(|(k, slot)| (queue_id as u32, &**k, slot.bucket.level, slot.bucket.at)),
            );
        }
        keys.sort_unstable();
        let mut job_keys: Vec<(JobId, &str)> =
            self.ix.job_keys.iter().map(|(&id, k)| (id, &**k)).collect();
        job_keys.sort_unstable();
        let snapshot = SnapshotRef {
            last_id: self.last_id,
            last_lease_id: self.last_lease_id,
            queues: self
                .ix
                .queues
                .iter()
                .map(|q| (&*q.name, q.paused))
                .collect(),
            kinds: self.kinds.iter().map(|k| &**k).collect(),
            unique,
            jobs: JobsSeq(&self.jobs),
            limits: self
                .ix
                .queues
                .iter()
                .enumerate()
                .filter(|(_, q)| q.limits != QueueLimits::default())
                .map(|(i, q)| (i as u32, q.limits, q.bucket.level, q.bucket.at))
                .collect(),
            crons: self
                .crons
                .values()
                .map(|c| (&c.spec, c.next_at, c.last_fired_at))
                .collect(),
            batches: {
                let mut members: BTreeMap<JobId, Vec<JobId>> = BTreeMap::new();
                for (&job, &batch) in &self.batch_of {
                    members.entry(batch).or_default().push(job);
                }
                self.batches
                    .values()
                    .map(|b| {
                        let mut pending = members.remove(&b.id).unwrap_or_default();
                        pending.sort_unstable();
                        (b, pending)
                    })
                    .collect()
            },
            key_limits: self
                .ix
                .queues
                .iter()
                .enumerate()
                .filter(|(_, q)| q.key_limits != QueueLimits::default())
                .map(|(i, q)| (i as u32, q.key_limits))
                .collect(),
            keys,
            job_keys,
            alerts: &self.alerts,
            streams: &self.streams,
            groups: &self.groups,
            feeds: &self.feeds,
            compactions: &self.compactions,
        };
        postcard::to_allocvec(&snapshot).unwrap_or_default()
    }

    pub fn decode_snapshot(config: Config, bytes: &[u8]) -> Result<State, String> {
        let snapshot = SnapshotOwned::decode(bytes)?;
        // Ids are decided as one more than the last: they must fit, and every job and
        // lease in the snapshot must be covered by them.
        if snapshot.last_id == JobId::MAX || snapshot.last_lease_id == LeaseId::MAX {
            return Err("snapshot's last job or lease id is out of range".into());
        }
        let mut state = State::new(config);
        state.last_id = snapshot.last_id;
        state.last_lease_id = snapshot.last_lease_id;
        for (name, paused) in snapshot.queues {
            let id = state.ix.queue_id_or_create(&name);
            state.ix.queues[id as usize].paused = paused;
        }
        let mut rate_limited = BTreeSet::new();
        for (queue_id, limits, level, at) in snapshot.limits {
            let queue = state
                .ix
                .queues
                .get_mut(queue_id as usize)
                .ok_or_else(|| format!("limits name queue #{queue_id} which does not exist"))?;
            queue.limits = limits;
            queue.bucket = Bucket { level, at };
            if limits.rate.is_some() {
                rate_limited.insert(queue_id);
            }
        }
        for (queue_id, key_limits) in snapshot.key_limits {
            let queue =
                state.ix.queues.get_mut(queue_id as usize).ok_or_else(|| {
                    format!("key limits name queue #{queue_id} which does not exist")
                })?;
            queue.key_limits = key_limits;
            if key_limits.rate.is_some() {
                rate_limited.insert(queue_id);
            }
        }
        state.rate_limited = rate_limited;
        for (queue_id, key, level, at) in snapshot.keys {
            let queue = state.ix.queues.get_mut(queue_id as usize).ok_or_else(|| {
                format!("key {key:?} names queue #{queue_id} which does not exist")
            })?;
            let mut slot = KeySlot::new();
            slot.bucket = Bucket { level, at };
            if queue.keys.insert(key.as_str().into(), slot).is_some() {
                return Err(format!("key {key:?} of queue #{queue_id} appears twice"));
            }
        }
        for (id, key) in &snapshot.job_keys {
            if !limits::is_valid_limit_key(key) {
                return Err(format!("job {id} has an invalid limit key"));
            }
            if state.ix.job_keys.insert(*id, key.as_str().into()).is_some() {
                return Err(format!("job {id} has two limit keys"));
            }
        }
        for kind in snapshot.kinds {
            state.intern_kind(&kind);
        }
        for (queue, key, id, at) in snapshot.unique {
            state.unique.insert((queue, key.into()), (id, at));
        }
        state.jobs.reserve(snapshot.jobs.len());
        for job in snapshot.jobs {
            if job.queue as usize >= state.ix.queues.len() {
                return Err(format!(
                    "job {} names queue #{} which does not exist",
                    job.id, job.queue
                ));
            }
            if job.kind as usize >= state.kinds.len() {
                return Err(format!(
                    "job {} names kind #{} which does not exist",
                    job.id, job.kind
                ));
            }
            if job.id > state.last_id || job.lease_id > state.last_lease_id {
                return Err(format!(
                    "job {} or its lease {} is newer than the last ids",
                    job.id, job.lease_id
                ));
            }
            // A second copy would leave index entries behind that no job owns.
            if state.jobs.contains_key(&job.id) {
                return Err(format!("job {} appears twice", job.id));
            }
            state.ix.insert(&job);
            state.jobs.insert(job.id, job);
        }
        let job_keys: Vec<(JobId, Arc<str>)> = state
            .ix
            .job_keys
            .iter()
            .map(|(&id, k)| (id, k.clone()))
            .collect();
        for (id, key) in job_keys {
            let job = state
                .jobs
                .get(&id)
                .ok_or_else(|| format!("limit key for missing job {id}"))?;
            state.ix.hold_key(job.queue, &key);
        }
        for (queue_id, queue) in state.ix.queues.iter().enumerate() {
            for (key, slot) in &queue.keys {
                if slot.jobs == 0 {
                    let full_at = queue
                        .key_limits
                        .rate
                        .map_or(slot.bucket.at, |rate| slot.bucket.full_at(rate));
                    state
                        .ix
                        .idle_keys
                        .insert((full_at, queue_id as u32, key.clone()));
                }
            }
        }
        for (batch, pending) in snapshot.batches {
            if batch.id > state.last_id {
                return Err(format!("batch {} is newer than the last ids", batch.id));
            }
            if batch.callback.id != batch.id {
                return Err(format!(
                    "batch {} has a callback with id {}",
                    batch.id, batch.callback.id
                ));
            }
            if batch.finished_at.is_none() && state.jobs.contains_key(&batch.id) {
                return Err(format!(
                    "job {} has the id of an unfinished batch",
                    batch.id
                ));
            }
            if state.batches.contains_key(&batch.id) {
                return Err(format!("batch {} appears twice", batch.id));
            }
            for member in pending {
                if !state.jobs.contains_key(&member) {
                    return Err(format!("batch {} names missing job {member}", batch.id));
                }
                state.batch_of.insert(member, batch.id);
            }
            state.batches.insert(batch.id, batch);
        }
        state.alerts = snapshot.alerts;
        for spec in snapshot.streams.streams.values() {
            if !spec.check().is_empty() {
                return Err(format!(
                    "stream {:?} in the snapshot is not valid",
                    spec.name
                ));
            }
        }
        state.streams = snapshot.streams;
        state.groups = snapshot.groups;
        for feed in snapshot.feeds.feeds.values() {
            if state.queue_id(&feed.queue).is_none() {
                return Err(format!(
                    "feed into {:?}, a queue that does not exist",
                    feed.queue
                ));
            }
        }
        state.feeds = snapshot.feeds;
        for (stream, compaction) in &snapshot.compactions.streams {
            if !state.streams.streams.contains_key(stream) || !compaction.check().is_empty() {
                return Err(format!(
                    "compaction of {stream:?} in the snapshot is not valid"
                ));
            }
        }
        state.compactions = snapshot.compactions;
        for (spec, next_at, last_fired_at) in snapshot.crons {
            let schedule = Schedule::parse(&spec.schedule, &spec.timezone)
                .map_err(|(_, message)| format!("cron {}: {message}", spec.name))?;
            state.crons.insert(
                spec.name.clone(),
                Cron {
                    spec,
                    schedule,
                    next_at,
                    last_fired_at,
                },
            );
        }
        Ok(state)
    }
}

struct JobsSeq<'a>(&'a JobTable);

impl Serialize for JobsSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values())
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    last_id: JobId,
    last_lease_id: LeaseId,
    queues: Vec<(&'a str, bool)>,
    kinds: Vec<&'a str>,
    unique: Vec<(u32, &'a str, JobId, Millis)>,
    jobs: JobsSeq<'a>,
    /// `(queue, limits, bucket level, bucket time)` of queues with limits.
    limits: Vec<(u32, QueueLimits, u64, Millis)>,
    /// Batches with their unfinished members.
    batches: Vec<(&'a Batch, Vec<JobId>)>,
    /// Cron schedules with their next and last firing.
    crons: Vec<(&'a CronSpec, Option<Millis>, Option<Millis>)>,
    /// `(queue, per-key limits)` of queues with per-key limits.
    key_limits: Vec<(u32, QueueLimits)>,
    /// `(queue, key, bucket level, bucket time)` of every tracked limit key.
    keys: Vec<(u32, &'a str, u64, Millis)>,
    /// `(job, its limit key)` in id order.
    job_keys: Vec<(JobId, &'a str)>,
    alerts: &'a Alerts,
    streams: &'a Streams,
    groups: &'a Groups,
    feeds: &'a Feeds,
    compactions: &'a Compactions,
}

/// A snapshot as read: its sections in order. Each later section was added by a later
/// version, and postcard writes a struct as its fields one after the other, so a snapshot
/// is the first section's bytes followed by the others': one that ends after a section
/// was written before the next existed, and the missing sections are empty.
struct SnapshotOwned {
    last_id: JobId,
    last_lease_id: LeaseId,
    queues: Vec<(String, bool)>,
    kinds: Vec<String>,
    unique: Vec<(u32, String, JobId, Millis)>,
    jobs: Vec<Job>,
    limits: Vec<(u32, QueueLimits, u64, Millis)>,
    batches: Vec<(Batch, Vec<JobId>)>,
    crons: Vec<(CronSpec, Option<Millis>, Option<Millis>)>,
    key_limits: Vec<(u32, QueueLimits)>,
    keys: Vec<(u32, String, u64, Millis)>,
    job_keys: Vec<(JobId, String)>,
    alerts: Alerts,
    streams: Streams,
    groups: Groups,
    feeds: Feeds,
    compactions: Compactions,
}

/// The jobs and queues (every version).
#[derive(Deserialize)]
struct JobsSection {
    last_id: JobId,
    last_lease_id: LeaseId,
    queues: Vec<(String, bool)>,
    kinds: Vec<String>,
    unique: Vec<(u32, String, JobId, Millis)>,
    jobs: Vec<Job>,
}

/// Queue limits, batches and cron schedules.
#[derive(Deserialize, Default)]
struct FlowSection {
    limits: Vec<(u32, QueueLimits, u64, Millis)>,
    batches: Vec<(Batch, Vec<JobId>)>,
    crons: Vec<(CronSpec, Option<Millis>, Option<Millis>)>,
}

/// Per-key limits.
#[derive(Deserialize, Default)]
struct KeysSection {
    key_limits: Vec<(u32, QueueLimits)>,
    keys: Vec<(u32, String, u64, Millis)>,
    job_keys: Vec<(JobId, String)>,
}

/// Reads the next section, or an empty one if the snapshot ends before it.
fn section<'a, T: Deserialize<'a> + Default>(
    bytes: &'a [u8],
    name: &str,
) -> Result<(T, &'a [u8]), String> {
    if bytes.is_empty() {
        return Ok((T::default(), bytes));
    }
    postcard::take_from_bytes(bytes).map_err(|e| format!("undecodable snapshot ({name}): {e}"))
}

impl SnapshotOwned {
    fn decode(bytes: &[u8]) -> Result<SnapshotOwned, String> {
        let (jobs, rest): (JobsSection, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| format!("undecodable snapshot (jobs): {e}"))?;
        let (flow, rest): (FlowSection, _) = section(rest, "limits, batches, crons")?;
        let (keys, rest): (KeysSection, _) = section(rest, "limit keys")?;
        let (alerts, rest): (Alerts, _) = section(rest, "alerts")?;
        let (streams, rest): (Streams, _) = section(rest, "streams")?;
        let (groups, rest): (Groups, _) = section(rest, "consumer groups")?;
        let (feeds, rest): (Feeds, _) = section(rest, "feeds")?;
        let (compactions, rest): (Compactions, _) = section(rest, "stream compaction")?;
        if !rest.is_empty() {
            return Err(format!(
                "undecodable snapshot: {} bytes after its last section",
                rest.len()
            ));
        }
        Ok(SnapshotOwned {
            last_id: jobs.last_id,
            last_lease_id: jobs.last_lease_id,
            queues: jobs.queues,
            kinds: jobs.kinds,
            unique: jobs.unique,
            jobs: jobs.jobs,
            limits: flow.limits,
            batches: flow.batches,
            crons: flow.crons,
            key_limits: keys.key_limits,
            keys: keys.keys,
            job_keys: keys.job_keys,
            alerts,
            streams,
            groups,
            feeds,
            compactions,
        })
    }
}
