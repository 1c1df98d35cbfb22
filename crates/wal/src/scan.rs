//! Read-only analysis of a WAL directory, shared by `Wal::open`, `inspect` and `repair`.
//!
//! The analysis decides, for every file, what open would do with it: use it, truncate its
//! torn tail, remove it (temp files), or refuse to start (everything else).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::format::{
    decode_frame, decode_segment_header, decode_snapshot, is_temp_file_name,
    parse_segment_file_name, parse_snapshot_file_name, Frame, FRAME_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::{io_err, Fs, Lsn, WalError};

/// What kind of problem a file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The last segment ends in a partial or bad frame with no valid frame after it: the
    /// remains of a write that never completed. Open truncates it.
    TornTail,
    /// A bad frame followed by a valid one, a bad frame in a segment that is not the last,
    /// or a frame whose lsn is out of sequence. Open refuses to start.
    CorruptRecord,
    /// A segment header with a bad magic or a first_lsn that differs from its file name.
    BadSegmentHeader,
    /// A segment does not start where the previous one ended (missing or extra segment).
    LsnGap,
    /// The oldest segment starts after the lsn replay has to start from.
    MissingSegments,
    /// A snapshot with a bad magic, length or checksum.
    CorruptSnapshot,
    /// The log ends before the lsn of the snapshot that open would load.
    LogEndsBeforeSnapshot,
    /// A temp file left by a crash during segment or snapshot creation. Open removes it.
    LeftoverTempFile,
}

/// One problem found in a WAL directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub offset: u64,
    pub kind: ProblemKind,
    pub detail: String,
    /// True when `Wal::open` refuses to start because of this problem.
    pub blocks_open: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} offset {}: {:?}: {}{}",
            self.path.display(),
            self.offset,
            self.kind,
            self.detail,
            if self.blocks_open {
                " (open fails)"
            } else {
                ""
            }
        )
    }
}

/// Files of a WAL directory, sorted by lsn.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub segments: Vec<(Lsn, PathBuf)>,
    pub snapshots: Vec<(Lsn, PathBuf)>,
    pub temps: Vec<PathBuf>,
}

