//! The kernel's network, through tokio sockets.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{Accepted, BoxFuture, BoxStream, Incoming, Listener, Network};

/// Real sockets. Captured connections report their `SO_ORIGINAL_DST`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealNetwork;

struct RealListener {
    inner: TcpListener,
    local: SocketAddr,
}

/// The destination the client dialled: the NAT original destination when iptables redirected
/// the connection here, else the address that accepted it.
fn original_destination(stream: &TcpStream, local: SocketAddr) -> SocketAddr {
    let sock = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    original
        .ok()
        .and_then(|addr| addr.as_socket())
        .unwrap_or(local)
}

impl Listener for RealListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<Incoming>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            stream.set_nodelay(true)?;
            let local = stream.local_addr()?;
            let destination = original_destination(&stream, local);
            let accepted = Accepted {
                stream: Box::new(stream),
                peer,
                destination,
            };
            let incoming: Incoming = Box::pin(async move { Ok(accepted) });
            Ok(incoming)
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Network for RealNetwork {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let inner = TcpListener::bind(addr).await?;
            let local = inner.local_addr()?;
            let listener: Box<dyn Listener> = Box::new(RealListener { inner, local });
            Ok(listener)
        })
    }

    fn connect(
        &self,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let socket = match destination {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = source
                && ip.is_ipv4() == destination.is_ipv4()
            {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.set_nodelay(true)?;
            let stream = socket.connect(destination).await?;
            let stream: BoxStream = Box::new(stream);
            Ok(stream)
        })
    }
}
