//! A local DataProxy and InLong Manager that the SDK's own tests, benchmarks and CLI run against.
//!
//! The real InLong needs a JVM cluster; this module reproduces the parts a client can observe:
//! the DataProxy TCP source (framing limits, validation order, error codes and reply format of
//! `PROTOCOL.md` §1 and §3) and the Manager's `getIpList` endpoint (§5). Both can be told to
//! misbehave at run time (fault injection) and both count what they saw, so a test can prove that
//! every record the SDK reported as acked really arrived.
//!
//! [`LocalCluster`] starts N nodes plus a Manager on loopback; the pieces are usable alone.
//! Nothing in the producer depends on this module; it ships in the library so that users can run
//! the same server in their own tests.

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
