//! Judging a run by the scenario's expectations, with the simulator's rules
//! (`sim/src/world/invariants.rs`: `expectation`, `judge`, `judge_received`, `check_splits`),
//! applied after the run to the requests' records and the apps' deliveries:
//!
//! - a request is judged by the phase in force when it started, unless the expectation
//!   changes while it may still be running (within its timeout): then it is not judged;
//! - within the convergence bound after a phase change, the previous phase's outcome is still
//!   accepted; a late old outcome is a `convergence` failure, anything else a `policy` one;
//! - an answered request must come from a pod whose name starts with `backend` (`routing`);
//! - a request expected `denied`/`refused` must not reach any app (`policy`), judged from what
//!   the apps recorded;
//! - `split` and `outcomes` shares are each within 5 percentage points of their weights
//!   (`sim::world::share_violation`), counting requests outside convergence windows — or
//!   within 4 standard deviations of the binomial, where that is wider: the simulator's
//!   waypoints draw from a seed, the kernel's from real entropy, and 500 draws at 70% miss
//!   by more than 5 points about once in 70 runs ([`sampling_tolerance`]).
//!
//! The simulator also skips requests near a store change (timeline `apply`/`delete`); a
//! kernel run has none (such scenarios are skipped), so that rule never applies here.

use std::collections::BTreeMap;
use std::time::Duration;

use sim::scenario::{Expected, Outcome, Scenario};
use sim::{Delivery, RequestRecord};

/// Something the run did that the scenario says it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The simulator's invariant name: `policy`, `convergence` or `routing`.
    pub invariant: &'static str,
    /// When (scenario time) it was seen.
    pub at: Duration,
    pub what: String,
}

/// What request `(index, started)` must see, the previous phase's outcome, and whether it is
/// in the convergence window after a change; `None` while it is not judged.
fn expectation(
    scenario: &Scenario,
    index: usize,
    started: Duration,
) -> Option<(Expected, Option<Expected>, bool)> {
    let traffic = scenario.traffic.get(index)?;
    let bound = scenario.invariants.convergence.0;
    let (current, since, previous) = traffic.expect.at(started);
    let current = current?;
    if traffic
        .expect
        .next_change_after(started)
        .is_some_and(|next| next <= started + traffic.timeout.0)
    {
        return None;
    }
    let in_window = previous.is_some() && started < since + bound;
    Some((current, previous, in_window))
}

/// The failure of one request, if it is one.
fn judge_request(scenario: &Scenario, record: &RequestRecord) -> Option<Failure> {
    let traffic = scenario.traffic.get(record.traffic)?;
    let (expected, previous, in_window) = expectation(scenario, record.traffic, record.started)?;
    if expected.admits(record.outcome) {
        if let Some(prefix) = &traffic.backend
            && record.outcome == Outcome::Succeed
            && !in_window
            && scenario.invariants.routing
            && !record
                .backend
                .as_deref()
                .is_some_and(|b| b.starts_with(prefix.as_str()))
        {
            return Some(Failure {
                invariant: "routing",
                at: record.finished,
                what: format!(
                    "request {} was answered by {}, not by a {prefix}* pod",
                    record.conn,
                    record.backend.as_deref().unwrap_or("an unnamed backend")
                ),
            });
        }
        return None;
    }
    if in_window && previous.is_some_and(|p| p.admits(record.outcome)) {
        return None;
    }
    let late = previous.is_some_and(|p| p.admits(record.outcome));
    let (_, since, _) = traffic.expect.at(record.started);
    if late {
        return Some(Failure {
            invariant: "convergence",
            at: record.finished,
            what: format!(
                "request {} started at {}ms saw {} ({} expected before {}ms): not converged \
                 within {}ms of the change",
                record.conn,
                record.started.as_millis(),
                record.outcome,
                previous.map(|p| p.to_string()).unwrap_or_default(),
                since.as_millis(),
                scenario.invariants.convergence.0.as_millis()
            ),
        });
    }
    scenario.invariants.policy.then(|| Failure {
        invariant: "policy",
        at: record.finished,
        what: format!(
            "request {} started at {}ms saw {}, but the scenario expects {expected}",
            record.conn,
            record.started.as_millis(),
            record.outcome
        ),
    })
}

/// Every failure of the run, in time order: requests, deliveries, then the end-of-run shares.
pub fn judge(
    scenario: &Scenario,
    records: &[RequestRecord],
    deliveries: &[Delivery],
) -> Vec<Failure> {
    let mut failures: Vec<Failure> = records
        .iter()
        .filter_map(|r| judge_request(scenario, r))
        .collect();
    let started: BTreeMap<(usize, u64), Duration> = records
        .iter()
        .map(|r| ((r.traffic, r.request), r.started))
        .collect();
    for d in deliveries {
        let Some(&at) = started.get(&(d.traffic, d.request)) else {
            continue;
        };
        let Some(traffic) = scenario.traffic.get(d.traffic) else {
            continue;
        };
        let Some((expected, _, in_window)) = expectation(scenario, d.traffic, at) else {
            continue;
        };
        if expected.must_not_reach_app() && !in_window && scenario.invariants.policy {
            failures.push(Failure {
                invariant: "policy",
                at: d.at,
                what: format!(
                    "request {}#{} reached the application on {} at {}ms, but the scenario \
                     expects it {expected}",
                    traffic.name,
                    d.request,
                    d.pod,
                    d.at.as_millis()
                ),
            });
        }
    }
    failures.sort_by_key(|f| f.at);
    let end = records.iter().map(|r| r.finished).max().unwrap_or_default();
    failures.extend(shares(scenario, records, end));
    failures
}

