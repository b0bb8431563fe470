//! What a test process leaves behind when it exits with a harness still alive: a cluster
//! shared from a static is never dropped, so its children and its directory (etcd's data,
//! over 100 MB) would outlive the run, and so would the network namespaces of a mesh shared
//! the same way. Children die with the process anyway
//! (`PR_SET_PDEATHSIG`, see [`crate::process`]); this removes the directory, after killing
//! and reaping the children so that etcd no longer writes into it. It runs from `atexit`,
//! which libtest reaches both when every test passed (`main` returns) and when some failed
//! (`std::process::exit`).
//!
//! A signal ends a process without `atexit`: a runner that starts namespaces and children
//! for a user (not a test) calls [`exit_on_signals`], so that Ctrl-C (SIGINT), SIGTERM and
//! SIGHUP exit through `atexit` too, and nothing is left behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
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

/// The write end of the pipe [`on_signal`] writes to; -1 until [`exit_on_signals`] made it.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The signals that end the process through [`exit_on_signals`].
const EXIT_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = u8::try_from(signal).unwrap_or(0);
        // SAFETY: `write` is async-signal-safe; the byte lives for the call.
        unsafe {
            libc::write(fd, (&raw const byte).cast(), 1);
        }
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP make the process `exit(code)`, which runs the
/// at-exit cleanup (children killed, namespaces and directories removed), instead of dying
/// where it stands. The handler only writes to a pipe; a thread of its own reads it and exits,
/// since the cleanup cannot run inside a signal handler. Idempotent: the first `code` wins.
pub fn exit_on_signals(code: i32) -> std::io::Result<()> {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *installed {
        return Ok(());
    }
    install();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors `pipe2` writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    std::thread::Builder::new()
        .name("harness-signals".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into `byte`, from a descriptor this thread owns.
                let n = unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) };
                if n == 1 {
                    break;
                }
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                // The pipe cannot close while the process runs: nothing to wait for.
                return;
            }
            let name = match libc::c_int::from(byte) {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM",
                libc::SIGHUP => "SIGHUP",
                _ => "a signal",
            };
            eprintln!("interrupted by {name}: stopping processes, removing namespaces");
            std::process::exit(code);
        })?;
    SIGNAL_PIPE.store(write_end, Ordering::Relaxed);
    for signal in EXIT_SIGNALS {
        // SAFETY: a zeroed `sigaction` with a plain handler and an empty mask is valid;
        // `on_signal` only does async-signal-safe work.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    *installed = true;
    Ok(())
}
