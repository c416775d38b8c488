//! Per-batch completion state shared by the shard that resolves a batch and the
//! [`DeliveryFuture`](crate::DeliveryFuture)s of its records.
//!
//! One [`BatchCompletion`] is allocated per batch, never per record: each record's future holds
//! an `Arc` to its batch's completion plus its own metadata. The shard resolves it exactly once;
//! resolving wakes every registered waker and runs every callback of the batch.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;

/// What the application learns about a delivered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryReport {
    /// The producer's numeric ID of the batch that carried the record (the wire `mid` is this
    /// ID prefixed with the producer's tag).
    pub batch_id: u64,
    /// The DataProxy node that acknowledged the batch.
    pub endpoint: SocketAddr,
    /// From the batch being opened (at most the linger delay after the record was sent) to its ack.
    pub latency: Duration,
    /// Attempts after the first that the batch needed.
    pub retries: u32,
    /// The record's user metadata ([`Record::with_metadata`](crate::Record::with_metadata)).
    pub metadata: u64,
}

/// How a batch ended well: what every record's report is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Numeric batch ID.
    pub batch_id: u64,
    /// The acknowledging node.
    pub endpoint: SocketAddr,
    /// Attempts after the first.
    pub retries: u32,
    /// When the batch was opened.
    pub opened_at: Instant,
    /// When the ack arrived.
    pub acked_at: Instant,
}

impl BatchOutcome {
    /// The report of the record carrying `metadata`.
    pub fn report(&self, metadata: u64) -> DeliveryReport {
        DeliveryReport {
            batch_id: self.batch_id,
            endpoint: self.endpoint,
            latency: self.acked_at.saturating_duration_since(self.opened_at),
            retries: self.retries,
            metadata,
        }
    }
}

/// A user callback for one record.
pub type Callback = Box<dyn FnOnce(Result<DeliveryReport, Error>) + Send + 'static>;

/// Runs one user callback with its record's result, containing a panic: the panic is logged and
/// reported (true), and whoever runs the callback goes on with the next one. Every callback of
/// the SDK runs through here, so a panicking callback can neither leave its batch-mates
/// unresolved nor take down the shard or the connection that resolved it.
pub(crate) fn run_callback(callback: Callback, result: Result<DeliveryReport, Error>) -> bool {
    let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(move || callback(result))) else {
        return false;
    };
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "a delivery callback panicked; the panic was contained");
    // A payload whose own drop panics must not escape either.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(panic)));
    true
}

/// The shared, resolve-once state of one batch.
///
/// The outcome is written once and then read without a lock (every record's future reads it, so
/// a lock there cost ~4 % of the send path at 100 B records); only waker registration locks.
#[derive(Debug, Default)]
pub struct BatchCompletion {
    outcome: OnceLock<Result<BatchOutcome, Error>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchCompletion {
    /// A fresh, unresolved completion.
    pub fn new() -> Arc<BatchCompletion> {
        Arc::new(BatchCompletion::default())
    }

    /// Empties a resolved completion for another batch when nothing else holds it (no
    /// [`DeliveryFuture`](crate::DeliveryFuture) of its records is alive); false, leaving it
    /// as it is, otherwise. A completion is never shared by two batches: a future can only be
    /// made from a batch's completion before the batch is sealed, and this one holds the last
    /// reference.
    pub fn reuse(this: &mut Arc<BatchCompletion>) -> bool {
        match Arc::get_mut(this) {
            Some(state) => {
                *state = BatchCompletion::default();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores the outcome and wakes every waiting future. Only the first call has an effect;
    /// returns whether it was that call.
    pub fn resolve(&self, outcome: Result<BatchOutcome, Error>) -> bool {
        if self.outcome.set(outcome).is_err() {
            return false;
        }
        // Taken after the outcome is visible: a poller that registered before this sees its
        // waker taken; one that locks after this sees the outcome (see `poll_outcome`).
        let wakers = std::mem::take(&mut *self.lock());
        for waker in wakers {
            waker.wake();
        }
        true
    }

    /// True once resolved.
    #[inline]
    pub fn is_resolved(&self) -> bool {
        self.outcome.get().is_some()
    }

    #[cfg(test)]
    /// The outcome if resolved.
    pub fn outcome(&self) -> Option<Result<BatchOutcome, Error>> {
        self.outcome.get().cloned()
    }

    /// Polls for the outcome, registering `cx`'s waker when not yet resolved.
    #[inline]
    pub fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Result<BatchOutcome, Error>> {
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome.clone());
        }
        let mut wakers = self.lock();
        // Checked again under the lock: `resolve` sets the outcome before it takes the wakers.
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome.clone());
        }
        if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn resolves_once_and_wakes_each_waiter_once() {
        let completion = BatchCompletion::new();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(completion.poll_outcome(&mut cx).is_pending());
        assert!(completion.poll_outcome(&mut cx).is_pending(), "same waker registered once");
        let outcome = BatchOutcome {
            batch_id: 1,
            endpoint: "127.0.0.1:1".parse().unwrap(),
            retries: 0,
            opened_at: Instant::now(),
            acked_at: Instant::now(),
        };
        assert!(completion.resolve(Ok(outcome)));
        assert!(!completion.resolve(Err(Error::ProducerClosed)), "second resolve ignored");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(completion.poll_outcome(&mut cx), Poll::Ready(Ok(outcome)));
        assert_eq!(outcome.report(5).metadata, 5);
    }

    #[test]
    fn only_a_completion_nobody_else_holds_is_reused() {
        let mut completion = BatchCompletion::new();
        let future_side = completion.clone();
        assert!(completion.resolve(Err(Error::ProducerClosed)));
        assert!(!BatchCompletion::reuse(&mut completion), "a future still holds it");
        assert!(completion.is_resolved(), "left as it was");
        drop(future_side);
        assert!(BatchCompletion::reuse(&mut completion));
        assert!(!completion.is_resolved(), "emptied for the next batch");
        assert!(completion.resolve(Err(Error::ProducerClosed)), "and resolvable again");
    }

    #[test]
    fn a_panicking_callback_is_contained_and_reported() {
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let fine: Callback = Box::new(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!run_callback(fine, Err(Error::ProducerClosed)));
        let panics: Callback = Box::new(|_| panic!("user bug"));
        assert!(run_callback(panics, Err(Error::ProducerClosed)));
        let formatted: Callback = Box::new(|result| panic!("user bug: {result:?}"));
        assert!(run_callback(formatted, Err(Error::QueueFull)));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
