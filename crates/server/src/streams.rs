//! Streams over HTTP: create, describe, produce and fetch. A stream's spec is in the job
//! log (`State::set_stream`); its records are in partition files under
//! `<data-dir>/streams/<stream>/<partition>/` (`sluice-stream`), opened on first use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::streams::StreamSpec;
use sluice_core::Millis;
use sluice_proto::{limits, rfc3339};
use sluice_stream::{Partition, PartitionConfig, Record, StreamError};
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::api::{ApiJson, ApiQuery, AppState};
use crate::broker::system_now_ms;
use crate::error::ApiError;

/// Records one produce request may carry.
pub const PRODUCE_LEN_MAX: usize = 10_000;
/// Bytes a fetch returns at most (whole batches: at least one however big).
pub const FETCH_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const FETCH_BYTES_DEFAULT: usize = 1024 * 1024;

/// An open partition and the long-polls waiting for its next record.
pub struct Handle {
    pub partition: Mutex<Partition>,
    pub appended: Notify,
    /// The offset below which every record is known durable. Held while syncing, so
    /// producers that wait behind a sync find their records covered by it and return:
    /// one fdatasync serves every append made before it began (group commit).
    durable: Mutex<u64>,
    /// The same, for readers (who must not wait behind a sync).
    durable_end: AtomicU64,
    /// Under `--fsync always` and `batch`, readers see only durable records: a consumer
    /// or feed never acts on a record a power cut could take back.
    readers_wait_for_sync: bool,
    /// The segments and time of the last compaction, to skip partitions with nothing new.
    last_compaction: Mutex<Option<(Vec<u64>, Millis)>>,
}

/// A partition whose segments have not changed is compacted again after this long
/// anyway (for tombstones whose retention ran out, and records the active segment
/// superseded).
const RECOMPACT_AFTER_MS: Millis = 10 * 60_000;

impl Handle {
    /// Returns once every record below `end` is durable, syncing if no sync since covered
    /// it; the partition stays open to appends while the disk works. A failed sync
    /// poisons the partition (no retry that could report success for lost pages).
    /// Blocking.
    pub fn make_durable(&self, end: u64) -> Result<(), StreamError> {
        let mut durable = self.durable.lock();
        if *durable >= end {
            return Ok(());
        }
        let (file, target) = self.partition.lock().sync_handle()?;
        if let Err(source) = file.sync_data() {
            self.partition.lock().poison(&source.to_string());
            return Err(StreamError::Io {
                path: PathBuf::from("stream partition"),
                source,
            });
        }
        *durable = target;
        self.durable_end.fetch_max(target, Ordering::Release);
        // Readers wait for durable records: what this sync covered is theirs now.
        self.appended.notify_waiters();
        Ok(())
    }

    /// Where readers stop: the durable end, or (under `--fsync never`) the end.
    pub fn readable_end(&self, partition: &Partition) -> u64 {
        if self.readers_wait_for_sync {
            self.durable_end
                .load(Ordering::Acquire)
                .min(partition.next_offset())
        } else {
            partition.next_offset()
        }
    }
}

/// Compacts one partition, holding it only to plan and to swap each rewritten segment
/// in: produce and fetch go on while the closed segments are read and rewritten. Skipped
/// when its segments are the same as at the last compaction, less than
/// `RECOMPACT_AFTER_MS` ago. Blocking.
fn compact(handle: &Handle, now: Millis, tombstone_retention_ms: u64) -> Result<(), StreamError> {
    let (plan, bases, end) = {
        let partition = handle.partition.lock();
        let bases = partition.segment_bases();
        if bases.len() < 2 {
            return Ok(());
        }
        let unchanged = handle
            .last_compaction
            .lock()
            .as_ref()
            .is_some_and(|(last, at)| *last == bases && now - at < RECOMPACT_AFTER_MS);
        if unchanged {
            return Ok(());
        }
        (partition.plan_compaction(), bases, partition.next_offset())
    };
    // The plan reads the active segment for each key's newest record: that record must
    // be durable before it may remove an older one that is.
    handle.make_durable(end)?;
    let mut done = sluice_stream::Compacted::default();
    plan.run(now, tombstone_retention_ms, |rewrite| {
        handle.partition.lock().apply_rewrite(rewrite, &mut done)
    })?;
    *handle.last_compaction.lock() = Some((bases, now));
    if done.records_removed > 0 {
        tracing::debug!(
            records_removed = done.records_removed,
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            "compacted a stream partition"
        );
    }
    Ok(())
}

/// The open partitions, by stream and number.
pub struct StreamStore {
    dir: PathBuf,
    /// Partitions roll to a new segment past this size.
    pub segment_bytes_max: u64,
    sync_each_write: bool,
    /// `--fsync batch`: appends are synced every `--fsync-interval-ms` (`sync_due`).
    sync_periodic: bool,
    open: Mutex<HashMap<(String, u32), Arc<Handle>>>,
    /// Held while a partition is opened, so two first uses never open (and recover) the
    /// same files at once.
    opening: Mutex<()>,
    /// Round-robin position per stream, for records with neither key nor partition.
    next: Mutex<HashMap<String, u32>>,
}

