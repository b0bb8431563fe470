//! AuthorizationPolicy translation, case by case from policy-semantics §2: what istiod sends
//! to ztunnels, checked both by shape and by what the shared evaluator then decides.

use control::translate::authorization::{Translated, translate};
use control::types::security::AuthorizationPolicySpec;
use dataplane::identity::Identity;
use dataplane::policy::{
    Action, Authorization, ConnectionContext, Scope, ServiceAccountMatch, StringMatch, evaluate,
};

const ROOT: &str = "istio-system";

fn spec(yaml: &str) -> AuthorizationPolicySpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn ztunnel(ns: &str, yaml: &str) -> (Authorization, Vec<String>) {
    match translate(ns, "p", &spec(yaml), ROOT) {
        Translated::Ztunnel { policy, notes } => (policy, notes),
        other => panic!("not sent to ztunnel: {other:?}"),
    }
}

/// A connection from `id` (None: plaintext) at 10.1.0.5 to 10.2.0.7:`port`.
fn conn(id: Option<(&str, &str)>, port: u16) -> ConnectionContext {
    ConnectionContext {
        source_identity: id.map(|(ns, sa)| Identity::new("cluster.local", ns, sa)),
        source_ip: "10.1.0.5".parse().unwrap(),
        destination_ip: "10.2.0.7".parse().unwrap(),
        destination_port: port,
    }
}

fn allowed(policy: &Authorization, c: &ConnectionContext) -> bool {
    evaluate(c, [policy]).allowed()
}

const WEB: Option<(&str, &str)> = Some(("shop", "web"));
const OTHER: Option<(&str, &str)> = Some(("other", "bot"));

#[test]
fn scope_follows_selector_and_namespace() {
    assert_eq!(ztunnel("shop", "{}").0.scope, Scope::Namespace);
    assert_eq!(ztunnel(ROOT, "{}").0.scope, Scope::Global);
    let selected = "selector: {matchLabels: {app: cart}}";
    assert_eq!(ztunnel("shop", selected).0.scope, Scope::WorkloadSelector);
    assert_eq!(ztunnel(ROOT, selected).0.scope, Scope::WorkloadSelector);
}

#[test]
fn no_rules_allows_nothing_and_an_empty_rule_everything() {
    let (nothing, _) = ztunnel("shop", "{}");
    assert!(nothing.rules.is_empty());
    assert!(!allowed(&nothing, &conn(WEB, 80)));
    let (everything, _) = ztunnel("shop", "rules: [{}]");
    assert!(allowed(&everything, &conn(None, 80)));
    let (deny_all, _) = ztunnel("shop", "action: DENY\nrules: [{}]");
    assert_eq!(deny_all.action, Action::Deny);
    assert!(!allowed(&deny_all, &conn(WEB, 80)));
}

#[test]
fn principals_namespaces_and_wildcards() {
    let (p, _) = ztunnel(
        "shop",
        "rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]",
    );
    assert_eq!(
        p.rules[0].clauses[0].matches[0].principals,
        [StringMatch::Exact("cluster.local/ns/shop/sa/web".into())]
    );
    assert!(allowed(&p, &conn(WEB, 80)));
    assert!(!allowed(&p, &conn(OTHER, 80)));

    let (any_mtls, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {principals: ["*"]}}]}]"#,
    );
    assert!(allowed(&any_mtls, &conn(OTHER, 80)));
    assert!(
        !allowed(&any_mtls, &conn(None, 80)),
        "plaintext has no principal"
    );

    let (ns, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {namespaces: ["sh*", "*her"], notNamespaces: [shop]}}]}]"#,
    );
    let m = &ns.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.namespaces,
        [
            StringMatch::Prefix("sh".into()),
            StringMatch::Suffix("her".into())
        ]
    );
    assert!(!allowed(&ns, &conn(WEB, 80)), "notNamespaces wins");
    assert!(allowed(&ns, &conn(OTHER, 80)));
}

