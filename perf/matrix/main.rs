//! The end-to-end performance matrix: the producer against `inlong-dataproxy serve` in a separate
//! process, beside the ideal pipeline measured in the same run.
//!
//! ```text
//! cargo run --release --example perf_matrix -- [--reps 3] [--duration SECS] [--quick]
//!     [--out perf/results] [--no-build]
//! ```
//!
//! What it does:
//! 1. Builds `inlong-dataproxy` and the `ideal_pipeline` example (release), unless `--no-build`.
//! 2. Starts `inlong-dataproxy serve --count-only` (the sink trusts each batch's `cnt`, so it
//!    costs this machine little, as a sink on its own machine would cost nothing).
//! 3. Runs every job of the matrix once per repetition, repetitions interleaved (job 1..n, then
//!    again), each job a fresh process so its CPU time and peak RSS are its own:
//!    - the producer (`inlong-dataproxy bench --json --duration D` against the server's
//!      Manager): 100 B / 1 KiB × 1 / 100 streams × 1 / 2 shards × io_uring / epoll, plus 100 B
//!      without compression;
//!    - the ideal pipeline (`ideal_pipeline`): the same sizes and drivers, and without
//!      compression;
//!    - then, from the medians of the peak runs: the producer at half its peak rate (latency),
//!      and closing the producer after one second of full-speed sending (`--role close-backlog`
//!      of this program).
//! 4. Writes `perf/results/<date>.json` (every run and the medians), `<date>.md` (the table, with
//!    each producer row as a ratio to the ideal pipeline of the same size, driver and
//!    compression, and the targets of issue 7 checked) and `<date>.png` (throughput and CPU per
//!    record by record size).

mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

struct Args {
    reps: usize,
    duration: f64,
    quick: bool,
    out: PathBuf,
    build: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut o = Args {
        reps: 3,
        duration: 3.0,
        quick: false,
        out: PathBuf::from("perf/results"),
        build: true,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--reps" => o.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--duration" => {
                o.duration = value()?.parse().map_err(|e| format!("--duration: {e}"))?
            }
            "--quick" => o.quick = true,
            "--out" => o.out = PathBuf::from(value()?),
            "--no-build" => o.build = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.reps == 0 || o.duration.is_nan() || o.duration <= 0.0 {
        return Err("--reps and --duration must be positive".to_owned());
    }
    Ok(o)
}

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `inlong-dataproxy bench` at full speed.
    Producer,
    /// `ideal_pipeline`.
    Ideal,
    /// `inlong-dataproxy bench --rate` at half the median peak of the matching producer job.
    HalfPeak,
    /// This program's `--role close-backlog`.
    CloseBacklog,
}

/// One cell of the matrix.
#[derive(Debug, Clone)]
struct Job {
    kind: Kind,
    size: usize,
    streams: u32,
    shards: u16,
    transport: &'static str,
    compress: bool,
    /// Records per second for `HalfPeak`.
    rate: u64,
    /// `5`, `7` or `7-sink`: `bench --msg-type` and `--ack`.
    protocol: &'static str,
}

impl Job {
    fn name(&self) -> String {
        let compression = if self.compress { "" } else { " no-compress" };
        let protocol = match self.protocol {
            "5" => String::new(),
            other => format!(" msgType {other}"),
        };
        match self.kind {
            Kind::Producer => format!(
                "producer {} B {} stream(s) {} shard(s) {}{compression}{protocol}",
                self.size, self.streams, self.shards, self.transport
            ),
            Kind::Ideal => format!("ideal {} B {}{compression}", self.size, self.transport),
            Kind::HalfPeak => format!(
                "half-peak {} B {} stream(s) {} shard(s) {}{protocol} at {} rec/s",
                self.size, self.streams, self.shards, self.transport, self.rate
            ),
            Kind::CloseBacklog => {
                format!("close after 1 s backlog {} B {}", self.size, self.transport)
            }
        }
    }

    /// The ideal job a producer job is compared with.
    fn ideal_name(&self) -> String {
        let compression = if self.compress { "" } else { " no-compress" };
        format!("ideal {} B {}{compression}", self.size, self.transport)
    }

