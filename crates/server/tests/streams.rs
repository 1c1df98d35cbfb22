//! Streams over HTTP against a real server: create, produce keyed and unkeyed records,
//! fetch from offsets, the ends and a time, long-poll, errors, and a restart.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{assert_error, TestServer};

fn records(reply: &Value) -> Vec<Value> {
    reply["records"].as_array().cloned().unwrap_or_default()
}

/// Creates stream `name` with `partitions`; it must answer 200.
async fn create_stream(server: &TestServer, name: &str, partitions: u32) {
    let (status, info) = server
        .put(
            &format!("/v1/streams/{name}"),
            &json!({ "partitions": partitions }),
        )
        .await;
    assert_eq!(status, 200, "create {name}: {info}");
}

/// Produces `records` (JSON) to stream `name`; it must answer 200. Returns the answer.
async fn produce(server: &TestServer, name: &str, records: Vec<Value>) -> Value {
    let (status, reply) = server
        .post(
            &format!("/v1/streams/{name}/records"),
            &json!({ "records": records }),
        )
        .await;
    assert_eq!(status, 200, "produce to {name}: {reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_keyed_records_in_order_per_partition_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let (status, info) = server
        .put("/v1/streams/orders", &json!({ "partitions": 3 }))
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["partitions"].as_array().map(Vec::len), Some(3));

    // 30 records over 5 keys: each key always lands in the same partition (Kafka's
    // murmur2), and a partition's offsets are dense from 0.
    let batch: Vec<Value> = (0..30)
        .map(|n| {
            json!({ "key": format!("customer-{}", n % 5), "value": { "n": n },
                    "headers": [["source", "test"]] })
        })
        .collect();
    let produced = produce(&server, "orders", batch).await;
    let offsets = produced["offsets"].as_array().expect("offsets").clone();
    assert_eq!(offsets.len(), 30);
    for n in 0..30 {
        assert_eq!(
            offsets[n]["partition"],
            offsets[n % 5]["partition"],
            "key customer-{} moved",
            n % 5
        );
    }
    let mut seen = 0;
    for p in 0..3 {
        let (status, fetched) = server
            .get(&format!(
                "/v1/streams/orders/partitions/{p}/records?from=earliest"
            ))
            .await;
        assert_eq!(status, 200, "{fetched}");
        let got = records(&fetched);
        for (i, record) in got.iter().enumerate() {
            assert_eq!(record["offset"], i as u64, "dense offsets");
            assert_eq!(record["headers"], json!([["source", "test"]]));
        }
        // Within a partition, a key's records keep the order they were produced in.
        let ns: Vec<u64> = got
            .iter()
            .filter_map(|r| r["value"]["n"].as_u64())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted);
        assert_eq!(fetched["next_offset"], got.len() as u64);
        assert_eq!(fetched["latest_offset"], got.len() as u64);
        seen += got.len();
    }
    assert_eq!(seen, 30);

    // Unkeyed records go round the partitions; an explicit partition is kept.
    let (_, produced) = server
        .post(
            "/v1/streams/orders/records",
            &json!({ "records": [{ "value": 1 }, { "value": 2 }, { "value": 3 },
                                 { "value": "pinned", "partition": 2 }] }),
        )
        .await;
    let partitions: Vec<u64> = produced["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .filter_map(|o| o["partition"].as_u64())
        .collect();
    assert_eq!(&partitions[..3], &[0, 1, 2]);
    assert_eq!(partitions[3], 2);

    // A long-poll at the end waits (empty after its wait_ms with nothing new), and is
    // answered by the next record.
    let (_, end) = server
        .get("/v1/streams/orders/partitions/1/records?from=latest")
        .await;
    let end = end["next_offset"].as_u64().expect("offset");
    let started = std::time::Instant::now();
    let (_, empty) = server
        .get(&format!(
            "/v1/streams/orders/partitions/1/records?offset={end}&wait_ms=300"
        ))
        .await;
    assert!(records(&empty).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    let waiting = server.spawn_get(&format!(
        "/v1/streams/orders/partitions/1/records?offset={end}&wait_ms=10000"
    ));
    let (status, _) = server
        .post(
            "/v1/streams/orders/records",
            &json!({ "records": [{ "value": "late", "partition": 1 }] }),
        )
        .await;
    assert_eq!(status, 200);
    let (reply, waited) = waiting.await.expect("task");
    assert_eq!(records(&reply)[0]["value"], "late", "{reply}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // Errors: an unknown stream or partition, fewer partitions, no start.
    assert_error(
        &server
            .get("/v1/streams/nope/partitions/0/records?offset=0")
            .await,
        404,
        "not_found",
        None,
    );
    assert_error(
        &server
            .get("/v1/streams/orders/partitions/3/records?offset=0")
            .await,
        404,
        "not_found",
        None,
    );
    assert_error(
        &server
            .put("/v1/streams/orders", &json!({ "partitions": 2 }))
            .await,
        400,
        "invalid_request",
        Some("partitions"),
    );
    assert_error(
        &server.get("/v1/streams/orders/partitions/0/records").await,
        400,
        "invalid_request",
        Some("offset"),
    );
    assert_error(
        &server
            .post(
                "/v1/streams/orders/records",
                &json!({ "records": [{ "value": 1, "partition": 9 }] }),
            )
            .await,
        400,
        "invalid_request",
        Some("records[0].partition"),
    );
    server.stop().await;

    // Everything acknowledged is there after a restart, and offsets go on.
    let server = TestServer::start(dir.path()).await;
    let (_, info) = server.get("/v1/streams/orders").await;
    let total: u64 = info["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|p| p["next_offset"].as_u64())
        .sum();
    assert_eq!(total, 35, "{info}");
    let (_, fetched) = server
        .get("/v1/streams/orders/partitions/1/records?offset=0&max_bytes=1")
        .await;
    assert!(!records(&fetched).is_empty(), "one batch at least");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_found_by_time() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    create_stream(&server, "events", 1).await;
    let batch: Vec<Value> = (0..10)
        .map(|n| json!({ "value": n, "timestamp": format!("2026-01-01T00:00:{:02}Z", n * 5) }))
        .collect();
    produce(&server, "events", batch).await;
    let (_, fetched) = server
        .get("/v1/streams/events/partitions/0/records?timestamp=2026-01-01T00:00:12Z")
        .await;
    assert_eq!(records(&fetched)[0]["value"], 3, "{fetched}");
    assert_eq!(records(&fetched)[0]["offset"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_shares_partitions_refuses_stale_commits_and_keeps_offsets() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    create_stream(&server, "pay", 4).await;
    let batch: Vec<Value> = (0..40)
        .map(|n| json!({ "value": n, "partition": n % 4 }))
        .collect();
    produce(&server, "pay", batch).await;
    let base = "/v1/streams/pay/groups/billing";
    let (status, a) = server
        .post(&format!("{base}/join"), &json!({ "strategy": "sticky" }))
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["partitions"], json!([0, 1, 2, 3]));
    let a_id = a["member_id"].as_str().expect("id").to_owned();
    let first = a["generation"].as_u64().expect("generation");

    let (_, b) = server.post(&format!("{base}/join"), &json!({})).await;
    let b_id = b["member_id"].as_str().expect("id").to_owned();
    assert_eq!(b["generation"], first + 1);
    // A learns of the rebalance at its heartbeat: two partitions each now.
    let (_, a_now) = server
        .post(
            &format!("{base}/heartbeat"),
            &json!({ "member_id": a_id, "generation": first }),
        )
        .await;
    assert_eq!(a_now["generation"], first + 1);
    let a_parts: Vec<u64> = a_now["partitions"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(a_parts.len(), 2);
    let b_parts = b["partitions"].as_array().expect("parts").clone();
    assert_eq!(b_parts.len(), 2);

    // A commit from the old generation is refused; so is one for another's partition.
    let stale = server
        .post(
            &format!("{base}/commit"),
            &json!({ "member_id": a_id, "generation": first,
                     "offsets": [{ "partition": a_parts[0], "offset": 5 }] }),
        )
        .await;
    assert_error(&stale, 409, "stale_generation", None);
    let theirs = server
        .post(
            &format!("{base}/commit"),
            &json!({ "member_id": a_id, "generation": first + 1,
                     "offsets": [{ "partition": b_parts[0], "offset": 5 }] }),
        )
        .await;
    assert_error(&theirs, 409, "not_assigned", None);
    let committed = server
        .client
        .post(server.url(&format!("{base}/commit")))
        .json(&json!({ "member_id": a_id, "generation": first + 1,
                       "offsets": [{ "partition": a_parts[0], "offset": 6 }] }))
        .send()
        .await
        .expect("commit");
    assert_eq!(committed.status(), 204);
    let (_, info) = server.get(base).await;
    assert_eq!(info["members"].as_array().map(Vec::len), Some(2));
    let lag = info["partitions"]
        .as_array()
        .expect("lag")
        .iter()
        .find(|p| p["partition"] == a_parts[0])
        .expect("partition")
        .clone();
    assert_eq!(
        (lag["committed"].clone(), lag["lag"].clone()),
        (json!(6), json!(4))
    );
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = format!(
        "sluice_stream_group_lag{{stream=\"pay\",group=\"billing\",partition=\"{}\"}} 4",
        a_parts[0]
    );
    assert!(metrics.contains(&line), "{line} not in {metrics}");

    // B leaves: A gets everything, in a new generation.
    let left = server
        .client
        .post(server.url(&format!("{base}/leave")))
        .json(&json!({ "member_id": b_id, "generation": first + 1 }))
        .send()
        .await
        .expect("leave");
    assert_eq!(left.status(), 204);
    let (_, a_all) = server
        .post(
            &format!("{base}/heartbeat"),
            &json!({ "member_id": a_id, "generation": first + 1 }),
        )
        .await;
    assert_eq!(a_all["partitions"], json!([0, 1, 2, 3]));
    assert_eq!(a_all["generation"], first + 2);
    // The committed offset comes with the assignment.
    assert!(a_all["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .any(|o| o["partition"] == a_parts[0] && o["offset"] == 6));

    // A member whose session runs out is dropped and the group rebalanced.
    let (_, c) = server
        .post(
            &format!("{base}/join"),
            &json!({ "session_timeout_ms": 200 }),
        )
        .await;
    let c_gen = c["generation"].as_u64().expect("generation");
    let reaped = support::wait_until("the silent member to be dropped", || async {
        let (_, info) = server.get(base).await;
        info["generation"].as_u64() > Some(c_gen)
            && info["members"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert!(reaped);
    let (_, info) = server.get(base).await;
    let generation = info["generation"].as_u64().expect("generation");
    server.stop().await;

    // Offsets and the generation are in the log; members are not.
    let server = TestServer::start(dir.path()).await;
    let (_, info) = server.get(base).await;
    assert_eq!(info["generation"], generation);
    assert_eq!(info["members"], json!([]));
    let lag = &info["partitions"].as_array().expect("lag")[a_parts[0] as usize];
    assert_eq!(lag["committed"], 6);
    let (_, again) = server.post(&format!("{base}/join"), &json!({})).await;
    assert_eq!(again["generation"], generation + 1);
    let stale = server
        .post(
            &format!("{base}/heartbeat"),
            &json!({ "member_id": a_id, "generation": generation }),
        )
        .await;
    assert_error(&stale, 409, "unknown_member", None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_produce_retried_is_written_once() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    create_stream(&server, "ledger", 2).await;
    let request = json!({ "producer_id": 5, "sequence": 1, "records": [
        { "key": "a", "value": 1 }, { "key": "b", "value": 2 }, { "partition": 1, "value": 3 } ] });
    let (status, first) = server.post("/v1/streams/ledger/records", &request).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (_, again) = server.post("/v1/streams/ledger/records", &request).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["offsets"], first["offsets"]);
    let (_, info) = server.get("/v1/streams/ledger").await;
    let total: u64 = info["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|p| p["next_offset"].as_u64())
        .sum();
    assert_eq!(total, 3, "written once: {info}");
    let older =
        json!({ "producer_id": 5, "sequence": 0, "records": [{ "partition": 1, "value": 0 }] });
    let reply = server.post("/v1/streams/ledger/records", &older).await;
    assert_error(&reply, 409, "sequence_too_old", None);
    let unkeyed = json!({ "producer_id": 5, "sequence": 2, "records": [{ "value": 0 }] });
    let reply = server.post("/v1/streams/ledger/records", &unkeyed).await;
    assert_error(&reply, 400, "invalid_request", Some("records[0]"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_feeds_a_queue_each_record_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    create_stream(&server, "signups", 2).await;
    let batch: Vec<Value> = (0..10)
        .map(|n| json!({ "key": format!("u{n}"), "value": { "user": n } }))
        .collect();
    produce(&server, "signups", batch).await;
    let (status, feed) = server
        .put(
            "/v1/streams/signups/feeds/welcome",
            &json!({ "kind": "email.welcome" }),
        )
        .await;
    assert_eq!(status, 200, "{feed}");
    let ready = |n: u64| {
        let server = &server;
        async move {
            support::wait_until(&format!("{n} jobs in welcome"), || async {
                let (_, queue) = server.get("/v1/queues/welcome").await;
                queue["counts"]["ready"] == n
            })
            .await
        }
    };
    assert!(ready(10).await);
    let (_, jobs) = server.get("/v1/queues/welcome/jobs?limit=100").await;
    let mut users: Vec<u64> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            assert_eq!(j["kind"], "email.welcome");
            j["payload"]["user"].as_u64().expect("user")
        })
        .collect();
    users.sort_unstable();
    assert_eq!(users, (0..10).collect::<Vec<_>>());
    let (_, feeds) = server.get("/v1/streams/signups/feeds").await;
    let lag: u64 = feeds["feeds"][0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|p| p["lag"].as_u64())
        .sum();
    assert_eq!(lag, 0, "{feeds}");
    server.stop().await;

    // After a restart nothing is delivered twice, and new records keep coming.
    let server = TestServer::start(dir.path()).await;
    server
        .post(
            "/v1/streams/signups/records",
            &json!({ "records": [{ "key": "u10", "value": { "user": 10 } }] }),
        )
        .await;
    let eleven = support::wait_until("11 jobs", || async {
        let (_, queue) = server.get("/v1/queues/welcome").await;
        queue["counts"]["ready"] == 11
    })
    .await;
    assert!(eleven);
    let (_, queue) = server.get("/v1/queues/welcome").await;
    assert_eq!(queue["counts"]["ready"], 11, "no job twice: {queue}");
    let deleted = server
        .client
        .delete(server.url("/v1/streams/signups/feeds/welcome"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    server.stop().await;
}

/// Every record of the one-partition stream `accounts`, from the earliest kept.
async fn read_all(server: &TestServer) -> Value {
    let (status, reply) = server
        .get("/v1/streams/accounts/partitions/0/records?from=earliest&max_bytes=16777216")
        .await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_stream_keeps_each_key_s_newest_record_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let config = || {
        let mut config = sluice_server::ServerConfig::new(dir.path());
        config.stream_segment_bytes_max = 2_048;
        config.stream_maintenance_ms = 100;
        config
    };
    let server = TestServer::start_with(config()).await;
    let (status, info) = server
        .put(
            "/v1/streams/accounts",
            &json!({ "partitions": 1, "compaction": { "tombstone_retention_ms": 0 } }),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["compaction"], json!({ "tombstone_retention_ms": 0 }));
    // 400 updates of 10 accounts, then account-3 deleted (a tombstone), over many
    // segments.
    for round in 0..40 {
        let batch: Vec<Value> = (0..10)
            .map(|a| json!({ "key": format!("account-{a}"), "value": { "balance": round * 10 + a } }))
            .collect();
        produce(&server, "accounts", batch).await;
    }
    let (status, _) = server
        .post(
            "/v1/streams/accounts/records",
            &json!({ "records": [{ "key": "account-3" }] }),
        )
        .await;
    assert_eq!(status, 200);
    // Filler in later segments, so that the updates above are all in closed ones.
    for round in 0..10 {
        let filler: Vec<Value> = (0..10)
            .map(|n| json!({ "key": format!("other-{round}-{n}"), "value": "x".repeat(40) }))
            .collect();
        let (status, _) = server
            .post(
                "/v1/streams/accounts/records",
                &json!({ "records": filler }),
            )
            .await;
        assert_eq!(status, 200);
    }

    let accounts_left = |reply: &Value| {
        records(reply)
            .iter()
            .filter(|r| r["key"].as_str().is_some_and(|k| k.starts_with("account-")))
            .count()
    };
    let compacted = support::wait_until("the stream is compacted", || async {
        accounts_left(&read_all(&server).await) == 9
    })
    .await;
    assert!(compacted);
    let check = |reply: &Value| {
        let got = records(reply);
        let accounts: Vec<(String, Value)> = got
            .iter()
            .filter(|r| r["key"].as_str().is_some_and(|k| k.starts_with("account-")))
            .map(|r| {
                (
                    r["key"].as_str().unwrap_or("").to_owned(),
                    r["value"].clone(),
                )
            })
            .collect();
        // Each account once, with its last balance; account-3's tombstone is gone.
        let expected: Vec<(String, Value)> = (0..10)
            .filter(|&a| a != 3)
            .map(|a| (format!("account-{a}"), json!({ "balance": 390 + a })))
            .collect();
        assert_eq!(accounts, expected);
        // Offsets keep their numbers (with gaps) and the end is where it was.
        let offsets: Vec<u64> = got.iter().filter_map(|r| r["offset"].as_u64()).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        assert_eq!(reply["latest_offset"], 501);
        assert!(
            offsets.contains(&399),
            "the last update of account-9 is at 399"
        );
    };
    check(&read_all(&server).await);
    server.stop().await;
    let server = TestServer::start_with(config()).await;
    check(&read_all(&server).await);
    // Turning compaction off is logged too.
    let (status, info) = server
        .put("/v1/streams/accounts", &json!({ "partitions": 1 }))
        .await;
    assert_eq!(status, 200);
    assert!(info.get("compaction").is_none(), "{info}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_batches_in_the_binary_encoding_are_produced_and_fetched_as_stored() {
    use sluice_stream::batch::{self, CONTENT_TYPE as BATCH};
    use sluice_stream::Record;
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    create_stream(&server, "raw", 2).await;
    let record = |n: u32| Record {
        timestamp_ms: 1_700_000_000_000 + i64::from(n),
        key: Some(vec![0xff, n as u8]),
        value: Some(if n.is_multiple_of(2) {
            format!("{{\"n\":{n}}}").into_bytes()
        } else {
            vec![0, 1, 2, n as u8]
        }),
        headers: vec![("h".into(), b"v".to_vec())],
    };
    let frame = |partition: u32, records: &[Record], producer: u64, sequence: u32| {
        let mut out = partition.to_le_bytes().to_vec();
        out.extend(batch::encode(0, producer, sequence, records));
        out
    };
    let post = |body: Vec<u8>| {
        let request = server
            .client
            .post(server.url("/v1/streams/raw/records"))
            .header("content-type", BATCH)
            .body(body);
        async move {
            let reply = request.send().await.expect("POST");
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.expect("JSON"))
        }
    };
    // Two batches to partition 0, one to partition 1, in one request.
    let first: Vec<Record> = (0..3).map(record).collect();
    let second: Vec<Record> = (3..5).map(record).collect();
    let mut body = frame(0, &first, 0, 0);
    body.extend(frame(1, &[record(9)], 0, 0));
    body.extend(frame(0, &second, 0, 0));
    let (status, reply) = post(body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["batches"],
        json!([
            { "partition": 0, "base_offset": 0, "count": 3, "duplicate": false },
            { "partition": 1, "base_offset": 0, "count": 1, "duplicate": false },
            { "partition": 0, "base_offset": 3, "count": 2, "duplicate": false },
        ])
    );

    // Fetched as stored: the batches come back whole, from the one holding offset 1.
    let fetched = server
        .client
        .get(server.url("/v1/streams/raw/partitions/0/records?offset=1"))
        .header("accept", BATCH)
        .send()
        .await
        .expect("GET");
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.headers()["content-type"], BATCH);
    assert_eq!(fetched.headers()["x-sluice-next-offset"], "5");
    assert_eq!(fetched.headers()["x-sluice-latest-offset"], "5");
    let bytes = fetched.bytes().await.expect("body");
    let got = batch::decode_all(&bytes).expect("whole batches");
    let expected: Vec<(u64, Record)> = (0..5).map(|n| (u64::from(n), record(n))).collect();
    assert_eq!(got, expected);

    // The same records as JSON: a key that is not UTF-8 and a value that is not JSON come
    // in base64.
    let (_, json_fetch) = server
        .get("/v1/streams/raw/partitions/0/records?offset=0")
        .await;
    let records = records(&json_fetch);
    assert_eq!(records[0]["key_base64"], "/wA=");
    assert_eq!(records[0]["value"], json!({ "n": 0 }));
    assert_eq!(records[1]["value_base64"], "AAECAQ==");
    assert!(records[1].get("value").is_none());

    // An idempotent producer's batch retried is written once.
    let (_, once) = post(frame(1, &[record(7)], 42, 1)).await;
    let (_, again) = post(frame(1, &[record(7)], 42, 1)).await;
    assert_eq!(once["batches"][0]["duplicate"], false);
    assert_eq!(again["batches"][0]["duplicate"], true);
    assert_eq!(
        again["batches"][0]["base_offset"],
        once["batches"][0]["base_offset"]
    );

    // Bad input is refused whole, naming the batch; nothing of the request is written.
    let mut damaged = frame(0, &[record(1)], 0, 0);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let mut body = frame(0, &[record(1)], 0, 0);
    body.extend(damaged);
    let refused = post(body).await;
    assert_error(&refused, 400, "invalid_request", Some("batches[1]"));
    let mut too_big = record(1);
    too_big.value = Some(vec![b'x'; sluice_proto::limits::PAYLOAD_BYTES_MAX + 1]);
    let mut body = frame(0, &[record(1)], 0, 0);
    body.extend(frame(0, &[too_big], 0, 0));
    let refused = post(body).await;
    assert_error(&refused, 400, "invalid_request", Some("batches[1]"));
    let many: Vec<Record> = (0..=10_000u32).map(|_| record(2)).collect();
    let refused = post(frame(0, &many, 0, 0)).await;
    assert_error(&refused, 413, "batch_too_large", None);
    let refused = post(frame(5, &[record(1)], 0, 0)).await;
    assert_error(
        &refused,
        400,
        "invalid_request",
        Some("batches[0].partition"),
    );
    let refused = post(vec![0, 0, 0]).await;
    assert_error(&refused, 400, "invalid_request", Some("batches[0]"));
    let (_, info) = server.get("/v1/streams/raw").await;
    assert_eq!(info["partitions"][0]["next_offset"], 5, "{info}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_compaction_changes_nothing_and_the_server_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let too_long =
        json!({ "partitions": 2, "compaction": { "tombstone_retention_ms": 40_000_000_000u64 } });
    let refused = server.put("/v1/streams/orders", &too_long).await;
    assert_error(
        &refused,
        400,
        "invalid_request",
        Some("compaction.tombstone_retention_ms"),
    );
    let missing = server.get("/v1/streams/orders").await;
    assert_eq!(
        missing.0, 404,
        "the refused request created nothing: {}",
        missing.1
    );
    let (status, _) = server
        .put(
            "/v1/streams/orders",
            &json!({ "partitions": 2, "compaction": {} }),
        )
        .await;
    assert_eq!(status, 200);
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let (status, info) = server.get("/v1/streams/orders").await;
    assert_eq!(status, 200);
    assert_eq!(info["compaction"]["tombstone_retention_ms"], 86_400_000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fsync_batch_readers_get_records_once_the_periodic_sync_made_them_durable() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = sluice_server::ServerConfig::new(dir.path());
    config.fsync = sluice_wal::FsyncPolicy::Batch { interval_ms: 20 };
    let server = TestServer::start_with(config).await;
    create_stream(&server, "batched", 1).await;
    // A long-poll parked before the record is woken by the sync that makes it durable.
    let waiting =
        server.spawn_get("/v1/streams/batched/partitions/0/records?offset=0&wait_ms=10000");
    let (status, produced) = server
        .post(
            "/v1/streams/batched/records",
            &json!({ "records": [{ "value": { "n": 1 } }] }),
        )
        .await;
    assert_eq!(status, 200, "{produced}");
    let (reply, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long-poll is answered")
        .expect("task");
    assert_eq!(records(&reply)[0]["value"], json!({ "n": 1 }), "{reply}");
    assert_eq!(reply["latest_offset"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_across_segment_rolls_get_dense_durable_offsets() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = sluice_server::ServerConfig::new(dir.path());
    config.stream_segment_bytes_max = 4_096;
    let server = TestServer::start_with(config).await;
    create_stream(&server, "busy", 1).await;
    // 8 producers at once: their appends share syncs (group commit) and roll segments.
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..8u64 {
        let (client, url) = (
            server.client.clone(),
            server.url("/v1/streams/busy/records"),
        );
        tasks.spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..20u64 {
                let records: Vec<Value> = (0..5)
                    .map(|i| json!({ "value": { "p": producer, "r": round, "i": i }, "partition": 0 }))
                    .collect();
                let reply: Value = client
                    .post(&url)
                    .json(&json!({ "records": records }))
                    .send()
                    .await
                    .expect("produce")
                    .json()
                    .await
                    .expect("json");
                for offset in reply["offsets"].as_array().expect("offsets") {
                    acknowledged.push(offset["offset"].as_u64().expect("offset"));
                }
            }
            acknowledged
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acknowledged.extend(done.expect("producer"));
    }
    acknowledged.sort_unstable();
    assert_eq!(
        acknowledged,
        (0..800).collect::<Vec<u64>>(),
        "dense, none twice"
    );
    let (_, fetched) = server
        .get("/v1/streams/busy/partitions/0/records?offset=0&max_bytes=16777216")
        .await;
    assert_eq!(records(&fetched).len(), 800);
    assert_eq!(fetched["latest_offset"], 800);
    let (_, info) = server.get("/v1/streams/busy").await;
    assert!(
        std::fs::read_dir(dir.path().join("streams/busy/0"))
            .expect("partition dir")
            .filter(|e| e
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
            .count()
            > 3,
        "segments rolled: {info}"
    );
    server.stop().await;
}
