//! The broker: the state machine behind a lock, its log, and the wake-ups for long-polls.
//!
//! Every command runs as: lock the state, decide and apply the event, append it to the
//! WAL (still under the lock, so log order is apply order), unlock, then wait until the
//! record is durable before answering. Reads wait until everything they saw is durable.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use parking_lot::Mutex;
use sluice_core::{Config as CoreConfig, CoreError, Decided, Event, Millis, State};
use sluice_wal::{RecoveryReport, Replayed, Wal, WalOptions};

use crate::history::{Recorder, Sample};
use crate::metrics::Metrics;
use crate::waiters::Waiters;
use crate::workers::Registry;

use crate::error::ApiError;

/// Bytes appended but not yet written past which commands are refused with 503
/// `overloaded` instead of queueing more in memory.
pub const WAL_PENDING_BYTES_MAX: usize = 256 * 1024 * 1024;

pub fn system_now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

pub struct Broker {
    state: Mutex<State>,
    wal: Wal,
    /// Parked long-polls, woken per queue as jobs become ready there.
    pub waiters: Waiters,
    /// Counters and histograms fed by every decided event (locked after `state`).
    pub metrics: Mutex<Metrics>,
    /// Live events for `GET /v1/events` subscribers.
    pub live: crate::live::Live,
    /// Registered workers (locked after `state`, never with `metrics`).
    pub workers: Mutex<Registry>,
    /// Metric history on disk (locked alone).
    pub history: Mutex<Recorder>,
    /// What `GET /v1/health` last read from the history.
    pub health_cache: crate::analytics::HealthCache,
    /// Stream partitions, opened on first use.
    pub streams: crate::streams::StreamStore,
    /// Consumer group members and assignments (not logged).
    pub groups: crate::groups::Membership,
    /// Since when each alert rule's condition has held (not logged: a restart starts
    /// the wait afresh). Locked alone.
    pub alert_pending: Mutex<rustc_hash::FxHashMap<String, Millis>>,
    last_alert_evaluation_ms: AtomicI64,
    /// A registered worker not heard from for this long is dropped, its leases ended.
    pub worker_stale_ms: u64,
    /// Off: events are not counted (for measuring what the metrics cost).
    pub metrics_enabled: bool,
    records_at_last_snapshot: AtomicU64,
    /// Log bytes appended since the last snapshot, and that snapshot's size: a snapshot
    /// is written only once the log has grown by at least the snapshot's own size, so
    /// snapshotting costs at most as much I/O as the log itself, however big the state.
    log_bytes_since_snapshot: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    pub snapshot_every_records: u64,
    /// When the newest snapshot was written (ms since the epoch; 0 for none yet): the
    /// file's modification time at start-up, then each snapshot's.
    last_snapshot_at_ms: AtomicI64,
}

