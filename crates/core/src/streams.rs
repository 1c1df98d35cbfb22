//! Streams as the log records them: each stream's name, partition count and retention.
//! The records themselves live in partition files (`sluice-stream`), not in the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_proto::limits;

use crate::error::{CoreError, Detail, ErrorKind};
use crate::Millis;

/// Streams that may exist.
pub const STREAMS_MAX: usize = 1_000;
/// Partitions of one stream.
pub const PARTITIONS_MAX: u32 = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    pub name: String,
    pub partitions: u32,
    /// Records older than this go (whole segments at a time); `None` keeps them.
    pub retention_ms: Option<u64>,
    /// Each partition is kept under this many bytes (whole segments); `None`: no bound.
    pub retention_bytes: Option<u64>,
    pub created_at: Millis,
}

impl StreamSpec {
    pub fn check(&self) -> Vec<Detail> {
        let mut details = Vec::new();
        if !limits::is_valid_name(&self.name, limits::QUEUE_NAME_BYTES_MAX) {
            details.push(Detail {
                path: "name".into(),
                message: "1 to 128 bytes of A-Z a-z 0-9 _ . : -".into(),
            });
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            details.push(Detail {
                path: "partitions".into(),
                message: format!("must be 1 to {PARTITIONS_MAX}"),
            });
        }
        if self.retention_ms == Some(0) || self.retention_bytes == Some(0) {
            details.push(Detail {
                path: "retention".into(),
                message: "a retention of 0 would keep nothing: leave it out to keep all".into(),
            });
        }
        details
    }
}

/// Compaction by key of a stream's partitions (see `sluice_stream::Partition::compact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// A key's newest tombstone is kept this long (by its timestamp), then removed.
    pub tombstone_retention_ms: u64,
}

/// How long a tombstone may be kept at most: a year.
pub const TOMBSTONE_RETENTION_MS_MAX: u64 = 366 * 86_400_000;

impl Compaction {
    pub fn check(&self) -> Vec<Detail> {
        if self.tombstone_retention_ms > TOMBSTONE_RETENTION_MS_MAX {
            return vec![Detail {
                path: "compaction.tombstone_retention_ms".into(),
                message: format!("at most {TOMBSTONE_RETENTION_MS_MAX}"),
            }];
        }
        Vec::new()
    }
}

/// The streams with compaction on (a snapshot section of its own, added after streams).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compactions {
    pub streams: BTreeMap<String, Compaction>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    pub streams: BTreeMap<String, StreamSpec>,
}

impl Streams {
    pub fn too_many(&self, name: &str) -> Option<CoreError> {
        (!self.streams.contains_key(name) && self.streams.len() >= STREAMS_MAX).then(|| {
            CoreError::new(
                ErrorKind::Limit,
                "too_many_streams",
                format!("at most {STREAMS_MAX} streams may exist"),
            )
        })
    }
}

/// A consumer group's durable part: its generation and committed offsets. Membership
/// and assignment are the server's (members rejoin after a restart); the generation is
/// logged so that a member of an older one is refused, even across a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub generation: u64,
    /// Committed offsets: the next offset to read, per partition.
    pub offsets: BTreeMap<u32, u64>,
}

/// Consumer groups by `(stream, group)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    pub groups: BTreeMap<(String, String), GroupState>,
}

/// Consumer groups per stream that may exist.
pub const GROUPS_PER_STREAM_MAX: usize = 1_000;

/// A stream feeding a queue: each record becomes a job of `kind` in `queue`, its payload
/// the record's value. Delivery and progress are one logged event, so each record
/// becomes exactly one job, across crashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    pub stream: String,
    pub queue: String,
    pub kind: String,
    pub created_at: Millis,
    /// The next offset to deliver, per partition (absent: from the start).
    pub offsets: BTreeMap<u32, u64>,
}

/// Feeds by `(stream, queue)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feeds {
    pub feeds: BTreeMap<(String, String), Feed>,
}

/// Feeds that may exist.
pub const FEEDS_MAX: usize = 1_000;
