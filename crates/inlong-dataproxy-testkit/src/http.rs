//! The HTTP/1.1 plumbing of the local Manager, on hyper.
//!
//! hyper owns the bytes of an exchange: request parsing, keep-alive, pipelining, `HEAD`,
//! `Expect: 100-continue`, HTTP/1.0, chunked bodies and the automatic 400/431 answers to heads it
//! cannot parse. This module configures it with our limits ([`connection_builder`]) and adds what
//! the Manager's servlet container checks and hyper does not: exactly one `Host` on HTTP/1.1, no
//! `Transfer-Encoding` request bodies (411, like before), a body size limit (413) and a body
//! deadline (408), each answered with `Connection: close` ([`read_body`]). It also holds the
//! servlet's strict percent-decoding (the decoding itself is the `percent-encoding` crate's) and
//! form parsing, which the Manager's routing and parameters use.
//!
//! It knows nothing about routes, JSON or authentication, and it must never panic on network
//! input, buffer more than [`MAX_HEAD_BYTES`] of head or [`MAX_BODY_BYTES`] of body, or leave a
//! slow client unbounded in time.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode, Version};

/// Most bytes hyper buffers for a request head (it answers 431 past that).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields a request may carry (hyper answers 431 past that).
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a head may take to arrive, counted from when hyper starts waiting for it, so it also
/// bounds how long a kept-alive connection may sit idle between requests.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request body may take to arrive once its head has been read.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// What a refused request's unread body may still cost before the answer goes out: reading it
/// keeps our close from turning into a reset that destroys the answer before the client reads it.
const DRAIN_LIMIT: usize = 256 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A response as the Manager builds it: the whole body in memory.
pub(crate) type Reply = Response<Full<Bytes>>;

/// An HTTP/1.1 connection builder with the limits above; serve a connection with
/// `connection_builder().serve_connection(TokioIo::new(stream), service)`.
pub(crate) fn connection_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// Why a request hyper accepted is refused before it reaches the Manager's routing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// An HTTP/1.1 request without exactly one `Host` field.
    #[error("HTTP/1.1 needs exactly one Host header")]
    Host,
    /// A `Transfer-Encoding` body; the clients we serve send `Content-Length`.
    #[error("Transfer-Encoding request bodies are not supported")]
    TransferEncoding,
    /// A body above [`MAX_BODY_BYTES`].
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// The body did not arrive within its deadline.
    #[error("request body not received in time")]
    Timeout,
    /// The connection failed in the middle of the body.
    #[error("request body broken: {0}")]
    Body(String),
}

impl Refusal {
    /// The status to answer with (the connection is closed after it).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Host | Refusal::Body(_) => StatusCode::BAD_REQUEST,
            Refusal::TransferEncoding => StatusCode::LENGTH_REQUIRED,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The plain-text answer, with `Connection: close`.
    pub(crate) fn reply(&self) -> Reply {
        let status = self.status();
        let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
        let mut reply = reply(status, "text/plain;charset=utf-8", text);
        reply.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        reply
    }
}

/// Checks what hyper lets through and reads the whole body within [`BODY_TIMEOUT`].
pub(crate) async fn read_body(parts: &Parts, body: Incoming) -> Result<Bytes, Refusal> {
    read_body_within(parts, body, BODY_TIMEOUT).await
}

async fn read_body_within<B>(parts: &Parts, body: B, timeout: Duration) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let refusal =
        if parts.version == Version::HTTP_11 && parts.headers.get_all(HOST).iter().count() != 1 {
            Some(Refusal::Host)
        } else if parts.headers.contains_key(TRANSFER_ENCODING) {
            Some(Refusal::TransferEncoding)
        } else if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
            Some(Refusal::BodyTooLarge)
        } else {
            None
        };
    if let Some(refusal) = refusal {
        // Whatever comes of the drain, the refusal is the answer.
        let _ = tokio::time::timeout(DRAIN_TIME, Limited::new(body, DRAIN_LIMIT).collect()).await;
        return Err(refusal);
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(Refusal::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::BodyTooLarge)
        }
        Ok(Err(error)) => Err(Refusal::Body(error.to_string())),
    }
}

