//! The I/O shell: one pinned thread per shard, running a compio runtime (io_uring, or epoll where
//! io_uring is not allowed) around that shard's [`ShardEngine`].
//!
//! The shard owns its engine, its connections and its buffers outright, and its main loop is the
//! engine's only driver. Each turn it takes what the connections' reader and writer tasks reported
//! (bytes read, writes done, connections ended: [`transport::ConnIo`]) and hands it to the engine,
//! delivers the batches the engine resolved ([`deliver`]: the budget given back, the callbacks run,
//! the futures woken, the metrics counted), takes sealed batches from the accumulator (one lock per
//! wake-up, not per record) for the engine to encode, hands each connection's coalesced bytes to
//! its writer task, acts on the engine's events (close a connection, with a typed
//! [`CloseReason`]), and sleeps until the next deadline or wake-up. Everything that decides
//! anything lives in the engine; this module moves bytes, time and outcomes.

mod endpoints;
pub mod mailbox;
mod transport;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use mailbox::Waiting;
pub use mailbox::{Command, ShardShared};
pub use transport::{probe_driver, Driver};

use crate::budget::PendingBudget;
use crate::buffers::FramePool;
use crate::completion::run_callback;
use crate::engine::{
    CloseReason, ConnId, EngineConfig, EngineCounts, EngineEvent, Resolved, SealedBatch,
    ShardEngine,
};
use crate::error::{codes, Error};
use crate::metrics::ShardMetrics;
use endpoints::{AttemptId, EndpointPlan, Placement};
use transport::{connect, ConnIo, ConnTasks, Inbox, SocketSettings};

/// Everything a shard thread needs to start.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Shard index (`wid`).
    pub index: usize,
    /// The producer's ID (see [`on_shard_of`]).
    pub producer_id: u64,
    /// How long a record may wait for room in the pending budget (blocking mode).
    pub waiting_timeout: Duration,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The frame buffers all shards share.
    pub frames: Arc<FramePool>,
    /// DataProxy nodes, in the order the Manager gave them.
    pub endpoints: Vec<SocketAddr>,
    /// Bound on each connect.
    pub conn_timeout: Duration,
    /// `SO_SNDBUF`.
    pub socket_send_buffer_size: usize,
    /// `SO_RCVBUF`.
    pub socket_recv_buffer_size: usize,
    /// Replace connections older than this.
    pub max_conn_lifetime: Option<Duration>,
    /// Replace each connection after a random 30–80 s.
    pub conn_rotation: bool,
    /// Told when this shard has no connection left and a connect just failed: the control thread
    /// then asks the Manager at once instead of at the next `update_interval`.
    pub refresh_now: Option<Arc<tokio::sync::Notify>>,
    /// The I/O driver, probed once for the whole producer.
    pub driver: Driver,
    /// The core to pin the thread to.
    pub core: Option<core_affinity::CoreId>,
    /// This shard's metric handles.
    pub metrics: ShardMetrics,
}

thread_local! {
    /// The [`shard_key`] of the shard running on this thread (0: not a shard thread).
    static SHARD_OF: Cell<u64> = const { Cell::new(0) };
}

/// Names shard `index` of producer `producer_id` (never 0).
pub(crate) fn shard_key(producer_id: u64, index: usize) -> u64 {
    producer_id << 16 | (index as u64 & 0xffff)
}

/// True on a shard thread of producer `producer_id`: in one of its delivery callbacks, where
/// waiting for that producer's shards would wait for the caller itself.
pub(crate) fn on_shard_of(producer_id: u64) -> bool {
    SHARD_OF.with(Cell::get) >> 16 == producer_id
}

/// True on the thread of the shard named `key` ([`shard_key`]).
pub(crate) fn on_shard(key: u64) -> bool {
    SHARD_OF.with(Cell::get) == key
}

/// Starts the shard thread. It runs until told to close (or abort) through `shared`.
pub fn spawn(
    settings: ShardSettings,
    shared: Arc<ShardShared>,
    budget: Arc<PendingBudget>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("inlong-shard-{}", settings.index)).spawn(move || {
        SHARD_OF.with(|key| key.set(shard_key(settings.producer_id, settings.index)));
        if let Some(core) = settings.core {
            if !core_affinity::set_for_current(core) {
                tracing::debug!(shard = settings.index, "could not pin the shard thread");
            }
        }
        let runtime = match transport::runtime(settings.driver) {
            Ok(runtime) => runtime,
            Err(error) => {
                // Probed a moment ago, so this is unexpected; fail the records, never hang them.
                tracing::error!(shard = settings.index, %error, "shard runtime failed to start");
                shared.stop(&Error::Transport(error.to_string()), &budget, &settings.metrics);
                return;
            }
        };
        let metrics = settings.metrics.clone();
        runtime.block_on(run(settings, shared.clone(), budget.clone()));
        // Whatever a sender queued as the shard ended fails now (see `ShardShared::stop`).
        shared.stop(&Error::ProducerClosed, &budget, &metrics);
    })
}

