//! Errors of the SDK and their numeric codes.
//!
//! Every failure the SDK can report is a variant of [`Error`]. [`Error::code`] gives the Go SDK's
//! numeric code for it (`PROTOCOL.md` §6.10), so dashboards and alerting built on the Go SDK's
//! `data_proxy_error_count{code}` keep working; errors answered by a DataProxy node also carry the
//! server's own `errCode` ([`Error::server_code`]).
//!
//! Errors are `Clone` so that one batch failure can fan out to every record in the batch.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The Go SDK's numeric error codes (`PROTOCOL.md` §6.10), plus the ones this SDK adds.
///
/// The values are part of the public contract: they appear as the `code` label of the metrics.
pub mod codes {
    /// Success.
    pub const OK: u32 = 0;
    /// Retries used up (after a timeout, write failure or retryable server error).
    pub const SEND_TIMEOUT: u32 = 10001;
    /// Send failed (declared by the Go SDK).
    pub const SEND_FAILED: u32 = 10002;
    /// The producer is closing or closed.
    pub const PRODUCER_CLOSED: u32 = 10003;
    /// The send queue is full and the producer does not block.
    pub const SEND_QUEUE_FULL: u32 = 10004;
    /// A blocking send gave up waiting for queue space.
    pub const CONTEXT_EXPIRED: u32 = 10005;
    /// A new connection could not be made.
    pub const NEW_CONN_FAILED: u32 = 10006;
    /// Writing to a connection failed.
    pub const CONN_WRITE_FAILED: u32 = 10007;
    /// Reading from a connection failed (bad reply frame).
    pub const CONN_READ_FAILED: u32 = 10008;
    /// A record (or the batch it would make) is larger than the frame limit.
    pub const INPUT_LOG_TOO_LONG: u32 = 10009;
    /// A record, ID or attribute is invalid.
    pub const INPUT_LOG_INVALID: u32 = 10010;
    /// The server answered with a non-zero `errCode`.
    pub const SERVER_ERROR: u32 = 10011;
    /// The connection was closed by the peer.
    pub const CONN_CLOSED_BY_PEER: u32 = 10015;
    /// Anything else.
    pub const UNKNOWN: u32 = 20001;

    /// Every error code above: the `code` series of `data_proxy_error_count` and
    /// `data_proxy_msg_count` that exist (at 0) from a producer's start.
    pub(crate) const ERRORS: [u32; 13] = [
        SEND_TIMEOUT,
        SEND_FAILED,
        PRODUCER_CLOSED,
        SEND_QUEUE_FULL,
        CONTEXT_EXPIRED,
        NEW_CONN_FAILED,
        CONN_WRITE_FAILED,
        CONN_READ_FAILED,
        INPUT_LOG_TOO_LONG,
        INPUT_LOG_INVALID,
        SERVER_ERROR,
        CONN_CLOSED_BY_PEER,
        UNKNOWN,
    ];
}

/// Which identifier or attribute a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The inlong group ID.
    GroupId,
    /// The inlong stream ID.
    StreamId,
    /// The key of an add-column.
    AddColumnKey,
    /// The value of an add-column.
    AddColumnValue,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::GroupId => "group id",
            Field::StreamId => "stream id",
            Field::AddColumnKey => "add-column key",
            Field::AddColumnValue => "add-column value",
        })
    }
}

