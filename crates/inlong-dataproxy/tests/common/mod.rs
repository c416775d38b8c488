//! Helpers shared by the integration tests (each test file includes this module).

#![allow(dead_code)] // Each test file uses its own subset.

use inlong_dataproxy::Transport;
use inlong_dataproxy_testkit::{LocalCluster, NodeConfig};

/// Both I/O drivers; set `INLONG_SKIP_IO_URING=1` to run the epoll half only where io_uring is
/// blocked (e.g. Docker's default seccomp).
pub fn transports() -> Vec<Transport> {
    if std::env::var_os("INLONG_SKIP_IO_URING").is_some() {
        vec![Transport::Epoll]
    } else {
        vec![Transport::IoUring, Transport::Epoll]
    }
}

/// A local DataProxy + Manager of `nodes` nodes that keep every accepted record (the ledger).
pub fn cluster(nodes: usize) -> LocalCluster {
    LocalCluster::builder()
        .nodes(nodes)
        .threads(2)
        .node_config(NodeConfig { ledger: true, ..NodeConfig::default() })
        .start()
        .expect("local cluster")
}
