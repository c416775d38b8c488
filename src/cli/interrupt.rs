//! SIGINT and SIGTERM for `send` and `bench`: [`Interrupts`] turns the first signal into an
//! orderly stop and a second one into an immediate exit.
//!
//! The handlers are tokio's (`tokio::signal`), served by one small thread with its own
//! current-thread runtime and installed before a command does anything else. On the first signal
//! the producer's close begins at once, on a helper thread, and the command's send loop, which
//! checks [`Interrupts::signal`] before every record, stops taking records. Starting the close
//! is what keeps the stop bounded: a closing producer refuses new records, which frees a
//! `send_blocking` waiting for room, and resolves every pending delivery by the close deadline
//! (those still unacked fail with [`Error::FlushTimeout`]), so nothing the loop waits on outlasts
//! `--close-timeout`. The command then prints its summary and exits with
//! [`Signal::exit_code`]. A second signal exits at once with the same status.
//!
//! This module owns the signal thread and the single close of the producer (whoever asks first,
//! the signal or the command's normal end, runs it; the other waits for its result). It never
//! touches the counts, which stay with the command.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use inlong_dataproxy::{Error, Producer};

/// What `--help` of `send` and `bench` says about signals.
pub const SIGNALS_HELP: &str = "\
On SIGINT or SIGTERM no more records are sent (send stops reading its input), the producer is \
closed within --close-timeout, the summary is printed with the records still undelivered at \
that deadline and a line naming the signal, and the exit status is 130 (SIGINT) or 143 \
(SIGTERM). A second signal exits at once, with the same status and no summary.";

/// The longest `--close-timeout` accepted.
const MAX_CLOSE_TIMEOUT_SECS: f64 = 3600.0;

/// `--close-timeout`, shared by `send` and `bench`.
#[derive(Debug, clap::Args)]
pub struct CloseArgs {
    /// How long closing the producer may wait for outstanding acks, at the end of the run or
    /// after SIGINT/SIGTERM; records still unacked then are counted as undelivered.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_close_timeout)]
    close_timeout: Duration,
}

impl CloseArgs {
    /// The close deadline, from the moment the close begins.
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }
}

