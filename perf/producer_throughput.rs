//! In-process end-to-end throughput of the producer against the local DataProxy.
//!
//! One application thread sends N records as fast as `send_blocking` lets it (rotating realistic
//! payloads over K streams), then flushes; the local node runs in the same process on its own
//! thread in count-only mode (or full decode with `--full`). Reports records/s, MB/s, and the CPU
//! time per record of the whole process and of the producer alone (process minus server threads).
//!
//! ```text
//! cargo run --release --example producer_throughput -- [--records N] [--size BYTES]
//!     [--streams K] [--shards S] [--transport auto|io_uring|epoll] [--full] [--no-compress]
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use inlong_dataproxy::{Producer, Record, StreamId, Transport};
use inlong_dataproxy_testkit::workload::{log_line, process_cpu_seconds, status_mb};
use inlong_dataproxy_testkit::{IngestMode, LocalCluster, NodeConfig};

struct Options {
    records: u64,
    size: usize,
    streams: usize,
    shards: usize,
    transport: Transport,
    full: bool,
    compress: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        records: 5_000_000,
        size: 100,
        streams: 1,
        shards: 2,
        transport: Transport::Auto,
        full: false,
        compress: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => o.records = value()?.parse().map_err(|e| format!("{e}"))?,
            "--size" => o.size = value()?.parse().map_err(|e| format!("{e}"))?,
            "--streams" => o.streams = value()?.parse().map_err(|e| format!("{e}"))?,
            "--shards" => o.shards = value()?.parse().map_err(|e| format!("{e}"))?,
            "--transport" => o.transport = value()?.parse().map_err(|e| format!("{e}"))?,
            "--full" => o.full = true,
            "--no-compress" => o.compress = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let mode = if o.full { IngestMode::Full } else { IngestMode::CountOnly };
    let cluster = LocalCluster::builder()
        .node_config(NodeConfig { ingest_mode: mode, dedup_window: 0, ..NodeConfig::default() })
        .start()
        .expect("local cluster");
    let producer = Producer::builder()
        .group_id("test_group")
        .manager_url(cluster.manager_url())
        .node_list_cache(false)
        .shards(o.shards)
        .transport(o.transport)
        .compression(o.compress)
        .build()
        .expect("producer");
    let payloads: Vec<Bytes> = (0..4096).map(|i| log_line(i, o.size)).collect();
    let streams: Vec<StreamId> =
        (0..o.streams).map(|i| StreamId::from(format!("stream-{i}"))).collect();

    let (cpu0, server0) = process_cpu_seconds("self", "inlong-local");
    let started = Instant::now();
    for i in 0..o.records {
        let record = Record::new(
            streams[i as usize % streams.len()].clone(),
            payloads[i as usize % payloads.len()].clone(),
        );
        let delivery = producer.send_blocking(record, Duration::from_secs(30)).expect("send");
        drop(delivery);
    }
    producer.flush_blocking(Duration::from_secs(60)).expect("flush");
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, server1) = process_cpu_seconds("self", "inlong-local");
    let acked = cluster.stats().records;
    let total_cpu = cpu1 - cpu0;
    let producer_cpu = total_cpu - (server1 - server0);
    #[allow(clippy::cast_precision_loss)]
    let n = o.records as f64;
    println!(
        "records={} acked={acked} seconds={seconds:.3} records_per_sec={:.0} mb_per_sec={:.1} cpu_us_per_record={:.3} producer_cpu_us_per_record={:.3} max_rss_mb={:.1} transport={} size={} streams={} shards={} sink={mode:?}",
        o.records,
        n / seconds,
        n * o.size as f64 / seconds / 1e6,
        total_cpu / n * 1e6,
        producer_cpu / n * 1e6,
        status_mb("self", "VmHWM"),
        producer.transport(),
        o.size,
        o.streams,
        o.shards,
    );
    producer.close_blocking(Duration::from_secs(10)).expect("close");
    assert_eq!(acked, o.records, "every record reached the server");
}
