//! The thin transport layer under a shard: the compio runtime with the probed driver, one reader
//! task and one writer task per connection, and the shard's sleep.
//!
//! The tasks never touch the engine: they report what their socket did ([`ConnIo`]) to the
//! shard's inbox and wake the shard, whose loop alone drives the engine.
//!
//! The same code runs on io_uring and on epoll; only the runtime's driver differs. Rings are kept
//! small (256 entries) and no buffers are registered, so unprivileged users are not charged locked
//! memory.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use compio::buf::BufResult;
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use compio::runtime::{JoinHandle, Runtime};

use super::{ShardSettings, ShardShared};
use crate::config::Transport;
use crate::engine::{CloseReason, ConnId};
use crate::error::Error;

/// The I/O driver every shard of a producer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    IoUring,
    /// epoll through `polling`.
    Epoll,
}

impl Driver {
    /// `"io_uring"` or `"epoll"`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

const RING_ENTRIES: u32 = 256;

/// A runtime on `driver`.
pub(super) fn runtime(driver: Driver) -> std::io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(RING_ENTRIES);
    proactor.driver_type(match driver {
        Driver::IoUring => DriverType::IoUring,
        Driver::Epoll => DriverType::Poll,
    });
    let runtime = Runtime::builder().with_proactor(proactor).build()?;
    let actual = match runtime.driver_type() {
        DriverType::IoUring => Driver::IoUring,
        _ => Driver::Epoll,
    };
    if actual != driver {
        return Err(std::io::Error::other(format!(
            "asked for {}, got {}",
            driver.name(),
            actual.name()
        )));
    }
    Ok(runtime)
}

/// Decides the driver once per producer: io_uring where a ring can be set up (it cannot under
/// Docker's default seccomp, gVisor, a low memlock limit or `kernel.io_uring_disabled`), epoll
/// otherwise, or exactly what was asked for.
pub fn probe_driver(requested: Transport) -> Result<Driver, Error> {
    match requested {
        Transport::Epoll => Ok(Driver::Epoll),
        Transport::IoUring => match runtime(Driver::IoUring) {
            Ok(_) => Ok(Driver::IoUring),
            Err(error) => Err(Error::Transport(format!("io_uring is not available here: {error}"))),
        },
        Transport::Auto => match runtime(Driver::IoUring) {
            Ok(_) => Ok(Driver::IoUring),
            Err(error) => {
                tracing::info!(%error, "io_uring unavailable, using epoll");
                Ok(Driver::Epoll)
            }
        },
    }
}

/// What a connection's reader or writer task saw, in the order it saw it.
#[derive(Debug)]
pub(super) enum ConnIo {
    /// Bytes read. The shell hands them to the engine, then the buffer to the next read.
    Read { conn: ConnId, buf: Vec<u8> },
    /// A write finished: the buffer goes back to the engine.
    Wrote { conn: ConnId, buf: Vec<u8> },
    /// The reader ended (end of file or a failed read); its buffer goes back to the pool.
    ReadEnded { conn: ConnId, reason: CloseReason, buf: Vec<u8> },
    /// A write failed; its buffer goes back to the engine.
    WriteFailed { conn: ConnId, reason: CloseReason, buf: Vec<u8> },
}

/// The shard's inbox of [`ConnIo`] reports, and the read buffers its readers read into next.
#[derive(Default)]
pub(super) struct Inbox {
    pub reports: RefCell<Vec<ConnIo>>,
    /// Emptied read buffers, two per connection from the shard's pool; a reader that finds none
    /// (its shard loop has not run since its last two reads) allocates one.
    pub read_buffers: RefCell<Vec<Vec<u8>>>,
}

impl Inbox {
    fn report(&self, shared: &ShardShared, io: ConnIo) {
        self.reports.borrow_mut().push(io);
        shared.notify();
    }
}

/// The writer task's single slot: the engine hands out one buffer per connection at a time.
#[derive(Default)]
struct WriteSlot {
    bytes: RefCell<Option<Vec<u8>>>,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
}

