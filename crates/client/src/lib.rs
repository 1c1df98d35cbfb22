//! `sluice-client`: the Rust SDK for Sluice.
//!
//! - [`Client`]: enqueue jobs with typed (`serde`) payloads and every job option
//!   ([`NewJob`]), read and cancel jobs, and the raw lease/heartbeat/ack/fail calls.
//! - [`Worker`]: register a typed handler per job kind (`async fn(Job<T>) -> Result<(), E>`)
//!   and run it with a concurrency limit, prefetch, automatic heartbeats, batched acks, a
//!   job timeout, cancellation ([`Job::cancelled`]), panic isolation, reconnect with
//!   backoff and graceful shutdown. Retries and the dead set are the broker's.

mod client;
mod stream;
mod worker;

pub use client::{Client, Enqueued, Error, Limits, NewJob, QueueOrder, Result};
pub use sluice_proto::{Backoff, JobState};
pub use stream::{Consumed, GroupConsumer, StreamProducer, StreamRecord};
pub use worker::{CancelReason, Job, Worker, WorkerController, WorkerReport};
