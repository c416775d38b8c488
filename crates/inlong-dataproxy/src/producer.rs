//! The public face: [`Producer`], its builder, and [`DeliveryFuture`].
//!
//! `send` routes a record to a shard by a hash of its stream ID (so one stream's records stay in
//! order on one shard), takes room in the pending budget, and appends the record to the shard's
//! open batch under that shard's lock: no allocation, no channel, no thread handoff per record.
//! The future it returns shares its batch's completion state.
//!
//! Every future resolves exactly once: with a report, with the server's error, after its
//! attempts, at the close deadline, or with `ProducerClosed` when the producer is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::budget::PendingBudget;
use crate::buffers::{CapacityPlan, FramePool};
use crate::completion::{run_callback, BatchCompletion, Callback, DeliveryReport};
use crate::config::{ProducerConfig, Secret, Transport};
use crate::control::{self, ControlThread};
use crate::discovery::AuthProvider;
use crate::engine::{BatchAccumulator, BatchLimits, EngineConfig};
use crate::error::Error;
use crate::metrics::{MetricsRegistry, ProducerMetrics, ShardMetrics};
use crate::protocol::{AddColumns, FrameBudget, FrameFormat};
use crate::record::{Record, StreamId};
use crate::shard::{self, Command, Driver, ShardSettings, ShardShared, Waiting};

/// Builds a [`Producer`]. Every option has the Go SDK's default; see [`ProducerConfig`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProducerBuilder {
    config: ProducerConfig,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ProducerBuilder {
    /// `GroupID` (required).
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.config.group_id = group_id.into();
        self
    }

    /// `URL`: the Manager's `getIpList` base URL, without the group ID.
    pub fn manager_url(mut self, url: impl Into<String>) -> Self {
        self.config.manager_url = Some(url.into());
        self
    }

    /// A static node list instead of the Manager: `host:port` strings (IP literals, `[v6]:port`,
    /// or host names resolved at `build()`) or `SocketAddr`s, e.g.
    /// `.endpoints(["dp1.example:46801", "127.0.0.1:46802"])`.
    pub fn endpoints<I>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: ToString,
    {
        self.config.endpoints = endpoints.into_iter().map(|e| e.to_string()).collect();
        self
    }

    /// `MetricsName`.
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.config.metrics_name = name.into();
        self
    }

    /// `MetricsRegistry`: where the collectors live (default: the process-wide one).
    pub fn metrics_registry(mut self, registry: MetricsRegistry) -> Self {
        self.config.metrics_registry = Some(registry);
        self
    }

    /// `WorkerNum`: an alias of [`ProducerBuilder::shards`].
    pub fn worker_num(self, workers: usize) -> Self {
        self.shards(workers)
    }

    /// Built-in Basic auth for the Manager.
    pub fn secret(mut self, secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        self.config.secret_id = Some(secret_id.into());
        self.config.secret_key = Some(Secret(secret_key.into()));
        self
    }

    /// `tenant` header for the Manager.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.config.tenant = Some(tenant.into());
        self
    }

    /// An auth hook like the Go SDK's `Auth`.
    pub fn auth_provider(mut self, provider: Arc<dyn AuthProvider>) -> Self {
        self.config.auth_provider = Some(provider);
        self
    }

    /// `AddColumns`: one extra attribute on every batch (`{{ip}}` is the host IP).
    pub fn add_column(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.add_columns.push((key.into(), value.into()));
        self
    }

    /// `MaxConnLifetime`.
    pub fn max_conn_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.max_conn_lifetime = Some(lifetime);
        self
    }

    /// Where the node-list cache lives.
    pub fn node_list_cache_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.node_list_cache_path = Some(path.into());
        self
    }

    setters! {
        /// `UpdateInterval`.
        update_interval: Duration,
        /// `ConnTimeout`.
        conn_timeout: Duration,
        /// `WriteBufferSize`.
        write_buffer_size: usize,
        /// `ReadBufferSize`.
        read_buffer_size: usize,
        /// `SocketSendBufferSize`.
        socket_send_buffer_size: usize,
        /// `SocketRecvBufferSize`.
        socket_recv_buffer_size: usize,
        /// Shard threads.
        shards: usize,
        /// Pin shard threads to cores.
        pin_shards: bool,
        /// `auto`, `io_uring` or `epoll`.
        transport: Transport,
        /// `SendTimeout`.
        send_timeout: Duration,
        /// `MaxRetries` (0 = no retry).
        max_retries: u32,
        /// `RetryOnServerError`.
        retry_on_server_error: bool,
        /// `RetryInitialInterval`.
        retry_initial_interval: Duration,
        /// `BatchingMaxPublishDelay`.
        batching_max_publish_delay: Duration,
        /// `BatchingMaxMessages`.
        batching_max_messages: usize,
        /// `BatchingMaxSize`.
        batching_max_size: usize,
        /// `MaxPendingMessages`.
        max_pending_messages: usize,
        /// Byte budget of pending records.
        max_pending_bytes: usize,
        /// `BlockIfQueueIsFull`.
        block_if_queue_full: bool,
        /// Frame size limit.
        max_packet_length: usize,
        /// Snappy compression of bodies over 256 bytes.
        compression: bool,
        /// Wire protocol: msgType 5 (default) or 7.
        msg_type: crate::MsgType,
        /// Acked by the DataProxy node (default) or by its MQ sink (msgType 7 only).
        ack: crate::Ack,
        /// Replace connections every 30–80 s (random per connection).
        conn_rotation: bool,
        /// Heartbeat interval on idle connections.
        heartbeat_interval: Duration,
        /// Heartbeat reply deadline.
        heartbeat_timeout: Duration,
        /// Manager connect timeout.
        manager_connect_timeout: Duration,
        /// Manager request timeout.
        manager_request_timeout: Duration,
        /// Accept invalid Manager certificates.
        manager_accept_invalid_certs: bool,
        /// Keep a node-list cache on disk.
        node_list_cache: bool,
        /// Oldest cached node list still used.
        node_list_cache_max_age: Duration,
        /// How long a drop without `close` waits for pending records (0: fail them at once).
        close_timeout: Duration,
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the options, finds the DataProxy nodes (one bounded Manager lookup, or the
    /// static list), probes the I/O driver once, and starts the shards. Never hangs: every step
    /// has a deadline. Callable from sync and async code (the lookup runs on the producer's own
    /// control thread).
    pub fn build(self) -> Result<Producer, Error> {
        Producer::start(self.config)
    }
}

/// A producer: thread-per-core shards sending batches to DataProxy. See the crate docs.
///
/// `Producer` is `Send + Sync`; share it with `Arc`. Dropping it without [`Producer::close`]
/// fails every pending delivery with [`Error::ProducerClosed`].
#[derive(Debug)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this producer's shard threads apart from every other thread (see
    /// [`shard::on_shard_of`]).
    id: u64,
    config: ProducerConfig,
    shards: Vec<Arc<ShardShared>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    budget: Arc<PendingBudget>,
    closed: AtomicBool,
    driver: Driver,
    control: ControlThread,
    metrics: ProducerMetrics,
    /// Each shard's metric handles and own counters.
    shard_metrics: Vec<ShardMetrics>,
}

