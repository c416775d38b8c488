//! Prometheus metrics with the Go SDK's names, types, labels and buckets (`PROTOCOL.md` §6.11),
//! plus what the Go SDK lacks.
//!
//! A [`MetricsRegistry`] wraps a `prometheus::Registry` and creates the collectors once: every
//! producer given the same `MetricsRegistry` (by default the process-wide one around
//! `prometheus::default_registry()`) counts into the same collectors, told apart by the `name`
//! label (`metrics_name`), as the Go SDK reuses already registered collectors.
//!
//! Hot path: nothing is touched per record on success. Shards update the collectors once per
//! batch through handles resolved once per shard ([`ShardMetrics`]); per-record updates happen
//! only on error paths (a refused record is counted where it is refused).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::error::{codes, Error};

/// `data_proxy_batch_size` buckets: 1, 2, 4 … 256 KiB (raw payload bytes).
const BATCH_SIZE_BUCKETS: [f64; 9] =
    [1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131_072.0, 262_144.0];
/// `data_proxy_batch_time` buckets, milliseconds.
const BATCH_TIME_BUCKETS: [f64; 13] =
    [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0];
/// `data_proxy_delivery_latency_seconds` buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus registry and the SDK's collectors in it. Clones share both.
#[derive(Clone)]
pub struct MetricsRegistry {
    registry: Registry,
    collectors: Arc<Mutex<Option<Arc<Collectors>>>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// The SDK's collectors will be registered in `registry` (on first use).
    pub fn new(registry: Registry) -> MetricsRegistry {
        MetricsRegistry { registry, collectors: Arc::default() }
    }

    /// The process-wide registry around `prometheus::default_registry()`.
    pub fn default_registry() -> MetricsRegistry {
        static DEFAULT: OnceLock<MetricsRegistry> = OnceLock::new();
        DEFAULT.get_or_init(|| MetricsRegistry::new(prometheus::default_registry().clone())).clone()
    }