#[test]
fn service_accounts_default_to_the_policy_namespace() {
    let (p, _) = ztunnel(
        "shop",
        "rules: [{from: [{source: {serviceAccounts: [web, other/bot]}}]}]",
    );
    assert_eq!(
        p.rules[0].clauses[0].matches[0].service_accounts,
        [
            ServiceAccountMatch {
                namespace: "shop".into(),
                service_account: "web".into()
            },
            ServiceAccountMatch {
                namespace: "other".into(),
                service_account: "bot".into()
            },
        ]
    );
    assert!(allowed(&p, &conn(WEB, 80)) && allowed(&p, &conn(OTHER, 80)));
    assert!(!allowed(&p, &conn(Some(("shop", "db")), 80)));
}

#[test]
fn ip_blocks_work_for_plaintext_and_bad_entries_are_dropped() {
    let (p, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16", "not-an-ip"], notIpBlocks: ["10.1.0.9"]}}]}]"#,
    );
    assert_eq!(p.rules[0].clauses[0].matches[0].source_ips.len(), 1);
    assert!(allowed(&p, &conn(None, 80)));
}

#[test]
fn ports_are_target_ports_and_from_to_and_together() {
    let (p, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {namespaces: [shop]}}, {source: {namespaces: [other]}}], to: [{operation: {ports: ["8080"]}}, {operation: {notPorts: ["9090"], ports: ["9090", "7070"]}}]}]"#,
    );
    assert_eq!(p.rules[0].clauses.len(), 2);
    assert!(allowed(&p, &conn(WEB, 8080)));
    assert!(
        allowed(&p, &conn(OTHER, 7070)),
        "from entries OR, to entries OR"
    );
    assert!(!allowed(&p, &conn(OTHER, 9090)), "notPorts excludes");
    assert!(
        !allowed(&p, &conn(None, 8080)),
        "plaintext has no namespace"
    );
}

#[test]
fn when_conditions_with_l4_keys() {
    let (p, notes) = ztunnel(
        "shop",
        r#"
rules:
- when:
  - {key: source.ip, values: ["10.1.0.0/24"]}
  - {key: source.namespace, values: [shop]}
  - {key: source.principal, values: ["cluster.local/ns/shop/*"]}
  - {key: destination.ip, values: ["10.2.0.7"]}
  - {key: destination.port, values: ["80"], notValues: ["81"]}
"#,
    );
    assert!(notes.is_empty());
    assert_eq!(p.rules[0].clauses.len(), 5, "one clause per condition");
    assert!(allowed(&p, &conn(WEB, 80)));
    assert!(!allowed(&p, &conn(WEB, 81)));
    assert!(!allowed(&p, &conn(OTHER, 80)));
}

#[test]
fn allow_rules_with_http_attributes_are_dropped_whole() {
    let (p, notes) = ztunnel(
        "shop",
        r#"
rules:
- to: [{operation: {methods: [GET], ports: ["8080"]}}]
- from: [{source: {principals: [cluster.local/ns/other/sa/bot]}}]
"#,
    );
    assert_eq!(p.rules.len(), 1, "the L4-only rule stays");
    assert!(
        notes[0].contains("rule 0 dropped") && notes[0].contains("methods"),
        "{notes:?}"
    );
    assert!(
        !allowed(&p, &conn(WEB, 8080)),
        "fail closed: the GET rule never allows"
    );
    assert!(allowed(&p, &conn(OTHER, 8080)));

    let (only_l7, _) = ztunnel(
        "shop",
        r#"rules: [{to: [{operation: {paths: ["/admin"]}}]}]"#,
    );
    assert!(only_l7.rules.is_empty());
    assert!(!allowed(&only_l7, &conn(WEB, 80)), "allow-nothing");
    let (when_l7, _) = ztunnel(
        "shop",
        "rules: [{when: [{key: \"request.headers[x-user]\", values: [admin]}]}]",
    );
    assert!(when_l7.rules.is_empty());
}