/// The longest [`Producer::purge`] waits for the shards.
const PURGE_WAIT: Duration = Duration::from_secs(10);

/// FxHash (unseeded): a fixed hash, so a stream always lands on the same shard.
fn shard_of(stream: &str, shards: usize) -> usize {
    use std::hash::BuildHasher as _;
    let hash = rustc_hash::FxBuildHasher.hash_one(stream);
    // The remainder is below `shards`, a usize.
    #[allow(clippy::cast_possible_truncation)]
    let index = (hash % shards as u64) as usize;
    index
}

/// The host's IP for `{{ip}}` add-columns: the address the kernel would use to leave the host.
fn host_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("10.255.255.255:9")?;
            socket.local_addr()
        })
        .map_or_else(|_| "127.0.0.1".to_owned(), |addr| addr.ip().to_string())
}

impl Producer {
    /// A builder with every option at its default.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    fn start(mut config: ProducerConfig) -> Result<Producer, Error> {
        config.validate()?;
        let registry =
            config.metrics_registry.clone().unwrap_or_else(MetricsRegistry::default_registry);
        let metrics = ProducerMetrics::new(&registry, &config.metrics_name)?;
        metrics.touch();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let producer_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let control = ControlThread::start()?;
        let endpoints = match control::initial_endpoints(&control, &config) {
            Ok(endpoints) => {
                if let Some(source) = endpoints.source {
                    metrics.discovery_lookup(source.label());
                }
                endpoints
            }
            Err(error) => {
                metrics.discovery_lookup("error");
                return Err(error);
            }
        };
        if let Some(limit) = endpoints.max_packet_length {
            config.max_packet_length = limit.clamp(1024, 20 << 20);
        }
        let driver = shard::probe_driver(config.transport)?;
        metrics.set_transport(driver.name());
        tracing::info!(
            transport = driver.name(),
            shards = config.shards,
            "inlong-dataproxy producer starting"
        );

