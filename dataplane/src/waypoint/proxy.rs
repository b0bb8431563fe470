//! One request through the waypoint: find the route entry, apply its filters in order, pick
//! a backend by weight, forward (with the entry's timeouts, retries and mirrors), and shape
//! the answer. Everything the spec makes the proxy answer itself is answered here: 404 when
//! nothing matches, 500 for an invalid backend's share or a filter that cannot be applied,
//! redirects, and CORS preflights.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::Inner;
use super::authorize::{authorize, denied};
use super::filters::{
    CorsOutcome, RedirectFrom, cors, matched_prefix, modify_headers, redirect, rewrite_path,
    split_query,
};
use super::forward::{self, Forward, Outcome};
use super::routes::{BoundService, Protocol, RequestView};
use crate::identity::Identity;
use crate::policy::request::{HttpAttributes, normalize};
use crate::state::Workload;
use crate::xds::proto::ambient::waypoint::{self as pb, BackendError, filter};

pub(crate) use super::upstream::{Body, BoxError};

/// Where the client's CONNECT pointed.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    Service(Arc<BoundService>),
    /// A Service this waypoint does not (yet) carry: while a binding propagates, a client's
    /// ztunnel can learn of it before the waypoint does. Its bytes go to the Service as
    /// addressed, so the change costs no request.
    Unbound(Arc<crate::state::Service>),
    Workload(Arc<Workload>),
}

/// What the waypoint knows of the HBONE stream a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct Downstream {
    pub(crate) peer: SocketAddr,
    pub(crate) identity: Option<Identity>,
    /// `identity`'s principal (`<td>/ns/<ns>/sa/<sa>`), for policies, made once.
    pub(crate) principal: Option<String>,
    pub(crate) source: Option<Arc<Workload>>,
    /// The CONNECT authority: the original destination.
    pub(crate) authority: SocketAddr,
    pub(crate) destination: Destination,
    pub(crate) protocol: Protocol,
}

impl Downstream {
    fn grpc(&self, request: &HeaderMap) -> bool {
        request
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
    }
}

/// A response the waypoint makes itself.
pub(crate) fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed()
}

/// A gRPC status as a trailers-only answer: HTTP 200 with `grpc-status` and no body.
fn grpc_status(code: u32) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    response
}

/// gRPC's answer for "no such method": `grpc-status: 12` (UNIMPLEMENTED).
fn grpc_unimplemented() -> Response<Body> {
    let mut response = grpc_status(12);
    response
        .headers_mut()
        .insert("grpc-message", HeaderValue::from_static("no route matched"));
    response
}

/// Whether this request falls in `fraction` (unset: every request), drawn from the
/// entropy seam so a seed replays the same choices.
fn sampled(inner: &Inner, fraction: Option<&pb::Fraction>) -> bool {
    let Some(f) = fraction else {
        return true;
    };
    let denominator = if f.denominator == 0 {
        100
    } else {
        f.denominator
    };
    inner.seams.entropy.next_u64() % u64::from(denominator) < u64::from(f.numerator)
}

/// What one request's telemetry says about how it was handled.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// The route entry that matched, for the access log.
    pub(crate) route: Option<String>,
    /// Envoy-style response flags (`NR` no route, `UH`, `UF`, `UT`, `FI` fault abort, `DI`
    /// fault delay…), empty when none.
    pub(crate) flags: &'static str,
    /// A fault asked for the client's stream to be reset instead of answered.
    pub(crate) reset: bool,
    pub(crate) upstream: Option<Arc<Workload>>,
    pub(crate) service: Option<(String, String, String)>,
    /// The authorization decision in one line, when a policy applied.
    pub(crate) authorization: Option<String>,
}

