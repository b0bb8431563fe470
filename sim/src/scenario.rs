//! The scenario format: one YAML document per file (see `sim/README.md` for the reference
//! and a complete example). Every key is known or the file is refused, and every error names
//! the file and a line.
//!
//! The cluster is given as plain Kubernetes manifests in a block string (`cluster: |`), the
//! same YAML a user would `kubectl apply`; `apply:` steps of the timeline carry manifests the
//! same way. Their errors are reported at their line in the scenario file.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// A duration written as `250ms`, `10s`, `5m` or `25h` (a number and a unit, no spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// Parses `250ms`, `1.5s`, `10s`, `5m`, `25h`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    let secs = number * scale;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 10s, 5m or 25h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    E::custom(format!(
                        "invalid duration {v:?}: expected a number and a unit (ms, s, m, h, d), e.g. 10s"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: give a unit, e.g. {v}s or {v}ms"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// The nodes: a list of names, or a count (`node-01` … `node-NN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes(pub Vec<String>);

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Nodes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of node names or a number of nodes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Nodes, E> {
                if !(1..=250).contains(&n) {
                    return Err(E::custom(format!("{n} nodes: between 1 and 250")));
                }
                let width = n.to_string().len().max(2);
                Ok(Nodes(
                    (1..=n).map(|i| format!("node-{i:0width$}")).collect(),
                ))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Nodes, A::Error> {
                let mut names: Vec<String> = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if !is_dns_label(&name) {
                        return Err(de::Error::custom(format!(
                            "node name {name:?} is not a DNS label (lower-case letters, digits, '-')"
                        )));
                    }
                    if name == ISTIOD {
                        return Err(de::Error::custom("\"istiod\" names the control plane"));
                    }
                    if names.contains(&name) {
                        return Err(de::Error::custom(format!("node {name:?} listed twice")));
                    }
                    names.push(name);
                }
                if names.is_empty() || names.len() > 250 {
                    return Err(de::Error::custom("between 1 and 250 nodes"));
                }
                Ok(Nodes(names))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// How a timeline step or a fault names istiod.
pub const ISTIOD: &str = "istiod";

/// Simulation settings; all optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// turmoil's tick: the resolution of simulated time.
    pub tick: Dur,
    /// Every message's latency is drawn (from the seed) between these.
    pub min_latency: Dur,
    pub max_latency: Dur,
    /// Lifetime of workload certificates (istiod's default and what ztunnels ask for).
    pub certificate_ttl: Dur,
    /// istiod's debounce of store changes.
    pub debounce: Dur,
    /// How long the world keeps running after the last traffic and timeline step, before the
    /// end-of-run checks (leaks).
    pub settle: Dur,
    /// The run is stopped (and fails) if it has not ended by then.
    pub max_duration: Dur,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Dur(Duration::from_millis(1)),
            min_latency: Dur(Duration::from_millis(1)),
            max_latency: Dur(Duration::from_millis(10)),
            certificate_ttl: Dur(Duration::from_secs(24 * 3600)),
            debounce: Dur(Duration::from_millis(100)),
            settle: Dur(Duration::from_secs(3)),
            max_duration: Dur(Duration::from_secs(3600)),
        }
    }
}

/// `{between: [a, b], …}`: a link between two nodes, or a node and `istiod`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkLatency {
    pub between: [String; 2],
    pub latency: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkLoss {
    pub between: [String; 2],
    /// Probability in [0, 1] that a message on the link is lost.
    pub rate: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RootRotation {
    /// The new root signs after this long (it is trusted at once).
    pub activate_after: Dur,
    /// The old root stays trusted this long after that.
    pub overlap: Dur,
}

/// What a timeline step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply manifests (text) to the cluster; `line` is where they start in the file.
    Apply {
        manifests: String,
        line: usize,
    },
    Delete(ObjectRef),
    Partition([String; 2]),
    Repair([String; 2]),
    Crash(String),
    Restart(String),
    Latency(LinkLatency),
    Loss(LinkLoss),
    AdvanceClock(Duration),
    RotateRoot(RootRotation),
}

