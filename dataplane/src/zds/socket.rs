//! The ZDS transport: a Unix `SOCK_SEQPACKET` socket, one protobuf message per packet, a pod's
//! network namespace passed beside its message as an `SCM_RIGHTS` descriptor.
//!
//! Packets keep their boundaries, so there is no framing; a packet longer than
//! [`MAX_PACKET`] is cut by the kernel and refused here as truncated.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest packet either side reads (upstream reads at most 1024 bytes).
pub const MAX_PACKET: usize = 1024;

/// One received packet: its bytes, and the descriptor that came with it, if any.
#[derive(Debug)]
pub struct Packet {
    pub bytes: Vec<u8>,
    pub descriptor: Option<OwnedFd>,
}

/// A connected ZDS socket (either end).
#[derive(Debug)]
pub struct ZdsSocket {
    fd: AsyncFd<OwnedFd>,
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Hands `fd` to tokio's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, stays open until it drops with the `AsyncFd`, and its
    // `as_raw_fd` always returns that one descriptor.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

impl ZdsSocket {
    /// Connects to the node agent's socket at `path` (ztunnel's side).
    pub async fn connect(path: &Path) -> io::Result<ZdsSocket> {
        let fd = seqpacket()?;
        let addr = SocketAddrUnix::new(path)?;
        // A SEQPACKET connect to a listening Unix socket completes at once or fails.
        rustix::net::connect(&fd, &addr)?;
        ZdsSocket::from_fd(fd)
    }

    /// Wraps an accepted or connected non-blocking socket.
    fn from_fd(fd: OwnedFd) -> io::Result<ZdsSocket> {
        Ok(ZdsSocket {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// A connected pair, for tests of either end.
    pub fn pair() -> io::Result<(ZdsSocket, ZdsSocket)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok((ZdsSocket::from_fd(a)?, ZdsSocket::from_fd(b)?))
    }

    /// Sends one packet, with `descriptor` beside it when given.
    pub async fn send(&self, bytes: &[u8], descriptor: Option<&OwnedFd>) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                let borrowed = descriptor.map(|d| [d.as_fd()]);
                if let Some(fds) = &borrowed {
                    control.push(SendAncillaryMessage::ScmRights(fds));
                }
                let n = rustix::net::sendmsg(
                    fd.get_ref(),
                    &[IoSlice::new(bytes)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?;
                Ok(n)
            });
            match sent {
                Ok(Ok(n)) if n == bytes.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("sent {n} of a {}-byte packet", bytes.len()),
                    ));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet. `Ok(None)` when the peer closed.
    pub async fn recv(&self) -> io::Result<Option<Packet>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                let mut buf = vec![0u8; MAX_PACKET];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    fd.get_ref(),
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut descriptor = None;
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = message {
                        // More than one descriptor is not the protocol: the extra ones are
                        // closed as they drop.
                        for fd in fds {
                            descriptor.get_or_insert(fd);
                        }
                    }
                }
                if msg.flags.contains(ReturnFlags::TRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a packet longer than {MAX_PACKET} bytes"),
                    ));
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more descriptors than one beside a packet",
                    ));
                }
                buf.truncate(msg.bytes);
                Ok((buf, descriptor))
            });
            match received {
                // Zero bytes and no descriptor is the peer's close: every message of the
                // protocol encodes to at least two bytes.
                Ok(Ok((bytes, None))) if bytes.is_empty() => return Ok(None),
                Ok(Ok((bytes, descriptor))) => return Ok(Some(Packet { bytes, descriptor })),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The node agent's listening socket.
#[derive(Debug)]
pub struct ZdsListener {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsListener {
    /// Listens at `path`, replacing a socket file a previous run left there.
    pub fn bind(path: &Path) -> io::Result<ZdsListener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = seqpacket()?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, 16)?;
        Ok(ZdsListener {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    pub async fn accept(&self) -> io::Result<ZdsSocket> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                Ok(rustix::net::accept_with(
                    fd.get_ref(),
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                )?)
            }) {
                Ok(Ok(fd)) => return ZdsSocket::from_fd(fd),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
