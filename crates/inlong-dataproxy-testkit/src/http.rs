//! A small, strict HTTP/1.1 server side for the local Manager (and later the `/metrics` exporter).
//!
//! This module owns the bytes of an HTTP/1.x exchange, and nothing else. [`parse_request_head`] is
//! a pure function over a byte buffer: it never touches a socket, so it can be fuzzed and
//! property-tested directly. [`serve_connection`] is the thin async shell. It reads requests (head
//! plus a `Content-Length` body) with an idle timeout and a per-request deadline, hands each one to
//! a [`Service`], writes the [`Response`], and keeps the connection alive as HTTP/1.1 says.
//!
//! Callers are the servers in `src/server/`. This module knows nothing about routes, JSON or
//! authentication. It must never panic on network input, never buffer more than
//! [`MAX_HEAD_BYTES`] of head or [`MAX_BODY_BYTES`] of body, and never leave a slow client
//! unbounded in time. Chunked request bodies are refused with 411 Length Required. The clients we
//! serve (the Go, Java and C++ SDKs, reqwest, curl) send either no body or a `Content-Length`.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Most bytes a request head may take, request line and terminating empty line included.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields a request may carry.
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest request body accepted (`Content-Length`).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a request could not be read. [`HttpError::status`] says how to answer it, if at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// No `\r\n\r\n` within [`MAX_HEAD_BYTES`].
    #[error("request head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The request line or a header field breaks the HTTP/1.1 grammar.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A well-formed `HTTP/x.y` version other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// `Content-Length` is not a list of equal decimal numbers.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// `Content-Length` is above [`MAX_BODY_BYTES`].
    #[error("request body of {0} bytes is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge(u64),
    /// The request has a `Transfer-Encoding`; only `Content-Length` bodies are supported.
    #[error("Transfer-Encoding request bodies are not supported")]
    TransferEncoding,
    /// The request did not arrive completely before its deadline.
    #[error("request not received in time")]
    Timeout,
    /// The connection failed or was closed in the middle of a request.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    /// The status to answer with before closing, or `None` when the connection is unusable.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => Some(431),
            HttpError::Malformed(_) | HttpError::InvalidContentLength => Some(400),
            HttpError::UnsupportedVersion => Some(505),
            HttpError::BodyTooLarge(_) => Some(413),
            HttpError::TransferEncoding => Some(411),
            HttpError::Timeout => Some(408),
            HttpError::Io(_) => None,
        }
    }
}

/// The HTTP versions we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `HTTP/1.0`: one request per connection.
    Http10,
    /// `HTTP/1.1`: persistent unless `Connection: close`.
    Http11,
}

/// A parsed request line and header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    /// The method, case-sensitive as HTTP says (`POST`, not `post`).
    pub(crate) method: String,
    /// The request target exactly as sent (origin form `/path?query`, absolute form or `*`).
    pub(crate) target: String,
    /// The protocol version.
    pub(crate) version: Version,
    /// Header fields in arrival order: lower-cased name, value without surrounding whitespace.
    /// Values are decoded as ISO-8859-1, like a servlet container does, so no byte is lost.
    pub(crate) headers: Vec<(String, String)>,
    /// The body length from `Content-Length`, 0 when absent.
    pub(crate) content_length: usize,
}

impl RequestHead {
    /// The first value of header `name`, compared case-insensitively.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in arrival order, compared case-insensitively.
    pub(crate) fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the header `name` lists `token` (comma-separated, case-insensitive).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
    }

    /// Whether the connection stays open after the response: HTTP/1.1 unless the client sent
    /// `Connection: close`. HTTP/1.0 connections always close.
    pub(crate) fn keep_alive(&self) -> bool {
        self.version == Version::Http11 && !self.has_token("connection", "close")
    }

    /// Whether the client waits for `100 Continue` before sending its body.
    pub(crate) fn expects_continue(&self) -> bool {
        self.version == Version::Http11
            && self.content_length > 0
            && self.has_token("expect", "100-continue")
    }

    /// The path part of the target, still percent-encoded. For the absolute form
    /// (`http://host/p`) the scheme and authority are dropped; `*` stays `*`.
    pub(crate) fn path(&self) -> &str {
        let without_query = self.target.split('?').next().unwrap_or_default();
        match without_query.find("://") {
            Some(scheme_end) if !without_query.starts_with('/') => {
                let after_authority = &without_query[scheme_end + 3..];
                match after_authority.find('/') {
                    Some(slash) => &after_authority[slash..],
                    None => "/",
                }
            }
            _ => without_query,
        }
    }

    /// The query string without the `?`, still percent-encoded; empty when absent.
    pub(crate) fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, query)| query).unwrap_or_default()
    }
}

