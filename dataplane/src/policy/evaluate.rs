//! The evaluator: DENY before ALLOW, no ALLOW policies means allow, otherwise some ALLOW must
//! match. Dry-run policies are evaluated and reported but never change the verdict.

use std::fmt;
use std::net::IpAddr;

use super::{Action, Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch};
use crate::identity::Identity;

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionContext {
    /// The verified peer identity; `None` for plaintext.
    pub source_identity: Option<Identity>,
    pub source_ip: IpAddr,
    /// The destination workload's IP (never a service VIP).
    pub destination_ip: IpAddr,
    /// The destination workload's target port.
    pub destination_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A verdict and why: the deciding policy and rule, or the default that applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// `<namespace>/<name>` of the policy that decided, if one did.
    pub policy: Option<String>,
    /// Index of the matching rule within that policy.
    pub rule: Option<usize>,
    /// Dry-run policies that matched (`<namespace>/<name>`, their action): logged only.
    pub dry_run_matches: Vec<(String, Action)>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.verdict, &self.policy, self.rule) {
            (Verdict::Deny, Some(p), Some(r)) => write!(f, "explicitly denied by {p} rule {r}"),
            (Verdict::Allow, Some(p), Some(r)) => write!(f, "allowed by {p} rule {r}"),
            (Verdict::Allow, _, _) => write!(f, "allowed: no allow policies apply"),
            (Verdict::Deny, _, _) => write!(f, "denied: allow policies exist, but none allowed"),
        }?;
        for (policy, action) in &self.dry_run_matches {
            write!(f, "; dry-run {action:?} {policy} matched")?;
        }
        Ok(())
    }
}

fn any_string(matchers: &[StringMatch], value: Option<&str>) -> bool {
    value.is_some_and(|v| matchers.iter().any(|m| m.matches(v)))
}

fn any_service_account(matchers: &[ServiceAccountMatch], id: Option<&Identity>) -> bool {
    id.is_some_and(|id| {
        matchers
            .iter()
            .any(|m| m.namespace == id.namespace && m.service_account == id.service_account)
    })
}

impl Match {
    fn matches(&self, ctx: &ConnectionContext) -> bool {
        if self.is_empty() {
            return false;
        }
        let id = ctx.source_identity.as_ref();
        let namespace = id.map(|i| i.namespace.as_str());
        let principal = id.map(Identity::principal);
        let principal = principal.as_deref();

        let positive = |set: bool, hit: bool| !set || hit;
        positive(
            !self.namespaces.is_empty(),
            any_string(&self.namespaces, namespace),
        ) && !any_string(&self.not_namespaces, namespace)
            && positive(
                !self.principals.is_empty(),
                any_string(&self.principals, principal),
            )
            && !any_string(&self.not_principals, principal)
            && positive(
                !self.service_accounts.is_empty(),
                any_service_account(&self.service_accounts, id),
            )
            && !any_service_account(&self.not_service_accounts, id)
            && positive(
                !self.source_ips.is_empty(),
                self.source_ips.iter().any(|c| c.contains(ctx.source_ip)),
            )
            && !self
                .not_source_ips
                .iter()
                .any(|c| c.contains(ctx.source_ip))
            && positive(
                !self.destination_ips.is_empty(),
                self.destination_ips
                    .iter()
                    .any(|c| c.contains(ctx.destination_ip)),
            )
            && !self
                .not_destination_ips
                .iter()
                .any(|c| c.contains(ctx.destination_ip))
            && positive(
                !self.destination_ports.is_empty(),
                self.destination_ports.contains(&ctx.destination_port),
            )
            && !self.not_destination_ports.contains(&ctx.destination_port)
    }
}

impl Clause {
    fn matches(&self, ctx: &ConnectionContext) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(ctx))
    }
}

impl Rule {
    fn matches(&self, ctx: &ConnectionContext) -> bool {
        self.clauses.iter().all(|c| c.matches(ctx))
    }
}

impl Authorization {
    /// The index of the first rule that matches, if any.
    pub fn matching_rule(&self, ctx: &ConnectionContext) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(ctx))
    }
}

