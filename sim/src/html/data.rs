//! The timeline page's data: everything the page draws and every mark's event, built from a
//! run's report alone (so the page is a function of the run, and the same seed gives the same
//! bytes: nothing here reads a clock or iterates a `HashMap`).

use std::collections::{BTreeMap, BTreeSet};

use control::istiod::ISTIOD_HOSTNAME;
use serde::Serialize;

use super::axis::{Axis, axis, pack};
use super::faults::{self, host_lane};
use crate::Report;
use crate::scenario::Outcome;
use crate::trace::Event;

/// At most this many decision marks (a waypoint with policies decides every request).
pub(crate) const MAX_DECISIONS: usize = 5000;
/// Requests on one lane are drawn in at most this many rows (overlapping ones share).
const MAX_ROWS: usize = 4;
/// At most this many events listed with a request.
const MAX_REQUEST_EVENTS: usize = 12;

/// One legend entry: what a colour means. `key` is also the class of the marks it explains.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LegendEntry {
    pub key: &'static str,
    pub group: &'static str,
    pub label: &'static str,
    pub colour: &'static str,
}

const fn entry(
    key: &'static str,
    group: &'static str,
    label: &'static str,
    colour: &'static str,
) -> LegendEntry {
    LegendEntry {
        key,
        group,
        label,
        colour,
    }
}

/// Every colour on the page.
pub(crate) const LEGEND: &[LegendEntry] = &[
    entry("outcome-succeed", "requests", "succeeded", "#2a9d4b"),
    entry(
        "outcome-refused",
        "requests",
        "refused / closed before a reply (denied)",
        "#d1495b",
    ),
    entry(
        "outcome-status",
        "requests",
        "HTTP answer, not 2xx",
        "#8e44ad",
    ),
    entry("outcome-timeout", "requests", "timed out", "#7a5c3e"),
    entry("decision-allow", "policy decisions", "allowed", "#3a6ea5"),
    entry("decision-deny", "policy decisions", "denied", "#e07a1f"),
    entry(
        "fault-partition",
        "faults (shaded from start to end)",
        "partition",
        "#e9b824",
    ),
    entry(
        "fault-crash",
        "faults (shaded from start to end)",
        "crash (node or waypoint down)",
        "#e63946",
    ),
    entry(
        "fault-outage",
        "faults (shaded from start to end)",
        "istiod outage",
        "#5e60ce",
    ),
    entry(
        "fault-latency",
        "faults (shaded from start to end)",
        "added latency",
        "#3fb8d9",
    ),
    entry(
        "fault-loss",
        "faults (shaded from start to end)",
        "packet loss",
        "#b5838d",
    ),
    entry("step", "marks", "timeline step", "#8a8a8a"),
    entry(
        "step-fault",
        "marks",
        "timeline step that is a fault (incl. clock jumps)",
        "#b00020",
    ),
    entry("violation", "marks", "invariant violated", "#000000"),
];

