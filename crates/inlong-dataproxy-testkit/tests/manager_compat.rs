//! The local Manager as each InLong SDK asks it (`PROTOCOL.md` §5.1, §5.5), over real loopback
//! HTTP: the Java SDK's form body on the path it appends to the base address, the C++ SDK's form
//! body with `version=` on the full URL, the Go SDK's query string and empty body, each answered
//! with the exact §5.3 JSON. Then the cases no SDK sends, as the Manager decides them:
//! `protocolType` in both the query and the body, a form body that is not valid form data, a body
//! with another content type, and the checks (405, 403, 404, unknown group) on SDK-shaped requests.
//!
//! Requests go through reqwest, or as raw bytes on a `TcpStream` where the exact request matters;
//! every request has a 10 s deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use inlong_dataproxy_testkit::manager::GET_IP_LIST_PATH;
use inlong_dataproxy_testkit::{LocalCluster, ManagerAuth, ManagerConfig};

const TIMEOUT: Duration = Duration::from_secs(10);
const FORM: &str = "application/x-www-form-urlencoded";

/// The answer to a lookup that finds the two nodes [`cluster`] lists, byte for byte.
const TWO_NODES: &str = concat!(
    r#"{"success":true,"errMsg":null,"data":{"clusterId":1,"reportSourceType":null,"#,
    r#""isIntranet":null,"isSwitch":null,"load":20,"maxPacketLength":null,"nodeList":["#,
    r#"{"id":1,"ip":"10.0.0.1","port":46801,"protocolType":"TCP","nodeLoad":null},"#,
    r#"{"id":2,"ip":"10.0.0.2","port":46802,"protocolType":"TCP","nodeLoad":null}]}}"#
);

/// The answer to a lookup whose `protocolType` matches no node: success, `nodeList` null.
const NO_NODES: &str = concat!(
    r#"{"success":true,"errMsg":null,"data":{"clusterId":null,"reportSourceType":null,"#,
    r#""isIntranet":null,"isSwitch":null,"load":20,"maxPacketLength":null,"nodeList":null}}"#
);

/// A Manager (and no DataProxy node) listing two fixed addresses, so answers are byte-exact.
fn cluster(config: ManagerConfig) -> LocalCluster {
    let cluster =
        LocalCluster::builder().nodes(0).manager_config(config).start().expect("start on loopback");
    let nodes: [SocketAddr; 2] =
        ["10.0.0.1:46801".parse().unwrap(), "10.0.0.2:46802".parse().unwrap()];
    cluster.manager().set_nodes(&nodes);
    cluster
}

fn auth_config() -> ManagerConfig {
    ManagerConfig {
        auth: Some(ManagerAuth {
            secret_id: "admin".to_owned(),
            secret_key: "s3cret".to_owned(),
            tenant: None,
        }),
        ..ManagerConfig::default()
    }
}

/// `Basic base64("admin:s3cret")`.
const BASIC: &str = "Basic YWRtaW46czNjcmV0";

/// A response, whoever sent the request.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    allow: Option<String>,
    body: String,
}

/// Sends a POST with reqwest: `content_type` (none when `None`), `headers`, `body`.
fn post(url: &str, content_type: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    request(reqwest::Method::POST, url, content_type, headers, body)
}

