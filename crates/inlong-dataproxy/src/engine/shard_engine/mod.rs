//! [`ShardEngine`]: one shard's in-flight batches, connections, retries, timeouts and heartbeats.
//!
//! Sans-IO: the shard's I/O shell feeds it sealed batches, reply bytes, connection events and the
//! current time, and asks it for bytes to write ([`ShardEngine::poll_transmit`]), the next
//! deadline ([`ShardEngine::poll_timeout`]) and connections to close
//! ([`ShardEngine::poll_event`]). It never reads the clock and never touches a socket, so every
//! path — ack, server error, retry, timeout, connection loss, heartbeat loss — is unit-tested with
//! injected time.
//!
//! Every batch has one owner here from `enqueue` until it is resolved, exactly once, through its
//! [`BatchCompletion`]: acked, failed with a server code, or failed after its attempts.
//!
//! Timers. Every batch has a delivery deadline, [`ShardEngine::delivery_timeout`] after it is
//! enqueued, by which it is resolved whatever it is doing (queued, sent, in backoff, behind a
//! full write buffer); within it each attempt has its own: a queued batch's wait for a
//! connection, a sent batch's ack deadline, a backoff's end. Each kind of timer lives in a
//! structure ordered by due time, so that [`ShardEngine::poll_timeout`] looks at a few ends
//! and [`ShardEngine::handle_timeout`] takes only what is due: the delivery deadlines in
//! enqueue order, the queued batches in two queues whose ends hold the longest waits, the ack
//! deadlines in send order per connection, the backoffs in a heap. Timers of batches that moved
//! on are dropped when they come up (a batch's state says which timer is its current one).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::accumulator::SealedBatch;
use crate::buffers::{resident_vec, BufferPool, CapacityPlan, FramePool};
use crate::completion::{BatchCompletion, BatchOutcome, Callback};
use crate::error::{codes, is_retryable_server_code, ConnectFailures, Error};
use crate::protocol::{
    self, AddColumns, BatchBody, BatchHeader, FrameEncoder, FrameError, FrameFormat, Reply,
    HEARTBEAT_REQUEST, MAX_REPLY_FRAME_LEN,
};
use crate::record::StreamId;

/// A connection, named by the shell.
pub type ConnId = u64;

/// The `uniq` of a batch's msgType 7 frames: the low 32 bits of its ID (IDs of one shard differ
/// in those bits for 2^32 batches, and replies are matched per connection), offset by the
/// shard's random `salt`, so that two producers' batches of one stream differ too (a server or
/// an MQ consumer telling retries from new batches by stream and `uniq` does not confuse them).
#[allow(clippy::cast_possible_truncation)]
fn uniq_of(id: u64, salt: u32) -> u32 {
    (id as u32).wrapping_add(salt)
}

/// A connection's partial-reply buffer, sent-batch queue and heartbeat queue.
type ConnParts = (Vec<u8>, VecDeque<(u64, u32)>, VecDeque<Instant>);
/// `SERVICE_CLOSED`: the node is going offline; stop using the connection.
const SERVICE_CLOSED: i32 = 2;

/// The engine's settings (from [`ProducerConfig`](crate::ProducerConfig)).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `groupId` of every batch.
    pub group_id: String,
    /// `wid`: this shard's index.
    pub wid: u32,
    /// Prefix of every `mid` (unique per producer), followed by the decimal batch ID.
    pub mid_prefix: String,
    /// Ack deadline of one attempt.
    pub send_timeout: Duration,
    /// Attempts after the first.
    pub max_retries: u32,
    /// First backoff.
    pub retry_initial_interval: Duration,
    /// Backoff cap.
    pub retry_max_interval: Duration,
    /// Retry codes 1, 2, 3 and 114.
    pub retry_on_server_error: bool,
    /// Frame size limit.
    pub max_frame_len: usize,
    /// Idle time before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Heartbeat reply deadline.
    pub heartbeat_timeout: Duration,
    /// What the shard reserves and keeps: buffer sizes and counts, queue room, spares.
    pub plan: CapacityPlan,
    /// Compress bodies over 256 bytes.
    pub compression: bool,
    /// msgType 5 or 7, and the ack level: the frames, their replies and the heartbeats.
    pub format: FrameFormat,
    /// Wall-clock time (ms since the Unix epoch) at the engine's creation: the time field of
    /// type 8 heartbeats counts from it until the first batch brings a newer one.
    pub start_unix_ms: u64,
    /// Add-columns of every batch.
    pub add_columns: AddColumns,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

/// Bytes to write on one connection. Give the buffer back with [`ShardEngine::write_done`].
#[derive(Debug)]
pub struct Transmit {
    /// The connection.
    pub conn: ConnId,
    /// Whole frames, possibly several coalesced.
    pub bytes: Vec<u8>,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// Close this connection (then report it with [`ShardEngine::conn_lost`]).
    CloseConn {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// What the engine counted since the shell last asked ([`ShardEngine::take_counts`]): plain
/// numbers, which the shell adds to the Prometheus collectors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineCounts {
    /// Batch retries.
    pub retries: u64,
    /// Ack timeouts.
    pub ack_timeouts: u64,
    /// Frame bytes written, retries included.
    pub wire_bytes: u64,
    /// Change in batches queued or in flight.
    pub batches: i64,
    /// Change in records pending.
    pub records: i64,
}

/// Why a connection ends. The log line, the text of [`Error::ConnectionLost`] and the metrics'
/// codes ([`CloseReason::codes`]) all come from this value; nothing parses text back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The server closed it (end of file on a read).
    #[error("closed by the server")]
    ClosedByPeer,
    /// A read failed.
    #[error("read failed: {0}")]
    ReadFailed(Arc<str>),
    /// A write failed.
    #[error("write failed: {0}")]
    WriteFailed(Arc<str>),
    /// The reply stream could not be decoded.
    #[error("bad reply: {0}")]
    BadReply(FrameError),
    /// A heartbeat got no reply in time.
    #[error("heartbeat reply missing")]
    HeartbeatLost,
    /// The server answered code 2: it is going offline (drained first).
    #[error("server is going offline (code 2)")]
    ServerOffline,
    /// Replaced by a connection to the slot's preferred node (drained first).
    #[error("moved to its preferred node")]
    MovedHome,
    /// Its node left the shard's share of the node list (drained first).
    #[error("rebalanced")]
    Rebalanced,
    /// `conn_rotation`'s periodic switch (drained first).
    #[error("periodic rotation")]
    Rotation,
    /// `max_conn_lifetime` ran out (drained first).
    #[error("max_conn_lifetime reached")]
    LifetimeReached,
}

