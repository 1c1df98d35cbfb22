//! `sluice work`: built-in workers on the SDK's runtime. `http` makes the HTTP request a
//! job's payload describes; `exec` runs a command with the payload on stdin. Both take
//! every job of the queues they lease from, whatever its kind.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_client::{Client, Job, QueueOrder, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of a response body or of stderr kept in a failed job's error.
const EXCERPT_BYTES_MAX: usize = 512;
/// An HTTP job's request timeout unless its payload sets `timeout_ms`.
const HTTP_TIMEOUT_MS_DEFAULT: u64 = 30_000;

#[derive(Clone, Copy, ValueEnum)]
pub enum WorkKind {
    /// Make the HTTP request the payload describes; 2xx succeeds.
    Http,
    /// Run the command after `--` with the payload on stdin; exit status 0 succeeds.
    Exec,
}

#[derive(Args)]
pub struct WorkArgs {
    /// Queue to lease from; repeat for several. By default the highest job priority across
    /// them wins; `NAME:WEIGHT` on every queue makes the choice weighted (Sidekiq-style),
    /// `--strict` takes them in the order given.
    #[arg(long = "queue", required = true)]
    queues: Vec<String>,
    /// Take the queues in the order given: a later one only when the earlier are empty.
    #[arg(long)]
    strict: bool,
    #[arg(long, value_enum)]
    kind: WorkKind,
    /// Jobs run at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Jobs leased ahead of a free slot.
    #[arg(long, default_value_t = 0)]
    prefetch: usize,
    /// A job running longer is cancelled (its request dropped, its process killed) and failed.
    #[arg(long)]
    job_timeout_ms: Option<u64>,
    /// At SIGINT/SIGTERM, running jobs get this long to finish; then they are handed back.
    #[arg(long, default_value_t = 30_000)]
    shutdown_timeout_ms: u64,
    /// The worker's name in attempt histories (default host:pid).
    #[arg(long)]
    name: Option<String>,
    /// For `--kind exec`: the command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The payload of an `http` job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpJob {
    #[serde(default = "post")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A string is sent as it is; any other JSON value is sent as JSON.
    #[serde(default)]
    body: Option<Value>,
    timeout_ms: Option<u64>,
}

fn post() -> String {
    "POST".to_owned()
}

/// `--queue` values as names, and the order they ask for.
fn queue_order(queues: &[String], strict: bool) -> Result<(Vec<String>, QueueOrder)> {
    let mut names = Vec::with_capacity(queues.len());
    let mut weights = Vec::new();
    for queue in queues {
        match queue.rsplit_once(':') {
            Some((name, weight)) if weight.chars().all(|c| c.is_ascii_digit()) => {
                names.push(name.to_owned());
                weights.push(
                    weight
                        .parse::<u32>()
                        .with_context(|| format!("bad weight in --queue {queue}"))?,
                );
            }
            _ => names.push(queue.clone()),
        }
    }
    let order = match (strict, weights.len()) {
        (true, 0) => QueueOrder::Strict,
        (true, _) => bail!("--strict and NAME:WEIGHT queues do not go together"),
        (false, 0) => QueueOrder::Priority,
        (false, n) if n == names.len() => QueueOrder::Weighted(weights),
        (false, _) => bail!("give every --queue a weight (NAME:WEIGHT), or none"),
    };
    Ok((names, order))
}

