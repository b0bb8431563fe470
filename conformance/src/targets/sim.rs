//! The simulator as a target: a case becomes a `sim::Scenario` (the base topology and the
//! case's manifests as the cluster, one traffic per request), run in this process under a
//! seed with the production istiod, ztunnels and waypoints. Each request is sent every
//! 100 ms from when the configuration has had time to converge, so the runner can apply the
//! eventual-consistency rule; a statistical request sends its samples every 10 ms.
//!
//! A policy case becomes a scenario the same way (one traffic per attempt, from a pod), but
//! its attempts take turns: round after round, each attempt tries once in a slot of its own,
//! so what the proxies logged while a try was in flight (the trace's policy decisions) tells
//! who denied it. A case with a change makes its rounds before the change, then after it
//! once everything has converged; a manifest a case expects refused is applied to a scratch
//! store, as the simulator checks a scenario before it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sim::apps::HttpResponse;
use sim::scenario::Outcome;

use super::{Answer, CaseRun, Observation, Response, Target, TargetError};
use crate::case::{Base, Case, RequestSpec};
use crate::policy::{
    self, Connection, Decider, Denial, Phase, PolicyBase, PolicyCase, PolicyRun, PolicyTry,
};

/// When the first try of each request is made: istiod has deployed the waypoint and pushed
/// the routes well before (the simulator's own waypoint scenarios start at 3 s).
const FIRST_TRY: Duration = Duration::from_secs(2);
/// Between tries of one request (upstream waits 100 ms between failed probes).
const EVERY: Duration = Duration::from_millis(100);
/// Tries per request: enough to converge and then be seen to pass 3 times in a row.
const TRIES: u32 = 40;
/// Statistical requests start once everything has converged, and go every 10 ms.
const SAMPLES_START: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long one try waits by default (upstream: 10 s per request).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs cases in the deterministic simulator.
#[derive(Debug, Clone)]
pub struct SimTarget {
    seed: u64,
}

impl SimTarget {
    pub fn new(seed: u64) -> Self {
        SimTarget { seed }
    }

    /// The scenario a case runs as (YAML, so it goes through the simulator's own checks).
    pub fn scenario_text(&self, base: &Base, case: &Case) -> Result<String, TargetError> {
        let mut cluster = base.manifests.trim_end().to_string();
        if !case.manifests.trim().is_empty() {
            cluster.push_str("\n---\n");
            cluster.push_str(case.manifests.trim_end());
        }
        cluster.push('\n');
        let traffic = case
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| traffic(base, i, r))
            .collect::<Result<Vec<_>, _>>()?;
        let scenario = json!({
            "about": format!("conformance case {} ({})", case.id, case.test),
            "name": case.id,
            "seed": self.seed,
            "nodes": base.nodes,
            "settings": {"settle": "2s", "maxDuration": "10m"},
            "cluster": cluster,
            "traffic": traffic,
        });
        serde_yaml::to_string(&scenario).map_err(|e| TargetError::Setup(e.to_string()))
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn qualified(base: &Base, name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("{}/{name}", base.namespace)
    }
}

fn traffic(base: &Base, index: usize, r: &RequestSpec) -> Result<Value, TargetError> {
    let to = match (&r.to.service, &r.to.pod) {
        (Some(service), None) => json!({"service": qualified(base, service), "port": r.to.port}),
        (None, Some(deployment)) => {
            json!({"deployment": qualified(base, deployment), "port": r.to.port})
        }
        _ => {
            return Err(TargetError::Setup(format!(
                "request {index}: exactly one of to.service, to.pod"
            )));
        }
    };
    let (start, every, tries) = match r.samples {
        Some(n) => (SAMPLES_START, SAMPLE_EVERY, n.max(1)),
        None => (FIRST_TRY, EVERY, TRIES),
    };
    let mut http = json!({"method": r.method, "path": r.path, "headers": r.headers});
    if let Some(body) = &r.body {
        http["body"] = json!(body);
    }
    Ok(json!({
        "name": format!("request-{index}"),
        "from": {"deployment": r.from.clone().unwrap_or_else(|| base.client.clone())},
        "to": to,
        "protocol": "http",
        "http": http,
        "start": millis(start),
        "every": millis(every),
        "duration": millis(every * tries),
        "timeout": millis(r.timeout_ms.map_or(TIMEOUT, Duration::from_millis)),
        "expect": "any",
        "record": true,
    }))
}

