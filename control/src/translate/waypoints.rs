//! Waypoint binding (wire facts §5, policy-semantics §4.2–4.3): which Gateway of class
//! `istio-waypoint` a Service or a pod uses, and the `GatewayAddress` istiod sends for it.
//!
//! Resolution: the object's own `istio.io/use-waypoint` label wins (`none` opts out), else
//! its namespace's; `istio.io/use-waypoint-namespace` next to the label used names the
//! waypoint's namespace. The waypoint must exist, admit the object's namespace on its HBONE
//! listener (`allowedRoutes.namespaces`, Same by default), and carry traffic of that kind
//! (`istio.io/waypoint-for`: service by default, workload, all, none), and be ready.
//! Otherwise: no waypoint (traffic goes direct, as upstream does for a bogus or unready
//! waypoint, policy-semantics §4.3 rule 3). Binding an unready waypoint would be worse than
//! not binding: ztunnels would be told to send the traffic to an address that does not
//! resolve yet, and refuse it.
//!
//! Readiness ([`ready`]) is upstream's "the Gateway's status has an address". Without a
//! cluster nothing writes that status, so a waypoint the store deploys itself (manifests:
//! `store::waypoints`) is ready once its Service has a cluster IP, the address the status
//! would carry.

use std::collections::{BTreeMap, BTreeSet};

use dataplane::identity::Identity;
use dataplane::policy::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};
use dataplane::state::{GatewayAddress, GatewayDestination, NamespacedHostname};
use gateway_api::gateways::{Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From};

use crate::object::{Kind, Object};
use crate::snapshot::{MeshConfig, WaypointProxies};
use crate::store::Store;

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// Label on a gateway's own pods and Service.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// The HBONE port every waypoint listens on.
pub const HBONE_PORT: u16 = 15008;

/// What is being bound: Service traffic or pod-addressed (workload) traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficKind {
    Service,
    Workload,
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// `(namespace, name)` of the waypoint named by these labels: `None` when they say nothing,
/// `Some(None)` for an explicit `none`.
fn named(labels: &BTreeMap<String, String>, namespace: &str) -> Option<Option<(String, String)>> {
    let name = labels.get(USE_WAYPOINT)?;
    if name == "none" || name.is_empty() {
        return Some(None);
    }
    let ns = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .filter(|ns| !ns.is_empty())
        .map_or(namespace, String::as_str);
    Some(Some((ns.to_string(), name.clone())))
}

/// Whether `gateway` is a waypoint.
pub fn is_waypoint(gateway: &Gateway) -> bool {
    gateway.spec.gateway_class_name == WAYPOINT_CLASS
}

/// Whether the waypoint carries traffic of `kind`.
fn carries(gateway: &Gateway, kind: TrafficKind) -> bool {
    let waypoint_for = labels_of(&gateway.metadata)
        .get(WAYPOINT_FOR)
        .map_or("service", String::as_str);
    matches!(
        (waypoint_for, kind),
        ("all", _) | ("service", TrafficKind::Service) | ("workload", TrafficKind::Workload)
    )
}

fn selector_matches(
    selector: &gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether the waypoint's HBONE listener admits objects from `namespace`.
pub(crate) fn admits(store: &Store, gateway: &Gateway, namespace: &str) -> bool {
    let gateway_ns = gateway.metadata.namespace.as_deref().unwrap_or("");
    let hbone: Vec<_> = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol == "HBONE")
        .collect();
    if hbone.is_empty() {
        return namespace == gateway_ns;
    }
    hbone.iter().any(|listener| {
        let namespaces = listener
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match namespaces.and_then(|n| n.from.as_ref()) {
            None | Some(From::Same) => namespace == gateway_ns,
            Some(From::All) => true,
            Some(From::Selector) => {
                let labels = store
                    .namespace(namespace)
                    .map(|n| labels_of(&n.metadata).clone())
                    .unwrap_or_default();
                namespaces
                    .and_then(|n| n.selector.as_ref())
                    .is_some_and(|s| selector_matches(s, &labels))
            }
        }
    })
}

/// The address istiod sends for a waypoint: its Service by hostname, HBONE on 15008.
pub fn address(mesh: &MeshConfig, namespace: &str, name: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: namespace.to_string(),
            hostname: format!("{name}.{namespace}.svc.{}", mesh.domain_suffix),
        }),
        hbone_mtls_port: HBONE_PORT,
    }
}

/// The waypoint for an object in `namespace` with `labels`, carrying `kind` traffic.
pub fn resolve(
    store: &Store,
    mesh: &MeshConfig,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    kind: TrafficKind,
) -> Option<GatewayAddress> {
    let (gw_ns, gw_name) = bound_to(store, namespace, labels, kind)?;
    Some(address(mesh, &gw_ns, &gw_name))
}

/// `(namespace, name)` of the waypoint Gateway an object in `namespace` with `labels` is bound
/// to for `kind` traffic: what [`resolve`] addresses, by name, for the waypoint's own
/// configuration.
pub fn bound_to(
    store: &Store,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    kind: TrafficKind,
) -> Option<(String, String)> {
    // Waypoints (and their Services) never use a waypoint themselves.
    if labels.contains_key(GATEWAY_NAME) {
        return None;
    }
    let chosen = match named(labels, namespace) {
        Some(chosen) => chosen,
        None => {
            let ns_labels = store.namespace(namespace).map(|n| labels_of(&n.metadata))?;
            named(ns_labels, namespace)?
        }
    };
    let (gw_ns, gw_name) = chosen?;
    let gateway = store.gateway(&gw_ns, &gw_name)?;
    (is_waypoint(gateway)
        && ready(store, gateway)
        && carries(gateway, kind)
        && admits(store, gateway, namespace))
    .then_some((gw_ns, gw_name))
}

