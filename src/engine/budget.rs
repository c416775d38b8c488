//! [`PendingBudget`]: the producer-wide cap on records and payload bytes accepted but not yet
//! resolved (`max_pending_messages`, `max_pending_bytes`).
//!
//! Callers take room per record with two uncontended atomic adds; shards give it back once per
//! resolved batch. Waiting for room never blocks an executor: async senders register a waker,
//! blocking senders wait on a condition variable with a deadline. The same counters tell `flush`
//! when everything has been resolved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub struct PendingBudget {
    /// Records holding room (admission).
    records: AtomicU64,
    bytes: AtomicU64,
    /// Records not yet fully resolved (callbacks run, futures woken): what `flush` waits for.
    unresolved: AtomicU64,
    max_records: u64,
    max_bytes: u64,
    waiters: Mutex<Waiters>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Waiters {
    wakers: Vec<Waker>,
    /// Bumped on every release, so blocking waiters can tell a release happened.
    releases: u64,
}

impl PendingBudget {
    /// A budget of `max_records` records and `max_bytes` payload bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> PendingBudget {
        PendingBudget {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            unresolved: AtomicU64::new(0),
            max_records: max_records as u64,
            max_bytes: max_bytes as u64,
            waiters: Mutex::new(Waiters::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes room for one record of `bytes` payload bytes; false (and nothing taken) when the
    /// budget is used up. A record larger than the whole byte budget is let through when nothing
    /// else is pending, so it can never wait forever.
    pub fn try_acquire(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let records = self.records.fetch_add(1, Ordering::AcqRel);
        let held = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let over_records = records >= self.max_records;
        let over_bytes = held + bytes > self.max_bytes && held > 0;
        if over_records || over_bytes {
            self.records.fetch_sub(1, Ordering::AcqRel);
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        self.unresolved.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// True when a record of `bytes` payload bytes would be refused now.
    pub fn is_full_for(&self, bytes: usize) -> bool {
        let held = self.bytes.load(Ordering::Acquire);
        self.records.load(Ordering::Acquire) >= self.max_records
            || (held + bytes as u64 > self.max_bytes && held > 0)
    }

    /// Gives back room for `records` records and `bytes` bytes and wakes waiters. Called before
    /// the outcome is announced, so whoever learns of it can send again at once.
    pub fn release(&self, records: u64, bytes: u64) {
        self.records.fetch_sub(records, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.notify();
    }

    /// Marks `records` records resolved. Called after their callbacks ran, so `flush` returns
    /// only once every callback has run.
    pub fn settle(&self, records: u64) {
        self.unresolved.fetch_sub(records, Ordering::AcqRel);
        self.notify();
    }

    fn notify(&self) {
        let wakers = {
            let mut waiters = self.lock();
            waiters.releases += 1;
            std::mem::take(&mut waiters.wakers)
        };
        self.changed.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Records accepted and not yet resolved.
    pub fn pending_records(&self) -> u64 {
        self.unresolved.load(Ordering::Acquire)
    }

    /// Payload bytes accepted and not yet resolved.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Registers `waker` to be woken at the next release. Returns false (not registered) when
    /// `still_waiting` turns out false under the lock, which closes the race with a release that
    /// happened between the caller's check and this call.
    pub fn register(
        &self,
        waker: &Waker,
        still_waiting: impl FnOnce(&PendingBudget) -> bool,
    ) -> bool {
        let mut waiters = self.lock();
        if !still_waiting(self) {
            return false;
        }
        if !waiters.wakers.iter().any(|w| w.will_wake(waker)) {
            waiters.wakers.push(waker.clone());
        }
        true
    }

    /// Blocks the calling thread until `done` holds or `deadline` passes; returns `done`'s last
    /// value. Re-checks after every release.
    pub fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&PendingBudget) -> bool,
    ) -> bool {
        let mut waiters = self.lock();
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            waiters = self
                .changed
                .wait_timeout(waiters, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Wakes every waiter without releasing anything (used when the producer closes).
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut self.lock().wakers);
        self.changed.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn records_and_bytes_are_both_capped() {
        let budget = PendingBudget::new(2, 100);
        assert!(budget.try_acquire(10));
        assert!(budget.try_acquire(10));
        assert!(!budget.try_acquire(10), "record cap");
        assert_eq!(budget.pending_records(), 2);
        budget.release(2, 20);
        budget.settle(2);
        assert!(budget.try_acquire(60));
        assert!(!budget.try_acquire(60), "byte cap");
        assert_eq!(budget.pending_bytes(), 60);
    }

    #[test]
    fn an_oversized_record_passes_when_nothing_is_pending() {
        let budget = PendingBudget::new(10, 100);
        assert!(budget.try_acquire(1000));
        assert!(!budget.try_acquire(1));
    }

    #[test]
    fn blocking_wait_sees_a_release_from_another_thread() {
        let budget = Arc::new(PendingBudget::new(1, 100));
        assert!(budget.try_acquire(1));
        let releaser = budget.clone();
        let thread = std::thread::spawn(move || {
            releaser.release(1, 1);
            releaser.settle(1);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(budget.wait_until(deadline, |b| b.pending_records() == 0));
        thread.join().unwrap();
        let past = Instant::now();
        assert!(budget.try_acquire(1));
        assert!(!budget.wait_until(past, |b| b.pending_records() == 0), "deadline honoured");
    }
}
