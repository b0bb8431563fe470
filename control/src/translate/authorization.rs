//! AuthorizationPolicy → `istio.security.Authorization`, as istiod does it for ztunnels
//! (policy-semantics §2, wire facts §2.2):
//!
//! - policies with `targetRef(s)` are for waypoints and never reach ztunnel; AUDIT and CUSTOM
//!   are not supported there either;
//! - a policy annotated `istio.io/dry-run` reaches ztunnels (marked dry-run: logged, never
//!   enforced) only with the `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY` flag, and is not
//!   sent at all without it ([`translate_policy`]);
//! - scope: a selector → WorkloadSelector; no selector → Namespace, or Global in the root
//!   namespace;
//! - each rule becomes one rule of clauses: the `to` operations (destination ports) as one
//!   clause, the `from` sources as one clause, and one clause per `when` condition;
//! - an ALLOW rule that names any HTTP-only attribute is dropped whole (fail closed); a DENY
//!   rule keeps only its L4 parts — a source or operation left with nothing becomes a match
//!   that never matches, and a `when` on an HTTP-only key makes the whole rule never match;
//! - `trustDomains` / `notTrustDomains` are translated, as principal matches on the trust
//!   domain (`td` → principal prefix `td/`), ANDed with the source's `principals`
//!   ([`trust_domains`] says how, and where only an approximation that refuses more exists).
//!   This is the documented intent; upstream istiod does not translate them for ztunnel (a
//!   source listing only trust domains never matches there, policy-semantics §3.4 item 3),
//!   so here we deliberately differ from upstream. The `source.trustDomain` `when` key is
//!   still HTTP-only, as upstream.

mod trust_domains;

use dataplane::policy::{
    Action, Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::features::Features;
use crate::snapshot::MeshConfig;
use crate::types::security::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, Condition, Operation,
    Rule as SpecRule, Source,
};

/// What translating one policy gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// Sent to ztunnels; `notes` say what was left out (istiod's status message).
    Ztunnel {
        policy: Authorization,
        notes: Vec<String>,
    },
    /// Not for ztunnels, and why.
    NotForZtunnel(String),
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| StringMatch::written(v)).collect()
}

/// Unparseable entries are dropped, as istiod does (validation normally rejects them).
fn cidrs(values: &[String]) -> Vec<Cidr> {
    values.iter().filter_map(|v| v.parse().ok()).collect()
}

fn ports(values: &[String]) -> Vec<u16> {
    values.iter().filter_map(|v| v.parse().ok()).collect()
}

/// `ns/sa`, or a bare `sa` meaning the policy's own namespace.
fn service_accounts(values: &[String], policy_namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) => ServiceAccountMatch {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            },
            None => ServiceAccountMatch {
                namespace: policy_namespace.to_string(),
                service_account: v.clone(),
            },
        })
        .collect()
}

/// The HTTP-only attributes a source names.
fn source_l7(s: &Source) -> Vec<&'static str> {
    let mut found = Vec::new();
    for (name, list) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        if !list.is_empty() {
            found.push(name);
        }
    }
    found
}

fn operation_l7(o: &Operation) -> Vec<&'static str> {
    let mut found = Vec::new();
    for (name, list) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ] {
        if !list.is_empty() {
            found.push(name);
        }
    }
    found
}

/// One source as a match group, with notes on what its trust domains could not say exactly
/// (see [`trust_domains`]).
fn source_match(s: &Source, policy_namespace: &str, action: Action) -> (Match, Vec<String>) {
    let folded = trust_domains::fold(
        strings(&s.principals),
        strings(&s.not_principals),
        &s.trust_domains,
        &s.not_trust_domains,
        action,
    );
    let Some((principals, not_principals)) = folded.lists else {
        // A group with no field set matches nothing.
        return (Match::default(), folded.notes);
    };
    let m = Match {
        principals,
        not_principals,
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        service_accounts: service_accounts(&s.service_accounts, policy_namespace),
        not_service_accounts: service_accounts(&s.not_service_accounts, policy_namespace),
        source_ips: cidrs(&s.ip_blocks),
        not_source_ips: cidrs(&s.not_ip_blocks),
        ..Match::default()
    };
    (m, folded.notes)
}

fn operation_match(o: &Operation) -> Match {
    Match {
        destination_ports: ports(&o.ports),
        not_destination_ports: ports(&o.not_ports),
        ..Match::default()
    }
}

/// One `when` condition as a clause; `None` when the key is HTTP-only to ztunnel (it knows
/// only `source.ip`, `source.namespace`, `source.principal`, `destination.ip` and
/// `destination.port`).
fn condition_clause(c: &Condition) -> Option<Clause> {
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = cidrs(&c.values);
            m.not_source_ips = cidrs(&c.not_values);
        }
        "source.namespace" => {
            m.namespaces = strings(&c.values);
            m.not_namespaces = strings(&c.not_values);
        }
        "source.principal" => {
            m.principals = strings(&c.values);
            m.not_principals = strings(&c.not_values);
        }
        "destination.ip" => {
            m.destination_ips = cidrs(&c.values);
            m.not_destination_ips = cidrs(&c.not_values);
        }
        "destination.port" => {
            m.destination_ports = ports(&c.values);
            m.not_destination_ports = ports(&c.not_values);
        }
        _ => return None,
    }
    Some(Clause { matches: vec![m] })
}

