//! Unit tests of the state machine through its public API: each command at a given `now`,
//! what it replies, and what a later reader of the state (listing, counts, the next
//! command) sees. Every event a command returns is checked to round-trip through
//! `Event::encode`/`Event::decode`, and the busy scenario checks replay and snapshots.

use std::collections::BTreeSet;

use sluice_core::cron::Missed;
use sluice_core::{
    backoff_delay_ms, Backoff, Config, CoreError, EnqueueSpec, Enqueued, ErrorKind, Event,
    FailInput, Job, JobId, JobState, LeaseId, Millis, Outcome, QueueLimits, Rate, Settled, State,
};

/// An arbitrary "now" well past the epoch, so ids carry a realistic time.
const T0: Millis = 1_700_000_000_000;

/// A state plus every event its commands returned, in order.
struct Harness {
    state: State,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        Harness::with_config(Config::default())
    }

    fn with_config(config: Config) -> Self {
        Harness {
            state: State::new(config),
            events: Vec::new(),
        }
    }

    fn record<T>(&mut self, (event, reply): (Option<Event>, T)) -> T {
        if let Some(event) = event {
            let decoded = Event::decode(&event.encode());
            assert_eq!(
                decoded.as_ref(),
                Ok(&event),
                "event did not round-trip through encode/decode"
            );
            self.events.push(event);
        }
        reply
    }

    fn enqueue(&mut self, now: Millis, specs: Vec<EnqueueSpec>) -> Vec<Enqueued> {
        let decided = self.state.enqueue(now, specs, true).expect("valid enqueue");
        self.record(decided)
    }

    fn enqueue_one(&mut self, now: Millis, spec: EnqueueSpec) -> JobId {
        let replies = self.enqueue(now, vec![spec]);
        assert_eq!(replies.len(), 1);
        assert!(!replies[0].duplicate, "expected a new job");
        replies[0].id
    }

    /// Leases from `queues`; the lease id is 0 when nothing was leased.
    fn lease(&mut self, now: Millis, queues: &[&str], max_jobs: usize) -> (Vec<JobId>, LeaseId) {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        let decided = self
            .state
            .lease(now, &queues, max_jobs, Some("worker-1".into()))
            .expect("lease");
        let lease_id = match &decided.0 {
            Some(Event::Leased { lease_id, .. }) => *lease_id,
            None => 0,
            Some(other) => panic!("lease returned {other:?}"),
        };
        let ids = self.record(decided);
        if lease_id != 0 {
            for id in &ids {
                assert_eq!(self.job(*id).lease_id, lease_id);
            }
        }
        (ids, lease_id)
    }

    /// Leases exactly one job from `queue`.
    fn lease_one(&mut self, now: Millis, queue: &str) -> (JobId, LeaseId) {
        let (ids, lease_id) = self.lease(now, &[queue], 1);
        assert_eq!(ids.len(), 1, "expected one job to lease from {queue}");
        (ids[0], lease_id)
    }

    fn heartbeat(
        &mut self,
        now: Millis,
        id: JobId,
        lease_id: LeaseId,
        progress: Option<&str>,
    ) -> Result<Millis, CoreError> {
        let decided = self
            .state
            .heartbeat(now, id, lease_id, progress.map(Into::into))?;
        Ok(self.record(decided))
    }

    fn ack(&mut self, now: Millis, items: &[(JobId, LeaseId)]) -> Vec<Result<Settled, CoreError>> {
        let decided = self.state.ack(now, items);
        self.record(decided)
    }

    fn fail(&mut self, now: Millis, items: Vec<FailInput>) -> Vec<Result<Settled, CoreError>> {
        let decided = self.state.fail(now, items);
        self.record(decided)
    }

    fn fail_one(
        &mut self,
        now: Millis,
        id: JobId,
        lease_id: LeaseId,
        retry_at: Option<Millis>,
    ) -> Settled {
        let mut results = self.fail(now, vec![fail_input(id, lease_id, retry_at)]);
        results
            .pop()
            .expect("one result")
            .expect("fail of a leased job")
    }

    fn expire(&mut self, now: Millis) -> usize {
        let decided = self.state.expire_leases(now);
        self.record(decided)
    }

    fn cancel(&mut self, now: Millis, id: JobId) -> Result<(), CoreError> {
        let decided = self.state.cancel(now, id)?;
        self.record(decided);
        Ok(())
    }

    fn retry(&mut self, now: Millis, id: JobId) -> Result<(), CoreError> {
        let decided = self.state.retry(now, id)?;
        self.record(decided);
        Ok(())
    }

    fn pause(&mut self, queue: &str, paused: bool) {
        let decided = self
            .state
            .set_paused(queue, paused)
            .expect("valid queue name");
        self.record(decided);
    }

    fn set_limits(&mut self, now: Millis, queue: &str, limits: QueueLimits) {
        self.set_all_limits(now, queue, limits, QueueLimits::default());
    }

    fn set_all_limits(
        &mut self,
        now: Millis,
        queue: &str,
        limits: QueueLimits,
        key_limits: QueueLimits,
    ) {
        let decided = self
            .state
            .set_limits(now, queue, limits, key_limits)
            .expect("valid limits");
        self.record(decided);
    }

    fn retain(&mut self, now: Millis) -> usize {
        let decided = self.state.retain(now);
        self.record(decided)
    }

    fn purge(&mut self, queue: &str) -> Result<usize, CoreError> {
        let decided = self.state.purge(queue)?;
        Ok(self.record(decided))
    }

    fn job(&self, id: JobId) -> &Job {
        self.state.job(id).expect("job exists")
    }

    fn state_of(&self, id: JobId) -> JobState {
        self.job(id).state
    }

    fn count(&self, queue: &str, state: JobState) -> usize {
        self.state.queue(queue).map_or(0, |q| q.count(state))
    }
}

fn spec(queue: &str) -> EnqueueSpec {
    EnqueueSpec::new(queue, "email.send", r#"{"to":"a@example.com"}"#)
}

fn spec_with(queue: &str, edit: impl FnOnce(&mut EnqueueSpec)) -> EnqueueSpec {
    let mut spec = spec(queue);
    edit(&mut spec);
    spec
}

fn unique_spec(queue: &str, key: &str) -> EnqueueSpec {
    spec_with(queue, |s| s.unique_key = Some(key.into()))
}

fn fail_input(id: JobId, lease_id: LeaseId, retry_at: Option<Millis>) -> FailInput {
    FailInput {
        id,
        lease_id,
        error: "boom".into(),
        retry_at,
    }
}

fn assert_stale_lease<T: std::fmt::Debug>(result: Result<T, CoreError>) {
    let error = result.expect_err("expected stale_lease");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert_eq!(error.code, "stale_lease");
}

fn assert_invalid_state<T: std::fmt::Debug>(result: Result<T, CoreError>) {
    let error = result.expect_err("expected invalid_state");
    assert_eq!(error.kind, ErrorKind::InvalidState);
    assert_eq!(error.code, "invalid_state");
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, CoreError>) {
    let error = result.expect_err("expected not_found");
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(error.code, "not_found");
}

const SUCCEEDED: Settled = Settled {
    state: JobState::Succeeded,
    retry_at: None,
};

// ---- observable state ---------------------------------------------------------------

/// Everything the read API shows: queues in name order with paused flag and counts, and
/// every job (found through the per-state listings) in id order.
#[derive(Debug, PartialEq)]
struct Observed {
    queues: Vec<(String, bool, Vec<usize>)>,
    jobs: Vec<(String, Job)>,
}

fn observe(state: &State) -> Observed {
    let mut queues = Vec::new();
    let mut jobs = Vec::new();
    for queue in state.queues_page(None, usize::MAX) {
        let counts = JobState::ALL.iter().map(|&s| queue.count(s)).collect();
        queues.push((queue.name.to_string(), queue.paused, counts));
        for s in JobState::ALL {
            for job in state.jobs_page(queue, s, None, usize::MAX) {
                assert_eq!(job.state, s, "job {} listed under the wrong state", job.id);
                assert_eq!(state.job(job.id), Some(job));
                jobs.push((queue.name.to_string(), job.clone()));
            }
        }
    }
    jobs.sort_by_key(|(_, job)| job.id);
    assert_eq!(
        jobs.len(),
        state.job_len(),
        "every job is listed exactly once"
    );
    Observed { queues, jobs }
}

/// Drives `state` through commands whose replies depend on its hidden parts (id and
/// lease counters, unique keys, ready order, expiry and retention indexes) and returns
/// what they replied.
fn probe(state: &mut State, now: Millis, queues: &[&str], keys: &[&str]) -> String {
    let mut specs = Vec::new();
    for queue in queues {
        for key in keys {
            specs.push(unique_spec(queue, key));
        }
        specs.push(spec(queue));
    }
    let (_, enqueued) = state.enqueue(now, specs, true).expect("probe enqueue");
    let names: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
    let (leased_event, leased) = state.lease(now, &names, 10_000, None).expect("probe lease");
    let lease_id = match leased_event {
        Some(Event::Leased { lease_id, .. }) => lease_id,
        _ => 0,
    };
    let (_, expired) = state.expire_leases(now + 7_200_000);
    let (_, removed) = state.retain(now + 100 * 86_400_000);
    format!(
        "{enqueued:?} {leased:?} {lease_id} {expired} {removed} {:?}",
        state.next_deadline()
    )
}

fn replay(config: Config, events: &[Event]) -> State {
    let mut state = State::new(config);
    for event in events {
        state.apply(event).expect("a decided event applies");
    }
    state
}

fn variant(event: &Event) -> &'static str {
    match event {
        Event::Enqueued { .. } => "Enqueued",
        Event::Leased { .. } => "Leased",
        Event::Heartbeat { .. } => "Heartbeat",
        Event::Acked { .. } => "Acked",
        Event::Failed { .. } => "Failed",
        Event::Expired { .. } => "Expired",
        Event::Cancelled { .. } => "Cancelled",
        Event::Retried { .. } => "Retried",
        Event::QueuePaused { .. } => "QueuePaused",
        Event::Purged { .. } => "Purged",
        Event::Removed { .. } => "Removed",
        Event::QueueLimitsSet { .. } => "QueueLimitsSet",
        Event::BatchEnqueued { .. } => "BatchEnqueued",
        Event::CronSet { .. } => "CronSet",
        Event::CronRemoved { .. } => "CronRemoved",
        Event::CronFired { .. } => "CronFired",
        Event::Moved { .. } => "Moved",
        Event::EnqueuedKeyed { .. } => "EnqueuedKeyed",
        Event::LimitsSet { .. } => "LimitsSet",
        Event::AlertRuleSet { .. } => "AlertRuleSet",
        Event::AlertRuleRemoved { .. } => "AlertRuleRemoved",
        Event::SilenceSet { .. } => "SilenceSet",
        Event::SilenceRemoved { .. } => "SilenceRemoved",
        Event::AlertChanged { .. } => "AlertChanged",
        Event::StreamSet { .. } => "StreamSet",
        Event::GroupGeneration { .. } => "GroupGeneration",
        Event::GroupCommitted { .. } => "GroupCommitted",
        Event::FeedSet { .. } => "FeedSet",
        Event::FeedRemoved { .. } => "FeedRemoved",
        Event::FeedDelivered { .. } => "FeedDelivered",
        Event::StreamCompactionSet { .. } => "StreamCompactionSet",
    }
}

const BUSY_CONFIG: Config = Config {
    retention_ms: 60_000,
    retention_len_max: 100,
};

