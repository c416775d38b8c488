//! `inlong-dataproxy serve`: local DataProxy nodes + Manager until SIGINT/SIGTERM.
//!
//! stdout carries exactly two kinds of line: the Manager URL first, and on shutdown one JSON line
//! with the totals. Per-second statistics (`--stats`) go to stderr so stdout stays parseable.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use inlong_dataproxy::server::{
    IngestMode, LocalCluster, ManagerAuth, ManagerConfig, NodeConfig, NodeStats,
};

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
}

/// Starts the cluster, prints the Manager URL, serves until a signal, prints the totals.
pub fn run(args: &ServeArgs) -> Result<ExitCode, String> {
    let node_config = NodeConfig {
        max_msg_length: usize::try_from(args.max_msg_length).unwrap_or(usize::MAX),
        ingest_mode: if args.count_only { IngestMode::CountOnly } else { IngestMode::Full },
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

    if let Some(addr) = &args.metrics_addr {
        let addr = super::resolve_addr(addr, "--metrics-addr")?;
        let nodes = cluster.nodes();
        let bound = super::serve_metrics(addr, move || render_node_metrics(&nodes))?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", cluster.manager_url()).map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())?;
    let nodes: Vec<String> = cluster.node_addrs().iter().map(ToString::to_string).collect();
    eprintln!("serving {} DataProxy node(s) at {}", nodes.len(), nodes.join(","));

    let stats_every = args.stats.then_some(Duration::from_secs(1));
    cluster.handle().block_on(wait_for_signal(&cluster, stats_every))?;

    let totals = cluster.stats();
    writeln!(stdout, "{}", summary_json(&totals)).map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())?;
    cluster.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Every node's counters as Prometheus counters, labelled by node address.
fn render_node_metrics(nodes: &[inlong_dataproxy::server::DataProxyNode]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    type Series = (&'static str, &'static str, fn(&NodeStats) -> u64);
    let series: [Series; 6] = [
        ("local_dataproxy_batches_total", "batches accepted", |s| s.batches),
        ("local_dataproxy_records_total", "records accepted", |s| s.records),
        ("local_dataproxy_payload_bytes_total", "payload bytes accepted", |s| s.payload_bytes),
        ("local_dataproxy_errors_total", "batches answered with an error code", |s| s.errors),
        ("local_dataproxy_duplicates_total", "batches whose mid was seen before", |s| s.duplicates),
        ("local_dataproxy_connections_total", "connections accepted", |s| s.connections),
    ];
    let stats: Vec<(String, NodeStats)> =
        nodes.iter().map(|node| (node.addr().to_string(), node.stats())).collect();
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (node, stats) in &stats {
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {}", value(stats));
        }
    }
    out
}

/// The final line: `{"batches":..,"records":..,"payload_bytes":..,"errors":..,"duplicates":..}`.
fn summary_json(stats: &NodeStats) -> String {
    #[derive(serde::Serialize)]
    struct Summary {
        batches: u64,
        records: u64,
        payload_bytes: u64,
        errors: u64,
        duplicates: u64,
    }
    let summary = Summary {
        batches: stats.batches,
        records: stats.records,
        payload_bytes: stats.payload_bytes,
        errors: stats.errors,
        duplicates: stats.duplicates,
    };
    serde_json::to_string(&summary).unwrap_or_default()
}

async fn wait_for_signal(
    cluster: &LocalCluster,
    stats_every: Option<Duration>,
) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut ticker = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let (mut last, mut last_at, started) = (cluster.stats(), Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
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
}
