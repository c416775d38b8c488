//! The Manager client against the local Manager (`inlong_dataproxy_testkit::ManagerServer`) and a
//! hand-written HTTP peer: what a lookup sends, how every Manager failure is reported, the retry
//! and deadline bounds, and the start-up fallback to the on-disk node list.
//!
//! Every test bounds its own run time; nothing sleeps to wait for something to happen.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use inlong_dataproxy::discovery::{
    initial_lookup, AuthProvider, DiscoveryError, Endpoint, ManagerClient, ManagerClientConfig,
    NodeList, NodeListCache, Source,
};
use inlong_dataproxy_testkit::{ManagerAuth, ManagerConfig, ManagerFault, ManagerServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const SECRET_KEY: &str = "Sup3r-Secret-Key-xyz";
const GROUP: &str = "test_group";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test ran past its time limit")
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn node(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port))
}

fn start(config: ManagerConfig) -> ManagerServer {
    ManagerServer::start(&Handle::current(), loopback(), config).expect("bind the local manager")
}

fn with_auth(tenant: Option<&str>) -> ManagerConfig {
    ManagerConfig {
        auth: Some(ManagerAuth {
            secret_id: "admin".to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            tenant: tenant.map(str::to_owned),
        }),
        ..ManagerConfig::default()
    }
}

fn config(url: &str) -> ManagerClientConfig {
    ManagerClientConfig::new(url, GROUP)
}

fn client(config: ManagerClientConfig) -> ManagerClient {
    ManagerClient::new(config).expect("a valid client config")
}

fn credentials(mut config: ManagerClientConfig, key: &str) -> ManagerClientConfig {
    config.secret_id = Some("admin".to_owned());
    config.secret_key = Some(key.to_owned());
    config
}

fn basic(id: &str, key: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}")))
}

fn endpoints(addrs: &[SocketAddr]) -> Vec<Endpoint> {
    addrs.iter().copied().map(Endpoint::from).collect()
}

