//! [`PendingBudget`]: the producer-wide cap on records and payload bytes accepted but not yet
//! resolved (`max_pending_messages`, `max_pending_bytes`).
//!
//! Callers take room per record with one atomic add (records and bytes share one word: the
//! record count above bit 36, the bytes below); shards give it back once per resolved batch. Waiting for room never blocks an executor: async senders register a waker,
//! blocking senders wait on a condition variable with a deadline. The same counters tell `flush`
//! when everything has been resolved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

/// Bits of the admission word that count bytes; the record count sits above them.
const BYTES_BITS: u32 = 36;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;
/// The largest record cap (`max_pending_messages` is clamped to it): 2^27, with room above for
/// the transient over-count of concurrent refused senders.
pub const MAX_RECORDS: u64 = 1 << 27;
/// The largest byte cap (`max_pending_bytes` is clamped to it) and record size: 32 GiB.
pub const MAX_BYTES: u64 = 1 << 35;

/// See the module docs.
#[derive(Debug)]
pub struct PendingBudget {
    /// Records (above [`BYTES_BITS`]) and payload bytes (below) holding room: admission.
    admitted: AtomicU64,
    /// Records given back by [`PendingBudget::release`] and not yet [`PendingBudget::settle`]d.
    /// Admitted plus releasing is what `flush` waits for: records not fully resolved (callbacks
    /// run, futures woken).
    releasing: AtomicU64,
    /// Records handed to the producer that wait for room (blocking mode): not admitted yet, but
    /// pending all the same, for `flush`, `close` and `in_flight_count`.
    queued: AtomicU64,
    /// Registered wakers plus threads blocked in `wait_until`.
    waiting: AtomicU64,
    max_records: u64,
    max_bytes: u64,
    waiters: Mutex<Waiters>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Waiters {
    wakers: Vec<Waker>,
}

impl PendingBudget {
    /// A budget of `max_records` records and `max_bytes` payload bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> PendingBudget {
        PendingBudget {
            admitted: AtomicU64::new(0),
            releasing: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            max_records: (max_records as u64).min(MAX_RECORDS),
            max_bytes: (max_bytes as u64).min(MAX_BYTES),
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
    ///
    /// `bytes` must be at most [`MAX_BYTES`] (the producer refuses larger records first).
    pub fn try_acquire(&self, bytes: usize) -> bool {
        self.try_acquire_many(1, bytes as u64)
    }

    /// [`PendingBudget::try_acquire`] for `count` records of `bytes` payload bytes in all, all
    /// or none: admitted when they fit, or when nothing is pending (so that no call can wait
    /// for room forever).
    pub fn try_acquire_many(&self, count: u64, bytes: u64) -> bool {
        let bytes = bytes.min(MAX_BYTES);
        let add = count << BYTES_BITS | bytes;
        let before = self.admitted.fetch_add(add, Ordering::SeqCst);
        let (records, held) = (before >> BYTES_BITS, before & BYTES_MASK);
        let over_records = records + count > self.max_records && records > 0;
        let over_bytes = held + bytes > self.max_bytes && held > 0;
        if over_records || over_bytes {
            self.admitted.fetch_sub(add, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// True when a record of `bytes` payload bytes would be refused now.
    pub fn is_full_for(&self, bytes: usize) -> bool {
        let admitted = self.admitted.load(Ordering::SeqCst);
        let held = admitted & BYTES_MASK;
        admitted >> BYTES_BITS >= self.max_records
            || (held + bytes as u64 > self.max_bytes && held > 0)
    }

    /// Gives back room for `records` records and `bytes` bytes and wakes waiters. Called before
    /// the outcome is announced, so whoever learns of it can send again at once.
    pub fn release(&self, records: u64, bytes: u64) {
        // Counted as releasing before leaving admission, so `pending_records` never misses them.
        self.releasing.fetch_add(records, Ordering::SeqCst);
        self.admitted.fetch_sub(records << BYTES_BITS | bytes.min(MAX_BYTES), Ordering::SeqCst);
        self.notify();
    }

    /// Marks `records` records resolved. Called after their callbacks ran, so `flush` returns
    /// only once every callback has run.
    pub fn settle(&self, records: u64) {
        self.releasing.fetch_sub(records, Ordering::SeqCst);
        self.notify();
    }

    fn notify(&self) {
        // Nobody waits almost always: skip the lock and the futex wake (a system call per
        // release, twice per batch, before this check). The fence pairs with the ones in
        // `register` and `wait_until`: either the waiter's check sees this release, or this
        // sees the waiter.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.wake_all();
    }

    /// Counts `records` records waiting for room (they are pending from now on).
    pub fn add_queued(&self, records: u64) {
        self.queued.fetch_add(records, Ordering::SeqCst);
    }

    /// `records` waiting records were admitted (after [`PendingBudget::try_acquire`]) or failed.
    pub fn sub_queued(&self, records: u64) {
        self.queued.fetch_sub(records, Ordering::SeqCst);
        self.notify();
    }

    /// Records waiting for room.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::SeqCst)
    }

    /// Records accepted (or waiting for room) and not yet resolved.
    pub fn pending_records(&self) -> u64 {
        // Waiting records first: one admitted in between is counted in admission (it is
        // admitted before it leaves the queue); then admission: a record released in between is
        // then counted in `releasing` (it is added there before it leaves admission), so nothing
        // unresolved is ever missed; at worst a record is counted twice for an instant, which
        // only delays a waiter.
        let queued = self.queued.load(Ordering::SeqCst);
        let admitted = self.admitted.load(Ordering::SeqCst) >> BYTES_BITS;
        queued + admitted + self.releasing.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    /// Payload bytes accepted and not yet resolved.
    pub fn pending_bytes(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst) & BYTES_MASK
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
        // Announced before the check (see `notify`).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !still_waiting(self) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if waiters.wakers.iter().any(|w| w.will_wake(waker)) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        } else {
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
        // Announced before the first check (see `notify`).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let result = loop {
            if done(self) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            waiters = self
                .changed
                .wait_timeout(waiters, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        drop(waiters);
        result
    }

    /// Wakes every waiter without releasing anything (used when the producer closes).
    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut self.lock().wakers);
        self.waiting.fetch_sub(wakers.len() as u64, Ordering::SeqCst);
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
    fn many_records_are_admitted_all_or_none() {
        let budget = PendingBudget::new(10, 1 << 20);
        assert!(budget.try_acquire_many(6, 600));
        assert!(!budget.try_acquire_many(5, 5), "6 + 5 > 10: none of the 5 taken");
        assert_eq!(budget.pending_records(), 6);
        assert!(budget.try_acquire_many(4, 4));
        budget.release(10, 604);
        budget.settle(10);
        assert!(budget.try_acquire_many(25, 25), "more than the budget, taken when it is empty");
        assert!(!budget.try_acquire(1));
    }

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
