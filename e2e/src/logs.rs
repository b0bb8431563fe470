//! The proxies' own logs as the simulator's trace: every line a ztunnel or waypoint process
//! wrote, at its scenario time, on its host (a node's name for its ztunnel, `namespace/pod`
//! for a waypoint), with the policy decision it states read by the simulator's own rule
//! ([`sim::trace::decision_in`]). What denied a connection is then told on the kernel as it is
//! in the simulator, from what the production code logged.
//!
//! Lines are in upstream's format (`dataplane::logging`): an RFC 3339 UTC time, a tab, the
//! rest. The time is the host's wall clock; [`crate::apps::Clock`] keeps the wall time of its
//! zero, so the two agree to well under the 100 ms slots policy attempts are given.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sim::trace::{Event, decision_in};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Every line of the log at `path` logged at or after `zero` (wall time), as events on `host`.
/// A line that does not start with a time (a panic's message, a continuation) is left out; a
/// log not there is no events.
pub fn events(path: &Path, host: &str, zero: SystemTime) -> Vec<Event> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| event(line, host, zero))
        .collect()
}

fn event(line: &str, host: &str, zero: SystemTime) -> Option<Event> {
    let (stamp, rest) = line.split_once('\t')?;
    let at = SystemTime::from(OffsetDateTime::parse(stamp, &Rfc3339).ok()?);
    let at = at.duration_since(zero).unwrap_or(Duration::ZERO);
    let mut columns = rest.splitn(3, '\t');
    let level = columns.next().unwrap_or_default().to_ascii_uppercase();
    let component = columns.next().unwrap_or_default().to_string();
    let what = format!("{level} {}", columns.next().unwrap_or_default()).replace('\t', " ");
    Some(Event {
        at,
        host: host.to_string(),
        component,
        decision: decision_in(&what),
        what,
        conn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ztunnel_denial_is_read_at_its_scenario_time() {
        let zero = SystemTime::from(
            OffsetDateTime::parse("2026-12-07T18:00:00Z", &Rfc3339).expect("a time"),
        );
        // As the ztunnel writes it (`dataplane::logging`): message, then the fields.
        let line = "2026-12-07T18:00:03.250000Z\twarn\tdataplane::ztunnel::inbound_plaintext\t\
                    connection failed\tsrc.addr=10.244.1.2:40000 direction=\"inbound\" \
                    error=explicitly denied by shop/deny-web rule 0";
        let e = event(line, "node-b", zero).expect("a line with a time");
        assert_eq!(e.at, Duration::from_millis(3250));
        assert_eq!(e.host, "node-b");
        assert_eq!(e.component, "dataplane::ztunnel::inbound_plaintext");
        assert!(e.what.starts_with("WARN connection failed "), "{}", e.what);
        assert_eq!(
            e.decision.as_deref(),
            Some("explicitly denied by shop/deny-web rule 0")
        );
        assert!(event("thread 'main' panicked at …", "node-b", zero).is_none());
        let before = "2026-12-07T17:59:59Z\tinfo\tx\tstarting";
        assert_eq!(event(before, "h", zero).map(|e| e.at), Some(Duration::ZERO));
    }
}
