//! Every producer option, its default and its validation.
//!
//! The names are the Go SDK's options in snake_case (`PROTOCOL.md` §6.12) with the same defaults,
//! plus the options this SDK adds. [`ProducerConfig::validate`] refuses zero or absurd values with
//! a clear [`Error::InvalidConfig`] instead of silently replacing them, as the Go setters do.
//! The builder in [`ProducerBuilder`](crate::ProducerBuilder) is the usual way to set them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::{AuthProvider, Endpoint};
use crate::metrics::MetricsRegistry;

use crate::error::Error;
use crate::protocol::DEFAULT_MAX_PACKET_LEN;

/// Which I/O driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// io_uring where the kernel allows it, epoll otherwise (probed once per producer).
    #[default]
    Auto,
    /// io_uring only: building the producer fails where io_uring is unavailable.
    IoUring,
    /// epoll only.
    Epoll,
}

impl std::str::FromStr for Transport {
    type Err = Error;

    fn from_str(text: &str) -> Result<Transport, Error> {
        match text {
            "auto" => Ok(Transport::Auto),
            "io_uring" | "io-uring" | "iouring" => Ok(Transport::IoUring),
            "epoll" | "poll" => Ok(Transport::Epoll),
            other => Err(Error::InvalidConfig {
                option: "transport",
                reason: format!("{other:?} is not one of auto, io_uring, epoll"),
            }),
        }
    }
}

/// Which DataProxy wire protocol carries the batches (`msg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MsgType {
    /// msgType 5 (`MSG_MULTI_BODY`), what the Go SDK sends (the default): attributes as text
    /// (`dt` in milliseconds, `cp=snappy`), replies matched by the `mid` attribute, type 1
    /// heartbeats.
    #[default]
    MultiBody,
    /// msgType 7 (`MSG_BIN_MULTI_BODY`), the Java and C++ SDKs' default: a binary header (`dt`
    /// in seconds, a 2-byte `cnt`, a 4-byte `uniq` the reply echoes, the Snappy flag in the type
    /// byte), type 8 heartbeats. The only type a DataProxy node answers after the MQ stored the
    /// batch ([`Ack::Sink`]).
    BinMultiBody,
}

impl MsgType {
    /// The message type byte without flags: 5 or 7.
    pub fn code(self) -> u8 {
        match self {
            MsgType::MultiBody => crate::protocol::MSG_TYPE_MULTI_BODY,
            MsgType::BinMultiBody => crate::protocol::MSG_TYPE_BIN_MULTI_BODY,
        }
    }
}

impl std::str::FromStr for MsgType {
    type Err = Error;

    fn from_str(text: &str) -> Result<MsgType, Error> {
        match text {
            "5" => Ok(MsgType::MultiBody),
            "7" => Ok(MsgType::BinMultiBody),
            other => Err(Error::InvalidConfig {
                option: "msg_type",
                reason: format!("{other:?} is not 5 or 7"),
            }),
        }
    }
}

/// When a record counts as delivered (`ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Ack {
    /// Acked when a DataProxy node accepted the batch into its channel (the default, and all
    /// the Go SDK offers). A node that crashes before its sink delivered the batch loses it.
    #[default]
    Proxy,
    /// Acked only when the node's sink stored the batch in the MQ: the frame carries
    /// `proxySend=true` and the node answers from its sink, after the MQ's own ack, with codes
    /// 116–119 when the MQ failed (retried). Needs [`MsgType::BinMultiBody`]: a node sends no
    /// reply at all to a msgType 5 frame with `proxySend=true`.
    Sink,
}

impl std::str::FromStr for Ack {
    type Err = Error;

    fn from_str(text: &str) -> Result<Ack, Error> {
        match text {
            "proxy" => Ok(Ack::Proxy),
            "sink" => Ok(Ack::Sink),
            other => Err(Error::InvalidConfig {
                option: "ack",
                reason: format!("{other:?} is not proxy or sink"),
            }),
        }
    }
}

