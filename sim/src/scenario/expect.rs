//! Outcomes: what a request's client sees, what the scenario expects it to see, and
//! expectations that change in phases over the run.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::Dur;

/// What the client of one request sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The echo came back (TCP), or a 2xx response (HTTP).
    Succeed,
    /// The connection was refused or closed before any reply: what a client sees when a
    /// ztunnel refuses or denies it at L4.
    Refused,
    /// An HTTP response with this (non-2xx) status.
    Status(u16),
    /// No reply within the request's timeout.
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeed => f.write_str("succeed"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Status(s) => write!(f, "status {s}"),
            Outcome::Timeout => f.write_str("timeout"),
        }
    }
}

/// What the scenario says a request must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Succeed,
    /// Refused or closed before a reply; the application must not see it.
    Denied,
    /// The same as `denied` for the client: the connection is refused or closed.
    Refused,
    /// An HTTP status.
    Status(u16),
    Timeout,
    /// Anything but success (outages, partitions: how it fails is not the point).
    Fail,
    /// Anything: each request is not judged (a traffic's `outcomes` judges the shares).
    Any,
}

impl Expected {
    /// Whether `outcome` meets this expectation.
    pub fn admits(self, outcome: Outcome) -> bool {
        match self {
            Expected::Succeed => outcome == Outcome::Succeed,
            Expected::Denied | Expected::Refused => outcome == Outcome::Refused,
            Expected::Status(s) => outcome == Outcome::Status(s),
            Expected::Timeout => outcome == Outcome::Timeout,
            Expected::Fail => outcome != Outcome::Succeed,
            Expected::Any => true,
        }
    }

    /// Whether the application must never see such a request.
    pub fn must_not_reach_app(self) -> bool {
        matches!(self, Expected::Denied | Expected::Refused)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Succeed => f.write_str("succeed"),
            Expected::Denied => f.write_str("denied"),
            Expected::Refused => f.write_str("refused"),
            Expected::Status(s) => write!(f, "status {s}"),
            Expected::Timeout => f.write_str("timeout"),
            Expected::Fail => f.write_str("fail"),
            Expected::Any => f.write_str("any"),
        }
    }
}

impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let expected = match s.as_str() {
            "succeed" => Expected::Succeed,
            "denied" => Expected::Denied,
            "refused" => Expected::Refused,
            "timeout" => Expected::Timeout,
            "fail" => Expected::Fail,
            "any" => Expected::Any,
            other => match other.strip_prefix("status ").map(str::parse::<u16>) {
                Some(Ok(code)) if (100..600).contains(&code) => Expected::Status(code),
                _ => {
                    return Err(de::Error::custom(format!(
                        "unknown outcome {other:?}: succeed, denied, refused, timeout, fail, any or \"status <code>\""
                    )));
                }
            },
        };
        Ok(expected)
    }
}

/// From `from` on, requests started must see `outcome`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub from: Dur,
    pub outcome: Expected,
}

/// One outcome for the whole run, or phases.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation(pub Vec<Phase>);

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Expectation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an outcome (succeed, denied, refused, timeout, fail, \"status <code>\") or a \
                     list of {from: <duration>, outcome: <outcome>}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Expectation, E> {
                let outcome = Expected::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(Expectation(vec![Phase {
                    from: Dur::default(),
                    outcome,
                }]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Expectation, A::Error> {
                let mut phases: Vec<Phase> = Vec::new();
                while let Some(phase) = seq.next_element::<Phase>()? {
                    if phases.last().is_some_and(|p| p.from >= phase.from) {
                        return Err(de::Error::custom(
                            "expect: phases must be in increasing `from` order",
                        ));
                    }
                    phases.push(phase);
                }
                if phases.is_empty() {
                    return Err(de::Error::custom("expect: at least one phase"));
                }
                Ok(Expectation(phases))
            }
        }
        d.deserialize_any(V)
    }
}

impl Expectation {
    /// The phase in force at `t`, its start and the previous phase's outcome.
    pub fn at(&self, t: Duration) -> (Option<Expected>, Duration, Option<Expected>) {
        let mut current = None;
        let mut since = Duration::ZERO;
        let mut previous = None;
        for phase in &self.0 {
            if phase.from.0 <= t {
                previous = current;
                current = Some(phase.outcome);
                since = phase.from.0;
            }
        }
        (current, since, previous)
    }

    /// The start of the first phase after `t`.
    pub fn next_change_after(&self, t: Duration) -> Option<Duration> {
        self.0.iter().map(|p| p.from.0).find(|&from| from > t)
    }
}
