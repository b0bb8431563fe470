//! One scenario from file to verdict: what a kernel cannot realise is a `SKIP` with the reason;
//! otherwise the cluster starts, the timeline and the traffic run side by side, and the
//! requests and deliveries are judged ([`crate::judge`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use sim::scenario::{Action, Capture, Scenario};

use crate::cluster::{Cluster, Options};
use crate::placement::Placement;
use crate::{Error, judge, traffic, wire};

/// The scenario invariants a kernel run does not check, and why: listed once per run.
pub const NOT_CHECKED: &[(&str, &str)] = &[
    ("leaks", "no task or connection counts inside the processes"),
    (
        "convergence",
        "no state fingerprints of the ztunnels: only requests' outcomes are held to the bound",
    ),
    (
        "panic",
        "stands as: no process of the cluster exits by itself",
    ),
];

/// What became of one scenario.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every judged request and delivery as the scenario expects.
    Pass {
        name: String,
        /// Wall time, from placement to the last request (startup included).
        duration: Duration,
        requests: usize,
    },
    /// The first failure (the simulator's invariant in brackets), or why it did not run.
    Fail { name: String, reason: String },
    /// It needs what this kernel or this build cannot do; the reason says what.
    Skip { name: String, reason: String },
}

impl Verdict {
    /// `PASS name duration=…s requests=…`, `FAIL name: reason` or `SKIP name: reason`.
    pub fn line(&self) -> String {
        match self {
            Verdict::Pass {
                name,
                duration,
                requests,
            } => format!(
                "PASS {name} duration={:.1}s requests={requests}",
                duration.as_secs_f64()
            ),
            Verdict::Fail { name, reason } => format!("FAIL {name}: {reason}"),
            Verdict::Skip { name, reason } => format!("SKIP {name}: {reason}"),
        }
    }

    /// Whether it makes the run exit non-zero.
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Fail { .. })
    }

    /// Whether it was not run, for the summary.
    pub fn skipped(&self) -> bool {
        matches!(self, Verdict::Skip { .. })
    }
}

/// How long `scenario` runs in scenario time: to its last traffic's end or timeline step.
pub fn length(scenario: &Scenario) -> Duration {
    let traffic = scenario.traffic.iter().map(|t| t.start.0 + t.duration.0);
    let steps = scenario.timeline.iter().map(|s| s.at);
    traffic.chain(steps).max().unwrap_or_default()
}

