//! Free loopback ports for components that take a port number, not a listener.
//!
//! The kernel picks a free port (bind to port 0), the listener is closed and the number handed
//! to the child, which binds it a moment later. Another process could take it in between;
//! the numbers come from the kernel's ephemeral range, which it hands out in rotation, so that
//! window is small. Within this process, a number is never handed out twice, so two harnesses
//! started at once cannot collide with each other.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    // A few tries: the kernel may offer a number this process already handed out (and whose
    // child has not bound it yet).
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port after 64 tries",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for port in ports {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
        }
    }
}
