//! The delivery contract against what the application's own code does: callbacks that panic,
//! callbacks that flush, close or drop the producer, futures dropped unpolled in blocking mode,
//! and records that could never be delivered. On both I/O drivers; every wait is bounded.

mod common;
use common::{transports, wait_until};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inlong_dataproxy::{
    DeliveryReport, Error, MetricsRegistry, ProducerBuilder, Record, Transport,
};
use inlong_dataproxy_testkit::LocalCluster;

fn cluster() -> LocalCluster {
    common::cluster(1)
}

/// [`common::builder`] with a send timeout longer than any wait of these tests.
fn builder(cluster: &LocalCluster, transport: Transport) -> ProducerBuilder {
    common::builder(cluster, transport).send_timeout(Duration::from_secs(20))
}

type Outcome = (usize, Result<DeliveryReport, Error>);

/// Takes `count` outcomes, failing the test if they do not all arrive within `limit`.
fn collect(rx: &Receiver<Outcome>, count: usize, limit: Duration, what: &str) -> Vec<Outcome> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(outcome) => out.push(outcome),
            Err(_) => panic!("{what}: only {} of {count} outcomes within {limit:?}", out.len()),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

fn sample(registry: &MetricsRegistry, series: &str) -> f64 {
    let text = registry.encode_text();
    common::sample(&text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[test]
fn a_panicking_callback_is_contained_and_its_batch_mates_resolve() {
    for transport in transports() {
        let cluster = cluster();
        let registry = MetricsRegistry::new(prometheus::Registry::new());
        let producer = builder(&cluster, transport)
            .metrics_name("panics")
            .metrics_registry(registry.clone())
            .batching_max_publish_delay(Duration::from_millis(50))
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel::<Outcome>();
        for i in 0..10 {
            let tx = tx.clone();
            let record = Record::new("panicky", format!("record {i}"));
            producer.send_with_callback(record, move |result| {
                if i == 3 {
                    panic!("a bug in the application's callback");
                }
                let _ = tx.send((i, result));
            });
        }
        let outcomes = collect(&rx, 9, Duration::from_secs(10), "batch-mates of a panic");
        assert!(outcomes.iter().all(|(_, r)| r.is_ok()), "{transport:?}: {outcomes:?}");
        assert_eq!(producer.flush_blocking(Duration::from_secs(5)), Ok(()), "budget given back");
        assert_eq!(producer.stats().callback_panics, 1);
        assert_eq!(sample(&registry, r#"data_proxy_callback_panic_count{name="panics"}"#), 1.0);
        // The connection that carried the batch still reads its replies: the next records are
        // acked long before the 20 s send timeout.
        let started = Instant::now();
        for i in 10..20 {
            let tx = tx.clone();
            producer.send_with_callback(Record::new("panicky", format!("record {i}")), move |r| {
                let _ = tx.send((i, r));
            });
        }
        let later = collect(&rx, 10, Duration::from_secs(5), "records after the panic");
        assert!(later.iter().all(|(_, r)| r.as_ref().is_ok_and(|r| r.retries == 0)), "{later:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
        assert_eq!(cluster.stats().records, 20, "{transport:?}");
    }
}

#[test]
fn close_and_flush_from_a_callback_start_without_waiting_for_themselves() {
    for transport in transports() {
        let cluster = cluster();
        let producer = Arc::new(
            builder(&cluster, transport)
                .batching_max_publish_delay(Duration::from_millis(50))
                .build()
                .unwrap(),
        );
        // flush from a callback: returns at once, the shard is not held up.
        let (tx, rx) = mpsc::channel::<Outcome>();
        let (flushed_tx, flushed_rx) = mpsc::channel();
        let inner = producer.clone();
        producer.send_with_callback(Record::new("s", "first"), move |result| {
            let started = Instant::now();
            let flushed = inner.flush_blocking(Duration::from_secs(10));
            let _ = flushed_tx.send((flushed, started.elapsed()));
            let _ = tx.send((0, result));
        });
        let (flushed, took) = flushed_rx.recv_timeout(Duration::from_secs(10)).expect("flush");
        assert!(
            matches!(flushed, Err(Error::InCallback { operation: "flush", .. })),
            "{flushed:?}"
        );
        assert!(took < Duration::from_secs(1), "flush in a callback took {took:?}");
        collect(&rx, 1, Duration::from_secs(5), "the flushing callback's record");

        // close from a callback: starts the close, returns at once; the batch-mates are still
        // delivered, and a close from outside then waits for the end as usual.
        let (tx, rx) = mpsc::channel::<Outcome>();
        let (closed_tx, closed_rx) = mpsc::channel();
        for i in 0..5 {
            let (tx, closed_tx, inner) = (tx.clone(), closed_tx.clone(), producer.clone());
            producer.send_with_callback(Record::new("s", format!("r{i}")), move |result| {
                if i == 0 {
                    let started = Instant::now();
                    let closed = inner.close_blocking(Duration::from_secs(5));
                    let _ = closed_tx.send((closed, started.elapsed()));
                }
                let _ = tx.send((i, result));
            });
        }
        let (closed, took) = closed_rx.recv_timeout(Duration::from_secs(10)).expect("close");
        assert!(matches!(closed, Err(Error::InCallback { operation: "close", .. })), "{closed:?}");
        assert!(took < Duration::from_secs(1), "close in a callback took {took:?}");
        let outcomes = collect(&rx, 5, Duration::from_secs(10), "batch-mates of a close");
        assert!(outcomes.iter().all(|(_, r)| r.is_ok()), "{outcomes:?}");
        let refused = producer.send(Record::new("s", "after close")).wait();
        assert_eq!(refused, Err(Error::ProducerClosed));
        assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
        assert_eq!(producer.stats().callback_panics, 0);
        assert_eq!(cluster.stats().records, 6, "{transport:?}");
    }
}

#[test]
fn dropping_the_last_producer_in_a_callback_resolves_everything() {
    for transport in transports() {
        let cluster = cluster();
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(200));
        let registry = MetricsRegistry::new(prometheus::Registry::new());
        let producer = Arc::new(
            builder(&cluster, transport)
                .metrics_name("drops")
                .metrics_registry(registry.clone())
                .batching_max_publish_delay(Duration::from_millis(20))
                .build()
                .unwrap(),
        );
        let holder = Arc::new(Mutex::new(Some(producer.clone())));
        let (tx, rx) = mpsc::channel::<Outcome>();
        for i in 0..5 {
            let (tx, holder) = (tx.clone(), holder.clone());
            producer.send_with_callback(Record::new("s", format!("r{i}")), move |result| {
                if i == 0 {
                    // The last `Arc<Producer>`: the producer is dropped here, on its shard.
                    drop(holder.lock().unwrap().take());
                }
                let _ = tx.send((i, result));
            });
        }
        // Later records, in another batch, still pending when the producer goes.
        std::thread::sleep(Duration::from_millis(60));
        for i in 5..10 {
            let tx = tx.clone();
            producer.send_with_callback(Record::new("s", format!("r{i}")), move |result| {
                let _ = tx.send((i, result));
            });
        }
        drop(producer);
        let outcomes = collect(&rx, 10, Duration::from_secs(10), "records of a dropped producer");
        assert!(outcomes[..5].iter().all(|(_, r)| r.is_ok()), "{outcomes:?}");
        assert!(
            outcomes[5..].iter().all(|(_, r)| matches!(r, Ok(_) | Err(Error::ProducerClosed))),
            "{outcomes:?}"
        );
        assert_eq!(sample(&registry, r#"data_proxy_callback_panic_count{name="drops"}"#), 0.0);
    }
}

#[test]
fn blocking_mode_owns_every_record_even_when_its_future_is_dropped() {
    for transport in transports() {
        let cluster = cluster();
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(300));
        let producer = builder(&cluster, transport)
            .block_if_queue_full(true)
            .max_pending_messages(1000)
            .batching_max_messages(100)
            .build()
            .unwrap();
        let streams = ["ordered-a", "ordered-b", "ordered-c"];
        for i in 0..5000 {
            let stream = streams[i % streams.len()];
            // Fire and forget: the future is dropped at once, never polled.
            drop(producer.send(Record::new(stream, format!("{stream}:{i:05}"))));
        }
        assert!(producer.in_flight_count() > 1000, "waiting records count as pending");
        assert_eq!(producer.flush_blocking(Duration::from_secs(60)), Ok(()), "{transport:?}");
        assert_eq!(producer.in_flight_count(), 0);
        let ledger = cluster.ledger();
        for stream in streams {
            let got: Vec<String> = ledger
                .get(stream)
                .map(|records| {
                    records.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect()
                })
                .unwrap_or_default();
            let sent: Vec<String> = (0..5000)
                .filter(|i| streams[i % streams.len()] == stream)
                .map(|i| format!("{stream}:{i:05}"))
                .collect();
            assert_eq!(got.len(), sent.len(), "{transport:?} {stream}: every record delivered");
            assert!(got == sent, "{transport:?} {stream}: records out of order");
        }
        let stats = producer.stats();
        assert_eq!((stats.records_acked, stats.records_failed), (5000, 0));
        assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
    }
}

#[test]
fn records_waiting_for_room_fail_after_the_send_timeout_and_close_counts_them() {
    for transport in transports() {
        let cluster = cluster();
        cluster.node(0).update_faults(|f| f.silent = true);
        let producer = builder(&cluster, transport)
            .block_if_queue_full(true)
            .max_pending_messages(10)
            .batching_max_messages(10)
            .send_timeout(Duration::from_millis(800))
            .max_retries(0)
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel::<Outcome>();
        let started = Instant::now();
        for i in 0..30 {
            let tx = tx.clone();
            producer.send_with_callback(Record::new("s", format!("r{i}")), move |result| {
                let _ = tx.send((i, result));
            });
        }
        assert_eq!(producer.in_flight_count(), 30);
        let outcomes = collect(&rx, 30, Duration::from_secs(15), "waiting records");
        let kinds: Vec<u32> =
            outcomes.iter().map(|(_, r)| r.as_ref().unwrap_err().code()).collect();
        assert!(kinds.iter().all(|code| [10001, 10005].contains(code)), "{kinds:?}");
        assert!(kinds.contains(&10005), "some records timed out waiting for room: {kinds:?}");
        // Each waited at most one send timeout for room, then at most its attempts' bound.
        assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
        // (Room is given back just after the callbacks ran.)
        assert_eq!(producer.flush_blocking(Duration::from_secs(2)), Ok(()));

        // Records still waiting at the close deadline are counted as undelivered.
        for i in 0..25 {
            drop(producer.send(Record::new("s", format!("late {i}"))));
        }
        let closed = producer.close_blocking(Duration::from_millis(300));
        assert_eq!(closed, Err(Error::FlushTimeout { undelivered: 25 }), "{transport:?}");
        assert_eq!(producer.in_flight_count(), 0);
    }
}

#[test]
fn waiting_records_keep_their_order_behind_try_send_and_send_blocking() {
    let cluster = cluster();
    cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(100));
    let producer = builder(&cluster, Transport::Auto)
        .block_if_queue_full(true)
        .max_pending_messages(20)
        .batching_max_messages(10)
        .build()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    for i in 0..60 {
        drop(producer.send(Record::new("one", format!("{i:03}"))));
        sent.fetch_add(1, Ordering::SeqCst);
    }
    // Records of the same stream wait behind those already waiting.
    let refused = producer.try_send(Record::new("one", "jumps the queue"));
    assert!(matches!(refused, Err((Error::QueueFull, _))));
    let future =
        producer.send_blocking(Record::new("one", "060"), Duration::from_secs(20)).unwrap();
    assert!(future.wait().is_ok());
    assert_eq!(producer.flush_blocking(Duration::from_secs(20)), Ok(()));
    let got: Vec<String> =
        cluster.ledger()["one"].iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    let expected: Vec<String> = (0..=60).map(|i| format!("{i:03}")).collect();
    assert_eq!(got, expected);
    assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
}

#[test]
fn ids_too_long_for_any_reply_are_refused_at_send_and_the_longest_allowed_are_delivered() {
    let cluster = cluster();
    let longest_group = "g".repeat(1024);
    let column = "c".repeat(16 * 1024 - 4);
    let producer = builder(&cluster, Transport::Auto)
        .group_id(longest_group.clone())
        .add_column("k", column)
        .build()
        .unwrap();
    // A stream ID the server would echo into a reply over 64 KiB: refused before anything is
    // sent, with a typed error that quotes only a prefix of it.
    let huge = "s".repeat(70_000);
    let refused = producer.send(Record::new(huge, "x"));
    assert!(refused.is_resolved(), "refused at send, not after attempts");
    let error = refused.wait().unwrap_err();
    assert_eq!(error.code(), 10010, "{error}");
    assert!(error.to_string().len() < 300, "{error}");
    let just_over = producer.send(Record::new("s".repeat(1025), "x")).wait().unwrap_err();
    assert_eq!(just_over.code(), 10010);
    // IDs and add-columns at their limits: every reply still fits and the record is acked.
    let report = producer.send(Record::new("s".repeat(1024), "x")).wait();
    assert!(report.is_ok_and(|r| r.retries == 0));
    assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
    assert_eq!(cluster.stats().records, 1);
    let too_long_group = builder(&cluster, Transport::Auto).group_id("g".repeat(1025)).build();
    assert_eq!(too_long_group.unwrap_err().code(), 10010);
}

#[test]
fn a_record_too_long_is_refused_with_the_limit_that_applies_to_it() {
    let cluster = cluster();
    for compression in [true, false] {
        let producer = builder(&cluster, Transport::Auto).compression(compression).build().unwrap();
        let limit = producer.config().max_packet_length;
        let error = producer.send(Record::new("big", vec![b'x'; limit])).wait();
        let error = error.unwrap_err();
        let Error::RecordTooLong { record_len, max_record_len, .. } = error else {
            panic!("compression {compression}: {error:?}")
        };
        assert!(record_len > max_record_len, "{error}");
        // The limit the error states is exact: a record of that size is delivered.
        let fits = producer.send(Record::new("big", vec![b'y'; max_record_len])).wait();
        assert!(fits.is_ok(), "compression {compression}: {max_record_len} bytes: {fits:?}");
        let over = producer.send(Record::new("big", vec![b'y'; max_record_len + 1])).wait();
        assert!(matches!(over, Err(Error::RecordTooLong { .. })), "{over:?}");
        assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
    }
}

#[test]
fn a_send_timeout_chains_its_cause_as_the_error_source() {
    let cluster = cluster();
    cluster.node(0).update_faults(|f| f.silent = true);
    let producer = builder(&cluster, Transport::Auto)
        .send_timeout(Duration::from_millis(300))
        .max_retries(0)
        .build()
        .unwrap();
    let error = producer.send(Record::new("s", "x")).wait().unwrap_err();
    assert_eq!(error.code(), 10001);
    let source = std::error::Error::source(&error).expect("a send timeout has a cause");
    assert!(source.to_string().starts_with("no ack from 127.0.0.1:"), "{source}");
    assert_eq!(producer.close_blocking(Duration::from_millis(100)), Ok(()));
}

#[test]
fn waiting_in_a_callback_for_its_own_shard_returns_at_once() {
    for transport in transports() {
        let cluster = cluster();
        let producer =
            Arc::new(builder(&cluster, transport).max_pending_messages(2).build().unwrap());
        let (tx, rx) = mpsc::channel();
        let inner = producer.clone();
        producer.send_with_callback(Record::new("s", "first"), move |_| {
            let started = Instant::now();
            // Same stream, so the same shard: this callback's thread would have to resolve it.
            let waited = inner.send(Record::new("s", "second")).wait();
            // The first record's room came back before its callback ran: with the second and
            // third the budget of 2 is full.
            let _third = inner.send(Record::new("s", "third"));
            let blocked = inner.send_blocking(Record::new("s", "fourth"), Duration::from_secs(10));
            let _ = tx.send((waited, blocked.map(|_| ()), started.elapsed()));
        });
        let (waited, blocked, took) = rx.recv_timeout(Duration::from_secs(10)).expect("callback");
        assert!(matches!(waited, Err(Error::InCallback { operation: "wait", .. })), "{waited:?}");
        assert!(matches!(blocked, Err(Error::QueueFullTimeout { .. })), "{blocked:?}");
        assert!(took < Duration::from_secs(1), "{transport:?}: the callback took {took:?}");
        assert_eq!(producer.flush_blocking(Duration::from_secs(5)), Ok(()));
        assert_eq!(cluster.stats().records, 3, "the second and third were still delivered");
        assert_eq!(producer.close_blocking(Duration::from_secs(5)), Ok(()));
    }
}

#[test]
fn a_close_racing_senders_in_blocking_mode_resolves_every_record_once() {
    for transport in transports() {
        let cluster = cluster();
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(20));
        for round in 0..3 {
            let producer = Arc::new(
                builder(&cluster, transport)
                    .block_if_queue_full(true)
                    .max_pending_messages(100)
                    .batching_max_messages(10)
                    .build()
                    .unwrap(),
            );
            let calls: Arc<Vec<AtomicU64>> =
                Arc::new((0..8000).map(|_| AtomicU64::new(0)).collect());
            let senders: Vec<_> = (0..4)
                .map(|t| {
                    let (producer, calls) = (producer.clone(), calls.clone());
                    std::thread::spawn(move || {
                        for i in (t * 2000)..((t + 1) * 2000) {
                            let calls = calls.clone();
                            let record = Record::new(format!("s{}", i % 7), format!("{i}"));
                            producer.send_with_callback(record, move |_| {
                                calls[i].fetch_add(1, Ordering::SeqCst);
                            });
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(30 + 20 * round));
            let _ = producer.close_blocking(Duration::from_millis(200));
            for sender in senders {
                sender.join().unwrap();
            }
            wait_until("every record resolved", Duration::from_secs(10), || {
                calls.iter().all(|c| c.load(Ordering::SeqCst) > 0)
            });
            let counts: Vec<u64> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
            let unresolved = counts.iter().filter(|&&c| c == 0).count();
            assert_eq!(unresolved, 0, "{transport:?} round {round}: records never resolved");
            assert!(counts.iter().all(|&c| c == 1), "{transport:?}: a record resolved twice");
            assert_eq!(producer.in_flight_count(), 0);
        }
    }
}
