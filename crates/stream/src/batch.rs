//! The record batch: its byte layout (docs/design/stream-format.md), encoding and decoding.

/// Bytes before a batch's records: base offset, length, CRC, count, last offset delta,
/// first and max timestamps, producer id, sequence.
pub const BATCH_HEADER_BYTES: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8 + 8 + 4;
/// Record timestamps a client's batch may carry: the years 0000 to 9999, what RFC 3339
/// can write.
pub const TIMESTAMP_MS_MIN: i64 = -62_167_219_200_000;
pub const TIMESTAMP_MS_MAX: i64 = 253_402_300_799_999;
/// The largest batch accepted when reading: anything longer is damage, not data.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One record of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (under compaction it deletes the key).
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a batch says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Records in the batch: `last_offset_delta + 1` as written, fewer once compaction
    /// removed some (0 for a batch kept only for its end offset or producer sequence).
    pub count: u32,
    /// The offset of the batch's last record as written, from `base_offset`.
    pub last_offset_delta: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: u64,
    pub sequence: u32,
    /// The whole batch, header included.
    pub bytes: usize,
}

impl BatchHeader {
    /// The offset after the batch's last record as written (compaction keeps it).
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta) + 1
    }
}

/// Why bytes are not a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// The bytes end before the batch does (a torn write, or not yet written).
    Incomplete,
    Corrupt(String),
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// Encodes `records` (at least one) as a batch starting at `base_offset`, with dense
/// offsets.
pub fn encode(base_offset: u64, producer_id: u64, sequence: u32, records: &[Record]) -> Vec<u8> {
    let last_offset_delta = records.len().saturating_sub(1) as u32;
    let first = records.first().map_or(0, |r| r.timestamp_ms);
    let max = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(first);
    encode_sparse(
        BatchHeader {
            base_offset,
            count: records.len() as u32,
            last_offset_delta,
            first_timestamp_ms: first,
            max_timestamp_ms: max,
            producer_id,
            sequence,
            bytes: 0,
        },
        records.iter().enumerate().map(|(i, r)| (i as u32, r)),
    )
}

