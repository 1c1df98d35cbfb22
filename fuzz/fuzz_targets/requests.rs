//! Arbitrary bytes as the JSON body of every request type, parsed the way the server's
//! `ApiJson` extractor does: no panic; what parses re-serializes to JSON that parses again.
//! Job specs then go through the server's `to_spec` and the core's `enqueue` (its
//! validation), and the event that makes must round-trip and replay. Ids and times in the
//! requests, and the whole input as a string, go through `ids::decode` and
//! `rfc3339::parse_ms`, which must round-trip what they accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_core::{Config, Event, State};
use sluice_proto::{self as proto, ids, limits, rfc3339};
use sluice_server::api::{decode_json, to_spec};

const NOW: i64 = 1_764_000_000_000;

fn parse<T: DeserializeOwned + Serialize>(data: &[u8]) -> Option<T> {
    let value: T = decode_json(data).ok()?;
    let text = serde_json::to_string(&value).expect("a parsed request serializes");
    decode_json::<T>(text.as_bytes()).expect("a re-serialized request parses");
    Some(value)
}

fn check_id(text: &str) {
    if let Some(value) = ids::decode(text) {
        assert_eq!(ids::encode(value), text.to_ascii_lowercase(), "id {text:?}");
    }
}

fn check_time(text: &str) {
    if let Some(ms) = rfc3339::parse_ms(text) {
        let formatted = rfc3339::format_ms(ms);
        if !formatted.starts_with('@') {
            assert_eq!(rfc3339::parse_ms(&formatted), Some(ms), "time {text:?}");
        }
    }
}

/// Enqueues as the server would (on an empty state) and checks the event.
fn enqueue(specs: Vec<proto::JobSpec>, batch: bool) {
    let mut core = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let path = if batch {
            format!("jobs[{i}].")
        } else {
            String::new()
        };
        match to_spec(spec, &path, NOW) {
            Ok(spec) => core.push(spec),
            Err(_) => return,
        }
    }
    let mut state = State::new(Config::default());
    let Ok((event, results)) = state.enqueue(NOW, core, batch) else {
        return;
    };
    let Some(event) = event else {
        assert!(results.iter().all(|r| r.duplicate));
        return;
    };
    assert_eq!(Event::decode(&event.encode()).as_ref(), Ok(&event));
    let mut replayed = State::new(Config::default());
    replayed.apply(&event).expect("an enqueue event replays");
    assert_eq!(replayed.job_len(), state.job_len());
    assert_eq!(replayed.encode_snapshot(), state.encode_snapshot());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_id(text);
        check_time(text);
    }
    if let Some(spec) = parse::<proto::JobSpec>(data) {
        if let Some(run_at) = &spec.run_at {
            check_time(run_at);
        }
        enqueue(vec![spec], false);
    }
    if let Some(request) = parse::<proto::EnqueueBatchRequest>(data) {
        if !request.jobs.is_empty() && request.jobs.len() <= limits::ENQUEUE_BATCH_LEN_MAX {
            enqueue(request.jobs, true);
        }
    }
    if let Some(request) = parse::<proto::LeaseRequest>(data) {
        for item in &request.acks {
            check_id(&item.id);
            check_id(&item.lease_id);
        }
        let mut state = State::new(Config::default());
        let max_jobs = request.max_jobs.min(limits::LEASE_BATCH_LEN_MAX) as usize;
        let _ = state.lease(NOW, &request.queues, max_jobs, request.worker);
    }
    if let Some(request) = parse::<proto::AckBatchRequest>(data) {
        for item in &request.acks {
            check_id(&item.id);
            check_id(&item.lease_id);
        }
    }
    if let Some(request) = parse::<proto::FailBatchRequest>(data) {
        for item in &request.fails {
            check_id(&item.id);
            check_id(&item.lease_id);
            if let Some(retry_at) = &item.retry_at {
                check_time(retry_at);
            }
        }
    }
    if let Some(request) = parse::<proto::FailRequest>(data) {
        check_id(&request.lease_id);
        if let Some(retry_at) = &request.retry_at {
            check_time(retry_at);
        }
    }
    if let Some(request) = parse::<proto::AckRequest>(data) {
        check_id(&request.lease_id);
    }
    if let Some(request) = parse::<proto::HeartbeatRequest>(data) {
        check_id(&request.lease_id);
    }
});
