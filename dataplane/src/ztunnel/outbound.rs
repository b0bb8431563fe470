//! Outbound: where a local workload's connection goes (wire facts §4.7) and getting it there.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tracing::Instrument;

use super::Inner;
use super::access_log::{ConnectionLog, Direction};
use super::metrics::{Reporter, Traffic};
use super::route::{Route, RouteError, Router};
use crate::hbone::{
    self, ByteCounts, ConnectHeaders, Counted, H2Stream, HboneError, PoolKey, TraceParent,
};
use crate::seams::{BoxStream, network};
use crate::state::Workload;

/// Why an outbound connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("no local workload has source address {0}")]
    UnknownSource(std::net::IpAddr),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{0}")]
    Hbone(#[from] HboneError),
    #[error("direct connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("timed out establishing the upstream after {0:?}")]
    Timeout(Duration),
    #[error("the client's connection failed before it was set up: {0}")]
    Client(std::io::Error),
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
    /// Bytes of the client's first flight already sent upstream.
    first_flight: u64,
}

/// The most of a client's first flight that travels with the CONNECT: one 16 KiB DATA frame.
const FIRST_FLIGHT: usize = 16 * 1024;

/// What a captured client has already sent, taken without waiting: nothing when it has not
/// spoken yet or has already closed (the relay then carries everything, the close included).
/// Only bytes the runtime has seen arrive count: a client whose request lands a moment after
/// its accept is carried as before, after the 200.
fn first_flight(downstream: &mut BoxStream) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(FIRST_FLIGHT);
    let mut read = ReadBuf::new(&mut buf);
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(downstream).poll_read(&mut cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            buf.truncate(n);
            Ok(buf.freeze())
        }
        Poll::Ready(Err(err)) => Err(err),
        Poll::Pending => Ok(Bytes::new()),
    }
}

