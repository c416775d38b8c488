//! Splitting the server's byte stream into frames and decoding replies (`PROTOCOL.md` §3.7, §3.8,
//! §4.4, §4.5): to msgType 5 batches (txt reply, matched by `mid`), to msgType 7 batches (binary
//! reply, matched by `uniq`), and to type 1 and type 8 heartbeats.
//!
//! Every length is checked against the bytes actually present and against the frame limit before
//! anything is looked at, and nothing here allocates: a decoded [`Reply`] borrows from the frame.
//! Attribute parsing is the robust one of §3.7: split on `&`, split each piece on its **first**
//! `=`, the **last** occurrence of a key wins (the echoed request attributes come last), and an
//! absent `errCode` means success.

use super::{
    read_u16, read_u32, BIN_MAGIC, MSG_TYPE_BIN_HEARTBEAT, MSG_TYPE_BIN_MULTI_BODY,
    MSG_TYPE_HEARTBEAT, MSG_TYPE_MULTI_BODY,
};

/// Why a byte stream or frame cannot be decoded. The connection it came from must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// `4 + totalLen` is over the limit; detected from the length field alone.
    #[error("frame of {frame_len} bytes exceeds the limit of {limit} bytes")]
    TooLong {
        /// `4 + totalLen` as announced.
        frame_len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The frame is too short for its message type.
    #[error("frame of {frame_len} bytes is too short for message type {msg_type}")]
    TooShort {
        /// Bytes in the frame including the length field.
        frame_len: usize,
        /// The message type byte (0 when there is none).
        msg_type: u8,
    },
    /// A message type the client never asked for.
    #[error("unexpected message type {0} in a reply")]
    UnexpectedType(u8),
    /// The body and attribute lengths disagree with the frame length.
    #[error("inconsistent lengths: {0}")]
    Inconsistent(&'static str),
    /// A binary (type 7 or 8) frame does not end with the magic number 0xEE01.
    #[error("binary reply ends with {0:#06x}, not the magic 0xee01")]
    BadMagic(u16),
}

/// Finds the first complete frame at the start of `buf`.
///
/// Returns `Ok(Some(n))` when the first `n` bytes are a whole frame (length field included),
/// `Ok(None)` when more bytes are needed, and an error as soon as the length field announces a
/// frame over `max_frame_len` or one without a type byte — without waiting for its bytes.
pub fn split_frame(buf: &[u8], max_frame_len: usize) -> Result<Option<usize>, FrameError> {
    Ok(frame_len(buf, max_frame_len)?.filter(|&len| buf.len() >= len))
}

/// The length of the frame starting at `buf` (length field included), known as soon as its
/// 4-byte length field is in (`Ok(None)` before); checked as in [`split_frame`]. A reader
/// completing a partial frame takes exactly the bytes it still misses.
pub fn frame_len(buf: &[u8], max_frame_len: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let total_len = read_u32(buf, 0);
    let frame_len = u64::from(total_len) + 4;
    if frame_len > max_frame_len as u64 {
        return Err(FrameError::TooLong { frame_len, limit: max_frame_len });
    }
    if total_len == 0 {
        return Err(FrameError::TooShort { frame_len: 4, msg_type: 0 });
    }
    // frame_len <= max_frame_len, so it fits in usize.
    Ok(Some(usize::try_from(frame_len).unwrap_or(usize::MAX)))
}

/// A decoded reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A heartbeat reply: the 5-byte type 1 reply, or a well-formed type 8 reply.
    Heartbeat,
    /// The reply to a data batch.
    Batch(BatchReply<'a>),
}

/// The reply to a msgType 5 or 7 batch, borrowing from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReply<'a> {
    /// The server's `errCode`: 0 when absent (success). A value that is not a valid `i32` is
    /// read as `2147483647`, DataProxy's `UNKNOWN_ERROR`.
    pub err_code: i32,
    /// `errMsg` up to the first `&` (the server does not escape it).
    pub err_msg: Option<&'a [u8]>,
    /// `mid` echoed from the request. `None` for errors found before the server parsed the
    /// attributes (codes 104–107): match those FIFO on their connection.
    pub mid: Option<&'a [u8]>,
    /// `wid` echoed from the request.
    pub wid: Option<&'a [u8]>,
    /// `uniq` of a msgType 7 reply (the request's, echoed); `None` for msgType 5.
    pub uniq: Option<u32>,
    /// `dpIp`: the answering node's configured address.
    pub dp_ip: Option<&'a [u8]>,
    /// The reply body: `"2"`, or empty for sink-side replies.
    pub body: &'a [u8],
    /// The whole attribute string.
    pub attrs: &'a [u8],
}

