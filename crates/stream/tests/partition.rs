//! A partition on the real file system: appends across segment rolls, reads from any
//! offset, reopening, torn and damaged tails, reads by time, retention, and a model test.

use std::path::Path;

use proptest::prelude::*;
use sluice_stream::{Partition, PartitionConfig, Record, StreamError};

fn record(n: u64) -> Record {
    Record {
        timestamp_ms: 1_000 + n as i64 * 10,
        key: (!n.is_multiple_of(3)).then(|| format!("key-{}", n % 7).into_bytes()),
        value: Some(format!("value-{n}-{}", "x".repeat((n % 50) as usize)).into_bytes()),
        headers: if n.is_multiple_of(5) {
            vec![("n".into(), n.to_le_bytes().to_vec())]
        } else {
            Vec::new()
        },
    }
}

fn small() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 2_000,
        index_interval_bytes: 300,
    }
}

fn open(dir: &Path) -> Partition {
    Partition::open(dir, small()).expect("open").0
}

/// Appends records 0..n in batches of 1 to 4.
fn fill(partition: &mut Partition, n: u64) {
    let mut next = partition.next_offset();
    while next < n {
        let len = (next % 4 + 1).min(n - next);
        let records: Vec<Record> = (next..next + len).map(record).collect();
        assert_eq!(
            partition
                .append(&records, 0, 0)
                .expect("append")
                .base_offset,
            next
        );
        next += len;
    }
    partition.sync().expect("sync");
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn records_read_back_from_any_offset_across_segments_and_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 300);
    assert!(
        segment_files(dir.path()).len() > 5,
        "{:?}",
        segment_files(dir.path())
    );
    for from in [0, 1, 37, 150, 298, 299] {
        let got = partition.read(from, usize::MAX).expect("read");
        assert_eq!(got.len() as u64, 300 - from, "from {from}");
        for (offset, r) in &got {
            assert_eq!(r, &record(*offset));
        }
    }
    assert!(partition.read(300, 1_000).expect("read").is_empty());
    // max_bytes bounds a read by whole batches, but one batch always comes.
    let few = partition.read(0, 1).expect("read");
    assert!(!few.is_empty() && few.len() <= 4, "{}", few.len());
    drop(partition);

    let (mut partition, recovery) = Partition::open(dir.path(), small()).expect("reopen");
    assert_eq!((recovery.next_offset, recovery.truncated_bytes), (300, 0));
    assert_eq!(partition.read(123, usize::MAX).expect("read").len(), 177);
    assert_eq!(
        partition
            .append(&[record(300)], 0, 0)
            .expect("append")
            .base_offset,
        300
    );
}

#[test]
fn a_torn_or_damaged_tail_is_cut_off_and_the_log_goes_on_from_there() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 20);
    let last_good = partition.next_offset();
    let torn = [record(20), record(21), record(22)];
    partition.append(&torn, 0, 0).expect("append");
    partition.sync().expect("sync");
    drop(partition);
    let segment = dir
        .path()
        .join(segment_files(dir.path()).last().expect("a segment"));
    let whole = std::fs::read(&segment).expect("read");
    let batch_len = sluice_stream::batch::encode(last_good, 0, 0, &torn).len();
    let before = whole.len() - batch_len;
    // Cut at every byte of the last batch: the earlier records stay, the batch goes.
    for cut in before..whole.len() {
        std::fs::write(&segment, &whole[..cut]).expect("write");
        let (p, recovery) = Partition::open(dir.path(), small()).expect("open");
        assert_eq!(p.next_offset(), last_good, "cut {cut}");
        assert_eq!(recovery.truncated_bytes, (cut - before) as u64, "cut {cut}");
        assert_eq!(
            std::fs::metadata(&segment).expect("meta").len(),
            before as u64
        );
        assert_eq!(p.read(0, usize::MAX).expect("read").len() as u64, last_good);
    }
    // A flipped byte in the last batch: the same.
    let mut flipped = whole.clone();
    flipped[whole.len() - 5] ^= 0xff;
    std::fs::write(&segment, &flipped).expect("write");
    let (mut p, recovery) = Partition::open(dir.path(), small()).expect("open");
    assert_eq!(p.next_offset(), last_good);
    assert_eq!(recovery.truncated_bytes, batch_len as u64);
    // And the log goes on from there.
    assert_eq!(
        p.append(&[record(99)], 0, 0).expect("append").base_offset,
        last_good
    );
    assert_eq!(
        p.read(last_good, usize::MAX).expect("read")[0].1,
        record(99)
    );
    // Whole, nothing is cut.
    drop(p);
    std::fs::write(&segment, &whole).expect("write");
    let (p, recovery) = Partition::open(dir.path(), small()).expect("open");
    assert_eq!(
        (p.next_offset(), recovery.truncated_bytes),
        (last_good + 3, 0)
    );
}