        let add_columns =
            AddColumns::new(config.add_columns.iter().map(|(k, v)| (k, v)), &host_ip())?;
        let mid_prefix = format!("{:x}-", unique_tag());
        let format = FrameFormat::new(config.msg_type, config.ack);
        let budget =
            Arc::new(PendingBudget::new(config.max_pending_messages, config.max_pending_bytes));
        let limits = BatchLimits {
            max_messages: u32::try_from(config.batching_max_messages).unwrap_or(u32::MAX),
            max_payload_bytes: config.batching_max_size,
            linger: config.batching_max_publish_delay,
            frame: FrameBudget::new(
                config.max_packet_length,
                format,
                &config.group_id,
                mid_prefix.len(),
                &add_columns,
                config.compression,
            ),
        };
        let cores = if config.pin_shards {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        // What every shard reserves and keeps, computed once.
        let plan = CapacityPlan::new(&config);
        // One pool of frame buffers for all shards, as the pending budget is one for all.
        let frames = Arc::new(FramePool::new(plan.frame_pool_bytes));
        let mut shards = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        let mut shard_metrics = Vec::with_capacity(config.shards);
        let refresh_now = Arc::new(tokio::sync::Notify::new());
        for index in 0..config.shards {
            let mut accumulator = BatchAccumulator::new(limits);
            accumulator.reserve(&plan);
            accumulator.share_pool(frames.clone());
            let shared =
                Arc::new(ShardShared::new(accumulator, shard::shard_key(producer_id, index)));
            let settings = ShardSettings {
                index,
                producer_id,
                waiting_timeout: config.send_timeout,
                engine: EngineConfig {
                    group_id: config.group_id.clone(),
                    wid: u32::try_from(index).unwrap_or(u32::MAX),
                    mid_prefix: mid_prefix.clone(),
                    send_timeout: config.send_timeout,
                    max_retries: config.max_retries,
                    retry_initial_interval: config.retry_initial_interval,
                    retry_max_interval: crate::config::RETRY_MAX_INTERVAL,
                    retry_on_server_error: config.retry_on_server_error,
                    max_frame_len: config.max_packet_length,
                    heartbeat_interval: config.heartbeat_interval,
                    heartbeat_timeout: config.heartbeat_timeout,
                    plan,
                    compression: config.compression,
                    format,
                    start_unix_ms: crate::shard::unix_ms(),
                    add_columns: add_columns.clone(),
                    seed: unique_tag() ^ index as u64,
                },
                endpoints: endpoints.addrs.clone(),
                conn_timeout: config.conn_timeout,
                socket_send_buffer_size: config.socket_send_buffer_size,
                socket_recv_buffer_size: config.socket_recv_buffer_size,
                max_conn_lifetime: config.max_conn_lifetime,
                conn_rotation: config.conn_rotation,
                refresh_now: endpoints.discovery.as_ref().map(|_| refresh_now.clone()),
                driver,
                core: (config.shards <= cores.len()).then(|| cores[index]),
                metrics: metrics.shard(index),
                frames: frames.clone(),
            };
            shard_metrics.push(settings.metrics.clone());
            let thread = shard::spawn(settings, shared.clone(), budget.clone()).map_err(|e| {
                Error::Spawn { what: "a shard thread", reason: e.to_string().into() }
            })?;
            shards.push(shared);
            threads.push(thread);
        }
        if let Some(discovery) = endpoints.discovery.clone() {
            let targets = shards.clone();
            let lookups = metrics.clone();
            control.spawn_refresh(
                discovery,
                config.update_interval,
                endpoints.addrs.clone(),
                move |addrs| {
                    for shard in &targets {
                        shard.command(Command::SetEndpoints(addrs.clone()));
                    }
                },
                move |result| lookups.discovery_lookup(result),
                refresh_now,
            );
        }
        let inner = Inner {
            id: producer_id,
            config,
            shards,
            threads: Mutex::new(threads),
            budget,
            closed: AtomicBool::new(false),
            driver,
            control,
            metrics,
            shard_metrics,
        };
        Ok(Producer { inner: Arc::new(inner) })
    }

    /// Sends a record. Never blocks: the returned future resolves when the record is acked or
    /// has failed. With `block_if_queue_full`, a record that finds the queue full is still taken:
    /// it waits in the producer, in send order, for room (at most `send_timeout`, then it fails
    /// with [`Error::QueueFullTimeout`], 10005), whether or not its future is polled or kept;
    /// otherwise it fails at once with [`Error::QueueFull`] (10004).
    pub fn send(&self, record: Record) -> DeliveryFuture {
        match self.inner.enqueue(record, &mut None) {
            Ok(accepted) => DeliveryFuture::pending(accepted),
            Err((Error::QueueFull, record)) if self.inner.config.block_if_queue_full => {
                self.queued(record, None)
            }
            Err((error, _)) => {
                self.inner.refused_if_full(&error);
                DeliveryFuture::failed(error)
            }
        }
    }

    /// Sends a record, waiting up to `queue_timeout` for room when the queue is full, as
    /// rdkafka's `FutureProducer::send(record, queue_timeout)`, whatever `block_if_queue_full`
    /// says. Never blocks the calling thread (nor an executor's): a record that finds no room
    /// waits in its shard's queue, in send order, and the returned future resolves with its
    /// delivery, or with [`Error::QueueFullTimeout`] (10005) once it has waited `queue_timeout`.
    pub fn send_with_queue_timeout(
        &self,
        record: Record,
        queue_timeout: Duration,
    ) -> DeliveryFuture {
        match self.inner.enqueue(record, &mut None) {
            Ok(accepted) => DeliveryFuture::pending(accepted),
            Err((Error::QueueFull, record)) => self.queued(record, Some(queue_timeout)),
            Err((error, _)) => DeliveryFuture::failed(error),
        }
    }

    /// A record that found no room, handed to its shard's wait queue; `timeout` is how long
    /// it may wait (`None`: `send_timeout`).
    fn queued(&self, record: Record, timeout: Option<Duration>) -> DeliveryFuture {
        let slot = Arc::new(QueuedSlot::default());
        let resolver = slot.clone();
        let shard = self.inner.shard_for(&record).key();
        let callback = Box::new(move |result| resolver.resolve(result));
        self.inner.wait_for_room(record, callback, timeout);
        DeliveryFuture { state: FutureState::Queued(slot), shard }
    }

    /// Sends many records of one stream with one call and one future: the records are checked,
    /// admitted to the pending budget and appended to the stream's batches together, under one
    /// lock, so the per-record cost of [`Producer::send`] (a lock, a budget update, a future)
    /// is paid once per call. They keep their order and are sent in the stream's batches as
    /// records sent one by one would be (a large call fills several batches).
    ///
    /// All or nothing: nothing is sent, and the call fails at once, when a record is invalid
    /// ([`Error::InBatch`] naming its index, with the record's error as its source), the
    /// stream ID is invalid, the producer is closed, or the pending budget has no room for all
    /// of them ([`Error::QueueFull`]: there is no waiting for room here; a call of more records
    /// than `max_pending_messages` is taken only when nothing else is pending). An empty call
    /// fails with [`Error::InvalidPayload`].
    ///
    /// The future resolves once every record of the call is resolved: with a
    /// [`BatchDeliveryReport`] when all were acked, otherwise with the error of the first batch
    /// that failed (records of the call carried by other batches may have been delivered; for
    /// per-record outcomes use [`Producer::send_with_callback`]).
    pub fn send_batch<P: AsRef<[u8]>>(
        &self,
        stream: &StreamId,
        payloads: &[P],
    ) -> Result<BatchDeliveryFuture, Error> {
        self.inner.enqueue_batch(stream, payloads).inspect_err(|error| {
            self.inner.metrics.record_refused(error);
        })
    }

