//! One local DataProxy node: a TCP listener that behaves like the real DataProxy TCP source.
//!
//! A [`DataProxyNode`] accepts connections on loopback, splits frames with the real size limit
//! (oversize or unknown type: close without a reply), answers heartbeats (types 1 and 8), decodes
//! and validates the data frames of every InLong SDK (txt types 2–6, binary type 7) through
//! [`super::codec`], applies the handler's checks (reject mode, MQ readiness, group, topic, the
//! channel) and replies in the real format. On top of that it can be told to misbehave at run time
//! ([`DataProxyNode::set_faults`], [`DataProxyNode::stop`]) and it counts what it saw
//! ([`NodeStats`], per-stream counts, duplicate `mid`s and an optional record ledger), so a test
//! can prove that every record the SDK reported as acked really arrived.
//!
//! A type 7 frame with `syncSend=true` or `proxySend=true` asks for the MQ's acknowledgement: the
//! node hands it to a simulated MQ sink, which stores it after [`NodeConfig::sink_latency`] (or
//! [`Faults::sink_latency`]) or fails it with an injected 116–119 ([`Faults::sink_errors`]), and
//! only then answers it and counts its records. Sink answers come from their own task, so they
//! do not hold back the replies to later frames: as with the real sink, they can overtake or be
//! overtaken, and the client matches them by `uniq`.
//!
//! Each connection is one reader task and one writer task on the node's tokio runtime; the node's
//! shared state is locked once per batch, never per record.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::codec::{self, err_codes, IngestMode, ReplyTo, Request};
use inlong_dataproxy::protocol::{self, DEFAULT_MAX_PACKET_LEN, HEARTBEAT_REPLY};

/// How a node is set up. Everything here is fixed for the node's life; faults change at run time.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The `dpIp` written in every reply (the real default is `0.0.0.0`).
    pub dp_ip: String,
    /// Largest frame accepted, `4 + totalLen` (`max-msg-length`; shipped configuration 524288).
    pub max_msg_length: usize,
    /// Decompress and validate every batch, or trust `cnt` (a cheap benchmark sink).
    pub ingest_mode: IngestMode,
    /// Keep every accepted record, per stream, in arrival order (for delivery-contract tests).
    pub ledger: bool,
    /// How many recent batch `mid`s a node's own [`DuplicateDetector`] remembers (0 turns
    /// counting off). Nodes of a [`LocalCluster`](super::LocalCluster) share one detector.
    pub dedup_window: usize,
    /// A connection with nothing to read for this long is closed (the real default is 180 s).
    pub read_idle_timeout: Duration,
    /// A connection whose unsent replies exceed this many bytes is closed, as the real server
    /// closes a connection whose channel is unwritable (§3.6).
    pub max_pending_reply_bytes: usize,
    /// How long the simulated MQ takes to store a type 7 frame that asked for the sink's
    /// acknowledgement (`syncSend`/`proxySend`); [`Faults::sink_latency`] overrides it.
    pub sink_latency: Duration,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            dp_ip: "127.0.0.1".to_owned(),
            max_msg_length: DEFAULT_MAX_PACKET_LEN,
            ingest_mode: IngestMode::Full,
            ledger: false,
            dedup_window: 1 << 20,
            read_idle_timeout: Duration::from_secs(180),
            max_pending_reply_bytes: 64 << 20,
            sink_latency: Duration::ZERO,
        }
    }
}

