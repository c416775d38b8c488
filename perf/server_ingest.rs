//! How fast one local DataProxy node ingests: decompress, validate, count and ack.
//!
//! Pre-encodes realistic msgType 5 frames (the SDK's own encoder: 50 records per batch, Snappy),
//! then pushes them through C pipelined connections and counts the acks. The node runs in-process
//! on its own single-thread runtime (or is given with `--addr`), and the CPU time of the server
//! threads is read from `/proc`, so the result is the node's cost, not the load generator's.
//!
//! ```text
//! cargo run --release --example server_ingest -- [--records N] [--size BYTES] [--conns C]
//!     [--batch B] [--count-only] [--addr HOST:PORT [--pid SERVER_PID]]
//! ```
//!
//! Against `inlong-dataproxy serve`, pass the node address and the server's PID, e.g.
//! ```text
//! target/release/inlong-dataproxy serve --port 46801 & sleep 1
//! target/release/examples/server_ingest --addr 127.0.0.1:46801 --pid $!
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inlong_dataproxy::protocol::{
    decode_reply, split_frame, AddColumns, BatchBody, BatchHeader, FrameEncoder, Reply,
    MAX_REPLY_FRAME_LEN,
};
use inlong_dataproxy_testkit::workload::{log_line, process_cpu_seconds};
use inlong_dataproxy_testkit::{IngestMode, LocalCluster, NodeConfig};

struct Options {
    records: u64,
    size: usize,
    conns: usize,
    batch: usize,
    count_only: bool,
    addr: Option<SocketAddr>,
    pid: Option<u32>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        records: 4_000_000,
        size: 100,
        conns: 2,
        batch: 50,
        count_only: false,
        addr: None,
        pid: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => options.records = value()?.parse().map_err(|e| format!("{e}"))?,
            "--size" => options.size = value()?.parse().map_err(|e| format!("{e}"))?,
            "--conns" => options.conns = value()?.parse().map_err(|e| format!("{e}"))?,
            "--batch" => options.batch = value()?.parse().map_err(|e| format!("{e}"))?,
            "--addr" => options.addr = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--pid" => options.pid = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--count-only" => options.count_only = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let batches = options.records.div_ceil(options.batch as u64);
    eprintln!("encoding {batches} batches of {} x {} B records ...", options.batch, options.size);
    let mut encoder = FrameEncoder::new();
    let mut frames: Vec<Vec<Vec<u8>>> = vec![Vec::new(); options.conns];
    let mut body = BatchBody::new();
    let mut wire_bytes = 0usize;
    for b in 0..batches {
        body.clear();
        for r in 0..options.batch as u64 {
            body.push(&log_line(b * options.batch as u64 + r, options.size)).unwrap();
        }
        let mid = b.to_string();
        let header = BatchHeader {
            group_id: "test_group",
            stream_id: "test_stream",
            dt_ms: 1_700_000_000_000,
            mid: &mid,
            wid: 0,
            uniq: 1,
        };
        let mut frame = Vec::new();
        encoder.encode(&header, &body, &AddColumns::default(), usize::MAX, &mut frame).unwrap();
        wire_bytes += frame.len();
        frames[(b % options.conns as u64) as usize].push(frame);
    }

    let mode = if options.count_only { IngestMode::CountOnly } else { IngestMode::Full };
    let cluster = match options.addr {
        Some(_) => None,
        None => Some(
            LocalCluster::builder()
                .node_config(NodeConfig { ingest_mode: mode, ..NodeConfig::default() })
                .start()
                .expect("start the local node"),
        ),
    };
    let addr = options.addr.unwrap_or_else(|| cluster.as_ref().unwrap().node(0).addr());
    let cpu_before = server_cpu(options.pid);
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = frames
        .into_iter()
        .map(|frames| {
            let acked = acked.clone();
            std::thread::spawn(move || blast(addr, &frames, &acked))
        })
        .collect();
    for thread in threads {
        thread.join().expect("load thread");
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = server_cpu(options.pid) - cpu_before;
    let records = acked.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let (records_f, wire_f) = (records as f64, wire_bytes as f64);
    println!(
        "records={records} seconds={seconds:.3} records_per_sec={:.0} wire_MB_per_sec={:.1} server_cpu_s={cpu:.3} records_per_server_cpu_sec={:.0} mode={mode:?}",
        records_f / seconds,
        wire_f / seconds / 1e6,
        if cpu > 0.0 { records_f / cpu } else { f64::NAN },
    );
    if let Some(cluster) = cluster {
        let stats = cluster.stats();
        assert_eq!(stats.records, records, "the node counted every acked record");
        assert_eq!(stats.errors, 0);
    }
}

/// Writes `frames` on one connection while a reader counts acks; at most 512 batches in flight.
fn blast(addr: SocketAddr, frames: &[Vec<u8>], acked: &AtomicU64) {
    const WINDOW: usize = 512;
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let total = frames.len();
    std::thread::scope(|scope| {
        let in_flight_reader = in_flight.clone();
        scope.spawn(move || {
            let mut buf = Vec::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 1 << 18];
            let mut replies = 0;
            while replies < total {
                let n = reader.read(&mut chunk).expect("read acks");
                assert!(n > 0, "the node closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                let mut done = 0;
                while let Some(len) = split_frame(&buf[at..], MAX_REPLY_FRAME_LEN).unwrap() {
                    match decode_reply(&buf[at..at + len]).unwrap() {
                        Reply::Batch(reply) => {
                            assert!(reply.is_success(), "error {}", reply.err_code);
                            let cnt = reply
                                .attrs
                                .split(|&b| b == b'&')
                                .find_map(|kv| kv.strip_prefix(b"cnt="))
                                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                                .unwrap_or(0);
                            acked.fetch_add(cnt, Ordering::Relaxed);
                        }
                        Reply::Heartbeat => {}
                    }
                    at += len;
                    done += 1;
                }
                buf.drain(..at);
                replies += done;
                let (count, ready) = &*in_flight_reader;
                *count.lock().unwrap() -= done;
                ready.notify_one();
            }
        });
        let mut writer = &stream;
        let (count, ready) = &*in_flight;
        for chunk in frames.chunks(32) {
            let mut guard = count.lock().unwrap();
            while *guard + chunk.len() > WINDOW {
                guard = ready.wait_timeout(guard, Duration::from_secs(10)).unwrap().0;
            }
            *guard += chunk.len();
            drop(guard);
            for frame in chunk {
                writer.write_all(frame).expect("write batch");
            }
        }
    });
}

/// CPU seconds used so far by the server: every live thread of process `pid`, or the in-process
/// server threads (named `inlong-local-server`).
fn server_cpu(pid: Option<u32>) -> f64 {
    match pid {
        Some(pid) => process_cpu_seconds(&pid.to_string(), "").1,
        None => process_cpu_seconds("self", "inlong-local").1,
    }
}
