//! The simulated world of one scenario run: istiod and every node as turmoil hosts running the
//! production code (`control::istiod::run`, `dataplane::ztunnel::run`) through the simulated
//! seams, the pods' applications on their nodes, and the driver loop that applies the
//! timeline, starts the traffic, taps the wire and checks the invariants after every step.
//!
//! Modelling (see `sim/README.md`): turmoil gives each host one address. The control store
//! plays the Kubernetes scheduler (pods on nodes, IPs from each node's `podCIDR`, service
//! VIPs); every pod IP is routed to its node's host by the shared [`SimNetwork`]. Capture is
//! the kernel's job and modelled here: an enrolled pod's outbound connection is delivered to
//! its node's ztunnel (15001) with the original destination, plaintext arriving for an
//! enrolled pod goes to the destination node's 15006, and anything else is delivered directly.
//! ztunnels learn everything from istiod over xDS and get certificates from istiod's CA.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use control::ca::{CertificateAuthority, TokenSigner};
use control::istiod::{self, ISTIOD_HOSTNAME, Istiod, IstiodConfig, SharedStore};
use control::snapshot::{MeshConfig, Snapshot};
use control::sources::{Kind, Loaded};
use control::store::{PodOwner, Store, StoreConfig};
use dataplane::identity::LocalCa;
use dataplane::seams::{Clock, Entropy, ManualClock, Seams, SimClock, SimNetwork};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, AuthToken, CaClient, Config, ControlPlaneClient, Ports, Ztunnel};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::Notify;

use crate::apps::{self, AppKind, Conn, Job};
use crate::scenario::{
    Action, Capture, ConnectionMode, Expected, ISTIOD, Outcome, Scenario, ScenarioError, Target,
};
use crate::tasks::TaskLedger;
use crate::trace::{Event, Trace, fnv1a64};
use crate::wire::{WireReport, WireTap};

/// The simulation's wall-clock start, 2026-01-01T00:00:00Z. Fixed, so certificate validity and
/// everything derived from wall-clock time is the same in every run.
pub const EPOCH_UNIX_SECS: u64 = 1_767_225_600;

/// [`EPOCH_UNIX_SECS`] as a `SystemTime`.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS)
}

/// The secret istiod checks node tokens with (the simulator issues them).
const TOKEN_SECRET: &[u8] = b"sim-token-secret-for-node-tokens";
/// How often the driver compares every ztunnel's state with what istiod should publish.
const CONVERGENCE_CHECK: Duration = Duration::from_millis(10);
/// Events shown before a violation.
const CONTEXT_EVENTS: usize = 20;

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    /// `plaintext`, `policy`, `convergence`, `panic` or `leaks`.
    pub invariant: &'static str,
    pub at: Duration,
    /// What happened.
    pub event: String,
    /// The last events before it.
    pub before: Vec<Event>,
}

/// One request and what its client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub traffic: usize,
    pub request: u64,
    pub conn: String,
    pub source_node: String,
    pub started: Duration,
    pub finished: Duration,
    pub outcome: Outcome,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub sim_time: Duration,
    pub events: Vec<Event>,
    pub wire: WireReport,
    pub requests: Vec<RequestRecord>,
    /// The first invariant that failed.
    pub violation: Option<Violation>,
    /// Why the run could not go on (a host error, a bad manifest, the time limit).
    pub failure: Option<String>,
    /// `sim.step()` calls.
    pub steps: u64,
    pub nodes: Vec<String>,
    /// Timeline steps as applied: (time, description, is a fault).
    pub timeline: Vec<(Duration, String, bool)>,
}

/// A pod as the world knows it: where it runs and what it listens on.
#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: IpAddr,
    pub enrolled: bool,
    pub deployment: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container port → named port and app.
    pub ports: BTreeMap<u16, (Option<String>, AppKind)>,
}

/// What a request's client reports back to the driver.
struct Finished {
    record: RequestRecord,
}

/// What an application reports: it received a request marker.
struct Received {
    at: Duration,
    node: String,
    pod: SocketAddr,
    peer: SocketAddr,
    traffic: usize,
    request: u64,
}

/// A node's inbox of requests to make, filled by the driver.
#[derive(Default)]
struct Inbox {
    jobs: RefCell<VecDeque<Inboxed>>,
    notify: Arc<Notify>,
}

enum Inboxed {
    Request(Job),
    /// The traffic is over: close its persistent connections.
    Close(usize),
}

/// State shared by the driver and every host closure (all on the driver's thread).
pub(crate) struct Shared {
    pub(crate) seed: u64,
    pub(crate) trace: Trace,
    pub(crate) network: SimNetwork,
    clock: ManualClock,
    root_pem: String,
    key_pem: String,
    settings: crate::scenario::Settings,
    store: SharedStore,
    tokens: BTreeMap<String, String>,
    app_ports: BTreeSet<u16>,
    pods: RefCell<BTreeMap<IpAddr, PodInfo>>,
    istiod: RefCell<Option<Rc<Istiod>>>,
    rotations: RefCell<VecDeque<(Duration, Duration)>>,
    ztunnels: RefCell<BTreeMap<String, Rc<Ztunnel>>>,
    inboxes: BTreeMap<String, Inbox>,
    finished: RefCell<Vec<Finished>>,
    received: RefCell<Vec<Received>>,
    app_connections: RefCell<BTreeMap<String, i64>>,
    pub(crate) tasks: Rc<TaskLedger>,
    panics: Rc<RefCell<Vec<String>>>,
}

