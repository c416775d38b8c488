//! The ideal pipeline: what one thread can push to a DataProxy node with no SDK around it.
//!
//! One thread, one compio runtime (io_uring or epoll), one connection. A writer task fills
//! batches of 50 rotating realistic records (a `memcpy` each), encodes them with the SDK's
//! `FrameEncoder` (Snappy for bodies over 256 B unless `--no-compress`), coalesces up to 16
//! frames per write and keeps at most 512 batches unacknowledged; a reader task on the same
//! thread counts the replies. No `send` API, no futures per record, no accumulator lock, no
//! retries, no timers: the upper bound the producer is measured against in `perf_matrix`.
//!
//! ```text
//! cargo run --release --example ideal_pipeline -- --addr HOST:PORT [--size BYTES]
//!     [--duration SECS] [--transport io_uring|epoll] [--no-compress]
//! ```
//!
//! Prints one JSON line: `records, seconds, records_per_sec, mb_per_sec, cpu_us_per_record,
//! max_rss_mb, transport`.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use compio::buf::BufResult;
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use inlong_dataproxy::protocol::{
    decode_reply, split_frame, AddColumns, BatchBody, BatchHeader, FrameEncoder, Reply,
    MAX_REPLY_FRAME_LEN,
};
use inlong_dataproxy_testkit::workload::{log_line, process_cpu_seconds, status_mb};

/// Records per batch (the producer's default `batching_max_messages`).
const BATCH: usize = 50;
/// Frames coalesced into one write.
const FRAMES_PER_WRITE: usize = 16;
/// Batches sent and not yet answered, at most.
const WINDOW: u64 = 512;

struct Options {
    addr: SocketAddr,
    size: usize,
    duration: Duration,
    epoll: bool,
    compress: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut addr = None;
    let mut o = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        size: 100,
        duration: Duration::from_secs(3),
        epoll: false,
        compress: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--size" => o.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--duration" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--duration: {e}"))?;
                o.duration = Duration::from_secs_f64(secs);
            }
            "--transport" => match value()?.as_str() {
                "io_uring" => o.epoll = false,
                "epoll" => o.epoll = true,
                other => return Err(format!("--transport: {other:?} is not io_uring or epoll")),
            },
            "--no-compress" => o.compress = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    o.addr = addr.ok_or("--addr is required")?;
    if o.size == 0 {
        return Err("--size must be at least 1".to_owned());
    }
    Ok(o)
}

/// Acknowledged batches, and the writer waiting for room in the window.
#[derive(Default)]
struct Acks {
    batches: Cell<u64>,
    waiter: RefCell<Option<Waker>>,
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(256);
    proactor.driver_type(if o.epoll { DriverType::Poll } else { DriverType::IoUring });
    let runtime = match compio::runtime::Runtime::builder().with_proactor(proactor).build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: no runtime: {error}");
            std::process::exit(1);
        }
    };
    let transport = match runtime.driver_type() {
        DriverType::IoUring => "io_uring",
        _ => "epoll",
    };
    let result = runtime.block_on(run(&o));
    let (batches, seconds, cpu) = match result {
        Ok(done) => done,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let records = batches * BATCH as u64;
    // Counts are far below 2^52, where f64 stops being exact.
    #[allow(clippy::cast_precision_loss)]
    let n = records as f64;
    println!(
        "{{\"records\":{records},\"seconds\":{seconds:.3},\"records_per_sec\":{:.0},\"mb_per_sec\":{:.2},\"cpu_us_per_record\":{:.3},\"max_rss_mb\":{:.1},\"transport\":\"{transport}\"}}",
        n / seconds,
        n * o.size as f64 / seconds / 1e6,
        cpu / n.max(1.0) * 1e6,
        status_mb("self", "VmHWM"),
    );
}

