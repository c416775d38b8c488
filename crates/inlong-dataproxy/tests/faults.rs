//! The fault suite: the producer under every failure the local DataProxy + Manager can inject, on
//! both I/O drivers and on each wire protocol (msgType 5; msgType 7 acked by the node; msgType 7
//! acked by the node's MQ sink), see [`wires`]. Each scenario pushes a steady stream of records (a [`Load`]: 8
//! streams, a unique index in every payload, a callback per record) through the fault and then
//! checks the **delivery contract** with [`assert_contract`]:
//!
//! - every record sent is resolved exactly once (its callback runs once): sent = acked + failed;
//! - every record reported acked is in a node's ledger; a record is in the ledger twice only if
//!   its batch was retried, and then the nodes counted the duplicate batch (`duplicates`);
//! - `close(deadline)` / `close_blocking(deadline)` returns within its deadline plus 500 ms;
//! - a produce/close cycle leaves no thread and no file descriptor behind. That is checked by one
//!   dedicated test that runs alone (it takes [`EXCLUSIVE`] for writing, every other test takes it
//!   for reading), so the process-wide counts in `/proc/self` mean something.
//!
//! On top of the contract each scenario checks what its fault must lead to (nothing lost when a
//! healthy node remains, the right error code and cause when records do fail). The bad-input table
//! checks that every refused record gets a typed error with the Go SDK's code, is counted in
//! `data_proxy_error_count{code}` and never reaches the wire.
//!
//! The scenarios are one table, [`scenarios`]: each row names the fault (what breaks before the
//! producer starts, what happens while the load runs) and the bounds of its outcome ([`Expect`]:
//! acked, failed, retried, duplicates, the failure kinds, how late an outcome may come), and
//! [`run_scenario`] runs a row on both transports; adding a scenario is adding a row. The single
//! test `every_fault_scenario_keeps_the_delivery_contract` runs the rows, as many at a time as the
//! harness runs tests; `INLONG_FAULT_SCENARIO=<part of a name>` runs only the matching rows.
//! Four scenarios stay tests of their own, because their run is not "one producer, one [`Load`],
//! one fault": the Manager down (9) builds three producers and checks build-time errors against
//! a node-list cache file before its load; close under full load (11) drives blocking senders
//! whose fault *is* the close; the bad-input table sends no load at all; and the live node among
//! dead ones (six tests over one helper) keeps its dead sockets alive for the run and, for the
//! black holes, lists its nodes statically instead of through the Manager.
//!
//! Each scenario prints one `fault-table` row per transport (records sent, acked, failed,
//! duplicate records in the ledger, max delivery latency); collect them with
//! `cargo test --test faults -- --nocapture 2>&1 | grep fault-table`. A scenario sends 20 000
//! records per transport by default (13 and 14 send a fixed backlog of 40 000 larger ones, to
//! fill socket buffers); the release-size run is
//!
//! ```sh
//! INLONG_FAULT_RECORDS=1000000 cargo test --release --test faults -- --nocapture
//! ```
//!
//! Set `INLONG_SKIP_IO_URING=1` to run the epoll half only where io_uring is blocked, and
//! `INLONG_FAULT_PROTOCOLS=5,7,7-sink` (a comma-separated subset) to run some protocols only.

mod common;
use common::{cluster, sample, transports, wait_until};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inlong_dataproxy::Field;
use inlong_dataproxy::{
    Ack, DeliveryFuture, DeliveryReport, Error, MetricsRegistry, MsgType, Producer,
    ProducerBuilder, Record, StreamId, Transport,
};
use inlong_dataproxy_testkit::{ErrorInjection, LocalCluster, ReplyCorruption};

/// Streams of the load (`load-0` … `load-7`); probes use other names and are not in the contract.
const STREAMS: usize = 8;
/// How long a [`Load`] takes to send its records, whatever their number.
const PACE: Duration = Duration::from_secs(2);
/// What `close` may take beyond its deadline.
const CLOSE_SLACK: Duration = Duration::from_millis(500);

/// Taken for reading by every scenario and for writing by the leak check, which must run alone.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared_run() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner)
}

/// Records per scenario and transport: `INLONG_FAULT_RECORDS`, default 20 000.
fn records() -> usize {
    std::env::var("INLONG_FAULT_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000)
}

/// One way of running a scenario: an I/O driver and a wire protocol.
#[derive(Debug, Clone, Copy)]
struct Wire {
    transport: Transport,
    msg_type: MsgType,
    ack: Ack,
}

impl Wire {
    /// `builder` on this driver, speaking this protocol.
    fn apply(self, builder: ProducerBuilder) -> ProducerBuilder {
        builder.transport(self.transport).msg_type(self.msg_type).ack(self.ack)
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.transport, protocol_label(self.msg_type, self.ack))
    }
}

/// `5`, `7` or `7-sink`: the names `INLONG_FAULT_PROTOCOLS` takes.
fn protocol_label(msg_type: MsgType, ack: Ack) -> &'static str {
    match (msg_type, ack) {
        (MsgType::BinMultiBody, Ack::Sink) => "7-sink",
        (MsgType::BinMultiBody, _) => "7",
        _ => "5",
    }
}

/// Every scenario runs on each I/O driver ([`transports`]) and each protocol: msgType 5,
/// msgType 7, and msgType 7 acked by the sink. `INLONG_FAULT_PROTOCOLS=5,7,7-sink` picks some.
fn wires() -> Vec<Wire> {
    let picked = std::env::var("INLONG_FAULT_PROTOCOLS").ok();
    let protocols = [
        (MsgType::MultiBody, Ack::Proxy),
        (MsgType::BinMultiBody, Ack::Proxy),
        (MsgType::BinMultiBody, Ack::Sink),
    ];
    let protocols: Vec<_> = protocols
        .into_iter()
        .filter(|&(m, a)| {
            picked.as_deref().is_none_or(|list| list.split(',').any(|p| p == protocol_label(m, a)))
        })
        .collect();
    assert!(!protocols.is_empty(), "INLONG_FAULT_PROTOCOLS={picked:?} names no protocol");
    transports()
        .into_iter()
        .flat_map(|transport| {
            protocols.iter().map(move |&(msg_type, ack)| Wire { transport, msg_type, ack })
        })
        .collect()
}

/// [`common::builder`] on `wire`, refreshing the node list every 200 ms, with room for the whole
/// load.
fn builder(cluster: &LocalCluster, wire: Wire) -> ProducerBuilder {
    wire.apply(common::builder(cluster, wire.transport))
        .update_interval(Duration::from_millis(200))
        // Room for the whole load, so an outage never turns into QueueFull.
        .max_pending_messages(records().max(204_800))
}

/// A failure's Go code and shape: `10001 SendTimeout<-AckTimeout`, `10011 Server(115)`, …
fn failure_kind(error: &Error) -> String {
    fn shape(error: &Error) -> String {
        let debug = format!("{error:?}");
        let variant: String = debug.chars().take_while(char::is_ascii_alphanumeric).collect();
        match (error, error.server_code()) {
            (Error::SendTimeout { last_error: Some(cause), .. }, _) => {
                format!("{variant}<-{}", shape(cause))
            }
            (_, Some(code)) => format!("{variant}({code})"),
            _ => variant,
        }
    }
    format!("{} {}", error.code(), shape(error))
}

