use std::time::Duration;

use inlong_dataproxy::server::{LocalCluster, NodeConfig};
use inlong_dataproxy::{Producer, Record, Transport};

#[test]
fn smoke_both_drivers() {
    for transport in [Transport::Epoll, Transport::IoUring, Transport::Auto] {
        let cluster = LocalCluster::builder()
            .node_config(NodeConfig { ledger: true, ..NodeConfig::default() })
            .start()
            .unwrap();
        let producer = Producer::builder()
            .group_id("test_group")
            .manager_url(cluster.manager_url())
            .node_list_cache(false)
            .transport(transport)
            .shards(2)
            .build()
            .unwrap();
        eprintln!("transport {transport:?} -> {}", producer.transport());
        let futures: Vec<_> = (0..10_000)
            .map(|i| {
                producer.send(
                    Record::new(format!("s{}", i % 10), format!("record {i}")).with_metadata(i),
                )
            })
            .collect();
        for (i, f) in futures.into_iter().enumerate() {
            let report = f.wait().unwrap();
            assert_eq!(report.metadata, i as u64);
        }
        producer.close_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(cluster.stats().records, 10_000);
    }
}