/// Routes and answers one request.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    downstream: Arc<Downstream>,
    request: Request<Incoming>,
) -> (Response<Body>, Handled) {
    let mut handled = Handled::default();
    // Request framing is hyper's: a request with both Content-Length and Transfer-Encoding
    // is read by Transfer-Encoding alone, its Content-Length dropped, and the connection
    // closed after the answer (RFC 9112 §6.1, §6.3), so nothing smuggled behind it is read;
    // two different Content-Lengths are a 400. What goes to the backend is framed anew.
    // A WebSocket (HTTP/1.1 Upgrade) keeps the client's side of the upgrade, to be spliced
    // to the backend's once it answers 101.
    let mut request = request;
    let upgrade =
        super::forward::is_websocket(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let body: Body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    let grpc = downstream.grpc(&parts.headers);
    // One normalized path for authorization, routing and the backend alike: a policy
    // judges what the backend will see (`/public/../admin` is `/admin` to all three).
    if let Cow::Owned(normalized) = normalize(parts.uri.path()) {
        let target = match parts.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        match target.parse() {
            Ok(p) => uri.path_and_query = Some(p),
            Err(_) => return (local(StatusCode::BAD_REQUEST, "bad path\n"), handled),
        }
        match http::Uri::from_parts(uri) {
            Ok(u) => parts.uri = u,
            Err(_) => return (local(StatusCode::BAD_REQUEST, "bad path\n"), handled),
        }
    }
    if let Destination::Service(s) = &downstream.destination {
        handled.service = Some((s.hostname.clone(), s.namespace.clone(), s.name.clone()));
    }
    let verdict = {
        let host = request_host(&parts, downstream.authority);
        let http = HttpAttributes {
            method: parts.method.as_str(),
            host: &host,
            path: parts.uri.path(),
            headers: &parts.headers,
        };
        authorize(&inner, &downstream, Some(http))
    };
    handled.authorization = verdict.summary;
    if !verdict.allowed {
        handled.flags = "RBAC";
        return (denied(grpc), handled);
    }
    let (service, port) = match &downstream.destination {
        Destination::Service(s) => (Some(s.clone()), s.ports.get(&downstream.authority.port())),
        Destination::Workload(_) | Destination::Unbound(_) => (None, None),
    };
    let client_namespace = downstream
        .identity
        .as_ref()
        .map(|i| i.namespace.clone())
        .unwrap_or_default();
    let rules = port.and_then(|p| p.rules_for(&client_namespace));
    let target_protocol = port.map_or(downstream.protocol, |p| p.protocol);
    let Some(rules) = rules else {
        // No route attaches: the request goes where it was addressed.
        let forward = match (&downstream.destination, &service) {
            (Destination::Service(_), Some(s)) => Forward::service(
                s.key.clone(),
                downstream.authority.port(),
                http_protocol(target_protocol, downstream.protocol),
            ),
            (Destination::Unbound(s), _) => {
                Forward::service(s.key(), downstream.authority.port(), downstream.protocol)
            }
            _ => Forward::workload(
                downstream.authority,
                http_protocol(target_protocol, downstream.protocol),
            ),
        };
        let mut forward = forward;
        forward.upgrade = upgrade;
        let request = Request::from_parts(parts, body);
        return finish(&inner, &downstream, forward, request, handled).await;
    };
    let uri = parts.uri.clone();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let (path, query) = split_query(path_and_query);
    let view = RequestView {
        method: &parts.method,
        path,
        query,
        headers: &parts.headers,
    };
    let Some(rule) = rules.find(&view).cloned() else {
        handled.flags = "NR";
        let response = if grpc {
            grpc_unimplemented()
        } else {
            local(StatusCode::NOT_FOUND, "no route matched\n")
        };
        return (response, handled);
    };
    handled.route = Some(rule.describe());
    let matcher = match &rule.matcher {
        Ok(m) => m,
        Err(_) => {
            handled.flags = "NR";
            return (
                local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "route cannot be applied\n",
                ),
                handled,
            );
        }
    };
    let prefix = matched_prefix(matcher).map(str::to_string);
    let mut plan = Plan::default();
    let host = request_host(&parts, downstream.authority);
    let mut new_path = path.to_string();
    let query = query.map(str::to_string);
    // Rule-level filters, in listed order.
    for f in &rule.entry.filters {
        match apply_filter(
            f,
            &mut parts.headers,
            &parts.method,
            &mut plan,
            &mut new_path,
            prefix.as_deref(),
        ) {
            Step::Continue => {}
            Step::Answer(response) => return (response, handled),
            Step::Redirect(r) => {
                let from = RedirectFrom {
                    scheme: "http",
                    host: host_without_port(&host),
                    path: &new_path,
                    query: query.as_deref(),
                    port: downstream.authority.port(),
                };
                let (status, location) = redirect(&r, &from, prefix.as_deref());
                let mut response = local(status, "");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                plan.shape(&mut response);
                return (response, handled);
            }
        }
    }
    // Faults: a delay before forwarding, or an answer instead of it.
    for fault in &plan.faults {
        if let Some(delay) = &fault.delay
            && sampled(&inner, delay.percentage.as_ref())
        {
            handled.flags = "DI";
            tokio::time::sleep(std::time::Duration::from_millis(delay.fixed_delay_ms)).await;
        }
        if let Some(abort) = &fault.abort
            && sampled(&inner, abort.percentage.as_ref())
        {
            handled.flags = "FI";
            let response = match abort.error {
                Some(pb::fault_abort::Error::GrpcStatus(code)) => grpc_status(code),
                Some(pb::fault_abort::Error::Reset(_)) => {
                    handled.reset = true;
                    local(StatusCode::SERVICE_UNAVAILABLE, "fault injected: reset\n")
                }
                Some(pb::fault_abort::Error::HttpStatus(code)) => local(
                    u16::try_from(code)
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    "fault filter abort\n",
                ),
                None => local(StatusCode::SERVICE_UNAVAILABLE, "fault filter abort\n"),
            };
            let mut response = response;
            plan.shape(&mut response);
            return (response, handled);
        }
    }
    // A backend by weight; weight 0 never, an invalid one answers 500 for its share.
    let backends: Vec<&pb::Backend> = rule.entry.backends.iter().collect();
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let Some(index) = inner.seams.entropy.weighted_index(&weights) else {
        let mut response = local(StatusCode::INTERNAL_SERVER_ERROR, "no backend\n");
        plan.shape(&mut response);
        return (response, handled);
    };
    let backend = backends[index];
    if backend.error() != BackendError::None {
        let mut response = local(StatusCode::INTERNAL_SERVER_ERROR, "invalid backend\n");
        plan.shape(&mut response);
        return (response, handled);
    }
    for f in &backend.filters {
        match apply_filter(
            f,
            &mut parts.headers,
            &parts.method,
            &mut plan,
            &mut new_path,
            prefix.as_deref(),
        ) {
            Step::Continue => {}
            Step::Answer(response) => return (response, handled),
            Step::Redirect(_) => {
                return (
                    local(StatusCode::INTERNAL_SERVER_ERROR, "redirect on a backend\n"),
                    handled,
                );
            }
        }
    }
    // The request as the backend sees it.
    let mut target = new_path;
    if let Some(q) = &query {
        target.push('?');
        target.push_str(q);
    }
    if let Ok(pq) = target.parse::<http::uri::PathAndQuery>() {
        let mut uri_parts = parts.uri.clone().into_parts();
        uri_parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(uri_parts) {
            parts.uri = uri;
        }
    }
    if let Some(h) = &plan.host {
        if let Ok(v) = HeaderValue::from_str(h) {
            parts.headers.insert(header::HOST, v);
        }
    } else if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(header::HOST, v);
    }
    let protocol = http_protocol(
        Protocol::detect(&backend.app_protocol, &backend.port_name),
        downstream.protocol,
    );
    let port = u16::try_from(backend.port).unwrap_or(0);
    let mut forward = Forward::service(backend.service.clone(), port, protocol);
    forward.timeouts = rule.entry.timeouts;
    forward.default_request_timeout = inner.config.default_request_timeout;
    forward.retry = rule.entry.retry.clone();
    forward.mirrors = plan.mirrors.clone();
    forward.upgrade = upgrade;
    let request = Request::from_parts(parts, body);
    let (mut response, handled) = finish(&inner, &downstream, forward, request, handled).await;
    plan.shape(&mut response);
    (response, handled)
}