impl CloseReason {
    /// How the close is counted, as the Go SDK does: the `data_proxy_update_conn_count` code (0
    /// for periodic or server-requested switches, 10007 after a write failure, 20001 after the
    /// peer closed or broke it) and the `data_proxy_error_count` code, if it is an error.
    pub fn codes(&self) -> (u32, Option<u32>) {
        match self {
            CloseReason::WriteFailed(_) => {
                (codes::CONN_WRITE_FAILED, Some(codes::CONN_WRITE_FAILED))
            }
            CloseReason::ClosedByPeer => (codes::UNKNOWN, Some(codes::CONN_CLOSED_BY_PEER)),
            CloseReason::ReadFailed(_) | CloseReason::BadReply(_) => {
                (codes::UNKNOWN, Some(codes::CONN_READ_FAILED))
            }
            CloseReason::HeartbeatLost => (codes::UNKNOWN, None),
            CloseReason::ServerOffline
            | CloseReason::MovedHome
            | CloseReason::Rebalanced
            | CloseReason::Rotation
            | CloseReason::LifetimeReached => (codes::OK, None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    Queued { since: Instant },
    Sent { conn: ConnId, deadline: Instant },
    Backoff,
}

struct Inflight {
    frame: Vec<u8>,
    records: u32,
    payload_bytes: u64,
    completion: Arc<BatchCompletion>,
    callbacks: Vec<(u32, u64, Callback)>,
    /// Sends started so far.
    attempts: u32,
    /// Sends that ended with their connection lost (reset, closed, write failed) inside the
    /// batch's delivery window: they do not count against `max_retries` (see `conn_lost`).
    free_attempts: u32,
    state: BatchState,
    last_conn: Option<ConnId>,
    last_error: Option<Error>,
    opened_at: Instant,
    stream_id: StreamId,
}

struct Conn {
    id: ConnId,
    endpoint: SocketAddr,
    /// No new batches: the server said it is going offline; closed once its replies are in.
    draining: bool,
    /// Why it is draining (for the log and the metrics).
    drain_reason: CloseReason,
    /// Asked the shell to close it (heartbeat lost); no more deadlines of its own.
    doomed: bool,
    writing: bool,
    out: Vec<u8>,
    read_buf: Vec<u8>,
    /// Batches sent on this connection, oldest first, for FIFO matching of replies without
    /// `mid` and for the per-connection send deadlines.
    sent: VecDeque<(u64, u32)>,
    /// The sends before this index in `sent` are over (answered elsewhere, retried, failed):
    /// kept only so that replies without `mid` still match in order, and skipped by the
    /// deadline scans, which would otherwise walk a backlog's worth of them at every turn.
    live_from: usize,
    heartbeats: VecDeque<Instant>,
    last_write: Instant,
}

/// See the module docs.
pub struct ShardEngine {
    config: EngineConfig,
    encoder: FrameEncoder,
    /// Counted since the shell last took them ([`ShardEngine::take_counts`]).
    counts: EngineCounts,
    pending_records: u64,
    batches: HashMap<u64, Box<Inflight>>,
    /// Batches waiting to go out for the first time, oldest first: sent in this order, after
    /// the retries; the front has waited longest.
    fresh: VecDeque<u64>,
    /// Batches waiting to go out again (connection lost, backoff over), sent before the fresh
    /// ones, newest first (a group queued at once keeps its order): the back has waited longest.
    retries: VecDeque<u64>,
    /// Every unresolved batch's delivery deadline, in enqueue order, which is deadline order
    /// (all are `delivery_timeout` after their enqueue). Entries of resolved batches leave from
    /// the front as they come up, and all at once when the queue is full (see
    /// [`ShardEngine::push_delivery_deadline`]).
    deliver_by: VecDeque<(Instant, u64)>,
    /// See [`ShardEngine::delivery_timeout`].
    delivery_timeout: Duration,
    backoffs: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    conns: Vec<Conn>,
    events: VecDeque<EngineEvent>,
    /// Batches resolved and not yet taken by the shell ([`ShardEngine::poll_resolved`]).
    resolved: VecDeque<Resolved>,
    frames: Arc<FramePool>,
    write_buffers: BufferPool,
    read_buffers: BufferPool,
    spare_bodies: Vec<BatchBody>,
    /// Emptied in-flight entries, reused for new batches (see [`ShardEngine::enqueue`]): the
    /// boxes themselves, which go back into the table as they are. Created at the start for
    /// the pending budget's worth of full batches (`plan.batches`) and kept at most that
    /// many: a backlog allocates none. (Created as bursts needed them instead, the spares kept
    /// growing for minutes in the soak; freed after each burst, they left the allocator's
    /// arenas fragmented, the RSS up by megabytes.)
    #[allow(clippy::vec_box)]
    spare_inflight: Vec<Box<Inflight>>,
    /// Completions emptied for reuse ([`BatchCompletion::reuse`]), on their way back to the
    /// accumulator with the next sealed batches.
    spare_completions: Vec<Arc<BatchCompletion>>,
    /// What an emptied in-flight entry holds in place of its batch's completion.
    idle_completion: Arc<BatchCompletion>,
    /// A lost connection's reply buffer and queues, for the next connection.
    spare_conn_parts: Vec<ConnParts>,
    next_batch: u64,
    rng: fastrand::Rng,
    mid_buf: String,
    /// A wall-clock reading (ms since the Unix epoch) and the instant it was taken: what the
    /// time field of a type 8 heartbeat is computed from, without reading a clock.
    wall_clock: (Instant, u64),
    /// Added to the `uniq` of every msgType 7 frame ([`uniq_of`]), drawn from the seed.
    uniq_salt: u32,
    /// The cause of a batch that found no usable connection for a whole send timeout: built
    /// when the shell reports new connect failures ([`ShardEngine::set_connect_failures`]), and
    /// cloned (reference counts only) into each such batch.
    no_endpoints: Error,
}

impl std::fmt::Debug for ShardEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardEngine")
            .field("wid", &self.config.wid)
            .field("inflight", &self.batches.len())
            .field("queued", &(self.fresh.len() + self.retries.len()))
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl ShardEngine {
    /// An engine with no batches and no connections, made at `now`.
    pub fn new(now: Instant, config: EngineConfig, frames: Arc<FramePool>) -> ShardEngine {
        let mut encoder = FrameEncoder::new();
        encoder.set_compression(config.compression);
        encoder.set_format(config.format);
        let wall_clock = (now, config.start_unix_ms);
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let uniq_salt = rng.u32(..);
        let wid = config.wid;
        let plan = config.plan;
        let write_buffers = BufferPool::new(plan.write_buffer_len, plan.write_buffers);
        let read_buffers = BufferPool::new(plan.read_buffer_len, plan.read_buffers);
        let inflight_capacity = plan.batches;
        let spare_conn_parts =
            (0..plan.start_conn_parts).map(|_| Self::new_conn_parts(&plan)).collect();
        let idle_completion = BatchCompletion::new();
        let delivery_timeout = Self::delivery_timeout_of(&config);
        let mut spare_inflight = resident_vec(inflight_capacity);
        spare_inflight.extend(
            (0..inflight_capacity).map(|_| Box::new(Inflight::idle(&idle_completion, now))),
        );
        ShardEngine {
            config,
            encoder,
            counts: EngineCounts::default(),
            pending_records: 0,
            // Room for four times the budget's worth of full batches (linger seals smaller ones).
            batches: HashMap::with_capacity(inflight_capacity * 4),
            // Sized for twice a full budget of full batches, pages resident (see `resident_vec`).
            fresh: VecDeque::from(resident_vec(plan.queue_len)),
            retries: VecDeque::from(resident_vec(plan.queue_len)),
            deliver_by: VecDeque::from(resident_vec(plan.queue_len)),
            delivery_timeout,
            backoffs: BinaryHeap::from(resident_vec(plan.queue_len)),
            conns: Vec::new(),
            events: VecDeque::new(),
            resolved: VecDeque::new(),
            frames,
            write_buffers,
            read_buffers,
            spare_bodies: Vec::with_capacity(plan.spare_bodies),
            spare_inflight,
            spare_completions: resident_vec(inflight_capacity),
            idle_completion,
            spare_conn_parts,
            // Batch IDs (and so `mid`s) are unique across the producer's shards.
            next_batch: (u64::from(wid) << 48) + 1,
            rng,
            mid_buf: String::new(),
            wall_clock,
            uniq_salt,
            no_endpoints: Error::no_endpoints(ConnectFailures::default()),
        }
    }

    /// The shard's recent connect failures, the cause of the batches that then time out
    /// without a usable connection ([`Error::NoEndpoints`]).
    pub fn set_connect_failures(&mut self, causes: ConnectFailures) {
        self.no_endpoints = Error::no_endpoints(causes);
    }

    /// A connection's partial-reply buffer (a reply is ~40 bytes) and its queues, the sent
    /// one with room for all the shard's batches, pages resident.
    fn new_conn_parts(plan: &CapacityPlan) -> ConnParts {
        (Vec::with_capacity(256), VecDeque::from(resident_vec(plan.queue_len)), VecDeque::new())
    }

    #[cfg(test)]
    /// How long after it is enqueued a batch is resolved at the latest, acked or failed:
    ///
    /// `send_timeout × (2 + max_retries) + Σ backoff_n`, `backoff_n = min(retry_initial_interval
    /// × 2^n × 1.2, retry_max_interval)` for `n` in `0..max_retries`.
    ///
    /// That is every attempt waiting a whole `send_timeout` for its ack, every backoff between
    /// them at its longest (jitter included), and one more `send_timeout` in all for waiting to
    /// go out (for a connection, behind a full write buffer, after a lost connection): a batch
    /// whose attempts run their normal course is resolved by them, never cut short. Past it the
    /// batch fails with [`Error::SendTimeout`] whatever it is doing. Its records were sent at
    /// most the linger delay before the batch was sealed and enqueued.
    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }

    fn delivery_timeout_of(config: &EngineConfig) -> Duration {
        let policy = crate::backoff::Backoff::retry(
            config.retry_initial_interval,
            config.retry_max_interval,
        );
        // The longest `backoff` draws before retry `n + 1`, which follows attempt `n + 1`.
        let backoffs = (0..config.max_retries)
            .map(|n| policy.longest(n + 1))
            .fold(Duration::ZERO, Duration::saturating_add);
        config.send_timeout.saturating_mul(2 + config.max_retries).saturating_add(backoffs)
    }

    /// Queues `id` to be sent (at the back of `fresh`, or at the front of `retries`). A queue
    /// that is full first lets go of the entries of batches no longer queued (resolved while
    /// waiting, or timed out in the middle of it), and grows only when that frees less than
    /// half of it, so a backlog neither regrows it nor makes it hold dead entries for long.
    fn push_with_room(
        queue: &mut VecDeque<u64>,
        batches: &HashMap<u64, Box<Inflight>>,
        id: u64,
        front: bool,
    ) {
        if queue.len() == queue.capacity() {
            queue.retain(|id| Self::is_queued(batches, *id));
            if queue.len() * 2 > queue.capacity() {
                queue.reserve(queue.capacity());
            }
        }
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
    }

    /// Whether an entry of the send queues is the batch's current one.
    fn is_queued(batches: &HashMap<u64, Box<Inflight>>, id: u64) -> bool {
        batches.get(&id).is_some_and(|batch| matches!(batch.state, BatchState::Queued { .. }))
    }

    /// Notes the delivery deadline of a batch just enqueued. Entries of resolved batches leave
    /// from the front as they come up ([`ShardEngine::resolve`]); one batch that lives long
    /// keeps those behind it, so a full queue first lets go of every resolved batch's entry and
    /// grows only when that frees less than half of it: amortised O(1) per batch, and no
    /// allocation while the live batches fit in half of it.
    fn push_delivery_deadline(&mut self, now: Instant, id: u64) {
        let queue = &mut self.deliver_by;
        if queue.len() == queue.capacity() {
            let batches = &self.batches;
            queue.retain(|(_, id)| batches.contains_key(id));
            if queue.len() * 2 > queue.capacity() {
                queue.reserve(queue.capacity());
            }
        }
        let at = now.checked_add(self.delivery_timeout).unwrap_or(now);
        // `now` never goes back in the shell; kept in order all the same.
        let at = queue.back().map_or(at, |&(last, _)| at.max(last));
        queue.push_back((at, id));
    }

    /// Batches not yet resolved.
    pub fn inflight(&self) -> usize {
        self.batches.len()
    }

    /// Records in the batches not yet resolved.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    #[cfg(test)]
    /// Connections known to the engine.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Bodies emptied by encoding, for the accumulator to reuse.
    pub fn take_spare_bodies(&mut self) -> impl Iterator<Item = BatchBody> + '_ {
        self.spare_bodies.drain(..)
    }

    /// Completions of resolved batches that no future held, emptied, for the accumulator to
    /// reuse ([`BatchAccumulator::recycle_completion`](super::accumulator::BatchAccumulator::recycle_completion)).
    pub fn take_spare_completions(&mut self) -> impl Iterator<Item = Arc<BatchCompletion>> + '_ {
        self.spare_completions.drain(..)
    }