#[test]
fn damage_in_an_older_segment_is_an_error_not_a_silent_skip() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 200);
    drop(partition);
    let first = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(&first, &bytes).expect("write");
    match Partition::open(dir.path(), small()) {
        Err(StreamError::Corrupt { path, .. }) => assert_eq!(path, first),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a damaged older segment opened"),
    }
}

#[test]
fn offsets_are_found_by_time() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 300);
    // Record n has timestamp 1000 + 10 n.
    for (time, offset) in [
        (0, Some(0)),
        (1_000, Some(0)),
        (1_005, Some(1)),
        (2_500, Some(150)),
        (3_990, Some(299)),
    ] {
        assert_eq!(
            partition.offset_for_time(time).expect("time"),
            offset,
            "{time}"
        );
    }
    assert_eq!(partition.offset_for_time(3_991).expect("time"), None);
}

#[test]
fn retention_drops_whole_old_segments_by_size_and_age() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 300);
    let segments = segment_files(dir.path()).len();
    let bytes = partition.bytes();
    assert!(partition.retain(0, None, Some(bytes / 2)).expect("retain") > 0);
    assert!(partition.bytes() <= bytes / 2);
    let earliest = partition.earliest_offset();
    assert!(earliest > 0);
    assert!(segment_files(dir.path()).len() < segments);
    match partition.read(0, 10) {
        Err(StreamError::OffsetOutOfRange { earliest: e, .. }) => assert_eq!(e, earliest),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        partition.read(earliest, usize::MAX).expect("read").len() as u64,
        300 - earliest
    );
    // By age: everything older than 1 ms before a time far ahead goes, but the active
    // segment stays.
    partition
        .retain(i64::MAX / 2, Some(1), None)
        .expect("retain");
    assert_eq!(segment_files(dir.path()).len(), 1);
    let (reopened, _) = Partition::open(dir.path(), small()).expect("reopen");
    assert_eq!(reopened.earliest_offset(), partition.earliest_offset());
    assert_eq!(reopened.next_offset(), 300);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Reopen,
    Retain(u16),
    Read(u16, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..6).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => (0u16..4_000).prop_map(Op::Retain),
        3 => (0u16..400, 1u16..3_000).prop_map(|(o, b)| Op::Read(o, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Against a model (every record ever appended, and the earliest kept): reads give
    /// exactly the records at their offsets, in order, from wherever they start.
    #[test]
    fn the_partition_agrees_with_a_vector(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("dir");
        let mut partition = open(dir.path());
        let mut model: Vec<Record> = Vec::new();
        for op in ops {
            match op {
                Op::Append(len) => {
                    let n = model.len() as u64;
                    let records: Vec<Record> = (n..n + u64::from(len)).map(record).collect();
                    prop_assert_eq!(partition.append(&records, 0, 0).expect("append").base_offset, n);
                    model.extend(records);
                }
                Op::Reopen => {
                    partition.sync().expect("sync");
                    drop(partition);
                    partition = open(dir.path());
                }
                Op::Retain(max) => {
                    partition.retain(0, None, Some(u64::from(max))).expect("retain");
                }
                Op::Read(from, max_bytes) => {
                    let from = u64::from(from);
                    let earliest = partition.earliest_offset();
                    match partition.read(from, usize::from(max_bytes)) {
                        Ok(got) => {
                            prop_assert!(from >= earliest);
                            if from < model.len() as u64 {
                                prop_assert!(!got.is_empty());
                            }
                            for (i, (offset, r)) in got.iter().enumerate() {
                                prop_assert_eq!(*offset, from + i as u64);
                                prop_assert_eq!(r, &model[*offset as usize]);
                            }
                        }
                        Err(StreamError::OffsetOutOfRange { .. }) => prop_assert!(from < earliest),
                        Err(other) => prop_assert!(false, "{}", other),
                    }
                }
            }
            prop_assert_eq!(partition.next_offset(), model.len() as u64);
        }
    }
}

#[test]
fn an_idempotent_producer_s_retry_is_written_once_also_after_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    let first = partition
        .append(&[record(0), record(1)], 7, 1)
        .expect("append");
    assert_eq!((first.base_offset, first.duplicate), (0, false));
    // Another producer in between.
    partition.append(&[record(2)], 8, 1).expect("append");
    let retry = partition
        .append(&[record(0), record(1)], 7, 1)
        .expect("retry");
    assert_eq!((retry.base_offset, retry.duplicate), (0, true));
    assert_eq!(partition.next_offset(), 3, "nothing written twice");
    partition.sync().expect("sync");
    drop(partition);
    // The producers' last sequences are read back from the batches.
    let mut partition = open(dir.path());
    let retry = partition
        .append(&[record(0), record(1)], 7, 1)
        .expect("retry");
    assert!(retry.duplicate);
    match partition.append(&[record(9)], 7, 0) {
        Err(StreamError::SequenceTooOld { last: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    let next = partition.append(&[record(3)], 7, 2).expect("next");
    assert_eq!((next.base_offset, next.duplicate), (3, false));
    // Producer 0 is not idempotent: the same call twice writes twice.
    partition.append(&[record(4)], 0, 0).expect("append");
    partition.append(&[record(4)], 0, 0).expect("append");
    assert_eq!(partition.next_offset(), 6);
}

/// A keyed record for the compaction test: keys from a small set so they repeat, some
/// without a key, some tombstones.
fn keyed(n: u64, key: u8, kind: u8, timestamp_ms: i64) -> Record {
    Record {
        timestamp_ms,
        key: (kind != 0).then(|| vec![b'k', key]),
        value: (kind != 1).then(|| format!("v{n}").into_bytes()),
        headers: Vec::new(),
    }
}

#[derive(Debug, Clone)]
enum CompactOp {
    /// Records as `(key, kind)`: kind 0 no key, 1 a tombstone, else a value.
    Append(Vec<(u8, u8)>),
    Compact,
    Reopen,
    /// The clock moves on by this many ms.
    Wait(u16),
    /// An idempotent producer's batch.
    Produce(u8),
}

fn compact_op() -> impl Strategy<Value = CompactOp> {
    prop_oneof![
        6 => proptest::collection::vec((0u8..6, 0u8..8), 1..6).prop_map(CompactOp::Append),
        2 => Just(CompactOp::Compact),
        1 => Just(CompactOp::Reopen),
        1 => (0u16..2_000).prop_map(CompactOp::Wait),
        1 => (0u8..6).prop_map(CompactOp::Produce),
    ]
}

/// Every key's last value, reading the records in offset order (a tombstone deletes).
fn table<'a>(records: impl Iterator<Item = &'a Record>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut table = std::collections::BTreeMap::new();
    for record in records {
        if let Some(key) = &record.key {
            match &record.value {
                Some(value) => table.insert(key.clone(), value.clone()),
                None => table.remove(key),
            };
        }
    }
    table.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a model (every record appended): after any compactions and reopens, every
    /// record read is the one appended at that offset; reading from the start gives every
    /// key's last value as the full log does; records without a key and everything in the
    /// active segment are all there; no older record of a key remains outside the active
    /// segment; a key's newest tombstone stays until its retention passes; offsets to come
    /// and a producer's sequence are unchanged.
    #[test]
    fn compaction_keeps_each_key_s_last_value_and_every_offset(
        ops in proptest::collection::vec(compact_op(), 1..50)
    ) {
        const TOMBSTONE_MS: u64 = 1_000;
        let dir = tempfile::tempdir().expect("dir");
        let config = PartitionConfig { segment_bytes_max: 400, index_interval_bytes: 100 };
        let mut partition = Partition::open(dir.path(), config).expect("open").0;
        let mut model: Vec<Record> = Vec::new();
        let mut now = 10_000i64;
        let mut sequence = 0u32;
        // Whether a compaction ran and nothing was appended since.
        let mut clean = false;
        for op in ops {
            match op {
                CompactOp::Append(items) => {
                    let n = model.len() as u64;
                    let records: Vec<Record> = items
                        .iter()
                        .enumerate()
                        .map(|(i, &(key, kind))| keyed(n + i as u64, key, kind, now))
                        .collect();
                    prop_assert_eq!(partition.append(&records, 0, 0).expect("append").base_offset, n);
                    model.extend(records);
                    clean = false;
                }
                CompactOp::Produce(key) => {
                    sequence += 1;
                    let n = model.len() as u64;
                    let records = vec![keyed(n, key, 2, now)];
                    prop_assert_eq!(partition.append(&records, 9, sequence).expect("append").base_offset, n);
                    model.extend(records);
                    clean = false;
                }
                CompactOp::Compact => {
                    partition.compact(now, TOMBSTONE_MS).expect("compact");
                    clean = true;
                }
                CompactOp::Reopen => {
                    partition.sync().expect("sync");
                    drop(partition);
                    partition = Partition::open(dir.path(), config).expect("reopen").0;
                }
                CompactOp::Wait(ms) => now += i64::from(ms),
            }
            prop_assert_eq!(partition.next_offset(), model.len() as u64);
            let read = partition.read(0, usize::MAX).expect("read");
            let active = *partition.segment_bases().last().expect("a segment");
            for pair in read.windows(2) {
                prop_assert!(pair[0].0 < pair[1].0, "offsets ascend");
            }
            for (offset, record) in &read {
                prop_assert_eq!(record, &model[*offset as usize], "offset {}", offset);
                if *offset < active && clean {
                    if let Some(key) = &record.key {
                        let newer = model[*offset as usize + 1..].iter().any(|r| r.key.as_ref() == Some(key));
                        prop_assert!(!newer, "offset {} was superseded but kept", offset);
                    }
                }
            }
            let kept: std::collections::HashSet<u64> = read.iter().map(|(o, _)| *o).collect();
            for (offset, record) in model.iter().enumerate() {
                let offset = offset as u64;
                let key = record.key.as_ref();
                let newest = key.is_none_or(|k| !model[offset as usize + 1..].iter().any(|r| r.key.as_ref() == Some(k)));
                let fresh_tombstone = record.value.is_none() && record.timestamp_ms >= now - TOMBSTONE_MS as i64;
                if offset >= active || key.is_none() || (newest && (record.value.is_some() || fresh_tombstone)) {
                    prop_assert!(kept.contains(&offset), "offset {} lost", offset);
                }
            }
            prop_assert_eq!(
                table(read.iter().map(|(_, r)| r)),
                table(model.iter()),
                "a reader from the start ends with every key's last value"
            );
        }
        // The producer's last sequence survived: a retry of it is not written again.
        if sequence > 0 {
            let retry = partition.append(&[keyed(0, 0, 2, now)], 9, sequence).expect("retry");
            prop_assert!(retry.duplicate);
        }
    }
}

#[test]
fn a_compaction_cut_short_before_its_rename_leaves_the_segment_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 200);
    let before = partition.read(0, usize::MAX).expect("read");
    let first = &segment_files(dir.path())[0];
    // What a crash between writing the rewrite and renaming it leaves.
    let cleaned = dir.path().join(first.replace(".log", ".cleaned"));
    std::fs::write(&cleaned, b"half a rewrite").expect("write");
    drop(partition);
    let mut partition = open(dir.path());
    assert!(!cleaned.exists(), "the leftover rewrite is removed on open");
    assert_eq!(partition.read(0, usize::MAX).expect("read"), before);
    let done = partition.compact(i64::MAX, 0).expect("compact");
    assert!(done.records_removed > 0 && done.bytes_after < done.bytes_before);
    let after = partition.read(0, usize::MAX).expect("read");
    assert!(after.len() < before.len());
    assert_eq!(partition.next_offset(), 200);
}

