//! Job metrics, computed from the events the state machine decides (not from handlers):
//! per queue, counters of what happened to jobs, and wait and run time histograms, both
//! since the server started (for Prometheus) and over the last minute (percentiles for
//! the API and `sluice top`). Fed by the broker under the state lock, so it sees each
//! event once, in log order, with the state right after it. Events replayed at start-up
//! are not counted: like every Prometheus counter, these start at zero with the process.

use std::fmt::Write as _;

use rustc_hash::FxHashMap;
use sluice_core::{Event, JobState, Millis, State};
use sluice_wal::{WalStats, FSYNC_BUCKETS_US};

/// Upper bounds of the Prometheus histogram buckets, in milliseconds (`le` in seconds):
/// from 5 ms to an hour, as a job's wait and run times span.
const PROMETHEUS_BUCKETS_MS: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
    3_600_000,
];
/// The recent window: `WINDOW_SLOTS` slots of `SLOT_MS` (one minute).
pub const SLOT_MS: Millis = 10_000;
const WINDOW_SLOTS: usize = 6;
/// Log-linear buckets for percentiles: 8 per doubling from 1 ms (each at most 9 % wide)
/// up to about 6 hours; the first holds everything under 1 ms, the last everything above.
const FINE_PER_DOUBLING: f64 = 8.0;
const FINE_LEN: usize = 200;

/// What can happen to a job, as counted in `sluice_jobs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Enqueued,
    Leased,
    Succeeded,
    /// An attempt failed and the job will run again.
    Failed,
    /// Out of attempts (failed or lease expired on the last one).
    Dead,
    /// A lease ran out (the job runs again or is dead: counted there too).
    Expired,
    Cancelled,
    /// Retried by hand from the dead or failed set.
    Retried,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Enqueued,
        Outcome::Leased,
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Dead,
        Outcome::Expired,
        Outcome::Cancelled,
        Outcome::Retried,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Enqueued => "enqueued",
            Outcome::Leased => "leased",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::Retried => "retried",
        }
    }
}

/// A histogram with Prometheus's cumulative buckets, its sum and count.
#[derive(Debug, Clone, Default)]
struct Cumulative {
    /// `buckets[i]`: observations at or under `PROMETHEUS_BUCKETS_MS[i]` (not yet summed:
    /// each observation counts in its own bucket; the export sums them).
    buckets: [u64; PROMETHEUS_BUCKETS_MS.len()],
    sum_ms: u64,
    count: u64,
}

impl Cumulative {
    fn observe(&mut self, ms: u64) {
        if let Some(i) = PROMETHEUS_BUCKETS_MS.iter().position(|&le| ms <= le) {
            self.buckets[i] += 1;
        }
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }
}

/// Counts per log-linear bucket, for percentiles.
#[derive(Debug, Clone)]
struct Fine(Box<[u32; FINE_LEN]>);

impl Default for Fine {
    fn default() -> Self {
        Fine(Box::new([0; FINE_LEN]))
    }
}

fn fine_index(ms: u64) -> usize {
    if ms < 1 {
        return 0;
    }
    let i = 1 + ((ms as f64).log2() * FINE_PER_DOUBLING).floor() as usize;
    i.min(FINE_LEN - 1)
}

/// The upper bound of fine bucket `i`, in ms (what a percentile in it reports).
fn fine_upper_ms(i: usize) -> u64 {
    if i == 0 {
        return 1;
    }
    2f64.powf(i as f64 / FINE_PER_DOUBLING).ceil() as u64
}

impl Fine {
    fn observe(&mut self, ms: u64) {
        let slot = &mut self.0[fine_index(ms)];
        *slot = slot.saturating_add(1);
    }

    fn add(&mut self, other: &Fine) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile (0–1) as the upper bound of its bucket; `None` when empty.
    fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, &c) in self.0.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(fine_upper_ms(i));
            }
        }
        None
    }
}

/// One 10-second slot of the recent window.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// `at / SLOT_MS` of the events in it.
    id: i64,
    wait: Fine,
    run: Fine,
    enqueued: u64,
    succeeded: u64,
    failed: u64,
}

