//! End-to-end tests of the HTTP API: each test starts the real server in-process on a
//! random loopback port with its own data directory (real files, fsync always), drives it
//! with `reqwest`, and checks what a client sees: statuses, error codes and paths, and
//! the state a later `GET` shows.

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proto::limits;
use sluice_server::ServerConfig;
use support::{assert_error, copy_dir, now_ms, snapshot_files, time_ms, wait_until, TestServer};

async fn fresh() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path()).await;
    (dir, server)
}

fn spec(queue: &str) -> Value {
    json!({ "queue": queue, "kind": "email.send", "payload": { "to": "a@example.com" } })
}

/// A lease id that is well-formed but not the one the job holds.
fn other_lease_id(lease_id: &str) -> String {
    let value = sluice_proto::ids::decode(lease_id).expect("lease ids decode");
    sluice_proto::ids::encode(value + 1_000)
}

// ---- health and documents -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    let (_dir, server) = fresh().await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_names_its_version_and_the_job_spec_schema() {
    let (_dir, server) = fresh().await;
    let (status, body) = server.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        body["openapi"].is_string(),
        "no openapi version: {body:.300}"
    );
    let job_spec = &body["components"]["schemas"]["JobSpec"];
    assert!(job_spec.is_object(), "no JobSpec schema");
    assert!(
        job_spec["properties"]["queue"].is_object(),
        "JobSpec has no queue property: {job_spec}"
    );
    server.stop().await;
}

