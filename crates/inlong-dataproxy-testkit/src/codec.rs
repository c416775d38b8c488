//! The server side of the wire: what a real DataProxy does with each inbound frame.
//!
//! Pure code, no sockets and no clock, so the fuzz targets and property tests drive it directly.
//! [`decode_request`] follows the validation order of `PROTOCOL.md` §3.2 steps 1–8 (the frame
//! checks done by `CodecTextMsg` and `AbsV0MsgCodec`) and hands back either a decoded batch or a
//! [`Rejection`] carrying the real error code, message and echo rule. Steps 9–13 depend on the
//! node's state and are applied by the node ([`super::dataproxy`]); [`encode_reply`] writes the
//! reply frame of §3.7 for both.
//!
//! Only what the Go SDK and this SDK send is decoded: msgType 1 (heartbeat) and 5 (multi-body).
//! Every other type closes the connection, as the real server does for types it does not know.

use std::borrow::Cow;

use inlong_dataproxy::protocol::{
    self, FrameError, MSG_TYPE_HEARTBEAT, MSG_TYPE_MASK, MSG_TYPE_MULTI_BODY,
};

/// DataProxy error codes the local server writes (`PROTOCOL.md` §3.9).
pub mod err_codes {
    /// Node not linked to an MQ yet (`SINK_SERVICE_UNREADY`).
    pub const SINK_SERVICE_UNREADY: i32 = 1;
    /// Node is going offline (`SERVICE_CLOSED`, reject mode).
    pub const SERVICE_CLOSED: i32 = 2;
    /// Snappy decoding failed (`UNCOMPRESS_DATA_ERROR`).
    pub const UNCOMPRESS_DATA_ERROR: i32 = 96;
    /// `groupId` missing (`MISS_REQUIRED_GROUPID_ARGUMENT`).
    pub const MISS_REQUIRED_GROUPID_ARGUMENT: i32 = 100;
    /// Length fields inconsistent (`BODY_EXCEED_MAX_LEN`).
    pub const BODY_EXCEED_MAX_LEN: i32 = 104;
    /// `bodyLen == 0` (`BODY_LENGTH_ZERO`).
    pub const BODY_LENGTH_ZERO: i32 = 105;
    /// `bodyLen < 0` read as a signed int (`BODY_LENGTH_LESS_ZERO`).
    pub const BODY_LENGTH_LESS_ZERO: i32 = 106;
    /// `attrLen < 0` read as a signed int (`ATTR_LENGTH_LESS_ZERO`).
    pub const ATTR_LENGTH_LESS_ZERO: i32 = 107;
    /// The attribute string is not a strict `k=v&…` map (`SPLIT_ATTR_ERROR`).
    pub const SPLIT_ATTR_ERROR: i32 = 109;
    /// The node's channel refused the event (`PUT_EVENT_TO_CHANNEL_FAILURE`).
    pub const PUT_EVENT_TO_CHANNEL_FAILURE: i32 = 114;
    /// No topic for the group/stream (`TOPIC_IS_BLANK`).
    pub const TOPIC_IS_BLANK: i32 = 115;
    /// Type 5 body entries malformed (`MSG_BODY_ITEMS_INVALID`).
    pub const MSG_BODY_ITEMS_INVALID: i32 = 123;
    /// `syncSend=true` with `isAck=false`.
    pub const ATTR_ORDER_CONTROL_CONFLICT_ERROR: i32 = 150;
    /// `proxySend=true` with `isAck=false`.
    pub const ATTR_PROXY_CONTROL_CONFLICT_ERROR: i32 = 151;
}
use err_codes::*;

/// Smallest `totalLen` of a txt frame (types 2–6): type, bodyLen and attrLen.
const TXT_MIN_TOTAL_LEN: usize = 9;

/// How much of a batch the server looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngestMode {
    /// Decompress and validate every body, as the real server does (the default).
    #[default]
    Full,
    /// Trust the `cnt` attribute and skip decompression and entry checks: a cheap sink for
    /// benchmarks, where the server shares the machine with the producer it measures.
    CountOnly,
}