    /// Encodes a sealed batch and queues it for sending. `dt_ms` is the wall-clock time in
    /// milliseconds written as `dt` (kept for every retry, like Go).
    pub fn enqueue(&mut self, now: Instant, batch: SealedBatch, dt_ms: u64) {
        let id = self.next_batch;
        self.next_batch += 1;
        self.wall_clock = (now, dt_ms);
        self.mid_buf.clear();
        self.mid_buf.push_str(&self.config.mid_prefix);
        {
            use std::fmt::Write;
            let _ = write!(self.mid_buf, "{id}");
        }
        let header = BatchHeader {
            group_id: &self.config.group_id,
            stream_id: batch.stream_id.as_str(),
            dt_ms,
            mid: &self.mid_buf,
            wid: self.config.wid,
            uniq: uniq_of(id, self.uniq_salt),
        };
        let records = batch.body.count();
        let payload_bytes = batch.body.payload_bytes() as u64;
        // The frame goes into a pooled buffer of its size class, chosen once its exact length
        // is known (after compression).
        let mut frame = Vec::new();
        let frames = &self.frames;
        let encoded = self.encoder.encode_with(
            &header,
            &batch.body,
            &self.config.add_columns,
            self.config.max_frame_len,
            &mut frame,
            |out, len| *out = frames.take(len),
        );
        // The accumulator keeps no more spares than this anyway; the rest go to the pool.
        if self.spare_bodies.len() < self.config.plan.spare_bodies {
            self.spare_bodies.push(batch.body);
        } else {
            self.frames.give(batch.body.into_buffer());
        }
        // Boxed: the in-flight table then holds 16 bytes per batch, so growing it for a backlog
        // of small batches moves little memory (it held ~270 bytes per batch inline). The boxes
        // are reused: a backlog's thousands of entries are not allocated again at every burst,
        // interleaved with everything else the shard allocates then.
        let entry = Inflight {
            frame,
            records,
            payload_bytes,
            completion: batch.completion,
            callbacks: batch.callbacks,
            attempts: 0,
            free_attempts: 0,
            state: BatchState::Queued { since: now },
            last_conn: None,
            last_error: None,
            opened_at: batch.opened_at,
            stream_id: batch.stream_id,
        };
        let mut inflight = match self.spare_inflight.pop() {
            Some(mut spare) => {
                *spare = entry;
                spare
            }
            None => Box::new(entry),
        };
        match encoded {
            Ok(_) => {
                self.pending_records += u64::from(records);
                self.counts.batches += 1;
                self.counts.records += i64::from(records);
                self.batches.insert(id, inflight);
                Self::push_with_room(&mut self.fresh, &self.batches, id, false);
                self.push_delivery_deadline(now, id);
            }
            Err(error) => {
                // The accumulator keeps batches under the limit; a Manager that lowered it
                // after the batch was opened can still make this happen.
                self.frames.give(std::mem::take(&mut inflight.frame));
                self.resolved.push_back(Resolved { entry: inflight, outcome: Some(Err(error)) });
            }
        }
    }

