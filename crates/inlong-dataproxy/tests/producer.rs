//! The producer end to end against the local DataProxy + Manager, on both I/O drivers: every
//! delivery is resolved exactly once — acked, failed with the server's code, failed after its
//! attempts, or failed at close/drop — and every acked record is in the server's ledger.
//!
//! io_uring is required on this machine; set `INLONG_SKIP_IO_URING=1` to run the epoll half only
//! where io_uring is blocked (e.g. Docker's default seccomp).

mod common;
use common::{builder, cluster, transports, wait_until};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inlong_dataproxy::{Error, Producer, Record, Transport};
use inlong_dataproxy_testkit::{ErrorInjection, LocalCluster};

/// Counts how often each record's callback ran, and how each ended.
#[derive(Default)]
struct Tally {
    calls: Vec<AtomicU32>,
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    codes: std::sync::Mutex<HashMap<u32, u64>>,
}

impl Tally {
    fn new(records: usize) -> Arc<Tally> {
        Arc::new(Tally {
            calls: (0..records).map(|_| AtomicU32::new(0)).collect(),
            ..Tally::default()
        })
    }

    fn send(self: &Arc<Tally>, producer: &Producer, stream: &str, i: usize) {
        let tally = self.clone();
        let record =
            Record::new(stream.to_owned(), format!("{stream}:{i:08}")).with_metadata(i as u64);
        producer.send_with_callback(record, move |result| {
            tally.calls[i].fetch_add(1, Ordering::SeqCst);
            match result {
                Ok(report) => {
                    assert_eq!(report.metadata, i as u64);
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                    if report.retries > 0 {
                        tally.retried.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(error) => {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    *tally.codes.lock().unwrap().entry(error.code()).or_default() += 1;
                }
            }
        });
    }

    /// Waits (with a deadline) until every record resolved, then checks it resolved exactly once.
    fn wait_all_once(&self, deadline: Duration) {
        wait_until("every delivery resolved", deadline, || {
            self.ok.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
                >= self.calls.len() as u64
        });
        for (i, calls) in self.calls.iter().enumerate() {
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "record {i} resolved {} times",
                calls.load(Ordering::SeqCst)
            );
        }
    }

    fn codes(&self) -> HashMap<u32, u64> {
        self.codes.lock().unwrap().clone()
    }
}

/// Every acked record is in the ledger; duplicates only come from retries.
fn assert_ledger_has(cluster: &LocalCluster, streams: &[String], per_stream: usize) {
    let ledger = cluster.ledger();
    for stream in streams {
        let records = ledger.get(stream).map(Vec::as_slice).unwrap_or_default();
        let mut seen: Vec<bool> = vec![false; per_stream];
        for record in records {
            let text = std::str::from_utf8(record).unwrap();
            let index: usize = text.rsplit(':').next().unwrap().parse().unwrap();
            seen[index / streams.len()] = true;
        }
        assert!(seen.iter().all(|s| *s), "stream {stream}: records missing from the ledger");
    }
}

#[test]
fn a_million_records_over_100_streams_all_acked_in_order() {
    const RECORDS: usize = 1_000_000;
    const STREAMS: usize = 100;
    for transport in transports() {
        let cluster = cluster(1);
        let producer = builder(&cluster, transport).max_pending_messages(RECORDS).build().unwrap();
        let streams: Vec<String> = (0..STREAMS).map(|s| format!("stream-{s:03}")).collect();
        let started = Instant::now();
        let futures: Vec<_> = (0..RECORDS)
            .map(|i| {
                let stream = &streams[i % STREAMS];
                producer.send(
                    Record::new(stream.clone(), format!("{stream}:{i:08}")).with_metadata(i as u64),
                )
            })
            .collect();
        let mut retried = 0;
        for (i, future) in futures.into_iter().enumerate() {
            let report = future.wait().unwrap_or_else(|e| panic!("record {i}: {e}"));
            assert_eq!(report.metadata, i as u64);
            retried += u64::from(report.retries > 0);
        }
        producer.close_blocking(Duration::from_secs(10)).unwrap();
        eprintln!("{transport:?}: {RECORDS} records in {:?}", started.elapsed());

        let stats = cluster.stats();
        assert_eq!((stats.records, stats.errors, stats.duplicates), (RECORDS as u64, 0, 0));
        let counts = cluster.stream_counts();
        assert_eq!(counts.len(), STREAMS);
        assert!(counts.values().all(|&c| c == (RECORDS / STREAMS) as u64));
        assert_eq!(retried, 0);
        // No retry happened, so each stream arrived in send order.
        let ledger = cluster.ledger();
        for stream in &streams {
            let indexes: Vec<usize> = ledger[stream]
                .iter()
                .map(|r| {
                    std::str::from_utf8(r).unwrap().rsplit(':').next().unwrap().parse().unwrap()
                })
                .collect();
            assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{stream} out of order");
        }
    }
}

#[test]
fn server_error_fails_every_record_once_with_the_code() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| {
            f.errors = Some(ErrorInjection::Fraction { code: 115, fraction: 1.0 })
        });
        let producer = builder(&cluster, transport).build().unwrap();
        let tally = Tally::new(500);
        for i in 0..500 {
            tally.send(&producer, "s", i);
        }
        tally.wait_all_once(Duration::from_secs(20));
        assert_eq!(tally.failed.load(Ordering::SeqCst), 500);
        assert_eq!(tally.codes(), HashMap::from([(10011, 500)]));
        let future = producer.send(Record::new("s", "one more"));
        let error = future.wait().unwrap_err();
        assert_eq!((error.code(), error.server_code()), (10011, Some(115)));
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn retryable_errors_are_retried_then_delivered() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster
            .node(0)
            .update_faults(|f| f.errors = Some(ErrorInjection::Next { code: 114, count: 3 }));
        let producer = builder(&cluster, transport).build().unwrap();
        let tally = Tally::new(300);
        for i in 0..300 {
            tally.send(&producer, &format!("s{}", i % 3), i);
        }
        tally.wait_all_once(Duration::from_secs(20));
        assert_eq!(tally.ok.load(Ordering::SeqCst), 300);
        assert!(tally.retried.load(Ordering::SeqCst) > 0, "some batch needed a retry");
        let streams: Vec<String> = (0..3).map(|s| format!("s{s}")).collect();
        assert_ledger_has(&cluster, &streams, 100);
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn silent_node_fails_with_send_timeout_after_the_attempts() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.silent = true);
        let producer = builder(&cluster, transport)
            .send_timeout(Duration::from_millis(300))
            .max_retries(1)
            .retry_initial_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let started = Instant::now();
        let tally = Tally::new(50);
        for i in 0..50 {
            tally.send(&producer, "s", i);
        }
        tally.wait_all_once(Duration::from_secs(20));
        assert_eq!(tally.codes(), HashMap::from([(10001, 50)]));
        // Two attempts of 300 ms plus linger and backoff, nowhere near Go's 30-45 s.
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn connection_loss_is_retried_at_once_and_nothing_is_lost() {
    for transport in transports() {
        let cluster = cluster(2);
        for node in cluster.nodes() {
            node.update_faults(|f| f.close_after_batches = Some(25));
        }
        let producer =
            builder(&cluster, transport).send_timeout(Duration::from_secs(20)).build().unwrap();
        let started = Instant::now();
        let tally = Tally::new(5000);
        let streams: Vec<String> = (0..5).map(|s| format!("s{s}")).collect();
        for i in 0..5000 {
            tally.send(&producer, &streams[i % 5], i);
        }
        tally.wait_all_once(Duration::from_secs(30));
        assert_eq!(tally.ok.load(Ordering::SeqCst), 5000, "codes: {:?}", tally.codes());
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "retried at once, not after the send timeout"
        );
        assert_ledger_has(&cluster, &streams, 1000);
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn close_with_a_backlog_delivers_it_within_the_deadline() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(200));
        let producer = builder(&cluster, transport).build().unwrap();
        let tally = Tally::new(20_000);
        for i in 0..20_000 {
            tally.send(&producer, "s", i);
        }
        let started = Instant::now();
        producer.close_blocking(Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        tally.wait_all_once(Duration::from_secs(1));
        assert_eq!(tally.ok.load(Ordering::SeqCst), 20_000);
        let late = producer.send(Record::new("s", "after close")).wait().unwrap_err();
        assert_eq!(late, Error::ProducerClosed);
        assert_eq!(late.code(), 10003);
    }
}