#[test]
fn client_encoded_batches_are_checked_placed_and_read_back_as_stored() {
    use sluice_stream::batch;
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    let mut offsets = Vec::new();
    for b in 0..20u64 {
        let records: Vec<Record> = (b * 5..b * 5 + 5).map(record).collect();
        let mut bytes = batch::encode(0, 0, 0, &records);
        let appended = partition
            .append_encoded(&mut bytes, 1_000)
            .expect("a valid batch");
        offsets.push(appended.base_offset);
    }
    assert_eq!(offsets, (0..20).map(|b| b * 5).collect::<Vec<_>>());
    // Read from the middle of a batch: whole batches, the first holding earlier records.
    let (chunks, next) = partition.read_encoded(42, 300, u64::MAX).expect("read");
    let got = batch::decode_all(&chunks.concat()).expect("whole batches");
    assert_eq!(got.first().map(|(o, _)| *o), Some(40));
    assert!(got.len() >= 5 && next == got.last().expect("one").0 + 1);
    for (offset, r) in &got {
        assert_eq!(r, &record(*offset));
    }
    assert_eq!(
        partition.read_encoded(100, 1_000, u64::MAX).expect("end"),
        (Vec::new(), 100)
    );

    // Refused: damage, offsets that are not dense, a value above the bound.
    let mut damaged = batch::encode(0, 0, 0, &[record(1)]);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(
        partition.append_encoded(&mut damaged, 1_000),
        Err(StreamError::BadBatch(_))
    ));
    let mut big = batch::encode(0, 0, 0, &[record(49)]);
    assert!(matches!(
        partition.append_encoded(&mut big, 10),
        Err(StreamError::BadBatch(_))
    ));
    assert_eq!(partition.next_offset(), 100, "nothing refused was written");

    // An idempotent producer's retry in the binary encoding is written once.
    let mut first = batch::encode(0, 5, 1, &[record(0)]);
    let mut retry = first.clone();
    let a = partition.append_encoded(&mut first, 1_000).expect("first");
    let b = partition.append_encoded(&mut retry, 1_000).expect("retry");
    assert_eq!((a.base_offset, a.duplicate), (100, false));
    assert_eq!((b.base_offset, b.duplicate), (100, true));
    assert_eq!(partition.next_offset(), 101);
}

