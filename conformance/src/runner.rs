//! Running cases on a target and judging them: PASS, FAIL or SKIP, each with its reason.
//!
//! An ordinary request passes on the first 3 consecutive tries that match (upstream's
//! eventual-consistency rule, gateway-api-semantics §2); if no 3 in a row match, it fails
//! with the last mismatch. A statistical request's samples must each match, and their
//! shares meet §5's bounds: backend weights within 5 points absolute (weight 0 gets
//! nothing), mirrored copies within 3 binomial standard deviations.
//!
//! A policy case's attempts are judged by `crate::policy`: every try of an attempt must show
//! the expected outcome and decider (the target starts them once the configuration has
//! converged). Every attempt of a case is judged, and the summary counts attempts.

use std::collections::BTreeMap;
use std::fmt;

use crate::case::{Base, Case, RequestSpec};
use crate::check::check;
use crate::policy::{self, PolicyBase, PolicyCase};
use crate::profiles::Profile;
use crate::targets::{Answer, CaseRun, Observation, Target, TargetError};
use sim::apps::echo::EchoBody;

/// Consecutive matching tries that make a pass.
pub const IN_A_ROW: usize = 3;

/// A case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Skip(_) => "SKIP",
        }
    }
}

/// One case's result with what the report needs about the case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub id: String,
    /// What the case covers, for its line: `MESH-HTTP MeshBasic`, or `§2.2` for a policy case.
    pub about: String,
    pub test: String,
    /// The Gateway API profile of a gateway-api case (none for a policy case).
    pub profile: Option<Profile>,
    pub features: Vec<String>,
    pub provisional: bool,
    pub verdict: Verdict,
    /// Attempts judged: a gateway-api case's requests, a policy case's attempts and the
    /// manifests it expects refused (none for a skipped case).
    pub attempts: usize,
    /// Why each failed attempt failed (`label: reason`).
    pub failures: Vec<String>,
    /// The run's wall time in seconds (not judged; for the line).
    pub wall_secs: f64,
}

impl CaseResult {
    pub fn failed_attempts(&self) -> usize {
        self.failures.len()
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.verdict.word(), self.id, self.about)?;
        match &self.verdict {
            Verdict::Pass => write!(f, " {:.1}s", self.wall_secs)?,
            Verdict::Fail(why) | Verdict::Skip(why) => write!(f, ": {why}")?,
        }
        // A policy case's failing attempts, one per line (a gateway-api case's first one is
        // its reason).
        if self.profile.is_none() {
            for failure in &self.failures {
                write!(f, "\n    {failure}")?;
            }
        }
        Ok(())
    }
}

/// How many rounds a case whose only failure is a weight share may take on a target that
/// draws from real entropy (upstream's HTTPRouteWeight: up to 10 rounds,
/// gateway-api-semantics §5). A deterministic target gets one: another round would be the
/// same round.
pub const WEIGHT_ROUNDS: usize = 10;

/// Runs `case` on `target` and judges it.
pub fn run_case(target: &dyn Target, base: &Base, case: &Case) -> CaseResult {
    let started = std::time::Instant::now();
    let rounds = if target.deterministic() {
        1
    } else {
        WEIGHT_ROUNDS
    };
    let (verdict, failures) = match &case.skip {
        Some(reason) => (Verdict::Skip(reason.clone()), Vec::new()),
        None => {
            let mut round = 1;
            loop {
                match target.run(base, case) {
                    Ok(run) => {
                        let (verdict, failures, only_weights) = judge_all(case, &run);
                        if !only_weights || round == rounds {
                            break (verdict, failures);
                        }
                        eprintln!(
                            "  {}: round {round}: a weight share out of bounds; another round",
                            case.id
                        );
                        round += 1;
                    }
                    Err(TargetError::Skip(reason)) => break (Verdict::Skip(reason), Vec::new()),
                    Err(e) => {
                        break (
                            Verdict::Fail(e.to_string()),
                            case.requests
                                .iter()
                                .map(|r| format!("{}: not run", r.label()))
                                .collect(),
                        );
                    }
                }
            }
        }
    };
    CaseResult {
        id: case.id.clone(),
        about: format!("{} {}", case.profile.name(), case.test),
        test: case.test.clone(),
        profile: Some(case.profile),
        features: case.features.clone(),
        provisional: case.provisional,
        attempts: if matches!(verdict, Verdict::Skip(_)) {
            0
        } else {
            case.requests.len()
        },
        verdict,
        failures,
        wall_secs: started.elapsed().as_secs_f64(),
    }
}

