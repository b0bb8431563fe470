//! Policies in the snapshot: AuthorizationPolicy keys and references, PeerAuthentication.

use dataplane::policy::{Action, Scope};

use crate::common::{deployment, snap, uid};

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
