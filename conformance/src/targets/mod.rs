//! Targets: where a case runs. A target applies the base topology and the case's manifests,
//! sends each request of the case repeatedly (the eventual-consistency rule needs a series
//! of observations, gateway-api-semantics §2), and returns what each try saw. The runner
//! judges; a target only observes. A policy case (`crate::policy`) is run the same way, and
//! its target also reports who denied each try, as far as it can tell.

pub mod local;
pub mod sim;

use crate::case::{Base, Case};
use crate::policy::{PolicyBase, PolicyCase, PolicyRun};

/// What one try of a request saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Response(Response),
    /// A TCP exchange: the bytes sent came back.
    Echoed,
    /// The connection was refused or closed before an answer.
    Refused,
    /// No answer within the request's timeout.
    Timeout,
}

/// An HTTP answer as the client read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    /// In order received; names compare case-insensitively.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Every value of header `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One try of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// When it was sent, in milliseconds from the target's start (for messages).
    pub at_ms: u64,
    pub answer: Answer,
    /// `namespace/pod` of every application that received this try (the answering backend
    /// and any mirror), where the target can tell.
    pub received_by: Vec<String>,
}

/// What a target saw for a case: per request of the case, its tries in the order sent.
#[derive(Debug, Clone, Default)]
pub struct CaseRun {
    pub tries: Vec<Vec<Observation>>,
    /// Something beyond the requests went wrong (the simulator's invariants, a run error).
    pub problem: Option<String>,
    /// How to reproduce the run, for messages.
    pub replay: Option<String>,
}

/// Why a target could not run a case at all.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the case cannot be set up: {0}")]
    Setup(String),
    #[error("target {0} is not available")]
    Unavailable(String),
    /// The target cannot realise this case; the reason says what. Reported as a skip.
    #[error("{0}")]
    Skip(String),
}

/// A place cases run: the simulator, the namespace cluster, a kind cluster.
pub trait Target {
    /// `sim`, `local` or `kind`.
    fn name(&self) -> &'static str;

    /// Whether a case run twice sees the same (a seeded simulator): then a failed weight share
    /// is not worth another round.
    fn deterministic(&self) -> bool {
        true
    }

    /// Runs one case on top of `base` and reports every try of every request.
    fn run(&self, base: &Base, case: &Case) -> Result<CaseRun, TargetError>;

    /// Runs one policy case on top of `base`: every try of every attempt, the denials the
    /// proxies logged while each was in flight, and whether each manifest the case expects
    /// refused was.
    fn run_policy(&self, base: &PolicyBase, case: &PolicyCase) -> Result<PolicyRun, TargetError>;
}

/// The target a command-line name stands for; `keep` keeps what a run leaves on disk (the
/// namespace cluster's run directories, with every process's log) and says where.
pub fn by_name(name: &str, seed: u64, keep: bool) -> Result<Box<dyn Target>, TargetError> {
    match name {
        "sim" => Ok(Box::new(sim::SimTarget::new(seed))),
        "local" => Ok(Box::new(local::LocalTarget::new(seed, keep)?)),
        other => Err(TargetError::Unavailable(other.to_string())),
    }
}