impl Action {
    /// A short description for the trace and the timeline.
    pub fn describe(&self) -> String {
        match self {
            Action::Apply { manifests, .. } => {
                let objects: Vec<String> = manifests
                    .lines()
                    .filter_map(|l| l.strip_prefix("kind: "))
                    .map(str::trim)
                    .map(String::from)
                    .collect();
                format!("apply {}", objects.join(", "))
            }
            Action::Delete(r) => format!("delete {} {}/{}", r.kind, r.namespace, r.name),
            Action::Partition([a, b]) => format!("partition {a} <-> {b}"),
            Action::Repair([a, b]) => format!("repair {a} <-> {b}"),
            Action::Crash(h) => format!("crash {h}"),
            Action::Restart(h) => format!("restart {h}"),
            Action::Latency(l) => format!(
                "latency {} <-> {} = {}ms",
                l.between[0],
                l.between[1],
                l.latency.0.as_millis()
            ),
            Action::Loss(l) => format!("loss {} <-> {} = {}", l.between[0], l.between[1], l.rate),
            Action::AdvanceClock(d) => format!("wall clock +{}s", d.as_secs()),
            Action::RotateRoot(r) => format!(
                "root rotation (activate after {}s, overlap {}s)",
                r.activate_after.0.as_secs(),
                r.overlap.0.as_secs()
            ),
        }
    }

    /// Whether this step is a fault (drawn as such in the timeline).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::Partition(_)
                | Action::Crash(_)
                | Action::Latency(_)
                | Action::Loss(_)
                | Action::AdvanceClock(_)
        )
    }
}

/// One timeline entry: at `at`, do exactly one thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStep {
    at: Dur,
    #[serde(default)]
    apply: Option<String>,
    #[serde(default)]
    delete: Option<ObjectRef>,
    #[serde(default)]
    partition: Option<[String; 2]>,
    #[serde(default)]
    repair: Option<[String; 2]>,
    #[serde(default)]
    crash: Option<String>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    latency: Option<LinkLatency>,
    #[serde(default)]
    loss: Option<LinkLoss>,
    #[serde(default)]
    advance_clock: Option<Dur>,
    #[serde(default)]
    rotate_root: Option<RootRotation>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawStep::deserialize(d)?;
        let mut actions = Vec::new();
        if let Some(m) = raw.apply {
            actions.push(Action::Apply {
                manifests: m,
                line: 0,
            });
        }
        actions.extend(raw.delete.map(Action::Delete));
        actions.extend(raw.partition.map(Action::Partition));
        actions.extend(raw.repair.map(Action::Repair));
        actions.extend(raw.crash.map(Action::Crash));
        actions.extend(raw.restart.map(Action::Restart));
        actions.extend(raw.latency.map(Action::Latency));
        if let Some(loss) = raw.loss {
            if !(0.0..=1.0).contains(&loss.rate) {
                return Err(de::Error::custom(format!(
                    "loss rate {} is not between 0 and 1",
                    loss.rate
                )));
            }
            actions.push(Action::Loss(loss));
        }
        actions.extend(raw.advance_clock.map(|d| Action::AdvanceClock(d.0)));
        actions.extend(raw.rotate_root.map(Action::RotateRoot));
        if actions.len() != 1 {
            return Err(de::Error::custom(format!(
                "timeline step at {}ms: exactly one of apply, delete, partition, repair, crash, \
                 restart, latency, loss, advanceClock, rotateRoot (found {})",
                raw.at.0.as_millis(),
                actions.len()
            )));
        }
        Ok(Step {
            at: raw.at.0,
            action: actions.remove(0),
        })
    }
}

/// A pod, a deployment's pods, or a service (with a port, as a destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `namespace/name` of one pod.
    Pod(String, String),
    /// A deployment's pods, taken in turn.
    Deployment(String, String),
    /// A service's cluster IP.
    Service(String, String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Pod(ns, n) => format!("pod {ns}/{n}"),
            Target::Deployment(ns, n) => format!("deployment {ns}/{n}"),
            Target::Service(ns, n) => format!("service {ns}/{n}"),
        }
    }
}

