//! What a run produces: the requests and their outcomes, the first violated invariant, the
//! trace and the wire report. Everything the report, the trace file and the timeline need.

use std::time::Duration;

use crate::scenario::Outcome;
use crate::trace::Event;
use crate::wire::WireReport;

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    /// `plaintext`, `policy`, `convergence`, `panic`, `leaks` or `routing`.
    pub invariant: &'static str,
    pub at: Duration,
    /// What happened.
    pub event: String,
    /// The last events before it.
    pub before: Vec<Event>,
}

/// One request and what its client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub traffic: usize,
    pub request: u64,
    pub conn: String,
    pub source_node: String,
    pub started: Duration,
    pub finished: Duration,
    pub outcome: Outcome,
    /// The pod that answered an HTTP request, as its echo said.
    pub backend: Option<String>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub sim_time: Duration,
    pub events: Vec<Event>,
    pub wire: WireReport,
    pub requests: Vec<RequestRecord>,
    /// The first invariant that failed.
    pub violation: Option<Violation>,
    /// Why the run could not go on (a host error, a bad manifest, the time limit).
    pub failure: Option<String>,
    /// `sim.step()` calls.
    pub steps: u64,
    pub nodes: Vec<String>,
    /// Timeline steps as applied: (time, description, is a fault).
    pub timeline: Vec<(Duration, String, bool)>,
}