/// Forwards and records how it went.
async fn finish(
    inner: &Arc<Inner>,
    downstream: &Downstream,
    forward: Forward,
    request: Request<Body>,
    mut handled: Handled,
) -> (Response<Body>, Handled) {
    let _ = downstream;
    match forward::forward(inner, forward, request).await {
        Outcome::Answered { response, upstream } => {
            handled.upstream = upstream;
            (response, handled)
        }
        Outcome::Failed {
            response,
            flags,
            upstream,
        } => {
            handled.flags = flags;
            handled.upstream = upstream;
            (response, handled)
        }
    }
}

/// What the backend is spoken to in: the port's HTTP protocol, or the client's when the
/// port declares none.
fn http_protocol(declared: Protocol, downstream: Protocol) -> Protocol {
    match declared {
        Protocol::Tcp => downstream,
        p => p,
    }
}

/// The Host the client asked for: the Host header, the URI's authority (HTTP/2), or the
/// address dialled.
fn request_host(parts: &http::request::Parts, authority: SocketAddr) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| authority.to_string())
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// What the filters decided beyond the request itself.
#[derive(Default)]
struct Plan {
    host: Option<String>,
    mirrors: Vec<pb::RequestMirror>,
    response_modifiers: Vec<pb::HeaderModifier>,
    cors: HeaderMap,
    faults: Vec<pb::FaultInjection>,
}

