//! Finding the DataProxy nodes: the InLong Manager client and its on-disk fallback.
//!
//! This module owns everything the SDK learns from the Manager (`PROTOCOL.md` §5): the
//! [`ManagerClient`] that posts the `getIpList` lookup, the decoder of its JSON
//! ([`parse_node_list`]), the [`NodeListCache`] of the last good list, [`initial_lookup`] (what the
//! producer runs once at start-up: Manager first, a fresh cached list only when the Manager is
//! unreachable) and [`diff`] (what the control thread uses on each refresh to tell the shards which
//! nodes came and went). Only start-up and the control thread call it.
//!
//! It must never block a shard (lookups and cache file I/O run on the control thread or at
//! start-up only), never wait without a deadline (every attempt has a connect and a request
//! timeout, and retries are bounded), and never log or report a credential.

// Parts of this module serve only the testkit, the fuzz targets and the benches, which reach it
// through the `unstable` feature; without it they are unused here.
#![cfg_attr(not(feature = "unstable"), allow(dead_code, unused_imports))]

mod cache;
mod manager_client;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

pub use cache::{CachedNodeList, NodeListCache, DEFAULT_CACHE_MAX_AGE};
pub(crate) use manager_client::{
    normalize_manager_url, validate_credentials, validate_manager_url,
};
pub use manager_client::{
    parse_node_list, AuthProvider, DiscoveryError, Endpoint, ManagerClient, ManagerClientConfig,
    NodeList, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOOKUP_ATTEMPTS, DEFAULT_MANAGER_URL,
    DEFAULT_REQUEST_TIMEOUT,
};

/// Where the start-up node list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A lookup answered by the Manager.
    Manager,
    /// The on-disk cache, because the Manager was unreachable.
    Cache {
        /// How old the cached list was.
        age: Duration,
    },
}

impl Source {
    /// The `source` label of the lookup metric: `manager` or `cache`.
    pub fn label(self) -> &'static str {
        match self {
            Source::Manager => "manager",
            Source::Cache { .. } => "cache",
        }
    }
}

/// The start-up lookup: ask the Manager (with the client's bounded retries), and remember a good
/// answer in `cache`.
///
/// Only a transient failure ([`DiscoveryError::is_transient`]: unreachable, HTTP 5xx) falls back
/// to a fresh cached list. A reachable Manager's answer is authoritative: an empty list is
/// [`DiscoveryError::NoEndpoints`], and auth failures, rejections and bad answers are returned as
/// they are, because they mean the configuration is wrong. Failing to write or read the cache is
/// logged, never fatal. A cache of another Manager URL or group than the client's is ignored.
///
/// The cache file is written and read synchronously (a few KiB); call this at start-up or from the
/// control thread, never from a shard.
///
/// # Errors
///
/// The lookup's error when there is no usable fallback.
pub async fn initial_lookup(
    client: &ManagerClient,
    cache: Option<&NodeListCache>,
) -> Result<(NodeList, Source), DiscoveryError> {
    let cache = cache.filter(|cache| {
        let matches =
            cache.manager_url() == client.manager_url() && cache.group_id() == client.group_id();
        if !matches {
            tracing::warn!(
                path = %cache.path().display(),
                "ignoring a node list cache made for another manager URL or group"
            );
        }
        matches
    });
    let error = match client.lookup().await {
        Ok(list) => {
            if let Some(cache) = cache {
                if let Err(error) = cache.store(&list, SystemTime::now()) {
                    tracing::warn!(
                        path = %cache.path().display(),
                        %error,
                        "cannot save the node list cache"
                    );
                }
            }
            return Ok((list, Source::Manager));
        }
        Err(error) => error,
    };
    if !error.is_transient() {
        return Err(error);
    }
    let Some(cache) = cache else {
        return Err(error);
    };
    match cache.load(SystemTime::now()) {
        Ok(Some(CachedNodeList { node_list, age })) => {
            tracing::warn!(
                %error,
                ?age,
                nodes = node_list.endpoints.len(),
                "manager unreachable; starting with the cached node list"
            );
            Ok((node_list, Source::Cache { age }))
        }
        Ok(None) => Err(error),
        Err(read_error) => {
            tracing::warn!(
                path = %cache.path().display(),
                error = %read_error,
                "cannot read the node list cache"
            );
            Err(error)
        }
    }
}

/// What changed between two node lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointDiff {
    /// In the new list but not the old, in the new list's order.
    pub added: Vec<Endpoint>,
    /// In the old list but not the new, in the old list's order.
    pub removed: Vec<Endpoint>,
}

impl EndpointDiff {
    /// Whether the two lists hold the same endpoints (order aside).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The endpoints added and removed from `old` to `new`, compared by `host:port` as the Go SDK
/// does on refresh. Repeats are reported once.
#[must_use]
pub fn diff(old: &[Endpoint], new: &[Endpoint]) -> EndpointDiff {
    let old_set: HashSet<&Endpoint> = old.iter().collect();
    let new_set: HashSet<&Endpoint> = new.iter().collect();
    let mut reported = HashSet::new();
    let added = new
        .iter()
        .filter(|endpoint| !old_set.contains(endpoint) && reported.insert(*endpoint))
        .cloned()
        .collect();
    let removed = old
        .iter()
        .filter(|endpoint| !new_set.contains(endpoint) && reported.insert(*endpoint))
        .cloned()
        .collect();
    EndpointDiff { added, removed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Vec<Endpoint> {
        list.iter()
            .map(|text| {
                let (host, port) = text.rsplit_once(':').expect("host:port");
                Endpoint::new(host, port.parse().expect("port")).expect("valid")
            })
            .collect()
    }

    #[test]
    fn the_client_and_its_futures_can_move_between_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let client =
            ManagerClient::new(ManagerClientConfig::new("http://m/x", "g")).expect("valid config");
        send_sync(&client);
        send(&client.lookup());
        let cache = NodeListCache::at_path("/nonexistent/nodes.json", "http://m/x", "g");
        send(&initial_lookup(&client, Some(&cache)));
    }

    #[test]
    fn diff_reports_added_and_removed_in_order() {
        let old = endpoints(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        let new = endpoints(&["10.0.0.4:1", "10.0.0.2:1", "10.0.0.1:2", "10.0.0.4:1"]);
        let change = diff(&old, &new);
        assert_eq!(change.added, endpoints(&["10.0.0.4:1", "10.0.0.1:2"]));
        assert_eq!(change.removed, endpoints(&["10.0.0.1:1", "10.0.0.3:1"]));
        assert!(!change.is_empty());
    }

    #[test]
    fn diff_of_the_same_set_is_empty() {
        let old = endpoints(&["10.0.0.1:1", "[::1]:2"]);
        let reordered = endpoints(&["[::1]:2", "10.0.0.1:1"]);
        assert!(diff(&old, &reordered).is_empty());
        assert!(diff(&[], &[]).is_empty());
        assert_eq!(diff(&[], &old).added, old);
        assert_eq!(diff(&old, &[]).removed, old);
    }
}
