//! Tests against real files in temp dirs with real fsync.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use crate::format::{
    segment_file_name, snapshot_file_name, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::*;

#[derive(Debug, Default)]
struct Replay {
    snapshot: Option<(Lsn, Vec<u8>)>,
    records: Vec<(Lsn, Vec<u8>)>,
}

fn open_with(options: WalOptions) -> Result<(Wal, RecoveryReport, Replay), WalError> {
    let mut replay = Replay::default();
    let (wal, report) = Wal::open(options, &mut |item| {
        match item {
            Replayed::Snapshot { lsn, bytes } => replay.snapshot = Some((lsn, bytes.to_vec())),
            Replayed::Record { lsn, bytes } => replay.records.push((lsn, bytes.to_vec())),
        }
        Ok(())
    })?;
    Ok((wal, report, replay))
}

fn open(dir: &Path) -> (Wal, RecoveryReport, Replay) {
    open_with(small_segments(dir)).expect("open")
}

fn small_segments(dir: &Path) -> WalOptions {
    let mut options = WalOptions::new(dir);
    options.segment_bytes_max = 256;
    options
}

fn record(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 17) as usize)).into_bytes()
}

fn append_all(wal: &Wal, records: impl IntoIterator<Item = Vec<u8>>) -> Vec<Lsn> {
    records
        .into_iter()
        .map(|bytes| wal.append(&bytes).expect("append"))
        .collect()
}

/// Waits for each record, so that every append is its own batch and segments roll often.
fn append_each_durable(wal: &Wal, records: impl IntoIterator<Item = Vec<u8>>) -> Vec<Lsn> {
    block_on(async {
        let mut lsns = Vec::new();
        for bytes in records {
            let lsn = wal.append(&bytes).expect("append");
            wal.wait_durable(lsn).await.expect("durable");
            lsns.push(lsn);
        }
        lsns
    })
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    paths.sort();
    paths
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

fn truncate(path: &Path, len: u64) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncate");
    file.set_len(len).expect("set_len");
}

fn frame_len(bytes: &[u8]) -> u64 {
    (FRAME_HEADER_BYTES + bytes.len()) as u64
}

fn dir_snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

#[test]
fn append_and_replay_round_trip_across_many_segment_rolls() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("wal");
    let (wal, report, replay) = open(&dir);
    assert_eq!(report.next_lsn, 0);
    assert!(replay.records.is_empty() && replay.snapshot.is_none());
    let expected: Vec<Vec<u8>> = (0..500).map(record).collect();
    for (i, bytes) in expected.iter().enumerate() {
        assert_eq!(wal.append(bytes).unwrap(), i as u64);
        if i % 7 == 0 {
            block_on(wal.wait_durable(i as u64)).unwrap();
        }
    }
    wal.close().unwrap();
    drop(wal);
    assert!(segment_paths(&dir).len() > 20, "expected many rolls");

    let (wal, report, replay) = open(&dir);
    assert_eq!(report.next_lsn, 500);
    assert_eq!(report.records_replayed, 500);
    assert_eq!(report.truncated_tail, None);
    assert_eq!(report.segments, segment_paths(&dir).len());
    let got: Vec<Vec<u8>> = replay
        .records
        .iter()
        .map(|(_, bytes)| bytes.clone())
        .collect();
    assert_eq!(got, expected);
    assert!(replay
        .records
        .iter()
        .enumerate()
        .all(|(i, (lsn, _))| *lsn == i as u64));
    assert_eq!(wal.append(b"after reopen").unwrap(), 500);
    drop(wal);
    let (_wal, report, replay) = open(&dir);
    assert_eq!(report.next_lsn, 501);
    assert_eq!(replay.records.last().unwrap().1, b"after reopen");
}

