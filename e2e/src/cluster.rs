//! A running namespace cluster for one scenario: placement, namespaces, processes and apps,
//! with the faults a kernel can play (`crash`/`restart` of a node, istiod or a waypoint;
//! `partition`/`repair`) and the one thing traffic needs, a connection made from inside a pod.
//!
//! ```text
//! let cluster = Cluster::start(&scenario, &options).await?;   // on a LocalSet
//! let record = cluster.send(&job, "shop/web-0").await;         // one request, judged later
//! cluster.crash("node-a").await?; cluster.restart("node-a").await?;
//! let deliveries = cluster.deliveries();                       // what the apps received
//! ```
//!
//! Everything must run on one thread's `LocalSet` (the HTTP echo is not `Send`). Dropping the
//! cluster stops the processes, then the apps, then removes the namespaces and the run
//! directory; at exit and on SIGINT/SIGTERM the harness does the same.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use harness::Process;
use sim::apps::{Exchanged, Job};
use sim::scenario::{Action, ISTIOD, Outcome, RootRotation};
use sim::{Delivery, RequestRecord, Scenario};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Error;
use crate::apps::{Apps, Clock, Deliveries};
use crate::config_dir::ClusterManifests;
use crate::placement::{Placement, PodInfo};
use crate::processes::{
    Binaries, IstiodSpec, MeshEnv, NodeProcesses, NodeSpec, WaypointSpec, begin_root_rotation,
    enroll, issue_token, log_path, tail,
};
use crate::topology::Topology;

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where istiod, ztunnel, waypoint and node-agent are.
    pub binaries: Binaries,
    /// Start the data plane (per node a node agent and an in-pod ztunnel, and enrol pods).
    /// Without it only istiod, the waypoints and the apps run: what uncaptured traffic needs.
    pub dataplane: bool,
    /// Where the run directory goes (a fresh `e2e-<pid>-<n>` under it).
    pub base_dir: PathBuf,
    /// Keep the run directory (config, logs, rules) instead of removing it.
    pub keep: bool,
    /// A scenario that would take longer than this in wall time is a skip that says so
    /// (`None`: no limit). The simulator runs minutes of scenario in seconds; a kernel does not.
    pub max_wall: Option<Duration>,
    /// Run upstream's ztunnel (this binary) on every node instead of ours, driven by our node
    /// agent over ZDS: the agent speaks upstream's protocol.
    pub upstream_ztunnel: Option<PathBuf>,
}

/// [`Options::max_wall`] unless told otherwise: what keeps `cargo e2e` (and CI) to minutes.
pub const DEFAULT_MAX_WALL: Duration = Duration::from_secs(3 * 60);

impl Options {
    /// Binaries beside this executable, the data plane on, under the temp directory.
    pub fn new(binaries: Binaries) -> Options {
        Options {
            binaries,
            dataplane: true,
            base_dir: std::env::temp_dir(),
            keep: false,
            max_wall: Some(DEFAULT_MAX_WALL),
            upstream_ztunnel: None,
        }
    }
}

/// The run directory, removed when dropped (and at exit) unless kept.
#[derive(Debug)]
pub struct RunDir {
    /// `<base>/e2e-<pid>-<n>`: the pid lets a leftover be told from a live run's.
    pub path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(base: &Path, keep: bool) -> Result<RunDir, Error> {
        sweep_stale(base);
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        if keep {
            let marker = path.join("KEPT");
            std::fs::write(&marker, "kept by --keep: remove by hand\n")
                .map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;
        } else {
            harness::remove_dir_at_exit(path.clone());
        }
        Ok(RunDir { path, keep })
    }
}

/// Removes run directories (`e2e-<pid>-<n>`) of runs that no longer exist: killed before their
/// cleanup ran (SIGKILL). Kept ones (`--keep`, marked by a `KEPT` file) stay.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("e2e-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = !Path::new("/proc").join(pid.to_string()).exists();
        if pid != std::process::id() && gone && !entry.path().join("KEPT").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The processes of a run; `None` where one is crashed.