/// Parses the head at the start of `buf`.
///
/// Returns `Ok(None)` while the terminating `\r\n\r\n` has not arrived yet, and otherwise the head
/// and the number of bytes it took (empty lines before the request line included, body excluded).
/// Never panics, whatever `buf` holds.
pub(crate) fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    // RFC 9112 §2.2: ignore at least one empty line before the request line.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let head_end = match find(&window[start.min(window.len())..], b"\r\n\r\n") {
        Some(pos) => start + pos,
        None if buf.len() >= MAX_HEAD_BYTES => return Err(HttpError::HeadTooLarge),
        None => return Ok(None),
    };
    let consumed = head_end + 4;
    // Lines end in CRLF. A lone CR or LF left inside a line fails the grammar checks below.
    let mut lines = split_crlf(&buf[start..head_end]);
    let request_line = lines.next().unwrap_or_default();
    let (method, target, version) = parse_request_line(request_line)?;

    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        headers.push(parse_header_line(line)?);
    }

    let content_length = content_length(&headers)?;
    if headers.iter().any(|(name, _)| name == "transfer-encoding") {
        return Err(HttpError::TransferEncoding);
    }
    if version == Version::Http11 && headers.iter().filter(|(n, _)| n == "host").count() != 1 {
        return Err(HttpError::Malformed("HTTP/1.1 needs exactly one Host header"));
    }
    if target == "*" && method != "OPTIONS" {
        return Err(HttpError::Malformed("asterisk target is only for OPTIONS"));
    }
    let head = RequestHead { method, target, version, headers, content_length };
    Ok(Some((head, consumed)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_crlf(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match find(rest, b"\r\n") {
            Some(pos) => {
                let line = &rest[..pos];
                rest = &rest[pos + 2..];
                Some(line)
            }
            None => {
                done = true;
                Some(rest)
            }
        }
    })
}

/// `tchar` of RFC 9110 §5.6.2: the bytes allowed in methods and header names.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_token_byte(b)) {
        return Err(HttpError::Malformed("bad method"));
    }
    // Visible ASCII only; '#' never belongs to a request target.
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b) && b != b'#') {
        return Err(HttpError::Malformed("bad request target"));
    }
    let origin_form = target[0] == b'/';
    let absolute_form = {
        let lower = target.to_ascii_lowercase();
        lower.starts_with(b"http://") || lower.starts_with(b"https://")
    };
    if !(origin_form || absolute_form || target == b"*") {
        return Err(HttpError::Malformed("bad request target"));
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::UnsupportedVersion)
        }
        _ => return Err(HttpError::Malformed("bad HTTP version")),
    };
    // Both checked to be ASCII above.
    let method = String::from_utf8_lossy(method).into_owned();
    let target = String::from_utf8_lossy(target).into_owned();
    Ok((method, target, version))
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("header line without colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // Also rejects obsolete line folding (a line starting with whitespace) and "Name : value".
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(HttpError::Malformed("bad header name"));
    }
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let first = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let last = value.iter().rposition(|b| !is_ows(b)).map_or(first, |p| p + 1);
    let value = &value[first..last.max(first)];
    // field-vchar / obs-text, with single spaces and tabs inside.
    if !value.iter().all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b) || b >= 0x80) {
        return Err(HttpError::Malformed("bad header value"));
    }
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let value = value.iter().map(|&b| char::from(b)).collect();
    Ok((name, value))
}

