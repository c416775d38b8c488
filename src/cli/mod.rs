//! Argument parsing and dispatch for the `inlong-dataproxy` binary, plus the pieces `bench` and
//! `send` share: where to send ([`TargetArgs`]), how to collect deliveries without a closure or a
//! thread per record ([`DeliveryRing`], [`DeliveryTally`]), and how SIGINT/SIGTERM end a run
//! ([`interrupt`]).
//!
//! Every subcommand returns `Err(String)` for a failure after parsing; `main` prints it as one
//! `error: ...` line. Nothing here panics on user input.

mod bench;
mod interrupt;
mod send;
mod serve;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use inlong_dataproxy::{
    Ack, BatchDeliveryFuture, BatchDeliveryReport, DeliveryFuture, DeliveryReport, Error, MsgType,
    ProducerBuilder,
};

/// A fast client SDK for Apache InLong DataProxy, and a local DataProxy + Manager to try it on.
#[derive(Debug, Parser)]
#[command(name = "inlong-dataproxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run local DataProxy nodes and a Manager that lists them (for tests and benchmarks).
    Serve(serve::ServeArgs),
    /// Measure the producer: records/s, MB/s, CPU per record, delivery latency, memory.
    #[command(after_help = interrupt::SIGNALS_HELP)]
    Bench(bench::BenchArgs),
    /// Send one record per line of the files (or stdin) to one stream.
    #[command(after_help = interrupt::SIGNALS_HELP)]
    Send(send::SendArgs),
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: errors only). The commands report their
/// own failures (one `error:` line, or a summary with each distinct error and its count), so the
/// library's warnings, such as a Manager lookup about to be retried, stay hidden unless asked for
/// with `RUST_LOG=warn`.
pub fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Send(args) => send::run(&args),
    }
}

/// Where records go: a Manager that lists the DataProxy nodes, or the nodes themselves.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The InLong Manager's `getIpList` URL, without the group ID.
    #[arg(long, value_name = "URL", conflicts_with = "endpoints")]
    manager_url: Option<String>,
    /// DataProxy nodes to send to directly, without a Manager.
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// The inlong group ID every record is sent for.
    #[arg(long, value_name = "GROUP", default_value = "test_group")]
    group_id: String,
}

/// Which wire protocol the producer speaks, and when a record counts as delivered.
#[derive(Debug, clap::Args)]
pub struct ProtocolArgs {
    /// DataProxy message type: 5 (text attributes, as the Go SDK) or 7 (binary, as the Java
    /// and C++ SDKs, with type 8 heartbeats).
    #[arg(long, value_name = "5|7", default_value = "5", value_parser = parse_msg_type)]
    msg_type: MsgType,
    /// When a record is acked: `proxy` (a DataProxy node accepted it) or `sink` (the node's
    /// sink stored it in the MQ; needs --msg-type 7).
    #[arg(long, value_name = "proxy|sink", default_value = "proxy", value_parser = parse_ack)]
    ack: Ack,
}

fn parse_msg_type(text: &str) -> Result<MsgType, String> {
    text.parse().map_err(|_| format!("{text:?} is not 5 or 7"))
}

fn parse_ack(text: &str) -> Result<Ack, String> {
    text.parse().map_err(|_| format!("{text:?} is not proxy or sink"))
}

impl ProtocolArgs {
    /// Sets the message type and ack level on `builder`; `build()` refuses `--ack sink` with
    /// `--msg-type 5`.
    pub fn apply(&self, builder: ProducerBuilder) -> ProducerBuilder {
        builder.msg_type(self.msg_type).ack(self.ack)
    }
}

/// [`TargetArgs`] after validation.
#[derive(Debug, Clone)]
pub enum Target {
    /// Ask this Manager for the nodes.
    Manager(String),
    /// Send to these nodes.
    Endpoints(Vec<SocketAddr>),
}

