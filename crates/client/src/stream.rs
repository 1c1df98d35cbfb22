//! Streams in the SDK: a producer (optionally idempotent, retrying on its own) and a
//! consumer group member that heartbeats, follows rebalances and commits what it has
//! handed out, at least once. Both speak JSON, or with `binary()` the record-batch
//! encoding (`application/vnd.sluice.batch`, docs/design/stream-format.md), which the
//! server stores and serves without parsing records: several times the throughput for
//! small records. Values are JSON in both, so either kind of consumer reads either
//! kind of producer's records.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use sluice_stream::batch;

use crate::client::{Client, Error, Result};

/// The content type of the binary record-batch encoding.
pub use sluice_stream::batch::CONTENT_TYPE as BATCH_CONTENT_TYPE;

/// How long a binary producer trusts the partition count it read (Kafka's producer
/// refreshes its metadata every `metadata.max.age.ms`, 5 min; a stream's partitions can
/// grow at any time).
pub const PARTITIONS_MAX_AGE: Duration = Duration::from_secs(60);

/// How a producer or consumer talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Binary,
}

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

impl Client {
    /// Creates stream `name` with `partitions` partitions and no retention unless it
    /// exists (an existing stream is left as it is); returns its partition count. Not
    /// atomic: a stream someone else creates between the check and the create gets this
    /// one's settings (the PUT replaces them), or an error if they made it larger.
    pub async fn ensure_stream(&self, name: &str, partitions: u32) -> Result<u32> {
        match self.stream_partitions(name).await {
            Err(error) if error.code() == Some("not_found") => {
                let path = format!("/v1/streams/{name}");
                let info: StreamPartitions = self
                    .put(&path, &json!({ "partitions": partitions }))
                    .await?;
                Ok(info.partitions.len() as u32)
            }
            read => read,
        }
    }

    /// Stream `name`'s partition count.
    async fn stream_partitions(&self, name: &str) -> Result<u32> {
        let info: StreamPartitions = self.get(&format!("/v1/streams/{name}")).await?;
        u32::try_from(info.partitions.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::Decode("a stream without partitions".into()))
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
    encoding: Encoding,
    /// The stream's partition count and when it was read (binary: the producer picks
    /// partitions itself).
    partitions: Option<(u32, Instant)>,
    /// Where the next send's records without key or partition go (binary: one partition
    /// per send, the next one each send, as Kafka's sticky partitioner).
    sticky: u32,
}

#[derive(Deserialize)]
struct ProducedBatches {
    batches: Vec<ProducedBatch>,
}

#[derive(Deserialize)]
struct ProducedBatch {
    partition: u32,
    base_offset: u64,
}

#[derive(Deserialize)]
struct StreamPartitions {
    partitions: Vec<Value>,
}

/// A JSON produce request, written straight from the caller's records.
#[derive(Serialize)]
struct WireProduce<'a, T> {
    records: Vec<WireRecord<'a, T>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u32>,
}