/// A finished connect attempt: its id, its node and its result.
type Connected = (AttemptId, SocketAddr, std::io::Result<ConnTasks>);

struct Shell {
    settings: ShardSettings,
    /// Driven by this loop alone; the connections' tasks report through `inbox`.
    engine: ShardEngine,
    shared: Arc<ShardShared>,
    conns: HashMap<ConnId, ConnTasks>,
    /// Which connections serve the shard's slots, and which connects to start.
    plan: EndpointPlan,
    /// When each serving connection is replaced (rotation or `max_conn_lifetime`), and why.
    retire_at: HashMap<ConnId, (Instant, CloseReason)>,
    /// Draws the rotation times: seeded differently per shard and per run.
    rng: fastrand::Rng,
    inbox: Rc<Inbox>,
    connected: Rc<RefCell<Vec<Connected>>>,
    sealed: Vec<SealedBatch>,
    budget: Arc<PendingBudget>,
    /// Wakes this shard; registered with the budget while records wait for room.
    waker: Waker,
}

async fn run(settings: ShardSettings, shared: Arc<ShardShared>, budget: Arc<PendingBudget>) {
    let engine = ShardEngine::new(Instant::now(), settings.engine.clone(), settings.frames.clone());
    let plan = EndpointPlan::new(settings.index, settings.endpoints.clone());
    let sealed = crate::buffers::resident_vec(settings.engine.plan.batches);
    let waker = shared.waker();
    let mut shell = Shell {
        settings,
        engine,
        shared,
        conns: HashMap::new(),
        plan,
        retire_at: HashMap::new(),
        rng: fastrand::Rng::new(),
        inbox: Rc::default(),
        connected: Rc::default(),
        sealed,
        budget,
        waker,
    };
    shell.main_loop().await;
    shell.shutdown();
}