impl Shared {
    /// The app for a connection to `ip:port` arriving on `node`, if a pod there listens.
    pub(crate) fn app_for(&self, node: &str, ip: IpAddr, port: u16) -> Option<AppKind> {
        let pods = self.pods.borrow();
        let pod = pods.get(&ip).filter(|p| p.node == node)?;
        pod.ports.get(&port).map(|(_, kind)| *kind)
    }

    pub(crate) fn app_connection_opened(&self, node: &str) {
        *self
            .app_connections
            .borrow_mut()
            .entry(node.to_string())
            .or_default() += 1;
    }

    pub(crate) fn app_connection_closed(&self, node: &str) {
        *self
            .app_connections
            .borrow_mut()
            .entry(node.to_string())
            .or_default() -= 1;
    }

    pub(crate) fn app_received(
        &self,
        node: &str,
        pod: SocketAddr,
        peer: SocketAddr,
        traffic: usize,
        request: u64,
    ) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.trace.record_conn(
            node,
            "app",
            &format!("t{traffic}#{request}"),
            format!("{pod} received request from {peer}"),
        );
        self.received.borrow_mut().push(Received {
            at,
            node: node.to_string(),
            pod,
            peer,
            traffic,
            request,
        });
    }
}

/// The cluster's Node objects for the scenario's nodes: `podCIDR` 10.244.<i>.0/24.
fn node_manifests(nodes: &[String]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: 10.{}.{}.0/24\n---\n",
                244 + (i + 1) / 256,
                (i + 1) % 256
            )
        })
        .collect()
}

/// Parses manifests that start at `line` of the scenario file; errors name that file's line.
fn parse_manifests(
    scenario: &Scenario,
    text: &str,
    line: usize,
) -> Result<Vec<Loaded>, ScenarioError> {
    control::sources::parse_str(text, &scenario.file).map_err(|e| ScenarioError {
        file: scenario.file.clone(),
        line: Some(line + e.line.unwrap_or(1) - 1),
        message: match &e.object {
            Some(o) => format!("{o}: {}", e.message),
            None => e.message.clone(),
        },
    })
}

fn apply_to(
    scenario: &Scenario,
    store: &mut Store,
    loaded: Vec<Loaded>,
    line: usize,
) -> Result<(), ScenarioError> {
    control::sources::apply_loaded(store, loaded).map_err(|e| {
        let (at, message) = match &e {
            control::sources::Error::Source(s) => (s.line, s.message.clone()),
            control::sources::Error::Rejected { origin, error } => {
                (Some(origin.line), error.to_string())
            }
        };
        ScenarioError {
            file: scenario.file.clone(),
            line: Some(line + at.unwrap_or(1) - 1),
            message,
        }
    })?;
    Ok(())
}

/// A pod's view, reduced to what the world needs.
fn pod_table(store: &Store) -> BTreeMap<IpAddr, PodInfo> {
    let mut table = BTreeMap::new();
    for pod in store.pods() {
        let (Some(node), Some(&ip)) = (pod.node, pod.ips.first()) else {
            continue;
        };
        if pod.terminated || pod.host_network() {
            continue;
        }
        let ns_mode = store
            .namespace(pod.namespace)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get("istio.io/dataplane-mode"))
            .cloned();
        let pod_mode = pod.labels.get("istio.io/dataplane-mode").cloned();
        let enrolled = match pod_mode.as_deref() {
            Some("none") => false,
            Some("ambient") => true,
            _ => ns_mode.as_deref() == Some("ambient"),
        };
        let mut ports = BTreeMap::new();
        for container in pod.spec.map(|s| s.containers.as_slice()).unwrap_or(&[]) {
            for p in container.ports.iter().flatten() {
                if let Ok(port) = u16::try_from(p.container_port) {
                    let name = p.name.clone();
                    let kind = AppKind::for_port_name(name.as_deref());
                    ports.insert(port, (name, kind));
                }
            }
        }
        table.insert(
            ip,
            PodInfo {
                namespace: pod.namespace.to_string(),
                name: pod.name.clone(),
                node: node.to_string(),
                ip,
                enrolled,
                deployment: match &pod.owner {
                    PodOwner::Deployment(d) => Some(d.clone()),
                    PodOwner::Pod => None,
                },
                labels: pod.labels.clone(),
                ports,
            },
        );
    }
    table
}

/// The scenario's manifests applied in order to scratch stores: every manifest is checked
/// before the run starts, and every port some pod ever declares is known.
struct Prepared {
    initial: Vec<Loaded>,
    /// Per timeline step (apply steps only).
    applies: BTreeMap<usize, Vec<Loaded>>,
    app_ports: BTreeSet<u16>,
}

