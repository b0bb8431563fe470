//! The invariants, checked after every step: no panic, no plaintext on the wire for traffic
//! that must be encrypted, every request's outcome as expected (policy), every ztunnel
//! holding istiod's configuration within the bound (convergence), and nothing left open at
//! the end (leaks).

use std::rc::Rc;
use std::time::Duration;

use dataplane::ztunnel::Ztunnel;

use super::fingerprint::state_fingerprint;
use super::shared::{Finished, Received};
use super::{Delivery, Driver, RequestRecord};
use crate::scenario::{Capture, Expected, ISTIOD, Outcome};

/// How often the driver compares every ztunnel's state with what istiod should publish.
const CONVERGENCE_CHECK: Duration = Duration::from_millis(10);

impl Driver<'_> {
    pub(super) fn after_step(&mut self) {
        // Panics anywhere in the world.
        let panics: Vec<String> = self.shared.panics.borrow_mut().drain(..).collect();
        if let Some(p) = panics.first()
            && self.scenario.invariants.panic
        {
            self.violate("panic", format!("panicked: {p}"));
            return;
        }
        // The wire.
        let sightings = self.tap.observe(&self.sim);
        for s in sightings {
            if !self.reported_plaintext.insert((s.traffic, s.request)) {
                continue;
            }
            let Some(traffic) = self.scenario.traffic.get(s.traffic) else {
                continue;
            };
            let encrypted = traffic.encrypted.unwrap_or(match traffic.capture {
                Capture::Captured => true,
                Capture::Uncaptured => false,
                Capture::Auto => self
                    .shared
                    .pods
                    .borrow()
                    .values()
                    .find(|p| {
                        self.outstanding
                            .get(&(s.traffic, s.request))
                            .is_some_and(|(_, node)| &p.node == node)
                    })
                    .is_none_or(|p| p.enrolled),
            });
            let (src, dst) = (self.host_of(s.src.ip()), self.host_of(s.dst.ip()));
            self.shared.trace.record_at(
                self.now(),
                "sim",
                "wire",
                format!(
                    "plaintext request marker on the wire {} ({src}) -> {} ({dst})",
                    s.src, s.dst
                ),
                Some(format!("{}#{}", traffic.name, s.request)),
            );
            if encrypted && self.scenario.invariants.plaintext {
                self.violate(
                    "plaintext",
                    format!(
                        "request {}#{} crossed from {src} to {dst} in plaintext ({} -> {}), but \
                         the scenario says this traffic is encrypted",
                        traffic.name, s.request, s.src, s.dst
                    ),
                );
                return;
            }
        }
        // What applications received.
        let received: Vec<Received> = self.shared.received.borrow_mut().drain(..).collect();
        for r in received {
            if self
                .scenario
                .traffic
                .get(r.traffic)
                .is_some_and(|t| t.record)
            {
                let pod = self
                    .shared
                    .pods
                    .borrow()
                    .get(&r.pod.ip())
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_else(|| r.pod.to_string());
                self.deliveries.push(Delivery {
                    traffic: r.traffic,
                    request: r.request,
                    pod,
                    at: r.at,
                });
            }
            self.judge_received(r);
            if self.violation.is_some() {
                return;
            }
        }
        // What clients saw.
        let finished: Vec<Finished> = self.shared.finished.borrow_mut().drain(..).collect();
        for f in finished {
            let key = (f.record.traffic, f.record.request);
            if self.outstanding.remove(&key).is_none() {
                continue;
            }
            self.judge(f.record);
            if self.violation.is_some() {
                return;
            }
        }
        self.check_convergence();
    }

    /// What request `(index, started)` must see, or `None` while it is in a grace window
    /// (the expectation changed less than the convergence bound before it, or changes during
    /// it). Also the previous phase's outcome, for telling slow convergence from a wrong one.
    fn expectation(
        &self,
        index: usize,
        started: Duration,
    ) -> Option<(Expected, Option<Expected>, bool)> {
        let traffic = &self.scenario.traffic[index];
        let bound = self.scenario.invariants.convergence.0;
        let (current, since, previous) = traffic.expect.at(started);
        let current = current?;
        // A change to the cluster (pods come and go, policies change) may fail requests made
        // while it propagates: they are not judged until the convergence bound has passed.
        if self
            .store_changes
            .iter()
            .any(|&c| c <= started + traffic.timeout.0 && started < c + bound)
        {
            return None;
        }
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

    pub(super) fn judge(&mut self, record: RequestRecord) {
        let traffic = &self.scenario.traffic[record.traffic];
        self.shared.trace.record_at(
            self.now(),
            &record.source_node,
            "client",
            format!("outcome {}", record.outcome),
            Some(record.conn.clone()),
        );
        let verdict = self.expectation(record.traffic, record.started);
        self.requests.push(record.clone());
        let Some((expected, previous, in_window)) = verdict else {
            return;
        };
        if expected.admits(record.outcome) {
            if let Some(prefix) = &traffic.backend
                && record.outcome == Outcome::Succeed
                && !in_window
                && self.scenario.invariants.routing
                && !record
                    .backend
                    .as_deref()
                    .is_some_and(|b| b.starts_with(prefix.as_str()))
            {
                self.violate(
                    "routing",
                    format!(
                        "request {} was answered by {}, not by a {prefix}* pod",
                        record.conn,
                        record.backend.as_deref().unwrap_or("an unnamed backend")
                    ),
                );
            }
            return;
        }
        if in_window {
            // Converging: the previous expectation still holds, which is allowed.
            if previous.is_some_and(|p| p.admits(record.outcome)) {
                return;
            }
        }
        let late = previous.is_some_and(|p| p.admits(record.outcome));
        let (_, since, _) = traffic.expect.at(record.started);
        if late {
            self.violate(
                "convergence",
                format!(
                    "request {} started at {}ms saw {} ({} expected before {}ms): not converged \
                     within {}ms of the change",
                    record.conn,
                    record.started.as_millis(),
                    record.outcome,
                    previous.map(|p| p.to_string()).unwrap_or_default(),
                    since.as_millis(),
                    self.scenario.invariants.convergence.0.as_millis()
                ),
            );
        } else if self.scenario.invariants.policy {
            self.violate(
                "policy",
                format!(
                    "request {} started at {}ms saw {}, but the scenario expects {expected}",
                    record.conn,
                    record.started.as_millis(),
                    record.outcome
                ),
            );
        }
    }

    fn judge_received(&mut self, r: Received) {
        let Some(&started) = self.started.get(&(r.traffic, r.request)) else {
            return;
        };
        let Some(traffic) = self.scenario.traffic.get(r.traffic) else {
            return;
        };
        let Some((expected, _, in_window)) = self.expectation(r.traffic, started) else {
            return;
        };
        if expected.must_not_reach_app() && !in_window && self.scenario.invariants.policy {
            self.violate(
                "policy",
                format!(
                    "request {}#{} reached the application on {} ({}) from {} at {}ms, but the \
                     scenario expects it {expected}",
                    traffic.name,
                    r.request,
                    r.pod,
                    r.node,
                    r.peer,
                    r.at.as_millis()
                ),
            );
        }
    }

    fn check_convergence(&mut self) {
        let now = self.now();
        if now < self.last_convergence_check + CONVERGENCE_CHECK {
            return;
        }
        self.last_convergence_check = now;
        let Some((since, what)) = self.pending.clone() else {
            return;
        };
        // With istiod down or cut off, nothing can converge: the repair or restart that ends
        // the outage starts a new window.
        let cut_off = self.down.contains(ISTIOD)
            || self
                .partitions
                .iter()
                .any(|(a, b)| a == ISTIOD || b == ISTIOD);
        if cut_off {
            return;
        }
        let ztunnels: Vec<(String, Rc<Ztunnel>)> = self
            .shared
            .ztunnels
            .borrow()
            .iter()
            .map(|(n, z)| (n.clone(), z.clone()))
            .collect();
        let mut lagging = None;
        for node in &self.scenario.nodes {
            if self.down.contains(node) {
                continue;
            }
            let Some((_, z)) = ztunnels.iter().find(|(n, _)| n == node) else {
                lagging = Some((node.clone(), "not started".to_string()));
                break;
            };
            let version = *z.state().subscribe().borrow();
            let cached = self
                .fingerprints
                .get(node)
                .filter(|(v, _)| *v == version)
                .map(|(_, f)| *f);
            let f = match cached {
                Some(f) => f,
                None => {
                    let f = z.state().read(state_fingerprint);
                    self.fingerprints.insert(node.clone(), (version, f));
                    f
                }
            };
            if f != self.expected {
                lagging = Some((
                    node.clone(),
                    format!(
                        "holds {} workloads, {} services, {} policies; istiod's translation has {}, {}, {}",
                        f.workloads,
                        f.services,
                        f.policies,
                        self.expected.workloads,
                        self.expected.services,
                        self.expected.policies
                    ),
                ));
                break;
            }
        }
        match lagging {
            None => {
                self.pending = None;
                self.record(
                    "convergence",
                    format!(
                        "every ztunnel holds istiod's configuration {}ms after {what}",
                        (now - since).as_millis()
                    ),
                );
            }
            Some((node, why)) if now > since + self.scenario.invariants.convergence.0 => {
                self.violate(
                    "convergence",
                    format!(
                        "{node}'s ztunnel has not converged {}ms after {what} at {}ms (bound {}ms): {why}",
                        (now - since).as_millis(),
                        since.as_millis(),
                        self.scenario.invariants.convergence.0.as_millis()
                    ),
                );
            }
            Some(_) => {}
        }
    }

    /// Each traffic's `split`: the answered requests' shares per backend within 5 percentage
    /// points of the weights, and nothing for a weight of 0 (gateway-api-semantics §5).
    /// Requests in a convergence window after a change are not counted.
    pub(super) fn check_splits(&mut self) {
        if !self.scenario.invariants.routing {
            return;
        }
        for (index, traffic) in self.scenario.traffic.iter().enumerate() {
            if let Some(outcomes) = &traffic.outcomes {
                let seen: Vec<String> = self
                    .requests
                    .iter()
                    .filter(|r| r.traffic == index)
                    .filter(|r| {
                        self.expectation(r.traffic, r.started)
                            .is_some_and(|(_, _, in_window)| !in_window)
                    })
                    .map(|r| r.outcome.to_string())
                    .collect();
                if let Some(event) = share_violation(&traffic.name, outcomes, &seen, |o, k| o == k)
                {
                    self.violate("routing", event);
                    return;
                }
            }
            let Some(split) = &traffic.split else {
                continue;
            };
            let answered: Vec<&str> = self
                .requests
                .iter()
                .filter(|r| r.traffic == index && r.outcome == Outcome::Succeed)
                .filter(|r| {
                    self.expectation(r.traffic, r.started)
                        .is_some_and(|(_, _, in_window)| !in_window)
                })
                .filter_map(|r| r.backend.as_deref())
                .collect();
            if let Some(event) = share_violation(&traffic.name, split, &answered, |b, prefix| {
                b.starts_with(prefix)
            }) {
                self.violate("routing", event);
                return;
            }
        }
    }

    pub(super) fn check_leaks(&mut self) {
        if !self.scenario.invariants.leaks {
            return;
        }
        let apps: Vec<(String, i64)> = self
            .shared
            .app_connections
            .borrow()
            .iter()
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        for (node, open) in apps {
            if open != 0 && !self.down.contains(&node) {
                self.violate(
                    "leaks",
                    format!("{open} application connections still open on {node} at the end"),
                );
                return;
            }
        }
        let ztunnels: Vec<(String, usize)> = self
            .shared
            .ztunnels
            .borrow()
            .iter()
            .map(|(n, z)| (n.clone(), z.open_inbound_connections()))
            .collect();
        for (node, open) in ztunnels {
            if open != 0 {
                self.violate(
                    "leaks",
                    format!("{node}'s ztunnel still tracks {open} inbound connections at the end"),
                );
                return;
            }
        }
        let left = self.shared.tasks.pod_tasks_left();
        if let Some((node, n)) = left.into_iter().find(|(n, _)| !self.down.contains(n)) {
            self.violate(
                "leaks",
                format!("{n} simulator tasks for {node}'s pods still running at the end"),
            );
            return;
        }
        let grown = self.shared.tasks.grown();
        if let Some((node, baseline, latest)) =
            grown.into_iter().find(|(n, ..)| !self.down.contains(n))
        {
            self.violate(
                "leaks",
                format!(
                    "{node} ends with {} tasks alive for {} TCP connections: {} more than the {} \
                     it needed while starting up",
                    latest.tasks,
                    latest.connections,
                    latest.unexplained() - baseline,
                    baseline
                ),
            );
        }
    }
}

