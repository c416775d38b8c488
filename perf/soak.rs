//! Soak: a steady load with random faults for minutes, checking that nothing grows and nothing
//! gets stuck.
//!
//! ```text
//! cargo run --release --example soak -- [--minutes 10] [--rate 1500000] [--size 100] [--trace-large]
//! ```
//!
//! The two local DataProxy nodes run in a separate process, `inlong-dataproxy serve --nodes 2
//! --count-only --control` (built first with `cargo build --bin inlong-dataproxy`, same profile as
//! this example), so the RSS checked here is the producer's alone. Every 5 s one fault is drawn
//! and sent to that process as a `--control` command: a node stopped for 2 s then restarted, 20
//! batches answered with code 114, acks delayed by 200 ms for 2 s, the connections of a node
//! dropped, both nodes stopped for 2 s, or nothing. The producer's RSS, the server's RSS and the in-flight table are sampled
//! every 10 s. At the end: every record sent is acked or failed (none stuck), the server saw at
//! least every acked record, the producer's RSS after the first minute stayed within 5 %, the
//! in-flight table did not grow, and the server took every fault command. The first minute is
//! a warm-up that goes through every fault (both nodes down included) in a fixed order; the
//! live heap (a counting allocator) is reported beside the RSS, with its split by allocation
//! size (which buffers a growth comes from). `--trace-large` records the backtrace of every
//! allocation of 32 KiB or more after the warm-up, `--trace-small` one allocation of 64 to 511
//! bytes in 4 999 (the per-batch ones); both are printed at the end. The exit status is
//! non-zero when a check fails.
//!
//! The server reads its commands from this process's stdin pipe, so it shuts down when this
//! process ends on any path (the pipe closes); dropping [`ServerProcess`] also kills it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use inlong_dataproxy::{Producer, Record, StreamId};
use inlong_dataproxy_testkit::workload::status_mb;

/// Heap bytes this process holds (allocated and not yet freed), kept by [`CountingAlloc`].
static HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The same, by allocation size: entry `k` counts allocations of `2^(k-1)` to `2^k - 1` bytes.
/// Printed with each sample, it tells which buffers a growth comes from.
static HEAP_BY_SIZE: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
/// Allocations made so far, by the same size classes: their rate is the allocator churn that
/// fragments its arenas (the hot path should make none per record, and few per batch).
static ALLOCS_BY_SIZE: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

/// The [`HEAP_BY_SIZE`] entry of an allocation of `size` bytes.
fn size_class(size: usize) -> usize {
    (usize::BITS - size.leading_zeros()) as usize
}

/// Set after the warm-up with `--trace-large`: allocations of [`TRACE_MIN`] bytes or more
/// record their backtrace, printed at the end (resolving symbols takes tens of MB, which would
/// show in the RSS checked here). Release builds carry line tables (`Cargo.toml`).
static TRACE_LARGE: AtomicBool = AtomicBool::new(false);
/// The smallest allocation `--trace-large` records.
const TRACE_MIN: usize = 32 << 10;
/// What `--trace-large` recorded: when, how many bytes, from where.
static TRACES: Mutex<Vec<(Instant, usize, Backtrace)>> = Mutex::new(Vec::new());

