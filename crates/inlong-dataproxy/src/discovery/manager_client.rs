//! The Manager client: one `getIpList` lookup of the DataProxy node list (`PROTOCOL.md` §5).
//!
//! [`ManagerClient`] is built once per producer from a [`ManagerClientConfig`]. It validates the
//! URL, group id and credentials up front and owns one `reqwest::Client` (connect timeout, total
//! request timeout, verified TLS, no redirects) that every [`ManagerClient::lookup`] reuses.
//! A lookup is `POST {manager_url}/{group_id}?protocolType=TCP` with an empty body, the Basic-auth
//! or hook header of §5.2 and an optional `tenant` header, retried a bounded number of times on
//! transport errors and HTTP 5xx only. [`parse_node_list`] is the pure, fuzzable decoder of the
//! §5.3 JSON: every field is optional and unusable nodes are skipped, never a panic.
//!
//! The start-up path and the control thread call this; shards never do. A lookup must never hang
//! past its deadline, and no credential (secret key, Basic token, hook header value) may ever
//! appear in an error, a `Debug` output or a log line.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// The Go SDK's default Manager URL (`GO/dataproxy/options.go`): the `getIpList` base without the
/// group id.
pub const DEFAULT_MANAGER_URL: &str =
    "http://127.0.0.1:8083/inlong/manager/openapi/dataproxy/getIpList";
/// Default [`ManagerClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`ManagerClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ManagerClientConfig::lookup_attempts`]: the first try and one retry, like Go's
/// `get(2)`.
pub const DEFAULT_LOOKUP_ATTEMPTS: u32 = 2;

/// The `protocolType` sent with every lookup. Upper case matches the stored value even on a
/// case-sensitive collation (§5.1).
const PROTOCOL_TYPE: &str = "TCP";
/// The waits between attempts: 200 ms doubling to 2 s, no jitter.
const BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff::MANAGER_LOOKUP;
/// A node list is a few KiB; anything this large is not a Manager answer.
const MAX_RESPONSE_LEN: usize = 4 << 20;
/// How much of an error page is read to quote from it.
const MAX_EXCERPT_READ: usize = 4096;
/// The longest body excerpt an [`DiscoveryError::Http`] carries, in characters.
const BODY_EXCERPT_CHARS: usize = 200;
const USER_AGENT: &str = concat!("inlong-dataproxy-rust/", env!("CARGO_PKG_VERSION"));
const REDACTED: &str = "<redacted>";

/// Why a Manager lookup (or building the client) failed.
///
/// No variant ever carries a credential: the URL is checked to have none, and quoted response
/// text has known secrets masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The Manager could not be reached: connect failure, timeout, TLS or transport error.
    #[error("cannot reach the InLong Manager at {url}: {reason}")]
    Unreachable {
        /// The lookup URL (never with credentials).
        url: String,
        /// What went wrong, from the transport.
        reason: String,
    },
    /// HTTP 401 or 403: the Manager's open API refused the credentials.
    #[error(
        "the InLong Manager refused the lookup with HTTP {status}: authentication/authorization \
         failed; check secret_id and secret_key (a Manager user and its secret key, or the auth \
         provider's header) and tenant (the user needs a role in it; `public` when unset)"
    )]
    Auth {
        /// The HTTP status (401 or 403).
        status: u16,
    },
    /// Any other answer that is not 2xx.
    #[error("the InLong Manager answered HTTP {status}: {body_excerpt}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The start of the body (at most 200 characters, control characters replaced).
        body_excerpt: String,
    },
    /// The Manager answered `success: false` (unknown group, group not configured, no cluster).
    #[error("the InLong Manager rejected the lookup: {err_msg}")]
    Rejected {
        /// The Manager's `errMsg` (empty when it sent none).
        err_msg: String,
    },
    /// The answer is not JSON, or not shaped like the Manager's `Response`.
    #[error("the InLong Manager's answer is not a node list: {reason}")]
    BadResponse {
        /// What was wrong with it.
        reason: String,
    },
    /// The Manager answered, but listed no usable DataProxy node (the Go SDK's message).
    #[error("service has no endpoints")]
    NoEndpoints,
    /// The [`AuthProvider`] failed or returned a header that cannot be sent.
    #[error("the Manager auth provider failed: {reason}")]
    AuthHook {
        /// The provider's message, or why its header was refused.
        reason: String,
    },
    /// The configuration cannot work: bad URL, bad group id, half-set credentials.
    #[error("invalid Manager client config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl DiscoveryError {
    /// Whether trying again later may succeed: the Manager was unreachable or answered HTTP 5xx.
    /// These are the errors a lookup retries and the ones that fall back to the cached list.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            DiscoveryError::Unreachable { .. } => true,
            DiscoveryError::Http { status, .. } => (500..=599).contains(status),
            _ => false,
        }
    }
}

/// A hook that supplies the authentication header of every lookup, like the Go SDK's `Auth`.
///
/// It is called before each attempt and returns one header `(name, value)`. For the Manager's
/// open API that is `("authorization", "Basic " + base64(user + ":" + secret_key))` (§5.2). When a
/// provider is set it replaces the built-in Basic auth. The value is treated as a secret: it is
/// never logged or put in an error.
pub trait AuthProvider: Send + Sync + fmt::Debug {
    /// The header for a lookup of `group_id`, or why there is none. The error text is shown to
    /// the user, so it must not contain a secret.
    ///
    /// # Errors
    ///
    /// The provider cannot produce a header now (for example its token source is down).
    fn header(&self, group_id: &str) -> Result<(String, String), String>;
}

