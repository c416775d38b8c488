//! `inlong-dataproxy serve`: local DataProxy nodes + Manager until SIGINT/SIGTERM (or, with
//! `--control`, until stdin closes).
//!
//! stdout carries the Manager URL first and, on shutdown, one JSON line with the totals. With
//! `--control`, fault commands arrive on stdin, one per line, and each gets exactly one answer line
//! between those two: `ok`, `error: <why>`, or a JSON line for `stats`. A command never stops the
//! server; end of stdin shuts it down like SIGTERM, so a server driven by a parent process dies
//! with it. Per-second statistics (`--stats`) go to stderr so stdout stays parseable.

use std::future::Future;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inlong_dataproxy_testkit::{
    DataProxyNode, ErrorInjection, IngestMode, LocalCluster, ManagerAuth, ManagerConfig,
    NodeConfig, NodeStats,
};
use tokio::sync::oneshot;

/// Options of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Number of DataProxy nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    nodes: u16,
    /// Port of the first node (the others take the next ports); 0 = ephemeral.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Port of the Manager; 0 = ephemeral.
    #[arg(long, default_value_t = 0)]
    manager_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Print per-second statistics on stderr.
    #[arg(long)]
    stats: bool,
    /// Server worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Trust each batch's `cnt` instead of decompressing it (a cheap sink for benchmarks).
    #[arg(long)]
    count_only: bool,
    /// Largest frame a node accepts, `4 + totalLen` (the real `max-msg-length`).
    #[arg(long, default_value_t = 524_288, value_parser = clap::value_parser!(u64).range(5..=20_971_520))]
    max_msg_length: u64,
    /// `maxPacketLength` advertised by the Manager (omitted = null).
    #[arg(long)]
    max_packet_length: Option<u32>,
    /// Only these group IDs are known to the Manager (comma-separated; default: every group).
    #[arg(long, value_delimiter = ',')]
    groups: Option<Vec<String>>,
    /// Require Manager Basic auth with this secret ID (needs --secret-key).
    #[arg(long, requires = "secret_key")]
    secret_id: Option<String>,
    /// The secret key for --secret-id.
    #[arg(long, requires = "secret_id")]
    secret_key: Option<String>,
    /// Serve the nodes' counters (Prometheus text) at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Read fault commands from stdin, one per line, and answer each on stdout; end of stdin
    /// shuts the server down.
    #[arg(long)]
    control: bool,
    /// How long the simulated MQ takes to store a type 7 frame sent with syncSend or proxySend,
    /// whose reply waits for it.
    #[arg(long, default_value_t = 0, value_name = "MILLIS")]
    sink_latency_ms: u64,
    /// Fail this share (0..1) of those frames in the simulated MQ with a sink code, 116..119.
    #[arg(long, value_name = "CODE:RATE", value_parser = parse_sink_error)]
    sink_error: Option<ErrorInjection>,
}

/// `--sink-error CODE:RATE`: a sink code (116–119) and the share of sink-acknowledged frames to
/// fail with it.
fn parse_sink_error(text: &str) -> Result<ErrorInjection, String> {
    let (code, rate) = text.split_once(':').ok_or("expected CODE:RATE, e.g. 118:0.1")?;
    let code: i32 = code.parse().map_err(|_| format!("bad CODE {code:?}"))?;
    if !(116..=119).contains(&code) {
        return Err(format!("CODE {code} is not a sink code (116..119)"));
    }
    let fraction: f64 = rate.parse().map_err(|_| format!("bad RATE {rate:?}"))?;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(format!("RATE {rate} is not within 0..1"));
    }
    Ok(ErrorInjection::Fraction { code, fraction })
}

