//! The codec's hot paths, on rotating realistic inputs (compressing one buffer in a loop overstates
//! Snappy by ~2.5x), each next to a reference measured in the same run:
//!
//! - per-record append into a batch body, against a bare `memcpy` of the same bytes;
//! - encoding a 50-record batch with and without Snappy, against `snap::raw` alone on the same
//!   body (the encoder's own cost is the difference);
//! - decoding a success reply.
//!
//! `cargo bench --bench codec`; the ratios to print are in the group names' pairs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use inlong_dataproxy::protocol::{
    decode_reply, split_frame, AddColumns, BatchBody, BatchHeader, FrameEncoder,
};
use inlong_dataproxy_testkit::workload::log_line;

/// 4096 distinct log-like lines of `size` bytes.
fn payloads(size: usize) -> Vec<Vec<u8>> {
    (0..4096u64).map(|i| log_line(i, size).to_vec()).collect()
}

const HEADER: BatchHeader<'static> = BatchHeader {
    group_id: "test_group",
    stream_id: "test_stream",
    dt_ms: 1_700_000_000_000,
    mid: "5f3a9c-281474976710657",
    wid: 0,
    uniq: 1,
};

fn append(c: &mut Criterion) {
    let records = payloads(100);
    let mut group = c.benchmark_group("append_100B");
    group.throughput(Throughput::Elements(50));
    group.bench_function("BatchBody::push x50", |b| {
        let mut next = 0usize;
        let mut body = BatchBody::with_capacity(8192);
        b.iter(|| {
            body.clear();
            for _ in 0..50 {
                body.push(black_box(&records[next % records.len()])).unwrap();
                next += 1;
            }
            black_box(body.len())
        });
    });
    group.bench_function("reference: memcpy x50", |b| {
        let mut next = 0usize;
        let mut out: Vec<u8> = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            for _ in 0..50 {
                out.extend_from_slice(black_box(&records[next % records.len()]));
                next += 1;
            }
            black_box(out.len())
        });
    });
    group.finish();
}

/// Sealed bodies of 50 records, rotating through the payloads.
fn bodies(size: usize) -> Vec<BatchBody> {
    let records = payloads(size);
    (0..64)
        .map(|batch| {
            let mut body = BatchBody::new();
            for r in 0..50 {
                body.push(&records[(batch * 50 + r) % records.len()]).unwrap();
            }
            body
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    for size in [100usize, 1024] {
        let bodies = bodies(size);
        let mut group = c.benchmark_group(format!("encode_50x{size}B"));
        group.throughput(Throughput::Bytes(bodies[0].len() as u64));
        for compression in [true, false] {
            let name =
                if compression { "FrameEncoder (snappy)" } else { "FrameEncoder (no compression)" };
            group.bench_function(name, |b| {
                let mut encoder = FrameEncoder::new();
                encoder.set_compression(compression);
                let cols = AddColumns::default();
                let mut out = Vec::with_capacity(1 << 20);
                let mut next = 0usize;
                b.iter_batched_ref(
                    || {
                        next += 1;
                        &bodies[next % bodies.len()]
                    },
                    |body| {
                        out.clear();
                        encoder.encode(&HEADER, body, &cols, usize::MAX, &mut out).unwrap();
                        black_box(out.len())
                    },
                    BatchSize::SmallInput,
                );
            });
        }
        group.bench_function("reference: snap::raw alone", |b| {
            let mut snappy = snap::raw::Encoder::new();
            let mut out = vec![0u8; snap::raw::max_compress_len(bodies[0].len() * 2)];
            let mut next = 0usize;
            b.iter(|| {
                next += 1;
                let body = &bodies[next % bodies.len()];
                black_box(snappy.compress(body.entries(), &mut out).unwrap())
            });
        });
        group.finish();
    }
}

fn reply(c: &mut Criterion) {
    let attrs = "dpIp=10.0.0.1&rt=1700000000123&rtms=1700000000123&groupId=test_group&streamId=test_stream&dt=1700000000000&mid=5f3a9c-281474976710657&sid=5f3a9c-281474976710657&wid=0&cnt=50";
    let mut frame = Vec::new();
    frame.extend_from_slice(&((10 + attrs.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&[5, 0, 0, 0, 1, b'2']);
    frame.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
    frame.extend_from_slice(attrs.as_bytes());
    c.bench_function("decode_success_reply", |b| {
        b.iter(|| {
            let len = split_frame(black_box(&frame), 65_536).unwrap().unwrap();
            black_box(decode_reply(&frame[..len]).unwrap())
        });
    });
}

criterion_group!(benches, append, encode, reply);
criterion_main!(benches);
