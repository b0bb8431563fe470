//! The waypoint's L7 configuration: routes attached to bound Services in Gateway API
//! precedence order (gateway-api-semantics §8), invalid backends marked for 500s, and the
//! AuthorizationPolicies that target the waypoint or its Services (policy-semantics §2.6).

use control::translate::waypoint_config::duration_ms;
use dataplane::xds::proto::ambient::waypoint::{
    Action, BackendError, BoundService, Filter, HttpMatch, MatchType, RouteKind, RouteRule,
    WaypointConfig, filter, path_modifier, route_rule,
};

use crate::common::snap;

const WAYPOINT: &str = "shop/waypoint";
const ECHO: &str = "shop/echo.shop.svc.cluster.local";

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

fn configs(extra: &str) -> std::collections::BTreeMap<String, WaypointConfig> {
    snap(&format!("{CLUSTER}---\n{extra}")).waypoints
}

fn echo(config: &WaypointConfig) -> &BoundService {
    config
        .services
        .iter()
        .find(|s| s.key == ECHO)
        .expect("echo is bound to the waypoint")
}

/// The entries of `echo`'s port 80.
fn rules(config: &WaypointConfig) -> &[RouteRule] {
    let port = echo(config).ports.iter().find(|p| p.port == 80).unwrap();
    &port.rules
}

fn http(rule: &RouteRule) -> &HttpMatch {
    match &rule.r#match {
        Some(route_rule::Match::Http(m)) => m,
        other => panic!("not an HTTP match: {other:?}"),
    }
}

fn path(rule: &RouteRule) -> (MatchType, &str) {
    let path = http(rule).path.as_ref().unwrap();
    (path.r#type(), path.value.as_str())
}

fn kinds(filters: &[Filter]) -> Vec<&filter::Kind> {
    filters.iter().filter_map(|f| f.kind.as_ref()).collect()
}

#[test]
fn bound_service_carries_its_route() {
    let configs = configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      method: POST
      headers: [{name: x-env, value: canary}, {name: X-Env, value: ignored}]
      queryParams: [{name: debug, value: "1", type: RegularExpression}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: a}]
        add: [{name: x-add, value: b}]
        remove: [x-remove]
    - type: URLRewrite
      urlRewrite: {hostname: rewritten, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: v2, port: 8080}, percent: 20}
    backendRefs:
    - {name: v1, port: 8080, weight: 70}
    - name: v2
      port: 8080
      weight: 30
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: backend, value: v2}]}}]
    timeouts: {request: 1m30s, backendRequest: 500ms}
"#,
    );
    assert_eq!(configs.keys().collect::<Vec<_>>(), [WAYPOINT]);
    let config = &configs[WAYPOINT];
    assert_eq!(
        (config.namespace.as_str(), config.name.as_str()),
        ("shop", "waypoint")
    );
    let keys: Vec<_> = config.services.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, [ECHO], "only the bound Service");
    let service = echo(config);
    assert_eq!(service.vips.len(), 1);
    let ports: Vec<_> = service
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.name.as_str(), p.kind()))
        .collect();
    assert_eq!(
        ports,
        [
            (80, 8080, "http", RouteKind::Http),
            (9090, 9090, "grpc", RouteKind::None)
        ],
        "the parentRef's port limits the route to port 80"
    );

    let [rule] = rules(config) else {
        panic!("one rule, one match")
    };
    assert_eq!(
        (rule.route_namespace.as_str(), rule.route_name.as_str()),
        ("shop", "split")
    );
    assert_eq!(rule.consumer_namespace, "", "a producer route");
    assert_eq!(path(rule), (MatchType::Prefix, "/api"));
    let m = http(rule);
    assert_eq!(m.method, "POST");
    let headers: Vec<_> = m
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("x-env", "canary")],
        "only the first entry per name counts"
    );
    assert_eq!(m.query_params[0].r#type(), MatchType::Regex);

    let filters = kinds(&rule.filters);
    let [
        filter::Kind::RequestHeaderModifier(modifier),
        filter::Kind::UrlRewrite(rewrite),
        filter::Kind::RequestMirror(mirror),
    ] = filters.as_slice()
    else {
        panic!("filters in listed order: {filters:?}")
    };
    assert_eq!(modifier.set[0].name, "x-set");
    assert_eq!(modifier.add[0].value, "b");
    assert_eq!(modifier.remove, ["x-remove"]);
    assert_eq!(rewrite.hostname, "rewritten");
    assert_eq!(
        rewrite.path.as_ref().unwrap().kind,
        Some(path_modifier::Kind::ReplacePrefixMatch("/v2".into()))
    );
    assert_eq!((mirror.numerator, mirror.denominator), (20, 100));
    assert_eq!(
        mirror.backend.as_ref().unwrap().service,
        "shop/v2.shop.svc.cluster.local"
    );

    let backends: Vec<_> = rule
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.port, b.weight, b.error()))
        .collect();
    assert_eq!(
        backends,
        [
            (
                "shop/v1.shop.svc.cluster.local",
                8080,
                70,
                BackendError::None
            ),
            (
                "shop/v2.shop.svc.cluster.local",
                8080,
                30,
                BackendError::None
            ),
        ]
    );
    assert!(matches!(
        kinds(&rule.backends[1].filters).as_slice(),
        [filter::Kind::ResponseHeaderModifier(m)] if m.set[0].value == "v2"
    ));
    let timeouts = rule.timeouts.unwrap();
    assert_eq!(timeouts.request_ms, Some(90_000));
    assert_eq!(timeouts.backend_request_ms, Some(500));
}