/// What to do with one inbound frame.
#[derive(Debug)]
pub enum Request<'a> {
    /// A type 1 heartbeat: answer [`protocol::HEARTBEAT_REPLY`].
    Heartbeat,
    /// A type 5 batch that passed steps 1–8.
    Batch(TextBatch<'a>),
    /// A type 5 batch refused in steps 1–8.
    Rejected(Rejection<'a>),
}

/// Why the connection must be closed without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The frame is over the size limit, too short, or its lengths do not add up.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message type the local server does not serve.
    #[error("unsupported message type {0:#04x}")]
    UnsupportedType(u8),
}

/// A decoded type 5 batch.
#[derive(Debug)]
pub struct TextBatch<'a> {
    /// The attribute string as received (UTF-8, invalid sequences replaced).
    pub attrs: Cow<'a, str>,
    /// The uncompressed body (empty in [`IngestMode::CountOnly`]).
    body: &'a [u8],
    /// Records in the batch: the valid entries (or `cnt` in count-only mode).
    pub count: u32,
    /// Bytes of the payloads (or of the body as sent in count-only mode).
    pub payload_bytes: u64,
    /// Bytes of the body as it was on the wire.
    pub wire_body_len: usize,
    /// False when `isAck=false`: no reply may be sent.
    pub wants_reply: bool,
}

impl<'a> TextBatch<'a> {
    /// The value of attribute `key` (the request's attributes have no duplicate keys).
    pub fn attr(&self, key: &str) -> Option<&str> {
        attr_value(&self.attrs, key)
    }

    /// The records, in order, up to the first invalid entry (the real server silently drops the
    /// rest, §3.2). Empty in [`IngestMode::CountOnly`].
    pub fn records(&self) -> Entries<'a> {
        Entries { rest: self.body }
    }
}

/// Iterator over the `[len u32][bytes]` entries of a type 5 body.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.len() < 4 {
            return None;
        }
        // The server reads the length as a signed Java int: anything ≥ 2^31 is "≤ 0".
        let len = protocol::read_u32(self.rest, 0) as usize;
        if len == 0 || len > i32::MAX as usize || len > self.rest.len() - 4 {
            self.rest = &[];
            return None;
        }
        let entry = &self.rest[4..4 + len];
        self.rest = &self.rest[4 + len..];
        Some(entry)
    }
}

/// A batch refused with an error code; the reply echoes the attributes when the server had
/// parsed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'a> {
    /// The DataProxy `errCode`.
    pub code: i32,
    /// The `errMsg`, if the real server writes one for this code.
    pub err_msg: Option<String>,
    /// The request's attribute string as echoed (none for steps 1–4).
    pub echo: Option<Cow<'a, str>>,
    /// False when `isAck=false`: no reply may be sent.
    pub wants_reply: bool,
}

impl Rejection<'_> {
    fn early(code: i32, err_msg: Option<String>) -> Rejection<'static> {
        Rejection { code, err_msg, echo: None, wants_reply: true }
    }
}

/// Decodes one whole frame (length field included, as split by [`protocol::split_frame`]).
///
/// `scratch` receives the decompressed body and is reused across calls.
pub fn decode_request<'a>(
    frame: &'a [u8],
    mode: IngestMode,
    scratch: &'a mut Vec<u8>,
) -> Result<Request<'a>, CloseReason> {
    let Some(&type_byte) = frame.get(4) else {
        return Err(FrameError::TooShort { frame_len: frame.len(), msg_type: 0 }.into());
    };
    if protocol::read_u32(frame, 0) as usize != frame.len() - 4 {
        return Err(FrameError::Inconsistent("totalLen does not match the frame").into());
    }
    match type_byte & MSG_TYPE_MASK {
        MSG_TYPE_HEARTBEAT => Ok(Request::Heartbeat),
        MSG_TYPE_MULTI_BODY if frame.len() - 4 >= TXT_MIN_TOTAL_LEN => {
            Ok(decode_text(frame, mode, scratch))
        }
        MSG_TYPE_MULTI_BODY => {
            Err(FrameError::TooShort { frame_len: frame.len(), msg_type: type_byte }.into())
        }
        _ => Err(CloseReason::UnsupportedType(type_byte)),
    }
}