/// The answer as observed, less its `Date` header: the waypoint's HTTP server stamps it from
/// the host's wall clock (no seam covers it), so it would differ between runs of one seed.
fn response(r: &HttpResponse) -> Response {
    Response {
        status: r.status,
        headers: r
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
            .cloned()
            .collect(),
        body: r.body.clone(),
    }
}

/// Which pods received each request, by (traffic, request number).
fn received_by(deliveries: &[sim::Delivery]) -> BTreeMap<(usize, u64), Vec<String>> {
    let mut received: BTreeMap<(usize, u64), Vec<String>> = BTreeMap::new();
    for d in deliveries {
        received
            .entry((d.traffic, d.request))
            .or_default()
            .push(d.pod.clone());
    }
    received
}

/// Each request's tries, in the order sent, from a run's records and deliveries: what every
/// target that runs a case as a scenario (the simulator, the namespace cluster) reports.
pub(super) fn observations(
    requests: &[sim::RequestRecord],
    deliveries: &[sim::Delivery],
    count: usize,
) -> Vec<Vec<Observation>> {
    let mut received = received_by(deliveries);
    let mut tries: Vec<Vec<(u64, Observation)>> = vec![Vec::new(); count];
    for record in requests {
        let Some(list) = tries.get_mut(record.traffic) else {
            continue;
        };
        let answer = match (&record.response, record.outcome) {
            (Some(r), _) => Answer::Response(response(r)),
            (None, Outcome::Succeed) => Answer::Echoed,
            (None, Outcome::Timeout) => Answer::Timeout,
            (None, _) => Answer::Refused,
        };
        list.push((
            record.request,
            Observation {
                at_ms: u64::try_from(record.started.as_millis()).unwrap_or(u64::MAX),
                answer,
                received_by: received
                    .remove(&(record.traffic, record.request))
                    .unwrap_or_default(),
            },
        ));
    }
    tries
        .into_iter()
        .map(|mut list| {
            list.sort_by_key(|(n, _)| *n);
            list.into_iter().map(|(_, o)| o).collect()
        })
        .collect()
}

impl Target for SimTarget {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn run_policy(&self, base: &PolicyBase, case: &PolicyCase) -> Result<PolicyRun, TargetError> {
        self.run_policy_case(base, case)
    }

    fn run(&self, base: &Base, case: &Case) -> Result<CaseRun, TargetError> {
        let text = self.scenario_text(base, case)?;
        let file = case.file.display().to_string();
        let scenario = sim::Scenario::parse(&text, &file, &case.id)
            .map_err(|e| TargetError::Setup(e.message))?;
        let report = sim::run_scenario(&scenario, self.seed);
        let output = &report.output;
        let tries = observations(&output.requests, &output.deliveries, case.requests.len());
        let problem = run_problem(output);
        Ok(CaseRun {
            tries,
            problem,
            replay: Some(format!(
                "cargo conformance --case {} --seed {}",
                case.id, self.seed
            )),
        })
    }
}

/// Policy attempts: the first round starts once istiod has pushed the policies and deployed
/// the waypoints (the simulator's waypoint scenarios start at 3 s).
const POLICY_FIRST_TRY: Duration = Duration::from_secs(3);
/// Each attempt's slot in a round: long enough for a try to be answered or refused (they
/// take milliseconds), so the decisions logged in a try's window are its own.
const POLICY_SLOT: Duration = Duration::from_millis(100);
/// A try's timeout (a denial is immediate; an allowed try takes milliseconds).
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);
/// After a change, the time every proxy has to hold it before the next round (the
/// simulator's convergence bound for policy changes is 1 s).
const POLICY_SETTLE: Duration = Duration::from_secs(2);

