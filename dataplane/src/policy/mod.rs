//! Authorization: the `istio.security.Authorization` model and the one evaluator that the
//! ztunnel (L4) uses, with an explanation for every decision.

mod cidr;
mod evaluate;
pub mod request;

use std::fmt;

pub use cidr::{Cidr, CidrError};
pub use evaluate::{ConnectionContext, Decision, Verdict, evaluate};

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every workload in the mesh.
    #[default]
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that name the policy in their `authorization_policies`.
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// A string matcher, as istiod converts `exact`, `prefix*`, `*suffix` and `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// A value as a policy writes it: `*` → present, `*x` → suffix, `x*` → prefix,
    /// anything else exact (istiod's conversion for ztunnel; Envoy's at the waypoint).
    pub fn written(value: &str) -> StringMatch {
        if value == "*" {
            StringMatch::Presence
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// A `namespace/serviceAccount` pair (trust domain ignored, as upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One match group: fields of different kinds AND together, values of one kind OR, and a
/// `not_*` list must miss entirely. A match with no field set matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

impl Match {
    /// Whether no field is set (such a match never matches).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
    }
}

/// Matches OR-ed together; a clause with no matches is true.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Clauses AND-ed together; a rule with no clauses is true.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// One authorization policy. Rules are OR-ed; a policy with no rules never matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    pub rules: Vec<Rule>,
    /// Evaluated and logged, never enforced.
    pub dry_run: bool,
}

impl Authorization {
    /// The xDS key and the name workloads reference: `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
