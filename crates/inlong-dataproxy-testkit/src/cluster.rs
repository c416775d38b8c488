//! [`LocalCluster`]: N DataProxy nodes and a Manager that lists them, on loopback, in-process.
//!
//! This is the face tests, benchmarks and the CLI use. The cluster owns its own tokio runtime on
//! background threads, so it can be started and driven from plain threads, from `#[test]`s and
//! from inside any async runtime alike; dropping it stops everything.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::{Handle, Runtime};

use super::dataproxy::{DataProxyNode, DuplicateDetector, NodeConfig, NodeStats};
use super::manager::{ManagerConfig, ManagerServer};

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    nodes: usize,
    host: IpAddr,
    first_node_port: u16,
    manager_port: u16,
    threads: usize,
    node_config: NodeConfig,
    manager_config: ManagerConfig,
}

impl Default for LocalClusterBuilder {
    fn default() -> LocalClusterBuilder {
        LocalClusterBuilder {
            nodes: 1,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            first_node_port: 0,
            manager_port: 0,
            threads: 1,
            node_config: NodeConfig::default(),
            manager_config: ManagerConfig::default(),
        }
    }
}

impl LocalClusterBuilder {
    /// Number of DataProxy nodes (default 1).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Loopback address to listen on (default `127.0.0.1`).
    pub fn host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// Port of the first node; the others take the following ports. 0 (default) = ephemeral.
    pub fn first_node_port(mut self, port: u16) -> Self {
        self.first_node_port = port;
        self
    }

    /// Port of the Manager. 0 (default) = ephemeral.
    pub fn manager_port(mut self, port: u16) -> Self {
        self.manager_port = port;
        self
    }

    /// Worker threads of the cluster's runtime (default 1: the server should not compete with
    /// the producer it is measuring).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Configuration of every node.
    pub fn node_config(mut self, config: NodeConfig) -> Self {
        self.node_config = config;
        self
    }

    /// Configuration of the Manager.
    pub fn manager_config(mut self, config: ManagerConfig) -> Self {
        self.manager_config = config;
        self
    }

    /// Starts the runtime, the nodes and the Manager, and registers the nodes with the Manager.
    pub fn start(self) -> io::Result<LocalCluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name("inlong-local-server")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let duplicates = DuplicateDetector::new(self.node_config.dedup_window);
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let port = match self.first_node_port {
                0 => 0,
                first => u16::try_from(usize::from(first) + i).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "node port overflow")
                })?,
            };
            let addr = SocketAddr::new(self.host, port);
            let config = self.node_config.clone();
            nodes.push(DataProxyNode::start_with(&handle, addr, config, duplicates.clone())?);
        }
        let manager_addr = SocketAddr::new(self.host, self.manager_port);
        let manager = ManagerServer::start(&handle, manager_addr, self.manager_config)?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(DataProxyNode::addr).collect();
        manager.set_nodes(&addrs);
        Ok(LocalCluster {
            runtime: Some(runtime),
            host: self.host,
            node_config: self.node_config,
            duplicates,
            nodes: Mutex::new(nodes),
            manager,
        })
    }
}

/// DataProxy nodes plus a Manager, running on their own runtime. See the module docs.
#[derive(Debug)]
pub struct LocalCluster {
    runtime: Option<Runtime>,
    host: IpAddr,
    node_config: NodeConfig,
    /// Shared by every node, so a retry accepted by another node still counts as a duplicate.
    duplicates: DuplicateDetector,
    nodes: Mutex<Vec<DataProxyNode>>,
    manager: ManagerServer,
}

impl LocalCluster {
    /// A builder with the defaults: one node, ephemeral ports, one server thread.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts `nodes` nodes and a Manager with default settings on ephemeral loopback ports.
    pub fn start(nodes: usize) -> io::Result<LocalCluster> {
        LocalCluster::builder().nodes(nodes).start()
    }