/// When a policy case's rounds and change happen.
#[derive(Debug, Clone, Copy)]
pub(super) struct PolicySchedule {
    /// Time between two tries of one attempt.
    round: Duration,
    /// When the change is applied (after the last try before it).
    change_at: Option<Duration>,
}

impl PolicySchedule {
    pub(super) fn of(case: &PolicyCase) -> Self {
        let slots = POLICY_SLOT * u32::try_from(case.attempts.len().max(1)).unwrap_or(u32::MAX);
        match case.change {
            None => PolicySchedule {
                round: slots,
                change_at: None,
            },
            Some(_) => {
                // A round is the attempts' slots and POLICY_SETTLE: the change is made right
                // after the last try before it, and the next round starts POLICY_SETTLE later.
                let round = slots + POLICY_SETTLE;
                let tries = u32::try_from(policy::TRIES).unwrap_or(u32::MAX);
                PolicySchedule {
                    round,
                    change_at: Some(POLICY_FIRST_TRY + round * (tries - 1) + slots),
                }
            }
        }
    }

    fn rounds(&self) -> u32 {
        let tries = u32::try_from(policy::TRIES).unwrap_or(u32::MAX);
        if self.change_at.is_some() {
            2 * tries
        } else {
            tries
        }
    }
}

/// The order attempts take their slots in: persistent attempts the change closes first, so
/// what was logged since the change, up to such an attempt's first try after it, is about
/// them only (the case's check makes them share a decider).
fn slot_order(case: &PolicyCase) -> Vec<usize> {
    let closing = |a: &policy::Attempt| {
        case.change.is_some()
            && a.connection == Connection::Persistent
            && a.before == Some(policy::Outcome::Allowed)
            && a.expect != policy::Outcome::Allowed
    };
    let mut order: Vec<usize> = (0..case.attempts.len()).collect();
    order.sort_by_key(|&i| !closing(&case.attempts[i]));
    let mut slots = vec![0; case.attempts.len()];
    for (slot, i) in order.into_iter().enumerate() {
        slots[i] = slot;
    }
    slots
}

fn policy_traffic(
    index: usize,
    attempt: &policy::Attempt,
    slot: usize,
    schedule: &PolicySchedule,
) -> Value {
    let to = match (&attempt.to.service, &attempt.to.pod) {
        (Some(service), _) => json!({"service": service, "port": attempt.to.port}),
        (_, Some(pod)) => json!({"pod": pod, "port": attempt.to.port}),
        _ => json!({}),
    };
    let start = POLICY_FIRST_TRY + POLICY_SLOT * u32::try_from(slot).unwrap_or(u32::MAX);
    let mut traffic = json!({
        "name": format!("attempt-{index}"),
        "from": {"pod": attempt.from},
        "to": to,
        "protocol": match attempt.protocol {
            policy::Protocol::Http => "http",
            policy::Protocol::Tcp => "tcp",
        },
        "connection": match attempt.connection {
            Connection::New => "new",
            Connection::Persistent => "persistent",
        },
        "start": millis(start),
        "every": millis(schedule.round),
        "duration": millis(schedule.round * schedule.rounds()),
        "timeout": millis(POLICY_TIMEOUT),
        "expect": "any",
        "record": true,
    });
    if attempt.protocol == policy::Protocol::Http {
        traffic["http"] = json!({
            "method": attempt.method(),
            "path": attempt.path(),
            "headers": attempt.headers,
        });
    }
    if let Some(encrypted) = attempt.encrypted {
        traffic["encrypted"] = json!(encrypted);
    }
    traffic
}

fn cluster_text(parts: &[&str]) -> String {
    let mut cluster = String::new();
    for part in parts.iter().filter(|p| !p.trim().is_empty()) {
        if !cluster.is_empty() {
            cluster.push_str("---\n");
        }
        cluster.push_str(part.trim_end());
        cluster.push('\n');
    }
    cluster
}

