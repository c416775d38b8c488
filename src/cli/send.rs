//! `inlong-dataproxy send`: one record per line of the given files, or of stdin, to one stream
//! (like `kcat -P`).
//!
//! Every file is opened before anything is sent, so a missing file costs nothing but one error
//! line. Lines lose their trailing `\n` (and a `\r` before it); empty lines are skipped and
//! counted. Records go out with `send_blocking`, their futures wait in a bounded
//! [`DeliveryRing`], and the summary (`sent N, acked N, failed N, skipped N`) plus each distinct
//! error with its count go to stderr. Any failed record makes the exit status non-zero.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use inlong_dataproxy::error::Field;
use inlong_dataproxy::{Producer, Record, StreamId};

use super::{DeliveryRing, DeliveryTally, TargetArgs};

/// Futures kept before the oldest is waited for.
const RING_CAPACITY: usize = 65_536;
/// How long one `send_blocking` may wait for room in the producer's queue.
const SEND_WAIT: Duration = Duration::from_secs(60);
/// How long the final flush may take before the remaining futures are waited for one by one.
const FLUSH_WAIT: Duration = Duration::from_secs(120);
/// Bound on closing the producer once every delivery is known.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Options of `send`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target_required")
        .args(["manager_url", "endpoints"])
        .required(true)
))]
pub struct SendArgs {
    /// The inlong stream ID every record is sent to.
    #[arg(long, value_name = "STREAM")]
    stream_id: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Files to read, one record per line ("-" is stdin) [default: stdin].
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Serve the producer's Prometheus metrics at http://HOST:PORT/metrics while sending.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

/// One opened input.
enum Input {
    Stdin,
    File(PathBuf, File),
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    skipped: u64,
}

/// Sends every line; see the module docs.
pub fn run(args: &SendArgs) -> Result<ExitCode, String> {
    inlong_dataproxy::protocol::validate_id(Field::StreamId, &args.stream_id)
        .map_err(|e| format!("bad --stream-id: {e}"))?;
    let Some(target) = args.target.target()? else {
        return Err("give --manager-url or --endpoints".to_owned());
    };
    let inputs = open_inputs(&args.files)?;
    if let Some(addr) = &args.metrics_addr {
        let registry = inlong_dataproxy::MetricsRegistry::default_registry();
        let addr = super::resolve_addr(addr, "--metrics-addr")?;
        let bound = super::serve_metrics(addr, move || registry.encode_text())?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let producer = target
        .apply(Producer::builder().group_id(args.target.group_id()))
        .build()
        .map_err(|e| format!("cannot start the producer: {e}"))?;

    let stream = StreamId::from(&args.stream_id);
    let mut ring = DeliveryRing::new(RING_CAPACITY);
    let mut tally = DeliveryTally::new();
    let mut counts = Counts::default();
    let mut read_error = None;
    for input in inputs {
        let outcome = match input {
            Input::Stdin => {
                let stdin = std::io::stdin().lock();
                send_lines(stdin, &producer, &stream, &mut ring, &mut tally, &mut counts)
                    .map_err(|e| format!("cannot read stdin: {e}"))
            }
            Input::File(path, file) => {
                let reader = BufReader::with_capacity(1 << 16, file);
                send_lines(reader, &producer, &stream, &mut ring, &mut tally, &mut counts)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
        };
        if let Err(error) = outcome {
            read_error = Some(error);
            break;
        }
    }
    // The drain is authoritative: every future resolves within its attempts.
    let _ = producer.flush_blocking(FLUSH_WAIT);
    ring.drain(&mut tally);
    let closed = producer.close_blocking(CLOSE_WAIT);

    eprintln!(
        "sent {}, acked {}, failed {}, skipped {}",
        counts.sent, tally.acked, tally.failed, counts.skipped
    );
    tally.print_errors();
    if let Some(error) = read_error {
        return Err(error);
    }
    closed.map_err(|e| format!("closing the producer: {e}"))?;
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Opens every input up front, so that a bad path fails before anything is sent.
fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>, String> {
    if files.is_empty() {
        return Ok(vec![Input::Stdin]);
    }
    files
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return Ok(Input::Stdin);
            }
            open_file(path).map(|file| Input::File(path.clone(), file))
        })
        .collect()
}

fn open_file(path: &Path) -> Result<File, String> {
    let cannot =
        |reason: &dyn std::fmt::Display| format!("cannot read {}: {reason}", path.display());
    let file = File::open(path).map_err(|e| cannot(&e))?;
    let metadata = file.metadata().map_err(|e| cannot(&e))?;
    if metadata.is_dir() {
        return Err(cannot(&"it is a directory"));
    }
    Ok(file)
}

/// Sends one record per line of `reader`.
fn send_lines<R: BufRead>(
    mut reader: R,
    producer: &Producer,
    stream: &StreamId,
    ring: &mut DeliveryRing,
    tally: &mut DeliveryTally,
    counts: &mut Counts,
) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        strip_line_end(&mut line);
        if line.is_empty() {
            counts.skipped += 1;
            continue;
        }
        let record = Record::new(stream.clone(), Bytes::from(line));
        counts.sent += 1;
        match producer.send_blocking(record, SEND_WAIT) {
            Ok(future) => ring.push(future, tally),
            Err(error) => tally.fail(&error),
        }
    }
}

/// Drops a trailing `\n` and a `\r` before it.
fn strip_line_end(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_are_stripped_once() {
        for (input, expected) in [
            (&b"a\n"[..], &b"a"[..]),
            (b"a\r\n", b"a"),
            (b"a", b"a"),
            (b"\n", b""),
            (b"a\n\n", b"a\n"),
            (b"a\r", b"a\r"),
        ] {
            let mut line = input.to_vec();
            strip_line_end(&mut line);
            assert_eq!(line, expected);
        }
    }

    #[test]
    fn missing_files_and_directories_are_refused_before_sending() {
        let missing = open_inputs(&[PathBuf::from("/nonexistent/records.txt")]);
        let error = missing.err().unwrap();
        assert!(error.starts_with("cannot read /nonexistent/records.txt: "), "{error}");
        assert!(!error.contains('\n'));
        let directory = open_inputs(&[std::env::temp_dir()]).err().unwrap();
        assert!(directory.ends_with("it is a directory"), "{directory}");
        assert!(matches!(open_inputs(&[]).unwrap().as_slice(), [Input::Stdin]));
    }
}