/// Steps 1–8 of §3.2 for a frame of at least 13 bytes.
fn decode_text<'a>(frame: &'a [u8], mode: IngestMode, scratch: &'a mut Vec<u8>) -> Request<'a> {
    let total_len = frame.len() - 4;
    let body_len_raw = protocol::read_u32(frame, 5);
    // Step 1: bodyLen is a signed Java int.
    if body_len_raw == 0 {
        return Request::Rejected(Rejection::early(BODY_LENGTH_ZERO, None));
    }
    if body_len_raw > i32::MAX as u32 {
        return Request::Rejected(Rejection::early(BODY_LENGTH_LESS_ZERO, None));
    }
    let body_len = body_len_raw as usize;
    // Step 2.
    if body_len + 13 > total_len + 4 {
        return Request::Rejected(Rejection::early(
            BODY_EXCEED_MAX_LEN,
            Some(format!(
                "Error msg, bodyLen({body_len}) + fixedLength(13) > totalDataLen({total_len}) + 4"
            )),
        ));
    }
    // Step 3.
    let attr_len_raw = protocol::read_u32(frame, 9 + body_len);
    if attr_len_raw > i32::MAX as u32 {
        return Request::Rejected(Rejection::early(ATTR_LENGTH_LESS_ZERO, None));
    }
    let attr_len = attr_len_raw as usize;
    // Step 4.
    if total_len + 4 != 13 + body_len + attr_len {
        return Request::Rejected(Rejection::early(
            BODY_EXCEED_MAX_LEN,
            Some(format!(
                "Error msg, totalDataLen({total_len}) + 4 != fixedLength(13) + bodyLen({body_len}) + attrLen({attr_len})"
            )),
        ));
    }
    let wire_body = &frame[9..9 + body_len];
    let attrs = String::from_utf8_lossy(&frame[13 + body_len..]);
    // Step 5.
    if !is_strict_attr_map(&attrs) {
        let err_msg = Some(format!("Parse attr ({attrs}) failure"));
        return Request::Rejected(Rejection {
            code: SPLIT_ATTR_ERROR,
            err_msg,
            echo: Some(attrs),
            wants_reply: true,
        });
    }
    let is_true = |key| attr_value(&attrs, key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let wants_reply = !attr_value(&attrs, "isAck").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let reject = |code, err_msg, attrs| {
        Request::Rejected(Rejection { code, err_msg, echo: Some(attrs), wants_reply })
    };
    // Step 6.
    if !wants_reply && is_true("syncSend") {
        return reject(ATTR_ORDER_CONTROL_CONFLICT_ERROR, None, attrs);
    }
    if !wants_reply && is_true("proxySend") {
        return reject(ATTR_PROXY_CONTROL_CONFLICT_ERROR, None, attrs);
    }
    if mode == IngestMode::CountOnly {
        let count = attr_value(&attrs, "cnt").and_then(|v| v.parse().ok()).unwrap_or(1);
        return Request::Batch(TextBatch {
            attrs,
            body: &[],
            count,
            payload_bytes: body_len as u64,
            wire_body_len: body_len,
            wants_reply,
        });
    }
    // Step 7.
    let compress_type = attr_value(&attrs, "cp").map(str::trim).filter(|cp| !cp.is_empty());
    let body: &[u8] = match compress_type {
        None => wire_body,
        Some(cp) => match uncompress(wire_body, scratch) {
            Ok(()) => scratch,
            Err(error) => {
                let err_msg = Some(format!(
                    "Error to uncompress msg, compress type({cp}), attr: ({attrs}), error: ({error})"
                ));
                return reject(UNCOMPRESS_DATA_ERROR, err_msg, attrs);
            }
        },
    };
    // Step 8.
    if body.len() <= 4 {
        let err_msg = Some(format!("Malformed data len, bodyLen({}), attr: ({attrs})", body.len()));
        return reject(MSG_BODY_ITEMS_INVALID, err_msg, attrs);
    }
    let first_len = protocol::read_u32(body, 0) as usize;
    if first_len == 0 || first_len > i32::MAX as usize || first_len > body.len() - 4 {
        let err_msg = Some(format!(
            "Malformed data len, singleMsgLen({}), buffer remaining({}), attr: ({attrs})",
            protocol::read_u32(body, 0) as i32,
            body.len() - 4
        ));
        return reject(MSG_BODY_ITEMS_INVALID, err_msg, attrs);
    }
    let (mut count, mut payload_bytes) = (0u32, 0u64);
    for entry in (Entries { rest: body }) {
        count += 1;
        payload_bytes += entry.len() as u64;
    }
    Request::Batch(TextBatch {
        attrs,
        body,
        count,
        payload_bytes,
        wire_body_len: body_len,
        wants_reply,
    })
}

/// Snappy raw block decode into `scratch`, refusing lengths no valid block can claim.
fn uncompress(input: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    let len = snap::raw::decompress_len(input).map_err(|e| e.to_string())?;
    if len == 0 {
        // xerial reports a zero length as error code 2.
        return Err("2".to_owned());
    }
    // A Snappy element expands at most 64 bytes out of 2 input bytes (copy-1 runs of 64 in 3
    // bytes, copy-2 of 64 in 3): a larger claim is corrupt, and must not make us allocate.
    if len > input.len().saturating_mul(32).saturating_add(64) {
        return Err(format!("uncompressed length {len} is impossible for {} bytes", input.len()));
    }
    scratch.clear();
    scratch.resize(len, 0);
    let written =
        snap::raw::Decoder::new().decompress(input, scratch).map_err(|e| e.to_string())?;
    scratch.truncate(written);
    Ok(())
}

/// Guava's `Splitter.on("&").trimResults().withKeyValueSeparator("=")` (§3.4): every trimmed
/// chunk has exactly one `=`, and no key repeats.
fn is_strict_attr_map(attrs: &str) -> bool {
    let chunks = || attrs.split('&').map(str::trim);
    for (i, chunk) in chunks().enumerate() {
        let mut parts = chunk.split('=');
        let key = parts.next().unwrap_or_default();
        if parts.next().is_none() || parts.next().is_some() {
            return false;
        }
        if chunks().take(i).any(|earlier| earlier.split('=').next() == Some(key)) {
            return false;
        }
    }
    true
}

/// The value of `key` in a strict attribute map (chunks trimmed, as the server sees them).
fn attr_value<'s>(attrs: &'s str, key: &str) -> Option<&'s str> {
    attrs.split('&').map(str::trim).find_map(|chunk| {
        let (k, v) = chunk.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The attribute string the success (and 114) reply echoes: `rt`/`rtms` prepended when the request
/// lacks them (§3.5).
pub fn stored_attrs<'s>(attrs: &'s str, receive_ms: u64) -> Cow<'s, str> {
    let has_rt = attr_value(attrs, "rt").is_some();
    let has_rtms = attr_value(attrs, "rtms").is_some();
    match (has_rt, has_rtms) {
        (true, true) => Cow::Borrowed(attrs),
        (false, false) => Cow::Owned(format!("rt={receive_ms}&rtms={receive_ms}&{attrs}")),
        (true, false) => Cow::Owned(format!("rtms={receive_ms}&{attrs}")),
        (false, true) => Cow::Owned(format!("rt={receive_ms}&{attrs}")),
    }
}