/// Every `Content-Length` field and every comma-separated element must be the same number.
fn content_length(headers: &[(String, String)]) -> Result<usize, HttpError> {
    let mut length: Option<u64> = None;
    let elements = headers
        .iter()
        .filter(|(name, _)| name == "content-length")
        .flat_map(|(_, value)| value.split(','));
    for element in elements {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() || !element.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::InvalidContentLength);
        }
        let value = element
            .bytes()
            .try_fold(0u64, |acc, digit| acc.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
            .unwrap_or(u64::MAX);
        match length {
            Some(previous) if previous != value => return Err(HttpError::InvalidContentLength),
            _ => length = Some(value),
        }
    }
    let length = length.unwrap_or(0);
    match usize::try_from(length) {
        Ok(length) if length <= MAX_BODY_BYTES => Ok(length),
        _ => Err(HttpError::BodyTooLarge(length)),
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, for form data).
/// Returns `None` on a truncated or non-hex escape.
pub(crate) fn percent_decode(input: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let high = char::from(hex[0]).to_digit(16)?;
                let low = char::from(hex[1]).to_digit(16)?;
                out.push(u8::try_from(high * 16 + low).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The `name=value` pairs of a query string or `application/x-www-form-urlencoded` body, decoded.
///
/// Like a servlet container, a pair whose escapes are broken or not UTF-8 is skipped rather than
/// failing the request; a name without `=` has an empty value.
pub(crate) fn form_pairs(input: &str) -> impl Iterator<Item = (String, String)> + '_ {
    input.split('&').filter(|pair| !pair.is_empty()).filter_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(name, true)?).ok()?;
        let value = String::from_utf8(percent_decode(value, true)?).ok()?;
        Some((name, value))
    })
}

/// A complete request: head and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// Request line and headers.
    pub(crate) head: RequestHead,
    /// Exactly `head.content_length` bytes.
    pub(crate) body: Vec<u8>,
}

/// A response to write. `Content-Length` and `Connection` are added by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code, 100..=999.
    pub(crate) status: u16,
    /// `Content-Type`, if any.
    pub(crate) content_type: Option<&'static str>,
    /// Extra header fields (for example `Allow`). CR and LF in values are dropped when written.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The body. Not sent for 1xx, 204 and 304 answers nor to `HEAD` requests.
    pub(crate) body: Vec<u8>,
    /// Close the connection after this response even if the client would keep it.
    pub(crate) close: bool,
}

impl Response {
    /// A response with a body of the given type.
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body: body.into(),
            close: false,
        }
    }

    /// Adds a header field.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Whether this status may carry a body (RFC 9110 §6.4.1).
    fn allows_body(&self) -> bool {
        !(self.status < 200 || self.status == 204 || self.status == 304)
    }
}

/// The reason phrase we send for `status` (any text is valid; clients ignore it).
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Serializes `response`. The body is left out when `head_only` or when the status forbids one.
pub(crate) fn encode_response(response: &Response, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + response.body.len());
    let status = response.status.clamp(100, 999);
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    let mut header = |name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend(value.bytes().filter(|&b| b != b'\r' && b != b'\n'));
        out.extend_from_slice(b"\r\n");
    };
    if let Some(content_type) = response.content_type {
        header("Content-Type", content_type);
    }
    if response.allows_body() {
        header("Content-Length", &response.body.len().to_string());
    }
    for (name, value) in &response.headers {
        header(name, value);
    }
    header("Connection", if keep_alive { "keep-alive" } else { "close" });
    out.extend_from_slice(b"\r\n");
    if response.allows_body() && !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// Writes `response` and flushes.
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    io.write_all(&encode_response(response, keep_alive, head_only)).await?;
    io.flush().await
}

/// How long a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadLimits {
    /// How long a kept-alive connection may sit between requests before it is closed quietly.
    pub(crate) idle_timeout: Duration,
    /// How long one request may take to arrive completely, from its first byte (or, for the
    /// first request, from the connection being accepted) to its last.
    pub(crate) request_timeout: Duration,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads requests one after another from one connection, keeping bytes of a pipelined next
/// request for the next call.
#[derive(Debug, Default)]
pub(crate) struct RequestReader {
    buf: Vec<u8>,
    requests_read: u64,
}

impl RequestReader {
    /// A reader for a fresh connection.
    pub(crate) fn new() -> Self {
        RequestReader::default()
    }

