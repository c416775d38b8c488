//! The batch frames: msgType 5 (`PROTOCOL.md` §2.1–§2.4) and msgType 7 (§4.2–§4.3).
//!
//! [`BatchBody`] accumulates `[len u32][payload]` entries as records arrive (one `memcpy` per
//! record, no allocation once its buffer has grown); both frame types carry the same entries.
//! [`FrameEncoder`] turns a sealed body into a frame of its [`FrameFormat`], appended to a
//! caller-owned output buffer: Snappy raw block when the body is over 256 bytes, and the frame
//! size limit enforced before anything is handed to a transport.
//!
//! * msgType 5: `totalLen | 0x05 | bodyLen u32 | body | attrLen u32 | attrs`, attributes in the
//!   Go SDK's order (`groupId`, `streamId`, `dt` in ms, `mid`, `sid`, `wid`, `cnt`, `cp=snappy`,
//!   add-columns); the reply is matched by `mid`.
//! * msgType 7: `totalLen | 0x07 (| 0x20 when Snappy) | groupIdNum=0 | streamIdNum=0 |
//!   extField=0x0004 | dt u32 (seconds) | cnt u16 | uniq u32 | bodyLen u32 | body | attrLen u16 |
//!   attrs | 0xEE01`, attributes `groupId=…&streamId=…[&proxySend=true]` and the add-columns;
//!   the reply echoes `uniq`. `attrLen` is read as a signed `short` by the server: attributes
//!   over 32767 bytes are refused here ([`Error::AttributesTooLong`]).

use super::{
    push_decimal, AddColumns, BIN_MAGIC, COMPRESS_THRESHOLD, EXT_FIELD_IDS_AS_STRINGS,
    MSG_FLAG_SNAPPY, MSG_TYPE_BIN_MULTI_BODY, MSG_TYPE_MULTI_BODY, TEXT_FRAME_OVERHEAD,
};
use crate::config::{Ack, MsgType};
use crate::error::Error;

/// Bytes of a msgType 7 frame that are neither body nor attributes (§4.2): `totalLen u32 | type
/// u8 | groupIdNum u16 | streamIdNum u16 | extField u16 | dt u32 | cnt u16 | uniq u32 | bodyLen
/// u32 | … | attrLen u16 | … | magic u16`.
pub const BIN_FRAME_OVERHEAD: usize = 29;

/// The longest attribute string of a msgType 7 frame: its length field is read as a signed
/// 16-bit integer.
pub const BIN_MAX_ATTR_LEN: usize = i16::MAX as usize;

/// The attribute that asks a node to answer from its sink, after the MQ stored the batch.
const SINK_ACK_ATTR: &str = "&proxySend=true";

/// Which frame an encoder writes and what it asks of the server: one value per producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameFormat {
    /// msgType 5 or 7.
    pub msg_type: MsgType,
    /// Acked by the node, or by its sink (msgType 7 only: `proxySend=true`).
    pub ack: Ack,
}

impl FrameFormat {
    /// The format of a producer with these options.
    pub fn new(msg_type: MsgType, ack: Ack) -> FrameFormat {
        FrameFormat { msg_type, ack }
    }

    /// True for msgType 7.
    pub fn is_binary(self) -> bool {
        self.msg_type == MsgType::BinMultiBody
    }

    /// Bytes of a frame that are neither body nor attributes.
    pub fn overhead(self) -> usize {
        if self.is_binary() {
            BIN_FRAME_OVERHEAD
        } else {
            TEXT_FRAME_OVERHEAD
        }
    }

    fn sink_ack(self) -> bool {
        self.is_binary() && self.ack == Ack::Sink
    }
}

/// The body of one batch under construction: `[len u32][payload]` per record, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct BatchBody {
    entries: Vec<u8>,
    count: u32,
    payload_bytes: usize,
}

impl BatchBody {
    /// An empty body.
    pub fn new() -> BatchBody {
        BatchBody::default()
    }

    /// An empty body whose buffer can hold `capacity` bytes of entries without growing.
    pub fn with_capacity(capacity: usize) -> BatchBody {
        BatchBody { entries: Vec::with_capacity(capacity), ..BatchBody::default() }
    }

    /// An empty body in `buffer` (emptied; its capacity kept).
    pub fn from_buffer(mut buffer: Vec<u8>) -> BatchBody {
        buffer.clear();
        BatchBody { entries: buffer, ..BatchBody::default() }
    }

    /// The body's buffer, to be reused for something else.
    pub fn into_buffer(self) -> Vec<u8> {
        self.entries
    }

