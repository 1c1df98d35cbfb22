//! One partition: segment files of record batches with sparse offset and time indexes,
//! torn-tail recovery, reads by offset and by time, and retention by age and size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{self, Bad, BatchHeader, Record, BATCH_HEADER_BYTES};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is damaged at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("offset {offset} is before the earliest kept, {earliest}")]
    OffsetOutOfRange { offset: u64, earliest: u64 },
    #[error("a batch needs at least one record")]
    EmptyBatch,
    #[error("not a valid record batch: {0}")]
    BadBatch(String),
    /// A sync of the partition failed: what it held may not be on disk, so the partition
    /// takes no more writes (a later sync could report success for pages the kernel
    /// already dropped) until it is opened again.
    #[error("the partition takes no writes after a failed sync: {0}")]
    Poisoned(String),
    #[error("producer {producer_id} sent sequence {sequence}, but it is already at {last}")]
    SequenceTooOld {
        producer_id: u64,
        sequence: u32,
        last: u32,
    },
}

/// Where an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    /// The producer's batch of this sequence was already here: nothing was written, and
    /// `base_offset` is where the first copy went.
    pub duplicate: bool,
}

/// About how many bytes of whole batches `read_encoded` puts in one chunk: small enough
/// that no fetch needs one large block (a 16 MiB fetch is 16 chunks), which allocators
/// serve from fresh pages (jemalloc hands blocks of 8 MiB and more back at once).
pub const ENCODED_CHUNK_BYTES: usize = 1024 * 1024;

/// The last batch each idempotent producer wrote: `(sequence, base offset)`.
type Producers = std::collections::HashMap<u64, (u32, u64)>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StreamError + '_ {
    move |source| StreamError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A batch as read: its header, its records with their offsets, and its bytes.
type ReadBatch<'a> = (BatchHeader, Vec<(u64, Record)>, &'a [u8]);

/// The batches of a segment's bytes, decoded, with each one's bytes.
fn batches<'a>(
    path: &'a Path,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<ReadBatch<'a>, StreamError>> + 'a {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        if position >= bytes.len() {
            return None;
        }
        let at = position;
        match batch::decode(&bytes[at..]) {
            Ok((header, records)) => {
                position += header.bytes;
                Some(Ok((header, records, &bytes[at..at + header.bytes])))
            }
            Err(e) => {
                position = bytes.len();
                Some(Err(StreamError::Corrupt {
                    path: path.to_owned(),
                    position: at as u64,
                    reason: format!("{e:?}"),
                }))
            }
        }
    })
}

/// The layout version of a partition's files, in its `FORMAT` file. Version 1 (batches
/// without record offset deltas) had no `FORMAT` file; its segments are refused rather
/// than misread (a misread tail would be cut off as torn).
const FORMAT: &str = "sluice-stream 2\n";