/// A secret whose `Debug` output is redacted, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// All producer options. See the README's options table for each one's meaning.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// `GroupID`: the inlong group every batch is sent for (required).
    pub group_id: String,
    /// `URL`: the Manager's `getIpList` base URL, without the group ID.
    pub manager_url: Option<String>,
    /// A static DataProxy node list, each `host:port` (an IP literal, `[v6]:port`, or a host name
    /// resolved at `build()`); no Manager is asked when set.
    pub endpoints: Vec<String>,
    /// Bound on connecting to the Manager (3 s).
    pub manager_connect_timeout: Duration,
    /// Bound on a whole Manager lookup request (10 s).
    pub manager_request_timeout: Duration,
    /// Accept an invalid TLS certificate from the Manager (false: verified, unlike Go).
    pub manager_accept_invalid_certs: bool,
    /// Manager user for the built-in Basic auth (with `secret_key`).
    pub secret_id: Option<String>,
    /// That user's secret key.
    pub secret_key: Option<Secret>,
    /// `tenant` header for the Manager (absent = `public`).
    pub tenant: Option<String>,
    /// A hook returning one auth header per lookup, like the Go SDK's `Auth` (wins over Basic).
    pub auth_provider: Option<Arc<dyn AuthProvider>>,
    /// Keep the last good node list on disk and use it when the Manager is down at start (true).
    pub node_list_cache: bool,
    /// Where that cache lives (default: per user, keyed by Manager URL and group).
    pub node_list_cache_path: Option<PathBuf>,
    /// The oldest cached list still used (20 min, as the Java SDK).
    pub node_list_cache_max_age: Duration,
    /// `UpdateInterval`: how often the node list is refreshed (5 min).
    pub update_interval: Duration,
    /// `ConnTimeout`: bound on every TCP connect (3 s).
    pub conn_timeout: Duration,
    /// `WriteBufferSize`: the most bytes coalesced into one connection's write buffer (8 MiB);
    /// capped at 256 KiB, the size of the fixed write buffers each shard reuses (frames beyond
    /// wait in the shard's queue, where any connection can take them).
    pub write_buffer_size: usize,
    /// `ReadBufferSize`: reply read buffer per connection (1 MiB; used clamped to 4 KiB..256 KiB).
    pub read_buffer_size: usize,
    /// `SocketSendBufferSize`: `SO_SNDBUF` (8 MiB).
    pub socket_send_buffer_size: usize,
    /// `SocketRecvBufferSize`: `SO_RCVBUF` (1 MiB).
    pub socket_recv_buffer_size: usize,
    /// `MetricsName`: the `name` label of every metric (`dataproxy-rust`).
    pub metrics_name: String,
    /// `MetricsRegistry`: where the collectors live (default: the process-wide registry around
    /// `prometheus::default_registry()`).
    pub metrics_registry: Option<MetricsRegistry>,
    /// `WorkerNum` / `shards`: shard threads (default: the CPUs this process may use).
    pub shards: usize,
    /// Pin each shard thread to a core.
    pub pin_shards: bool,
    /// I/O driver.
    pub transport: Transport,
    /// `SendTimeout`: how long one attempt waits for its ack (30 s), exact per batch; a batch
    /// that waits this long for a connection to go out on has used an attempt too. Every
    /// record's outcome (ack or failure) arrives within `batching_max_publish_delay +
    /// send_timeout × (2 + max_retries)` plus each retry's longest backoff
    /// (`retry_initial_interval × 2^n × 1.2`, at most 10 s) of its send: 120.38 s with the
    /// defaults (see the README's "Delivery semantics").
    pub send_timeout: Duration,
    /// `MaxRetries`: attempts after the first (2; 0 means none). See `send_timeout` for the
    /// bound the attempts set on every record's outcome.
    pub max_retries: u32,
    /// `RetryOnServerError`: retry batches answered with codes 1, 2, 3 and 114, which the server
    /// did not accept (default **true**; Go's default false loses them, see the README).
    pub retry_on_server_error: bool,
    /// `RetryInitialInterval`: first backoff (100 ms), doubled per retry ±20 %, capped at 10 s.
    pub retry_initial_interval: Duration,
    /// `BatchingMaxPublishDelay`: how long a batch may linger (20 ms), honoured exactly.
    pub batching_max_publish_delay: Duration,
    /// `BatchingMaxMessages`: records per batch (50).
    pub batching_max_messages: usize,
    /// `BatchingMaxSize`: payload bytes per batch (40 KiB).
    pub batching_max_size: usize,
    /// `MaxPendingMessages`: records accepted but not yet resolved, for the whole producer
    /// (204800).
    pub max_pending_messages: usize,
    /// Payload bytes accepted but not yet resolved, for the whole producer (64 MiB).
    pub max_pending_bytes: usize,
    /// `BlockIfQueueIsFull`: wait for room instead of failing with `QueueFull` (false).
    pub block_if_queue_full: bool,
    /// `AddColumns`: extra attributes on every batch (`{{ip}}` = the host IP).
    pub add_columns: Vec<(String, String)>,
    /// `MaxConnLifetime`: reconnect connections older than this (off).
    pub max_conn_lifetime: Option<Duration>,
    /// Replace each connection after a random 30–80 s, as the Go SDK's periodic switch does
    /// (true); behind a load balancer this spreads the load over its backends.
    pub conn_rotation: bool,
    /// Frame size limit, `4 + totalLen` (524288, the shipped server configuration); the
    /// Manager's `maxPacketLength` overrides it.
    pub max_packet_length: usize,
    /// Compress bodies over 256 bytes with Snappy, as Go does (true).
    pub compression: bool,
    /// The wire protocol: msgType 5, as the Go SDK (the default), or 7, as the Java and C++
    /// SDKs.
    pub msg_type: MsgType,
    /// When a record counts as delivered: accepted by a DataProxy node (the default), or stored
    /// in the MQ by its sink (needs `msg_type` 7).
    pub ack: Ack,
    /// Heartbeat on idle connections (60 s).
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may wait for its reply before the connection is declared dead (10 s).
    pub heartbeat_timeout: Duration,
    /// How long dropping the producer without [`Producer::close`](crate::Producer::close) waits
    /// for the pending records to be delivered (0: not at all, the default); at the end, the
    /// rest fail with `ProducerClosed`. A drop in a delivery callback never waits.
    pub close_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            group_id: String::new(),
            manager_url: None,
            endpoints: Vec::new(),
            manager_connect_timeout: Duration::from_secs(3),
            manager_request_timeout: Duration::from_secs(10),
            manager_accept_invalid_certs: false,
            secret_id: None,
            secret_key: None,
            tenant: None,
            auth_provider: None,
            node_list_cache: true,
            node_list_cache_path: None,
            node_list_cache_max_age: Duration::from_secs(20 * 60),
            update_interval: Duration::from_secs(300),
            conn_timeout: Duration::from_secs(3),
            write_buffer_size: 8 << 20,
            read_buffer_size: 1 << 20,
            socket_send_buffer_size: 8 << 20,
            socket_recv_buffer_size: 1 << 20,
            metrics_name: "dataproxy-rust".to_owned(),
            metrics_registry: None,
            shards: available_cpus(),
            pin_shards: true,
            transport: Transport::Auto,
            send_timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_on_server_error: true,
            retry_initial_interval: Duration::from_millis(100),
            batching_max_publish_delay: Duration::from_millis(20),
            batching_max_messages: 50,
            batching_max_size: 40 * 1024,
            max_pending_messages: 204_800,
            max_pending_bytes: 64 << 20,
            block_if_queue_full: false,
            add_columns: Vec::new(),
            max_conn_lifetime: None,
            conn_rotation: true,
            max_packet_length: DEFAULT_MAX_PACKET_LEN,
            compression: true,
            msg_type: MsgType::MultiBody,
            ack: Ack::Proxy,
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(10),
            close_timeout: Duration::ZERO,
        }
    }
}