#[test]
fn defaults_are_filled_in() {
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirect, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: v1, port: 8080}]
"#,
    )[WAYPOINT];
    let service = echo(config);
    assert!(
        service.ports.iter().all(|p| p.kind() == RouteKind::Http),
        "no port in the parentRef: every port"
    );
    let rules = rules(config);
    assert_eq!(path(&rules[0]), (MatchType::Prefix, "/split"));
    assert_eq!(rules[0].backends[0].weight, 1, "weight defaults to 1");
    assert_eq!(
        path(&rules[1]),
        (MatchType::Prefix, "/"),
        "a rule without matches matches everything"
    );
    let [filter::Kind::RequestRedirect(redirect)] = kinds(&rules[1].filters)[..] else {
        panic!()
    };
    assert_eq!(
        (
            redirect.scheme.as_str(),
            redirect.status_code,
            redirect.port
        ),
        ("https", 302, 0)
    );
    assert!(rules[1].backends.is_empty());
}

#[test]
fn route_on_a_service_without_waypoint_is_in_no_config() {
    let configs = configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: unbound, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: plain}]
  rules: [{backendRefs: [{name: v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-group, namespace: shop}
spec:
  # Without `group: ""` this names a Gateway API kind, not the core Service.
  parentRefs: [{kind: Service, name: echo}]
  rules: [{backendRefs: [{name: v1, port: 8080}]}]
"#,
    );
    for config in configs.values() {
        assert!(config.services.iter().all(|s| s.name != "plain"));
        for service in &config.services {
            for port in &service.ports {
                assert!(port.rules.is_empty(), "{port:?}");
            }
        }
    }
}

#[test]
fn matches_across_routes_are_ordered_by_precedence() {
    // gateway-api-semantics §8.1: exact before prefix, longer prefix first, method, more
    // headers, more query params; then `namespace/name`; then rule order.
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-broad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /api/}}
    - {path: {type: Exact, value: /api/health}}
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{headers: [{name: color, value: blue}]}]
    backendRefs: [{name: v2, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-narrow, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - {path: {type: PathPrefix, value: /api/v1}}
    - {path: {type: PathPrefix, value: /api}, method: GET}
    - {path: {type: PathPrefix, value: /api}}
    - {path: {type: RegularExpression, value: "/api/v[0-9]+/items"}}
    backendRefs: [{name: v2, port: 8080}]
"#,
    )[WAYPOINT];
    let order: Vec<_> = rules(config)
        .iter()
        .map(|r| {
            let (t, v) = path(r);
            (
                r.route_name.as_str(),
                r.rule_index,
                t,
                v,
                http(r).headers.first().map(|h| h.name.as_str()),
            )
        })
        .collect();
    use MatchType::*;
    assert_eq!(
        order,
        [
            ("b-broad", 1, Exact, "/api/health", None),
            ("a-narrow", 0, Prefix, "/api/v1", None),
            // The one with a method.
            ("a-narrow", 0, Prefix, "/api", None),
            // `/api/` ranks like `/api` (the trailing slash does not count): by name.
            ("a-narrow", 0, Prefix, "/api", None),
            ("b-broad", 1, Prefix, "/api/", None),
            // Header-only matches carry the implicit `/` and beat a bare `/`; equal ones keep
            // rule order (`version=two` before `color=blue`).
            ("b-broad", 2, Prefix, "/", Some("version")),
            ("b-broad", 3, Prefix, "/", Some("color")),
            ("b-broad", 0, Prefix, "/", None),
            ("a-narrow", 0, Regex, "/api/v[0-9]+/items", None),
        ]
    );
    assert_eq!(
        http(&rules(config)[2]).method,
        "GET",
        "a method ranks first"
    );
}