const ACKED: u8 = 1;
const RETRIED: u8 = 2;

/// How every record of one run ended: callback calls per record index, outcomes, failure kinds.
/// Callbacks run on shard threads, so nothing here panics; [`assert_contract`] judges afterwards.
struct Tally {
    calls: Vec<AtomicU32>,
    flags: Vec<AtomicU8>,
    issued: AtomicUsize,
    acked: AtomicU64,
    failed: AtomicU64,
    wrong_metadata: AtomicU64,
    max_latency_us: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
    /// What the send and outcome times of [`Tally::mark_sent`] are measured from.
    epoch: Instant,
    /// Per record, when it was handed to the producer, in µs after `epoch` plus one (0: not
    /// marked, e.g. records sent outside a [`Load`]).
    sent_us: Vec<AtomicU64>,
    /// The longest time from a marked record's send to its outcome (ack or failure), in µs.
    max_outcome_us: AtomicU64,
}

impl Tally {
    fn new(records: usize) -> Arc<Tally> {
        Arc::new(Tally {
            calls: (0..records).map(|_| AtomicU32::new(0)).collect(),
            flags: (0..records).map(|_| AtomicU8::new(0)).collect(),
            issued: AtomicUsize::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            wrong_metadata: AtomicU64::new(0),
            max_latency_us: AtomicU64::new(0),
            kinds: Mutex::default(),
            epoch: Instant::now(),
            sent_us: (0..records).map(|_| AtomicU64::new(0)).collect(),
            max_outcome_us: AtomicU64::new(0),
        })
    }

    fn micros_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Notes that record `i` is being sent now (just before it is handed to the producer).
    fn mark_sent(&self, i: usize) {
        self.sent_us[i].store(self.micros_since_epoch() + 1, Ordering::SeqCst);
    }

    /// The longest a record marked by [`Tally::mark_sent`] waited for its outcome.
    fn max_outcome(&self) -> Duration {
        Duration::from_micros(self.max_outcome_us.load(Ordering::SeqCst))
    }