/// Every error the SDK reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An ID or attribute would break the `k=v&k=v` attribute string or is empty.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidField {
        /// What was invalid.
        field: Field,
        /// The offending value.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The payload is empty, or is a lone `"\n"` that would become an empty entry on the wire.
    #[error("invalid payload: {reason}")]
    InvalidPayload {
        /// Why it was refused.
        reason: &'static str,
    },
    /// The record (or the frame its batch would need) is over the frame size limit.
    #[error("record too long: a frame of {frame_len} bytes exceeds the limit of {limit} bytes")]
    TooLong {
        /// Bytes the frame would take on the wire.
        frame_len: usize,
        /// The frame size limit in force.
        limit: usize,
    },
    /// The attribute string of a msgType 7 frame is longer than its 2-byte length field allows
    /// (the server reads it as a signed `short`: 32767 bytes at most, §4.2). The ID and
    /// add-column limits keep every attribute string far below it; this guards the encoder.
    #[error("attributes of {attr_len} bytes exceed the msgType 7 limit of {limit} bytes")]
    AttributesTooLong {
        /// Bytes the attribute string would take.
        attr_len: usize,
        /// The limit (32767).
        limit: usize,
    },
    /// The record's payload is larger than the largest one its stream's frames can carry: the
    /// frame size limit less the frame's fixed part and attributes, and, with compression on,
    /// less Snappy's worst-case growth (the limit is checked before compressing).
    #[error(
        "record too long: {record_len} bytes exceeds the largest record of this stream, \
         {max_record_len} bytes (frame limit {max_frame_len} bytes{})",
        if *.compressed { ", less the attributes and Snappy's worst case" } else { ", less the attributes" }
    )]
    RecordTooLong {
        /// The payload's length.
        record_len: usize,
        /// The largest payload a record of this stream can have.
        max_record_len: usize,
        /// The frame size limit in force.
        max_frame_len: usize,
        /// Whether compression is on (its worst case lowers the limit).
        compressed: bool,
    },
    /// A producer option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidConfig {
        /// The option's name (snake_case, as in the README).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The producer is closing or closed.
    #[error("producer closed")]
    ProducerClosed,
    /// The pending-record or pending-byte budget is used up and the producer does not block.
    #[error("send queue full")]
    QueueFull,
    /// A blocking send waited for room in the queue until its timeout.
    #[error("send queue still full after waiting {waited:?}")]
    QueueFullTimeout {
        /// How long the send waited.
        waited: std::time::Duration,
    },
    /// The batch was not acknowledged within its attempts (the Go SDK's 10001, whatever the
    /// cause); `last_error` says what failed last.
    #[error("batch {batch_id} not delivered after {attempts} attempt(s){}", cause_suffix(.last_error))]
    SendTimeout {
        /// The producer's numeric batch ID.
        batch_id: u64,
        /// Attempts made.
        attempts: u32,
        /// What went wrong on the last attempt (also [`std::error::Error::source`]).
        #[source]
        last_error: Option<Box<Error>>,
    },
    /// A DataProxy node answered with an `errCode` that is not retried.
    #[error("server {endpoint} refused batch {batch_id} with errCode {code}{}", msg_suffix(.message))]
    Server {
        /// The DataProxy `errCode`.
        code: i32,
        /// The `errMsg`, when the server sent one.
        message: Option<String>,
        /// The node that answered.
        endpoint: SocketAddr,
        /// The producer's numeric batch ID.
        batch_id: u64,
    },
    /// No ack arrived within `send_timeout`.
    #[error("no ack from {endpoint} within {timeout:?}")]
    AckTimeout {
        /// The node the batch was sent to.
        endpoint: SocketAddr,
        /// How long the batch waited: the send timeout, or less when its delivery deadline
        /// came first.
        timeout: std::time::Duration,
    },
    /// The connection carrying the batch was lost before its ack.
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost {
        /// The node.
        endpoint: SocketAddr,
        /// Why (shared by every batch the connection carried: one allocation per loss, not one
        /// per batch).
        reason: std::sync::Arc<str>,
    },
    /// `flush` or `close` reached its deadline with records still undelivered.
    #[error("{undelivered} record(s) still undelivered at the deadline")]
    FlushTimeout {
        /// Records neither acked nor failed at the deadline.
        undelivered: u64,
    },
    /// `flush` or `close` was called from a delivery callback of the same producer: it was
    /// started (batches sealed; for `close`, new records refused and the shards told to finish
    /// by the deadline) but not waited for, because the callback's own shard can do nothing until
    /// the callback returns.
    #[error("{operation} called from a delivery callback: started, not waited for ({undelivered} record(s) still pending)")]
    InCallback {
        /// `"flush"` or `"close"`.
        operation: &'static str,
        /// Records pending when it returned (the calling callback's batch among them).
        undelivered: u64,
    },
    /// A connect to a DataProxy node failed (refused, timed out after `conn_timeout`, …). Seen
    /// as one of the [`ConnectFailures`] of [`Error::NoEndpoints`].
    #[error("connect to {endpoint} failed: {reason}")]
    ConnectFailed {
        /// The node.
        endpoint: SocketAddr,
        /// Why (`connection refused (os error 111)`, `connect timed out after 3s`).
        reason: Arc<str>,
    },
    /// No DataProxy node is usable: none is known (at `build()`), or a batch waited a whole
    /// `send_timeout` while every connect its shard tried failed. Build it with
    /// [`Error::no_endpoints`].
    #[error("service has no endpoints{}", causes_suffix(.causes))]
    NoEndpoints {
        /// The last connect failure of each node that failed most recently (empty when no node
        /// is known).
        causes: ConnectFailures,
        /// The most recent of them, an [`Error::ConnectFailed`]: the error's `source()`.
        #[source]
        last_cause: Option<Arc<Error>>,
    },
    /// The I/O driver could not be set up.
    #[error("transport unavailable: {0}")]
    Transport(String),
    /// A thread the producer needs (a shard thread, the control thread) could not be started,
    /// or the control thread is gone.
    #[error("cannot start {what}: {reason}")]
    Spawn {
        /// Which thread: `"a shard thread"`, `"the control thread"`.
        what: &'static str,
        /// The operating system's reason (`Resource temporarily unavailable (os error 11)`).
        reason: Arc<str>,
    },
    /// The record was failed by [`Producer::purge`](crate::Producer::purge) before its ack
    /// (10002, the Go SDK's "send failed": it was not delivered, and not for any fault of the
    /// network or server). It may still have reached the server if it was in flight.
    #[error("purged before delivery")]
    Purged,
    /// The Manager lookup failed (unreachable, auth, rejected, bad answer).
    #[error("manager lookup failed: {0}")]
    Discovery(#[source] crate::discovery::DiscoveryError),
    /// [`Producer::send_batch`](crate::Producer::send_batch) refused the whole call because of
    /// the record at `index` (nothing was sent); its code is the record's error's.
    #[error("record {index} of the batch: {source}")]
    InBatch {
        /// The refused record's place in the payloads given.
        index: usize,
        /// Why it was refused.
        #[source]
        source: Box<Error>,
    },
}

