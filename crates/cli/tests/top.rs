//! `sluice top` in a real terminal: the real server (child process), the dashboard running
//! in a detached tmux session of its own (`tmux -L <socket>`), driven with `send-keys`
//! and read with `capture-pane`; what the keys did is checked through the API.
//! tmux must be installed (`scripts/test.sh` installs it when missing).

#[allow(dead_code)] // This test uses the server harness but not its SIGTERM helper.
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Server;

const DEADLINE: Duration = Duration::from_secs(20);

/// A tmux server of its own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("sluice-top-test-{}", std::process::id()),
        };
        let status = Command::new("tmux")
            .args(["-L", &tmux.socket, "new-session", "-d", "-s", "top"])
            .args(["-x", "160", "-y", "40", command])
            .status()
            .expect("tmux must be installed to run this test (scripts/test.sh installs it)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn session_alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "top"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `check`; returns it.
    async fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the screen never showed {what}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The line of the screen that shows `queue` in the queue table.
fn row<'a>(screen: &'a str, queue: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w.trim_matches('│') == queue))
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    http.post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_queues_and_workers_and_its_keys_pause_retry_and_filter() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    server.wait_ready(&http).await;
    let base = server.base.clone();

    // emails: 3 ready, 1 leased by worker "mailer-7"; reports: 1 dead job.
    for n in 0..4 {
        post(
            &http,
            &base,
            "/v1/jobs",
            json!({ "queue": "emails", "kind": "send", "payload": { "n": n } }),
        )
        .await;
    }
    let leased = post(
        &http,
        &base,
        "/v1/lease",
        json!({ "queues": ["emails"], "worker": "mailer-7" }),
    )
    .await;
    let leased_id = leased["jobs"][0]["id"].as_str().expect("a job").to_owned();
    post(
        &http,
        &base,
        "/v1/jobs",
        json!({ "queue": "reports", "kind": "build", "max_attempts": 1 }),
    )
    .await;
    let report = post(&http, &base, "/v1/lease", json!({ "queues": ["reports"] })).await;
    let report_job = &report["jobs"][0];
    post(
        &http,
        &base,
        &format!("/v1/jobs/{}/fail", report_job["id"].as_str().expect("id")),
        json!({ "lease_id": report_job["lease_id"], "error": "disk full" }),
    )
    .await;

    let command = format!(
        "{} top --url {base} --interval-ms 200",
        env!("CARGO_BIN_EXE_sluice")
    );
    let tmux = Tmux::start(&command);
    let screen = tmux
        .wait_screen("both queues", |s| {
            row(s, "emails").is_some() && row(s, "reports").is_some()
        })
        .await;
    let emails = row(&screen, "emails").expect("emails row");
    let cells: Vec<&str> = emails.split_whitespace().collect();
    assert!(cells.contains(&"active"), "{emails}");
    assert!(
        cells.windows(3).any(|w| w == ["3", "0", "1"]),
        "ready 3, scheduled 0, leased 1: {emails}"
    );
    // The selected queue is the first (emails): its worker and current job are shown.
    let screen = tmux
        .wait_screen("the worker mailer-7", |s| s.contains("mailer-7"))
        .await;
    assert!(screen.contains(&leased_id), "{screen}");
    // A registered worker that leases from emails is listed with its host.
    let client = reqwest::Client::new();
    let registered = client
        .put(format!("{base}/v1/workers/reg-9"))
        .json(&json!({ "host": "box-9", "concurrency": 4, "queues": ["emails"] }))
        .send()
        .await
        .expect("PUT worker");
    assert_eq!(registered.status(), 200);
    let screen = tmux
        .wait_screen("the registered worker reg-9", |s| s.contains("reg-9"))
        .await;
    let reg = row(&screen, "reg-9").expect("reg-9 row");
    assert!(reg.contains("box-9") && reg.contains("0/4"), "{reg}");
    // Wait and run p95 over the last minute, as the API reports them: emails had a
    // lease (a wait), reports a failed attempt (a run).
    assert!(
        screen.contains("WAIT95") && screen.contains("RUN95"),
        "{screen}"
    );
    let short = |ms: &Value| match ms.as_u64() {
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        Some(ms) => format!("{:.1}m", ms as f64 / 60_000.0),
        None => panic!("no p95 in the API: {ms}"),
    };
    let wait = short(&get(&http, &base, "/v1/queues/emails").await["recent"]["wait_p95_ms"]);
    let run = short(&get(&http, &base, "/v1/queues/reports").await["recent"]["run_p95_ms"]);
    let emails = row(&screen, "emails").expect("emails row");
    let reports = row(&screen, "reports").expect("reports row");
    assert!(
        emails.split_whitespace().any(|c| c == wait),
        "wait p95 {wait}: {emails}"
    );
    assert!(
        reports.split_whitespace().any(|c| c == run),
        "run p95 {run}: {reports}"
    );

    // p pauses the selected queue.
    tmux.keys(&["p"]);
    tmux.wait_screen("emails paused", |s| {
        row(s, "emails").is_some_and(|r| r.contains("paused"))
    })
    .await;
    assert_eq!(get(&http, &base, "/v1/queues/emails").await["paused"], true);
    tmux.keys(&["p"]);
    tmux.wait_screen("emails active again", |s| {
        row(s, "emails").is_some_and(|r| r.contains("active"))
    })
    .await;
    assert_eq!(
        get(&http, &base, "/v1/queues/emails").await["paused"],
        false
    );

    // Down selects reports; r retries its dead job.
    tmux.keys(&["Down"]);
    tmux.wait_screen("the workers of reports", |s| {
        s.contains("workers on reports")
    })
    .await;
    tmux.keys(&["r"]);
    tmux.wait_screen("the retry message", |s| s.contains("retried 1 dead jobs"))
        .await;
    let queue = get(&http, &base, "/v1/queues/reports").await;
    assert_eq!(queue["counts"]["dead"], 0, "{queue}");
    assert_eq!(queue["counts"]["ready"], 1, "{queue}");

    // / filters by name. The keys arrive one by one ("r" alone already hides emails), so
    // wait for the whole filter to be on screen before judging the rows.
    tmux.keys(&["/", "rep", "Enter"]);
    let screen = tmux
        .wait_screen("the filter \"rep\"", |s| s.contains("matching \"rep\""))
        .await;
    assert!(row(&screen, "reports").is_some(), "{screen}");
    assert!(row(&screen, "emails").is_none(), "{screen}");

    // q quits: the session (whose only command is sluice top) ends.
    tmux.keys(&["q"]);
    let started = Instant::now();
    while tmux.session_alive() {
        assert!(started.elapsed() < DEADLINE, "sluice top did not quit on q");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tmux);
    server.kill();
}
