//! What rdkafka users reach for, against the local DataProxy: `purge`, a send that waits a
//! bounded time for room, a drop that waits `close_timeout`, metrics present from the first
//! scrape, and static endpoints given by host name. Every wait is bounded.

mod common;
use common::{transports, wait_until};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inlong_dataproxy::{Error, MetricsRegistry, Producer, ProducerBuilder, Record, Transport};
use inlong_dataproxy_testkit::LocalCluster;

/// One shard and a 20 s send timeout on top of the shared builder.
fn builder(cluster: &LocalCluster, transport: Transport) -> ProducerBuilder {
    common::builder(cluster, transport).shards(1).send_timeout(Duration::from_secs(20))
}

#[test]
fn a_fresh_producer_exposes_every_go_family_from_the_first_scrape() {
    let cluster = common::cluster(1);
    let registry = MetricsRegistry::new(prometheus::Registry::new());
    let producer = builder(&cluster, Transport::Epoll)
        .metrics_name("fresh")
        .metrics_registry(registry.clone())
        .build()
        .unwrap();
    let text = registry.encode_text();
    for family in [
        "data_proxy_error_count",
        "data_proxy_retry_count",
        "data_proxy_timeout_count",
        "data_proxy_msg_count",
        "data_proxy_update_conn_count",
        "data_proxy_pending_msg_gauge",
        "data_proxy_batch_size",
        "data_proxy_batch_time",
        "data_proxy_callback_panic_count",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "no {family} in\n{text}");
    }
    for series in [
        r#"data_proxy_error_count{code="10001",name="fresh"} 0"#,
        r#"data_proxy_error_count{code="10011",name="fresh"} 0"#,
        r#"data_proxy_error_count{code="20001",name="fresh"} 0"#,
        r#"data_proxy_msg_count{code="0",name="fresh"} 0"#,
        r#"data_proxy_msg_count{code="10004",name="fresh"} 0"#,
        r#"data_proxy_update_conn_count{code="0",name="fresh"} 0"#,
        r#"data_proxy_update_conn_count{code="10007",name="fresh"} 0"#,
        r#"data_proxy_update_conn_count{code="20001",name="fresh"} 0"#,
        r#"data_proxy_retry_count{name="fresh",worker="0"} 0"#,
    ] {
        assert!(text.lines().any(|line| line == series), "no {series} in\n{text}");
    }
    producer.close_blocking(Duration::from_secs(5)).unwrap();
}