#[test]
fn concurrent_appenders_and_async_waiters_are_durable_and_replayed_in_lsn_order() {
    let temp = tempfile::tempdir().unwrap();
    let mut options = WalOptions::new(temp.path());
    options.segment_bytes_max = 4096;
    let (wal, _, _) = open_with(options.clone()).unwrap();
    const THREADS: u64 = 6;
    const PER_THREAD: u64 = 150;
    let mut threads = Vec::new();
    for thread in 0..THREADS {
        let wal = wal.clone();
        threads.push(std::thread::spawn(move || {
            block_on(async {
                for i in 0..PER_THREAD {
                    let lsn = wal.append(format!("t{thread}-{i}").as_bytes()).unwrap();
                    wal.wait_durable(lsn).await.unwrap();
                }
            })
        }));
    }
    // Async appenders on a multi-thread runtime too, waiting concurrently.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wal_async = Arc::new(wal.clone());
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..20u64 {
            let wal = Arc::clone(&wal_async);
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let lsn = wal.append(format!("a{task}-{i}").as_bytes()).unwrap();
                    wal.wait_durable(lsn).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    for thread in threads {
        thread.join().unwrap();
    }
    let total = THREADS * PER_THREAD + 200;
    assert_eq!(wal.next_lsn(), total);
    drop(wal_async);
    drop(wal);

    let (_wal, report, replay) = open_with(options).unwrap();
    assert_eq!(report.records_replayed, total);
    assert!(replay
        .records
        .iter()
        .enumerate()
        .all(|(i, (lsn, _))| *lsn == i as u64));
    // Each writer's records appear in the order it appended them.
    let mut next_per_writer = std::collections::HashMap::new();
    for (_, bytes) in &replay.records {
        let text = String::from_utf8(bytes.clone()).unwrap();
        let (writer, index) = text.split_once('-').unwrap();
        let index: u64 = index.parse().unwrap();
        let next = next_per_writer.entry(writer.to_string()).or_insert(0);
        assert_eq!(index, *next, "{writer} out of order");
        *next += 1;
    }
    assert_eq!(next_per_writer.len(), THREADS as usize + 20);
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_recovers_earlier_records_and_appends() {
    let source = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..5).map(record).collect();
    let (wal, _, _) = open_with(WalOptions::new(source.path())).unwrap();
    append_all(&wal, records.clone());
    wal.close().unwrap();
    drop(wal);
    let segment_name = segment_file_name(0);
    let full = std::fs::read(source.path().join(&segment_name)).unwrap();
    let last_start = full.len() as u64 - frame_len(&records[4]);

    for cut in last_start..full.len() as u64 {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join(&segment_name);
        std::fs::write(&path, &full[..cut as usize]).unwrap();
        let (wal, report, replay) = open_with(WalOptions::new(temp.path())).unwrap();
        assert_eq!(report.next_lsn, 4, "cut at {cut}");
        let got: Vec<Vec<u8>> = replay.records.into_iter().map(|(_, bytes)| bytes).collect();
        assert_eq!(got, records[..4]);
        if cut == last_start {
            assert_eq!(report.truncated_tail, None);
        } else {
            assert_eq!(
                report.truncated_tail,
                Some(TruncatedTail {
                    path: path.clone(),
                    offset: last_start,
                    bytes_dropped: cut - last_start
                })
            );
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start);
        assert_eq!(wal.append(b"replacement").unwrap(), 4);
        assert_eq!(wal.append(b"one more").unwrap(), 5);
        wal.close().unwrap();
        drop(wal);
        let (_wal, report, replay) = open_with(WalOptions::new(temp.path())).unwrap();
        assert_eq!(report.truncated_tail, None);
        assert_eq!(report.next_lsn, 6);
        assert_eq!(replay.records[4].1, b"replacement");
        assert_eq!(replay.records[5].1, b"one more");
    }
}

#[test]
fn torn_segment_header_tail_is_not_mistaken_for_a_record() {
    // A last segment holding only its header is a valid, empty segment.
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_all(&wal, (0..40).map(record));
    wal.close().unwrap();
    drop(wal);
    let last = segment_paths(temp.path()).pop().unwrap();
    let (_wal, report, _) = open(temp.path());
    assert_eq!(report.next_lsn, 40);
    assert!(std::fs::metadata(&last).unwrap().len() >= SEGMENT_HEADER_BYTES as u64);
}

#[test]
fn flipped_bit_in_a_middle_record_fails_open_with_file_and_offset() {
    let temp = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..10).map(record).collect();
    let (wal, _, _) = open_with(WalOptions::new(temp.path())).unwrap();
    append_all(&wal, records.clone());
    drop(wal);
    let path = temp.path().join(segment_file_name(0));
    let offset: u64 = SEGMENT_HEADER_BYTES as u64
        + records[..5]
            .iter()
            .map(|bytes| frame_len(bytes))
            .sum::<u64>();
    flip_bit(&path, offset + FRAME_HEADER_BYTES as u64 + 2);
    let before = dir_snapshot(temp.path());
    match open_with(WalOptions::new(temp.path())) {
        Err(WalError::Corrupt {
            path: bad_path,
            offset: bad_offset,
            reason,
        }) => {
            assert_eq!(bad_path, path);
            assert_eq!(bad_offset, offset);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report, _)| report)
        ),
    }
    assert_eq!(
        dir_snapshot(temp.path()),
        before,
        "a failed open must change nothing"
    );
    let message = open_with(WalOptions::new(temp.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.ends_with("run `sluice repair --data-dir <dir>` to inspect"),
        "{message}"
    );
}