    /// The next record index to send, until every one has been handed out.
    fn next_index(&self) -> Option<usize> {
        let i = self.issued.fetch_add(1, Ordering::SeqCst);
        (i < self.calls.len()).then_some(i)
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst).min(self.calls.len())
    }

    fn record(streams: &[StreamId], i: usize) -> Record {
        Tally::padded_record(streams, i, 0)
    }

    /// Record `i` with its index zero-padded to `width` bytes (still parsed by the ledger check).
    fn padded_record(streams: &[StreamId], i: usize, width: usize) -> Record {
        Record::new(streams[i % STREAMS].clone(), format!("{i:0width$}")).with_metadata(i as u64)
    }

    fn resolve(&self, i: usize, result: Result<DeliveryReport, Error>) {
        self.calls[i].fetch_add(1, Ordering::SeqCst);
        let sent = self.sent_us[i].load(Ordering::SeqCst);
        if sent > 0 {
            let waited = (self.micros_since_epoch() + 1).saturating_sub(sent);
            self.max_outcome_us.fetch_max(waited, Ordering::SeqCst);
        }
        match result {
            Ok(report) => {
                if report.metadata != i as u64 {
                    self.wrong_metadata.fetch_add(1, Ordering::SeqCst);
                }
                let retried = if report.retries > 0 { RETRIED } else { 0 };
                self.flags[i].fetch_or(ACKED | retried, Ordering::SeqCst);
                let latency = u64::try_from(report.latency.as_micros()).unwrap_or(u64::MAX);
                self.max_latency_us.fetch_max(latency, Ordering::SeqCst);
                self.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                if matches!(error, Error::SendTimeout { attempts, .. } if attempts > 1) {
                    self.flags[i].fetch_or(RETRIED, Ordering::SeqCst);
                }
                let kind = failure_kind(&error);
                *self
                    .kinds
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(kind)
                    .or_default() += 1;
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn resolved(&self) -> u64 {
        self.acked.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }

    fn kinds(&self) -> BTreeMap<String, u64> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Sends `records` records at a steady rate over `pace` from its own thread, with a callback per
/// record into a [`Tally`]. Faults are injected by the test while it runs ([`Load::wait_sent`]).
struct Load {
    producer: Arc<Producer>,
    tally: Arc<Tally>,
    /// Probe records sent through the load's producer (acked, outside the contract).
    probes: u64,
    thread: Option<JoinHandle<()>>,
    started: Instant,
}

/// How a run ends.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// `close_blocking(deadline)`.
    Blocking(Duration),
    /// `close(deadline).await` on a current-thread tokio runtime.
    Async(Duration),
}

/// A finished run, for [`assert_contract`].
struct Finished {
    tally: Arc<Tally>,
    /// The producer's driver and protocol: `io_uring 7-sink`.
    transport: String,
    elapsed: Duration,
}

/// The `transport` of a [`Finished`] run of `producer`.
fn run_label(producer: &Producer) -> String {
    let config = producer.config();
    format!("{} {}", producer.transport(), protocol_label(config.msg_type, config.ack))
}

impl Load {
    fn start(producer: Producer, records: usize, pace: Duration) -> Load {
        Load::start_padded(producer, records, pace, 0)
    }

    /// Like [`Load::start`], with payloads of `width` bytes (see [`Tally::padded_record`]).
    fn start_padded(producer: Producer, records: usize, pace: Duration, width: usize) -> Load {
        let producer = Arc::new(producer);
        let tally = Tally::new(records);
        let (sender, counts) = (producer.clone(), tally.clone());
        let thread = std::thread::spawn(move || {
            let streams: Vec<StreamId> =
                (0..STREAMS).map(|s| StreamId::from(format!("load-{s}"))).collect();
            let started = Instant::now();
            let total = records as u128;
            loop {
                let elapsed = started.elapsed().as_micros();
                let due = (total * elapsed / pace.as_micros().max(1)).min(total);
                while counts.issued() < due as usize {
                    let Some(i) = counts.next_index() else { break };
                    let tally = counts.clone();
                    counts.mark_sent(i);
                    let record = Tally::padded_record(&streams, i, width);
                    sender.send_with_callback(record, move |result| {
                        tally.resolve(i, result);
                    });
                }
                if counts.issued() == records {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Load { producer, tally, probes: 0, thread: Some(thread), started: Instant::now() }
    }

    /// [`probe`] through the load's producer.
    fn probe(&mut self, count: usize) -> Vec<SocketAddr> {
        self.probes += count as u64;
        probe(&self.producer, count)
    }

    /// Waits until `fraction` of the records have been sent.
    fn wait_sent(&self, fraction: f64) {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let target = (self.tally.calls.len() as f64 * fraction) as usize;
        wait_until(&format!("{target} records sent"), PACE * 10, || self.tally.issued() >= target);
    }

    /// Waits for the last record to be sent, closes the producer (which must succeed: nothing
    /// may be left at the deadline), and hands the tally over.
    fn finish(mut self, close: Close) -> Finished {
        if let Some(thread) = self.thread.take() {
            wait_until("the load to send everything", PACE * 10, || thread.is_finished());
            thread.join().expect("the load thread");
        }
        let transport = run_label(&self.producer);
        close_within(&self.producer, close).expect("nothing left undelivered at close");
        wait_until("every callback", Duration::from_secs(1), || {
            self.tally.resolved() == self.tally.issued() as u64
        });
        let stats = self.producer.stats();
        assert_eq!(stats.in_flight_records, 0);
        let acked = self.tally.acked.load(Ordering::SeqCst);
        assert_eq!(stats.records_acked, acked + self.probes, "stats agree with the callbacks");
        Finished { tally: self.tally, transport, elapsed: self.started.elapsed() }
    }
}

/// Closes the producer and checks that `close` kept to its deadline.
fn close_within(producer: &Producer, close: Close) -> Result<(), Error> {
    let started = Instant::now();
    let (deadline, result) = match close {
        Close::Blocking(deadline) => (deadline, producer.close_blocking(deadline)),
        Close::Async(deadline) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            (deadline, runtime.block_on(producer.close(deadline)))
        }
    };
    let took = started.elapsed();
    assert!(took <= deadline + CLOSE_SLACK, "close({deadline:?}) took {took:?}");
    result
}

/// What [`assert_contract`] found.
#[derive(Debug)]
struct Summary {
    sent: u64,
    acked: u64,
    failed: u64,
    /// Records whose delivery needed more than one attempt.
    retried: u64,
    /// Extra ledger entries of records the nodes accepted more than once.
    duplicates: u64,
    max_latency: Duration,
    kinds: BTreeMap<String, u64>,
}

/// The first half of the contract: every record sent was resolved exactly once.
fn assert_resolved_once(tally: &Tally, scenario: &str) -> (u64, u64) {
    let sent = tally.issued();
    for (i, calls) in tally.calls.iter().enumerate() {
        let calls = calls.load(Ordering::SeqCst);
        let expected = u32::from(i < sent);
        assert_eq!(calls, expected, "{scenario}: record {i} resolved {calls} times");
    }
    let (acked, failed) = (tally.acked.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));
    assert_eq!(acked + failed, sent as u64, "{scenario}: sent = acked + failed");
    assert_eq!(tally.wrong_metadata.load(Ordering::SeqCst), 0, "{scenario}: reports' metadata");
    (acked, failed)
}

/// Checks the delivery contract of a finished run against the cluster's ledger (which must hold
/// this run only) and prints the scenario's `fault-table` row.
fn assert_contract(cluster: &LocalCluster, run: &Finished, scenario: &str) -> Summary {
    let tally = &run.tally;
    let sent = tally.issued();
    let (acked, failed) = assert_resolved_once(tally, scenario);

    let ledger = cluster.ledger();
    let mut seen = vec![0u32; tally.calls.len()];
    for s in 0..STREAMS {
        for entry in ledger.get(&format!("load-{s}")).map(Vec::as_slice).unwrap_or_default() {
            let index = std::str::from_utf8(entry).ok().and_then(|text| text.parse::<usize>().ok());
            match index {
                Some(i) if i < sent && i % STREAMS == s => seen[i] += 1,
                _ => panic!("{scenario}: the ledger holds a record never sent: {entry:?}"),
            }
        }
    }
    let (mut duplicates, mut retried) = (0, 0);
    for (i, &copies) in seen.iter().enumerate().take(sent) {
        let flags = tally.flags[i].load(Ordering::SeqCst);
        if flags & ACKED != 0 {
            assert!(copies >= 1, "{scenario}: record {i} was acked but is not in the ledger");
        }
        if copies > 1 {
            assert!(
                flags & RETRIED != 0,
                "{scenario}: record {i} arrived {copies} times unretried"
            );
            duplicates += u64::from(copies - 1);
        }
        retried += u64::from(flags & RETRIED != 0);
    }
    let duplicate_batches = cluster.stats().duplicates;
    assert_eq!(
        duplicates > 0,
        duplicate_batches > 0,
        "{scenario}: {duplicates} duplicate records but {duplicate_batches} duplicate batches"
    );
    assert!(duplicate_batches <= duplicates, "{scenario}: every duplicate batch has a record");

    let summary = Summary {
        sent: sent as u64,
        acked,
        failed,
        retried,
        duplicates,
        max_latency: Duration::from_micros(tally.max_latency_us.load(Ordering::SeqCst)),
        kinds: tally.kinds(),
    };
    eprintln!(
        "fault-table | {scenario:<26} | {:<15} | sent {:>8} | acked {:>8} | failed {:>7} | \
         duplicates {:>6} | max latency {:>5} ms | {:>5.1} s | {:?}",
        run.transport,
        summary.sent,
        summary.acked,
        summary.failed,
        summary.duplicates,
        summary.max_latency.as_millis(),
        run.elapsed.as_secs_f64(),
        summary.kinds,
    );
    summary
}

/// Fails the test when a failure kind is not one of `allowed`.
fn assert_failures_only(summary: &Summary, allowed: &[&str]) {
    for kind in summary.kinds.keys() {
        assert!(allowed.contains(&kind.as_str()), "unexpected failures: {:?}", summary.kinds);
    }
}

/// Sends `count` records on `probe-*` streams (outside the contract) and returns the nodes
/// that acked them.
fn probe(producer: &Producer, count: usize) -> Vec<SocketAddr> {
    let futures: Vec<DeliveryFuture> = (0..count)
        .map(|i| producer.send(Record::new(format!("probe-{i}"), format!("probe {i}"))))
        .collect();
    futures.into_iter().map(|future| future.wait().expect("probe acked").endpoint).collect()
}

/// The README's bound on a record's outcome after its send ("Delivery semantics"), for the
/// default linger (20 ms) and backoff (100 ms, doubled per retry, +20 % jitter at most, capped
/// at 10 s): `linger + send_timeout × (2 + max_retries) + the longest backoff of each retry`.
fn delivery_bound(send_timeout: Duration, max_retries: u32) -> Duration {
    let backoffs: Duration = (0..max_retries)
        .map(|n| (Duration::from_millis(120) * (1 << n.min(20))).min(Duration::from_secs(10)))
        .sum();
    Duration::from_millis(20) + send_timeout * (2 + max_retries) + backoffs
}

/// Scheduling slack allowed beyond [`delivery_bound`] (two cores shared with other builds).
const BOUND_SLACK: Duration = Duration::from_secs(1);
/// Records of the backlog scenarios: 40 MB of 1 000-byte records (sent uncompressed), far
/// more than the socket buffers between a shard and a node hold (8 MiB or so per connection).
const BACKLOG_RECORDS: usize = 40_000;
const BACKLOG_RECORD_BYTES: usize = 1000;

/// What a count of a scenario's [`Summary`] must be.
#[derive(Debug, Clone, Copy)]
enum Count {
    /// Anything.
    Any,
    /// None.
    Zero,
    /// At least one.
    AtLeastOne,
    /// Every record sent.
    All,
}

impl Count {
    fn check(self, context: &str, what: &str, value: u64, summary: &Summary) {
        let holds = match self {
            Count::Any => true,
            Count::Zero => value == 0,
            Count::AtLeastOne => value > 0,
            Count::All => value == summary.sent,
        };
        assert!(
            holds,
            "{context}: {value} {what} of {} sent, expected {self:?}; failures {:?}",
            summary.sent, summary.kinds
        );
    }
}

/// What a scenario's fault must lead to, beyond the contract [`assert_contract`] checks.
#[derive(Debug, Clone, Copy)]
struct Expect {
    acked: Count,
    failed: Count,
    /// Records whose delivery needed more than one attempt.
    retried: Count,
    /// Extra ledger entries of records accepted more than once.
    duplicates: Count,
    /// Every failure is one of these kinds (`failure_kind`); empty: any kind.
    failures: &'static [&'static str],
    /// Each of these kinds occurs at least once.
    required: &'static [&'static str],
    /// Every record's outcome (ack or failure) arrives within this of its send, plus
    /// [`BOUND_SLACK`].
    outcome_within: Option<Duration>,
}

/// Every record acked: nothing failed, retries and duplicates allowed.
const DELIVERED: Expect = Expect {
    acked: Count::Any,
    failed: Count::Zero,
    retried: Count::Any,
    duplicates: Count::Any,
    failures: &[],
    required: &[],
    outcome_within: None,
};

impl Expect {
    fn check(&self, context: &str, summary: &Summary, run: &Finished) {
        self.acked.check(context, "acked", summary.acked, summary);
        self.failed.check(context, "failed", summary.failed, summary);
        self.retried.check(context, "retried", summary.retried, summary);
        self.duplicates.check(context, "duplicates", summary.duplicates, summary);
        if !self.failures.is_empty() {
            assert_failures_only(summary, self.failures);
        }
        for kind in self.required {
            assert!(summary.kinds.contains_key(*kind), "{context}: no {kind}: {:?}", summary.kinds);
        }
        if let Some(bound) = self.outcome_within {
            let worst = run.tally.max_outcome();
            let late = worst.saturating_sub(bound);
            eprintln!(
                "{context}: worst outcome {worst:?} after send, bound {bound:?}, {late:?} past it; \
                 run {:?}",
                run.elapsed
            );
            assert!(
                worst <= bound + BOUND_SLACK,
                "{context}: a record's outcome came {worst:?} after its send, {late:?} past the \
                 bound of {bound:?}"
            );
        }
    }
}

/// The load a scenario sends: `records` records over `pace`, payloads `width` bytes or more.
#[derive(Debug, Clone, Copy)]
struct Shape {
    records: usize,
    pace: Duration,
    width: usize,
}

/// Checks that depend on what the fault saw while it was injected (an outage's length, a node's
/// count at a moment); run after the contract.
type Then = Box<dyn FnOnce(&LocalCluster, &Summary)>;

fn then(check: impl FnOnce(&LocalCluster, &Summary) + 'static) -> Then {
    Box::new(check)
}

fn nothing_more() -> Then {
    then(|_, _| {})
}

/// One row of the fault table: run by [`run_scenario`] on each driver and protocol ([`wires`]).
struct Scenario {
    /// Its name in the `fault-table` rows and in `INLONG_FAULT_SCENARIO`.
    name: &'static str,
    /// Nodes of the cluster (the Manager lists them all).
    nodes: usize,
    /// Breaks the cluster before the producer is built.
    before: fn(&LocalCluster),
    /// The producer's options on top of [`builder`].
    options: fn(ProducerBuilder) -> ProducerBuilder,
    load: Shape,
    /// Injects the fault while the load runs; returns what is left to check afterwards.
    during: fn(&LocalCluster, &mut Load) -> Then,
    close: Close,
    expect: Expect,
}

fn healthy(_: &LocalCluster) {}

fn as_built(builder: ProducerBuilder) -> ProducerBuilder {
    builder
}

fn no_fault(_: &LocalCluster, _: &mut Load) -> Then {
    nothing_more()
}

/// Waits until `load` has sent a third of its records and both nodes of `cluster` got some.
fn both_nodes_used(cluster: &LocalCluster, load: &Load) {
    load.wait_sent(0.33);
    wait_until("both nodes used", Duration::from_secs(10), || {
        cluster.nodes().iter().all(|node| node.stats().records > 0)
    });
}

/// (7) and (8): broken replies for the middle third of the run, then normal ones.
fn broken_replies(cluster: &LocalCluster, load: &Load, corruption: ReplyCorruption) {
    let node = cluster.node(0);
    load.wait_sent(0.33);
    let connections = node.stats().connections;
    node.update_faults(|f| f.corrupt_replies = Some(corruption));
    wait_until("connections closed and opened again", Duration::from_secs(10), || {
        node.stats().connections >= connections + 2
    });
    load.wait_sent(0.66);
    node.update_faults(|f| f.corrupt_replies = None);
}

/// The options of the backlog scenarios (13, 14): short timeouts in the defaults' proportions
/// (`send_timeout` 1 s, four retries, heartbeats every 2 s answered within 300 ms).
fn backlog_options(builder: ProducerBuilder) -> ProducerBuilder {
    let (send_timeout, max_retries) = BACKLOG_TIMEOUTS;
    builder
        .send_timeout(send_timeout)
        .max_retries(max_retries)
        .heartbeat_interval(Duration::from_secs(2))
        .heartbeat_timeout(Duration::from_millis(300))
        // The padded payloads compress twentyfold: sent as they are, they fill the sockets.
        .compression(false)
}

/// `send_timeout` and `max_retries` of the backlog scenarios.
const BACKLOG_TIMEOUTS: (Duration, u32) = (Duration::from_secs(1), 4);

/// The fault table. Adding a scenario is adding a row.
#[allow(clippy::too_many_lines)] // A table.
fn scenarios() -> Vec<Scenario> {
    let steady = Shape { records: records(), pace: PACE, width: 0 };
    let close = Close::Blocking(Duration::from_secs(10));
    // The backlog scenarios (13, 14): [`BACKLOG_RECORDS`] 1 000-byte records over [`PACE`] to a
    // cluster whose only node is broken; nothing is acked and every record's outcome arrives
    // within [`delivery_bound`] of its send. Their close leaves room for late outcomes, so that
    // how late they are is measured rather than cut off.
    let bound = delivery_bound(BACKLOG_TIMEOUTS.0, BACKLOG_TIMEOUTS.1);
    let backlog = Shape { records: BACKLOG_RECORDS, pace: PACE, width: BACKLOG_RECORD_BYTES };
    let backlog_failed = Expect {
        acked: Count::Zero,
        failed: Count::All,
        failures: &[
            "10001 SendTimeout<-AckTimeout",
            "10001 SendTimeout<-NoEndpoints",
            "10001 SendTimeout<-ConnectionLost",
        ],
        required: &["10001 SendTimeout<-AckTimeout"],
        outcome_within: Some(bound),
        ..DELIVERED
    };
    vec![
        // (1)
        Scenario {
            name: "node killed",
            nodes: 2,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                both_nodes_used(cluster, load);
                cluster.node(0).stop();
                nothing_more()
            },
            close,
            expect: DELIVERED,
        },
        // (2)
        Scenario {
            name: "node restarted",
            nodes: 2,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                load.wait_sent(0.25);
                cluster.node(0).stop();
                load.wait_sent(0.5);
                cluster.node(0).restart().unwrap();
                nothing_more()
            },
            close,
            expect: DELIVERED,
        },
        // (3) Records wait out the outage; none fails within the 30 s send timeout.
        Scenario {
            name: "all nodes down, then back",
            nodes: 2,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                load.wait_sent(0.25);
                let down = Instant::now();
                for node in cluster.nodes() {
                    node.stop();
                }
                // Half the pace: about a second without any node.
                load.wait_sent(0.75);
                for node in cluster.nodes() {
                    node.restart().unwrap();
                }
                let outage = down.elapsed();
                then(move |_, summary| {
                    assert!(
                        summary.max_latency >= outage / 2,
                        "records waited out the {outage:?} outage: max latency {:?}",
                        summary.max_latency
                    );
                })
            },
            close: Close::Blocking(Duration::from_secs(20)),
            expect: DELIVERED,
        },
        // (3b) A delivery bound of ~6 s: a shard that waited 5 s per connect after an outage (its
        // failure streak grown by the outages before, although each connection then worked)
        // fails batches.
        Scenario {
            name: "repeated outages of all nodes",
            nodes: 2,
            before: healthy,
            options: |builder| builder.send_timeout(Duration::from_secs(2)).max_retries(1),
            load: Shape { pace: Duration::from_secs(12), ..steady },
            during: |cluster, _| {
                // A fixed schedule of outages, not a wait for an event.
                let outage = |length: Duration| {
                    for node in cluster.nodes() {
                        node.stop();
                    }
                    std::thread::sleep(length);
                    for node in cluster.nodes() {
                        node.restart().unwrap();
                    }
                };
                for _ in 0..5 {
                    // Long enough for the connections to prove themselves.
                    std::thread::sleep(Duration::from_millis(1500));
                    outage(Duration::from_millis(300));
                }
                std::thread::sleep(Duration::from_millis(1500));
                outage(Duration::from_secs(1));
                nothing_more()
            },
            close: Close::Blocking(Duration::from_secs(20)),
            expect: DELIVERED,
        },
        // (4) Acks slower than the send timeout: with retries a late ack of an earlier attempt
        // still delivers the batch; without, every attempt is over before its ack arrives.
        Scenario {
            name: "slow acks, 2 retries",
            nodes: 1,
            before: |cluster| cluster.node(0).update_faults(|f| f.ack_delay = ms(400)),
            options: |builder| builder.send_timeout(ms(200)).max_retries(2),
            load: steady,
            during: no_fault,
            close,
            expect: Expect {
                failed: Count::Any,
                retried: Count::AtLeastOne,
                failures: &["10001 SendTimeout<-AckTimeout"],
                ..DELIVERED
            },
        },
        Scenario {
            name: "slow acks, no retry",
            nodes: 1,
            before: |cluster| cluster.node(0).update_faults(|f| f.ack_delay = ms(400)),
            options: |builder| builder.send_timeout(ms(200)).max_retries(0),
            load: steady,
            during: no_fault,
            close,
            expect: Expect {
                failed: Count::AtLeastOne,
                failures: &["10001 SendTimeout<-AckTimeout"],
                ..DELIVERED
            },
        },
        // (5) Retryable codes are retried, then delivered.
        Scenario {
            name: "codes 1, 2, 114",
            nodes: 1,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                let node = cluster.node(0);
                for (code, at) in [(1, 0.2), (2, 0.45), (114, 0.7)] {
                    load.wait_sent(at);
                    node.update_faults(|f| {
                        f.errors = Some(ErrorInjection::Next { code, count: 5 })
                    });
                    wait_until(
                        &format!("five batches answered {code}"),
                        Duration::from_secs(10),
                        || node.faults().errors.is_none(),
                    );
                }
                then(|cluster, _| assert_eq!(cluster.stats().errors, 15))
            },
            close,
            expect: Expect { retried: Count::AtLeastOne, ..DELIVERED },
        },
        // (6) Code 115 fails every record once, without retrying.
        Scenario {
            name: "code 115",
            nodes: 1,
            before: |cluster| {
                cluster.node(0).update_faults(|f| {
                    f.errors = Some(ErrorInjection::Fraction { code: 115, fraction: 1.0 });
                });
            },
            options: as_built,
            load: steady,
            during: |_, _| then(|cluster, _| assert_eq!(cluster.stats().records, 0)),
            close: Close::Async(Duration::from_secs(5)),
            expect: Expect {
                failed: Count::All,
                retried: Count::Zero,
                failures: &["10011 Server(115)"],
                ..DELIVERED
            },
        },
        // (7) Garbage replies close the connection; the batches are retried.
        Scenario {
            name: "garbage replies",
            nodes: 1,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                broken_replies(cluster, load, ReplyCorruption::Garbage);
                nothing_more()
            },
            close,
            expect: Expect {
                failed: Count::Any,
                retried: Count::AtLeastOne,
                failures: &["10001 SendTimeout<-ConnectionLost"],
                ..DELIVERED
            },
        },
        // (8) An oversized reply frame closes the connection; the batches are retried.
        Scenario {
            name: "oversized reply frame",
            nodes: 1,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                broken_replies(cluster, load, ReplyCorruption::Oversized);
                nothing_more()
            },
            close,
            expect: Expect {
                failed: Count::Any,
                retried: Count::AtLeastOne,
                failures: &["10001 SendTimeout<-ConnectionLost"],
                ..DELIVERED
            },
        },
        // (10) Endpoint list changes under load lose nothing and, drained, resend nothing.
        Scenario {
            name: "endpoint list changes",
            nodes: 2,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                load.wait_sent(0.25);
                let added = cluster.add_node().unwrap();
                wait_until("a connection to the added node", Duration::from_secs(10), || {
                    added.open_connections() > 0
                });
                let removed = cluster.node(0);
                cluster.remove_node(removed.addr());
                wait_until(
                    "connections drained off the removed node",
                    Duration::from_secs(10),
                    || removed.open_connections() == 0,
                );
                let frozen = removed.stats().records;
                wait_until("traffic on the added node", Duration::from_secs(10), || {
                    let endpoints = load.probe(16);
                    assert!(!endpoints.contains(&removed.addr()), "a removed node acked a probe");
                    added.stats().records > 0
                });
                then(move |_, _| {
                    let after = removed.stats().records;
                    assert_eq!(after, frozen, "the removed node got traffic after its drain");
                })
            },
            close,
            expect: Expect { duplicates: Count::Zero, ..DELIVERED },
        },
        // (12) A silent node loses its traffic to the healthy one via ack timeouts; it accepts
        // nothing, so nothing is duplicated.
        Scenario {
            name: "silent node",
            nodes: 2,
            before: healthy,
            options: |builder| builder.send_timeout(ms(500)),
            load: steady,
            during: |cluster, load| {
                both_nodes_used(cluster, load);
                cluster.node(0).update_faults(|f| f.silent = true);
                then(|cluster, _| {
                    assert!(
                        cluster.node(0).stats().dropped > 0,
                        "the silent node swallowed batches"
                    );
                })
            },
            close: Close::Async(Duration::from_secs(10)),
            expect: Expect { retried: Count::AtLeastOne, duplicates: Count::Zero, ..DELIVERED },
        },
        // (13) A node that never reads: records wait for an ack, or behind its full socket.
        Scenario {
            name: "node never reads",
            nodes: 1,
            before: |cluster| cluster.node(0).update_faults(|f| f.stall_reads = true),
            options: backlog_options,
            load: backlog,
            during: |_, _| {
                then(|cluster, _| {
                    let stats = cluster.node(0).stats();
                    assert!(stats.connections > 0, "connected");
                    let read = (stats.batches, stats.dropped, stats.heartbeats);
                    assert_eq!(read, (0, 0, 0), "read nothing");
                })
            },
            close: Close::Blocking(bound * 4),
            expect: backlog_failed,
        },
        // (17) The MQ behind the node fails: sink codes 116–119 (sink acknowledgement only;
        // on the other protocols nothing asks the sink and the row is a plain run).
        Scenario {
            name: "MQ sink fails 116-119",
            nodes: 1,
            before: healthy,
            options: as_built,
            load: steady,
            during: |cluster, load| {
                if load.producer.config().ack != Ack::Sink {
                    return nothing_more();
                }
                let node = cluster.node(0);
                for (code, at) in [(116, 0.2), (117, 0.4), (118, 0.6), (119, 0.8)] {
                    load.wait_sent(at);
                    node.update_faults(|f| {
                        f.sink_errors = Some(ErrorInjection::Next { code, count: 5 });
                    });
                    wait_until(
                        &format!("five batches failed {code} in the sink"),
                        Duration::from_secs(10),
                        || node.faults().sink_errors.is_none(),
                    );
                }
                then(|cluster, summary| {
                    assert_eq!(cluster.stats().errors, 20);
                    assert!(summary.retried > 0, "the failed stores were retried");
                })
            },
            close,
            expect: DELIVERED,
        },
        // (18) The MQ is slower than the send timeout for the middle third of the run: attempts
        // time out and are retried, late answers of superseded attempts count once.
        Scenario {
            name: "MQ sink slower than send_timeout",
            nodes: 1,
            before: healthy,
            options: |builder| builder.send_timeout(Duration::from_millis(400)),
            load: steady,
            during: |cluster, load| {
                let node = cluster.node(0);
                load.wait_sent(0.33);
                node.update_faults(|f| f.sink_latency = Some(Duration::from_millis(600)));
                load.wait_sent(0.66);
                node.update_faults(|f| f.sink_latency = None);
                nothing_more()
            },
            close,
            expect: Expect {
                acked: Count::AtLeastOne,
                failed: Count::Any,
                failures: &["10001 SendTimeout<-AckTimeout"],
                ..DELIVERED
            },
        },
        // (14) A silent node, or none at all.
        Scenario {
            name: "silent node, backlog",
            nodes: 1,
            before: |cluster| cluster.node(0).update_faults(|f| f.silent = true),
            options: backlog_options,
            load: backlog,
            during: |_, _| {
                then(|cluster, _| {
                    assert!(cluster.node(0).stats().dropped > 0, "the node swallowed batches");
                })
            },
            close: Close::Blocking(bound * 4),
            expect: backlog_failed,
        },
        Scenario {
            name: "no node up, backlog",
            nodes: 1,
            before: |cluster| cluster.node(0).stop(),
            options: backlog_options,
            load: backlog,
            during: |_, _| then(|cluster, _| assert_eq!(cluster.node(0).stats().connections, 0)),
            close: Close::Blocking(bound * 4),
            expect: Expect {
                failures: &["10001 SendTimeout<-NoEndpoints"],
                required: &["10001 SendTimeout<-NoEndpoints"],
                ..backlog_failed
            },
        },
    ]
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Runs one row of the table on each driver and protocol ([`wires`]): a fresh cluster, broken by `before`, a
/// [`Load`] through a producer with the row's options, the fault `during` the load, then the
/// contract ([`assert_contract`], which prints the `fault-table` row), the row's [`Expect`] and
/// what the fault left to check.
fn run_scenario(row: &Scenario) {
    for wire in wires() {
        let cluster = cluster(row.nodes);
        (row.before)(&cluster);
        let producer = (row.options)(builder(&cluster, wire)).build().unwrap();
        let Shape { records, pace, width } = row.load;
        let mut load = Load::start_padded(producer, records, pace, width);
        let then = (row.during)(&cluster, &mut load);
        let run = load.finish(row.close);
        let summary = assert_contract(&cluster, &run, row.name);
        let context = format!("{} ({wire})", row.name);
        row.expect.check(&context, &summary, &run);
        then(&cluster, &summary);
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(not a string)".to_owned())
}

/// Every row of [`scenarios`] (those whose name contains `INLONG_FAULT_SCENARIO`, when set),
/// as many at a time as the test harness runs tests (`RUST_TEST_THREADS`, else the cores); each
/// takes [`EXCLUSIVE`] for reading while it runs. A failed row does not stop the others; the
/// test fails at the end naming every row that failed.
#[test]
fn every_fault_scenario_keeps_the_delivery_contract() {
    let filter = std::env::var("INLONG_FAULT_SCENARIO").ok();
    let rows: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|row| filter.as_deref().is_none_or(|filter| row.name.contains(filter)))
        .collect();
    assert!(!rows.is_empty(), "no scenario matches INLONG_FAULT_SCENARIO={filter:?}");
    let workers = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .clamp(1, rows.len());
    let next = AtomicUsize::new(0);
    let failed: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(row) = rows.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let _run = shared_run();
                    let started = Instant::now();
                    let outcome = std::panic::catch_unwind(|| run_scenario(row));
                    if let Err(payload) = outcome {
                        let message = panic_message(&*payload);
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(format!("{}: {message}", row.name));
                    }
                    eprintln!("scenario {:?} took {:?}", row.name, started.elapsed());
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}

