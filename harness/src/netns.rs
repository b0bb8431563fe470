//! Private network namespaces, so a test can run proxies that bind every address (upstream's
//! ztunnel listens on `[::]:15001`, `:15006`, `:15008`, …) and route between "nodes" with
//! real interfaces, without touching the machine's own network.
//!
//! A [`Netns`] is a named namespace (`/run/netns/harness-<pid>-<n>-<role>`, made with
//! `ip netns add`); a [`Lan`] is a bridge in a namespace of its own, to which other namespaces
//! are attached by veth pairs created directly between the two namespaces, so no interface
//! ever appears in the host's namespace. Children run inside with [`Netns::command`] (a
//! `setns` between fork and exec), and the test's own sockets are made inside with
//! [`Netns::enter`] (a socket stays in the namespace it was created in).
//!
//! Everything is removed when dropped, also on panic; a namespace held in a static is removed
//! at exit ([`crate::at_exit`]); and namespaces left by a test process that was killed are
//! swept the next time one is created.
//!
//! Needs root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`) and `ip` (iproute2): [`check`] says why not,
//! for a `SKIP` line.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/run/netns";
/// Every name this module makes starts so; the pid after it tells whose it is.
const PREFIX: &str = "harness-";

/// Why a namespace could not be made or configured.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Whether this process can make namespaces: root and `ip` present. The answer is the
/// reason it cannot, for [`crate::skip`].
pub fn check() -> Result<(), String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`ip -V` exited with {}", out.status)),
        Err(e) => Err(format!("`ip` not found ({e}): apt-get install -y iproute2")),
    }
}

/// Runs `program args…` to completion; its stderr is the error.
fn run(mut command: Command) -> Result<(), NetnsError> {
    let shown = format!("{command:?}").replace('"', "");
    let out = command.output().map_err(|source| NetnsError::Io {
        what: shown.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetnsError::Command {
        command: shown,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let mut command = Command::new("ip");
    command.args(args);
    run(command)
}

/// Unmounts and unlinks `/run/netns/NAME`, as `ip netns del` does; the namespace itself goes
/// when its last process does. Plain syscalls, so it can run from `atexit`.
pub(crate) fn remove(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; failures (already gone) are harmless.
    unsafe {
        libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
        libc::unlink(c_path.as_ptr());
    }
}

/// Removes namespaces named by test processes that no longer exist (killed before their
/// cleanup ran). Others' live namespaces are left alone: their pid still answers.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the pid exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            remove(&entry.path());
        }
    }
}

/// A named network namespace with its loopback up; removed when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// Held open so children and threads can `setns` into it by descriptor.
    file: Arc<File>,
}

impl Netns {
    /// A new namespace; `role` ends its name, for whoever lists `ip netns` mid-run.
    pub fn create(role: &str) -> Result<Netns, NetnsError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        let path = Path::new(NETNS_DIR).join(&name);
        ip(&["netns", "add", &name])?;
        // From here on the namespace exists: removed at exit even if the rest fails.
        crate::at_exit::netns(path.clone());
        let opened = File::open(&path).map_err(|source| NetnsError::Io {
            what: format!("opening {}", path.display()),
            source,
        });
        let file = match opened {
            Ok(file) => Arc::new(file),
            Err(e) => {
                remove(&path);
                crate::at_exit::forget_netns(&path);
                return Err(e);
            }
        };
        let netns = Netns { name, path, file };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A veth pair made from inside this namespace: `name` here, `peer_name` inside `peer`.
    /// Both ends are created in place, so no interface ever appears in the host's namespace
    /// (not even for a moment), and both go when either namespace does.
    pub fn veth_to(&self, name: &str, peer: &Netns, peer_name: &str) -> Result<(), NetnsError> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ])
    }

    /// `program args…` run to completion inside, e.g. `iptables`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<(), NetnsError> {
        let mut command = self.command(program);
        command.args(args);
        run(command)
    }

    /// A command whose process joins this namespace before it execs: give it to
    /// [`crate::Process::spawn`] to have it killed with the test.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        let file = Arc::clone(&self.file);
        // SAFETY: runs between fork and exec; `setns` is a plain syscall and nothing here
        // allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `f` on a thread of its own that has joined this namespace: sockets it creates
    /// (listeners, clients) live here, wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is held open by `self`, which outlives the scope.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.path);
        crate::at_exit::forget_netns(&self.path);
    }
}

/// A bridge in a namespace of its own: a switch that namespaces are plugged into.
#[derive(Debug)]
pub struct Lan {
    hub: Netns,
    ports: AtomicU32,
}

impl Lan {
    pub fn create() -> Result<Lan, NetnsError> {
        let hub = Netns::create("lan")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            hub,
            ports: AtomicU32::new(0),
        })
    }

    /// Plugs `netns` in: a veth pair, `eth0` inside `netns` with `cidr` (e.g.
    /// `198.18.0.2/24`), its peer on the bridge. Both ends are made in place, so no name is
    /// ever taken in the host's namespace.
    pub fn attach(&self, netns: &Netns, cidr: &str) -> Result<(), NetnsError> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.hub.veth_to(&port, netns, "eth0")?;
        self.hub
            .ip(&["link", "set", &port, "master", "br0", "up"])?;
        netns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn usable() -> bool {
        match check().and_then(|()| Netns::create("probe").map(drop).map_err(|e| e.to_string())) {
            Ok(()) => true,
            Err(why) => {
                crate::skip("netns tests", &why);
                false
            }
        }
    }

    #[test]
    fn two_namespaces_on_a_lan_talk_and_vanish_when_dropped() {
        if !usable() {
            return;
        }
        let lan = Lan::create().unwrap();
        let a = Netns::create("a").unwrap();
        let b = Netns::create("b").unwrap();
        lan.attach(&a, "198.18.9.1/24").unwrap();
        lan.attach(&b, "198.18.9.2/24").unwrap();
        let listener = b
            .enter(|| TcpListener::bind("198.18.9.2:7000"))
            .unwrap()
            .unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(peer.ip().to_string().as_bytes()).unwrap();
        });
        let mut seen = String::new();
        a.enter(|| TcpStream::connect("198.18.9.2:7000"))
            .unwrap()
            .unwrap()
            .read_to_string(&mut seen)
            .unwrap();
        server.join().unwrap();
        assert_eq!(seen, "198.18.9.1", "b sees a's address on the lan");
        // The host's own namespace has neither address: the lan is private. (Asked of `ip`,
        // not by connecting: from the host that would go out of its default route.)
        let host = Command::new("ip").args(["-o", "addr"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&host.stdout).contains("198.18.9."));
        // A child joins the namespace it was made for.
        let out = a.command("ip").args(["-o", "addr"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.9.1/24"));
        let paths = [a.path.clone(), b.path.clone(), lan.hub.path.clone()];
        drop((a, b, lan));
        for path in paths {
            assert!(!path.exists(), "{} left behind", path.display());
        }
    }

    #[test]
    fn a_panicking_test_leaves_no_namespace() {
        if !usable() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let ns = Netns::create("panics").unwrap();
            tx.send(ns.path.clone()).unwrap();
            panic!("the test fails with its namespace up");
        })
        .join();
        assert!(panicked.is_err());
        let path = rx.recv().unwrap();
        assert!(!path.exists(), "{} outlived the panic", path.display());
    }
}