#[test]
fn flipped_bit_in_the_last_record_is_truncated_as_a_torn_tail() {
    let temp = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..10).map(record).collect();
    let (wal, _, _) = open_with(WalOptions::new(temp.path())).unwrap();
    append_all(&wal, records.clone());
    drop(wal);
    let path = temp.path().join(segment_file_name(0));
    let len = std::fs::metadata(&path).unwrap().len();
    let last_start = len - frame_len(&records[9]);
    flip_bit(&path, last_start + FRAME_HEADER_BYTES as u64 + 1);
    let (wal, report, replay) = open_with(WalOptions::new(temp.path())).unwrap();
    assert_eq!(
        report.truncated_tail,
        Some(TruncatedTail {
            path: path.clone(),
            offset: last_start,
            bytes_dropped: len - last_start
        })
    );
    assert_eq!(replay.records.len(), 9);
    assert_eq!(wal.append(b"next").unwrap(), 9);
}

#[test]
fn flipped_bit_in_a_segment_that_is_not_the_last_fails_open() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_each_durable(&wal, (0..100).map(record));
    drop(wal);
    let segments = segment_paths(temp.path());
    assert!(segments.len() > 3);
    // The last byte of the second segment belongs to its last record.
    let victim = &segments[1];
    let len = std::fs::metadata(victim).unwrap().len();
    flip_bit(victim, len - 1);
    match open_with(small_segments(temp.path())) {
        Err(WalError::Corrupt { path, .. }) => assert_eq!(&path, victim),
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report, _)| report)
        ),
    }
}

#[test]
fn missing_middle_segment_fails_open() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_each_durable(&wal, (0..100).map(record));
    drop(wal);
    let segments = segment_paths(temp.path());
    std::fs::remove_file(&segments[2]).unwrap();
    match open_with(small_segments(temp.path())) {
        Err(WalError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, segments[3]);
            assert_eq!(offset, 0);
            assert!(reason.contains("LsnGap"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report, _)| report)
        ),
    }
}

