//! [`ShardShared`]: what the sending threads and the control side share with one shard thread:
//! the shard's batch accumulator, its commands, and the wake-up signal.
//!
//! A wake-up costs one atomic swap when the shard is already awake, and one waker call when it
//! sleeps; senders wake a shard at most once per batch (see [`crate::engine::Appended::wake`]).
//!
//! It also holds the shard's wait queue: in blocking mode (`block_if_queue_full`), a record sent
//! while the pending budget is full is owned by the producer from that call on. It waits here, in
//! send order, and is moved into the accumulator as soon as there is room, by whichever thread
//! sees room first (the sender right after queueing it, or the shard after it released room);
//! while it waits, later records of the same shard wait behind it, so per-stream order holds.
//! A record that waits longer than its timeout fails with
//! [`Error::QueueFullTimeout`](crate::Error::QueueFullTimeout).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::budget::PendingBudget;
use crate::completion::{run_callback, Callback};
use crate::engine::BatchAccumulator;
use crate::error::Error;
use crate::metrics::{ProducerMetrics, ShardMetrics};
use crate::record::Record;

/// A record refused after it was handed over: counted as refused, and its callback called with
/// the error (a panic in it contained and counted).
pub(crate) fn refuse(callback: Callback, error: Error, metrics: &ProducerMetrics) {
    metrics.record_refused(&error);
    if run_callback(callback, Err(error)) {
        metrics.callback_panicked();
    }
}

/// A record waiting for room in the pending budget, with what to call with its result.
pub(crate) struct Waiting {
    /// The record.
    pub record: Record,
    /// Called with the record's result (the application's callback, or the one that resolves
    /// its [`DeliveryFuture`](crate::DeliveryFuture)).
    pub callback: Callback,
    /// When it started waiting.
    pub since: Instant,
    /// How long it may wait, when not the shard's `send_timeout`
    /// ([`Producer::send_with_queue_timeout`](crate::Producer::send_with_queue_timeout)).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").field("since", &self.since).finish_non_exhaustive()
    }
}

/// Orders for a shard, beyond the records it finds in its accumulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Seal every open batch now.
    Flush,
    /// Refuse new records, send what is there, wait for acks until `deadline`, then fail the
    /// rest and exit.
    Close {
        /// When to give up on the remaining acks.
        deadline: Instant,
    },
    /// The producer was dropped without `close`: fail everything with `ProducerClosed` and exit.
    Abort,
    /// [`Producer::purge`](crate::Producer::purge): fail every record not yet acked (waiting for
    /// room, in open batches, queued, in flight) with `Purged`, then count it in
    /// [`ShardShared::purges`]; the shard goes on.
    Purge,
    /// The Manager's node list changed.
    SetEndpoints(Vec<std::net::SocketAddr>),
}

/// See the module docs.
#[derive(Debug)]
pub struct ShardShared {
    accumulator: Mutex<BatchAccumulator>,
    commands: Mutex<Vec<Command>>,
    notified: AtomicBool,
    waker: Mutex<Option<Waker>>,
    failed_at_close: AtomicU64,
    waiting: Mutex<VecDeque<Waiting>>,
    /// Records in `waiting` (read without the lock on the send path).
    waiting_len: AtomicUsize,
    /// Records in `waiting` with a timeout of their own: while there are none, the oldest
    /// record is the first to expire.
    waiting_own_timeout: AtomicUsize,
    /// Set by the shard thread when it ends (see [`ShardShared::stop`]).
    stopped: AtomicBool,
    /// [`Command::Purge`]s done.
    purges: AtomicU64,
    /// Names the shard's thread ([`super::shard_key`]).
    key: u64,
}

impl ShardShared {
    /// Shared state around `accumulator`, for the shard named `key` ([`super::shard_key`]).
    pub fn new(accumulator: BatchAccumulator, key: u64) -> ShardShared {
        ShardShared {
            accumulator: Mutex::new(accumulator),
            commands: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: Mutex::new(None),
            failed_at_close: AtomicU64::new(0),
            waiting: Mutex::new(VecDeque::new()),
            waiting_len: AtomicUsize::new(0),
            waiting_own_timeout: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            purges: AtomicU64::new(0),
            key,
        }
    }