/// Server-side failures to inject. All of them apply to batches that arrive after they are set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Delay every reply by this long (replies keep their order; a sink's answer comes this
    /// long after its store latency).
    pub ack_delay: Duration,
    /// Answer some batches with an error code instead of accepting them.
    pub errors: Option<ErrorInjection>,
    /// Read and drop every frame: nothing is accepted, counted or answered (a black hole).
    pub silent: bool,
    /// Accept connections but stop reading from them: the client's writes stall once the
    /// socket buffers between it and the node are full (a node that hangs, or cannot keep up).
    /// Each connection stops before its next read, so nothing more is counted or answered;
    /// the connection stays open, unread, until the fault is lifted (it then reads on) or the
    /// node closes its connections ([`DataProxyNode::kill_connections`], [`DataProxyNode::stop`]).
    pub stall_reads: bool,
    /// Close a connection, without accepting or answering it, when its n-th batch arrives.
    pub close_after_batches: Option<u64>,
    /// Reject mode (node being taken offline): every batch gets code 2 `SERVICE_CLOSED`.
    pub reject: bool,
    /// The node is not linked to an MQ: every batch gets code 1 `SINK_SERVICE_UNREADY`.
    pub mq_unready: bool,
    /// Send broken reply frames instead of the real ones.
    pub corrupt_replies: Option<ReplyCorruption>,
    /// Only these topics exist (code 115 for any other); `None` = every group and stream.
    pub topics: Option<Vec<Topic>>,
    /// The simulated MQ's store latency for sink-acknowledged frames; `None` =
    /// [`NodeConfig::sink_latency`].
    pub sink_latency: Option<Duration>,
    /// Sink-acknowledged frames the simulated MQ fails, with a sink code (116–119): such a frame
    /// is answered with the code after the latency and its records are not counted.
    pub sink_errors: Option<ErrorInjection>,
}

/// A configured topic: a whole group, or one stream of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The inlong group ID.
    pub group_id: String,
    /// The stream ID, or `None` for every stream of the group.
    pub stream_id: Option<String>,
}

/// Which batches get an injected error code.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorInjection {
    /// Every batch with probability `fraction` (0.0..=1.0) gets `code`.
    Fraction {
        /// The DataProxy `errCode` to answer.
        code: i32,
        /// Share of batches to fail.
        fraction: f64,
    },
    /// The next `count` batches get `code`, then the node behaves again.
    Next {
        /// The DataProxy `errCode` to answer.
        code: i32,
        /// Batches still to fail.
        count: u64,
    },
    /// Every `n`-th batch (the n-th, 2n-th, …) gets `code`.
    EveryNth {
        /// The DataProxy `errCode` to answer.
        code: i32,
        /// The period; 0 and 1 fail every batch.
        n: u64,
        /// Batches seen so far.
        seen: u64,
    },
}

impl ErrorInjection {
    /// The code for the next batch, if it is to fail; `None` when the injection is used up.
    fn draw(&mut self, rng: &mut fastrand::Rng) -> (Option<i32>, bool) {
        match self {
            ErrorInjection::Next { code, count } => {
                *count = count.saturating_sub(1);
                (Some(*code), *count == 0)
            }
            ErrorInjection::Fraction { code, fraction } => {
                ((rng.f64() < *fraction).then_some(*code), false)
            }
            ErrorInjection::EveryNth { code, n, seen } => {
                *seen += 1;
                ((*seen % (*n).max(1) == 0).then_some(*code), false)
            }
        }
    }
}

/// Draws from an optional injection, removing it once used up.
fn draw(injection: &mut Option<ErrorInjection>, rng: &mut fastrand::Rng) -> Option<i32> {
    let (code, used_up) = injection.as_mut()?.draw(rng);
    if used_up {
        *injection = None;
    }
    code
}

/// How reply frames are broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCorruption {
    /// A well-framed reply of an unknown message type with junk content.
    Garbage,
    /// A frame header announcing 1 MiB, far over the 64 KiB a client accepts.
    Oversized,
}

/// What a node has seen since it started (cumulative across stop/start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// Batches accepted.
    pub batches: u64,
    /// Records in accepted batches.
    pub records: u64,
    /// Payload bytes in accepted batches.
    pub payload_bytes: u64,
    /// Batches answered with an error code.
    pub errors: u64,
    /// Accepted batches whose `mid` had been accepted before (retries of an acked batch).
    pub duplicates: u64,
    /// Heartbeats answered.
    pub heartbeats: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed by the node for a protocol violation (oversize, unknown type, …).
    pub protocol_closes: u64,
    /// Frames dropped by the silent fault or by `close_after_batches`.
    pub dropped: u64,
}

impl std::ops::AddAssign for NodeStats {
    fn add_assign(&mut self, other: NodeStats) {
        self.batches += other.batches;
        self.records += other.records;
        self.payload_bytes += other.payload_bytes;
        self.errors += other.errors;
        self.duplicates += other.duplicates;
        self.heartbeats += other.heartbeats;
        self.connections += other.connections;
        self.protocol_closes += other.protocol_closes;
        self.dropped += other.dropped;
    }
}

