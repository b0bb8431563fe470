//! The store in istiod's deployment-controller role: a Gateway of class `istio-waypoint` alone
//! yields the waypoint's Deployment, Service and ServiceAccount, scheduled and translated as
//! if a user had written them.

use std::net::IpAddr;

use control::object::{Kind, Object};
use control::sources;
use control::store::{Store, StoreConfig};
use dataplane::state::{GatewayAddress, GatewayDestination, NamespacedHostname, TunnelProtocol};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::common::{BASE, apply, deployment, snapshot_of, store, uid};

const INFRA_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: infra}\n";
const WAYPOINT_SVC: &str = "shop/waypoint.shop.svc.cluster.local";

fn gateway(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
"#
    )
}

fn echo_service(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: shop\n  labels: {{{labels}}}\nspec: {{selector: {{app: echo}}, ports: [{{port: 80}}]}}\n"
    )
}

fn with_base(yaml: &str) -> Store {
    store(&format!("{BASE}\n---\n{yaml}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `(node, ips)` of a pod, when it exists.
fn placement(s: &Store, ns: &str, name: &str) -> Option<(String, Vec<IpAddr>)> {
    s.pods()
        .into_iter()
        .find(|p| p.namespace == ns && p.name == name)
        .map(|p| (p.node.unwrap_or_default().to_string(), p.ips))
}

fn generated_keys(s: &Store) -> Vec<String> {
    s.generated().map(|o| o.key().to_string()).collect()
}

#[test]
fn a_gateway_alone_deploys_a_scheduled_waypoint() {
    let s = with_base(&gateway("shop", "waypoint"));
    assert_eq!(
        generated_keys(&s),
        [
            "ServiceAccount shop/waypoint",
            "Service shop/waypoint",
            "Deployment shop/waypoint"
        ]
    );
    // Only what the manifests declared is counted.
    assert_eq!(s.len(), 4);
    let (node, ips) = placement(&s, "shop", "waypoint-0").expect("a waypoint pod");
    assert_eq!((node.as_str(), ips), ("node-a", vec![ip("10.244.1.2")]));

    let snap = snapshot_of(&s);
    let w = &snap.workloads[&uid("shop", "waypoint-0")];
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert!(w.native_tunnel);
    assert_eq!(w.waypoint, None);
    assert_eq!(w.workload_name, "waypoint");
    assert_eq!(w.canonical_name, "waypoint");
    assert_eq!(w.workload_ips, [ip("10.244.1.2")]);
    // The pod backs its Service, on the HBONE port.
    assert_eq!(w.services[WAYPOINT_SVC].get(&15008), Some(&15008));

    let svc = &snap.services[WAYPOINT_SVC];
    assert_eq!(svc.hostname, "waypoint.shop.svc.cluster.local");
    assert_eq!(svc.vips.len(), 1);
    assert_eq!(svc.vips[0].address, ip("10.96.0.2"));
    assert_eq!(svc.ports.get(&15008), Some(&15008));
    assert_eq!(svc.ports.get(&15021), Some(&15021));
    // The waypoint's own Service never goes through a waypoint.
    assert_eq!(svc.waypoint, None);
}

#[test]
fn generated_objects_follow_upstream_templates() {
    let s = with_base(&gateway("shop", "waypoint"));
    let Some(Object::Service(svc)) = s.get(Kind::Service, "shop", "waypoint") else {
        panic!("no Service");
    };
    let spec = svc.spec.as_ref().unwrap();
    let ports: Vec<(&str, i32, &str)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.as_deref().unwrap(),
                p.port,
                p.app_protocol.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("status-port", 15021, "tcp"), ("mesh", 15008, "hbone")]
    );
    let selector = spec.selector.as_ref().unwrap();
    assert_eq!(selector.len(), 1);
    assert_eq!(
        selector["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert!(
        spec.ports
            .iter()
            .flatten()
            .all(|p| p.target_port.is_none() || p.target_port == Some(IntOrString::Int(p.port)))
    );

    let pod = s
        .pods()
        .into_iter()
        .find(|p| p.name == "waypoint-0")
        .unwrap();
    assert_eq!(
        pod.labels["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(pod.labels["istio.io/gateway-name"], "waypoint");
    assert_eq!(pod.labels["istio.io/dataplane-mode"], "none");
    assert_eq!(pod.service_account(), "waypoint");
    assert_eq!(pod.named_port("status-port"), Some(15021));
    assert!(s.get(Kind::ServiceAccount, "shop", "waypoint").is_some());
}

#[test]
fn a_service_using_the_waypoint_resolves_to_its_generated_service() {
    let s = with_base(&format!(
        "{}---\n{}---\n{}",
        gateway("shop", "waypoint"),
        echo_service("istio.io/use-waypoint: waypoint"),
        deployment("shop", "echo", "", "echo", "")
    ));
    let snap = snapshot_of(&s);
    let bound = &snap.services["shop/echo.shop.svc.cluster.local"];
    assert_eq!(
        bound.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "shop".into(),
                hostname: "waypoint.shop.svc.cluster.local".into(),
            }),
            hbone_mtls_port: 15008,
        })
    );
    // What ztunnel needs to route there: the Service by that hostname, with 15008, and a
    // workload behind it.
    let target = snap
        .services
        .values()
        .find(|svc| svc.hostname == "waypoint.shop.svc.cluster.local")
        .expect("the waypoint Service");
    assert!(target.ports.contains_key(&15008));
    assert!(!target.vips.is_empty());
    let endpoints: Vec<&str> = snap
        .workloads
        .values()
        .filter(|w| w.services.contains_key(WAYPOINT_SVC))
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(endpoints, ["waypoint-0"]);
    // And the waypoint's own configuration lists the bound Service.
    assert!(
        snap.waypoints["shop/waypoint"]
            .services
            .iter()
            .any(|b| b.name == "echo")
    );
}

