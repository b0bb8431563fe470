//! `trustDomains` / `notTrustDomains` of a source, folded into its principal matches.
//!
//! We implement the documented intent (the source matches peers whose identity is in, or not
//! in, those trust domains); upstream istiod leaves these fields untranslated for ztunnel, so
//! there a source that only lists trust domains never matches (policy-semantics §3.4 item 3).
//!
//! The ztunnel wire format (`istio.security.Match`) has no trust-domain field, and upstream's
//! ztunnel ignores `extensions` it does not know, so a trust domain carried any other way
//! would be dropped by it: an ALLOW would then admit every trust domain. Instead a trust
//! domain is said with what ztunnel already matches, the principal `<td>/ns/<ns>/sa/<sa>`
//! (a trust domain never contains `/`):
//!
//! | value      | principal match                       | exact?                              |
//! | ---------- | ------------------------------------- | ----------------------------------- |
//! | `td`       | prefix `td/`                          | yes                                 |
//! | `*`        | presence (any peer with an identity)  | yes                                 |
//! | `prefix*`  | prefix `prefix`                       | yes: the trust domain comes first   |
//! | `*suffix`  | none ("text before the first `/` ends with…" is not a prefix, suffix or exact match) | no |
//! | with a `/` | matches nothing                       | yes                                 |
//!
//! A source's fields AND together but the values of one field OR, so a source with both
//! `principals` and `trustDomains` cannot list both in `principals`. It gets the pairwise
//! conjunctions instead, `(p1 ∨ p2) ∧ (t1 ∨ t2) = (p1∧t1) ∨ (p1∧t2) ∨ …`, each decided here:
//! an exact principal either lies in the trust domain (kept) or not (dropped); two prefixes
//! keep the longer one when compatible. A principal suffix (`*x`) with a trust domain has no
//! single matcher either.
//!
//! Where a value has no exact form the result errs on the side that refuses more, like the
//! HTTP-attribute rules: in an ALLOW the inexpressible part admits nothing (a positive value
//! contributes nothing; a negative one makes the whole source match nothing); in a DENY it
//! matches more (a positive value keeps the principal alone, or any identity; a negative one
//! is left out). Each such case is reported in the translation's notes.

use dataplane::policy::{Action, StringMatch};

/// A trust-domain value as a principal match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Domain {
    Principal(StringMatch),
    /// No principal can be in it.
    Never,
    /// `*suffix`: no principal matcher says it.
    Inexpressible,
}

fn domain(value: &str) -> Domain {
    if value == "*" {
        return Domain::Principal(StringMatch::Presence);
    }
    if let Some(suffix) = value.strip_prefix('*') {
        return if suffix.contains('/') {
            Domain::Never
        } else {
            Domain::Inexpressible
        };
    }
    let (prefix, exact) = match value.strip_suffix('*') {
        Some(prefix) => (prefix, false),
        None => (value, true),
    };
    if prefix.contains('/') {
        Domain::Never
    } else if exact {
        Domain::Principal(StringMatch::Prefix(format!("{prefix}/")))
    } else {
        Domain::Principal(StringMatch::Prefix(prefix.to_string()))
    }
}

/// `principal ∧ domain`, where `domain` is a presence or prefix match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Both {
    Match(StringMatch),
    Never,
    Inexpressible,
}

fn both(principal: &StringMatch, domain: &StringMatch) -> Both {
    use StringMatch::*;
    match (principal, domain) {
        // A present identity's principal is never empty, so presence adds nothing.
        (p, Presence) => Both::Match(p.clone()),
        (Presence, d) => Both::Match(d.clone()),
        (Exact(e), Prefix(d)) if e.starts_with(d.as_str()) => Both::Match(Exact(e.clone())),
        (Exact(_), Prefix(_)) => Both::Never,
        (Prefix(p), Prefix(d)) if p.starts_with(d.as_str()) => Both::Match(Prefix(p.clone())),
        (Prefix(p), Prefix(d)) if d.starts_with(p.as_str()) => Both::Match(Prefix(d.clone())),
        (Prefix(_), Prefix(_)) => Both::Never,
        (Suffix(_), Prefix(_)) => Both::Inexpressible,
        // Trust domains only become presence or prefix matches.
        (_, Exact(_) | Suffix(_)) => Both::Inexpressible,
    }
}

/// The principal lists of a source with its trust domains folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Folded {
    /// `None`: the source can match no connection.
    pub lists: Option<(Vec<StringMatch>, Vec<StringMatch>)>,
    /// What could not be said exactly, and which way it was approximated.
    pub notes: Vec<String>,
}