pub(crate) fn list_dir(fs: &dyn Fs, dir: &Path) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    for name in fs.list(dir).map_err(io_err(dir))? {
        let name = name.as_str();
        let path = dir.join(name);
        if let Some(lsn) = parse_segment_file_name(name) {
            listing.segments.push((lsn, path));
        } else if let Some(lsn) = parse_snapshot_file_name(name) {
            listing.snapshots.push((lsn, path));
        } else if is_temp_file_name(name) {
            listing.temps.push(path);
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    listing.temps.sort();
    Ok(listing)
}

/// Where a segment's valid frames stop, and why.
#[derive(Clone, Debug)]
pub(crate) struct SegmentProblem {
    pub offset: u64,
    pub kind: ProblemKind,
    pub detail: String,
    /// Valid frames found after the problem (records that truncation would drop).
    pub records_after: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct SegmentScan {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub file_bytes: u64,
    pub records: u64,
    /// Offset just past the last valid, in-sequence frame.
    pub valid_bytes: u64,
    pub problem: Option<SegmentProblem>,
}

impl SegmentScan {
    pub fn end_lsn(&self) -> Lsn {
        self.first_lsn + self.records
    }
}

/// Scans one segment. `is_last` decides whether a bad tail counts as torn or corrupt.
pub(crate) fn scan_segment(path: &Path, name_lsn: Lsn, bytes: &[u8], is_last: bool) -> SegmentScan {
    let mut scan = SegmentScan {
        path: path.to_path_buf(),
        first_lsn: name_lsn,
        file_bytes: bytes.len() as u64,
        records: 0,
        valid_bytes: 0,
        problem: None,
    };
    match decode_segment_header(bytes) {
        Ok(lsn) if lsn == name_lsn => {}
        Ok(lsn) => {
            scan.problem = Some(SegmentProblem {
                offset: 8,
                kind: ProblemKind::BadSegmentHeader,
                detail: format!("header says first lsn {lsn}, file name says {name_lsn}"),
                records_after: 0,
            });
            return scan;
        }
        Err(detail) => {
            scan.problem = Some(SegmentProblem {
                offset: 0,
                kind: ProblemKind::BadSegmentHeader,
                detail,
                records_after: 0,
            });
            return scan;
        }
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected = name_lsn;
    while offset < bytes.len() {
        let (kind, detail) = match decode_frame(&bytes[offset..]) {
            // Lsn::MAX is never appended (the next lsn would not fit): a frame claiming it
            // comes from a corrupt or forged segment name and header.
            Frame::Valid {
                lsn, frame_bytes, ..
            } if lsn == expected && lsn != Lsn::MAX => {
                expected += 1;
                offset += frame_bytes;
                continue;
            }
            Frame::Valid { lsn, .. } if lsn == expected => (
                ProblemKind::CorruptRecord,
                format!("frame has lsn {lsn}, past the last usable lsn"),
            ),
            Frame::Valid { lsn, .. } => (
                ProblemKind::CorruptRecord,
                format!("frame has lsn {lsn} where lsn {expected} was expected"),
            ),
            Frame::Partial { reason } | Frame::Bad { reason } => {
                match next_valid_frame(bytes, offset + 1, expected) {
                    Some(next) => (
                        ProblemKind::CorruptRecord,
                        format!(
                            "{reason} at lsn {expected}, followed by a valid frame at offset {next}"
                        ),
                    ),
                    None if is_last => (
                        ProblemKind::TornTail,
                        format!(
                            "{reason} at lsn {expected}; no valid frame follows ({} bytes to drop)",
                            bytes.len() - offset
                        ),
                    ),
                    None => (
                        ProblemKind::CorruptRecord,
                        format!("{reason} at lsn {expected} in a segment that is not the last"),
                    ),
                }
            }
        };
        scan.problem = Some(SegmentProblem {
            offset: offset as u64,
            kind,
            detail,
            records_after: count_valid_frames(bytes, offset + 1, expected),
        });
        break;
    }
    scan.records = expected - name_lsn;
    scan.valid_bytes = offset as u64;
    scan
}

/// Finds the next offset >= `from` holding a frame that verifies and whose lsn is plausible
/// (at least `min_lsn`, and not further ahead than the remaining bytes could hold).
fn next_valid_frame(bytes: &[u8], from: usize, min_lsn: Lsn) -> Option<usize> {
    let mut offset = from;
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        let mut lsn_bytes = [0u8; 8];
        lsn_bytes.copy_from_slice(&bytes[offset + 8..offset + 16]);
        let lsn = u64::from_le_bytes(lsn_bytes);
        let frames_max = ((bytes.len() - offset) / FRAME_HEADER_BYTES) as u64;
        // The cheap plausibility test first, so a resync over garbage stays linear.
        if lsn >= min_lsn && lsn - min_lsn <= frames_max {
            if let Frame::Valid { .. } = decode_frame(&bytes[offset..]) {
                return Some(offset);
            }
        }
        offset += 1;
    }
    None
}

fn count_valid_frames(bytes: &[u8], from: usize, min_lsn: Lsn) -> u64 {
    let mut count = 0;
    let mut search_from = from;
    while let Some(mut offset) = next_valid_frame(bytes, search_from, min_lsn) {
        while let Frame::Valid { frame_bytes, .. } = decode_frame(&bytes[offset..]) {
            count += 1;
            offset += frame_bytes;
        }
        search_from = offset + 1;
    }
    count
}

#[derive(Clone, Debug)]
pub(crate) struct SnapshotScan {
    pub path: PathBuf,
    pub lsn: Lsn,
    pub body_bytes: u64,
    pub problem: Option<(u64, String)>,
}

pub(crate) fn scan_snapshot(
    fs: &dyn Fs,
    path: &Path,
    name_lsn: Lsn,
) -> Result<SnapshotScan, WalError> {
    let bytes = fs.read(path).map_err(io_err(path))?;
    let problem = match decode_snapshot(&bytes) {
        Ok((lsn, _)) if lsn != name_lsn => Some((
            8,
            format!("snapshot header says lsn {lsn}, file name says {name_lsn}"),
        )),
        Ok(_) => None,
        Err(problem) => Some(problem),
    };
    Ok(SnapshotScan {
        path: path.to_path_buf(),
        lsn: name_lsn,
        body_bytes: bytes
            .len()
            .saturating_sub(crate::format::SNAPSHOT_HEADER_BYTES) as u64,
        problem,
    })
}

/// Everything open needs to know before it changes or replays anything.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub listing: Listing,
    pub snapshots: Vec<SnapshotScan>,
    pub segments: Vec<SegmentScan>,
    /// The snapshot open would load (index into `snapshots`).
    pub chosen_snapshot: Option<usize>,
    pub problems: Vec<Problem>,
}

impl Analysis {
    pub fn first_blocking(&self) -> Option<&Problem> {
        self.problems.iter().find(|problem| problem.blocks_open)
    }

    pub fn snapshot_lsn(&self) -> Option<Lsn> {
        self.chosen_snapshot.map(|index| self.snapshots[index].lsn)
    }
}

pub(crate) fn analyze(fs: &dyn Fs, dir: &Path) -> Result<Analysis, WalError> {
    let listing = list_dir(fs, dir)?;
    let mut problems = Vec::new();
    for temp in &listing.temps {
        problems.push(Problem {
            path: temp.clone(),
            offset: 0,
            kind: ProblemKind::LeftoverTempFile,
            detail: "temp file of an unfinished create; open removes it".to_string(),
            blocks_open: false,
        });
    }

    let mut segments = Vec::with_capacity(listing.segments.len());
    for (index, (lsn, path)) in listing.segments.iter().enumerate() {
        let bytes = fs.read(path).map_err(io_err(path))?;
        let is_last = index + 1 == listing.segments.len();
        segments.push(scan_segment(path, *lsn, &bytes, is_last));
    }
    // Only the first break in the chain matters: everything after it is unreachable.
    let mut chain_broken = false;
    for index in 0..segments.len() {
        let segment = &segments[index];
        if index > 0 && !chain_broken {
            let previous_end = segments[index - 1].end_lsn();
            if segment.first_lsn != previous_end {
                chain_broken = true;
                problems.push(Problem {
                    path: segment.path.clone(),
                    offset: 0,
                    kind: ProblemKind::LsnGap,
                    detail: format!(
                        "segment starts at lsn {}, previous segment ends at lsn {previous_end}",
                        segment.first_lsn
                    ),
                    blocks_open: true,
                });
            }
        }
        if let Some(problem) = &segment.problem {
            let torn = problem.kind == ProblemKind::TornTail;
            problems.push(Problem {
                path: segment.path.clone(),
                offset: problem.offset,
                kind: problem.kind,
                detail: problem.detail.clone(),
                blocks_open: !torn || chain_broken,
            });
            if !torn {
                chain_broken = true;
            }
        }
    }

    let mut snapshots = Vec::with_capacity(listing.snapshots.len());
    for (lsn, path) in &listing.snapshots {
        snapshots.push(scan_snapshot(fs, path, *lsn)?);
    }

    // Newest valid snapshot whose segments are all present; "no snapshot" needs lsn 0.
    let first_segment_lsn = segments.first().map(|segment| segment.first_lsn);
    let usable = |lsn: Lsn| first_segment_lsn.is_some_and(|first| first <= lsn);
    let mut chosen_snapshot = None;
    let mut found = false;
    for (index, snapshot) in snapshots.iter().enumerate().rev() {
        if snapshot.problem.is_none() && usable(snapshot.lsn) {
            chosen_snapshot = Some(index);
            found = true;
            break;
        }
    }
    if !found && (usable(0) || (segments.is_empty() && snapshots.is_empty())) {
        found = true;
    }
    let chosen_lsn = chosen_snapshot.map(|index| snapshots[index].lsn);
    for snapshot in &snapshots {
        if let Some((offset, reason)) = &snapshot.problem {
            let newer_than_chosen = !matches!(chosen_lsn, Some(lsn) if snapshot.lsn <= lsn);
            let detail = if !newer_than_chosen {
                format!("{reason}; older than the snapshot in use, ignored")
            } else if found {
                format!(
                    "{reason}; open falls back to {} and replays the log from there",
                    chosen_lsn.map_or("no snapshot".to_string(), |lsn| format!("snapshot {lsn}"))
                )
            } else {
                format!("{reason}; no older snapshot has all its segments, state cannot be rebuilt")
            };
            problems.push(Problem {
                path: snapshot.path.clone(),
                offset: *offset,
                kind: ProblemKind::CorruptSnapshot,
                detail,
                blocks_open: !found,
            });
        }
    }
    if !found && !snapshots.iter().any(|snapshot| snapshot.problem.is_some()) {
        let needed = snapshots.last().map_or(0, |snapshot| snapshot.lsn);
        let path = segments
            .first()
            .map_or_else(|| dir.to_path_buf(), |segment| segment.path.clone());
        problems.push(Problem {
            path,
            offset: 0,
            kind: ProblemKind::MissingSegments,
            detail: match first_segment_lsn {
                Some(first) => format!(
                    "oldest segment starts at lsn {first}, replay must start at lsn {needed}"
                ),
                None => format!("no segment files, replay must start at lsn {needed}"),
            },
            blocks_open: true,
        });
    }
    if let (Some(snapshot_lsn), Some(last)) = (chosen_lsn, segments.last()) {
        if !chain_broken && last.end_lsn() < snapshot_lsn {
            problems.push(Problem {
                path: last.path.clone(),
                offset: last.valid_bytes,
                kind: ProblemKind::LogEndsBeforeSnapshot,
                detail: format!(
                    "log ends at lsn {}, before snapshot lsn {snapshot_lsn}",
                    last.end_lsn()
                ),
                blocks_open: true,
            });
        }
    }
    Ok(Analysis {
        listing,
        snapshots,
        segments,
        chosen_snapshot,
        problems,
    })
}
