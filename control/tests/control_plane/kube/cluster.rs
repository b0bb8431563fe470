//! The private cluster itself: the API server serves every kind istiod watches (the CRDs
//! from `control/crds/` included) and the controller manager does its part.

use std::time::Duration;

use control::object::Kind;
use control::sources::kube::api_resource;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::core::DynamicObject;

use super::{objects, shared_cluster};

#[tokio::test]
async fn the_api_server_serves_every_kind_istiod_watches_and_the_controllers_run() {
    let Some(cluster) = shared_cluster("kube::cluster").await else {
        return;
    };
    let admin = cluster.admin_client().await.unwrap();
    for kind in Kind::ALL {
        let api: Api<DynamicObject> = Api::all_with(admin.clone(), &api_resource(kind));
        api.list(&ListParams::default().limit(1))
            .await
            .unwrap_or_else(|e| panic!("listing {kind}: {e}"));
    }

    // The controller manager: a default ServiceAccount in a new namespace, and an
    // EndpointSlice for a Service.
    objects::ambient_namespace(&admin, "harness-check", true).await;
    objects::service(&admin, "harness-check", "web", "web").await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "harness-check");
    let made = objects::poll(Duration::from_secs(30), || {
        let slices = slices.clone();
        async move {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(())
        }
    })
    .await;
    assert!(made.is_some(), "no EndpointSlice for harness-check/web");
}