/// Encodes the records compaction kept of a batch: `header` as the batch was written
/// (its offsets, timestamps and producer), `records` with their offset deltas, ascending
/// and at most `header.last_offset_delta` (none: the batch keeps only its end offset and
/// producer sequence). `header.count` and `header.bytes` are ignored.
pub fn encode_sparse<'a>(
    header: BatchHeader,
    records: impl IntoIterator<Item = (u32, &'a Record)>,
) -> Vec<u8> {
    let first = header.first_timestamp_ms;
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&header.last_offset_delta.to_le_bytes());
    body.extend_from_slice(&first.to_le_bytes());
    body.extend_from_slice(&header.max_timestamp_ms.to_le_bytes());
    body.extend_from_slice(&header.producer_id.to_le_bytes());
    body.extend_from_slice(&header.sequence.to_le_bytes());
    let mut count = 0u32;
    for (delta, record) in records {
        count += 1;
        body.extend_from_slice(&delta.to_le_bytes());
        body.extend_from_slice(&record.timestamp_ms.wrapping_sub(first).to_le_bytes());
        put_bytes(&mut body, record.key.as_deref());
        put_bytes(&mut body, record.value.as_deref());
        body.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
        for (name, value) in &record.headers {
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
    }
    body[0..4].copy_from_slice(&count.to_le_bytes());
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&header.base_offset.to_le_bytes());
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A cursor over a batch's bytes that reports running out as corruption (the length and
/// CRC were already checked, so short fields mean a bad encoder, not a torn write).
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.bytes.len() < n {
            return Err(Bad::Corrupt("a record runs past its batch".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Skips a length-prefixed field (−1: absent), refusing one above `max` bytes.
    fn skip_optional(&mut self, max: usize) -> Result<(), Bad> {
        let len = i32::from_le_bytes(self.array()?);
        match len {
            -1 => Ok(()),
            len if len >= 0 && len as usize <= max => self.take(len as usize).map(|_| ()),
            len if len >= 0 => Err(Bad::Corrupt(format!("a value of {len} bytes, above {max}"))),
            _ => Err(Bad::Corrupt(format!("negative length {len}"))),
        }
    }

    fn optional(&mut self) -> Result<Option<Vec<u8>>, Bad> {
        let len = i32::from_le_bytes(self.array()?);
        match len {
            -1 => Ok(None),
            len if len >= 0 => Ok(Some(self.take(len as usize)?.to_vec())),
            _ => Err(Bad::Corrupt(format!("negative length {len}"))),
        }
    }
}

/// Reads the header of the batch at the start of `bytes`, checking length and CRC.
pub fn header(bytes: &[u8]) -> Result<BatchHeader, Bad> {
    if bytes.len() < 16 {
        return Err(Bad::Incomplete);
    }
    let base_offset = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
    let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    if !(BATCH_HEADER_BYTES - 12..=BATCH_BYTES_MAX).contains(&length) {
        return Err(Bad::Corrupt(format!("batch length {length}")));
    }
    let Some(body) = bytes.get(16..12 + length) else {
        return Err(Bad::Incomplete);
    };
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
    if crc32c::crc32c(body) != crc {
        return Err(Bad::Corrupt("CRC mismatch".into()));
    }
    let mut reader = Reader { bytes: body };
    let count = u32::from_le_bytes(reader.array()?);
    let last_offset_delta = u32::from_le_bytes(reader.array()?);
    if base_offset
        .checked_add(u64::from(last_offset_delta) + 1)
        .is_none()
    {
        return Err(Bad::Corrupt(format!(
            "offsets from {base_offset} run past the largest"
        )));
    }
    if u64::from(count) > u64::from(last_offset_delta) + 1 {
        return Err(Bad::Corrupt(format!(
            "{count} records in a batch of {} offsets",
            u64::from(last_offset_delta) + 1
        )));
    }
    Ok(BatchHeader {
        base_offset,
        count,
        last_offset_delta,
        first_timestamp_ms: i64::from_le_bytes(reader.array()?),
        max_timestamp_ms: i64::from_le_bytes(reader.array()?),
        producer_id: u64::from_le_bytes(reader.array()?),
        sequence: u32::from_le_bytes(reader.array()?),
        bytes: 12 + length,
    })
}

/// Checks a batch a client sent, as written by [`encode`] (its `base_offset` is ignored:
/// the partition sets it): length, CRC, every record's fields within the batch, offsets
/// dense from 0, header names UTF-8, and no value above `value_bytes_max`. Allocates
/// nothing. Returns the header; `bytes` must be exactly the batch.
pub fn check_new(bytes: &[u8], value_bytes_max: usize) -> Result<BatchHeader, Bad> {
    let header = header(bytes)?;
    if header.bytes != bytes.len() {
        return Err(Bad::Corrupt(format!(
            "the batch says {} bytes but {} were given",
            header.bytes,
            bytes.len()
        )));
    }
    if header.count == 0 || header.count != header.last_offset_delta.wrapping_add(1) {
        return Err(Bad::Corrupt(format!(
            "{} records with a last offset delta of {}: a new batch's offsets are dense",
            header.count, header.last_offset_delta
        )));
    }
    let mut reader = Reader {
        bytes: &bytes[BATCH_HEADER_BYTES..],
    };
    // The header's timestamps must be the records': retention and reads by time trust
    // them.
    let mut max_timestamp_ms = i64::MIN;
    for expected in 0..header.count {
        let delta = u32::from_le_bytes(reader.array()?);
        if delta != expected {
            return Err(Bad::Corrupt(format!(
                "record {expected} has offset delta {delta}"
            )));
        }
        let timestamp_delta = i64::from_le_bytes(reader.array()?);
        if expected == 0 && timestamp_delta != 0 {
            return Err(Bad::Corrupt(
                "the first record's timestamp is not the batch's first_timestamp_ms".into(),
            ));
        }
        let timestamp_ms = header
            .first_timestamp_ms
            .checked_add(timestamp_delta)
            .filter(|t| (TIMESTAMP_MS_MIN..=TIMESTAMP_MS_MAX).contains(t))
            .ok_or_else(|| {
                Bad::Corrupt(format!(
                    "record {expected}'s timestamp is outside the years 0000 to 9999"
                ))
            })?;
        max_timestamp_ms = max_timestamp_ms.max(timestamp_ms);
        reader.skip_optional(usize::MAX)?;
        reader.skip_optional(value_bytes_max)?;
        let header_count = u16::from_le_bytes(reader.array()?);
        for _ in 0..header_count {
            let name_len = u16::from_le_bytes(reader.array()?);
            std::str::from_utf8(reader.take(usize::from(name_len))?)
                .map_err(|_| Bad::Corrupt("a header name that is not UTF-8".into()))?;
            let value_len = u32::from_le_bytes(reader.array()?) as usize;
            reader.take(value_len)?;
        }
    }
    if !reader.bytes.is_empty() {
        return Err(Bad::Corrupt("bytes after the last record".into()));
    }
    if header.max_timestamp_ms != max_timestamp_ms {
        return Err(Bad::Corrupt(format!(
            "max_timestamp_ms {} but the records' largest is {max_timestamp_ms}",
            header.max_timestamp_ms
        )));
    }
    Ok(header)
}

/// The content type of record batches on the API: produce bodies and fetch answers
/// (docs/design/stream-format.md, "Binary encoding on the API").
pub const CONTENT_TYPE: &str = "application/vnd.sluice.batch";

/// Every record of `bytes`, whole batches one after another (a binary fetch's body), each
/// with its offset.
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<(u64, Record)>, Bad> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (header, records) = decode(bytes)?;
        out.extend(records);
        bytes = &bytes[header.bytes..];
    }
    Ok(out)
}