impl Plan {
    /// Response header modifiers and CORS headers, on any answer.
    fn shape(&self, response: &mut Response<Body>) {
        for m in &self.response_modifiers {
            modify_headers(response.headers_mut(), m);
        }
        for (name, value) in &self.cors {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

enum Step {
    Continue,
    Answer(Response<Body>),
    Redirect(pb::RequestRedirect),
}

fn apply_filter(
    f: &pb::Filter,
    headers: &mut HeaderMap,
    method: &http::Method,
    plan: &mut Plan,
    path: &mut String,
    prefix: Option<&str>,
) -> Step {
    match &f.kind {
        Some(filter::Kind::RequestHeaderModifier(m)) => modify_headers(headers, m),
        Some(filter::Kind::ResponseHeaderModifier(m)) => plan.response_modifiers.push(m.clone()),
        Some(filter::Kind::RequestRedirect(r)) => return Step::Redirect(r.clone()),
        Some(filter::Kind::UrlRewrite(u)) => {
            if !u.hostname.is_empty() {
                plan.host = Some(u.hostname.clone());
            }
            if let Some(m) = &u.path {
                *path = rewrite_path(path, prefix, m);
            }
        }
        Some(filter::Kind::RequestMirror(m)) => plan.mirrors.push(m.clone()),
        Some(filter::Kind::Cors(c)) => match cors(c, method, headers) {
            CorsOutcome::Preflight(answer) => {
                let mut response = local(StatusCode::OK, "");
                *response.headers_mut() = answer;
                return Step::Answer(response);
            }
            CorsOutcome::Actual(add) => plan.cors = add,
            CorsOutcome::NotCors => {}
        },
        Some(filter::Kind::Fault(f)) => plan.faults.push(*f),
        Some(filter::Kind::Unsupported(what)) => {
            tracing::debug!(filter = %what, "filter cannot be applied; answering 500");
            return Step::Answer(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route filter cannot be applied\n",
            ));
        }
        None => {}
    }
    Step::Continue
}
