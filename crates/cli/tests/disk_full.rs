//! Disk full: the real `sluice` binary with its data directory on a 4 MiB tmpfs, written
//! to until the filesystem is full.
//!
//! What must hold:
//! - while the disk fills, every reply is a 2xx or 503 `storage_unavailable`: never another
//!   5xx, never a transport error, never a panic in the server's stderr;
//! - once a write failed, the log is poisoned: writes and `/readyz` answer 503
//!   `storage_unavailable`, and no later write gets a 2xx;
//! - SIGTERM stops it within 15 s (it exits non-zero: closing a poisoned log fails);
//! - the data directory, copied to a normal disk, opens: a frame cut short by ENOSPC is a
//!   torn tail, cut off with a warning; every job whose enqueue got a 2xx is there with its
//!   payload, every job whose ack got a 2xx is `succeeded`; jobs nobody was told about can
//!   only come from requests that got a 503 (their outcome is unknown); and the server
//!   takes writes again.
//!
//! Needs root (it mounts a tmpfs). `SLUICE_SKIP_MOUNT_TESTS=1` skips it, loudly, where
//! mounting is not allowed.

mod support;

use support::Server;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proto::{EnqueueBatchResponse, EnqueueResult, Job, LeaseResponse};

const QUEUE: &str = "disk-full";
const PRODUCERS: usize = 3;
const TMPFS_SIZE: &str = "4m";
/// Filling 4 MiB takes well under a second in release and a few in debug.
const FILL_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// Rolls and snapshots happen while the disk fills, so ENOSPC may hit a frame write, a
/// segment roll or a snapshot, whichever comes first.
const SERVER_ARGS: &[&str] = &[
    "--fsync",
    "always",
    "--segment-bytes-max",
    "1048576",
    "--snapshot-every-records",
    "300",
];

// ---- the tmpfs ------------------------------------------------------------------------

/// A tmpfs mounted on a temp dir; unmounted (then the dir removed) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when mounting is not permitted and `SLUICE_SKIP_MOUNT_TESTS=1`; panics with
    /// the reason otherwise.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => return Some(Tmpfs { dir }),
            Ok(output) => format!(
                "`mount -t tmpfs` exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => format!("cannot run `mount`: {error}"),
        };
        if std::env::var("SLUICE_SKIP_MOUNT_TESTS").is_ok_and(|v| v.trim() == "1") {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: the disk-full test did NOT run (SLUICE_SKIP_MOUNT_TESTS=1)\n\
                 !!! {failure}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return None;
        }
        panic!(
            "the disk-full test needs to mount a tmpfs (run as root, or in a container with \
             CAP_SYS_ADMIN) and could not: {failure}. Set SLUICE_SKIP_MOUNT_TESTS=1 to skip it."
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            // Still busy (a server that outlived a failed test): detach it instead.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---- filling the disk -----------------------------------------------------------------

#[derive(Default)]
struct Ledger {
    /// Jobs whose enqueue got a 2xx: id -> payload.
    enqueued: HashMap<String, Value>,
    /// Jobs whose ack got a 2xx.
    acked: HashSet<String>,
    /// Jobs in enqueue requests answered 503: they may or may not exist.
    unknown_jobs: usize,
    /// Write replies by status.
    statuses: HashMap<u16, usize>,
    /// When the first 503 `storage_unavailable` was seen.
    first_refusal: Option<Instant>,
    problems: Vec<String>,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    base: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
}

enum Outcome {
    Ok(Vec<u8>),
    /// 503 `storage_unavailable`: the disk is full.
    Refused,
    /// Anything else (recorded as a problem).
    Bad,
}

impl Ctx {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    async fn post(&self, what: &str, path: &str, body: &Value) -> Outcome {
        let sent_at = Instant::now();
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        let (status, bytes) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => (status, bytes.to_vec()),
                    Err(error) => {
                        self.ledger()
                            .problems
                            .push(format!("{what}: reading the reply failed: {error}"));
                        return Outcome::Bad;
                    }
                }
            }
            Err(error) => {
                self.ledger()
                    .problems
                    .push(format!("{what}: transport error: {error}"));
                return Outcome::Bad;
            }
        };
        let mut ledger = self.ledger();
        *ledger.statuses.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            // Replies to concurrent requests may arrive in any order, but a request sent
            // after a refusal was received must find the log poisoned.
            if ledger.first_refusal.is_some_and(|at| at < sent_at) {
                ledger.problems.push(format!(
                    "{what}: {status} for a request sent after the log had refused a write \
                     (it must be poisoned)"
                ));
            }
            return Outcome::Ok(bytes);
        }
        if status == 503 && error_code(&bytes) == "storage_unavailable" {
            ledger.first_refusal.get_or_insert_with(Instant::now);
            return Outcome::Refused;
        }
        ledger.problems.push(format!(
            "{what}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
        Outcome::Bad
    }
}

