//! Prometheus metrics after a run with acks, a server error, a retry, a queue-full rejection and
//! an invalid record: every Go SDK metric name with the right labels and counts, two producers in
//! one registry without collisions, and `stats()` agreeing with the server.

mod common;
use common::{sample, wait_until};

use std::time::Duration;

use inlong_dataproxy::{Error, MetricsRegistry, Record, Transport};
use inlong_dataproxy_testkit::{ErrorInjection, LocalCluster};

#[test]
fn a_run_with_every_outcome_shows_up_under_the_go_names() {
    let cluster = LocalCluster::start(1).unwrap();
    let registry = MetricsRegistry::new(prometheus::Registry::new());
    let producer = common::builder(&cluster, Transport::Epoll)
        .shards(1)
        .metrics_name("metrics-test")
        .metrics_registry(registry.clone())
        .max_pending_messages(1000)
        .build()
        .unwrap();

    // 100 acked records in one batch... (50 per batch: two batches).
    let acked: Vec<_> =
        (0..100).map(|i| producer.send(Record::new("ok", format!("{i}")))).collect();
    for future in acked {
        future.wait().unwrap();
    }
    // A retry: the next batch is answered 114 once, then accepted.
    cluster
        .node(0)
        .update_faults(|f| f.errors = Some(ErrorInjection::Next { code: 114, count: 1 }));
    let retried = producer.send(Record::new("retry", "r")).wait().unwrap();
    assert_eq!(retried.retries, 1);
    // A server error: 115 for one batch of 3 records.
    cluster
        .node(0)
        .update_faults(|f| f.errors = Some(ErrorInjection::Next { code: 115, count: 1 }));
    let refused: Vec<_> =
        (0..3).map(|i| producer.send(Record::new("refused", format!("{i}")))).collect();
    for future in refused {
        assert_eq!(future.wait().unwrap_err().server_code(), Some(115));
    }
    // An invalid record and a queue-full rejection.
    assert_eq!(producer.send(Record::new("bad stream", "x")).wait().unwrap_err().code(), 10010);
    cluster.node(0).update_faults(|f| f.silent = true);
    let held: Vec<_> = (0..1000)
        .map(|i| producer.try_send(Record::new("held", format!("{i}"))).unwrap())
        .collect();
    let (error, _) = producer.try_send(Record::new("held", "one too many")).unwrap_err();
    assert_eq!(error, Error::QueueFull);

    let text = registry.encode_text();
    let name = r#"name="metrics-test""#;
    let expect = |series: &str, value: f64| {
        let got = sample(&text, series);
        assert_eq!(got, Some(value), "{series}\n{text}");
    };
    expect(&format!(r#"data_proxy_msg_count{{code="0",{name}}}"#), 101.0);
    expect(&format!(r#"data_proxy_msg_count{{code="10011",{name}}}"#), 3.0);
    expect(&format!(r#"data_proxy_msg_count{{code="10010",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_msg_count{{code="10004",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_error_count{{code="10011",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_error_count{{code="10010",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_error_count{{code="10004",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_retry_count{{{name},worker="0"}}"#), 1.0);
    expect(&format!(r#"data_proxy_timeout_count{{{name},worker="0"}}"#), 0.0);
    expect(&format!(r#"data_proxy_batch_size_count{{code="0",{name}}}"#), 3.0);
    expect(&format!(r#"data_proxy_batch_time_count{{code="10011",{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_batch_size_bucket{{code="0",{name},le="1024"}}"#), 3.0);
    expect(&format!(r#"data_proxy_healthy_endpoints{{{name}}}"#), 1.0);
    expect(&format!(r#"data_proxy_transport_info{{{name},transport="epoll"}}"#), 1.0);
    expect(&format!(r#"data_proxy_discovery_lookups{{{name},result="manager"}}"#), 1.0);

    let pending =
        sample(&text, &format!(r#"data_proxy_pending_msg_gauge{{{name},worker="0"}}"#)).unwrap();
    assert!(pending <= 1000.0);
    assert!(
        sample(&text, &format!(r#"data_proxy_sent_bytes_total{{kind="wire",{name}}}"#)).unwrap()
            > 0.0
    );
    assert!(
        sample(&text, &format!(r#"data_proxy_delivery_latency_seconds_count{{{name}}}"#)).unwrap()
            >= 3.0
    );

    let stats = producer.stats();
    assert_eq!((stats.records_acked, stats.records_failed), (101, 3));
    assert_eq!(stats.records_sent, 1104);
    assert_eq!(stats.in_flight_records, 1000);
    assert_eq!(stats.shards.len(), 1);
    assert_eq!(stats.connections, 1);
    // The node drops the connection: a switch after the peer closed it (Go's code 20001).
    cluster.node(0).kill_connections();
    let series = format!(r#"data_proxy_update_conn_count{{code="20001",{name}}}"#);
    // The series exists from the start, at 0 (see `ProducerMetrics::touch`): wait for a count.
    wait_until("a connection update counted", Duration::from_secs(10), || {
        sample(&registry.encode_text(), &series).unwrap_or(0.0) >= 1.0
    });
    expect_at_least(
        &registry.encode_text(),
        &format!(r#"data_proxy_error_count{{code="10015",{name}}}"#),
        1.0,
    );
    drop(producer);
    for future in held {
        assert_eq!(future.wait().unwrap_err(), Error::ProducerClosed);
    }
    let text = registry.encode_text();
    expect_at_least(&text, &format!(r#"data_proxy_msg_count{{code="10003",{name}}}"#), 1000.0);
}

fn expect_at_least(text: &str, series: &str, value: f64) {
    let got = sample(text, series).unwrap_or(0.0);
    assert!(got >= value, "{series} = {got}\n{text}");
}

#[test]
fn two_producers_share_a_registry_without_colliding() {
    let cluster = LocalCluster::start(1).unwrap();
    let registry = MetricsRegistry::new(prometheus::Registry::new());
    let build = |name: &str| {
        common::builder(&cluster, Transport::Epoll)
            .shards(1)
            .metrics_name(name)
            .metrics_registry(registry.clone())
            .build()
            .unwrap()
    };
    let a = build("a");
    let b = build("b");
    let a_again = build("a"); // the same name twice reuses the collectors, as Go does
    for i in 0..10 {
        a.send(Record::new("s", format!("{i}"))).wait().unwrap();
    }
    for i in 0..20 {
        b.send(Record::new("s", format!("{i}"))).wait().unwrap();
    }
    a_again.send(Record::new("s", "x")).wait().unwrap();
    a.flush_blocking(Duration::from_secs(5)).unwrap();
    let text = registry.encode_text();
    assert_eq!(sample(&text, r#"data_proxy_msg_count{code="0",name="a"}"#), Some(11.0), "{text}");
    assert_eq!(sample(&text, r#"data_proxy_msg_count{code="0",name="b"}"#), Some(20.0), "{text}");
    assert_eq!(a.stats().records_acked, 10, "stats are per producer even when names collide");

    // The default registry works too, and is shared by every producer that uses it.
    let default = common::builder(&cluster, Transport::Auto)
        .metrics_name("default-registry-test")
        .build()
        .unwrap();
    default.send(Record::new("s", "x")).wait().unwrap();
    let text = MetricsRegistry::default_registry().encode_text();
    assert_eq!(
        sample(&text, r#"data_proxy_msg_count{code="0",name="default-registry-test"}"#),
        Some(1.0)
    );
}
