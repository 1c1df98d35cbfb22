//! `JobTable`: jobs in a dense `Vec`, found through a small id → slot map.
//!
//! A `HashMap<JobId, Job>` stores the whole job in every bucket, and hash tables grow by
//! doubling: just past a power of two, half the buckets are empty, each the size of a
//! job (~120 bytes). Here the buckets hold a 4-byte slot number, and the jobs sit densely
//! in a `Vec` whose free slots are reused.

use rustc_hash::FxHashMap;

use crate::state::Job;
use crate::JobId;

#[derive(Debug, Default)]
pub(crate) struct JobTable {
    slot_of: FxHashMap<JobId, u32>,
    slots: Vec<Option<Job>>,
    free: Vec<u32>,
}

impl JobTable {
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn reserve(&mut self, additional: usize) {
        self.slot_of.reserve(additional);
        self.slots
            .reserve(additional.saturating_sub(self.free.len()));
    }

    pub fn contains_key(&self, id: &JobId) -> bool {
        self.slot_of.contains_key(id)
    }

    pub fn get(&self, id: &JobId) -> Option<&Job> {
        let slot = *self.slot_of.get(id)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        let slot = *self.slot_of.get(id)?;
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Inserts `job` under `id`, replacing any job already there.
    pub fn insert(&mut self, id: JobId, job: Job) {
        if let Some(&slot) = self.slot_of.get(&id) {
            self.slots[slot as usize] = Some(job);
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(job);
                slot
            }
            None => {
                // More than 4 billion jobs cannot fit in memory anyway.
                assert!(self.slots.len() < u32::MAX as usize, "job table full");
                self.slots.push(Some(job));
                (self.slots.len() - 1) as u32
            }
        };
        self.slot_of.insert(id, slot);
    }

    pub fn remove(&mut self, id: &JobId) -> Option<Job> {
        let slot = self.slot_of.remove(id)?;
        let job = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        job
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Job> {
        Values {
            inner: self.slots.iter(),
            left: self.len(),
        }
    }
}

struct Values<'a> {
    inner: std::slice::Iter<'a, Option<Job>>,
    left: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a Job;

    fn next(&mut self) -> Option<&'a Job> {
        let job = self.inner.by_ref().flatten().next()?;
        self.left -= 1;
        Some(job)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Values<'_> {}