fn parse_close_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..=MAX_CLOSE_TIMEOUT_SECS).contains(&seconds) {
        return Err("must be at least 0 and at most 3600".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The signal that interrupted a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// 128 plus the signal's number, the status a shell shows for a process the signal ended.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    /// The tag stored in [`Shared::first`] (0 means no signal yet).
    fn tag(self) -> u8 {
        match self {
            Signal::Interrupt => 1,
            Signal::Terminate => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Signal> {
        match tag {
            1 => Some(Signal::Interrupt),
            2 => Some(Signal::Terminate),
            _ => None,
        }
    }
}

/// The handlers of one command run; see the module docs.
#[derive(Debug)]
pub struct Interrupts {
    shared: Arc<Shared>,
}

/// What the signal thread, the close thread and the command share.
#[derive(Debug)]
struct Shared {
    /// The first signal's [`Signal::tag`], 0 until one arrives: read before every record.
    first: AtomicU8,
    close_timeout: Duration,
    state: Mutex<State>,
    /// Notified when the close is done.
    close_done: Condvar,
}

/// Who is closing the producer, and with what result.
#[derive(Default)]
struct State {
    /// The producer to close on a signal; weak, so the command still decides when it is dropped.
    producer: Option<Weak<Producer>>,
    /// Wakes the command's loop if it waits for input, called once on the first signal.
    wake: Option<Box<dyn FnOnce() + Send>>,
    close: Close,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("producer", &self.producer.is_some())
            .field("wake", &self.wake.is_some())
            .field("close", &self.close)
            .finish()
    }
}

#[derive(Debug, Default)]
enum Close {
    #[default]
    NotStarted,
    Running,
    Done(Result<(), Error>),
}

impl Interrupts {
    /// Installs the SIGINT and SIGTERM handlers; from now on neither signal ends the process
    /// without a summary. `close_timeout` bounds the producer's close.
    pub fn install(close_timeout: Duration) -> Result<Interrupts, String> {
        let shared = Arc::new(Shared {
            first: AtomicU8::new(0),
            close_timeout,
            state: Mutex::new(State::default()),
            close_done: Condvar::new(),
        });
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("cli-signals".to_owned())
            .spawn(move || watch_signals(&thread_shared, &ready_tx))
            .map_err(|e| format!("cannot watch for signals: {e}"))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Interrupts { shared }),
            Ok(Err(error)) => Err(format!("cannot watch for signals: {error}")),
            Err(_) => Err("cannot watch for signals: the signal thread ended".to_owned()),
        }
    }

    /// The first signal received so far, if any.
    pub fn signal(&self) -> Option<Signal> {
        Signal::from_tag(self.shared.first.load(Ordering::Acquire))
    }

    /// The close deadline in force.
    pub fn close_timeout(&self) -> Duration {
        self.shared.close_timeout
    }

    /// From now on a signal closes `producer` at once and calls `wake` (once), which should
    /// free the command's loop if it waits for input. A signal that came before this call
    /// starts the close now.
    pub fn watch(&self, producer: &Arc<Producer>, wake: impl FnOnce() + Send + 'static) {
        let mut state = self.shared.lock();
        state.producer = Some(Arc::downgrade(producer));
        state.wake = Some(Box::new(wake));
        if self.signal().is_some() {
            self.shared.start_close(state);
        }
    }

    /// Closes the producer within the close deadline, or, when a signal already started the
    /// close, waits for that one to end. Either way the result is the close's.
    pub fn close(&self, producer: &Producer) -> Result<(), Error> {
        let mut state = self.shared.lock();
        loop {
            match &state.close {
                Close::NotStarted => {
                    state.close = Close::Running;
                    drop(state);
                    let result = producer.close_blocking(self.shared.close_timeout);
                    self.shared.finish_close(result.clone());
                    return result;
                }
                Close::Running => {
                    state =
                        self.shared.close_done.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                Close::Done(result) => return result.clone(),
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first signal: recorded, then the close begins and the loop is woken.
    fn interrupted(self: &Arc<Self>, signal: Signal) {
        self.first.store(signal.tag(), Ordering::Release);
        let state = self.lock();
        self.start_close(state);
    }

    /// Starts closing the watched producer on a close thread, unless a close is under way or
    /// done, and calls the wake hook.
    fn start_close(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        let wake = state.wake.take();
        let producer = state.producer.as_ref().and_then(Weak::upgrade);
        if let (Close::NotStarted, Some(producer)) = (&state.close, producer) {
            state.close = Close::Running;
            drop(state);
            let shared = self.clone();
            let (timeout, closing) = (self.close_timeout, producer.clone());
            let spawned = std::thread::Builder::new()
                .name("cli-close".to_owned())
                .spawn(move || shared.finish_close(closing.close_blocking(timeout)));
            if spawned.is_err() {
                // No thread to spare: close here. The signal thread answers a second signal
                // once this returns, within the same deadline.
                self.finish_close(producer.close_blocking(timeout));
            }
        } else {
            drop(state);
        }
        if let Some(wake) = wake {
            wake();
        }
    }

    fn finish_close(&self, result: Result<(), Error>) {
        self.lock().close = Close::Done(result);
        self.close_done.notify_all();
    }
}

/// The signal thread: registers both handlers, reports whether that worked, then handles the
/// first signal and exits the process on the second.
fn watch_signals(shared: &Arc<Shared>, ready: &std::sync::mpsc::Sender<Result<(), String>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error.to_string()));
            return;
        }
    };
    runtime.block_on(async {
        let handlers = signal(SignalKind::interrupt())
            .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)));
        let (mut interrupt, mut terminate) = match handlers {
            Ok(handlers) => handlers,
            Err(error) => {
                let _ = ready.send(Err(error.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let first = tokio::select! {
            _ = interrupt.recv() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        };
        shared.interrupted(first);
        let again = tokio::select! {
            _ = interrupt.recv() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        };
        eprintln!(
            "interrupted again by {}: exiting at once, without waiting for the close",
            again.name()
        );
        std::process::exit(i32::from(first.exit_code()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_shell_exit_codes_and_back() {
        for signal in [Signal::Interrupt, Signal::Terminate] {
            assert_eq!(Signal::from_tag(signal.tag()), Some(signal));
        }
        assert_eq!(Signal::from_tag(0), None);
        assert_eq!((Signal::Interrupt.exit_code(), Signal::Terminate.exit_code()), (130, 143));
        assert_eq!((Signal::Interrupt.name(), Signal::Terminate.name()), ("SIGINT", "SIGTERM"));
    }

    #[test]
    fn close_timeouts_are_bounded_seconds() {
        assert_eq!(parse_close_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_close_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_close_timeout("-1").is_err());
        assert!(parse_close_timeout("3601").is_err());
        assert!(parse_close_timeout("NaN").is_err());
        assert!(parse_close_timeout("soon").is_err());
    }
}
