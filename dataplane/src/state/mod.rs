//! What the ztunnel knows about the mesh: workloads, services and authorization policies,
//! indexed for the lookups the proxies make, and shared behind a handle that announces changes.

mod service;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use crate::policy::{Authorization, Scope};

pub use service::Service;
pub use workload::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, PortMap,
    TunnelProtocol, Workload, WorkloadStatus,
};

/// The indexed state. Every map is ordered, so anything derived from it is deterministic.
#[derive(Debug, Default, Clone)]
pub struct State {
    workloads: BTreeMap<String, Arc<Workload>>,
    workload_by_ip: BTreeMap<NetworkAddress, String>,
    services: BTreeMap<String, Arc<Service>>,
    service_by_vip: BTreeMap<NetworkAddress, String>,
    /// Service key → uids of its endpoint workloads.
    endpoints: BTreeMap<String, BTreeSet<String>>,
    policies: BTreeMap<String, Arc<Authorization>>,
    /// Keys of the mesh-wide policies, and of each namespace's namespace-wide ones: a
    /// connection looks at those and the ones its workload names, never at every policy.
    global_policies: BTreeMap<String, Arc<Authorization>>,
    namespace_policies: BTreeMap<String, BTreeMap<String, Arc<Authorization>>>,
}

impl State {
    pub fn insert_workload(&mut self, workload: Workload) {
        self.remove_workload(&workload.uid);
        for ip in &workload.workload_ips {
            let key = NetworkAddress {
                network: workload.network.clone(),
                address: *ip,
            };
            self.workload_by_ip.insert(key, workload.uid.clone());
        }
        for service in workload.services.keys() {
            self.endpoints
                .entry(service.clone())
                .or_default()
                .insert(workload.uid.clone());
        }
        self.workloads
            .insert(workload.uid.clone(), Arc::new(workload));
    }

    pub fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let old = self.workloads.remove(uid)?;
        for ip in &old.workload_ips {
            let key = NetworkAddress {
                network: old.network.clone(),
                address: *ip,
            };
            if self.workload_by_ip.get(&key).map(String::as_str) == Some(uid) {
                self.workload_by_ip.remove(&key);
            }
        }
        for service in old.services.keys() {
            if let Some(set) = self.endpoints.get_mut(service) {
                set.remove(uid);
                if set.is_empty() {
                    self.endpoints.remove(service);
                }
            }
        }
        Some(old)
    }

    pub fn insert_service(&mut self, service: Service) {
        let key = service.key();
        self.remove_service(&key);
        for vip in &service.vips {
            self.service_by_vip.insert(vip.clone(), key.clone());
        }
        self.services.insert(key, Arc::new(service));
    }

    pub fn remove_service(&mut self, key: &str) -> Option<Arc<Service>> {
        let old = self.services.remove(key)?;
        for vip in &old.vips {
            if self.service_by_vip.get(vip).map(String::as_str) == Some(key) {
                self.service_by_vip.remove(vip);
            }
        }
        Some(old)
    }

    pub fn insert_policy(&mut self, policy: Authorization) {
        let key = policy.key();
        self.remove_policy(&key);
        let policy = Arc::new(policy);
        match policy.scope {
            Scope::Global => {
                self.global_policies.insert(key.clone(), policy.clone());
            }
            Scope::Namespace => {
                self.namespace_policies
                    .entry(policy.namespace.clone())
                    .or_default()
                    .insert(key.clone(), policy.clone());
            }
            Scope::WorkloadSelector => {}
        }
        self.policies.insert(key, policy);
    }

    pub fn remove_policy(&mut self, key: &str) -> Option<Arc<Authorization>> {
        let old = self.policies.remove(key)?;
        self.global_policies.remove(key);
        if let Some(keys) = self.namespace_policies.get_mut(&old.namespace) {
            keys.remove(key);
            if keys.is_empty() {
                self.namespace_policies.remove(&old.namespace);
            }
        }
        Some(old)
    }

    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        let key = NetworkAddress {
            network: network.to_string(),
            address: ip,
        };
        self.workload_by_ip
            .get(&key)
            .and_then(|uid| self.workloads.get(uid))
            .cloned()
    }

    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        let key = NetworkAddress {
            network: network.to_string(),
            address: ip,
        };
        self.service_by_vip
            .get(&key)
            .and_then(|k| self.services.get(k))
            .cloned()
    }

    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }

    /// The endpoint workloads of a service, in uid order.
    pub fn endpoints(&self, service_key: &str) -> Vec<Arc<Workload>> {
        self.endpoints
            .get(service_key)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.workloads.get(uid).cloned())
            .collect()
    }

    /// The policies that apply to `workload`, in a stable order: global, then its namespace's,
    /// then those it references by name. Names not (yet) known are skipped, as upstream.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let mut out: Vec<Arc<Authorization>> =
            match self.namespace_policies.get(&workload.namespace) {
                // Both in key order, merged: the order every run sees.
                Some(namespace) => {
                    let mut merged: Vec<(&String, &Arc<Authorization>)> =
                        self.global_policies.iter().chain(namespace).collect();
                    merged.sort_by(|a, b| a.0.cmp(b.0));
                    merged.into_iter().map(|(_, p)| p.clone()).collect()
                }
                None => self.global_policies.values().cloned().collect(),
            };
        for name in &workload.authorization_policies {
            match self.policies.get(name) {
                Some(p) if !out.iter().any(|o| Arc::ptr_eq(o, p)) => out.push(p.clone()),
                Some(_) => {}
                None => {
                    tracing::warn!(policy = %name, workload = %workload.uid, "referenced policy not known; skipped")
                }
            }
        }
        out
    }
}

