//! Pods → workloads: enrollment, identity, telemetry names, service port maps, health.

use control::snapshot::MeshConfig;
use control::translate;
use dataplane::state::{TunnelProtocol, WorkloadStatus};

use crate::common::{BASE, deployment, snap, store, uid};

const PLAIN_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";

#[test]
fn namespace_label_enrolls_its_pods() {
    let s = snap(&deployment("shop", "web", "", "web", ""));
    assert_eq!(
        s.workloads[&uid("shop", "web-0")].protocol,
        TunnelProtocol::Hbone
    );
}

#[test]
fn pods_outside_ambient_namespaces_are_sent_as_plain_tcp() {
    let s = snap(&format!(
        "{PLAIN_NS}---\n{}",
        deployment("plain", "web", "", "web", "")
    ));
    assert_eq!(
        s.workloads[&uid("plain", "web-0")].protocol,
        TunnelProtocol::None
    );
}

#[test]
fn pod_label_none_opts_out() {
    let s = snap(&deployment(
        "shop",
        "web",
        ", istio.io/dataplane-mode: none",
        "web",
        "",
    ));
    assert_eq!(
        s.workloads[&uid("shop", "web-0")].protocol,
        TunnelProtocol::None
    );
}

#[test]
fn pod_label_ambient_enrolls_without_namespace_label() {
    let s = snap(&format!(
        "{PLAIN_NS}---\n{}",
        deployment(
            "plain",
            "web",
            ", istio.io/dataplane-mode: ambient",
            "web",
            ""
        )
    ));
    assert_eq!(
        s.workloads[&uid("plain", "web-0")].protocol,
        TunnelProtocol::Hbone
    );
}

#[test]
fn host_network_pods_are_not_captured() {
    let s = snap(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: shop}\nspec: {hostNetwork: true, nodeName: node-a, containers: []}\nstatus: {podIP: 192.168.0.10}\n",
    );
    assert_eq!(
        s.workloads[&uid("shop", "h")].protocol,
        TunnelProtocol::None
    );
}

#[test]
fn tunnel_label_means_native_hbone() {
    let s = snap(&format!(
        "{PLAIN_NS}---\n{}",
        deployment("plain", "w", ", networking.istio.io/tunnel: http", "w", "")
    ));
    let w = &s.workloads[&uid("plain", "w-0")];
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert!(w.native_tunnel);
}

#[test]
fn uid_identity_and_placement() {
    let s = snap(&deployment("shop", "web", "", "web", ""));
    let w = &s.workloads[&uid("shop", "web-0")];
    assert_eq!(w.uid, "Kubernetes//Pod/shop/web-0");
    assert_eq!(w.name, "web-0");
    assert_eq!(w.namespace, "shop");
    assert_eq!(w.service_account, "web");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(w.node, "node-a");
    assert_eq!(
        w.workload_ips,
        ["10.244.1.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.status, WorkloadStatus::Healthy);
    // istiod leaves the default trust domain out.
    assert_eq!(w.trust_domain, "");
}

#[test]
fn mesh_settings_reach_the_workload() {
    let st = store(&format!(
        "{BASE}\n---\n{}",
        deployment("shop", "web", "", "web", "")
    ));
    let mesh = MeshConfig {
        trust_domain: "example.org".into(),
        cluster_id: "east".into(),
        network: "net1".into(),
        ..MeshConfig::default()
    };
    let s = translate::snapshot(&st, &mesh);
    let w = &s.workloads["east//Pod/shop/web-0"];
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.network, "net1");
    assert_eq!(w.cluster_id, "east");
}

#[test]
fn service_account_defaults_to_default() {
    let s = snap(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {containers: []}\n",
    );
    assert_eq!(s.workloads[&uid("shop", "p")].service_account, "default");
}

#[test]
fn canonical_names_and_workload_names() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        deployment("shop", "web", ", version: v2", "web", ""),
        deployment(
            "shop",
            "api",
            ", service.istio.io/canonical-name: gateway-api, service.istio.io/canonical-revision: r7",
            "api",
            ""
        ),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lone, namespace: shop}\nspec: {containers: []}\n"
    ));
    let web = &s.workloads[&uid("shop", "web-0")];
    assert_eq!(
        (web.canonical_name.as_str(), web.canonical_revision.as_str()),
        ("web", "v2")
    );
    assert_eq!(
        (web.workload_name.as_str(), web.workload_type.as_str()),
        ("web", "deployment")
    );
    let api = &s.workloads[&uid("shop", "api-0")];
    assert_eq!(
        (api.canonical_name.as_str(), api.canonical_revision.as_str()),
        ("gateway-api", "r7")
    );
    let lone = &s.workloads[&uid("shop", "lone")];
    assert_eq!(
        (
            lone.canonical_name.as_str(),
            lone.canonical_revision.as_str()
        ),
        ("lone", "latest")
    );
    assert_eq!(
        (lone.workload_name.as_str(), lone.workload_type.as_str()),
        ("lone", "pod")
    );
}

#[test]
fn replica_set_owner_names_the_deployment() {
    let s = snap(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f8-abcde
  namespace: shop
  labels: {pod-template-hash: 5d4f8}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f8, uid: u1}]
spec: {containers: []}
"#,
    );
    let w = &s.workloads[&uid("shop", "web-5d4f8-abcde")];
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type.as_str()),
        ("web", "deployment")
    );
    assert_eq!(w.canonical_name, "web");
}

#[test]
fn pods_that_are_not_ready_are_unhealthy_and_finished_pods_are_gone() {
    let s = snap(
        r#"apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop}
spec: {nodeName: node-a, containers: []}
status:
  phase: Running
  podIP: 10.244.1.50
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: shop}
spec: {nodeName: node-a, containers: []}
status: {phase: Succeeded, podIP: 10.244.1.51}
"#,
    );
    assert_eq!(
        s.workloads[&uid("shop", "starting")].status,
        WorkloadStatus::Unhealthy
    );
    assert!(!s.workloads.contains_key(&uid("shop", "done")));
}

const ECHO_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: named, port: 81, targetPort: web}
  - {name: unresolved, port: 82, targetPort: nosuch}
  - {name: same, port: 9090}
"#;

#[test]
fn service_port_maps_resolve_named_target_ports() {
    let s = snap(&format!(
        "{ECHO_SERVICE}---\n{}",
        deployment(
            "shop",
            "echo",
            "",
            "echo",
            "{name: web, containerPort: 8081}"
        )
    ));
    let w = &s.workloads[&uid("shop", "echo-0")];
    let ports = &w.services["shop/echo.shop.svc.cluster.local"];
    assert_eq!(
        ports.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        [(80, 8080), (81, 8081), (9090, 9090)]
    );
}

#[test]
fn pods_not_selected_back_no_service() {
    let s = snap(&format!(
        "{ECHO_SERVICE}---\n{}",
        deployment("shop", "web", "", "web", "")
    ));
    assert!(s.workloads[&uid("shop", "web-0")].services.is_empty());
}

#[test]
fn services_in_other_namespaces_do_not_select() {
    let s = snap(&format!(
        "{PLAIN_NS}---\n{}---\n{}",
        ECHO_SERVICE.replace("namespace: shop", "namespace: plain"),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert!(s.workloads[&uid("shop", "echo-0")].services.is_empty());
}
