//! Fault windows from the timeline as applied: a fault lasts from its step to the step that
//! ends it (partition → repair, crash → restart, a link's latency or loss → the next setting
//! of the same link), or to the end of the run if nothing ended it.
//!
//! Only the steps' descriptions reach the report (`Action::describe`), so the steps are read
//! back from those words here; a step the driver skipped (a host that did not exist yet)
//! starts and ends nothing.

use std::collections::BTreeMap;

use control::istiod::ISTIOD_HOSTNAME;

use crate::scenario::ISTIOD;

/// What a step did, as far as fault windows are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepKind {
    Partition(Link),
    Repair(Link),
    Crash(String),
    Restart(String),
    /// A link's latency set to this many milliseconds.
    Latency(Link, String),
    /// A link's loss rate set (as written).
    Loss(Link, String),
    Clock,
    Other,
}

/// Two hosts in a stable order, as the scenario names them.
pub(crate) type Link = (String, String);

fn link(a: &str, b: &str) -> Link {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn parse_link(s: &str) -> Option<Link> {
    let (a, b) = s.split_once(" <-> ")?;
    Some(link(a.trim(), b.trim()))
}

/// The short kind name of a step (`partition`, `apply`, …) and what it did.
pub(crate) fn classify(what: &str) -> (&'static str, StepKind) {
    let (word, rest) = what.split_once(' ').unwrap_or((what, ""));
    let kind = match word {
        "partition" => parse_link(rest).map(StepKind::Partition),
        "repair" => parse_link(rest).map(StepKind::Repair),
        "crash" => Some(StepKind::Crash(rest.to_string())),
        "restart" => Some(StepKind::Restart(rest.to_string())),
        "latency" => rest
            .split_once(" = ")
            .and_then(|(l, v)| Some(StepKind::Latency(parse_link(l)?, v.to_string()))),
        "loss" => rest
            .split_once(" = ")
            .and_then(|(l, v)| Some(StepKind::Loss(parse_link(l)?, v.to_string()))),
        "wall" => Some(StepKind::Clock),
        _ => None,
    }
    .unwrap_or(StepKind::Other);
    let name = match (&kind, word) {
        (StepKind::Clock, _) => "clock",
        (StepKind::Other, "apply") => "apply",
        (StepKind::Other, "delete") => "delete",
        (StepKind::Other, "root") => "rotate root",
        (StepKind::Other, _) => "other",
        (StepKind::Partition(_), _) => "partition",
        (StepKind::Repair(_), _) => "repair",
        (StepKind::Crash(_), _) => "crash",
        (StepKind::Restart(_), _) => "restart",
        (StepKind::Latency(..), _) => "latency",
        (StepKind::Loss(..), _) => "loss",
    };
    (name, kind)
}

/// The turmoil host (and so the lane) a scenario's host name stands for.
pub(crate) fn host_lane(host: &str) -> String {
    if host == ISTIOD {
        ISTIOD_HOSTNAME.to_string()
    } else {
        host.to_string()
    }
}

/// One fault, from its step to the step that ended it (or the end of the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// `partition`, `crash`, `outage` (istiod down), `latency` or `loss`.
    pub kind: &'static str,
    pub label: String,
    pub start: u64,
    pub end: u64,
    /// Whether a step ended it (otherwise it lasted to the end of the run).
    pub ended: bool,
    /// The hosts it is about, as the scenario names them.
    pub hosts: Vec<String>,
    /// Indexes of the steps that started and ended it.
    pub start_step: usize,
    pub end_step: Option<usize>,
}

/// What opened a window that has not ended yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Partition(Link),
    Down(String),
    Latency(Link),
    Loss(Link),
}

