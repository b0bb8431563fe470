//! The HBONE client: mTLS to the peer's 15008, HTTP/2 with prior knowledge, one classic
//! CONNECT per proxied connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::stream::H2Stream;
use super::{
    CLIENT_MAX_HEADER_LIST, CLIENT_SEND_BUFFER, CONNECTION_WINDOW, MAX_FRAME_SIZE, PING_INTERVAL,
    PING_TIMEOUT, STREAM_WINDOW, TLS_BUFFER_LIMIT, keepalive,
};
use crate::seams::Network;

/// Why an HBONE stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP/2 handshake with {0} failed: {1}")]
    Handshake(SocketAddr, h2::Error),
    #[error("CONNECT {authority} failed: {source}")]
    Stream {
        authority: String,
        source: h2::Error,
    },
    #[error("CONNECT {authority} answered {status}")]
    Status {
        authority: String,
        status: StatusCode,
    },
    #[error("invalid CONNECT request for {0}")]
    Request(String),
}

impl HboneError {
    /// The peer did not take the stream up at all (it is going away, or refused the stream
    /// unprocessed): the CONNECT may be sent again on another connection.
    pub(crate) fn unprocessed(&self) -> bool {
        match self {
            HboneError::Stream { source, .. } => {
                source.is_go_away() || source.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

/// The headers a CONNECT carries besides `:authority`.
#[derive(Debug, Clone, Default)]
pub struct ConnectHeaders {
    /// W3C baggage describing the source workload.
    pub baggage: String,
    /// `for="<client ip:port>"[;host=<service hostname>]`.
    pub forwarded: String,
    /// `00-<trace id>-<span id>-00`.
    pub traceparent: String,
}

/// An open HTTP/2 connection to a peer, shared by many streams.
#[derive(Clone)]
pub struct Connection {
    pub(crate) send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Connection {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes the connection out of rotation (the peer sent GOAWAY): streams already on it
    /// finish, new ones go to another connection.
    pub(crate) fn retire(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// How many concurrent streams the server allows.
    pub(crate) fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }
}

/// Opens an mTLS HTTP/2 connection to `destination` (a peer's 15008), dialling from
/// `source` when given.
pub async fn open_connection(
    network: &dyn Network,
    tls: Arc<ClientConfig>,
    source: Option<IpAddr>,
    destination: SocketAddr,
) -> Result<Connection, HboneError> {
    // From inside the source pod's own namespace when this is an in-pod ztunnel.
    let tcp = match source {
        Some(pod) => network.connect_from_pod(pod, source, destination).await,
        None => network.connect(None, destination).await,
    }
    .map_err(|e| HboneError::Connect(destination, e))?;
    // No SNI is sent (the config disables it); the name only satisfies the API.
    let name = ServerName::IpAddress(destination.ip().into());
    let mut tls_stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| HboneError::Tls(destination, e))?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST)
        .max_send_buffer_size(CLIENT_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|e| HboneError::Handshake(destination, e))?;
    let closed = Arc::new(AtomicBool::new(false));
    let mut connection = connection;
    let ping_pong = connection.ping_pong();
    let done = closed.clone();
    tokio::spawn(async move {
        let alive = async {
            match ping_pong {
                Some(p) => keepalive::run(p, PING_INTERVAL, PING_TIMEOUT).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = &mut connection => {
                if let Err(err) = result {
                    tracing::debug!(%destination, %err, "HBONE connection ended");
                }
            }
            () = alive => {}
        }
        done.store(true, Ordering::Release);
    });
    Ok(Connection { send, closed })
}

/// The CONNECT for `authority`, carrying `headers`. They are informational, so one whose
/// value HTTP cannot carry (a workload named with characters a header may not hold) is left
/// out rather than costing the connection.
pub(crate) fn connect_request(
    authority: &str,
    headers: &ConnectHeaders,
) -> Result<Request<()>, HboneError> {
    let mut builder = Request::builder().method(Method::CONNECT).uri(authority);
    for (name, value) in [
        ("baggage", &headers.baggage),
        ("forwarded", &headers.forwarded),
        ("traceparent", &headers.traceparent),
    ] {
        if value.is_empty() {
            continue;
        }
        match HeaderValue::from_str(value) {
            Ok(value) => builder = builder.header(name, value),
            Err(_) => {
                tracing::debug!(header = name, %authority, "not a valid header value; left out")
            }
        }
    }
    builder
        .body(())
        .map_err(|_| HboneError::Request(authority.to_string()))
}

/// Sends a CONNECT for `authority` on `connection`, with `first_flight` (what the client has
/// already sent, possibly nothing) as DATA right behind it, and waits for the 200.
///
/// Sending the first flight before the answer saves a round trip between the nodes for
/// every client that speaks first (most do: an HTTP request follows the connect at once).
/// Upstream's ztunnel waits for the 200 instead. Nothing is lost by not waiting: the peer
/// holds the bytes in the stream's window until its connection to the destination is up, and
/// a refused CONNECT never delivers them.
pub async fn connect_stream(
    connection: &Connection,
    authority: &str,
    headers: &ConnectHeaders,
    first_flight: &Bytes,
) -> Result<H2Stream, HboneError> {
    let stream_err = |source| {
        let err = HboneError::Stream {
            authority: authority.to_string(),
            source,
        };
        if err.unprocessed() {
            connection.retire();
        }
        err
    };
    let request = connect_request(authority, headers)?;
    let mut send = connection.send.clone().ready().await.map_err(stream_err)?;
    let (response, mut send_stream) = send.send_request(request, false).map_err(stream_err)?;
    if !first_flight.is_empty() {
        // Within the stream's initial window: h2 sends it with the HEADERS, no capacity
        // reservation needed.
        send_stream
            .send_data(first_flight.clone(), false)
            .map_err(stream_err)?;
    }
    let response = response.await.map_err(stream_err)?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Status {
            authority: authority.to_string(),
            status: response.status(),
        });
    }
    Ok(H2Stream {
        send: send_stream,
        recv: response.into_body(),
    })
}
