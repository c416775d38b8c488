#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn, rust_2018_idioms, missing_docs)]
#![warn(
    clippy::cast_possible_truncation,
    clippy::manual_let_else,
    clippy::needless_pass_by_value,
    clippy::redundant_closure_for_method_calls,
    clippy::semicolon_if_nothing_returned,
    clippy::unnested_or_patterns
)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod config;
mod control;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod metrics;
mod producer;
pub mod protocol;
pub mod record;
pub mod server;
pub mod shard;

pub use config::{ProducerConfig, Transport};
pub use engine::DeliveryReport;
pub use error::Error;
pub use metrics::MetricsRegistry;
pub use producer::{DeliveryFuture, Producer, ProducerBuilder, ProducerStats, ShardStats};
pub use record::{Record, StreamId};
