//! `inlong-dataproxy send`: one record per line of the given files, or of stdin, to one stream
//! (like `kcat -P`).
//!
//! Every file is opened before anything is sent, so a missing file costs nothing but one error
//! line. A reader thread reads the inputs in order and hands their lines over a bounded channel,
//! so the send loop never sits in a `read` it cannot leave: a signal wakes it through the same
//! channel. Lines lose their trailing `\n` (and a `\r` before it); empty lines are skipped and
//! counted. Records go out with `send_blocking`, their futures wait in a bounded
//! [`DeliveryRing`], and the summary (`sent N, acked N, failed N, undelivered N, skipped N`) plus
//! each distinct error with its count go to stderr. Any failed record makes the exit status
//! non-zero.
//!
//! On SIGINT or SIGTERM (see [`super::interrupt`]) reading stops, the producer is closed within
//! `--close-timeout`, a line names the signal, the summary follows, and the exit status is 130
//! or 143; `undelivered` counts the records the close deadline cut short.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use inlong_dataproxy::{Error, Producer, Record, StreamId};

use super::interrupt::{CloseArgs, Interrupts};
use super::{DeliveryRing, DeliveryTally, ProtocolArgs, TargetArgs};

/// Futures kept before the oldest is waited for.
const RING_CAPACITY: usize = 65_536;
/// Lines read ahead of the send loop.
const LINES_AHEAD: usize = 1024;
/// How long one `send_blocking` may wait for room in the producer's queue.
const SEND_WAIT: Duration = Duration::from_secs(60);
/// How long the final flush may take before the remaining futures are waited for one by one.
const FLUSH_WAIT: Duration = Duration::from_secs(120);

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
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Files to read, one record per line ("-" is stdin) [default: stdin].
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Serve the producer's Prometheus metrics at http://HOST:PORT/metrics while sending.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    #[command(flatten)]
    close: CloseArgs,
}

/// One opened input.
enum Input {
    Stdin,
    File(PathBuf, File),
}

/// What the reader thread hands to the send loop.
enum Feed {
    /// One line, its line end still on.
    Line(Vec<u8>),
    /// Every input was read to its end.
    End,
    /// Reading failed: the error line to print.
    Failed(String),
    /// A signal arrived (sent by the wake hook, so a loop waiting for a line sees it).
    Interrupted,
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    skipped: u64,
}

