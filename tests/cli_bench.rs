//! `inlong-dataproxy bench` and `send` as a user runs them: the built binary, loopback only, every
//! child process bounded by a deadline and killed when it passes. That includes SIGINT/SIGTERM
//! mid-run: the summary with counts that add up, exit status 130/143, a bounded close against a
//! node that never acks, and a second signal that exits at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use inlong_dataproxy_testkit::{Faults, LocalCluster, Topic};

const BIN: &str = env!("CARGO_BIN_EXE_inlong-dataproxy");
/// Bound on any one command (debug build, shared CI cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// The documented `--json` keys, in order.
const KEYS: [&str; 13] = [
    "records",
    "acked",
    "failed",
    "undelivered",
    "seconds",
    "records_per_sec",
    "mb_per_sec",
    "cpu_us_per_record",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_rss_mb",
    "transport",
];

/// What a finished command left behind.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Kills the child if the test fails half-way, so no process outlives its test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the channel.
fn collect(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
    }
    rx
}

/// Reads a pipe line by line on a thread; each line arrives on the channel as it is written.
fn lines(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// A command the test is still driving: stdin open until the test closes it or the command
/// ends, stdout collected whole, stderr line by line (so the test can wait for one).
struct Running {
    child: Guard,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Stderr lines already taken from `stderr`.
    stderr_seen: Vec<String>,
    args: Vec<String>,
}

/// Starts the binary with `args`, every pipe captured.
fn spawn(args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        // `send` keeps the Manager's node list in the user's cache directory: keep it in target/.
        .env("XDG_CACHE_HOME", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-node-list-cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let stdin = child.stdin.take();
    let stdout = collect(child.stdout.take());
    let stderr = lines(child.stderr.take());
    let args = args.iter().map(ToString::to_string).collect();
    Running { child: Guard(child), stdin, stdout, stderr, stderr_seen: Vec::new(), args }
}

impl Running {
    /// Writes to the command's stdin, which stays open.
    fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).and_then(|()| stdin.flush()).expect("write to stdin");
    }

    /// Writes `bytes` on a thread (a large input cannot block the test) and then closes stdin.
    fn write_and_close(&mut self, bytes: &[u8]) {
        let mut stdin = self.stdin.take().expect("stdin still open");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }

    /// Sends the signal `name` (`INT`, `TERM`) to the command.
    fn signal(&self, name: &str) {
        let pid = self.child.0.id().to_string();
        let status = Command::new("kill").arg(format!("-{name}")).arg(pid).status();
        assert!(status.expect("run kill").success(), "kill -{name}");
    }

    /// Waits for `condition` with a deadline; fails at once if the command ended first.
    fn wait_for(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                let stderr: Vec<String> = self.stderr.try_iter().collect();
                panic!("{:?} ended ({status}) before {what}: {stderr:?}", self.args);
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a stderr line starting with `prefix` and returns it.
    fn wait_for_stderr(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(why) => panic!(
                    "{:?}: no stderr line {prefix:?} ({why:?}); seen {:?}",
                    self.args, self.stderr_seen
                ),
            }
        }
    }

    /// Waits for the command to end, killing it after `deadline`; stdin stays open until then.
    fn finish(mut self, deadline: Duration) -> Output {
        let args = std::mem::take(&mut self.args);
        let started = Instant::now();
        // The pipes close when the process exits (or is killed by the guard).
        let Ok(stdout) = self.stdout.recv_timeout(deadline) else {
            drop(self.child);
            panic!("{args:?} did not finish within {deadline:?}");
        };
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            match self.stderr.recv_timeout(left) {
                Ok(line) => stderr.push(line),
                Err(_) => break,
            }
        }
        let status = self.child.0.wait().expect("wait");
        drop(self.stdin);
        let mut stderr = stderr.join("\n");
        if !stderr.is_empty() {
            stderr.push('\n');
        }
        Output { status, stdout, stderr }
    }
}

/// Runs the binary with `args` and `stdin`, killing it after `deadline`.
fn run_with(args: &[&str], stdin: &[u8], deadline: Duration) -> Output {
    let mut running = spawn(args);
    running.write_and_close(stdin);
    running.finish(deadline)
}

