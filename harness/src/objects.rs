//! Writing the cluster as its users and its kubelets would: namespaces enrolled in ambient, a
//! node with a pod range, pods bound to it whose status a kubelet would report, services.
//!
//! These are fixtures for tests and benchmarks: each panics, naming what failed, where the
//! API server refuses a write, since a refused fixture leaves nothing to test.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Polls `probe` every 100 ms until it yields something, for at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value)
        .unwrap_or_else(|e| panic!("not a {}: {e}", std::any::type_name::<T>()))
}

/// A namespace enrolled in ambient (`istio.io/dataplane-mode=ambient`) whose `default`
/// ServiceAccount exists: made by the controller manager when `controller_manager`, else
/// created here. The API server refuses pods until their ServiceAccount exists.
pub async fn ambient_namespace(client: &kube::Client, name: &str, controller_manager: bool) {
    let namespace: Namespace = typed(json!({
        "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}},
    }));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("ambient_namespace: {e}"));
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    if !controller_manager {
        let account: ServiceAccount = typed(json!({"metadata": {"name": "default"}}));
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap_or_else(|e| panic!("ambient_namespace: {e}"));
        return;
    }
    let made = poll(Duration::from_secs(30), || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;
    assert!(
        made.is_some(),
        "the controller manager never made {name}/default"
    );
}

/// A node with a pod range, as a kubelet would register it (only what istiod reads).
pub async fn node(client: &kube::Client, name: &str, pod_cidr: &str) {
    let node: Node = typed(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }));
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("node: {e}"));
}

/// A pod already bound to `node` (no scheduler runs here), with `labels`.
pub async fn pod(client: &kube::Client, namespace: &str, name: &str, node: &str, app: &str) {
    let pod: Pod = typed(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "echo", "ports": [{"containerPort": 8080}]}],
        },
    }));
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("pod: {e}"));
}

/// What the kubelet reports once the pod runs: its IP, Running, Ready.
pub async fn pod_running(client: &kube::Client, namespace: &str, name: &str, ip: &str) {
    let status = json!({
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("pod_running: {e}"));
}

/// Sets the pod's `app` label.
pub async fn relabel(client: &kube::Client, namespace: &str, name: &str, app: &str) {
    let patch = json!({"metadata": {"labels": {"app": app}}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("relabel: {e}"));
}

/// Deletes the pod at once: with no kubelet to finish a graceful delete, a bound pod would
/// otherwise stay terminating forever.
pub async fn delete_pod(client: &kube::Client, namespace: &str, name: &str) {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .delete(name, &now)
        .await
        .unwrap_or_else(|e| panic!("delete_pod: {e}"));
}

/// A ClusterIP Service selecting `app` on port 80 → 8080; returns its cluster IP.
pub async fn service(client: &kube::Client, namespace: &str, name: &str, app: &str) -> String {
    let service: Service = typed(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    let created = Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|e| panic!("service: {e}"));
    created
        .spec
        .and_then(|spec| spec.cluster_ip)
        .unwrap_or_else(|| panic!("service {namespace}/{name}: no cluster IP assigned"))
}

/// `ns/name.ns.svc.cluster.local`: the xDS name of a Service.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}.{namespace}.svc.cluster.local")
}

/// Creates a custom object of `resource` with `data` (its `spec` and anything else beside
/// the metadata) as written: a CRD keeps whatever it is given, so a test can write what a
/// user might, valid or not.
pub async fn custom(
    client: &kube::Client,
    resource: &kube::core::ApiResource,
    namespace: &str,
    name: &str,
    data: serde_json::Value,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let mut object = DynamicObject::new(name, resource);
    object.data = data;
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {}/{namespace}/{name}: {e}", resource.kind));
}