#[test]
fn deleting_the_gateway_removes_pod_and_service() {
    let mut s = with_base(&format!(
        "{}---\n{}",
        gateway("shop", "waypoint"),
        deployment("shop", "echo", "", "echo", "")
    ));
    let echo = placement(&s, "shop", "echo-0");
    assert!(s.delete(Kind::Gateway, "shop", "waypoint"));
    assert!(s.generated().next().is_none());
    assert!(placement(&s, "shop", "waypoint-0").is_none());
    assert!(s.get(Kind::Service, "shop", "waypoint").is_none());
    // Nothing else moved.
    assert_eq!(placement(&s, "shop", "echo-0"), echo);
    let snap = snapshot_of(&s);
    assert!(!snap.workloads.contains_key(&uid("shop", "waypoint-0")));
    assert!(!snap.services.contains_key(WAYPOINT_SVC));
    assert!(!snap.waypoints.contains_key("shop/waypoint"));
}

#[test]
fn applying_the_gateway_later_schedules_without_moving_others() {
    let mut s = with_base(&deployment("shop", "echo", "", "echo", ""));
    let echo = placement(&s, "shop", "echo-0");
    assert!(apply(&mut s, &gateway("shop", "waypoint")));
    assert_eq!(placement(&s, "shop", "echo-0"), echo);
    let (_, ips) = placement(&s, "shop", "waypoint-0").expect("scheduled");
    assert_eq!(ips.len(), 1);
    assert_ne!(Some(ips), echo.map(|(_, ips)| ips));
    assert_eq!(snapshot_of(&s).services[WAYPOINT_SVC].vips.len(), 1);
}

