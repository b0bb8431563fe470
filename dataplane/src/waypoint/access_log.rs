//! One access-log line per request (tracing target `access`), and the request metrics.

use std::fmt::Write as _;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;

use super::Inner;
use super::metrics::RequestTraffic;
use super::proxy::{Body, Downstream, Handled};

/// What is known of a request before it is routed.
pub(crate) struct RequestLog {
    method: http::Method,
    path: String,
    request_bytes: u64,
    grpc: bool,
}

impl RequestLog {
    pub(crate) fn begin<B: http_body::Body>(request: &Request<B>) -> Self {
        RequestLog {
            method: request.method().clone(),
            path: request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            request_bytes: request.body().size_hint().exact().unwrap_or(0),
            grpc: request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        }
    }

    pub(crate) fn finish(
        self,
        inner: &Inner,
        downstream: &Downstream,
        response: &Response<Body>,
        handled: &Handled,
        duration: Duration,
    ) {
        let status = response.status().as_u16();
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok());
        let response_bytes = response.body().size_hint().exact().unwrap_or(0);
        let service = handled
            .service
            .as_ref()
            .map(|(h, n, s)| (h.as_str(), n.as_str(), s.as_str()));
        let labels = RequestTraffic {
            source: downstream.source.as_deref(),
            source_identity: downstream.identity.as_ref(),
            service,
            destination: handled.upstream.as_deref(),
            grpc: self.grpc,
            status,
            grpc_status,
            response_flags: handled.flags,
        }
        .labels();
        inner.metrics.record(
            &labels,
            duration.as_secs_f64() * 1000.0,
            self.request_bytes,
            response_bytes,
        );
        let mut fields = String::new();
        let _ = write!(fields, "src.addr={}", downstream.peer);
        if let Some(id) = &downstream.identity {
            let _ = write!(fields, " src.identity={:?}", id.to_string());
        }
        let _ = write!(fields, " dst.hbone_addr={}", downstream.authority);
        if let Some((host, _, _)) = &handled.service {
            let _ = write!(fields, " dst.service={host:?}");
        }
        if let Some(w) = &handled.upstream {
            let _ = write!(fields, " dst.workload={:?}", w.telemetry_name());
        }
        if let Some(route) = &handled.route {
            let _ = write!(fields, " route={route:?}");
        }
        if let Some(authorization) = &handled.authorization {
            let _ = write!(fields, " authorization={authorization:?}");
        }
        let _ = write!(
            fields,
            " method={} path={:?} status={status} response_flags={} duration=\"{}ms\"",
            self.method,
            self.path,
            if handled.flags.is_empty() {
                "-"
            } else {
                handled.flags
            },
            duration.as_millis()
        );
        if status >= 500 {
            tracing::error!(target: "access", "{fields}");
        } else {
            tracing::info!(target: "access", "{fields}");
        }
    }
}
