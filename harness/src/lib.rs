//! Test support for running the project against real outside components: a private
//! Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback ports,
//! with its own certificates and users, and upstream's ztunnel with private network
//! namespaces to run it in ([`netns`]); each started by a test and stopped when it ends —
//! also when it panics.
//!
//! ```text
//! let Some(components) = Components::find_or_skip("my_test") else { return };
//! let cluster = Cluster::start(&components, Options::default()).await?;
//! let admin = cluster.admin_client().await?;
//! // … point istiod at cluster.istiod_kubeconfig() …
//! ```
//!
//! (Not a doctest: compiling one against `kube` would cost every `cargo test --workspace`
//! a link.)
//!
//! The binaries come from environment variables or `../shared/bin/` ([`components`]); where
//! they are missing a test prints `SKIP <test>: …` and passes, unless
//! `REAL_COMPONENTS_REQUIRED=1`.

pub mod apiserver;
mod at_exit;
pub mod build;
pub mod capture;
mod certs;
pub mod components;
pub mod kubeconfig;
pub mod manifests;
pub mod netns;
pub mod objects;
pub mod ports;
pub mod process;

use std::path::Path;
use std::time::Duration;

pub use apiserver::{Cluster, Options};
pub use at_exit::exit_on_signals;
pub use components::{Component, Components, skip};
pub use kubeconfig::TokenUser;
pub use netns::{Lan, Netns};
pub use process::Process;

/// Why a private control plane could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("making certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("no secure randomness for tokens")]
    Random,
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{what} exited ({status}); its log ends:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("{what} not ready after {after:?} (last answer: {last}); logs:\n{log}")]
    NotReady {
        what: String,
        after: Duration,
        last: String,
        log: String,
    },
}

/// Removes `dir` when the test process exits: for fixtures held in a static, which are never
/// dropped.
pub fn remove_dir_at_exit(dir: std::path::PathBuf) {
    at_exit::dir(dir);
}

/// Writes `bytes` to `path`, naming the path in the error.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}