fn prepare(scenario: &Scenario) -> Result<Prepared, ScenarioError> {
    let mut store = Store::new(StoreConfig::default());
    let nodes = parse_manifests(scenario, &node_manifests(&scenario.nodes), 1)?;
    apply_to(scenario, &mut store, nodes.clone(), 1)?;
    let mut initial = nodes;
    let cluster = parse_manifests(scenario, &scenario.cluster, scenario.cluster_line)?;
    apply_to(scenario, &mut store, cluster.clone(), scenario.cluster_line)?;
    initial.extend(cluster);
    let mut app_ports = BTreeSet::new();
    let mut seen_pods: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut services: BTreeSet<(String, String)> = BTreeSet::new();
    let mut deployments: BTreeSet<(String, String)> = BTreeSet::new();
    let mut note = |store: &Store, app_ports: &mut BTreeSet<u16>| {
        for pod in pod_table(store).values() {
            app_ports.extend(pod.ports.keys().copied());
            seen_pods.insert((pod.namespace.clone(), pod.name.clone()), ());
            if let Some(d) = &pod.deployment {
                deployments.insert((pod.namespace.clone(), d.clone()));
            }
        }
        for s in store.services() {
            services.insert((
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            ));
        }
    };
    note(&store, &mut app_ports);
    let mut applies = BTreeMap::new();
    for (index, step) in scenario.timeline.iter().enumerate() {
        match &step.action {
            Action::Apply { manifests, line } => {
                let loaded = parse_manifests(scenario, manifests, *line)?;
                apply_to(scenario, &mut store, loaded.clone(), *line)?;
                applies.insert(index, loaded);
            }
            Action::Delete(r) => {
                if let Some(kind) = Kind::from_name(&r.kind) {
                    store.delete(kind, &r.namespace, &r.name);
                }
            }
            _ => continue,
        }
        note(&store, &mut app_ports);
    }
    let text = std::fs::read_to_string(&scenario.file).unwrap_or_default();
    for t in &scenario.traffic {
        let check = |target: &Target| -> Result<(), ScenarioError> {
            let known = match target {
                Target::Pod(ns, n) => seen_pods.contains_key(&(ns.clone(), n.clone())),
                Target::Deployment(ns, n) => deployments.contains(&(ns.clone(), n.clone())),
                Target::Service(ns, n) => services.contains(&(ns.clone(), n.clone())),
            };
            if known {
                Ok(())
            } else {
                let name = match target {
                    Target::Pod(ns, n) | Target::Deployment(ns, n) | Target::Service(ns, n) => {
                        format!("{ns}/{n}")
                    }
                };
                Err(ScenarioError {
                    file: scenario.file.clone(),
                    line: crate::scenario::line_of(&text, &name),
                    message: format!(
                        "traffic {:?}: {} never exists in this scenario",
                        t.name,
                        target.describe()
                    ),
                })
            }
        };
        check(&t.from.0)?;
        check(&t.to.target)?;
    }
    Ok(Prepared {
        initial,
        applies,
        app_ports,
    })
}

/// Order-independent fingerprint of what a ztunnel holds (or istiod publishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Fingerprint {
    workloads: usize,
    services: usize,
    policies: usize,
    sum: u64,
}

fn fingerprint<'a>(
    workloads: impl Iterator<Item = &'a dataplane::state::Workload>,
    services: impl Iterator<Item = &'a dataplane::state::Service>,
    policies: impl Iterator<Item = &'a dataplane::policy::Authorization>,
) -> Fingerprint {
    let mut f = Fingerprint::default();
    for w in workloads {
        f.workloads += 1;
        let key = format!(
            "w {} {:?} {:?} {:?} {:?}",
            w.uid, w.workload_ips, w.protocol, w.authorization_policies, w.services
        );
        f.sum = f.sum.wrapping_add(fnv1a64(key.as_bytes()));
    }
    for s in services {
        f.services += 1;
        f.sum = f
            .sum
            .wrapping_add(fnv1a64(format!("s {}", s.key()).as_bytes()));
    }
    for p in policies {
        f.policies += 1;
        let key = format!("p {} {:?} {}", p.key(), p.action, p.rules.len());
        f.sum = f.sum.wrapping_add(fnv1a64(key.as_bytes()));
    }
    f
}

fn snapshot_fingerprint(s: &Snapshot) -> Fingerprint {
    fingerprint(
        s.workloads.values(),
        s.services.values(),
        s.policies.values(),
    )
}

fn state_fingerprint(s: &State) -> Fingerprint {
    fingerprint(
        s.workloads().map(|w| &**w),
        s.services().map(|w| &**w),
        s.policies().map(|w| &**w),
    )
}

thread_local! {
    /// Where panics on this thread are reported while a run is in progress.
    static PANICS: RefCell<Option<Rc<RefCell<Vec<String>>>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that reports panics on a simulating thread to its run, so a
/// panic inside a spawned task (which tokio would only turn into a `JoinError`) is seen.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let reported = PANICS
                .try_with(|p| {
                    p.try_borrow().ok().and_then(|p| p.clone()).map(|sink| {
                        let location = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        let message = info
                            .payload()
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| {
                                info.payload().downcast_ref::<&str>().map(|s| s.to_string())
                            })
                            .unwrap_or_default();
                        if let Ok(mut sink) = sink.try_borrow_mut() {
                            sink.push(format!("{message}{location}"));
                        }
                    })
                })
                .ok()
                .flatten()
                .is_some();
            if !reported {
                previous(info);
            }
        }));
    });
}

/// Runs `scenario` under `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> RunOutput {
    let trace = Trace::new();
    crate::logs::with_trace_logs(&trace, || run_traced(scenario, seed, trace.clone()))
}

struct Driver<'s> {
    scenario: &'s Scenario,
    shared: Rc<Shared>,
    sim: turmoil::Sim<'s>,
    hosts: BTreeMap<String, IpAddr>,
    tap: WireTap,
    prepared: Prepared,
    mesh: MeshConfig,
    /// Hosts that are down (crashed, not restarted).
    down: BTreeSet<String>,
    partitions: BTreeSet<(String, String)>,
    /// Next request number per traffic.
    next_request: Vec<u64>,
    closed: Vec<bool>,
    /// (traffic, request) → (started, source node).
    outstanding: BTreeMap<(usize, u64), (Duration, String)>,
    started: BTreeMap<(usize, u64), Duration>,
    requests: Vec<RequestRecord>,
    next_step: usize,
    /// The change configuration must converge after, and when it happened.
    pending: Option<(Duration, String)>,
    expected: Fingerprint,
    last_convergence_check: Duration,
    /// When the store changed (apply, delete steps).
    store_changes: Vec<Duration>,
    /// Per node: the state version last fingerprinted, and its fingerprint.
    fingerprints: BTreeMap<String, (u64, Fingerprint)>,
    reported_plaintext: BTreeSet<(usize, u64)>,
    timeline: Vec<(Duration, String, bool)>,
    violation: Option<Violation>,
    steps: u64,
}

