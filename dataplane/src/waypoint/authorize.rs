//! L7 authorization at the waypoint (policy-semantics §2): which policies meet a request,
//! what it is judged on, and how a denial is answered. Service-addressed traffic meets the
//! waypoint's policies and its Service's; workload-addressed traffic only the waypoint's.
//! Policies are read from the current table on every request, so a change applies to the
//! next request of an open connection.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::Inner;
use super::proxy::{Body, Destination, Downstream, full};
use crate::policy::request::{HttpAttributes, RequestContext, RequestPolicy, evaluate};

/// What the access log and the proxy need of one decision.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    /// The decision in one line, when a policy had a say (none: no policy applies).
    pub(crate) summary: Option<String>,
}

/// The policies that apply to traffic for `destination`, as configured now.
pub(crate) fn policies_for(inner: &Inner, destination: &Destination) -> Arc<[RequestPolicy]> {
    let table = inner.routes.borrow();
    match destination {
        Destination::Service(s) => table
            .service(&s.key)
            .map_or_else(|| table.policies.clone(), |bound| bound.policies.clone()),
        Destination::Unbound(_) | Destination::Workload(_) => table.policies.clone(),
    }
}

/// The request's (or, with `http: None`, the connection's) attributes.
pub(crate) fn context<'a>(
    downstream: &'a Downstream,
    http: Option<HttpAttributes<'a>>,
) -> RequestContext<'a> {
    RequestContext {
        identity: downstream.identity.as_ref(),
        principal: downstream.principal.as_deref(),
        source_ip: downstream.peer.ip().to_canonical(),
        destination_ip: downstream.authority.ip(),
        destination_port: downstream.authority.port(),
        http,
    }
}

/// Decides one request or connection.
pub(crate) fn authorize(
    inner: &Inner,
    downstream: &Downstream,
    http: Option<HttpAttributes<'_>>,
) -> Verdict {
    let policies = policies_for(inner, &downstream.destination);
    if policies.is_empty() {
        return Verdict {
            allowed: true,
            summary: None,
        };
    }
    let decision = evaluate(&context(downstream, http), &policies);
    let summary = decision.summary(&policies);
    if !decision.allowed {
        tracing::debug!(src.addr = %downstream.peer, dst.hbone_addr = %downstream.authority, reason = %summary, "request denied by authorization policy");
    }
    Verdict {
        allowed: decision.allowed,
        summary: Some(summary),
    }
}

/// Envoy's answer to a denied request: `403 RBAC: access denied`, or for gRPC the status
/// PERMISSION_DENIED (7) with the same message.
pub(crate) fn denied(grpc: bool) -> Response<Body> {
    const MESSAGE: &str = "RBAC: access denied";
    if grpc {
        let mut response = Response::new(full(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(7u32));
        headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
        return response;
    }
    let mut response = Response::new(full(Bytes::from_static(MESSAGE.as_bytes())));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
