//! What a test process leaves behind when it exits with a harness still alive: a cluster
//! shared from a static is never dropped, so its children and its directory (etcd's data,
//! over 100 MB) would outlive the run, and so would the network namespaces of a mesh shared
//! the same way. Children die with the process anyway
//! (`PR_SET_PDEATHSIG`, see [`crate::process`]); this removes the directory, after killing
//! and reaping the children so that etcd no longer writes into it. It runs from `atexit`,
//! which libtest reaches both when every test passed (`main` returns) and when some failed
//! (`std::process::exit`).

use std::path::PathBuf;
use std::sync::{Mutex, Once};

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static NETNS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function; nothing is captured.
        unsafe {
            libc::atexit(clean_up);
        }
    });
}

/// A child to kill at exit, unless [`forget_child`] is called first.
pub(crate) fn child(pid: u32) {
    install();
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
}

/// The child was killed and reaped by its owner.
pub(crate) fn forget_child(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// A directory to remove at exit, unless [`forget_dir`] is called first.
pub(crate) fn dir(path: PathBuf) {
    install();
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(path);
    }
}

/// The directory was removed (or deliberately kept) by its owner.
pub(crate) fn forget_dir(path: &std::path::Path) {
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.retain(|d| d != path);
    }
}

/// A network namespace (its `/run/netns` path) to remove at exit, unless
/// [`forget_netns`] is called first.
pub(crate) fn netns(path: PathBuf) {
    install();
    if let Ok(mut all) = NETNS.lock() {
        all.push(path);
    }
}

/// The namespace was removed by its owner.
pub(crate) fn forget_netns(path: &std::path::Path) {
    if let Ok(mut all) = NETNS.lock() {
        all.retain(|p| p != path);
    }
}

extern "C" fn clean_up() {
    // `try_lock`: a thread stopped mid-update must not hang the exit.
    if let Ok(live) = LIVE.try_lock() {
        for &pid in live.iter() {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            // SAFETY: our own children, not yet reaped (their owner forgets them when it
            // does), so the pids cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Ok(dirs) = DIRS.try_lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // After the children: a namespace goes once its last process has.
    if let Ok(all) = NETNS.try_lock() {
        for path in all.iter() {
            crate::netns::remove(path);
        }
    }
}
