//! HBONE into the waypoint (15008): mTLS with the waypoint's identity, a CONNECT whose
//! authority is the original destination, then HTTP served on the tunnelled stream (or the
//! bytes passed through for a port that does not speak HTTP).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::Instrument;

use super::Inner;
use super::access_log::RequestLog;
use super::authorize::authorize;
use super::proxy::{self, Destination, Downstream};
use super::routes::Protocol;
use super::upstream::{self, Target};
use crate::hbone::{self, H2Io, IncomingConnect, ServerOptions, TraceParent};
use crate::policy::request::{RequestContext, evaluate};
use crate::seams::Accepted;

/// The most request header bytes a client may send (upstream Envoy's default is 60 KiB):
/// more is answered 431 (HTTP/1.1) or refused by HTTP/2's header list limit.
const MAX_REQUEST_HEADERS: usize = 64 * 1024;

/// Serves one accepted connection on 15008.
pub(crate) async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let Accepted {
        stream,
        peer,
        destination,
    } = accepted;
    let identity = inner.config.identity();
    let tls = match inner.certificates.server_config(&identity).await {
        Ok(tls) => tls,
        Err(err) => {
            tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = %err, "connection failed");
            return;
        }
    };
    let options = ServerOptions {
        handshake_timeout: inner.config.mesh.handshake_timeout,
        drain: inner.drain.clone(),
        drain_deadline: inner.config.mesh.drain_deadline,
        tunnels: Some(inner.traffic.clone()),
    };
    let handler_inner = inner.clone();
    let handler = move |incoming: IncomingConnect| {
        let inner = handler_inner.clone();
        async move {
            let trace = TraceParent::adopt(&incoming.request.headers, &inner.seams.entropy);
            let span = tracing::info_span!("waypoint", id = %trace);
            handle_connect(inner, incoming).instrument(span).await
        }
    };
    if let Err(err) =
        hbone::serve_connection(stream, peer, destination, tls, options, handler).await
    {
        tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = %err, "connection failed");
    }
}

/// Where the authority points, and what is spoken there.
pub(crate) fn resolve(inner: &Inner, authority: SocketAddr) -> Option<(Destination, Protocol)> {
    let table = inner.routes.borrow().clone();
    if let Some(service) = table.service_by_vip(authority.ip()) {
        let protocol = service
            .ports
            .get(&authority.port())
            .map_or(Protocol::Tcp, |p| p.protocol);
        return Some((Destination::Service(service.clone()), protocol));
    }
    let network = &inner.config.mesh.network;
    if let Some(service) = inner
        .state
        .read(|s| s.service_by_vip(network, authority.ip()))
    {
        return Some((Destination::Unbound(service), Protocol::Tcp));
    }
    let workload = inner
        .state
        .read(|s| s.workload_by_ip(network, authority.ip()))?;
    Some((Destination::Workload(workload), Protocol::Tcp))
}

async fn handle_connect(inner: Arc<Inner>, incoming: IncomingConnect) {
    let request = incoming.request.clone();
    let refuse = |incoming: IncomingConnect, status: StatusCode, reason: &str| {
        tracing::warn!(src.addr = %request.peer, dst.hbone_addr = %request.authority, direction = "inbound", status = status.as_u16(), error = %reason, "connection failed");
        incoming.refuse(status);
    };
    let Ok(authority) = request.authority.parse::<SocketAddr>() else {
        return refuse(
            incoming,
            StatusCode::BAD_REQUEST,
            "authority is not ip:port",
        );
    };
    let authority = SocketAddr::new(authority.ip().to_canonical(), authority.port());
    let Some((destination, protocol)) = resolve(&inner, authority) else {
        return refuse(
            incoming,
            StatusCode::BAD_REQUEST,
            "authority is neither a Service bound to this waypoint nor a known workload",
        );
    };
    // Layered policies (selector policies on the waypoint's own pods): the connection as a
    // whole, before it is routed; refused like a ztunnel refuses (401 to the CONNECT).
    let layered = inner.routes.borrow().layered.clone();
    if !layered.is_empty() {
        let principal = request.peer_identity.as_ref().map(|i| i.principal());
        let ctx = RequestContext {
            identity: request.peer_identity.as_ref(),
            principal: principal.as_deref(),
            source_ip: request.peer.ip().to_canonical(),
            destination_ip: authority.ip(),
            destination_port: authority.port(),
            http: None,
        };
        let decision = evaluate(&ctx, &layered);
        if !decision.allowed {
            let reason = decision.summary(&layered);
            return refuse(
                incoming,
                StatusCode::UNAUTHORIZED,
                &format!("layered authorization: {reason}"),
            );
        }
    }
    let source = inner
        .state
        .read(|s| s.workload_by_ip(&inner.config.mesh.network, request.peer.ip()));
    let downstream = Arc::new(Downstream {
        peer: request.peer,
        identity: request.peer_identity.clone(),
        principal: request.peer_identity.as_ref().map(|i| i.principal()),
        source,
        authority,
        destination,
        protocol,
    });
    let stream = match incoming.accept(HeaderMap::new()) {
        Ok(s) => H2Io::new(s),
        Err(err) => return tracing::debug!(%err, "peer went away before the 200"),
    };
    match protocol {
        Protocol::Tcp => passthrough(&inner, &downstream, stream).await,
        Protocol::Http1 | Protocol::Http2 => serve_http(inner, downstream, stream).await,
    }
}

