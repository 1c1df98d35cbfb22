//! The reference model: what clients were told (each fact only once its reply arrived,
//! which the server sends only after the fact is durable), and the checks of a `State`
//! against it and against the rules every state must keep.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::{Job, JobId, JobState, LeaseId, Millis, Outcome, State};

/// A lease whose grant reached its worker.
#[derive(Debug, Clone)]
pub struct KnownLease {
    pub lease_id: LeaseId,
    /// The latest expiry a reply (the grant or a heartbeat) reported.
    pub expires_at: Millis,
    /// Acks and fails its holder sent for it: from the first one on, it may end any time.
    pub release_sends: u32,
}

#[derive(Debug, Default)]
pub struct Known {
    /// An enqueue reply named this job as newly created.
    pub enqueue_confirmed: bool,
    pub max_attempts: Option<u16>,
    /// An ack reply said it succeeded.
    pub acked: bool,
    /// The job's newest lease whose grant reached a worker, while it may still be valid.
    pub lease: Option<KnownLease>,
    /// Leases of this job that a reply showed to be over: never valid again.
    pub dead_leases: BTreeSet<LeaseId>,
    /// Some client asked to cancel it: its lease may end early.
    pub cancel_sent: bool,
}

impl Known {
    /// Whether a reply already showed a lease newer than `lease_id` (so it is over).
    pub fn superseded(&self, lease_id: LeaseId) -> bool {
        self.lease.as_ref().is_some_and(|l| l.lease_id > lease_id)
            || self.dead_leases.range(lease_id + 1..).next().is_some()
    }

    pub fn is_dead(&self, lease_id: LeaseId) -> bool {
        self.dead_leases.contains(&lease_id) || self.superseded(lease_id)
    }

    /// Marks a lease over (the job's current one too, if it is that one).
    pub fn end_lease(&mut self, lease_id: LeaseId) {
        self.dead_leases.insert(lease_id);
        if self.lease.as_ref().is_some_and(|l| l.lease_id == lease_id) {
            self.lease = None;
        }
    }

    /// The known lease that must still hold at clock high-water `max_now`: granted, not
    /// expired, and neither acked, failed nor cancelled by anyone (not even in flight).
    pub fn binding_lease(&self, max_now: Millis) -> Option<&KnownLease> {
        self.lease
            .as_ref()
            .filter(|l| l.release_sends == 0 && !self.cancel_sent && l.expires_at > max_now)
    }
}

#[derive(Debug, Default)]
pub struct Oracle {
    pub jobs: BTreeMap<JobId, Known>,
    /// Jobs removed (purge, retention) by an event in the log, with its lsn: they may be
    /// missing. Forgotten when the event is lost in a crash; moved to `gone` when durable.
    pub removals: BTreeMap<JobId, u64>,
    /// Jobs removed by a durable event: they never come back, and late replies about
    /// them teach nothing.
    pub gone: BTreeSet<JobId>,
}

impl Oracle {
    /// The knowledge about `id`, unless it is gone for good.
    pub fn job_mut(&mut self, id: JobId) -> Option<&mut Known> {
        if self.gone.contains(&id) {
            return None;
        }
        Some(self.jobs.entry(id).or_default())
    }

    /// Removal events below `durable_lsn` are permanent.
    pub fn removals_durable(&mut self, durable_lsn: u64) {
        let durable: Vec<JobId> = self
            .removals
            .iter()
            .filter(|&(_, &lsn)| lsn < durable_lsn)
            .map(|(&id, _)| id)
            .collect();
        for id in durable {
            self.removals.remove(&id);
            self.jobs.remove(&id);
            self.gone.insert(id);
        }
    }

    /// A crash cut the log at `next_lsn`: later removals never happened.
    pub fn removals_lost(&mut self, next_lsn: u64) {
        self.removals.retain(|_, lsn| *lsn < next_lsn);
    }