/// A live connection: its tasks, and a duplicate of its socket for shutting it down.
pub(super) struct ConnTasks {
    pub endpoint: SocketAddr,
    slot: Rc<WriteSlot>,
    socket: std::net::TcpStream,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl ConnTasks {
    /// Hands `bytes` to the writer task.
    pub fn send(&self, bytes: Vec<u8>) {
        *self.slot.bytes.borrow_mut() = Some(bytes);
        if let Some(waker) = self.slot.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Shuts the socket down; both tasks then end on their own (the read sees end-of-file, the
    /// writer sees the closed slot or a failed write). The tasks are not cancelled: cancelling an
    /// in-flight io_uring read was seen to stall the other connections of the ring.
    pub fn close(mut self) {
        self.slot.closed.set(true);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(waker) = self.slot.waker.borrow_mut().take() {
            waker.wake();
        }
        if let Some(reader) = self.reader.take() {
            reader.detach();
        }
        if let Some(writer) = self.writer.take() {
            writer.detach();
        }
    }
}

/// The socket settings of a new connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct SocketSettings {
    pub conn_timeout: std::time::Duration,
    pub send_buffer: usize,
    pub recv_buffer: usize,
    /// The capacity of a read buffer the reader allocates when the shard has none spare.
    pub read_buffer: usize,
}

impl From<&ShardSettings> for SocketSettings {
    fn from(settings: &ShardSettings) -> SocketSettings {
        SocketSettings {
            conn_timeout: settings.conn_timeout,
            send_buffer: settings.socket_send_buffer_size,
            recv_buffer: settings.socket_recv_buffer_size,
            read_buffer: settings.engine.plan.read_buffer_len,
        }
    }
}

/// Connects to `endpoint` within the connect timeout and starts the connection's tasks.
pub(super) async fn connect(
    id: ConnId,
    endpoint: SocketAddr,
    settings: SocketSettings,
    shared: Arc<ShardShared>,
    inbox: Rc<Inbox>,
) -> std::io::Result<ConnTasks> {
    {
        let stream = match compio::time::timeout(
            settings.conn_timeout,
            TcpStream::connect(endpoint),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", settings.conn_timeout),
                ))
            }
        };
        stream.set_nodelay(true)?;
        let socket = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        let sock = socket2::SockRef::from(&socket);
        sock.set_send_buffer_size(settings.send_buffer)?;
        sock.set_recv_buffer_size(settings.recv_buffer)?;
        sock.set_keepalive(true)?;

        let slot = Rc::new(WriteSlot::default());
        let (read_half, write_half) = stream.into_split();
        let reader = compio::runtime::spawn(read_loop(
            id,
            read_half,
            settings.read_buffer,
            shared.clone(),
            inbox.clone(),
        ));
        let writer =
            compio::runtime::spawn(write_loop(id, write_half, slot.clone(), shared, inbox));
        Ok(ConnTasks { endpoint, slot, socket, reader: Some(reader), writer: Some(writer) })
    }
}

async fn read_loop(
    id: ConnId,
    mut stream: TcpStream,
    capacity: usize,
    shared: Arc<ShardShared>,
    inbox: Rc<Inbox>,
) {
    let next_buffer = || {
        let spare = inbox.read_buffers.borrow_mut().pop();
        spare.unwrap_or_else(|| Vec::with_capacity(capacity))
    };
    let mut buf = next_buffer();
    let reason = loop {
        buf.clear();
        let BufResult(result, returned) = stream.read(buf).await;
        buf = returned;
        match result {
            Ok(0) => break CloseReason::ClosedByPeer,
            Ok(_) => {
                inbox.report(&shared, ConnIo::Read { conn: id, buf });
                buf = next_buffer();
            }
            Err(error) => break CloseReason::ReadFailed(error.to_string().into()),
        }
    };
    inbox.report(&shared, ConnIo::ReadEnded { conn: id, reason, buf });
}

async fn write_loop(
    id: ConnId,
    mut stream: TcpStream,
    slot: Rc<WriteSlot>,
    shared: Arc<ShardShared>,
    inbox: Rc<Inbox>,
) {
    loop {
        let bytes = std::future::poll_fn(|cx| {
            if slot.closed.get() {
                return Poll::Ready(None);
            }
            match slot.bytes.borrow_mut().take() {
                Some(bytes) => Poll::Ready(Some(bytes)),
                None => {
                    *slot.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let Some(bytes) = bytes else { return };
        let BufResult(result, buf) = stream.write_all(bytes).await;
        match result {
            Ok(()) => inbox.report(&shared, ConnIo::Wrote { conn: id, buf }),
            Err(error) => {
                let reason = CloseReason::WriteFailed(error.to_string().into());
                inbox.report(&shared, ConnIo::WriteFailed { conn: id, reason, buf });
                return;
            }
        }
    }
}

/// Sleeps until `deadline` or until the shard is notified, whichever comes first.
pub(super) async fn wait(shared: &ShardShared, deadline: Option<Instant>) {
    let mut sleep = pin!(async {
        match deadline {
            Some(at) => compio::time::sleep_until(at).await,
            None => std::future::pending::<()>().await,
        }
    });
    std::future::poll_fn(|cx| {
        if shared.poll_notified(cx).is_ready() {
            return Poll::Ready(());
        }
        sleep.as_mut().poll(cx)
    })
    .await;
}
