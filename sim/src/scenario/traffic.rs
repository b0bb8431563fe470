//! Traffic: streams of requests from pods or deployments to pods, deployments or services,
//! and how they are made (protocol, capture, connection reuse, rate, timeout).

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::values::is_dns_label;
use super::{Dur, Expectation};

/// A pod, a deployment's pods, or a service (with a port, as a destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `namespace/name` of one pod.
    Pod(String, String),
    /// A deployment's pods, taken in turn.
    Deployment(String, String),
    /// A service's cluster IP.
    Service(String, String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Pod(ns, n) => format!("pod {ns}/{n}"),
            Target::Deployment(ns, n) => format!("deployment {ns}/{n}"),
            Target::Service(ns, n) => format!("service {ns}/{n}"),
        }
    }
}

fn namespaced<E: de::Error>(what: &str, s: &str) -> Result<(String, String), E> {
    match s.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && !name.is_empty() => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(E::custom(format!(
            "{what} {s:?}: expected <namespace>/<name>"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

fn target<E: de::Error>(raw: RawTarget, port: bool) -> Result<(Target, Option<u16>), E> {
    let mut targets = Vec::new();
    if let Some(p) = &raw.pod {
        let (ns, n) = namespaced("pod", p)?;
        targets.push(Target::Pod(ns, n));
    }
    if let Some(p) = &raw.deployment {
        let (ns, n) = namespaced("deployment", p)?;
        targets.push(Target::Deployment(ns, n));
    }
    if let Some(p) = &raw.service {
        if !port {
            return Err(E::custom(
                "a service cannot send traffic: use pod or deployment",
            ));
        }
        let (ns, n) = namespaced("service", p)?;
        targets.push(Target::Service(ns, n));
    }
    if targets.len() != 1 {
        return Err(E::custom(if port {
            "exactly one of pod, deployment, service"
        } else {
            "exactly one of pod, deployment"
        }));
    }
    match (port, raw.port) {
        (true, None) => Err(E::custom("the destination needs a port")),
        (true, Some(0)) => Err(E::custom("port 0")),
        (false, Some(_)) => Err(E::custom("the source takes no port")),
        (_, p) => Ok((targets.remove(0), p)),
    }
}

/// Where traffic comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub Target);

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawTarget::deserialize(d)?;
        Ok(Source(target(raw, false)?.0))
    }
}

/// Where traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: Target,
    pub port: u16,
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawTarget::deserialize(d)?;
        let (target, port) = target(raw, true)?;
        Ok(Destination {
            target,
            port: port.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Http,
}

/// Whether a request opens its own connection or reuses one per source pod.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionMode {
    #[default]
    New,
    Persistent,
}

/// Is the source's outbound traffic captured? `auto` follows the enrollment labels, as the
/// CNI would.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    #[default]
    Auto,
    Captured,
    Uncaptured,
}

/// What an HTTP request asks for (`protocol: http`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    #[serde(default = "get")]
    pub method: String,
    /// Path and query, as sent.
    #[serde(default = "echo_path")]
    pub path: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The request body (sent with its `content-length`); none by default.
    #[serde(default)]
    pub body: Option<String>,
}

impl Default for HttpRequest {
    fn default() -> Self {
        HttpRequest {
            method: get(),
            path: echo_path(),
            headers: Default::default(),
            body: None,
        }
    }
}

fn get() -> String {
    "GET".into()
}
fn echo_path() -> String {
    "/echo".into()
}

/// One stream of requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Traffic {
    pub name: String,
    pub from: Source,
    pub to: Destination,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub capture: Capture,
    #[serde(default)]
    pub connection: ConnectionMode,
    /// When the first request is made.
    #[serde(default = "one_second")]
    pub start: Dur,
    /// Time between requests (the rate is one per `every`).
    #[serde(default = "one_second")]
    pub every: Dur,
    /// How long requests keep being made.
    pub duration: Dur,
    /// How long a request waits for its reply.
    #[serde(default = "two_seconds")]
    pub timeout: Dur,
    /// Whether this traffic must cross between nodes encrypted. Default: when the source is
    /// captured.
    #[serde(default)]
    pub encrypted: Option<bool>,
    pub expect: Expectation,
    /// The HTTP request made (`protocol: http`); default `GET /echo`.
    #[serde(default)]
    pub http: HttpRequest,
    /// Every answered request must come from a pod whose name starts with this (routing).
    #[serde(default)]
    pub backend: Option<String>,
    /// At the end, the answered requests' shares per pod-name prefix must each be within 5
    /// percentage points of weight / sum of weights (gateway-api-semantics §5); a weight of 0
    /// must get nothing.
    #[serde(default)]
    pub split: Option<std::collections::BTreeMap<String, u32>>,
    /// At the end, the shares of outcomes (`succeed`, `"status 503"`, `refused`, `timeout`)
    /// must each be within 5 percentage points of weight / sum of weights: for faults and
    /// flaky backends, with `expect: any`.
    #[serde(default)]
    pub outcomes: Option<std::collections::BTreeMap<String, u32>>,
    /// Keep each HTTP answer whole (status, headers, body) in the run's request records, and
    /// which pods received each request: what a conformance check compares. Off by default,
    /// as long runs would hold every body.
    #[serde(default)]
    pub record: bool,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}
fn one_second() -> Dur {
    Dur(Duration::from_secs(1))
}
fn two_seconds() -> Dur {
    Dur(Duration::from_secs(2))
}
