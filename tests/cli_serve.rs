//! `inlong-dataproxy serve` as a user runs it: the Manager URL on the first line of stdout (and its
//! base address for the Java SDK on stderr), the nodes it lists really answer, SIGINT/SIGTERM
//! print one JSON line of totals and exit 0, and with `--control` the fault commands on stdin act
//! on the nodes, each answered by one line, and the end of stdin shuts the server down like
//! SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inlong_dataproxy::protocol::{
    decode_reply, split_frame, AddColumns, BatchBody, BatchHeader, FrameEncoder, Reply,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Kills the child if the test fails half-way, so no server outlives its test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines on a thread so every wait has a deadline.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    read_lines(child.stdout.take().unwrap())
}

/// Reads the lines of `output` on a thread.
fn read_lines(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn serve(args: &[&str]) -> (Server, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inlong-dataproxy"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let rx = lines(&mut child);
    (Server(child), rx)
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(TIMEOUT).build().unwrap()
}

/// The Manager's answer for `group`.
fn post(url: &str, group: &str) -> serde_json::Value {
    let response = http().post(format!("{url}/{group}?protocolType=TCP")).send().unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_str(&response.text().unwrap()).unwrap()
}

/// Sends one batch on a new connection and checks that it was accepted.
fn send_one_batch(addr: &str, records: usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let code = send_batch_on(&mut stream, records);
    assert_eq!(code, 0, "errCode {code}");
}

/// Sends one batch on `stream` and returns the reply's `errCode`.
fn send_batch_on(stream: &mut TcpStream, records: usize) -> i32 {
    let mut body = BatchBody::new();
    for i in 0..records {
        body.push(format!("record {i}").as_bytes()).unwrap();
    }
    let header = BatchHeader {
        group_id: "test_group",
        stream_id: "s",
        dt_ms: 1,
        mid: "cli-1",
        wid: 0,
        uniq: 1,
    };
    let mut frame = Vec::new();
    FrameEncoder::new()
        .encode(&header, &body, &AddColumns::default(), usize::MAX, &mut frame)
        .unwrap();
    stream.write_all(&frame).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let len = loop {
        if let Some(len) = split_frame(&buf, 65_536).unwrap() {
            break len;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the reply");
        buf.extend_from_slice(&chunk[..n]);
    };
    match decode_reply(&buf[..len]).unwrap() {
        Reply::Batch(reply) => reply.err_code,
        Reply::Heartbeat => panic!("heartbeat"),
    }
}

fn signal(server: &Server, name: &str) {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(server.0.id().to_string()).status();
    assert!(status.unwrap().success());
}

#[test]
fn serve_prints_the_manager_url_serves_and_reports_totals_on_sigint() {
    let (mut server, rx) = serve(&["--nodes", "2"]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/inlong/manager/openapi/dataproxy/getIpList"), "{url}");

    let json = post(&url, "test_group");
    let nodes = json["data"]["nodeList"].as_array().expect("node list");
    assert_eq!(nodes.len(), 2);
    for node in nodes {
        let addr = format!("{}:{}", node["ip"].as_str().unwrap(), node["port"]);
        send_one_batch(&addr, 3);
    }

    signal(&server, "INT");
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    assert_eq!(
        summary, r#"{"batches":2,"records":6,"payload_bytes":48,"errors":0,"duplicates":1}"#,
        "both batches used mid cli-1, so the second counts as a duplicate"
    );
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn serve_exits_cleanly_on_sigterm_with_fixed_ports_and_known_groups() {
    let port = free_port();
    let (mut server, rx) = serve(&["--manager-port", &port.to_string(), "--groups", "g1,g2"]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    assert!(url.starts_with(&format!("http://127.0.0.1:{port}/")), "{url}");
    assert_eq!(post(&url, "g2")["success"], true);
    let unknown = post(&url, "nope");
    assert_eq!(unknown["success"], false);
    assert_eq!(unknown["errMsg"], "group not found by groupId=nope");
    signal(&server, "TERM");
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    let totals: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(totals["records"], 0);
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn serve_refuses_bad_flags_and_busy_ports_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_inlong-dataproxy"))
        .args(["serve", "--nodes", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_inlong-dataproxy"))
        .args(["serve", "--manager-port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot start the local DataProxy + Manager"), "{stderr}");
}

#[test]
fn serve_prints_the_manager_base_address_on_stderr_for_the_java_sdk() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inlong-dataproxy"))
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let err_rx = read_lines(child.stderr.take().unwrap());
    let rx = lines(&mut child);
    let mut server = Server(child);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    assert!(url.ends_with("/inlong/manager/openapi/dataproxy/getIpList"), "{url}");
    let serving = err_rx.recv_timeout(TIMEOUT).expect("node line");
    assert!(serving.starts_with("serving 1 DataProxy node(s) at 127.0.0.1:"), "{serving}");
    let line = err_rx.recv_timeout(TIMEOUT).expect("base address line");
    let base = line.strip_prefix("manager base address (Java SDK): ").expect(&line);
    assert_eq!(format!("{base}/inlong/manager/openapi/dataproxy/getIpList"), url);

    // What the Java SDK sends: its own path after the base address, a form body.
    let response = http()
        .post(format!("{base}/inlong/manager/openapi/dataproxy/getIpList/test_group"))
        .header("content-type", "application/x-www-form-urlencoded; charset=UTF-8")
        .body("ip=127.0.0.1&protocolType=TCP")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(json["data"]["nodeList"].as_array().map(Vec::len), Some(1), "{json}");
    signal(&server, "TERM");
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    assert!(summary.starts_with(r#"{"batches":0,"#), "{summary}");
    assert!(server.0.wait().unwrap().success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serve_exposes_its_counters_on_the_metrics_address() {
    let port = free_port();
    let (mut server, rx) = serve(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    let json = post(&url, "test_group");
    let node = &json["data"]["nodeList"][0];
    let addr = format!("{}:{}", node["ip"].as_str().unwrap(), node["port"]);
    send_one_batch(&addr, 3);
    let response = http().get(format!("http://127.0.0.1:{port}/metrics")).send().unwrap();
    assert_eq!(response.status(), 200);
    let response = response.text().unwrap();
    for (name, value) in
        [("batches", 1), ("records", 3), ("errors", 0), ("duplicates", 0), ("connections", 1)]
    {
        let name = format!("local_dataproxy_{name}_total");
        assert!(response.contains(&format!("# TYPE {name} counter\n")), "{response}");
        let expected = format!("{name}{{node=\"{addr}\"}} {value}\n");
        assert!(response.contains(&expected), "{response}");
    }
    signal(&server, "TERM");
    assert!(server.0.wait().unwrap().success());
}

/// `serve --control`: the server, its stdin for commands, and its stdout lines.
fn serve_with_control(args: &[&str]) -> (Server, ChildStdin, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inlong-dataproxy"))
        .args(["serve", "--control"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdin = child.stdin.take().unwrap();
    let rx = lines(&mut child);
    (Server(child), stdin, rx)
}

/// Sends one command line and returns its answer line.
fn command(stdin: &mut ChildStdin, rx: &mpsc::Receiver<String>, line: &str) -> String {
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    rx.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("no answer to {line:?}: {e}"))
}

fn node_addrs(url: &str) -> Vec<String> {
    let json = post(url, "test_group");
    let nodes = json["data"]["nodeList"].as_array().expect("node list");
    nodes.iter().map(|node| format!("{}:{}", node["ip"].as_str().unwrap(), node["port"])).collect()
}

#[test]
fn serve_control_applies_faults_answers_every_line_and_stops_at_the_end_of_stdin() {
    let (mut server, mut stdin, rx) = serve_with_control(&["--nodes", "2"]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    let nodes = node_addrs(&url);
    assert_eq!(nodes.len(), 2);

    let stats: serde_json::Value =
        serde_json::from_str(&command(&mut stdin, &rx, "stats")).unwrap();
    assert_eq!(stats["records"], 0);
    assert_eq!(stats["connections"], 0);

    // A stopped node refuses connections; a restarted one serves again on the same port.
    assert_eq!(command(&mut stdin, &rx, "stop 1"), "ok");
    assert!(TcpStream::connect(&nodes[1]).is_err(), "node 1 still accepts after stop");
    assert_eq!(command(&mut stdin, &rx, "restart 1"), "ok");
    send_one_batch(&nodes[1], 3);

    // Injected error codes, then the node behaves again.
    let mut stream = TcpStream::connect(&nodes[0]).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(command(&mut stdin, &rx, "errors 0 next 114 1"), "ok");
    assert_eq!(send_batch_on(&mut stream, 2), 114);
    assert_eq!(send_batch_on(&mut stream, 2), 0);

    // Slow acks: the reply waits at least the delay.
    assert_eq!(command(&mut stdin, &rx, "ack-delay 0 300"), "ok");
    let sent = Instant::now();
    assert_eq!(send_batch_on(&mut stream, 2), 0);
    assert!(sent.elapsed() >= Duration::from_millis(300), "{:?}", sent.elapsed());
    assert_eq!(command(&mut stdin, &rx, "ack-delay 0 0"), "ok");

    // Dropped connections: the open one is closed by the node, which keeps listening.
    assert_eq!(command(&mut stdin, &rx, "kill-connections 0"), "ok");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection stayed open: {other:?}"),
    }
    assert_eq!(command(&mut stdin, &rx, "silent 0 on"), "ok");
    assert_eq!(command(&mut stdin, &rx, "silent 0 off"), "ok");
    assert_eq!(command(&mut stdin, &rx, "errors 0 off"), "ok");
    send_one_batch(&nodes[0], 1);

    // Bad lines get one `error:` line each and change nothing.
    for bad in ["reboot 0", "stop 2", "errors 0 next 114", "silent 0 maybe", "", "stop one"] {
        let answer = command(&mut stdin, &rx, bad);
        assert!(answer.starts_with("error: "), "{bad:?} -> {answer}");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&command(&mut stdin, &rx, "stats")).unwrap();
    assert_eq!(stats["records"], 3 + 2 + 2 + 1, "{stats}");
    assert_eq!(stats["errors"], 1, "{stats}");

    // The end of stdin: the totals line, stdout closes, exit 0.
    drop(stdin);
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    let totals: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(totals["records"], 8, "{summary}");
    assert_eq!(totals.as_object().unwrap().len(), 5, "the documented keys only: {summary}");
    assert_eq!(rx.recv_timeout(TIMEOUT), Err(mpsc::RecvTimeoutError::Disconnected));
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn serve_control_still_stops_on_sigterm_with_the_totals_last() {
    let (mut server, mut stdin, rx) = serve_with_control(&[]);
    rx.recv_timeout(TIMEOUT).expect("first line");
    assert_eq!(command(&mut stdin, &rx, "kill-connections 0"), "ok");
    signal(&server, "TERM");
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    assert!(summary.starts_with(r#"{"batches":0,"#), "{summary}");
    // Commands after the totals are neither applied nor answered.
    let _ = writeln!(stdin, "stats");
    assert_eq!(rx.recv_timeout(TIMEOUT), Err(mpsc::RecvTimeoutError::Disconnected));
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn serve_sink_flags_delay_and_fail_sink_acknowledged_type_7_frames() {
    let (mut server, rx) = serve(&["--sink-latency-ms", "200", "--sink-error", "118:1"]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    let addr = node_addrs(&url).remove(0);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // A type 7 frame (string IDs, uniq 7) asking for the MQ's acknowledgement.
    let attrs = b"groupId=test_group&streamId=s&proxySend=true";
    let mut frame = vec![0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 1, 0, 0, 0, 7];
    frame.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 1, b'x']);
    frame.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    frame.extend_from_slice(attrs);
    frame.extend_from_slice(&[0xee, 0x01]);
    let total_len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&total_len.to_be_bytes());
    let started = Instant::now();
    stream.write_all(&frame).unwrap();
    let mut reply = vec![0u8; 11];
    stream.read_exact(&mut reply).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200), "answered after the sink latency");
    assert_eq!(reply[4..9], [7, 0, 0, 0, 7], "a type 7 reply with the uniq");
    let mut attrs = vec![0u8; usize::from(u16::from_be_bytes([reply[9], reply[10]])) + 2];
    stream.read_exact(&mut attrs).unwrap();
    let attrs = String::from_utf8_lossy(&attrs);
    assert!(attrs.contains("&errCode=118&"), "{attrs}");
    signal(&server, "TERM");
    let summary = rx.recv_timeout(TIMEOUT).expect("summary line");
    assert!(summary.contains(r#""records":0,"#) && summary.contains(r#""errors":1,"#), "{summary}");
    assert!(server.0.wait().unwrap().success());
}

/// The attribute string without the keys whose values depend on the time or the host.
fn timeless(attrs: &str) -> Vec<&str> {
    attrs
        .split('&')
        .filter(|pair| !["rt=", "rtms=", "dpIp="].iter().any(|key| pair.starts_with(key)))
        .collect()
}

#[test]
fn serve_answers_the_java_sdks_captured_frames_as_the_real_dataproxy_did() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/inlong-dataproxy-testkit/tests/data");
    let frames = std::fs::read(format!("{data}/java-sdk-frames.bin")).unwrap();
    let verdicts =
        std::fs::read_to_string(format!("{data}/java-sdk-frames.verdicts.jsonl")).unwrap();
    let (server, rx) = serve(&[]);
    let url = rx.recv_timeout(TIMEOUT).expect("first line");
    let addr = node_addrs(&url).remove(0);
    let mut rest = &frames[..];
    let mut replayed = 0;
    for line in verdicts.lines() {
        let verdict: serde_json::Value = serde_json::from_str(line).unwrap();
        let len = split_frame(rest, usize::MAX).unwrap().expect("a whole frame");
        let (frame, tail) = rest.split_at(len);
        rest = tail;
        // Each frame on a connection of its own, as the reference was recorded.
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(frame).unwrap();
        let expected = &verdict["replies"][0];
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).unwrap();
        let mut reply = head.to_vec();
        reply.resize(4 + u32::from_be_bytes(head) as usize, 0);
        stream.read_exact(&mut reply[4..]).unwrap();
        let context = format!("frame {} (type {:#04x})", verdict["frame"], frame[4]);
        assert_eq!(u64::from(reply[4]), expected["msgType"].as_u64().unwrap(), "{context}");
        match reply[4] {
            7 => {
                let uniq = u32::from_be_bytes(reply[5..9].try_into().unwrap());
                assert_eq!(u64::from(uniq), expected["uniq"].as_u64().unwrap(), "{context}");
                let attr_len = usize::from(u16::from_be_bytes([reply[9], reply[10]]));
                let attrs = std::str::from_utf8(&reply[11..11 + attr_len]).unwrap();
                let reference = expected["attrs"].as_str().unwrap();
                assert_eq!(timeless(attrs), timeless(reference), "{context}");
                assert_eq!(&reply[reply.len() - 2..], &[0xee, 0x01], "{context}: magic");
            }
            8 => {
                // Version echoed, bodyLen 2, load 0xFFFF, no attributes, magic.
                assert_eq!(reply[9], 2, "{context}: the Java SDK's version");
                assert_eq!(&reply[10..], &[0, 0, 0, 2, 0xff, 0xff, 0, 0, 0xee, 0x01], "{context}");
            }
            _ => {
                // A txt reply (types 3 and 5 here): bodyLen, body '2', attrLen, attrs.
                let body_len = u32::from_be_bytes(reply[5..9].try_into().unwrap()) as usize;
                assert_eq!(&reply[9..9 + body_len], b"2", "{context}");
                let attrs = std::str::from_utf8(&reply[13 + body_len..]).unwrap();
                assert!(!attrs.contains("errCode"), "{context}: {attrs}");
                let reference = expected["attrs"].as_str().unwrap();
                assert_eq!(timeless(attrs), timeless(reference), "{context}");
            }
        }
        replayed += 1;
    }
    assert!(rest.is_empty());
    assert_eq!(replayed, 16, "every captured frame");
    drop(server);
}