#[derive(Debug, Default)]
struct Processes {
    istiod: Option<Process>,
    nodes: BTreeMap<String, NodeProcesses>,
    waypoints: BTreeMap<String, Process>,
}

/// A running cluster. Fields drop in order: processes, apps, namespaces, run directory.
pub struct Cluster {
    processes: RefCell<Processes>,
    apps: Apps,
    topology: Topology,
    dir: RunDir,
    placement: Placement,
    clock: Rc<Clock>,
    istiod: IstiodSpec,
    /// Per node, when the data plane runs.
    nodes: BTreeMap<String, NodeSpec>,
    waypoints: BTreeMap<String, WaypointSpec>,
    /// Hosts crashed and not restarted.
    down: RefCell<BTreeSet<String>>,
    partitions: RefCell<BTreeSet<(String, String)>>,
    dataplane: bool,
    /// What istiod's config dir holds, as the timeline changes it.
    manifests: RefCell<ClusterManifests>,
    config_dir: PathBuf,
    /// istiod's state directory (its root, a rotation's plan).
    state_dir: PathBuf,
    /// The scenario's file, for errors in its timeline's manifests.
    file: String,
}

impl Cluster {
    /// Places the scenario's pods, builds the namespaces, starts istiod (and, with the data
    /// plane, every node's node agent and ztunnel, enrolling each node's pods), every waypoint
    /// and every app, and installs kube-proxy's rules. Scenario time starts when it returns.
    pub async fn start(scenario: &Scenario, options: &Options) -> Result<Cluster, Error> {
        let placement = Placement::of(scenario)?;
        let istiod_bin = options.binaries.istiod()?;
        let dataplane_bins = if options.dataplane {
            let ztunnel = match &options.upstream_ztunnel {
                Some(upstream) => upstream.clone(),
                None => options.binaries.ztunnel()?,
            };
            Some((options.binaries.node_agent()?, ztunnel))
        } else {
            None
        };
        let waypoint_bin = if placement.pods.iter().any(|p| p.waypoint.is_some()) {
            Some(options.binaries.waypoint()?)
        } else {
            None
        };
        let dir = RunDir::create(&options.base_dir, options.keep)?;
        let config_dir = dir.path.join("config");
        placement.write_config(&config_dir)?;
        let state_dir = dir.path.join("state");
        let istiod = IstiodSpec::new(istiod_bin, &dir.path, &config_dir, &state_dir, scenario)?;
        let mut tokens = BTreeMap::new();
        for node in &placement.nodes {
            let token = issue_token(&istiod.program, &state_dir, &dir.path, &node.name)?;
            tokens.insert(node.name.clone(), token);
        }
        let mesh = MeshEnv {
            root: istiod.root.clone(),
            secret_ttl: scenario.settings.certificate_ttl.0,
        };
        let token = |node: &str| {
            tokens.get(node).cloned().ok_or_else(|| {
                Error::Unsupported(format!("node {node} has pods but is not in the scenario"))
            })
        };
        let mut nodes = BTreeMap::new();
        if let Some((node_agent, ztunnel)) = &dataplane_bins {
            for n in &placement.nodes {
                let spec = NodeSpec {
                    node: n.name.clone(),
                    lan_ip: n.lan_ip.into(),
                    node_agent: node_agent.clone(),
                    ztunnel: ztunnel.clone(),
                    upstream: options.upstream_ztunnel.is_some(),
                    dir: dir.path.clone(),
                    token: token(&n.name)?,
                    mesh: mesh.clone(),
                };
                nodes.insert(n.name.clone(), spec);
            }
        }
        let mut waypoints = BTreeMap::new();
        if let Some(program) = &waypoint_bin {
            for pod in placement.pods.iter().filter(|p| p.waypoint.is_some()) {
                let node_token = token(&pod.node)?;
                if let Some(w) =
                    WaypointSpec::new(program.clone(), &dir.path, pod, &mesh, &node_token)
                {
                    waypoints.insert(w.host.clone(), w);
                }
            }
        }

        let topology = Topology::build(&placement)?;
        topology.install_kube_proxy(&placement, &dir.path)?;
        let clock = Clock::new();
        let apps = Apps::new(clock.clone(), &placement.pods);
        let cluster = Cluster {
            processes: RefCell::default(),
            apps,
            topology,
            dir,
            placement,
            clock,
            istiod,
            nodes,
            waypoints,
            down: RefCell::default(),
            partitions: RefCell::default(),
            dataplane: options.dataplane,
            manifests: RefCell::new(ClusterManifests::new(&scenario.cluster, &scenario.file)?),
            config_dir,
            state_dir,
            file: scenario.file.clone(),
        };
        cluster.start_istiod().await?;
        let names: Vec<String> = cluster.nodes.keys().cloned().collect();
        for node in &names {
            cluster.start_node(node).await?;
        }
        let hosts: Vec<String> = cluster.waypoints.keys().cloned().collect();
        for host in &hosts {
            cluster.start_waypoint(host).await?;
        }
        for pod in cluster.placement.app_pods() {
            if !cluster.nodes.contains_key(&pod.node) {
                cluster.serve(pod)?;
            }
        }
        cluster.clock.start();
        Ok(cluster)
    }

