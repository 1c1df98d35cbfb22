//! `sluice bench`: load scenarios against a running server (`--url`), and `restart` and
//! `soak` scenarios that run a server of their own. Each scenario prints one line:
//! throughput, p50/p99 of its requests, counts, errors, and the target it is measured
//! against; `soak` prints a sample line every `--sample-s` and a summary with verdicts.
//! See docs/benchmarks.md for how the numbers were taken on the reference machine.
//!
//! The load generator keeps its own CPU cost low, because on a small machine it shares
//! the cores with the server: request bodies are serialized once and sent as bytes,
//! replies are parsed only as far as the scenario needs.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below, `restart` last.
    All,
    /// Batches of --batch jobs from --concurrency requesters, --jobs in all.
    EnqueueBatch,
    /// Producers enqueue batches while consumers lease and batch-ack them.
    LifecycleBatch,
    /// --clients loops of enqueue one, lease one, ack one, for --duration-s.
    LifecycleSingle,
    /// As lifecycle-single, but each lease acks the client's previous job (the `acks` of
    /// `POST /v1/lease`): two requests a job, as a worker that acks with its next fetch.
    LifecycleNext,
    /// Open-loop single enqueues at --rate per second, for --duration-s.
    Latency,
    /// Own server: load --jobs, measure RSS per job, time kill -9 and SIGTERM restarts.
    Restart,
    /// Own server: a steady mixed load for --duration-s (1800), sampling RSS, open files,
    /// data dir, throughput and p50/p99 every --sample-s. Not part of `all`.
    Soak,
    /// An SDK worker in this process runs --jobs jobs that each sleep --sleep-ms, with
    /// --worker-concurrency (10,000) in flight; reports jobs/s and this process's RSS.
    /// Not part of `all`.
    WorkerSleep,
    /// `sluice work --kind http`'s handler in this process runs --jobs webhook jobs
    /// against a local sink, --worker-concurrency (128) at once. Not part of `all`.
    HttpWorker,
    /// A rate-limited queue (--rate per second, default 100) drained by three SDK workers
    /// for --duration-s (60), and a concurrency-limited queue (5) whose handlers call a
    /// sink that counts requests in flight. Not part of `all`.
    Limits,
    /// 1,000 queues x 10 kinds of jobs run once, then GET /metrics 200 times: scrape
    /// p50/p95/p99 and the metrics' memory. Not part of `all`.
    Metrics,
    /// Stream produce and consume throughput (1 and 8 partitions) and end-to-end
    /// latency at 10,000 records/s. Not part of `all`.
    Stream,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::EnqueueBatch => "enqueue-batch",
            Scenario::LifecycleBatch => "lifecycle-batch",
            Scenario::LifecycleSingle => "lifecycle-single",
            Scenario::LifecycleNext => "lifecycle-next",
            Scenario::Latency => "latency",
            Scenario::Restart => "restart",
            Scenario::Soak => "soak",
            Scenario::WorkerSleep => "worker-sleep",
            Scenario::HttpWorker => "http-worker",
            Scenario::Limits => "limits",
            Scenario::Metrics => "metrics",
            Scenario::Stream => "stream",
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Jobs for enqueue-batch, lifecycle-batch and restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: u64,
    /// Jobs per enqueue batch.
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Size of each payload as JSON text (a string of that many bytes, quotes included).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Concurrent requesters of enqueue-batch and restart; producers of lifecycle-batch.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Consumers (lease + batch ack) of lifecycle-batch.
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Concurrent clients of lifecycle-single.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Length of lifecycle-single and latency [default: 10], and of soak [default: 1800].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Enqueues per second of latency [default: 1000], and of soak [default: 2000].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Soak: seconds between two sample lines.
    #[arg(long, default_value_t = 30)]
    pub sample_s: u64,
    /// Soak: the server's --retention-ms (short, so that retention works within the run).
    #[arg(long, default_value_t = 120_000)]
    pub retention_ms: u64,
    /// Soak: the server's --snapshot-every-records (default: the server's default).
    #[arg(long)]
    pub snapshot_every_records: Option<u64>,
    /// Requests latency keeps in flight at most (later sends wait, and that wait counts).
    #[arg(long, default_value_t = 256)]
    pub in_flight_max: usize,
    /// Handlers at once in worker-sleep [default: 10000] and http-worker [default: 128].
    #[arg(long)]
    pub worker_concurrency: Option<usize>,
    /// How long each worker-sleep job sleeps.
    #[arg(long, default_value_t = 1_000)]
    pub sleep_ms: u64,
    /// A scenario that runs longer than this stops and reports what it did (soak: the
    /// time to start its server).
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

/// One scenario's printed result.
pub(crate) struct Report {
    pub line: String,
    pub errors: u64,
}

pub async fn run(url: &str, args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.jobs == 0 || args.concurrency == 0 || args.clients == 0 {
        bail!("--batch, --jobs, --concurrency and --clients must be at least 1");
    }
    if args.payload_bytes < 2 {
        bail!("--payload-bytes must be at least 2 (the payload is a JSON string)");
    }
    let command_line: Vec<String> = std::env::args().collect();
    println!("command: {}", command_line.join(" "));
    println!("machine: {}", machine());
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::EnqueueBatch,
            Scenario::LifecycleBatch,
            Scenario::LifecycleSingle,
            Scenario::LifecycleNext,
            Scenario::Latency,
            Scenario::Restart,
        ],
        one => vec![one],
    };
    let pool = args
        .concurrency
        .max(args.consumers)
        .max(args.clients)
        .max(args.in_flight_max)
        + 8;
    let remote = scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::Restart | Scenario::Soak));
    let http = Http::new(url, pool)?;
    if remote {
        println!(
            "server: {url}; durability is whatever that server was started with \
             (the API does not report it: state it with the results)"
        );
        let (status, _) = http
            .get_status("/readyz")
            .await
            .map_err(|e| anyhow!("cannot reach the server at {url}: {e}"))?;
        if status != 200 {
            bail!("the server at {url} is not ready (/readyz answered {status})");
        }
    }
    let run_id = run_id();
    let mut errors = 0;
    for scenario in scenarios {
        let report = match scenario {
            Scenario::EnqueueBatch => enqueue_batch(&http, &args, &run_id).await,
            Scenario::LifecycleBatch => lifecycle_batch(&http, &args, &run_id).await,
            Scenario::LifecycleSingle => lifecycle_single(&http, &args, &run_id).await,
            Scenario::LifecycleNext => lifecycle_next(&http, &args, &run_id).await,
            Scenario::Latency => latency(&http, &args, &run_id).await,
            Scenario::Restart => restart(&args, &run_id).await,
            Scenario::Soak => soak(&args, &run_id).await,
            Scenario::WorkerSleep => crate::bench_workers::worker_sleep(url, &args, &run_id).await,
            Scenario::HttpWorker => crate::bench_workers::http_worker(url, &args, &run_id).await,
            Scenario::Limits => crate::bench_workers::limits(url, &args, &run_id).await,
            Scenario::Metrics => crate::bench_workers::metrics_scrape(url, &run_id).await,
            Scenario::Stream => crate::bench_workers::stream(url, &run_id).await,
            Scenario::All => continue,
        };
        match report {
            Ok(report) => {
                println!("{:<16} {}", scenario.name(), report.line);
                errors += report.errors;
            }
            Err(error) => {
                println!("{:<16} FAILED: {error:#}", scenario.name());
                errors += 1;
            }
        }
    }
    if errors > 0 {
        bail!("{errors} error(s) during the benchmark; see the lines above");
    }
    Ok(())
}

// ---- the scenarios ---------------------------------------------------------------------

