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

/// A connection and its peer's principal, written out once per evaluation (not once per
/// match group: 10,000 policies would otherwise format 100,000 strings a connection).
struct Peer<'a> {
    ctx: &'a ConnectionContext,
    principal: Option<String>,
}

impl<'a> Peer<'a> {
    fn new(ctx: &'a ConnectionContext) -> Self {
        Peer {
            ctx,
            principal: ctx.source_identity.as_ref().map(Identity::principal),
        }
    }
}

impl Match {
    /// One match group against a connection (the tests' entry point).
    #[cfg(test)]
    fn matches(&self, ctx: &ConnectionContext) -> bool {
        self.matches_peer(&Peer::new(ctx))
    }

    fn matches_peer(&self, peer: &Peer<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        let ctx = peer.ctx;
        let id = ctx.source_identity.as_ref();
        let namespace = id.map(|i| i.namespace.as_str());
        let principal = peer.principal.as_deref();

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
    fn matches(&self, peer: &Peer<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches_peer(peer))
    }
}

impl Rule {
    fn matches(&self, peer: &Peer<'_>) -> bool {
        self.clauses.iter().all(|c| c.matches(peer))
    }
}

impl Authorization {
    /// The index of the first rule that matches, if any.
    pub fn matching_rule(&self, ctx: &ConnectionContext) -> Option<usize> {
        self.first_match(&Peer::new(ctx))
    }

    fn first_match(&self, peer: &Peer<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(peer))
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
    let peer = Peer::new(ctx);
    let mut dry_run_matches = Vec::new();
    for p in &policies {
        if p.dry_run && p.first_match(&peer).is_some() {
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
        if let Some(rule) = p.first_match(&peer) {
            return decided(Verdict::Deny, Some(p), Some(rule));
        }
    }
    let mut allows = enforced().filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return decided(Verdict::Allow, None, None);
    }
    for p in allows {
        if let Some(rule) = p.first_match(&peer) {
            return decided(Verdict::Allow, Some(p), Some(rule));
        }
    }
    decided(Verdict::Deny, None, None)
}

#[cfg(test)]
mod tests;