#[test]
fn segments_of_the_first_format_are_refused_not_cut() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 10);
    drop(partition);
    // What a build before record offset deltas left: segments and no FORMAT file.
    std::fs::remove_file(dir.path().join("FORMAT")).expect("remove");
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    let before = std::fs::metadata(&segment).expect("segment").len();
    let error = Partition::open(dir.path(), small()).err().expect("refused");
    assert!(error.to_string().contains("stream format 1"), "{error}");
    assert_eq!(
        std::fs::metadata(&segment).expect("segment").len(),
        before,
        "nothing cut"
    );
}

#[test]
fn appends_between_planning_and_applying_a_compaction_are_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 200);
    let plan = partition.plan_compaction();
    // Appended after the plan, before it runs and is applied: newer values of keys the
    // plan saw.
    let late: Vec<Record> = (0..7)
        .map(|k| Record {
            timestamp_ms: 9_000,
            key: Some(format!("key-{k}").into_bytes()),
            value: Some(format!("late-{k}").into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    let mut rewrites = Vec::new();
    plan.run(i64::MAX, 0, |rewrite| {
        rewrites.push(rewrite);
        Ok(())
    })
    .expect("run");
    // More appends between the rewrites and their swap (the server takes the lock only
    // to swap each one in).
    partition.append(&late, 0, 0).expect("append");
    let mut done = sluice_stream::Compacted::default();
    for rewrite in rewrites {
        partition.apply_rewrite(rewrite, &mut done).expect("apply");
    }
    assert!(done.records_removed > 0);
    assert_eq!(partition.next_offset(), 207);
    let read = partition.read(0, usize::MAX).expect("read");
    // Every late record is there, and the partition ends with their values.
    for k in 0..7u64 {
        let offset = 200 + k;
        assert!(
            read.iter().any(|(o, _)| *o == offset),
            "late offset {offset} kept"
        );
    }
    let mut last: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for (_, r) in &read {
        if let (Some(k), Some(v)) = (&r.key, &r.value) {
            last.insert(k.clone(), v.clone());
        }
    }
    for k in 0..7 {
        assert_eq!(
            last.get(format!("key-{k}").as_bytes()).map(Vec::as_slice),
            Some(format!("late-{k}").as_bytes())
        );
    }
    let reopened = open(dir.path());
    assert_eq!(reopened.read(0, usize::MAX).expect("read"), read);
}

#[test]
fn reads_stop_at_the_end_they_are_given() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 100);
    // Batches of 1 to 4 records: read up to an end in the middle of the log.
    let (records, next) = partition.read_until(0, usize::MAX, 50).expect("read");
    assert!(records.iter().all(|(o, _)| *o < 50));
    assert_eq!(records.last().map(|(o, _)| o + 1), Some(next));
    assert!(
        next <= 50 && next + 4 > 50,
        "whole batches up to 50: {next}"
    );
    let (chunks, encoded_next) = partition.read_encoded(0, usize::MAX, 50).expect("read");
    let bytes = chunks.concat();
    assert_eq!(encoded_next, next);
    assert!(!bytes.is_empty());
    assert_eq!(
        partition
            .read_until(next, usize::MAX, next)
            .expect("read")
            .0,
        vec![]
    );
}