    fn producer(size: usize, streams: u32, shards: u16, transport: &'static str) -> Job {
        Job {
            kind: Kind::Producer,
            size,
            streams,
            shards,
            transport,
            compress: true,
            rate: 0,
            protocol: "5",
        }
    }

    fn ideal(size: usize, transport: &'static str, compress: bool) -> Job {
        Job { kind: Kind::Ideal, shards: 0, compress, ..Job::producer(size, 1, 0, transport) }
    }

    /// `bench`'s protocol flags for this job.
    fn protocol_args(&self) -> [&'static str; 4] {
        let (msg_type, ack) = match self.protocol {
            "7" => ("7", "proxy"),
            "7-sink" => ("7", "sink"),
            _ => ("5", "proxy"),
        };
        ["--msg-type", msg_type, "--ack", ack]
    }
}

/// Paths of the programs the matrix runs.
struct Programs {
    cli: PathBuf,
    ideal: PathBuf,
    this: PathBuf,
}

fn programs(build: bool) -> Result<Programs, String> {
    let this = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let dir = this
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory from this program's path")?
        .to_path_buf();
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        eprintln!("building inlong-dataproxy and ideal_pipeline (release) ...");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--bin",
                "inlong-dataproxy",
                "--example",
                "ideal_pipeline",
            ])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
    }
    let programs = Programs {
        cli: dir.join("inlong-dataproxy"),
        ideal: dir.join("examples/ideal_pipeline"),
        this,
    };
    for path in [&programs.cli, &programs.ideal] {
        if !path.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --bin inlong-dataproxy --example ideal_pipeline`",
                path.display()
            ));
        }
    }
    Ok(programs)
}

/// `inlong-dataproxy serve --count-only`, killed when dropped.
struct Server {
    child: Child,
    manager_url: String,
    node: String,
}

impl Server {
    fn start(cli: &Path) -> Result<Server, String> {
        let mut child = Command::new(cli)
            .args(["serve", "--count-only", "--nodes", "1", "--sink-latency-ms", SINK_LATENCY_MS])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start serve: {e}"))?;
        let stdout = child.stdout.take().ok_or("serve has no stdout")?;
        let stderr = child.stderr.take().ok_or("serve has no stderr")?;
        let mut manager_url = String::new();
        BufReader::new(stdout)
            .read_line(&mut manager_url)
            .map_err(|e| format!("serve's first line: {e}"))?;
        let mut stderr = BufReader::new(stderr);
        let mut line = String::new();
        let mut node = None;
        while node.is_none() {
            line.clear();
            if stderr.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("serve exited before listening".to_owned());
            }
            node = line.trim().strip_prefix("serving 1 DataProxy node(s) at ").map(str::to_owned);
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let node = node.unwrap_or_default();
        Ok(Server { child, manager_url: manager_url.trim().to_owned(), node })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one job to completion and returns its JSON result.
fn run_job(
    job: &Job,
    programs: &Programs,
    server: &Server,
    duration: f64,
) -> Result<Value, String> {
    let duration_text = format!("{duration}");
    let mut command = match job.kind {
        Kind::Producer | Kind::HalfPeak => {
            let mut command = Command::new(&programs.cli);
            command.args(["bench", "--json", "--manager-url", &server.manager_url]);
            command.args(["--duration", &duration_text]);
            command.args(["--size", &job.size.to_string(), "--streams", &job.streams.to_string()]);
            command.args(["--shards", &job.shards.to_string(), "--transport", job.transport]);
            command.args(job.protocol_args());
            if job.kind == Kind::HalfPeak {
                command.args(["--rate", &job.rate.to_string()]);
            }
            if !job.compress {
                command.arg("--no-compress");
            }
            command
        }
        Kind::Ideal => {
            let mut command = Command::new(&programs.ideal);
            command.args(["--addr", &server.node, "--duration", &duration_text]);
            command.args(["--size", &job.size.to_string(), "--transport", job.transport]);
            if !job.compress {
                command.arg("--no-compress");
            }
            command
        }
        Kind::CloseBacklog => {
            let mut command = Command::new(&programs.this);
            command.args(["--role", "close-backlog", "--manager-url", &server.manager_url]);
            command.args(["--size", &job.size.to_string(), "--transport", job.transport]);
            command
        }
    };
    let output =
        command.stderr(Stdio::piped()).output().map_err(|e| format!("{}: {e}", job.name()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|line| line.starts_with('{')).unwrap_or("");
    let value: Value = serde_json::from_str(line).map_err(|_| {
        format!(
            "{}: exit {}, no JSON result; stderr: {}",
            job.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "{}: exit {}: {value}; stderr: {}",
            job.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(value)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

/// The numeric fields of every run, as medians over the repetitions.
fn medians(runs: &[Value]) -> Map<String, Value> {
    let mut fields: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        if let Some(object) = run.as_object() {
            for (key, value) in object {
                if let Some(number) = value.as_f64() {
                    fields.entry(key.clone()).or_default().push(number);
                }
            }
        }
    }
    fields.into_iter().map(|(key, values)| (key, json!(round(median(values), 3)))).collect()
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `YYYY-MM-DD` (UTC) of the current time.
fn today() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let days = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "--role") {
        let _ = args.next();
        let role = args.next().unwrap_or_default();
        let code = match role.as_str() {
            "close-backlog" => close_backlog::run(args),
            other => {
                eprintln!("error: unknown role {other:?}");
                2
            }
        };
        std::process::exit(code);
    }
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run_matrix(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn matrix_jobs(quick: bool) -> Vec<Job> {
    let transports: &[&'static str] = if quick { &["io_uring"] } else { &["io_uring", "epoll"] };
    let mut jobs = Vec::new();
    for &transport in transports {
        for size in [100, 1024] {
            jobs.push(Job::ideal(size, transport, true));
            for streams in [1, 100] {
                for shards in [1, 2] {
                    if quick && shards == 1 {
                        continue;
                    }
                    jobs.push(Job::producer(size, streams, shards, transport));
                }
            }
        }
    }
    jobs.push(Job::ideal(100, "io_uring", false));
    jobs.push(Job { compress: false, ..Job::producer(100, 1, 2, "io_uring") });
    // The binary protocol, and sink acknowledgement (the sink's store takes SINK_LATENCY_MS).
    for protocol in ["7", "7-sink"] {
        for size in [100, 1024] {
            jobs.push(Job { protocol, ..Job::producer(size, 1, 2, "io_uring") });
        }
    }
    jobs
}

/// The simulated MQ's store latency for sink-acknowledged frames (`serve --sink-latency-ms`).
const SINK_LATENCY_MS: &str = "5";

/// Runs `jobs[first..]` `args.reps` times, repetitions interleaved (every job once, then again),
/// appending each result to `runs[job]`.
fn run_interleaved(
    jobs: &[Job],
    first: usize,
    runs: &mut [Vec<Value>],
    programs: &Programs,
    server: &Server,
    args: &Args,
) -> Result<(), String> {
    let total = (jobs.len() - first) * args.reps;
    let mut done = 0;
    for rep in 0..args.reps {
        for (index, job) in jobs.iter().enumerate().skip(first) {
            done += 1;
            let value = run_job(job, programs, server, args.duration)?;
            eprintln!("[{done}/{total}] rep {} {}: {value}", rep + 1, job.name());
            runs[index].push(value);
        }
    }
    Ok(())
}

fn run_matrix(args: &Args) -> Result<(), String> {
    let programs = programs(args.build)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before the run: {}", load.trim());
    let server = Server::start(&programs.cli)?;
    eprintln!("serve --count-only at {} (node {})", server.manager_url, server.node);
    let started = Instant::now();

    let mut jobs = matrix_jobs(args.quick);
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); jobs.len()];
    run_interleaved(&jobs, 0, &mut runs, &programs, &server, args)?;

    // Half of the measured peak, for latency; closing after a backlog.
    let peak_of = |size: usize, protocol: &str| -> f64 {
        jobs.iter()
            .position(|j| {
                j.kind == Kind::Producer
                    && j.size == size
                    && j.streams == 1
                    && j.shards == 2
                    && j.transport == "io_uring"
                    && j.compress
                    && j.protocol == protocol
            })
            .map_or(f64::NAN, |i| {
                median(runs[i].iter().filter_map(|r| r["records_per_sec"].as_f64()).collect())
            })
    };
    let mut extra = Vec::new();
    for protocol in ["5", "7", "7-sink"] {
        for size in [100, 1024] {
            let peak = peak_of(size, protocol);
            if peak.is_finite() {
                // Rates are far below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rate = (peak / 2.0) as u64;
                let job = Job::producer(size, 1, 2, "io_uring");
                extra.push(Job { kind: Kind::HalfPeak, rate, protocol, ..job });
            }
        }
    }
    extra.push(Job { kind: Kind::CloseBacklog, ..Job::producer(100, 1, 2, "io_uring") });
    let first_extra = jobs.len();
    jobs.extend(extra);
    runs.resize(jobs.len(), Vec::new());
    run_interleaved(&jobs, first_extra, &mut runs, &programs, &server, args)?;
    drop(server);

    let medians: Vec<Map<String, Value>> = runs.iter().map(|r| medians(r)).collect();
    let date = today();
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let report = Report { jobs: &jobs, runs: &runs, medians: &medians, args, date: &date };
    let json_path = args.out.join(format!("{date}.json"));
    let md_path = args.out.join(format!("{date}.md"));
    let png_path = args.out.join(format!("{date}.png"));
    let text = serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let markdown = report.markdown(started.elapsed());
    std::fs::write(&md_path, &markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let (throughput, cpu) = report.series();
    plot::write_png(&png_path, &format!("inlong-dataproxy producer, {date}"), &throughput, &cpu)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{markdown}").map_err(|e| e.to_string())?;
    writeln!(
        stdout,
        "wrote {}, {}, {}",
        json_path.display(),
        md_path.display(),
        png_path.display()
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// (record size, value) points of one plot line.
type Points = Vec<(f64, f64)>;

/// Everything measured, and its renderings.
struct Report<'a> {
    jobs: &'a [Job],
    runs: &'a [Vec<Value>],
    medians: &'a [Map<String, Value>],
    args: &'a Args,
    date: &'a str,
}

impl Report<'_> {
    fn median_of(&self, name: &str) -> Option<&Map<String, Value>> {
        self.jobs.iter().position(|job| job.name() == name).map(|i| &self.medians[i])
    }

    fn field(map: &Map<String, Value>, key: &str) -> f64 {
        map.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
    }

    /// Producer records/s and CPU per record as ratios to the matching ideal job.
    fn ratios(&self, job: &Job, median: &Map<String, Value>) -> Option<(f64, f64)> {
        let ideal = self.median_of(&job.ideal_name())?;
        let rate = Self::field(median, "records_per_sec") / Self::field(ideal, "records_per_sec");
        let cpu =
            Self::field(median, "cpu_us_per_record") / Self::field(ideal, "cpu_us_per_record");
        Some((rate, cpu))
    }

    fn json(&self) -> Value {
        let machine = json!({
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        });
        let jobs: Vec<Value> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let mut median = self.medians[i].clone();
                if job.kind == Kind::Producer {
                    if let Some((rate, cpu)) = self.ratios(job, &self.medians[i]) {
                        median.insert("vs_ideal_records_per_sec".to_owned(), json!(round(rate, 3)));
                        median.insert("vs_ideal_cpu_per_record".to_owned(), json!(round(cpu, 3)));
                    }
                }
                json!({
                    "job": job.name(),
                    "size": job.size,
                    "streams": job.streams,
                    "shards": job.shards,
                    "transport": job.transport,
                    "compress": job.compress,
                    "protocol": job.protocol,
                    "runs": self.runs[i],
                    "median": median,
                })
            })
            .collect();
        json!({
            "date": self.date,
            "machine": machine,
            "reps": self.args.reps,
            "duration_secs": self.args.duration,
            "sink": format!(
                "inlong-dataproxy serve --count-only --sink-latency-ms {SINK_LATENCY_MS} (separate process)"
            ),
            "jobs": jobs,
            "targets": self.targets().into_iter().map(|(what, target, got, ok)| json!({
                "target": what, "wanted": target, "measured": got, "met": ok,
            })).collect::<Vec<_>>(),
        })
    }

    /// The performance targets: (what, wanted, measured, met).
    fn targets(&self) -> Vec<(String, String, String, bool)> {
        let mut out = Vec::new();
        let mut check =
            |name: &str, key: &str, what: &str, wanted: &str, ok: &dyn Fn(f64) -> bool| {
                if let Some(m) = self.median_of(name) {
                    let got = Self::field(m, key);
                    out.push((
                        format!("{what} ({name})"),
                        wanted.to_owned(),
                        format!("{got}"),
                        ok(got),
                    ));
                }
            };
        for streams in [1, 100] {
            let name = Job::producer(100, streams, 2, "io_uring").name();
            check(&name, "records_per_sec", "100 B records/s", ">= 2.9 M", &|v| v >= 2.9e6);
            check(&name, "cpu_us_per_record", "100 B CPU us/record", "<= 0.6", &|v| v <= 0.6);
            check(&name, "max_rss_mb", "100 B RSS MB", "<= 48", &|v| v <= 48.0);
        }
        let name = Job::producer(1024, 1, 2, "io_uring").name();
        check(&name, "records_per_sec", "1 KiB records/s", ">= 0.6 M", &|v| v >= 0.6e6);
        check(&name, "cpu_us_per_record", "1 KiB CPU us/record", "<= 3", &|v| v <= 3.0);
        check(&name, "max_rss_mb", "1 KiB RSS MB", "<= 220", &|v| v <= 220.0);
        let name = Job { compress: false, ..Job::producer(100, 1, 2, "io_uring") }.name();
        check(&name, "records_per_sec", "100 B no compression records/s", ">= 10 M", &|v| {
            v >= 10e6
        });
        for job in self.jobs.iter().filter(|j| j.kind == Kind::HalfPeak) {
            check(&job.name(), "p99_ms", "p99 at half peak, ms", "<= 25 (linger 20 + 5)", &|v| {
                v <= 25.0
            });
        }
        for job in self.jobs.iter().filter(|j| j.kind == Kind::CloseBacklog) {
            check(
                &job.name(),
                "close_ms",
                "close after 1 s of full-speed sending, ms",
                "<= 1000",
                &|v| v <= 1000.0,
            );
        }
        for (i, job) in self.jobs.iter().enumerate() {
            if job.kind == Kind::Producer {
                if let Some((rate, _)) = self.ratios(job, &self.medians[i]) {
                    out.push((
                        format!("records/s vs ideal ({})", job.name()),
                        ">= 0.85".to_owned(),
                        format!("{:.2}", rate),
                        rate >= 0.85,
                    ));
                }
            }
        }
        out
    }

    fn markdown(&self, took: Duration) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Performance matrix, {} ({} reps interleaved, {} s per run, medians; sink: `serve --count-only --sink-latency-ms {SINK_LATENCY_MS}` in a separate process, the latency applying to sink-acknowledged frames only; took {:.0} s)\n",
            self.date,
            self.args.reps,
            self.args.duration,
            took.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| Job | records/s | MB/s | CPU µs/record | max RSS MB | p50 / p99 / p999 ms | vs ideal: records/s, CPU |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for (i, job) in self.jobs.iter().enumerate() {
            let m = &self.medians[i];
            let f = |key: &str| Self::field(m, key);
            let latency = if matches!(job.kind, Kind::Producer | Kind::HalfPeak) {
                format!("{:.1} / {:.1} / {:.1}", f("p50_ms"), f("p99_ms"), f("p999_ms"))
            } else {
                "—".to_owned()
            };
            let ratio = match (job.kind, self.ratios(job, m)) {
                (Kind::Producer, Some((rate, cpu))) => format!("{rate:.2}, {cpu:.2}x"),
                _ => "—".to_owned(),
            };
            if job.kind == Kind::CloseBacklog {
                let _ = writeln!(
                    md,
                    "| {}: {:.0} records sent in 1 s, close took **{:.0} ms** with {:.0} pending, {:.0} failed | — | — | — | — | — | — |",
                    job.name(),
                    f("records"),
                    f("close_ms"),
                    f("pending_at_close"),
                    f("failed")
                );
                continue;
            }
            let name = job.name();
            let _ = writeln!(
                md,
                "| {name} | {:.3} M | {:.1} | {:.3} | {:.1} | {latency} | {ratio} |",
                f("records_per_sec") / 1e6,
                f("mb_per_sec"),
                f("cpu_us_per_record"),
                f("max_rss_mb"),
            );
        }
        let _ = writeln!(md, "\n### Targets\n");
        let _ = writeln!(md, "| Target | Wanted | Measured | Met |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (what, wanted, got, ok) in self.targets() {
            let _ = writeln!(
                md,
                "| {what} | {wanted} | {got} | {} |",
                if ok { "yes" } else { "**no**" }
            );
        }
        md
    }

    /// Plot series: records/s (M) and CPU µs per record by record size, for the producer with
    /// 2 shards per driver and stream count, and the ideal pipeline per driver.
    fn series(&self) -> (Vec<plot::Series>, Vec<plot::Series>) {
        let mut groups: BTreeMap<String, (Points, Points)> = BTreeMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let label = match job.kind {
                Kind::Producer if job.shards == 2 && job.compress && job.protocol == "5" => {
                    format!("producer {} {} stream(s)", job.transport, job.streams)
                }
                Kind::Producer if job.shards == 2 && job.compress => {
                    format!("producer {} msgType {}", job.transport, job.protocol)
                }
                Kind::Ideal if job.compress => format!("ideal pipeline {}", job.transport),
                _ => continue,
            };
            // Sizes are small integers.
            #[allow(clippy::cast_precision_loss)]
            let size = job.size as f64;
            let entry = groups.entry(label).or_default();
            entry.0.push((size, Self::field(&self.medians[i], "records_per_sec") / 1e6));
            entry.1.push((size, Self::field(&self.medians[i], "cpu_us_per_record")));
        }
        let mut throughput = Vec::new();
        let mut cpu = Vec::new();
        for (label, (rate, per_record)) in groups {
            throughput.push(plot::Series { label: label.clone(), points: rate });
            cpu.push(plot::Series { label, points: per_record });
        }
        (throughput, cpu)
    }
}

/// `--role close-backlog`: sends 100 B records as fast as the producer takes them for one second,
/// then closes and measures how long closing takes (every record must be acked).
mod close_backlog {
    use std::time::{Duration, Instant};

    use inlong_dataproxy::{Producer, Record, StreamId, Transport};
    use inlong_dataproxy_testkit::workload::log_line;

    pub fn run(mut args: impl Iterator<Item = String>) -> i32 {
        let (mut url, mut size, mut transport) = (String::new(), 100usize, Transport::Auto);
        while let Some(flag) = args.next() {
            let value = args.next().unwrap_or_default();
            match flag.as_str() {
                "--manager-url" => url = value,
                "--size" => size = value.parse().unwrap_or(100),
                "--transport" => transport = value.parse().unwrap_or(Transport::Auto),
                _ => {}
            }
        }
        let producer = match Producer::builder()
            .group_id("test_group")
            .manager_url(url)
            .node_list_cache(false)
            .transport(transport)
            .build()
        {
            Ok(producer) => producer,
            Err(error) => {
                eprintln!("error: {error}");
                return 1;
            }
        };
        let payloads: Vec<bytes::Bytes> = (0..4096).map(|i| log_line(i, size)).collect();
        let stream = StreamId::from("stream-0");
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            for _ in 0..256 {
                let record =
                    Record::new(stream.clone(), payloads[sent as usize % payloads.len()].clone());
                if producer.send_blocking(record, Duration::from_secs(10)).is_err() {
                    eprintln!("error: send_blocking failed");
                    return 1;
                }
                sent += 1;
            }
        }
        let pending = producer.in_flight_count();
        let closing = Instant::now();
        let closed = producer.close_blocking(Duration::from_secs(30));
        let close_ms = closing.elapsed().as_secs_f64() * 1000.0;
        let stats = producer.stats();
        println!(
            "{{\"records\":{sent},\"pending_at_close\":{pending},\"close_ms\":{close_ms:.1},\"acked\":{},\"failed\":{},\"closed_ok\":{}}}",
            stats.records_acked,
            stats.records_failed,
            closed.is_ok()
        );
        i32::from(closed.is_err() || stats.records_acked != sent)
    }
}
