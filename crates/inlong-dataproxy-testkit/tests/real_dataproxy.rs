//! Replays the frames fed to InLong's real DataProxy (`tests/data/`, see its README) against the
//! local node, each on a fresh node and a connection of its own over loopback, and checks that
//! the node does what the real server did: the verdict (reply, no reply, connection closed), the
//! reply's type, `errCode`, `errMsg`, attributes (times normalised) and layout, and for accepted
//! frames the records and bytes the node counted and kept in its ledger.
//!
//! A frame without a reply is told from a slow reply without sleeping: once the node counted the
//! frame, a type 1 heartbeat goes on the same connection, and its reply must be the next frame.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inlong_dataproxy::protocol::{split_frame, HEARTBEAT_REPLY, HEARTBEAT_REQUEST};
use inlong_dataproxy_testkit::{wait_until, DataProxyNode, NodeConfig};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The raw frames of a `.bin` file: `u32 totalLen` big-endian, then `totalLen` bytes.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = 4 + u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        frames.push(&rest[..len]);
        rest = &rest[len..];
    }
    frames
}

fn verdicts(jsonl: &str) -> Vec<Value> {
    jsonl.lines().map(|line| serde_json::from_str(line).expect("a JSON verdict")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What came back on the connection.
#[derive(Debug)]
enum Outcome {
    Frame(Vec<u8>),
    Closed,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buf: Vec::new() }
    }

    /// The next frame or the close, within [`TIMEOUT`] (an error past it).
    fn next(&mut self) -> Result<Outcome, String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(len) = split_frame(&self.buf, 1 << 20).map_err(|e| e.to_string())? {
                return Ok(Outcome::Frame(self.buf.drain(..len).collect()));
            }
            if Instant::now() > deadline {
                return Err("no reply and no close within the timeout".to_owned());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Outcome::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Outcome::Closed),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err("no reply and no close within the timeout".to_owned())
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Sends a type 1 heartbeat: its reply must be the next frame (nothing else was queued).
    fn expect_nothing_queued(&mut self) -> Result<(), String> {
        self.stream.write_all(&HEARTBEAT_REQUEST).map_err(|e| e.to_string())?;
        match self.next()? {
            Outcome::Frame(frame) if frame == HEARTBEAT_REPLY => Ok(()),
            other => Err(format!("expected only the heartbeat reply, got {other:?}")),
        }
    }
}

/// `key=value` pieces split as the reference parser split them: on `&`, then the first `=`; the
/// first occurrence wins.
fn attr<'a>(attrs: &'a str, key: &str) -> Option<&'a str> {
    attrs
        .split('&')
        .find_map(|piece| piece.split_once('=').filter(|(k, _)| *k == key))
        .map(|kv| kv.1)
}

/// Replaces the values of the server's receive-time keys (those the request did not carry) by
/// `<t>`, after checking ours are the current time.
fn normalise(attrs: &str, request_attrs: &str, ours: bool) -> Result<String, String> {
    let mut out = Vec::new();
    for piece in attrs.split('&') {
        match piece.split_once('=') {
            Some((key @ ("rt" | "rtms"), value)) if attr(request_attrs, key).is_none() => {
                if ours {
                    let ms: u64 = value.parse().map_err(|_| format!("{key}={value} not a time"))?;
                    if ms.abs_diff(now_ms()) > 60_000 {
                        return Err(format!("{key}={value} is not the current time"));
                    }
                }
                out.push(format!("{key}=<t>"));
            }
            _ => out.push(piece.to_owned()),
        }
    }
    Ok(out.join("&"))
}

/// The attribute string of a request frame (txt or type 7), for [`normalise`].
fn request_attrs(frame: &[u8]) -> String {
    let be32 = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
    let be16 = |at: usize| usize::from(u16::from_be_bytes(frame[at..at + 2].try_into().unwrap()));
    let range = match frame[4] & 0x1f {
        2..=6 => {
            let body_len = be32(5);
            let Some(attr_len) = frame.get(9 + body_len..13 + body_len).map(|_| be32(9 + body_len))
            else {
                return String::new();
            };
            13 + body_len..13 + body_len + attr_len
        }
        7 => {
            let body_len = be32(21);
            let attr_len = be16(25 + body_len);
            27 + body_len..27 + body_len + attr_len
        }
        _ => return String::new(),
    };
    frame.get(range).map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default()
}

/// The fields of a reply frame that must agree: type, the txt body or type 7 `uniq`, attributes
/// (normalised), errCode, errMsg, and the frame length.
fn reply_fields(frame: &[u8], request: &[u8], ours: bool) -> Result<Vec<String>, String> {
    let be32 = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
    let msg_type = frame[4];
    let (head, attrs) = match msg_type {
        7 => {
            let attr_len = usize::from(u16::from_be_bytes([frame[9], frame[10]]));
            let magic = &frame[11 + attr_len..];
            (format!("uniq={} magic={magic:02x?}", be32(5)), &frame[11..11 + attr_len])
        }
        8 => {
            // The server's clock in seconds, then the version, bodyLen 2, load, attrs, magic.
            let secs = u64::from(be32(5));
            if ours && secs.abs_diff(now_ms() / 1000) > 60 {
                return Err(format!("heartbeat time {secs} is not the current time"));
            }
            return Ok(vec![
                format!("type 8 {:02x?}", &frame[9..]),
                format!("len {}", frame.len()),
            ]);
        }
        _ => {
            let body_len = be32(5) as usize;
            let body = &frame[9..9 + body_len];
            (format!("body={body:02x?}"), &frame[13 + body_len..])
        }
    };
    let attrs = String::from_utf8_lossy(attrs);
    let request = request_attrs(request);
    Ok(vec![
        format!("msgType {msg_type}"),
        head,
        format!("errCode {:?}", attr(&attrs, "errCode")),
        format!("errMsg {:?}", attr(&attrs, "errMsg")),
        format!("attrs {}", normalise(&attrs, &request, ours)?),
        format!("len {}", frame.len()),
    ])
}

