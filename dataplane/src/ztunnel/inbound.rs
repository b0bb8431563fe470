//! Inbound HBONE (15008): terminate mTLS for the local workload that was dialled, check the
//! CONNECT, authorize it, connect to the workload, and keep the connection under policy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use tracing::Instrument;

use super::Inner;
use super::access_log::{ConnectionLog, Direction};
use super::connections::policy_closed;
use super::metrics::{Reporter, Traffic};
use super::outbound::baggage;
use crate::hbone::{
    self, Authority, ByteCounts, Counted, IncomingConnect, ServerOptions, TraceParent,
    forwarded_host,
};
use crate::policy::{ConnectionContext, evaluate};
use crate::seams::Accepted;
use crate::state::{Service, TunnelProtocol, Workload};

/// Serves one accepted connection on 15008.
pub(crate) async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let Accepted {
        stream,
        peer,
        destination,
    } = accepted;
    let workload = inner
        .state
        .read(|state| inner.local_workload(state, destination.ip()));
    let Some(workload) = workload.filter(|w| w.protocol == TunnelProtocol::Hbone) else {
        tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = "no local HBONE workload at the dialled address", "connection failed");
        return;
    };
    let tls = match inner.certificates.server_config(&workload.identity()).await {
        Ok(tls) => tls,
        Err(err) => {
            tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = %err, "connection failed");
            return;
        }
    };
    let options = ServerOptions {
        handshake_timeout: inner.config.handshake_timeout,
        drain: inner.drain.clone(),
        drain_deadline: inner.config.drain_deadline,
        tunnels: Some(inner.traffic.clone()),
    };
    let handler_inner = inner.clone();
    let handler = move |incoming: IncomingConnect| {
        let inner = handler_inner.clone();
        let workload = workload.clone();
        async move {
            // Adopt the client side's traceparent as this connection's log id, so one
            // connection's lines on both nodes share it; make one when it is missing or bad.
            let trace = TraceParent::adopt(&incoming.request.headers, &inner.seams.entropy);
            let span = tracing::info_span!("inbound", id = %trace);
            handle_connect(inner, workload, incoming)
                .instrument(span)
                .await
        }
    };
    if let Err(err) =
        hbone::serve_connection(stream, peer, destination, tls, options, handler).await
    {
        let labels = Traffic {
            reporter: Reporter::Destination,
            source: None,
            source_identity: None,
            destination: None,
            destination_identity: None,
            service: None,
            response_flags: "TLS_FAILURE",
            mutual_tls: false,
        }
        .labels();
        inner.metrics.failed.get_or_create(&labels).inc();
        tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = %err, "connection failed");
    }
}

/// Where a CONNECT's authority points on this workload.
enum Target {
    Port(u16, Option<Arc<Service>>),
    Refuse(StatusCode, String),
}

fn resolve_target(
    inner: &Inner,
    workload: &Workload,
    authority: &str,
    dialled: SocketAddr,
) -> Target {
    let (host, port) = match Authority::parse(authority) {
        Some(Authority::Address(addr)) => {
            if addr.ip() != dialled.ip() {
                return Target::Refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "authority {authority} does not match the dialled address {}",
                        dialled.ip()
                    ),
                );
            }
            return Target::Port(addr.port(), None);
        }
        // A hostname authority names a service this workload backs.
        Some(Authority::Host(host, port)) => (host, port),
        None => {
            return Target::Refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed authority {authority}"),
            );
        }
    };
    match workload_service(inner, workload, host) {
        Some(s) => {
            let mapped = workload
                .services
                .get(&s.key())
                .and_then(|p| p.get(&port))
                .or_else(|| s.ports.get(&port))
                .copied()
                .filter(|p| *p != 0);
            match mapped {
                Some(target) => Target::Port(target, Some(s)),
                None => Target::Refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("service {host} has no port {port}"),
                ),
            }
        }
        None => Target::Refuse(
            StatusCode::BAD_REQUEST,
            format!("{host} is not a service of this workload"),
        ),
    }
}

/// The service named `host` among those `workload` backs.
fn workload_service(inner: &Inner, workload: &Workload, host: &str) -> Option<Arc<Service>> {
    inner.state.read(|state| {
        workload
            .services
            .keys()
            .filter_map(|key| state.service(key))
            .find(|s| s.hostname == host)
    })
}