/// Whether a logged decision is a denial (or a close because of one).
fn is_denial(decision: &str) -> bool {
    decision.starts_with("explicitly denied")
        || decision.starts_with("denied")
        || decision == "closed by a policy change"
}

/// A source ztunnel failing a connection closed because the waypoint it must go through
/// cannot be resolved (policy-semantics §4.4): not a policy decision, but a denial all the
/// same, and ztunnel's.
fn fail_closed(what: &str) -> Option<String> {
    let at = what.find("error=waypoint ")?;
    let error = &what[at + "error=".len()..];
    error
        .contains("could not be resolved")
        .then(|| format!("fail closed: {error}"))
}

impl SimTarget {
    /// The scenario a policy case runs as (YAML, so it goes through the simulator's checks).
    pub fn policy_scenario_text(
        &self,
        base: &PolicyBase,
        case: &PolicyCase,
    ) -> Result<String, TargetError> {
        let schedule = PolicySchedule::of(case);
        let slots = slot_order(case);
        let traffic: Vec<Value> = case
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| policy_traffic(i, a, slots[i], &schedule))
            .collect();
        let mut scenario = json!({
            "about": format!("conformance policy case {} (§{})", case.id, case.section),
            "name": case.id,
            "seed": self.seed,
            "nodes": base.nodes,
            "settings": {
                "settle": "2s",
                "maxDuration": "10m",
                "istiodEnv": case.istiod_env,
                "meshConfig": case.mesh_config,
            },
            "cluster": cluster_text(&[&base.manifests, &case.manifests]),
            "traffic": traffic,
        });
        if let (Some(change), Some(at)) = (&case.change, schedule.change_at) {
            let mut step = json!({"at": millis(at)});
            if let Some(apply) = &change.apply {
                step["apply"] = json!(apply);
            }
            if let Some(r) = &change.delete {
                step["delete"] = json!({"kind": r.kind, "namespace": r.namespace, "name": r.name});
            }
            scenario["timeline"] = json!([step]);
        }
        serde_yaml::to_string(&scenario).map_err(|e| TargetError::Setup(e.to_string()))
    }

    /// Whether `manifest`, applied on top of the base and the case's manifests, is refused:
    /// `Ok(reason)` if it is.
    fn refusal(
        &self,
        base: &PolicyBase,
        case: &PolicyCase,
        manifest: &str,
    ) -> Result<Result<String, String>, TargetError> {
        let scenario = json!({
            "about": format!("conformance policy case {}: a manifest to refuse", case.id),
            "name": case.id,
            "nodes": base.nodes,
            "cluster": cluster_text(&[&base.manifests, &case.manifests, manifest]),
        });
        let text =
            serde_yaml::to_string(&scenario).map_err(|e| TargetError::Setup(e.to_string()))?;
        let file = case.file.display().to_string();
        let scenario = match sim::Scenario::parse(&text, &file, &case.id) {
            Ok(s) => s,
            // Refused when read (a field the API's schema does not have).
            Err(e) => return Ok(Ok(e.message)),
        };
        Ok(match sim::world::check_manifests(&scenario) {
            Err(e) => Ok(e.message),
            Ok(()) => Err("accepted".into()),
        })
    }
}