#[derive(Debug, Serialize)]
pub(crate) struct Data {
    pub scenario: String,
    pub file: String,
    pub seed: u64,
    /// `PASS`, `CAUGHT` or `FAIL`.
    pub verdict: &'static str,
    /// The result line without its wall-clock figures.
    pub summary: String,
    pub axis: Axis,
    pub lanes: Vec<Lane>,
    pub requests: Vec<Request>,
    pub decisions: Vec<Decision>,
    pub steps: Vec<Step>,
    pub faults: Vec<Fault>,
    pub violation: Option<Violation>,
    pub failure: Option<String>,
    pub legend: &'static [LegendEntry],
    /// Decisions left out beyond [`MAX_DECISIONS`].
    pub decisions_omitted: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Lane {
    /// The host (turmoil's name).
    pub id: String,
    /// `driver`, `istiod`, `node`, `waypoint` or `host`.
    pub kind: &'static str,
    /// Rows of request bars.
    pub rows: usize,
}

/// An event as listed in a detail panel.
#[derive(Debug, Serialize)]
pub(crate) struct EventLine {
    pub at: u64,
    pub host: String,
    pub component: String,
    pub what: String,
}

impl From<&Event> for EventLine {
    fn from(e: &Event) -> Self {
        EventLine {
            at: ms(e.at),
            host: e.host.clone(),
            component: e.component.clone(),
            what: e.what.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Request {
    pub id: String,
    pub lane: String,
    pub row: usize,
    /// `<traffic>#<n>`.
    pub conn: String,
    pub traffic: String,
    pub start: u64,
    pub end: u64,
    pub outcome: String,
    /// The legend key of its colour.
    pub class: &'static str,
    /// The HTTP status, when known.
    pub status: Option<u16>,
    pub protocol: Option<String>,
    /// `namespace/pod (ip)`, as the client dialled.
    pub source: Option<String>,
    /// The address dialled (a service VIP or a pod IP, and the port).
    pub destination: Option<String>,
    /// Where the dial went first (the node's ztunnel when captured).
    pub via: Option<String>,
    /// The pod that answered (HTTP).
    pub backend: Option<String>,
    /// The client's and the application's events for this request.
    pub events: Vec<EventLine>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Decision {
    pub id: String,
    pub lane: String,
    pub at: u64,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    /// The decision in the production code's own words.
    pub explanation: String,
    /// `policy` (a policy decided), `default` (no policy did: the default rule) or `other`.
    pub basis: &'static str,
    /// `<namespace>/<name>` of the deciding policy.
    pub policy: Option<String>,
    /// The matching rule (`rule 0`), or the default rule that applied.
    pub rule: Option<String>,
    pub component: String,
    /// The whole log line it came from.
    pub event: String,
    pub conn: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Step {
    pub id: String,
    pub at: u64,
    pub what: String,
    /// `apply`, `delete`, `partition`, `repair`, `crash`, `restart`, `latency`, `loss`,
    /// `clock`, `rotate root` or `other`.
    pub kind: &'static str,
    pub fault: bool,
    /// The driver skipped it (a host that did not exist yet).
    pub skipped: bool,
    /// What the driver said about it (`skipped: …`, `apply refused: …`).
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Fault {
    pub id: String,
    /// `partition`, `crash`, `outage`, `latency` or `loss`.
    pub kind: &'static str,
    pub label: String,
    pub start: u64,
    pub end: u64,
    /// Ended by a step (otherwise it lasted to the end of the run).
    pub ended: bool,
    /// As the scenario names them.
    pub hosts: Vec<String>,
    /// The lanes it shades.
    pub lanes: Vec<String>,
    pub start_step: String,
    pub end_step: Option<String>,
    /// Row in the faults band (overlapping windows stack).
    pub row: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Violation {
    pub id: &'static str,
    pub at: u64,
    pub invariant: &'static str,
    pub event: String,
    pub before: Vec<EventLine>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The result line without wall-clock figures (which differ from run to run).
pub(crate) fn summary(report: &Report) -> (&'static str, String) {
    let verdict = report.verdict();
    let out = &report.output;
    let mut line = format!(
        "{verdict} {} seed={} sim_time={:.1}s events={} requests={} trace={:016x}",
        report.scenario,
        report.seed,
        out.sim_time.as_secs_f64(),
        out.events.len(),
        out.requests.len(),
        report.trace_hash
    );
    line.push_str(&report.problems());
    (verdict, line)
}

/// The lane an event's host is drawn in (`-`, outside any host, is the driver's).
fn lane_of(host: &str) -> &str {
    if host == "-" || host.is_empty() {
        "sim"
    } else {
        host
    }
}

/// What a decision is based on: `(verdict, basis, policy, rule)`.
pub(crate) fn explain(
    decision: &str,
) -> (&'static str, &'static str, Option<String>, Option<String>) {
    let verdict = if decision.starts_with("allowed") {
        "allow"
    } else {
        "deny"
    };
    // The ztunnel: `explicitly denied by <p> rule <n>`, `allowed by <p> rule <n>`.
    for marker in ["explicitly denied by ", "allowed by "] {
        if let Some(rest) = decision.strip_prefix(marker) {
            let (policy, rule) = match rest.split_once(" rule ") {
                Some((p, r)) => {
                    let n: String = r.chars().take_while(char::is_ascii_digit).collect();
                    (p.to_string(), Some(format!("rule {n}")))
                }
                None => (rest.split(' ').next().unwrap_or(rest).to_string(), None),
            };
            return (verdict, "policy", Some(policy), rule);
        }
    }
    // The default rule, in the ztunnel's words and the waypoint's.
    let head = decision.split(';').next().unwrap_or(decision).trim();
    match head {
        "allowed: no allow policies apply" | "allowed: no ALLOW policy applies" => {
            return (
                verdict,
                "default",
                None,
                Some("default: allow when no ALLOW policy applies".into()),
            );
        }
        "denied: allow policies exist, but none allowed"
        | "denied: ALLOW policies apply, but none matched" => {
            return (
                verdict,
                "default",
                None,
                Some("default: deny when ALLOW policies apply and none matched".into()),
            );
        }
        _ => {}
    }
    // The waypoint: `allowed: ALLOW <p> rules[<n>] matched`, `denied: DENY <p> rules[<n>]
    // matched`, `denied: CUSTOM <p> rules[<n>] …`, `denied: <p> cannot be evaluated (…)`.
    if let Some(rest) = head
        .strip_prefix("allowed: ")
        .or_else(|| head.strip_prefix("denied: "))
    {
        let words: Vec<&str> = rest.split(' ').collect();
        let (policy, after) = match words.as_slice() {
            [action, p, after @ ..] if matches!(*action, "ALLOW" | "DENY" | "CUSTOM" | "AUDIT") => {
                (*p, after)
            }
            [p, "cannot", ..] => (*p, &[][..]),
            _ => ("", &[][..]),
        };
        if policy.contains('/') {
            let rule = after
                .first()
                .and_then(|r| r.strip_prefix("rules["))
                .and_then(|r| r.strip_suffix(']'))
                .map(|n| format!("rule {n}"));
            return (verdict, "policy", Some(policy.to_string()), rule);
        }
    }
    (verdict, "other", None, None)
}

/// Parses the client's dial line: `tcp shop/web-0 (10.244.2.2) -> 10.96.0.2:9000 via
/// 192.168.0.3:15001` into (protocol, source, destination, via).
fn dial(what: &str) -> Option<(String, String, String, String)> {
    let (protocol, rest) = what.split_once(' ')?;
    if protocol != "tcp" && protocol != "http" {
        return None;
    }
    let (source, rest) = rest.split_once(" -> ")?;
    let (destination, via) = rest.split_once(" via ")?;
    Some((
        protocol.into(),
        source.into(),
        destination.into(),
        via.into(),
    ))
}

pub(crate) fn build(report: &Report) -> Data {
    let out = &report.output;
    let (verdict, summary) = summary(report);

    // Events by connection: the client's (`<traffic>#<n>`) and the application's
    // (`t<index>#<n>`).
    let mut by_conn: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &out.events {
        if let Some(conn) = &e.conn {
            by_conn.entry(conn.as_str()).or_default().push(e);
        }
    }

    // Requests, in the order they started, rows packed per lane.
    let mut order: Vec<usize> = (0..out.requests.len()).collect();
    order.sort_by_key(|&i| {
        let r = &out.requests[i];
        (r.started, r.traffic, r.request)
    });
    // Per lane: (request index, (start, end)).
    type Spans = Vec<(usize, (u64, u64))>;
    let mut spans_by_lane: BTreeMap<&str, Spans> = BTreeMap::new();
    for &i in &order {
        let r = &out.requests[i];
        spans_by_lane
            .entry(r.source_node.as_str())
            .or_default()
            .push((i, (ms(r.started), ms(r.finished))));
    }
    let mut row_of = vec![0; out.requests.len()];
    let mut rows_in: BTreeMap<String, usize> = BTreeMap::new();
    for (lane, spans) in &spans_by_lane {
        let (rows, used) = pack(&spans.iter().map(|s| s.1).collect::<Vec<_>>(), MAX_ROWS);
        for ((i, _), row) in spans.iter().zip(rows) {
            row_of[*i] = row;
        }
        rows_in.insert(lane.to_string(), used);
    }
    let requests: Vec<Request> = order
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let r = &out.requests[i];
            let client = by_conn
                .get(r.conn.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let app = by_conn
                .get(format!("t{}#{}", r.traffic, r.request).as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut events: Vec<&Event> = client.iter().chain(app).copied().collect();
            events.sort_by_key(|e| e.at);
            let dialled = client.iter().find_map(|e| dial(&e.what));
            let class = match r.outcome {
                Outcome::Succeed => "outcome-succeed",
                Outcome::Refused => "outcome-refused",
                Outcome::Status(_) => "outcome-status",
                Outcome::Timeout => "outcome-timeout",
            };
            let status = match (&r.response, r.outcome) {
                (Some(resp), _) => Some(resp.status),
                (None, Outcome::Status(s)) => Some(s),
                _ => None,
            };
            let traffic = r
                .conn
                .rsplit_once('#')
                .map_or(r.conn.as_str(), |(t, _)| t)
                .to_string();
            let (protocol, source, destination, via) = match dialled {
                Some((p, s, d, v)) => (Some(p), Some(s), Some(d), Some(v)),
                None => (None, None, None, None),
            };
            Request {
                id: format!("r{n}"),
                lane: r.source_node.clone(),
                row: row_of[i],
                conn: r.conn.clone(),
                traffic,
                start: ms(r.started),
                end: ms(r.finished),
                outcome: r.outcome.to_string(),
                class,
                status,
                protocol,
                source,
                destination,
                via,
                backend: r.backend.clone(),
                events: events
                    .into_iter()
                    .take(MAX_REQUEST_EVENTS)
                    .map(EventLine::from)
                    .collect(),
            }
        })
        .collect();

    // Decisions, with what they were based on.
    let all_decisions: Vec<&Event> = out.events.iter().filter(|e| e.decision.is_some()).collect();
    let decisions: Vec<Decision> = all_decisions
        .iter()
        .take(MAX_DECISIONS)
        .enumerate()
        .map(|(n, e)| {
            let explanation = e.decision.clone().unwrap_or_default();
            let (verdict, basis, policy, rule) = explain(&explanation);
            Decision {
                id: format!("d{n}"),
                lane: lane_of(&e.host).to_string(),
                at: ms(e.at),
                verdict,
                explanation,
                basis,
                policy,
                rule,
                component: e.component.clone(),
                event: e.what.clone(),
                conn: e.conn.clone(),
            }
        })
        .collect();

    // Steps, with what the driver said right after each (skipped, refused).
    let mut notes: Vec<Vec<String>> = vec![Vec::new(); out.timeline.len()];
    let mut current: Option<usize> = None;
    let mut next = 0;
    for e in out
        .events
        .iter()
        .filter(|e| e.host == "sim" && e.component == "timeline")
    {
        match out.timeline.get(next) {
            Some((at, what, _)) if *at == e.at && *what == e.what => {
                current = Some(next);
                next += 1;
            }
            _ => {
                if let Some(c) = current {
                    notes[c].push(e.what.clone());
                }
            }
        }
    }
    let steps: Vec<Step> = out
        .timeline
        .iter()
        .zip(notes)
        .enumerate()
        .map(|(i, ((at, what, fault), notes))| Step {
            id: format!("s{i}"),
            at: ms(*at),
            what: what.clone(),
            kind: faults::classify(what).0,
            fault: *fault,
            skipped: notes.iter().any(|n| n.starts_with("skipped")),
            notes,
        })
        .collect();

    // The axis covers the run and every mark in it.
    let end = [ms(out.sim_time)]
        .into_iter()
        .chain(requests.iter().map(|r| r.end))
        .chain(decisions.iter().map(|d| d.at))
        .chain(steps.iter().map(|s| s.at))
        .chain(out.violation.iter().map(|v| ms(v.at)))
        .max()
        .unwrap_or(0);

    let windows = faults::windows(
        &steps
            .iter()
            .map(|s| (s.at, s.what.clone(), s.skipped))
            .collect::<Vec<_>>(),
        end,
    );
    let (fault_rows, _) = pack(
        &windows.iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(),
        usize::MAX,
    );
    let faults: Vec<Fault> = windows
        .into_iter()
        .zip(fault_rows)
        .enumerate()
        .map(|(i, (w, row))| Fault {
            id: format!("f{i}"),
            kind: w.kind,
            label: w.label,
            start: w.start,
            end: w.end,
            ended: w.ended,
            lanes: w.hosts.iter().map(|h| host_lane(h)).collect(),
            hosts: w.hosts,
            start_step: format!("s{}", w.start_step),
            end_step: w.end_step.map(|s| format!("s{s}")),
            row,
        })
        .collect();

    // Lanes: the driver, istiod, the nodes, then every other host that shows up (waypoints).
    let mut lanes: Vec<String> = vec!["sim".into(), ISTIOD_HOSTNAME.into()];
    lanes.extend(out.nodes.iter().cloned());
    let known: BTreeSet<String> = lanes.iter().cloned().collect();
    let others: BTreeSet<String> = out
        .events
        .iter()
        .map(|e| lane_of(&e.host).to_string())
        .chain(requests.iter().map(|r| r.lane.clone()))
        .chain(faults.iter().flat_map(|f| f.lanes.iter().cloned()))
        .filter(|h| !known.contains(h))
        .collect();
    lanes.extend(others);
    let lanes = lanes
        .into_iter()
        .map(|id| {
            let kind = if id == "sim" {
                "driver"
            } else if id == ISTIOD_HOSTNAME {
                "istiod"
            } else if out.nodes.contains(&id) {
                "node"
            } else if id.contains('/') {
                "waypoint"
            } else {
                "host"
            };
            Lane {
                rows: rows_in.get(&id).copied().unwrap_or(0),
                id,
                kind,
            }
        })
        .collect();

    let violation = out.violation.as_ref().map(|v| Violation {
        id: "v0",
        at: ms(v.at),
        invariant: v.invariant,
        event: v.event.clone(),
        before: v.before.iter().map(EventLine::from).collect(),
    });

    Data {
        scenario: report.scenario.clone(),
        file: report.file.clone(),
        seed: report.seed,
        verdict,
        summary,
        axis: axis(end),
        lanes,
        requests,
        decisions,
        steps,
        faults,
        violation,
        failure: out.failure.clone(),
        legend: LEGEND,
        decisions_omitted: all_decisions.len().saturating_sub(MAX_DECISIONS),
    }
}

#[cfg(test)]
mod tests;
