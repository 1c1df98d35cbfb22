//! The sqlx example as a user runs it: the real server (in-process), the producer, and
//! the `pg_worker` binary writing to a real PostgreSQL that `scripts/test.sh` starts
//! (`scripts/pg.sh`) and names in `SLUICE_TEST_PG_URL`. Run outside that script, without
//! the variable, the test says so and does nothing — unless `SLUICE_REQUIRE_PG=1` (which
//! the script sets), when a missing database is a failure.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use sluice_client::{Client, JobState};
use support::TestServer;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_worker_writes_each_job_once_to_postgresql() {
    let Ok(database_url) = std::env::var("SLUICE_TEST_PG_URL") else {
        assert!(
            std::env::var("SLUICE_REQUIRE_PG").is_err(),
            "SLUICE_REQUIRE_PG is set but SLUICE_TEST_PG_URL is not: PostgreSQL did not start"
        );
        eprintln!("SKIPPED: no SLUICE_TEST_PG_URL (scripts/test.sh starts PostgreSQL and sets it)");
        return;
    };
    let pool = sqlx::PgPool::connect(&database_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query("DROP TABLE IF EXISTS sent_emails")
        .execute(&pool)
        .await
        .expect("drop");

    let dir = tempfile::tempdir().expect("dir");
    // Ready before the producer runs: a server still replaying its log answers 503.
    let server = TestServer::start(dir.path()).await;
    let url = server.url.clone();

    let produced = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(["--url", &url, "--count", "20"])
        .output()
        .expect("run the producer");
    assert!(
        produced.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let ids: BTreeSet<String> = String::from_utf8(produced.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 20);

    let worker = Command::new(env!("CARGO_BIN_EXE_pg_worker"))
        .args(["--url", &url, "--database-url", &database_url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pg_worker");
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
    let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .expect("wait task")
        .expect("wait");
    assert!(
        output.status.success(),
        "pg_worker exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT job_id, recipient, attempt FROM sent_emails ORDER BY job_id")
            .fetch_all(&pool)
            .await
            .expect("select");
    let written: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(written, ids, "one row per job");
    assert!(rows
        .iter()
        .all(|r| r.1.ends_with("@example.com") && r.2 == 1));

    server.stop().await;
}
