//! In-pod capture on a real kernel: the network namespaces of the pods a ztunnel serves, held
//! open by the descriptors the node agent handed over, and the sockets made inside them.
//!
//! A socket belongs to the namespace its creating thread was in, wherever it is used
//! afterwards. So the calling thread steps into the pod's namespace for the one `socket()`
//! call and straight back, with no `.await` between: a runtime worker is never left in a pod's
//! namespace. Connections ztunnel makes from inside a pod carry upstream's mark (0x539), which
//! the pod's redirection rules let through.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use socket2::{Domain, Protocol, Socket, Type};

/// The mark on ztunnel's own sockets inside a pod, upstream's: the pod's rules do not
/// redirect what carries it.
pub const ZTUNNEL_MARK: u32 = 0x539;

/// Backlog of a listener inside a pod.
const BACKLOG: i32 = 1024;

/// One adopted pod.
#[derive(Debug)]
struct Pod {
    netns: OwnedFd,
    addresses: Vec<IpAddr>,
}

/// The pods whose namespaces this process holds, by uid and by address.
#[derive(Debug, Default)]
pub(super) struct PodNamespaces {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_uid: BTreeMap<String, Arc<Pod>>,
    by_ip: BTreeMap<IpAddr, Arc<Pod>>,
}

fn poisoned() -> io::Error {
    io::Error::other("the pod table's lock was poisoned")
}

impl PodNamespaces {
    /// Holds `netns` for pod `uid` and reads the pod's addresses from inside it.
    pub(super) fn adopt(&self, uid: &str, netns: OwnedFd) -> io::Result<Vec<IpAddr>> {
        let addresses = in_namespace(netns.as_fd(), interface_addresses)??;
        let pod = Arc::new(Pod {
            netns,
            addresses: addresses.clone(),
        });
        let mut table = self.inner.lock().map_err(|_| poisoned())?;
        table.remove(uid);
        for ip in &addresses {
            table.by_ip.insert(*ip, pod.clone());
        }
        table.by_uid.insert(uid.to_string(), pod);
        Ok(addresses)
    }

    /// Lets go of pod `uid`'s namespace (its listeners close as their owners drop them).
    pub(super) fn release(&self, uid: &str) {
        if let Ok(mut table) = self.inner.lock() {
            table.remove(uid);
        }
    }

    fn by_uid(&self, uid: &str) -> io::Result<Arc<Pod>> {
        let table = self.inner.lock().map_err(|_| poisoned())?;
        table.by_uid.get(uid).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("pod {uid} was not adopted"),
            )
        })
    }

    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Pod>> {
        let table = self.inner.lock().ok()?;
        table.by_ip.get(&ip.to_canonical()).cloned()
    }

    /// A listener on `addr` inside pod `uid`'s namespace.
    pub(super) fn bind(&self, uid: &str, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let pod = self.by_uid(uid)?;
        let socket = in_namespace(pod.netns.as_fd(), || tcp_socket(addr))??;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// An unconnected, marked socket for `destination` inside the namespace of the pod that
    /// owns `pod`, bound to `source` when that is one of the pod's addresses; `None` when no
    /// adopted pod owns `pod`.
    pub(super) fn socket_from(
        &self,
        pod: IpAddr,
        source: Option<IpAddr>,
        destination: SocketAddr,
    ) -> io::Result<Option<tokio::net::TcpSocket>> {
        let Some(owner) = self.by_ip(pod) else {
            return Ok(None);
        };
        let socket = in_namespace(owner.netns.as_fd(), || tcp_socket(destination))??;
        socket.set_mark(ZTUNNEL_MARK)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = source.map(|ip| ip.to_canonical())
            && ip.is_ipv4() == destination.is_ipv4()
        {
            if owner.addresses.contains(&ip) {
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            } else if ip.is_ipv4()
                && let Err(err) = bind_transparent(&socket, ip)
            {
                // Best effort, as upstream: without it the app sees the connection come from
                // its own pod's address rather than the client's.
                tracing::debug!(source = %ip, %err, "cannot deliver from the client's address");
            }
        }
        let stream = std::net::TcpStream::from(socket);
        Ok(Some(tokio::net::TcpSocket::from_std_stream(stream)))
    }
}

impl Table {
    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for ip in &old.addresses {
                if self.by_ip.get(ip).is_some_and(|p| Arc::ptr_eq(p, &old)) {
                    self.by_ip.remove(ip);
                }
            }
        }
    }
}

/// Binds `socket` to a foreign IPv4 address `ip` (a client's, for delivery to the app):
/// needs `CAP_NET_ADMIN`, and the node agent's reply routing in the pod so the app's answers
/// come back to this socket (`node_agent::RULESET`, IPv4 only, as its capture is).
fn bind_transparent(socket: &Socket, ip: IpAddr) -> io::Result<()> {
    socket.set_ip_transparent_v4(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    Ok(socket)
}

/// This process's own network namespace, opened once from the main thread's, which never
/// leaves it.
fn home() -> io::Result<BorrowedFd<'static>> {
    static HOME: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    let home = HOME.get_or_init(|| {
        std::fs::File::open("/proc/self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| format!("opening /proc/self/ns/net: {e}"))
    });
    match home {
        Ok(fd) => Ok(fd.as_fd()),
        Err(why) => Err(io::Error::other(why.clone())),
    }
}

/// Runs `f` with the calling thread inside `netns`, then puts the thread back.
fn in_namespace<T>(netns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = home()?;
    move_into_link_name_space(netns, Some(LinkNameSpaceType::Network))?;
    let out = f();
    if let Err(err) = move_into_link_name_space(home, Some(LinkNameSpaceType::Network)) {
        // A runtime thread stuck in a pod's namespace would make every later socket there:
        // traffic of one pod would leave from another. Stopping is the only safe answer.
        tracing::error!(%err, "cannot return to the ztunnel's own network namespace; aborting");
        std::process::abort();
    }
    Ok(out)
}

/// The addresses of the calling thread's namespace, less loopback and IPv6 link-local.
fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: on success `head` is a list this function owns until `freeifaddrs`.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list, which is not freed until after the loop.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points at a sockaddr whose family says its real type.
            let address = unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            if let Some(ip) = address
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
                && !addresses.contains(&ip)
            {
                addresses.push(ip);
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from `getifaddrs` and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}
