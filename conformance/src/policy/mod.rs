//! The mTLS / authorization policy suite (`cases/policy/`): its case format, its loader and
//! how its attempts are judged (policy-semantics, `conformance/README.md`).
//!
//! A policy case applies AuthorizationPolicies and PeerAuthentications as a user writes them
//! for upstream Istio, names the policy-semantics section it checks, and makes attempts: a
//! source pod connects to a Service or a pod, over HTTP or TCP, and the attempt expects an
//! outcome (`allowed`, `reset`, `403`, `401`, `503`) decided by a component (`ztunnel`,
//! `waypoint`, `none`). A case may also list manifests the API server (istiod's validation)
//! must refuse, and one policy change made while its attempts run (open connections).
//!
//! The decider is derived from what the client saw and from the proxies' own decisions on the
//! path (see [`observed_decider`]): a 403 `RBAC: access denied` is the waypoint's answer; a
//! reset or a 503 is attributed to the component whose denial was logged while the try was
//! in flight (the waypoint's host, or a node's ztunnel).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::case::{CaseError, invalid, read, yaml_error};

/// The policy-semantics sections a case may name.
pub const SECTIONS: &[&str] = &[
    "1", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "3.1", "3.2", "3.3", "3.4", "4.1", "4.2",
    "4.3", "4.4", "4.5",
];

/// The body of a waypoint's own denial (Envoy's RBAC filter).
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// Tries of each attempt in each phase; every one must agree with the expectation.
pub const TRIES: usize = 3;

/// The policy suite's `base.yaml`: the topology every case starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBase {
    /// Must be `policy`: the format of the suite's cases.
    pub format: String,
    /// Node names of the simulated cluster.
    pub nodes: Vec<String>,
    /// Plain Kubernetes manifests.
    pub manifests: String,
}

/// What the client of an attempt sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// An HTTP 2xx answered by the echo, or the TCP echo came back.
    Allowed,
    /// The connection was refused, reset or closed before any answer.
    Reset,
    /// HTTP 403 (the waypoint's `RBAC: access denied`).
    Forbidden,
    /// HTTP 401 (the waypoint's RequestAuthentication).
    Unauthorized,
    /// HTTP 503 (the waypoint could not connect: the destination's ztunnel refused it).
    Unavailable,
}

impl Outcome {
    /// Every outcome a case may expect, as written.
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Reset,
        Outcome::Forbidden,
        Outcome::Unauthorized,
        Outcome::Unavailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Reset => "reset",
            Outcome::Forbidden => "403",
            Outcome::Unauthorized => "401",
            Outcome::Unavailable => "503",
        }
    }

    fn status(self) -> Option<u16> {
        match self {
            Outcome::Forbidden => Some(403),
            Outcome::Unauthorized => Some(401),
            Outcome::Unavailable => Some(503),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `403` is a number in YAML, `"403"` and `allowed` strings: both are accepted.
        let value = serde_yaml::Value::deserialize(d)?;
        let text = match &value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => return Err(de::Error::custom(format!("an outcome, not {other:?}"))),
        };
        Outcome::ALL
            .into_iter()
            .find(|o| o.name() == text)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown outcome {text:?}: allowed, reset, 403, 401 or 503"
                ))
            })
    }
}

/// Which component decides an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decider {
    /// The destination's ztunnel (inbound), or the source's failing closed.
    Ztunnel,
    /// The waypoint on the path.
    Waypoint,
    /// Nobody denied: the attempt is allowed.
    None,
}

impl Decider {
    pub const ALL: [Decider; 3] = [Decider::Ztunnel, Decider::Waypoint, Decider::None];

    pub fn name(self) -> &'static str {
        match self {
            Decider::Ztunnel => "ztunnel",
            Decider::Waypoint => "waypoint",
            Decider::None => "none",
        }
    }
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

/// A new connection per try (default), or one connection per attempt kept open across tries
/// (and across the case's policy change) while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    #[default]
    New,
    Persistent,
}

/// Where an attempt goes: a Service's cluster IP or a pod's own IP (`namespace/name`), and
/// the port dialled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    pub port: u16,
}

impl Destination {
    pub fn describe(&self) -> String {
        match (&self.service, &self.pod) {
            (Some(s), _) => format!("service {s}:{}", self.port),
            (_, Some(p)) => format!("pod {p}:{}", self.port),
            _ => "nowhere".into(),
        }
    }
}