impl Broker {
    /// Opens the log, replays it, and returns a broker ready to serve.
    pub fn open(
        options: WalOptions,
        config: CoreConfig,
        snapshot_every_records: u64,
    ) -> Result<(Broker, RecoveryReport), sluice_wal::WalError> {
        let mut state = State::new(config);
        let mut snapshot_bytes = 0;
        let options_dir = options.dir.clone();
        let sync_each_write = matches!(options.fsync, sluice_wal::FsyncPolicy::Always);
        let sync_periodic = matches!(options.fsync, sluice_wal::FsyncPolicy::Batch { .. });
        let (wal, report) = Wal::open(options, &mut |item| match item {
            Replayed::Snapshot { bytes, .. } => {
                snapshot_bytes = bytes.len() as u64;
                state = State::decode_snapshot(config, bytes)?;
                Ok(())
            }
            Replayed::Record { bytes, .. } => state.apply(&Event::decode(bytes)?),
        })?;
        // Callbacks enqueued during replay have no long-polls to wake.
        state.take_fired();
        let broker = Broker {
            state: Mutex::new(state),
            wal,
            waiters: Waiters::default(),
            metrics: Mutex::new(Metrics::default()),
            live: crate::live::Live::default(),
            workers: Mutex::new(Registry::default()),
            history: Mutex::new(Recorder::new(&options_dir.join("metrics"), system_now_ms())),
            health_cache: crate::analytics::HealthCache::default(),
            streams: crate::streams::StreamStore::new(
                options_dir.join("streams"),
                sync_each_write,
                sync_periodic,
            ),
            groups: crate::groups::Membership::default(),
            alert_pending: Mutex::new(rustc_hash::FxHashMap::default()),
            last_alert_evaluation_ms: AtomicI64::new(0),
            worker_stale_ms: sluice_proto::limits::WORKER_STALE_MS_DEFAULT,
            metrics_enabled: true,
            records_at_last_snapshot: AtomicU64::new(report.snapshot_lsn.unwrap_or(0)),
            log_bytes_since_snapshot: AtomicU64::new(0),
            last_snapshot_bytes: AtomicU64::new(snapshot_bytes),
            snapshot_every_records,
            last_snapshot_at_ms: AtomicI64::new(newest_snapshot_at_ms(&options_dir)),
        };
        Ok((broker, report))
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Decides and applies a command, logs its event and waits for durability.
    pub async fn execute<T>(
        &self,
        command: impl FnOnce(&mut State, Millis) -> Result<Decided<T>, CoreError>,
    ) -> Result<T, ApiError> {
        self.execute_all(|state, now| {
            command(state, now).map(|(event, reply)| (event.into_iter().collect(), reply))
        })
        .await
    }

    /// As `execute`, for a request that runs several commands under one lock (an ack
    /// and a lease in one round trip): their events are logged in order, and the reply
    /// waits for the last.
    pub async fn execute_all<T>(
        &self,
        command: impl FnOnce(&mut State, Millis) -> Result<(Vec<Event>, T), CoreError>,
    ) -> Result<T, ApiError> {
        if self.wal.is_poisoned() {
            return Err(sluice_wal::WalError::Poisoned.into());
        }
        if self.wal.pending_bytes() > WAL_PENDING_BYTES_MAX {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the write-ahead log is behind; retry shortly",
            ));
        }
        let (lsn, reply, wake) = {
            let mut state = self.state.lock();
            let (events, reply) = command(&mut state, system_now_ms())?;
            let mut wake = Wakes::default();
            for event in &events {
                wake.ready_made(&state, event);
            }
            if self.metrics_enabled {
                let mut metrics = self.metrics.lock();
                for event in &events {
                    metrics.observe(&state, event);
                }
            }
            if self.live.active() {
                for event in &events {
                    self.live.observe(&state, event);
                }
            }
            count_worker_attempts(&self.workers, &state, &events);
            // Batch callbacks the events enqueued (when a batch's last member finished).
            for queue in state.take_fired() {
                let name = state.queue_name(queue).to_owned();
                wake.add(&name, 1);
            }
            let mut lsn = self.wal.next_lsn().checked_sub(1);
            for event in events {
                let bytes = event.encode();
                self.log_bytes_since_snapshot
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                lsn = Some(self.wal.append(&bytes)?);
            }
            (lsn, reply, wake)
        };
        wake.wake(&self.waiters);
        if let Some(lsn) = lsn {
            self.wal.wait_durable(lsn).await?;
        }
        Ok(reply)
    }

    /// Runs a read of the state and the metrics under their locks; answers once
    /// everything it could have seen is durable.
    pub async fn read_with_metrics<T>(
        &self,
        query: impl FnOnce(&State, &Metrics, Millis) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.read(|state, now| query(state, &self.metrics.lock(), now))
            .await
    }

    /// Runs a read under the lock; answers once everything it could have seen is durable.
    pub async fn read<T>(
        &self,
        query: impl FnOnce(&State, Millis) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (reply, lsn) = {
            let state = self.state.lock();
            (
                query(&state, system_now_ms())?,
                self.wal.next_lsn().checked_sub(1),
            )
        };
        if let Some(lsn) = lsn {
            self.wal.wait_durable(lsn).await?;
        }
        Ok(reply)
    }

    /// Periodic work: expire leases, forget old finished jobs, wake long-polls for jobs
    /// that came due, and snapshot when the log has grown enough.
    pub async fn tick(self: &Arc<Self>) -> Result<(), ApiError> {
        if self.wal.is_poisoned() {
            // Logged once by the log itself; every request already gets 503.
            return Ok(());
        }
        let now = system_now_ms();
        let promoted = {
            let mut state = self.state.lock();
            // Due scheduled jobs show as ready in listings even before anyone leases, and
            // the pollers of their queues are woken.
            let mut wakes = Wakes::default();
            for queue in state.promote_due(now) {
                wakes.add(state.queue_name(queue), 1);
            }
            // Rate buckets refill with time: pollers of those queues may lease again.
            for (queue, room) in state.rate_limited_ready(now) {
                wakes.add(queue, room);
            }
            wakes
        };
        promoted.wake(&self.waiters);
        self.execute(|s, now| Ok(s.fire_crons(now))).await?;
        self.execute(|s, now| Ok(s.expire_leases(now))).await?;
        self.execute(|s, now| Ok(s.retain(now))).await?;
        self.record_history();
        crate::groups::reap(self).await;
        crate::streams::run_feeds(self).await;
        let now = system_now_ms();
        if now - self.last_alert_evaluation_ms.load(Ordering::Relaxed)
            >= crate::alerting::EVALUATE_EVERY_MS
        {
            self.last_alert_evaluation_ms.store(now, Ordering::Relaxed);
            crate::alerting::evaluate(self).await;
        }
        let gone = self.workers.lock().reap(
            std::time::Instant::now(),
            Duration::from_millis(self.worker_stale_ms),
        );
        for worker in gone {
            let ended = self
                .execute(|s, now| Ok(s.expire_worker_leases(now, &worker)))
                .await?;
            tracing::warn!(
                worker,
                leases_ended = ended,
                "worker not heard from: dropped"
            );
        }
        let written = self.wal.next_lsn();
        if written.saturating_sub(self.records_at_last_snapshot.load(Ordering::Relaxed))
            >= self.snapshot_every_records
            && self.log_bytes_since_snapshot.load(Ordering::Relaxed)
                >= self.last_snapshot_bytes.load(Ordering::Relaxed)
        {
            self.snapshot().await?;
        }
        Ok(())
    }

    /// Stream retention and compaction (its own task, every `--stream-maintenance-ms`, so
    /// a long compaction never holds up the tick's lease expiry and snapshots).
    pub async fn stream_maintenance(self: &Arc<Self>) {
        let now = system_now_ms();
        let specs: Vec<crate::streams::Described> = {
            let state = self.state.lock();
            state
                .streams()
                .streams
                .values()
                .map(|spec| (spec.clone(), state.compaction(&spec.name)))
                .collect()
        };
        if specs.is_empty() {
            return;
        }
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.streams.retain(&specs, now)).await;
    }

    /// Sends the live `stats` summary, when anyone subscribes.
    pub fn live_stats(&self) {
        if !self.live.active() {
            return;
        }
        let workers = self.workers.lock().iter().count();
        let state = self.state.lock();
        let metrics = self.metrics.lock();
        self.live.stats(&state, &metrics, workers, system_now_ms());
    }

    /// Writes a snapshot of the state as of now and lets the log drop what it covers.
    pub async fn snapshot(self: &Arc<Self>) -> Result<(), ApiError> {
        let (lsn, bytes, log_bytes_covered) = {
            let state = self.state.lock();
            (
                self.wal.next_lsn(),
                state.encode_snapshot(),
                self.log_bytes_since_snapshot.load(Ordering::Relaxed),
            )
        };
        let snapshot_bytes = bytes.len() as u64;
        if let Some(last) = lsn.checked_sub(1) {
            self.wal.wait_durable(last).await?;
        }
        let this = self.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || this.wal.write_snapshot(lsn, &bytes))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??;
        self.records_at_last_snapshot.store(lsn, Ordering::Relaxed);
        self.last_snapshot_bytes
            .store(snapshot_bytes, Ordering::Relaxed);
        self.last_snapshot_at_ms
            .store(system_now_ms(), Ordering::Relaxed);
        self.log_bytes_since_snapshot
            .fetch_sub(log_bytes_covered, Ordering::Relaxed);
        tracing::info!(
            lsn,
            snapshot_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }

    /// Writes the history samples of the 10 s slots that have ended: per queue, gauges
    /// from the state now and counts and p95s from the metrics' slot.
    fn record_history(&self) {
        let now = system_now_ms();
        let due = self.history.lock().due_slots(now);
        if due.is_empty() {
            return;
        }
        let rows: Vec<(Millis, Vec<(String, Sample)>)> = {
            let state = self.state.lock();
            let metrics = self.metrics.lock();
            due.iter()
                .map(|&slot_ms| {
                    let samples = (0..state.queue_len() as u32)
                        .filter_map(|id| {
                            let queue = state.queue_by_id(id)?;
                            let slot = metrics.slot_summary(id, slot_ms).unwrap_or_default();
                            let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                            let count = |s| small(queue.count(s) as u64);
                            Some((
                                queue.name.to_string(),
                                Sample {
                                    ready: count(sluice_core::JobState::Ready),
                                    leased: count(sluice_core::JobState::Leased),
                                    enqueued: small(slot.enqueued),
                                    succeeded: small(slot.succeeded),
                                    failed: small(slot.failed),
                                    wait_p95_ms: slot.wait_p95_ms.map(small),
                                    run_p95_ms: slot.run_p95_ms.map(small),
                                    scheduled: count(sluice_core::JobState::Scheduled),
                                    retrying: count(sluice_core::JobState::Failed),
                                    dead: count(sluice_core::JobState::Dead),
                                },
                            ))
                        })
                        .collect();
                    (slot_ms, samples)
                })
                .collect()
        };
        let mut history = self.history.lock();
        for (slot_ms, samples) in rows {
            if let Err(error) = history.record(slot_ms, samples) {
                tracing::warn!(%error, "cannot write metric history");
            }
        }
    }

    /// When the newest snapshot was written, if any.
    pub fn last_snapshot_at_ms(&self) -> Option<Millis> {
        Some(self.last_snapshot_at_ms.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }

    pub fn close(&self) -> Result<(), sluice_wal::WalError> {
        self.streams.sync_all();
        if let Err(error) = self.history.lock().close() {
            tracing::warn!(%error, "cannot sync metric history");
        }
        self.wal.close()
    }

    pub fn tick_interval() -> Duration {
        Duration::from_millis(50)
    }
}