/// How to reach and authenticate to the InLong Manager.
#[derive(Clone)]
pub struct ManagerClientConfig {
    /// The `getIpList` base URL without the group id (the Go SDK's `URL` option), for example
    /// `http://manager:8083/inlong/manager/openapi/dataproxy/getIpList`. One trailing `/` is
    /// ignored. Must be `http` or `https`, with a host and without credentials, query or fragment.
    pub manager_url: String,
    /// The inlong group id the node list is for.
    pub group_id: String,
    /// Limit for the TCP connect (and TLS handshake start) of one attempt. Default 3 s.
    pub connect_timeout: Duration,
    /// Limit for one whole attempt, from connect to the last byte of the answer. Default 10 s.
    pub request_timeout: Duration,
    /// Accept any TLS certificate (as the Go SDK always does). Default `false`: verified TLS.
    pub accept_invalid_certs: bool,
    /// The Manager user for the built-in Basic auth; used when both it and `secret_key` are set.
    pub secret_id: Option<String>,
    /// That user's secret key. Never logged; `Debug` shows it redacted.
    pub secret_key: Option<String>,
    /// Sent as the `tenant` header when set and not blank; the Manager assumes `public` otherwise.
    pub tenant: Option<String>,
    /// Supplies the auth header instead of the built-in Basic auth when set.
    pub auth_provider: Option<Arc<dyn AuthProvider>>,
    /// Tries per lookup, at least 1 (0 is taken as 1). Only transport errors and HTTP 5xx are
    /// retried, after 200 ms, then 400 ms, doubling up to 2 s. Default 2.
    pub lookup_attempts: u32,
}

impl ManagerClientConfig {
    /// The defaults with this URL and group id.
    pub fn new(manager_url: impl Into<String>, group_id: impl Into<String>) -> Self {
        ManagerClientConfig {
            manager_url: manager_url.into(),
            group_id: group_id.into(),
            ..ManagerClientConfig::default()
        }
    }
}

impl Default for ManagerClientConfig {
    /// The Go SDK's default URL ([`DEFAULT_MANAGER_URL`]), an empty group id (which must be set),
    /// 3 s connect and 10 s request timeouts, verified TLS, no auth, two attempts.
    fn default() -> Self {
        ManagerClientConfig {
            manager_url: DEFAULT_MANAGER_URL.to_owned(),
            group_id: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            accept_invalid_certs: false,
            secret_id: None,
            secret_key: None,
            tenant: None,
            auth_provider: None,
            lookup_attempts: DEFAULT_LOOKUP_ATTEMPTS,
        }
    }
}

impl fmt::Debug for ManagerClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerClientConfig")
            .field("manager_url", &without_userinfo(&self.manager_url))
            .field("group_id", &self.group_id)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .field("secret_id", &self.secret_id)
            .field("secret_key", &self.secret_key.as_ref().map(|_| REDACTED))
            .field("tenant", &self.tenant)
            // The provider's own `Debug` may hold a token; do not call it.
            .field("auth_provider", &self.auth_provider.as_ref().map(|_| "<auth provider>"))
            .field("lookup_attempts", &self.lookup_attempts)
            .finish()
    }
}

/// One DataProxy node: an IP literal (in canonical form) or a host name (lower case), and a port.
///
/// Host names are kept unresolved; the shard resolves them when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// Validates and normalizes a node address. `host` may be an IPv4 or IPv6 literal (with or
    /// without brackets) or a DNS host name; surrounding whitespace is ignored.
    ///
    /// Returns `None` for port 0, an empty host, or a host that is neither an IP literal nor a
    /// valid host name.
    #[must_use]
    pub fn new(host: &str, port: u16) -> Option<Endpoint> {
        if port == 0 {
            return None;
        }
        let host = host.trim();
        if let Some(inner) = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            let ip = inner.parse::<Ipv6Addr>().ok()?;
            return Some(Endpoint { host: ip.to_string(), port });
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Endpoint { host: ip.to_string(), port });
        }
        is_host_name(host).then(|| Endpoint { host: host.to_ascii_lowercase(), port })
    }

    /// The IP literal or host name, without brackets.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (never 0).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP literal; `None` for a host name.
    #[must_use]
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint { host: addr.ip().to_string(), port: addr.port() }
    }
}

impl fmt::Display for Endpoint {
    /// `host:port`, with an IPv6 host in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A DNS host name: dot-separated labels of letters, digits, `-` and `_` (1–63 bytes, not
/// starting or ending with `-`), at most 253 bytes, one trailing dot allowed, and a last label
/// that is not all digits (so a malformed IPv4 literal is not taken for a name).
fn is_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_all_digits =
        name.rsplit('.').next().is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_all_digits
}

/// The usable part of a Manager answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeList {
    /// The nodes, in the Manager's order, without duplicates. May be empty from
    /// [`parse_node_list`]; never empty from [`ManagerClient::lookup`].
    pub endpoints: Vec<Endpoint>,
    /// `data.maxPacketLength` when present and positive: the frame size limit of the cluster.
    pub max_packet_length: Option<usize>,
    /// `data.clusterId`, the DataProxy cluster the nodes belong to.
    pub cluster_id: Option<i64>,
}

/// `Response<DataProxyNodeResponse>` (§5.3). Unknown keys are ignored; the loosely typed fields
/// are read by hand so that an odd value skips a node instead of failing the whole answer.
#[derive(Deserialize)]
struct Envelope {
    success: Option<bool>,
    #[serde(rename = "errMsg")]
    err_msg: Option<Value>,
    data: Option<Value>,
}

