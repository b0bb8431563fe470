//! Conformance suites, written as data and run against targets: the Gateway API HTTPRoute
//! suite (`cases/gateway-api/`) and the mTLS / authorization policy suite (`cases/policy/`)
//! against the deterministic simulator; the namespace cluster and kind are targets to come.
//!
//! The parts: [`case`] (the format and its loader), [`policy`] (the policy suite's format,
//! loader and judgement), [`profiles`] (how a test counts in a
//! conformance profile), [`targets`] (where cases run, and what they saw), [`check`] (one
//! answer against its expectations), [`runner`] (eventual consistency, statistics,
//! verdicts) and [`report`] (the Gateway API `ConformanceReport`). The echo backend the
//! cases talk to is `sim::apps::echo`, shared with the simulator and the `echo` binary.

pub mod case;
pub mod check;
pub mod policy;
pub mod profiles;
pub mod report;
pub mod runner;
pub mod targets;

use std::path::Path;

pub use case::{Base, Case, CaseError};
pub use runner::{CaseResult, Summary, Verdict, run_case, run_policy_case};

/// The default seed `cargo conformance` runs with.
pub const DEFAULT_SEED: u64 = 1;

/// Runs every case of the suite in `dir` (only `only` when given) on `target`, calling
/// `each` with every result as it comes. The suite's `base.yaml` says its format: the
/// gateway-api cases', or `format: policy` ([`policy`]).
pub fn run_suite(
    dir: &Path,
    target: &dyn targets::Target,
    only: Option<&str>,
    mut each: impl FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, CaseError> {
    if policy::is_policy_suite(dir) {
        let base = policy::load_base(dir)?;
        let cases = policy::load_cases(dir)?;
        let mut results = Vec::new();
        for case in cases.iter().filter(|c| only.is_none_or(|id| c.id == id)) {
            let result = run_policy_case(target, &base, case);
            each(&result);
            results.push(result);
        }
        return Ok(results);
    }
    let base = case::load_base(dir)?;
    let cases = case::load_cases(dir)?;
    let mut results = Vec::new();
    for case in cases.iter().filter(|c| only.is_none_or(|id| c.id == id)) {
        let result = run_case(target, &base, case);
        each(&result);
        results.push(result);
    }
    Ok(results)
}
