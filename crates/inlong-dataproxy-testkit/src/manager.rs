//! A local InLong Manager that answers the DataProxy discovery call `getIpList` (`PROTOCOL.md` §5).
//!
//! [`ManagerServer`] owns one listening socket and the node list it hands out. It answers
//! `POST /inlong/manager/openapi/dataproxy/getIpList/{groupId}` the way the real Manager does, as
//! each InLong SDK asks it (§5.5): the Go SDK's empty body with `?protocolType=tcp` on
//! [`url`](ManagerServer::url), the Java SDK's form body `ip=…&protocolType=TCP` on the path it
//! appends to the [`base_url`](ManagerServer::base_url), and the C++ SDK's form body with a
//! `version=` as well. `protocolType` is read from the query string or a form body as Spring binds
//! a request parameter (see `protocol_type` below); `ip` and `version` are ignored. It keeps the
//! Basic-auth and tenant checks of §5.2 (HTTP 403 with an HTML error page), 405 for other methods,
//! 404 for other paths, `success:false` with HTTP 200 for an unknown group, and the §5.3 JSON with
//! every key present (`nodeList` and `clusterId` are `null`, not empty, when there are no nodes).
//! Tests, benchmarks and the CLI's `serve` start it; the SDK's discovery client is what talks to it.
//!
//! It can be told to misbehave ([`ManagerFault`]), to go away and come back on the same port
//! ([`ManagerServer::stop_listening`], [`ManagerServer::start_listening`]), and it counts what it
//! answered ([`ManagerStats`]). It must never panic or hang on what a client sends, never let one
//! slow or delayed connection hold up another, and never log credentials.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use base64::Engine as _;
use hyper::header::{HeaderMap, HeaderValue, ALLOW};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::http::{self, Reply};

/// Path of the discovery endpoint, without the group id: what the Java SDK appends to its
/// Manager address (then `/{groupId}`), and the end of the Go SDK's `URL` option.
pub const GET_IP_LIST_PATH: &str = "/inlong/manager/openapi/dataproxy/getIpList";
/// The protocol stored for every node, as the Manager's `ProtocolType.TCP`.
pub const NODE_PROTOCOL: &str = "TCP";
/// The tenant the Manager assumes when a request has no (or a blank) `tenant` header.
pub const DEFAULT_TENANT: &str = "public";
/// `data.load`: the Manager never changes it from its default on this path.
const DEFAULT_LOAD: i32 = 20;
/// The path segments guarded by the open API auth filter (`/inlong/manager/openapi/**`).
const OPENAPI_SEGMENTS: [&str; 3] = ["inlong", "manager", "openapi"];
const LISTEN_BACKLOG: u32 = 1024;
/// How long to wait before accepting again after `accept` failed (for example out of fds).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
const JSON: &str = "application/json";
const HTML: &str = "text/html;charset=utf-8";
const TEXT: &str = "text/plain;charset=utf-8";

/// How the local Manager is set up. Everything that can change while it runs (nodes, faults) is
/// set on [`ManagerServer`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Credentials the open API requires; `None` is `openapi.auth.enabled=false`.
    pub auth: Option<ManagerAuth>,
    /// Group ids the Manager knows; `None` means every group id is known.
    pub known_groups: Option<Vec<String>>,
    /// `data.maxPacketLength` (the cluster's `maxPacketLength` ext param); `null` when `None`.
    pub max_packet_length: Option<u32>,
    /// `data.clusterId` reported with a non-empty node list.
    pub cluster_id: i64,
}

impl Default for ManagerConfig {
    /// No auth, every group known, no `maxPacketLength`, cluster id 1.
    fn default() -> Self {
        ManagerConfig { auth: None, known_groups: None, max_packet_length: None, cluster_id: 1 }
    }
}

/// The one Manager user allowed to call the open API (`PROTOCOL.md` §5.2).
#[derive(Clone, PartialEq, Eq)]
pub struct ManagerAuth {
    /// The user name (`secretId`).
    pub secret_id: String,
    /// The user's secret key (`secretKey`). Never logged; `Debug` prints it redacted.
    pub secret_key: String,
    /// The only tenant the user has a role in; `None` means every tenant. A request without a
    /// `tenant` header asks for [`DEFAULT_TENANT`], so `Some("public")` accepts it.
    pub tenant: Option<String>,
}

impl fmt::Debug for ManagerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerAuth")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// How the Manager misbehaves on lookups, set with [`ManagerServer::set_fault`].
///
/// A fault applies to `getIpList` lookups that passed routing and auth; 403, 404 and 405 answers
/// are unaffected. It is read when a request arrives, so changing it does not alter requests
/// already being answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagerFault {
    /// Answer normally.
    #[default]
    None,
    /// `success:true` with `nodeList` and `clusterId` `null`, as the real Manager answers when
    /// the group has no nodes.
    NullNodeList,
    /// HTTP 200 `{"success":false,"errMsg":<message>,"data":null}`.
    Failure(String),
    /// This HTTP status with a short text body. Values outside 200..=599 are sent as 500.
    HttpStatus(u16),
    /// Answer normally, but only after this long. Other connections are not held up.
    Delay(Duration),
    /// HTTP 200 with `Content-Type: application/json` and a body that is not JSON.
    Garbage,
}

/// What the Manager has answered since it started. Take a snapshot with
/// [`ManagerServer::stats`], or wait for one with [`ManagerServer::wait_for_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Requests read completely, whatever their outcome; counted before the answer is made.
    pub requests: u64,
    /// Lookups answered with `success:true` (including empty and [`ManagerFault::NullNodeList`]).
    pub ok: u64,
    /// Lookups answered with `success:false` (unknown group or [`ManagerFault::Failure`]).
    pub failure: u64,
    /// Requests refused with HTTP 403 by the auth or tenant check.
    pub auth_rejected: u64,
    /// Requests for a path that does not exist (HTTP 404).
    pub not_found: u64,
    /// Requests on the lookup path with a method other than POST (HTTP 405).
    pub method_not_allowed: u64,
    /// Requests refused as malformed: a head hyper cannot parse or that is too large (400, 431),
    /// no `Host` on HTTP/1.1, a chunked or too large body (411, 413), a body that stalled (408), or
    /// a path with broken percent-encoding. A head that stalls is closed after a minute, uncounted.
    pub bad_request: u64,
    /// Lookups answered by [`ManagerFault::HttpStatus`] or [`ManagerFault::Garbage`].
    pub faulted: u64,
}

