//! Metric history per queue on disk: a sample every 10 s kept for 24 h, and every 5 min
//! kept for 30 days, so memory stays bounded however long the history. Each resolution
//! is a directory of chunk files (an hour of 10 s samples, a day of 5 min ones), deleted
//! whole once past their window.
//!
//! A chunk file is an 8-byte magic and the step, then frames: `u32` length, `u32`
//! CRC32C of the payload, and the payload, a postcard `Row`: one sample time, the queue
//! names new to this file, and a sample for each queue whose sample says something the
//! reader could not work out. A queue left out of a row had no counts in the step
//! (nothing enqueued, finished or failed) and the same gauges (jobs ready, leased,
//! scheduled, retrying, dead) as in its last sample in this file, or zeros when it has
//! none: so a queue that only holds dead or scheduled jobs costs nothing per row, and a
//! row is written at every sample time, even empty, to say that it was sampled. A reader
//! stops at the first frame that does not check (a torn tail). Each process writes its own files (the name holds its start), so
//! a restart never appends to a file another process left.
//!
//! Durability: files are fdatasync'd every 5 minutes and when they are closed; a power
//! cut may lose the samples since. This is history for operators, not acknowledged data.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sluice_core::Millis;

/// Chunks written now: samples with every state's count, gauges carried forward.
const MAGIC: &[u8; 8] = b"SLUICEH3";
/// Chunks of earlier versions, still read. Version 2: a queue left out of a row was
/// idle (all zeros). Version 1: as 2, and samples have no scheduled, retrying or dead
/// counts (read as 0).
const MAGIC_V2: &[u8; 8] = b"SLUICEH2";
const MAGIC_V1: &[u8; 8] = b"SLUICEH1";
const HEADER_BYTES: usize = 16;
/// A frame bigger than this is damage, not a row (a row of 100,000 queues is ~5 MB).
const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long written samples may stay in the page cache only.
const SYNC_EVERY_MS: Millis = 5 * 60_000;

/// One queue at one sample time. Counts are over the step; gauges are as sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub ready: u32,
    pub leased: u32,
    pub enqueued: u32,
    pub succeeded: u32,
    /// Attempts that failed or whose lease expired.
    pub failed: u32,
    pub wait_p95_ms: Option<u32>,
    pub run_p95_ms: Option<u32>,
    /// Gauges, as `ready` and `leased`: jobs scheduled, failed and waiting to retry, dead.
    pub scheduled: u32,
    pub retrying: u32,
    pub dead: u32,
}

