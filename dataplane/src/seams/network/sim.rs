//! The simulated network, on turmoil.
//!
//! turmoil gives each host one address, but the mesh reasons about pod addresses. A routing
//! table maps each pod IP to the host (node) that carries it; a connection registry records,
//! for every simulated connection, the pod-level source and destination its dialler meant, so
//! the accepting side sees the same addresses a real kernel (with in-pod capture) would give it.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Accepted, BoxFuture, BoxStream, Incoming, Listener, Network};

/// How long an accepted connection waits for its dialler to register it before falling back
/// to the raw turmoil addresses (the dialler registers as soon as its connect completes).
const REGISTRATION_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Apparent {
    source: SocketAddr,
    destination: SocketAddr,
}

#[derive(Debug, Default)]
struct Tables {
    /// Pod (or VIP-less workload) IP → the turmoil host address that carries it.
    routes: BTreeMap<IpAddr, IpAddr>,
    /// turmoil-level client address → the pod-level addresses of that connection.
    connections: BTreeMap<SocketAddr, Apparent>,
}

/// turmoil-backed network shared by every host of one simulation.
#[derive(Debug, Clone, Default)]
pub struct SimNetwork {
    tables: Arc<Mutex<Tables>>,
    registered: Arc<Notify>,
}

impl SimNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes traffic for `pod_ip` to the turmoil host at `host_ip`.
    pub fn add_route(&self, pod_ip: IpAddr, host_ip: IpAddr) {
        self.lock().routes.insert(pod_ip, host_ip);
    }

    pub fn remove_route(&self, pod_ip: IpAddr) {
        self.lock().routes.remove(&pod_ip);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn host_for(&self, ip: IpAddr) -> IpAddr {
        self.lock().routes.get(&ip).copied().unwrap_or(ip)
    }

    /// Connects to `via` on behalf of a client at `source` that dialled `destination`.
    ///
    /// This is how the simulated kernel models redirection: a pod's connection to some
    /// address is delivered to its node's ztunnel (`via`), which then learns `destination`
    /// as the original destination.
    pub async fn connect_redirected(
        &self,
        source: Option<IpAddr>,
        destination: SocketAddr,
        via: SocketAddr,
    ) -> io::Result<turmoil::net::TcpStream> {
        let host = self.host_for(via.ip());
        let stream = turmoil::net::TcpStream::connect(SocketAddr::new(host, via.port())).await?;
        let local = stream.local_addr()?;
        let apparent = Apparent {
            source: SocketAddr::new(source.unwrap_or(local.ip()), local.port()),
            destination,
        };
        self.lock().connections.insert(local, apparent);
        self.registered.notify_waiters();
        Ok(stream)
    }

    /// The pod-level addresses of an accepted connection, waiting briefly for its dialler.
    async fn resolve(&self, peer: SocketAddr, local: SocketAddr) -> Apparent {
        let wait = async {
            loop {
                let notified = self.registered.notified();
                if let Some(apparent) = self.lock().connections.remove(&peer) {
                    return apparent;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(REGISTRATION_WAIT, wait).await {
            Ok(apparent) => apparent,
            Err(_) => Apparent {
                source: peer,
                destination: local,
            },
        }
    }
}

struct SimListener {
    inner: turmoil::net::TcpListener,
    local: SocketAddr,
    network: SimNetwork,
}

impl Listener for SimListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<Incoming>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            let network = self.network.clone();
            let local = self.local;
            let incoming: Incoming = Box::pin(async move {
                let apparent = network.resolve(peer, local).await;
                Ok(Accepted {
                    stream: Box::new(stream),
                    peer: apparent.source,
                    destination: apparent.destination,
                })
            });
            Ok(incoming)
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Network for SimNetwork {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let inner = turmoil::net::TcpListener::bind(addr).await?;
            let local = inner.local_addr()?;
            let listener: Box<dyn Listener> = Box::new(SimListener {
                inner,
                local,
                network: self.clone(),
            });
            Ok(listener)
        })
    }

    fn connect(
        &self,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = self
                .connect_redirected(source, destination, destination)
                .await?;
            let stream: BoxStream = Box::new(stream);
            Ok(stream)
        })
    }

    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<SocketAddr>> {
        let result = match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, port)),
            Err(_) => turmoil::lookup_many(host)
                .first()
                .map(|ip| SocketAddr::new(*ip, port))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no simulated host is named {host}"),
                    )
                }),
        };
        Box::pin(async move { result })
    }
}
