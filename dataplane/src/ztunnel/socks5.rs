//! SOCKS5 (15080): inject traffic without capture. No-auth, CONNECT only; IPv4, IPv6 and
//! domain names (resolved against known service hostnames). The reply is sent only once the
//! upstream is established, so a client sees real failures. A pipelined handshake (greeting,
//! request and even payload in one write) costs one read and one reply write.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::Instrument;

use super::Inner;
use super::outbound::{self, OutboundError};
use super::route::RouteError;
use crate::hbone::TraceParent;
use crate::seams::{Accepted, BoxStream};

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

/// The longest greeting and request: 2 + 255 methods, then 4 + a 1-byte length + a 255-byte
/// name + 2.
const MAX_HANDSHAKE: usize = 2 + 255 + 4 + 1 + 255 + 2;

/// The client's side of the handshake as it arrives. A client that sends its request without
/// waiting for the method reply (the one method we take is no-auth, so optimistic clients do)
/// is read with one `read`, and its method reply goes out with the CONNECT reply in one write;
/// a client that waits gets the method reply at once.
struct Handshake {
    received: [u8; MAX_HANDSHAKE],
    filled: usize,
    parsed: usize,
    /// The method reply is still to be sent, ahead of the CONNECT reply.
    method_reply_owed: bool,
}

impl Handshake {
    fn new() -> Self {
        Handshake {
            received: [0; MAX_HANDSHAKE],
            filled: 0,
            parsed: 0,
            method_reply_owed: false,
        }
    }

    /// The next `n` bytes of the handshake, reading more when they have not all arrived.
    async fn take(&mut self, stream: &mut BoxStream, n: usize) -> std::io::Result<&[u8]> {
        while self.filled - self.parsed < n {
            let got = stream.read(&mut self.received[self.filled..]).await?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.filled += got;
        }
        let taken = &self.received[self.parsed..self.parsed + n];
        self.parsed += n;
        Ok(taken)
    }

    async fn take_array<const N: usize>(
        &mut self,
        stream: &mut BoxStream,
    ) -> std::io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(stream, N).await?);
        Ok(out)
    }

    /// Payload the client sent behind its request, before any reply: it belongs upstream.
    fn early_data(&self) -> &[u8] {
        &self.received[self.parsed..self.filled]
    }

    /// Sends the CONNECT reply, preceded by the method reply if that is still owed.
    async fn reply(&mut self, stream: &mut BoxStream, code: u8) -> std::io::Result<()> {
        let reply = [VERSION, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0];
        if std::mem::take(&mut self.method_reply_owed) {
            let mut both = [0u8; 12];
            both[..2].copy_from_slice(&[VERSION, NO_AUTH]);
            both[2..].copy_from_slice(&reply);
            stream.write_all(&both).await
        } else {
            stream.write_all(&reply).await
        }
    }

    /// Reads the greeting and the CONNECT request; a domain name is looked up with `resolve`.
    async fn read_request(
        &mut self,
        stream: &mut BoxStream,
        resolve: impl Fn(&str) -> Option<IpAddr>,
    ) -> Result<SocketAddr, Socks5Error> {
        let [version, methods] = self.take_array(stream).await?;
        if version != VERSION {
            return Err(Socks5Error::Version(version));
        }
        if !self
            .take(stream, usize::from(methods))
            .await?
            .contains(&NO_AUTH)
        {
            stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
            return Err(Socks5Error::NoAuth);
        }
        if self.early_data().is_empty() {
            stream.write_all(&[VERSION, NO_AUTH]).await?;
        } else {
            self.method_reply_owed = true;
        }
        let [version, command, _, address_type] = self.take_array(stream).await?;
        if version != VERSION {
            return Err(Socks5Error::Version(version));
        }
        if command != CMD_CONNECT {
            return Err(Socks5Error::Command(command));
        }
        let ip = match address_type {
            ATYP_V4 => IpAddr::V4(Ipv4Addr::from(self.take_array::<4>(stream).await?)),
            // An IPv4-mapped IPv6 address is its IPv4 form.
            ATYP_V6 => {
                IpAddr::V6(Ipv6Addr::from(self.take_array::<16>(stream).await?)).to_canonical()
            }
            ATYP_DOMAIN => {
                let [len] = self.take_array(stream).await?;
                let name = String::from_utf8_lossy(self.take(stream, usize::from(len)).await?)
                    .into_owned();
                resolve(&name).ok_or(Socks5Error::UnknownHost(name))?
            }
            other => return Err(Socks5Error::AddressType(other)),
        };
        let port = u16::from_be_bytes(self.take_array(stream).await?);
        Ok(SocketAddr::new(ip, port))
    }
}

