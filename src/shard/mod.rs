//! The I/O shell: one pinned thread per shard, running a compio runtime (io_uring, or epoll where
//! io_uring is not allowed) around that shard's [`ShardEngine`].
//!
//! The shard owns its engine, its connections and its buffers outright. Its main loop takes sealed
//! batches from the accumulator (one lock per wake-up, not per record), lets the engine encode them,
//! hands each connection's coalesced bytes to that connection's writer task, feeds reply bytes from
//! the reader tasks back into the engine, and sleeps until the next deadline or wake-up. Everything
//! that decides anything lives in the engine; this module only moves bytes and time.

pub mod mailbox;
mod transport;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use mailbox::{Command, ShardShared};
pub use transport::{probe_driver, Driver};

use crate::engine::PendingBudget;
use crate::engine::{ConnId, EngineConfig, EngineEvent, SealedBatch, ShardEngine};
use crate::error::{codes, Error};
use crate::metrics::ShardMetrics;
use transport::{connect, ConnTasks, Lost, SocketSettings};

/// Everything a shard thread needs to start.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Shard index (`wid`).
    pub index: usize,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// DataProxy nodes, in the order the Manager gave them.
    pub endpoints: Vec<SocketAddr>,
    /// Bound on each connect.
    pub conn_timeout: Duration,
    /// `SO_SNDBUF`.
    pub socket_send_buffer_size: usize,
    /// `SO_RCVBUF`.
    pub socket_recv_buffer_size: usize,
    /// Reply read buffer per connection.
    pub read_buffer_size: usize,
    /// Replace connections older than this.
    pub max_conn_lifetime: Option<Duration>,
    /// The I/O driver, probed once for the whole producer.
    pub driver: Driver,
    /// The core to pin the thread to.
    pub core: Option<core_affinity::CoreId>,
    /// This shard's metric handles.
    pub metrics: ShardMetrics,
}

/// Starts the shard thread. It runs until told to close (or abort) through `shared`.
pub fn spawn(
    settings: ShardSettings,
    shared: Arc<ShardShared>,
    budget: Arc<PendingBudget>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("inlong-shard-{}", settings.index)).spawn(move || {
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
                fail_everything(&shared, &budget, &Error::Transport(error.to_string()));
                return;
            }
        };
        runtime.block_on(run(settings, shared, budget));
    })
}

/// Without a runtime: refuse new records and fail whatever is already accumulated.
fn fail_everything(shared: &ShardShared, budget: &Arc<PendingBudget>, error: &Error) {
    let mut sealed = Vec::new();
    {
        let mut accumulator = shared.accumulator();
        accumulator.close();
        accumulator.take_sealed(&mut sealed);
    }
    for batch in sealed {
        batch.completion.resolve(Err(error.clone()));
        for (_, _, callback) in batch.callbacks {
            callback(Err(error.clone()));
        }
        budget.release(u64::from(batch.body.count()), batch.body.payload_bytes() as u64);
    }
}

/// A connection the shard wants: which endpoint it points at and how it is doing.
#[derive(Debug)]
struct Slot {
    endpoint: usize,
    state: SlotState,
    failures: u32,
}

#[derive(Debug)]
enum SlotState {
    Connected(ConnId),
    Connecting,
    Down { retry_at: Instant },
}

/// A finished connect attempt: the slot it was for and its result.
type Connected = (usize, std::io::Result<ConnTasks>);

struct Shell {
    settings: ShardSettings,
    engine: Rc<RefCell<ShardEngine>>,
    shared: Arc<ShardShared>,
    conns: HashMap<ConnId, ConnTasks>,
    slots: Vec<Slot>,
    lost: Rc<RefCell<Vec<Lost>>>,
    connected: Rc<RefCell<Vec<Connected>>>,
    next_conn: ConnId,
    sealed: Vec<SealedBatch>,
}

