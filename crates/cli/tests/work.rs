//! `sluice work` as a user runs it: the real binary as a server and as a worker (child
//! processes), jobs enqueued over HTTP, an HTTP sink on loopback for `--kind http`, a
//! shell command for `--kind exec`; results checked through the API; SIGTERM stops the
//! worker with exit status 0.

#[allow(dead_code)] // This test uses the server harness but not its SIGTERM helper.
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use serde_json::{json, Value};
use support::Server;

const DEADLINE: Duration = Duration::from_secs(30);

/// What the sink received: method, path, the `x-token` header, body.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;

/// An HTTP sink on a random loopback port: `/ok` answers 200, `/fail` 500 with a body.
async fn sink() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback(any({
        let seen = seen.clone();
        move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let token = headers
                    .get("x-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let path = uri.path().to_owned();
                seen.lock().expect("lock").push((
                    method.to_string(),
                    path.clone(),
                    token,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                if path == "/fail" {
                    (StatusCode::INTERNAL_SERVER_ERROR, "boom: the sink refused")
                } else {
                    (StatusCode::OK, "ok")
                }
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("sink serves");
    });
    (format!("http://{address}"), seen)
}

fn start_worker(base: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["work", "--url", base])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice work")
}

/// SIGTERM, then the exit status and stderr (within the deadline).
async fn stop_worker(mut child: Child) -> (std::process::ExitStatus, String) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "sluice work did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    (status, stderr)
}

async fn enqueue(http: &reqwest::Client, base: &str, job: Value) -> String {
    let reply: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&job)
        .send()
        .await
        .expect("enqueue")
        .json()
        .await
        .expect("json");
    reply["id"].as_str().expect("an id").to_owned()
}

/// Waits until the job is in `state` and returns it.
async fn wait_state(http: &reqwest::Client, base: &str, id: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let job: Value = http
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if job["state"] == state {
            return job;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "job {id} never became {state}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn error_of(job: &Value) -> String {
    job["history"][0]["error"].as_str().unwrap_or("").to_owned()
}

async fn server(dir: &Path) -> (Server, reqwest::Client) {
    let mut server = Server::start(dir, &[]);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;
    (server, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_worker_makes_each_request_and_fails_jobs_on_non_2xx() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, http) = server(dir.path()).await;
    let base = server.base.clone();
    let (sink, seen) = sink().await;
    let ok = enqueue(
        &http,
        &base,
        json!({ "queue": "hooks", "kind": "order.paid", "payload": {
            "method": "PUT", "url": format!("{sink}/ok"),
            "headers": { "x-token": "secret-1" }, "body": { "order": 7 } } }),
    )
    .await;
    let text = enqueue(
        &http,
        &base,
        json!({ "queue": "hooks", "kind": "note", "payload": {
            "url": format!("{sink}/ok"), "body": "plain text" } }),
    )
    .await;
    let refused = enqueue(
        &http,
        &base,
        json!({ "queue": "hooks", "kind": "order.paid", "max_attempts": 1, "payload": {
            "method": "POST", "url": format!("{sink}/fail") } }),
    )
    .await;
    let malformed = enqueue(
        &http,
        &base,
        json!({ "queue": "hooks", "kind": "x", "max_attempts": 1, "payload": { "no_url": 1 } }),
    )
    .await;

    let worker = start_worker(
        &base,
        &["--queue", "hooks", "--kind", "http", "--concurrency", "4"],
    );
    wait_state(&http, &base, &ok, "succeeded").await;
    wait_state(&http, &base, &text, "succeeded").await;
    let job = wait_state(&http, &base, &refused, "dead").await;
    assert_eq!(
        error_of(&job),
        "HTTP 500 Internal Server Error: boom: the sink refused"
    );
    let job = wait_state(&http, &base, &malformed, "dead").await;
    assert!(
        error_of(&job).starts_with("payload does not decode: unknown field `no_url`"),
        "{job}"
    );
    let (status, stderr) = stop_worker(worker).await;
    assert!(
        status.success(),
        "sluice work exited with {status}: {stderr}"
    );
    assert!(stderr.contains("succeeded: 2"), "{stderr}");

    let seen = seen.lock().expect("lock").clone();
    assert!(seen.contains(&(
        "PUT".into(),
        "/ok".into(),
        Some("secret-1".into()),
        r#"{"order":7}"#.into()
    )));
    assert!(seen.contains(&("POST".into(), "/ok".into(), None, "plain text".into())));
    assert_eq!(seen.iter().filter(|s| s.1 == "/fail").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_worker_pipes_the_payload_to_the_command_and_fails_on_nonzero_exit() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, http) = server(dir.path()).await;
    let base = server.base.clone();
    let out = dir.path().join("out.txt");
    let good = enqueue(
        &http,
        &base,
        json!({ "queue": "cmds", "kind": "good", "payload": { "n": 1 } }),
    )
    .await;
    let bad = enqueue(
        &http,
        &base,
        json!({ "queue": "cmds", "kind": "bad", "max_attempts": 1, "payload": { "n": 2 } }),
    )
    .await;
    // A 300 KB payload for a command that writes 200 KB to stderr before it reads its
    // input: both pipes fill up unless the worker feeds and drains them at once.
    let noisy = enqueue(
        &http,
        &base,
        json!({ "queue": "cmds", "kind": "noisy", "max_attempts": 1,
                "payload": "x".repeat(300_000) }),
    )
    .await;
    // Appends "<kind> <attempt> <payload>" to the file; fails (with a message on stderr)
    // for kind `bad`.
    let script = format!(
        r#"if [ "$SLUICE_JOB_KIND" = noisy ]; then head -c 200000 /dev/zero | tr '\0' e >&2; cat > /dev/null; exit 4; fi; printf '%s %s %s\n' "$SLUICE_JOB_KIND" "$SLUICE_JOB_ATTEMPT" "$(cat)" >> '{}'; if [ "$SLUICE_JOB_KIND" = bad ]; then echo 'bad job' >&2; exit 3; fi"#,
        out.display()
    );
    let worker = start_worker(
        &base,
        &[
            "--queue", "cmds", "--kind", "exec", "--", "sh", "-c", &script,
        ],
    );
    wait_state(&http, &base, &good, "succeeded").await;
    let job = wait_state(&http, &base, &bad, "dead").await;
    assert_eq!(error_of(&job), "sh exited with status 3: bad job");
    let job = wait_state(&http, &base, &noisy, "dead").await;
    let error = error_of(&job);
    assert!(
        error.starts_with("sh exited with status 4: eeee") && error.len() < 600,
        "only the start of stderr is kept: {} bytes",
        error.len()
    );
    let (status, stderr) = stop_worker(worker).await;
    assert!(
        status.success(),
        "sluice work exited with {status}: {stderr}"
    );

    let written = std::fs::read_to_string(&out).expect("the command wrote its file");
    let mut lines: Vec<&str> = written.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec![r#"bad 1 {"n":2}"#, r#"good 1 {"n":1}"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_without_a_command_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["work", "--queue", "q", "--kind", "exec"])
        .output()
        .expect("run sluice work");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--kind exec needs a command after `--`"),
        "{stderr}"
    );
}
