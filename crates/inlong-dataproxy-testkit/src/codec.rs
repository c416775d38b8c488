//! The server side of the wire: what a real DataProxy does with each inbound frame.
//!
//! Pure code, no sockets and no clock, so the fuzz targets and property tests drive it directly.
//! Every message type an InLong SDK sends is served:
//!
//! - type 1 (the Go SDK's heartbeat) and type 8 (the Java and C++ binary heartbeat, §4.5);
//! - the txt types 2–6 (`CodecTextMsg`, §3.2 steps 1–8): types 2, 3 and 4 carry records joined by
//!   `\n` (one trailing `\n`/`\r\n` stripped unless `mt=pb`), type 4's reply echoes the body, type 5
//!   carries `[len u32][bytes]` entries; type 6 (`MSG_MULTI_BODY_ATTR`, sent by no current SDK)
//!   is decoded like type 5 but without type 5's entry checks, which the real codec applies to
//!   type 5 only;
//! - type 7, the binary multi-body frame of the Java and C++ SDKs (`CodecBinMsg`, §4.2–§4.4),
//!   whose body is stored as sent; a Snappy body (flag 0x20) is decompressed only to count its
//!   records.
//!
//! [`decode_request`] hands back a decoded [`Batch`] or a [`Rejection`] carrying the real error
//! code, message and echo rule; the checks that depend on the node's state (reject mode, MQ
//! readiness, topics, the channel) are applied by the node ([`super::dataproxy`]), which is told
//! by the batch what the codec deferred to it ([`Batch::handler_error`],
//! [`Batch::truncated_entry`]). [`encode_reply`], [`encode_bin_reply`] and
//! [`encode_bin_heartbeat_reply`] write the reply frames. Any other message type, or a frame
//! whose fields point outside it, closes the connection, as the real server does.
//!
//! Where the reference captures of the real server disagree with `PROTOCOL.md`, this follows the
//! captures: an empty attribute string is an empty map (not a 109), 150/151 are answered even
//! with `isAck=false`, and 1–3 bytes left after the last type 5 entry close the connection.

use std::borrow::Cow;

use inlong_dataproxy::protocol::{
    self, FrameError, BIN_MAGIC, EXT_FIELD_IDS_AS_STRINGS, MSG_FLAG_SNAPPY, MSG_TYPE_BIN_HEARTBEAT,
    MSG_TYPE_BIN_MULTI_BODY, MSG_TYPE_HEARTBEAT, MSG_TYPE_MASK, MSG_TYPE_MULTI_BODY,
};

/// DataProxy error codes the local server writes (`PROTOCOL.md` §3.9).
pub mod err_codes {
    /// Node not linked to an MQ yet (`SINK_SERVICE_UNREADY`).
    pub const SINK_SERVICE_UNREADY: i32 = 1;
    /// Node is going offline (`SERVICE_CLOSED`, reject mode).
    pub const SERVICE_CLOSED: i32 = 2;
    /// Type 7: the magic number is not `0xEE01` (`FIELD_MAGIC_NOT_EQUAL`).
    pub const FIELD_MAGIC_NOT_EQUAL: i32 = 94;
    /// Type 7: the frame is shorter than its length fields say (`FIELD_LENGTH_VALUE_NOT_EQUAL`).
    pub const FIELD_LENGTH_VALUE_NOT_EQUAL: i32 = 95;
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
    /// Type 7 `extField` marks an index or file-check message (`UNSUPPORTED_EXTEND_FIELD_VALUE`).
    pub const UNSUPPORTED_EXTEND_FIELD_VALUE: i32 = 112;
    /// The node's channel refused the event (`PUT_EVENT_TO_CHANNEL_FAILURE`).
    pub const PUT_EVENT_TO_CHANNEL_FAILURE: i32 = 114;
    /// No topic for the group/stream (`TOPIC_IS_BLANK`).
    pub const TOPIC_IS_BLANK: i32 = 115;
    /// The MQ sink has no producer for the topic (`NO_AVAILABLE_PRODUCER`).
    pub const NO_AVAILABLE_PRODUCER: i32 = 116;
    /// The MQ sink's producer is gone (`PRODUCER_IS_NULL`).
    pub const PRODUCER_IS_NULL: i32 = 117;
    /// The MQ sink could not send the event (`SEND_REQUEST_TO_MQ_FAILURE`).
    pub const SEND_REQUEST_TO_MQ_FAILURE: i32 = 118;
    /// The MQ answered the sink with an error (`MQ_RETURN_ERROR`).
    pub const MQ_RETURN_ERROR: i32 = 119;
    /// Type 7 numeric IDs without a mapping to names (`GROUPID_OR_STREAMID_NOT_CONFIGURE`).
    pub const GROUPID_OR_STREAMID_NOT_CONFIGURE: i32 = 121;
    /// Type 5 body entries malformed (`MSG_BODY_ITEMS_INVALID`).
    pub const MSG_BODY_ITEMS_INVALID: i32 = 123;
    /// `syncSend=true` with `isAck=false`.
    pub const ATTR_ORDER_CONTROL_CONFLICT_ERROR: i32 = 150;
    /// `proxySend=true` with `isAck=false`.
    pub const ATTR_PROXY_CONTROL_CONFLICT_ERROR: i32 = 151;

    /// True for the codes only the MQ sink answers (116–119).
    pub fn is_sink_error(code: i32) -> bool {
        (NO_AVAILABLE_PRODUCER..=MQ_RETURN_ERROR).contains(&code)
    }
}
use err_codes::*;

/// Smallest `totalLen` of a txt frame (types 2–6): type, bodyLen and attrLen.
const TXT_MIN_TOTAL_LEN: usize = 9;
/// Smallest `totalLen` of a type 7 frame (`BIN_MSG_FIXED_CONTENT_SIZE`).
const BIN_MIN_TOTAL_LEN: usize = 25;
/// Smallest `totalLen` of a type 8 heartbeat (`BIN_HB_FIXED_CONTENT_SIZE`).
const BIN_HB_MIN_TOTAL_LEN: usize = 14;
/// Type 7 frame size beyond its body and attributes: length, header, attrLen and magic.
const BIN_FIXED_FRAME_LEN: usize = 29;
/// Type 7 `extField` bit (C++): every body entry is followed by its own `[len u32][attrs]`.
const EXT_FIELD_ENTRY_ATTRS: u16 = 0x0001;
/// Type 7 `extField` bits of index and file-check messages, refused with 112.
const EXT_FIELD_INDEX_MSG: u16 = 0x0008 | 0x0010;
/// Type 7 `extField` bit (Java `separateEventByLF`): one entry holding LF-joined records.
const EXT_FIELD_LF_JOINED: u16 = 0x0020;

