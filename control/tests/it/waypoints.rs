//! Waypoint binding for Services and workloads (wire facts §5, policy-semantics §4.3).

use control::features::Features;
use control::snapshot::{MeshConfig, Snapshot};
use control::store::{Store, StoreConfig};
use control::{sources, translate};
use dataplane::identity::Identity;
use dataplane::policy::{Action, ConnectionContext, Scope, StringMatch, evaluate};
use dataplane::state::{GatewayAddress, GatewayDestination, NamespacedHostname, TunnelProtocol};

use crate::common::{BASE, deployment, snap, snapshot_of, store, uid};

const SVC: &str = "shop/echo.shop.svc.cluster.local";

fn waypoint(ns: &str, name: &str, waypoint_for: Option<&str>, from: &str) -> String {
    let label = waypoint_for
        .map(|w| format!("\n  labels: {{istio.io/waypoint-for: {w}}}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}{label}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {{namespaces: {{from: {from}}}}}
"#
    )
}

fn service(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: shop\n  labels: {{{labels}}}\nspec: {{selector: {{app: echo}}, ports: [{{port: 80}}]}}\n"
    )
}

fn address(ns: &str, name: &str) -> Option<GatewayAddress> {
    Some(GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: ns.into(),
            hostname: format!("{name}.{ns}.svc.cluster.local"),
        }),
        hbone_mtls_port: 15008,
    })
}

fn namespace(labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {{istio.io/dataplane-mode: ambient{labels}}}\n"
    )
}

#[test]
fn service_label_binds_the_service() {
    let s = snap(&format!(
        "{}---\n{}",
        waypoint("shop", "waypoint", None, "Same"),
        service("istio.io/use-waypoint: waypoint")
    ));
    assert_eq!(s.services[SVC].waypoint, address("shop", "waypoint"));
}

#[test]
fn namespace_label_binds_services() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", None, "Same"),
        service("")
    ));
    assert_eq!(s.services[SVC].waypoint, address("shop", "waypoint"));
}

#[test]
fn object_label_none_overrides_namespace() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", None, "Same"),
        service("istio.io/use-waypoint: none")
    ));
    assert_eq!(s.services[SVC].waypoint, None);
}

#[test]
fn object_label_overrides_namespace_choice() {
    let s = snap(&format!(
        "{}---\n{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", None, "Same"),
        waypoint("shop", "special", None, "Same"),
        service("istio.io/use-waypoint: special")
    ));
    assert_eq!(s.services[SVC].waypoint, address("shop", "special"));
}

#[test]
fn missing_waypoint_means_no_binding() {
    let s = snap(&service("istio.io/use-waypoint: nosuch"));
    assert_eq!(s.services[SVC].waypoint, None);
}

#[test]
fn gateway_of_another_class_is_not_a_waypoint() {
    let s = snap(&format!(
        "{}---\n{}",
        waypoint("shop", "waypoint", None, "Same").replace("istio-waypoint", "istio"),
        service("istio.io/use-waypoint: waypoint")
    ));
    assert_eq!(s.services[SVC].waypoint, None);
}

#[test]
fn workload_waypoint_does_not_take_services() {
    let s = snap(&format!(
        "{}---\n{}",
        waypoint("shop", "waypoint", Some("workload"), "Same"),
        service("istio.io/use-waypoint: waypoint")
    ));
    assert_eq!(s.services[SVC].waypoint, None);
}

#[test]
fn service_waypoint_does_not_take_workloads() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", None, "Same"),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert_eq!(s.workloads[&uid("shop", "echo-0")].waypoint, None);
}

#[test]
fn workload_waypoint_binds_pods() {
    let s = snap(&format!(
        "{}---\n{}",
        waypoint("shop", "waypoint", Some("workload"), "Same"),
        deployment(
            "shop",
            "echo",
            ", istio.io/use-waypoint: waypoint",
            "echo",
            ""
        )
    ));
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].waypoint,
        address("shop", "waypoint")
    );
}