fn stream_error(error: StreamError) -> ApiError {
    match error {
        StreamError::Poisoned(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stream_unavailable",
            format!("{error}; it takes writes again after the server restarts"),
        ),
        StreamError::SequenceTooOld { .. } => {
            ApiError::new(StatusCode::CONFLICT, "sequence_too_old", error.to_string())
        }
        StreamError::OffsetOutOfRange { offset, earliest } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "offset_out_of_range",
            format!("offset {offset} is before the earliest kept, {earliest}"),
        )
        .with_detail("offset", format!("at least {earliest}")),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stream_storage",
            other.to_string(),
        ),
    }
}

fn blocking_error(error: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        error.to_string(),
    )
}

impl StreamStore {
    pub fn new(dir: PathBuf, sync_each_write: bool, sync_periodic: bool) -> StreamStore {
        StreamStore {
            dir,
            segment_bytes_max: PartitionConfig::default().segment_bytes_max,
            sync_each_write,
            sync_periodic,
            open: Mutex::new(HashMap::new()),
            opening: Mutex::new(()),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// The partition, opened (and recovered) on first use: blocking.
    pub fn handle(&self, stream: &str, partition: u32) -> Result<Arc<Handle>, StreamError> {
        let key = (stream.to_owned(), partition);
        if let Some(handle) = self.open.lock().get(&key) {
            return Ok(handle.clone());
        }
        let _opening = self.opening.lock();
        if let Some(handle) = self.open.lock().get(&key) {
            return Ok(handle.clone());
        }
        let dir = self.dir.join(stream).join(partition.to_string());
        let config = PartitionConfig {
            segment_bytes_max: self.segment_bytes_max,
            ..PartitionConfig::default()
        };
        let (opened, recovery) = Partition::open(&dir, config)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                stream,
                partition,
                truncated_bytes = recovery.truncated_bytes,
                "cut a torn tail off a stream partition"
            );
        }
        // Opening synced what it recovered.
        let end = opened.next_offset();
        let handle = Arc::new(Handle {
            partition: Mutex::new(opened),
            appended: Notify::new(),
            durable: Mutex::new(end),
            durable_end: AtomicU64::new(end),
            readers_wait_for_sync: self.sync_each_write || self.sync_periodic,
            last_compaction: Mutex::new(None),
        });
        Ok(self.open.lock().entry(key).or_insert(handle).clone())
    }

    /// fdatasyncs every open partition (at shutdown: in `batch` and `never` modes appends
    /// are otherwise left to the OS until a segment rolls).
    pub fn sync_all(&self) {
        let handles: Vec<Arc<Handle>> = self.open.lock().values().cloned().collect();
        for handle in handles {
            if let Err(error) = handle.partition.lock().sync() {
                tracing::warn!(%error, "cannot sync a stream partition");
            }
        }
    }

    /// Whether `sync_due` has anything to do: `--fsync batch` and a partition open.
    pub fn syncs_periodically(&self) -> bool {
        self.sync_periodic && !self.open.lock().is_empty()
    }

    /// Under `--fsync batch`, makes every open partition's appends durable (from its own
    /// task, every `--fsync-interval-ms`; a partition with nothing new costs no sync):
    /// blocking.
    pub fn sync_due(&self) {
        if !self.sync_periodic {
            return;
        }
        let handles: Vec<Arc<Handle>> = self.open.lock().values().cloned().collect();
        for handle in handles {
            let end = handle.partition.lock().next_offset();
            if let Err(error) = handle.make_durable(end) {
                tracing::warn!(%error, "cannot sync a stream partition");
            }
        }
    }

    fn round_robin(&self, stream: &str, partitions: u32) -> u32 {
        let mut next = self.next.lock();
        let slot = next.entry(stream.to_owned()).or_insert(0);
        let partition = *slot % partitions.max(1);
        *slot = slot.wrapping_add(1);
        partition
    }

    /// Applies each stream's retention, then its compaction, to its partitions: blocking.
    pub fn retain(&self, specs: &[Described], now: Millis) {
        for (spec, compaction) in specs {
            let retained = spec.retention_ms.is_some() || spec.retention_bytes.is_some();
            if !retained && compaction.is_none() {
                continue;
            }
            for p in 0..spec.partitions {
                let done = self.handle(&spec.name, p).and_then(|h| {
                    if retained {
                        h.partition
                            .lock()
                            .retain(now, spec.retention_ms, spec.retention_bytes)?;
                    }
                    match compaction {
                        Some(c) => compact(&h, now, c.tombstone_retention_ms),
                        None => Ok(()),
                    }
                });
                if let Err(error) = done {
                    tracing::warn!(stream = spec.name, partition = p, %error, "retention or compaction failed");
                }
            }
        }
    }
}

// ---- wire types -------------------------------------------------------------------------

/// `PUT /v1/streams/{stream}`: create a stream, or grow its partitions / set retention.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    #[schema(minimum = 1, maximum = 1024)]
    pub partitions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub retention_ms: Option<u64>,
    /// Per partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub retention_bytes: Option<u64>,
    /// Compaction by key (keep each key's newest record); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactionSpec>,
}

/// Compaction of a stream: every 30 s, each partition keeps only each key's newest
/// record outside its active segment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactionSpec {
    /// A key's newest tombstone (a record with no value) is kept this long by its
    /// timestamp, then removed. Default 86,400,000 (24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 31_622_400_000_u64)]
    pub tombstone_retention_ms: Option<u64>,
}