/// Sends every line; see the module docs.
pub fn run(args: &SendArgs) -> Result<ExitCode, String> {
    let interrupts = Interrupts::install(args.close.close_timeout())?;
    inlong_dataproxy::StreamId::from(&args.stream_id)
        .validate()
        .map_err(|e| format!("bad --stream-id: {e}"))?;
    let Some(target) = args.target.target()? else {
        return Err("give --manager-url or --endpoints".to_owned());
    };
    let inputs = open_inputs(&args.files)?;
    if let Some(addr) = &args.metrics_addr {
        let registry = inlong_dataproxy::MetricsRegistry::default_registry();
        let addr = super::resolve_addr(addr, "--metrics-addr")?;
        let bound = super::serve_metrics(addr, registry.registry().clone())?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let producer = target
        .apply(args.protocol.apply(Producer::builder().group_id(args.target.group_id())))
        .build()
        .map_err(|e| format!("cannot start the producer: {e}"))?;
    let producer = Arc::new(producer);

    let (feed_tx, feed) = std::sync::mpsc::sync_channel(LINES_AHEAD);
    let wake = feed_tx.clone();
    // A full channel needs no wake-up: the loop is about to take a line and check again.
    interrupts.watch(&producer, move || drop(wake.try_send(Feed::Interrupted)));
    spawn_reader(inputs, feed_tx).map_err(|e| format!("cannot start reading: {e}"))?;

    let stream = StreamId::from(&args.stream_id);
    let mut ring = DeliveryRing::new(RING_CAPACITY);
    let mut tally = DeliveryTally::new();
    let mut counts = Counts::default();
    let sender = SendLoop { producer: &producer, stream: &stream, interrupts: &interrupts };
    let read_error = sender.send_feed(&feed, &mut ring, &mut tally, &mut counts);
    let stopped_by = interrupts.signal();
    if let Some(signal) = stopped_by {
        announce(signal.name(), interrupts.close_timeout());
    } else {
        // The drain is authoritative: every future resolves within its attempts.
        let _ = producer.flush_blocking(FLUSH_WAIT);
    }
    ring.drain(&mut tally);
    let closed = interrupts.close(&producer);
    let signal = interrupts.signal();
    if let (Some(signal), None) = (signal, stopped_by) {
        announce(signal.name(), interrupts.close_timeout());
    }

    eprintln!(
        "sent {}, acked {}, failed {}, undelivered {}, skipped {}",
        counts.sent, tally.acked, tally.failed, tally.undelivered, counts.skipped
    );
    tally.print_errors();
    if let Some(signal) = signal {
        if let Some(error) = read_error {
            eprintln!("error: {error}");
        }
        // Undelivered records are in the summary; the close's error would only repeat them.
        return Ok(ExitCode::from(signal.exit_code()));
    }
    if let Some(error) = read_error {
        return Err(error);
    }
    closed.map_err(|e| format!("closing the producer: {e}"))?;
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The line naming the signal, printed before the summary.
fn announce(signal: &str, close_timeout: Duration) {
    eprintln!(
        "interrupted by {signal}: stopped reading; closing the producer within {}s \
         (a second signal exits at once)",
        close_timeout.as_secs_f64()
    );
}

/// Reads every input, in order, on its own thread; it ends at the end of the inputs, at a read
/// error, or when the send loop is gone. A `read` that never returns (a pipe kept open) only
/// keeps this thread, which the process leaves behind when it exits.
fn spawn_reader(inputs: Vec<Input>, feed: SyncSender<Feed>) -> std::io::Result<()> {
    std::thread::Builder::new().name("send-reader".to_owned()).spawn(move || {
        for input in inputs {
            let read = match input {
                Input::Stdin => read_lines(std::io::stdin().lock(), &feed)
                    .map_err(|e| format!("cannot read stdin: {e}")),
                Input::File(path, file) => {
                    read_lines(BufReader::with_capacity(1 << 16, file), &feed)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))
                }
            };
            match read {
                Ok(true) => {}
                // The send loop stopped taking lines.
                Ok(false) => return,
                Err(error) => {
                    let _ = feed.send(Feed::Failed(error));
                    return;
                }
            }
        }
        let _ = feed.send(Feed::End);
    })?;
    Ok(())
}

/// Hands every line of `reader` to the send loop; `Ok(false)` when the loop is gone.
fn read_lines<R: BufRead>(mut reader: R, feed: &SyncSender<Feed>) -> std::io::Result<bool> {
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(true);
        }
        if feed.send(Feed::Line(line)).is_err() {
            return Ok(false);
        }
    }
}

/// The send loop's fixed inputs.
struct SendLoop<'a> {
    producer: &'a Producer,
    stream: &'a StreamId,
    interrupts: &'a Interrupts,
}

impl SendLoop<'_> {
    /// Sends one record per line from `feed` until its end, a read error (returned) or a signal.
    fn send_feed(
        &self,
        feed: &Receiver<Feed>,
        ring: &mut DeliveryRing,
        tally: &mut DeliveryTally,
        counts: &mut Counts,
    ) -> Option<String> {
        loop {
            if self.interrupts.signal().is_some() {
                return None;
            }
            let mut line = match feed.recv() {
                Ok(Feed::Line(line)) => line,
                Ok(Feed::Interrupted) => continue,
                Ok(Feed::End) | Err(_) => return None,
                Ok(Feed::Failed(error)) => return Some(error),
            };
            strip_line_end(&mut line);
            if line.is_empty() {
                counts.skipped += 1;
                continue;
            }
            let record = Record::new(self.stream.clone(), Bytes::from(line));
            match self.producer.send_blocking(record, SEND_WAIT) {
                Ok(future) => {
                    counts.sent += 1;
                    ring.push(future, tally);
                }
                // Refused because the signal's close began: never sent, so not counted.
                Err(Error::ProducerClosed) if self.interrupts.signal().is_some() => return None,
                Err(error) => {
                    counts.sent += 1;
                    tally.fail(&error);
                }
            }
        }
    }
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
