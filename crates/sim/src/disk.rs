//! The simulated disk: a log of CRC-framed records with a durable watermark, and
//! snapshots. It models the WAL's durability contract (`docs/design/wal-format.md`), not
//! its code: what was fsynced survives a crash; what was not may be lost, kept in part,
//! or torn; recovery keeps the longest run of whole records and never half of one.

use crate::rng::Rng;

/// Frame header: payload length (u32 LE), CRC32C over lsn and payload (u32 LE), lsn (u64 LE).
const HEADER_BYTES: usize = 16;

/// CRC32C (Castagnoli), table-driven, as the WAL's frames use.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let lsn_bytes = lsn.to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(&[&lsn_bytes, payload]).to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
    out
}

/// Reads whole, verified frames from `image` starting at `lsn`, stopping at the first
/// one that is incomplete or fails its checksum (a torn tail).
fn scan(image: &[u8], mut lsn: u64) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut at = 0;
    while image.len() - at >= HEADER_BYTES {
        let word = |from: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&image[at + from..at + from + 4]);
            u32::from_le_bytes(bytes)
        };
        let len = word(0) as usize;
        let crc = word(4);
        let lsn_bytes = &image[at + 8..at + 16];
        if image.len() - at - HEADER_BYTES < len || lsn_bytes != lsn.to_le_bytes() {
            break;
        }
        let payload = &image[at + HEADER_BYTES..at + HEADER_BYTES + len];
        if crc32c(&[lsn_bytes, payload]) != crc {
            break;
        }
        records.push(payload);
        at += HEADER_BYTES + len;
        lsn += 1;
    }
    records
}

pub struct Snapshot {
    /// The state after every record with a smaller lsn.
    pub lsn: u64,
    pub bytes: Vec<u8>,
}

/// How the record after the kept ones was torn by a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Torn {
    /// Only a prefix of its bytes reached the disk.
    Prefix,
    /// Its full length is there, but its last bytes are garbage.
    Garbled,
}

pub struct Crash {
    /// Records that were appended but not durable and did not survive.
    pub lost_len: u64,
    /// Records that were not durable yet survived (the OS wrote them before the crash).
    pub kept_len: u64,
    pub torn: Option<Torn>,
}

#[derive(Default)]
pub struct Disk {
    /// Frames of the records `first_lsn..next_lsn()`; older ones were compacted away.
    frames: Vec<Vec<u8>>,
    first_lsn: u64,
    /// Records below this lsn are durable.
    durable_lsn: u64,
    snapshot: Option<Snapshot>,
}

impl Disk {
    pub fn next_lsn(&self) -> u64 {
        self.first_lsn + self.frames.len() as u64
    }

    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Appends a record; it is not durable until the next `fsync`.
    pub fn append(&mut self, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn();
        self.frames.push(frame(lsn, payload));
        lsn
    }

    /// Group commit: everything appended so far becomes durable.
    pub fn fsync(&mut self) {
        self.durable_lsn = self.next_lsn();
    }

    /// The payload of a record still held (`first_lsn <= lsn < next_lsn`).
    pub fn payload(&self, lsn: u64) -> &[u8] {
        &self.frames[(lsn - self.first_lsn) as usize][HEADER_BYTES..]
    }

    /// Stores a snapshot of the state after every record below `lsn`. The WAL fsyncs the
    /// log up to `lsn` first, so a snapshot never covers a record a crash could take back;
    /// `durable_first: false` skips that (only for sabotage runs that test the checker).
    pub fn write_snapshot(&mut self, lsn: u64, bytes: Vec<u8>, durable_first: bool) {
        if durable_first {
            self.durable_lsn = self.durable_lsn.max(lsn);
        }
        self.snapshot = Some(Snapshot { lsn, bytes });
    }