    /// Appends one record. Exactly one trailing `\n` is dropped (§2.2), as the Go SDK does.
    ///
    /// The payload should have passed [`validate_payload`](super::validate_payload); a payload
    /// that is too long for a `u32` length is refused.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), Error> {
        let entry = payload.strip_suffix(b"\n").unwrap_or(payload);
        let len = u32::try_from(entry.len())
            .map_err(|_| Error::TooLong { frame_len: entry.len(), limit: u32::MAX as usize })?;
        self.entries.reserve(4 + entry.len());
        self.entries.extend_from_slice(&len.to_be_bytes());
        self.entries.extend_from_slice(entry);
        self.count += 1;
        self.payload_bytes += payload.len();
        Ok(())
    }

    /// The encoded entries, uncompressed.
    pub fn entries(&self) -> &[u8] {
        &self.entries
    }

    /// Number of records in the body.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Sum of the raw payload lengths pushed (the Go SDK's `dataSize`: before the newline strip,
    /// without length prefixes). This is what `batching_max_size` is compared against.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Uncompressed body length in bytes (entries with their length prefixes).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the body, keeping its buffer for reuse.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.count = 0;
        self.payload_bytes = 0;
    }

    /// Bytes the body can hold before it grows.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

/// The per-batch attribute values the engine decides (§2.4).
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader<'a> {
    /// `groupId`: the producer's group.
    pub group_id: &'a str,
    /// `streamId`: the batch's stream.
    pub stream_id: &'a str,
    /// `dt`: data time in milliseconds since the Unix epoch.
    pub dt_ms: u64,
    /// `mid` and `sid`: the batch ID the reply is matched by (opaque to the server).
    pub mid: &'a str,
    /// `wid`: the shard (worker) index.
    pub wid: u32,
    /// `uniq`: the ID a msgType 7 reply echoes (unused by msgType 5).
    pub uniq: u32,
}

/// What [`FrameEncoder::encode`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedFrame {
    /// Bytes of the whole frame on the wire, `4 + totalLen`.
    pub frame_len: usize,
    /// Uncompressed body length.
    pub body_len: usize,
    /// Body length as sent (after compression when compressed).
    pub wire_body_len: usize,
    /// Whether the body was Snappy-compressed (`cp=snappy`).
    pub compressed: bool,
    /// Records in the batch (`cnt`).
    pub count: u32,
}

/// The frame budget of a producer: how large a batch body may grow so that its frame, in the
/// worst case, stays under the frame limit. All frame-size arithmetic lives here: the
/// accumulator seals on [`FrameBudget::max_body_len`], and [`Error::RecordTooLong`] names it.
///
/// The worst case is every variable attribute at its longest (msgType 5: `dt`, the batch
/// number in `mid` and `sid`, `wid` and `cnt` at their most digits, `cp=snappy`; msgType 7 has
/// them in fixed-size fields) and, with compression on, a body Snappy cannot shrink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameBudget {
    max_frame_len: usize,
    /// The frame's fixed part and its attribute string without the stream ID, at its longest.
    overhead: usize,
    compression: bool,
}

impl FrameBudget {
    /// The budget of frames of `group_id` in `format` whose `mid`s start with `mid_prefix_len`
    /// bytes, with these add-columns, under `max_frame_len` (`4 + totalLen`).
    pub fn new(
        max_frame_len: usize,
        format: FrameFormat,
        group_id: &str,
        mid_prefix_len: usize,
        add_columns: &AddColumns,
        compression: bool,
    ) -> FrameBudget {
        const U64_DIGITS: usize = 20;
        const U32_DIGITS: usize = 10;
        let attrs = if format.is_binary() {
            "groupId=&streamId=".len() + if format.sink_ack() { SINK_ACK_ATTR.len() } else { 0 }
        } else {
            "groupId=&streamId=&dt=&mid=&sid=&wid=&cnt=&cp=snappy".len()
                + U64_DIGITS
                + 2 * (mid_prefix_len + U64_DIGITS)
                + 2 * U32_DIGITS
        };
        let overhead = format.overhead() + attrs + group_id.len() + add_columns.as_str().len();
        FrameBudget { max_frame_len, overhead, compression }
    }

    /// The frame limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Whether bodies over [`COMPRESS_THRESHOLD`] bytes are compressed.
    pub fn compression(&self) -> bool {
        self.compression
    }

    /// The largest frame a body of `body_len` bytes of a stream ID of `stream_len` bytes can
    /// produce.
    pub fn worst_case_frame_len(&self, stream_len: usize, body_len: usize) -> usize {
        self.overhead + stream_len + self.worst_body(body_len)
    }

    fn worst_body(&self, body: usize) -> usize {
        if self.compression && body > COMPRESS_THRESHOLD {
            snap::raw::max_compress_len(body).max(body)
        } else {
            body
        }
    }

    /// The largest uncompressed body whose frame, in the worst case, fits the frame limit.
    pub fn max_body_len(&self, stream_len: usize) -> usize {
        let fixed = self.overhead + stream_len;
        let Some(room) = self.max_frame_len.checked_sub(fixed) else { return 0 };
        if self.worst_body(room) <= room {
            return room;
        }
        // Snappy's bound is 32 + n + n/6: start just under the inverse and walk down.
        let mut body = (room.saturating_sub(32)) * 6 / 7 + 1;
        while body > 0 && self.worst_body(body) > room {
            body -= 1;
        }
        body.max(room.min(COMPRESS_THRESHOLD))
    }
}