fn payload(who: usize, seq: u64) -> Value {
    // 1.5 to 3.5 KB, so that frames straddle tmpfs pages and the last one may be cut.
    let pad = 1_500 + (seq as usize * 7_919 + who * 104_729) % 2_000;
    json!({ "who": who, "seq": seq, "pad": "p".repeat(pad) })
}

fn spec(who: usize, seq: u64) -> Value {
    json!({ "queue": QUEUE, "kind": "disk.full", "payload": payload(who, seq) })
}

/// Enqueues one job or a batch of 8 at a time until the log refuses a write.
async fn producer(ctx: Ctx, who: usize) {
    let mut seq = 0u64;
    while !ctx.stop.load(Ordering::SeqCst) {
        let len = if seq.is_multiple_of(3) { 8 } else { 1 };
        let specs: Vec<Value> = (0..len).map(|i| spec(who, seq + i)).collect();
        seq += len;
        let outcome = if len == 1 {
            ctx.post("enqueue", "/v1/jobs", &specs[0]).await
        } else {
            ctx.post("enqueue batch", "/v1/jobs/batch", &json!({ "jobs": specs }))
                .await
        };
        let ids: Vec<String> = match outcome {
            Outcome::Ok(body) if len == 1 => serde_json::from_slice::<EnqueueResult>(&body)
                .map(|r| vec![r.id])
                .unwrap_or_default(),
            Outcome::Ok(body) => serde_json::from_slice::<EnqueueBatchResponse>(&body)
                .map(|r| r.jobs.into_iter().map(|j| j.id).collect())
                .unwrap_or_default(),
            Outcome::Refused => {
                ctx.ledger().unknown_jobs += len as usize;
                return;
            }
            Outcome::Bad => return,
        };
        let mut ledger = ctx.ledger();
        if ids.len() != len as usize {
            ledger
                .problems
                .push(format!("enqueue of {len} answered {} ids", ids.len()));
        }
        for (id, spec) in ids.into_iter().zip(specs) {
            ledger.enqueued.insert(id, spec["payload"].clone());
        }
    }
}

