//! Soak: a steady load with random faults for minutes, checking that nothing grows and nothing
//! gets stuck.
//!
//! ```text
//! cargo run --release --example soak -- [--minutes 10] [--rate 1500000] [--size 100]
//! ```
//!
//! Two local DataProxy nodes run in-process. Every 5 s one fault is drawn: a node killed for 2 s
//! then restarted, 20 batches answered with code 114, acks delayed by 200 ms for 2 s, the
//! connections of a node dropped, or nothing. RSS and the in-flight table are sampled every 10 s.
//! At the end: every record sent is acked or failed (none stuck), the server saw at least every
//! acked record, RSS after the first minute stayed within 5 %, and the in-flight table did not grow.
//! The exit status is non-zero when a check fails.

use std::time::{Duration, Instant};

use bytes::Bytes;
use inlong_dataproxy::server::{ErrorInjection, IngestMode, LocalCluster, NodeConfig};
use inlong_dataproxy::{Producer, Record, StreamId};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn main() {
    let minutes = arg("--minutes", 10.0);
    let rate = arg("--rate", 1_500_000.0) as u64;
    let size = arg("--size", 100.0) as usize;
    let cluster = LocalCluster::builder()
        .nodes(2)
        .threads(1)
        .node_config(NodeConfig {
            ingest_mode: IngestMode::CountOnly,
            dedup_window: 0,
            ..NodeConfig::default()
        })
        .start()
        .expect("local cluster");
    let producer = Producer::builder()
        .group_id("test_group")
        .manager_url(cluster.manager_url())
        .node_list_cache(false)
        .shards(2)
        .send_timeout(Duration::from_secs(5))
        .build()
        .expect("producer");
    let payloads: Vec<Bytes> = (0..4096)
        .map(|i: u64| {
            let mut line =
                format!("soak record {i:08} {:016x} ", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .into_bytes();
            line.resize(size, b'.');
            Bytes::from(line)
        })
        .collect();
    let streams: Vec<StreamId> = (0..8).map(|i| StreamId::from(format!("soak-{i}"))).collect();

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut next_fault = started + Duration::from_secs(5);
    let mut undo: Option<(Instant, Box<dyn FnOnce()>)> = None;
    let mut next_sample = started + Duration::from_secs(10);
    let mut samples: Vec<(f64, f64, u64)> = Vec::new();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut sent: u64 = 0;
    let mut faults = 0;
    while Instant::now() < end {
        // Pace: send what is due by now, in chunks.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let i = sent as usize;
            let record = Record::new(
                streams[i % streams.len()].clone(),
                payloads[i % payloads.len()].clone(),
            );
            if producer.send_blocking(record, Duration::from_secs(30)).is_err() {
                eprintln!("send_blocking gave up: the producer is stuck");
                std::process::exit(1);
            }
            sent += 1;
        }
        let now = Instant::now();
        if let Some((at, _)) = &undo {
            if *at <= now {
                if let Some((_, revert)) = undo.take() {
                    revert();
                }
            }
        }
        if now >= next_fault && undo.is_none() {
            next_fault = now + Duration::from_secs(5);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let node = cluster.node((rng % 2) as usize);
            faults += 1;
            match (rng >> 8) % 5 {
                0 => {
                    node.stop();
                    undo = Some((
                        now + Duration::from_secs(2),
                        Box::new(move || drop(node.restart())),
                    ));
                }
                1 => node.update_faults(|f| {
                    f.errors = Some(ErrorInjection::Next { code: 114, count: 20 })
                }),
                2 => {
                    node.update_faults(|f| f.ack_delay = Duration::from_millis(200));
                    undo = Some((
                        now + Duration::from_secs(2),
                        Box::new(move || node.update_faults(|f| f.ack_delay = Duration::ZERO)),
                    ));
                }
                3 => node.kill_connections(),
                _ => faults -= 1,
            }
        }
        if now >= next_sample {
            next_sample = now + Duration::from_secs(10);
            let stats = producer.stats();
            samples.push((started.elapsed().as_secs_f64(), rss_mb(), stats.inflight_batches));
            eprintln!(
                "t={:>4.0}s sent={sent} acked={} failed={} in_flight_batches={} rss_mb={:.1} faults={faults}",
                started.elapsed().as_secs_f64(),
                stats.records_acked,
                stats.records_failed,
                stats.inflight_batches,
                rss_mb()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some((_, revert)) = undo.take() {
        revert();
    }
    let flushed = producer.flush_blocking(Duration::from_secs(60));
    let stats = producer.stats();
    let server = cluster.stats().records;
    let steady: Vec<&(f64, f64, u64)> = samples.iter().filter(|(t, _, _)| *t >= 60.0).collect();
    let (low, high) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), (_, rss, _)| (lo.min(*rss), hi.max(*rss)));
    let rss_growth = if steady.is_empty() { 0.0 } else { (high - low) / low };
    let max_inflight = samples.iter().map(|(_, _, n)| *n).max().unwrap_or(0);
    println!(
        "soak minutes={minutes} rate={rate} sent={sent} acked={} failed={} server_records={server} faults={faults} rss_mb_min={low:.1} rss_mb_max={high:.1} rss_spread={:.1}% max_inflight_batches={max_inflight} flushed={}",
        stats.records_acked,
        stats.records_failed,
        rss_growth * 100.0,
        flushed.is_ok()
    );
    // How every record ended, by Go code (from the producer's metrics).
    let metrics = inlong_dataproxy::MetricsRegistry::default_registry().encode_text();
    for line in metrics.lines().filter(|l| {
        l.starts_with("data_proxy_msg_count") || l.starts_with("data_proxy_error_count")
    }) {
        println!("{line}");
    }
    let mut ok = true;
    if flushed.is_err() || stats.records_acked + stats.records_failed != sent {
        eprintln!("FAIL: deliveries stuck or lost");
        ok = false;
    }
    if server < stats.records_acked {
        eprintln!("FAIL: the server saw fewer records than were acked");
        ok = false;
    }
    if rss_growth > 0.05 {
        eprintln!("FAIL: RSS spread {:.1}% after the first minute", rss_growth * 100.0);
        ok = false;
    }
    producer.close_blocking(Duration::from_secs(10)).ok();
    std::process::exit(i32::from(!ok));
}