/// What translating one rule gave.
struct TranslatedRule {
    rule: Rule,
    /// The HTTP-only attributes it names.
    l7: Vec<String>,
    /// Trust-domain values it could only approximate.
    approximations: Vec<String>,
}

/// Translates one rule of a policy with `action`.
fn translate_rule(rule: &SpecRule, policy_namespace: &str, action: Action) -> TranslatedRule {
    let mut l7: Vec<String> = Vec::new();
    let mut approximations: Vec<String> = Vec::new();
    let mut clauses = Vec::new();
    if let Some(to) = &rule.to {
        let matches = to
            .iter()
            .map(|t| {
                l7.extend(operation_l7(&t.operation).into_iter().map(String::from));
                operation_match(&t.operation)
            })
            .collect();
        clauses.push(Clause { matches });
    }
    if let Some(from) = &rule.from {
        let matches = from
            .iter()
            .map(|f| {
                l7.extend(source_l7(&f.source).into_iter().map(String::from));
                let (m, notes) = source_match(&f.source, policy_namespace, action);
                approximations.extend(notes);
                m
            })
            .collect();
        clauses.push(Clause { matches });
    }
    for condition in rule.when.iter().flatten() {
        match condition_clause(condition) {
            Some(clause) => clauses.push(clause),
            None => {
                l7.push(format!("when {}", condition.key));
                // A clause that can never be true: the rule never matches.
                clauses.push(Clause {
                    matches: vec![Match::default()],
                });
            }
        }
    }
    TranslatedRule {
        rule: Rule { clauses },
        l7,
        approximations,
    }
}

/// The annotation that makes a policy log-only.
pub const DRY_RUN: &str = "istio.io/dry-run";

/// Whether the object's `istio.io/dry-run` annotation makes it log-only. Read as upstream
/// reads it (Go's `strconv.ParseBool`): `1`, `t`, `T`, `true`, `True`, `TRUE` mean dry-run;
/// any other value, unparseable ones included, leaves the policy enforced (upstream logs the
/// parse error and proceeds).
pub fn is_dry_run(metadata: &ObjectMeta) -> bool {
    metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN))
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "True" | "TRUE"))
}

/// Translates one AuthorizationPolicy object as istiod does for ztunnels, annotations and
/// feature flags included. A dry-run policy reaches ztunnels, marked dry-run, only with
/// `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`; without it the policy is not sent at all
/// (upstream's `UnsupportedValue` status), because a ztunnel that does not know the flag
/// would enforce it, and a dry-run DENY-all would refuse every connection.
pub fn translate_policy(policy: &AuthorizationPolicy, mesh: &MeshConfig) -> Translated {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
    let name = policy.metadata.name.as_deref().unwrap_or("");
    let dry_run = is_dry_run(&policy.metadata);
    if dry_run && !mesh.features.dry_run_authorization_policies && !for_waypoints(&policy.spec) {
        return Translated::NotForZtunnel(format!(
            "policy {namespace}/{name} uses the {DRY_RUN} annotation, but ambient dry-run \
             policies are not enabled ({})",
            Features::DRY_RUN_AUTHORIZATION_POLICY
        ));
    }
    let spec = super::trust_domain_aliases::apply(&policy.spec, mesh);
    translate_spec(namespace, name, &spec, &mesh.root_namespace, dry_run)
}

/// Whether the spec attaches to waypoints (`targetRef(s)`), which ztunnels never enforce.
fn for_waypoints(spec: &AuthorizationPolicySpec) -> bool {
    spec.target_ref.is_some() || !spec.target_refs.is_empty()
}

/// Translates one AuthorizationPolicy spec named `namespace/name`, enforced (not dry-run).
pub fn translate(
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
    root_namespace: &str,
) -> Translated {
    translate_spec(namespace, name, spec, root_namespace, false)
}

fn translate_spec(
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
    root_namespace: &str,
    dry_run: bool,
) -> Translated {
    if for_waypoints(spec) {
        return Translated::NotForZtunnel("targetRefs: enforced by waypoints only".into());
    }
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Audit => {
            return Translated::NotForZtunnel("action AUDIT is not supported by ztunnel".into());
        }
        AuthorizationAction::Custom => {
            return Translated::NotForZtunnel("action CUSTOM is not supported by ztunnel".into());
        }
    };
    let scope = if spec.selector.is_some() {
        Scope::WorkloadSelector
    } else if namespace == root_namespace {
        Scope::Global
    } else {
        Scope::Namespace
    };
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    for (index, rule) in spec.rules.iter().enumerate() {
        let TranslatedRule {
            rule: translated,
            l7,
            approximations,
        } = translate_rule(rule, namespace, action);
        if l7.is_empty() || action == Action::Deny {
            notes.extend(
                approximations
                    .into_iter()
                    .map(|note| format!("rule {index}: {note}")),
            );
        }
        if l7.is_empty() {
            rules.push(translated);
        } else if action == Action::Allow {
            notes.push(format!(
                "rule {index} dropped: ztunnel cannot enforce HTTP attributes ({}); the policy is more restrictive",
                l7.join(", ")
            ));
        } else {
            notes.push(format!(
                "rule {index} enforced without its HTTP attributes ({})",
                l7.join(", ")
            ));
            rules.push(translated);
        }
    }
    Translated::Ztunnel {
        policy: Authorization {
            name: name.to_string(),
            namespace: namespace.to_string(),
            scope,
            action,
            rules,
            dry_run,
        },
        notes,
    }
}