/// How much of a batch the server looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngestMode {
    /// Decompress and validate every body, as the real server does (the default).
    #[default]
    Full,
    /// Trust the `cnt` attribute (txt types) or header field (type 7) and skip decompression and
    /// entry checks: a cheap sink for benchmarks, where the server shares the machine with the
    /// producer it measures.
    CountOnly,
}

/// What to do with one inbound frame.
#[derive(Debug)]
pub enum Request<'a> {
    /// A type 1 heartbeat: answer [`protocol::HEARTBEAT_REPLY`].
    Heartbeat,
    /// A type 8 heartbeat: answer with [`encode_bin_heartbeat_reply`].
    BinHeartbeat(BinHeartbeat<'a>),
    /// A data frame (types 2–7) that passed the codec's checks.
    Batch(Batch<'a>),
    /// A data frame refused by the codec's checks.
    Rejected(Rejection<'a>),
}

/// A decoded type 8 heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinHeartbeat<'a> {
    /// The request's version byte, echoed (C++ sends 1, Java 2).
    pub version: u8,
    /// The request's attributes, echoed.
    pub attrs: &'a [u8],
}

/// Why the connection must be closed without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The frame is over the size limit, too short, or its lengths point outside it.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message type the real server does not know.
    #[error("unsupported message type {0:#04x}")]
    UnsupportedType(u8),
}

/// How the reply to a data frame is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// A txt reply (§3.7) of this message type (2–6), matched by the echoed attributes.
    Text(u8),
    /// A type 7 reply (§4.4) carrying the request's `uniq`.
    Bin(u32),
}

/// A decoded data frame (types 2–7).
#[derive(Debug)]
pub struct Batch<'a> {
    /// How the reply is addressed.
    pub reply_to: ReplyTo,
    /// The attribute string as received (UTF-8, invalid sequences replaced).
    pub attrs: Cow<'a, str>,
    /// The records, for accounting (see [`Batch::records`]).
    records: Records<'a>,
    /// Records in the batch (`cnt` in count-only mode).
    pub count: u32,
    /// Bytes of the payloads (or of the body as sent in count-only mode).
    pub payload_bytes: u64,
    /// Bytes of the body as it was on the wire.
    pub wire_body_len: usize,
    /// False when `isAck=false`: no reply may be sent.
    pub wants_reply: bool,
    /// `syncSend=true` or `proxySend=true`: an accepted type 7 frame is answered by the MQ sink
    /// once the event is stored; an accepted txt frame is not answered at all (§3.5).
    pub sink_ack: bool,
    /// The body a type 4 reply echoes.
    pub echo_body: Option<&'a [u8]>,
    /// A type 7 refusal that the real handler makes after its reject-mode and MQ checks and
    /// before the group and topic checks: 112 (index message) or 121 (numeric IDs, which the
    /// local server has no mapping for).
    pub handler_error: Option<(i32, String)>,
    /// A type 5 body ending with 1–3 bytes after its last valid entry: the real server's event
    /// builder reads past the end and closes the connection once the batch passed the group and
    /// topic checks.
    pub truncated_entry: bool,
}

impl<'a> Batch<'a> {
    /// The value of attribute `key` (the request's attributes have no duplicate keys).
    pub fn attr(&self, key: &str) -> Option<&str> {
        attr_value(&self.attrs, key)
    }

    /// The records, in order, as the MQ would receive them: type 5 entries up to the first
    /// invalid one (the real server silently drops the rest, §3.2), the lines of an LF-joined
    /// body, the entries of a type 7 body (decompressed). Empty in [`IngestMode::CountOnly`].
    pub fn records(&self) -> Records<'a> {
        self.records.clone()
    }
}

/// How a body holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `[len u32][bytes]` entries.
    Entries,
    /// `[len u32][bytes][attrLen u32][attrs]` entries (C++ type 7 with `extField` 0x01).
    EntriesWithAttrs,
    /// `[len u32][bytes]` entries, each holding LF-joined records (Java `separateEventByLF`).
    EntriesOfLines,
    /// Records joined by `\n` (txt types 2–4).
    Lines,
    /// The whole body is one record.
    Whole,
}

/// Iterator over the records of a body.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    layout: Layout,
    /// The remaining lines of the current entry ([`Layout::EntriesOfLines`]).
    lines: Option<&'a [u8]>,
}

impl<'a> Records<'a> {
    fn new(body: &'a [u8], layout: Layout) -> Records<'a> {
        if layout == Layout::Lines {
            // Every line of the body, the last one even when empty (an empty body is one empty
            // record).
            return Records { rest: &[], layout, lines: Some(body) };
        }
        Records { rest: body, layout, lines: None }
    }

    fn empty() -> Records<'a> {
        Records::new(&[], Layout::Entries)
    }

    /// The next `[len u32][bytes]` entry; the server reads the length as a signed Java int, so
    /// anything ≥ 2^31 is "≤ 0" and ends the body like 0 does.
    fn next_entry(&mut self) -> Option<&'a [u8]> {
        if self.rest.len() < 4 {
            self.rest = &[];
            return None;
        }
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

/// Splits off the first line of `lines` (`None` once every line was handed out).
fn next_line<'a>(lines: &mut Option<&'a [u8]>) -> Option<&'a [u8]> {
    let text = (*lines)?;
    match text.iter().position(|&b| b == b'\n') {
        Some(at) => {
            *lines = Some(&text[at + 1..]);
            Some(&text[..at])
        }
        None => {
            *lines = None;
            Some(text)
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self.layout {
            Layout::Entries => self.next_entry(),
            Layout::EntriesWithAttrs => {
                let entry = self.next_entry()?;
                // The entry's own attributes follow it; a missing block ends the body.
                if self.rest.len() < 4 {
                    self.rest = &[];
                    return Some(entry);
                }
                let attr_len = protocol::read_u32(self.rest, 0) as usize;
                self.rest = self.rest.get(4 + attr_len..).unwrap_or_default();
                Some(entry)
            }
            Layout::EntriesOfLines => loop {
                if let Some(line) = next_line(&mut self.lines) {
                    return Some(line);
                }
                self.lines = Some(self.next_entry()?);
            },
            Layout::Lines => next_line(&mut self.lines),
            Layout::Whole => (!self.rest.is_empty()).then(|| std::mem::take(&mut self.rest)),
        }
    }
}

