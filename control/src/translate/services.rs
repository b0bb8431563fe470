//! Kubernetes Services → `istio.workload.Service`: hostname, VIPs, the port map and the
//! waypoint. Which pods back a Service is the workloads' side (`Workload.services`).

use std::collections::BTreeMap;

use dataplane::state::{NetworkAddress, PortMap, Service};
use k8s_openapi::api::core::v1::{Service as KubeService, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::waypoints::{self, TrafficKind};
use crate::snapshot::MeshConfig;
use crate::store::Store;

/// `<name>.<namespace>.svc.<domain suffix>`.
pub fn hostname(mesh: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{}", mesh.domain_suffix)
}

/// Where a service port goes on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetPort {
    Number(u16),
    /// A container port name, resolved per endpoint.
    Named(String),
}

/// `(service port, target)`; ports that are out of range are left out (validation refused
/// them on apply).
pub(crate) fn port_targets(service: &KubeService) -> Vec<(u16, TargetPort)> {
    let ports: &[ServicePort] = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Named(s.clone()),
                },
            };
            Some((port, target))
        })
        .collect()
}

/// The selector, when the Service has a non-empty one (an empty selector selects nothing:
/// such a Service's endpoints come from EndpointSlices).
pub(crate) fn selector(service: &KubeService) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

fn translate(store: &Store, mesh: &MeshConfig, service: &KubeService) -> Option<Service> {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let ports: PortMap = port_targets(service)
        .into_iter()
        .map(|(port, target)| match target {
            TargetPort::Number(n) => (port, n),
            TargetPort::Named(_) => (port, 0),
        })
        .collect();
    let vips = store
        .service_ips(service)
        .into_iter()
        .map(|address| NetworkAddress {
            network: mesh.network.clone(),
            address,
        })
        .collect();
    let labels = service.metadata.labels.clone().unwrap_or_default();
    Some(Service {
        hostname: hostname(mesh, &namespace, &name),
        waypoint: waypoints::resolve(store, mesh, &namespace, &labels, TrafficKind::Service),
        name,
        namespace,
        vips,
        ports,
        subject_alt_names: Vec::new(),
    })
}

/// Every Service, keyed `<namespace>/<hostname>`.
pub fn services(store: &Store, mesh: &MeshConfig) -> BTreeMap<String, Service> {
    store
        .services()
        .filter_map(|s| translate(store, mesh, s))
        .map(|s| (s.key(), s))
        .collect()
}
