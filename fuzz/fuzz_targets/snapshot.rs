//! Arbitrary bytes as a snapshot file and as a snapshot body: neither the WAL's snapshot
//! decoder nor `State::decode_snapshot` may panic; a state that decodes re-encodes to
//! bytes that decode to a state encoding to the same bytes; the periodic work that runs
//! after start-up (promotion, lease expiry, retention), a lease and an enqueue must not
//! panic either.
//!
//! Input: one flag byte, then the bytes.
//! - bit 0: wrap the bytes in a valid snapshot header (else they are a whole file)
//! - bits 1-7: a time offset for the periodic work
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::{Config, EnqueueSpec, State};
use sluice_wal::fuzzing::{decode_snapshot, encode_snapshot_header};

const CONFIG: Config = Config {
    retention_ms: 60_000,
    retention_len_max: 2,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let body = if flags & 1 != 0 {
        let lsn = u64::from(flags);
        let mut file = encode_snapshot_header(lsn, rest).to_vec();
        file.extend_from_slice(rest);
        let (decoded_lsn, body) = decode_snapshot(&file).expect("a well-formed snapshot decodes");
        assert_eq!(decoded_lsn, lsn);
        assert_eq!(body, rest);
        rest
    } else {
        match decode_snapshot(rest) {
            Ok((_, body)) => body,
            Err((offset, _)) => {
                assert!(offset < 28);
                rest
            }
        }
    };

    let Ok(mut state) = State::decode_snapshot(CONFIG, body) else {
        return;
    };
    let first = state.encode_snapshot();
    let again = State::decode_snapshot(CONFIG, &first).expect("an encoded snapshot decodes");
    assert_eq!(
        again.encode_snapshot(),
        first,
        "snapshot does not round-trip"
    );
    assert_eq!(again.job_len(), state.job_len());
    assert_eq!(again.queue_len(), state.queue_len());

    // What the server does next with a restored state.
    let now = state
        .next_deadline()
        .unwrap_or(0)
        .saturating_add(i64::from(flags >> 1) * 1_000);
    state.promote_due(now);
    state.expire_leases(now);
    state.retain(now);
    let queues: Vec<String> = (0..state.queue_len().min(4))
        .map(|id| state.queue_name(id as u32).to_owned())
        .collect();
    let _ = state.lease(now, &queues, 8, Some("fuzz".into()));
    let _ = state.enqueue(now, vec![EnqueueSpec::new("emails", "send", "{}")], false);
    let after = state.encode_snapshot();
    State::decode_snapshot(CONFIG, &after).expect("a snapshot after work decodes");
});
