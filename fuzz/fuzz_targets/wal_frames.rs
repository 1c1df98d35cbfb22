//! Arbitrary bytes as a WAL segment file: the frame decoder and the segment scan that
//! `Wal::open` runs must never panic, and what they accept must re-encode identically.
//!
//! Input: one flag byte, then the segment bytes.
//! - bit 0: the segment is the last one (a bad tail is torn, not corrupt)
//! - bit 1: prepend a valid segment header (first lsn chosen by bits 4-5)
//! - bit 2: rewrite each frame's checksum so it verifies (random bytes never do)
//! - bit 3: with bit 2, also rewrite each frame's lsn to the expected sequence
//! - bits 4-5: first lsn 0, 7, u64::MAX - 2 or u64::MAX
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_wal::fuzzing::{
    decode_frame, decode_segment_header, encode_frame, encode_segment_header, scan_segment, Frame,
};
use sluice_wal::{ProblemKind, FRAME_HEADER_BYTES, RECORD_BYTES_MAX, SEGMENT_HEADER_BYTES};

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

/// Makes every complete frame verify (and, if `fix_lsn`, carry the next lsn in sequence).
fn fix_frames(bytes: &mut [u8], first_lsn: u64, fix_lsn: bool) {
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut lsn = first_lsn;
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        let len = read_u32(&bytes[offset..]) as usize;
        let end = offset + FRAME_HEADER_BYTES + len;
        if len > RECORD_BYTES_MAX || end > bytes.len() {
            break;
        }
        if fix_lsn {
            bytes[offset + 8..offset + 16].copy_from_slice(&lsn.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[offset + 8..offset + 16]),
            &bytes[offset + FRAME_HEADER_BYTES..end],
        );
        bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end;
        lsn = lsn.wrapping_add(1);
    }
}

/// A frame that decodes as valid re-encodes to exactly its bytes.
fn check_frame(bytes: &[u8]) {
    if let Frame::Valid {
        lsn,
        payload,
        frame_bytes,
    } = decode_frame(bytes)
    {
        assert!(frame_bytes <= bytes.len());
        let mut out = Vec::new();
        encode_frame(&mut out, lsn, payload);
        assert_eq!(out, &bytes[..frame_bytes]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let is_last = flags & 1 != 0;
    check_frame(rest);

    let first_lsn_choice = match (flags >> 4) & 3 {
        0 => 0,
        1 => 7,
        2 => u64::MAX - 2,
        _ => u64::MAX,
    };
    let mut bytes = Vec::with_capacity(rest.len() + SEGMENT_HEADER_BYTES);
    let first_lsn = if flags & 2 != 0 {
        bytes.extend_from_slice(&encode_segment_header(first_lsn_choice));
        bytes.extend_from_slice(rest);
        first_lsn_choice
    } else {
        bytes.extend_from_slice(rest);
        decode_segment_header(&bytes).unwrap_or(first_lsn_choice)
    };
    if flags & 4 != 0 {
        fix_frames(&mut bytes, first_lsn, flags & 8 != 0);
    }
    if bytes.len() > SEGMENT_HEADER_BYTES {
        check_frame(&bytes[SEGMENT_HEADER_BYTES..]);
    }

    let scan = scan_segment(first_lsn, &bytes, is_last);
    let valid = usize::try_from(scan.valid_bytes).unwrap();
    assert!(valid <= bytes.len());
    match scan.problem {
        None => assert_eq!(valid, bytes.len(), "no problem, yet bytes left over"),
        Some((offset, kind, _)) => {
            assert!(offset <= bytes.len() as u64);
            if kind == ProblemKind::TornTail {
                assert!(is_last, "a torn tail in a segment that is not the last");
            }
            if kind != ProblemKind::BadSegmentHeader {
                assert!(
                    valid < bytes.len(),
                    "a frame problem at the end of the file"
                );
            }
        }
    }
    let header_ok = !matches!(scan.problem, Some((_, ProblemKind::BadSegmentHeader, _)));
    if !header_ok {
        assert_eq!(scan.records, 0);
        return;
    }

    // Re-encode what the scan accepted: the header, then each frame in sequence.
    let mut out = encode_segment_header(first_lsn).to_vec();
    let mut offset = SEGMENT_HEADER_BYTES;
    for k in 0..scan.records {
        match decode_frame(&bytes[offset..]) {
            Frame::Valid {
                lsn,
                payload,
                frame_bytes,
            } => {
                assert_eq!(
                    Some(lsn),
                    first_lsn.checked_add(k),
                    "accepted lsn out of sequence"
                );
                encode_frame(&mut out, lsn, payload);
                offset += frame_bytes;
            }
            other => panic!("accepted frame {k} does not decode: {other:?}"),
        }
    }
    assert_eq!(offset, valid);
    assert_eq!(
        out,
        &bytes[..valid],
        "accepted frames re-encode differently"
    );

    // Open cuts a torn tail at `valid_bytes`; what stays must then scan clean.
    let open_keeps = matches!(scan.problem, None | Some((_, ProblemKind::TornTail, _)));
    if open_keeps && valid < bytes.len() {
        let again = scan_segment(first_lsn, &bytes[..valid], is_last);
        assert!(
            again.problem.is_none(),
            "truncated segment still has {:?}",
            again.problem
        );
        assert_eq!(again.records, scan.records);
        assert_eq!(again.valid_bytes, scan.valid_bytes);
    }
});
