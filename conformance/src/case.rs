//! The case format: one YAML file per case under `conformance/cases/<suite>/`, plus the
//! suite's shared topology in `base.yaml` (see `conformance/README.md`). Cases are data so
//! that one suite runs against every target; every key is known or the file is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::profiles::{Level, Profile};

/// A case or base file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        file: String,
        line: Option<usize>,
        message: String,
    },
}

pub(crate) fn invalid(file: &Path, message: impl Into<String>) -> CaseError {
    CaseError::Invalid {
        file: file.display().to_string(),
        line: None,
        message: message.into(),
    }
}

/// The topology every case of a suite starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Node names of the simulated cluster.
    pub nodes: Vec<String>,
    /// `namespace/deployment` requests come from unless a request names another.
    pub client: String,
    /// The namespace a request's `to.service` names when it has no `namespace/`.
    pub namespace: String,
    /// Plain Kubernetes manifests.
    pub manifests: String,
}

/// One case: the upstream test it covers, what it needs, what it applies, what it sends and
/// what it expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    /// The upstream conformance test (its `ShortName`) whose behaviour this covers.
    pub test: String,
    pub profile: Profile,
    /// Whether the test is core or extended in its profile (checked against `features`).
    pub level: Level,
    /// The upstream test's features (gateway-api-semantics §6).
    pub features: Vec<String>,
    #[serde(default)]
    pub provisional: bool,
    /// Why this case is not run (the waypoint cannot do it yet); it reports SKIP.
    #[serde(default)]
    pub skip: Option<String>,
    /// Manifests added to the base topology.
    #[serde(default)]
    pub manifests: String,
    pub requests: Vec<RequestSpec>,
    /// The file it was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Where a request goes: a Service (by name in the base namespace, or `namespace/name`) or
/// a deployment's pod (by pod IP: the route must not apply), and the port.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default = "port_80")]
    pub port: u16,
}

fn port_80() -> u16 {
    80
}

impl Default for To {
    fn default() -> Self {
        To {
            service: Some("echo".into()),
            pod: None,
            port: 80,
        }
    }
}

/// One request a case sends (repeatedly: see the runner), and what must come back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// For messages; default: `METHOD path`.
    #[serde(default)]
    pub name: Option<String>,
    /// `namespace/deployment` of the client; default: the base's client.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: To,
    #[serde(default = "get")]
    pub method: String,
    /// Path and query, as sent.
    #[serde(default = "slash")]
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    /// How long one try waits for its answer, in milliseconds (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    pub expect: Expect,
    /// A statistical request: this many samples, judged together (gateway-api-semantics §5).
    #[serde(default)]
    pub samples: Option<u32>,
    /// Backend pod-name prefix → weight: each share within 5 points of weight / sum.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, u32>>,
    /// Mirror pod-name prefix → percent of samples it must also receive (binomial 3 sigma).
    #[serde(default)]
    pub mirrors: Option<BTreeMap<String, f64>>,
}

fn get() -> String {
    "GET".into()
}
fn slash() -> String {
    "/".into()
}

impl RequestSpec {
    /// How the request is named in messages.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{} {}", self.method, self.path))
    }
}

/// One status or several allowed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Statuses {
    One(u16),
    Many(Vec<u16>),
}

impl Statuses {
    pub fn list(&self) -> Vec<u16> {
        match self {
            Statuses::One(s) => vec![*s],
            Statuses::Many(v) => v.clone(),
        }
    }
}

/// One value, or several accepted (CORS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOf {
    One(String),
    Many(Vec<String>),
}

impl OneOf {
    pub fn list(&self) -> Vec<String> {
        match self {
            OneOf::One(s) => vec![s.clone()],
            OneOf::Many(v) => v.clone(),
        }
    }
}

/// A redirect's `Location`, compared field by field as upstream does (§3.1).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Default: `http` (the request's scheme).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Not checked when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// When absent: empty or the scheme's well-known port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Default: the request's path.
    #[serde(default)]
    pub path: Option<String>,
}