    /// The wrapped registry, to gather or expose.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics text exposition of everything in the registry.
    pub fn encode_text(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The collectors, created and registered once.
    pub(crate) fn collectors(&self) -> Result<Arc<Collectors>, Error> {
        let mut slot = self.collectors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(collectors) = slot.as_ref() {
            return Ok(collectors.clone());
        }
        let collectors = Arc::new(Collectors::register(&self.registry)?);
        *slot = Some(collectors.clone());
        Ok(collectors)
    }
}

/// Every collector of the SDK.
#[derive(Debug)]
pub(crate) struct Collectors {
    pub error_count: IntCounterVec,
    pub retry_count: IntCounterVec,
    pub timeout_count: IntCounterVec,
    pub msg_count: IntCounterVec,
    pub update_conn_count: IntCounterVec,
    pub pending_msg_gauge: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub batch_time: HistogramVec,
    pub inflight_batches: IntGaugeVec,
    pub sent_bytes: IntCounterVec,
    pub delivery_latency: HistogramVec,
    pub healthy_endpoints: IntGaugeVec,
    pub transport: IntGaugeVec,
    pub discovery_lookups: IntCounterVec,
    pub callback_panics: IntCounterVec,
}

fn metric_error(error: &prometheus::Error) -> Error {
    Error::InvalidConfig { option: "metrics_registry", reason: error.to_string() }
}

impl Collectors {
    fn register(registry: &Registry) -> Result<Collectors, Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, Error> {
            let vec =
                IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| metric_error(&e))?;
            registry.register(Box::new(vec.clone())).map_err(|e| metric_error(&e))?;
            Ok(vec)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, Error> {
            let vec =
                IntGaugeVec::new(Opts::new(name, help), labels).map_err(|e| metric_error(&e))?;
            registry.register(Box::new(vec.clone())).map_err(|e| metric_error(&e))?;
            Ok(vec)
        };
        let histogram = |name: &str,
                         help: &str,
                         labels: &[&str],
                         buckets: &[f64]|
         -> Result<HistogramVec, Error> {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let vec = HistogramVec::new(opts, labels).map_err(|e| metric_error(&e))?;
            registry.register(Box::new(vec.clone())).map_err(|e| metric_error(&e))?;
            Ok(vec)
        };
        Ok(Collectors {
            error_count: counter("data_proxy_error_count", "error events by Go SDK error code", &["name", "code"])?,
            retry_count: counter("data_proxy_retry_count", "batch retries", &["name", "worker"])?,
            timeout_count: counter("data_proxy_timeout_count", "batches whose ack timed out", &["name", "worker"])?,
            msg_count: counter("data_proxy_msg_count", "records by final outcome code (0 = acked)", &["name", "code"])?,
            update_conn_count: counter(
                "data_proxy_update_conn_count",
                "connection switches (0 = periodic or server-requested, 10007 = write failure, 20001 = peer closed)",
                &["name", "code"],
            )?,
            pending_msg_gauge: gauge("data_proxy_pending_msg_gauge", "records pending per worker", &["name", "worker"])?,
            batch_size: histogram(
                "data_proxy_batch_size",
                "raw payload bytes per batch",
                &["name", "code"],
                &BATCH_SIZE_BUCKETS,
            )?,
            batch_time: histogram(
                "data_proxy_batch_time",
                "milliseconds from batch creation to completion",
                &["name", "code"],
                &BATCH_TIME_BUCKETS,
            )?,
            inflight_batches: gauge("data_proxy_inflight_batches", "batches sent or queued and not yet resolved", &["name", "worker"])?,
            sent_bytes: counter(
                "data_proxy_sent_bytes_total",
                "bytes sent: kind=wire (frames, retries included) or payload (raw payload of acked batches)",
                &["name", "kind"],
            )?,
            delivery_latency: histogram(
                "data_proxy_delivery_latency_seconds",
                "from batch creation to ack",
                &["name"],
                &LATENCY_BUCKETS,
            )?,
            healthy_endpoints: gauge("data_proxy_healthy_endpoints", "connections up to DataProxy nodes", &["name"])?,
            transport: gauge("data_proxy_transport_info", "the I/O driver in use (value 1)", &["name", "transport"])?,
            discovery_lookups: counter("data_proxy_discovery_lookups", "Manager lookups by result", &["name", "result"])?,
            callback_panics: counter(
                "data_proxy_callback_panic_count",
                "delivery callbacks that panicked (each panic was contained)",
                &["name"],
            )?,
        })
    }
}

/// One producer's view of the collectors (label `name` fixed).
#[derive(Debug, Clone)]
pub struct ProducerMetrics {
    name: String,
    collectors: Arc<Collectors>,
}

impl ProducerMetrics {
    pub(crate) fn new(registry: &MetricsRegistry, name: &str) -> Result<ProducerMetrics, Error> {
        Ok(ProducerMetrics { name: name.to_owned(), collectors: registry.collectors()? })
    }

    /// A record refused before it was queued (invalid, queue full, closed): one error event and
    /// its final outcome.
    pub(crate) fn record_refused(&self, error: &Error) {
        let code = error.code().to_string();
        let c = &self.collectors;
        c.error_count.with_label_values(&[&self.name, &code]).inc();
        c.msg_count.with_label_values(&[&self.name, &code]).inc();
    }

    /// A delivery callback panicked (and the panic was contained).
    pub(crate) fn callback_panicked(&self) {
        self.collectors.callback_panics.with_label_values(&[&self.name]).inc();
    }

    /// Creates the series that must read 0 before anything happened, so that dashboards and
    /// alerts on them see a value from the first scrape.
    pub(crate) fn touch(&self) {
        let c = &self.collectors;
        let name = self.name.as_str();
        c.callback_panics.with_label_values(&[name]);
        c.msg_count.with_label_values(&[name, "0"]);
        for code in crate::error::codes::ERRORS {
            let code = code.to_string();
            c.error_count.with_label_values(&[name, &code]);
            c.msg_count.with_label_values(&[name, &code]);
        }
        // The codes `ShardMetrics::conn_updated` counts under.
        for code in [codes::OK, codes::CONN_WRITE_FAILED, codes::UNKNOWN] {
            c.update_conn_count.with_label_values(&[name, &code.to_string()]);
        }
    }

