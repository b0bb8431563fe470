//! The deterministic simulator: ambient clusters on turmoil, running the unchanged production
//! ztunnel, replayable by seed.
//!
//! A run builds a [`world`] (nodes as turmoil hosts, pods routed to their nodes, capture
//! modelled by the simulated network), drives it step by step while a [`wire`] tap reads the
//! bytes crossing between the nodes, and records a [`trace`] whose hash is the replay check:
//! the same scenario under the same seed gives the same hash. [`scenarios`] holds the
//! built-in scenarios; the `sim` binary prints one line per run.

mod logs;
pub mod scenarios;
pub mod trace;
pub mod wire;
pub mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

pub use scenarios::{ALL as SCENARIOS, Scenario};
use trace::{Event, hash_events};
use wire::WireReport;

/// The outcome of one scenario run under one seed.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The seed it ran under: with the name, all it takes to replay the run.
    pub seed: u64,
    /// Simulated time at the end of the run.
    pub sim_time: Duration,
    /// The trace, in order.
    pub events: Vec<Event>,
    /// FNV-1a 64 of the trace; equal for equal runs.
    pub trace_hash: u64,
    /// What crossed between node-a and node-b.
    pub wire: WireReport,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

impl Report {
    /// Whether the run met every expectation of its scenario.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    /// The result line: `PASS <name> seed=<n> sim_time=<ms>ms events=<n> trace=<16 hex>`, or
    /// the same starting with `FAIL` and followed by the reason.
    pub fn line(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let mut line = format!(
            "{verdict} {} seed={} sim_time={}ms events={} trace={:016x}",
            self.scenario,
            self.seed,
            self.sim_time.as_millis(),
            self.events.len(),
            self.trace_hash
        );
        if let Some(reason) = &self.failure {
            line.push(' ');
            line.push_str(reason);
        }
        line
    }

    /// The one command that replays this run.
    pub fn replay_command(&self) -> String {
        format!("cargo sim run {} --seed {}", self.scenario, self.seed)
    }
}

/// Runs `scenario` under `seed`. A panic anywhere in the run (the production code included)
/// is a failure of that run, reported like any other, so one bad scenario does not hide the
/// results of the rest.
pub fn run_scenario(scenario: &Scenario, seed: u64) -> Report {
    let run = catch_unwind(AssertUnwindSafe(|| {
        let output = world::run((scenario.plan)(), seed);
        let failure = match &output.failure {
            Some(reason) => Some(reason.clone()),
            None => (scenario.check)(&output).err(),
        };
        (output, failure)
    }));
    match run {
        Ok((output, failure)) => Report {
            scenario: scenario.name,
            seed,
            sim_time: output.sim_time,
            trace_hash: hash_events(&output.events),
            events: output.events,
            wire: output.wire,
            failure,
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Report {
                scenario: scenario.name,
                seed,
                sim_time: Duration::ZERO,
                events: Vec::new(),
                trace_hash: hash_events(&[]),
                wire: WireReport::default(),
                failure: Some(format!("panicked: {message}")),
            }
        }
    }
}