async fn enqueue_batch(http: &Http, args: &BenchArgs, run_id: &str) -> Result<Report> {
    let queue = format!("bench-eb-{run_id}");
    let batches = Batches::new(&queue, args);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    let producers = batches.spawn_producers(http, args.concurrency, deadline);
    let (mut tally, jobs) = join_producers(producers).await?;
    let elapsed = started.elapsed();
    let rate = jobs as f64 / elapsed.as_secs_f64();
    let mut line = format!(
        "{jobs} jobs in {:.2} s = {} jobs/s | batch {} x {} B, concurrency {} | requests {}",
        elapsed.as_secs_f64(),
        thousands(rate),
        args.batch,
        args.payload_bytes,
        args.concurrency,
        tally.summary()
    );
    finish(&mut line, &[&tally], ">=", rate, 300_000.0, "jobs/s");
    Ok(Report {
        line,
        errors: tally.errors,
    })
}

async fn lifecycle_batch(http: &Http, args: &BenchArgs, run_id: &str) -> Result<Report> {
    let queue = format!("bench-lb-{run_id}");
    let batches = Batches::new(&queue, args);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    let completed = Arc::new(AtomicU64::new(0));
    let finished_ns = Arc::new(AtomicU64::new(0));
    let lease_body: &'static [u8] = leak(format!(
        r#"{{"queues":["{queue}"],"max_jobs":{},"wait_ms":200}}"#,
        args.batch.min(1_000)
    ));
    let producers = batches.spawn_producers(http, args.concurrency, deadline);
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (http, completed, finished_ns) = (http.clone(), completed.clone(), finished_ns.clone());
        let target = args.jobs;
        consumers.push(tokio::spawn(async move {
            let (mut lease_tally, mut ack_tally) = (Tally::default(), Tally::default());
            while completed.load(Ordering::Relaxed) < target && Instant::now() < deadline {
                let t = Instant::now();
                let leased = http
                    .post("/v1/lease", lease_body, |b| {
                        serde_json::from_slice::<LeaseReply>(b).map_err(|e| e.to_string())
                    })
                    .await;
                let jobs = match leased {
                    Ok(reply) => {
                        lease_tally.ok(t.elapsed());
                        reply.jobs
                    }
                    Err(e) => {
                        lease_tally.err(e);
                        continue;
                    }
                };
                if jobs.is_empty() {
                    continue;
                }
                let body = ack_body(&jobs);
                let t = Instant::now();
                let acked = http
                    .post_owned("/v1/ack", body, |b| {
                        serde_json::from_slice::<AckReply>(b).map_err(|e| e.to_string())
                    })
                    .await;
                match acked {
                    Ok(reply) => {
                        ack_tally.ok(t.elapsed());
                        let failed = reply.results.iter().filter(|r| r.error.is_some()).count();
                        if failed > 0 {
                            ack_tally.errors += failed as u64;
                            ack_tally.note(format!("{failed} acks of a batch were refused"));
                        }
                        let ok = (reply.results.len() - failed) as u64;
                        let done = completed.fetch_add(ok, Ordering::Relaxed) + ok;
                        if done >= target {
                            finished_ns
                                .fetch_max(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) => ack_tally.err(e),
                }
            }
            (lease_tally, ack_tally)
        }));
    }
    let (mut enqueue, enqueued) = join_producers(producers).await?;
    let (mut lease, mut ack) = (Tally::default(), Tally::default());
    for task in consumers {
        let (l, a) = task.await?;
        lease.merge(l);
        ack.merge(a);
    }
    let done = completed.load(Ordering::Relaxed);
    let elapsed = match finished_ns.load(Ordering::Relaxed) {
        0 => started.elapsed(),
        ns => Duration::from_nanos(ns),
    };
    let rate = done as f64 / elapsed.as_secs_f64();
    let mut line = format!(
        "{done} of {enqueued} enqueued jobs completed in {:.2} s = {} jobs/s | \
         producers {} consumers {} batch {} | enqueue {} | lease {} | ack {}",
        elapsed.as_secs_f64(),
        thousands(rate),
        args.concurrency,
        args.consumers.max(1),
        args.batch,
        enqueue.summary(),
        lease.summary(),
        ack.summary()
    );
    if done < args.jobs {
        let _ = write!(line, " | INCOMPLETE: stopped by --timeout-s");
    }
    finish(
        &mut line,
        &[&enqueue, &lease, &ack],
        ">=",
        rate,
        150_000.0,
        "jobs/s",
    );
    Ok(Report {
        line,
        errors: enqueue.errors + lease.errors + ack.errors + u64::from(done < args.jobs),
    })
}

async fn lifecycle_single(http: &Http, args: &BenchArgs, run_id: &str) -> Result<Report> {
    let duration = Duration::from_secs(args.duration_s.unwrap_or(10));
    let payload = payload(args.payload_bytes);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let queue = format!("bench-ls-{run_id}-{client}");
        let enqueue_body = leak(job_json(&queue, &payload));
        let lease_body = leak(format!(
            r#"{{"queues":["{queue}"],"max_jobs":1,"wait_ms":1000}}"#
        ));
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut tallies = [Tally::default(), Tally::default(), Tally::default()];
            let mut done = 0u64;
            while started.elapsed() < duration {
                let t = Instant::now();
                match http.post("/v1/jobs", enqueue_body, |_| Ok(())).await {
                    Ok(()) => tallies[0].ok(t.elapsed()),
                    Err(e) => {
                        tallies[0].err(e);
                        continue;
                    }
                }
                let t = Instant::now();
                let leased = http
                    .post("/v1/lease", lease_body, |b| {
                        serde_json::from_slice::<LeaseReply>(b).map_err(|e| e.to_string())
                    })
                    .await;
                let job = match leased.map(|r| r.jobs.into_iter().next()) {
                    Ok(Some(job)) => {
                        tallies[1].ok(t.elapsed());
                        job
                    }
                    Ok(None) => {
                        tallies[1].err("lease returned no job".to_owned());
                        continue;
                    }
                    Err(e) => {
                        tallies[1].err(e);
                        continue;
                    }
                };
                let t = Instant::now();
                match ack_one(&http, &job.id, &job.lease_id).await {
                    Ok(()) => {
                        tallies[2].ok(t.elapsed());
                        done += 1;
                    }
                    Err(e) => tallies[2].err(e),
                }
            }
            (tallies, done)
        }));
    }
    let (tallies, done) = join_clients(tasks).await?;
    let elapsed = started.elapsed();
    let rate = done as f64 / elapsed.as_secs_f64();
    let [mut enqueue, mut lease, mut ack] = tallies;
    let line = format!(
        "{done} jobs in {:.2} s = {} jobs/s | clients {} | enqueue {} | lease {} | ack {}",
        elapsed.as_secs_f64(),
        thousands(rate),
        args.clients,
        enqueue.summary(),
        lease.summary(),
        ack.summary()
    );
    Ok(single_report(line, [enqueue, lease, ack], rate))
}

/// The clients' tallies (enqueue, lease, ack) merged, and the jobs they finished.
async fn join_clients(
    tasks: Vec<tokio::task::JoinHandle<([Tally; 3], u64)>>,
) -> Result<([Tally; 3], u64)> {
    let mut tallies = [Tally::default(), Tally::default(), Tally::default()];
    let mut done = 0;
    for task in tasks {
        let (t, n) = task.await?;
        for (into, from) in tallies.iter_mut().zip(t) {
            into.merge(from);
        }
        done += n;
    }
    Ok((tallies, done))
}