impl TargetArgs {
    /// The validated target, or `None` when neither `--manager-url` nor `--endpoints` was given.
    pub fn target(&self) -> Result<Option<Target>, String> {
        if let Some(url) = &self.manager_url {
            let url = url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "bad --manager-url {url:?}: it must start with http:// or https://"
                ));
            }
            return Ok(Some(Target::Manager(url.to_owned())));
        }
        let Some(endpoints) = &self.endpoints else {
            return Ok(None);
        };
        let addrs = endpoints
            .iter()
            .filter(|text| !text.trim().is_empty())
            .map(|text| resolve_addr(text, "--endpoints"))
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err("--endpoints needs at least one HOST:PORT".to_owned());
        }
        Ok(Some(Target::Endpoints(addrs)))
    }

    /// The group ID.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }
}

impl Target {
    /// Points `builder` at this target.
    pub fn apply(&self, builder: ProducerBuilder) -> ProducerBuilder {
        match self {
            Target::Manager(url) => builder.manager_url(url.clone()),
            Target::Endpoints(addrs) => builder.endpoints(addrs.iter().copied()),
        }
    }
}

/// Resolves `HOST:PORT` to its first address; `flag` names the option in the error.
pub fn resolve_addr(text: &str, flag: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("bad {flag} address {text:?}: {e} (expected HOST:PORT)"))?;
    addrs.next().ok_or_else(|| format!("bad {flag} address {text:?}: it resolves to nothing"))
}

/// What became of the records sent so far: acked, failed with which errors, or still
/// undelivered when the producer's close deadline hit.
#[derive(Debug)]
pub struct DeliveryTally {
    /// Records acknowledged by DataProxy.
    pub acked: u64,
    /// Records that failed, at `send` or later.
    pub failed: u64,
    /// Records neither acked nor failed at the close deadline (the producer then resolves them
    /// with [`Error::FlushTimeout`]): whether they reached DataProxy is unknown.
    pub undelivered: u64,
    /// Per error code: how many records failed with it, and the first such error's text.
    errors: BTreeMap<u32, (u64, String)>,
    /// Delivery latency of the acked records, in microseconds.
    latency_us: Histogram<u64>,
}

impl DeliveryTally {
    /// An empty tally.
    pub fn new() -> DeliveryTally {
        // One microsecond to one hour at three significant digits: constant, valid bounds.
        let latency_us =
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        DeliveryTally { acked: 0, failed: 0, undelivered: 0, errors: BTreeMap::new(), latency_us }
    }

    /// Counts one delivery's result.
    pub fn count(&mut self, result: Result<DeliveryReport, Error>) {
        match result {
            Ok(report) => self.ack(report.latency),
            // A delivery resolves with `FlushTimeout` only when the close deadline cut it short.
            Err(Error::FlushTimeout { .. }) => self.undelivered += 1,
            Err(error) => self.fail(&error),
        }
    }

    /// Counts the result of one `send_batch` call of `records` records (acked ones at the
    /// call's longest batch latency).
    pub fn count_batch(&mut self, result: Result<BatchDeliveryReport, Error>, records: u64) {
        match result {
            Ok(report) => self.ack_n(report.max_latency, records),
            Err(Error::FlushTimeout { .. }) => self.undelivered += records,
            Err(error) => self.fail_n(&error, records),
        }
    }

    /// Counts one acked record, delivered `latency` after it was sent.
    pub fn ack(&mut self, latency: std::time::Duration) {
        self.ack_n(latency, 1);
    }

    fn ack_n(&mut self, latency: std::time::Duration, records: u64) {
        self.acked += records;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record_n(micros.max(1), records);
    }

    /// Counts one failed record.
    pub fn fail(&mut self, error: &Error) {
        self.fail_n(error, 1);
    }

    /// Counts `records` records failed with `error`.
    pub fn fail_n(&mut self, error: &Error, records: u64) {
        self.failed += records;
        self.errors.entry(error.code()).or_insert_with(|| (0, error.to_string())).0 += records;
    }

    /// The latency at `quantile` (0..=1) in milliseconds; 0 when nothing was acked.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        // Microseconds below an hour are exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let micros = self.latency_us.value_at_quantile(quantile) as f64;
        micros / 1000.0
    }

    /// Adds `other`'s counts (another sending thread's) to this tally.
    pub fn merge(&mut self, other: DeliveryTally) {
        self.acked += other.acked;
        self.failed += other.failed;
        self.undelivered += other.undelivered;
        for (code, (count, first)) in other.errors {
            self.errors.entry(code).or_insert((0, first)).0 += count;
        }
        // Both histograms have the bounds of `new`, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// Prints each distinct error once, with how many records failed with it, on stderr.
    pub fn print_errors(&self) {
        for (code, (count, first)) in &self.errors {
            eprintln!("failed {count} record(s) with error {code}, first: {first}");
        }
    }
}