#[derive(Debug, Clone, Default)]
struct QueueMetrics {
    wait: Cumulative,
    run: Cumulative,
    window: [Slot; WINDOW_SLOTS],
}

impl QueueMetrics {
    fn slot(&mut self, at: Millis) -> &mut Slot {
        let id = at.div_euclid(SLOT_MS);
        let slot = &mut self.window[id.rem_euclid(WINDOW_SLOTS as i64) as usize];
        if slot.id != id {
            *slot = Slot {
                id,
                ..Slot::default()
            };
        }
        slot
    }
}

/// Wait and run percentiles and rates of one queue over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recent {
    pub wait_p50_ms: Option<u64>,
    pub wait_p95_ms: Option<u64>,
    pub wait_p99_ms: Option<u64>,
    pub run_p50_ms: Option<u64>,
    pub run_p95_ms: Option<u64>,
    pub run_p99_ms: Option<u64>,
    pub succeeded: u64,
    /// Attempts that failed (to retry or dead) or whose lease expired.
    pub failed: u64,
}

/// One queue over one 10-second slot, for the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotSummary {
    pub enqueued: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub wait_p95_ms: Option<u64>,
    pub run_p95_ms: Option<u64>,
}

/// Metrics of every queue, by queue number (queues are never removed).
#[derive(Debug, Default)]
pub struct Metrics {
    queues: Vec<QueueMetrics>,
    /// Outcome counters per `(queue, kind)` number, for the pairs seen.
    totals: FxHashMap<(u32, u32), [u64; Outcome::ALL.len()]>,
}