    /// A connection to `endpoint` is ready to carry batches. Connections added first are
    /// preferred.
    pub fn add_conn(&mut self, now: Instant, conn: ConnId, endpoint: SocketAddr) {
        // A lost connection's queues, or new ones with room for all the shard's batches on
        // this one connection.
        let (read_buf, sent, heartbeats) =
            self.spare_conn_parts.pop().unwrap_or_else(|| Self::new_conn_parts(&self.config.plan));
        self.conns.push(Conn {
            id: conn,
            endpoint,
            draining: false,
            drain_reason: CloseReason::ServerOffline,
            doomed: false,
            writing: false,
            out: self.write_buffers.take(),
            read_buf,
            sent,
            live_from: 0,
            heartbeats,
            last_write: now,
        });
    }

    /// Makes `conn` the preferred connection for new batches (the shard's primary).
    pub fn prefer(&mut self, conn: ConnId) {
        if let Some(index) = self.conns.iter().position(|c| c.id == conn) {
            let preferred = self.conns.remove(index);
            self.conns.insert(0, preferred);
        }
    }

    /// The connection is gone (closed, reset, write or read failure). Its in-flight batches are
    /// retried at once on another connection, or failed if out of attempts.
    ///
    /// A send lost with a connection that was not at fault (the engine had not given up on it
    /// for a missing heartbeat or a bad reply) does not use up an attempt while the batch is
    /// inside its delivery window, `send_timeout x (1 + max_retries)` from when it was opened:
    /// when every node goes down at once, the batches on the wire would otherwise burn all
    /// their attempts within milliseconds, on connections that die one after the other, and
    /// fail although the nodes are back long before their time is up. Past the window every
    /// loss counts, so a batch can never bounce between connections for ever.
    pub fn conn_lost(&mut self, now: Instant, conn: ConnId, reason: &CloseReason) {
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else { return };
        let lost = self.conns.remove(index);
        let reason = reason.to_string().into();
        let cause = Error::ConnectionLost { endpoint: lost.endpoint, reason };
        let window = self.config.send_timeout.saturating_mul(1 + self.config.max_retries);
        // Oldest first, so the retries keep their order at the front of the send queues.
        let mut retry = Vec::new();
        for &(id, attempt) in &lost.sent {
            if let Some(batch) = self.batches.get_mut(&id) {
                if batch.attempts == attempt
                    && matches!(batch.state, BatchState::Sent { conn: c, .. } if c == conn)
                {
                    if !lost.doomed && now < batch.opened_at + window {
                        batch.free_attempts += 1;
                    }
                    retry.push(id);
                }
            }
        }
        for id in retry.into_iter().rev() {
            self.retry_or_fail(now, id, cause.clone(), false);
        }
        self.recycle_write_buffer(lost.out);
        // The next connection takes over this one's queues as they grew (a backlog's worth),
        // instead of growing new ones by doubling while a burst of batches is being allocated.
        if self.spare_conn_parts.len() < self.config.plan.spare_conn_parts {
            let (mut read_buf, mut sent, mut heartbeats) =
                (lost.read_buf, lost.sent, lost.heartbeats);
            read_buf.clear();
            sent.clear();
            heartbeats.clear();
            self.spare_conn_parts.push((read_buf, sent, heartbeats));
        }
    }

