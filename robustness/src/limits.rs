//! Descriptor limits. The attacker must be able to hold more sockets than any process it
//! attacks, or the measurement would find the runner's limit instead of the proxy's; the
//! processes under test must keep the limit they would have had (the environment's default
//! soft `RLIMIT_NOFILE`, `ulimit -n`), or the measurement would say nothing about production.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The soft and hard `RLIMIT_NOFILE` this process started with.
#[derive(Debug, Clone, Copy)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

fn get() -> io::Result<NoFile> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NoFile {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's own soft limit as far as it may go, and returns the limits it had
/// before (what children must get back). With the privilege to (root), the hard limit is
/// raised too so that the runner can out-hold a child at the same default; otherwise the soft
/// limit goes up to the hard one.
pub fn raise_own() -> io::Result<(NoFile, u64)> {
    let before = get()?;
    let wanted = (before.hard.max(before.soft * 4)).max(65_536);
    if set(wanted, wanted).is_ok() {
        return Ok((before, wanted));
    }
    set(before.hard, before.hard)?;
    Ok((before, before.hard))
}

/// Makes `command`'s child start with `default` as its limits, whatever this process raised
/// its own to.
pub fn restore_for_child(command: &mut Command, default: NoFile) {
    // SAFETY: the closure runs between fork and exec and only calls setrlimit, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: default.soft,
                rlim_max: default.hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