/// Why `scenario` cannot run on this kernel (every reason, joined), or `None`.
pub fn unsupported(
    scenario: &Scenario,
    placement: &Placement,
    options: &Options,
) -> Option<String> {
    let dataplane = options.dataplane;
    let mut why: Vec<String> = Vec::new();
    let mut note = |reason: String| {
        if !why.contains(&reason) {
            why.push(reason);
        }
    };
    let length = length(scenario);
    if let Some(max) = options.max_wall.filter(|max| length > *max) {
        note(format!(
            "runs {}s of wall time on a kernel, more than the {}s budget (`cargo e2e run {} \
             --long` runs it)",
            length.as_secs(),
            max.as_secs(),
            scenario.file
        ));
    }
    for step in &scenario.timeline {
        match &step.action {
            // istiod follows its config dir; only a step that changes the pods is beyond us.
            Action::Apply { .. } | Action::Delete(_) => {
                match crate::config_dir::moves_pods(scenario, placement) {
                    Ok(None) => {}
                    Ok(Some(why)) => note(why),
                    Err(e) => note(e.to_string()),
                }
            }
            Action::AdvanceClock(_) => note(
                "advanceClock: a kernel has no per-process wall clock (time namespaces do not \
                 move CLOCK_REALTIME)"
                    .into(),
            ),
            Action::Latency(_) | Action::Loss(_) => {
                note("latency/loss: no netem on this kernel".into())
            }
            Action::RotateRoot(_)
            | Action::Crash(_)
            | Action::Restart(_)
            | Action::Partition(_)
            | Action::Repair(_) => {}
        }
    }
    for traffic in &scenario.traffic {
        let sources = placement.pods_of(&traffic.from.0);
        let mismatch = match traffic.capture {
            Capture::Auto => false,
            Capture::Captured => sources.iter().any(|p| !p.enrolled),
            Capture::Uncaptured => sources.iter().any(|p| p.enrolled),
        };
        if mismatch {
            note(format!(
                "traffic {}: capture {:?} against the source's enrolment (the node agent captures \
                 exactly the enrolled pods)",
                traffic.name, traffic.capture
            ));
        }
    }
    if !dataplane && placement.pods.iter().any(|p| p.enrolled) {
        note("pods are enrolled and --no-dataplane is set".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Runs the timeline's faults at their times. Must run on the runtime's `LocalSet`.
async fn timeline(cluster: Rc<Cluster>, scenario: Rc<Scenario>) -> Result<(), Error> {
    for step in &scenario.timeline {
        tokio::time::sleep_until(cluster.clock().instant(step.at).into()).await;
        let what = step.action.describe();
        eprintln!("  {:>7.3}s {what}", cluster.clock().now().as_secs_f64());
        let done = match &step.action {
            Action::Crash(host) => cluster.crash(host).await,
            Action::Restart(host) => cluster.restart(host).await,
            Action::Partition([a, b]) => cluster.partition(a, b),
            Action::Repair([a, b]) => cluster.repair(a, b),
            change @ (Action::Apply { .. } | Action::Delete(_)) => cluster.change(change),
            Action::RotateRoot(rotation) => cluster.rotate_root(rotation),
            other => Err(Error::Unsupported(other.describe())),
        };
        done.map_err(|e| Error::Process {
            what: format!("timeline step at {}ms ({what}) failed", step.at.as_millis()),
            log: e.to_string(),
        })?;
    }
    Ok(())
}

/// Runs `scenario`: skip, start, drive, judge. Must run on the runtime's `LocalSet`.
pub async fn run_scenario(scenario: &Scenario, options: &Options) -> Verdict {
    let name = scenario.name.clone();
    let fail = |reason: String| Verdict::Fail {
        name: name.clone(),
        reason,
    };
    let begun = Instant::now();
    let placement = match Placement::of(scenario) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(reason) = unsupported(scenario, &placement, options) {
        return Verdict::Skip { name, reason };
    }
    let cluster = match Cluster::start(scenario, options).await {
        Ok(c) => Rc::new(c),
        Err(Error::NotBuilt(why)) => return fail(why),
        Err(e) => return fail(format!("the cluster did not start: {e}")),
    };
    eprintln!(
        "  {name}: cluster up in {:.1}s ({} nodes, {} pods{}); run dir {}",
        begun.elapsed().as_secs_f64(),
        placement.nodes.len(),
        placement.pods.len(),
        if options.dataplane {
            ""
        } else {
            ", no data plane"
        },
        cluster.dir().display()
    );
    // The wire between nodes, for the plaintext invariant (with a data plane to check).
    let tap = match options
        .dataplane
        .then(|| wire::Tap::start(cluster.topology()))
    {
        Some(Ok(tap)) => Some(tap),
        Some(Err(e)) => return fail(e.to_string()),
        None => None,
    };
    let scenario = Rc::new(scenario.clone());
    let steps = tokio::task::spawn_local(timeline(cluster.clone(), scenario.clone()));
    let records = traffic::drive(cluster.clone(), scenario.clone()).await;
    let steps = steps.await;
    tokio::time::sleep(traffic::DRAIN).await;
    let deliveries = cluster.deliveries();
    let wire = tap.map(|tap| tap.finish(&scenario, &placement));
    if let Some(Ok(report)) = &wire {
        eprintln!(
            "  {name}: wire between nodes: {} flows between pods, {} of them HBONE and nothing but TLS records",
            report.pod_flows, report.tls_flows
        );
    }
    let wire_problem = match &wire {
        Some(Err(e)) => Some(e.to_string()),
        Some(Ok(report)) => report.violations.first().map(|first| {
            let n = report.violations.len();
            format!(
                "[plaintext] {first} ({n} violation{} in all)",
                if n == 1 { "" } else { "s" }
            )
        }),
        None => None,
    };
    let verdict = match steps {
        Ok(Err(e)) => fail(e.to_string()),
        Ok(Ok(())) if wire_problem.is_some() => fail(wire_problem.unwrap_or_default()),
        Err(e) => fail(format!("the timeline task failed: {e}")),
        Ok(Ok(())) => match cluster.exited() {
            Some(e) => fail(format!("[panic] {e}")),
            None => {
                let failures = judge::judge(&scenario, &records, &deliveries);
                match failures.first() {
                    Some(first) => fail(format!(
                        "[{}] at {}ms: {} ({} failure{} in all)",
                        first.invariant,
                        first.at.as_millis(),
                        first.what,
                        failures.len(),
                        if failures.len() == 1 { "" } else { "s" }
                    )),
                    None => Verdict::Pass {
                        name: name.clone(),
                        duration: begun.elapsed(),
                        requests: records.len(),
                    },
                }
            }
        },
    };
    if verdict.failed() {
        eprintln!("  {name}: the processes' logs end:\n{}", cluster.logs());
    }
    cluster.stop();
    verdict
}

/// Everything a run observed, for a caller that judges it by its own rules (the conformance
/// runner's `local` target).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Every request, in the order started.
    pub records: Vec<sim::RequestRecord>,
    /// What the applications received.
    pub deliveries: Vec<sim::Delivery>,
    /// Every line the ztunnels and waypoints logged, at its scenario time: their decisions.
    pub events: Vec<sim::trace::Event>,
    /// A process that exited, a timeline step that failed, or bytes on the wire that should
    /// not have been there.
    pub problem: Option<String>,
}

/// Why [`run_recorded`] has nothing to show.
#[derive(Debug, Clone)]
pub enum NotRun {
    /// The kernel or this build cannot realise the scenario; the reason says what.
    Skip(String),
    /// The cluster did not start.
    Fail(String),
}

/// Runs `scenario` as [`run_scenario`] does, but returns what was observed instead of a
/// verdict. Must run on the runtime's `LocalSet`.
pub async fn run_recorded(scenario: &Scenario, options: &Options) -> Result<Recorded, NotRun> {
    let placement = Placement::of(scenario).map_err(|e| NotRun::Fail(e.to_string()))?;
    if let Some(reason) = unsupported(scenario, &placement, options) {
        return Err(NotRun::Skip(reason));
    }
    let cluster = Rc::new(
        Cluster::start(scenario, options)
            .await
            .map_err(|e| NotRun::Fail(format!("the cluster did not start: {e}")))?,
    );
    let tap = match options
        .dataplane
        .then(|| wire::Tap::start(cluster.topology()))
    {
        Some(Ok(tap)) => Some(tap),
        Some(Err(e)) => return Err(NotRun::Fail(e.to_string())),
        None => None,
    };
    let scenario = Rc::new(scenario.clone());
    let steps = tokio::task::spawn_local(timeline(cluster.clone(), scenario.clone()));
    let records = traffic::drive(cluster.clone(), scenario.clone()).await;
    let steps = steps.await;
    tokio::time::sleep(traffic::DRAIN).await;
    let deliveries = cluster.deliveries();
    let mut problems = Vec::new();
    match steps {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(e.to_string()),
        Err(e) => problems.push(format!("the timeline task failed: {e}")),
    }
    if let Some(e) = cluster.exited() {
        problems.push(format!("[panic] {e}"));
    }
    match tap.map(|tap| tap.finish(&scenario, &placement)) {
        Some(Ok(report)) => problems.extend(
            report
                .violations
                .into_iter()
                .map(|v| format!("[plaintext] {v}")),
        ),
        Some(Err(e)) => problems.push(e.to_string()),
        None => {}
    }
    if !problems.is_empty() {
        eprintln!(
            "  {}: the processes' logs end:\n{}",
            scenario.name,
            cluster.logs()
        );
    }
    cluster.stop();
    Ok(Recorded {
        records,
        deliveries,
        events: cluster.proxy_events(),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    })
}