    /// The driver in use.
    pub(crate) fn set_transport(&self, transport: &str) {
        self.collectors.transport.with_label_values(&[&self.name, transport]).set(1);
    }

    /// A Manager lookup and how it ended (`ok`, `cache`, or an error kind).
    pub(crate) fn discovery_lookup(&self, result: &str) {
        self.collectors.discovery_lookups.with_label_values(&[&self.name, result]).inc();
    }

    /// Handles for shard `worker`.
    pub(crate) fn shard(&self, worker: usize) -> ShardMetrics {
        let c = &self.collectors;
        let worker = worker.to_string();
        let name = self.name.as_str();
        ShardMetrics {
            retry: c.retry_count.with_label_values(&[name, &worker]),
            timeout: c.timeout_count.with_label_values(&[name, &worker]),
            pending: c.pending_msg_gauge.with_label_values(&[name, &worker]),
            inflight: c.inflight_batches.with_label_values(&[name, &worker]),
            acked_records: c.msg_count.with_label_values(&[name, "0"]),
            acked_size: c.batch_size.with_label_values(&[name, "0"]),
            acked_time: c.batch_time.with_label_values(&[name, "0"]),
            wire_bytes: c.sent_bytes.with_label_values(&[name, "wire"]),
            payload_bytes: c.sent_bytes.with_label_values(&[name, "payload"]),
            latency: c.delivery_latency.with_label_values(&[name]),
            healthy: c.healthy_endpoints.with_label_values(&[name]),
            producer: self.clone(),
            counters: Arc::default(),
        }
    }
}

/// One shard's own counters, behind [`crate::Producer::stats`] (the Prometheus collectors may be
/// shared with other producers of the same `metrics_name`; these never are).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Records acked.
    pub acked_records: AtomicU64,
    /// Records failed after being queued.
    pub failed_records: AtomicU64,
    /// Payload bytes acked.
    pub acked_bytes: AtomicU64,
    /// Batches queued or in flight.
    pub inflight_batches: AtomicI64,
    /// Connections up.
    pub connections: AtomicI64,
    /// Delivery callbacks run by this shard that panicked.
    pub callback_panics: AtomicU64,
}

/// Pre-resolved handles for one shard: per-batch updates without label lookups on success.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// `data_proxy_retry_count{worker}`.
    pub retry: IntCounter,
    /// `data_proxy_timeout_count{worker}`.
    pub timeout: IntCounter,
    /// `data_proxy_pending_msg_gauge{worker}`.
    pub pending: IntGauge,
    /// `data_proxy_inflight_batches{worker}`.
    pub inflight: IntGauge,
    acked_records: IntCounter,
    acked_size: Histogram,
    acked_time: Histogram,
    /// `data_proxy_sent_bytes_total{kind="wire"}`.
    pub wire_bytes: IntCounter,
    payload_bytes: IntCounter,
    latency: Histogram,
    /// `data_proxy_healthy_endpoints` (shared by the producer's shards; changed by deltas).
    pub healthy: IntGauge,
    producer: ProducerMetrics,
    /// This shard's own counters.
    pub counters: Arc<ShardCounters>,
}

impl ShardMetrics {
    #[cfg(test)]
    /// Handles into a private registry, for engines built without a producer (tests).
    pub fn detached() -> ShardMetrics {
        let registry = MetricsRegistry::new(Registry::new());
        let metrics = ProducerMetrics::new(&registry, "detached")
            .unwrap_or_else(|_| unreachable!("a fresh registry has no collectors yet"));
        metrics.shard(0)
    }

