//! The simulated world: one server (the real `State` plus a simulated log), clients that
//! talk to it over a network that delays and reorders, a clock, and the faults. One
//! `step` does one thing, chosen by the seeded RNG, then every invariant is checked.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::cron::Missed;
use sluice_core::{
    Backoff, Config, EnqueueSpec, Enqueued, Event, FailInput, Job, JobId, JobState, LeaseId,
    Millis, QueueLimits, Rate, Settled, State,
};

use crate::disk::{Disk, Torn};
use crate::oracle::{self, KnownLease, Oracle};
use crate::rng::Rng;
use crate::{Options, Sabotage, Stats};

const T0: Millis = 1_700_000_000_000;
pub const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
const KINDS: [&str; 2] = ["email", "resize"];
const UNIQUE_KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// Limit keys (per-key flow control): few, so that they are often at their limits.
const LIMIT_KEYS: [&str; 3] = ["acme", "globex", "initech"];
const BACKOFFS: [Backoff; 3] = [
    Backoff::Fixed { delay_ms: 0 },
    Backoff::Fixed { delay_ms: 1_500 },
    Backoff::Exponential {
        base_ms: 500,
        max_ms: 4_000,
    },
];
const TIMEOUTS_MS: [u64; 3] = [1_000, 2_000, 5_000];
const UNIQUE_TTLS_MS: [u64; 2] = [2_000, 60_000];
/// Short retention so that retention by time and by count both happen within a run.
pub const CONFIG: Config = Config {
    retention_ms: 60_000,
    retention_len_max: 20,
};
/// Producers hold back above this many jobs, so each step's full checks stay cheap.
const JOBS_SOFT_MAX: usize = 200;
/// Leases a worker holds at most.
const HELD_MAX: usize = 4;
/// Log frames held before the ones under the snapshot are dropped (as the WAL deletes
/// segments); until then every crash also replays the whole log from lsn 0.
const FRAMES_HELD_MAX: usize = 20_000;

// ---- messages -----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct JobOrder {
    queue: usize,
    kind: usize,
    priority: i16,
    delay_ms: Option<u64>,
    max_attempts: u16,
    backoff: usize,
    timeout_ms: u64,
    unique: Option<(usize, u64)>,
    limit_key: Option<usize>,
}

