//! The cluster as the scenario describes it: its manifests (and Node objects for its nodes)
//! parsed and applied to a store, checked before the run, and the pod table the world routes
//! and serves by.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use control::object::Kind;
use control::sources::Loaded;
use control::store::{PodOwner, Store, StoreConfig};

use super::PodInfo;
use crate::apps::AppKind;
use crate::scenario::{Action, Scenario, ScenarioError, Target};

/// The cluster's Node objects for the scenario's nodes: `podCIDR` 10.244.<i>.0/24. Public so
/// that a real-kernel run (`e2e`) gives istiod and its own placement the same nodes.
pub fn node_manifests(nodes: &[String]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: 10.{}.{}.0/24\n---\n",
                244 + (i + 1) / 256,
                (i + 1) % 256
            )
        })
        .collect()
}

/// Parses manifests that start at `line` of the scenario file; errors name that file's line.
fn parse_manifests(
    scenario: &Scenario,
    text: &str,
    line: usize,
) -> Result<Vec<Loaded>, ScenarioError> {
    control::sources::parse_str(text, &scenario.file).map_err(|e| ScenarioError {
        file: scenario.file.clone(),
        line: Some(line + e.line.unwrap_or(1) - 1),
        message: match &e.object {
            Some(o) => format!("{o}: {}", e.message),
            None => e.message.clone(),
        },
    })
}

pub(super) fn apply_to(
    scenario: &Scenario,
    store: &mut Store,
    loaded: Vec<Loaded>,
    line: usize,
) -> Result<(), ScenarioError> {
    control::sources::apply_loaded(store, loaded).map_err(|e| {
        let (at, message) = match &e {
            control::sources::Error::Source(s) => (s.line, s.message.clone()),
            control::sources::Error::Rejected { origin, error } => {
                (Some(origin.line), error.to_string())
            }
        };
        ScenarioError {
            file: scenario.file.clone(),
            line: Some(line + at.unwrap_or(1) - 1),
            message,
        }
    })?;
    Ok(())
}

/// Every running pod by IP, reduced to what the world needs: node, enrolment, waypoint, app
/// ports. Public so that a real-kernel run (`e2e`) places and serves pods as the world does.
pub fn pod_table(store: &Store) -> BTreeMap<IpAddr, PodInfo> {
    let mut table = BTreeMap::new();
    for pod in store.pods() {
        let (Some(node), Some(&ip)) = (pod.node, pod.ips.first()) else {
            continue;
        };
        if pod.terminated || pod.host_network() {
            continue;
        }
        let ns_mode = store
            .namespace(pod.namespace)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get("istio.io/dataplane-mode"))
            .cloned();
        let pod_mode = pod.labels.get("istio.io/dataplane-mode").cloned();
        let enrolled = match pod_mode.as_deref() {
            Some("none") => false,
            Some("ambient") => true,
            _ => ns_mode.as_deref() == Some("ambient"),
        };
        let waypoint =
            control::translate::waypoints::is_waypoint_pod(store, pod.namespace, pod.labels).then(
                || {
                    let gateway = pod
                        .labels
                        .get("gateway.networking.k8s.io/gateway-name")
                        .cloned()
                        .unwrap_or_default();
                    (gateway, pod.service_account().to_string())
                },
            );
        let mut ports = BTreeMap::new();
        // A waypoint's own pod runs the waypoint, not an application.
        let containers = if waypoint.is_some() {
            &[][..]
        } else {
            pod.spec.map(|s| s.containers.as_slice()).unwrap_or(&[])
        };
        for container in containers {
            for p in container.ports.iter().flatten() {
                if let Ok(port) = u16::try_from(p.container_port) {
                    let name = p.name.clone();
                    let kind = AppKind::for_port_name(name.as_deref());
                    ports.insert(port, (name, kind));
                }
            }
        }
        table.insert(
            ip,
            PodInfo {
                namespace: pod.namespace.to_string(),
                name: pod.name.clone(),
                node: node.to_string(),
                ip,
                enrolled,
                deployment: match &pod.owner {
                    PodOwner::Deployment(d) => Some(d.clone()),
                    PodOwner::Pod => None,
                },
                labels: pod.labels.clone(),
                service_account: pod.service_account().to_string(),
                ports,
                waypoint,
            },
        );
    }
    table
}