    /// Names the shard's thread ([`super::shard_key`]).
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// For the shard thread as it ends: marks it stopped, then fails with `error` whatever still
    /// waits for room or sits in the accumulator. A sender that queues or admits a record after
    /// that sees [`ShardShared::has_stopped`] and calls [`ShardShared::fail_leftovers`] itself,
    /// so no record is left behind whichever comes first.
    pub(crate) fn stop(&self, error: &Error, budget: &PendingBudget, metrics: &ShardMetrics) {
        self.stopped.store(true, Ordering::SeqCst);
        self.fail_leftovers(error, budget, metrics);
    }

    /// Refuses new records and fails with `error` every record waiting for room or accumulated
    /// and not taken by the shard (which has stopped, or never started).
    pub(crate) fn fail_leftovers(
        &self,
        error: &Error,
        budget: &PendingBudget,
        metrics: &ShardMetrics,
    ) {
        self.fail_waiting(error, budget, metrics.producer());
        let mut sealed = Vec::new();
        {
            let mut accumulator = self.accumulator();
            accumulator.close();
            accumulator.take_sealed(&mut sealed);
        }
        for batch in sealed {
            let (records, bytes) = (batch.body.count(), batch.body.payload_bytes() as u64);
            metrics.batch_done(records, bytes, 0.0, Err(error));
            budget.release(u64::from(records), bytes);
            for (_, _, callback) in batch.callbacks {
                if run_callback(callback, Err(error.clone())) {
                    metrics.callback_panicked();
                }
            }
            budget.settle(u64::from(records));
            batch.completion.resolve(Err(error.clone()));
        }
    }

