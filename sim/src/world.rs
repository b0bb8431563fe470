//! The simulated world: two nodes on turmoil, each running the unchanged production ztunnel,
//! the pods' applications, and the driver loop that steps it, taps the wire and records the
//! trace.
//!
//! Topology (the same as the dataplane's loopback test, on simulated addresses):
//!
//! | what | where | address |
//! |---|---|---|
//! | `shop/web` (mesh, HBONE) | node-a | 10.0.1.2 |
//! | a pod outside the mesh | node-a | 10.0.1.3 |
//! | `shop/echo` (mesh, HBONE), echo app on 8080 | node-b | 10.0.2.2 |
//! | service `echo.shop.svc.cluster.local` | VIP | 10.96.0.10:80 → 8080 |
//!
//! turmoil gives each node one address; pod IPs are routed to their node through the shared
//! [`SimNetwork`], and capture is modelled with [`SimNetwork::connect_redirected`], which hands
//! the node's ztunnel the original destination just as `SO_ORIGINAL_DST` does on a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::policy::Authorization;
use dataplane::seams::{Clock, Entropy, Network, Seams, SimClock, SimNetwork};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, Config, LocalCaProvider, Ports, Ztunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::trace::{Event, Trace};
use crate::wire::{WireReport, WireTap};

/// The simulation's wall-clock start, 2026-01-01T00:00:00Z. Fixed, so certificate validity and
/// everything derived from wall-clock time is the same in every run.
pub const EPOCH_UNIX_SECS: u64 = 1_767_225_600;

/// [`EPOCH_UNIX_SECS`] as a `SystemTime`.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX_SECS)
}

/// The node that runs web (and a pod outside the mesh): where traffic originates.
pub const NODE_A: &str = "node-a";
/// The node that runs echo: where traffic is authorized and delivered.
pub const NODE_B: &str = "node-b";
/// The nodes, in the order they are registered with turmoil (which fixes their addresses).
pub const NODES: [&str; 2] = [NODE_A, NODE_B];

/// `shop/web`, in the mesh, on node-a.
pub const WEB_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2));
/// A pod on node-a that is not in the mesh: its traffic is not captured.
pub const OUTSIDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 3));
/// `shop/echo`, in the mesh, on node-b.
pub const ECHO_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
/// The VIP of `echo.shop.svc.cluster.local`.
pub const ECHO_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
/// The port the echo app listens on.
pub const ECHO_PORT: u16 = 8080;
/// The echo service's port (mapped to [`ECHO_PORT`]).
pub const ECHO_SERVICE_PORT: u16 = 80;

/// Pod IP → node, the routes the simulated network is given.
const POD_ROUTES: [(IpAddr, &str); 3] =
    [(WEB_IP, NODE_A), (OUTSIDER_IP, NODE_A), (ECHO_IP, NODE_B)];

/// How long traffic may take before the run is declared stuck.
const MAX_SIM_TIME: Duration = Duration::from_secs(30);
/// How long the world keeps running after the traffic is done, so closes propagate and the
/// proxies write their access logs into the trace.
const SETTLE: Duration = Duration::from_millis(200);
/// Link latency bounds: the seed picks each message's latency in between. The minimum must be
/// at least one tick, or the wire tap could miss messages delivered in the step they were sent.
const MIN_LATENCY: Duration = Duration::from_millis(1);
const MAX_LATENCY: Duration = Duration::from_millis(20);

/// The local config (upstream's YAML shape) every ztunnel starts from. `echo_policies` go into
/// echo's `authorizationPolicies`; `policies` is a YAML list of policies (may be empty).
pub fn local_config_yaml(echo_policies: &[&str], policies: &str) -> String {
    let refs = echo_policies
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let policies = if policies.trim().is_empty() {
        String::new()
    } else {
        format!("policies:\n{policies}")
    };
    format!(
        r#"workloads:
- uid: Kubernetes//Pod/shop/web-0
  name: web-0
  namespace: shop
  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["{WEB_IP}"]
  protocol: HBONE
  node: {NODE_A}
  workloadName: web
  canonicalName: web
- uid: Kubernetes//Pod/shop/echo-0
  name: echo-0
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["{ECHO_IP}"]
  protocol: HBONE
  node: {NODE_B}
  workloadName: echo
  canonicalName: echo
  authorizationPolicies: [{refs}]
  services:
    "shop/echo.shop.svc.cluster.local": {{{ECHO_SERVICE_PORT}: {ECHO_PORT}}}
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/{ECHO_VIP}"]
  ports: {{{ECHO_SERVICE_PORT}: {ECHO_PORT}}}
{policies}"#
    )
}