/// One attempt: who connects where, how, and what must come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Attempt {
    /// For messages; default: `from -> to (protocol)`.
    #[serde(default)]
    pub name: Option<String>,
    /// `namespace/pod` of the client.
    pub from: String,
    pub to: Destination,
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP only (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP only: path and query, as sent (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP only.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub connection: Connection,
    /// With the case's `change`: the outcome before the change (tried then too).
    #[serde(default)]
    pub before: Option<Outcome>,
    /// The outcome (after the case's change, if it has one).
    pub expect: Outcome,
    /// Who decides it; default (and required for `allowed`): `none`.
    #[serde(default)]
    pub decider: Option<Decider>,
    /// Allowed HTTP only: the identity of the peer the echo saw, without `spiffe://` (the
    /// client's for a direct connection, the waypoint's through one: policy-semantics §1).
    #[serde(default)]
    pub peer_identity: Option<String>,
    /// Whether the attempt must cross between nodes encrypted (the simulator's plaintext
    /// invariant). Default: when the client is captured.
    #[serde(default)]
    pub encrypted: Option<bool>,
}

impl Attempt {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{} -> {} ({})",
                self.from,
                self.to.describe(),
                match self.protocol {
                    Protocol::Http => "http",
                    Protocol::Tcp => "tcp",
                }
            )
        })
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }

    /// The outcomes it expects: before the change (if any), then after it (or throughout).
    fn outcomes(&self) -> impl Iterator<Item = Outcome> {
        self.before.into_iter().chain([self.expect])
    }

    /// Who decides `outcome`: nobody for `allowed`, else the attempt's `decider` (the one
    /// component that denies it, in whichever phase it is denied).
    pub fn decider_for(&self, outcome: Outcome) -> Decider {
        match outcome {
            Outcome::Allowed => Decider::None,
            _ => self.decider.unwrap_or(Decider::None),
        }
    }
}

/// A manifest the API server (istiod's validating webhook) must refuse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    pub name: String,
    pub manifest: String,
}

/// `{kind, namespace, name}` of an object to delete.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

/// One change made while the attempts run: after their `before` tries, and before the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    #[serde(default)]
    pub apply: Option<String>,
    #[serde(default)]
    pub delete: Option<ObjectRef>,
}

