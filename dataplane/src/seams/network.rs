//! The network seam: bind, accept, connect, and the addresses a connection was really made
//! between (original destination of a captured connection, apparent source of a pod).

mod pods;
mod real;
mod sim;

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub use pods::ZTUNNEL_MARK;
pub use real::RealNetwork;
pub use sim::SimNetwork;

/// A byte stream from any implementation of the seam.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + Any {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + Any> Stream for T {}

/// An owned, type-erased connection.
pub type BoxStream = Box<dyn Stream>;

/// Makes closing `stream` reset the connection (`SO_LINGER` 0) instead of ending it in order:
/// the kernel's own answer when a socket is closed with bytes it never read, for a proxy that
/// did read them and lost them. False where the stream is not a kernel socket (the
/// simulator's streams end in order).
pub fn reset_on_close(stream: &mut BoxStream) -> bool {
    let stream: &mut dyn Any = &mut **stream;
    match stream.downcast_mut::<tokio::net::TcpStream>() {
        Some(tcp) => tcp.set_zero_linger().is_ok(),
        None => false,
    }
}

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

    /// Connects as [`Network::connect`] does, but from inside the network namespace of the
    /// adopted pod that owns address `pod` (in-pod capture), so the connection leaves as that
    /// pod's and the pod's own rules let it through. Where no adopted pod owns `pod`, or the
    /// network has no namespaces, it is a plain `connect`.
    fn connect_from_pod(
        &self,
        pod: IpAddr,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        let _ = pod;
        self.connect(source, destination)
    }

    /// Takes pod `uid`'s network namespace, handed over by the node agent, so that listeners
    /// can be bound inside it and connections made from it; answers the pod's addresses.
    /// Adopting a uid again replaces its namespace.
    fn adopt_pod(&self, uid: &str, netns: OwnedFd) -> io::Result<Vec<IpAddr>> {
        let _ = (uid, netns);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this network has no pod namespaces",
        ))
    }

    /// A listener on `addr` inside adopted pod `uid`'s namespace.
    fn bind_in_pod(
        &self,
        uid: &str,
        addr: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        let _ = (uid, addr);
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this network has no pod namespaces",
            ))
        })
    }

    /// Lets go of pod `uid`'s namespace; listeners already bound in it stay until dropped.
    fn release_pod(&self, uid: &str) {
        let _ = uid;
    }
}