    /// Sends a record and calls `callback` with its result, on the shard thread (keep it short;
    /// a panic in it is contained, see the crate docs). Never blocks. With
    /// `block_if_queue_full`, a full queue makes the record wait in the producer as with
    /// [`Producer::send`]; otherwise a full queue or an invalid record calls `callback` at once,
    /// on the calling thread, with the error.
    pub fn send_with_callback<F>(&self, record: Record, callback: F)
    where
        F: FnOnce(Result<DeliveryReport, Error>) + Send + 'static,
    {
        let metadata = record.metadata();
        let mut callback: Option<(u64, Callback)> = Some((metadata, Box::new(callback)));
        match self.inner.enqueue(record, &mut callback) {
            Ok(_) => {}
            Err((Error::QueueFull, record)) if self.inner.config.block_if_queue_full => {
                if let Some((_, callback)) = callback {
                    self.inner.wait_for_room(record, callback, None);
                }
            }
            Err((error, _)) => {
                self.inner.refused_if_full(&error);
                if let Some((_, callback)) = callback {
                    if run_callback(callback, Err(error)) {
                        self.inner.metrics.callback_panicked();
                    }
                }
            }
        }
    }

    /// Sends a record if there is room now; otherwise hands it back with the reason
    /// ([`Error::QueueFull`], [`Error::ProducerClosed`], or a validation error).
    #[allow(clippy::result_large_err)] // The record is handed back, as rdkafka's `send_result`.
    pub fn try_send(&self, record: Record) -> Result<DeliveryFuture, (Error, Record)> {
        match self.inner.enqueue(record, &mut None) {
            Ok(accepted) => Ok(DeliveryFuture::pending(accepted)),
            Err((error, record)) => {
                self.inner.refused_if_full(&error);
                Err((error, record))
            }
        }
    }