fn namespaced<E: de::Error>(what: &str, s: &str) -> Result<(String, String), E> {
    match s.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && !name.is_empty() => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(E::custom(format!(
            "{what} {s:?}: expected <namespace>/<name>"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

fn target<E: de::Error>(raw: RawTarget, port: bool) -> Result<(Target, Option<u16>), E> {
    let mut targets = Vec::new();
    if let Some(p) = &raw.pod {
        let (ns, n) = namespaced("pod", p)?;
        targets.push(Target::Pod(ns, n));
    }
    if let Some(p) = &raw.deployment {
        let (ns, n) = namespaced("deployment", p)?;
        targets.push(Target::Deployment(ns, n));
    }
    if let Some(p) = &raw.service {
        if !port {
            return Err(E::custom(
                "a service cannot send traffic: use pod or deployment",
            ));
        }
        let (ns, n) = namespaced("service", p)?;
        targets.push(Target::Service(ns, n));
    }
    if targets.len() != 1 {
        return Err(E::custom(if port {
            "exactly one of pod, deployment, service"
        } else {
            "exactly one of pod, deployment"
        }));
    }
    match (port, raw.port) {
        (true, None) => Err(E::custom("the destination needs a port")),
        (true, Some(0)) => Err(E::custom("port 0")),
        (false, Some(_)) => Err(E::custom("the source takes no port")),
        (_, p) => Ok((targets.remove(0), p)),
    }
}

/// Where traffic comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub Target);

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawTarget::deserialize(d)?;
        Ok(Source(target(raw, false)?.0))
    }
}

/// Where traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: Target,
    pub port: u16,
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawTarget::deserialize(d)?;
        let (target, port) = target(raw, true)?;
        Ok(Destination {
            target,
            port: port.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Http,
}

/// What the client of one request sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The echo came back (TCP), or a 2xx response (HTTP).
    Succeed,
    /// The connection was refused or closed before any reply: what a client sees when a
    /// ztunnel refuses or denies it at L4.
    Refused,
    /// An HTTP response with this (non-2xx) status.
    Status(u16),
    /// No reply within the request's timeout.
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeed => f.write_str("succeed"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Status(s) => write!(f, "status {s}"),
            Outcome::Timeout => f.write_str("timeout"),
        }
    }
}

/// What the scenario says a request must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Succeed,
    /// Refused or closed before a reply; the application must not see it.
    Denied,
    /// The same as `denied` for the client: the connection is refused or closed.
    Refused,
    /// An HTTP status.
    Status(u16),
    Timeout,
    /// Anything but success (outages, partitions: how it fails is not the point).
    Fail,
}

impl Expected {
    /// Whether `outcome` meets this expectation.
    pub fn admits(self, outcome: Outcome) -> bool {
        match self {
            Expected::Succeed => outcome == Outcome::Succeed,
            Expected::Denied | Expected::Refused => outcome == Outcome::Refused,
            Expected::Status(s) => outcome == Outcome::Status(s),
            Expected::Timeout => outcome == Outcome::Timeout,
            Expected::Fail => outcome != Outcome::Succeed,
        }
    }

    /// Whether the application must never see such a request.
    pub fn must_not_reach_app(self) -> bool {
        matches!(self, Expected::Denied | Expected::Refused)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Succeed => f.write_str("succeed"),
            Expected::Denied => f.write_str("denied"),
            Expected::Refused => f.write_str("refused"),
            Expected::Status(s) => write!(f, "status {s}"),
            Expected::Timeout => f.write_str("timeout"),
            Expected::Fail => f.write_str("fail"),
        }
    }
}

impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let expected = match s.as_str() {
            "succeed" => Expected::Succeed,
            "denied" => Expected::Denied,
            "refused" => Expected::Refused,
            "timeout" => Expected::Timeout,
            "fail" => Expected::Fail,
            other => match other.strip_prefix("status ").map(str::parse::<u16>) {
                Some(Ok(code)) if (100..600).contains(&code) => Expected::Status(code),
                _ => {
                    return Err(de::Error::custom(format!(
                        "unknown outcome {other:?}: succeed, denied, refused, timeout, fail or \"status <code>\""
                    )));
                }
            },
        };
        Ok(expected)
    }
}

/// From `from` on, requests started must see `outcome`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub from: Dur,
    pub outcome: Expected,
}

