//! The producer's per-record paths, each next to a reference measured in the same run:
//!
//! - delivery completion: resolving one batch and reading its outcome from every record's
//!   future, against reading 50 values of a plain `Vec` (the floor of "touch 50 results");
//! - in-process end to end: `send` + `flush` of 100 000 records to a local DataProxy node in
//!   count-only mode, against encoding the same records into frames with the codec alone on one
//!   thread (no API, no I/O: what the producer adds on top of the codec is the difference).
//!
//! - the send path under contention: N application threads × M shards sending 100 000 records
//!   (16 streams, compression off, a count-only node) and flushing, for N in 1, 2, 4 and M in 1,
//!   2: how the per-record path (budget, shard routing, the shard's accumulator lock) scales
//!   with the senders.
//!
//! `cargo bench --bench producer`.

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inlong_dataproxy::completion::{BatchCompletion, BatchOutcome};
use inlong_dataproxy::protocol::{AddColumns, BatchBody, BatchHeader, FrameEncoder};
use inlong_dataproxy::{Producer, Record, StreamId};
use inlong_dataproxy_testkit::workload::log_line;
use inlong_dataproxy_testkit::{IngestMode, LocalCluster, NodeConfig};

fn completion(c: &mut Criterion) {
    let mut group = c.benchmark_group("completion_50_records");
    group.throughput(Throughput::Elements(50));
    let outcome = BatchOutcome {
        batch_id: 7,
        endpoint: "127.0.0.1:46801".parse().expect("a socket address"),
        retries: 0,
        opened_at: Instant::now(),
        acked_at: Instant::now(),
    };
    let mut cx = Context::from_waker(Waker::noop());
    group.bench_function("resolve + 50 polls", |b| {
        b.iter(|| {
            let completion = BatchCompletion::new();
            let futures: [std::sync::Arc<BatchCompletion>; 50] =
                std::array::from_fn(|_| completion.clone());
            completion.resolve(Ok(outcome));
            let mut acked = 0u32;
            for future in &futures {
                if let Poll::Ready(Ok(o)) = future.poll_outcome(&mut cx) {
                    acked += u32::from(o.report(1).retries == 0);
                }
            }
            black_box(acked)
        });
    });
    let values: Vec<u64> = (0..50).collect();
    group.bench_function("reference: read 50 values", |b| {
        b.iter(|| black_box(&values).iter().map(|v| black_box(*v)).sum::<u64>());
    });
    group.finish();
}

const RECORDS: u64 = 100_000;

/// A local node that trusts each batch's `cnt` and counts no duplicates: the cheapest sink.
fn count_only_cluster() -> LocalCluster {
    LocalCluster::builder()
        .node_config(NodeConfig {
            ingest_mode: IngestMode::CountOnly,
            dedup_window: 0,
            ..NodeConfig::default()
        })
        .start()
        .expect("local cluster")
}

fn end_to_end(c: &mut Criterion) {
    let cluster = count_only_cluster();
    let producer = Producer::builder()
        .group_id("test_group")
        .manager_url(cluster.manager_url())
        .node_list_cache(false)
        .build()
        .expect("producer");
    let payloads: Vec<Bytes> = (0..4096).map(|i| log_line(i, 100)).collect();
    let stream = StreamId::from("stream-0");

    let mut group = c.benchmark_group("end_to_end_100B");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    // What the producer sent, for the check at the end (nothing when a filter skips the cell).
    let sent = std::cell::Cell::new(0u64);
    group.bench_function("producer: send + flush, local node", |b| {
        b.iter(|| {
            sent.set(sent.get() + RECORDS);
            for i in 0..RECORDS {
                let payload = payloads[i as usize % payloads.len()].clone();
                let delivery = producer
                    .send_blocking(Record::new(stream.clone(), payload), Duration::from_secs(30))
                    .expect("send");
                drop(delivery);
            }
            producer.flush_blocking(Duration::from_secs(60)).expect("flush");
        });
    });
    let mut encoder = FrameEncoder::new();
    let mut body = BatchBody::new();
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("reference: codec alone, one thread", |b| {
        b.iter(|| {
            for batch in 0..RECORDS / 50 {
                body.clear();
                for r in 0..50 {
                    body.push(&payloads[((batch * 50 + r) % 4096) as usize]).expect("push");
                }
                out.clear();
                let header = BatchHeader {
                    group_id: "test_group",
                    stream_id: "stream-0",
                    dt_ms: 1_700_000_000_000,
                    mid: "5f3a9c-281474976710657",
                    wid: 0,
                    uniq: 1,
                };
                encoder
                    .encode(&header, &body, &AddColumns::default(), usize::MAX, &mut out)
                    .expect("encode");
                black_box(&out);
            }
        });
    });
    group.finish();
    producer.close_blocking(Duration::from_secs(10)).expect("close");
    assert!(cluster.stats().records >= sent.get(), "the node counted what was sent");
}

fn contention(c: &mut Criterion) {
    let cluster = count_only_cluster();
    let payloads: Vec<Bytes> = (0..4096).map(|i| log_line(i, 100)).collect();
    let streams: Vec<StreamId> = (0..16).map(|i| StreamId::from(format!("stream-{i}"))).collect();
    let sent = std::cell::Cell::new(0u64);
    let mut group = c.benchmark_group("send_contention_100B");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for shards in [1, 2] {
        let producer = Producer::builder()
            .group_id("test_group")
            .manager_url(cluster.manager_url())
            .node_list_cache(false)
            .shards(shards)
            .compression(false)
            .build()
            .expect("producer");
        for threads in [1u64, 2, 4] {
            let name = format!("{threads} thread(s) x {shards} shard(s)");
            group.bench_function(name, |b| {
                b.iter(|| {
                    sent.set(sent.get() + RECORDS);
                    std::thread::scope(|scope| {
                        for thread in 0..threads {
                            let (producer, payloads, streams) = (&producer, &payloads, &streams);
                            scope.spawn(move || {
                                // Every `threads`-th record: together, the same records.
                                let mine = (thread..RECORDS).step_by(threads as usize);
                                for i in mine {
                                    let i = i as usize;
                                    let record = Record::new(
                                        streams[i % streams.len()].clone(),
                                        payloads[i % payloads.len()].clone(),
                                    );
                                    let delivery = producer
                                        .send_blocking(record, Duration::from_secs(30))
                                        .expect("send");
                                    drop(delivery);
                                }
                            });
                        }
                    });
                    producer.flush_blocking(Duration::from_secs(60)).expect("flush");
                });
            });
        }
        producer.close_blocking(Duration::from_secs(10)).expect("close");
    }
    group.finish();
    assert!(cluster.stats().records >= sent.get(), "the node counted what was sent");
}

criterion_group!(benches, completion, end_to_end, contention);
criterion_main!(benches);