/// Runs a policy case on `target` and judges every attempt and every refusal.
pub fn run_policy_case(target: &dyn Target, base: &PolicyBase, case: &PolicyCase) -> CaseResult {
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let verdict = match &case.skip {
        Some(reason) => Verdict::Skip(reason.clone()),
        None => match target.run_policy(base, case) {
            Ok(run) => {
                for (index, attempt) in case.attempts.iter().enumerate() {
                    let tries = run.tries.get(index).map(Vec::as_slice).unwrap_or_default();
                    if let Err(why) = policy::judge_attempt(attempt, tries) {
                        failures.push(format!("{}: {why}", attempt.label()));
                    }
                }
                for (refused, result) in case.refused.iter().zip(&run.refusals) {
                    if let Err(why) = result {
                        failures.push(format!(
                            "{}: {why}, expected refused by validation",
                            refused.name
                        ));
                    }
                }
                let replay = run
                    .replay
                    .as_ref()
                    .map(|r| format!(" (replay: {r})"))
                    .unwrap_or_default();
                match (&run.problem, failures.len()) {
                    (Some(problem), _) => Verdict::Fail(format!("{problem}{replay}")),
                    (None, 0) => Verdict::Pass,
                    (None, n) => {
                        Verdict::Fail(format!("{n} of {} attempts failed{replay}", case.checks()))
                    }
                }
            }
            Err(TargetError::Skip(reason)) => Verdict::Skip(reason),
            Err(e) => {
                failures.extend(
                    case.attempts
                        .iter()
                        .map(|a| format!("{}: not run", a.label())),
                );
                failures.extend(case.refused.iter().map(|r| format!("{}: not run", r.name)));
                Verdict::Fail(e.to_string())
            }
        },
    };
    let mut about = format!("§{}, {} attempts", case.section, case.checks());
    if let Some(quirk) = &case.quirk {
        // The side the case takes (`intent, upstream differs: …` → `intent`).
        let side = quirk.split([',', ':']).next().unwrap_or_default().trim();
        about.push_str(&format!(", quirk: {side}"));
    }
    CaseResult {
        id: case.id.clone(),
        about,
        test: format!("§{}", case.section),
        profile: None,
        features: Vec::new(),
        provisional: false,
        attempts: if matches!(verdict, Verdict::Skip(_)) {
            0
        } else {
            case.checks()
        },
        verdict,
        failures,
        wall_secs: started.elapsed().as_secs_f64(),
    }
}

/// The verdict on what a target saw for `case`: the first failing request's reason.
pub fn judge(case: &Case, run: &CaseRun) -> Verdict {
    judge_all(case, run).0
}

/// Why a statistical request failed: a weight share out of its bound (which another round
/// may draw within) or anything else.
enum SamplesFailure {
    Weights(String),
    Other(String),
}

/// The verdict, every failing request with its reason, and whether every failure was a
/// weight share out of bounds (and nothing else went wrong).
fn judge_all(case: &Case, run: &CaseRun) -> (Verdict, Vec<String>, bool) {
    let replay = run
        .replay
        .as_ref()
        .map(|r| format!(" (replay: {r})"))
        .unwrap_or_default();
    let mut failures = Vec::new();
    let mut only_weights = run.problem.is_none();
    for (index, request) in case.requests.iter().enumerate() {
        let tries = run.tries.get(index).map(Vec::as_slice).unwrap_or_default();
        let result = if request.samples.is_some() {
            judge_samples(case.profile, request, tries)
        } else {
            judge_eventually(case.profile, request, tries).map_err(SamplesFailure::Other)
        };
        match result {
            Ok(()) => {}
            Err(SamplesFailure::Weights(why)) => {
                failures.push(format!("{}: {why}", request.label()))
            }
            Err(SamplesFailure::Other(why)) => {
                only_weights = false;
                failures.push(format!("{}: {why}", request.label()));
            }
        }
    }
    let verdict = match (failures.first(), &run.problem) {
        (Some(first), _) => Verdict::Fail(format!("{first}{replay}")),
        (None, Some(problem)) => Verdict::Fail(format!("{problem}{replay}")),
        (None, None) => Verdict::Pass,
    };
    let only_weights = only_weights && !failures.is_empty();
    (verdict, failures, only_weights)
}

