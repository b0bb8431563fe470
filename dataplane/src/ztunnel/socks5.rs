//! SOCKS5 (15080): inject traffic without capture. No-auth, CONNECT only; IPv4, IPv6 and
//! domain names (resolved against known service hostnames). The reply is sent only once the
//! upstream is established, so a client sees real failures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Inner;
use super::outbound::{self, ESTABLISH_TIMEOUT, OutboundError};
use super::route::RouteError;
use crate::seams::Accepted;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;
const REPLY_OK: u8 = 0;
const REPLY_FAILURE: u8 = 1;
const REPLY_NOT_ALLOWED: u8 = 2;
const REPLY_HOST_UNREACHABLE: u8 = 4;
const REPLY_COMMAND_UNSUPPORTED: u8 = 7;
const REPLY_ADDRESS_UNSUPPORTED: u8 = 8;

#[derive(Debug, thiserror::Error)]
enum Socks5Error {
    #[error("SOCKS5 I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("client offers no no-auth method")]
    NoAuth,
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("unknown host {0}")]
    UnknownHost(String),
}

impl Socks5Error {
    fn reply_code(&self) -> u8 {
        match self {
            Socks5Error::Command(_) => REPLY_COMMAND_UNSUPPORTED,
            Socks5Error::AddressType(_) => REPLY_ADDRESS_UNSUPPORTED,
            Socks5Error::UnknownHost(_) => REPLY_HOST_UNREACHABLE,
            _ => REPLY_FAILURE,
        }
    }
}

async fn reply<S: AsyncWriteExt + Unpin>(stream: &mut S, code: u8) -> std::io::Result<()> {
    stream
        .write_all(&[VERSION, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}

async fn read_request(
    inner: &Inner,
    stream: &mut crate::seams::BoxStream,
) -> Result<SocketAddr, Socks5Error> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Socks5Error::NoAuth);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(Socks5Error::Version(request[0]));
    }
    if request[1] != CMD_CONNECT {
        return Err(Socks5Error::Command(request[1]));
    }
    let ip = match request[3] {
        ATYP_V4 => {
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).await?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        ATYP_V6 => {
            let mut b = [0u8; 16];
            stream.read_exact(&mut b).await?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        ATYP_DOMAIN => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            inner
                .state
                .read(|state| {
                    state
                        .services()
                        .find(|s| s.hostname == name)
                        .and_then(|s| s.vips.first().map(|v| v.address))
                })
                .ok_or(Socks5Error::UnknownHost(name))?
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let port = stream.read_u16().await?;
    Ok(SocketAddr::new(ip, port))
}

pub(crate) async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let started = tokio::time::Instant::now();
    let Accepted {
        mut stream, peer, ..
    } = accepted;
    let destination = match tokio::time::timeout(
        inner.config.handshake_timeout,
        read_request(&inner, &mut stream),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(err)) => {
            let _ = reply(&mut stream, err.reply_code()).await;
            tracing::warn!(src.addr = %peer, error = %err, "SOCKS5 request rejected");
            return;
        }
        Err(_) => {
            tracing::warn!(src.addr = %peer, "SOCKS5 client stalled; closing");
            return;
        }
    };
    let established = tokio::time::timeout(
        ESTABLISH_TIMEOUT,
        outbound::establish(&inner, peer, destination),
    )
    .await;
    match established {
        Ok(Ok(established)) => {
            if reply(&mut stream, REPLY_OK).await.is_ok() {
                outbound::relay(&inner, stream, peer, established, started).await;
            }
        }
        Ok(Err(err)) => {
            let code = match err {
                OutboundError::Hbone(crate::hbone::HboneError::Status { status, .. })
                    if status == http::StatusCode::UNAUTHORIZED =>
                {
                    REPLY_NOT_ALLOWED
                }
                OutboundError::Route(RouteError::NoEndpoint { .. }) => REPLY_HOST_UNREACHABLE,
                _ => REPLY_FAILURE,
            };
            let _ = reply(&mut stream, code).await;
            outbound::failed(&inner, peer, destination, &err);
        }
        Err(_) => {
            let _ = reply(&mut stream, REPLY_HOST_UNREACHABLE).await;
            tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "outbound", error = "timed out establishing the upstream", "connection failed");
        }
    }
}