#[test]
fn purge_fails_every_unacked_record_once_and_the_producer_goes_on() {
    for transport in transports() {
        let cluster = common::cluster(1);
        cluster.node(0).update_faults(|f| f.stall_reads = true);
        let producer = builder(&cluster, transport)
            .batching_max_messages(50)
            .batching_max_publish_delay(Duration::from_secs(60))
            .max_pending_messages(130)
            .block_if_queue_full(true)
            .build()
            .unwrap();
        let calls: Arc<Vec<AtomicU32>> = Arc::new((0..131).map(|_| AtomicU32::new(0)).collect());
        let (tx, rx) = mpsc::channel();
        let send = |i: usize| {
            let (calls, tx) = (calls.clone(), tx.clone());
            producer.send_with_callback(Record::new("s", format!("r{i}")), move |result| {
                calls[i].fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((i, result));
            });
        };
        // Two full batches go out to a node that reads nothing, 30 records stay in the open
        // batch (a minute's linger), and 10 more wait for room.
        for i in 0..130 {
            send(i);
        }
        wait_until("two batches in flight", Duration::from_secs(10), || {
            producer.stats().inflight_batches >= 2 && producer.stats().connections >= 1
        });
        let futures: Vec<_> =
            (0..10).map(|i| producer.send(Record::new("s", format!("queued{i}")))).collect();
        assert!(futures.iter().all(|f| !f.is_resolved()));
        assert_eq!(producer.in_flight_count(), 140);

        let started = Instant::now();
        producer.purge();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // Every callback ran before purge returned, with the purge error.
        let outcomes: Vec<_> = rx.try_iter().collect();
        assert_eq!(outcomes.len(), 130, "{transport:?}");
        assert!(outcomes.iter().all(|(_, r)| matches!(r, Err(Error::Purged))), "{outcomes:?}");
        for future in futures {
            assert!(future.is_resolved());
            let error = future.wait().unwrap_err();
            assert_eq!((error.clone(), error.code()), (Error::Purged, 10002));
        }
        assert_eq!(producer.in_flight_count(), 0);

        // The node reads on: its late acks of the purged batches are ignored, and a record
        // sent now is delivered.
        cluster.node(0).update_faults(|f| f.stall_reads = false);
        send(130);
        assert_eq!(producer.flush_blocking(Duration::from_secs(15)), Ok(()), "{transport:?}");
        let (i, result) = rx.recv_timeout(Duration::from_secs(1)).expect("the new record");
        assert!(i == 130 && result.is_ok(), "{result:?}");
        wait_until("the stalled batches reach the node", Duration::from_secs(10), || {
            cluster.stats().records >= 101
        });
        // Flushing once more lets any late ack in; none resolves anything a second time.
        producer.flush_blocking(Duration::from_secs(5)).unwrap();
        assert!(calls.iter().all(|c| c.load(Ordering::SeqCst) == 1), "each record resolved once");
        assert_eq!(producer.stats().records_acked, 1);
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn a_send_with_a_queue_timeout_waits_for_room_without_blocking_the_executor() {
    let cluster = common::cluster(1);
    cluster.node(0).update_faults(|f| f.silent = true);
    let producer = builder(&cluster, Transport::Epoll).max_pending_messages(10).build().unwrap();
    let held: Vec<_> = (0..10).map(|i| producer.send(Record::new("s", format!("{i}")))).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ticks = Arc::new(AtomicU32::new(0));
    let (result, waited, ticks_seen) = runtime.block_on(async {
        // Another task on the same (single) thread keeps running while the send waits.
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let started = Instant::now();
        let future =
            producer.send_with_queue_timeout(Record::new("s", "late"), Duration::from_millis(300));
        let result = tokio::time::timeout(Duration::from_secs(5), future).await.unwrap();
        let waited = started.elapsed();
        let seen = ticks.load(Ordering::SeqCst);
        ticker.await.unwrap();
        (result, waited, seen)
    });
    let error = result.unwrap_err();
    assert!(matches!(error, Error::QueueFullTimeout { .. }) && error.code() == 10005, "{error}");
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(ticks_seen, 5, "the executor thread was never blocked");
    // The record's future resolves as it leaves the count (callbacks first, then the count).
    wait_until("the timed-out record leaves the count", Duration::from_secs(2), || {
        producer.in_flight_count() == 10
    });
    drop(producer);
    assert!(held.into_iter().all(|f| f.wait() == Err(Error::ProducerClosed)));

    // With room coming back in time, the waiting record is delivered.
    let cluster = common::cluster(1);
    cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(200));
    let producer = builder(&cluster, Transport::Epoll).max_pending_messages(10).build().unwrap();
    let held: Vec<_> = (0..10).map(|i| producer.send(Record::new("s", format!("{i}")))).collect();
    let future =
        producer.send_with_queue_timeout(Record::new("s", "late"), Duration::from_secs(10));
    assert!(!future.is_resolved());
    let report = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), future).await.unwrap() });
    assert!(report.is_ok(), "{report:?}");
    assert!(held.into_iter().all(|f| f.wait().is_ok()));
    producer.close_blocking(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_drop_waits_close_timeout_for_pending_records_then_fails_the_rest() {
    // Acks in 300 ms: a drop with a 5 s close_timeout delivers them all.
    let cluster = common::cluster(1);
    cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(300));
    let producer =
        builder(&cluster, Transport::Epoll).close_timeout(Duration::from_secs(5)).build().unwrap();
    let futures: Vec<_> =
        (0..100).map(|i| producer.send(Record::new("s", format!("{i}")))).collect();
    let started = Instant::now();
    drop(producer);
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(futures.into_iter().all(|f| f.wait().is_ok()), "all delivered before the drop ended");
    assert_eq!(cluster.stats().records, 100);

    // No acks at all: the drop gives up after close_timeout, and the rest fail ProducerClosed.
    let cluster = common::cluster(1);
    cluster.node(0).update_faults(|f| f.silent = true);
    let producer = builder(&cluster, Transport::Epoll)
        .close_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let futures: Vec<_> =
        (0..100).map(|i| producer.send(Record::new("s", format!("{i}")))).collect();
    let started = Instant::now();
    drop(producer);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(390) && took < Duration::from_secs(3), "{took:?}");
    assert!(futures.into_iter().all(|f| f.wait() == Err(Error::ProducerClosed)));
}

