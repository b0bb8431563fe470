//! The kernel's network, through tokio sockets.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::pods::PodNamespaces;
use super::{Accepted, BoxFuture, BoxStream, Incoming, Listener, Network};

/// Real sockets. Captured connections report their `SO_ORIGINAL_DST`; in in-pod mode,
/// listeners and connections can be made inside the pods' own network namespaces.
#[derive(Debug, Default, Clone)]
pub struct RealNetwork {
    pods: Arc<PodNamespaces>,
}

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
    fn connect_from_pod(
        &self,
        pod: IpAddr,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let Some(socket) = self.pods.socket_from(pod, source, destination)? else {
                return self.connect(source, destination).await;
            };
            let stream = socket.connect(destination).await?;
            let stream: BoxStream = Box::new(stream);
            Ok(stream)
        })
    }

    fn adopt_pod(&self, uid: &str, netns: OwnedFd) -> io::Result<Vec<IpAddr>> {
        self.pods.adopt(uid, netns)
    }

    fn bind_in_pod(
        &self,
        uid: &str,
        addr: SocketAddr,
    ) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        let bound = self.pods.bind(uid, addr);
        Box::pin(async move {
            let inner = bound?;
            let local = inner.local_addr()?;
            let listener: Box<dyn Listener> = Box::new(RealListener { inner, local });
            Ok(listener)
        })
    }

    fn release_pod(&self, uid: &str) {
        self.pods.release(uid);
    }

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
                && let Err(err) = socket.bind(SocketAddr::new(ip, 0))
            {
                // The workload's address is not on this host (no in-pod socket): connect
                // from the host's own address rather than not at all, as upstream does
                // without source spoofing.
                tracing::debug!(source = %ip, %err, "cannot connect from the workload address; using the host's");
            }
            socket.set_nodelay(true)?;
            let stream = socket.connect(destination).await?;
            let stream: BoxStream = Box::new(stream);
            Ok(stream)
        })
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<SocketAddr>> {
        let host = host.to_string();
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_from_the_workload_address_when_it_is_local() {
        let net = RealNetwork::default();
        let listener = net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let to = listener.local_addr();
        let source: IpAddr = "127.0.0.9".parse().unwrap();
        let _client = net.connect(Some(source), to).await.unwrap();
        let accepted = listener.accept().await.unwrap().await.unwrap();
        assert_eq!(accepted.peer.ip(), source);
        assert_eq!(
            accepted.destination, to,
            "no NAT: the destination is the local address"
        );
        // an address this host does not have: still connects, from the host's address
        let _client = net
            .connect(Some("192.0.2.77".parse().unwrap()), to)
            .await
            .unwrap();
        let accepted = listener.accept().await.unwrap().await.unwrap();
        assert!(accepted.peer.ip().is_loopback());
    }

    #[tokio::test]
    async fn a_connection_set_to_reset_on_close_is_reset_with_its_bytes_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let net = RealNetwork::default();
        let listener = net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let to = listener.local_addr();
        for reset in [false, true] {
            let mut client = net.connect(None, to).await.unwrap();
            let mut accepted = listener.accept().await.unwrap().await.unwrap().stream;
            client.write_all(b"first flight").await.unwrap();
            let mut read = [0u8; 12];
            accepted.read_exact(&mut read).await.unwrap();
            if reset {
                assert!(super::super::reset_on_close(&mut accepted));
            }
            drop(accepted);
            let mut rest = [0u8; 1];
            let closed = client.read(&mut rest).await;
            match (reset, closed) {
                (false, Ok(0)) => {}
                (true, Err(err)) if err.kind() == io::ErrorKind::ConnectionReset => {}
                (reset, other) => panic!("reset {reset}: {other:?}"),
            }
        }
    }
}