// (9)
#[test]
fn the_manager_down_at_start_and_during_the_run() {
    let _run = shared_run();
    for wire in wires() {
        let cluster = cluster(1);
        let manager = cluster.manager();
        let label = wire.to_string().replace(' ', "-");
        let dir =
            std::env::temp_dir().join(format!("inlong-faults-{}-{label}", std::process::id()));
        let cache = dir.join("nodes.json");
        let cached = |cluster: &LocalCluster| {
            builder(cluster, wire).node_list_cache(true).node_list_cache_path(&cache)
        };
        // A first producer writes a fresh cache.
        let first = cached(&cluster).build().unwrap();
        assert_eq!(probe(&first, 1).len(), 1);
        close_within(&first, Close::Blocking(Duration::from_secs(5))).unwrap();
        drop(first);
        assert!(cache.exists());
        manager.stop_listening();

        // Without a cache: a clear error within the timeouts.
        let started = Instant::now();
        let error = builder(&cluster, wire)
            .manager_request_timeout(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(matches!(error, Error::Discovery(_)), "{error}");
        assert!(error.to_string().contains("cannot reach the InLong Manager"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

        // With it: starts, and keeps sending while the Manager comes and goes.
        let started = Instant::now();
        let producer = cached(&cluster).build().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let load = Load::start(producer, records(), PACE);
        load.wait_sent(0.33);
        let answered = manager.stats().ok;
        manager.start_listening().unwrap();
        wait_until("a refresh from the Manager", Duration::from_secs(10), || {
            manager.stats().ok > answered
        });
        load.wait_sent(0.5);
        manager.stop_listening();
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "manager down");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
        let _ = std::fs::remove_dir_all(dir);
    }
}

// (11)
#[test]
fn close_under_full_load_returns_within_a_short_deadline() {
    let _run = shared_run();
    for wire in wires() {
        let cluster = cluster(1);
        // Acks slower than the close deadline: a backlog is certain to be left at close.
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_secs(1));
        let total = records();
        let producer = Arc::new(
            builder(&cluster, wire)
                .block_if_queue_full(true)
                .max_pending_messages((total / 10).max(1000))
                .build()
                .unwrap(),
        );
        let tally = Tally::new(total);
        let senders: Vec<JoinHandle<Vec<(usize, DeliveryFuture)>>> = (0..2)
            .map(|_| {
                let (producer, tally) = (producer.clone(), tally.clone());
                std::thread::spawn(move || {
                    let streams: Vec<StreamId> =
                        (0..STREAMS).map(|s| StreamId::from(format!("load-{s}"))).collect();
                    let mut futures = Vec::new();
                    while let Some(i) = tally.next_index() {
                        let record = Tally::record(&streams, i);
                        match producer.send_blocking(record, Duration::from_secs(30)) {
                            Ok(future) => futures.push((i, future)),
                            Err(error) => {
                                let closed = error == Error::ProducerClosed;
                                tally.resolve(i, Err(error));
                                if closed {
                                    break;
                                }
                            }
                        }
                    }
                    futures
                })
            })
            .collect();
        let started = Instant::now();
        wait_until("the queue full and senders blocked", Duration::from_secs(20), || {
            tally.issued() >= total / 4 && producer.in_flight_count() > 0
        });
        let result = close_within(&producer, Close::Blocking(Duration::from_millis(300)));
        let closed_at = Instant::now();
        let mut futures = Vec::new();
        for sender in senders {
            wait_until("senders released by close", Duration::from_secs(2), || {
                sender.is_finished()
            });
            futures.extend(sender.join().unwrap());
        }
        eprintln!("senders released {:?} after close returned", closed_at.elapsed());
        for (i, future) in futures {
            assert!(future.is_resolved(), "record {i} unresolved after close returned");
            tally.resolve(i, future.wait());
        }
        let run = Finished { tally, transport: run_label(&producer), elapsed: started.elapsed() };
        let summary = assert_contract(&cluster, &run, "close under full load");
        assert_failures_only(&summary, &["10001 FlushTimeout", "10003 ProducerClosed"]);
        let at_deadline = summary.kinds.get("10001 FlushTimeout").copied().unwrap_or(0);
        match result {
            Ok(()) => assert_eq!(at_deadline, 0),
            Err(Error::FlushTimeout { undelivered }) => assert_eq!(undelivered, at_deadline),
            Err(error) => panic!("close failed with {error}"),
        }
        assert!(at_deadline > 0, "a backlog was left at the deadline");
        assert_eq!(producer.in_flight_count(), 0);
    }
}

#[test]
fn bad_input_gets_typed_errors_and_never_reaches_the_wire() {
    let _run = shared_run();
    for wire in wires() {
        let cluster = cluster(1);
        let registry = MetricsRegistry::new(prometheus::Registry::new());
        let producer = builder(&cluster, wire)
            .max_packet_length(4096)
            .batching_max_size(4096)
            .metrics_name("bad-input")
            .metrics_registry(registry.clone())
            .build()
            .unwrap();
        let records = [
            ("empty payload", Record::new("s", ""), 10010),
            ("lone newline", Record::new("s", "\n"), 10010),
            ("over the frame limit", Record::new("s", vec![b'x'; 5000]), 10009),
            ("stream with a space", Record::new("bad stream", "x"), 10010),
            ("stream with a tab", Record::new("bad\tstream", "x"), 10010),
            ("stream with &", Record::new("a&b", "x"), 10010),
            ("stream with =", Record::new("a=b", "x"), 10010),
        ];
        let mut refused: BTreeMap<u32, u64> = BTreeMap::new();
        for (case, record, code) in records {
            // Every way in refuses it the same way.
            let mut errors = vec![producer.send(record.clone()).wait().unwrap_err()];
            errors.push(producer.try_send(record.clone()).map(drop).unwrap_err().0);
            errors
                .push(producer.send_blocking(record.clone(), Duration::from_secs(1)).unwrap_err());
            let seen = Arc::new(Mutex::new(None));
            let slot = seen.clone();
            producer.send_with_callback(record, move |result| {
                *slot.lock().unwrap() = Some(result.map(drop));
            });
            let called = seen.lock().unwrap().take().expect("callback ran at once");
            errors.push(called.unwrap_err());
            for error in &errors {
                assert_eq!(error.code(), code, "{case}: {error}");
            }
            *refused.entry(code).or_default() += errors.len() as u64;
        }
        producer.flush_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(producer.in_flight_count(), 0);
        close_within(&producer, Close::Blocking(Duration::from_secs(5))).unwrap();
        let late = producer.send(Record::new("s", "after close")).wait().unwrap_err();
        assert_eq!((late.clone(), late.code()), (Error::ProducerClosed, 10003));
        *refused.entry(10003).or_default() += 1;

        let stats = cluster.stats();
        assert_eq!((stats.batches, stats.records, stats.errors), (0, 0, 0), "nothing on the wire");
        assert_eq!(stats.protocol_closes, 0);
        let text = registry.encode_text();
        for (code, count) in refused {
            let series = format!(r#"data_proxy_error_count{{code="{code}",name="bad-input"}}"#);
            #[allow(clippy::cast_precision_loss)]
            let expected = count as f64;
            assert_eq!(sample(&text, &series), Some(expected), "{series}\n{text}");
        }
        let transport = run_label(&producer);
        eprintln!(
            "fault-table | {:<26} | {transport:<15} | every refusal typed and counted",
            "bad input"
        );
    }

    // Options: refused by build with the option's name, or the field's 10010.
    let endpoint: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let base = || Producer::builder().group_id("g").endpoints([endpoint]);
    let error = base().group_id("test group").build().unwrap_err();
    assert!(matches!(error, Error::InvalidField { field: Field::GroupId, .. }), "{error}");
    assert_eq!(error.code(), 10010);
    let error = base().add_column("cnt", "1").build().unwrap_err();
    assert!(matches!(error, Error::InvalidField { field: Field::AddColumnKey, .. }), "{error}");
    assert_eq!(error.code(), 10010);
    let options: [(&str, ProducerBuilder); 4] = [
        ("batching_max_size", base().batching_max_size(0)),
        ("shards", base().shards(0)),
        ("batching_max_messages", base().batching_max_messages(0)),
        ("send_timeout", base().send_timeout(Duration::ZERO)),
    ];
    for (name, builder) in options {
        let error = builder.build().unwrap_err();
        assert!(
            matches!(error, Error::InvalidConfig { option, .. } if option == name),
            "{name}: {error}"
        );
        assert_eq!(error.code(), 20001);
    }
    let absurd = [
        ("shards", base().shards(1_000_000)),
        ("send_timeout", base().send_timeout(Duration::from_secs(u64::MAX / 4))),
        ("batching_max_messages", base().batching_max_messages(usize::MAX)),
        ("max_retries", base().max_retries(u32::MAX)),
    ];
    for (name, builder) in absurd {
        let error = builder.build().unwrap_err();
        assert!(
            matches!(error, Error::InvalidConfig { option, .. } if option == name),
            "{name}: {error}"
        );
    }
}

/// Threads and open file descriptors of this process.
fn threads_and_fds() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0);
    (count("/proc/self/task"), count("/proc/self/fd"))
}

