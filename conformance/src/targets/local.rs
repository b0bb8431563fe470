//! The namespace cluster as a target (`--target local`): a case becomes the very scenario the
//! simulator target builds ([`super::sim::SimTarget::scenario_text`]) and is run by `e2e` on the
//! real kernel — pods in network namespaces, captured by the node agent's rules, the real
//! istiod, ztunnels and waypoints — and its requests are reported as the simulator's are. The
//! wire between nodes is tapped for the whole case.
//!
//! A policy case runs the same way, from the simulator target's policy scenario (attempts in
//! slots of their own, the change between rounds, applied to istiod's followed config dir):
//! who denied each try is read from what the ztunnels and waypoints logged while it was in
//! flight (`e2e::logs`, by the simulator's own rule for a decision), and a manifest the case
//! expects refused is given to the real `istiod --check`. A case the kernel cannot realise
//! (see `e2e::runner::unsupported`) is a skip with its reason. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::processes::Binaries;
use e2e::{NotRun, Options, Recorded};

use super::sim::{PolicySchedule, SimTarget, observations, policy_tries};
use super::{CaseRun, Target, TargetError};
use crate::case::{Base, Case};
use crate::policy::{PolicyBase, PolicyCase, PolicyRun};

/// How long after a try ended a proxy's line about it may be stamped: the client's times are
/// the runner's monotonic clock, the proxies' lines their processes' wall clock, and a proxy
/// may write its line a moment after the client saw the close. Well under the 100 ms slots.
const LOG_SLACK: Duration = Duration::from_millis(30);

/// Runs cases on a namespace cluster made for each.
#[derive(Debug)]
pub struct LocalTarget {
    scenarios: SimTarget,
    options: Options,
    /// The istiod that checks manifests a case expects refused.
    istiod: PathBuf,
}

impl LocalTarget {
    /// The binaries beside this executable (`cargo build --release -p control -p dataplane`);
    /// `keep` keeps each case's run directory (config, logs, rules).
    pub fn new(seed: u64, keep: bool) -> Result<LocalTarget, TargetError> {
        if let Err(why) = harness::netns::check() {
            return Err(TargetError::Unavailable(format!("local ({why})")));
        }
        let binaries =
            Binaries::beside_current_exe().map_err(|e| TargetError::Setup(e.to_string()))?;
        let istiod = binaries
            .istiod()
            .map_err(|e| TargetError::Setup(e.to_string()))?;
        let mut options = Options::new(binaries);
        options.keep = keep;
        Ok(LocalTarget {
            scenarios: SimTarget::new(seed),
            options,
            istiod,
        })
    }
}

impl Target for LocalTarget {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Real processes drawing from real entropy: a weight share can miss its bound by chance,
    /// and takes another round as upstream's suite gives it.
    fn deterministic(&self) -> bool {
        false
    }

    fn run(&self, base: &Base, case: &Case) -> Result<CaseRun, TargetError> {
        let text = self.scenarios.scenario_text(base, case)?;
        let run = self.run_scenario(&text, &case.file, &case.id)?;
        Ok(CaseRun {
            tries: observations(&run.records, &run.deliveries, case.requests.len()),
            problem: run.problem,
            replay: Some(replay(&case.id)),
        })
    }

    fn run_policy(&self, base: &PolicyBase, case: &PolicyCase) -> Result<PolicyRun, TargetError> {
        let refusals = case
            .refused
            .iter()
            .enumerate()
            .map(|(i, r)| self.refusal(base, case, i, &r.manifest))
            .collect::<Result<Vec<_>, _>>()?;
        if case.attempts.is_empty() {
            return Ok(PolicyRun {
                tries: Vec::new(),
                refusals,
                problem: None,
                replay: Some(replay(&case.id)),
            });
        }
        let text = self.scenarios.policy_scenario_text(base, case)?;
        let run = self.run_scenario(&text, &case.file, &case.id)?;
        Ok(PolicyRun {
            tries: policy_tries(
                case,
                &base.nodes,
                &PolicySchedule::of(case),
                &run.events,
                &run.records,
                &run.deliveries,
                LOG_SLACK,
            ),
            refusals,
            problem: run.problem,
            replay: Some(replay(&case.id)),
        })
    }
}

fn replay(case: &str) -> String {
    format!("cargo conformance --target local --case {case}")
}

impl LocalTarget {
    /// Runs a scenario (YAML, checked as the simulator checks it) on a namespace cluster of
    /// its own and returns what it observed.
    fn run_scenario(&self, text: &str, file: &Path, id: &str) -> Result<Recorded, TargetError> {
        let file = file.display().to_string();
        let scenario =
            sim::Scenario::parse(text, &file, id).map_err(|e| TargetError::Setup(e.message))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TargetError::Setup(format!("a runtime: {e}")))?;
        let local = tokio::task::LocalSet::new();
        match local.block_on(&runtime, e2e::run_recorded(&scenario, &self.options)) {
            Ok(run) => Ok(run),
            Err(NotRun::Skip(why)) => Err(TargetError::Skip(why)),
            Err(NotRun::Fail(why)) => Err(TargetError::Setup(why)),
        }
    }

    /// Whether the real `istiod --check` refuses `manifest` on top of the base and the case's
    /// manifests (with the case's feature flags): `Ok(its message)` if it does.
    fn refusal(
        &self,
        base: &PolicyBase,
        case: &PolicyCase,
        index: usize,
        manifest: &str,
    ) -> Result<Result<String, String>, TargetError> {
        let dir = std::env::temp_dir().join(format!(
            "conformance-refusal-{}-{}-{index}",
            std::process::id(),
            case.id
        ));
        let written = (|| {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("nodes.yaml"),
                sim::world::node_manifests(&base.nodes),
            )?;
            let mut cluster = String::new();
            for part in [&base.manifests, &case.manifests, manifest] {
                if !part.trim().is_empty() {
                    cluster.push_str("---\n");
                    cluster.push_str(part.trim_end());
                    cluster.push('\n');
                }
            }
            std::fs::write(dir.join("cluster.yaml"), cluster)
        })();
        let checked = written.and_then(|()| {
            Command::new(&self.istiod)
                .args(["--check", "--config-dir"])
                .arg(&dir)
                .envs(&case.istiod_env)
                .output()
        });
        let _ = std::fs::remove_dir_all(&dir);
        let out = checked
            .map_err(|e| TargetError::Setup(format!("running istiod --check on {dir:?}: {e}")))?;
        Ok(if out.status.success() {
            Err(format!(
                "accepted: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        } else {
            Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
        })
    }
}
