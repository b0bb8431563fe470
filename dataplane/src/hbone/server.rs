//! The HBONE server: mTLS, HTTP/2, and one CONNECT per tunnelled connection. What to do with
//! a CONNECT (authorize it, connect upstream) is the caller's; this module owns the protocol:
//! handshake deadlines, 400 for what is not a CONNECT, header limits, keepalive and drain.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::stream::H2Stream;
use super::{
    CONNECTION_WINDOW, MAX_FRAME_SIZE, PING_INTERVAL, PING_TIMEOUT, SERVER_MAX_HEADER_LIST,
    SERVER_MAX_STREAMS, SERVER_SEND_BUFFER, STREAM_WINDOW, TLS_BUFFER_LIMIT, keepalive,
};
use crate::identity::{Identity, peer_identity};
use crate::listeners::TrafficBudget;
use crate::seams::BoxStream;

/// How a server connection behaves around its edges.
#[derive(Clone)]
pub struct ServerOptions {
    /// TLS and HTTP/2 handshakes must finish within this, or the peer is dropped.
    pub handshake_timeout: Duration,
    /// Flips to `true` when the proxy drains: GOAWAY, then finish open streams.
    pub drain: watch::Receiver<bool>,
    /// How long open streams get after GOAWAY before the connection is closed anyway.
    pub drain_deadline: Duration,
    /// What each tunnel's upstream connection draws from: a CONNECT the budget has no room
    /// for is answered 503 (`None`: unbounded, for tests of the protocol alone).
    pub tunnels: Option<TrafficBudget>,
}

/// Why a connection never got to carry a stream.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    TlsTimeout(Duration),
    #[error("HTTP/2 handshake failed: {0}")]
    Http2(h2::Error),
    #[error("HTTP/2 handshake did not finish within {0:?}")]
    Http2Timeout(Duration),
}

/// A CONNECT as the server received it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The `:authority`, `host:port` or `ip:port`.
    pub authority: String,
    pub headers: HeaderMap,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The address the peer dialled (a pod IP and 15008).
    pub destination: SocketAddr,
    /// The peer's verified identity.
    pub peer_identity: Option<Identity>,
}

/// A CONNECT waiting for its answer.
pub struct IncomingConnect {
    pub request: ConnectRequest,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl IncomingConnect {
    /// Answers with a failure status and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if let Err(err) = self.respond.send_response(response, true) {
            tracing::debug!(%err, "could not send refusal");
        }
    }

    /// The stream's data as it arrives, before any answer.
    #[cfg(test)]
    pub(crate) fn body(&mut self) -> &mut RecvStream {
        &mut self.recv
    }

    /// Answers 200 (with `headers`, e.g. response baggage) and hands back the tunnel.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, h2::Error> {
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream {
            send,
            recv: self.recv,
        })
    }
}

/// RFC 7541's size of a header list: name + value + 32 per field.
fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// What a CONNECT's `:authority` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority<'a> {
    /// `ip:port` (`[ip]:port` for IPv6): a workload's address, or a Service VIP.
    Address(SocketAddr),
    /// `hostname:port`: a Service by name.
    Host(&'a str, u16),
}

impl<'a> Authority<'a> {
    /// Reads an admitted authority: an address when it is one, else a hostname and the port
    /// after the last `:`.
    pub fn parse(authority: &'a str) -> Option<Self> {
        if let Ok(address) = authority.parse::<SocketAddr>() {
            return Some(Authority::Address(address));
        }
        let (host, port) = authority.rsplit_once(':')?;
        Some(Authority::Host(host, port.parse().ok()?))
    }
}

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authority::Address(address) => write!(f, "{address}"),
            Authority::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a request on an HBONE connection is not taken as a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotConnect(Method),
    /// The header list's RFC 7541 size, over [`SERVER_MAX_HEADER_LIST`].
    HeadersTooLarge(usize),
    NoAuthority(Uri),
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::NotConnect(_) | Refusal::NoAuthority(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn log(&self, peer: SocketAddr) {
        match self {
            Refusal::NotConnect(method) => {
                tracing::warn!(%peer, %method, "HBONE request is not a CONNECT; answering 400");
            }
            Refusal::HeadersTooLarge(size) => {
                tracing::warn!(%peer, size, limit = SERVER_MAX_HEADER_LIST, "HBONE CONNECT headers too large; answering 431");
            }
            Refusal::NoAuthority(uri) => {
                tracing::warn!(%peer, %uri, "HBONE CONNECT without a host:port authority; answering 400");
            }
        }
    }
}