#[derive(Serialize)]
struct WireRecord<'a, T> {
    value: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    headers: &'a [(String, String)],
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
            encoding: Encoding::Json,
            partitions: None,
            // Not 0 for every producer: short-lived ones would all start on partition 0.
            sticky: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_micros()),
        }
    }

    /// Sends record batches (`application/vnd.sluice.batch`) instead of JSON. The
    /// producer then picks each record's partition itself, as the server would: the given
    /// one, else Kafka's murmur2 of the key over the stream's partition count (read from
    /// the server, again after `PARTITIONS_MAX_AGE`), else one partition per send, the
    /// next one each send. Values are still JSON, and timestamps are the producer's clock.
    pub fn binary(mut self) -> Self {
        self.encoding = Encoding::Binary;
        self
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
        if self.encoding == Encoding::Binary {
            return self.send_binary(records).await;
        }
        let sequence = self.producer_id.map(|_| {
            self.sequence += 1;
            self.sequence
        });
        let body = WireProduce {
            records: records
                .iter()
                .map(|r| WireRecord {
                    value: &r.value,
                    key: r.key.as_deref(),
                    partition: r.partition,
                    headers: &r.headers,
                })
                .collect(),
            producer_id: self.producer_id,
            sequence,
        };
        let path = format!("/v1/streams/{}/records", self.stream);
        let produced: Produced = self
            .retrying(|client| {
                let (path, body) = (&path, &body);
                async move { client.post(path, body, None).await }
            })
            .await?;
        Ok(produced
            .offsets
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect())
    }

    /// Runs `request` once, or for an idempotent producer until it is answered (a retry
    /// is written once), at most `attempts` times with a doubling backoff.
    async fn retrying<R, F, Fut>(&self, request: F) -> Result<R>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<R>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match request(self.client.clone()).await {
                Ok(reply) => return Ok(reply),
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

    /// The stream's partition count, read again when older than `PARTITIONS_MAX_AGE`.
    async fn partition_count(&mut self) -> Result<u32> {
        match self.partitions {
            Some((count, at)) if at.elapsed() < PARTITIONS_MAX_AGE => Ok(count),
            _ => {
                let count = self.client.stream_partitions(&self.stream).await?;
                self.partitions = Some((count, Instant::now()));
                Ok(count)
            }
        }
    }

    /// `send` in the binary encoding: one batch per partition, in partition order.
    async fn send_binary<T: Serialize>(
        &mut self,
        records: &[StreamRecord<T>],
    ) -> Result<Vec<(u32, u64)>> {
        let partitions = self.partition_count().await?;
        let sticky = self.sticky % partitions;
        self.sticky = self.sticky.wrapping_add(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Each record's partition and its place in that partition's batch.
        let mut batches: BTreeMap<u32, Vec<sluice_stream::Record>> = BTreeMap::new();
        let mut placed = Vec::with_capacity(records.len());
        for r in records {
            let partition = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(key)) => sluice_stream::partition_for_key(key.as_bytes(), partitions),
                (None, None) => sticky,
            };
            let batch = batches.entry(partition).or_default();
            placed.push((partition, batch.len() as u64));
            // JSON null is a tombstone, as in a JSON produce.
            let value = serde_json::to_vec(&r.value)?;
            batch.push(sluice_stream::Record {
                timestamp_ms: now,
                key: r.key.as_ref().map(|k| k.as_bytes().to_vec()),
                value: (value != b"null").then_some(value),
                headers: r
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.as_bytes().to_vec()))
                    .collect(),
            });
        }
        let (producer_id, sequence) = match self.producer_id {
            Some(id) => {
                self.sequence += 1;
                (id, self.sequence)
            }
            None => (0, 0),
        };
        let mut body = Vec::new();
        for (partition, batch) in &batches {
            body.extend_from_slice(&partition.to_le_bytes());
            body.extend(batch::encode(0, producer_id, sequence, batch));
        }
        let path = format!("/v1/streams/{}/records", self.stream);
        let produced: ProducedBatches = self
            .retrying(|client| {
                let (path, body) = (path.clone(), body.clone());
                async move { client.post_raw(&path, BATCH_CONTENT_TYPE, body).await }
            })
            .await?;
        let base: BTreeMap<u32, u64> = produced
            .batches
            .iter()
            .map(|b| (b.partition, b.base_offset))
            .collect();
        placed
            .into_iter()
            .map(|(partition, index)| match base.get(&partition) {
                Some(base) => Ok((partition, base + index)),
                None => Err(Error::Decode(format!(
                    "the server did not answer for partition {partition}"
                ))),
            })
            .collect()
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

/// Kafka's `max.poll.interval.ms` default: a member that has not polled for this long
/// stops heartbeating, so that the group hands its partitions to the others.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// What a consumer and its heartbeat task share.
struct Beat {
    /// The generation the consumer holds, sent with each heartbeat.
    generation: u64,
    /// A newer assignment a heartbeat brought, for the next poll to take.
    news: Option<Assignment>,
    /// A heartbeat failed: the next poll heartbeats itself, to report why.
    failed: bool,
    /// The group no longer knows this member (its session ran out, the server
    /// restarted): the next poll joins again.
    unknown: bool,
    last_poll: Instant,
}

type SharedBeat = std::sync::Arc<std::sync::Mutex<Beat>>;