    /// Drops the frames the snapshot covers once more than `frames_max` are held, as the
    /// WAL deletes old segments. Replay from lsn 0 is then no longer possible.
    pub fn compact(&mut self, frames_max: usize) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        if self.frames.len() <= frames_max || snapshot.lsn <= self.first_lsn {
            return;
        }
        let drop_len = (snapshot.lsn.min(self.durable_lsn) - self.first_lsn) as usize;
        self.frames.drain(..drop_len);
        self.first_lsn += drop_len as u64;
    }

    /// A power loss: durable records stay; of the rest, some prefix may survive, and the
    /// record after it may be torn. Then recovery, as the WAL's open does it: scan the
    /// frames, keep the whole verified ones, truncate the torn tail, make it all durable.
    pub fn crash(&mut self, rng: &mut Rng) -> Result<Crash, String> {
        let durable = self.durable_lsn;
        let unsynced = self.next_lsn() - durable;
        let kept = if unsynced == 0 || rng.chance(500_000) {
            0
        } else {
            rng.below(unsynced + 1)
        };
        let mut image = Vec::new();
        for lsn in durable..durable + kept {
            image.extend_from_slice(&self.frames[(lsn - self.first_lsn) as usize]);
        }
        let mut torn = None;
        if durable + kept < self.next_lsn() && rng.chance(700_000) {
            let whole = &self.frames[(durable + kept - self.first_lsn) as usize];
            if rng.chance(500_000) {
                let cut = rng.index(whole.len());
                image.extend_from_slice(&whole[..cut]);
                torn = Some(Torn::Prefix);
            } else {
                let mut garbled = whole.clone();
                let payload_len = garbled.len() - HEADER_BYTES;
                let garbage_len = 1 + rng.index(payload_len.min(16));
                let start = garbled.len() - garbage_len;
                for byte in &mut garbled[start..] {
                    *byte = rng.next_u64() as u8;
                }
                if garbled == *whole {
                    let last = garbled.len() - 1;
                    garbled[last] ^= 1;
                }
                image.extend_from_slice(&garbled);
                torn = Some(Torn::Garbled);
            }
        }
        // The durable prefix is intact by the media contract; scan what follows it.
        let recovered = scan(&image, durable);
        if recovered.len() as u64 != kept {
            return Err(format!(
                "recovery kept {} records after the durable lsn {durable}, expected {kept} \
                 (torn: {torn:?})",
                recovered.len()
            ));
        }
        for (i, payload) in recovered.iter().enumerate() {
            if *payload != self.payload(durable + i as u64) {
                return Err(format!("recovered record {} differs", durable + i as u64));
            }
        }
        let next = durable + kept;
        self.frames.truncate((next - self.first_lsn) as usize);
        self.durable_lsn = next;
        Ok(Crash {
            lost_len: unsynced - kept,
            kept_len: kept,
            torn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(&[b"123456789"]), 0xe306_9283);
    }

    #[test]
    fn scan_stops_at_a_torn_or_garbled_frame() {
        let mut image = frame(5, b"hello");
        image.extend(frame(6, b"world"));
        assert_eq!(scan(&image, 5), vec![&b"hello"[..], &b"world"[..]]);
        assert_eq!(scan(&image[..image.len() - 1], 5), vec![&b"hello"[..]]);
        let last = image.len() - 1;
        image[last] ^= 0x40;
        assert_eq!(scan(&image, 5), vec![&b"hello"[..]]);
        assert!(scan(&image, 4).is_empty(), "lsn is checked");
    }

    #[test]
    fn crash_keeps_every_durable_record() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let mut disk = Disk::default();
            for i in 0..5u8 {
                disk.append(&[i; 7]);
            }
            disk.fsync();
            for i in 5..9u8 {
                disk.append(&[i; 7]);
            }
            let crash = disk.crash(&mut rng).expect("recovers");
            assert!(disk.next_lsn() >= 5);
            assert_eq!(crash.lost_len + crash.kept_len, 4);
            assert_eq!(disk.durable_lsn(), disk.next_lsn());
            assert_eq!(disk.payload(4), &[4u8; 7]);
        }
    }
}
