//! The fault suite (issue 8): the producer under every failure the local DataProxy + Manager can
//! inject, on both I/O drivers. Each scenario pushes a steady stream of records (a [`Load`]: 8
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
//! Set `INLONG_SKIP_IO_URING=1` to run the epoll half only where io_uring is blocked.

mod common;
use common::{cluster, transports};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inlong_dataproxy::Field;
use inlong_dataproxy::{
    DeliveryFuture, DeliveryReport, Error, MetricsRegistry, Producer, ProducerBuilder, Record,
    StreamId, Transport,
};
use inlong_dataproxy_testkit::{DataProxyNode, ErrorInjection, LocalCluster, ReplyCorruption};

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

fn builder(cluster: &LocalCluster, transport: Transport) -> ProducerBuilder {
    Producer::builder()
        .group_id("test_group")
        .manager_url(cluster.manager_url())
        .node_list_cache(false)
        .transport(transport)
        .shards(2)
        .update_interval(Duration::from_millis(200))
        // Room for the whole load, so an outage never turns into QueueFull.
        .max_pending_messages(records().max(204_800))
}

fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
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
enum Close {
    /// `close_blocking(deadline)`.
    Blocking(Duration),
    /// `close(deadline).await` on a current-thread tokio runtime.
    Async(Duration),
}

/// A finished run, for [`assert_contract`].
struct Finished {
    tally: Arc<Tally>,
    transport: &'static str,
    elapsed: Duration,
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
        wait_for(&format!("{target} records sent"), PACE * 10, || self.tally.issued() >= target);
    }

    /// Waits for the last record to be sent, closes the producer (which must succeed: nothing
    /// may be left at the deadline), and hands the tally over.
    fn finish(mut self, close: Close) -> Finished {
        if let Some(thread) = self.thread.take() {
            wait_for("the load to send everything", PACE * 10, || thread.is_finished());
            thread.join().expect("the load thread");
        }
        let transport = self.producer.transport();
        close_within(&self.producer, close).expect("nothing left undelivered at close");
        wait_for("every callback", Duration::from_secs(1), || {
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
        "fault-table | {scenario:<26} | {:<8} | sent {:>8} | acked {:>8} | failed {:>7} | \
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

// (1)
#[test]
fn a_node_killed_mid_stream_loses_nothing() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        load.wait_sent(0.33);
        wait_for("both nodes used", Duration::from_secs(10), || {
            cluster.nodes().iter().all(|node| node.stats().records > 0)
        });
        cluster.node(0).stop();
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "node killed");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
    }
}

// (2)
#[test]
fn a_node_restarted_mid_stream_loses_nothing() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        load.wait_sent(0.25);
        cluster.node(0).stop();
        load.wait_sent(0.5);
        cluster.node(0).restart().unwrap();
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "node restarted");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
    }
}

// (3)
#[test]
fn all_nodes_down_then_back_records_wait_and_are_delivered() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
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
        let run = load.finish(Close::Blocking(Duration::from_secs(20)));
        let summary = assert_contract(&cluster, &run, "all nodes down, then back");
        assert_eq!(summary.failed, 0, "none fails within the 30 s send timeout");
        assert!(
            summary.max_latency >= outage / 2,
            "records waited out the {outage:?} outage: max latency {:?}",
            summary.max_latency
        );
    }
}

// (3b)
#[test]
fn repeated_short_outages_of_every_node_do_not_slow_reconnects_for_good() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        // A delivery bound of ~6 s: a shard that waited 5 s per connect after an outage (its
        // failure streak grown by the outages before, although each connection then worked)
        // fails batches.
        let producer = builder(&cluster, transport)
            .send_timeout(Duration::from_secs(2))
            .max_retries(1)
            .build()
            .unwrap();
        let load = Load::start(producer, records(), Duration::from_secs(12));
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
        let run = load.finish(Close::Blocking(Duration::from_secs(20)));
        let summary = assert_contract(&cluster, &run, "repeated outages of all nodes");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
    }
}

