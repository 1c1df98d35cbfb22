//! Alerts end to end: rules over the HTTP API, a real server evaluating them, and a local
//! HTTP sink receiving the webhook and Slack notifications (signed, retried, resolved,
//! silenced), with the state checked through the API and across a restart.

#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{json, Value};
use support::{assert_error, wait_until, TestServer};

/// What the sink received: path, `x-sluice-signature`, body.
type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

/// A sink on a random loopback port: `/flaky` answers 500 to its first request, the rest
/// 200. Returns its base URL.
async fn sink() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let signature = headers
                    .get("x-sluice-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let mut seen = seen.lock().expect("lock");
                let first_flaky =
                    uri.path() == "/flaky" && !seen.iter().any(|(path, _, _)| path == "/flaky");
                seen.push((
                    uri.path().to_owned(),
                    signature,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                if first_flaky {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
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

fn received(seen: &Seen, path: &str) -> Vec<(Option<String>, Value)> {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(p, _, _)| p == path)
        .map(|(_, signature, body)| {
            (
                signature.clone(),
                serde_json::from_str(body).unwrap_or(Value::Null),
            )
        })
        .collect()
}

async fn put(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    server.put(path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_read_back_and_edited_keeps_its_webhook_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let (sink, seen) = sink().await;
    let server = TestServer::start(dir.path()).await;
    let rule = json!({
        "queue": "ks", "metric": "depth", "op": ">", "threshold": 100,
        "notifiers": [
            { "kind": "webhook", "url": format!("{sink}/hook"), "secret": "s3cret" },
            { "kind": "webhook", "url": format!("{sink}/plain") }
        ]
    });
    let (status, info) = put(&server, "/v1/alerts/rules/kept", &rule).await;
    assert_eq!(status, 200, "{info}");
    // Whether each webhook is signed is shown; the secret is not.
    assert_eq!(info["notifiers"][0]["signed"], true, "{info}");
    assert_eq!(info["notifiers"][1]["signed"], false, "{info}");
    assert!(info["notifiers"][0].get("secret").is_none());

    // What a client that never knew the secret does: read the rule, change the
    // threshold, send the notifiers back as read with `keep_secret`.
    let mut notifiers = info["notifiers"].clone();
    notifiers[0]["keep_secret"] = json!(true);
    notifiers[1]["keep_secret"] = json!(true);
    let edited = json!({
        "queue": "ks", "metric": "depth", "op": ">", "threshold": 0, "notifiers": notifiers,
    });
    let (status, info) = put(&server, "/v1/alerts/rules/kept", &edited).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["threshold"], 0.0);
    assert_eq!(info["notifiers"][0]["signed"], true, "{info}");
    assert_eq!(info["notifiers"][1]["signed"], false, "{info}");
    // And one that sends a rule back exactly as read (`signed: true`, no secret): the
    // secret stays too.
    let as_read = json!({
        "queue": "ks", "metric": "depth", "op": ">", "threshold": 0,
        "notifiers": info["notifiers"].clone(),
    });
    let (status, info) = put(&server, "/v1/alerts/rules/kept", &as_read).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["notifiers"][0]["signed"], true, "{info}");

    // It fires (depth 1 > 0): the webhook is still signed with the first secret.
    server
        .enqueue(json!({ "queue": "ks", "kind": "k", "payload": {} }))
        .await;
    let notified = wait_until("the firing notifications", || async {
        received(&seen, "/hook").len() == 1 && received(&seen, "/plain").len() == 1
    })
    .await;
    assert!(notified, "{:?}", seen.lock().expect("lock"));
    let raw = seen
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, _, _)| p == "/hook")
        .map(|(_, signature, body)| (signature.clone(), body.clone()))
        .expect("the webhook was called");
    assert_eq!(
        raw.0.as_deref(),
        Some(sluice_server::alerting::sign("s3cret", &raw.1).as_str())
    );
    assert_eq!(received(&seen, "/plain")[0].0, None, "still unsigned");

    // Refused: with a secret as well, for a url the rule does not have, for a new rule.
    let keep = |url: String, secret: Option<&str>| {
        let mut notifier = json!({ "kind": "webhook", "url": url, "keep_secret": true });
        if let Some(secret) = secret {
            notifier["secret"] = json!(secret);
        }
        json!({ "queue": "ks", "metric": "depth", "op": ">", "threshold": 1,
                "notifiers": [notifier] })
    };
    for (path, body) in [
        ("kept", keep(format!("{sink}/hook"), Some("other"))),
        ("kept", keep(format!("{sink}/elsewhere"), None)),
        ("new-rule", keep(format!("{sink}/hook"), None)),
    ] {
        let reply = put(&server, &format!("/v1/alerts/rules/{path}"), &body).await;
        assert_error(
            &reply,
            400,
            "invalid_request",
            Some("notifiers[0].keep_secret"),
        );
    }
    // A rule read elsewhere as signed cannot bring its secret along.
    let copied = json!({ "queue": "ks", "metric": "depth", "op": ">", "threshold": 1,
        "notifiers": [{ "kind": "webhook", "url": format!("{sink}/hook"), "signed": true }] });
    let reply = put(&server, "/v1/alerts/rules/copy", &copied).await;
    assert_error(&reply, 400, "invalid_request", Some("notifiers[0].signed"));
    let (_, after) = server.get("/v1/alerts/rules/kept").await;
    assert_eq!(after["threshold"], 0.0, "a refused PUT changed nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_notifies_signed_retries_resolves_and_is_silenced() {
    let dir = tempfile::tempdir().expect("dir");
    let (sink, seen) = sink().await;
    let server = TestServer::start(dir.path()).await;
    let rule = json!({
        "queue": "al", "metric": "depth", "op": ">", "threshold": 2, "severity": "critical",
        "notifiers": [
            { "kind": "webhook", "url": format!("{sink}/hook"), "secret": "s3cret" },
            { "kind": "slack", "url": format!("{sink}/slack") },
            { "kind": "webhook", "url": format!("{sink}/flaky") }
        ]
    });
    let (status, info) = put(&server, "/v1/alerts/rules/deep", &rule).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["firing"], false);
    assert!(
        info["notifiers"][0].get("secret").is_none(),
        "secrets are not shown: {info}"
    );

    for bad in [
        (
            json!({ "queue": "al", "metric": "nope", "op": ">", "threshold": 1 }),
            "metric",
        ),
        (
            json!({ "queue": "al", "metric": "depth", "op": "=", "threshold": 1 }),
            "op",
        ),
        (
            json!({ "queue": "al", "metric": "depth", "op": ">", "threshold": 1,
                    "notifiers": [{ "kind": "slack", "url": "ftp://x" }] }),
            "notifiers[0].url",
        ),
    ] {
        let reply = put(&server, "/v1/alerts/rules/bad", &bad.0).await;
        assert_error(&reply, 400, "invalid_request", Some(bad.1));
    }

    // Three ready jobs: depth 3 > 2 fires at the next evaluation (every second).
    for _ in 0..3 {
        server
            .enqueue(json!({ "queue": "al", "kind": "k", "payload": {} }))
            .await;
    }
    let notified = wait_until("the firing notifications", || async {
        received(&seen, "/hook").len() == 1
            && received(&seen, "/slack").len() == 1
            && received(&seen, "/flaky").len() == 2
    })
    .await;
    assert!(notified, "{:?}", seen.lock().expect("lock"));
    let hooks = received(&seen, "/hook");
    let (signature, body) = &hooks[0];
    assert_eq!(body["alert"], "deep");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["value"], 3.0);
    assert_eq!(body["severity"], "critical");
    let raw = seen
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, _, _)| p == "/hook")
        .map(|(_, _, b)| b.clone())
        .expect("raw body");
    assert_eq!(
        signature.as_deref(),
        Some(sluice_server::alerting::sign("s3cret", &raw).as_str())
    );
    let slack = &received(&seen, "/slack")[0].1;
    assert!(
        slack["text"]
            .as_str()
            .is_some_and(|t| t.contains("deep firing") && t.contains("[critical]")),
        "{slack}"
    );
    assert_eq!(
        received(&seen, "/flaky")[0].0,
        None,
        "no secret, no signature"
    );
    let (_, firing) = server.get("/v1/alerts").await;
    assert_eq!(firing["rules"][0]["name"], "deep", "{firing}");
    assert_eq!(firing["rules"][0]["value"], 3.0);

    // Purged: depth 0, the alert resolves and says so.
    let (status, _) = server.post("/v1/queues/al/purge", &json!({})).await;
    assert_eq!(status, 200);
    let resolved = wait_until("the resolved notification", || async {
        received(&seen, "/hook").len() == 2
    })
    .await;
    assert!(resolved);
    assert_eq!(received(&seen, "/hook")[1].1["status"], "resolved");

    // Silenced: it fires again, in the history, but nothing is sent.
    let (status, silence) = put(
        &server,
        "/v1/alerts/silences/maintenance",
        &json!({ "rule": "deep", "duration_ms": 3_600_000, "comment": "migrating" }),
    )
    .await;
    assert_eq!(status, 200, "{silence}");
    assert_eq!(silence["active"], true);
    let (_, before) = server.get("/v1/queues/sluice.alerts").await;
    for _ in 0..3 {
        server
            .enqueue(json!({ "queue": "al", "kind": "k", "payload": {} }))
            .await;
    }
    let fired_again = wait_until("the silenced firing", || async {
        let (_, history) = server.get("/v1/alerts/history").await;
        history["transitions"].as_array().map_or(0, Vec::len) == 3
    })
    .await;
    assert!(fired_again);
    let (_, history) = server.get("/v1/alerts/history").await;
    let newest = &history["transitions"][0];
    assert_eq!(
        (newest["status"].clone(), newest["silenced"].clone()),
        (json!("firing"), json!(true))
    );
    let (_, after) = server.get("/v1/queues/sluice.alerts").await;
    // Deliveries of the resolve may still be running: compare how many jobs there are.
    let total = |queue: &Value| -> u64 {
        queue["counts"]
            .as_object()
            .map_or(0, |c| c.values().filter_map(Value::as_u64).sum())
    };
    assert_eq!(
        total(&before),
        total(&after),
        "no notification was enqueued"
    );
    server.stop().await;

    // Rules, silences and the firing state are in the log: no second notification.
    let server = TestServer::start(dir.path()).await;
    let (_, rule) = server.get("/v1/alerts/rules/deep").await;
    assert_eq!(
        (rule["firing"].clone(), rule["silenced"].clone()),
        (json!(true), json!(true))
    );
    let (_, silences) = server.get("/v1/alerts/silences").await;
    assert_eq!(silences["silences"][0]["id"], "maintenance");
    let deleted = server
        .client
        .delete(server.url("/v1/alerts/rules/deep"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    assert_eq!(server.get("/v1/alerts/rules/deep").await.0, 404);
    server.stop().await;
}
