//! Pods (and EndpointSlice addresses no pod owns) → `istio.workload.Workload`: enrollment,
//! identity, telemetry names, the services each one backs and its waypoint.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane::state::{PortMap, TunnelProtocol, Workload, WorkloadStatus};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::services::{self, TargetPort};
use super::waypoints::{self, TrafficKind};
use crate::snapshot::MeshConfig;
use crate::store::{PodOwner, PodView, Store};

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Pods that terminate HBONE themselves.
pub const TUNNEL: &str = "networking.istio.io/tunnel";
/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The upstream default trust domain, which istiod leaves out of the Workload.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Which selector-scoped policies (`ns/name`) apply to a workload in a namespace with these
/// labels; computed by the caller, which knows the policies.
pub type PolicyRefs<'a> = dyn Fn(&str, &BTreeMap<String, String>) -> Vec<String> + 'a;

/// `<cluster>//Pod/<namespace>/<name>`.
pub fn pod_uid(mesh: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", mesh.cluster_id)
}

/// Whether istio-cni would capture the pod (policy-semantics §4.1): the pod's own
/// `istio.io/dataplane-mode=ambient`, or its namespace's unless the pod says `none`;
/// host-network pods never.
pub fn enrolled(store: &Store, pod: &PodView<'_>) -> bool {
    if pod.host_network() {
        return false;
    }
    match pod.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => store
            .namespace(pod.namespace)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(DATAPLANE_MODE))
            .is_some_and(|m| m == "ambient"),
    }
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn trust_domain(mesh: &MeshConfig) -> String {
    if mesh.trust_domain == DEFAULT_TRUST_DOMAIN {
        String::new()
    } else {
        mesh.trust_domain.clone()
    }
}

/// Selector Services by namespace, built once per translation so each pod is matched only
/// against its own namespace's Services (the cost stays linear in pods).
type Selector = BTreeMap<String, String>;

struct ServiceIndex<'a> {
    by_namespace: BTreeMap<&'a str, Vec<(&'a K8sService, &'a Selector)>>,
}

impl<'a> ServiceIndex<'a> {
    fn new(store: &'a Store) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for service in store.services() {
            if let Some(selector) = services::selector(service) {
                let namespace = service.metadata.namespace.as_deref().unwrap_or("");
                by_namespace
                    .entry(namespace)
                    .or_default()
                    .push((service, selector));
            }
        }
        ServiceIndex { by_namespace }
    }
}

/// `ns/hostname` → port map, for every selector Service in the pod's namespace that selects
/// it. Named target ports resolve against the pod's container ports; unresolved ones drop.
fn pod_services(
    index: &ServiceIndex<'_>,
    mesh: &MeshConfig,
    pod: &PodView<'_>,
) -> BTreeMap<String, PortMap> {
    let mut out = BTreeMap::new();
    let candidates = index
        .by_namespace
        .get(pod.namespace)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (service, selector) in candidates {
        let service = *service;
        if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
            continue;
        }
        let ports: PortMap = services::port_targets(service)
            .into_iter()
            .filter_map(|(port, target)| match target {
                TargetPort::Number(n) => Some((port, n)),
                TargetPort::Named(name) => pod
                    .named_port(&name)
                    .and_then(|n| u16::try_from(n).ok())
                    .map(|n| (port, n)),
            })
            .collect();
        let name = service.metadata.name.as_deref().unwrap_or("");
        out.insert(
            format!(
                "{}/{}",
                pod.namespace,
                services::hostname(mesh, pod.namespace, name)
            ),
            ports,
        );
    }
    out
}

