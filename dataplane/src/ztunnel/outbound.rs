//! Outbound: where a local workload's connection goes (wire facts §4.7) and getting it there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::Inner;
use super::access_log::{ConnectionLog, Direction};
use super::metrics::{Reporter, Traffic};
use crate::hbone::{self, ConnectHeaders, H2Stream, HboneError, PoolKey, Transferred};
use crate::identity::Identity;
use crate::seams::BoxStream;
use crate::state::{
    GatewayAddress, GatewayDestination, Service, State, TunnelProtocol, Workload, WorkloadStatus,
};

/// Why an outbound connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("no local workload has source address {0}")]
    UnknownSource(std::net::IpAddr),
    #[error("destination {0} is a proxy-internal loopback port")]
    Internal(SocketAddr),
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoEndpoint { service: String, port: u16 },
    #[error("waypoint {0} could not be resolved")]
    Waypoint(String),
    #[error("{0}")]
    Hbone(#[from] HboneError),
    #[error("direct connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
}

impl OutboundError {
    /// The `response_flags` value for metrics.
    fn response_flags(&self) -> &'static str {
        match self {
            OutboundError::Hbone(HboneError::Tls(..)) => "TLS_FAILURE",
            OutboundError::Hbone(HboneError::Handshake(..)) => "H2_HANDSHAKE_FAILURE",
            OutboundError::Hbone(HboneError::Request(_)) => "IDENTITY_ERROR",
            OutboundError::Hbone(HboneError::Status { status, .. })
                if *status == http::StatusCode::UNAUTHORIZED =>
            {
                "DENY"
            }
            _ => "CONNECT",
        }
    }
}

/// How the connection will travel.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// HBONE (with this authority and these acceptable identities) or plain TCP.
    hbone: Option<(String, Vec<Identity>)>,
    /// The TCP address to dial: a peer's 15008 for HBONE, the destination itself otherwise.
    next_hop: SocketAddr,
    destination: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
}

fn internal_port(inner: &Inner, port: u16) -> bool {
    let p = inner.config.ports;
    [p.outbound, p.inbound_plaintext, p.inbound, p.socks5].contains(&port)
}

fn target_port(endpoint: &Workload, service: &Service, port: u16) -> Option<u16> {
    let mapped = endpoint
        .services
        .get(&service.key())
        .and_then(|ports| ports.get(&port))
        .or_else(|| service.ports.get(&port))
        .copied()?;
    (mapped != 0).then_some(mapped)
}

fn pick_endpoint(
    inner: &Inner,
    state: &State,
    service: &Service,
    port: u16,
) -> Option<(Arc<Workload>, u16)> {
    let candidates: Vec<(Arc<Workload>, u16)> = state
        .endpoints(&service.key())
        .into_iter()
        .filter(|w| w.status == WorkloadStatus::Healthy && !w.workload_ips.is_empty())
        .filter_map(|w| target_port(&w, service, port).map(|t| (w, t)))
        .collect();
    let weights: Vec<u32> = candidates.iter().map(|(w, _)| w.capacity.max(1)).collect();
    let index = inner.seams.entropy.weighted_index(&weights)?;
    candidates.into_iter().nth(index)
}

/// The waypoint's address and identities, unless the source is that waypoint itself.
fn resolve_waypoint(
    inner: &Inner,
    state: &State,
    waypoint: &GatewayAddress,
    source: &Workload,
) -> Result<Option<(SocketAddr, Vec<Identity>)>, OutboundError> {
    match &waypoint.destination {
        GatewayDestination::Hostname(name) => {
            let key = name.key();
            let service = state
                .service(&key)
                .ok_or_else(|| OutboundError::Waypoint(key.clone()))?;
            if state.endpoints(&key).iter().any(|w| w.uid == source.uid) {
                return Ok(None);
            }
            let (endpoint, port) = pick_endpoint(inner, state, &service, waypoint.hbone_mtls_port)
                .ok_or_else(|| OutboundError::Waypoint(key.clone()))?;
            let mut expected = vec![endpoint.identity()];
            expected.extend(
                service
                    .subject_alt_names
                    .iter()
                    .filter_map(|s| s.parse().ok()),
            );
            Ok(Some((
                SocketAddr::new(endpoint.workload_ips[0], port),
                expected,
            )))
        }
        GatewayDestination::Address(addr) => {
            let endpoint = state
                .workload_by_ip(&addr.network, addr.address)
                .ok_or_else(|| OutboundError::Waypoint(addr.address.to_string()))?;
            if endpoint.uid == source.uid {
                return Ok(None);
            }
            Ok(Some((
                SocketAddr::new(addr.address, waypoint.hbone_mtls_port),
                vec![endpoint.identity()],
            )))
        }
    }
}