async fn run(settings: ShardSettings, shared: Arc<ShardShared>, budget: Arc<PendingBudget>) {
    let endpoints = settings.endpoints.len();
    let engine = ShardEngine::new(settings.engine.clone(), budget, settings.metrics.clone());
    // A primary connection and, when there is more than one node, a second one for retries.
    let slots = (0..endpoints.min(2))
        .map(|k| Slot {
            endpoint: (settings.index + k) % endpoints,
            state: SlotState::Down { retry_at: Instant::now() },
            failures: 0,
        })
        .collect();
    let mut shell = Shell {
        settings,
        engine: Rc::new(RefCell::new(engine)),
        shared,
        conns: HashMap::new(),
        slots,
        lost: Rc::default(),
        connected: Rc::default(),
        next_conn: 1,
        sealed: Vec::new(),
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
                    Command::Abort => {
                        self.shared.accumulator().close();
                        self.take_sealed(now);
                        self.engine.borrow_mut().fail_all(now, &Error::ProducerClosed);
                        return;
                    }
                }
            }
            let linger = self.take_sealed(now);
            self.handle_connections(now);
            {
                let mut engine = self.engine.borrow_mut();
                if engine.poll_timeout().is_some_and(|at| at <= now) {
                    engine.handle_timeout(now);
                }
            }
            self.handle_events(now);
            self.reconnect(now);
            self.transmit(now);

            if let Some(deadline) = closing {
                let idle = self.engine.borrow().inflight() == 0;
                if idle {
                    return;
                }
                if now >= deadline {
                    let undelivered = self.engine.borrow().pending_records();
                    tracing::warn!(
                        shard = self.settings.index,
                        undelivered,
                        "close deadline reached"
                    );
                    self.shared.add_failed_at_close(undelivered);
                    self.engine.borrow_mut().fail_all(now, &Error::FlushTimeout { undelivered });
                    return;
                }
            }

            let mut wake_at =
                [linger, self.engine.borrow().poll_timeout(), closing, self.next_reconnect()]
                    .into_iter()
                    .flatten()
                    .min();
            if self.settings.max_conn_lifetime.is_some() {
                let check = now + Duration::from_secs(1);
                wake_at = Some(wake_at.map_or(check, |at| at.min(check)));
            }
            transport::wait(&self.shared, wake_at).await;
        }
    }

    /// Seals lingering batches, moves sealed ones into the engine; returns the next linger
    /// deadline.
    fn take_sealed(&mut self, now: Instant) -> Option<Instant> {
        let linger = {
            let mut accumulator = self.shared.accumulator();
            accumulator.seal_expired(now);
            accumulator.take_sealed(&mut self.sealed);
            for body in self.engine.borrow_mut().take_spare_bodies() {
                accumulator.recycle(body);
            }
            accumulator.next_deadline()
        };
        if !self.sealed.is_empty() {
            let dt_ms = unix_ms();
            let mut engine = self.engine.borrow_mut();
            for batch in self.sealed.drain(..) {
                engine.enqueue(now, batch, dt_ms);
            }
        }
        linger
    }

    /// New connections join the engine; lost ones leave it (their batches are retried).
    fn handle_connections(&mut self, now: Instant) {
        let connected = std::mem::take(&mut *self.connected.borrow_mut());
        for (slot, result) in connected {
            let endpoint = self.settings.endpoints[self.slots[slot].endpoint];
            match result {
                Ok(tasks) => {
                    let id = tasks.id;
                    tracing::debug!(shard = self.settings.index, conn = id, %endpoint, "connected");
                    self.engine.borrow_mut().add_conn(now, id, endpoint);
                    self.settings.metrics.connections_delta(1);
                    self.conns.insert(id, tasks);
                    self.slots[slot].state = SlotState::Connected(id);
                    self.slots[slot].failures = 0;
                }
                Err(error) => {
                    tracing::warn!(shard = self.settings.index, %endpoint, %error, "connect failed");
                    self.settings.metrics.error_event(codes::NEW_CONN_FAILED);
                    self.slot_down(slot, now);
                }
            }
        }
        let lost = std::mem::take(&mut *self.lost.borrow_mut());
        for Lost { conn, reason } in lost {
            self.drop_conn(now, conn, &reason);
        }
        if let Some(lifetime) = self.settings.max_conn_lifetime {
            let old: Vec<ConnId> = self
                .conns
                .values()
                .filter(|c| c.opened_at + lifetime <= now)
                .map(|c| c.id)
                .collect();
            for conn in old {
                self.drop_conn(now, conn, "max_conn_lifetime reached");
            }
        }
    }

    fn drop_conn(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let Some(tasks) = self.conns.remove(&conn) else { return };
        tracing::debug!(shard = self.settings.index, conn, endpoint = %tasks.endpoint, reason, "connection closed");
        tasks.close();
        self.settings.metrics.connections_delta(-1);
        let (update_code, error_code) = reason_codes(reason);
        self.settings.metrics.conn_updated(update_code);
        if let Some(code) = error_code {
            self.settings.metrics.error_event(code);
        }
        self.engine.borrow_mut().conn_lost(now, conn, reason);
        if let Some(slot) =
            self.slots.iter().position(|s| matches!(s.state, SlotState::Connected(c) if c == conn))
        {
            self.slot_down(slot, now);
        }
    }

    /// Marks a slot down and points it at the next endpoint, with a growing pause.
    fn slot_down(&mut self, slot: usize, now: Instant) {
        let endpoints = self.settings.endpoints.len();
        let s = &mut self.slots[slot];
        s.failures += 1;
        if endpoints > 1 {
            s.endpoint = (s.endpoint + 1) % endpoints;
            let taken: Vec<usize> = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != slot)
                .map(|(_, s)| s.endpoint)
                .collect();
            let s = &mut self.slots[slot];
            if taken.contains(&s.endpoint) && endpoints > 2 {
                s.endpoint = (s.endpoint + 1) % endpoints;
            }
        }
        let s = &mut self.slots[slot];
        let exponent = s.failures.saturating_sub(1).min(6);
        let pause = Duration::from_millis(50 * (1 << exponent)).min(Duration::from_secs(2));
        s.state = SlotState::Down {
            retry_at: now + if s.failures <= 1 { Duration::ZERO } else { pause },
        };
    }

    fn next_reconnect(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Down { retry_at } => Some(retry_at),
                _ => None,
            })
            .min()
    }

    fn reconnect(&mut self, now: Instant) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let SlotState::Down { retry_at } = slot.state else { continue };
            if retry_at > now {
                continue;
            }
            slot.state = SlotState::Connecting;
            let id = self.next_conn;
            self.next_conn += 1;
            let endpoint = self.settings.endpoints[slot.endpoint];
            let job = connect(
                id,
                endpoint,
                SocketSettings::from(&self.settings),
                self.engine.clone(),
                self.shared.clone(),
                self.lost.clone(),
            );
            let connected = self.connected.clone();
            let shared = self.shared.clone();
            compio::runtime::spawn(async move {
                let result = job.await;
                connected.borrow_mut().push((index, result));
                shared.notify();
            })
            .detach();
        }
    }

    fn handle_events(&mut self, now: Instant) {
        loop {
            let event = self.engine.borrow_mut().poll_event();
            match event {
                Some(EngineEvent::CloseConn { conn, reason }) => self.drop_conn(now, conn, &reason),
                None => break,
            }
        }
    }

    fn transmit(&mut self, now: Instant) {
        loop {
            let transmit = self.engine.borrow_mut().poll_transmit(now);
            let Some(transmit) = transmit else { break };
            match self.conns.get(&transmit.conn) {
                Some(tasks) => tasks.send(transmit.bytes),
                None => {
                    // Raced with a close: the engine learns of the loss on the next turn.
                    self.engine.borrow_mut().write_done(now, transmit.conn, transmit.bytes);
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

/// How a closed connection is counted: the `data_proxy_update_conn_count` code (as Go: 0 for
/// periodic or server-requested switches, 10007 after a write failure, 20001 after the peer closed
/// or broke it) and the error event, if any.
fn reason_codes(reason: &str) -> (u32, Option<u32>) {
    if reason.starts_with("write failed") {
        (codes::CONN_WRITE_FAILED, Some(codes::CONN_WRITE_FAILED))
    } else if reason.starts_with("closed by the server") {
        (codes::UNKNOWN, Some(codes::CONN_CLOSED_BY_PEER))
    } else if reason.starts_with("read failed") || reason.starts_with("bad reply") {
        (codes::UNKNOWN, Some(codes::CONN_READ_FAILED))
    } else if reason.starts_with("heartbeat") {
        (codes::UNKNOWN, None)
    } else {
        (codes::OK, None)
    }
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
