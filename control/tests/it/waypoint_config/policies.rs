//! AuthorizationPolicies that reach a waypoint: those targeting the waypoint itself, one of
//! its bound Services, or its GatewayClass from the root namespace (policy-semantics §2.6).

use dataplane::xds::proto::ambient::waypoint::Action;

use super::{WAYPOINT, configs, echo};

#[test]
fn policies_targeting_the_waypoint_or_a_bound_service_are_carried() {
    let config = &configs(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-wide, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE], notPaths: ["/admin/*"], ports: ["80"]}}]
    when: [{key: "request.headers[x-user]", notValues: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-only
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/client]
        requestPrincipals: ["issuer/*"]
        notNamespaces: [other]
        ipBlocks: [10.0.0.0/8]
    # Not in the source above: validation refuses serviceAccounts next to principals.
    - source: {serviceAccounts: [client]}
    to: [{operation: {hosts: [echo.shop.svc.cluster.local], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-plain, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: plain}]
"#,
    )[WAYPOINT];

    let names: Vec<_> = config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["gateway-wide"],
        "namespace-wide: ztunnel's, not the waypoint's"
    );
    let deny = &config.policies[0];
    assert_eq!(deny.action(), Action::Deny);
    let to = &deny.rules[0].to[0];
    assert_eq!(
        (to.methods.as_slice(), to.not_paths.as_slice()),
        (&["DELETE".to_string()][..], &["/admin/*".to_string()][..])
    );
    assert_eq!(to.ports, [80]);
    let when = &deny.rules[0].when[0];
    assert_eq!(
        (when.key.as_str(), when.not_values.as_slice()),
        ("request.headers[x-user]", &["admin".to_string()][..])
    );

    let service = echo(config);
    let [allow] = service.policies.as_slice() else {
        panic!("the Service's own policy: {:?}", service.policies)
    };
    assert_eq!(
        (allow.name.as_str(), allow.action(), allow.dry_run),
        ("echo-only", Action::Allow, true)
    );
    let from = &allow.rules[0].from[0];
    assert_eq!(from.principals, ["cluster.local/ns/shop/sa/client"]);
    assert_eq!(from.request_principals, ["issuer/*"]);
    assert_eq!(from.not_namespaces, ["other"]);
    assert_eq!(from.ip_blocks, ["10.0.0.0/8"]);
    assert_eq!(
        allow.rules[0].from[1].service_accounts,
        ["shop/client"],
        "a bare name is the policy's namespace"
    );
    assert_eq!(allow.rules[0].to[0].paths, ["/api/*"]);
}

#[test]
fn gateway_class_policy_from_the_root_namespace_reaches_every_waypoint() {
    let config = &configs(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-waypoints, namespace: istio-system}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-elsewhere, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
"#,
    )[WAYPOINT];
    let names: Vec<_> = config
        .policies
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str(), p.action()))
        .collect();
    assert_eq!(names, [("istio-system", "mesh-waypoints", Action::Audit)]);
}