/// Passes on the first `IN_A_ROW` consecutive matching tries; else the last mismatch.
fn judge_eventually(
    profile: Profile,
    request: &RequestSpec,
    tries: &[Observation],
) -> Result<(), String> {
    let mut row = 0;
    let mut last: Option<(u64, String)> = None;
    for observed in tries {
        match check(profile, request, observed) {
            Ok(()) => {
                row += 1;
                if row == IN_A_ROW {
                    return Ok(());
                }
            }
            Err(why) => {
                row = 0;
                last = Some((observed.at_ms, why));
            }
        }
    }
    Err(match last {
        Some((at, why)) => format!(
            "not {IN_A_ROW} matching answers in a row in {} tries; the last mismatch (at {at}ms): {why}",
            tries.len()
        ),
        None => format!(
            "{} tries, fewer than {IN_A_ROW} in a row needed",
            tries.len()
        ),
    })
}

/// Every sample must match; then weights and mirrors must be within their bounds.
fn judge_samples(
    profile: Profile,
    request: &RequestSpec,
    samples: &[Observation],
) -> Result<(), SamplesFailure> {
    let wanted = request.samples.unwrap_or_default() as usize;
    if samples.len() < wanted {
        return Err(SamplesFailure::Other(format!(
            "{} of {wanted} samples were sent",
            samples.len()
        )));
    }
    for observed in samples {
        check(profile, request, observed).map_err(|why| {
            SamplesFailure::Other(format!("sample at {}ms: {why}", observed.at_ms))
        })?;
    }
    if let Some(weights) = &request.weights {
        let backends: Vec<String> = samples
            .iter()
            .filter_map(|o| match &o.answer {
                Answer::Response(r) => serde_json::from_str::<EchoBody>(&r.body)
                    .ok()
                    .map(|e| e.pod),
                _ => None,
            })
            .collect();
        weights_within(weights, &backends).map_err(SamplesFailure::Weights)?;
    }
    if let Some(mirrors) = &request.mirrors {
        for (prefix, percent) in mirrors {
            let n = samples.len() as f64;
            let got = samples
                .iter()
                .filter(|o| {
                    o.received_by
                        .iter()
                        .filter(|pod| pod_name(pod).starts_with(prefix.as_str()))
                        .count()
                        > 0
                })
                .count() as f64;
            let p = percent / 100.0;
            let sigma = (n * p * (1.0 - p)).sqrt();
            let (low, high) = (n * p - 3.0 * sigma, n * p + 3.0 * sigma);
            if got < low.floor() || got > high.ceil() {
                return Err(SamplesFailure::Other(format!(
                    "{prefix}* received {got} mirrored copies of {n} requests; {percent}% wants {:.0}..{:.0}",
                    low.max(0.0),
                    high
                )));
            }
        }
    }
    Ok(())
}

/// The pod name of `namespace/pod`.
fn pod_name(qualified: &str) -> &str {
    qualified.rsplit('/').next().unwrap_or(qualified)
}

/// Each prefix's share within 5 points of weight / sum; weight 0 gets nothing; and nothing
/// answers that no weight names.
pub fn weights_within(weights: &BTreeMap<String, u32>, backends: &[String]) -> Result<(), String> {
    let total: u32 = weights.values().sum();
    if backends.is_empty() || total == 0 {
        return Err("no answered samples to judge".into());
    }
    let n = backends.len() as f64;
    if let Some(stray) = backends
        .iter()
        .find(|b| !weights.keys().any(|k| b.starts_with(k.as_str())))
    {
        return Err(format!("{stray} answered, which no weight names"));
    }
    for (prefix, weight) in weights {
        let got = backends
            .iter()
            .filter(|b| b.starts_with(prefix.as_str()))
            .count();
        let share = got as f64 / n;
        let want = f64::from(*weight) / f64::from(total);
        let wrong = if *weight == 0 {
            got > 0
        } else {
            (share - want).abs() > 0.05
        };
        if wrong {
            return Err(format!(
                "{prefix}* answered {got} of {n} ({:.1}%), weight {weight} of {total} wants {:.1}% ± 5",
                share * 100.0,
                want * 100.0
            ));
        }
    }
    Ok(())
}

/// Counts of cases by verdict, and of attempts judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases, skipped ones included.
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Attempts judged (skipped cases have none), and how many of them passed and failed.
    pub attempts: usize,
    pub attempts_passed: usize,
    pub attempts_failed: usize,
}