    /// For plain threads: waits up to `timeout` for room in the queue, then sends. Fails with
    /// [`Error::QueueFullTimeout`] (10005) when no room appeared in time. Wait for the delivery
    /// itself with [`DeliveryFuture::wait`].
    ///
    /// In a delivery callback of this producer it does not wait (room comes back only once the
    /// callback's own shard goes on): a full queue then fails at once with `QueueFullTimeout`.
    pub fn send_blocking(
        &self,
        record: Record,
        timeout: Duration,
    ) -> Result<DeliveryFuture, Error> {
        let timeout = if shard::on_shard_of(self.inner.id) { Duration::ZERO } else { timeout };
        // The clock is read only once the queue is full: reading it per record cost ~7 % of
        // the send path (`perf record` of `bench`, 100 B records).
        let mut started = None;
        let mut record = record;
        loop {
            match self.inner.enqueue(record, &mut None) {
                Ok(accepted) => return Ok(DeliveryFuture::pending(accepted)),
                Err((Error::QueueFull, back)) => {
                    record = back;
                    let started = *started.get_or_insert_with(Instant::now);
                    let deadline = started + timeout;
                    let inner = &self.inner;
                    let bytes = record.payload().len();
                    let shard = inner.shard_for(&record);
                    // Room, and no record of this shard waiting ahead of this one.
                    let room = |budget: &PendingBudget| {
                        inner.closed.load(Ordering::Acquire)
                            || (!budget.is_full_for(bytes)
                                && (budget.queued() == 0 || shard.waiting_len() == 0))
                    };
                    if !inner.budget.wait_until(deadline, room) {
                        let error = Error::QueueFullTimeout { waited: started.elapsed() };
                        inner.metrics.record_refused(&error);
                        return Err(error);
                    }
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Seals every open batch now and waits until every record sent so far is resolved, or the
    /// timeout passes ([`Error::FlushTimeout`] says how many are still undelivered).
    ///
    /// Called from a delivery callback of this producer, it seals the open batches and returns
    /// at once with [`Error::InCallback`]: the callback's own shard cannot deliver anything
    /// until the callback returns.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        for shard in &self.inner.shards {
            shard.command(Command::Flush);
        }
        if let Some(error) = self.inner.in_callback("flush") {
            return Err(error);
        }
        self.inner.drained(Instant::now() + timeout).await
    }

    /// Like [`Producer::flush`], blocking the calling thread (but never a shard thread: in a
    /// delivery callback it returns [`Error::InCallback`] at once, as `flush` does).
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), Error> {
        for shard in &self.inner.shards {
            shard.command(Command::Flush);
        }
        if let Some(error) = self.inner.in_callback("flush") {
            return Err(error);
        }
        let deadline = Instant::now() + timeout;
        if self.inner.budget.wait_until(deadline, |budget| budget.pending_records() == 0) {
            Ok(())
        } else {
            Err(Error::FlushTimeout { undelivered: self.inner.budget.pending_records() })
        }
    }

    /// Refuses new records (10003), sends what is pending, waits for acks until the timeout, then
    /// fails the rest and stops the shards. Bounded by `timeout` plus a moment.
    ///
    /// Called from a delivery callback of this producer, it starts the close (the shards
    /// deliver what they can until the deadline, then fail the rest and stop) and returns at once
    /// with [`Error::InCallback`] without waiting: the callback's own shard cannot go on until the
    /// callback returns. A later `close` from another thread waits for the end as usual.
    pub async fn close(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        self.inner.begin_close(deadline);
        if let Some(error) = self.inner.in_callback("close") {
            return Err(error);
        }
        // The shards fail what is left at the deadline; their count is the answer.
        let _ = self.inner.drained(deadline).await;
        self.inner.join_shards();
        self.inner.close_result()
    }

    /// Like [`Producer::close`], blocking the calling thread (in a delivery callback, it starts
    /// the close and returns [`Error::InCallback`] at once, as `close` does).
    pub fn close_blocking(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        self.inner.begin_close(deadline);
        if let Some(error) = self.inner.in_callback("close") {
            return Err(error);
        }
        self.inner.budget.wait_until(deadline, |budget| budget.pending_records() == 0);
        self.inner.join_shards();
        self.inner.close_result()
    }

    /// Fails every record not yet acked with [`Error::Purged`] (10002): those waiting for room,
    /// in open batches, queued and in flight (a late ack of one is ignored; it may still have
    /// reached the server). Like rdkafka's `purge`, it does not close the producer: records
    /// sent after it returns are sent as usual. It returns once every shard has failed its
    /// records (their callbacks ran, their futures resolved), which takes a moment; called from
    /// a delivery callback of this producer, it returns at once and the shards purge as soon as
    /// they can (the callback's own shard once the callback returns).
    pub fn purge(&self) {
        let targets: Vec<u64> = self
            .inner
            .shards
            .iter()
            .map(|shard| {
                let target = shard.purges() + 1;
                shard.command(Command::Purge);
                target
            })
            .collect();
        if shard::on_shard_of(self.inner.id) {
            return;
        }
        // Bounded like every wait here; a shard busy for longer still purges when it can.
        let deadline = Instant::now() + PURGE_WAIT;
        let shards = &self.inner.shards;
        self.inner.budget.wait_until(deadline, |_| {
            shards
                .iter()
                .zip(&targets)
                .all(|(shard, &target)| shard.purges() >= target || shard.has_stopped())
        });
    }

    /// Records sent and not yet resolved (including records waiting for room in blocking mode).
    pub fn in_flight_count(&self) -> u64 {
        self.inner.budget.pending_records()
    }

    /// A snapshot of what the producer has done so far, per shard and in total.
    pub fn stats(&self) -> ProducerStats {
        let mut total =
            ProducerStats { in_flight_records: self.in_flight_count(), ..ProducerStats::default() };
        for (worker, (shard, metrics)) in
            self.inner.shards.iter().zip(&self.inner.shard_metrics).enumerate()
        {
            let counters = &metrics.counters;
            let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
            let gauge = |counter: &std::sync::atomic::AtomicI64| {
                u64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(0)
            };
            let stats = ShardStats {
                worker,
                records_sent: shard.accumulator().appended(),
                records_acked: load(&counters.acked_records),
                records_failed: load(&counters.failed_records),
                payload_bytes_acked: load(&counters.acked_bytes),
                inflight_batches: gauge(&counters.inflight_batches),
                connections: gauge(&counters.connections),
                callback_panics: load(&counters.callback_panics),
            };
            total.records_sent += stats.records_sent;
            total.records_acked += stats.records_acked;
            total.records_failed += stats.records_failed;
            total.payload_bytes_acked += stats.payload_bytes_acked;
            total.inflight_batches += stats.inflight_batches;
            total.connections += stats.connections;
            total.callback_panics += stats.callback_panics;
            total.shards.push(stats);
        }
        total
    }

    /// The I/O driver in use: `"io_uring"` or `"epoll"`.
    pub fn transport(&self) -> &'static str {
        self.inner.driver.name()
    }

    /// The options in force (after the Manager's `maxPacketLength`).
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let inner = &self.inner;
        if !inner.closed.swap(true, Ordering::AcqRel) {
            inner.budget.wake_all();
            // Up to `close_timeout` for the pending records (never in a delivery callback, whose
            // own shard can deliver nothing until it returns); then fail the rest at once: a
            // dropped producer must not hang its caller.
            let grace = inner.config.close_timeout;
            if !grace.is_zero() && !shard::on_shard_of(inner.id) {
                for shard in &inner.shards {
                    shard.command(Command::Flush);
                }
                let deadline = Instant::now() + grace;
                inner.budget.wait_until(deadline, |budget| budget.pending_records() == 0);
            }
            for shard in &inner.shards {
                shard.command(Command::Abort);
            }
            inner.budget.wake_all();
        }
        inner.join_shards();
    }
}

impl Inner {
    #[allow(clippy::result_large_err)]
    fn enqueue(
        &self,
        record: Record,
        callback: &mut Option<(u64, Callback)>,
    ) -> Result<Accepted, (Error, Record)> {
        if self.closed.load(Ordering::Acquire) {
            self.metrics.record_refused(&Error::ProducerClosed);
            return Err((Error::ProducerClosed, record));
        }
        let payload_len = record.payload().len();
        let shard = self.shard_for(&record);
        // Records waiting for room keep their place: a later record of their shard waits behind
        // them (one shared load on the send path while nothing waits).
        if self.budget.queued() > 0 && shard.waiting_len() > 0 {
            return Err((Error::QueueFull, record));
        }
        if !self.budget.try_acquire(payload_len) {
            return Err((Error::QueueFull, record));
        }
        let appended = shard.accumulator().append_with(
            Instant::now,
            record.stream_id(),
            record.payload(),
            callback,
        );
        match appended {
            Ok(appended) => {
                if appended.wake {
                    shard.notify();
                }
                Ok(Accepted {
                    completion: appended.completion,
                    metadata: record.metadata(),
                    shard: shard.key(),
                })
            }
            Err(error) => {
                self.budget.release(1, payload_len as u64);
                self.budget.settle(1);
                self.metrics.record_refused(&error);
                Err((error, record))
            }
        }
    }