async fn handle_connect(inner: Arc<Inner>, workload: Arc<Workload>, incoming: IncomingConnect) {
    let started = tokio::time::Instant::now();
    // The workload as the state has it now, not as it was when this pooled HBONE connection
    // was accepted: its selector-scoped policies may have changed since.
    let workload = inner
        .state
        .read(|state| state.workload(&workload.uid))
        .unwrap_or(workload);
    let request = incoming.request.clone();
    let peer = request.peer;
    let refuse = |incoming: IncomingConnect, status: StatusCode, flags: &str, reason: &str| {
        tracing::warn!(src.addr = %peer, src.identity = ?request.peer_identity.as_ref().map(ToString::to_string), dst.hbone_addr = %request.authority, direction = "inbound", status = status.as_u16(), error = %reason, "connection failed");
        let labels = Traffic {
            reporter: Reporter::Destination,
            source: None,
            source_identity: request.peer_identity.as_ref(),
            destination: Some(&workload),
            destination_identity: None,
            service: None,
            response_flags: flags,
            mutual_tls: true,
        }
        .labels();
        inner.metrics.failed.get_or_create(&labels).inc();
        incoming.refuse(status);
    };

    let (port, service) =
        match resolve_target(&inner, &workload, &request.authority, request.destination) {
            Target::Port(port, service) => (port, service),
            Target::Refuse(status, reason) => return refuse(incoming, status, "CONNECT", &reason),
        };
    // An address authority names no service; the client's `forwarded: …;host=` says which one
    // it dialled, for telemetry only (the port stays the authority's).
    let service = service.or_else(|| {
        let host = request
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(forwarded_host)?;
        workload_service(&inner, &workload, host)
    });
    let destination_ip = request.destination.ip();
    // Upstream refuses its traffic ports on any workload (a self-call); a target where one of
    // this ztunnel's own listeners answers (admin, metrics, readiness) is refused too.
    if inner.config.ports.proxy_ports().contains(&port)
        || inner
            .addresses
            .reached_by(SocketAddr::new(destination_ip, port))
    {
        return refuse(
            incoming,
            StatusCode::SERVICE_UNAVAILABLE,
            "CONNECT",
            &format!("port {port} is one of this proxy's own ports"),
        );
    }
    let context = ConnectionContext {
        source_identity: request.peer_identity.clone(),
        source_ip: peer.ip(),
        destination_ip,
        destination_port: port,
    };
    let decision = inner.state.read(|state| {
        let policies = state.policies_for(&workload);
        evaluate(&context, policies.iter().map(|p| &**p))
    });
    if !decision.allowed() {
        return refuse(
            incoming,
            StatusCode::UNAUTHORIZED,
            "DENY",
            &decision.to_string(),
        );
    }
    tracing::debug!(src.addr = %peer, %decision, "inbound connection authorized");
    let tracked = inner.tracker.register(context, workload.uid.clone());
    let target = SocketAddr::new(destination_ip, port);
    // From the client's own address where this host can (wire facts §4.5 step 6: upstream
    // spoofs the source when it can), so the workload sees who called it; the network seam
    // falls back to the host's address. In-pod, the connection is made inside the
    // destination pod's namespace.
    let upstream = match inner
        .seams
        .network
        .connect_from_pod(target.ip(), Some(peer.ip()), target)
        .await
    {
        Ok(s) => s,
        Err(err) => {
            return refuse(
                incoming,
                StatusCode::SERVICE_UNAVAILABLE,
                "CONNECT",
                &format!("connect to {target} failed: {err}"),
            );
        }
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&baggage(&workload)) {
        headers.insert("baggage", v);
    }
    let stream = match incoming.accept(headers) {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(%err, "peer went away before the 200");
            return;
        }
    };
    let source = request.peer_identity.as_ref().and_then(|_| {
        inner
            .state
            .read(|s| s.workload_by_ip(&inner.config.network, peer.ip()))
    });
    let destination_identity = workload.identity();
    let labels = Traffic {
        reporter: Reporter::Destination,
        source: source.as_deref(),
        source_identity: request.peer_identity.as_ref(),
        destination: Some(&workload),
        destination_identity: Some(&destination_identity),
        service: service.as_deref(),
        response_flags: "-",
        mutual_tls: true,
    }
    .labels();
    inner.metrics.opened.get_or_create(&labels).inc();

    let counts = Arc::new(ByteCounts::default());
    let mut closed = tracked.closed.clone();
    let mut terminate = inner.terminate.clone();
    let result = tokio::select! {
        biased;
        () = super::signalled(&mut terminate) => Err("proxy terminated".to_string()),
        reason = policy_closed(&mut closed) => Err(format!("closed by policy change: {reason}")),
        r = hbone::copy_bidirectional(stream, Counted::new(upstream, counts.clone())) => r.map_err(|e| e.to_string()),
    };
    drop(tracked);
    let error = result.err();
    // Written to the workload came from the client; read from it went back.
    let (received, sent) = (counts.written(), counts.read());
    inner.metrics.closed.get_or_create(&labels).inc();
    inner
        .metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(received);
    inner.metrics.sent_bytes.get_or_create(&labels).inc_by(sent);
    ConnectionLog {
        direction: Direction::Inbound,
        src_addr: peer,
        dst_addr: request.destination,
        hbone_authority: Some(&request.authority),
        source: source.as_deref(),
        source_identity: request.peer_identity.as_ref(),
        destination: Some(&workload),
        destination_identity: Some(&destination_identity),
        service: service.as_deref(),
        bytes_sent: sent,
        bytes_recv: received,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
}