/// A data frame refused with an error code; the reply echoes the attributes when the server had
/// parsed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'a> {
    /// How the reply is addressed.
    pub reply_to: ReplyTo,
    /// The DataProxy `errCode`.
    pub code: i32,
    /// The `errMsg`, if the real server writes one for this code.
    pub err_msg: Option<String>,
    /// The request's attribute string as echoed (none for the length checks).
    pub echo: Option<Cow<'a, str>>,
    /// False when `isAck=false`: no reply may be sent.
    pub wants_reply: bool,
}

impl Rejection<'_> {
    fn early(reply_to: ReplyTo, code: i32, err_msg: Option<String>) -> Rejection<'static> {
        Rejection { reply_to, code, err_msg, echo: None, wants_reply: true }
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
    let total_len = frame.len() - 4;
    let too_short = || FrameError::TooShort { frame_len: frame.len(), msg_type: type_byte }.into();
    match type_byte & MSG_TYPE_MASK {
        MSG_TYPE_HEARTBEAT => Ok(Request::Heartbeat),
        2..=6 if total_len >= TXT_MIN_TOTAL_LEN => Ok(decode_text(frame, mode, scratch)),
        MSG_TYPE_BIN_MULTI_BODY if total_len >= BIN_MIN_TOTAL_LEN => {
            decode_bin(frame, mode, scratch)
        }
        MSG_TYPE_BIN_HEARTBEAT if total_len >= BIN_HB_MIN_TOTAL_LEN => decode_bin_heartbeat(frame),
        2..=8 => Err(too_short()),
        _ => Err(CloseReason::UnsupportedType(type_byte)),
    }
}

