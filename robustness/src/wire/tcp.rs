//! TCP as an attacker uses it: connect from a chosen source address, under a deadline, and
//! close with a reset so that thousands of closes leave no `TIME_WAIT` behind to exhaust the
//! ephemeral ports of the next step.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `to` from `from` (any port), failing after `within`.
pub async fn connect_from(
    from: Option<IpAddr>,
    to: SocketAddr,
    within: Duration,
) -> io::Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(from) = from {
        // The port is chosen at connect time, per destination, not at bind time: otherwise
        // one source address would run out of ports after ~28,000 sockets in all.
        let sock = socket2::SockRef::from(&socket);
        let _ = set_bind_address_no_port(&sock);
        socket.bind(SocketAddr::new(from, 0))?;
    }
    match tokio::time::timeout(within, socket.connect(to)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {to} timed out after {within:?}"),
        )),
    }
}

fn set_bind_address_no_port(sock: &socket2::SockRef<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int we own, on a descriptor the SockRef borrows.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Whether the server closed `stream` (EOF or an error) within `within`, reading and
/// discarding whatever it sends meanwhile.
pub async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether the server has already closed `stream`, without waiting: a zero-length read or
/// an error means closed; nothing to read means still open.
pub fn already_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Sends `bytes` on a fresh connection, then reads what comes back for up to `within` (until
/// the server closes); what was read.
pub async fn send_and_read(
    from: Option<IpAddr>,
    to: SocketAddr,
    bytes: &[u8],
    within: Duration,
) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut s = connect_from(from, to, Duration::from_secs(2)).await?;
    // A server may close before taking everything: that is an answer, not an error.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 {
            break;
        }
    }
    Ok(out)
}

/// One HTTP/1.1 request (raw `head`, `Connection: close` is up to the caller) and the
/// status of the answer, 0 when there is none.
pub async fn http_status(from: Option<IpAddr>, to: SocketAddr, head: &str) -> io::Result<u16> {
    let out = send_and_read(from, to, head.as_bytes(), Duration::from_secs(2)).await?;
    Ok(status_of(&out))
}

/// The status code of an HTTP/1.x answer, 0 if it is not one.
pub fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(&answer[..answer.len().min(64)]);
    if !text.starts_with("HTTP/1.") {
        return 0;
    }
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status_of(b"HTTP/1.1 403 Forbidden\r\n\r\n"), 403);
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), 200);
        assert_eq!(status_of(b"\x15\x03\x03"), 0);
        assert_eq!(status_of(b""), 0);
    }
}