fn run(args: &[&str]) -> Output {
    run_with(args, b"", DEADLINE)
}

/// Parses the single `--json` line and checks its keys and their order.
fn json_summary(output: &Output) -> serde_json::Value {
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stdout line: {:?}", output.stdout);
    let line = lines[0];
    let value: serde_json::Value = serde_json::from_str(line).expect(line);
    let object = value.as_object().expect("a JSON object");
    assert_eq!(object.len(), KEYS.len(), "{line}");
    let mut at = 0;
    for key in KEYS {
        let found = line[at..]
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in order: {line}"));
        at += found + 1;
    }
    value
}

fn assert_one_error_line(output: &Output) {
    assert!(!output.status.success());
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line: {:?}", output.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", output.stderr);
}

#[test]
fn bench_against_the_embedded_server_prints_one_json_line() {
    let output = run(&["bench", "--records", "20000", "--json"]);
    assert!(output.status.success(), "{}", output.stderr);
    let summary = json_summary(&output);
    assert_eq!(summary["records"], 20_000);
    assert_eq!(summary["acked"], 20_000);
    assert_eq!(summary["failed"], 0);
    assert!(summary["records_per_sec"].as_f64().unwrap() > 0.0);
    assert!(summary["max_rss_mb"].as_f64().unwrap() > 0.0);
    let transport = summary["transport"].as_str().unwrap();
    assert!(transport == "io_uring" || transport == "epoll", "{transport}");
}

#[test]
fn bench_uses_the_transport_asked_for() {
    let output = run(&["bench", "--records", "5000", "--transport", "epoll", "--json"]);
    assert!(output.status.success(), "{}", output.stderr);
    let summary = json_summary(&output);
    assert_eq!(summary["transport"], "epoll");
    assert_eq!(summary["acked"], 5000);
}

#[test]
fn bench_prints_a_table_by_default() {
    let output = run(&["bench", "--records", "3000", "--streams", "3", "--size", "300"]);
    assert!(output.status.success(), "{}", output.stderr);
    for row in ["records", "acked", "records/s", "MB/s", "CPU µs/record", "latency p99", "max RSS"]
    {
        assert!(output.stdout.contains(row), "{row} in {}", output.stdout);
    }
    assert!(output.stdout.contains("producer alone"), "{}", output.stdout);
    assert!(output.stdout.contains("server counted  3000 records"), "{}", output.stdout);
}

#[test]
fn bench_splits_the_records_across_sending_threads_and_speaks_msg_type_7() {
    let output = run(&[
        "bench",
        "--records",
        "10001",
        "--threads",
        "3",
        "--streams",
        "4",
        "--msg-type",
        "7",
        "--ack",
        "sink",
        "--json",
    ]);
    assert!(output.status.success(), "{}", output.stderr);
    let summary = json_summary(&output);
    assert_eq!(summary["records"], 10_001);
    assert_eq!(summary["acked"], 10_001);
    let output = run(&["bench", "--records", "10", "--ack", "sink", "--json"]);
    assert!(!output.status.success());
    assert!(output.stderr.contains("needs msg_type 7"), "{}", output.stderr);
}

#[test]
fn bench_sends_with_send_batch_calls() {
    // 10001 records in calls of 300 from 2 threads: the last call of each thread is shorter.
    let output = run(&[
        "bench",
        "--records",
        "10001",
        "--threads",
        "2",
        "--send-batch",
        "300",
        "--streams",
        "3",
        "--json",
    ]);
    assert!(output.status.success(), "{}", output.stderr);
    let summary = json_summary(&output);
    assert_eq!(summary["records"], 10_001);
    assert_eq!(summary["acked"], 10_001);
    assert_eq!(summary["failed"], 0);
}

#[test]
fn bench_runs_for_a_duration_at_a_rate() {
    let output = run(&["bench", "--duration", "1", "--rate", "2000", "--json"]);
    assert!(output.status.success(), "{}", output.stderr);
    let summary = json_summary(&output);
    let records = summary["records"].as_u64().unwrap();
    // About 2000 records in one second; generous bounds for a loaded machine.
    assert!((1000..=2100).contains(&records), "{records}");
    assert_eq!(summary["acked"], records);
}

