//! Our FaultInjection kind, named from HTTPRoute filters by `ExtensionRef`: resolved into a
//! `fault` filter, left `unsupported` (500, never skipped; gateway-api-semantics §8.3) when it
//! cannot be resolved, refused with the object and field when its values are out of range,
//! and re-translated when it changes.

use std::path::PathBuf;

use control::object::Kind;
use control::sources;
use control::store::StoreConfig;
use dataplane::xds::proto::ambient::waypoint::{
    FaultAbort, FaultDelay, FaultInjection, Fraction, fault_abort, filter,
};

use super::{ECHO, WAYPOINT, configs, echo, kinds, manifests, rules};
use crate::common::{BASE, apply, error, snapshot_of, store};

/// One HTTPRoute on echo:80 whose only rule has `filters` (YAML flow list) and goes to v1.
fn route_with(filters: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: faulty, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules: [{{filters: {filters}, backendRefs: [{{name: v1, port: 8080}}]}}]
"#
    )
}

fn extension_ref(group: &str, kind: &str, name: &str) -> String {
    format!("{{type: ExtensionRef, extensionRef: {{group: {group}, kind: {kind}, name: {name}}}}}")
}

fn fault_ref(name: &str) -> String {
    extension_ref("testbed.ambient.io", "FaultInjection", name)
}

fn fault_object(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: testbed.ambient.io/v1alpha1\nkind: FaultInjection\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
    )
}

fn share(numerator: u32, denominator: u32) -> Option<Fraction> {
    Some(Fraction {
        numerator,
        denominator,
    })
}

#[test]
fn resolved_fault_with_delay_and_http_abort_is_carried() {
    let extra = format!(
        "{}---\n{}",
        fault_object(
            "slow-and-broken",
            "{delay: {fixedDelay: 1s500ms, percentage: 10}, abort: {httpStatus: 503, percentage: 20}}"
        ),
        route_with(&format!(
            "[{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x, value: y}}]}}}}, {}]",
            fault_ref("slow-and-broken")
        ))
    );
    let config = &configs(&extra)[WAYPOINT];
    let [rule] = rules(config) else {
        panic!("one rule")
    };
    let filters = kinds(&rule.filters);
    let [
        filter::Kind::RequestHeaderModifier(_),
        filter::Kind::Fault(fault),
    ] = filters.as_slice()
    else {
        panic!("the fault in its listed place: {filters:?}")
    };
    assert_eq!(
        fault,
        &FaultInjection {
            delay: Some(FaultDelay {
                fixed_delay_ms: 1500,
                percentage: share(10, 100),
            }),
            abort: Some(FaultAbort {
                error: Some(fault_abort::Error::HttpStatus(503)),
                percentage: share(20, 100),
            }),
        }
    );
}

#[test]
fn grpc_and_reset_aborts_and_fractions_are_carried() {
    let extra = format!(
        "{}---\n{}---\n{}",
        fault_object(
            "grpc",
            "{abort: {grpcStatus: 14, fraction: {numerator: 1, denominator: 1000}}}"
        ),
        fault_object(
            "reset",
            "{abort: {reset: true}, delay: {fixedDelay: 0s, fraction: {numerator: 5}}}"
        ),
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: faulty, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - filters:
    - {type: ExtensionRef, extensionRef: {group: testbed.ambient.io, kind: FaultInjection, name: grpc}}
    backendRefs:
    - name: v1
      port: 8080
      filters:
      - {type: ExtensionRef, extensionRef: {group: testbed.ambient.io, kind: FaultInjection, name: reset}}
"#
    );
    let config = &configs(&extra)[WAYPOINT];
    let [rule] = rules(config) else {
        panic!("one rule")
    };
    let [filter::Kind::Fault(grpc)] = kinds(&rule.filters)[..] else {
        panic!("{:?}", rule.filters)
    };
    assert_eq!(
        grpc,
        &FaultInjection {
            delay: None,
            abort: Some(FaultAbort {
                error: Some(fault_abort::Error::GrpcStatus(14)),
                percentage: share(1, 1000),
            }),
        }
    );
    let [filter::Kind::Fault(reset)] = kinds(&rule.backends[0].filters)[..] else {
        panic!("on the backendRef: {:?}", rule.backends[0].filters)
    };
    assert_eq!(
        reset,
        &FaultInjection {
            delay: Some(FaultDelay {
                fixed_delay_ms: 0,
                percentage: share(5, 100),
            }),
            abort: Some(FaultAbort {
                error: Some(fault_abort::Error::Reset(true)),
                percentage: share(100, 100),
            }),
        },
        "no share is every request; a fraction's denominator defaults to 100"
    );
}

#[test]
fn unresolvable_extension_refs_stay_unsupported() {
    let extra = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n---\n{}---\n{}",
        "apiVersion: testbed.ambient.io/v1alpha1\nkind: FaultInjection\nmetadata: {name: elsewhere, namespace: other}\nspec: {abort: {httpStatus: 500}}\n",
        route_with(&format!(
            "[{}, {}, {}, {}]",
            fault_ref("missing"),
            fault_ref("elsewhere"),
            extension_ref("example.com", "FaultInjection", "x"),
            extension_ref("testbed.ambient.io", "Chaos", "x"),
        ))
    );
    let config = &configs(&extra)[WAYPOINT];
    let [rule] = rules(config) else {
        panic!("one rule")
    };
    let reasons: Vec<&str> = kinds(&rule.filters)
        .into_iter()
        .map(|k| match k {
            filter::Kind::Unsupported(why) => why.as_str(),
            other => panic!("resolved what cannot be: {other:?}"),
        })
        .collect();
    assert_eq!(reasons.len(), 4, "none skipped: {reasons:?}");
    assert!(reasons[0].contains("missing"), "{reasons:?}");
    assert!(
        reasons[1].contains("elsewhere"),
        "only the route's namespace is looked in: {reasons:?}"
    );
    assert!(reasons[2].contains("example.com"), "{reasons:?}");
    assert!(reasons[3].contains("Chaos"), "{reasons:?}");
}

