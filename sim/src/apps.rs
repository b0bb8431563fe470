//! The applications the simulator runs in pods, and the client side of a request.
//!
//! Every node host listens on every port some pod of the scenario declares; a connection is
//! served only if its destination (as the simulated kernel reports it) is a pod on this node
//! that declares the port, as the pod's own socket would. A port named `http` or `http-*` runs
//! the HTTP echo, any other the TCP echo. Both record every request marker they receive: that
//! record, not anything the mesh says, is what the policy invariant checks.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use dataplane::seams::{Accepted, Network, SimNetwork};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scenario::{HttpRequest, Outcome, Protocol};
use crate::wire::{marker, markers_in};
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
        AppKind::Tcp => tcp_echo(&shared, &node, destination, peer, &mut stream).await,
        AppKind::Http => http_echo(&shared, &node, destination, peer, &mut stream).await,
    }
    let _ = stream.shutdown().await;
    shared.app_connection_closed(&node);
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

/// Answers every HTTP/1.1 request with 200 and a body saying what it received: the request
/// line, the headers, and the peer and destination addresses it saw.
async fn http_echo<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    node: &str,
    pod: SocketAddr,
    peer: SocketAddr,
    stream: &mut S,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head: Vec<u8> = pending.drain(..head_end).collect();
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while pending.len() < length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        let body: Vec<u8> = pending.drain(..length).collect();
        for (traffic, request) in markers_in(head.as_bytes())
            .into_iter()
            .chain(markers_in(&body))
        {
            shared.app_received(node, pod, peer, traffic, request);
        }
        let name = shared
            .pods
            .borrow()
            .get(&pod.ip())
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let report = format!(
            "{}pod: {name}\npeer: {peer}\ndestination: {pod}\nbody-bytes: {}\n",
            head.trim_end_matches("\r\n").replace("\r\n", "\n") + "\n",
            body.len()
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{report}",
            report.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
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
    /// Method, path and headers for HTTP.
    pub http: HttpRequest,
}

/// A client connection.
pub type Conn = turmoil::net::TcpStream;

/// Opens the connection for `job` the way the simulated kernel routes it.
pub async fn connect(network: &SimNetwork, job: &Job) -> std::io::Result<Conn> {
    network
        .connect_redirected(Some(job.source), job.destination, job.via)
        .await
}

/// One request on `conn`: the outcome, whether the connection can be used again, and (for
/// HTTP) the pod that answered, as the echo names it.
pub async fn exchange(conn: &mut Conn, job: &Job) -> (Outcome, bool, Option<String>) {
    let marker = marker(job.traffic, job.request);
    match job.protocol {
        Protocol::Tcp => {
            let mut payload = format!("{marker} from {} to {}", job.source, job.destination);
            payload.push('\n');
            if conn.write_all(payload.as_bytes()).await.is_err() {
                return (Outcome::Refused, false, None);
            }
            let mut back = vec![0u8; payload.len()];
            let mut got = 0;
            while got < back.len() {
                match conn.read(&mut back[got..]).await {
                    Ok(0) | Err(_) => return (Outcome::Refused, false, None),
                    Ok(n) => got += n,
                }
            }
            if back == payload.as_bytes() {
                (Outcome::Succeed, true, None)
            } else {
                (Outcome::Refused, false, None)
            }
        }
        Protocol::Http => {
            let mut request = format!(
                "{} {} HTTP/1.1\r\nhost: {}\r\nx-sim-request: {marker}\r\ncontent-length: 0\r\n",
                job.http.method, job.http.path, job.authority
            );
            for (name, value) in &job.http.headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            if conn.write_all(request.as_bytes()).await.is_err() {
                return (Outcome::Refused, false, None);
            }
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 4096];
            let head_end = loop {
                if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return (Outcome::Refused, false, None),
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            };
            let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while pending.len() < head_end + length {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return (Outcome::Refused, false, None),
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            let body = String::from_utf8_lossy(&pending[head_end..head_end + length]);
            let backend = body
                .lines()
                .find_map(|l| l.strip_prefix("pod: "))
                .map(str::to_string);
            if (200..300).contains(&status) {
                (Outcome::Succeed, true, backend)
            } else {
                (Outcome::Status(status), true, backend)
            }
        }
    }
}
