//! Local-config (file) mode: the ztunnel reads workloads, services and policies from a YAML file
//! (upstream's `LOCAL_XDS_PATH` / `LOCAL_XDS`) instead of, or in addition to, xDS.
//!
//! The file has upstream Istio ztunnel's local-config shape, so one file drives both upstream's
//! ztunnel and ours in interop tests. The YAML is read into private structs that mirror that
//! shape exactly (camelCase, unknown fields rejected as upstream does), then validated and
//! converted into the model types of [`crate::state`] and [`crate::policy`]. Every invalid value
//! is reported with the object and field it is in, because a local config is hand-written and
//! the person fixing it needs to know where to look.
//!
//! Unlike xDS, local config does not default `trustDomain` or `serviceAccount`: empty strings
//! are kept as written (our [`Workload::identity`] then applies the usual defaults).

#[cfg(test)]
mod fuzz;
mod shape;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::Authorization;
use crate::state::{Service, State, Workload};
use crate::yaml_shape::{MAX_DEPTH, MAX_NODES, Oversized, oversized};

use shape::RawConfig;

/// A local config, converted into model types and validated, ready to be put into a [`State`].
///
/// Kept as plain lists (not a `State`) so callers can inspect or merge it before applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// In file order; uids are unique (checked, since `State` would silently keep the last).
    pub workloads: Vec<Workload>,
    /// In file order; `namespace/hostname` keys are unique.
    pub services: Vec<Service>,
    /// In file order; `namespace/name` keys are unique.
    pub policies: Vec<Authorization>,
}

/// Why a local config could not be used. Each variant says where the problem is, so a start-up
/// failure can be fixed from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("cannot read local config {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not YAML, or not the local-config shape: an unknown or missing field, a wrong type or an
    /// unknown enum value. serde_yaml's message carries the line and column.
    #[error("{}: {error}", Origin(.path.as_deref()))]
    Yaml {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        error: serde_yaml::Error,
    },
    /// Well-formed YAML with a value that is not valid, e.g. an IP that does not parse.
    /// `message` names the object and the field, e.g.
    /// `workloads[1] (shop/cart-0): workloadIps[0]: "10.0.0.x" is not an IP address`.
    #[error("{}: {message}", Origin(.path.as_deref()))]
    Invalid {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        message: String,
    },
}

/// Renders "local config" or "local config <path>" as the prefix of an error message.
struct Origin<'a>(Option<&'a Path>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "invalid local config {}", path.display()),
            None => f.write_str("invalid local config"),
        }
    }
}

impl LocalConfigError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            LocalConfigError::Yaml { error, .. } => LocalConfigError::Yaml {
                path: Some(file.to_path_buf()),
                error,
            },
            LocalConfigError::Invalid { message, .. } => LocalConfigError::Invalid {
                path: Some(file.to_path_buf()),
                message,
            },
            io @ LocalConfigError::Io { .. } => io,
        }
    }
}

impl LocalConfig {
    /// Parses and validates a local config given inline (upstream's `LOCAL_XDS`). An empty
    /// document is an empty config.
    pub fn parse(yaml: &str) -> Result<Self, LocalConfigError> {
        // The YAML parser's time grows with the square of the nesting, and its memory with
        // the nodes: what no local config needs is refused before it runs.
        if let Some(refused) = oversized(yaml, MAX_DEPTH, MAX_NODES) {
            let message = match refused {
                Oversized::Deep { line } => format!(
                    "line {line}: nested more than {MAX_DEPTH} levels deep; refused before parsing"
                ),
                Oversized::Many { line } => {
                    format!("line {line}: more than {MAX_NODES} YAML nodes; refused before parsing")
                }
            };
            return Err(LocalConfigError::Invalid {
                path: None,
                message,
            });
        }
        // serde_yaml reads an empty document (or one with only comments) as null.
        let raw: Option<RawConfig> = serde_yaml::from_str(yaml)
            .map_err(|error| LocalConfigError::Yaml { path: None, error })?;
        raw.unwrap_or_default()
            .convert()
            .map_err(|message| LocalConfigError::Invalid {
                path: None,
                message,
            })
    }

    /// Reads, parses and validates a local config file (upstream's `LOCAL_XDS_PATH`). Errors
    /// name the file.
    pub fn load(path: &Path) -> Result<Self, LocalConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|error| LocalConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&yaml).map_err(|e| e.with_path(path))
    }

    /// Inserts everything into `state`, replacing objects with the same key (workload uid,
    /// service `namespace/hostname`, policy `namespace/name`), as an xDS update would.
    pub fn apply_to(&self, state: &mut State) {
        for service in &self.services {
            state.insert_service(service.clone());
        }
        for workload in &self.workloads {
            state.insert_workload(workload.clone());
        }
        for policy in &self.policies {
            state.insert_policy(policy.clone());
        }
    }
}
