//! Connections for the gRPC server, taken from a network-seam listener: each one accepted and,
//! on the TLS port, handshaken on its own task under a deadline, so a client that stalls or
//! speaks garbage is logged and dropped while everyone else is served.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use dataplane::seams::{BoxStream, Listener};
use dataplane::{Admitted, IdleLimit, ListenerCap, REFUSAL_LOG_INTERVAL};

type Closed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every HTTP/2 client sends first: the 24-byte connection preface and the header of
/// the SETTINGS frame that must follow it (RFC 9113, section 3.4).
const HTTP2_PREFACE_BYTES: usize = 24 + 9;

/// One accepted (and, on the TLS port, handshaken) connection. It fails every read and write
/// once the server is stopped, so a stopped istiod really drops its streams (as a crashed one
/// would) instead of leaving them to tonic's connection tasks.
pub struct GrpcConnection {
    stream: BoxStream,
    peer: SocketAddr,
    closed: Closed,
    /// Its place under the listener's cap, given back when the connection ends.
    _admitted: Admitted,
}

impl GrpcConnection {
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

/// The caller's address, as tonic's connect info.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddress(pub SocketAddr);

impl tonic::transport::server::Connected for GrpcConnection {
    type ConnectInfo = PeerAddress;
    fn connect_info(&self) -> PeerAddress {
        PeerAddress(self.peer)
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The stream of connections tonic serves, and the accept task behind it.
pub struct GrpcIncoming {
    connections: mpsc::Receiver<GrpcConnection>,
    /// Aborting it closes the listener.
    pub accept_task: JoinHandle<()>,
}

impl Stream for GrpcIncoming {
    type Item = io::Result<GrpcConnection>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// Accepts from `listener`, with TLS when `tls` is given; `name` labels the logs. Every
/// connection fails once `stop` turns true. A connection `cap` has no room for is closed at
/// once, so that one port's flood cannot take the descriptors the other port needs.
pub fn incoming(
    listener: Box<dyn Listener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    cap: ListenerCap,
    handshake_timeout: Duration,
    stop: watch::Receiver<bool>,
    name: &'static str,
) -> GrpcIncoming {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tls.map(TlsAcceptor::from);
    let accept_task = tokio::spawn(async move {
        let mut backoff = dataplane::AcceptBackoff::default();
        let mut next_refusal_log = tokio::time::Instant::now();
        loop {
            let pending = match listener.accept().await {
                Ok(pending) => {
                    backoff.succeeded();
                    pending
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(listener = name, %err, retry_in = ?wait, "accept failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let Some(admitted) = cap.admit() else {
                drop(pending);
                let now = tokio::time::Instant::now();
                if now >= next_refusal_log {
                    next_refusal_log = now + REFUSAL_LOG_INTERVAL;
                    tracing::warn!(
                        listener = name,
                        cap = cap.limit(),
                        refused = cap.take_refused(),
                        "listener at its connection cap; closing new connections"
                    );
                }
                continue;
            };
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            let mut stop = stop.clone();
            let closed: Closed = Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            tokio::spawn(async move {
                let setup = async {
                    let accepted = pending.await?;
                    let peer = accepted.peer;
                    let stream: BoxStream = match acceptor {
                        Some(acceptor) => Box::new(acceptor.accept(accepted.stream).await?),
                        None => accepted.stream,
                    };
                    // A client that connects (or finishes TLS) and does not send its whole
                    // HTTP/2 preface within the handshake timeout (silent, a few bytes and
                    // then nothing, or a byte a second) is dropped rather than kept forever;
                    // established xDS streams may then idle as long as they like.
                    let stream: BoxStream = Box::new(IdleLimit::until_preface(
                        stream,
                        handshake_timeout,
                        HTTP2_PREFACE_BYTES,
                    ));
                    io::Result::Ok(GrpcConnection {
                        stream,
                        peer,
                        closed,
                        _admitted: admitted,
                    })
                };
                match tokio::time::timeout(handshake_timeout, setup).await {
                    Ok(Ok(connection)) => {
                        let _ = tx.send(connection).await;
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(listener = name, %err, "connection dropped before gRPC: TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::warn!(listener = name, timeout = ?handshake_timeout, "connection dropped: handshake did not finish in time");
                    }
                }
            });
        }
    });
    GrpcIncoming {
        connections: rx,
        accept_task,
    }
}