#[test]
fn bad_fault_values_are_refused_naming_object_and_field() {
    let cases = [
        ("{}", "spec: at least one of delay or abort is required"),
        (
            "{delay: {fixedDelay: 1.5s}}",
            "spec.delay.fixedDelay: invalid duration \"1.5s\"",
        ),
        (
            "{delay: {fixedDelay: 1s, percentage: 101}}",
            "spec.delay.percentage: invalid percentage 101: must be 0..100",
        ),
        (
            "{delay: {fixedDelay: 1s, percentage: 5, fraction: {numerator: 1}}}",
            "spec.delay: only one of percentage or fraction may be set",
        ),
        (
            "{abort: {httpStatus: 503, fraction: {numerator: 3, denominator: 2}}}",
            "spec.abort.fraction.numerator: invalid numerator 3: must be 0..2",
        ),
        (
            "{abort: {httpStatus: 503, fraction: {numerator: 0, denominator: 0}}}",
            "spec.abort.fraction.denominator: invalid denominator 0",
        ),
        (
            "{abort: {httpStatus: 700}}",
            "spec.abort.httpStatus: invalid HTTP status 700: must be 200..599",
        ),
        (
            "{abort: {httpStatus: 199}}",
            "spec.abort.httpStatus: invalid HTTP status 199",
        ),
        (
            "{abort: {grpcStatus: 17}}",
            "spec.abort.grpcStatus: invalid gRPC status 17: must be 0..16",
        ),
        (
            "{abort: {httpStatus: 503, grpcStatus: 14}}",
            "spec.abort: exactly one of httpStatus, grpcStatus or reset: true is required",
        ),
        (
            "{abort: {reset: false}}",
            "spec.abort: exactly one of httpStatus, grpcStatus or reset: true is required",
        ),
        (
            "{abort: {percentage: 10}}",
            "spec.abort: exactly one of httpStatus, grpcStatus or reset: true is required",
        ),
    ];
    for (spec, want) in cases {
        let e = error(&format!("{BASE}\n---\n{}", fault_object("bad", spec)));
        assert!(e.contains("FaultInjection shop/bad"), "{spec}: {e}");
        assert!(e.contains(want), "{spec}: want {want:?} in: {e}");
    }
    let e = error(&format!(
        "{BASE}\n---\n{}",
        fault_object("typo", "{abort: {httpStatus: 503, percent: 5}}")
    ));
    assert!(e.contains("FaultInjection shop/typo"), "{e}");
    assert!(e.contains("percent"), "unknown fields are refused: {e}");
}

#[test]
fn changing_or_deleting_the_fault_retranslates() {
    let route = route_with(&format!("[{}]", fault_ref("flaky")));
    let mut store = store(&format!(
        "{BASE}\n---\n{}",
        manifests(&format!(
            "{}---\n{route}",
            fault_object("flaky", "{abort: {httpStatus: 503}}")
        ))
    ));
    let fault_of = |store: &control::store::Store| {
        let configs = snapshot_of(store).waypoints;
        let service = echo(&configs[WAYPOINT]);
        assert_eq!(service.key, ECHO);
        rules(&configs[WAYPOINT])[0].filters.clone()
    };
    let before = fault_of(&store);
    assert!(matches!(
        kinds(&before)[..],
        [filter::Kind::Fault(FaultInjection {
            abort: Some(FaultAbort {
                error: Some(fault_abort::Error::HttpStatus(503)),
                ..
            }),
            ..
        })]
    ));

    assert!(apply(
        &mut store,
        &fault_object("flaky", "{abort: {httpStatus: 429}}")
    ));
    let after = fault_of(&store);
    assert!(
        matches!(
            kinds(&after)[..],
            [filter::Kind::Fault(FaultInjection {
                abort: Some(FaultAbort {
                    error: Some(fault_abort::Error::HttpStatus(429)),
                    ..
                }),
                ..
            })]
        ),
        "{after:?}"
    );

    assert!(store.delete(Kind::FaultInjection, "shop", "flaky"));
    let gone = fault_of(&store);
    assert!(
        matches!(kinds(&gone)[..], [filter::Kind::Unsupported(_)]),
        "a deleted fault is a 500, not a skipped filter: {gone:?}"
    );
}

#[test]
fn fault_injection_example_is_accepted_and_translated() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/fault-injection.yaml");
    let store =
        sources::validate(&[path], StoreConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(store.fault_injection("shop", "flaky").is_some());
    let configs = snapshot_of(&store).waypoints;
    let entries = rules(&configs[WAYPOINT]);
    let flaky = entries
        .iter()
        .find(|r| super::path(r).1 == "/flaky")
        .expect("the /flaky entry");
    assert_eq!(
        kinds(&flaky.filters),
        [&filter::Kind::Fault(FaultInjection {
            delay: Some(FaultDelay {
                fixed_delay_ms: 500,
                percentage: share(10, 100),
            }),
            abort: Some(FaultAbort {
                error: Some(fault_abort::Error::HttpStatus(503)),
                percentage: share(1, 1000),
            }),
        })]
    );
    let rest = entries
        .iter()
        .find(|r| super::path(r).1 == "/")
        .expect("the catch-all entry");
    assert!(rest.filters.is_empty());
}