/// A state with jobs in every state, several queues (one paused), unique keys, tags,
/// progress and attempt history, made by every kind of command. Returns its `now`.
fn busy_scenario(h: &mut Harness) -> Millis {
    let mut now = T0;
    // Finished early so that retention removes it below.
    let early = h.enqueue_one(now, spec("emails"));
    let (id, lease) = h.lease_one(now, "emails");
    assert_eq!(id, early);
    assert_eq!(h.ack(now, &[(early, lease)]), vec![Ok(SUCCEEDED)]);

    now += 1_000;
    let replies = h.enqueue(
        now,
        vec![
            spec_with("emails", |s| s.priority = 5),
            unique_spec("emails", "user-1"),
            spec_with("emails", |s| s.tags = vec!["vip".into(), "eu".into()]),
            spec_with("reports", |s| s.run_at = Some(now + 3_600_000)),
            spec_with("reports", |s| s.max_attempts = 1),
            spec_with("reports", |s| {
                s.timeout_ms = 1_000;
                s.max_attempts = 2;
                s.priority = -1;
            }),
            spec("paused"),
            unique_spec("purged", "p-1"),
            spec("purged"),
            spec_with("reports", |s| {
                s.max_attempts = 1;
                s.priority = -5;
            }),
        ],
    );
    let ids: Vec<JobId> = replies.iter().map(|r| r.id).collect();
    h.pause("paused", true);

    let (leased, lease) = h.lease(now, &["emails"], 2);
    assert_eq!(
        leased,
        vec![ids[0], ids[1]],
        "priority 5 first, then the oldest"
    );
    h.heartbeat(now + 500, ids[0], lease, Some(r#"{"done":3}"#))
        .expect("heartbeat");
    assert_eq!(h.ack(now + 600, &[(ids[1], lease)]), vec![Ok(SUCCEEDED)]);

    let (leased, lease) = h.lease(now, &["reports", "paused"], 10);
    assert_eq!(leased, vec![ids[4], ids[5], ids[9]]);
    for id in [ids[4], ids[9]] {
        assert_eq!(h.fail_one(now + 700, id, lease, None).state, JobState::Dead);
    }
    assert_eq!(
        h.expire(now + 1_000),
        1,
        "the 1 s lease of the last reports job ran out"
    );
    h.retry(now + 1_100, ids[4]).expect("retry of a dead job");

    let (leased, lease) = h.lease(now + 1_200, &["reports"], 2);
    assert_eq!(
        leased,
        vec![ids[4], ids[5]],
        "retried and expired jobs are ready again"
    );
    h.fail_one(now + 1_300, ids[5], lease, Some(now + 50_000));
    h.cancel(now + 1_400, ids[2]).expect("cancel a ready job");
    h.purge("purged").expect("purge");

    now += 60_500;
    assert_eq!(
        h.retain(now),
        1,
        "only the job finished at T0 is past retention"
    );
    assert!(h.state.job(early).is_none());
    now
}

// ---- enqueue ------------------------------------------------------------------------

#[test]
fn enqueue_assigns_increasing_ids_and_state_by_run_at() {
    let mut h = Harness::new();
    let replies = h.enqueue(
        T0,
        vec![
            spec("q"),
            spec_with("q", |s| s.run_at = Some(T0 + 5_000)),
            spec_with("q", |s| s.run_at = Some(T0 - 5_000)),
        ],
    );
    let ids: Vec<JobId> = replies.iter().map(|r| r.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert!(replies.iter().all(|r| !r.duplicate));
    assert_eq!(h.state_of(ids[0]), JobState::Ready);
    assert_eq!(h.state_of(ids[1]), JobState::Scheduled);
    assert_eq!(h.job(ids[1]).run_at, T0 + 5_000);
    assert_eq!(
        h.state_of(ids[2]),
        JobState::Ready,
        "a run_at in the past runs now"
    );
    assert_eq!(h.job(ids[2]).run_at, T0);
    for id in &ids {
        assert_eq!(h.job(*id).enqueued_at(), T0);
        assert_eq!(h.job(*id).attempts, 0);
    }
    assert_eq!(h.count("q", JobState::Ready), 2);
    assert_eq!(h.count("q", JobState::Scheduled), 1);

    // Later enqueues get larger ids, even when the clock steps back.
    let later = h.enqueue_one(T0 + 1, spec("q"));
    let earlier_clock = h.enqueue_one(T0 - 60_000, spec("other"));
    assert!(later > ids[2]);
    assert!(earlier_clock > later);
}

#[test]
fn enqueue_stores_every_option_on_the_job() {
    let mut h = Harness::new();
    let id = h.enqueue_one(
        T0,
        spec_with("q", |s| {
            s.priority = -3;
            s.max_attempts = 7;
            s.timeout_ms = 2_000;
            s.backoff = Backoff::Fixed { delay_ms: 250 };
            s.tags = vec!["a".into(), "b".into()];
            s.unique_key = Some("k".into());
        }),
    );
    let job = h.job(id);
    assert_eq!(h.state.queue_name(job.queue), "q");
    assert_eq!(h.state.kind_name(job.kind), "email.send");
    assert_eq!(&*job.payload, r#"{"to":"a@example.com"}"#);
    assert_eq!(
        (job.priority, job.max_attempts, job.timeout_ms),
        (-3, 7, 2_000)
    );
    assert_eq!(job.backoff, Backoff::Fixed { delay_ms: 250 });
    let extra = job.extra().expect("extra");
    assert_eq!(extra.unique_key.as_deref(), Some("k"));
    assert_eq!(extra.tags, vec![Box::from("a"), Box::from("b")]);
}

// ---- lease --------------------------------------------------------------------------

#[test]
fn lease_orders_by_priority_then_run_at_then_id_across_queues() {
    let mut h = Harness::new();
    // Enqueued first, but due later than `late_enqueued_due_first`.
    let scheduled = h.enqueue_one(T0, spec_with("a", |s| s.run_at = Some(T0 + 50)));
    let late_enqueued_due_first = h.enqueue_one(T0 + 10, spec("b"));
    let low_a = h.enqueue_one(T0 + 60, spec_with("a", |s| s.priority = -1));
    let high_c = h.enqueue_one(T0 + 60, spec_with("c", |s| s.priority = 3));
    let high_b = h.enqueue_one(T0 + 60, spec_with("b", |s| s.priority = 3));
    let plain_c = h.enqueue_one(T0 + 60, spec("c"));
    let elsewhere = h.enqueue_one(T0, spec_with("d", |s| s.priority = 100));
    assert!(scheduled < late_enqueued_due_first);

    let now = T0 + 100;
    let (first, _) = h.lease(now, &["a", "b", "c"], 1);
    assert_eq!(first, vec![high_c]);
    let (rest, _) = h.lease(now, &["a", "b", "c"], 10);
    assert_eq!(
        rest,
        vec![high_b, late_enqueued_due_first, scheduled, plain_c, low_a]
    );
    assert_eq!(h.lease(now, &["a", "b", "c"], 10).0, Vec::<JobId>::new());
    assert_eq!(
        h.state_of(elsewhere),
        JobState::Ready,
        "queue d was not asked for"
    );
}

#[test]
fn lease_takes_at_most_max_jobs_and_counts_an_attempt() {
    let mut h = Harness::new();
    for _ in 0..5 {
        h.enqueue_one(T0, spec("q"));
    }
    let (ids, lease) = h.lease(T0, &["q", "q"], 3);
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let job = h.job(*id);
        assert_eq!(job.state, JobState::Leased);
        assert_eq!(job.attempts, 1);
        assert_eq!(job.lease_expires_at, T0 + 30_000);
        let history = &job.extra().expect("history").history;
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].attempt, history[0].leased_at), (1, T0));
        assert_eq!(history[0].worker.as_deref(), Some("worker-1"));
    }
    assert_eq!(h.count("q", JobState::Leased), 3);
    assert_eq!(h.count("q", JobState::Ready), 2);
    let (_, second_lease) = h.lease(T0, &["q"], 3);
    assert!(second_lease > lease, "lease ids increase");
}

#[test]
fn paused_queue_leases_nothing() {
    let mut h = Harness::new();
    let a = h.enqueue_one(T0, spec_with("a", |s| s.priority = 9));
    let b = h.enqueue_one(T0, spec("b"));
    h.pause("a", true);
    assert!(h.state.queue("a").expect("queue a").paused);

    let (event, ()) = h.state.set_paused("a", true).expect("pause again");
    assert!(event.is_none(), "pausing a paused queue changes nothing");
    assert_eq!(h.lease(T0, &["a"], 10), (vec![], 0));
    assert_eq!(h.lease(T0, &["a", "b"], 10).0, vec![b]);
    assert_eq!(h.state_of(a), JobState::Ready);

    h.pause("a", false);
    assert_eq!(h.lease(T0, &["a"], 10).0, vec![a]);
}

#[test]
fn pausing_an_unknown_queue_creates_it_paused() {
    let mut h = Harness::new();
    h.pause("later", true);
    let id = h.enqueue_one(T0, spec("later"));
    assert_eq!(h.lease(T0, &["later"], 1).0, Vec::<JobId>::new());
    assert_eq!(h.state_of(id), JobState::Ready);
    let error = h
        .state
        .set_paused("bad name", true)
        .expect_err("invalid name");
    assert_eq!(error.kind, ErrorKind::BadInput);
}

#[test]
fn delayed_job_is_leased_only_once_due() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 1_000)));
    assert_eq!(h.state.next_deadline(), Some(T0 + 1_000));
    assert_eq!(h.lease(T0 + 999, &["q"], 1).0, Vec::<JobId>::new());
    assert_eq!(h.state_of(id), JobState::Scheduled);

    h.state.promote_due(T0 + 999);
    assert_eq!(h.state_of(id), JobState::Scheduled);
    h.state.promote_due(T0 + 1_000);
    assert_eq!(h.state_of(id), JobState::Ready);
    assert_eq!(h.count("q", JobState::Ready), 1);
    assert_eq!(h.count("q", JobState::Scheduled), 0);
    assert_eq!(h.state.next_deadline(), None);

    assert_eq!(h.lease(T0 + 1_000, &["q"], 1).0, vec![id]);
}

#[test]
fn lease_promotes_due_jobs_itself() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 1_000)));
    assert_eq!(h.lease(T0 + 1_000, &["q"], 1).0, vec![id]);
}

// ---- heartbeat ----------------------------------------------------------------------

#[test]
fn heartbeat_extends_expiry() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.timeout_ms = 10_000));
    let (_, lease) = h.lease_one(T0, "q");
    assert_eq!(h.job(id).lease_expires_at, T0 + 10_000);

    assert_eq!(
        h.heartbeat(T0 + 4_000, id, lease, Some(r#"{"pct":40}"#)),
        Ok(T0 + 14_000)
    );
    assert_eq!(h.job(id).lease_expires_at, T0 + 14_000);
    assert_eq!(
        h.job(id).extra().expect("extra").progress.as_deref(),
        Some(r#"{"pct":40}"#)
    );
    assert_eq!(h.state.next_deadline(), Some(T0 + 14_000));

    assert_eq!(h.expire(T0 + 12_000), 0, "the old expiry no longer applies");
    assert_eq!(h.state_of(id), JobState::Leased);
    assert_eq!(h.expire(T0 + 14_000), 1);
    assert_eq!(h.state_of(id), JobState::Ready);
}

#[test]
fn heartbeat_never_shortens_a_lease() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.timeout_ms = 10_000));
    let (_, lease) = h.lease_one(T0 + 5_000, "q");
    // A heartbeat stamped with an older clock must not pull the expiry in.
    assert_eq!(h.heartbeat(T0, id, lease, None), Ok(T0 + 15_000));
}

#[test]
fn heartbeat_with_stale_lease_id_is_conflict_and_changes_nothing() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    let before = h.job(id).clone();
    let events_before = h.events.len();

    assert_stale_lease(h.heartbeat(T0 + 1_000, id, lease + 1, Some("{}")));
    assert_eq!(h.job(id), &before);
    assert_eq!(h.events.len(), events_before);

    assert_eq!(h.ack(T0 + 2_000, &[(id, lease)]), vec![Ok(SUCCEEDED)]);
    assert_stale_lease(h.heartbeat(T0 + 3_000, id, lease, None));
    assert_not_found(h.heartbeat(T0, id + 1_000, lease, None));
}

#[test]
fn heartbeat_with_oversized_progress_is_too_large() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    let progress = format!("\"{}\"", "x".repeat(5_000));
    let error = h
        .heartbeat(T0, id, lease, Some(&progress))
        .expect_err("too large");
    assert_eq!(
        (error.kind, error.code),
        (ErrorKind::TooLarge, "progress_too_large")
    );
    assert_eq!(h.job(id).lease_expires_at, T0 + 30_000);
}

// ---- ack and fail -------------------------------------------------------------------