#[test]
fn static_endpoints_may_be_host_names() {
    let cluster = common::cluster(1);
    let port = cluster.node_addrs()[0].port();
    let producer = Producer::builder()
        .group_id("test_group")
        .endpoints([format!("localhost:{port}")])
        .transport(Transport::Epoll)
        .shards(1)
        .build()
        .unwrap();
    let report = producer.send(Record::new("s", "by name")).wait();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(cluster.stats().records, 1);
    producer.close_blocking(Duration::from_secs(5)).unwrap();
    // A name and an IP literal together; a malformed entry is refused by name.
    let addr = cluster.node_addrs()[0];
    let both = Producer::builder()
        .group_id("test_group")
        .endpoints([format!("localhost:{port}"), addr.to_string()])
        .transport(Transport::Epoll)
        .shards(1)
        .build()
        .unwrap();
    assert!(both.send(Record::new("s", "two")).wait().is_ok());
    drop(both);
    let error =
        Producer::builder().group_id("test_group").endpoints(["localhost"]).build().unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { option: "endpoints", .. }), "{error}");
}

#[test]
fn send_batch_delivers_every_record_in_order_with_one_future() {
    let cluster = common::cluster(1);
    for transport in transports() {
        let stream = inlong_dataproxy::StreamId::from(format!("batch_{transport:?}"));
        // 64 records per batch: a call of 1000 fills several batches.
        let producer = builder(&cluster, transport).batching_max_messages(64).build().unwrap();
        let payloads: Vec<String> = (0..1000).map(|i| format!("line {i:04}")).collect();
        let future = producer.send_batch(&stream, &payloads).unwrap();
        let report = future.wait().unwrap();
        assert_eq!(report.records, 1000);
        assert!(report.batches >= 1000 / 64, "{report:?}");
        let ledger = cluster.ledger();
        let got: Vec<&[u8]> = ledger[stream.as_str()].iter().map(|p| &p[..]).collect();
        let sent: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        assert_eq!(got, sent, "every record once, in the order given");
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn send_batch_is_all_or_nothing_and_names_the_bad_record() {
    let cluster = common::cluster(1);
    let producer = builder(&cluster, Transport::Epoll).max_pending_messages(100).build().unwrap();
    let stream = inlong_dataproxy::StreamId::from("batch_refused");
    let error = producer.send_batch(&stream, &["a", "b", "", "d"]).unwrap_err();
    assert!(
        matches!(&error, Error::InBatch { index: 2, source } if matches!(**source, Error::InvalidPayload { .. })),
        "{error:?}"
    );
    assert_eq!(error.code(), Error::InvalidPayload { reason: "" }.code());
    assert!(std::error::Error::source(&error).is_some());
    let empty: [&str; 0] = [];
    assert!(matches!(producer.send_batch(&stream, &empty), Err(Error::InvalidPayload { .. })));
    let bad_stream = inlong_dataproxy::StreamId::from("has space");
    assert!(matches!(producer.send_batch(&bad_stream, &["a"]), Err(Error::InvalidField { .. })));
    // 60 pending: a call of 50 more finds no room and takes none of them.
    let held: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    let first = producer.send_batch(&stream, &held).unwrap();
    let more: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    if let Err(error) = producer.send_batch(&stream, &more) {
        assert_eq!(error, Error::QueueFull);
    } else {
        // The first call was acked already: the room came back.
        assert!(producer.stats().records_sent >= 110);
    }
    first.wait().unwrap();
    producer.close_blocking(Duration::from_secs(5)).unwrap();
    assert_eq!(producer.stats().records_failed, 0);
    let error = producer.send_batch(&stream, &["late"]).unwrap_err();
    assert_eq!(error, Error::ProducerClosed);
}
