//! The in-pod redirection: the nftables rules that send a captured pod's TCP traffic to the
//! ztunnel listeners opened inside the pod's network namespace, as upstream's in-pod mode
//! does (outbound → 15001, inbound → 15006, HBONE on 15008 kept).
//!
//! nftables rather than iptables because a pod's whole ruleset is one table, applied
//! atomically by one `nft -f -` and undone by deleting that table: nothing to parse back out
//! of `iptables-save`, and no half-installed state. `nft` runs inside the pod's namespace,
//! entered by descriptor between fork and exec, so a pod is named by its namespace alone.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The table every rule lives in (family `ip`).
pub const TABLE: &str = "ztunnel";

/// The mark the ztunnel puts on its own sockets in a pod (upstream's, 1337), so what it sends
/// from inside the pod is not captured again.
pub use crate::seams::network::ZTUNNEL_MARK;

/// The pod's ruleset, one `nft -f` script. The first two lines are nftables' idiom for
/// "delete the table if it exists": declaring an empty table is a no-op when it is there and
/// creates it when not, so the delete always succeeds, and the whole script is one
/// transaction — installing twice leaves exactly one copy.
///
/// Priority -100 is `dstnat`, where NAT redirection belongs; it is spelled as a number because
/// nft 1.0.6 refuses the name `dstnat` on the output hook.
pub const RULESET: &str = r#"table ip ztunnel {}
delete table ip ztunnel
table ip ztunnel {
	# Traffic arriving at the pod.
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		# HBONE: ztunnel's own mTLS listener in the pod takes it as addressed.
		tcp dport 15008 accept
		# The pod talking to itself, and ztunnel delivering inbound traffic to the app.
		iifname "lo" accept
		# Everything else is inbound plaintext, for ztunnel to authorize and forward.
		meta l4proto tcp redirect to :15006
	}
	# Traffic the pod sends.
	chain output {
		type nat hook output priority -100; policy accept;
		# ztunnel's own sockets in the pod (upstream's mark, 1337).
		meta mark 0x539 accept
		# Loopback, and the pod calling its own address, stay inside the pod: both leave by
		# lo (upstream's `-o lo` rule); a pod calling itself is not the mesh's business.
		oifname "lo" accept
		# Everything else is outbound, for ztunnel to carry.
		meta l4proto tcp redirect to :15001
	}
	# ztunnel delivers to the app from the client's own address (IP_TRANSPARENT), over lo:
	# such a connection is marked as it comes in, and the app's replies to that foreign
	# address are marked so the pod's policy routing (`REPLY_ROUTE`) hands them back to lo,
	# to ztunnel, instead of out of the pod (upstream's connmark 0x111 and table 100).
	chain mark_deliveries {
		type filter hook prerouting priority -150; policy accept;
		iifname "lo" meta mark 0x539 ct mark set 0x111
	}
	chain route_replies {
		type route hook output priority -150; policy accept;
		ct direction reply ct mark 0x111 meta mark set 0x111
	}
}
"#;

/// The pod's policy routing for [`RULESET`]'s marked replies, one `ip -batch -` script: what
/// carries mark 0x111 is local (table 100 sends everything to lo). Installed after
/// [`REMOVE_REPLY_ROUTE`], so installing twice leaves one rule.
pub const REPLY_ROUTE: &str = "rule add fwmark 0x111 lookup 100 pref 32764
route replace local 0.0.0.0/0 dev lo table 100
";

/// Undoes [`REPLY_ROUTE`]; what is already gone is skipped (`-force`).
const REMOVE_REPLY_ROUTE: &str = "rule del fwmark 0x111 lookup 100 pref 32764
route del local 0.0.0.0/0 dev lo table 100
";

/// Deletes the table whether or not it is there (the idiom of [`RULESET`]'s first lines), so
/// removing rules twice, or from a pod that never had them, succeeds.
const REMOVE: &str = "table ip ztunnel {}\ndelete table ip ztunnel\n";

/// Why a pod's rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The namespace path cannot be opened (gone, mistyped, not permitted).
    #[error("opening the network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The path names something else (a file, another kind of namespace).
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    /// `nft` could not be started, or the namespace entered before it.
    #[error("running `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    /// `nft` (or `ip`) ran and refused; its stderr says why. `args` starts with the program.
    #[error("`{args}` failed ({status}): {stderr}")]
    Nft {
        args: String,
        status: String,
        stderr: String,
    },
}