// (4)
#[test]
fn acks_slower_than_send_timeout_fail_with_ack_timeout_or_land_on_a_retry() {
    let _run = shared_run();
    for transport in transports() {
        // With retries a late ack of an earlier attempt still delivers the batch; without, every
        // attempt is over before its ack arrives.
        for (max_retries, scenario) in [(2, "slow acks, 2 retries"), (0, "slow acks, no retry")] {
            let cluster = cluster(1);
            cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_millis(400));
            let producer = builder(&cluster, transport)
                .send_timeout(Duration::from_millis(200))
                .max_retries(max_retries)
                .build()
                .unwrap();
            let load = Load::start(producer, records(), PACE);
            let run = load.finish(Close::Blocking(Duration::from_secs(10)));
            let summary = assert_contract(&cluster, &run, scenario);
            assert_failures_only(&summary, &["10001 SendTimeout<-AckTimeout"]);
            if max_retries == 0 {
                assert!(summary.failed > 0, "single attempts time out");
            } else {
                assert!(summary.retried > 0, "first attempts time out");
            }
        }
    }
}

// (5)
#[test]
fn retryable_codes_1_2_114_are_retried_then_delivered() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(1);
        let node = cluster.node(0);
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        for (code, at) in [(1, 0.2), (2, 0.45), (114, 0.7)] {
            load.wait_sent(at);
            node.update_faults(|f| f.errors = Some(ErrorInjection::Next { code, count: 5 }));
            wait_for(&format!("five batches answered {code}"), Duration::from_secs(10), || {
                node.faults().errors.is_none()
            });
        }
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "codes 1, 2, 114");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
        assert_eq!(cluster.stats().errors, 15);
        assert!(summary.retried > 0);
    }
}

// (6)
#[test]
fn code_115_fails_every_record_once_without_retrying() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| {
            f.errors = Some(ErrorInjection::Fraction { code: 115, fraction: 1.0 });
        });
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        let run = load.finish(Close::Async(Duration::from_secs(5)));
        let summary = assert_contract(&cluster, &run, "code 115");
        let every = BTreeMap::from([("10011 Server(115)".to_owned(), summary.sent)]);
        assert_eq!(summary.kinds, every);
        assert_eq!(summary.retried, 0, "115 is not retried");
        assert_eq!(cluster.stats().records, 0);
    }
}

/// (7) and (8): broken replies for the middle third of the run, then normal ones.
fn broken_replies(corruption: ReplyCorruption, scenario: &str) {
    for transport in transports() {
        let cluster = cluster(1);
        let node = cluster.node(0);
        let producer = builder(&cluster, transport).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        load.wait_sent(0.33);
        let connections = node.stats().connections;
        node.update_faults(|f| f.corrupt_replies = Some(corruption));
        wait_for("connections closed and opened again", Duration::from_secs(10), || {
            node.stats().connections >= connections + 2
        });
        load.wait_sent(0.66);
        node.update_faults(|f| f.corrupt_replies = None);
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, scenario);
        assert_failures_only(&summary, &["10001 SendTimeout<-ConnectionLost"]);
        assert!(summary.retried > 0, "batches answered with broken replies were retried");
    }
}

// (7)
#[test]
fn garbage_replies_close_the_connection_and_batches_are_retried() {
    let _run = shared_run();
    broken_replies(ReplyCorruption::Garbage, "garbage replies");
}

// (8)
#[test]
fn an_oversized_reply_frame_closes_the_connection_and_batches_are_retried() {
    let _run = shared_run();
    broken_replies(ReplyCorruption::Oversized, "oversized reply frame");
}

