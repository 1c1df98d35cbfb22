//! The registry of workers: who says it is alive (`PUT /v1/workers/{name}`), what it
//! runs, and when it was last heard from. Not in the log: after a restart workers
//! register again with their next beat. A worker not heard from within the stale time is
//! dropped by the tick, which also ends its leases (`State::expire_worker_leases`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_core::Millis;
use sluice_proto::WorkerBeat;

#[derive(Debug, Clone)]
pub struct Registered {
    pub beat: WorkerBeat,
    pub registered_at: Millis,
    pub last_seen_at: Millis,
    /// The same on the monotonic clock, which reaping goes by: a wall clock stepped
    /// forward must not make every worker look silent.
    last_seen: Instant,
    /// Attempts it finished since it registered: acked, and failed or expired.
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Default)]
pub struct Registry {
    workers: BTreeMap<String, Registered>,
}

/// `register` refused: the registry is full.
#[derive(Debug)]
pub struct Full;

impl Registry {
    /// Registers `name` or refreshes it with `beat`.
    pub fn register(&mut self, name: &str, beat: WorkerBeat, now: Millis) -> Result<(), Full> {
        let full = self.workers.len() >= sluice_proto::limits::WORKERS_MAX;
        match self.workers.get_mut(name) {
            Some(worker) => {
                // Every field is optional: what a beat leaves out keeps its last value.
                let kept = &mut worker.beat;
                kept.host = beat.host.or(kept.host.take());
                kept.pid = beat.pid.or(kept.pid);
                kept.version = beat.version.or(kept.version.take());
                kept.concurrency = beat.concurrency.or(kept.concurrency);
                if !beat.queues.is_empty() {
                    kept.queues = beat.queues;
                }
                worker.last_seen_at = worker.last_seen_at.max(now);
                worker.last_seen = Instant::now();
            }
            None if full => return Err(Full),
            None => {
                self.workers.insert(
                    name.to_owned(),
                    Registered {
                        beat,
                        registered_at: now,
                        last_seen_at: now,
                        last_seen: Instant::now(),
                        succeeded: 0,
                        failed: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// A sign of life from `name` (a lease poll, a job heartbeat), if it is registered.
    pub fn touch(&mut self, name: &str, now: Millis) {
        if let Some(worker) = self.workers.get_mut(name) {
            worker.last_seen_at = worker.last_seen_at.max(now);
            worker.last_seen = Instant::now();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Counts an attempt `name` finished, if it is registered.
    pub fn finished(&mut self, name: &str, succeeded: bool) {
        if let Some(worker) = self.workers.get_mut(name) {
            if succeeded {
                worker.succeeded += 1;
            } else {
                worker.failed += 1;
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.workers.remove(name).is_some()
    }

    /// Drops the workers not heard from for `stale` (on the monotonic clock, as of
    /// `now`); returns their names.
    pub fn reap(&mut self, now: Instant, stale: Duration) -> Vec<String> {
        let stale: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > stale)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            self.workers.remove(name);
        }
        stale
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Registered)> {
        self.workers.iter().map(|(n, w)| (n.as_str(), w))
    }

    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.workers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_not_heard_from_within_the_stale_time_are_reaped() {
        let mut registry = Registry::default();
        registry
            .register("a", WorkerBeat::default(), 1_000)
            .expect("room");
        registry
            .register("b", WorkerBeat::default(), 1_000)
            .expect("room");
        let stale = Duration::from_secs(30);
        let now = Instant::now();
        assert_eq!(registry.reap(now, stale), Vec::<String>::new());
        if let Some(b) = registry.workers.get_mut("b") {
            b.last_seen = now + Duration::from_secs(20);
        }
        registry.touch("nobody", 20_000);
        let later = now + Duration::from_secs(31);
        assert_eq!(registry.reap(later, stale), vec!["a".to_owned()]);
        assert!(registry.get("b").is_some() && registry.get("nobody").is_none());
        // A wall clock stepped back does not make a worker's last sighting older.
        registry.touch("b", 20_000);
        registry
            .register("b", WorkerBeat::default(), 5_000)
            .expect("room");
        assert_eq!(registry.get("b").map(|w| w.last_seen_at), Some(20_000));
    }

    #[test]
    fn a_beat_keeps_what_it_leaves_out() {
        let mut registry = Registry::default();
        let full = WorkerBeat {
            host: Some("box-1".into()),
            pid: Some(42),
            version: Some("app 1".into()),
            concurrency: Some(10),
            queues: vec!["emails".into()],
        };
        registry.register("w", full.clone(), 1_000).expect("room");
        registry
            .register("w", WorkerBeat::default(), 2_000)
            .expect("room");
        let kept = registry
            .get("w")
            .map(|w| w.beat.clone())
            .expect("registered");
        assert_eq!(
            (
                kept.host,
                kept.pid,
                kept.version,
                kept.concurrency,
                kept.queues
            ),
            (
                full.host,
                full.pid,
                full.version,
                full.concurrency,
                full.queues
            )
        );
        let newer = WorkerBeat {
            concurrency: Some(20),
            ..WorkerBeat::default()
        };
        registry.register("w", newer, 3_000).expect("room");
        let beat = registry
            .get("w")
            .map(|w| w.beat.clone())
            .expect("registered");
        assert_eq!((beat.concurrency, beat.pid), (Some(20), Some(42)));
    }
}