/// Whether the client asked to close after this request: `Connection: close`, or HTTP/1.0
/// without `Connection: keep-alive`.
pub(crate) fn client_closes(parts: &Parts) -> bool {
    let has = |token: &str| {
        parts.headers.get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    match parts.version {
        Version::HTTP_11 => has("close"),
        _ => !has("keep-alive"),
    }
}

/// Says in the answer whether the connection stays open, as the servlet container does. hyper
/// closes after an answer that says `close`.
pub(crate) fn set_connection(reply: &mut Reply, parts: &Parts) {
    if reply.headers().contains_key(CONNECTION) {
        return;
    }
    // An HTTP/1.0 client gets no `keep-alive`: hyper would then keep its connection open.
    let value = if client_closes(parts) || parts.version != Version::HTTP_11 {
        "close"
    } else {
        "keep-alive"
    };
    reply.headers_mut().insert(CONNECTION, HeaderValue::from_static(value));
}

/// A response with a body of the given type.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// The first value of header `name`, decoded as ISO-8859-1 like a servlet container does, so no
/// byte is lost.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|value| value.as_bytes().iter().map(|&b| char::from(b)).collect())
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, for form data) with the
/// `percent-encoding` crate. Returns `None` on a truncated or non-hex escape, which the crate would
/// keep as it is but the servlet container refuses.
pub(crate) fn percent_decode(input: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    if !escapes_are_well_formed(input) {
        return None;
    }
    let decoded = if plus_is_space && input.contains(&b'+') {
        let spaced: Vec<u8> =
            input.iter().map(|&byte| if byte == b'+' { b' ' } else { byte }).collect();
        percent_encoding::percent_decode(&spaced).collect()
    } else {
        percent_encoding::percent_decode(input).collect()
    };
    Some(decoded)
}