pub async fn run(url: &str, args: WorkArgs) -> Result<()> {
    let client = Client::new(url)?;
    let (queues, order) = queue_order(&args.queues, args.strict)?;
    let mut worker = Worker::new(client, queues.clone())
        .order(order)
        .concurrency(args.concurrency)
        .prefetch(args.prefetch)
        .shutdown_timeout(Duration::from_millis(args.shutdown_timeout_ms));
    if let Some(ms) = args.job_timeout_ms {
        worker = worker.job_timeout(Duration::from_millis(ms));
    }
    if let Some(name) = args.name {
        worker = worker.name(name);
    }
    let worker = match args.kind {
        WorkKind::Http => {
            if !args.command.is_empty() {
                bail!("--kind http takes no command");
            }
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .context("cannot build the HTTP client")?;
            worker.handle_any(move |job: Job<HttpJob>| http_job(http.clone(), job))
        }
        WorkKind::Exec => {
            if args.command.is_empty() {
                bail!("--kind exec needs a command after `--`, e.g. `-- ./handle.sh`");
            }
            let command = args.command.clone();
            worker.handle_any(move |job: Job<Box<RawValue>>| exec_job(command.clone(), job))
        }
    };
    // Sidekiq's TSTP: quiet (stop leasing, finish what runs, stay up); CONT resumes.
    let control = worker.controller();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut tstp), Ok(mut cont)) = (
            signal(SignalKind::from_raw(rustix::process::Signal::TSTP.as_raw())),
            signal(SignalKind::from_raw(rustix::process::Signal::CONT.as_raw())),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                Some(()) = tstp.recv() => {
                    control.quiet();
                    eprintln!("quiet: no new jobs are leased until SIGCONT");
                }
                Some(()) = cont.recv() => {
                    control.resume();
                    eprintln!("resumed");
                }
                else => return,
            }
        }
    });
    eprintln!(
        "working on {} ({} at once); SIGINT or SIGTERM stops gracefully, SIGTSTP quiets, \
         SIGCONT resumes",
        queues.join(", "),
        args.concurrency
    );
    let report = worker.run(crate::shutdown_signal()).await;
    signals.abort();
    let report = report?;
    eprintln!("stopped: {report:?}");
    Ok(())
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = sluice_proto::limits::truncate_utf8(text, EXCERPT_BYTES_MAX);
    if start.len() == text.len() {
        text.to_owned()
    } else {
        format!("{start}…")
    }
}

pub(crate) async fn http_job(http: reqwest::Client, job: Job<HttpJob>) -> Result<(), String> {
    let spec = &job.payload;
    let method = reqwest::Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {:?}", spec.method))?;
    let mut request = http
        .request(method, &spec.url)
        .timeout(Duration::from_millis(
            spec.timeout_ms.unwrap_or(HTTP_TIMEOUT_MS_DEFAULT),
        ))
        .header("x-sluice-job-id", &job.id)
        .header("x-sluice-attempt", job.attempt.to_string());
    for (name, value) in &spec.headers {
        request = request.header(name, value);
    }
    request = match &spec.body {
        None | Some(Value::Null) => request,
        Some(Value::String(text)) => request.body(text.clone()),
        Some(other) => request.json(other),
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // Only the start of the body is kept: read no more than that.
    let mut body = Vec::new();
    let mut response = response;
    while body.len() <= EXCERPT_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    Err(format!("HTTP {status}: {}", excerpt(&body)))
}

async fn exec_job(command: Vec<String>, job: Job<Box<RawValue>>) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("no command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("SLUICE_JOB_ID", &job.id)
        .env("SLUICE_JOB_QUEUE", &job.queue)
        .env("SLUICE_JOB_KIND", &job.kind)
        .env("SLUICE_JOB_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        // A cancelled job (timeout, lost lease, shutdown) drops this future: kill the process.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    // Feed stdin, read stderr and wait, all at once: a command that writes a lot to
    // stderr before it reads its input must not deadlock against a full pipe.
    let stdin = child.stdin.take();
    let payload = job.payload.get().as_bytes().to_vec();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input closes the pipe early: not an error.
            let _ = stdin.write_all(&payload).await;
        }
    };
    let stderr = child.stderr.take();
    let (_, stderr, status) = tokio::join!(feed, read_start(stderr), child.wait());
    let status = status.map_err(|e| format!("waiting for {program}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("was killed ({status})"),
    };
    Err(format!("{program} {how}: {}", excerpt(&stderr)))
}

/// Reads a pipe to its end, keeping only its first bytes (enough for the excerpt).
async fn read_start(pipe: Option<tokio::process::ChildStderr>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = (EXCERPT_BYTES_MAX + 4).saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::queue_order;
    use sluice_client::QueueOrder;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn queue_flags_give_the_order() {
        let (queues, order) = queue_order(&names(&["a", "b"]), false).expect("plain");
        assert_eq!((queues, order), (names(&["a", "b"]), QueueOrder::Priority));
        let (queues, order) = queue_order(&names(&["a:6", "b:1"]), false).expect("weighted");
        assert_eq!(
            (queues, order),
            (names(&["a", "b"]), QueueOrder::Weighted(vec![6, 1]))
        );
        let (_, order) = queue_order(&names(&["a", "b"]), true).expect("strict");
        assert_eq!(order, QueueOrder::Strict);
        // A name with a colon that is not a weight stays a name.
        let (queues, _) = queue_order(&names(&["ns:emails"]), false).expect("name");
        assert_eq!(queues, names(&["ns:emails"]));
        assert!(queue_order(&names(&["a:6", "b"]), false).is_err());
        assert!(queue_order(&names(&["a:6"]), true).is_err());
    }
}
