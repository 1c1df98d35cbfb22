//! Crash test of streams: the real `sluice` binary (`--fsync always`) with producers
//! appending keyed records and a consumer group member committing offsets, killed with
//! SIGKILL at a random moment, restarted, and checked against what its clients were told
//! with 2xx replies:
//! - every acknowledged record reads back at its partition and offset, with its value;
//! - each partition's offsets are dense from the earliest kept, with no record twice;
//! - a committed group offset is never behind the last one acknowledged.
//!
//! Replay a failure with `SLUICE_CRASH_SEED=<seed>`; more cycles with
//! `SLUICE_STREAM_CRASH_CYCLES=N` (default 8).

#[allow(dead_code)] // The SIGTERM helper is for crash.rs.
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::Server;

const PARTITIONS: u32 = 3;
const PRODUCERS: usize = 3;
const BATCH_LEN: usize = 20;

/// splitmix64, seeded: the kill times and keys of a run are its seed's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Acknowledged records by `(partition, offset)`: their values; and the group's last
/// acknowledged commit per partition.
#[derive(Default, Clone)]
struct Ledger {
    records: HashMap<(u32, u64), String>,
    committed: BTreeMap<u32, u64>,
}

async fn produce(
    base: String,
    ledger: Arc<Mutex<Ledger>>,
    dying: Arc<AtomicBool>,
    who: usize,
    seed: u64,
) {
    let http = reqwest::Client::new();
    let mut rng = Rng(seed ^ who as u64);
    let mut n = 0u64;
    while !dying.load(Ordering::SeqCst) {
        let values: Vec<String> = (0..BATCH_LEN)
            .map(|i| format!("p{who}-{n}-{i}-{}", rng.next()))
            .collect();
        n += 1;
        let records: Vec<Value> = values
            .iter()
            .map(|v| json!({ "key": v, "value": v }))
            .collect();
        let sent = http
            .post(format!("{base}/v1/streams/crash/records"))
            .json(&json!({ "records": records }))
            .send()
            .await;
        let Ok(reply) = sent else { continue };
        if reply.status() != 200 {
            assert!(
                dying.load(Ordering::SeqCst) || reply.status().as_u16() < 500,
                "produce answered {}",
                reply.status()
            );
            continue;
        }
        let Ok(body) = reply.json::<Value>().await else {
            continue;
        };
        let mut ledger = ledger.lock().expect("ledger");
        for (value, offset) in values
            .iter()
            .zip(body["offsets"].as_array().into_iter().flatten())
        {
            let partition = offset["partition"].as_u64().unwrap_or(0) as u32;
            let offset = offset["offset"].as_u64().unwrap_or(0);
            ledger.records.insert((partition, offset), value.clone());
        }
    }
}