/// Decides a connection against the policies that apply to its destination workload.
///
/// `policies` must already be the applicable set (global, the destination's namespace, and
/// those its workload references), in a stable order, so the deciding policy is stable too.
pub fn evaluate<'a>(
    ctx: &ConnectionContext,
    policies: impl IntoIterator<Item = &'a Authorization>,
) -> Decision {
    let policies: Vec<&Authorization> = policies.into_iter().collect();
    let mut dry_run_matches = Vec::new();
    for p in &policies {
        if p.dry_run && p.matching_rule(ctx).is_some() {
            dry_run_matches.push((p.key(), p.action));
        }
    }
    let decided = |verdict, policy: Option<&Authorization>, rule| Decision {
        verdict,
        policy: policy.map(Authorization::key),
        rule,
        dry_run_matches: dry_run_matches.clone(),
    };

    let enforced = || policies.iter().copied().filter(|p| !p.dry_run);
    for p in enforced().filter(|p| p.action == Action::Deny) {
        if let Some(rule) = p.matching_rule(ctx) {
            return decided(Verdict::Deny, Some(p), Some(rule));
        }
    }
    let mut allows = enforced().filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return decided(Verdict::Allow, None, None);
    }
    for p in allows {
        if let Some(rule) = p.matching_rule(ctx) {
            return decided(Verdict::Allow, Some(p), Some(rule));
        }
    }
    decided(Verdict::Deny, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Cidr, Scope};
    use proptest::prelude::*;

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

    fn arb_string_match() -> impl Strategy<Value = StringMatch> {
        prop_oneof![
            "[a-z]{0,3}".prop_map(StringMatch::Exact),
            "[a-z]{0,3}".prop_map(StringMatch::Prefix),
            "[a-z]{0,3}".prop_map(StringMatch::Suffix),
            Just(StringMatch::Presence),
        ]
    }

    fn arb_match() -> impl Strategy<Value = Match> {
        (
            prop::collection::vec(arb_string_match(), 0..2),
            prop::collection::vec(arb_string_match(), 0..2),
            prop::collection::vec(arb_string_match(), 0..2),
            prop::collection::vec(0u16..4, 0..2),
            prop::collection::vec(0u16..4, 0..2),
        )
            .prop_map(
                |(namespaces, principals, not_principals, ports, not_ports)| Match {
                    namespaces,
                    principals,
                    not_principals,
                    destination_ports: ports,
                    not_destination_ports: not_ports,
                    ..Match::default()
                },
            )
    }

    fn arb_policy() -> impl Strategy<Value = Authorization> {
        (
            prop::bool::ANY,
            prop::bool::ANY,
            prop::collection::vec(
                prop::collection::vec(prop::collection::vec(arb_match(), 0..3), 0..3),
                0..3,
            ),
            "[a-z]{1,4}",
        )
            .prop_map(|(deny, dry_run, rules, name)| Authorization {
                name,
                namespace: "ns".into(),
                scope: Scope::Global,
                action: if deny { Action::Deny } else { Action::Allow },
                dry_run,
                rules: rules
                    .into_iter()
                    .map(|clauses| Rule {
                        clauses: clauses
                            .into_iter()
                            .map(|matches| Clause { matches })
                            .collect(),
                    })
                    .collect(),
            })
    }

    fn arb_ctx() -> impl Strategy<Value = ConnectionContext> {
        (prop::option::of(("[a-c]{0,2}", "[a-c]{0,2}")), 0u16..4).prop_map(|(id, port)| {
            ConnectionContext {
                source_identity: id.map(|(ns, sa)| Identity::new("td", ns, sa)),
                source_ip: "10.0.0.1".parse().unwrap(),
                destination_ip: "10.0.0.2".parse().unwrap(),
                destination_port: port,
            }
        })
    }

    proptest! {
        /// The verdict follows the reference semantics, computed independently here.
        #[test]
        fn verdict_follows_reference_semantics(
            policies in prop::collection::vec(arb_policy(), 0..5),
            c in arb_ctx(),
        ) {
            // Keys are unique in the state, so they are here too.
            let policies: Vec<Authorization> = policies
                .into_iter()
                .enumerate()
                .map(|(i, p)| Authorization { name: format!("p{i}"), ..p })
                .collect();
            let d = evaluate(&c, &policies);
            let enforced: Vec<_> = policies.iter().filter(|p| !p.dry_run).collect();
            let matches = |p: &Authorization| p.rules.iter().any(|r| r.clauses.iter().all(|cl| {
                cl.matches.is_empty() || cl.matches.iter().any(|m| m.matches(&c))
            }));
            let any_deny = enforced.iter().any(|p| p.action == Action::Deny && matches(p));
            let allows: Vec<_> = enforced.iter().filter(|p| p.action == Action::Allow).collect();
            let expected = !any_deny && (allows.is_empty() || allows.iter().any(|p| matches(p)));
            prop_assert_eq!(d.allowed(), expected);
            // the explanation names a real, enforced policy of the right action
            if let Some(name) = &d.policy {
                let p = enforced.iter().find(|p| &p.key() == name).unwrap();
                let want = if d.allowed() { Action::Allow } else { Action::Deny };
                prop_assert_eq!(p.action, want);
                prop_assert!(p.matching_rule(&c) == d.rule);
            }
        }

        /// Dry-run policies never change the verdict.
        #[test]
        fn dry_run_is_inert(
            policies in prop::collection::vec(arb_policy(), 0..5),
            c in arb_ctx(),
        ) {
            let enforced: Vec<Authorization> = policies.iter().filter(|p| !p.dry_run).cloned().collect();
            prop_assert_eq!(evaluate(&c, &policies).verdict, evaluate(&c, &enforced).verdict);
        }

        /// Adding a DENY policy can only turn allow into deny, never the reverse.
        #[test]
        fn deny_is_monotonic(
            policies in prop::collection::vec(arb_policy(), 0..4),
            mut extra in arb_policy(),
            c in arb_ctx(),
        ) {
            extra.action = Action::Deny;
            let before = evaluate(&c, &policies).allowed();
            let mut more = policies.clone();
            more.push(extra);
            let after = evaluate(&c, &more).allowed();
            prop_assert!(before || !after);
        }
    }
}