fn new_beat(generation: u64) -> SharedBeat {
    std::sync::Arc::new(std::sync::Mutex::new(Beat {
        generation,
        news: None,
        failed: false,
        unknown: false,
        last_poll: Instant::now(),
    }))
}

fn lock(beat: &SharedBeat) -> std::sync::MutexGuard<'_, Beat> {
    beat.lock().unwrap_or_else(|e| e.into_inner())
}

/// Heartbeats every third of `session` while the consumer lives and polls at least
/// every `MAX_POLL_INTERVAL`, and until the group no longer knows the member.
async fn heartbeats(
    client: Client,
    path: String,
    member_id: String,
    session: Duration,
    beat: SharedBeat,
) {
    let every = (session / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let generation = {
            let beat = lock(&beat);
            if beat.last_poll.elapsed() > MAX_POLL_INTERVAL {
                return;
            }
            beat.generation
        };
        let body = json!({ "member_id": member_id, "generation": generation });
        // A heartbeat slower than the session is as good as none.
        let answer =
            tokio::time::timeout(session, client.post::<_, Assignment>(&path, &body, None)).await;
        let mut beat = lock(&beat);
        match answer {
            // Generations only grow: an answer older than what the consumer holds, or
            // than news not yet taken, is left alone.
            Ok(Ok(assignment))
                if assignment.generation > beat.generation
                    && beat
                        .news
                        .as_ref()
                        .is_none_or(|n| assignment.generation > n.generation) =>
            {
                beat.news = Some(assignment);
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) if error.code() == Some("unknown_member") => {
                beat.unknown = true;
                return;
            }
            Ok(Err(_)) | Err(_) => beat.failed = true,
        }
    }
}

impl Drop for GroupConsumer {
    /// Stops heartbeating: the group hands the partitions on after the session.
    fn drop(&mut self) {
        self.heartbeat_task.abort();
    }
}

/// A member of a consumer group. A task of its own heartbeats every third of the
/// session, so that handling a poll's records may take longer than the session (up to
/// `MAX_POLL_INTERVAL`); `poll` takes on the partitions a rebalance gives it (from their
/// committed offsets), commits what earlier polls handed out, and joins the group again
/// when the group no longer knows it (its session ran out, or the server restarted);
/// `close` commits and leaves. At least once: a crash, or a rebalance before a commit,
/// hands records out again.
pub struct GroupConsumer {
    client: Client,
    stream: String,
    group: String,
    member_id: String,
    session: Duration,
    generation: u64,
    beat: SharedBeat,
    heartbeat_task: tokio::task::JoinHandle<()>,
    /// Next offset to read per assigned partition (`None`: from the earliest kept).
    positions: BTreeMap<u32, Option<u64>>,
    /// Handed out but not committed yet.
    uncommitted: BTreeMap<u32, u64>,
    encoding: Encoding,
}

impl GroupConsumer {
    /// Joins `group` of `stream` with the default range assignment and a 10 s session.
    pub async fn join(client: Client, stream: &str, group: &str) -> Result<GroupConsumer> {
        Self::join_with_session(client, stream, group, Duration::from_secs(10)).await
    }

    /// Joins with a session of `session`: the group hands this member's partitions to
    /// the others when it has not heard from it for that long.
    pub async fn join_with_session(
        client: Client,
        stream: &str,
        group: &str,
        session: Duration,
    ) -> Result<GroupConsumer> {
        let mut consumer = GroupConsumer {
            client,
            stream: stream.to_owned(),
            group: group.to_owned(),
            member_id: String::new(),
            session,
            generation: 0,
            beat: new_beat(0),
            heartbeat_task: tokio::spawn(async {}),
            positions: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            encoding: Encoding::Json,
        };
        consumer.rejoin().await?;
        Ok(consumer)
    }

    /// Joins the group (again, as the same member when it has an id), starts from the
    /// assignment's committed offsets, and starts heartbeating.
    async fn rejoin(&mut self) -> Result<()> {
        let mut body = json!({ "session_timeout_ms": self.session.as_millis() as u64 });
        if !self.member_id.is_empty() {
            body["member_id"] = json!(self.member_id);
        }
        let assignment: Assignment = self
            .client
            .post(
                &format!("/v1/streams/{}/groups/{}/join", self.stream, self.group),
                &body,
                None,
            )
            .await?;
        self.member_id = assignment.member_id.clone();
        // What this member read before is someone else's now, or will be read again
        // from the commits.
        self.positions.clear();
        self.uncommitted.clear();
        self.generation = 0;
        self.start_heartbeats(assignment.generation);
        self.take(assignment);
        Ok(())
    }

