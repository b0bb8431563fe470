//! Child processes that never outlive the test process.
//!
//! A [`Process`] is killed (by its `Child` handle) when dropped, which covers a test that
//! returns or panics. That is not enough for a harness shared by several tests from a static,
//! which is never dropped: so on Linux every child also asks the kernel for `SIGKILL` when its
//! parent goes (`PR_SET_PDEATHSIG`). The kernel ties that to the *thread* that forked, and
//! libtest runs each test on a thread of its own that ends with the test; children are
//! therefore forked by one long-lived keeper thread, and die only with the process (or their
//! `Process`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The keeper thread's inbox, started on first use.
fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("harness-keeper".into())
            .spawn(move || {
                // Lives as long as the process: the sender sits in a static.
                for (mut command, reply) in rx {
                    die_with_parent(&mut command);
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(error) = spawned {
            // Without the keeper, spawn() reports the failure to each caller.
            eprintln!("harness: cannot start the keeper thread: {error}");
        }
        Mutex::new(tx)
    })
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe calls
    // are allowed: `prctl`, `getppid` and `_exit` are, and nothing here allocates.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the request took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

/// A running child with its log file; killed and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`, stdin closed.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> std::io::Result<Process> {
        let out = File::options().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let (reply, answer) = mpsc::channel();
        keeper()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send((command, reply))
            .map_err(|_| std::io::Error::other("the keeper thread is gone"))?;
        let child = answer
            .recv()
            .map_err(|_| std::io::Error::other("the keeper thread is gone"))??;
        crate::at_exit::child(child.id());
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::at_exit::forget_child(self.child.id());
    }

    /// The last `max` bytes of its log, for failure messages.
    pub fn log_tail(&self, max: u64) -> String {
        tail(&self.log, max)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of `path` (lossy UTF-8), or a note that it cannot be read.
pub fn tail(path: &Path, max: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_process_is_killed() {
        let dir = std::env::temp_dir().join(format!("harness-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        let mut process = Process::spawn("sleep", sleep, &dir.join("sleep.log")).unwrap();
        assert!(process.exited().is_none());
        let pid = process.id();
        drop(process);
        // Reaped: the pid no longer names our child.
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
        assert!(!alive, "pid {pid} still alive");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_test_that_panics_kills_its_children() {
        let dir = std::env::temp_dir().join(format!("harness-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleep.log");
        let (tx, rx) = mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let mut sleep = Command::new("sleep");
            sleep.arg("600");
            let process = Process::spawn("sleep", sleep, &log).unwrap();
            tx.send(process.id()).unwrap();
            panic!("the test fails with its process running");
        })
        .join();
        assert!(panicked.is_err());
        let pid = rx.recv().unwrap();
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
        assert!(!alive, "pid {pid} outlived the panic");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn children_outlive_the_thread_that_asked_for_them() {
        let dir = std::env::temp_dir().join(format!("harness-keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("sleep.log");
        let mut process = std::thread::spawn(move || {
            let mut sleep = Command::new("sleep");
            sleep.arg("600");
            Process::spawn("sleep", sleep, &log).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(process.exited().is_none(), "killed when its thread ended");
        drop(process);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
