//! Enqueues `--count` email jobs (in batches of up to 1,000) and prints their ids.
//!
//! `cargo run -p sluice-examples --bin producer -- --count 10`

use anyhow::Result;
use clap::Parser;
use sluice_client::{Backoff, Client, NewJob};
use sluice_examples::{Email, KIND, QUEUE};

#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:7440", env = "SLUICE_URL")]
    url: String,
    #[arg(long, default_value_t = 10)]
    count: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::new(&args.url)?;
    let jobs: Vec<NewJob<Email>> = (0..args.count)
        .map(|n| {
            NewJob::new(
                QUEUE,
                KIND,
                Email {
                    to: format!("user{n}@example.com"),
                    subject: "Welcome".to_owned(),
                },
            )
            .max_attempts(5)
            .backoff(Backoff::Exponential {
                base_ms: 1_000,
                max_ms: 60_000,
            })
            .tag("welcome")
        })
        .collect();
    for chunk in jobs.chunks(1_000) {
        for enqueued in client.enqueue_batch(chunk).await? {
            println!("{}", enqueued.id);
        }
    }
    Ok(())
}