/// Decodes the Manager's `getIpList` answer (`PROTOCOL.md` §5.3). Pure: no I/O, no clock.
///
/// Every field may be `null` or missing. A node without an integer `id` and `port` or a string
/// `ip`, with a port outside 1..=65535, or with an IP that is neither an IP literal nor a host
/// name is skipped (logged at debug); a repeated `ip:port` keeps its first place. `success: true`
/// with `data` or `nodeList` `null` is an empty list.
///
/// # Errors
///
/// [`DiscoveryError::Rejected`] for `success: false`, [`DiscoveryError::BadResponse`] when the
/// body is not a JSON object of that shape (including a missing `success`).
pub fn parse_node_list(body: &[u8]) -> Result<NodeList, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadResponse { reason };
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|error| bad(format!("not the Manager's JSON response: {error}")))?;
    match envelope.success {
        Some(true) => {}
        Some(false) => {
            let err_msg = match envelope.err_msg {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(message)) => message,
                Some(other) => other.to_string(),
            };
            return Err(DiscoveryError::Rejected { err_msg });
        }
        None => return Err(bad("`success` is missing or null".to_owned())),
    }
    let data = match envelope.data {
        None | Some(Value::Null) => return Ok(NodeList::default()),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(bad("`data` is not an object".to_owned())),
    };
    let cluster_id = data.get("clusterId").and_then(Value::as_i64);
    let max_packet_length = data
        .get("maxPacketLength")
        .and_then(Value::as_i64)
        .filter(|&len| len > 0)
        .and_then(|len| usize::try_from(len).ok());
    let nodes = match data.get("nodeList") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(nodes)) => nodes.as_slice(),
        Some(_) => return Err(bad("`data.nodeList` is not an array".to_owned())),
    };
    let mut seen = HashSet::with_capacity(nodes.len());
    let mut endpoints = Vec::with_capacity(nodes.len());
    for (index, node) in nodes.iter().enumerate() {
        match node_endpoint(node) {
            Ok(endpoint) if seen.insert(endpoint.clone()) => endpoints.push(endpoint),
            Ok(endpoint) => tracing::debug!(index, %endpoint, "skipping a duplicate node"),
            Err(reason) => tracing::debug!(index, reason, "skipping an unusable node"),
        }
    }
    if endpoints.len() < nodes.len() {
        tracing::debug!(listed = nodes.len(), usable = endpoints.len(), "node list filtered");
    }
    Ok(NodeList { endpoints, max_packet_length, cluster_id })
}

/// One `DataProxyNodeInfo`, or why it is unusable.
fn node_endpoint(node: &Value) -> Result<Endpoint, &'static str> {
    let node = node.as_object().ok_or("not an object")?;
    node.get("id").and_then(Value::as_i64).ok_or("`id` missing, null or not an integer")?;
    let ip = node.get("ip").and_then(Value::as_str).ok_or("`ip` missing, null or not a string")?;
    let port =
        node.get("port").and_then(Value::as_i64).ok_or("`port` missing, null or not an integer")?;
    let port =
        u16::try_from(port).ok().filter(|&port| port != 0).ok_or("`port` outside 1..=65535")?;
    Endpoint::new(ip, port).ok_or("`ip` is empty or neither an IP address nor a host name")
}

/// The text form of `manager_url` used for identity (cache file names and checks): surrounding
/// whitespace and one trailing `/` removed.
pub(crate) fn normalize_manager_url(manager_url: &str) -> &str {
    let trimmed = manager_url.trim();
    trimmed.strip_suffix('/').unwrap_or(trimmed)
}

