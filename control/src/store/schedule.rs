//! The Kubernetes scheduler and IP allocators, played deterministically when there is no real
//! cluster: pods go to the least-loaded node (ties by name, so new pods spread round-robin
//! over nodes sorted by name), pod IPs come from the node's `podCIDR`, and Services without a
//! `clusterIP` get one from the service range.
//!
//! Decisions are remembered and kept while still valid: adding or removing one object never
//! moves another pod or renumbers another service, because the simulator's connections and
//! expectations are addressed by these IPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane::policy::Cidr;
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use super::pods;
use crate::object::Object;

/// Where one pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub node: String,
    pub ips: Vec<IpAddr>,
}

/// The scheduler's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// By `(namespace, pod name)`.
    placements: BTreeMap<(String, String), Placement>,
    /// Allocated (not stated) cluster IPs by `(namespace, service name)`.
    cluster_ips: BTreeMap<(String, String), IpAddr>,
}

/// What a Service says about its cluster IP.
pub(crate) enum ClusterIps {
    Stated(Vec<IpAddr>),
    /// Headless (`clusterIP: None`) or ExternalName: no VIP.
    None,
    Allocate,
}

pub(crate) fn stated_cluster_ips(service: &Service) -> ClusterIps {
    let Some(spec) = &service.spec else {
        return ClusterIps::Allocate;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ClusterIps::None;
    }
    let stated: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => return ClusterIps::Allocate,
    };
    if stated.first() == Some(&"None") {
        return ClusterIps::None;
    }
    // Validation refused unparseable values on apply.
    ClusterIps::Stated(stated.iter().filter_map(|ip| ip.parse().ok()).collect())
}

/// The `n`th address of `cidr`, or `None` past its end.
pub(crate) fn nth_address(cidr: &Cidr, n: u128) -> Option<IpAddr> {
    match cidr.address {
        IpAddr::V4(base) => {
            let size = 1u128 << (32 - u32::from(cidr.length));
            if n >= size {
                return None;
            }
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.length))
                .unwrap_or(0);
            let base = u32::from(base) & mask;
            u32::try_from(n)
                .ok()
                .map(|n| IpAddr::from((base | n).to_be_bytes()))
        }
        IpAddr::V6(base) => {
            let bits = 128 - u32::from(cidr.length);
            if bits < 128 && n >= 1u128 << bits {
                return None;
            }
            let mask = u128::MAX.checked_shl(bits).unwrap_or(0);
            Some(IpAddr::from(((u128::from(base) & mask) | n).to_be_bytes()))
        }
    }
}

/// The lowest address of `cidr` not in `used`, skipping the network address and `.1` (the
/// gateway, or the `kubernetes` Service) and, for IPv4, the broadcast address.
fn allocate(cidr: &Cidr, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let host_bits = if cidr.address.is_ipv4() { 32 } else { 128 } - u32::from(cidr.length);
    let last = if cidr.address.is_ipv4() && host_bits < 128 {
        (1u128 << host_bits).saturating_sub(1)
    } else {
        u128::MAX
    };
    // A /16 has 65k addresses; the walk stops at the first free one.
    (2..last)
        .map_while(|n| nth_address(cidr, n))
        .find(|ip| !used.contains(ip))
}

fn node_cidr(node: &Node) -> Option<Cidr> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .as_deref()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))?
        .parse()
        .ok()
}

/// A pod the cluster should be running, and what it states about its placement.
struct Wanted {
    /// Generated pods sort by their Deployment and index (`web-2` before `web-10`).
    order: (String, String, u32),
    node: Option<String>,
    ips: Vec<IpAddr>,
}

fn stated(pod: &Pod) -> (Option<String>, Vec<IpAddr>) {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    (node, ips)
}

fn wanted_pods(objects: &[&Object]) -> BTreeMap<(String, String), Wanted> {
    let mut wanted = BTreeMap::new();
    for object in objects {
        if let Object::Pod(pod) = object {
            let (node, ips) = stated(pod);
            let (ns, name) = (object.namespace().to_string(), object.name().to_string());
            wanted.insert(
                (ns.clone(), name.clone()),
                Wanted {
                    order: (ns, name, 0),
                    node,
                    ips,
                },
            );
        }
    }
    for object in objects {
        if let Object::Deployment(deployment) = object {
            let ns = object.namespace();
            for (index, name) in pods::deployment_pod_names(deployment) {
                // An explicit Pod of the same name wins.
                wanted
                    .entry((ns.to_string(), name))
                    .or_insert_with(|| Wanted {
                        order: (ns.to_string(), object.name().to_string(), index),
                        node: None,
                        ips: Vec::new(),
                    });
            }
        }
    }
    wanted
}

impl Schedule {
    /// Brings the decisions in line with `objects` (every object, declared and generated, in
    /// key order): forgets pods and services that are gone or whose placement is no longer
    /// valid, keeps the rest, and places the new ones.
    pub(crate) fn reconcile(&mut self, objects: &[&Object], service_cidr: &Cidr) {
        self.reconcile_pods(objects);
        self.reconcile_services(objects, service_cidr);
    }

