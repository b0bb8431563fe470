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
//!
//! The parts: `cluster` turns the scenario's manifests into stores and the pod table,
//! `hosts` runs istiod and the nodes, `clients` makes the requests on a node, and the
//! driver here steps the world, with `timeline` applying its steps, `dispatch` starting
//! the traffic and `invariants` checking every step.

mod clients;
mod cluster;
mod dispatch;
mod fingerprint;
mod hosts;
mod invariants;
mod output;
mod panics;
mod shared;
mod timeline;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control::ca::TokenSigner;
use control::istiod::SharedStore;
use control::snapshot::MeshConfig;
use control::store::{Store, StoreConfig};
use dataplane::identity::LocalCa;
use dataplane::seams::{ManualClock, SimClock, SimNetwork};

use crate::scenario::Scenario;
use crate::trace::Trace;
use crate::wire::{WireReport, WireTap};

use cluster::{Prepared, apply_to, prepare};
pub use cluster::{node_manifests, pod_table};
use fingerprint::Fingerprint;
pub use invariants::{share_violation, share_violation_within};
pub use output::{Delivery, RequestRecord, RunOutput, Violation};
use panics::{PANICS, install_panic_hook};
use shared::Inbox;
pub use shared::PodInfo;
pub(crate) use shared::Shared;

/// The simulation's wall-clock start, 2026-01-01T00:00:00Z. Fixed, so certificate validity and
/// everything derived from wall-clock time is the same in every run.
pub const EPOCH_UNIX_SECS: u64 = 1_767_225_600;

/// [`EPOCH_UNIX_SECS`] as a `SystemTime`.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS)
}

/// The secret istiod checks node tokens with (the simulator issues them).
const TOKEN_SECRET: &[u8] = b"sim-token-secret-for-node-tokens";

/// Events shown before a violation.
const CONTEXT_EVENTS: usize = 20;

/// Applies the scenario's manifests (the cluster, then each timeline `apply`) to a scratch
/// store, as a run does before it starts, without running anything: the error a run would
/// fail with at once (a manifest the API server or istiod's validation refuses), or `Ok`.
/// What conformance checks a validation case with.
pub fn check_manifests(scenario: &Scenario) -> Result<(), crate::ScenarioError> {
    prepare(scenario).map(|_| ())
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
    /// Waypoint hosts whose pod is gone (their host is down until the pod comes back).
    retired_waypoints: BTreeSet<String>,
    partitions: BTreeSet<(String, String)>,
    /// Next request number per traffic.
    next_request: Vec<u64>,
    closed: Vec<bool>,
    /// (traffic, request) → (started, source node).
    outstanding: BTreeMap<(usize, u64), (Duration, String)>,
    started: BTreeMap<(usize, u64), Duration>,
    requests: Vec<RequestRecord>,
    deliveries: Vec<Delivery>,
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
        deliveries: Vec::new(),
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
        waypoints: RefCell::default(),
        inboxes: scenario
            .nodes
            .iter()
            .map(|n| (n.clone(), Inbox::default()))
            .collect(),
        finished: RefCell::default(),
        received: RefCell::default(),
        app_connections: RefCell::default(),
        tasks: Rc::default(),
        flaky: RefCell::default(),
        panics,
    });
    let mut driver = Driver {
        scenario,
        shared,
        sim,
        hosts: BTreeMap::new(),
        tap: WireTap::default(),
        prepared,
        mesh: scenario.settings.mesh().unwrap_or_default(),
        down: BTreeSet::new(),
        retired_waypoints: BTreeSet::new(),
        partitions: BTreeSet::new(),
        next_request: vec![0; scenario.traffic.len()],
        closed: vec![false; scenario.traffic.len()],
        outstanding: BTreeMap::new(),
        started: BTreeMap::new(),
        requests: Vec::new(),
        deliveries: Vec::new(),
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
        deliveries,
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
        deliveries,
        violation,
        failure,
        steps,
        nodes: scenario.nodes.clone(),
        timeline,
    };
    // Tear the world down inside the simulation's context before the hosts are dropped.
    shared.istiod.borrow_mut().take();
    shared.ztunnels.borrow_mut().clear();
    shared.waypoints.borrow_mut().clear();
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
                    self.check_splits();
                    if self.violation.is_some() {
                        return None;
                    }
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

    fn ip(&self, name: &str) -> IpAddr {
        self.hosts[name]
    }

    fn host_of(&self, ip: IpAddr) -> String {
        self.hosts
            .iter()
            .find(|(_, h)| **h == ip)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| ip.to_string())
    }
}
