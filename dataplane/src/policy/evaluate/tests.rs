use super::*;
use crate::policy::{Cidr, Scope};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

fn ctx(id: Option<&str>) -> ConnectionContext {
    ConnectionContext {
        source_identity: id.map(|s| s.parse().unwrap()),
        source_ip: "10.0.1.5".parse().unwrap(),
        destination_ip: "10.0.2.7".parse().unwrap(),
        destination_port: 8080,
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: Scope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

fn rule(m: Match) -> Rule {
    Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }
}

fn principal(p: &str) -> Match {
    Match {
        principals: vec![StringMatch::Exact(p.into())],
        ..Match::default()
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[test]
fn no_policies_allow() {
    let d = evaluate(&ctx(Some(WEB)), []);
    assert!(d.allowed());
    assert_eq!(d.policy, None);
}

#[test]
fn deny_beats_allow() {
    let allow = policy("allow", Action::Allow, vec![Rule::default()]);
    let deny = policy(
        "deny",
        Action::Deny,
        vec![rule(principal("cluster.local/ns/shop/sa/web"))],
    );
    let d = evaluate(&ctx(Some(WEB)), [&allow, &deny]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy.as_deref(), Some("shop/deny"));
    assert_eq!(d.rule, Some(0));
    assert_eq!(d.to_string(), "explicitly denied by shop/deny rule 0");
}

#[test]
fn allow_without_rules_allows_nothing() {
    let p = policy("allow-nothing", Action::Allow, vec![]);
    assert!(!evaluate(&ctx(Some(WEB)), [&p]).allowed());
}

#[test]
fn deny_without_rules_is_a_no_op() {
    let p = policy("deny-nothing", Action::Deny, vec![]);
    assert!(evaluate(&ctx(Some(WEB)), [&p]).allowed());
}

#[test]
fn empty_rule_matches_everything() {
    let allow = policy("allow-all", Action::Allow, vec![Rule::default()]);
    assert!(evaluate(&ctx(None), [&allow]).allowed());
    let deny = policy("deny-all", Action::Deny, vec![Rule::default()]);
    assert!(!evaluate(&ctx(Some(WEB)), [&deny]).allowed());
}

#[test]
fn empty_match_group_matches_nothing() {
    let p = policy("l7-only", Action::Allow, vec![rule(Match::default())]);
    assert!(!evaluate(&ctx(Some(WEB)), [&p]).allowed());
    let empty_clause = policy(
        "empty-clause",
        Action::Allow,
        vec![Rule {
            clauses: vec![Clause::default()],
        }],
    );
    assert!(evaluate(&ctx(Some(WEB)), [&empty_clause]).allowed());
}

#[test]
fn plaintext_never_matches_positive_identity_fields() {
    let p = policy(
        "any-mtls",
        Action::Allow,
        vec![rule(Match {
            principals: vec![StringMatch::Presence],
            ..Match::default()
        })],
    );
    assert!(!evaluate(&ctx(None), [&p]).allowed());
    assert!(evaluate(&ctx(Some(WEB)), [&p]).allowed());
    // the converted STRICT policy: deny anything without a principal
    let strict = policy(
        "strict",
        Action::Deny,
        vec![rule(Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        })],
    );
    assert!(!evaluate(&ctx(None), [&strict]).allowed());
    assert!(evaluate(&ctx(Some(WEB)), [&strict]).allowed());
    // plaintext satisfies negative namespace and service-account matches
    let not_ns = policy(
        "not-ns",
        Action::Allow,
        vec![rule(Match {
            not_namespaces: vec![StringMatch::Exact("evil".into())],
            not_service_accounts: vec![ServiceAccountMatch {
                namespace: "evil".into(),
                service_account: "x".into(),
            }],
            ..Match::default()
        })],
    );
    assert!(evaluate(&ctx(None), [&not_ns]).allowed());
}

#[test]
fn fields_and_together_values_or() {
    let m = Match {
        namespaces: vec![
            StringMatch::Exact("other".into()),
            StringMatch::Prefix("sh".into()),
        ],
        destination_ports: vec![9090, 8080],
        source_ips: vec!["10.0.0.0/16".parse().unwrap()],
        ..Match::default()
    };
    let p = policy("p", Action::Allow, vec![rule(m.clone())]);
    assert!(evaluate(&ctx(Some(WEB)), [&p]).allowed());
    let mut wrong_port = ctx(Some(WEB));
    wrong_port.destination_port = 1;
    assert!(!evaluate(&wrong_port, [&p]).allowed());
    let mut not_port = m;
    not_port.not_destination_ports = vec![8080];
    let p = policy("p", Action::Allow, vec![rule(not_port)]);
    assert!(!evaluate(&ctx(Some(WEB)), [&p]).allowed());
}

#[test]
fn clauses_and_matches_or() {
    let r = Rule {
        clauses: vec![
            Clause {
                matches: vec![
                    principal("nobody"),
                    principal("cluster.local/ns/shop/sa/web"),
                ],
            },
            Clause {
                matches: vec![Match {
                    destination_ips: vec![Cidr::host("10.0.2.7".parse().unwrap())],
                    ..Match::default()
                }],
            },
        ],
    };
    let p = policy("p", Action::Allow, vec![r.clone()]);
    assert!(evaluate(&ctx(Some(WEB)), [&p]).allowed());
    let mut other_dst = ctx(Some(WEB));
    other_dst.destination_ip = "10.0.2.8".parse().unwrap();
    assert!(!evaluate(&other_dst, [&p]).allowed());
}

#[test]
fn dry_run_reports_but_never_decides() {
    let mut deny = policy("dry-deny", Action::Deny, vec![Rule::default()]);
    deny.dry_run = true;
    let d = evaluate(&ctx(Some(WEB)), [&deny]);
    assert!(d.allowed());
    assert_eq!(
        d.dry_run_matches,
        vec![("shop/dry-deny".into(), Action::Deny)]
    );
    // a dry-run ALLOW does not count as "an allow policy exists"
    let mut allow = policy("dry-allow", Action::Allow, vec![]);
    allow.dry_run = true;
    assert!(evaluate(&ctx(Some(WEB)), [&allow]).allowed());
}

/// The shrunk case proptest once saved (two ALLOW policies: allow-nothing and allow-all).
#[test]
fn allow_nothing_next_to_allow_all_allows() {
    let nothing = policy("a", Action::Allow, vec![]);
    let all = policy("b", Action::Allow, vec![Rule::default()]);
    let d = evaluate(&ctx(None), [&nothing, &all]);
    assert!(d.allowed());
    assert_eq!(d.policy.as_deref(), Some("shop/b"));
}

mod properties;
mod reference;