#[test]
fn snapshot_replays_only_newer_records_and_removes_old_segments() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_each_durable(&wal, (0..200).map(record));
    let segments_before = segment_paths(temp.path()).len();
    wal.write_snapshot(150, b"state as of 150").unwrap();
    let segments_after = segment_paths(temp.path());
    assert!(segments_after.len() < segments_before);
    append_all(&wal, (200..220).map(record));
    wal.write_snapshot(180, b"state as of 180").unwrap();
    assert!(!temp.path().join(snapshot_file_name(150)).exists());
    assert!(temp.path().join(snapshot_file_name(180)).exists());
    drop(wal);

    let (wal, report, replay) = open(temp.path());
    assert_eq!(report.snapshot_lsn, Some(180));
    assert_eq!(replay.snapshot, Some((180, b"state as of 180".to_vec())));
    assert_eq!(report.records_replayed, 40);
    let expected: Vec<(Lsn, Vec<u8>)> = (180..220).map(|lsn| (lsn, record(lsn))).collect();
    assert_eq!(replay.records, expected);
    // The first remaining segment must hold lsn 180; none older than needed remain.
    let first = segment_paths(temp.path())[0].clone();
    let first_lsn: u64 = first
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first_lsn <= 180);
    assert!(
        inspect(temp.path()).unwrap().segments[0].first_lsn
            + inspect(temp.path()).unwrap().segments[0].records
            > 180
    );
    // A snapshot at the very end of the log, then reopen with nothing to replay.
    wal.write_snapshot(220, b"everything").unwrap();
    assert!(matches!(
        wal.write_snapshot(221, b"ahead"),
        Err(WalError::SnapshotLsnAhead { .. })
    ));
    drop(wal);
    let (_wal, report, replay) = open(temp.path());
    assert_eq!(report.snapshot_lsn, Some(220));
    assert_eq!(report.next_lsn, 220);
    assert!(replay.records.is_empty());
}

#[test]
fn snapshot_in_never_policy_still_fsyncs_the_records_it_covers() {
    let temp = tempfile::tempdir().unwrap();
    let mut options = small_segments(temp.path());
    options.fsync = FsyncPolicy::Never;
    let (wal, _, _) = open_with(options.clone()).unwrap();
    append_all(&wal, (0..50).map(record));
    wal.write_snapshot(50, b"all").unwrap();
    drop(wal);
    let (_wal, report, _) = open_with(options).unwrap();
    assert_eq!(report.snapshot_lsn, Some(50));
    assert_eq!(report.next_lsn, 50);
}