impl BatchReply<'_> {
    /// True when the server accepted the batch.
    pub fn is_success(&self) -> bool {
        self.err_code == 0
    }

    /// `errMsg` as text (lossy UTF-8), for error reports.
    pub fn err_msg_lossy(&self) -> Option<String> {
        self.err_msg.map(|msg| String::from_utf8_lossy(msg).into_owned())
    }
}

/// DataProxy's `UNKNOWN_ERROR`, used for an `errCode` that is not a number.
const UNKNOWN_ERROR: i32 = i32::MAX;

/// Decodes one whole frame as returned by [`split_frame`] (length field included).
pub fn decode_reply(frame: &[u8]) -> Result<Reply<'_>, FrameError> {
    if frame.len() < 5 {
        return Err(FrameError::TooShort { frame_len: frame.len(), msg_type: 0 });
    }
    if read_u32(frame, 0) as usize != frame.len() - 4 {
        return Err(FrameError::Inconsistent("totalLen does not match the frame"));
    }
    match frame[4] {
        MSG_TYPE_HEARTBEAT => Ok(Reply::Heartbeat),
        MSG_TYPE_MULTI_BODY => decode_batch_reply(frame).map(Reply::Batch),
        MSG_TYPE_BIN_MULTI_BODY => decode_bin_reply(frame).map(Reply::Batch),
        MSG_TYPE_BIN_HEARTBEAT => check_bin_heartbeat_reply(frame).map(|()| Reply::Heartbeat),
        other => Err(FrameError::UnexpectedType(other)),
    }
}

fn check_magic(frame: &[u8]) -> Result<(), FrameError> {
    let magic = read_u16(frame, frame.len() - 2);
    if magic == BIN_MAGIC {
        Ok(())
    } else {
        Err(FrameError::BadMagic(magic))
    }
}

/// `totalLen | 0x07 | uniq u32 | attrLen u16 | attrs | 0xEE01` (§4.4).
fn decode_bin_reply(frame: &[u8]) -> Result<BatchReply<'_>, FrameError> {
    const FIXED: usize = 4 + 1 + 4 + 2 + 2;
    if frame.len() < FIXED {
        return Err(FrameError::TooShort { frame_len: frame.len(), msg_type: frame[4] });
    }
    let attr_len = usize::from(read_u16(frame, 9));
    if FIXED + attr_len != frame.len() {
        return Err(FrameError::Inconsistent("attrLen does not end the frame"));
    }
    check_magic(frame)?;
    let mut reply = BatchReply {
        err_code: 0,
        err_msg: None,
        mid: None,
        wid: None,
        uniq: Some(read_u32(frame, 5)),
        dp_ip: None,
        body: &[],
        attrs: &frame[11..11 + attr_len],
    };
    read_attrs(&mut reply);
    Ok(reply)
}

