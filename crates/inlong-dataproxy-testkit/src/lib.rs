//! A local InLong DataProxy and Manager, for the tests, benchmarks and CLI of `inlong-dataproxy`
//! and for anyone's tests of an InLong SDK (as librdkafka's mock cluster is for Kafka clients).
//!
//! The real InLong needs a JVM cluster; this crate reproduces the parts a client can observe:
//! the DataProxy TCP source (framing limits, validation order, error codes and reply format) and
//! the Manager's `getIpList` endpoint. Both can be told to misbehave at run time (fault injection)
//! and both count what they saw, so a test can prove that every record the SDK reported as acked
//! really arrived. [`workload`] generates realistic log lines and reads the process's CPU time.
//!
//! [`LocalCluster`] starts N nodes plus a Manager on loopback; the pieces are usable alone.

mod cluster;
pub mod codec;
pub mod dataproxy;
mod http;
pub mod manager;
pub mod workload;

pub use cluster::{wait_until, LocalCluster, LocalClusterBuilder};
pub use codec::IngestMode;
pub use dataproxy::{
    DataProxyNode, ErrorInjection, Faults, NodeConfig, NodeStats, ReplyCorruption, Topic,
};
pub use manager::{ManagerAuth, ManagerConfig, ManagerFault, ManagerServer};