/// A tombstone's default retention under compaction, as Kafka's `delete.retention.ms`.
pub const TOMBSTONE_RETENTION_MS_DEFAULT: u64 = 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionInfo {
    pub partition: u32,
    pub earliest_offset: u64,
    pub next_offset: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamInfo {
    pub name: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactionSpec>,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
}

/// One record to produce.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRecord {
    /// Picks the partition (Kafka's murmur2) unless `partition` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Any JSON value; absent makes a tombstone (no value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// RFC 3339; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub records: Vec<ProduceRecord>,
    /// An idempotent producer: a request retried with the same `producer_id` and
    /// `sequence` is written once (each record must then have a key or a partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub producer_id: Option<u64>,
    /// Grows with each new request of the producer.
    #[serde(default)]
    pub sequence: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProducedOffset {
    pub partition: u32,
    pub offset: u64,
}

/// Where each record went, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    pub offsets: Vec<ProducedOffset>,
    /// True when this was a retry of a request already written (nothing was written).
    #[serde(default)]
    pub duplicate: bool,
}

/// The content type of the binary encoding: record batches as stored
/// (docs/design/stream-format.md), for produce (request) and fetch (`Accept`).
pub use sluice_stream::batch::CONTENT_TYPE as BATCH_CONTENT_TYPE;

/// Where one batch of a binary produce went.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProducedBatch {
    pub partition: u32,
    /// The offset of its first record; the others follow densely.
    pub base_offset: u64,
    pub count: u32,
    /// A retry of the producer's last batch: nothing was written.
    pub duplicate: bool,
}

/// A produce's reply: `ProduceResponse` to JSON, `ProduceBatchesResponse` to batches.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ProduceReply {
    Records(ProduceResponse),
    Batches(ProduceBatchesResponse),
}

