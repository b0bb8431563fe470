//! Routes on a bound Service's ports: precedence across routes, defaults, filters, backends
//! that cannot be used, and the durations of GEP-2257.

use control::translate::waypoint_config::duration_ms;
use dataplane::xds::proto::ambient::waypoint::{
    BackendError, MatchType, RouteKind, filter, path_modifier, route_rule,
};

use super::{ECHO, WAYPOINT, configs, echo, http, kinds, path, rules};

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

#[test]
fn ports_and_backends_carry_what_decides_the_protocol() {
    let configs = configs(
        r#"
apiVersion: v1
kind: Service
metadata: {name: h2, namespace: shop}
spec: {selector: {app: h2}, ports: [{name: web, port: 8080, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-h2, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: h2, port: 8080}, {name: v1, port: 8080}]}]
"#,
    );
    let service = echo(&configs[WAYPOINT]);
    let names: Vec<_> = service
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.app_protocol.as_str()))
        .collect();
    assert_eq!(names, [("http", ""), ("grpc", "")]);
    let [rule] = rules(&configs[WAYPOINT]) else {
        panic!("one rule")
    };
    let backends: Vec<_> = rule
        .backends
        .iter()
        .map(|b| (b.port_name.as_str(), b.app_protocol.as_str()))
        .collect();
    assert_eq!(backends, [("web", "kubernetes.io/h2c"), ("", "")]);
}
