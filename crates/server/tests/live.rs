//! `GET /v1/events`: live Server-Sent Events from a real server, read as a browser's
//! EventSource would (text frames over one streaming response).

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proto::limits;
use support::{assert_error, wait_until, TestServer, POLL_DEADLINE};

/// One open event stream and the bytes not yet parsed.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

/// A parsed event: its id (absent on `lagged`), type and data.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Events {
    async fn open(server: &TestServer, query: &str, last_event_id: Option<u64>) -> Events {
        let mut request = server.client.get(server.url(&format!("/v1/events{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("GET /v1/events sent");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), `None` when the stream ended; panics after
    /// the deadline.
    async fn next(&mut self) -> Option<Sse> {
        let deadline = Instant::now() + POLL_DEADLINE;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        sse.id = id.parse().ok();
                    } else if let Some(event) = line.strip_prefix("event: ") {
                        sse.event = event.to_owned();
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        sse.data = serde_json::from_str(data).expect("data is JSON");
                    }
                }
                if !sse.event.is_empty() {
                    return Some(sse);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream reads");
            self.buffer
                .push_str(std::str::from_utf8(&chunk?).expect("UTF-8"));
        }
    }

    /// Reads until an event satisfies `want`; returns it.
    async fn until(&mut self, mut want: impl FnMut(&Sse) -> bool) -> Sse {
        loop {
            let event = self.next().await.expect("the stream is open");
            if want(&event) {
                return event;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_queue_and_stats_events_follow_what_happens() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let mut events = Events::open(&server, "", None).await;

    let id = server
        .enqueue(json!({ "queue": "live", "kind": "mail.send", "payload": {} }))
        .await;
    let (leased, lease_id) = server.lease_one("live").await;
    assert_eq!(leased, id);
    server.ack(&id, &lease_id).await;
    let (status, _) = server.post("/v1/queues/live/pause", &json!({})).await;
    assert_eq!(status, 200);

    // The job's three changes, in order, then the queue paused.
    let mut states = Vec::new();
    let mut last_id = 0;
    while states.len() < 3 {
        let event = events.until(|e| e.event == "job").await;
        assert_eq!(event.data["id"], id.as_str());
        assert_eq!(
            (&event.data["queue"], &event.data["kind"]),
            (&json!("live"), &json!("mail.send"))
        );
        let seq = event.id.expect("an id");
        assert!(seq > last_id, "ids increase");
        last_id = seq;
        states.push(event.data["state"].as_str().expect("state").to_owned());
    }
    assert_eq!(states, ["ready", "leased", "succeeded"]);
    let paused = events.until(|e| e.event == "queue").await;
    assert_eq!(paused.data, json!({ "queue": "live", "paused": true }));

    // The once-a-second summary agrees with the queue list.
    let stats = events.until(|e| e.event == "stats").await;
    assert_eq!(stats.data["jobs"]["succeeded"], 1);
    assert_eq!(stats.data["jobs"]["ready"], 0);
    assert_eq!(stats.data["queues"], 1);
    assert_eq!(stats.data["firing_alerts"], 0);
    assert!(stats.data["per_s"]["enqueued"].is_number());

    // Only the kinds asked for.
    let mut only_queues = Events::open(&server, "?types=queue", None).await;
    server
        .enqueue(json!({ "queue": "live", "kind": "mail.send", "payload": {} }))
        .await;
    let (status, _) = server.post("/v1/queues/live/resume", &json!({})).await;
    assert_eq!(status, 200);
    let first = only_queues.next().await.expect("an event");
    assert_eq!(
        (first.event.as_str(), &first.data),
        ("queue", &json!({ "queue": "live", "paused": false }))
    );
    let bad = server.get("/v1/events?types=jobs").await;
    assert_error(&bad, 400, "invalid_request", Some("types"));

    // Shutting down ends open streams (they do not hold the shutdown for its grace).
    let stopped = tokio::spawn(server.stop());
    let ended = tokio::time::timeout(POLL_DEADLINE, async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended at shutdown");
    stopped.await.expect("server stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_what_it_missed_and_a_reconnect_how_many_were_made() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let mut events = Events::open(&server, "?types=job", None).await;
    // Far more events than the ring holds, made faster than one reader takes them:
    // every job is either seen or counted in a `lagged`, and none is seen twice.
    let batches = 3;
    let per_batch = limits::ENQUEUE_BATCH_LEN_MAX;
    for _ in 0..batches {
        let jobs = (0..per_batch)
            .map(|_| json!({ "queue": "burst", "kind": "k", "payload": {} }))
            .collect();
        server.enqueue_batch(jobs).await;
    }
    let total = (batches * per_batch) as u64;
    let (mut seen, mut dropped, mut last_id) = (0u64, 0u64, 0u64);
    while seen + dropped < total {
        let event = events.next().await.expect("the stream is open");
        match event.event.as_str() {
            "job" => {
                let id = event.id.expect("an id");
                assert!(id > last_id, "no event twice, in order");
                last_id = id;
                seen += 1;
            }
            "lagged" => dropped += event.data["dropped"].as_u64().expect("a count"),
            other => panic!("unexpected event {other}"),
        }
    }
    // `lagged` counts every event the ring lost, `stats` ones too, so it may count a
    // few more than the jobs missed; never fewer.
    assert!(
        seen + dropped >= total && seen <= total,
        "every job seen or counted as dropped"
    );
    assert!(
        seen >= limits::LIVE_EVENTS_BUFFER as u64 / 2,
        "the reader saw events: {seen}"
    );

    // A client reconnecting with the last id it saw hears first how many were made since.
    server
        .enqueue(json!({ "queue": "burst", "kind": "k", "payload": {} }))
        .await;
    let mut again = Events::open(&server, "?types=job", Some(last_id - 5)).await;
    let first = again.next().await.expect("an event");
    assert_eq!(first.event, "lagged");
    assert!(
        first.data["dropped"].as_u64().expect("a count") >= 6,
        "{:?}",
        first.data
    );
    // An id from before a restart (ids start at the process's start time): how many were
    // lost is not known.
    let mut stale = Events::open(&server, "?types=job", Some(1)).await;
    let first = stale.next().await.expect("an event");
    assert_eq!(
        (first.event.as_str(), &first.data),
        ("lagged", &json!({ "dropped": null }))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_past_the_limit_are_refused_until_one_leaves() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let mut open = Vec::new();
    for _ in 0..limits::LIVE_SUBSCRIBERS_MAX {
        open.push(Events::open(&server, "?types=alert", None).await);
    }
    let refused = server.get("/v1/events").await;
    assert_error(&refused, 503, "too_many_subscribers", None);
    drop(open.pop());
    let admitted = wait_until("a subscriber is admitted after one left", || async {
        server
            .client
            .get(server.url("/v1/events?types=alert"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(admitted);
    drop(open);
    server.stop().await;
}