/// A handle to a running node. Clones share the node; the node stops when [`DataProxyNode::stop`]
/// is called or its runtime shuts down.
#[derive(Debug, Clone)]
pub struct DataProxyNode {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    runtime: Handle,
    addr: SocketAddr,
    config: NodeConfig,
    duplicates: DuplicateDetector,
    state: Mutex<NodeState>,
    /// Bumped to close every open connection.
    epoch: watch::Sender<u64>,
    /// Bumped whenever the faults change (wakes connections that stopped reading).
    faults_changed: watch::Sender<u64>,
    /// The accept loop, while listening.
    acceptor: Mutex<Option<Acceptor>>,
    open_connections: AtomicUsize,
}

#[derive(Debug, Default)]
struct NodeState {
    faults: Faults,
    stats: NodeStats,
    streams: HashMap<String, u64>,
    ledger: HashMap<String, Vec<Bytes>>,
    rng: fastrand::Rng,
}

/// Remembers the `mid`s of recently accepted batches, to count batches accepted twice (a retry
/// of a batch whose ack was lost, possibly on another node). Clones share the memory.
#[derive(Debug, Clone)]
pub struct DuplicateDetector {
    inner: Arc<Mutex<DuplicateWindow>>,
}

#[derive(Debug, Default)]
struct DuplicateWindow {
    capacity: usize,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl DuplicateDetector {
    /// Remembers the last `capacity` distinct `(groupId, mid)` pairs; 0 remembers nothing.
    pub fn new(capacity: usize) -> DuplicateDetector {
        let window = DuplicateWindow { capacity, ..DuplicateWindow::default() };
        DuplicateDetector { inner: Arc::new(Mutex::new(window)) }
    }

    /// Records one accepted batch; true when its `(group, mid)` was seen before.
    pub fn is_duplicate(&self, group: &str, mid: &str) -> bool {
        self.seen_before((group, mid))
    }

    /// Records one accepted batch by whatever identifies it across its retries; true when the
    /// same identity was seen before.
    fn seen_before(&self, identity: impl Hash) -> bool {
        let mut window = lock(&self.inner);
        if window.capacity == 0 {
            return false;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        identity.hash(&mut hasher);
        let key = hasher.finish();
        if !window.seen.insert(key) {
            return true;
        }
        window.order.push_back(key);
        if window.order.len() > window.capacity {
            if let Some(old) = window.order.pop_front() {
                window.seen.remove(&old);
            }
        }
        false
    }
}

/// What the node decided for one batch.
enum Verdict {
    Accept,
    Error(i32, Option<String>),
    /// The `close_after_batches` fault: close after the replies already queued.
    Close,
    /// The real server throws while building the event: close at once, like any protocol error.
    ProtocolClose,
}

impl DataProxyNode {
    /// Binds `addr` (port 0 picks a free port) and starts serving on `runtime`.
    pub fn start(
        runtime: &Handle,
        addr: SocketAddr,
        config: NodeConfig,
    ) -> std::io::Result<DataProxyNode> {
        let duplicates = DuplicateDetector::new(config.dedup_window);
        DataProxyNode::start_with(runtime, addr, config, duplicates)
    }

    /// Like [`DataProxyNode::start`], counting duplicates with a detector shared with other nodes.
    pub fn start_with(
        runtime: &Handle,
        addr: SocketAddr,
        config: NodeConfig,
        duplicates: DuplicateDetector,
    ) -> std::io::Result<DataProxyNode> {
        let listener = bind(runtime, addr)?;
        let addr = listener.local_addr()?;
        let (epoch, _) = watch::channel(0);
        let (faults_changed, _) = watch::channel(0);
        let state = NodeState {
            rng: fastrand::Rng::with_seed(u64::from(addr.port())),
            ..Default::default()
        };
        let node = DataProxyNode {
            inner: Arc::new(NodeInner {
                runtime: runtime.clone(),
                addr,
                config,
                duplicates,
                state: Mutex::new(state),
                epoch,
                faults_changed,
                acceptor: Mutex::new(None),
                open_connections: AtomicUsize::new(0),
            }),
        };
        node.spawn_acceptor(listener);
        Ok(node)
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// True while the node accepts connections.
    pub fn is_listening(&self) -> bool {
        lock(&self.inner.acceptor).is_some()
    }

    /// Stops listening and closes every open connection (a killed node: clients see resets and
    /// then connection refused). Counters are kept. Idempotent.
    pub fn stop(&self) {
        if let Some(acceptor) = lock(&self.inner.acceptor).take() {
            drop(lock(&acceptor.listener).take());
            acceptor.task.abort();
        }
        self.kill_connections();
    }

    /// Listens again on the same address after [`DataProxyNode::stop`]. Idempotent.
    pub fn restart(&self) -> std::io::Result<()> {
        if self.is_listening() {
            return Ok(());
        }
        let listener = bind(&self.inner.runtime, self.inner.addr)?;
        self.spawn_acceptor(listener);
        Ok(())
    }

    /// Closes every open connection but keeps listening.
    pub fn kill_connections(&self) {
        self.inner.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.inner.open_connections.load(Ordering::Relaxed)
    }

    /// Replaces the node's faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.inner.state).faults = faults;
        self.inner.faults_changed.send_modify(|version| *version += 1);
    }

    /// Changes the node's faults in place.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.inner.state).faults);
        self.inner.faults_changed.send_modify(|version| *version += 1);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        lock(&self.inner.state).faults.clone()
    }

    /// Counters since the node started.
    pub fn stats(&self) -> NodeStats {
        lock(&self.inner.state).stats
    }

    /// Records accepted per stream ID.
    pub fn stream_counts(&self) -> HashMap<String, u64> {
        lock(&self.inner.state).streams.clone()
    }

    /// The accepted records of every stream in arrival order (empty unless
    /// [`NodeConfig::ledger`] is on).
    pub fn ledger(&self) -> HashMap<String, Vec<Bytes>> {
        lock(&self.inner.state).ledger.clone()
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        // The listener sits in a slot that `stop` empties synchronously, so the port is free the
        // moment `stop` returns (aborting the task alone would close it some time later).
        let slot = Arc::new(Mutex::new(Some(listener)));
        let node = self.clone();
        let task_slot = slot.clone();
        let task = self.inner.runtime.spawn(async move {
            loop {
                let accepted = std::future::poll_fn(|cx| match lock(&task_slot).as_ref() {
                    Some(listener) => listener.poll_accept(cx).map(Some),
                    None => std::task::Poll::Ready(None),
                })
                .await;
                match accepted {
                    None => return,
                    Some(Ok((stream, peer))) => {
                        lock(&node.inner.state).stats.connections += 1;
                        tracing::debug!(node = %node.inner.addr, %peer, "accepted");
                        let node = node.clone();
                        tokio::spawn(async move { node.serve_connection(stream).await });
                    }
                    Some(Err(error)) => {
                        tracing::warn!(node = %node.inner.addr, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        *lock(&self.inner.acceptor) = Some(Acceptor { task, listener: slot });
    }

    async fn serve_connection(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let inner = &self.inner;
        inner.open_connections.fetch_add(1, Ordering::Relaxed);
        let mut epoch = inner.epoch.subscribe();
        let mut faults_changed = inner.faults_changed.subscribe();
        let (mut reader, writer) = stream.into_split();
        let pending = Arc::new(AtomicUsize::new(0));
        let (replies, reply_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer_task = tokio::spawn(write_replies(writer, reply_rx, pending.clone()));
        let mut conn =
            Connection { buf: BytesMut::with_capacity(256 << 10), ..Connection::default() };
        let outcome = 'serve: loop {
            // The stall_reads fault: read nothing more until it is lifted or the node closes
            // its connections.
            while lock(&inner.state).faults.stall_reads {
                tokio::select! {
                    changed = faults_changed.changed() => if changed.is_err() { break 'serve "node gone" },
                    _ = epoch.changed() => break 'serve "killed",
                }
            }
            conn.buf.reserve(64 << 10);
            let read = tokio::select! {
                read = tokio::time::timeout(inner.config.read_idle_timeout, reader.read_buf(&mut conn.buf)) => read,
                _ = epoch.changed() => break "killed",
            };
            match read {
                Err(_) => break "read idle timeout",
                Ok(Err(_)) => break "read error",
                Ok(Ok(0)) => break "closed by peer",
                Ok(Ok(_)) => {}
            }
            let mut out = Vec::new();
            let processed = self.process_frames(&mut conn, &mut out);
            for job in conn.sink_jobs.drain(..) {
                let (node, replies, pending) = (self.clone(), replies.clone(), pending.clone());
                tokio::spawn(async move { node.run_sink(job, replies, pending).await });
            }
            let delay = match processed {
                Ok(delay) => delay,
                Err(reason) => break reason,
            };
            if !out.is_empty() {
                let queued = pending.fetch_add(out.len(), Ordering::Relaxed) + out.len();
                if queued > inner.config.max_pending_reply_bytes {
                    break "replies not drained";
                }
                if replies.send((Instant::now() + delay, out)).is_err() {
                    break "write error";
                }
            }
            if conn.closing {
                break "close_after_batches fault";
            }
        };
        tracing::debug!(node = %inner.addr, outcome, "connection closed");
        drop(replies);
        if outcome == "killed" || outcome == "protocol violation" {
            writer_task.abort();
        } else {
            let _ = writer_task.await;
        }
        inner.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Handles every whole frame in `conn.buf`, appending replies to `out` and sink-acknowledged
    /// frames to `conn.sink_jobs`. Returns the reply delay, or why the connection must close.
    fn process_frames(
        &self,
        conn: &mut Connection,
        out: &mut Vec<u8>,
    ) -> Result<Duration, &'static str> {
        let inner = &self.inner;
        let mut delay = Duration::ZERO;
        loop {
            let len = match protocol::split_frame(&conn.buf, inner.config.max_msg_length) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(delay),
                Err(error) => {
                    tracing::debug!(node = %inner.addr, %error, "closing connection");
                    lock(&inner.state).stats.protocol_closes += 1;
                    return Err("protocol violation");
                }
            };
            let frame = &conn.buf[..len];
            let request =
                match codec::decode_request(frame, inner.config.ingest_mode, &mut conn.scratch) {
                    Ok(request) => request,
                    Err(error) => {
                        tracing::debug!(node = %inner.addr, %error, "closing connection");
                        lock(&inner.state).stats.protocol_closes += 1;
                        return Err("protocol violation");
                    }
                };
            let mut state = lock(&inner.state);
            delay = state.faults.ack_delay;
            let corrupt = state.faults.corrupt_replies;
            if state.faults.silent {
                state.stats.dropped += 1;
                drop(state);
                conn.buf.advance(len);
                continue;
            }
            let dp_ip = inner.config.dp_ip.as_str();
            match request {
                Request::Heartbeat => {
                    state.stats.heartbeats += 1;
                    drop(state);
                    write_reply(out, corrupt, |out| out.extend_from_slice(&HEARTBEAT_REPLY));
                }
                Request::BinHeartbeat(heartbeat) => {
                    state.stats.heartbeats += 1;
                    drop(state);
                    let now_secs = u32::try_from(unix_ms() / 1000).unwrap_or(u32::MAX);
                    write_reply(out, corrupt, |out| {
                        codec::encode_bin_heartbeat_reply(out, now_secs, &heartbeat);
                    });
                }
                Request::Rejected(rejection) => {
                    state.stats.errors += 1;
                    drop(state);
                    if rejection.wants_reply {
                        let error = Some((rejection.code, rejection.err_msg.as_deref()));
                        write_reply(out, corrupt, |out| {
                            encode_answer(
                                out,
                                rejection.reply_to,
                                dp_ip,
                                error,
                                rejection.echo.as_deref(),
                                None,
                            );
                        });
                    }
                }
                Request::Batch(batch) => {
                    conn.batches += 1;
                    let verdict = state.judge(&batch, conn.batches);
                    let to_sink = matches!(verdict, Verdict::Accept)
                        && batch.sink_ack
                        && batch.wants_reply
                        && matches!(batch.reply_to, ReplyTo::Bin(_));
                    let now_ms = unix_ms();
                    match verdict {
                        Verdict::Accept if to_sink => {
                            let latency =
                                state.faults.sink_latency.unwrap_or(inner.config.sink_latency)
                                    + state.faults.ack_delay;
                            drop(state);
                            conn.sink_jobs.push(SinkJob::new(
                                &batch,
                                &inner.config,
                                now_ms,
                                Instant::now() + latency,
                                corrupt,
                            ));
                        }
                        Verdict::Accept => {
                            state.account(&Stored::of(&batch, &inner.config), &inner.duplicates);
                        }
                        Verdict::Error(..) => state.stats.errors += 1,
                        Verdict::Close => state.stats.dropped += 1,
                        Verdict::ProtocolClose => state.stats.protocol_closes += 1,
                    }
                    match verdict {
                        Verdict::Close => {
                            conn.closing = true;
                            return Ok(delay);
                        }
                        Verdict::ProtocolClose => return Err("protocol violation"),
                        _ if !batch.wants_reply || to_sink => {}
                        // syncSend/proxySend on a txt frame: the real sink never answers it.
                        Verdict::Accept if batch.sink_ack => {}
                        Verdict::Accept => write_reply(out, corrupt, |out| {
                            let echo = stored(&batch, now_ms);
                            encode_answer(
                                out,
                                batch.reply_to,
                                dp_ip,
                                None,
                                Some(&echo),
                                batch.echo_body,
                            );
                        }),
                        Verdict::Error(code, msg) => write_reply(out, corrupt, |out| {
                            // 114 happens after the attrs were rewritten; the others before.
                            let echo = if code == err_codes::PUT_EVENT_TO_CHANNEL_FAILURE {
                                stored(&batch, now_ms)
                            } else {
                                batch.attrs.clone()
                            };
                            let error = Some((code, msg.as_deref()));
                            encode_answer(out, batch.reply_to, dp_ip, error, Some(&echo), None);
                        }),
                    }
                }
            }
            conn.buf.advance(len);
        }
    }

    /// The simulated MQ sink of one frame: waits for the store latency, then stores the event
    /// (counting its records) or fails it with an injected sink code, and answers it.
    async fn run_sink(
        self,
        job: SinkJob,
        replies: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
        pending: Arc<AtomicUsize>,
    ) {
        tokio::time::sleep_until(job.due).await;
        let failure = {
            let mut state = lock(&self.inner.state);
            let state = &mut *state;
            match draw(&mut state.faults.sink_errors, &mut state.rng) {
                Some(code) => {
                    state.stats.errors += 1;
                    Some(code)
                }
                None => {
                    state.account(&job.stored, &self.inner.duplicates);
                    None
                }
            }
        };
        let mut out = Vec::new();
        write_reply(&mut out, job.corrupt, |out| {
            let message = failure.map(sink_message);
            let error = failure.map(|code| (code, message.as_deref()));
            // A failed event's attrs are the stored ones too: the sink only sees stored events.
            encode_answer(
                out,
                job.reply_to,
                &self.inner.config.dp_ip,
                error,
                Some(&job.echo),
                None,
            );
        });
        pending.fetch_add(out.len(), Ordering::Relaxed);
        // A connection gone meanwhile: the MQ has the event, the answer is lost.
        let _ = replies.send((Instant::now(), out));
    }
}

/// The attribute string a success or 114 reply echoes, per frame kind.
fn stored<'b>(batch: &'b codec::Batch<'_>, now_ms: u64) -> Cow<'b, str> {
    match batch.reply_to {
        ReplyTo::Text(_) => codec::stored_attrs(&batch.attrs, now_ms),
        ReplyTo::Bin(_) => codec::stored_bin_attrs(&batch.attrs, now_ms),
    }
}

/// Appends the reply to a data frame in the frame kind's format.
fn encode_answer(
    out: &mut Vec<u8>,
    reply_to: ReplyTo,
    dp_ip: &str,
    error: Option<(i32, Option<&str>)>,
    echo: Option<&str>,
    echo_body: Option<&[u8]>,
) {
    match reply_to {
        ReplyTo::Text(msg_type) => {
            let body = echo_body.unwrap_or(b"2");
            codec::encode_reply_with_body(out, msg_type, body, dp_ip, error, echo);
        }
        ReplyTo::Bin(uniq) => codec::encode_bin_reply(out, uniq, dp_ip, error, echo),
    }
}

/// The errMsg written with an injected sink code.
fn sink_message(code: i32) -> String {
    match code {
        err_codes::NO_AVAILABLE_PRODUCER => "No available producer".to_owned(),
        err_codes::PRODUCER_IS_NULL => "Producer is null".to_owned(),
        err_codes::SEND_REQUEST_TO_MQ_FAILURE => "Send request to MQ failure".to_owned(),
        err_codes::MQ_RETURN_ERROR => "MQ returned an error".to_owned(),
        _ => format!("injected sink error {code}"),
    }
}

/// What identifies a batch across its retries, for the duplicate count.
enum Identity<'b> {
    /// A txt frame's `mid` (within its group).
    Mid(Cow<'b, str>),
    /// A type 7 frame's `uniq` (within its group and stream).
    Uniq(u32),
}

/// What an accepted frame adds to the node's counters, owned when it waits for the sink.
struct Stored<'b> {
    group: Cow<'b, str>,
    stream: Cow<'b, str>,
    identity: Option<Identity<'b>>,
    count: u32,
    payload_bytes: u64,
    /// The records, when the node keeps a ledger.
    ledger: Option<Vec<Bytes>>,
}

impl<'b> Stored<'b> {
    fn of(batch: &'b codec::Batch<'_>, config: &NodeConfig) -> Stored<'b> {
        let ledger = config.ledger.then(|| {
            let mut block =
                BytesMut::with_capacity(usize::try_from(batch.payload_bytes).unwrap_or(0));
            let mut ranges = Vec::with_capacity(batch.count as usize);
            for record in batch.records() {
                let start = block.len();
                block.extend_from_slice(record);
                ranges.push(start..block.len());
            }
            let block = block.freeze();
            ranges.into_iter().map(|range| block.slice(range)).collect()
        });
        let stream = batch.attr("streamId").unwrap_or_default();
        // What identifies a batch across its retries: its `mid` (txt frames, as the Go SDK and
        // this one write it), or a type 7 frame's `uniq` within its stream (a retry resends the
        // same frame; a stream's batches come from one sender's shard).
        let identity = match batch.reply_to {
            ReplyTo::Bin(uniq) => Some(Identity::Uniq(uniq)),
            ReplyTo::Text(_) => batch.attr("mid").map(|mid| Identity::Mid(Cow::Borrowed(mid))),
        };
        Stored {
            group: Cow::Borrowed(batch.attr("groupId").unwrap_or_default()),
            stream: Cow::Borrowed(stream),
            identity,
            count: batch.count,
            payload_bytes: batch.payload_bytes,
            ledger,
        }
    }

    fn into_owned(self) -> Stored<'static> {
        Stored {
            group: Cow::Owned(self.group.into_owned()),
            stream: Cow::Owned(self.stream.into_owned()),
            identity: self.identity.map(|identity| match identity {
                Identity::Mid(mid) => Identity::Mid(Cow::Owned(mid.into_owned())),
                Identity::Uniq(uniq) => Identity::Uniq(uniq),
            }),
            ..self
        }
    }
}

/// A frame waiting for the simulated MQ.
struct SinkJob {
    reply_to: ReplyTo,
    /// The stored attributes the answer echoes.
    echo: String,
    stored: Stored<'static>,
    due: Instant,
    corrupt: Option<ReplyCorruption>,
}

impl SinkJob {
    fn new(
        batch: &codec::Batch<'_>,
        config: &NodeConfig,
        now_ms: u64,
        due: Instant,
        corrupt: Option<ReplyCorruption>,
    ) -> SinkJob {
        SinkJob {
            reply_to: batch.reply_to,
            echo: stored(batch, now_ms).into_owned(),
            stored: Stored::of(batch, config).into_owned(),
            due,
            corrupt,
        }
    }
}

/// The accept loop of a listening node and the slot holding its listener.
#[derive(Debug)]
struct Acceptor {
    task: tokio::task::JoinHandle<()>,
    listener: Arc<Mutex<Option<TcpListener>>>,
}

/// Per-connection read state.
#[derive(Default)]
struct Connection {
    buf: BytesMut,
    scratch: Vec<u8>,
    batches: u64,
    closing: bool,
    /// Frames handed to the sink by the last [`DataProxyNode::process_frames`].
    sink_jobs: Vec<SinkJob>,
}

impl NodeState {
    /// The handler's checks (§3.2 steps 9–13, §4.4 steps 6–10) plus the injected faults.
    fn judge(&mut self, batch: &codec::Batch<'_>, conn_batches: u64) -> Verdict {
        let faults = &mut self.faults;
        if faults.close_after_batches.is_some_and(|n| conn_batches >= n) {
            return Verdict::Close;
        }
        if faults.reject {
            return Verdict::Error(err_codes::SERVICE_CLOSED, None);
        }
        if faults.mq_unready {
            return Verdict::Error(err_codes::SINK_SERVICE_UNREADY, None);
        }
        if let Some((code, msg)) = &batch.handler_error {
            return Verdict::Error(*code, Some(msg.clone()));
        }
        let group = batch.attr("groupId").unwrap_or_default();
        if group.trim().is_empty() {
            return Verdict::Error(err_codes::MISS_REQUIRED_GROUPID_ARGUMENT, None);
        }
        let stream = batch.attr("streamId").unwrap_or_default();
        if let Some(topics) = &faults.topics {
            let known = topics.iter().any(|topic| {
                topic.group_id == group && topic.stream_id.as_deref().is_none_or(|s| s == stream)
            });
            if !known {
                let msg =
                    format!("Topic not configured for groupId=({group}), streamId=({stream})");
                return Verdict::Error(err_codes::TOPIC_IS_BLANK, Some(msg));
            }
        }
        if batch.truncated_entry {
            return Verdict::ProtocolClose;
        }
        match draw(&mut faults.errors, &mut self.rng) {
            None => Verdict::Accept,
            Some(code) => Verdict::Error(code, injected_message(code)),
        }
    }

    fn account(&mut self, stored: &Stored<'_>, duplicates: &DuplicateDetector) {
        self.stats.batches += 1;
        self.stats.records += u64::from(stored.count);
        self.stats.payload_bytes += stored.payload_bytes;
        let stream: &str = &stored.stream;
        match self.streams.get_mut(stream) {
            Some(count) => *count += u64::from(stored.count),
            None => {
                self.streams.insert(stream.to_owned(), u64::from(stored.count));
            }
        }
        let duplicate = match &stored.identity {
            Some(Identity::Mid(mid)) => duplicates.is_duplicate(&stored.group, mid),
            Some(Identity::Uniq(uniq)) => {
                duplicates.seen_before((&*stored.group, &*stored.stream, *uniq))
            }
            None => false,
        };
        if duplicate {
            self.stats.duplicates += 1;
        }
        if let Some(records) = &stored.ledger {
            self.ledger.entry(stream.to_owned()).or_default().extend(records.iter().cloned());
        }
    }
}

/// The errMsg the real server writes with an injected code, where it writes one.
fn injected_message(code: i32) -> Option<String> {
    match code {
        err_codes::PUT_EVENT_TO_CHANNEL_FAILURE => {
            Some("Put msg event to channel failure: ChannelException: channel full".to_owned())
        }
        err_codes::SINK_SERVICE_UNREADY | err_codes::SERVICE_CLOSED => None,
        code if err_codes::is_sink_error(code) => Some(sink_message(code)),
        _ => Some(format!("injected error {code}")),
    }
}

fn write_reply(
    out: &mut Vec<u8>,
    corrupt: Option<ReplyCorruption>,
    real: impl FnOnce(&mut Vec<u8>),
) {
    match corrupt {
        None => real(out),
        Some(ReplyCorruption::Garbage) => out.extend_from_slice(b"\x00\x00\x00\x0cgarbage-junk"),
        Some(ReplyCorruption::Oversized) => {
            out.extend_from_slice(&(1u32 << 20).to_be_bytes());
            out.extend_from_slice(&[5; 1024]);
        }
    }
}

async fn write_replies(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut replies: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    pending: Arc<AtomicUsize>,
) {
    while let Some((due, bytes)) = replies.recv().await {
        tokio::time::sleep_until(due).await;
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        pending.fetch_sub(bytes.len(), Ordering::Relaxed);
    }
    let _ = writer.shutdown().await;
}

fn bind(runtime: &Handle, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let _guard = runtime.enter();
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Locks a mutex, ignoring poisoning: the node's state stays usable for the test that reads it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
