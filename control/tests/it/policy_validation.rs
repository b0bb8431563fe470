//! What the store refuses in an AuthorizationPolicy, as upstream's validating webhook does:
//! each error names the object and the field at fault.

use crate::common::{BASE, error, store};

fn policy(spec: &str) -> String {
    format!(
        "{BASE}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
    )
}

/// The error for `spec`, checked to name the object and `field`.
#[track_caller]
fn refused(spec: &str, field: &str) -> String {
    let e = error(&policy(spec));
    assert!(
        e.contains(&format!("AuthorizationPolicy shop/p: {field}: ")),
        "expected an error at {field}, got: {e}"
    );
    e
}

#[track_caller]
fn accepted(spec: &str) {
    store(&policy(spec));
}

#[test]
fn deny_without_rules_is_refused() {
    let e = refused("  action: DENY\n", "spec.rules");
    assert!(e.contains("never matches"), "{e}");
    refused("  action: DENY\n  rules: []\n", "spec.rules");
    refused("  action: CUSTOM\n  provider: {name: ext}\n", "spec.rules");
    // An ALLOW without rules is meaningful: it allows nothing.
    accepted("  action: ALLOW\n");
    accepted("  action: DENY\n  rules: [{}]\n");
}

#[test]
fn service_accounts_do_not_mix_with_principals_or_namespaces() {
    for (mix, field) in [
        (
            "serviceAccounts: [web], namespaces: [shop]",
            "serviceAccounts",
        ),
        (
            "serviceAccounts: [web], notPrincipals: [cluster.local/ns/x/sa/y]",
            "serviceAccounts",
        ),
        (
            "notServiceAccounts: [web], principals: [cluster.local/ns/x/sa/y]",
            "notServiceAccounts",
        ),
        (
            "notServiceAccounts: [web], notNamespaces: [x]",
            "notServiceAccounts",
        ),
    ] {
        let e = refused(
            &format!("  rules: [{{from: [{{source: {{{mix}}}}}]}}]\n"),
            &format!("spec.rules[0].from[0].source.{field}"),
        );
        assert!(e.contains("cannot be combined"), "{e}");
    }
    // In separate sources they may.
    accepted(
        "  rules: [{from: [{source: {serviceAccounts: [web]}}, {source: {namespaces: [shop]}}]}]\n",
    );
    accepted("  rules: [{from: [{source: {serviceAccounts: [web], ipBlocks: [10.0.0.0/8]}}]}]\n");
}

#[test]
fn service_account_entries_are_exact_and_few() {
    let e = refused(
        "  rules: [{from: [{source: {serviceAccounts: [\"shop/*\"]}}]}]\n",
        "spec.rules[0].from[0].source.serviceAccounts[0]",
    );
    assert!(e.contains("wildcard"), "{e}");
    refused(
        "  rules: [{from: [{source: {notServiceAccounts: [web, \"*\"]}}]}]\n",
        "spec.rules[0].from[0].source.notServiceAccounts[1]",
    );
    for bad in ["a/b/c", "/web", "shop/"] {
        refused(
            &format!("  rules: [{{from: [{{source: {{serviceAccounts: [\"{bad}\"]}}}}]}}]\n"),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
        );
    }
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("shop/sa{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    accepted(&format!(
        "  rules: [{{from: [{{source: {{serviceAccounts: [{}]}}}}]}}]\n",
        list(16)
    ));
    let e = refused(
        &format!(
            "  rules: [{{from: [{{source: {{serviceAccounts: [{}]}}}}]}}]\n",
            list(17)
        ),
        "spec.rules[0].from[0].source.serviceAccounts",
    );
    assert!(e.contains("more than 16"), "{e}");
}

#[test]
fn empty_sections_are_refused() {
    refused("  rules: [{from: []}]\n", "spec.rules[0].from");
    refused("  rules: [{to: []}]\n", "spec.rules[0].to");
    refused(
        "  rules: [{from: [{source: {}}]}]\n",
        "spec.rules[0].from[0].source",
    );
    refused(
        "  rules: [{to: [{operation: {ports: [\"80\"]}}, {operation: {}}]}]\n",
        "spec.rules[0].to[1].operation",
    );
    refused(
        "  rules: [{from: [{source: {principals: [\"\"]}}]}]\n",
        "spec.rules[0].from[0].source.principals[0]",
    );
    refused(
        "  rules: [{when: [{key: source.ip}]}]\n",
        "spec.rules[0].when[0]",
    );
    // A source naming only trust domains is not empty.
    accepted("  rules: [{from: [{source: {trustDomains: [td.example]}}]}]\n");
}

