//! The waypoint's L7 configuration: routes attached to bound Services in Gateway API
//! precedence order (gateway-api-semantics §8), invalid backends marked for 500s, and the
//! AuthorizationPolicies that target the waypoint or its Services (policy-semantics §2.6),
//! GEP-1731 retries, and our FaultInjection through `ExtensionRef` filters.

mod faults;
mod policies;
mod retries;
mod routes;

use dataplane::xds::proto::ambient::waypoint::{
    BoundService, Filter, HttpMatch, MatchType, RouteRule, WaypointConfig, filter, route_rule,
};

use crate::common::snap;

pub(super) const WAYPOINT: &str = "shop/waypoint";
pub(super) const ECHO: &str = "shop/echo.shop.svc.cluster.local";

/// A waypoint in `shop`, `echo` bound to it, `plain` not bound, backends `v1` and `v2`.
const CLUSTER: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {selector: {app: plain}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v1, namespace: shop}
spec: {selector: {app: v1}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: v2, namespace: shop}
spec: {selector: {app: v2}, ports: [{port: 8080}]}
"#;

/// The manifests [`configs`] translates: the cluster above plus `extra`, without BASE.
pub(super) fn manifests(extra: &str) -> String {
    format!("{CLUSTER}---\n{extra}")
}

pub(super) fn configs(extra: &str) -> std::collections::BTreeMap<String, WaypointConfig> {
    snap(&format!("{CLUSTER}---\n{extra}")).waypoints
}

pub(super) fn echo(config: &WaypointConfig) -> &BoundService {
    config
        .services
        .iter()
        .find(|s| s.key == ECHO)
        .expect("echo is bound to the waypoint")
}

/// The entries of `echo`'s port 80.
pub(super) fn rules(config: &WaypointConfig) -> &[RouteRule] {
    let port = echo(config).ports.iter().find(|p| p.port == 80).unwrap();
    &port.rules
}

pub(super) fn http(rule: &RouteRule) -> &HttpMatch {
    match &rule.r#match {
        Some(route_rule::Match::Http(m)) => m,
        other => panic!("not an HTTP match: {other:?}"),
    }
}

pub(super) fn path(rule: &RouteRule) -> (MatchType, &str) {
    let path = http(rule).path.as_ref().unwrap();
    (path.r#type(), path.value.as_str())
}

pub(super) fn kinds(filters: &[Filter]) -> Vec<&filter::Kind> {
    filters.iter().filter_map(|f| f.kind.as_ref()).collect()
}

#[test]
fn waypoint_without_services_still_gets_a_config_and_nothing_else_does() {
    let s = snap(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: idle, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#,
    );
    assert_eq!(s.waypoints.keys().collect::<Vec<_>>(), ["shop/idle"]);
    assert!(s.waypoints["shop/idle"].services.is_empty());
}

#[test]
fn translation_is_deterministic() {
    let extra = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: v1, port: 8080}]}]
"#;
    assert_eq!(configs(extra), configs(extra));
}