/// How far a share drawn `n` times at probability `want` may miss it here: the simulator's 5
/// points, or 4 standard deviations of the binomial share where that is wider (a false
/// failure about once in 16,000 shares).
pub fn sampling_tolerance(want: f64, n: usize) -> f64 {
    let sd = (want * (1.0 - want) / n.max(1) as f64).sqrt();
    (4.0 * sd).max(0.05)
}

/// `outcomes` and `split`: each share within [`sampling_tolerance`] of its weight, counting
/// the requests outside convergence windows (the simulator's `check_splits`).
fn shares(scenario: &Scenario, records: &[RequestRecord], end: Duration) -> Option<Failure> {
    if !scenario.invariants.routing {
        return None;
    }
    let judged = |index: usize| {
        records.iter().filter(move |r| {
            r.traffic == index
                && expectation(scenario, r.traffic, r.started)
                    .is_some_and(|(_, _, in_window)| !in_window)
        })
    };
    for (index, traffic) in scenario.traffic.iter().enumerate() {
        if let Some(outcomes) = &traffic.outcomes {
            let seen: Vec<String> = judged(index).map(|r| r.outcome.to_string()).collect();
            if let Some(what) = sim::world::share_violation_within(
                &traffic.name,
                outcomes,
                &seen,
                |o, k| o == k,
                sampling_tolerance,
            ) {
                return Some(Failure {
                    invariant: "routing",
                    at: end,
                    what,
                });
            }
        }
        let Some(split) = &traffic.split else {
            continue;
        };
        let answered: Vec<&str> = judged(index)
            .filter(|r| r.outcome == Outcome::Succeed)
            .filter_map(|r| r.backend.as_deref())
            .collect();
        if let Some(what) = sim::world::share_violation_within(
            &traffic.name,
            split,
            &answered,
            |b, prefix| b.starts_with(prefix),
            sampling_tolerance,
        ) {
            return Some(Failure {
                invariant: "routing",
                at: end,
                what,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_held_to_its_sampling_noise_and_never_looser_than_five_points() {
        // 500 draws at 70%: 4 standard deviations are 8.2 points.
        let t = sampling_tolerance(0.7, 500);
        assert!((t - 0.082).abs() < 0.001, "{t}");
        // Many draws: the simulator's 5 points.
        assert_eq!(sampling_tolerance(0.7, 100_000), 0.05);
        let weights = BTreeMap::from([("v1".to_string(), 70), ("v2".to_string(), 30)]);
        let seen = |v1: usize| {
            let mut s = vec!["v1"; v1];
            s.extend(vec!["v2"; 500 - v1]);
            s
        };
        let check = |v1| {
            sim::world::share_violation_within(
                "w",
                &weights,
                &seen(v1),
                |b, k| b == k,
                sampling_tolerance,
            )
        };
        assert!(check(321).is_none(), "64.2% of 500 is within noise of 70%");
        assert!(check(300).is_some(), "60% is not");
    }

    const SCENARIO: &str = "about: t\nnodes: [a]\ncluster: |\n  apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\ntraffic:\n- name: t\n  from: {pod: shop/a}\n  to: {pod: shop/b, port: 80}\n  timeout: 1s\n  duration: 20s\n  backend: b\n  expect:\n  - {from: 0s, outcome: succeed}\n  - {from: 10s, outcome: denied}\ninvariants:\n  convergence: 2s\n";

    fn record(n: u64, started_ms: u64, outcome: Outcome, backend: Option<&str>) -> RequestRecord {
        RequestRecord {
            traffic: 0,
            request: n,
            conn: format!("t#{n}"),
            source_node: "a".into(),
            started: Duration::from_millis(started_ms),
            finished: Duration::from_millis(started_ms + 5),
            outcome,
            backend: backend.map(str::to_string),
            response: None,
        }
    }

    fn scenario() -> Scenario {
        Scenario::parse(SCENARIO, "t.yaml", "t").unwrap()
    }

    #[test]
    fn phases_windows_and_late_outcomes() {
        let s = scenario();
        // In force, right backend: fine.
        assert!(judge(&s, &[record(0, 1000, Outcome::Succeed, Some("b-0"))], &[]).is_empty());
        // Wrong backend: routing.
        let f = judge(&s, &[record(0, 1000, Outcome::Succeed, Some("c-0"))], &[]);
        assert_eq!(f[0].invariant, "routing");
        // The phase changes within the request's timeout: not judged.
        assert!(judge(&s, &[record(0, 9500, Outcome::Timeout, None)], &[]).is_empty());
        // Within the bound after the change the old outcome is accepted…
        assert!(judge(&s, &[record(0, 11_000, Outcome::Succeed, Some("b-0"))], &[]).is_empty());
        // …after it, it is late: convergence.
        let f = judge(&s, &[record(0, 13_000, Outcome::Succeed, Some("b-0"))], &[]);
        assert_eq!(f[0].invariant, "convergence");
        // Neither outcome: policy.
        let f = judge(&s, &[record(0, 1000, Outcome::Timeout, None)], &[]);
        assert_eq!(f[0].invariant, "policy");
    }

    #[test]
    fn a_denied_request_must_not_reach_the_app() {
        let s = scenario();
        let records = [record(7, 13_000, Outcome::Refused, None)];
        let delivered = Delivery {
            traffic: 0,
            request: 7,
            pod: "shop/b".into(),
            at: Duration::from_millis(13_002),
        };
        assert!(judge(&s, &records, &[]).is_empty());
        let f = judge(&s, &records, &[delivered]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].invariant, "policy");
        assert!(
            f[0].what.contains("reached the application on shop/b"),
            "{f:?}"
        );
    }
}
