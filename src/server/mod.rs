//! A local DataProxy and InLong Manager that the SDK's own tests, benchmarks and CLI run against.
//!
//! The real InLong needs a JVM cluster; this module reproduces the parts a client can observe:
//! the DataProxy TCP source (framing limits, validation order, error codes and reply format of
//! `PROTOCOL.md` §1 and §3) and the Manager's `getIpList` endpoint (§5). Both can be told to
//! misbehave at run time (fault injection) and both count what they saw, so a test can prove that
//! every record the SDK reported as acked really arrived.
//!
//! Nothing in the producer depends on this module; it is shipped in the library so that users can
//! run the same server in their own tests.

pub mod codec;
pub mod manager;
mod http;
