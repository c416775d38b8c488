//! Feeds arbitrary bytes to the local DataProxy's frame path: splitting with the real size limit,
//! then the server-side decoder in both ingest modes, then the reply encoder.
#![no_main]

use inlong_dataproxy::protocol::split_frame;
use inlong_dataproxy_testkit::codec::{decode_request, encode_reply, IngestMode, Request};
use libfuzzer_sys::fuzz_target;

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
                    encode_reply(&mut out, 5, "127.0.0.1", None, Some(&batch.attrs));
                }
                Ok(Request::Rejected(rejection)) => {
                    let error = Some((rejection.code, rejection.err_msg.as_deref()));
                    encode_reply(&mut out, 5, "127.0.0.1", error, rejection.echo.as_deref());
                }
                Ok(Request::Heartbeat) | Err(_) => {}
            }
        }
        rest = &rest[len..];
    }
});
