//! Live updates: `GET /v1/events`, a Server-Sent Events stream of what changes — jobs
//! changing state, queues paused or resumed, alerts firing or resolving — and a `stats`
//! summary once a second. Events are made from the decided log events under the state
//! lock (so in log order), only while someone subscribes, into one bounded ring shared by
//! every subscriber (`LIVE_EVENTS_BUFFER`); a subscriber that falls behind loses the
//! oldest and is sent `lagged` with how many, then refetches what it shows.
//!
//! A job event is made under the lock as numbers and shared names only; its text is
//! written once, outside the lock, by the first subscriber that sends it. A subscriber
//! sends what has piled up in one write (up to `SEND_BYTES_MAX`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_core::{Event, JobId, Millis, State};
use sluice_proto::limits;
use tokio::sync::broadcast;

use crate::api::{ApiQuery, AppState};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The kinds of live event, as named in the stream and in `?types=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stats,
    Job,
    Queue,
    Alert,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Stats, Kind::Job, Kind::Queue, Kind::Alert];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Stats => "stats",
            Kind::Job => "job",
            Kind::Queue => "queue",
            Kind::Alert => "alert",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// One event: `id:`, `event:` and `data:` lines once written.
#[derive(Debug)]
pub struct Frame {
    kind: Kind,
    id: u64,
    data: Data,
    /// The text as sent, written by the first subscriber that sends it.
    text: OnceLock<Bytes>,
}

/// What an event says, as made under the state lock.
#[derive(Debug)]
enum Data {
    /// Written already (the rare kinds).
    Json(String),
    Job {
        id: JobId,
        queue: Arc<str>,
        kind: Arc<str>,
        state: &'static str,
    },
}

impl Frame {
    fn text(&self) -> &Bytes {
        self.text.get_or_init(|| {
            let json = match &self.data {
                Data::Json(json) => std::borrow::Cow::Borrowed(json.as_str()),
                Data::Job {
                    id,
                    queue,
                    kind,
                    state,
                } => serde_json::to_string(&JobChange {
                    id: sluice_proto::ids::encode(*id),
                    queue,
                    kind,
                    state,
                })
                .map_or(std::borrow::Cow::Borrowed("null"), std::borrow::Cow::Owned),
            };
            Bytes::from(format!(
                "id: {}\nevent: {}\ndata: {json}\n\n",
                self.id,
                self.kind.as_str()
            ))
        })
    }
}

/// Bytes a subscriber gathers from the events waiting for it into one write.
const SEND_BYTES_MAX: usize = 64 * 1024;

/// Queue and kind names as shared strings, by id (ids are never reused), so that a job
/// event under the lock costs two reference counts rather than two copies.
#[derive(Default)]
struct Names {
    queues: Vec<Arc<str>>,
    kinds: Vec<Arc<str>>,
}

impl Names {
    fn queue(&mut self, state: &State, id: u32) -> Arc<str> {
        Self::get(&mut self.queues, id, |i| state.queue_name(i))
    }

    fn kind(&mut self, state: &State, id: u32) -> Arc<str> {
        Self::get(&mut self.kinds, id, |i| state.kind_name(i))
    }

    fn get<'a>(names: &mut Vec<Arc<str>>, id: u32, name: impl Fn(u32) -> &'a str) -> Arc<str> {
        let at = id as usize;
        while names.len() <= at {
            let next = names.len() as u32;
            names.push(Arc::from(name(next)));
        }
        names[at].clone()
    }
}

/// The ring of live events and its subscribers.
pub struct Live {
    tx: broadcast::Sender<Arc<Frame>>,
    /// The id of the last event made. Ids start at this process's start time in ms times
    /// a million, so they also grow across restarts and an id from an earlier process
    /// is known as such.
    seq: AtomicU64,
    /// The first id of this process, less one.
    first_seq: u64,
    subscribers: AtomicUsize,
    /// Subscribers that asked for `job` events: job events, nearly all of the cost, are
    /// made only while there is one.
    job_subscribers: AtomicUsize,
    /// Outcome totals at the last `stats`, for its per-second rates.
    last_totals: Mutex<Option<(Millis, [u64; 3])>>,
    names: Mutex<Names>,
}

impl Default for Live {
    fn default() -> Self {
        let first_seq = u64::try_from(crate::broker::system_now_ms()).unwrap_or(0) * 1_000_000;
        Live {
            tx: broadcast::channel(limits::LIVE_EVENTS_BUFFER).0,
            seq: AtomicU64::new(first_seq),
            first_seq,
            subscribers: AtomicUsize::new(0),
            job_subscribers: AtomicUsize::new(0),
            last_totals: Mutex::new(None),
            names: Mutex::new(Names::default()),
        }
    }
}

#[derive(Serialize)]
struct JobChange<'a> {
    id: String,
    queue: &'a str,
    kind: &'a str,
    state: &'a str,
}

#[derive(Serialize)]
struct QueueChange<'a> {
    queue: &'a str,
    paused: bool,
}

#[derive(Serialize)]
struct AlertChange<'a> {
    rule: &'a str,
    state: &'static str,
}

#[derive(Serialize, Default)]
struct JobTotals {
    scheduled: u64,
    ready: u64,
    leased: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    cancelled: u64,
}

#[derive(Serialize)]
struct PerSecond {
    enqueued: f64,
    completed: f64,
    failed: f64,
}

#[derive(Serialize)]
struct Stats {
    at_ms: Millis,
    jobs: JobTotals,
    queues: usize,
    workers: usize,
    firing_alerts: usize,
    per_s: PerSecond,
}

impl Live {
    /// Whether anyone listens (events are made only then).
    pub fn active(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, kind: Kind, data: &impl Serialize) {
        if let Ok(json) = serde_json::to_string(data) {
            self.send(kind, Data::Json(json));
        }
    }

    fn send(&self, kind: Kind, data: Data) {
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // No receivers is not an error here: the caller checked `active` a moment ago.
        let _ = self.tx.send(Arc::new(Frame {
            kind,
            id,
            data,
            text: OnceLock::new(),
        }));
    }

    /// The events of jobs `ids`, when anyone takes job events.
    fn jobs(&self, state: &State, ids: impl Iterator<Item = JobId>) {
        if self.job_subscribers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut names = self.names.lock();
        for id in ids {
            if let Some(job) = state.job(id) {
                self.send(
                    Kind::Job,
                    Data::Job {
                        id,
                        queue: names.queue(state, job.queue),
                        kind: names.kind(state, job.kind),
                        state: job.state.as_str(),
                    },
                );
            }
        }
    }

    fn queue(&self, state: &State, name: &str) {
        if let Some(queue) = state.queue(name) {
            self.publish(
                Kind::Queue,
                &QueueChange {
                    queue: name,
                    paused: queue.paused,
                },
            );
        }
    }

    /// Makes the live events of `event`; `state` is as right after it was applied.
    pub fn observe(&self, state: &State, event: &Event) {
        match event {
            Event::Enqueued { jobs, .. }
            | Event::EnqueuedKeyed { jobs, .. }
            | Event::FeedDelivered { jobs, .. }
            | Event::BatchEnqueued { jobs, .. } => self.jobs(state, jobs.iter().map(|j| j.id)),
            Event::CronFired { fired, .. } => {
                self.jobs(state, fired.iter().flat_map(|f| &f.jobs).map(|j| j.id))
            }
            Event::Leased { jobs, .. } => self.jobs(state, jobs.iter().map(|j| j.id)),
            Event::Acked { ids, .. } | Event::Moved { ids, .. } => {
                self.jobs(state, ids.iter().copied());
            }
            Event::Failed { jobs, .. } => self.jobs(state, jobs.iter().map(|j| j.id)),
            Event::Expired { jobs, .. } => self.jobs(state, jobs.iter().map(|&(id, _)| id)),
            Event::Cancelled { id, .. } | Event::Retried { id, .. } => {
                self.jobs(state, std::iter::once(*id));
            }
            Event::QueuePaused { queue, .. }
            | Event::Purged { queue, .. }
            | Event::QueueLimitsSet { queue, .. }
            | Event::LimitsSet { queue, .. } => self.queue(state, queue),
            Event::AlertChanged { transition } => self.publish(
                Kind::Alert,
                &AlertChange {
                    rule: &transition.rule,
                    state: if transition.firing {
                        "firing"
                    } else {
                        "resolved"
                    },
                },
            ),
            _ => {}
        }
    }

    /// Sends the once-a-second summary: jobs per state over all queues, queue, worker and
    /// firing-alert counts, and enqueue, completion and failure rates since the last one.
    pub fn stats(&self, state: &State, metrics: &Metrics, workers: usize, now: Millis) {
        use sluice_proto::JobState as S;
        let mut jobs = JobTotals::default();
        for id in 0..state.queue_len() as u32 {
            let Some(queue) = state.queue_by_id(id) else {
                continue;
            };
            let count = |s| queue.count(s) as u64;
            jobs.scheduled += count(S::Scheduled);
            jobs.ready += count(S::Ready);
            jobs.leased += count(S::Leased);
            jobs.succeeded += count(S::Succeeded);
            jobs.failed += count(S::Failed);
            jobs.dead += count(S::Dead);
            jobs.cancelled += count(S::Cancelled);
        }
        let totals = metrics.outcome_totals();
        let per_s = {
            let mut last = self.last_totals.lock();
            let rate = |i: usize| match *last {
                Some((at, before)) if now > at => {
                    totals[i].saturating_sub(before[i]) as f64 * 1000.0 / (now - at) as f64
                }
                _ => 0.0,
            };
            let per_s = PerSecond {
                enqueued: rate(0),
                completed: rate(1),
                failed: rate(2),
            };
            *last = Some((now, totals));
            per_s
        };
        self.publish(
            Kind::Stats,
            &Stats {
                at_ms: now,
                jobs,
                queues: state.queue_len(),
                workers,
                firing_alerts: state
                    .alerts()
                    .rules
                    .values()
                    .filter(|r| r.firing_since.is_some())
                    .count(),
                per_s,
            },
        );
    }
}

/// Counts a subscriber (and whether it takes job events) for as long as its stream lives.
struct Subscribed(Arc<crate::broker::Broker>, bool);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.live.subscribers.fetch_sub(1, Ordering::Relaxed);
        if self.1 {
            self.0.live.job_subscribers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated kinds to receive (`stats,job,queue,alert`); all when absent.
    types: Option<String>,
}

fn parse_types(types: Option<&str>) -> Result<u8, ApiError> {
    let Some(types) = types else {
        return Ok(Kind::ALL.iter().map(|k| k.bit()).sum());
    };
    let mut mask = 0;
    for name in types.split(',').map(str::trim) {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                ApiError::bad_input(
                    "types",
                    "a comma-separated list of stats, job, queue, alert",
                )
            })?;
        mask |= kind.bit();
    }
    Ok(mask)
}

struct Subscriber {
    rx: broadcast::Receiver<Arc<Frame>>,
    mask: u8,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Sent first: what a reconnecting client missed.
    greeting: Option<String>,
    /// When a keep-alive comment is due: `LIVE_KEEP_ALIVE_MS` after the last bytes sent.
    quiet_until: tokio::time::Instant,
    /// Events lost while gathering, to report next.
    dropped: Option<u64>,
    _subscribed: Subscribed,
}

/// `dropped`: how many; `None` when not known (an id from before a restart).
fn lagged(dropped: Option<u64>) -> Bytes {
    let dropped = dropped.map_or("null".to_owned(), |n| n.to_string());
    Bytes::from(format!(
        "event: lagged\ndata: {{\"dropped\":{dropped}}}\n\n"
    ))
}

impl Subscriber {
    /// `first` and the events already waiting after it, up to `SEND_BYTES_MAX`, as one
    /// write. A loss found on the way is left for the next call to report.
    fn gather(&mut self, first: Bytes) -> Bytes {
        let mut out: Option<Vec<u8>> = None;
        while out.as_ref().map_or(first.len(), Vec::len) < SEND_BYTES_MAX {
            match self.rx.try_recv() {
                Ok(frame) if frame.kind.bit() & self.mask != 0 => out
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(frame.text()),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(dropped)) => {
                    self.dropped = Some(dropped);
                    break;
                }
                Err(_) => break,
            }
        }
        out.map_or(first, Bytes::from)
    }

    /// The next bytes to send, or `None` to end the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        let keep_alive = Duration::from_millis(limits::LIVE_KEEP_ALIVE_MS);
        let bytes = self.wait().await?;
        self.quiet_until = tokio::time::Instant::now() + keep_alive;
        Some(bytes)
    }

    async fn wait(&mut self) -> Option<Bytes> {
        if let Some(greeting) = self.greeting.take() {
            return Some(Bytes::from(greeting));
        }
        if let Some(dropped) = self.dropped.take() {
            return Some(lagged(Some(dropped)));
        }
        loop {
            if *self.stop.borrow() {
                return None;
            }
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(frame) if frame.kind.bit() & self.mask != 0 => {
                        return Some(self.gather(frame.text().clone()));
                    }
                    // Events of other kinds do not count as traffic: the keep-alive is
                    // due by what this subscriber was sent.
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(dropped)) => return Some(lagged(Some(dropped))),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = tokio::time::sleep_until(self.quiet_until) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("types" = Option<String>, Query, description = "comma-separated: stats, job, queue, alert (default all)"),
           ("Last-Event-ID" = Option<String>, Header, description = "the last event id a reconnecting client saw")),
    responses(
        (status = 200, description = "a text/event-stream of live events until the server shuts down", content_type = "text/event-stream", body = String),
        (status = 400, description = "bad input", body = sluice_proto::ErrorResponse),
        (status = 503, description = "too many subscribers, or shutting down", body = sluice_proto::ErrorResponse)))]
pub async fn events(
    app: axum::extract::State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let mask = parse_types(query.types.as_deref())?;
    let broker = app.broker()?.clone();
    if *app.shutting_down.borrow() {
        return Err(ApiError::shutting_down());
    }
    let live = &broker.live;
    if live.subscribers.fetch_add(1, Ordering::Relaxed) >= limits::LIVE_SUBSCRIBERS_MAX {
        live.subscribers.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "at most {} live event subscribers at once",
                limits::LIVE_SUBSCRIBERS_MAX
            ),
        ));
    }
    let wants_jobs = mask & Kind::Job.bit() != 0;
    if wants_jobs {
        live.job_subscribers.fetch_add(1, Ordering::Relaxed);
    }
    let subscribed = Subscribed(broker.clone(), wants_jobs);
    let rx = live.tx.subscribe();
    // A reconnecting client is told how many events were made since the one it saw
    // (of every kind: an upper bound of what it missed), then refetches.
    let now_seq = live.seq.load(Ordering::Relaxed);
    let greeting = request
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seen| {
            // An id this process did not make: events were lost in a restart, how many
            // is not known.
            let known = (live.first_seq..=now_seq).contains(&seen);
            String::from_utf8_lossy(&lagged(known.then(|| now_seq - seen))).into_owned()
        })
        // Sent at once so the client knows the stream is open.
        .or_else(|| Some(": connected\n\n".to_owned()));
    let subscriber = Subscriber {
        rx,
        mask,
        stop: app.shutting_down.clone(),
        greeting,
        quiet_until: tokio::time::Instant::now()
            + Duration::from_millis(limits::LIVE_KEEP_ALIVE_MS),
        dropped: None,
        _subscribed: subscribed,
    };
    let stream = futures_util::stream::unfold(subscriber, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok((headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_to_a_mask_and_unknown_ones_are_refused() {
        assert_eq!(parse_types(None).ok(), Some(0b1111));
        assert_eq!(
            parse_types(Some("job, alert")).ok(),
            Some(Kind::Job.bit() | Kind::Alert.bit())
        );
        assert!(parse_types(Some("jobs")).is_err());
        assert!(parse_types(Some("")).is_err());
    }
}