/// Encodes sealed batch bodies into frames of its [`FrameFormat`] (msgType 5 unless set). Holds
/// the reusable Snappy encoder state.
#[derive(Debug)]
pub struct FrameEncoder {
    snappy: snap::raw::Encoder,
    compression: bool,
    format: FrameFormat,
    /// Snappy's output before it is copied into the frame.
    scratch: Vec<u8>,
}

impl Default for FrameEncoder {
    fn default() -> FrameEncoder {
        FrameEncoder::new()
    }
}

impl FrameEncoder {
    /// An encoder that compresses bodies over [`COMPRESS_THRESHOLD`] bytes, as the Go SDK does.
    pub fn new() -> FrameEncoder {
        FrameEncoder {
            snappy: snap::raw::Encoder::new(),
            compression: true,
            format: FrameFormat::default(),
            scratch: Vec::new(),
        }
    }

    /// Sets the frame type and ack level written from now on (msgType 5, node ack by default).
    pub fn set_format(&mut self, format: FrameFormat) {
        self.format = format;
    }

    /// The format written.
    pub fn format(&self) -> FrameFormat {
        self.format
    }

    /// Turns compression on (the default, Go-compatible) or off.
    pub fn set_compression(&mut self, enabled: bool) {
        self.compression = enabled;
    }

    /// Whether a body of `body_len` uncompressed bytes will be compressed.
    pub fn compresses(&self, body_len: usize) -> bool {
        self.compression && body_len > COMPRESS_THRESHOLD
    }

    /// Appends the frame for `body` to `out`, growing `out` by exactly the frame's length when
    /// it lacks the room.
    ///
    /// On error nothing is left in `out`: a frame over `max_frame_len` (`4 + totalLen`) is
    /// [`Error::TooLong`]; an empty body is [`Error::InvalidPayload`].
    pub fn encode(
        &mut self,
        header: &BatchHeader<'_>,
        body: &BatchBody,
        add_columns: &AddColumns,
        max_frame_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<EncodedFrame, Error> {
        self.encode_with(header, body, add_columns, max_frame_len, out, |out, len| {
            out.reserve_exact(len);
        })
    }

    /// [`FrameEncoder::encode`], with `make_room(out, frame_len)` called once, after compression
    /// and before anything is written, to give `out` room for the whole frame: a caller can put
    /// a pooled buffer of the right size in place of an empty `out` there. `out` must have that
    /// room afterwards (it would otherwise grow as it is written).
    pub fn encode_with(
        &mut self,
        header: &BatchHeader<'_>,
        body: &BatchBody,
        add_columns: &AddColumns,
        max_frame_len: usize,
        out: &mut Vec<u8>,
        make_room: impl FnOnce(&mut Vec<u8>, usize),
    ) -> Result<EncodedFrame, Error> {
        if body.is_empty() {
            return Err(Error::InvalidPayload { reason: "a batch needs at least one record" });
        }
        let start = out.len();
        let result = self.encode_unchecked(header, body, add_columns, out, make_room);
        match result {
            Ok(frame) if frame.frame_len <= max_frame_len => Ok(frame),
            Ok(frame) => {
                out.truncate(start);
                Err(Error::TooLong { frame_len: frame.frame_len, limit: max_frame_len })
            }
            Err(err) => {
                out.truncate(start);
                Err(err)
            }
        }
    }

    fn encode_unchecked(
        &mut self,
        header: &BatchHeader<'_>,
        body: &BatchBody,
        add_columns: &AddColumns,
        out: &mut Vec<u8>,
        make_room: impl FnOnce(&mut Vec<u8>, usize),
    ) -> Result<EncodedFrame, Error> {
        let entries = body.entries();
        let compressed = self.compresses(entries.len());
        // Compressed first (into a scratch buffer that stays initialised between calls: zero-filling
        // Snappy's worst case in `out` for every batch cost more, a `memset` of ~1.2x the body and
        // ~5 % of a shard's CPU at 100 B records, than copying the compressed bytes), so the
        // frame's exact size is known before anything is written: an empty `out` gets exactly
        // that, and a frame kept in flight holds no slack.
        let wire_body: &[u8] = if compressed {
            let bound = snap::raw::max_compress_len(entries.len());
            if bound == 0 {
                return Err(Error::TooLong { frame_len: entries.len(), limit: u32::MAX as usize });
            }
            if self.scratch.len() < bound {
                self.scratch.resize(bound, 0);
            }
            let written =
                self.snappy.compress(entries, &mut self.scratch[..bound]).map_err(|_| {
                    Error::TooLong { frame_len: entries.len(), limit: u32::MAX as usize }
                })?;
            &self.scratch[..written]
        } else {
            entries
        };
        if self.format.is_binary() {
            return encode_binary(
                header,
                body,
                wire_body,
                compressed,
                self.format,
                add_columns,
                out,
                make_room,
            );
        }
        let attrs = attr_len(header, body.count(), compressed, add_columns);
        make_room(out, TEXT_FRAME_OVERHEAD + wire_body.len() + attrs);
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, MSG_TYPE_MULTI_BODY, 0, 0, 0, 0]);
        let body_start = out.len();
        out.extend_from_slice(wire_body);
        let wire_body_len = out.len() - body_start;
        out.extend_from_slice(&[0, 0, 0, 0]);
        let attr_start = out.len();
        write_attrs(out, header, body.count(), compressed, add_columns);
        let attr_len = out.len() - attr_start;
        let frame_len = out.len() - start;

