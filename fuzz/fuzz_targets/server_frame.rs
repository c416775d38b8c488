//! Feeds arbitrary bytes to the local DataProxy's frame path: splitting with the real size limit,
//! then the server-side decoder (every message type) in both ingest modes, then the reply
//! encoders.
#![no_main]

use inlong_dataproxy::protocol::split_frame;
use inlong_dataproxy_testkit::codec::{
    decode_request, encode_bin_heartbeat_reply, encode_bin_reply, encode_reply_with_body,
    stored_attrs, stored_bin_attrs, IngestMode, ReplyTo, Request,
};
use libfuzzer_sys::fuzz_target;

fn encode(out: &mut Vec<u8>, reply_to: ReplyTo, error: Option<(i32, Option<&str>)>, echo: &str) {
    match reply_to {
        ReplyTo::Text(msg_type) => {
            encode_reply_with_body(out, msg_type, b"2", "127.0.0.1", error, Some(echo));
        }
        ReplyTo::Bin(uniq) => encode_bin_reply(out, uniq, "127.0.0.1", error, Some(echo)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    let mut rest = data;
    while let Ok(Some(len)) = split_frame(rest, 1 << 20) {
        for mode in [IngestMode::Full, IngestMode::CountOnly] {
            match decode_request(&rest[..len], mode, &mut scratch) {
                Ok(Request::Batch(batch)) => {
                    let records = batch.records().count();
                    assert!(mode == IngestMode::CountOnly || records == batch.count as usize);
                    let echo = match batch.reply_to {
                        ReplyTo::Text(_) => stored_attrs(&batch.attrs, 1),
                        ReplyTo::Bin(_) => stored_bin_attrs(&batch.attrs, 1),
                    };
                    encode(&mut out, batch.reply_to, None, &echo);
                }
                Ok(Request::Rejected(rejection)) => {
                    let error = Some((rejection.code, rejection.err_msg.as_deref()));
                    let echo = rejection.echo.as_deref().unwrap_or_default();
                    encode(&mut out, rejection.reply_to, error, echo);
                }
                Ok(Request::BinHeartbeat(heartbeat)) => {
                    encode_bin_heartbeat_reply(&mut out, 1, &heartbeat);
                }
                Ok(Request::Heartbeat) | Err(_) => {}
            }
        }
        rest = &rest[len..];
    }
});