impl Metrics {
    fn queue(&mut self, id: u32) -> &mut QueueMetrics {
        let i = id as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, QueueMetrics::default);
        }
        &mut self.queues[i]
    }

    /// Counts what `event` did; `state` is as right after it was applied.
    pub fn observe(&mut self, state: &State, event: &Event) {
        let ms = |d: Millis| u64::try_from(d).unwrap_or(0);
        match event {
            Event::Enqueued { at, jobs }
            | Event::EnqueuedKeyed { at, jobs, .. }
            | Event::BatchEnqueued { at, jobs, .. }
            | Event::FeedDelivered { at, jobs, .. } => {
                for job in jobs {
                    self.enqueued(state, job.id, *at);
                }
            }
            Event::CronFired { at, fired } => {
                for job in fired.iter().flat_map(|f| &f.jobs) {
                    self.enqueued(state, job.id, *at);
                }
            }
            Event::Leased { at, jobs, .. } => {
                for item in jobs {
                    let Some(job) = state.job(item.id) else {
                        continue;
                    };
                    // Waiting since it became due: enqueued, or its retry time come.
                    let wait = ms(at.saturating_sub(job.run_at.max(job.enqueued_at())));
                    self.count(job.queue, job.kind, Outcome::Leased);
                    let queue = self.queue(job.queue);
                    queue.wait.observe(wait);
                    queue.slot(*at).wait.observe(wait);
                }
            }
            Event::Acked { at, ids } => {
                for &id in ids {
                    self.finished(state, id, *at, &[Outcome::Succeeded]);
                }
            }
            Event::Failed { at, jobs } => {
                for item in jobs {
                    let outcome = match item.retry_at {
                        Some(_) => Outcome::Failed,
                        None => Outcome::Dead,
                    };
                    self.finished(state, item.id, *at, &[outcome]);
                }
            }
            Event::Expired { at, jobs } => {
                for &(id, retry_at) in jobs {
                    let outcomes: &[Outcome] = match retry_at {
                        Some(_) => &[Outcome::Expired],
                        None => &[Outcome::Expired, Outcome::Dead],
                    };
                    self.finished(state, id, *at, outcomes);
                }
            }
            Event::Cancelled { id, .. } => self.count_job(state, *id, Outcome::Cancelled),
            Event::Retried { id, .. } => self.count_job(state, *id, Outcome::Retried),
            _ => {}
        }
    }

    /// Jobs enqueued, attempts that succeeded, and attempts that failed (to be retried or
    /// dead), over every queue since the start.
    pub fn outcome_totals(&self) -> [u64; 3] {
        let mut sums = [0; 3];
        for counts in self.totals.values() {
            sums[0] += counts[Outcome::Enqueued as usize];
            sums[1] += counts[Outcome::Succeeded as usize];
            sums[2] += counts[Outcome::Failed as usize] + counts[Outcome::Dead as usize];
        }
        sums
    }

    fn count(&mut self, queue: u32, kind: u32, outcome: Outcome) {
        self.totals.entry((queue, kind)).or_default()[outcome as usize] += 1;
    }

    fn enqueued(&mut self, state: &State, id: u64, at: Millis) {
        if let Some(job) = state.job(id) {
            self.count(job.queue, job.kind, Outcome::Enqueued);
            self.queue(job.queue).slot(at).enqueued += 1;
        }
    }

    /// What queue `id` did in the 10-second slot starting at `slot_start_ms`, if that
    /// slot is still in the window: `(enqueued, succeeded, failed, wait p95, run p95)`.
    pub fn slot_summary(&self, id: u32, slot_start_ms: Millis) -> Option<SlotSummary> {
        let queue = self.queues.get(id as usize)?;
        let slot_id = slot_start_ms.div_euclid(SLOT_MS);
        let slot = &queue.window[slot_id.rem_euclid(WINDOW_SLOTS as i64) as usize];
        (slot.id == slot_id).then(|| SlotSummary {
            enqueued: slot.enqueued,
            succeeded: slot.succeeded,
            failed: slot.failed,
            wait_p95_ms: slot.wait.quantile(0.95),
            run_p95_ms: slot.run.quantile(0.95),
        })
    }

    fn count_job(&mut self, state: &State, id: u64, outcome: Outcome) {
        if let Some(job) = state.job(id) {
            self.count(job.queue, job.kind, outcome);
        }
    }

    /// An attempt ended at `at`: its run time, and what it led to.
    fn finished(&mut self, state: &State, id: u64, at: Millis, outcomes: &[Outcome]) {
        let Some(job) = state.job(id) else {
            return;
        };
        let leased_at = job
            .extra()
            .and_then(|e| e.history.last())
            .map_or(at, |a| a.leased_at);
        let run = u64::try_from(at.saturating_sub(leased_at)).unwrap_or(0);
        for &outcome in outcomes {
            self.count(job.queue, job.kind, outcome);
        }
        let queue = self.queue(job.queue);
        queue.run.observe(run);
        let slot = queue.slot(at);
        slot.run.observe(run);
        if outcomes.contains(&Outcome::Succeeded) {
            slot.succeeded += 1;
        } else {
            slot.failed += 1;
        }
    }

    /// Heap and inline bytes the metrics hold, by accounting (what `sluice_metrics_bytes`
    /// reports): per queue its struct and fine histograms, and the totals map's slots.
    pub fn bytes(&self) -> usize {
        let fine = 2 * WINDOW_SLOTS * std::mem::size_of::<[u32; FINE_LEN]>();
        let queues =
            self.queues.capacity() * std::mem::size_of::<QueueMetrics>() + self.queues.len() * fine;
        let slot = std::mem::size_of::<((u32, u32), [u64; Outcome::ALL.len()])>() + 1;
        queues + self.totals.capacity() * slot
    }

    /// Queue `id` over the minute up to `now`.
    pub fn recent(&self, id: u32, now: Millis) -> Recent {
        let Some(queue) = self.queues.get(id as usize) else {
            return Recent::default();
        };
        let newest = now.div_euclid(SLOT_MS);
        let (mut wait, mut run) = (Fine::default(), Fine::default());
        let mut recent = Recent::default();
        for slot in &queue.window {
            if slot.id > newest - WINDOW_SLOTS as i64 && slot.id <= newest {
                wait.add(&slot.wait);
                run.add(&slot.run);
                recent.succeeded += slot.succeeded;
                recent.failed += slot.failed;
            }
        }
        recent.wait_p50_ms = wait.quantile(0.50);
        recent.wait_p95_ms = wait.quantile(0.95);
        recent.wait_p99_ms = wait.quantile(0.99);
        recent.run_p50_ms = run.quantile(0.50);
        recent.run_p95_ms = run.quantile(0.95);
        recent.run_p99_ms = run.quantile(0.99);
        recent
    }

    /// What the exposition needs, copied so that it can be written without the locks
    /// (copying is a few hundred microseconds at 1,000 queues; writing takes longer).
    pub fn export(&self, state: &State, now: Millis) -> Export {
        let empty = QueueMetrics::default();
        let queues = (0..state.queue_len() as u32)
            .filter_map(|id| {
                let queue = state.queue_by_id(id)?;
                let metrics = self.queues.get(id as usize).unwrap_or(&empty);
                Some(ExportQueue {
                    id,
                    counts: JobState::ALL.map(|s| queue.count(s) as u64),
                    oldest_ms: state.oldest_ready_age_ms(queue, now),
                    wait: metrics.wait.clone(),
                    run: metrics.run.clone(),
                })
            })
            .collect();
        Export {
            queue_names: (0..state.queue_len() as u32)
                .map(|id| state.queue_name(id).to_owned())
                .collect(),
            kind_names: (0..state.kind_len() as u32)
                .map(|id| state.kind_name(id).to_owned())
                .collect(),
            totals: self.totals.iter().map(|(&k, v)| (k, *v)).collect(),
            queues,
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every queue.
    pub fn prometheus(&self, state: &State, now: Millis) -> String {
        self.export(state, now).render()
    }
}

/// The job metrics as of one moment, to write out.
pub struct Export {
    /// Names by number.
    queue_names: Vec<String>,
    kind_names: Vec<String>,
    totals: Vec<((u32, u32), [u64; Outcome::ALL.len()])>,
    queues: Vec<ExportQueue>,
}

struct ExportQueue {
    id: u32,
    counts: [u64; JobState::ALL.len()],
    oldest_ms: u64,
    wait: Cumulative,
    run: Cumulative,
}

impl Export {
    /// The Prometheus text exposition (format 0.0.4). A `sluice_jobs_total` series
    /// appears with its first count (zeros are left out: 1,000 queues x 10 kinds would
    /// otherwise be 80,000 lines mostly of 0).
    pub fn render(mut self) -> String {
        fn name(names: &[String], id: u32) -> &str {
            names.get(id as usize).map_or("", String::as_str)
        }
        self.queue_names = self.queue_names.iter().map(|n| escape(n)).collect();
        self.kind_names = self.kind_names.iter().map(|n| escape(n)).collect();
        let mut out =
            String::with_capacity(self.totals.len() * 4 * 96 + self.queues.len() * 48 * 72 + 4_096);
        header(
            &mut out,
            "sluice_jobs_total",
            "counter",
            "Jobs by queue, kind and what happened to them, since the server started.",
        );
        let (queues, kinds) = (&self.queue_names, &self.kind_names);
        // In queue and kind creation order: stable from scrape to scrape, and cheap.
        self.totals.sort_unstable_by_key(|(key, _)| *key);
        for ((queue, kind), totals) in &self.totals {
            let (queue, kind) = (name(queues, *queue), name(kinds, *kind));
            for outcome in Outcome::ALL {
                let value = totals[outcome as usize];
                if value == 0 {
                    continue;
                }
                out.push_str("sluice_jobs_total{queue=\"");
                out.push_str(queue);
                out.push_str("\",kind=\"");
                out.push_str(kind);
                out.push_str("\",outcome=\"");
                out.push_str(outcome.as_str());
                out.push_str("\"} ");
                push_u64(&mut out, value);
                out.push('\n');
            }
        }
        header(
            &mut out,
            "sluice_queue_jobs",
            "gauge",
            "Jobs in each state now.",
        );
        for queue in &self.queues {
            let queue_name = name(queues, queue.id);
            for (job_state, count) in JobState::ALL.iter().zip(queue.counts) {
                out.push_str("sluice_queue_jobs{queue=\"");
                out.push_str(queue_name);
                out.push_str("\",state=\"");
                out.push_str(job_state.as_str());
                out.push_str("\"} ");
                push_u64(&mut out, count);
                out.push('\n');
            }
        }
        header(
            &mut out,
            "sluice_queue_oldest_ready_seconds",
            "gauge",
            "Age of the oldest ready job (0 when none is ready).",
        );
        for queue in &self.queues {
            out.push_str("sluice_queue_oldest_ready_seconds{queue=\"");
            out.push_str(name(queues, queue.id));
            out.push_str("\"} ");
            out.push_str(&seconds(queue.oldest_ms));
            out.push('\n');
        }
        let les: Vec<String> = PROMETHEUS_BUCKETS_MS
            .iter()
            .map(|&ms| seconds(ms))
            .collect();
        for (metric, help, wait) in [
            (
                "sluice_job_wait_seconds",
                "Time from a job being due (enqueued, or its retry time) to its lease.",
                true,
            ),
            (
                "sluice_job_run_seconds",
                "Time from a lease to its ack, fail or expiry.",
                false,
            ),
        ] {
            header(&mut out, metric, "histogram", help);
            for queue in &self.queues {
                let histogram = if wait { &queue.wait } else { &queue.run };
                let queue_name = name(queues, queue.id);
                let mut cumulative = 0;
                for (le, count) in les.iter().zip(histogram.buckets) {
                    cumulative += count;
                    out.push_str(metric);
                    out.push_str("_bucket{queue=\"");
                    out.push_str(queue_name);
                    out.push_str("\",le=\"");
                    out.push_str(le);
                    out.push_str("\"} ");
                    push_u64(&mut out, cumulative);
                    out.push('\n');
                }
                let _ = writeln!(
                    out,
                    "{metric}_bucket{{queue=\"{queue_name}\",le=\"+Inf\"}} {}",
                    histogram.count
                );
                let _ = writeln!(
                    out,
                    "{metric}_sum{{queue=\"{queue_name}\"}} {}",
                    seconds(histogram.sum_ms)
                );
                let _ = writeln!(
                    out,
                    "{metric}_count{{queue=\"{queue_name}\"}} {}",
                    histogram.count
                );
            }
        }
        out
    }
}

/// A histogram as OpenTelemetry wants it: a count per bucket, the last one for values
/// above every bound.
pub struct HistogramView {
    pub count: u64,
    pub sum_s: f64,
    pub bucket_counts: Vec<u64>,
    pub bounds_s: Vec<f64>,
}

impl From<&Cumulative> for HistogramView {
    fn from(histogram: &Cumulative) -> Self {
        let mut bucket_counts = histogram.buckets.to_vec();
        let counted: u64 = bucket_counts.iter().sum();
        bucket_counts.push(histogram.count.saturating_sub(counted));
        HistogramView {
            count: histogram.count,
            sum_s: histogram.sum_ms as f64 / 1_000.0,
            bucket_counts,
            bounds_s: PROMETHEUS_BUCKETS_MS
                .iter()
                .map(|&ms| ms as f64 / 1_000.0)
                .collect(),
        }
    }
}

/// One queue of an export.
pub struct QueueView<'a> {
    pub name: &'a str,
    pub counts: Vec<(&'static str, u64)>,
    pub wait: HistogramView,
    pub run: HistogramView,
}

impl Export {
    /// `(queue, kind, outcome, count)` of every count above zero.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &str, &'static str, u64)> {
        fn name(names: &[String], id: u32) -> &str {
            names.get(id as usize).map_or("", String::as_str)
        }
        self.totals.iter().flat_map(move |((queue, kind), totals)| {
            let (queue, kind) = (
                name(&self.queue_names, *queue),
                name(&self.kind_names, *kind),
            );
            Outcome::ALL
                .into_iter()
                .filter(move |o| totals[*o as usize] > 0)
                .map(move |o| (queue, kind, o.as_str(), totals[o as usize]))
        })
    }

    pub fn queues(&self) -> impl Iterator<Item = QueueView<'_>> {
        self.queues.iter().map(|q| QueueView {
            name: self
                .queue_names
                .get(q.id as usize)
                .map_or("", String::as_str),
            counts: JobState::ALL
                .iter()
                .zip(q.counts)
                .map(|(s, c)| (s.as_str(), c))
                .collect(),
            wait: HistogramView::from(&q.wait),
            run: HistogramView::from(&q.run),
        })
    }
}