#[test]
fn produce_close_cycles_leak_no_threads_or_fds() {
    // Alone in the process: the counts are process-wide.
    let _alone = EXCLUSIVE.write().unwrap_or_else(PoisonError::into_inner);
    let cluster = cluster(2);
    // Returns the counts in the middle of the cycle.
    let cycle = |wire: Wire| {
        let producer = builder(&cluster, wire).build().unwrap();
        let load = Load::start(producer, records().min(5000), PACE / 4);
        load.wait_sent(0.5);
        let during = threads_and_fds();
        // Connections lost and made again within the cycle.
        cluster.node(0).kill_connections();
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        assert_resolved_once(&run.tally, "leak check");
        during
    };
    // The first cycles set up what lives as long as the process (registries, driver probes).
    for wire in wires() {
        cycle(wire);
    }
    let (threads, fds) = threads_and_fds();
    for _ in 0..3 {
        for wire in wires() {
            let during = cycle(wire);
            let (mut now_threads, mut now_fds) = (0, 0);
            let took =
                wait_until("threads and fds back to their count", Duration::from_secs(10), || {
                    (now_threads, now_fds) = threads_and_fds();
                    now_threads <= threads && now_fds <= fds + 2
                });
            eprintln!(
                "leak check {wire}: {threads} threads and {fds} fds before, {during:?} \
                 during, {now_threads} and {now_fds} {took:?} after close"
            );
        }
    }
}

