//! The runner against the simulator target: chosen cases pass, a wrong expectation fails with
//! a reason that says what came instead, the suite covers every MESH-HTTP test of the
//! reference's index, and the report has upstream's shape and counts.

use std::path::PathBuf;

use conformance::case::{self, Case};
use conformance::profiles::Profile;
use conformance::report::{conformance_report, to_yaml};
use conformance::runner::{CaseResult, Verdict, run_case};
use conformance::targets::Target;
use conformance::targets::sim::SimTarget;

fn suite() -> PathBuf {
    case::suite_dir("gateway-api")
}

fn load(id: &str) -> Case {
    case::load_case(&suite().join(format!("{id}.yaml"))).unwrap()
}

#[test]
fn chosen_cases_pass_on_the_simulator() {
    let base = case::load_base(&suite()).unwrap();
    let target = SimTarget::new(conformance::DEFAULT_SEED);
    for id in [
        "mesh-basic",
        "mesh-httproute-matching",
        "mesh-httproute-redirect-port",
        "gateway-httproute-rewrite-path",
        "mesh-httproute-weight",
    ] {
        let result = run_case(&target, &base, &load(id));
        assert_eq!(result.verdict, Verdict::Pass, "{result}");
    }
}

#[test]
fn a_wrong_expectation_fails_and_says_what_came() {
    let base = case::load_base(&suite()).unwrap();
    let target = SimTarget::new(conformance::DEFAULT_SEED);
    let mut case = load("mesh-httproute-simple-same-namespace");
    case.requests[0].expect.backend = Some("echo-v2".into());
    let result = run_case(&target, &base, &case);
    let Verdict::Fail(why) = &result.verdict else {
        panic!("expected a failure: {result}");
    };
    assert!(
        why.contains("not 3 matching answers in a row")
            && why.contains("answered by echo-v1-0, not a echo-v2* pod")
            && why.contains("replay: cargo conformance --case"),
        "{why}"
    );
    let mut case = load("mesh-httproute-redirect-port");
    case.requests[0].expect.redirect = Some(conformance::case::Redirect {
        port: Some(9999),
        ..Default::default()
    });
    let result = run_case(&target, &base, &case);
    let Verdict::Fail(why) = &result.verdict else {
        panic!("expected a failure: {result}");
    };
    assert!(why.contains("port 8083, expected 9999"), "{why}");
}

#[test]
fn the_same_seed_observes_the_same_answers() {
    let base = case::load_base(&suite()).unwrap();
    let target = SimTarget::new(7);
    let case = load("mesh-httproute-weight");
    let first = target.run(&base, &case).unwrap();
    let second = target.run(&base, &case).unwrap();
    assert_eq!(first.tries, second.tries);
}

#[test]
fn the_suite_covers_every_mesh_http_test_of_the_index() {
    let cases = case::load_cases(&suite()).unwrap();
    let tests: Vec<&str> = cases.iter().map(|c| c.test.as_str()).collect();
    for test in [
        "MeshBasic",
        "MeshHTTPRouteSimpleSameNamespace",
        "MeshTrafficSplit",
        "MeshHTTPRouteMatching",
        "MeshHTTPRouteRedirectHostAndStatus",
        "MeshHTTPRouteRequestHeaderModifier",
        "MeshHTTPRouteWeight",
        "MeshHTTPRouteQueryParamMatching",
        "MeshHTTPRouteRedirectPath",
        "MeshHTTPRouteRedirectPort",
        "MeshHTTPRouteSchemeRedirect",
        "MeshHTTPRouteBackendRequestHeaderModifier",
        "MeshHTTPRouteRewritePath",
        "MeshHTTPRouteNamedRule",
        "MeshHTTPRoute303Redirect",
        "MeshHTTPRoute307Redirect",
        "MeshHTTPRoute308Redirect",
        "MeshConsumerRoute",
        "MeshFrontend",
        "MeshFrontendHostname",
        "MeshPorts",
    ] {
        assert!(tests.contains(&test), "no case covers {test}");
    }
    // Exactly 7 core and 7 extended of them count in MESH-HTTP (§2).
    let counted = |level| {
        cases
            .iter()
            .filter(|c| c.profile == Profile::MeshHttp)
            .filter(|c| Profile::MeshHttp.level_of(&c.features) == Some(level))
            .count()
    };
    assert_eq!(counted(conformance::profiles::Level::Core), 7);
    assert_eq!(counted(conformance::profiles::Level::Extended), 7);
}

