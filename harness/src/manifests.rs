//! Applying a repository's own manifests to a private API server as a user would with
//! `kubectl apply -f`: CustomResourceDefinitions (waiting until each is served) and RBAC.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use serde::de::DeserializeOwned;

use crate::objects::poll;

/// How long a new CRD may take to be established (usually well under a second).
const ESTABLISHED_LIMIT: Duration = Duration::from_secs(30);

/// The documents of a multi-document YAML text, typed; empty documents skipped.
///
/// Panics naming the document that does not read as `T`: the manifests are the repository's.
pub fn documents<T: DeserializeOwned>(text: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .filter_map(|(i, doc)| {
            let value = <Option<serde_yaml::Value> as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("document {i}: {e}"))?;
            Some(serde_yaml::from_value(value).unwrap_or_else(|e| panic!("document {i}: {e}")))
        })
        .collect()
}

/// Creates every object of `texts` (`name`, YAML) — CRDs, ClusterRoles, ClusterRoleBindings,
/// Roles, RoleBindings — and waits until every CRD is established, so the next write of a
/// custom object is accepted. Panics naming the file and object the API server refused.
pub async fn apply(client: &kube::Client, texts: &[(String, String)]) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let post = PostParams::default();
    for (file, text) in texts {
        for value in documents::<serde_yaml::Value>(text) {
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .map(str::to_owned);
            let namespace = value
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_owned();
            let created = match kind.as_deref() {
                Some("CustomResourceDefinition") => {
                    let crd: CustomResourceDefinition = typed(file, value);
                    names.push(crd.metadata.name.clone().unwrap_or_default());
                    crds.create(&post, &crd).await.map(drop)
                }
                Some("ClusterRole") => Api::all(client.clone())
                    .create(&post, &typed::<ClusterRole>(file, value))
                    .await
                    .map(drop),
                Some("ClusterRoleBinding") => Api::all(client.clone())
                    .create(&post, &typed::<ClusterRoleBinding>(file, value))
                    .await
                    .map(drop),
                Some("Role") => Api::namespaced(client.clone(), &namespace)
                    .create(&post, &typed::<Role>(file, value))
                    .await
                    .map(drop),
                Some("RoleBinding") => Api::namespaced(client.clone(), &namespace)
                    .create(&post, &typed::<RoleBinding>(file, value))
                    .await
                    .map(drop),
                other => panic!("{file}: cannot apply kind {other:?}"),
            };
            created.unwrap_or_else(|e| panic!("{file}: {kind:?}: {e}"));
        }
    }
    for name in names {
        let established = poll(ESTABLISHED_LIMIT, || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
        assert!(established.is_some(), "CRD {name} never became established");
    }
}

fn typed<T: DeserializeOwned>(file: &str, value: serde_yaml::Value) -> T {
    serde_yaml::from_value(value)
        .unwrap_or_else(|e| panic!("{file}: not a {}: {e}", std::any::type_name::<T>()))
}
