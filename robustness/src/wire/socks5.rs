//! A SOCKS5 client (RFC 1928, no authentication) that can name any destination the protocol
//! can carry, including the IPv6 forms a proxy might canonicalise differently from IPv4.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tcp::connect_from;

/// A CONNECT destination as written on the wire.
#[derive(Debug, Clone)]
pub enum Destination {
    Ip(SocketAddr),
    /// An IPv6 address given as such, e.g. `::ffff:127.0.0.1` (IPv4-mapped) or `::1`.
    V6(Ipv6Addr, u16),
    Domain(Vec<u8>, u16),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Ip(a) => write!(f, "{a}"),
            Destination::V6(ip, port) => write!(f, "[{ip}]:{port}"),
            Destination::Domain(name, port) => {
                let name = String::from_utf8_lossy(&name[..name.len().min(40)]);
                write!(f, "{name}:{port}")
            }
        }
    }
}

/// The CONNECT request's bytes for `destination`.
pub fn connect_request(destination: &Destination) -> Vec<u8> {
    let mut request = vec![5, 1, 0];
    let port = match destination {
        Destination::Ip(SocketAddr::V4(a)) => {
            request.push(1);
            request.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Destination::Ip(SocketAddr::V6(a)) => {
            request.push(4);
            request.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Destination::V6(ip, port) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
            *port
        }
        Destination::Domain(name, port) => {
            request.push(3);
            request.push(name.len().min(255) as u8);
            request.extend_from_slice(&name[..name.len().min(255)]);
            *port
        }
    };
    request.extend_from_slice(&port.to_be_bytes());
    request
}

/// SOCKS5 CONNECT through `proxy` from `source`: the reply code (255: no reply, the
/// connection was closed) and, on success, the stream.
pub async fn connect(
    proxy: SocketAddr,
    source: IpAddr,
    destination: &Destination,
) -> anyhow::Result<(u8, Option<TcpStream>)> {
    let mut s = connect_from(Some(source), proxy, Duration::from_secs(2)).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut method)).await??;
    anyhow::ensure!(method == [5, 0], "method selection answered {method:?}");
    s.write_all(&connect_request(destination)).await?;
    // The reply: VER REP RSV ATYP, then the bound address (4 or 16 bytes) and port.
    let mut head = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await {
        Err(_) => anyhow::bail!("no SOCKS5 reply within 5 s"),
        Ok(Err(_)) => return Ok((255, None)),
        Ok(Ok(_)) => {}
    }
    let rest = match head[3] {
        4 => 18,
        _ => 6,
    };
    let mut tail = vec![0u8; rest];
    if s.read_exact(&mut tail).await.is_err() {
        return Ok((head[1].max(1), None));
    }
    Ok((head[1], (head[1] == 0).then_some(s)))
}