impl Shell {
    async fn main_loop(&mut self) {
        let mut closing: Option<Instant> = None;
        loop {
            let now = Instant::now();
            for command in self.shared.take_commands() {
                match command {
                    Command::Flush => self.shared.accumulator().seal_all(),
                    Command::Close { deadline } => {
                        self.shared.accumulator().close();
                        closing = Some(closing.map_or(deadline, |d| d.min(deadline)));
                    }
                    Command::SetEndpoints(endpoints) => {
                        tracing::info!(shard = self.settings.index, ?endpoints, "new node list");
                        self.plan.set_endpoints(endpoints, now);
                    }
                    Command::Purge => {
                        let metrics = self.settings.metrics.producer();
                        self.shared.fail_waiting(&Error::Purged, &self.budget, metrics);
                        self.shared.accumulator().seal_all();
                        self.take_sealed(now);
                        self.engine.purge(&Error::Purged);
                        // Delivered before `purge` returns to its caller.
                        self.deliver_resolved(now);
                        self.shared.purge_done();
                        self.budget.wake_all();
                    }
                    Command::Abort => {
                        self.shared.accumulator().close();
                        let metrics = self.settings.metrics.producer();
                        self.shared.fail_waiting(&Error::ProducerClosed, &self.budget, metrics);
                        self.take_sealed(now);
                        self.engine.fail_all(&Error::ProducerClosed);
                        self.deliver_resolved(now);
                        return;
                    }
                }
            }
            // Acks read since the last turn give their room back before waiting records look.
            self.handle_io(now);
            self.deliver_resolved(now);
            let waiting = self.admit_waiting(now);
            let linger = self.take_sealed(now);
            self.handle_connections(now);
            if self.engine.poll_timeout().is_some_and(|at| at <= now) {
                self.engine.handle_timeout(now);
            }
            self.handle_events(now);
            self.rebalance();
            self.reconnect(now);
            self.transmit(now);
            self.deliver_resolved(now);

            if let Some(deadline) = closing {
                let idle = self.engine.inflight() == 0 && self.shared.waiting_len() == 0;
                if idle {
                    return;
                }
                if now >= deadline {
                    let waiting = self.shared.waiting_len() as u64;
                    let undelivered = self.engine.pending_records() + waiting;
                    tracing::warn!(
                        shard = self.settings.index,
                        undelivered,
                        "close deadline reached"
                    );
                    self.shared.add_failed_at_close(undelivered);
                    let error = Error::FlushTimeout { undelivered };
                    let metrics = self.settings.metrics.producer();
                    self.shared.fail_waiting(&error, &self.budget, metrics);
                    self.engine.fail_all(&error);
                    self.deliver_resolved(now);
                    return;
                }
            }

            let mut wake_at = [
                waiting,
                linger,
                self.engine.poll_timeout(),
                closing,
                self.plan.next_deadline(now),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(retire) = self.retire_at.values().map(|(at, _)| *at).min() {
                wake_at = Some(wake_at.map_or(retire, |at| at.min(retire)));
            }
            transport::wait(&self.shared, wake_at).await;
        }
    }

    /// Moves records waiting for room into the accumulator while there is room, fails those that
    /// waited too long, and has the shard woken when room comes back; returns when the oldest
    /// waiting record times out.
    fn admit_waiting(&mut self, now: Instant) -> Option<Instant> {
        if self.shared.waiting_len() == 0 {
            return None;
        }
        let metrics = self.settings.metrics.producer();
        if let Some(bytes) = self.shared.admit_waiting(&self.budget, metrics) {
            // Room comes back when any shard resolves a batch: be woken then.
            if !self.budget.register(&self.waker, |budget| budget.is_full_for(bytes)) {
                self.shared.notify();
            }
        }
        let timeout = self.settings.waiting_timeout;
        self.shared.expire_waiting(now, timeout, &self.budget, metrics)
    }

    /// Seals lingering batches, moves sealed ones into the engine; returns the next linger
    /// deadline.
    fn take_sealed(&mut self, now: Instant) -> Option<Instant> {
        let linger = {
            let mut accumulator = self.shared.accumulator();
            accumulator.seal_expired(now);
            accumulator.take_sealed(&mut self.sealed);
            for body in self.engine.take_spare_bodies() {
                accumulator.recycle(body);
            }
            for completion in self.engine.take_spare_completions() {
                accumulator.recycle_completion(completion);
            }
            accumulator.next_deadline()
        };
        if !self.sealed.is_empty() {
            let dt_ms = unix_ms();
            for batch in self.sealed.drain(..) {
                self.engine.enqueue(now, batch, dt_ms);
            }
        }
        linger
    }

    /// New connections join the engine (or are closed when not needed); lost ones leave it
    /// (their batches are retried); the engine learns of new connect failures.
    fn handle_connections(&mut self, now: Instant) {
        let connected = std::mem::take(&mut *self.connected.borrow_mut());
        for (id, endpoint, result) in connected {
            match result {
                Ok(tasks) => match self.plan.connect_succeeded_at(id, now) {
                    Placement::Serve { slot, replaces } => {
                        tracing::debug!(shard = self.settings.index, conn = id, %endpoint, slot, "connected");
                        self.engine.add_conn(now, id, endpoint);
                        self.settings.metrics.connections_delta(1);
                        self.conns.insert(id, tasks);
                        self.schedule_retirement(id, now);
                        if slot == 0 {
                            self.engine.prefer(id);
                        }
                        if let Some(old) = replaces {
                            tracing::info!(
                                shard = self.settings.index,
                                conn = old,
                                %endpoint,
                                "moving a connection back to its preferred node"
                            );
                            self.retire_at.remove(&old);
                            self.engine.drain_conn(old, CloseReason::MovedHome);
                        }
                    }
                    // Another connect got there first, or the node left the list.
                    Placement::Close => tasks.close(),
                },
                Err(error) => {
                    tracing::warn!(shard = self.settings.index, %endpoint, %error, "connect failed");
                    self.settings.metrics.error_event(codes::NEW_CONN_FAILED);
                    self.plan.connect_failed(id, now, connect_failure_reason(&error));
                    self.ask_refresh_if_stranded();
                }
            }
        }
        let due: Vec<(ConnId, CloseReason)> = self
            .retire_at
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(conn, (_, reason))| (*conn, reason.clone()))
            .collect();
        for (conn, reason) in due {
            self.drain(conn, reason);
        }
        if let Some(causes) = self.plan.take_connect_failures() {
            self.engine.set_connect_failures(causes);
        }
    }