thread_local! {
    /// True while this thread records a backtrace, whose own allocations are not traced.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// With `--trace-small`, one allocation of 64 to 511 bytes in [`SMALL_SAMPLE`] is recorded too
/// (during the whole run): where the per-batch allocations come from.
static TRACE_SMALL: AtomicBool = AtomicBool::new(false);
/// Small allocations seen, for sampling.
static SMALL_SEEN: AtomicUsize = AtomicUsize::new(0);
/// One small allocation in this many is recorded by `--trace-small`.
const SMALL_SAMPLE: usize = 4999;

/// Records where an allocation of `size` bytes comes from, when tracing is on.
fn trace(size: usize) {
    let small = (64..512).contains(&size)
        && TRACE_SMALL.load(Ordering::Relaxed)
        && SMALL_SEEN.fetch_add(1, Ordering::Relaxed) % SMALL_SAMPLE == 0;
    if !small && (size < TRACE_MIN || !TRACE_LARGE.load(Ordering::Relaxed)) {
        return;
    }
    let _ = TRACING.try_with(|tracing| {
        if tracing.replace(true) {
            return;
        }
        let backtrace = Backtrace::force_capture();
        if let Ok(mut traces) = TRACES.lock() {
            traces.push((Instant::now(), size, backtrace));
        }
        tracing.set(false);
    });
}

/// Prints the allocations `--trace-large` recorded, with the frames from this crate.
fn print_traces(started: Instant) {
    TRACE_LARGE.store(false, Ordering::Relaxed);
    let Ok(traces) = TRACES.lock() else { return };
    eprintln!("{} large allocation(s) after the warm-up", traces.len());
    for (at, size, backtrace) in traces.iter() {
        let text = backtrace.to_string();
        let ours: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.contains("inlong_dataproxy::") || l.contains("compio") || l.contains("std::")
            })
            .take(8)
            .collect();
        let at = at.duration_since(started).as_secs_f64();
        eprintln!("t={at:.0}s {size} bytes: {}", ours.join(" "));
    }
}

fn count(size: usize, delta: isize) {
    if delta > 0 {
        HEAP_BYTES.fetch_add(size, Ordering::Relaxed);
        HEAP_BY_SIZE[size_class(size)].fetch_add(size, Ordering::Relaxed);
        ALLOCS_BY_SIZE[size_class(size)].fetch_add(1, Ordering::Relaxed);
    } else {
        HEAP_BYTES.fetch_sub(size, Ordering::Relaxed);
        HEAP_BY_SIZE[size_class(size)].fetch_sub(size, Ordering::Relaxed);
    }
}

/// The system allocator plus a count of live heap bytes, so the soak can tell memory the
/// producer holds from memory the allocator keeps mapped (RSS) after a burst.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counter is only arithmetic on the sizes the caller passes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size(), 1);
            trace(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (through `alloc` or `realloc`).
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size, 1);
            count(layout.size(), -1);
            trace(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Live heap bytes in MB.
fn heap_mb() -> f64 {
    // Far below 2^52 bytes.
    #[allow(clippy::cast_precision_loss)]
    let bytes = HEAP_BYTES.load(Ordering::Relaxed) as f64;
    bytes / (1024.0 * 1024.0)
}

/// The live heap by allocation size, the classes holding over 512 KiB: `<2^13:27.9` is 27.9 MB
/// in allocations of 4 to 8 KiB.
fn heap_by_size() -> String {
    let mut out = String::new();
    for (class, bytes) in HEAP_BY_SIZE.iter().enumerate() {
        let bytes = bytes.load(Ordering::Relaxed);
        if bytes > 512 << 10 {
            // Far below 2^52 bytes.
            #[allow(clippy::cast_precision_loss)]
            let mb = bytes as f64 / (1024.0 * 1024.0);
            out.push_str(&format!(" <2^{class}:{mb:.1}"));
        }
    }
    out
}

/// Allocations per second since `last` (updated to now), by size class, the classes with over
/// 100/s: `<2^8:4100` is 4 100 allocations/s of 128 to 255 bytes.
fn alloc_rates(last: &mut [usize; 64], seconds: f64) -> String {
    let mut out = String::new();
    for (class, (count, last)) in ALLOCS_BY_SIZE.iter().zip(last.iter_mut()).enumerate() {
        let count = count.load(Ordering::Relaxed);
        // Counts far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let rate = (count - *last) as f64 / seconds;
        *last = count;
        if rate > 100.0 {
            out.push_str(&format!(" <2^{class}:{rate:.0}"));
        }
    }
    out
}

/// The warm-up before the flatness checks start.
const WARM_UP: Duration = Duration::from_secs(60);
/// Fault kinds of the warm-up, in order: both nodes down, a node stopped, slow acks, dropped
/// connections, code 114, and again.
const WARM_UP_FAULTS: [u64; 10] = [4, 0, 2, 3, 1, 4, 0, 2, 3, 1];

/// How long the server may take to answer a command or to start.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds `inlong-dataproxy` with this example's profile and returns its path, which is next to
/// the example's directory (`target/<profile>/inlong-dataproxy`).
fn build_server() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this example: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/examples", exe.display()))?;
    let server = profile_dir.join("inlong-dataproxy");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build.args(["build", "--quiet", "--bin", "inlong-dataproxy", "--manifest-path"]);
    build.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let how = "build it with `cargo build --release --bin inlong-dataproxy`";
    match build.status() {
        Ok(status) if status.success() => {}
        Ok(status) => return Err(format!("building the server failed ({status}); {how}")),
        Err(e) if server.exists() => {
            eprintln!("cannot run {cargo:?} ({e}); using the existing {}", server.display());
        }
        Err(e) => return Err(format!("cannot run {cargo:?} ({e}); {how}")),
    }
    if !server.exists() {
        return Err(format!("{} is missing; {how}", server.display()));
    }
    Ok(server)
}