#[test]
fn ack_batch_settles_each_item_on_its_own() {
    let mut h = Harness::new();
    let first = h.enqueue_one(T0, spec("q"));
    let second = h.enqueue_one(T0, spec("q"));
    let third = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease(T0, &["q"], 3);

    let results = h.ack(
        T0 + 10,
        &[
            (first, lease),
            (second, lease + 7),
            (third, lease),
            (first, lease),
            (third + 99, lease),
        ],
    );
    assert_eq!(results[0], Ok(SUCCEEDED));
    assert_stale_lease(results[1].clone());
    assert_eq!(results[2], Ok(SUCCEEDED));
    assert_stale_lease(results[3].clone());
    assert_not_found(results[4].clone());

    assert_eq!(h.state_of(first), JobState::Succeeded);
    assert_eq!(h.job(first).finished_at, T0 + 10);
    assert_eq!(
        h.state_of(second),
        JobState::Leased,
        "a stale item changes nothing"
    );
    assert_eq!(h.state_of(third), JobState::Succeeded);
    assert_eq!(h.count("q", JobState::Succeeded), 2);
    let history = &h.job(first).extra().expect("history").history;
    assert_eq!(history[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(history[0].finished_at, Some(T0 + 10));

    // Acking again, even with the right lease id, is stale: the job is finished.
    assert_stale_lease(h.ack(T0 + 20, &[(first, lease)]).remove(0));
    assert_eq!(h.ack(T0 + 20, &[(second, lease)]), vec![Ok(SUCCEEDED)]);
}

#[test]
fn ack_with_only_stale_items_logs_nothing() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    let (event, results) = h.state.ack(T0, &[(id, lease + 1)]);
    assert!(event.is_none());
    assert_stale_lease(results[0].clone());
}

#[test]
fn fail_batch_settles_each_item_on_its_own() {
    let mut h = Harness::new();
    let first = h.enqueue_one(T0, spec("q"));
    let second = h.enqueue_one(T0, spec_with("q", |s| s.max_attempts = 1));
    let third = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease(T0, &["q"], 3);

    let results = h.fail(
        T0,
        vec![
            fail_input(first, lease, Some(T0 + 60_000)),
            fail_input(third, lease - 1, None),
            fail_input(second, lease, None),
            fail_input(first, lease, None),
            fail_input(third + 99, lease, None),
        ],
    );
    assert_eq!(
        results[0],
        Ok(Settled {
            state: JobState::Failed,
            retry_at: Some(T0 + 60_000)
        })
    );
    assert_stale_lease(results[1].clone());
    assert_eq!(
        results[2],
        Ok(Settled {
            state: JobState::Dead,
            retry_at: None
        })
    );
    assert_stale_lease(results[3].clone());
    assert_not_found(results[4].clone());
    assert_eq!(h.state_of(first), JobState::Failed);
    assert_eq!(
        h.job(first).run_at,
        T0 + 60_000,
        "the duplicate item did not override the first"
    );
    assert_eq!(h.state_of(second), JobState::Dead);
    assert_eq!(h.state_of(third), JobState::Leased);
}

#[test]
fn fail_with_attempts_left_retries_after_exponential_backoff() {
    let mut h = Harness::new();
    let id = h.enqueue_one(
        T0,
        spec_with("q", |s| {
            s.max_attempts = 5;
            s.backoff = Backoff::Exponential {
                base_ms: 1_000,
                max_ms: 5_000,
            };
        }),
    );
    let mut now = T0;
    for attempt in 1..=4u16 {
        let (_, lease) = h.lease_one(now, "q");
        assert_eq!(h.job(id).attempts, attempt);
        let settled = h.fail_one(now, id, lease, None);
        assert_eq!(settled.state, JobState::Failed);
        let retry_at = settled.retry_at.expect("attempts left");
        let cap = (1_000i64 << (attempt - 1)).min(5_000);
        let delay = retry_at - now;
        assert!(
            cap <= 2 * delay && delay <= cap,
            "attempt {attempt}: delay {delay} outside [{cap}/2, {cap}]"
        );

        let job = h.job(id);
        assert_eq!((job.state, job.run_at), (JobState::Failed, retry_at));
        let last = job
            .extra()
            .expect("history")
            .history
            .last()
            .cloned()
            .expect("attempt");
        assert_eq!(last.outcome, Some(Outcome::Failed));
        assert_eq!(last.error.as_deref(), Some("boom"));
        assert_eq!(h.count("q", JobState::Failed), 1);

        assert_eq!(
            h.lease(retry_at - 1, &["q"], 1).0,
            Vec::<JobId>::new(),
            "not before retry_at"
        );
        now = retry_at;
    }
    let (_, lease) = h.lease_one(now, "q");
    assert_eq!(
        h.fail_one(now, id, lease, Some(now + 1)),
        Settled {
            state: JobState::Dead,
            retry_at: None
        },
        "no attempts left: dead, and an explicit retry_at does not revive it"
    );
    assert_eq!(h.job(id).finished_at, now);
    assert_eq!(h.job(id).attempts, 5);
}

#[test]
fn backoff_delay_is_exponential_within_jitter_and_capped() {
    let backoff = Backoff::Exponential {
        base_ms: 1_000,
        max_ms: 20_000,
    };
    for attempt in 1..=12u16 {
        let cap = (1_000u64 << (attempt - 1)).min(20_000);
        let mut distinct = BTreeSet::new();
        for id in 0..500u64 {
            let job_id = ((T0 as u64) << 16) | id;
            let delay = backoff_delay_ms(backoff, job_id, attempt);
            assert!(
                cap <= 2 * delay && delay <= cap,
                "attempt {attempt}: {delay} outside [{cap}/2, {cap}]"
            );
            assert_eq!(
                delay,
                backoff_delay_ms(backoff, job_id, attempt),
                "deterministic"
            );
            distinct.insert(delay);
        }
        assert!(
            distinct.len() > 100,
            "jitter spreads retries: {} distinct delays",
            distinct.len()
        );
    }
    assert_eq!(
        backoff_delay_ms(Backoff::Fixed { delay_ms: 1_234 }, 77, 9),
        1_234
    );
    // Very high attempt numbers must not overflow.
    let big = Backoff::Exponential {
        base_ms: u32::MAX,
        max_ms: u32::MAX,
    };
    assert!(backoff_delay_ms(big, 1, u16::MAX) <= u64::from(u32::MAX));
}

#[test]
fn fail_with_explicit_retry_at_is_honoured() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    let settled = h.fail_one(T0 + 5, id, lease, Some(T0 + 77_777));
    assert_eq!(
        settled,
        Settled {
            state: JobState::Failed,
            retry_at: Some(T0 + 77_777)
        }
    );
    assert_eq!(h.job(id).run_at, T0 + 77_777);
    assert_eq!(h.state.next_deadline(), Some(T0 + 77_777));
    assert_eq!(h.lease(T0 + 77_776, &["q"], 1).0, Vec::<JobId>::new());
    assert_eq!(h.lease(T0 + 77_777, &["q"], 1).0, vec![id]);
}

/// Regression: a retry due at once (a retry_at in the past, or a zero fixed backoff)
/// makes the job ready, but the reply said `failed`.
#[test]
fn fail_reply_state_matches_job_state_when_retry_is_due_now() {
    let mut h = Harness::new();
    let past = h.enqueue_one(T0, spec("q"));
    let zero_backoff = h.enqueue_one(
        T0,
        spec_with("q", |s| s.backoff = Backoff::Fixed { delay_ms: 0 }),
    );
    let (_, lease) = h.lease(T0, &["q"], 2);
    let results = h.fail(
        T0 + 100,
        vec![
            fail_input(past, lease, Some(T0 - 1_000)),
            fail_input(zero_backoff, lease, None),
        ],
    );
    for (id, result) in [past, zero_backoff].into_iter().zip(results) {
        let settled = result.expect("fail");
        assert_eq!(
            settled.retry_at,
            Some(T0 + 100),
            "a retry_at in the past means now"
        );
        assert_eq!(h.state_of(id), JobState::Ready);
        assert_eq!(
            settled.state,
            h.state_of(id),
            "the reply shows the job's state after the call"
        );
    }
    assert_eq!(h.lease(T0 + 100, &["q"], 2).0, vec![past, zero_backoff]);
}

#[test]
fn fail_cuts_long_errors_at_a_char_boundary() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    let error = "é".repeat(3_000); // 6000 bytes, two per char
    let results = h.fail(
        T0,
        vec![FailInput {
            id,
            lease_id: lease,
            error,
            retry_at: None,
        }],
    );
    assert!(results[0].is_ok());
    let stored = h.job(id).extra().expect("history").history[0]
        .error
        .clone()
        .expect("error");
    assert_eq!(stored.len(), 4_096);
    assert!(stored.chars().all(|c| c == 'é'));
}

// ---- expiry -------------------------------------------------------------------------

#[test]
fn expire_leases_counts_an_attempt_and_requeues_or_kills() {
    let mut h = Harness::new();
    let id = h.enqueue_one(
        T0,
        spec_with("q", |s| {
            s.max_attempts = 2;
            s.timeout_ms = 1_000;
        }),
    );
    let (_, first_lease) = h.lease_one(T0, "q");
    assert_eq!(h.expire(T0 + 999), 0);
    assert_eq!(h.state_of(id), JobState::Leased);
    assert_eq!(h.expire(T0 + 1_000), 1);
    let job = h.job(id);
    assert_eq!(
        (job.state, job.attempts, job.run_at, job.lease_id),
        (JobState::Ready, 1, T0 + 1_000, 0)
    );
    let history = &job.extra().expect("history").history;
    assert_eq!(history[0].outcome, Some(Outcome::Expired));
    assert_eq!(history[0].finished_at, Some(T0 + 1_000));
    assert_stale_lease(h.ack(T0 + 1_001, &[(id, first_lease)]).remove(0));

    let (_, second_lease) = h.lease_one(T0 + 2_000, "q");
    assert_ne!(second_lease, first_lease);
    assert_eq!(h.job(id).attempts, 2);
    assert_eq!(h.expire(T0 + 3_000), 1);
    let job = h.job(id);
    assert_eq!(
        (job.state, job.attempts, job.finished_at),
        (JobState::Dead, 2, T0 + 3_000)
    );
    assert_eq!(h.count("q", JobState::Dead), 1);
    assert_eq!(h.expire(T0 + 10_000), 0);
}

#[test]
fn lease_cannot_take_a_job_whose_lease_ran_out_until_it_is_expired() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.timeout_ms = 1_000));
    let (_, lease) = h.lease_one(T0, "q");
    assert_eq!(
        h.lease(T0 + 5_000, &["q"], 1).0,
        Vec::<JobId>::new(),
        "still held by the old lease"
    );
    assert_eq!(h.expire(T0 + 5_000), 1);
    let (again, new_lease) = h.lease_one(T0 + 5_000, "q");
    assert_eq!(again, id);
    assert_stale_lease(h.ack(T0 + 5_000, &[(id, lease)]).remove(0));
    assert_eq!(h.ack(T0 + 5_000, &[(id, new_lease)]), vec![Ok(SUCCEEDED)]);
}

// ---- cancel and retry ---------------------------------------------------------------

#[test]
fn cancel_pending_and_leased_jobs() {
    let mut h = Harness::new();
    let ready = h.enqueue_one(T0, spec("q"));
    let scheduled = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 60_000)));
    let leased = h.enqueue_one(T0, spec("r"));
    let (_, lease) = h.lease_one(T0, "r");

    h.cancel(T0 + 1, ready).expect("cancel ready");
    h.cancel(T0 + 2, scheduled).expect("cancel scheduled");
    h.cancel(T0 + 3, leased).expect("cancel leased");
    for (id, at) in [(ready, T0 + 1), (scheduled, T0 + 2), (leased, T0 + 3)] {
        let job = h.job(id);
        assert_eq!(
            (job.state, job.finished_at, job.lease_id),
            (JobState::Cancelled, at, 0)
        );
    }
    assert_eq!(h.count("q", JobState::Cancelled), 2);
    assert_eq!(
        h.count("q", JobState::Ready) + h.count("q", JobState::Scheduled),
        0
    );
    assert_eq!(
        h.state.next_deadline(),
        None,
        "nothing left to expire or promote"
    );
    let history = &h.job(leased).extra().expect("history").history;
    assert_eq!(history[0].outcome, Some(Outcome::Cancelled));

    assert_stale_lease(h.heartbeat(T0 + 4, leased, lease, None));
    assert_stale_lease(h.ack(T0 + 4, &[(leased, lease)]).remove(0));
    assert_stale_lease(
        h.fail(T0 + 4, vec![fail_input(leased, lease, None)])
            .remove(0),
    );
    assert_eq!(h.lease(T0 + 70_000, &["q", "r"], 10).0, Vec::<JobId>::new());
}

#[test]
fn cancel_of_a_finished_job_is_invalid_state() {
    let mut h = Harness::new();
    let succeeded = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    h.ack(T0, &[(succeeded, lease)]);
    let cancelled = h.enqueue_one(T0, spec("q"));
    h.cancel(T0, cancelled).expect("cancel");
    let dead = h.enqueue_one(T0, spec_with("q", |s| s.max_attempts = 1));
    let (_, lease) = h.lease_one(T0, "q");
    h.fail_one(T0, dead, lease, None);

    for id in [succeeded, cancelled, dead] {
        let before = h.job(id).clone();
        assert_invalid_state(h.cancel(T0 + 1, id));
        assert_eq!(h.job(id), &before);
    }
    assert_not_found(h.cancel(T0, dead + 1_000));
}

#[test]
fn retry_of_dead_resets_attempts() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.max_attempts = 2));
    for now in [T0, T0 + 100_000] {
        let (_, lease) = h.lease_one(now, "q");
        h.fail_one(now, id, lease, Some(now + 1));
    }
    assert_eq!(h.state_of(id), JobState::Dead);
    assert_eq!(h.job(id).attempts, 2);

    h.retry(T0 + 200_000, id).expect("retry dead");
    let job = h.job(id);
    assert_eq!(
        (job.state, job.attempts, job.run_at, job.finished_at),
        (JobState::Ready, 0, T0 + 200_000, 0)
    );
    assert_eq!(h.count("q", JobState::Dead), 0);
    // Two fresh attempts again.
    let (_, lease) = h.lease_one(T0 + 200_000, "q");
    assert_eq!(
        h.fail_one(T0 + 200_000, id, lease, Some(T0 + 200_001))
            .state,
        JobState::Failed
    );
}

#[test]
fn retry_of_cancelled_and_failed_jobs_runs_them_now() {
    let mut h = Harness::new();
    let cancelled = h.enqueue_one(T0, spec("q"));
    h.cancel(T0, cancelled).expect("cancel");
    let failed = h.enqueue_one(T0, spec("q"));
    let (_, lease) = h.lease_one(T0, "q");
    h.fail_one(T0, failed, lease, Some(T0 + 3_600_000));

    h.retry(T0 + 10, cancelled).expect("retry cancelled");
    h.retry(T0 + 10, failed).expect("retry failed");
    assert_eq!(h.job(failed).attempts, 1, "a failed job keeps its attempts");
    assert_eq!(h.job(failed).run_at, T0 + 10);
    assert_eq!(h.lease(T0 + 10, &["q"], 10).0, vec![cancelled, failed]);
}

#[test]
fn retry_of_a_ready_job_is_invalid_state() {
    let mut h = Harness::new();
    let ready = h.enqueue_one(T0, spec("q"));
    let scheduled = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 1_000)));
    let leased = h.enqueue_one(T0, spec("r"));
    let (_, lease) = h.lease_one(T0, "r");
    let succeeded = h.enqueue_one(T0, spec("s"));
    let (_, s_lease) = h.lease_one(T0, "s");
    h.ack(T0, &[(succeeded, s_lease)]);

    for id in [ready, scheduled, leased, succeeded] {
        let before = h.job(id).clone();
        assert_invalid_state(h.retry(T0 + 1, id));
        assert_eq!(h.job(id), &before);
    }
    assert_eq!(
        h.ack(T0 + 2, &[(leased, lease)]),
        vec![Ok(SUCCEEDED)],
        "the lease is untouched"
    );
    assert_not_found(h.retry(T0, leased + 1_000));
}

// ---- unique keys --------------------------------------------------------------------

