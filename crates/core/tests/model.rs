//! Property test: random command sequences against the state machine and against a plain
//! `BTreeMap` reference model, compared after every step. At the end of each case the
//! logged events are replayed into a fresh state and a snapshot is decoded; both must be
//! indistinguishable from the live state.
//!
//! The model follows the state machine's own rules where they are choices:
//! - a lease stays valid until `expire_leases` takes it back, even past its expiry time;
//! - due scheduled/failed jobs turn ready when a lease looks for work (`promote_due`);
//! - a unique key is released when its job finishes and is not reclaimed by a retry;
//! - retention by count keeps the newest (highest id) finished jobs of each queue.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sluice_core::{
    Backoff, Config, CoreError, EnqueueSpec, Enqueued, ErrorKind, Event, FailInput, Job, JobId,
    JobState, LeaseId, Millis, Settled, State,
};

const T0: Millis = 1_700_000_000_000;
const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
const KEYS: [&str; 2] = ["k0", "k1"];
const CONFIG: Config = Config {
    retention_ms: 20_000,
    retention_len_max: 3,
};
const BACKOFFS: [Backoff; 3] = [
    Backoff::Fixed { delay_ms: 0 },
    Backoff::Fixed { delay_ms: 1_500 },
    Backoff::Exponential {
        base_ms: 1_000,
        max_ms: 4_000,
    },
];
const TIMEOUTS_MS: [u64; 2] = [1_000, 5_000];
const UNIQUE_TTLS_MS: [u64; 2] = [2_000, 60_000];
const CASES: u32 = 1024;

// ---- operations ---------------------------------------------------------------------

#[derive(Debug, Clone)]
struct NewJobOp {
    queue: usize,
    priority: i16,
    delay_ms: Option<Millis>,
    max_attempts: u32,
    unique_key: Option<usize>,
    backoff: usize,
    timeout: usize,
    unique_ttl: usize,
}

/// Which job an operation is about: among the leased jobs (when `leased` and there are
/// any) or among every id ever returned, removed ones included.
#[derive(Debug, Clone)]
struct Target {
    /// Taken modulo the number of candidates.
    index: usize,
    leased: bool,
}

