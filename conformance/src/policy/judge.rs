//! How a policy attempt is judged: what the client saw as an outcome, which component
//! decided it (from the proxies' own denials logged while the try was in flight), and
//! whether every try agrees with the case.

use sim::apps::echo::EchoBody;

use super::{Attempt, Decider, Outcome, Protocol, RBAC_DENIED, TRIES};
use crate::targets::{Answer, Observation};

/// A denial a proxy logged while a try was in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `ztunnel` or `waypoint`.
    pub component: Decider,
    /// The host that logged it (a node, or `<namespace>/<waypoint pod>`).
    pub host: String,
    /// The decision in the proxy's words.
    pub decision: String,
}

/// Which part of the run a try belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    /// Between the change and the point where everything has converged: not judged.
    Settling,
    After,
}

/// One try of an attempt as the target saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTry {
    pub phase: Phase,
    pub observation: Observation,
    /// Denials logged while it was in flight (for a persistent attempt's first try after the
    /// change: since the change).
    pub denials: Vec<Denial>,
}

/// What a target saw for a policy case.
#[derive(Debug, Clone, Default)]
pub struct PolicyRun {
    /// Per attempt, its tries in the order sent.
    pub tries: Vec<Vec<PolicyTry>>,
    /// Per refused manifest: `Ok(reason)` when it was refused, `Err(why)` when it was not.
    pub refusals: Vec<Result<String, String>>,
    /// Something beyond the attempts went wrong (an invariant, the run itself).
    pub problem: Option<String>,
    pub replay: Option<String>,
}

/// What the client saw, as an outcome, or in words when it is none of them.
pub fn observed_outcome(answer: &Answer, protocol: Protocol) -> Result<Outcome, String> {
    match answer {
        Answer::Echoed if protocol == Protocol::Tcp => Ok(Outcome::Allowed),
        Answer::Echoed => Err("a TCP echo to an HTTP request".into()),
        Answer::Refused => Ok(Outcome::Reset),
        Answer::Timeout => Err("no answer within the timeout".into()),
        Answer::Response(r) if (200..300).contains(&r.status) => {
            match serde_json::from_str::<EchoBody>(&r.body) {
                Ok(_) => Ok(Outcome::Allowed),
                Err(_) => Err(format!("status {} not answered by the echo", r.status)),
            }
        }
        Answer::Response(r) => Outcome::ALL
            .into_iter()
            .find(|o| o.status() == Some(r.status))
            .ok_or_else(|| format!("status {}{}", r.status, body_hint(&r.body))),
    }
}

fn body_hint(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(" {:?}", body.chars().take(80).collect::<String>())
    }
}

/// Who decided, from the answer and the denials logged on the path: the waypoint's own 403
/// (`RBAC: access denied`) is the waypoint; otherwise a denial the waypoint logged makes it
/// the waypoint (a TCP connection it refused), else one a node's ztunnel logged (directly, or
/// behind the waypoint, which then answers 503); `None` when nobody logged one.
pub fn observed_decider(answer: &Answer, denials: &[Denial]) -> Option<Decider> {
    if let Answer::Response(r) = answer
        && (r.status == 403 || r.status == 401)
        && r.body.trim() == RBAC_DENIED
    {
        return Some(Decider::Waypoint);
    }
    if denials.iter().any(|d| d.component == Decider::Waypoint) {
        return Some(Decider::Waypoint);
    }
    denials
        .iter()
        .any(|d| d.component == Decider::Ztunnel)
        .then_some(Decider::Ztunnel)
}

/// One try against `outcome`, decided by `decider`.
pub fn check_try(
    attempt: &Attempt,
    outcome: Outcome,
    decider: Decider,
    observed: &PolicyTry,
) -> Result<(), String> {
    let answer = &observed.observation.answer;
    let got = observed_outcome(answer, attempt.protocol)
        .map_err(|what| format!("{what}, expected {outcome}"))?;
    let denials = || {
        if observed.denials.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                observed
                    .denials
                    .iter()
                    .map(|d| format!("{} {}: {}", d.component, d.host, d.decision))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    };
    if got != outcome {
        let by = match got {
            Outcome::Allowed => String::new(),
            _ => match observed_decider(answer, &observed.denials) {
                Some(d) => format!(" by {d}"),
                None => " (no denial logged)".into(),
            },
        };
        let hint = match answer {
            Answer::Response(r) if got != Outcome::Allowed => body_hint(&r.body),
            _ => String::new(),
        };
        return Err(format!("{got}{by}{hint}, expected {outcome}{}", denials()));
    }
    if outcome == Outcome::Allowed {
        if let (Some(want), Answer::Response(r)) = (&attempt.peer_identity, answer)
            && let Ok(echo) = serde_json::from_str::<EchoBody>(&r.body)
        {
            let seen = echo
                .peer_identity
                .strip_prefix("spiffe://")
                .unwrap_or(&echo.peer_identity);
            if seen != want {
                return Err(format!(
                    "allowed, but the echo's peer was {seen:?}, expected {want:?}"
                ));
            }
        }
        return Ok(());
    }
    if !observed.observation.received_by.is_empty() {
        return Err(format!(
            "{got}, but the application received it ({})",
            observed.observation.received_by.join(", ")
        ));
    }
    let want = decider;
    match observed_decider(answer, &observed.denials) {
        Some(d) if d == want => Ok(()),
        Some(d) => Err(format!(
            "{got} decided by {d}, expected {want}{}",
            denials()
        )),
        None => Err(format!(
            "{got}, but no proxy logged a denial (expected {want} to decide)"
        )),
    }
}

/// One attempt's verdict: `Err` with what went wrong.
pub fn judge_attempt(attempt: &Attempt, tries: &[PolicyTry]) -> Result<(), String> {
    let mut phases = vec![(Phase::After, attempt.expect)];
    if let Some(before) = attempt.before {
        phases.insert(0, (Phase::Before, before));
    }
    for (phase, outcome) in phases {
        let these: Vec<&PolicyTry> = tries.iter().filter(|t| t.phase == phase).collect();
        let when = match phase {
            Phase::Before => " before the change",
            _ if attempt.before.is_some() => " after the change",
            _ => "",
        };
        if these.len() < TRIES {
            return Err(format!("{} of {TRIES} tries{when} were made", these.len()));
        }
        for t in these {
            check_try(attempt, outcome, attempt.decider_for(outcome), t)
                .map_err(|why| format!("at {}ms{when}: {why}", t.observation.at_ms))?;
        }
    }
    Ok(())
}
