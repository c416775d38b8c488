//! Discovery, endpoint health and rebalancing end to end: nodes added, removed, killed and
//! restarted under a steady load, the Manager down at start and during the run, auth, and the
//! Manager's odd answers. The delivery contract holds throughout: every record is resolved once,
//! none is lost, and every acked record is in a node's ledger.

mod common;
use common::{cluster, wait_until};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inlong_dataproxy::{Error, Producer, ProducerBuilder, Record, Transport};
use inlong_dataproxy_testkit::{
    DataProxyNode, LocalCluster, ManagerAuth, ManagerConfig, ManagerFault,
};

/// [`common::builder`] on the transport `INLONG_TEST_TRANSPORT` names (`epoll`, or the default
/// `Auto`), refreshing the node list every 200 ms.
fn builder(cluster: &LocalCluster) -> ProducerBuilder {
    let transport = match std::env::var("INLONG_TEST_TRANSPORT").as_deref() {
        Ok("epoll") => Transport::Epoll,
        _ => Transport::Auto,
    };
    common::builder(cluster, transport).update_interval(Duration::from_millis(200))
}

/// Sends a steady stream (one record every ~100 µs, 8 streams) until stopped; counts outcomes.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(producer: &Arc<Producer>) -> Load {
        let (stop, sent, acked, failed) =
            (Arc::default(), Arc::default(), Arc::default(), Arc::default());
        let producer = producer.clone();
        let (s, n, a, f): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&acked), Arc::clone(&failed));
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    let (a, f) = (a.clone(), f.clone());
                    let record = Record::new(format!("s{}", i % 8), format!("{i}"));
                    producer.send_with_callback(record, move |result| {
                        match result {
                            Ok(_) => a.fetch_add(1, Ordering::SeqCst),
                            Err(error) => {
                                eprintln!("failed: {error}");
                                f.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                    });
                    i += 1;
                    n.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Load { stop, sent, acked, failed, thread: Some(thread) }
    }

    /// Stops sending and waits until every record sent is resolved.
    fn finish(mut self, producer: &Producer) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        producer.flush_blocking(Duration::from_secs(30)).expect("everything resolves");
        let (sent, acked, failed) = (
            self.sent.load(Ordering::SeqCst),
            self.acked.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        );
        assert_eq!(sent, acked + failed, "every record resolved once");
        (sent, acked, failed)
    }
}

fn ledger_total(cluster: &LocalCluster) -> u64 {
    cluster.ledger().values().map(|records| records.len() as u64).sum()
}

fn records(node: &DataProxyNode) -> u64 {
    node.stats().records
}

#[test]
fn a_node_added_at_run_time_gets_traffic_after_a_refresh() {
    let cluster = cluster(1);
    let producer = Arc::new(builder(&cluster).build().unwrap());
    let load = Load::start(&producer);
    cluster.wait_for_records(101, Duration::from_secs(10));
    let added = cluster.add_node().unwrap();
    let took = wait_until("the new node to get traffic", Duration::from_secs(10), || {
        records(&added) > 100
    });
    eprintln!("new node used {took:?} after it was added");
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0));
    assert!(ledger_total(&cluster) >= sent);
}

#[test]
fn a_removed_node_stops_getting_traffic_without_loss() {
    let cluster = cluster(2);
    let producer = Arc::new(builder(&cluster).build().unwrap());
    let load = Load::start(&producer);
    let (first, second) = (cluster.node(0), cluster.node(1));
    wait_until("both nodes used", Duration::from_secs(10), || {
        records(&first) > 50 && records(&second) > 50
    });
    cluster.remove_node(first.addr());
    // Once the refresh has moved every connection, the removed node sees nothing new.
    wait_until("connections drained off the removed node", Duration::from_secs(10), || {
        first.open_connections() == 0
    });
    let frozen = records(&first);
    let before = records(&second);
    wait_until("traffic on the remaining node", Duration::from_secs(10), || {
        records(&second) > before + 500
    });
    assert_eq!(records(&first), frozen, "the removed node got traffic after the move");
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0), "nothing lost while draining");
    assert!(ledger_total(&cluster) >= sent);
}

#[test]
fn a_killed_node_is_avoided_quickly_and_used_again_after_its_restart() {
    let cluster = cluster(2);
    let producer =
        Arc::new(builder(&cluster).send_timeout(Duration::from_secs(5)).build().unwrap());
    let load = Load::start(&producer);
    let (victim, survivor) = (cluster.node(0), cluster.node(1));
    wait_until("both nodes used", Duration::from_secs(10), || {
        records(&victim) > 50 && records(&survivor) > 50
    });

    let killed_at = Instant::now();
    victim.stop();
    // Traffic has fully moved when records acked after the kill keep arriving at the survivor
    // and the producer has nothing waiting longer than a moment.
    let acked_at_kill = load.acked.load(Ordering::SeqCst);
    wait_until("acks flowing again", Duration::from_secs(10), || {
        load.acked.load(Ordering::SeqCst) > acked_at_kill + 2000
    });
    let moved = killed_at.elapsed();
    eprintln!("traffic fully moved {moved:?} after the kill");
    assert!(moved < Duration::from_secs(5), "{moved:?}");

    victim.restart().unwrap();
    let before = records(&victim);
    // Quarantine is 10 s (±20 %) for a first failure; after it, the shard whose preferred node
    // this is goes back.
    let back = wait_until("the restarted node to be used again", Duration::from_secs(30), || {
        records(&victim) > before + 100
    });
    eprintln!("restarted node used again {back:?} after the restart");
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0), "nothing lost across the kill");
    assert!(ledger_total(&cluster) >= sent);
}

