//! What the node agent's tests share: a recording stand-in for nft, private network
//! namespaces removed even on panic, temporary socket directories, and the root check.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::node_agent::{self, Config, Nft, NodeAgent, Redirection, RulesError};

/// Whether this test can run as root with `ip` and `nft`; prints `SKIP test: why` when not,
/// and fails instead under `E2E_REQUIRED=1`.
pub(super) fn root_or_skip(test: &str) -> bool {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (network namespaces, nft)".to_string())
    } else if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("`ip` not found: apt-get install -y iproute2".to_string())
    } else {
        Nft::default()
            .check()
            .err()
            .map(|e| format!("nft unusable ({e}): apt-get install -y nftables"))
    };
    let Some(why) = why else {
        return true;
    };
    if std::env::var("E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("{test}: {why}, and E2E_REQUIRED=1");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// The inode of a namespace descriptor: equal inodes, same namespace.
pub(super) fn inode(fd: BorrowedFd<'_>) -> u64 {
    let file = File::from(fd.try_clone_to_owned().expect("dup"));
    file.metadata().expect("fstat").ino()
}

/// A stand-in for nft that records what it was asked, by namespace inode.
#[derive(Debug, Default)]
pub(super) struct FakeRules {
    pub events: Mutex<Vec<(&'static str, u64)>>,
    pub fail_remove: AtomicBool,
}

impl FakeRules {
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        self.events.lock().expect("not poisoned").clone()
    }
}

impl Redirection for FakeRules {
    fn install(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError> {
        let ino = inode(netns);
        self.events
            .lock()
            .expect("not poisoned")
            .push(("install", ino));
        Ok(())
    }

    fn remove(&self, netns: BorrowedFd<'_>) -> Result<(), RulesError> {
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(RulesError::Nft {
                args: "-f -".into(),
                status: "exit status: 1".into(),
                stderr: "simulated failure".into(),
            });
        }
        let ino = inode(netns);
        self.events
            .lock()
            .expect("not poisoned")
            .push(("remove", ino));
        Ok(())
    }
}

/// A fresh directory for one test's sockets, removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub fn new(role: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("node-agent-test-{}-{n}-{role}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent on sockets in `dir`, with `rules` and a short ack timeout.
pub(super) async fn agent_in(
    dir: &TempDir,
    rules: Arc<dyn Redirection>,
    ack_timeout: Duration,
) -> NodeAgent {
    node_agent::start(Config {
        zds_socket: dir.path().join("run/ztunnel.sock"),
        pod_socket: dir.path().join("run/pods.sock"),
        ack_timeout,
        rules,
    })
    .await
    .expect("agent starts")
}

/// A named network namespace with loopback up, deleted when dropped (also on panic).
pub(super) struct TestNetns {
    name: String,
    path: PathBuf,
}

fn run(command: &mut Command) {
    let shown = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    pub fn create(role: &str) -> TestNetns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nodeagent-{}-{n}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = TestNetns {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn open(&self) -> File {
        File::open(&self.path).expect("open the namespace")
    }

    pub fn inode(&self) -> u64 {
        std::fs::metadata(&self.path).expect("stat").ino()
    }

    /// `ip -n NAME args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// `ip args…` inside, its output.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft args…` inside.
    pub fn nft(&self, args: &[&str]) -> Result<String, RulesError> {
        Nft::default().run(self.open().as_fd(), args, "")
    }

    /// Whether the ztunnel table is there.
    pub fn has_table(&self) -> bool {
        self.nft(&["list", "table", "ip", "ztunnel"]).is_ok()
    }

    /// Runs `work` on a thread of its own inside the namespace: sockets it makes live there.
    pub fn within<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let file = self.open();
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            work()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
