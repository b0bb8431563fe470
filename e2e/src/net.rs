//! Sockets made inside a namespace and used from the runner's tokio runtime: a socket stays in
//! the namespace it was created in, wherever it is used afterwards, so only the `socket()` call
//! needs to happen there ([`harness::Netns::enter`]); connecting, accepting and every byte go
//! through tokio as usual.

use std::net::SocketAddr;
use std::time::Duration;

use harness::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A TCP socket created inside `netns`, not yet bound or connected.
fn socket_in(netns: &Netns, for_address: SocketAddr) -> std::io::Result<Socket> {
    let socket = netns.enter(|| {
        Socket::new(
            Domain::for_address(for_address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
    })??;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Connects to `to` from inside `netns`: what a process of that pod (or node) would do.
pub async fn connect_in(netns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket_in(netns, to)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Listens on `at` inside `netns`.
pub fn listen_in(netns: &Netns, at: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket_in(netns, at)?;
    socket.set_reuse_address(true)?;
    socket.bind(&at.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// `GET path` on `to` from inside `netns`, within `within`: the status, or why none came.
pub async fn http_get(
    netns: &Netns,
    to: SocketAddr,
    path: &str,
    within: Duration,
) -> Result<u16, String> {
    let exchange = async {
        let mut stream = connect_in(netns, to).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&answer);
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not HTTP: {:?}", head.chars().take(40).collect::<String>()))
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}