/// A sample as version 1 chunks hold it.
#[derive(Debug, Clone, Copy, Deserialize)]
struct SampleV1 {
    ready: u32,
    leased: u32,
    enqueued: u32,
    succeeded: u32,
    failed: u32,
    wait_p95_ms: Option<u32>,
    run_p95_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RowV1 {
    at_ms: Millis,
    new_names: Vec<String>,
    samples: Vec<(u32, SampleV1)>,
}

impl From<RowV1> for Row {
    fn from(row: RowV1) -> Row {
        Row {
            at_ms: row.at_ms,
            new_names: row.new_names,
            samples: row
                .samples
                .into_iter()
                .map(|(id, s)| {
                    let sample = Sample {
                        ready: s.ready,
                        leased: s.leased,
                        enqueued: s.enqueued,
                        succeeded: s.succeeded,
                        failed: s.failed,
                        wait_p95_ms: s.wait_p95_ms,
                        run_p95_ms: s.run_p95_ms,
                        ..Sample::default()
                    };
                    (id, sample)
                })
                .collect(),
        }
    }
}

impl Sample {
    /// Only the gauges (counts and p95s of the step zero).
    fn gauges(&self) -> Sample {
        Sample {
            ready: self.ready,
            leased: self.leased,
            scheduled: self.scheduled,
            retrying: self.retrying,
            dead: self.dead,
            ..Sample::default()
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    at_ms: Millis,
    /// Names this file did not have yet; they take the next numbers, in order.
    new_names: Vec<String>,
    samples: Vec<(u32, Sample)>,
}

/// The chunk being written.
struct Open {
    chunk_start_ms: Millis,
    path: PathBuf,
    file: File,
    /// Bytes written: a failed write is cut back to this.
    len: u64,
    names: FxHashMap<String, u32>,
    /// Each queue's gauges as last written in this file, where not all zero: what a
    /// reader carries forward.
    gauges: FxHashMap<u32, Sample>,
    synced_at_ms: Millis,
}

/// One resolution: its directory, step, chunk length and how long it is kept.
pub struct Store {
    dir: PathBuf,
    pub step_ms: Millis,
    chunk_ms: Millis,
    pub keep_ms: Millis,
    /// Distinguishes this process's files from earlier ones of the same chunk.
    started_ms: Millis,
    open: Option<Open>,
    /// Files given up after a write that failed and could not be cut back: the next file
    /// of the same chunk gets a name of its own.
    abandoned: u32,
}

impl Store {
    pub fn new(
        dir: PathBuf,
        step_ms: Millis,
        chunk_ms: Millis,
        keep_ms: Millis,
        now: Millis,
    ) -> Store {
        Store {
            dir,
            step_ms,
            chunk_ms,
            keep_ms,
            started_ms: now,
            open: None,
            abandoned: 0,
        }
    }

    /// Appends the samples of time `at_ms`: every queue's, as a queue missing from
    /// `samples` is taken to be idle. Only those a reader could not work out are written
    /// (see the module's comment).
    pub fn append(&mut self, at_ms: Millis, samples: Vec<(String, Sample)>) -> io::Result<()> {
        let chunk_start_ms = at_ms - at_ms.rem_euclid(self.chunk_ms);
        if self
            .open
            .as_ref()
            .is_none_or(|o| o.chunk_start_ms != chunk_start_ms)
        {
            self.close()?;
            fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(match self.abandoned {
                0 => format!("{chunk_start_ms}-{}.hist", self.started_ms),
                n => format!("{chunk_start_ms}-{}-{n}.hist", self.started_ms),
            });
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&(self.step_ms as u64).to_le_bytes());
            file.write_all(&header)?;
            self.open = Some(Open {
                chunk_start_ms,
                path,
                file,
                names: FxHashMap::default(),
                gauges: FxHashMap::default(),
                synced_at_ms: at_ms,
                len: HEADER_BYTES as u64,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let mut row = Row {
            at_ms,
            new_names: Vec::new(),
            samples: Vec::with_capacity(samples.len()),
        };
        // What readers will carry after this row; the file's state moves only once the
        // row is written (a failed write changes nothing a reader sees).
        let names_before = open.names.len();
        let mut new_names = FxHashMap::default();
        let mut carried = open.gauges.clone();
        let mut next = FxHashMap::default();
        for (name, sample) in samples {
            let id = match open.names.get(&name).or_else(|| new_names.get(&name)) {
                Some(&id) => id,
                // Idle and never written in this file: nothing to say, no name to give.
                None if sample == Sample::default() => continue,
                None => {
                    let id = (names_before + new_names.len()) as u32;
                    new_names.insert(name.clone(), id);
                    row.new_names.push(name);
                    id
                }
            };
            let gauges = sample.gauges();
            let before = carried.remove(&id).unwrap_or_default();
            if sample != before {
                row.samples.push((id, sample));
            }
            if gauges != Sample::default() {
                next.insert(id, gauges);
            }
        }
        // Queues with gauges that were not sampled this time (deleted): zeros from now.
        for (id, _) in carried {
            row.samples.push((id, Sample::default()));
        }
        let payload = postcard::to_allocvec(&row).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        if let Err(error) = open.file.write_all(&frame) {
            // Cut a partial frame off, so that later rows stay readable; if that fails
            // too, the rest of the chunk goes to a new file.
            if open.file.set_len(open.len).is_err() {
                self.open = None;
                self.abandoned += 1;
            }
            return Err(error);
        }
        open.len += frame.len() as u64;
        open.names.extend(new_names);
        open.gauges = next;
        if at_ms.saturating_sub(open.synced_at_ms) >= SYNC_EVERY_MS {
            open.file.sync_data()?;
            open.synced_at_ms = at_ms;
        }
        Ok(())
    }

    /// Syncs and closes the chunk being written.
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(open) = self.open.take() {
            open.file.sync_data()?;
            tracing::debug!(path = %open.path.display(), "history chunk closed");
        }
        Ok(())
    }

    /// A handle for reading, usable without holding the store (off the runtime).
    pub fn reader(&self) -> Reader {
        Reader {
            dir: self.dir.clone(),
            step_ms: self.step_ms,
            chunk_ms: self.chunk_ms,
        }
    }

    /// Deletes chunk files wholly older than the window.
    pub fn prune(&self, now: Millis) -> io::Result<usize> {
        let mut removed = 0;
        for (chunk_start_ms, path) in self.reader().chunks()? {
            if chunk_start_ms + self.chunk_ms <= now - self.keep_ms {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn read(
        &self,
        queue: &str,
        from_ms: Millis,
        to_ms: Millis,
    ) -> io::Result<Vec<(Millis, Sample)>> {
        self.reader().read(queue, from_ms, to_ms)
    }

    #[cfg(test)]
    fn chunks(&self) -> io::Result<Vec<(Millis, PathBuf)>> {
        self.reader().chunks()
    }
}

/// Reads a store's chunk files.
#[derive(Debug, Clone)]
pub struct Reader {
    dir: PathBuf,
    pub step_ms: Millis,
    chunk_ms: Millis,
}

impl Reader {
    fn chunks(&self) -> io::Result<Vec<(Millis, PathBuf)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut chunks = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(start) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".hist"))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<Millis>().ok())
            else {
                continue;
            };
            chunks.push((start, entry.path()));
        }
        chunks.sort();
        Ok(chunks)
    }

    /// Queue `queue`'s samples with `from_ms <= at < to_ms`, in time order.
    pub fn read(
        &self,
        queue: &str,
        from_ms: Millis,
        to_ms: Millis,
    ) -> io::Result<Vec<(Millis, Sample)>> {
        let mut all = self.scan(Some(queue), from_ms, to_ms)?;
        Ok(all.remove(queue).unwrap_or_default())
    }

    /// Every queue's samples with `from_ms <= at < to_ms`, in time order, in one pass.
    pub fn read_all(
        &self,
        from_ms: Millis,
        to_ms: Millis,
    ) -> io::Result<FxHashMap<String, Vec<(Millis, Sample)>>> {
        self.scan(None, from_ms, to_ms)
    }

    /// Every queue's samples summed per sample time (counts and gauges added; wait and
    /// run p95 the largest), folded as the chunks are read: memory holds one entry per
    /// step, however many queues.
    pub fn sum_all(
        &self,
        from_ms: Millis,
        to_ms: Millis,
    ) -> io::Result<std::collections::BTreeMap<Millis, Sample>> {
        let mut sums: std::collections::BTreeMap<Millis, Sample> = Default::default();
        self.visit(None, from_ms, to_ms, &mut |_, at, s| {
            let sum = sums.entry(at).or_default();
            sum.ready = sum.ready.saturating_add(s.ready);
            sum.leased = sum.leased.saturating_add(s.leased);
            sum.enqueued = sum.enqueued.saturating_add(s.enqueued);
            sum.succeeded = sum.succeeded.saturating_add(s.succeeded);
            sum.failed = sum.failed.saturating_add(s.failed);
            sum.wait_p95_ms = sum.wait_p95_ms.max(s.wait_p95_ms);
            sum.run_p95_ms = sum.run_p95_ms.max(s.run_p95_ms);
            sum.scheduled = sum.scheduled.saturating_add(s.scheduled);
            sum.retrying = sum.retrying.saturating_add(s.retrying);
            sum.dead = sum.dead.saturating_add(s.dead);
        })?;
        Ok(sums)
    }

    fn scan(
        &self,
        only: Option<&str>,
        from_ms: Millis,
        to_ms: Millis,
    ) -> io::Result<FxHashMap<String, Vec<(Millis, Sample)>>> {
        let mut out: FxHashMap<String, Vec<(Millis, Sample)>> = FxHashMap::default();
        self.visit(only, from_ms, to_ms, &mut |name, at, sample| {
            out.entry(name.to_owned()).or_default().push((at, sample));
        })?;
        for samples in out.values_mut() {
            samples.sort_by_key(|(at, _)| *at);
        }
        Ok(out)
    }

    fn visit(
        &self,
        only: Option<&str>,
        from_ms: Millis,
        to_ms: Millis,
        visit: &mut dyn FnMut(&str, Millis, Sample),
    ) -> io::Result<()> {
        for (chunk_start_ms, path) in self.chunks()? {
            if chunk_start_ms >= to_ms || chunk_start_ms + self.chunk_ms <= from_ms {
                continue;
            }
            read_chunk(&path, only, from_ms, to_ms, visit)?;
        }
        Ok(())
    }
}

/// Samples every 10 s into the fine store and every 5 min into the coarse one.
pub struct Recorder {
    pub fine: Store,
    pub coarse: Store,
    /// Start of the last 10 s slot recorded.
    last_slot_ms: Option<Millis>,
    /// The 5-minute slot being summed, and its sums per queue.
    coarse_slot_ms: Option<Millis>,
    coarse_sums: FxHashMap<String, Sample>,
    pruned_at_ms: Millis,
}

pub const FINE_STEP_MS: Millis = 10_000;
pub const COARSE_STEP_MS: Millis = 5 * 60_000;
const HOUR_MS: Millis = 3_600_000;
const DAY_MS: Millis = 24 * HOUR_MS;
/// 10 s samples are kept a day, 5 min ones 30 days.
pub const FINE_KEEP_MS: Millis = DAY_MS;
pub const COARSE_KEEP_MS: Millis = 30 * DAY_MS;
/// Slots a late tick still records (the metrics keep the last minute).
const CATCH_UP_SLOTS: i64 = 5;

impl Recorder {
    pub fn new(dir: &Path, now: Millis) -> Recorder {
        Recorder {
            fine: Store::new(dir.join("10s"), FINE_STEP_MS, HOUR_MS, FINE_KEEP_MS, now),
            coarse: Store::new(dir.join("5m"), COARSE_STEP_MS, DAY_MS, COARSE_KEEP_MS, now),
            last_slot_ms: None,
            coarse_slot_ms: None,
            coarse_sums: FxHashMap::default(),
            pruned_at_ms: 0,
        }
    }

