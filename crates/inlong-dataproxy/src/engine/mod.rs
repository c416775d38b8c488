//! The sans-IO heart of the producer: batching, the in-flight table, retries, timeouts and
//! heartbeats as state machines that take events and `now` and give back bytes, deadlines,
//! events (connections to close, with a typed reason) and resolved batches. Delivering a resolved
//! batch (callbacks, the shared budget) and every metric are the shell's job: the engine counts
//! in plain numbers ([`shard_engine::EngineCounts`]).
//!
//! [`accumulator`] is shared by the sending threads and one shard (under the shard's lock);
//! everything else belongs to one shard thread. Nothing here reads the clock or touches a socket:
//! the I/O shells in [`crate::shard`] drive it, and the unit tests drive it with injected time.

pub mod accumulator;
pub mod shard_engine;

pub use accumulator::{BatchAccumulator, BatchLimits, SealedBatch};
pub use shard_engine::{
    CloseReason, ConnId, EngineConfig, EngineCounts, EngineEvent, Resolved, ShardEngine,
};
