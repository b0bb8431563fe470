//! What a process holds, read from `/proc`: its resident memory (`VmRSS` in
//! `/proc/<pid>/status`) and its open descriptors (the entries of `/proc/<pid>/fd`). These two
//! numbers are what an attack may leak, so every attack is judged on them before and after.

use std::fmt;
use std::path::Path;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}MiB/{}fd", self.rss_kib as f64 / 1024.0, self.fds)
    }
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in KiB. `None` when absent (a zombie
/// has no memory lines) or malformed.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        _ => None,
    }
}

/// Reads `pid`'s usage; `None` when the process is gone (or is a zombie).
pub fn usage(pid: u32) -> Option<Usage> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kib = parse_vm_rss(&status)?;
    let fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
    Some(Usage { rss_kib, fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tztunnel\nState:\tS (sleeping)\nVmPeak:\t  812344 kB\n\
VmSize:\t  812344 kB\nVmHWM:\t   31000 kB\nVmRSS:\t   27436 kB\nRssAnon:\t   12000 kB\nThreads:\t4\n";

    #[test]
    fn reads_vm_rss_in_kib() {
        assert_eq!(parse_vm_rss(STATUS), Some(27_436));
    }

    #[test]
    fn a_zombie_or_garbage_has_no_rss() {
        // A zombie's status has no Vm* lines at all.
        assert_eq!(parse_vm_rss("Name:\tztunnel\nState:\tZ (zombie)\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        // VmRSSx is not VmRSS's line, but the prefix test must not be fooled by a later one.
        assert_eq!(parse_vm_rss("VmHWM:\t5 kB\nVmRSS:\t7 kB\n"), Some(7));
    }

    #[test]
    fn this_process_has_a_usage() {
        let me = usage(std::process::id()).expect("our own /proc entry");
        assert!(me.rss_kib > 0 && me.fds >= 3, "{me:?}");
    }
}
