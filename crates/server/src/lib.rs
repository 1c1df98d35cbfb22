//! The Sluice server: wires the state machine (`sluice-core`) and the write-ahead log
//! (`sluice-wal`) to an axum HTTP API, and owns start-up, periodic work and shutdown.
//!
//! API Boundary: only the HTTP API (`sluice-proto` types) is public contract; everything
//! in this crate is internal to the binary.

pub mod alerting;
pub mod analytics;
pub mod api;
pub mod broker;
pub mod conn;
pub mod dashboard;
pub mod error;
pub mod groups;
pub mod history;
pub mod insights;
pub mod live;
pub mod metrics;
pub mod openapi;
#[cfg(feature = "otel")]
pub mod otel;
pub mod streams;
pub mod waiters;
pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use sluice_proto::limits;
use sluice_wal::{FsyncPolicy, WalOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::AppState;
use crate::broker::Broker;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes_max: u64,
    pub retention_ms: u64,
    pub retention_len_max: usize,
    /// A snapshot is written after this many log records (and at shutdown).
    pub snapshot_every_records: u64,
    /// In-flight requests get this long to finish at shutdown.
    pub shutdown_grace_ms: u64,
    /// Open connections; past it a new one is answered 503 `too_many_connections`.
    /// Lowered at start-up (with a warning) if the open-file limit cannot hold it.
    pub connections_max: usize,
    /// Time a client has to send a request head once its connection is open or idle.
    pub header_read_timeout_ms: u64,
    /// A registered worker not heard from for this long is dropped, its leases ended.
    pub worker_stale_ms: u64,
    /// Count events into the metrics (default). Off only to measure what they cost:
    /// `/metrics`, history, insights and alerts then see no activity.
    pub metrics_enabled: bool,
    /// Export the job metrics to this OpenTelemetry collector (OTLP/HTTP JSON, its base
    /// URL) every `otlp_interval_ms`. Needs the `otel` cargo feature.
    pub otlp_endpoint: Option<String>,
    pub otlp_interval_ms: u64,
    /// A stream partition rolls to a new segment past this size (retention and
    /// compaction work on whole segments, never the active one).
    pub stream_segment_bytes_max: u64,
    /// Stream retention and compaction run this often.
    pub stream_maintenance_ms: u64,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let core = sluice_core::Config::default();
        ServerConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 64 * 1024 * 1024,
            retention_ms: core.retention_ms,
            retention_len_max: core.retention_len_max,
            snapshot_every_records: 100_000,
            shutdown_grace_ms: 10_000,
            connections_max: limits::CONNECTIONS_MAX,
            header_read_timeout_ms: limits::HEADER_READ_TIMEOUT_MS,
            worker_stale_ms: limits::WORKER_STALE_MS_DEFAULT,
            metrics_enabled: true,
            otlp_endpoint: None,
            otlp_interval_ms: 10_000,
            stream_segment_bytes_max: 64 * 1024 * 1024,
            stream_maintenance_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot open the data directory: {0}")]
    Open(#[from] sluice_wal::WalError),
    #[error("cannot flush and close the write-ahead log: {0}")]
    Close(sluice_wal::WalError),
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error(
        "another process is using the data directory {0} (it holds the lock on its LOCK file)"
    )]
    Locked(PathBuf),
    #[error("cannot lock the data directory {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{*path}", get(dashboard::asset))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::prometheus_metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/events", get(live::events))
        .route("/v1/jobs", post(api::enqueue))
        .route("/v1/jobs/batch", post(api::enqueue_batch))
        .route("/v1/jobs/{id}", get(api::get_job))
        .route("/v1/batches", post(api::create_batch))
        .route("/v1/batches/{id}", get(api::get_batch))
        .route("/v1/cron", get(api::list_crons))
        .route(
            "/v1/cron/{name}",
            get(api::get_cron)
                .put(api::set_cron)
                .delete(api::remove_cron),
        )
        .route("/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/v1/jobs/{id}/retry", post(api::retry_job))
        .route("/v1/jobs/{id}/heartbeat", post(api::heartbeat))
        .route("/v1/jobs/{id}/ack", post(api::ack))
        .route("/v1/jobs/{id}/fail", post(api::fail))
        .route("/v1/lease", post(api::lease))
        .route("/v1/ack", post(api::ack_batch))
        .route("/v1/fail", post(api::fail_batch))
        .route("/v1/queues", get(api::list_queues))
        .route("/v1/queues/{queue}", get(api::get_queue))
        .route("/v1/queues/{queue}/keys/{key}", get(api::get_queue_key))
        .route("/v1/queues/{queue}/jobs", get(api::list_jobs))
        .route("/v1/queues/{queue}/pause", post(api::pause_queue))
        .route("/v1/queues/{queue}/resume", post(api::resume_queue))
        .route("/v1/queues/{queue}/purge", post(api::purge_queue))
        .route("/v1/queues/{queue}/move", post(api::move_jobs))
        .route("/v1/queues/{queue}/limits", post(api::set_queue_limits))
        .route("/v1/queues/{queue}/history", get(analytics::queue_history))
        .route(
            "/v1/queues/{queue}/insights",
            get(analytics::queue_insights),
        )
        .route("/v1/health", get(analytics::server_health))
        .route("/v1/history", get(analytics::server_history))
        .route("/v1/alerts", get(alerting::firing))
        .route("/v1/alerts/history", get(alerting::history))
        .route("/v1/alerts/rules", get(alerting::list_rules))
        .route(
            "/v1/alerts/rules/{name}",
            get(alerting::get_rule)
                .put(alerting::set_rule)
                .delete(alerting::remove_rule),
        )
        .route("/v1/alerts/silences", get(alerting::list_silences))
        .route(
            "/v1/alerts/silences/{id}",
            put(alerting::set_silence).delete(alerting::remove_silence),
        )
        .route("/v1/streams", get(streams::list_streams))
        .route(
            "/v1/streams/{stream}",
            get(streams::get_stream).put(streams::set_stream),
        )
        .route("/v1/streams/{stream}/records", post(streams::produce))
        .route("/v1/streams/{stream}/feeds", get(streams::list_feeds))
        .route(
            "/v1/streams/{stream}/feeds/{queue}",
            put(streams::set_feed).delete(streams::remove_feed),
        )
        .route(
            "/v1/streams/{stream}/partitions/{partition}/records",
            get(streams::fetch),
        )
        .route("/v1/streams/{stream}/groups", get(groups::list_groups))
        .route(
            "/v1/streams/{stream}/groups/{group}",
            get(groups::get_group),
        )
        .route(
            "/v1/streams/{stream}/groups/{group}/join",
            post(groups::join),
        )
        .route(
            "/v1/streams/{stream}/groups/{group}/heartbeat",
            post(groups::heartbeat),
        )
        .route(
            "/v1/streams/{stream}/groups/{group}/leave",
            post(groups::leave),
        )
        .route(
            "/v1/streams/{stream}/groups/{group}/commit",
            post(groups::commit),
        )
        .route("/v1/workers", get(api::list_workers))
        .route(
            "/v1/workers/{name}",
            get(api::get_worker)
                .put(api::register_worker)
                .delete(api::remove_worker),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::REQUEST_BYTES_MAX))
        .layer(axum::middleware::from_fn(conn::check_head))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then stops taking requests, lets
