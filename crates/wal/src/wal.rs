//! The live log: recovery on open, appends, the group-commit writer thread, snapshots.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::format::{
    decode_frame, decode_snapshot, encode_frame, encode_segment_header, encode_snapshot_header,
    segment_file_name, snapshot_file_name, temp_path, Frame, RECORD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
};
use crate::scan::{analyze, list_dir, ProblemKind};
use crate::{
    fsync_dir, io_err, Fs, FsFile, FsyncPolicy, Lsn, RecoveryReport, Replayed, TruncatedTail,
    WalError, WalOptions,
};

/// The writer keeps its spare buffer between batches, but not a huge one.
const SPARE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A handle to an open log. Cheap to clone; the log closes when the last handle drops.
#[derive(Clone)]
pub struct Wal {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Serializes `write_snapshot` calls.
    snapshot_lock: Mutex<()>,
}

struct Shared {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    policy: FsyncPolicy,
    state: Mutex<State>,
    /// Wakes the writer: new records, a sync request, or close.
    writer_wake: Condvar,
    /// Wakes blocking waiters (`write_snapshot`) after the writer publishes progress.
    progress: Condvar,
    /// Progress for async waiters.
    durable_tx: watch::Sender<Durable>,
    /// Segment files oldest first; the last one is the active segment.
    segments: Mutex<Vec<(Lsn, PathBuf)>>,
    fail_next_fsync: AtomicBool,
    /// fdatasync latencies of the log (not of snapshots): counts per bucket, sum, count.
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len()],
    fsync_sum_us: AtomicU64,
    fsync_count: AtomicU64,
}

/// Upper bounds of the fsync latency buckets, in microseconds: 100 µs to 1 s, as a local
/// SSD (tens of µs to a few ms) and a struggling network disk (hundreds of ms) span.
pub const FSYNC_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// What the log has done since it was opened, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasyncs of the log per bucket of `FSYNC_BUCKETS_US` (each counted once, in the
    /// first bucket it fits; slower ones only in the count).
    pub fsync_buckets: [u64; FSYNC_BUCKETS_US.len()],
    pub fsync_sum_us: u64,
    pub fsync_count: u64,
    /// Segment files now, oldest first.
    pub segments: Vec<PathBuf>,
}

struct State {
    /// Encoded frames appended but not yet taken by the writer.
    pending: Vec<u8>,
    next_lsn: Lsn,
    /// Every lsn below this has been written to the OS.
    written_end: Lsn,
    /// Every lsn below this has been fdatasync'd.
    synced_end: Lsn,
    /// The writer fdatasyncs until `synced_end` reaches this, whatever the policy.
    sync_requested_end: Lsn,
    poisoned: bool,
    closing: bool,
    writer_exited: bool,
}

#[derive(Clone, Copy, Debug)]
struct Durable {
    /// Every lsn below this is durable per the policy.
    end: Lsn,
    poisoned: bool,
    closed: bool,
}

