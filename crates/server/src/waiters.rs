//! Parked long-polls, by queue. A change that makes `n` jobs ready in a queue wakes at most
//! `n` of that queue's pollers, so an enqueue costs O(jobs), not O(parked polls): with
//! 10,000 idle workers, waking all of them for every job made each enqueue cost ~10 ms.
//!
//! No job is left behind by a poller that was woken but did not take it: every lease
//! attempt closes its registration under the state lock (a closed poller is skipped, not
//! counted, by later wake-ups), and a lease that leaves ready jobs in its queues wakes
//! one more poller for each such queue (see `api::lease`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// Open registrations of one queue by token: oldest first, removed in O(log n).
type QueueWaiters = BTreeMap<u64, Arc<Waiter>>;

#[derive(Default)]
pub struct Waiters {
    by_queue: Mutex<FxHashMap<Box<str>, QueueWaiters>>,
    next_token: AtomicU64,
}

pub struct Waiter {
    token: u64,
    /// Set once this poller was woken or has made its lease attempt: it needs no (more)
    /// wake-ups from this registration.
    closed: AtomicBool,
    pub notify: Notify,
}

impl Waiter {
    /// Marks the lease attempt made; call under the state lock, with the lease.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A poller's place in the queues it waits on; leaves them when dropped.
pub struct Registration<'a> {
    waiters: &'a Waiters,
    queues: Vec<Box<str>>,
    pub waiter: Arc<Waiter>,
}

impl Waiters {
    /// Registers a poller on `queues` before its lease attempt, so that a job made ready
    /// after the attempt wakes it (a notification sent in between is kept as a permit).
    pub fn register(&self, queues: &[String]) -> Registration<'_> {
        let waiter = Arc::new(Waiter {
            token: self.next_token.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let mut queues: Vec<Box<str>> = queues.iter().map(|q| q.as_str().into()).collect();
        queues.sort_unstable();
        queues.dedup();
        let mut by_queue = self.by_queue.lock();
        for queue in &queues {
            by_queue
                .entry(queue.clone())
                .or_default()
                .insert(waiter.token, waiter.clone());
        }
        drop(by_queue);
        Registration {
            waiters: self,
            queues,
            waiter,
        }
    }

    /// Wakes up to `count` open pollers of `queue`, oldest first.
    pub fn wake(&self, queue: &str, count: usize) {
        if count == 0 {
            return;
        }
        let mut woken = Vec::new();
        {
            let mut by_queue = self.by_queue.lock();
            let Some(list) = by_queue.get_mut(queue) else {
                return;
            };
            while woken.len() < count {
                let Some((_, waiter)) = list.pop_first() else {
                    break;
                };
                if !waiter.closed.swap(true, Ordering::AcqRel) {
                    woken.push(waiter);
                }
            }
            if list.is_empty() {
                by_queue.remove(queue);
            }
        }
        for waiter in woken {
            waiter.notify.notify_one();
        }
    }

    /// Pollers parked on `queue` (for tests and metrics).
    pub fn parked(&self, queue: &str) -> usize {
        self.by_queue.lock().get(queue).map_or(0, BTreeMap::len)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut by_queue = self.waiters.by_queue.lock();
        for queue in &self.queues {
            if let Some(list) = by_queue.get_mut(queue) {
                list.remove(&self.waiter.token);
                if list.is_empty() {
                    by_queue.remove(queue);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_notified(waiter: &Waiter) -> bool {
        // A notification sent while nobody awaited is kept as a permit.
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable()
    }

    #[test]
    fn wake_wakes_at_most_count_pollers_oldest_first() {
        let waiters = Waiters::default();
        let first = waiters.register(&["q".into()]);
        let second = waiters.register(&["q".into()]);
        let third = waiters.register(&["q".into()]);
        waiters.wake("q", 2);
        assert!(is_notified(&first.waiter));
        assert!(is_notified(&second.waiter));
        assert!(!is_notified(&third.waiter));
        assert_eq!(waiters.parked("q"), 1);
    }

    #[test]
    fn a_poller_woken_for_one_queue_is_passed_by_in_its_other_queues() {
        let waiters = Waiters::default();
        let both = waiters.register(&["a".into(), "b".into()]);
        let only_b = waiters.register(&["b".into()]);
        waiters.wake("a", 1);
        waiters.wake("b", 1);
        assert!(is_notified(&both.waiter));
        assert!(
            is_notified(&only_b.waiter),
            "the wake-up for b went to a poller that had not been woken yet"
        );
    }

    #[test]
    fn a_closed_poller_takes_no_wake_up_and_a_dropped_one_leaves_its_queues() {
        let waiters = Waiters::default();
        let done = waiters.register(&["q".into()]);
        let waiting = waiters.register(&["q".into()]);
        done.waiter.close();
        waiters.wake("q", 1);
        assert!(!is_notified(&done.waiter));
        assert!(is_notified(&waiting.waiter));
        drop(done);
        drop(waiting);
        assert_eq!(waiters.parked("q"), 0);
    }
}
