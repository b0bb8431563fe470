//! Services: hostname, VIPs, port maps, headless, and selector-less endpoints.

use std::net::IpAddr;

use dataplane::state::{NetworkAddress, WorkloadStatus};

use crate::common::{deployment, snap, uid};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn service_hostname_vip_and_ports() {
    let s = snap(
        r#"apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 81, targetPort: grpc}
  - {name: plain, port: 90}
"#,
    );
    let svc = &s.services["shop/echo.shop.svc.cluster.local"];
    assert_eq!(svc.name, "echo");
    assert_eq!(svc.namespace, "shop");
    assert_eq!(svc.hostname, "echo.shop.svc.cluster.local");
    assert_eq!(
        svc.vips,
        [NetworkAddress {
            network: String::new(),
            address: ip("10.96.0.2")
        }]
    );
    assert_eq!(
        svc.ports.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        [(80, 8080), (81, 0), (90, 90)]
    );
    assert!(svc.waypoint.is_none());
}

#[test]
fn headless_service_has_no_vip_but_has_endpoints() {
    let s = snap(&format!(
        "{}---\n{}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n",
        deployment("shop", "db", "", "db", "")
    ));
    let svc = &s.services["shop/db.shop.svc.cluster.local"];
    assert!(svc.vips.is_empty());
    assert!(
        s.workloads[&uid("shop", "db-0")]
            .services
            .contains_key("shop/db.shop.svc.cluster.local")
    );
}

#[test]
fn external_name_services_are_not_sent() {
    let s = snap(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: shop}\nspec: {type: ExternalName, externalName: example.com}\n",
    );
    assert!(s.services.is_empty());
}

const SELECTORLESS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-abc
  namespace: shop
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: http, port: 8000}]
endpoints:
- addresses: [192.168.50.10]
  nodeName: node-b
- addresses: [192.168.50.11]
  conditions: {ready: false}
"#;

#[test]
fn selectorless_service_endpoints_come_from_endpoint_slices() {
    let s = snap(SELECTORLESS);
    let key = "shop/legacy.shop.svc.cluster.local";
    assert!(s.services.contains_key(key));
    let w = &s.workloads["Kubernetes/discovery.k8s.io/EndpointSlice/shop/legacy-abc/192.168.50.10"];
    assert_eq!(w.workload_ips, [ip("192.168.50.10")]);
    assert_eq!(w.name, "legacy-abc");
    assert_eq!(w.node, "node-b");
    assert_eq!(w.services[key].get(&80), Some(&8000));
    let unready =
        &s.workloads["Kubernetes/discovery.k8s.io/EndpointSlice/shop/legacy-abc/192.168.50.11"];
    assert_eq!(unready.status, WorkloadStatus::Unhealthy);
}

#[test]
fn endpoint_slice_address_of_a_known_pod_joins_that_pod() {
    let s = snap(&format!(
        "{}---\n{}",
        SELECTORLESS.replace("192.168.50.10", "10.244.1.2"),
        deployment("shop", "web", "", "web", "")
    ));
    let key = "shop/legacy.shop.svc.cluster.local";
    assert_eq!(
        s.workloads[&uid("shop", "web-0")].services[key].get(&80),
        Some(&8000)
    );
    assert!(
        !s.workloads
            .keys()
            .any(|k| k.ends_with("legacy-abc/10.244.1.2"))
    );
}

#[test]
fn endpoint_slices_of_selector_services_are_ignored() {
    let s = snap(&SELECTORLESS.replace(
        "  ports: [{name: http, port: 80}]\n---",
        "  selector: {app: legacy}\n  ports: [{name: http, port: 80}]\n---",
    ));
    assert!(!s.workloads.keys().any(|k| k.contains("EndpointSlice")));
}