/// A single-job lifecycle's report: `line` with the verdict against 20,000 jobs/s, and
/// the errors of its three tallies.
fn single_report(mut line: String, tallies: [Tally; 3], rate: f64) -> Report {
    let [enqueue, lease, ack] = &tallies;
    finish(
        &mut line,
        &[enqueue, lease, ack],
        ">=",
        rate,
        20_000.0,
        "jobs/s",
    );
    Report {
        line,
        errors: tallies.iter().map(|t| t.errors).sum(),
    }
}

/// Acks job `id` under `lease_id` with `POST /v1/jobs/{id}/ack`.
async fn ack_one(http: &Http, id: &str, lease_id: &str) -> std::result::Result<(), String> {
    let body = serde_json::to_vec(&AckOne { lease_id }).unwrap_or_default();
    http.post_owned(&format!("/v1/jobs/{id}/ack"), body, |_| Ok(()))
        .await
}

/// `lifecycle-next`: each of --clients enqueues one job, then leases one with the ack of
/// the job it leased before in the same request; a job is done when a later lease's
/// `acks` says it was acked (the last one is acked on its own at the end).
async fn lifecycle_next(http: &Http, args: &BenchArgs, run_id: &str) -> Result<Report> {
    let duration = Duration::from_secs(args.duration_s.unwrap_or(10));
    let payload = payload(args.payload_bytes);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let queue = format!("bench-ln-{run_id}-{client}");
        let enqueue_body = leak(job_json(&queue, &payload));
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut tallies = [Tally::default(), Tally::default(), Tally::default()];
            let mut done = 0u64;
            let mut previous: Option<LeasedRef> = None;
            while started.elapsed() < duration {
                let t = Instant::now();
                match http.post("/v1/jobs", enqueue_body, |_| Ok(())).await {
                    Ok(()) => tallies[0].ok(t.elapsed()),
                    Err(e) => {
                        tallies[0].err(e);
                        continue;
                    }
                }
                let acks: Vec<AckItem<'_>> = previous
                    .iter()
                    .map(|p| AckItem {
                        id: &p.id,
                        lease_id: &p.lease_id,
                    })
                    .collect();
                let body = serde_json::to_vec(&serde_json::json!({
                    "queues": [queue], "max_jobs": 1, "wait_ms": 1000, "acks": acks,
                }))
                .unwrap_or_default();
                let t = Instant::now();
                let leased = http
                    .post_owned("/v1/lease", body, |b| {
                        serde_json::from_slice::<LeaseReply>(b).map_err(|e| e.to_string())
                    })
                    .await;
                match leased {
                    Ok(reply) => {
                        tallies[1].ok(t.elapsed());
                        if previous.is_some() {
                            match reply.acks.first() {
                                Some(AckResult { error: None }) => done += 1,
                                _ => tallies[2].err("the lease's ack failed".to_owned()),
                            }
                        }
                        previous = reply.jobs.into_iter().next();
                        if previous.is_none() {
                            tallies[1].err("lease returned no job".to_owned());
                        }
                    }
                    Err(e) => tallies[1].err(e),
                }
            }
            if let Some(job) = previous {
                match ack_one(&http, &job.id, &job.lease_id).await {
                    Ok(()) => done += 1,
                    Err(e) => tallies[2].err(e),
                }
            }
            (tallies, done)
        }));
    }
    let (tallies, done) = join_clients(tasks).await?;
    let elapsed = started.elapsed();
    let rate = done as f64 / elapsed.as_secs_f64();
    let [mut enqueue, mut lease, ack] = tallies;
    let line = format!(
        "{done} jobs in {:.2} s = {} jobs/s | clients {} | enqueue {} | lease with the previous ack {} | ack errors {}",
        elapsed.as_secs_f64(),
        thousands(rate),
        args.clients,
        enqueue.summary(),
        lease.summary(),
        ack.errors
    );
    Ok(single_report(line, [enqueue, lease, ack], rate))
}