    /// Bytes read from `conn`. A reply stream that cannot be decoded asks the shell to close
    /// the connection ([`EngineEvent::CloseConn`]).
    ///
    /// Whole frames are decoded where they are in `data`; only a frame cut by the end of a
    /// read is copied, into the connection's partial-reply buffer, which the next read completes
    /// with exactly the bytes it misses. That buffer then never holds more than one frame
    /// (at most [`MAX_REPLY_FRAME_LEN`]), however large the reads.
    pub fn on_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else { return };
        let mut partial = std::mem::take(&mut self.conns[index].read_buf);
        let mut rest = data;
        let mut failure = None;
        if !partial.is_empty() {
            // The length field first, then the rest of the frame it announces.
            let field = 4usize.saturating_sub(partial.len()).min(rest.len());
            partial.extend_from_slice(&rest[..field]);
            rest = &rest[field..];
            match protocol::frame_len(&partial, MAX_REPLY_FRAME_LEN) {
                Ok(Some(len)) => {
                    let missing = len.saturating_sub(partial.len()).min(rest.len());
                    partial.extend_from_slice(&rest[..missing]);
                    rest = &rest[missing..];
                    if partial.len() == len {
                        failure = self.on_frame(now, index, &partial).err();
                        partial.clear();
                    }
                }
                Ok(None) => {}
                Err(error) => failure = Some(error),
            }
        }
        if failure.is_none() && partial.is_empty() {
            loop {
                match protocol::split_frame(rest, MAX_REPLY_FRAME_LEN) {
                    Ok(Some(len)) => {
                        if let Err(error) = self.on_frame(now, index, &rest[..len]) {
                            failure = Some(error);
                            break;
                        }
                        rest = &rest[len..];
                    }
                    Ok(None) => {
                        partial.extend_from_slice(rest);
                        break;
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
        }
        if let Some(error) = failure {
            partial.clear();
            // A node that answers garbage is at fault: its batches' attempts count.
            if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                c.doomed = true;
            }
            self.events
                .push_back(EngineEvent::CloseConn { conn, reason: CloseReason::BadReply(error) });
        }
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            c.read_buf = partial;
            Self::skip_ended_sends(&self.batches, c);
        }
        self.close_drained(conn);
    }

    fn on_frame(&mut self, now: Instant, index: usize, frame: &[u8]) -> Result<(), FrameError> {
        let reply = match protocol::decode_reply(frame)? {
            Reply::Heartbeat => {
                self.conns[index].heartbeats.pop_front();
                return Ok(());
            }
            Reply::Batch(reply) => reply,
        };
        let conn = &mut self.conns[index];
        let (conn_id, endpoint) = (conn.id, conn.endpoint);
        // Match by uniq (msgType 7) or mid (msgType 5); a reply with neither answers the
        // oldest batch on the connection.
        let id = if let Some(uniq) = reply.uniq {
            // The batch sent on this connection whose uniq it is (uniqs repeat only 2^32
            // batches apart).
            let salt = self.uniq_salt;
            Self::take_sent(conn, |id| uniq_of(id, salt) == uniq)
        } else if let Some(mid) = reply.mid {
            let id = std::str::from_utf8(mid)
                .ok()
                .and_then(|mid| mid.strip_prefix(self.config.mid_prefix.as_str()))
                .and_then(|id| id.parse::<u64>().ok());
            if let Some(id) = id {
                Self::take_sent(conn, |sent| sent == id);
            }
            id
        } else {
            conn.live_from = conn.live_from.saturating_sub(1);
            conn.sent.pop_front().map(|(id, _)| id)
        };
        let Some(id) = id else {
            tracing::debug!(conn = conn_id, "reply matches no batch");
            return Ok(());
        };
        let Some(batch) = self.batches.get(&id) else {
            tracing::debug!(conn = conn_id, batch = id, "late reply to a resolved batch");
            return Ok(());
        };
        if let BatchState::Sent { conn: other, .. } = batch.state {
            if other != conn_id && reply.err_code != 0 {
                // An error about an attempt that was already superseded.
                return Ok(());
            }
        } else if reply.err_code != 0 {
            return Ok(());
        }
        match reply.err_code {
            0 => {
                let outcome = BatchOutcome {
                    batch_id: id,
                    endpoint,
                    retries: batch.attempts.saturating_sub(1),
                    opened_at: batch.opened_at,
                    acked_at: now,
                };
                self.resolve(id, Ok(outcome));
            }
            code if self.config.retry_on_server_error && is_retryable_server_code(code) => {
                if code == SERVICE_CLOSED && !self.conns[index].draining {
                    self.conns[index].draining = true;
                    self.conns[index].drain_reason = CloseReason::ServerOffline;
                }
                let cause =
                    Error::Server { code, message: reply.err_msg_lossy(), endpoint, batch_id: id };
                self.retry_or_fail(now, id, cause, true);
            }
            code => {
                let error =
                    Error::Server { code, message: reply.err_msg_lossy(), endpoint, batch_id: id };
                self.resolve(id, Err(error));
            }
        }
        Ok(())
    }

    /// Removes the first send on `conn` whose batch ID passes `is`, and returns that ID: most
    /// likely among the live sends; a late reply is among the ended ones.
    fn take_sent(conn: &mut Conn, is: impl Fn(u64) -> bool) -> Option<u64> {
        let live_from = conn.live_from;
        if let Some(pos) = conn.sent.range(live_from..).position(|&(id, _)| is(id)) {
            return conn.sent.remove(live_from + pos).map(|(id, _)| id);
        }
        let pos = conn.sent.range(..live_from).position(|&(id, _)| is(id))?;
        conn.live_from -= 1;
        conn.sent.remove(pos).map(|(id, _)| id)
    }

