//! Helpers: manifests in, store or snapshot out.

use control::snapshot::{MeshConfig, Snapshot};
use control::sources::{self, Error};
use control::store::{Store, StoreConfig};
use control::translate;

/// Two nodes with pod ranges, and the ambient namespace `shop`.
pub const BASE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDR: 10.244.2.0/24}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
"#;

pub fn try_store(yaml: &str) -> Result<Store, Error> {
    let loaded = sources::parse_str(yaml, "test.yaml")?;
    let mut store = Store::new(StoreConfig::default());
    sources::apply_loaded(&mut store, loaded)?;
    Ok(store)
}

pub fn store(yaml: &str) -> Store {
    try_store(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// The error text for manifests that must fail.
pub fn error(yaml: &str) -> String {
    match try_store(yaml) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

pub fn snapshot_of(store: &Store) -> Snapshot {
    translate::snapshot(store, &MeshConfig::default())
}

/// BASE plus `yaml`, translated.
pub fn snap(yaml: &str) -> Snapshot {
    snapshot_of(&store(&format!("{BASE}\n---\n{yaml}")))
}

/// Applies more manifests to an existing store, one batch.
pub fn apply(store: &mut Store, yaml: &str) -> bool {
    let loaded = sources::parse_str(yaml, "more.yaml").unwrap();
    sources::apply_loaded(store, loaded).unwrap_or_else(|e| panic!("{e}"))
}

pub fn uid(ns: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{ns}/{name}")
}

/// A one-replica Deployment with labels, a service account and container ports.
pub fn deployment(ns: &str, name: &str, labels: &str, sa: &str, ports: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}{labels}}}
    spec:
      serviceAccountName: {sa}
      containers:
      - name: main
        image: x
        ports: [{ports}]
"#
    )
}