#[test]
fn unique_key_duplicate_returns_the_existing_job() {
    let mut h = Harness::new();
    let original = h.enqueue_one(T0, unique_spec("q", "order-1"));
    let (event, replies) = h
        .state
        .enqueue(T0 + 5, vec![unique_spec("q", "order-1")], false)
        .expect("enqueue");
    assert_eq!(
        replies,
        vec![Enqueued {
            id: original,
            duplicate: true
        }]
    );
    assert!(event.is_none(), "a pure duplicate logs nothing");
    assert_eq!(h.state.job_len(), 1);

    // Same key in another queue is another job.
    let other_queue = h.enqueue_one(T0 + 5, unique_spec("r", "order-1"));
    assert_ne!(other_queue, original);
    // A leased holder still holds the key.
    h.lease_one(T0 + 6, "q");
    assert_eq!(
        h.enqueue(T0 + 7, vec![unique_spec("q", "order-1")]),
        vec![Enqueued {
            id: original,
            duplicate: true
        }]
    );
}

#[test]
fn unique_key_duplicate_within_one_batch() {
    let mut h = Harness::new();
    let replies = h.enqueue(
        T0,
        vec![
            unique_spec("q", "k"),
            spec("q"),
            unique_spec("q", "k"),
            unique_spec("q", "j"),
        ],
    );
    assert!(!replies[0].duplicate && !replies[1].duplicate && !replies[3].duplicate);
    assert_eq!(
        replies[2],
        Enqueued {
            id: replies[0].id,
            duplicate: true
        }
    );
    assert_eq!(h.state.job_len(), 3);
    assert_eq!(h.count("q", JobState::Ready), 3);
}

#[test]
fn unique_key_is_free_again_after_the_job_finishes() {
    let mut h = Harness::new();
    let first = h.enqueue_one(T0, unique_spec("q", "k"));
    let (_, lease) = h.lease_one(T0, "q");
    h.ack(T0 + 1, &[(first, lease)]);
    let second = h.enqueue_one(T0 + 2, unique_spec("q", "k"));
    assert_ne!(second, first);

    h.cancel(T0 + 3, second).expect("cancel");
    let third = h.enqueue_one(T0 + 4, unique_spec("q", "k"));

    let (_, lease) = h.lease_one(T0 + 5, "q");
    h.fail(T0 + 5, vec![fail_input(third, lease, Some(T0 + 10))]);
    assert_eq!(
        h.enqueue(T0 + 6, vec![unique_spec("q", "k")]),
        vec![Enqueued {
            id: third,
            duplicate: true
        }],
        "a job waiting to retry is unfinished and keeps its key"
    );
}

#[test]
fn unique_key_is_free_again_after_the_ttl_passes() {
    let mut h = Harness::new();
    let first = h.enqueue_one(
        T0,
        spec_with("q", |s| {
            s.unique_key = Some("k".into());
            s.unique_ttl_ms = 1_000;
        }),
    );
    assert_eq!(
        h.enqueue(T0 + 999, vec![unique_spec("q", "k")]),
        vec![Enqueued {
            id: first,
            duplicate: true
        }]
    );
    let second = h.enqueue_one(T0 + 1_000, unique_spec("q", "k"));
    assert_ne!(second, first);
    assert_eq!(
        h.state_of(first),
        JobState::Ready,
        "the old holder is untouched"
    );
    // The new holder keeps the key even when the old one finishes.
    let (_, lease) = h.lease_one(T0 + 1_001, "q");
    h.ack(T0 + 1_001, &[(first, lease)]);
    assert_eq!(
        h.enqueue(T0 + 1_002, vec![unique_spec("q", "k")]),
        vec![Enqueued {
            id: second,
            duplicate: true
        }]
    );
}

// ---- validation ---------------------------------------------------------------------

fn detail_paths(error: &CoreError) -> Vec<&str> {
    error.details.iter().map(|d| d.path.as_str()).collect()
}

#[test]
fn validation_errors_carry_batch_paths_and_report_all_bad_fields() {
    let mut state = State::new(Config::default());
    let specs = vec![
        spec("ok"),
        spec_with("ok", |s| s.kind = "has space".into()),
        spec("ok"),
        spec_with("", |s| {
            s.max_attempts = 0;
            s.timeout_ms = 10;
            s.tags = vec!["fine".into(), String::new()];
        }),
    ];
    let error = state.enqueue(T0, specs, true).expect_err("invalid batch");
    assert_eq!(
        (error.kind, error.code),
        (ErrorKind::BadInput, "invalid_request")
    );
    assert_eq!(
        detail_paths(&error),
        vec![
            "jobs[1].kind",
            "jobs[3].queue",
            "jobs[3].max_attempts",
            "jobs[3].timeout_ms",
            "jobs[3].tags[1]"
        ]
    );
    assert!(error.details.iter().all(|d| !d.message.is_empty()));
    assert_eq!(state.job_len(), 0, "an invalid batch enqueues nothing");
    assert!(state.queue("ok").is_none(), "nor creates queues");
}

#[test]
fn validation_without_batch_has_bare_paths() {
    let mut state = State::new(Config::default());
    let bad = spec_with("q", |s| {
        s.run_at = Some(T0 + 367 * 86_400_000);
        s.backoff = Backoff::Exponential {
            base_ms: 0,
            max_ms: 10,
        };
        s.unique_key = Some(String::new());
        s.unique_ttl_ms = 0;
        s.tags = vec!["t".into(); 17];
    });
    let error = state.enqueue(T0, vec![bad], false).expect_err("invalid");
    assert_eq!(
        detail_paths(&error),
        vec!["run_at", "backoff", "unique_key", "unique_ttl_ms", "tags"]
    );

    let max_ok = spec_with("q", |s| {
        s.run_at = Some(T0 + 366 * 86_400_000);
        s.max_attempts = 1_000;
        s.timeout_ms = 3_600_000;
        s.backoff = Backoff::Fixed { delay_ms: 0 };
    });
    assert!(
        state.enqueue(T0, vec![max_ok], false).is_ok(),
        "limits are inclusive"
    );
}

// ---- retention and purge ------------------------------------------------------------

/// Enqueues, leases and acks one job in `queue` at `at`.
fn succeeded_job(h: &mut Harness, queue: &str, at: Millis) -> JobId {
    let id = h.enqueue_one(at, spec(queue));
    let (leased, lease) = h.lease_one(at, queue);
    assert_eq!(leased, id);
    assert_eq!(h.ack(at, &[(id, lease)]), vec![Ok(SUCCEEDED)]);
    id
}

#[test]
fn retention_by_time_removes_only_finished_jobs_past_retention() {
    let mut h = Harness::with_config(Config {
        retention_ms: 10_000,
        retention_len_max: 1_000,
    });
    let acked = succeeded_job(&mut h, "q", T0);
    let dead = h.enqueue_one(T0, spec_with("q", |s| s.max_attempts = 1));
    let (_, lease) = h.lease_one(T0, "q");
    h.fail_one(T0 + 5_000, dead, lease, None);
    let cancelled = h.enqueue_one(T0, spec("q"));
    h.cancel(T0 + 9_000, cancelled).expect("cancel");
    let ready = h.enqueue_one(T0, spec("q"));
    let leased = h.enqueue_one(T0, spec("r"));
    h.lease_one(T0, "r");
    let scheduled = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 100_000)));

    assert_eq!(h.retain(T0 + 9_999), 0);
    assert_eq!(h.retain(T0 + 10_000), 1);
    assert!(h.state.job(acked).is_none());
    assert_eq!(h.count("q", JobState::Succeeded), 0);
    assert_eq!(h.retain(T0 + 15_000), 1);
    assert!(h.state.job(dead).is_none());
    assert_eq!(h.retain(T0 + 19_000), 1);
    assert!(h.state.job(cancelled).is_none());

    assert_eq!(
        h.retain(T0 + 10_000_000),
        0,
        "unfinished jobs are never retained away"
    );
    assert_eq!(h.state_of(ready), JobState::Ready);
    assert_eq!(h.state_of(leased), JobState::Leased);
    assert_eq!(h.state_of(scheduled), JobState::Scheduled);
}

#[test]
fn retention_by_count_removes_the_oldest_finished_jobs_per_queue() {
    let mut h = Harness::with_config(Config {
        retention_ms: 86_400_000,
        retention_len_max: 2,
    });
    let a: Vec<JobId> = (0..5).map(|i| succeeded_job(&mut h, "a", T0 + i)).collect();
    let b: Vec<JobId> = (0..2).map(|i| succeeded_job(&mut h, "b", T0 + i)).collect();
    let ready = h.enqueue_one(T0, spec("a"));
    let dead = h.enqueue_one(T0 + 10, spec_with("c", |s| s.max_attempts = 1));
    let (_, lease) = h.lease_one(T0 + 10, "c");
    h.fail_one(T0 + 10, dead, lease, None);
    let cancelled = h.enqueue_one(T0 + 11, spec("c"));
    h.cancel(T0 + 11, cancelled).expect("cancel");
    let newest_c = succeeded_job(&mut h, "c", T0 + 12);

    assert_eq!(h.retain(T0 + 100), 4);
    for id in &a[..3] {
        assert!(h.state.job(*id).is_none(), "oldest of a removed");
    }
    for id in a[3..].iter().chain(&b) {
        assert_eq!(h.state_of(*id), JobState::Succeeded);
    }
    assert!(
        h.state.job(dead).is_none(),
        "c keeps two of its dead, cancelled and succeeded jobs"
    );
    assert_eq!(h.state_of(cancelled), JobState::Cancelled);
    assert_eq!(h.state_of(newest_c), JobState::Succeeded);
    assert_eq!(h.state_of(ready), JobState::Ready);
    assert_eq!(h.retain(T0 + 100), 0);
}

/// Regression: jobs removed by time in the same pass were not subtracted from a queue's
/// excess, so the count rule removed that many more and left fewer than
/// `retention_len_max` finished jobs.
#[test]
fn retention_by_time_and_count_together_keeps_retention_len_max_jobs() {
    let mut h = Harness::with_config(Config {
        retention_ms: 10_000,
        retention_len_max: 2,
    });
    let ids: Vec<JobId> = (0..4).map(|_| h.enqueue_one(T0, spec("q"))).collect();
    let (_, lease) = h.lease(T0, &["q"], 4);
    // The two newest jobs finish first, so time and count pick different jobs.
    h.ack(T0 + 1_000, &[(ids[2], lease), (ids[3], lease)]);
    h.ack(T0 + 20_000, &[(ids[0], lease), (ids[1], lease)]);

    assert_eq!(h.retain(T0 + 25_000), 2);
    assert!(h.state.job(ids[2]).is_none() && h.state.job(ids[3]).is_none());
    assert_eq!(h.state_of(ids[0]), JobState::Succeeded);
    assert_eq!(h.state_of(ids[1]), JobState::Succeeded);
    assert_eq!(h.count("q", JobState::Succeeded), 2);
}

#[test]
fn purge_removes_ready_scheduled_and_failed_but_not_leased() {
    let mut h = Harness::new();
    let succeeded = succeeded_job(&mut h, "q", T0);
    let ready = h.enqueue_one(T0, unique_spec("q", "k"));
    let scheduled = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 60_000)));
    let failed = h.enqueue_one(T0, spec_with("q", |s| s.priority = 2));
    let leased = h.enqueue_one(T0, spec_with("q", |s| s.priority = 1));
    let (_, lease) = h.lease(T0, &["q"], 2);
    h.fail_one(T0, failed, lease, Some(T0 + 60_000));
    let elsewhere = h.enqueue_one(T0, spec("other"));

    assert_eq!(h.purge("q"), Ok(3));
    for id in [ready, scheduled, failed] {
        assert!(h.state.job(id).is_none(), "job {id} purged");
    }
    assert_eq!(h.state_of(leased), JobState::Leased);
    assert_eq!(h.state_of(succeeded), JobState::Succeeded);
    assert_eq!(h.state_of(elsewhere), JobState::Ready);
    for s in [JobState::Ready, JobState::Scheduled, JobState::Failed] {
        assert_eq!(h.count("q", s), 0);
    }
    assert_eq!(
        h.state.next_deadline(),
        Some(T0 + 30_000),
        "only the lease is left to watch"
    );
    assert_eq!(h.ack(T0 + 1, &[(leased, lease)]), vec![Ok(SUCCEEDED)]);
    assert!(
        !h.enqueue(T0 + 2, vec![unique_spec("q", "k")])[0].duplicate,
        "purged job's key is free"
    );

    let (event, purged) = h.state.purge("other").expect("purge");
    assert_eq!(purged, 1);
    assert!(event.is_some());
    let (event, purged) = h.state.purge("other").expect("purge empty");
    assert_eq!((event, purged), (None, 0));
    assert_not_found(h.purge("never"));
}

// ---- snapshots, replay, events ------------------------------------------------------

#[test]
fn snapshot_round_trip_keeps_observable_state() {
    let mut h = Harness::with_config(BUSY_CONFIG);
    let now = busy_scenario(&mut h);
    let bytes = h.state.encode_snapshot();
    let mut decoded = State::decode_snapshot(BUSY_CONFIG, &bytes).expect("decode snapshot");
    let observed = observe(&h.state);
    assert!(
        observed.jobs.len() == 8 && observed.queues.len() == 4,
        "the scenario is not trivial"
    );
    assert_eq!(observe(&decoded), observed);
    assert_eq!(decoded.next_deadline(), h.state.next_deadline());

    let queues = ["emails", "reports", "paused", "purged", "new"];
    let keys = ["user-1", "p-1", "fresh"];
    assert_eq!(
        probe(&mut decoded, now, &queues, &keys),
        probe(&mut h.state, now, &queues, &keys)
    );
    assert_eq!(observe(&decoded), observe(&h.state));
}

#[test]
fn snapshot_of_an_empty_state_decodes_and_garbage_does_not() {
    let empty = State::new(Config::default());
    let decoded =
        State::decode_snapshot(Config::default(), &empty.encode_snapshot()).expect("decode");
    assert_eq!(decoded.job_len(), 0);
    assert_eq!(decoded.queue_len(), 0);
    assert!(State::decode_snapshot(Config::default(), &[0xff, 0xff, 0xff]).is_err());
}