impl Wal {
    /// Creates the dir if missing, loads the newest usable snapshot (calling `f` with
    /// [`Replayed::Snapshot`]), then replays every record with lsn >= the snapshot lsn in
    /// order (calling `f` with [`Replayed::Record`]). A torn tail of the last segment is
    /// truncated; any other damage fails with [`WalError::Corrupt`]. If `f` returns
    /// `Err(message)`, open fails with [`WalError::Replay`]. Then starts the writer thread.
    pub fn open(
        options: WalOptions,
        f: &mut dyn FnMut(Replayed<'_>) -> Result<(), String>,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        let dir = options.dir.clone();
        let fs = Arc::clone(&options.fs);
        let fs = &*fs;
        if !fs.is_dir(&dir) {
            fs.create_dir_all(&dir).map_err(io_err(&dir))?;
            if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                fsync_dir(fs, parent)?;
            }
        }
        let analysis = analyze(fs, &dir)?;
        if let Some(problem) = analysis.first_blocking() {
            return Err(WalError::Corrupt {
                path: problem.path.clone(),
                offset: problem.offset,
                reason: format!("{:?}: {}", problem.kind, problem.detail),
            });
        }
        for problem in &analysis.problems {
            if problem.kind == ProblemKind::CorruptSnapshot {
                tracing::warn!(path = %problem.path.display(), "ignoring corrupt snapshot: {}", problem.detail);
            }
        }
        if !analysis.listing.temps.is_empty() {
            for temp in &analysis.listing.temps {
                tracing::info!(path = %temp.display(), "removing leftover temp file");
                fs.remove_file(temp).map_err(io_err(temp))?;
            }
            fsync_dir(fs, &dir)?;
        }

        // Cut the torn tail before replay, so what is replayed is exactly what stays.
        let mut truncated_tail = None;
        if let Some(last) = analysis.segments.last() {
            if let Some(problem) = &last.problem {
                debug_assert_eq!(problem.kind, ProblemKind::TornTail);
                let bytes_dropped = last.file_bytes - last.valid_bytes;
                tracing::warn!(
                    path = %last.path.display(),
                    offset = last.valid_bytes,
                    bytes_dropped,
                    "truncating torn tail of the write-ahead log: {}",
                    problem.detail
                );
                fs.truncate(&last.path, last.valid_bytes)
                    .map_err(io_err(&last.path))?;
                truncated_tail = Some(TruncatedTail {
                    path: last.path.clone(),
                    offset: last.valid_bytes,
                    bytes_dropped,
                });
            }
        }

        let snapshot_lsn = analysis.snapshot_lsn();
        if let Some(index) = analysis.chosen_snapshot {
            let snapshot = &analysis.snapshots[index];
            let bytes = fs.read(&snapshot.path).map_err(io_err(&snapshot.path))?;
            let (lsn, body) =
                decode_snapshot(&bytes).map_err(|(offset, reason)| WalError::Corrupt {
                    path: snapshot.path.clone(),
                    offset,
                    reason,
                })?;
            f(Replayed::Snapshot { lsn, bytes: body })
                .map_err(|message| WalError::Replay { lsn, message })?;
        }
        let replay_from = snapshot_lsn.unwrap_or(0);
        let mut records_replayed = 0;
        for segment in &analysis.segments {
            if segment.end_lsn() <= replay_from {
                continue;
            }
            let bytes = fs.read(&segment.path).map_err(io_err(&segment.path))?;
            let valid_bytes = usize::try_from(segment.valid_bytes).unwrap_or(usize::MAX);
            let bytes = bytes.get(..valid_bytes).ok_or_else(|| WalError::Corrupt {
                path: segment.path.clone(),
                offset: bytes.len() as u64,
                reason: "segment shrank during recovery".to_string(),
            })?;
            let mut offset = SEGMENT_HEADER_BYTES;
            let mut expected = segment.first_lsn;
            while offset < bytes.len() {
                match decode_frame(&bytes[offset..]) {
                    Frame::Valid {
                        lsn,
                        payload,
                        frame_bytes,
                    } if lsn == expected => {
                        if lsn >= replay_from {
                            f(Replayed::Record {
                                lsn,
                                bytes: payload,
                            })
                            .map_err(|message| WalError::Replay { lsn, message })?;
                            records_replayed += 1;
                        }
                        expected += 1;
                        offset += frame_bytes;
                    }
                    _ => {
                        return Err(WalError::Corrupt {
                            path: segment.path.clone(),
                            offset: offset as u64,
                            reason: "segment changed during recovery".to_string(),
                        })
                    }
                }
            }
        }

        let mut segments: Vec<(Lsn, PathBuf)> = analysis
            .segments
            .iter()
            .map(|segment| (segment.first_lsn, segment.path.clone()))
            .collect();
        let (next_lsn, file, active_path, active_bytes) = match analysis.segments.last() {
            Some(last) => {
                let mut file = fs.open_append(&last.path).map_err(io_err(&last.path))?;
                // What was replayed may have been only in the page cache of a killed process:
                // the records, and the names of the files that hold them (a process killed
                // between a segment's rename and the directory sync leaves a segment whose
                // name a power cut would still lose, with everything acked into it later).
                file.sync_data().map_err(io_err(&last.path))?;
                fsync_dir(fs, &dir)?;
                (last.end_lsn(), file, last.path.clone(), last.valid_bytes)
            }
            None => {
                let next_lsn = replay_from;
                let path = dir.join(segment_file_name(next_lsn));
                let file = create_segment(fs, &dir, &path, next_lsn)?;
                segments.push((next_lsn, path.clone()));
                (next_lsn, file, path, SEGMENT_HEADER_BYTES as u64)
            }
        };
        let report = RecoveryReport {
            snapshot_lsn,
            records_replayed,
            next_lsn,
            truncated_tail,
            segments: segments.len(),
        };

        let (durable_tx, _) = watch::channel(Durable {
            end: next_lsn,
            poisoned: false,
            closed: false,
        });
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            fs: Arc::clone(&options.fs),
            policy: options.fsync,
            state: Mutex::new(State {
                pending: Vec::new(),
                next_lsn,
                written_end: next_lsn,
                synced_end: next_lsn,
                sync_requested_end: next_lsn,
                poisoned: false,
                closing: false,
                writer_exited: false,
            }),
            writer_wake: Condvar::new(),
            progress: Condvar::new(),
            durable_tx,
            segments: Mutex::new(segments),
            fail_next_fsync: AtomicBool::new(false),
            fsync_buckets: Default::default(),
            fsync_sum_us: AtomicU64::new(0),
            fsync_count: AtomicU64::new(0),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            file,
            active_path,
            active_bytes,
            segment_bytes_max: options.segment_bytes_max,
            spare: Vec::new(),
            written_end: next_lsn,
            synced_end: next_lsn,
            last_sync: Instant::now(),
        };
        let join = std::thread::Builder::new()
            .name("sluice-wal-writer".to_string())
            .spawn(move || writer.run())
            .map_err(io_err(&dir))?;
        let wal = Wal {
            handle: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(join)),
                snapshot_lock: Mutex::new(()),
            }),
        };
        Ok((wal, report))
    }

    /// Copies `bytes` into the pending buffer, assigns the next lsn and wakes the writer.
    /// Never waits for I/O.
    pub fn append(&self, bytes: &[u8]) -> Result<Lsn, WalError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge { len: bytes.len() });
        }
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        if state.poisoned {
            return Err(WalError::Poisoned);
        }
        if state.closing {
            return Err(WalError::Closed);
        }
        let lsn = state.next_lsn;
        let was_empty = state.pending.is_empty();
        encode_frame(&mut state.pending, lsn, bytes);
        state.next_lsn += 1;
        drop(state);
        if was_empty {
            shared.writer_wake.notify_one();
        }
        Ok(lsn)
    }

    /// Resolves once record `lsn` is durable per the policy: `Always` = fdatasync'd;
    /// `Batch`/`Never` = written to the OS. Fails with `Poisoned` if the log was poisoned
    /// before that, and with `LsnNotAppended` for an lsn not yet handed out.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let mut receiver = shared.durable_tx.subscribe();
        let next_lsn = self.next_lsn();
        if lsn >= next_lsn {
            return Err(WalError::LsnNotAppended { lsn, next_lsn });
        }
        loop {
            let durable = *receiver.borrow_and_update();
            if lsn < durable.end {
                return Ok(());
            }
            if durable.poisoned {
                return Err(WalError::Poisoned);
            }
            if durable.closed {
                return Err(WalError::Closed);
            }
            if receiver.changed().await.is_err() {
                return Err(WalError::Closed);
            }
        }
    }

    /// The lsn the next append will get.
    pub fn next_lsn(&self) -> Lsn {
        self.handle.shared.state.lock().next_lsn
    }

    /// Bytes appended but not yet taken by the writer (for backpressure).
    pub fn pending_bytes(&self) -> usize {
        self.handle.shared.state.lock().pending.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.handle.shared.state.lock().poisoned
    }

    /// fsync latencies and segment files, for metrics.
    pub fn stats(&self) -> WalStats {
        let shared = &self.handle.shared;
        let mut fsync_buckets = [0; FSYNC_BUCKETS_US.len()];
        for (out, bucket) in fsync_buckets.iter_mut().zip(&shared.fsync_buckets) {
            *out = bucket.load(Ordering::Relaxed);
        }
        WalStats {
            fsync_buckets,
            fsync_sum_us: shared.fsync_sum_us.load(Ordering::Relaxed),
            fsync_count: shared.fsync_count.load(Ordering::Relaxed),
            segments: shared
                .segments
                .lock()
                .iter()
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.handle.shared.dir
    }

    /// Blocking (call from `spawn_blocking` in async code). Makes every record < `lsn`
    /// fdatasync'd, whatever the policy, then writes the snapshot atomically (temp file,
    /// fsync, rename, fsync dir), then deletes every other snapshot and every segment whose
    /// records are all < `lsn` (never the active one).
    pub fn write_snapshot(&self, lsn: Lsn, bytes: &[u8]) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let _serial = self.handle.snapshot_lock.lock();
        {
            let mut state = shared.state.lock();
            if state.poisoned {
                return Err(WalError::Poisoned);
            }
            if lsn > state.next_lsn {
                return Err(WalError::SnapshotLsnAhead {
                    lsn,
                    next_lsn: state.next_lsn,
                });
            }
            if state.synced_end < lsn {
                state.sync_requested_end = state.sync_requested_end.max(lsn);
                shared.writer_wake.notify_one();
                while state.synced_end < lsn {
                    if state.poisoned {
                        return Err(WalError::Poisoned);
                    }
                    if state.writer_exited {
                        return Err(WalError::Closed);
                    }
                    shared.progress.wait(&mut state);
                }
            }
        }

        let dir = &shared.dir;
        let fs = &*shared.fs;
        let path = dir.join(snapshot_file_name(lsn));
        let temp = temp_path(&path);
        let written = (|| {
            let mut file = fs.create(&temp).map_err(io_err(&temp))?;
            file.write_all(&encode_snapshot_header(lsn, bytes))
                .map_err(io_err(&temp))?;
            file.write_all(bytes).map_err(io_err(&temp))?;
            file.sync_all().map_err(io_err(&temp))?;
            fs.rename(&temp, &path).map_err(io_err(&path))
        })();
        if let Err(error) = written {
            // A failed snapshot is not fatal, but its temp file would hold its disk space
            // until the next open, and the next attempt (a new lsn, a new name) would add
            // another: on a full disk that starves the log itself. Remove it now.
            let _ = fs.remove_file(&temp);
            return Err(error);
        }
        fsync_dir(fs, dir)?;

        // Older files go only once the new snapshot is durable.
        for (_, other) in list_dir(fs, dir)?.snapshots {
            if other != path {
                fs.remove_file(&other).map_err(io_err(&other))?;
            }
        }
        {
            let mut segments = shared.segments.lock();
            // Oldest first, so a crash part way leaves a contiguous run of segments.
            while segments.len() >= 2 && segments[1].0 <= lsn {
                let (_, old) = segments.remove(0);
                fs.remove_file(&old).map_err(io_err(&old))?;
            }
        }
        fsync_dir(fs, dir)
    }

    /// Blocking: writes and fdatasyncs everything pending (in every policy) and stops the
    /// writer thread. Idempotent. Fails with `Poisoned` if the log is poisoned.
    pub fn close(&self) -> Result<(), WalError> {
        self.handle.close()
    }

    /// Test hook: the next fdatasync of the log fails, which poisons it.
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.handle
            .shared
            .fail_next_fsync
            .store(true, Ordering::SeqCst);
    }
}