/// Appends `value` in decimal without going through `fmt`.
fn push_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[i..] {
        out.push(char::from(digit));
    }
}

/// The server's own metrics: its log, snapshots, jobs in memory, the metrics' own
/// memory, and the process
/// (Prometheus's standard `process_*` names, read from Linux's `/proc`).
pub fn server_prometheus(
    out: &mut String,
    wal: &WalStats,
    last_snapshot_at_ms: Option<Millis>,
    jobs_len: usize,
    metrics_bytes: usize,
    now: Millis,
) {
    header(
        out,
        "sluice_wal_fsync_seconds",
        "histogram",
        "Time each fdatasync of the write-ahead log took.",
    );
    let mut cumulative = 0;
    for (le, count) in FSYNC_BUCKETS_US.iter().zip(wal.fsync_buckets) {
        cumulative += count;
        let _ = writeln!(
            out,
            "sluice_wal_fsync_seconds_bucket{{le=\"{}\"}} {cumulative}",
            micros_as_seconds(*le)
        );
    }
    let _ = writeln!(
        out,
        "sluice_wal_fsync_seconds_bucket{{le=\"+Inf\"}} {}",
        wal.fsync_count
    );
    let _ = writeln!(
        out,
        "sluice_wal_fsync_seconds_sum {}",
        micros_as_seconds(wal.fsync_sum_us)
    );
    let _ = writeln!(out, "sluice_wal_fsync_seconds_count {}", wal.fsync_count);
    let wal_bytes: u64 = wal
        .segments
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    header(
        out,
        "sluice_wal_bytes",
        "gauge",
        "Bytes of the write-ahead log's segment files.",
    );
    let _ = writeln!(out, "sluice_wal_bytes {wal_bytes}");
    header(
        out,
        "sluice_wal_segments",
        "gauge",
        "Segment files of the write-ahead log.",
    );
    let _ = writeln!(out, "sluice_wal_segments {}", wal.segments.len());
    if let Some(at) = last_snapshot_at_ms {
        header(
            out,
            "sluice_snapshot_age_seconds",
            "gauge",
            "Time since the newest snapshot was written.",
        );
        let age = u64::try_from(now.saturating_sub(at)).unwrap_or(0);
        let _ = writeln!(out, "sluice_snapshot_age_seconds {}", seconds(age));
    }
    header(
        out,
        "sluice_jobs",
        "gauge",
        "Jobs held by the server, in every state.",
    );
    let _ = writeln!(out, "sluice_jobs {jobs_len}");
    header(
        out,
        "sluice_metrics_bytes",
        "gauge",
        "Memory the job metrics hold (counters, histograms), by accounting.",
    );
    let _ = writeln!(out, "sluice_metrics_bytes {metrics_bytes}");
    if let Some(process) = Process::read() {
        header(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", process.rss_bytes);
        header(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            process.cpu_ticks as f64 / CLOCK_TICKS_PER_S
        );
        header(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", process.open_fds);
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", process.start_time_s);
    }
}

/// Consumer group lag per partition: `(stream, group, partitions, committed offsets)`
/// of each group, and `ends(stream, partition)` giving a partition's earliest and next
/// offsets. Without a commit, the lag counts from the earliest record kept.
pub fn group_lag_prometheus(
    out: &mut String,
    groups: &[(String, String, u32, std::collections::BTreeMap<u32, u64>)],
    ends: impl Fn(&str, u32) -> Option<(u64, u64)>,
) {
    if groups.is_empty() {
        return;
    }
    header(
        out,
        "sluice_stream_group_lag",
        "gauge",
        "Records of a stream partition after a consumer group's committed offset.",
    );
    for (stream, group, partitions, committed) in groups {
        for p in 0..*partitions {
            let Some((earliest, next)) = ends(stream, p) else {
                continue;
            };
            let from = committed.get(&p).copied().unwrap_or(earliest);
            let _ = writeln!(
                out,
                "sluice_stream_group_lag{{stream=\"{}\",group=\"{}\",partition=\"{p}\"}} {}",
                escape(stream),
                escape(group),
                next.saturating_sub(from)
            );
        }
    }
}

/// Linux's `USER_HZ`, the unit of CPU times in `/proc`: 100 on every mainstream
/// architecture (the kernel fixes it for user space whatever its own tick rate).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// What `/proc` says about this process.
struct Process {
    rss_bytes: u64,
    cpu_ticks: u64,
    open_fds: usize,
    start_time_s: u64,
}

impl Process {
    fn read() -> Option<Process> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        // Fields after the command name (which may hold spaces), from field 3 (state).
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let cpu_ticks = field(14)? + field(15)?;
        let started_ticks = field(22)?;
        let boot_s: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Process {
            rss_bytes: rss_kib * 1024,
            cpu_ticks,
            open_fds,
            start_time_s: boot_s + started_ticks / CLOCK_TICKS_PER_S as u64,
        })
    }
}