#[test]
fn bench_against_an_external_serve_process() {
    let mut child = Command::new(BIN)
        .args(["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().unwrap();
    let server = Guard(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = lines.recv_timeout(DEADLINE).expect("the Manager URL");

    let output = run(&["bench", "--manager-url", &url, "--records", "5000", "--json"]);
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(json_summary(&output)["acked"], 5000);

    let status = Command::new("kill").arg("-INT").arg(server.0.id().to_string()).status();
    assert!(status.expect("kill").success());
    let totals: serde_json::Value =
        serde_json::from_str(&lines.recv_timeout(DEADLINE).expect("the totals")).unwrap();
    assert!(totals["records"].as_u64().unwrap() >= 5000, "{totals}");
}

#[test]
fn bench_refuses_bad_flags() {
    for args in [
        &["bench", "--size", "0"][..],
        &["bench", "--streams", "0"],
        &["bench", "--transport", "kqueue"],
        &["bench", "--records", "10", "--duration", "1"],
        &["bench", "--manager-url", "http://127.0.0.1:1/x", "--sink", "count-only"],
    ] {
        let output = run(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", output.stdout);
    }
    assert_one_error_line(&run(&["bench", "--endpoints", "no-port-here"]));
    assert_one_error_line(&run(&["bench", "--manager-url", "localhost:8083"]));
}

#[test]
fn bench_fails_fast_with_one_line_when_the_manager_is_unreachable() {
    let started = std::time::Instant::now();
    let output =
        run_with(&["bench", "--manager-url", "http://127.0.0.1:1/x"], b"", Duration::from_secs(20));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_one_error_line(&output);
    assert!(output.stdout.is_empty(), "{}", output.stdout);
}

#[test]
fn bench_serves_prometheus_metrics_while_it_runs() {
    let mut bench = spawn(&[
        "bench",
        "--duration",
        "3",
        "--rate",
        "5000",
        "--json",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let line = bench.wait_for_stderr("metrics at ");
    let url = line.strip_prefix("metrics at ").expect(&line);
    let base = url.strip_suffix("/metrics").expect(url);

    // The address is announced once the producer's collectors exist.
    let (status, body) = http_get(url);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data_proxy_transport_info"), "{body}");
    assert!(body.contains(r#"name="dataproxy-rust""#), "{body}");
    assert_eq!(http_get(&format!("{base}/other")).0, 404);

    let output = bench.finish(DEADLINE);
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(json_summary(&output)["failed"], 0);
}

/// The status and body of `GET url`.
fn http_get(url: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder().timeout(DEADLINE).build().unwrap();
    let response = client.get(url).send().expect("the metrics answer");
    (response.status().as_u16(), response.text().expect("a text body"))
}

#[test]
fn bench_refuses_bad_or_busy_metrics_addresses_with_one_line() {
    assert_one_error_line(&run(&["bench", "--metrics-addr", "not an address"]));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let output = run(&["bench", "--records", "10", "--metrics-addr", &addr]);
    assert_one_error_line(&output);
    assert!(output.stderr.contains("cannot serve metrics"), "{}", output.stderr);
}

#[test]
fn send_reads_lines_from_stdin() {
    let cluster = LocalCluster::start(1).expect("local cluster");
    let addr = cluster.node_addrs()[0].to_string();
    let output = run_with(
        &["send", "--stream-id", "s", "--endpoints", &addr],
        b"first\nsecond\r\n\nthird",
        DEADLINE,
    );
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stderr.trim_end(), "sent 3, acked 3, failed 0, undelivered 0, skipped 1");
    assert_eq!(cluster.stats().records, 3);
    assert_eq!(cluster.stream_counts().get("s"), Some(&3));
}

#[test]
fn send_reads_files_and_refuses_missing_ones_with_one_line() {
    let cluster = LocalCluster::start(1).expect("local cluster");
    let url = cluster.manager_url();
    let path = std::env::temp_dir().join(format!("inlong-send-{}.txt", std::process::id()));
    std::fs::write(&path, "a\nb\n").unwrap();
    let file = path.to_string_lossy().into_owned();
    let output = run(&["send", "--stream-id", "s", "--manager-url", &url, &file, &file]);
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stderr.trim_end(), "sent 4, acked 4, failed 0, undelivered 0, skipped 0");
    assert_eq!(cluster.stats().records, 4);

    let output = run(&["send", "--stream-id", "s", "--manager-url", &url, "/nonexistent/in.txt"]);
    assert_one_error_line(&output);
    assert!(output.stderr.contains("/nonexistent/in.txt"), "{}", output.stderr);
    assert_one_error_line(&run(&["send", "--stream-id", "a b", "--manager-url", &url]));
}

#[test]
fn send_needs_a_target() {
    let output = run(&["send", "--stream-id", "s"]);
    assert!(!output.status.success());
    assert!(output.stderr.contains("--manager-url"), "{}", output.stderr);
}

#[test]
fn send_reports_failures_with_their_code_and_exits_non_zero() {
    // Only another group's topic exists: the node refuses every batch with errCode 115, which
    // is not retried.
    let cluster = LocalCluster::start(1).expect("local cluster");
    let only_other = Topic { group_id: "other_group".to_owned(), stream_id: None };
    cluster.node(0).set_faults(Faults { topics: Some(vec![only_other]), ..Faults::default() });
    let addr = cluster.node_addrs()[0].to_string();
    let output = run_with(&["send", "--stream-id", "s", "--endpoints", &addr], b"x\ny\n", DEADLINE);
    assert!(!output.status.success(), "{}", output.stderr);
    let mut lines = output.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("sent 2, acked 0, failed 2, undelivered 0, skipped 0"),
        "{}",
        output.stderr
    );
    let error = lines.next().unwrap_or_default();
    assert!(error.starts_with("failed 2 record(s) with error 10011, first: "), "{}", output.stderr);
    assert!(error.contains("errCode 115"), "{error}");
    assert_eq!(lines.next(), None, "each distinct error once: {}", output.stderr);
}

/// The counts of `send`'s summary line: sent, acked, failed, undelivered, skipped.
fn send_summary(stderr: &str) -> [u64; 5] {
    const NAMES: [&str; 5] = ["sent", "acked", "failed", "undelivered", "skipped"];
    let line = stderr.lines().find(|line| line.starts_with("sent ")).expect(stderr);
    let parts: Vec<&str> = line.split(", ").collect();
    assert_eq!(parts.len(), NAMES.len(), "{line}");
    let mut counts = [0; 5];
    for ((count, part), name) in counts.iter_mut().zip(parts).zip(NAMES) {
        let number = part.strip_prefix(name).and_then(|rest| rest.strip_prefix(' '));
        *count = number.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name}: {line}"));
    }
    counts
}

/// A local cluster whose only node reads every frame and never answers (a black hole).
fn cluster_that_never_acks() -> LocalCluster {
    let cluster = LocalCluster::start(1).expect("local cluster");
    cluster.node(0).set_faults(Faults { silent: true, ..Faults::default() });
    cluster
}

#[test]
fn send_on_sigint_stops_reading_closes_and_exits_130_with_the_summary() {
    let cluster = LocalCluster::start(1).expect("local cluster");
    let addr = cluster.node_addrs()[0].to_string();
    let mut send = spawn(&["send", "--stream-id", "s", "--endpoints", &addr]);
    // stdin stays open: only the signal can end this run.
    send.write(b"one\ntwo\n\nthree\n");
    send.wait_for("3 records at the node", || cluster.stats().records >= 3);
    send.signal("INT");
    let output = send.finish(DEADLINE);

    assert_eq!(output.status.code(), Some(130), "{} {}", output.status, output.stderr);
    let [sent, acked, failed, undelivered, skipped] = send_summary(&output.stderr);
    assert_eq!(sent, acked + failed + undelivered, "{}", output.stderr);
    assert_eq!((sent, acked, skipped), (3, 3, 1), "{}", output.stderr);
    assert!(output.stderr.starts_with("interrupted by SIGINT: "), "{}", output.stderr);
    assert_eq!(cluster.stats().records, 3);
}

#[test]
fn bench_on_sigterm_stops_sending_closes_and_exits_143_with_the_summary() {
    let cluster = LocalCluster::start(1).expect("local cluster");
    let addr = cluster.node_addrs()[0].to_string();
    // Throttled, so the run stays light on a shared machine and would last ten minutes.
    let args = ["bench", "--endpoints", &addr, "--duration", "600", "--rate", "20000", "--json"];
    let mut bench = spawn(&args);
    bench.wait_for("records at the node", || cluster.stats().records >= 1000);
    bench.signal("TERM");
    let output = bench.finish(DEADLINE);

    assert_eq!(output.status.code(), Some(143), "{} {}", output.status, output.stderr);
    let summary = json_summary(&output);
    let count = |key: &str| summary[key].as_u64().unwrap_or_else(|| panic!("{key}: {summary}"));
    assert_eq!(
        count("records"),
        count("acked") + count("failed") + count("undelivered"),
        "{summary}"
    );
    assert!(count("acked") >= 1000, "{summary}");
    assert_eq!((count("failed"), count("undelivered")), (0, 0), "{summary}");
    assert!(cluster.stats().records >= count("acked"), "{summary}");
    assert!(output.stderr.starts_with("interrupted by SIGTERM: "), "{}", output.stderr);
}

#[test]
fn send_on_sigint_against_a_node_that_never_acks_counts_undelivered_and_exits_in_time() {
    let cluster = cluster_that_never_acks();
    let addr = cluster.node_addrs()[0].to_string();
    let close_timeout = Duration::from_secs(2);
    let mut send =
        spawn(&["send", "--stream-id", "s", "--endpoints", &addr, "--close-timeout", "2"]);
    send.write(b"a\nb\nc\n");
    // A dropped frame is a batch (heartbeats start after a minute idle): lines were sent.
    send.wait_for("a batch at the node", || cluster.stats().dropped >= 1);
    // Taken before the signal, so `took` cannot miss time the close had.
    let signalled = Instant::now();
    send.signal("INT");
    // The close deadline plus a few seconds for a debug build on shared cores.
    let output = send.finish(close_timeout + Duration::from_secs(8));
    let took = signalled.elapsed();

    assert_eq!(output.status.code(), Some(130), "{} {}", output.status, output.stderr);
    let [sent, acked, failed, undelivered, _] = send_summary(&output.stderr);
    assert_eq!(sent, acked + failed + undelivered, "{}", output.stderr);
    assert_eq!(acked, 0, "{}", output.stderr);
    assert!(undelivered > 0, "{}", output.stderr);
    // It waited for acks until the close deadline, not less.
    assert!(took >= close_timeout, "{took:?}");
    assert!(output.stderr.starts_with("interrupted by SIGINT: "), "{}", output.stderr);
    assert!(!output.stderr.contains("error"), "undelivered is not an error: {}", output.stderr);
}

#[test]
fn a_second_signal_exits_at_once_without_waiting_for_the_close() {
    let cluster = cluster_that_never_acks();
    let addr = cluster.node_addrs()[0].to_string();
    // A close that would take a minute, against a node that never acks.
    let args = ["bench", "--endpoints", &addr, "--duration", "600", "--rate", "20000"];
    let mut bench = spawn(&[&args[..], &["--close-timeout", "60", "--json"]].concat());
    bench.wait_for("a batch at the node", || cluster.stats().dropped >= 1);
    bench.signal("TERM");
    // The first signal was handled: the run stopped and the close began.
    bench.wait_for_stderr("interrupted by SIGTERM: ");
    bench.signal("TERM");
    // Half the close timeout: ending within it means the close was not waited for.
    let output = bench.finish(Duration::from_secs(30));

    assert_eq!(output.status.code(), Some(143), "{} {}", output.status, output.stderr);
    assert!(output.stdout.is_empty(), "no summary: {}", output.stdout);
    assert!(output.stderr.contains("\ninterrupted again by SIGTERM: "), "{}", output.stderr);
}