/// The futures of the records in flight, oldest first, at most `capacity` of them: the
/// application-side window of `send_blocking` + [`DeliveryFuture::wait`], with no closure, thread
/// or channel per record.
#[derive(Debug)]
pub struct DeliveryRing {
    futures: VecDeque<Pending>,
    capacity: usize,
}

/// One future in a [`DeliveryRing`]: of one record, or of one `send_batch` call's records.
#[derive(Debug)]
enum Pending {
    One(DeliveryFuture),
    Many(BatchDeliveryFuture, u64),
}

impl DeliveryRing {
    /// An empty ring holding at most `capacity` futures.
    pub fn new(capacity: usize) -> DeliveryRing {
        let capacity = capacity.max(1);
        DeliveryRing { futures: VecDeque::with_capacity(capacity), capacity }
    }

    /// Adds a future; when the ring is full, first waits for the oldest and counts it.
    pub fn push(&mut self, future: DeliveryFuture, tally: &mut DeliveryTally) {
        self.push_pending(Pending::One(future), tally);
    }

    /// [`DeliveryRing::push`] for the future of a `send_batch` call of `records` records.
    pub fn push_batch(
        &mut self,
        future: BatchDeliveryFuture,
        records: u64,
        tally: &mut DeliveryTally,
    ) {
        self.push_pending(Pending::Many(future, records), tally);
    }

    fn push_pending(&mut self, pending: Pending, tally: &mut DeliveryTally) {
        if self.futures.len() >= self.capacity {
            self.resolve_oldest(tally);
        }
        self.futures.push_back(pending);
    }

    /// Waits for the oldest future and counts it; false when there is none.
    pub fn resolve_oldest(&mut self, tally: &mut DeliveryTally) -> bool {
        match self.futures.pop_front() {
            Some(Pending::One(future)) => tally.count(resolve(future)),
            Some(Pending::Many(future, records)) => tally.count_batch(resolve(future), records),
            None => return false,
        }
        true
    }

    /// Moves every future left into `other` (unbounded: nothing is waited for).
    pub fn drain_into(&mut self, other: &mut DeliveryRing) {
        other.capacity = other.capacity.max(other.futures.len() + self.futures.len());
        other.futures.extend(self.futures.drain(..));
    }

    /// Waits for every future left and counts it.
    pub fn drain(&mut self, tally: &mut DeliveryTally) {
        while self.resolve_oldest(tally) {}
    }
}

/// The future's result: taken without a waker when it is already known (the common case in a
/// full ring, and free of the allocation a wait makes), waited for otherwise.
fn resolve<F: Resolvable>(mut future: F) -> F::Output {
    if future.is_resolved() {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = Pin::new(&mut future).poll(&mut cx) {
            return result;
        }
    }
    future.wait()
}

/// The two delivery futures, as [`resolve`] uses them.
trait Resolvable: Future + Unpin {
    fn is_resolved(&self) -> bool;
    fn wait(self) -> Self::Output;
}

impl Resolvable for DeliveryFuture {
    fn is_resolved(&self) -> bool {
        DeliveryFuture::is_resolved(self)
    }
    fn wait(self) -> Self::Output {
        DeliveryFuture::wait(self)
    }
}

impl Resolvable for BatchDeliveryFuture {
    fn is_resolved(&self) -> bool {
        BatchDeliveryFuture::is_resolved(self)
    }
    fn wait(self) -> Self::Output {
        BatchDeliveryFuture::wait(self)
    }
}

