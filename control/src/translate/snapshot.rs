//! The whole translation: the store → the [`Snapshot`] ztunnels are sent. A pure function of
//! the store and the mesh settings, so the xDS server can diff any two results.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use dataplane::policy::Authorization;
use dataplane::state::{GatewayAddress, Service, Workload};

use super::authorization::{self, Translated};
use super::peer_authentication::{self, PeerAuthentication, WorkloadRef};
use super::{services, waypoint_config, waypoints, workloads};
use crate::snapshot::{MeshConfig, Snapshot};
use crate::store::Store;

/// A selector-scoped AuthorizationPolicy: which workloads list it.
struct Selecting {
    namespace: String,
    key: String,
    match_labels: BTreeMap<String, String>,
}

impl Selecting {
    /// Same namespace, or any namespace from the root namespace; an empty `matchLabels`
    /// attaches to nothing (policy-semantics §2.6).
    fn selects(&self, root: &str, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.namespace == namespace || self.namespace == root)
            && !self.match_labels.is_empty()
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

fn peer_authentications(store: &Store) -> Vec<PeerAuthentication> {
    store
        .peer_authentications()
        .map(|pa| PeerAuthentication {
            namespace: pa.metadata.namespace.clone().unwrap_or_default(),
            name: pa.metadata.name.clone().unwrap_or_default(),
            created: pa
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            spec: pa.spec.clone(),
        })
        .collect()
}

/// Translates everything in `store`.
pub fn snapshot(store: &Store, mesh: &MeshConfig) -> Snapshot {
    let root = mesh.root_namespace.as_str();
    let mut policies: BTreeMap<String, Authorization> = BTreeMap::new();
    let mut selecting = Vec::new();
    for policy in store.authorization_policies() {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
        let Translated::Ztunnel {
            policy: translated, ..
        } = authorization::translate_policy(policy, mesh)
        else {
            continue;
        };
        if let Some(selector) = &policy.spec.selector {
            selecting.push(Selecting {
                namespace: namespace.to_string(),
                key: translated.key(),
                match_labels: selector.match_labels.clone(),
            });
        }
        policies.insert(translated.key(), translated);
    }

    let peer_authentications = peer_authentications(store);
    let converted: RefCell<BTreeMap<String, Authorization>> = RefCell::new(BTreeMap::new());
    let policy_refs = |namespace: &str, labels: &BTreeMap<String, String>| -> Vec<String> {
        let mut refs: BTreeSet<String> = selecting
            .iter()
            .filter(|s| s.selects(root, namespace, labels))
            .map(|s| s.key.clone())
            .collect();
        if !peer_authentications.is_empty() {
            let result = peer_authentication::for_workload(
                &peer_authentications,
                root,
                WorkloadRef { namespace, labels },
            );
            if let Some(policy) = result.converted {
                converted.borrow_mut().insert(policy.key(), policy);
            }
            refs.extend(result.references);
        }
        refs.into_iter().collect()
    };
    let mut workloads = workloads::workloads(store, mesh, &policy_refs);
    let services = services::services(store, mesh);

    policies.extend(converted.into_inner());
    // Published whenever any PeerAuthentication exists (policy-semantics §3.2), referenced
    // or not, as istiod does.
    if !peer_authentications.is_empty() {
        let strict = peer_authentication::static_strict_policy(root);
        policies.insert(strict.key(), strict);
    }
    if mesh.features.auto_allow_waypoint_policy {
        allow_from_waypoints(store, mesh, &services, &mut workloads, &mut policies);
    }
    Snapshot {
        workloads,
        services,
        policies,
        waypoints: waypoint_config::waypoint_configs(store, mesh),
        waypoint_proxies: waypoints::proxies(store, mesh),
    }
}

/// `PILOT_AUTO_ALLOW_WAYPOINT_POLICY`: publishes each waypoint's ALLOW policy and adds it to
/// every workload bound to that waypoint, directly (its own `waypoint`) or through a Service
/// it backs, as upstream does. Done on the translated workloads because the bindings are
/// already resolved there, readiness included: a waypoint that is not bound admits nothing
/// extra.
fn allow_from_waypoints(
    store: &Store,
    mesh: &MeshConfig,
    services: &BTreeMap<String, Service>,
    workloads: &mut BTreeMap<String, Workload>,
    policies: &mut BTreeMap<String, Authorization>,
) {
    let allows = waypoints::auto_allow_policies(store, mesh);
    if allows.is_empty() {
        return;
    }
    for workload in workloads.values_mut() {
        let bound: Vec<&GatewayAddress> = workload
            .waypoint
            .iter()
            .chain(
                workload
                    .services
                    .keys()
                    .filter_map(|key| services.get(key)?.waypoint.as_ref()),
            )
            .collect();
        let mut refs: BTreeSet<String> = BTreeSet::new();
        for (address, policy) in &allows {
            if bound.contains(&address) {
                refs.insert(policy.key());
            }
        }
        if !refs.is_empty() {
            refs.extend(workload.authorization_policies.drain(..));
            workload.authorization_policies = refs.into_iter().collect();
        }
    }
    for (_, policy) in allows {
        policies.insert(policy.key(), policy);
    }
}
