//! A real Sluice server on a random loopback port, driven over HTTP with `reqwest`, for
//! end-to-end tests. Each server owns its task and its shutdown trigger; the data
//! directory belongs to the test, so a second server can reopen it.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_server::{ServerConfig, ServerError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for anything the tests poll for (readiness, a lease to expire, a snapshot).
pub const POLL_DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub struct TestServer {
    pub base_url: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Starts a server with default settings (fsync always) on `data_dir`.
    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(ServerConfig::new(data_dir)).await
    }

    /// Starts a server and returns once `GET /readyz` answers 200.
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_server::run(listener, config, async move {
            // A dropped sender also stops the server, so a failing test does not leak it.
            let _ = shutdown_rx.await;
        }));
        let server = TestServer {
            base_url: format!("http://{address}"),
            client: reqwest::Client::new(),
            shutdown: Some(shutdown_tx),
            task: Some(task),
        };
        let ready = wait_until("GET /readyz answers 200", || async {
            server
                .client
                .get(server.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "server on {address} did not become ready");
        server
    }

    /// Stops the server gracefully and checks that `run` returned Ok.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task did not panic");
            if let Err(error) = result {
                panic!("server returned an error at shutdown: {error}");
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("GET sent");
        read(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST sent");
        read(response).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT sent");
        read(response).await
    }

    /// POSTs raw bytes as `application/json` (for bodies that are not valid JSON).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST sent");
        read(response).await
    }

    /// Enqueues one job and returns its id; the job must be new (201).
    pub async fn enqueue(&self, spec: Value) -> String {
        let (status, body) = self.post("/v1/jobs", &spec).await;
        assert_eq!(status, 201, "enqueue {spec}: {body}");
        assert_eq!(body["duplicate"], false);
        body["id"].as_str().expect("id is a string").to_owned()
    }

    /// Enqueues a batch; returns the ids in order.
    pub async fn enqueue_batch(&self, jobs: Vec<Value>) -> Vec<String> {
        let (status, body) = self.post("/v1/jobs/batch", &json!({ "jobs": jobs })).await;
        assert_eq!(status, 201, "enqueue batch: {body}");
        body["jobs"]
            .as_array()
            .expect("jobs is an array")
            .iter()
            .map(|j| j["id"].as_str().expect("id is a string").to_owned())
            .collect()
    }

    /// Leases without waiting; returns the leased jobs as the API shows them.
    pub async fn lease(&self, queues: &[&str], max_jobs: u32) -> Vec<Value> {
        let (status, body) = self
            .post(
                "/v1/lease",
                &json!({ "queues": queues, "max_jobs": max_jobs, "worker": "test-worker" }),
            )
            .await;
        assert_eq!(status, 200, "lease: {body}");
        body["jobs"].as_array().expect("jobs is an array").clone()
    }

    /// Leases exactly one job from `queue` and returns `(id, lease_id)`.
    pub async fn lease_one(&self, queue: &str) -> (String, String) {
        let jobs = self.lease(&[queue], 1).await;
        assert_eq!(jobs.len(), 1, "one job leased from {queue}: {jobs:?}");
        (
            jobs[0]["id"].as_str().expect("id").to_owned(),
            jobs[0]["lease_id"].as_str().expect("lease_id").to_owned(),
        )
    }

    /// Starts a `GET` (a long-poll) in a task of its own; the task gives its JSON answer
    /// and how long it took.
    pub fn spawn_get(&self, path: &str) -> JoinHandle<(Value, Duration)> {
        let (client, url) = (self.client.clone(), self.url(path));
        tokio::spawn(async move {
            let started = Instant::now();
            let reply: Value = client
                .get(url)
                .send()
                .await
                .expect("GET sent")
                .json()
                .await
                .expect("a JSON answer");
            (reply, started.elapsed())
        })
    }

    /// Acks job `id` under `lease_id`; the ack must answer 200.
    pub async fn ack(&self, id: &str, lease_id: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/jobs/{id}/ack"),
                &json!({ "lease_id": lease_id }),
            )
            .await;
        assert_eq!(status, 200, "ack {id}: {body}");
    }

    /// `GET /v1/jobs/{id}`, which must answer 200.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "GET job {id}: {body}");
        body
    }

    /// `GET /v1/queues/{name}`, which must answer 200; returns its counts.
    pub async fn counts(&self, queue: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/queues/{queue}")).await;
        assert_eq!(status, 200, "GET queue {queue}: {body}");
        body["counts"].clone()
    }

    /// Polls `GET /v1/jobs/{id}` until `done` holds; returns the last view, or panics
    /// after `POLL_DEADLINE`.
    pub async fn wait_for_job(
        &self,
        id: &str,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                started.elapsed() < POLL_DEADLINE,
                "job {id}: {what} did not happen within {POLL_DEADLINE:?}; last seen {job}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that panicked before `stop` still tells its server to stop.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}), content-type {content_type:?}: {text:.200}"
        )
    });
    assert!(
        content_type.starts_with("application/json"),
        "status {status}: content-type {content_type:?}, body {text:.200}"
    );
    (status, body)
}

/// Polls `check` until it is true or `POLL_DEADLINE` passes; returns whether it held.
pub async fn wait_until<F, Fut>(what: &str, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_within(what, POLL_DEADLINE, check).await
}

/// As `wait_until`, with a deadline of its own (for what the server does on a period
/// longer than `POLL_DEADLINE` allows for).
pub async fn wait_until_within<F, Fut>(what: &str, deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() >= deadline {
            eprintln!("gave up waiting: {what}");
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Milliseconds since the Unix epoch, from the same clock the server uses.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses an RFC 3339 time from the API into Unix milliseconds.
pub fn time_ms(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    sluice_proto::rfc3339::parse_ms(text).unwrap_or_else(|| panic!("{text} is not RFC 3339"))
}

/// The `error` object of an error reply, checked to have the documented shape.
pub fn error_of(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(error["code"].is_string(), "no error.code in {body}");
    assert!(error["message"].is_string(), "no error.message in {body}");
    error
}

/// The `path`s of an error's details.
pub fn detail_paths(body: &Value) -> Vec<String> {
    error_of(body)["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .map(|d| d["path"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts an error reply: status, code, and (when given) that a detail has `path`.
#[track_caller]
pub fn assert_error(reply: &(u16, Value), status: u16, code: &str, path: Option<&str>) {
    let (got_status, body) = reply;
    assert_eq!(*got_status, status, "status of {body}");
    assert_eq!(error_of(body)["code"], code, "code of {body}");
    if let Some(path) = path {
        assert!(
            detail_paths(body).iter().any(|p| p == path),
            "expected a detail with path {path:?} in {body}"
        );
    }
}

/// The names of the snapshot files in `dir`.
pub fn snapshot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("snapshot-") && name.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies every file under `from` into `to`, as they are on disk now: with fsync always
/// and no request in flight, that is what a machine that lost power at this moment would
/// find on restart.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy dir");
    for entry in std::fs::read_dir(from).expect("read the data dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}
