//! [`ShardShared`]: what the sending threads and the control side share with one shard thread:
//! the shard's batch accumulator, its commands, and the wake-up signal.
//!
//! A wake-up costs one atomic swap when the shard is already awake, and one waker call when it
//! sleeps; senders wake a shard at most once per batch (see [`crate::engine::Appended::wake`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::engine::BatchAccumulator;

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
}

impl ShardShared {
    /// Shared state around `accumulator`.
    pub fn new(accumulator: BatchAccumulator) -> ShardShared {
        ShardShared {
            accumulator: Mutex::new(accumulator),
            commands: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: Mutex::new(None),
            failed_at_close: AtomicU64::new(0),
        }
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