/// The first VIP of the service whose hostname is `name`: where a SOCKS5 domain name goes.
fn service_vip(inner: &Inner, name: &str) -> Option<IpAddr> {
    inner.state.read(|state| {
        state
            .services()
            .find(|s| s.hostname == name)
            .and_then(|s| s.vips.first().map(|v| v.address))
    })
}

pub(crate) async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let started = tokio::time::Instant::now();
    let Accepted {
        mut stream, peer, ..
    } = accepted;
    let mut handshake = Handshake::new();
    let destination = match tokio::time::timeout(
        inner.config.handshake_timeout,
        handshake.read_request(&mut stream, |name| service_vip(&inner, name)),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(err)) => {
            // A client refused at method selection has had its one answer (0xff); a SOCKS5
            // reply after it would be read as garbage.
            if !matches!(err, Socks5Error::NoAuth) {
                let _ = handshake.reply(&mut stream, err.reply_code()).await;
            }
            tracing::warn!(src.addr = %peer, error = %err, "SOCKS5 request rejected");
            return;
        }
        Err(_) => {
            tracing::warn!(src.addr = %peer, "SOCKS5 client stalled; closing");
            return;
        }
    };
    let trace = TraceParent::generate(&inner.seams.entropy);
    let span = tracing::info_span!("outbound", id = %trace);
    establish_and_relay(inner, stream, handshake, peer, destination, trace, started)
        .instrument(span)
        .await;
}

/// The SOCKS5 reply follows the upstream's fate: success only once it is established.
async fn establish_and_relay(
    inner: Arc<Inner>,
    mut stream: BoxStream,
    mut handshake: Handshake,
    peer: SocketAddr,
    destination: SocketAddr,
    trace: TraceParent,
    started: tokio::time::Instant,
) {
    // A SOCKS5 client waits for the reply before it sends: no first flight (what it sent
    // early anyway is in `handshake.early_data()`, carried by the relay).
    let first_flight = bytes::Bytes::new();
    match outbound::establish_within(&inner, peer, destination, trace, first_flight).await {
        Ok(established) => {
            if handshake.reply(&mut stream, REPLY_OK).await.is_ok() {
                let early = handshake.early_data();
                let downstream: BoxStream = if early.is_empty() {
                    stream
                } else {
                    Box::new(EarlyData::new(early.to_vec(), stream))
                };
                outbound::relay(&inner, downstream, peer, established, started).await;
            }
        }
        Err(err) => {
            let code = match err {
                OutboundError::Hbone(crate::hbone::HboneError::Status { status, .. })
                    if status == http::StatusCode::UNAUTHORIZED =>
                {
                    REPLY_NOT_ALLOWED
                }
                OutboundError::Route(RouteError::Internal(_) | RouteError::Local(_)) => {
                    REPLY_NOT_ALLOWED
                }
                OutboundError::Route(RouteError::NoEndpoint { .. }) | OutboundError::Timeout(_) => {
                    REPLY_HOST_UNREACHABLE
                }
                _ => REPLY_FAILURE,
            };
            let _ = handshake.reply(&mut stream, code).await;
            outbound::failed(&inner, peer, destination, &err);
        }
    }
}

/// A client connection whose first bytes were read with the handshake: they are read again
/// first, then the connection itself.
struct EarlyData {
    early: Vec<u8>,
    taken: usize,
    stream: BoxStream,
}

impl EarlyData {
    fn new(early: Vec<u8>, stream: BoxStream) -> Self {
        EarlyData {
            early,
            taken: 0,
            stream,
        }
    }
}

impl AsyncRead for EarlyData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.taken);
            buf.put_slice(&this.early[this.taken..this.taken + n]);
            this.taken += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for EarlyData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod fuzz;