/// Decides the route for a connection from `source` to `destination`.
pub(crate) fn route(
    inner: &Inner,
    state: &State,
    source: &Workload,
    destination: SocketAddr,
) -> Result<Route, OutboundError> {
    if destination.ip().is_loopback() && internal_port(inner, destination.port()) {
        return Err(OutboundError::Internal(destination));
    }
    let network = &inner.config.network;
    let authority = destination.to_string();
    if let Some(service) = state.service_by_vip(network, destination.ip()) {
        if let Some(waypoint) = &service.waypoint
            && let Some((next_hop, expected)) = resolve_waypoint(inner, state, waypoint, source)?
        {
            return Ok(Route {
                hbone: Some((authority, expected)),
                next_hop,
                destination: None,
                service: Some(service),
            });
        }
        let (endpoint, port) = pick_endpoint(inner, state, &service, destination.port())
            .ok_or_else(|| OutboundError::NoEndpoint {
                service: service.hostname.clone(),
                port: destination.port(),
            })?;
        return Ok(endpoint_route(endpoint, port, Some(service)));
    }
    if let Some(workload) = state.workload_by_ip(network, destination.ip()) {
        if let Some(waypoint) = &workload.waypoint
            && let Some((next_hop, expected)) = resolve_waypoint(inner, state, waypoint, source)?
        {
            return Ok(Route {
                hbone: Some((authority, expected)),
                next_hop,
                destination: Some(workload),
                service: None,
            });
        }
        return Ok(endpoint_route(workload, destination.port(), None));
    }
    // Unknown destination: passthrough.
    Ok(Route {
        hbone: None,
        next_hop: destination,
        destination: None,
        service: None,
    })
}

