//! The network seam: bind, accept, connect, and the addresses a connection was really made
//! between (original destination of a captured connection, apparent source of a pod).

mod real;
mod sim;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub use real::RealNetwork;
pub use sim::SimNetwork;

/// A byte stream from any implementation of the seam.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// An owned, type-erased connection.
pub type BoxStream = Box<dyn Stream>;

/// A boxed future, the shape of every asynchronous seam call.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An accepted connection with the addresses the mesh reasons about.
pub struct Accepted {
    pub stream: BoxStream,
    /// Where the connection came from, as the mesh sees it (a pod's IP).
    pub peer: SocketAddr,
    /// Where the client meant to go: the original destination of a captured connection,
    /// otherwise the local address that accepted it.
    pub destination: SocketAddr,
}

/// A connection taken off a listener whose addresses may still be being resolved.
///
/// Resolution happens in the per-connection task, so a slow one never holds up the accept loop.
pub type Incoming = BoxFuture<'static, io::Result<Accepted>>;

/// A bound listener.
pub trait Listener: Send + Sync {
    fn accept(&self) -> BoxFuture<'_, io::Result<Incoming>>;
    fn local_addr(&self) -> SocketAddr;
}

/// Everything the proxies do with the network.
pub trait Network: Send + Sync + 'static {
    /// Binds a TCP listener.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>>;

    /// Connects to `destination`, from `source` when given (a workload's own IP), so the peer
    /// sees the workload rather than the proxy.
    fn connect(
        &self,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>>;

    /// Resolves a host name (or an IP literal) to an address to connect to: how a ztunnel
    /// finds istiod by `XDS_ADDRESS`.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<SocketAddr>>;
}