/// The scenario's manifests applied in order to scratch stores: every manifest is checked
/// before the run starts, and every port some pod ever declares is known.
pub(super) struct Prepared {
    pub(super) initial: Vec<Loaded>,
    /// Per timeline step (apply steps only).
    pub(super) applies: BTreeMap<usize, Vec<Loaded>>,
    pub(super) app_ports: BTreeSet<u16>,
}

pub(super) fn prepare(scenario: &Scenario) -> Result<Prepared, ScenarioError> {
    let mut store = Store::new(StoreConfig::default());
    let nodes = parse_manifests(scenario, &node_manifests(&scenario.nodes), 1)?;
    apply_to(scenario, &mut store, nodes.clone(), 1)?;
    let mut initial = nodes;
    let cluster = parse_manifests(scenario, &scenario.cluster, scenario.cluster_line)?;
    apply_to(scenario, &mut store, cluster.clone(), scenario.cluster_line)?;
    initial.extend(cluster);
    let mut app_ports = BTreeSet::new();
    let mut seen_pods: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut services: BTreeSet<(String, String)> = BTreeSet::new();
    let mut deployments: BTreeSet<(String, String)> = BTreeSet::new();
    let mut note = |store: &Store, app_ports: &mut BTreeSet<u16>| {
        for pod in pod_table(store).values() {
            app_ports.extend(pod.ports.keys().copied());
            seen_pods.insert((pod.namespace.clone(), pod.name.clone()), ());
            if let Some(d) = &pod.deployment {
                deployments.insert((pod.namespace.clone(), d.clone()));
            }
        }
        for s in store.services() {
            services.insert((
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            ));
        }
    };
    note(&store, &mut app_ports);
    let mut applies = BTreeMap::new();
    for (index, step) in scenario.timeline.iter().enumerate() {
        match &step.action {
            Action::Apply { manifests, line } => {
                let loaded = parse_manifests(scenario, manifests, *line)?;
                apply_to(scenario, &mut store, loaded.clone(), *line)?;
                applies.insert(index, loaded);
            }
            Action::Delete(r) => {
                if let Some(kind) = Kind::from_name(&r.kind) {
                    store.delete(kind, &r.namespace, &r.name);
                }
            }
            _ => continue,
        }
        note(&store, &mut app_ports);
    }
    let text = std::fs::read_to_string(&scenario.file).unwrap_or_default();
    for t in &scenario.traffic {
        let check = |target: &Target| -> Result<(), ScenarioError> {
            let known = match target {
                Target::Pod(ns, n) => seen_pods.contains_key(&(ns.clone(), n.clone())),
                Target::Deployment(ns, n) => deployments.contains(&(ns.clone(), n.clone())),
                Target::Service(ns, n) => services.contains(&(ns.clone(), n.clone())),
            };
            if known {
                Ok(())
            } else {
                let name = match target {
                    Target::Pod(ns, n) | Target::Deployment(ns, n) | Target::Service(ns, n) => {
                        format!("{ns}/{n}")
                    }
                };
                Err(ScenarioError {
                    file: scenario.file.clone(),
                    line: crate::scenario::line_of(&text, &name),
                    message: format!(
                        "traffic {:?}: {} never exists in this scenario",
                        t.name,
                        target.describe()
                    ),
                })
            }
        };
        check(&t.from.0)?;
        check(&t.to.target)?;
    }
    Ok(Prepared {
        initial,
        applies,
        app_ports,
    })
}
