//! The scheduler and allocators: deterministic, and stable when other objects change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use control::object::Kind;
use control::store::Store;

use crate::common::{BASE, apply, deployment, store};

/// pod name → (node, first IP).
fn placements(s: &Store) -> BTreeMap<String, (String, IpAddr)> {
    s.pods()
        .into_iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                (p.node.unwrap_or_default().to_string(), p.ips[0]),
            )
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn replicas_spread_round_robin_with_ips_from_node_ranges() {
    let s = store(&format!(
        "{BASE}\n---\n{}",
        deployment("shop", "web", "", "web", "")
            .replace("spec:\n  selector", "spec:\n  replicas: 3\n  selector")
    ));
    let p = placements(&s);
    assert_eq!(p["shop/web-0"], ("node-a".into(), ip("10.244.1.2")));
    assert_eq!(p["shop/web-1"], ("node-b".into(), ip("10.244.2.2")));
    assert_eq!(p["shop/web-2"], ("node-a".into(), ip("10.244.1.3")));
}

#[test]
fn replicas_default_to_one() {
    let s = store(&format!(
        "{BASE}\n---\n{}",
        deployment("shop", "web", "", "web", "")
    ));
    assert_eq!(s.pods().len(), 1);
    assert_eq!(s.pods()[0].name, "web-0");
}

#[test]
fn adding_a_deployment_does_not_move_existing_pods() {
    let mut s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        deployment("shop", "web", "", "web", ""),
        deployment("shop", "echo", "", "echo", "")
    ));
    let before = placements(&s);
    // "api" sorts before both: a fresh load would place it first.
    apply(&mut s, &deployment("shop", "api", "", "api", ""));
    let after = placements(&s);
    for (pod, placement) in &before {
        assert_eq!(&after[pod], placement, "{pod} moved");
    }
    assert_eq!(after.len(), 3);
    let mut ips: Vec<IpAddr> = after.values().map(|(_, ip)| *ip).collect();
    ips.dedup();
    assert_eq!(ips.len(), 3);
}

#[test]
fn batch_placement_does_not_depend_on_file_order() {
    let a = deployment("shop", "web", "", "web", "");
    let b = deployment("shop", "echo", "", "echo", "");
    let one = store(&format!("{BASE}\n---\n{a}\n---\n{b}"));
    let two = store(&format!("{b}\n---\n{a}\n---\n{BASE}"));
    assert_eq!(placements(&one), placements(&two));
}

#[test]
fn scaling_up_and_down_keeps_the_others() {
    let mut s = store(&format!(
        "{BASE}\n---\n{}",
        deployment("shop", "web", "", "web", "")
    ));
    let first = placements(&s)["shop/web-0"].clone();
    let scaled = deployment("shop", "web", "", "web", "")
        .replace("spec:\n  selector", "spec:\n  replicas: 2\n  selector");
    apply(&mut s, &scaled);
    assert_eq!(placements(&s)["shop/web-0"], first);
    assert_eq!(s.pods().len(), 2);
    apply(&mut s, &deployment("shop", "web", "", "web", ""));
    assert_eq!(s.pods().len(), 1);
    assert_eq!(placements(&s)["shop/web-0"], first);
}

#[test]
fn explicit_node_and_ip_are_kept() {
    let s = store(&format!(
        "{BASE}\n---\n{}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: fixed, namespace: shop}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.77}
"#
    ));
    assert_eq!(
        placements(&s)["shop/fixed"],
        ("node-b".into(), ip("10.244.2.77"))
    );
}

#[test]
fn explicit_node_without_ip_gets_one_from_that_node() {
    let s = store(&format!(
        "{BASE}\n---\n{}",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {nodeName: node-b, containers: []}\n"
    ));
    assert_eq!(
        placements(&s)["shop/p"],
        ("node-b".into(), ip("10.244.2.2"))
    );
}

#[test]
fn allocation_skips_explicit_ips() {
    let s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fixed, namespace: shop}\nspec: {nodeName: node-a, containers: []}\nstatus: {podIP: 10.244.1.2}\n",
        deployment("shop", "web", "", "web", "")
    ));
    let p = placements(&s);
    assert_ne!(p["shop/web-0"].1, ip("10.244.1.2"));
}

#[test]
fn pods_wait_without_nodes() {
    let s = store(&deployment("default", "web", "", "web", ""));
    assert_eq!(s.pods().len(), 1);
    assert!(s.pods()[0].node.is_none());
    assert!(s.pods()[0].ips.is_empty());
}

