//! Sending a routed request on: an endpoint per try, the entry's timeouts (GEP-1742:
//! `request` bounds the whole exchange, `backendRequest` each try), retries (GEP-1731: the
//! listed codes and every connection failure, up to `attempts` retries with at least the
//! backoff between them), and mirrors (a copy to each mirror backend, sampled per request;
//! their answers are dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::Inner;
use super::proxy::{Body, BoxError, full, local};
use super::routes::Protocol;
use super::upstream::{self, Target, UpstreamError};
use crate::state::Workload;
use crate::xds::proto::ambient::waypoint as pb;

/// Largest request body kept for retries and mirrors; a larger one is refused with 413
/// rather than sent once without the retries its route promises.
pub(crate) const MAX_REPLAYED_BODY: usize = 4 * 1024 * 1024;

/// Where and how to send one request.
#[derive(Debug)]
pub(crate) struct Forward {
    to: To,
    protocol: Protocol,
    pub(crate) timeouts: Option<pb::Timeouts>,
    pub(crate) default_request_timeout: Option<Duration>,
    pub(crate) retry: Option<pb::Retry>,
    pub(crate) mirrors: Vec<pb::RequestMirror>,
    /// The client's side of a WebSocket upgrade, spliced to the backend's on its 101.
    pub(crate) upgrade: Option<hyper::upgrade::OnUpgrade>,
}

#[derive(Debug, Clone)]
enum To {
    /// A Service (`<namespace>/<hostname>`) and its port.
    Service(String, u16),
    /// A pod address, for workload-addressed traffic.
    Workload(SocketAddr),
}

impl Forward {
    pub(crate) fn service(key: String, port: u16, protocol: Protocol) -> Self {
        Forward::new(To::Service(key, port), protocol)
    }

    pub(crate) fn workload(address: SocketAddr, protocol: Protocol) -> Self {
        Forward::new(To::Workload(address), protocol)
    }

    fn new(to: To, protocol: Protocol) -> Self {
        Forward {
            to,
            protocol,
            timeouts: None,
            default_request_timeout: None,
            retry: None,
            mirrors: Vec::new(),
            upgrade: None,
        }
    }

    /// The whole-exchange bound: the entry's `request` (0 disables), else the default.
    fn request_timeout(&self) -> Option<Duration> {
        match self.timeouts.and_then(|t| t.request_ms) {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => self.default_request_timeout,
        }
    }

    fn backend_timeout(&self) -> Option<Duration> {
        self.timeouts
            .and_then(|t| t.backend_request_ms)
            .filter(|ms| *ms != 0)
            .map(Duration::from_millis)
    }
}

/// How forwarding ended.
pub(crate) enum Outcome {
    /// The backend's answer (possibly an error status it chose).
    Answered {
        response: Response<Body>,
        upstream: Option<Arc<Workload>>,
    },
    /// The waypoint's own answer: no endpoint, connection failures, timeouts.
    Failed {
        response: Response<Body>,
        flags: &'static str,
        upstream: Option<Arc<Workload>>,
    },
}

fn target(inner: &Inner, to: &To) -> Result<Target, UpstreamError> {
    match to {
        To::Service(key, port) => upstream::choose(inner, key, *port),
        To::Workload(address) => inner.state.read(|state| {
            let endpoint = state
                .workload_by_ip(&inner.config.mesh.network, address.ip())
                .ok_or_else(|| UpstreamError::UnknownService(address.to_string()))?;
            Ok(Target {
                endpoint,
                port: address.port(),
                service: None,
            })
        }),
    }
}

/// The parts of a request a retry or a mirror sends again.
#[derive(Clone)]
struct Head {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
}

/// Whether a request asks to become a WebSocket (HTTP/1.1 `Upgrade: websocket`).
pub(crate) fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