/// Server codes that mean "not stored, safe to send again" (`PROTOCOL.md` §3.9): 1, 2 and 3
/// (the node is not linked to its MQ, going offline, or lacks its configuration), 114 (its
/// channel refused the event) and, for sink-acknowledged batches, 116–119 (the sink had no
/// producer, or the MQ refused or failed the send). The engine retries them when
/// `retry_on_server_error` is on; [`Error::is_retriable`] says the same of a failure with one.
pub(crate) fn is_retryable_server_code(code: i32) -> bool {
    matches!(code, 1..=3 | 114 | 116..=119)
}

fn cause_suffix(cause: &Option<Box<Error>>) -> String {
    cause.as_ref().map(|cause| format!(": {cause}")).unwrap_or_default()
}

fn causes_suffix(causes: &ConnectFailures) -> String {
    if causes.is_empty() {
        String::new()
    } else {
        format!(" (connect failed: {causes})")
    }
}

fn msg_suffix(message: &Option<String>) -> String {
    message.as_ref().map(|message| format!(" ({message})")).unwrap_or_default()
}

/// The last connect failure of each of the DataProxy nodes that failed most recently, newest
/// first: what [`Error::NoEndpoints`] says about why no node was usable.
///
/// At most [`ConnectFailures::KEPT`] are kept; [`ConnectFailures::more`] counts the other nodes
/// whose last connect failed too. Cloning shares the list (no allocation), so one value serves
/// every batch that fails with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectFailures {
    recent: Arc<[Error]>,
    more: usize,
}

impl ConnectFailures {
    /// The most failures kept.
    pub const KEPT: usize = 8;
    /// The most failures shown by `Display`; the rest are counted as "+N more".
    pub const SHOWN: usize = 3;