/// Whether the shares of `seen` under each key of `weights` (as `belongs` says) miss weight /
/// sum of weights by more than 5 percentage points, or a weight of 0 got anything: the
/// Gateway API suite's bound for weights (gateway-api-semantics §5).
pub fn share_violation<T: AsRef<str>>(
    traffic: &str,
    weights: &std::collections::BTreeMap<String, u32>,
    seen: &[T],
    belongs: impl Fn(&str, &str) -> bool,
) -> Option<String> {
    share_violation_within(traffic, weights, seen, belongs, |_, _| 0.05)
}

/// [`share_violation`] with the allowed miss (a fraction) computed from the wanted share and
/// the number of samples. Public so that a real-kernel run (`e2e`), whose waypoints draw from
/// real entropy rather than a seed, judges splits by the same rule with a bound that fits its
/// sampling noise.
pub fn share_violation_within<T: AsRef<str>>(
    traffic: &str,
    weights: &std::collections::BTreeMap<String, u32>,
    seen: &[T],
    belongs: impl Fn(&str, &str) -> bool,
    tolerance: impl Fn(f64, usize) -> f64,
) -> Option<String> {
    let total: u32 = weights.values().sum();
    if seen.is_empty() || total == 0 {
        return None;
    }
    for (key, weight) in weights {
        let got = seen.iter().filter(|s| belongs(s.as_ref(), key)).count();
        let share = got as f64 / seen.len() as f64;
        let want = f64::from(*weight) / f64::from(total);
        let allowed = tolerance(want, seen.len());
        let wrong = if *weight == 0 {
            got > 0
        } else {
            (share - want).abs() > allowed
        };
        if wrong {
            return Some(format!(
                "traffic {traffic}: {key} had {got} of {} requests ({:.1}%), weight {weight} of {total} wants {:.1}% ± {:.1}",
                seen.len(),
                share * 100.0,
                want * 100.0,
                allowed * 100.0
            ));
        }
    }
    None
}