#[test]
fn selector_and_target_refs_are_exclusive() {
    refused(
        "  selector: {matchLabels: {app: echo}}\n  targetRefs: [{kind: Service, group: \"\", name: echo}]\n",
        "spec",
    );
    refused(
        "  targetRef: {kind: Service, group: \"\", name: echo}\n  targetRefs: [{kind: Service, group: \"\", name: echo}]\n",
        "spec",
    );
    refused(
        "  selector: {matchLabels: {app: \"echo*\"}}\n",
        "spec.selector.matchLabels[app]",
    );
}

#[test]
fn addresses_must_parse() {
    for field in [
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    ] {
        refused(
            &format!("  rules: [{{from: [{{source: {{{field}: [10.0.0.0/8, 10.0.0.0/40]}}}}]}}]\n"),
            &format!("spec.rules[0].from[0].source.{field}[1]"),
        );
    }
    for key in ["source.ip", "destination.ip", "remote.ip"] {
        refused(
            &format!("  rules: [{{when: [{{key: {key}, values: [not-an-ip]}}]}}]\n"),
            "spec.rules[0].when[0].values[0]",
        );
        refused(
            &format!("  rules: [{{when: [{{key: {key}, notValues: [10.0.0.1, 300.0.0.1]}}]}}]\n"),
            "spec.rules[0].when[0].notValues[1]",
        );
    }
    accepted("  rules: [{from: [{source: {ipBlocks: [10.1.2.3, \"fd00::/8\"]}}]}]\n");
}

#[test]
fn ports_must_be_numbers_in_range() {
    for bad in ["http", "0", "65536", "+80", "-1"] {
        refused(
            &format!("  rules: [{{to: [{{operation: {{ports: [\"{bad}\"]}}}}]}}]\n"),
            "spec.rules[0].to[0].operation.ports[0]",
        );
        refused(
            &format!("  rules: [{{to: [{{operation: {{notPorts: [\"80\", \"{bad}\"]}}}}]}}]\n"),
            "spec.rules[0].to[0].operation.notPorts[1]",
        );
        refused(
            &format!("  rules: [{{when: [{{key: destination.port, values: [\"{bad}\"]}}]}}]\n"),
            "spec.rules[0].when[0].values[0]",
        );
    }
    accepted("  rules: [{to: [{operation: {ports: [\"1\", \"65535\"]}}]}]\n");
}

#[test]
fn when_keys_are_upstreams() {
    for key in [
        "request.headers[x-user]",
        "request.experimental.inline.headers[x-user]",
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.auth.claims[iss]",
        "destination.ip",
        "destination.port",
        "connection.sni",
        "experimental.envoy.filters.network.mysql_proxy[db.table]",
    ] {
        let value = match key {
            "source.ip" | "remote.ip" | "destination.ip" => "10.0.0.1",
            "destination.port" => "80",
            "source.serviceAccount" => "shop/web",
            _ => "x",
        };
        accepted(&format!(
            "  rules: [{{when: [{{key: \"{key}\", values: [\"{value}\"]}}]}}]\n"
        ));
    }
    for (key, says) in [
        ("source.ipaddress", "unknown attribute"),
        ("request.headers", "should have the form name[key]"),
        ("request.headers[]", "should have the form name[key]"),
        (
            "destination.labels[app]",
            "replaced by the workload selector",
        ),
        (
            "destination.namespace",
            "replaced by the policy's metadata.namespace",
        ),
        ("destination.user", "only supported in v1alpha1"),
    ] {
        let e = refused(
            &format!("  rules: [{{when: [{{key: \"{key}\", values: [x]}}]}}]\n"),
            "spec.rules[0].when[0].key",
        );
        assert!(e.contains(says), "{key}: {e}");
    }
    refused(
        "  rules: [{when: [{key: source.serviceAccount, values: [\"shop/*\"]}]}]\n",
        "spec.rules[0].when[0].values[0]",
    );
}

#[test]
fn unknown_actions_are_errors_not_a_default() {
    for action in ["ALLOWED", "allow", "\"\""] {
        let e = error(&policy(&format!("  action: {action}\n  rules: [{{}}]\n")));
        assert!(
            e.contains("AuthorizationPolicy shop/p: spec.action: unknown variant"),
            "{action}: {e}"
        );
    }
}
