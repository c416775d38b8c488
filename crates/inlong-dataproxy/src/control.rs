//! The producer's control thread: a small tokio runtime that owns everything slow and rare —
//! the Manager lookup at start-up and the deadline timers of `flush`/`close` futures — so that
//! shards never block on it and the futures the producer hands out work on any executor.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::config::ProducerConfig;
use crate::discovery::{self, Endpoint, ManagerClient, ManagerClientConfig, NodeListCache, Source};
use crate::error::{ConnectFailures, Error};

/// The running control thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct ControlThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlThread {
    /// Starts the thread and its runtime.
    pub fn start() -> Result<ControlThread, Error> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                Error::Spawn { what: "the control thread's runtime", reason: e.to_string().into() }
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("inlong-control".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::Spawn {
                what: "the control thread",
                reason: e.to_string().into(),
            })?;
        Ok(ControlThread { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Runs `future` on the control thread and blocks the caller until it finishes. Safe to call
    /// from inside another async runtime: the work happens on the control thread.
    pub fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().ok()
    }

    /// Wakes `waker` at `deadline`.
    pub fn wake_at(&self, deadline: Instant, waker: Waker) {
        self.handle.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            waker.wake();
        });
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The start-up node list and the frame limit the Manager asks for.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Resolved addresses, in the Manager's order.
    pub addrs: Vec<SocketAddr>,
    /// `maxPacketLength`, when the Manager sent one.
    pub max_packet_length: Option<usize>,
    /// Where the list came from; `None` for static endpoints.
    pub source: Option<Source>,
    /// The Manager client and cache, kept for the periodic refresh (none for static endpoints).
    pub discovery: Option<Discovery>,
}

/// What the refresh loop needs: the client (one `reqwest::Client`, reused) and the cache.
#[derive(Debug, Clone)]
pub struct Discovery {
    client: Arc<ManagerClient>,
    cache: Option<NodeListCache>,
}

/// Static endpoints, or one bounded Manager lookup (with the cache as a fallback).
pub fn initial_endpoints(
    control: &ControlThread,
    config: &ProducerConfig,
) -> Result<Endpoints, Error> {
    let Some(url) = config.manager_url.clone().filter(|_| config.endpoints.is_empty()) else {
        return static_endpoints(control, config);
    };
    let client_config = ManagerClientConfig {
        connect_timeout: config.manager_connect_timeout,
        request_timeout: config.manager_request_timeout,
        accept_invalid_certs: config.manager_accept_invalid_certs,
        secret_id: config.secret_id.clone(),
        secret_key: config.secret_key.as_ref().map(|secret| secret.0.clone()),
        tenant: config.tenant.clone(),
        auth_provider: config.auth_provider.clone(),
        ..ManagerClientConfig::new(url.clone(), config.group_id.clone())
    };
    let cache = config.node_list_cache.then(|| {
        let cache = match &config.node_list_cache_path {
            Some(path) => NodeListCache::at_path(path.clone(), &url, &config.group_id),
            None => NodeListCache::new(&url, &config.group_id),
        };
        cache.with_max_age(config.node_list_cache_max_age)
    });
    let lookup = async move {
        let client = Arc::new(ManagerClient::new(client_config)?);
        let (list, source) = discovery::initial_lookup(&client, cache.as_ref()).await?;
        if let Source::Cache { age } = source {
            tracing::warn!(
                age_secs = age.as_secs(),
                "manager unreachable; using the cached node list"
            );
        }
        let addrs = resolve(&list.endpoints).await;
        Ok::<_, discovery::DiscoveryError>(Endpoints {
            addrs,
            max_packet_length: list.max_packet_length,
            source: Some(source),
            discovery: Some(Discovery { client, cache }),
        })
    };
    let endpoints = control
        .run(lookup)
        .ok_or_else(|| Error::Spawn { what: "the control thread", reason: "it stopped".into() })?
        .map_err(|error| match error {
            discovery::DiscoveryError::NoEndpoints => {
                Error::no_endpoints(ConnectFailures::default())
            }
            other => Error::Discovery(other),
        })?;
    if endpoints.addrs.is_empty() {
        return Err(Error::no_endpoints(ConnectFailures::default()));
    }
    Ok(endpoints)
}

