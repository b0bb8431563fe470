//! Requests to a backend: the endpoint's byte stream (HBONE through its ztunnel with the
//! waypoint's own identity when it is in the mesh, plain TCP when it is not), and one HTTP
//! exchange on it (HTTP/1.1, or HTTP/2 with prior knowledge for h2c and gRPC backends).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::Inner;
use super::routes::Protocol;
use crate::hbone::{self, ConnectHeaders, H2Io, HboneError, PoolKey, TraceParent};
use crate::identity::Identity;
use crate::seams::BoxStream;
use crate::state::{Service, TunnelProtocol, Workload};

/// What a body failure is, on either side.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the waypoint sends or answers with.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// Why a backend could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("service {0} is unknown")]
    UnknownService(String),
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoEndpoint { service: String, port: u16 },
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("HTTP handshake with the backend failed: {0}")]
    Handshake(hyper::Error),
    #[error("backend request failed: {0}")]
    Request(hyper::Error),
}

impl UpstreamError {
    /// Envoy's response flag for the failure: `UH` no healthy upstream, `UF` upstream
    /// connection failure, `UC` upstream connection termination.
    pub(crate) fn response_flags(&self) -> &'static str {
        match self {
            UpstreamError::UnknownService(_) | UpstreamError::NoEndpoint { .. } => "UH",
            UpstreamError::Request(_) => "UC",
            _ => "UF",
        }
    }

    /// The status a client sees when no try succeeded.
    pub(crate) fn status(&self) -> http::StatusCode {
        http::StatusCode::SERVICE_UNAVAILABLE
    }
}

/// One endpoint to send to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) endpoint: Arc<Workload>,
    /// The port on the endpoint (a Service's target port, or the pod port dialled).
    pub(crate) port: u16,
    pub(crate) service: Option<Arc<Service>>,
}

/// An endpoint of the Service `key` for its port `port`.
pub(crate) fn choose(inner: &Inner, key: &str, port: u16) -> Result<Target, UpstreamError> {
    inner.state.read(|state| {
        let service = state
            .service(key)
            .ok_or_else(|| UpstreamError::UnknownService(key.to_string()))?;
        let (endpoint, target) =
            crate::ztunnel::route::pick_endpoint(state, &service, port, &inner.seams.entropy)
                .ok_or_else(|| UpstreamError::NoEndpoint {
                    service: service.hostname.clone(),
                    port,
                })?;
        Ok(Target {
            endpoint,
            port: target,
            service: Some(service),
        })
    })
}

/// A byte stream to the target: an HBONE stream (its pooled connection held by the stream's
/// lease, which the returned box keeps) or plain TCP.
pub(crate) async fn open_stream(
    inner: &Arc<Inner>,
    target: &Target,
) -> Result<BoxStream, UpstreamError> {
    let Some(&ip) = target.endpoint.workload_ips.first() else {
        return Err(UpstreamError::NoEndpoint {
            service: target.endpoint.name.clone(),
            port: target.port,
        });
    };
    let address = SocketAddr::new(ip, target.port);
    if target.endpoint.protocol != TunnelProtocol::Hbone {
        let source = inner.config.source_ip();
        return inner
            .seams
            .network
            .connect(source, address)
            .await
            .map_err(|e| UpstreamError::Connect(address, e));
    }
    let identity = inner.config.identity();
    let mut expected: Vec<Identity> = vec![target.endpoint.identity()];
    if let Some(s) = &target.service {
        expected.extend(s.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
    }
    let next_hop = SocketAddr::new(ip, hbone::HBONE_PORT);
    // From the waypoint's own address, as its pod's traffic would leave it.
    let source = inner.config.source_ip();
    let key = PoolKey {
        source_identity: identity.clone(),
        expected_identities: expected.clone(),
        destination: next_hop,
        source_ip: source,
    };
    let headers = ConnectHeaders {
        baggage: String::new(),
        forwarded: match &target.service {
            Some(s) => format!("host={}", s.hostname),
            None => String::new(),
        },
        traceparent: TraceParent::generate(&inner.seams.entropy).to_string(),
    };
    let open = || async {
        let tls = inner
            .certificates
            .client_config(&identity, expected.clone())
            .await
            .map_err(|e| HboneError::Request(e.to_string()))?;
        hbone::open_connection(&*inner.seams.network, tls, source, next_hop).await
    };
    let (stream, lease) = inner
        .pool
        .open_stream(&key, open, &address.to_string(), &headers, &Bytes::new())
        .await?;
    Ok(Box::new(Leased {
        io: H2Io::new(stream),
        _lease: lease,
    }))
}

/// An HBONE stream that keeps its pooled connection's lease for as long as it lives.
struct Leased {
    io: H2Io,
    _lease: hbone::Lease,
}

impl tokio::io::AsyncRead for Leased {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Leased {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Opens a stream to `target` and sends `request` on it, speaking `protocol`. The HTTP
/// connection lives for this one exchange; the HBONE connection under it is pooled.
pub(crate) async fn send(
    inner: &Arc<Inner>,
    target: &Target,
    protocol: Protocol,
    request: Request<Body>,
) -> Result<Response<Incoming>, UpstreamError> {
    let stream = open_stream(inner, target).await?;
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http2 => {
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::Handshake)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%err, "backend HTTP/2 connection ended");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(UpstreamError::Request)
        }
        Protocol::Http1 | Protocol::Tcp => {
            let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(io)
                .await
                .map_err(UpstreamError::Handshake)?;
            tokio::spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(%err, "backend HTTP/1.1 connection ended");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(UpstreamError::Request)
        }
    }
}