#[test]
fn a_declared_deployment_of_the_same_name_wins() {
    let custom = deployment(
        "shop",
        "waypoint",
        ", gateway.networking.k8s.io/gateway-name: waypoint",
        "custom",
        "",
    )
    .replace("spec:\n  selector", "spec:\n  replicas: 2\n  selector");
    let mut s = with_base(&gateway("shop", "waypoint"));
    let before = placement(&s, "shop", "waypoint-0");
    apply(&mut s, &custom);
    assert_eq!(
        generated_keys(&s),
        ["ServiceAccount shop/waypoint", "Service shop/waypoint"]
    );
    // The user's pods, the user's service account; the pod of the same name stays put.
    assert_eq!(placement(&s, "shop", "waypoint-0"), before);
    assert!(placement(&s, "shop", "waypoint-1").is_some());
    let snap = snapshot_of(&s);
    for pod in ["waypoint-0", "waypoint-1"] {
        let w = &snap.workloads[&uid("shop", pod)];
        assert_eq!(w.service_account, "custom");
        assert!(w.native_tunnel);
        assert!(
            w.services.contains_key(WAYPOINT_SVC),
            "{pod} backs the Service"
        );
    }

    // Without it, the generated Deployment is back.
    assert!(s.delete(Kind::Deployment, "shop", "waypoint"));
    assert_eq!(generated_keys(&s).len(), 3);
    assert_eq!(placement(&s, "shop", "waypoint-0"), before);
    assert!(placement(&s, "shop", "waypoint-1").is_none());
    assert_eq!(
        snapshot_of(&s).workloads[&uid("shop", "waypoint-0")].service_account,
        "waypoint"
    );
}

#[test]
fn a_declared_service_of_the_same_name_wins() {
    let s = with_base(&format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: waypoint, namespace: shop}}\nspec:\n  clusterIP: 10.96.9.9\n  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}\n  ports: [{{name: mesh, port: 15008}}]\n",
        gateway("shop", "waypoint")
    ));
    assert_eq!(
        generated_keys(&s),
        ["ServiceAccount shop/waypoint", "Deployment shop/waypoint"]
    );
    let snap = snapshot_of(&s);
    let svc = &snap.services[WAYPOINT_SVC];
    assert_eq!(svc.vips[0].address, ip("10.96.9.9"));
    assert_eq!(svc.ports.keys().copied().collect::<Vec<_>>(), [15008]);
}

