//! The ceiling: what any proxy pair in the mesh's places could do at best on this machine.
//!
//! Two relays that only move bytes — no TLS, no HTTP/2, no policy, no runtime: blocking
//! threads and `splice(2)`, so the bytes never enter user space — one process in each pod,
//! where upstream's dedicated-mode ztunnels sit, on the same capture. The client pod's relay
//! accepts the captured connection on 15001, reads its original destination, opens a plain
//! TCP connection to the server pod's 15008 and sends the destination port first (two
//! bytes); the server pod's relay connects to that port on its pod address and splices.
//!
//! The ratios against it say how far the kernel's own hops (three sockets per direction
//! instead of one) limit a mesh, before any encryption: a target above the ceiling is one no
//! proxy can meet here. Each connection costs a TCP handshake between the pods (the mesh
//! pools its tunnels), so its connection rate is not a ceiling for a pooling proxy; its
//! throughput and latency are.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use rustix::pipe::{PipeFlags, SpliceFlags};

/// The argument that makes the bench binary a relay instead of a benchmark.
pub const ARG: &str = "splice-relay";
/// The client pod's relay: where the capture sends the app's connections.
pub const OUTBOUND_PORT: u16 = 15001;
/// The server pod's relay: where the client pod's relay connects.
pub const INBOUND_PORT: u16 = 15008;
/// As much as one splice moves: the largest pipe an unprivileged process may ask for, 1 MiB.
const PIPE_SIZE: usize = 1 << 20;

/// Runs the relay named by the arguments after [`ARG`] (`outbound` or `inbound`) until killed.
pub fn main(args: &[String]) -> io::Result<()> {
    let side = args.first().map(String::as_str);
    let port = match side {
        Some("outbound") => OUTBOUND_PORT,
        Some("inbound") => INBOUND_PORT,
        other => {
            return Err(io::Error::other(format!(
                "{ARG}: expected `outbound` or `inbound`, got {other:?}"
            )));
        }
    };
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    eprintln!("{ARG} {side:?} listening on {port}");
    loop {
        let (accepted, _) = listener.accept()?;
        let inbound = port == INBOUND_PORT;
        std::thread::spawn(move || {
            let result = if inbound {
                serve_inbound(accepted)
            } else {
                serve_outbound(accepted)
            };
            if let Err(err) = result {
                // Resets are how the bench's clients close; nothing to report for those.
                if err.kind() != io::ErrorKind::ConnectionReset {
                    eprintln!("{ARG}: {err}");
                }
            }
        });
    }
}

fn serve_outbound(app: TcpStream) -> io::Result<()> {
    let destination = socket2::SockRef::from(&app)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))?;
    let mut peer = TcpStream::connect(SocketAddr::new(destination.ip(), INBOUND_PORT))?;
    peer.set_nodelay(true)?;
    app.set_nodelay(true)?;
    peer.write_all(&destination.port().to_be_bytes())?;
    relay(app, peer)
}

fn serve_inbound(mut tunnel: TcpStream) -> io::Result<()> {
    let mut port = [0u8; 2];
    tunnel.read_exact(&mut port)?;
    let pod = tunnel.local_addr()?.ip();
    let app = TcpStream::connect(SocketAddr::new(pod, u16::from_be_bytes(port)))?;
    app.set_nodelay(true)?;
    tunnel.set_nodelay(true)?;
    relay(tunnel, app)
}

/// Both directions, one on a second thread; either side's EOF is passed on as a write
/// shutdown, an error closes both sockets so the other direction ends too.
fn relay(a: TcpStream, b: TcpStream) -> io::Result<()> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let back = std::thread::spawn(move || direction(&b2, &a2));
    let forth = direction(&a, &b);
    let back = back
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    forth.and(back)
}

fn direction(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let result = splice_all(from, to);
    match &result {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
    result
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_out, pipe_in) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe_in, PIPE_SIZE);
    loop {
        let n = rustix::pipe::splice(
            from.as_fd(),
            None,
            &pipe_in,
            None,
            PIPE_SIZE,
            SpliceFlags::MOVE,
        )?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            match rustix::pipe::splice(&pipe_out, None, to.as_fd(), None, left, SpliceFlags::MOVE)?
            {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                sent => left -= sent,
            }
        }
    }
}