    /// Every node is failing for this shard: maybe the list is stale, ask the Manager now.
    fn ask_refresh_if_stranded(&self) {
        if let (true, Some(refresh)) = (self.plan.stranded(), &self.settings.refresh_now) {
            refresh.notify_one();
        }
    }

    /// Picks when a new connection is replaced: a random 30–80 s (rotation) or
    /// `max_conn_lifetime`, whichever comes first.
    fn schedule_retirement(&mut self, conn: ConnId, now: Instant) {
        let mut retire: Option<(Instant, CloseReason)> = None;
        if self.settings.conn_rotation {
            let after = Duration::from_millis(self.rng.u64(30_000..80_000));
            retire = Some((now + after, CloseReason::Rotation));
        }
        if let Some(lifetime) = self.settings.max_conn_lifetime {
            let at = now + lifetime;
            if retire.as_ref().is_none_or(|(other, _)| at < *other) {
                retire = Some((at, CloseReason::LifetimeReached));
            }
        }
        if let Some(retire) = retire {
            self.retire_at.insert(conn, retire);
        }
    }

    /// Stops giving `conn` new batches; it closes once its replies are in, and its slot
    /// reconnects at once (to its preferred node, or else to the same one).
    fn drain(&mut self, conn: ConnId, reason: CloseReason) {
        self.retire_at.remove(&conn);
        self.engine.drain_conn(conn, reason);
        self.plan.released(conn);
    }

    fn drop_conn(&mut self, now: Instant, conn: ConnId, reason: &CloseReason) {
        let Some(tasks) = self.conns.remove(&conn) else { return };
        tracing::debug!(shard = self.settings.index, conn, endpoint = %tasks.endpoint, %reason, "connection closed");
        tasks.close();
        self.settings.metrics.connections_delta(-1);
        let (update_code, error_code) = reason.codes();
        self.settings.metrics.conn_updated(update_code);
        if let Some(code) = error_code {
            self.settings.metrics.error_event(code);
        }
        self.engine.conn_lost(now, conn, reason);
        self.retire_at.remove(&conn);
        // A connection that broke (not one we drained): its node is quarantined.
        if self.plan.lost(conn, now) {
            self.ask_refresh_if_stranded();
        }
    }

    /// Moves slots off nodes that left the list, retires surplus slots, and lets the slots
    /// trade places when the other one serves the primary's preferred node. (A slot goes back
    /// to its preferred node through a probe connect: see [`Shell::handle_connections`].)
    fn rebalance(&mut self) {
        if let Some(primary) = self.plan.take_primary_swap() {
            self.engine.prefer(primary);
        }
        for conn in self.plan.take_misplaced() {
            self.retire_at.remove(&conn);
            tracing::info!(
                shard = self.settings.index,
                conn,
                "moving a connection to another node"
            );
            self.engine.drain_conn(conn, CloseReason::Rebalanced);
        }
    }

    /// Starts the connects the plan wants; each reports back through `connected`.
    fn reconnect(&mut self, now: Instant) {
        for attempt in self.plan.due_connects(now) {
            let (id, endpoint) = (attempt.id, attempt.endpoint);
            // The new reader's two buffers, from the engine's pool: reconnecting does not
            // allocate, and neither does a read.
            while self.inbox.read_buffers.borrow().len() < 2 {
                let buf = self.engine.read_buffer();
                self.inbox.read_buffers.borrow_mut().push(buf);
            }
            let job = connect(
                id,
                endpoint,
                SocketSettings::from(&self.settings),
                self.shared.clone(),
                self.inbox.clone(),
            );
            let connected = self.connected.clone();
            let shared = self.shared.clone();
            compio::runtime::spawn(async move {
                let result = job.await;
                connected.borrow_mut().push((id, endpoint, result));
                shared.notify();
            })
            .detach();
        }
    }