/// Whether every `%` starts an escape of two hex digits.
fn escapes_are_well_formed(input: &[u8]) -> bool {
    input.iter().enumerate().filter(|&(_, &byte)| byte == b'%').all(|(at, _)| {
        input.get(at + 1..at + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// The `name=value` pairs of a query string or `application/x-www-form-urlencoded` body, decoded.
///
/// Like Tomcat's parameter parser, a pair whose escapes are broken or whose bytes (raw or escaped)
/// are not UTF-8 is skipped rather than failing the request, and so is a pair without a name; the
/// other pairs still count. A name without `=` has an empty value. Any bytes are accepted: a body that is not form data at
/// all yields a name or two that nobody asks for.
pub(crate) fn form_pairs(input: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    input.split(|&byte| byte == b'&').filter(|pair| !pair.is_empty()).filter_map(|pair| {
        let (name, value) = match pair.iter().position(|&byte| byte == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if name.is_empty() {
            return None;
        }
        let name = String::from_utf8(percent_decode(name, true)?).ok()?;
        let value = String::from_utf8(percent_decode(value, true)?).ok()?;
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_form_pairs() {
        let decode = |input: &str, plus| percent_decode(input.as_bytes(), plus);
        assert_eq!(decode("a%20b+c", false).as_deref(), Some(&b"a b+c"[..]));
        assert_eq!(decode("a%20b+c", true).as_deref(), Some(&b"a b c"[..]));
        assert_eq!(decode("%2B+", true).as_deref(), Some(&b"+ "[..]));
        assert_eq!(decode("%e9%E9", false).as_deref(), Some(&[0xe9, 0xe9][..]));
        for broken in ["%", "%4", "%zz", "%\u{e9}", "%%41", "%41%"] {
            assert_eq!(decode(broken, false), None, "{broken}");
        }
        let body = b"a=1&&b&c=x%3Dy+z&bad=%zz&d=%C3%A9&e=%FF&f=\xff&=g&h=i=j";
        let pairs: Vec<_> = form_pairs(body).collect();
        let expected = [("a", "1"), ("b", ""), ("c", "x=y z"), ("d", "\u{e9}"), ("h", "i=j")];
        let expected: Vec<_> =
            expected.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        assert_eq!(pairs, expected);
    }

    fn parts(version: Version, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut builder = hyper::Request::builder().version(version).uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn connection_follows_version_and_connection_header() {
        let closes = |version, headers| client_closes(&parts(version, headers));
        assert!(!closes(Version::HTTP_11, &[]));
        assert!(!closes(Version::HTTP_11, &[("connection", "keep-alive")]));
        assert!(closes(Version::HTTP_11, &[("connection", "Close")]));
        assert!(closes(Version::HTTP_11, &[("connection", "te, close")]));
        assert!(closes(Version::HTTP_10, &[]));
        assert!(!closes(Version::HTTP_10, &[("connection", "keep-alive")]));
        let mut answer = reply(StatusCode::OK, "text/plain", "x");
        set_connection(&mut answer, &parts(Version::HTTP_10, &[("connection", "keep-alive")]));
        assert_eq!(answer.headers()[CONNECTION], "close");
    }

    #[test]
    fn refusals_close_with_their_status() {
        for (refusal, status) in [
            (Refusal::Host, 400),
            (Refusal::TransferEncoding, 411),
            (Refusal::BodyTooLarge, 413),
            (Refusal::Timeout, 408),
        ] {
            let reply = refusal.reply();
            assert_eq!(reply.status().as_u16(), status);
            assert_eq!(reply.headers()[CONNECTION], "close");
        }
    }

    /// A body of `length` bytes that never arrive.
    struct Stalled {
        length: u64,
    }

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.length)
        }
    }

    #[tokio::test]
    async fn bodies_are_bounded_in_size_and_time() {
        let host = [("host", "m")];
        async fn read<B>(head: Parts, body: B, timeout: Duration) -> Result<Bytes, Refusal>
        where
            B: Body<Data = Bytes>,
            B::Error: std::error::Error + Send + Sync + 'static,
        {
            let read = read_body_within(&head, body, timeout);
            tokio::time::timeout(Duration::from_secs(10), read).await.expect("in time")
        }
        let stalled = Stalled { length: 10 };
        let refused = read(parts(Version::HTTP_11, &host), stalled, Duration::from_millis(50));
        assert!(matches!(refused.await, Err(Refusal::Timeout)));
        let full = Full::new(Bytes::from_static(b"abc"));
        let body = read(parts(Version::HTTP_11, &host), full, Duration::from_secs(1)).await;
        assert_eq!(body.expect("read").as_ref(), b"abc");
        let big = Full::new(Bytes::from(vec![0u8; MAX_BODY_BYTES + 1]));
        let refused = read(parts(Version::HTTP_11, &host), big, Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(Refusal::BodyTooLarge)));
        let none = Full::new(Bytes::new());
        let refused = read(parts(Version::HTTP_11, &[]), none, Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(Refusal::Host)));
        // HTTP/1.0 needs no Host.
        let none = Full::new(Bytes::new());
        assert!(read(parts(Version::HTTP_10, &[]), none, Duration::from_secs(1)).await.is_ok());
        let chunked = [("host", "m"), ("transfer-encoding", "chunked")];
        let none = Full::new(Bytes::new());
        let refused = read(parts(Version::HTTP_11, &chunked), none, Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(Refusal::TransferEncoding)));
    }

    #[test]
    fn header_text_keeps_every_byte() {
        let mut headers = HeaderMap::new();
        headers.insert("x-l", HeaderValue::from_bytes(b"a\xe9").expect("obs-text"));
        assert_eq!(header_text(&headers, "x-l").as_deref(), Some("a\u{e9}"));
        assert_eq!(header_text(&headers, "missing"), None);
    }
}
