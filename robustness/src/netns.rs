//! A private network namespace for the whole run, when the runner may make one (root, or a
//! user namespace that grants `CAP_NET_ADMIN`).
//!
//! Inside it, nothing but this run listens: the SOCKS5 and HBONE attacks can put canary
//! listeners on `127.0.0.1:15000` and the other well-known ports to catch a proxy that
//! connects to itself, and a second address that is not loopback (`192.0.2.1`, TEST-NET-1,
//! on `lo` of this namespace only) gives the one peer that `/quitquitquit` must refuse.
//! Without the privilege the run stays on the host's loopback and the attacks that need the
//! namespace say they were skipped.

use std::io;
use std::net::Ipv4Addr;

/// The non-loopback address added to the private namespace's `lo`.
pub const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Moves this process into a new network namespace with `lo` up and [`OUTSIDER`] on it.
///
/// Must be called while the process has one thread: `unshare` moves only the calling
/// thread, and every thread and child started later inherits it.
pub fn enter_private() -> io::Result<()> {
    // SAFETY: unshare takes flags only; we are single-threaded here (see above).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = Ioctl::open()?;
    let flags = socket.flags("lo")?;
    socket.set_flags("lo", flags | libc::IFF_UP as libc::c_short)?;
    socket.set_addr("lo:1", libc::SIOCSIFADDR, OUTSIDER)?;
    socket.set_addr("lo:1", libc::SIOCSIFNETMASK, Ipv4Addr::BROADCAST)?;
    Ok(())
}

/// A datagram socket for interface ioctls.
struct Ioctl(libc::c_int);

impl Drop for Ioctl {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(self.0) };
    }
}

impl Ioctl {
    fn open() -> io::Result<Self> {
        // SAFETY: socket takes plain integers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Ioctl(fd))
    }

    fn request(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        req
    }

    fn call(&self, op: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for these interface requests.
        if unsafe { libc::ioctl(self.0, op as _, req as *mut libc::ifreq) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn flags(&self, name: &str) -> io::Result<libc::c_short> {
        let mut req = Self::request(name);
        self.call(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    fn set_flags(&self, name: &str, flags: libc::c_short) -> io::Result<()> {
        let mut req = Self::request(name);
        req.ifr_ifru.ifru_flags = flags;
        self.call(libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_addr(&self, name: &str, op: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
        let mut req = Self::request(name);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in (and is read as) the sockaddr member.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &sin as *const libc::sockaddr_in as *const u8,
                &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut u8,
                std::mem::size_of::<libc::sockaddr_in>(),
            );
        }
        self.call(op, &mut req)
    }
}
