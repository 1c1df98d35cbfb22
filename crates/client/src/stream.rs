//! Streams in the SDK: a producer (optionally idempotent, retrying on its own) and a
//! consumer group member that heartbeats, follows rebalances and commits what it has
//! handed out, at least once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::client::{Client, Result};

/// A record to produce: a value of any `Serialize` type, and where it goes.
#[derive(Debug, Clone)]
pub struct StreamRecord<T> {
    pub key: Option<String>,
    pub value: T,
    pub partition: Option<u32>,
    pub headers: Vec<(String, String)>,
}

impl<T> StreamRecord<T> {
    /// A record with a key: it goes where Kafka's partitioner would put it.
    pub fn keyed(key: impl Into<String>, value: T) -> Self {
        StreamRecord {
            key: Some(key.into()),
            value,
            partition: None,
            headers: Vec::new(),
        }
    }

    pub fn to_partition(partition: u32, value: T) -> Self {
        StreamRecord {
            key: None,
            value,
            partition: Some(partition),
            headers: Vec::new(),
        }
    }
}

/// Appends records to one stream.
pub struct StreamProducer {
    client: Client,
    stream: String,
    producer_id: Option<u64>,
    sequence: u32,
    /// Attempts of one send while the server does not answer (backoff 100 ms doubling).
    attempts: u32,
}

#[derive(Deserialize)]
struct Produced {
    offsets: Vec<Offset>,
}

#[derive(Deserialize)]
struct Offset {
    partition: u32,
    offset: u64,
}

