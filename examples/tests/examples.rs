//! The examples as a user runs them: the producer and worker binaries against a real
//! server (in-process, random loopback port, its own data directory).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use sluice_client::{Client, JobState};
use support::TestServer;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_enqueues_and_worker_runs_every_job_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let url = server.url.clone();

    let produced = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_producer"))
                .args(["--url", &url, "--count", "25"])
                .output()
                .expect("run the producer")
        }
    })
    .await
    .expect("producer task");
    assert!(
        produced.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let ids: Vec<String> = String::from_utf8(produced.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 25);

    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let client = Client::new(&url).expect("client");
    let started = Instant::now();
    for id in &ids {
        while client.job(id).await.expect("GET job").state != JobState::Succeeded {
            assert!(started.elapsed() < DEADLINE, "job {id} never succeeded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let pid =
        rustix::process::Pid::from_raw(i32::try_from(worker.id()).expect("pid")).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = worker.wait().expect("wait for the worker");
        let mut stdout = String::new();
        let mut stderr = String::new();
        let _ = worker
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout);
        let _ = worker
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr);
        (status, stdout, stderr)
    })
    .await
    .expect("wait task");
    let (status, stdout, stderr) = status;
    assert!(status.success(), "worker exited with {status}: {stderr}");
    assert_eq!(stdout.lines().filter(|l| l.contains("sending")).count(), 25);
    assert!(stderr.contains("succeeded: 25"), "{stderr}");

    server.stop().await;
}