/// What installs and removes a pod's redirection. [`Nft`] is the real one; the seam exists
/// so that the pod table and the ZDS server can be tested without root.
pub trait Redirection: Send + Sync + fmt::Debug {
    /// Installs the rules in the namespace `netns`, replacing any there.
    fn install(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError>;
    /// Removes them; rules already gone are a success.
    fn remove(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError>;
}

/// Opens the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`) and checks
/// that it is one, so that a wrong path is refused when a pod is added, not later.
///
/// Only regular files are opened (namespace files are, to `stat`): opening a device or a
/// FIFO named by mistake could hang the agent or do something to the device. The open is
/// non-blocking all the same.
pub fn open_netns(path: &Path) -> Result<OwnedFd, RulesError> {
    let meta = std::fs::metadata(path).map_err(|source| RulesError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(RulesError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| RulesError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `file`
    // keeps open for the call; on anything but a namespace file it fails with ENOTTY.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(RulesError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(OwnedFd::from(file))
}

/// Removes the rules from the namespace at `path`; a namespace that no longer exists has none
/// left, so that is a success too.
pub fn remove_at(rules: &dyn Redirection, path: &Path) -> Result<(), RulesError> {
    match open_netns(path) {
        Ok(netns) => rules.remove(netns.as_fd()),
        Err(RulesError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The real redirection: the `nft` program for the rules and `ip` for the replies' route,
/// both run inside the pod's namespace.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
    ip: PathBuf,
}

impl Default for Nft {
    /// `nft` as `PATH` finds it.
    fn default() -> Nft {
        Nft::new("nft")
    }
}

impl Nft {
    /// `nft` at `program` (a path, or a name looked up in `PATH`), `ip` from `PATH`.
    pub fn new(program: impl Into<PathBuf>) -> Nft {
        Nft {
            program: program.into(),
            ip: PathBuf::from("ip"),
        }
    }

    /// Whether `nft` and `ip` can be run at all (`--version`/`-V`, in the agent's own
    /// namespace), so that an agent without them fails when it starts rather than at its
    /// first pod. Answers nft's version.
    pub fn check(&self) -> Result<String, RulesError> {
        let version = |program: &Path, arg: &str| -> Result<String, RulesError> {
            let out = Command::new(program)
                .arg(arg)
                .stdin(Stdio::null())
                .output()
                .map_err(|source| RulesError::Spawn {
                    program: program.display().to_string(),
                    source,
                })?;
            if !out.status.success() {
                return Err(RulesError::Nft {
                    args: format!("{} {arg}", program.display()),
                    status: out.status.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        version(&self.ip, "-V")?;
        version(&self.program, "--version")
    }

    /// Runs `nft args…` inside `netns` with `script` on its stdin; its stdout is the answer,
    /// its stderr the error.
    pub fn run(
        &self,
        netns: BorrowedFd<'_>,
        args: &[&str],
        script: &str,
    ) -> Result<String, RulesError> {
        run_in(&self.program, netns, args, script)
    }
}

/// Runs `program args…` inside `netns` with `script` on its stdin; its stdout is the answer,
/// its stderr the error.
fn run_in(
    program_path: &Path,
    netns: BorrowedFd<'_>,
    args: &[&str],
    script: &str,
) -> Result<String, RulesError> {
    let program = program_path.display().to_string();
    let mut command = Command::new(program_path);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let raw = netns.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: it makes one system call (setns) and builds an
    // io::Error from an errno, which does not allocate. `raw` stays open in the child:
    // `netns` is borrowed for this whole function, so the parent holds it across the fork,
    // and close-on-exec closes it only at the exec that follows.
    unsafe {
        command.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            rustix::thread::move_into_link_name_space(
                fd,
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(io::Error::from)
        });
    }
    let spawn_error = |source| RulesError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // An nft that exits before reading says why on stderr; its status is the verdict.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(RulesError::Nft {
        args: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

impl Redirection for Nft {
    fn install(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError> {
        // The route first: rules that mark replies with nowhere to send them would cut the
        // pod's delivered connections.
        self.remove_reply_route(netns)?;
        run_in(&self.ip, netns, &["-batch", "-"], REPLY_ROUTE)?;
        self.run(netns, &["-f", "-"], RULESET).map(drop)
    }

    fn remove(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError> {
        self.run(netns, &["-f", "-"], REMOVE)?;
        self.remove_reply_route(netns)
    }
}

impl Nft {
    /// Removes the reply route; one already gone is no failure (`ip` says so in its status,
    /// which is all a refusal here could mean), an `ip` that cannot run is.
    fn remove_reply_route(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError> {
        match run_in(
            &self.ip,
            netns,
            &["-force", "-batch", "-"],
            REMOVE_REPLY_ROUTE,
        ) {
            Ok(_) | Err(RulesError::Nft { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