#[test]
fn the_manager_going_down_during_the_run_changes_nothing() {
    let cluster = cluster(1);
    let producer = Arc::new(builder(&cluster).build().unwrap());
    let load = Load::start(&producer);
    cluster.wait_for_records(101, Duration::from_secs(10));
    cluster.manager().stop_listening();
    // Traffic with the Manager down.
    cluster.wait_for_records(cluster.stats().records + 1001, Duration::from_secs(10));
    cluster.manager().set_fault(ManagerFault::NullNodeList);
    cluster.manager().start_listening().unwrap();
    // An empty answer keeps the old list.
    cluster.wait_for_records(cluster.stats().records + 1001, Duration::from_secs(10));
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0));
}

#[test]
fn manager_down_at_start_uses_a_fresh_cache_or_fails_clearly() {
    let cluster = cluster(1);
    let dir = std::env::temp_dir().join(format!("inlong-cache-test-{}", std::process::id()));
    let cache = dir.join("nodes.json");
    // A first start writes the cache.
    let producer =
        builder(&cluster).node_list_cache(true).node_list_cache_path(&cache).build().unwrap();
    producer.send(Record::new("s", "first")).wait().unwrap();
    drop(producer);
    assert!(cache.exists());
    cluster.manager().stop_listening();
    let started = Instant::now();
    let producer =
        builder(&cluster).node_list_cache(true).node_list_cache_path(&cache).build().unwrap();
    producer.send(Record::new("s", "from the cache")).wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(producer);
    // Without a cache: a clear error within the timeouts.
    let started = Instant::now();
    let error =
        builder(&cluster).manager_request_timeout(Duration::from_secs(1)).build().unwrap_err();
    assert!(matches!(error, Error::Discovery(_)), "{error}");
    assert!(error.to_string().contains("cannot reach the InLong Manager"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn manager_auth_works_with_credentials_and_says_so_without() {
    let auth =
        ManagerAuth { secret_id: "admin".into(), secret_key: "s3cret-key".into(), tenant: None };
    let cluster = LocalCluster::builder()
        .manager_config(ManagerConfig { auth: Some(auth), ..ManagerConfig::default() })
        .start()
        .unwrap();
    let producer = builder(&cluster).secret("admin", "s3cret-key").build().unwrap();
    producer.send(Record::new("s", "authorized")).wait().unwrap();
    let error = builder(&cluster).build().unwrap_err();
    let text = error.to_string();
    assert!(text.contains("auth"), "{text}");
    let error = builder(&cluster).secret("admin", "wrong-key").build().unwrap_err();
    assert!(!format!("{error} {error:?}").contains("wrong-key"), "credentials leaked: {error:?}");
}

#[test]
fn null_node_lists_and_business_failures_are_handled() {
    let cluster = cluster(1);
    cluster.manager().set_fault(ManagerFault::NullNodeList);
    let error = builder(&cluster).build().unwrap_err();
    assert!(matches!(error, Error::NoEndpoints { .. }), "{error:?}");
    cluster
        .manager()
        .set_fault(ManagerFault::Failure("group not found by groupId=test_group".into()));
    let error = builder(&cluster).build().unwrap_err();
    assert!(error.to_string().contains("group not found by groupId=test_group"), "{error}");
}

#[test]
fn connections_are_replaced_by_lifetime_without_loss() {
    let cluster = cluster(1);
    let producer =
        Arc::new(builder(&cluster).max_conn_lifetime(Duration::from_millis(300)).build().unwrap());
    let load = Load::start(&producer);
    let first = cluster.stats().connections;
    wait_until("several connection replacements", Duration::from_secs(15), || {
        cluster.stats().connections >= first + 6
    });
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0), "drained replacements lose nothing");
    assert_eq!(cluster.stats().duplicates, 0, "and resend nothing");
}

#[test]
fn when_every_node_fails_the_list_is_refreshed_at_once() {
    let cluster = cluster(1);
    // No periodic refresh within the test: only the "all failing" signal can find the new node.
    let producer =
        Arc::new(builder(&cluster).update_interval(Duration::from_secs(600)).build().unwrap());
    let load = Load::start(&producer);
    cluster.wait_for_records(101, Duration::from_secs(10));
    let replacement = cluster.add_node().unwrap();
    cluster.remove_node(cluster.node(0).addr());
    cluster.node(0).stop();
    let took = wait_until("traffic on the replacement", Duration::from_secs(10), || {
        records(&replacement) > 100
    });
    eprintln!("replacement used {took:?} after the only node died");
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!((acked, failed), (sent, 0), "records waited for the new node instead of failing");
}

#[test]
fn nodes_going_offline_are_not_hammered_with_reconnects() {
    let cluster = cluster(2);
    let producer = Arc::new(builder(&cluster).build().unwrap());
    let load = Load::start(&producer);
    cluster.wait_for_records(101, Duration::from_secs(10));
    let before = cluster.stats().connections;
    // Every node is being taken offline: each answers SERVICE_CLOSED (code 2).
    for node in cluster.nodes() {
        node.update_faults(|f| f.reject = true);
    }
    std::thread::sleep(Duration::from_secs(3)); // a fixed observation window, not a wait for an event
    let reconnects = cluster.stats().connections - before;
    eprintln!("{reconnects} connections in 3 s with every node refusing");
    // 2 shards x 2 slots backing off 0.1 s doubling to 5 s: a few dozen, not hundreds.
    assert!(reconnects <= 60, "{reconnects} connections in 3 s");
    for node in cluster.nodes() {
        node.update_faults(|f| f.reject = false);
    }
    let (sent, acked, failed) = load.finish(&producer);
    assert_eq!(sent, acked + failed);
}