/// Joins the group, reads partitions and commits as it goes.
async fn consume(base: String, ledger: Arc<Mutex<Ledger>>, dying: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let group = format!("{base}/v1/streams/crash/groups/audit");
    let Ok(reply) = http
        .post(format!("{group}/join"))
        .json(&json!({}))
        .send()
        .await
    else {
        return;
    };
    let Ok(assignment) = reply.json::<Value>().await else {
        return;
    };
    let member = assignment["member_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let generation = assignment["generation"].as_u64().unwrap_or(0);
    let mut next: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for o in assignment["offsets"].as_array().into_iter().flatten() {
        next.insert(
            o["partition"].as_u64().unwrap_or(0) as u32,
            o["offset"].as_u64().unwrap_or(0),
        );
    }
    while !dying.load(Ordering::SeqCst) {
        for p in 0..PARTITIONS {
            let Ok(reply) = http
                .get(format!(
                    "{base}/v1/streams/crash/partitions/{p}/records?offset={}&wait_ms=50",
                    next[&p]
                ))
                .send()
                .await
            else {
                return;
            };
            let Ok(body) = reply.json::<Value>().await else {
                return;
            };
            if let Some(n) = body["next_offset"].as_u64() {
                next.insert(p, n);
            }
        }
        let offsets: Vec<Value> = next
            .iter()
            .map(|(p, o)| json!({ "partition": p, "offset": o }))
            .collect();
        let Ok(reply) = http
            .post(format!("{group}/commit"))
            .json(&json!({ "member_id": member, "generation": generation, "offsets": offsets }))
            .send()
            .await
        else {
            return;
        };
        if reply.status() == 204 {
            ledger.lock().expect("ledger").committed = next.clone();
        } else {
            return;
        }
    }
}

async fn verify(base: &str, ledger: &Ledger, seed: u64, cycle: u32) {
    let http = reqwest::Client::new();
    let mut read: HashMap<(u32, u64), String> = HashMap::new();
    for p in 0..PARTITIONS {
        let mut offset: Option<u64> = None;
        loop {
            let from = offset.map_or("from=earliest".to_owned(), |o| format!("offset={o}"));
            let body: Value = http
                .get(format!(
                    "{base}/v1/streams/crash/partitions/{p}/records?{from}&max_bytes=16000000"
                ))
                .send()
                .await
                .expect("fetch")
                .json()
                .await
                .expect("json");
            let records = body["records"].as_array().cloned().unwrap_or_default();
            if records.is_empty() {
                break;
            }
            for r in &records {
                let at = r["offset"].as_u64().expect("offset");
                if let Some(expected) = offset {
                    assert_eq!(
                        at, expected,
                        "seed {seed} cycle {cycle}: partition {p} offsets not dense"
                    );
                }
                offset = Some(at + 1);
                let value = r["value"].as_str().unwrap_or_default().to_owned();
                assert!(
                    read.insert((p, at), value).is_none(),
                    "seed {seed}: record read twice"
                );
            }
        }
    }
    for (at, value) in &ledger.records {
        assert_eq!(
            read.get(at),
            Some(value),
            "seed {seed} cycle {cycle}: acknowledged record at {at:?} lost or changed"
        );
    }
    let info: Value = http
        .get(format!("{base}/v1/streams/crash/groups/audit"))
        .send()
        .await
        .expect("group")
        .json()
        .await
        .expect("json");
    for lag in info["partitions"].as_array().into_iter().flatten() {
        let p = lag["partition"].as_u64().unwrap_or(0) as u32;
        if let Some(&acked) = ledger.committed.get(&p) {
            let committed = lag["committed"].as_u64().unwrap_or(0);
            assert!(
                committed >= acked,
                "seed {seed} cycle {cycle}: partition {p} committed {committed} < acknowledged {acked}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_producing_and_committing_loses_nothing_acknowledged() {
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    let cycles: u32 = std::env::var("SLUICE_STREAM_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    println!("SLUICE_CRASH_SEED={seed} SLUICE_STREAM_CRASH_CYCLES={cycles}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("dir");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let http = reqwest::Client::new();
    for cycle in 0..cycles {
        let mut server = Server::start(dir.path(), &[]);
        server.wait_ready(&http).await;
        let base = server.base.clone();
        if cycle == 0 {
            let created = http
                .put(format!("{base}/v1/streams/crash"))
                .json(&json!({ "partitions": PARTITIONS }))
                .send()
                .await
                .expect("create");
            assert_eq!(created.status(), 200);
        } else {
            let acknowledged = ledger.lock().expect("ledger").clone();
            verify(&base, &acknowledged, seed, cycle).await;
        }
        let dying = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for who in 0..PRODUCERS {
            tasks.push(tokio::spawn(produce(
                base.clone(),
                ledger.clone(),
                dying.clone(),
                who,
                seed ^ u64::from(cycle) << 8,
            )));
        }
        tasks.push(tokio::spawn(consume(
            base.clone(),
            ledger.clone(),
            dying.clone(),
        )));
        // The one intended sleep: the load runs a random while, then the kill lands
        // wherever it lands.
        tokio::time::sleep(Duration::from_millis(rng.range(150, 700))).await;
        dying.store(true, Ordering::SeqCst);
        let log = server.kill();
        for task in tasks {
            let _ = task.await;
        }
        assert!(
            !log.contains("panicked"),
            "seed {seed}: the server panicked:\n{log}"
        );
    }
    let mut server = Server::start(dir.path(), &[]);
    server.wait_ready(&http).await;
    let ledger = ledger.lock().expect("ledger").clone();
    assert!(
        ledger.records.len() > 100,
        "too little got acknowledged to test anything"
    );
    verify(&server.base.clone(), &ledger, seed, cycles).await;
    println!(
        "{} acknowledged records, committed {:?}",
        ledger.records.len(),
        ledger.committed
    );
    server.kill();
}
