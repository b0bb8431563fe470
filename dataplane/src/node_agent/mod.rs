//! The node agent: istio-cni's role in ambient's in-pod mode, so that our ztunnel (or
//! upstream's) can serve pods on a real kernel exactly as it does in a cluster.
//!
//! For each enrolled pod the agent installs redirection rules inside the pod's network
//! namespace ([`rules`]) and hands the node's ztunnel the pod and that namespace over
//! upstream's ZDS protocol ([`zds_server`]); ztunnel then opens its listeners inside the pod.
//! Pods come in over a small JSON socket ([`cni`]) from whoever plays kubelet and the CNI
//! plugin. [`pods`] is the table that ties the three together.
//!
//! [`start`] runs it all in-process (tests); the `node-agent` binary is the same behind
//! flags, and releases every pod when it is stopped.

pub mod cni;
pub mod pods;
pub mod rules;
pub mod zds_server;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

pub use cni::{AddPod, DelPod, ListPods, ListedPod, MAX_LINE, PodClient, PodRequest, PodResponse};
pub use pods::{CapturedPod, PodError, PodSpec, Pods};
pub use rules::{Nft, RULESET, Redirection, RulesError, ZTUNNEL_MARK, open_netns, remove_at};
pub use zds_server::{ACK_TIMEOUT, HELLO_TIMEOUT};

use crate::zds::ZdsListener;

/// Where the agent takes pod events by default, beside the ZDS socket.
pub const DEFAULT_POD_SOCKET: &str = "/var/run/ztunnel/pods.sock";

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where ztunnels connect ([`crate::zds::DEFAULT_SOCKET`] by default, upstream's).
    pub zds_socket: PathBuf,
    /// Where pod events come in ([`DEFAULT_POD_SOCKET`] by default).
    pub pod_socket: PathBuf,
    /// How long ztunnel has to acknowledge a request ([`ACK_TIMEOUT`] by default).
    pub ack_timeout: Duration,
    /// What installs the rules: `nft` from `PATH` by default.
    pub rules: Arc<dyn Redirection>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            zds_socket: PathBuf::from(crate::zds::DEFAULT_SOCKET),
            pod_socket: PathBuf::from(DEFAULT_POD_SOCKET),
            ack_timeout: ACK_TIMEOUT,
            rules: Arc::new(Nft::default()),
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A socket or its directory could not be made.
    #[error("{what} {path}: {source}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A running agent. Dropping it stops serving but leaves the pods' rules in place (as a
/// crashed agent would); [`NodeAgent::shutdown`] releases them.
#[derive(Debug)]
pub struct NodeAgent {
    pods: Pods,
    servers: JoinSet<()>,
    zds_socket: PathBuf,
    pod_socket: PathBuf,
}

fn create_parent(path: &Path, what: &'static str) -> Result<(), AgentError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| AgentError::Socket {
                what,
                path: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Binds both sockets (creating their directories) and serves them on the current tokio
/// runtime until the agent is shut down or dropped.
pub async fn start(config: Config) -> Result<NodeAgent, AgentError> {
    create_parent(
        &config.zds_socket,
        "creating the directory of the ZDS socket",
    )?;
    create_parent(
        &config.pod_socket,
        "creating the directory of the pod socket",
    )?;
    let zds = ZdsListener::bind(&config.zds_socket).map_err(|source| AgentError::Socket {
        what: "listening for ztunnel at",
        path: config.zds_socket.clone(),
        source,
    })?;
    let events = cni::bind(&config.pod_socket).map_err(|source| AgentError::Socket {
        what: "listening for pod events at",
        path: config.pod_socket.clone(),
        source,
    })?;
    let pods = Pods::new(config.rules, config.ack_timeout);
    let mut servers = JoinSet::new();
    servers.spawn(zds_server::serve(zds, pods.clone()));
    servers.spawn(cni::serve(events, pods.clone()));
    tracing::info!(zds = %config.zds_socket.display(), pods = %config.pod_socket.display(), "node agent serving");
    Ok(NodeAgent {
        pods,
        servers,
        zds_socket: config.zds_socket,
        pod_socket: config.pod_socket,
    })
}

impl NodeAgent {
    /// The table of captured pods, to drive the agent without the pod socket.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// Where ztunnels connect: the path to hand a ztunnel as `INPOD_UDS`.
    pub fn zds_socket(&self) -> &Path {
        &self.zds_socket
    }

    /// Where pod events go: the path for a [`PodClient`].
    pub fn pod_socket(&self) -> &Path {
        &self.pod_socket
    }

    /// Stops serving, releases every pod (ztunnel told, rules removed) and removes both
    /// socket files. Answers the pods whose rules could not be removed, with why.
    pub async fn shutdown(mut self) -> Vec<(String, PodError)> {
        self.servers.shutdown().await;
        let failed = self.pods.remove_all().await;
        for path in [&self.zds_socket, &self.pod_socket] {
            if let Err(err) = std::fs::remove_file(path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %err, "cannot remove the socket file");
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests;