/// The attribute checks shared by the txt and binary codecs (§3.2 steps 5–6, §4.4 step 5):
/// the parsed string, `isAck`, and `syncSend`/`proxySend`; or the rejection.
fn check_attrs<'a>(
    raw: &'a [u8],
    reply_to: ReplyTo,
) -> Result<(Cow<'a, str>, bool, bool), Rejection<'a>> {
    let attrs = String::from_utf8_lossy(raw);
    if !is_strict_attr_map(&attrs) {
        let err_msg = Some(format!("Parse attr ({attrs}) failure"));
        return Err(Rejection {
            reply_to,
            code: SPLIT_ATTR_ERROR,
            err_msg,
            echo: Some(attrs),
            wants_reply: true,
        });
    }
    let is_true = |key| attr_value(&attrs, key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let wants_reply = !attr_value(&attrs, "isAck").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let (sync_send, proxy_send) = (is_true("syncSend"), is_true("proxySend"));
    // The real server answers these two even though isAck=false asked for no answer.
    let conflict = match (wants_reply, sync_send, proxy_send) {
        (false, true, _) => Some(ATTR_ORDER_CONTROL_CONFLICT_ERROR),
        (false, false, true) => Some(ATTR_PROXY_CONTROL_CONFLICT_ERROR),
        _ => None,
    };
    if let Some(code) = conflict {
        return Err(Rejection {
            reply_to,
            code,
            err_msg: None,
            echo: Some(attrs),
            wants_reply: true,
        });
    }
    Ok((attrs, wants_reply, sync_send || proxy_send))
}

/// §3.2 steps 1–8 for a txt frame (types 2–6) of at least 13 bytes.
fn decode_text<'a>(frame: &'a [u8], mode: IngestMode, scratch: &'a mut Vec<u8>) -> Request<'a> {
    let msg_type = frame[4] & MSG_TYPE_MASK;
    let reply_to = ReplyTo::Text(msg_type);
    let total_len = frame.len() - 4;
    let body_len_raw = protocol::read_u32(frame, 5);
    // Step 1: bodyLen is a signed Java int.
    if body_len_raw == 0 {
        return Request::Rejected(Rejection::early(reply_to, BODY_LENGTH_ZERO, None));
    }
    if body_len_raw > i32::MAX as u32 {
        return Request::Rejected(Rejection::early(reply_to, BODY_LENGTH_LESS_ZERO, None));
    }
    let body_len = body_len_raw as usize;
    // Step 2.
    if body_len + 13 > total_len + 4 {
        return Request::Rejected(Rejection::early(
            reply_to,
            BODY_EXCEED_MAX_LEN,
            Some(format!(
                "Error msg, bodyLen({body_len}) + fixedLength(13) > totalDataLen({total_len}) + 4"
            )),
        ));
    }
    // Step 3.
    let attr_len_raw = protocol::read_u32(frame, 9 + body_len);
    if attr_len_raw > i32::MAX as u32 {
        return Request::Rejected(Rejection::early(reply_to, ATTR_LENGTH_LESS_ZERO, None));
    }
    let attr_len = attr_len_raw as usize;
    // Step 4.
    if total_len + 4 != 13 + body_len + attr_len {
        return Request::Rejected(Rejection::early(
            reply_to,
            BODY_EXCEED_MAX_LEN,
            Some(format!(
                "Error msg, totalDataLen({total_len}) + 4 != fixedLength(13) + bodyLen({body_len}) + attrLen({attr_len})"
            )),
        ));
    }
    let wire_body = &frame[9..9 + body_len];
    // Steps 5 and 6.
    let (attrs, wants_reply, sink_ack) = match check_attrs(&frame[13 + body_len..], reply_to) {
        Ok(checked) => checked,
        Err(rejection) => return Request::Rejected(rejection),
    };
    let mut batch = Batch {
        reply_to,
        attrs,
        records: Records::empty(),
        count: 0,
        payload_bytes: body_len as u64,
        wire_body_len: body_len,
        wants_reply,
        sink_ack,
        echo_body: (msg_type == 4).then_some(wire_body),
        handler_error: None,
        truncated_entry: false,
    };
    if mode == IngestMode::CountOnly {
        batch.count = batch.attr("cnt").and_then(|v| v.trim().parse().ok()).unwrap_or(1);
        return Request::Batch(batch);
    }
    let reject = |code, err_msg, attrs| {
        Request::Rejected(Rejection { reply_to, code, err_msg, echo: Some(attrs), wants_reply })
    };
    // Step 7.
    let compress_type = batch.attr("cp").map(str::trim).filter(|cp| !cp.is_empty());
    let body: &[u8] = match compress_type {
        None => wire_body,
        Some(cp) => match uncompress(wire_body, scratch) {
            Ok(()) => scratch,
            Err(error) => {
                let err_msg = Some(format!(
                    "Error to uncompress msg, compress type({cp}), attr: ({}), error: {error}",
                    batch.attrs
                ));
                return reject(UNCOMPRESS_DATA_ERROR, err_msg, batch.attrs);
            }
        },
    };
    match msg_type {
        MSG_TYPE_MULTI_BODY => {
            // Step 8.
            if body.len() <= 4 {
                let err_msg = Some(format!(
                    "Malformed data len, bodyLen({}), attr: ({})",
                    body.len(),
                    batch.attrs
                ));
                return reject(MSG_BODY_ITEMS_INVALID, err_msg, batch.attrs);
            }
            let first_len = protocol::read_u32(body, 0) as usize;
            if first_len == 0 || first_len > i32::MAX as usize || first_len > body.len() - 4 {
                let err_msg = Some(format!(
                    "Malformed data len, singleMsgLen({}), buffer remaining({}), attr: ({})",
                    protocol::read_u32(body, 0) as i32,
                    body.len() - 4,
                    batch.attrs
                ));
                return reject(MSG_BODY_ITEMS_INVALID, err_msg, batch.attrs);
            }
            batch.records = Records::new(body, Layout::Entries);
            batch.truncated_entry = ends_in_partial_length(body);
        }
        // Type 6: the same entries, split leniently (no step 8 in the real codec).
        6 => batch.records = Records::new(body, Layout::Entries),
        _ => {
            let is_pb = batch.attr("mt").is_some_and(|mt| mt == "pb");
            batch.records = if is_pb {
                Records::new(body, Layout::Whole)
            } else {
                // One trailing `\r\n` or `\n` (a lone `\r` stays); what is left, even
                // nothing, is the records.
                let body =
                    body.strip_suffix(b"\r\n").or_else(|| body.strip_suffix(b"\n")).unwrap_or(body);
                Records::new(body, Layout::Lines)
            };
        }
    }
    tally(&mut batch);
    Request::Batch(batch)
}

/// Counts the batch's records and their bytes.
fn tally(batch: &mut Batch<'_>) {
    let (mut count, mut bytes) = (0u32, 0u64);
    for record in batch.records() {
        count += 1;
        bytes += record.len() as u64;
    }
    (batch.count, batch.payload_bytes) = (count, bytes);
}

/// True when the entries of a type 5 body, walked as the real event builder walks them, end with
/// 1–3 bytes that cannot hold the next length (its `getInt` underflows and the connection closes).
fn ends_in_partial_length(body: &[u8]) -> bool {
    let mut rest = body;
    loop {
        if rest.is_empty() {
            return false;
        }
        if rest.len() < 4 {
            return true;
        }
        let len = protocol::read_u32(rest, 0) as usize;
        if len == 0 || len > i32::MAX as usize || len > rest.len() - 4 {
            return false;
        }
        rest = &rest[4 + len..];
    }
}

/// §4.4 for a type 7 frame of at least 29 bytes: the codec's checks (steps 1–5); the handler's
/// 112 and 121 are left in [`Batch::handler_error`].
fn decode_bin<'a>(
    frame: &'a [u8],
    mode: IngestMode,
    scratch: &'a mut Vec<u8>,
) -> Result<Request<'a>, CloseReason> {
    let type_byte = frame[4];
    let ext_field = protocol::read_u16(frame, 9);
    let header_cnt = protocol::read_u16(frame, 15);
    let uniq = protocol::read_u32(frame, 17);
    let reply_to = ReplyTo::Bin(uniq);
    let early = |code, err_msg| Ok(Request::Rejected(Rejection::early(reply_to, code, err_msg)));
    let body_len_raw = protocol::read_u32(frame, 21);
    if body_len_raw == 0 {
        return early(BODY_LENGTH_ZERO, None);
    }
    if body_len_raw > i32::MAX as u32 {
        return early(BODY_LENGTH_LESS_ZERO, None);
    }
    let body_len = body_len_raw as usize;
    // The server reads attrLen right after the body; past the frame that read throws.
    if 25 + body_len + 2 > frame.len() {
        return Err(FrameError::Inconsistent("type 7 bodyLen points past the frame").into());
    }
    let attr_len_raw = protocol::read_u16(frame, 25 + body_len);
    if attr_len_raw > i16::MAX as u16 {
        return early(ATTR_LENGTH_LESS_ZERO, None);
    }
    let attr_len = usize::from(attr_len_raw);
    let magic = protocol::read_u16(frame, frame.len() - 2);
    if magic != BIN_MAGIC {
        return early(FIELD_MAGIC_NOT_EQUAL, Some(format!("Unmatched msg magic({magic:#06x})")));
    }
    if frame.len() < body_len + attr_len + BIN_FIXED_FRAME_LEN {
        let total_len = frame.len() - 4;
        return early(
            FIELD_LENGTH_VALUE_NOT_EQUAL,
            Some(format!(
                "Error msg, totalDataLen({total_len}) + 4 < bodyLen({body_len}) + attrLen({attr_len}) + fixedLength(29)"
            )),
        );
    }
    let wire_body = &frame[25..25 + body_len];
    let raw_attrs = &frame[27 + body_len..27 + body_len + attr_len];
    let (attrs, wants_reply, sink_ack) = match check_attrs(raw_attrs, reply_to) {
        Ok(checked) => checked,
        Err(rejection) => return Ok(Request::Rejected(rejection)),
    };
    let handler_error = if ext_field & EXT_FIELD_INDEX_MSG != 0 {
        Some((
            UNSUPPORTED_EXTEND_FIELD_VALUE,
            format!("Unsupported extend field value({ext_field:#06x}): index messages"),
        ))
    } else if ext_field & EXT_FIELD_IDS_AS_STRINGS == 0 {
        let (group_num, stream_num) = (protocol::read_u16(frame, 5), protocol::read_u16(frame, 7));
        Some((
            GROUPID_OR_STREAMID_NOT_CONFIGURE,
            format!("No configure for groupIdNum({group_num}), streamIdNum({stream_num})"),
        ))
    } else {
        None
    };
    let mut batch = Batch {
        reply_to,
        attrs,
        records: Records::empty(),
        count: u32::from(header_cnt.max(1)),
        payload_bytes: body_len as u64,
        wire_body_len: body_len,
        wants_reply,
        sink_ack,
        echo_body: None,
        handler_error,
        truncated_entry: false,
    };
    if mode == IngestMode::CountOnly {
        return Ok(Request::Batch(batch));
    }
    // The server stores the body as sent; decompressing here only serves the accounting, and a
    // body that is not valid Snappy is accounted as one opaque record.
    let body: &[u8] = if type_byte & MSG_FLAG_SNAPPY != 0 {
        match uncompress(wire_body, scratch) {
            Ok(()) => scratch,
            Err(_) => {
                batch.records = Records::new(wire_body, Layout::Whole);
                tally(&mut batch);
                return Ok(Request::Batch(batch));
            }
        }
    } else {
        wire_body
    };
    let layout = if ext_field & EXT_FIELD_LF_JOINED != 0 {
        Layout::EntriesOfLines
    } else if ext_field & EXT_FIELD_ENTRY_ATTRS != 0 {
        Layout::EntriesWithAttrs
    } else {
        Layout::Entries
    };
    batch.records = Records::new(body, layout);
    if batch.records().next().is_none() {
        // Not entries at all: the MQ gets the body as one message.
        batch.records = Records::new(body, Layout::Whole);
    }
    tally(&mut batch);
    Ok(Request::Batch(batch))
}