async fn latency(http: &Http, args: &BenchArgs, run_id: &str) -> Result<Report> {
    let rate = args.rate.unwrap_or(1_000);
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let queue = format!("bench-lat-{run_id}");
    let body = leak(job_json(&queue, &payload(args.payload_bytes)));
    // Open the connections the run will need, so the first sends do not pay for them.
    let mut warm = Vec::new();
    for _ in 0..4 {
        let http = http.clone();
        warm.push(tokio::spawn(async move {
            for _ in 0..25 {
                let _ = http.post("/v1/jobs", body, |_| Ok(())).await;
            }
        }));
    }
    for task in warm {
        task.await?;
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let from_schedule = Arc::new(Mutex::new(Tally::default()));
    let gate = Arc::new(tokio::sync::Semaphore::new(args.in_flight_max.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let sends = rate * args.duration_s.unwrap_or(10);
    let started = tokio::time::Instant::now();
    let mut lag_max = Duration::ZERO;
    let mut tasks = Vec::new();
    for i in 0..sends {
        let scheduled = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        lag_max = lag_max.max(scheduled.elapsed());
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (http, tally, from_schedule) = (http.clone(), tally.clone(), from_schedule.clone());
        tasks.push(tokio::spawn(async move {
            let sent_at = tokio::time::Instant::now();
            let outcome = http.post("/v1/jobs", body, |_| Ok(())).await;
            // Two clocks: from the send (what the server and network cost), and from when
            // the send was due, so a stalled server or a full in-flight bound shows too
            // (coordinated omission). The second also holds the generator's own timer
            // lag: tokio's timers tick in whole milliseconds.
            let took = sent_at.elapsed();
            let took_from_schedule = scheduled.elapsed();
            drop(permit);
            if outcome.is_ok() {
                from_schedule
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ok(took_from_schedule);
            }
            let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => tally.ok(took),
                Err(e) => tally.err(e),
            }
        }));
        if tasks.len() >= 4_096 {
            tasks.retain(|t| !t.is_finished());
        }
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let sent = tally.count() + tally.errors;
    let summary = tally.summary();
    let p99 = tally.percentile(0.99).as_secs_f64() * 1e3;
    let mut from_schedule =
        std::mem::take(&mut *from_schedule.lock().unwrap_or_else(|e| e.into_inner()));
    let mut line = format!(
        "{sent} enqueues at {} /s target ({:.0} /s achieved) over {:.2} s | latency from send \
         {summary} | from schedule {} | in-flight max {} | generator lag max {:.2} ms",
        rate,
        sent as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        from_schedule.summary(),
        args.in_flight_max,
        lag_max.as_secs_f64() * 1e3
    );
    finish(&mut line, &[&tally], "<=", p99, 2.0, "ms p99");
    Ok(Report {
        line,
        errors: tally.errors,
    })
}

async fn restart(args: &BenchArgs, run_id: &str) -> Result<Report> {
    let exe = std::env::current_exe().context("cannot find the sluice binary")?;
    let dir = TempDir::new(std::env::temp_dir().join(format!("sluice-bench-{run_id}")))?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.0.join("server.log");
    let data = dir.0.join("data");
    let timeout = Duration::from_secs(args.timeout_s);
    let queue = format!("bench-rs-{run_id}");

    // Fresh server: load the jobs, measuring the server's memory around it.
    let mut server = ServerProc::spawn(&exe, &data, port, &log, &[])?;
    let http = Http::new(&url, args.concurrency + 8)?;
    let first_ready = server.wait_ready(&http, timeout, &log).await?;
    let rss_before = rss_bytes(server.pid())?;
    let batches = Batches::new(&queue, args);
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    let producers = batches.spawn_producers(&http, args.concurrency, deadline);
    let (mut load, loaded) = join_producers(producers).await?;
    let load_elapsed = started.elapsed();
    if loaded != args.jobs {
        bail!(
            "loaded only {loaded} of {} jobs ({} errors; first: {})",
            args.jobs,
            load.errors,
            load.first_error.as_deref().unwrap_or("-")
        );
    }
    // Let the periodic work run once more (it may allocate) before reading the RSS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_loaded = rss_bytes(server.pid())?;
    let per_job = (rss_loaded as f64 - rss_before as f64) / loaded as f64;
    let beyond = per_job - args.payload_bytes as f64;
    drop(http);

    // (a) Crash: kill -9, restart, time spawn -> ready (replay of the log).
    server.kill()?;
    let mut server = ServerProc::spawn(&exe, &data, port, &log, &[])?;
    let http = Http::new(&url, 4)?;
    let crash_ready = server.wait_ready(&http, timeout, &log).await?;
    let crash_count = ready_count(&http, &queue).await?;
    let rss_replayed = rss_bytes(server.pid())?;
    drop(http);

    // (b) Graceful: SIGTERM (the server snapshots), restart, time spawn -> ready.
    let stop_took = server.terminate(timeout)?;
    let mut server = ServerProc::spawn(&exe, &data, port, &log, &[])?;
    let http = Http::new(&url, 4)?;
    let graceful_ready = server.wait_ready(&http, timeout, &log).await?;
    let graceful_count = ready_count(&http, &queue).await?;
    drop(http);
    server.kill()?;

    let mut errors = load.errors;
    let mut line = format!(
        "{loaded} jobs x {} B loaded in {:.2} s ({} jobs/s, requests {}) | fsync always \
         | first start ready in {} | RSS {:.1} MiB -> {:.1} MiB = {per_job:.0} B/job, \
         {beyond:.0} B/job beyond payload (after replay: {:.1} MiB) \
         | kill -9 -> ready in {} (ready count {crash_count}) \
         | SIGTERM stop {} -> ready in {} (ready count {graceful_count})",
        args.payload_bytes,
        load_elapsed.as_secs_f64(),
        thousands(loaded as f64 / load_elapsed.as_secs_f64()),
        load.summary(),
        fmt_duration(first_ready),
        mib(rss_before),
        mib(rss_loaded),
        mib(rss_replayed),
        fmt_duration(crash_ready),
        fmt_duration(stop_took),
        fmt_duration(graceful_ready),
    );
    for (what, count) in [("kill -9", crash_count), ("SIGTERM", graceful_count)] {
        if count != loaded {
            errors += 1;
            let _ = write!(
                line,
                " | WRONG COUNT after {what}: {count} ready, expected {loaded}"
            );
        }
    }
    let worst_ready = crash_ready.max(graceful_ready).as_secs_f64();
    let ready_met = worst_ready <= 3.0;
    let bytes_met = beyond <= 250.0;
    let _ = write!(
        line,
        " | targets: ready <= 3 s: {} (ratio {:.2}), <= 250 B/job beyond payload: {} (ratio {:.2})",
        met(ready_met),
        3.0 / worst_ready.max(1e-9),
        met(bytes_met),
        250.0 / beyond.max(1e-9)
    );
    if errors > 0 {
        let _ = write!(line, " | ERRORS: {errors}");
    }
    Ok(Report { line, errors })
}

// ---- soak ----------------------------------------------------------------------------------

/// Jobs per producer tick: singles (POST /v1/jobs) and one batch (POST /v1/jobs/batch).
const SOAK_SINGLES_PER_TICK: u64 = 4;
const SOAK_BATCH_LEN: u64 = 16;
const SOAK_PRODUCERS: u64 = 4;
const SOAK_WORKERS: usize = 8;
const SOAK_QUEUES: usize = 4;

/// What the soak's tasks measured since the last sample.
#[derive(Default)]
struct SoakWindow {
    enqueue: Tally,
    lease: Tally,
    ack: Tally,
    /// Jobs that reached a finished state through this run's requests (acked, or failed
    /// for the last time).
    completed: u64,
}

#[derive(Default)]
struct SoakStats {
    window: Mutex<SoakWindow>,
    errors: AtomicU64,
    stale: AtomicU64,
    first_error: Mutex<Option<String>>,
    enqueued: AtomicU64,
    duplicates: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    heartbeats: AtomicU64,
    reads: AtomicU64,
    /// The id of a recently enqueued job, for the readers' GET /v1/jobs/{id}.
    recent_id: Mutex<String>,
}

impl SoakStats {
    fn with(&self, f: impl FnOnce(&mut SoakWindow)) {
        f(&mut self.window.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A 409 (stale lease) is expected now and then; anything else is an error.
    fn error(&self, what: &str, error: String) {
        if error.starts_with("HTTP 409") {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{what}: {error}"));
        }
    }

    fn item(&self, what: &str, item: &SoakItem) {
        match &item.error {
            Some(e) if e.code == "stale_lease" => {
                self.stale.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => self.error(what, format!("item error {}", e.code)),
            None => {}
        }
    }
}

#[derive(Deserialize)]
struct SoakEnqueued {
    id: String,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct SoakItem {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<SoakItemError>,
}

#[derive(Deserialize)]
struct SoakItemError {
    code: String,
}

#[derive(Deserialize)]
struct SoakItems {
    results: Vec<SoakItem>,
}

/// xorshift64*: the load mix needs cheap, seeded choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// One job of the soak mix: 10 % delayed 0.5-5 s; 20 % with max_attempts 1 (a failure
/// makes them dead), the rest 3 attempts 0.5 s apart; a unique key if `unique` is given.
fn soak_job(queue: &str, payload: &str, rng: &mut Rng, unique: Option<&str>) -> String {
    let mut job = format!(r#"{{"queue":"{queue}","kind":"soak","payload":{payload}"#);
    if rng.percent(10) {
        let _ = write!(job, r#","delay_ms":{}"#, 500 + rng.below(4_500));
    }
    if rng.percent(20) {
        job.push_str(r#","max_attempts":1"#);
    } else {
        job.push_str(r#","max_attempts":3,"backoff":{"type":"fixed","delay_ms":500}"#);
    }
    if let Some(key) = unique {
        let _ = write!(job, r#","unique_key":"{key}","unique_ttl_ms":60000"#);
    }
    job.push('}');
    job
}

/// One line of the curve.
#[derive(Clone, Copy, Default)]
struct SoakSample {
    elapsed_s: f64,
    rss: u64,
    fds: u64,
    data_bytes: u64,
    data_files: u64,
    jobs_per_s: f64,
    jobs_total: u64,
    finished: u64,
}

async fn soak(args: &BenchArgs, run_id: &str) -> Result<Report> {
    let duration_s = args.duration_s.unwrap_or(1_800);
    let rate = args.rate.unwrap_or(2_000);
    if duration_s == 0 || rate == 0 || args.sample_s == 0 {
        bail!("--duration-s, --rate and --sample-s must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the sluice binary")?;
    let dir = TempDir::new(std::env::temp_dir().join(format!("sluice-soak-{run_id}")))?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.0.join("server.log");
    let data = dir.0.join("data");
    let mut extra = vec!["--retention-ms".to_owned(), args.retention_ms.to_string()];
    if let Some(n) = args.snapshot_every_records {
        extra.extend(["--snapshot-every-records".to_owned(), n.to_string()]);
    }
    let mut server = ServerProc::spawn(&exe, &data, port, &log, &extra)?;
    let http = Http::new(&url, 64)?;
    server
        .wait_ready(&http, Duration::from_secs(args.timeout_s), &log)
        .await?;
    let pid = server.pid();
    let queues: Arc<[String]> = (0..SOAK_QUEUES)
        .map(|q| format!("soak-{q}-{run_id}"))
        .collect();
    let tick = Duration::from_secs_f64(
        (SOAK_PRODUCERS * (SOAK_SINGLES_PER_TICK + SOAK_BATCH_LEN)) as f64 / rate as f64,
    );
    println!(
        "soak: server pid {pid}, --fsync always --retention-ms {}{}, data {}; load: {rate} jobs/s \
         ({SOAK_PRODUCERS} producers, every {:.1} ms {SOAK_SINGLES_PER_TICK} single enqueues \
         + 1 batch of {SOAK_BATCH_LEN}; 10 % delayed, 20 % max_attempts 1, 10 % of singles \
         unique-keyed), {SOAK_WORKERS} workers (lease max 10, wait 5 s; 5 % heartbeat, 8 % fail, \
         rest ack, batch or single), 1 reader (GET job / list queue, 4/s), {SOAK_QUEUES} queues, \
         {duration_s} s, a sample every {} s",
        args.retention_ms,
        args.snapshot_every_records
            .map_or(String::new(), |n| format!(" --snapshot-every-records {n}")),
        data.display(),
        tick.as_secs_f64() * 1e3,
        args.sample_s,
    );
    let stats = Arc::new(SoakStats::default());
    let started = Instant::now();
    let duration = Duration::from_secs(duration_s);
    let payload: Arc<str> = payload(args.payload_bytes).into();
    let mut tasks = Vec::new();

    for p in 0..SOAK_PRODUCERS {
        let (http, stats, queues, payload) =
            (http.clone(), stats.clone(), queues.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(p + 1);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut keys = 0u64;
            while started.elapsed() < duration {
                interval.tick().await;
                for _ in 0..SOAK_SINGLES_PER_TICK {
                    let queue = &queues[rng.below(SOAK_QUEUES as u64) as usize];
                    let key = if rng.percent(10) {
                        // Every 10th unique-keyed job reuses the previous key: a duplicate
                        // if that job is not finished yet.
                        if !rng.percent(10) {
                            keys += 1;
                        }
                        Some(format!("p{p}-{keys}"))
                    } else {
                        None
                    };
                    let body = soak_job(queue, &payload, &mut rng, key.as_deref()).into_bytes();
                    let t = Instant::now();
                    let reply = http
                        .post_owned("/v1/jobs", body, |b| {
                            serde_json::from_slice::<SoakEnqueued>(b).map_err(|e| e.to_string())
                        })
                        .await;
                    match reply {
                        Ok(reply) => {
                            stats.with(|w| w.enqueue.ok(t.elapsed()));
                            if reply.duplicate {
                                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.enqueued.fetch_add(1, Ordering::Relaxed);
                            }
                            *stats.recent_id.lock().unwrap_or_else(|e| e.into_inner()) = reply.id;
                        }
                        Err(e) => stats.error("enqueue", e),
                    }
                }
                let queue = &queues[rng.below(SOAK_QUEUES as u64) as usize];
                let mut body = String::from(r#"{"jobs":["#);
                for i in 0..SOAK_BATCH_LEN {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&soak_job(queue, &payload, &mut rng, None));
                }
                body.push_str("]}");
                let t = Instant::now();
                let reply = http
                    .post_owned("/v1/jobs/batch", body.into_bytes(), |b| {
                        match count_ids(b) {
                            SOAK_BATCH_LEN => Ok(()),
                            ids => {
                                Err(format!("batch of {SOAK_BATCH_LEN} answered with {ids} ids"))
                            }
                        }
                    })
                    .await;
                match reply {
                    Ok(()) => {
                        stats.with(|w| w.enqueue.ok(t.elapsed()));
                        stats.enqueued.fetch_add(SOAK_BATCH_LEN, Ordering::Relaxed);
                    }
                    Err(e) => stats.error("enqueue batch", e),
                }
            }
        }));
    }

    let all_queues = queues
        .iter()
        .map(|q| format!("\"{q}\""))
        .collect::<Vec<_>>()
        .join(",");
    for w in 0..SOAK_WORKERS {
        let (http, stats) = (http.clone(), stats.clone());
        let lease_body = leak(format!(
            r#"{{"queues":[{all_queues}],"max_jobs":10,"wait_ms":5000,"worker":"soak-{w}"}}"#
        ));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1_000 + w as u64);
            while started.elapsed() < duration {
                let t = Instant::now();
                let leased = http
                    .post("/v1/lease", lease_body, |b| {
                        serde_json::from_slice::<LeaseReply>(b).map_err(|e| e.to_string())
                    })
                    .await;
                let jobs = match leased {
                    Ok(reply) => reply.jobs,
                    Err(e) => {
                        stats.error("lease", e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if jobs.is_empty() {
                    continue;
                }
                // Only leases that got jobs: an empty one measures the long-poll wait.
                stats.with(|w| w.lease.ok(t.elapsed()));
                let mut to_ack = Vec::new();
                for job in jobs {
                    if rng.percent(5) {
                        let body = format!(
                            r#"{{"lease_id":"{}","progress":{{"done":50}}}}"#,
                            job.lease_id
                        );
                        let path = format!("/v1/jobs/{}/heartbeat", job.id);
                        match http.post_owned(&path, body.into_bytes(), |_| Ok(())).await {
                            Ok(()) => {
                                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => stats.error("heartbeat", e),
                        }
                    }
                    if rng.percent(8) {
                        let body = format!(
                            r#"{{"lease_id":"{}","error":"soak: simulated failure"}}"#,
                            job.lease_id
                        );
                        let path = format!("/v1/jobs/{}/fail", job.id);
                        let reply = http
                            .post_owned(&path, body.into_bytes(), |b| {
                                serde_json::from_slice::<SoakItem>(b).map_err(|e| e.to_string())
                            })
                            .await;
                        match reply {
                            Ok(item) if item.state.as_deref() == Some("dead") => {
                                stats.dead.fetch_add(1, Ordering::Relaxed);
                                stats.with(|w| w.completed += 1);
                            }
                            Ok(_) => {
                                stats.retried.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => stats.error("fail", e),
                        }
                    } else {
                        to_ack.push(job);
                    }
                }
                if to_ack.len() > 1 && rng.percent(50) {
                    let t = Instant::now();
                    let reply = http
                        .post_owned("/v1/ack", ack_body(&to_ack), |b| {
                            serde_json::from_slice::<SoakItems>(b).map_err(|e| e.to_string())
                        })
                        .await;
                    match reply {
                        Ok(reply) => {
                            let ok = reply.results.iter().filter(|r| r.error.is_none()).count();
                            for item in &reply.results {
                                stats.item("ack batch", item);
                            }
                            stats.acked.fetch_add(ok as u64, Ordering::Relaxed);
                            stats.with(|w| {
                                w.ack.ok(t.elapsed());
                                w.completed += ok as u64;
                            });
                        }
                        Err(e) => stats.error("ack batch", e),
                    }
                } else {
                    for job in &to_ack {
                        let body = serde_json::to_vec(&AckOne {
                            lease_id: &job.lease_id,
                        })
                        .unwrap_or_default();
                        let path = format!("/v1/jobs/{}/ack", job.id);
                        let t = Instant::now();
                        match http.post_owned(&path, body, |_| Ok(())).await {
                            Ok(()) => {
                                stats.acked.fetch_add(1, Ordering::Relaxed);
                                stats.with(|w| {
                                    w.ack.ok(t.elapsed());
                                    w.completed += 1;
                                });
                            }
                            Err(e) => stats.error("ack", e),
                        }
                    }
                }
            }
        }));
    }

    {
        let (http, stats, queues) = (http.clone(), stats.clone(), queues.clone());
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(250));
            let mut i = 0usize;
            while started.elapsed() < duration {
                interval.tick().await;
                // Until every queue has had jobs, a listing may find no queue: a 404.
                if stats.enqueued.load(Ordering::Relaxed) < 1_000 {
                    continue;
                }
                i += 1;
                let path = match i % 3 {
                    0 => {
                        let id = stats
                            .recent_id
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone();
                        if id.is_empty() {
                            continue;
                        }
                        format!("/v1/jobs/{id}")
                    }
                    1 => format!(
                        "/v1/queues/{}/jobs?state=ready&limit=20",
                        queues[i % SOAK_QUEUES]
                    ),
                    _ => format!(
                        "/v1/queues/{}/jobs?state=succeeded&limit=20",
                        queues[i % SOAK_QUEUES]
                    ),
                };
                match http.get_status(&path).await {
                    Ok((status, _)) if (200..300).contains(&status) => {
                        stats.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => stats.error(
                        "read",
                        format!(
                            "HTTP {status} for GET {path}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                    ),
                    Err(e) => stats.error("read", format!("transport: {e}")),
                }
            }
        }));
    }

    // The sampler: one line per --sample-s.
    let warmup_s = (2.0 * args.retention_ms as f64 / 1e3).min(duration_s as f64 / 4.0);
    let quarter_s = (duration_s as f64 - warmup_s) / 4.0;
    let (mut first, mut last) = (
        [Tally::default(), Tally::default(), Tally::default()],
        [Tally::default(), Tally::default(), Tally::default()],
    );
    let mut samples: Vec<SoakSample> = Vec::new();
    println!(
        "sample: elapsed_s,rss_mib,fds,data_mib,data_files,server_cpu_pct,jobs_per_s,\
         enqueue_p50_ms,enqueue_p99_ms,lease_p50_ms,lease_p99_ms,ack_p50_ms,ack_p99_ms,\
         jobs_total,finished,errors,stale_409"
    );
    let self_cpu_start = cpu_ticks(std::process::id()).unwrap_or(0);
    let mut cpu_prev = (cpu_ticks(pid)?, Instant::now());
    let mut window_start = Instant::now();
    let mut next = started;
    loop {
        next += Duration::from_secs(args.sample_s);
        let wake = next.min(started + duration);
        let last_sample = wake >= started + duration;
        tokio::time::sleep_until(wake.into()).await;
        if let Some(status) = server.exited()? {
            bail!(
                "the server exited ({status}) during the soak; log:\n{}",
                tail(&log)
            );
        }
        let mut window =
            std::mem::take(&mut *stats.window.lock().unwrap_or_else(|e| e.into_inner()));
        let window_s = window_start.elapsed().as_secs_f64();
        window_start = Instant::now();
        let elapsed_s = started.elapsed().as_secs_f64();
        let ticks = cpu_ticks(pid)?;
        let cpu_pct =
            (ticks - cpu_prev.0) as f64 / 100.0 / cpu_prev.1.elapsed().as_secs_f64() * 100.0;
        cpu_prev = (ticks, Instant::now());
        let (data_bytes, data_files) = dir_usage(&data);
        let (jobs_total, finished) = soak_counts(&http).await.unwrap_or_else(|e| {
            stats.error("GET /v1/queues", e);
            (0, 0)
        });
        let sample = SoakSample {
            elapsed_s,
            rss: rss_bytes(pid)?,
            fds: fd_count(pid)?,
            data_bytes,
            data_files,
            jobs_per_s: window.completed as f64 / window_s.max(1e-9),
            jobs_total,
            finished,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "sample: {:.0},{:.1},{},{:.1},{},{:.0},{:.0},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{},{}",
            sample.elapsed_s,
            mib(sample.rss),
            sample.fds,
            mib(sample.data_bytes),
            sample.data_files,
            cpu_pct,
            sample.jobs_per_s,
            ms(window.enqueue.percentile(0.5)),
            ms(window.enqueue.percentile(0.99)),
            ms(window.lease.percentile(0.5)),
            ms(window.lease.percentile(0.99)),
            ms(window.ack.percentile(0.5)),
            ms(window.ack.percentile(0.99)),
            sample.jobs_total,
            sample.finished,
            stats.errors.load(Ordering::Relaxed),
            stats.stale.load(Ordering::Relaxed),
        );
        let into = if elapsed_s > warmup_s && elapsed_s <= warmup_s + quarter_s + 1.0 {
            Some(&mut first)
        } else if elapsed_s > duration_s as f64 - quarter_s {
            Some(&mut last)
        } else {
            None
        };
        if let Some(into) = into {
            let SoakWindow {
                enqueue,
                lease,
                ack,
                ..
            } = window;
            for (to, from) in into.iter_mut().zip([enqueue, lease, ack]) {
                to.merge(from);
            }
        }
        samples.push(sample);
        if last_sample {
            break;
        }
    }
    for task in tasks {
        task.await?;
    }
    let self_cpu_s = cpu_ticks(std::process::id())
        .unwrap_or(0)
        .saturating_sub(self_cpu_start) as f64
        / 100.0;
    server.kill()?;

    // The summary: the first quarter of the steady part (after the warm-up, in which the
    // finished set fills up to the retention time) against the last quarter.
    let in_first =
        |s: &&SoakSample| s.elapsed_s > warmup_s && s.elapsed_s <= warmup_s + quarter_s + 1.0;
    let in_last = |s: &&SoakSample| s.elapsed_s > duration_s as f64 - quarter_s;
    let pick = |f: &dyn Fn(&&SoakSample) -> bool, g: fn(&SoakSample) -> f64| -> Vec<f64> {
        samples.iter().filter(|s| f(s)).map(g).collect()
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let rss = (
        mean(&pick(&in_first, |s| s.rss as f64)),
        mean(&pick(&in_last, |s| s.rss as f64)),
    );
    let fds = (
        max(&pick(&in_first, |s| s.fds as f64)),
        max(&pick(&in_last, |s| s.fds as f64)),
    );
    let files = (
        max(&pick(&in_first, |s| s.data_files as f64)),
        max(&pick(&in_last, |s| s.data_files as f64)),
    );
    let bytes = (
        max(&pick(&in_first, |s| s.data_bytes as f64)),
        max(&pick(&in_last, |s| s.data_bytes as f64)),
    );
    let finished = (
        max(&pick(&in_first, |s| s.finished as f64)),
        max(&pick(&in_last, |s| s.finished as f64)),
    );
    let rate_done = mean(&pick(&|s: &&SoakSample| s.elapsed_s > warmup_s, |s| {
        s.jobs_per_s
    }));
    let stats = &*stats;
    let mut lines = vec![format!(
        "soak summary: {:.0} s; enqueued {} (+{} duplicates), acked {}, failed and retried {}, \
         dead {}, heartbeats {}, reads {}; stale leases (409) {}; errors {}; generator CPU \
         {:.0} s = {:.0} % of one core; comparing samples in ({warmup_s:.0}, {:.0}] s (first \
         steady quarter, after a warm-up of 2 x retention) with ({:.0}, {duration_s}] s",
        started.elapsed().as_secs_f64(),
        stats.enqueued.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        stats.dead.load(Ordering::Relaxed),
        stats.heartbeats.load(Ordering::Relaxed),
        stats.reads.load(Ordering::Relaxed),
        stats.stale.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        self_cpu_s,
        self_cpu_s / started.elapsed().as_secs_f64() * 100.0,
        warmup_s + quarter_s,
        duration_s as f64 - quarter_s,
    )];
    let mut misses = 0u64;
    let mut verdict = |lines: &mut Vec<String>, name: &str, ok: Option<bool>, detail: String| {
        let word = match ok {
            Some(true) => "YES",
            Some(false) => {
                misses += 1;
                "NO"
            }
            None => "n/a (run too short for quarters)",
        };
        lines.push(format!("verdict: {name}: {word} ({detail})"));
    };
    let growth =
        |(a, b): (Option<f64>, Option<f64>)| a.zip(b).map(|(a, b)| (b - a) / a.max(1.0) * 100.0);
    let rss_growth = growth(rss);
    verdict(
        &mut lines,
        "memory flat",
        rss_growth.map(|g| g <= 10.0),
        format!(
            "server RSS mean {} -> {} MiB = {} %; flat means <= +10 %",
            opt(rss.0.map(|b| mib(b as u64))),
            opt(rss.1.map(|b| mib(b as u64))),
            opt(rss_growth)
        ),
    );
    let files_ok = fds
        .0
        .zip(fds.1)
        .zip(files.0.zip(files.1))
        .zip(bytes.0.zip(bytes.1))
        .map(|(((fa, fb), (da, db)), (ba, bb))| {
            // The log is cut only at whole segments (64 MiB by default) once a snapshot
            // covers them, so the directory is a sawtooth: allow one segment more.
            fb <= fa + 8.0 && db <= da + 4.0 && bb <= (ba * 1.25).max(ba + 64.0 * 1024.0 * 1024.0)
        });
    verdict(
        &mut lines,
        "files flat",
        files_ok,
        format!(
            "open fds max {} -> {}, data-dir files max {} -> {}, data-dir MiB max {} -> {} ({} %); \
             flat means fds <= +8, files <= +4, bytes <= max(1.25 x, +64 MiB)",
            opt(fds.0),
            opt(fds.1),
            opt(files.0),
            opt(files.1),
            opt(bytes.0.map(|b| mib(b as u64))),
            opt(bytes.1.map(|b| mib(b as u64))),
            opt(growth(bytes)),
        ),
    );
    let mut drift_ok = Some(true);
    let mut drift = Vec::new();
    for (i, name) in ["enqueue", "lease", "ack"].into_iter().enumerate() {
        let (a, b) = (&mut first[i], &mut last[i]);
        if a.count() == 0 || b.count() == 0 {
            drift_ok = None;
            continue;
        }
        let (pa, pb) = (
            a.percentile(0.99).as_secs_f64() * 1e3,
            b.percentile(0.99).as_secs_f64() * 1e3,
        );
        // lease p99 is mostly the wait for the next enqueue, so it is shown, not judged.
        if name != "lease" && pb > (pa * 1.5).max(pa + 1.0) {
            drift_ok = drift_ok.map(|_| false);
        }
        drift.push(format!(
            "{name} p99 {pa:.2} -> {pb:.2} ms ({:+.0} %)",
            (pb - pa) / pa.max(1e-9) * 100.0
        ));
    }
    verdict(
        &mut lines,
        "p99 no drift",
        drift_ok,
        format!(
            "{}; no drift means enqueue and ack p99 <= max(1.5 x, +1 ms) of the first quarter",
            drift.join(", ")
        ),
    );
    let bound = rate_done.map(|r| r * args.retention_ms as f64 / 1e3 * 1.25 + 20_000.0);
    let retention_ok = finished
        .0
        .zip(finished.1)
        .zip(bound)
        .map(|((a, b), bound)| b <= bound && b <= a * 1.15 + 1_000.0);
    verdict(
        &mut lines,
        "retention removes old data",
        retention_ok,
        format!(
            "finished jobs max {} -> {}; completed {} jobs/s x retention {} s = {} expected; \
             bounded means last <= 1.25 x that + 20,000 and <= first quarter + 15 %",
            opt(finished.0),
            opt(finished.1),
            opt(rate_done),
            args.retention_ms / 1_000,
            opt(rate_done.map(|r| r * args.retention_ms as f64 / 1e3)),
        ),
    );
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = stats
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        lines.push(format!(
            "ERRORS: {errors} (first: {})",
            first.as_deref().unwrap_or("-")
        ));
    }
    Ok(Report {
        line: lines.join("\n"),
        errors: errors + misses,
    })
}

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// All jobs in the server and the finished ones among them, summed over GET /v1/queues.
async fn soak_counts(http: &Http) -> Result<(u64, u64), String> {
    let (mut total, mut finished) = (0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/queues?limit=1000&cursor={c}"),
            None => "/v1/queues?limit=1000".to_owned(),
        };
        let (status, body) = http.get_status(&path).await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        let list: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        for queue in list["queues"].as_array().into_iter().flatten() {
            let counts = &queue["counts"];
            for (state, done) in [
                ("scheduled", false),
                ("ready", false),
                ("leased", false),
                ("failed", false),
                ("succeeded", true),
                ("dead", true),
                ("cancelled", true),
            ] {
                let n = counts[state].as_u64().unwrap_or(0);
                total += n;
                if done {
                    finished += n;
                }
            }
        }
        match list["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok((total, finished)),
        }
    }
}

/// Entries of /proc/<pid>/fd: the process's open files and sockets.
fn fd_count(pid: u32) -> Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot read /proc/{pid}/fd"))?;
    Ok(entries.count() as u64)
}

/// utime + stime of a process in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; count the fields after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the ')'.
    Ok(field(11) + field(12))
}

/// Bytes and regular files under a directory, recursively.
fn dir_usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, files)
}

// ---- load helpers -----------------------------------------------------------------------

/// Pre-serialized enqueue batches and a shared counter handing them out.
#[derive(Clone)]
struct Batches {
    full: &'static [u8],
    last: &'static [u8],
    count: u64,
    batch: u64,
    last_len: u64,
    next: Arc<AtomicU64>,
}

impl Batches {
    fn new(queue: &str, args: &BenchArgs) -> Batches {
        let payload = payload(args.payload_bytes);
        let body = |n: u64| {
            let job = job_json(queue, &payload);
            let mut text = String::with_capacity((job.len() + 1) * n as usize + 16);
            text.push_str(r#"{"jobs":["#);
            for i in 0..n {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&job);
            }
            text.push_str("]}");
            leak(text)
        };
        let count = args.jobs.div_ceil(args.batch);
        let last_len = args.jobs - (count - 1) * args.batch;
        let full = body(args.batch);
        let last = if last_len == args.batch {
            full
        } else {
            body(last_len)
        };
        Batches {
            full,
            last,
            count,
            batch: args.batch,
            last_len,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends batches until none are left; returns the tally and the jobs enqueued.
    /// `concurrency` producers of these batches, running until they run out or `deadline`.
    fn spawn_producers(
        &self,
        http: &Http,
        concurrency: usize,
        deadline: Instant,
    ) -> Vec<tokio::task::JoinHandle<(Tally, u64)>> {
        (0..concurrency)
            .map(|_| {
                let (http, batches) = (http.clone(), self.clone());
                tokio::spawn(async move { batches.produce(&http, deadline).await })
            })
            .collect()
    }

    async fn produce(&self, http: &Http, deadline: Instant) -> (Tally, u64) {
        let mut tally = Tally::default();
        let mut jobs = 0;
        while Instant::now() < deadline {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                break;
            }
            let (body, n) = if i + 1 == self.count {
                (self.last, self.last_len)
            } else {
                (self.full, self.batch)
            };
            let t = Instant::now();
            let outcome = http
                .post("/v1/jobs/batch", body, |b| {
                    let ids = count_ids(b);
                    if ids == n {
                        Ok(())
                    } else {
                        Err(format!("batch of {n} answered with {ids} ids"))
                    }
                })
                .await;
            match outcome {
                Ok(()) => {
                    tally.ok(t.elapsed());
                    jobs += n;
                }
                Err(e) => tally.err(e),
            }
        }
        (tally, jobs)
    }
}

#[derive(Deserialize)]
struct LeaseReply {
    jobs: Vec<LeasedRef>,
    /// Results of the request's `acks` (lifecycle-next).
    #[serde(default)]
    acks: Vec<AckResult>,
}

#[derive(Deserialize)]
struct LeasedRef {
    id: String,
    lease_id: String,
}

#[derive(Deserialize)]
struct AckReply {
    results: Vec<AckResult>,
}

#[derive(Deserialize)]
struct AckResult {
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Serialize)]
struct AckOne<'a> {
    lease_id: &'a str,
}

#[derive(Serialize)]
struct AckBatch<'a> {
    acks: Vec<AckItem<'a>>,
}

#[derive(Serialize)]
struct AckItem<'a> {
    id: &'a str,
    lease_id: &'a str,
}

fn ack_body(jobs: &[LeasedRef]) -> Vec<u8> {
    let acks = jobs
        .iter()
        .map(|j| AckItem {
            id: &j.id,
            lease_id: &j.lease_id,
        })
        .collect();
    serde_json::to_vec(&AckBatch { acks }).unwrap_or_default()
}

/// A JSON string payload of exactly `bytes` bytes of JSON text.
fn payload(bytes: usize) -> String {
    format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)))
}