/// Finds the source workload and establishes the upstream for `destination`, sending
/// `first_flight` (the client's bytes already read) ahead of anything the relay will carry.
/// An HBONE upstream carries `trace` as its `traceparent`.
pub(crate) async fn establish(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    destination: SocketAddr,
    trace: TraceParent,
    first_flight: Bytes,
) -> Result<Established, OutboundError> {
    let (source, route) = inner.state.read(|state| {
        let source = inner
            .local_workload(state, peer.ip())
            .ok_or(OutboundError::UnknownSource(peer.ip()))?;
        let router = Router {
            state,
            network: &inner.config.network,
            own: &inner.addresses,
            entropy: &inner.seams.entropy,
        };
        let route = router.route(&source, destination)?;
        Ok::<_, OutboundError>((source, route))
    })?;
    let upstream = match &route.hbone {
        None => {
            let mut stream = inner
                .seams
                .network
                .connect_from_pod(peer.ip(), None, route.next_hop)
                .await
                .map_err(|e| OutboundError::Connect(route.next_hop, e))?;
            stream
                .write_all(&first_flight)
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
            let headers = ConnectHeaders {
                baggage: baggage(&source),
                forwarded: match &route.service {
                    Some(s) => format!("for=\"{peer}\";host={}", s.hostname),
                    None => format!("for=\"{peer}\""),
                },
                traceparent: trace.to_string(),
            };
            let open = || async {
                let tls = inner
                    .certificates
                    .client_config(&identity, expected.clone())
                    .await
                    .map_err(|e| HboneError::Request(e.to_string()))?;
                hbone::open_connection(&*inner.seams.network, tls, Some(peer.ip()), route.next_hop)
                    .await
            };
            let (stream, lease) = inner
                .pool
                .open_stream(&key, open, authority, &headers, &first_flight)
                .await?;
            Upstream::Hbone(stream, lease)
        }
    };
    Ok(Established {
        upstream,
        route,
        source,
        first_flight: first_flight.len() as u64,
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
        first_flight,
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
    let counts = Arc::new(ByteCounts::default());
    counts.add_read(first_flight);
    let mut downstream = Counted::new(downstream, counts.clone());
    let copy = async {
        match upstream {
            Upstream::Hbone(stream, _lease) => hbone::copy_bidirectional(stream, downstream).await,
            Upstream::Direct(mut up) => {
                tokio::io::copy_bidirectional(&mut downstream, &mut up).await?;
                let _ = up.shutdown().await;
                Ok(())
            }
        }
    };
    let result = tokio::select! {
        biased;
        () = super::signalled(&mut terminate) => Err(std::io::Error::other("proxy terminated")),
        r = copy => r,
    };
    let error = result.err().map(|e| e.to_string());
    // From the client: sent towards the destination; written back: received from it.
    let (sent, received) = (counts.read(), counts.written());
    inner.metrics.closed.get_or_create(&labels).inc();
    inner
        .metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(sent);
    inner
        .metrics
        .sent_bytes
        .get_or_create(&labels)
        .inc_by(received);
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
        bytes_sent: sent,
        bytes_recv: received,
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

/// Handles one captured connection on 15001. Its log lines carry the `traceparent` id the
/// upstream ztunnel adopts, so both sides of one connection can be found together. What the
/// client has sent by the time it is accepted goes with the CONNECT.
pub(crate) async fn handle_captured(
    inner: Arc<Inner>,
    mut downstream: BoxStream,
    peer: SocketAddr,
    destination: SocketAddr,
) {
    let trace = TraceParent::generate(&inner.seams.entropy);
    let span = tracing::info_span!("outbound", id = %trace);
    async move {
        let started = tokio::time::Instant::now();
        let first = match first_flight(&mut downstream) {
            Ok(first) => first,
            Err(err) => return failed(&inner, peer, destination, &OutboundError::Client(err)),
        };
        let spoke_first = !first.is_empty();
        match establish_within(&inner, peer, destination, trace, first).await {
            Ok(established) => relay(&inner, downstream, peer, established, started).await,
            Err(err) => {
                failed(&inner, peer, destination, &err);
                // Its first flight went nowhere: the client learns so by a reset, as it would
                // had the bytes never been read (upstream's ztunnel reads nothing before the
                // 200, and the kernel resets a socket closed with unread bytes).
                if spoke_first {
                    network::reset_on_close(&mut downstream);
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// How long an unanswered outbound set-up (connect, TLS and HTTP/2 handshakes, the CONNECT's
/// answer) may take before it is abandoned: a peer that stalls holds nobody up for longer.
pub(crate) const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// [`establish`], abandoned after [`ESTABLISH_TIMEOUT`].
pub(crate) async fn establish_within(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    destination: SocketAddr,
    trace: TraceParent,
    first_flight: Bytes,
) -> Result<Established, OutboundError> {
    tokio::time::timeout(
        ESTABLISH_TIMEOUT,
        establish(inner, peer, destination, trace, first_flight),
    )
    .await
    .unwrap_or(Err(OutboundError::Timeout(ESTABLISH_TIMEOUT)))
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::first_flight;
    use crate::seams::{BoxStream, Network, RealNetwork};

    /// A real loopback connection: the client's end and the accepted end, as ztunnel gets it.
    async fn connection() -> (tokio::net::TcpStream, BoxStream) {
        let net = RealNetwork::default();
        let listener = net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr())
            .await
            .unwrap();
        let accepted = listener.accept().await.unwrap().await.unwrap().stream;
        (client, accepted)
    }

    #[tokio::test]
    async fn the_first_flight_is_what_the_client_already_sent_and_no_more() {
        let (mut client, mut accepted) = connection().await;
        assert!(
            first_flight(&mut accepted).unwrap().is_empty(),
            "a client that has not spoken: nothing, and no waiting"
        );
        let big = vec![7u8; 40 * 1024];
        client.write_all(&big).await.unwrap();
        // Once the runtime has seen the bytes arrive, one read takes what is there, up to
        // 16 KiB.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let first = first_flight(&mut accepted).unwrap();
        assert_eq!(first.len(), super::FIRST_FLIGHT);
        assert!(first.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_client_gone_before_it_was_set_up_is_an_error_or_nothing() {
        let (client, mut accepted) = connection().await;
        client.set_zero_linger().unwrap();
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let err = first_flight(&mut accepted).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        let (mut client, mut accepted) = connection().await;
        client.shutdown().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            first_flight(&mut accepted).unwrap().is_empty(),
            "an orderly close: nothing, for the relay to carry the close"
        );
    }
}