/// §4.5: a type 8 heartbeat of at least 18 bytes; any inconsistency closes the connection.
fn decode_bin_heartbeat(frame: &[u8]) -> Result<Request<'_>, CloseReason> {
    let version = frame[9];
    let body_len = protocol::read_u32(frame, 10) as usize;
    let Some(attr_len_at) =
        body_len.checked_add(14).filter(|at| at.saturating_add(4) <= frame.len())
    else {
        return Err(FrameError::Inconsistent("type 8 bodyLen points past the frame").into());
    };
    let attr_len = usize::from(protocol::read_u16(frame, attr_len_at));
    if attr_len_at + 2 + attr_len + 2 != frame.len() {
        return Err(FrameError::Inconsistent("type 8 lengths do not add up").into());
    }
    if protocol::read_u16(frame, frame.len() - 2) != BIN_MAGIC {
        return Err(FrameError::Inconsistent("type 8 magic is not 0xEE01").into());
    }
    let attrs = &frame[attr_len_at + 2..attr_len_at + 2 + attr_len];
    Ok(Request::BinHeartbeat(BinHeartbeat { version, attrs }))
}

/// Snappy raw block decode into `scratch`, refusing lengths no valid block can claim.
///
/// The error is the text the real server puts after `error: ` in its 96 errMsg: `2` for a
/// decompressed length of zero, `(null)` for a corrupt block (xerial's exception has no message).
fn uncompress(input: &[u8], scratch: &mut Vec<u8>) -> Result<(), &'static str> {
    const CORRUPT: &str = "(null)";
    let len = snap::raw::decompress_len(input).map_err(|_| CORRUPT)?;
    if len == 0 {
        return Err("2");
    }
    // A Snappy element expands at most 64 bytes out of 2 input bytes (copy-1 runs of 64 in 3
    // bytes, copy-2 of 64 in 3): a larger claim is corrupt, and must not make us allocate.
    if len > input.len().saturating_mul(32).saturating_add(64) {
        return Err(CORRUPT);
    }
    scratch.clear();
    scratch.resize(len, 0);
    let written = snap::raw::Decoder::new().decompress(input, scratch).map_err(|_| CORRUPT)?;
    scratch.truncate(written);
    Ok(())
}

/// Guava's `Splitter.on("&").trimResults().withKeyValueSeparator("=")` (§3.4): every trimmed
/// chunk has exactly one `=`, and no key repeats. The server parses only a non-empty string: an
/// empty one is an empty map.
fn is_strict_attr_map(attrs: &str) -> bool {
    if attrs.is_empty() {
        return true;
    }
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

/// The attribute string the success (and 114) reply to a txt frame echoes: `rt`/`rtms`
/// prepended when the request lacks them (§3.5).
pub fn stored_attrs<'s>(attrs: &'s str, receive_ms: u64) -> Cow<'s, str> {
    let has_rt = attr_value(attrs, "rt").is_some();
    let has_rtms = attr_value(attrs, "rtms").is_some();
    let sep = if attrs.is_empty() { "" } else { "&" };
    match (has_rt, has_rtms) {
        (true, true) => Cow::Borrowed(attrs),
        (false, false) => Cow::Owned(format!("rt={receive_ms}&rtms={receive_ms}{sep}{attrs}")),
        (true, false) => Cow::Owned(format!("rtms={receive_ms}{sep}{attrs}")),
        (false, true) => Cow::Owned(format!("rt={receive_ms}{sep}{attrs}")),
    }
}

/// The attribute string the success (and 114) reply to a type 7 frame echoes: only `rtms`
/// prepended when absent, no `rt` (§4.4).
pub fn stored_bin_attrs<'s>(attrs: &'s str, receive_ms: u64) -> Cow<'s, str> {
    if attr_value(attrs, "rtms").is_some() {
        Cow::Borrowed(attrs)
    } else if attrs.is_empty() {
        Cow::Owned(format!("rtms={receive_ms}"))
    } else {
        Cow::Owned(format!("rtms={receive_ms}&{attrs}"))
    }
}