/// Credits registered workers with the attempts `events` finished (named on the job's
/// last attempt, which is the one that ended).
fn count_worker_attempts(workers: &Mutex<Registry>, state: &State, events: &[Event]) {
    let finished = |ids: &mut dyn Iterator<Item = (u64, bool)>| {
        let mut workers = workers.lock();
        if workers.is_empty() {
            return;
        }
        for (id, succeeded) in ids {
            let worker = state
                .job(id)
                .and_then(|j| j.extra())
                .and_then(|e| e.history.last())
                .and_then(|a| a.worker.as_deref());
            if let Some(worker) = worker {
                workers.finished(worker, succeeded);
            }
        }
    };
    for event in events {
        match event {
            Event::Acked { ids, .. } => finished(&mut ids.iter().map(|&id| (id, true))),
            Event::Failed { jobs, .. } => finished(&mut jobs.iter().map(|j| (j.id, false))),
            Event::Expired { jobs, .. } => finished(&mut jobs.iter().map(|&(id, _)| (id, false))),
            _ => {}
        }
    }
}

/// The modification time of the newest snapshot file in `dir` (0 for none).
fn newest_snapshot_at_ms(dir: &std::path::Path) -> Millis {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| sluice_wal::parse_snapshot_file_name(n).is_some())
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as Millis)
        .max()
        .unwrap_or(0)
}

