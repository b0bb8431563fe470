//! A pod's life as istiod sees it through the API: created and reported running by its
//! "kubelet", selected by a Service, relabelled out of it, deleted — each step pushed to a
//! ztunnel-like ADS client within [`PUSH_LIMIT`], with the time it took printed.

use std::net::IpAddr;

use super::ads::describe;
use super::{Istiod, PUSH_LIMIT, objects, shared_cluster};

const NS: &str = "kube-lifecycle";
const NODE: &str = "node-lifecycle";

#[tokio::test]
async fn pod_changes_in_the_api_are_pushed_over_ads() {
    let Some(cluster) = shared_cluster("kube::lifecycle").await else {
        return;
    };
    let admin = cluster.admin_client().await.unwrap();
    let istiod = Istiod::start("lifecycle", cluster);
    let mut ads = istiod.client("ztunnel~lifecycle").await;

    objects::ambient_namespace(&admin, NS, true).await;
    objects::node(&admin, NODE, "10.244.1.0/24").await;
    let vip: IpAddr = objects::service(&admin, NS, "echo", "echo")
        .await
        .parse()
        .unwrap();
    let service = objects::service_key(NS, "echo");
    let pod_ip: IpAddr = "10.244.1.5".parse().unwrap();
    objects::pod(&admin, NS, "echo-0", NODE, "echo").await;
    // Created, not yet reported by its kubelet: the Service is pushed, the pod is not a
    // workload (istiod invents no address for it).
    ads.wait(PUSH_LIMIT, |v| v.service(&service).is_some())
        .await
        .unwrap_or_else(|| panic!("the service never arrived: {}", describe(&ads.view())));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        ads.view().workload(NS, "echo-0").is_none(),
        "a pod with no reported address was pushed: {}",
        describe(&ads.view())
    );
    objects::pod_running(&admin, NS, "echo-0", "10.244.1.5").await;

    let seen = ads
        .wait(PUSH_LIMIT, |v| {
            v.service(&service)
                .is_some_and(|s| s.vips.iter().any(|a| a.address == vip))
                && v.workload(NS, "echo-0").is_some_and(|w| {
                    w.workload_ips == [pod_ip]
                        && w.node == NODE
                        && w.services.contains_key(&service)
                })
        })
        .await;
    let Some(took) = seen else {
        panic!(
            "the running pod and its service never arrived: {}\nistiod:\n{}",
            describe(&ads.view()),
            istiod.log()
        );
    };
    println!("kube push: running pod and service seen {took:?} after the status patch");

    // Relabelled out of the Service: the workload no longer backs it.
    objects::relabel(&admin, NS, "echo-0", "other").await;
    let took = ads
        .wait(PUSH_LIMIT, |v| {
            v.workload(NS, "echo-0")
                .is_some_and(|w| w.services.is_empty())
        })
        .await
        .unwrap_or_else(|| panic!("relabel never pushed: {}", describe(&ads.view())));
    println!("kube push: relabel seen in {took:?}");

    objects::delete_pod(&admin, NS, "echo-0").await;
    let took = ads
        .wait(PUSH_LIMIT, |v| v.workload(NS, "echo-0").is_none())
        .await
        .unwrap_or_else(|| panic!("delete never pushed: {}", describe(&ads.view())));
    println!("kube push: delete seen in {took:?}");

    let view = ads.view();
    assert!(view.ended.is_none(), "the stream ended: {:?}", view.ended);
    assert!(
        istiod.logged("watch failed").is_empty(),
        "with its RBAC role, no watch fails:\n{}",
        istiod.logged("watch failed").join("\n")
    );
}