    /// A batch of `records` records and `payload_bytes` bytes, opened `age_secs` ago, ended
    /// with `outcome` (acked, or the error every record of it gets).
    pub fn batch_done(
        &self,
        records: u32,
        payload_bytes: u64,
        age_secs: f64,
        outcome: Result<(), &Error>,
    ) {
        #[allow(clippy::cast_precision_loss)]
        let size = payload_bytes as f64;
        match outcome {
            Ok(()) => {
                self.counters.acked_records.fetch_add(u64::from(records), Ordering::Relaxed);
                self.counters.acked_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
                self.acked_records.inc_by(u64::from(records));
                self.acked_size.observe(size);
                self.acked_time.observe(age_secs * 1000.0);
                self.payload_bytes.inc_by(payload_bytes);
                self.latency.observe(age_secs);
            }
            Err(error) => {
                self.counters.failed_records.fetch_add(u64::from(records), Ordering::Relaxed);
                let c = &self.producer.collectors;
                let name = self.producer.name.as_str();
                let code = error.code().to_string();
                c.error_count.with_label_values(&[name, &code]).inc();
                c.msg_count.with_label_values(&[name, &code]).inc_by(u64::from(records));
                c.batch_size.with_label_values(&[name, &code]).observe(size);
                c.batch_time.with_label_values(&[name, &code]).observe(age_secs * 1000.0);
            }
        }
    }

    /// A batch entered (`+1`) or left (`-1`) the in-flight table.
    pub fn inflight_delta(&self, delta: i64) {
        self.inflight.add(delta);
        self.counters.inflight_batches.fetch_add(delta, Ordering::Relaxed);
    }

    /// A connection came up (`+1`) or went down (`-1`).
    pub fn connections_delta(&self, delta: i64) {
        self.healthy.add(delta);
        self.counters.connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// A connection was replaced: `code` 0 (periodic or server-requested), 10007 (write
    /// failure) or 20001 (peer closed or broke it).
    pub fn conn_updated(&self, code: u32) {
        let c = &self.producer.collectors;
        c.update_conn_count
            .with_label_values(&[self.producer.name.as_str(), &code.to_string()])
            .inc();
    }

    /// A delivery callback run by this shard panicked (the panic was contained).
    pub fn callback_panicked(&self) {
        self.counters.callback_panics.fetch_add(1, Ordering::Relaxed);
        self.producer.callback_panicked();
    }

    /// The producer-wide handles.
    pub(crate) fn producer(&self) -> &ProducerMetrics {
        &self.producer
    }

    /// An error event that is not a record's final outcome (a write failure, a bad reply).
    pub fn error_event(&self, code: u32) {
        let c = &self.producer.collectors;
        c.error_count.with_label_values(&[self.producer.name.as_str(), &code.to_string()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_names_share_collectors_and_reuse_is_not_an_error() {
        let registry = MetricsRegistry::new(Registry::new());
        let a = ProducerMetrics::new(&registry, "a").unwrap();
        let b = ProducerMetrics::new(&registry, "b").unwrap();
        a.record_refused(&Error::QueueFull);
        b.record_refused(&Error::QueueFull);
        b.record_refused(&Error::ProducerClosed);
        let a2 = ProducerMetrics::new(&registry, "a").unwrap();
        a2.record_refused(&Error::QueueFull);
        let text = registry.encode_text();
        assert!(text.contains(r#"data_proxy_error_count{code="10004",name="a"} 2"#), "{text}");
        assert!(text.contains(r#"data_proxy_error_count{code="10004",name="b"} 1"#), "{text}");
        assert!(text.contains(r#"data_proxy_msg_count{code="10003",name="b"} 1"#), "{text}");
    }

    #[test]
    fn batch_outcomes_use_go_names_and_buckets() {
        let registry = MetricsRegistry::new(Registry::new());
        let shard = ProducerMetrics::new(&registry, "p").unwrap().shard(3);
        shard.batch_done(50, 5000, 0.012, Ok(()));
        shard.batch_done(2, 100, 0.5, Err(&Error::QueueFull));
        shard.retry.inc();
        let text = registry.encode_text();
        for expected in [
            r#"data_proxy_msg_count{code="0",name="p"} 50"#,
            r#"data_proxy_msg_count{code="10004",name="p"} 2"#,
            r#"data_proxy_batch_size_bucket{code="0",name="p",le="8192"} 1"#,
            r#"data_proxy_batch_time_bucket{code="0",name="p",le="20"} 1"#,
            r#"data_proxy_retry_count{name="p",worker="3"} 1"#,
            r#"data_proxy_sent_bytes_total{kind="payload",name="p"} 5000"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
    }
}
