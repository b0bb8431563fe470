//! The deterministic simulator: ambient clusters on turmoil, running the unchanged production
//! istiod and ztunnel, replayable by seed.
//!
//! A [`scenario`] (YAML: manifests, nodes, timeline, traffic, invariants) becomes a [`world`]:
//! istiod and every node as turmoil hosts, pods scheduled by the control store and routed to
//! their nodes, capture modelled by the simulated network. The driver steps it, applies the
//! timeline, makes the requests, taps the [`wire`] between nodes and checks the invariants
//! after every step; the [`trace`] hash is the replay check. Outputs: a line per run, a JSONL
//! trace and an [`html`] timeline.

pub mod apps;
pub mod html;
mod logs;
pub mod scenario;
mod tasks;
pub mod trace;
pub mod wire;
pub mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use scenario::{Scenario, ScenarioError};
use trace::hash_events;
pub use world::{Delivery, RequestRecord, RunOutput, Violation};

/// Where the scenarios live: `sim/scenarios`.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// The scenarios that must be caught: `sim/scenarios/must-fail`.
pub fn must_fail_dir() -> PathBuf {
    scenarios_dir().join("must-fail")
}

/// Loads every scenario directly in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let files = scenario::files_in(dir).map_err(|e| ScenarioError {
        file: dir.display().to_string(),
        line: None,
        message: format!("cannot list: {e}"),
    })?;
    files.iter().map(|f| Scenario::load(f)).collect()
}

/// The outcome of one scenario run under one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub file: String,
    pub seed: u64,
    /// For must-fail scenarios, the invariant that must catch them.
    pub must_fail: Option<String>,
    pub output: RunOutput,
    /// FNV-1a 64 of the trace; equal for equal runs.
    pub trace_hash: u64,
    /// Wall-clock time the run took (not part of the trace).
    pub wall: Duration,
}

impl Report {
    /// Whether the run did what its scenario says: no violation, or for a must-fail scenario,
    /// exactly the named invariant's.
    pub fn passed(&self) -> bool {
        if self.output.failure.is_some() {
            return false;
        }
        match (&self.must_fail, &self.output.violation) {
            (None, None) => true,
            (Some(name), Some(v)) => v.invariant == name,
            _ => false,
        }
    }

    /// Simulated seconds per wall second.
    pub fn speed(&self) -> f64 {
        self.output.sim_time.as_secs_f64() / self.wall.as_secs_f64().max(1e-6)
    }

    /// Events recorded per wall second.
    pub fn events_per_second(&self) -> f64 {
        self.output.events.len() as f64 / self.wall.as_secs_f64().max(1e-6)
    }

    /// `PASS`, `CAUGHT` (a must-fail scenario caught by its invariant) or `FAIL`.
    pub(crate) fn verdict(&self) -> &'static str {
        match (self.passed(), &self.must_fail) {
            (true, None) => "PASS",
            (true, Some(_)) => "CAUGHT",
            (false, _) => "FAIL",
        }
    }

    /// What went wrong, as the result line ends: ` [invariant] at …ms: event`, ` error: …`.
    pub(crate) fn problems(&self) -> String {
        let out = &self.output;
        let mut text = String::new();
        if let Some(v) = &out.violation {
            text.push_str(&format!(
                " [{}] at {}ms: {}",
                v.invariant,
                v.at.as_millis(),
                v.event
            ));
        }
        if let Some(f) = &out.failure {
            text.push_str(&format!(" error: {f}"));
        }
        text
    }

    /// The result line: `PASS|CAUGHT|FAIL <name> seed=… sim=…s wall=…s speed=…x events=…
    /// (…/s) requests=… trace=<16 hex>`, and the reason on failure.
    pub fn line(&self) -> String {
        let verdict = self.verdict();
        let out = &self.output;
        let mut line = format!(
            "{verdict} {} seed={} sim_time={:.1}s wall={:.2}s speed={:.0}x events={} ({:.0}/s) requests={} trace={:016x}",
            self.scenario,
            self.seed,
            out.sim_time.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.speed(),
            out.events.len(),
            self.events_per_second(),
            out.requests.len(),
            self.trace_hash
        );
        line.push_str(&self.problems());
        if !self.passed()
            && let Some(expected) = &self.must_fail
            && out.violation.is_none()
        {
            line.push_str(&format!(" (expected the {expected} invariant to catch it)"));
        }
        line
    }

    /// The one command that replays this run.
    pub fn replay_command(&self) -> String {
        format!("cargo sim run {} --seed {}", self.file, self.seed)
    }
}

/// Runs `scenario` under `seed`. A panic that escapes the world is a failure of that run,
/// reported like any other.
pub fn run_scenario(scenario: &Scenario, seed: u64) -> Report {
    let started = Instant::now();
    let output =
        catch_unwind(AssertUnwindSafe(|| world::run(scenario, seed))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            RunOutput {
                sim_time: Duration::ZERO,
                events: Vec::new(),
                wire: wire::WireReport::default(),
                requests: Vec::new(),
                deliveries: Vec::new(),
                violation: None,
                failure: Some(format!("panicked: {message}")),
                steps: 0,
                nodes: scenario.nodes.clone(),
                timeline: Vec::new(),
            }
        });
    // The file path relative to the workspace, so the replay command works from its root.
    let file = Path::new(&scenario.file)
        .strip_prefix(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("/")),
        )
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| scenario.file.clone());
    Report {
        scenario: scenario.name.clone(),
        file,
        seed,
        must_fail: scenario.must_fail.clone(),
        trace_hash: hash_events(&output.events),
        output,
        wall: started.elapsed(),
    }
}

/// The trace as JSONL.
pub fn jsonl(report: &Report) -> String {
    let mut out = String::new();
    for event in &report.output.events {
        out.push_str(&event.json());
        out.push('\n');
    }
    out
}
