//! A minimal worker: runs `email.send` jobs from the `emails` queue, 16 at a time, until
//! Ctrl-C or SIGTERM, then finishes what runs and prints what it did.
//!
//! `cargo run -p sluice-examples --bin worker`

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use sluice_client::{Client, Job, Worker};
use sluice_examples::{shutdown_signal, Email, KIND, QUEUE};

#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:7440", env = "SLUICE_URL")]
    url: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

async fn send_email(job: Job<Email>) -> Result<()> {
    // A real handler would call a mail API here; `?` on its errors fails the job and the
    // server retries it after its backoff.
    println!(
        "job {} attempt {}: sending {:?} to {}",
        job.id, job.attempt, job.payload.subject, job.payload.to
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = Client::new(&args.url)?;
    let report = Worker::new(client, [QUEUE])
        .concurrency(args.concurrency)
        .job_timeout(Duration::from_secs(60))
        .handle(KIND, send_email)
        .run(shutdown_signal())
        .await?;
    eprintln!("stopped: {report:?}");
    Ok(())
}