        let too_long = || Error::TooLong { frame_len, limit: u32::MAX as usize };
        let total_len = u32::try_from(frame_len - 4).map_err(|_| too_long())?;
        let wire_body_u32 = u32::try_from(wire_body_len).map_err(|_| too_long())?;
        let attr_len_u32 = u32::try_from(attr_len).map_err(|_| too_long())?;
        out[start..start + 4].copy_from_slice(&total_len.to_be_bytes());
        out[start + 5..start + 9].copy_from_slice(&wire_body_u32.to_be_bytes());
        out[attr_start - 4..attr_start].copy_from_slice(&attr_len_u32.to_be_bytes());
        Ok(EncodedFrame {
            frame_len,
            body_len: entries.len(),
            wire_body_len,
            compressed,
            count: body.count(),
        })
    }
}

/// Appends the msgType 7 frame of a body already compressed (or not) into `wire_body`.
#[allow(clippy::too_many_arguments)]
fn encode_binary(
    header: &BatchHeader<'_>,
    body: &BatchBody,
    wire_body: &[u8],
    compressed: bool,
    format: FrameFormat,
    add_columns: &AddColumns,
    out: &mut Vec<u8>,
    make_room: impl FnOnce(&mut Vec<u8>, usize),
) -> Result<EncodedFrame, Error> {
    let sink_ack = format.sink_ack();
    let attr_len = "groupId=&streamId=".len()
        + header.group_id.len()
        + header.stream_id.len()
        + if sink_ack { SINK_ACK_ATTR.len() } else { 0 }
        + add_columns.as_str().len();
    if attr_len > BIN_MAX_ATTR_LEN {
        return Err(Error::AttributesTooLong { attr_len, limit: BIN_MAX_ATTR_LEN });
    }
    let count = u16::try_from(body.count()).map_err(|_| Error::InvalidPayload {
        reason: "a msgType 7 batch holds at most 65535 records (its cnt field has 2 bytes)",
    })?;
    let frame_len = BIN_FRAME_OVERHEAD + wire_body.len() + attr_len;
    let too_long = || Error::TooLong { frame_len, limit: u32::MAX as usize };
    let total_len = u32::try_from(frame_len - 4).map_err(|_| too_long())?;
    let wire_body_u32 = u32::try_from(wire_body.len()).map_err(|_| too_long())?;
    // The seconds field is 32 bits wide: good until 2106.
    let dt_secs = u32::try_from(header.dt_ms / 1000).unwrap_or(u32::MAX);
    let msg_type = MSG_TYPE_BIN_MULTI_BODY | if compressed { MSG_FLAG_SNAPPY } else { 0 };
    make_room(out, frame_len);
    let start = out.len();
    out.extend_from_slice(&total_len.to_be_bytes());
    out.push(msg_type);
    out.extend_from_slice(&[0, 0, 0, 0]); // groupIdNum, streamIdNum: the IDs go as strings
    out.extend_from_slice(&EXT_FIELD_IDS_AS_STRINGS.to_be_bytes());
    out.extend_from_slice(&dt_secs.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&header.uniq.to_be_bytes());
    out.extend_from_slice(&wire_body_u32.to_be_bytes());
    out.extend_from_slice(wire_body);
    // attr_len <= BIN_MAX_ATTR_LEN, checked above.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(attr_len as u16).to_be_bytes());
    out.extend_from_slice(b"groupId=");
    out.extend_from_slice(header.group_id.as_bytes());
    out.extend_from_slice(b"&streamId=");
    out.extend_from_slice(header.stream_id.as_bytes());
    if sink_ack {
        out.extend_from_slice(SINK_ACK_ATTR.as_bytes());
    }
    out.extend_from_slice(add_columns.as_str().as_bytes());
    out.extend_from_slice(&BIN_MAGIC.to_be_bytes());
    debug_assert_eq!(out.len() - start, frame_len);
    Ok(EncodedFrame {
        frame_len,
        body_len: body.len(),
        wire_body_len: wire_body.len(),
        compressed,
        count: body.count(),
    })
}

/// Writes `groupId=…&streamId=…&dt=…&mid=…&sid=…&wid=…&cnt=…[&cp=snappy]<add-columns>`.
fn write_attrs(
    out: &mut Vec<u8>,
    header: &BatchHeader<'_>,
    count: u32,
    compressed: bool,
    add_columns: &AddColumns,
) {
    out.extend_from_slice(b"groupId=");
    out.extend_from_slice(header.group_id.as_bytes());
    out.extend_from_slice(b"&streamId=");
    out.extend_from_slice(header.stream_id.as_bytes());
    out.extend_from_slice(b"&dt=");
    push_decimal(out, header.dt_ms);
    out.extend_from_slice(b"&mid=");
    out.extend_from_slice(header.mid.as_bytes());
    out.extend_from_slice(b"&sid=");
    out.extend_from_slice(header.mid.as_bytes());
    out.extend_from_slice(b"&wid=");
    push_decimal(out, u64::from(header.wid));
    out.extend_from_slice(b"&cnt=");
    push_decimal(out, u64::from(count));
    if compressed {
        out.extend_from_slice(b"&cp=snappy");
    }
    out.extend_from_slice(add_columns.as_str().as_bytes());
}