/// Decodes the batch at the start of `bytes`: its header and records, each with its
/// offset.
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<(u64, Record)>), Bad> {
    let header = header(bytes)?;
    let mut reader = Reader {
        bytes: &bytes[BATCH_HEADER_BYTES..header.bytes],
    };
    let mut records = Vec::with_capacity(header.count.min(4_096) as usize);
    let mut next_delta = 0u64;
    for _ in 0..header.count {
        let offset_delta = u32::from_le_bytes(reader.array()?);
        if u64::from(offset_delta) < next_delta || offset_delta > header.last_offset_delta {
            return Err(Bad::Corrupt(format!(
                "record offset delta {offset_delta} out of order or past the batch"
            )));
        }
        next_delta = u64::from(offset_delta) + 1;
        let delta = i64::from_le_bytes(reader.array()?);
        let key = reader.optional()?;
        let value = reader.optional()?;
        let header_count = u16::from_le_bytes(reader.array()?);
        let mut headers = Vec::with_capacity(usize::from(header_count));
        for _ in 0..header_count {
            let name_len = u16::from_le_bytes(reader.array()?);
            let name = String::from_utf8(reader.take(usize::from(name_len))?.to_vec())
                .map_err(|_| Bad::Corrupt("a header name that is not UTF-8".into()))?;
            let value_len = u32::from_le_bytes(reader.array()?) as usize;
            headers.push((name, reader.take(value_len)?.to_vec()));
        }
        records.push((
            header.base_offset + u64::from(offset_delta),
            Record {
                timestamp_ms: header.first_timestamp_ms.wrapping_add(delta),
                key,
                value,
                headers,
            },
        ));
    }
    if !reader.bytes.is_empty() {
        return Err(Bad::Corrupt("bytes after the last record".into()));
    }
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_any_cut_or_flipped_byte_is_caught() {
        let records = vec![
            Record {
                timestamp_ms: 1_000,
                key: Some(b"k1".to_vec()),
                value: Some(b"hello".to_vec()),
                headers: vec![("trace".into(), b"abc".to_vec())],
            },
            Record {
                timestamp_ms: 999,
                key: None,
                value: None,
                headers: Vec::new(),
            },
        ];
        let bytes = encode(42, 7, 3, &records);
        let (header, decoded) = decode(&bytes).expect("decodes");
        assert_eq!(
            decoded,
            vec![(42, records[0].clone()), (43, records[1].clone())]
        );
        assert_eq!(
            (header.base_offset, header.count, header.next_offset()),
            (42, 2, 44)
        );
        assert_eq!(
            (header.first_timestamp_ms, header.max_timestamp_ms),
            (1_000, 1_000)
        );
        assert_eq!(
            (header.producer_id, header.sequence, header.bytes),
            (7, 3, bytes.len())
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut]).err(),
                Some(Bad::Incomplete),
                "cut {cut}"
            );
        }
        for i in 8..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(decode(&flipped).is_err(), "flip at {i}");
            assert!(check_new(&flipped, usize::MAX).is_err(), "flip at {i}");
        }
        assert_eq!(check_new(&bytes, usize::MAX), Ok(header));
        assert!(check_new(&bytes, 4).is_err(), "a value above the bound");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            check_new(&longer, usize::MAX).is_err(),
            "bytes after the batch"
        );
        // fuzz `stream_batch`: offsets that would run past u64::MAX are damage.
        assert!(decode(&encode(u64::MAX - 1, 0, 0, &records)).is_err());
        // A client's header must carry its records' timestamps, which RFC 3339 can write.
        let mut lying = encode(0, 0, 0, &records);
        lying[32..40].copy_from_slice(&999i64.to_le_bytes()); // max_timestamp_ms
        let crc = crc32c::crc32c(&lying[16..]);
        lying[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&lying).is_ok(), "a well-formed batch");
        assert!(
            check_new(&lying, usize::MAX).is_err(),
            "a max below a record's"
        );
        let mut far = records.clone();
        far[1].timestamp_ms = TIMESTAMP_MS_MAX + 1;
        assert!(check_new(&encode(0, 0, 0, &far), usize::MAX).is_err());
        far[1].timestamp_ms = TIMESTAMP_MS_MAX;
        assert!(check_new(&encode(0, 0, 0, &far), usize::MAX).is_ok());
    }
}