    /// [`Producer::send_batch`].
    fn enqueue_batch<P: AsRef<[u8]>>(
        &self,
        stream: &StreamId,
        payloads: &[P],
    ) -> Result<BatchDeliveryFuture, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ProducerClosed);
        }
        if payloads.is_empty() {
            return Err(Error::InvalidPayload { reason: "send_batch needs at least one record" });
        }
        stream.validate()?;
        let shard = &self.shards[shard_of(stream.as_str(), self.shards.len())];
        if self.budget.queued() > 0 && shard.waiting_len() > 0 {
            return Err(Error::QueueFull);
        }
        let count = payloads.len() as u64;
        let bytes: u64 = payloads.iter().map(|payload| payload.as_ref().len() as u64).sum();
        let mut accumulator = shard.accumulator();
        for (index, payload) in payloads.iter().enumerate() {
            accumulator
                .check(stream, payload.as_ref())
                .map_err(|source| Error::InBatch { index, source: Box::new(source) })?;
        }
        if !self.budget.try_acquire_many(count, bytes) {
            return Err(Error::QueueFull);
        }
        let mut parts: Vec<(Arc<BatchCompletion>, u32)> = Vec::new();
        let mut wake = false;
        for (index, payload) in payloads.iter().enumerate() {
            let payload = payload.as_ref();
            match accumulator.append_with(Instant::now, stream, payload, &mut None) {
                Ok(appended) => {
                    wake |= appended.wake;
                    match parts.last_mut() {
                        Some((completion, records))
                            if Arc::ptr_eq(completion, &appended.completion) =>
                        {
                            *records += 1;
                        }
                        _ => parts.push((appended.completion, 1)),
                    }
                }
                Err(error) => {
                    // Checked above under the same lock, which a close also takes: not
                    // reached. Were it, the records from here on give their room back, and
                    // those before it are still delivered, so the call cannot fail as a whole.
                    let rest = &payloads[index..];
                    let rest_bytes: u64 = rest.iter().map(|p| p.as_ref().len() as u64).sum();
                    self.budget.release(rest.len() as u64, rest_bytes);
                    self.budget.settle(rest.len() as u64);
                    drop(accumulator);
                    if wake {
                        shard.notify();
                    }
                    let error = Error::InBatch { index, source: Box::new(error) };
                    if parts.is_empty() {
                        return Err(error);
                    }
                    return Ok(BatchDeliveryFuture::new(parts, shard.key(), Some(error)));
                }
            }
        }
        drop(accumulator);
        if wake {
            shard.notify();
        }
        Ok(BatchDeliveryFuture::new(parts, shard.key(), None))
    }

    /// The shard a record goes to.
    fn shard_for(&self, record: &Record) -> &Arc<ShardShared> {
        &self.shards[shard_of(record.stream_id().as_str(), self.shards.len())]
    }

    /// Takes `record`, which found no room, into its shard's wait queue; it is admitted as soon
    /// as there is room, or fails with `QueueFullTimeout` after `timeout` (`None`:
    /// `send_timeout`).
    fn wait_for_room(&self, record: Record, callback: Callback, timeout: Option<Duration>) {
        let index = shard_of(record.stream_id().as_str(), self.shards.len());
        let shard = &self.shards[index];
        let waiting = Waiting { record, callback, since: Instant::now(), timeout };
        shard.push_waiting(&self.budget, waiting);
        // Room may have come back between the refusal and the push: whoever frees room next
        // looks at the queue, but nobody may be about to.
        shard.admit_waiting(&self.budget, &self.metrics);
        if shard.has_stopped() {
            // The shard ended (closed) as the record was queued or admitted: nobody else will
            // see it.
            shard.fail_leftovers(&Error::ProducerClosed, &self.budget, &self.shard_metrics[index]);
        }
        // The shard arms the record's timeout and watches the budget for room.
        shard.notify();
    }

    /// `Some(InCallback)` when called on one of this producer's shard threads (from a delivery
    /// callback), where waiting for the shards would wait for the caller itself.
    fn in_callback(&self, operation: &'static str) -> Option<Error> {
        shard::on_shard_of(self.id)
            .then(|| Error::InCallback { operation, undelivered: self.budget.pending_records() })
    }

    /// Counts a `QueueFull` that is final (every other refusal is counted where it happens).
    fn refused_if_full(&self, error: &Error) {
        if *error == Error::QueueFull {
            self.metrics.record_refused(error);
        }
    }

    fn begin_close(&self, deadline: Instant) {
        self.closed.store(true, Ordering::Release);
        self.budget.wake_all();
        for shard in &self.shards {
            shard.command(Command::Close { deadline });
        }
    }

    /// Waits until nothing is pending, or fails with the count at `deadline`.
    fn drained(self: &Arc<Self>, deadline: Instant) -> Drained {
        Drained { inner: self.clone(), deadline, timer_armed: false }
    }

    /// After the shards stopped: `FlushTimeout` with the records they failed at the deadline.
    fn close_result(&self) -> Result<(), Error> {
        let undelivered: u64 = self.shards.iter().map(|shard| shard.failed_at_close()).sum();
        if undelivered == 0 {
            Ok(())
        } else {
            Err(Error::FlushTimeout { undelivered })
        }
    }

    fn join_shards(&self) {
        let threads = std::mem::take(
            &mut *self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let me = std::thread::current().id();
        for thread in threads {
            // Dropped from one of its own delivery callbacks: that shard ends on its own once
            // the callback returns (it has the command); joining it here would join itself.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// What [`Producer::stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerStats {
    /// Records accepted into batches.
    pub records_sent: u64,
    /// Records acked by a DataProxy node.
    pub records_acked: u64,
    /// Records that failed after being accepted.
    pub records_failed: u64,
    /// Payload bytes acked.
    pub payload_bytes_acked: u64,
    /// Records accepted and not yet resolved.
    pub in_flight_records: u64,
    /// Batches queued or in flight.
    pub inflight_batches: u64,
    /// Connections up.
    pub connections: u64,
    /// Delivery callbacks that panicked (each panic was contained: logged, counted here and in
    /// `data_proxy_callback_panic_count`, and the other records resolved as usual).
    pub callback_panics: u64,
    /// The same, per shard.
    pub shards: Vec<ShardStats>,
}

/// One shard's part of [`ProducerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// The shard index (`wid`, the `worker` label).
    pub worker: usize,
    /// Records accepted into this shard's batches.
    pub records_sent: u64,
    /// Records acked.
    pub records_acked: u64,
    /// Records failed after being accepted.
    pub records_failed: u64,
    /// Payload bytes acked.
    pub payload_bytes_acked: u64,
    /// Batches queued or in flight.
    pub inflight_batches: u64,
    /// Connections up.
    pub connections: u64,
    /// Delivery callbacks run by this shard that panicked.
    pub callback_panics: u64,
}

/// The future of [`Producer::flush`] and [`Producer::close`].
struct Drained {
    inner: Arc<Inner>,
    deadline: Instant,
    timer_armed: bool,
}

impl Future for Drained {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let budget = &self.inner.budget;
        if budget.pending_records() == 0 {
            return Poll::Ready(Ok(()));
        }
        if Instant::now() >= self.deadline {
            return Poll::Ready(Err(Error::FlushTimeout { undelivered: budget.pending_records() }));
        }
        if !budget.register(cx.waker(), |b| b.pending_records() > 0) {
            return Poll::Ready(Ok(()));
        }
        if !self.timer_armed {
            self.timer_armed = true;
            self.inner.control.wake_at(self.deadline, cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A per-producer tag that makes `mid`s unique across producers and restarts: 48 bits, distinct
/// for every call in a process (a random base, drawn once, plus the call's number times an odd
/// constant: a bijection modulo 2^48), random across processes. (The clock alone, mixed with a
/// stack address, repeated now and then between threads calling at once.)
fn unique_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    const MASK: u64 = 0xffff_ffff_ffff;
    static BASE: OnceLock<u64> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        #[allow(clippy::cast_possible_truncation)]
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        fastrand::Rng::with_seed(seed).u64(..)
    });
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    base.wrapping_add(call.wrapping_mul(0x9e37_79b9_7f4b)) & MASK
}

/// The result of one [`Producer::send`]: resolves to the record's [`DeliveryReport`] or its error.
/// Awaitable on any executor; [`DeliveryFuture::wait`] blocks a plain thread instead.
#[must_use = "a delivery is only known by awaiting or waiting on its future"]
#[derive(Debug)]
pub struct DeliveryFuture {
    state: FutureState,
    /// The [`shard::shard_key`] of the shard that resolves it (0: none).
    shard: u64,
}

/// A record taken into a batch: its batch's completion, its metadata, and its shard.
struct Accepted {
    completion: Arc<BatchCompletion>,
    metadata: u64,
    shard: u64,
}

#[derive(Debug)]
enum FutureState {
    Pending {
        completion: Arc<BatchCompletion>,
        metadata: u64,
    },
    /// Blocking mode: the record waits in the producer for room; `QueuedSlot` gets its result.
    Queued(Arc<QueuedSlot>),
    Failed(Option<Error>),
}

/// The result of one record that waited for room, and the waker of its future.
#[derive(Debug, Default)]
struct QueuedSlot {
    result: OnceLock<Result<DeliveryReport, Error>>,
    waker: Mutex<Option<Waker>>,
}

impl QueuedSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn resolve(&self, result: Result<DeliveryReport, Error>) {
        if self.result.set(result).is_ok() {
            if let Some(waker) = self.lock().take() {
                waker.wake();
            }
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<DeliveryReport, Error>> {
        if let Some(result) = self.result.get() {
            return Poll::Ready(result.clone());
        }
        let mut waker = self.lock();
        // Checked again under the lock: `resolve` sets the result before it takes the waker.
        if let Some(result) = self.result.get() {
            return Poll::Ready(result.clone());
        }
        *waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl DeliveryFuture {
    fn pending(accepted: Accepted) -> DeliveryFuture {
        let Accepted { completion, metadata, shard } = accepted;
        DeliveryFuture { state: FutureState::Pending { completion, metadata }, shard }
    }

    fn failed(error: Error) -> DeliveryFuture {
        DeliveryFuture { state: FutureState::Failed(Some(error)), shard: 0 }
    }

    /// Blocks the calling thread until the delivery is resolved. Every delivery resolves within
    /// its attempts' deadlines, so this cannot hang. Do not call it on an async executor thread.
    ///
    /// In a delivery callback running on the very shard that resolves this delivery, waiting
    /// could only wait for the caller itself: an unresolved future then returns
    /// [`Error::InCallback`] at once (the record is still sent, and its other copies of the
    /// result, such as a callback, are unaffected).
    pub fn wait(self) -> Result<DeliveryReport, Error> {
        if self.shard != 0 && !self.is_resolved() && shard::on_shard(self.shard) {
            return Err(Error::InCallback { operation: "wait", undelivered: 1 });
        }
        block_on(self)
    }

    /// True once the result is known.
    pub fn is_resolved(&self) -> bool {
        match &self.state {
            FutureState::Pending { completion, .. } => completion.is_resolved(),
            FutureState::Queued(slot) => slot.result.get().is_some(),
            FutureState::Failed(_) => true,
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<DeliveryReport, Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutureState::Pending { completion, metadata } => {
                let metadata = *metadata;
                completion.poll_outcome(cx).map(|outcome| outcome.map(|o| o.report(metadata)))
            }
            FutureState::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(Error::ProducerClosed)))
            }
            FutureState::Queued(slot) => slot.poll(cx),
        }
    }
}

/// What the application learns about the records of one [`Producer::send_batch`] call, all acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchDeliveryReport {
    /// Records of the call.
    pub records: usize,
    /// Batches that carried them (a large call fills several).
    pub batches: usize,
    /// Numeric ID of the first of those batches.
    pub first_batch_id: u64,
    /// The longest time, over those batches, from being opened to being acked.
    pub max_latency: Duration,
    /// The most attempts after the first that one of those batches needed.
    pub max_retries: u32,
}