#[test]
fn deny_rules_keep_their_l4_parts() {
    // principals + requestPrincipals: denies that principal outright (broadened)
    let (p, notes) = ztunnel(
        "shop",
        r#"action: DENY
rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web], requestPrincipals: ["*"]}}]}]"#,
    );
    assert!(
        notes[0].contains("without its HTTP attributes"),
        "{notes:?}"
    );
    assert!(!allowed(&p, &conn(WEB, 80)));
    assert!(allowed(&p, &conn(OTHER, 80)));

    // ports + methods: the whole port is denied
    let (port, _) = ztunnel(
        "shop",
        r#"action: DENY
rules: [{to: [{operation: {ports: ["8080"], methods: [POST]}}]}]"#,
    );
    assert!(!allowed(&port, &conn(WEB, 8080)));
    assert!(allowed(&port, &conn(WEB, 9090)));

    // methods only: an empty match, the DENY is a no-op (a known sharp edge)
    let (noop, _) = ztunnel(
        "shop",
        "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}]",
    );
    assert_eq!(noop.rules.len(), 1);
    assert!(allowed(&noop, &conn(WEB, 8080)));

    // a when on an HTTP-only key: the whole rule never matches, even with an L4 from
    let (when_l7, _) = ztunnel(
        "shop",
        r#"action: DENY
rules: [{from: [{source: {namespaces: [shop]}}], when: [{key: "request.auth.claims[iss]", values: [x]}]}]"#,
    );
    assert!(allowed(&when_l7, &conn(WEB, 80)));
    for key in [
        "source.serviceAccount",
        "remote.ip",
        "connection.sni",
        "source.trustDomain",
    ] {
        let yaml = format!("action: DENY\nrules: [{{when: [{{key: {key}, values: [x]}}]}}]");
        let (p, notes) = ztunnel("shop", &yaml);
        assert!(allowed(&p, &conn(WEB, 80)), "{key} is HTTP-only at ztunnel");
        assert!(notes[0].contains(key), "{notes:?}");
    }
}

/// A connection from `td/ns/<ns>/sa/<sa>`.
fn from_domain(td: &str, ns: &str, sa: &str) -> ConnectionContext {
    ConnectionContext {
        source_identity: Some(Identity::new(td, ns, sa)),
        ..conn(None, 80)
    }
}

/// The documented intent, not upstream's translation (which leaves trust domains out, so
/// these ALLOWs would admit nobody and these DENYs refuse nobody): see
/// `control::translate::authorization` and policy-semantics §3.4 item 3.
#[test]
fn trust_domains_are_translated() {
    let foreign = from_domain("partner.example", "shop", "web");
    let yaml = "rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]";
    let (allow, notes) = ztunnel("shop", yaml);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        allow.rules[0].clauses[0].matches[0].principals,
        [StringMatch::Prefix("cluster.local/".into())]
    );
    assert!(allowed(&allow, &conn(WEB, 80)));
    assert!(!allowed(&allow, &foreign));
    assert!(
        !allowed(&allow, &conn(None, 80)),
        "plaintext has no trust domain"
    );
    let (deny, _) = ztunnel("shop", &format!("action: DENY\n{yaml}"));
    assert!(!allowed(&deny, &conn(WEB, 80)));
    assert!(allowed(&deny, &foreign) && allowed(&deny, &conn(None, 80)));

    let (not, _) = ztunnel(
        "shop",
        "rules: [{from: [{source: {notTrustDomains: [cluster.local]}}]}]",
    );
    assert!(!allowed(&not, &conn(WEB, 80)));
    assert!(allowed(&not, &foreign) && allowed(&not, &conn(None, 80)));

    let (prefixed, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {trustDomains: ["partner*"]}}]}]"#,
    );
    assert!(allowed(&prefixed, &foreign) && !allowed(&prefixed, &conn(WEB, 80)));
    let (any, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {trustDomains: ["*"]}}]}]"#,
    );
    assert!(allowed(&any, &foreign) && !allowed(&any, &conn(None, 80)));
}

#[test]
fn trust_domains_and_principals_and_together() {
    // One principals list could only OR them: web from cluster.local would get in.
    let (p, notes) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web, "partner.example/ns/shop/*"], trustDomains: [partner.example]}}]}]"#,
    );
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        p.rules[0].clauses[0].matches[0].principals,
        [StringMatch::Prefix("partner.example/ns/shop/".into())]
    );
    assert!(allowed(&p, &from_domain("partner.example", "shop", "web")));
    assert!(!allowed(&p, &conn(WEB, 80)));
    assert!(!allowed(
        &p,
        &from_domain("partner.example", "other", "bot")
    ));

    // No principal can be in the trust domain: the source matches nothing, for DENY too.
    let (none, _) = ztunnel(
        "shop",
        "action: DENY\nrules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web], trustDomains: [partner.example]}}]}]",
    );
    assert!(allowed(&none, &conn(WEB, 80)));
}

