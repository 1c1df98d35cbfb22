//! A stream through the SDK: `--produce N` appends N orders to the stream `orders`
//! (creating it with 4 partitions if missing), keyed by customer so that each customer's
//! orders stay in order, in the binary encoding; `--consume` reads them as a member of
//! the consumer group `billing`, printing each, until Ctrl-C or SIGTERM, then commits
//! and leaves. Start several consumers: the group shares the partitions among them.
//!
//! `cargo run -p sluice-examples --bin orders -- --produce 100`
//! `cargo run -p sluice-examples --bin orders -- --consume`

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde::{Deserialize, Serialize};
use sluice_client::{Client, GroupConsumer, StreamProducer, StreamRecord};

#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:7440", env = "SLUICE_URL")]
    url: String,
    /// Append this many orders, then exit.
    #[arg(long, conflicts_with = "consume")]
    produce: Option<u32>,
    /// Read orders as a member of the group `billing` until stopped.
    #[arg(long)]
    consume: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    customer: String,
    cents: u64,
}

const STREAM: &str = "orders";

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = Client::new(&args.url)?;
    if let Some(count) = args.produce {
        client.ensure_stream(STREAM, 4).await?;
        let mut producer = StreamProducer::new(client, STREAM).binary();
        let orders: Vec<StreamRecord<Order>> = (0..count)
            .map(|id| {
                let customer = format!("customer-{}", id % 10);
                StreamRecord::keyed(
                    customer.clone(),
                    Order {
                        id,
                        customer,
                        cents: u64::from(id) * 125 % 10_000,
                    },
                )
            })
            .collect();
        for chunk in orders.chunks(1_000) {
            for (partition, offset) in producer.send(chunk).await? {
                println!("{partition} {offset}");
            }
        }
        return Ok(());
    }
    anyhow::ensure!(args.consume, "say --produce N or --consume");
    let mut consumer = GroupConsumer::join(client, STREAM, "billing")
        .await?
        .binary();
    eprintln!("reading partitions {:?}", consumer.partitions());
    let stop = sluice_examples::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            polled = consumer.poll::<Order>(Duration::from_millis(500)) => {
                for record in polled? {
                    let order = record.value;
                    println!(
                        "order {} of {} for {} cents (partition {}, offset {})",
                        order.id, order.customer, order.cents, record.partition, record.offset
                    );
                }
            }
        }
    }
    // Commits what was printed and leaves: the others take the partitions at once.
    consumer.close().await?;
    Ok(())
}