    /// Reads the next head. `Ok(None)` means the client closed, or stayed silent past its
    /// timeout, between requests: close without answering. Also returns the request's deadline.
    pub(crate) async fn read_head<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limits: &ReadLimits,
    ) -> Result<Option<(RequestHead, Instant)>, HttpError> {
        let started = Instant::now();
        let first_request = self.requests_read == 0;
        // The deadline of this request starts with its first byte.
        let mut deadline = (!self.buf.is_empty()).then(|| started + limits.request_timeout);
        loop {
            if let Some((head, consumed)) = parse_request_head(&self.buf)? {
                self.buf.drain(..consumed);
                self.requests_read += 1;
                let deadline = deadline.unwrap_or(started + limits.request_timeout);
                return Ok(Some((head, deadline)));
            }
            let wait_until = deadline.unwrap_or_else(|| {
                started + if first_request { limits.request_timeout } else { limits.idle_timeout }
            });
            match self.fill(io, wait_until).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(HttpError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(HttpError::Timeout) if deadline.is_none() => return Ok(None),
                Err(e) => return Err(e),
            }
            if deadline.is_none() {
                deadline = Some(Instant::now() + limits.request_timeout);
            }
        }
    }

    /// Reads a body of `length` bytes before `deadline`.
    pub(crate) async fn read_body<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        length: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, HttpError> {
        while self.buf.len() < length {
            if self.fill(io, deadline).await? == 0 {
                return Err(HttpError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let rest = self.buf.split_off(length);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        deadline: Instant,
    ) -> Result<usize, HttpError> {
        self.buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut self.buf)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

/// What answers the requests of a connection served by [`serve_connection`].
pub(crate) trait Service {
    /// Answers one request.
    fn call(&self, request: Request) -> impl Future<Output = Response> + Send;

    /// Told about a request the reader refused, before the error answer is written.
    fn rejected(&self, error: &HttpError);
}

/// Serves requests on `io` until the client closes, a request asks to close, a timeout passes or
/// an error occurs. Refused requests get their status (see [`HttpError::status`]) and the
/// connection is closed; the error is returned for logging.
pub(crate) async fn serve_connection<IO, S>(
    io: &mut IO,
    limits: &ReadLimits,
    service: &S,
) -> Result<(), HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let mut reader = RequestReader::new();
    loop {
        let (head, deadline) = match reader.read_head(io, limits).await {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(()),
            Err(error) => return refuse(io, service, error).await,
        };
        if head.expects_continue() {
            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            io.flush().await?;
        }
        let body = match reader.read_body(io, head.content_length, deadline).await {
            Ok(body) => body,
            Err(error) => return refuse(io, service, error).await,
        };
        let keep_alive = head.keep_alive();
        let head_only = head.method == "HEAD";
        let response = service.call(Request { head, body }).await;
        let keep_alive = keep_alive && !response.close;
        write_response(io, &response, keep_alive, head_only).await?;
        if !keep_alive {
            close_gracefully(io).await;
            return Ok(());
        }
    }
}

async fn refuse<IO, S>(io: &mut IO, service: &S, error: HttpError) -> Result<(), HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    if let Some(status) = error.status() {
        service.rejected(&error);
        let body = format!("{status} {}\n", reason_phrase(status));
        let mut response = Response::new(status, "text/plain;charset=utf-8", body);
        response.close = true;
        // The client may be gone already; the error we return is the interesting one.
        if write_response(io, &response, false, false).await.is_ok() {
            close_gracefully(io).await;
        }
    }
    Err(error)
}

/// Sends FIN, then reads and drops what the client still sends for a short while, so that unread
/// input does not turn our close into a reset that destroys the response before it is read.
async fn close_gracefully<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    const DRAIN_LIMIT: usize = 256 * 1024;
    const DRAIN_TIME: Duration = Duration::from_secs(1);
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    // Whether the client closed or time ran out, we are done either way.
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    const SIMPLE: &[u8] =
        b"POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";

    fn parse_ok(bytes: &[u8]) -> (RequestHead, usize) {
        parse_request_head(bytes).expect("valid head").expect("complete head")
    }

    fn parse_err(bytes: &[u8]) -> HttpError {
        parse_request_head(bytes).expect_err("head must be refused")
    }

    #[test]
    fn parses_a_simple_head() {
        let (head, consumed) = parse_ok(SIMPLE);
        assert_eq!(consumed, SIMPLE.len() - 3);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/a/b?x=1&y=%20");
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.query(), "x=1&y=%20");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.content_length, 3);
        assert_eq!(head.header("HOST"), Some("h"));
        assert_eq!(head.header("content-LENGTH"), Some("3"));
        assert_eq!(head.header("missing"), None);
        assert!(head.keep_alive());
    }

    #[test]
    fn every_split_of_a_head_is_incomplete_until_the_terminator() {
        let head_len = SIMPLE.len() - 3;
        for cut in 0..head_len {
            assert!(
                parse_request_head(&SIMPLE[..cut]).expect("prefix is fine").is_none(),
                "cut at {cut}"
            );
        }
        let (_, consumed) = parse_ok(&SIMPLE[..head_len]);
        assert_eq!(consumed, head_len);
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let (head, consumed) = parse_ok(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.method, "GET");
        assert_eq!(consumed, 4 + 18);
        assert!(parse_request_head(b"\r\n").expect("fine").is_none());
    }

    #[test]
    fn head_size_is_bounded() {
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'a');
        assert!(matches!(parse_err(&big), HttpError::HeadTooLarge));
        big.truncate(MAX_HEAD_BYTES - 1);
        assert!(parse_request_head(&big).expect("still fine").is_none());
        // A terminator just past the limit does not count.
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_err(&big), HttpError::HeadTooLarge));
        // Exactly at the limit is accepted.
        big.truncate(MAX_HEAD_BYTES - 4);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_ok(&big).1, MAX_HEAD_BYTES);
    }

    #[test]
    fn header_count_is_bounded() {
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut ok = head.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(parse_ok(&ok).0.headers.len(), MAX_HEADERS);
        head.extend_from_slice(b"One-More: v\r\n\r\n");
        assert!(matches!(parse_err(&head), HttpError::TooManyHeaders));
    }

    #[test]
    fn request_line_is_validated() {
        for bad in [
            &b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
            b"GET /\r\nHost: h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET nopath HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / http/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        ] {
            let err = parse_err(bad);
            assert_eq!(err.status(), Some(400), "{:?}: {err}", String::from_utf8_lossy(bad));
        }
        for bad in [&b"GET / HTTP/2.0\r\n\r\n"[..], b"GET / HTTP/0.9\r\n\r\n"] {
            assert!(matches!(parse_err(bad), HttpError::UnsupportedVersion));
        }
        let (head, _) = parse_ok(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(head.path(), "*");
        let (head, _) = parse_ok(b"GET HTTP://h:1/p/q?z HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((head.path(), head.query()), ("/p/q", "z"));
        let (head, _) = parse_ok(b"GET http://h:1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(head.path(), "/");
    }

    #[test]
    fn header_lines_are_validated() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nNo-Colon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nSpace : v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\nX: bare-lf\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            let err = parse_err(bad);
            assert_eq!(err.status(), Some(400), "{:?}: {err}", String::from_utf8_lossy(bad));
        }
        let (head, _) =
            parse_ok(b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\t v  w \t\r\nX-B:\r\nX-L: \xe9\r\n\r\n");
        assert_eq!(head.header("x-a"), Some("v  w"));
        assert_eq!(head.header("x-b"), Some(""));
        assert_eq!(head.header("x-l"), Some("\u{e9}"));
        // HTTP/1.0 needs no Host.
        assert!(parse_ok(b"GET / HTTP/1.0\r\n\r\n").0.headers.is_empty());
    }

    #[test]
    fn content_length_is_strict() {
        let with = |fields: &str| {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
            parse_request_head(raw.as_bytes()).map(|r| r.expect("complete").0.content_length)
        };
        assert_eq!(with("").expect("no body"), 0);
        assert_eq!(with("Content-Length: 0\r\n").expect("zero"), 0);
        assert_eq!(with("Content-Length: 007\r\n").expect("leading zeros"), 7);
        assert_eq!(with("Content-Length: 5\r\ncontent-length: 5\r\n").expect("same"), 5);
        assert_eq!(with("Content-Length: 5, 5\r\n").expect("same list"), 5);
        assert_eq!(
            with(&format!("Content-Length: {MAX_BODY_BYTES}\r\n")).expect("max"),
            MAX_BODY_BYTES
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: 5,\r\n",
            "Content-Length: \r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +1\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length: 0x10\r\n",
        ] {
            assert!(matches!(with(bad), Err(HttpError::InvalidContentLength)), "{bad}");
        }
        for big in [
            format!("Content-Length: {}\r\n", MAX_BODY_BYTES + 1),
            "Content-Length: 99999999999999999999999999\r\n".to_owned(),
        ] {
            let err = with(&big).expect_err("too large");
            assert!(matches!(err, HttpError::BodyTooLarge(_)));
            assert_eq!(err.status(), Some(413));
        }
    }

    #[test]
    fn transfer_encoding_is_refused() {
        for te in ["chunked", "gzip, chunked", "identity"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
            let err = parse_err(raw.as_bytes());
            assert!(matches!(err, HttpError::TransferEncoding));
            assert_eq!(err.status(), Some(411));
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let keep = |raw: &[u8]| parse_ok(raw).0.keep_alive();
        assert!(keep(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: te, close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn percent_decoding_and_form_pairs() {
        assert_eq!(percent_decode("a%20b+c", false).as_deref(), Some(&b"a b+c"[..]));
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some(&b"a b c"[..]));
        assert_eq!(percent_decode("%e9%E9", false).as_deref(), Some(&[0xe9, 0xe9][..]));
        assert_eq!(percent_decode("%", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%\u{e9}", false), None);
        let pairs: Vec<_> = form_pairs("a=1&&b&c=x%3Dy+z&bad=%zz&d=%C3%A9&e=%FF").collect();
        let expected = [("a", "1"), ("b", ""), ("c", "x=y z"), ("d", "\u{e9}")];
        let expected: Vec<_> =
            expected.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn responses_are_encoded_with_length_and_connection() {
        let response = Response::new(405, "text/html", "no").with_header("Allow", "POST\r\nX: y");
        let encoded = String::from_utf8(encode_response(&response, true, false)).expect("ascii");
        assert_eq!(
            encoded,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\
             Allow: POSTX: y\r\nConnection: keep-alive\r\n\r\nno"
        );
        let encoded = String::from_utf8(encode_response(&response, false, true)).expect("ascii");
        assert!(encoded.ends_with("Connection: close\r\n\r\n"), "{encoded}");
        let no_content = Response::new(204, "text/plain", "dropped");
        let encoded = String::from_utf8(encode_response(&no_content, true, false)).expect("ascii");
        assert_eq!(
            encoded,
            "HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    /// Echoes method, path and body; counts refusals.
    #[derive(Default)]
    struct EchoService {
        rejected: AtomicU64,
        seen: Mutex<Vec<Request>>,
    }

    impl Service for EchoService {
        async fn call(&self, request: Request) -> Response {
            let body = format!(
                "{} {} {}",
                request.head.method,
                request.head.path(),
                String::from_utf8_lossy(&request.body)
            );
            self.seen.lock().expect("not poisoned").push(request);
            Response::new(200, "text/plain", body)
        }

        fn rejected(&self, _error: &HttpError) {
            self.rejected.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Runs `serve_connection` on one end of an in-memory pipe, writes `input` on the other end,
    /// and returns everything the server wrote before closing.
    async fn exchange(input: &[u8], limits: ReadLimits, service: &EchoService) -> String {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let serve = async {
            let result = serve_connection(&mut server, &limits, service).await;
            drop(server);
            result
        };
        let talk = async {
            client.write_all(input).await.expect("write");
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            // Lets the server's graceful close finish without waiting out its drain time.
            client.shutdown().await.expect("shutdown");
            out
        };
        let (_, out) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk) })
                .await
                .expect("exchange finished in time");
        String::from_utf8(out).expect("utf-8 output")
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
        let service = EchoService::default();
        let input = b"POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi\
                      GET /two HTTP/1.1\r\nHost: h\r\n\r\n\
                      GET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n\
                      GET /never HTTP/1.1\r\nHost: h\r\n\r\n";
        let out = exchange(input, ReadLimits::default(), &service).await;
        let expected = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
                        Connection: keep-alive\r\n\r\nPOST /one hi\
                        HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\
                        Connection: keep-alive\r\n\r\nGET /two \
                        HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\
                        Connection: close\r\n\r\nGET /three ";
        assert_eq!(out, expected);
        assert_eq!(service.seen.lock().expect("not poisoned").len(), 3);
    }

    #[tokio::test]
    async fn http10_closes_after_one_request() {
        let service = EchoService::default();
        let input = b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
        let out = exchange(input, ReadLimits::default(), &service).await;
        assert!(out.ends_with("Connection: close\r\n\r\nGET /a "), "{out}");
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1);
    }

    #[tokio::test]
    async fn head_requests_get_no_body() {
        let service = EchoService::default();
        let input = b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let out = exchange(input, ReadLimits::default(), &service).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn expect_continue_gets_an_interim_response() {
        let service = EchoService::default();
        let input = b"POST /c HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\
                      Connection: close\r\n\r\nz";
        let out = exchange(input, ReadLimits::default(), &service).await;
        assert!(out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("POST /c z"), "{out}");
    }

    #[tokio::test]
    async fn bad_requests_are_answered_then_closed() {
        let cases: [(&[u8], &str); 4] = [
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "),
            (b"GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 505 "),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 411 ",
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", "HTTP/1.1 413 "),
        ];
        for (input, status) in cases {
            let service = EchoService::default();
            let out = exchange(input, ReadLimits::default(), &service).await;
            assert!(out.starts_with(status), "{out}");
            assert!(out.contains("Connection: close\r\n"), "{out}");
            assert_eq!(service.rejected.load(Ordering::SeqCst), 1);
        }
        // An oversized head, with more bytes still coming.
        let service = EchoService::default();
        let mut input = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        input.resize(40 * 1024, b'a');
        let out = exchange(&input, ReadLimits::default(), &service).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[tokio::test]
    async fn a_request_that_stalls_times_out_with_408() {
        let limits = ReadLimits {
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_millis(50),
        };
        let service = EchoService::default();
        let (mut client, mut server) = tokio::io::duplex(1024);
        let serve = serve_connection(&mut server, &limits, &service);
        let talk = async {
            client
                .write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
                .await?;
            let mut out = Vec::new();
            client.read_to_end(&mut out).await?;
            client.shutdown().await?;
            io::Result::Ok(out)
        };
        let (served, out) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk) })
                .await
                .expect("finished in time");
        assert!(matches!(served, Err(HttpError::Timeout)));
        let out = String::from_utf8(out.expect("read")).expect("utf-8");
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_quietly() {
        let limits = ReadLimits {
            idle_timeout: Duration::from_millis(50),
            request_timeout: Duration::from_millis(50),
        };
        let service = EchoService::default();
        let (mut client, mut server) = tokio::io::duplex(1024);
        let serve = async {
            let served = serve_connection(&mut server, &limits, &service).await;
            drop(server);
            served
        };
        let talk = async {
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.map(|_| out)
        };
        let (served, out) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, talk) })
                .await
                .expect("finished in time");
        assert!(served.is_ok());
        assert!(out.expect("read").is_empty());
        assert_eq!(service.rejected.load(Ordering::SeqCst), 0);
    }

    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["GET", "POST", "HEAD", "PUT"]),
            "/[a-zA-Z0-9/%._-]{0,40}(\\?[a-zA-Z0-9=&%+]{0,30})?",
            prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..8),
            prop::sample::select(vec!["HTTP/1.0", "HTTP/1.1"]),
        )
            .prop_map(|(method, target, headers, version)| {
                let mut raw = format!("{method} {target} {version}\r\nHost: h\r\n");
                for (name, value) in headers {
                    raw.push_str(&format!("{name}: {value}\r\n"));
                }
                raw.push_str("\r\n");
                raw.into_bytes()
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..20_000)) {
            let _ = parse_request_head(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_requests(
            request in valid_request(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        ) {
            let mut bytes = request;
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Ok(Some((head, consumed))) = parse_request_head(&bytes) {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(head.headers.len() <= MAX_HEADERS);
                prop_assert!(head.content_length <= MAX_BODY_BYTES);
            }
        }

        #[test]
        fn a_split_head_parses_only_once_complete(request in valid_request(), cut in any::<prop::sample::Index>()) {
            let whole = parse_request_head(&request);
            let cut = cut.index(request.len());
            match parse_request_head(&request[..cut]) {
                Ok(None) => {}
                Ok(Some(_)) => prop_assert!(false, "a strict prefix parsed as complete"),
                // A prefix may only fail if the whole head fails too.
                Err(_) => prop_assert!(whole.is_err()),
            }
            if let Ok(Some((_, consumed))) = whole {
                prop_assert_eq!(consumed, request.len());
            }
        }
    }
}
