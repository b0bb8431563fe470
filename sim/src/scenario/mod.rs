//! The scenario format: one YAML document per file (see `sim/README.md` for the reference
//! and a complete example). Every key is known or the file is refused, and every error names
//! the file and a line.
//!
//! The cluster is given as plain Kubernetes manifests in a block string (`cluster: |`), the
//! same YAML a user would `kubectl apply`; `apply:` steps of the timeline carry manifests the
//! same way. Their errors are reported at their line in the scenario file.
//!
//! The parts: `values` (durations, node lists), `settings` (simulation settings and the
//! invariants to check), `timeline` (steps and faults), `traffic` (requests: from, to,
//! how), `expect` (outcomes and what the scenario expects of them), and `check` (what
//! serde cannot check, and the file lines errors name).

mod check;
mod expect;
mod settings;
mod timeline;
mod traffic;
mod values;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use check::BlockFinder;
pub use check::line_of;
pub use expect::{Expectation, Expected, Outcome, Phase};
pub use settings::{INVARIANTS, Invariants, Settings};
pub use timeline::{Action, LinkLatency, LinkLoss, ObjectRef, RootRotation, Step};
pub use traffic::{
    Capture, ConnectionMode, Destination, HttpRequest, Protocol, Source, Target, Traffic,
};
pub use values::{Dur, Nodes, parse_duration};

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// How a timeline step or a fault names istiod.
pub const ISTIOD: &str = "istiod";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    about: String,
    #[serde(default = "default_seed")]
    seed: u64,
    nodes: Nodes,
    #[serde(default)]
    settings: Settings,
    cluster: String,
    #[serde(default)]
    timeline: Vec<Step>,
    #[serde(default)]
    traffic: Vec<Traffic>,
    #[serde(default)]
    invariants: Invariants,
    #[serde(default)]
    must_fail: Option<String>,
}

fn default_seed() -> u64 {
    1
}

/// A loaded, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// Where it was read from (for errors and replay commands).
    pub file: String,
    pub about: String,
    pub seed: u64,
    pub nodes: Vec<String>,
    pub settings: Settings,
    /// The cluster's manifests and the line of the file they start on.
    pub cluster: String,
    pub cluster_line: usize,
    /// In time order (stable for equal times).
    pub timeline: Vec<Step>,
    pub traffic: Vec<Traffic>,
    pub invariants: Invariants,
    /// For scenarios that must be caught: the invariant that must catch them.
    pub must_fail: Option<String>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Scenario::parse(&text, &file, &stem)
    }

    /// Parses scenario text; `file` names it in errors, `default_name` is used without `name:`.
    pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
        let err = |line: Option<usize>, message: String| ScenarioError {
            file: file.to_string(),
            line,
            message,
        };
        let raw: RawScenario = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let mut message = e.to_string();
            if let Some(l) = e.location() {
                let suffix = format!(" at line {} column {}", l.line(), l.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_string();
                }
            }
            err(line, message)
        })?;
        let mut blocks = BlockFinder::new(text);
        let cluster_line = blocks.find(&raw.cluster).unwrap_or(1);
        let mut timeline = raw.timeline;
        for step in &mut timeline {
            if let Action::Apply { manifests, line } = &mut step.action {
                *line = blocks.find(manifests).unwrap_or(1);
            }
        }
        timeline.sort_by_key(|s| s.at);
        let scenario = Scenario {
            name: raw.name.unwrap_or_else(|| default_name.to_string()),
            file: file.to_string(),
            about: raw.about,
            seed: raw.seed,
            nodes: raw.nodes.0,
            settings: raw.settings,
            cluster: raw.cluster,
            cluster_line,
            timeline,
            traffic: raw.traffic,
            invariants: raw.invariants,
            must_fail: raw.must_fail,
        };
        scenario
            .check(text)
            .map_err(|(needle, message)| err(needle.and_then(|n| line_of(text, &n)), message))?;
        Ok(scenario)
    }
}

/// Every `*.yaml` file directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINIMAL: &str = "about: x\nnodes: [a, b]\ncluster: |\n  apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n";

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, "t.yaml", "t")
    }

    #[test]
    fn minimal_and_block_lines() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.nodes, ["a", "b"]);
        assert_eq!(s.cluster_line, 4);
        assert_eq!(s.name, "t");
        let s = parse("about: x\nnodes: 12\ncluster: \"\"\n").unwrap();
        assert_eq!(s.nodes.first().map(String::as_str), Some("node-01"));
        assert_eq!(s.nodes.len(), 12);
    }

    #[test]
    fn istiod_flags_and_mesh_config_are_settings() {
        let text = format!(
            "{MINIMAL}settings:\n  istiodEnv: {{AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY: \"true\"}}\n  meshConfig: \"trustDomainAliases: [old.td]\"\n"
        );
        let mesh = parse(&text).unwrap().settings.mesh().unwrap();
        assert!(mesh.features.dry_run_authorization_policies);
        assert_eq!(mesh.trust_domain_aliases, ["old.td"]);
        for (bad, said) in [
            (
                "istiodEnv: {PILOT_AUTO_ALLOW_WAYPOINT_POLICY: \"maybe\"}",
                "maybe",
            ),
            ("istiodEnv: {NOT_A_FLAG: \"true\"}", "not a feature flag"),
            (
                "meshConfig: \"trustDomainAliases: 7\"",
                "settings.meshConfig",
            ),
        ] {
            let e = parse(&format!("{MINIMAL}settings:\n  {bad}\n")).unwrap_err();
            assert!(e.message.contains(said), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let e = parse(&format!("{MINIMAL}bogus: 1\n")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("unknown field `bogus`"), "{e}");

        let text = format!("{MINIMAL}timeline:\n- at: 5s\n  crash: a\n- at: 7q\n  restart: a\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("invalid duration \"7q\""), "{e}");

        let text = format!("{MINIMAL}timeline:\n- at: 5s\n  crash: zz\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("\"zz\" is neither"), "{e}");

        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{pod: shop/a}}\n  to: {{service: shop/b, port: 80}}\n  duration: 1s\n  expect: sucseed\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("unknown outcome \"sucseed\""), "{e}");

        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{pod: shop/a}}\n  to: {{service: shop/b}}\n  duration: 1s\n  expect: succeed\n"
        );
        let e = parse(&text).unwrap_err();
        // Checks made after a mapping is read name the line of the item that holds it.
        assert_eq!(e.line, Some(9), "{e}");
        assert!(
            e.message
                .contains("traffic[0]: the destination needs a port"),
            "{e}"
        );
    }

    #[test]
    fn expectations() {
        let text = format!(
            "{MINIMAL}traffic:\n- name: t\n  from: {{deployment: shop/a}}\n  to: {{pod: shop/b-0, port: 80}}\n  duration: 1s\n  expect:\n  - {{from: 0s, outcome: succeed}}\n  - {{from: 5s, outcome: denied}}\n"
        );
        let s = parse(&text).unwrap();
        let e = &s.traffic[0].expect;
        assert_eq!(e.at(Duration::from_secs(1)).0, Some(Expected::Succeed));
        assert_eq!(
            e.at(Duration::from_secs(6)),
            (
                Some(Expected::Denied),
                Duration::from_secs(5),
                Some(Expected::Succeed)
            )
        );
        assert_eq!(
            e.next_change_after(Duration::from_secs(1)),
            Some(Duration::from_secs(5))
        );
    }
}