/// Asserts that no form of an error shows `secret`.
fn assert_hidden(error: &DiscoveryError, secret: &str) {
    let text = format!("{error} {error:?}");
    assert!(!text.contains(secret), "{text}");
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!(
            "inlong-dataproxy-discovery-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn cache(&self, client: &ManagerClient) -> NodeListCache {
        NodeListCache::at_path(self.0.join("nodes.json"), client.manager_url(), client.group_id())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-shot HTTP peer: accepts one connection, captures the request head and body, and answers
/// with `response` verbatim.
struct CapturePeer {
    url: String,
    request: oneshot::Receiver<String>,
}

impl CapturePeer {
    async fn start(response: impl Into<String>) -> CapturePeer {
        let response = response.into();
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let url = format!(
            "http://{}/inlong/manager/openapi/dataproxy/getIpList",
            listener.local_addr().expect("addr")
        );
        let (captured, request) = oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut bytes = Vec::new();
            let mut buf = [0u8; 4096];
            // A TLS record (0x16) never becomes an HTTP request: answer it at once.
            while !contains_complete_request(&bytes) && bytes.first() != Some(&0x16) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
            let _ = captured.send(String::from_utf8_lossy(&bytes).into_owned());
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
        CapturePeer { url, request }
    }

    async fn request(self) -> String {
        self.request.await.expect("the peer captured a request")
    }
}

/// Whether `bytes` hold a whole request head and the body its `content-length` announces.
fn contains_complete_request(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else { return false };
    let body_len = text[..head_end]
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= head_end + 4 + body_len
}

fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request
        .split("\r\n\r\n")
        .next()?
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

fn ok_answer() -> String {
    let body = r#"{"success":true,"errMsg":null,"data":{"nodeList":[{"id":1,"ip":"10.0.0.9","port":46801}]}}"#;
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_returns_the_managers_nodes_in_order() {
    bounded(async {
        let manager = start(ManagerConfig {
            max_packet_length: Some(1 << 20),
            cluster_id: 42,
            ..ManagerConfig::default()
        });
        let nodes = [node(3), node(1), node(2)];
        manager.set_nodes(&nodes);
        let list = client(config(&manager.url())).lookup().await.expect("lookup");
        assert_eq!(
            list,
            NodeList {
                endpoints: endpoints(&nodes),
                max_packet_length: Some(1 << 20),
                cluster_id: Some(42),
            }
        );
        assert_eq!(manager.stats().ok, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_posts_protocol_type_tcp_with_an_empty_body() {
    bounded(async {
        let peer = CapturePeer::start(ok_answer()).await;
        let mut with_tenant = config(&format!("{}/", peer.url));
        with_tenant.tenant = Some("team".to_owned());
        let list = client(with_tenant).lookup().await.expect("lookup");
        assert_eq!(list.endpoints, [Endpoint::new("10.0.0.9", 46801).expect("valid")]);
        let request = peer.request().await;
        let request_line = request.lines().next().unwrap_or_default();
        assert_eq!(
            request_line,
            format!("POST /inlong/manager/openapi/dataproxy/getIpList/{GROUP}?protocolType=TCP HTTP/1.1")
        );
        assert!(request.ends_with("\r\n\r\n"), "no body: {request:?}");
        assert!(header(&request, "content-length").is_none_or(|len| len == "0"), "{request}");
        assert_eq!(header(&request, "tenant"), Some("team"));
        assert_eq!(header(&request, "authorization"), None);
        assert!(header(&request, "user-agent").is_some_and(|agent| agent.starts_with("inlong-dataproxy")));

        // The local Manager filters nodes by protocolType exactly as the real one does.
        let manager = start(ManagerConfig::default());
        manager.set_nodes(&[node(1)]);
        let list = client(config(&manager.url())).lookup().await.expect("lookup");
        assert_eq!(list.endpoints, endpoints(&[node(1)]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_works_and_refusals_are_auth_errors_without_the_key() {
    bounded(async {
        let manager = start(with_auth(None));
        manager.set_nodes(&[node(1)]);
        let url = manager.url();

        let list = client(credentials(config(&url), SECRET_KEY)).lookup().await.expect("lookup");
        assert_eq!(list.endpoints, endpoints(&[node(1)]));

        let error = client(config(&url)).lookup().await.expect_err("no credentials");
        assert_eq!(error, DiscoveryError::Auth { status: 403 });
        let text = error.to_string();
        assert!(
            text.contains("authentication/authorization") && text.contains("secret_key"),
            "{text}"
        );

        let wrong_key = "Wr0ng-Key-abc";
        let wrong = credentials(config(&url), wrong_key);
        assert!(!format!("{wrong:?}").contains(wrong_key));
        let error = client(wrong).lookup().await.expect_err("wrong key");
        assert_eq!(error, DiscoveryError::Auth { status: 403 });
        assert_hidden(&error, wrong_key);
        assert_hidden(&error, &basic("admin", wrong_key));
        // Auth refusals are final: no retry.
        assert_eq!(manager.stats().auth_rejected, 2);
    })
    .await;
}

#[derive(Debug)]
struct StaticHeader {
    name: &'static str,
    value: String,
}

impl AuthProvider for StaticHeader {
    fn header(&self, group_id: &str) -> Result<(String, String), String> {
        assert_eq!(group_id, GROUP);
        Ok((self.name.to_owned(), self.value.clone()))
    }
}

#[derive(Debug)]
struct FailingProvider;

impl AuthProvider for FailingProvider {
    fn header(&self, _group_id: &str) -> Result<(String, String), String> {
        Err("token service unavailable".to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_provider_header_wins_over_basic_auth() {
    bounded(async {
        let manager = start(with_auth(None));
        manager.set_nodes(&[node(1)]);
        let url = manager.url();

        let mut hooked = credentials(config(&url), "not-the-key");
        hooked.auth_provider = Some(Arc::new(StaticHeader {
            name: "authorization",
            value: basic("admin", SECRET_KEY),
        }));
        let list = client(hooked).lookup().await.expect("lookup with the hook's header");
        assert_eq!(list.endpoints, endpoints(&[node(1)]));

        let wrong_value = basic("admin", "hook-wrong-key");
        let mut wrong = config(&url);
        wrong.auth_provider =
            Some(Arc::new(StaticHeader { name: "authorization", value: wrong_value.clone() }));
        let error = client(wrong).lookup().await.expect_err("wrong hook header");
        assert_eq!(error, DiscoveryError::Auth { status: 403 });
        assert_hidden(&error, &wrong_value);

        let mut failing = config(&url);
        failing.auth_provider = Some(Arc::new(FailingProvider));
        let error = client(failing).lookup().await.expect_err("hook fails");
        assert_eq!(
            error,
            DiscoveryError::AuthHook { reason: "token service unavailable".to_owned() }
        );

        let mut bad_header = config(&url);
        bad_header.auth_provider =
            Some(Arc::new(StaticHeader { name: "authorization", value: "a\nb-secret".to_owned() }));
        let error = client(bad_header).lookup().await.expect_err("unsendable header");
        assert!(matches!(error, DiscoveryError::AuthHook { .. }), "{error:?}");
        assert_hidden(&error, "b-secret");

        let stats = manager.stats();
        assert_eq!((stats.ok, stats.auth_rejected, stats.requests), (1, 1, 2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_header_selects_the_tenant() {
    bounded(async {
        let manager = start(with_auth(Some("team")));
        manager.set_nodes(&[node(1)]);
        let mut in_team = credentials(config(&manager.url()), SECRET_KEY);
        in_team.tenant = Some("team".to_owned());
        assert!(client(in_team).lookup().await.is_ok());

        let public = credentials(config(&manager.url()), SECRET_KEY);
        let error = client(public).lookup().await.expect_err("the user has no role in public");
        assert_eq!(error, DiscoveryError::Auth { status: 403 });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_node_list_is_no_endpoints_even_with_a_cache() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        manager.set_nodes(&[node(1)]);
        let client = client(config(&manager.url()));
        let dir = TempDir::new();
        let cache = dir.cache(&client);
        let (list, source) = initial_lookup(&client, Some(&cache)).await.expect("lookup");
        assert_eq!((list.endpoints.len(), source), (1, Source::Manager));

        manager.set_fault(ManagerFault::NullNodeList);
        let error = client.lookup().await.expect_err("no nodes");
        assert_eq!(error, DiscoveryError::NoEndpoints);
        assert_eq!(error.to_string(), "service has no endpoints");
        // A reachable Manager's empty answer is authoritative: the cache is not used.
        let error = initial_lookup(&client, Some(&cache)).await.expect_err("no nodes");
        assert_eq!(error, DiscoveryError::NoEndpoints);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_false_is_rejected_with_the_managers_message() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        let message = "current group status=120 was not allowed to get data proxy nodes";
        manager.set_fault(ManagerFault::Failure(message.to_owned()));
        let error = client(config(&manager.url())).lookup().await.expect_err("rejected");
        assert_eq!(error, DiscoveryError::Rejected { err_msg: message.to_owned() });
        assert!(error.to_string().contains(message));

        let known_only = start(ManagerConfig {
            known_groups: Some(vec!["other".to_owned()]),
            ..ManagerConfig::default()
        });
        let error = client(config(&known_only.url())).lookup().await.expect_err("unknown group");
        assert_eq!(
            error,
            DiscoveryError::Rejected { err_msg: format!("group not found by groupId={GROUP}") }
        );
        assert_eq!(manager.stats().failure + known_only.stats().failure, 2, "not retried");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_5xx_is_retried_then_reported_and_4xx_is_not() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        manager.set_fault(ManagerFault::HttpStatus(500));
        let mut three = config(&manager.url());
        three.lookup_attempts = 3;
        let error = client(three).lookup().await.expect_err("server error");
        match &error {
            DiscoveryError::Http { status: 500, body_excerpt } => {
                assert!(body_excerpt.contains("500"), "{body_excerpt}");
            }
            other => panic!("expected HTTP 500, got {other:?}"),
        }
        assert!(error.is_transient());
        assert_eq!(manager.stats().faulted, 3);

        manager.set_fault(ManagerFault::HttpStatus(404));
        let error = client(config(&manager.url())).lookup().await.expect_err("not found");
        assert!(matches!(error, DiscoveryError::Http { status: 404, .. }), "{error:?}");
        assert_eq!(manager.stats().faulted, 4);

        // A wrong path gets the container's 404 page, quoted briefly.
        let wrong_path = manager.url().replace("getIpList", "getIpLists");
        let error = client(config(&wrong_path)).lookup().await.expect_err("wrong path");
        match error {
            DiscoveryError::Http { status: 404, body_excerpt } => {
                assert!(body_excerpt.chars().count() <= 200 && body_excerpt.contains("404"));
            }
            other => panic!("expected HTTP 404, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_bad_response_and_not_retried() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        manager.set_fault(ManagerFault::Garbage);
        let error = client(config(&manager.url())).lookup().await.expect_err("garbage");
        assert!(matches!(error, DiscoveryError::BadResponse { .. }), "{error:?}");
        assert_eq!(manager.stats().requests, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_manager_times_out_within_the_lookup_deadline() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        manager.set_nodes(&[node(1)]);
        manager.set_fault(ManagerFault::Delay(Duration::from_secs(60)));
        let mut quick = config(&manager.url());
        quick.request_timeout = Duration::from_millis(300);
        let client = client(quick);
        let deadline = client.lookup_deadline();
        assert_eq!(deadline, Duration::from_millis(800));

        let started = Instant::now();
        let error = client.lookup().await.expect_err("timed out");
        let elapsed = started.elapsed();
        assert!(matches!(error, DiscoveryError::Unreachable { .. }), "{error:?}");
        assert!(error.to_string().contains("request timeout of 300ms"), "{error}");
        assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        assert!(elapsed < deadline + Duration::from_secs(1), "{elapsed:?}");
        let stats = manager.wait_for_stats(|stats| stats.requests == 2).await;
        assert_eq!(stats.requests, 2, "one retry");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_manager_is_unreachable_fast_and_a_fresh_cache_takes_over() {
    bounded(async {
        let manager =
            start(ManagerConfig { max_packet_length: Some(4096), ..ManagerConfig::default() });
        let nodes = [node(1), node(2)];
        manager.set_nodes(&nodes);
        let client = client(config(&manager.url()));
        let dir = TempDir::new();
        let cache = dir.cache(&client);

        let (list, source) = initial_lookup(&client, Some(&cache)).await.expect("manager up");
        assert_eq!(source, Source::Manager);
        assert_eq!(list.endpoints, endpoints(&nodes));
        let stored = cache.load(SystemTime::now()).expect("read").expect("stored");
        assert_eq!(stored.node_list, list);

        manager.stop_listening();
        let started = Instant::now();
        let error = client.lookup().await.expect_err("manager down");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        match &error {
            DiscoveryError::Unreachable { url, reason } => {
                assert_eq!(url, client.request_url());
                assert!(reason.contains("connect"), "{reason}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }

        let (cached, source) = initial_lookup(&client, Some(&cache)).await.expect("from the cache");
        assert!(
            matches!(source, Source::Cache { age } if age < Duration::from_secs(60)),
            "{source:?}"
        );
        assert_eq!(cached, list);
        assert_eq!(cached.max_packet_length, Some(4096));

        // Without a cache the error is returned as it is.
        let error = initial_lookup(&client, None).await.expect_err("no cache");
        assert!(matches!(error, DiscoveryError::Unreachable { .. }), "{error:?}");

        // Back up: the Manager is used again.
        manager.start_listening().expect("listen again");
        let (_, source) = initial_lookup(&client, Some(&cache)).await.expect("manager up");
        assert_eq!(source, Source::Manager);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_does_not_hide_the_error() {
    bounded(async {
        let manager = start(ManagerConfig::default());
        let client = client(config(&manager.url()));
        manager.stop_listening();
        let dir = TempDir::new();
        let cache = dir.cache(&client).with_max_age(Duration::from_secs(60));
        let list = NodeList { endpoints: endpoints(&[node(1)]), ..NodeList::default() };
        let ten_minutes_ago = SystemTime::now() - Duration::from_secs(600);
        cache.store(&list, ten_minutes_ago).expect("store");

        let error = initial_lookup(&client, Some(&cache)).await.expect_err("stale cache");
        assert!(matches!(error, DiscoveryError::Unreachable { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_do_not_fall_back_to_the_cache() {
    bounded(async {
        let manager = start(with_auth(None));
        manager.set_nodes(&[node(1)]);
        let client = client(config(&manager.url()));
        let dir = TempDir::new();
        let cache = dir.cache(&client);
        let list = NodeList { endpoints: endpoints(&[node(9)]), ..NodeList::default() };
        cache.store(&list, SystemTime::now()).expect("store");

        let error = initial_lookup(&client, Some(&cache)).await.expect_err("auth failure");
        assert_eq!(error, DiscoveryError::Auth { status: 403 });

        // A cache made for another group is never used either.
        manager.stop_listening();
        let foreign = NodeListCache::at_path(cache.path(), client.manager_url(), "other_group");
        let error = initial_lookup(&client, Some(&foreign)).await.expect_err("foreign cache");
        assert!(matches!(error, DiscoveryError::Unreachable { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_within_the_connect_timeout() {
    bounded(async {
        let closed = {
            let listener = std::net::TcpListener::bind(loopback()).expect("bind");
            listener.local_addr().expect("addr")
        };
        let mut quick =
            config(&format!("http://{closed}/inlong/manager/openapi/dataproxy/getIpList"));
        quick.connect_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let error = client(quick).lookup().await.expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(matches!(error, DiscoveryError::Unreachable { .. }), "{error:?}");
        assert!(error.to_string().contains(&closed.to_string()), "{error}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_against_a_plain_http_manager_fails_clearly() {
    bounded(async {
        // The local Manager waits for an HTTP head that a TLS ClientHello never completes, so the
        // handshake runs into the connect timeout.
        let manager = start(ManagerConfig::default());
        manager.set_nodes(&[node(1)]);
        let mut silent = config(&manager.url().replacen("http://", "https://", 1));
        silent.connect_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let error = client(silent).lookup().await.expect_err("not TLS");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_tls_hint(&error);

        // A plain HTTP server that answers the ClientHello fails the handshake at once.
        let peer = CapturePeer::start(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        let mut talking = config(&peer.url.replacen("http://", "https://", 1));
        talking.lookup_attempts = 1;
        let started = Instant::now();
        let error = client(talking).lookup().await.expect_err("not TLS");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_tls_hint(&error);
    })
    .await;
}

fn assert_tls_hint(error: &DiscoveryError) {
    match error {
        DiscoveryError::Unreachable { url, reason } => {
            assert!(url.starts_with("https://"), "{url}");
            assert!(reason.contains("TLS handshake"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_reported_not_followed() {
    bounded(async {
        let peer = CapturePeer::start(
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        let error = client(credentials(config(&peer.url), SECRET_KEY)).lookup().await.expect_err("302");
        assert!(matches!(error, DiscoveryError::Http { status: 302, .. }), "{error:?}");
        let request = peer.request().await;
        assert_eq!(header(&request, "authorization"), Some(basic("admin", SECRET_KEY).as_str()));
    })
    .await;
}

/// The control thread runs a current-thread runtime; start-up may use another runtime. One
/// client must work on both, one after the other.
#[test]
fn one_client_works_on_a_current_thread_runtime_and_across_runtimes() {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let manager =
        ManagerServer::start(server_runtime.handle(), loopback(), ManagerConfig::default())
            .expect("bind the local manager");
    manager.set_nodes(&[node(1)]);
    let client = client(config(&manager.url()));
    for round in 1..=3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let list = runtime
            .block_on(bounded(client.lookup()))
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(list.endpoints, endpoints(&[node(1)]));
        drop(runtime);
    }
    assert_eq!(manager.stats().ok, 3);
}