/// Tries of every attempt from a run's records, each with the denials logged in its window
/// (from its start to `slack` after its end):
/// what every target that runs a policy case as a scenario reports (the simulator from its
/// trace, the namespace cluster from the proxies' logs).
pub(super) fn policy_tries(
    case: &PolicyCase,
    nodes: &[String],
    schedule: &PolicySchedule,
    events: &[sim::trace::Event],
    requests: &[sim::RequestRecord],
    deliveries: &[sim::Delivery],
    slack: Duration,
) -> Vec<Vec<PolicyTry>> {
    let denials: Vec<(Duration, Denial)> = events
        .iter()
        .filter_map(|e| {
            let decision = e
                .decision
                .clone()
                .filter(|d| is_denial(d))
                .or_else(|| fail_closed(&e.what))?;
            let component = if e.host.contains('/') {
                Decider::Waypoint
            } else if nodes.contains(&e.host) {
                Decider::Ztunnel
            } else {
                return None;
            };
            Some((
                e.at,
                Denial {
                    component,
                    host: e.host.clone(),
                    decision,
                },
            ))
        })
        .collect();
    let mut received = received_by(deliveries);
    let mut records: Vec<Vec<&sim::RequestRecord>> = vec![Vec::new(); case.attempts.len()];
    for record in requests {
        if let Some(list) = records.get_mut(record.traffic) {
            list.push(record);
        }
    }
    records
        .into_iter()
        .enumerate()
        .map(|(index, mut list)| {
            list.sort_by_key(|r| r.request);
            let persistent = case.attempts[index].connection == Connection::Persistent;
            let mut first_after = true;
            list.into_iter()
                .map(|record| {
                    let phase = match schedule.change_at {
                        Some(at) if record.started < at => Phase::Before,
                        _ => Phase::After,
                    };
                    // A persistent connection the change closed fails its first try after
                    // the change without a decision of its own: the close was logged since.
                    let from = match schedule.change_at {
                        Some(at) if persistent && phase == Phase::After && first_after => at,
                        _ => record.started,
                    };
                    if phase == Phase::After {
                        first_after = false;
                    }
                    let answer = match (&record.response, record.outcome) {
                        (Some(r), _) => Answer::Response(response(r)),
                        (None, Outcome::Succeed) => Answer::Echoed,
                        (None, Outcome::Timeout) => Answer::Timeout,
                        (None, _) => Answer::Refused,
                    };
                    PolicyTry {
                        phase,
                        observation: Observation {
                            at_ms: u64::try_from(record.started.as_millis()).unwrap_or(u64::MAX),
                            answer,
                            received_by: received
                                .remove(&(record.traffic, record.request))
                                .unwrap_or_default(),
                        },
                        denials: denials
                            .iter()
                            .filter(|(at, _)| *at >= from && *at <= record.finished + slack)
                            .map(|(_, d)| d.clone())
                            .collect(),
                    }
                })
                .collect()
        })
        .collect()
}

/// The run's problem, if any: the simulation failed or an invariant was violated.
fn run_problem(output: &sim::RunOutput) -> Option<String> {
    match (&output.violation, &output.failure) {
        (_, Some(f)) => Some(format!("the simulation failed: {f}")),
        (Some(v), None) => Some(format!(
            "simulator invariant {} violated at {}ms: {}",
            v.invariant,
            v.at.as_millis(),
            v.event
        )),
        (None, None) => None,
    }
}

impl SimTarget {
    fn run_policy_case(
        &self,
        base: &PolicyBase,
        case: &PolicyCase,
    ) -> Result<PolicyRun, TargetError> {
        let refusals = case
            .refused
            .iter()
            .map(|r| self.refusal(base, case, &r.manifest))
            .collect::<Result<Vec<_>, _>>()?;
        let replay = Some(format!(
            "cargo conformance --case {} --seed {}",
            case.id, self.seed
        ));
        if case.attempts.is_empty() {
            return Ok(PolicyRun {
                tries: Vec::new(),
                refusals,
                problem: None,
                replay,
            });
        }
        let text = self.policy_scenario_text(base, case)?;
        let file = case.file.display().to_string();
        let scenario = sim::Scenario::parse(&text, &file, &case.id)
            .map_err(|e| TargetError::Setup(e.message))?;
        let report = sim::run_scenario(&scenario, self.seed);
        let schedule = PolicySchedule::of(case);
        Ok(PolicyRun {
            tries: policy_tries(
                case,
                &base.nodes,
                &schedule,
                &report.output.events,
                &report.output.requests,
                &report.output.deliveries,
                // One clock for the client and every proxy: a try's window is exact.
                Duration::ZERO,
            ),
            refusals,
            problem: run_problem(&report.output),
            replay,
        })
    }
}