    /// [`Command::Purge`]s the shard has carried out.
    pub(crate) fn purges(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    /// For the shard: one more [`Command::Purge`] carried out.
    pub(crate) fn purge_done(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
    }

    /// True once the shard thread ended.
    pub(crate) fn has_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn lock_waiting(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records in the wait queue.
    pub(crate) fn waiting_len(&self) -> usize {
        self.waiting_len.load(Ordering::SeqCst)
    }

    /// Queues a record that found no room; the budget counts it as pending from now on.
    pub(crate) fn push_waiting(&self, budget: &PendingBudget, waiting: Waiting) {
        budget.add_queued(1);
        let mut queue = self.lock_waiting();
        if waiting.timeout.is_some() {
            self.waiting_own_timeout.fetch_add(1, Ordering::SeqCst);
        }
        queue.push_back(waiting);
        self.waiting_len.store(queue.len(), Ordering::SeqCst);
    }

    /// Moves waiting records, oldest first, into the accumulator while the budget has room
    /// (also after the accumulator was closed: they were handed over before the close). Returns
    /// the payload size of the first record still waiting, if any. Callable from any thread.
    pub(crate) fn admit_waiting(
        &self,
        budget: &PendingBudget,
        metrics: &ProducerMetrics,
    ) -> Option<usize> {
        if self.waiting_len() == 0 {
            return None;
        }
        let mut failed = Vec::new();
        let blocked = {
            let mut queue = self.lock_waiting();
            let mut wake = false;
            let blocked = loop {
                let Some(front) = queue.front() else { break None };
                let bytes = front.record.payload().len();
                if !budget.try_acquire(bytes) {
                    break Some(bytes);
                }
                let Some(Waiting { record, callback, timeout, .. }) = queue.pop_front() else {
                    break None;
                };
                if timeout.is_some() {
                    self.waiting_own_timeout.fetch_sub(1, Ordering::SeqCst);
                }
                let mut callback = Some((record.metadata(), callback));
                let appended = self.accumulator().append_admitted(
                    Instant::now,
                    record.stream_id(),
                    record.payload(),
                    &mut callback,
                );
                budget.sub_queued(1);
                match appended {
                    Ok(appended) => wake |= appended.wake,
                    Err(error) => {
                        budget.release(1, bytes as u64);
                        if let Some((_, callback)) = callback {
                            failed.push((callback, error));
                        } else {
                            budget.settle(1);
                        }
                    }
                }
            };
            self.waiting_len.store(queue.len(), Ordering::SeqCst);
            if wake {
                self.notify();
            }
            blocked
        };
        // Outside the lock: a callback may send again.
        for (callback, error) in failed {
            refuse(callback, error, metrics);
            budget.settle(1);
        }
        blocked
    }

    /// Fails the records that have waited their timeout (their own, or else `timeout`) or
    /// longer with `QueueFullTimeout`; returns when the next one will have.
    pub(crate) fn expire_waiting(
        &self,
        now: Instant,
        timeout: Duration,
        budget: &PendingBudget,
        metrics: &ProducerMetrics,
    ) -> Option<Instant> {
        if self.waiting_len() == 0 {
            return None;
        }
        let mut expired = Vec::new();
        let next = {
            let mut queue = self.lock_waiting();
            let deadline = |w: &Waiting| w.since + w.timeout.unwrap_or(timeout);
            let next = if self.waiting_own_timeout.load(Ordering::SeqCst) == 0 {
                // All wait `timeout`, in the order they came: the oldest expires first.
                while queue.front().is_some_and(|w| deadline(w) <= now) {
                    expired.extend(queue.pop_front());
                }
                queue.front().map(deadline)
            } else {
                let mut kept = VecDeque::with_capacity(queue.len());
                for waiting in queue.drain(..) {
                    if deadline(&waiting) <= now {
                        if waiting.timeout.is_some() {
                            self.waiting_own_timeout.fetch_sub(1, Ordering::SeqCst);
                        }
                        expired.push(waiting);
                    } else {
                        kept.push_back(waiting);
                    }
                }
                *queue = kept;
                queue.iter().map(deadline).min()
            };
            self.waiting_len.store(queue.len(), Ordering::SeqCst);
            next
        };
        for waiting in expired {
            let waited = now.saturating_duration_since(waiting.since);
            self.fail_one(waiting, Error::QueueFullTimeout { waited }, budget, metrics);
        }
        next
    }

    /// Fails every waiting record with `error` (producer dropped, close deadline); returns how
    /// many.
    pub(crate) fn fail_waiting(
        &self,
        error: &Error,
        budget: &PendingBudget,
        metrics: &ProducerMetrics,
    ) -> u64 {
        let all: Vec<Waiting> = {
            let mut queue = self.lock_waiting();
            self.waiting_len.store(0, Ordering::SeqCst);
            self.waiting_own_timeout.store(0, Ordering::SeqCst);
            queue.drain(..).collect()
        };
        let count = all.len() as u64;
        for waiting in all {
            self.fail_one(waiting, error.clone(), budget, metrics);
        }
        count
    }

    fn fail_one(
        &self,
        waiting: Waiting,
        error: Error,
        budget: &PendingBudget,
        metrics: &ProducerMetrics,
    ) {
        refuse(waiting.callback, error, metrics);
        budget.sub_queued(1);
    }

    /// Records the shard had to fail because the close deadline came first.
    pub fn failed_at_close(&self) -> u64 {
        self.failed_at_close.load(Ordering::Acquire)
    }

    /// For the shard: counts records failed at the close deadline.
    pub fn add_failed_at_close(&self, records: u64) {
        self.failed_at_close.fetch_add(records, Ordering::AcqRel);
    }

    /// The accumulator, locked.
    pub fn accumulator(&self) -> MutexGuard<'_, BatchAccumulator> {
        self.accumulator.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a command and wakes the shard.
    pub fn command(&self, command: Command) {
        self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(command);
        self.notify();
    }

    /// Takes the queued commands.
    pub fn take_commands(&self) -> Vec<Command> {
        std::mem::take(
            &mut *self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Wakes the shard (cheap when it is already awake or already notified).
    pub fn notify(&self) {
        if self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        let waker = self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A waker that wakes this shard (registered with the budget while records wait for room).
    pub(crate) fn waker(self: &Arc<Self>) -> Waker {
        struct ShardWaker(Arc<ShardShared>);
        impl Wake for ShardWaker {
            fn wake(self: Arc<Self>) {
                self.0.notify();
            }
        }
        Waker::from(Arc::new(ShardWaker(self.clone())))
    }

    /// For the shard: ready once notified since the last call that returned ready.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notified.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(cx.waker().clone());
        // A notify between the swap and storing the waker would be lost without this re-check.
        if self.notified.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BatchLimits;

    fn shared() -> ShardShared {
        let limits = BatchLimits {
            max_messages: 10,
            max_payload_bytes: 1000,
            linger: Duration::from_millis(20),
            frame: crate::protocol::FrameBudget::new(
                4096,
                Default::default(),
                "g",
                20,
                &Default::default(),
                false,
            ),
        };
        ShardShared::new(BatchAccumulator::new(limits), 1)
    }

    fn waiting(payload: &'static str, results: &Arc<Mutex<Vec<Result<(), Error>>>>) -> Waiting {
        let results = results.clone();
        Waiting {
            record: Record::new("s", payload),
            callback: Box::new(move |result| results.lock().unwrap().push(result.map(|_| ()))),
            since: Instant::now(),
            timeout: None,
        }
    }

    #[test]
    fn a_record_with_its_own_timeout_expires_at_it_even_behind_older_ones() {
        let (shared, budget, metrics) =
            (shared(), PendingBudget::new(1, 1 << 20), ShardMetrics::detached());
        let results = Arc::new(Mutex::new(Vec::new()));
        assert!(budget.try_acquire(1));
        let start = Instant::now();
        shared.push_waiting(&budget, waiting("old", &results));
        let own = Waiting { timeout: Some(Duration::from_millis(100)), ..waiting("own", &results) };
        shared.push_waiting(&budget, own);
        let default = Duration::from_secs(30);
        let next = shared.expire_waiting(start, default, &budget, metrics.producer());
        assert!(next.is_some_and(|at| at <= start + Duration::from_millis(200)), "{next:?}");
        let later = start + Duration::from_secs(1);
        let next = shared.expire_waiting(later, default, &budget, metrics.producer());
        assert!(next.is_some_and(|at| at > later), "the old one still waits: {next:?}");
        assert_eq!(shared.waiting_len(), 1);
        assert!(matches!(results.lock().unwrap()[..], [Err(Error::QueueFullTimeout { .. })]));
        assert_eq!(budget.pending_records(), 2);
    }

    #[test]
    fn waiting_records_are_admitted_in_order_as_room_comes_back() {
        let (shared, budget, metrics) =
            (shared(), PendingBudget::new(1, 1 << 20), ShardMetrics::detached());
        let results = Arc::new(Mutex::new(Vec::new()));
        assert!(budget.try_acquire(1));
        shared.push_waiting(&budget, waiting("a", &results));
        shared.push_waiting(&budget, waiting("bb", &results));
        assert_eq!(budget.pending_records(), 3, "waiting records are pending");
        assert_eq!(shared.admit_waiting(&budget, metrics.producer()), Some(1), "no room");
        budget.release(1, 1);
        budget.settle(1);
        assert_eq!(shared.admit_waiting(&budget, metrics.producer()), Some(2), "room for one");
        assert_eq!(shared.waiting_len(), 1);
        assert_eq!(shared.accumulator().appended(), 1);
        let start = Instant::now();
        let next =
            shared.expire_waiting(start, Duration::from_secs(1), &budget, metrics.producer());
        assert!(next.is_some() && results.lock().unwrap().is_empty());
        let later = start + Duration::from_secs(5);
        assert_eq!(
            shared.expire_waiting(later, Duration::from_secs(1), &budget, metrics.producer()),
            None
        );
        let results = results.lock().unwrap();
        assert!(matches!(results[..], [Err(Error::QueueFullTimeout { .. })]), "{results:?}");
        assert_eq!(budget.pending_records(), 1, "the admitted record is pending");
    }

    #[test]
    fn a_record_queued_as_the_shard_stops_is_failed_not_left_behind() {
        let (shared, budget, metrics) =
            (shared(), PendingBudget::new(1, 1 << 20), ShardMetrics::detached());
        let results = Arc::new(Mutex::new(Vec::new()));
        shared.stop(&Error::ProducerClosed, &budget, &metrics);
        // A sender queues a record just after, and finds room: it lands in the accumulator
        // of a shard that is gone.
        shared.push_waiting(&budget, waiting("late", &results));
        assert_eq!(shared.admit_waiting(&budget, metrics.producer()), None);
        assert_eq!(shared.accumulator().appended(), 1);
        assert!(results.lock().unwrap().is_empty());
        // What the sender does next (see `Inner::wait_for_room`).
        assert!(shared.has_stopped());
        shared.fail_leftovers(&Error::ProducerClosed, &budget, &metrics);
        assert_eq!(*results.lock().unwrap(), vec![Err(Error::ProducerClosed)]);
        assert_eq!(budget.pending_records(), 0);
    }
}
