//! Feeds arbitrary bytes to the client's reply path: frame splitting, then reply decoding, the way
//! a connection's read loop does (several frames per buffer).
#![no_main]

use inlong_dataproxy::protocol::{decode_reply, split_frame, Reply, MAX_REPLY_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = split_frame(rest, MAX_REPLY_FRAME_LEN) {
        if let Ok(Reply::Batch(reply)) = decode_reply(&rest[..len]) {
            // Every borrowed field lies inside the frame.
            let _ = reply.err_msg_lossy();
            assert!(reply.attrs.len() < len);
        }
        rest = &rest[len..];
    }
    let _ = decode_reply(data);
});