/// Serves HTTP on the tunnelled stream, each request through [`proxy::handle`].
async fn serve_http(inner: Arc<Inner>, downstream: Arc<Downstream>, stream: H2Io) {
    let io = TokioIo::new(stream);
    let service_inner = inner.clone();
    let service_downstream = downstream.clone();
    let service =
        hyper::service::service_fn(move |request| {
            let future: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(
                serve_request(service_inner.clone(), service_downstream.clone(), request),
            );
            future
        });
    let result = match downstream.protocol {
        Protocol::Http2 => {
            // No Date header of hyper's own: it would read the host's wall clock, past the
            // clock seam (and differ between two runs of one seed in the simulator).
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .max_header_list_size(MAX_REQUEST_HEADERS as u32)
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .header_read_timeout(inner.config.mesh.handshake_timeout)
                .max_buf_size(MAX_REQUEST_HEADERS)
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    if let Err(err) = result {
        tracing::debug!(src.addr = %downstream.peer, %err, "HTTP connection ended with an error");
    }
}

/// One request: routed, answered, logged and counted.
async fn serve_request(
    inner: Arc<Inner>,
    downstream: Arc<Downstream>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<proxy::Body>, FaultReset> {
    let started = tokio::time::Instant::now();
    let log = RequestLog::begin(&request);
    let in_flight = InFlight::enter(&inner);
    let (response, handled) = proxy::handle(inner.clone(), downstream.clone(), request).await;
    drop(in_flight);
    log.finish(&inner, &downstream, &response, &handled, started.elapsed());
    if handled.reset {
        // An error from the service makes hyper reset the stream (HTTP/2) or close the
        // connection (HTTP/1.1): what the client of a reset fault sees.
        return Err(FaultReset);
    }
    Ok(response)
}

/// Counts a request in flight for as long as it lives, even when its client goes away and
/// its future is dropped.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn enter(inner: &Arc<Inner>) -> Self {
        inner
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A fault asked for the request's stream to be reset.
#[derive(Debug, thiserror::Error)]
#[error("fault injected: stream reset")]
struct FaultReset;

/// A port that does not speak HTTP: authorized once as a connection (HTTP-only attributes
/// as on Envoy's TCP chain), then the bytes go to the addressed Service or workload. When
/// the configuration changes the connection is judged again, and closed if now denied.
async fn passthrough(inner: &Arc<Inner>, downstream: &Downstream, stream: H2Io) {
    let verdict = authorize(inner, downstream, None);
    if !verdict.allowed {
        let authorization = verdict.summary.as_deref().unwrap_or_default();
        tracing::info!(
            target: "access",
            "src.addr={} dst.hbone_addr={} authorization={authorization:?} response_flags=RBAC connection denied",
            downstream.peer,
            downstream.authority
        );
        return;
    }
    let target = match &downstream.destination {
        Destination::Service(s) => upstream::choose(inner, &s.key, downstream.authority.port()),
        Destination::Unbound(s) => upstream::choose(inner, &s.key(), downstream.authority.port()),
        Destination::Workload(w) => Ok(Target {
            endpoint: w.clone(),
            port: downstream.authority.port(),
            service: None,
        }),
    };
    let mut changes = inner.routes.subscribe();
    let result = match target {
        Ok(target) => match upstream::open_stream(inner, &target).await {
            Ok(mut up) => {
                let mut down = stream;
                let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
                tokio::pin!(copy);
                loop {
                    tokio::select! {
                        done = &mut copy => break done.map(|_| ()).map_err(|e| e.to_string()),
                        changed = changes.changed() => {
                            if changed.is_err() {
                                break Ok(());
                            }
                            let verdict = authorize(inner, downstream, None);
                            if !verdict.allowed {
                                tracing::info!(src.addr = %downstream.peer, dst.hbone_addr = %downstream.authority, authorization = verdict.summary.as_deref().unwrap_or_default(), "connection closed because it's no longer allowed after a policy update");
                                break Ok(());
                            }
                        }
                    }
                }
            }
            Err(err) => Err(err.to_string()),
        },
        Err(err) => Err(err.to_string()),
    };
    if let Err(error) = result {
        tracing::warn!(src.addr = %downstream.peer, dst.hbone_addr = %downstream.authority, %error, "TCP passthrough failed");
    }
}
