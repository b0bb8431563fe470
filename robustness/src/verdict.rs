//! When a process "came back" after an attack: the slack rule for descriptors and memory, and
//! the one-line report of an attack's result.
//!
//! Descriptors must return to the count before the attack plus a few: a proxy legitimately
//! opens a pooled HBONE connection or an xDS reconnect at any time, but anything an attacker
//! made it open must be gone. Memory is looser, because the allocator keeps freed pages for
//! reuse (the proxies ask glibc to, see `dataplane::memory`): what came in for the attack may
//! stay as free heap, but not grow without bound, so it must be back within
//! `max(20 MiB, 25 %)` of the baseline.

use std::time::Duration;

use crate::procfs::Usage;

/// Descriptors a process may hold above its baseline after an attack and still pass.
pub const FD_SLACK: u64 = 8;
/// The least memory growth (KiB) that always passes.
pub const RSS_SLACK_FLOOR_KIB: u64 = 20 * 1024;
/// The fraction of the baseline that may stay resident, when more than the floor.
pub const RSS_SLACK_FRACTION: f64 = 0.25;

/// The highest descriptor count that passes after a baseline of `before`.
pub fn fd_limit(before: u64) -> u64 {
    before + FD_SLACK
}

/// The highest resident size (KiB) that passes after a baseline of `before`.
pub fn rss_limit_kib(before: u64) -> u64 {
    let fraction = (before as f64 * RSS_SLACK_FRACTION) as u64;
    before + fraction.max(RSS_SLACK_FLOOR_KIB)
}

/// Whether `after` is within the slack of `before`; the reasons it is not.
pub fn came_back(before: Usage, after: Usage) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    if after.fds > fd_limit(before.fds) {
        why.push(format!(
            "{} descriptors, baseline {} (+{} allowed)",
            after.fds, before.fds, FD_SLACK
        ));
    }
    if after.rss_kib > rss_limit_kib(before.rss_kib) {
        why.push(format!(
            "{:.1} MiB resident, baseline {:.1} MiB (at most {:.1} MiB)",
            after.rss_kib as f64 / 1024.0,
            before.rss_kib as f64 / 1024.0,
            rss_limit_kib(before.rss_kib) as f64 / 1024.0
        ));
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// Runs of one attack after the first, when memory stayed above the slack: glibc keeps freed
/// pages (the ztunnels ask it to keep 32 MiB per heap untrimmed, see `dataplane::memory`),
/// so the first runs of a flood grow the heaps to a working size that later runs reuse.
pub const MEMORY_REPEATS: usize = 2;

/// Whether the resident memory a repeated attack left has levelled off: some later run
/// added no more than the slack's floor, or the last run added at most half of what the
/// first did. A leak adds about as much every run. `growths_kib` are what each run added
/// (KiB) to the reading before it, the first run's first.
pub fn levelled_off(growths_kib: &[i64]) -> bool {
    let (Some(first), Some(last)) = (growths_kib.first(), growths_kib.last()) else {
        return true;
    };
    growths_kib.len() < 2
        || growths_kib[1..]
            .iter()
            .any(|g| *g <= RSS_SLACK_FLOOR_KIB as i64)
        || *last <= first / 2
}

/// What one attack ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Could not run here (e.g. it needs a private network namespace).
    Skip,
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// The report line: `PASS name time=… node-a=rss/fd→rss/fd …`.
pub fn line(
    status: &Status,
    name: &str,
    took: Duration,
    processes: &[(String, Option<Usage>, Option<Usage>)],
) -> String {
    let mut out = format!(
        "{} {name:<28} time={:>5.1}s",
        status.word(),
        took.as_secs_f64()
    );
    for (who, before, after) in processes {
        let show = |u: &Option<Usage>| u.map(|u| u.to_string()).unwrap_or_else(|| "gone".into());
        out.push_str(&format!(" {who}={}->{}", show(before), show(after)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(rss_mib: u64, fds: u64) -> Usage {
        Usage {
            rss_kib: rss_mib * 1024,
            fds,
        }
    }

    #[test]
    fn small_processes_get_the_20_mib_floor() {
        assert_eq!(rss_limit_kib(10 * 1024), 30 * 1024);
        assert!(came_back(u(10, 20), u(30, 28)).is_ok());
        let why = came_back(u(10, 20), u(31, 28)).unwrap_err();
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("31.0 MiB resident"), "{why:?}");
    }

    #[test]
    fn large_processes_get_a_quarter() {
        assert_eq!(rss_limit_kib(200 * 1024), 250 * 1024);
        assert!(came_back(u(200, 20), u(250, 20)).is_ok());
        assert!(came_back(u(200, 20), u(251, 20)).is_err());
    }

    #[test]
    fn descriptors_get_a_few() {
        assert!(came_back(u(10, 20), u(10, 28)).is_ok());
        let why = came_back(u(10, 20), u(10, 29)).unwrap_err();
        assert!(why[0].starts_with("29 descriptors, baseline 20"), "{why:?}");
        // fewer than before is fine (a pooled connection closed meanwhile)
        assert!(came_back(u(10, 20), u(9, 12)).is_ok());
    }

    #[test]
    fn memory_that_levels_off_is_retention_and_steady_growth_a_leak() {
        let mib = |m: i64| m * 1024;
        // the allocator's heaps reach their working size: later runs add less and less
        assert!(levelled_off(&[mib(31), mib(23), mib(9)]));
        assert!(levelled_off(&[mib(51), mib(36), mib(24)]));
        assert!(levelled_off(&[mib(30), mib(-3), mib(40)]));
        // every run adds about as much, more than the floor: a leak
        assert!(!levelled_off(&[mib(25), mib(24), mib(26)]));
        assert!(levelled_off(&[mib(90)]));
        assert!(levelled_off(&[]));
    }

    #[test]
    fn the_line_names_each_process() {
        let l = line(
            &Status::Pass,
            "garbage",
            Duration::from_millis(1500),
            &[("istiod".into(), Some(u(10, 20)), None)],
        );
        assert!(l.starts_with("PASS garbage "), "{l}");
        assert!(l.contains("time=  1.5s"), "{l}");
        assert!(l.ends_with("istiod=10.0MiB/20fd->gone"), "{l}");
    }
}