/// The fault windows of a run that ended at `end`, from its steps: `(at, description,
/// skipped)` in the order applied.
pub(crate) fn windows(steps: &[(u64, String, bool)], end: u64) -> Vec<Window> {
    let mut done = Vec::new();
    let mut open: BTreeMap<Key, Window> = BTreeMap::new();
    let mut close = |open: &mut BTreeMap<Key, Window>, key: &Key, at: u64, step: usize| {
        if let Some(mut w) = open.remove(key) {
            w.end = at;
            w.ended = true;
            w.end_step = Some(step);
            done.push(w);
        }
    };
    for (index, (at, what, skipped)) in steps.iter().enumerate() {
        if *skipped {
            continue;
        }
        let at = *at;
        let window = |kind, hosts: Vec<String>| Window {
            kind,
            label: what.clone(),
            start: at,
            end,
            ended: false,
            hosts,
            start_step: index,
            end_step: None,
        };
        let (key, opened) = match classify(what).1 {
            StepKind::Partition(l) => {
                let w = window("partition", vec![l.0.clone(), l.1.clone()]);
                (Key::Partition(l), Some(w))
            }
            StepKind::Repair(l) => {
                close(&mut open, &Key::Partition(l), at, index);
                continue;
            }
            StepKind::Crash(h) => {
                let kind = if h == ISTIOD { "outage" } else { "crash" };
                (Key::Down(h.clone()), Some(window(kind, vec![h])))
            }
            StepKind::Restart(h) => {
                close(&mut open, &Key::Down(h), at, index);
                continue;
            }
            StepKind::Latency(l, value) => {
                // A new setting ends the previous one; zero is no added latency at all.
                let key = Key::Latency(l.clone());
                close(&mut open, &key, at, index);
                let zero = value.trim_end_matches("ms").parse::<u64>() == Ok(0);
                (key, (!zero).then(|| window("latency", vec![l.0, l.1])))
            }
            StepKind::Loss(l, value) => {
                let key = Key::Loss(l.clone());
                close(&mut open, &key, at, index);
                let zero = value.parse::<f64>().is_ok_and(|r| r == 0.0);
                (key, (!zero).then(|| window("loss", vec![l.0, l.1])))
            }
            StepKind::Clock | StepKind::Other => continue,
        };
        // A second crash of a host already down, or partition of a link already cut, changes
        // nothing: the first window goes on.
        if let Some(w) = opened {
            open.entry(key).or_insert(w);
        }
    }
    let mut all = done;
    all.extend(open.into_values());
    all.sort_by_key(|w| (w.start, w.start_step));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(list: &[(u64, &str)]) -> Vec<(u64, String, bool)> {
        list.iter()
            .map(|(at, what)| (*at, what.to_string(), false))
            .collect()
    }

    #[test]
    fn a_fault_lasts_until_the_step_that_ends_it_or_the_end_of_the_run() {
        let w = windows(
            &steps(&[
                (1000, "apply AuthorizationPolicy"),
                (5000, "partition node-a <-> node-b"),
                (6000, "crash istiod"),
                (7000, "crash node-c"),
                (9000, "repair node-b <-> node-a"),
                (9500, "restart node-c"),
                (9600, "latency node-a <-> istiod = 50ms"),
                (9700, "latency istiod <-> node-a = 0ms"),
                (9800, "loss node-a <-> node-b = 0.1"),
                (9900, "wall clock +3600s"),
            ]),
            20_000,
        );
        let got: Vec<_> = w
            .iter()
            .map(|w| (w.kind, w.start, w.end, w.ended, w.label.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("partition", 5000, 9000, true, "partition node-a <-> node-b"),
                ("outage", 6000, 20_000, false, "crash istiod"),
                ("crash", 7000, 9500, true, "crash node-c"),
                (
                    "latency",
                    9600,
                    9700,
                    true,
                    "latency node-a <-> istiod = 50ms"
                ),
                ("loss", 9800, 20_000, false, "loss node-a <-> node-b = 0.1"),
            ]
        );
        assert_eq!(w[0].start_step, 1);
        assert_eq!(w[0].end_step, Some(4));
        assert_eq!(w[1].hosts, ["istiod"]);
    }

    #[test]
    fn skipped_steps_and_unmatched_ends_open_and_close_nothing() {
        let mut list = steps(&[
            (1000, "restart istiod"),
            (2000, "repair node-a <-> node-b"),
            (3000, "crash node-z"),
            (4000, "crash node-a"),
            (4500, "crash node-a"),
        ]);
        list[2].2 = true;
        let w = windows(&list, 10_000);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].start, w[0].end, w[0].ended), (4000, 10_000, false));
    }

    #[test]
    fn steps_are_classified_by_their_description() {
        assert_eq!(classify("apply AuthorizationPolicy").0, "apply");
        assert_eq!(classify("delete AuthorizationPolicy shop/x").0, "delete");
        assert_eq!(classify("wall clock +7200s").0, "clock");
        assert_eq!(
            classify("root rotation (activate after 300s, overlap 300s)").0,
            "rotate root"
        );
        assert_eq!(
            classify("crash shop/waypoint-0").1,
            StepKind::Crash("shop/waypoint-0".into())
        );
        assert_eq!(host_lane("istiod"), ISTIOD_HOSTNAME);
    }
}