    /// The Manager URL to give the producer (`…/openapi/dataproxy/getIpList`, no group ID).
    pub fn manager_url(&self) -> String {
        self.manager.url()
    }

    /// The Manager's address without a path (`http://127.0.0.1:PORT`), for SDKs that append the
    /// `getIpList` path themselves, as the Java SDK does.
    pub fn manager_base_url(&self) -> String {
        self.manager.base_url()
    }

    /// The Manager.
    pub fn manager(&self) -> &ManagerServer {
        &self.manager
    }

    /// Every node started so far, including removed ones (they keep serving until stopped).
    pub fn nodes(&self) -> Vec<DataProxyNode> {
        self.lock_nodes().clone()
    }

    /// Node `index` in start order.
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node(&self, index: usize) -> DataProxyNode {
        self.lock_nodes()[index].clone()
    }

    /// The node addresses, in start order.
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.lock_nodes().iter().map(DataProxyNode::addr).collect()
    }

    /// Starts one more node (ephemeral port) and adds it to the Manager's list.
    pub fn add_node(&self) -> io::Result<DataProxyNode> {
        let addr = SocketAddr::new(self.host, 0);
        let config = self.node_config.clone();
        let node = DataProxyNode::start_with(self.handle(), addr, config, self.duplicates.clone())?;
        self.manager.add_node(node.addr());
        self.lock_nodes().push(node.clone());
        Ok(node)
    }

    /// Takes a node off the Manager's list. The node keeps serving (so in-flight batches drain);
    /// stop it with [`DataProxyNode::stop`] to kill it.
    pub fn remove_node(&self, addr: SocketAddr) {
        self.manager.remove_node(addr);
    }

    /// The cluster's runtime, for spawning helpers next to the servers.
    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .map(Runtime::handle)
            .expect("the runtime lives as long as the cluster")
    }

    /// Counters summed over every node.
    pub fn stats(&self) -> NodeStats {
        let mut total = NodeStats::default();
        for node in self.lock_nodes().iter() {
            total += node.stats();
        }
        total
    }

    /// Records accepted per stream ID, summed over every node.
    pub fn stream_counts(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for node in self.lock_nodes().iter() {
            for (stream, count) in node.stream_counts() {
                *total.entry(stream).or_insert(0) += count;
            }
        }
        total
    }

    /// Every accepted record per stream (node by node, each in arrival order); needs
    /// [`NodeConfig::ledger`].
    pub fn ledger(&self) -> HashMap<String, Vec<Bytes>> {
        let mut total: HashMap<String, Vec<Bytes>> = HashMap::new();
        for node in self.lock_nodes().iter() {
            for (stream, records) in node.ledger() {
                total.entry(stream).or_default().extend(records);
            }
        }
        total
    }

    /// Waits until the nodes have accepted at least `count` records in all (the [`NodeStats`]
    /// `records` counter of [`LocalCluster::stats`]) and returns how long that took.
    ///
    /// # Panics
    /// When `limit` passes first, with the count reached (it is an assertion for tests, like
    /// [`wait_until`]).
    pub fn wait_for_records(&self, count: u64, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let accepted = self.stats().records;
            if accepted >= count {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {count} records accepted ({accepted} so far)"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Stops every node and the Manager, and shuts the runtime down.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for node in self.lock_nodes().iter() {
            node.stop();
        }
        self.manager.shutdown();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    fn lock_nodes(&self) -> MutexGuard<'_, Vec<DataProxyNode>> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// How often [`wait_until`] looks at its condition.
const POLL: Duration = Duration::from_millis(5);

/// Waits until `condition` holds, looking every 5 ms, and returns how long that took: the way a
/// test waits for something a cluster or a producer does in the background, instead of sleeping
/// for a guessed time.
///
/// # Panics
/// When `limit` passes first, with a message naming `what` was awaited (it is an assertion for
/// tests).
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
    started.elapsed()
}