#[test]
fn replay_of_events_rebuilds_the_same_state() {
    let mut h = Harness::with_config(BUSY_CONFIG);
    let now = busy_scenario(&mut h);
    let mut replayed = replay(BUSY_CONFIG, &h.events);
    // Promotion of due jobs is not logged; both sides are compared as of `now`.
    replayed.promote_due(now);
    h.state.promote_due(now);
    assert_eq!(observe(&replayed), observe(&h.state));

    let queues = ["emails", "reports", "paused", "purged", "new"];
    let keys = ["user-1", "p-1", "fresh"];
    assert_eq!(
        probe(&mut replayed, now, &queues, &keys),
        probe(&mut h.state, now, &queues, &keys)
    );
}

#[test]
fn replay_after_a_snapshot_continues_where_the_snapshot_left_off() {
    let mut h = Harness::with_config(BUSY_CONFIG);
    let mut now = busy_scenario(&mut h);
    let snapshot = h.state.encode_snapshot();
    let logged = h.events.len();

    now += 1_000;
    h.pause("paused", false);
    let (ids, lease) = h.lease(now, &["paused", "emails"], 10);
    assert!(!ids.is_empty());
    h.ack(now, &[(ids[0], lease)]);
    h.enqueue(now, vec![unique_spec("emails", "after")]);

    let mut restored = State::decode_snapshot(BUSY_CONFIG, &snapshot).expect("decode");
    for event in &h.events[logged..] {
        restored.apply(event).expect("apply");
    }
    restored.promote_due(now);
    h.state.promote_due(now);
    assert_eq!(observe(&restored), observe(&h.state));
}

#[test]
fn every_event_round_trips_through_encode_and_decode() {
    let mut h = Harness::with_config(BUSY_CONFIG);
    busy_scenario(&mut h);
    // `Harness::record` already checked each event; here: every kind of event was seen.
    let seen: BTreeSet<&str> = h.events.iter().map(variant).collect();
    let all = [
        "Enqueued",
        "Leased",
        "Heartbeat",
        "Acked",
        "Failed",
        "Expired",
        "Cancelled",
        "Retried",
        "QueuePaused",
        "Purged",
        "Removed",
    ];
    assert_eq!(seen, all.into_iter().collect::<BTreeSet<_>>());
    for event in &h.events {
        let bytes = event.encode();
        assert!(!bytes.is_empty());
        assert_eq!(Event::decode(&bytes).as_ref(), Ok(event));
        assert!(
            Event::decode(&bytes[..bytes.len() - 1]).is_err(),
            "a truncated event is rejected"
        );
    }
    assert!(
        Event::decode(&[11]).is_err(),
        "an unknown variant is rejected"
    );
}

// ---- regressions found by the fuzz targets (fuzz/, docs/reliability.md "Fuzzing") -------

/// fuzz `snapshot` and `event`: the unique-key map was written in hash-map order, which
/// depends on the map's history (capacity, removals), so a decoded snapshot re-encoded to
/// different bytes. Snapshots are now written in a canonical order.
#[test]
fn snapshot_bytes_round_trip_whatever_the_unique_map_history() {
    let mut h = Harness::new();
    let specs = (0..200)
        .map(|i| unique_spec("q", &format!("key-{i}")))
        .collect();
    let ids: Vec<JobId> = h.enqueue(T0, specs).iter().map(|e| e.id).collect();
    // Cancelling releases keys: the map shrinks but keeps its capacity and tombstones.
    for &id in ids.iter().step_by(3) {
        let decided = h.state.cancel(T0 + 1, id).expect("cancel");
        h.record(decided);
    }
    let replies = h.enqueue(
        T0 + 2,
        vec![unique_spec("q", "key-0"), unique_spec("r", "key-1")],
    );
    assert!(replies.iter().all(|r| !r.duplicate));

    let first = h.state.encode_snapshot();
    let decoded = State::decode_snapshot(Config::default(), &first).expect("decode");
    assert_eq!(decoded.encode_snapshot(), first);
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(
        replayed.encode_snapshot(),
        first,
        "replay and live state differ in bytes"
    );
}

/// fuzz `snapshot`: a snapshot holding two jobs with the same id decoded; the second
/// replaced the first in the table but both stayed in the indexes, and `promote_due` then
/// spun forever on the orphaned delayed entry. Such a snapshot is now refused.
#[test]
fn snapshot_with_a_job_twice_is_refused() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + 60_000)));
    let bytes = h.state.encode_snapshot();
    let job = postcard::to_allocvec(h.state.job(id).expect("job")).expect("encode job");
    // The jobs come before the queue limits, batches, cron schedules, key limits, keys,
    // job keys, alert rules, silences, alert history, streams, consumer groups, feeds and
    // stream compactions (none: thirteen counts of 0). Add a ready copy of the same id
    // after the job.
    let jobs_end = bytes.len() - 13;
    assert_eq!(
        &bytes[jobs_end..],
        &[0; 13],
        "no limits, batches, crons, keys, alerts, streams, groups, feeds or compactions"
    );
    assert!(bytes[..jobs_end].ends_with(&job) && bytes[jobs_end - job.len() - 1] == 1);
    let mut ready = h.state.job(id).expect("job").clone();
    ready.state = JobState::Ready;
    let mut twice = bytes[..jobs_end - job.len() - 1].to_vec();
    twice.push(2);
    twice.extend_from_slice(&job);
    twice.extend_from_slice(&postcard::to_allocvec(&ready).expect("encode job"));
    twice.extend_from_slice(&[0; 13]);
    let error = State::decode_snapshot(Config::default(), &twice).expect_err("refused");
    assert!(error.contains("appears twice"), "{error}");
}

/// fuzz `snapshot`: a job newer than the snapshot's last id let the next enqueue decide
/// an id that already exists (an event that cannot apply).
#[test]
fn snapshot_with_ids_past_its_last_ids_is_refused() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let bytes = h.state.encode_snapshot();
    // The snapshot starts with last_id (a varint): claim one below the job's id.
    let mut lower = postcard::to_allocvec(&(id - 1)).expect("encode");
    let last_id = postcard::to_allocvec(&id).expect("encode");
    assert!(bytes.starts_with(&last_id));
    lower.extend_from_slice(&bytes[last_id.len()..]);
    let error = State::decode_snapshot(Config::default(), &lower).expect_err("refused");
    assert!(error.contains("newer than the last ids"), "{error}");
    let mut max = postcard::to_allocvec(&JobId::MAX).expect("encode");
    max.extend_from_slice(&bytes[last_id.len()..]);
    assert!(State::decode_snapshot(Config::default(), &max).is_err());
}

/// fuzz `event`: a logged lease id of u64::MAX made the next lease overflow computing
/// `last_lease_id + 1` (a panic in debug builds, lease id 0 in release); a job id of
/// u64::MAX did the same to the next enqueue. Both are ids no state decides: refused.
#[test]
fn events_with_ids_at_u64_max_are_refused() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let leased = Event::Leased {
        at: T0,
        lease_id: LeaseId::MAX,
        worker: None,
        jobs: vec![sluice_core::LeasedItem {
            id,
            expires_at: T0 + 1_000,
        }],
    };
    assert!(h.state.apply(&leased).is_err());
    let (_, lease) = h.lease(T0 + 1, &["q"], 1);
    assert_eq!(lease, 1);

    let mut new_job = match &h.events[0] {
        Event::Enqueued { jobs, .. } => jobs[0].clone(),
        other => panic!("expected Enqueued, got {other:?}"),
    };
    new_job.id = JobId::MAX;
    let enqueued = Event::Enqueued {
        at: T0,
        jobs: vec![new_job],
    };
    assert!(h.state.apply(&enqueued).is_err());
    let next = h.enqueue_one(T0 + 2, spec("q"));
    assert!(next > id);
}

/// fuzz `snapshot`: with the last job id at u64::MAX - 1 (from a snapshot or a logged
/// event), enqueue decided id u64::MAX, an event that cannot apply (a debug assertion);
/// the same for leases. Commands now answer `ids_exhausted` instead.
#[test]
fn enqueue_and_lease_refuse_once_ids_run_out() {
    let mut h = Harness::new();
    let id = h.enqueue_one(T0, spec("q"));
    let mut new_job = match &h.events[0] {
        Event::Enqueued { jobs, .. } => jobs[0].clone(),
        other => panic!("expected Enqueued, got {other:?}"),
    };
    new_job.id = JobId::MAX - 1;
    let enqueued = Event::Enqueued {
        at: T0,
        jobs: vec![new_job],
    };
    h.state
        .apply(&enqueued)
        .expect("the last usable id applies");
    let error = h
        .state
        .enqueue(T0, vec![spec("q")], false)
        .expect_err("no id left");
    assert_eq!(
        (error.kind, error.code),
        (ErrorKind::Limit, "ids_exhausted")
    );

    let leased = Event::Leased {
        at: T0,
        lease_id: LeaseId::MAX - 1,
        worker: None,
        jobs: vec![sluice_core::LeasedItem {
            id,
            expires_at: T0 + 1_000,
        }],
    };
    h.state
        .apply(&leased)
        .expect("the last usable lease id applies");
    let error = h
        .state
        .lease(T0, &["q".to_owned()], 1, None)
        .expect_err("no lease id left");
    assert_eq!(error.code, "ids_exhausted");
}

// ---- flow control ---------------------------------------------------------------------

fn concurrency(n: u32) -> QueueLimits {
    QueueLimits {
        concurrency: Some(n),
        rate: None,
    }
}

fn rate(limit: u32, per_ms: u64) -> QueueLimits {
    QueueLimits {
        concurrency: None,
        rate: Some(Rate { limit, per_ms }),
    }
}

#[test]
fn concurrency_limit_caps_leased_jobs_across_lease_calls() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.enqueue_one(T0, spec("q"));
    }
    h.set_limits(T0, "q", concurrency(3));
    let (first, _) = h.lease(T0, &["q"], 2);
    assert_eq!(first.len(), 2);
    let (second, _) = h.lease(T0, &["q"], 10);
    assert_eq!(second.len(), 1, "only one slot was left");
    let (none, lease_id) = h.lease(T0, &["q"], 10);
    assert!(none.is_empty());
    assert_eq!(lease_id, 0, "a lease that finds no room logs nothing");
    assert_eq!(h.count("q", JobState::Leased), 3);

    // Finishing a job frees its slot: by ack, by fail, by expiry, by cancel.
    let lease_of = |h: &Harness, id: JobId| h.job(id).lease_id;
    let acked = first[0];
    let results = h.ack(T0 + 1, &[(acked, lease_of(&h, acked))]);
    assert!(results[0].is_ok());
    let (next, _) = h.lease(T0 + 2, &["q"], 10);
    assert_eq!(next.len(), 1);
    h.cancel(T0 + 3, first[1]).expect("cancel");
    assert_eq!(h.lease(T0 + 4, &["q"], 10).0.len(), 1);
    // Leases expire after the default 30 s timeout; all three slots come back.
    h.expire(T0 + 60_000);
    assert_eq!(h.lease(T0 + 60_001, &["q"], 10).0.len(), 3);
}

#[test]
fn concurrency_limit_of_one_queue_does_not_hold_back_another() {
    let mut h = Harness::new();
    for queue in ["limited", "free"] {
        for _ in 0..5 {
            h.enqueue_one(T0, spec_with(queue, |s| s.priority = 1));
        }
    }
    h.set_limits(T0, "limited", concurrency(1));
    let (ids, _) = h.lease(T0, &["limited", "free"], 10);
    assert_eq!(ids.len(), 6);
    assert_eq!(h.count("limited", JobState::Leased), 1);
    assert_eq!(h.count("free", JobState::Leased), 5);
}

#[test]
fn rate_limit_allows_a_burst_then_refills_evenly() {
    let mut h = Harness::new();
    for _ in 0..100 {
        h.enqueue_one(T0, spec("q"));
    }
    // 10 leases per second: a burst of 10, then one every 100 ms.
    h.set_limits(T0, "q", rate(10, 1_000));
    assert_eq!(h.state.queue("q").and_then(|q| q.tokens(T0)), Some(10));
    assert_eq!(h.lease(T0, &["q"], 100).0.len(), 10);
    assert_eq!(h.lease(T0 + 99, &["q"], 100).0.len(), 0);
    assert_eq!(h.lease(T0 + 100, &["q"], 100).0.len(), 1);
    assert_eq!(h.lease(T0 + 550, &["q"], 100).0.len(), 4);
    // Idle time refills the bucket only up to its size.
    assert_eq!(
        h.state.queue("q").and_then(|q| q.tokens(T0 + 60_000)),
        Some(10)
    );
    assert_eq!(h.lease(T0 + 60_000, &["q"], 100).0.len(), 10);
    // Over 5 s of steady polling every 10 ms, exactly 10/s are leased.
    let mut leased = 0;
    let mut now = T0 + 60_000;
    while now < T0 + 65_000 {
        now += 10;
        leased += h.lease(now, &["q"], 100).0.len();
    }
    assert_eq!(leased, 50, "5 s at 10 per second");
    assert_eq!(h.count("q", JobState::Ready), 25);
}