#[test]
fn close_against_a_silent_node_returns_at_its_deadline_and_fails_the_rest() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.silent = true);
        let producer = builder(&cluster, transport).build().unwrap();
        let tally = Tally::new(1000);
        for i in 0..1000 {
            tally.send(&producer, "s", i);
        }
        let started = Instant::now();
        let error = producer.close_blocking(Duration::from_millis(500)).unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "{took:?}");
        assert_eq!(error, Error::FlushTimeout { undelivered: 1000 });
        tally.wait_all_once(Duration::from_secs(1));
        assert_eq!(tally.codes(), HashMap::from([(10001, 1000)]));
    }
}

#[test]
fn dropping_the_producer_fails_pending_deliveries_with_closed() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.silent = true);
        let producer = builder(&cluster, transport).build().unwrap();
        let tally = Tally::new(200);
        for i in 0..200 {
            tally.send(&producer, "s", i);
        }
        let future = producer.send(Record::new("s", "awaited"));
        let started = Instant::now();
        drop(producer);
        assert!(started.elapsed() < Duration::from_secs(2));
        tally.wait_all_once(Duration::from_secs(1));
        assert_eq!(tally.codes(), HashMap::from([(10003, 200)]));
        assert_eq!(future.wait().unwrap_err(), Error::ProducerClosed);
    }
}