#[test]
fn all_waypoint_binds_both() {
    let s = snap(&format!(
        "{}---\n{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", Some("all"), "Same"),
        service(""),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert_eq!(s.services[SVC].waypoint, address("shop", "waypoint"));
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].waypoint,
        address("shop", "waypoint")
    );
}

#[test]
fn none_waypoint_binds_nothing() {
    let s = snap(&format!(
        "{}---\n{}",
        waypoint("shop", "waypoint", Some("none"), "Same"),
        service("istio.io/use-waypoint: waypoint")
    ));
    assert_eq!(s.services[SVC].waypoint, None);
}

const INFRA_NS: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: infra\n  labels: {team: infra}\n";

#[test]
fn cross_namespace_waypoint_needs_the_listener_to_allow_it() {
    let labels = "istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra";
    let allowed = snap(&format!(
        "{INFRA_NS}---\n{}---\n{}",
        waypoint("infra", "shared", None, "All"),
        service(labels)
    ));
    assert_eq!(allowed.services[SVC].waypoint, address("infra", "shared"));
    let same_only = snap(&format!(
        "{INFRA_NS}---\n{}---\n{}",
        waypoint("infra", "shared", None, "Same"),
        service(labels)
    ));
    assert_eq!(same_only.services[SVC].waypoint, None);
}

#[test]
fn namespace_selector_on_the_listener() {
    let gw = waypoint("infra", "shared", None, "Selector").replace(
        "{from: Selector}",
        "{from: Selector, selector: {matchLabels: {istio.io/dataplane-mode: ambient}}}",
    );
    let s = snap(&format!(
        "{INFRA_NS}---\n{gw}---\n{}",
        service("istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra")
    ));
    assert_eq!(s.services[SVC].waypoint, address("infra", "shared"));
}

#[test]
fn cross_namespace_from_namespace_labels() {
    let s = snap(&format!(
        "{INFRA_NS}---\n{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra"),
        waypoint("infra", "shared", None, "All"),
        service("")
    ));
    assert_eq!(s.services[SVC].waypoint, address("infra", "shared"));
}

#[test]
fn waypoint_pods_never_use_a_waypoint_and_tunnel_natively() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        namespace(", istio.io/use-waypoint: waypoint"),
        waypoint("shop", "waypoint", Some("all"), "Same"),
        deployment(
            "shop",
            "waypoint",
            ", gateway.networking.k8s.io/gateway-name: waypoint",
            "waypoint",
            ""
        )
    ));
    let w = &s.workloads[&uid("shop", "waypoint-0")];
    assert_eq!(w.waypoint, None);
    assert!(w.native_tunnel);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
}

/// BASE, an `all` waypoint (`gateway`), a Service and a pod both labelled to use it, in a
/// store configured as `config`.
fn unready_case(config: StoreConfig, gateway: &str) -> Snapshot {
    let yaml = format!(
        "{BASE}\n---\n{gateway}---\n{}---\n{}",
        service("istio.io/use-waypoint: waypoint"),
        deployment(
            "shop",
            "echo",
            ", istio.io/use-waypoint: waypoint",
            "echo",
            ""
        )
    );
    let mut store = Store::new(config);
    sources::apply_loaded(&mut store, sources::parse_str(&yaml, "t.yaml").unwrap()).unwrap();
    snapshot_of(&store)
}

fn bindings(s: &Snapshot) -> (Option<GatewayAddress>, Option<GatewayAddress>) {
    (
        s.services[SVC].waypoint.clone(),
        s.workloads[&uid("shop", "echo-0")].waypoint.clone(),
    )
}

const STATUS: &str = "status:\n  addresses: [{type: IPAddress, value: 10.96.0.99}]\n";