/// Shared state with a change counter that connection tracking and readiness watch.
#[derive(Debug, Clone)]
pub struct StateHandle {
    state: Arc<RwLock<State>>,
    version: watch::Sender<u64>,
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new(State::default())
    }
}

impl StateHandle {
    pub fn new(state: State) -> Self {
        StateHandle {
            state: Arc::new(RwLock::new(state)),
            version: watch::Sender::new(0),
        }
    }

    /// A consistent read of the whole state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Applies a change and tells every watcher.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = {
            let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        };
        self.version.send_modify(|v| *v += 1);
        result
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;

    fn workload(uid: &str, ip: &str, svc: Option<&str>) -> Workload {
        let mut w = Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "shop".into(),
            workload_ips: vec![ip.parse().unwrap()],
            ..Workload::default()
        };
        if let Some(s) = svc {
            w.services.insert(s.into(), [(80, 8080)].into());
        }
        w
    }

    #[test]
    fn indexes_follow_updates() {
        let mut s = State::default();
        s.insert_workload(workload(
            "a",
            "10.0.0.1",
            Some("shop/cart.shop.svc.cluster.local"),
        ));
        s.insert_workload(workload(
            "b",
            "10.0.0.2",
            Some("shop/cart.shop.svc.cluster.local"),
        ));
        assert_eq!(
            s.workload_by_ip("", "10.0.0.1".parse().unwrap())
                .unwrap()
                .uid,
            "a"
        );
        assert_eq!(s.endpoints("shop/cart.shop.svc.cluster.local").len(), 2);
        // moving a workload to a new IP drops the old index entry
        s.insert_workload(workload("a", "10.0.0.9", None));
        assert!(s.workload_by_ip("", "10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(s.endpoints("shop/cart.shop.svc.cluster.local").len(), 1);
        s.remove_workload("b");
        assert!(s.endpoints("shop/cart.shop.svc.cluster.local").is_empty());
    }

    #[test]
    fn policies_for_pools_scopes() {
        let mut s = State::default();
        let mk = |ns: &str, name: &str, scope| Authorization {
            name: name.into(),
            namespace: ns.into(),
            scope,
            action: Action::Allow,
            ..Authorization::default()
        };
        s.insert_policy(mk("istio-system", "mesh", Scope::Global));
        s.insert_policy(mk("shop", "ns", Scope::Namespace));
        s.insert_policy(mk("other", "ns", Scope::Namespace));
        s.insert_policy(mk("shop", "sel", Scope::WorkloadSelector));
        s.insert_policy(mk("shop", "unreferenced", Scope::WorkloadSelector));
        let mut w = workload("a", "10.0.0.1", None);
        w.authorization_policies = vec!["shop/sel".into(), "shop/missing".into()];
        let names: Vec<String> = s.policies_for(&w).iter().map(|p| p.key()).collect();
        assert_eq!(names, ["istio-system/mesh", "shop/ns", "shop/sel"]);
    }
}
