//! The timeline: steps at given times, each doing exactly one thing (apply or delete
//! manifests, a fault, its repair, a clock jump, a root rotation).

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::Dur;

/// `{between: [a, b], …}`: a link between two nodes, or a node and `istiod`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkLatency {
    pub between: [String; 2],
    pub latency: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkLoss {
    pub between: [String; 2],
    /// Probability in [0, 1] that a message on the link is lost.
    pub rate: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RootRotation {
    /// The new root signs after this long (it is trusted at once).
    pub activate_after: Dur,
    /// The old root stays trusted this long after that.
    pub overlap: Dur,
}

/// What a timeline step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply manifests (text) to the cluster; `line` is where they start in the file.
    Apply {
        manifests: String,
        line: usize,
    },
    Delete(ObjectRef),
    Partition([String; 2]),
    Repair([String; 2]),
    Crash(String),
    Restart(String),
    Latency(LinkLatency),
    Loss(LinkLoss),
    AdvanceClock(Duration),
    RotateRoot(RootRotation),
}

impl Action {
    /// The hosts the action names.
    pub fn hosts(&self) -> Vec<&str> {
        match self {
            Action::Partition([a, b]) | Action::Repair([a, b]) => vec![a, b],
            Action::Latency(l) => vec![&l.between[0], &l.between[1]],
            Action::Loss(l) => vec![&l.between[0], &l.between[1]],
            Action::Crash(h) | Action::Restart(h) => vec![h],
            _ => Vec::new(),
        }
    }

    /// A short description for the trace and the timeline.
    pub fn describe(&self) -> String {
        match self {
            Action::Apply { manifests, .. } => {
                let objects: Vec<String> = manifests
                    .lines()
                    .filter_map(|l| l.strip_prefix("kind: "))
                    .map(str::trim)
                    .map(String::from)
                    .collect();
                format!("apply {}", objects.join(", "))
            }
            Action::Delete(r) => format!("delete {} {}/{}", r.kind, r.namespace, r.name),
            Action::Partition([a, b]) => format!("partition {a} <-> {b}"),
            Action::Repair([a, b]) => format!("repair {a} <-> {b}"),
            Action::Crash(h) => format!("crash {h}"),
            Action::Restart(h) => format!("restart {h}"),
            Action::Latency(l) => format!(
                "latency {} <-> {} = {}ms",
                l.between[0],
                l.between[1],
                l.latency.0.as_millis()
            ),
            Action::Loss(l) => format!("loss {} <-> {} = {}", l.between[0], l.between[1], l.rate),
            Action::AdvanceClock(d) => format!("wall clock +{}s", d.as_secs()),
            Action::RotateRoot(r) => format!(
                "root rotation (activate after {}s, overlap {}s)",
                r.activate_after.0.as_secs(),
                r.overlap.0.as_secs()
            ),
        }
    }

    /// Whether this step is a fault (drawn as such in the timeline).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::Partition(_)
                | Action::Crash(_)
                | Action::Latency(_)
                | Action::Loss(_)
                | Action::AdvanceClock(_)
        )
    }
}

/// One timeline entry: at `at`, do exactly one thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStep {
    at: Dur,
    #[serde(default)]
    apply: Option<String>,
    #[serde(default)]
    delete: Option<ObjectRef>,
    #[serde(default)]
    partition: Option<[String; 2]>,
    #[serde(default)]
    repair: Option<[String; 2]>,
    #[serde(default)]
    crash: Option<String>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    latency: Option<LinkLatency>,
    #[serde(default)]
    loss: Option<LinkLoss>,
    #[serde(default)]
    advance_clock: Option<Dur>,
    #[serde(default)]
    rotate_root: Option<RootRotation>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawStep::deserialize(d)?;
        let mut actions = Vec::new();
        if let Some(m) = raw.apply {
            actions.push(Action::Apply {
                manifests: m,
                line: 0,
            });
        }
        actions.extend(raw.delete.map(Action::Delete));
        actions.extend(raw.partition.map(Action::Partition));
        actions.extend(raw.repair.map(Action::Repair));
        actions.extend(raw.crash.map(Action::Crash));
        actions.extend(raw.restart.map(Action::Restart));
        actions.extend(raw.latency.map(Action::Latency));
        if let Some(loss) = raw.loss {
            if !(0.0..=1.0).contains(&loss.rate) {
                return Err(de::Error::custom(format!(
                    "loss rate {} is not between 0 and 1",
                    loss.rate
                )));
            }
            actions.push(Action::Loss(loss));
        }
        actions.extend(raw.advance_clock.map(|d| Action::AdvanceClock(d.0)));
        actions.extend(raw.rotate_root.map(Action::RotateRoot));
        if actions.len() != 1 {
            return Err(de::Error::custom(format!(
                "timeline step at {}ms: exactly one of apply, delete, partition, repair, crash, \
                 restart, latency, loss, advanceClock, rotateRoot (found {})",
                raw.at.0.as_millis(),
                actions.len()
            )));
        }
        Ok(Step {
            at: raw.at.0,
            action: actions.remove(0),
        })
    }
}