#[derive(Debug, Clone)]
enum Request {
    Enqueue(Vec<JobOrder>),
    Lease {
        queues: Vec<usize>,
        max_jobs: usize,
    },
    Heartbeat {
        id: JobId,
        lease_id: LeaseId,
    },
    Ack(Vec<(JobId, LeaseId)>),
    Fail(Vec<(JobId, LeaseId, Option<Millis>)>),
    Cancel(JobId),
    Retry(JobId),
    Pause(usize, bool),
    Purge(usize),
    /// A queue's limits and its per-key limits.
    Limits(usize, QueueLimits, QueueLimits),
    /// Move up to `limit` jobs of a state from one queue to another.
    Move(usize, usize, JobState, usize),
    /// Set (with a schedule and missed policy) or remove (`None`) cron schedule `n`.
    Cron(usize, Option<(usize, &'static str, Missed)>),
    /// A batch of jobs (queue, max_attempts each) with a callback in a queue.
    Batch(Vec<(usize, u32)>, usize),
}

/// Cron schedules the admin sets: every few seconds, so they fire within a run.
const CRON_SCHEDULES: [&str; 3] = ["*/5 * * * * *", "*/13 * * * * *", "0 * * * * *"];

type Code = &'static str;

#[derive(Debug, Clone)]
enum Reply {
    Enqueued(Result<Vec<Enqueued>, Code>),
    /// Lease id 0 and no jobs when nothing was ready.
    Leased {
        lease_id: LeaseId,
        jobs: Vec<(JobId, Millis)>,
    },
    Heartbeat(Result<Millis, Code>),
    Settled(Vec<Result<Settled, Code>>),
    Done(Result<(), Code>),
}

#[derive(Debug)]
enum Body {
    Request(Request),
    Reply(Reply),
}

#[derive(Debug)]
struct Message {
    client: usize,
    request_id: u64,
    /// Send order, to count reorderings.
    seq: u64,
    deliver_at: Millis,
    body: Body,
}

/// A reply the server holds until the log is durable up to `needs_lsn`.
struct Pending {
    client: usize,
    request_id: u64,
    needs_lsn: u64,
    reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Producer,
    Worker,
    Admin,
}

struct Client {
    role: Role,
    name: String,
    outstanding: BTreeMap<u64, Request>,
    /// Leases this worker believes it holds.
    held: Vec<(JobId, LeaseId)>,
    /// Queues this admin paused.
    paused: BTreeSet<usize>,
}

// ---- the world ----------------------------------------------------------------------

pub struct World {
    opts: Options,
    rng: Rng,
    pub step: u64,
    now: Millis,
    /// The clock's high-water mark: leases expire, and jobs come due, by it.
    max_now: Millis,
    state: State,
    pending: Vec<Pending>,
    disk: Disk,
    /// Every durable record applied to an empty state, in order, never from a snapshot:
    /// replay from scratch, done incrementally.
    replica: State,
    replica_lsn: u64,
    net: Vec<Message>,
    next_seq: u64,
    next_request_id: u64,
    clients: Vec<Client>,
    oracle: Oracle,
    pub stats: Stats,
}

fn client(role: Role, name: String) -> Client {
    Client {
        role,
        name,
        outstanding: BTreeMap::new(),
        held: Vec::new(),
        paused: BTreeSet::new(),
    }
}

fn restore(disk: &Disk) -> Result<State, String> {
    let (mut state, from) = match disk.snapshot() {
        Some(snapshot) => (
            State::decode_snapshot(CONFIG, &snapshot.bytes)?,
            snapshot.lsn,
        ),
        None => (State::new(CONFIG), 0),
    };
    if from > disk.next_lsn() {
        return Err(format!(
            "the log ends at lsn {} before the snapshot's lsn {from}",
            disk.next_lsn()
        ));
    }
    for lsn in from..disk.next_lsn() {
        state
            .apply(&Event::decode(disk.payload(lsn))?)
            .map_err(|e| format!("record {lsn} does not apply after the snapshot: {e}"))?;
    }
    // Callbacks re-enqueued by the replay were counted when they first fired.
    state.take_fired();
    Ok(state)
}

/// Replies of commands that depend on hidden state: id and lease counters, unique keys,
/// ready order, expiry and retention indexes.
fn probe(state: &mut State, now: Millis) -> String {
    let specs: Vec<EnqueueSpec> = QUEUES
        .iter()
        .flat_map(|q| {
            UNIQUE_KEYS
                .iter()
                .map(|k| {
                    let mut spec = EnqueueSpec::new(q, "probe", "{}");
                    spec.unique_key = Some((*k).to_owned());
                    spec
                })
                .chain([EnqueueSpec::new(q, "probe", "{}")])
        })
        .collect();
    let enqueued = state.enqueue(now, specs, true).map(|(_, r)| r);
    let names: Vec<String> = QUEUES.iter().map(|q| (*q).to_owned()).collect();
    let leased = state.lease(now, &names, 10_000, None).map(|(event, ids)| {
        let lease_id = match event {
            Some(Event::Leased { lease_id, .. }) => lease_id,
            _ => 0,
        };
        (lease_id, ids)
    });
    let (_, expired) = state.expire_leases(now + 7_200_000);
    let (_, removed) = state.retain(now + 7_200_000);
    format!(
        "{enqueued:?} {leased:?} {expired} {removed} {:?}",
        state.next_deadline()
    )
}

impl World {
    pub fn new(seed: u64, opts: Options) -> Self {
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(client(Role::Producer, format!("producer-{i}")));
        }
        for i in 0..4 {
            clients.push(client(Role::Worker, format!("worker-{i}")));
        }
        clients.push(client(Role::Admin, "admin".into()));
        World {
            opts,
            rng: Rng::new(seed),
            step: 0,
            now: T0,
            max_now: T0,
            state: State::new(CONFIG),
            pending: Vec::new(),
            disk: Disk::default(),
            replica: State::new(CONFIG),
            replica_lsn: 0,
            net: Vec::new(),
            next_seq: 0,
            next_request_id: 0,
            clients,
            oracle: Oracle::default(),
            stats: Stats::default(),
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("[{} t={}] {}", self.step, self.now - T0, what());
        }
    }

    /// One step: advance the clock, do one thing, check every invariant.
    pub fn step(&mut self) -> Result<(), String> {
        self.step += 1;
        self.stats.steps += 1;
        self.advance_clock();
        let roll = self.rng.below(1_000);
        match roll {
            0..=219 => self.client_acts()?,
            220..=739 => self.deliver()?,
            740..=819 => self.fsync()?,
            820..=859 => self.tick_expire()?,
            860..=879 => self.tick_retain()?,
            880..=899 => {
                self.trace(|| "promote_due".into());
                self.state.promote_due(self.now);
            }
            900..=909 => self.snapshot()?,
            910..=929 => {
                let (event, _) = self.state.fire_crons(self.now);
                if let Some(Event::CronFired { fired, .. }) = &event {
                    self.stats.cron_jobs += fired.iter().map(|f| f.jobs.len() as u64).sum::<u64>();
                }
                self.trace(|| format!("fire_crons: {event:?}"));
                self.log(event.as_ref())?;
            }
            _ => {}
        }
        if self.rng.chance(1_500) {
            self.crash()?;
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), String> {
        oracle::check_structure(&self.state).map_err(|e| format!("live state: {e}"))?;
        self.oracle
            .check(&self.state, self.max_now)
            .map_err(|e| format!("live state: {e}"))?;
        self.stats.jobs_max = self.stats.jobs_max.max(self.state.job_len() as u64);
        self.stats.log_records_max = self.stats.log_records_max.max(self.disk.next_lsn());
        Ok(())
    }

    fn advance_clock(&mut self) {
        let roll = self.rng.below(1_000_000);
        let delta_ms = if roll < 500 {
            self.stats.clock_jumps_forward += 1;
            self.rng.between(10_000, 7_200_000)
        } else if roll < 10_000 {
            self.rng.between(100, 2_000)
        } else {
            self.rng.below(11)
        };
        self.now += delta_ms as Millis;
        if self.opts.clock_back && self.rng.chance(300) {
            self.stats.clock_jumps_back += 1;
            self.now -= self.rng.between(1, 30_000) as Millis;
        }
        self.max_now = self.max_now.max(self.now);
    }

    // ---- network --------------------------------------------------------------------

    fn latency_ms(&mut self) -> Millis {
        if self.rng.chance(30_000) {
            self.stats.late_messages += 1;
            self.rng.between(500, 10_000) as Millis
        } else {
            self.rng.below(21) as Millis
        }
    }

    fn post(&mut self, client: usize, request_id: u64, body: Body) {
        let deliver_at = self.now + self.latency_ms();
        self.net.push(Message {
            client,
            request_id,
            seq: self.next_seq,
            deliver_at,
            body,
        });
        self.next_seq += 1;
    }

    fn send(&mut self, client: usize, request: Request) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.trace(|| {
            format!(
                "{} sends #{request_id} {request:?}",
                self.clients[client].name
            )
        });
        self.clients[client]
            .outstanding
            .insert(request_id, request.clone());
        self.post(client, request_id, Body::Request(request));
    }

    /// Delivers one message whose time has come, picked at random among them.
    fn deliver(&mut self) -> Result<(), String> {
        let due: Vec<usize> = (0..self.net.len())
            .filter(|&i| self.net[i].deliver_at <= self.now)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let index = due[self.rng.index(due.len())];
        let message = self.net.swap_remove(index);
        self.stats.deliveries += 1;
        // Overtook an earlier message of the same client's conversation.
        if self
            .net
            .iter()
            .any(|m| m.client == message.client && m.seq < message.seq)
        {
            self.stats.reordered += 1;
        }
        match message.body {
            Body::Request(request) => self.execute(message.client, message.request_id, request),
            Body::Reply(reply) => self.receive(message.client, message.request_id, reply),
        }
    }

    /// A request whose outcome the client will never learn (the server crashed).
    fn lost(&mut self, client: usize, request_id: u64) {
        let Some(request) = self.clients[client].outstanding.remove(&request_id) else {
            return;
        };
        self.stats.unknown_outcomes += 1;
        // At-least-once clients: enqueues, acks and fails are often tried again.
        let resend = match &request {
            Request::Enqueue(_) => self.rng.chance(500_000),
            Request::Ack(_) => self.rng.chance(600_000),
            Request::Fail(_) => self.rng.chance(500_000),
            _ => false,
        };
        if resend {
            self.stats.resends += 1;
            self.send_releasing(client, request);
        }
    }

    // ---- the server -----------------------------------------------------------------

    /// Logs the event of a decided command; returns the lsn its reply must wait for.
    fn log(&mut self, event: Option<&Event>) -> Result<u64, String> {
        let Some(event) = event else {
            // A reply without an event still waits for everything it could have seen.
            return Ok(self.disk.next_lsn());
        };
        let bytes = event.encode();
        let decoded = Event::decode(&bytes)?;
        if decoded != *event {
            return Err(format!("event does not round-trip: {event:?}"));
        }
        let lsn = self.disk.append(&bytes);
        self.stats.events += 1;
        self.stats.batch_callbacks += self.state.take_fired().len() as u64;
        match event {
            Event::Removed { ids } | Event::Purged { ids, .. } => {
                for &id in ids {
                    self.oracle.removals.insert(id, lsn);
                }
            }
            Event::Expired { jobs, .. } => self.stats.leases_expired += jobs.len() as u64,
            _ => {}
        }
        Ok(lsn + 1)
    }

    fn respond(&mut self, client: usize, request_id: u64, needs_lsn: u64, reply: Reply) {
        if needs_lsn <= self.disk.durable_lsn()
            || self.opts.sabotage == Sabotage::ReplyBeforeDurable
        {
            self.post(client, request_id, Body::Reply(reply));
        } else {
            self.pending.push(Pending {
                client,
                request_id,
                needs_lsn,
                reply,
            });
        }
    }

    /// The server decides a request against the live state, logs its event, and replies
    /// once that is durable. Checks what every decision must respect.
    fn execute(&mut self, client: usize, request_id: u64, request: Request) -> Result<(), String> {
        let now = self.now;
        let (event, reply) = match &request {
            Request::Enqueue(orders) => {
                let specs = orders
                    .iter()
                    .map(|o| {
                        let mut spec = EnqueueSpec::new(
                            QUEUES[o.queue],
                            KINDS[o.kind],
                            &format!("{{\"n\":{request_id}}}"),
                        );
                        spec.priority = o.priority;
                        spec.run_at = o.delay_ms.map(|d| now + d as Millis);
                        spec.max_attempts = u32::from(o.max_attempts);
                        spec.backoff = BACKOFFS[o.backoff];
                        spec.timeout_ms = o.timeout_ms;
                        if let Some((key, ttl_ms)) = o.unique {
                            spec.unique_key = Some(UNIQUE_KEYS[key].to_owned());
                            spec.unique_ttl_ms = ttl_ms;
                        }
                        spec.limit_key = o.limit_key.map(|k| LIMIT_KEYS[k].to_owned());
                        spec
                    })
                    .collect();
                match self.state.enqueue(now, specs, true) {
                    Ok((event, replies)) => {
                        if let Some(Event::EnqueuedKeyed { limit_keys, .. }) = &event {
                            self.stats.keyed_jobs += limit_keys.len() as u64;
                        }
                        (event, Reply::Enqueued(Ok(replies)))
                    }
                    Err(e) => return Err(format!("a valid enqueue was refused: {e:?}")),
                }
            }
            Request::Lease { queues, max_jobs } => {
                let names: Vec<String> = queues.iter().map(|&q| QUEUES[q].to_owned()).collect();
                let worker = Some(self.clients[client].name.clone());
                let room_before: Vec<(usize, usize)> = queues
                    .iter()
                    .filter_map(|&q| {
                        let queue = self.state.queue(QUEUES[q])?;
                        Some((q, queue.lease_room(now)))
                    })
                    .collect();
                let key_room_before = self.key_room(queues, now);
                let (event, ids) = self
                    .state
                    .lease(now, &names, *max_jobs, worker)
                    .map_err(|e| format!("lease refused: {e:?}"))?;
                let (lease_id, jobs) = match &event {
                    Some(Event::Leased { lease_id, jobs, .. }) => (
                        *lease_id,
                        jobs.iter().map(|j| (j.id, j.expires_at)).collect(),
                    ),
                    _ => (0, Vec::new()),
                };
                self.check_lease_decision(queues, &ids, lease_id)?;
                self.check_lease_room(&room_before, &ids)?;
                self.check_key_room(&key_room_before, &ids)?;
                if ids.is_empty() {
                    self.check_nothing_leasable(queues, now)?;
                }
                (event, Reply::Leased { lease_id, jobs })
            }
            Request::Heartbeat { id, lease_id } => {
                let before = self.state.job(*id).cloned();
                let (event, result) = match self.state.heartbeat(now, *id, *lease_id, None) {
                    Ok((event, expires_at)) => (event, Ok(expires_at)),
                    Err(e) => (None, Err(e.code)),
                };
                let settled = result.map(|_| ());
                self.check_lease_item("heartbeat", *id, *lease_id, settled, &before, false)?;
                if let (Ok(expires_at), Some(job)) = (result, &before) {
                    if expires_at < job.lease_expires_at {
                        return Err(format!("heartbeat of {id} shortened its lease"));
                    }
                }
                (event, Reply::Heartbeat(result))
            }
            Request::Ack(items) => {
                let before: Vec<Option<Job>> = items
                    .iter()
                    .map(|&(id, _)| self.state.job(id).cloned())
                    .collect();
                let (event, results) = self.state.ack(now, items);
                let results: Vec<Result<Settled, Code>> =
                    results.into_iter().map(|r| r.map_err(|e| e.code)).collect();
                self.check_settled("ack", items, &results, &before)?;
                (event, Reply::Settled(results))
            }
            Request::Fail(items) => {
                let before: Vec<Option<Job>> = items
                    .iter()
                    .map(|&(id, _, _)| self.state.job(id).cloned())
                    .collect();
                let inputs = items
                    .iter()
                    .map(|&(id, lease_id, retry_at)| FailInput {
                        id,
                        lease_id,
                        error: "simulated failure".into(),
                        retry_at,
                    })
                    .collect();
                let (event, results) = self.state.fail(now, inputs);
                let results: Vec<Result<Settled, Code>> =
                    results.into_iter().map(|r| r.map_err(|e| e.code)).collect();
                let pairs: Vec<(JobId, LeaseId)> =
                    items.iter().map(|&(id, l, _)| (id, l)).collect();
                self.check_settled("fail", &pairs, &results, &before)?;
                (event, Reply::Settled(results))
            }
            Request::Cancel(id) | Request::Retry(id) => {
                let decided = match &request {
                    Request::Cancel(_) => self.state.cancel(now, *id),
                    _ => self.state.retry(now, *id),
                };
                match decided {
                    Ok((event, ())) => {
                        if self.oracle.jobs.get(id).is_some_and(|k| k.acked) {
                            return Err(format!("{request:?} of an acked job was accepted"));
                        }
                        (event, Reply::Done(Ok(())))
                    }
                    Err(e) => (None, Reply::Done(Err(e.code))),
                }
            }
            Request::Pause(queue, paused) => match self.state.set_paused(QUEUES[*queue], *paused) {
                Ok((event, ())) => (event, Reply::Done(Ok(()))),
                Err(e) => (None, Reply::Done(Err(e.code))),
            },
            Request::Move(from, to, state, limit) => {
                match self
                    .state
                    .move_jobs(QUEUES[*from], QUEUES[*to], *state, *limit)
                {
                    Ok((event, moved)) => {
                        self.stats.jobs_moved += moved as u64;
                        (event, Reply::Done(Ok(())))
                    }
                    Err(e) => (None, Reply::Done(Err(e.code))),
                }
            }
            Request::Batch(jobs, callback) => {
                let specs = jobs
                    .iter()
                    .map(|&(queue, attempts)| {
                        let mut spec = EnqueueSpec::new(QUEUES[queue], "batch.member", "null");
                        spec.max_attempts = attempts;
                        spec
                    })
                    .collect();
                let callback = EnqueueSpec::new(QUEUES[*callback], "batch.done", "null");
                match self.state.enqueue_batch_with_callback(now, specs, callback) {
                    Ok((event, _)) => {
                        self.stats.batches += 1;
                        (event, Reply::Done(Ok(())))
                    }
                    Err(e) => (None, Reply::Done(Err(e.code))),
                }
            }
            Request::Cron(n, set) => {
                let name = format!("cron-{n}");
                let decided = match set {
                    Some((queue, schedule, missed)) => self
                        .state
                        .set_cron(
                            now,
                            &name,
                            schedule,
                            "UTC",
                            EnqueueSpec::new(QUEUES[*queue], "cron.tick", "null"),
                            *missed,
                        )
                        .map(|(event, _)| (event, ())),
                    None => self.state.remove_cron(&name),
                };
                match decided {
                    Ok((event, ())) => (event, Reply::Done(Ok(()))),
                    Err(e) => (None, Reply::Done(Err(e.code))),
                }
            }
            Request::Limits(queue, limits, key_limits) => {
                match self
                    .state
                    .set_limits(now, QUEUES[*queue], *limits, *key_limits)
                {
                    Ok((event, ())) => {
                        self.stats.limits_set += 1;
                        (event, Reply::Done(Ok(())))
                    }
                    Err(e) => return Err(format!("valid limits {limits:?} refused: {e:?}")),
                }
            }
            Request::Purge(queue) => {
                let expected: BTreeSet<JobId> =
                    self.state
                        .queue(QUEUES[*queue])
                        .map_or_else(BTreeSet::new, |q| {
                            [JobState::Ready, JobState::Scheduled, JobState::Failed]
                                .iter()
                                .flat_map(|&s| self.state.jobs_page(q, s, None, usize::MAX))
                                .map(|j| j.id)
                                .collect()
                        });
                match self.state.purge(QUEUES[*queue]) {
                    Ok((event, _)) => {
                        let purged: BTreeSet<JobId> = match &event {
                            Some(Event::Purged { ids, .. }) => ids.iter().copied().collect(),
                            _ => BTreeSet::new(),
                        };
                        if purged != expected {
                            return Err(format!(
                                "purge removed {purged:?}, not the waiting jobs {expected:?}"
                            ));
                        }
                        self.stats.purged += purged.len() as u64;
                        (event, Reply::Done(Ok(())))
                    }
                    Err(e) => (None, Reply::Done(Err(e.code))),
                }
            }
        };
        self.trace(|| format!("server decides #{request_id}: {event:?} -> {reply:?}"));
        let needs_lsn = self.log(event.as_ref())?;
        self.respond(client, request_id, needs_lsn, reply);
        Ok(())
    }

    /// A lease may only hand out ready jobs of the asked, unpaused queues, and never a
    /// job whose current lease a worker holds and may still use.
    /// A lease takes no more jobs of a queue than its limits allowed just before.
    fn check_lease_room(
        &mut self,
        room_before: &[(usize, usize)],
        ids: &[JobId],
    ) -> Result<(), String> {
        for &(q, room) in room_before {
            let taken = ids
                .iter()
                .filter_map(|id| self.state.job(*id))
                .filter(|job| self.state.queue_name(job.queue) == QUEUES[q])
                .count();
            if taken > room {
                return Err(format!(
                    "lease took {taken} jobs of {} whose limits allowed {room}",
                    QUEUES[q]
                ));
            }
            if room < usize::MAX {
                self.stats.limited_leases += 1;
            }
        }
        Ok(())
    }

    /// How many more jobs of each limit key of `queues` may be leased at `now`:
    /// `(queue, key, room)` for keys with per-key limits.
    fn key_room(&self, queues: &[usize], now: Millis) -> Vec<(usize, usize, u64)> {
        let mut rooms = Vec::new();
        for &q in queues {
            let Some(queue) = self.state.queue(QUEUES[q]) else {
                continue;
            };
            let limits = queue.key_limits;
            if limits == QueueLimits::default() {
                continue;
            }
            for (k, key) in LIMIT_KEYS.iter().enumerate() {
                let (leased, tokens) = match queue.key(key, now) {
                    Some(status) => (status.leased, status.tokens),
                    None => (0, limits.rate.map(|r| u64::from(r.limit))),
                };
                let by_concurrency = limits
                    .concurrency
                    .map_or(u64::MAX, |c| u64::from(c.saturating_sub(leased)));
                rooms.push((q, k, by_concurrency.min(tokens.unwrap_or(u64::MAX))));
            }
        }
        rooms
    }

    /// A lease takes no more jobs of a limit key than its limits allowed just before.
    fn check_key_room(
        &mut self,
        before: &[(usize, usize, u64)],
        ids: &[JobId],
    ) -> Result<(), String> {
        for &(q, k, room) in before {
            let taken = ids
                .iter()
                .filter(|id| self.state.limit_key(**id) == Some(LIMIT_KEYS[k]))
                .filter_map(|id| self.state.job(*id))
                .filter(|job| self.state.queue_name(job.queue) == QUEUES[q])
                .count() as u64;
            if taken > room {
                return Err(format!(
                    "lease took {taken} jobs of key {} in {} whose limits allowed {room}",
                    LIMIT_KEYS[k], QUEUES[q]
                ));
            }
            self.stats.key_limited_leases += 1;
        }
        Ok(())
    }

    /// A lease that took nothing left nothing it could have taken: no ready job of an
    /// asked, unpaused queue with room whose limit key (if any) had room.
    fn check_nothing_leasable(&self, queues: &[usize], now: Millis) -> Result<(), String> {
        let key_room = self.key_room(queues, now);
        for &q in queues {
            let Some(queue) = self.state.queue(QUEUES[q]) else {
                continue;
            };
            if queue.paused || queue.lease_room(now) == 0 {
                continue;
            }
            for job in self
                .state
                .jobs_page(queue, JobState::Ready, None, usize::MAX)
            {
                if job.run_at > now {
                    continue;
                }
                let blocked = self.state.limit_key(job.id).is_some_and(|key| {
                    key_room
                        .iter()
                        .any(|&(kq, k, room)| kq == q && LIMIT_KEYS[k] == key && room == 0)
                });
                if !blocked {
                    return Err(format!(
                        "lease of {queues:?} took nothing, but job {} of {} (key {:?}) was \
                         leasable",
                        job.id,
                        QUEUES[q],
                        self.state.limit_key(job.id)
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_lease_decision(
        &self,
        queues: &[usize],
        ids: &[JobId],
        lease_id: LeaseId,
    ) -> Result<(), String> {
        for &id in ids {
            let job = self
                .state
                .job(id)
                .ok_or_else(|| format!("leased job {id} does not exist"))?;
            let queue = self.state.queue_name(job.queue);
            let asked = queues.iter().any(|&q| QUEUES[q] == queue);
            let paused = self.state.queue(queue).is_some_and(|q| q.paused);
            if !asked || paused || job.lease_id != lease_id || job.run_at > self.max_now {
                return Err(format!(
                    "lease {lease_id} took job {id} of {queue} (asked {queues:?}, paused \
                     {paused}, run_at {}, clock high-water {})",
                    job.run_at, self.max_now
                ));
            }
            if let Some(held) = self
                .oracle
                .jobs
                .get(&id)
                .and_then(|k| k.binding_lease(self.max_now))
            {
                return Err(format!(
                    "job {id} leased again as {lease_id} while a worker holds lease {} until {}",
                    held.lease_id, held.expires_at
                ));
            }
        }
        Ok(())
    }

    /// Checks each item of an ack or fail. A job named twice (under an old and a new
    /// lease) may be settled by one item while the other is refused.
    fn check_settled(
        &self,
        what: &str,
        items: &[(JobId, LeaseId)],
        results: &[Result<Settled, Code>],
        before: &[Option<Job>],
    ) -> Result<(), String> {
        let settled_ids: BTreeSet<JobId> = items
            .iter()
            .zip(results)
            .filter(|(_, r)| r.is_ok())
            .map(|(&(id, _), _)| id)
            .collect();
        for ((&(id, lease_id), result), before) in items.iter().zip(results).zip(before) {
            let result = result.map(|_| ());
            let before = match result {
                Err(_) if settled_ids.contains(&id) => &None,
                _ => before,
            };
            self.check_lease_item(what, id, lease_id, result, before, true)?;
        }
        Ok(())
    }

    /// Checks the decision on one `(job, lease)` item of a heartbeat, ack or fail:
    /// - a lease a reply showed to be over is rejected;
    /// - a rejected item changes nothing;
    /// - the lease of a worker that still holds it (unexpired, not cancelled, and this is
    ///   the first ack/fail sent for it) is accepted.
    fn check_lease_item(
        &self,
        what: &str,
        id: JobId,
        lease_id: LeaseId,
        result: Result<(), Code>,
        before: &Option<Job>,
        releases: bool,
    ) -> Result<(), String> {
        let known = self.oracle.jobs.get(&id);
        match result {
            Ok(()) => {
                if known.is_some_and(|k| k.is_dead(lease_id)) {
                    return Err(format!(
                        "{what} of job {id} under lease {lease_id} accepted, but a reply had \
                         shown that lease to be over"
                    ));
                }
                let held = before
                    .as_ref()
                    .is_some_and(|j| j.state == JobState::Leased && j.lease_id == lease_id);
                if !held {
                    return Err(format!(
                        "{what} of job {id} accepted under lease {lease_id}, which it did not \
                         hold: {before:?}"
                    ));
                }
            }
            Err(code) => {
                if code != "stale_lease" && code != "not_found" {
                    return Err(format!("{what} of job {id} refused with {code}"));
                }
                let after = self.state.job(id);
                if before.is_some() && after != before.as_ref() {
                    return Err(format!(
                        "{what} of job {id} under stale lease {lease_id} changed the job:\n    \
                         {before:?}\n    {after:?}"
                    ));
                }
                let sends_allowed = if releases { 1 } else { 0 };
                if let Some(lease) = known.and_then(|k| {
                    k.lease.as_ref().filter(|l| {
                        l.lease_id == lease_id
                            && l.release_sends <= sends_allowed
                            && !k.cancel_sent
                            && l.expires_at > self.max_now
                    })
                }) {
                    return Err(format!(
                        "{what} of job {id} refused ({code}) though its worker holds lease \
                         {lease_id} until {} (clock high-water {})",
                        lease.expires_at, self.max_now
                    ));
                }
            }
        }
        Ok(())
    }

    fn tick_expire(&mut self) -> Result<(), String> {
        let now = self.now;
        let due: BTreeSet<JobId> = oracle::all_jobs(&self.state)
            .iter()
            .filter(|j| j.state == JobState::Leased && j.lease_expires_at <= now)
            .map(|j| j.id)
            .collect();
        let (event, count) = self.state.expire_leases(now);
        let expired: BTreeSet<JobId> = match &event {
            Some(Event::Expired { jobs, .. }) => jobs.iter().map(|&(id, _)| id).collect(),
            _ => BTreeSet::new(),
        };
        if expired != due || count != due.len() {
            return Err(format!(
                "expire_leases({now}) took {expired:?}, not the due leases {due:?}"
            ));
        }
        self.trace(|| format!("expire_leases: {event:?}"));
        self.log(event.as_ref())?;
        Ok(())
    }

    fn tick_retain(&mut self) -> Result<(), String> {
        let now = self.now;
        let cutoff = now - CONFIG.retention_ms as Millis;
        let finished = |state: &State| -> BTreeMap<JobId, (u32, Millis)> {
            oracle::all_jobs(state)
                .iter()
                .filter(|j| j.state.is_finished())
                .map(|j| (j.id, (j.queue, j.finished_at)))
                .collect()
        };
        let before = finished(&self.state);
        let (event, _) = self.state.retain(now);
        let after = finished(&self.state);
        let removed: Vec<JobId> = match &event {
            Some(Event::Removed { ids }) => ids.clone(),
            _ => Vec::new(),
        };
        for &id in &removed {
            if !before.contains_key(&id) || after.contains_key(&id) {
                return Err(format!("retention removed {id}, which was not finished"));
            }
        }
        for (queue, _) in QUEUES.iter().enumerate() {
            let kept: Vec<(JobId, Millis)> = after
                .iter()
                .filter(|(_, &(q, _))| q as usize == queue)
                .map(|(&id, &(_, at))| (id, at))
                .collect();
            if kept.len() > CONFIG.retention_len_max || kept.iter().any(|&(_, at)| at <= cutoff) {
                return Err(format!(
                    "retention kept too much of queue #{queue}: {kept:?}"
                ));
            }
            // Removed by count (not by time) are older than every kept one.
            let oldest_kept = kept.first().map_or(JobId::MAX, |&(id, _)| id);
            for &id in &removed {
                let (q, at) = before[&id];
                if q as usize == queue && at > cutoff && id > oldest_kept {
                    return Err(format!(
                        "retention removed {id} by count but kept older {oldest_kept}"
                    ));
                }
            }
        }
        self.stats.retained += removed.len() as u64;
        self.trace(|| format!("retain: removed {removed:?}"));
        self.log(event.as_ref())?;
        Ok(())
    }

    // ---- the disk -------------------------------------------------------------------

    fn fsync(&mut self) -> Result<(), String> {
        self.stats.fsyncs += 1;
        self.disk.fsync();
        self.trace(|| format!("fsync: durable up to lsn {}", self.disk.durable_lsn()));
        self.on_durable()?;
        // Everything is durable: the live state is what the log rebuilds from scratch.
        self.stats.state_comparisons += 1;
        oracle::compare(&self.state, &self.replica, self.max_now)
            .map_err(|e| format!("live state vs replay of the log from scratch: {e}"))
    }

    /// What follows from the durable watermark moving: the scratch replica applies the
    /// new records, removals become permanent, and held replies go out.
    fn on_durable(&mut self) -> Result<(), String> {
        let durable = self.disk.durable_lsn();
        for lsn in self.replica_lsn..durable {
            let event = Event::decode(self.disk.payload(lsn))?;
            self.replica
                .apply(&event)
                .map_err(|e| format!("durable record {lsn} does not apply from scratch: {e}"))?;
        }
        self.replica_lsn = durable;
        self.oracle.removals_durable(durable);
        let (ready, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.needs_lsn <= durable);
        self.pending = waiting;
        for p in ready {
            self.post(p.client, p.request_id, Body::Reply(p.reply));
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<(), String> {
        self.stats.snapshots += 1;
        let lsn = self.disk.next_lsn();
        let bytes = self.state.encode_snapshot();
        let restored = State::decode_snapshot(CONFIG, &bytes)?;
        oracle::compare(&self.state, &restored, self.max_now)
            .map_err(|e| format!("snapshot vs live state: {e}"))?;
        let durable_first = self.opts.sabotage != Sabotage::SnapshotBeforeFsync;
        self.disk.write_snapshot(lsn, bytes, durable_first);
        self.trace(|| format!("snapshot at lsn {lsn}"));
        self.on_durable()?;
        self.disk.compact(FRAMES_HELD_MAX);
        Ok(())
    }

    /// Power loss and restart: volatile state (live `State`, held replies, connections)
    /// is gone; the disk loses what was not durable; the server restarts from the newest
    /// snapshot plus the log after it.
    fn crash(&mut self) -> Result<(), String> {
        self.stats.crashes += 1;
        let crash = self.disk.crash(&mut self.rng)?;
        self.stats.records_lost += crash.lost_len;
        self.stats.records_kept_unsynced += crash.kept_len;
        match crash.torn {
            Some(Torn::Prefix) => self.stats.torn_prefix += 1,
            Some(Torn::Garbled) => self.stats.torn_garbled += 1,
            None => {}
        }
        self.trace(|| {
            format!(
                "CRASH: lost {} records, kept {} unsynced, torn {:?}; log now ends at {}",
                crash.lost_len,
                crash.kept_len,
                crash.torn,
                self.disk.next_lsn()
            )
        });
        // Replies held for durability and connections to the server are gone; replies
        // already on the wire may or may not arrive.
        let mut dropped: Vec<(usize, u64)> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| (p.client, p.request_id))
            .collect();
        let mut kept = Vec::new();
        for message in std::mem::take(&mut self.net) {
            let drop = match message.body {
                Body::Request(_) => true,
                Body::Reply(_) => self.rng.chance(500_000),
            };
            if drop {
                dropped.push((message.client, message.request_id));
            } else {
                kept.push(message);
            }
        }
        self.net = kept;
        for (client, request_id) in dropped {
            self.lost(client, request_id);
        }
        self.oracle.removals_lost(self.disk.next_lsn());

        let restored = restore(&self.disk)?;
        self.on_durable()?;
        oracle::check_structure(&restored).map_err(|e| format!("restored state: {e}"))?;
        self.stats.state_comparisons += 1;
        oracle::compare(&restored, &self.replica, self.max_now)
            .map_err(|e| format!("snapshot + tail vs replay of the log from scratch: {e}"))?;
        if self.disk.first_lsn() == 0 {
            // The whole log is still held: replay it literally, and compare hidden state
            // (counters, unique keys, indexes) by probing two throwaway copies.
            self.stats.scratch_replays += 1;
            let mut scratch = State::new(CONFIG);
            for lsn in 0..self.disk.next_lsn() {
                scratch.apply(&Event::decode(self.disk.payload(lsn))?)?;
            }
            oracle::compare(&restored, &scratch, self.max_now)
                .map_err(|e| format!("snapshot + tail vs literal replay from lsn 0: {e}"))?;
            let mut copy = restore(&self.disk)?;
            let now = self.max_now;
            let (probe_a, probe_b) = (probe(&mut copy, now), probe(&mut scratch, now));
            if probe_a != probe_b {
                return Err(format!(
                    "snapshot + tail and replay from lsn 0 behave differently:\n    \
                     {probe_a}\n    {probe_b}"
                ));
            }
        }
        for job in oracle::all_jobs(&restored) {
            if self.oracle.gone.contains(&job.id) {
                return Err(format!(
                    "job {} came back after its removal was durable",
                    job.id
                ));
            }
        }
        self.state = restored;
        Ok(())
    }

    // ---- clients --------------------------------------------------------------------

    fn client_acts(&mut self) -> Result<(), String> {
        let client = self.rng.index(self.clients.len());
        match self.clients[client].role {
            Role::Producer => self.produce(client),
            Role::Worker => self.work(client),
            Role::Admin => self.administer(client),
        }
        Ok(())
    }

    fn produce(&mut self, client: usize) {
        if self.state.job_len() >= JOBS_SOFT_MAX {
            return;
        }
        let len = 1 + self.rng.below(3);
        let orders = (0..len)
            .map(|_| JobOrder {
                queue: self.rng.index(QUEUES.len()),
                kind: self.rng.index(KINDS.len()),
                priority: self.rng.below(3) as i16 - 1,
                delay_ms: self.rng.chance(250_000).then(|| self.rng.below(5_000)),
                max_attempts: self.rng.between(1, 4) as u16,
                backoff: self.rng.index(BACKOFFS.len()),
                timeout_ms: *self.rng.pick(&TIMEOUTS_MS),
                unique: self.rng.chance(200_000).then(|| {
                    (
                        self.rng.index(UNIQUE_KEYS.len()),
                        *self.rng.pick(&UNIQUE_TTLS_MS),
                    )
                }),
                limit_key: self
                    .rng
                    .chance(400_000)
                    .then(|| self.rng.index(LIMIT_KEYS.len())),
            })
            .collect();
        self.send(client, Request::Enqueue(orders));
    }

    fn work(&mut self, client: usize) {
        if self.rng.chance(30_000) {
            self.stale_op(client);
            return;
        }
        let held_len = self.clients[client].held.len();
        if held_len == 0 || (held_len < HELD_MAX && self.rng.chance(250_000)) {
            let mut queues: Vec<usize> = (0..QUEUES.len())
                .filter(|_| self.rng.chance(600_000))
                .collect();
            if queues.is_empty() {
                queues.push(self.rng.index(QUEUES.len()));
            }
            let max_jobs = self.rng.between(1, 3) as usize;
            self.send(client, Request::Lease { queues, max_jobs });
            return;
        }
        let index = self.rng.index(held_len);
        let (id, lease_id) = self.clients[client].held[index];
        match self.rng.below(100) {
            0..=49 => {
                let items: Vec<(JobId, LeaseId)> = if self.rng.chance(250_000) {
                    std::mem::take(&mut self.clients[client].held)
                } else {
                    vec![self.clients[client].held.swap_remove(index)]
                };
                if self.rng.chance(20_000) {
                    self.stats.duplicates_sent += 1;
                    self.send_releasing(client, Request::Ack(items.clone()));
                }
                self.send_releasing(client, Request::Ack(items));
            }
            50..=64 => {
                self.clients[client].held.swap_remove(index);
                let retry_at = self
                    .rng
                    .chance(300_000)
                    .then(|| self.now + self.rng.between(0, 7_000) as Millis - 2_000);
                self.send_releasing(client, Request::Fail(vec![(id, lease_id, retry_at)]));
            }
            65..=94 => {
                if self.rng.chance(30_000) {
                    self.stats.duplicates_sent += 1;
                    self.send(client, Request::Heartbeat { id, lease_id });
                }
                self.send(client, Request::Heartbeat { id, lease_id });
            }
            _ => {
                // Abandoned: the worker walks away and the lease runs out.
                self.clients[client].held.swap_remove(index);
            }
        }
    }

    /// Sends a request; each ack or fail item may end its lease from now on.
    fn send_releasing(&mut self, client: usize, request: Request) {
        let items: Vec<(JobId, LeaseId)> = match &request {
            Request::Ack(items) => items.clone(),
            Request::Fail(items) => items.iter().map(|&(id, l, _)| (id, l)).collect(),
            _ => Vec::new(),
        };
        for (id, lease_id) in items {
            self.release(id, lease_id);
        }
        self.send(client, request);
    }

    fn release(&mut self, id: JobId, lease_id: LeaseId) {
        if let Some(lease) = self
            .oracle
            .job_mut(id)
            .and_then(|k| k.lease.as_mut())
            .filter(|l| l.lease_id == lease_id)
        {
            lease.release_sends += 1;
        }
    }

    /// A heartbeat, ack or fail under a lease a reply showed to be over.
    fn stale_op(&mut self, client: usize) {
        let candidates: Vec<(JobId, LeaseId)> = self
            .oracle
            .jobs
            .iter()
            .filter_map(|(&id, k)| k.dead_leases.last().map(|&l| (id, l)))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (id, lease_id) = *self.rng.pick(&candidates);
        self.stats.stale_ops_sent += 1;
        let request = match self.rng.below(3) {
            0 => Request::Heartbeat { id, lease_id },
            1 => Request::Ack(vec![(id, lease_id)]),
            _ => Request::Fail(vec![(id, lease_id, None)]),
        };
        self.send(client, request);
    }

    fn administer(&mut self, client: usize) {
        let roll = self.rng.below(100);
        if let Some(&queue) = self.clients[client].paused.first() {
            if roll < 50 {
                self.clients[client].paused.remove(&queue);
                self.send(client, Request::Pause(queue, false));
                return;
            }
        }
        match roll {
            0..=49 => {
                let known: Vec<JobId> = self.oracle.jobs.keys().copied().collect();
                if known.is_empty() {
                    return;
                }
                let id = *self.rng.pick(&known);
                if roll < 25 {
                    if let Some(k) = self.oracle.job_mut(id) {
                        k.cancel_sent = true;
                    }
                    self.send(client, Request::Cancel(id));
                } else {
                    self.send(client, Request::Retry(id));
                }
            }
            50..=59 => {
                let queue = self.rng.index(QUEUES.len());
                self.clients[client].paused.insert(queue);
                self.send(client, Request::Pause(queue, true));
            }
            60 => {
                let queue = self.rng.index(QUEUES.len());
                self.send(client, Request::Purge(queue));
            }
            63..=64 => {
                let from = self.rng.index(QUEUES.len());
                let to = (from + 1 + self.rng.index(QUEUES.len() - 1)) % QUEUES.len();
                let state = *self.rng.pick(&[
                    JobState::Ready,
                    JobState::Scheduled,
                    JobState::Failed,
                    JobState::Dead,
                ]);
                let limit = 1 + self.rng.index(5);
                self.send(client, Request::Move(from, to, state, limit));
            }
            67..=68 => {
                let jobs = (0..1 + self.rng.index(3))
                    .map(|_| (self.rng.index(QUEUES.len()), 1 + self.rng.below(3) as u32))
                    .collect();
                let callback = self.rng.index(QUEUES.len());
                self.send(client, Request::Batch(jobs, callback));
            }
            65..=66 => {
                let n = self.rng.index(3);
                let set = (self.rng.below(4) != 0).then(|| {
                    (
                        self.rng.index(QUEUES.len()),
                        *self.rng.pick(&CRON_SCHEDULES),
                        *self
                            .rng
                            .pick(&[Missed::Skip, Missed::RunOnce, Missed::RunAll]),
                    )
                });
                self.send(client, Request::Cron(n, set));
            }
            61..=62 => {
                let queue = self.rng.index(QUEUES.len());
                let limits = self.random_limits(5);
                let key_limits = self.random_limits(3);
                self.send(client, Request::Limits(queue, limits, key_limits));
            }
            _ => {}
        }
    }

    /// No limits one time in `none_in`; else a concurrency limit, a rate, or both.
    fn random_limits(&mut self, none_in: u64) -> QueueLimits {
        if self.rng.below(none_in) == 0 {
            return QueueLimits::default();
        }
        QueueLimits {
            concurrency: (self.rng.below(2) == 0).then(|| 1 + self.rng.below(5) as u32),
            rate: (self.rng.below(2) == 0).then(|| Rate {
                limit: 1 + self.rng.below(20) as u32,
                per_ms: 100 + self.rng.below(2_000),
            }),
        }
    }

    /// A reply reaches its client: what it says becomes knowledge.
    fn receive(&mut self, client: usize, request_id: u64, reply: Reply) -> Result<(), String> {
        let request = self.clients[client]
            .outstanding
            .remove(&request_id)
            .ok_or_else(|| format!("reply to unknown request #{request_id}"))?;
        self.trace(|| {
            format!(
                "{} receives #{request_id}: {reply:?}",
                self.clients[client].name
            )
        });
        match (request, reply) {
            (Request::Enqueue(orders), Reply::Enqueued(Ok(enqueued))) => {
                for (order, e) in orders.iter().zip(enqueued) {
                    // A late reply about a job already removed for good teaches nothing.
                    let Some(known) = self.oracle.job_mut(e.id) else {
                        continue;
                    };
                    if e.duplicate {
                        continue;
                    }
                    if known.enqueue_confirmed {
                        return Err(format!("job id {} was given to two enqueues", e.id));
                    }
                    known.enqueue_confirmed = true;
                    known.max_attempts = Some(order.max_attempts);
                    self.stats.enqueues_confirmed += 1;
                }
            }
            (Request::Lease { .. }, Reply::Leased { lease_id, jobs }) => {
                for (id, expires_at) in jobs {
                    let Some(known) = self.oracle.job_mut(id) else {
                        continue;
                    };
                    if known.lease.as_ref().is_some_and(|l| l.lease_id == lease_id) {
                        return Err(format!("lease {lease_id} of job {id} granted twice"));
                    }
                    if known.is_dead(lease_id) {
                        // A late reply: a newer lease of this job is already known.
                        known.dead_leases.insert(lease_id);
                    } else {
                        if let Some(old) = known.lease.take() {
                            known.dead_leases.insert(old.lease_id);
                        }
                        known.lease = Some(KnownLease {
                            lease_id,
                            expires_at,
                            release_sends: 0,
                        });
                    }
                    self.stats.leases_confirmed += 1;
                    self.clients[client].held.push((id, lease_id));
                }
            }
            (Request::Heartbeat { id, lease_id }, Reply::Heartbeat(result)) => {
                let Some(known) = self.oracle.job_mut(id) else {
                    return Ok(());
                };
                match result {
                    Ok(expires_at) => {
                        if let Some(lease) = known.lease.as_mut().filter(|l| l.lease_id == lease_id)
                        {
                            lease.expires_at = lease.expires_at.max(expires_at);
                        }
                    }
                    Err(_) => {
                        self.stats.stale_rejections += 1;
                        known.end_lease(lease_id);
                        self.clients[client].held.retain(|&h| h != (id, lease_id));
                    }
                }
            }
            (Request::Ack(items), Reply::Settled(results)) => {
                for (&(id, lease_id), result) in items.iter().zip(&results) {
                    let Some(known) = self.oracle.job_mut(id) else {
                        continue;
                    };
                    known.end_lease(lease_id);
                    match result {
                        Ok(_) => {
                            known.acked = true;
                            self.stats.acks_confirmed += 1;
                        }
                        Err(_) => self.stats.stale_rejections += 1,
                    }
                }
            }
            (Request::Fail(items), Reply::Settled(results)) => {
                for (&(id, lease_id, _), result) in items.iter().zip(&results) {
                    let Some(known) = self.oracle.job_mut(id) else {
                        continue;
                    };
                    known.end_lease(lease_id);
                    if result.is_err() {
                        self.stats.stale_rejections += 1;
                    }
                }
            }
            (
                Request::Cancel(_)
                | Request::Retry(_)
                | Request::Pause(..)
                | Request::Purge(_)
                | Request::Limits(..)
                | Request::Move(..)
                | Request::Cron(..)
                | Request::Batch(..),
                Reply::Done(result),
            ) => {
                if result.is_err() {
                    self.stats.admin_refused += 1;
                }
            }
            (request, reply) => {
                return Err(format!("reply {reply:?} does not answer {request:?}"));
            }
        }
        Ok(())
    }
}
