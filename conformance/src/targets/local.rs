//! The namespace cluster as a target (`--target local`): a case becomes the very scenario the
//! simulator target builds ([`super::sim::SimTarget::scenario_text`]) and is run by `e2e` on the
//! real kernel — pods in network namespaces, captured by the node agent's rules, the real
//! istiod, ztunnels and waypoints — and its requests are reported as the simulator's are. The
//! wire between nodes is tapped for the whole case.
//!
//! Policy cases are not realised here yet (their decider comes from the proxies' decisions,
//! which the simulator reads from its trace; here it would be the processes' logs): each is a
//! skip that says so. A case the kernel cannot realise (see `e2e::runner::unsupported`) is a
//! skip with its reason. Needs root.

use e2e::processes::Binaries;
use e2e::{NotRun, Options};

use super::sim::{SimTarget, observations};
use super::{CaseRun, Target, TargetError};
use crate::case::{Base, Case};
use crate::policy::{PolicyBase, PolicyCase, PolicyRun};

/// Runs cases on a namespace cluster made for each.
#[derive(Debug)]
pub struct LocalTarget {
    scenarios: SimTarget,
    options: Options,
}

impl LocalTarget {
    /// The binaries beside this executable (`cargo build --release -p control -p dataplane`).
    pub fn new(seed: u64) -> Result<LocalTarget, TargetError> {
        if let Err(why) = harness::netns::check() {
            return Err(TargetError::Unavailable(format!("local ({why})")));
        }
        let binaries =
            Binaries::beside_current_exe().map_err(|e| TargetError::Setup(e.to_string()))?;
        Ok(LocalTarget {
            scenarios: SimTarget::new(seed),
            options: Options::new(binaries),
        })
    }
}

impl Target for LocalTarget {
    fn name(&self) -> &'static str {
        "local"
    }

    fn run(&self, base: &Base, case: &Case) -> Result<CaseRun, TargetError> {
        let text = self.scenarios.scenario_text(base, case)?;
        let file = case.file.display().to_string();
        let scenario = sim::Scenario::parse(&text, &file, &case.id)
            .map_err(|e| TargetError::Setup(e.message))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TargetError::Setup(format!("a runtime: {e}")))?;
        let local = tokio::task::LocalSet::new();
        let recorded = local.block_on(&runtime, e2e::run_recorded(&scenario, &self.options));
        match recorded {
            Ok(run) => Ok(CaseRun {
                tries: observations(&run.records, &run.deliveries, case.requests.len()),
                problem: run.problem,
                replay: Some(format!(
                    "cargo conformance --target local --case {}",
                    case.id
                )),
            }),
            Err(NotRun::Skip(why)) => Err(TargetError::Skip(why)),
            Err(NotRun::Fail(why)) => Err(TargetError::Setup(why)),
        }
    }

    fn run_policy(&self, _: &PolicyBase, _: &PolicyCase) -> Result<PolicyRun, TargetError> {
        Err(TargetError::Skip(
            "policy cases are not realised on the namespace cluster yet (who denied comes \
             from the simulator's trace; here it would be read from the proxies' logs)"
                .into(),
        ))
    }
}
