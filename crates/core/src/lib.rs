//! The Sluice state machine: commands are decided into events, events are applied to the
//! job state. It knows nothing of files, sockets or the wall clock: time is passed in.
//!
//! Architecture Invariant: `State::apply` is deterministic and total over events that
//! `State` itself decided; replaying the log rebuilds the state exactly.

pub mod alerts;
pub mod cron;
mod error;
mod event;
mod state;
pub mod streams;
mod table;

pub use error::{CoreError, Detail, ErrorKind};
pub use event::{Backoff, CronFire, Event, FailedItem, LeasedItem, NewJob, QueueLimits, Rate};
pub use sluice_proto::JobState;
pub use state::{
    backoff_delay_ms, Attempt, Batch, Config, Cron, Decided, EnqueueSpec, Enqueued, FailInput, Job,
    JobExtra, KeyStatus, Outcome, Queue, QueueOrder, Settled, State, KEY_SCAN_MAX,
    TICK_BATCH_LEN_MAX,
};

/// Job ids: milliseconds since the epoch in the high 48 bits, a counter below.
pub type JobId = u64;
pub type LeaseId = u64;
/// Milliseconds since the Unix epoch.
pub type Millis = i64;