/// The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota.
pub fn available_cpus() -> usize {
    let affinity = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    affinity.min(cgroup_cpu_quota().unwrap_or(usize::MAX)).max(1)
}

/// `cpu.max` of cgroup v2 (`quota period`), rounded up; `None` when unlimited or unknown.
fn cgroup_cpu_quota() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if period <= 0.0 {
        return None;
    }
    // Quotas are small positive numbers of CPUs.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cpus = (quota / period).ceil() as usize;
    Some(cpus.max(1))
}

/// The longest any duration option may be.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest socket or connection buffer (`SO_SNDBUF`/`SO_RCVBUF` take an `int`).
const MAX_BUFFER: usize = 1 << 30;

impl ProducerConfig {
    /// Checks every option (what [`ProducerBuilder::build`](crate::ProducerBuilder::build) does
    /// first); the first bad one is reported as [`Error::InvalidConfig`] naming it, or, for the
    /// group ID and the add-columns, as [`Error::InvalidField`].
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |option: &'static str, reason: String| Err(Error::InvalidConfig { option, reason });
        crate::protocol::validate_id(crate::error::Field::GroupId, &self.group_id)?;
        self.validate_nodes()?;
        if self.shards == 0 || self.shards > 1024 {
            return bad("shards", "must be between 1 and 1024".into());
        }
        let durations = [
            ("update_interval", self.update_interval),
            ("conn_timeout", self.conn_timeout),
            ("manager_connect_timeout", self.manager_connect_timeout),
            ("manager_request_timeout", self.manager_request_timeout),
            ("node_list_cache_max_age", self.node_list_cache_max_age),
            ("send_timeout", self.send_timeout),
            ("retry_initial_interval", self.retry_initial_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
        ];
        for (option, value) in durations {
            if value.is_zero() {
                return bad(option, "must be greater than zero".into());
            }
            if value > MAX_DURATION {
                return bad(option, "must be at most a week".into());
            }
        }
        if self.close_timeout > MAX_DURATION {
            return bad("close_timeout", "must be at most a week".into());
        }
        if self.max_conn_lifetime.is_some_and(|d| d.is_zero() || d > MAX_DURATION) {
            return bad("max_conn_lifetime", "must be between 1 ns and a week when set".into());
        }
        if self.retry_initial_interval > RETRY_MAX_INTERVAL {
            return bad(
                "retry_initial_interval",
                "must be at most 10 s (the backoff's cap)".into(),
            );
        }
        if self.heartbeat_timeout > self.heartbeat_interval {
            return bad(
                "heartbeat_timeout",
                format!(
                    "{:?} is longer than heartbeat_interval ({:?}): a heartbeat would still wait \
                     for its reply when the next one is due",
                    self.heartbeat_timeout, self.heartbeat_interval
                ),
            );
        }
        if self.batching_max_publish_delay > Duration::from_secs(60) {
            return bad("batching_max_publish_delay", "must be at most 60 s".into());
        }
        if self.max_retries > 100 {
            return bad("max_retries", "must be at most 100".into());
        }
        if self.batching_max_messages == 0 || self.batching_max_messages > 1_000_000 {
            return bad("batching_max_messages", "must be between 1 and 1000000".into());
        }
        if self.ack == Ack::Sink && self.msg_type != MsgType::BinMultiBody {
            return bad(
                "ack",
                "sink acknowledgement needs msg_type 7: a DataProxy node sends no reply at all to \
                 a msgType 5 frame that asks for it (proxySend=true)"
                    .into(),
            );
        }
        if self.msg_type == MsgType::BinMultiBody
            && self.batching_max_messages > usize::from(u16::MAX)
        {
            return bad(
                "batching_max_messages",
                "must be at most 65535 with msg_type 7 (its cnt field has 2 bytes)".into(),
            );
        }
        if self.max_packet_length < 1024 || self.max_packet_length > 20 << 20 {
            return bad(
                "max_packet_length",
                "must be between 1 KiB and 20 MiB (the server's range)".into(),
            );
        }
        if self.batching_max_size == 0 || self.batching_max_size > self.max_packet_length {
            return bad(
                "batching_max_size",
                format!(
                    "must be between 1 and max_packet_length ({} bytes): a batch never grows past \
                     one frame",
                    self.max_packet_length
                ),
            );
        }
        if self.max_pending_messages == 0
            || self.max_pending_messages as u64 > crate::budget::MAX_RECORDS
        {
            return bad("max_pending_messages", "must be between 1 and 134217728 (2^27)".into());
        }
        if self.max_pending_bytes == 0 || self.max_pending_bytes as u64 > crate::budget::MAX_BYTES {
            return bad("max_pending_bytes", "must be between 1 and 32 GiB".into());
        }
        let buffers = [
            ("write_buffer_size", self.write_buffer_size),
            ("read_buffer_size", self.read_buffer_size),
            ("socket_send_buffer_size", self.socket_send_buffer_size),
            ("socket_recv_buffer_size", self.socket_recv_buffer_size),
        ];
        for (option, value) in buffers {
            if value == 0 || value > MAX_BUFFER {
                return bad(option, "must be between 1 byte and 1 GiB".into());
            }
        }
        if self.metrics_name.is_empty() {
            return bad(
                "metrics_name",
                "must not be empty (it is every metric's name label)".into(),
            );
        }
        crate::protocol::AddColumns::new(self.add_columns.iter().map(|(k, v)| (k, v)), "0.0.0.0")?;
        Ok(())
    }