/// Starts the cluster, prints the Manager URL, serves until a signal (or the end of stdin with
/// `--control`), prints the totals.
pub fn run(args: &ServeArgs) -> Result<ExitCode, String> {
    let node_config = NodeConfig {
        max_msg_length: usize::try_from(args.max_msg_length).unwrap_or(usize::MAX),
        ingest_mode: if args.count_only { IngestMode::CountOnly } else { IngestMode::Full },
        sink_latency: Duration::from_millis(args.sink_latency_ms),
        ..NodeConfig::default()
    };
    let auth = match (&args.secret_id, &args.secret_key) {
        (Some(id), Some(key)) => {
            Some(ManagerAuth { secret_id: id.clone(), secret_key: key.clone(), tenant: None })
        }
        _ => None,
    };
    let manager_config = ManagerConfig {
        auth,
        known_groups: args.groups.clone(),
        max_packet_length: args.max_packet_length,
        ..ManagerConfig::default()
    };
    let cluster = LocalCluster::builder()
        .nodes(usize::from(args.nodes))
        .host(args.host)
        .first_node_port(args.port)
        .manager_port(args.manager_port)
        .threads(usize::from(args.threads))
        .node_config(node_config)
        .manager_config(manager_config)
        .start()
        .map_err(|e| format!("cannot start the local DataProxy + Manager: {e}"))?;
    if let Some(sink_errors) = &args.sink_error {
        for node in cluster.nodes() {
            node.update_faults(|f| f.sink_errors = Some(sink_errors.clone()));
        }
    }

    if let Some(addr) = &args.metrics_addr {
        let addr = super::resolve_addr(addr, "--metrics-addr")?;
        let registry = NodeCounters::registry(cluster.nodes())
            .map_err(|e| format!("cannot set up the node metrics: {e}"))?;
        let bound = super::serve_metrics(addr, registry)?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", cluster.manager_url()).map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
    }
    let nodes: Vec<String> = cluster.node_addrs().iter().map(ToString::to_string).collect();
    eprintln!("serving {} DataProxy node(s) at {}", nodes.len(), nodes.join(","));
    eprintln!("manager base address (Java SDK): {}", cluster.manager_base_url());

    // Set under the stdout lock together with the totals line, so no command is applied or
    // answered after it.
    let finished = Arc::new(AtomicBool::new(false));
    let stdin_closed = if args.control {
        Some(spawn_control(cluster.nodes(), finished.clone()).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let stdin_closed = async move {
        match stdin_closed {
            // A dropped sender (the control thread died) also ends the server.
            Some(closed) => drop(closed.await),
            None => std::future::pending().await,
        }
    };
    let stats_every = args.stats.then_some(Duration::from_secs(1));
    cluster.handle().block_on(wait_for_shutdown(&cluster, stats_every, stdin_closed))?;

    {
        let mut stdout = std::io::stdout().lock();
        finished.store(true, Ordering::Release);
        let totals = cluster.stats();
        writeln!(stdout, "{}", summary_json(&totals)).map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
    }
    cluster.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// One line of `--control` input. Node indexes are 0-based, in start order.
#[derive(Debug, Clone, PartialEq)]
enum ControlCommand {
    /// `stop N`: stop listening and close every connection (a killed node).
    Stop(usize),
    /// `restart N`: listen again on the same port.
    Restart(usize),
    /// `kill-connections N`: close every open connection, keep listening.
    KillConnections(usize),
    /// `errors N next CODE COUNT` or `errors N off`.
    Errors(usize, Option<ErrorInjection>),
    /// `ack-delay N MILLIS` (0 = off).
    AckDelay(usize, Duration),
    /// `silent N on|off`: read and drop every frame.
    Silent(usize, bool),
    /// `stats`: one JSON line of totals instead of `ok`.
    Stats,
}

/// The command forms, as an `error:` line shows them.
const CONTROL_USAGE: &[(&str, &str)] = &[
    ("stop", "stop N"),
    ("restart", "restart N"),
    ("kill-connections", "kill-connections N"),
    ("errors", "errors N next CODE COUNT | errors N off"),
    ("ack-delay", "ack-delay N MILLIS"),
    ("silent", "silent N on|off"),
    ("stats", "stats"),
];

impl FromStr for ControlCommand {
    type Err = String;

    fn from_str(line: &str) -> Result<ControlCommand, String> {
        fn number<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
            text.parse().map_err(|_| format!("bad {what} {text:?}"))
        }
        let node = |text: &str| number::<usize>(text, "node index");
        let words: Vec<&str> = line.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["stats"] => ControlCommand::Stats,
            ["stop", n] => ControlCommand::Stop(node(n)?),
            ["restart", n] => ControlCommand::Restart(node(n)?),
            ["kill-connections", n] => ControlCommand::KillConnections(node(n)?),
            ["errors", n, "off"] => ControlCommand::Errors(node(n)?, None),
            ["errors", n, "next", code, count] => ControlCommand::Errors(
                node(n)?,
                Some(ErrorInjection::Next {
                    code: number(code, "CODE")?,
                    count: number(count, "COUNT")?,
                }),
            ),
            ["ack-delay", n, millis] => {
                ControlCommand::AckDelay(node(n)?, Duration::from_millis(number(millis, "MILLIS")?))
            }
            ["silent", n, "on"] => ControlCommand::Silent(node(n)?, true),
            ["silent", n, "off"] => ControlCommand::Silent(node(n)?, false),
            [] => return Err("empty command".to_owned()),
            [verb, ..] => {
                return Err(match CONTROL_USAGE.iter().find(|(name, _)| name == verb) {
                    Some((_, usage)) => format!("usage: {usage}"),
                    None => {
                        let known: Vec<&str> =
                            CONTROL_USAGE.iter().map(|(name, _)| *name).collect();
                        format!("unknown command {verb:?} (known: {})", known.join(", "))
                    }
                })
            }
        })
    }
}

