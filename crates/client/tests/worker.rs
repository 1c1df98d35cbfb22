//! The SDK against the real server, in-process on a random loopback port with its own
//! data directory (real files, fsync always): what a producer and a worker see, checked
//! through the server's API.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_client::{Backoff, CancelReason, Client, Job, JobState, NewJob, Worker, WorkerReport};
use sluice_server::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Server::serve(listener, dir).await
    }

    /// Starts on `address` again (after a stop), retrying the bind while the port frees.
    async fn restart(address: SocketAddr, dir: &Path) -> Server {
        let started = Instant::now();
        loop {
            match TcpListener::bind(address).await {
                Ok(listener) => return Server::serve(listener, dir).await,
                Err(error) if started.elapsed() < DEADLINE => {
                    eprintln!("rebinding {address}: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot rebind {address}: {error}"),
            }
        }
    }

    async fn serve(listener: TcpListener, dir: &Path) -> Server {
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig::new(dir);
        let task = tokio::spawn(async move {
            sluice_server::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("server ran and stopped cleanly");
        });
        let client = Client::new(&format!("http://{address}")).expect("client");
        wait_for("the server to answer", || async {
            client
                .job("0000000000000")
                .await
                .is_err_and(|e| e.code() == Some("not_found"))
        })
        .await;
        Server {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.address)).expect("client")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics after the deadline.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state_of(client: &Client, id: &str) -> JobState {
    client.job(id).await.expect("GET job").state
}

async fn wait_state(client: &Client, id: &str, state: JobState) {
    wait_for(&format!("job {id} to be {}", state.as_str()), || async {
        state_of(client, id).await == state
    })
    .await;
}

/// Runs `worker` in the background; the returned sender stops it, the handle gives its report.
fn spawn_worker(
    worker: Worker,
) -> (
    oneshot::Sender<()>,
    JoinHandle<Result<WorkerReport, sluice_client::Error>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

async fn stop_worker(
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<WorkerReport, sluice_client::Error>>,
) -> WorkerReport {
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, handle)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker ran without error")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Email {
    to: String,
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_enqueues_typed_payloads_with_every_option() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();

    let job = NewJob::new(
        "mail",
        "email.send",
        Email {
            to: "a@example.com".into(),
            n: 1,
        },
    )
    .priority(7)
    .delay(Duration::from_secs(60))
    .max_attempts(3)
    .backoff(Backoff::Fixed { delay_ms: 500 })
    .timeout(Duration::from_secs(5))
    .unique("user-1", Some(Duration::from_secs(600)))
    .tag("welcome");
    let first = client.enqueue(&job).await.expect("enqueue");
    assert!(!first.duplicate);
    let again = client.enqueue(&job).await.expect("enqueue again");
    assert_eq!(
        again,
        sluice_client::Enqueued {
            id: first.id.clone(),
            duplicate: true
        }
    );

    let stored = client.job(&first.id).await.expect("get");
    assert_eq!(stored.queue, "mail");
    assert_eq!(stored.kind, "email.send");
    let payload: Email = serde_json::from_str(stored.payload.get()).expect("payload");
    assert_eq!(
        payload,
        Email {
            to: "a@example.com".into(),
            n: 1
        }
    );
    assert_eq!(stored.priority, 7);
    assert_eq!(stored.state, JobState::Scheduled);
    assert_eq!(stored.max_attempts, 3);
    assert_eq!(stored.backoff, Backoff::Fixed { delay_ms: 500 });
    assert_eq!(stored.timeout_ms, 5_000);
    assert_eq!(stored.unique_key.as_deref(), Some("user-1"));
    assert_eq!(stored.tags, vec!["welcome".to_owned()]);

    let batch: Vec<_> = (0..5)
        .map(|n| {
            NewJob::new(
                "mail",
                "email.send",
                Email {
                    to: format!("{n}@example.com"),
                    n,
                },
            )
        })
        .collect();
    let ids = client.enqueue_batch(&batch).await.expect("batch");
    assert_eq!(ids.len(), 5);
    for (n, enqueued) in ids.iter().enumerate() {
        let stored = client.job(&enqueued.id).await.expect("get");
        let payload: Email = serde_json::from_str(stored.payload.get()).expect("payload");
        assert_eq!(payload.n as usize, n, "batch ids come back in order");
    }

    // Bad input comes back as the API's error, with its code and the field's path.
    let error = client
        .enqueue(&NewJob::new("no spaces allowed", "k", ()))
        .await
        .expect_err("invalid queue name");
    assert_eq!(error.code(), Some("invalid_request"), "{error}");
    assert!(
        error.to_string().starts_with("400 invalid_request"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_typed_handlers_within_its_concurrency_and_acks_every_job() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    const JOBS: u32 = 300;
    const CONCURRENCY: usize = 8;
    let batch: Vec<_> = (0..JOBS)
        .map(|n| {
            NewJob::new(
                "mail",
                "email.send",
                Email {
                    to: "x@example.com".into(),
                    n,
                },
            )
        })
        .collect();
    let ids = client.enqueue_batch(&batch).await.expect("enqueue");

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (seen, running, most) = (seen.clone(), running.clone(), most.clone());
        Worker::new(client.clone(), ["mail"])
            .concurrency(CONCURRENCY)
            .prefetch(4)
            .handle("email.send", move |job: Job<Email>| {
                let (seen, running, most) = (seen.clone(), running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Work that takes a little while, so that handlers overlap.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    seen.lock().expect("lock").insert(job.payload.n);
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            })
    };
    let (stop, handle) = spawn_worker(worker);
    wait_for("every job to succeed", || async {
        let queue = client.queue("mail").await.expect("queue");
        queue.counts.succeeded == u64::from(JOBS)
    })
    .await;
    let report = stop_worker(stop, handle).await;

    assert_eq!(seen.lock().expect("lock").len(), JOBS as usize);
    assert_eq!(report.succeeded, u64::from(JOBS));
    assert_eq!(report.leased, u64::from(JOBS));
    assert_eq!(
        report.failed + report.panicked + report.stale,
        0,
        "{report:?}"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= CONCURRENCY,
        "{most} handlers ran at once; the limit is {CONCURRENCY}"
    );
    assert!(most > 1, "handlers never overlapped");
    for enqueued in ids.iter().step_by(37) {
        let job = client.job(&enqueued.id).await.expect("get");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.attempts, 1);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_panics_bad_payloads_and_unknown_kinds_fail_the_job_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let once =
        |kind: &str, payload: serde_json::Value| NewJob::new("q", kind, payload).max_attempts(1);
    let flaky = client
        .enqueue(
            &NewJob::new("q", "flaky", serde_json::json!({ "to": "f", "n": 1 }))
                .max_attempts(3)
                .backoff(Backoff::Fixed { delay_ms: 0 }),
        )
        .await
        .expect("enqueue")
        .id;
    let panics = client
        .enqueue(&once("panics", serde_json::json!({ "to": "p", "n": 2 })))
        .await
        .expect("enqueue")
        .id;
    let bad = client
        .enqueue(&once("flaky", serde_json::json!({ "unexpected": true })))
        .await
        .expect("enqueue")
        .id;
    let unknown = client
        .enqueue(&once("nobody.handles.this", serde_json::json!(null)))
        .await
        .expect("enqueue")
        .id;

    let worker = Worker::new(client.clone(), ["q"])
        .concurrency(2)
        .handle("flaky", |job: Job<Email>| async move {
            if job.attempt == 1 {
                Err(format!(
                    "attempt {} of {} failed",
                    job.attempt, job.max_attempts
                ))
            } else {
                Ok(())
            }
        })
        .handle("panics", |_job: Job<Email>| async move {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
    let (stop, handle) = spawn_worker(worker);
    wait_state(&client, &flaky, JobState::Succeeded).await;
    wait_state(&client, &panics, JobState::Dead).await;
    wait_state(&client, &bad, JobState::Dead).await;
    wait_state(&client, &unknown, JobState::Dead).await;
    // The worker survived the panic: a job enqueued now still runs.
    let later = client
        .enqueue(
            &NewJob::new(
                "q",
                "flaky",
                Email {
                    to: "l".into(),
                    n: 3,
                },
            )
            .backoff(Backoff::Fixed { delay_ms: 0 }),
        )
        .await
        .expect("enqueue")
        .id;
    wait_state(&client, &later, JobState::Succeeded).await;
    let report = stop_worker(stop, handle).await;

    let error_of = |job: &sluice_proto::Job, attempt: u32| {
        job.history
            .iter()
            .find(|a| a.attempt == attempt)
            .and_then(|a| a.error.clone())
            .unwrap_or_default()
    };
    let job = client.job(&flaky).await.expect("get");
    assert_eq!(job.attempts, 2, "the broker retried it once");
    assert_eq!(error_of(&job, 1), "attempt 1 of 3 failed");
    let job = client.job(&panics).await.expect("get");
    assert_eq!(error_of(&job, 1), "handler panicked: boom");
    let job = client.job(&bad).await.expect("get");
    assert!(
        error_of(&job, 1).starts_with("payload does not decode"),
        "{:?}",
        job.history
    );
    let job = client.job(&unknown).await.expect("get");
    assert!(
        error_of(&job, 1).contains("no handler for kind"),
        "{:?}",
        job.history
    );
    assert_eq!(report.panicked, 1);
    assert_eq!(report.failed, 4, "{report:?}");
    assert_eq!(report.succeeded, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_leased_past_its_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    // A 1 s lease for a job that runs 3 s: without heartbeats it would expire and run
    // again (attempt 2); with them it runs once.
    let id = client
        .enqueue(&NewJob::new("q", "slow", ()).timeout(Duration::from_secs(1)))
        .await
        .expect("enqueue")
        .id;
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = {
        let runs = runs.clone();
        Worker::new(client.clone(), ["q"]).handle("slow", move |job: Job<()>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                if job.is_cancelled() {
                    return Err("lease lost".to_owned());
                }
                Ok(())
            }
        })
    };
    let (stop, handle) = spawn_worker(worker);
    wait_state(&client, &id, JobState::Succeeded).await;
    let report = stop_worker(stop, handle).await;
    let job = client.job(&id).await.expect("get");
    assert_eq!(job.attempts, 1, "{:?}", job.history);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.lease_lost, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_cancels_its_handler() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let id = client
        .enqueue(&NewJob::new("q", "waits", ()).timeout(Duration::from_secs(1)))
        .await
        .expect("enqueue")
        .id;
    let (reason_tx, reason_rx) = oneshot::channel::<CancelReason>();
    let reason_tx = Arc::new(Mutex::new(Some(reason_tx)));
    let worker = {
        let reason_tx = reason_tx.clone();
        Worker::new(client.clone(), ["q"]).handle("waits", move |job: Job<()>| {
            let reason_tx = reason_tx.clone();
            async move {
                let reason = job.cancelled().await;
                if let Some(tx) = reason_tx.lock().expect("lock").take() {
                    let _ = tx.send(reason);
                }
                Ok::<(), String>(())
            }
        })
    };
    let (stop, handle) = spawn_worker(worker);
    wait_state(&client, &id, JobState::Leased).await;
    client.cancel(&id).await.expect("cancel");
    let reason = tokio::time::timeout(DEADLINE, reason_rx)
        .await
        .expect("the handler saw the cancellation")
        .expect("reason");
    assert_eq!(reason, CancelReason::LeaseLost);
    let report = stop_worker(stop, handle).await;
    assert_eq!(report.lease_lost, 1, "{report:?}");
    assert_eq!(
        report.succeeded, 0,
        "a cancelled job's result does not count"
    );
    assert_eq!(state_of(&client, &id).await, JobState::Cancelled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_cancels_the_handler_and_fails_the_job() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let id = client
        .enqueue(&NewJob::new("q", "hangs", ()).max_attempts(1))
        .await
        .expect("enqueue")
        .id;
    let worker = Worker::new(client.clone(), ["q"])
        .job_timeout(Duration::from_millis(300))
        .handle("hangs", |job: Job<()>| async move {
            job.cancelled().await;
            Ok::<(), String>(())
        });
    let (stop, handle) = spawn_worker(worker);
    wait_state(&client, &id, JobState::Dead).await;
    let report = stop_worker(stop, handle).await;
    let job = client.job(&id).await.expect("get");
    assert_eq!(
        job.history[0].error.as_deref(),
        Some("timed out after 300 ms")
    );
    assert_eq!(report.timed_out, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_jobs_and_hands_back_those_past_the_deadline() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let quick = client
        .enqueue(&NewJob::new("q", "quick", ()))
        .await
        .expect("enqueue")
        .id;
    let stuck = client
        .enqueue(&NewJob::new("q", "stuck", ()))
        .await
        .expect("enqueue")
        .id;
    let started = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (s1, s2) = (started.clone(), started.clone());
        Worker::new(client.clone(), ["q"])
            .concurrency(2)
            .shutdown_timeout(Duration::from_millis(1_500))
            .handle("quick", move |_job: Job<()>| {
                let started = s1.clone();
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<(), String>(())
                }
            })
            .handle("stuck", move |_job: Job<()>| {
                let started = s2.clone();
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    // Ignores its cancellation: the runtime aborts it at the deadline.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Ok::<(), String>(())
                }
            })
    };
    let (stop, handle) = spawn_worker(worker);
    wait_for("both handlers to start", || async {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    let stopping = Instant::now();
    let report = stop_worker(stop, handle).await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!(state_of(&client, &quick).await, JobState::Succeeded);
    // Handed back: ready again at once, its attempt recorded as failed by the shutdown.
    let job = client.job(&stuck).await.expect("get");
    assert!(
        matches!(job.state, JobState::Ready | JobState::Scheduled),
        "{:?}",
        job.state
    );
    assert_eq!(
        job.history[0].error.as_deref(),
        Some("worker shut down before the job finished")
    );
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.released, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_when_the_server_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let address = server.address;
    let client = server.client();
    let done = Arc::new(AtomicUsize::new(0));
    let worker = {
        let done = done.clone();
        Worker::new(client.clone(), ["q"])
            .poll_wait(Duration::from_millis(200))
            .handle("count", move |_job: Job<()>| {
                let done = done.clone();
                async move {
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            })
    };
    let (stop, handle) = spawn_worker(worker);
    client
        .enqueue(&NewJob::new("q", "count", ()))
        .await
        .expect("enqueue");
    wait_for("the first job", || async {
        done.load(Ordering::SeqCst) == 1
    })
    .await;

    server.stop().await;
    // The worker now gets connection errors and backs off; the server comes back on the
    // same address and data directory.
    let server = Server::restart(address, dir.path()).await;
    let id = client
        .enqueue(&NewJob::new("q", "count", ()))
        .await
        .expect("enqueue after restart")
        .id;
    wait_state(&client, &id, JobState::Succeeded).await;
    let report = stop_worker(stop, handle).await;
    assert_eq!(report.succeeded, 2);
    assert!(
        report.lease_errors >= 1,
        "the worker never saw the server go: {report:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_callback_runs_once_after_its_jobs_with_their_counts() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let members: Vec<_> = (0..5u32)
        .map(|n| NewJob::new("q", "member", Email { to: "m".into(), n }).max_attempts(1))
        .collect();
    let created = client
        .enqueue_with_callback(&members, &NewJob::new("q", "report", "nightly"))
        .await
        .expect("batch");
    assert_eq!(created.jobs.len(), 5);

    #[derive(Debug, Deserialize)]
    struct Counts {
        total: u32,
        succeeded: u32,
        dead: u32,
    }
    #[derive(Debug, Deserialize)]
    struct Callback {
        batch: Counts,
        payload: String,
    }
    let (seen_tx, seen_rx) = oneshot::channel::<(Counts, String)>();
    let seen_tx = Arc::new(Mutex::new(Some(seen_tx)));
    let worker = Worker::new(client.clone(), ["q"])
        .handle("member", |job: Job<Email>| async move {
            // Member 3 fails (and, with one attempt, dies).
            if job.payload.n == 3 {
                Err("no")
            } else {
                Ok(())
            }
        })
        .handle("report", move |job: Job<Callback>| {
            let seen_tx = seen_tx.clone();
            async move {
                if let Some(tx) = seen_tx.lock().expect("lock").take() {
                    let _ = tx.send((job.payload.batch, job.payload.payload));
                }
                Ok::<(), String>(())
            }
        });
    let (stop, handle) = spawn_worker(worker);
    let (counts, payload) = tokio::time::timeout(DEADLINE, seen_rx)
        .await
        .expect("the callback ran")
        .expect("counts");
    assert_eq!((counts.total, counts.succeeded, counts.dead), (5, 4, 1));
    assert_eq!(payload, "nightly");
    wait_state(&client, &created.id, JobState::Succeeded).await;
    let report = stop_worker(stop, handle).await;
    assert_eq!(
        report.succeeded, 5,
        "4 members and the callback: {report:?}"
    );
    let batch = client.batch(&created.id).await.expect("batch");
    assert_eq!(batch.pending, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quieted_worker_stops_leasing_until_resumed() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let worker = Worker::new(client.clone(), ["q"])
        .poll_wait(Duration::from_millis(100))
        .handle("k", |_job: Job<()>| async move { Ok::<(), String>(()) });
    let control = worker.controller();
    let (stop, handle) = spawn_worker(worker);
    let first = client
        .enqueue(&NewJob::new("q", "k", ()))
        .await
        .expect("enqueue")
        .id;
    wait_state(&client, &first, JobState::Succeeded).await;

    control.quiet();
    assert!(control.is_quiet());
    // A poll in flight when the worker was quieted still runs to its end (100 ms); after
    // that no lease may be sent. Let it end, then enqueue and watch the job stay ready.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client
        .enqueue(&NewJob::new("q", "k", ()))
        .await
        .expect("enqueue")
        .id;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            state_of(&client, &second).await,
            JobState::Ready,
            "the job was leased while the worker was quiet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    control.resume();
    wait_state(&client, &second, JobState::Succeeded).await;
    let report = stop_worker(stop, handle).await;
    assert_eq!(report.succeeded, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_concurrency_holds_for_each_customer_across_a_wide_worker() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    const PER_KEY: u32 = 2;
    let info = client
        .set_limits(
            "api",
            sluice_client::Limits {
                key_concurrency: Some(PER_KEY),
                ..Default::default()
            },
        )
        .await
        .expect("limits");
    assert_eq!(info.limits.and_then(|l| l.key_concurrency), Some(PER_KEY));
    let customers = ["acme", "globex", "initech"];
    let batch: Vec<_> = (0..60)
        .map(|n: usize| {
            let customer = customers[n % customers.len()];
            NewJob::new("api", "call", customer).limit_key(customer)
        })
        .collect();
    client.enqueue_batch(&batch).await.expect("enqueue");
    assert_eq!(client.queue_key("api", "acme").await.expect("key").jobs, 20);

    // Running handlers per customer, and the most seen at once.
    type Running = Arc<Mutex<std::collections::HashMap<String, (u32, u32)>>>;
    let running: Running = Arc::default();
    let worker = {
        let running = running.clone();
        Worker::new(client.clone(), ["api"]).concurrency(16).handle(
            "call",
            move |job: Job<String>| {
                let running = running.clone();
                async move {
                    {
                        let mut map = running.lock().expect("lock");
                        let entry = map.entry(job.payload.clone()).or_default();
                        entry.0 += 1;
                        entry.1 = entry.1.max(entry.0);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running
                        .lock()
                        .expect("lock")
                        .entry(job.payload)
                        .or_default()
                        .0 -= 1;
                    Ok::<(), String>(())
                }
            },
        )
    };
    let (stop, handle) = spawn_worker(worker);
    wait_for("every job to succeed", || async {
        client.queue("api").await.expect("queue").counts.succeeded == 60
    })
    .await;
    stop_worker(stop, handle).await;
    let seen = running.lock().expect("lock").clone();
    for customer in customers {
        let most = seen.get(customer).map_or(0, |&(_, most)| most);
        assert!(
            (1..=PER_KEY).contains(&most),
            "{customer}: {most} at once; the per-key limit is {PER_KEY}"
        );
    }
    assert!(
        seen.values().any(|&(_, most)| most == PER_KEY),
        "no customer ever ran {PER_KEY} at once: {seen:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_registers_itself_and_unregisters_at_shutdown() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    let worker = Worker::new(client.clone(), ["reg-a", "reg-b"])
        .name("reporter-1")
        .concurrency(3)
        .handle("noop", |_job: Job<serde_json::Value>| async {
            Ok::<(), String>(())
        });
    let (stop, handle) = spawn_worker(worker);
    wait_for("the worker to register", || async {
        client
            .workers()
            .await
            .expect("workers")
            .iter()
            .any(|w| w.name == "reporter-1")
    })
    .await;
    let workers = client.workers().await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.name == "reporter-1")
        .expect("registered");
    assert_eq!(me.concurrency, Some(3));
    assert_eq!(me.queues, vec!["reg-a".to_owned(), "reg-b".to_owned()]);
    assert_eq!(me.pid, Some(std::process::id()));
    assert!(me
        .version
        .as_deref()
        .is_some_and(|v| v.starts_with("sluice-client")));
    stop_worker(stop, handle).await;
    assert!(
        client.workers().await.expect("workers").is_empty(),
        "unregistered at shutdown"
    );
    server.stop().await;
}

/// Creates stream `name` with `partitions` partitions through the API.
async fn create_stream(server: &Server, name: &str, partitions: u32) {
    let created = reqwest::Client::new()
        .put(format!("http://{}/v1/streams/{name}", server.address))
        .json(&serde_json::json!({ "partitions": partitions }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 200, "create stream {name}");
}

/// Every record a consumer is handed until it has `want`, as `(partition, offset, key,
/// value)`, sorted.
async fn consume_all(
    consumer: &mut sluice_client::GroupConsumer,
    want: usize,
) -> Vec<(u32, u64, Option<String>, serde_json::Value)> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < want {
        assert!(
            started.elapsed() < DEADLINE,
            "consumed {} of {want}",
            got.len()
        );
        for r in consumer
            .poll::<serde_json::Value>(Duration::from_millis(50))
            .await
            .expect("poll")
        {
            got.push((r.partition, r.offset, r.key, r.value));
        }
    }
    got.sort_by_key(|a| (a.0, a.1));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_json_producers_and_consumers_agree_on_every_record() {
    use sluice_client::{GroupConsumer, StreamProducer, StreamRecord};
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    create_stream(&server, "orders", 4).await;

    // The same keys through JSON and binary land in the same partitions.
    let keyed = |from: u32| -> Vec<StreamRecord<serde_json::Value>> {
        (from..from + 20)
            .map(|n| {
                let mut r = StreamRecord::keyed(
                    format!("customer-{}", (n - from) % 7),
                    serde_json::json!({ "n": n, "note": "ünïcode" }),
                );
                r.headers.push(("source".into(), "test".into()));
                r
            })
            .collect()
    };
    let mut json = StreamProducer::new(client.clone(), "orders");
    let mut binary = StreamProducer::new(client.clone(), "orders").binary();
    let json_at = json.send(&keyed(0)).await.expect("json send");
    let binary_at = binary.send(&keyed(100)).await.expect("binary send");
    for (i, (j, b)) in json_at.iter().zip(&binary_at).enumerate() {
        assert_eq!(j.0, b.0, "record {i} (key customer-{}) partition", i % 7);
    }
    // Records without key or partition: one partition per send, the next one each send.
    let loose: Vec<StreamRecord<serde_json::Value>> = (0..3)
        .map(|n| StreamRecord {
            key: None,
            value: serde_json::json!(n),
            partition: None,
            headers: Vec::new(),
        })
        .collect();
    let first = binary.send(&loose).await.expect("loose send");
    let second = binary.send(&loose).await.expect("loose send");
    assert!(first.iter().all(|o| o.0 == first[0].0), "{first:?}");
    assert!(
        second.iter().all(|o| o.0 == (first[0].0 + 1) % 4),
        "{second:?}"
    );
    // Offsets within a partition are dense and in the order sent.
    let in_first: Vec<u64> = first.iter().map(|o| o.1).collect();
    assert_eq!(
        in_first,
        vec![in_first[0], in_first[0] + 1, in_first[0] + 2]
    );

    // A binary and a JSON consumer, in groups of their own, are handed the same records.
    let total = 20 + 20 + 3 + 3;
    let mut by_binary = GroupConsumer::join(client.clone(), "orders", "b")
        .await
        .expect("join")
        .binary();
    let mut by_json = GroupConsumer::join(client.clone(), "orders", "j")
        .await
        .expect("join");
    let seen_binary = consume_all(&mut by_binary, total).await;
    let seen_json = consume_all(&mut by_json, total).await;
    assert_eq!(seen_binary.len(), total);
    assert_eq!(seen_binary, seen_json);
    let values: HashSet<i64> = seen_binary
        .iter()
        .filter_map(|r| r.3.get("n").and_then(serde_json::Value::as_i64))
        .collect();
    assert_eq!(values, (0..20).chain(100..120).collect::<HashSet<i64>>());
    by_binary.close().await.expect("close");
    by_json.close().await.expect("close");

    // An idempotent binary producer that restarts and sends its first batch again (same
    // id, same sequence) is answered with the first write's offsets; nothing is written
    // twice.
    let mut once = StreamProducer::new(client.clone(), "orders")
        .binary()
        .idempotent(7);
    let written = once.send(&keyed(200)).await.expect("send");
    let mut again = StreamProducer::new(client.clone(), "orders")
        .binary()
        .idempotent(7);
    assert_eq!(again.send(&keyed(200)).await.expect("resend"), written);
    let mut check = GroupConsumer::join(client.clone(), "orders", "check")
        .await
        .expect("join")
        .binary();
    assert_eq!(consume_all(&mut check, total + 20).await.len(), total + 20);
    assert!(
        check
            .poll::<serde_json::Value>(Duration::from_millis(100))
            .await
            .expect("poll")
            .is_empty(),
        "the resent batch was written twice"
    );
    check.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_consumer_resumes_inside_a_batch_from_the_committed_offset() {
    use sluice_client::{GroupConsumer, StreamProducer, StreamRecord};
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    create_stream(&server, "audit", 1).await;
    let records: Vec<StreamRecord<u32>> =
        (0..10).map(|n| StreamRecord::to_partition(0, n)).collect();
    let mut producer = StreamProducer::new(client.clone(), "audit").binary();
    producer.send(&records).await.expect("send");
    // A member commits offset 6, in the middle of the one batch, and leaves.
    let http = reqwest::Client::new();
    let group = format!("http://{}/v1/streams/audit/groups/g", server.address);
    let joined: serde_json::Value = http
        .post(format!("{group}/join"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("join")
        .json()
        .await
        .expect("join reply");
    let member = serde_json::json!({
        "member_id": joined["member_id"],
        "generation": joined["generation"],
    });
    let mut commit = member.clone();
    commit["offsets"] = serde_json::json!([{ "partition": 0, "offset": 6 }]);
    let committed = http
        .post(format!("{group}/commit"))
        .json(&commit)
        .send()
        .await
        .expect("commit");
    assert_eq!(committed.status(), 204);
    let left = http
        .post(format!("{group}/leave"))
        .json(&member)
        .send()
        .await
        .expect("leave");
    assert_eq!(left.status(), 204);
    // The fetch from 6 returns the whole batch; the consumer hands out 6 to 9 only.
    let mut consumer = GroupConsumer::join(client.clone(), "audit", "g")
        .await
        .expect("join")
        .binary();
    let got = consumer
        .poll::<u32>(Duration::from_millis(500))
        .await
        .expect("poll");
    let offsets: Vec<(u64, u32)> = got.iter().map(|r| (r.offset, r.value)).collect();
    assert_eq!(offsets, vec![(6, 6), (7, 7), (8, 8), (9, 9)]);
    assert!(
        got.iter().all(|r| r.timestamp.ends_with('Z')),
        "{:?}",
        got[0].timestamp
    );
    consumer.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_busy_for_longer_than_its_session_keeps_its_partitions() {
    use sluice_client::GroupConsumer;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    create_stream(&server, "slow", 2).await;
    let session = Duration::from_millis(1_500);
    let group = |server: &Server| {
        let url = format!("http://{}/v1/streams/slow/groups/g", server.address);
        async move {
            reqwest::get(url)
                .await
                .expect("get group")
                .json::<serde_json::Value>()
                .await
                .expect("group")
        }
    };
    let mut a = GroupConsumer::join_with_session(client.clone(), "slow", "g", session)
        .await
        .expect("join");
    assert_eq!(a.partitions(), vec![0, 1]);
    let before = group(&server).await;
    // The application handles what it got for over three sessions without polling (the
    // wait is the point here): the consumer's own task heartbeats, so the group keeps it.
    tokio::time::sleep(session * 3 + Duration::from_millis(500)).await;
    let after = group(&server).await;
    assert_eq!(after["generation"], before["generation"], "{after}");
    assert_eq!(
        after["members"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );

    // A newcomer: a's heartbeats bring the rebalance, and its next poll takes it.
    let mut b = GroupConsumer::join_with_session(client.clone(), "slow", "g", session)
        .await
        .expect("join b");
    let started = Instant::now();
    while a.partitions().len() != 1 || b.partitions().len() != 1 {
        assert!(
            started.elapsed() < DEADLINE,
            "no rebalance: {:?} {:?}",
            a.partitions(),
            b.partitions()
        );
        for consumer in [&mut a, &mut b] {
            consumer
                .poll::<u32>(Duration::from_millis(20))
                .await
                .expect("poll");
        }
    }
    assert_eq!(a.generation(), b.generation());

    // A consumer dropped without `close` stops heartbeating: after its session the group
    // gives its partition to the one left.
    drop(b);
    let started = Instant::now();
    while a.partitions().len() != 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "the dropped member kept its partition"
        );
        a.poll::<u32>(Duration::from_millis(100))
            .await
            .expect("poll");
    }
    a.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_joins_again_when_the_restarted_server_no_longer_knows_it() {
    use sluice_client::{GroupConsumer, StreamProducer, StreamRecord};
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let address = server.address;
    let client = server.client();
    create_stream(&server, "again", 1).await;
    let send = |from: u32| {
        let client = client.clone();
        async move {
            let records: Vec<StreamRecord<u32>> = (from..from + 5)
                .map(|n| StreamRecord::to_partition(0, n))
                .collect();
            StreamProducer::new(client, "again")
                .binary()
                .send(&records)
                .await
                .expect("send");
        }
    };
    send(0).await;
    let mut consumer = GroupConsumer::join(client.clone(), "again", "g")
        .await
        .expect("join")
        .binary();
    let first = consumer
        .poll::<u32>(Duration::from_millis(500))
        .await
        .expect("poll");
    assert_eq!(first.len(), 5);
    consumer.commit().await.expect("commit");
    // Members live in the server's memory: after a restart the group does not know this
    // one. Its commit of 0..5 is durable.
    server.stop().await;
    let server = Server::restart(address, dir.path()).await;
    send(5).await;
    // Fetching needs no membership, so the first polls may read on before the consumer
    // learns it is unknown; its commit is refused, it joins again and reads from the
    // commit. At least once: 5..10 may come twice, nothing before 5 comes again.
    let group_url = format!("http://{address}/v1/streams/again/groups/g");
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < DEADLINE, "after the restart: {seen:?}");
        match consumer.poll::<u32>(Duration::from_millis(100)).await {
            Ok(records) => seen.extend(records.into_iter().map(|r| r.value)),
            // The heartbeat task may have failed while the server was down: that poll
            // reports it, the next goes on.
            Err(error) => eprintln!("poll: {error}"),
        }
        let group: serde_json::Value = reqwest::get(&group_url)
            .await
            .expect("group")
            .json()
            .await
            .expect("group json");
        let members = group["members"].as_array().map_or(0, Vec::len);
        if members == 1 && group["partitions"][0]["committed"] == 10 {
            break;
        }
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, vec![5, 6, 7, 8, 9], "from the commit on");
    consumer.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_read_is_named_and_can_be_skipped() {
    use sluice_client::{GroupConsumer, StreamProducer, StreamRecord};
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    create_stream(&server, "mixed", 1).await;
    let values = [
        serde_json::json!(1),
        serde_json::json!(2),
        serde_json::json!("not a number"),
        serde_json::json!(4),
        serde_json::Value::Null,
    ];
    let records: Vec<StreamRecord<serde_json::Value>> = values
        .iter()
        .map(|v| StreamRecord::to_partition(0, v.clone()))
        .collect();
    StreamProducer::new(client.clone(), "mixed")
        .binary()
        .send(&records)
        .await
        .expect("send");
    // A binary producer's null is a tombstone, as a JSON producer's is: no value.
    let fetched: serde_json::Value = reqwest::get(format!(
        "http://{}/v1/streams/mixed/partitions/0/records?offset=4",
        server.address
    ))
    .await
    .expect("fetch")
    .json()
    .await
    .expect("fetch json");
    assert_eq!(fetched["records"][0]["offset"], 4);
    assert!(fetched["records"][0].get("value").is_none(), "{fetched}");

    let mut consumer = GroupConsumer::join(client.clone(), "mixed", "g")
        .await
        .expect("join")
        .binary();
    let error = consumer
        .poll::<Option<u32>>(Duration::from_millis(500))
        .await
        .expect_err("offset 2 is not a number");
    assert!(
        error.to_string().contains("partition 0 offset 2"),
        "{error}"
    );
    // Nothing moved: the same error again, until the record is skipped.
    assert!(consumer
        .poll::<Option<u32>>(Duration::from_millis(10))
        .await
        .is_err());
    assert!(consumer.seek(0, 3));
    assert!(!consumer.seek(7, 0), "not a partition of this member");
    let rest: Vec<(u64, Option<u32>)> = consumer
        .poll::<Option<u32>>(Duration::from_millis(500))
        .await
        .expect("poll")
        .into_iter()
        .map(|r| (r.offset, r.value))
        .collect();
    assert_eq!(rest, vec![(3, Some(4)), (4, None)]);
    consumer.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_sdk_consumers_shares_a_stream_and_resumes_from_commits() {
    use sluice_client::{GroupConsumer, StreamProducer, StreamRecord};
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path()).await;
    let client = server.client();
    create_stream(&server, "events", 4).await;
    let mut producer = StreamProducer::new(client.clone(), "events").idempotent(1);
    let records: Vec<StreamRecord<u32>> = (0..60)
        .map(|n| StreamRecord::keyed(format!("user-{}", n % 9), n))
        .collect();
    let offsets = producer.send(&records).await.expect("send");
    assert_eq!(offsets.len(), 60);

    let mut a = GroupConsumer::join(client.clone(), "events", "audit")
        .await
        .expect("join a");
    let mut b = GroupConsumer::join(client.clone(), "events", "audit")
        .await
        .expect("join b");
    // a learns of b at its next heartbeat: poll until a holds two partitions.
    let mut seen: Vec<u32> = Vec::new();
    let mut by_member: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    let started = Instant::now();
    while seen.len() < 60 {
        assert!(
            started.elapsed() < DEADLINE,
            "consumed {} of 60",
            seen.len()
        );
        for (i, consumer) in [&mut a, &mut b].into_iter().enumerate() {
            for r in consumer
                .poll::<u32>(Duration::from_millis(50))
                .await
                .expect("poll")
            {
                assert!(consumer.partitions().contains(&r.partition));
                by_member[i].push(r.value);
                seen.push(r.value);
            }
        }
    }
    let mut values = seen.clone();
    values.sort_unstable();
    values.dedup();
    assert_eq!(
        values,
        (0..60).collect::<Vec<_>>(),
        "every record at least once"
    );
    // One more round: a's commit from before the rebalance is refused and it takes
    // its new share.
    for consumer in [&mut a, &mut b] {
        consumer
            .poll::<u32>(Duration::from_millis(10))
            .await
            .expect("poll");
    }
    assert_eq!(a.generation(), b.generation());
    assert_eq!(a.partitions().len() + b.partitions().len(), 4);
    a.close().await.expect("close a");
    b.close().await.expect("close b");

    // A newcomer starts from the commits: nothing is handed out again.
    let mut c = GroupConsumer::join(client.clone(), "events", "audit")
        .await
        .expect("join c");
    assert_eq!(c.partitions(), vec![0, 1, 2, 3]);
    let again = c
        .poll::<u32>(Duration::from_millis(100))
        .await
        .expect("poll");
    assert!(again.is_empty(), "{} records handed out twice", again.len());
    // And a retried idempotent send is not written twice.
    let more = vec![StreamRecord::to_partition(0, 99u32)];
    producer.send(&more).await.expect("send");
    let got = c
        .poll::<u32>(Duration::from_millis(500))
        .await
        .expect("poll");
    assert_eq!(got.iter().map(|r| r.value).collect::<Vec<_>>(), vec![99]);
    c.close().await.expect("close c");
    server.stop().await;
}