/// in-flight ones finish (bounded by `shutdown_grace_ms`), snapshots and closes the log.
/// Health checks answer during replay; `/readyz` turns 200 once the log is replayed.
/// Connections are capped and timed as [`conn`] describes; the soft open-file limit of
/// the process is raised (up to the hard one) to hold `connections_max`.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if cfg!(not(feature = "otel")) && config.otlp_endpoint.is_some() {
        return Err(ServerError::Unsupported(
            "an OTLP endpoint was given, but this build has no OpenTelemetry export \
             (build with --features otel)",
        ));
    }
    // Held until `run` returns; the OS drops it if the process dies.
    let _lock = lock_data_dir(&config.data_dir)?;
    let cell: Arc<OnceLock<Arc<Broker>>> = Arc::new(OnceLock::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = AppState {
        broker: cell.clone(),
        shutting_down: stop_rx.clone(),
    };
    let conn_limits = conn::ConnLimits {
        connections_max: conn::effective_connections_max(config.connections_max),
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
    };
    let server = tokio::spawn(conn::serve(
        listener,
        router(app),
        conn_limits,
        stop_rx.clone(),
    ));

    let options = WalOptions {
        segment_bytes_max: config.segment_bytes_max,
        fsync: config.fsync,
        ..WalOptions::new(&config.data_dir)
    };
    let core_config = sluice_core::Config {
        retention_ms: config.retention_ms,
        retention_len_max: config.retention_len_max,
    };
    let snapshot_every = config.snapshot_every_records.max(1);
    let started = std::time::Instant::now();
    let opened =
        tokio::task::spawn_blocking(move || Broker::open(options, core_config, snapshot_every))
            .await?;
    let (mut broker, report) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(error.into());
        }
    };
    broker.worker_stale_ms = config.worker_stale_ms.max(1);
    broker.metrics_enabled = config.metrics_enabled;
    broker.streams.segment_bytes_max = config.stream_segment_bytes_max;
    let broker = Arc::new(broker);
    tracing::info!(
        snapshot_lsn = ?report.snapshot_lsn,
        records_replayed = report.records_replayed,
        next_lsn = report.next_lsn,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log replayed; ready"
    );
    let _ = cell.set(broker.clone());

    let ticker = {
        let broker = broker.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Broker::tick_interval());
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = interval.tick() => false,
                    _ = stop.changed() => true,
                };
                if stopping || *stop.borrow() {
                    break;
                }
                if let Err(error) = broker.tick().await {
                    tracing::warn!(?error, "periodic work failed");
                }
            }
        })
    };

    let notifier = tokio::spawn(alerting::notifier(broker.clone(), stop_rx.clone()));
    // Stream retention and compaction, and under `--fsync batch` the periodic sync of
    // stream partitions, each in a task of its own (not the tick's).
    let stream_tasks = {
        let every = |ms: u64| {
            let mut interval = tokio::time::interval(Duration::from_millis(ms.max(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        };
        let maintenance = {
            let (broker, mut stop) = (broker.clone(), stop_rx.clone());
            let mut interval = every(config.stream_maintenance_ms);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = interval.tick() => broker.stream_maintenance().await,
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        let sync = match config.fsync {
            FsyncPolicy::Batch { interval_ms } => {
                let (broker, mut stop) = (broker.clone(), stop_rx.clone());
                let mut interval = every(interval_ms);
                Some(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = interval.tick() => {
                                if broker.streams.syncs_periodically() {
                                    let broker = broker.clone();
                                    let _ = tokio::task::spawn_blocking(move || broker.streams.sync_due()).await;
                                }
                            }
                            _ = stop.changed() => break,
                        }
                    }
                }))
            }
            _ => None,
        };
        (maintenance, sync)
    };
    let live_stats = {
        let broker = broker.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => broker.live_stats(),
                    _ = stop.changed() => break,
                }
            }
        })
    };
    #[cfg(feature = "otel")]
    if let Some(endpoint) = config.otlp_endpoint.clone() {
        tokio::spawn(otel::exporter(
            broker.clone(),
            endpoint,
            Duration::from_millis(config.otlp_interval_ms.max(100)),
            stop_rx.clone(),
        ));
    }

    shutdown.await;
    tracing::info!("shutting down: no new requests; finishing in-flight ones");
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let served = tokio::time::timeout(grace, server).await;
    let _ = ticker.await;
    let _ = live_stats.await;
    // A compaction in progress finishes its segment (bounded by the grace).
    let _ = tokio::time::timeout(grace, stream_tasks.0).await;
    if let Some(sync) = stream_tasks.1 {
        let _ = sync.await;
    }
    // A delivery in flight takes at most its timeout; an unfinished one is retried
    // after the restart (its lease runs out).
    let _ = tokio::time::timeout(grace, notifier).await;
    if served.is_err() {
        tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "in-flight requests did not finish in time"
        );
    }
    if !broker.wal().is_poisoned() {
        if let Err(error) = broker.snapshot().await {
            tracing::warn!(
                ?error,
                "final snapshot failed; the log still holds everything"
            );
        }
    }
    broker.close().map_err(ServerError::Close)?;
    tracing::info!("stopped");
    Ok(())
}

/// Two servers on one data directory would interleave their logs: refuse the second.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let lock_error = |source| ServerError::Lock {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(lock_error)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(lock_error(source)),
    }
}