/// Appends a txt reply frame (§3.7): body `'2'`, attributes
/// `dpIp=<ip>[&errCode=<code>[&errMsg=<msg>]][&<echo>]`.
pub fn encode_reply(
    out: &mut Vec<u8>,
    msg_type: u8,
    dp_ip: &str,
    error: Option<(i32, Option<&str>)>,
    echo: Option<&str>,
) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, msg_type & MSG_TYPE_MASK, 0, 0, 0, 1, b'2', 0, 0, 0, 0]);
    let attr_start = out.len();
    out.extend_from_slice(b"dpIp=");
    out.extend_from_slice(dp_ip.as_bytes());
    if let Some((code, err_msg)) = error {
        out.extend_from_slice(b"&errCode=");
        out.extend_from_slice(code.to_string().as_bytes());
        if let Some(msg) = err_msg.filter(|msg| !msg.is_empty()) {
            out.extend_from_slice(b"&errMsg=");
            out.extend_from_slice(msg.as_bytes());
        }
    }
    if let Some(echo) = echo.filter(|echo| !echo.is_empty()) {
        out.push(b'&');
        out.extend_from_slice(echo.as_bytes());
    }
    let attr_len = out.len() - attr_start;
    let total_len = out.len() - start - 4;
    // Replies are built from frames under the 20 MiB server limit plus short texts.
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out[start..start + 4].copy_from_slice(&to_u32(total_len));
    out[attr_start - 4..attr_start].copy_from_slice(&to_u32(attr_len));
}

