//! `inlong-dataproxy bench`: how fast the producer sends, what each record costs, how long
//! deliveries take.
//!
//! Without `--manager-url` or `--endpoints` it starts a local DataProxy + Manager in this process
//! (full decode by default, so the server does the real work) and measures against it. One
//! application thread sends rotating, log-like payloads with `send_blocking` and keeps the
//! futures in a bounded [`DeliveryRing`]: no closure, allocation or thread per record. The
//! summary goes to stdout (a table, or one JSON line with `--json`); live progress, failures and
//! errors go to stderr. Any failed record makes the exit status non-zero.
//!
//! On SIGINT or SIGTERM (see [`super::interrupt`]) the send loop stops, the producer is closed
//! within `--close-timeout`, a line on stderr names the signal, the summary covers the run so
//! far (`undelivered` counts the records the close deadline cut short), and the exit status is
//! 130 or 143.
//!
//! Rates count acked records over the whole run, final flush included. CPU per record is the
//! whole process's (`/proc/self/stat`), so it includes an in-process server; the table adds the
//! producer's share (the process minus the server's `inlong-local*` threads).
//!
//! `--metrics-addr` serves the producer's Prometheus metrics (the process-wide registry) over
//! plain HTTP while the run lasts, so dashboards can be checked against the numbers printed here.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use inlong_dataproxy::{Error, MetricsRegistry, Producer, Record, StreamId, Transport};
use inlong_dataproxy_testkit::workload::{log_line, process_cpu_seconds, status_mb};
use inlong_dataproxy_testkit::{IngestMode, LocalCluster, NodeConfig};

use super::interrupt::{CloseArgs, Interrupts};
use super::{
    resolve_addr, serve_metrics, DeliveryRing, DeliveryTally, ProtocolArgs, Target, TargetArgs,
};

/// Futures kept by the application before it waits for the oldest.
const RING_CAPACITY: usize = 65_536;
/// Distinct payloads, rotated so compression and the server see varied input...
const DISTINCT_PAYLOADS: usize = 4096;
/// ...but no more than this many bytes of them, so large `--size`s do not inflate the RSS.
const PAYLOAD_POOL_BYTES: usize = 64 << 20;
/// How long one `send_blocking` may wait for room in the producer's queue.
const SEND_WAIT: Duration = Duration::from_secs(60);
/// How long the final flush may take before the remaining futures are waited for one by one.
const FLUSH_WAIT: Duration = Duration::from_secs(120);
/// Records sent when neither `--records` nor `--duration` is given.
const DEFAULT_RECORDS: u64 = 2_000_000;
/// Threads of the in-process server are named after this (see `LocalCluster`).
const SERVER_THREAD_PREFIX: &str = "inlong-local";

/// What the in-process server does with each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sink {
    /// Decompress and validate every batch, as the real DataProxy does.
    Full,
    /// Trust each batch's record count (cheaper; overstates what a real server sustains).
    CountOnly,
}

/// Options of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Streams to spread records over (`stream-0`, `stream-1`, ...).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    streams: u32,
    /// Payload size of every record, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    size: u32,
    /// Records to send [default: 2000000 unless --duration is given].
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    records: Option<u64>,
    /// Send for this many seconds instead of a number of records.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Target records per second (0 = as fast as possible).
    #[arg(long, value_name = "RECORDS_PER_SEC", default_value_t = 0)]
    rate: u64,
    /// Application threads sending at once, the records split evenly across them (each sends
    /// every N-th record, paced at `--rate / N`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Send with `Producer::send_batch`, this many records of one stream per call (0: one
    /// `send_blocking` per record). A call that finds no room waits for this thread's oldest
    /// call, then tries again.
    #[arg(long, value_name = "RECORDS", default_value_t = 0)]
    send_batch: usize,
    /// Shard threads [default: the library's, the CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: Option<u16>,
    /// I/O driver: auto, io_uring or epoll.
    #[arg(long, default_value = "auto", value_parser = parse_transport)]
    transport: Transport,
    /// Do not compress batches with Snappy.
    #[arg(long)]
    no_compress: bool,
    /// What the in-process server does with each batch (only without --manager-url and
    /// --endpoints).
    #[arg(long, value_enum, default_value_t = Sink::Full, conflicts_with_all = ["manager_url", "endpoints"])]
    sink: Sink,
    /// Print one JSON line instead of the table, and no progress.
    #[arg(long)]
    json: bool,
    /// Serve the producer's Prometheus metrics at http://HOST:PORT/metrics while the bench runs.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    #[command(flatten)]
    close: CloseArgs,
}