/// Runs the pipeline for the duration; returns (acked batches, seconds, CPU seconds).
async fn run(o: &Options) -> Result<(u64, f64, f64), String> {
    let stream =
        TcpStream::connect(o.addr).await.map_err(|e| format!("connect {}: {e}", o.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read_half, mut write_half) = stream.into_split();
    let acks = Rc::new(Acks::default());
    let reader = compio::runtime::spawn(read_acks(read_half, acks.clone()));

    let payloads: Vec<bytes::Bytes> = (0..4096).map(|i| log_line(i, o.size)).collect();
    let mut encoder = FrameEncoder::new();
    encoder.set_compression(o.compress);
    let add_columns = AddColumns::default();
    let mut body = BatchBody::with_capacity(BATCH * (o.size + 4));
    let mut mid = String::new();
    let mut out = Vec::with_capacity(FRAMES_PER_WRITE * (BATCH * (o.size + 4) + 256));
    let (mut sent, mut next_payload) = (0u64, 0usize);

    let cpu_before = process_cpu_seconds("self", "").0;
    let started = Instant::now();
    let end = started + o.duration;
    while Instant::now() < end {
        out.clear();
        for _ in 0..FRAMES_PER_WRITE {
            body.clear();
            for _ in 0..BATCH {
                body.push(&payloads[next_payload]).map_err(|e| e.to_string())?;
                next_payload = (next_payload + 1) % payloads.len();
            }
            mid.clear();
            let _ = write!(mid, "{sent}");
            let header = BatchHeader {
                group_id: "test_group",
                stream_id: "stream-0",
                dt_ms: 1_700_000_000_000,
                mid: &mid,
                wid: 0,
                uniq: 1,
            };
            encoder
                .encode(&header, &body, &add_columns, usize::MAX, &mut out)
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        let BufResult(written, returned) = write_half.write_all(out).await;
        out = returned;
        written.map_err(|e| format!("write: {e}"))?;
        // Wait for room in the window.
        std::future::poll_fn(|cx| {
            if sent - acks.batches.get() + FRAMES_PER_WRITE as u64 <= WINDOW {
                Poll::Ready(())
            } else {
                *acks.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
    // Every batch sent is answered before the clock stops.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while acks.batches.get() < sent {
        if Instant::now() > wait_until {
            return Err(format!("only {} of {sent} batches answered", acks.batches.get()));
        }
        compio::time::sleep(Duration::from_micros(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds("self", "").0 - cpu_before;
    drop(reader);
    Ok((acks.batches.get(), seconds, cpu))
}

/// Counts successful replies; a failed one or a lost connection ends the process.
async fn read_acks(mut stream: TcpStream, acks: Rc<Acks>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk: Vec<u8> = Vec::with_capacity(1 << 18);
    loop {
        chunk.clear();
        let BufResult(result, returned) = stream.read(chunk).await;
        chunk = returned;
        match result {
            Ok(0) => fatal("the node closed the connection"),
            Ok(_) => {}
            Err(error) => fatal(&format!("read: {error}")),
        }
        buf.extend_from_slice(&chunk);
        let mut at = 0;
        loop {
            match split_frame(&buf[at..], MAX_REPLY_FRAME_LEN) {
                Ok(Some(len)) => {
                    match decode_reply(&buf[at..at + len]) {
                        Ok(Reply::Batch(reply)) if reply.is_success() => {
                            acks.batches.set(acks.batches.get() + 1);
                        }
                        Ok(Reply::Batch(reply)) => {
                            fatal(&format!("the node refused a batch: {}", reply.err_code));
                        }
                        Ok(Reply::Heartbeat) => {}
                        Err(error) => fatal(&format!("bad reply: {error}")),
                    }
                    at += len;
                }
                Ok(None) => break,
                Err(error) => fatal(&format!("bad reply frame: {error}")),
            }
        }
        buf.drain(..at);
        if let Some(waker) = acks.waiter.borrow_mut().take() {
            waker.wake();
        }
    }
}

fn fatal(why: &str) -> ! {
    eprintln!("error: {why}");
    std::process::exit(1);
}