#[test]
fn corrupt_snapshot_whose_segments_are_gone_fails_open_naming_the_file() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_each_durable(&wal, (0..100).map(record));
    wal.write_snapshot(90, b"snapshot body").unwrap();
    drop(wal);
    let snapshot = temp.path().join(snapshot_file_name(90));
    let len = std::fs::metadata(&snapshot).unwrap().len();
    flip_bit(&snapshot, len - 1);
    match open_with(small_segments(temp.path())) {
        Err(error @ WalError::Corrupt { .. }) => {
            let WalError::Corrupt { path, reason, .. } = &error else {
                unreachable!()
            };
            assert_eq!(path, &snapshot);
            assert!(reason.contains("checksum"), "{reason}");
            assert!(error
                .to_string()
                .contains("snapshot-00000000000000000090.snap"));
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report, _)| report)
        ),
    }
    // Bad magic too.
    flip_bit(&snapshot, 0);
    assert!(matches!(
        open_with(small_segments(temp.path())),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_snapshot_falls_back_to_the_full_log_when_all_segments_remain() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_with(WalOptions::new(temp.path())).unwrap();
    append_all(&wal, (0..10).map(record));
    wal.write_snapshot(5, b"snap").unwrap();
    drop(wal);
    // One big segment: nothing was deleted, so lsn 0 onward is all there.
    flip_bit(&temp.path().join(snapshot_file_name(5)), 30);
    let (_wal, report, replay) = open_with(WalOptions::new(temp.path())).unwrap();
    assert_eq!(report.snapshot_lsn, None);
    assert_eq!(report.records_replayed, 10);
    assert!(replay.snapshot.is_none());
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_all(&wal, (0..3).map(record));
    drop(wal);
    let snapshot_temp = temp.path().join(format!("{}.tmp", snapshot_file_name(3)));
    let segment_temp = temp.path().join(format!("{}.tmp", segment_file_name(3)));
    std::fs::write(&snapshot_temp, b"half a snapshot").unwrap();
    std::fs::write(&segment_temp, b"SLWAL").unwrap();
    let report = inspect(temp.path()).unwrap();
    assert_eq!(report.temp_files.len(), 2);
    assert!(report.opens());
    let (_wal, report, replay) = open(temp.path());
    assert_eq!(report.next_lsn, 3);
    assert_eq!(replay.records.len(), 3);
    assert!(!snapshot_temp.exists() && !segment_temp.exists());
}

#[test]
fn inspect_and_repair_dry_run_change_nothing_and_apply_fixes_mid_log_corruption() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_each_durable(&wal, (0..100).map(record));
    drop(wal);
    let clean = inspect(temp.path()).unwrap();
    assert!(clean.problems.is_empty(), "{clean}");
    let segments = segment_paths(temp.path());
    let victim_index = 3;
    let victim = &segments[victim_index];
    let victim_info = clean.segments[victim_index].clone();
    // Corrupt the second record of the victim segment.
    let victim_bytes = std::fs::read(victim).unwrap();
    let first_frame_len = u32::from_le_bytes(victim_bytes[16..20].try_into().unwrap()) as u64
        + FRAME_HEADER_BYTES as u64;
    let bad_offset = SEGMENT_HEADER_BYTES as u64 + first_frame_len;
    flip_bit(victim, bad_offset + 5);
    let before = dir_snapshot(temp.path());

    let report = inspect(temp.path()).unwrap();
    assert!(!report.opens());
    let problem = report
        .problems
        .iter()
        .find(|problem| problem.blocks_open)
        .unwrap();
    assert_eq!(&problem.path, victim);
    assert_eq!(problem.offset, bad_offset);
    assert_eq!(problem.kind, ProblemKind::CorruptRecord);
    assert!(report.to_string().contains("CorruptRecord"));

    let dry = repair(temp.path(), false).unwrap();
    assert!(!dry.applied);
    assert_eq!(
        dir_snapshot(temp.path()),
        before,
        "dry run must change nothing"
    );
    let later_records: u64 = clean.segments[victim_index + 1..]
        .iter()
        .map(|s| s.records)
        .sum();
    let later_bytes: u64 = clean.segments[victim_index + 1..]
        .iter()
        .map(|s| s.file_bytes)
        .sum();
    // The bad record itself is not intact; the ones after it in the victim are.
    assert_eq!(dry.records_dropped, later_records + victim_info.records - 2);
    assert_eq!(
        dry.bytes_dropped,
        later_bytes + victim_info.file_bytes - bad_offset
    );
    assert_eq!(dry.next_lsn_after, Some(victim_info.first_lsn + 1));
    assert!(dry.to_string().contains("would"));

    let applied = repair(temp.path(), true).unwrap();
    assert!(applied.applied);
    assert_eq!(applied.actions, dry.actions);
    assert!(inspect(temp.path()).unwrap().problems.is_empty());
    let (wal, report, replay) = open(temp.path());
    assert_eq!(report.next_lsn, victim_info.first_lsn + 1);
    let expected: Vec<Vec<u8>> = (0..victim_info.first_lsn + 1).map(record).collect();
    let got: Vec<Vec<u8>> = replay.records.into_iter().map(|(_, bytes)| bytes).collect();
    assert_eq!(got, expected);
    assert_eq!(
        wal.append(b"after repair").unwrap(),
        victim_info.first_lsn + 1
    );
}

#[test]
fn fsync_failure_poisons_the_log_and_fails_appends_and_waiters() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    let first = wal.append(b"durable").unwrap();
    block_on(wal.wait_durable(first)).unwrap();
    wal.inject_fsync_failure();
    let doomed = wal.append(b"doomed").unwrap();
    assert!(matches!(
        block_on(wal.wait_durable(doomed)),
        Err(WalError::Poisoned)
    ));
    assert!(wal.is_poisoned());
    assert!(matches!(wal.append(b"refused"), Err(WalError::Poisoned)));
    // What was durable before the poisoning stays durable.
    block_on(wal.wait_durable(first)).unwrap();
    assert!(matches!(
        wal.write_snapshot(2, b"x"),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.close(), Err(WalError::Poisoned)));
    assert!(matches!(wal.close(), Err(WalError::Poisoned)));
    drop(wal);
    let (_wal, report, replay) = open(temp.path());
    assert!(report.next_lsn >= 1);
    assert_eq!(replay.records[0].1, b"durable");
}