impl Head {
    /// The request as `protocol` carries it to the backend: origin-form with a Host header
    /// for HTTP/1.1; an absolute URI (which becomes `:authority`) for HTTP/2.
    fn request(&self, protocol: Protocol, body: Body) -> Request<Body> {
        let mut headers = self.headers.clone();
        let grpc_te = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let websocket = is_websocket(&headers);
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        if websocket {
            // The upgrade is asked of the next hop too (HTTP/1.1 only).
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| self.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let (uri, version) = match protocol {
            Protocol::Http2 => {
                headers.remove(header::HOST);
                if grpc_te {
                    headers.insert(header::TE, HeaderValue::from_static("trailers"));
                }
                (
                    format!("http://{host}{path}")
                        .parse()
                        .unwrap_or_else(|_| self.uri.clone()),
                    http::Version::HTTP_2,
                )
            }
            Protocol::Http1 | Protocol::Tcp => {
                if let Ok(v) = HeaderValue::from_str(&host) {
                    headers.insert(header::HOST, v);
                }
                (
                    path.parse().unwrap_or_else(|_| self.uri.clone()),
                    http::Version::HTTP_11,
                )
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        request
    }
}

/// The response as the client gets it: hop-by-hop headers left out (but those of a 101,
/// which the client needs to see its upgrade accepted).
fn downstream_response(response: Response<hyper::body::Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
    }
    Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// Sends `request` as `forward` says.
pub(crate) async fn forward(
    inner: &Arc<Inner>,
    forward: Forward,
    request: Request<Body>,
) -> Outcome {
    let (parts, body) = request.into_parts();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    };
    let replay = forward.retry.is_some() || !forward.mirrors.is_empty();
    // A body sent more than once is read whole first.
    let mut forward = forward;
    let mut upgrade = forward.upgrade.take();
    let (body, replayable) = if replay {
        match read_whole(body, MAX_REPLAYED_BODY).await {
            Ok(bytes) => (full(bytes.clone()), Some(bytes)),
            Err(err) => {
                tracing::debug!(%err, "request body not read whole");
                return Outcome::Failed {
                    response: local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
                    flags: "DI",
                    upstream: None,
                };
            }
        }
    } else {
        (body, None)
    };
    if let Some(bytes) = &replayable {
        mirror(inner, &forward, &head, bytes);
    }
    let attempts = async {
        let mut body = Some(body);
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            let retries_left = forward.retry.as_ref().is_some_and(|r| tries <= r.attempts);
            let this_body = match (body.take(), &replayable) {
                (Some(b), _) => b,
                (None, Some(bytes)) => full(bytes.clone()),
                (None, None) => full(Bytes::new()),
            };
            // An upgrade is tried once: its client side cannot be handed out twice.
            let outcome = attempt(inner, &forward, &head, this_body, upgrade.take()).await;
            let retry = match &outcome {
                Outcome::Answered { response, .. } => forward
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.codes.contains(&u32::from(response.status().as_u16()))),
                // Connection failures and per-try timeouts are retried whenever a retry
                // stanza exists; a Service with no endpoint is not a connection failure.
                Outcome::Failed { flags, .. } => forward.retry.is_some() && *flags != "UH",
            };
            if !(retry && retries_left) {
                return outcome;
            }
            let backoff = forward.retry.as_ref().map_or(0, |r| r.backoff_ms).max(1);
            tracing::debug!(tries, "retrying");
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
    };
    match forward.request_timeout() {
        None => attempts.await,
        Some(limit) => match tokio::time::timeout(limit, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed {
                response: local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
                flags: "UT",
                upstream: None,
            },
        },
    }
}

/// One try: an endpoint, the request, the per-try timeout.
async fn attempt(
    inner: &Arc<Inner>,
    forward: &Forward,
    head: &Head,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Outcome {
    let target = match target(inner, &forward.to) {
        Ok(t) => t,
        Err(err) => {
            tracing::debug!(%err, "no endpoint");
            return Outcome::Failed {
                response: local(err.status(), "no healthy upstream\n"),
                flags: err.response_flags(),
                upstream: None,
            };
        }
    };
    let protocol = if upgrade.is_some() {
        Protocol::Http1
    } else {
        forward.protocol
    };
    let request = head.request(protocol, body);
    let send = upstream::send(inner, &target, protocol, request);
    let result = match forward.backend_timeout() {
        None => Ok(send.await),
        Some(limit) => tokio::time::timeout(limit, send).await,
    };
    let upstream = Some(target.endpoint.clone());
    match result {
        Ok(Ok(mut response)) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client) = upgrade
            {
                let backend = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(client, backend));
            }
            Outcome::Answered {
                response: downstream_response(response),
                upstream,
            }
        }
        Ok(Err(err)) => {
            tracing::debug!(%err, endpoint = %target.endpoint.name, "backend request failed");
            Outcome::Failed {
                response: local(
                    err.status(),
                    "upstream connect error or disconnect/reset before headers\n",
                ),
                flags: err.response_flags(),
                upstream,
            }
        }
        Err(_) => Outcome::Failed {
            response: local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
            flags: "UT",
            upstream,
        },
    }
}

/// Sends a copy to each mirror whose sample says so; answers are read and dropped.
fn mirror(inner: &Arc<Inner>, forward: &Forward, head: &Head, body: &Bytes) {
    for m in &forward.mirrors {
        let denominator = u64::from(m.denominator.max(1));
        let numerator = u64::from(m.numerator.min(m.denominator.max(1)));
        if inner.seams.entropy.next_u64() % denominator >= numerator {
            continue;
        }
        let Some(backend) = &m.backend else { continue };
        let to = To::Service(
            backend.service.clone(),
            u16::try_from(backend.port).unwrap_or(0),
        );
        let protocol = match Protocol::detect(&backend.app_protocol, &backend.port_name) {
            Protocol::Tcp => forward.protocol,
            p => p,
        };
        let request = head.request(protocol, full(body.clone()));
        let inner = inner.clone();
        tokio::spawn(async move {
            let target = match target(&inner, &to) {
                Ok(t) => t,
                Err(err) => return tracing::debug!(%err, "mirror has no endpoint"),
            };
            match upstream::send(&inner, &target, protocol, request).await {
                Ok(response) => {
                    let _ = response.into_body().collect().await;
                }
                Err(err) => tracing::debug!(%err, "mirror request failed"),
            }
        });
    }
}

/// A body read whole, up to `limit` bytes (trailers are dropped).
async fn read_whole(mut body: Body, limit: usize) -> Result<Bytes, String> {
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > limit {
                return Err(format!("longer than {limit} bytes"));
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(whole.freeze())
}

/// Joins an upgraded client connection to the upgraded backend connection, both ways, until
/// either side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(err) => return tracing::debug!(%err, "upgrade did not complete"),
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut backend = hyper_util::rt::TokioIo::new(backend);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(%err, "upgraded connection ended");
    }
}