impl ControlCommand {
    /// Applies the command; the answer line is `ok` or, for `stats`, the JSON.
    fn apply(&self, nodes: &[DataProxyNode]) -> Result<String, String> {
        let node = |n: usize| {
            nodes.get(n).ok_or_else(|| {
                format!("no node {n}: there are {} nodes, numbered from 0", nodes.len())
            })
        };
        match self {
            ControlCommand::Stop(n) => node(*n)?.stop(),
            ControlCommand::Restart(n) => {
                node(*n)?.restart().map_err(|e| format!("cannot restart node {n}: {e}"))?;
            }
            ControlCommand::KillConnections(n) => node(*n)?.kill_connections(),
            ControlCommand::Errors(n, errors) => {
                node(*n)?.update_faults(|f| f.errors.clone_from(errors));
            }
            ControlCommand::AckDelay(n, delay) => node(*n)?.update_faults(|f| f.ack_delay = *delay),
            ControlCommand::Silent(n, on) => node(*n)?.update_faults(|f| f.silent = *on),
            ControlCommand::Stats => return Ok(live_stats_json(nodes)),
        }
        Ok("ok".to_owned())
    }
}

/// Reads `--control` commands from stdin on a plain thread and answers each on stdout. The
/// receiver resolves at the end of stdin (or a read error).
fn spawn_control(
    nodes: Vec<DataProxyNode>,
    finished: Arc<AtomicBool>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (closed_tx, closed_rx) = oneshot::channel();
    std::thread::Builder::new().name("serve-control".to_owned()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // The lock orders answers with the totals line: once `finished` is set, nothing more
            // is applied or written.
            let mut stdout = std::io::stdout().lock();
            if finished.load(Ordering::Acquire) {
                return;
            }
            let answer = String::from_utf8_lossy(&line)
                .parse::<ControlCommand>()
                .and_then(|command| command.apply(&nodes));
            // A parent that stopped reading will close stdin too; nothing to do here.
            let _ = match answer {
                Ok(answer) => writeln!(stdout, "{answer}"),
                Err(why) => writeln!(stdout, "error: {why}"),
            };
            let _ = stdout.flush();
        }
        let _ = closed_tx.send(());
    })?;
    Ok(closed_rx)
}

/// Which count of [`NodeStats`] a series exports.
type NodeCount = fn(&NodeStats) -> u64;

/// The node counters `--metrics-addr` serves: name, help, and which count.
const NODE_SERIES: [(&str, &str, NodeCount); 6] = [
    ("local_dataproxy_batches_total", "batches accepted", |s| s.batches),
    ("local_dataproxy_records_total", "records accepted", |s| s.records),
    ("local_dataproxy_payload_bytes_total", "payload bytes accepted", |s| s.payload_bytes),
    ("local_dataproxy_errors_total", "batches answered with an error code", |s| s.errors),
    ("local_dataproxy_duplicates_total", "batches whose mid was seen before", |s| s.duplicates),
    ("local_dataproxy_connections_total", "connections accepted", |s| s.connections),
];