fn result(test: &str, features: &[&str], provisional: bool, verdict: Verdict) -> CaseResult {
    CaseResult {
        id: test.to_lowercase(),
        about: format!("MESH-HTTP {test}"),
        test: test.into(),
        profile: Some(Profile::MeshHttp),
        features: features.iter().map(|f| f.to_string()).collect(),
        provisional,
        verdict,
        attempts: 1,
        failures: Vec::new(),
        wall_secs: 0.0,
    }
}

#[test]
fn the_report_has_upstreams_shape_and_counts_as_the_profile_rule_says() {
    let results = vec![
        result("MeshBasic", &["Mesh"], false, Verdict::Pass),
        result(
            "MeshHTTPRouteWeight",
            &["Mesh", "HTTPRoute"],
            false,
            Verdict::Pass,
        ),
        result(
            "MeshHTTPRouteRedirectPort",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPort"],
            false,
            Verdict::Skip("not yet".into()),
        ),
        result(
            "MeshHTTPRouteNamedRule",
            &["Mesh", "HTTPRoute", "MeshHTTPRouteNamedRouteRule"],
            true,
            Verdict::Pass,
        ),
        // Not counted: HTTPRouteParentRefPort is outside MESH-HTTP.
        result(
            "MeshPorts",
            &[
                "Mesh",
                "HTTPRoute",
                "HTTPRouteParentRefPort",
                "HTTPRouteResponseHeaderModification",
            ],
            false,
            Verdict::Fail("x".into()),
        ),
    ];
    let report = conformance_report(&results, "2026-08-21");
    let yaml = to_yaml(&report).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1", "{yaml}");
    assert_eq!(v["kind"], "ConformanceReport");
    for key in ["organization", "project", "url", "version", "contact"] {
        assert!(
            !v["implementation"][key].is_null(),
            "implementation.{key}: {yaml}"
        );
    }
    assert_eq!(v["date"], "2026-08-21");
    assert_eq!(v["gatewayAPIVersion"], "v1.6.1");
    assert_eq!(v["gatewayAPIChannel"], "standard");
    assert_eq!(v["mode"], "default");
    let mesh = &v["profiles"][0];
    assert_eq!(mesh["name"], "MESH-HTTP");
    assert_eq!(mesh["core"]["result"], "success");
    assert_eq!(mesh["core"]["statistics"]["Passed"], 2);
    assert_eq!(mesh["core"]["statistics"]["Failed"], 0);
    assert_eq!(mesh["extended"]["result"], "partial");
    assert_eq!(mesh["extended"]["statistics"]["Passed"], 1);
    assert_eq!(mesh["extended"]["statistics"]["Skipped"], 1);
    assert_eq!(
        mesh["extended"]["skippedTests"][0],
        "MeshHTTPRouteRedirectPort"
    );
    assert_eq!(
        mesh["extended"]["supportedFeatures"][0],
        "MeshHTTPRouteNamedRouteRule"
    );
    assert!(
        mesh["extended"]["unsupportedFeatures"]
            .as_sequence()
            .is_some_and(|s| s.len() == 8),
        "{yaml}"
    );
    assert_eq!(v["succeededProvisionalTests"][0], "MeshHTTPRouteNamedRule");
    assert!(!yaml.contains("MeshPorts"), "{yaml}");
}