/// The reply to a binary produce: each batch, in the order sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceBatchesResponse {
    pub batches: Vec<ProducedBatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A key that is not UTF-8 (from a binary producer), in base64, instead of `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Box<RawValue>>,
    /// A value that is not JSON (from a binary producer), in base64, instead of `value`.
    /// Neither: a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// Standard base64 with padding (RFC 4648), for keys and values that JSON cannot carry.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchResponse {
    pub records: Vec<FetchedRecord>,
    /// Where the next fetch starts.
    pub next_offset: u64,
    pub earliest_offset: u64,
    /// The partition's end: `latest_offset - next_offset` is how far behind this reader is.
    pub latest_offset: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    offset: Option<u64>,
    /// `earliest` or `latest`, instead of `offset`.
    from: Option<String>,
    /// RFC 3339: the first record at or after this time, instead of `offset`.
    timestamp: Option<String>,
    max_bytes: Option<usize>,
    wait_ms: Option<u64>,
}

// ---- handlers ---------------------------------------------------------------------------

/// What a fetch read: records for JSON, or stored batches; and where the next read starts.
enum Read {
    Records(Vec<(u64, Record)>, u64),
    /// Whole batches, in chunks (`sluice_stream::ENCODED_CHUNK_BYTES`) sent in order.
    Encoded(Vec<Vec<u8>>, u64),
}

/// A record as JSON: a key that is not UTF-8 and a value that is not JSON go in base64.
fn fetched(offset: u64, r: Record) -> FetchedRecord {
    let (key, key_base64) = match r.key.map(String::from_utf8) {
        None => (None, None),
        Some(Ok(key)) => (Some(key), None),
        Some(Err(e)) => (None, Some(base64(e.as_bytes()))),
    };
    let (value, value_base64) = match r.value {
        None => (None, None),
        Some(bytes) => match std::str::from_utf8(&bytes)
            .ok()
            .and_then(|v| RawValue::from_string(v.to_owned()).ok())
        {
            Some(value) => (Some(value), None),
            None => (None, Some(base64(&bytes))),
        },
    };
    FetchedRecord {
        offset,
        timestamp: rfc3339::format_ms(r.timestamp_ms),
        key,
        key_base64,
        value,
        value_base64,
        headers: r
            .headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
    }
}

fn stream_missing(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("stream {name} not found"),
    )
}

/// A stream's spec and its compaction.
pub type Described = (StreamSpec, Option<sluice_core::streams::Compaction>);

async fn spec_of(app: &AppState, name: &str) -> Result<Described, ApiError> {
    app.broker()?
        .read(|s, _| {
            let spec = s
                .streams()
                .streams
                .get(name)
                .cloned()
                .ok_or_else(|| stream_missing(name))?;
            Ok((spec, s.compaction(name)))
        })
        .await
}

async fn info(app: &AppState, (spec, compaction): Described) -> Result<StreamInfo, ApiError> {
    let broker = app.broker()?.clone();
    tokio::task::spawn_blocking(move || {
        let mut partitions = Vec::with_capacity(spec.partitions as usize);
        for p in 0..spec.partitions {
            let handle = broker.streams.handle(&spec.name, p).map_err(stream_error)?;
            let partition = handle.partition.lock();
            partitions.push(PartitionInfo {
                partition: p,
                earliest_offset: partition.earliest_offset(),
                next_offset: handle.readable_end(&partition),
                bytes: partition.bytes(),
            });
        }
        Ok(StreamInfo {
            name: spec.name,
            created_at: rfc3339::format_ms(spec.created_at),
            retention_ms: spec.retention_ms,
            retention_bytes: spec.retention_bytes,
            compaction: compaction.map(|c| CompactionSpec {
                tombstone_retention_ms: Some(c.tombstone_retention_ms),
            }),
            partitions,
        })
    })
    .await
    .map_err(blocking_error)?
}

#[utoipa::path(put, path = "/v1/streams/{stream}", tag = "streams", params(("stream" = String, Path, description = "Stream name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = StreamRequest, responses((status = 200, body = StreamInfo), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 429, description = "too many streams", body = sluice_proto::ErrorResponse)))]
pub async fn set_stream(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<StreamRequest>,
) -> Result<Json<StreamInfo>, ApiError> {
    let spec = StreamSpec {
        name: name.clone(),
        partitions: request.partitions,
        retention_ms: request.retention_ms,
        retention_bytes: request.retention_bytes,
        created_at: 0,
    };
    let compaction = request
        .compaction
        .map(|c| sluice_core::streams::Compaction {
            tombstone_retention_ms: c
                .tombstone_retention_ms
                .unwrap_or(TOMBSTONE_RETENTION_MS_DEFAULT),
        });
    // Checked before anything is decided: `set_stream` applies its event at once, so a
    // compaction refused after it would leave the state ahead of the log.
    if let Some(c) = compaction {
        let details = c.check();
        if let Some(first) = details.first() {
            return Err(ApiError::bad_input(
                first.path.clone(),
                first.message.clone(),
            ));
        }
    }
    app.broker()?
        .execute_all(|s, now| {
            let (set, _) = s.set_stream(now, spec)?;
            let (compacted, ()) = s.set_stream_compaction(&name, compaction)?;
            Ok((set.into_iter().chain(compacted).collect(), ()))
        })
        .await?;
    let spec = spec_of(&app, &name).await?;
    Ok(Json(info(&app, spec).await?))
}

#[utoipa::path(get, path = "/v1/streams/{stream}", tag = "streams", params(("stream" = String, Path, description = "Stream name")), responses((status = 200, body = StreamInfo), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn get_stream(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StreamInfo>, ApiError> {
    let spec = spec_of(&app, &name).await?;
    Ok(Json(info(&app, spec).await?))
}

#[utoipa::path(get, path = "/v1/streams", tag = "streams", responses((status = 200, body = StreamList)))]
pub async fn list_streams(
    app: axum::extract::State<AppState>,
) -> Result<Json<StreamList>, ApiError> {
    let specs: Vec<Described> = app
        .broker()?
        .read(|s, _| {
            Ok(s.streams()
                .streams
                .values()
                .map(|spec| (spec.clone(), s.compaction(&spec.name)))
                .collect())
        })
        .await?;
    let mut streams = Vec::with_capacity(specs.len());
    for spec in specs {
        streams.push(info(&app, spec).await?);
    }
    Ok(Json(StreamList { streams }))
}

#[utoipa::path(post, path = "/v1/streams/{stream}/records", tag = "streams", params(("stream" = String, Path, description = "Stream name")), request_body(content((ProduceRequest = "application/json"), (Vec<u8> = "application/vnd.sluice.batch")), description = "JSON records, or record batches in the binary encoding (docs/design/stream-format.md)"), responses((status = 200, body = ProduceReply, description = "per record for JSON, per batch for the binary encoding"), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 404, body = sluice_proto::ErrorResponse), (status = 413, description = "too many records", body = sluice_proto::ErrorResponse)))]
pub async fn produce(
    app: axum::extract::State<AppState>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let binary = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with(BATCH_CONTENT_TYPE));
    let body = crate::api::read_body(request, &()).await?;
    if binary {
        return Ok(Json(produce_encoded(&app, name, body.to_vec()).await?).into_response());
    }
    let request: ProduceRequest = crate::api::decode_json(&body)?;
    Ok(Json(produce_json(&app, name, request).await?).into_response())
}

/// The binary produce: `[partition: u32 LE][record batch]...`, each batch as
/// `sluice_stream::batch::encode` writes it, appended as sent (its base offset set here).
async fn produce_encoded(
    app: &AppState,
    name: String,
    mut body: Vec<u8>,
) -> Result<ProduceBatchesResponse, ApiError> {
    let (spec, _) = spec_of(app, &name).await?;
    // Where each batch is: (partition, start, end).
    let mut frames = Vec::new();
    let mut position = 0;
    let mut records = 0usize;
    while position < body.len() {
        let at = format!("batches[{}]", frames.len());
        let Some(partition) = body.get(position..position + 4) else {
            return Err(ApiError::bad_input(
                at,
                "a partition number (4 bytes) cut short",
            ));
        };
        let partition = u32::from_le_bytes(partition.try_into().unwrap_or_default());
        if partition >= spec.partitions {
            return Err(ApiError::bad_input(
                format!("{at}.partition"),
                format!("the stream has partitions 0 to {}", spec.partitions - 1),
            ));
        }
        let bad = |e| {
            ApiError::bad_input(
                at.clone(),
                match e {
                    sluice_stream::batch::Bad::Incomplete => "a record batch cut short".into(),
                    sluice_stream::batch::Bad::Corrupt(reason) => reason,
                },
            )
        };
        let header = sluice_stream::batch::header(&body[position + 4..]).map_err(bad)?;
        // Every batch is checked before any is written: a request is refused whole.
        let header = sluice_stream::batch::check_new(
            &body[position + 4..position + 4 + header.bytes],
            limits::PAYLOAD_BYTES_MAX,
        )
        .map_err(bad)?;
        records += header.count as usize;
        frames.push((partition, position + 4, header));
        position += 4 + header.bytes;
    }
    if frames.is_empty() {
        return Err(ApiError::bad_input("batches", "at least one record batch"));
    }
    if records > PRODUCE_LEN_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("at most {PRODUCE_LEN_MAX} records per request"),
        ));
    }
    let broker = app.broker()?.clone();
    tokio::task::spawn_blocking(move || {
        // A sequence the partition would refuse is refused before anything is written.
        // (Two requests of one producer racing each other can still part-write; a
        // producer sends its batches one request at a time.)
        for (i, &(p, _, header)) in frames.iter().enumerate() {
            if header.producer_id != 0 {
                let handle = broker.streams.handle(&name, p).map_err(stream_error)?;
                let partition = handle.partition.lock();
                partition
                    .check_sequence(header.producer_id, header.sequence)
                    .map_err(|e| {
                        stream_error(e).with_detail(format!("batches[{i}]"), "sequence")
                    })?;
            }
        }
        let mut batches = Vec::with_capacity(frames.len());
        // Per partition written to: its handle and the offset its records end before.
        let mut written: std::collections::BTreeMap<u32, (Arc<Handle>, u64)> = Default::default();
        let mut failed = None;
        for &(p, start, header) in &frames {
            let appended = broker.streams.handle(&name, p).and_then(|handle| {
                let appended = handle
                    .partition
                    .lock()
                    .append_checked(&mut body[start..start + header.bytes], header)?;
                Ok((handle, appended))
            });
            let (handle, appended) = match appended {
                Ok(done) => done,
                Err(error) => {
                    failed = Some(stream_error(error));
                    break;
                }
            };
            // A duplicate's first copy must be durable too before it is acknowledged.
            let ends = appended.base_offset + u64::from(header.count);
            let entry = written.entry(p).or_insert((handle, 0));
            entry.1 = entry.1.max(ends);
            batches.push(ProducedBatch {
                partition: p,
                base_offset: appended.base_offset,
                count: header.count,
                duplicate: appended.duplicate,
            });
        }
        // What was written is synced and announced even when a later batch failed.
        for (handle, ends) in written.into_values() {
            if broker.streams.sync_each_write {
                if let Err(error) = handle.make_durable(ends) {
                    failed.get_or_insert(stream_error(error));
                }
            }
            handle.appended.notify_waiters();
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(ProduceBatchesResponse { batches }),
        }
    })
    .await
    .map_err(blocking_error)?
}

async fn produce_json(
    app: &AppState,
    name: String,
    request: ProduceRequest,
) -> Result<ProduceResponse, ApiError> {
    if request.records.is_empty() {
        return Err(ApiError::bad_input("records", "at least one record"));
    }
    if request.records.len() > PRODUCE_LEN_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("at most {PRODUCE_LEN_MAX} records per request"),
        ));
    }
    let producer_id = request.producer_id.unwrap_or(0);
    let sequence = request.sequence;
    if request.producer_id == Some(0) {
        return Err(ApiError::bad_input("producer_id", "must be at least 1"));
    }
    let (spec, _) = spec_of(app, &name).await?;
    let broker = app.broker()?.clone();
    let now = system_now_ms();
    // Group the records by partition, keeping where each came from.
    let mut by_partition: std::collections::BTreeMap<u32, Vec<(usize, Record)>> =
        Default::default();
    for (i, r) in request.records.into_iter().enumerate() {
        let value = r.value.map(|v| v.get().as_bytes().to_vec());
        if value
            .as_ref()
            .is_some_and(|v| v.len() > limits::PAYLOAD_BYTES_MAX)
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("record {i} is above {} bytes", limits::PAYLOAD_BYTES_MAX),
            )
            .with_detail(format!("records[{i}].value"), "too large"));
        }
        let partition = match (r.partition, &r.key) {
            (Some(p), _) if p >= spec.partitions => {
                return Err(ApiError::bad_input(
                    format!("records[{i}].partition"),
                    format!("the stream has partitions 0 to {}", spec.partitions - 1),
                ))
            }
            (Some(p), _) => p,
            (None, Some(key)) => sluice_stream::partition_for_key(key.as_bytes(), spec.partitions),
            // A retry must land where the first try did: no round robin.
            (None, None) if producer_id != 0 => {
                return Err(ApiError::bad_input(
                    format!("records[{i}]"),
                    "an idempotent producer's records need a key or a partition",
                ))
            }
            (None, None) => broker.streams.round_robin(&name, spec.partitions),
        };
        let timestamp_ms = match &r.timestamp {
            Some(text) => rfc3339::parse_ms(text).ok_or_else(|| {
                ApiError::bad_input(format!("records[{i}].timestamp"), "not an RFC 3339 time")
            })?,
            None => now,
        };
        by_partition.entry(partition).or_default().push((
            i,
            Record {
                timestamp_ms,
                key: r.key.map(String::into_bytes),
                value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect(),
            },
        ));
    }
    let total: usize = by_partition.values().map(Vec::len).sum();
    let (offsets, duplicate) = tokio::task::spawn_blocking(move || {
        let mut offsets = vec![None; total];
        let mut duplicate = false;
        for (p, records) in by_partition {
            let handle = broker.streams.handle(&name, p).map_err(stream_error)?;
            let mut partition = handle.partition.lock();
            let batch: Vec<Record> = records.iter().map(|(_, r)| r.clone()).collect();
            let appended = partition
                .append(&batch, producer_id, sequence)
                .map_err(stream_error)?;
            duplicate |= appended.duplicate;
            drop(partition);
            if broker.streams.sync_each_write {
                handle
                    .make_durable(appended.base_offset + batch.len() as u64)
                    .map_err(stream_error)?;
            }
            handle.appended.notify_waiters();
            for (n, (i, _)) in records.iter().enumerate() {
                offsets[*i] = Some(ProducedOffset {
                    partition: p,
                    offset: appended.base_offset + n as u64,
                });
            }
        }
        Ok::<_, ApiError>((offsets.into_iter().flatten().collect(), duplicate))
    })
    .await
    .map_err(blocking_error)??;
    Ok(ProduceResponse { offsets, duplicate })
}

#[utoipa::path(get, path = "/v1/streams/{stream}/partitions/{partition}/records", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("partition" = u32, Path, description = "Partition number"), ("offset" = Option<u64>, Query, description = "First offset to read"), ("from" = Option<String>, Query, description = "`earliest` or `latest` instead of offset"), ("timestamp" = Option<String>, Query, description = "RFC 3339: from the first record at or after it"), ("max_bytes" = Option<usize>, Query, description = "Default 1 MiB, at most 16 MiB; at least one batch comes"), ("wait_ms" = Option<u64>, Query, description = "Long-poll: wait up to this long for a record (at most 30,000)")), responses((status = 200, content((FetchResponse = "application/json"), (Vec<u8> = "application/vnd.sluice.batch")), description = "records as JSON, or stored record batches when Accept asks for application/vnd.sluice.batch (with x-sluice-next-offset, x-sluice-earliest-offset and x-sluice-latest-offset headers)"), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn fetch(
    app: axum::extract::State<AppState>,
    Path((name, partition)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<FetchQuery>,
    request_headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let binary = request_headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(BATCH_CONTENT_TYPE));
    let partition: u32 = partition
        .parse()
        .map_err(|_| ApiError::bad_input("partition", "a partition number"))?;
    let (spec, _) = spec_of(&app, &name).await?;
    if partition >= spec.partitions {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("stream {name} has no partition {partition}"),
        ));
    }
    let max_bytes = query.max_bytes.unwrap_or(FETCH_BYTES_DEFAULT);
    if max_bytes == 0 || max_bytes > FETCH_BYTES_MAX {
        return Err(ApiError::bad_input(
            "max_bytes",
            format!("must be 1 to {FETCH_BYTES_MAX}"),
        ));
    }
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > limits::LONG_POLL_WAIT_MS_MAX {
        return Err(ApiError::bad_input(
            "wait_ms",
            format!("must be at most {}", limits::LONG_POLL_WAIT_MS_MAX),
        ));
    }
    let timestamp = match &query.timestamp {
        Some(text) => Some(
            rfc3339::parse_ms(text)
                .ok_or_else(|| ApiError::bad_input("timestamp", "not an RFC 3339 time"))?,
        ),
        None => None,
    };
    let broker = app.broker()?.clone();
    let handle = {
        let broker = broker.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || broker.streams.handle(&name, partition))
            .await
            .map_err(blocking_error)?
            .map_err(stream_error)?
    };
    enum Start {
        At(u64),
        Earliest,
        Latest,
        Time(i64),
    }
    let start = match (query.offset, query.from.as_deref(), timestamp) {
        (Some(offset), None, None) => Start::At(offset),
        (None, Some("earliest"), None) => Start::Earliest,
        (None, Some("latest"), None) => Start::Latest,
        (None, None, Some(t)) => Start::Time(t),
        (None, None, None) => {
            return Err(ApiError::bad_input(
                "offset",
                "give offset, from=earliest|latest, or timestamp",
            ))
        }
        (None, Some(_), None) => return Err(ApiError::bad_input("from", "earliest or latest")),
        _ => {
            return Err(ApiError::bad_input(
                "offset",
                "give one of offset, from and timestamp",
            ))
        }
    };
    // Resolved once, in the first read (the partition is locked only off the runtime).
    let mut start = Some(start);
    let mut resolved = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        // Registered before reading, so an append between the read and the wait wakes it.
        let appended = handle.appended.notified();
        let read = {
            let handle = handle.clone();
            let first = start.take();
            tokio::task::spawn_blocking(move || {
                let partition = handle.partition.lock();
                let end = handle.readable_end(&partition);
                let start = match first {
                    None => resolved,
                    Some(Start::At(offset)) => offset,
                    Some(Start::Earliest) => partition.earliest_offset(),
                    Some(Start::Latest) => end,
                    Some(Start::Time(t)) => partition.offset_for_time(t)?.unwrap_or(end),
                };
                let read = if binary {
                    let (bytes, next) = partition.read_encoded(start, max_bytes, end)?;
                    Read::Encoded(bytes, next)
                } else {
                    let (records, next) = partition.read_until(start, max_bytes, end)?;
                    Read::Records(records, next)
                };
                Ok::<_, StreamError>((start, read, partition.earliest_offset(), end))
            })
            .await
            .map_err(blocking_error)?
            .map_err(stream_error)?
        };
        let (start, read, earliest_offset, latest_offset) = read;
        resolved = start;
        let empty = match &read {
            Read::Encoded(chunks, _) => chunks.is_empty(),
            Read::Records(records, _) => records.is_empty(),
        };
        if !empty || tokio::time::Instant::now() >= deadline {
            return Ok(match read {
                Read::Encoded(bytes, next) => {
                    let offsets = [
                        ("x-sluice-next-offset", next.max(start)),
                        ("x-sluice-earliest-offset", earliest_offset),
                        ("x-sluice-latest-offset", latest_offset),
                    ];
                    let mut headers = axum::http::HeaderMap::new();
                    headers.insert(
                        axum::http::header::CONTENT_TYPE,
                        axum::http::HeaderValue::from_static(BATCH_CONTENT_TYPE),
                    );
                    for (name, value) in offsets {
                        headers.insert(name, axum::http::HeaderValue::from(value));
                    }
                    let length: usize = bytes.iter().map(Vec::len).sum();
                    headers.insert(
                        axum::http::header::CONTENT_LENGTH,
                        axum::http::HeaderValue::from(length),
                    );
                    let chunks = bytes.into_iter().map(|chunk| {
                        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk))
                    });
                    (
                        headers,
                        axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
                    )
                        .into_response()
                }
                Read::Records(records, next) => {
                    // Past any gap compaction left, so a reader's lag can reach 0.
                    let next_offset = next.max(start);
                    Json(FetchResponse {
                        records: records.into_iter().map(|(o, r)| fetched(o, r)).collect(),
                        next_offset,
                        earliest_offset,
                        latest_offset,
                    })
                    .into_response()
                }
            });
        }
        tokio::select! {
            _ = appended => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}

// ---- feeds --------------------------------------------------------------------------------

/// Records a feed moves into its queue per tick at most (over all its partitions).
pub const FEED_BATCH_MAX: usize = 1_000;

/// Delivers what each feed has not yet delivered (from the tick): reads its partitions
/// from its offsets and logs the jobs and the new offsets as one event.
/// A record's value as a job payload: the value itself when it is JSON, `null` for a
/// tombstone, and `{"value_base64": "..."}` for bytes that are not JSON (a binary
/// producer's).
fn feed_payload(value: Option<Vec<u8>>) -> String {
    match value {
        None => "null".to_owned(),
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) if serde_json::from_str::<&RawValue>(&text).is_ok() => text,
            Ok(text) => format!("{{\"value_base64\":\"{}\"}}", base64(text.as_bytes())),
            Err(e) => format!("{{\"value_base64\":\"{}\"}}", base64(e.as_bytes())),
        },
    }
}

pub async fn run_feeds(broker: &Arc<crate::broker::Broker>) {
    let feeds: Vec<(String, String, u32, std::collections::BTreeMap<u32, u64>)> = match broker
        .read(|s, _| {
            Ok(s.feeds()
                .feeds
                .values()
                .filter_map(|f| {
                    let partitions = s.streams().streams.get(&f.stream)?.partitions;
                    Some((
                        f.stream.clone(),
                        f.queue.clone(),
                        partitions,
                        f.offsets.clone(),
                    ))
                })
                .collect())
        })
        .await
    {
        Ok(feeds) => feeds,
        Err(_) => return,
    };
    for (stream, queue, partitions, offsets) in feeds {
        let read = {
            let broker = broker.clone();
            let stream = stream.clone();
            tokio::task::spawn_blocking(move || {
                let mut payloads = Vec::new();
                let mut moved = Vec::new();
                for p in 0..partitions {
                    if payloads.len() >= FEED_BATCH_MAX {
                        break;
                    }
                    let handle = broker.streams.handle(&stream, p)?;
                    let partition = handle.partition.lock();
                    // Only durable records: a job must not come of a record a power cut
                    // could take back.
                    let end = handle.readable_end(&partition);
                    // Retention may have dropped what the feed had not reached.
                    let from = offsets
                        .get(&p)
                        .copied()
                        .unwrap_or(0)
                        .max(partition.earliest_offset());
                    if from >= end {
                        continue;
                    }
                    let (records, next) = partition.read_until(from, FETCH_BYTES_DEFAULT, end)?;
                    let room = FEED_BATCH_MAX - payloads.len();
                    let next = match records.get(room) {
                        // Not all fit: go on after the last taken.
                        Some(&(first_left, _)) => first_left,
                        None => next,
                    };
                    for (_, record) in records.into_iter().take(room) {
                        payloads.push(feed_payload(record.value));
                    }
                    if next > from {
                        moved.push((p, next));
                    }
                }
                Ok::<_, StreamError>((payloads, moved))
            })
            .await
        };
        let (payloads, moved) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                tracing::warn!(stream, queue, %error, "feed cannot read its stream");
                continue;
            }
            Err(_) => continue,
        };
        if moved.is_empty() {
            continue;
        }
        let delivered = broker
            .execute(|s, now| s.deliver_feed(now, &stream, &queue, payloads, moved))
            .await;
        if let Err(error) = delivered {
            tracing::warn!(stream, queue, ?error, "feed cannot deliver");
        }
    }
}

/// `PUT /v1/streams/{stream}/feeds/{queue}`: each record becomes a job of `kind`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedRequest {
    pub kind: String,
    /// `earliest` (default): every record kept; `latest`: only records from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedPartition {
    pub partition: u32,
    /// The next offset to deliver.
    pub next_offset: u64,
    pub latest_offset: u64,
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedInfo {
    pub stream: String,
    pub queue: String,
    pub kind: String,
    pub partitions: Vec<FeedPartition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedList {
    pub feeds: Vec<FeedInfo>,
}

async fn feed_infos(
    app: &AppState,
    stream: &str,
    queue: Option<&str>,
) -> Result<Vec<FeedInfo>, ApiError> {
    let broker = app.broker()?.clone();
    let feeds: Vec<(sluice_core::streams::Feed, u32)> = broker
        .read(|s, _| {
            let partitions = s
                .streams()
                .streams
                .get(stream)
                .map(|spec| spec.partitions)
                .ok_or_else(|| stream_missing(stream))?;
            Ok(s.feeds()
                .feeds
                .values()
                .filter(|f| f.stream == stream && queue.is_none_or(|q| q == f.queue))
                .map(|f| (f.clone(), partitions))
                .collect())
        })
        .await?;
    tokio::task::spawn_blocking(move || {
        feeds
            .into_iter()
            .map(|(feed, partitions)| {
                let parts = (0..partitions)
                    .map(|p| {
                        let handle = broker.streams.handle(&feed.stream, p)?;
                        let partition = handle.partition.lock();
                        let next = feed
                            .offsets
                            .get(&p)
                            .copied()
                            .unwrap_or(0)
                            .max(partition.earliest_offset());
                        let latest = handle.readable_end(&partition);
                        Ok(FeedPartition {
                            partition: p,
                            next_offset: next,
                            latest_offset: latest,
                            lag: latest.saturating_sub(next),
                        })
                    })
                    .collect::<Result<Vec<_>, StreamError>>()?;
                Ok(FeedInfo {
                    stream: feed.stream,
                    queue: feed.queue,
                    kind: feed.kind,
                    partitions: parts,
                })
            })
            .collect::<Result<Vec<_>, StreamError>>()
            .map_err(stream_error)
    })
    .await
    .map_err(blocking_error)?
}

#[utoipa::path(put, path = "/v1/streams/{stream}/feeds/{queue}", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("queue" = String, Path, description = "Queue the jobs go to", pattern = "^[A-Za-z0-9_.:-]{1,128}$")), request_body = FeedRequest, responses((status = 200, body = FeedInfo), (status = 400, description = "bad input", body = sluice_proto::ErrorResponse), (status = 404, body = sluice_proto::ErrorResponse), (status = 429, description = "too many feeds or queues", body = sluice_proto::ErrorResponse)))]
pub async fn set_feed(
    app: axum::extract::State<AppState>,
    Path((stream, queue)): Path<(String, String)>,
    ApiJson(request): ApiJson<FeedRequest>,
) -> Result<Json<FeedInfo>, ApiError> {
    let (spec, _) = spec_of(&app, &stream).await?;
    let latest = match request.from.as_deref() {
        None | Some("earliest") => false,
        Some("latest") => true,
        Some(_) => return Err(ApiError::bad_input("from", "earliest or latest")),
    };
    let start: std::collections::BTreeMap<u32, u64> = if latest {
        let broker = app.broker()?.clone();
        let name = stream.clone();
        tokio::task::spawn_blocking(move || {
            (0..spec.partitions)
                .map(|p| {
                    let handle = broker.streams.handle(&name, p)?;
                    let next = handle.readable_end(&handle.partition.lock());
                    Ok((p, next))
                })
                .collect::<Result<_, StreamError>>()
        })
        .await
        .map_err(blocking_error)?
        .map_err(stream_error)?
    } else {
        Default::default()
    };
    app.broker()?
        .execute(|s, now| s.set_feed(now, &stream, &queue, &request.kind, start))
        .await?;
    let mut infos = feed_infos(&app, &stream, Some(&queue)).await?;
    infos.pop().map(Json).ok_or_else(|| stream_missing(&stream))
}

#[utoipa::path(get, path = "/v1/streams/{stream}/feeds", tag = "streams", params(("stream" = String, Path, description = "Stream name")), responses((status = 200, body = FeedList), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn list_feeds(
    app: axum::extract::State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<FeedList>, ApiError> {
    Ok(Json(FeedList {
        feeds: feed_infos(&app, &stream, None).await?,
    }))
}

#[utoipa::path(delete, path = "/v1/streams/{stream}/feeds/{queue}", tag = "streams", params(("stream" = String, Path, description = "Stream name"), ("queue" = String, Path, description = "Queue")), responses((status = 204, description = "removed; jobs already made stay"), (status = 404, body = sluice_proto::ErrorResponse)))]
pub async fn remove_feed(
    app: axum::extract::State<AppState>,
    Path((stream, queue)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.broker()?
        .execute(|s, _| s.remove_feed(&stream, &queue))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