/// Queue names of this file are plain `[a-z0-9-]`, so no escaping is needed.
fn job_json(queue: &str, payload: &str) -> String {
    format!(r#"{{"queue":"{queue}","kind":"bench","payload":{payload}}}"#)
}

/// Request bodies live for the whole process; leaking them lets every request send the
/// same bytes without a copy.
fn leak(text: String) -> &'static [u8] {
    Box::leak(text.into_bytes().into_boxed_slice())
}

fn count_ids(body: &[u8]) -> u64 {
    body.windows(5).filter(|w| *w == b"\"id\":").count() as u64
}

fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}-{}", std::process::id(), ms % 1_000_000_000)
}

// ---- HTTP ----------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: Arc<str>,
}

impl Http {
    fn new(base: &str, pool: usize) -> Result<Http> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Http {
            client,
            base: base.trim_end_matches('/').into(),
        })
    }

    async fn post<T>(
        &self,
        path: &str,
        body: &'static [u8],
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        self.send(path, reqwest::Body::from(body), parse).await
    }

    async fn post_owned<T>(
        &self,
        path: &str,
        body: Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        self.send(path, reqwest::Body::from(body), parse).await
    }

    async fn send<T>(
        &self,
        path: &str,
        body: reqwest::Body,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!("HTTP {}: {text}", status.as_u16()));
        }
        parse(&bytes)
    }

    async fn get_status(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, bytes.to_vec()))
    }
}

