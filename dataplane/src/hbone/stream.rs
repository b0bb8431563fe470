//! One tunnelled TCP connection: an HTTP/2 stream pair, and the copy loop between it and a
//! TCP socket. Bytes move without per-byte allocation: reads land in a reusable `BytesMut`
//! whose filled part is frozen and handed to h2 as-is; received DATA frames are written out
//! directly.

use std::future::poll_fn;
use std::io;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of one read from the TCP side.
const READ_CHUNK: usize = 64 * 1024;

/// The two halves of an HBONE stream once the CONNECT has been answered 200.
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
}

/// Bytes moved by a tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the TCP side into the tunnel.
    pub to_tunnel: u64,
    /// From the tunnel out to the TCP side.
    pub from_tunnel: u64,
}

fn h2_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 io error"));
    }
    io::Error::other(err)
}

/// A peer resetting a stream with NO_ERROR or CANCEL is an ordinary close.
fn is_graceful_reset(err: &h2::Error) -> bool {
    matches!(
        err.reason(),
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
    )
}

async fn tcp_to_h2<R: AsyncRead + Unpin>(
    mut tcp: R,
    send: &mut SendStream<Bytes>,
) -> io::Result<u64> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut total = 0u64;
    loop {
        if buf.capacity() < READ_CHUNK / 4 {
            // Reclaims the previous allocation once h2 has written it out.
            buf.reserve(READ_CHUNK);
        }
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: END_STREAM on an empty DATA frame.
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += n as u64;
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(err)) if is_graceful_reset(&err) => return Ok(total),
                Some(Err(err)) => return Err(h2_io(err)),
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
            };
            let piece = chunk.split_to(granted.min(chunk.len()));
            send.send_data(piece, false).map_err(h2_io)?;
        }
    }
}

async fn h2_to_tcp<W: AsyncWrite + Unpin>(recv: &mut RecvStream, mut tcp: W) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) if is_graceful_reset(&err) => break,
            Err(err) => return Err(h2_io(err)),
        };
        tcp.write_all(&chunk).await?;
        total += chunk.len() as u64;
        recv.flow_control()
            .release_capacity(chunk.len())
            .map_err(h2_io)?;
    }
    tcp.shutdown().await?;
    Ok(total)
}

/// Copies both ways until both directions have closed, or either fails. Half-closes are
/// carried across: TCP EOF becomes END_STREAM and END_STREAM becomes a TCP write shutdown.
pub async fn copy_bidirectional<S>(stream: H2Stream, tcp: S) -> io::Result<Transferred>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let H2Stream { mut send, mut recv } = stream;
    let (read_half, write_half) = tokio::io::split(tcp);
    let up = tcp_to_h2(read_half, &mut send);
    let down = h2_to_tcp(&mut recv, write_half);
    let result = futures_util::future::try_join(up, down).await;
    match result {
        Ok((to_tunnel, from_tunnel)) => Ok(Transferred {
            to_tunnel,
            from_tunnel,
        }),
        Err(err) => {
            send.send_reset(h2::Reason::CANCEL);
            Err(err)
        }
    }
}