/// What a task running inside the simulation can reach: the network, the trace, the nodes'
/// addresses and what the echo app received. Cheap to clone; every clone shares the same world.
#[derive(Clone)]
pub struct Ctx {
    /// The one simulated network of this run (routes and capture).
    pub network: SimNetwork,
    trace: Trace,
    /// The host this context records events as.
    host: String,
    /// Filled in once the nodes are registered, before any host runs.
    nodes: Arc<OnceLock<BTreeMap<&'static str, IpAddr>>>,
    ready: Arc<Mutex<BTreeSet<String>>>,
    echo_received: Arc<Mutex<Vec<u8>>>,
}

impl Ctx {
    /// Records an event on this context's host at the current simulated time.
    pub fn record(&self, what: impl Into<String>) {
        self.trace.record(&self.host, what);
    }

    /// The turmoil address of `node`.
    pub fn node_ip(&self, node: &str) -> anyhow::Result<IpAddr> {
        self.nodes
            .get()
            .and_then(|nodes| nodes.get(node))
            .copied()
            .with_context(|| format!("no node named {node}"))
    }

    /// Where `node`'s capture sends its pods' outbound connections: the ztunnel's 15001.
    pub fn outbound_capture(&self, node: &str) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(
            self.node_ip(node)?,
            Ports::default().outbound,
        ))
    }

    /// Where `node`'s capture sends plaintext arriving for its pods: the ztunnel's 15006.
    pub fn inbound_plaintext_capture(&self, node: &str) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(
            self.node_ip(node)?,
            Ports::default().inbound_plaintext,
        ))
    }

    /// Whether the echo app has received `needle` on any connection so far.
    pub fn echo_received(&self, needle: &[u8]) -> bool {
        let received = self
            .echo_received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !needle.is_empty() && received.windows(needle.len()).any(|w| w == needle)
    }

    fn for_host(&self, host: &str) -> Ctx {
        Ctx {
            host: host.to_string(),
            ..self.clone()
        }
    }

    fn mark_ready(&self) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.host.clone());
    }

    /// Waits (in simulated time) until every node's ztunnel is serving.
    async fn wait_ready(&self) {
        loop {
            let ready = self
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if ready == NODES.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A boxed, single-threaded future: what a task body returns.
pub type LocalFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

/// Application traffic: a body run on a node once every ztunnel is ready. The run ends (after
/// a short settle time) when every task has finished; an `Err` fails the scenario with its
/// message.
pub struct Task {
    /// The node whose pods originate the traffic.
    pub node: &'static str,
    /// Names the task in the trace and in failure reasons.
    pub name: &'static str,
    /// A `Fn`, not a `FnOnce`, because turmoil may start a host again.
    pub body: Box<dyn Fn(Ctx) -> LocalFuture>,
}

/// A change made to one node's ztunnel at a point in simulated time.
pub enum Action {
    /// Adds (or replaces) an authorization policy in the node's state, as an xDS push would.
    InsertPolicy(Authorization),
}

/// One timeline entry: at simulated time `at`, `action` is applied inside `node`'s host, to
/// the ztunnel running there.
pub struct Step {
    pub at: Duration,
    pub node: &'static str,
    pub action: Action,
}

/// Everything one run needs besides the seed.
pub struct Plan {
    /// The local config every node's ztunnel starts with (see [`local_config_yaml`]).
    pub local_config: String,
    /// The traffic; the run lasts until all of it is done.
    pub tasks: Vec<Task>,
    /// Changes made while the traffic runs.
    pub timeline: Vec<Step>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Simulated time when the run stopped.
    pub sim_time: Duration,
    /// The trace, in order.
    pub events: Vec<Event>,
    /// What crossed the wire between node-a and node-b.
    pub wire: WireReport,
    /// Every byte the echo app received, in arrival order.
    pub echo_received: Vec<u8>,
    /// Why the run itself failed (a task error, a host error, a timeout), if it did.
    pub failure: Option<String>,
}

impl RunOutput {
    /// Whether the echo app received `needle`.
    pub fn echo_received(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .echo_received
                .windows(needle.len())
                .any(|w| w == needle)
    }
}

/// The parts of a run shared by the host closures (which turmoil may call again on restart).
/// All hosts run on the driver's thread, hence `Rc`.
struct Shared {
    seed: u64,
    ctx: Ctx,
    ca_root_pem: String,
    ca_key_pem: String,
    plan: Plan,
    /// Task name → result, filled in as tasks finish.
    outcomes: Mutex<BTreeMap<&'static str, Result<(), String>>>,
}

/// Builds the world for `plan`, runs it under `seed` until its traffic is done (plus a short
/// settle time), and returns the trace and what the wire tap saw.
pub fn run(plan: Plan, seed: u64) -> RunOutput {
    let trace = Trace::new();
    crate::logs::with_trace_logs(&trace, || run_traced(plan, seed, trace.clone()))
}

fn run_traced(plan: Plan, seed: u64, trace: Trace) -> RunOutput {
    let mut sim = turmoil::Builder::new()
        .epoch(epoch())
        .rng_seed(seed)
        .simulation_duration(MAX_SIM_TIME + SETTLE + Duration::from_secs(1))
        .min_message_latency(MIN_LATENCY)
        .max_message_latency(MAX_LATENCY)
        .build();
    let finish = |sim: &turmoil::Sim<'_>, wire: WireReport, echo: Vec<u8>, failure| RunOutput {
        sim_time: sim.elapsed(),
        events: trace.events(),
        wire,
        echo_received: echo,
        failure,
    };

    // One CA for the whole cluster, generated at the epoch outside every host; each host
    // rebuilds it from PEM, since a host closure may run again.
    let ca = match LocalCa::generate(dataplane::identity::DEFAULT_TRUST_DOMAIN, epoch()) {
        Ok(ca) => ca,
        Err(err) => {
            let failure = Some(format!("cannot create the cluster CA: {err}"));
            return finish(&sim, WireReport::default(), Vec::new(), failure);
        }
    };
    let task_count = plan.tasks.len();
    let network = SimNetwork::new();
    let shared = Rc::new(Shared {
        seed,
        ctx: Ctx {
            network: network.clone(),
            trace: trace.clone(),
            host: "sim".to_string(),
            nodes: Arc::default(),
            ready: Arc::default(),
            echo_received: Arc::default(),
        },
        ca_root_pem: ca.root_pem(),
        ca_key_pem: ca.key_pem().to_string(),
        plan,
        outcomes: Mutex::new(BTreeMap::new()),
    });

    // Register the nodes; turmoil builds each host's future now but runs it only once the
    // simulation steps, by which time the node table and the pod routes are in place.
    let mut nodes = BTreeMap::new();
    for node in NODES {
        let shared = shared.clone();
        sim.host(node, move || {
            let shared = shared.clone();
            async move {
                node_main(node, shared)
                    .await
                    .map_err(|e| format!("{node}: {e:#}").into())
            }
        });
        nodes.insert(node, sim.lookup(node));
    }
    for (pod, node) in POD_ROUTES {
        network.add_route(pod, nodes[node]);
    }
    let _ = shared.ctx.nodes.set(nodes.clone());

    let mut tap = WireTap::new(nodes[NODE_A], nodes[NODE_B]);
    let outcome_failure = |shared: &Shared| -> Option<Result<(), String>> {
        let outcomes = shared
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((name, Err(e))) = outcomes.iter().find(|(_, r)| r.is_err()) {
            return Some(Err(format!("{name}: {e}")));
        }
        (outcomes.len() == task_count).then_some(Ok(()))
    };

    let mut failure = None;
    let mut done_at = None;
    loop {
        if let Err(err) = sim.step() {
            failure = Some(err.to_string());
            break;
        }
        tap.observe(&sim);
        match done_at {
            None => match outcome_failure(&shared) {
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Some(Ok(())) => done_at = Some(sim.elapsed()),
                None if sim.elapsed() >= MAX_SIM_TIME => {
                    failure = Some(format!(
                        "traffic did not finish within {}s of simulated time",
                        MAX_SIM_TIME.as_secs()
                    ));
                    break;
                }
                None => {}
            },
            Some(at) if sim.elapsed() >= at + SETTLE => break,
            Some(_) => {}
        }
    }
    let echo = shared
        .ctx
        .echo_received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    finish(&sim, tap.report(), echo, failure)
}

/// One node: its pods' applications, its ztunnel (the production `ztunnel::run`, unchanged),
/// its part of the timeline and the traffic its pods originate.
async fn node_main(node: &'static str, shared: Rc<Shared>) -> anyhow::Result<()> {
    let ctx = shared.ctx.for_host(node);
    let mut state = State::default();
    LocalConfig::parse(&shared.plan.local_config)
        .context("local config")?
        .apply_to(&mut state);
    let ca = LocalCa::from_pem(&shared.ca_root_pem, &shared.ca_key_pem).context("cluster CA")?;
    let config = Config {
        node_name: node.to_string(),
        seed: shared.seed,
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SimClock);
    let certificates = Arc::new(LocalCaProvider::new(
        ca,
        config.certificate_ttl,
        clock.clone(),
    ));
    let seams = Seams {
        network: Arc::new(shared.ctx.network.clone()),
        clock,
        entropy: Entropy::seeded(shared.seed),
    };

    if node == NODE_B {
        start_echo(&ctx).await?;
    }
    let ztunnel = ztunnel::run(config, seams, StateHandle::new(state), certificates).await?;
    ctx.record("ztunnel ready");
    ctx.mark_ready();

    let timeline = async {
        for step in shared.plan.timeline.iter().filter(|s| s.node == node) {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            tokio::time::sleep(step.at.saturating_sub(now)).await;
            apply(&ctx, &ztunnel, &step.action);
        }
    };
    let tasks = shared
        .plan
        .tasks
        .iter()
        .filter(|t| t.node == node)
        .map(|task| {
            let ctx = ctx.clone();
            let shared = &shared;
            async move {
                ctx.wait_ready().await;
                let result = (task.body)(ctx.clone()).await.map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(()) => ctx.record(format!("task {} done", task.name)),
                    Err(e) => ctx.record(format!("task {} failed: {e}", task.name)),
                }
                shared
                    .outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(task.name, result);
            }
        });
    tokio::join!(timeline, futures_util::future::join_all(tasks));
    // The ztunnel serves for as long as the simulation runs.
    std::future::pending::<()>().await;
    drop(ztunnel);
    Ok(())
}

