//! The examples as a user runs them: the producer and worker binaries against a real
//! server (in-process, random loopback port, its own data directory).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use sluice_client::{Client, JobState};
use support::TestServer;

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs an example binary to its end (off the runtime's threads); panics unless it
/// succeeded.
async fn run_to_end(binary: &'static str, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(&args)
            .output()
            .expect("run the example")
    })
    .await
    .expect("example task");
    assert!(
        output.status.success(),
        "{binary} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_enqueues_and_worker_runs_every_job_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let url = server.url.clone();

    let produced = run_to_end(
        env!("CARGO_BIN_EXE_producer"),
        &["--url", &url, "--count", "25"],
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_produced_to_a_stream_and_consumed_by_a_group_member() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(dir.path()).await;
    let url = server.url.clone();

    let produced = run_to_end(
        env!("CARGO_BIN_EXE_orders"),
        &["--url", &url, "--produce", "40"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&produced.stdout).lines().count(),
        40
    );

    let mut consumer = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["--url", &url, "--consume"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the consumer");
    let stdout = consumer.stdout.take().expect("stdout");
    // Read until every order was printed (the reads end at the deadline below at worst:
    // the consumer is stopped then, which closes its output).
    let lines = std::thread::spawn(move || {
        let mut orders = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("order ") {
                orders.push(line);
            }
            if orders.len() == 40 {
                break;
            }
        }
        orders
    });
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(consumer.id()).expect("pid")).expect("a pid");
    let started = Instant::now();
    while !lines.is_finished() && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let orders = lines.join().expect("reader");
    let status = tokio::task::spawn_blocking(move || consumer.wait().expect("wait"))
        .await
        .expect("wait task");
    assert!(status.success(), "the consumer exited with {status}");
    let mut ids: Vec<u32> = orders
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<u32>>(), "every order once");

    // It committed what it printed before leaving: the group has no lag.
    let group: serde_json::Value = reqwest::get(format!("{url}/v1/streams/orders/groups/billing"))
        .await
        .expect("GET group")
        .json()
        .await
        .expect("group");
    let lag: u64 = group["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["lag"].as_u64().unwrap_or(u64::MAX))
        .sum();
    assert_eq!(lag, 0, "{group}");
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(0),
        "it left"
    );
    server.stop().await;
}