/// The job's current lease id (or, if not leased, its last one), or some other issued one.
#[derive(Debug, Clone)]
enum LeaseChoice {
    Right,
    Stale(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(Vec<NewJobOp>),
    Lease {
        queues: Vec<usize>,
        max_jobs: usize,
    },
    Heartbeat(Target, LeaseChoice),
    Ack(Vec<(Target, LeaseChoice)>),
    /// Explicit retry_at as an offset from now (negative: in the past).
    Fail(Vec<(Target, LeaseChoice, Option<Millis>)>),
    Advance(Millis),
    Expire,
    Cancel(Target),
    Retry(Target),
    Pause {
        queue: usize,
        paused: bool,
    },
    Retain,
    Purge(usize),
}

fn new_job() -> impl Strategy<Value = NewJobOp> {
    (
        0..QUEUES.len(),
        -1i16..=1,
        prop::option::of(0 as Millis..3_000),
        1u32..=3,
        prop::option::of(0..KEYS.len()),
        0..BACKOFFS.len(),
        0..TIMEOUTS_MS.len(),
        0..UNIQUE_TTLS_MS.len(),
    )
        .prop_map(
            |(
                queue,
                priority,
                delay_ms,
                max_attempts,
                unique_key,
                backoff,
                timeout,
                unique_ttl,
            )| NewJobOp {
                queue,
                priority,
                delay_ms,
                max_attempts,
                unique_key,
                backoff,
                timeout,
                unique_ttl,
            },
        )
}

fn target(leased_weight: f64) -> impl Strategy<Value = Target> {
    (any::<usize>(), prop::bool::weighted(leased_weight))
        .prop_map(|(index, leased)| Target { index, leased })
}

fn lease_choice() -> impl Strategy<Value = LeaseChoice> {
    prop_oneof![3 => Just(LeaseChoice::Right), 1 => any::<usize>().prop_map(LeaseChoice::Stale)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(new_job(), 1..5).prop_map(Op::Enqueue),
        5 => (prop::collection::vec(0..QUEUES.len(), 0..4), 1usize..=5)
            .prop_map(|(queues, max_jobs)| Op::Lease { queues, max_jobs }),
        2 => (target(0.8), lease_choice()).prop_map(|(t, l)| Op::Heartbeat(t, l)),
        4 => prop::collection::vec((target(0.8), lease_choice()), 1..4).prop_map(Op::Ack),
        3 => prop::collection::vec(
            (target(0.8), lease_choice(), prop::option::of(-2_000 as Millis..5_000)),
            1..4
        )
        .prop_map(Op::Fail),
        3 => prop_oneof![3 => 0 as Millis..4_000, 1 => 5_000 as Millis..40_000].prop_map(Op::Advance),
        2 => Just(Op::Expire),
        1 => target(0.3).prop_map(Op::Cancel),
        1 => target(0.1).prop_map(Op::Retry),
        1 => (0..QUEUES.len(), any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        2 => Just(Op::Retain),
        1 => (0..QUEUES.len()).prop_map(Op::Purge),
    ]
}

// ---- the reference model ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct ModelJob {
    queue: usize,
    state: JobState,
    priority: i16,
    run_at: Millis,
    attempts: u16,
    max_attempts: u16,
    timeout_ms: Millis,
    backoff: Backoff,
    /// Lease id and expiry while leased.
    lease: Option<(LeaseId, Millis)>,
    /// The most recent lease id, kept after the lease ends (a realistic stale id).
    last_lease: Option<LeaseId>,
    finished_at: Option<Millis>,
    unique_key: Option<usize>,
}

#[derive(Debug, Default)]
struct Model {
    now: Millis,
    jobs: BTreeMap<JobId, ModelJob>,
    /// Every id ever returned, in order.
    known: Vec<JobId>,
    /// Queues that exist, with their paused flag.
    queues: BTreeMap<usize, bool>,
    unique: BTreeMap<(usize, usize), (JobId, Millis)>,
    acked: BTreeSet<JobId>,
    retained: BTreeSet<JobId>,
    purged: BTreeSet<JobId>,
    last_lease_id: LeaseId,
    issued_leases: Vec<LeaseId>,
}

type Reply = Result<Settled, (ErrorKind, &'static str)>;

fn reply(result: &Result<Settled, CoreError>) -> Reply {
    result.as_ref().map(|s| *s).map_err(|e| (e.kind, e.code))
}

const STALE: (ErrorKind, &str) = (ErrorKind::Conflict, "stale_lease");
const NOT_FOUND: (ErrorKind, &str) = (ErrorKind::NotFound, "not_found");
const INVALID_STATE: (ErrorKind, &str) = (ErrorKind::InvalidState, "invalid_state");

impl Model {
    fn pick(&self, target: &Target) -> Option<JobId> {
        if target.leased {
            let leased: Vec<JobId> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.state == JobState::Leased)
                .map(|(&id, _)| id)
                .collect();
            if !leased.is_empty() {
                return Some(leased[target.index % leased.len()]);
            }
        }
        (!self.known.is_empty()).then(|| self.known[target.index % self.known.len()])
    }

    fn lease_id_for(&self, id: JobId, choice: &LeaseChoice) -> LeaseId {
        let job = self.jobs.get(&id);
        let current = job.and_then(|j| j.lease.map(|(l, _)| l));
        match choice {
            LeaseChoice::Right => current.or(job.and_then(|j| j.last_lease)).unwrap_or(0),
            LeaseChoice::Stale(index) => {
                let others: Vec<LeaseId> = self
                    .issued_leases
                    .iter()
                    .copied()
                    .filter(|&l| Some(l) != current)
                    .collect();
                if others.is_empty() {
                    0
                } else {
                    others[index % others.len()]
                }
            }
        }
    }

    /// Whether `lease_id` is the job's valid lease; the error to expect when it is not.
    fn check_lease(&self, id: JobId, lease_id: LeaseId) -> Result<(), (ErrorKind, &'static str)> {
        let job = self.jobs.get(&id).ok_or(NOT_FOUND)?;
        match job.lease {
            Some((held, _)) if held == lease_id && job.state == JobState::Leased => Ok(()),
            _ => Err(STALE),
        }
    }

    fn release_unique(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let Some(key) = job.unique_key else { return };
        if self
            .unique
            .get(&(job.queue, key))
            .is_some_and(|&(holder, _)| holder == id)
        {
            self.unique.remove(&(job.queue, key));
        }
    }

    fn finish(&mut self, id: JobId, state: JobState) {
        let now = self.now;
        let job = self.jobs.get_mut(&id).expect("model job");
        job.state = state;
        job.lease = None;
        job.finished_at = Some(now);
        self.release_unique(id);
    }

    fn remove(&mut self, id: JobId) {
        self.release_unique(id);
        self.jobs.remove(&id);
    }

    fn promote_due(&mut self) {
        for job in self.jobs.values_mut() {
            if matches!(job.state, JobState::Scheduled | JobState::Failed) && job.run_at <= self.now
            {
                job.state = JobState::Ready;
            }
        }
    }

    fn unique_holder(&self, queue: usize, key: usize) -> Option<JobId> {
        let &(id, expires_at) = self.unique.get(&(queue, key))?;
        let job = self.jobs.get(&id)?;
        (expires_at > self.now && !job.state.is_finished()).then_some(id)
    }
}

// ---- the system under test, with its log --------------------------------------------

struct Sut {
    state: State,
    events: Vec<Event>,
}

impl Sut {
    fn record<T>(&mut self, (event, reply): (Option<Event>, T)) -> (Option<LeaseId>, T) {
        let mut lease_id = None;
        if let Some(event) = event {
            assert_eq!(
                Event::decode(&event.encode()).as_ref(),
                Ok(&event),
                "event round-trips"
            );
            if let Event::Leased { lease_id: id, .. } = &event {
                lease_id = Some(*id);
            }
            self.events.push(event);
        }
        (lease_id, reply)
    }
}

fn step(model: &mut Model, sut: &mut Sut, op: &Op) {
    let now = model.now;
    match op {
        Op::Enqueue(new_jobs) => {
            let specs: Vec<EnqueueSpec> = new_jobs
                .iter()
                .map(|n| {
                    let mut spec = EnqueueSpec::new(QUEUES[n.queue], "job", "{}");
                    spec.priority = n.priority;
                    spec.run_at = n.delay_ms.map(|d| now + d);
                    spec.max_attempts = n.max_attempts;
                    spec.backoff = BACKOFFS[n.backoff];
                    spec.timeout_ms = TIMEOUTS_MS[n.timeout];
                    spec.unique_key = n.unique_key.map(|k| KEYS[k].to_owned());
                    spec.unique_ttl_ms = UNIQUE_TTLS_MS[n.unique_ttl];
                    spec
                })
                .collect();
            let decided = sut
                .state
                .enqueue(now, specs, true)
                .expect("generated jobs are valid");
            let (_, replies) = sut.record(decided);
            assert_eq!(replies.len(), new_jobs.len());
            let mut batch_keys: BTreeMap<(usize, usize), JobId> = BTreeMap::new();
            for (n, got) in new_jobs.iter().zip(replies) {
                if let Some(key) = n.unique_key {
                    let existing = batch_keys
                        .get(&(n.queue, key))
                        .copied()
                        .or_else(|| model.unique_holder(n.queue, key));
                    if let Some(id) = existing {
                        assert_eq!(
                            got,
                            Enqueued {
                                id,
                                duplicate: true
                            },
                            "duplicate of the key's holder"
                        );
                        continue;
                    }
                }
                assert!(!got.duplicate, "no live holder of the key, yet {got:?}");
                assert!(
                    model.known.last().is_none_or(|&last| got.id > last),
                    "ids increase"
                );
                let run_at = n.delay_ms.map_or(now, |d| now + d);
                model.jobs.insert(
                    got.id,
                    ModelJob {
                        queue: n.queue,
                        state: if run_at > now {
                            JobState::Scheduled
                        } else {
                            JobState::Ready
                        },
                        priority: n.priority,
                        run_at,
                        attempts: 0,
                        max_attempts: n.max_attempts as u16,
                        timeout_ms: TIMEOUTS_MS[n.timeout] as Millis,
                        backoff: BACKOFFS[n.backoff],
                        lease: None,
                        last_lease: None,
                        finished_at: None,
                        unique_key: n.unique_key,
                    },
                );
                model.known.push(got.id);
                model.queues.entry(n.queue).or_insert(false);
                if let Some(key) = n.unique_key {
                    batch_keys.insert((n.queue, key), got.id);
                    model.unique.insert(
                        (n.queue, key),
                        (got.id, now + UNIQUE_TTLS_MS[n.unique_ttl] as Millis),
                    );
                }
            }
        }
        Op::Lease { queues, max_jobs } => {
            model.promote_due();
            let asked: BTreeSet<usize> = queues.iter().copied().collect();
            let mut candidates: Vec<(i16, Millis, JobId)> = model
                .jobs
                .iter()
                .filter(|(_, j)| {
                    j.state == JobState::Ready
                        && asked.contains(&j.queue)
                        && model.queues.get(&j.queue) == Some(&false)
                })
                .map(|(&id, j)| (-j.priority, j.run_at, id))
                .collect();
            candidates.sort_unstable();
            let expected: Vec<JobId> = candidates
                .iter()
                .take(*max_jobs)
                .map(|&(_, _, id)| id)
                .collect();

            let names: Vec<String> = queues.iter().map(|&q| QUEUES[q].to_owned()).collect();
            let decided = sut
                .state
                .lease(now, &names, *max_jobs, Some("w".into()))
                .expect("lease");
            let (lease_id, ids) = sut.record(decided);
            assert_eq!(ids, expected, "leased jobs and their order");
            if let Some(lease_id) = lease_id {
                assert!(lease_id > model.last_lease_id, "lease ids are never reused");
                model.last_lease_id = lease_id;
                model.issued_leases.push(lease_id);
                for id in ids {
                    let job = model.jobs.get_mut(&id).expect("model job");
                    assert_eq!(job.lease, None, "job {id} leased while already leased");
                    job.state = JobState::Leased;
                    job.attempts += 1;
                    job.lease = Some((lease_id, now + job.timeout_ms));
                    job.last_lease = Some(lease_id);
                }
            } else {
                assert!(ids.is_empty());
            }
        }
        Op::Heartbeat(target, choice) => {
            let Some(id) = model.pick(target) else { return };
            let lease_id = model.lease_id_for(id, choice);
            let expected = model.check_lease(id, lease_id).map(|()| {
                let job = &model.jobs[&id];
                let (_, expires_at) = job.lease.expect("leased");
                (now + job.timeout_ms).max(expires_at)
            });
            let got = match sut.state.heartbeat(now, id, lease_id, None) {
                Ok(decided) => Ok(sut.record(decided).1),
                Err(error) => Err((error.kind, error.code)),
            };
            assert_eq!(got, expected, "heartbeat of {id} under lease {lease_id}");
            if let Ok(expires_at) = expected {
                let job = model.jobs.get_mut(&id).expect("model job");
                job.lease = Some((lease_id, expires_at));
            }
        }
        Op::Ack(items) => {
            let items: Vec<(JobId, LeaseId)> = items
                .iter()
                .filter_map(|(target, choice)| {
                    let id = model.pick(target)?;
                    Some((id, model.lease_id_for(id, choice)))
                })
                .collect();
            let decided = sut.state.ack(now, &items);
            let (_, results) = sut.record(decided);
            let mut seen = BTreeSet::new();
            for (&(id, lease_id), result) in items.iter().zip(&results) {
                let expected: Reply = model.check_lease(id, lease_id).and_then(|()| {
                    if seen.insert(id) {
                        Ok(Settled {
                            state: JobState::Succeeded,
                            retry_at: None,
                        })
                    } else {
                        Err(STALE)
                    }
                });
                if expected.is_err() {
                    assert!(
                        result.is_err(),
                        "ack of {id} on a stale lease {lease_id} must fail"
                    );
                }
                assert_eq!(
                    reply(result),
                    expected,
                    "ack of {id} under lease {lease_id}"
                );
            }
            for id in seen {
                model.finish(id, JobState::Succeeded);
                model.acked.insert(id);
            }
        }
        Op::Fail(items) => {
            let inputs: Vec<FailInput> = items
                .iter()
                .filter_map(|(target, choice, retry_in)| {
                    let id = model.pick(target)?;
                    Some(FailInput {
                        id,
                        lease_id: model.lease_id_for(id, choice),
                        error: "failed".into(),
                        retry_at: retry_in.map(|d| now + d),
                    })
                })
                .collect();
            let asked: Vec<(JobId, LeaseId, Option<Millis>)> = inputs
                .iter()
                .map(|i| (i.id, i.lease_id, i.retry_at))
                .collect();
            let decided = sut.state.fail(now, inputs);
            let (_, results) = sut.record(decided);
            let mut settled: Vec<(JobId, Option<Millis>)> = Vec::new();
            for (&(id, lease_id, explicit), result) in asked.iter().zip(&results) {
                let mut expected = model.check_lease(id, lease_id);
                if expected.is_ok() && settled.iter().any(|&(s, _)| s == id) {
                    expected = Err(STALE);
                }
                if let Err(error) = expected {
                    assert_eq!(
                        reply(result),
                        Err(error),
                        "fail of {id} under lease {lease_id}"
                    );
                } else {
                    let job = &model.jobs[&id];
                    let retry_at = (job.attempts < job.max_attempts).then(|| {
                        let at = match (explicit, job.backoff) {
                            (Some(at), _) => at,
                            (None, Backoff::Fixed { delay_ms }) => now + Millis::from(delay_ms),
                            (None, Backoff::Exponential { base_ms, max_ms }) => {
                                // The jitter is the implementation's; check its bounds, adopt it.
                                let cap = (Millis::from(base_ms) << (job.attempts - 1))
                                    .min(Millis::from(max_ms));
                                let got = result
                                    .as_ref()
                                    .ok()
                                    .and_then(|s| s.retry_at)
                                    .expect("retry_at");
                                assert!(
                                    now + cap / 2 <= got && got <= now + cap,
                                    "backoff {} outside [{}, {cap}]",
                                    got - now,
                                    cap / 2
                                );
                                got
                            }
                        };
                        at.max(now)
                    });
                    let state = match retry_at {
                        Some(at) if at > now => JobState::Failed,
                        Some(_) => JobState::Ready,
                        None => JobState::Dead,
                    };
                    settled.push((id, retry_at));
                    assert_eq!(
                        reply(result),
                        Ok(Settled { state, retry_at }),
                        "fail of {id}"
                    );
                }
            }
            for (id, retry_at) in settled {
                match retry_at {
                    Some(at) => {
                        let job = model.jobs.get_mut(&id).expect("model job");
                        job.state = if at > now {
                            JobState::Failed
                        } else {
                            JobState::Ready
                        };
                        job.run_at = at;
                        job.lease = None;
                    }
                    None => model.finish(id, JobState::Dead),
                }
            }
        }
        Op::Advance(ms) => model.now += ms,
        Op::Expire => {
            let expired: Vec<JobId> = model
                .jobs
                .iter()
                .filter(|(_, j)| j.lease.is_some_and(|(_, at)| at <= now))
                .map(|(&id, _)| id)
                .collect();
            let decided = sut.state.expire_leases(now);
            let (_, count) = sut.record(decided);
            assert_eq!(count, expired.len(), "expired leases");
            for id in expired {
                let job = model.jobs.get_mut(&id).expect("model job");
                if job.attempts < job.max_attempts {
                    job.state = JobState::Ready;
                    job.run_at = now;
                    job.lease = None;
                } else {
                    model.finish(id, JobState::Dead);
                }
            }
        }
        Op::Cancel(target) => {
            let Some(id) = model.pick(target) else { return };
            let expected = match model.jobs.get(&id) {
                None => Err(NOT_FOUND),
                Some(job) if job.state.is_finished() => Err(INVALID_STATE),
                Some(_) => Ok(()),
            };
            let got = match sut.state.cancel(now, id) {
                Ok(decided) => {
                    sut.record(decided);
                    Ok(())
                }
                Err(error) => Err((error.kind, error.code)),
            };
            assert_eq!(got, expected, "cancel of {id}");
            if expected.is_ok() {
                model.finish(id, JobState::Cancelled);
            }
        }
        Op::Retry(target) => {
            let Some(id) = model.pick(target) else { return };
            let expected = match model.jobs.get(&id) {
                None => Err(NOT_FOUND),
                Some(job)
                    if matches!(
                        job.state,
                        JobState::Dead | JobState::Cancelled | JobState::Failed
                    ) =>
                {
                    Ok(())
                }
                Some(_) => Err(INVALID_STATE),
            };
            let got = match sut.state.retry(now, id) {
                Ok(decided) => {
                    sut.record(decided);
                    Ok(())
                }
                Err(error) => Err((error.kind, error.code)),
            };
            assert_eq!(got, expected, "retry of {id}");
            if expected.is_ok() {
                let job = model.jobs.get_mut(&id).expect("model job");
                if job.state != JobState::Failed {
                    job.attempts = 0;
                }
                job.state = JobState::Ready;
                job.run_at = now;
                job.finished_at = None;
            }
        }
        Op::Pause { queue, paused } => {
            let result = sut.state.set_paused(QUEUES[*queue], *paused);
            if !*paused && !model.queues.contains_key(queue) {
                let error = result.expect_err("resuming an unknown queue is an error");
                assert_eq!((error.kind, error.code), (ErrorKind::NotFound, "not_found"));
            } else {
                sut.record(result.expect("valid queue"));
                model.queues.insert(*queue, *paused);
            }
        }
        Op::Retain => {
            let cutoff = now - CONFIG.retention_ms as Millis;
            let mut removed: BTreeSet<JobId> = model
                .jobs
                .iter()
                .filter(|(_, j)| j.finished_at.is_some_and(|at| at <= cutoff))
                .map(|(&id, _)| id)
                .collect();
            for &queue in model.queues.keys() {
                let kept: Vec<JobId> = model
                    .jobs
                    .iter()
                    .filter(|(id, j)| {
                        j.queue == queue && j.state.is_finished() && !removed.contains(*id)
                    })
                    .map(|(&id, _)| id)
                    .collect();
                let excess = kept.len().saturating_sub(CONFIG.retention_len_max);
                removed.extend(&kept[..excess]);
            }
            let decided = sut.state.retain(now);
            let (_, count) = sut.record(decided);
            assert_eq!(count, removed.len(), "retained away: {removed:?}");
            for id in removed {
                model.remove(id);
                model.retained.insert(id);
            }
        }
        Op::Purge(queue) => {
            let expected: Option<Vec<JobId>> = model.queues.contains_key(queue).then(|| {
                model
                    .jobs
                    .iter()
                    .filter(|(_, j)| {
                        j.queue == *queue
                            && matches!(
                                j.state,
                                JobState::Ready | JobState::Scheduled | JobState::Failed
                            )
                    })
                    .map(|(&id, _)| id)
                    .collect()
            });
            match (sut.state.purge(QUEUES[*queue]), expected) {
                (Ok(decided), Some(ids)) => {
                    let (_, count) = sut.record(decided);
                    assert_eq!(count, ids.len(), "purged");
                    for id in ids {
                        model.remove(id);
                        model.purged.insert(id);
                    }
                }
                (Err(error), None) => assert_eq!((error.kind, error.code), NOT_FOUND),
                (got, expected) => panic!(
                    "purge of {}: got {got:?}, expected {expected:?}",
                    QUEUES[*queue]
                ),
            }
        }
    }
}

/// Compares every job and every queue of the state machine with the model.
fn check(model: &Model, state: &State) {
    assert_eq!(state.job_len(), model.jobs.len(), "number of jobs");
    for (&id, m) in &model.jobs {
        let job = state.job(id).unwrap_or_else(|| panic!("job {id} missing"));
        let (lease_id, lease_expires_at) = m.lease.unwrap_or((0, 0));
        let got = (
            state.queue_name(job.queue),
            job.state,
            job.priority,
            job.run_at,
            job.attempts,
            job.max_attempts,
            job.lease_id,
            job.lease_expires_at,
            job.finished_at,
        );
        let expected = (
            QUEUES[m.queue],
            m.state,
            m.priority,
            m.run_at,
            m.attempts,
            m.max_attempts,
            lease_id,
            lease_expires_at,
            m.finished_at.unwrap_or(0),
        );
        assert_eq!(
            got, expected,
            "job {id}: (queue, state, priority, run_at, attempts, max, lease, expiry, finished)"
        );
    }
    for id in model.retained.iter().chain(&model.purged) {
        assert!(state.job(*id).is_none(), "removed job {id} is gone");
    }
    for id in &model.acked {
        match state.job(*id) {
            Some(job) => assert_eq!(
                job.state,
                JobState::Succeeded,
                "acked job {id} stays succeeded"
            ),
            None => assert!(
                model.retained.contains(id),
                "acked job {id} gone but not retained away"
            ),
        }
    }
    assert_eq!(state.queue_len(), model.queues.len(), "number of queues");
    for (&q, &paused) in &model.queues {
        let queue = state
            .queue(QUEUES[q])
            .unwrap_or_else(|| panic!("queue {} missing", QUEUES[q]));
        assert_eq!(queue.paused, paused, "queue {} paused", QUEUES[q]);
        for s in JobState::ALL {
            let expected = model
                .jobs
                .values()
                .filter(|j| j.queue == q && j.state == s)
                .count();
            assert_eq!(
                queue.count(s),
                expected,
                "queue {} count of {}",
                QUEUES[q],
                s.as_str()
            );
        }
    }
}

// ---- whole-state comparison (replay and snapshot) -----------------------------------

#[derive(Debug, PartialEq)]
struct Observed {
    queues: Vec<(String, bool, Vec<usize>)>,
    jobs: Vec<(String, Job)>,
}

fn observe(state: &State) -> Observed {
    let mut queues = Vec::new();
    let mut jobs = Vec::new();
    for queue in state.queues_page(None, usize::MAX) {
        queues.push((
            queue.name.to_string(),
            queue.paused,
            JobState::ALL.iter().map(|&s| queue.count(s)).collect(),
        ));
        for s in JobState::ALL {
            for job in state.jobs_page(queue, s, None, usize::MAX) {
                jobs.push((queue.name.to_string(), job.clone()));
            }
        }
    }
    jobs.sort_by_key(|(_, job)| job.id);
    Observed { queues, jobs }
}

/// Replies of commands that depend on hidden state: id and lease counters, unique keys,
/// ready order, expiry and retention indexes.
fn probe(state: &mut State, now: Millis) -> String {
    let specs: Vec<EnqueueSpec> = QUEUES
        .iter()
        .flat_map(|q| {
            KEYS.iter()
                .map(|k| {
                    let mut spec = EnqueueSpec::new(q, "probe", "{}");
                    spec.unique_key = Some((*k).to_owned());
                    spec
                })
                .chain([EnqueueSpec::new(q, "probe", "{}")])
        })
        .collect();
    let (_, enqueued) = state.enqueue(now, specs, true).expect("probe enqueue");
    let names: Vec<String> = QUEUES.iter().map(|q| (*q).to_owned()).collect();
    let (event, leased) = state.lease(now, &names, 10_000, None).expect("probe lease");
    let lease_id = match event {
        Some(Event::Leased { lease_id, .. }) => lease_id,
        _ => 0,
    };
    let (_, expired) = state.expire_leases(now + 7_200_000);
    let (_, removed) = state.retain(now + 7_200_000);
    format!(
        "{enqueued:?} {leased:?} {lease_id} {expired} {removed} {:?}",
        state.next_deadline()
    )
}

fn run_case(ops: &[Op]) {
    let mut model = Model {
        now: T0,
        ..Model::default()
    };
    let mut sut = Sut {
        state: State::new(CONFIG),
        events: Vec::new(),
    };
    for op in ops {
        step(&mut model, &mut sut, op);
        check(&model, &sut.state);
    }

    let now = model.now;
    let mut replayed = State::new(CONFIG);
    for event in &sut.events {
        replayed.apply(event).expect("a logged event applies");
    }
    // Promotion of due jobs is not logged: compare as of `now`, after it.
    replayed.promote_due(now);
    sut.state.promote_due(now);
    let live = observe(&sut.state);
    assert_eq!(
        observe(&replayed),
        live,
        "replayed state differs from the live one"
    );
    let mut restored =
        State::decode_snapshot(CONFIG, &sut.state.encode_snapshot()).expect("snapshot decodes");
    assert_eq!(
        observe(&restored),
        live,
        "snapshot differs from the live one"
    );

    let expected = probe(&mut sut.state, now);
    assert_eq!(
        probe(&mut replayed, now),
        expected,
        "replayed state behaves differently"
    );
    assert_eq!(
        probe(&mut restored, now),
        expected,
        "restored snapshot behaves differently"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Failures print the shrunk sequence; no regression files outside this crate's tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn state_machine_matches_reference_model(ops in prop::collection::vec(op(), 1..120)) {
        run_case(&ops);
    }
}

/// A fixed sequence through every kind of operation, so the model itself is exercised
/// on a known path even if the generator's weights change.
#[test]
fn model_agrees_on_a_fixed_busy_sequence() {
    let job = |queue, unique_key| NewJobOp {
        queue,
        priority: 0,
        delay_ms: None,
        max_attempts: 2,
        unique_key,
        backoff: 2,
        timeout: 0,
        unique_ttl: 1,
    };
    let leased = |n| Target {
        index: n,
        leased: true,
    };
    let ops = vec![
        Op::Enqueue(vec![
            job(0, Some(0)),
            job(0, Some(0)),
            job(1, None),
            job(2, Some(1)),
        ]),
        Op::Lease {
            queues: vec![0, 1],
            max_jobs: 5,
        },
        Op::Heartbeat(leased(0), LeaseChoice::Right),
        Op::Ack(vec![
            (leased(0), LeaseChoice::Right),
            (leased(0), LeaseChoice::Right),
        ]),
        Op::Fail(vec![(leased(0), LeaseChoice::Right, None)]),
        Op::Advance(5_000),
        Op::Lease {
            queues: vec![0, 1, 2],
            max_jobs: 5,
        },
        Op::Advance(2_000),
        Op::Expire,
        Op::Pause {
            queue: 2,
            paused: true,
        },
        Op::Enqueue(vec![job(2, Some(1)), job(2, None)]),
        Op::Cancel(Target {
            index: 0,
            leased: false,
        }),
        Op::Retry(Target {
            index: 0,
            leased: false,
        }),
        Op::Purge(2),
        Op::Advance(40_000),
        Op::Retain,
    ];
    run_case(&ops);
}