/// Appends the reply attributes `dpIp=<ip>[&errCode=<code>[&errMsg=<msg>]][&<echo>]` (§3.7).
fn push_reply_attrs(
    out: &mut Vec<u8>,
    dp_ip: &str,
    error: Option<(i32, Option<&str>)>,
    echo: Option<&str>,
) {
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
}

/// Replies are built from frames under the 20 MiB server limit plus short texts.
fn to_u32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
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
    encode_reply_with_body(out, msg_type, b"2", dp_ip, error, echo);
}

/// Appends a txt reply frame with the given body: `'2'`, or the request's body for type 4.
pub fn encode_reply_with_body(
    out: &mut Vec<u8>,
    msg_type: u8,
    body: &[u8],
    dp_ip: &str,
    error: Option<(i32, Option<&str>)>,
    echo: Option<&str>,
) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, msg_type & MSG_TYPE_MASK]);
    out.extend_from_slice(&to_u32(body.len()));
    out.extend_from_slice(body);
    out.extend_from_slice(&[0, 0, 0, 0]);
    let attr_start = out.len();
    push_reply_attrs(out, dp_ip, error, echo);
    let attr_len = out.len() - attr_start;
    let total_len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&to_u32(total_len));
    out[attr_start - 4..attr_start].copy_from_slice(&to_u32(attr_len));
}

/// Appends a type 7 reply frame (§4.4): `uniq` echoed, the attributes of [`encode_reply`]
/// (cut at 32767 bytes, the largest attrLen the client reads as positive), the magic.
pub fn encode_bin_reply(
    out: &mut Vec<u8>,
    uniq: u32,
    dp_ip: &str,
    error: Option<(i32, Option<&str>)>,
    echo: Option<&str>,
) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, MSG_TYPE_BIN_MULTI_BODY]);
    out.extend_from_slice(&uniq.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let attr_start = out.len();
    push_reply_attrs(out, dp_ip, error, echo);
    out.truncate(attr_start + (out.len() - attr_start).min(i16::MAX as usize));
    let attr_len = u16::try_from(out.len() - attr_start).unwrap_or(u16::MAX);
    out.extend_from_slice(&BIN_MAGIC.to_be_bytes());
    let total_len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&to_u32(total_len));
    out[attr_start - 2..attr_start].copy_from_slice(&attr_len.to_be_bytes());
}

