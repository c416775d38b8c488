//! The local DataProxy node over real loopback sockets: what a Go-SDK-like client sees, the
//! node-side rows of the validation table (`PROTOCOL.md` §3.2 steps 9–13, §4.4 steps 6–9),
//! connection-level failures, every fault, the simulated MQ sink of type 7 frames and the
//! accounting.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use inlong_dataproxy::protocol::{
    decode_reply, split_frame, AddColumns, BatchBody, BatchHeader, FrameEncoder, Reply,
    HEARTBEAT_REPLY, HEARTBEAT_REQUEST, MAX_REPLY_FRAME_LEN,
};
use inlong_dataproxy_testkit::{
    wait_until, ErrorInjection, Faults, LocalCluster, NodeConfig, ReplyCorruption, Topic,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking test client speaking the wire protocol by hand.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A decoded reply, owned.
#[derive(Debug, PartialEq)]
enum Answer {
    Heartbeat,
    Batch { code: i32, mid: Option<String>, err_msg: Option<String>, attrs: String },
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn send_batch(&mut self, stream_id: &str, mid: &str, records: &[&[u8]]) {
        let frame = batch_frame("test_group", stream_id, mid, records, &AddColumns::default());
        self.send(&frame);
    }

    /// Reads the next reply, or panics after the read timeout.
    fn answer(&mut self) -> Answer {
        loop {
            match split_frame(&self.buf, MAX_REPLY_FRAME_LEN).expect("reply frame") {
                Some(len) => {
                    let frame: Vec<u8> = self.buf.drain(..len).collect();
                    return match decode_reply(&frame).expect("decodable reply") {
                        Reply::Heartbeat => Answer::Heartbeat,
                        Reply::Batch(reply) => Answer::Batch {
                            code: reply.err_code,
                            mid: reply.mid.map(|m| String::from_utf8(m.to_vec()).unwrap()),
                            err_msg: reply.err_msg_lossy(),
                            attrs: String::from_utf8(reply.attrs.to_vec()).unwrap(),
                        },
                    };
                }
                None => {
                    let mut chunk = [0u8; 65536];
                    let n = self.stream.read(&mut chunk).expect("read reply");
                    assert!(n > 0, "connection closed while waiting for a reply");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    fn code(&mut self) -> i32 {
        match self.answer() {
            Answer::Batch { code, .. } => code,
            Answer::Heartbeat => panic!("heartbeat instead of a batch reply"),
        }
    }

    /// Asserts that the server closes the connection (EOF or reset) without sending anything.
    fn expect_closed_without_reply(&mut self) {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("expected a close, got {n} bytes: {:?}", &chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

fn batch_frame(
    group: &str,
    stream: &str,
    mid: &str,
    records: &[&[u8]],
    cols: &AddColumns,
) -> Vec<u8> {
    let mut body = BatchBody::new();
    for record in records {
        body.push(record).unwrap();
    }
    let header = BatchHeader {
        group_id: group,
        stream_id: stream,
        dt_ms: 1_700_000_000_000,
        mid,
        wid: 0,
        uniq: 1,
    };
    let mut out = Vec::new();
    FrameEncoder::new().encode(&header, &body, cols, usize::MAX, &mut out).unwrap();
    out
}

/// A hand-written frame with any attribute string, like the Go SDK's encoder would write.
fn raw_frame(attrs: &str, records: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        body.extend_from_slice(&(record.len() as u32).to_be_bytes());
        body.extend_from_slice(record);
    }
    let mut frame = Vec::new();
    frame.extend_from_slice(&((9 + body.len() + attrs.len()) as u32).to_be_bytes());
    frame.push(5);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.extend_from_slice(&(attrs.len() as u32).to_be_bytes());
    frame.extend_from_slice(attrs.as_bytes());
    frame
}

fn cluster_with(config: NodeConfig) -> LocalCluster {
    LocalCluster::builder().node_config(config).start().expect("start cluster")
}

fn ledger_config() -> NodeConfig {
    NodeConfig { ledger: true, ..NodeConfig::default() }
}

#[test]
fn go_sdk_like_session_gets_the_replies_go_accepts() {
    let cluster = cluster_with(ledger_config());
    let mut client = Client::connect(cluster.node(0).addr());
    // The Go SDK: a heartbeat, then batches keyed by UUID mids, more heartbeats in between.
    client.send(&HEARTBEAT_REQUEST);
    let uuid_a = "8f14e45f-ceea-467f-a0e6-2f6b1e0a1c11";
    let uuid_b = "c9f0f895-fb98-4b91-9c4b-1f5e0b6f2c22";
    let attrs = |mid: &str, cnt: usize| {
        format!("groupId=test_group&streamId=test_stream&dt=1700000000000&mid={mid}&sid={mid}&wid=3&cnt={cnt}")
    };
    client.send(&raw_frame(&attrs(uuid_a, 2), &[b"a|b|c", b"d|e|f"]));
    client.send(&HEARTBEAT_REQUEST);
    client.send(&raw_frame(&attrs(uuid_b, 1), &[b"g|h|i"]));

    let mut raw = [0u8; 5];
    client.stream.read_exact(&mut raw).unwrap();
    assert_eq!(raw, HEARTBEAT_REPLY, "the heartbeat reply is exactly the 5 bytes Go recognises");
    match client.answer() {
        Answer::Batch { code: 0, mid: Some(mid), attrs, .. } => {
            assert_eq!(mid, uuid_a);
            assert!(attrs.starts_with("dpIp=127.0.0.1&rt="), "{attrs}");
            assert!(attrs.contains("&wid=3&"), "Go routes replies by wid: {attrs}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.answer(), Answer::Heartbeat);
    match client.answer() {
        Answer::Batch { code: 0, mid: Some(mid), .. } => assert_eq!(mid, uuid_b),
        other => panic!("{other:?}"),
    }
    let stats = cluster.stats();
    assert_eq!((stats.batches, stats.records, stats.heartbeats, stats.errors), (2, 3, 2, 0));
    let ledger = cluster.ledger();
    assert_eq!(ledger["test_stream"], vec![&b"a|b|c"[..], b"d|e|f", b"g|h|i"]);
}

#[test]
fn compressed_batches_are_decoded_and_counted() {
    let cluster = cluster_with(ledger_config());
    let mut client = Client::connect(cluster.node(0).addr());
    let records: Vec<Vec<u8>> =
        (0..50).map(|i| format!("record-{i:04}-{}\n", "x".repeat(90)).into_bytes()).collect();
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    client.send_batch("s1", "1", &refs);
    assert_eq!(client.code(), 0);
    let stats = cluster.stats();
    assert_eq!(stats.records, 50);
    assert_eq!(stats.payload_bytes, records.iter().map(|r| r.len() as u64 - 1).sum::<u64>());
    let ledger = cluster.ledger();
    assert_eq!(ledger["s1"][7], records[7][..records[7].len() - 1]);
    assert_eq!(cluster.stream_counts()["s1"], 50);
}

#[test]
fn step_9_reject_mode_answers_2() {
    let cluster = cluster_with(NodeConfig::default());
    cluster.node(0).set_faults(Faults { reject: true, ..Faults::default() });
    let mut client = Client::connect(cluster.node(0).addr());
    client.send_batch("s", "m1", &[b"x"]);
    match client.answer() {
        Answer::Batch { code: 2, err_msg: None, attrs, .. } => {
            // Not rewritten: no rt/rtms, the request attrs are echoed raw.
            assert!(attrs.starts_with("dpIp=127.0.0.1&errCode=2&groupId="), "{attrs}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((cluster.stats().batches, cluster.stats().errors), (0, 1));
}

#[test]
fn step_10_mq_unready_answers_1() {
    let cluster = cluster_with(NodeConfig::default());
    cluster.node(0).update_faults(|f| f.mq_unready = true);
    let mut client = Client::connect(cluster.node(0).addr());
    client.send_batch("s", "m1", &[b"x"]);
    assert_eq!(client.code(), 1);
}

#[test]
fn step_11_blank_group_answers_100() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    client.send(&raw_frame("groupId=&streamId=s&mid=1", &[b"x"]));
    assert_eq!(client.code(), 100);
    client.send(&raw_frame("streamId=s&mid=2", &[b"x"]));
    assert_eq!(client.code(), 100);
}

#[test]
fn step_12_unknown_topic_answers_115_with_the_real_message() {
    let cluster = cluster_with(NodeConfig::default());
    cluster.node(0).update_faults(|f| {
        f.topics =
            Some(vec![Topic { group_id: "test_group".into(), stream_id: Some("known".into()) }]);
    });
    let mut client = Client::connect(cluster.node(0).addr());
    client.send_batch("known", "1", &[b"x"]);
    assert_eq!(client.code(), 0);
    client.send_batch("test_stream", "2", &[b"x"]);
    match client.answer() {
        Answer::Batch { code: 115, err_msg, mid, .. } => {
            assert_eq!(
                err_msg.as_deref(),
                Some("Topic not configured for groupId=(test_group), streamId=(test_stream)")
            );
            assert_eq!(mid.as_deref(), Some("2"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn step_13_channel_full_answers_114_with_rewritten_attrs() {
    let cluster = cluster_with(NodeConfig::default());
    cluster
        .node(0)
        .update_faults(|f| f.errors = Some(ErrorInjection::Next { code: 114, count: 2 }));
    let mut client = Client::connect(cluster.node(0).addr());
    for mid in ["1", "2", "3"] {
        client.send_batch("s", mid, &[b"x"]);
    }
    for expected in [114, 114] {
        match client.answer() {
            Answer::Batch { code, err_msg, attrs, .. } => {
                assert_eq!(code, expected);
                assert!(err_msg.unwrap().starts_with("Put msg event to channel failure"));
                assert!(attrs.contains("&rt="), "{attrs}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(client.code(), 0, "only the next 2 batches fail");
    assert_eq!(cluster.node(0).faults().errors, None);
}

#[test]
fn steps_1_to_8_are_answered_over_the_wire() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    client.send(&raw_frame("groupId=g&mid=1", &[]));
    assert_eq!(client.code(), 105);
    client.send(&raw_frame("groupId=g&&mid=2", &[b"x"]));
    assert_eq!(client.code(), 109);
    client.send(&raw_frame("groupId=g&cp=snappy&mid=3", &[b"not snappy"]));
    assert_eq!(client.code(), 96);
    client.send(&raw_frame("groupId=g&mid=4", &[b""]));
    assert_eq!(client.code(), 123);
    // The connection survives answered errors.
    client.send_batch("s", "5", &[b"ok"]);
    assert_eq!(client.code(), 0);
    assert_eq!(cluster.stats().errors, 4);
}

#[test]
fn oversized_frame_closes_without_reply() {
    let config = NodeConfig { max_msg_length: 1024, ..NodeConfig::default() };
    let cluster = cluster_with(config);
    let mut client = Client::connect(cluster.node(0).addr());
    // totalLen 1021 makes a 1025-byte frame: the length alone is enough to close (fail-fast).
    client.send(&1021u32.to_be_bytes());
    client.expect_closed_without_reply();
    assert_eq!(cluster.stats().protocol_closes, 1);
    // A frame of exactly the limit is accepted.
    let mut client = Client::connect(cluster.node(0).addr());
    let base = batch_frame("g", "s", "1", &[b"x"], &AddColumns::default()).len();
    let record = vec![b'y'; 1024 - base + 1];
    let mut encoder = FrameEncoder::new();
    encoder.set_compression(false);
    let mut body = BatchBody::new();
    body.push(&record).unwrap();
    let header = BatchHeader {
        group_id: "g",
        stream_id: "s",
        dt_ms: 1_700_000_000_000,
        mid: "1",
        wid: 0,
        uniq: 1,
    };
    let mut frame = Vec::new();
    encoder.encode(&header, &body, &AddColumns::default(), 1024, &mut frame).unwrap();
    assert_eq!(frame.len(), 1024);
    client.send(&frame);
    assert_eq!(client.code(), 0);
}

#[test]
fn unknown_message_type_closes_without_reply() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    client.send(&[0, 0, 0, 9, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0]);
    client.expect_closed_without_reply();
}

#[test]
fn is_ack_false_gets_no_reply() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    client.send(&raw_frame("groupId=g&streamId=s&mid=1&isAck=false", &[b"x"]));
    client.send(&HEARTBEAT_REQUEST);
    assert_eq!(client.answer(), Answer::Heartbeat, "nothing came before the heartbeat reply");
    assert_eq!(cluster.stats().records, 1, "the batch was still accepted");
}

#[test]
fn ack_delay_delays_replies_in_order() {
    let cluster = cluster_with(NodeConfig::default());
    let delay = Duration::from_millis(150);
    cluster.node(0).update_faults(|f| f.ack_delay = delay);
    let mut client = Client::connect(cluster.node(0).addr());
    let start = Instant::now();
    client.send_batch("s", "1", &[b"x"]);
    client.send_batch("s", "2", &[b"y"]);
    for mid in ["1", "2"] {
        match client.answer() {
            Answer::Batch { code: 0, mid: Some(got), .. } => assert_eq!(got, mid),
            other => panic!("{other:?}"),
        }
    }
    assert!(start.elapsed() >= delay, "replied after {:?}", start.elapsed());
}

#[test]
fn error_fraction_one_fails_every_batch_and_zero_none() {
    let cluster = cluster_with(NodeConfig::default());
    let node = cluster.node(0);
    node.update_faults(|f| f.errors = Some(ErrorInjection::Fraction { code: 1, fraction: 1.0 }));
    let mut client = Client::connect(node.addr());
    for i in 0..5 {
        client.send_batch("s", &i.to_string(), &[b"x"]);
        assert_eq!(client.code(), 1);
    }
    node.update_faults(|f| f.errors = Some(ErrorInjection::Fraction { code: 1, fraction: 0.0 }));
    client.send_batch("s", "5", &[b"x"]);
    assert_eq!(client.code(), 0);
}

#[test]
fn error_fraction_half_fails_about_half() {
    let cluster = cluster_with(NodeConfig::default());
    cluster
        .node(0)
        .update_faults(|f| f.errors = Some(ErrorInjection::Fraction { code: 114, fraction: 0.5 }));
    let mut client = Client::connect(cluster.node(0).addr());
    let mut failed = 0;
    for i in 0..400 {
        client.send_batch("s", &i.to_string(), &[b"x"]);
        if client.code() != 0 {
            failed += 1;
        }
    }
    assert!((120..=280).contains(&failed), "{failed} of 400 failed");
}

#[test]
fn silent_node_reads_but_never_answers() {
    let cluster = cluster_with(NodeConfig::default());
    cluster.node(0).update_faults(|f| f.silent = true);
    let mut client = Client::connect(cluster.node(0).addr());
    client.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    client.send_batch("s", "1", &[b"x"]);
    client.send(&HEARTBEAT_REQUEST);
    let mut chunk = [0u8; 16];
    let err = client.stream.read(&mut chunk).expect_err("nothing may arrive");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    wait_until("frames dropped", TIMEOUT, || cluster.stats().dropped == 2);
    assert_eq!(cluster.stats().records, 0);
    // Back to normal on the same connection.
    cluster.node(0).update_faults(|f| f.silent = false);
    client.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.send_batch("s", "2", &[b"x"]);
    assert_eq!(client.code(), 0);
}

#[test]
fn close_after_batches_drops_the_nth_batch_and_closes() {
    let cluster = cluster_with(NodeConfig::default());
    cluster.node(0).update_faults(|f| f.close_after_batches = Some(3));
    let mut client = Client::connect(cluster.node(0).addr());
    client.send_batch("s", "1", &[b"x"]);
    client.send_batch("s", "2", &[b"x"]);
    assert_eq!((client.code(), client.code()), (0, 0));
    client.send_batch("s", "3", &[b"x"]);
    client.expect_closed_without_reply();
    let stats = cluster.stats();
    assert_eq!((stats.batches, stats.dropped), (2, 1));
}

#[test]
fn stop_and_restart_listening() {
    let cluster = cluster_with(NodeConfig::default());
    let node = cluster.node(0);
    let mut client = Client::connect(node.addr());
    client.send_batch("s", "1", &[b"x"]);
    assert_eq!(client.code(), 0);
    node.stop();
    assert!(!node.is_listening());
    client.expect_closed_without_reply();
    let refused = TcpStream::connect_timeout(&node.addr(), TIMEOUT).expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    wait_until("connections closed", TIMEOUT, || node.open_connections() == 0);
    node.restart().unwrap();
    let mut client = Client::connect(node.addr());
    client.send_batch("s", "2", &[b"x"]);
    assert_eq!(client.code(), 0);
    assert_eq!(cluster.stats().records, 2, "counters survive a restart");
}

#[test]
fn kill_connections_keeps_listening() {
    let cluster = cluster_with(NodeConfig::default());
    let node = cluster.node(0);
    let mut client = Client::connect(node.addr());
    client.send(&HEARTBEAT_REQUEST);
    assert_eq!(client.answer(), Answer::Heartbeat);
    node.kill_connections();
    client.expect_closed_without_reply();
    let mut client = Client::connect(node.addr());
    client.send(&HEARTBEAT_REQUEST);
    assert_eq!(client.answer(), Answer::Heartbeat);
}

#[test]
fn corrupt_replies_are_garbage_or_oversized() {
    let cluster = cluster_with(NodeConfig::default());
    let node = cluster.node(0);
    node.update_faults(|f| f.corrupt_replies = Some(ReplyCorruption::Garbage));
    let mut client = Client::connect(node.addr());
    client.send_batch("s", "1", &[b"x"]);
    let mut buf = vec![0u8; 16];
    client.stream.read_exact(&mut buf).unwrap();
    let len = split_frame(&buf, MAX_REPLY_FRAME_LEN).unwrap().unwrap();
    assert!(decode_reply(&buf[..len]).is_err(), "garbage must not decode");

    node.update_faults(|f| f.corrupt_replies = Some(ReplyCorruption::Oversized));
    let mut client = Client::connect(node.addr());
    client.send_batch("s", "2", &[b"x"]);
    let mut head = [0u8; 4];
    client.stream.read_exact(&mut head).unwrap();
    assert!(split_frame(&head, MAX_REPLY_FRAME_LEN).is_err(), "oversized must fail fast");
}

#[test]
fn duplicate_mids_are_counted() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    for mid in ["a", "b", "a", "a"] {
        client.send_batch("s", mid, &[b"x"]);
        assert_eq!(client.code(), 0);
    }
    let stats = cluster.stats();
    assert_eq!((stats.batches, stats.duplicates), (4, 2));
}

#[test]
fn a_retry_accepted_by_another_node_is_a_duplicate() {
    let cluster = LocalCluster::start(2).unwrap();
    for node in cluster.nodes() {
        let mut client = Client::connect(node.addr());
        client.send_batch("s", "retried-mid", &[b"x"]);
        assert_eq!(client.code(), 0);
    }
    let extra = cluster.add_node().unwrap();
    let mut client = Client::connect(extra.addr());
    client.send_batch("s", "retried-mid", &[b"x"]);
    assert_eq!(client.code(), 0);
    assert_eq!((cluster.stats().batches, cluster.stats().duplicates), (3, 2));
}

#[test]
fn many_connections_and_streams_are_counted_exactly() {
    let cluster =
        LocalCluster::builder().nodes(2).threads(2).node_config(ledger_config()).start().unwrap();
    let addrs = cluster.node_addrs();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = addrs[t % 2];
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for b in 0..50 {
                    let records: Vec<Vec<u8>> =
                        (0..20).map(|r| format!("{t}-{b}-{r}").into_bytes()).collect();
                    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                    client.send_batch(&format!("stream-{}", b % 5), &format!("{t}-{b}"), &refs);
                }
                for _ in 0..50 {
                    assert_eq!(client.code(), 0);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = cluster.stats();
    assert_eq!((stats.batches, stats.records, stats.duplicates), (200, 4000, 0));
    let counts = cluster.stream_counts();
    assert_eq!(counts.len(), 5);
    assert!(counts.values().all(|&c| c == 800));
    let ledger = cluster.ledger();
    assert_eq!(ledger.values().map(Vec::len).sum::<usize>(), 4000);
}

#[test]
fn manager_lists_the_cluster_nodes() {
    let cluster = LocalCluster::start(2).unwrap();
    let client = reqwest::blocking::Client::builder().timeout(TIMEOUT).build().unwrap();
    let url = format!("{}/test_group?protocolType=TCP", cluster.manager_url());
    let response = client.post(url).send().unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(json["success"], true);
    let nodes = json["data"]["nodeList"].as_array().unwrap();
    let ports: Vec<u64> = nodes.iter().map(|n| n["port"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = cluster.node_addrs().iter().map(|a| u64::from(a.port())).collect();
    assert_eq!(ports, expected);

    // A node added at run time is listed; a removed one is not.
    let added = cluster.add_node().unwrap();
    cluster.remove_node(cluster.node(0).addr());
    let listed = cluster.manager().nodes();
    assert!(listed.contains(&added.addr()) && !listed.contains(&cluster.node(0).addr()));
}

#[test]
fn restart_right_after_stop_reuses_the_port() {
    let cluster = cluster_with(NodeConfig::default());
    let node = cluster.node(0);
    for _ in 0..20 {
        node.stop();
        node.restart().expect("the port is free as soon as stop returns");
    }
    let mut client = Client::connect(node.addr());
    client.send(&HEARTBEAT_REQUEST);
    assert_eq!(client.answer(), Answer::Heartbeat);
}

/// The message of a panic caught by `catch_unwind`.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn wait_until_returns_when_the_condition_holds_and_panics_at_its_limit() {
    let mut calls = 0;
    let took = wait_until("the third look", TIMEOUT, || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3, "it stops looking once the condition holds");
    assert!(took < TIMEOUT, "{took:?}");

    let limit = Duration::from_millis(50);
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| wait_until("something never true", limit, || false));
    let waited = started.elapsed();
    let message = panic_message(&*outcome.expect_err("a condition that never holds panics"));
    assert!(message.contains("waiting for something never true"), "{message}");
    assert!(waited >= limit && waited < TIMEOUT, "{waited:?}");
}

#[test]
fn wait_for_records_returns_once_they_arrived_and_panics_at_its_limit() {
    let cluster = cluster_with(NodeConfig::default());
    let addr = cluster.node(0).addr();
    // The records arrive in the background while the test waits for them.
    let sender = std::thread::spawn(move || {
        let mut client = Client::connect(addr);
        for i in 0..30 {
            client.send_batch("s", &format!("m{i}"), &[b"x"]);
            assert_eq!(client.code(), 0);
        }
    });
    cluster.wait_for_records(30, TIMEOUT);
    assert!(cluster.stats().records >= 30);
    sender.join().expect("the sender");
    assert_eq!(cluster.stats().records, 30);

    let limit = Duration::from_millis(50);
    let started = Instant::now();
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| cluster.wait_for_records(31, limit)));
    let waited = started.elapsed();
    let message = panic_message(&*outcome.expect_err("31 records never arrive"));
    assert!(message.contains("waiting for 31 records accepted (30 so far)"), "{message}");
    assert!(waited >= limit && waited < TIMEOUT, "{waited:?}");
}

/// A type 7 frame (§4.2) with string IDs (extField 0x04) unless `ext` says otherwise.
fn bin_frame(ext: u16, uniq: u32, records: &[&[u8]], attrs: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        body.extend_from_slice(&(record.len() as u32).to_be_bytes());
        body.extend_from_slice(record);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&((25 + body.len() + attrs.len()) as u32).to_be_bytes());
    out.push(7);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&ext.to_be_bytes());
    out.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&uniq.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(attrs.as_bytes());
    out.extend_from_slice(&[0xee, 0x01]);
    out
}

impl Client {
    /// Reads the next type 7 reply: its `uniq` and attributes.
    fn bin_answer(&mut self) -> (u32, String) {
        let mut head = [0u8; 11];
        self.stream.read_exact(&mut head).expect("a type 7 reply");
        assert_eq!(head[4], 7, "{head:?}");
        let uniq = u32::from_be_bytes(head[5..9].try_into().unwrap());
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[9], head[10]])) + 2];
        self.stream.read_exact(&mut rest).unwrap();
        assert_eq!(rest.split_off(rest.len() - 2), [0xee, 0x01], "the magic");
        (uniq, String::from_utf8(rest).unwrap())
    }
}

#[test]
fn sink_acknowledged_type_7_is_answered_after_the_mq_stored_it_without_blocking_others() {
    let latency = Duration::from_millis(400);
    let cluster = cluster_with(NodeConfig { sink_latency: latency, ..ledger_config() });
    let mut client = Client::connect(cluster.node(0).addr());
    let started = Instant::now();
    client.send(&bin_frame(4, 1, &[b"acked-by-mq"], "groupId=g&streamId=s&proxySend=true"));
    client.send(&bin_frame(4, 2, &[b"a", b"b"], "groupId=g&streamId=s"));
    // The plain frame's reply overtakes the one waiting for the MQ, which is not counted yet.
    let (uniq, attrs) = client.bin_answer();
    assert_eq!(uniq, 2);
    assert!(attrs.starts_with("dpIp=127.0.0.1&rtms="), "{attrs}");
    assert!(started.elapsed() < latency, "not held behind the sink");
    assert_eq!(cluster.stats().records, 2);
    let (uniq, attrs) = client.bin_answer();
    assert!(started.elapsed() >= latency);
    assert_eq!(uniq, 1);
    assert!(!attrs.contains("errCode"), "{attrs}");
    assert!(attrs.ends_with("&groupId=g&streamId=s&proxySend=true"), "{attrs}");
    assert_eq!(cluster.stats().records, 3);
    // The ledger is in the order the MQ stored the records.
    assert_eq!(cluster.ledger()["s"], vec![&b"a"[..], b"b", b"acked-by-mq"][..]);

    // The latency changes at run time, like every fault.
    cluster.node(0).update_faults(|f| f.sink_latency = Some(Duration::ZERO));
    let started = Instant::now();
    client.send(&bin_frame(4, 3, &[b"x"], "groupId=g&streamId=s&syncSend=true"));
    assert_eq!(client.bin_answer().0, 3);
    assert!(started.elapsed() < latency);
}

#[test]
fn sink_errors_116_to_119_are_answered_and_not_counted() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    let sink_frame = |uniq| bin_frame(4, uniq, &[b"x"], "groupId=g&streamId=s&proxySend=true");
    for (uniq, code) in [(10, 116), (11, 117), (12, 118), (13, 119)] {
        cluster
            .node(0)
            .update_faults(|f| f.sink_errors = Some(ErrorInjection::Next { code, count: 1 }));
        client.send(&sink_frame(uniq));
        let (got, attrs) = client.bin_answer();
        assert_eq!(got, uniq);
        assert!(attrs.starts_with(&format!("dpIp=127.0.0.1&errCode={code}&errMsg=")), "{attrs}");
    }
    assert_eq!((cluster.stats().records, cluster.stats().errors), (0, 4));
    // Every second sink-acknowledged frame fails; frames without the ack never reach the sink.
    let every_2nd = ErrorInjection::EveryNth { code: 118, n: 2, seen: 0 };
    cluster.node(0).update_faults(|f| f.sink_errors = Some(every_2nd));
    client.send(&bin_frame(4, 20, &[b"x"], "groupId=g&streamId=s"));
    assert!(!client.bin_answer().1.contains("errCode"));
    let mut codes = Vec::new();
    for uniq in 21..25 {
        client.send(&sink_frame(uniq));
        let (_, attrs) = client.bin_answer();
        codes.push(attrs.contains("errCode=118"));
    }
    assert_eq!(codes, [false, true, false, true]);
    assert_eq!(cluster.stats().records, 3);
}

#[test]
fn type_7_handler_checks_come_after_reject_mode_and_before_the_topic() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    let attrs = "groupId=g&streamId=s";
    // Numeric IDs: the local node has no mapping, as a real node without it answers 121.
    client.send(&bin_frame(0, 1, &[b"x"], attrs));
    assert!(client.bin_answer().1.contains("&errCode=121&"));
    client.send(&bin_frame(0x0c, 2, &[b"x"], attrs));
    assert!(client.bin_answer().1.contains("&errCode=112&"));
    client.send(&bin_frame(4, 3, &[b"x"], "streamId=s"));
    assert!(client.bin_answer().1.contains("&errCode=100"));
    cluster.node(0).update_faults(|f| f.reject = true);
    client.send(&bin_frame(0, 4, &[b"x"], attrs));
    let (uniq, reply) = client.bin_answer();
    assert_eq!((uniq, reply.as_str()), (4, "dpIp=127.0.0.1&errCode=2&groupId=g&streamId=s"));
    assert_eq!(cluster.stats().records, 0);
}

#[test]
fn type_8_heartbeat_is_answered_with_the_servers_clock() {
    let cluster = cluster_with(NodeConfig::default());
    let mut client = Client::connect(cluster.node(0).addr());
    client.send(&[0, 0, 0, 0x11, 8, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 3, b'a', b'=', b'b', 0xee, 0x01]);
    let mut reply = [0u8; 23];
    client.stream.read_exact(&mut reply).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let secs = u64::from(u32::from_be_bytes(reply[5..9].try_into().unwrap()));
    assert!(secs.abs_diff(now.as_secs()) <= 5, "{secs}");
    assert_eq!(reply[..5], [0, 0, 0, 0x13, 8]);
    assert_eq!(reply[9..], [2, 0, 0, 0, 2, 0xff, 0xff, 0, 3, b'a', b'=', b'b', 0xee, 0x01]);
    assert_eq!(cluster.stats().heartbeats, 1);
}