#[test]
fn limits_survive_replay_and_snapshots_with_their_bucket() {
    let mut h = Harness::new();
    for _ in 0..20 {
        h.enqueue_one(T0, spec("q"));
    }
    h.set_limits(
        T0,
        "q",
        QueueLimits {
            concurrency: Some(8),
            rate: Some(Rate {
                limit: 5,
                per_ms: 1_000,
            }),
        },
    );
    assert_eq!(h.lease(T0 + 10, &["q"], 3).0.len(), 3);

    let replayed = replay(Config::default(), &h.events);
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    for state in [&replayed, &restored] {
        let queue = state.queue("q").expect("queue");
        assert_eq!(queue.limits, h.state.queue("q").expect("queue").limits);
        assert_eq!(
            queue.tokens(T0 + 10),
            Some(2),
            "the bucket's level came back too"
        );
        assert_eq!(queue.lease_room(T0 + 10), 2);
    }
    assert_eq!(restored.encode_snapshot(), h.state.encode_snapshot());

    // Removing the limits: `QueueLimits::default()`.
    h.set_limits(T0 + 20, "q", QueueLimits::default());
    assert_eq!(h.state.queue("q").and_then(|q| q.tokens(T0 + 20)), None);
    assert_eq!(h.lease(T0 + 20, &["q"], 100).0.len(), 17);
}

#[test]
fn invalid_limits_are_refused_with_the_field() {
    let mut state = State::new(Config::default());
    let cases = [
        (concurrency(0), "concurrency"),
        (rate(0, 1_000), "rate.limit"),
        (rate(1, 0), "rate.per_ms"),
        (rate(1, 86_400_001), "rate.per_ms"),
    ];
    for (limits, field) in cases {
        let none = QueueLimits::default();
        let error = state
            .set_limits(T0, "q", limits, none)
            .expect_err("refused");
        assert_eq!(error.kind, ErrorKind::BadInput, "{error:?}");
        assert!(format!("{error:?}").contains(field), "{field}: {error:?}");
        // The same checks bind per-key limits, named as such.
        let error = state
            .set_limits(T0, "q", none, limits)
            .expect_err("refused");
        assert!(
            format!("{error:?}").contains(&format!("key_{field}")),
            "key_{field}: {error:?}"
        );
    }
    let none = QueueLimits::default();
    assert!(state
        .set_limits(T0, "bad name", concurrency(1), none)
        .is_err());
}

#[test]
fn snapshots_from_before_queue_limits_still_decode() {
    let mut h = Harness::new();
    h.enqueue_one(T0, spec("q"));
    let bytes = h.state.encode_snapshot();
    // The oldest format ended after the jobs: without the (empty) limits, batches and
    // crons; the next one before the (empty) key limits, keys and job keys; the next
    // before the (empty) alert rules, silences and alert history; the next before the
    // (empty) streams; the next before the (empty) consumer groups; the next before the
    // (empty) feeds; the next before the (empty) stream compactions.
    assert!(bytes.ends_with(&[0; 13]));
    for cut in [1, 2, 3, 4, 7, 10, 13] {
        let older = &bytes[..bytes.len() - cut];
        let decoded = State::decode_snapshot(Config::default(), older).expect("older snapshot");
        assert_eq!(decoded.encode_snapshot(), bytes);
    }
    // Cut inside a section, or with bytes after the last, it is damage, not a version.
    assert!(State::decode_snapshot(Config::default(), &bytes[..bytes.len() - 5]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    let error = State::decode_snapshot(Config::default(), &longer).expect_err("refused");
    assert!(error.contains("after its last section"), "{error}");
}

// ---- batches --------------------------------------------------------------------------

impl Harness {
    fn enqueue_batch(
        &mut self,
        now: Millis,
        specs: Vec<EnqueueSpec>,
        callback: EnqueueSpec,
    ) -> (JobId, Vec<JobId>) {
        let decided = self
            .state
            .enqueue_batch_with_callback(now, specs, callback)
            .expect("valid batch");
        self.record(decided)
    }

    /// The jobs of `queue` in `state`, in id order.
    fn ids_in(&self, queue: &str, state: JobState) -> Vec<JobId> {
        let q = self.state.queue(queue).expect("queue");
        self.state
            .jobs_page(q, state, None, usize::MAX)
            .iter()
            .map(|j| j.id)
            .collect()
    }
}

#[test]
fn batch_callback_is_enqueued_once_when_every_member_has_finished_with_the_counts() {
    let mut h = Harness::new();
    let specs = (0..4)
        .map(|_| spec_with("work", |s| s.max_attempts = 1))
        .collect();
    let callback = EnqueueSpec::new("done", "batch.finished", r#"{"report":7}"#);
    let (batch, members) = h.enqueue_batch(T0, specs, callback);
    assert_eq!(members.len(), 4);
    assert!(
        batch > members[3],
        "the batch id is reserved after its members"
    );
    assert!(
        h.state.job(batch).is_none(),
        "no callback before the members finish"
    );
    let b = h.state.batch(batch).expect("batch");
    assert_eq!((b.total, b.pending()), (4, 4));

    // Two succeed, one dies, one is cancelled; the callback comes with the last.
    let (leased, lease_id) = h.lease(T0 + 1, &["work"], 3);
    assert_eq!(leased.len(), 3);
    h.ack(T0 + 2, &[(leased[0], lease_id), (leased[1], lease_id)]);
    assert!(h.state.job(batch).is_none());
    h.fail_one(T0 + 3, leased[2], lease_id, None);
    assert_eq!(h.state_of(leased[2]), JobState::Dead);
    assert!(h.state.job(batch).is_none(), "one member is still pending");
    let last = members
        .iter()
        .copied()
        .find(|id| !leased.contains(id))
        .expect("the fourth");
    h.cancel(T0 + 4, last).expect("cancel");

    let callback = h.job(batch);
    assert_eq!(callback.state, JobState::Ready);
    assert_eq!(h.state.queue_name(callback.queue), "done");
    let payload: serde_json::Value = serde_json::from_str(&callback.payload).expect("JSON");
    assert_eq!(payload["payload"], serde_json::json!({ "report": 7 }));
    assert_eq!(payload["batch"]["id"], sluice_proto::ids::encode(batch));
    assert_eq!(
        (
            &payload["batch"]["total"],
            &payload["batch"]["succeeded"],
            &payload["batch"]["dead"],
            &payload["batch"]["cancelled"]
        ),
        (&4.into(), &2.into(), &1.into(), &1.into())
    );
    let b = h.state.batch(batch).expect("batch");
    assert_eq!(b.finished_at, Some(T0 + 4));
    assert_eq!(h.state.take_fired().len(), 1);

    // Exactly once: retrying the dead member and finishing it again changes nothing.
    h.retry(T0 + 5, leased[2]).expect("retry");
    let (again, lease_id) = h.lease(T0 + 6, &["work"], 1);
    assert_eq!(again, vec![leased[2]]);
    h.ack(T0 + 7, &[(again[0], lease_id)]);
    assert_eq!(h.ids_in("done", JobState::Ready), vec![batch]);
    assert_eq!(h.state.batch(batch).expect("batch").succeeded, 2);

    // Replay and snapshots give the same state.
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.encode_snapshot(), h.state.encode_snapshot());
}

#[test]
fn batch_state_survives_a_snapshot_taken_while_members_are_pending() {
    let mut h = Harness::new();
    let (batch, members) = h.enqueue_batch(
        T0,
        vec![spec("work"), spec("work")],
        EnqueueSpec::new("done", "cb", "null"),
    );
    let (first, lease_id) = h.lease_one(T0 + 1, "work");
    h.ack(T0 + 2, &[(first, lease_id)]);
    let mut restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.batch(batch).expect("batch").pending(), 1);
    // The restored state fires the callback when the other member finishes.
    let other = if members[0] == first {
        members[1]
    } else {
        members[0]
    };
    let (event, leased) = restored
        .lease(T0 + 3, &["work".to_owned()], 1, None)
        .expect("lease");
    assert_eq!(leased, vec![other]);
    let lease_id = match event {
        Some(Event::Leased { lease_id, .. }) => lease_id,
        other => panic!("{other:?}"),
    };
    let (event, results) = restored.ack(T0 + 4, &[(other, lease_id)]);
    assert!(results[0].is_ok() && event.is_some());
    assert_eq!(restored.job(batch).map(|j| j.state), Some(JobState::Ready));
}

#[test]
fn purging_pending_members_counts_them_cancelled_and_finishes_the_batch() {
    let mut h = Harness::new();
    let (batch, _) = h.enqueue_batch(
        T0,
        vec![spec("work"), spec("work"), spec("work")],
        EnqueueSpec::new("done", "cb", "null"),
    );
    assert_eq!(h.purge("work").expect("purge"), 3);
    let b = h.state.batch(batch).expect("batch");
    assert_eq!((b.cancelled, b.pending()), (3, 0));
    assert_eq!(h.state_of(batch), JobState::Ready);
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
}

#[test]
fn invalid_batches_are_refused_with_paths() {
    let mut state = State::new(Config::default());
    let error = state
        .enqueue_batch_with_callback(T0, vec![], EnqueueSpec::new("done", "cb", "null"))
        .expect_err("empty");
    assert!(error.details.iter().any(|d| d.path == "jobs"), "{error:?}");
    let error = state
        .enqueue_batch_with_callback(
            T0,
            vec![spec("work"), unique_spec("work", "k")],
            EnqueueSpec::new("bad queue", "cb", "null"),
        )
        .expect_err("invalid");
    let paths: Vec<&str> = error.details.iter().map(|d| d.path.as_str()).collect();
    assert!(paths.contains(&"jobs[1].unique_key"), "{paths:?}");
    assert!(paths.contains(&"callback.queue"), "{paths:?}");
    assert_eq!(state.job_len(), 0, "nothing enqueued");
}

// ---- cron -----------------------------------------------------------------------------

/// 2023-11-14T22:13:20Z: T0 in calendar terms. Minutes start at T0 + 40 s.
const MINUTE: Millis = 60_000;

impl Harness {
    fn set_cron(
        &mut self,
        now: Millis,
        name: &str,
        schedule: &str,
        tz: &str,
        missed: Missed,
    ) -> Option<Millis> {
        let decided = self
            .state
            .set_cron(
                now,
                name,
                schedule,
                tz,
                EnqueueSpec::new("cron", name, "null"),
                missed,
            )
            .expect("valid cron");
        self.record(decided)
    }

    fn fire(&mut self, now: Millis) -> usize {
        let decided = self.state.fire_crons(now);
        self.record(decided)
    }
}

/// The first whole minute after `t`.
fn next_minute(t: Millis) -> Millis {
    (t / MINUTE + 1) * MINUTE
}

#[test]
fn cron_fires_once_per_occurrence_however_often_the_tick_runs() {
    let mut h = Harness::new();
    let first = h.set_cron(T0, "every-minute", "* * * * *", "UTC", Missed::Skip);
    assert_eq!(first, Some(next_minute(T0)));
    // Ticks every 50 ms for 3 minutes: 3 occurrences, 3 jobs.
    let mut now = T0;
    let mut jobs = 0;
    while now < next_minute(T0) + 2 * MINUTE + 1 {
        now += 50;
        jobs += h.fire(now);
    }
    assert_eq!(jobs, 3);
    assert_eq!(h.count("cron", JobState::Ready), 3);
    let cron = h.state.cron("every-minute").expect("cron");
    assert_eq!(cron.next_at, Some(next_minute(T0) + 3 * MINUTE));
    // Replay gives the same schedule state and jobs.
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.encode_snapshot(), h.state.encode_snapshot());
}

#[test]
fn missed_occurrences_follow_the_policy_after_downtime() {
    // The server is down for 10 minutes after setting the schedules.
    let restart = T0 + 10 * MINUTE + 5_000;
    let mut h = Harness::new();
    h.set_cron(T0, "skip", "* * * * *", "UTC", Missed::Skip);
    h.set_cron(T0, "once", "* * * * *", "UTC", Missed::RunOnce);
    h.set_cron(T0, "all", "* * * * *", "UTC", Missed::RunAll);
    let mut state = replay(Config::default(), &h.events);
    let (event, jobs) = state.fire_crons(restart);
    let Some(Event::CronFired { fired, .. }) = event else {
        panic!("nothing fired");
    };
    let by_name: std::collections::BTreeMap<&str, usize> = fired
        .iter()
        .map(|f| (f.name.as_str(), f.jobs.len()))
        .collect();
    // 10 occurrences came due; the newest, 5 s ago, is on time and runs in every policy.
    assert_eq!(by_name["skip"], 1);
    assert_eq!(by_name["once"], 1, "on time already runs: nothing extra");
    assert_eq!(by_name["all"], 10);
    assert_eq!(jobs, 12);
    // Every schedule now waits for the next minute.
    for cron in state.crons() {
        assert_eq!(cron.next_at, Some(next_minute(restart)));
    }
    // Down across exactly missed occurrences only (no on-time one): run_once runs one.
    let mut h = Harness::new();
    h.set_cron(T0, "once", "0 * * * *", "UTC", Missed::RunOnce);
    h.set_cron(T0, "skip", "0 * * * *", "UTC", Missed::Skip);
    let mut state = replay(Config::default(), &h.events);
    let (_, jobs) = state.fire_crons(T0 + 5 * 60 * MINUTE);
    assert_eq!(
        jobs, 1,
        "run_once: one job for the 5 missed hours; skip: none"
    );
}

#[test]
fn cron_schedules_in_a_time_zone_fire_at_local_times() {
    let mut h = Harness::new();
    // 09:00 in New York on 2023-11-15 (EST, UTC-5) is 14:00 UTC.
    let next = h.set_cron(T0, "ny", "0 9 * * *", "America/New_York", Missed::Skip);
    assert_eq!(next, Some(1_700_056_800_000));
    // Six fields: seconds.
    let next = h.set_cron(T0, "fast", "*/10 * * * * *", "UTC", Missed::Skip);
    assert_eq!(next, Some(T0 + 10_000));
}

