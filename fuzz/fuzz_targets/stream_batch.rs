//! Arbitrary bytes as a record batch from a client (the binary produce): the checks a
//! server runs on it (`check_new`) and the decoder must never panic, and a batch that
//! passes the checks must decode to exactly its records, at dense offsets.
//!
//! Input: one flag byte, then the batch bytes.
//! - bit 0: rewrite the batch's length and CRC so they verify (random bytes never do)
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_stream::batch::{check_new, decode};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if flags & 1 != 0 && bytes.len() >= 16 {
        let length = (bytes.len() - 12) as u32;
        bytes[8..12].copy_from_slice(&length.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let checked = check_new(&bytes, 1 << 20);
    let decoded = decode(&bytes);
    if let Ok(header) = checked {
        let (decoded_header, records) = decoded.expect("a checked batch decodes");
        assert_eq!(header, decoded_header);
        assert_eq!(records.len() as u32, header.count);
        for (i, (offset, record)) in records.iter().enumerate() {
            assert_eq!(*offset, header.base_offset + i as u64);
            assert!(record.value.as_ref().is_none_or(|v| v.len() <= 1 << 20));
        }
    }
});