/// Microseconds as seconds, exactly.
fn micros_as_seconds(us: u64) -> String {
    match us % 1_000_000 {
        0 => format!("{}", us / 1_000_000),
        rest => format!(
            "{}.{}",
            us / 1_000_000,
            format!("{rest:06}").trim_end_matches('0')
        ),
    }
}

/// The same metrics in OpenMetrics 1.0: a counter's family is named without its
/// `_total` (which its samples keep), and the exposition ends with `# EOF`.
pub fn to_openmetrics(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let family = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .and_then(|rest| rest.split(' ').next())
            .filter(|name| counters.contains(name));
        match family {
            Some(name) => {
                let stripped = name.strip_suffix("_total").unwrap_or(name);
                out.push_str(&line.replacen(name, stripped, 1));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Milliseconds as seconds, exactly (`1500` → `1.5`).
fn seconds(ms: u64) -> String {
    match ms % 1_000 {
        0 => format!("{}", ms / 1_000),
        rest => format!(
            "{}.{}",
            ms / 1_000,
            format!("{rest:03}").trim_end_matches('0')
        ),
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_are_within_ten_percent_and_quantiles_pick_the_rank() {
        for ms in [1u64, 2, 3, 7, 10, 99, 1_000, 12_345, 3_600_000] {
            let upper = fine_upper_ms(fine_index(ms));
            assert!(
                upper >= ms && upper as f64 <= ms as f64 * 1.1 + 1.0,
                "{ms} -> {upper}"
            );
        }
        let mut fine = Fine::default();
        for ms in 1..=100 {
            fine.observe(ms);
        }
        let p50 = fine.quantile(0.5).expect("p50");
        let p95 = fine.quantile(0.95).expect("p95");
        assert!((50..=55).contains(&p50), "{p50}");
        assert!((95..=104).contains(&p95), "{p95}");
        assert_eq!(Fine::default().quantile(0.5), None);
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = "# HELP a_total As.\n# TYPE a_total counter\na_total{q=\"x\"} 1\n\
                    # HELP b Bs.\n# TYPE b gauge\nb 2\n";
        assert_eq!(
            to_openmetrics(text),
            "# HELP a As.\n# TYPE a counter\na_total{q=\"x\"} 1\n# HELP b Bs.\n\
             # TYPE b gauge\nb 2\n# EOF\n"
        );
    }

    #[test]
    fn decimal_digits_are_pushed_exactly() {
        for value in [0u64, 7, 10, 12_345, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, value);
            assert_eq!(out, value.to_string());
        }
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(250), "0.25");
        assert_eq!(seconds(1_000), "1");
        assert_eq!(seconds(3_600_000), "3600");
        assert_eq!(seconds(1_500), "1.5");
    }
}