    /// (Re)starts the heartbeat task, with fresh shared state.
    fn start_heartbeats(&mut self, generation: u64) {
        self.heartbeat_task.abort();
        self.beat = new_beat(generation);
        self.heartbeat_task = tokio::spawn(heartbeats(
            self.client.clone(),
            format!(
                "/v1/streams/{}/groups/{}/heartbeat",
                self.stream, self.group
            ),
            self.member_id.clone(),
            self.session,
            self.beat.clone(),
        ));
    }

    fn beat(&self) -> std::sync::MutexGuard<'_, Beat> {
        lock(&self.beat)
    }

    /// Fetches record batches (`application/vnd.sluice.batch`) instead of JSON; the
    /// values are read as JSON all the same.
    pub fn binary(mut self) -> Self {
        self.encoding = Encoding::Binary;
        self
    }

    /// Takes `assignment` if it is newer than the one held (generations only grow).
    fn take(&mut self, assignment: Assignment) {
        if assignment.generation <= self.generation {
            return;
        }
        self.generation = assignment.generation;
        {
            let mut beat = self.beat();
            beat.generation = assignment.generation;
            if beat
                .news
                .as_ref()
                .is_some_and(|n| n.generation <= assignment.generation)
            {
                beat.news = None;
            }
        }
        let committed: BTreeMap<u32, u64> = assignment
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        // Partitions kept go on from where this member was, or from their commit if that
        // is further on (another member may have had them in between); new ones from
        // their commit.
        let old = std::mem::take(&mut self.positions);
        for p in assignment.partitions {
            let own = old.get(&p).copied().flatten();
            let position = match (own, committed.get(&p).copied()) {
                (Some(own), Some(committed)) => Some(own.max(committed)),
                (own, committed) => own.or(committed),
            };
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

    /// Reads `partition` from `offset` on at the next poll, and commits that at the next
    /// commit: to skip a record that cannot be read (its partition and offset are in
    /// `poll`'s error), or to read again. False when this member does not hold
    /// `partition`.
    pub fn seek(&mut self, partition: u32, offset: u64) -> bool {
        let Some(position) = self.positions.get_mut(&partition) else {
            return false;
        };
        *position = Some(offset);
        self.uncommitted.insert(partition, offset);
        true
    }

    /// Commits what was handed out so far. A commit the group refuses because it moved
    /// on (a rebalance) is dropped — those records will be handed out again — and the
    /// new assignment is taken at once; one refused because the group no longer knows
    /// this member joins it again.
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
            Err(error) if error.code() == Some("unknown_member") => self.rejoin().await,
            Err(error) => Err(error),
        }
    }

    /// Heartbeats now and takes the answer; joins again if the group no longer knows
    /// this member.
    async fn heartbeat(&mut self) -> Result<()> {
        let answer = self
            .client
            .post::<_, Assignment>(
                &format!(
                    "/v1/streams/{}/groups/{}/heartbeat",
                    self.stream, self.group
                ),
                &json!({ "member_id": self.member_id, "generation": self.generation }),
                None,
            )
            .await;
        match answer {
            Ok(assignment) => {
                self.take(assignment);
                Ok(())
            }
            Err(error) if error.code() == Some("unknown_member") => self.rejoin().await,
            Err(error) => Err(error),
        }
    }

    /// Commits the last poll's records, takes a new assignment the heartbeats brought
    /// (or heartbeats itself when the last one failed, to report why; or joins again when
    /// the group no longer knows this member), then reads each assigned partition
    /// (waiting up to `wait` in all when there is nothing). A record whose value does not
    /// read as `T` is an error naming its partition and offset (see `seek`).
    /// Cancel-safe: a poll dropped before it returns hands out nothing and moves nothing.
    pub async fn poll<T: DeserializeOwned>(&mut self, wait: Duration) -> Result<Vec<Consumed<T>>> {
        let (unknown, stopped) = {
            let beat = self.beat();
            (beat.unknown, self.heartbeat_task.is_finished())
        };
        if unknown {
            self.rejoin().await?;
        }
        self.commit().await?;
        let (news, failed) = {
            let mut beat = self.beat();
            beat.last_poll = Instant::now();
            (beat.news.take(), std::mem::take(&mut beat.failed))
        };
        if let Some(assignment) = news {
            self.take(assignment);
        }
        if stopped && !unknown {
            // Not heard from for `MAX_POLL_INTERVAL`: the group has most likely moved
            // on without this member; heartbeat (joining again if so) and start again.
            self.heartbeat().await?;
            if self.heartbeat_task.is_finished() {
                self.start_heartbeats(self.generation);
            }
        } else if failed {
            self.heartbeat().await?;
        }
        if self.positions.is_empty() {
            // More members than partitions: nothing to read until a rebalance.
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut advanced = Vec::new();
        let partitions: Vec<(u32, Option<u64>)> =
            self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        let each_wait = wait.as_millis() as u64 / partitions.len().max(1) as u64;
        for (p, position) in partitions {
            let from = position.map_or("from=earliest".to_owned(), |o| format!("offset={o}"));
            let wait_ms = if out.is_empty() { each_wait } else { 0 };
            let path = format!(
                "/v1/streams/{}/partitions/{p}/records?{from}&wait_ms={wait_ms}",
                self.stream
            );
            let unreadable = |offset: u64, error: serde_json::Error| {
                Error::Decode(format!(
                    "the record at partition {p} offset {offset} does not read as the type asked for: {error}"
                ))
            };
            let next_offset = match self.encoding {
                Encoding::Json => {
                    let fetched: Fetched = self.client.get(&path).await?;
                    let _ = fetched.earliest_offset;
                    for r in fetched.records {
                        let value = match r.value {
                            Some(raw) => serde_json::from_str(raw.get()),
                            None => serde_json::from_value(Value::Null),
                        }
                        .map_err(|e| unreadable(r.offset, e))?;
                        out.push(Consumed {
                            partition: p,
                            offset: r.offset,
                            key: r.key,
                            value,
                            timestamp: r.timestamp,
                        });
                    }
                    fetched.next_offset
                }
                Encoding::Binary => {
                    let wait = Duration::from_millis(wait_ms);
                    let (headers, body) =
                        self.client.get_raw(&path, BATCH_CONTENT_TYPE, wait).await?;
                    let next_offset = headers
                        .get("x-sluice-next-offset")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| Error::Decode("no x-sluice-next-offset header".into()))?;
                    // The first batch may start before the offset asked for.
                    let skip_below = position.unwrap_or(0);
                    let records = batch::decode_all(body.as_ref())
                        .map_err(|bad| Error::Decode(format!("a fetched record batch: {bad:?}")))?;
                    for (offset, record) in records {
                        if offset < skip_below {
                            continue;
                        }
                        let value = match record.value {
                            Some(bytes) => serde_json::from_slice(&bytes),
                            None => serde_json::from_value(Value::Null),
                        }
                        .map_err(|e| unreadable(offset, e))?;
                        out.push(Consumed {
                            partition: p,
                            offset,
                            key: record.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                            value,
                            timestamp: sluice_proto::rfc3339::format_ms(record.timestamp_ms),
                        });
                    }
                    next_offset
                }
            };
            advanced.push((p, next_offset));
        }
        // Only now, with no await left: a poll dropped before it returns (in a `select!`)
        // has moved no position, so its records are read again.
        for (p, next_offset) in advanced {
            self.positions.insert(p, Some(next_offset));
            self.uncommitted.insert(p, next_offset);
        }
        Ok(out)
    }

    /// Commits what was handed out and leaves the group (the others rebalance).
    pub async fn close(mut self) -> Result<()> {
        self.heartbeat_task.abort();
        self.commit().await?;
        self.client
            .post_no_content(
                &format!("/v1/streams/{}/groups/{}/leave", self.stream, self.group),
                &json!({ "member_id": self.member_id, "generation": self.generation }),
            )
            .await
    }
}