/// A running local Manager. Cloning gives another handle to the same server; when the last handle
/// is dropped the server shuts down.
#[derive(Clone)]
pub struct ManagerServer {
    handle: Arc<ServerHandle>,
}

impl fmt::Debug for ManagerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerServer")
            .field("local_addr", &self.shared().local_addr)
            .field("listening", &self.is_listening())
            .finish_non_exhaustive()
    }
}

impl ManagerServer {
    /// Binds `addr` (port 0 picks a free port) and serves on `runtime`.
    ///
    /// The socket is bound before this returns, so the server accepts connections as soon as it
    /// has a handle; this may be called from inside or outside the runtime.
    ///
    /// # Errors
    ///
    /// The socket could not be created or bound (for example, the port is taken).
    pub fn start(
        runtime: &Handle,
        addr: SocketAddr,
        config: ManagerConfig,
    ) -> io::Result<ManagerServer> {
        let listener = bind(runtime, addr)?;
        let local_addr = listener.local_addr()?;
        let (stats, _) = watch::channel(ManagerStats::default());
        let shared = Arc::new(Shared {
            config,
            runtime: runtime.clone(),
            local_addr,
            nodes: Mutex::new(NodeTable::default()),
            fault: Mutex::new(ManagerFault::None),
            stats,
            listening: Mutex::new(None),
            connections: Mutex::new(ConnectionRegistry::default()),
            shut_down: AtomicBool::new(false),
        });
        shared.install(&mut lock(&shared.listening), listener);
        tracing::debug!(%local_addr, "local manager listening");
        Ok(ManagerServer { handle: Arc::new(ServerHandle { shared }) })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The address the server is bound to (with the real port when started on port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.shared().local_addr
    }

    /// The discovery URL without the group id, as the Go SDK's `URL` option wants it, for example
    /// `http://127.0.0.1:8083/inlong/manager/openapi/dataproxy/getIpList`. A server bound to the
    /// unspecified address is reached through loopback.
    #[must_use]
    pub fn url(&self) -> String {
        discovery_url(self.local_addr())
    }

    /// The Manager's address without any path, for example `http://127.0.0.1:8083`: what the Java
    /// SDK is configured with (it appends [`GET_IP_LIST_PATH`] and `/{groupId}` itself). A server
    /// bound to the unspecified address is reached through loopback.
    #[must_use]
    pub fn base_url(&self) -> String {
        base_url(self.local_addr())
    }

    /// Replaces the node list returned for every known group. Duplicates are dropped; an address
    /// seen before keeps its node id.
    pub fn set_nodes(&self, nodes: &[SocketAddr]) {
        let mut table = lock(&self.shared().nodes);
        table.list.clear();
        for &node in nodes {
            table.add(node);
        }
    }

    /// Adds a node at the end of the list (nothing happens if it is listed already).
    pub fn add_node(&self, node: SocketAddr) {
        lock(&self.shared().nodes).add(node);
    }

    /// Removes a node from the list (nothing happens if it is not listed).
    pub fn remove_node(&self, node: SocketAddr) {
        lock(&self.shared().nodes).list.retain(|entry| entry.addr != node);
    }

    /// The node list, in the order it is returned.
    #[must_use]
    pub fn nodes(&self) -> Vec<SocketAddr> {
        lock(&self.shared().nodes).list.iter().map(|entry| entry.addr).collect()
    }

    /// Makes the following lookups misbehave (or behave again with [`ManagerFault::None`]).
    pub fn set_fault(&self, fault: ManagerFault) {
        *lock(&self.shared().fault) = fault;
    }

    /// Closes the listening socket and every open connection before returning: new connections
    /// are refused and clients see their open connections closed. Answers being delayed by
    /// [`ManagerFault::Delay`] are dropped. Does nothing when not listening.
    pub fn stop_listening(&self) {
        self.shared().stop_listening();
    }

    /// Listens again on the same address and port after [`stop_listening`](Self::stop_listening).
    /// Does nothing when already listening; fails after [`shutdown`](Self::shutdown) or when the
    /// port has been taken in the meantime.
    ///
    /// # Errors
    ///
    /// The server was shut down, or the port could not be bound again.
    pub fn start_listening(&self) -> io::Result<()> {
        self.shared().start_listening()
    }

    /// Whether the server accepts connections.
    #[must_use]
    pub fn is_listening(&self) -> bool {
        lock(&self.shared().listening).is_some()
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> ManagerStats {
        *self.shared().stats.borrow()
    }

    /// Waits until the counters satisfy `predicate` and returns them. Bound the wait with
    /// `tokio::time::timeout`.
    pub async fn wait_for_stats(
        &self,
        mut predicate: impl FnMut(&ManagerStats) -> bool,
    ) -> ManagerStats {
        let mut stats = self.shared().stats.subscribe();
        // The sender lives in `Shared`, which `self` keeps alive, so this cannot fail.
        let snapshot = stats.wait_for(|s| predicate(s)).await.map(|s| *s);
        snapshot.unwrap_or_else(|_| self.stats())
    }

    /// Stops listening for good and closes every connection. Idempotent; also done when the last
    /// handle is dropped.
    pub fn shutdown(&self) {
        self.shared().shutdown();
    }
}

/// The last [`ManagerServer`] handle; shuts the server down when dropped. Tasks hold [`Shared`],
/// not this, so they do not keep the server alive.
struct ServerHandle {
    shared: Arc<Shared>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// State shared by the handles, the accept loop and the connection tasks.
struct Shared {
    config: ManagerConfig,
    runtime: Handle,
    local_addr: SocketAddr,
    nodes: Mutex<NodeTable>,
    fault: Mutex<ManagerFault>,
    stats: watch::Sender<ManagerStats>,
    listening: Mutex<Option<Listening>>,
    connections: Mutex<ConnectionRegistry>,
    shut_down: AtomicBool,
}

/// One period of listening, between `start_listening` and `stop_listening`.
struct Listening {
    /// Taken (and so closed) by `stop_listening` itself, not by the accept task, so that the port
    /// refuses connections as soon as `stop_listening` returns.
    listener: Arc<Mutex<Option<TcpListener>>>,
    /// Set to true to end the accept loop and every connection task of this period.
    stop: watch::Sender<bool>,
}

/// Duplicates of the open connections' sockets, so `stop_listening` can shut them down at once.
#[derive(Default)]
struct ConnectionRegistry {
    next_id: u64,
    open: HashMap<u64, std::net::TcpStream>,
}

/// Removes a connection from the registry when its task ends, however it ends.
struct ConnectionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        lock(&self.shared.connections).open.remove(&self.id);
    }
}

#[derive(Default)]
struct NodeTable {
    list: Vec<NodeEntry>,
    /// Every address ever listed and its id, so ids stay stable across remove and add.
    ids: HashMap<SocketAddr, i64>,
}

#[derive(Clone, Copy)]
struct NodeEntry {
    addr: SocketAddr,
    id: i64,
}

impl NodeTable {
    fn add(&mut self, addr: SocketAddr) {
        if self.list.iter().any(|entry| entry.addr == addr) {
            return;
        }
        let next_id = i64::try_from(self.ids.len()).map_or(i64::MAX, |n| n + 1);
        let id = *self.ids.entry(addr).or_insert(next_id);
        self.list.push(NodeEntry { addr, id });
    }
}

fn discovery_url(addr: SocketAddr) -> String {
    format!("{}{GET_IP_LIST_PATH}", base_url(addr))
}

fn base_url(mut addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    format!("http://{addr}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds with `SO_REUSEADDR`, so the port can be bound again right after connections we closed
/// are left in `TIME_WAIT`.
fn bind(runtime: &Handle, addr: SocketAddr) -> io::Result<TcpListener> {
    // Registering the listener with the reactor needs the runtime's context.
    let _entered = runtime.enter();
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Shared {
    /// Starts the accept loop for `listener`. The caller holds the `listening` lock, so that
    /// `start_listening`, `stop_listening` and `shutdown` see either no listener or a running one.
    fn install(self: &Arc<Self>, listening: &mut Option<Listening>, listener: TcpListener) {
        let listener = Arc::new(Mutex::new(Some(listener)));
        let (stop, stop_rx) = watch::channel(false);
        self.runtime.spawn(accept_loop(Arc::clone(self), Arc::clone(&listener), stop_rx));
        *listening = Some(Listening { listener, stop });
    }

    fn start_listening(self: &Arc<Self>) -> io::Result<()> {
        let mut listening = lock(&self.listening);
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(io::Error::other("the local manager was shut down"));
        }
        if listening.is_some() {
            return Ok(());
        }
        let listener = bind(&self.runtime, self.local_addr)?;
        self.install(&mut listening, listener);
        tracing::debug!(local_addr = %self.local_addr, "local manager listening again");
        Ok(())
    }

    fn stop_listening(&self) {
        let Some(listening) = lock(&self.listening).take() else {
            return;
        };
        // Closes the socket now; the accept task sees the empty slot when it wakes.
        drop(lock(&listening.listener).take());
        listening.stop.send_replace(true);
        for connection in lock(&self.connections).open.values() {
            // The task's own handle sees end-of-file and finishes; errors mean it is gone anyway.
            let _ = connection.shutdown(Shutdown::Both);
        }
        tracing::debug!(local_addr = %self.local_addr, "local manager stopped listening");
    }

    fn shutdown(&self) {
        // Under the `listening` lock, so a concurrent `start_listening` either sees the flag or
        // has installed its listener before we take it away.
        let listening = lock(&self.listening);
        self.shut_down.store(true, Ordering::SeqCst);
        drop(listening);
        self.stop_listening();
    }

    fn count(&self, outcome: Outcome) {
        self.stats.send_modify(|stats| match outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::Failure => stats.failure += 1,
            Outcome::AuthRejected => stats.auth_rejected += 1,
            Outcome::NotFound => stats.not_found += 1,
            Outcome::MethodNotAllowed => stats.method_not_allowed += 1,
            Outcome::BadRequest => stats.bad_request += 1,
            Outcome::Faulted => stats.faulted += 1,
        });
    }

    /// Makes the task's stream and a registered duplicate of its socket.
    fn register(self: &Arc<Self>, stream: TcpStream) -> io::Result<(TcpStream, ConnectionGuard)> {
        let stream = stream.into_std()?;
        let duplicate = stream.try_clone()?;
        let stream = TcpStream::from_std(stream)?;
        let mut registry = lock(&self.connections);
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(id, duplicate);
        let guard = ConnectionGuard { shared: Arc::clone(self), id };
        Ok((stream, guard))
    }

    /// Answers one request whose head and body `http::read_body` accepted.
    async fn answer(&self, head: &Parts, body: &[u8]) -> (Outcome, Reply) {
        let fault = lock(&self.fault).clone();
        self.stats.send_modify(|stats| stats.requests += 1);

        let Some(segments) = decode_path(head.uri.path()) else {
            return (Outcome::BadRequest, error_page(StatusCode::BAD_REQUEST));
        };
        if segments.starts_with(&OPENAPI_SEGMENTS.map(String::from)) {
            if let Some(auth) = &self.config.auth {
                if !authorized(auth, &head.headers) {
                    return (Outcome::AuthRejected, error_page(StatusCode::FORBIDDEN));
                }
            }
        }
        let Some(group_id) = lookup_group(&segments) else {
            return (Outcome::NotFound, error_page(StatusCode::NOT_FOUND));
        };
        if head.method != Method::POST {
            let mut page = error_page(StatusCode::METHOD_NOT_ALLOWED);
            page.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return (Outcome::MethodNotAllowed, page);
        }

        match fault {
            ManagerFault::None => {}
            ManagerFault::Delay(delay) => tokio::time::sleep(delay).await,
            ManagerFault::NullNodeList => return (Outcome::Ok, self.success(&[])),
            ManagerFault::Failure(message) => return (Outcome::Failure, failure(&message)),
            ManagerFault::HttpStatus(status) => {
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|status| (200..=599).contains(&status.as_u16()))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = format!("injected fault: HTTP {}\n", status.as_u16());
                return (Outcome::Faulted, http::reply(status, TEXT, body));
            }
            ManagerFault::Garbage => {
                let body = "<html><body>this is not JSON</body></html>";
                return (Outcome::Faulted, http::reply(StatusCode::OK, JSON, body));
            }
        }

        if let Some(known) = &self.config.known_groups {
            if !known.iter().any(|g| *g == group_id) {
                let message = format!("group not found by groupId={group_id}");
                return (Outcome::Failure, failure(&message));
            }
        }
        let nodes: Vec<NodeEntry> = match protocol_type(head, body) {
            // MySQL's default collation compares case-insensitively (§5.1).
            Some(protocol) if !protocol.eq_ignore_ascii_case(NODE_PROTOCOL) => Vec::new(),
            _ => lock(&self.nodes).list.clone(),
        };
        (Outcome::Ok, self.success(&nodes))
    }

    fn success(&self, nodes: &[NodeEntry]) -> Reply {
        let data = if nodes.is_empty() {
            // The Manager returns a fresh `DataProxyNodeResponse` when no node matches: even
            // `clusterId` and `maxPacketLength` stay null.
            NodeResponse::default()
        } else {
            NodeResponse {
                cluster_id: Some(self.config.cluster_id),
                max_packet_length: self.config.max_packet_length,
                node_list: Some(
                    nodes
                        .iter()
                        .map(|node| NodeInfo {
                            id: node.id,
                            ip: node.addr.ip().to_string(),
                            port: node.addr.port(),
                            protocol_type: NODE_PROTOCOL,
                            node_load: None,
                        })
                        .collect(),
                ),
                ..NodeResponse::default()
            }
        };
        json_response(&Envelope { success: true, err_msg: None, data: Some(data) })
    }
}

/// How a request was answered, for the counters and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failure,
    AuthRejected,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    Faulted,
}