/// `url` with any `user:password@` part replaced, for printing a URL that was not validated yet.
fn without_userinfo(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}{REDACTED}@{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// How each lookup authenticates, resolved once from the config.
enum Credentials {
    None,
    /// The `authorization` header and the strings to mask in quoted response text.
    Basic {
        header: HeaderValue,
        secrets: Vec<String>,
    },
    Hook(Arc<dyn AuthProvider>),
}

/// Looks up the DataProxy nodes of one group on the InLong Manager.
///
/// Build it once; it keeps one HTTP client for every lookup. Lookups run on any tokio runtime
/// whose I/O and time drivers are enabled, including a current-thread one.
pub struct ManagerClient {
    http: reqwest::Client,
    manager_url: String,
    group_id: String,
    request_url: Url,
    connect_timeout: Duration,
    request_timeout: Duration,
    attempts: u32,
    credentials: Credentials,
    tenant: Option<HeaderValue>,
}

impl fmt::Debug for ManagerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.credentials {
            Credentials::None => "none",
            Credentials::Basic { .. } => "basic",
            Credentials::Hook(_) => "provider",
        };
        f.debug_struct("ManagerClient")
            .field("request_url", &self.request_url.as_str())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("attempts", &self.attempts)
            .field("auth", &auth)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl ManagerClient {
    /// Validates `config` and builds the HTTP client. Makes no request.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::Config`]: the URL is not `http`/`https` with a host, or has credentials,
    /// a query or a fragment; the group id is empty or has `/`, `\`, `?`, `#` or whitespace (or is
    /// `.` or `..`); a timeout is zero; only one of `secret_id` and `secret_key` is set, one is
    /// blank or has a `:`; the tenant is not a valid header value; or the TLS setup failed.
    pub fn new(config: ManagerClientConfig) -> Result<ManagerClient, DiscoveryError> {
        let config_error = |reason: &str| DiscoveryError::Config { reason: reason.to_owned() };
        let manager_url = normalize_manager_url(&config.manager_url).to_owned();
        validate_manager_url(&manager_url)?;
        validate_group_id(&config.group_id)?;
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(config_error("connect_timeout and request_timeout must be above zero"));
        }
        let request_url =
            Url::parse(&format!("{manager_url}/{}?protocolType={PROTOCOL_TYPE}", config.group_id))
                .map_err(|error| DiscoveryError::Config {
                    reason: format!("cannot build the lookup URL: {error}"),
                })?;
        let credentials = match (&config.auth_provider, &config.secret_id, &config.secret_key) {
            (Some(provider), _, _) => Credentials::Hook(Arc::clone(provider)),
            (None, Some(id), Some(key)) => basic_credentials(id, key)?,
            (None, None, None) => Credentials::None,
            (None, _, _) => {
                return Err(config_error("secret_id and secret_key must be set together"));
            }
        };
        let tenant = match config.tenant.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(tenant) => Some(
                HeaderValue::from_str(tenant)
                    .map_err(|_| config_error("tenant is not a valid HTTP header value"))?,
            ),
        };
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .danger_accept_invalid_certs(config.accept_invalid_certs)
            // A redirect could carry a hook's custom auth header to another host; a Manager
            // behind a redirect shows up as an HTTP 3xx error instead.
            .redirect(reqwest::redirect::Policy::none())
            // Lookups are minutes apart, and a pooled connection belongs to the runtime that made
            // it: the start-up lookup and the control thread may run on different runtimes.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|error| DiscoveryError::Config {
                reason: format!("cannot build the HTTP client: {}", error_chain(&error)),
            })?;
        Ok(ManagerClient {
            http,
            manager_url,
            group_id: config.group_id,
            request_url,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            attempts: config.lookup_attempts.max(1),
            credentials,
            tenant,
        })
    }

    /// The configured Manager URL (whitespace and one trailing `/` removed).
    #[must_use]
    pub fn manager_url(&self) -> &str {
        &self.manager_url
    }

    /// The group id the lookups are for.
    #[must_use]
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The URL each lookup posts to.
    #[must_use]
    pub fn request_url(&self) -> &str {
        self.request_url.as_str()
    }

    /// The longest a [`lookup`](Self::lookup) can take: every attempt at its full request timeout
    /// plus the waits between them.
    #[must_use]
    pub fn lookup_deadline(&self) -> Duration {
        let total = self.request_timeout.saturating_mul(self.attempts);
        (1..self.attempts)
            .map(|attempt| BACKOFF.longest(attempt))
            .fold(total, Duration::saturating_add)
    }

    /// Asks the Manager for the group's DataProxy nodes.
    ///
    /// Transport errors and HTTP 5xx are retried up to `lookup_attempts` tries in all; every
    /// other outcome is final. Never takes longer than [`lookup_deadline`](Self::lookup_deadline).
    ///
    /// # Errors
    ///
    /// Every [`DiscoveryError`] but `Config`; [`DiscoveryError::NoEndpoints`] when the Manager
    /// answered without a usable node.
    pub async fn lookup(&self) -> Result<NodeList, DiscoveryError> {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let outcome = match self.lookup_once().await {
                Ok(list) if list.endpoints.is_empty() => Err(DiscoveryError::NoEndpoints),
                other => other,
            };
            match outcome {
                Ok(list) => {
                    tracing::debug!(
                        url = %self.request_url,
                        nodes = list.endpoints.len(),
                        attempt,
                        elapsed = ?started.elapsed(),
                        "manager lookup succeeded"
                    );
                    return Ok(list);
                }
                Err(error) if error.is_transient() && attempt < self.attempts => {
                    let backoff = BACKOFF.nominal(attempt);
                    tracing::warn!(%error, attempt, retry_in = ?backoff, "manager lookup failed");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                Err(error) => {
                    tracing::debug!(%error, attempt, "manager lookup failed");
                    return Err(error);
                }
            }
        }
    }

    /// One attempt, bounded by the request timeout even if the HTTP client's own timer misses.
    async fn lookup_once(&self) -> Result<NodeList, DiscoveryError> {
        let mut request = self.http.post(self.request_url.clone()).body(Vec::new());
        let mut secrets: Vec<String> = Vec::new();
        match &self.credentials {
            Credentials::None => {}
            Credentials::Basic { header, secrets: basic } => {
                request = request.header(AUTHORIZATION, header.clone());
                secrets.extend(basic.iter().cloned());
            }
            Credentials::Hook(provider) => {
                let (name, value, secret) = self.hook_header(provider.as_ref())?;
                request = request.header(name, value);
                secrets.push(secret);
            }
        }
        if let Some(tenant) = &self.tenant {
            request = request.header("tenant", tenant.clone());
        }
        match tokio::time::timeout(self.request_timeout, self.exchange(request, &secrets)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.unreachable(format!(
                "no complete answer within the request timeout of {:?}",
                self.request_timeout
            ))),
        }
    }

    /// Calls the auth hook and checks its header; the value is marked sensitive.
    fn hook_header(
        &self,
        provider: &dyn AuthProvider,
    ) -> Result<(HeaderName, HeaderValue, String), DiscoveryError> {
        let hook_error = |reason: &str| DiscoveryError::AuthHook { reason: reason.to_owned() };
        let (name, value) = provider
            .header(&self.group_id)
            .map_err(|reason| DiscoveryError::AuthHook { reason })?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| hook_error("the header name is not a valid HTTP header name"))?;
        let mut header = HeaderValue::from_str(value.trim())
            .map_err(|_| hook_error("the header value is not a valid HTTP header value"))?;
        header.set_sensitive(true);
        Ok((name, header, value))
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        secrets: &[String],
    ) -> Result<NodeList, DiscoveryError> {
        let mut response = request.send().await.map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        if let Some(trace_id) = response.headers().get("trace-id") {
            tracing::debug!(?trace_id, %status, "manager answered");
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(DiscoveryError::Auth { status: status.as_u16() });
        }
        if !status.is_success() {
            // A broken error page still tells the status; quote whatever arrived.
            let (head, _) = read_capped(&mut response, MAX_EXCERPT_READ).await.unwrap_or_default();
            let body_excerpt = excerpt(&head, secrets);
            return Err(DiscoveryError::Http { status: status.as_u16(), body_excerpt });
        }
        if response.content_length().is_some_and(|len| len > MAX_RESPONSE_LEN as u64) {
            return Err(too_large());
        }
        let (body, complete) = read_capped(&mut response, MAX_RESPONSE_LEN)
            .await
            .map_err(|error| self.transport_error(&error))?;
        if !complete {
            return Err(too_large());
        }
        parse_node_list(&body)
    }

    fn transport_error(&self, error: &reqwest::Error) -> DiscoveryError {
        let chain = error_chain(error);
        let mut reason = if error.is_connect() && error.is_timeout() {
            format!("connecting took longer than the connect timeout of {:?}", self.connect_timeout)
        } else if error.is_timeout() {
            format!("no complete answer within the request timeout of {:?}", self.request_timeout)
        } else if error.is_connect() {
            format!("connect failed: {chain}")
        } else {
            chain.clone()
        };
        // Past the TCP step of an https connect, what failed is the TLS handshake.
        if error.is_connect()
            && self.request_url.scheme() == "https"
            && !chain.contains("tcp connect")
        {
            reason.push_str(
                " (during the TLS handshake: check that the Manager serves HTTPS on this port and \
                 that its certificate is trusted)",
            );
        }
        self.unreachable(reason)
    }

    fn unreachable(&self, reason: String) -> DiscoveryError {
        DiscoveryError::Unreachable { url: self.request_url.to_string(), reason }
    }
}

