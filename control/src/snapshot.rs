//! What the control plane publishes at one moment, and the mesh-wide settings it is computed
//! with. Translation produces a [`Snapshot`] from the store; the xDS server diffs each
//! ztunnel's stream against the newest one, so only what changed is pushed.

use std::collections::{BTreeMap, BTreeSet};

use dataplane::policy::Authorization;
use dataplane::state::{Service, Workload};
use dataplane::xds::proto::ambient::waypoint::WaypointConfig;

use crate::features::Features;

/// Everything ztunnels and waypoints are told, keyed as on the wire (wire facts §1.4). Not
/// `Eq`: the waypoint configs are prost messages, which are only `PartialEq`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By `Workload.uid` (`<cluster>//Pod/<ns>/<name>`).
    pub workloads: BTreeMap<String, Workload>,
    /// By `<namespace>/<hostname>`.
    pub services: BTreeMap<String, Service>,
    /// By `<namespace>/<name>`.
    pub policies: BTreeMap<String, Authorization>,
    /// Each waypoint's L7 configuration, by `<namespace>/<gateway name>`; served only to
    /// streams that subscribe to `WAYPOINT_TYPE_URL`.
    pub waypoints: BTreeMap<String, WaypointConfig>,
    /// Who may be sent each of `waypoints`, by the same key: a configuration lists every
    /// policy and Service behind its waypoint, so it goes to that waypoint only.
    pub waypoint_proxies: BTreeMap<String, WaypointProxies>,
}

/// The callers that act as one waypoint: the identities its pods run as (a waypoint's own
/// token), and the nodes they run on (a node proxy's token, which may be issued those
/// identities by the CA anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaypointProxies {
    /// SPIFFE identities (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub identities: BTreeSet<String>,
    /// Node names.
    pub nodes: BTreeSet<String>,
}

/// Mesh-wide settings: upstream's mesh config and istiod flags that translation depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// SPIFFE trust domain of every identity (`cluster.local`).
    pub trust_domain: String,
    /// `trustDomainAliases`: trust domains that name the same workloads as `trust_domain`
    /// (a migration's old domain); policies' principals match under each.
    pub trust_domain_aliases: Vec<String>,
    /// istiod's namespace; policies here apply mesh-wide (`istio-system`).
    pub root_namespace: String,
    /// `CLUSTER_ID`; the first part of workload uids (`Kubernetes`).
    pub cluster_id: String,
    /// The network every workload is on (empty: the default network).
    pub network: String,
    /// DNS suffix of service hostnames (`cluster.local`).
    pub domain_suffix: String,
    /// istiod's feature flags (upstream's environment variables); all off by default.
    pub features: Features,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            root_namespace: "istio-system".into(),
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            domain_suffix: "cluster.local".into(),
            features: Features::default(),
        }
    }
}
