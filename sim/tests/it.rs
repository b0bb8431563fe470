//! The simulator's contract: every scenario in `sim/scenarios/` passes with its seed and
//! replays to the same trace hash; every scenario in `sim/scenarios/must-fail/` is caught by
//! exactly the invariant it names.

use sim::{Scenario, load_dir, must_fail_dir, run_scenario, scenarios_dir};

/// Scenarios too slow for a debug-build test run: many nodes or many simulated minutes.
/// `cargo sim` runs them in release, and so does the ignored test below.
fn heavy(s: &Scenario) -> bool {
    let end = s
        .traffic
        .iter()
        .map(|t| t.start.0 + t.duration.0)
        .max()
        .unwrap_or_default();
    s.nodes.len() > 10 || end > std::time::Duration::from_secs(120)
}

/// Runs `sim run <file> --seed <seed>` as its own process, as a person replaying a run does,
/// and returns its result line.
fn replay(scenario: &Scenario) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", &scenario.file, "--seed", &scenario.seed.to_string()])
        .output()
        .expect("the sim binary runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn hash_in(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("trace="))
        .unwrap_or_default()
}

#[test]
fn every_scenario_passes_and_replays_to_the_same_hash() {
    let scenarios = load_dir(&scenarios_dir()).unwrap();
    assert!(scenarios.len() >= 12, "{} scenarios", scenarios.len());
    for scenario in scenarios.iter().filter(|s| !heavy(s)) {
        let first = run_scenario(scenario, scenario.seed);
        assert!(first.passed(), "{}", first.line());
        // The replay: the same scenario and seed in two fresh processes give the same hash.
        // (Not compared with the in-process run above: see the README on what a run in a
        // process that already ran others may carry over.)
        let (a, b) = (replay(scenario), replay(scenario));
        assert!(a.starts_with("PASS"), "{a}");
        assert_eq!(hash_in(&a), hash_in(&b), "{}:\n{a}\n{b}", scenario.name);
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
fn several_runs_in_one_invocation_each_match_their_replay() {
    // A crash tears a host's tasks down in an order tokio derives from process-wide task
    // numbers; `sim` runs each of several runs in its own process so that order is the
    // replay's. (In one process, the second run of this scenario differed from the first.)
    let scenario = Scenario::load(&scenarios_dir().join("istiod-restart-resync.yaml")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", &scenario.file, &scenario.file, &scenario.file])
        .args(["--seed", &scenario.seed.to_string(), "--jobs", "2"])
        .output()
        .expect("the sim binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let hashes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS"))
        .map(hash_in)
        .collect();
    assert_eq!(hashes.len(), 3, "{stdout}");
    let single = replay(&scenario);
    assert!(
        hashes.iter().all(|h| *h == hash_in(&single)),
        "{stdout}\nreplay: {single}"
    );
}

#[test]
#[ignore = "200 seeds: run in release, `cargo test --release -p sim -- --ignored`"]
fn partition_sweep_of_200_seeds_passes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", "partition-and-repair", "--seeds", "0..200"])
        .output()
        .expect("the sim binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("200 passed, 0 failed"), "{stdout}");
}

#[test]
#[ignore = "50 nodes and long runs: run in release, `cargo test --release -p sim -- --ignored`"]
fn heavy_scenarios_pass_and_replay() {
    for scenario in load_dir(&scenarios_dir())
        .unwrap()
        .iter()
        .filter(|s| heavy(s))
    {
        let first = run_scenario(scenario, scenario.seed);
        assert!(first.passed(), "{}", first.line());
        let second = run_scenario(scenario, scenario.seed);
        assert_eq!(first.trace_hash, second.trace_hash, "{}", scenario.name);
    }
}

fn scenario(name: &str) -> Scenario {
    Scenario::load(&scenarios_dir().join(format!("{name}.yaml"))).unwrap()
}

#[test]
fn a_waypoint_added_under_traffic_fails_no_request() {
    let s = scenario("waypoint-added-under-traffic");
    let report = run_scenario(&s, s.seed);
    assert!(report.passed(), "{}", report.line());
    let all = s.traffic.iter().position(|t| t.name == "all").unwrap();
    let requests: Vec<_> = report
        .output
        .requests
        .iter()
        .filter(|r| r.traffic == all)
        .collect();
    assert!(requests.len() > 200, "{} requests", requests.len());
    // Not even in the windows after each change that the invariants leave unjudged.
    let failed: Vec<_> = requests
        .iter()
        .filter(|r| r.outcome != sim::scenario::Outcome::Succeed)
        .map(|r| format!("{} at {}ms: {}", r.conn, r.started.as_millis(), r.outcome))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn through_a_waypoint_the_destination_ztunnel_sees_the_waypoint_never_the_client() {
    let s = scenario("waypoint-routes");
    let report = run_scenario(&s, s.seed);
    assert!(report.passed(), "{}", report.line());
    let inbound: Vec<_> = report
        .output
        .events
        .iter()
        .filter(|e| {
            e.component == "access"
                && e.what.contains("connection complete")
                && e.what.contains("direction=\"inbound\"")
                && e.what.contains("dst.workload=\"echo-")
        })
        .collect();
    assert!(inbound.len() > 100, "{} inbound connections", inbound.len());
    for e in &inbound {
        assert!(
            e.what
                .contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/waypoint\""),
            "{}",
            e.what
        );
        assert!(!e.what.contains("sa/web"), "{}", e.what);
    }
    // and the waypoint saw the client's identity
    assert!(report.output.events.iter().any(|e| {
        e.host == "shop/waypoint-0"
            && e.component == "access"
            && e.what
                .contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/web\"")
    }));
}

#[test]
fn the_backend_is_reached_from_the_waypoints_address_with_its_identity() {
    let mut s = scenario("waypoint-routes");
    for t in &mut s.traffic {
        t.record = true;
    }
    let report = run_scenario(&s, s.seed);
    assert!(report.passed(), "{}", report.line());
    let bodies: Vec<&str> = report
        .output
        .requests
        .iter()
        .filter_map(|r| r.response.as_ref())
        .map(|r| r.body.as_str())
        .collect();
    assert!(bodies.len() > 100, "{} answers", bodies.len());
    for body in bodies {
        // The echo names the identity of the pod it was reached from: the waypoint's.
        assert!(
            body.contains(r#""peerIdentity":"spiffe://cluster.local/ns/shop/sa/waypoint""#),
            "{body}"
        );
    }
}