/// Checks a request as a tunnel: a CONNECT, headers within [`SERVER_MAX_HEADER_LIST`], and a
/// `host:port` authority with no path. The authority, or why the request is refused.
pub(crate) fn admit(parts: &http::request::Parts) -> Result<String, Refusal> {
    if parts.method != Method::CONNECT {
        return Err(Refusal::NotConnect(parts.method.clone()));
    }
    let size = header_list_size(&parts.headers);
    if size > SERVER_MAX_HEADER_LIST as usize {
        return Err(Refusal::HeadersTooLarge(size));
    }
    match parts.uri.authority() {
        Some(a) if a.port_u16().is_some() && parts.uri.path_and_query().is_none() => {
            Ok(a.to_string())
        }
        _ => Err(Refusal::NoAuthority(parts.uri.clone())),
    }
}

fn respond(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}

/// Serves one accepted connection: handshakes, then every CONNECT on it goes to `handler`
/// (each on its own task). Returns when the connection ends.
pub async fn serve_connection<H, Fut>(
    stream: BoxStream,
    peer: SocketAddr,
    destination: SocketAddr,
    tls: Arc<ServerConfig>,
    mut options: ServerOptions,
    handler: H,
) -> Result<(), ServeError>
where
    H: Fn(IncomingConnect) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let timeout = options.handshake_timeout;
    let mut tls_stream = tokio::time::timeout(timeout, TlsAcceptor::from(tls).accept(stream))
        .await
        .map_err(|_| ServeError::TlsTimeout(timeout))?
        .map_err(ServeError::Tls)?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    let identity = peer_identity(tls_stream.get_ref().1);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_send_buffer_size(SERVER_SEND_BUFFER)
        .handshake::<_, Bytes>(tls_stream);
    let mut connection = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ServeError::Http2Timeout(timeout))?
        .map_err(ServeError::Http2)?;

    let keepalive = match connection.ping_pong() {
        Some(p) => {
            futures_util::future::Either::Left(keepalive::run(p, PING_INTERVAL, PING_TIMEOUT))
        }
        None => futures_util::future::Either::Right(std::future::pending()),
    };
    tokio::pin!(keepalive);
    let mut draining = *options.drain.borrow();
    if draining {
        connection.graceful_shutdown();
    }
    let deadline = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(deadline);
    // What h2 logs while it reads this connection's frames (a peer's protocol error, a header
    // block over the limit, both answered inside h2) names the peer through this span.
    let frames = tracing::info_span!("hbone", src.addr = %peer);

    loop {
        tokio::select! {
            biased;
            changed = options.drain.changed(), if !draining => {
                if changed.is_err() || *options.drain.borrow() {
                    draining = true;
                    connection.graceful_shutdown();
                    deadline.as_mut().reset(tokio::time::Instant::now() + options.drain_deadline);
                }
            }
            () = &mut deadline => {
                tracing::debug!(%peer, "drain deadline passed; closing connection");
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
            () = &mut keepalive => {
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
            next = connection.accept().instrument(frames.clone()) => {
                let Some(next) = next else { return Ok(()) };
                let (request, send_response) = match next {
                    Ok(pair) => pair,
                    Err(err) => {
                        if err.is_go_away() || err.is_io() {
                            tracing::debug!(%peer, %err, "HBONE connection closed");
                        } else {
                            tracing::warn!(%peer, %err, "HBONE connection failed");
                        }
                        return Ok(());
                    }
                };
                let (parts, recv) = request.into_parts();
                let authority = match admit(&parts) {
                    Ok(authority) => authority,
                    Err(refusal) => {
                        refusal.log(peer);
                        respond(send_response, refusal.status());
                        continue;
                    }
                };
                let descriptor = match &options.tunnels {
                    Some(budget) => match budget.take(1) {
                        Some(permit) => Some(permit),
                        None => {
                            tracing::warn!(%peer, "no descriptors left for another tunnel; answering 503");
                            respond(send_response, StatusCode::SERVICE_UNAVAILABLE);
                            continue;
                        }
                    },
                    None => None,
                };
                let incoming = IncomingConnect {
                    request: ConnectRequest {
                        authority,
                        headers: parts.headers,
                        peer,
                        destination,
                        peer_identity: identity.clone(),
                    },
                    respond: send_response,
                    recv,
                };
                let tunnel = handler(incoming);
                tokio::spawn(async move {
                    let _descriptor = descriptor;
                    tunnel.await
                });
            }
        }
    }
}