/// Writes `FORMAT` in a new partition directory, before any segment; refuses a directory
/// whose segments were written without it.
fn check_format(dir: &Path) -> Result<(), StreamError> {
    let path = dir.join("FORMAT");
    let has_segments = || -> Result<bool, StreamError> {
        Ok(fs::read_dir(dir).map_err(io_err(dir))?.flatten().any(|e| {
            e.path().extension().is_some_and(|x| x == "log")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        }))
    };
    match fs::read_to_string(&path) {
        Ok(text) if text == FORMAT => Ok(()),
        // A crash while the file was first written, before any record: start again.
        Ok(text) if FORMAT.starts_with(text.as_str()) && !has_segments()? => write_format(dir),
        Ok(text) => Err(StreamError::Corrupt {
            path,
            position: 0,
            reason: format!(
                "unknown stream format {:?} (this build writes {FORMAT:?})",
                text.trim()
            ),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if has_segments()? {
                return Err(StreamError::Corrupt {
                    path: dir.to_owned(),
                    position: 0,
                    reason: "segments written by an earlier build (stream format 1, before \
                             record offset deltas); this build does not read them"
                        .into(),
                });
            }
            write_format(dir)
        }
        Err(error) => Err(io_err(&path)(error)),
    }
}

/// Writes `FORMAT` whole or not at all: a synced temporary file renamed into place.
fn write_format(dir: &Path) -> Result<(), StreamError> {
    let temporary = dir.join("FORMAT.tmp");
    let mut file = File::create(&temporary).map_err(io_err(&temporary))?;
    file.write_all(FORMAT.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&temporary))?;
    let path = dir.join("FORMAT");
    fs::rename(&temporary, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// What a compaction will read (`Partition::plan_compaction`).
pub struct CompactionPlan {
    /// `(base offset, path, length)` of each segment, oldest first; the last is the
    /// active one, read only up to the length it had.
    segments: Vec<(u64, PathBuf, u64)>,
    /// The base offset of each idempotent producer's last batch.
    producer_last: std::collections::HashSet<u64>,
    index_interval_bytes: u64,
}

/// A closed segment rewritten by a compaction, beside the one it replaces.
pub struct Rewrite {
    base_offset: u64,
    /// The rewrite, written and synced.
    cleaned: PathBuf,
    /// The rewrite as a segment (length, offsets, indexes), scanned from what was written.
    segment: Segment,
    removed: u64,
    bytes_before: u64,
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>, StreamError> {
    let mut bytes = fs::read(path).map_err(io_err(path))?;
    bytes.truncate(len as usize);
    Ok(bytes)
}

impl CompactionPlan {
    /// Reads the segments and writes the rewrite of each closed one that loses records
    /// (see `Partition::compact`). Touches no segment: the partition can be appended to
    /// and read meanwhile.
    ///
    /// Each rewrite is handed to `apply` as soon as it is written (the caller swaps it in,
    /// `Partition::apply_rewrite`), so at most one segment's rewrite is held at a time.
    pub fn run(
        &self,
        now_ms: i64,
        tombstone_retention_ms: u64,
        mut apply: impl FnMut(Rewrite) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        let mut latest: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        for (_, path, len) in &self.segments {
            let bytes = read_prefix(path, *len)?;
            for item in batches(path, &bytes) {
                let (_, records, _) = item?;
                for (offset, record) in records {
                    if let Some(key) = record.key {
                        latest.insert(key, offset);
                    }
                }
            }
        }
        let expired_before = now_ms.saturating_sub(tombstone_retention_ms as i64);
        for (base_offset, path, len) in &self.segments[..self.segments.len() - 1] {
            let bytes = read_prefix(path, *len)?;
            let mut rewritten = Vec::with_capacity(bytes.len());
            let mut removed = 0u64;
            let mut all: Vec<_> = batches(path, &bytes).collect::<Result<_, _>>()?;
            let last = all.len().saturating_sub(1);
            for (b, (header, records, raw)) in all.drain(..).enumerate() {
                let total = records.len();
                let kept: Vec<(u32, Record)> = records
                    .into_iter()
                    .filter(|(offset, record)| match &record.key {
                        None => true,
                        Some(key) => {
                            latest.get(key) == Some(offset)
                                && (record.value.is_some() || record.timestamp_ms >= expired_before)
                        }
                    })
                    .map(|(offset, record)| ((offset - header.base_offset) as u32, record))
                    .collect();
                removed += (total - kept.len()) as u64;
                if kept.len() == total {
                    rewritten.extend_from_slice(raw);
                } else if !kept.is_empty()
                    || b == last
                    || (header.producer_id != 0 && self.producer_last.contains(&header.base_offset))
                {
                    rewritten.extend(batch::encode_sparse(
                        header,
                        kept.iter().map(|(delta, record)| (*delta, record)),
                    ));
                }
            }
            if removed == 0 {
                continue;
            }
            let cleaned = path.with_extension("cleaned");
            let mut file = File::create(&cleaned).map_err(io_err(&cleaned))?;
            file.write_all(&rewritten)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&cleaned))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut segment = Segment::empty(dir, *base_offset);
            if let Some(reason) =
                segment.scan(&rewritten, self.index_interval_bytes, &mut Producers::new())
            {
                let _ = fs::remove_file(&cleaned);
                return Err(StreamError::Corrupt {
                    path: path.clone(),
                    position: segment.len,
                    reason: format!("compaction wrote an unreadable segment: {reason}"),
                });
            }
            apply(Rewrite {
                base_offset: *base_offset,
                cleaned,
                segment,
                removed,
                bytes_before: bytes.len() as u64,
            })?;
        }
        Ok(())
    }
}

/// The largest segment: index entries hold 32-bit positions.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, Clone, Copy)]
pub struct PartitionConfig {
    /// Roll to a new segment once the active one is this big (at most
    /// `SEGMENT_BYTES_MAX`: index positions are 32-bit).
    pub segment_bytes_max: u64,
    /// An index entry per this many bytes of log.
    pub index_interval_bytes: u64,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            segment_bytes_max: 64 * 1024 * 1024,
            index_interval_bytes: 4_096,
        }
    }
}