    /// The start of the last 10 s slot recorded.
    pub fn last_slot_ms(&self) -> Option<Millis> {
        self.last_slot_ms
    }

    /// Starts of the complete 10 s slots not yet recorded (at most the last minute's).
    pub fn due_slots(&self, now: Millis) -> Vec<Millis> {
        let newest = now.div_euclid(FINE_STEP_MS) - 1;
        let oldest = match self.last_slot_ms {
            Some(last) => (last.div_euclid(FINE_STEP_MS) + 1).max(newest - CATCH_UP_SLOTS),
            None => newest,
        };
        (oldest..=newest).map(|slot| slot * FINE_STEP_MS).collect()
    }

    /// Records the 10 s slot starting at `slot_ms`; every 5 minutes also writes the
    /// 5-minute sample: counts summed, gauges as last sampled, and for wait and run the
    /// highest 10 s p95 of the five minutes (an upper bound: p95s do not add up).
    pub fn record(&mut self, slot_ms: Millis, samples: Vec<(String, Sample)>) -> io::Result<()> {
        self.last_slot_ms = Some(slot_ms);
        let coarse_slot_ms = slot_ms - slot_ms.rem_euclid(COARSE_STEP_MS);
        if let Some(previous) = self.coarse_slot_ms.filter(|&p| p != coarse_slot_ms) {
            self.flush_coarse(previous)?;
        }
        self.coarse_slot_ms = Some(coarse_slot_ms);
        for (name, sample) in &samples {
            let sum = self.coarse_sums.entry(name.clone()).or_default();
            sum.ready = sample.ready;
            sum.leased = sample.leased;
            sum.scheduled = sample.scheduled;
            sum.retrying = sample.retrying;
            sum.dead = sample.dead;
            sum.enqueued = sum.enqueued.saturating_add(sample.enqueued);
            sum.succeeded = sum.succeeded.saturating_add(sample.succeeded);
            sum.failed = sum.failed.saturating_add(sample.failed);
            sum.wait_p95_ms = sum.wait_p95_ms.max(sample.wait_p95_ms);
            sum.run_p95_ms = sum.run_p95_ms.max(sample.run_p95_ms);
        }
        self.fine.append(slot_ms, samples)?;
        if slot_ms + FINE_STEP_MS == coarse_slot_ms + COARSE_STEP_MS {
            self.flush_coarse(coarse_slot_ms)?;
            self.coarse_slot_ms = None;
        }
        if slot_ms - self.pruned_at_ms >= HOUR_MS {
            self.pruned_at_ms = slot_ms;
            self.fine.prune(slot_ms)?;
            self.coarse.prune(slot_ms)?;
        }
        Ok(())
    }