fn run_traced(scenario: &Scenario, seed: u64, trace: Trace) -> RunOutput {
    install_panic_hook();
    let settings = scenario.settings.clone();
    let mut builder = turmoil::Builder::new();
    builder
        .epoch(epoch())
        .rng_seed(seed)
        .tick_duration(settings.tick.0)
        .simulation_duration(settings.max_duration.0 + Duration::from_secs(60))
        .min_message_latency(settings.min_latency.0)
        .max_message_latency(settings.max_latency.0);
    let sim = builder.build();
    let empty = |failure: String| RunOutput {
        sim_time: Duration::ZERO,
        events: trace.events(),
        wire: WireReport::default(),
        requests: Vec::new(),
        violation: None,
        failure: Some(failure),
        steps: 0,
        nodes: scenario.nodes.clone(),
        timeline: Vec::new(),
    };
    let prepared = match prepare(scenario) {
        Ok(p) => p,
        Err(e) => return empty(e.to_string()),
    };
    let ca = match LocalCa::generate("cluster.local", epoch()) {
        Ok(ca) => ca,
        Err(e) => return empty(format!("cannot create the cluster CA: {e}")),
    };
    let mut store = Store::new(StoreConfig::default());
    if let Err(e) = apply_to(scenario, &mut store, prepared.initial.clone(), 1) {
        return empty(e.to_string());
    }
    let signer = TokenSigner::new(TOKEN_SECRET);
    let tokens = scenario
        .nodes
        .iter()
        .map(|n| {
            let token = signer.issue(n, None, Duration::from_secs(400 * 24 * 3600), epoch());
            (n.clone(), token)
        })
        .collect();
    let panics = Rc::new(RefCell::new(Vec::new()));
    PANICS.with(|p| *p.borrow_mut() = Some(panics.clone()));
    let shared = Rc::new(Shared {
        seed,
        trace: trace.clone(),
        network: SimNetwork::new(),
        clock: ManualClock::new(Arc::new(SimClock)),
        root_pem: ca.root_pem(),
        key_pem: ca.key_pem().to_string(),
        settings,
        store: SharedStore::new(store),
        tokens,
        app_ports: prepared.app_ports.clone(),
        pods: RefCell::default(),
        istiod: RefCell::default(),
        rotations: RefCell::default(),
        ztunnels: RefCell::default(),
        inboxes: scenario
            .nodes
            .iter()
            .map(|n| (n.clone(), Inbox::default()))
            .collect(),
        finished: RefCell::default(),
        received: RefCell::default(),
        app_connections: RefCell::default(),
        tasks: Rc::default(),
        panics,
    });
    let mut driver = Driver {
        scenario,
        shared,
        sim,
        hosts: BTreeMap::new(),
        tap: WireTap::default(),
        prepared,
        mesh: MeshConfig::default(),
        down: BTreeSet::new(),
        partitions: BTreeSet::new(),
        next_request: vec![0; scenario.traffic.len()],
        closed: vec![false; scenario.traffic.len()],
        outstanding: BTreeMap::new(),
        started: BTreeMap::new(),
        requests: Vec::new(),
        next_step: 0,
        pending: Some((Duration::ZERO, "start".into())),
        expected: Fingerprint::default(),
        last_convergence_check: Duration::ZERO,
        fingerprints: BTreeMap::new(),
        store_changes: Vec::new(),
        reported_plaintext: BTreeSet::new(),
        timeline: Vec::new(),
        violation: None,
        steps: 0,
    };
    let failure = driver.run();
    PANICS.with(|p| *p.borrow_mut() = None);
    let Driver {
        sim,
        tap,
        requests,
        violation,
        steps,
        timeline,
        shared,
        ..
    } = driver;
    // Hosts run one after another within a tick, and turmoil's own bookkeeping (hash maps
    // keyed per process) can change that order between runs in one process, e.g. which peer
    // learns first that a crashed host's connections are gone. Events of different hosts in
    // the same millisecond are concurrent, so the trace orders them by host; each host's own
    // events keep their order.
    let mut events = trace.events();
    events.sort_by(|a, b| (a.at, &a.host).cmp(&(b.at, &b.host)));
    let output = RunOutput {
        sim_time: sim.elapsed(),
        events,
        wire: tap.report(),
        requests,
        violation,
        failure,
        steps,
        nodes: scenario.nodes.clone(),
        timeline,
    };
    // Tear the world down inside the simulation's context before the hosts are dropped.
    shared.istiod.borrow_mut().take();
    shared.ztunnels.borrow_mut().clear();
    drop(sim);
    output
}