/// How the dead nodes of [`live_node_among_dead_ones`] fail a connect.
#[derive(Debug, Clone, Copy)]
enum Dead {
    /// Nothing listens: the connect is refused at once. 10 000 of them, listed by the Manager.
    Refusing,
    /// The connect never completes (it times out after `conn_timeout`). 40 of them, static.
    BlackHole,
}

/// Where the one live node is in the list.
#[derive(Debug, Clone, Copy)]
enum Position {
    First,
    Middle,
    Last,
}

/// Dead nodes on loopback, and the sockets that keep them dead while the value lives.
struct DeadNodes {
    addrs: Vec<SocketAddr>,
    _sockets: Vec<socket2::Socket>,
    _fill: Vec<std::net::TcpStream>,
}

impl DeadNodes {
    /// `count` refusing nodes: distinct 127.1.x.y addresses on one port that a bound,
    /// non-listening socket on 127.0.0.1 reserves (nobody can listen on it for every address).
    fn refusing(count: usize) -> DeadNodes {
        use socket2::{Domain, Socket, Type};
        let reserved = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        reserved.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        let port = reserved.local_addr().unwrap().as_socket().unwrap().port();
        let addrs: Vec<SocketAddr> = (0..count)
            .map(|i| {
                let [_, _, x, y] = u32::try_from(i).unwrap().to_be_bytes();
                SocketAddr::from(([127, 1, x, y], port))
            })
            .collect();
        let refused = std::net::TcpStream::connect_timeout(&addrs[0], Duration::from_secs(1));
        let error = refused.expect_err("a dead node accepted a connection");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
        DeadNodes { addrs, _sockets: vec![reserved], _fill: Vec::new() }
    }