#[test]
fn unusable_backends_are_marked_and_unusable_mirrors_dropped() {
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: ghost, port: 80}}}]
    backendRefs:
    - {name: v1, port: 8080, weight: 1}
    - {name: ghost, port: 8080, weight: 1}
    - {group: example.com, kind: Bucket, name: v2, weight: 1}
    - {name: v2}
"#,
    )[WAYPOINT];
    let [rule] = rules(config) else { panic!() };
    assert!(
        rule.filters.is_empty(),
        "the mirror to a missing Service is dropped"
    );
    let backends: Vec<_> = rule
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight, b.error()))
        .collect();
    assert_eq!(
        backends,
        [
            ("shop/v1.shop.svc.cluster.local", 1, BackendError::None),
            (
                "shop/ghost.shop.svc.cluster.local",
                1,
                BackendError::NotFound
            ),
            ("shop/v2", 1, BackendError::InvalidKind),
            (
                "shop/v2.shop.svc.cluster.local",
                1,
                BackendError::InvalidPort
            ),
        ],
        "each keeps its weight share, which gets 500"
    );
}

#[test]
fn grpc_route_takes_the_port_from_http_routes() {
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, sectionName: grpc}]
  rules:
  - matches: [{method: {service: echo.Echo}}, {method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: v2, port: 8080}]
"#,
    )[WAYPOINT];
    let ports: Vec<_> = echo(config)
        .ports
        .iter()
        .map(|p| (p.port, p.kind()))
        .collect();
    assert_eq!(ports, [(80, RouteKind::Http), (9090, RouteKind::Grpc)]);
    let grpc = &echo(config).ports[1].rules;
    let methods: Vec<_> = grpc
        .iter()
        .map(|r| match &r.r#match {
            Some(route_rule::Match::Grpc(m)) => (m.service.as_str(), m.method.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        methods,
        [("echo.Echo", "Say"), ("echo.Echo", "")],
        "longer method first"
    );
    assert!(
        grpc.iter().all(|r| r.route_name == "rpc"),
        "the HTTPRoute lost port 9090"
    );
}

#[test]
fn consumer_route_is_marked_with_its_namespace() {
    let config = &configs(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: client}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: shop, port: 80}]
  rules: [{backendRefs: [{name: v2, namespace: shop, port: 8080}]}]
"#,
    )[WAYPOINT];
    let [rule] = rules(config) else { panic!() };
    assert_eq!(rule.consumer_namespace, "client");
    assert_eq!(rule.backends[0].error(), BackendError::None);
}

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
        serviceAccounts: [client]
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
        from.service_accounts,
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

#[test]
fn durations_follow_gep_2257() {
    let cases = [
        ("0s", Some(0)),
        ("500ms", Some(500)),
        ("1h30m", Some(5_400_000)),
        ("10s", Some(10_000)),
        ("1.5s", None),
        ("1d", None),
        ("", None),
        ("123456s", None),
    ];
    for (text, want) in cases {
        assert_eq!(duration_ms(text), want, "{text}");
    }
}
