//! Workloads as the control plane describes them (`istio.workload.Workload`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::identity::{DEFAULT_TRUST_DOMAIN, Identity};

/// How traffic reaches a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not in the mesh.
    #[default]
    None,
    /// HBONE to its node's ztunnel on 15008.
    Hbone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkloadStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// An IP on a network (empty network = the default one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

/// A service named by namespace and hostname, the form istiod uses for waypoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl NamespacedHostname {
    /// The xDS key of the service: `<namespace>/<hostname>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// Where a gateway (waypoint or network gateway) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayDestination {
    Hostname(NamespacedHostname),
    Address(NetworkAddress),
}

/// A waypoint or network gateway reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

/// Service port → target port, for one service this workload backs.
pub type PortMap = BTreeMap<u16, u16>;

/// One workload (usually a pod).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub workload_ips: Vec<IpAddr>,
    pub network: String,
    pub protocol: TunnelProtocol,
    pub trust_domain: String,
    pub service_account: String,
    pub waypoint: Option<GatewayAddress>,
    pub network_gateway: Option<GatewayAddress>,
    pub node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_type: String,
    pub workload_name: String,
    pub native_tunnel: bool,
    /// `<namespace>/<hostname>` of each service this workload is an endpoint of.
    pub services: BTreeMap<String, PortMap>,
    /// `<namespace>/<name>` of selector-scoped policies that apply to this workload.
    pub authorization_policies: Vec<String>,
    pub status: WorkloadStatus,
    pub cluster_id: String,
    /// Load-balancing weight; 1 when unset.
    pub capacity: u32,
}

impl Workload {
    /// The SPIFFE identity the workload's certificate carries. xDS leaves an empty trust domain
    /// or service account to mean the defaults.
    pub fn identity(&self) -> Identity {
        let trust_domain = if self.trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            &self.trust_domain
        };
        let service_account = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        Identity::new(trust_domain, &self.namespace, service_account)
    }

    /// The name telemetry shows: the workload name, else the canonical service.
    pub fn telemetry_name(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else {
            &self.canonical_name
        }
    }
}
