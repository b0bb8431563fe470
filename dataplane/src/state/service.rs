//! Services as the control plane describes them (`istio.workload.Service`).

use super::workload::{GatewayAddress, NetworkAddress, PortMap};

/// A Kubernetes Service: VIPs, a port map and, optionally, a waypoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port (0: a named port, resolved per endpoint).
    pub ports: PortMap,
    /// Extra SPIFFE identities a client accepts for this service's backends.
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
}

impl Service {
    /// The xDS key: `<namespace>/<hostname>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}