    /// Appends a heartbeat request of the producer's protocol to `out`: type 1 beside msgType
    /// 5 (as the Go SDK), type 8 beside msgType 7 (as the Java and C++ SDKs).
    fn push_heartbeat(
        format: FrameFormat,
        wall_clock: (Instant, u64),
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        if format.is_binary() {
            let (at, unix_ms) = wall_clock;
            let elapsed = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0);
            let secs = u32::try_from((unix_ms + elapsed) / 1000).unwrap_or(u32::MAX);
            out.extend_from_slice(&protocol::bin_heartbeat(secs));
        } else {
            out.extend_from_slice(&HEARTBEAT_REQUEST);
        }
    }

    /// Gives `conn` no new batches and closes it ([`EngineEvent::CloseConn`]) once every batch
    /// it carries is answered.
    pub fn drain_conn(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            if !c.draining {
                c.draining = true;
                c.drain_reason = reason;
            }
        }
        self.close_drained(conn);
    }

    /// Closes a draining connection once every batch it carried is answered.
    fn close_drained(&mut self, conn: ConnId) {
        let Some(c) = self.conns.iter().find(|c| c.id == conn) else { return };
        if c.draining && self.live_sent(c) == 0 {
            let event = EngineEvent::CloseConn { conn, reason: c.drain_reason.clone() };
            if !self.events.contains(&event) {
                self.events.push_back(event);
            }
        }
    }

    fn live_sent(&self, conn: &Conn) -> usize {
        conn.sent
            .range(conn.live_from..)
            .filter(|(id, attempt)| {
                self.batches.get(id).is_some_and(|b| {
                    b.attempts == *attempt
                        && matches!(b.state, BatchState::Sent { conn: c, .. } if c == conn.id)
                })
            })
            .count()
    }

    /// Bytes to write next, if any: queued batches are framed into their connections' write
    /// buffers, and one connection's whole buffer is handed out at a time.
    ///
    /// A write buffer holds at most `min(write_buffer_size, 256 KiB)` bytes and never grows
    /// (a single frame larger than that is written alone): batches beyond what the buffers hold
    /// wait in the engine's queue, where they can still go to any connection, and the same few
    /// buffers circulate however large a backlog gets.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.assign_queued(now);
        let conn = self.conns.iter_mut().find(|c| !c.writing && !c.out.is_empty())?;
        conn.writing = true;
        let bytes = std::mem::replace(&mut conn.out, self.write_buffers.take());
        Some(Transmit { conn: conn.id, bytes })
    }

    fn assign_queued(&mut self, now: Instant) {
        loop {
            // Retries first, then fresh batches.
            let (queue, id) = match (self.retries.front(), self.fresh.front()) {
                (Some(&id), _) => (&mut self.retries, id),
                (None, Some(&id)) => (&mut self.fresh, id),
                (None, None) => return,
            };
            let batch = match self.batches.get(&id) {
                Some(batch) if matches!(batch.state, BatchState::Queued { .. }) => batch,
                // Resolved, or timed out, while it waited.
                _ => {
                    queue.pop_front();
                    continue;
                }
            };
            let room = self.write_buffers.capacity();
            let frame_len = batch.frame.len();
            let usable = |c: &Conn| {
                !c.draining && !c.doomed && (c.out.is_empty() || c.out.len() + frame_len <= room)
            };
            let choice = self
                .conns
                .iter()
                .position(|c| usable(c) && Some(c.id) != batch.last_conn)
                .or_else(|| self.conns.iter().position(usable));
            let Some(index) = choice else { return };
            queue.pop_front();
            let Some(batch) = self.batches.get_mut(&id) else { continue };
            let conn = &mut self.conns[index];
            batch.attempts += 1;
            batch.last_conn = Some(conn.id);
            batch.state =
                BatchState::Sent { conn: conn.id, deadline: now + self.config.send_timeout };
            conn.out.extend_from_slice(&batch.frame);
            self.counts.wire_bytes += batch.frame.len() as u64;
            conn.sent.push_back((id, batch.attempts));
        }
    }

    /// The shell wrote `bytes` (successfully) on `conn`; the buffer comes back for reuse.
    pub fn write_done(&mut self, now: Instant, conn: ConnId, bytes: Vec<u8>) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            c.writing = false;
            c.last_write = now;
        }
        self.recycle_write_buffer(bytes);
    }

    /// A reply read buffer for a new connection, of `read_buffer_size` bytes. Give it back with
    /// [`ShardEngine::recycle_read_buffer`] when the connection ends.
    pub fn read_buffer(&mut self) -> Vec<u8> {
        self.read_buffers.take()
    }

    /// Keeps a connection's read buffer for the next connection (a few are kept).
    pub fn recycle_read_buffer(&mut self, buffer: Vec<u8>) {
        drop(self.read_buffers.give(buffer));
    }

    /// Keeps a write buffer for reuse (a few of the pool's size are kept; one that grew for an
    /// oversized frame is freed). The shell gives back here a buffer whose write failed.
    pub fn recycle_write_buffer(&mut self, buffer: Vec<u8>) {
        drop(self.write_buffers.give(buffer));
    }

    /// The next instant [`ShardEngine::handle_timeout`] must run at.
    ///
    /// Looks only at the ends of the timer structures (see the module docs). An end whose batch
    /// moved on since can make it early; `handle_timeout` then drops that entry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Some(&(at, _)) = self.deliver_by.front() {
            consider(at);
        }
        if let Some(Reverse((at, _, _))) = self.backoffs.peek() {
            consider(*at);
        }
        // The batches queued longest: the front of the fresh ones, the back of the retries.
        for id in [self.fresh.front(), self.retries.back()].into_iter().flatten() {
            if let Some(BatchState::Queued { since }) = self.batches.get(id).map(|b| b.state) {
                consider(since + self.config.send_timeout);
            }
        }
        for conn in self.conns.iter().filter(|c| !c.doomed) {
            if let Some(deadline) = self.oldest_sent_deadline(conn) {
                consider(deadline);
            }
            match conn.heartbeats.front() {
                Some(&deadline) => consider(deadline),
                None => consider(conn.last_write + self.config.heartbeat_interval),
            }
        }
        next
    }

    fn oldest_sent_deadline(&self, conn: &Conn) -> Option<Instant> {
        conn.sent.range(conn.live_from..).find_map(|(id, attempt)| {
            let batch = self.batches.get(id)?;
            match batch.state {
                BatchState::Sent { conn: c, deadline }
                    if c == conn.id && batch.attempts == *attempt =>
                {
                    Some(deadline)
                }
                _ => None,
            }
        })
    }

    /// Runs everything due at `now`: delivery deadlines, backoffs, waits for a connection, ack
    /// deadlines, heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        // A batch that found no connection for a whole send timeout counts as a failed attempt:
        // `NoEndpoints` when the shard has no usable connection, `AckTimeout` from the preferred
        // one when it has one whose write buffer stayed full (the node, or this shard, did not
        // keep up with the writes: the batch was waiting for that node all along).
        let busy = self.conns.iter().find(|c| !c.draining && !c.doomed).map(|c| c.endpoint);
        let send_timeout = self.config.send_timeout;
        let no_endpoints = self.no_endpoints.clone();
        let queue_cause = move || match busy {
            Some(endpoint) => Error::AckTimeout { endpoint, timeout: send_timeout },
            None => no_endpoints.clone(),
        };
        // Delivery deadlines first: past its deadline a batch fails whatever it is doing, with
        // the cause of what it was waiting for.
        while let Some(&(at, id)) = self.deliver_by.front() {
            let Some(batch) = self.batches.get_mut(&id) else {
                self.deliver_by.pop_front();
                continue;
            };
            if at > now {
                break;
            }
            self.deliver_by.pop_front();
            let (state, attempts) = (batch.state, batch.attempts);
            let last_error = batch.last_error.take();
            let cause = match state {
                BatchState::Queued { .. } => queue_cause(),
                BatchState::Sent { conn, deadline } => {
                    let endpoint = self.conns.iter().find(|c| c.id == conn).map(|c| c.endpoint);
                    match endpoint {
                        Some(endpoint) => {
                            self.counts.ack_timeouts += 1;
                            self.probe(now, conn);
                            let sent_at = deadline.checked_sub(send_timeout).unwrap_or(now);
                            let waited = now.saturating_duration_since(sent_at);
                            Error::AckTimeout { endpoint, timeout: waited }
                        }
                        None => last_error.unwrap_or_else(&queue_cause),
                    }
                }
                BatchState::Backoff => last_error.unwrap_or_else(&queue_cause),
            };
            let error =
                Error::SendTimeout { batch_id: id, attempts, last_error: Some(Box::new(cause)) };
            tracing::debug!(batch = id, attempts, "delivery deadline passed");
            self.resolve(id, Err(error));
        }
        // Backoffs that are over go back to the front of the send queues, oldest first.
        let mut due = 0;
        while let Some(&Reverse((at, id, attempt))) = self.backoffs.peek() {
            if at > now {
                break;
            }
            self.backoffs.pop();
            if let Some(batch) = self.batches.get_mut(&id) {
                if batch.attempts == attempt && batch.state == BatchState::Backoff {
                    batch.state = BatchState::Queued { since: now };
                    Self::push_with_room(&mut self.retries, &self.batches, id, true);
                    due += 1;
                }
            }
        }
        // Pushed to the front one by one, they are newest first: put them oldest first.
        for i in 0..due / 2 {
            self.retries.swap(i, due - 1 - i);
        }
        // Waits for a connection that reached a whole send timeout, wherever they are queued.
        while let Some(id) = self.pop_expired_queued(now) {
            if let Some(batch) = self.batches.get_mut(&id) {
                batch.attempts += 1;
            }
            self.retry_or_fail(now, id, queue_cause(), true);
        }
        // Ack deadlines: each connection's sends are in deadline order.
        let mut expired = Vec::new();
        for conn in &self.conns {
            for &(id, attempt) in conn.sent.range(conn.live_from..) {
                let Some(batch) = self.batches.get(&id) else { continue };
                match batch.state {
                    BatchState::Sent { conn: c, deadline }
                        if c == conn.id && batch.attempts == attempt =>
                    {
                        if deadline > now {
                            break;
                        }
                        expired.push((id, conn.id, conn.endpoint));
                    }
                    _ => {}
                }
            }
        }
        for (id, conn, endpoint) in expired {
            self.counts.ack_timeouts += 1;
            let cause = Error::AckTimeout { endpoint, timeout: self.config.send_timeout };
            self.retry_or_fail(now, id, cause, true);
            // Is the connection itself dead? Probe it now instead of waiting for it to idle.
            self.probe(now, conn);
        }
        // Heartbeats: send on idle connections, close those whose reply is overdue.
        for conn in &mut self.conns {
            match conn.heartbeats.front() {
                Some(&deadline) if deadline <= now && !conn.doomed => {
                    conn.doomed = true;
                    tracing::debug!(
                        conn = conn.id,
                        writing = conn.writing,
                        queued = conn.out.len(),
                        sent = conn.sent.len(),
                        "heartbeat reply missing"
                    );
                    let reason = CloseReason::HeartbeatLost;
                    self.events.push_back(EngineEvent::CloseConn { conn: conn.id, reason });
                }
                Some(_) => {}
                None if conn.last_write + self.config.heartbeat_interval <= now => {
                    Self::push_heartbeat(self.config.format, self.wall_clock, now, &mut conn.out);
                    conn.heartbeats.push_back(now + self.config.heartbeat_timeout);
                    conn.last_write = now;
                }
                None => {}
            }
        }
        for conn in &mut self.conns {
            Self::skip_ended_sends(&self.batches, conn);
        }
    }

    /// Moves `conn.live_from` past the sends at the front that are over.
    fn skip_ended_sends(batches: &HashMap<u64, Box<Inflight>>, conn: &mut Conn) {
        while let Some(&(id, attempt)) = conn.sent.get(conn.live_from) {
            let live = batches.get(&id).is_some_and(|batch| {
                batch.attempts == attempt
                    && matches!(batch.state, BatchState::Sent { conn: c, .. } if c == conn.id)
            });
            if live {
                break;
            }
            conn.live_from += 1;
        }
    }

    /// Sends a heartbeat on `conn` unless one is already waiting for its reply: a batch timed
    /// out there, is the connection itself dead?
    fn probe(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            if c.heartbeats.is_empty() {
                Self::push_heartbeat(self.config.format, self.wall_clock, now, &mut c.out);
                c.heartbeats.push_back(now + self.config.heartbeat_timeout);
            }
        }
    }

    /// A queued batch that has waited a whole send timeout by `now`, taken out of its queue.
    /// The longest waits are at the ends (`fresh` is oldest first, `retries` newest first), so
    /// this looks at two ends only, dropping entries of batches that are no longer queued.
    fn pop_expired_queued(&mut self, now: Instant) -> Option<u64> {
        let send_timeout = self.config.send_timeout;
        for from_retries in [true, false] {
            loop {
                let end = if from_retries { self.retries.back() } else { self.fresh.front() };
                let Some(&id) = end else { break };
                let state = self.batches.get(&id).map(|batch| batch.state);
                let expired = match state {
                    Some(BatchState::Queued { since }) if since + send_timeout > now => break,
                    Some(BatchState::Queued { .. }) => true,
                    // Resolved, or timed out, while it waited.
                    _ => false,
                };
                if from_retries {
                    self.retries.pop_back();
                } else {
                    self.fresh.pop_front();
                }
                if expired {
                    return Some(id);
                }
            }
        }
        None
    }

    /// What the engine counted since the last call, for the shell to add to the metrics.
    pub fn take_counts(&mut self) -> EngineCounts {
        std::mem::take(&mut self.counts)
    }

    /// The next thing the shell must do, if any.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// The wait before retrying a batch that has made `attempts` attempts
    /// ([`crate::backoff::Backoff::retry`]).
    fn backoff(&mut self, attempts: u32) -> Duration {
        crate::backoff::Backoff::retry(
            self.config.retry_initial_interval,
            self.config.retry_max_interval,
        )
        .delay(attempts, &mut self.rng)
    }

    /// Sends the batch again (at once, or after a backoff) if it has attempts left; otherwise
    /// fails it with [`Error::SendTimeout`] carrying `cause`.
    fn retry_or_fail(&mut self, now: Instant, id: u64, cause: Error, with_backoff: bool) {
        let Some(batch) = self.batches.get_mut(&id) else { return };
        batch.last_error = Some(cause);
        if batch.attempts.saturating_sub(batch.free_attempts) > self.config.max_retries {
            let error = Error::SendTimeout {
                batch_id: id,
                attempts: batch.attempts,
                last_error: batch.last_error.take().map(Box::new),
            };
            self.resolve(id, Err(error));
            return;
        }
        self.counts.retries += 1;
        let attempts = batch.attempts;
        if with_backoff {
            batch.state = BatchState::Backoff;
            let delay = self.backoff(attempts);
            self.backoffs.push(Reverse((now + delay, id, attempts)));
        } else {
            batch.state = BatchState::Queued { since: now };
            Self::push_with_room(&mut self.retries, &self.batches, id, true);
        }
        tracing::debug!(batch = id, attempts, with_backoff, "retrying batch");
    }

    /// Fails every unresolved batch with `error` (close deadline, producer dropped).
    pub fn fail_all(&mut self, error: &Error) {
        let ids: Vec<u64> = self.batches.keys().copied().collect();
        for id in ids {
            self.resolve(id, Err(error.clone()));
        }
        self.fresh.clear();
        self.retries.clear();
        self.deliver_by.clear();
        self.backoffs.clear();
    }

    /// Fails every unresolved batch with `error` ([`Producer::purge`](crate::Producer::purge))
    /// and forgets their sends, so that a late ack finds no batch and is ignored; the
    /// connections stay up.
    pub fn purge(&mut self, error: &Error) {
        self.fail_all(error);
        for conn in &mut self.conns {
            Self::skip_ended_sends(&self.batches, conn);
        }
    }

    fn resolve(&mut self, id: u64, outcome: Result<BatchOutcome, Error>) {
        if let Some(mut batch) = self.batches.remove(&id) {
            // Resolved in order, the batches' delivery deadlines leave as they resolve. The
            // timer ends `poll_timeout` reads must stay live: a batch resolved while queued
            // (a late ack, its deadline) leaves its end of the send queues too.
            while let Some(&(_, front)) = self.deliver_by.front() {
                if self.batches.contains_key(&front) {
                    break;
                }
                self.deliver_by.pop_front();
            }
            while self.fresh.front().is_some_and(|id| !Self::is_queued(&self.batches, *id)) {
                self.fresh.pop_front();
            }
            while self.retries.back().is_some_and(|id| !Self::is_queued(&self.batches, *id)) {
                self.retries.pop_back();
            }
            self.pending_records -= u64::from(batch.records);
            self.counts.batches -= 1;
            self.counts.records -= i64::from(batch.records);
            self.frames.give(std::mem::take(&mut batch.frame));
            self.resolved.push_back(Resolved { entry: batch, outcome: Some(outcome) });
        }
    }

    /// The next batch resolved (acked or failed, exactly once), if any. The shell delivers it
    /// (gives the budget back, runs the callbacks, wakes the futures, counts it) and hands it
    /// back with [`ShardEngine::recycle`].
    pub fn poll_resolved(&mut self) -> Option<Resolved> {
        self.resolved.pop_front()
    }

    /// Takes back a batch the shell delivered, its entry and completion kept for reuse.
    pub fn recycle(&mut self, resolved: Resolved) {
        debug_assert!(resolved.outcome.is_none(), "recycled before it was delivered");
        self.recycle_inflight(resolved.entry);
    }

    /// Keeps a resolved batch's entry for the next batch, emptied of everything that refers to
    /// the batch (its stream and error are let go now, not at reuse; its completion is kept
    /// for reuse when no future holds it). At most `plan.batches` entries are kept.
    fn recycle_inflight(&mut self, mut entry: Box<Inflight>) {
        let mut completion = std::mem::replace(&mut entry.completion, self.idle_completion.clone());
        if self.spare_completions.len() < self.config.plan.batches
            && BatchCompletion::reuse(&mut completion)
        {
            self.spare_completions.push(completion);
        }
        if self.spare_inflight.len() >= self.config.plan.batches {
            return;
        }
        entry.stream_id = StreamId::from("");
        entry.last_error = None;
        entry.callbacks.clear();
        self.spare_inflight.push(entry);
    }
}

