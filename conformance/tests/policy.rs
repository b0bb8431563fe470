//! The policy suite (`cases/policy/`): it loads, it is big enough and every case says what
//! it checks with valid values; a case runs on the simulator, and a wrong expectation fails
//! with what came instead and who decided it.

use std::collections::BTreeSet;

use conformance::policy::{self, Decider, Outcome, PolicyCase, SECTIONS};
use conformance::runner::{Verdict, run_policy_case};
use conformance::targets::sim::SimTarget;

fn suite() -> std::path::PathBuf {
    conformance::case::suite_dir("policy")
}

fn load(id: &str) -> PolicyCase {
    policy::load_cases(&suite())
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no policy case {id}"))
}

#[test]
fn the_policy_suite_has_enough_attempts_each_case_a_section_and_valid_values() {
    let dir = suite();
    assert!(policy::is_policy_suite(&dir));
    policy::load_base(&dir).unwrap();
    let cases = policy::load_cases(&dir).unwrap();
    let attempts: usize = cases.iter().map(|c| c.attempts.len()).sum();
    assert!(attempts >= 150, "{attempts} attempts, at least 150 wanted");
    let mut sections = BTreeSet::new();
    for case in &cases {
        assert!(
            SECTIONS.contains(&case.section.as_str()),
            "{}: section {:?}",
            case.id,
            case.section
        );
        sections.insert(case.section.as_str());
        if let Some(quirk) = &case.quirk {
            assert!(
                quirk.starts_with("intent") && quirk.contains("upstream differs"),
                "{}: a quirk case takes the documented intent and says how upstream differs",
                case.id
            );
        }
        for a in &case.attempts {
            let label = format!("{}: {}", case.id, a.label());
            for outcome in a.before.into_iter().chain([a.expect]) {
                assert!(
                    Outcome::ALL.contains(&outcome),
                    "{label}: outcome {outcome}"
                );
                let decider = a.decider_for(outcome);
                assert!(
                    Decider::ALL.contains(&decider),
                    "{label}: decider {decider}"
                );
                assert_eq!(
                    decider == Decider::None,
                    outcome == Outcome::Allowed,
                    "{label}: {outcome} decided by {decider}"
                );
                if matches!(outcome, Outcome::Forbidden | Outcome::Unauthorized) {
                    assert_eq!(decider, Decider::Waypoint, "{label}");
                }
            }
        }
    }
    // The reference's sections the issue asks for are all covered.
    for section in [
        "1", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "3.3", "3.4", "4.1",
    ] {
        assert!(sections.contains(section), "no case checks §{section}");
    }
}

#[test]
fn the_case_format_refuses_unknown_fields_and_values() {
    let dir = tempdir();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ok = "id: x\nsection: \"2.2\"\nattempts:\n- {from: shop/web, to: {service: shop/echo, port: 80}, expect: 403, decider: waypoint}\n";
    policy::load_case(&write("ok.yaml", ok)).unwrap();
    for (text, wanted) in [
        (
            ok.replace("expect: 403", "expect: denied"),
            "unknown outcome",
        ),
        (
            ok.replace("decider: waypoint", "decider: istiod"),
            "unknown variant",
        ),
        (
            ok.replace("section: \"2.2\"", "section: \"9\""),
            "not a policy-semantics section",
        ),
        (
            ok.replace("decider: waypoint", "decider: ztunnel"),
            "only the waypoint answers 403",
        ),
        (ok.replace(", decider: waypoint", ""), "needs its decider"),
        (
            ok.replace("expect: 403", "expect: 403, level: core"),
            "unknown field",
        ),
        (
            ok.replace(
                "expect: 403, decider: waypoint",
                "expect: allowed, decider: ztunnel",
            ),
            "nobody decides",
        ),
    ] {
        let err = policy::load_case(&write("bad.yaml", &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains(wanted), "{text}: {err}");
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("conformance-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_policy_case_passes_and_a_wrong_expectation_says_what_came() {
    let base = policy::load_base(&suite()).unwrap();
    let target = SimTarget::new(conformance::DEFAULT_SEED);
    let case = load("identity-at-each-hop");
    let result = run_policy_case(&target, &base, &case);
    assert_eq!(result.verdict, Verdict::Pass, "{result}");
    assert_eq!(result.attempts, case.attempts.len());

    // Expect the waypoint where the destination's ztunnel decides, and 403 where the
    // waypoint's 503 comes.
    let mut case = case;
    let bypass = case
        .attempts
        .iter()
        .position(|a| a.expect == Outcome::Reset)
        .unwrap();
    case.attempts[bypass].decider = Some(Decider::Waypoint);
    let behind = case
        .attempts
        .iter()
        .position(|a| a.expect == Outcome::Unavailable)
        .unwrap();
    case.attempts[behind].expect = Outcome::Forbidden;
    case.attempts[behind].decider = Some(Decider::Waypoint);
    let result = run_policy_case(&target, &base, &case);
    let Verdict::Fail(why) = &result.verdict else {
        panic!("expected a failure: {result}");
    };
    assert!(why.contains("2 of 10 attempts failed"), "{why}");
    assert_eq!(result.failures.len(), 2, "{result}");
    assert!(
        result.failures[0].contains("reset decided by ztunnel, expected waypoint"),
        "{result}"
    );
    assert!(
        result.failures[1].contains("503 by ztunnel")
            && result.failures[1].contains("expected 403"),
        "{result}"
    );
}