#[test]
fn waypoints_in_two_namespaces() {
    let s = with_base(&format!(
        "{INFRA_NS}---\n{}---\n{}",
        gateway("shop", "waypoint"),
        gateway("infra", "waypoint")
    ));
    let snap = snapshot_of(&s);
    let a = &snap.workloads[&uid("infra", "waypoint-0")];
    let b = &snap.workloads[&uid("shop", "waypoint-0")];
    assert_eq!(
        a.identity().to_string(),
        "spiffe://cluster.local/ns/infra/sa/waypoint"
    );
    assert_eq!(
        b.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    // Spread over the nodes, as any two pods.
    assert_ne!(a.node, b.node);
    assert_ne!(a.workload_ips, b.workload_ips);
    let vip = |key: &str| snap.services[key].vips[0].address;
    assert_ne!(
        vip("infra/waypoint.infra.svc.cluster.local"),
        vip(WAYPOINT_SVC)
    );
    assert_eq!(snap.waypoints.len(), 2);
}

/// Everything the store generated, written out as manifests.
fn as_manifests(s: &Store) -> String {
    s.generated()
        .map(|o| match o {
            Object::ServiceAccount(x) => serde_yaml::to_string(x),
            Object::Service(x) => serde_yaml::to_string(x),
            Object::Deployment(x) => serde_yaml::to_string(x),
            other => panic!("unexpected {}", other.key()),
        })
        .map(|yaml| yaml.unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn the_same_as_if_a_user_had_written_them() {
    let manifests = format!(
        "{}---\n{}---\n{}",
        gateway("shop", "waypoint"),
        echo_service("istio.io/use-waypoint: waypoint"),
        deployment("shop", "echo", "", "echo", "")
    );
    let generated = with_base(&manifests);
    let written = with_base(&format!("{manifests}---\n{}", as_manifests(&generated)));
    assert!(written.generated().next().is_none(), "all shadowed");
    assert_eq!(snapshot_of(&generated), snapshot_of(&written));
    assert_eq!(generated.pods(), written.pods());
}

#[test]
fn translation_stays_deterministic() {
    let parts = [
        INFRA_NS.to_string(),
        gateway("shop", "waypoint"),
        gateway("infra", "shared"),
        echo_service("istio.io/use-waypoint: waypoint"),
        deployment("shop", "echo", "", "echo", ""),
    ];
    let forward = with_base(&parts.join("---\n"));
    let mut reversed: Vec<String> = parts.to_vec();
    reversed.reverse();
    let backward = store(&format!("{}---\n{BASE}", reversed.join("---\n")));
    assert_eq!(snapshot_of(&forward), snapshot_of(&backward));
    assert_eq!(snapshot_of(&forward), snapshot_of(&forward.clone()));
    assert_eq!(generated_keys(&forward), generated_keys(&backward));
}

#[test]
fn nothing_is_deployed_outside_the_scheduler_role() {
    let loaded = sources::parse_str(
        &format!("{BASE}\n---\n{}", gateway("shop", "waypoint")),
        "kube.yaml",
    )
    .unwrap();
    let mut s = Store::new(StoreConfig {
        deploy_waypoints: false,
        ..StoreConfig::default()
    });
    sources::apply_loaded(&mut s, loaded).unwrap();
    assert!(s.generated().next().is_none());
    assert!(placement(&s, "shop", "waypoint-0").is_none());
    assert!(!snapshot_of(&s).services.contains_key(WAYPOINT_SVC));
}

#[test]
fn other_gateways_and_unmanaged_waypoints_deploy_nothing() {
    let other = gateway("shop", "ingress").replace("istio-waypoint", "istio");
    let addressed = gateway("shop", "external").replace(
        "spec:\n",
        "spec:\n  addresses: [{type: Hostname, value: wp.example.com}]\n",
    );
    let s = with_base(&format!("{other}---\n{addressed}"));
    assert!(s.generated().next().is_none());
}

#[test]
fn deleting_the_namespace_removes_its_waypoint() {
    let mut s = with_base(&format!(
        "{INFRA_NS}---\n{}---\n{}",
        gateway("shop", "waypoint"),
        gateway("infra", "waypoint")
    ));
    assert!(s.delete(Kind::Namespace, "", "infra"));
    assert_eq!(generated_keys(&s).len(), 3);
    assert!(placement(&s, "infra", "waypoint-0").is_none());
    assert!(placement(&s, "shop", "waypoint-0").is_some());
}

#[test]
fn generated_objects_cannot_be_deleted_directly() {
    let mut s = with_base(&gateway("shop", "waypoint"));
    assert!(!s.delete(Kind::Deployment, "shop", "waypoint"));
    assert!(placement(&s, "shop", "waypoint-0").is_some());
}

#[test]
fn listener_ports_are_validated() {
    let bad = gateway("shop", "waypoint").replace("port: 15008", "port: 0");
    let e = crate::common::error(&format!("{BASE}\n---\n{bad}"));
    assert!(
        e.contains("Gateway shop/waypoint: spec.listeners[0].port"),
        "{e}"
    );
}

#[test]
fn the_waypoint_example_validates() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/waypoint");
    let s = sources::validate(&[dir], StoreConfig::default()).unwrap();
    assert_eq!(generated_keys(&s).len(), 3);
    let snap = snapshot_of(&s);
    assert!(
        snap.services["shop/echo.shop.svc.cluster.local"]
            .waypoint
            .is_some()
    );
    assert!(snap.workloads.contains_key(&uid("shop", "waypoint-0")));
}
