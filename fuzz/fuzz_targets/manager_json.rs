//! Feeds arbitrary bytes to the Manager answer parser (`getIpList` JSON, `PROTOCOL.md` §5.3):
//! it must never panic, and what it accepts must be well-formed.
#![no_main]

use inlong_dataproxy::discovery::parse_node_list;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse_node_list(data) {
        for endpoint in &list.endpoints {
            assert_ne!(endpoint.port(), 0);
            assert!(!endpoint.host().is_empty());
        }
        assert!(list.max_packet_length.is_none_or(|len| len > 0));
    }
});
