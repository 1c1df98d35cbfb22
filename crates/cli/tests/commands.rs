//! The CLI's admin commands as a user types them: the real binary as a server (a child
//! process) and as the client, its JSON output read back.

#[allow(dead_code)] // The harness's kill and SIGTERM helpers are for other tests.
mod support;

use std::process::Command;

use serde_json::Value;
use support::Server;

/// Runs `sluice --url BASE ARGS...`; its stdout as JSON, or the failure with stderr.
fn sluice(base: &str, args: &[&str]) -> Result<Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--url", base])
        .args(args)
        .output()
        .expect("run sluice");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_limits_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(dir.path(), &[]);
    server.wait_ready(&reqwest::Client::new()).await;
    let base = server.base.clone();

    let limits = sluice(
        &base,
        &[
            "queues",
            "limit",
            "api",
            "--key-concurrency",
            "1",
            "--key-rate",
            "100/60s",
        ],
    )
    .expect("limits set");
    assert_eq!(limits["limits"]["key_concurrency"], 1, "{limits}");
    assert_eq!(limits["limits"]["key_rate"]["per_ms"], 60_000, "{limits}");

    for _ in 0..2 {
        sluice(
            &base,
            &[
                "enqueue",
                "--queue",
                "api",
                "--kind",
                "call",
                "--limit-key",
                "token/7",
            ],
        )
        .expect("enqueued");
    }
    let queue = sluice(&base, &["queues", "show", "api"]).expect("queue");
    assert_eq!(queue["limit_keys"], 1, "{queue}");
    let key = sluice(&base, &["queues", "key", "api", "token/7"]).expect("key");
    assert_eq!(
        (key["jobs"].as_u64(), key["rate_tokens"].as_u64()),
        (Some(2), Some(100)),
        "{key}"
    );

    let error = sluice(&base, &["queues", "limit", "api", "--key-rate", "0/1s"])
        .expect_err("a rate of 0 is refused");
    assert!(error.contains("key_rate.limit"), "{error}");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(dir.path(), &[]);
    server.wait_ready(&reqwest::Client::new()).await;
    let base = server.base.clone();
    let created =
        sluice(&base, &["stream", "create", "clicks", "--partitions", "2"]).expect("created");
    assert_eq!(
        created["partitions"].as_array().map(Vec::len),
        Some(2),
        "{created}"
    );
    for n in 0..3 {
        let value = format!("{{\"n\":{n}}}");
        let produced = sluice(
            &base,
            &[
                "stream",
                "produce",
                "clicks",
                "--partition",
                "1",
                "--value",
                &value,
            ],
        )
        .expect("produced");
        assert_eq!(produced["offsets"][0]["offset"], n, "{produced}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--url",
            &base,
            "stream",
            "consume",
            "clicks",
            "--partition",
            "1",
        ])
        .output()
        .expect("consume");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ns: Vec<u64> = lines
        .iter()
        .filter_map(|r| r["value"]["n"].as_u64())
        .collect();
    assert_eq!(ns, vec![0, 1, 2]);
    let described = sluice(&base, &["stream", "describe", "clicks"]).expect("described");
    assert_eq!(described["partitions"][1]["next_offset"], 3);

    // A consumer group joined and committed over HTTP shows in `stream groups`.
    let http = reqwest::Client::new();
    let joined: Value = http
        .post(format!("{base}/v1/streams/clicks/groups/billing/join"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("join")
        .json()
        .await
        .expect("joined");
    let member = joined["member_id"]
        .as_str()
        .expect("a member id")
        .to_owned();
    let committed = http
        .post(format!("{base}/v1/streams/clicks/groups/billing/commit"))
        .json(
            &serde_json::json!({ "member_id": member, "generation": joined["generation"],
                                   "offsets": [{ "partition": 1, "offset": 2 }] }),
        )
        .send()
        .await
        .expect("commit");
    assert!(committed.status().is_success(), "{:?}", committed.status());
    let groups = sluice(&base, &["stream", "groups", "clicks"]).expect("groups");
    let group = &groups["groups"][0];
    assert_eq!(group["group"], "billing");
    assert_eq!(group["members"][0]["member_id"], member.as_str());
    assert_eq!(group["partitions"][1]["committed"], 2);
    assert_eq!(group["partitions"][1]["lag"], 1);
    let one = sluice(&base, &["stream", "groups", "clicks", "--group", "billing"]).expect("one");
    assert_eq!(one["generation"], joined["generation"]);
    assert!(sluice(&base, &["stream", "groups", "nope"]).is_err());
    server.kill();
}