#[test]
fn a_poisoned_partition_refuses_writes_and_syncs_but_still_reads() {
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = open(dir.path());
    fill(&mut partition, 10);
    // What a failed fdatasync does (here or on a `sync_handle`).
    partition.poison("EIO");
    assert!(matches!(
        partition.append(&[record(10)], 0, 0),
        Err(StreamError::Poisoned(_))
    ));
    assert!(matches!(partition.sync(), Err(StreamError::Poisoned(_))));
    assert!(matches!(
        partition.sync_handle(),
        Err(StreamError::Poisoned(_))
    ));
    assert_eq!(partition.read(0, usize::MAX).expect("read").len(), 10);
    assert_eq!(partition.next_offset(), 10);
    // Opened again (a restart), it takes writes.
    drop(partition);
    let mut reopened = open(dir.path());
    assert_eq!(
        reopened
            .append(&[record(10)], 0, 0)
            .expect("append")
            .base_offset,
        10
    );
}

#[test]
fn a_large_encoded_read_comes_in_chunks_of_whole_batches() {
    use sluice_stream::{batch, ENCODED_CHUNK_BYTES};
    let dir = tempfile::tempdir().expect("dir");
    let mut partition = Partition::open(
        dir.path(),
        PartitionConfig {
            segment_bytes_max: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
        },
    )
    .expect("open")
    .0;
    // 40 batches of 10 records of 10 KB: about 4 MB.
    let value = vec![b'v'; 10_000];
    for b in 0..40u64 {
        let records: Vec<Record> = (0..10)
            .map(|i| Record {
                timestamp_ms: 1_000 + (b * 10 + i) as i64,
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
            })
            .collect();
        partition.append(&records, 0, 0).expect("append");
    }
    let (chunks, next) = partition
        .read_encoded(0, usize::MAX, u64::MAX)
        .expect("read");
    assert_eq!(next, 400);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let mut offsets = Vec::new();
    for chunk in &chunks {
        // Each chunk is whole batches, about ENCODED_CHUNK_BYTES (one batch over at most).
        assert!(
            chunk.len() < ENCODED_CHUNK_BYTES + 110_000,
            "{}",
            chunk.len()
        );
        let records = batch::decode_all(chunk).expect("whole batches");
        offsets.extend(records.into_iter().map(|(o, _)| o));
    }
    assert_eq!(offsets, (0..400).collect::<Vec<u64>>());
    // `max_bytes` counts over the chunks: about 2.5 MB of batches, and no more.
    let (chunks, next) = partition
        .read_encoded(0, 2_500_000, u64::MAX)
        .expect("read");
    let total: usize = chunks.iter().map(Vec::len).sum();
    assert!((2_500_000..2_500_000 + 110_000).contains(&total), "{total}");
    assert_eq!(next, 250);
}