#[test]
fn invalid_cron_schedules_are_refused_with_paths_and_removal_works() {
    let mut state = State::new(Config::default());
    let error = state
        .set_cron(
            T0,
            "x",
            "61 * * * *",
            "Mars/Base",
            EnqueueSpec::new("bad queue", "k", "null"),
            Missed::Skip,
        )
        .expect_err("invalid");
    let paths: Vec<&str> = error.details.iter().map(|d| d.path.as_str()).collect();
    assert!(paths.contains(&"schedule"), "{paths:?}");
    assert!(paths.contains(&"job.queue"), "{paths:?}");
    assert!(
        !paths.contains(&"timezone"),
        "the schedule error comes first: {paths:?}"
    );
    let error = state
        .set_cron(
            T0,
            "x",
            "* * * * *",
            "Mars/Base",
            EnqueueSpec::new("q", "k", "null"),
            Missed::Skip,
        )
        .expect_err("invalid");
    assert_eq!(error.details[0].path, "timezone");
    let mut h = Harness::new();
    h.set_cron(T0, "gone", "* * * * *", "UTC", Missed::Skip);
    let decided = h.state.remove_cron("gone").expect("remove");
    h.record(decided);
    assert!(h.state.cron("gone").is_none());
    assert_eq!(h.fire(T0 + 5 * MINUTE), 0);
    assert!(h.state.remove_cron("gone").is_err());
}

// ---- queue order ----------------------------------------------------------------------

#[test]
fn strict_order_drains_queues_in_the_order_given() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.enqueue_one(T0, spec_with("low", |s| s.priority = 100));
        h.enqueue_one(T0, spec("high"));
    }
    let queues = vec!["high".to_owned(), "low".to_owned()];
    let (event, ids) = h
        .state
        .lease_ordered(T0, &queues, &sluice_core::QueueOrder::Strict, 4, None)
        .expect("lease");
    h.record((event, ()));
    let from: Vec<String> = ids
        .iter()
        .map(|id| h.state.queue_name(h.job(*id).queue).to_owned())
        .collect();
    assert_eq!(
        from,
        ["high", "high", "high", "low"],
        "priority 100 in low does not jump the order"
    );
    // The default (priority) order would have taken low's jobs first.
    let mut p = Harness::new();
    p.enqueue_one(T0, spec("high"));
    let low = p.enqueue_one(T0, spec_with("low", |s| s.priority = 100));
    assert_eq!(p.lease(T0, &["high", "low"], 1).0, vec![low]);
}

#[test]
fn weighted_order_takes_queues_in_proportion_to_their_weights() {
    let mut state = State::new(Config::default());
    let specs: Vec<EnqueueSpec> = (0..4_000).flat_map(|_| [spec("a"), spec("b")]).collect();
    let (_, _) = state.enqueue(T0, specs, true).expect("enqueue");
    let queues = vec!["a".to_owned(), "b".to_owned()];
    let mut from_a = 0;
    for seed in 0..3_000u64 {
        let order = sluice_core::QueueOrder::Weighted {
            weights: vec![3, 1],
            seed,
        };
        let (_, ids) = state
            .lease_ordered(T0, &queues, &order, 1, None)
            .expect("lease");
        if state.queue_name(state.job(ids[0]).expect("job").queue) == "a" {
            from_a += 1;
        }
    }
    // 3:1 -> 75 % from a; 3,000 draws put it within a couple of points.
    let share = f64::from(from_a) / 3_000.0;
    assert!((0.72..=0.78).contains(&share), "share from a: {share}");
}

// ---- moving jobs ----------------------------------------------------------------------

#[test]
fn moving_jobs_keeps_their_state_history_and_unique_key() {
    let mut h = Harness::new();
    let unique = h.enqueue_one(T0, unique_spec("old", "k1"));
    let plain = h.enqueue_one(T0, spec("old"));
    let dead = h.enqueue_one(T0, spec_with("old", |s| s.max_attempts = 1));
    let leased_one = h.enqueue_one(T0, spec("old"));
    // `dead` dies; `leased_one` stays leased.
    let (ids, lease_id) = h.lease(T0 + 1, &["old"], 4);
    assert_eq!(ids.len(), 4);
    h.fail_one(T0 + 2, dead, lease_id, None);
    for id in [unique, plain] {
        h.fail_one(T0 + 2, id, lease_id, Some(T0 + 2));
    }
    let _ = leased_one;
    let decided = h
        .state
        .move_jobs("old", "new", JobState::Ready, 10)
        .expect("move");
    assert_eq!(h.record(decided), 2);
    assert_eq!(h.count("new", JobState::Ready), 2);
    assert_eq!(h.count("old", JobState::Ready), 0);
    assert_eq!(h.count("old", JobState::Leased), 1, "leased jobs stay");
    assert_eq!(h.job(unique).attempts, 1, "attempts and history move along");
    // The unique key is now held in `new`: a duplicate there is refused, `old` is free.
    let again = h.enqueue(T0 + 3, vec![unique_spec("new", "k1")]);
    assert_eq!(again[0].id, unique);
    assert!(again[0].duplicate);
    let fresh = h.enqueue(T0 + 3, vec![unique_spec("old", "k1")]);
    assert!(!fresh[0].duplicate);
    // Dead jobs move as dead; a retry then runs them in the new queue.
    let decided = h
        .state
        .move_jobs("old", "new", JobState::Dead, 10)
        .expect("move");
    assert_eq!(h.record(decided), 1);
    h.retry(T0 + 4, dead).expect("retry");
    assert_eq!(h.lease(T0 + 5, &["new"], 10).0.len(), 3);
    // Replay agrees.
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
    // Leased and finished jobs cannot be moved; nor into the same queue.
    assert!(h
        .state
        .move_jobs("old", "new", JobState::Leased, 10)
        .is_err());
    assert!(h
        .state
        .move_jobs("old", "old", JobState::Ready, 10)
        .is_err());
    assert!(h
        .state
        .move_jobs("nope", "new", JobState::Ready, 10)
        .is_err());
}

/// fuzz `event`: a logged batch whose member had the batch's own id, or a later job taking
/// an unfinished batch's reserved id, left a state whose snapshot refused to decode (and
/// whose callback could not be inserted). Such events are now refused.
#[test]
fn events_that_would_reuse_a_batch_id_are_refused() {
    let new_job = |id: JobId| sluice_core::NewJob {
        id,
        queue: "q".into(),
        kind: "k".into(),
        payload: "null".into(),
        priority: 0,
        run_at: T0,
        max_attempts: 1,
        backoff: Backoff::Fixed { delay_ms: 0 },
        timeout_ms: 30_000,
        unique: None,
        tags: Vec::new(),
    };
    let mut state = State::new(Config::default());
    let own_id = Event::BatchEnqueued {
        at: T0,
        jobs: vec![new_job(5)],
        callback: new_job(5),
    };
    assert!(state.apply(&own_id).is_err());
    let mut state = State::new(Config::default());
    let batch = Event::BatchEnqueued {
        at: T0,
        jobs: vec![new_job(5)],
        callback: new_job(6),
    };
    state.apply(&batch).expect("a well-formed batch applies");
    let taken = Event::Enqueued {
        at: T0,
        jobs: vec![new_job(6)],
    };
    assert!(state.apply(&taken).is_err(), "id 6 is the batch's");
    State::decode_snapshot(Config::default(), &state.encode_snapshot()).expect("decodes");
}

/// The log's compatibility rule (see `event.rs`): a record is decoded by the variant it was
/// written with. Every variant of a busy log still decodes to itself, and a record cut
/// short by even one byte is an error, never a different event.
#[test]
fn every_logged_event_decodes_to_itself_and_a_truncated_one_never_decodes() {
    let mut h = Harness::with_config(BUSY_CONFIG);
    busy_scenario(&mut h);
    h.set_limits(T0, "q", concurrency(2));
    h.enqueue_one(T0, keyed("q", "acme"));
    h.enqueue_batch(T0, vec![spec("q")], EnqueueSpec::new("cb", "k", "null"));
    h.set_cron(T0, "c", "* * * * *", "UTC", Missed::RunAll);
    h.fire(T0 + 5 * MINUTE);
    let mut variants = BTreeSet::new();
    for event in &h.events {
        variants.insert(variant(event));
        let bytes = event.encode();
        assert_eq!(Event::decode(&bytes).as_ref(), Ok(event));
        assert!(
            Event::decode(&bytes[..bytes.len() - 1]).is_err(),
            "{} decoded from a cut record",
            variant(event)
        );
    }
    assert!(variants.len() >= 13, "{variants:?}");
}

// ---- per-key limits -------------------------------------------------------------------

fn keyed(queue: &str, key: &str) -> EnqueueSpec {
    spec_with(queue, |s| s.limit_key = Some(key.to_owned()))
}

fn key_status(
    state: &State,
    queue: &str,
    key: &str,
    now: Millis,
) -> Option<sluice_core::KeyStatus> {
    state.queue(queue).and_then(|q| q.key(key, now))
}

#[test]
fn key_concurrency_caps_each_key_and_leaves_other_keys_and_unkeyed_jobs_free() {
    let mut h = Harness::new();
    let a: Vec<JobId> = (0..3).map(|_| h.enqueue_one(T0, keyed("q", "a"))).collect();
    let b: Vec<JobId> = (0..3).map(|_| h.enqueue_one(T0, keyed("q", "b"))).collect();
    let free: Vec<JobId> = (0..2).map(|_| h.enqueue_one(T0, spec("q"))).collect();
    h.set_all_limits(T0, "q", QueueLimits::default(), concurrency(1));

    let (ids, lease) = h.lease(T0, &["q"], 10);
    assert_eq!(
        ids,
        vec![a[0], b[0], free[0], free[1]],
        "oldest of each key, and the rest"
    );
    assert_eq!(h.lease(T0, &["q"], 10).0, Vec::<JobId>::new());
    let status = key_status(&h.state, "q", "a", T0).expect("key a");
    assert_eq!((status.jobs, status.ready, status.leased), (3, 2, 1));

    // Finishing a job of a frees a slot of a only.
    h.ack(T0 + 1, &[(a[0], lease)]);
    assert_eq!(h.lease(T0 + 2, &["q"], 10).0, vec![a[1]]);
    assert_eq!(h.state.limit_key(a[1]), Some("a"));
    assert_eq!(h.state.limit_key(free[0]), None);
}

#[test]
fn a_key_at_its_limit_does_not_hold_back_jobs_queued_behind_it() {
    let mut h = Harness::new();
    let hot: Vec<JobId> = (0..2_000)
        .map(|_| h.enqueue_one(T0, keyed("q", "hot")))
        .collect();
    let cold = h.enqueue_one(T0, keyed("q", "cold"));
    let plain = h.enqueue_one(T0, spec("q"));
    h.set_all_limits(T0, "q", QueueLimits::default(), concurrency(1));
    assert_eq!(h.lease(T0, &["q"], 1).0, vec![hot[0]]);
    // 1,999 ready jobs of a blocked key stand before these two.
    assert_eq!(h.lease(T0, &["q"], 10).0, vec![cold, plain]);
}

#[test]
fn one_lease_takes_several_jobs_of_a_key_up_to_its_limit_in_priority_order() {
    let mut h = Harness::new();
    let low = h.enqueue_one(T0, keyed("q", "a"));
    let high: Vec<JobId> = (0..4)
        .map(|_| {
            h.enqueue_one(
                T0,
                spec_with("q", |s| {
                    s.limit_key = Some("a".into());
                    s.priority = 5;
                }),
            )
        })
        .collect();
    h.set_all_limits(T0, "q", QueueLimits::default(), concurrency(3));
    assert_eq!(h.lease(T0, &["q"], 10).0, high[..3].to_vec());
    // Without per-key limits every job of the key goes, still in priority order.
    h.set_all_limits(T0, "q", QueueLimits::default(), QueueLimits::default());
    assert_eq!(h.lease(T0, &["q"], 10).0, vec![high[3], low]);
}

#[test]
fn key_rate_limit_gives_each_key_its_own_bucket() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.enqueue_one(T0, keyed("q", "a"));
        h.enqueue_one(T0, keyed("q", "b"));
    }
    // 2 per second per key.
    h.set_all_limits(T0, "q", QueueLimits::default(), rate(2, 1_000));
    assert_eq!(
        h.lease(T0, &["q"], 100).0.len(),
        4,
        "a burst of 2 for each key"
    );
    assert_eq!(h.lease(T0 + 499, &["q"], 100).0.len(), 0);
    assert_eq!(h.lease(T0 + 500, &["q"], 100).0.len(), 2, "one more each");
    assert_eq!(
        key_status(&h.state, "q", "a", T0 + 500).and_then(|k| k.tokens),
        Some(0)
    );
    // The queue's own limits bind on top: a queue concurrency of 7 stops at 7 leased.
    h.set_all_limits(T0 + 600, "q", concurrency(7), rate(2, 1_000));
    assert_eq!(
        h.lease(T0 + 600, &["q"], 100).0.len(),
        1,
        "6 leased, 1 slot left"
    );
}

#[test]
fn key_state_survives_replay_and_snapshots() {
    let mut h = Harness::new();
    for _ in 0..5 {
        h.enqueue_one(T0, keyed("q", "a"));
    }
    h.enqueue_one(T0, keyed("q", "b"));
    h.set_all_limits(
        T0,
        "q",
        QueueLimits::default(),
        QueueLimits {
            concurrency: Some(2),
            rate: Some(Rate {
                limit: 3,
                per_ms: 1_000,
            }),
        },
    );
    let (ids, _) = h.lease(T0 + 10, &["q"], 10);
    assert_eq!(ids.len(), 3, "2 of a, 1 of b");

    let replayed = replay(Config::default(), &h.events);
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    for state in [&replayed, &restored] {
        for key in ["a", "b"] {
            assert_eq!(
                key_status(state, "q", key, T0 + 10),
                key_status(&h.state, "q", key, T0 + 10),
                "{key}"
            );
        }
        assert_eq!(
            state.queue("q").map(|q| q.key_limits),
            h.state.queue("q").map(|q| q.key_limits)
        );
        for &id in &ids {
            assert_eq!(state.limit_key(id), h.state.limit_key(id));
        }
        assert_eq!(state.encode_snapshot(), h.state.encode_snapshot());
    }
    let mut restored = restored;
    let queues = vec!["q".to_owned()];
    let (_, again) = restored.lease(T0 + 10, &queues, 10, None).expect("lease");
    assert!(again.is_empty(), "a is at 2 leased and b has no more jobs");
}