fn decimal_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 10 {
        value /= 10;
        len += 1;
    }
    len
}

/// Length of the attribute string [`write_attrs`] produces.
fn attr_len(header: &BatchHeader<'_>, count: u32, compressed: bool, cols: &AddColumns) -> usize {
    "groupId=&streamId=&dt=&mid=&sid=&wid=&cnt=".len()
        + header.group_id.len()
        + header.stream_id.len()
        + decimal_len(header.dt_ms)
        + 2 * header.mid.len()
        + decimal_len(u64::from(header.wid))
        + decimal_len(u64::from(count))
        + if compressed { "&cp=snappy".len() } else { 0 }
        + cols.as_str().len()
}

#[cfg(test)]
mod tests {
    use super::super::tests::hex;
    use super::*;
    use crate::protocol::{read_u16, read_u32};

    const HEADER: BatchHeader<'static> = BatchHeader {
        group_id: "test_group",
        stream_id: "test_stream",
        dt_ms: 1_700_000_000_000,
        mid: "0000-fixed",
        wid: 0,
        uniq: 1,
    };

    fn encode(payloads: &[&[u8]], cols: &AddColumns) -> (Vec<u8>, EncodedFrame) {
        let mut body = BatchBody::new();
        for payload in payloads {
            body.push(payload).unwrap();
        }
        let mut out = Vec::new();
        let frame = FrameEncoder::new().encode(&HEADER, &body, cols, usize::MAX, &mut out).unwrap();
        assert_eq!(frame.frame_len, out.len());
        assert_eq!(out.capacity(), out.len(), "an empty buffer grows to the exact frame, once");
        (out, frame)
    }

    fn unhex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Splits a msgType 5 frame into (body as sent, attribute string).
    fn parts(frame: &[u8]) -> (&[u8], &str) {
        assert_eq!(read_u32(frame, 0) as usize, frame.len() - 4, "totalLen");
        assert_eq!(frame[4], 5);
        let body_len = read_u32(frame, 5) as usize;
        let attr_len = read_u32(frame, 9 + body_len) as usize;
        assert_eq!(13 + body_len + attr_len, frame.len());
        (&frame[9..9 + body_len], std::str::from_utf8(&frame[13 + body_len..]).unwrap())
    }

    #[test]
    fn golden_v1_single_record() {
        let (out, frame) = encode(&[b"a|b|c"], &AddColumns::default());
        assert_eq!(
            hex(&out),
            "00000074050000000900000005617c627c630000006267726f757049643d7465\
             73745f67726f75702673747265616d49643d746573745f73747265616d266474\
             3d31373030303030303030303030266d69643d303030302d6669786564267369\
             643d303030302d6669786564267769643d3026636e743d31"
        );
        assert_eq!(frame.frame_len, 120);
        assert!(!frame.compressed);
    }

    #[test]
    fn golden_v2_trailing_newline_stripped() {
        let (out, frame) = encode(&[b"hello\n", b"world"], &AddColumns::default());
        assert_eq!(
            hex(&out),
            "0000007d05000000120000000568656c6c6f00000005776f726c640000006267\
             726f757049643d746573745f67726f75702673747265616d49643d746573745f\
             73747265616d2664743d31373030303030303030303030266d69643d30303030\
             2d6669786564267369643d303030302d6669786564267769643d3026636e743d\
             32"
        );
        assert_eq!(frame.count, 2);
    }

    #[test]
    fn golden_v3_add_column() {
        let cols = AddColumns::new([("__addcol1__worldid", "xxx")], "127.0.0.1").unwrap();
        let (out, _) = encode(&[b"a|b|c"], &cols);
        assert_eq!(
            hex(&out),
            "0000008b050000000900000005617c627c630000007967726f757049643d7465\
             73745f67726f75702673747265616d49643d746573745f73747265616d266474\
             3d31373030303030303030303030266d69643d303030302d6669786564267369\
             643d303030302d6669786564267769643d3026636e743d31265f5f616464636f\
             6c315f5f776f726c6469643d787878"
        );
    }

    #[test]
    fn golden_v5_compressible_body() {
        let payload = b"0123456789".repeat(10);
        let (out, frame) = encode(&[&payload, &payload, &payload], &AddColumns::default());
        let (body, attrs) = parts(&out);
        assert!(frame.compressed);
        assert_eq!(frame.body_len, 312);
        assert!(attrs.ends_with("&cnt=3&cp=snappy"), "{attrs}");
        let expected_body = unhex(
            "00000064 30313233343536373839303132333435363738393031323334353637383930313233343536\
             3738393031323334353637383930313233343536373839303132333435363738393031323334353637\
             38393031323334353637383930313233343536373839",
        )
        .repeat(3);
        assert_eq!(snap::raw::Decoder::new().decompress_vec(body).unwrap(), expected_body);
        // With the `snap` encoder the bytes are exactly the documented ones.
        assert_eq!(
            hex(&out),
            "000000980500000023b802340000006430313233343536373839fe0a00660a00\
             fe6800fe6800fe68003e68000000006c67726f757049643d746573745f67726f\
             75702673747265616d49643d746573745f73747265616d2664743d3137303030\
             3030303030303030266d69643d303030302d6669786564267369643d30303030\
             2d6669786564267769643d3026636e743d332663703d736e61707079"
        );
    }

    fn v4_payload() -> Vec<u8> {
        const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut x: u64 = 20_231_114;
        (0..300)
            .map(|_| {
                x = (1_103_515_245 * x + 12_345) % (1 << 31);
                ALPHA[((x >> 16) % 62) as usize]
            })
            .collect()
    }

    #[test]
    fn golden_v4_incompressible_body_is_still_sent_compressed() {
        let payload = v4_payload();
        assert!(payload.starts_with(b"iRJssh3JaEh9ub6F"));
        let (out, frame) = encode(&[&payload], &AddColumns::default());
        assert!(frame.compressed);
        assert_eq!((frame.body_len, frame.wire_body_len, frame.frame_len), (304, 309, 430));
        let golden = "000001aa0500000135b002f42f010000012c69524a737368334a614568397562\
             36467a78415341314752415676703456516e726e3947326f5070536378433278\
             6d7149447169476e7338305a397264505a654c4a6b46764168466e71546e5474\
             365551684364734d314669323243526c55486f6c733469665a6e75315378314a\
             634a6268444e415254694b42493074313373334c6e46324c734236635a784744\
             5931414c4f7364774458556c374549494f4153454863497747464d37334e3971\
             757257466b4b42757a6f3174686348744c507953594b6d74594a6c4a33645735\
             73636b546d6d533845646b6543684e6f5574685871484247706a7a3146755930\
             77355474515a633041416930474a50676656736f7268564a76774c766b41496f\
             4767525064493563683679745734627074376d416d3762784d78693843680000\
             006c67726f757049643d746573745f67726f75702673747265616d49643d7465\
             73745f73747265616d2664743d31373030303030303030303030266d69643d30\
             3030302d6669786564267369643d303030302d6669786564267769643d302663\
             6e743d312663703d736e61707079";
        assert_eq!(hex(&out), golden);
    }

    #[test]
    fn compression_threshold_is_strictly_greater_than_256() {
        // One entry of 252 payload bytes = 256 body bytes: not compressed.
        let (_, at) = encode(&[&[b'x'; 252]], &AddColumns::default());
        assert!(!at.compressed);
        assert_eq!(at.body_len, 256);
        let (_, over) = encode(&[&[b'x'; 253]], &AddColumns::default());
        assert!(over.compressed);
    }

    #[test]
    fn compression_can_be_turned_off() {
        let mut body = BatchBody::new();
        body.push(&[b'x'; 1000]).unwrap();
        let mut encoder = FrameEncoder::new();
        encoder.set_compression(false);
        let mut out = Vec::new();
        let frame =
            encoder.encode(&HEADER, &body, &AddColumns::default(), usize::MAX, &mut out).unwrap();
        assert!(!frame.compressed);
        assert!(parts(&out).1.ends_with("&cnt=1"));
    }

    #[test]
    fn frame_limit_is_enforced_and_leaves_out_untouched() {
        let mut body = BatchBody::new();
        body.push(b"a|b|c").unwrap();
        let mut out = vec![9, 9];
        let mut encoder = FrameEncoder::new();
        let err =
            encoder.encode(&HEADER, &body, &AddColumns::default(), 119, &mut out).unwrap_err();
        assert_eq!(err, Error::TooLong { frame_len: 120, limit: 119 });
        assert_eq!(err.code(), 10009);
        assert_eq!(out, vec![9, 9]);
        let frame = encoder.encode(&HEADER, &body, &AddColumns::default(), 120, &mut out).unwrap();
        assert_eq!(out.len(), 2 + frame.frame_len);
    }

    #[test]
    fn empty_batch_is_refused() {
        let err = FrameEncoder::new()
            .encode(&HEADER, &BatchBody::new(), &AddColumns::default(), usize::MAX, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.code(), 10010);
    }

    #[test]
    fn the_frame_budget_bounds_the_real_frame() {
        let cols = AddColumns::new([("k", "v")], "ip").unwrap();
        // `HEADER`'s mid, "0000-fixed", is a 5-byte prefix and a batch number.
        let budget =
            FrameBudget::new(usize::MAX, FrameFormat::default(), HEADER.group_id, 5, &cols, true);
        for size in [1usize, 100, 252, 253, 1000, 40_000] {
            let mut body = BatchBody::new();
            body.push(&v4_payload().repeat(size / 300 + 1)[..size]).unwrap();
            let mut out = Vec::new();
            let frame =
                FrameEncoder::new().encode(&HEADER, &body, &cols, usize::MAX, &mut out).unwrap();
            let bound = budget.worst_case_frame_len(HEADER.stream_id.len(), body.len());
            assert!(frame.frame_len <= bound, "{size}: {} > {bound}", frame.frame_len);
        }
    }

    fn binary_encoder(ack: Ack) -> FrameEncoder {
        let mut encoder = FrameEncoder::new();
        encoder.set_format(FrameFormat::new(MsgType::BinMultiBody, ack));
        encoder
    }

    fn encode_binary(payloads: &[&[u8]], ack: Ack, cols: &AddColumns) -> (Vec<u8>, EncodedFrame) {
        let mut body = BatchBody::new();
        for payload in payloads {
            body.push(payload).unwrap();
        }
        let mut out = Vec::new();
        let frame = binary_encoder(ack).encode(&HEADER, &body, cols, usize::MAX, &mut out).unwrap();
        assert_eq!(frame.frame_len, out.len());
        assert_eq!(out.capacity(), out.len(), "an empty buffer grows to the exact frame, once");
        (out, frame)
    }

    /// Splits a msgType 7 frame into (type byte, cnt, uniq, body as sent, attribute string).
    fn binary_parts(frame: &[u8]) -> (u8, u16, u32, &[u8], &str) {
        assert_eq!(read_u32(frame, 0) as usize, frame.len() - 4, "totalLen");
        assert_eq!(&frame[5..11], &[0, 0, 0, 0, 0, 4], "string IDs, extField 0x0004");
        let body_len = read_u32(frame, 21) as usize;
        let attr_len = usize::from(read_u16(frame, 25 + body_len));
        assert_eq!(29 + body_len + attr_len, frame.len());
        assert_eq!(&frame[frame.len() - 2..], &[0xee, 0x01], "magic");
        (
            frame[4],
            read_u16(frame, 15),
            read_u32(frame, 17),
            &frame[25..25 + body_len],
            std::str::from_utf8(&frame[27 + body_len..27 + body_len + attr_len]).unwrap(),
        )
    }

    #[test]
    fn golden_type_7_request_7_8() {
        let (out, frame) = encode_binary(&[b"a|b|c"], Ack::Proxy, &AddColumns::default());
        assert_eq!(
            hex(&out),
            "00000049070000000000046553f1000001000000010000000900000005617c62\
             7c63002767726f757049643d746573745f67726f75702673747265616d49643d\
             746573745f73747265616dee01"
        );
        assert_eq!((frame.frame_len, frame.count, frame.compressed), (77, 1, false));
    }

    #[test]
    fn type_7_compresses_the_entries_and_flags_the_type_byte() {
        let payload = b"0123456789".repeat(20);
        let cols = AddColumns::new([("__addcol1__worldid", "xxx")], "127.0.0.1").unwrap();
        let (out, frame) = encode_binary(&[&payload, &payload, b"end\n"], Ack::Proxy, &cols);
        let (msg_type, cnt, uniq, body, attrs) = binary_parts(&out);
        assert!(frame.compressed);
        assert_eq!((msg_type, cnt, uniq), (0x27, 3, 1));
        let mut expected = BatchBody::new();
        for entry in [&payload[..], &payload[..], b"end\n"] {
            expected.push(entry).unwrap();
        }
        assert_eq!(snap::raw::Decoder::new().decompress_vec(body).unwrap(), expected.entries());
        assert_eq!(attrs, "groupId=test_group&streamId=test_stream&__addcol1__worldid=xxx");
        assert_eq!(read_u32(&out, 11), 1_700_000_000, "dt in seconds");
    }

    #[test]
    fn type_7_sink_ack_asks_for_the_sinks_reply() {
        let (out, _) = encode_binary(&[b"x"], Ack::Sink, &AddColumns::default());
        assert_eq!(binary_parts(&out).4, "groupId=test_group&streamId=test_stream&proxySend=true");
        // msgType 5 never carries it: a node would not answer at all.
        let mut encoder = FrameEncoder::new();
        encoder.set_format(FrameFormat::new(MsgType::MultiBody, Ack::Sink));
        let mut body = BatchBody::new();
        body.push(b"x").unwrap();
        let mut out = Vec::new();
        encoder.encode(&HEADER, &body, &AddColumns::default(), usize::MAX, &mut out).unwrap();
        assert!(!parts(&out).1.contains("proxySend"));
    }

    #[test]
    fn type_7_attributes_over_32767_bytes_are_refused() {
        let mut body = BatchBody::new();
        body.push(b"x").unwrap();
        let cols = AddColumns::default();
        let fits = "s".repeat(BIN_MAX_ATTR_LEN - "groupId=test_group&streamId=".len());
        let over = format!("{fits}s");
        let mut out = vec![7];
        for (stream, ok) in [(fits.as_str(), true), (over.as_str(), false)] {
            let header = BatchHeader { stream_id: stream, ..HEADER };
            let result =
                binary_encoder(Ack::Proxy).encode(&header, &body, &cols, usize::MAX, &mut out);
            if ok {
                assert_eq!(binary_parts(&out[1..]).4.len(), BIN_MAX_ATTR_LEN);
                out.truncate(1);
            } else {
                let err = result.unwrap_err();
                assert_eq!(err, Error::AttributesTooLong { attr_len: 32_768, limit: 32_767 });
                assert_eq!(err.code(), 10009);
                assert_eq!(out, vec![7], "nothing written");
            }
        }
    }

    #[test]
    fn type_7_cnt_has_two_bytes() {
        let mut body = BatchBody::new();
        for _ in 0..65_536 {
            body.push(b"x").unwrap();
        }
        let mut out = Vec::new();
        let err = binary_encoder(Ack::Proxy)
            .encode(&HEADER, &body, &AddColumns::default(), usize::MAX, &mut out)
            .unwrap_err();
        assert_eq!(err.code(), 10010);
        assert!(out.is_empty());
    }

    #[test]
    fn the_type_7_frame_budget_bounds_the_real_frame() {
        let cols = AddColumns::new([("k", "v")], "ip").unwrap();
        for ack in [Ack::Proxy, Ack::Sink] {
            let format = FrameFormat::new(MsgType::BinMultiBody, ack);
            let budget = FrameBudget::new(usize::MAX, format, HEADER.group_id, 5, &cols, true);
            for size in [1usize, 100, 253, 40_000] {
                let mut body = BatchBody::new();
                body.push(&v4_payload().repeat(size / 300 + 1)[..size]).unwrap();
                let mut out = Vec::new();
                let frame = binary_encoder(ack)
                    .encode(&HEADER, &body, &cols, usize::MAX, &mut out)
                    .unwrap();
                let bound = budget.worst_case_frame_len(HEADER.stream_id.len(), body.len());
                assert!(frame.frame_len <= bound, "{size}: {} > {bound}", frame.frame_len);
                if !frame.compressed {
                    assert_eq!(frame.frame_len, bound, "exact for an uncompressed body");
                }
            }
        }
    }

    #[test]
    fn body_counts_raw_payload_bytes() {
        let mut body = BatchBody::with_capacity(64);
        body.push(b"ab\n").unwrap();
        body.push(b"\n\n").unwrap();
        assert_eq!(body.count(), 2);
        assert_eq!(body.payload_bytes(), 5);
        assert_eq!(body.entries(), b"\0\0\0\x02ab\0\0\0\x01\n");
        body.clear();
        assert!(body.is_empty());
        assert_eq!(body.len(), 0);
    }
}

