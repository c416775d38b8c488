//! The DataProxy TCP wire codec: pure functions and buffers, no sockets, no clock.
//!
//! This module owns the bytes of `PROTOCOL.md` §1–§2 and §4: the outer `totalLen` frame, the
//! msgType 5 batch frame as the Go SDK writes it (body entries, the Snappy raw block rule,
//! attributes in the Go order) and the binary msgType 7 frame of the Java and C++ SDKs, the type
//! 1 and type 8 heartbeats, and the decoder for the server's replies to all of them (§3.7,
//! §3.8, §4.4, §4.5). It also owns the input validation the Go SDK lacks (§6.13): anything that would corrupt
//! the `k=v&k=v` attribute string, an empty entry, or a frame over the server's size limit is a
//! typed [`Error`](crate::Error) here, before a byte reaches the wire.
//!
//! Callers pass everything that varies (`dt`, `mid`, `wid`, the host IP) as inputs, so every
//! output is reproducible in tests. Nothing here allocates per record: bodies and frames are
//! appended to caller-owned buffers that the shard reuses.

// Parts of this module serve only the testkit, the fuzz targets and the benches, which reach it
// through the `unstable` feature; without it they are unused here.
#![cfg_attr(not(feature = "unstable"), allow(dead_code, unused_imports))]

mod attrs;
mod batch;
mod reply;

pub use attrs::{validate_id, validate_payload, AddColumns, RESERVED_ATTR_KEYS};
pub use batch::{
    BatchBody, BatchHeader, EncodedFrame, FrameBudget, FrameEncoder, FrameFormat,
    BIN_FRAME_OVERHEAD, BIN_MAX_ATTR_LEN,
};
pub use reply::{decode_reply, frame_len, split_frame, BatchReply, FrameError, Reply};

/// Message type of the Go SDK's heartbeat (`MSG_HEARTBEAT`).
pub const MSG_TYPE_HEARTBEAT: u8 = 1;
/// Message type of the Go SDK's data batches (`MSG_MULTI_BODY`).
pub const MSG_TYPE_MULTI_BODY: u8 = 5;
/// Message type of the binary multi-body frame (`MSG_BIN_MULTI_BODY`, §4.2): the Java and C++
/// SDKs' default.
pub const MSG_TYPE_BIN_MULTI_BODY: u8 = 7;
/// Message type of the binary heartbeat (`MSG_BIN_HEARTBEAT`, §4.5).
pub const MSG_TYPE_BIN_HEARTBEAT: u8 = 8;
/// Flag bit of the message type byte: the body is Snappy-compressed (raw block), type 7 only
/// (§4.3).
pub const MSG_FLAG_SNAPPY: u8 = 0x20;
/// The magic number that ends every type 7 and type 8 frame, request and reply (§4.2, §4.5).
pub const BIN_MAGIC: u16 = 0xEE01;
/// Type 7 `extField` bit: the group and stream IDs are carried as strings in the attributes
/// (`groupId=`/`streamId=`) and the numeric IDs are ignored (§4.3).
pub const EXT_FIELD_IDS_AS_STRINGS: u16 = 0x0004;
/// The server resolves the message type with `type & 0x1F`; the top three bits are flags (§4.3).
pub const MSG_TYPE_MASK: u8 = 0x1F;

/// A body is Snappy-compressed when its uncompressed length is strictly greater than this (§2.3).
pub const COMPRESS_THRESHOLD: usize = 256;

/// The frame size limit (`4 + totalLen`) of the shipped DataProxy configuration (§1.3). The
/// Manager's `maxPacketLength` overrides it.
pub const DEFAULT_MAX_PACKET_LEN: usize = 524_288;

/// The largest reply frame (`4 + totalLen`) the Go and Java SDKs accept (§1.3).
pub const MAX_REPLY_FRAME_LEN: usize = 65_536;

/// Bytes of a msgType 5 frame that are neither body nor attributes:
/// `totalLen u32 | type u8 | bodyLen u32 | … | attrLen u32 | …`.
pub const TEXT_FRAME_OVERHEAD: usize = 13;

/// The Go SDK's heartbeat request: `totalLen=9 | 0x01 | bodyLen=0 | attrLen=0` (§7.6).
pub const HEARTBEAT_REQUEST: [u8; 13] = [0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0];

/// The server's heartbeat reply: `totalLen=1 | 0x01` (§3.8, §7.6).
pub const HEARTBEAT_REPLY: [u8; 5] = [0, 0, 0, 1, 1];

/// Appends the Go SDK's 13-byte type 1 heartbeat request to `out`.
pub fn encode_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&HEARTBEAT_REQUEST);
}

/// The version byte of the type 8 heartbeats this SDK sends: 1, as the C++ SDK, whose
/// `dataTime` is in seconds (the Java SDK's version 2 puts truncated milliseconds there, §4.5).
pub const BIN_HEARTBEAT_VERSION: u8 = 1;

/// Length of the type 8 heartbeat request this SDK sends (no attributes).
pub const BIN_HEARTBEAT_LEN: usize = 18;

/// The 18-byte type 8 heartbeat request (§4.5): `totalLen=14 | 0x08 | dataTime u32 (seconds) |
/// version=1 | bodyLen=0 | attrLen=0 | 0xEE01`.
pub fn bin_heartbeat(unix_secs: u32) -> [u8; BIN_HEARTBEAT_LEN] {
    let mut frame = [0u8; BIN_HEARTBEAT_LEN];
    frame[..4].copy_from_slice(&14u32.to_be_bytes());
    frame[4] = MSG_TYPE_BIN_HEARTBEAT;
    frame[5..9].copy_from_slice(&unix_secs.to_be_bytes());
    frame[9] = BIN_HEARTBEAT_VERSION;
    // bodyLen (4 bytes) and attrLen (2 bytes) stay 0.
    frame[16..].copy_from_slice(&BIN_MAGIC.to_be_bytes());
    frame
}

/// Appends the decimal digits of `value` to `out` without allocating.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (value % 10) as u8;
        digits[at] = b'0' + digit;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Reads a big-endian `u32` at `at`; the caller has checked the bounds.
#[inline]
pub fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a big-endian `u16` at `at` (the binary frames' short fields); the caller has checked
/// the bounds.
#[inline]
pub fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn heartbeat_matches_golden_vector_7_6() {
        let mut out = Vec::new();
        encode_heartbeat(&mut out);
        assert_eq!(hex(&out), "00000009010000000000000000");
        assert_eq!(hex(&HEARTBEAT_REPLY), "0000000101");
    }

    #[test]
    fn bin_heartbeat_matches_golden_vector_7_8() {
        assert_eq!(hex(&bin_heartbeat(0x6553_f100)), "0000000e086553f10001000000000000ee01");
    }

    #[test]
    fn decimal_formatting() {
        for value in [0u64, 7, 10, 99, 1_700_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