fn pod_workload(
    store: &Store,
    index: &ServiceIndex<'_>,
    mesh: &MeshConfig,
    pod: &PodView<'_>,
    policy_refs: &PolicyRefs<'_>,
) -> Workload {
    let deployment = match &pod.owner {
        PodOwner::Deployment(d) => Some(d.as_str()),
        PodOwner::Pod => None,
    };
    let waypoint_pod = waypoints::is_waypoint_pod(store, pod.namespace, pod.labels);
    let native_tunnel = waypoint_pod || pod.labels.get(TUNNEL).is_some_and(|t| t.contains("http"));
    let protocol = if native_tunnel || enrolled(store, pod) {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };
    let canonical_name = first_label(
        pod.labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .or(deployment)
    .unwrap_or(&pod.name)
    .to_string();
    let canonical_revision = first_label(
        pod.labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
    .to_string();
    Workload {
        uid: pod_uid(mesh, pod.namespace, &pod.name),
        name: pod.name.clone(),
        namespace: pod.namespace.to_string(),
        workload_ips: pod.ips.clone(),
        network: mesh.network.clone(),
        protocol,
        trust_domain: trust_domain(mesh),
        service_account: pod.service_account().to_string(),
        waypoint: waypoints::resolve(
            store,
            mesh,
            pod.namespace,
            pod.labels,
            TrafficKind::Workload,
        ),
        network_gateway: None,
        node: pod.node.unwrap_or_default().to_string(),
        canonical_name,
        canonical_revision,
        workload_type: if deployment.is_some() {
            "deployment"
        } else {
            "pod"
        }
        .to_string(),
        workload_name: deployment.unwrap_or(&pod.name).to_string(),
        native_tunnel,
        services: pod_services(index, mesh, pod),
        authorization_policies: policy_refs(pod.namespace, pod.labels),
        status: if pod.ready {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        },
        cluster_id: mesh.cluster_id.clone(),
        capacity: 1,
    }
}

/// The service port → endpoint port map an EndpointSlice gives, matching ports by name.
fn slice_ports(service: &k8s_openapi::api::core::v1::Service, slice: &EndpointSlice) -> PortMap {
    let service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let slice_ports = slice.ports.as_deref().unwrap_or_default();
    service_ports
        .iter()
        .filter_map(|sp| {
            let name = sp.name.as_deref().unwrap_or("");
            let target = slice_ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == name)?
                .port?;
            Some((u16::try_from(sp.port).ok()?, u16::try_from(target).ok()?))
        })
        .collect()
}

/// Endpoints of selector-less Services, from their EndpointSlices: added to the pod they
/// name (by `targetRef` or IP), or published as workloads of their own, keyed as istiod does
/// (`<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>`).
fn add_slice_endpoints(
    store: &Store,
    mesh: &MeshConfig,
    workloads: &mut BTreeMap<String, Workload>,
) {
    for slice in store.endpoint_slices() {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("");
        let Some(service_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME))
        else {
            continue;
        };
        let Some(service) = store.services().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_ref() == Some(service_name)
        }) else {
            continue;
        };
        if services::selector(service).is_some() {
            continue; // its pods are found by the selector
        }
        let key = format!(
            "{namespace}/{}",
            services::hostname(mesh, namespace, service_name)
        );
        let ports = slice_ports(service, slice);
        for endpoint in &slice.endpoints {
            let ips: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            let Some(first) = ips.first() else {
                continue;
            };
            let by_ref = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.as_deref().unwrap_or(namespace);
                    Some(pod_uid(mesh, ns, r.name.as_deref()?))
                })
                .filter(|uid| workloads.contains_key(uid));
            let by_ip = || {
                workloads
                    .values()
                    .find(|w| w.namespace == namespace && w.workload_ips.contains(first))
                    .map(|w| w.uid.clone())
            };
            if let Some(uid) = by_ref.or_else(by_ip) {
                if let Some(w) = workloads.get_mut(&uid) {
                    w.services.insert(key.clone(), ports.clone());
                }
                continue;
            }
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let slice_name = slice.metadata.name.as_deref().unwrap_or("");
            let uid = format!(
                "{}/discovery.k8s.io/EndpointSlice/{namespace}/{slice_name}/{first}",
                mesh.cluster_id
            );
            workloads.insert(
                uid.clone(),
                Workload {
                    uid,
                    name: slice_name.to_string(),
                    namespace: namespace.to_string(),
                    workload_ips: ips,
                    network: mesh.network.clone(),
                    trust_domain: trust_domain(mesh),
                    node: endpoint.node_name.clone().unwrap_or_default(),
                    services: BTreeMap::from([(key.clone(), ports.clone())]),
                    status: if ready {
                        WorkloadStatus::Healthy
                    } else {
                        WorkloadStatus::Unhealthy
                    },
                    cluster_id: mesh.cluster_id.clone(),
                    capacity: 1,
                    ..Workload::default()
                },
            );
        }
    }
}

/// Every workload, keyed by uid. Pods without an IP yet (nowhere to schedule them) and pods
/// that have terminated are left out: nothing can reach them.
pub fn workloads(
    store: &Store,
    mesh: &MeshConfig,
    policy_refs: &PolicyRefs<'_>,
) -> BTreeMap<String, Workload> {
    let index = ServiceIndex::new(store);
    let mut out: BTreeMap<String, Workload> = store
        .pods()
        .iter()
        .filter(|p| !p.ips.is_empty() && !p.terminated)
        .map(|p| pod_workload(store, &index, mesh, p, policy_refs))
        .map(|w| (w.uid.clone(), w))
        .collect();
    add_slice_endpoints(store, mesh, &mut out);
    out
}
