//! The run's knobs: simulation settings (tick, latency, certificate lifetime, limits) and
//! which invariants are checked.

use std::collections::BTreeMap;
use std::time::Duration;

use control::features::Features;
use control::snapshot::MeshConfig;
use serde::Deserialize;

use super::Dur;

/// Simulation settings; all optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Settings {
    /// turmoil's tick: the resolution of simulated time.
    pub tick: Dur,
    /// Every message's latency is drawn (from the seed) between these.
    pub min_latency: Dur,
    pub max_latency: Dur,
    /// Lifetime of workload certificates (istiod's default and what ztunnels ask for).
    pub certificate_ttl: Dur,
    /// istiod's debounce of store changes.
    pub debounce: Dur,
    /// How long the world keeps running after the last traffic and timeline step, before the
    /// end-of-run checks (leaks).
    pub settle: Dur,
    /// The run is stopped (and fails) if it has not ended by then.
    pub max_duration: Dur,
    /// istiod's feature flags, by upstream's environment variable names
    /// (`AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY: "true"`, …).
    pub istiod_env: BTreeMap<String, String>,
    /// Upstream's mesh config as YAML (`trustDomainAliases`, …).
    pub mesh_config: String,
}

impl Settings {
    /// The mesh-wide settings istiod runs with: its flags and mesh config, or why they are
    /// not usable.
    pub fn mesh(&self) -> Result<MeshConfig, String> {
        if let Some(unknown) = self
            .istiod_env
            .keys()
            .find(|k| !Features::NAMES.contains(&k.as_str()))
        {
            return Err(format!(
                "settings.istiodEnv: {unknown:?} is not a feature flag istiod knows ({})",
                Features::NAMES.join(", ")
            ));
        }
        let features = Features::from_lookup(|name| self.istiod_env.get(name).cloned())
            .map_err(|e| format!("settings.istiodEnv: {e}"))?;
        let mut mesh = MeshConfig {
            features,
            ..MeshConfig::default()
        };
        control::mesh_config::read(&self.mesh_config, &mut mesh)
            .map_err(|e| format!("settings.meshConfig: {e}"))?;
        Ok(mesh)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Dur(Duration::from_millis(1)),
            min_latency: Dur(Duration::from_millis(1)),
            max_latency: Dur(Duration::from_millis(10)),
            certificate_ttl: Dur(Duration::from_secs(24 * 3600)),
            debounce: Dur(Duration::from_millis(100)),
            settle: Dur(Duration::from_secs(3)),
            max_duration: Dur(Duration::from_secs(3600)),
            istiod_env: BTreeMap::new(),
            mesh_config: String::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn five_seconds() -> Dur {
    Dur(Duration::from_secs(5))
}

/// The invariants checked while the scenario runs; all on by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Invariants {
    /// No recognisable application payload between nodes for traffic that must be encrypted.
    #[serde(default = "yes")]
    pub plaintext: bool,
    /// No denied request reaches an application; none that must pass is denied.
    #[serde(default = "yes")]
    pub policy: bool,
    /// After a change, every ztunnel holds what istiod publishes, and requests see the new
    /// expected outcome, within this bound.
    #[serde(default = "five_seconds")]
    pub convergence: Dur,
    /// Nothing panics.
    #[serde(default = "yes")]
    pub panic: bool,
    /// At the end, no connection is still open in an application or a ztunnel.
    #[serde(default = "yes")]
    pub leaks: bool,
    /// Answers come from the backends the traffic's `backend` and `split` name.
    #[serde(default = "yes")]
    pub routing: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            plaintext: true,
            policy: true,
            convergence: five_seconds(),
            panic: true,
            leaks: true,
            routing: true,
        }
    }
}

/// The invariants by name, as violations report them.
pub const INVARIANTS: [&str; 6] = [
    "plaintext",
    "policy",
    "convergence",
    "panic",
    "leaks",
    "routing",
];