#[test]
fn deleting_a_pod_frees_only_its_ip() {
    let mut s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        deployment("shop", "a", "", "a", ""),
        deployment("shop", "b", "", "b", "")
    ));
    let b = placements(&s)["shop/b-0"].clone();
    assert!(s.delete(Kind::Deployment, "shop", "a"));
    assert_eq!(placements(&s)["shop/b-0"], b);
}

fn service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{port: 80}}]\n{extra}"
    )
}

fn vip(s: &Store, name: &str) -> Vec<IpAddr> {
    let svc = s
        .services()
        .find(|x| x.metadata.name.as_deref() == Some(name))
        .unwrap();
    s.service_ips(svc)
}

#[test]
fn cluster_ips_allocated_in_sorted_order_and_stable() {
    let mut s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        service("zeta", ""),
        service("alpha", "")
    ));
    assert_eq!(vip(&s, "alpha"), [ip("10.96.0.2")]);
    assert_eq!(vip(&s, "zeta"), [ip("10.96.0.3")]);
    apply(&mut s, &service("beta", ""));
    assert_eq!(vip(&s, "alpha"), [ip("10.96.0.2")]);
    assert_eq!(vip(&s, "zeta"), [ip("10.96.0.3")]);
    assert_eq!(vip(&s, "beta"), [ip("10.96.0.4")]);
}

#[test]
fn stated_cluster_ip_is_kept_and_never_allocated_twice() {
    let s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        service("a", "  clusterIP: 10.96.0.3\n"),
        service("b", "")
    ));
    assert_eq!(vip(&s, "a"), [ip("10.96.0.3")]);
    assert_eq!(vip(&s, "b"), [ip("10.96.0.2")]);
}

#[test]
fn headless_and_external_name_services_get_no_ip() {
    let s = store(&format!(
        "{BASE}\n---\n{}\n---\n{}",
        service("h", "  clusterIP: None\n"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: shop}\nspec: {type: ExternalName, externalName: example.com}\n"
    ));
    assert!(vip(&s, "h").is_empty());
    assert!(vip(&s, "x").is_empty());
}

/// With a live cluster (`istiod --kube`) the store invents nothing: a Deployment has no pods
/// of its own making, a pod counts once its status names a node and an address (as the
/// kubelet reports it), and a Service without a `clusterIP` gets none.
#[test]
fn fed_by_a_cluster_the_store_takes_placements_only_as_reported() {
    let mut s = Store::new(control::store::StoreConfig {
        schedule: false,
        require_namespaces: false,
        deploy_waypoints: false,
        ..Default::default()
    });
    apply(
        &mut s,
        &format!(
            r#"{BASE}
---
{}
---
apiVersion: v1
kind: Pod
metadata: {{name: pending, namespace: shop, labels: {{app: echo}}}}
spec: {{nodeName: node-a, containers: [{{name: c, image: i}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: running, namespace: shop, labels: {{app: echo}}}}
spec: {{nodeName: node-b, containers: [{{name: c, image: i}}]}}
status: {{phase: Running, podIP: 10.244.2.77}}
---
apiVersion: v1
kind: Service
metadata: {{name: headless-ish, namespace: shop}}
spec: {{selector: {{app: echo}}, ports: [{{port: 80}}]}}
"#,
            deployment("shop", "web", "", "web", "")
        ),
    );
    let pods: BTreeMap<String, (Option<String>, Vec<IpAddr>)> = s
        .pods()
        .into_iter()
        .map(|p| (p.name.clone(), (p.node.map(str::to_string), p.ips.clone())))
        .collect();
    assert!(
        !pods.keys().any(|n| n.starts_with("web-")),
        "a Deployment's pods were invented: {pods:?}"
    );
    assert_eq!(pods["pending"], (None, vec![]));
    assert_eq!(
        pods["running"],
        (Some("node-b".into()), vec![ip("10.244.2.77")])
    );
    let snapshot = control::translate::snapshot(&s, &Default::default());
    assert!(
        snapshot.workloads.values().all(|w| w.name != "pending"),
        "an unplaced pod became a workload"
    );
    assert!(
        snapshot.services.values().all(|svc| svc.vips.is_empty()),
        "a Service got an address the cluster did not give it"
    );
}