    /// Where the nodes come from: a Manager URL or static endpoints (one of them), and the
    /// Manager's credentials.
    fn validate_nodes(&self) -> Result<(), Error> {
        let bad =
            |option: &'static str, reason: String| Err(Error::InvalidConfig { option, reason });
        match (&self.manager_url, self.endpoints.is_empty()) {
            (None, true) => {
                return bad("manager_url", "set a Manager URL or static endpoints".into())
            }
            (Some(_), false) => {
                return bad(
                    "endpoints",
                    "set either manager_url or static endpoints, not both".into(),
                );
            }
            (Some(url), true) => {
                let url = crate::discovery::normalize_manager_url(url);
                crate::discovery::validate_manager_url(url).map_err(|error| {
                    Error::InvalidConfig { option: "manager_url", reason: config_reason(error) }
                })?;
            }
            (None, false) => {}
        }
        for endpoint in &self.endpoints {
            parse_endpoint(endpoint).map_err(|reason| Error::InvalidConfig {
                option: "endpoints",
                reason: format!("{endpoint:?} {reason}"),
            })?;
        }
        match (&self.secret_id, &self.secret_key) {
            (None, None) => {}
            (Some(id), Some(key)) => {
                crate::discovery::validate_credentials(id, &key.0).map_err(|error| {
                    Error::InvalidConfig { option: "secret_key", reason: config_reason(error) }
                })?;
            }
            (Some(_), None) => return bad("secret_key", "secret_id is set without it".into()),
            (None, Some(_)) => return bad("secret_id", "secret_key is set without it".into()),
        }
        if let Some(tenant) = &self.tenant {
            if tenant.trim().is_empty() || reqwest::header::HeaderValue::from_str(tenant).is_err() {
                return bad("tenant", "must be a non-blank, valid HTTP header value".into());
            }
        }
        Ok(())
    }
}