impl Handle {
    fn close(&self) -> Result<(), WalError> {
        {
            let mut state = self.shared.state.lock();
            state.closing = true;
        }
        self.shared.writer_wake.notify_one();
        let join = self.writer.lock().take();
        if let Some(join) = join {
            if join.join().is_err() {
                tracing::error!("write-ahead log writer thread panicked");
                let mut state = self.shared.state.lock();
                state.poisoned = true;
                state.writer_exited = true;
            }
        }
        if self.shared.state.lock().poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Best effort; a poisoned log has already logged its error.
        let _ = self.close();
    }
}

/// Creates a segment atomically: temp file with the header, fsync, rename, fsync dir.
fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    path: &Path,
    first_lsn: Lsn,
) -> Result<Box<dyn FsFile>, WalError> {
    let temp = temp_path(path);
    let mut file = fs.create(&temp).map_err(io_err(&temp))?;
    file.write_all(&encode_segment_header(first_lsn))
        .map_err(io_err(&temp))?;
    file.sync_all().map_err(io_err(&temp))?;
    fs.rename(&temp, path).map_err(io_err(path))?;
    fsync_dir(fs, dir)?;
    // The handle stays valid across the rename and is positioned after the header.
    Ok(file)
}

struct Writer {
    shared: Arc<Shared>,
    file: Box<dyn FsFile>,
    active_path: PathBuf,
    active_bytes: u64,
    segment_bytes_max: u64,
    spare: Vec<u8>,
    written_end: Lsn,
    synced_end: Lsn,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self) {
        let interval = match self.shared.policy {
            FsyncPolicy::Batch { interval_ms } => Some(Duration::from_millis(interval_ms)),
            FsyncPolicy::Always | FsyncPolicy::Never => None,
        };
        loop {
            let mut batch = std::mem::take(&mut self.spare);
            let (batch_end, closing, sync_requested, batch_due) = {
                let mut state = self.shared.state.lock();
                let mut batch_due = false;
                loop {
                    if !state.pending.is_empty()
                        || state.closing
                        || state.sync_requested_end > self.synced_end
                    {
                        break;
                    }
                    match interval {
                        Some(interval) if self.written_end > self.synced_end => {
                            let deadline = self.last_sync + interval;
                            if Instant::now() >= deadline {
                                batch_due = true;
                                break;
                            }
                            self.shared.writer_wake.wait_until(&mut state, deadline);
                        }
                        _ => self.shared.writer_wake.wait(&mut state),
                    }
                }
                std::mem::swap(&mut state.pending, &mut batch);
                (
                    state.next_lsn,
                    state.closing,
                    state.sync_requested_end > self.synced_end,
                    batch_due,
                )
            };

            if !batch.is_empty() {
                if let Err(error) = self.file.write_all(&batch) {
                    self.poison("write", error);
                    return;
                }
                self.active_bytes += batch.len() as u64;
                self.written_end = batch_end;
            }
            batch.clear();
            if batch.capacity() > SPARE_BUFFER_BYTES_MAX {
                batch = Vec::new();
            }
            self.spare = batch;

            let roll = self.active_bytes >= self.segment_bytes_max
                && self.active_bytes > SEGMENT_HEADER_BYTES as u64;
            let batch_due =
                batch_due || interval.is_some_and(|interval| self.last_sync.elapsed() >= interval);
            let sync = self.written_end > self.synced_end
                && (self.shared.policy == FsyncPolicy::Always
                    || closing
                    || sync_requested
                    || batch_due
                    || roll);
            if sync {
                if let Err(error) = self.sync() {
                    self.poison("fdatasync", error);
                    return;
                }
            }
            if roll {
                let path = self.shared.dir.join(segment_file_name(self.written_end));
                match create_segment(&*self.shared.fs, &self.shared.dir, &path, self.written_end) {
                    Ok(file) => {
                        tracing::debug!(path = %path.display(), "rolled to a new segment");
                        self.file = file;
                        self.active_path = path.clone();
                        self.active_bytes = SEGMENT_HEADER_BYTES as u64;
                        self.shared.segments.lock().push((self.written_end, path));
                    }
                    Err(error) => {
                        self.poison_with("segment roll", &error.to_string());
                        return;
                    }
                }
            }

            let mut state = self.shared.state.lock();
            state.written_end = self.written_end;
            state.synced_end = self.synced_end;
            let finished = closing && state.pending.is_empty();
            if finished {
                state.writer_exited = true;
            }
            let end = match self.shared.policy {
                FsyncPolicy::Always => self.synced_end,
                FsyncPolicy::Batch { .. } | FsyncPolicy::Never => self.written_end,
            };
            self.shared.durable_tx.send_replace(Durable {
                end,
                poisoned: false,
                closed: finished,
            });
            drop(state);
            self.shared.progress.notify_all();
            if finished {
                return;
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.shared.fail_next_fsync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let started = Instant::now();
        self.file.sync_data()?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let shared = &self.shared;
        if let Some(i) = FSYNC_BUCKETS_US.iter().position(|&le| micros <= le) {
            shared.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        shared.fsync_sum_us.fetch_add(micros, Ordering::Relaxed);
        shared.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.synced_end = self.written_end;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn poison(&self, operation: &str, error: io::Error) {
        self.poison_with(operation, &error.to_string());
    }

    /// After a failed write or fsync the page cache may hold data the disk never got, and
    /// a retried fsync can report success without it: refuse everything from now on.
    fn poison_with(&self, operation: &str, error: &str) {
        tracing::error!(
            path = %self.active_path.display(),
            error,
            "write-ahead log {operation} failed; the log is poisoned and refuses all appends until restart"
        );
        let mut state = self.shared.state.lock();
        state.poisoned = true;
        state.writer_exited = true;
        state.pending = Vec::new();
        state.written_end = self.written_end;
        state.synced_end = self.synced_end;
        self.shared
            .durable_tx
            .send_modify(|durable| durable.poisoned = true);
        drop(state);
        self.shared.progress.notify_all();
    }
}