/// Whether a waypoint Gateway can take traffic: its status has an address (what upstream's
/// istiod waits for), or the store deployed it in istiod's place and the Service it generated
/// (or a declared one of that name that shadows it) has a cluster IP. A Gateway the store does
/// not deploy (with `--kube`, or addresses that name a deployment of the user's) is ready only
/// by its status, as upstream.
pub fn ready(store: &Store, gateway: &Gateway) -> bool {
    let status_address = gateway
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .is_some_and(|a| a.iter().any(|a| !a.value.is_empty()));
    if status_address {
        return true;
    }
    if !store.config().deploy_waypoints || !crate::store::waypoints::managed(gateway) {
        return false;
    }
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or("");
    let name = gateway.metadata.name.as_deref().unwrap_or("");
    match store.get(Kind::Service, namespace, name) {
        Some(Object::Service(service)) => !store.service_ips(service).is_empty(),
        _ => false,
    }
}

/// Name prefix of the synthetic policies `PILOT_AUTO_ALLOW_WAYPOINT_POLICY` adds: `_` cannot
/// appear in a Kubernetes name, so they never collide with a user's policy.
pub const AUTO_ALLOW_PREFIX: &str = "istio_allow_waypoint_";

/// The ALLOW policies `PILOT_AUTO_ALLOW_WAYPOINT_POLICY` adds (policy-semantics §2.6): one per
/// ready waypoint whose pods are known, `<ns>/istio_allow_waypoint_<ns>_<name>`, admitting the
/// waypoint's identities (the service accounts of its pods, labelled
/// `gateway.networking.k8s.io/gateway-name`, as upstream finds them). Each comes with the
/// address ztunnels are sent for that waypoint, which is how workloads and Services name the
/// waypoint they are bound to. Scope WorkloadSelector: only workloads that list it apply it.
/// A waypoint with no pods yet has no identity to admit, so no policy (as upstream).
pub fn auto_allow_policies(
    store: &Store,
    mesh: &MeshConfig,
) -> Vec<(GatewayAddress, Authorization)> {
    let pods = waypoint_pods(store);
    store
        .gateways()
        .filter(|g| is_waypoint(g) && ready(store, g))
        .filter_map(|g| {
            let namespace = g.metadata.namespace.as_deref().unwrap_or("");
            let name = g.metadata.name.as_deref().unwrap_or("");
            let accounts: BTreeSet<&str> = pods
                .get(&(namespace.to_string(), name.to_string()))?
                .iter()
                .map(|pod| pod.service_account.as_str())
                .collect();
            let principals = accounts
                .iter()
                .map(|sa| {
                    StringMatch::Exact(format!("{}/ns/{namespace}/sa/{sa}", mesh.trust_domain))
                })
                .collect();
            let policy = Authorization {
                name: format!("{AUTO_ALLOW_PREFIX}{namespace}_{name}"),
                namespace: namespace.to_string(),
                scope: Scope::WorkloadSelector,
                action: Action::Allow,
                rules: vec![Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            principals,
                            ..Match::default()
                        }],
                    }],
                }],
                dry_run: false,
            };
            Some((address(mesh, namespace, name), policy))
        })
        .collect()
}

/// One live pod of a waypoint: the identity it runs as and where.
struct WaypointPod {
    service_account: String,
    node: Option<String>,
}

/// The live pods of each waypoint (labelled `gateway.networking.k8s.io/gateway-name`, as
/// upstream finds them), by (namespace, gateway name).
fn waypoint_pods(store: &Store) -> BTreeMap<(String, String), Vec<WaypointPod>> {
    let mut found: BTreeMap<(String, String), Vec<WaypointPod>> = BTreeMap::new();
    for pod in store.pods().iter().filter(|p| !p.terminated) {
        if let Some(gateway) = pod.labels.get(GATEWAY_NAME) {
            found
                .entry((pod.namespace.to_string(), gateway.clone()))
                .or_default()
                .push(WaypointPod {
                    service_account: pod.service_account().to_string(),
                    node: pod.node.map(str::to_string),
                });
        }
    }
    found
}

/// Who may be sent each waypoint's configuration, by `<namespace>/<gateway name>`: the
/// identities its pods run as, and the node proxies of the nodes they run on (which the CA
/// would issue those identities anyway, so they learn nothing more). A configuration names
/// every policy and Service behind the waypoint; no one else is sent it.
pub fn proxies(store: &Store, mesh: &MeshConfig) -> BTreeMap<String, WaypointProxies> {
    let mut proxies: BTreeMap<String, WaypointProxies> = BTreeMap::new();
    for ((namespace, gateway), pods) in waypoint_pods(store) {
        let entry = proxies.entry(format!("{namespace}/{gateway}")).or_default();
        for pod in pods {
            let identity = Identity::new(&mesh.trust_domain, &namespace, &pod.service_account);
            entry.identities.insert(identity.to_string());
            entry.nodes.extend(pod.node);
        }
    }
    proxies
}

/// Whether a pod with `labels` in `namespace` is one of a waypoint's own pods.
pub fn is_waypoint_pod(store: &Store, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(GATEWAY_NAME)
        .and_then(|name| store.gateway(namespace, name))
        .is_some_and(is_waypoint)
}
