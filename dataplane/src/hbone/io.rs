//! An HBONE stream as a byte stream, for proxies that speak a protocol *inside* the tunnel
//! (the waypoint serves and originates HTTP on HBONE streams). Received DATA frames are
//! handed out without copying into an intermediate buffer beyond what the reader asks for,
//! and flow-control capacity is returned as bytes are consumed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{H2Stream, h2_io, is_graceful_reset};

/// [`H2Stream`] with `AsyncRead` and `AsyncWrite`: END_STREAM reads as EOF, a write shutdown
/// sends END_STREAM, and a graceful reset (NO_ERROR, CANCEL) reads as EOF.
pub struct H2Io {
    stream: H2Stream,
    /// What is left of the last DATA frame.
    pending: Bytes,
    /// END_STREAM or a graceful reset was seen.
    eof: bool,
    /// END_STREAM was sent.
    shut: bool,
}

impl H2Io {
    pub fn new(stream: H2Stream) -> Self {
        H2Io {
            stream,
            pending: Bytes::new(),
            eof: false,
            shut: false,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() && !this.eof {
            match ready!(this.stream.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    this.stream
                        .recv
                        .flow_control()
                        .release_capacity(chunk.len())
                        .map_err(h2_io)?;
                    this.pending = chunk;
                }
                Some(Err(err)) if is_graceful_reset(&err) => this.eof = true,
                Some(Err(err)) => return Poll::Ready(Err(h2_io(err))),
                None => this.eof = true,
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.stream.send;
        send.reserve_capacity(buf.len());
        let granted = match ready!(send.poll_capacity(cx)) {
            Some(Ok(granted)) => granted,
            Some(Err(err)) => return Poll::Ready(Err(h2_io(err))),
            None => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "stream closed",
                )));
            }
        };
        let n = granted.min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !std::mem::replace(&mut self.shut, true)
            && let Err(err) = self.stream.send.send_data(Bytes::new(), true)
        {
            tracing::debug!(%err, "END_STREAM not sent: stream already closed");
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        if !self.shut {
            self.stream.send.send_reset(h2::Reason::CANCEL);
        }
    }
}
