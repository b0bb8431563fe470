//! The HTTP echo backend, answering like upstream Gateway API's `echo-basic`
//! (gateway-api-semantics §4): a JSON body saying what the request was (method, raw path with
//! its query, host, protocol, headers), who answered (namespace, pod) and who asked (the peer
//! address and the identity the peer was reached with), so a conformance check can compare
//! what the backend saw with what the route promised.
//!
//! It serves any `AsyncRead + AsyncWrite` stream, HTTP/1.1 or HTTP/2 with prior knowledge
//! (told apart by the HTTP/2 preface), so the simulator runs it on turmoil streams and an
//! `echo` binary can run it on real sockets. Everything the host environment has to say (the
//! markers it records, the per-path counters of flaky paths) goes through [`EchoHooks`].
//!
//! Behaviours tests rely on: `X-Echo-Set-Header: A:1,B:2` copies those headers into the
//! response; `/status/NNN` answers status NNN; `?delay=1s` (Go durations: `ms`, `s`, `m`,
//! `h`) waits before answering; `/flaky?code=C&every=N` answers `C` except to every `N`th
//! request for that path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Who answers: the pod the echo runs in, and who is calling it.
#[derive(Debug, Clone, Default)]
pub struct EchoContext {
    pub namespace: String,
    pub pod: String,
    /// The address the connection came from (in a mesh: the waypoint or the client's pod).
    pub peer: Option<SocketAddr>,
    /// The SPIFFE identity of the peer, where the environment knows it.
    pub peer_identity: Option<String>,
    /// The address the connection was made to (its port is `httpPort`).
    pub local: Option<SocketAddr>,
}

/// What the echo asks of the environment it runs in.
pub trait EchoHooks {
    /// Every request, before it is answered (the simulator records its markers here).
    fn received(&self, _request: &http::request::Parts, _body: &[u8]) {}

    /// Counts one more request to flaky `path` and returns the count (from 1).
    fn count(&self, path: &str) -> u64;
}

/// A [`EchoHooks`] with in-memory counters, for the `echo` binary and tests.
#[derive(Debug, Default)]
pub struct Counters(std::cell::RefCell<BTreeMap<String, u64>>);

impl EchoHooks for Counters {
    fn count(&self, path: &str) -> u64 {
        let mut counters = self.0.borrow_mut();
        let count = counters.entry(path.to_string()).or_insert(0);
        *count += 1;
        *count
    }
}

/// The echo's JSON answer, with echo-basic's field names (and the peer fields it lacks).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EchoBody {
    /// The raw request target: path and query exactly as received.
    pub path: String,
    pub host: String,
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub proto: String,
    /// Canonical header name (`X-Header-Set`) → every value in order (Host is in `host`).
    pub headers: BTreeMap<String, Vec<String>>,
    pub namespace: String,
    pub pod: String,
    #[serde(default)]
    pub http_port: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub peer_identity: String,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one connection until the peer closes it.