    fn flush_coarse(&mut self, coarse_slot_ms: Millis) -> io::Result<()> {
        let sums: Vec<(String, Sample)> = self.coarse_sums.drain().collect();
        self.coarse.append(coarse_slot_ms, sums)
    }

    /// Syncs what was written (at shutdown).
    pub fn close(&mut self) -> io::Result<()> {
        self.fine.close()?;
        self.coarse.close()
    }
}

/// Reads one chunk file's samples (of `only` if given, else of every queue), stopping at
/// the first damaged frame.
fn read_chunk(
    path: &Path,
    only: Option<&str>,
    from_ms: Millis,
    to_ms: Millis,
    visit: &mut dyn FnMut(&str, Millis, Sample),
) -> io::Result<()> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        // Pruned meanwhile.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let version_1 = bytes.get(..8) == Some(MAGIC_V1.as_slice());
    let carries = bytes.get(..8) == Some(MAGIC.as_slice());
    if bytes.len() < HEADER_BYTES
        || !(carries || version_1 || bytes.get(..8) == Some(MAGIC_V2.as_slice()))
    {
        tracing::warn!(path = %path.display(), "not a history chunk; skipped");
        return Ok(());
    }
    let mut names: Vec<String> = Vec::new();
    // Version 3: each queue's gauges carried forward, with the index of the last row
    // that had it (so those left out of a row are known).
    let mut carried: FxHashMap<u32, (Sample, usize)> = FxHashMap::default();
    let mut only_id: Option<u32> = None;
    let mut row_index = 0usize;
    let mut offset = HEADER_BYTES;
    while let Some(head) = bytes.get(offset..offset + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(offset + 8..offset + 8 + len) else {
            break;
        };
        if len > FRAME_BYTES_MAX || crc32c::crc32c(payload) != crc {
            break;
        }
        let row = if version_1 {
            postcard::from_bytes::<RowV1>(payload).map(Row::from)
        } else {
            postcard::from_bytes::<Row>(payload)
        };
        let Ok(row) = row else {
            break;
        };
        for name in row.new_names {
            if only == Some(name.as_str()) {
                only_id = Some(names.len() as u32);
            }
            names.push(name);
        }
        let in_range = (from_ms..to_ms).contains(&row.at_ms);
        for (id, sample) in row.samples {
            let Some(name) = names.get(id as usize) else {
                continue;
            };
            if only.is_some() && only_id != Some(id) {
                continue;
            }
            // A zero sample only ends a carried one: read as before, as nothing.
            if in_range && sample != Sample::default() {
                visit(name, row.at_ms, sample);
            }
            if carries {
                let gauges = sample.gauges();
                if gauges == Sample::default() {
                    carried.remove(&id);
                } else {
                    carried.insert(id, (gauges, row_index));
                }
            }
        }
        if in_range {
            for (&id, &(gauges, last_row)) in &carried {
                if last_row != row_index {
                    if let Some(name) = names.get(id as usize) {
                        visit(name, row.at_ms, gauges);
                    }
                }
            }
        }
        row_index += 1;
        offset += 8 + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_the_first_version_are_still_read() {
        /// A version 1 sample: five counts, then wait and run p95.
        type SampleV1 = ([u32; 5], Option<u32>, Option<u32>);
        #[derive(Serialize)]
        struct V1 {
            at_ms: Millis,
            new_names: Vec<String>,
            samples: Vec<(u32, SampleV1)>,
        }
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let store = Store::new(dir.path().join("10s"), 10_000, hour, 24 * hour, 0);
        fs::create_dir_all(dir.path().join("10s")).expect("dir");
        let payload = postcard::to_allocvec(&V1 {
            at_ms: 20_000,
            new_names: vec!["old".into()],
            samples: vec![(0, ([4, 1, 9, 8, 1], Some(120), None))],
        })
        .expect("encode");
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&10_000u64.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        fs::write(dir.path().join("10s").join("0-0.hist"), bytes).expect("write");
        let read = store.read("old", 0, hour).expect("read");
        assert_eq!(
            read,
            vec![(
                20_000,
                Sample {
                    ready: 4,
                    leased: 1,
                    enqueued: 9,
                    succeeded: 8,
                    failed: 1,
                    wait_p95_ms: Some(120),
                    ..Sample::default()
                }
            )]
        );
    }

    fn sample(ready: u32) -> Sample {
        Sample {
            ready,
            ..Sample::default()
        }
    }

    #[test]
    fn samples_come_back_by_queue_and_time_across_chunks_and_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let mut store = Store::new(dir.path().join("10s"), 10_000, hour, 24 * hour, 0);
        for i in 0..720 {
            let at = i * 10_000;
            store
                .append(
                    at,
                    vec![("a".into(), sample(i as u32 + 1)), ("b".into(), sample(7))],
                )
                .expect("append");
        }
        store.close().expect("close");
        // A restart writes its own file for the same chunk.
        let mut again = Store::new(dir.path().join("10s"), 10_000, hour, 24 * hour, 99);
        again
            .append(7_200_000, vec![("a".into(), sample(9_999))])
            .expect("append");
        again.close().expect("close");
        let got = again.read("a", 3_590_000, 7_210_000).expect("read");
        let at: Vec<Millis> = got.iter().map(|(at, _)| *at).collect();
        let expected: Vec<Millis> = (3_590_000..=7_200_000).step_by(10_000).collect();
        assert_eq!(at, expected);
        assert_eq!(got[0].1.ready, 360);
        assert_eq!(got.last().map(|(_, s)| s.ready), Some(9_999));
        assert!(again.read("c", 0, 10_000_000).expect("read").is_empty());
    }

