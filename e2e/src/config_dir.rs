//! istiod's `--config-dir` through a run: the scenario's manifests one object per document,
//! changed by the timeline's `apply` and `delete` as `kubectl` would change a cluster, and
//! written back whole (staged, then renamed into place) so istiod, which follows the directory
//! (`--config-poll`), never reads half a change.
//!
//! A step that would add, move or relabel pods, or change a Service's addresses or endpoints,
//! is not something the namespace cluster can follow mid-run (its namespaces, veths, apps and
//! kube-proxy rules are made once): [`moves_pods`] names such a step, and the scenario is a
//! skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control::object::{Kind, ObjectKey};
use control::sources::parse_str;
use serde::Deserialize;
use sim::Scenario;
use sim::scenario::Action;

use crate::Error;
use crate::placement::Placement;

/// How often istiod checks its config dir here: a timeline change reaches the proxies within
/// this and the debounce, well inside the simulator's one-second convergence bound.
pub const POLL: Duration = Duration::from_millis(100);

/// The file the cluster's manifests live in (the Node manifests are in `nodes.yaml`).
const CLUSTER_FILE: &str = "cluster.yaml";

/// The cluster's manifests, one YAML document per object, by object.
#[derive(Debug, Clone)]
pub struct ClusterManifests {
    documents: BTreeMap<ObjectKey, String>,
}

fn manifests_error(file: &str, why: impl std::fmt::Display) -> Error {
    Error::Manifests(format!("{file}: {why}"))
}

/// Every object `text` declares, each as a document of its own (a `List`'s items apart).
fn documents(text: &str, file: &str) -> Result<Vec<(ObjectKey, String)>, Error> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| manifests_error(file, e))?;
        if value.is_null() {
            continue;
        }
        let items = match value.get("items").and_then(|i| i.as_sequence()) {
            Some(items) if value.get("kind").and_then(|k| k.as_str()) == Some("List") => {
                items.clone()
            }
            _ => vec![value],
        };
        for item in items {
            let text = serde_yaml::to_string(&item).map_err(|e| manifests_error(file, e))?;
            let loaded = parse_str(&text, file).map_err(|e| manifests_error(file, e))?;
            for l in loaded {
                out.push((l.object.key(), text.clone()));
            }
        }
    }
    Ok(out)
}

impl ClusterManifests {
    /// The scenario's cluster, as read from `file`.
    pub fn new(cluster: &str, file: &str) -> Result<ClusterManifests, Error> {
        let mut manifests = ClusterManifests {
            documents: BTreeMap::new(),
        };
        manifests.apply(cluster, file)?;
        Ok(manifests)
    }

    /// Adds or replaces every object `text` declares.
    pub fn apply(&mut self, text: &str, file: &str) -> Result<(), Error> {
        self.documents.extend(documents(text, file)?);
        Ok(())
    }

    /// Removes one object (a Namespace with everything in it, as Kubernetes does); an unknown
    /// kind or object removes nothing, as the simulator's store does.
    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        let Some(kind) = Kind::from_name(kind) else {
            return;
        };
        let namespace = if kind.namespaced() { namespace } else { "" };
        self.documents
            .retain(|key, _| !(key.kind == kind && key.namespace == namespace && key.name == name));
        if kind == Kind::Namespace {
            self.documents.retain(|key, _| key.namespace != name);
        }
    }

    /// All of it as one YAML stream.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for document in self.documents.values() {
            text.push_str("---\n");
            text.push_str(document);
        }
        text
    }

    /// Replaces `dir`'s cluster file with this, staged beside it and renamed into place.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let staged: PathBuf = dir.join(format!(".{CLUSTER_FILE}.staged"));
        std::fs::write(&staged, self.text())
            .map_err(|e| Error::io(format!("writing {}", staged.display()), e))?;
        let path = dir.join(CLUSTER_FILE);
        std::fs::rename(&staged, &path)
            .map_err(|e| Error::io(format!("replacing {}", path.display()), e))
    }

    /// Applies timeline step `action`, if it is an `apply` or a `delete`.
    pub fn step(&mut self, action: &Action, file: &str) -> Result<bool, Error> {
        match action {
            Action::Apply { manifests, .. } => self.apply(manifests, file).map(|()| true),
            Action::Delete(r) => {
                self.delete(&r.kind, &r.namespace, &r.name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// The first timeline `apply`/`delete` that would change the pods or Services the namespace
/// cluster was built for, described, or `None` when every such step only changes what istiod
/// serves (policies, routes, labels of namespaces and Services…).
pub fn moves_pods(scenario: &Scenario, initial: &Placement) -> Result<Option<String>, Error> {
    let mut manifests = ClusterManifests::new(&scenario.cluster, &scenario.file)?;
    for step in &scenario.timeline {
        if !manifests.step(&step.action, &scenario.file)? {
            continue;
        }
        let after = Placement::with_cluster(scenario, &manifests.text())?;
        if after.pods != initial.pods || after.services != initial.services {
            return Ok(Some(format!(
                "timeline step at {}ms ({}) adds, moves or relabels pods or changes a Service's \
                 endpoints: the namespace cluster's pods are made once",
                step.at.as_millis(),
                step.action.describe()
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n\
spec: {action: DENY, rules: [{}]}\n";

    fn keys(m: &ClusterManifests) -> Vec<String> {
        m.documents.keys().map(|k| k.to_string()).collect()
    }

    #[test]
    fn apply_replaces_by_object_and_delete_cascades_from_a_namespace() {
        let mut m = ClusterManifests::new(CLUSTER, "c.yaml").expect("parses");
        assert_eq!(keys(&m).len(), 2);
        m.apply(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
metadata: {name: p, namespace: shop}\nspec: {action: ALLOW}\n",
            "step",
        )
        .expect("applies");
        assert_eq!(keys(&m).len(), 2, "same object: replaced, not added");
        assert!(m.text().contains("ALLOW"));
        let reread = parse_str(&m.text(), "again").expect("what is written reads back");
        assert_eq!(reread.len(), 2);
        m.delete("Namespace", "", "shop");
        assert!(
            keys(&m).is_empty(),
            "deleting a namespace deletes what is in it"
        );
    }

    #[test]
    fn a_list_is_split_into_its_items() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  \
metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\n";
        let m = ClusterManifests::new(list, "l.yaml").expect("parses");
        assert_eq!(keys(&m).len(), 2);
    }

    #[test]
    fn a_malformed_step_is_an_error_naming_where() {
        let mut m = ClusterManifests::new(CLUSTER, "c.yaml").expect("parses");
        let e = m.apply("kind: [", "step at 5s").expect_err("malformed");
        assert!(e.to_string().contains("step at 5s"), "{e}");
        assert_eq!(keys(&m).len(), 2, "nothing lost");
    }
}
