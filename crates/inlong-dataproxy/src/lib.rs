//! A Rust client SDK for [Apache InLong](https://inlong.apache.org)'s DataProxy.
//!
//! [`Producer::send`] batches records per stream, sends them over DataProxy's TCP protocol to the
//! nodes the InLong Manager lists, matches every ack, retries, times out, and resolves every
//! [`DeliveryFuture`] exactly once: acked with a [`DeliveryReport`], or failed with a typed
//! [`Error`] carrying the Go SDK's numeric code.
//!
//! ```no_run
//! use std::time::Duration;
//! use inlong_dataproxy::{Producer, Record};
//!
//! fn main() -> Result<(), inlong_dataproxy::Error> {
//!     let producer = Producer::builder()
//!         .group_id("test_group")
//!         .manager_url("http://manager:8083/inlong/manager/openapi/dataproxy/getIpList")
//!         .build()?;
//!     let delivery = producer.send(Record::new("test_stream", "a|b|c")); // never blocks
//!     let report = delivery.wait()?; // or `.await` on any executor
//!     println!("acked by {} in {:?}", report.endpoint, report.latency);
//!     producer.close_blocking(Duration::from_secs(30))
//! }
//! ```
//!
//! Each shard is a pinned thread that owns its batches and sockets and drives them with io_uring
//! (epoll where io_uring is unavailable); a control thread keeps the node list fresh. The
//! repository's README lists every option, error code and metric; `inlong-dataproxy-testkit`
//! holds the local DataProxy + Manager that tests and benches run against.
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

// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod backoff;
mod budget;
mod buffers;
#[cfg(feature = "unstable")]
pub mod completion;
#[cfg(not(feature = "unstable"))]
mod completion;
mod config;
mod control;
#[cfg(feature = "unstable")]
pub mod discovery;
#[cfg(not(feature = "unstable"))]
mod discovery;
#[cfg(feature = "unstable")]
pub mod engine;
#[cfg(not(feature = "unstable"))]
mod engine;
mod error;
mod metrics;
mod producer;
#[cfg(feature = "unstable")]
pub mod protocol;
#[cfg(not(feature = "unstable"))]
mod protocol;
mod record;
mod shard;

pub use completion::DeliveryReport;
pub use config::{Ack, MsgType, ProducerConfig, Secret, Transport};
pub use discovery::{AuthProvider, DiscoveryError, Endpoint};
pub use error::{codes, ConnectFailures, Error, Field};
pub use metrics::MetricsRegistry;
pub use producer::{
    BatchDeliveryFuture, BatchDeliveryReport, DeliveryFuture, Producer, ProducerBuilder,
    ProducerStats, ShardStats,
};
pub use record::{Record, StreamId};