    /// A timeline `rotateRoot`: `istiod rotate-root begin` on the running istiod's state
    /// directory, as an operator would run it.
    pub fn rotate_root(&self, rotation: &RootRotation) -> Result<(), Error> {
        let phase = begin_root_rotation(
            &self.istiod.program,
            &self.state_dir,
            rotation.activate_after.0,
            rotation.overlap.0,
        )?;
        eprintln!("            istiod rotate-root begin: {phase}");
        Ok(())
    }

    /// A timeline `apply` or `delete`: istiod's config dir is rewritten, and istiod (which
    /// follows it) pushes the change. The runner has checked that it moves no pod.
    pub fn change(&self, action: &Action) -> Result<(), Error> {
        let mut manifests = self.manifests.borrow_mut();
        if manifests.step(action, &self.file)? {
            manifests.write(&self.config_dir)?;
        }
        Ok(())
    }

    /// Where everything is: what traffic resolves its sources and destinations with.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The namespaces, for whoever needs a socket or a command inside one.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The run directory (config, state, logs, rules).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Scenario time: zero when [`Cluster::start`] returned.
    pub fn clock(&self) -> &Rc<Clock> {
        &self.clock
    }

    /// Whether the data plane (node agents, ztunnels) runs.
    pub fn dataplane(&self) -> bool {
        self.dataplane
    }