    /// Takes placements only as the cluster reports them: a Pod with a node and an address
    /// in its status is placed there; any other pod is pending; no Service gets an address
    /// it does not state.
    pub(crate) fn as_reported(&mut self, objects: &[&Object]) {
        self.cluster_ips.clear();
        self.placements.clear();
        for object in objects {
            if let Object::Pod(pod) = object
                && let (Some(node), ips) = stated(pod)
                && !ips.is_empty()
            {
                self.placements.insert(
                    (object.namespace().to_string(), object.name().to_string()),
                    Placement { node, ips },
                );
            }
        }
    }

    pub(crate) fn placement(&self, namespace: &str, name: &str) -> Option<&Placement> {
        self.placements
            .get(&(namespace.to_string(), name.to_string()))
    }

    pub(crate) fn cluster_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.cluster_ips
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    fn reconcile_pods(&mut self, objects: &[&Object]) {
        let nodes: BTreeMap<String, Option<Cidr>> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Node(node) => Some((o.name().to_string(), node_cidr(node))),
                _ => None,
            })
            .collect();
        let wanted = wanted_pods(objects);

        // Keep what is still wanted and still valid.
        self.placements.retain(|key, placement| {
            let Some(want) = wanted.get(key) else {
                return false;
            };
            if want.node.as_ref().is_some_and(|n| n != &placement.node) {
                return false;
            }
            if !want.ips.is_empty() {
                return want.ips == placement.ips;
            }
            // Placed by us: the node and its range must still be there.
            match nodes.get(&placement.node) {
                Some(Some(cidr)) => placement.ips.iter().all(|ip| cidr.contains(*ip)),
                _ => false,
            }
        });

        let mut used: BTreeSet<IpAddr> = self
            .placements
            .values()
            .flat_map(|p| p.ips.iter().copied())
            .chain(wanted.values().flat_map(|w| w.ips.iter().copied()))
            .collect();
        let mut load: BTreeMap<&str, usize> = nodes
            .iter()
            .filter(|(_, cidr)| cidr.is_some())
            .map(|(name, _)| (name.as_str(), 0))
            .collect();
        for placement in self.placements.values() {
            if let Some(count) = load.get_mut(placement.node.as_str()) {
                *count += 1;
            }
        }

        let mut new: Vec<(&(String, String), &Wanted)> = wanted
            .iter()
            .filter(|(key, _)| !self.placements.contains_key(*key))
            .collect();
        new.sort_by(|a, b| a.1.order.cmp(&b.1.order));
        for (key, want) in new {
            let node = match &want.node {
                Some(node) => Some(node.clone()),
                None => want
                    .ips
                    .first()
                    .and_then(|ip| {
                        nodes
                            .iter()
                            .find(|(_, cidr)| cidr.is_some_and(|c| c.contains(*ip)))
                            .map(|(name, _)| name.clone())
                    })
                    .or_else(|| {
                        load.iter()
                            .min_by_key(|(name, count)| (**count, **name))
                            .map(|(name, _)| name.to_string())
                    }),
            };
            let Some(node) = node else {
                continue; // no node to run on: stays pending
            };
            let ips = if want.ips.is_empty() {
                let Some(ip) = nodes
                    .get(&node)
                    .copied()
                    .flatten()
                    .and_then(|cidr| allocate(&cidr, &used))
                else {
                    continue; // the node's range is full, or it has none
                };
                used.insert(ip);
                vec![ip]
            } else {
                want.ips.clone()
            };
            if let Some(count) = load.get_mut(node.as_str()) {
                *count += 1;
            }
            self.placements.insert(key.clone(), Placement { node, ips });
        }
    }

    fn reconcile_services(&mut self, objects: &[&Object], cidr: &Cidr) {
        let mut stated: BTreeSet<IpAddr> = BTreeSet::new();
        let mut needing: Vec<(String, String)> = Vec::new();
        for object in objects {
            if let Object::Service(service) = object {
                match stated_cluster_ips(service) {
                    ClusterIps::Stated(ips) => stated.extend(ips),
                    ClusterIps::None => {}
                    ClusterIps::Allocate => {
                        needing.push((object.namespace().to_string(), object.name().to_string()))
                    }
                }
            }
        }
        let needed: BTreeSet<&(String, String)> = needing.iter().collect();
        self.cluster_ips
            .retain(|key, ip| needed.contains(key) && !stated.contains(ip) && cidr.contains(*ip));
        let mut used: BTreeSet<IpAddr> = stated;
        used.extend(self.cluster_ips.values().copied());
        // `needing` is in (namespace, name) order: the store's order.
        for key in needing {
            if self.cluster_ips.contains_key(&key) {
                continue;
            }
            if let Some(ip) = allocate(cidr, &used) {
                used.insert(ip);
                self.cluster_ips.insert(key, ip);
            }
        }
    }
}
