//! `sluice-wal`: a segmented, checksummed, append-only log of opaque records with group
//! commit, crash recovery, snapshots and an offline inspect/repair tool. It must not know
//! what the records mean (no jobs, queues or events): it stores and replays bytes.
//!
//! The on-disk format and the durability contract are specified in
//! `docs/design/wal-format.md`.

mod format;
mod fs;
mod repair;
mod scan;
mod wal;

#[cfg(test)]
mod tests;

/// Entry points for the fuzz targets in `fuzz/` (see `docs/reliability.md`, "Fuzzing"):
/// the pure decoders and the segment scan, without a directory. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::format::{
        decode_frame, decode_segment_header, decode_snapshot, encode_frame, encode_segment_header,
        encode_snapshot_header, Frame,
    };
    use crate::{Lsn, ProblemKind};

    /// What [`scan_segment`] found in one segment's bytes.
    #[derive(Clone, Debug)]
    pub struct SegmentSummary {
        pub records: u64,
        /// Offset just past the last valid, in-sequence frame.
        pub valid_bytes: u64,
        /// `(offset, kind, valid frames after it)` of the first problem.
        pub problem: Option<(u64, ProblemKind, u64)>,
    }

    /// Scans `bytes` as the segment named `first_lsn`, as `Wal::open` does.
    pub fn scan_segment(first_lsn: Lsn, bytes: &[u8], is_last: bool) -> SegmentSummary {
        let scan =
            crate::scan::scan_segment(std::path::Path::new("fuzz.wal"), first_lsn, bytes, is_last);
        SegmentSummary {
            records: scan.records,
            valid_bytes: scan.valid_bytes,
            problem: scan
                .problem
                .map(|problem| (problem.offset, problem.kind, problem.records_after)),
        }
    }
}

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use format::{
    parse_snapshot_file_name, FRAME_HEADER_BYTES, RECORD_BYTES_MAX, SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC,
};
pub use fs::{Cut, Fs, FsFile, RealFs, SimFs};
pub use repair::{
    inspect, inspect_in, repair, repair_in, InspectReport, RepairAction, RepairReport, SegmentInfo,
    SnapshotInfo,
};
pub use scan::{Problem, ProblemKind};
pub use wal::{Wal, WalStats, FSYNC_BUCKETS_US};

/// Log sequence number: records are numbered from 0 with no gaps.
pub type Lsn = u64;

/// Default for [`WalOptions::segment_bytes_max`]: large enough that rolls are rare, small
/// enough that a snapshot frees disk space soon after it is written.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// When appended records are fsynced. See `docs/design/wal-format.md` for what each may lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A record is durable once it is fdatasync'd; one fdatasync covers every record
    /// appended while the previous one ran (group commit).
    Always,
    /// A record is durable once written to the OS; the writer fdatasyncs every
    /// `interval_ms` if anything was written since the last fdatasync.
    Batch { interval_ms: u64 },
    /// A record is durable once written to the OS; fdatasync only at roll, snapshot and close.
    Never,
}

/// How to open a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    pub dir: PathBuf,
    /// A segment is rolled at the first batch boundary once it holds at least this many bytes.
    pub segment_bytes_max: u64,
    pub fsync: FsyncPolicy,
    /// Where the files live: [`RealFs`], or a [`SimFs`] in tests.
    pub fs: Arc<dyn Fs>,
}

impl WalOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            fsync: FsyncPolicy::Always,
            fs: Arc::new(RealFs),
        }
    }
}

/// What [`Wal::open`] hands to its callback, in order: at most one snapshot, then records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replayed<'a> {
    /// The state as of `lsn`: it covers every record with a smaller lsn.
    Snapshot {
        lsn: Lsn,
        bytes: &'a [u8],
    },
    Record {
        lsn: Lsn,
        bytes: &'a [u8],
    },
}

/// A torn tail that open cut off the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedTail {
    pub path: PathBuf,
    /// The file now ends here (just after the last good record).
    pub offset: u64,
    pub bytes_dropped: u64,
}

/// What [`Wal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    pub snapshot_lsn: Option<Lsn>,
    pub records_replayed: u64,
    pub next_lsn: Lsn,
    pub truncated_tail: Option<TruncatedTail>,
    /// Segment files in use after recovery.
    pub segments: usize,
}

#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum WalError {
    #[error("write-ahead log I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "write-ahead log is corrupt: {} at offset {offset}: {reason}; run `sluice repair --data-dir <dir>` to inspect",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("write-ahead log is poisoned by an earlier write or fsync error; restart to recover")]
    Poisoned,
    #[error("write-ahead log is closed")]
    Closed,
    #[error("record of {len} bytes exceeds the limit of {limit} bytes", limit = RECORD_BYTES_MAX)]
    RecordTooLarge { len: usize },
    #[error("replay failed at lsn {lsn}: {message}")]
    Replay { lsn: Lsn, message: String },
    #[error("snapshot lsn {lsn} is ahead of the next lsn {next_lsn}")]
    SnapshotLsnAhead { lsn: Lsn, next_lsn: Lsn },
    #[error("lsn {lsn} has not been appended (the next lsn is {next_lsn})")]
    LsnNotAppended { lsn: Lsn, next_lsn: Lsn },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a directory's entries (creates, renames, deletes) durable.
pub(crate) fn fsync_dir(fs: &dyn Fs, dir: &Path) -> Result<(), WalError> {
    fs.sync_dir(dir).map_err(io_err(dir))
}