/// `Response<DataProxyNodeResponse>` as Jackson writes it: every field present, in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    success: bool,
    err_msg: Option<&'a str>,
    data: Option<NodeResponse>,
}

/// `DataProxyNodeResponse`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeResponse {
    cluster_id: Option<i64>,
    report_source_type: Option<String>,
    is_intranet: Option<i32>,
    is_switch: Option<i32>,
    load: i32,
    max_packet_length: Option<u32>,
    node_list: Option<Vec<NodeInfo>>,
}

impl Default for NodeResponse {
    fn default() -> Self {
        NodeResponse {
            cluster_id: None,
            report_source_type: None,
            is_intranet: None,
            is_switch: None,
            load: DEFAULT_LOAD,
            max_packet_length: None,
            node_list: None,
        }
    }
}

/// `DataProxyNodeInfo`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo {
    id: i64,
    ip: String,
    port: u16,
    protocol_type: &'static str,
    node_load: Option<i32>,
}

fn json_response(envelope: &Envelope<'_>) -> Reply {
    match serde_json::to_vec(envelope) {
        Ok(body) => http::reply(StatusCode::OK, JSON, body),
        // Unreachable with these types; answer like a broken server rather than panic.
        Err(_) => error_page(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// A `BusinessException` turned into JSON by the Manager's exception handler: HTTP 200.
fn failure(message: &str) -> Reply {
    json_response(&Envelope { success: false, err_msg: Some(message), data: None })
}

/// A servlet container's error page (`sendError`), not the `Response` JSON.
fn error_page(status: StatusCode) -> Reply {
    let reason = status.canonical_reason().unwrap_or_default();
    let title = format!("HTTP Status {} - {reason}", status.as_u16());
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><title>{title}</title></head>\
         <body><h1>{title}</h1></body></html>"
    );
    http::reply(status, HTML, body)
}

/// Splits and decodes the path like the servlet container: `;params` are dropped from every
/// segment, escapes are decoded, and an escaped `/` or NUL or a broken escape fails (HTTP 400).
/// Then, as Tomcat normalizes `//` to `/`, empty segments are dropped, except a last one (the
/// trailing slash): a base address given with a trailing slash still reaches the endpoint.
fn decode_path(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let mut segments = rest
        .split('/')
        .map(|segment| {
            let segment = segment.split(';').next().unwrap_or_default();
            let bytes = http::percent_decode(segment.as_bytes(), false)?;
            if bytes.contains(&b'/') || bytes.contains(&0) {
                return None;
            }
            String::from_utf8(bytes).ok()
        })
        .collect::<Option<Vec<String>>>()?;
    let trailing_slash = segments.last().is_some_and(String::is_empty);
    segments.retain(|segment| !segment.is_empty());
    if trailing_slash {
        segments.push(String::new());
    }
    Some(segments)
}

/// The group id of `/inlong/manager/openapi/dataproxy/getIpList/{groupId}` (one trailing slash
/// allowed, as Spring Boot 2 matches it).
fn lookup_group(segments: &[String]) -> Option<&str> {
    let segments = match segments {
        [rest @ .., last] if last.is_empty() => rest,
        _ => segments,
    };
    match segments {
        [a, b, c, d, e, group]
            if [a, b, c, d, e]
                .iter()
                .zip(["inlong", "manager", "openapi", "dataproxy", "getIpList"])
                .all(|(segment, expected)| *segment == expected)
                && !group.is_empty() =>
        {
            Some(group)
        }
        _ => None,
    }
}

/// The `protocolType` request parameter, as Tomcat collects it and Spring binds it to the
/// controller's `String`:
///
/// - It comes from the query string and, for a POST whose `Content-Type` is
///   `application/x-www-form-urlencoded` (in any case, with any parameters), from the body too.
///   The body of any other content type is never read, whatever it holds.
/// - Query values come first, then the body's; several values are joined with commas (Spring's
///   array-to-string conversion). So `?protocolType=TCP` plus a body `protocolType=TCP` asks for
///   `TCP,TCP`, which no node has: `success:true` with a null `nodeList`, as from the real Manager.
/// - A pair with a broken escape or bytes that are not UTF-8 is skipped, as Tomcat skips it, and
///   the other pairs still count: a body that is not valid form data never fails the request.
/// - Empty means no filter (the mapper skips an empty `protocolType`).
fn protocol_type(head: &Parts, body: &[u8]) -> Option<String> {
    let mut values: Vec<String> = http::form_pairs(head.uri.query().unwrap_or_default().as_bytes())
        .filter(|(name, _)| name == "protocolType")
        .map(|(_, value)| value)
        .collect();
    let is_form = http::header_text(&head.headers, "content-type").is_some_and(|content_type| {
        let media_type = content_type.split(';').next().unwrap_or_default();
        media_type.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if is_form && head.method == Method::POST {
        values.extend(
            http::form_pairs(body)
                .filter(|(name, _)| name == "protocolType")
                .map(|(_, value)| value),
        );
    }
    let joined = values.join(",");
    (!joined.is_empty()).then_some(joined)
}

/// The open API checks of `OpenAPIFilter`, the realm and the tenant filter (§5.2).
fn authorized(auth: &ManagerAuth, headers: &HeaderMap) -> bool {
    let Some((secret_id, secret_key)) =
        http::header_text(headers, "authorization").as_deref().and_then(basic_credentials)
    else {
        return false;
    };
    if secret_id != auth.secret_id || secret_key != auth.secret_key {
        return false;
    }
    let tenant = http::header_text(headers, "tenant").filter(|tenant| !is_blank(tenant));
    let tenant = tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    auth.tenant.as_deref().is_none_or(|allowed| allowed == tenant)
}

/// Parses `Basic base64(id:key)` exactly as the Manager's `OpenAPIFilter`: one space, the prefix
/// `Basic` (case-sensitive), standard base64 with optional padding, and two non-blank parts
/// around `:` (Java's `String.split`, which drops trailing empty parts).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    const JAVA_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    if is_blank(header) {
        return None;
    }
    let [prefix, encoded] = java_split(header, ' ')[..] else {
        return None;
    };
    if prefix != "Basic" {
        return None;
    }
    let decoded = JAVA_BASE64.decode(encoded).ok()?;
    let joined = String::from_utf8_lossy(&decoded);
    let [id, key] = java_split(&joined, ':')[..] else {
        return None;
    };
    if is_blank(id) || is_blank(key) {
        return None;
    }
    Some((id.to_owned(), key.to_owned()))
}

/// Java's `String.split` on a single character: trailing empty parts are removed.
fn java_split(input: &str, separator: char) -> Vec<&str> {
    let mut parts: Vec<&str> = input.split(separator).collect();
    while parts.last().is_some_and(|part| part.is_empty()) {
        parts.pop();
    }
    parts
}

/// Commons-lang `StringUtils.isBlank`.
fn is_blank(value: &str) -> bool {
    value.chars().all(char::is_whitespace)
}

/// Answers one request of a connection from `peer`: refusals of `http::read_body` first, then
/// the Manager's routing, auth, faults and JSON.
async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Reply, Infallible> {
    let (head, body) = request.into_parts();
    let mut reply = match http::read_body(&head, body).await {
        Ok(body) => {
            let (outcome, reply) = shared.answer(&head, &body).await;
            shared.count(outcome);
            // Never the headers: they carry the credentials.
            tracing::debug!(
                %peer,
                method = %head.method,
                path = %head.uri.path(),
                ?outcome,
                status = reply.status().as_u16(),
                "local manager request"
            );
            reply
        }
        Err(refusal) => {
            shared.count(Outcome::BadRequest);
            tracing::debug!(%peer, %refusal, "local manager refused a request");
            refusal.reply()
        }
    };
    http::set_connection(&mut reply, &head);
    Ok(reply)
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: Arc<Mutex<Option<TcpListener>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = poll_fn(|cx| match lock(&listener).as_ref() {
                Some(listener) => listener.poll_accept(cx).map(Some),
                None => Poll::Ready(None),
            }) => accepted,
        };
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                let shared = Arc::clone(&shared);
                let stop = stop.clone();
                tokio::spawn(serve(shared, stream, peer, stop));
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "local manager accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    // Answers are single small writes; do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let (stream, _guard) = match shared.register(stream) {
        Ok(registered) => registered,
        Err(error) => {
            tracing::debug!(%peer, %error, "local manager could not set up a connection");
            return;
        }
    };
    let connection = http::connection_builder().serve_connection(
        TokioIo::new(stream),
        hyper::service::service_fn({
            let shared = Arc::clone(&shared);
            move |request| handle(Arc::clone(&shared), peer, request)
        }),
    );
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => {}
        served = connection => {
            if let Err(error) = served {
                // Heads hyper could not parse (it answered 400 or 431 itself) count as refused.
                if error.is_parse() {
                    shared.count(Outcome::BadRequest);
                }
                tracing::debug!(%peer, %error, "local manager connection ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOOKUP: &str = "/inlong/manager/openapi/dataproxy/getIpList";

    /// Fails the test if `test` takes longer than 10 s.
    async fn bounded<T>(test: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), test).await.expect("test finished in time")
    }

    fn start(config: ManagerConfig) -> ManagerServer {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        ManagerServer::start(&Handle::current(), addr, config).expect("bind loopback")
    }

    fn node(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// A response, from reqwest or from the raw [`Client`].
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).expect("body is JSON")
        }
    }

    /// Sends one request with reqwest. `headers` are `name: value\r\n` lines, so the test tables
    /// read like the requests they make.
    async fn request(
        server: &ManagerServer,
        method: &str,
        target: &str,
        headers: &str,
        body: &str,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let url = format!("http://{}{target}", server.local_addr());
        let mut builder = reqwest::Client::new().request(method, url).body(body.to_owned());
        for line in headers.split("\r\n").filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').expect("name: value");
            builder = builder.header(name, value.trim());
        }
        let response = builder.send().await.expect("a response");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect();
        let body = response.text().await.expect("a body");
        Answer { status, headers, body }
    }

    async fn lookup(server: &ManagerServer, target: &str, headers: &str) -> Answer {
        request(server, "POST", target, headers, "").await
    }

    /// A raw HTTP/1.1 client connection, kept for the tests that are about the connection itself
    /// (one socket reused, closed after `close` or HTTP/1.0, dropped by `stop_listening`) or that
    /// send what reqwest never would (no `Host`, a chunked body).
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Client {
        async fn connect(server: &ManagerServer) -> Client {
            let stream = TcpStream::connect(server.local_addr()).await.expect("connect");
            Client { stream, buf: Vec::new() }
        }

        async fn send(&mut self, request: &str) {
            self.stream.write_all(request.as_bytes()).await.expect("write request");
        }

        /// Reads one response; `None` if the server closed the connection first.
        async fn receive(&mut self) -> Option<Answer> {
            self.receive_response(false).await
        }

        /// Reads one response, without a body when it answers a `HEAD` request.
        async fn receive_response(&mut self, head_only: bool) -> Option<Answer> {
            let head_end = loop {
                if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break pos;
                }
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            };
            let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ascii head");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().expect("status line");
            let status = status_line[9..12].parse().expect("status code");
            let headers: Vec<(String, String)> = lines
                .map(|line| {
                    let (name, value) = line.split_once(": ").expect("header");
                    (name.to_owned(), value.to_owned())
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .filter(|_| !head_only)
                .map_or(0, |(_, v)| v.parse().expect("length"));
            while self.buf.len() < head_end + 4 + length {
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
            let rest = self.buf.split_off(head_end + 4 + length);
            let raw = std::mem::replace(&mut self.buf, rest);
            let body = String::from_utf8(raw[head_end + 4..].to_vec()).expect("utf-8 body");
            Some(Answer { status, headers, body })
        }

        async fn exchange(&mut self, request: &str) -> Answer {
            self.send(request).await;
            self.receive().await.expect("a response")
        }

        /// Whether the server has closed the connection (end-of-file or reset).
        async fn is_closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            matches!(self.stream.read(&mut byte).await, Ok(0) | Err(_))
        }
    }

    fn post(target: &str, headers: &str) -> String {
        format!("POST {target} HTTP/1.1\r\nHost: manager\r\nContent-Length: 0\r\n{headers}\r\n")
    }

    fn basic(id: &str, key: &str) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"));
        format!("authorization: Basic {encoded}\r\n")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn success_json_matches_the_manager_byte_for_byte() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(46801), node(46802)]);
            let response = lookup(&server, &format!("{LOOKUP}/test_group?protocolType=TCP"), "").await;
            assert_eq!(response.status, 200);
            assert_eq!(response.header("content-type"), Some("application/json"));
            assert_eq!(
                response.body,
                "{\"success\":true,\"errMsg\":null,\"data\":{\"clusterId\":1,\"reportSourceType\":null,\
                 \"isIntranet\":null,\"isSwitch\":null,\"load\":20,\"maxPacketLength\":null,\"nodeList\":[\
                 {\"id\":1,\"ip\":\"127.0.0.1\",\"port\":46801,\"protocolType\":\"TCP\",\"nodeLoad\":null},\
                 {\"id\":2,\"ip\":\"127.0.0.1\",\"port\":46802,\"protocolType\":\"TCP\",\"nodeLoad\":null}]}}"
            );
            let json = response.json();
            assert_eq!(json["data"]["nodeList"][1]["port"], 46802);
            assert_eq!(server.stats().ok, 1);
            assert_eq!(server.stats().requests, 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_sets_cluster_id_and_max_packet_length() {
        bounded(async {
            let server = start(ManagerConfig {
                cluster_id: 7,
                max_packet_length: Some(1 << 20),
                ..ManagerConfig::default()
            });
            server.set_nodes(&[SocketAddr::from((Ipv6Addr::LOCALHOST, 9))]);
            let json = lookup(&server, &format!("{LOOKUP}/g"), "").await.json();
            assert_eq!(json["data"]["clusterId"], 7);
            assert_eq!(json["data"]["maxPacketLength"], 1 << 20);
            assert_eq!(json["data"]["nodeList"][0]["ip"], "::1");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn protocol_type_matches_case_insensitively() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            for query in [
                "?protocolType=tcp",
                "?protocolType=TCP",
                "?x=1&protocolType=Tcp&y",
                "",
                "?protocolType=",
            ] {
                let json = lookup(&server, &format!("{LOOKUP}/g{query}"), "").await.json();
                assert_eq!(json["data"]["nodeList"][0]["port"], 1, "{query}");
            }
            for query in [
                "?protocolType=HTTP",
                "?protocolType=tcp&protocolType=TCP",
                "?protocolType=t%63p%20",
            ] {
                let json = lookup(&server, &format!("{LOOKUP}/g{query}"), "").await.json();
                assert_eq!(json["success"], true, "{query}");
                assert!(json["data"]["nodeList"].is_null(), "{query}");
            }
            let json = lookup(&server, &format!("{LOOKUP}/g?protocolType=t%63p"), "").await.json();
            assert_eq!(json["data"]["nodeList"][0]["port"], 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn protocol_type_is_read_from_a_form_body() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let form = "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n";
            for (body, expect_nodes) in [
                ("ip=10.0.0.1&version=inlong-sdk-cpp-v3.2&protocolType=TCP", true),
                ("ip=10.0.0.1&protocolType=UDP", false),
            ] {
                let json =
                    request(&server, "POST", &format!("{LOOKUP}/g"), form, body).await.json();
                assert_eq!(!json["data"]["nodeList"].is_null(), expect_nodes, "{body}");
            }
            // The same body without the form content type is not read.
            let body = "protocolType=UDP";
            let json = request(&server, "POST", &format!("{LOOKUP}/g"), "", body).await.json();
            assert_eq!(json["data"]["nodeList"][0]["port"], 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_methods_get_405_with_allow_post() {
        bounded(async {
            let server = start(ManagerConfig::default());
            let target = format!("{LOOKUP}/g?protocolType=TCP");
            for method in ["GET", "PUT", "DELETE", "post"] {
                let response = request(&server, method, &target, "", "").await;
                assert_eq!(response.status, 405, "{method}");
                assert_eq!(response.header("allow"), Some("POST"));
            }
            // HEAD: same head, no body, and the connection is still usable after it.
            let mut client = Client::connect(&server).await;
            client.send(&format!("HEAD {LOOKUP}/g HTTP/1.1\r\nHost: m\r\n\r\n")).await;
            let head_only = client.receive_response(true).await.expect("a response");
            assert_eq!(head_only.status, 405);
            assert!(head_only.body.is_empty());
            let again = format!("GET {LOOKUP}/g HTTP/1.1\r\nHost: m\r\n\r\n");
            let again = client.exchange(&again).await;
            assert_eq!(again.status, 405);
            assert!(again.body.contains("405"), "{again:?}");
            assert_eq!(server.stats().method_not_allowed, 6);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_paths_get_404() {
        bounded(async {
            let server = start(ManagerConfig::default());
            for target in [
                "/",
                "/inlong/manager/openapi/dataproxy/getIpList",
                "/inlong/manager/openapi/dataproxy/getIpList/",
                "/inlong/manager/openapi/dataproxy/getIpList/a/b",
                "/inlong/manager/openapi/dataproxy/getiplist/g",
                "/manager/openapi/dataproxy/getIpList/g",
            ] {
                let response = lookup(&server, target, "").await;
                assert_eq!(response.status, 404, "{target}");
                assert!(response.body.contains("404"), "{target}");
            }
            assert_eq!(server.stats().not_found, 6);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_ids_are_decoded_like_the_servlet_container() {
        bounded(async {
            let server = start(ManagerConfig {
                known_groups: Some(vec!["g 1".to_owned(), "g".to_owned()]),
                ..ManagerConfig::default()
            });
            for target in [
                format!("{LOOKUP}/g%201"),
                format!("{LOOKUP}/g;jsessionid=1"),
                format!("{LOOKUP}/g/"),
            ] {
                let json = lookup(&server, &target, "").await.json();
                assert_eq!(json["success"], true, "{target}");
            }
            for target in [format!("{LOOKUP}/g%2F1"), format!("{LOOKUP}/g%zz")] {
                assert_eq!(lookup(&server, &target, "").await.status, 400, "{target}");
            }
            assert_eq!(server.stats().bad_request, 2);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_group_is_a_business_failure() {
        bounded(async {
            let server = start(ManagerConfig {
                known_groups: Some(vec!["known".to_owned()]),
                ..ManagerConfig::default()
            });
            server.set_nodes(&[node(1)]);
            let response = lookup(&server, &format!("{LOOKUP}/other?protocolType=TCP"), "").await;
            assert_eq!(response.status, 200);
            assert_eq!(
                response.body,
                r#"{"success":false,"errMsg":"group not found by groupId=other","data":null}"#
            );
            let json = lookup(&server, &format!("{LOOKUP}/known"), "").await.json();
            assert_eq!(json["success"], true);
            let stats = server.stats();
            assert_eq!((stats.failure, stats.ok), (1, 1));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zero_nodes_give_a_null_node_list() {
        bounded(async {
            let server = start(ManagerConfig {
                max_packet_length: Some(100),
                ..ManagerConfig::default()
            });
            let response = lookup(&server, &format!("{LOOKUP}/g"), "").await;
            assert_eq!(
                response.body,
                "{\"success\":true,\"errMsg\":null,\"data\":{\"clusterId\":null,\"reportSourceType\":null,\
                 \"isIntranet\":null,\"isSwitch\":null,\"load\":20,\"maxPacketLength\":null,\"nodeList\":null}}"
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_ids_are_stable_per_address() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1), node(2), node(1)]);
            server.add_node(node(3));
            server.add_node(node(2));
            assert_eq!(server.nodes(), [node(1), node(2), node(3)]);
            server.remove_node(node(2));
            server.remove_node(node(9));
            server.add_node(node(4));
            server.add_node(node(2));
            assert_eq!(server.nodes(), [node(1), node(3), node(4), node(2)]);
            let json = lookup(&server, &format!("{LOOKUP}/g"), "").await.json();
            let ids: Vec<(i64, i64)> = json["data"]["nodeList"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|n| (n["port"].as_i64().expect("port"), n["id"].as_i64().expect("id")))
                .collect();
            assert_eq!(ids, [(1, 1), (3, 3), (4, 4), (2, 2)]);
        })
        .await;
    }

    fn auth_config(tenant: Option<&str>) -> ManagerConfig {
        ManagerConfig {
            auth: Some(ManagerAuth {
                secret_id: "admin".to_owned(),
                secret_key: "s3cret".to_owned(),
                tenant: tenant.map(str::to_owned),
            }),
            ..ManagerConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_accepts_only_the_right_basic_credentials() {
        bounded(async {
            let server = start(auth_config(None));
            server.set_nodes(&[node(1)]);
            let target = format!("{LOOKUP}/g?protocolType=TCP");
            for headers in [
                basic("admin", "s3cret"),
                basic("admin", "s3cret").replace("authorization", "Authorization"),
                // Java's split drops a trailing empty part, so "admin:s3cret:" passes.
                basic("admin", "s3cret:"),
                // Padding is optional for Java's decoder.
                basic("admin", "s3cret").trim_end().trim_end_matches('=').to_owned() + "\r\n",
            ] {
                let response = lookup(&server, &target, &headers).await;
                assert_eq!(response.status, 200, "{headers}");
                assert_eq!(response.json()["success"], true);
            }
            for headers in [
                String::new(),
                basic("admin", "wrong"),
                basic("other", "s3cret"),
                basic("admin", ""),
                basic("", "s3cret"),
                basic("admin", "s3cret:x"),
                basic("admin", "s3cret").replace("Basic", "basic"),
                basic("admin", "s3cret").replace("Basic ", "Basic  "),
                "authorization: Basic !!!!\r\n".to_owned(),
                "authorization: Bearer abc\r\n".to_owned(),
                "authorization: \r\n".to_owned(),
            ] {
                let response = lookup(&server, &target, &headers).await;
                assert_eq!(response.status, 403, "{headers}");
                assert!(response
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("text/html")));
                assert!(response.body.contains("403"));
            }
            // Auth runs before routing, as the filter guards all of /openapi/**.
            assert_eq!(lookup(&server, "/inlong/manager/openapi/nothing", "").await.status, 403);
            assert_eq!(lookup(&server, "/elsewhere", "").await.status, 404);
            let stats = server.stats();
            assert_eq!((stats.ok, stats.auth_rejected, stats.not_found), (4, 12, 1));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenant_header_must_match_the_configured_tenant() {
        bounded(async {
            let target = format!("{LOOKUP}/g");
            let credentials = basic("admin", "s3cret");
            let cases: [(Option<&str>, &str, u16); 8] = [
                (None, "", 200),
                (None, "tenant: anything\r\n", 200),
                (Some("public"), "", 200),
                (Some("public"), "tenant:  \r\n", 200),
                (Some("public"), "Tenant: public\r\n", 200),
                (Some("public"), "tenant: other\r\n", 403),
                (Some("team"), "", 403),
                (Some("team"), "tenant: team\r\n", 200),
            ];
            for (tenant, header, status) in cases {
                let server = start(auth_config(tenant));
                let response = lookup(&server, &target, &format!("{credentials}{header}")).await;
                assert_eq!(response.status, status, "{tenant:?} {header:?}");
            }
            // Without auth the built-in admin may use any tenant.
            let server = start(ManagerConfig::default());
            assert_eq!(lookup(&server, &target, "tenant: x\r\n").await.status, 200);
        })
        .await;
    }

    #[test]
    fn debug_output_never_shows_the_secret_key() {
        let config = auth_config(Some("public"));
        let printed = format!("{config:?}");
        assert!(printed.contains("admin") && !printed.contains("s3cret"), "{printed}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faults_change_the_answers() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let target = format!("{LOOKUP}/g?protocolType=TCP");

            server.set_fault(ManagerFault::NullNodeList);
            let json = lookup(&server, &target, "").await.json();
            assert_eq!(json["success"], true);
            assert!(json["data"]["nodeList"].is_null() && json["data"]["clusterId"].is_null());

            server.set_fault(ManagerFault::Failure("boom \"quoted\"".to_owned()));
            let response = lookup(&server, &target, "").await;
            assert_eq!(response.status, 200);
            assert_eq!(
                response.body,
                r#"{"success":false,"errMsg":"boom \"quoted\"","data":null}"#
            );

            server.set_fault(ManagerFault::HttpStatus(503));
            let response = lookup(&server, &target, "").await;
            assert_eq!(response.status, 503);
            assert!(response.body.contains("503"));
            server.set_fault(ManagerFault::HttpStatus(42));
            assert_eq!(lookup(&server, &target, "").await.status, 500);

            server.set_fault(ManagerFault::Garbage);
            let response = lookup(&server, &target, "").await;
            assert_eq!(response.status, 200);
            assert!(serde_json::from_str::<serde_json::Value>(&response.body).is_err());

            // Faults do not override routing.
            assert_eq!(request(&server, "GET", &target, "", "").await.status, 405);

            server.set_fault(ManagerFault::None);
            let json = lookup(&server, &target, "").await.json();
            assert_eq!(json["data"]["nodeList"][0]["port"], 1);

            let stats = server.stats();
            assert_eq!((stats.ok, stats.failure, stats.faulted, stats.requests), (2, 1, 3, 7));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delay_holds_up_only_its_own_answer() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let target = format!("{LOOKUP}/g");
            server.set_fault(ManagerFault::Delay(Duration::from_secs(60)));
            let mut slow = Client::connect(&server).await;
            slow.send(&post(&target, "")).await;
            // The slow request has been read (and its fault chosen) once it is counted.
            server.wait_for_stats(|s| s.requests == 1).await;
            server.set_fault(ManagerFault::None);

            let fast = lookup(&server, &target, "").await;
            assert_eq!(fast.json()["success"], true);
            assert_eq!(server.stats().ok, 1);

            // The delayed answer is still pending; stopping the server drops it.
            server.stop_listening();
            assert!(slow.receive().await.is_none());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_delay_answers_late_but_normally() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_fault(ManagerFault::Delay(Duration::from_millis(100)));
            let started = tokio::time::Instant::now();
            let json = lookup(&server, &format!("{LOOKUP}/g"), "").await.json();
            assert!(started.elapsed() >= Duration::from_millis(100));
            assert_eq!(json["success"], true);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_refuses_connections_and_start_listens_again() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let addr = server.local_addr();
            let target = format!("{LOOKUP}/g");
            let mut open = Client::connect(&server).await;
            assert_eq!(open.exchange(&post(&target, "")).await.status, 200);

            server.stop_listening();
            server.stop_listening();
            assert!(!server.is_listening());
            let refused = TcpStream::connect(addr).await.expect_err("nothing listens");
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
            assert!(open.is_closed().await);

            server.start_listening().expect("rebind the same port");
            server.start_listening().expect("already listening is fine");
            assert!(server.is_listening());
            assert_eq!(server.local_addr(), addr);
            let json = lookup(&server, &target, "").await.json();
            assert_eq!(json["data"]["nodeList"][0]["port"], 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_final_and_idempotent() {
        bounded(async {
            let server = start(ManagerConfig::default());
            let addr = server.local_addr();
            let other_handle = server.clone();
            server.shutdown();
            other_handle.shutdown();
            assert!(server.start_listening().is_err());
            assert!(TcpStream::connect(addr).await.is_err());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_last_handle_stops_the_server() {
        bounded(async {
            let server = start(ManagerConfig::default());
            let addr = server.local_addr();
            let clone = server.clone();
            drop(server);
            assert!(TcpStream::connect(addr).await.is_ok());
            drop(clone);
            assert!(TcpStream::connect(addr).await.is_err());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_serves_many_requests_on_one_connection() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let target = format!("{LOOKUP}/g?protocolType=tcp");
            let mut client = Client::connect(&server).await;
            let first = client.exchange(&post(&target, "")).await;
            assert_eq!(first.header("connection"), Some("keep-alive"));
            server.add_node(node(2));
            let second = client.exchange(&post(&target, "")).await;
            assert_eq!(second.json()["data"]["nodeList"][1]["port"], 2);

            let last = client.exchange(&post(&target, "Connection: close\r\n")).await;
            assert_eq!(last.header("connection"), Some("close"));
            assert!(client.is_closed().await);

            let mut old = Client::connect(&server).await;
            let response = old.exchange(&format!("POST {target} HTTP/1.0\r\n\r\n")).await;
            assert_eq!(response.status, 200);
            assert!(old.is_closed().await);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_clients_are_answered() {
        bounded(async {
            let server = start(ManagerConfig::default());
            server.set_nodes(&[node(1)]);
            let mut tasks = Vec::new();
            for i in 0..32 {
                let server = server.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..4 {
                        let response = lookup(&server, &format!("{LOOKUP}/g{i}"), "").await;
                        assert_eq!(response.status, 200);
                    }
                }));
            }
            for task in tasks {
                task.await.expect("client task");
            }
            assert_eq!(server.stats().ok, 128);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_requests_get_400_and_are_counted() {
        bounded(async {
            let server = start(ManagerConfig::default());
            let mut client = Client::connect(&server).await;
            let response = client.exchange("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
            assert_eq!(response.status, 400);
            assert!(client.is_closed().await);
            let mut client = Client::connect(&server).await;
            let chunked = format!("POST {LOOKUP}/g HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            assert_eq!(client.exchange(&chunked).await.status, 411);
            // hyper answers a head it cannot parse or that is too large itself.
            for (request, status) in [
                ("GET / HTTP/1.1\r\nHost: m\r\nSpace : v\r\n\r\n".to_owned(), 400),
                (format!("GET / HTTP/1.1\r\nHost: m\r\nX: {}\r\n\r\n", "a".repeat(40 << 10)), 431),
                (format!("POST {LOOKUP}/g HTTP/1.1\r\nHost: m\r\nContent-Length: 2000000\r\n\r\n"), 413),
            ] {
                let mut client = Client::connect(&server).await;
                assert_eq!(client.exchange(&request).await.status, status, "{status}");
                assert!(client.is_closed().await);
            }
            server.wait_for_stats(|stats| stats.bad_request == 5).await;
            assert_eq!(server.stats().requests, 0);
        })
        .await;
    }

    #[test]
    fn starts_from_outside_the_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = ManagerServer::start(runtime.handle(), addr, ManagerConfig::default())
            .expect("bind loopback");
        assert_eq!(
            server.url(),
            format!("http://127.0.0.1:{}{LOOKUP}", server.local_addr().port())
        );
        let status = runtime
            .block_on(bounded(async { lookup(&server, &format!("{LOOKUP}/g"), "").await.status }));
        assert_eq!(status, 200);
        drop(server);
    }

    #[test]
    fn url_of_an_unspecified_address_uses_loopback() {
        let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8083));
        assert_eq!(discovery_url(v4), format!("http://127.0.0.1:8083{LOOKUP}"));
        assert_eq!(base_url(v4), "http://127.0.0.1:8083");
        assert_eq!(base_url(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 1))), "http://[::1]:1");
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8083));
        assert_eq!(discovery_url(v6), format!("http://[::1]:8083{LOOKUP}"));
        let other = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 1));
        assert_eq!(discovery_url(other), format!("http://10.0.0.1:1{LOOKUP}"));
    }
}
