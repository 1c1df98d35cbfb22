//! Events: the facts the state machine writes to the log. Applying an event never fails
//! and never looks at a clock, so replaying the log rebuilds exactly the same state.
//!
//! Events are encoded with postcard (a compact, non-self-describing serde format), so the
//! log's compatibility rule is: variants are only ever appended to the end of `Event`, and
//! the fields of an existing variant (and of the structs inside it, like `NewJob`) never
//! change — not even by appending one: postcard is positional, and a record written
//! without the new field would fail to decode (`DeserializeUnexpectedEnd`). A new field
//! means a new variant. `State` snapshots follow the same rule for their nested types and
//! grow only by sections appended at their end; a snapshot that ends before a section
//! was written without it, and the section is read as empty (`SnapshotOwned::decode`).

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertRule, AlertTransition, Silence};
use crate::cron::CronSpec;
use crate::streams::{Compaction, Feed, StreamSpec};
use crate::{JobId, LeaseId, Millis};

/// Retry backoff as stored (the wire form lives in `sluice-proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backoff {
    Exponential { base_ms: u32, max_ms: u32 },
    Fixed { delay_ms: u32 },
}

/// A job as the enqueue event records it: every option resolved, the id assigned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// JSON text, validated when the job was enqueued.
    pub payload: String,
    pub priority: i16,
    pub run_at: Millis,
    pub max_attempts: u16,
    pub backoff: Backoff,
    pub timeout_ms: u32,
    /// Unique key and when its claim lapses.
    pub unique: Option<(String, Millis)>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedItem {
    pub id: JobId,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedItem {
    pub id: JobId,
    pub error: String,
    /// When the job runs again; `None` means it is dead.
    pub retry_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Enqueued {
        at: Millis,
        jobs: Vec<NewJob>,
    },
    Leased {
        at: Millis,
        lease_id: LeaseId,
        worker: Option<String>,
        jobs: Vec<LeasedItem>,
    },
    Heartbeat {
        at: Millis,
        id: JobId,
        expires_at: Millis,
        progress: Option<String>,
    },
    Acked {
        at: Millis,
        ids: Vec<JobId>,
    },
    Failed {
        at: Millis,
        jobs: Vec<FailedItem>,
    },
    /// Leases that ran out: each job runs again at `retry_at`, or is dead.
    Expired {
        at: Millis,
        jobs: Vec<(JobId, Option<Millis>)>,
    },
    Cancelled {
        at: Millis,
        id: JobId,
    },
    Retried {
        at: Millis,
        id: JobId,
    },
    QueuePaused {
        queue: String,
        paused: bool,
    },
    Purged {
        queue: String,
        ids: Vec<JobId>,
    },
    /// Finished jobs past retention, forgotten.
    Removed {
        ids: Vec<JobId>,
    },
    /// A queue's flow control was set; its rate bucket starts full at `at`.
    QueueLimitsSet {
        at: Millis,
        queue: String,
        limits: QueueLimits,
    },
    /// Jobs enqueued as a batch: `callback` (its id is the batch's id, reserved now) is
    /// enqueued once every job of `jobs` has finished.
    BatchEnqueued {
        at: Millis,
        jobs: Vec<NewJob>,
        callback: NewJob,
    },
    /// A cron schedule set (created or replaced); its first occurrence after `at`.
    CronSet {
        at: Millis,
        spec: CronSpec,
        next_at: Option<Millis>,
    },
    CronRemoved {
        name: String,
    },
    /// Schedules whose occurrences came due: the jobs they enqueued and their next ones.
    CronFired {
        at: Millis,
        fired: Vec<CronFire>,
    },
    /// Jobs moved to queue `to`, keeping their state, attempts and history.
    Moved {
        to: String,
        ids: Vec<JobId>,
    },
    /// Jobs enqueued where some carry a limit key (per-key flow control): `limit_keys`
    /// names those, in the order of `jobs`.
    EnqueuedKeyed {
        at: Millis,
        jobs: Vec<NewJob>,
        limit_keys: Vec<(JobId, String)>,
    },
    /// A queue's flow control set, for the queue as a whole and for each limit key in
    /// it; every rate bucket starts full. Replaces `QueueLimitsSet` (which, replayed,
    /// leaves no per-key limits).
    LimitsSet {
        at: Millis,
        queue: String,
        limits: QueueLimits,
        key_limits: QueueLimits,
    },
    /// An alert rule set (created or replaced).
    AlertRuleSet {
        at: Millis,
        rule: AlertRule,
    },
    AlertRuleRemoved {
        name: String,
    },
    SilenceSet {
        at: Millis,
        silence: Silence,
    },
    SilenceRemoved {
        id: String,
    },
    /// A rule fired or resolved (decided by the server's evaluation).
    AlertChanged {
        transition: AlertTransition,
    },
    /// A stream created, or its partitions increased (never decreased) or retention set.
    StreamSet {
        spec: StreamSpec,
    },
    /// A consumer group rebalanced: its generation is now `generation`.
    GroupGeneration {
        stream: String,
        group: String,
        generation: u64,
    },
    /// A member of generation `generation` committed these offsets (next to read).
    GroupCommitted {
        stream: String,
        group: String,
        generation: u64,
        offsets: Vec<(u32, u64)>,
    },
    /// A feed set up (its offsets where it starts).
    FeedSet {
        feed: Feed,
    },
    FeedRemoved {
        stream: String,
        queue: String,
    },
    /// Records of a stream delivered to a feed's queue as `jobs`, the feed now at
    /// `offsets`: one record, so both or neither.
    FeedDelivered {
        at: Millis,
        stream: String,
        queue: String,
        jobs: Vec<NewJob>,
        offsets: Vec<(u32, u64)>,
    },
    /// A stream's compaction turned on (or its tombstone retention changed), or off.
    StreamCompactionSet {
        stream: String,
        compaction: Option<Compaction>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronFire {
    pub name: String,
    /// Enqueued now (none when the occurrences were missed and the policy skips them).
    pub jobs: Vec<NewJob>,
    pub next_at: Option<Millis>,
}

/// Flow control of one queue, or of each limit key within it, enforced when jobs are
/// leased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// At most this many of the queue's (or key's) jobs leased at once, across all workers.
    pub concurrency: Option<u32>,
    /// At most `limit` leases per `per_ms`: a token bucket of `limit` tokens refilled
    /// evenly over `per_ms` (so bursts up to `limit`, and `limit / per_ms` sustained).
    pub rate: Option<Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub limit: u32,
    pub per_ms: u64,
}

impl Event {
    /// When the event was decided, for events that record it.
    pub fn at(&self) -> Option<Millis> {
        match self {
            Event::Enqueued { at, .. }
            | Event::Leased { at, .. }
            | Event::Heartbeat { at, .. }
            | Event::Acked { at, .. }
            | Event::Failed { at, .. }
            | Event::Expired { at, .. }
            | Event::Cancelled { at, .. }
            | Event::Retried { at, .. }
            | Event::QueueLimitsSet { at, .. }
            | Event::BatchEnqueued { at, .. }
            | Event::CronSet { at, .. }
            | Event::CronFired { at, .. }
            | Event::EnqueuedKeyed { at, .. }
            | Event::LimitsSet { at, .. }
            | Event::AlertRuleSet { at, .. }
            | Event::SilenceSet { at, .. } => Some(*at),
            Event::AlertChanged { transition } => Some(transition.at),
            Event::QueuePaused { .. }
            | Event::Purged { .. }
            | Event::Removed { .. }
            | Event::CronRemoved { .. }
            | Event::Moved { .. }
            | Event::AlertRuleRemoved { .. }
            | Event::SilenceRemoved { .. }
            | Event::GroupGeneration { .. }
            | Event::GroupCommitted { .. }
            | Event::FeedRemoved { .. }
            | Event::StreamCompactionSet { .. } => None,
            Event::FeedSet { feed } => Some(feed.created_at),
            Event::FeedDelivered { at, .. } => Some(*at),
            Event::StreamSet { spec } => Some(spec.created_at),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("undecodable event: {e}"))
    }
}
