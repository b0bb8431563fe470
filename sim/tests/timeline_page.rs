//! The HTML timeline (`cargo sim run … --timeline OUT.html`) as a person investigating a run
//! uses it: the page is loaded the way its script loads it (the JSON in
//! `<script type="application/json" id="timeline-data">`), and what it would draw is checked
//! against the scenario and the run's trace: the time axis covers the run, each fault window
//! runs from its step to the step that ended it, the legend explains every colour, and every
//! policy decision mark carries the explanation the production code gave. The same seed gives
//! the same bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sim::scenario::{Action, ISTIOD, Step};
use sim::{Scenario, run_scenario, scenarios_dir};

const ISTIOD_HOST: &str = "istiod.istio-system.svc";

/// The keys the legend must explain.
const LEGEND_KEYS: &[&str] = &[
    "outcome-succeed",
    "outcome-refused",
    "outcome-status",
    "outcome-timeout",
    "decision-allow",
    "decision-deny",
    "fault-partition",
    "fault-crash",
    "fault-outage",
    "fault-latency",
    "fault-loss",
    "step",
    "step-fault",
    "violation",
];

/// `deny-closes-open-connection` with faults added after its DENY (so its expectations
/// hold): node-b cut off from istiod from 8 s to 10 s, then istiod down from 11 s to the end.
fn scenario_with_faults(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(scenarios_dir().join("deny-closes-open-connection.yaml"))
        .expect("the scenario exists");
    let steps = "- at: 8s\n  partition: [node-b, istiod]\n- at: 10s\n  repair: [node-b, istiod]\n\
                 - at: 11s\n  crash: istiod\n";
    assert!(
        text.contains("\ntraffic:\n"),
        "the scenario has a traffic section"
    );
    let text = text.replacen("\ntraffic:\n", &format!("\n{steps}traffic:\n"), 1);
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("deny-with-faults.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs `sim run <file> --seed <seed> --timeline <out>.html --trace <out>.jsonl` in a process
/// of its own, as a person does; returns the page and the trace.
fn run_with_timeline(file: &Path, seed: u64, out: &Path) -> (String, String) {
    let (html, jsonl) = (out.with_extension("html"), out.with_extension("jsonl"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .arg("run")
        .arg(file)
        .args(["--seed", &seed.to_string()])
        .arg("--timeline")
        .arg(&html)
        .arg("--trace")
        .arg(&jsonl)
        .output()
        .expect("the sim binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("PASS"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        std::fs::read_to_string(html).unwrap(),
        std::fs::read_to_string(jsonl).unwrap(),
    )
}

const DATA_OPEN: &str = r#"<script type="application/json" id="timeline-data">"#;

/// The page's data, read as its script reads it, and the page without it.
fn page_data(page: &str) -> (Value, String) {
    let start = page.find(DATA_OPEN).expect("the page has its data element") + DATA_OPEN.len();
    let len = page[start..]
        .find("</script>")
        .expect("the data element ends");
    let data = serde_json::from_str(&page[start..start + len]).expect("the data is JSON");
    let rest = format!("{}{}", &page[..start], &page[start + len..]);
    (data, rest)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not a whole number"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn list<'a>(data: &'a Value, key: &str) -> &'a Vec<Value> {
    data[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not a list"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The fault windows a scenario's steps describe: (kind, start, end or None for the end of
/// the run, hosts).
fn expected_windows(steps: &[Step]) -> Vec<(&'static str, u64, Option<u64>, BTreeSet<String>)> {
    let pair = |a: &str, b: &str| BTreeSet::from([a.to_string(), b.to_string()]);
    let mut windows = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let later = &steps[i + 1..];
        match &step.action {
            Action::Partition([a, b]) => {
                let end = later.iter().find(
                    |s| matches!(&s.action, Action::Repair([c, d]) if pair(c, d) == pair(a, b)),
                );
                windows.push(("partition", ms(step.at), end.map(|s| ms(s.at)), pair(a, b)));
            }
            Action::Crash(h) => {
                let end = later
                    .iter()
                    .find(|s| matches!(&s.action, Action::Restart(r) if r == h));
                let kind = if h == ISTIOD { "outage" } else { "crash" };
                windows.push((
                    kind,
                    ms(step.at),
                    end.map(|s| ms(s.at)),
                    BTreeSet::from([h.clone()]),
                ));
            }
            _ => {}
        }
    }
    windows
}

/// A decision names the policy that made it, or the default rule that applied.
fn assert_explained(d: &Value) {
    let explanation = s(&d["explanation"]);
    assert!(!explanation.trim().is_empty(), "{d}");
    match s(&d["basis"]) {
        "policy" => {
            let policy = s(&d["policy"]);
            assert!(policy.contains('/'), "a policy is <namespace>/<name>: {d}");
            assert!(explanation.contains(policy), "{d}");
        }
        "default" => assert!(s(&d["rule"]).starts_with("default: "), "{d}"),
        other => panic!("decision based on {other:?} names no policy nor the default rule: {d}"),
    }
    // The explanation is the one the production code logged, in the line it came from.
    assert!(
        s(&d["event"]).contains(explanation.split(';').next().unwrap()),
        "{d}"
    );
}

#[test]
fn the_timeline_page_shows_faults_decisions_and_requests_and_is_deterministic() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("timeline-page");
    let file = scenario_with_faults(&dir);
    let scenario = Scenario::load(&file).unwrap();
    let (page, trace) = run_with_timeline(&file, scenario.seed, &dir.join("first"));
    let (again, _) = run_with_timeline(&file, scenario.seed, &dir.join("second"));
    assert!(
        page == again,
        "two runs of the same seed give different pages"
    );

    let (data, rest) = page_data(&page);
    let trace: Vec<Value> = trace
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Self-contained: nothing outside the page is loaded.
    for external in [
        "<link", "<img", "<iframe", " src=", "href=", "@import", "url(",
    ] {
        assert!(!rest.contains(external), "the page loads {external}");
    }

    // The axis covers the run: every event of the trace, the traffic, and every mark.
    let axis = &data["axis"];
    let (start, end, tick) = (u(&axis["start"]), u(&axis["end"]), u(&axis["tick"]));
    assert_eq!(start, 0);
    let last_event = trace.iter().map(|e| u(&e["time_ms"])).max().unwrap();
    let traffic_end = scenario
        .traffic
        .iter()
        .map(|t| ms(t.start.0 + t.duration.0))
        .max()
        .unwrap();
    assert!(
        end >= last_event && end >= traffic_end,
        "axis ends at {end}"
    );
    let marks = list(&data, "requests")
        .iter()
        .map(|r| u(&r["end"]))
        .chain(list(&data, "decisions").iter().map(|d| u(&d["at"])))
        .chain(list(&data, "steps").iter().map(|s| u(&s["at"])))
        .chain(list(&data, "faults").iter().map(|f| u(&f["end"])));
    for at in marks {
        assert!(at <= end, "a mark at {at}ms is past the axis ({end}ms)");
    }
    let ticks = list(axis, "ticks");
    assert!(ticks.len() >= 5, "{ticks:?}");
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(u(&t["at"]), i as u64 * tick);
        assert!(!s(&t["label"]).is_empty());
    }
    assert!(u(&ticks[ticks.len() - 1]["at"]) + tick > end);
    assert_eq!(s(&ticks[1]["label"]), format!("{}s", tick / 1000));

    // Lanes: the driver, istiod and every node.
    let lanes: Vec<&str> = list(&data, "lanes").iter().map(|l| s(&l["id"])).collect();
    assert_eq!(lanes, ["sim", ISTIOD_HOST, "node-a", "node-b"]);

    // Fault windows: from their step to the step that ended them, as the scenario says.
    let expected = expected_windows(&scenario.timeline);
    assert_eq!(
        expected.len(),
        2,
        "the test scenario's faults: {expected:?}"
    );
    let faults = list(&data, "faults");
    assert_eq!(faults.len(), expected.len(), "{faults:?}");
    let steps = list(&data, "steps");
    for (f, (kind, from, to, hosts)) in faults.iter().zip(&expected) {
        assert_eq!(s(&f["kind"]), *kind, "{f}");
        assert_eq!(u(&f["start"]), *from, "{f}");
        assert_eq!(u(&f["end"]), to.unwrap_or(end), "{f}");
        assert_eq!(f["ended"].as_bool(), Some(to.is_some()), "{f}");
        assert!(u(&f["start"]) < u(&f["end"]), "{f}");
        let got: BTreeSet<String> = list(f, "hosts").iter().map(|h| s(h).into()).collect();
        assert_eq!(&got, hosts, "{f}");
        // It shades its hosts' lanes and names the steps that opened and closed it.
        for lane in list(f, "lanes") {
            assert!(lanes.contains(&s(lane)), "{f}");
        }
        let step = |id: &Value| steps.iter().find(|st| st["id"] == *id).cloned();
        let opened = step(&f["start_step"]).expect("the opening step is on the page");
        assert_eq!(u(&opened["at"]), *from);
        assert_eq!(s(&f["label"]), s(&opened["what"]));
        match to {
            Some(to) => assert_eq!(u(&step(&f["end_step"]).unwrap()["at"]), *to),
            None => assert!(f["end_step"].is_null()),
        }
        assert!(!s(&f["label"]).is_empty());
    }
    assert_eq!(s(&faults[0]["label"]), "partition node-b <-> istiod");
    assert_eq!(
        list(&faults[1], "lanes"),
        &[Value::from(ISTIOD_HOST)],
        "an istiod outage shades istiod's lane"
    );
    // Every step of the scenario is a mark, at its time.
    let step_times: Vec<u64> = steps.iter().map(|st| u(&st["at"])).collect();
    let scenario_times: Vec<u64> = scenario.timeline.iter().map(|st| ms(st.at)).collect();
    assert_eq!(step_times, scenario_times);

    // The legend explains every colour, in the page and in its data.
    let legend: BTreeSet<&str> = list(&data, "legend").iter().map(|e| s(&e["key"])).collect();
    for key in LEGEND_KEYS {
        assert!(
            rest.contains(&format!("data-legend=\"{key}\"")),
            "no legend entry {key}"
        );
        assert!(legend.contains(key), "no legend data for {key}");
    }
    for f in faults {
        assert!(legend.contains(format!("fault-{}", s(&f["kind"])).as_str()));
    }

    // Every decision in the trace is a mark, with its explanation: here the DENY that
    // closed the open connection and refused every later one.
    let decisions = list(&data, "decisions");
    let traced = trace.iter().filter(|e| !e["decision"].is_null()).count();
    assert!(traced > 0);
    assert_eq!(decisions.len(), traced);
    assert_eq!(u(&data["decisions_omitted"]), 0);
    for d in decisions {
        assert_explained(d);
        assert!(lanes.contains(&s(&d["lane"])), "{d}");
        assert_eq!(s(&d["verdict"]), "deny", "{d}");
        assert_eq!(s(&d["policy"]), "shop/deny-web", "{d}");
        assert_eq!(s(&d["rule"]), "rule 0", "{d}");
        assert!(u(&d["at"]) >= 6000, "{d}");
    }

    // Requests: source, destination, outcome and timing for every one.
    let requests = list(&data, "requests");
    let outcomes = trace
        .iter()
        .filter(|e| e["component"] == "client" && s(&e["event"]).starts_with("outcome "))
        .count();
    assert_eq!(requests.len(), outcomes);
    for r in requests {
        assert!(u(&r["start"]) <= u(&r["end"]), "{r}");
        assert!(s(&r["source"]).starts_with("shop/web-"), "{r}");
        assert!(s(&r["destination"]).ends_with(":9000"), "{r}");
        assert!(legend.contains(s(&r["class"])), "{r}");
        assert_eq!(s(&r["lane"]), "node-b", "{r}");
        // Succeeded before the DENY at 6 s, refused after it (one in flight at 6 s may pass).
        let refused = s(&r["outcome"]) == "refused";
        assert!(refused || u(&r["start"]) <= 6000, "{r}");
        assert!(!refused || u(&r["start"]) >= 6000, "{r}");
        assert!(!list(r, "events").is_empty(), "{r}");
    }

    assert!(
        requests
            .iter()
            .filter(|r| r["outcome"] == "refused")
            .count()
            > 10,
        "{requests:?}"
    );

    // Every mark has an id of its own (the detail panel and the address use it).
    let ids: Vec<&str> = ["requests", "decisions", "steps", "faults"]
        .iter()
        .flat_map(|k| list(&data, k))
        .map(|x| s(&x["id"]))
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());
    // And the page is rendered from the data by its own script.
    assert!(rest.contains("JSON.parse(document.getElementById('timeline-data').textContent)"));
    assert!(
        !s(&data["summary"]).contains("wall="),
        "no wall clock on the page"
    );
}

#[test]
fn waypoint_decisions_appear_with_their_explanation_on_the_waypoints_lane() {
    // waypoint-crash-restart, its waypoint given an ALLOW for web from the start and a DENY
    // for the path web asks for at 12 s: the waypoint's access log says which decided.
    let text = std::fs::read_to_string(scenarios_dir().join("waypoint-crash-restart.yaml"))
        .expect("the scenario exists");
    let target = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]";
    let allow = format!(
        "  ---\n  apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  \
         metadata: {{name: allow-web, namespace: shop}}\n  spec:\n    {target}\n    \
         action: ALLOW\n    \
         rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/shop/sa/web\"]}}}}]}}]\n"
    );
    let deny = format!(
        "- at: 12s\n  apply: |\n    apiVersion: security.istio.io/v1\n    \
         kind: AuthorizationPolicy\n    metadata: {{name: deny-path, namespace: shop}}\n    \
         spec:\n      {target}\n      action: DENY\n      \
         rules: [{{to: [{{operation: {{paths: [\"/v2/x\"]}}}}]}}]\n"
    );
    let phase = "  - {from: 10s, outcome: succeed}\n";
    for marker in ["\ntimeline:\n", "\ntraffic:\n", phase] {
        assert!(text.contains(marker), "the scenario has {marker:?}");
    }
    let text = text
        .replacen("\ntimeline:\n", &format!("\n{allow}timeline:\n"), 1)
        .replacen("\ntraffic:\n", &format!("\n{deny}traffic:\n"), 1)
        .replacen(
            phase,
            &format!("{phase}  - {{from: 12s, outcome: status 403}}\n"),
            1,
        );
    let scenario = Scenario::parse(&text, "waypoint-policies.yaml", "waypoint-policies")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let report = run_scenario(&scenario, scenario.seed);
    assert!(report.passed(), "{}", report.line());

    let page = sim::html::timeline(&report);
    let (data, _) = page_data(&page);
    let waypoint = "shop/waypoint-0";
    let lanes = list(&data, "lanes");
    assert!(
        lanes
            .iter()
            .any(|l| l["id"] == waypoint && l["kind"] == "waypoint"),
        "{lanes:?}"
    );
    let on_waypoint: Vec<&Value> = list(&data, "decisions")
        .iter()
        .filter(|d| d["lane"] == waypoint)
        .collect();
    for d in &on_waypoint {
        assert_explained(d);
        assert!(s(&d["event"]).contains("authorization="), "{d}");
    }
    let by = |verdict: &str, policy: &str| {
        on_waypoint
            .iter()
            .filter(|d| d["verdict"] == verdict && d["policy"] == policy)
            .count()
    };
    assert!(by("allow", "shop/allow-web") > 10, "{on_waypoint:?}");
    assert!(by("deny", "shop/deny-path") > 10, "{on_waypoint:?}");
    let denied = on_waypoint.iter().find(|d| d["verdict"] == "deny").unwrap();
    assert_eq!(
        s(&denied["explanation"]),
        "denied: DENY shop/deny-path rules[0] matched"
    );
    assert_eq!(s(&denied["rule"]), "rule 0");
    // The 403s are requests of their own colour, with their status.
    assert!(
        list(&data, "requests")
            .iter()
            .any(|r| r["class"] == "outcome-status" && r["status"] == 403)
    );
    // The crash of the waypoint is a window on its lane.
    let crash = list(&data, "faults")
        .iter()
        .find(|f| f["kind"] == "crash")
        .expect("the waypoint's crash is a window");
    assert_eq!((u(&crash["start"]), u(&crash["end"])), (6000, 10_000));
    assert_eq!(list(crash, "lanes"), &[Value::from(waypoint)]);
}