    /// Hands the engine what the connections' tasks read and wrote since the last turn, in
    /// order, and drops the connections that ended.
    fn handle_io(&mut self, now: Instant) {
        let mut reports = std::mem::take(&mut *self.inbox.reports.borrow_mut());
        for io in reports.drain(..) {
            match io {
                ConnIo::Read { conn, mut buf } => {
                    self.engine.on_bytes(now, conn, &buf);
                    buf.clear();
                    self.spare_read_buffer(buf);
                }
                ConnIo::Wrote { conn, buf } => self.engine.write_done(now, conn, buf),
                ConnIo::ReadEnded { conn, reason, buf } => {
                    self.spare_read_buffer(buf);
                    self.drop_conn(now, conn, &reason);
                }
                ConnIo::WriteFailed { conn, reason, buf } => {
                    self.engine.recycle_write_buffer(buf);
                    self.drop_conn(now, conn, &reason);
                }
            }
        }
        // The (empty) report list goes back, so the tasks' pushes reuse its room.
        let mut inbox = self.inbox.reports.borrow_mut();
        if inbox.is_empty() {
            *inbox = reports;
        }
    }

    /// Keeps a read buffer for the readers' next reads (a reader swaps the buffer it filled for
    /// a spare), at most two per connection; the rest go back to the engine's pool.
    fn spare_read_buffer(&mut self, buf: Vec<u8>) {
        let mut spares = self.inbox.read_buffers.borrow_mut();
        if spares.len() < 2 * self.conns.len().max(1) {
            spares.push(buf);
        } else {
            self.engine.recycle_read_buffer(buf);
        }
    }

    /// Delivers every batch the engine resolved since the last turn (see [`deliver`]).
    fn deliver_resolved(&mut self, now: Instant) {
        // The counts first: a woken future then sees the batch gone from the gauges too. Most
        // turns counted nothing; those touch no collector.
        let counts = self.engine.take_counts();
        if counts != EngineCounts::default() {
            let metrics = &self.settings.metrics;
            metrics.retry.inc_by(counts.retries);
            metrics.timeout.inc_by(counts.ack_timeouts);
            metrics.wire_bytes.inc_by(counts.wire_bytes);
            metrics.inflight_delta(counts.batches);
            metrics.pending.add(counts.records);
        }
        while let Some(mut resolved) = self.engine.poll_resolved() {
            deliver(&mut resolved, &self.budget, &self.settings.metrics, now);
            self.engine.recycle(resolved);
        }
    }

    fn handle_events(&mut self, now: Instant) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                EngineEvent::CloseConn { conn, reason } => self.drop_conn(now, conn, &reason),
            }
        }
    }

    fn transmit(&mut self, now: Instant) {
        while let Some(transmit) = self.engine.poll_transmit(now) {
            match self.conns.get(&transmit.conn) {
                Some(tasks) => tasks.send(transmit.bytes),
                None => {
                    // Raced with a close: the engine learns of the loss on the next turn.
                    self.engine.write_done(now, transmit.conn, transmit.bytes);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        for (_, tasks) in self.conns.drain() {
            tasks.close();
        }
    }
}

/// Delivers a batch the engine resolved: counts it, gives its room back, runs its callbacks
/// (each contained: a panic is counted, the rest still run), settles the budget, then resolves
/// the completion, which wakes the batch's futures.
pub(crate) fn deliver(
    resolved: &mut Resolved,
    budget: &PendingBudget,
    metrics: &ShardMetrics,
    now: Instant,
) {
    let records = resolved.records();
    let payload_bytes = resolved.payload_bytes();
    let outcome = resolved.take_outcome();
    let age = now.saturating_duration_since(resolved.opened_at()).as_secs_f64();
    metrics.batch_done(records, payload_bytes, age, outcome.as_ref().map(|_| ()));
    // Room first: whoever learns of this outcome may send again at once.
    budget.release(u64::from(records), payload_bytes);
    for (_, metadata, callback) in resolved.take_callbacks() {
        let result = match &outcome {
            Ok(outcome) => Ok(outcome.report(metadata)),
            Err(error) => Err(error.clone()),
        };
        if run_callback(callback, result) {
            metrics.callback_panicked();
        }
    }
    if let Err(error) = &outcome {
        tracing::debug!(stream = %resolved.stream_id(), records, %error, "batch failed");
    }
    // Settled after the callbacks ran (so `flush` implies they did) and before the futures wake
    // (so a woken future sees an accurate `in_flight_count`).
    budget.settle(u64::from(records));
    resolved.completion().resolve(outcome);
}

/// Why a connect failed, as [`Error::ConnectFailed`] and [`Error::NoEndpoints`] show it:
/// `connection refused (os error 111)`, `connect timed out after 3s`.
fn connect_failure_reason(error: &std::io::Error) -> Arc<str> {
    let text = error.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}", first.to_lowercase(), chars.as_str()).into(),
        None => format!("{:?}", error.kind()).into(),
    }
}

pub(crate) fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
