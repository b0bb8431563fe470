//! The namespace cluster: the simulator's scenario files (`sim/scenarios/*.yaml`) realised on
//! the real kernel, to check that what the simulator proves of the production code also holds
//! with real sockets, real capture and the real binaries.
//!
//! - every node is a network namespace on one LAN with istiod's ([`topology`]);
//! - every pod is a network namespace of its own behind a veth to its node's, at the IP the
//!   control store's scheduler gives it — the same placement the simulator and istiod compute
//!   ([`placement`]);
//! - the real `istiod` serves the scenario's manifests; each node runs the real `node-agent`
//!   and an in-pod `ztunnel`, each waypoint pod the real `waypoint` ([`processes`]);
//! - enrolled pods are handed to their node's agent, which installs the capture rules in the
//!   pod's namespace and has the ztunnel open its listeners there;
//! - the applications (HTTP and TCP echoes) are served by this runner's own tokio runtime, not
//!   by echo processes, but every socket is created inside its pod's namespace, so the kernel
//!   path (capture, routing, the mesh) is a pod's ([`apps`]);
//! - traffic is a plain `connect` to a pod IP or Service VIP made inside the source pod's
//!   namespace ([`traffic`]), judged by the scenario's expectations with the simulator's rules
//!   ([`judge`]).
//!
//! Timeline `apply`/`delete` rewrite istiod's config dir, which istiod follows
//! ([`config_dir`]); `rotateRoot` runs `istiod rotate-root begin` on its state dir. What a kernel
//! cannot do here (a step that adds or moves pods, `advanceClock`, `latency`/`loss`), or a
//! scenario longer than the wall-time budget ([`Options::max_wall`]), makes a scenario `SKIP`
//! with the reason ([`runner::unsupported`]).
//!
//! Needs root and `ip`, `nft`, `sysctl`; everything made (namespaces, processes, the run
//! directory) is removed when the [`Cluster`] drops, at exit, and on SIGINT/SIGTERM.

pub mod apps;
pub mod cluster;
pub mod config_dir;
pub mod judge;
pub mod logs;
pub mod net;
pub mod placement;
pub mod processes;
pub mod runner;
pub mod topology;
pub mod traffic;
pub mod wire;

pub use cluster::{Cluster, Options};
pub use placement::Placement;
pub use runner::{NotRun, Recorded, Verdict, run_recorded, run_scenario};

/// Why a cluster could not be built, started or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation, named.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A namespace, veth, address, route or nft rule could not be made.
    #[error(transparent)]
    Netns(#[from] harness::netns::NetnsError),
    /// The control store refused the scenario's manifests.
    #[error("the scenario's manifests: {0}")]
    Manifests(String),
    /// Something the scenario asks that this kernel run cannot do.
    #[error("not possible on this kernel: {0}")]
    Unsupported(String),
    /// A binary is missing, with how to get it.
    #[error("{0}")]
    NotBuilt(String),
    /// A process failed to start, exited, or was not ready in time; with its log's end.
    #[error("{what}; its log ends:\n{log}")]
    Process { what: String, log: String },
    /// The node agent did not enrol a pod.
    #[error("enrolling {pod}: {why}")]
    Enroll { pod: String, why: String },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