/// The document `scripts/schemathesis.sh` tests against: each of these was wrong once.
#[test]
fn openapi_payload_is_any_json_value_and_links_use_openapi_field_names() {
    let doc = sluice_server::openapi::document();
    let schemas = &doc["components"]["schemas"];
    // `payload` and `progress` are any JSON value (`{"user": 42}`, `42`, `null`), not an
    // object: a job enqueued with `"payload": 42` must match the schema `GET` answers with.
    for (schema, field) in [
        ("JobSpec", "payload"),
        ("Job", "payload"),
        ("Job", "progress"),
        ("LeasedJob", "payload"),
        ("HeartbeatRequest", "progress"),
    ] {
        let property = &schemas[schema]["properties"][field];
        assert!(property.is_object(), "{schema}.{field} missing");
        assert!(
            property.get("type").is_none(),
            "{schema}.{field} is restricted to a type: {property}"
        );
    }
    // Resuming an unknown queue is 404; a lease with too many acks is 413.
    let responses = |path: &str| doc["paths"][path]["post"]["responses"].clone();
    assert!(responses("/v1/queues/{queue}/resume")["404"].is_object());
    assert!(responses("/v1/lease")["413"].is_object());
    // utoipa writes Link Objects with Rust field names; the document must use OpenAPI's.
    let links = &responses("/v1/lease")["200"]["links"];
    let ack = &links["ack"];
    assert_eq!(ack["operationId"], "ack", "links: {links}");
    assert_eq!(
        ack["requestBody"]["lease_id"],
        "$response.body#/jobs/0/lease_id"
    );
    assert!(ack.get("operation_id").is_none() && ack.get("request_body").is_none());
    let lease = &responses("/v1/jobs")["201"]["links"]["lease"];
    assert_eq!(lease["operationId"], "lease", "links: {lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_is_405_both_in_the_error_format() {
    let (_dir, server) = fresh().await;
    let reply = server.get("/v1/no-such-thing").await;
    assert_error(&reply, 404, "not_found", None);
    let reply = server.post("/v2/jobs", &spec("q")).await;
    assert_error(&reply, 404, "not_found", None);

    // `/v1/lease` only takes POST.
    let reply = server.get("/v1/lease").await;
    assert_error(&reply, 405, "method_not_allowed", None);
    let response = server
        .client
        .delete(server.url("/v1/jobs"))
        .send()
        .await
        .expect("DELETE sent");
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.expect("405 body is JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    server.stop().await;
}

// ---- enqueue ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_returns_201_with_an_id_and_the_job_is_ready() {
    let (_dir, server) = fresh().await;
    let (status, body) = server.post("/v1/jobs", &spec("mail")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["duplicate"], false);
    let id = body["id"].as_str().expect("id");
    assert_eq!(id.len(), sluice_proto::ids::LEN);

    let job = server.job(id).await;
    assert_eq!(job["id"], id);
    assert_eq!(job["queue"], "mail");
    assert_eq!(job["kind"], "email.send");
    assert_eq!(job["payload"], json!({ "to": "a@example.com" }));
    assert_eq!(job["state"], "ready");
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["max_attempts"], limits::MAX_ATTEMPTS_DEFAULT);
    assert_eq!(job["timeout_ms"], limits::TIMEOUT_MS_DEFAULT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_a_held_unique_key_returns_200_duplicate_and_the_same_id() {
    let (_dir, server) = fresh().await;
    let mut unique = spec("mail");
    unique["unique_key"] = json!("user-42");
    let first = server.enqueue(unique.clone()).await;

    let (status, body) = server.post("/v1/jobs", &unique).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["id"], first.as_str());
    assert_eq!(server.counts("mail").await["ready"], 1);

    // Same key in another queue is a different job.
    unique["queue"] = json!("other");
    let other = server.enqueue(unique).await;
    assert_ne!(other, first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_key_is_free_again_once_the_job_succeeds_and_dedups_within_a_batch() {
    let (_dir, server) = fresh().await;
    let mut unique = spec("uniq");
    unique["unique_key"] = json!("k");
    let (status, body) = server
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [unique, unique, spec("uniq")] }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs[0]["duplicate"], false);
    assert_eq!(jobs[1]["duplicate"], true);
    assert_eq!(jobs[1]["id"], jobs[0]["id"]);
    assert_eq!(jobs[2]["duplicate"], false);
    assert_eq!(server.counts("uniq").await["ready"], 2);

    let first = jobs[0]["id"].as_str().expect("id").to_owned();
    let leased = server.lease(&["uniq"], 2).await;
    for job in &leased {
        let (status, _) = server
            .post(
                &format!("/v1/jobs/{}/ack", job["id"].as_str().expect("id")),
                &json!({ "lease_id": job["lease_id"] }),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.job(&first).await["state"], "succeeded");
    let second = server.enqueue(unique).await;
    assert_ne!(second, first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_with_one_bad_job_is_rejected_whole_with_the_path_of_the_bad_field() {
    let (_dir, server) = fresh().await;
    server.enqueue(spec("batch-a")).await;
    let before_a = server.counts("batch-a").await;

    let reply = server
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [spec("batch-a"), spec("bad queue!"), spec("batch-b")] }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("jobs[1].queue"));
    assert_eq!(support::detail_paths(&reply.1), vec!["jobs[1].queue"]);

    // Nothing of the batch exists: the existing queue is unchanged and the new one was
    // never made.
    assert_eq!(server.counts("batch-a").await, before_a);
    assert_eq!(before_a["ready"], 1);
    let reply = server.get("/v1/queues/batch-b").await;
    assert_error(&reply, 404, "not_found", None);

    // The same batch without the bad job goes in whole.
    let ids = server
        .enqueue_batch(vec![spec("batch-a"), spec("batch-b")])
        .await;
    assert_eq!(ids.len(), 2);
    assert_eq!(server.counts("batch-a").await["ready"], 2);
    assert_eq!(server.counts("batch-b").await["ready"], 1);
    server.stop().await;
}

// ---- limits -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_at_the_limit_is_accepted_and_one_byte_over_is_413_payload_too_large() {
    let (_dir, server) = fresh().await;
    // A JSON string payload of n characters is n + 2 bytes as sent.
    let at_limit = "a".repeat(limits::PAYLOAD_BYTES_MAX - 2);
    let id = server
        .enqueue(json!({ "queue": "big", "kind": "k", "payload": at_limit }))
        .await;
    assert_eq!(server.job(&id).await["state"], "ready");

    let over = "a".repeat(limits::PAYLOAD_BYTES_MAX - 1);
    let reply = server
        .post(
            "/v1/jobs",
            &json!({ "queue": "big", "kind": "k", "payload": over }),
        )
        .await;
    assert_error(&reply, 413, "payload_too_large", Some("payload"));

    let reply = server
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [spec("big"), { "queue": "big", "kind": "k", "payload": over }] }),
        )
        .await;
    assert_error(&reply, 413, "payload_too_large", Some("jobs[1].payload"));
    assert_eq!(server.counts("big").await["ready"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_one_over_the_length_limit_is_413_batch_too_large() {
    let (_dir, server) = fresh().await;
    let jobs: Vec<Value> = (0..=limits::ENQUEUE_BATCH_LEN_MAX)
        .map(|_| json!({ "queue": "many", "kind": "k" }))
        .collect();
    let reply = server
        .post("/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await;
    assert_error(&reply, 413, "batch_too_large", Some("jobs"));
    let reply = server.get("/v1/queues/many").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_one_byte_over_the_limit_is_413_request_too_large() {
    let (_dir, server) = fresh().await;
    let prefix = br#"{"queue":"q","kind":"k","payload":""#;
    let suffix = br#""}"#;
    let filler = limits::REQUEST_BYTES_MAX + 1 - prefix.len() - suffix.len();
    let mut body = Vec::with_capacity(limits::REQUEST_BYTES_MAX + 1);
    body.extend_from_slice(prefix);
    body.resize(prefix.len() + filler, b'a');
    body.extend_from_slice(suffix);
    assert_eq!(body.len(), limits::REQUEST_BYTES_MAX + 1);
    let reply = server.post_bytes("/v1/jobs", body).await;
    assert_error(&reply, 413, "request_too_large", None);
    let reply = server.get("/v1/queues/q").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_max_jobs_and_wait_ms_one_over_their_limits_are_400_with_the_field_path() {
    let (_dir, server) = fresh().await;
    server.enqueue(spec("lim")).await;
    let reply = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["lim"], "max_jobs": limits::LEASE_BATCH_LEN_MAX + 1 }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("max_jobs"));
    let reply = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["lim"], "wait_ms": limits::LONG_POLL_WAIT_MS_MAX + 1 }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("wait_ms"));
    // Neither leased anything.
    assert_eq!(server.counts("lim").await["ready"], 1);
    assert_eq!(server.counts("lim").await["leased"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_worker_name_one_over_its_limit_is_400() {
    let (_dir, server) = fresh().await;
    server.enqueue(spec("worker")).await;
    let worker = "w".repeat(limits::WORKER_BYTES_MAX + 1);
    let reply = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["worker"], "worker": worker }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("worker"));
    let worker = "w".repeat(limits::WORKER_BYTES_MAX);
    let (status, body) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["worker"], "worker": worker }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["jobs"][0]["id"].as_str().expect("a job leased");
    assert_eq!(
        server.job(id).await["history"][0]["worker"],
        worker.as_str()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_that_are_too_long_or_have_a_bad_character_are_400() {
    let (_dir, server) = fresh().await;
    let longest = "q".repeat(limits::QUEUE_NAME_BYTES_MAX);
    server.enqueue(spec(&longest)).await;

    let too_long = "q".repeat(limits::QUEUE_NAME_BYTES_MAX + 1);
    let reply = server.post("/v1/jobs", &spec(&too_long)).await;
    assert_error(&reply, 400, "invalid_request", Some("queue"));
    for bad in ["has space", "slash/y", "ünï", ""] {
        let reply = server.post("/v1/jobs", &spec(bad)).await;
        assert_error(&reply, 400, "invalid_request", Some("queue"));
    }
    let reply = server
        .post("/v1/lease", &json!({ "queues": ["ok", too_long] }))
        .await;
    assert_error(&reply, 400, "invalid_request", Some("queues[1]"));

    let (status, body) = server.get("/v1/queues").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, vec![longest.as_str()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_one_over_the_limit_is_400() {
    let (_dir, server) = fresh().await;
    let mut job = spec("att");
    job["max_attempts"] = json!(limits::MAX_ATTEMPTS_MAX);
    server.enqueue(job.clone()).await;
    job["max_attempts"] = json!(limits::MAX_ATTEMPTS_MAX + 1);
    let reply = server.post("/v1/jobs", &job).await;
    assert_error(&reply, 400, "invalid_request", Some("max_attempts"));
    assert_eq!(server.counts("att").await["ready"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_retry_at_more_than_a_year_ahead_are_400_and_change_nothing() {
    let (_dir, server) = fresh().await;
    let mut job = spec("far");
    job["delay_ms"] = json!(limits::DELAY_MS_MAX + 1);
    let reply = server.post("/v1/jobs", &job).await;
    assert_error(&reply, 400, "invalid_request", Some("delay_ms"));
    let id = server.enqueue(spec("far")).await;
    let (_, lease_id) = server.lease_one("far").await;
    // Two seconds past the limit, so the request's own travel time cannot bring it under.
    let too_far = sluice_proto::rfc3339::format_ms(now_ms() + limits::DELAY_MS_MAX as i64 + 2_000);
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "retry_at": too_far }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("retry_at"));
    let view = server.job(&id).await;
    assert_eq!(view["state"], "leased");
    assert_eq!(view["lease"]["lease_id"], lease_id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_fail_batches_one_over_the_limit_are_413_batch_too_large() {
    let (_dir, server) = fresh().await;
    let id = sluice_proto::ids::encode(1);
    let acks: Vec<Value> = (0..=limits::ACK_BATCH_LEN_MAX)
        .map(|_| json!({ "id": id, "lease_id": id }))
        .collect();
    let reply = server.post("/v1/ack", &json!({ "acks": acks })).await;
    assert_error(&reply, 413, "batch_too_large", Some("acks"));
    let fails: Vec<Value> = (0..=limits::ACK_BATCH_LEN_MAX)
        .map(|_| json!({ "id": id, "lease_id": id }))
        .collect();
    let reply = server.post("/v1/fail", &json!({ "fails": fails })).await;
    assert_error(&reply, 413, "batch_too_large", Some("fails"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_in_the_error_format() {
    let (_dir, server) = fresh().await;
    for body in [
        &b"{\"queue\":"[..],
        b"not json",
        b"",
        b"{\"queue\":\"q\",\"kind\":\"k\"} trailing",
    ] {
        let reply = server.post_bytes("/v1/jobs", body.to_vec()).await;
        assert_error(&reply, 400, "invalid_request", None);
    }
    // A wrong type names the field.
    let reply = server
        .post(
            "/v1/jobs",
            &json!({ "queue": "q", "kind": "k", "priority": "high" }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("priority"));
    let reply = server.get("/v1/queues/q").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_field_is_400_with_the_path_of_the_field() {
    let (_dir, server) = fresh().await;
    let reply = server
        .post(
            "/v1/jobs",
            &json!({ "queue": "q", "kind": "k", "bogus": 1 }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("bogus"));

    let reply = server
        .post(
            "/v1/jobs/batch",
            &json!({ "jobs": [spec("q"), { "queue": "q", "kind": "k", "prio": 3 }] }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("jobs[1].prio"));

    let reply = server
        .post("/v1/lease", &json!({ "queues": ["q"], "max_job": 2 }))
        .await;
    assert_error(&reply, 400, "invalid_request", Some("max_job"));
    server.stop().await;
}

// ---- lease --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_takes_up_to_max_jobs_across_queues_highest_priority_first() {
    let (_dir, server) = fresh().await;
    let with_priority = |queue: &str, priority: i16| {
        let mut job = spec(queue);
        job["priority"] = json!(priority);
        job
    };
    let a_low = server.enqueue(with_priority("prio-a", 0)).await;
    let a_mid = server.enqueue(with_priority("prio-a", 5)).await;
    let b_high = server.enqueue(with_priority("prio-b", 10)).await;
    let b_neg = server.enqueue(with_priority("prio-b", -1)).await;
    let c_mid = server.enqueue(with_priority("prio-c", 5)).await;
    let elsewhere = server.enqueue(with_priority("prio-other", 100)).await;

    let queues = ["prio-a", "prio-b", "prio-c"];
    let first = server.lease(&queues, 3).await;
    let ids: Vec<&str> = first.iter().filter_map(|j| j["id"].as_str()).collect();
    // Equal priorities go in enqueue order.
    assert_eq!(ids, vec![b_high.as_str(), a_mid.as_str(), c_mid.as_str()]);
    for job in &first {
        assert_eq!(job["attempt"], 1);
        assert!(job["lease_id"].is_string());
        assert!(time_ms(&job["lease_expires_at"]) > now_ms());
    }

    let rest = server.lease(&queues, 10).await;
    let ids: Vec<&str> = rest.iter().filter_map(|j| j["id"].as_str()).collect();
    assert_eq!(ids, vec![a_low.as_str(), b_neg.as_str()]);
    assert!(server.lease(&queues, 10).await.is_empty());

    assert_eq!(server.job(&elsewhere).await["state"], "ready");
    assert_eq!(server.job(&b_high).await["state"], "leased");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_lease_returns_a_job_enqueued_while_it_waits_well_before_wait_ms() {
    let (_dir, server) = fresh().await;
    let client = server.client.clone();
    let url = server.url("/v1/lease");
    let started = Instant::now();
    let lease = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({ "queues": ["poll"], "wait_ms": 5_000 }))
            .send()
            .await
            .expect("lease sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("lease reply is JSON");
        (status, body, Instant::now())
    });
    // Give the lease time to reach the server and park, so the enqueue below is what
    // wakes it. The check that it has not answered yet is part of the test: an empty
    // queue must not answer a long-poll at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !lease.is_finished(),
        "a long-poll on an empty queue answered at once"
    );

    let id = server.enqueue(spec("poll")).await;
    let enqueued = Instant::now();
    let (status, body, answered) = lease.await.expect("lease task");
    assert_eq!(status, 200, "{body}");
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["id"], id.as_str());
    let after_enqueue = answered.saturating_duration_since(enqueued);
    assert!(
        after_enqueue < Duration::from_millis(1_500),
        "lease answered {after_enqueue:?} after the enqueue"
    );
    assert!(started.elapsed() < Duration::from_millis(4_000));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_lease_on_an_empty_queue_returns_empty_when_wait_ms_passes() {
    let (_dir, server) = fresh().await;
    let started = Instant::now();
    let (status, body) = server
        .post("/v1/lease", &json!({ "queues": ["idle"], "wait_ms": 300 }))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"], json!([]));
    assert!(
        elapsed >= Duration::from_millis(300),
        "returned after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(3_000),
        "returned after {elapsed:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_lease_returns_a_delayed_job_when_it_comes_due() {
    let (_dir, server) = fresh().await;
    let mut job = spec("delayed");
    job["delay_ms"] = json!(500);
    let id = server.enqueue(job).await;
    let view = server.job(&id).await;
    assert_eq!(view["state"], "scheduled");
    let run_at = time_ms(&view["run_at"]);
    assert!(server.lease(&["delayed"], 1).await.is_empty());

    let started = Instant::now();
    let (status, body) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["delayed"], "wait_ms": 5_000 }),
        )
        .await;
    let answered_ms = now_ms();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"][0]["id"], id.as_str(), "{body}");
    assert!(answered_ms >= run_at, "leased before its run_at");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "a job due in 0.5 s took {:?} to lease",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_parked_long_poll_at_once_with_no_jobs() {
    let (_dir, server) = fresh().await;
    let client = server.client.clone();
    let url = server.url("/v1/lease");
    let lease = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({ "queues": ["quiet"], "wait_ms": limits::LONG_POLL_WAIT_MS_MAX }))
            .send()
            .await
            .expect("lease sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("lease reply is JSON");
        (status, body)
    });
    // Let the lease park (and check it did) before stopping the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!lease.is_finished(), "the long-poll answered at once");
    let stopping = Instant::now();
    server.stop().await;
    let (status, body) = lease.await.expect("lease task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"], json!([]));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for a long-poll",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_and_leases_lose_no_job_and_lease_none_twice() {
    let (_dir, server) = fresh().await;
    let enqueues = (0..50).map(|i| {
        let client = server.client.clone();
        let url = server.url("/v1/jobs");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({ "queue": "race", "kind": "k", "payload": i }))
                .send()
                .await
                .expect("enqueue sent");
            assert_eq!(response.status(), 201);
            let body: Value = response.json().await.expect("JSON");
            body["id"].as_str().expect("id").to_owned()
        })
    });
    let mut enqueued = Vec::new();
    for task in enqueues.collect::<Vec<_>>() {
        enqueued.push(task.await.expect("enqueue task"));
    }
    enqueued.sort();
    enqueued.dedup();
    assert_eq!(enqueued.len(), 50, "every enqueue got its own id");
    assert_eq!(server.counts("race").await["ready"], 50);

    // Eight workers lease 3 at a time until the queue is empty.
    let workers = (0..8).map(|_| {
        let client = server.client.clone();
        let url = server.url("/v1/lease");
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let response = client
                    .post(&url)
                    .json(&json!({ "queues": ["race"], "max_jobs": 3 }))
                    .send()
                    .await
                    .expect("lease sent");
                let body: Value = response.json().await.expect("JSON");
                let jobs = body["jobs"].as_array().expect("jobs").clone();
                if jobs.is_empty() {
                    return got;
                }
                got.extend(
                    jobs.iter()
                        .map(|j| j["id"].as_str().expect("id").to_owned()),
                );
            }
        })
    });
    let mut leased = Vec::new();
    for task in workers.collect::<Vec<_>>() {
        leased.extend(task.await.expect("worker task"));
    }
    leased.sort();
    assert_eq!(leased, enqueued, "each job leased exactly once");
    let counts = server.counts("race").await;
    assert_eq!(counts["leased"], 50);
    assert_eq!(counts["ready"], 0);
    server.stop().await;
}

// ---- heartbeat, ack, fail -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_extend_the_lease_past_its_timeout_and_record_progress() {
    let (_dir, server) = fresh().await;
    let mut job = spec("hb");
    job["timeout_ms"] = json!(1_000);
    let id = server.enqueue(job).await;
    let leased = server.lease(&["hb"], 1).await;
    let lease_id = leased[0]["lease_id"].as_str().expect("lease_id").to_owned();
    let first_expires_ms = time_ms(&leased[0]["lease_expires_at"]);

    // A worker that heartbeats every 200 ms keeps a 1000 ms lease for 1.6 s.
    let mut last_expires_ms = first_expires_ms;
    let mut done = 0;
    while now_ms() < first_expires_ms + 600 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        done += 1;
        let (status, body) = server
            .post(
                &format!("/v1/jobs/{id}/heartbeat"),
                &json!({ "lease_id": lease_id, "progress": { "done": done } }),
            )
            .await;
        assert_eq!(status, 200, "heartbeat: {body}");
        let expires_ms = time_ms(&body["lease_expires_at"]);
        assert!(
            expires_ms > last_expires_ms,
            "heartbeat did not extend the lease: {expires_ms} <= {last_expires_ms}"
        );
        last_expires_ms = expires_ms;
    }

    let view = server.job(&id).await;
    assert!(
        now_ms() > first_expires_ms,
        "the first lease time has passed"
    );
    assert_eq!(view["state"], "leased", "{view}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["lease"]["lease_id"], lease_id.as_str());
    assert_eq!(time_ms(&view["lease"]["expires_at"]), last_expires_ms);
    assert_eq!(view["progress"], json!({ "done": done }));
    assert_eq!(view["history"].as_array().map(Vec::len), Some(1));

    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_ack_and_fail_with_a_wrong_lease_id_are_409_stale_lease_and_change_nothing() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("stale")).await;
    let ready = server.enqueue(spec("stale-ready")).await;
    let (leased_id, lease_id) = server.lease_one("stale").await;
    assert_eq!(leased_id, id);
    let wrong = other_lease_id(&lease_id);
    let before = server.job(&id).await;
    let ready_before = server.job(&ready).await;

    let reply = server
        .post(
            &format!("/v1/jobs/{id}/heartbeat"),
            &json!({ "lease_id": wrong }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let reply = server
        .post(&format!("/v1/jobs/{id}/ack"), &json!({ "lease_id": wrong }))
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": wrong, "error": "boom" }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    assert_eq!(server.job(&id).await, before);

    // A job that is not leased has no lease to match.
    let reply = server
        .post(
            &format!("/v1/jobs/{ready}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    assert_eq!(server.job(&ready).await, ready_before);

    // A lease id that is not an id at all is bad input, not a conflict.
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": "nope" }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("lease_id"));

    // An unknown job is 404.
    let unknown = sluice_proto::ids::encode(7);
    let reply = server
        .post(
            &format!("/v1/jobs/{unknown}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 404, "not_found", None);
    let reply = server.get(&format!("/v1/jobs/{unknown}")).await;
    assert_error(&reply, 404, "not_found", None);

    // The right lease still works.
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_makes_the_job_succeeded_with_its_attempt_in_history() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("ack")).await;
    let (_, lease_id) = server.lease_one("ack").await;
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "succeeded");

    let job = server.job(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 1);
    assert!(job["lease"].is_null(), "a finished job has no lease: {job}");
    assert!(job["finished_at"].is_string());
    let history = job["history"].as_array().expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(history[0]["worker"], "test-worker");
    assert!(history[0]["finished_at"].is_string());

    // A second ack under the same lease is stale.
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let counts = server.counts("ack").await;
    assert_eq!(counts["succeeded"], 1);
    assert_eq!(counts["leased"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_makes_the_job_failed_with_a_retry_at_and_the_error_in_history() {
    let (_dir, server) = fresh().await;
    let mut job = spec("fail");
    job["backoff"] = json!({ "type": "fixed", "delay_ms": 60_000 });
    let id = server.enqueue(job).await;
    let (_, lease_id) = server.lease_one("fail").await;
    let failed_at = now_ms();
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "error": "smtp timeout" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "failed");
    let retry_at = time_ms(&body["retry_at"]);
    assert!(
        (failed_at + 59_000..=now_ms() + 60_000).contains(&retry_at),
        "retry_at {retry_at} is not 60 s after the fail at {failed_at}"
    );

    let view = server.job(&id).await;
    assert_eq!(view["state"], "failed");
    assert_eq!(view["attempts"], 1);
    assert_eq!(time_ms(&view["run_at"]), retry_at);
    let history = view["history"].as_array().expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["outcome"], "failed");
    assert_eq!(history[0]["error"], "smtp timeout");
    // It does not run before its retry time.
    assert!(server.lease(&["fail"], 1).await.is_empty());
    assert_eq!(server.counts("fail").await["failed"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_with_an_explicit_retry_at_in_the_past_makes_the_job_ready_again() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("fail-now")).await;
    let (_, lease_id) = server.lease_one("fail-now").await;
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "error": "x", "retry_at": "2000-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let leased = server.lease(&["fail-now"], 1).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0]["id"], id.as_str());
    assert_eq!(leased[0]["attempt"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_of_the_last_attempt_makes_the_job_dead_and_retry_makes_it_ready() {
    let (_dir, server) = fresh().await;
    let mut job = spec("dead");
    job["max_attempts"] = json!(1);
    let id = server.enqueue(job).await;
    let (_, lease_id) = server.lease_one("dead").await;
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "error": "fatal" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "dead");
    assert!(
        body["retry_at"].is_null(),
        "a dead job has no retry: {body}"
    );
    let view = server.job(&id).await;
    assert_eq!(view["state"], "dead");
    assert_eq!(view["history"][0]["error"], "fatal");
    assert_eq!(server.counts("dead").await["dead"], 1);
    assert!(server.lease(&["dead"], 1).await.is_empty());

    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "ready");
    assert_eq!(body["attempts"], 0);
    let view = server.job(&id).await;
    assert_eq!(view["state"], "ready");
    let counts = server.counts("dead").await;
    assert_eq!(
        (counts["dead"].clone(), counts["ready"].clone()),
        (json!(0), json!(1))
    );
    let leased = server.lease(&["dead"], 1).await;
    assert_eq!(leased[0]["id"], id.as_str());
    assert_eq!(leased[0]["attempt"], 1);

    // Only dead, cancelled and failed jobs can be retried.
    let reply = server
        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_error(&reply, 422, "invalid_state", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_with_progress_over_the_limit_is_413_and_keeps_the_lease() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("progress")).await;
    let (_, lease_id) = server.lease_one("progress").await;
    let before = server.job(&id).await;
    let progress = "p".repeat(limits::PROGRESS_BYTES_MAX);
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/heartbeat"),
            &json!({ "lease_id": lease_id, "progress": progress }),
        )
        .await;
    assert_error(&reply, 413, "progress_too_large", None);
    assert_eq!(server.job(&id).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_failed_job_runs_it_now_with_its_attempts_kept() {
    let (_dir, server) = fresh().await;
    let mut job = spec("retry-failed");
    job["backoff"] = json!({ "type": "fixed", "delay_ms": 600_000 });
    let id = server.enqueue(job).await;
    let (_, lease_id) = server.lease_one("retry-failed").await;
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200);
    assert!(server.lease(&["retry-failed"], 1).await.is_empty());

    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "ready");
    assert_eq!(body["attempts"], 1);
    assert!(time_ms(&body["run_at"]) <= now_ms());
    let leased = server.lease(&["retry-failed"], 1).await;
    assert_eq!(leased[0]["id"], id.as_str());
    assert_eq!(leased[0]["attempt"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_attempts_up_to_its_limit() {
    let (_dir, server) = fresh().await;
    let mut job = spec("history");
    job["max_attempts"] = json!(limits::HISTORY_LEN_MAX + 5);
    let id = server.enqueue(job).await;
    let runs = limits::HISTORY_LEN_MAX + 2;
    for attempt in 1..=runs {
        let leased = server.lease(&["history"], 1).await;
        assert_eq!(leased[0]["attempt"], attempt);
        let lease_id = leased[0]["lease_id"].as_str().expect("lease_id");
        let (status, body) = server
            .post(
                &format!("/v1/jobs/{id}/fail"),
                &json!({ "lease_id": lease_id, "error": format!("run {attempt}"),
                         "retry_at": "2000-01-01T00:00:00Z" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let view = server.job(&id).await;
    assert_eq!(view["attempts"], runs);
    let history = view["history"].as_array().expect("history");
    assert_eq!(history.len(), limits::HISTORY_LEN_MAX);
    assert_eq!(history[0]["attempt"], runs - limits::HISTORY_LEN_MAX + 1);
    assert_eq!(history[limits::HISTORY_LEN_MAX - 1]["attempt"], runs);
    assert_eq!(
        history[limits::HISTORY_LEN_MAX - 1]["error"],
        format!("run {runs}")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_error_over_the_limit_is_cut_at_a_char_boundary_not_refused() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("long-error")).await;
    let (_, lease_id) = server.lease_one("long-error").await;
    // One ASCII byte then two-byte characters: byte ERROR_BYTES_MAX falls inside one.
    let error = format!("x{}", "é".repeat(limits::ERROR_BYTES_MAX));
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "error": error }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let view = server.job(&id).await;
    let kept = view["history"][0]["error"].as_str().expect("error kept");
    assert_eq!(kept.len(), limits::ERROR_BYTES_MAX - 1);
    assert!(error.starts_with(kept));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_are_returned_in_utc_with_milliseconds_whatever_offset_was_sent() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("times")).await;
    let (_, lease_id) = server.lease_one("times").await;
    // A day ahead (within the one-year limit), on a half second, written at +02:00.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let at = (now_ms / 1000 + 86_400) * 1000 + 500;
    let expected = sluice_proto::rfc3339::format_ms(at);
    assert!(expected.ends_with(".500Z"), "{expected}");
    let at_plus_two_hours =
        sluice_proto::rfc3339::format_ms(at + 2 * 3_600_000).replace(".500Z", ".5+02:00");
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease_id, "retry_at": at_plus_two_hours }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retry_at"], expected);
    let view = server.job(&id).await;
    assert_eq!(view["run_at"], expected);
    server.stop().await;
}

// ---- cancel -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_ready_job_makes_it_cancelled_and_unleasable() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("cancel")).await;
    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(server.job(&id).await["state"], "cancelled");
    assert!(server.lease(&["cancel"], 1).await.is_empty());
    let counts = server.counts("cancel").await;
    assert_eq!(counts["cancelled"], 1);
    assert_eq!(counts["ready"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_leased_job_makes_the_workers_ack_409() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("cancel-leased")).await;
    let (_, lease_id) = server.lease_one("cancel-leased").await;
    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");

    let reply = server
        .post(
            &format!("/v1/jobs/{id}/heartbeat"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let view = server.job(&id).await;
    assert_eq!(view["state"], "cancelled");
    assert_eq!(view["history"][0]["outcome"], "cancelled");
    assert_eq!(server.counts("cancel-leased").await["leased"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_succeeded_job_is_422_and_changes_nothing() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("cancel-done")).await;
    let (_, lease_id) = server.lease_one("cancel-done").await;
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200);
    let before = server.job(&id).await;
    let reply = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_error(&reply, 422, "invalid_state", None);
    assert_eq!(server.job(&id).await, before);
    server.stop().await;
}

// ---- lease expiry -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_puts_the_job_back_to_ready_with_the_attempt_counted() {
    let (_dir, server) = fresh().await;
    let mut job = spec("expire");
    job["timeout_ms"] = json!(1_000);
    let id = server.enqueue(job).await;
    let (_, lease_id) = server.lease_one("expire").await;

    let view = server
        .wait_for_job(&id, "lease expiry", |j| j["state"] != "leased")
        .await;
    assert_eq!(view["state"], "ready", "{view}");
    assert_eq!(view["attempts"], 1);
    assert!(view["lease"].is_null());
    assert_eq!(view["history"][0]["outcome"], "expired");

    // The old lease is stale; the next lease is attempt 2.
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    let leased = server.lease(&["expire"], 1).await;
    assert_eq!(leased[0]["id"], id.as_str());
    assert_eq!(leased[0]["attempt"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_of_the_last_attempt_makes_the_job_dead() {
    let (_dir, server) = fresh().await;
    let mut job = spec("expire-dead");
    job["timeout_ms"] = json!(1_000);
    job["max_attempts"] = json!(1);
    let id = server.enqueue(job).await;
    server.lease_one("expire-dead").await;

    let view = server
        .wait_for_job(&id, "lease expiry", |j| j["state"] != "leased")
        .await;
    assert_eq!(view["state"], "dead", "{view}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["history"][0]["outcome"], "expired");
    let counts = server.counts("expire-dead").await;
    assert_eq!(counts["dead"], 1);
    assert_eq!(counts["leased"], 0);
    server.stop().await;
}

// ---- batch ack / fail ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ack_with_one_stale_item_applies_the_others_and_reports_each() {
    let (_dir, server) = fresh().await;
    let ids = server
        .enqueue_batch(vec![spec("bulk"), spec("bulk"), spec("bulk")])
        .await;
    let leased = server.lease(&["bulk"], 3).await;
    assert_eq!(leased.len(), 3);
    let lease_id = leased[0]["lease_id"].as_str().expect("lease_id").to_owned();
    let stale = other_lease_id(&lease_id);

    let (status, body) = server
        .post(
            "/v1/ack",
            &json!({ "acks": [
                { "id": ids[0], "lease_id": lease_id },
                { "id": ids[1], "lease_id": stale },
                { "id": ids[2], "lease_id": lease_id },
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["id"], ids[0].as_str());
    assert_eq!(results[0]["state"], "succeeded");
    assert!(results[0]["error"].is_null());
    assert_eq!(results[1]["id"], ids[1].as_str());
    assert_eq!(results[1]["error"]["code"], "stale_lease");
    assert!(results[1]["state"].is_null());
    assert_eq!(results[2]["state"], "succeeded");

    assert_eq!(server.job(&ids[0]).await["state"], "succeeded");
    assert_eq!(server.job(&ids[1]).await["state"], "leased");
    assert_eq!(server.job(&ids[2]).await["state"], "succeeded");
    let counts = server.counts("bulk").await;
    assert_eq!(counts["succeeded"], 2);
    assert_eq!(counts["leased"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_fail_with_one_stale_item_applies_the_others_and_reports_each() {
    let (_dir, server) = fresh().await;
    let mut job = spec("bulk-fail");
    job["backoff"] = json!({ "type": "fixed", "delay_ms": 60_000 });
    let mut last = job.clone();
    last["max_attempts"] = json!(1);
    let ids = server.enqueue_batch(vec![job.clone(), job, last]).await;
    let leased = server.lease(&["bulk-fail"], 3).await;
    assert_eq!(leased.len(), 3);
    let lease_id = leased[0]["lease_id"].as_str().expect("lease_id").to_owned();
    let stale = other_lease_id(&lease_id);

    let (status, body) = server
        .post(
            "/v1/fail",
            &json!({ "fails": [
                { "id": ids[0], "lease_id": lease_id, "error": "e0" },
                { "id": ids[1], "lease_id": stale, "error": "e1" },
                { "id": ids[2], "lease_id": lease_id, "error": "e2" },
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["state"], "failed");
    assert!(results[0]["retry_at"].is_string());
    assert_eq!(results[1]["error"]["code"], "stale_lease");
    assert_eq!(results[2]["state"], "dead");

    let first = server.job(&ids[0]).await;
    assert_eq!(first["state"], "failed");
    assert_eq!(first["history"][0]["error"], "e0");
    let second = server.job(&ids[1]).await;
    assert_eq!(second["state"], "leased");
    assert!(second["history"][0]["error"].is_null());
    assert_eq!(server.job(&ids[2]).await["state"], "dead");
    server.stop().await;
}

// ---- queues -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_shows_counts_per_state() {
    let (_dir, server) = fresh().await;
    let q = "counts";
    let mut retrying = spec(q);
    retrying["backoff"] = json!({ "type": "fixed", "delay_ms": 60_000 });
    let mut last = spec(q);
    last["max_attempts"] = json!(1);
    let mut later = spec(q);
    later["delay_ms"] = json!(60_000);

    // Leases take the oldest ready job first, so each lease below picks the job named.
    let to_ack = server.enqueue(spec(q)).await;
    let (id, lease) = server.lease_one(q).await;
    assert_eq!(id, to_ack);
    server.ack(&id, &lease).await;
    let to_fail = server.enqueue(retrying).await;
    let (id, lease) = server.lease_one(q).await;
    assert_eq!(id, to_fail);
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease }),
        )
        .await;
    assert_eq!(status, 200);
    let to_kill = server.enqueue(last).await;
    let (id, lease) = server.lease_one(q).await;
    assert_eq!(id, to_kill);
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{id}/fail"),
            &json!({ "lease_id": lease }),
        )
        .await;
    assert_eq!(status, 200);
    let to_hold = server.enqueue(spec(q)).await;
    let (id, _) = server.lease_one(q).await;
    assert_eq!(id, to_hold);
    let to_cancel = server.enqueue(spec(q)).await;
    let (status, _) = server
        .post(&format!("/v1/jobs/{to_cancel}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    server.enqueue(later).await;
    server.enqueue(spec(q)).await;
    server.enqueue(spec(q)).await;
    server.enqueue(spec("counts-other")).await;

    let expected = json!({
        "scheduled": 1, "ready": 2, "leased": 1, "succeeded": 1,
        "failed": 1, "dead": 1, "cancelled": 1,
    });
    let (status, body) = server.get("/v1/queues").await;
    assert_eq!(status, 200, "{body}");
    let queues = body["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, vec!["counts", "counts-other"]);
    assert_eq!(queues[0]["counts"], expected);
    assert_eq!(queues[0]["paused"], false);
    assert_eq!(queues[1]["counts"]["ready"], 1);
    assert!(body["next_cursor"].is_null());
    assert_eq!(server.counts(q).await, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_queue_leases_nothing_until_resumed() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("pausable")).await;
    let (status, body) = server.post("/v1/queues/pausable/pause", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true);
    assert_eq!(server.get("/v1/queues/pausable").await.1["paused"], true);
    assert!(server.lease(&["pausable"], 10).await.is_empty());
    // Enqueue still works while paused.
    server.enqueue(spec("pausable")).await;
    assert_eq!(server.counts("pausable").await["ready"], 2);

    let (status, body) = server.post("/v1/queues/pausable/resume", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], false);
    let leased = server.lease(&["pausable"], 10).await;
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0]["id"], id.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_on_a_paused_queue_is_woken_by_resume() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("wake")).await;
    let (status, _) = server.post("/v1/queues/wake/pause", &json!({})).await;
    assert_eq!(status, 200);
    let client = server.client.clone();
    let url = server.url("/v1/lease");
    let lease = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({ "queues": ["wake"], "wait_ms": 5_000 }))
            .send()
            .await
            .expect("lease sent");
        let body: Value = response.json().await.expect("lease reply is JSON");
        (body, Instant::now())
    });
    // As in the enqueue long-poll test: let the lease park, and check that it did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!lease.is_finished(), "a paused queue answered a long-poll");
    let (status, _) = server.post("/v1/queues/wake/resume", &json!({})).await;
    assert_eq!(status, 200);
    let resumed = Instant::now();
    let (body, answered) = lease.await.expect("lease task");
    assert_eq!(body["jobs"][0]["id"], id.as_str(), "{body}");
    assert!(answered.saturating_duration_since(resumed) < Duration::from_millis(1_500));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_ready_jobs_and_keeps_leased_ones() {
    let (_dir, server) = fresh().await;
    let ids = server
        .enqueue_batch(vec![
            spec("purge"),
            spec("purge"),
            spec("purge"),
            spec("purge"),
        ])
        .await;
    let (leased_id, lease_id) = server.lease_one("purge").await;
    assert_eq!(leased_id, ids[0]);

    let (status, body) = server.post("/v1/queues/purge/purge", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"], 3);
    let counts = server.counts("purge").await;
    assert_eq!(counts["ready"], 0);
    assert_eq!(counts["leased"], 1);
    for id in &ids[1..] {
        let reply = server.get(&format!("/v1/jobs/{id}")).await;
        assert_error(&reply, 404, "not_found", None);
    }
    // The leased job runs on and can be acked.
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{leased_id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.counts("purge").await["succeeded"], 1);

    let reply = server.post("/v1/queues/nope/purge", &json!({})).await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_pages_by_name_with_a_cursor() {
    let (_dir, server) = fresh().await;
    for queue in ["q-c", "q-a", "q-e", "q-b", "q-d"] {
        server.enqueue(spec(queue)).await;
    }
    let (status, first) = server.get("/v1/queues?limit=2").await;
    assert_eq!(status, 200, "{first}");
    let names = |page: &Value| -> Vec<String> {
        page["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .filter_map(|q| q["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(names(&first), vec!["q-a", "q-b"]);
    let cursor = first["next_cursor"].as_str().expect("a next_cursor");
    let (_, second) = server
        .get(&format!("/v1/queues?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(names(&second), vec!["q-c", "q-d"]);
    let cursor = second["next_cursor"].as_str().expect("a next_cursor");
    let (_, third) = server
        .get(&format!("/v1/queues?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(names(&third), vec!["q-e"]);
    assert!(third.get("next_cursor").is_none(), "{third}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_queue_is_404() {
    let (_dir, server) = fresh().await;
    let reply = server.get("/v1/queues/missing").await;
    assert_error(&reply, 404, "not_found", None);
    let reply = server.get("/v1/queues/missing/jobs").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_listing_pages_through_250_jobs_with_a_cursor_in_id_order() {
    let (_dir, server) = fresh().await;
    // A job in another state, older than all the others, must not show in the listing.
    let leased = server.enqueue(spec("pages")).await;
    assert_eq!(server.lease_one("pages").await.0, leased);
    let ids = server
        .enqueue_batch((0..250).map(|_| spec("pages")).collect())
        .await;
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids of one batch sort in enqueue order");

    let mut seen: Vec<String> = Vec::new();
    let mut page_lens = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/queues/pages/jobs?state=ready&limit=100&cursor={c}"),
            None => "/v1/queues/pages/jobs?state=ready&limit=100".to_owned(),
        };
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{body}");
        let jobs = body["jobs"].as_array().expect("jobs");
        page_lens.push(jobs.len());
        for job in jobs {
            assert_eq!(job["state"], "ready");
            seen.push(job["id"].as_str().expect("id").to_owned());
        }
        match body.get("next_cursor") {
            Some(next) => cursor = Some(next.as_str().expect("cursor").to_owned()),
            None => break,
        }
        assert!(page_lens.len() < 10, "paging does not end");
    }
    assert_eq!(page_lens, vec![100, 100, 50]);
    assert_eq!(seen, ids);

    let (status, body) = server.get("/v1/queues/pages/jobs?state=leased").await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs"][0]["id"], leased.as_str());
    assert!(body.get("next_cursor").is_none());

    let reply = server.get("/v1/queues/pages/jobs?state=sleepy").await;
    assert_error(&reply, 400, "invalid_request", Some("state"));
    let reply = server.get("/v1/queues/pages/jobs?limit=0").await;
    assert_error(&reply, 400, "invalid_request", Some("limit"));
    let reply = server.get("/v1/queues/pages/jobs?cursor=%21%21").await;
    assert_error(&reply, 400, "invalid_request", Some("cursor"));
    server.stop().await;
}

// ---- restart ------------------------------------------------------------------------

/// Puts jobs of one queue into every state; returns their ids and the lease still held.
async fn populate(server: &TestServer, queue: &str) -> (Vec<String>, String) {
    let mut retrying = spec(queue);
    retrying["backoff"] = json!({ "type": "fixed", "delay_ms": 60_000 });
    let mut last = spec(queue);
    last["max_attempts"] = json!(1);
    let mut later = spec(queue);
    later["delay_ms"] = json!(600_000);
    let mut unique = spec(queue);
    unique["unique_key"] = json!("only-one");

    let mut ids = Vec::new();
    for job in [spec(queue), retrying, last] {
        let id = server.enqueue(job).await;
        let (leased, lease) = server.lease_one(queue).await;
        assert_eq!(leased, id);
        let (status, _) = if ids.is_empty() {
            server
                .post(&format!("/v1/jobs/{id}/ack"), &json!({ "lease_id": lease }))
                .await
        } else {
            server
                .post(
                    &format!("/v1/jobs/{id}/fail"),
                    &json!({ "lease_id": lease, "error": "went wrong" }),
                )
                .await
        };
        assert_eq!(status, 200);
        ids.push(id);
    }
    let held = server.enqueue(spec(queue)).await;
    let (leased, held_lease) = server.lease_one(queue).await;
    assert_eq!(leased, held);
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{held}/heartbeat"),
            &json!({ "lease_id": held_lease, "progress": { "pct": 50 } }),
        )
        .await;
    assert_eq!(status, 200);
    ids.push(held);
    let cancelled = server.enqueue(spec(queue)).await;
    let (status, _) = server
        .post(&format!("/v1/jobs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    ids.push(cancelled);
    ids.push(server.enqueue(later).await);
    ids.push(server.enqueue(unique).await);
    let mut tagged = spec(queue);
    tagged["tags"] = json!(["a", "b"]);
    tagged["priority"] = json!(-3);
    ids.push(server.enqueue(tagged).await);
    (ids, held_lease)
}

async fn views(server: &TestServer, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(server.job(id).await);
    }
    out
}

/// The queue list without each queue's `recent` minute: metrics start afresh with the
/// process (like Prometheus counters), so they are not part of what a restart keeps.
async fn queue_list(server: &TestServer) -> Value {
    let (status, mut body) = server.get("/v1/queues").await;
    assert_eq!(status, 200);
    for queue in body["queues"].as_array_mut().into_iter().flatten() {
        if let Some(queue) = queue.as_object_mut() {
            queue.remove("recent");
        }
    }
    body
}

/// What must hold after a restart: every job reads back identical, queues too, the held
/// lease is still good, unique keys still hold, and new ids come after the old ones.
async fn check_after_restart(
    server: &TestServer,
    queue: &str,
    ids: &[String],
    held_lease: &str,
    jobs_before: &[Value],
    queues_before: &Value,
) {
    assert_eq!(views(server, ids).await, jobs_before);
    assert_eq!(&queue_list(server).await, queues_before);
    assert_eq!(
        server.get(&format!("/v1/queues/{queue}")).await.1["paused"],
        true
    );

    let mut unique = spec(queue);
    unique["unique_key"] = json!("only-one");
    let (status, body) = server.post("/v1/jobs", &unique).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], ids[6].as_str());

    let fresh = server.enqueue(spec(queue)).await;
    assert!(
        ids.iter().all(|old| fresh.as_str() > old.as_str()),
        "new id {fresh} does not sort after the old ones"
    );
    let held = &ids[3];
    let (status, body) = server
        .post(
            &format!("/v1/jobs/{held}/ack"),
            &json!({ "lease_id": held_lease }),
        )
        .await;
    assert_eq!(status, 200, "the lease held across the restart: {body}");
    assert_eq!(body["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_every_job_and_queue_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path()).await;
    let (ids, held_lease) = populate(&server, "restart").await;
    server.enqueue(spec("restart-b")).await;
    let (status, _) = server.post("/v1/queues/restart/pause", &json!({})).await;
    assert_eq!(status, 200);
    let jobs_before = views(&server, &ids).await;
    let queues_before = queue_list(&server).await;
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    check_after_restart(
        &server,
        "restart",
        &ids,
        &held_lease,
        &jobs_before,
        &queues_before,
    )
    .await;
    server.stop().await;

    // A second restart sees the commands of the first run after restart too.
    let server = TestServer::start(dir.path()).await;
    assert_eq!(server.job(&ids[3]).await["state"], "succeeded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_a_periodic_snapshot_keeps_every_job_and_queue_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(dir.path());
    config.snapshot_every_records = 10;
    let server = TestServer::start_with(config.clone()).await;
    assert!(snapshot_files(dir.path()).is_empty());
    // `populate` runs well over 10 commands.
    let (ids, held_lease) = populate(&server, "snap").await;
    let written = wait_until("a periodic snapshot file exists", || async {
        !snapshot_files(dir.path()).is_empty()
    })
    .await;
    assert!(written, "no snapshot-*.snap in {}", dir.path().display());
    // More commands after the periodic snapshot (the shutdown snapshot covers them too).
    server.enqueue(spec("snap-b")).await;
    let (status, _) = server.post("/v1/queues/snap/pause", &json!({})).await;
    assert_eq!(status, 200);
    let jobs_before = views(&server, &ids).await;
    let queues_before = queue_list(&server).await;
    server.stop().await;

    let server = TestServer::start_with(config).await;
    check_after_restart(
        &server,
        "snap",
        &ids,
        &held_lease,
        &jobs_before,
        &queues_before,
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_on_a_copy_of_a_running_servers_data_dir_replays_the_log_to_the_same_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path()).await;
    let (ids, held_lease) = populate(&server, "crash").await;
    server.enqueue(spec("crash-b")).await;
    let (status, _) = server.post("/v1/queues/crash/pause", &json!({})).await;
    assert_eq!(status, 200);
    let jobs_before = views(&server, &ids).await;
    let queues_before = queue_list(&server).await;
    // Every reply above came after its fsync, and no request is in flight: a copy of the
    // files now is what a power cut now would leave. No snapshot exists yet, so the copy
    // can only be rebuilt from the log.
    let image = tempfile::tempdir().expect("temp dir");
    copy_dir(dir.path(), image.path());
    assert!(snapshot_files(image.path()).is_empty());
    server.stop().await;

    let server = TestServer::start(image.path()).await;
    check_after_restart(
        &server,
        "crash",
        &ids,
        &held_lease,
        &jobs_before,
        &queues_before,
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_that_expires_while_the_server_is_down_is_taken_back_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path()).await;
    let mut job = spec("down");
    job["timeout_ms"] = json!(1_000);
    let id = server.enqueue(job).await;
    let (_, lease_id) = server.lease_one("down").await;
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let view = server
        .wait_for_job(&id, "lease expiry after restart", |j| {
            j["state"] != "leased"
        })
        .await;
    assert_eq!(view["state"], "ready", "{view}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["history"][0]["outcome"], "expired");
    let reply = server
        .post(
            &format!("/v1/jobs/{id}/ack"),
            &json!({ "lease_id": lease_id }),
        )
        .await;
    assert_error(&reply, 409, "stale_lease", None);
    server.stop().await;
}

// ---- ack and lease in one round trip ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_with_acks_settles_each_ack_and_leases_the_next_job_in_one_request() {
    let (_dir, server) = fresh().await;
    let first = server.enqueue(spec("next")).await;
    let second = server.enqueue(spec("next")).await;
    let (leased, lease_id) = server.lease_one("next").await;
    assert_eq!(leased, first);
    let (status, body) = server
        .post(
            "/v1/lease",
            &json!({
                "queues": ["next"],
                "acks": [
                    { "id": first, "lease_id": lease_id },
                    { "id": first, "lease_id": other_lease_id(&lease_id) },
                    { "id": "nonsense", "lease_id": lease_id },
                ],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let acks = body["acks"].as_array().expect("acks results");
    assert_eq!(acks.len(), 3, "{body}");
    assert_eq!(acks[0]["state"], "succeeded");
    assert_eq!(acks[1]["error"]["code"], "stale_lease");
    assert_eq!(acks[2]["error"]["code"], "not_found");
    assert_eq!(body["jobs"][0]["id"], second.as_str());
    assert_eq!(server.job(&first).await["state"], "succeeded");
    assert_eq!(server.job(&second).await["state"], "leased");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_with_acks_settles_them_at_once_and_waits_only_for_jobs() {
    let (_dir, server) = fresh().await;
    let id = server.enqueue(spec("poll-ack")).await;
    let (_, lease_id) = server.lease_one("poll-ack").await;
    let request = json!({
        "queues": ["poll-ack"],
        "wait_ms": 5_000,
        "acks": [{ "id": id, "lease_id": lease_id }],
    });
    let poll = {
        let url = server.url("/v1/lease");
        tokio::spawn(async move {
            let reply = reqwest::Client::new()
                .post(url)
                .json(&request)
                .send()
                .await
                .expect("lease answered");
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.expect("JSON reply"))
        })
    };
    // The ack is durable before the poll starts waiting: wait for it to show.
    let acked = wait_until("the ack inside the long-poll to apply", || async {
        server.job(&id).await["state"] == "succeeded"
    })
    .await;
    assert!(acked);
    let next = server.enqueue(spec("poll-ack")).await;
    let (status, body) = poll.await.expect("poll task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acks"][0]["state"], "succeeded", "{body}");
    assert_eq!(body["jobs"][0]["id"], next.as_str(), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_with_acks_one_over_the_batch_limit_is_413_and_leases_nothing() {
    let (_dir, server) = fresh().await;
    server.enqueue(spec("many-acks")).await;
    let id = sluice_proto::ids::encode(1);
    let acks: Vec<Value> = (0..=limits::ACK_BATCH_LEN_MAX)
        .map(|_| json!({ "id": id, "lease_id": id }))
        .collect();
    let reply = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["many-acks"], "acks": acks }),
        )
        .await;
    assert_error(&reply, 413, "batch_too_large", Some("acks"));
    assert_eq!(server.counts("many-acks").await["ready"], 1);
    server.stop().await;
}

// ---- long-poll wake-ups per queue ---------------------------------------------------

async fn poll(
    server: &TestServer,
    queues: &[&str],
    wait_ms: u64,
) -> tokio::task::JoinHandle<Vec<String>> {
    let url = server.url("/v1/lease");
    let body = json!({ "queues": queues, "max_jobs": 1, "wait_ms": wait_ms });
    tokio::spawn(async move {
        let reply: Value = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("lease answered")
            .json()
            .await
            .expect("JSON reply");
        reply["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_str().expect("id").to_owned())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_two_wakes_two_parked_polls_each_taking_one() {
    let (_dir, server) = fresh().await;
    let started = std::time::Instant::now();
    let first = poll(&server, &["wake2"], 10_000).await;
    let second = poll(&server, &["wake2"], 10_000).await;
    let ids = server
        .enqueue_batch(vec![spec("wake2"), spec("wake2")])
        .await;
    let mut got = first.await.expect("first poll");
    got.extend(second.await.expect("second poll"));
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "each poll took one of the two jobs");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "both polls were woken, not left to their 10 s wait: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_on_two_queues_woken_for_one_does_not_swallow_the_wake_up_of_the_other() {
    let (_dir, server) = fresh().await;
    let started = std::time::Instant::now();
    let both = poll(&server, &["wake-a", "wake-b"], 10_000).await;
    let only_b = poll(&server, &["wake-b"], 10_000).await;
    let ids = server
        .enqueue_batch(vec![spec("wake-a"), spec("wake-b")])
        .await;
    let mut got = both.await.expect("poll on a and b");
    let from_b = only_b.await.expect("poll on b");
    assert_eq!(from_b.len(), 1, "the poll on b alone got a job: {from_b:?}");
    got.extend(from_b);
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "no poll was left to its 10 s wait: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

// ---- queue limits ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_are_set_shown_and_validated() {
    let (_dir, server) = fresh().await;
    let (status, body) = server
        .post(
            "/v1/queues/limited/limits",
            &json!({ "concurrency": 2, "rate": { "limit": 100, "per_ms": 60000 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "limited");
    assert_eq!(body["limits"]["concurrency"], 2);
    assert_eq!(body["limits"]["rate"]["limit"], 100);
    assert_eq!(body["limits"]["rate"]["per_ms"], 60000);
    assert_eq!(body["rate_tokens"], 100, "the bucket starts full");
    let (_, body) = server.get("/v1/queues/limited").await;
    assert_eq!(body["limits"]["concurrency"], 2);

    let bad = server
        .post("/v1/queues/limited/limits", &json!({ "concurrency": 0 }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("concurrency"));
    let bad = server
        .post(
            "/v1/queues/limited/limits",
            &json!({ "rate": { "limit": 5, "per_ms": 0 } }),
        )
        .await;
    assert_error(&bad, 400, "invalid_request", Some("rate.per_ms"));
    let bad = server
        .post("/v1/queues/limited/limits", &json!({ "concurency": 2 }))
        .await;
    assert_eq!(bad.0, 400, "unknown fields are refused: {}", bad.1);

    // `{}` removes every limit.
    let (status, body) = server.post("/v1/queues/limited/limits", &json!({})).await;
    assert_eq!(status, 200);
    assert!(body.get("limits").is_none(), "{body}");
    assert!(body.get("rate_tokens").is_none(), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_across_workers_and_an_ack_wakes_a_parked_poll() {
    let (dir, server) = fresh().await;
    for _ in 0..5 {
        server.enqueue(spec("cl")).await;
    }
    let (status, _) = server
        .post("/v1/queues/cl/limits", &json!({ "concurrency": 2 }))
        .await;
    assert_eq!(status, 200);
    let (_, first) = server
        .post("/v1/lease", &json!({ "queues": ["cl"], "max_jobs": 10 }))
        .await;
    assert_eq!(first["jobs"].as_array().expect("jobs").len(), 2);

    // A second worker's long-poll parks: the queue is at its limit.
    let client = server.client.clone();
    let url = server.url("/v1/lease");
    let poll = tokio::spawn(async move {
        let reply: Value = client
            .post(url)
            .json(&json!({ "queues": ["cl"], "max_jobs": 10, "wait_ms": 10_000 }))
            .send()
            .await
            .expect("lease sent")
            .json()
            .await
            .expect("json");
        (reply, Instant::now())
    });
    let parked = wait_until("the poll to park", || async {
        let (_, queue) = server.get("/v1/queues/cl").await;
        !poll.is_finished() && queue["counts"]["leased"] == 2
    })
    .await;
    assert!(parked);
    let job = &first["jobs"][0];
    let acked_at = Instant::now();
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", job["id"].as_str().expect("id")),
            &json!({ "lease_id": job["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);
    let (reply, answered) = poll.await.expect("poll task");
    assert_eq!(
        reply["jobs"].as_array().expect("jobs").len(),
        1,
        "one slot was freed: {reply}"
    );
    assert!(answered.duration_since(acked_at) < Duration::from_secs(5));
    let (_, queue) = server.get("/v1/queues/cl").await;
    assert_eq!(queue["counts"]["leased"], 2);
    server.stop().await;

    // The limit is in the log: it holds after a restart.
    let server = TestServer::start(dir.path()).await;
    let (_, queue) = server.get("/v1/queues/cl").await;
    assert_eq!(queue["limits"]["concurrency"], 2);
    let (_, more) = server
        .post("/v1/lease", &json!({ "queues": ["cl"], "max_jobs": 10 }))
        .await;
    assert_eq!(more["jobs"].as_array().expect("jobs").len(), 0, "{more}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_hold_each_key_and_survive_a_restart() {
    let (dir, server) = fresh().await;
    for key in ["cust/1", "cust/1", "cust/1", "cust 2"] {
        let mut job = spec("pk");
        job["limit_key"] = json!(key);
        server.enqueue(job).await;
    }
    server.enqueue(spec("pk")).await;
    let (status, body) = server
        .post(
            "/v1/queues/pk/limits",
            &json!({ "key_concurrency": 1, "key_rate": { "limit": 10, "per_ms": 60000 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"]["key_concurrency"], 1);
    assert_eq!(body["limits"]["key_rate"]["limit"], 10);
    assert_eq!(body["limit_keys"], 2);

    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["pk"], "max_jobs": 10 }))
        .await;
    let jobs = leased["jobs"].as_array().expect("jobs");
    assert_eq!(
        jobs.len(),
        3,
        "one per key and the job without a key: {leased}"
    );
    let first = &jobs[0];
    let (_, job) = server
        .get(&format!("/v1/jobs/{}", first["id"].as_str().expect("id")))
        .await;
    assert_eq!(job["limit_key"], "cust/1");

    // Keys are path segments, percent-encoded.
    let (status, key) = server.get("/v1/queues/pk/keys/cust%2F1").await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(
        (
            key["jobs"].clone(),
            key["ready"].clone(),
            key["leased"].clone()
        ),
        (json!(3), json!(2), json!(1))
    );
    assert_eq!(key["rate_tokens"], 9);
    let (_, idle) = server.get("/v1/queues/pk/keys/nobody").await;
    assert_eq!(
        (idle["jobs"].clone(), idle["rate_tokens"].clone()),
        (json!(0), json!(10))
    );
    let bad = server
        .get(&format!("/v1/queues/pk/keys/{}", "k".repeat(257)))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("key"));
    let missing = server.get("/v1/queues/nope/keys/a").await;
    assert_error(&missing, 404, "not_found", None);

    let (_, more) = server
        .post("/v1/lease", &json!({ "queues": ["pk"], "max_jobs": 10 }))
        .await;
    assert_eq!(more["jobs"].as_array().expect("jobs").len(), 0, "{more}");
    // Finishing the key's job frees its slot.
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", first["id"].as_str().expect("id")),
            &json!({ "lease_id": first["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, next) = server
        .post("/v1/lease", &json!({ "queues": ["pk"], "max_jobs": 10 }))
        .await;
    assert_eq!(next["jobs"].as_array().expect("jobs").len(), 1, "{next}");

    let mut bad_key = spec("pk");
    bad_key["limit_key"] = json!("k".repeat(257));
    let bad = server.post("/v1/jobs", &bad_key).await;
    assert_error(&bad, 400, "invalid_request", Some("limit_key"));
    let mut member = spec("pk");
    member["limit_key"] = json!("a");
    let bad = server
        .post(
            "/v1/batches",
            &json!({ "jobs": [member], "callback": spec("done") }),
        )
        .await;
    assert_error(&bad, 400, "invalid_request", Some("jobs[0].limit_key"));
    let bad = server
        .post("/v1/queues/pk/limits", &json!({ "key_concurrency": 0 }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("key_concurrency"));
    server.stop().await;

    // Limits, keys and leases are in the log.
    let server = TestServer::start(dir.path()).await;
    let (_, key) = server.get("/v1/queues/pk/keys/cust%2F1").await;
    assert_eq!(
        (key["jobs"].clone(), key["leased"].clone()),
        (json!(3), json!(1))
    );
    let (_, after) = server
        .post("/v1/lease", &json!({ "queues": ["pk"], "max_jobs": 10 }))
        .await;
    assert_eq!(after["jobs"].as_array().expect("jobs").len(), 0, "{after}");
    server.stop().await;
}

// ---- metrics --------------------------------------------------------------------------

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Runs `promtool check metrics` (Prometheus's own checker) on `text`, when
/// `SLUICE_PROMTOOL` names one; `scripts/test.sh` provides it and requires it.
fn promtool_check(text: &str) {
    let Ok(promtool) = std::env::var("SLUICE_PROMTOOL") else {
        assert!(
            std::env::var("SLUICE_REQUIRE_PROMTOOL").is_err(),
            "SLUICE_REQUIRE_PROMTOOL is set but SLUICE_PROMTOOL is not"
        );
        eprintln!("promtool check skipped: SLUICE_PROMTOOL is not set (scripts/test.sh sets it)");
        return;
    };
    use std::io::Write as _;
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {promtool}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool refused /metrics: {said}\n{text}"
    );
    // promtool also lints (names, units); it prints nothing when all is well.
    assert!(said.trim().is_empty(), "promtool lint: {said}");
}

/// The Grafana dashboard in docs/ queries only metrics the server exports, in PromQL
/// that Prometheus accepts (each query checked by `promtool check rules` as a recording
/// rule, with the dashboard's variables filled in).
fn check_grafana_dashboard(metrics: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/sluice-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sluice_") || w.starts_with("process_"));
        for name in names {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                metrics.lines().any(|l| l.starts_with(family)),
                "the dashboard queries {name}, which /metrics does not have: {expr}"
            );
        }
    }
    let Ok(promtool) = std::env::var("SLUICE_PROMTOOL") else {
        return;
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let filled = expr
            .replace("$__rate_interval", "1m")
            .replace("$queue", ".*");
        rules.push_str(&format!(
            "      - record: sluice:dashboard_panel_{i}\n        expr: {}\n",
            serde_json::to_string(&filled).expect("a JSON string is YAML")
        ));
    }
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    let output = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "promtool refused the dashboard's queries: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_happened_to_jobs_and_pass_promtool() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = ServerConfig::new(dir.path());
    // A snapshot soon, so that its age is in the metrics too.
    config.snapshot_every_records = 5;
    let server = TestServer::start_with(config).await;
    for _ in 0..4 {
        let mut job = spec("pm");
        job["max_attempts"] = json!(1);
        server.enqueue(job).await;
    }
    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["pm"], "max_jobs": 2 }))
        .await;
    let jobs = leased["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 2);
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", jobs[0]["id"].as_str().expect("id")),
            &json!({ "lease_id": jobs[0]["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/fail", jobs[1]["id"].as_str().expect("id")),
            &json!({ "lease_id": jobs[1]["lease_id"], "error": "boom" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, ready) = server.get("/v1/queues/pm/jobs?state=ready").await;
    let cancel = ready["jobs"][0]["id"]
        .as_str()
        .expect("a ready job")
        .to_owned();
    let (status, _) = server
        .post(&format!("/v1/jobs/{cancel}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let snapshotted = wait_until("a snapshot", || async {
        let text = server
            .client
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default();
        text.contains("\nsluice_snapshot_age_seconds ")
    })
    .await;
    assert!(snapshotted);

    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    let total = |outcome: &str| {
        sample(
            &text,
            &format!("sluice_jobs_total{{queue=\"pm\",kind=\"email.send\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(total("enqueued"), Some(4.0), "{text}");
    assert_eq!(total("leased"), Some(2.0));
    assert_eq!(total("succeeded"), Some(1.0));
    assert_eq!(total("dead"), Some(1.0), "one attempt, failed");
    assert_eq!(
        total("failed"),
        None,
        "a series appears with its first count"
    );
    assert_eq!(total("cancelled"), Some(1.0));
    let gauge = |state: &str| {
        sample(
            &text,
            &format!("sluice_queue_jobs{{queue=\"pm\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(gauge("ready"), Some(1.0));
    assert_eq!(gauge("succeeded"), Some(1.0));
    assert_eq!(gauge("dead"), Some(1.0));
    assert_eq!(
        sample(&text, "sluice_job_wait_seconds_count{queue=\"pm\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "sluice_job_run_seconds_count{queue=\"pm\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "sluice_job_run_seconds_bucket{queue=\"pm\",le=\"+Inf\"}"
        ),
        Some(2.0)
    );
    // The server's own: every acknowledged write was fdatasync'd (fsync always).
    assert!(
        sample(&text, "sluice_wal_fsync_seconds_count").is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(sample(&text, "sluice_wal_bytes").is_some_and(|n| n > 0.0));
    assert_eq!(sample(&text, "sluice_jobs"), Some(4.0));
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|n| n > 1e6));
    assert!(sample(&text, "process_open_fds").is_some_and(|n| n > 3.0));
    promtool_check(&text);
    check_grafana_dashboard(&text);

    // OpenMetrics when asked: counter families without `_total`, and `# EOF`.
    let response = server
        .client
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("GET /metrics");
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let open = response.text().await.expect("body");
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE sluice_jobs counter\n"), "{open}");
    assert!(
        open.contains("sluice_jobs_total{queue=\"pm\",kind=\"email.send\",outcome=\"enqueued\"} 4")
    );

    // The queue's view has the same minute: two waits, two runs, one success, one failure.
    let (_, queue) = server.get("/v1/queues/pm").await;
    let recent = &queue["recent"];
    assert_eq!(
        (recent["succeeded"].as_u64(), recent["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(recent["wait_p95_ms"].as_u64().is_some(), "{queue}");
    assert!(recent["run_p99_ms"].as_u64().is_some(), "{queue}");
    server.stop().await;
}

// ---- history and insights ---------------------------------------------------------------

/// An hour of 10 s history for queue `queue` written where the server keeps it (and a
/// minute past `now`, so the server's own samples of the next slots stay behind these:
/// of two samples of one time the older file's is read): the backlog rises by 5 a step,
/// 3 jobs/s arrive and 2/s finish, the wait p95 is about 100 ms but for one spike of 5 s,
/// 24 steps before `now`. Returns the spike's time.
fn write_history(data_dir: &std::path::Path, queue: &str, now: i64) -> i64 {
    use sluice_server::history::{Sample, Store, FINE_KEEP_MS, FINE_STEP_MS};
    let end = now - now.rem_euclid(FINE_STEP_MS);
    let start = end - 3_600_000;
    let mut store = Store::new(
        data_dir.join("metrics").join("10s"),
        FINE_STEP_MS,
        3_600_000,
        FINE_KEEP_MS,
        1,
    );
    let spike = end - 24 * FINE_STEP_MS;
    let mut at = start;
    let mut i = 0;
    while at < end + 6 * FINE_STEP_MS {
        let sample = Sample {
            ready: 5 * i,
            leased: 4,
            enqueued: 30,
            succeeded: 20,
            failed: 0,
            wait_p95_ms: Some(if at == spike { 5_000 } else { 100 + i % 3 }),
            run_p95_ms: Some(250),
            ..Sample::default()
        };
        store
            .append(at, vec![(queue.to_owned(), sample)])
            .expect("write history");
        at += FINE_STEP_MS;
        i += 1;
    }
    store.close().expect("close history");
    spike
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_insights_read_what_the_store_holds() {
    let dir = tempfile::tempdir().expect("dir");
    let spike = write_history(dir.path(), "ins", support::now_ms());
    let server = TestServer::start(dir.path()).await;
    for _ in 0..3 {
        server.enqueue(spec("ins")).await;
    }
    // One job run, so the live metrics have a run time for worker sizing.
    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["ins"], "max_jobs": 1 }))
        .await;
    let job = &leased["jobs"][0];
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", job["id"].as_str().expect("id")),
            &json!({ "lease_id": job["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);

    let (status, history) = server.get("/v1/queues/ins/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["resolution_ms"], 10_000);
    let points = history["points"].as_array().expect("points");
    assert_eq!(points.len(), 360, "an hour of 10 s steps");
    let at_spike = points
        .iter()
        .find(|p| p["wait_p95_ms"] == 5_000)
        .expect("the spike");
    assert_eq!(
        sluice_proto::rfc3339::parse_ms(at_spike["at"].as_str().expect("at")),
        Some(spike)
    );
    assert_eq!(at_spike["enqueued"], 30);
    let bad = server.get("/v1/queues/ins/history?resolution=1s").await;
    assert_error(&bad, 400, "invalid_request", Some("resolution"));
    let missing = server.get("/v1/queues/nope/history").await;
    assert_error(&missing, 404, "not_found", None);

    let (status, insights) = server
        .get("/v1/queues/ins/insights?depth_threshold=2000&wait_target_ms=500")
        .await;
    assert_eq!(status, 200, "{insights}");
    let trend = |metric: &str| {
        insights["trends"]
            .as_array()
            .expect("trends")
            .iter()
            .find(|t| t["metric"] == metric)
            .cloned()
            .unwrap_or_else(|| panic!("no {metric} trend: {insights}"))
    };
    let depth = trend("depth");
    assert_eq!(depth["direction"], "rising", "{depth}");
    assert!((depth["slope_per_hour"].as_f64().expect("slope") - 1_800.0).abs() < 1.0);
    assert_eq!(trend("arrival_per_s")["direction"], "flat");
    let spike_found = insights["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .any(|a| {
            a["metric"] == "wait_p95_ms"
                && a["above"] == true
                && sluice_proto::rfc3339::parse_ms(a["at"].as_str().unwrap_or("")) == Some(spike)
        });
    assert!(
        spike_found,
        "the wait spike is an anomaly: {}",
        insights["anomalies"]
    );
    let forecast = insights["forecasts"]
        .as_array()
        .expect("forecasts")
        .iter()
        .find(|f| f["metric"] == "depth")
        .expect("a depth forecast");
    assert_eq!(forecast["method"], "holt");
    assert_eq!(
        forecast["points"].as_array().expect("points").len(),
        90,
        "a quarter hour"
    );
    let backlog = &insights["backlog"];
    assert!(
        (backlog["arrival_per_s"].as_f64().expect("rate") - 3.0).abs() < 1e-9,
        "{backlog}"
    );
    assert!((backlog["throughput_per_s"].as_f64().expect("rate") - 2.0).abs() < 1e-9);
    assert!(
        backlog.get("drained_at").is_none(),
        "more arrives than finishes: {backlog}"
    );
    assert!(
        backlog["threshold_at"].is_string(),
        "the rising depth crosses 5,000: {backlog}"
    );
    let recommendation = &insights["recommendation"];
    assert!(
        recommendation["workers"].as_u64().is_some_and(|w| w >= 1),
        "{insights}"
    );
    assert_eq!(recommendation["model"], "M/M/c (Erlang C)");
    let health = &insights["health"];
    assert!(
        health["score"].as_u64().is_some_and(|s| s < 100),
        "{health}"
    );
    let components: Vec<&str> = health["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(components.contains(&"backlog") && components.contains(&"failures"));

    let bad = server.get("/v1/queues/ins/insights?window_ms=10").await;
    assert_error(&bad, 400, "invalid_request", Some("window_ms"));
    let (status, overall) = server.get("/v1/health").await;
    assert_eq!(status, 200);
    let ins = overall["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == "ins")
        .expect("ins");
    assert_eq!(
        ins["score"], health["score"],
        "the same hour, the same score"
    );
    assert!(overall["score"].as_u64().is_some_and(|s| s <= 100));
    // The history is read once per sample written, not per request: a queue made since
    // is scored (as one without history), and the answer agrees with its insights.
    server.enqueue(spec("ins-new")).await;
    let (status, again) = server.get("/v1/health").await;
    assert_eq!(status, 200);
    let score_of = |name: &str| {
        again["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|q| q["queue"] == name)
            .map(|q| q["score"].clone())
    };
    assert_eq!(score_of("ins"), Some(health["score"].clone()));
    let (status, fresh) = server.get("/v1/queues/ins-new/insights").await;
    assert_eq!(status, 200);
    assert_eq!(score_of("ins-new"), Some(fresh["health"]["score"].clone()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_records_a_history_sample_every_ten_seconds() {
    let (_dir, server) = fresh().await;
    for _ in 0..2 {
        server.enqueue(spec("rec")).await;
    }
    server.enqueue(spec("rec-other")).await;
    server
        .enqueue(json!({ "queue": "rec", "kind": "later", "payload": {}, "delay_ms": 600_000 }))
        .await;
    // The sample of the 10 s slot the enqueues fell in is written once that slot ends.
    // Counts are per slot (the enqueues may straddle two); gauges are as sampled.
    let sum = |points: &[Value], field: &str| -> u64 {
        points.iter().filter_map(|p| p[field].as_u64()).sum()
    };
    // Samples are written every 10 s, when their slot ends: wait up to three periods (a
    // busy CI machine delays the tick).
    let recorded = support::wait_until_within(
        "a history sample of rec",
        Duration::from_secs(30),
        || async {
            let (_, history) = server.get("/v1/queues/rec/history").await;
            history["points"].as_array().is_some_and(|p| {
                sum(p, "enqueued") == 3
                    && p.iter()
                        .any(|p| p["ready"] == 2 && p["scheduled"] == 1 && p["dead"] == 0)
            })
        },
    )
    .await;
    assert!(recorded);
    // The server-wide history sums the queues, step by step.
    let (status, all) = server.get("/v1/history").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["resolution_ms"], 10_000);
    let points = all["points"].as_array().expect("points");
    assert_eq!(sum(points, "enqueued"), 4, "{all}");
    assert!(
        points
            .iter()
            .any(|p| p["ready"] == 3 && p["scheduled"] == 1),
        "{all}"
    );
    let bad = server.get("/v1/history?resolution=1h").await;
    assert_error(&bad, 400, "invalid_request", Some("resolution"));
    server.stop().await;
}

// ---- workers --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_workers_show_their_jobs_and_a_silent_one_is_dropped_with_its_leases() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = ServerConfig::new(dir.path());
    config.worker_stale_ms = 400;
    let server = TestServer::start_with(config).await;
    let (status, worker) = server
        .put(
            "/v1/workers/silent",
            &json!({ "host": "box-1", "pid": 42, "version": "test 1.0", "concurrency": 4,
                     "queues": ["wk"] }),
        )
        .await;
    assert_eq!(status, 200, "{worker}");
    assert_eq!(worker["host"], "box-1");
    assert_eq!(worker["current_jobs"], json!([]));
    let (status, _) = server.put("/v1/workers/alive", &json!({})).await;
    assert_eq!(status, 200);
    let bad = server
        .put("/v1/workers/x", &json!({ "concurrency": 0 }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("concurrency"));
    let bad = server
        .put("/v1/workers/x", &json!({ "queues": ["no spaces"] }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("queues[0]"));
    let bad = server.put("/v1/workers/x", &json!({ "colour": 1 })).await;
    assert_eq!(bad.0, 400, "unknown fields are refused: {:?}", bad.1);

    // "alive" beats all along; "silent" leases two jobs and then says nothing.
    let beating = {
        let (client, url) = (server.client.clone(), server.url("/v1/workers/alive"));
        tokio::spawn(async move {
            loop {
                let _ = client.put(&url).json(&json!({})).send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for _ in 0..2 {
        server.enqueue(spec("wk")).await;
    }
    let (_, leased) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["wk"], "max_jobs": 2, "worker": "silent" }),
        )
        .await;
    assert_eq!(leased["jobs"].as_array().expect("jobs").len(), 2);
    let (_, workers) = server.get("/v1/workers").await;
    let silent = workers["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["name"] == "silent")
        .expect("silent is listed")
        .clone();
    assert_eq!(
        silent["current_jobs"].as_array().expect("jobs").len(),
        2,
        "{silent}"
    );
    assert_eq!(silent["utilisation"], 0.5);
    assert_eq!(silent["current_jobs"][0]["queue"], "wk");

    // Attempts are credited to the worker that ran them.
    server.enqueue(spec("wk2")).await;
    let (_, one_more) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["wk2"], "max_jobs": 1, "worker": "alive" }),
        )
        .await;
    let job = &one_more["jobs"][0];
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", job["id"].as_str().expect("id")),
            &json!({ "lease_id": job["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, alive) = server.get("/v1/workers/alive").await;
    assert_eq!(
        (alive["succeeded"].clone(), alive["failed"].clone()),
        (json!(1), json!(0))
    );

    // Dropped after 400 ms of silence: its leases end now, not at their 30 s timeout.
    let dropped = wait_until("the silent worker to be dropped", || async {
        server.get("/v1/workers/silent").await.0 == 404
    })
    .await;
    assert!(dropped);
    let (_, queue) = server.get("/v1/queues/wk").await;
    assert_eq!(queue["counts"]["leased"], 0, "{queue}");
    assert_eq!(queue["counts"]["ready"], 2, "{queue}");
    let id = leased["jobs"][0]["id"].as_str().expect("id");
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["history"][0]["outcome"], "expired", "{job}");
    assert_eq!(job["history"][0]["worker"], "silent");
    assert_eq!(
        server.get("/v1/workers/alive").await.0,
        200,
        "the beating one stays"
    );
    beating.abort();

    let deleted = server
        .client
        .delete(server.url("/v1/workers/alive"))
        .send()
        .await
        .expect("DELETE sent");
    assert_eq!(deleted.status(), 204);
    assert_eq!(server.get("/v1/workers/alive").await.0, 404);
    server.stop().await;
}

// ---- batches --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_callback_is_enqueued_once_with_counts_and_wakes_a_parked_poll() {
    let (dir, server) = fresh().await;
    let (status, created) = server
        .post(
            "/v1/batches",
            &json!({
                "jobs": [spec("import"), spec("import"), { "queue": "import", "kind": "row", "max_attempts": 1 }],
                "callback": { "queue": "callbacks", "kind": "import.done", "payload": { "file": "a.csv" } }
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let batch = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["jobs"].as_array().expect("jobs").len(), 3);
    let (status, progress) = server.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(status, 200);
    assert_eq!(progress["total"], 3);
    assert_eq!(progress["pending"], 3);
    assert_eq!(progress["callback_queue"], "callbacks");
    assert!(progress.get("finished_at").is_none());
    let (status, _) = server.get(&format!("/v1/jobs/{batch}")).await;
    assert_eq!(status, 404, "no callback job before the batch finishes");

    // A worker of the callback queue parks; it gets the callback when the batch finishes.
    let client = server.client.clone();
    let url = server.url("/v1/lease");
    let poll = tokio::spawn(async move {
        let reply: Value = client
            .post(url)
            .json(&json!({ "queues": ["callbacks"], "wait_ms": 10_000 }))
            .send()
            .await
            .expect("lease sent")
            .json()
            .await
            .expect("json");
        reply
    });

    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["import"], "max_jobs": 3 }))
        .await;
    let jobs = leased["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        let (path, body) = if job["max_attempts"] == 1 {
            (
                "fail",
                json!({ "lease_id": job["lease_id"], "error": "bad row" }),
            )
        } else {
            ("ack", json!({ "lease_id": job["lease_id"] }))
        };
        let (status, _) = server
            .post(
                &format!("/v1/jobs/{}/{path}", job["id"].as_str().expect("id")),
                &body,
            )
            .await;
        assert_eq!(status, 200);
    }
    let reply = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the parked poll got the callback in time")
        .expect("poll task");
    let callback = &reply["jobs"][0];
    assert_eq!(callback["id"], batch.as_str(), "{reply}");
    assert_eq!(callback["kind"], "import.done");
    assert_eq!(
        callback["payload"],
        json!({ "batch": { "id": batch, "total": 3, "succeeded": 2, "dead": 1, "cancelled": 0 },
                "payload": { "file": "a.csv" } })
    );
    let (_, progress) = server.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(progress["pending"], 0);
    assert_eq!(progress["succeeded"], 2);
    assert_eq!(progress["dead"], 1);
    assert!(progress["finished_at"].is_string());
    server.stop().await;

    // After a restart (snapshot or replay) the batch and its one callback are still there.
    let server = TestServer::start(dir.path()).await;
    let (_, progress) = server.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(progress["pending"], 0);
    let (_, queue) = server.get("/v1/queues/callbacks").await;
    assert_eq!(queue["counts"]["leased"], 1, "{queue}");
    assert_eq!(queue["counts"]["ready"], 0, "{queue}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches_get_field_paths_and_unknown_batches_404() {
    let (_dir, server) = fresh().await;
    let reply = server
        .post(
            "/v1/batches",
            &json!({ "jobs": [], "callback": spec("cb") }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("jobs"));
    let reply = server
        .post(
            "/v1/batches",
            &json!({ "jobs": [{ "queue": "q", "kind": "k", "unique_key": "u" }], "callback": spec("cb") }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("jobs[0].unique_key"));
    let reply = server
        .post(
            "/v1/batches",
            &json!({ "jobs": [spec("q")], "callback": { "queue": "bad name", "kind": "k" } }),
        )
        .await;
    assert_error(&reply, 400, "invalid_request", Some("callback.queue"));
    let reply = server.get("/v1/batches/0000000000000").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

// ---- cron -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_enqueues_its_job_at_each_occurrence_and_survives_a_restart() {
    let (dir, server) = fresh().await;
    let client = server.client.clone();
    let reply = client
        .put(server.url("/v1/cron/tick"))
        .json(&json!({
            "schedule": "* * * * * *",
            "job": { "queue": "cronq", "kind": "tick", "payload": { "from": "cron" } }
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(reply.status(), 200);
    let info: Value = reply.json().await.expect("json");
    assert_eq!(info["name"], "tick");
    assert_eq!(info["timezone"], "UTC");
    assert_eq!(info["missed"], "skip");
    assert!(info["next_at"].is_string(), "{info}");

    // An every-second schedule: a parked worker gets its job within the deadline.
    let (_, leased) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["cronq"], "wait_ms": 5_000 }),
        )
        .await;
    let job = &leased["jobs"][0];
    assert_eq!(job["kind"], "tick", "{leased}");
    assert_eq!(job["payload"], json!({ "from": "cron" }));
    let (_, listed) = server.get("/v1/cron").await;
    assert_eq!(listed["schedules"][0]["name"], "tick");
    assert!(listed["schedules"][0]["last_fired_at"].is_string());
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let (status, info) = server.get("/v1/cron/tick").await;
    assert_eq!(status, 200, "the schedule is in the log: {info}");
    let response = server
        .client
        .delete(server.url("/v1/cron/tick"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let reply = server.get("/v1/cron/tick").await;
    assert_error(&reply, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cron_schedules_get_field_paths() {
    let (_dir, server) = fresh().await;
    let put = |body: Value| {
        let client = server.client.clone();
        let url = server.url("/v1/cron/bad");
        async move {
            let response = client.put(url).json(&body).send().await.expect("put");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let reply = put(json!({ "schedule": "61 * * * *", "job": spec("q") })).await;
    assert_error(&reply, 400, "invalid_request", Some("schedule"));
    let reply =
        put(json!({ "schedule": "* * * * *", "timezone": "Mars/Base", "job": spec("q") })).await;
    assert_error(&reply, 400, "invalid_request", Some("timezone"));
    let reply =
        put(json!({ "schedule": "* * * * *", "missed": "sometimes", "job": spec("q") })).await;
    assert_error(&reply, 400, "invalid_request", Some("missed"));
    let reply = put(
        json!({ "schedule": "* * * * *", "job": { "queue": "q", "kind": "k", "delay_ms": 5 } }),
    )
    .await;
    assert_eq!(reply.0, 400, "{}", reply.1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_order_strict_and_weighted_are_validated_and_honoured() {
    let (_dir, server) = fresh().await;
    let low = server
        .enqueue(json!({ "queue": "low", "kind": "k", "priority": 100 }))
        .await;
    let high = server.enqueue(spec("high")).await;
    let (_, strict) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["high", "low"], "order": "strict" }),
        )
        .await;
    assert_eq!(strict["jobs"][0]["id"], high.as_str(), "{strict}");
    let (_, weighted) = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["high", "low"], "order": "weighted", "weights": [1, 1] }),
        )
        .await;
    assert_eq!(
        weighted["jobs"][0]["id"],
        low.as_str(),
        "the only job left: {weighted}"
    );

    let bad = server
        .post("/v1/lease", &json!({ "queues": ["a"], "order": "random" }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("order"));
    let bad = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["a", "b"], "order": "weighted", "weights": [1] }),
        )
        .await;
    assert_error(&bad, 400, "invalid_request", Some("weights"));
    let bad = server
        .post(
            "/v1/lease",
            &json!({ "queues": ["a"], "order": "weighted", "weights": [0] }),
        )
        .await;
    assert_error(&bad, 400, "invalid_request", Some("weights[0]"));
    let bad = server
        .post("/v1/lease", &json!({ "queues": ["a"], "weights": [2] }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("weights"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_takes_jobs_of_one_state_to_another_queue() {
    let (_dir, server) = fresh().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.enqueue(spec("from")).await);
    }
    let (status, body) = server
        .post("/v1/queues/from/move", &json!({ "to": "to", "limit": 2 }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["moved"], 2);
    let (_, job) = server.get(&format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(job["queue"], "to", "oldest first");
    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["to"], "max_jobs": 10 }))
        .await;
    assert_eq!(leased["jobs"].as_array().expect("jobs").len(), 2);

    let bad = server
        .post(
            "/v1/queues/from/move",
            &json!({ "to": "to", "state": "leased" }),
        )
        .await;
    assert_error(&bad, 400, "invalid_request", Some("state"));
    let bad = server
        .post("/v1/queues/from/move", &json!({ "to": "from" }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("to"));
    let bad = server
        .post("/v1/queues/from/move", &json!({ "to": "x", "limit": 0 }))
        .await;
    assert_error(&bad, 400, "invalid_request", Some("limit"));
    let bad = server
        .post("/v1/queues/nowhere/move", &json!({ "to": "x" }))
        .await;
    assert_error(&bad, 404, "not_found", None);
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_page_and_its_files_are_served_with_validators() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let page = server
        .client
        .get(server.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-type"].to_str().ok(),
        Some("text/html; charset=utf-8")
    );
    let etag = page.headers()["etag"].clone();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("a policy");
    assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(page.text().await.expect("body").contains("<html"));
    let again = server
        .client
        .get(server.url("/"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET / again");
    assert_eq!(again.status(), 304, "an unchanged page is not sent twice");
    // `..%2F` reaches the handler as `../` (the client does not fold it away as it
    // folds a plain `..`).
    for path in [
        "/ui/no-such-file.js",
        "/ui/..%2FCargo.toml",
        "/ui/..%2F..%2FCargo.toml",
    ] {
        let missing = server.get(path).await;
        assert_eq!(missing.0, 404, "{path}");
        assert_eq!(missing.1["error"]["code"], "not_found", "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_found_by_kind_and_tag_and_queues_by_prefix() {
    let (_dir, server) = fresh().await;
    let job = |kind: &str, tag: &str| json!({ "queue": "find", "kind": kind, "payload": {}, "tags": [tag] });
    let mut wanted = Vec::new();
    for _ in 0..3 {
        wanted.push(server.enqueue(job("mail.send", "vip")).await);
    }
    for _ in 0..2 {
        server.enqueue(job("report.build", "nightly")).await;
    }
    let ids = |reply: &Value| -> Vec<String> {
        reply["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, by_kind) = server.get("/v1/queues/find/jobs?kind=mail.send").await;
    assert_eq!(ids(&by_kind), wanted);
    let (_, by_tag) = server.get("/v1/queues/find/jobs?tag=nightly").await;
    assert_eq!(ids(&by_tag).len(), 2);
    assert!(by_tag["jobs"]
        .as_array()
        .is_some_and(|j| j.iter().all(|j| j["kind"] == "report.build")));
    let (_, both) = server
        .get("/v1/queues/find/jobs?kind=mail.send&tag=nightly")
        .await;
    assert!(ids(&both).is_empty() && both.get("next_cursor").is_none());
    let (_, unknown) = server.get("/v1/queues/find/jobs?kind=never.seen").await;
    assert!(ids(&unknown).is_empty());
    // Paged: two, then the third from the cursor.
    let (_, first) = server
        .get("/v1/queues/find/jobs?kind=mail.send&limit=2")
        .await;
    assert_eq!(ids(&first), wanted[..2]);
    let cursor = first["next_cursor"].as_str().expect("a cursor");
    let (_, rest) = server
        .get(&format!(
            "/v1/queues/find/jobs?kind=mail.send&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(&rest), wanted[2..]);

    // A rare kind behind more than JOB_SCAN_MAX others: the first page stops at the cap,
    // empty but with a cursor, and the next one finds it.
    let scan_max = sluice_proto::limits::JOB_SCAN_MAX;
    for chunk in [scan_max / 2, scan_max / 2 + 5] {
        let jobs = (0..chunk)
            .map(|_| json!({ "queue": "haystack", "kind": "hay", "payload": {} }))
            .collect();
        server.enqueue_batch(jobs).await;
    }
    let needle = server
        .enqueue(json!({ "queue": "haystack", "kind": "needle", "payload": {} }))
        .await;
    let (_, first) = server.get("/v1/queues/haystack/jobs?kind=needle").await;
    assert!(ids(&first).is_empty(), "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a cursor to go on from");
    let (_, next) = server
        .get(&format!(
            "/v1/queues/haystack/jobs?kind=needle&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(&next), vec![needle]);

    // Queues by name prefix.
    let (_, listed) = server.get("/v1/queues?prefix=hay").await;
    let names: Vec<&str> = listed["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, ["haystack"]);
    server.stop().await;
}