/// One outcome for the whole run, or phases.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation(pub Vec<Phase>);

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Expectation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an outcome (succeed, denied, refused, timeout, fail, \"status <code>\") or a \
                     list of {from: <duration>, outcome: <outcome>}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Expectation, E> {
                let outcome = Expected::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(Expectation(vec![Phase {
                    from: Dur::default(),
                    outcome,
                }]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Expectation, A::Error> {
                let mut phases: Vec<Phase> = Vec::new();
                while let Some(phase) = seq.next_element::<Phase>()? {
                    if phases.last().is_some_and(|p| p.from >= phase.from) {
                        return Err(de::Error::custom(
                            "expect: phases must be in increasing `from` order",
                        ));
                    }
                    phases.push(phase);
                }
                if phases.is_empty() {
                    return Err(de::Error::custom("expect: at least one phase"));
                }
                Ok(Expectation(phases))
            }
        }
        d.deserialize_any(V)
    }
}

impl Expectation {
    /// The phase in force at `t`, its start and the previous phase's outcome.
    pub fn at(&self, t: Duration) -> (Option<Expected>, Duration, Option<Expected>) {
        let mut current = None;
        let mut since = Duration::ZERO;
        let mut previous = None;
        for phase in &self.0 {
            if phase.from.0 <= t {
                previous = current;
                current = Some(phase.outcome);
                since = phase.from.0;
            }
        }
        (current, since, previous)
    }

    /// The start of the first phase after `t`.
    pub fn next_change_after(&self, t: Duration) -> Option<Duration> {
        self.0.iter().map(|p| p.from.0).find(|&from| from > t)
    }
}

/// Whether a request opens its own connection or reuses one per source pod.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionMode {
    #[default]
    New,
    Persistent,
}

/// Is the source's outbound traffic captured? `auto` follows the enrollment labels, as the
/// CNI would.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    #[default]
    Auto,
    Captured,
    Uncaptured,
}

/// One stream of requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Traffic {
    pub name: String,
    pub from: Source,
    pub to: Destination,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub capture: Capture,
    #[serde(default)]
    pub connection: ConnectionMode,
    /// When the first request is made.
    #[serde(default = "one_second")]
    pub start: Dur,
    /// Time between requests (the rate is one per `every`).
    #[serde(default = "one_second")]
    pub every: Dur,
    /// How long requests keep being made.
    pub duration: Dur,
    /// How long a request waits for its reply.
    #[serde(default = "two_seconds")]
    pub timeout: Dur,
    /// Whether this traffic must cross between nodes encrypted. Default: when the source is
    /// captured.
    #[serde(default)]
    pub encrypted: Option<bool>,
    pub expect: Expectation,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}
fn one_second() -> Dur {
    Dur(Duration::from_secs(1))
}
fn two_seconds() -> Dur {
    Dur(Duration::from_secs(2))
}
fn yes() -> bool {
    true
}
fn five_seconds() -> Dur {
    Dur(Duration::from_secs(5))
}

/// The invariants checked while the scenario runs; all on by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Invariants {
    /// No recognisable application payload between nodes for traffic that must be encrypted.
    #[serde(default = "yes")]
    pub plaintext: bool,
    /// No denied request reaches an application; none that must pass is denied.
    #[serde(default = "yes")]
    pub policy: bool,
    /// After a change, every ztunnel holds what istiod publishes, and requests see the new
    /// expected outcome, within this bound.
    #[serde(default = "five_seconds")]
    pub convergence: Dur,
    /// Nothing panics.
    #[serde(default = "yes")]
    pub panic: bool,
    /// At the end, no connection is still open in an application or a ztunnel.
    #[serde(default = "yes")]
    pub leaks: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            plaintext: true,
            policy: true,
            convergence: five_seconds(),
            panic: true,
            leaks: true,
        }
    }
}

/// The invariants by name, as violations report them.
pub const INVARIANTS: [&str; 5] = ["plaintext", "policy", "convergence", "panic", "leaks"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    about: String,
    #[serde(default = "default_seed")]
    seed: u64,
    nodes: Nodes,
    #[serde(default)]
    settings: Settings,
    cluster: String,
    #[serde(default)]
    timeline: Vec<Step>,
    #[serde(default)]
    traffic: Vec<Traffic>,
    #[serde(default)]
    invariants: Invariants,
    #[serde(default)]
    must_fail: Option<String>,
}

fn default_seed() -> u64 {
    1
}