/// Every node's counters as Prometheus counters labelled `node="ADDR"`, brought up to the nodes'
/// own counts at each scrape (the nodes count for themselves; this only exports).
struct NodeCounters {
    nodes: Vec<DataProxyNode>,
    series: Vec<(prometheus::IntCounterVec, NodeCount)>,
    /// One scrape at a time sets the counters, so two scrapes cannot mix their readings.
    scrape: std::sync::Mutex<()>,
}

impl NodeCounters {
    /// A registry holding the counters of `nodes`.
    fn registry(nodes: Vec<DataProxyNode>) -> Result<prometheus::Registry, prometheus::Error> {
        let series = NODE_SERIES
            .iter()
            .map(|&(name, help, count)| {
                let opts = prometheus::Opts::new(name, help);
                Ok((prometheus::IntCounterVec::new(opts, &["node"])?, count))
            })
            .collect::<Result<_, prometheus::Error>>()?;
        let registry = prometheus::Registry::new();
        let counters = NodeCounters { nodes, series, scrape: std::sync::Mutex::default() };
        registry.register(Box::new(counters))?;
        Ok(registry)
    }
}

impl prometheus::core::Collector for NodeCounters {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.series.iter().flat_map(|(counter, _)| counter.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _one_scrape = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for node in &self.nodes {
            let stats = node.stats();
            let label = node.addr().to_string();
            for (counter, count) in &self.series {
                let counter = counter.with_label_values(&[label.as_str()]);
                counter.reset();
                counter.inc_by(count(&stats));
            }
        }
        self.series.iter().flat_map(|(counter, _)| counter.collect()).collect()
    }
}

/// The totals every JSON line of `serve` starts with.
#[derive(serde::Serialize)]
struct Summary {
    batches: u64,
    records: u64,
    payload_bytes: u64,
    errors: u64,
    duplicates: u64,
}

impl From<&NodeStats> for Summary {
    fn from(stats: &NodeStats) -> Summary {
        Summary {
            batches: stats.batches,
            records: stats.records,
            payload_bytes: stats.payload_bytes,
            errors: stats.errors,
            duplicates: stats.duplicates,
        }
    }
}

/// The final line: `{"batches":..,"records":..,"payload_bytes":..,"errors":..,"duplicates":..}`.
fn summary_json(stats: &NodeStats) -> String {
    serde_json::to_string(&Summary::from(stats)).unwrap_or_default()
}

/// The answer to `stats`: the summary plus `connections` (accepted so far) and
/// `open_connections` (open now), summed over every node.
fn live_stats_json(nodes: &[DataProxyNode]) -> String {
    #[derive(serde::Serialize)]
    struct LiveStats {
        #[serde(flatten)]
        summary: Summary,
        connections: u64,
        open_connections: usize,
    }
    let mut totals = NodeStats::default();
    for node in nodes {
        totals += node.stats();
    }
    let live = LiveStats {
        summary: Summary::from(&totals),
        connections: totals.connections,
        open_connections: nodes.iter().map(DataProxyNode::open_connections).sum(),
    };
    serde_json::to_string(&live).unwrap_or_default()
}