async fn ready_count(http: &Http, queue: &str) -> Result<u64> {
    let (status, body) = http
        .get_status(&format!("/v1/queues/{queue}"))
        .await
        .map_err(|e| anyhow!("cannot read queue {queue}: {e}"))?;
    if status != 200 {
        bail!(
            "GET /v1/queues/{queue} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&body)?;
    info["counts"]["ready"]
        .as_u64()
        .ok_or_else(|| anyhow!("no counts.ready in {info}"))
}

// ---- latencies and errors ------------------------------------------------------------------

/// Latencies (µs) of the successful requests of one kind, and its errors.
#[derive(Default)]
struct Tally {
    micros: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    sorted: bool,
}

impl Tally {
    fn ok(&mut self, took: Duration) {
        self.micros
            .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
        self.sorted = false;
    }

    fn err(&mut self, error: String) {
        self.errors += 1;
        self.note(error);
    }

    fn note(&mut self, error: String) {
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.sorted = false;
    }

    fn count(&self) -> u64 {
        self.micros.len() as u64
    }

    fn percentile(&mut self, p: f64) -> Duration {
        if self.micros.is_empty() {
            return Duration::ZERO;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let rank = ((self.micros.len() as f64 * p).ceil() as usize).clamp(1, self.micros.len());
        Duration::from_micros(u64::from(self.micros[rank - 1]))
    }

    fn summary(&mut self) -> String {
        let (p50, p99, max) = (
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(1.0),
        );
        format!(
            "n={} p50={} p99={} max={} err={}",
            self.count(),
            fmt_duration(p50),
            fmt_duration(p99),
            fmt_duration(max),
            self.errors
        )
    }
}

/// Appends the target verdict and, if any tally has errors, says so with the first one.
/// [`finish`] for a figure with no request tallies: `>= target`.
pub(crate) fn finish_plain(line: &mut String, value: f64, target: f64, unit: &str) {
    finish(line, &[], ">=", value, target, unit);
}

fn finish(line: &mut String, tallies: &[&Tally], op: &str, value: f64, target: f64, unit: &str) {
    let ok = if op == ">=" {
        value >= target
    } else {
        value <= target
    };
    let ratio = if op == ">=" {
        value / target
    } else {
        target / value.max(1e-9)
    };
    let _ = write!(
        line,
        " | target {op} {} {unit}: {} (ratio {ratio:.2})",
        if target >= 1000.0 {
            thousands(target)
        } else {
            format!("{target}")
        },
        met(ok)
    );
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    if errors > 0 {
        let first = tallies
            .iter()
            .find_map(|t| t.first_error.as_deref())
            .unwrap_or("-");
        let _ = write!(line, " | ERRORS: {errors} (first: {first})");
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1e3)
    } else {
        format!("{ms:.2}ms")
    }
}

pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---- the machine and the child server --------------------------------------------------------

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores (nproc), {model}")
}

pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a port")?;
    Ok(listener.local_addr()?.port())
}

