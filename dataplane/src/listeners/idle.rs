//! A stream that fails once nothing has moved on it for a while: what keeps a silent client
//! (connected and never speaking, or kept alive and forgotten) from holding a connection
//! slot and a descriptor of a listener forever. For a protocol whose connections may idle
//! once established (xDS over HTTP/2), only the wait for the client's preface is bounded:
//! all of it, not its first byte, or a client sending one byte and then nothing (or a byte a
//! second) would hold the connection forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S`, failing with `TimedOut` after `limit` without a byte read or written.
pub struct IdleLimit<S> {
    inner: S,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Only until this many more bytes are read (the preface); then never again.
    preface: Option<usize>,
    armed: bool,
}

impl<S> IdleLimit<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        IdleLimit {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            preface: None,
            armed: true,
        }
    }

    /// `inner`, failing if its peer sends nothing within `limit` of now; once it has,
    /// unlimited.
    pub fn until_first_read(inner: S, limit: Duration) -> Self {
        Self::until_preface(inner, limit, 1)
    }

    /// `inner`, failing unless its peer has sent `bytes` bytes (its whole preface) within
    /// `limit` of now, however it spaced them; once it has, unlimited.
    pub fn until_preface(inner: S, limit: Duration, bytes: usize) -> Self {
        IdleLimit {
            preface: Some(bytes.max(1)),
            ..IdleLimit::new(inner, limit)
        }
    }

    fn moved(&mut self, read: usize) {
        if let Some(left) = &mut self.preface {
            *left = left.saturating_sub(read);
            self.armed &= *left > 0;
            return;
        }
        self.sleep.as_mut().reset(Instant::now() + self.limit);
    }

    /// While waiting: whether the limit has passed (and so the wait should fail).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.armed && self.sleep.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle for too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleLimit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    self.moved(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved(0);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_fails_the_stream_and_traffic_keeps_it() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleLimit::new(server, Duration::from_secs(2));
        let mut client = client;
        let mut buf = [0u8; 4];
        // Traffic every second keeps it open past the limit.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails after the limit, not before.
        let started = Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_limit_bounds_only_the_wait_for_the_first_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut silent = IdleLimit::until_first_read(server, Duration::from_secs(2));
        let mut buf = [0u8; 4];
        let started = Instant::now();
        assert_eq!(
            silent.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let (mut client2, server2) = tokio::io::duplex(64);
        let mut speaking = IdleLimit::until_first_read(server2, Duration::from_secs(2));
        client2.write_all(b"PRI").await.unwrap();
        assert_eq!(speaking.read(&mut buf).await.unwrap(), 3);
        // Established: an hour of silence is fine.
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client2.write_all(b"x").await.unwrap();
            client2
        });
        assert_eq!(speaking.read(&mut buf).await.unwrap(), 1);
        drop(later.await.unwrap());
        let _ = client.write_all(b"").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_sent_in_part_or_a_byte_at_a_time_still_meets_the_deadline() {
        let mut buf = [0u8; 64];
        // Part of the preface, then nothing: dropped at the deadline from the start.
        let (mut client, server) = tokio::io::duplex(64);
        let mut partial = IdleLimit::until_preface(server, Duration::from_secs(2), 24);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        assert_eq!(partial.read(&mut buf).await.unwrap(), 14);
        let started = Instant::now();
        assert_eq!(
            partial.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // A byte a second: the deadline is not reset by each byte.
        let (mut client, server) = tokio::io::duplex(64);
        let mut trickle = IdleLimit::until_preface(server, Duration::from_secs(2), 24);
        let writer = tokio::spawn(async move {
            for _ in 0..24 {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let err = loop {
            match trickle.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        writer.abort();

        // The whole preface in time: then silence is fine.
        let (mut client, server) = tokio::io::duplex(64);
        let mut whole = IdleLimit::until_preface(server, Duration::from_secs(2), 24);
        client.write_all(&[b'P'; 24]).await.unwrap();
        assert_eq!(whole.read(&mut buf).await.unwrap(), 24);
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client.write_all(b"x").await.unwrap();
            client
        });
        assert_eq!(whole.read(&mut buf).await.unwrap(), 1);
        drop(later.await.unwrap());
    }
}