    /// `count` black holes: listeners with a backlog of 1 that never accept, their accept queue
    /// filled by two connections, so the kernel drops every further SYN and a connect hangs.
    fn black_holes(count: usize) -> DeadNodes {
        use socket2::{Domain, Socket, Type};
        let (mut addrs, mut sockets, mut fill) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..count {
            let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
            listener.listen(1).unwrap();
            let addr = listener.local_addr().unwrap().as_socket().unwrap();
            for _ in 0..2 {
                fill.push(
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap(),
                );
            }
            addrs.push(addr);
            sockets.push(listener);
        }
        let hung = std::net::TcpStream::connect_timeout(&addrs[0], Duration::from_millis(200));
        let error = hung.expect_err("a black hole accepted a connection");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        DeadNodes { addrs, _sockets: sockets, _fill: fill }
    }
}

/// One live node among dead ones that are listed too (as real Managers list nodes whose
/// heartbeats stopped): every shard must find it and every record must be acked, wherever it
/// is in the list.
fn live_node_among_dead_ones(dead: Dead, position: Position) {
    let _run = shared_run();
    // 2 000 in `cargo test` (finding the node is what is tested); `INLONG_FAULT_RECORDS` as
    // for every scenario when set.
    let records =
        if std::env::var_os("INLONG_FAULT_RECORDS").is_some() { records() } else { 2_000 };
    for wire in wires() {
        let cluster = cluster(1);
        let nodes = match dead {
            Dead::Refusing => DeadNodes::refusing(10_000),
            Dead::BlackHole => DeadNodes::black_holes(40),
        };
        let mut list = nodes.addrs.clone();
        let at = match position {
            Position::First => 0,
            Position::Middle => list.len() / 2,
            Position::Last => list.len(),
        };
        list.insert(at, cluster.node(0).addr());
        let builder = match dead {
            Dead::Refusing => {
                cluster.manager().set_nodes(&list);
                builder(&cluster, wire)
            }
            Dead::BlackHole => wire
                .apply(Producer::builder())
                .group_id("test_group")
                .endpoints(list)
                .shards(2)
                .max_pending_messages(records.max(204_800))
                .conn_timeout(Duration::from_millis(300)),
        };
        let started = Instant::now();
        let producer = builder.build().unwrap();
        let load = Load::start(producer, records, PACE / 4);
        let run = load.finish(Close::Blocking(Duration::from_secs(15)));
        let scenario = format!("live {position:?} of {} {dead:?}", nodes.addrs.len() + 1);
        let summary = assert_contract(&cluster, &run, &scenario);
        assert_eq!(summary.failed, 0, "{scenario}: {:?}", summary.kinds);
        eprintln!("{scenario} on {}: {:?}", run.transport, started.elapsed());
    }
}

#[test]
fn a_live_node_first_among_10_000_refusing_ones_gets_every_record() {
    live_node_among_dead_ones(Dead::Refusing, Position::First);
}

#[test]
fn a_live_node_in_the_middle_of_10_000_refusing_ones_gets_every_record() {
    live_node_among_dead_ones(Dead::Refusing, Position::Middle);
}

#[test]
fn a_live_node_last_of_10_000_refusing_ones_gets_every_record() {
    live_node_among_dead_ones(Dead::Refusing, Position::Last);
}

#[test]
fn a_live_node_first_among_40_black_holes_gets_every_record() {
    live_node_among_dead_ones(Dead::BlackHole, Position::First);
}

#[test]
fn a_live_node_in_the_middle_of_40_black_holes_gets_every_record() {
    live_node_among_dead_ones(Dead::BlackHole, Position::Middle);
}

#[test]
fn a_live_node_last_of_40_black_holes_gets_every_record() {
    live_node_among_dead_ones(Dead::BlackHole, Position::Last);
}
