//! PeerAuthentication → the DENY policies ztunnels enforce (policy-semantics §3). ztunnel
//! knows no PeerAuthentication: istiod publishes a static STRICT policy (deny peers without an
//! identity) whenever any PeerAuthentication exists, references it from every workload whose
//! effective mode is STRICT, and, for workload-level policies with port exceptions, a
//! converted per-workload policy instead. DISABLE behaves as PERMISSIVE in ambient.
//!
//! This follows the documented intent where upstream's code is suspected to differ
//! (policy-semantics §3.4, quirks 1 and 2).

use std::collections::BTreeMap;

use dataplane::policy::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};

use crate::types::security::{MutualTlsMode, PeerAuthenticationSpec};

/// The name of the static STRICT policy, in the root namespace.
pub const STATIC_STRICT: &str = "istio_converted_static_strict";

/// A PeerAuthentication as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    /// `creationTimestamp` in seconds: on conflicts the oldest wins.
    pub created: i64,
    pub spec: PeerAuthenticationSpec,
}

/// The workload a decision is made for.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Plaintext is refused (`true`) or accepted.
fn strict(mode: MutualTlsMode) -> Option<bool> {
    match mode {
        MutualTlsMode::Unset => None,
        MutualTlsMode::Strict => Some(true),
        MutualTlsMode::Permissive | MutualTlsMode::Disable => Some(false),
    }
}

fn mode_of(pa: &PeerAuthentication) -> MutualTlsMode {
    pa.spec.mtls.map(|m| m.mode).unwrap_or_default()
}

fn oldest<'a>(
    candidates: impl Iterator<Item = &'a PeerAuthentication>,
) -> Option<&'a PeerAuthentication> {
    candidates.min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
}

fn selects(pa: &PeerAuthentication, workload: WorkloadRef<'_>) -> bool {
    pa.spec.selector.as_ref().is_some_and(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| workload.labels.get(k) == Some(v))
    })
}

/// The policies that apply at each level for `workload`.
struct Levels<'a> {
    mesh: Option<&'a PeerAuthentication>,
    namespace: Option<&'a PeerAuthentication>,
    workload: Option<&'a PeerAuthentication>,
}

fn levels<'a>(
    all: &'a [PeerAuthentication],
    root_namespace: &str,
    workload: WorkloadRef<'_>,
) -> Levels<'a> {
    Levels {
        mesh: oldest(
            all.iter()
                .filter(|p| p.namespace == root_namespace && p.spec.selector.is_none()),
        ),
        namespace: oldest(
            all.iter()
                .filter(|p| p.namespace == workload.namespace && p.spec.selector.is_none()),
        ),
        workload: oldest(
            all.iter()
                .filter(|p| p.namespace == workload.namespace && selects(p, workload)),
        ),
    }
}

/// STRICT or not, from the levels above the workload's own policy.
fn inherited(levels: &Levels<'_>) -> bool {
    levels
        .namespace
        .and_then(|p| strict(mode_of(p)))
        .or_else(|| levels.mesh.and_then(|p| strict(mode_of(p))))
        .unwrap_or(false)
}

/// Whether plaintext is refused on the workload as a whole (ignoring port exceptions).
fn effective_strict(levels: &Levels<'_>) -> bool {
    levels
        .workload
        .and_then(|p| strict(mode_of(p)))
        .unwrap_or_else(|| inherited(levels))
}

fn plaintext() -> Match {
    Match {
        not_principals: vec![StringMatch::Presence],
        ..Match::default()
    }
}

fn rule(m: Match) -> Rule {
    Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }
}

/// The converted policy of a workload-level PeerAuthentication with port exceptions, when
/// it changes anything for a workload whose effective mode is `workload_strict`.
fn converted(pa: &PeerAuthentication, workload_strict: bool) -> Option<Authorization> {
    let mut exempt = Vec::new();
    let mut strict_ports = Vec::new();
    for (port, mtls) in &pa.spec.port_level_mtls {
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        match strict(mtls.mode) {
            Some(true) => strict_ports.push(port),
            Some(false) => exempt.push(port),
            None => {}
        }
    }
    let rules = if workload_strict {
        if exempt.is_empty() {
            return None;
        }
        vec![rule(Match {
            not_destination_ports: exempt,
            ..plaintext()
        })]
    } else {
        if strict_ports.is_empty() {
            return None;
        }
        strict_ports
            .into_iter()
            .map(|port| {
                rule(Match {
                    destination_ports: vec![port],
                    ..plaintext()
                })
            })
            .collect()
    };
    Some(Authorization {
        name: format!("converted_peer_authentication_{}", pa.name),
        namespace: pa.namespace.clone(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules,
        dry_run: false,
    })
}

/// The static STRICT policy: deny any peer without an identity.
pub fn static_strict_policy(root_namespace: &str) -> Authorization {
    Authorization {
        name: STATIC_STRICT.to_string(),
        namespace: root_namespace.to_string(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![rule(plaintext())],
        dry_run: false,
    }
}

/// What PeerAuthentication means for one workload: the policies to publish for it and the
/// names (`ns/name`) its `authorization_policies` must list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForWorkload {
    pub converted: Option<Authorization>,
    pub references: Vec<String>,
}

pub fn for_workload(
    all: &[PeerAuthentication],
    root_namespace: &str,
    workload: WorkloadRef<'_>,
) -> ForWorkload {
    let levels = levels(all, root_namespace, workload);
    let workload_strict = effective_strict(&levels);
    let converted = levels
        .workload
        .filter(|p| !p.spec.port_level_mtls.is_empty())
        .and_then(|p| converted(p, workload_strict));
    let references = match &converted {
        Some(policy) => vec![policy.key()],
        None if workload_strict => vec![format!("{root_namespace}/{STATIC_STRICT}")],
        None => Vec::new(),
    };
    ForWorkload {
        converted,
        references,
    }
}