fn parse_transport(text: &str) -> Result<Transport, String> {
    text.parse().map_err(|_| format!("{text:?} is not one of auto, io_uring, epoll"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 7.0 * 24.0 * 3600.0) {
        return Err("must be more than 0 and at most a week".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The `--json` line. Field order is the documented key order.
#[derive(Debug, serde::Serialize)]
struct BenchSummary {
    records: u64,
    acked: u64,
    failed: u64,
    undelivered: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    cpu_us_per_record: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_rss_mb: f64,
    transport: &'static str,
}

/// Counters the send loop publishes for the progress line.
#[derive(Debug, Default)]
struct Progress {
    /// Payload bytes per record.
    size: usize,
    sent: AtomicU64,
    failed: AtomicU64,
    done: AtomicBool,
}

/// Runs the benchmark; see the module docs.
pub fn run(args: &BenchArgs) -> Result<ExitCode, String> {
    let interrupts = Interrupts::install(args.close.close_timeout())?;
    let target = args.target.target()?;
    let registry = MetricsRegistry::default_registry();
    let metrics_addr = match &args.metrics_addr {
        Some(addr) => {
            let addr = resolve_addr(addr, "--metrics-addr")?;
            Some(serve_metrics(addr, registry.registry().clone())?)
        }
        None => None,
    };

    let cluster = match target {
        Some(_) => None,
        None => Some(start_local_cluster(args.sink)?),
    };
    let target = match (&target, &cluster) {
        (Some(target), _) => target.clone(),
        (None, Some(cluster)) => Target::Manager(cluster.manager_url()),
        (None, None) => return Err("no target to send to".to_owned()),
    };
    let mut builder = Producer::builder()
        .group_id(args.target.group_id())
        .metrics_registry(registry)
        .node_list_cache(false)
        .transport(args.transport)
        .compression(!args.no_compress);
    if let Some(shards) = args.shards {
        builder = builder.shards(usize::from(shards));
    }
    let producer = target
        .apply(args.protocol.apply(builder))
        .build()
        .map_err(|e| format!("cannot start the producer: {e}"))?;
    let producer = Arc::new(producer);
    // The send loop checks for a signal before every record: nothing to wake.
    interrupts.watch(&producer, || {});
    if let Some(addr) = metrics_addr {
        // Announced once the producer's collectors exist, so the first scrape shows them.
        eprintln!("metrics at http://{addr}/metrics");
    }

    let size = usize::try_from(args.size).map_err(|_| "--size is too large".to_owned())?;
    let distinct = (PAYLOAD_POOL_BYTES / size).clamp(1, DISTINCT_PAYLOADS) as u64;
    let payloads: Vec<Bytes> = (0..distinct).map(|i| log_line(i, size)).collect();
    // Static names, as an application with a fixed set of streams would hold them: cloning a
    // `StreamId` made from a `&'static str` touches no reference count.
    let streams: Vec<StreamId> = (0..args.streams)
        .map(|i| StreamId::from(&*Box::leak(format!("stream-{i}").into_boxed_str())))
        .collect();
    let limit = match (args.records, args.duration) {
        (Some(records), _) => records,
        (None, Some(_)) => u64::MAX,
        (None, None) => DEFAULT_RECORDS,
    };

    let show_progress = !args.json && std::io::stderr().is_terminal();
    let progress = Progress { size, ..Progress::default() };
    let cpu_before = CpuTime::now();
    let started = Instant::now();
    let (sent, mut ring, mut tally) = std::thread::scope(|scope| {
        let reporter = show_progress.then(|| {
            let bar = progress_bar(limit, args.duration);
            let (producer, progress) = (&producer, &progress);
            let by_time = args.duration.is_some();
            std::thread::Builder::new()
                .name("bench-progress".to_owned())
                .spawn_scoped(scope, move || {
                    report_progress(&bar, producer, progress, started, by_time)
                })
        });
        let threads = u64::from(args.threads);
        let senders: Vec<_> = (0..threads)
            .map(|thread| {
                let load = Load {
                    producer: &producer,
                    streams: &streams,
                    payloads: &payloads,
                    // This thread's share: records thread, thread + N, thread + 2N, ...
                    limit: if limit == u64::MAX {
                        u64::MAX
                    } else {
                        limit / threads + u64::from(thread < limit % threads)
                    },
                    first: thread,
                    deadline: args.duration.map(|duration| started + duration),
                    rate: args.rate / threads + u64::from(thread < args.rate % threads),
                    started,
                    interrupts: &interrupts,
                    send_batch: args.send_batch,
                };
                let progress = &progress;
                std::thread::Builder::new()
                    .name(format!("bench-send-{thread}"))
                    .spawn_scoped(scope, move || load.run(progress))
            })
            .collect();
        let mut outcome = (0, DeliveryRing::new(RING_CAPACITY), DeliveryTally::new());
        for sender in senders {
            let (sent, mut ring, tally) = sender
                .map_err(|e| format!("cannot start a sending thread: {e}"))?
                .join()
                .map_err(|_| "a sending thread panicked".to_owned())?;
            outcome.0 += sent;
            outcome.2.merge(tally);
            // Futures left after a signal: resolved by the close below.
            ring.drain_into(&mut outcome.1);
        }
        progress.done.store(true, Ordering::Release);
        if let Some(Ok(reporter)) = reporter {
            reporter.thread().unpark();
            let _ = reporter.join();
        }
        Ok::<_, String>(outcome)
    })?;
    let stopped_by = interrupts.signal();
    if let Some(signal) = stopped_by {
        announce(signal.name(), interrupts.close_timeout());
    }
    // Empty unless a signal stopped the loop; then the close resolves what is left by its deadline.
    ring.drain(&mut tally);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuTime::now().since(&cpu_before);

    let closed = interrupts.close(&producer);
    let signal = interrupts.signal();
    if let (Some(signal), None) = (signal, stopped_by) {
        announce(signal.name(), interrupts.close_timeout());
    }
    let server_records = cluster.as_ref().map(|cluster| cluster.stats().records);
    let summary = summarize(sent, &tally, seconds, cpu.total, size, producer.transport());
    if args.json {
        let line = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").map_err(|e| e.to_string())?;
    } else {
        let producer_cpu = cluster.is_some().then_some(cpu.total - cpu.server);
        print_table(&summary, producer_cpu, server_records, size)?;
    }
    tally.print_errors();
    if let Some(cluster) = cluster {
        cluster.shutdown();
    }
    if let Some(signal) = signal {
        // Undelivered records are in the summary; the close's error would only repeat them.
        return Ok(ExitCode::from(signal.exit_code()));
    }
    closed.map_err(|e| format!("closing the producer: {e}"))?;
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The line naming the signal, on stderr so that stdout stays the summary alone.
fn announce(signal: &str, close_timeout: Duration) {
    eprintln!(
        "interrupted by {signal}: stopped sending; closing the producer within {}s \
         (a second signal exits at once)",
        close_timeout.as_secs_f64()
    );
}

fn start_local_cluster(sink: Sink) -> Result<LocalCluster, String> {
    let node_config = NodeConfig {
        ingest_mode: match sink {
            Sink::Full => IngestMode::Full,
            Sink::CountOnly => IngestMode::CountOnly,
        },
        // Duplicate counting is a test aid, not server work: leave it out of the measurement.
        dedup_window: 0,
        ..NodeConfig::default()
    };
    LocalCluster::builder()
        .node_config(node_config)
        .start()
        .map_err(|e| format!("cannot start the local DataProxy + Manager: {e}"))
}

/// The send loop's inputs.
struct Load<'a> {
    producer: &'a Producer,
    streams: &'a [StreamId],
    payloads: &'a [Bytes],
    /// Records this thread sends (`u64::MAX` with a deadline).
    limit: u64,
    /// Index of this thread's first record in the stream and payload rotation.
    first: u64,
    deadline: Option<Instant>,
    /// This thread's records per second, 0 = unthrottled.
    rate: u64,
    started: Instant,
    /// Checked before every record: a signal ends the loop.
    interrupts: &'a Interrupts,
    /// Records per `send_batch` call (0: per-record sends).
    send_batch: usize,
}

impl Load<'_> {
    /// Sends until the limit, the deadline or a signal; unless a signal came, then flushes and
    /// waits for every delivery. Returns how many records were sent, the futures still to wait
    /// for (after a signal only) and what became of the others.
    fn run(&self, progress: &Progress) -> (u64, DeliveryRing, DeliveryTally) {
        let mut ring = DeliveryRing::new(RING_CAPACITY);
        let mut tally = DeliveryTally::new();
        // The clock is read every `check_every` records: often enough to pace ~1000 times a
        // second, rarely enough to cost nothing when unthrottled.
        let check_every = if self.rate == 0 { 1024 } else { (self.rate / 1000).clamp(1, 1024) };
        // Threads start at different places of the rotations, so together they send what one
        // thread would.
        let first = usize::try_from(self.first).unwrap_or(0);
        let (mut stream, mut payload, mut until_check) =
            (first % self.streams.len(), first % self.payloads.len(), 0);
        let mut sent = 0u64;
        let mut batch: Vec<Bytes> = Vec::with_capacity(self.send_batch);
        // Published to the progress counters at every clock check, not per record: one cache
        // line written by every sending thread per record would be measured too.
        let (mut published_sent, mut published_failed) = (0u64, 0u64);
        let mut publish = |sent: u64, failed: u64| {
            progress.sent.fetch_add(sent - published_sent, Ordering::Relaxed);
            progress.failed.fetch_add(failed - published_failed, Ordering::Relaxed);
            (published_sent, published_failed) = (sent, failed);
        };
        while sent < self.limit && self.interrupts.signal().is_none() {
            if until_check == 0 {
                publish(sent, tally.failed);
                if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                self.pace(sent);
                until_check = check_every;
            }
            until_check -= 1;
            if self.send_batch > 0 {
                let records =
                    self.send_batch.min(usize::try_from(self.limit - sent).unwrap_or(usize::MAX));
                let stream_id = &self.streams[stream];
                stream = next_in_rotation(stream, self.streams.len());
                batch.clear();
                for _ in 0..records {
                    batch.push(self.payloads[payload].clone());
                    payload = next_in_rotation(payload, self.payloads.len());
                }
                if !self.send_one_batch(stream_id, &batch, &mut ring, &mut tally) {
                    break;
                }
                sent += records as u64;
                // One clock check per call of this many records at most.
                until_check = until_check.saturating_sub(records as u64 - 1);
                continue;
            }
            let record = Record::new(self.streams[stream].clone(), self.payloads[payload].clone());
            stream = next_in_rotation(stream, self.streams.len());
            payload = next_in_rotation(payload, self.payloads.len());
            match self.producer.send_blocking(record, SEND_WAIT) {
                Ok(future) => ring.push(future, &mut tally),
                // Refused because the signal's close began: never sent, so not counted.
                Err(Error::ProducerClosed) if self.interrupts.signal().is_some() => break,
                Err(error) => tally.fail(&error),
            }
            sent += 1;
        }
        publish(sent, tally.failed);
        if self.interrupts.signal().is_none() {
            // The drain below is authoritative: every future resolves within its attempts, so a
            // flush that times out only means the waiting continues there.
            let _ = self.producer.flush_blocking(FLUSH_WAIT);
            ring.drain(&mut tally);
            publish(sent, tally.failed);
        }
        (sent, ring, tally)
    }

    /// One `send_batch` call, waiting for this thread's oldest calls while the producer has no
    /// room for it; false when a signal's close refused it (never sent, so not counted).
    fn send_one_batch(
        &self,
        stream: &StreamId,
        batch: &[Bytes],
        ring: &mut DeliveryRing,
        tally: &mut DeliveryTally,
    ) -> bool {
        let records = batch.len() as u64;
        let mut waited_since: Option<Instant> = None;
        loop {
            match self.producer.send_batch(stream, batch) {
                Ok(future) => {
                    ring.push_batch(future, records, tally);
                    return true;
                }
                Err(Error::QueueFull) => {
                    // Room comes back as this thread's calls (or other threads') resolve.
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SEND_WAIT {
                        tally.fail_n(&Error::QueueFullTimeout { waited: since.elapsed() }, records);
                        return true;
                    }
                    if !ring.resolve_oldest(tally) {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                Err(Error::ProducerClosed) if self.interrupts.signal().is_some() => return false,
                Err(error) => {
                    tally.fail_n(&error, records);
                    return true;
                }
            }
        }
    }

    /// With `--rate`, sleeps (in steps of at most 5 ms, never spinning) until record `sent` is due.
    fn pace(&self, sent: u64) {
        if self.rate == 0 {
            return;
        }
        // Record counts are far below 2^52, where f64 stops being exact.
        #[allow(clippy::cast_precision_loss)]
        let due = self.started + Duration::from_secs_f64(sent as f64 / self.rate as f64);
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(5)));
        }
    }
}

/// The index after `index` in a rotation of `len` items (a compare, not a division, per record).
fn next_in_rotation(index: usize, len: usize) -> usize {
    if index + 1 == len {
        0
    } else {
        index + 1
    }
}

fn progress_bar(limit: u64, duration: Option<Duration>) -> ProgressBar {
    let (length, template) = match duration {
        Some(duration) => (
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "{elapsed_precise} [{bar:20}] {msg}",
        ),
        None => (limit, "{elapsed_precise} [{bar:20}] {percent:>3}% {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Redraws the progress line four times a second until the send loop is done. A `--duration`
/// bar advances with the clock (milliseconds), a `--records` bar with the records sent.
fn report_progress(
    bar: &ProgressBar,
    producer: &Producer,
    progress: &Progress,
    started: Instant,
    by_time: bool,
) {
    let (mut last_sent, mut last_at) = (0u64, Instant::now());
    while !progress.done.load(Ordering::Acquire) {
        std::thread::park_timeout(Duration::from_millis(250));
        let sent = progress.sent.load(Ordering::Relaxed);
        let now = Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64().max(1e-9);
        // Rates for display only.
        #[allow(clippy::cast_precision_loss)]
        let (rate, bytes) = ((sent - last_sent) as f64 / seconds, progress.size as f64);
        (last_sent, last_at) = (sent, now);
        let position = if by_time {
            u64::try_from(now.duration_since(started).as_millis()).unwrap_or(u64::MAX)
        } else {
            sent
        };
        bar.set_position(position);
        bar.set_message(format!(
            "{rate:.0} rec/s {:.1} MB/s in flight {} failed {}",
            rate * bytes / 1e6,
            producer.in_flight_count(),
            progress.failed.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
}

/// CPU seconds of the whole process and of the in-process server's threads.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    total: f64,
    server: f64,
}

impl CpuTime {
    fn now() -> CpuTime {
        let (total, server) = process_cpu_seconds("self", SERVER_THREAD_PREFIX);
        CpuTime { total, server }
    }

    fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime { total: self.total - earlier.total, server: self.server - earlier.server }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The numbers of the run. Rates count acked records; CPU is per record sent.
fn summarize(
    sent: u64,
    tally: &DeliveryTally,
    seconds: f64,
    cpu_seconds: f64,
    size: usize,
    transport: &'static str,
) -> BenchSummary {
    // Counts and sizes are far below 2^52, where f64 stops being exact.
    #[allow(clippy::cast_precision_loss)]
    let (acked, bytes, per_record) =
        (tally.acked as f64, tally.acked as f64 * size as f64, sent.max(1) as f64);
    let seconds = seconds.max(1e-9);
    BenchSummary {
        records: sent,
        acked: tally.acked,
        failed: tally.failed,
        undelivered: tally.undelivered,
        seconds: round(seconds, 3),
        records_per_sec: round(acked / seconds, 0),
        mb_per_sec: round(bytes / seconds / 1e6, 2),
        cpu_us_per_record: round(cpu_seconds / per_record * 1e6, 3),
        p50_ms: round(tally.latency_ms(0.5), 3),
        p99_ms: round(tally.latency_ms(0.99), 3),
        p999_ms: round(tally.latency_ms(0.999), 3),
        max_rss_mb: round(status_mb("self", "VmHWM"), 1),
        transport,
    }
}

fn print_table(
    summary: &BenchSummary,
    producer_cpu_seconds: Option<f64>,
    server_records: Option<u64>,
    size: usize,
) -> Result<(), String> {
    let mut rows: Vec<(&str, String)> = vec![
        ("records", summary.records.to_string()),
        ("acked", summary.acked.to_string()),
        ("failed", summary.failed.to_string()),
        ("undelivered", summary.undelivered.to_string()),
        ("seconds", format!("{:.3}", summary.seconds)),
        ("records/s", format!("{:.0}", summary.records_per_sec)),
        ("MB/s (payload)", format!("{:.2}  ({size}-byte records)", summary.mb_per_sec)),
        ("CPU µs/record", format!("{:.3}  (whole process)", summary.cpu_us_per_record)),
    ];
    if let Some(producer_cpu) = producer_cpu_seconds {
        // Counts are far below 2^52, where f64 stops being exact.
        #[allow(clippy::cast_precision_loss)]
        let per_record = producer_cpu / summary.records.max(1) as f64 * 1e6;
        rows.push(("CPU µs/record", format!("{per_record:.3}  (producer alone)")));
    }
    rows.extend([
        ("latency p50", format!("{:.3} ms", summary.p50_ms)),
        ("latency p99", format!("{:.3} ms", summary.p99_ms)),
        ("latency p999", format!("{:.3} ms", summary.p999_ms)),
        ("max RSS", format!("{:.1} MB", summary.max_rss_mb)),
        ("transport", summary.transport.to_owned()),
    ]);
    if let Some(records) = server_records {
        rows.push(("server counted", format!("{records} records")));
    }
    let mut stdout = std::io::stdout().lock();
    for (name, value) in rows {
        writeln!(stdout, "{name:<16}{value}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_exact_size_and_differ() {
        for size in [1, 50, 100, 1024, 5000] {
            let a = log_line(1, size);
            let b = log_line(2, size);
            assert_eq!((a.len(), b.len()), (size, size));
            assert!(!a.contains(&b'\n'));
            if size > 20 {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn json_keys_come_in_the_documented_order() {
        let summary = summarize(0, &DeliveryTally::new(), 1.0, 0.0, 100, "epoll");
        let line = serde_json::to_string(&summary).unwrap();
        let order = [
            "records",
            "acked",
            "failed",
            "undelivered",
            "seconds",
            "records_per_sec",
            "mb_per_sec",
            "cpu_us_per_record",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "max_rss_mb",
            "transport",
        ];
        let mut at = 0;
        for key in order {
            let found = line[at..].find(&format!("\"{key}\":")).expect(key);
            at += found + 1;
        }
        assert_eq!(line.matches("\":").count(), order.len(), "{line}");
    }
}
