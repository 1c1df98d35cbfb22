//! Arbitrary bytes as logged events: `Event::decode` must not panic; each event that
//! decodes re-encodes to an equal event; applied in turn to a small state built by a fixed
//! script, events may be refused (`Err`: a log that does not fit the state stops start-up)
//! but must not panic; the state they leave behind survives the periodic work and a
//! snapshot round trip.
//!
//! Input: a sequence of chunks, each a u16 LE length and that many bytes (one event);
//! the first chunk is also tried as the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::{Backoff, Config, EnqueueSpec, Event, FailInput, QueueLimits, Rate, State};

const NOW: i64 = 1_764_000_000_000;
const CONFIG: Config = Config {
    retention_ms: 60_000,
    retention_len_max: 2,
};

/// Two queues with a job in most states: ready, scheduled, leased, failed, dead,
/// succeeded, cancelled; one unique key; one paused queue.
fn scripted_state() -> State {
    let mut state = State::new(CONFIG);
    let mut specs = Vec::new();
    for (i, queue) in ["emails", "emails", "emails", "emails", "reports", "reports"]
        .iter()
        .enumerate()
    {
        let mut spec = EnqueueSpec::new(queue, "send", "{\"n\":1}");
        spec.priority = i as i16;
        spec.max_attempts = if i == 1 { 1 } else { 3 };
        spec.tags = vec![format!("t{i}")];
        specs.push(spec);
    }
    specs[0].unique_key = Some("user-1".into());
    specs[3].backoff = Backoff::Fixed { delay_ms: 5_000 };
    specs[2].limit_key = Some("acme".into());
    specs[4].limit_key = Some("acme".into());
    specs[5].limit_key = Some("globex".into());
    let mut later = EnqueueSpec::new("reports", "build", "[]");
    later.run_at = Some(NOW + 3_600_000);
    specs.push(later);
    let (_, enqueued) = state.enqueue(NOW, specs, true).expect("script enqueue");
    let ids: Vec<u64> = enqueued.iter().map(|e| e.id).collect();

    let (_, leased) = state
        .lease(
            NOW + 1,
            &["emails".into(), "reports".into()],
            5,
            Some("w1".into()),
        )
        .expect("script lease");
    let lease_of = |state: &State, id: u64| state.job(id).map_or(0, |job| job.lease_id);
    // ack one, fail one to retry, fail one to death, cancel one, leave one leased.
    let lease = lease_of(&state, leased[0]);
    state.ack(NOW + 2, &[(leased[0], lease)]);
    let fails: Vec<FailInput> = leased[1..3]
        .iter()
        .map(|&id| FailInput {
            id,
            lease_id: lease_of(&state, id),
            error: "boom".into(),
            retry_at: None,
        })
        .collect();
    state.fail(NOW + 3, fails);
    state.cancel(NOW + 4, leased[3]).expect("script cancel");
    state.set_paused("reports", true).expect("script pause");
    let per_key = QueueLimits {
        concurrency: Some(1),
        rate: Some(Rate {
            limit: 2,
            per_ms: 1_000,
        }),
    };
    state
        .set_limits(NOW + 5, "emails", QueueLimits::default(), per_key)
        .expect("script limits");
    let _ = ids;
    state
}

/// Compared as bytes: an event may hold a NaN (an alert value), which is not equal to
/// itself.
fn check_round_trip(event: &Event) {
    let bytes = event.encode();
    assert_eq!(
        Event::decode(&bytes).map(|e| e.encode()),
        Ok(bytes),
        "event does not round-trip"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        check_round_trip(&event);
    }
    let mut state = scripted_state();
    let mut rest = data;
    let mut now = NOW + 10;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let chunk = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + chunk.len()..];
        let Ok(event) = Event::decode(chunk) else {
            continue;
        };
        check_round_trip(&event);
        if state.apply(&event).is_err() {
            // The state is unusable after a refused event: start-up stops here.
            return;
        }
        now = now.saturating_add(1_000);
    }
    // What the server does with the state once replay is done.
    let before = state.encode_snapshot();
    let restored = State::decode_snapshot(CONFIG, &before).expect("a replayed state snapshots");
    assert_eq!(
        restored.encode_snapshot(),
        before,
        "snapshot does not round-trip"
    );
    for at in [now, now.saturating_add(3_600_000_000)] {
        state.promote_due(at);
        state.expire_leases(at);
        state.retain(at);
        let _ = state.lease(at, &["emails".into(), "reports".into()], 4, None);
        let _ = state.enqueue(at, vec![EnqueueSpec::new("emails", "send", "{}")], false);
    }
    let after = state.encode_snapshot();
    State::decode_snapshot(CONFIG, &after).expect("a state after work snapshots");
});
