//! Canary listeners on `127.0.0.1` at the ztunnel's well-known ports. No process of the mesh
//! listens there (each ztunnel has its own 127.x address), so a connection arriving at a
//! canary is a proxy that was talked into connecting to "itself" by another spelling
//! (`127.0.0.1`, `0.0.0.0`, `::ffff:127.0.0.1`, `localhost`). In the private network
//! namespace the ports are always free; on the host's loopback a port that is taken is
//! skipped and named.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;

pub struct Canaries {
    hits: Vec<(SocketAddr, Arc<AtomicUsize>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Ports that could not be bound.
    pub unbound: Vec<u16>,
}

impl Drop for Canaries {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Canaries {
    pub async fn bind(ports: &[u16]) -> Canaries {
        let mut canaries = Canaries {
            hits: Vec::new(),
            tasks: Vec::new(),
            unbound: Vec::new(),
        };
        for port in ports {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
            let Ok(listener) = TcpListener::bind(addr).await else {
                canaries.unbound.push(*port);
                continue;
            };
            let count = Arc::new(AtomicUsize::new(0));
            let counter = count.clone();
            canaries.tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                }
            }));
            canaries.hits.push((addr, count));
        }
        canaries
    }

    /// The canaries something connected to, and how often.
    pub fn hit(&self) -> Vec<(SocketAddr, usize)> {
        self.hits
            .iter()
            .map(|(a, c)| (*a, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
