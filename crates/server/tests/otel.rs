//! OpenTelemetry export (feature `otel`): a real server exports to a local OTLP/HTTP sink;
//! what arrives is checked for the counts the API shows, and parsed by the OpenTelemetry
//! project's own protobuf classes (`scripts/otlp_check.py`, run by `scripts/test.sh`).
#![cfg(feature = "otel")]

#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::Uri;
use serde_json::{json, Value};
use sluice_server::ServerConfig;
use support::{wait_until, TestServer};

type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn collector() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: Uri, body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push((
                    uri.path().to_owned(),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                "{}"
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, seen)
}

/// The data points of metric `name` in an export request.
fn points(request: &Value, name: &str) -> Vec<Value> {
    request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == name)
        .flat_map(|m| {
            ["sum", "gauge", "histogram"]
                .iter()
                .filter_map(|kind| m[kind]["dataPoints"].as_array().cloned())
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn attribute<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_metrics_are_exported_over_otlp_json() {
    let (endpoint, seen) = collector().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = ServerConfig::new(dir.path());
    config.otlp_endpoint = Some(endpoint);
    config.otlp_interval_ms = 200;
    let server = TestServer::start_with(config).await;
    for _ in 0..3 {
        server
            .enqueue(json!({ "queue": "ot", "kind": "email.send", "payload": {} }))
            .await;
    }
    let (_, leased) = server
        .post("/v1/lease", &json!({ "queues": ["ot"], "max_jobs": 1 }))
        .await;
    let job = &leased["jobs"][0];
    let (status, _) = server
        .post(
            &format!("/v1/jobs/{}/ack", job["id"].as_str().expect("id")),
            &json!({ "lease_id": job["lease_id"] }),
        )
        .await;
    assert_eq!(status, 200);

    let count = |request: &Value, outcome: &str| {
        points(request, "sluice.jobs")
            .into_iter()
            .find(|p| {
                attribute(p, "queue") == Some("ot") && attribute(p, "outcome") == Some(outcome)
            })
            .and_then(|p| p["asInt"].as_str().map(str::to_owned))
    };
    let mut last = Value::Null;
    let exported = wait_until("an export with the ack in it", || {
        let seen = seen.clone();
        let found = seen
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|(path, _)| path == "/v1/metrics")
            .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok());
        if let Some(request) = &found {
            last = request.clone();
        }
        let done = found.is_some_and(|r| count(&r, "succeeded").as_deref() == Some("1"));
        async move { done }
    })
    .await;
    assert!(exported, "{last}");
    assert_eq!(count(&last, "enqueued").as_deref(), Some("3"));
    assert_eq!(count(&last, "leased").as_deref(), Some("1"));
    let ready = points(&last, "sluice.queue.jobs")
        .into_iter()
        .find(|p| attribute(p, "queue") == Some("ot") && attribute(p, "state") == Some("ready"))
        .expect("ready gauge");
    assert_eq!(ready["asInt"], "2");
    for name in ["sluice.job.wait", "sluice.job.run"] {
        let point = points(&last, name)
            .into_iter()
            .find(|p| attribute(p, "queue") == Some("ot"))
            .expect("a histogram point");
        let buckets: Vec<u64> = point["bucketCounts"]
            .as_array()
            .expect("buckets")
            .iter()
            .filter_map(|b| b.as_str()?.parse().ok())
            .collect();
        let bounds = point["explicitBounds"].as_array().expect("bounds").len();
        assert_eq!(buckets.len(), bounds + 1, "{point}");
        assert_eq!(
            buckets.iter().sum::<u64>().to_string(),
            point["count"],
            "{point}"
        );
        assert_eq!(point["count"], "1");
    }

    // The OpenTelemetry project's own parser accepts it.
    match std::env::var("SLUICE_OTLP_PYTHON") {
        Ok(python) => {
            let file = dir.path().join("export.json");
            std::fs::write(&file, last.to_string()).expect("write");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/otlp_check.py");
            let output = std::process::Command::new(python)
                .arg(script)
                .arg(&file)
                .output()
                .expect("run the OTLP check");
            assert!(
                output.status.success(),
                "the OTLP parser refused the export: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        }
        Err(_) => assert!(
            std::env::var("SLUICE_REQUIRE_OTLP_CHECK").is_err(),
            "SLUICE_REQUIRE_OTLP_CHECK is set but SLUICE_OTLP_PYTHON is not"
        ),
    }
    server.stop().await;
}