impl Summary {
    pub fn of(results: &[CaseResult]) -> Summary {
        let mut s = Summary::default();
        for r in results {
            s.cases += 1;
            match r.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail(_) => s.failed += 1,
                Verdict::Skip(_) => s.skipped += 1,
            }
            s.attempts += r.attempts;
            let failed = r.failed_attempts().min(r.attempts);
            s.attempts_failed += failed;
            s.attempts_passed += r.attempts - failed;
        }
        s
    }

    /// The cases by verdict: `N passed, N failed, N skipped`.
    pub fn cases_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

impl fmt::Display for Summary {
    /// `N cases, M attempts: P passed, F failed` (P and F count attempts).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cases, {} attempts: {} passed, {} failed",
            self.cases, self.attempts, self.attempts_passed, self.attempts_failed
        )
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::policy::{PolicyBase, PolicyCase, PolicyRun};
    use crate::targets::Response;

    /// A target whose first `skewed` runs answer every sample from echo-v1, then 70/30.
    struct Drawn {
        deterministic: bool,
        skewed: usize,
        runs: Cell<usize>,
    }

    impl Target for Drawn {
        fn name(&self) -> &'static str {
            "drawn"
        }

        fn deterministic(&self) -> bool {
            self.deterministic
        }

        fn run(&self, _: &Base, case: &Case) -> Result<CaseRun, TargetError> {
            let run = self.runs.get();
            self.runs.set(run + 1);
            let sample = |i: u64| {
                let pod = if run < self.skewed || i % 10 < 7 {
                    "echo-v1-0"
                } else {
                    "echo-v2-0"
                };
                let body = sim::apps::echo::EchoBody {
                    path: "/".into(),
                    pod: pod.into(),
                    ..Default::default()
                };
                Observation {
                    at_ms: i,
                    answer: Answer::Response(Response {
                        status: 200,
                        headers: Vec::new(),
                        body: serde_json::to_string(&body).unwrap_or_default(),
                    }),
                    received_by: Vec::new(),
                }
            };
            Ok(CaseRun {
                tries: case
                    .requests
                    .iter()
                    .map(|_| (0..500).map(sample).collect())
                    .collect(),
                problem: None,
                replay: None,
            })
        }

        fn run_policy(&self, _: &PolicyBase, _: &PolicyCase) -> Result<PolicyRun, TargetError> {
            Err(TargetError::Skip("no policy".into()))
        }
    }

    #[test]
    fn a_weight_share_out_of_bounds_takes_another_round_only_where_draws_are_real() {
        let dir = crate::case::suite_dir("gateway-api");
        let base = crate::case::load_base(&dir).unwrap();
        let case = crate::case::load_case(&dir.join("mesh-httproute-weight.yaml")).unwrap();
        let real = Drawn {
            deterministic: false,
            skewed: 2,
            runs: Cell::new(0),
        };
        let result = run_case(&real, &base, &case);
        assert_eq!(result.verdict, Verdict::Pass, "{result}");
        assert_eq!(
            real.runs.get(),
            3,
            "two skewed rounds, then one within bounds"
        );
        let always = Drawn {
            deterministic: false,
            skewed: usize::MAX,
            runs: Cell::new(0),
        };
        assert!(matches!(
            run_case(&always, &base, &case).verdict,
            Verdict::Fail(_)
        ));
        assert_eq!(always.runs.get(), WEIGHT_ROUNDS);
        let seeded = Drawn {
            deterministic: true,
            skewed: 1,
            runs: Cell::new(0),
        };
        assert!(matches!(
            run_case(&seeded, &base, &case).verdict,
            Verdict::Fail(_)
        ));
        assert_eq!(seeded.runs.get(), 1, "a seeded target is not run again");
    }

    #[test]
    fn weights_are_judged_within_five_points() {
        let weights: BTreeMap<String, u32> = [("a".to_string(), 70), ("b".to_string(), 30)]
            .into_iter()
            .collect();
        let mut backends: Vec<String> = (0..70).map(|_| "a-0".to_string()).collect();
        backends.extend((0..30).map(|_| "b-0".to_string()));
        assert!(weights_within(&weights, &backends).is_ok());
        backends.truncate(80);
        let err = weights_within(&weights, &backends).unwrap_err();
        assert!(err.contains("a* answered 70 of 80"), "{err}");
    }
}
