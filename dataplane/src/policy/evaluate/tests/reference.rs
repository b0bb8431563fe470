//! An oracle for the property tests: a plain restatement of the L4 semantics in
//! `shared/reference/policy-semantics.md` §2.1–2.4 (ztunnel), sharing no code with the
//! evaluator — not `Match::matches`, `StringMatch::matches`, `Cidr::contains` nor
//! `Identity::principal`.

use super::*;

/// Istio string values as istiod hands them to ztunnel: exact, `prefix*`, `*suffix`, and
/// `*` alone meaning "present" (non-empty).
pub fn string_hit(pattern: &StringMatch, value: &str) -> bool {
    let (v, n) = (value.as_bytes(), value.len());
    match pattern {
        StringMatch::Exact(s) => value == s,
        StringMatch::Prefix(p) => n >= p.len() && &v[..p.len()] == p.as_bytes(),
        StringMatch::Suffix(s) => n >= s.len() && &v[n - s.len()..] == s.as_bytes(),
        StringMatch::Presence => n > 0,
    }
}

/// Bit `i` of an address, most significant first.
fn bit(octets: &[u8], i: usize) -> bool {
    octets[i / 8] & (0x80 >> (i % 8)) != 0
}

/// CIDR containment: same address family and the first `length` bits agree.
pub fn cidr_hit(cidr: &Cidr, ip: IpAddr) -> bool {
    let (net, ip) = match (cidr.address, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => (n.octets().to_vec(), i.octets().to_vec()),
        (IpAddr::V6(n), IpAddr::V6(i)) => (n.octets().to_vec(), i.octets().to_vec()),
        _ => return false,
    };
    (0..usize::from(cidr.length)).all(|i| bit(&net, i) == bit(&ip, i))
}

/// One field of a match group: unlisted = no constraint; otherwise one listed value must
/// hit, and no `not` value may hit.
fn field<T>(values: &[T], not_values: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&hit)) && !not_values.iter().any(&hit)
}

/// A match group: all fields hold. A group with no field set never matches. Identity
/// fields compare against the peer identity; plaintext has none, so no value can hit
/// (positive lists fail, `not` lists pass).
pub fn group(m: &Match, c: &ConnectionContext) -> bool {
    if *m == Match::default() {
        return false;
    }
    let peer = c.source_identity.as_ref();
    let namespace = peer.map(|p| p.namespace.clone());
    let principal = peer.map(|p| {
        format!(
            "{}/ns/{}/sa/{}",
            p.trust_domain, p.namespace, p.service_account
        )
    });
    let ns_hit = |s: &StringMatch| namespace.as_deref().is_some_and(|v| string_hit(s, v));
    let principal_hit = |s: &StringMatch| principal.as_deref().is_some_and(|v| string_hit(s, v));
    // trust domain ignored
    let sa_hit = |s: &ServiceAccountMatch| {
        peer.is_some_and(|p| p.namespace == s.namespace && p.service_account == s.service_account)
    };
    field(&m.namespaces, &m.not_namespaces, ns_hit)
        && field(&m.principals, &m.not_principals, principal_hit)
        && field(&m.service_accounts, &m.not_service_accounts, sa_hit)
        && field(&m.source_ips, &m.not_source_ips, |n| {
            cidr_hit(n, c.source_ip)
        })
        && field(&m.destination_ips, &m.not_destination_ips, |n| {
            cidr_hit(n, c.destination_ip)
        })
        && field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == c.destination_port
        })
}

/// Rules OR; a rule's clauses AND (none = true); a clause's groups OR (none = true).
/// A policy without rules never matches.
pub fn first_matching_rule(p: &Authorization, c: &ConnectionContext) -> Option<usize> {
    p.rules.iter().position(|r| {
        r.clauses
            .iter()
            .all(|cl| cl.matches.is_empty() || cl.matches.iter().any(|m| group(m, c)))
    })
}

/// Dry-run policies only report; the first matching DENY decides; no ALLOW policy means
/// allow; else the first matching ALLOW decides; else deny.
pub fn decide(c: &ConnectionContext, policies: &[Authorization]) -> Decision {
    let key = |p: &Authorization| format!("{}/{}", p.namespace, p.name);
    let dry_run_matches: Vec<(String, Action)> = policies
        .iter()
        .filter(|p| p.dry_run && first_matching_rule(p, c).is_some())
        .map(|p| (key(p), p.action))
        .collect();
    let decision = |verdict, p: Option<&Authorization>| Decision {
        verdict,
        policy: p.map(key),
        rule: p.and_then(|p| first_matching_rule(p, c)),
        dry_run_matches: dry_run_matches.clone(),
    };
    let enforced = |action| {
        policies
            .iter()
            .filter(move |p| !p.dry_run && p.action == action)
    };
    if let Some(p) = enforced(Action::Deny).find(|p| first_matching_rule(p, c).is_some()) {
        return decision(Verdict::Deny, Some(p));
    }
    if enforced(Action::Allow).next().is_none() {
        return decision(Verdict::Allow, None);
    }
    match enforced(Action::Allow).find(|p| first_matching_rule(p, c).is_some()) {
        Some(p) => decision(Verdict::Allow, Some(p)),
        None => decision(Verdict::Deny, None),
    }
}