/// The result of one [`Producer::send_batch`] call: resolves once every record of the call is
/// resolved, to a [`BatchDeliveryReport`] when all were acked, or to the first failed batch's
/// error. Awaitable on any executor; [`BatchDeliveryFuture::wait`] blocks a plain thread instead.
#[must_use = "a delivery is only known by awaiting or waiting on its future"]
#[derive(Debug)]
pub struct BatchDeliveryFuture {
    /// The batches carrying the call's records, in order, with how many of them each carries.
    parts: Vec<(Arc<BatchCompletion>, u32)>,
    /// Parts resolved so far.
    done: usize,
    report: BatchDeliveryReport,
    /// The first failure seen (or the refusal of the call's remainder).
    error: Option<Error>,
    /// The [`shard::shard_key`] of the shard that resolves it.
    shard: u64,
}

impl BatchDeliveryFuture {
    fn new(parts: Vec<(Arc<BatchCompletion>, u32)>, shard: u64, error: Option<Error>) -> Self {
        let report = BatchDeliveryReport {
            records: 0,
            batches: 0,
            first_batch_id: 0,
            max_latency: Duration::ZERO,
            max_retries: 0,
        };
        BatchDeliveryFuture { parts, done: 0, report, error, shard }
    }

    /// True once every record of the call is resolved.
    pub fn is_resolved(&self) -> bool {
        self.parts[self.done..].iter().all(|(completion, _)| completion.is_resolved())
    }