/// A waypoint that is not ready yet (policy-semantics §4.3 rule 3) binds nothing: clients go
/// direct instead of being sent to an address that does not resolve.
#[test]
fn waypoint_without_an_address_binds_nothing() {
    // As with --kube: istiod in the cluster deploys the waypoint and writes its status.
    let kube = StoreConfig {
        deploy_waypoints: false,
        ..StoreConfig::default()
    };
    let gateway = waypoint("shop", "waypoint", Some("all"), "Same");
    let s = unready_case(kube.clone(), &gateway);
    assert_eq!(bindings(&s), (None, None));
    assert!(s.waypoints["shop/waypoint"].services.is_empty());

    let s = unready_case(kube, &format!("{gateway}{STATUS}"));
    let bound = address("shop", "waypoint");
    assert_eq!(bindings(&s), (bound.clone(), bound));
    assert_eq!(s.waypoints["shop/waypoint"].services.len(), 1);
}

#[test]
fn deployed_waypoint_is_ready_once_its_service_has_a_cluster_ip() {
    let gateway = waypoint("shop", "waypoint", Some("all"), "Same");
    let bound = address("shop", "waypoint");
    // The store deploys it and numbers its Service: ready without any status.
    let s = unready_case(StoreConfig::default(), &gateway);
    assert_eq!(bindings(&s), (bound.clone(), bound));

    // A declared headless Service of that name shadows the generated one: no address.
    let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop}\nspec: {clusterIP: None, selector: {gateway.networking.k8s.io/gateway-name: waypoint}, ports: [{name: mesh, port: 15008}]}\n";
    let s = unready_case(StoreConfig::default(), &format!("{gateway}---\n{headless}"));
    assert_eq!(bindings(&s), (None, None));

    // Addresses that name a deployment of the user's: istiod does not deploy it, so only a
    // status address makes it ready.
    let external = gateway.replace(
        "spec:\n",
        "spec:\n  addresses: [{type: Hostname, value: wp.example.com}]\n",
    );
    let s = unready_case(StoreConfig::default(), &external);
    assert_eq!(bindings(&s), (None, None));
    let s = unready_case(StoreConfig::default(), &format!("{external}{STATUS}"));
    assert!(bindings(&s).0.is_some() && bindings(&s).1.is_some());
}

fn auto_allow() -> MeshConfig {
    MeshConfig {
        features: Features {
            auto_allow_waypoint_policy: true,
            ..Features::default()
        },
        ..MeshConfig::default()
    }
}

const AUTO_ALLOW: &str = "shop/istio_allow_waypoint_shop_waypoint";

/// What echo-0's ztunnel decides for a connection from `sa` in shop, with `s`'s policies.
fn echo_admits(s: &Snapshot, sa: &str) -> bool {
    let workload = &s.workloads[&uid("shop", "echo-0")];
    let applicable = workload
        .authorization_policies
        .iter()
        .filter_map(|key| s.policies.get(key));
    let ctx = ConnectionContext {
        source_identity: Some(Identity::new("cluster.local", "shop", sa)),
        source_ip: "10.244.1.9".parse().unwrap(),
        destination_ip: workload.workload_ips[0],
        destination_port: 80,
    };
    evaluate(&ctx, applicable).allowed()
}

#[test]
fn auto_allow_admits_the_waypoint_to_what_its_services_bind() {
    let st = store(&format!(
        "{BASE}\n---\n{}---\n{}---\n{}---\n{}",
        waypoint("shop", "waypoint", None, "Same"),
        service("istio.io/use-waypoint: waypoint"),
        deployment("shop", "echo", "", "echo", ""),
        deployment("shop", "web", "", "web", "")
    ));
    let off = snapshot_of(&st);
    assert!(!off.policies.contains_key(AUTO_ALLOW), "off by default");
    assert!(echo_admits(&off, "web"));

    let s = translate::snapshot(&st, &auto_allow());
    let policy = &s.policies[AUTO_ALLOW];
    assert_eq!(
        (policy.action, policy.scope),
        (Action::Allow, Scope::WorkloadSelector)
    );
    assert_eq!(
        policy.rules[0].clauses[0].matches[0].principals,
        [StringMatch::Exact(
            "cluster.local/ns/shop/sa/waypoint".into()
        )]
    );
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        [AUTO_ALLOW],
        "bound through its Service"
    );
    for unbound in ["web-0", "waypoint-0"] {
        assert!(
            s.workloads[&uid("shop", unbound)]
                .authorization_policies
                .is_empty(),
            "{unbound}"
        );
    }
    assert!(echo_admits(&s, "waypoint"));
    assert!(!echo_admits(&s, "web"), "bypassing the waypoint is refused");
}

