//! A worker that writes to PostgreSQL with sqlx: each `email.send` job records the email
//! in a `sent_emails` table. The insert is keyed by the job id, so a job that runs again
//! (its lease expired mid-run, or the ack was lost) writes once: the broker delivers at
//! least once, the table makes it exactly once.
//!
//! `DATABASE_URL=postgres://user@host/db cargo run -p sluice-examples --bin pg_worker`

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sluice_client::{Client, Job, Worker};
use sluice_examples::{shutdown_signal, Email, KIND, QUEUE};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:7440", env = "SLUICE_URL")]
    url: String,
    /// The PostgreSQL database to write to.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

async fn record(pool: PgPool, job: Job<Email>) -> Result<()> {
    sqlx::query(
        "INSERT INTO sent_emails (job_id, recipient, subject, attempt) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(&job.id)
    .bind(&job.payload.to)
    .bind(&job.payload.subject)
    .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
    .execute(&pool)
    .await
    .context("insert into sent_emails")?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(args.concurrency).unwrap_or(16).clamp(1, 32))
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS sent_emails (job_id text PRIMARY KEY, recipient text NOT NULL, \
         subject text NOT NULL, attempt int NOT NULL, sent_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .context("create table sent_emails")?;

    let client = Client::new(&args.url)?;
    let report = Worker::new(client, [QUEUE])
        .concurrency(args.concurrency)
        .job_timeout(Duration::from_secs(60))
        .handle(KIND, move |job: Job<Email>| record(pool.clone(), job))
        .run(shutdown_signal())
        .await?;
    eprintln!("stopped: {report:?}");
    Ok(())
}
