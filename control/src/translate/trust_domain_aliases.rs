//! Trust-domain aliases (mesh config `trustDomainAliases`): a principal written for the
//! mesh's trust domain, one of its aliases, or `cluster.local` (which always stands for the
//! local trust domain) also names the same workload under every other of them, so identities
//! keep matching across a trust-domain migration. Upstream's Envoy builder rewrites
//! `principals` and `notPrincipals` this way; its ztunnel translation does not (a TODO in
//! istiod) — we rewrite for both, the documented intent, before either translation runs.
//!
//! A principal that does not enforce a trust domain (`*`, `*/ns/a/sa/b`) or names another
//! trust domain is kept as written.

use std::borrow::Cow;

use crate::snapshot::MeshConfig;
use crate::types::security::AuthorizationPolicySpec;

/// The trust domains that are one: the mesh's own, then its aliases, without repeats.
fn bundle(mesh: &MeshConfig) -> Vec<&str> {
    let mut domains = vec![mesh.trust_domain.as_str()];
    for alias in &mesh.trust_domain_aliases {
        if !domains.contains(&alias.as_str()) {
            domains.push(alias);
        }
    }
    domains
}

/// `principals` with each local-trust-domain principal written once per trust domain of the
/// bundle (in the bundle's order); others as they are.
pub fn expand(principals: &[String], mesh: &MeshConfig) -> Vec<String> {
    let domains = bundle(mesh);
    let mut out: Vec<String> = Vec::with_capacity(principals.len());
    let mut push = |p: String| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for principal in principals {
        let local = principal
            .split_once("/ns/")
            .map(|(td, _)| td)
            .filter(|td| !td.starts_with('*') && (domains.contains(td) || *td == "cluster.local"));
        match local {
            Some(td) => {
                let rest = &principal[td.len()..];
                for domain in &domains {
                    push(format!("{domain}{rest}"));
                }
            }
            None => push(principal.clone()),
        }
    }
    out
}

/// The spec with every `principals`, `notPrincipals` and `source.principal` condition
/// expanded; borrowed when nothing would change (no aliases, trust domain `cluster.local`).
pub fn apply<'a>(
    spec: &'a AuthorizationPolicySpec,
    mesh: &MeshConfig,
) -> Cow<'a, AuthorizationPolicySpec> {
    if mesh.trust_domain_aliases.is_empty() && mesh.trust_domain == "cluster.local" {
        return Cow::Borrowed(spec);
    }
    let mut spec = spec.clone();
    for rule in &mut spec.rules {
        for from in rule.from.iter_mut().flatten() {
            from.source.principals = expand(&from.source.principals, mesh);
            from.source.not_principals = expand(&from.source.not_principals, mesh);
        }
        for condition in rule.when.iter_mut().flatten() {
            if condition.key == "source.principal" {
                condition.values = expand(&condition.values, mesh);
                condition.not_values = expand(&condition.not_values, mesh);
            }
        }
    }
    Cow::Owned(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(td: &str, aliases: &[&str]) -> MeshConfig {
        MeshConfig {
            trust_domain: td.into(),
            trust_domain_aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..MeshConfig::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn local_principals_are_written_for_every_alias() {
        let m = mesh("new.td", &["old.td"]);
        assert_eq!(
            expand(&strings(&["old.td/ns/a/sa/b"]), &m),
            strings(&["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"])
        );
        // cluster.local stands for the local trust domain and its aliases.
        assert_eq!(
            expand(&strings(&["cluster.local/ns/a/sa/b"]), &m),
            strings(&["new.td/ns/a/sa/b", "old.td/ns/a/sa/b"])
        );
    }

    #[test]
    fn other_and_wildcard_trust_domains_are_kept() {
        let m = mesh("new.td", &["old.td"]);
        let kept = strings(&[
            "foreign.td/ns/a/sa/b",
            "*/ns/a/sa/b",
            "*",
            "not-a-principal",
        ]);
        assert_eq!(expand(&kept, &m), kept);
    }

    #[test]
    fn nothing_changes_without_aliases_on_cluster_local() {
        let spec = AuthorizationPolicySpec::default();
        assert!(matches!(
            apply(&spec, &MeshConfig::default()),
            Cow::Borrowed(_)
        ));
    }
}