/// Jobs made ready by a change, per queue: how many pollers to wake where.
#[derive(Default)]
pub struct Wakes(Vec<(String, usize)>);

impl Wakes {
    pub fn add(&mut self, queue: &str, count: usize) {
        match self.0.iter_mut().find(|(q, _)| q == queue) {
            Some((_, n)) => *n += count,
            None => self.0.push((queue.to_owned(), count)),
        }
    }

    /// Counts the jobs that `event` (already applied to `state`) made leasable: jobs made
    /// ready, and slots freed in queues with a concurrency limit.
    fn ready_made(&mut self, state: &State, event: &Event) {
        let mut freed = Vec::new();
        let mut job_ready = |id: &u64| {
            if let Some(job) = state.job(*id) {
                if job.state == sluice_core::JobState::Ready {
                    self.add(state.queue_name(job.queue), 1);
                }
                freed.push(job.queue);
            }
        };
        match event {
            Event::Enqueued { at, jobs }
            | Event::BatchEnqueued { at, jobs, .. }
            | Event::EnqueuedKeyed { at, jobs, .. }
            | Event::FeedDelivered { at, jobs, .. } => {
                for job in jobs.iter().filter(|j| j.run_at <= *at) {
                    self.add(&job.queue, 1);
                }
            }
            Event::Moved { ids, .. } => ids.iter().for_each(&mut job_ready),
            Event::CronFired { fired, .. } => {
                for job in fired.iter().flat_map(|f| &f.jobs) {
                    self.add(&job.queue, 1);
                }
            }
            Event::Retried { id, .. } => job_ready(id),
            Event::Expired { jobs, .. } => jobs.iter().for_each(|(id, _)| job_ready(id)),
            Event::Failed { jobs, .. } => jobs.iter().for_each(|item| job_ready(&item.id)),
            Event::Acked { ids, .. } => ids.iter().for_each(&mut job_ready),
            Event::Cancelled { id, .. } => job_ready(id),
            Event::QueueLimitsSet { at, queue, .. } | Event::LimitsSet { at, queue, .. } => {
                if let Some(q) = state.queue(queue) {
                    let room = q.lease_room(*at).min(q.count(sluice_core::JobState::Ready));
                    self.add(queue, room);
                }
            }
            Event::QueuePaused {
                queue,
                paused: false,
            } => {
                let ready = state
                    .queue(queue)
                    .map_or(0, |q| q.count(sluice_core::JobState::Ready));
                self.add(queue, ready);
            }
            _ => {}
        }
        // A finished lease frees a slot in a concurrency-limited queue.
        for queue in freed {
            if let Some(q) = state.queue_by_id(queue) {
                let limited = q.limits.concurrency.is_some() || q.key_limits.concurrency.is_some();
                if limited && q.count(sluice_core::JobState::Ready) > 0 {
                    self.add(&q.name, 1);
                }
            }
        }
    }

    pub fn wake(&self, waiters: &Waiters) {
        for (queue, count) in &self.0 {
            waiters.wake(queue, *count);
        }
    }
}