/// A directory removed (with everything in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<TempDir> {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child `sluice server`, killed (SIGKILL) and reaped when dropped.
struct ServerProc {
    child: Option<Child>,
    spawned: Instant,
}

impl ServerProc {
    fn spawn(
        exe: &Path,
        data: &Path,
        port: u16,
        log: &Path,
        extra: &[String],
    ) -> Result<ServerProc> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let spawned = Instant::now();
        let child = Process::new(exe)
            .arg("server")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args(["--fsync", "always"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        Ok(ServerProc {
            child: Some(child),
            spawned,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the server has exited.
    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Polls /readyz until 200; returns the time since spawn.
    async fn wait_ready(&mut self, http: &Http, timeout: Duration, log: &Path) -> Result<Duration> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the server exited ({status}) before it was ready; log:\n{}",
                        tail(log)
                    );
                }
            }
            if let Ok((200, _)) = http.get_status("/readyz").await {
                return Ok(self.spawned.elapsed());
            }
            if self.spawned.elapsed() > timeout {
                bail!(
                    "the server was not ready after {timeout:?}; log:\n{}",
                    tail(log)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("cannot kill the server")?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns how long the graceful stop took.
    fn terminate(&mut self, timeout: Duration) -> Result<Duration> {
        let Some(child) = self.child.as_mut() else {
            bail!("no server to stop");
        };
        let started = Instant::now();
        let status = Process::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM failed: {status}");
        }
        while started.elapsed() < timeout {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                if !status.success() {
                    bail!("the server exited with {status} after SIGTERM");
                }
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!("the server did not stop within {timeout:?} of SIGTERM")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits for producers: their merged tally and the jobs they enqueued.
async fn join_producers(
    producers: Vec<tokio::task::JoinHandle<(Tally, u64)>>,
) -> Result<(Tally, u64)> {
    let mut tally = Tally::default();
    let mut jobs = 0;
    for producer in producers {
        let (t, n) = producer.await?;
        tally.merge(t);
        jobs += n;
    }
    Ok((tally, jobs))
}
