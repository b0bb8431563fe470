//! The event trace: what happened, where and when, in order, and a stable hash of it.
//!
//! The hash is the replay check: the same scenario under the same seed must produce the same
//! events at the same simulated times, so the same hash. It is computed with FNV-1a over the
//! rendered lines, never with `DefaultHasher` (randomly keyed per process) or anything that
//! iterates a `HashMap`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The turmoil host it happened on (`sim` for the driver itself).
    pub host: String,
    /// What recorded it: `timeline`, `client`, `app`, `invariant`, or the log target of the
    /// production code (`dataplane::ztunnel::inbound`, `access`, `control::…`).
    pub component: String,
    /// What happened, in words.
    pub what: String,
    /// The request/connection it is about (`<traffic>#<n>`), when known.
    pub conn: Option<String>,
    /// A policy decision and the policy that made it, when the event is one.
    pub decision: Option<String>,
}

impl fmt::Display for Event {
    /// `<ms>ms <host> <component> <what>`: the form that is printed and hashed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}ms {} {} {}",
            self.at.as_millis(),
            self.host,
            self.component,
            self.what
        )
    }
}

impl Event {
    /// One JSON object (a JSONL line, without the newline).
    pub fn json(&self) -> String {
        serde_json::json!({
            "time_ms": self.at.as_millis() as u64,
            "host": self.host,
            "component": self.component,
            "event": self.what,
            "connection": self.conn,
            "decision": self.decision,
        })
        .to_string()
    }
}

/// The policy decision an event states, if any: the waypoint access log's `authorization="…"`
/// field whole (`allowed: ALLOW shop/p rules[0] matched`, `denied: ALLOW policies apply, but
/// none matched`, …), the ztunnel evaluator's own words (`explicitly denied by <policy> rule
/// <n>`, `allowed by …`, `denied: allow policies exist…`) or a policy-change close.
pub fn decision_in(what: &str) -> Option<String> {
    if let Some(value) = quoted_field(what, "authorization=")
        && !value.is_empty()
    {
        return Some(value);
    }
    for marker in ["explicitly denied by ", "allowed by ", "denied: "] {
        if let Some(at) = what.find(marker) {
            let rest = &what[at..];
            let end = rest.find(['"', ';']).unwrap_or(rest.len());
            return Some(rest[..end].trim().to_string());
        }
    }
    what.contains("policy change closes open connection")
        .then(|| "closed by a policy change".to_string())
}

/// The value of a `name="…"` field as `Debug` wrote it (escapes undone), when the line has one.
fn quoted_field(what: &str, name: &str) -> Option<String> {
    let rest = what.match_indices(name).find_map(|(at, _)| {
        (at == 0 || what[..at].ends_with(' '))
            .then(|| what[at + name.len()..].strip_prefix('"'))
            .flatten()
    })?;
    let mut chars = rest.chars();
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// A shared, append-only event log. Clones append to the same log, so every host and the
/// driver can hold one.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Trace {
    /// An empty trace for one run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `what` on `host` by `component` at the current simulated time of the running
    /// host (zero in the driver: use [`Trace::record_at`] there).
    pub fn record(&self, host: &str, component: &str, what: impl Into<String>) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.record_at(at, host, component, what, None);
    }

    /// Records an event about connection `conn`.
    pub fn record_conn(&self, host: &str, component: &str, conn: &str, what: impl Into<String>) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.record_at(at, host, component, what, Some(conn.to_string()));
    }

    /// Records at an explicit simulated time.
    pub fn record_at(
        &self,
        at: Duration,
        host: &str,
        component: &str,
        what: impl Into<String>,
        conn: Option<String>,
    ) {
        let what = what.into();
        let event = Event {
            at,
            host: host.to_string(),
            component: component.to_string(),
            decision: decision_in(&what),
            what,
            conn,
        };
        self.lock().push(event);
    }

    /// A copy of every event so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// How many events so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The last `n` events.
    pub fn tail(&self, n: usize) -> Vec<Event> {
        let events = self.lock();
        events[events.len().saturating_sub(n)..].to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds `bytes` into an FNV-1a 64 state (start from [`FNV_OFFSET`]).
fn fnv1a64_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a 64 of `bytes`: small, fixed and the same on every platform and in every process.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV_OFFSET, bytes)
}

/// The trace hash: FNV-1a 64 over every event rendered as `<ms>ms <host> <component> <what>\n`
/// followed by its connection id, if any.
pub fn hash_events(events: &[Event]) -> u64 {
    events.iter().fold(FNV_OFFSET, |hash, event| {
        let line = match &event.conn {
            Some(conn) => format!("{event} [{conn}]\n"),
            None => format!("{event}\n"),
        };
        fnv1a64_extend(hash, line.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn decisions_are_read_from_ztunnel_and_waypoint_lines() {
        assert_eq!(
            decision_in(
                "WARN connection failed src.addr=10.244.2.2:1 status=401 error=explicitly denied by shop/deny-web rule 0"
            )
            .as_deref(),
            Some("explicitly denied by shop/deny-web rule 0")
        );
        assert_eq!(
            decision_in("INFO policy change closes open connection connection=0 src=10.0.0.1 reason=destination workload removed")
                .as_deref(),
            Some("closed by a policy change")
        );
        // The waypoint's access log: the whole field, allow or deny, with its notes.
        let line = r#"INFO src.addr=10.244.2.3:1 dst.hbone_addr=10.96.0.2:80 route="shop/echo rule 0" authorization="allowed: ALLOW shop/allow-web rules[0] matched; dry-run DENY shop/x matched (would deny)" method=GET path="/" status=200"#;
        assert_eq!(
            decision_in(line).as_deref(),
            Some(
                "allowed: ALLOW shop/allow-web rules[0] matched; dry-run DENY shop/x matched (would deny)"
            )
        );
        let line = r#"INFO src.addr=10.244.2.3:1 authorization="denied: ALLOW policies apply, but none matched" method=GET path="/" status=403"#;
        assert_eq!(
            decision_in(line).as_deref(),
            Some("denied: ALLOW policies apply, but none matched")
        );
        assert_eq!(
            decision_in(r#"INFO x authorization="denied: DENY shop/d rules[1] matched" response_flags=RBAC connection denied"#).as_deref(),
            Some("denied: DENY shop/d rules[1] matched")
        );
        assert_eq!(
            decision_in(r#"INFO route="shop/echo rule 0" status=200"#),
            None
        );
        assert_eq!(
            decision_in(r#"INFO path="/x?authorization=1" status=200"#),
            None
        );
    }

    #[test]
    fn hash_covers_order_time_and_host() {
        let e = |ms, host: &str, what: &str| Event {
            at: Duration::from_millis(ms),
            host: host.into(),
            component: "c".into(),
            what: what.into(),
            conn: None,
            decision: None,
        };
        let base = [e(1, "a", "x"), e(2, "b", "y")];
        let h = hash_events(&base);
        assert_eq!(h, hash_events(&base.clone()));
        assert_ne!(h, hash_events(&[e(2, "b", "y"), e(1, "a", "x")]));
        assert_ne!(h, hash_events(&[e(1, "a", "x"), e(3, "b", "y")]));
        assert_ne!(h, hash_events(&[e(1, "a", "x"), e(2, "a", "y")]));
        assert_eq!(
            hash_events(&base),
            fnv1a64(b"1ms a c x\n2ms b c y\n"),
            "the hash is over the rendered lines"
        );
    }
}