    #[test]
    fn a_torn_tail_is_where_reading_stops_and_idle_samples_are_not_written() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = Store::new(dir.path().to_owned(), 10_000, 3_600_000, 3_600_000, 0);
        store
            .append(0, vec![("a".into(), sample(1))])
            .expect("append");
        store
            .append(10_000, vec![("a".into(), Sample::default())])
            .expect("append");
        store
            .append(20_000, vec![("a".into(), sample(3))])
            .expect("append");
        store.close().expect("close");
        let path = store.chunks().expect("chunks")[0].1.clone();
        let mut bytes = fs::read(&path).expect("read");
        let len = bytes.len();
        bytes.truncate(len - 3);
        fs::write(&path, &bytes).expect("write");
        let got = store.read("a", 0, 100_000).expect("read");
        assert_eq!(got, vec![(0, sample(1))]);
    }

    #[test]
    fn unchanged_gauges_are_carried_forward_not_written_again() {
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let mut store = Store::new(dir.path().to_owned(), 10_000, hour, hour, 0);
        let holding = |dead: u32| Sample {
            dead,
            scheduled: 7,
            ..Sample::default()
        };
        let busy = |n: u32| Sample {
            ready: n,
            enqueued: n,
            succeeded: 1,
            wait_p95_ms: Some(n),
            ..Sample::default()
        };
        // 100 queues that only hold dead and scheduled jobs, one busy queue, and a
        // queue that holds jobs until it is deleted after the 100th sample.
        let rows = 360;
        for row in 0..rows {
            let at = row as Millis * 10_000;
            let mut samples: Vec<(String, Sample)> = (0..100)
                .map(|q| (format!("static-{q}"), holding(3)))
                .collect();
            // The dead count of static-0 changes once, at the 200th sample.
            if row >= 200 {
                samples[0].1 = holding(4);
            }
            samples.push(("busy".into(), busy(row + 1)));
            if row < 100 {
                samples.push(("gone".into(), holding(1)));
            }
            store.append(at, samples).expect("append");
        }
        store.close().expect("close");
        // What a reader sees: every queue at every sample time, as sampled.
        let all = store.reader().read_all(0, hour).expect("read");
        assert_eq!(all["static-5"].len(), rows as usize);
        assert!(all["static-5"].iter().all(|(_, s)| *s == holding(3)));
        let first: Vec<(Millis, Sample)> = all["static-0"].clone();
        assert_eq!(first[199], (1_990_000, holding(3)));
        assert_eq!(first[200], (2_000_000, holding(4)));
        assert_eq!(first[359], (3_590_000, holding(4)));
        assert_eq!(all["busy"].len(), rows as usize);
        assert_eq!(all["busy"][42], (420_000, busy(43)));
        assert_eq!(
            all["gone"].len(),
            100,
            "zeros once deleted, read as nothing"
        );
        // One queue, from inside the chunk: what was carried from before `from` counts.
        let one = store.read("static-0", 2_500_000, 2_520_000).expect("read");
        assert_eq!(one, vec![(2_500_000, holding(4)), (2_510_000, holding(4))]);
        assert_eq!(
            store.read("gone", 990_000, hour).expect("read"),
            vec![(990_000, holding(1))]
        );
        // On disk: the static queues once (and static-0 twice), not in every row. Written
        // in full, each row would hold 100 samples of a few bytes each.
        let bytes = fs::metadata(&store.chunks().expect("chunks")[0].1)
            .expect("size")
            .len();
        assert!(
            bytes < 30_000,
            "{bytes} bytes for {rows} rows of 102 queues"
        );
    }