    /// What the apps received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.apps.deliveries().all()
    }

    /// The record the apps write to.
    pub fn delivery_log(&self) -> Rc<Deliveries> {
        self.apps.deliveries()
    }

    /// Whether `host` (a node, `istiod` or a waypoint pod `ns/name`) is crashed.
    pub fn is_down(&self, host: &str) -> bool {
        self.down.borrow().contains(host)
    }

    fn serve(&self, pod: &PodInfo) -> Result<(), Error> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let Some(net) = self.topology.pods.get(&key) else {
            return Err(Error::Unsupported(format!("no namespace for pod {key}")));
        };
        self.apps.serve(pod, &net.netns)
    }

    async fn start_istiod(&self) -> Result<(), Error> {
        let (process, _root) = self.istiod.start(&self.topology.istiod).await?;
        self.processes.borrow_mut().istiod = Some(process);
        Ok(())
    }

    /// Starts `node`'s node agent and ztunnel, then enrols its enrolled pods (before their
    /// apps start, as a CNI plugin runs before a pod's containers) and starts its apps.
    async fn start_node(&self, node: &str) -> Result<(), Error> {
        let (Some(spec), Some(net)) = (self.nodes.get(node), self.topology.nodes.get(node)) else {
            return Err(Error::Unsupported(format!("no node {node}")));
        };
        let processes = spec.start(&net.netns, &self.topology.istiod).await?;
        let pod_socket = processes.pod_socket.clone();
        self.processes
            .borrow_mut()
            .nodes
            .insert(node.to_string(), processes);
        for pod in self.placement.pods.iter().filter(|p| p.node == node) {
            if pod.enrolled && pod.waypoint.is_none() {
                let key = format!("{}/{}", pod.namespace, pod.name);
                let Some(net) = self.topology.pods.get(&key) else {
                    continue;
                };
                let path = Path::new("/run/netns").join(net.netns.name());
                if let Err(e) = enroll(&pod_socket, pod, &path).await {
                    return Err(self.with_node_logs(node, e));
                }
            }
            if !pod.ports.is_empty() && pod.waypoint.is_none() {
                self.serve(pod)?;
            }
        }
        Ok(())
    }

    fn with_node_logs(&self, node: &str, error: Error) -> Error {
        let processes = self.processes.borrow();
        let Some(p) = processes.nodes.get(node) else {
            return error;
        };
        Error::Process {
            what: error.to_string(),
            log: format!(
                "--- {}:\n{}\n--- {}:\n{}",
                p.node_agent.name(),
                tail(&p.node_agent),
                p.ztunnel.name(),
                tail(&p.ztunnel)
            ),
        }
    }

    async fn start_waypoint(&self, host: &str) -> Result<(), Error> {
        let (Some(spec), Some(net)) = (self.waypoints.get(host), self.topology.pods.get(host))
        else {
            return Err(Error::Unsupported(format!("no waypoint {host}")));
        };
        let process = spec.start(&net.netns, &self.topology.istiod).await?;
        self.processes
            .borrow_mut()
            .waypoints
            .insert(host.to_string(), process);
        Ok(())
    }

    /// Kills `host`: istiod, a waypoint pod's proxy, or a node's node agent and ztunnel with
    /// its pods' apps (its pods stop sending, as the simulator's do on a crashed node).
    pub async fn crash(&self, host: &str) -> Result<(), Error> {
        if host == ISTIOD {
            self.processes.borrow_mut().istiod = None;
        } else if self.waypoints.contains_key(host) {
            self.processes.borrow_mut().waypoints.remove(host);
        } else if self.topology.nodes.contains_key(host) {
            self.processes.borrow_mut().nodes.remove(host);
            for pod in self.placement.pods.iter().filter(|p| p.node == host) {
                self.apps.stop(&format!("{}/{}", pod.namespace, pod.name));
            }
        } else {
            return Err(Error::Unsupported(format!("no host {host} to crash")));
        }
        self.down.borrow_mut().insert(host.to_string());
        Ok(())
    }

    /// Starts `host` again as it was first started (same state dir, tokens, pod IPs; a node's
    /// pods are enrolled again with its fresh node agent).
    pub async fn restart(&self, host: &str) -> Result<(), Error> {
        // A restart of something running is a crash first, as in the simulator.
        if !self.is_down(host) {
            self.crash(host).await?;
        }
        if host == ISTIOD {
            self.start_istiod().await?;
        } else if self.waypoints.contains_key(host) {
            self.start_waypoint(host).await?;
        } else if self.nodes.contains_key(host) {
            self.start_node(host).await?;
        } else if self.topology.nodes.contains_key(host) {
            // No data plane: only the apps.
            for pod in self.placement.app_pods().filter(|p| p.node == host) {
                self.serve(pod)?;
            }
        } else {
            return Err(Error::Unsupported(format!("no host {host} to restart")));
        }
        self.down.borrow_mut().remove(host);
        Ok(())
    }

    /// Cuts the link between two hosts (nft drops in their namespaces).
    pub fn partition(&self, a: &str, b: &str) -> Result<(), Error> {
        let mut partitions = self.partitions.borrow_mut();
        partitions.insert((a.to_string(), b.to_string()));
        self.topology
            .set_partitions(&partitions, &[a, b], &self.dir.path)
    }

    /// Restores the link between two hosts.
    pub fn repair(&self, a: &str, b: &str) -> Result<(), Error> {
        let mut partitions = self.partitions.borrow_mut();
        partitions.retain(|(x, y)| !((x == a && y == b) || (x == b && y == a)));
        self.topology
            .set_partitions(&partitions, &[a, b], &self.dir.path)
    }

    /// A connection from inside pod `from` (`namespace/name`) to `to`: the kernel captures and
    /// routes it as it would a process of that pod.
    pub async fn connect(&self, from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        let Some(net) = self.topology.pods.get(from) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no pod {from}"),
            ));
        };
        crate::net::connect_in(&net.netns, to).await
    }

    /// One request on a new connection from pod `from`, as the simulator's client makes it
    /// (`sim::apps::exchange`), within the job's timeout: a failed connect or exchange is
    /// `refused`, no answer in time a `timeout`.
    pub async fn send(&self, job: &Job, from: &str, source_node: &str) -> RequestRecord {
        let started = self.clock.now();
        let attempt = async {
            let mut conn = self.connect(from, job.destination).await.ok()?;
            let answer = sim::apps::exchange(&mut conn, job).await;
            close(&mut conn).await;
            Some(answer)
        };
        let answer = match tokio::time::timeout(job.timeout, attempt).await {
            Ok(Some(answer)) => answer,
            Ok(None) => failed(Outcome::Refused),
            Err(_) => failed(Outcome::Timeout),
        };
        self.record(job, source_node, started, answer)
    }

    /// The record of a request that started at `started` and got `answer`.
    pub fn record(
        &self,
        job: &Job,
        source_node: &str,
        started: Duration,
        answer: Exchanged,
    ) -> RequestRecord {
        RequestRecord {
            traffic: job.traffic,
            request: job.request,
            conn: job.conn.clone(),
            source_node: source_node.to_string(),
            started,
            finished: self.clock.now(),
            outcome: answer.outcome,
            backend: answer.backend,
            response: answer.response,
        }
    }

    /// A process that exited by itself (not crashed by the timeline): the first such, with
    /// its log. What the simulator's `panic` invariant stands for here.
    pub fn exited(&self) -> Option<Error> {
        let mut processes = self.processes.borrow_mut();
        let Processes {
            istiod,
            nodes,
            waypoints,
        } = &mut *processes;
        let all = istiod
            .iter_mut()
            .chain(
                nodes
                    .values_mut()
                    .flat_map(|n| [&mut n.node_agent, &mut n.ztunnel]),
            )
            .chain(waypoints.values_mut());
        for process in all {
            if let Some(status) = process.exited() {
                return Some(Error::Process {
                    what: format!("{} exited ({status})", process.name()),
                    log: tail(process),
                });
            }
        }
        None
    }

    /// What the ztunnels and waypoints logged, as the simulator's trace events in time order:
    /// who decided what about each connection ([`crate::logs`]).
    pub fn proxy_events(&self) -> Vec<sim::trace::Event> {
        let zero = self.clock.wall_zero();
        let hosts = self
            .nodes
            .keys()
            .map(|node| (node, format!("ztunnel-{node}")))
            .chain(
                self.waypoints
                    .keys()
                    .map(|host| (host, format!("waypoint-{host}"))),
            );
        let mut events: Vec<sim::trace::Event> = hosts
            .flat_map(|(host, process)| {
                crate::logs::events(&log_path(&self.dir.path, &process), host, zero)
            })
            .collect();
        events.sort_by_key(|e| e.at);
        events
    }

    /// The end of every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let processes = self.processes.borrow();
        let mut all: Vec<&Process> = processes.istiod.iter().collect();
        for n in processes.nodes.values() {
            all.push(&n.node_agent);
            all.push(&n.ztunnel);
        }
        all.extend(processes.waypoints.values());
        all.iter()
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name(),
                    p.log_path().display(),
                    p.log_tail(1500)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops everything now (also what dropping does), apps first so no request is served by
    /// a half-stopped cluster.
    pub fn stop(&self) {
        self.apps.stop_all();
        *self.processes.borrow_mut() = Processes::default();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn failed(outcome: Outcome) -> Exchanged {
    Exchanged {
        outcome,
        reusable: false,
        backend: None,
        response: None,
    }
}

/// Half-closes and waits (briefly) for the peer's close, so connections end cleanly (as the
/// simulator's client does).
pub async fn close(conn: &mut TcpStream) {
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