/// `totalLen | 0x08 | time u32 | version u8 | bodyLen u32 | body | attrLen u16 | attrs |
/// 0xEE01` (§4.5): only its shape is checked; the server's time and load are not used.
fn check_bin_heartbeat_reply(frame: &[u8]) -> Result<(), FrameError> {
    const FIXED: usize = 4 + 1 + 4 + 1 + 4 + 2 + 2;
    if frame.len() < FIXED {
        return Err(FrameError::TooShort { frame_len: frame.len(), msg_type: frame[4] });
    }
    let body_len = read_u32(frame, 10) as usize;
    let attr_len_at = 14usize
        .checked_add(body_len)
        .filter(|at| at + 4 <= frame.len())
        .ok_or(FrameError::Inconsistent("bodyLen runs past the frame"))?;
    let attr_len = usize::from(read_u16(frame, attr_len_at));
    if attr_len_at + 2 + attr_len + 2 != frame.len() {
        return Err(FrameError::Inconsistent("attrLen does not end the frame"));
    }
    check_magic(frame)
}

fn decode_batch_reply(frame: &[u8]) -> Result<BatchReply<'_>, FrameError> {
    if frame.len() < 13 {
        return Err(FrameError::TooShort { frame_len: frame.len(), msg_type: frame[4] });
    }
    let body_len = read_u32(frame, 5) as usize;
    let attr_len_at = 9usize
        .checked_add(body_len)
        .filter(|end| end + 4 <= frame.len())
        .ok_or(FrameError::Inconsistent("bodyLen runs past the frame"))?;
    let attr_len = read_u32(frame, attr_len_at) as usize;
    if (attr_len_at + 4).checked_add(attr_len) != Some(frame.len()) {
        return Err(FrameError::Inconsistent("attrLen does not end the frame"));
    }
    let mut reply = BatchReply {
        err_code: 0,
        err_msg: None,
        mid: None,
        wid: None,
        uniq: None,
        dp_ip: None,
        body: &frame[9..attr_len_at],
        attrs: &frame[attr_len_at + 4..],
    };
    read_attrs(&mut reply);
    Ok(reply)
}

/// Fills the fields read from the attribute string: split on `&`, each piece on its first `=`,
/// the last occurrence of a key wins.
fn read_attrs(reply: &mut BatchReply<'_>) {
    for piece in reply.attrs.split(|&b| b == b'&') {
        let Some(eq) = piece.iter().position(|&b| b == b'=') else { continue };
        let (key, value) = (&piece[..eq], &piece[eq + 1..]);
        match key {
            b"errCode" => reply.err_code = parse_code(value),
            b"errMsg" => reply.err_msg = Some(value),
            b"mid" => reply.mid = Some(value),
            b"wid" => reply.wid = Some(value),
            b"dpIp" => reply.dp_ip = Some(value),
            _ => {}
        }
    }
}