#[test]
fn auto_allow_follows_workload_bindings_and_the_waypoints_identity() {
    let gateway = waypoint("shop", "waypoint", Some("workload"), "Same").replace(
        "  namespace: shop\n",
        "  namespace: shop\n  annotations: {gateway.istio.io/service-account: wp-identity}\n",
    );
    let s = translate::snapshot(
        &store(&format!(
            "{BASE}\n---\n{gateway}---\n{}",
            deployment(
                "shop",
                "echo",
                ", istio.io/use-waypoint: waypoint",
                "echo",
                ""
            )
        )),
        &auto_allow(),
    );
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        [AUTO_ALLOW],
        "bound directly"
    );
    assert_eq!(
        s.policies[AUTO_ALLOW].rules[0].clauses[0].matches[0].principals,
        [StringMatch::Exact(
            "cluster.local/ns/shop/sa/wp-identity".into()
        )]
    );
}

#[test]
fn auto_allow_skips_waypoints_that_are_not_bound() {
    // Not ready (as with --kube, no status yet): nothing is bound, nothing is admitted.
    let kube = StoreConfig {
        deploy_waypoints: false,
        ..StoreConfig::default()
    };
    let yaml = format!(
        "{BASE}\n---\n{}---\n{}---\n{}",
        waypoint("shop", "waypoint", None, "Same"),
        service("istio.io/use-waypoint: waypoint"),
        deployment("shop", "echo", "", "echo", "")
    );
    let mut st = Store::new(kube);
    sources::apply_loaded(&mut st, sources::parse_str(&yaml, "t.yaml").unwrap()).unwrap();
    let s = translate::snapshot(&st, &auto_allow());
    assert!(
        s.workloads[&uid("shop", "echo-0")]
            .authorization_policies
            .is_empty()
    );
    assert!(echo_admits(&s, "web"));
}

/// `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES`: selector policies that select the
/// waypoint's pods reach that waypoint's config, from its namespace or the root namespace;
/// policies selecting other pods, or with the flag off, do not.
#[test]
fn layered_policies_select_the_waypoints_own_pods_only_with_the_flag() {
    let policy = |ns: &str, name: &str, labels: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{{labels}}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{namespaces: [lab]}}}}]}}]\n"
        )
    };
    let st = store(&format!(
        "{BASE}\n---\n{}---\n{}---\n{}---\n{}---\n{}---\n{}",
        waypoint("shop", "waypoint", None, "Same"),
        deployment("shop", "echo", "", "echo", ""),
        policy(
            "shop",
            "on-waypoint",
            "gateway.networking.k8s.io/gateway-name: waypoint"
        ),
        policy(
            "istio-system",
            "mesh-on-waypoints",
            "gateway.networking.k8s.io/gateway-name: waypoint"
        ),
        policy("shop", "on-echo", "app: echo"),
        policy("shop", "empty-selector", ""),
    ));
    let layered = |mesh: &MeshConfig| -> Vec<String> {
        translate::snapshot(&st, mesh).waypoints["shop/waypoint"]
            .layered_policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    };
    assert!(layered(&MeshConfig::default()).is_empty(), "off by default");
    let on = MeshConfig {
        features: Features {
            layered_waypoint_authorization_policies: true,
            ..Features::default()
        },
        ..MeshConfig::default()
    };
    assert_eq!(
        layered(&on),
        ["istio-system/mesh-on-waypoints", "shop/on-waypoint"]
    );
}
