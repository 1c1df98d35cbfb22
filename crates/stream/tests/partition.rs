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