/// The `serve --control` child: commands go to its stdin, answers come from its stdout.
struct ServerProcess {
    child: Child,
    /// `None` once closed: the end of stdin tells the server to print its totals and exit.
    stdin: Option<ChildStdin>,
    /// stdout lines, read on a thread so every wait has a deadline.
    lines: mpsc::Receiver<String>,
    manager_url: String,
}

impl ServerProcess {
    fn start() -> Result<ServerProcess, String> {
        let path = build_server()?;
        let mut child = Command::new(&path)
            .args(["serve", "--nodes", "2", "--count-only", "--control"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ServerProcess { child, stdin, lines, manager_url: String::new() };
        server.manager_url = server.next_line("the Manager URL")?;
        Ok(server)
    }

    fn next_line(&self, what: &str) -> Result<String, String> {
        self.lines.recv_timeout(ANSWER_TIMEOUT).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => format!("the server did not send {what} in time"),
            mpsc::RecvTimeoutError::Disconnected => {
                format!("the server exited before sending {what}")
            }
        })
    }

    /// Sends one command line; `Ok` with the answer line unless it was an `error:`.
    fn command(&mut self, line: &str) -> Result<String, String> {
        let stdin = self.stdin.as_mut().ok_or("the server's stdin is closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot send {line:?}: {e}"))?;
        let answer = self.next_line(&format!("an answer to {line:?}"))?;
        match answer.strip_prefix("error: ") {
            Some(why) => Err(format!("{line:?}: {why}")),
            None => Ok(answer),
        }
    }

    /// Closes stdin and returns the totals line the server prints before it exits.
    fn shut_down(&mut self) -> Result<serde_json::Value, String> {
        drop(self.stdin.take());
        let totals = self.next_line("its totals")?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the server exited with {status}"));
        }
        serde_json::from_str(&totals).map_err(|e| format!("bad totals {totals:?}: {e}"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already exited after `shut_down`; otherwise this is an early return or a panic.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Min and max of the samples taken after the first minute (the warm-up); zeros when none was.
fn steady_range(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let steady: Vec<f64> = samples.iter().filter(|s| s.at_secs >= 60.0).map(value).collect();
    if steady.is_empty() {
        return (0.0, 0.0);
    }
    steady.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

struct Sample {
    at_secs: f64,
    producer_rss_mb: f64,
    /// The anonymous part of the RSS (heap, stacks, rings); the rest is mostly the binary's
    /// pages, faulted in as code runs for the first time.
    producer_anon_mb: f64,
    producer_heap_mb: f64,
    server_rss_mb: f64,
    inflight_batches: u64,
}

/// Sends a fault to the server every 5 s until `end` (each timed fault ended 2 s later, on
/// time whatever the send loop is doing); returns the server and how many commands it refused.
fn drive_faults(
    mut server: ServerProcess,
    started: Instant,
    end: Instant,
    faults: &AtomicUsize,
) -> (ServerProcess, u64) {
    let mut refused = 0;
    let mut control = |server: &mut ServerProcess, line: &str| {
        if let Err(why) = server.command(line) {
            eprintln!("the server refused a fault command: {why}");
            refused += 1;
        }
    };
    // Seeded: every soak draws the same faults.
    let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
    let mut next_fault = started + Duration::from_secs(5);
    let mut drawn = 0usize;
    loop {
        let now = Instant::now();
        if next_fault >= end {
            break;
        }
        if now < next_fault {
            std::thread::sleep(next_fault - now);
            continue;
        }
        next_fault += Duration::from_secs(5);
        // The first minute is a warm-up that goes through every fault on both nodes, so memory
        // reaches the ceiling the worst of them needs (a full pending budget when both nodes
        // are down) before the flatness check starts; then faults are random.
        let (kind, node) = if now < started + WARM_UP {
            (WARM_UP_FAULTS[drawn % WARM_UP_FAULTS.len()], drawn as u64 % 2)
        } else {
            (rng.u64(0..6), rng.u64(0..2))
        };
        drawn += 1;
        let undo: Vec<String> = match kind {
            0 => {
                control(&mut server, &format!("stop {node}"));
                vec![format!("restart {node}")]
            }
            1 => {
                control(&mut server, &format!("errors {node} next 114 20"));
                Vec::new()
            }
            2 => {
                control(&mut server, &format!("ack-delay {node} 200"));
                vec![format!("ack-delay {node} 0")]
            }
            3 => {
                control(&mut server, &format!("kill-connections {node}"));
                Vec::new()
            }
            4 => {
                control(&mut server, "stop 0");
                control(&mut server, "stop 1");
                vec!["restart 0".to_owned(), "restart 1".to_owned()]
            }
            _ => continue,
        };
        faults.fetch_add(1, Ordering::Relaxed);
        if !undo.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
            for line in undo {
                control(&mut server, &line);
            }
        }
    }
    (server, refused)
}

fn main() {
    match run() {
        Ok(passed) => std::process::exit(i32::from(!passed)),
        Err(error) => {
            eprintln!("soak: {error}");
            std::process::exit(2);
        }
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
#[allow(clippy::too_many_lines)]
fn run() -> Result<bool, String> {
    let minutes = arg("--minutes", 10.0);
    let rate = arg("--rate", 1_500_000.0) as u64;
    let size = arg("--size", 100.0) as usize;
    let server = ServerProcess::start()?;
    let producer = Producer::builder()
        .group_id("test_group")
        .manager_url(server.manager_url.clone())
        .node_list_cache(false)
        .shards(2)
        .send_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("producer: {e}"))?;
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
    let server_pid = server.child.id().to_string();
    let faults = Arc::new(AtomicUsize::new(0));
    // Faults run on their own thread: the send loop below blocks whenever the producer's queue
    // is full (every node down), and a fault must still end on time then.
    let fault_thread = {
        let faults = faults.clone();
        std::thread::spawn(move || drive_faults(server, started, end, &faults))
    };
    let mut next_sample = started + Duration::from_secs(10);
    let mut last_sample = started;
    let mut last_allocs = [0usize; 64];
    let mut samples: Vec<Sample> = Vec::new();
    let mut sent: u64 = 0;
    let trace_large = std::env::args().any(|a| a == "--trace-large");
    let trace_small = std::env::args().any(|a| a == "--trace-small");
    TRACE_SMALL.store(trace_small, Ordering::Relaxed);
    while Instant::now() < end {
        if trace_large && started.elapsed() >= WARM_UP {
            TRACE_LARGE.store(true, Ordering::Relaxed);
        }
        // Pace: send what is due by now, in chunks.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let i = sent as usize;
            let record = Record::new(
                streams[i % streams.len()].clone(),
                payloads[i % payloads.len()].clone(),
            );
            if producer.send_blocking(record, Duration::from_secs(30)).is_err() {
                return Err("send_blocking gave up: the producer is stuck".to_owned());
            }
            sent += 1;
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample = now + Duration::from_secs(10);
            let stats = producer.stats();
            let sample = Sample {
                at_secs: started.elapsed().as_secs_f64(),
                producer_rss_mb: status_mb("self", "VmRSS"),
                producer_anon_mb: status_mb("self", "RssAnon"),
                producer_heap_mb: heap_mb(),
                server_rss_mb: status_mb(&server_pid, "VmRSS"),
                inflight_batches: stats.inflight_batches,
            };
            eprintln!(
                "t={:>4.0}s sent={sent} acked={} failed={} in_flight_batches={} rss_mb={:.1} anon_mb={:.1} heap_mb={:.1} server_rss_mb={:.1} faults={} heap_mb_by_size:{} allocs_per_s_by_size:{}",
                sample.at_secs,
                stats.records_acked,
                stats.records_failed,
                stats.inflight_batches,
                sample.producer_rss_mb,
                sample.producer_anon_mb,
                sample.producer_heap_mb,
                sample.server_rss_mb,
                faults.load(Ordering::Relaxed),
                heap_by_size(),
                alloc_rates(&mut last_allocs, now.duration_since(last_sample).as_secs_f64()),
            );
            last_sample = now;
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if trace_large || trace_small {
        TRACE_SMALL.store(false, Ordering::Relaxed);
        print_traces(started);
    }
    let (mut server, refused_commands) =
        fault_thread.join().map_err(|_| "the fault thread panicked".to_owned())?;
    let faults = faults.load(Ordering::Relaxed);
    let flushed = producer.flush_blocking(Duration::from_secs(60));
    let stats = producer.stats();
    // How every record ended, by Go code (from the producer's metrics).
    let metrics = inlong_dataproxy::MetricsRegistry::default_registry().encode_text();
    producer.close_blocking(Duration::from_secs(10)).ok();
    let totals = server.shut_down()?;
    let server_records = totals["records"].as_u64().ok_or("no records in the server's totals")?;

    let (low, high) = steady_range(&samples, |s| s.producer_rss_mb);
    let (heap_low, heap_high) = steady_range(&samples, |s| s.producer_heap_mb);
    let (anon_low, anon_high) = steady_range(&samples, |s| s.producer_anon_mb);
    let rss_growth = if low > 0.0 { (high - low) / low } else { 0.0 };
    let (server_low, server_high) = steady_range(&samples, |s| s.server_rss_mb);
    let max_inflight = samples.iter().map(|s| s.inflight_batches).max().unwrap_or(0);
    println!(
        "soak minutes={minutes} rate={rate} sent={sent} acked={} failed={} server_records={server_records} faults={faults} rss_mb_min={low:.1} rss_mb_max={high:.1} rss_spread={:.1}% anon_mb_min={anon_low:.1} anon_mb_max={anon_high:.1} heap_mb_min={heap_low:.1} heap_mb_max={heap_high:.1} server_rss_mb_min={server_low:.1} server_rss_mb_max={server_high:.1} max_inflight_batches={max_inflight} flushed={}",
        stats.records_acked,
        stats.records_failed,
        rss_growth * 100.0,
        flushed.is_ok()
    );
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
    if server_records < stats.records_acked {
        eprintln!("FAIL: the server saw fewer records than were acked");
        ok = false;
    }
    if rss_growth > 0.05 {
        eprintln!("FAIL: producer RSS spread {:.1}% after the first minute", rss_growth * 100.0);
        ok = false;
    }
    if refused_commands > 0 {
        eprintln!("FAIL: the server refused {refused_commands} fault command(s)");
        ok = false;
    }
    Ok(ok)
}