impl Inflight {
    /// An entry holding no batch, for [`ShardEngine::recycle_inflight`]'s spares.
    fn idle(completion: &Arc<BatchCompletion>, now: Instant) -> Inflight {
        Inflight {
            frame: Vec::new(),
            records: 0,
            payload_bytes: 0,
            completion: completion.clone(),
            callbacks: Vec::new(),
            attempts: 0,
            free_attempts: 0,
            state: BatchState::Backoff,
            last_conn: None,
            last_error: None,
            opened_at: now,
            stream_id: StreamId::from(""),
        }
    }
}

/// A batch the engine is done with: acked, or failed for good. See [`ShardEngine::poll_resolved`].
pub struct Resolved {
    entry: Box<Inflight>,
    /// Taken by the shell when it delivers the batch.
    outcome: Option<Result<BatchOutcome, Error>>,
}

impl Resolved {
    /// Records in the batch.
    pub fn records(&self) -> u32 {
        self.entry.records
    }

    /// Payload bytes in the batch.
    pub fn payload_bytes(&self) -> u64 {
        self.entry.payload_bytes
    }

    /// When the batch's first record arrived.
    pub fn opened_at(&self) -> Instant {
        self.entry.opened_at
    }

    /// The batch's stream.
    pub fn stream_id(&self) -> &StreamId {
        &self.entry.stream_id
    }

    /// The completion the batch's futures wait on.
    pub fn completion(&self) -> &Arc<BatchCompletion> {
        &self.entry.completion
    }

    /// The batch's per-record callbacks `(index, metadata, callback)`, to be run once.
    pub fn take_callbacks(&mut self) -> std::vec::Drain<'_, (u32, u64, Callback)> {
        self.entry.callbacks.drain(..)
    }

    /// The outcome, taken once, by the delivery.
    pub fn take_outcome(&mut self) -> Result<BatchOutcome, Error> {
        self.outcome.take().expect("a resolved batch is delivered once")
    }
}

#[cfg(test)]
mod tests;