#[test]
fn a_full_queue_refuses_hands_back_or_waits() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.silent = true);
        let producer = builder(&cluster, transport).max_pending_messages(10).build().unwrap();
        let held: Vec<_> =
            (0..10).map(|i| producer.try_send(Record::new("s", format!("{i}"))).unwrap()).collect();
        let (error, record) = producer.try_send(Record::new("s", "eleventh")).unwrap_err();
        assert_eq!((error.code(), record.payload().as_ref()), (10004, &b"eleventh"[..]));
        assert_eq!(producer.send(Record::new("s", "x")).wait().unwrap_err(), Error::QueueFull);
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        producer.send_with_callback(Record::new("s", "cb"), move |r| {
            assert_eq!(r.unwrap_err(), Error::QueueFull);
            seen.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let started = Instant::now();
        let error =
            producer.send_blocking(Record::new("s", "y"), Duration::from_millis(200)).unwrap_err();
        assert_eq!(error.code(), 10005);
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert_eq!(producer.in_flight_count(), 10);
        drop(producer);
        for future in held {
            assert_eq!(future.wait().unwrap_err(), Error::ProducerClosed);
        }
    }
}

#[test]
fn blocking_mode_waits_for_room_then_delivers() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(20));
        let producer = builder(&cluster, transport)
            .max_pending_messages(100)
            .block_if_queue_full(true)
            .build()
            .unwrap();
        // Waiting futures are polled concurrently, as an application's tasks would be.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..2000)
                .map(|i| tokio::spawn(producer.send(Record::new("s", format!("{i}")))))
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        });
        let deadline = Duration::from_secs(10);
        for i in 0..500 {
            drop(producer.send_blocking(Record::new("t", format!("{i}")), deadline).unwrap());
        }
        producer.close_blocking(deadline).unwrap();
        assert_eq!(cluster.stats().records, 2500);
    }
}

#[test]
fn invalid_records_get_typed_errors_and_never_reach_the_wire() {
    let cluster = cluster(1);
    let producer = builder(&cluster, Transport::Epoll)
        .max_packet_length(4096)
        .batching_max_size(4096)
        .build()
        .unwrap();
    let cases = [
        (Record::new("s", ""), 10010),
        (Record::new("s", "\n"), 10010),
        (Record::new("bad stream", "x"), 10010),
        (Record::new("a&b", "x"), 10010),
        (Record::new("a=b", "x"), 10010),
        (Record::new("s", vec![b'x'; 5000]), 10009),
    ];
    for (record, code) in cases {
        let error = producer.send(record).wait().unwrap_err();
        assert_eq!(error.code(), code, "{error}");
    }
    producer.flush_blocking(Duration::from_secs(5)).unwrap();
    assert_eq!(producer.in_flight_count(), 0);
    assert_eq!(cluster.stats().batches, 0);
}

#[test]
fn bad_options_and_unreachable_managers_fail_build_quickly() {
    let error =
        Producer::builder().group_id("g").endpoints(["127.0.0.1:1"]).shards(0).build().unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { option: "shards", .. }), "{error}");
    let error = Producer::builder().endpoints(["127.0.0.1:1"]).build().unwrap_err();
    assert_eq!(error.code(), 10010, "{error}");
    let error = Producer::builder()
        .group_id("g")
        .endpoints(["127.0.0.1:1"])
        .batching_max_size(0)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { option: "batching_max_size", .. }));

    let cluster = cluster(1);
    cluster.manager().stop_listening();
    let started = Instant::now();
    let error = builder(&cluster, Transport::Epoll)
        .manager_request_timeout(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Discovery(_)), "{error}");
    assert!(error.to_string().contains("cannot reach the InLong Manager"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    cluster.manager().start_listening().unwrap();
    cluster.manager().set_nodes(&[]);
    let error = builder(&cluster, Transport::Epoll).build().unwrap_err();
    assert!(matches!(error, Error::NoEndpoints { .. }), "{error:?}");
    assert_eq!(error.to_string(), "service has no endpoints");
}

#[test]
fn async_send_flush_and_close_work_on_a_tokio_runtime() {
    let cluster = cluster(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // build() is callable from async code: the lookup runs on the producer's control thread.
        let producer = builder(&cluster, Transport::Auto).build().unwrap();
        let report = producer.send(Record::new("s", "hello")).await.unwrap();
        assert_eq!(report.retries, 0);
        for i in 0..1000 {
            drop(producer.send(Record::new("s", format!("{i}"))));
        }
        producer.flush(Duration::from_secs(5)).await.unwrap();
        assert_eq!(producer.in_flight_count(), 0);
        cluster.node(0).update_faults(|f| f.silent = true);
        let _pending = producer.send(Record::new("s", "stuck"));
        let started = Instant::now();
        let error = producer.flush(Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(error, Error::FlushTimeout { undelivered: 1 });
        assert!(started.elapsed() < Duration::from_secs(2));
        let error = producer.close(Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(error, Error::FlushTimeout { undelivered: 1 });
    });
    assert_eq!(cluster.stats().records, 1001);
}