#[test]
fn inexpressible_trust_domains_refuse_more_and_say_so() {
    let foreign = from_domain("partner.example", "shop", "web");
    let yaml = r#"rules: [{from: [{source: {trustDomains: ["*.example"]}}]}]"#;
    let (allow, notes) = ztunnel("shop", yaml);
    assert!(
        notes[0].contains("\"*.example\" cannot be expressed") && notes[0].contains("ALLOW"),
        "{notes:?}"
    );
    assert!(
        !allowed(&allow, &foreign),
        "admits nothing rather than too much"
    );
    let (deny, notes) = ztunnel("shop", &format!("action: DENY\n{yaml}"));
    assert!(notes[0].contains("DENY"), "{notes:?}");
    assert!(
        !allowed(&deny, &foreign) && !allowed(&deny, &conn(WEB, 80)),
        "denies every identity rather than too little"
    );
    assert!(
        allowed(&deny, &conn(None, 80)),
        "plaintext has no trust domain"
    );
}

/// Validation refuses these shapes; a policy built in code can still carry them, and then
/// translates as upstream's translator would, never as something more permissive.
#[test]
fn shapes_validation_refuses_still_translate_as_upstream() {
    let (deny_nothing, _) = ztunnel("shop", "action: DENY");
    assert!(deny_nothing.rules.is_empty());
    assert!(allowed(&deny_nothing, &conn(WEB, 80)), "never matches");

    for section in ["from: [{source: {}}]", "to: [{operation: {}}]"] {
        let (allow, _) = ztunnel("shop", &format!("rules: [{{{section}}}]"));
        assert!(
            !allowed(&allow, &conn(WEB, 80)),
            "{section}: matches nothing"
        );
        let (deny, _) = ztunnel("shop", &format!("action: DENY\nrules: [{{{section}}}]"));
        assert!(allowed(&deny, &conn(WEB, 80)), "{section}: matches nothing");
    }
    // Upstream emits no clause for an empty list: no constraint.
    let (any_source, _) = ztunnel("shop", "action: DENY\nrules: [{from: []}]");
    assert!(!allowed(&any_source, &conn(WEB, 80)));

    let (wildcard, _) = ztunnel(
        "shop",
        r#"rules: [{from: [{source: {serviceAccounts: ["*"]}}]}]"#,
    );
    assert!(
        !allowed(&wildcard, &conn(WEB, 80)),
        "compared exactly: a literal `*` account"
    );

    let (unknown_key, notes) = ztunnel("shop", "rules: [{when: [{key: bogus, values: [x]}]}]");
    assert!(unknown_key.rules.is_empty(), "{notes:?}");
    let (unknown_key, _) = ztunnel(
        "shop",
        "action: DENY\nrules: [{when: [{key: bogus, values: [x]}]}]",
    );
    assert!(allowed(&unknown_key, &conn(WEB, 80)));
}

#[test]
fn waypoint_and_unsupported_policies_never_reach_ztunnel() {
    for yaml in [
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]",
        "targetRef: {kind: Service, name: cart}",
        "action: AUDIT\nrules: [{}]",
        "action: CUSTOM\nprovider: {name: ext}\nrules: [{}]",
    ] {
        assert!(
            matches!(
                translate("shop", "p", &spec(yaml), ROOT),
                Translated::NotForZtunnel(_)
            ),
            "{yaml}"
        );
    }
}

#[test]
fn unknown_fields_are_errors() {
    let err = serde_yaml::from_str::<AuthorizationPolicySpec>("rules: [{form: []}]").unwrap_err();
    assert!(err.to_string().contains("unknown field `form`"), "{err}");
}

#[test]
fn the_result_is_named_for_xds() {
    let (p, _) = ztunnel("shop", "{}");
    assert_eq!(p.key(), "shop/p");
}
