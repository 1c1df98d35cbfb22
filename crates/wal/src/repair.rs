//! Offline inspection and repair for `sluice repair`. Neither needs the log to be open, and
//! neither may run while a `Wal` is open on the same directory.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::scan::{analyze, Problem, ProblemKind};
use crate::{fsync_dir, io_err, Fs, Lsn, RealFs, WalError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    /// Valid, in-sequence records from the start of the segment.
    pub records: u64,
    pub file_bytes: u64,
    /// Offset just past the last valid record.
    pub valid_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub lsn: Lsn,
    pub body_bytes: u64,
    pub valid: bool,
}

/// What is in a WAL directory and everything wrong with it. Changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectReport {
    pub dir: PathBuf,
    pub segments: Vec<SegmentInfo>,
    pub snapshots: Vec<SnapshotInfo>,
    pub temp_files: Vec<PathBuf>,
    /// The snapshot open would load.
    pub snapshot_lsn: Option<Lsn>,
    /// Every problem, in file order. Empty means the directory is clean.
    pub problems: Vec<Problem>,
}

impl InspectReport {
    /// True when `Wal::open` would succeed (possibly after truncating a torn tail).
    pub fn opens(&self) -> bool {
        !self.problems.iter().any(|problem| problem.blocks_open)
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "write-ahead log at {}", self.dir.display())?;
        for snapshot in &self.snapshots {
            writeln!(
                f,
                "  snapshot {} lsn {} body {} bytes{}",
                snapshot.path.display(),
                snapshot.lsn,
                snapshot.body_bytes,
                if snapshot.valid { "" } else { " (corrupt)" }
            )?;
        }
        for segment in &self.segments {
            writeln!(
                f,
                "  segment {} lsn {}..{} ({} records, {} of {} bytes valid)",
                segment.path.display(),
                segment.first_lsn,
                segment.first_lsn + segment.records,
                segment.records,
                segment.valid_bytes,
                segment.file_bytes
            )?;
        }
        if self.problems.is_empty() {
            writeln!(f, "  no problems found")?;
        }
        for problem in &self.problems {
            writeln!(f, "  problem: {problem}")?;
        }
        Ok(())
    }
}

/// Scans `dir` without changing anything.
pub fn inspect(dir: &Path) -> Result<InspectReport, WalError> {
    inspect_in(&RealFs, dir)
}

/// [`inspect`] on the given file system.
pub fn inspect_in(fs: &dyn Fs, dir: &Path) -> Result<InspectReport, WalError> {
    Ok(inspect_from(dir, &analyze(fs, dir)?))
}

/// One change `repair` makes (or would make, in a dry run).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairAction {
    RemoveTempFile {
        path: PathBuf,
    },
    /// Cut the segment at `offset`, the start of the first bad frame.
    TruncateSegment {
        path: PathBuf,
        offset: u64,
        bytes_dropped: u64,
        records_dropped: u64,
    },
    /// Remove a whole segment that follows the cut.
    RemoveSegment {
        path: PathBuf,
        bytes_dropped: u64,
        records_dropped: u64,
    },
    /// Remove a corrupt snapshot that open would skip anyway.
    RemoveCorruptSnapshot {
        path: PathBuf,
    },
}

impl fmt::Display for RepairAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairAction::RemoveTempFile { path } => {
                write!(f, "remove leftover temp file {}", path.display())
            }
            RepairAction::TruncateSegment { path, offset, bytes_dropped, records_dropped } => write!(
                f,
                "truncate {} at offset {offset}: drop {bytes_dropped} bytes holding {records_dropped} intact records",
                path.display()
            ),
            RepairAction::RemoveSegment { path, bytes_dropped, records_dropped } => write!(
                f,
                "remove {}: drop {bytes_dropped} bytes holding {records_dropped} intact records",
                path.display()
            ),
            RepairAction::RemoveCorruptSnapshot { path } => {
                write!(f, "remove corrupt snapshot {}", path.display())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The directory as found, before any change.
    pub before: InspectReport,
    pub actions: Vec<RepairAction>,
    /// Intact records that the actions drop: valid frames after the cut, which can no
    /// longer be replayed because a record before them is lost.
    pub records_dropped: u64,
    pub bytes_dropped: u64,
    /// The log after the repair ends here (the next lsn open would assign).
    pub next_lsn_after: Option<Lsn>,
    /// Problems repair cannot fix; when not empty nothing is changed.
    pub unfixable: Vec<Problem>,
    /// True when the actions were carried out.
    pub applied: bool,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.before)?;
        for action in &self.actions {
            writeln!(
                f,
                "  {}{action}",
                if self.applied { "did: " } else { "would: " }
            )?;
        }
        writeln!(
            f,
            "  {} {} records and {} bytes",
            if self.applied {
                "dropped"
            } else {
                "would drop"
            },
            self.records_dropped,
            self.bytes_dropped
        )?;
        for problem in &self.unfixable {
            writeln!(f, "  cannot fix: {problem}")?;
        }
        Ok(())
    }
}

/// Plans (and with `apply`, carries out) the smallest change after which `Wal::open`
/// succeeds: cut the log at the first bad record and remove every later segment. A dry run
/// (`apply == false`) changes nothing.
pub fn repair(dir: &Path, apply: bool) -> Result<RepairReport, WalError> {
    repair_in(&RealFs, dir, apply)
}

