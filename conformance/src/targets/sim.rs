//! The simulator as a target: a case becomes a `sim::Scenario` (the base topology and the
//! case's manifests as the cluster, one traffic per request), run in this process under a
//! seed with the production istiod, ztunnels and waypoints. Each request is sent every
//! 100 ms from when the configuration has had time to converge, so the runner can apply the
//! eventual-consistency rule; a statistical request sends its samples every 10 ms.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sim::apps::HttpResponse;
use sim::scenario::Outcome;

use super::{Answer, CaseRun, Observation, Response, Target, TargetError};
use crate::case::{Base, Case, RequestSpec};

/// When the first try of each request is made: istiod has deployed the waypoint and pushed
/// the routes well before (the simulator's own waypoint scenarios start at 3 s).
const FIRST_TRY: Duration = Duration::from_secs(2);
/// Between tries of one request (upstream waits 100 ms between failed probes).
const EVERY: Duration = Duration::from_millis(100);
/// Tries per request: enough to converge and then be seen to pass 3 times in a row.
const TRIES: u32 = 40;
/// Statistical requests start once everything has converged, and go every 10 ms.
const SAMPLES_START: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long one try waits by default (upstream: 10 s per request).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs cases in the deterministic simulator.
#[derive(Debug, Clone)]
pub struct SimTarget {
    seed: u64,
}

impl SimTarget {
    pub fn new(seed: u64) -> Self {
        SimTarget { seed }
    }

    /// The scenario a case runs as (YAML, so it goes through the simulator's own checks).
    pub fn scenario_text(&self, base: &Base, case: &Case) -> Result<String, TargetError> {
        let mut cluster = base.manifests.trim_end().to_string();
        if !case.manifests.trim().is_empty() {
            cluster.push_str("\n---\n");
            cluster.push_str(case.manifests.trim_end());
        }
        cluster.push('\n');
        let traffic = case
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| traffic(base, i, r))
            .collect::<Result<Vec<_>, _>>()?;
        let scenario = json!({
            "about": format!("conformance case {} ({})", case.id, case.test),
            "name": case.id,
            "seed": self.seed,
            "nodes": base.nodes,
            "settings": {"settle": "2s", "maxDuration": "10m"},
            "cluster": cluster,
            "traffic": traffic,
        });
        serde_yaml::to_string(&scenario).map_err(|e| TargetError::Setup(e.to_string()))
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn qualified(base: &Base, name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("{}/{name}", base.namespace)
    }
}

fn traffic(base: &Base, index: usize, r: &RequestSpec) -> Result<Value, TargetError> {
    let to = match (&r.to.service, &r.to.pod) {
        (Some(service), None) => json!({"service": qualified(base, service), "port": r.to.port}),
        (None, Some(deployment)) => {
            json!({"deployment": qualified(base, deployment), "port": r.to.port})
        }
        _ => {
            return Err(TargetError::Setup(format!(
                "request {index}: exactly one of to.service, to.pod"
            )));
        }
    };
    let (start, every, tries) = match r.samples {
        Some(n) => (SAMPLES_START, SAMPLE_EVERY, n.max(1)),
        None => (FIRST_TRY, EVERY, TRIES),
    };
    let mut http = json!({"method": r.method, "path": r.path, "headers": r.headers});
    if let Some(body) = &r.body {
        http["body"] = json!(body);
    }
    Ok(json!({
        "name": format!("request-{index}"),
        "from": {"deployment": r.from.clone().unwrap_or_else(|| base.client.clone())},
        "to": to,
        "protocol": "http",
        "http": http,
        "start": millis(start),
        "every": millis(every),
        "duration": millis(every * tries),
        "timeout": millis(r.timeout_ms.map_or(TIMEOUT, Duration::from_millis)),
        "expect": "any",
        "record": true,
    }))
}

/// The answer as observed, less its `Date` header: the waypoint's HTTP server stamps it from
/// the host's wall clock (no seam covers it), so it would differ between runs of one seed.
fn response(r: &HttpResponse) -> Response {
    Response {
        status: r.status,
        headers: r
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
            .cloned()
            .collect(),
        body: r.body.clone(),
    }
}

impl Target for SimTarget {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn run(&self, base: &Base, case: &Case) -> Result<CaseRun, TargetError> {
        let text = self.scenario_text(base, case)?;
        let file = case.file.display().to_string();
        let scenario = sim::Scenario::parse(&text, &file, &case.id)
            .map_err(|e| TargetError::Setup(e.message))?;
        let report = sim::run_scenario(&scenario, self.seed);
        let output = &report.output;
        let mut received: BTreeMap<(usize, u64), Vec<String>> = BTreeMap::new();
        for d in &output.deliveries {
            received
                .entry((d.traffic, d.request))
                .or_default()
                .push(d.pod.clone());
        }
        let mut tries: Vec<Vec<(u64, Observation)>> = vec![Vec::new(); case.requests.len()];
        for record in &output.requests {
            let Some(list) = tries.get_mut(record.traffic) else {
                continue;
            };
            let answer = match (&record.response, record.outcome) {
                (Some(r), _) => Answer::Response(response(r)),
                (None, Outcome::Timeout) => Answer::Timeout,
                (None, _) => Answer::Refused,
            };
            list.push((
                record.request,
                Observation {
                    at_ms: u64::try_from(record.started.as_millis()).unwrap_or(u64::MAX),
                    answer,
                    received_by: received
                        .remove(&(record.traffic, record.request))
                        .unwrap_or_default(),
                },
            ));
        }
        let tries = tries
            .into_iter()
            .map(|mut list| {
                list.sort_by_key(|(n, _)| *n);
                list.into_iter().map(|(_, o)| o).collect()
            })
            .collect();
        let problem = match (&output.violation, &output.failure) {
            (_, Some(f)) => Some(format!("the simulation failed: {f}")),
            (Some(v), None) => Some(format!(
                "simulator invariant {} violated at {}ms: {}",
                v.invariant,
                v.at.as_millis(),
                v.event
            )),
            (None, None) => None,
        };
        Ok(CaseRun {
            tries,
            problem,
            replay: Some(format!(
                "cargo conformance --case {} --seed {}",
                case.id, self.seed
            )),
        })
    }
}
