//! What a run produces: the requests and their outcomes, the first violated invariant, the
//! trace and the wire report. Everything the report, the trace file and the timeline need.

use std::time::Duration;

use crate::apps::HttpResponse;
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
    /// The whole HTTP answer, for traffic that asks to `record` it.
    pub response: Option<HttpResponse>,
}

/// A request marker an application received (for traffic that asks to `record`): which pod
/// got a copy of which request — the primary and any mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub traffic: usize,
    pub request: u64,
    /// `namespace/name` of the receiving pod.
    pub pod: String,
    pub at: Duration,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub sim_time: Duration,
    pub events: Vec<Event>,
    pub wire: WireReport,
    pub requests: Vec<RequestRecord>,
    /// What applications received, for traffic that asks to `record`.
    pub deliveries: Vec<Delivery>,
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