pub async fn serve<S, H>(mut io: S, context: Rc<EchoContext>, hooks: Rc<H>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    H: EchoHooks + 'static,
{
    // Read as much as tells HTTP/2's preface apart from an HTTP/1.1 request line.
    let mut seen = Vec::new();
    let mut buf = [0u8; PREFACE.len()];
    while seen.len() < PREFACE.len() && PREFACE.starts_with(&seen) {
        match io.read(&mut buf[..PREFACE.len() - seen.len()]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    if seen.is_empty() {
        return;
    }
    let h2 = seen == PREFACE;
    let io = TokioIo::new(Prefixed {
        prefix: seen,
        at: 0,
        inner: io,
    });
    let service = service_fn(move |request| {
        let context = context.clone();
        let hooks = hooks.clone();
        async move { Ok::<_, Infallible>(answer(request, &context, &*hooks).await) }
    });
    if h2 {
        // No `Date` header: hyper would read the host's wall clock, which no seam covers.
        let _ = hyper::server::conn::http2::Builder::new(LocalExecutor)
            .timer(TokioTimer::new())
            .auto_date_header(false)
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .auto_date_header(false)
            .serve_connection(io, service)
            .await;
    }
}

/// Runs HTTP/2 streams on the current thread's local set: the echo's state is not `Send`.
#[derive(Clone, Copy)]
struct LocalExecutor;

impl<F> hyper::rt::Executor<F> for LocalExecutor
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// A stream whose first bytes were already read: they are handed out again first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Go's canonical header name: `x-header-set` → `X-Header-Set`.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// A Go-style duration (`1s`, `500ms`, `1m30s`); `None` when it is not one.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        total += unit * u32::try_from(value).ok()?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// The first value of query parameter `name`.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// The status a path asks for: `/status/NNN`, or a flaky path's code when its turn says so.
fn status_for<H: EchoHooks + ?Sized>(hooks: &H, path: &str, query: Option<&str>) -> StatusCode {
    if let Some(code) = path.strip_prefix("/status/")
        && let Ok(code) = code.trim_end_matches('/').parse::<u16>()
        && let Ok(status) = StatusCode::from_u16(code)
    {
        return status;
    }
    if path.starts_with("/flaky") {
        let number = |name| query_param(query, name).and_then(|v| v.parse::<u64>().ok());
        if let (Some(code), Some(every)) = (number("code"), number("every")) {
            let count = hooks.count(path);
            if !count.is_multiple_of(every.max(1))
                && let Some(status) = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
            {
                return status;
            }
        }
    }
    StatusCode::OK
}

async fn answer<H: EchoHooks + ?Sized>(
    request: Request<Incoming>,
    context: &EchoContext,
    hooks: &H,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    hooks.received(&parts, &body);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    if let Some(delay) = query_param(query, "delay").and_then(parse_go_duration) {
        tokio::time::sleep(delay).await;
    }
    let status = status_for(hooks, path, query);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == header::HOST {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let echo = EchoBody {
        path: target.clone(),
        host,
        method: parts.method.to_string(),
        proto: format!("{:?}", parts.version),
        headers,
        namespace: context.namespace.clone(),
        pod: context.pod.clone(),
        http_port: context
            .local
            .map(|a| a.port().to_string())
            .unwrap_or_default(),
        peer: context.peer.map(|p| p.to_string()).unwrap_or_default(),
        peer_identity: context.peer_identity.clone().unwrap_or_default(),
    };
    let json = serde_json::to_vec(&echo).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for value in parts.headers.get_all("x-echo-set-header") {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(',') {
            let Some((name, value)) = pair.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                out.append(name, value);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_canonical_and_durations_parse_like_go() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("HOST"), "Host");
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    fn context() -> Rc<EchoContext> {
        Rc::new(EchoContext {
            namespace: "ns".into(),
            pod: "echo-v1-0".into(),
            peer: Some(([10, 0, 0, 9], 4000).into()),
            peer_identity: Some("spiffe://cluster.local/ns/ns/sa/client".into()),
            local: Some(([10, 0, 0, 1], 8080).into()),
        })
    }

    fn local<F: Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, future)
    }

    #[test]
    fn answers_http1_with_the_echo_report_and_the_headers_asked_for() {
        use tokio::io::AsyncWriteExt;
        local(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            tokio::task::spawn_local(serve(server, context(), Rc::new(Counters::default())));
            client
                .write_all(
                    b"GET /status/201?x=1 HTTP/1.1\r\nhost: echo\r\nx-a: 1\r\nx-a: 2\r\n\
                      X-Echo-Set-Header: X-Reply:yes,other:1\r\nconnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 201"), "{head}");
            assert!(
                head.contains("x-reply: yes") && head.contains("other: 1"),
                "{head}"
            );
            assert!(!head.to_ascii_lowercase().contains("date:"), "{head}");
            let echo: EchoBody = serde_json::from_str(body).unwrap();
            assert_eq!(echo.path, "/status/201?x=1");
            assert_eq!(echo.host, "echo");
            assert_eq!(echo.proto, "HTTP/1.1");
            assert_eq!(echo.headers["X-A"], ["1", "2"]);
            assert_eq!(echo.pod, "echo-v1-0");
            assert_eq!(echo.peer_identity, "spiffe://cluster.local/ns/ns/sa/client");
        });
    }

    #[test]
    fn answers_http2_with_prior_knowledge() {
        local(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::task::spawn_local(serve(server, context(), Rc::new(Counters::default())));
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(LocalExecutor, TokioIo::new(client))
                    .await
                    .unwrap();
            tokio::task::spawn_local(connection);
            let request = Request::get("http://echo/h2?delay=10ms")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let echo: EchoBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(echo.proto, "HTTP/2.0");
            assert_eq!(echo.path, "/h2?delay=10ms");
            assert_eq!(echo.host, "echo");
        });
    }

    #[test]
    fn status_paths_and_flaky_paths() {
        let hooks = Counters::default();
        assert_eq!(status_for(&hooks, "/status/418", None).as_u16(), 418);
        let q = Some("code=503&every=2");
        assert_eq!(status_for(&hooks, "/flaky", q).as_u16(), 503);
        assert_eq!(status_for(&hooks, "/flaky", q).as_u16(), 200);
        assert_eq!(status_for(&hooks, "/other", q).as_u16(), 200);
    }
}
