//! Where everything goes: the scenario's nodes with their pod ranges and LAN addresses, every
//! pod (node, IP, service account, labels, app ports, enrolment, waypoint) and every Service
//! (VIPs, ports, endpoints), computed by the same library calls the simulator and istiod use.
//!
//! The simulator adds a Node manifest per scenario node (`sim::world::node_manifests`) and lets
//! the control store play the scheduler; istiod does the same from its `--config-dir`. Applying
//! the Node manifests and the cluster's manifests to a fresh store in one batch
//! ([`control::sources::apply_loaded`]) therefore gives the placement both of them compute, as
//! long as istiod's directory holds exactly those manifests ([`Placement::write_config`]).
//! The pods are read through the simulator's own pod table (`sim::world::pod_table`), so
//! enrolment, waypoints and app kinds are decided by one piece of code.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use control::sources::{Loaded, apply_loaded, parse_str};
use control::store::{Store, StoreConfig};
use sim::Scenario;
use sim::apps::AppKind;
use sim::scenario::Target;
pub use sim::world::PodInfo;

use crate::Error;

/// istiod's address on the LAN every node is plugged into.
pub const ISTIOD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The LAN's prefix length (`198.18.0.0/24`, the benchmarking range: nothing routes it).
pub const LAN_PREFIX: u8 = 24;
/// The most nodes the LAN has addresses for (`.2` … `.254`).
pub const MAX_NODES: usize = 253;

/// One node: its name, its pod range and its address on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// As the scenario names it (and istiod's Node object, and the ztunnel's `NODE_NAME`).
    pub name: String,
    /// `10.244.<i+1>.0/24` for node `i` in scenario order, as the Node manifest says.
    pub pod_cidr: String,
    /// The range's `.1`, which the scheduler never hands out: the node side of every pod's
    /// veth carries it, and pods route everything through it.
    pub gateway: Ipv4Addr,
    /// `198.18.0.<i+2>`.
    pub lan_ip: Ipv4Addr,
}

/// One Service: its VIPs and what each port reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Empty for headless and ExternalName services.
    pub vips: Vec<IpAddr>,
    /// Service port → the endpoints (pod IP and target port) behind it, in pod name order.
    pub ports: BTreeMap<u16, Vec<SocketAddr>>,
}

/// The whole placement of one scenario.
#[derive(Debug, Clone)]
pub struct Placement {
    /// In scenario order.
    pub nodes: Vec<NodePlan>,
    /// Every running pod (not terminated, not host-network), sorted by namespace and name.
    pub pods: Vec<PodInfo>,
    /// Sorted by namespace and name.
    pub services: Vec<ServicePlan>,
    /// The Node manifests the simulator adds, which istiod must read too.
    pub node_manifests: String,
    /// The scenario's own manifests.
    pub cluster: String,
}

/// Builds a pod's pod-CIDR string and gateway for node `index` (scenario order), matching
/// `sim::world::node_manifests`.
fn pod_range(index: usize) -> (String, Ipv4Addr) {
    let (a, b) = (244 + (index + 1) / 256, (index + 1) % 256);
    let (a, b) = (
        u8::try_from(a).unwrap_or(u8::MAX),
        u8::try_from(b).unwrap_or(0),
    );
    (format!("10.{a}.{b}.0/24"), Ipv4Addr::new(10, a, b, 1))
}

impl Placement {
    /// The placement the simulator (and istiod, given [`Placement::write_config`]) computes
    /// for `scenario`'s initial cluster. Timeline `apply`/`delete` steps are not included.
    pub fn of(scenario: &Scenario) -> Result<Placement, Error> {
        Placement::with_cluster(scenario, &scenario.cluster)
    }

