//! AuthorizationPolicies written through the API as a user would, valid or not.

use kube::Api;
use kube::api::PostParams;
use kube::core::{ApiResource, DynamicObject};

/// Creates a `security.istio.io/v1` AuthorizationPolicy with `spec` as written, unchecked:
/// the CRD keeps whatever it is given.
pub async fn authorization_policy(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) {
    let data = serde_json::json!({ "spec": spec });
    harness::objects::custom(client, &resource(), namespace, name, data).await;
}

/// Replaces an AuthorizationPolicy's whole `spec` (a merge patch would keep fields the new
/// spec leaves out).
pub async fn set_policy_spec(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource());
    let mut object = api.get(name).await.unwrap();
    object.data["spec"] = spec;
    api.replace(name, &PostParams::default(), &object)
        .await
        .unwrap();
}

fn resource() -> ApiResource {
    control::sources::kube::api_resource(control::object::Kind::AuthorizationPolicy)
}