    /// `(endpoint, reason)` of the nodes that failed most recently, newest first (the first
    /// [`ConnectFailures::KEPT`] are kept), and how many other nodes failed too.
    pub fn new(
        recent: impl IntoIterator<Item = (SocketAddr, Arc<str>)>,
        more: usize,
    ) -> ConnectFailures {
        let all: Vec<Error> = recent
            .into_iter()
            .map(|(endpoint, reason)| Error::ConnectFailed { endpoint, reason })
            .collect();
        let kept = all.len().min(Self::KEPT);
        let more = more + (all.len() - kept);
        ConnectFailures { recent: all.into_iter().take(kept).collect(), more }
    }

    /// The kept failures, each an [`Error::ConnectFailed`], newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Error> + '_ {
        self.recent.iter()
    }

    /// The most recent failure.
    pub fn most_recent(&self) -> Option<&Error> {
        self.recent.first()
    }

    /// Nodes whose last connect failed but are not kept here.
    pub fn more(&self) -> usize {
        self.more
    }

    /// Every node whose last connect failed: the kept ones and [`ConnectFailures::more`].
    pub fn nodes(&self) -> usize {
        self.recent.len() + self.more
    }

    /// No failure at all.
    pub fn is_empty(&self) -> bool {
        self.nodes() == 0
    }
}

/// `127.0.0.1:1: connection refused (os error 111); …; +N more`.
impl fmt::Display for ConnectFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.recent.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match failure {
                Error::ConnectFailed { endpoint, reason } => write!(f, "{endpoint}: {reason}")?,
                other => write!(f, "{other}")?,
            }
        }
        let hidden = self.nodes() - self.recent.len().min(Self::SHOWN);
        if hidden > 0 {
            write!(f, "; +{hidden} more")?;
        }
        Ok(())
    }
}

impl Error {
    /// [`Error::NoEndpoints`] with these causes (none: no node is known).
    pub fn no_endpoints(causes: ConnectFailures) -> Error {
        let last_cause = causes.most_recent().cloned().map(Arc::new);
        Error::NoEndpoints { causes, last_cause }
    }

