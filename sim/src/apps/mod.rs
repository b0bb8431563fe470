//! The applications the simulator runs in pods, and the client side of a request.
//!
//! Every node host listens on every port some pod of the scenario declares; a connection is
//! served only if its destination (as the simulated kernel reports it) is a pod on this node
//! that declares the port, as the pod's own socket would. A port named `http` or `http-*` runs
//! the HTTP [`echo`], any other the TCP echo. Both record every request marker they receive:
//! that record, not anything the mesh says, is what the policy invariant checks. The
//! [`client`] makes one request on a connection.

mod client;
pub mod echo;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use dataplane::seams::{Accepted, Network, SimNetwork};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use client::{Exchanged, HttpResponse, exchange};
use echo::{EchoContext, EchoHooks};

use crate::scenario::{HttpRequest, Protocol};
use crate::wire::markers_in;
use crate::world::Shared;

/// Which echo a port runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    Tcp,
    Http,
}

impl AppKind {
    /// From a container port's name.
    pub fn for_port_name(name: Option<&str>) -> AppKind {
        match name {
            Some(n) if n == "http" || n.starts_with("http-") => AppKind::Http,
            _ => AppKind::Tcp,
        }
    }
}

/// Listens on `port` of the node's host and serves the pods of `node` that declare it.
pub(crate) async fn listen(shared: Rc<Shared>, node: String, port: u16) -> anyhow::Result<()> {
    let address = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    let listener = shared.network.bind(address).await?;
    tokio::task::spawn_local(async move {
        loop {
            let Ok(incoming) = listener.accept().await else {
                return;
            };
            let shared = shared.clone();
            let node = node.clone();
            tokio::task::spawn_local(async move {
                let _task = shared.tasks.pod_task(&node);
                if let Ok(accepted) = incoming.await {
                    serve(shared.clone(), node.clone(), port, accepted).await;
                }
            });
        }
    });
    Ok(())
}

async fn serve(shared: Rc<Shared>, node: String, port: u16, accepted: Accepted) {
    let destination = accepted.destination;
    let peer = accepted.peer;
    let kind = shared.app_for(&node, destination.ip(), port);
    let Some(kind) = kind else {
        shared.trace.record(
            &node,
            "app",
            format!("no pod on {node} listens on {destination}: connection from {peer} closed"),
        );
        return;
    };
    shared.app_connection_opened(&node);
    let mut stream = accepted.stream;
    match kind {
        AppKind::Tcp => {
            tcp_echo(&shared, &node, destination, peer, &mut stream).await;
            let _ = stream.shutdown().await;
        }
        AppKind::Http => {
            let context = {
                let pods = shared.pods.borrow();
                let pod = pods.get(&destination.ip());
                EchoContext {
                    namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
                    pod: pod.map(|p| p.name.clone()).unwrap_or_default(),
                    peer: Some(peer),
                    peer_identity: pods.get(&peer.ip()).map(|p| {
                        format!(
                            "spiffe://cluster.local/ns/{}/sa/{}",
                            p.namespace, p.service_account
                        )
                    }),
                    local: Some(destination),
                }
            };
            let hooks = Rc::new(PodHooks {
                shared: shared.clone(),
                node: node.clone(),
                pod: destination,
                peer,
            });
            echo::serve(stream, Rc::new(context), hooks).await;
        }
    }
    shared.app_connection_closed(&node);
}

/// The simulator's side of a pod's HTTP echo: markers go to the applications' record (what
/// the policy invariant checks), flaky counters are per pod and path (so a seed replays them).
struct PodHooks {
    shared: Rc<Shared>,
    node: String,
    pod: SocketAddr,
    peer: SocketAddr,
}

impl EchoHooks for PodHooks {
    fn received(&self, request: &http::request::Parts, body: &[u8]) {
        let found = request
            .headers
            .values()
            .flat_map(|v| markers_in(v.as_bytes()))
            .chain(markers_in(body));
        for (traffic, n) in found {
            self.shared
                .app_received(&self.node, self.pod, self.peer, traffic, n);
        }
    }

    fn count(&self, path: &str) -> u64 {
        let mut counters = self.shared.flaky.borrow_mut();
        let count = counters
            .entry((self.pod.ip(), path.to_string()))
            .or_insert(0);
        *count += 1;
        *count
    }
}

/// Reads and writes back until the peer closes.
async fn tcp_echo<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    node: &str,
    pod: SocketAddr,
    peer: SocketAddr,
    stream: &mut S,
) {
    let mut buf = vec![0u8; 8 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = &buf[..n];
        tail.extend_from_slice(data);
        let found = markers_in(&tail);
        if !found.is_empty() {
            tail.clear();
        } else if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
        for (traffic, request) in found {
            shared.app_received(node, pod, peer, traffic, request);
        }
        if stream.write_all(data).await.is_err() {
            return;
        }
    }
}

/// How a request is made: which capture path, to what.
#[derive(Debug, Clone)]
pub struct Job {
    pub traffic: usize,
    pub request: u64,
    pub conn: String,
    pub source: IpAddr,
    /// What the source dialled (pod IP or VIP, and port).
    pub destination: SocketAddr,
    /// Where the simulated kernel delivers the connection.
    pub via: SocketAddr,
    pub protocol: Protocol,
    pub timeout: Duration,
    /// `Some` for a persistent connection: reused by later requests from the same pod.
    pub persistent: bool,
    /// The `Host` header for HTTP.
    pub authority: String,
    /// Method, path, headers and body for HTTP.
    pub http: HttpRequest,
    /// Keep the whole HTTP answer in the request's record.
    pub record: bool,
}

/// A client connection.
pub type Conn = turmoil::net::TcpStream;

/// Opens the connection for `job` the way the simulated kernel routes it.
pub async fn connect(network: &SimNetwork, job: &Job) -> std::io::Result<Conn> {
    network
        .connect_redirected(Some(job.source), job.destination, job.via)
        .await
}