fn request(
    method: reqwest::Method,
    url: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let client = reqwest::blocking::Client::builder().timeout(TIMEOUT).build().expect("client");
    let mut builder = client.request(method, url).body(body.to_vec());
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = builder.send().expect("a response");
    let header = |name: &str| {
        response.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (content_type, allow) = (header("content-type"), header("allow"));
    let status = response.status().as_u16();
    Answer { status, content_type, allow, body: response.text().expect("a body") }
}

/// Sends `request` as it is on a new connection and reads one response (by `Content-Length`).
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    stream.write_all(request).expect("send the request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
            let mut lines = head.split("\r\n");
            let status = lines.next().expect("status line")[9..12].parse().expect("status");
            let headers: Vec<(String, String)> = lines
                .map(|line| {
                    let (name, value) = line.split_once(": ").expect("a header");
                    (name.to_ascii_lowercase(), value.to_owned())
                })
                .collect();
            let header = |name: &str| {
                headers.iter().find(|(n, _)| n == name).map(|(_, value)| value.clone())
            };
            let length: usize = header("content-length").expect("length").parse().expect("number");
            if buf.len() >= end + 4 + length {
                let body =
                    String::from_utf8(buf[end + 4..end + 4 + length].to_vec()).expect("UTF-8");
                let (content_type, allow) = (header("content-type"), header("allow"));
                return Answer { status, content_type, allow, body };
            }
        }
        let read = stream.read(&mut chunk).expect("read the response");
        assert!(read > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Checks a JSON answer: HTTP 200, `application/json`, and exactly `expected`.
fn assert_json(answer: &Answer, expected: &str, case: &str) {
    assert_eq!(answer.status, 200, "{case}: {answer:?}");
    assert_eq!(answer.content_type.as_deref(), Some("application/json"), "{case}");
    assert_eq!(answer.body, expected, "{case}");
}

/// The path the Java SDK appends to its Manager address, for `group`.
fn java_path(group: &str) -> String {
    format!("{GET_IP_LIST_PATH}/{group}")
}

#[test]
fn the_java_sdk_request_on_the_base_address_gets_the_node_list() {
    let cluster = cluster(ManagerConfig::default());
    let base = cluster.manager_base_url();
    let addr = cluster.manager().local_addr();
    assert_eq!(base, format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(format!("{base}{GET_IP_LIST_PATH}"), cluster.manager_url());

    // The request's shape as Apache HttpClient sends the SDK's form (`UrlEncodedFormEntity`).
    let body = "ip=10.1.2.3&protocolType=TCP";
    let request = format!(
        "POST {} HTTP/1.1\r\nContent-Length: {}\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\nHost: {addr}\r\n\
         Connection: Keep-Alive\r\nUser-Agent: Apache-HttpClient/4.5.13 (Java/1.8.0)\r\n\
         Accept-Encoding: gzip,deflate\r\n\r\n{body}",
        java_path("test_group"),
        body.len()
    );
    assert_json(&raw_exchange(addr, request.as_bytes()), TWO_NODES, "raw Java request");
    // A base address given with a trailing slash doubles the slash; Tomcat merges `//` into `/`.
    let doubled = request.replacen(" /inlong/", " //inlong/", 1).replacen("List/", "List//", 1);
    assert!(doubled.starts_with("POST //inlong/") && doubled.contains("getIpList//test_group"));
    assert_json(&raw_exchange(addr, doubled.as_bytes()), TWO_NODES, "doubled slashes");

    // The same through an HTTP client given only the base address, with and without a trailing
    // slash on it (the servlet container merges `//`).
    let form = Some("application/x-www-form-urlencoded; charset=UTF-8");
    for url in [format!("{base}{}", java_path("test_group")), format!("{base}/{}", java_path("g"))]
    {
        assert_json(&post(&url, form, &[], body.as_bytes()), TWO_NODES, &url);
    }
    let stats = cluster.manager().stats();
    assert_eq!((stats.requests, stats.ok), (4, 4));
}

#[test]
fn the_cpp_sdk_request_with_a_version_gets_the_node_list() {
    let cluster = cluster(auth_config());
    let addr = cluster.manager().local_addr();
    // The C++ SDK is configured with the full URL and appends `/{groupId}`; libcurl's headers.
    let url = format!("{}/test_group", cluster.manager_url());
    let target = url.strip_prefix(&format!("http://{addr}")).expect("a URL on the Manager");
    let body = "ip=10.1.2.3&version=inlong-sdk-cpp-v3.2&protocolType=TCP";
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nAuthorization: {BASIC}\r\n\
         Content-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_json(&raw_exchange(addr, request.as_bytes()), TWO_NODES, "raw C++ request");
    let json = post(&url, Some(FORM), &[("authorization", BASIC)], body.as_bytes());
    assert_json(&json, TWO_NODES, "C++ request through reqwest");
    // `ip` and `version` are read and ignored, whatever they hold.
    let odd = "ip=&version=%E2%9C%93&protocolType=tcp";
    let json = post(&url, Some(FORM), &[("authorization", BASIC)], odd.as_bytes());
    assert_json(&json, TWO_NODES, odd);
}

#[test]
fn the_go_sdk_request_still_works() {
    let cluster = cluster(ManagerConfig::default());
    let url = format!("{}/test_group?protocolType=tcp", cluster.manager_url());
    assert_json(&post(&url, None, &[], b""), TWO_NODES, "Go request");
    let url = format!("{}/test_group?protocolType=UDP", cluster.manager_url());
    assert_json(&post(&url, None, &[], b""), NO_NODES, "Go request for UDP");
}

#[test]
fn protocol_type_in_a_form_body_matches_case_insensitively() {
    let cluster = cluster(ManagerConfig::default());
    let url = format!("{}{}", cluster.manager_base_url(), java_path("g"));
    for (body, expected) in [
        ("protocolType=TCP", TWO_NODES),
        ("protocolType=tcp", TWO_NODES),
        ("ip=1&protocolType=tCp", TWO_NODES),
        ("protocolType=t%63p", TWO_NODES),
        // Empty or absent: no filter.
        ("protocolType=", TWO_NODES),
        ("ip=10.1.2.3", TWO_NODES),
        ("", TWO_NODES),
        // Parameter names are case-sensitive: this is not `protocolType`.
        ("protocoltype=UDP", TWO_NODES),
        ("protocolType=UDP", NO_NODES),
        ("protocolType=TCP+", NO_NODES),
        ("protocolType=tcp&protocolType=tcp", NO_NODES),
    ] {
        assert_json(&post(&url, Some(FORM), &[], body.as_bytes()), expected, body);
    }
}

/// Both the query string and the body name `protocolType`: the query's value comes first and
/// Spring joins the values with commas, so the Manager looks for `TCP,TCP` and finds no node.
#[test]
fn protocol_type_in_both_query_and_body_is_joined_and_matches_no_node() {
    let cluster = cluster(ManagerConfig::default());
    let target = java_path("g");
    let addr = cluster.manager().local_addr();
    for (query, body, expected) in [
        ("TCP", "protocolType=TCP", NO_NODES),
        ("UDP", "protocolType=TCP", NO_NODES),
        ("TCP", "protocolType=UDP", NO_NODES),
        // An empty value still counts as a value: `TCP,`.
        ("TCP", "protocolType=", NO_NODES),
        // One side without the parameter: the other side decides.
        ("TCP", "ip=1", TWO_NODES),
        ("", "protocolType=TCP", TWO_NODES),
    ] {
        let query = if query.is_empty() { String::new() } else { format!("?protocolType={query}") };
        let url = format!("http://{addr}{target}{query}");
        let case = format!("{query} + {body}");
        assert_json(&post(&url, Some(FORM), &[], body.as_bytes()), expected, &case);
    }
}

/// A form body that is not valid form encoding never fails the request: like Tomcat, the
/// parameter parser skips each pair with a broken escape or bytes that are not UTF-8 and keeps the
/// others.
#[test]
fn a_form_body_that_is_not_valid_form_data_is_read_pair_by_pair() {
    let cluster = cluster(ManagerConfig::default());
    let addr = cluster.manager().local_addr();
    let cases: [(&[u8], &str); 9] = [
        (b"protocolType=%zz", TWO_NODES),
        (b"protocolType=UDP%", TWO_NODES),
        (b"protocolType=%FF", TWO_NODES),
        (b"protocolType=\xffUDP", TWO_NODES),
        (b"protocolType=tcp&protocolType=%4", TWO_NODES),
        (b"{\"protocolType\":\"UDP\"}", TWO_NODES),
        (b"&&=UDP&", TWO_NODES),
        // The broken pair is skipped, the good one still filters.
        (b"ip=%&protocolType=UDP", NO_NODES),
        (b"ip=\xc3&version=%zz&protocolType=UDP", NO_NODES),
    ];
    for (body, expected) in cases {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n",
            java_path("g"),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let case = String::from_utf8_lossy(body);
        assert_json(&raw_exchange(addr, &request), expected, &case);
    }
    let stats = cluster.manager().stats();
    assert_eq!((stats.ok, stats.bad_request), (9, 0));
}

/// Only a form body is read for parameters, as the servlet container only parses
/// `application/x-www-form-urlencoded` bodies: the same bytes under another content type are
/// ignored, so `protocolType=UDP` there filters nothing.
#[test]
fn a_body_of_another_content_type_is_not_read() {
    let cluster = cluster(ManagerConfig::default());
    let url = format!("{}{}", cluster.manager_base_url(), java_path("g"));
    let body = b"protocolType=UDP";
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencodedx"),
        Some("application/octet-stream"),
    ] {
        let case = format!("{content_type:?}");
        assert_json(&post(&url, content_type, &[], body), TWO_NODES, &case);
    }
    let json = br#"{"protocolType":"UDP"}"#;
    assert_json(&post(&url, Some("application/json"), &[], json), TWO_NODES, "JSON body");
    // The form type is recognised in any case and with parameters.
    for content_type in
        ["Application/X-WWW-Form-URLEncoded", "application/x-www-form-urlencoded ;charset=utf-8"]
    {
        assert_json(&post(&url, Some(content_type), &[], body), NO_NODES, content_type);
    }
}

#[test]
fn sdk_requests_keep_every_check() {
    let cluster = cluster(ManagerConfig {
        known_groups: Some(vec!["test_group".to_owned()]),
        ..auth_config()
    });
    let base = cluster.manager_base_url();
    let url = format!("{base}{}", java_path("test_group"));
    let body = b"ip=10.1.2.3&protocolType=TCP";
    let auth = [("authorization", BASIC)];

    // Only POST is mapped.
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let answer = request(method.clone(), &url, Some(FORM), &auth, body);
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.allow.as_deref(), Some("POST"), "{method}");
    }

    // The open API needs the credentials, form body or not: a 403 error page, not JSON.
    for headers in [&[][..], &[("authorization", "Basic YWRtaW46d3Jvbmc=")][..]] {
        let answer = post(&url, Some(FORM), headers, body);
        assert_eq!(answer.status, 403, "{headers:?}");
        assert!(answer.content_type.as_deref().is_some_and(|t| t.starts_with("text/html")));
        assert!(answer.body.contains("403"), "{answer:?}");
    }
    assert_json(&post(&url, Some(FORM), &auth, body), TWO_NODES, "authorized");

    // An unknown group is a business failure: HTTP 200 and success:false.
    let other = format!("{base}{}", java_path("nope"));
    let expected = r#"{"success":false,"errMsg":"group not found by groupId=nope","data":null}"#;
    assert_json(&post(&other, Some(FORM), &auth, body), expected, "unknown group");

    // The path without a group, or under another name, does not exist.
    for path in
        [GET_IP_LIST_PATH.to_owned(), "/inlong/manager/openapi/dataproxy/getIpList2/g".to_owned()]
    {
        let answer = post(&format!("{base}{path}"), Some(FORM), &auth, body);
        assert_eq!(answer.status, 404, "{path}");
    }
    let stats = cluster.manager().stats();
    assert_eq!(
        (stats.method_not_allowed, stats.auth_rejected, stats.ok, stats.failure, stats.not_found),
        (3, 2, 1, 1, 2)
    );
}

#[test]
fn max_packet_length_and_cluster_id_reach_form_requests() {
    let cluster = cluster(ManagerConfig {
        cluster_id: 7,
        max_packet_length: Some(1 << 20),
        ..ManagerConfig::default()
    });
    let url = format!("{}{}", cluster.manager_base_url(), java_path("g"));
    let answer = post(&url, Some(FORM), &[], b"ip=1&protocolType=TCP");
    let expected = TWO_NODES
        .replace(r#""clusterId":1"#, r#""clusterId":7"#)
        .replace(r#""maxPacketLength":null"#, r#""maxPacketLength":1048576"#);
    assert_json(&answer, &expected, "configured cluster");
}
