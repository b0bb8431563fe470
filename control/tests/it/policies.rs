//! Policies in the snapshot: AuthorizationPolicy keys and references, PeerAuthentication.

use control::features::Features;
use control::snapshot::{MeshConfig, Snapshot};
use control::translate;
use dataplane::identity::Identity;
use dataplane::policy::{Action, ConnectionContext, Scope, evaluate};

use crate::common::{BASE, deployment, snap, snapshot_of, store, uid};

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn peer(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

#[test]
fn selector_policy_is_keyed_and_referenced_by_what_it_selects() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        policy(
            "shop",
            "echo-only",
            "  selector: {matchLabels: {app: echo}}\n  rules: [{}]\n"
        ),
        deployment("shop", "echo", "", "echo", ""),
        deployment("shop", "web", "", "web", "")
    ));
    assert_eq!(s.policies["shop/echo-only"].scope, Scope::WorkloadSelector);
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        ["shop/echo-only"]
    );
    assert!(
        s.workloads[&uid("shop", "web-0")]
            .authorization_policies
            .is_empty()
    );
}

#[test]
fn namespace_and_global_policies_are_not_referenced() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        policy("shop", "ns-wide", "  rules: [{}]\n"),
        policy(
            "istio-system",
            "mesh-wide",
            "  action: DENY\n  rules: [{}]\n"
        ),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert_eq!(s.policies["shop/ns-wide"].scope, Scope::Namespace);
    assert_eq!(s.policies["istio-system/mesh-wide"].scope, Scope::Global);
    assert!(
        s.workloads[&uid("shop", "echo-0")]
            .authorization_policies
            .is_empty()
    );
}

#[test]
fn root_namespace_selector_policy_selects_in_every_namespace() {
    let s = snap(&format!(
        "{}---\n{}",
        policy(
            "istio-system",
            "all-echo",
            "  selector: {matchLabels: {app: echo}}\n"
        ),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        ["istio-system/all-echo"]
    );
}

#[test]
fn empty_match_labels_select_nothing() {
    let s = snap(&format!(
        "{}---\n{}",
        policy("shop", "empty", "  selector: {matchLabels: {}}\n"),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert!(
        s.workloads[&uid("shop", "echo-0")]
            .authorization_policies
            .is_empty()
    );
}

#[test]
fn waypoint_policies_and_audit_are_not_sent() {
    let s = snap(&format!(
        "{}---\n{}",
        policy(
            "shop",
            "for-waypoint",
            "  targetRefs: [{kind: Service, group: \"\", name: echo}]\n"
        ),
        policy("shop", "audit", "  action: AUDIT\n  rules: [{}]\n")
    ));
    assert!(s.policies.is_empty());
}

#[test]
fn no_peer_authentication_no_static_policy() {
    let s = snap(&deployment("shop", "echo", "", "echo", ""));
    assert!(s.policies.is_empty());
}

#[test]
fn namespace_strict_references_the_static_policy() {
    let s = snap(&format!(
        "{}---\n{}",
        peer("shop", "strict", "  mtls: {mode: STRICT}\n"),
        deployment("shop", "echo", "", "echo", "")
    ));
    let key = "istio-system/istio_converted_static_strict";
    assert_eq!(s.policies[key].action, Action::Deny);
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        [key]
    );
}

#[test]
fn permissive_only_publishes_but_does_not_reference() {
    let s = snap(&format!(
        "{}---\n{}",
        peer("shop", "p", "  mtls: {mode: PERMISSIVE}\n"),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert!(
        s.policies
            .contains_key("istio-system/istio_converted_static_strict")
    );
    assert!(
        s.workloads[&uid("shop", "echo-0")]
            .authorization_policies
            .is_empty()
    );
}

#[test]
fn port_exception_gives_a_converted_policy() {
    let s = snap(&format!(
        "{}---\n{}",
        peer(
            "shop",
            "echo",
            "  selector: {matchLabels: {app: echo}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}\n"
        ),
        deployment("shop", "echo", "", "echo", "")
    ));
    let key = "shop/converted_peer_authentication_echo";
    assert!(s.policies.contains_key(key));
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        [key]
    );
}

#[test]
fn selector_policy_and_peer_authentication_refs_combine_sorted() {
    let s = snap(&format!(
        "{}---\n{}---\n{}",
        peer("istio-system", "mesh", "  mtls: {mode: STRICT}\n"),
        policy(
            "shop",
            "allow",
            "  selector: {matchLabels: {app: echo}}\n  rules: [{}]\n"
        ),
        deployment("shop", "echo", "", "echo", "")
    ));
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        ["istio-system/istio_converted_static_strict", "shop/allow"]
    );
}

/// A DENY-all on `echo`, annotated `istio.io/dry-run: <value>`, and the echo deployment.
fn dry_run_deny_all(value: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: shop\n  annotations: {{istio.io/dry-run: \"{value}\"}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: DENY\n  rules: [{{}}]\n---\n{}",
        deployment("shop", "echo", "", "echo", "")
    )
}

/// What the destination ztunnel decides for a connection to echo-0 with `s`'s policies.
fn echo_admits(s: &Snapshot) -> bool {
    let workload = &s.workloads[&uid("shop", "echo-0")];
    let applicable = s.policies.values().filter(|p| match p.scope {
        Scope::Global => true,
        Scope::Namespace => p.namespace == workload.namespace,
        Scope::WorkloadSelector => workload.authorization_policies.contains(&p.key()),
    });
    let ctx = ConnectionContext {
        source_identity: Some(Identity::new("cluster.local", "shop", "web")),
        source_ip: "10.244.1.9".parse().unwrap(),
        destination_ip: workload.workload_ips[0],
        destination_port: 8080,
    };
    evaluate(&ctx, applicable).allowed()
}

#[test]
fn dry_run_policies_are_not_sent_to_ztunnel_unless_enabled() {
    let st = store(&format!("{BASE}\n---\n{}", dry_run_deny_all("true")));
    let s = snapshot_of(&st);
    assert!(
        !s.policies.contains_key("shop/dry"),
        "not enforced, and not sent: the flag is off by default"
    );
    assert!(
        s.workloads[&uid("shop", "echo-0")]
            .authorization_policies
            .is_empty()
    );
    assert!(echo_admits(&s));

    let mesh = MeshConfig {
        features: Features {
            dry_run_authorization_policies: true,
            ..Features::default()
        },
        ..MeshConfig::default()
    };
    let s = translate::snapshot(&st, &mesh);
    assert!(s.policies["shop/dry"].dry_run);
    assert_eq!(
        s.workloads[&uid("shop", "echo-0")].authorization_policies,
        ["shop/dry"]
    );
    assert!(
        echo_admits(&s),
        "sent, marked dry-run: logged, not enforced"
    );
}

#[test]
fn dry_run_annotation_reads_as_upstreams_parse_bool() {
    for value in ["1", "t", "True", "TRUE"] {
        let s = snap(&dry_run_deny_all(value));
        assert!(!s.policies.contains_key("shop/dry"), "{value}: dry-run");
    }
    for value in ["false", "0", "yes", ""] {
        let s = snap(&dry_run_deny_all(value));
        assert!(!s.policies["shop/dry"].dry_run, "{value}: enforced");
        assert!(!echo_admits(&s), "{value}: the DENY-all applies");
    }
}