/// [`repair`] on the given file system.
pub fn repair_in(fs: &dyn Fs, dir: &Path, apply: bool) -> Result<RepairReport, WalError> {
    let analysis = analyze(fs, dir)?;
    let before = inspect_from(dir, &analysis);
    let mut actions = Vec::new();
    let mut unfixable = Vec::new();
    for temp in &analysis.listing.temps {
        actions.push(RepairAction::RemoveTempFile { path: temp.clone() });
    }

    // The cut: the first segment problem or lsn gap, in log order.
    let mut cut_done = false;
    let mut next_lsn_after = None;
    for (index, segment) in analysis.segments.iter().enumerate() {
        if cut_done {
            actions.push(RepairAction::RemoveSegment {
                path: segment.path.clone(),
                bytes_dropped: segment.file_bytes,
                records_dropped: segment.records
                    + segment
                        .problem
                        .as_ref()
                        .map_or(0, |problem| problem.records_after),
            });
            continue;
        }
        let gap = index > 0 && segment.first_lsn != analysis.segments[index - 1].end_lsn();
        let header_bad = segment
            .problem
            .as_ref()
            .is_some_and(|problem| problem.kind == ProblemKind::BadSegmentHeader);
        if gap || (header_bad && index > 0) {
            cut_done = true;
            next_lsn_after = Some(analysis.segments[index - 1].end_lsn());
            actions.push(RepairAction::RemoveSegment {
                path: segment.path.clone(),
                bytes_dropped: segment.file_bytes,
                records_dropped: segment.records
                    + segment
                        .problem
                        .as_ref()
                        .map_or(0, |problem| problem.records_after),
            });
        } else if header_bad {
            if let Some(problem) = analysis
                .problems
                .iter()
                .find(|problem| problem.path == segment.path)
            {
                unfixable.push(problem.clone());
            }
            cut_done = true;
        } else if let Some(problem) = &segment.problem {
            cut_done = true;
            next_lsn_after = Some(segment.end_lsn());
            actions.push(RepairAction::TruncateSegment {
                path: segment.path.clone(),
                offset: problem.offset,
                bytes_dropped: segment.file_bytes - problem.offset,
                records_dropped: problem.records_after,
            });
        } else {
            next_lsn_after = Some(segment.end_lsn());
        }
    }

    for problem in &analysis.problems {
        match problem.kind {
            ProblemKind::CorruptSnapshot if !problem.blocks_open => {
                actions.push(RepairAction::RemoveCorruptSnapshot {
                    path: problem.path.clone(),
                });
            }
            ProblemKind::CorruptSnapshot | ProblemKind::MissingSegments => {
                unfixable.push(problem.clone());
            }
            _ => {}
        }
    }
    if let (Some(snapshot_lsn), Some(end)) = (analysis.snapshot_lsn(), next_lsn_after) {
        if end < snapshot_lsn {
            unfixable.push(Problem {
                path: dir.to_path_buf(),
                offset: 0,
                kind: ProblemKind::LogEndsBeforeSnapshot,
                detail: format!(
                    "after the cut the log would end at lsn {end}, before snapshot lsn {snapshot_lsn}"
                ),
                blocks_open: true,
            });
        }
    }

    let (records_dropped, bytes_dropped) =
        actions
            .iter()
            .fold((0, 0), |(records, bytes), action| match action {
                RepairAction::TruncateSegment {
                    bytes_dropped,
                    records_dropped,
                    ..
                }
                | RepairAction::RemoveSegment {
                    bytes_dropped,
                    records_dropped,
                    ..
                } => (records + records_dropped, bytes + bytes_dropped),
                _ => (records, bytes),
            });

    let applied = apply && unfixable.is_empty();
    if applied {
        // Later segments first, so a crash part way never leaves a gap before good data.
        for action in actions.iter().rev() {
            match action {
                RepairAction::RemoveTempFile { path }
                | RepairAction::RemoveSegment { path, .. }
                | RepairAction::RemoveCorruptSnapshot { path } => {
                    fs.remove_file(path).map_err(io_err(path))?;
                }
                RepairAction::TruncateSegment { path, offset, .. } => {
                    fs.truncate(path, *offset).map_err(io_err(path))?;
                }
            }
            tracing::warn!("repair: {action}");
        }
        if !actions.is_empty() {
            fsync_dir(fs, dir)?;
        }
    }
    Ok(RepairReport {
        before,
        actions,
        records_dropped,
        bytes_dropped,
        next_lsn_after,
        unfixable,
        applied,
    })
}

fn inspect_from(dir: &Path, analysis: &crate::scan::Analysis) -> InspectReport {
    InspectReport {
        dir: dir.to_path_buf(),
        segments: analysis
            .segments
            .iter()
            .map(|segment| SegmentInfo {
                path: segment.path.clone(),
                first_lsn: segment.first_lsn,
                records: segment.records,
                file_bytes: segment.file_bytes,
                valid_bytes: segment.valid_bytes,
            })
            .collect(),
        snapshots: analysis
            .snapshots
            .iter()
            .map(|snapshot| SnapshotInfo {
                path: snapshot.path.clone(),
                lsn: snapshot.lsn,
                body_bytes: snapshot.body_bytes,
                valid: snapshot.problem.is_none(),
            })
            .collect(),
        temp_files: analysis.listing.temps.clone(),
        snapshot_lsn: analysis.snapshot_lsn(),
        problems: analysis.problems.clone(),
    }
}