/// Applies a timeline action through the running ztunnel's own state handle.
fn apply(ctx: &Ctx, ztunnel: &Ztunnel, action: &Action) {
    match action {
        Action::InsertPolicy(policy) => {
            let key = policy.key();
            ztunnel
                .state()
                .update(|state| state.insert_policy(policy.clone()));
            ctx.record(format!("policy {key} applied ({:?})", policy.action));
        }
    }
}

/// The echo app of `shop/echo`: listens on 0.0.0.0:8080 of its node and writes back whatever
/// it reads, recording what it received.
async fn start_echo(ctx: &Ctx) -> anyhow::Result<()> {
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ECHO_PORT);
    let listener = ctx
        .network
        .bind(address)
        .await
        .with_context(|| format!("echo app cannot listen on {address}"))?;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        loop {
            let incoming = match listener.accept().await {
                Ok(incoming) => incoming,
                Err(err) => {
                    ctx.record(format!("echo: accept failed: {err}"));
                    return;
                }
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(accepted) => echo(&ctx, accepted).await,
                    Err(err) => ctx.record(format!("echo: connection lost: {err}")),
                }
            });
        }
    });
    Ok(())
}

async fn echo(ctx: &Ctx, accepted: dataplane::seams::Accepted) {
    let peer = accepted.peer;
    let mut stream = accepted.stream;
    ctx.record(format!("echo: accepted from {peer}"));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => {
                ctx.record(format!("echo: {peer} closed"));
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(err) => {
                ctx.record(format!("echo: read from {peer} failed: {err}"));
                return;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        ctx.echo_received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        ctx.record(format!("echo: received {n} bytes from {peer}"));
        if let Err(err) = stream.write_all(data).await {
            ctx.record(format!("echo: write to {peer} failed: {err}"));
            return;
        }
    }
}
