//! The `sluice` binary: runs the server, talks to one over HTTP, benchmarks it, and
//! repairs a data directory. It speaks only the public API (and the WAL's repair API).

mod bench;
mod bench_workers;
mod client;
mod top;
mod work;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sluice_server::ServerConfig;
use sluice_wal::FsyncPolicy;

use crate::client::Client;

/// jemalloc rather than glibc's malloc: under glibc the 30-minute soak's RSS rose 11.7 %
/// on freed memory its arenas kept; under jemalloc it stayed flat, and the lifecycles
/// ran faster (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Durable job queues in one binary")]
struct Cli {
    /// Server to talk to (all commands but `server` and `repair`).
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:7440"
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum FsyncMode {
    /// fsync before every reply (grouped across concurrent writers).
    Always,
    /// fsync every --fsync-interval-ms; a power loss may lose that interval.
    Batch,
    /// Leave flushing to the OS; a power loss may lose anything not yet flushed.
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Server {
        #[arg(long, default_value = "127.0.0.1:7440")]
        addr: SocketAddr,
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "always")]
        fsync: FsyncMode,
        #[arg(long, default_value_t = 10)]
        fsync_interval_ms: u64,
        /// Roll to a new WAL segment past this size.
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        segment_bytes_max: u64,
        /// Keep finished jobs this long.
        #[arg(long, default_value_t = 24 * 3_600_000)]
        retention_ms: u64,
        /// Keep at most this many finished jobs per queue.
        #[arg(long, default_value_t = 100_000)]
        retention_len_max: usize,
        /// Snapshot the state after this many WAL records (and once the log has grown by
        /// at least the size of the last snapshot, so big states snapshot less often).
        #[arg(long, default_value_t = 100_000)]
        snapshot_every_records: u64,
        /// Time in-flight requests get to finish at shutdown.
        #[arg(long, default_value_t = 10_000)]
        shutdown_grace_ms: u64,
        /// Open connections; past it a new one is answered 503 too_many_connections.
        #[arg(long, default_value_t = sluice_proto::limits::CONNECTIONS_MAX)]
        connections_max: usize,
        /// A registered worker not heard from for this long is dropped and its leases
        /// end at once.
        /// At least 15,000: three of the SDK's 5 s beats.
        #[arg(long, default_value_t = sluice_proto::limits::WORKER_STALE_MS_DEFAULT,
              value_parser = clap::value_parser!(u64).range(15_000..))]
        worker_stale_ms: u64,
        /// Count jobs into the metrics; `off` only to measure what that costs (metrics,
        /// history, insights and alerts then see no activity).
        #[arg(long, value_enum, default_value = "on")]
        metrics: Switch,
        /// Export the job metrics to this OpenTelemetry collector (its base URL; OTLP/HTTP
        /// JSON to <URL>/v1/metrics). Needs a build with `--features otel`.
        #[arg(long)]
        otlp_endpoint: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        otlp_interval_ms: u64,
        /// A stream partition rolls to a new segment past this size; retention and
        /// compaction work on whole segments and never touch the active one (1 KiB to
        /// 1 GiB).
        #[arg(long, default_value_t = 64 * 1024 * 1024,
              value_parser = clap::value_parser!(u64).range(1_024..=1_073_741_824))]
        stream_segment_bytes_max: u64,
        /// Stream retention and compaction run this often.
        #[arg(long, default_value_t = 30_000,
              value_parser = clap::value_parser!(u64).range(100..))]
        stream_maintenance_ms: u64,
    },
    /// Enqueue one job.
    Enqueue {
        #[arg(long)]
        queue: String,
        #[arg(long)]
        kind: String,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        payload: String,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i16,
        #[arg(long)]
        delay_ms: Option<u64>,
        /// RFC 3339 time.
        #[arg(long)]
        run_at: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        unique_key: Option<String>,
        #[arg(long)]
        unique_ttl_ms: Option<u64>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The key the queue's per-key limits count this job under (a customer, a token).
        #[arg(long)]
        limit_key: Option<String>,
    },
    /// Look at or act on one job.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// List queues, or pause, resume or purge one.
    Queues {
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Cron schedules: list, set or remove.
    Cron {
        #[command(subcommand)]
        action: Option<CronAction>,
    },
    /// Streams: create, list, describe, produce, consume.
    Stream {
        #[command(subcommand)]
        action: StreamAction,
    },
    /// A live terminal dashboard of the queues and the workers holding their jobs.
    Top {
        /// How often to refresh.
        #[arg(long, default_value_t = 1_000)]
        interval_ms: u64,
    },
    /// Run a built-in worker: `http` makes the request each job's payload describes,
    /// `exec` runs a command with the payload on stdin.
    Work {
        #[command(flatten)]
        args: work::WorkArgs,
    },
    /// Measure throughput, latency, memory and restart time (see docs/benchmarks.md).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Check a data directory for damage; with --apply, cut the log at the first damage.
    Repair {
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        /// Change files (default: only report).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum JobAction {
    Get { id: String },
    Cancel { id: String },
    Retry { id: String },
}

#[derive(Subcommand)]
enum StreamAction {
    /// Create a stream, or grow its partitions or set its retention.
    Create {
        stream: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long)]
        retention_ms: Option<u64>,
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Compact by key: keep each key's newest record (a create without it turns
        /// compaction off).
        #[arg(long)]
        compact: bool,
        /// Under --compact: how long a key's newest tombstone is kept (default 24 h).
        #[arg(long, requires = "compact")]
        tombstone_retention_ms: Option<u64>,
    },
    List,
    /// Partitions with their earliest and next offsets.
    Describe {
        stream: String,
    },
    /// Consumer groups of a stream: generation, members and their partitions, committed
    /// offsets and lag per partition (or one group with --group).
    Groups {
        stream: String,
        #[arg(long)]
        group: Option<String>,
    },
    /// Append one record (by key, or to --partition, or round robin).
    Produce {
        stream: String,
        /// JSON value.
        #[arg(long)]
        value: Option<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Print records of one partition, one JSON object a line; --follow waits for more.
    Consume {
        stream: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// First offset (default: the earliest kept).
        #[arg(long)]
        offset: Option<u64>,
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One queue: counts per state, limits, rate tokens.
    Show {
        queue: String,
    },
    /// How one limit key of a queue stands: its jobs, leases and rate tokens.
    Key {
        queue: String,
        key: String,
    },
    Pause {
        queue: String,
    },
    Resume {
        queue: String,
    },
    Purge {
        queue: String,
    },
    /// Move jobs of one state (oldest first) to another queue.
    Move {
        queue: String,
        #[arg(long)]
        to: String,
        /// scheduled, ready, failed or dead.
        #[arg(long, default_value = "ready")]
        state: String,
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
    },
    /// Set a queue's flow control (no option removes every limit).
    Limit {
        queue: String,
        /// At most this many of its jobs leased at once, across all workers.
        #[arg(long)]
        concurrency: Option<u32>,
        /// At most N leases per window, e.g. `100/60s`, `10/1s`, `5000/1h`.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<(u32, u64)>,
        /// At most this many jobs of any one limit key leased at once.
        #[arg(long)]
        key_concurrency: Option<u32>,
        /// At most N leases per window for each limit key, e.g. `100/60s`.
        #[arg(long, value_parser = parse_rate)]
        key_rate: Option<(u32, u64)>,
    },
    /// Jobs of a queue in one state.
    Jobs {
        queue: String,
        #[arg(long, default_value = "ready")]
        state: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `N/<window>` with a window of `<n>ms`, `<n>s`, `<n>m` or `<n>h`: `(N, window in ms)`.
fn parse_rate(text: &str) -> Result<(u32, u64), String> {
    let (limit, window) = text
        .split_once('/')
        .ok_or("expected LIMIT/WINDOW, e.g. 100/60s")?;
    let limit: u32 = limit
        .trim()
        .parse()
        .map_err(|_| format!("{limit:?} is not a number of leases"))?;
    let window = window.trim();
    let split = window
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(window.len());
    let (count, unit) = window.split_at(split);
    let count: u64 = if count.is_empty() {
        1
    } else {
        count
            .parse()
            .map_err(|_| format!("bad window {window:?}"))?
    };
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("window unit must be ms, s, m or h, not {unit:?}")),
    };
    Ok((limit, count.saturating_mul(unit_ms)))
}

#[derive(Subcommand)]
enum CronAction {
    /// Create or replace a schedule: each occurrence enqueues one job.
    Set {
        name: String,
        /// croner syntax: 5 fields, or 6 with seconds first (`0 9 * * MON-FRI`).
        #[arg(long)]
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Occurrences missed while the server was down: skip, run_once or run_all.
        #[arg(long, default_value = "skip")]
        missed: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        kind: String,
        /// JSON payload of each job.
        #[arg(long, default_value = "null")]
        payload: String,
    },
    Remove {
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stream_command(url: &str, action: StreamAction) -> Result<()> {
    let client = Client::new(url)?;
    match action {
        StreamAction::Create {
            stream,
            partitions,
            retention_ms,
            retention_bytes,
            compact,
            tombstone_retention_ms,
        } => {
            let mut body = json!({ "partitions": partitions });
            if compact {
                body["compaction"] = match tombstone_retention_ms {
                    Some(ms) => json!({ "tombstone_retention_ms": ms }),
                    None => json!({}),
                };
            }
            if let Some(ms) = retention_ms {
                body["retention_ms"] = json!(ms);
            }
            if let Some(bytes) = retention_bytes {
                body["retention_bytes"] = json!(bytes);
            }
            print(&client.put(&format!("/v1/streams/{stream}"), &body).await?);
        }
        StreamAction::List => print(&client.get("/v1/streams").await?),
        StreamAction::Describe { stream } => {
            print(&client.get(&format!("/v1/streams/{stream}")).await?)
        }
        StreamAction::Groups { stream, group } => {
            let path = match group {
                Some(group) => format!("/v1/streams/{stream}/groups/{group}"),
                None => format!("/v1/streams/{stream}/groups"),
            };
            print(&client.get(&path).await?)
        }
        StreamAction::Produce {
            stream,
            value,
            key,
            partition,
        } => {
            let mut record = json!({});
            if let Some(value) = value {
                record["value"] = serde_json::from_str(&value).context("--value must be JSON")?;
            }
            if let Some(key) = key {
                record["key"] = json!(key);
            }
            if let Some(partition) = partition {
                record["partition"] = json!(partition);
            }
            let body = json!({ "records": [record] });
            print(
                &client
                    .post(&format!("/v1/streams/{stream}/records"), &body)
                    .await?,
            );
        }
        StreamAction::Consume {
            stream,
            partition,
            offset,
            follow,
        } => {
            let mut next = match offset {
                Some(offset) => format!("offset={offset}"),
                None => "from=earliest".to_owned(),
            };
            loop {
                let wait = if follow { 30_000 } else { 0 };
                let reply = client
                    .get(&format!(
                        "/v1/streams/{stream}/partitions/{partition}/records?{next}&wait_ms={wait}"
                    ))
                    .await?;
                let records = reply["records"].as_array().cloned().unwrap_or_default();
                for record in &records {
                    println!("{record}");
                }
                next = format!("offset={}", reply["next_offset"]);
                if records.is_empty() && !follow {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server {
            addr,
            data_dir,
            fsync,
            fsync_interval_ms,
            segment_bytes_max,
            retention_ms,
            retention_len_max,
            snapshot_every_records,
            shutdown_grace_ms,
            connections_max,
            worker_stale_ms,
            metrics,
            otlp_endpoint,
            otlp_interval_ms,
            stream_segment_bytes_max,
            stream_maintenance_ms,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let config = ServerConfig {
                data_dir,
                fsync: match fsync {
                    FsyncMode::Always => FsyncPolicy::Always,
                    FsyncMode::Batch => FsyncPolicy::Batch {
                        interval_ms: fsync_interval_ms.max(1),
                    },
                    FsyncMode::Never => FsyncPolicy::Never,
                },
                segment_bytes_max,
                retention_ms,
                retention_len_max,
                snapshot_every_records,
                shutdown_grace_ms,
                connections_max,
                header_read_timeout_ms: sluice_proto::limits::HEADER_READ_TIMEOUT_MS,
                worker_stale_ms,
                metrics_enabled: matches!(metrics, Switch::On),
                otlp_endpoint,
                otlp_interval_ms,
                stream_segment_bytes_max,
                stream_maintenance_ms,
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "listening");
            let data_dir = config.data_dir.display().to_string();
            sluice_server::run(listener, config, shutdown_signal())
                .await
                // The log's errors name `<dir>` where only the server knows the path.
                .map_err(|e| anyhow::anyhow!(e.to_string().replace("<dir>", &data_dir)))?;
            Ok(())
        }
        Command::Enqueue {
            queue,
            kind,
            payload,
            priority,
            delay_ms,
            run_at,
            max_attempts,
            timeout_ms,
            unique_key,
            unique_ttl_ms,
            tags,
            limit_key,
        } => {
            let payload: Value =
                serde_json::from_str(&payload).context("--payload must be JSON")?;
            let mut body =
                json!({ "queue": queue, "kind": kind, "payload": payload, "priority": priority });
            let fields = [
                ("delay_ms", delay_ms.map(Value::from)),
                ("run_at", run_at.map(Value::from)),
                ("max_attempts", max_attempts.map(Value::from)),
                ("timeout_ms", timeout_ms.map(Value::from)),
                ("unique_key", unique_key.map(Value::from)),
                ("unique_ttl_ms", unique_ttl_ms.map(Value::from)),
                ("limit_key", limit_key.map(Value::from)),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            print(&Client::new(&cli.url)?.post("/v1/jobs", &body).await?);
            Ok(())
        }
        Command::Job { action } => {
            let client = Client::new(&cli.url)?;
            let reply = match action {
                JobAction::Get { id } => client.get(&format!("/v1/jobs/{id}")).await?,
                JobAction::Cancel { id } => {
                    client
                        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
                        .await?
                }
                JobAction::Retry { id } => {
                    client
                        .post(&format!("/v1/jobs/{id}/retry"), &json!({}))
                        .await?
                }
            };
            print(&reply);
            Ok(())
        }
        Command::Queues { action } => {
            let client = Client::new(&cli.url)?;
            match action {
                None => {
                    let reply = client.get("/v1/queues?limit=1000").await?;
                    println!(
                        "{:<32} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        "QUEUE",
                        "PAUSED",
                        "SCHEDULED",
                        "READY",
                        "LEASED",
                        "SUCCEEDED",
                        "FAILED",
                        "DEAD",
                        "CANCELLED"
                    );
                    for q in reply["queues"].as_array().into_iter().flatten() {
                        let c = &q["counts"];
                        println!(
                            "{:<32} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                            q["name"].as_str().unwrap_or(""),
                            if q["paused"].as_bool().unwrap_or(false) {
                                "yes"
                            } else {
                                "no"
                            },
                            c["scheduled"].as_u64().unwrap_or(0),
                            c["ready"].as_u64().unwrap_or(0),
                            c["leased"].as_u64().unwrap_or(0),
                            c["succeeded"].as_u64().unwrap_or(0),
                            c["failed"].as_u64().unwrap_or(0),
                            c["dead"].as_u64().unwrap_or(0),
                            c["cancelled"].as_u64().unwrap_or(0)
                        );
                    }
                }
                Some(QueueAction::Pause { queue }) => print(
                    &client
                        .post(&format!("/v1/queues/{queue}/pause"), &json!({}))
                        .await?,
                ),
                Some(QueueAction::Resume { queue }) => print(
                    &client
                        .post(&format!("/v1/queues/{queue}/resume"), &json!({}))
                        .await?,
                ),
                Some(QueueAction::Move {
                    queue,
                    to,
                    state,
                    limit,
                }) => print(
                    &client
                        .post(
                            &format!("/v1/queues/{queue}/move"),
                            &json!({ "to": to, "state": state, "limit": limit }),
                        )
                        .await?,
                ),
                Some(QueueAction::Limit {
                    queue,
                    concurrency,
                    rate,
                    key_concurrency,
                    key_rate,
                }) => {
                    let mut body = json!({});
                    for (name, concurrency) in [
                        ("concurrency", concurrency),
                        ("key_concurrency", key_concurrency),
                    ] {
                        if let Some(concurrency) = concurrency {
                            body[name] = json!(concurrency);
                        }
                    }
                    for (name, rate) in [("rate", rate), ("key_rate", key_rate)] {
                        if let Some((limit, per_ms)) = rate {
                            body[name] = json!({ "limit": limit, "per_ms": per_ms });
                        }
                    }
                    print(
                        &client
                            .post(&format!("/v1/queues/{queue}/limits"), &body)
                            .await?,
                    )
                }
                Some(QueueAction::Show { queue }) => {
                    print(&client.get(&format!("/v1/queues/{queue}")).await?)
                }
                Some(QueueAction::Key { queue, key }) => {
                    let key = sluice_proto::encode_path_segment(&key);
                    print(
                        &client
                            .get(&format!("/v1/queues/{queue}/keys/{key}"))
                            .await?,
                    )
                }
                Some(QueueAction::Purge { queue }) => print(
                    &client
                        .post(&format!("/v1/queues/{queue}/purge"), &json!({}))
                        .await?,
                ),
                Some(QueueAction::Jobs {
                    queue,
                    state,
                    limit,
                }) => print(
                    &client
                        .get(&format!(
                            "/v1/queues/{queue}/jobs?state={state}&limit={limit}"
                        ))
                        .await?,
                ),
            }
            Ok(())
        }
        Command::Bench { args } => bench::run(&cli.url, args).await,
        Command::Stream { action } => stream_command(&cli.url, action).await,
        Command::Work { args } => work::run(&cli.url, args).await,
        Command::Cron { action } => {
            let client = Client::new(&cli.url)?;
            match action {
                None => print(&client.get("/v1/cron").await?),
                Some(CronAction::Set {
                    name,
                    schedule,
                    timezone,
                    missed,
                    queue,
                    kind,
                    payload,
                }) => {
                    let payload: Value =
                        serde_json::from_str(&payload).context("--payload must be JSON")?;
                    let body = json!({
                        "schedule": schedule,
                        "timezone": timezone,
                        "missed": missed,
                        "job": { "queue": queue, "kind": kind, "payload": payload },
                    });
                    print(&client.put(&format!("/v1/cron/{name}"), &body).await?)
                }
                Some(CronAction::Remove { name }) => {
                    client.delete(&format!("/v1/cron/{name}")).await?;
                    println!("removed {name}");
                }
            }
            Ok(())
        }
        Command::Top { interval_ms } => {
            top::run(&cli.url, Duration::from_millis(interval_ms.max(100))).await
        }
        Command::Repair { data_dir, apply } => {
            let report = sluice_wal::repair(&data_dir, apply)
                .with_context(|| format!("cannot inspect {}", data_dir.display()))?;
            println!("{report}");
            if !apply && (!report.actions.is_empty() || !report.unfixable.is_empty()) {
                bail!("damage found; run again with --apply to cut the log at the first damage");
            }
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_with_their_window_in_ms() {
        assert_eq!(parse_rate("100/60s"), Ok((100, 60_000)));
        assert_eq!(parse_rate("10/s"), Ok((10, 1_000)));
        assert_eq!(parse_rate("5000/1h"), Ok((5_000, 3_600_000)));
        assert_eq!(parse_rate("3/250ms"), Ok((3, 250)));
        assert_eq!(parse_rate("7/2m"), Ok((7, 120_000)));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("x/1s").is_err());
        assert!(parse_rate("1/1d").unwrap_err().contains("ms, s, m or h"));
    }
}
