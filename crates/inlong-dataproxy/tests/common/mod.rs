//! Helpers shared by the integration tests (each test file includes this module): the transports
//! to run on, the local cluster and the producer every test starts from, waiting with a deadline,
//! and reading one sample out of the Prometheus text.

#![allow(dead_code)] // Each test file uses its own subset.

use inlong_dataproxy::{Producer, ProducerBuilder, Transport};
use inlong_dataproxy_testkit::{LocalCluster, NodeConfig};

#[allow(unused_imports)] // Not every test file waits.
pub use inlong_dataproxy_testkit::wait_until;

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

/// A producer of group `test_group` that finds `cluster`'s nodes through its Manager (no on-disk
/// node list), on `transport`, with two shards; tests add what they need on top.
pub fn builder(cluster: &LocalCluster, transport: Transport) -> ProducerBuilder {
    Producer::builder()
        .group_id("test_group")
        .manager_url(cluster.manager_url())
        .node_list_cache(false)
        .transport(transport)
        .shards(2)
}

/// The value of the sample whose line starts with `series` (labels in Prometheus' sorted order).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