/// A static endpoint, `host:port` or `[v6]:port`: the node, or why it is not one.
pub(crate) fn parse_endpoint(text: &str) -> Result<Endpoint, &'static str> {
    let text = text.trim();
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").map(|(host, port)| (format!("[{host}]"), port)),
        None => text.rsplit_once(':').map(|(host, port)| (host.to_owned(), port)),
    }
    .ok_or("is not host:port")?;
    if host.contains(':') && !host.starts_with('[') {
        return Err("is not host:port (put an IPv6 address in brackets: [::1]:46801)");
    }
    let port: u16 = port.parse().map_err(|_| "has no valid port")?;
    let endpoint = Endpoint::new(&host, port).ok_or("is not a valid host and non-zero port")?;
    if endpoint.to_socket_addr().is_some_and(|addr| addr.ip().is_unspecified()) {
        return Err("is not an address to connect to");
    }
    Ok(endpoint)
}

/// The reason of a Manager client config error, without its prefix.
fn config_reason(error: crate::discovery::DiscoveryError) -> String {
    match error {
        crate::discovery::DiscoveryError::Config { reason } => reason,
        other => other.to_string(),
    }
}

/// The backoff's cap (`retry_initial_interval × 2^n` stops growing there).
pub(crate) const RETRY_MAX_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ProducerConfig {
        ProducerConfig {
            group_id: "g".into(),
            endpoints: vec!["127.0.0.1:1".into()],
            ..ProducerConfig::default()
        }
    }

    #[test]
    fn go_defaults() {
        let config = ProducerConfig::default();
        assert_eq!(config.send_timeout, Duration::from_secs(30));
        assert_eq!(config.max_retries, 2);
        assert_eq!(config.batching_max_publish_delay, Duration::from_millis(20));
        assert_eq!(config.batching_max_messages, 50);
        assert_eq!(config.batching_max_size, 40_960);
        assert_eq!(config.max_pending_messages, 204_800);
        assert_eq!(config.update_interval, Duration::from_secs(300));
        assert_eq!(config.conn_timeout, Duration::from_secs(3));
        assert!(!config.block_if_queue_full);
        assert!(config.shards >= 1);
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn every_rule_refuses_with_the_option_named() {
        let ms = Duration::from_millis;
        let week = Duration::from_secs(7 * 24 * 3600);
        let manager = |url: &str| ProducerConfig {
            manager_url: Some(url.into()),
            endpoints: vec![],
            ..valid()
        };
        let endpoints = |text: &str| ProducerConfig { endpoints: vec![text.into()], ..valid() };
        let secret = |id: Option<&str>, key: Option<&str>| ProducerConfig {
            secret_id: id.map(str::to_owned),
            secret_key: key.map(|key| Secret(key.to_owned())),
            ..manager("http://m:8083/inlong/manager/openapi/dataproxy/getIpList")
        };
        let cases: Vec<(&str, ProducerConfig)> = vec![
            ("manager_url", ProducerConfig { endpoints: vec![], ..valid() }),
            ("manager_url", manager("ftp://x")),
            ("manager_url", manager("")),
            ("manager_url", manager("not a url")),
            ("manager_url", manager("http://")),
            ("manager_url", manager("http://user:pw@m/x")),
            ("manager_url", manager("http://m/x?a=1")),
            ("endpoints", ProducerConfig { manager_url: Some("http://m/x".into()), ..valid() }),
            ("endpoints", endpoints("127.0.0.1:0")),
            ("endpoints", endpoints("0.0.0.0:1")),
            ("endpoints", endpoints("[::]:1")),
            ("endpoints", endpoints("dp1.example")),
            ("endpoints", endpoints("dp1.example:x")),
            ("endpoints", endpoints("dp1.example:70000")),
            ("endpoints", endpoints("::1:46801")),
            ("endpoints", endpoints("bad host:46801")),
            ("endpoints", endpoints(":46801")),
            ("secret_key", secret(Some("id"), None)),
            ("secret_id", secret(None, Some("key"))),
            ("secret_key", secret(Some(" "), Some("key"))),
            ("secret_key", secret(Some("a:b"), Some("key"))),
            ("tenant", ProducerConfig { tenant: Some(" ".into()), ..valid() }),
            ("tenant", ProducerConfig { tenant: Some("a\nb".into()), ..valid() }),
            ("ack", ProducerConfig { ack: Ack::Sink, ..valid() }),
            (
                "batching_max_messages",
                ProducerConfig {
                    msg_type: MsgType::BinMultiBody,
                    batching_max_messages: 65_536,
                    ..valid()
                },
            ),
            ("shards", ProducerConfig { shards: 0, ..valid() }),
            ("shards", ProducerConfig { shards: 1025, ..valid() }),
            ("update_interval", ProducerConfig { update_interval: Duration::ZERO, ..valid() }),
            ("conn_timeout", ProducerConfig { conn_timeout: Duration::ZERO, ..valid() }),
            (
                "manager_connect_timeout",
                ProducerConfig { manager_connect_timeout: Duration::ZERO, ..valid() },
            ),
            (
                "manager_request_timeout",
                ProducerConfig { manager_request_timeout: week * 2, ..valid() },
            ),
            (
                "node_list_cache_max_age",
                ProducerConfig { node_list_cache_max_age: Duration::ZERO, ..valid() },
            ),
            ("send_timeout", ProducerConfig { send_timeout: Duration::ZERO, ..valid() }),
            (
                "retry_initial_interval",
                ProducerConfig { retry_initial_interval: Duration::ZERO, ..valid() },
            ),
            (
                "retry_initial_interval",
                ProducerConfig { retry_initial_interval: Duration::from_secs(11), ..valid() },
            ),
            (
                "heartbeat_interval",
                ProducerConfig { heartbeat_interval: Duration::ZERO, ..valid() },
            ),
            ("heartbeat_timeout", ProducerConfig { heartbeat_timeout: Duration::ZERO, ..valid() }),
            (
                "heartbeat_timeout",
                ProducerConfig {
                    heartbeat_interval: ms(500),
                    heartbeat_timeout: ms(501),
                    ..valid()
                },
            ),
            ("close_timeout", ProducerConfig { close_timeout: week * 2, ..valid() }),
            (
                "max_conn_lifetime",
                ProducerConfig { max_conn_lifetime: Some(Duration::ZERO), ..valid() },
            ),
            (
                "batching_max_publish_delay",
                ProducerConfig { batching_max_publish_delay: ms(60_001), ..valid() },
            ),
            ("max_retries", ProducerConfig { max_retries: 101, ..valid() }),
            ("batching_max_messages", ProducerConfig { batching_max_messages: 0, ..valid() }),
            ("batching_max_size", ProducerConfig { batching_max_size: 0, ..valid() }),
            (
                "batching_max_size",
                ProducerConfig { batching_max_size: 4097, max_packet_length: 4096, ..valid() },
            ),
            ("max_packet_length", ProducerConfig { max_packet_length: 10, ..valid() }),
            ("max_packet_length", ProducerConfig { max_packet_length: 21 << 20, ..valid() }),
            ("max_pending_messages", ProducerConfig { max_pending_messages: 0, ..valid() }),
            ("max_pending_messages", ProducerConfig { max_pending_messages: 1 << 28, ..valid() }),
            ("max_pending_bytes", ProducerConfig { max_pending_bytes: 0, ..valid() }),
            ("max_pending_bytes", ProducerConfig { max_pending_bytes: 1 << 36, ..valid() }),
            ("write_buffer_size", ProducerConfig { write_buffer_size: 0, ..valid() }),
            ("read_buffer_size", ProducerConfig { read_buffer_size: 0, ..valid() }),
            ("socket_send_buffer_size", ProducerConfig { socket_send_buffer_size: 0, ..valid() }),
            (
                "socket_recv_buffer_size",
                ProducerConfig { socket_recv_buffer_size: 2 << 30, ..valid() },
            ),
            ("metrics_name", ProducerConfig { metrics_name: String::new(), ..valid() }),
        ];
        for (option, config) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { option: named, reason }) => {
                    assert_eq!(named, option, "{reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{option}: expected InvalidConfig, got {other:?}"),
            }
        }
        for group in ["", "a b", "a&b", "a/b", "a?b", "..", "a\\b"] {
            let error = ProducerConfig { group_id: group.into(), ..valid() }.validate();
            assert!(
                matches!(error, Err(Error::InvalidField { field: crate::Field::GroupId, .. })),
                "{group:?}: {error:?}"
            );
        }
        let error =
            ProducerConfig { add_columns: vec![("cnt".into(), "1".into())], ..valid() }.validate();
        assert!(matches!(error, Err(Error::InvalidField { .. })), "{error:?}");
        let fine = [
            ProducerConfig { max_retries: 0, ..valid() },
            ProducerConfig { batching_max_publish_delay: Duration::ZERO, ..valid() },
            ProducerConfig { heartbeat_interval: ms(500), heartbeat_timeout: ms(500), ..valid() },
            manager("https://m.example/inlong/manager/openapi/dataproxy/getIpList/"),
            secret(Some("id"), Some("key")),
            endpoints("dp1.example:46801"),
            endpoints("[::1]:46801"),
            endpoints(" 10.0.0.1:46801 "),
        ];
        for config in fine {
            assert_eq!(config.validate(), Ok(()), "{config:?}");
        }
    }

    #[test]
    fn transport_parses() {
        assert_eq!("epoll".parse::<Transport>().unwrap(), Transport::Epoll);
        assert_eq!("io_uring".parse::<Transport>().unwrap(), Transport::IoUring);
        assert!("kqueue".parse::<Transport>().is_err());
    }

    #[test]
    fn msg_type_and_ack_parse_and_combine() {
        assert_eq!("5".parse::<MsgType>().unwrap(), MsgType::MultiBody);
        assert_eq!("7".parse::<MsgType>().unwrap().code(), 7);
        assert!("3".parse::<MsgType>().is_err());
        assert_eq!("sink".parse::<Ack>().unwrap(), Ack::Sink);
        assert!("mq".parse::<Ack>().is_err());
        let sink = ProducerConfig { msg_type: MsgType::BinMultiBody, ack: Ack::Sink, ..valid() };
        assert_eq!(sink.validate(), Ok(()));
        let most = ProducerConfig { batching_max_messages: 65_535, ..sink };
        assert_eq!(most.validate(), Ok(()));
        let error = ProducerConfig { ack: Ack::Sink, ..valid() }.validate().unwrap_err();
        assert!(error.to_string().contains("msg_type 7"), "{error}");
    }
}