#[test]
fn close_is_idempotent_flushes_pending_and_refuses_appends() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Batch { interval_ms: 50 },
        FsyncPolicy::Never,
    ] {
        let temp = tempfile::tempdir().unwrap();
        let mut options = small_segments(temp.path());
        options.fsync = policy;
        let (wal, _, _) = open_with(options.clone()).unwrap();
        let lsns = append_all(&wal, (0..30).map(record));
        block_on(wal.wait_durable(*lsns.last().unwrap())).unwrap();
        append_all(&wal, (30..60).map(record));
        wal.close().unwrap();
        wal.close().unwrap();
        assert_eq!(wal.pending_bytes(), 0);
        assert!(matches!(wal.append(b"late"), Err(WalError::Closed)));
        block_on(wal.wait_durable(59)).unwrap();
        drop(wal);
        let (_wal, report, _) = open_with(options).unwrap();
        assert_eq!(report.next_lsn, 60, "{policy:?}");
    }
}

#[test]
fn batch_policy_fsyncs_on_its_interval_without_further_appends() {
    let temp = tempfile::tempdir().unwrap();
    let mut options = WalOptions::new(temp.path());
    options.fsync = FsyncPolicy::Batch { interval_ms: 5 };
    let (wal, _, _) = open_with(options).unwrap();
    let lsn = wal.append(b"one").unwrap();
    block_on(wal.wait_durable(lsn)).unwrap();
    // write_snapshot needs lsn 1 fdatasync'd: either the timer or the request does it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    wal.write_snapshot(1, b"s").unwrap();
}

#[test]
fn limits_and_misuse_are_clear_errors() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    let too_large = vec![0u8; RECORD_BYTES_MAX + 1];
    assert!(matches!(
        wal.append(&too_large),
        Err(WalError::RecordTooLarge { len }) if len == RECORD_BYTES_MAX + 1
    ));
    assert!(matches!(
        block_on(wal.wait_durable(0)),
        Err(WalError::LsnNotAppended {
            lsn: 0,
            next_lsn: 0
        })
    ));
    assert_eq!(wal.append(b"").unwrap(), 0);
    block_on(wal.wait_durable(0)).unwrap();
    assert_eq!(wal.dir(), temp.path());
}

#[test]
fn replay_error_fails_open_naming_the_lsn() {
    let temp = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(temp.path());
    append_all(&wal, (0..10).map(record));
    drop(wal);
    let result = Wal::open(small_segments(temp.path()), &mut |item| match item {
        Replayed::Record { lsn: 7, .. } => Err("bad event".to_string()),
        _ => Ok(()),
    });
    match result {
        Err(WalError::Replay { lsn, message }) => {
            assert_eq!(lsn, 7);
            assert_eq!(message, "bad event");
        }
        other => panic!("expected Replay, got {:?}", other.map(|(_, report)| report)),
    }
}

// ---- model-based test ----

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    Reopen,
    /// Cut this many bytes (scaled into the last frame) off the end of the log.
    TearLastRecord(u16),
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..100).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => any::<u16>().prop_map(Op::TearLastRecord),
        1 => Just(Op::Snapshot),
    ]
}