#[cfg(test)]
mod tests {
    use super::*;
    use inlong_dataproxy::protocol::{AddColumns, BatchBody, BatchHeader, FrameEncoder};
    use proptest::prelude::*;

    fn frame(attrs: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((9 + body.len() + attrs.len()) as u32).to_be_bytes());
        out.push(5);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
        out.extend_from_slice(attrs.as_bytes());
        out
    }

    fn entries(records: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for record in records {
            body.extend_from_slice(&(record.len() as u32).to_be_bytes());
            body.extend_from_slice(record);
        }
        body
    }

    const ATTRS: &str = "groupId=g&streamId=s&dt=1&mid=7&sid=7&wid=0&cnt=2";

    fn rejected(frame: &[u8]) -> Rejection<'static> {
        let mut scratch = Vec::new();
        match decode_request(frame, IngestMode::Full, &mut scratch).unwrap() {
            Request::Rejected(r) => {
                Rejection { echo: r.echo.map(|e| Cow::Owned(e.into_owned())), ..r }
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_plain_batch() {
        let frame = frame(ATTRS, &entries(&[b"ab", b"cde"]));
        let mut scratch = Vec::new();
        let Request::Batch(batch) = decode_request(&frame, IngestMode::Full, &mut scratch).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!((batch.count, batch.payload_bytes, batch.wants_reply), (2, 5, true));
        assert_eq!(batch.records().collect::<Vec<_>>(), vec![&b"ab"[..], b"cde"]);
        assert_eq!(batch.attr("mid"), Some("7"));
    }

    #[test]
    fn heartbeat_is_recognised() {
        let mut scratch = Vec::new();
        let hb = protocol::HEARTBEAT_REQUEST;
        assert!(matches!(
            decode_request(&hb, IngestMode::Full, &mut scratch),
            Ok(Request::Heartbeat)
        ));
    }

    #[test]
    fn step_1_body_length_zero_105() {
        let r = rejected(&frame(ATTRS, b""));
        assert_eq!((r.code, r.echo.is_none()), (105, true));
    }

    #[test]
    fn step_1_body_length_negative_106() {
        let mut f = frame(ATTRS, b"\0\0\0\x01x");
        f[5] = 0x80;
        let r = rejected(&f);
        assert_eq!((r.code, r.echo.is_none()), (106, true));
    }

    #[test]
    fn step_2_body_past_frame_104() {
        let mut f = frame(ATTRS, b"\0\0\0\x01x");
        f[5..9].copy_from_slice(&1000u32.to_be_bytes());
        let r = rejected(&f);
        assert_eq!(r.code, 104);
        assert!(r.err_msg.unwrap().contains("fixedLength(13) > totalDataLen"));
        assert!(r.echo.is_none());
    }

    #[test]
    fn step_3_attr_length_negative_107() {
        let mut f = frame(ATTRS, b"\0\0\0\x01x");
        f[14] = 0xff; // attrLen high byte: 9 + bodyLen(5)
        let r = rejected(&f);
        assert_eq!((r.code, r.echo.is_none()), (107, true));
    }

    #[test]
    fn step_4_lengths_disagree_104() {
        let mut f = frame(ATTRS, b"\0\0\0\x01x");
        f[17] -= 1; // attrLen one short
        let r = rejected(&f);
        assert_eq!(r.code, 104);
        assert!(r.err_msg.unwrap().contains("!= fixedLength(13)"));
    }

    #[test]
    fn step_5_bad_attrs_109() {
        for attrs in ["", "a", "a=b&&c=d", "a=b&", "a=b=c", "a=1&a=2", " a=1 & a=2"] {
            let r = rejected(&frame(attrs, b"\0\0\0\x01x"));
            assert_eq!(r.code, 109, "{attrs:?}");
            assert_eq!(r.echo.as_deref(), Some(attrs));
            assert_eq!(r.err_msg.unwrap(), format!("Parse attr ({attrs}) failure"));
        }
        // Chunks are trimmed, values may be empty.
        let f = frame(" groupId=g & k= ", b"\0\0\0\x01x");
        assert!(matches!(
            decode_request(&f, IngestMode::Full, &mut Vec::new()),
            Ok(Request::Batch(_))
        ));
    }

    #[test]
    fn step_6_sync_and_proxy_send_without_ack_150_151() {
        let body = entries(&[b"x"]);
        let r = rejected(&frame("groupId=g&syncSend=true&isAck=false", &body));
        assert_eq!((r.code, r.wants_reply), (150, false));
        let r = rejected(&frame("groupId=g&proxySend=TRUE&isAck=False", &body));
        assert_eq!((r.code, r.wants_reply), (151, false));
    }

    #[test]
    fn step_7_bad_snappy_96() {
        let r = rejected(&frame("groupId=g&cp=snappy", b"\xff\xff\xff\xff\xff\x01garbage"));
        assert_eq!(r.code, 96);
        assert!(r.err_msg.unwrap().starts_with("Error to uncompress msg, compress type(snappy)"));
        // Any non-blank cp triggers a Snappy decode.
        let r = rejected(&frame("groupId=g&cp=gzip", &entries(&[b"plain"])));
        assert_eq!(r.code, 96);
        // A decompressed length of zero.
        let r = rejected(&frame("groupId=g&cp=snappy", b"\x00"));
        assert_eq!(r.code, 96);
        assert!(r.err_msg.unwrap().ends_with("error: (2)"));
        // A claimed length no block can have is refused without allocating it.
        let r = rejected(&frame("groupId=g&cp=snappy", b"\xff\xff\xff\xff\x0f\x00"));
        assert_eq!(r.code, 96);
    }

    #[test]
    fn step_8_malformed_entries_123() {
        let r = rejected(&frame(ATTRS, b"\0\0\0\x01"));
        assert_eq!(r.code, 123);
        assert!(r.err_msg.unwrap().contains("bodyLen(4)"));
        let r = rejected(&frame(ATTRS, b"\0\0\0\0xyz"));
        assert_eq!(r.code, 123);
        assert!(r.err_msg.unwrap().contains("singleMsgLen(0)"));
        let r = rejected(&frame(ATTRS, b"\0\0\0\x09xyz"));
        assert_eq!(r.code, 123);
    }

    #[test]
    fn step_8_entries_after_an_invalid_one_are_silently_dropped() {
        let mut body = entries(&[b"first"]);
        body.extend_from_slice(b"\0\0\0\0");
        body.extend_from_slice(&entries(&[b"lost"]));
        let f = frame(ATTRS, &body);
        let mut scratch = Vec::new();
        let Request::Batch(batch) = decode_request(&f, IngestMode::Full, &mut scratch).unwrap()
        else {
            panic!()
        };
        assert_eq!(batch.count, 1);
        assert_eq!(batch.records().collect::<Vec<_>>(), vec![&b"first"[..]]);
    }

    #[test]
    fn is_ack_false_wants_no_reply() {
        let f = frame("groupId=g&isAck=FALSE", &entries(&[b"x"]));
        let mut scratch = Vec::new();
        let Request::Batch(batch) = decode_request(&f, IngestMode::Full, &mut scratch).unwrap()
        else {
            panic!()
        };
        assert!(!batch.wants_reply);
    }

    #[test]
    fn connection_level_failures_close() {
        let mut scratch = Vec::new();
        let unknown = [0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode_request(&unknown, IngestMode::Full, &mut scratch).unwrap_err(),
            CloseReason::UnsupportedType(9)
        );
        let short = [0, 0, 0, 5, 5, 0, 0, 0, 0];
        assert!(decode_request(&short, IngestMode::Full, &mut scratch).is_err());
        assert!(decode_request(&[0, 0, 0], IngestMode::Full, &mut scratch).is_err());
        // Flag bits are ignored when resolving the type.
        let flagged = {
            let mut f = frame(ATTRS, &entries(&[b"x"]));
            f[4] = 0x25;
            f
        };
        assert!(matches!(
            decode_request(&flagged, IngestMode::Full, &mut scratch),
            Ok(Request::Batch(_))
        ));
    }

    #[test]
    fn count_only_mode_trusts_cnt() {
        let f = frame("groupId=g&cnt=50&cp=snappy", b"not even snappy");
        let mut scratch = Vec::new();
        let Request::Batch(batch) =
            decode_request(&f, IngestMode::CountOnly, &mut scratch).unwrap()
        else {
            panic!()
        };
        assert_eq!(batch.count, 50);
        assert_eq!(batch.records().count(), 0);
    }

    #[test]
    fn golden_replies_7_7() {
        let attrs = "groupId=test_group&streamId=test_stream&dt=1700000000000&mid=0000-fixed&sid=0000-fixed&wid=0&cnt=1";
        let mut out = Vec::new();
        encode_reply(&mut out, 5, "10.0.0.1", None, Some(&stored_attrs(attrs, 1_700_000_000_123)));
        assert_eq!(
            out.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "0000009e05000000013200000094647049703d31302e302e302e312672743d31\
             3730303030303030303132332672746d733d3137303030303030303031323326\
             67726f757049643d746573745f67726f75702673747265616d49643d74657374\
             5f73747265616d2664743d31373030303030303030303030266d69643d303030\
             302d6669786564267369643d303030302d6669786564267769643d3026636e74\
             3d31"
        );
        out.clear();
        encode_reply(&mut out, 5, "10.0.0.1", Some((2, None)), Some(attrs));
        assert_eq!(out.len(), 136);
        assert_eq!(&out[..4], &[0, 0, 0, 0x84]);
        out.clear();
        let msg = "Topic not configured for groupId=(test_group), streamId=(test_stream)";
        encode_reply(&mut out, 5, "10.0.0.1", Some((115, Some(msg))), Some(attrs));
        assert_eq!(out.len(), 215);
        assert_eq!(&out[..4], &[0, 0, 0, 0xd3]);
    }

    #[test]
    fn stored_attrs_keep_existing_times() {
        assert_eq!(stored_attrs("rt=1&rtms=2&a=b", 9), "rt=1&rtms=2&a=b");
        assert_eq!(stored_attrs("a=b", 9), "rt=9&rtms=9&a=b");
    }

    fn sdk_frame(records: &[Vec<u8>], stream: &str, compress: bool) -> Vec<u8> {
        let mut body = BatchBody::new();
        for record in records {
            body.push(record).unwrap();
        }
        let header =
            BatchHeader { group_id: "g", stream_id: stream, dt_ms: 1, mid: "m-1", wid: 3, uniq: 1 };
        let mut encoder = FrameEncoder::new();
        encoder.set_compression(compress);
        let mut out = Vec::new();
        encoder.encode(&header, &body, &AddColumns::default(), usize::MAX, &mut out).unwrap();
        out
    }

    proptest! {
        /// Encode with the SDK, decode with the server: the same records come out.
        #[test]
        fn sdk_frames_round_trip(
            records in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 1..300)
                    .prop_filter("lone newline", |r| r != b"\n"),
                1..40,
            ),
            stream in "[a-zA-Z0-9_.-]{1,20}",
            compress in any::<bool>(),
        ) {
            let frame = sdk_frame(&records, &stream, compress);
            prop_assert_eq!(protocol::split_frame(&frame, usize::MAX), Ok(Some(frame.len())));
            let mut scratch = Vec::new();
            let Ok(Request::Batch(batch)) = decode_request(&frame, IngestMode::Full, &mut scratch)
            else {
                return Err(TestCaseError::fail("not accepted"));
            };
            let expected: Vec<&[u8]> = records
                .iter()
                .map(|r| r.strip_suffix(b"\n").unwrap_or(r))
                .collect();
            prop_assert_eq!(batch.records().collect::<Vec<_>>(), expected);
            prop_assert_eq!(batch.count as usize, records.len());
            prop_assert_eq!(batch.attr("streamId"), Some(stream.as_str()));
            let cnt = records.len().to_string();
            prop_assert_eq!(batch.attr("cnt"), Some(cnt.as_str()));
        }

        /// Whatever arrives, the server never panics and never allocates beyond its bound.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut scratch = Vec::new();
            if let Ok(Some(len)) = protocol::split_frame(&bytes, 65_536) {
                let _ = decode_request(&bytes[..len], IngestMode::Full, &mut scratch);
            }
            let mut f = frame("groupId=g&cp=snappy", &bytes);
            let _ = decode_request(&f, IngestMode::Full, &mut scratch);
            f[4] = 5;
            let _ = decode_request(&f, IngestMode::CountOnly, &mut scratch);
        }
    }
}