fn parse_code(value: &[u8]) -> i32 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .unwrap_or(UNKNOWN_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn batch(frame: &[u8]) -> BatchReply<'_> {
        assert_eq!(split_frame(frame, 65_536), Ok(Some(frame.len())));
        match decode_reply(frame).unwrap() {
            Reply::Batch(reply) => reply,
            Reply::Heartbeat => panic!("heartbeat"),
        }
    }

    /// Builds a txt reply frame around `attrs` with body `"2"`.
    fn reply_frame(attrs: &str) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&((1 + 4 + 1 + 4 + attrs.len()) as u32).to_be_bytes());
        frame.push(5);
        frame.extend_from_slice(&1u32.to_be_bytes());
        frame.push(b'2');
        frame.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
        frame.extend_from_slice(attrs.as_bytes());
        frame
    }

    #[test]
    fn golden_success_reply() {
        let frame = unhex(
            "0000009e05000000013200000094647049703d31302e302e302e312672743d31
             3730303030303030303132332672746d733d3137303030303030303031323326
             67726f757049643d746573745f67726f75702673747265616d49643d74657374
             5f73747265616d2664743d31373030303030303030303030266d69643d303030
             302d6669786564267369643d303030302d6669786564267769643d3026636e74
             3d31",
        );
        let reply = batch(&frame);
        assert!(reply.is_success());
        assert_eq!(reply.mid, Some(&b"0000-fixed"[..]));
        assert_eq!(reply.wid, Some(&b"0"[..]));
        assert_eq!(reply.dp_ip, Some(&b"10.0.0.1"[..]));
        assert_eq!(reply.body, b"2");
        assert_eq!(reply.err_msg, None);
    }

    #[test]
    fn golden_error_2_reply() {
        let frame = unhex(
            "000000840500000001320000007a647049703d31302e302e302e312665727243
             6f64653d322667726f757049643d746573745f67726f75702673747265616d49
             643d746573745f73747265616d2664743d31373030303030303030303030266d
             69643d303030302d6669786564267369643d303030302d666978656426776964
             3d3026636e743d31",
        );
        let reply = batch(&frame);
        assert_eq!(reply.err_code, 2);
        assert_eq!(reply.mid, Some(&b"0000-fixed"[..]));
    }

    #[test]
    fn golden_error_115_reply_keeps_errmsg_with_equals_signs() {
        let frame = unhex(
            "000000d3050000000132000000c9647049703d31302e302e302e312665727243
             6f64653d313135266572724d73673d546f706963206e6f7420636f6e66696775
             72656420666f722067726f757049643d28746573745f67726f7570292c207374
             7265616d49643d28746573745f73747265616d292667726f757049643d746573
             745f67726f75702673747265616d49643d746573745f73747265616d2664743d
             31373030303030303030303030266d69643d303030302d666978656426736964
             3d303030302d6669786564267769643d3026636e743d31",
        );
        let reply = batch(&frame);
        assert_eq!(reply.err_code, 115);
        assert_eq!(
            reply.err_msg_lossy().as_deref(),
            Some("Topic not configured for groupId=(test_group), streamId=(test_stream)")
        );
        assert_eq!(reply.mid, Some(&b"0000-fixed"[..]));
    }

    #[test]
    fn heartbeat_reply() {
        assert_eq!(split_frame(&[0, 0, 0, 1, 1, 0xff], 65_536), Ok(Some(5)));
        assert_eq!(decode_reply(&[0, 0, 0, 1, 1]), Ok(Reply::Heartbeat));
    }

    #[test]
    fn golden_type_7_reply_7_8() {
        let frame = unhex(
            "0000005107000000010048647049703d31302e302e302e312672746d733d3137
             30303030303030303132332667726f757049643d746573745f67726f75702673
             747265616d49643d746573745f73747265616dee01",
        );
        let reply = batch(&frame);
        assert!(reply.is_success());
        assert_eq!((reply.uniq, reply.mid, reply.wid), (Some(1), None, None));
        assert_eq!(reply.dp_ip, Some(&b"10.0.0.1"[..]));
        assert!(reply.body.is_empty());
    }

    #[test]
    fn type_7_reply_the_real_server_sent_the_java_sdk() {
        let frame = unhex(
            "00000069077241d4910060647049703d3132372e302e302e312673747265616d49643d73747265616d5f
             302667726f757049643d746573745f67726f75702673646b56657273696f6e3d322e352e302d534e4150
             53484f542672746d733d31373936313737353531333835ee01",
        );
        let reply = batch(&frame);
        assert!(reply.is_success());
        assert_eq!(reply.uniq, Some(1_916_916_881));
        assert_eq!(reply.dp_ip, Some(&b"127.0.0.1"[..]));
    }

    /// Builds a type 7 reply frame around `attrs`.
    fn bin_reply_frame(uniq: u32, attrs: &str) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&((1 + 4 + 2 + attrs.len() + 2) as u32).to_be_bytes());
        frame.push(7);
        frame.extend_from_slice(&uniq.to_be_bytes());
        frame.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        frame.extend_from_slice(attrs.as_bytes());
        frame.extend_from_slice(&[0xee, 0x01]);
        frame
    }

    #[test]
    fn type_7_sink_error_reply() {
        let frame = bin_reply_frame(u32::MAX, "errCode=118&errMsg=send to MQ failed");
        let reply = batch(&frame);
        assert_eq!((reply.err_code, reply.uniq), (118, Some(u32::MAX)));
        assert_eq!(reply.err_msg_lossy().as_deref(), Some("send to MQ failed"));
    }

    #[test]
    fn malformed_type_7_replies_are_errors() {
        let mut frame = bin_reply_frame(1, "dpIp=x");
        let last = frame.len() - 1;
        frame[last] = 0x02;
        assert_eq!(decode_reply(&frame), Err(FrameError::BadMagic(0xee02)));
        let mut frame = bin_reply_frame(1, "dpIp=x");
        frame[10] += 1; // attrLen one past the frame's end
        assert!(matches!(decode_reply(&frame), Err(FrameError::Inconsistent(_))));
        assert!(matches!(
            decode_reply(&[0, 0, 0, 7, 7, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::TooShort { .. })
        ));
    }

    #[test]
    fn type_8_heartbeat_replies() {
        // The golden reply of §7.8, and the one the real server sent the Java SDK (version 2).
        assert_eq!(
            decode_reply(&unhex("00000010086553f1000100000002ffff0000ee01")),
            Ok(Reply::Heartbeat)
        );
        assert_eq!(
            decode_reply(&unhex("00000010086b0f7f8f0200000002ffff0000ee01")),
            Ok(Reply::Heartbeat)
        );
        // With echoed attributes.
        assert_eq!(
            decode_reply(&unhex("00000013086553f1000100000002ffff0003613d62ee01")),
            Ok(Reply::Heartbeat)
        );
        let bad_magic = unhex("00000010086553f1000100000002ffff0000ee00");
        assert_eq!(decode_reply(&bad_magic), Err(FrameError::BadMagic(0xee00)));
        let body_past_end = unhex("00000010086553f1000100000009ffff0000ee01");
        assert!(matches!(decode_reply(&body_past_end), Err(FrameError::Inconsistent(_))));
        assert!(matches!(
            decode_reply(&unhex("00000009086553f10001000000")),
            Err(FrameError::TooShort { .. })
        ));
    }

    #[test]
    fn reply_without_mid_is_reported_as_such() {
        // Code 105 is answered before the attributes are parsed: no mid, no wid.
        let frame = reply_frame("dpIp=0.0.0.0&errCode=105");
        let reply = batch(&frame);
        assert_eq!((reply.err_code, reply.mid, reply.wid), (105, None, None));
    }

    #[test]
    fn last_key_wins_and_pieces_without_equals_are_ignored() {
        let frame = reply_frame("dpIp=a&mid=1&junk&&mid=2=x&errCode=0");
        let reply = batch(&frame);
        assert_eq!(reply.mid, Some(&b"2=x"[..]));
        assert!(reply.is_success());
    }

    #[test]
    fn bad_errcode_is_unknown_error() {
        assert_eq!(batch(&reply_frame("errCode=abc")).err_code, i32::MAX);
        assert_eq!(batch(&reply_frame("errCode=99999999999")).err_code, i32::MAX);
        assert_eq!(batch(&reply_frame("errCode=0")).err_code, 0);
    }

    #[test]
    fn sink_reply_with_empty_body() {
        let attrs = "errCode=118&mid=7";
        let mut frame = Vec::new();
        frame.extend_from_slice(&((9 + attrs.len()) as u32).to_be_bytes());
        frame.extend_from_slice(&[5, 0, 0, 0, 0]);
        frame.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
        frame.extend_from_slice(attrs.as_bytes());
        let reply = batch(&frame);
        assert_eq!((reply.err_code, reply.body), (118, &b""[..]));
    }

    #[test]
    fn split_waits_for_whole_frames_and_fails_fast_on_oversize() {
        let frame = reply_frame("mid=1");
        for cut in 0..frame.len() {
            assert_eq!(split_frame(&frame[..cut], 65_536), Ok(None), "cut {cut}");
            let known = (cut >= 4).then_some(frame.len());
            assert_eq!(frame_len(&frame[..cut], 65_536), Ok(known), "cut {cut}");
        }
        assert_eq!(frame_len(&[0, 0, 0xff, 0xfc], 65_536), Ok(Some(65_536)));
        assert_eq!(
            split_frame(&[0, 1, 0, 0], 65_536),
            Err(FrameError::TooLong { frame_len: 65_540, limit: 65_536 })
        );
        assert_eq!(split_frame(&[0, 0, 0xff, 0xfc], 65_536), Ok(None), "exactly the limit");
        assert_eq!(split_frame(&[0xff, 0xff, 0xff, 0xff], usize::MAX).unwrap(), None);
        assert!(matches!(split_frame(&[0, 0, 0, 0], 65_536), Err(FrameError::TooShort { .. })));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(matches!(decode_reply(&[0, 0, 0, 1, 3]), Err(FrameError::UnexpectedType(3))));
        assert!(matches!(decode_reply(&[0, 0, 0, 1, 7]), Err(FrameError::TooShort { .. })));
        assert!(decode_reply(&[0, 0, 0, 2, 5, 0]).is_err());
        let mut frame = reply_frame("mid=1");
        frame[8] = 200; // bodyLen past the end
        assert!(matches!(decode_reply(&frame), Err(FrameError::Inconsistent(_))));
        let mut frame = reply_frame("mid=1");
        frame[13] = 4; // attrLen one short of the frame's end
        assert!(decode_reply(&frame).is_err());
        let mut frame = reply_frame("mid=1");
        frame[3] += 1; // totalLen disagrees with the slice
        assert!(decode_reply(&frame).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some(len)) = split_frame(&bytes, MAX_REPLY) {
                let _ = decode_reply(&bytes[..len]);
            }
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn type_7_attrs_round_trip(uniq: u32, code in 0i32..200, msg in "[ -%'-~]{0,40}") {
            let attrs = format!("dpIp=1.2.3.4&errCode={code}&errMsg={msg}&groupId=g&streamId=s");
            let frame = bin_reply_frame(uniq, &attrs);
            let reply = batch(&frame);
            prop_assert_eq!(reply.err_code, code);
            prop_assert_eq!(reply.uniq, Some(uniq));
            prop_assert_eq!(reply.attrs, attrs.as_bytes());
        }

        #[test]
        fn cut_or_flipped_binary_replies_never_panic(
            uniq: u32,
            attrs in "[ -~]{0,60}",
            cut in 0usize..80,
            flip in 0usize..80,
        ) {
            let mut frame = bin_reply_frame(uniq, &attrs);
            let at = flip % frame.len();
            frame[at] ^= 0x5a;
            frame.truncate(frame.len().saturating_sub(cut % 8));
            if let Ok(Some(len)) = split_frame(&frame, MAX_REPLY) {
                let _ = decode_reply(&frame[..len]);
            }
            let _ = decode_reply(&frame);
        }

        #[test]
        fn attrs_round_trip(mid in "[0-9a-z:-]{1,20}", code in 0i32..200, msg in "[ -%'-~]{0,40}") {
            let attrs = format!("dpIp=1.2.3.4&errCode={code}&errMsg={msg}&groupId=g&mid={mid}&wid=3");
            let frame = reply_frame(&attrs);
            let reply = batch(&frame);
            prop_assert_eq!(reply.err_code, code);
            prop_assert_eq!(reply.mid, Some(mid.as_bytes()));
            prop_assert_eq!(reply.wid, Some(&b"3"[..]));
        }
    }

    const MAX_REPLY: usize = super::super::MAX_REPLY_FRAME_LEN;
}