/// What opening found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Bytes cut off the end of the last segment (a torn or damaged tail).
    pub truncated_bytes: u64,
    pub next_offset: u64,
}

struct Segment {
    base_offset: u64,
    path: PathBuf,
    /// Bytes of valid batches.
    len: u64,
    next_offset: u64,
    max_timestamp_ms: i64,
    /// `(relative offset, position)` of some batches, ascending.
    index: Vec<(u32, u32)>,
    /// `(largest timestamp so far, relative offset)`, ascending in both.
    time_index: Vec<(i64, u32)>,
    bytes_since_index: u64,
}

fn segment_name(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

impl Segment {
    /// The segment starting at `base_offset` in `dir`, before anything is read or written.
    fn empty(dir: &Path, base_offset: u64) -> Segment {
        Segment {
            base_offset,
            path: dir.join(format!("{}.log", segment_name(base_offset))),
            len: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
        }
    }

    /// Where to start reading for `offset`: the indexed batch at or before it.
    fn position_for(&self, offset: u64) -> u64 {
        let relative = offset.saturating_sub(self.base_offset) as u32;
        self.index
            .partition_point(|&(o, _)| o <= relative)
            .checked_sub(1)
            .map_or(0, |i| u64::from(self.index[i].1))
    }

    /// Appends the batch at `position` of `file` (this segment) to `out`; returns its
    /// length. Checks the length field only: decoding checks the rest.
    fn read_batch(
        &self,
        file: &File,
        position: u64,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        let mut head = [0u8; 16];
        file.read_exact_at(&mut head, position)
            .map_err(io_err(&self.path))?;
        let total = 12 + u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as usize;
        if !(BATCH_HEADER_BYTES..=batch::BATCH_BYTES_MAX).contains(&total) {
            return Err(StreamError::Corrupt {
                path: self.path.clone(),
                position,
                reason: format!("batch length {total}"),
            });
        }
        let start = out.len();
        out.resize(start + total, 0);
        file.read_exact_at(&mut out[start..], position)
            .map_err(io_err(&self.path))?;
        Ok(total)
    }

    fn file_with(&self, extension: &str) -> PathBuf {
        self.path.with_extension(extension)
    }

    /// Notes the batch just placed at `position`, adding index entries when due.
    fn note(
        &mut self,
        header: &BatchHeader,
        position: u64,
        interval: u64,
    ) -> (bool, Vec<u8>, Vec<u8>) {
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
        self.next_offset = header.next_offset();
        let due = self.index.is_empty() || self.bytes_since_index >= interval;
        self.bytes_since_index += header.bytes as u64;
        if !due {
            return (false, Vec::new(), Vec::new());
        }
        self.bytes_since_index = header.bytes as u64;
        let relative = (header.base_offset - self.base_offset) as u32;
        self.index.push((relative, position as u32));
        self.time_index.push((self.max_timestamp_ms, relative));
        let mut index = relative.to_le_bytes().to_vec();
        index.extend_from_slice(&(position as u32).to_le_bytes());
        let mut time = self.max_timestamp_ms.to_le_bytes().to_vec();
        time.extend_from_slice(&relative.to_le_bytes());
        (true, index, time)
    }

    /// Scans the segment's batches from the start. Returns where the valid ones end and
    /// why they end there (`None`: at the end of the file).
    fn scan(&mut self, bytes: &[u8], interval: u64, producers: &mut Producers) -> Option<String> {
        let mut position = 0usize;
        let mut expected = self.base_offset;
        while position < bytes.len() {
            let header = match batch::header(&bytes[position..]) {
                Ok(header) => header,
                Err(Bad::Incomplete) => return Some("a batch cut short".into()),
                Err(Bad::Corrupt(reason)) => return Some(reason),
            };
            // Compaction may leave gaps between batches, never overlaps.
            if header.base_offset < expected {
                return Some(format!(
                    "a batch at offset {} where {expected} was next",
                    header.base_offset
                ));
            }
            self.note(&header, position as u64, interval);
            if header.producer_id != 0 {
                producers.insert(header.producer_id, (header.sequence, header.base_offset));
            }
            expected = header.next_offset();
            position += header.bytes;
            self.len = position as u64;
        }
        None
    }
}

/// An open partition. Not shared between threads by itself: the server wraps it.
pub struct Partition {
    dir: PathBuf,
    config: PartitionConfig,
    segments: Vec<Segment>,
    producers: Producers,
    /// The active segment, open for appending.
    active: File,
    /// Set by a failed sync: appends and syncs are refused from then on.
    poisoned: Option<String>,
}

fn sync_dir(dir: &Path) -> Result<(), StreamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Partition {
    /// Opens (or creates) the partition in `dir`: every segment is scanned, the last one's
    /// torn or damaged tail is cut off, and the indexes are rebuilt from the batches.
    pub fn open(dir: &Path, config: PartitionConfig) -> Result<(Partition, Recovery), StreamError> {
        let config = PartitionConfig {
            segment_bytes_max: config.segment_bytes_max.clamp(1, SEGMENT_BYTES_MAX),
            index_interval_bytes: config.index_interval_bytes.max(1),
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        check_format(dir)?;
        let mut bases: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        // A compaction that crashed before its rename left its rewrite behind: the
        // segment it would have replaced is whole.
        for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "cleaned") {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        if bases.is_empty() {
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let mut recovery = Recovery::default();
        let mut producers = Producers::new();
        for (i, &base_offset) in bases.iter().enumerate() {
            let mut segment = Segment::empty(dir, base_offset);
            let bytes = match fs::read(&segment.path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(error) => return Err(io_err(&segment.path)(error)),
            };
            let problem = segment.scan(&bytes, config.index_interval_bytes, &mut producers);
            let last = i + 1 == bases.len();
            match problem {
                Some(reason) if !last => {
                    return Err(StreamError::Corrupt {
                        path: segment.path.clone(),
                        position: segment.len,
                        reason,
                    })
                }
                Some(_) => recovery.truncated_bytes = bytes.len() as u64 - segment.len,
                None => {}
            }
            if let Some(previous) = segments.last() {
                let previous: &Segment = previous;
                if previous.next_offset != base_offset {
                    return Err(StreamError::Corrupt {
                        path: segment.path.clone(),
                        position: 0,
                        reason: format!(
                            "starts at {base_offset} but the segment before ends at {}",
                            previous.next_offset
                        ),
                    });
                }
            }
            segments.push(segment);
        }
        let Some(last) = segments.last() else {
            return Err(StreamError::EmptyBatch);
        };
        let active = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        // Cut a torn tail (bytes never acknowledged), and make the cut durable.
        active.set_len(last.len).map_err(io_err(&last.path))?;
        active.sync_all().map_err(io_err(&last.path))?;
        sync_dir(dir)?;
        let partition = Partition {
            dir: dir.to_owned(),
            config,
            producers,
            segments,
            active,
            poisoned: None,
        };
        // The indexes are hints rebuilt from the log: write them out afresh.
        for i in 0..partition.segments.len() {
            partition.write_indexes(i)?;
        }
        recovery.segments = partition.segments.len();
        recovery.next_offset = partition.next_offset();
        Ok((partition, recovery))
    }

    fn write_indexes(&self, i: usize) -> Result<(), StreamError> {
        let segment = &self.segments[i];
        let index: Vec<u8> = segment
            .index
            .iter()
            .flat_map(|(o, p)| o.to_le_bytes().into_iter().chain(p.to_le_bytes()))
            .collect();
        let time: Vec<u8> = segment
            .time_index
            .iter()
            .flat_map(|(t, o)| t.to_le_bytes().into_iter().chain(o.to_le_bytes()))
            .collect();
        for (extension, bytes) in [("index", index), ("timeindex", time)] {
            let path = segment.file_with(extension);
            fs::write(&path, bytes).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// The offset the next record will get.
    pub fn next_offset(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.next_offset)
    }

    /// The first offset still kept.
    pub fn earliest_offset(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base_offset)
    }

    /// Bytes of every segment.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends `records` as one batch; returns its first offset. The OS has it; `sync`
    /// makes it durable. An idempotent producer (`producer_id` not 0) numbers its
    /// batches: its batch `sequence` is written once (a retry of the last one answers
    /// where it went), and a sequence below its last is refused.
    pub fn append(
        &mut self,
        records: &[Record],
        producer_id: u64,
        sequence: u32,
    ) -> Result<Appended, StreamError> {
        if records.is_empty() {
            return Err(StreamError::EmptyBatch);
        }
        if producer_id != 0 {
            if let Some(duplicate) = self.check_sequence(producer_id, sequence)? {
                return Ok(duplicate);
            }
        }
        let mut bytes = batch::encode(0, producer_id, sequence, records);
        let header = batch::header(&bytes).map_err(|e| StreamError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            reason: format!("encoded an unreadable batch: {e:?}"),
        })?;
        self.place(&mut bytes, header)
    }

    /// Appends a batch encoded elsewhere (a client's, in the binary encoding) after
    /// checking it (`batch::check_new`, values at most `value_bytes_max`): its
    /// `base_offset` is set here; its producer id and sequence are honoured as in
    /// [`append`](Self::append). The bytes are written as they are.
    pub fn append_encoded(
        &mut self,
        bytes: &mut [u8],
        value_bytes_max: usize,
    ) -> Result<Appended, StreamError> {
        let header = batch::check_new(bytes, value_bytes_max).map_err(|e| match e {
            Bad::Incomplete => StreamError::BadBatch("the batch is cut short".into()),
            Bad::Corrupt(reason) => StreamError::BadBatch(reason),
        })?;
        self.append_checked(bytes, header)
    }

    /// As [`append_encoded`](Self::append_encoded) for a batch already checked:
    /// `header` is what `batch::check_new` returned for `bytes`.
    pub fn append_checked(
        &mut self,
        bytes: &mut [u8],
        header: BatchHeader,
    ) -> Result<Appended, StreamError> {
        if header.producer_id != 0 {
            if let Some(duplicate) = self.check_sequence(header.producer_id, header.sequence)? {
                return Ok(duplicate);
            }
        }
        self.place(bytes, header)
    }

    /// Whether producer `producer_id`'s batch `sequence` was the last written (where it
    /// went), or is refused as older.
    pub fn check_sequence(
        &self,
        producer_id: u64,
        sequence: u32,
    ) -> Result<Option<Appended>, StreamError> {
        match self.producers.get(&producer_id) {
            Some(&(last, base_offset)) if sequence == last => Ok(Some(Appended {
                base_offset,
                duplicate: true,
            })),
            Some(&(last, _)) if sequence < last => Err(StreamError::SequenceTooOld {
                producer_id,
                sequence,
                last,
            }),
            _ => Ok(None),
        }
    }

    /// Writes an encoded batch at the end, with its base offset set.
    fn place(&mut self, bytes: &mut [u8], header: BatchHeader) -> Result<Appended, StreamError> {
        self.check_poisoned()?;
        if self
            .segments
            .last()
            .is_some_and(|s| s.len >= self.config.segment_bytes_max)
        {
            self.roll()?;
        }
        let base_offset = self.next_offset();
        bytes[0..8].copy_from_slice(&base_offset.to_le_bytes());
        let header = BatchHeader {
            base_offset,
            ..header
        };
        let (producer_id, sequence) = (header.producer_id, header.sequence);
        let interval = self.config.index_interval_bytes;
        let Some(segment) = self.segments.last_mut() else {
            return Err(StreamError::EmptyBatch);
        };
        let path = segment.path.clone();
        self.active
            .write_all_at(bytes, segment.len)
            .map_err(io_err(&path))?;
        let position = segment.len;
        segment.len += bytes.len() as u64;
        let (indexed, index, time) = segment.note(&header, position, interval);
        if producer_id != 0 {
            self.producers.insert(producer_id, (sequence, base_offset));
        }
        if indexed {
            for (extension, entry) in [("index", index), ("timeindex", time)] {
                let path = segment.file_with(extension);
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(&entry))
                    .map_err(io_err(&path))?;
            }
        }
        Ok(Appended {
            base_offset,
            duplicate: false,
        })
    }

    /// Makes every appended batch durable (fdatasync of the active segment). A failure
    /// poisons the partition.
    pub fn sync(&mut self) -> Result<(), StreamError> {
        self.check_poisoned()?;
        let path = self.active_path();
        if let Err(error) = self.active.sync_data() {
            self.poison(&error.to_string());
            return Err(io_err(&path)(error));
        }
        Ok(())
    }

    /// The active segment's file name (for errors).
    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Refuses writes from now on: a sync of this partition failed (here, or on a handle
    /// from [`sync_handle`](Self::sync_handle)).
    pub fn poison(&mut self, reason: &str) {
        if self.poisoned.is_none() {
            self.poisoned = Some(reason.to_owned());
        }
    }

    fn check_poisoned(&self) -> Result<(), StreamError> {
        match &self.poisoned {
            Some(reason) => Err(StreamError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// A second handle on the active segment and the offset it holds up to: syncing it
    /// (`File::sync_data`) makes every append before this call durable, without holding
    /// the partition while the disk works (group commit by the caller). A roll in
    /// between syncs the old segment itself.
    pub fn sync_handle(&self) -> Result<(File, u64), StreamError> {
        self.check_poisoned()?;
        let file = self
            .active
            .try_clone()
            .map_err(io_err(&self.active_path()))?;
        Ok((file, self.next_offset()))
    }

    fn roll(&mut self) -> Result<(), StreamError> {
        self.sync()?;
        let segment = Segment::empty(&self.dir, self.next_offset());
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&segment.path)
            .map_err(io_err(&segment.path))?;
        sync_dir(&self.dir)?;
        self.active = file;
        self.segments.push(segment);
        Ok(())
    }

    /// The first offset of each segment, oldest first (the last is the active one).
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    /// Compaction by key: in every segment but the active one, keeps only the newest
    /// record of each key (newest in the whole partition, the active segment included),
    /// so that reading from the earliest offset still ends with every key's latest value.
    /// Records without a key are kept. A tombstone (no value) that is its key's newest is
    /// kept until its timestamp is `tombstone_retention_ms` before `now_ms` (readers that
    /// saw the key learn of its deletion), then removed. Offsets never change: the kept
    /// records keep theirs, leaving gaps. A batch left empty is dropped, except a
    /// segment's last (it carries where the segment ends) and an idempotent producer's
    /// last (it carries the producer's sequence).
    ///
    /// In three steps, so that a caller can hold the partition only for the first and
    /// the last: [`plan_compaction`](Self::plan_compaction) notes what to read,
    /// [`CompactionPlan::run`] reads it and writes each rewritten segment beside the old
    /// one (synced), and [`apply_rewrite`](Self::apply_rewrite) renames each over the old
    /// one as it comes, so a crash leaves either and at most one rewrite is held. Closed
    /// segments never change, and appends only add newer records (which can only make
    /// more records superseded), so appends can go on while the plan runs; the caller
    /// must make the partition durable up to the plan's end first (`run` trusts what it
    /// reads of the active segment). Holds every key of the partition in memory while it
    /// runs.
    pub fn compact(
        &mut self,
        now_ms: i64,
        tombstone_retention_ms: u64,
    ) -> Result<Compacted, StreamError> {
        let plan = self.plan_compaction();
        let mut done = Compacted::default();
        plan.run(now_ms, tombstone_retention_ms, |rewrite| {
            self.apply_rewrite(rewrite, &mut done)
        })?;
        Ok(done)
    }

    /// What a compaction reads: every segment (the active one up to its length now) and
    /// each idempotent producer's last batch. Cheap: nothing is read yet.
    pub fn plan_compaction(&self) -> CompactionPlan {
        CompactionPlan {
            segments: self
                .segments
                .iter()
                .map(|s| (s.base_offset, s.path.clone(), s.len))
                .collect(),
            producer_last: self.producers.values().map(|&(_, base)| base).collect(),
            index_interval_bytes: self.config.index_interval_bytes,
        }
    }

    /// Swaps in a segment a plan rewrote: renamed over the segment it replaces (or
    /// dropped if that one went meanwhile, to retention), its indexes written, the
    /// directory synced. Adds what it did to `done`.
    pub fn apply_rewrite(
        &mut self,
        rewrite: Rewrite,
        done: &mut Compacted,
    ) -> Result<(), StreamError> {
        let closed = self.segments.len().saturating_sub(1);
        let Some(i) = self.segments[..closed]
            .iter()
            .position(|s| s.base_offset == rewrite.base_offset)
        else {
            let _ = fs::remove_file(&rewrite.cleaned);
            return Ok(());
        };
        let path = self.segments[i].path.clone();
        fs::rename(&rewrite.cleaned, &path).map_err(io_err(&path))?;
        // The file is swapped: from here the partition describes the new one.
        done.segments_rewritten += 1;
        done.records_removed += rewrite.removed;
        done.bytes_before += rewrite.bytes_before;
        done.bytes_after += rewrite.segment.len;
        self.segments[i] = rewrite.segment;
        self.write_indexes(i)?;
        sync_dir(&self.dir)
    }

    /// The segments that may hold records from `offset` on (an error before the earliest).
    fn segments_from(&self, offset: u64) -> Result<impl Iterator<Item = &Segment>, StreamError> {
        if offset < self.earliest_offset() {
            return Err(StreamError::OffsetOutOfRange {
                offset,
                earliest: self.earliest_offset(),
            });
        }
        let first = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        Ok(self.segments[first..]
            .iter()
            .filter(move |s| offset < s.next_offset))
    }

    /// Records from `offset` on, whole batches, until about `max_bytes` (at least one
    /// batch when there is one, however big). Empty at the end of the log.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<(u64, Record)>, StreamError> {
        Ok(self.read_until(offset, max_bytes, u64::MAX)?.0)
    }

    /// As [`read`](Self::read), only batches that end at or before `until` (a caller's
    /// durable end: records not yet synced are not shown). Also returns the offset after
    /// the last batch looked at, where the next read starts (past any gap compaction
    /// left).
    pub fn read_until(
        &self,
        offset: u64,
        max_bytes: usize,
        until: u64,
    ) -> Result<(Vec<(u64, Record)>, u64), StreamError> {
        let mut out = Vec::new();
        let mut next = offset;
        let mut read_bytes = 0usize;
        let mut bytes = Vec::new();
        self.walk(
            offset,
            until,
            &mut bytes,
            |bytes, header, path, position| {
                if read_bytes > 0 && read_bytes >= max_bytes {
                    return Ok(false);
                }
                let (header, records) = if header.count == 0 {
                    (header, Vec::new())
                } else {
                    batch::decode(bytes).map_err(|e| StreamError::Corrupt {
                        path: path.to_owned(),
                        position,
                        reason: format!("{e:?}"),
                    })?
                };
                next = next.max(header.next_offset());
                let before = out.len();
                out.extend(records.into_iter().filter(|&(o, _)| o >= offset));
                // Batches compaction emptied do not count against `max_bytes`.
                if out.len() > before {
                    read_bytes += header.bytes;
                }
                bytes.clear();
                Ok(true)
            },
        )?;
        Ok((out, next))
    }

    /// Whole batches as stored, holding the records from `offset` on, until about
    /// `max_bytes` (at least one batch when there is one, however big); the first may
    /// also hold records before `offset`, which the reader skips. Batches compaction
    /// emptied are left out, and batches that end after `until` (a caller's durable end).
    /// Each batch's CRC is checked. Returns the bytes, in chunks of whole batches of
    /// about `ENCODED_CHUNK_BYTES` to be sent one after the other, and the offset after
    /// the last batch looked at (where the next read starts).
    pub fn read_encoded(
        &self,
        offset: u64,
        max_bytes: usize,
        until: u64,
    ) -> Result<(Vec<Vec<u8>>, u64), StreamError> {
        let mut chunks = Vec::new();
        // Bytes in `chunks`.
        let mut taken = 0usize;
        let mut out = Vec::new();
        let mut next = offset;
        self.walk(offset, until, &mut out, |out, header, _, _| {
            let batch_start = out.len() - header.bytes;
            if taken + batch_start > 0 && taken + batch_start >= max_bytes {
                out.truncate(batch_start);
                return Ok(false);
            }
            next = next.max(header.next_offset());
            if header.count == 0 {
                out.truncate(batch_start);
            }
            if out.len() >= ENCODED_CHUNK_BYTES {
                taken += out.len();
                chunks.push(std::mem::take(out));
            }
            Ok(true)
        })?;
        if !out.is_empty() {
            chunks.push(out);
        }
        Ok((chunks, next))
    }

    /// Visits the stored batches holding records from `offset` on that end at or before
    /// `until`, in order: each is appended to `buffer` (CRC checked) and given to `visit`
    /// with its header, segment path and position; `visit` says whether to go on.
    fn walk(
        &self,
        offset: u64,
        until: u64,
        buffer: &mut Vec<u8>,
        mut visit: impl FnMut(&mut Vec<u8>, BatchHeader, &Path, u64) -> Result<bool, StreamError>,
    ) -> Result<(), StreamError> {
        for segment in self.segments_from(offset)? {
            let mut position = segment.position_for(offset);
            let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
            while position < segment.len {
                let start = buffer.len();
                let total = segment.read_batch(&file, position, buffer)?;
                let header = batch::header(&buffer[start..]).map_err(|e| StreamError::Corrupt {
                    path: segment.path.clone(),
                    position,
                    reason: format!("{e:?}"),
                })?;
                if header.next_offset() > until {
                    buffer.truncate(start);
                    return Ok(());
                }
                if header.next_offset() <= offset {
                    buffer.truncate(start);
                } else if !visit(buffer, header, &segment.path, position)? {
                    return Ok(());
                }
                position += total as u64;
            }
        }
        Ok(())
    }

    /// The first offset whose record's timestamp is at or after `timestamp_ms`, reading
    /// from the batch the time index points to; `None` when every record is earlier.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>, StreamError> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.max_timestamp_ms >= timestamp_ms)
        else {
            return Ok(None);
        };
        // The last entry whose running maximum is still below the time: what comes
        // before its batch is all earlier.
        let from = segment
            .time_index
            .partition_point(|&(max, _)| max < timestamp_ms)
            .checked_sub(1)
            .map_or(segment.base_offset, |i| {
                segment.base_offset + u64::from(segment.time_index[i].1)
            });
        let mut offset = from.max(self.earliest_offset());
        loop {
            let records = self.read(offset, 1 << 20)?;
            let Some(&(last, _)) = records.last() else {
                return Ok(None);
            };
            if let Some((found, _)) = records.iter().find(|(_, r)| r.timestamp_ms >= timestamp_ms) {
                return Ok(Some(*found));
            }
            offset = last + 1;
        }
    }

    /// Deletes whole segments, oldest first and never the active one, while the oldest
    /// is wholly older than `max_age_ms` before `now_ms`, or the partition is above
    /// `max_bytes`. Returns how many went.
    pub fn retain(
        &mut self,
        now_ms: i64,
        max_age_ms: Option<u64>,
        max_bytes: Option<u64>,
    ) -> Result<usize, StreamError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let too_old = max_age_ms
                .is_some_and(|age| oldest.max_timestamp_ms < now_ms.saturating_sub(age as i64));
            let too_big = max_bytes.is_some_and(|max| self.bytes() > max);
            if !too_old && !too_big {
                break;
            }
            let oldest = self.segments.remove(0);
            for extension in ["log", "index", "timeindex"] {
                let path = oldest.file_with(extension);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_err(&path)(error)),
                }
            }
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}