/// Serves until SIGINT, SIGTERM or `stdin_closed`, printing `--stats` lines on the way.
async fn wait_for_shutdown(
    cluster: &LocalCluster,
    stats_every: Option<Duration>,
    stdin_closed: impl Future<Output = ()>,
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::pin!(stdin_closed);
    let mut ticker = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let (mut last, mut last_at, started) = (cluster.stats(), Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = &mut stdin_closed => return Ok(()),
            _ = ticker.tick(), if stats_every.is_some() => {
                let now = cluster.stats();
                let secs = last_at.elapsed().as_secs_f64();
                #[allow(clippy::cast_precision_loss)]
                let rate = |new: u64, old: u64| (new - old) as f64 / secs;
                eprintln!(
                    "t={:.0}s records/s={:.0} batches/s={:.0} MB/s={:.1} errors={} duplicates={} connections={}",
                    started.elapsed().as_secs_f64(),
                    rate(now.records, last.records),
                    rate(now.batches, last.batches),
                    rate(now.payload_bytes, last.payload_bytes) / 1e6,
                    now.errors,
                    now.duplicates,
                    now.connections,
                );
                (last, last_at) = (now, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_exactly_the_documented_keys() {
        let stats = NodeStats {
            batches: 2,
            records: 7,
            payload_bytes: 70,
            errors: 1,
            duplicates: 0,
            ..NodeStats::default()
        };
        assert_eq!(
            summary_json(&stats),
            r#"{"batches":2,"records":7,"payload_bytes":70,"errors":1,"duplicates":0}"#
        );
    }

    #[test]
    fn sink_error_flag_takes_a_sink_code_and_a_rate() {
        assert_eq!(
            parse_sink_error("118:0.25"),
            Ok(ErrorInjection::Fraction { code: 118, fraction: 0.25 })
        );
        for bad in ["118", "115:0.5", "119:1.5", "x:0.1", "116:x"] {
            assert!(parse_sink_error(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_commands_parse_strictly() {
        let parse = |line: &str| line.parse::<ControlCommand>();
        assert_eq!(parse("stop 0"), Ok(ControlCommand::Stop(0)));
        assert_eq!(parse("  restart   3 \r\n"), Ok(ControlCommand::Restart(3)));
        assert_eq!(parse("kill-connections 1"), Ok(ControlCommand::KillConnections(1)));
        assert_eq!(
            parse("errors 1 next 114 20"),
            Ok(ControlCommand::Errors(1, Some(ErrorInjection::Next { code: 114, count: 20 })))
        );
        assert_eq!(parse("errors 0 off"), Ok(ControlCommand::Errors(0, None)));
        assert_eq!(
            parse("ack-delay 1 200"),
            Ok(ControlCommand::AckDelay(1, Duration::from_millis(200)))
        );
        assert_eq!(parse("ack-delay 1 0"), Ok(ControlCommand::AckDelay(1, Duration::ZERO)));
        assert_eq!(parse("silent 0 on"), Ok(ControlCommand::Silent(0, true)));
        assert_eq!(parse("silent 0 off"), Ok(ControlCommand::Silent(0, false)));
        assert_eq!(parse("stats"), Ok(ControlCommand::Stats));

        assert_eq!(parse(""), Err("empty command".to_owned()));
        assert_eq!(parse("stop"), Err("usage: stop N".to_owned()));
        assert_eq!(parse("stop 0 1"), Err("usage: stop N".to_owned()));
        assert_eq!(parse("stop -1"), Err(r#"bad node index "-1""#.to_owned()));
        assert_eq!(parse("errors 0 next x 1"), Err(r#"bad CODE "x""#.to_owned()));
        assert_eq!(
            parse("errors 0 next 114"),
            Err("usage: errors N next CODE COUNT | errors N off".to_owned())
        );
        assert_eq!(parse("silent 0 yes"), Err("usage: silent N on|off".to_owned()));
        assert_eq!(parse("stats now"), Err("usage: stats".to_owned()));
        assert_eq!(parse("STOP 0"), Err(r#"unknown command "STOP" (known: stop, restart, kill-connections, errors, ack-delay, silent, stats)"#.to_owned()));
    }

    #[test]
    fn control_commands_name_a_missing_node() {
        let cluster = LocalCluster::start(2).unwrap();
        let nodes = cluster.nodes();
        assert_eq!(
            ControlCommand::Stop(2).apply(&nodes),
            Err("no node 2: there are 2 nodes, numbered from 0".to_owned())
        );
        assert_eq!(
            ControlCommand::AckDelay(1, Duration::from_millis(5)).apply(&nodes),
            Ok("ok".to_owned())
        );
        assert_eq!(nodes[1].faults().ack_delay, Duration::from_millis(5));
        let stats: serde_json::Value =
            serde_json::from_str(&ControlCommand::Stats.apply(&nodes).unwrap()).unwrap();
        assert_eq!(stats["records"], 0);
        assert_eq!(stats["open_connections"], 0);
    }
}
