//! Pods as the mesh sees them: Pod objects and the pods Deployments would create (declared
//! Deployments and the ones the store generated for waypoints alike), each with the node and
//! IPs the scheduler gave it (or it stated).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::Store;

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// What created a pod, for the workload's name and type in telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOwner {
    /// A Deployment: ours when expanded by the store, or found through the ReplicaSet
    /// owner of a Pod object.
    Deployment(String),
    /// A bare pod (or an owner the mesh does not name).
    Pod,
}

/// One pod, explicit or expanded from a Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub name: String,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    /// The pod's spec, or the Deployment's pod template spec.
    pub spec: Option<&'a PodSpec>,
    pub owner: PodOwner,
    /// `None` while no node could take it (no Node objects with a `podCIDR`).
    pub node: Option<&'a str>,
    pub ips: Vec<IpAddr>,
    /// Running and Ready (scheduled pods without a status are).
    pub ready: bool,
    /// Succeeded or Failed: no longer a workload.
    pub terminated: bool,
}

impl PodView<'_> {
    pub fn service_account(&self) -> &str {
        self.spec
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            .filter(|sa| !sa.is_empty())
            .unwrap_or("default")
    }

    pub fn host_network(&self) -> bool {
        self.spec.and_then(|s| s.host_network).unwrap_or(false)
    }

    /// The container port called `name`, for named `targetPort`s.
    pub fn named_port(&self, name: &str) -> Option<i32> {
        self.spec?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }
}

/// `(index, name)` of the pods a Deployment runs: `<deployment>-<index>`, stable across
/// changes so that scaling never renames a pod.
pub(crate) fn deployment_pod_names(deployment: &Deployment) -> Vec<(u32, String)> {
    let name = deployment.metadata.name.as_deref().unwrap_or("");
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let replicas = u32::try_from(replicas).unwrap_or(0);
    (0..replicas).map(|i| (i, format!("{name}-{i}"))).collect()
}

/// A ReplicaSet owner `<deployment>-<pod-template-hash>` names the Deployment.
fn owner_of(pod: &Pod) -> PodOwner {
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet")
        .and_then(|o| {
            let hash = hash?;
            o.name.strip_suffix(&format!("-{hash}"))
        })
        .map_or(PodOwner::Pod, |d| PodOwner::Deployment(d.to_string()))
}

fn readiness(pod: &Pod) -> (bool, bool) {
    let Some(status) = &pod.status else {
        return (true, false);
    };
    let phase = status.phase.as_deref();
    let terminated = matches!(phase, Some("Succeeded" | "Failed"));
    let running = phase.is_none_or(|p| p == "Running");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .is_none_or(|c| c.status == "True");
    (running && ready && !terminated, terminated)
}

impl Store {
    /// Every pod in `(namespace, name)` order: Pod objects, and, when the store plays the
    /// scheduler, the pods of each Deployment (unless a Pod object has the same name), with
    /// their placement.
    pub fn pods(&self) -> Vec<PodView<'_>> {
        let mut pods: BTreeMap<(&str, String), PodView<'_>> = BTreeMap::new();
        let deployments = self.deployments().filter(|_| self.config.schedule);
        for deployment in deployments {
            let namespace = deployment.metadata.namespace.as_deref().unwrap_or("");
            let template = deployment.spec.as_ref().map(|s| &s.template);
            let metadata = template.and_then(|t| t.metadata.as_ref());
            for (_, name) in deployment_pod_names(deployment) {
                let placement = self.schedule.placement(namespace, &name);
                let view = PodView {
                    namespace,
                    name: name.clone(),
                    labels: metadata.and_then(|m| m.labels.as_ref()).unwrap_or(&EMPTY),
                    annotations: metadata
                        .and_then(|m| m.annotations.as_ref())
                        .unwrap_or(&EMPTY),
                    spec: template.and_then(|t| t.spec.as_ref()),
                    owner: PodOwner::Deployment(
                        deployment.metadata.name.clone().unwrap_or_default(),
                    ),
                    node: placement.map(|p| p.node.as_str()),
                    ips: placement.map(|p| p.ips.clone()).unwrap_or_default(),
                    ready: true,
                    terminated: false,
                };
                pods.insert((namespace, name), view);
            }
        }
        for pod in self.pod_objects() {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
            let name = pod.metadata.name.clone().unwrap_or_default();
            let placement = self.schedule.placement(namespace, &name);
            let (ready, terminated) = readiness(pod);
            let view = PodView {
                namespace,
                name: name.clone(),
                labels: pod.metadata.labels.as_ref().unwrap_or(&EMPTY),
                annotations: pod.metadata.annotations.as_ref().unwrap_or(&EMPTY),
                spec: pod.spec.as_ref(),
                owner: owner_of(pod),
                node: placement.map(|p| p.node.as_str()),
                ips: placement.map(|p| p.ips.clone()).unwrap_or_default(),
                ready,
                terminated,
            };
            pods.insert((namespace, name), view);
        }
        pods.into_values().collect()
    }
}
