//! The runner on a scenario with nothing enrolled (no data plane needed): istiod starts, every
//! app serves from its pod's namespace, requests by pod IP and VIP pass, and the judge fails a
//! run whose expectations the kernel contradicts, from the outcomes and from what the apps
//! received.

mod common;

use e2e::{Options, Verdict};
use sim::Scenario;

fn options() -> Options {
    Options {
        dataplane: false,
        ..Options::new(common::binaries())
    }
}

#[test]
fn uncaptured_traffic_passes_on_the_kernel() {
    if !common::usable("uncaptured") {
        return;
    }
    let scenario = Scenario::load(&common::fixture("uncaptured.yaml")).unwrap();
    let verdict = common::local(e2e::run_scenario(&scenario, &options()));
    match verdict {
        Verdict::Pass { requests, .. } => assert_eq!(requests, 34),
        other => panic!("{}", other.line()),
    }
}

#[test]
fn a_request_expected_refused_that_reaches_the_app_fails_the_run() {
    if !common::usable("uncaptured") {
        return;
    }
    // The echo listens on 9000: "refused" there is contradicted by the outcome and by the
    // app's record of the request.
    let text = std::fs::read_to_string(common::fixture("uncaptured.yaml"))
        .unwrap()
        .replace(
            "to: {pod: outside/echo-1, port: 9999}",
            "to: {pod: outside/echo-1, port: 9000}",
        );
    let scenario = Scenario::parse(&text, "refused.yaml", "refused").unwrap();
    let verdict = common::local(e2e::run_scenario(&scenario, &options()));
    let line = verdict.line();
    assert!(verdict.failed(), "{line}");
    assert!(line.contains("[policy]"), "{line}");
    // The delivery comes first: the app records the request before it answers.
    assert!(
        line.contains("reached the application on outside/echo-1"),
        "{line}"
    );
    // 4 requests seen succeed, and 4 deliveries to an app that must not see them.
    assert!(line.contains("(8 failures in all)"), "{line}");
}

#[test]
fn scenarios_the_kernel_cannot_play_are_skipped_with_the_reason() {
    let scenario =
        Scenario::load(&sim::scenarios_dir().join("certificate-expiry-istiod-away.yaml")).unwrap();
    let verdict = common::local(e2e::run_scenario(&scenario, &options()));
    let line = verdict.line();
    assert!(verdict.skipped(), "{line}");
    assert!(line.contains("advanceClock"), "{line}");

    // A timeline step that adds pods, and a scenario longer than the wall-time budget.
    for (file, reason) in [
        ("istiod-outage.yaml", "adds, moves or relabels pods"),
        ("root-rotation.yaml", "--long"),
    ] {
        let scenario = Scenario::load(&sim::scenarios_dir().join(file)).unwrap();
        let verdict = common::local(e2e::run_scenario(&scenario, &options()));
        let line = verdict.line();
        assert!(verdict.skipped() && line.contains(reason), "{line}");
    }
}

#[test]
fn faults_a_kernel_can_play_are_real() {
    if !common::usable("uncaptured") {
        return;
    }
    // Partition/repair, node crash/restart, and istiod and a waypoint crashed and restarted
    // (each restart waits for readiness, or the run fails).
    let scenario = Scenario::load(&common::fixture("uncaptured-faults.yaml")).unwrap();
    let verdict = common::local(e2e::run_scenario(&scenario, &options()));
    assert!(
        matches!(verdict, Verdict::Pass { .. }),
        "{}",
        verdict.line()
    );
}
