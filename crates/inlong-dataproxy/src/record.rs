//! [`Record`]: what an application sends, and [`StreamId`], the cheap-to-clone stream name.
//!
//! Neither allocates on the send path when built from `&'static` data or from values the
//! application already owns: payloads are [`Bytes`], stream IDs are reference-counted.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// An inlong stream ID. Cloning is a reference-count increment; building one from a
/// `&'static str` does not allocate. Applications that send to a fixed set of streams should
/// build each `StreamId` once and clone it per record.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(Bytes);

impl StreamId {
    /// The stream ID as text.
    pub fn as_str(&self) -> &str {
        // SAFETY: a `StreamId` is only ever built from a `&'static str`, a `String` or a
        // `&String` (the three `From` impls below; the field is private), so its bytes are
        // valid UTF-8. Checking them again cost ~4 % of the send path's CPU at 100 B records
        // (`perf record` of `bench`), because the accumulator and the router read the ID as
        // `&str` several times per record.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// Checks the ID as [`Producer::send`](crate::Producer::send) does: non-empty, at most 1024
    /// bytes, no whitespace, `&` or `=`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidField`](crate::Error::InvalidField) naming what is wrong.
    pub fn validate(&self) -> Result<(), crate::Error> {
        crate::protocol::validate_id(crate::error::Field::StreamId, self.as_str())
    }
}

impl From<&'static str> for StreamId {
    fn from(id: &'static str) -> StreamId {
        StreamId(Bytes::from_static(id.as_bytes()))
    }
}

impl From<String> for StreamId {
    fn from(id: String) -> StreamId {
        StreamId(Bytes::from(id.into_bytes()))
    }
}

impl From<&String> for StreamId {
    fn from(id: &String) -> StreamId {
        StreamId(Bytes::copy_from_slice(id.as_bytes()))
    }
}

impl Hash for StreamId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record to send: a stream ID, a payload and an optional `u64` of user metadata that comes
/// back in the [`DeliveryReport`](crate::DeliveryReport).
///
/// One trailing `\n` of the payload is dropped on the wire, as the Go SDK does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    stream_id: StreamId,
    payload: Bytes,
    metadata: u64,
}

impl Record {
    /// A record for `stream_id` carrying `payload`.
    pub fn new(stream_id: impl Into<StreamId>, payload: impl Into<Bytes>) -> Record {
        Record { stream_id: stream_id.into(), payload: payload.into(), metadata: 0 }
    }

    /// Attaches user metadata, handed back in the delivery report (default 0).
    #[must_use]
    pub fn with_metadata(mut self, metadata: u64) -> Record {
        self.metadata = metadata;
        self
    }

    /// The stream ID.
    pub fn stream_id(&self) -> &StreamId {
        &self.stream_id
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The user metadata.
    pub fn metadata(&self) -> u64 {
        self.metadata
    }

    /// Takes the record apart.
    pub fn into_parts(self) -> (StreamId, Bytes, u64) {
        (self.stream_id, self.payload, self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn stream_ids_compare_hash_and_borrow_as_str() {
        let a: StreamId = "orders".into();
        let b: StreamId = String::from("orders").into();
        assert_eq!(a, b);
        let mut map = HashMap::new();
        map.insert(a.clone(), 1);
        assert_eq!(map.get("orders"), Some(&1));
        assert_eq!(format!("{a} {a:?}"), "orders \"orders\"");
    }

    #[test]
    fn record_parts() {
        let record = Record::new("s", &b"payload"[..]).with_metadata(7);
        assert_eq!(record.stream_id().as_str(), "s");
        assert_eq!(record.payload().as_ref(), b"payload");
        assert_eq!(record.metadata(), 7);
        let (stream, payload, metadata) = record.into_parts();
        assert_eq!((stream.as_str(), payload.len(), metadata), ("s", 7, 7));
    }
}