/// The static `endpoints`, host names resolved (on the control thread); an error when none
/// resolves.
fn static_endpoints(control: &ControlThread, config: &ProducerConfig) -> Result<Endpoints, Error> {
    let nodes = config
        .endpoints
        .iter()
        .map(|text| crate::config::parse_endpoint(text))
        .collect::<Result<Vec<Endpoint>, _>>()
        .map_err(|reason| Error::InvalidConfig { option: "endpoints", reason: reason.into() })?;
    let lookup = nodes.clone();
    let addrs = control
        .run(async move { resolve(&lookup).await })
        .ok_or(Error::Spawn { what: "the control thread", reason: "it stopped".into() })?;
    if addrs.is_empty() {
        let names: Vec<String> = nodes.iter().map(ToString::to_string).collect();
        return Err(Error::InvalidConfig {
            option: "endpoints",
            reason: format!("none of {} resolves to an address", names.join(", ")),
        });
    }
    Ok(Endpoints { addrs, max_packet_length: None, source: None, discovery: None })
}

/// Resolves the nodes (IP literals directly, host names through DNS), in order.
async fn resolve(nodes: &[Endpoint]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for endpoint in nodes {
        match endpoint.to_socket_addr() {
            Some(addr) => addrs.push(addr),
            None => match tokio::net::lookup_host((endpoint.host(), endpoint.port())).await {
                Ok(mut resolved) => addrs.extend(resolved.next()),
                Err(error) => {
                    tracing::warn!(%endpoint, %error, "cannot resolve a DataProxy node");
                }
            },
        }
    }
    addrs
}

impl ControlThread {
    /// Asks the Manager for the node list every `interval`; when the set of nodes changes, tells
    /// every shard (which moves its connections, draining the old ones). A failed lookup or an
    /// empty list keeps the old list. `on_lookup` is told each lookup's result for the metrics.
    pub fn spawn_refresh(
        &self,
        discovery: Discovery,
        interval: Duration,
        mut current: Vec<SocketAddr>,
        mut tell_shards: impl FnMut(Vec<SocketAddr>) + Send + 'static,
        on_lookup: impl Fn(&'static str) + Send + 'static,
        refresh_now: Arc<tokio::sync::Notify>,
    ) {
        /// Stranded shards may ask often; the Manager is asked at most this often on their behalf.
        const MIN_GAP: Duration = Duration::from_secs(1);
        self.handle.spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = refresh_now.notified() => {
                        tokio::time::sleep_until(last + MIN_GAP).await;
                        tracing::info!("every node is failing for a shard; refreshing the node list now");
                    }
                }
                last = tokio::time::Instant::now();
                let list = match discovery.client.lookup().await {
                    Ok(list) => list,
                    Err(error) => {
                        tracing::warn!(%error, "node list refresh failed; keeping the old list");
                        on_lookup("error");
                        continue;
                    }
                };
                on_lookup("manager");
                let addrs = resolve(&list.endpoints).await;
                if addrs.is_empty() {
                    continue;
                }
                let diff = discovery::diff(
                    &current.iter().copied().map(discovery::Endpoint::from).collect::<Vec<_>>(),
                    &addrs.iter().copied().map(discovery::Endpoint::from).collect::<Vec<_>>(),
                );
                if diff.is_empty() {
                    continue;
                }
                tracing::info!(added = ?diff.added, removed = ?diff.removed, "DataProxy node list changed");
                if let Some(cache) = &discovery.cache {
                    if let Err(error) = cache.store(&list, std::time::SystemTime::now()) {
                        tracing::warn!(%error, "cannot save the node list cache");
                    }
                }
                current.clone_from(&addrs);
                tell_shards(addrs);
            }
        });
    }
}