    /// Checks `state` against everything clients were told.
    pub fn check(&self, state: &State, max_now: Millis) -> Result<(), String> {
        for (&id, known) in &self.jobs {
            let Some(job) = state.job(id) else {
                if !self.removals.contains_key(&id) {
                    return Err(format!(
                        "job {id} is missing, yet a client was told it exists ({known:?})"
                    ));
                }
                continue;
            };
            if known.acked && job.state != JobState::Succeeded {
                return Err(format!(
                    "job {id} was acked (the worker got the reply) but is {}",
                    job.state.as_str()
                ));
            }
            if let Some(max_attempts) = known.max_attempts {
                if job.max_attempts != max_attempts {
                    return Err(format!(
                        "job {id} has max_attempts {} but was enqueued with {max_attempts}",
                        job.max_attempts
                    ));
                }
            }
            if job.state == JobState::Leased && known.dead_leases.contains(&job.lease_id) {
                return Err(format!(
                    "job {id} is held under lease {}, which a reply said was over",
                    job.lease_id
                ));
            }
            if let Some(lease) = known.binding_lease(max_now) {
                if job.state != JobState::Leased || job.lease_id != lease.lease_id {
                    return Err(format!(
                        "job {id}: lease {} was granted to a worker and runs until {} \
                         (clock high-water {max_now}), nobody acked, failed or cancelled it, \
                         yet the job is {} under lease {}",
                        lease.lease_id,
                        lease.expires_at,
                        job.state.as_str(),
                        job.lease_id
                    ));
                }
                if job.lease_expires_at < lease.expires_at {
                    return Err(format!(
                        "job {id}: lease {} shortened from {} to {}",
                        lease.lease_id, lease.expires_at, job.lease_expires_at
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every job in `state`, in id order, found through the per-queue per-state listings.
pub fn all_jobs(state: &State) -> Vec<&Job> {
    let mut jobs = Vec::with_capacity(state.job_len());
    for queue in state.queues_page(None, usize::MAX) {
        for s in JobState::ALL {
            jobs.extend(state.jobs_page(queue, s, None, usize::MAX));
        }
    }
    jobs.sort_unstable_by_key(|j| j.id);
    jobs
}

/// The rules every state keeps, whatever happened: counts match listings, and each job's
/// fields fit its state (derived from `crates/core/src/state.rs`).
pub fn check_structure(state: &State) -> Result<(), String> {
    let mut total = 0;
    for queue in state.queues_page(None, usize::MAX) {
        for s in JobState::ALL {
            let jobs = state.jobs_page(queue, s, None, usize::MAX);
            if jobs.len() != queue.count(s) {
                return Err(format!(
                    "queue {} counts {} {} jobs but lists {}",
                    queue.name,
                    queue.count(s),
                    s.as_str(),
                    jobs.len()
                ));
            }
            total += jobs.len();
            for job in jobs {
                if job.state != s || state.queue_name(job.queue) != &*queue.name {
                    return Err(format!(
                        "job {} is listed as {} in {} but is {} in {}",
                        job.id,
                        s.as_str(),
                        queue.name,
                        job.state.as_str(),
                        state.queue_name(job.queue)
                    ));
                }
                check_job(job).map_err(|e| format!("job {} ({}): {e}", job.id, s.as_str()))?;
            }
        }
    }
    if total != state.job_len() {
        return Err(format!(
            "queues list {total} jobs, the state holds {}",
            state.job_len()
        ));
    }
    Ok(())
}

fn check_job(job: &Job) -> Result<(), String> {
    if job.max_attempts == 0 || job.attempts > job.max_attempts {
        return Err(format!(
            "attempts {} of max_attempts {}",
            job.attempts, job.max_attempts
        ));
    }
    let leased = job.state == JobState::Leased;
    if leased != (job.lease_id != 0) || leased != (job.lease_expires_at != 0) {
        return Err(format!(
            "lease id {} expiring at {}",
            job.lease_id, job.lease_expires_at
        ));
    }
    if job.state.is_finished() != (job.finished_at != 0) {
        return Err(format!("finished_at {}", job.finished_at));
    }
    let last = job.extra().and_then(|e| e.history.last());
    if job.attempts > 0 && last.map(|a| a.attempt) != Some(job.attempts) {
        return Err(format!(
            "attempts {} but the last history entry is {last:?}",
            job.attempts
        ));
    }
    let last_outcome = last.and_then(|a| a.outcome);
    let fits = match job.state {
        // Waiting to run: another attempt is left (jobs out of attempts are dead).
        JobState::Scheduled | JobState::Ready | JobState::Failed => job.attempts < job.max_attempts,
        JobState::Leased => job.attempts >= 1 && last_outcome.is_none(),
        JobState::Succeeded => last_outcome == Some(Outcome::Succeeded),
        // Dead only by a fail or an expiry of the last allowed attempt.
        JobState::Dead => {
            job.attempts == job.max_attempts
                && matches!(last_outcome, Some(Outcome::Failed | Outcome::Expired))
        }
        JobState::Cancelled => true,
    };
    if !fits {
        return Err(format!(
            "attempts {}/{} with last outcome {last_outcome:?}",
            job.attempts, job.max_attempts
        ));
    }
    Ok(())
}

/// A job's state as of clock high-water `max_now`: whether a due scheduled or failed job
/// was promoted to ready is not logged (`State::promote_due`), so it is not compared.
fn settled_state(job: &Job, max_now: Millis) -> JobState {
    match job.state {
        JobState::Scheduled | JobState::Failed if job.run_at <= max_now => JobState::Ready,
        s => s,
    }
}

type JobView<'a> = (
    JobId,
    &'a str,
    JobState,
    &'a str,
    (i16, u16, u16, u32, sluice_core::Backoff),
    (Millis, sluice_core::LeaseId, Millis, Millis),
);

fn job_view<'a>(state: &'a State, job: &Job, max_now: Millis) -> JobView<'a> {
    (
        job.id,
        state.queue_name(job.queue),
        settled_state(job, max_now),
        state.kind_name(job.kind),
        (
            job.priority,
            job.attempts,
            job.max_attempts,
            job.timeout_ms,
            job.backoff,
        ),
        (
            job.run_at,
            job.lease_id,
            job.lease_expires_at,
            job.finished_at,
        ),
    )
}

/// Compares everything observable about two states: queues, and every job's fields.
pub fn compare(a: &State, b: &State, max_now: Millis) -> Result<(), String> {
    let queues = |s: &State| -> Vec<(String, bool)> {
        s.queues_page(None, usize::MAX)
            .iter()
            .map(|q| (q.name.to_string(), q.paused))
            .collect()
    };
    let (queues_a, queues_b) = (queues(a), queues(b));
    if queues_a != queues_b {
        return Err(format!("queues differ: {queues_a:?} vs {queues_b:?}"));
    }
    // Per-key flow control: the limits, and each key's jobs, leases and tokens (ready
    // counts may differ: promotion of due jobs is not logged).
    let keys = |s: &State| -> Vec<String> {
        s.queues_page(None, usize::MAX)
            .iter()
            .map(|q| {
                let mut keys: Vec<String> = q
                    .key_names()
                    .filter_map(|k| {
                        let status = q.key(k, max_now)?;
                        Some(format!(
                            "{k}:{}:{}:{:?}",
                            status.jobs, status.leased, status.tokens
                        ))
                    })
                    .collect();
                keys.sort_unstable();
                format!("{} {:?} {keys:?}", q.name, q.key_limits)
            })
            .collect()
    };
    let (keys_a, keys_b) = (keys(a), keys(b));
    if keys_a != keys_b {
        return Err(format!("limit keys differ: {keys_a:?} vs {keys_b:?}"));
    }
    let (jobs_a, jobs_b) = (all_jobs(a), all_jobs(b));
    if jobs_a.len() != jobs_b.len() {
        return Err(format!("{} jobs vs {}", jobs_a.len(), jobs_b.len()));
    }
    for (x, y) in jobs_a.iter().zip(&jobs_b) {
        let (view_a, view_b) = (job_view(a, x, max_now), job_view(b, y, max_now));
        if view_a != view_b
            || x.payload != y.payload
            || x.extra != y.extra
            || a.limit_key(x.id) != b.limit_key(y.id)
        {
            return Err(format!(
                "job differs:\n    {view_a:?} {:?}\n    {view_b:?} {:?}",
                x.extra, y.extra
            ));
        }
    }
    Ok(())
}