/// Appends a reply to a type 8 heartbeat (§4.5): the server's clock in seconds, the version
/// echoed, a 2-byte body holding the load `0xFFFF`, the attributes echoed, the magic.
pub fn encode_bin_heartbeat_reply(out: &mut Vec<u8>, now_secs: u32, heartbeat: &BinHeartbeat<'_>) {
    let attrs = &heartbeat.attrs[..heartbeat.attrs.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&to_u32(16 + attrs.len()));
    out.push(MSG_TYPE_BIN_HEARTBEAT);
    out.extend_from_slice(&now_secs.to_be_bytes());
    out.push(heartbeat.version);
    out.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
    out.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(attrs);
    out.extend_from_slice(&BIN_MAGIC.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use inlong_dataproxy::protocol::{AddColumns, BatchBody, BatchHeader, FrameEncoder};
    use proptest::prelude::*;

    fn frame(attrs: &str, body: &[u8]) -> Vec<u8> {
        txt_frame(5, attrs, body)
    }

    fn txt_frame(msg_type: u8, attrs: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((9 + body.len() + attrs.len()) as u32).to_be_bytes());
        out.push(msg_type);
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
        for attrs in [" ", "a", "a=b&&c=d", "a=b&", "a=b=c", "a=1&a=2", " a=1 & a=2"] {
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
        // Answered although isAck=false, as the real server does.
        assert_eq!((r.code, r.wants_reply), (150, true));
        let r = rejected(&frame("groupId=g&proxySend=TRUE&isAck=False", &body));
        assert_eq!((r.code, r.wants_reply), (151, true));
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
        assert!(r.err_msg.unwrap().ends_with("error: 2"));
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

    fn bin_frame(
        type_byte: u8,
        ext: u16,
        cnt: u16,
        uniq: u32,
        body: &[u8],
        attrs: &str,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((25 + body.len() + attrs.len()) as u32).to_be_bytes());
        out.push(type_byte);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&ext.to_be_bytes());
        out.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        out.extend_from_slice(&cnt.to_be_bytes());
        out.extend_from_slice(&uniq.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        out.extend_from_slice(attrs.as_bytes());
        out.extend_from_slice(&BIN_MAGIC.to_be_bytes());
        out
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn batch(frame: &[u8]) -> Batch<'_> {
        // A leaked scratch keeps the helper simple: the tests decode a handful of frames.
        let scratch = Box::leak(Box::new(Vec::new()));
        match decode_request(frame, IngestMode::Full, scratch) {
            Ok(Request::Batch(batch)) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn empty_attributes_are_an_empty_map() {
        let f = frame("", &entries(&[b"x"]));
        let b = batch(&f);
        assert_eq!((b.count, b.attr("groupId")), (1, None));
    }

    #[test]
    fn one_to_three_bytes_after_the_last_entry_close_the_connection_later() {
        for tail in [&b"\0"[..], b"\0\0", b"\0\0\x01"] {
            let mut body = entries(&[b"first"]);
            body.extend_from_slice(tail);
            let f = frame(ATTRS, &body);
            let b = batch(&f);
            assert!(b.truncated_entry, "{tail:?}");
            assert_eq!(b.count, 1);
        }
        let mut body = entries(&[b"first"]);
        body.extend_from_slice(b"\0\0\0\0\0\0\0\x02ab");
        let f = frame(ATTRS, &body);
        assert!(!batch(&f).truncated_entry);
    }

    #[test]
    fn types_2_3_4_are_lines_with_one_trailing_newline_stripped() {
        for (msg_type, body, expected) in [
            (3u8, &b"a|b\nc|d\n"[..], vec![&b"a|b"[..], b"c|d"]),
            (2, b"one\r\n", vec![&b"one"[..]]),
            (3, b"keep\n\n", vec![&b"keep"[..], b""]),
            (4, b"x", vec![&b"x"[..]]),
            // A lone `\r` is not a line end (found by the `server_frame` fuzz target: it was
            // stripped, and the record count disagreed with the records).
            (4, b"\r", vec![&b"\r"[..]]),
            (2, b"a\r", vec![&b"a\r"[..]]),
            // Nothing left after the strip: one empty record.
            (3, b"\n", vec![&b""[..]]),
            (3, b"\r\n", vec![&b""[..]]),
        ] {
            let f = txt_frame(msg_type, "groupId=g&streamId=s", body);
            let b = batch(&f);
            assert_eq!(b.records().collect::<Vec<_>>(), expected, "{body:?}");
            assert_eq!(b.count as usize, expected.len());
            assert_eq!(b.reply_to, ReplyTo::Text(msg_type));
            assert_eq!(b.echo_body.is_some(), msg_type == 4);
        }
        // mt=pb keeps the body whole.
        let f = txt_frame(3, "groupId=g&mt=pb", b"a\nb\n");
        assert_eq!(batch(&f).records().collect::<Vec<_>>(), vec![&b"a\nb\n"[..]]);
    }

    #[test]
    fn type_4_reply_echoes_the_body() {
        let mut out = Vec::new();
        encode_reply_with_body(&mut out, 4, b"abc", "1.2.3.4", None, Some("a=b"));
        assert_eq!(out, b"\0\0\0\x1c\x04\0\0\0\x03abc\0\0\0\x10dpIp=1.2.3.4&a=b");
    }

    #[test]
    fn type_6_is_entries_without_the_type_5_checks() {
        let f = txt_frame(6, "groupId=g", &entries(&[b"ab", b"c"]));
        assert_eq!(batch(&f).count, 2);
        let f = txt_frame(6, "groupId=g", b"\0\0\0\0zz");
        assert_eq!(batch(&f).count, 0);
    }

    #[test]
    fn golden_type_7_and_its_reply_7_8() {
        let request = "00000049070000000000046553f1000001000000010000000900000005617c62\
                       7c63002767726f757049643d746573745f67726f75702673747265616d49643d\
                       746573745f73747265616dee01";
        let f: Vec<u8> = (0..request.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&request[i..i + 2], 16).unwrap())
            .collect();
        let b = batch(&f);
        assert_eq!(b.reply_to, ReplyTo::Bin(1));
        assert_eq!(b.records().collect::<Vec<_>>(), vec![&b"a|b|c"[..]]);
        assert_eq!((b.count, b.payload_bytes, b.handler_error.is_none()), (1, 5, true));
        let mut out = Vec::new();
        let echo = stored_bin_attrs(&b.attrs, 1_700_000_000_123);
        encode_bin_reply(&mut out, 1, "10.0.0.1", None, Some(&echo));
        assert_eq!(
            hex(&out),
            "0000005107000000010048647049703d31302e302e302e312672746d733d3137\
             30303030303030303132332667726f757049643d746573745f67726f75702673\
             747265616d49643d746573745f73747265616dee01"
        );
    }

    #[test]
    fn golden_type_8_heartbeat_7_8() {
        let f = [0, 0, 0, 0x0e, 8, 0x65, 0x53, 0xf1, 0, 1, 0, 0, 0, 0, 0, 0, 0xee, 0x01];
        let mut scratch = Vec::new();
        let Ok(Request::BinHeartbeat(hb)) = decode_request(&f, IngestMode::Full, &mut scratch)
        else {
            panic!("not a heartbeat")
        };
        assert_eq!((hb.version, hb.attrs), (1, &b""[..]));
        let mut out = Vec::new();
        encode_bin_heartbeat_reply(&mut out, 0x6553_f100, &hb);
        assert_eq!(hex(&out), "00000010086553f1000100000002ffff0000ee01");
        // Bad magic or lengths close.
        let mut bad = f;
        bad[17] = 2;
        assert!(decode_request(&bad, IngestMode::Full, &mut Vec::new()).is_err());
        let mut bad = f;
        bad[15] = 1;
        assert!(decode_request(&bad, IngestMode::Full, &mut Vec::new()).is_err());
    }

    fn bin_rejected(frame: &[u8]) -> Rejection<'static> {
        rejected(frame)
    }

    #[test]
    fn type_7_validation_order() {
        let attrs = "groupId=g&streamId=s";
        let body = entries(&[b"x"]);
        let r = bin_rejected(&bin_frame(7, 4, 1, 5, b"", attrs));
        assert_eq!((r.code, r.reply_to, r.echo.is_none()), (105, ReplyTo::Bin(5), true));
        let mut f = bin_frame(7, 4, 1, 5, &body, attrs);
        f[21] = 0x80;
        assert_eq!(bin_rejected(&f).code, 106);
        let mut f = bin_frame(7, 4, 1, 5, &body, attrs);
        f[25 + body.len()] = 0x80;
        assert_eq!(bin_rejected(&f).code, 107);
        let mut f = bin_frame(7, 4, 1, 5, &body, attrs);
        *f.last_mut().unwrap() = 0;
        assert_eq!(bin_rejected(&f).code, 94);
        let mut f = bin_frame(7, 4, 1, 5, &body, attrs);
        f[26 + body.len()] += 1; // attrLen one too long
        assert_eq!(bin_rejected(&f).code, 95);
        let r = bin_rejected(&bin_frame(7, 4, 1, 5, &body, "a=b&&c"));
        assert_eq!((r.code, r.echo.as_deref()), (109, Some("a=b&&c")));
        let r = bin_rejected(&bin_frame(7, 4, 1, 5, &body, "groupId=g&syncSend=true&isAck=false"));
        assert_eq!((r.code, r.wants_reply), (150, true));
        // A body length past the frame: the attrLen read throws, the connection closes.
        let mut f = bin_frame(7, 4, 1, 5, &body, attrs);
        f[21..25].copy_from_slice(&1000u32.to_be_bytes());
        assert!(decode_request(&f, IngestMode::Full, &mut Vec::new()).is_err());
        // The handler's refusals are deferred to the node.
        let f = bin_frame(7, 0x0c, 1, 5, &body, attrs);
        assert_eq!(batch(&f).handler_error.unwrap().0, 112);
        let f = bin_frame(7, 0, 1, 5, &body, attrs);
        assert_eq!(batch(&f).handler_error.unwrap().0, 121);
        let f = bin_frame(7, 4, 1, 5, &body, "groupId=g&proxySend=true");
        assert!(batch(&f).sink_ack);
    }

    #[test]
    fn type_7_bodies_are_counted_in_every_layout() {
        let attrs = "groupId=g&streamId=s";
        let plain = entries(&[b"ab", b"cde"]);
        let f = bin_frame(7, 4, 2, 1, &plain, attrs);
        assert_eq!(batch(&f).records().collect::<Vec<_>>(), vec![&b"ab"[..], b"cde"]);
        let compressed = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        let f = bin_frame(0x27, 4, 2, 1, &compressed, attrs);
        let b = batch(&f);
        assert_eq!((b.count, b.payload_bytes, b.wire_body_len), (2, 5, compressed.len()));
        let lines = entries(&[b"l1\nl2\nl3"]);
        let f = bin_frame(7, 0x24, 3, 1, &lines, attrs);
        assert_eq!(batch(&f).records().collect::<Vec<_>>(), vec![&b"l1"[..], b"l2", b"l3"]);
        let mut with_attrs = entries(&[b"r1"]);
        with_attrs.extend_from_slice(&entries(&[b"k=v"]));
        with_attrs.extend_from_slice(&entries(&[b"r2"]));
        with_attrs.extend_from_slice(&entries(&[b"k=w"]));
        let f = bin_frame(7, 5, 2, 1, &with_attrs, attrs);
        assert_eq!(batch(&f).records().collect::<Vec<_>>(), vec![&b"r1"[..], b"r2"]);
        // Count-only trusts the header's cnt (0 reads as 1).
        let f = bin_frame(0x27, 4, 7, 1, b"not snappy", attrs);
        let mut scratch = Vec::new();
        let Ok(Request::Batch(b)) = decode_request(&f, IngestMode::CountOnly, &mut scratch) else {
            panic!()
        };
        assert_eq!((b.count, b.records().count()), (7, 0));
        let f = bin_frame(7, 4, 0, 1, &plain, attrs);
        let Ok(Request::Batch(b)) = decode_request(&f, IngestMode::CountOnly, &mut scratch) else {
            panic!()
        };
        assert_eq!(b.count, 1);
    }

    #[test]
    fn stored_bin_attrs_prepend_rtms_only() {
        assert_eq!(stored_bin_attrs("a=b", 9), "rtms=9&a=b");
        assert_eq!(stored_bin_attrs("rtms=1&a=b", 9), "rtms=1&a=b");
        assert_eq!(stored_bin_attrs("", 9), "rtms=9");
    }

    /// The codec's half of every verdict of the real server's captures (the node's half, and the
    /// replies, are checked over the wire by `tests/real_dataproxy.rs`).
    #[test]
    fn reference_captures_decode_to_the_real_verdicts() {
        let files: [(&[u8], &str); 2] = [
            (
                include_bytes!("../tests/data/t5-frames.bin"),
                include_str!("../tests/data/t5-verdicts.jsonl"),
            ),
            (
                include_bytes!("../tests/data/java-sdk-frames.bin"),
                include_str!("../tests/data/java-sdk-frames.verdicts.jsonl"),
            ),
        ];
        let mut checked = 0;
        for (bin, jsonl) in files {
            let mut rest = bin;
            for line in jsonl.lines() {
                let expected: serde_json::Value = serde_json::from_str(line).unwrap();
                let len = 4 + protocol::read_u32(rest, 0) as usize;
                let (frame, tail) = rest.split_at(len);
                rest = tail;
                let code = expected["errCode"].as_str().map(|c| c.parse::<i32>().unwrap());
                let records: u64 = expected["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["records"].as_u64().unwrap())
                    .sum();
                let mut scratch = Vec::new();
                let decoded = decode_request(frame, IngestMode::Full, &mut scratch).unwrap();
                let agrees = match (expected["verdict"].as_str().unwrap(), &decoded) {
                    ("answered", Request::BinHeartbeat(_)) => true,
                    ("accepted" | "accepted_no_reply", Request::Batch(b)) => {
                        u64::from(b.count) == records && !b.truncated_entry
                    }
                    ("closed", Request::Batch(b)) => b.truncated_entry,
                    // 100 is the handler's (steps 9-13), after the codec accepted the frame.
                    ("rejected", Request::Batch(b)) => {
                        code == Some(100) && b.attr("groupId").is_none_or(|g| g.trim().is_empty())
                    }
                    ("rejected", Request::Rejected(r)) => Some(r.code) == code && r.wants_reply,
                    _ => false,
                };
                assert!(agrees, "{}: {decoded:?}", expected["name"]);
                checked += 1;
            }
            assert!(rest.is_empty());
        }
        assert_eq!(checked, 37 + 16);
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
            for msg_type in 0..=255u8 {
                let mut f = frame("groupId=g&cp=snappy", &bytes);
                f[4] = msg_type;
                let _ = decode_request(&f, IngestMode::Full, &mut scratch);
                let _ = decode_request(&f, IngestMode::CountOnly, &mut scratch);
            }
            // Binary frames: the random bytes as header + body, any flags and extField.
            for type_byte in [0x07, 0x27, 0x08, 0x88] {
                let mut f = Vec::new();
                f.extend_from_slice(&((bytes.len() + 3) as u32).to_be_bytes());
                f.push(type_byte);
                f.extend_from_slice(&bytes);
                f.extend_from_slice(&BIN_MAGIC.to_be_bytes());
                for mode in [IngestMode::Full, IngestMode::CountOnly] {
                    if let Ok(Request::Batch(batch)) = decode_request(&f, mode, &mut scratch) {
                        if mode == IngestMode::Full {
                            prop_assert_eq!(batch.records().count(), batch.count as usize);
                        }
                    }
                }
            }
            // Well-formed type 7 frames around the random body.
            for (type_byte, ext) in [(0x07, 0x04), (0x27, 0x24), (0x07, 0x05), (0x27, 0x00)] {
                let f = bin_frame(type_byte, ext, 1, 9, &bytes, "groupId=g&streamId=s");
                if let Ok(Request::Batch(batch)) = decode_request(&f, IngestMode::Full, &mut scratch) {
                    prop_assert_eq!(batch.records().count(), batch.count as usize);
                }
            }
        }
    }
}