/// A loaded, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// Where it was read from (for errors and replay commands).
    pub file: String,
    pub about: String,
    pub seed: u64,
    pub nodes: Vec<String>,
    pub settings: Settings,
    /// The cluster's manifests and the line of the file they start on.
    pub cluster: String,
    pub cluster_line: usize,
    /// In time order (stable for equal times).
    pub timeline: Vec<Step>,
    pub traffic: Vec<Traffic>,
    pub invariants: Invariants,
    /// For scenarios that must be caught: the invariant that must catch them.
    pub must_fail: Option<String>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Scenario::parse(&text, &file, &stem)
    }

    /// Parses scenario text; `file` names it in errors, `default_name` is used without `name:`.
    pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
        let err = |line: Option<usize>, message: String| ScenarioError {
            file: file.to_string(),
            line,
            message,
        };
        let raw: RawScenario = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let mut message = e.to_string();
            if let Some(l) = e.location() {
                let suffix = format!(" at line {} column {}", l.line(), l.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_string();
                }
            }
            err(line, message)
        })?;
        let mut blocks = BlockFinder::new(text);
        let cluster_line = blocks.find(&raw.cluster).unwrap_or(1);
        let mut timeline = raw.timeline;
        for step in &mut timeline {
            if let Action::Apply { manifests, line } = &mut step.action {
                *line = blocks.find(manifests).unwrap_or(1);
            }
        }
        timeline.sort_by_key(|s| s.at);
        let scenario = Scenario {
            name: raw.name.unwrap_or_else(|| default_name.to_string()),
            file: file.to_string(),
            about: raw.about,
            seed: raw.seed,
            nodes: raw.nodes.0,
            settings: raw.settings,
            cluster: raw.cluster,
            cluster_line,
            timeline,
            traffic: raw.traffic,
            invariants: raw.invariants,
            must_fail: raw.must_fail,
        };
        scenario
            .check(text)
            .map_err(|(needle, message)| err(needle.and_then(|n| line_of(text, &n)), message))?;
        Ok(scenario)
    }

    /// Checks what serde cannot: references between parts, setting bounds. On error, returns
    /// a word to look for (to name the line) and the message.
    fn check(&self, _text: &str) -> Result<(), (Option<String>, String)> {
        let host = |h: &str| -> Result<(), (Option<String>, String)> {
            if h == ISTIOD || self.nodes.iter().any(|n| n == h) {
                Ok(())
            } else {
                Err((
                    Some(h.to_string()),
                    format!("{h:?} is neither a node of this scenario nor istiod"),
                ))
            }
        };
        for step in &self.timeline {
            match &step.action {
                Action::Partition([a, b]) | Action::Repair([a, b]) => {
                    host(a)?;
                    host(b)?;
                    if a == b {
                        return Err((Some(a.clone()), format!("a link needs two ends: {a}")));
                    }
                }
                Action::Latency(LinkLatency {
                    between: [a, b], ..
                })
                | Action::Loss(LinkLoss {
                    between: [a, b], ..
                }) => {
                    host(a)?;
                    host(b)?;
                }
                Action::Crash(h) | Action::Restart(h) => host(h)?,
                Action::Delete(r) if control::sources::Kind::from_name(&r.kind).is_none() => {
                    return Err((
                        Some(format!("kind: {}", r.kind)),
                        format!("delete: unknown kind {:?}", r.kind),
                    ));
                }
                _ => {}
            }
        }
        let s = &self.settings;
        if s.tick.0.is_zero() || s.min_latency.0 < s.tick.0 || s.max_latency.0 < s.min_latency.0 {
            return Err((
                Some("settings:".into()),
                "settings: need 0 < tick <= minLatency <= maxLatency (the wire tap must see every \
                 message for at least one tick)"
                    .into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.traffic {
            if !names.insert(t.name.as_str()) {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic {:?} defined twice", t.name),
                ));
            }
            if t.every.0.is_zero() {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic {:?}: every must be more than 0", t.name),
                ));
            }
            if t.name.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err((
                    Some(format!("name: {}", t.name)),
                    format!("traffic name {:?}: no spaces or ':'", t.name),
                ));
            }
        }
        if let Some(inv) = &self.must_fail
            && !INVARIANTS.contains(&inv.as_str())
        {
            return Err((
                Some("mustFail".into()),
                format!(
                    "mustFail: {inv:?} is not an invariant ({})",
                    INVARIANTS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The first line (1-based) containing `needle`.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Finds where block strings (`key: |`) start in the file, so errors inside the manifests
/// they carry can name lines of the scenario file. Identical blocks are matched in order.
struct BlockFinder<'a> {
    lines: Vec<&'a str>,
    used: Vec<usize>,
}

impl<'a> BlockFinder<'a> {
    fn new(text: &'a str) -> Self {
        BlockFinder {
            lines: text.lines().collect(),
            used: Vec::new(),
        }
    }

    /// The 1-based file line of the block's first line.
    fn find(&mut self, block: &str) -> Option<usize> {
        let wanted: Vec<&str> = block.lines().collect();
        let first = wanted.iter().position(|l| !l.trim().is_empty())?;
        let candidates: Vec<usize> = (0..self.lines.len())
            .filter(|&start| {
                wanted.iter().enumerate().skip(first).all(|(i, w)| {
                    self.lines
                        .get(start + i - first)
                        .is_some_and(|l| indented(l, w))
                })
            })
            .collect();
        let start = candidates
            .iter()
            .find(|c| !self.used.contains(c))
            .or(candidates.first())
            .copied()?;
        self.used.push(start);
        // Lines of the block are numbered from its first line, empty leading lines included.
        Some(start + 1 - first)
    }
}

/// Whether file line `l` is block line `w` indented.
fn indented(l: &str, w: &str) -> bool {
    let (l, w) = (l.trim_end(), w.trim_end());
    if w.is_empty() {
        return l.is_empty();
    }
    l.strip_suffix(w)
        .is_some_and(|indent| indent.chars().all(|c| c == ' '))
}

/// Every `*.yaml` file directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "about: x\nnodes: [a, b]\ncluster: |\n  apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n";

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, "t.yaml", "t")
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("25h"), Some(Duration::from_secs(90000)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3x"), None);
    }

    #[test]
    fn minimal_and_block_lines() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.nodes, ["a", "b"]);
        assert_eq!(s.cluster_line, 4);
        assert_eq!(s.name, "t");
        let s = parse("about: x\nnodes: 12\ncluster: \"\"\n").unwrap();
        assert_eq!(s.nodes.first().map(String::as_str), Some("node-01"));
        assert_eq!(s.nodes.len(), 12);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let e = parse(&format!("{MINIMAL}bogus: 1\n")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");

        let text = format!("{MINIMAL}timeline:\n- at: 5s\n  crash: a\n- at: 7q\n  restart: a\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("invalid duration \"7q\""), "{e}");

        let text = format!("{MINIMAL}timeline:\n- at: 5s\n  crash: zz\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("\"zz\" is neither"), "{e}");

        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{pod: shop/a}}\n  to: {{service: shop/b, port: 80}}\n  duration: 1s\n  expect: sucseed\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("unknown outcome \"sucseed\""), "{e}");

        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{pod: shop/a}}\n  to: {{service: shop/b}}\n  duration: 1s\n  expect: succeed\n"
        );
        let e = parse(&text).unwrap_err();
        // Checks made after a mapping is read name the line of the item that holds it.
        assert_eq!(e.line, Some(9), "{e}");
        assert!(
            e.message
                .contains("traffic[0]: the destination needs a port"),
            "{e}"
        );
    }

    #[test]
    fn expectations() {
        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{deployment: shop/a}}\n  to: {{pod: shop/b-0, port: 80}}\n  duration: 1s\n  expect:\n  - {{from: 0s, outcome: succeed}}\n  - {{from: 5s, outcome: denied}}\n"
        );
        let s = parse(&text).unwrap();
        let e = &s.traffic[0].expect;
        assert_eq!(e.at(Duration::from_secs(1)).0, Some(Expected::Succeed));
        assert_eq!(
            e.at(Duration::from_secs(6)),
            (
                Some(Expected::Denied),
                Duration::from_secs(5),
                Some(Expected::Succeed)
            )
        );
        assert_eq!(
            e.next_change_after(Duration::from_secs(1)),
            Some(Duration::from_secs(5))
        );
    }
}