#[cfg(test)]
mod budget_tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn max_body_len_fills_the_frame_without_wasting_room() {
        for max_frame_len in [1024usize, 4096, 65_536, 524_288] {
            let budget = FrameBudget::new(
                max_frame_len,
                FrameFormat::default(),
                "g",
                20,
                &AddColumns::default(),
                true,
            );
            let body = budget.max_body_len(10);
            assert!(budget.worst_case_frame_len(10, body) <= max_frame_len, "{max_frame_len}");
            let room = max_frame_len - budget.worst_case_frame_len(10, 0);
            assert!(body + 2 >= (room - 32) * 6 / 7, "{max_frame_len}: {body} wastes room");
        }
    }

    proptest! {
        /// A body of `max_body_len` incompressible bytes, with every variable attribute at its
        /// longest, still fits the frame limit, for any limit, group, stream and add-columns.
        #[test]
        fn a_body_of_max_body_len_fits_the_limit(
            max_frame_len in 256usize..200_000,
            group in "[a-z]{1,40}",
            stream in "[a-z]{1,40}",
            column in "[a-z]{1,30}",
            compression: bool,
            binary: bool,
            sink: bool,
        ) {
            let cols = AddColumns::new([("col", column.as_str())], "ip").unwrap();
            let prefix = "9f3c2a1b-";
            let format = if binary {
                FrameFormat::new(MsgType::BinMultiBody, if sink { Ack::Sink } else { Ack::Proxy })
            } else {
                FrameFormat::default()
            };
            let budget =
                FrameBudget::new(max_frame_len, format, &group, prefix.len(), &cols, compression);
            let body_len = budget.max_body_len(stream.len());
            prop_assume!(body_len > 4);
            // Random bytes: Snappy's worst case.
            let mut payload = vec![0u8; body_len - 4];
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            )
            .fill_bytes(&mut payload);
            let mut body = BatchBody::new();
            body.push(&payload).unwrap();
            let mid = format!("{prefix}{}", u64::MAX);
            let header = BatchHeader {
                group_id: &group,
                stream_id: &stream,
                dt_ms: u64::MAX,
                mid: &mid,
                wid: u32::MAX,
                uniq: u32::MAX,
            };
            let mut encoder = FrameEncoder::new();
            encoder.set_compression(compression);
            encoder.set_format(format);
            let mut out = Vec::new();
            let frame = encoder.encode(&header, &body, &cols, max_frame_len, &mut out);
            prop_assert!(frame.is_ok(), "{frame:?}");
        }
    }
}
