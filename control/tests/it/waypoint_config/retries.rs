//! HTTPRoute retries (GEP-1731, experimental channel; gateway-api-semantics §8.7): carried to
//! every entry of the rule, validated like the CRD validates them, and the experimental
//! channel's other fields kept rather than refused.

use control::object::{Kind, Object};
use dataplane::xds::proto::ambient::waypoint::{Retry, filter};

use super::{WAYPOINT, configs, kinds, manifests, rules};
use crate::common::{BASE, error, store};

#[test]
fn retry_is_carried_with_attempts_codes_and_backoff() {
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retried, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}, {path: {type: Exact, value: /b}}]
    backendRefs: [{name: v1, port: 8080}]
    timeouts: {request: 10s, backendRequest: 1s}
    retry: {attempts: 3, codes: [502, 503, 502], backoff: 1s500ms}
  - matches: [{path: {type: PathPrefix, value: /defaults}}]
    backendRefs: [{name: v1, port: 8080}]
    retry: {codes: [500]}
  - matches: [{path: {type: PathPrefix, value: /never}}]
    backendRefs: [{name: v1, port: 8080}]
    retry: {attempts: 0}
"#,
    )[WAYPOINT];
    let by_path = |value: &str| {
        rules(config)
            .iter()
            .find(|r| super::path(r).1 == value)
            .unwrap_or_else(|| panic!("no entry for {value}"))
    };
    let want = Retry {
        attempts: 3,
        codes: vec![502, 503],
        backoff_ms: 1500,
    };
    assert_eq!(
        by_path("/a").retry.as_ref(),
        Some(&want),
        "codes keep their order, without repeats"
    );
    assert_eq!(
        by_path("/b").retry.as_ref(),
        Some(&want),
        "every match of the rule carries it"
    );
    assert_eq!(
        by_path("/b")
            .timeouts
            .as_ref()
            .map(|t| t.backend_request_ms),
        Some(Some(1000)),
        "timeouts still there beside it"
    );
    assert_eq!(
        by_path("/defaults").retry.as_ref(),
        Some(&Retry {
            attempts: 1,
            codes: vec![500],
            backoff_ms: 0
        }),
        "a stanza without attempts is one retry, without backoff no minimum wait"
    );
    assert_eq!(
        by_path("/never").retry.as_ref().map(|r| r.attempts),
        Some(0),
        "attempts: 0 is kept: no retries"
    );
}

#[test]
fn absent_retry_stays_unset() {
    let config = &configs(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: v1, port: 8080}], timeouts: {request: 5s}}]
"#,
    )[WAYPOINT];
    let [rule] = rules(config) else {
        panic!("one rule")
    };
    assert_eq!(rule.retry, None);
}

/// The error text for `rules` (YAML of one HTTPRoute's `rules`) in the test cluster.
fn refused(rules: &str) -> String {
    error(&format!(
        "{BASE}\n---\n{}",
        manifests(&format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad-retry, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo}}]
  rules:
{rules}"#
        ))
    ))
}

#[test]
fn invalid_retry_values_are_refused_naming_object_and_field() {
    let cases = [
        (
            "  - backendRefs: [{name: v1, port: 8080}]\n  - retry: {codes: [500, 302]}\n",
            "spec.rules[1].retry.codes[1]: invalid status code 302: must be 400..599",
        ),
        (
            "  - retry: {codes: [600]}\n",
            "spec.rules[0].retry.codes[0]: invalid status code 600",
        ),
        (
            "  - retry: {attempts: -1}\n",
            "spec.rules[0].retry.attempts: invalid attempts -1",
        ),
        (
            "  - retry: {backoff: 1.5s}\n",
            "spec.rules[0].retry.backoff: invalid duration \"1.5s\"",
        ),
    ];
    for (rules, want) in cases {
        let e = refused(rules);
        assert!(e.contains("HTTPRoute shop/bad-retry"), "{e}");
        assert!(e.contains(want), "want {want:?} in: {e}");
    }
}

#[test]
fn experimental_only_fields_do_not_stop_a_route_loading() {
    let yaml = format!(
        "{BASE}\n---\n{}",
        manifests(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: experimental, namespace: shop}
spec:
  useDefaultGateways: None
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - sessionPersistence: {sessionName: pin, type: Cookie, absoluteTimeout: 1h}
    filters:
    - type: ExternalAuth
      externalAuth: {protocol: HTTP, backendRef: {name: v2, port: 8080}}
    backendRefs: [{name: v1, port: 8080}]
    retry: {codes: [503]}
"#
        )
    );
    let store = store(&yaml);
    let Some(Object::HttpRoute(route)) = store.get(Kind::HttpRoute, "shop", "experimental") else {
        panic!("the route is in the store")
    };
    let rule = &route.spec.rules.as_ref().expect("rules")[0];
    assert_eq!(
        rule.session_persistence
            .as_ref()
            .and_then(|p| p.session_name.as_deref()),
        Some("pin"),
        "kept, not dropped"
    );
    assert!(route.spec.use_default_gateways.is_some());

    let configs = crate::common::snapshot_of(&store).waypoints;
    let [entry] = rules(&configs[WAYPOINT]) else {
        panic!("one rule")
    };
    assert!(entry.retry.is_some());
    let filters = kinds(&entry.filters);
    assert!(
        matches!(filters.as_slice(), [filter::Kind::Unsupported(why)] if why.contains("ExternalAuth")),
        "ExternalAuth must fail closed: {filters:?}"
    );
}

#[test]
fn filters_the_crd_refuses_are_refused_naming_object_and_field() {
    let header =
        "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}";
    let redirect = "{type: RequestRedirect, requestRedirect: {statusCode: 301}}";
    let rewrite = "{type: URLRewrite, urlRewrite: {hostname: x}}";
    let mirror = "{type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 8080}}}";
    let cases = [
        (
            format!("  - filters: [{header}, {header}]\n"),
            "spec.rules[0].filters[1].type: RequestHeaderModifier is listed more than once",
        ),
        (
            format!("  - filters: [{redirect}, {rewrite}]\n"),
            "spec.rules[0].filters: RequestRedirect and URLRewrite cannot be combined",
        ),
        (
            format!("  - filters: [{redirect}]\n    backendRefs: [{{name: v1, port: 8080}}]\n"),
            "spec.rules[0].backendRefs: a rule with a RequestRedirect filter cannot have backendRefs",
        ),
    ];
    for (rules, want) in cases {
        let e = refused(&rules);
        assert!(e.contains("HTTPRoute shop/bad-retry"), "{e}");
        assert!(e.contains(want), "want {want:?} in: {e}");
    }
    // mirrors may repeat
    let ok = format!(
        "{BASE}\n---\n{}",
        manifests(&format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: two-mirrors, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo}}]
  rules:
  - filters: [{mirror}, {mirror}]
    backendRefs: [{{name: v1, port: 8080}}]
"#
        ))
    );
    assert!(
        store(&ok)
            .get(Kind::HttpRoute, "shop", "two-mirrors")
            .is_some()
    );
}