    /// The placement of `scenario`'s nodes with `cluster` as its manifests (what a timeline
    /// step would make of it).
    pub fn with_cluster(scenario: &Scenario, cluster: &str) -> Result<Placement, Error> {
        if scenario.nodes.len() > MAX_NODES {
            return Err(Error::Unsupported(format!(
                "{} nodes: the LAN has addresses for {MAX_NODES}",
                scenario.nodes.len()
            )));
        }
        let node_manifests = sim::world::node_manifests(&scenario.nodes);
        let manifests = |text: &str, file: &str| -> Result<Vec<Loaded>, Error> {
            parse_str(text, file).map_err(|e| Error::Manifests(e.to_string()))
        };
        let mut loaded = manifests(&node_manifests, "nodes.yaml")?;
        loaded.extend(manifests(cluster, &scenario.file)?);
        let mut store = Store::new(StoreConfig::default());
        apply_loaded(&mut store, loaded).map_err(|e| Error::Manifests(e.to_string()))?;

        let nodes = scenario
            .nodes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (pod_cidr, gateway) = pod_range(i);
                NodePlan {
                    name: name.clone(),
                    pod_cidr,
                    gateway,
                    // MAX_NODES keeps this within the /24.
                    lan_ip: Ipv4Addr::new(198, 18, 0, u8::try_from(i + 2).unwrap_or(u8::MAX)),
                }
            })
            .collect();
        let mut pods: Vec<PodInfo> = sim::world::pod_table(&store).into_values().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let services = services(&store, &pods);
        Ok(Placement {
            nodes,
            pods,
            services,
            node_manifests,
            cluster: cluster.to_string(),
        })
    }

    /// Writes what istiod's `--config-dir` must hold to compute this placement: the Node
    /// manifests and the cluster, as two files of one directory (read as one batch).
    pub fn write_config(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for (file, text) in [
            ("nodes.yaml", &self.node_manifests),
            ("cluster.yaml", &self.cluster),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Node `name`, as timeline steps and pods name it.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Pod `namespace/name`, as traffic and timeline steps name it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The pod holding `ip`: who a connection's peer is.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Service `namespace/name`, whose first VIP traffic to it dials.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServicePlan> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The pods a traffic source or destination names, in name order (the order the
    /// simulator takes them in turn). A Service stands for no pod here.
    pub fn pods_of(&self, target: &Target) -> Vec<&PodInfo> {
        self.pods
            .iter()
            .filter(|p| match target {
                Target::Pod(ns, n) => &p.namespace == ns && &p.name == n,
                Target::Deployment(ns, n) => {
                    &p.namespace == ns && p.deployment.as_deref() == Some(n.as_str())
                }
                Target::Service(..) => false,
            })
            .collect()
    }

    /// Pods that run an application (declare ports) and are not a waypoint's own.
    pub fn app_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods
            .iter()
            .filter(|p| p.waypoint.is_none() && !p.ports.is_empty())
    }
}

/// Every Service with its VIPs and, per port, the endpoints kube-proxy would balance over:
/// pods of its namespace matching a non-empty selector, target port by number or by name (as
/// the simulator's driver resolves them).
fn services(store: &Store, pods: &[PodInfo]) -> Vec<ServicePlan> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = Vec::new();
    for svc in store.services() {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let vips = store.service_ips(svc);
        let mut ports = BTreeMap::new();
        if let Some(spec) = &svc.spec {
            let selector = spec.selector.clone().unwrap_or_default();
            let members: Vec<&PodInfo> = pods
                .iter()
                .filter(|p| {
                    p.namespace == namespace
                        && !selector.is_empty()
                        && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            for port in spec.ports.iter().flatten() {
                let Ok(service_port) = u16::try_from(port.port) else {
                    continue;
                };
                let endpoints = members
                    .iter()
                    .filter_map(|pod| {
                        let target = match &port.target_port {
                            Some(IntOrString::Int(p)) => u16::try_from(*p).ok()?,
                            Some(IntOrString::String(named)) => pod
                                .ports
                                .iter()
                                .find(|(_, (n, _))| n.as_deref() == Some(named.as_str()))
                                .map(|(p, _)| *p)?,
                            None => service_port,
                        };
                        Some(SocketAddr::new(pod.ip, target))
                    })
                    .collect();
                ports.insert(service_port, endpoints);
            }
        }
        out.push(ServicePlan {
            namespace,
            name,
            vips,
            ports,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The app a pod runs on `port`, if it declares it.
pub fn app_kind(pod: &PodInfo, port: u16) -> Option<AppKind> {
    pod.ports.get(&port).map(|(_, kind)| *kind)
}

/// The SPIFFE identity a pod's connections carry in the mesh.
pub fn identity(pod: &PodInfo) -> String {
    format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        pod.namespace, pod.service_account
    )
}

/// The uid istiod gives a pod's workload (and what the node agent is told).
pub fn workload_uid(pod: &PodInfo) -> String {
    format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name)
}
