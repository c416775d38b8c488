//! Feeds the client's reply decoder binary replies (msgType 7 batch replies, type 8 heartbeat
//! replies) whose outer frame is always consistent: the fuzzer's bytes become the content after
//! the type byte, so every input reaches the `uniq`, `attrLen`, `bodyLen` and magic checks
//! instead of stopping at the length field.
#![no_main]

use inlong_dataproxy::protocol::{
    decode_reply, split_frame, Reply, MAX_REPLY_FRAME_LEN, MSG_TYPE_BIN_HEARTBEAT,
    MSG_TYPE_BIN_MULTI_BODY,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, content)) = data.split_first() else { return };
    let msg_type =
        if selector & 1 == 0 { MSG_TYPE_BIN_MULTI_BODY } else { MSG_TYPE_BIN_HEARTBEAT };
    let content = &content[..content.len().min(MAX_REPLY_FRAME_LEN - 5)];
    let mut frame = Vec::with_capacity(5 + content.len());
    frame.extend_from_slice(&u32::try_from(1 + content.len()).unwrap().to_be_bytes());
    frame.push(msg_type);
    frame.extend_from_slice(content);
    assert_eq!(split_frame(&frame, MAX_REPLY_FRAME_LEN), Ok(Some(frame.len())));
    match decode_reply(&frame) {
        Ok(Reply::Batch(reply)) => {
            assert_eq!(msg_type, MSG_TYPE_BIN_MULTI_BODY);
            assert!(reply.uniq.is_some(), "a type 7 reply carries its uniq");
            // The attributes lie inside the frame, between the header and the magic.
            assert!(reply.attrs.len() + 13 == frame.len());
            let _ = reply.err_msg_lossy();
        }
        Ok(Reply::Heartbeat) => assert_eq!(msg_type, MSG_TYPE_BIN_HEARTBEAT),
        Err(_) => {}
    }
});