    /// Blocks the calling thread until every record of the call is resolved (each within its
    /// attempts' deadlines, so this cannot hang). Do not call it on an async executor thread.
    /// As [`DeliveryFuture::wait`], in a delivery callback on the shard that resolves it, an
    /// unresolved future returns [`Error::InCallback`] at once.
    pub fn wait(self) -> Result<BatchDeliveryReport, Error> {
        if !self.is_resolved() && shard::on_shard(self.shard) {
            let undelivered = self.parts[self.done..].iter().map(|(_, n)| u64::from(*n)).sum();
            return Err(Error::InCallback { operation: "wait", undelivered });
        }
        block_on(self)
    }
}

impl Future for BatchDeliveryFuture {
    type Output = Result<BatchDeliveryReport, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        while let Some((completion, records)) = this.parts.get(this.done) {
            let outcome = match completion.poll_outcome(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => return Poll::Pending,
            };
            match outcome {
                Ok(outcome) => {
                    let report = &mut this.report;
                    if report.batches == 0 {
                        report.first_batch_id = outcome.batch_id;
                    }
                    report.batches += 1;
                    report.records += *records as usize;
                    let latency = outcome.acked_at.saturating_duration_since(outcome.opened_at);
                    report.max_latency = report.max_latency.max(latency);
                    report.max_retries = report.max_retries.max(outcome.retries);
                }
                Err(error) => {
                    this.error.get_or_insert(error);
                }
            }
            this.done += 1;
        }
        Poll::Ready(match this.error.take() {
            Some(error) => Err(error),
            None => Ok(this.report),
        })
    }
}

/// Polls `future` on the calling thread, parking it between polls.
fn block_on<F: Future + Unpin>(mut future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(result) = Pin::new(&mut future).poll(&mut cx) {
            return result;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_route_to_stable_shards() {
        assert_eq!(shard_of("orders", 4), shard_of("orders", 4));
        let spread: std::collections::HashSet<usize> =
            (0..100).map(|i| shard_of(&format!("stream-{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(shard_of("x", 1), 0);
    }

    #[test]
    fn unique_tags_differ_across_calls_and_threads() {
        const THREADS: usize = 4;
        const CALLS: usize = 20_000;
        let barrier = std::sync::Barrier::new(THREADS);
        let tags: Vec<u64> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        (0..CALLS).map(|_| unique_tag()).collect::<Vec<u64>>()
                    })
                })
                .collect();
            threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<u64> = tags.iter().copied().collect();
        assert_eq!(distinct.len(), THREADS * CALLS, "tags repeat");
        // They fit the 48 bits a mid prefix is written with.
        assert!(tags.iter().all(|&tag| tag <= 0xffff_ffff_ffff));
    }
}