/// Feeds one frame to a fresh node and compares with the real server's verdict.
fn replay(runtime: &tokio::runtime::Runtime, frame: &[u8], expected: &Value) -> Result<(), String> {
    let config =
        NodeConfig { dp_ip: "127.0.0.1".to_owned(), ledger: true, ..NodeConfig::default() };
    let node = DataProxyNode::start(runtime.handle(), "127.0.0.1:0".parse().unwrap(), config)
        .map_err(|e| e.to_string())?;
    let result = replay_on(&node, frame, expected);
    node.stop();
    result
}

fn replay_on(node: &DataProxyNode, frame: &[u8], expected: &Value) -> Result<(), String> {
    let mut conn = Conn::open(node.addr());
    conn.stream.write_all(frame).map_err(|e| e.to_string())?;
    let verdict = expected["verdict"].as_str().unwrap();
    let replies = expected["replies"].as_array().unwrap();
    match verdict {
        "closed" => match conn.next()? {
            Outcome::Closed => {}
            other => return Err(format!("expected the connection closed, got {other:?}")),
        },
        "accepted_no_reply" => {
            wait_until("the frame counted", TIMEOUT, || node.stats().batches == 1);
            conn.expect_nothing_queued()?;
        }
        _ => {
            let Outcome::Frame(ours) = conn.next()? else {
                return Err("connection closed instead of a reply".to_owned());
            };
            let theirs = unhex(replies[0]["hex"].as_str().unwrap());
            let (ours, theirs) =
                (reply_fields(&ours, frame, true)?, reply_fields(&theirs, frame, false)?);
            if ours != theirs {
                return Err(format!("reply differs:\n  ours   {ours:?}\n  theirs {theirs:?}"));
            }
            conn.expect_nothing_queued()?;
        }
    }
    // The records the real server forwarded to the MQ, and what the node counted.
    let events = expected["events"].as_array().unwrap();
    let records: u64 = events.iter().map(|e| e["records"].as_u64().unwrap()).sum();
    let bytes: u64 = events.iter().map(|e| e["record_bytes"].as_u64().unwrap()).sum();
    let stats = node.stats();
    if (stats.records, stats.payload_bytes) != (records, bytes) {
        return Err(format!(
            "counted {} records / {} bytes, the real server forwarded {records} / {bytes}",
            stats.records, stats.payload_bytes
        ));
    }
    let first: Vec<&str> = events
        .iter()
        .flat_map(|e| e["first_records"].as_array().unwrap())
        .map(|r| r.as_str().unwrap())
        .collect();
    let ledger: Vec<_> = node.ledger().into_values().flatten().collect();
    for (i, record) in first.iter().enumerate() {
        if ledger.get(i).map(|r| &r[..]) != Some(record.as_bytes()) {
            return Err(format!("ledger record {i} differs from the forwarded {record:?}"));
        }
    }
    Ok(())
}

/// Replays a whole reference file; returns the names of the frames that disagree, with why.
fn replay_file(bin: &[u8], jsonl: &str, names: Option<&str>) -> (usize, Vec<String>) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let frames = frames(bin);
    let verdicts = verdicts(jsonl);
    assert_eq!(frames.len(), verdicts.len(), "one verdict per frame");
    let names: Vec<String> = match names {
        Some(names) => names.lines().map(str::to_owned).collect(),
        None => (0..frames.len()).map(|i| format!("frame {i}")).collect(),
    };
    let mut failures = Vec::new();
    for ((frame, expected), name) in frames.iter().zip(&verdicts).zip(&names) {
        if let Err(why) = replay(&runtime, frame, expected) {
            failures.push(format!("{name} ({}): {why}", expected["verdict"]));
        }
    }
    (frames.len(), failures)
}

#[test]
fn every_reference_frame_gets_the_real_servers_verdict() {
    let (t5_total, t5_failures) = replay_file(
        include_bytes!("data/t5-frames.bin"),
        include_str!("data/t5-verdicts.jsonl"),
        Some(include_str!("data/t5-frames.names")),
    );
    let (java_total, java_failures) = replay_file(
        include_bytes!("data/java-sdk-frames.bin"),
        include_str!("data/java-sdk-frames.verdicts.jsonl"),
        None,
    );
    println!(
        "{} of {t5_total} type 5 frames + {} of {java_total} Java SDK frames agree",
        t5_total - t5_failures.len(),
        java_total - java_failures.len()
    );
    for failure in t5_failures.iter().chain(&java_failures) {
        println!("DISAGREE {failure}");
    }
    assert_eq!((t5_total, java_total), (37, 16));
    assert!(t5_failures.is_empty() && java_failures.is_empty(), "some frames disagree");
}