/// What an answer must look like.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// Allowed statuses (408 and 504 stand for each other).
    #[serde(default)]
    pub status: Option<Statuses>,
    /// Answering pod-name prefix.
    #[serde(default)]
    pub backend: Option<String>,
    /// The namespace the echo says it runs in.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The path (with query) the backend saw. Default: the request's for GATEWAY-HTTP cases,
    /// unchecked for MESH-HTTP ones (as upstream).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Headers the backend saw: values joined with `,` and no space.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub absent_request_headers: Vec<String>,
    /// Response headers (values joined with `,`), or one of several accepted values.
    #[serde(default)]
    pub response_headers: BTreeMap<String, OneOf>,
    #[serde(default)]
    pub absent_response_headers: Vec<String>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// The answer must not come from an echo (the proxy answered itself, e.g. a preflight).
    #[serde(default)]
    pub not_echo: bool,
}

/// The suite directory: `conformance/cases/<suite>`.
pub fn suite_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(suite)
}

/// The suites there are (directory names under `conformance/cases`).
pub fn suites() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub(crate) fn read(path: &Path) -> Result<String, CaseError> {
    std::fs::read_to_string(path).map_err(|source| CaseError::Read {
        file: path.display().to_string(),
        source,
    })
}

pub(crate) fn yaml_error(path: &Path, e: serde_yaml::Error) -> CaseError {
    CaseError::Invalid {
        file: path.display().to_string(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    }
}

/// Reads a suite's `base.yaml`.
pub fn load_base(dir: &Path) -> Result<Base, CaseError> {
    let path = dir.join("base.yaml");
    serde_yaml::from_str(&read(&path)?).map_err(|e| yaml_error(&path, e))
}

/// Reads and checks one case file.
pub fn load_case(path: &Path) -> Result<Case, CaseError> {
    let mut case: Case = serde_yaml::from_str(&read(path)?).map_err(|e| yaml_error(path, e))?;
    case.file = path.to_path_buf();
    case.check()?;
    Ok(case)
}

/// A suite's case files: every `*.yaml` in `dir` but `base.yaml`, sorted by name.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CaseError::Read {
            file: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name() != Some("base.yaml".as_ref())
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every case of a suite (every `*.yaml` but `base.yaml`), sorted by file name; ids unique.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, CaseError> {
    let files = case_files(dir)?;
    let cases = files
        .iter()
        .map(|f| load_case(f))
        .collect::<Result<Vec<_>, _>>()?;
    unique_ids(cases.iter().map(|c| (c.id.as_str(), c.file.as_path())))?;
    Ok(cases)
}

/// Refuses a suite in which two cases share an id, naming both files.
pub(crate) fn unique_ids<'a>(
    cases: impl Iterator<Item = (&'a str, &'a Path)>,
) -> Result<(), CaseError> {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for (id, file) in cases {
        if let Some(other) = seen.insert(id, file) {
            return Err(invalid(
                file,
                format!("id {id:?} is also used by {}", other.display()),
            ));
        }
    }
    Ok(())
}

impl Case {
    fn check(&self) -> Result<(), CaseError> {
        let fail = |m: String| Err(invalid(&self.file, m));
        if self.requests.is_empty() {
            return fail("a case needs at least one request".into());
        }
        if let Some(level) = self.profile.level_of(&self.features)
            && level != self.level
        {
            return fail(format!(
                "level {:?} but its features make it {level:?} in {}",
                self.level,
                self.profile.name()
            ));
        }
        for (i, r) in self.requests.iter().enumerate() {
            if r.to.service.is_some() == r.to.pod.is_some() {
                return fail(format!("requests[{i}].to: exactly one of service, pod"));
            }
            if !r.path.starts_with('/') {
                return fail(format!("requests[{i}].path must start with /"));
            }
            if (r.weights.is_some() || r.mirrors.is_some()) && r.samples.is_none() {
                return fail(format!(
                    "requests[{i}]: weights and mirrors need samples (a statistical request)"
                ));
            }
            if let Some(m) = &r.mirrors
                && m.values().any(|p| !(0.0..=100.0).contains(p))
            {
                return fail(format!("requests[{i}].mirrors: percents are 0 to 100"));
            }
        }
        Ok(())
    }
}
