//! The simulator's contract: every built-in scenario passes, a seed replays exactly, and the
//! scenarios do not depend on one lucky seed.

use sim::{SCENARIOS, run_scenario};

#[test]
fn every_scenario_passes_with_its_default_seed() {
    for scenario in &SCENARIOS {
        let report = run_scenario(scenario, scenario.default_seed);
        assert!(report.passed(), "{}", report.line());
        assert!(!report.events.is_empty(), "{}", report.line());
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for scenario in &SCENARIOS {
        let first = run_scenario(scenario, scenario.default_seed);
        let second = run_scenario(scenario, scenario.default_seed);
        assert_eq!(first.events, second.events, "{}", scenario.name);
        assert_eq!(first.trace_hash, second.trace_hash, "{}", scenario.name);
        assert_eq!(first.sim_time, second.sim_time, "{}", scenario.name);
        assert_eq!(first.line(), second.line());
    }
}

#[test]
fn other_seeds_pass_too() {
    for scenario in &SCENARIOS {
        for seed in [scenario.default_seed + 1000, 0xdead_beef] {
            let report = run_scenario(scenario, seed);
            assert!(report.passed(), "{}", report.line());
        }
    }
}

#[test]
fn the_seed_changes_the_run() {
    let scenario = sim::scenarios::find("basic-mtls").unwrap();
    let a = run_scenario(scenario, 1);
    let b = run_scenario(scenario, 2);
    assert!(a.passed() && b.passed());
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "link latencies come from the seed, so event times differ"
    );
}

#[test]
fn a_failure_names_the_command_that_replays_it() {
    let scenario = &SCENARIOS[0];
    let mut report = run_scenario(scenario, 7);
    report.failure = Some("example".into());
    assert!(
        report
            .line()
            .starts_with(&format!("FAIL {} seed=7 ", scenario.name))
    );
    assert!(report.line().ends_with(" example"));
    assert_eq!(
        report.replay_command(),
        format!("cargo sim run {} --seed 7", scenario.name)
    );
}