fn endpoint_route(endpoint: Arc<Workload>, port: u16, service: Option<Arc<Service>>) -> Route {
    let ip = endpoint.workload_ips[0];
    let hbone = (endpoint.protocol == TunnelProtocol::Hbone).then(|| {
        let mut expected = vec![endpoint.identity()];
        if let Some(s) = &service {
            expected.extend(s.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
        }
        (SocketAddr::new(ip, port).to_string(), expected)
    });
    let next_hop = if hbone.is_some() {
        SocketAddr::new(ip, hbone::HBONE_PORT)
    } else {
        SocketAddr::new(ip, port)
    };
    Route {
        hbone,
        next_hop,
        destination: Some(endpoint),
        service,
    }
}

/// W3C baggage describing a workload, as upstream sends it.
pub(crate) fn baggage(w: &Workload) -> String {
    let kind = if w.workload_type.is_empty() {
        "deployment"
    } else {
        &w.workload_type
    };
    let pairs = [
        ("k8s.cluster.name", w.cluster_id.as_str()),
        ("k8s.namespace.name", w.namespace.as_str()),
        (&format!("k8s.{kind}.name"), w.workload_name.as_str()),
        ("service.name", w.canonical_name.as_str()),
        ("service.version", w.canonical_revision.as_str()),
    ];
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An established upstream: an HBONE stream (holding its pooled connection) or plain TCP.
pub(crate) enum Upstream {
    Hbone(H2Stream, hbone::Lease),
    Direct(BoxStream),
}

/// A connection set up and ready to relay.
pub(crate) struct Established {
    pub(crate) upstream: Upstream,
    route: Route,
    source: Arc<Workload>,
}

/// Finds the source workload and establishes the upstream for `destination`.
pub(crate) async fn establish(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    destination: SocketAddr,
) -> Result<Established, OutboundError> {
    let (source, route) = inner.state.read(|state| {
        let source = inner
            .local_workload(state, peer.ip())
            .ok_or(OutboundError::UnknownSource(peer.ip()))?;
        let route = route(inner, state, &source, destination)?;
        Ok::<_, OutboundError>((source, route))
    })?;
    let upstream = match &route.hbone {
        None => {
            let stream = inner
                .seams
                .network
                .connect(None, route.next_hop)
                .await
                .map_err(|e| OutboundError::Connect(route.next_hop, e))?;
            Upstream::Direct(stream)
        }
        Some((authority, expected)) => {
            let identity = source.identity();
            let key = PoolKey {
                source_identity: identity.clone(),
                expected_identities: expected.clone(),
                destination: route.next_hop,
                source_ip: Some(peer.ip()),
            };
            let lease = inner
                .pool
                .checkout(&key, || async {
                    let tls = inner
                        .certificates
                        .client_config(&identity, expected.clone())
                        .await
                        .map_err(|e| HboneError::Request(e.to_string()))?;
                    hbone::open_connection(
                        &*inner.seams.network,
                        tls,
                        Some(peer.ip()),
                        route.next_hop,
                    )
                    .await
                })
                .await?;
            let headers = ConnectHeaders {
                baggage: baggage(&source),
                forwarded: match &route.service {
                    Some(s) => format!("for=\"{peer}\";host={}", s.hostname),
                    None => format!("for=\"{peer}\""),
                },
                traceparent: format!(
                    "00-{:016x}{:016x}-{:016x}-00",
                    inner.seams.entropy.next_u64(),
                    inner.seams.entropy.next_u64(),
                    inner.seams.entropy.next_u64()
                ),
            };
            let stream = hbone::connect_stream(&lease, authority, &headers).await?;
            Upstream::Hbone(stream, lease)
        }
    };
    Ok(Established {
        upstream,
        route,
        source,
    })
}

/// Relays `downstream` over an established upstream, then records metrics and the access log.
pub(crate) async fn relay(
    inner: &Arc<Inner>,
    downstream: BoxStream,
    peer: SocketAddr,
    established: Established,
    started: tokio::time::Instant,
) {
    let Established {
        upstream,
        route,
        source,
    } = established;
    let source_identity = source.identity();
    let destination_identity = route.destination.as_ref().map(|w| w.identity());
    let mtls = route.hbone.is_some();
    let traffic = Traffic {
        reporter: Reporter::Source,
        source: Some(&source),
        source_identity: mtls.then_some(&source_identity),
        destination: route.destination.as_deref(),
        destination_identity: destination_identity.as_ref().filter(|_| mtls),
        service: route.service.as_deref(),
        response_flags: "-",
        mutual_tls: mtls,
    };
    let labels = traffic.labels();
    inner.metrics.opened.get_or_create(&labels).inc();
    let mut terminate = inner.terminate.clone();
    let copy = async {
        match upstream {
            Upstream::Hbone(stream, _lease) => hbone::copy_bidirectional(stream, downstream).await,
            Upstream::Direct(mut up) => {
                let mut down = downstream;
                let (a, b) = tokio::io::copy_bidirectional(&mut down, &mut up).await?;
                let _ = up.shutdown().await;
                Ok(Transferred {
                    to_tunnel: a,
                    from_tunnel: b,
                })
            }
        }
    };
    let result = tokio::select! {
        biased;
        () = super::signalled(&mut terminate) => Err(std::io::Error::other("proxy terminated")),
        r = copy => r,
    };
    let (transferred, error) = match result {
        Ok(t) => (t, None),
        Err(e) => (Transferred::default(), Some(e.to_string())),
    };
    inner.metrics.closed.get_or_create(&labels).inc();
    inner
        .metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(transferred.to_tunnel);
    inner
        .metrics
        .sent_bytes
        .get_or_create(&labels)
        .inc_by(transferred.from_tunnel);
    ConnectionLog {
        direction: Direction::Outbound,
        src_addr: peer,
        dst_addr: route.next_hop,
        hbone_authority: route.hbone.as_ref().map(|(a, _)| a.as_str()),
        source: Some(&source),
        source_identity: mtls.then_some(&source_identity),
        destination: route.destination.as_deref(),
        destination_identity: destination_identity.as_ref().filter(|_| mtls),
        service: route.service.as_deref(),
        bytes_sent: transferred.to_tunnel,
        bytes_recv: transferred.from_tunnel,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
}

/// Records a connection that failed before it carried a byte.
pub(crate) fn failed(
    inner: &Inner,
    peer: SocketAddr,
    destination: SocketAddr,
    err: &OutboundError,
) {
    let labels = Traffic {
        reporter: Reporter::Source,
        source: None,
        source_identity: None,
        destination: None,
        destination_identity: None,
        service: None,
        response_flags: err.response_flags(),
        mutual_tls: false,
    }
    .labels();
    inner.metrics.failed.get_or_create(&labels).inc();
    tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "outbound", error = %err, "connection failed");
}

/// Handles one captured connection on 15001.
pub(crate) async fn handle_captured(
    inner: Arc<Inner>,
    downstream: BoxStream,
    peer: SocketAddr,
    destination: SocketAddr,
) {
    let started = tokio::time::Instant::now();
    match establish(&inner, peer, destination).await {
        Ok(established) => relay(&inner, downstream, peer, established, started).await,
        Err(err) => failed(&inner, peer, destination, &err),
    }
}

/// How long an unanswered outbound HBONE set-up may take before it is abandoned.
pub(crate) const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);