    /// The Go SDK's numeric code for this error (`PROTOCOL.md` §6.10).
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidField { .. } | Error::InvalidPayload { .. } => codes::INPUT_LOG_INVALID,
            Error::TooLong { .. }
            | Error::RecordTooLong { .. }
            | Error::AttributesTooLong { .. } => codes::INPUT_LOG_TOO_LONG,
            Error::ProducerClosed => codes::PRODUCER_CLOSED,
            Error::QueueFull => codes::SEND_QUEUE_FULL,
            Error::QueueFullTimeout { .. } => codes::CONTEXT_EXPIRED,
            Error::SendTimeout { .. } | Error::AckTimeout { .. } | Error::FlushTimeout { .. } => {
                codes::SEND_TIMEOUT
            }
            Error::Server { .. } => codes::SERVER_ERROR,
            Error::ConnectionLost { .. } => codes::CONN_CLOSED_BY_PEER,
            Error::Purged => codes::SEND_FAILED,
            Error::InBatch { source, .. } => source.code(),
            Error::ConnectFailed { .. } => codes::NEW_CONN_FAILED,
            Error::InvalidConfig { .. }
            | Error::InCallback { .. }
            | Error::NoEndpoints { .. }
            | Error::Transport(_)
            | Error::Spawn { .. }
            | Error::Discovery(_) => codes::UNKNOWN,
        }
    }

    /// Whether sending the same record again may succeed, with no change to the record or the
    /// configuration. Per variant, what an application should do:
    ///
    /// * `true`: [`QueueFull`](Error::QueueFull), [`QueueFullTimeout`](Error::QueueFullTimeout)
    ///   (back off, or flush, and send again); [`SendTimeout`](Error::SendTimeout),
    ///   [`AckTimeout`](Error::AckTimeout), [`ConnectionLost`](Error::ConnectionLost),
    ///   [`ConnectFailed`](Error::ConnectFailed), [`NoEndpoints`](Error::NoEndpoints),
    ///   [`FlushTimeout`](Error::FlushTimeout) (the nodes may come back: send again, accepting
    ///   that a record whose ack was lost may arrive twice); [`Server`](Error::Server) with a
    ///   code the server may stop answering (1, 2, 3, 114: not linked to its MQ yet, going
    ///   offline, busy; 116–119: its sink could not store the batch in the MQ); [`Spawn`](Error::Spawn) (the OS was out of threads: build again later);
    ///   [`Purged`](Error::Purged) (the application purged it: send again if still wanted);
    ///   [`Discovery`](Error::Discovery) when [`DiscoveryError::is_transient`](crate::DiscoveryError::is_transient)
    ///   (the Manager was unreachable or answered 5xx).
    /// * `false`: [`InvalidField`](Error::InvalidField), [`InvalidPayload`](Error::InvalidPayload),
    ///   [`TooLong`](Error::TooLong), [`RecordTooLong`](Error::RecordTooLong) (fix or drop the
    ///   record); [`InvalidConfig`](Error::InvalidConfig), [`Transport`](Error::Transport), other
    ///   [`Discovery`](Error::Discovery) errors (fix the configuration or the environment);
    ///   [`ProducerClosed`](Error::ProducerClosed) (use a new producer); other
    ///   [`Server`](Error::Server) codes (the server refuses this record or stream: fix it, or
    ///   the Manager's configuration); [`InCallback`](Error::InCallback) (call it from outside
    ///   the delivery callback).
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::QueueFull
            | Error::QueueFullTimeout { .. }
            | Error::SendTimeout { .. }
            | Error::AckTimeout { .. }
            | Error::ConnectionLost { .. }
            | Error::ConnectFailed { .. }
            | Error::NoEndpoints { .. }
            | Error::FlushTimeout { .. }
            | Error::Spawn { .. }
            | Error::Purged => true,
            Error::Server { code, .. } => is_retryable_server_code(*code),
            Error::Discovery(error) => error.is_transient(),
            Error::InBatch { source, .. } => source.is_retriable(),
            Error::InvalidField { .. }
            | Error::InvalidPayload { .. }
            | Error::TooLong { .. }
            | Error::RecordTooLong { .. }
            | Error::AttributesTooLong { .. }
            | Error::InvalidConfig { .. }
            | Error::ProducerClosed
            | Error::InCallback { .. }
            | Error::Transport(_) => false,
        }
    }

    /// The DataProxy `errCode` when the error was answered by a server, otherwise `None`.
    pub fn server_code(&self) -> Option<i32> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::SendTimeout { last_error: Some(cause), .. } => cause.server_code(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_go_sdk() {
        let invalid = Error::InvalidPayload { reason: "empty" };
        assert_eq!(invalid.code(), 10010);
        let long = Error::TooLong { frame_len: 10, limit: 5 };
        assert_eq!(long.code(), 10009);
        assert_eq!(long.server_code(), None);
        assert!(long.to_string().contains("limit of 5 bytes"));
        let endpoint: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let server =
            Error::Server { code: 115, message: Some("no topic".into()), endpoint, batch_id: 9 };
        assert_eq!((server.code(), server.server_code()), (10011, Some(115)));
        assert!(server.to_string().ends_with("errCode 115 (no topic)"));
        let timeout = Error::SendTimeout {
            batch_id: 9,
            attempts: 3,
            last_error: Some(Box::new(Error::Server {
                code: 1,
                message: None,
                endpoint,
                batch_id: 9,
            })),
        };
        assert_eq!((timeout.code(), timeout.server_code()), (10001, Some(1)));
        assert!(timeout.to_string().contains("after 3 attempt(s): server"));
        let cause = std::error::Error::source(&timeout).expect("the last error is the source");
        assert_eq!(cause.to_string(), "server 127.0.0.1:1 refused batch 9 with errCode 1");
        let record = Error::RecordTooLong {
            record_len: 500_186,
            max_record_len: 449_012,
            max_frame_len: 524_288,
            compressed: true,
        };
        assert_eq!(record.code(), 10009);
        assert_eq!(
            record.to_string(),
            "record too long: 500186 bytes exceeds the largest record of this stream, 449012 \
             bytes (frame limit 524288 bytes, less the attributes and Snappy's worst case)"
        );
        assert_eq!(Error::QueueFull.code(), 10004);
        assert_eq!(Error::ProducerClosed.code(), 10003);
        let none = Error::no_endpoints(ConnectFailures::default());
        assert_eq!(none.to_string(), "service has no endpoints");
        assert!(std::error::Error::source(&none).is_none());
        assert_eq!(none.code(), 20001);
    }

    #[test]
    fn wrapping_variants_expose_their_cause_as_source_and_retriability_is_per_variant() {
        use std::error::Error as _;
        let endpoint: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let server = Error::Server { code: 1, message: None, endpoint, batch_id: 1 };
        let timeout =
            Error::SendTimeout { batch_id: 1, attempts: 3, last_error: Some(Box::new(server)) };
        let connect = ConnectFailures::new([(endpoint, "refused".into())], 0);
        let discovery = Error::Discovery(crate::DiscoveryError::Unreachable {
            url: "u".into(),
            reason: "r".into(),
        });
        // Every variant that wraps another error: its source is that error.
        let wrapping = [
            (timeout.clone(), "server 127.0.0.1:1 refused batch 1 with errCode 1"),
            (Error::no_endpoints(connect), "connect to 127.0.0.1:1 failed: refused"),
            (discovery.clone(), "cannot reach the InLong Manager at u: r"),
        ];
        for (error, cause) in wrapping {
            let source = error.source().unwrap_or_else(|| panic!("{error:?} has no source"));
            assert_eq!(source.to_string(), cause);
        }
        assert!(Error::QueueFull.source().is_none());
        let retriable = [
            (timeout, true),
            (discovery, true),
            (Error::Discovery(crate::DiscoveryError::Auth { status: 401 }), false),
            (Error::Server { code: 114, message: None, endpoint, batch_id: 1 }, true),
            (Error::Server { code: 115, message: None, endpoint, batch_id: 1 }, false),
            (Error::QueueFull, true),
            (Error::Purged, true),
            (Error::Spawn { what: "a shard thread", reason: "again".into() }, true),
            (Error::ProducerClosed, false),
            (Error::InvalidPayload { reason: "empty" }, false),
            (Error::InvalidConfig { option: "shards", reason: "0".into() }, false),
            (Error::InCallback { operation: "flush", undelivered: 1 }, false),
        ];
        for (error, expected) in retriable {
            assert_eq!(error.is_retriable(), expected, "{error:?}");
        }
        assert_eq!(Error::Purged.code(), codes::SEND_FAILED);
        assert_eq!(Error::Spawn { what: "x", reason: "y".into() }.code(), codes::UNKNOWN);
    }

    #[test]
    fn no_endpoints_names_the_last_failure_of_each_node_and_counts_the_rest() {
        let node = |i: u8| SocketAddr::from(([127, 0, 0, i], 1));
        let refused: Arc<str> = "connection refused (os error 111)".into();
        let one = Error::no_endpoints(ConnectFailures::new([(node(1), refused.clone())], 0));
        assert_eq!(
            one.to_string(),
            "service has no endpoints (connect failed: 127.0.0.1:1: connection refused (os error \
             111))"
        );
        let source = std::error::Error::source(&one).expect("the most recent cause");
        assert_eq!(
            source.to_string(),
            "connect to 127.0.0.1:1 failed: connection refused (os error 111)"
        );
        let failures = (1..=10).map(|i| (node(i), format!("reason {i}").into()));
        let many = ConnectFailures::new(failures, 90);
        assert_eq!((many.iter().count(), many.more(), many.nodes()), (8, 92, 100));
        assert_eq!(many.most_recent().map(Error::code), Some(10006));
        let error = Error::no_endpoints(many.clone());
        assert_eq!(
            error.to_string(),
            "service has no endpoints (connect failed: 127.0.0.1:1: reason 1; 127.0.0.2:1: reason \
             2; 127.0.0.3:1: reason 3; +97 more)"
        );
        assert_eq!(
            std::error::Error::source(&error).unwrap().to_string(),
            "connect to 127.0.0.1:1 failed: reason 1"
        );
        assert_eq!(error.clone(), error, "clones share the list");
        let timeout =
            Error::SendTimeout { batch_id: 1, attempts: 1, last_error: Some(Box::new(error)) };
        assert!(timeout.to_string().contains("127.0.0.1:1: reason 1"), "{timeout}");
    }
}