#[test]
fn a_key_no_job_carries_is_kept_until_its_bucket_refills() {
    let mut h = Harness::with_config(Config {
        retention_ms: 1,
        retention_len_max: 100,
    });
    let id = h.enqueue_one(T0, keyed("q", "a"));
    h.set_all_limits(T0, "q", QueueLimits::default(), rate(1, 60_000));
    let (_, lease) = h.lease_one(T0, "q");
    h.ack(T0 + 1, &[(id, lease)]);
    assert_eq!(h.retain(T0 + 10), 1, "the finished job is forgotten");
    let queue = |h: &Harness| h.state.queue("q").expect("queue").key_len();
    assert_eq!(queue(&h), 1, "its key's bucket is still empty");
    // A new job of the key must wait for the token the old one took.
    h.enqueue_one(T0 + 20, keyed("q", "a"));
    assert_eq!(h.lease(T0 + 20, &["q"], 1).0.len(), 0);
    let (id, lease) = h.lease_one(T0 + 60_000, "q");
    h.ack(T0 + 60_001, &[(id, lease)]);
    assert_eq!(h.retain(T0 + 60_010), 1);
    // Once full again it goes, at the next event at or after that time.
    h.enqueue_one(T0 + 120_000, spec("other"));
    assert_eq!(queue(&h), 0);
    let replayed = replay(h.state.config(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
}

#[test]
fn moved_jobs_take_their_limit_key_to_the_new_queue() {
    let mut h = Harness::new();
    let ids: Vec<JobId> = (0..3)
        .map(|_| h.enqueue_one(T0, keyed("from", "a")))
        .collect();
    h.set_all_limits(T0, "to", QueueLimits::default(), concurrency(1));
    let decided = h
        .state
        .move_jobs("from", "to", JobState::Ready, 10)
        .expect("move");
    assert_eq!(h.record(decided), 3);
    assert_eq!(key_status(&h.state, "from", "a", T0), None);
    assert_eq!(key_status(&h.state, "to", "a", T0).map(|k| k.jobs), Some(3));
    assert_eq!(h.lease(T0, &["to"], 10).0, vec![ids[0]]);
    let replayed = replay(Config::default(), &h.events);
    assert_eq!(replayed.encode_snapshot(), h.state.encode_snapshot());
}

#[test]
fn bad_limit_keys_are_refused_and_batches_and_cron_take_none() {
    let mut state = State::new(Config::default());
    for key in ["", ".", "..", &"k".repeat(257)] {
        let error = state
            .enqueue(T0, vec![keyed("q", key)], false)
            .expect_err("refused");
        assert!(
            format!("{error:?}").contains("limit_key"),
            "{key:?}: {error:?}"
        );
    }
    assert!(state
        .enqueue(T0, vec![keyed("q", &"k".repeat(256))], false)
        .is_ok());
    let error = state
        .enqueue_batch_with_callback(T0, vec![keyed("q", "a")], spec("cb"))
        .expect_err("refused");
    assert!(
        format!("{error:?}").contains("jobs[0].limit_key"),
        "{error:?}"
    );
    let error = state
        .set_cron(T0, "c", "* * * * *", "UTC", keyed("q", "a"), Missed::Skip)
        .expect_err("refused");
    assert!(format!("{error:?}").contains("job.limit_key"), "{error:?}");
}

// ---- alerts ---------------------------------------------------------------------------

fn rule(name: &str) -> sluice_core::alerts::AlertRule {
    use sluice_core::alerts::{AlertMetric, AlertRule, Comparison, Notifier, Severity};
    AlertRule {
        name: name.into(),
        queue: "q".into(),
        metric: AlertMetric::Depth,
        comparison: Comparison::Above,
        threshold: 100.0,
        for_ms: 60_000,
        severity: Severity::Warning,
        notifiers: vec![Notifier::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: Some("s3cret".into()),
        }],
    }
}

#[test]
fn alert_rules_silences_and_transitions_are_logged_and_survive_snapshots() {
    use sluice_core::alerts::Silence;
    let mut h = Harness::new();
    let decided = h
        .state
        .set_alert_rule(T0, rule("deep"))
        .expect("valid rule");
    h.record(decided);
    let decided = h.state.alert_changed(T0 + 1, "deep", true, 150.0);
    let fired = h.record(decided).expect("a transition");
    assert!(fired.firing && !fired.silenced);
    // No change, no event: firing again is deduplicated.
    let (event, again) = h.state.alert_changed(T0 + 2, "deep", true, 160.0);
    assert!(event.is_none() && again.is_none());
    let silence = Silence {
        id: "maint".into(),
        rule: Some("deep".into()),
        queue: None,
        created_at: T0,
        until: T0 + 3_600_000,
        comment: "migrating".into(),
    };
    let decided = h.state.set_silence(T0 + 3, silence).expect("valid silence");
    h.record(decided);
    let decided = h.state.alert_changed(T0 + 4, "deep", false, 50.0);
    let resolved = h.record(decided).expect("a transition");
    assert!(!resolved.firing && resolved.silenced, "{resolved:?}");
    assert_eq!(h.state.alerts().history.len(), 2);

    let replayed = replay(Config::default(), &h.events);
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    for state in [&replayed, &restored] {
        assert_eq!(state.alerts(), h.state.alerts());
    }
    // Replacing a rule with another threshold starts it afresh.
    let decided = h.state.alert_changed(T0 + 5, "deep", true, 150.0);
    h.record(decided);
    let mut higher = rule("deep");
    higher.threshold = 500.0;
    let decided = h.state.set_alert_rule(T0 + 6, higher).expect("valid rule");
    h.record(decided);
    assert_eq!(h.state.alerts().rules["deep"].firing_since, None);
    let decided = h.state.remove_alert_rule("deep").expect("exists");
    h.record(decided);
    assert!(h.state.remove_alert_rule("deep").is_err());
}

#[test]
fn bad_alert_rules_and_silences_are_refused_with_the_field() {
    use sluice_core::alerts::{Notifier, Silence};
    let mut state = State::new(Config::default());
    let mut bad = rule("r");
    bad.threshold = f64::NAN;
    bad.notifiers = vec![Notifier::Slack {
        url: "ftp://example".into(),
    }];
    let error = state.set_alert_rule(T0, bad).expect_err("refused");
    let text = format!("{error:?}");
    assert!(
        text.contains("threshold") && text.contains("notifiers[0].url"),
        "{text}"
    );
    let past = Silence {
        id: "s".into(),
        rule: None,
        queue: None,
        created_at: T0,
        until: T0 - 1,
        comment: String::new(),
    };
    let error = state.set_silence(T0, past).expect_err("refused");
    assert!(format!("{error:?}").contains("until"));
}

#[test]
fn oldest_ready_age_counts_from_when_a_job_came_due() {
    let mut h = Harness::new();
    let day = 86_400_000;
    h.enqueue_one(T0, spec_with("q", |s| s.run_at = Some(T0 + day)));
    h.state.promote_due(T0 + day + 5);
    let queue = h.state.queue("q").expect("queue");
    assert_eq!(
        h.state.oldest_ready_age_ms(queue, T0 + day + 5),
        5,
        "not a day"
    );
    // A job enqueued at once and never leased waits from its enqueue.
    h.enqueue_one(T0 + day, spec("q"));
    let queue = h.state.queue("q").expect("queue");
    assert_eq!(h.state.oldest_ready_age_ms(queue, T0 + day + 5), 5);
}

// ---- streams --------------------------------------------------------------------------

#[test]
fn streams_are_created_grown_and_kept_in_snapshots() {
    use sluice_core::streams::StreamSpec;
    let spec = |partitions| StreamSpec {
        name: "orders".into(),
        partitions,
        retention_ms: Some(86_400_000),
        retention_bytes: None,
        created_at: 0,
    };
    let mut h = Harness::new();
    let decided = h.state.set_stream(T0, spec(4)).expect("valid");
    assert!(h.record(decided), "new");
    let (event, again) = h.state.set_stream(T0 + 1, spec(4)).expect("same");
    assert!(
        event.is_none() && !again,
        "setting the same spec logs nothing"
    );
    let error = h.state.set_stream(T0 + 2, spec(2)).expect_err("shrinks");
    assert!(format!("{error:?}").contains("only grow"), "{error:?}");
    let decided = h.state.set_stream(T0 + 3, spec(8)).expect("grows");
    assert!(!h.record(decided));
    let stored = &h.state.streams().streams["orders"];
    assert_eq!((stored.partitions, stored.created_at), (8, T0));
    assert!(h.state.set_stream(T0, spec(0)).is_err());
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.streams(), h.state.streams());
    assert_eq!(
        replay(Config::default(), &h.events).streams(),
        h.state.streams()
    );

    // Compaction: on, the same again (nothing logged), off; kept by snapshots and replay.
    use sluice_core::streams::Compaction;
    let on = Compaction {
        tombstone_retention_ms: 60_000,
    };
    let decided = h
        .state
        .set_stream_compaction("orders", Some(on))
        .expect("on");
    assert!(decided.0.is_some());
    h.record(decided);
    let (event, ()) = h
        .state
        .set_stream_compaction("orders", Some(on))
        .expect("same");
    assert!(event.is_none(), "the same compaction logs nothing");
    assert!(h.state.set_stream_compaction("nope", Some(on)).is_err());
    let too_long = Compaction {
        tombstone_retention_ms: u64::MAX,
    };
    assert!(h
        .state
        .set_stream_compaction("orders", Some(too_long))
        .is_err());
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.compaction("orders"), Some(on));
    assert_eq!(
        replay(Config::default(), &h.events).compaction("orders"),
        Some(on)
    );
    let decided = h.state.set_stream_compaction("orders", None).expect("off");
    h.record(decided);
    assert_eq!(
        replay(Config::default(), &h.events).compaction("orders"),
        None
    );

    // A consumer group: each rebalance is a new generation; a commit from an older one
    // is refused, also after a restart.
    let decided = h.state.next_generation("orders", "billing").expect("group");
    assert_eq!(h.record(decided), 1);
    let decided = h
        .state
        .commit_offsets("orders", "billing", 1, vec![(0, 10), (3, 7)])
        .expect("commit");
    h.record(decided);
    let decided = h.state.next_generation("orders", "billing").expect("group");
    assert_eq!(h.record(decided), 2);
    let error = h
        .state
        .commit_offsets("orders", "billing", 1, vec![(0, 11)])
        .expect_err("stale");
    assert_eq!(error.code, "stale_generation");
    assert!(h
        .state
        .commit_offsets("orders", "billing", 2, vec![(8, 1)])
        .is_err());
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    let group = restored.group("orders", "billing").expect("group");
    assert_eq!(group.generation, 2);
    assert_eq!(group.offsets.get(&0), Some(&10));
    assert_eq!(
        replay(Config::default(), &h.events).groups(),
        h.state.groups()
    );
}

/// fuzz `event`: an alert rule with a NaN threshold (and no name) applied from the log.
/// `apply` now refuses rules and silences the state machine would not have decided.
#[test]
fn logged_alert_rules_that_were_never_valid_are_refused() {
    let mut bad = rule("r");
    bad.name = String::new();
    bad.threshold = f64::NAN;
    let mut state = State::new(Config::default());
    assert!(state
        .apply(&Event::AlertRuleSet { at: T0, rule: bad })
        .is_err());
    assert!(state.alerts().rules.is_empty());
}

#[test]
fn a_feed_turns_records_into_jobs_and_moves_on_in_one_event() {
    use sluice_core::streams::StreamSpec;
    let mut h = Harness::new();
    let spec = StreamSpec {
        name: "orders".into(),
        partitions: 2,
        retention_ms: None,
        retention_bytes: None,
        created_at: 0,
    };
    let decided = h.state.set_stream(T0, spec).expect("stream");
    h.record(decided);
    let decided = h
        .state
        .set_feed(T0, "orders", "fulfil", "order.placed", Default::default())
        .expect("feed");
    assert!(h.record(decided));
    let decided = h
        .state
        .deliver_feed(
            T0 + 1,
            "orders",
            "fulfil",
            vec!["{\"n\":1}".into(), "{\"n\":2}".into()],
            vec![(0, 2)],
        )
        .expect("deliver");
    let ids = h.record(decided);
    assert_eq!(ids.len(), 2);
    assert_eq!(h.count("fulfil", JobState::Ready), 2);
    assert_eq!(&*h.job(ids[1]).payload, "{\"n\":2}");
    let feed = &h.state.feeds().feeds[&("orders".to_owned(), "fulfil".to_owned())];
    assert_eq!(feed.offsets.get(&0), Some(&2));
    let restored =
        State::decode_snapshot(Config::default(), &h.state.encode_snapshot()).expect("decode");
    assert_eq!(restored.feeds(), h.state.feeds());
    assert_eq!(
        replay(Config::default(), &h.events).feeds(),
        h.state.feeds()
    );
    assert!(h
        .state
        .set_feed(T0, "nope", "q", "k", Default::default())
        .is_err());
}