fn encode_model(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for bytes in records {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn check_replay(model: &[Vec<u8>], snapshot_lsn: Option<Lsn>, replay: &Replay) {
    let start = snapshot_lsn.unwrap_or(0);
    match snapshot_lsn {
        Some(lsn) => assert_eq!(
            replay.snapshot,
            Some((lsn, encode_model(&model[..lsn as usize])))
        ),
        None => assert!(replay.snapshot.is_none()),
    }
    let expected: Vec<(Lsn, Vec<u8>)> = model[start as usize..]
        .iter()
        .enumerate()
        .map(|(i, bytes)| (start + i as u64, bytes.clone()))
        .collect();
    assert_eq!(replay.records, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_appends_reopens_and_tears_match_a_vec_model(
        ops in proptest::collection::vec(op(), 1..40),
        never in any::<bool>(),
    ) {
        let temp = tempfile::tempdir().unwrap();
        let mut options = WalOptions::new(temp.path());
        options.segment_bytes_max = 200;
        options.fsync = if never { FsyncPolicy::Never } else { FsyncPolicy::Always };
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut snapshot_lsn: Option<Lsn> = None;
        let (mut wal, _, _) = open_with(options.clone()).unwrap();
        for op in ops {
            match op {
                Op::Append(bytes) => {
                    prop_assert_eq!(wal.append(&bytes).unwrap(), model.len() as u64);
                    model.push(bytes);
                }
                Op::Snapshot => {
                    let lsn = model.len() as u64;
                    wal.write_snapshot(lsn, &encode_model(&model)).unwrap();
                    snapshot_lsn = Some(lsn);
                }
                Op::Reopen | Op::TearLastRecord(_) => {
                    wal.close().unwrap();
                    drop(wal);
                    if let Op::TearLastRecord(raw) = op {
                        let last_segment = segment_paths(temp.path()).pop().unwrap();
                        let len = std::fs::metadata(&last_segment).unwrap().len();
                        let tearable = model.last().is_some_and(|_| {
                            len > SEGMENT_HEADER_BYTES as u64
                                && (model.len() as u64 - 1) >= snapshot_lsn.unwrap_or(0)
                        });
                        if tearable {
                            let frame = frame_len(model.last().unwrap());
                            let cut = 1 + u64::from(raw) % frame;
                            truncate(&last_segment, len - cut);
                            model.pop();
                        }
                    }
                    let (reopened, report, replay) = open_with(options.clone()).unwrap();
                    prop_assert_eq!(report.next_lsn, model.len() as u64);
                    prop_assert_eq!(report.snapshot_lsn, snapshot_lsn);
                    check_replay(&model, snapshot_lsn, &replay);
                    wal = reopened;
                }
            }
        }
        wal.close().unwrap();
        drop(wal);
        let (_wal, _, replay) = open_with(options).unwrap();
        check_replay(&model, snapshot_lsn, &replay);
    }
}

// ---- regressions found by the fuzz targets (fuzz/, docs/reliability.md "Fuzzing") -------

/// fuzz `wal_frames`: a segment named for lsn u64::MAX holding a valid frame at that lsn
/// made the scan overflow `expected += 1` (a panic in debug builds, a wrapped record count
/// in release). The frame is now corrupt: open refuses to start instead.
#[test]
fn frame_at_lsn_u64_max_is_corrupt_not_an_overflow() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join(segment_file_name(Lsn::MAX));
    let mut bytes = crate::format::encode_segment_header(Lsn::MAX).to_vec();
    crate::format::encode_frame(&mut bytes, Lsn::MAX, b"last");
    std::fs::write(&path, &bytes).unwrap();

    let scan = crate::fuzzing::scan_segment(Lsn::MAX, &bytes, true);
    assert_eq!(scan.records, 0);
    assert_eq!(scan.valid_bytes, SEGMENT_HEADER_BYTES as u64);
    assert!(matches!(
        scan.problem,
        Some((offset, ProblemKind::CorruptRecord, _)) if offset == SEGMENT_HEADER_BYTES as u64
    ));
    match open_with(WalOptions::new(temp.path())) {
        Err(WalError::Corrupt {
            path: bad, reason, ..
        }) => {
            assert_eq!(bad, path);
            assert!(reason.contains("last usable lsn"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report, _)| report)
        ),
    }
}