fn too_large() -> DiscoveryError {
    DiscoveryError::BadResponse {
        reason: format!("the body is larger than {} MiB", MAX_RESPONSE_LEN >> 20),
    }
}

/// Reads the body up to `limit` bytes; `false` means there was more.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// The first [`BODY_EXCERPT_CHARS`] characters of `body`, one line, known secrets masked.
fn excerpt(body: &[u8], secrets: &[String]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        text = text.replace(secret.as_str(), REDACTED);
    }
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(BODY_EXCERPT_CHARS)
        .collect();
    text.trim().to_owned()
}

/// The messages of an error and its sources, joined by `": "`, without repeats. The URL is left
/// out; callers name it themselves.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    let mut first = true;
    while let Some(error) = current {
        let message = if first {
            // reqwest's own message names the URL; print it without.
            first = false;
            let mut bare = error.to_string();
            if let Some(url) = error
                .downcast_ref::<reqwest::Error>()
                .and_then(reqwest::Error::url)
                .map(Url::as_str)
            {
                bare = bare.replace(&format!(" for url ({url})"), "");
            }
            bare
        } else {
            error.to_string()
        };
        if !message.is_empty() && !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        current = error.source();
    }
    text
}

/// The Manager URL's rules (also [`crate::ProducerConfig::validate`]'s, for `manager_url`).
pub(crate) fn validate_manager_url(manager_url: &str) -> Result<(), DiscoveryError> {
    let config_error = |reason: String| DiscoveryError::Config { reason };
    if manager_url.is_empty() {
        return Err(config_error("manager_url is empty".to_owned()));
    }
    // The parse error never quotes the input, which might hold a password.
    let url = Url::parse(manager_url)
        .map_err(|error| config_error(format!("manager_url is not a valid URL: {error}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(
            "manager_url must not contain credentials; set secret_id and secret_key instead"
                .to_owned(),
        ));
    }
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(config_error(format!(
            "manager_url must be http or https, not {:?}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(format!("manager_url {manager_url:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config_error(format!(
            "manager_url {manager_url:?} must not have a query or fragment; it is the getIpList \
             base, e.g. {DEFAULT_MANAGER_URL}"
        )));
    }
    Ok(())
}

/// The group ID's one rule set ([`crate::protocol::validate_id`]), as a config error here.
fn validate_group_id(group_id: &str) -> Result<(), DiscoveryError> {
    crate::protocol::validate_id(crate::error::Field::GroupId, group_id)
        .map_err(|error| DiscoveryError::Config { reason: error.to_string() })
}

/// The Basic auth credentials' rules (also [`crate::ProducerConfig::validate`]'s).
pub(crate) fn validate_credentials(
    secret_id: &str,
    secret_key: &str,
) -> Result<(), DiscoveryError> {
    basic_credentials(secret_id, secret_key).map(|_| ())
}

/// The built-in Basic auth of §5.2; the Manager splits the credential on `:` into two non-blank
/// parts, so neither may contain one.
fn basic_credentials(secret_id: &str, secret_key: &str) -> Result<Credentials, DiscoveryError> {
    let config_error = |reason: &str| DiscoveryError::Config { reason: reason.to_owned() };
    if secret_id.trim().is_empty() || secret_key.trim().is_empty() {
        return Err(config_error("secret_id and secret_key must not be blank"));
    }
    if secret_id.contains(':') || secret_key.contains(':') {
        return Err(config_error("secret_id and secret_key must not contain `:`"));
    }
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{secret_id}:{secret_key}"));
    let mut header = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| config_error("secret_id or secret_key is not valid in an HTTP header"))?;
    header.set_sensitive(true);
    Ok(Credentials::Basic { header, secrets: vec![secret_key.to_owned(), token] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{"success":true,"errMsg":null,"data":{"clusterId":1,"reportSourceType":null,"isIntranet":null,"isSwitch":null,"load":20,"maxPacketLength":null,"nodeList":[{"id":3,"ip":"10.0.0.1","port":46801,"protocolType":"TCP","nodeLoad":12},{"id":4,"ip":"10.0.0.2","port":46801,"protocolType":"TCP","nodeLoad":null}]}}"#;
    const SECRET: &str = "Sup3r-Secret-Key";

    fn endpoint(host: &str, port: u16) -> Endpoint {
        Endpoint::new(host, port).expect("valid endpoint")
    }

    fn parse(body: &str) -> Result<NodeList, DiscoveryError> {
        parse_node_list(body.as_bytes())
    }

    fn with_nodes(nodes: &str) -> String {
        format!(r#"{{"success":true,"errMsg":null,"data":{{"clusterId":7,"nodeList":{nodes}}}}}"#)
    }

    fn hosts(list: &NodeList) -> Vec<String> {
        list.endpoints.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parses_the_protocol_example_exactly() {
        let list = parse(EXAMPLE).expect("example parses");
        assert_eq!(
            list,
            NodeList {
                endpoints: vec![endpoint("10.0.0.1", 46801), endpoint("10.0.0.2", 46801)],
                max_packet_length: None,
                cluster_id: Some(1),
            }
        );
    }

    #[test]
    fn nulls_everywhere_are_an_empty_list() {
        for body in [
            r#"{"success":true,"errMsg":null,"data":null}"#,
            r#"{"success":true}"#,
            r#"{"success":true,"errMsg":null,"data":{"clusterId":null,"reportSourceType":null,"isIntranet":null,"isSwitch":null,"load":null,"maxPacketLength":null,"nodeList":null}}"#,
            r#"{"success":true,"data":{}}"#,
            r#"{"success":true,"data":{"nodeList":[]}}"#,
        ] {
            assert_eq!(parse(body), Ok(NodeList::default()), "{body}");
        }
    }

    #[test]
    fn nodes_with_null_or_missing_fields_are_skipped() {
        let body = with_nodes(
            r#"[{"id":null,"ip":"10.0.0.1","port":1},{"ip":"10.0.0.2","port":2},
                {"id":3,"ip":null,"port":3},{"id":4,"port":4},{"id":5,"ip":"10.0.0.5","port":null},
                {"id":6,"ip":"10.0.0.6"},null,7,"x",[],{"id":8,"ip":"10.0.0.8","port":8}]"#,
        );
        assert_eq!(hosts(&parse(&body).expect("parses")), ["10.0.0.8:8"]);
    }

    #[test]
    fn success_false_is_rejected_with_the_message() {
        let body = r#"{"success":false,"errMsg":"group not found by groupId=g","data":null}"#;
        assert_eq!(
            parse(body),
            Err(DiscoveryError::Rejected { err_msg: "group not found by groupId=g".to_owned() })
        );
        assert_eq!(
            parse(r#"{"success":false}"#),
            Err(DiscoveryError::Rejected { err_msg: String::new() })
        );
        let odd = parse(r#"{"success":false,"errMsg":42}"#);
        assert_eq!(odd, Err(DiscoveryError::Rejected { err_msg: "42".to_owned() }));
    }

    #[test]
    fn garbage_and_wrong_shapes_are_bad_responses() {
        for body in [
            "",
            "<html><body>this is not JSON</body></html>",
            "[]",
            "null",
            "42",
            r#"{"success":true"#,
            "{}",
            r#"{"success":null}"#,
            r#"{"success":"true"}"#,
            r#"{"success":true,"data":[]}"#,
            r#"{"success":true,"data":{"nodeList":{}}}"#,
            r#"{"success":true,"data":{"nodeList":"10.0.0.1"}}"#,
        ] {
            assert!(
                matches!(parse(body), Err(DiscoveryError::BadResponse { .. })),
                "{body}: {:?}",
                parse(body)
            );
        }
        assert!(matches!(
            parse_node_list(&[0xff, 0xfe, 0x00]),
            Err(DiscoveryError::BadResponse { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let body = r#"{"success":true,"extra":{"a":[1,2]},"data":{"future":true,"nodeList":[{"id":1,"ip":"10.0.0.1","port":9,"weight":3}]}}"#;
        assert_eq!(hosts(&parse(body).expect("parses")), ["10.0.0.1:9"]);
    }

    #[test]
    fn duplicates_keep_the_first_place() {
        let body = with_nodes(
            r#"[{"id":1,"ip":"10.0.0.2","port":1},{"id":2,"ip":"10.0.0.1","port":1},
                {"id":3,"ip":"10.0.0.2","port":1},{"id":4,"ip":"10.0.0.2","port":2},
                {"id":5,"ip":"::1","port":1},{"id":6,"ip":"0:0:0:0:0:0:0:1","port":1},
                {"id":7,"ip":"Node.Example","port":1},{"id":8,"ip":"node.example","port":1}]"#,
        );
        assert_eq!(
            hosts(&parse(&body).expect("parses")),
            ["10.0.0.2:1", "10.0.0.1:1", "10.0.0.2:2", "[::1]:1", "node.example:1"]
        );
    }

    #[test]
    fn bad_ports_and_ips_are_skipped() {
        let body = with_nodes(
            r#"[{"id":1,"ip":"10.0.0.1","port":0},{"id":2,"ip":"10.0.0.1","port":-1},
                {"id":3,"ip":"10.0.0.1","port":65536},{"id":4,"ip":"10.0.0.1","port":"80"},
                {"id":5,"ip":"10.0.0.1","port":1.5},{"id":6,"ip":"","port":1},
                {"id":7,"ip":"   ","port":1},{"id":8,"ip":"10.0.0.256","port":1},
                {"id":9,"ip":"a b","port":1},{"id":10,"ip":"-bad.example","port":1},
                {"id":11,"ip":"[10.0.0.1]","port":1},{"id":12,"ip":42,"port":1},
                {"id":13,"ip":"10.0.0.1","port":65535},{"id":14,"ip":" [fe80::2] ","port":1},
                {"id":15,"ip":"dp-1.inlong.svc","port":46801}]"#,
        );
        assert_eq!(
            hosts(&parse(&body).expect("parses")),
            ["10.0.0.1:65535", "[fe80::2]:1", "dp-1.inlong.svc:46801"]
        );
    }

    #[test]
    fn max_packet_length_only_when_positive() {
        let cases = [
            ("null", None),
            ("0", None),
            ("-5", None),
            ("\"1024\"", None),
            ("1048576", Some(1_048_576)),
        ];
        for (value, expected) in cases {
            let body = format!(
                r#"{{"success":true,"data":{{"maxPacketLength":{value},"nodeList":[{{"id":1,"ip":"10.0.0.1","port":1}}]}}}}"#
            );
            let list = parse(&body).expect("parses");
            assert_eq!(list.max_packet_length, expected, "{value}");
            assert_eq!(list.cluster_id, None);
        }
    }

    #[test]
    fn endpoints_display_and_convert() {
        let v6 = endpoint("[::1]", 46801);
        assert_eq!(v6.to_string(), "[::1]:46801");
        assert_eq!(v6.to_socket_addr(), Some("[::1]:46801".parse().expect("addr")));
        let v4 = endpoint(" 10.0.0.1 ", 1);
        assert_eq!((v4.host(), v4.port()), ("10.0.0.1", 1));
        assert_eq!(v4.to_socket_addr(), Some("10.0.0.1:1".parse().expect("addr")));
        let name = endpoint("DP.Example.", 2);
        assert_eq!(name.to_string(), "dp.example.:2");
        assert_eq!(name.to_socket_addr(), None);
        let addr: SocketAddr = "[fe80::1]:7".parse().expect("addr");
        assert_eq!(Endpoint::from(addr).to_string(), "[fe80::1]:7");
        assert_eq!(Endpoint::new("10.0.0.1", 0), None);
        assert_eq!(Endpoint::new("1.2.3", 1), None);
        assert_eq!(Endpoint::new(&"a".repeat(64), 1), None);
        assert_eq!(Endpoint::new("[::1", 1), None);
    }

    fn config(url: &str, group: &str) -> ManagerClientConfig {
        ManagerClientConfig::new(url, group)
    }

    fn config_error(config: ManagerClientConfig) -> String {
        match ManagerClient::new(config) {
            Err(DiscoveryError::Config { reason }) => reason,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn urls_and_group_ids_are_validated() {
        let client = ManagerClient::new(config("http://m:8083/base/", "g_1")).expect("valid");
        assert_eq!(client.request_url(), "http://m:8083/base/g_1?protocolType=TCP");
        assert_eq!(client.manager_url(), "http://m:8083/base");
        assert_eq!(client.group_id(), "g_1");
        let client = ManagerClient::new(config("https://m", "g")).expect("valid");
        assert_eq!(client.request_url(), "https://m/g?protocolType=TCP");

        for url in
            ["", "m:8083/x", "ftp://m/x", "http://", "http://m/x?a=1", "http://m/x#f", "not a url"]
        {
            let reason = config_error(config(url, "g"));
            assert!(reason.contains("manager_url"), "{url}: {reason}");
        }
        for group in ["", "a/b", "a?b", "a#b", "a b", "a\tb", "a\\b", ".", ".."] {
            let reason = config_error(config("http://m/x", group));
            assert!(reason.contains("group id"), "{group:?}: {reason}");
        }
    }

    #[test]
    fn other_config_mistakes_are_refused() {
        let mut zero = config("http://m/x", "g");
        zero.request_timeout = Duration::ZERO;
        assert!(config_error(zero).contains("timeout"));

        let mut half = config("http://m/x", "g");
        half.secret_id = Some("admin".to_owned());
        assert!(config_error(half).contains("together"));

        for (id, key) in [("admin", " "), ("", "k"), ("ad:min", "k"), ("admin", "k:ey")] {
            let mut bad = config("http://m/x", "g");
            bad.secret_id = Some(id.to_owned());
            bad.secret_key = Some(key.to_owned());
            let reason = config_error(bad);
            assert!(!reason.contains("k:ey"), "{reason}");
        }

        let mut tenant = config("http://m/x", "g");
        tenant.tenant = Some("a\nb".to_owned());
        assert!(config_error(tenant).contains("tenant"));

        let mut zero_attempts = config("http://m/x", "g");
        zero_attempts.lookup_attempts = 0;
        let client = ManagerClient::new(zero_attempts).expect("0 attempts is 1");
        assert_eq!(client.lookup_deadline(), DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn lookup_deadline_adds_attempts_and_backoff() {
        let mut three = config("http://m/x", "g");
        three.request_timeout = Duration::from_secs(1);
        three.lookup_attempts = 3;
        let client = ManagerClient::new(three).expect("valid");
        assert_eq!(client.lookup_deadline(), Duration::from_millis(3600));
    }

    #[derive(Debug)]
    struct NoProvider;

    impl AuthProvider for NoProvider {
        fn header(&self, _group_id: &str) -> Result<(String, String), String> {
            Err("token service down".to_owned())
        }
    }

    #[test]
    fn secrets_never_show_in_errors_or_debug() {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{SECRET}"));
        let mut with_secret = config(&format!("http://admin:{SECRET}@m/x"), "g");
        with_secret.secret_id = Some("admin".to_owned());
        with_secret.secret_key = Some(SECRET.to_owned());
        let debug = format!("{with_secret:?}");
        assert!(debug.contains("admin") && !debug.contains(SECRET), "{debug}");
        let refused = ManagerClient::new(with_secret.clone()).expect_err("credentials in the URL");

        with_secret.manager_url = "http://m/x".to_owned();
        let client = ManagerClient::new(with_secret).expect("valid");
        let client_debug = format!("{client:?}");
        with_secret_absent(&client_debug, &token);

        let mut hooked = config("http://m/x", "g");
        hooked.auth_provider = Some(Arc::new(NoProvider));
        assert!(format!("{hooked:?}").contains("<auth provider>"));

        let errors = [
            refused,
            DiscoveryError::Unreachable {
                url: client.request_url().to_owned(),
                reason: "x".into(),
            },
            DiscoveryError::Auth { status: 403 },
            DiscoveryError::Http {
                status: 500,
                body_excerpt: excerpt(
                    format!("echo {SECRET} {token}").as_bytes(),
                    &[SECRET.into(), token.clone()],
                ),
            },
            DiscoveryError::Rejected { err_msg: "no".into() },
            DiscoveryError::BadResponse { reason: "no".into() },
            DiscoveryError::NoEndpoints,
            DiscoveryError::AuthHook { reason: "no".into() },
            DiscoveryError::Config { reason: "no".into() },
        ];
        for error in &errors {
            with_secret_absent(&format!("{error} {error:?}"), &token);
        }
        let auth = DiscoveryError::Auth { status: 403 }.to_string();
        assert!(auth.contains("authentication") && auth.contains("secret_key"), "{auth}");
        assert_eq!(DiscoveryError::NoEndpoints.to_string(), "service has no endpoints");
    }

    fn with_secret_absent(text: &str, token: &str) {
        assert!(!text.contains(SECRET) && !text.contains(token), "{text}");
    }

    #[test]
    fn excerpts_are_short_single_line_and_masked() {
        let body = format!("line one\r\nkey={SECRET}\n{}", "x".repeat(500));
        let text = excerpt(body.as_bytes(), &[SECRET.to_owned()]);
        assert!(text.starts_with("line one  key=<redacted>"), "{text}");
        assert_eq!(text.chars().count(), BODY_EXCERPT_CHARS);
        assert!(!text.contains('\n'));
    }

    #[test]
    fn only_unreachable_and_5xx_are_transient() {
        let unreachable = DiscoveryError::Unreachable { url: String::new(), reason: String::new() };
        assert!(unreachable.is_transient());
        assert!(DiscoveryError::Http { status: 503, body_excerpt: String::new() }.is_transient());
        assert!(!DiscoveryError::Http { status: 404, body_excerpt: String::new() }.is_transient());
        assert!(!DiscoveryError::Auth { status: 403 }.is_transient());
        assert!(!DiscoveryError::NoEndpoints.is_transient());
        assert!(!DiscoveryError::Rejected { err_msg: String::new() }.is_transient());
    }

    /// JSON values shaped somewhat like a Manager answer, so the fuzzing reaches the node logic.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("success"),
            Just("errMsg"),
            Just("data"),
            Just("nodeList"),
            Just("ip"),
            Just("port"),
            Just("id"),
            Just("clusterId"),
            Just("maxPacketLength"),
            Just("x"),
        ]
        .prop_map(str::to_owned);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (0u32..70_000).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9.:\\[\\] -]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn check_invariants(result: &Result<NodeList, DiscoveryError>) {
        if let Ok(list) = result {
            let unique: HashSet<String> = list.endpoints.iter().map(ToString::to_string).collect();
            assert_eq!(unique.len(), list.endpoints.len());
            assert!(list.endpoints.iter().all(|e| e.port() != 0 && !e.host().is_empty()));
            assert!(list.max_packet_length.is_none_or(|len| len > 0));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_invariants(&parse_node_list(&body));
        }

        #[test]
        fn json_ish_text_never_panics(body in "[\\[\\]{}:,\"0-9a-zA-Z .\\-]{0,200}") {
            check_invariants(&parse_node_list(body.as_bytes()));
        }

        #[test]
        fn manager_shaped_json_never_panics(
            value in json_value(),
            nodes in proptest::collection::vec(json_value(), 0..6),
        ) {
            check_invariants(&parse_node_list(value.to_string().as_bytes()));
            let wrapped = serde_json::json!({"success": true, "data": {"nodeList": nodes}});
            check_invariants(&parse_node_list(wrapped.to_string().as_bytes()));
        }
    }
}