    #[test]
    fn a_row_that_cannot_be_written_leaves_what_readers_see_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let mut store = Store::new(dir.path().to_owned(), 10_000, hour, hour, 0);
        let holding = |dead: u32| Sample {
            dead,
            ..Sample::default()
        };
        store
            .append(0, vec![("q".into(), holding(3))])
            .expect("append");
        // The file turns unwritable (as a disk gone bad would): the row fails, and so
        // does cutting the file back, so the chunk goes on in a file of its own.
        let open = store.open.as_mut().expect("an open chunk");
        open.file = File::open(&open.path).expect("read-only handle");
        assert!(store
            .append(
                10_000,
                vec![("q".into(), holding(4)), ("new".into(), sample(1))]
            )
            .is_err());
        for at in [20_000, 30_000] {
            store
                .append(
                    at,
                    vec![("q".into(), holding(4)), ("new".into(), sample(2))],
                )
                .expect("append");
        }
        store.close().expect("close");
        assert_eq!(store.chunks().expect("chunks").len(), 2);
        let all = store.reader().read_all(0, hour).expect("read");
        // The failed row is missing; nothing else is, and nothing is carried wrongly.
        assert_eq!(
            all["q"],
            vec![(0, holding(3)), (20_000, holding(4)), (30_000, holding(4))]
        );
        assert_eq!(all["new"], vec![(20_000, sample(2)), (30_000, sample(2))]);
    }

    #[test]
    fn chunks_of_the_second_version_carry_nothing_forward() {
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let store = Store::new(dir.path().join("10s"), 10_000, hour, 24 * hour, 0);
        fs::create_dir_all(dir.path().join("10s")).expect("dir");
        let mut bytes = MAGIC_V2.to_vec();
        bytes.extend_from_slice(&10_000u64.to_le_bytes());
        for (at_ms, new_names, samples) in [
            (0, vec!["q".to_owned()], vec![(0, sample(5))]),
            (10_000, Vec::new(), Vec::new()),
        ] {
            let payload = postcard::to_allocvec(&Row {
                at_ms,
                new_names,
                samples,
            })
            .expect("encode");
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        fs::write(dir.path().join("10s").join("0-0.hist"), bytes).expect("write");
        assert_eq!(
            store.read("q", 0, hour).expect("read"),
            vec![(0, sample(5))],
            "left out of a version 2 row: idle"
        );
    }

    #[test]
    fn the_recorder_sums_five_minutes_into_one_coarse_sample() {
        let dir = tempfile::tempdir().expect("dir");
        let mut recorder = Recorder::new(dir.path(), 0);
        assert_eq!(recorder.due_slots(25_000), vec![10_000]);
        for slot in 0..31 {
            let at = slot * FINE_STEP_MS;
            let sample = Sample {
                ready: slot as u32,
                enqueued: 2,
                wait_p95_ms: Some(slot as u32 * 10),
                ..Sample::default()
            };
            recorder
                .record(at, vec![("q".into(), sample)])
                .expect("record");
        }
        // A late tick catches up on at most the last minute.
        assert_eq!(recorder.due_slots(1_000_000).len(), 6);
        recorder.close().expect("close");
        let coarse = recorder.coarse.read("q", 0, COARSE_KEEP_MS).expect("read");
        assert_eq!(coarse.len(), 1, "the second five minutes is not complete");
        let (at, sample) = coarse[0];
        assert_eq!(at, 0);
        assert_eq!(sample.enqueued, 60, "30 slots of 2");
        assert_eq!(sample.ready, 29, "the last sampled");
        assert_eq!(sample.wait_p95_ms, Some(290), "the highest 10 s p95");
        assert_eq!(recorder.fine.read("q", 0, 400_000).expect("read").len(), 31);
    }

    #[test]
    fn chunks_past_the_window_are_deleted() {
        let dir = tempfile::tempdir().expect("dir");
        let hour = 3_600_000;
        let mut store = Store::new(dir.path().to_owned(), 10_000, hour, 2 * hour, 0);
        for h in 0..5 {
            store
                .append(h * hour, vec![("a".into(), sample(1))])
                .expect("append");
        }
        store.close().expect("close");
        // At 5 h with a 2 h window, the chunks of hours 0, 1 and 2 end by 3 h.
        assert_eq!(store.prune(5 * hour).expect("prune"), 3);
        let left: Vec<Millis> = store
            .chunks()
            .expect("chunks")
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(left, vec![3 * hour, 4 * hour]);
    }
}
