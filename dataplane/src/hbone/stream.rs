//! One tunnelled TCP connection: an HTTP/2 stream pair, and the copy loop between it and a
//! TCP socket. Bytes are not copied or allocated per byte: reads land in a few rotating
//! `BytesMut` buffers whose filled part is frozen and handed to h2 as-is (a buffer is reused
//! once h2 has written its chunks out), and received DATA frames are written out directly.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Size of one read from the TCP side: with the 9-byte frame header, one DATA frame is exactly
/// sixteen full TLS records (16 KiB of plaintext each), so no runt record follows a frame.
const READ_CHUNK: usize = 16 * 16 * 1024 - 9;
/// Read buffers kept for reuse per stream.
const SPARE_BUFFERS: usize = 4;

/// The two halves of an HBONE stream once the CONNECT has been answered 200.
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
}

/// Bytes read from and written to one side of a relay, kept as they flow so that a relay that
/// ends in an error still reports what it moved.
#[derive(Debug, Default)]
pub struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteCounts {
    /// Bytes read from the wrapped stream.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes written to the wrapped stream.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Counts bytes read from the stream before it was wrapped (a first flight).
    pub(crate) fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }
}

/// A stream that counts the bytes through it (one atomic add per I/O call, not per byte).
pub struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counts: Arc<ByteCounts>) -> Self {
        Counted { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(super) fn h2_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 io error"));
    }
    io::Error::other(err)
}

/// A peer resetting a stream with NO_ERROR or CANCEL is an ordinary close.
pub(super) fn is_graceful_reset(err: &h2::Error) -> bool {
    matches!(
        err.reason(),
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
    )
}

async fn tcp_to_h2<R: AsyncRead + Unpin>(
    mut tcp: R,
    send: &mut SendStream<Bytes>,
) -> io::Result<()> {
    let mut spares: std::collections::VecDeque<BytesMut> = std::collections::VecDeque::new();
    loop {
        let mut buf = take_buffer(&mut spares);
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            // Half-close: END_STREAM on an empty DATA frame. If the peer already reset the
            // stream there is nobody left to tell, and nothing was lost.
            if let Err(err) = send.send_data(Bytes::new(), true) {
                tracing::debug!(%err, "END_STREAM not sent: stream already closed");
            }
            return Ok(());
        }
        let mut chunk = buf.split().freeze();
        spares.push_back(buf);
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(err)) if is_graceful_reset(&err) => return Ok(()),
                Some(Err(err)) => return Err(h2_io(err)),
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed")),
            };
            let piece = chunk.split_to(granted.min(chunk.len()));
            send.send_data(piece, false).map_err(h2_io)?;
        }
    }
}

/// A read buffer with room for a whole chunk: a spare whose earlier chunks h2 has released,
/// else a fresh one (the oldest spare is let go; its memory is freed with its last chunk).
fn take_buffer(spares: &mut std::collections::VecDeque<BytesMut>) -> BytesMut {
    for _ in 0..spares.len() {
        if let Some(mut candidate) = spares.pop_front() {
            if candidate.capacity() >= READ_CHUNK || candidate.try_reclaim(READ_CHUNK) {
                return candidate;
            }
            spares.push_back(candidate);
        }
    }
    if spares.len() >= SPARE_BUFFERS {
        spares.pop_front();
    }
    BytesMut::with_capacity(READ_CHUNK)
}

/// How the tunnel-to-TCP direction ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// END_STREAM: the peer half-closed; the other direction may go on.
    EndStream,
    /// RST_STREAM NO_ERROR/CANCEL: the stream is over in both directions.
    Reset,
}

async fn h2_to_tcp<W: AsyncWrite + Unpin>(recv: &mut RecvStream, mut tcp: W) -> io::Result<Ended> {
    let mut ended = Ended::EndStream;
    while let Some(chunk) = recv.data().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) if is_graceful_reset(&err) => {
                ended = Ended::Reset;
                break;
            }
            Err(err) => return Err(h2_io(err)),
        };
        tcp.write_all(&chunk).await?;
        recv.flow_control()
            .release_capacity(chunk.len())
            .map_err(h2_io)?;
    }
    tcp.shutdown().await?;
    Ok(ended)
}

/// Copies both ways until both directions have closed, or either fails. Half-closes are
/// carried across: TCP EOF becomes END_STREAM and END_STREAM becomes a TCP write shutdown; a
/// graceful reset from the peer ends both directions. Wrap `tcp` in [`Counted`] to know how
/// many bytes moved.
pub async fn copy_bidirectional<S>(stream: H2Stream, tcp: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let H2Stream { mut send, mut recv } = stream;
    let (read_half, write_half) = tokio::io::split(tcp);
    let result = {
        let up = tcp_to_h2(read_half, &mut send);
        let down = h2_to_tcp(&mut recv, write_half);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                biased;
                r = &mut down, if !down_done => match r {
                    Ok(Ended::Reset) => break Ok(()),
                    Ok(Ended::EndStream) => down_done = true,
                    Err(e) => break Err(e),
                },
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(e) => break Err(e),
                },
            }
            if up_done && down_done {
                break Ok(());
            }
        }
    };
    if result.is_err() {
        send.send_reset(h2::Reason::CANCEL);
    }
    result
}