/// Folds `trust_domains` / `not_trust_domains` into `principals` / `not_principals` (already
/// converted) for a policy of `action`.
pub(super) fn fold(
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    trust_domains: &[String],
    not_trust_domains: &[String],
    action: Action,
) -> Folded {
    let mut notes = Vec::new();
    let approximate = |notes: &mut Vec<String>, what: String| {
        notes.push(match action {
            Action::Allow => format!(
                "{what} cannot be expressed for ztunnel; this ALLOW source admits nothing by \
                 it (more restrictive)"
            ),
            Action::Deny => format!(
                "{what} cannot be expressed for ztunnel; this DENY source ignores it (more \
                 restrictive)"
            ),
        });
    };

    let positive = if trust_domains.is_empty() {
        principals
    } else {
        // No principals listed: any identity, which the trust domain then narrows.
        let candidates = if principals.is_empty() {
            vec![StringMatch::Presence]
        } else {
            principals
        };
        let mut out: Vec<StringMatch> = Vec::new();
        for value in trust_domains {
            let domain = domain(value);
            for principal in &candidates {
                let result = match &domain {
                    Domain::Principal(d) => both(principal, d),
                    Domain::Never => Both::Never,
                    Domain::Inexpressible => Both::Inexpressible,
                };
                match result {
                    Both::Match(m) => out.push(m),
                    Both::Never => {}
                    Both::Inexpressible => {
                        approximate(&mut notes, format!("trustDomains {value:?}"));
                        if action == Action::Deny {
                            // Drop the trust-domain half: matches a superset.
                            out.push(principal.clone());
                        }
                    }
                }
            }
        }
        dedup(&mut out);
        if out.is_empty() {
            // Nothing can satisfy both fields (or, in an ALLOW, nothing exact could).
            notes.dedup();
            return Folded { lists: None, notes };
        }
        out
    };

    let mut negative = not_principals;
    for value in not_trust_domains {
        match domain(value) {
            Domain::Principal(m) => negative.push(m),
            // Never in it: "not in it" holds for everyone.
            Domain::Never => {}
            Domain::Inexpressible => {
                approximate(&mut notes, format!("notTrustDomains {value:?}"));
                if action == Action::Allow {
                    notes.dedup();
                    return Folded { lists: None, notes };
                }
            }
        }
    }
    dedup(&mut negative);
    notes.dedup();
    Folded {
        lists: Some((positive, negative)),
        notes,
    }
}

/// Removes repeats, keeping the first of each.
fn dedup(list: &mut Vec<StringMatch>) {
    let mut seen: Vec<StringMatch> = Vec::with_capacity(list.len());
    list.retain(|m| {
        let new = !seen.contains(m);
        if new {
            seen.push(m.clone());
        }
        new
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use StringMatch::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn values_become_principal_matches() {
        assert_eq!(domain("td"), Domain::Principal(Prefix("td/".into())));
        assert_eq!(domain("*"), Domain::Principal(Presence));
        assert_eq!(domain("corp*"), Domain::Principal(Prefix("corp".into())));
        assert_eq!(domain("*.corp"), Domain::Inexpressible);
        assert_eq!(domain("td/ns"), Domain::Never);
        assert_eq!(domain("*/ns"), Domain::Never);
        assert_eq!(domain("a*b"), Domain::Principal(Prefix("a*b/".into())));
    }

    #[test]
    fn principals_and_trust_domains_and_together() {
        let exact = |s: &str| Exact(s.to_string());
        let folded = fold(
            vec![
                exact("a/ns/x/sa/y"),
                exact("b/ns/x/sa/y"),
                Prefix("a/ns/".into()),
            ],
            Vec::new(),
            &strings(&["a"]),
            &[],
            Action::Allow,
        );
        assert_eq!(
            folded.lists,
            Some((
                vec![exact("a/ns/x/sa/y"), Prefix("a/ns/".into())],
                Vec::new()
            ))
        );
        assert!(folded.notes.is_empty());

        let disjoint = fold(
            vec![exact("b/ns/x/sa/y")],
            Vec::new(),
            &strings(&["a"]),
            &[],
            Action::Deny,
        );
        assert_eq!(disjoint.lists, None, "exactly nothing: no note needed");
        assert!(disjoint.notes.is_empty());

        assert_eq!(
            both(&Prefix("a".into()), &Prefix("abc/".into())),
            Both::Match(Prefix("abc/".into()))
        );
    }

    #[test]
    fn inexpressible_values_refuse_more() {
        let allow = fold(
            Vec::new(),
            Vec::new(),
            &strings(&["*.corp", "td"]),
            &[],
            Action::Allow,
        );
        assert_eq!(allow.lists, Some((vec![Prefix("td/".into())], Vec::new())));
        assert_eq!(allow.notes.len(), 1);
        let deny = fold(
            Vec::new(),
            Vec::new(),
            &strings(&["*.corp"]),
            &[],
            Action::Deny,
        );
        assert_eq!(deny.lists, Some((vec![Presence], Vec::new())));

        let suffix = fold(
            vec![Suffix("/sa/web".into())],
            Vec::new(),
            &strings(&["td"]),
            &[],
            Action::Deny,
        );
        assert_eq!(
            suffix.lists,
            Some((vec![Suffix("/sa/web".into())], Vec::new()))
        );

        let not_allow = fold(
            Vec::new(),
            Vec::new(),
            &[],
            &strings(&["*.corp"]),
            Action::Allow,
        );
        assert_eq!(not_allow.lists, None);
        let not_deny = fold(
            vec![Presence],
            Vec::new(),
            &[],
            &strings(&["*.corp", "td"]),
            Action::Deny,
        );
        assert_eq!(
            not_deny.lists,
            Some((vec![Presence], vec![Prefix("td/".into())]))
        );
    }
}