// (9)
#[test]
fn the_manager_down_at_start_and_during_the_run() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(1);
        let manager = cluster.manager();
        let dir = std::env::temp_dir()
            .join(format!("inlong-faults-{}-{transport:?}", std::process::id()));
        let cache = dir.join("nodes.json");
        let cached = |cluster: &LocalCluster| {
            builder(cluster, transport).node_list_cache(true).node_list_cache_path(&cache)
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
        let error = builder(&cluster, transport)
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
        wait_for("a refresh from the Manager", Duration::from_secs(10), || {
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

// (10)
#[test]
fn endpoint_list_changes_under_load_lose_and_resend_nothing() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        let producer = builder(&cluster, transport).build().unwrap();
        let mut load = Load::start(producer, records(), PACE);
        load.wait_sent(0.25);
        let added = cluster.add_node().unwrap();
        wait_for("a connection to the added node", Duration::from_secs(10), || {
            added.open_connections() > 0
        });
        let removed = cluster.node(0);
        cluster.remove_node(removed.addr());
        wait_for("connections drained off the removed node", Duration::from_secs(10), || {
            removed.open_connections() == 0
        });
        let frozen = removed.stats().records;
        wait_for("traffic on the added node", Duration::from_secs(10), || {
            let endpoints = load.probe(16);
            assert!(!endpoints.contains(&removed.addr()), "a removed node acked a probe");
            added.stats().records > 0
        });
        let run = load.finish(Close::Blocking(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "endpoint list changes");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
        assert_eq!(summary.duplicates, 0, "drained moves resend nothing");
        assert_eq!(removed.stats().records, frozen, "the removed node got traffic after its drain");
    }
}

// (11)
#[test]
fn close_under_full_load_returns_within_a_short_deadline() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(1);
        // Acks slower than the close deadline: a backlog is certain to be left at close.
        cluster.node(0).update_faults(|f| f.ack_delay = Duration::from_secs(1));
        let total = records();
        let producer = Arc::new(
            builder(&cluster, transport)
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
        wait_for("the queue full and senders blocked", Duration::from_secs(20), || {
            tally.issued() >= total / 4 && producer.in_flight_count() > 0
        });
        let result = close_within(&producer, Close::Blocking(Duration::from_millis(300)));
        let closed_at = Instant::now();
        let mut futures = Vec::new();
        for sender in senders {
            wait_for("senders released by close", Duration::from_secs(2), || sender.is_finished());
            futures.extend(sender.join().unwrap());
        }
        eprintln!("senders released {:?} after close returned", closed_at.elapsed());
        for (i, future) in futures {
            assert!(future.is_resolved(), "record {i} unresolved after close returned");
            tally.resolve(i, future.wait());
        }
        let run = Finished { tally, transport: producer.transport(), elapsed: started.elapsed() };
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

// (12)
#[test]
fn a_silent_node_loses_its_traffic_to_the_healthy_one_via_ack_timeouts() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(2);
        let (silent, healthy) = (cluster.node(0), cluster.node(1));
        let producer =
            builder(&cluster, transport).send_timeout(Duration::from_millis(500)).build().unwrap();
        let load = Load::start(producer, records(), PACE);
        load.wait_sent(0.33);
        wait_for("both nodes used", Duration::from_secs(10), || {
            silent.stats().records > 0 && healthy.stats().records > 0
        });
        silent.update_faults(|f| f.silent = true);
        let run = load.finish(Close::Async(Duration::from_secs(10)));
        let summary = assert_contract(&cluster, &run, "silent node");
        assert_eq!(summary.failed, 0, "{:?}", summary.kinds);
        assert!(silent.stats().dropped > 0, "the silent node swallowed batches");
        assert!(summary.retried > 0, "they were retried on the healthy node");
        assert_eq!(summary.duplicates, 0, "a silent node accepts nothing");
    }
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

/// Sends a backlog of [`BACKLOG_RECORDS`] 1 000-byte records over [`PACE`] to a cluster whose
/// only node `fault` has broken, with short timeouts in the defaults' proportions
/// (`send_timeout` 1 s, four retries, heartbeats every 2 s answered within 300 ms); checks the
/// contract, that nothing is acked, and that every record's outcome arrives within
/// [`delivery_bound`] (+ [`BOUND_SLACK`]) of its send, on both drivers. `check` then looks at
/// the node and the failure kinds.
fn backlog_fails_within_the_bound(
    scenario: &str,
    fault: impl Fn(&DataProxyNode),
    check: impl Fn(&DataProxyNode, &BTreeMap<String, u64>),
) {
    let (send_timeout, max_retries) = (Duration::from_secs(1), 4);
    let bound = delivery_bound(send_timeout, max_retries);
    for transport in transports() {
        let cluster = cluster(1);
        let node = cluster.node(0);
        fault(&node);
        let producer = builder(&cluster, transport)
            .send_timeout(send_timeout)
            .max_retries(max_retries)
            .heartbeat_interval(Duration::from_secs(2))
            .heartbeat_timeout(Duration::from_millis(300))
            // The padded payloads compress twentyfold: sent as they are, they fill the sockets.
            .compression(false)
            .build()
            .unwrap();
        let load = Load::start_padded(producer, BACKLOG_RECORDS, PACE, BACKLOG_RECORD_BYTES);
        // Room for late outcomes, so that how late they are is measured rather than cut off.
        let run = load.finish(Close::Blocking(bound * 4));
        let summary = assert_contract(&cluster, &run, scenario);
        assert_eq!(summary.acked, 0, "{scenario}: the node accepts nothing");
        let worst = run.tally.max_outcome();
        let late = worst.saturating_sub(bound);
        eprintln!(
            "{scenario} ({transport:?}): worst outcome {worst:?} after send, bound {bound:?}, \
             {late:?} past it; run {:?}",
            run.elapsed
        );
        assert!(
            worst <= bound + BOUND_SLACK,
            "{scenario} ({transport:?}): a record's outcome came {worst:?} after its send, \
             {late:?} past the bound of {bound:?}"
        );
        let causes = ["AckTimeout", "NoEndpoints", "ConnectionLost"]
            .map(|cause| format!("10001 SendTimeout<-{cause}"));
        assert!(summary.kinds.keys().all(|kind| causes.contains(kind)), "{:?}", summary.kinds);
        check(&node, &summary.kinds);
    }
}

// (13)
#[test]
fn a_node_that_never_reads_fails_every_record_of_a_backlog_within_the_bound() {
    let _run = shared_run();
    backlog_fails_within_the_bound(
        "node never reads",
        |node| node.update_faults(|f| f.stall_reads = true),
        |node, kinds| {
            let stats = node.stats();
            assert!(stats.connections > 0, "connected");
            assert_eq!((stats.batches, stats.dropped, stats.heartbeats), (0, 0, 0), "read nothing");
            // Waiting on that node: for an ack, or behind its full socket.
            assert!(kinds.contains_key("10001 SendTimeout<-AckTimeout"), "{kinds:?}");
        },
    );
}

// (14)
#[test]
fn a_silent_node_or_none_fails_every_record_of_a_backlog_within_the_bound() {
    let _run = shared_run();
    backlog_fails_within_the_bound(
        "silent node, backlog",
        |node| node.update_faults(|f| f.silent = true),
        |node, kinds| {
            assert!(node.stats().dropped > 0, "the node swallowed batches");
            assert!(kinds.contains_key("10001 SendTimeout<-AckTimeout"), "{kinds:?}");
        },
    );
    backlog_fails_within_the_bound("no node up, backlog", DataProxyNode::stop, |node, kinds| {
        assert_eq!(node.stats().connections, 0);
        assert_eq!(kinds.keys().collect::<Vec<_>>(), ["10001 SendTimeout<-NoEndpoints"]);
    });
}

/// The value of the sample whose line starts with `series` (labels in Prometheus' sorted order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn bad_input_gets_typed_errors_and_never_reaches_the_wire() {
    let _run = shared_run();
    for transport in transports() {
        let cluster = cluster(1);
        let registry = MetricsRegistry::new(prometheus::Registry::new());
        let producer = builder(&cluster, transport)
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
        let transport = producer.transport();
        eprintln!(
            "fault-table | {:<26} | {transport:<8} | every refusal typed and counted",
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
    let cycle = |transport: Transport| {
        let producer = builder(&cluster, transport).build().unwrap();
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
    for transport in transports() {
        cycle(transport);
    }
    let (threads, fds) = threads_and_fds();
    for _ in 0..3 {
        for transport in transports() {
            let during = cycle(transport);
            let (mut now_threads, mut now_fds) = (0, 0);
            let took =
                wait_for("threads and fds back to their count", Duration::from_secs(10), || {
                    (now_threads, now_fds) = threads_and_fds();
                    now_threads <= threads && now_fds <= fds + 2
                });
            eprintln!(
                "leak check {transport:?}: {threads} threads and {fds} fds before, {during:?} \
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
    for transport in transports() {
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
                builder(&cluster, transport)
            }
            Dead::BlackHole => Producer::builder()
                .group_id("test_group")
                .endpoints(list)
                .transport(transport)
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
