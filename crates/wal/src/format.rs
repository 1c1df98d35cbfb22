//! On-disk layout: segment header, record frame, snapshot header and file names.
//! See `docs/design/wal-format.md`; every constant here is described there.

use std::path::{Path, PathBuf};

use crate::Lsn;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SLWAL001";
/// Segment header: magic (8) + first_lsn u64 LE (8).
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// Frame header: payload len u32 LE (4) + crc32c u32 LE (4) + lsn u64 LE (8).
pub const FRAME_HEADER_BYTES: usize = 16;
/// First 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SLSNAP01";
/// Snapshot header: magic (8) + lsn u64 (8) + body len u64 (8) + crc32c u32 (4).
pub const SNAPSHOT_HEADER_BYTES: usize = 28;
/// Largest payload one record may carry. Bounded so that a corrupt length field can never
/// make recovery allocate or skip more than this, and so that it fits the u32 length field.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () = assert!(SEGMENT_HEADER_BYTES == SEGMENT_MAGIC.len() + 8);
const _: () = assert!(FRAME_HEADER_BYTES == 4 + 4 + 8);
const _: () = assert!(SNAPSHOT_HEADER_BYTES == SNAPSHOT_MAGIC.len() + 8 + 8 + 4);
const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);

pub const SEGMENT_SUFFIX: &str = ".wal";
pub const SNAPSHOT_PREFIX: &str = "snapshot-";
pub const SNAPSHOT_SUFFIX: &str = ".snap";
pub const TEMP_SUFFIX: &str = ".tmp";

pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_SUFFIX}")
}

fn parse_lsn20(digits: &str) -> Option<Lsn> {
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    parse_lsn20(name.strip_suffix(SEGMENT_SUFFIX)?)
}

pub fn parse_snapshot_file_name(name: &str) -> Option<Lsn> {
    parse_lsn20(
        name.strip_prefix(SNAPSHOT_PREFIX)?
            .strip_suffix(SNAPSHOT_SUFFIX)?,
    )
}

/// A leftover temp file of a segment or snapshot creation that never reached its rename.
pub fn is_temp_file_name(name: &str) -> bool {
    match name.strip_suffix(TEMP_SUFFIX) {
        Some(base) => {
            parse_segment_file_name(base).is_some() || parse_snapshot_file_name(base).is_some()
        }
        None => false,
    }
}

pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&first_lsn.to_le_bytes());
    header
}

/// Returns the first_lsn stored in a segment header, or why the header is bad.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_BYTES}",
            bytes.len()
        ));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_string());
    }
    Ok(read_u64(&bytes[8..16]))
}

/// Appends one frame to `out`; its crc32c covers the lsn bytes, then the payload.
pub fn encode_frame(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    debug_assert!(payload.len() <= RECORD_BYTES_MAX);
    let len = payload.len() as u32;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload);
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What was found at one offset of a segment.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A frame whose checksum verifies; `lsn` is not yet checked against the sequence.
    Valid {
        lsn: Lsn,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// The frame header or payload runs past the end of the file.
    Partial { reason: String },
    /// The frame is complete but does not verify.
    Bad { reason: String },
}

/// Decodes the frame starting at `bytes[0]`; `bytes` runs to the end of the file.
pub fn decode_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Frame::Partial {
            reason: format!(
                "partial frame header ({} of {FRAME_HEADER_BYTES} bytes)",
                bytes.len()
            ),
        };
    }
    let len = read_u32(&bytes[0..4]) as usize;
    let crc = read_u32(&bytes[4..8]);
    let lsn = read_u64(&bytes[8..16]);
    if len > RECORD_BYTES_MAX {
        return Frame::Bad {
            reason: format!("record length {len} exceeds {RECORD_BYTES_MAX}"),
        };
    }
    let end = FRAME_HEADER_BYTES + len;
    if bytes.len() < end {
        return Frame::Partial {
            reason: format!("partial frame ({} of {end} bytes present)", bytes.len()),
        };
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..16]), payload);
    if actual != crc {
        return Frame::Bad {
            reason: format!("checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"),
        };
    }
    Frame::Valid {
        lsn,
        payload,
        frame_bytes: end,
    }
}

/// The snapshot header for `body`; the body follows it in the file.
pub fn encode_snapshot_header(lsn: Lsn, body: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), body);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Returns `(lsn, body)` or `(offset, reason)` of the first problem.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Lsn, &[u8]), (u64, String)> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err((
            0,
            format!(
                "snapshot is {} bytes, shorter than its {SNAPSHOT_HEADER_BYTES}-byte header",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err((0, "bad snapshot magic".to_string()));
    }
    let lsn = read_u64(&bytes[8..16]);
    let body_len = read_u64(&bytes[16..24]);
    let crc = read_u32(&bytes[24..28]);
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if body.len() as u64 != body_len {
        return Err((
            16,
            format!(
                "snapshot body length field says {body_len} bytes, file holds {}",
                body.len()
            ),
        ));
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..24]), body);
    if actual != crc {
        return Err((
            24,
            format!("snapshot checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"),
        ));
    }
    Ok((lsn, body))
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(buf)
}