/// Leases and acks jobs until the log refuses a write.
async fn worker(ctx: Ctx) {
    while !ctx.stop.load(Ordering::SeqCst) {
        let request = json!({ "queues": [QUEUE], "max_jobs": 5, "wait_ms": 50 });
        let jobs = match ctx.post("lease", "/v1/lease", &request).await {
            Outcome::Ok(body) => match serde_json::from_slice::<LeaseResponse>(&body) {
                Ok(reply) => reply.jobs,
                Err(error) => {
                    ctx.ledger()
                        .problems
                        .push(format!("lease: undecodable 2xx body: {error}"));
                    return;
                }
            },
            Outcome::Refused | Outcome::Bad => return,
        };
        for job in jobs {
            let path = format!("/v1/jobs/{}/ack", job.id);
            match ctx
                .post("ack", &path, &json!({ "lease_id": job.lease_id }))
                .await
            {
                Outcome::Ok(_) => {
                    ctx.ledger().acked.insert(job.id);
                }
                Outcome::Refused | Outcome::Bad => return,
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the data dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a data file");
        }
    }
}

fn file_listing(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{} ({len} bytes)", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(", ")
}

// ---- the test -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_writes_with_503_and_loses_nothing_acknowledged() {
    let Some(tmpfs) = Tmpfs::mount(TMPFS_SIZE) else {
        return;
    };
    let began = Instant::now();
    let data: PathBuf = tmpfs.path().join("data");
    let http = http_client();
    let mut server = Server::start(&data, SERVER_ARGS);
    server.wait_ready(&http).await;

    // 1. Fill the disk.
    let ctx = Ctx {
        http: http.clone(),
        base: server.base.clone(),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut tasks = Vec::new();
    for who in 0..PRODUCERS {
        tasks.push(tokio::spawn(producer(ctx.clone(), who)));
    }
    tasks.push(tokio::spawn(worker(ctx.clone())));
    let fill_deadline = tokio::time::Instant::now() + FILL_DEADLINE;
    for task in tasks {
        // Each task ends at its first refused (or bad) write; the deadline stops the rest.
        if tokio::time::timeout_at(fill_deadline, task).await.is_err() {
            ctx.stop.store(true, Ordering::SeqCst);
            let log = server.kill();
            panic!(
                "no write was refused within {FILL_DEADLINE:?} of filling a {TMPFS_SIZE} tmpfs \
                 (files: {}); stderr tail:\n{}",
                file_listing(&data),
                tail(&log, 40)
            );
        }
    }
    let filled_in = began.elapsed();
    let problems = std::mem::take(&mut ctx.ledger().problems);
    if !problems.is_empty() {
        let log = server.kill();
        panic!(
            "while the disk filled: {problems:#?}\nstderr tail:\n{}",
            tail(&log, 40)
        );
    }
    let files_when_full = file_listing(&data);

    // 2. Poisoned: writes and /readyz answer 503 storage_unavailable, reads no other 5xx.
    let outcome = ctx
        .post("enqueue after full", "/v1/jobs", &spec(99, 0))
        .await;
    assert!(
        matches!(outcome, Outcome::Refused),
        "an enqueue after the disk filled was not refused with 503 storage_unavailable: {:?}",
        ctx.ledger().problems
    );
    let ready = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .expect("/readyz answers");
    let ready_status = ready.status().as_u16();
    let ready_body = ready.bytes().await.expect("/readyz body");
    assert_eq!(
        (ready_status, error_code(&ready_body).as_str()),
        (503, "storage_unavailable"),
        "/readyz once the log is poisoned: {}",
        String::from_utf8_lossy(&ready_body)
    );
    let mut read_statuses = Vec::new();
    for path in [
        "/healthz".to_owned(),
        format!("/v1/queues/{QUEUE}"),
        format!("/v1/queues/{QUEUE}/jobs?limit=5"),
    ] {
        let reply = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("reads answer");
        let status = reply.status().as_u16();
        let body = reply.bytes().await.expect("read body");
        assert!(
            status < 500 || (status == 503 && error_code(&body) == "storage_unavailable"),
            "GET {path} on a poisoned log: {status} {}",
            String::from_utf8_lossy(&body)
        );
        read_statuses.push(format!("GET {path} {status} {}", error_code(&body)));
    }

    // 3. SIGTERM: it must stop within 15 s; closing a poisoned log fails, so it may exit
    // non-zero.
    let Some((exit, took)) = server.terminate(STOP_DEADLINE).await else {
        let log = server.finish_log();
        panic!(
            "the server did not exit within {STOP_DEADLINE:?} of SIGTERM; stderr tail:\n{}",
            tail(&log, 40)
        );
    };
    let full_log = server.finish_log();
    // A snapshot that failed (or was cut short by the exit) leaves no temp file holding
    // disk space.
    let files_after_exit = file_listing(&data);
    assert!(
        !files_after_exit.contains(".snap.tmp"),
        "a snapshot temp file was left on the full disk: {files_after_exit}\n{}",
        tail(&full_log, 40)
    );
    assert!(
        !full_log.contains("panicked"),
        "the server panicked: {}",
        tail(&full_log, 60)
    );
    let failed_op = full_log
        .lines()
        .find(|l| l.contains("the log is poisoned"))
        .unwrap_or("(no poisoning logged)")
        .to_owned();
    let snapshot_failures = full_log
        .lines()
        .filter(|l| l.contains("periodic work failed") && l.contains(".snap.tmp"))
        .count();

    // 4. Copy to a normal disk and look at what ENOSPC left behind.
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dir(&data, copy.path());
    drop(tmpfs);
    let inspected = sluice_wal::inspect(copy.path()).expect("inspect the copy");
    assert!(inspected.opens(), "the copy would not open:\n{inspected}");
    let torn = inspected
        .problems
        .iter()
        .find(|p| p.kind == sluice_wal::ProblemKind::TornTail)
        .cloned();

    // 5. Restart on the copy: the torn tail is cut with a warning, everything acknowledged
    // is there, and it takes writes again.
    let mut server = Server::start(copy.path(), SERVER_ARGS);
    server.wait_ready(&http).await;
    let restart_log = server.log();
    let truncated = restart_log
        .lines()
        .find(|l| l.contains("truncating torn tail"))
        .map(str::to_owned);
    assert_eq!(
        torn.is_some(),
        truncated.is_some(),
        "inspect found torn tail {torn:?} but the restart logged {truncated:?}"
    );
    if let Some(problem) = &torn {
        assert!(
            restart_log.contains(" WARN ") && truncated.as_deref().unwrap_or("").contains("WARN"),
            "the torn tail ({problem}) was not cut with a warning:\n{restart_log}"
        );
        // The running server may be writing a snapshot (a temp file): only the log counts.
        let after = sluice_wal::inspect(copy.path()).expect("inspect after restart");
        assert!(
            !after
                .problems
                .iter()
                .any(|p| p.kind == sluice_wal::ProblemKind::TornTail || p.blocks_open),
            "the log still has problems after the restart: {after}"
        );
    }

    let (enqueued, acked, unknown_jobs, statuses) = {
        let ledger = ctx.ledger();
        (
            ledger.enqueued.clone(),
            ledger.acked.clone(),
            ledger.unknown_jobs,
            ledger.statuses.clone(),
        )
    };
    let mut problems = Vec::new();
    let mut listed: HashMap<String, Job> = HashMap::new();
    for state in [
        "ready",
        "leased",
        "succeeded",
        "scheduled",
        "failed",
        "dead",
    ] {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/queues/{QUEUE}/jobs?state={state}&limit=1000",
                server.base
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let reply = http.get(&url).send().await.expect("listing answers");
            assert_eq!(reply.status().as_u16(), 200, "listing {state}");
            let page: sluice_proto::JobList = reply.json().await.expect("a job list");
            listed.extend(page.jobs.into_iter().map(|j| (j.id.clone(), j)));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    for (id, sent) in &enqueued {
        let Some(job) = listed.get(id) else {
            problems.push(format!("job {id} (enqueue got 2xx) is lost"));
            continue;
        };
        if serde_json::from_str::<Value>(job.payload.get())
            .ok()
            .as_ref()
            != Some(sent)
        {
            problems.push(format!("job {id}: payload differs from what was sent"));
        }
        let reply = http
            .get(format!("{}/v1/jobs/{id}", server.base))
            .send()
            .await
            .expect("GET job answers");
        if reply.status().as_u16() != 200 {
            problems.push(format!("GET /v1/jobs/{id}: {}", reply.status()));
        }
    }
    for id in &acked {
        match listed.get(id) {
            Some(job) if job.state == sluice_proto::JobState::Succeeded => {}
            Some(job) => problems.push(format!("job {id} (ack got 2xx) is {}", job.state.as_str())),
            None => problems.push(format!("job {id} (ack got 2xx) is lost")),
        }
    }
    let strangers = listed
        .keys()
        .filter(|id| !enqueued.contains_key(*id))
        .count();
    if strangers > unknown_jobs {
        problems.push(format!(
            "{strangers} jobs exist that no 2xx enqueue returned, but only {unknown_jobs} \
             were in enqueues answered 503"
        ));
    }

    // Writes work again: enqueue, lease, ack.
    let again = Ctx {
        http: http.clone(),
        base: server.base.clone(),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        stop: Arc::new(AtomicBool::new(false)),
    };
    match again
        .post("enqueue after restart", "/v1/jobs", &spec(100, 0))
        .await
    {
        Outcome::Ok(_) => {}
        _ => problems.push("enqueue after the restart was not a 2xx".into()),
    }
    let lease = json!({ "queues": [QUEUE], "max_jobs": 1, "wait_ms": 0 });
    match again.post("lease after restart", "/v1/lease", &lease).await {
        Outcome::Ok(body) => {
            let reply: LeaseResponse = serde_json::from_slice(&body).expect("a lease reply");
            match reply.jobs.first() {
                Some(job) => {
                    let path = format!("/v1/jobs/{}/ack", job.id);
                    let body = json!({ "lease_id": job.lease_id });
                    if !matches!(again.post("ack", &path, &body).await, Outcome::Ok(_)) {
                        problems.push("ack after the restart was not a 2xx".into());
                    }
                }
                None => problems.push("lease after the restart handed out nothing".into()),
            }
        }
        _ => problems.push("lease after the restart was not a 2xx".into()),
    }
    problems.extend(std::mem::take(&mut again.ledger().problems));
    let restart_log = server.kill();
    if !problems.is_empty() {
        panic!(
            "after restarting on the copy: {problems:#?}\nstderr tail:\n{}",
            tail(&restart_log, 40)
        );
    }
    assert!(
        !restart_log.contains("panicked"),
        "the restarted server panicked:\n{}",
        tail(&restart_log, 60)
    );

    let mut statuses: Vec<(u16, usize)> = statuses.into_iter().collect();
    statuses.sort_unstable();
    println!(
        "disk full after {} ms: write replies by status {statuses:?}; {} jobs enqueued and {} \
         acked with 2xx, all present after the restart ({} jobs found, {strangers} from \
         requests answered 503 out of {unknown_jobs} such jobs)",
        filled_in.as_millis(),
        enqueued.len(),
        acked.len(),
        listed.len(),
    );
    println!("files when full: {files_when_full}");
    println!("what failed: {failed_op}");
    println!("snapshots that failed with ENOSPC (temp file removed): {snapshot_failures}");
    println!("after full: /readyz 503 storage_unavailable; {read_statuses:?}");
    println!(
        "SIGTERM: exited {exit} after {} ms; last lines:\n{}",
        took.as_millis(),
        tail(&full_log, 3)
    );
    match (&torn, &truncated) {
        (Some(problem), Some(line)) => {
            println!("torn tail at ENOSPC: {problem}\nrestart: {line}")
        }
        _ => println!("no torn tail: ENOSPC left no partial frame"),
    }
    println!("total {} ms", began.elapsed().as_millis());
}