impl Driver<'_> {
    fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    fn record(&self, component: &str, what: impl Into<String>) {
        self.shared
            .trace
            .record_at(self.now(), "sim", component, what, None);
    }

    fn violate(&mut self, invariant: &'static str, event: String) {
        if self.violation.is_some() {
            return;
        }
        let before = self.shared.trace.tail(CONTEXT_EVENTS);
        self.record("invariant", format!("VIOLATION {invariant}: {event}"));
        self.violation = Some(Violation {
            invariant,
            at: self.now(),
            event,
            before,
        });
    }

    /// Registers the hosts, then steps until the end or the first violation.
    fn run(&mut self) -> Option<String> {
        self.register_hosts();
        self.refresh_pods();
        let mut tap_hosts = Vec::new();
        for node in &self.scenario.nodes {
            tap_hosts.push(self.hosts[node]);
        }
        self.tap = WireTap::new(tap_hosts);
        let expected = self.expected_snapshot();
        self.expected = expected;

        let settle = self.scenario.settings.settle.0;
        let mut quiet_since: Option<Duration> = None;
        loop {
            self.apply_due_steps();
            if self.violation.is_some() {
                return None;
            }
            self.dispatch_due_requests();
            match self.sim.step() {
                Ok(_) => {}
                Err(e) => return Some(format!("simulation error: {e}")),
            }
            self.steps += 1;
            self.after_step();
            if self.violation.is_some() {
                return None;
            }
            let now = self.now();
            let done = self.next_step >= self.scenario.timeline.len()
                && self.traffic_done(now)
                && self.outstanding.is_empty();
            match (done, quiet_since) {
                (true, None) => quiet_since = Some(now),
                (true, Some(since)) if now >= since + settle => {
                    self.check_leaks();
                    return None;
                }
                (false, _) => quiet_since = None,
                _ => {}
            }
            if now >= self.scenario.settings.max_duration.0 {
                return Some(format!(
                    "did not finish within maxDuration {}s of simulated time",
                    self.scenario.settings.max_duration.0.as_secs()
                ));
            }
        }
    }

    fn register_hosts(&mut self) {
        let shared = self.shared.clone();
        self.sim.host(ISTIOD_HOSTNAME, move || {
            let shared = shared.clone();
            async move {
                istiod_main(shared)
                    .await
                    .map_err(|e| format!("istiod: {e:#}").into())
            }
        });
        self.hosts
            .insert(ISTIOD.to_string(), self.sim.lookup(ISTIOD_HOSTNAME));
        for (index, node) in self.scenario.nodes.iter().enumerate() {
            let shared = self.shared.clone();
            let name = node.clone();
            self.sim.host(node.as_str(), move || {
                let shared = shared.clone();
                let name = name.clone();
                async move {
                    node_main(name.clone(), index, shared)
                        .await
                        .map_err(|e| format!("{name}: {e:#}").into())
                }
            });
            self.hosts
                .insert(node.clone(), self.sim.lookup(node.as_str()));
        }
    }

    /// Re-reads the pods from the store: the app table and the routes.
    fn refresh_pods(&mut self) {
        let table = self.shared.store.read(pod_table);
        let old: Vec<IpAddr> = self.shared.pods.borrow().keys().copied().collect();
        for ip in old {
            if !table.contains_key(&ip) {
                self.shared.network.remove_route(ip);
            }
        }
        for pod in table.values() {
            self.shared.network.add_route(pod.ip, self.hosts[&pod.node]);
        }
        *self.shared.pods.borrow_mut() = table;
    }

    fn expected_snapshot(&self) -> Fingerprint {
        let mesh = self.mesh.clone();
        let snapshot = self
            .shared
            .store
            .read(|s| control::translate::snapshot(s, &mesh));
        snapshot_fingerprint(&snapshot)
    }

    fn apply_due_steps(&mut self) {
        while let Some(step) = self.scenario.timeline.get(self.next_step) {
            if step.at > self.now() {
                return;
            }
            let index = self.next_step;
            self.next_step += 1;
            let action = step.action.clone();
            self.timeline
                .push((self.now(), action.describe(), action.is_fault()));
            self.record("timeline", action.describe());
            self.apply(index, &action);
        }
    }

    fn ip(&self, name: &str) -> IpAddr {
        self.hosts[name]
    }

    fn apply(&mut self, index: usize, action: &Action) {
        match action {
            Action::Apply { .. } => {
                let loaded = self
                    .prepared
                    .applies
                    .get(&index)
                    .cloned()
                    .unwrap_or_default();
                let result = self
                    .shared
                    .store
                    .update(|s| control::sources::apply_loaded(s, loaded));
                if let Err(e) = result {
                    self.record("timeline", format!("apply refused: {e}"));
                }
                self.changed("apply");
            }
            Action::Delete(r) => {
                if let Some(kind) = Kind::from_name(&r.kind) {
                    self.shared
                        .store
                        .update(|s| s.delete(kind, &r.namespace, &r.name));
                }
                self.changed("delete");
            }
            Action::Partition([a, b]) => {
                self.sim.partition(self.ip(a), self.ip(b));
                self.partitions.insert(link(a, b));
            }
            Action::Repair([a, b]) => {
                self.sim.repair(self.ip(a), self.ip(b));
                self.partitions.remove(&link(a, b));
                self.changed("repair");
            }
            Action::Crash(h) => {
                if h == ISTIOD {
                    self.shared.istiod.borrow_mut().take();
                } else {
                    self.fingerprints.remove(h);
                    self.shared.ztunnels.borrow_mut().remove(h);
                    self.shared.app_connections.borrow_mut().remove(h);
                    // Requests its clients had in flight die with them.
                    self.outstanding.retain(|_, (_, node)| node != h);
                    self.shared.inboxes[h].jobs.borrow_mut().clear();
                }
                self.sim.crash(self.ip(h));
                self.down.insert(h.clone());
            }
            Action::Restart(h) => {
                if h == ISTIOD {
                    self.shared.istiod.borrow_mut().take();
                } else {
                    self.fingerprints.remove(h);
                    self.shared.ztunnels.borrow_mut().remove(h);
                    self.shared.app_connections.borrow_mut().remove(h);
                    self.outstanding.retain(|_, (_, node)| node != h);
                    self.shared.inboxes[h].jobs.borrow_mut().clear();
                }
                self.sim.bounce(self.ip(h));
                self.down.remove(h);
                self.changed("restart");
            }
            Action::Latency(l) => {
                let [a, b] = &l.between;
                self.sim
                    .set_link_latency(self.ip(a), self.ip(b), l.latency.0);
            }
            Action::Loss(l) => {
                let [a, b] = &l.between;
                let (a, b) = (self.ip(a), self.ip(b));
                self.sim.set_link_fail_rate(a, b, l.rate);
            }
            Action::AdvanceClock(by) => self.shared.clock.advance(*by),
            Action::RotateRoot(r) => self
                .shared
                .rotations
                .borrow_mut()
                .push_back((r.activate_after.0, r.overlap.0)),
        }
    }

    /// Configuration changed: every ztunnel must hold the new translation within the bound.
    fn changed(&mut self, what: &str) {
        if what == "apply" || what == "delete" {
            self.store_changes.push(self.now());
        }
        self.refresh_pods();
        self.expected = self.expected_snapshot();
        self.pending = Some((self.now(), what.to_string()));
    }

    fn traffic_done(&self, now: Duration) -> bool {
        self.scenario
            .traffic
            .iter()
            .all(|t| now >= t.start.0 + t.duration.0)
    }

    /// Starts the requests whose time has come, on their source pods' nodes.
    fn dispatch_due_requests(&mut self) {
        let now = self.now();
        for (index, traffic) in self.scenario.traffic.iter().enumerate() {
            loop {
                let n = self.next_request[index];
                let at = traffic.start.0 + traffic.every.0 * u32::try_from(n).unwrap_or(u32::MAX);
                if at > now || at >= traffic.start.0 + traffic.duration.0 {
                    break;
                }
                self.next_request[index] += 1;
                self.dispatch(index, n);
            }
            if !self.closed[index] && now >= traffic.start.0 + traffic.duration.0 {
                self.closed[index] = true;
                if traffic.connection == ConnectionMode::Persistent {
                    for inbox in self.shared.inboxes.values() {
                        inbox.jobs.borrow_mut().push_back(Inboxed::Close(index));
                        inbox.notify.notify_one();
                    }
                }
            }
        }
    }

    /// The pods a target stands for, in name order.
    fn pods_of(&self, target: &Target) -> Vec<PodInfo> {
        let pods = self.shared.pods.borrow();
        let mut list: Vec<PodInfo> = pods
            .values()
            .filter(|p| match target {
                Target::Pod(ns, n) => &p.namespace == ns && &p.name == n,
                Target::Deployment(ns, n) => {
                    &p.namespace == ns && p.deployment.as_deref() == Some(n.as_str())
                }
                Target::Service(..) => false,
            })
            .cloned()
            .collect();
        list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        list
    }

    fn dispatch(&mut self, index: usize, n: u64) {
        let traffic = &self.scenario.traffic[index];
        let conn = format!("{}#{n}", traffic.name);
        let now = self.now();
        let sources: Vec<PodInfo> = self
            .pods_of(&traffic.from.0)
            .into_iter()
            .filter(|p| !self.down.contains(&p.node))
            .collect();
        let Some(source) = pick(&sources, n) else {
            self.shared.trace.record_at(
                now,
                "sim",
                "client",
                "not sent: no running source pod",
                Some(conn),
            );
            return;
        };
        let captured = match traffic.capture {
            Capture::Auto => source.enrolled,
            Capture::Captured => true,
            Capture::Uncaptured => false,
        };
        // Resolve the destination as the client dials it.
        let port = traffic.to.port;
        let (destination, authority, service) = match &traffic.to.target {
            Target::Service(ns, name) => {
                let vip = self.shared.store.read(|s| {
                    s.services()
                        .find(|svc| {
                            svc.metadata.namespace.as_deref() == Some(ns)
                                && svc.metadata.name.as_deref() == Some(name)
                        })
                        .and_then(|svc| s.service_ips(svc).first().copied())
                });
                let Some(vip) = vip else {
                    self.record(
                        "client",
                        format!("{conn} not sent: service {ns}/{name} has no VIP"),
                    );
                    return;
                };
                (
                    SocketAddr::new(vip, port),
                    format!("{name}.{ns}.svc.cluster.local"),
                    Some((ns.clone(), name.clone())),
                )
            }
            target => {
                let pods = self.pods_of(target);
                let Some(pod) = pick(&pods, n) else {
                    self.shared.trace.record_at(
                        now,
                        "sim",
                        "client",
                        "destination has no pod",
                        Some(conn.clone()),
                    );
                    // Dialling an address nobody has: a refused connection, judged as such.
                    self.finish_now(index, n, &conn, &source.node, Outcome::Refused);
                    return;
                };
                (SocketAddr::new(pod.ip, port), pod.ip.to_string(), None)
            }
        };
        let via = if captured {
            SocketAddr::new(self.ip(&source.node), Ports::default().outbound)
        } else {
            // kube-proxy turns a VIP into an endpoint first; then the destination's inbound
            // capture (if it is enrolled) hands the plaintext to its node's ztunnel.
            let endpoint = match &service {
                Some((ns, name)) => self.service_endpoint(ns, name, port, n),
                None => self
                    .shared
                    .pods
                    .borrow()
                    .get(&destination.ip())
                    .cloned()
                    .map(|p| (p, port)),
            };
            match endpoint {
                Some((pod, target_port)) if pod.enrolled => {
                    let to = SocketAddr::new(pod.ip, target_port);
                    let via =
                        SocketAddr::new(self.ip(&pod.node), Ports::default().inbound_plaintext);
                    self.send(
                        index,
                        n,
                        conn,
                        &source,
                        to,
                        via,
                        authority,
                        traffic.timeout.0,
                    );
                    return;
                }
                Some((pod, target_port)) => {
                    let to = SocketAddr::new(pod.ip, target_port);
                    self.send(
                        index,
                        n,
                        conn,
                        &source,
                        to,
                        to,
                        authority,
                        traffic.timeout.0,
                    );
                    return;
                }
                None => destination,
            }
        };
        self.send(
            index,
            n,
            conn,
            &source,
            destination,
            via,
            authority,
            traffic.timeout.0,
        );
    }

    /// A pod behind `ns/name` and its target port for `port`, taken in turn.
    fn service_endpoint(&self, ns: &str, name: &str, port: u16, n: u64) -> Option<(PodInfo, u16)> {
        let (selector, target) = self.shared.store.read(|s| {
            let svc = s.services().find(|svc| {
                svc.metadata.namespace.as_deref() == Some(ns)
                    && svc.metadata.name.as_deref() == Some(name)
            })?;
            let spec = svc.spec.as_ref()?;
            let selector = spec.selector.clone().unwrap_or_default();
            let target = spec
                .ports
                .iter()
                .flatten()
                .find(|p| u16::try_from(p.port).ok() == Some(port))
                .map(|p| p.target_port.clone());
            Some((selector, target.flatten()))
        })?;
        let pods: Vec<PodInfo> = self
            .shared
            .pods
            .borrow()
            .values()
            .filter(|p| {
                p.namespace == ns
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        let pod = pick(&pods, n)?;
        let target_port = match target {
            Some(IntOrString::Int(p)) => u16::try_from(p).ok()?,
            Some(IntOrString::String(named)) => pod
                .ports
                .iter()
                .find(|(_, (name, _))| name.as_deref() == Some(named.as_str()))
                .map(|(p, _)| *p)?,
            None => port,
        };
        Some((pod, target_port))
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        index: usize,
        n: u64,
        conn: String,
        source: &PodInfo,
        destination: SocketAddr,
        via: SocketAddr,
        authority: String,
        timeout: Duration,
    ) {
        let traffic = &self.scenario.traffic[index];
        let now = self.now();
        self.shared.trace.record_at(
            now,
            &source.node,
            "client",
            format!(
                "{} {}/{} ({}) -> {destination} via {via}",
                match traffic.protocol {
                    crate::scenario::Protocol::Tcp => "tcp",
                    crate::scenario::Protocol::Http => "http",
                },
                source.namespace,
                source.name,
                source.ip
            ),
            Some(conn.clone()),
        );
        self.started.insert((index, n), now);
        self.outstanding
            .insert((index, n), (now, source.node.clone()));
        let job = Job {
            traffic: index,
            request: n,
            conn,
            source: source.ip,
            destination,
            via,
            protocol: traffic.protocol,
            timeout,
            persistent: traffic.connection == ConnectionMode::Persistent,
            authority,
        };
        let inbox = &self.shared.inboxes[&source.node];
        inbox.jobs.borrow_mut().push_back(Inboxed::Request(job));
        inbox.notify.notify_one();
    }

    fn finish_now(&mut self, index: usize, n: u64, conn: &str, node: &str, outcome: Outcome) {
        let now = self.now();
        self.started.insert((index, n), now);
        let record = RequestRecord {
            traffic: index,
            request: n,
            conn: conn.to_string(),
            source_node: node.to_string(),
            started: now,
            finished: now,
            outcome,
        };
        self.judge(record);
    }

    fn after_step(&mut self) {
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

    fn host_of(&self, ip: IpAddr) -> String {
        self.hosts
            .iter()
            .find(|(_, h)| **h == ip)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| ip.to_string())
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

    fn judge(&mut self, record: RequestRecord) {
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

    fn check_leaks(&mut self) {
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

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn pick<T: Clone>(list: &[T], n: u64) -> Option<T> {
    if list.is_empty() {
        return None;
    }
    list.get(usize::try_from(n % list.len() as u64).unwrap_or(0))
        .cloned()
}

/// istiod: the production `istiod::run`, following the store the driver changes.
async fn istiod_main(shared: Rc<Shared>) -> anyhow::Result<()> {
    let root = LocalCa::from_pem(&shared.root_pem, &shared.key_pem).context("cluster CA")?;
    let clock: Arc<dyn Clock> = Arc::new(shared.clock.clone());
    let seams = Seams {
        network: Arc::new(shared.network.clone()),
        clock: clock.clone(),
        entropy: Entropy::seeded(shared.seed),
    };
    let config = IstiodConfig {
        certificate_ttl: shared.settings.certificate_ttl.0,
        debounce: shared.settings.debounce.0,
        ..IstiodConfig::default()
    };
    let authority = CertificateAuthority::new(root, "cluster.local", config.certificate_ttl);
    let istiod = Rc::new(istiod::run(config, seams, authority, TOKEN_SECRET).await?);
    istiod.follow(shared.store.clone());
    *shared.istiod.borrow_mut() = Some(istiod.clone());
    shared
        .trace
        .record(ISTIOD_HOSTNAME, "sim", "istiod serving");
    drop(istiod);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rotation = shared.rotations.borrow_mut().pop_front();
        if let Some((activate_after, overlap)) = rotation {
            let next = LocalCa::generate("cluster.local", clock.now())?;
            if let Some(istiod) = shared.istiod.borrow().as_ref() {
                istiod.begin_root_rotation(next, activate_after, overlap);
            }
            shared
                .trace
                .record(ISTIOD_HOSTNAME, "sim", "root rotation begun");
        }
    }
}

/// A node: its pods' applications, its ztunnel fed by istiod, and its pods' clients.
async fn node_main(node: String, index: usize, shared: Rc<Shared>) -> anyhow::Result<()> {
    shared.tasks.node_started(&node);
    for &port in &shared.app_ports {
        apps::listen(shared.clone(), node.clone(), port)
            .await
            .with_context(|| format!("app port {port}"))?;
    }
    let address = format!("https://{ISTIOD_HOSTNAME}:15012");
    let config = Config {
        node_name: node.clone(),
        xds_address: Some(address.clone()),
        ca_address: Some(address.clone()),
        xds_root_ca: shared.root_pem.clone(),
        ca_root_ca: shared.root_pem.clone(),
        auth_token: Some(AuthToken::Literal(
            shared.tokens.get(&node).cloned().unwrap_or_default(),
        )),
        pod_name: format!("ztunnel-{node}"),
        pod_namespace: "istio-system".into(),
        certificate_ttl: shared.settings.certificate_ttl.0,
        seed: shared.seed ^ (index as u64 + 1),
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(shared.clock.clone());
    let seams = Seams {
        network: Arc::new(shared.network.clone()),
        clock: clock.clone(),
        entropy: Entropy::seeded(shared.seed ^ (index as u64 + 1)),
    };
    let client = ControlPlaneClient::new(
        &address,
        &shared.root_pem,
        config.auth_token.clone(),
        &config.cluster_id,
        seams.network.clone(),
        clock,
    )?;
    let ca = Arc::new(CaClient::new(client, config.certificate_ttl));
    let ztunnel = Rc::new(ztunnel::run(config, seams, StateHandle::default(), ca).await?);
    shared
        .ztunnels
        .borrow_mut()
        .insert(node.clone(), ztunnel.clone());
    let ledger = shared.tasks.clone();
    let sampled = node.clone();
    tokio::task::spawn_local(async move { ledger.sample(sampled, || ztunnel.is_ready()).await });
    clients(node, shared).await;
    Ok(())
}

/// The node's pods' clients: takes requests from the node's inbox and makes them.
async fn clients(node: String, shared: Rc<Shared>) {
    let notify = shared.inboxes[&node].notify.clone();
    // Persistent connections by (traffic, source pod): a worker each.
    let mut workers: BTreeMap<(usize, IpAddr), tokio::sync::mpsc::UnboundedSender<Option<Job>>> =
        BTreeMap::new();
    loop {
        let next = shared.inboxes[&node].jobs.borrow_mut().pop_front();
        let Some(item) = next else {
            notify.notified().await;
            continue;
        };
        match item {
            Inboxed::Request(job) if job.persistent => {
                let key = (job.traffic, job.source);
                let sender = workers.entry(key).or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let task = shared.tasks.pod_task(&node);
                    let worker = persistent_worker(shared.clone(), node.clone(), rx);
                    tokio::task::spawn_local(async move {
                        worker.await;
                        drop(task);
                    });
                    tx
                });
                let _ = sender.send(Some(job));
            }
            Inboxed::Request(job) => {
                let task = shared.tasks.pod_task(&node);
                let request = one_request(shared.clone(), node.clone(), job);
                tokio::task::spawn_local(async move {
                    request.await;
                    drop(task);
                });
            }
            Inboxed::Close(traffic) => {
                let keys: Vec<_> = workers.keys().filter(|k| k.0 == traffic).copied().collect();
                for key in keys {
                    if let Some(tx) = workers.remove(&key) {
                        let _ = tx.send(None);
                    }
                }
            }
        }
    }
}

fn report(shared: &Shared, node: &str, job: &Job, started: Duration, outcome: Outcome) {
    let finished = turmoil::sim_elapsed().unwrap_or_default();
    shared.finished.borrow_mut().push(Finished {
        record: RequestRecord {
            traffic: job.traffic,
            request: job.request,
            conn: job.conn.clone(),
            source_node: node.to_string(),
            started,
            finished,
            outcome,
        },
    });
}

/// A request on its own connection, closed afterwards.
async fn one_request(shared: Rc<Shared>, node: String, job: Job) {
    let started = turmoil::sim_elapsed().unwrap_or_default();
    let attempt = async {
        let mut conn = apps::connect(&shared.network, &job).await.ok()?;
        let (outcome, _) = apps::exchange(&mut conn, &job).await;
        close(&mut conn).await;
        Some(outcome)
    };
    let outcome = match tokio::time::timeout(job.timeout, attempt).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => Outcome::Refused,
        Err(_) => Outcome::Timeout,
    };
    report(&shared, &node, &job, started, outcome);
}

/// Half-closes and waits (briefly) for the peer's close, so connections end cleanly.
async fn close(conn: &mut Conn) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = conn.shutdown().await;
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Requests from one pod of one persistent traffic, on one connection while it lasts.
async fn persistent_worker(
    shared: Rc<Shared>,
    node: String,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Option<Job>>,
) {
    let mut conn: Option<Conn> = None;
    while let Some(Some(job)) = jobs.recv().await {
        let started = turmoil::sim_elapsed().unwrap_or_default();
        let attempt = async {
            if conn.is_none() {
                conn = apps::connect(&shared.network, &job).await.ok();
            }
            let c = conn.as_mut()?;
            let (outcome, reusable) = apps::exchange(c, &job).await;
            if !reusable {
                conn = None;
            }
            Some(outcome)
        };
        let outcome = match tokio::time::timeout(job.timeout, attempt).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Outcome::Refused,
            Err(_) => {
                conn = None;
                Outcome::Timeout
            }
        };
        if outcome != Outcome::Succeed
            && let Some(c) = conn.as_mut()
        {
            close(c).await;
            conn = None;
        }
        report(&shared, &node, &job, started, outcome);
    }
    if let Some(mut c) = conn {
        close(&mut c).await;
    }
}
