//! The simulator's contract: every scenario in `sim/scenarios/` passes with its seed and
//! replays to the same trace hash; every scenario in `sim/scenarios/must-fail/` is caught by
//! exactly the invariant it names.

use sim::{Scenario, load_dir, must_fail_dir, run_scenario, scenarios_dir};

/// Scenarios too slow for a debug-build test run (`cargo sim` runs them in release).
fn heavy(s: &Scenario) -> bool {
    s.nodes.len() > 10
}

#[test]
fn every_scenario_passes_and_replays_to_the_same_hash() {
    let scenarios = load_dir(&scenarios_dir()).unwrap();
    assert!(scenarios.len() >= 12, "{} scenarios", scenarios.len());
    for scenario in scenarios.iter().filter(|s| !heavy(s)) {
        let first = run_scenario(scenario, scenario.seed);
        assert!(first.passed(), "{}", first.line());
        let second = run_scenario(scenario, scenario.seed);
        assert_eq!(first.trace_hash, second.trace_hash, "{}", scenario.name);
        assert_eq!(
            first.output.events, second.output.events,
            "{}",
            scenario.name
        );
    }
}

#[test]
fn must_fail_scenarios_are_caught_by_the_named_invariant() {
    let scenarios = load_dir(&must_fail_dir()).unwrap();
    assert!(
        scenarios.len() >= 3,
        "{} must-fail scenarios",
        scenarios.len()
    );
    for scenario in &scenarios {
        let expected = scenario
            .must_fail
            .as_deref()
            .expect("mustFail names an invariant");
        let report = run_scenario(scenario, scenario.seed);
        let violation = report
            .output
            .violation
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not caught: {}", scenario.name, report.line()));
        assert_eq!(violation.invariant, expected, "{}", report.line());
        assert!(report.passed(), "{}", report.line());
        assert!(
            !violation.before.is_empty(),
            "a violation shows what led to it"
        );
    }
}

#[test]
fn the_seed_changes_the_run() {
    let scenario = Scenario::load(&scenarios_dir().join("basic-mtls.yaml")).unwrap();
    let a = run_scenario(&scenario, 1);
    let b = run_scenario(&scenario, 2);
    assert!(a.passed() && b.passed(), "{}\n{}", a.line(), b.line());
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "link latencies come from the seed"
    );
}

#[test]
fn a_failure_names_the_command_that_replays_it() {
    let scenario = Scenario::load(&scenarios_dir().join("basic-mtls.yaml")).unwrap();
    let report = run_scenario(&scenario, 7);
    assert_eq!(
        report.replay_command(),
        "cargo sim run sim/scenarios/basic-mtls.yaml --seed 7"
    );
}

#[test]
#[ignore = "200 seeds: run in release, `cargo test --release -p sim -- --ignored`"]
fn partition_sweep_of_200_seeds_passes() {
    let scenario = Scenario::load(&scenarios_dir().join("partition-and-repair.yaml")).unwrap();
    for seed in 0..200 {
        let report = run_scenario(&scenario, seed);
        assert!(
            report.passed(),
            "{}\n{}",
            report.line(),
            report.replay_command()
        );
    }
}

#[test]
#[ignore = "50 nodes and 1,000 pods: run in release, `cargo test --release -p sim -- --ignored`"]
fn large_cluster_passes_and_replays() {
    let scenario = Scenario::load(&scenarios_dir().join("large-cluster-churn.yaml")).unwrap();
    let first = run_scenario(&scenario, scenario.seed);
    assert!(first.passed(), "{}", first.line());
    let second = run_scenario(&scenario, scenario.seed);
    assert_eq!(first.trace_hash, second.trace_hash);
}