impl StreamProducer {
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        StreamProducer {
            client,
            stream: stream.into(),
            producer_id: None,
            sequence: 0,
            attempts: 5,
        }
    }

    /// An idempotent producer: a send retried after a lost answer is written once.
    /// `producer_id` must be unique to this producer (≥ 1) and kept across its restarts
    /// only together with its sequence; every record needs a key or a partition.
    pub fn idempotent(mut self, producer_id: u64) -> Self {
        self.producer_id = Some(producer_id);
        self
    }

    /// Appends `records` in one request; returns `(partition, offset)` of each. An
    /// idempotent producer retries a send that got no answer, under the same sequence.
    pub async fn send<T: Serialize>(
        &mut self,
        records: &[StreamRecord<T>],
    ) -> Result<Vec<(u32, u64)>> {
        let mut wire = Vec::with_capacity(records.len());
        for r in records {
            let mut record = json!({ "value": serde_json::to_value(&r.value)? });
            if let Some(key) = &r.key {
                record["key"] = json!(key);
            }
            if let Some(partition) = r.partition {
                record["partition"] = json!(partition);
            }
            if !r.headers.is_empty() {
                record["headers"] = json!(r.headers);
            }
            wire.push(record);
        }
        let mut body = json!({ "records": wire });
        if let Some(id) = self.producer_id {
            self.sequence += 1;
            body["producer_id"] = json!(id);
            body["sequence"] = json!(self.sequence);
        }
        let path = format!("/v1/streams/{}/records", self.stream);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.client.post::<_, Produced>(&path, &body, None).await {
                Ok(produced) => {
                    return Ok(produced
                        .offsets
                        .into_iter()
                        .map(|o| (o.partition, o.offset))
                        .collect())
                }
                Err(error)
                    if self.producer_id.is_some()
                        && error.is_retryable()
                        && attempt < self.attempts =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A record handed out by a consumer.
#[derive(Debug, Clone)]
pub struct Consumed<T> {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<String>,
    pub value: T,
    pub timestamp: String,
}

#[derive(Deserialize)]
struct Assignment {
    member_id: String,
    generation: u64,
    partitions: Vec<u32>,
    offsets: Vec<Offset>,
}

#[derive(Deserialize)]
struct Fetched {
    records: Vec<FetchedRecord>,
    next_offset: u64,
    earliest_offset: u64,
}

#[derive(Deserialize)]
struct FetchedRecord {
    offset: u64,
    timestamp: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<Box<RawValue>>,
}

/// A member of a consumer group. `poll` heartbeats when due (a third of the session),
/// takes on the partitions a rebalance gives it (from their committed offsets), and
/// commits what earlier polls handed out; `close` commits and leaves. At least once: a
/// crash, or a rebalance before a commit, hands records out again.
pub struct GroupConsumer {
    client: Client,
    stream: String,
    group: String,
    member_id: String,
    generation: u64,
    session: Duration,
    last_heartbeat: Instant,
    /// Next offset to read per assigned partition (`None`: from the earliest kept).
    positions: BTreeMap<u32, Option<u64>>,
    /// Handed out but not committed yet.
    uncommitted: BTreeMap<u32, u64>,
}

impl GroupConsumer {
    /// Joins `group` of `stream` with the default range assignment and a 10 s session.
    pub async fn join(client: Client, stream: &str, group: &str) -> Result<GroupConsumer> {
        let session = Duration::from_secs(10);
        let assignment: Assignment = client
            .post(
                &format!("/v1/streams/{stream}/groups/{group}/join"),
                &json!({ "session_timeout_ms": session.as_millis() as u64 }),
                None,
            )
            .await?;
        let mut consumer = GroupConsumer {
            client,
            stream: stream.to_owned(),
            group: group.to_owned(),
            member_id: assignment.member_id.clone(),
            generation: 0,
            session,
            last_heartbeat: Instant::now(),
            positions: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
        };
        consumer.take(assignment);
        Ok(consumer)
    }

    fn take(&mut self, assignment: Assignment) {
        if assignment.generation == self.generation {
            return;
        }
        self.generation = assignment.generation;
        let committed: BTreeMap<u32, u64> = assignment
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        // Partitions kept go on from where this member was; new ones from their commit.
        let old = std::mem::take(&mut self.positions);
        for p in assignment.partitions {
            let position = old
                .get(&p)
                .copied()
                .flatten()
                .or_else(|| committed.get(&p).copied());
            self.positions.insert(p, position);
        }
        self.uncommitted
            .retain(|p, _| self.positions.contains_key(p));
    }

    /// The partitions this member reads now.
    pub fn partitions(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Commits what was handed out so far. A commit the group refuses because it moved
    /// on (a rebalance) is dropped — those records will be handed out again — and the
    /// new assignment is taken at once.
    pub async fn commit(&mut self) -> Result<()> {
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let offsets: Vec<Value> = self
            .uncommitted
            .iter()
            .map(|(p, o)| json!({ "partition": p, "offset": o }))
            .collect();
        let sent = self
            .client
            .post_no_content(
                &format!("/v1/streams/{}/groups/{}/commit", self.stream, self.group),
                &json!({ "member_id": self.member_id, "generation": self.generation,
                         "offsets": offsets }),
            )
            .await;
        match sent {
            Ok(()) => {
                self.uncommitted.clear();
                Ok(())
            }
            Err(error) if matches!(error.code(), Some("stale_generation" | "not_assigned")) => {
                // The group moved on: take the new assignment now.
                self.uncommitted.clear();
                self.heartbeat().await
            }
            Err(error) => Err(error),
        }
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let assignment: Assignment = self
            .client
            .post(
                &format!(
                    "/v1/streams/{}/groups/{}/heartbeat",
                    self.stream, self.group
                ),
                &json!({ "member_id": self.member_id, "generation": self.generation }),
                None,
            )
            .await?;
        self.last_heartbeat = Instant::now();
        self.take(assignment);
        Ok(())
    }

    /// Commits the last poll's records, heartbeats if due, then reads each assigned
    /// partition (waiting up to `wait` in all when there is nothing).
    pub async fn poll<T: DeserializeOwned>(&mut self, wait: Duration) -> Result<Vec<Consumed<T>>> {
        self.commit().await?;
        if self.last_heartbeat.elapsed() >= self.session / 3 {
            self.heartbeat().await?;
        }
        let mut out = Vec::new();
        let partitions: Vec<(u32, Option<u64>)> =
            self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let each_wait = wait.as_millis() as u64 / partitions.len().max(1) as u64;
        for (p, position) in partitions {
            let from = position.map_or("from=earliest".to_owned(), |o| format!("offset={o}"));
            let wait_ms = if out.is_empty() { each_wait } else { 0 };
            let fetched: Fetched = self
                .client
                .get(&format!(
                    "/v1/streams/{}/partitions/{p}/records?{from}&wait_ms={wait_ms}",
                    self.stream
                ))
                .await?;
            let _ = fetched.earliest_offset;
            for r in fetched.records {
                let value = match r.value {
                    Some(raw) => serde_json::from_str(raw.get())?,
                    None => serde_json::from_value(Value::Null)?,
                };
                out.push(Consumed {
                    partition: p,
                    offset: r.offset,
                    key: r.key,
                    value,
                    timestamp: r.timestamp,
                });
            }
            self.positions.insert(p, Some(fetched.next_offset));
            self.uncommitted.insert(p, fetched.next_offset);
        }
        Ok(out)
    }

    /// Commits what was handed out and leaves the group (the others rebalance).
    pub async fn close(mut self) -> Result<()> {
        self.commit().await?;
        self.client
            .post_no_content(
                &format!("/v1/streams/{}/groups/{}/leave", self.stream, self.group),
                &json!({ "member_id": self.member_id, "generation": self.generation }),
            )
            .await
    }
}