/// One case of the policy suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCase {
    pub id: String,
    /// The policy-semantics section it checks (one of [`SECTIONS`]).
    pub section: String,
    /// For a behaviour the reference marks as an upstream quirk: which side the case takes
    /// (the project implements the documented intent), e.g. `intent, upstream differs: …`.
    #[serde(default)]
    pub quirk: Option<String>,
    /// Why this case is not run; it reports SKIP.
    #[serde(default)]
    pub skip: Option<String>,
    /// The policies (and any extra objects) added to the base topology.
    #[serde(default)]
    pub manifests: String,
    /// Manifests that must be refused when applied on top of the case's.
    #[serde(default)]
    pub refused: Vec<Refused>,
    #[serde(default)]
    pub change: Option<Change>,
    /// istiod's feature flags for this case, by upstream's environment variable names.
    #[serde(default, rename = "istiodEnv")]
    pub istiod_env: BTreeMap<String, String>,
    /// Upstream's mesh config (YAML) istiod runs with for this case.
    #[serde(default, rename = "meshConfig")]
    pub mesh_config: String,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl PolicyCase {
    /// Traffic attempts and refusals: what the summary counts.
    pub fn checks(&self) -> usize {
        self.attempts.len() + self.refused.len()
    }

    fn check(&self) -> Result<(), CaseError> {
        let fail = |m: String| Err(invalid(&self.file, m));
        if !SECTIONS.contains(&self.section.as_str()) {
            return fail(format!(
                "section {:?} is not a policy-semantics section ({})",
                self.section,
                SECTIONS.join(", ")
            ));
        }
        if self.attempts.is_empty() && self.refused.is_empty() {
            return fail("a case needs attempts or refused manifests".into());
        }
        if self.quirk.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return fail("quirk: say which behaviour the case takes".into());
        }
        if let Some(change) = &self.change
            && change.apply.is_some() == change.delete.is_some()
        {
            return fail("change: exactly one of apply, delete".into());
        }
        let mut closing: Option<Decider> = None;
        for (i, a) in self.attempts.iter().enumerate() {
            let at = |m: &str| Err(invalid(&self.file, format!("attempts[{i}]: {m}")));
            if !is_qualified(&a.from) {
                return at("from: namespace/pod");
            }
            match (&a.to.service, &a.to.pod) {
                (Some(n), None) | (None, Some(n)) if is_qualified(n) => {}
                (Some(_), None) | (None, Some(_)) => return at("to: namespace/name"),
                _ => return at("to: exactly one of service, pod"),
            }
            if a.to.port == 0 {
                return at("to.port 0");
            }
            if a.protocol == Protocol::Tcp
                && (a.method.is_some() || a.path.is_some() || !a.headers.is_empty())
            {
                return at("method, path and headers are for HTTP");
            }
            if a.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                return at("path must start with /");
            }
            let denied = a.outcomes().any(|o| o != Outcome::Allowed);
            match (denied, a.decider) {
                (false, None | Some(Decider::None)) => {}
                (false, Some(_)) => return at("allowed: nobody decides (decider none)"),
                (true, None | Some(Decider::None)) => {
                    return at("a denial needs its decider (ztunnel or waypoint)");
                }
                (true, Some(Decider::Ztunnel))
                    if a.outcomes()
                        .any(|o| matches!(o, Outcome::Forbidden | Outcome::Unauthorized)) =>
                {
                    return at("only the waypoint answers 403 and 401");
                }
                _ => {}
            }
            if a.peer_identity.is_some()
                && (a.expect != Outcome::Allowed || a.protocol != Protocol::Http)
            {
                return at("peerIdentity is what an allowed HTTP attempt's echo saw");
            }
            if a.before.is_some() && self.change.is_none() {
                return at("before needs the case's change");
            }
            if a.protocol == Protocol::Tcp
                && [Some(a.expect), a.before]
                    .into_iter()
                    .flatten()
                    .any(|o| o.status().is_some())
            {
                return at("a TCP attempt is allowed or reset");
            }
            // A persistent attempt closed by the change is judged on what was logged since
            // the change: several of them in one case must agree on who closes them.
            if self.change.is_some()
                && a.connection == Connection::Persistent
                && a.before == Some(Outcome::Allowed)
                && a.expect != Outcome::Allowed
            {
                let decider = a.decider_for(a.expect);
                match closing {
                    Some(d) if d != decider => {
                        return at("persistent attempts closed by the change must share a decider");
                    }
                    _ => closing = Some(decider),
                }
            }
        }
        Ok(())
    }
}

fn is_qualified(name: &str) -> bool {
    matches!(name.split_once('/'), Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/'))
}

/// Whether the suite in `dir` is a policy suite (its `base.yaml` says `format: policy`).
pub fn is_policy_suite(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("base.yaml"))
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("policy"))
}

/// Reads the policy suite's `base.yaml`.
pub fn load_base(dir: &Path) -> Result<PolicyBase, CaseError> {
    let path = dir.join("base.yaml");
    let base: PolicyBase = serde_yaml::from_str(&read(&path)?).map_err(|e| yaml_error(&path, e))?;
    if base.format != "policy" {
        return Err(invalid(&path, "format: policy"));
    }
    Ok(base)
}

/// Reads and checks one policy case.
pub fn load_case(path: &Path) -> Result<PolicyCase, CaseError> {
    let mut case: PolicyCase =
        serde_yaml::from_str(&read(path)?).map_err(|e| yaml_error(path, e))?;
    case.file = path.to_path_buf();
    case.check()?;
    Ok(case)
}

/// Every case of a policy suite (every `*.yaml` but `base.yaml`), sorted by file name; ids
/// unique.
pub fn load_cases(dir: &Path) -> Result<Vec<PolicyCase>, CaseError> {
    let files = crate::case::case_files(dir)?;
    let cases = files
        .iter()
        .map(|f| load_case(f))
        .collect::<Result<Vec<_>, _>>()?;
    crate::case::unique_ids(cases.iter().map(|c| (c.id.as_str(), c.file.as_path())))?;
    Ok(cases)
}

mod judge;

pub use judge::{
    Denial, Phase, PolicyRun, PolicyTry, check_try, judge_attempt, observed_decider,
    observed_outcome,
};

#[cfg(test)]
mod tests;