/// `--metrics-addr`: everything in `registry`, encoded by `prometheus::TextEncoder`, at
/// `http://ADDR/metrics`. hyper serves it on a one-thread tokio runtime of its own, on a thread
/// that lives as long as the process, so a slow scraper holds up neither the run nor another
/// scraper. Binding happens here, so a busy or bad address fails before the run starts. Returns
/// the address bound.
pub fn serve_metrics(
    addr: SocketAddr,
    registry: prometheus::Registry,
) -> Result<SocketAddr, String> {
    let cannot = |e: std::io::Error| format!("cannot serve metrics on --metrics-addr {addr}: {e}");
    let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
    let bound = listener.local_addr().map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(cannot)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(cannot)?
    };
    std::thread::Builder::new()
        .name("cli-metrics".to_owned())
        .spawn(move || runtime.block_on(accept_scrapes(listener, registry)))
        .map_err(cannot)?;
    Ok(bound)
}

/// Serves every connection on its own task until the process ends.
async fn accept_scrapes(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, for example: try again shortly.
                tracing::debug!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let reply = scrape_reply(&request, &registry);
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

/// `GET /metrics` gets the text exposition; anything else a 404 that says what is served.
fn scrape_reply<B>(
    request: &hyper::Request<B>,
    registry: &prometheus::Registry,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use prometheus::Encoder as _;
    let encoder = prometheus::TextEncoder::new();
    let (status, content_type, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                Ok(()) => (hyper::StatusCode::OK, encoder.format_type(), body),
                Err(error) => {
                    let text = format!("cannot encode the metrics: {error}\n");
                    (hyper::StatusCode::INTERNAL_SERVER_ERROR, "text/plain", text.into_bytes())
                }
            }
        } else {
            (hyper::StatusCode::NOT_FOUND, "text/plain", b"GET /metrics\n".to_vec())
        };
    let mut reply = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *reply.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        reply.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_errors_once_per_code_and_latency_in_ms() {
        let mut tally = DeliveryTally::new();
        tally.fail(&Error::QueueFull);
        tally.fail(&Error::QueueFull);
        tally.fail(&Error::ProducerClosed);
        tally.count(Err(Error::FlushTimeout { undelivered: 7 }));
        tally.ack(std::time::Duration::from_millis(2));
        assert_eq!((tally.acked, tally.failed, tally.undelivered), (1, 3, 1));
        assert_eq!(tally.errors.len(), 2);
        assert_eq!(tally.errors[&10004].0, 2);
        assert!((tally.latency_ms(0.5) - 2.0).abs() < 0.01);
        assert!(DeliveryTally::new().latency_ms(0.99).abs() < f64::EPSILON);
    }

    #[test]
    fn scrapes_are_the_text_exposition_and_other_paths_404() {
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounter::new("scraped_total", "a counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let get = |method: &str, uri: &str| {
            let request = hyper::Request::builder().method(method).uri(uri).body(()).unwrap();
            scrape_reply(&request, &registry)
        };
        let reply = get("GET", "/metrics?x=1");
        assert_eq!(reply.status(), 200);
        assert!(reply.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let body =
            String::from_utf8(reply.into_body().into_inner().unwrap_or_default().to_vec()).unwrap();
        assert_eq!(
            body,
            "# HELP scraped_total a counter\n# TYPE scraped_total counter\nscraped_total 3\n"
        );
        assert_eq!(get("GET", "/other").status(), 404);
        assert_eq!(get("POST", "/metrics").status(), 404);
    }

    #[test]
    fn targets_are_validated_after_parsing() {
        let args = |url: Option<&str>, endpoints: Option<Vec<&str>>| TargetArgs {
            manager_url: url.map(str::to_owned),
            endpoints: endpoints.map(|list| list.into_iter().map(str::to_owned).collect()),
            group_id: "g".to_owned(),
        };
        assert!(args(None, None).target().unwrap().is_none());
        assert!(args(Some("ftp://x"), None).target().is_err());
        assert!(matches!(
            args(Some("http://127.0.0.1:1/x"), None).target(),
            Ok(Some(Target::Manager(_)))
        ));
        assert!(args(None, Some(vec!["nonsense"])).target().is_err());
        assert!(args(None, Some(vec![""])).target().is_err());
        let Ok(Some(Target::Endpoints(addrs))) =
            args(None, Some(vec!["127.0.0.1:4000", "127.0.0.1:4001"])).target()
        else {
            panic!("two endpoints");
        };
        assert_eq!(addrs.len(), 2);
    }
}
