//! The agent's table of captured pods, and the two things that change it: a pod captured
//! (namespace opened, rules installed, ztunnel told) and a pod released (ztunnel told, rules
//! removed).
//!
//! The table holds exactly the pods whose rules are installed, so it is also the snapshot a
//! newly connected ztunnel is given. One lock covers the table and the ztunnel connection:
//! every change reaches ztunnel in the order it was made, and a snapshot can neither miss a
//! change nor see one twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::Mutex;

use super::rules::{Redirection, RulesError, open_netns};
use super::zds_server::{Delivery, Ztunnel};
use crate::zds::proto::workload_request::Payload;
use crate::zds::{MAX_PACKET, PodInfo, Request, ZdsServerConn, proto};

/// A pod to capture, as the CNI side names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// The Kubernetes pod UID: the key ztunnel knows the pod by.
    pub uid: String,
    pub pod: PodInfo,
    /// Its network namespace: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
}

/// A captured pod, as [`Pods::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPod {
    pub uid: String,
    pub pod: PodInfo,
    pub netns: PathBuf,
}

/// Why a pod could not be captured or released.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The request itself cannot be carried out (empty names, a relative path, too long).
    #[error("invalid pod: {0}")]
    Invalid(String),
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The rules are installed and the pod stays in the table (a later delete releases it);
    /// the connected ztunnel said it will not serve it.
    #[error("ztunnel refused pod {uid}: {reason}")]
    Refused { uid: String, reason: String },
    /// [`Pods::remove_all`] ran: a pod added now would outlive the agent's cleanup.
    #[error("the node agent is stopping; pods are no longer added")]
    Stopping,
    /// Out of descriptors, most likely.
    #[error("duplicating the network namespace descriptor of pod {uid}: {source}")]
    Descriptor { uid: String, source: std::io::Error },
    /// The task carrying the operation panicked or was cancelled with the runtime.
    #[error("the operation on pod {uid} did not finish: {reason}")]
    Lost { uid: String, reason: String },
}

/// One captured pod. The namespace stays open for as long as the pod is captured: it is what
/// ztunnel is handed, and its rules can be removed through it even after the pod's own
/// processes (and the `/run/netns` name) are gone.
#[derive(Debug)]
struct Entry {
    pod: PodInfo,
    netns_path: PathBuf,
    netns: File,
    /// (device, inode): two descriptors name the same namespace when these agree.
    identity: (u64, u64),
}

#[derive(Debug)]
struct Inner {
    table: BTreeMap<String, Entry>,
    ztunnel: Ztunnel,
    /// Set by [`Pods::remove_all`]: from then on nothing is added.
    stopping: bool,
}

/// The table of captured pods, shared by the CNI side, the ZDS server and the process.
/// Cloning gives another handle to the same table.
#[derive(Debug, Clone)]
pub struct Pods {
    inner: Arc<Mutex<Inner>>,
    rules: Arc<dyn Redirection>,
}

/// Runs blocking work (opening a namespace, running `nft`) off the async threads.
async fn blocking<T, F>(uid: &str, work: F) -> Result<T, PodError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PodError::Lost {
            uid: uid.to_string(),
            reason: e.to_string(),
        })
}

impl PodSpec {
    /// Refuses what ztunnel could not be told: empty names, and an `Add` longer than one ZDS
    /// packet (Kubernetes' own limits keep real pods far below it).
    fn validate(&self) -> Result<(), PodError> {
        for (field, value) in [
            ("uid", &self.uid),
            ("name", &self.pod.name),
            ("namespace", &self.pod.namespace),
        ] {
            if value.is_empty() {
                return Err(PodError::Invalid(format!("{field} is empty")));
            }
        }
        if !self.netns.is_absolute() {
            return Err(PodError::Invalid(format!(
                "netns {} is not an absolute path",
                self.netns.display()
            )));
        }
        let add = proto::WorkloadRequest {
            payload: Some(Payload::Add(proto::AddWorkload {
                uid: self.uid.clone(),
                workload_info: Some(proto::WorkloadInfo {
                    name: self.pod.name.clone(),
                    namespace: self.pod.namespace.clone(),
                    service_account: self.pod.service_account.clone(),
                }),
            })),
        };
        if add.encoded_len() > MAX_PACKET {
            return Err(PodError::Invalid(format!(
                "uid, name, namespace and service account take {} bytes on the wire; \
                 a ZDS packet holds {MAX_PACKET}",
                add.encoded_len()
            )));
        }
        Ok(())
    }
}

fn identity(file: &File) -> std::io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

fn add_request(uid: &str, entry: &Entry) -> Result<Request, PodError> {
    let netns = entry
        .netns
        .try_clone()
        .map_err(|source| PodError::Descriptor {
            uid: uid.to_string(),
            source,
        })?;
    Ok(Request::Add {
        uid: uid.to_string(),
        pod: entry.pod.clone(),
        netns: OwnedFd::from(netns),
    })
}

impl Pods {
    /// An empty table whose pods get `rules`; a ztunnel that does not acknowledge a request
    /// within `ack_timeout` is dropped (and told everything again when it reconnects).
    pub fn new(rules: Arc<dyn Redirection>, ack_timeout: Duration) -> Pods {
        Pods {
            inner: Arc::new(Mutex::new(Inner {
                table: BTreeMap::new(),
                ztunnel: Ztunnel::new(ack_timeout),
                stopping: false,
            })),
            rules,
        }
    }

    /// Captures a pod: opens its namespace, installs the rules, then tells the connected
    /// ztunnel, if any, and waits for its ack. Adding a pod again re-installs its rules and
    /// tells ztunnel again; with another namespace than before (a recreated sandbox), the old
    /// one's rules are removed.
    ///
    /// With no ztunnel connected, or when its connection breaks, the pod is still captured:
    /// the next ztunnel gets it in its snapshot. A refusal from ztunnel is
    /// [`PodError::Refused`] and leaves the pod captured.
    ///
    /// The work runs on its own task, so a caller that goes away mid-way (a client hanging
    /// up, the process stopping) never leaves rules installed that the table does not know.
    pub async fn add(&self, spec: PodSpec) -> Result<(), PodError> {
        let this = self.clone();
        let uid = spec.uid.clone();
        tokio::spawn(async move { this.add_now(spec).await })
            .await
            .map_err(|e| PodError::Lost {
                uid,
                reason: e.to_string(),
            })?
    }

    async fn add_now(&self, spec: PodSpec) -> Result<(), PodError> {
        spec.validate()?;
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        if inner.stopping {
            return Err(PodError::Stopping);
        }
        let PodSpec { uid, pod, netns } = spec;
        let rules = self.rules.clone();
        let path = netns.clone();
        let file = blocking(&uid, move || {
            let fd = open_netns(&path)?;
            rules.install(fd.as_fd())?;
            Ok::<_, RulesError>(File::from(fd))
        })
        .await??;
        let identity = identity(&file).map_err(|source| PodError::Descriptor {
            uid: uid.clone(),
            source,
        })?;
        let entry = Entry {
            pod,
            netns_path: netns,
            netns: file,
            identity,
        };
        if let Some(old) = inner.table.insert(uid.clone(), entry)
            && old.identity != identity
        {
            let rules = self.rules.clone();
            let released = blocking(&uid, move || rules.remove(old.netns.as_fd())).await?;
            if let Err(err) = released {
                tracing::warn!(%uid, netns = %old.netns_path.display(), %err, "pod added again in a new namespace; the old one's rules could not be removed");
            }
        }
        let Some(entry) = inner.table.get(&uid) else {
            return Err(PodError::Lost {
                uid,
                reason: "left the table while being added".into(),
            });
        };
        tracing::info!(%uid, pod = %format!("{}/{}", entry.pod.namespace, entry.pod.name), netns = %entry.netns_path.display(), "pod captured");
        let request = add_request(&uid, entry)?;
        match inner.ztunnel.deliver(&request).await {
            Delivery::Acked | Delivery::Nobody => Ok(()),
            Delivery::Refused(reason) => {
                tracing::warn!(%uid, %reason, "ztunnel refused the pod; its rules stay until it is deleted");
                Err(PodError::Refused { uid, reason })
            }
        }
    }

    /// Releases a pod: tells the connected ztunnel, then removes the rules. `Ok(false)` when
    /// the pod was not captured (a delete is idempotent, as CNI's DEL must be). When the rules
    /// cannot be removed the pod stays in the table, so that a retry, or the agent's stop,
    /// tries again. A refusal from ztunnel is logged; the pod is released all the same.
    pub async fn remove(&self, uid: &str) -> Result<bool, PodError> {
        let this = self.clone();
        let owned = uid.to_string();
        tokio::spawn(async move { this.remove_now(&owned).await })
            .await
            .map_err(|e| PodError::Lost {
                uid: uid.to_string(),
                reason: e.to_string(),
            })?
    }

    async fn remove_now(&self, uid: &str) -> Result<bool, PodError> {
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        if !inner.table.contains_key(uid) {
            return Ok(false);
        }
        let request = Request::Del {
            uid: uid.to_string(),
        };
        if let Delivery::Refused(reason) = inner.ztunnel.deliver(&request).await {
            tracing::warn!(%uid, %reason, "ztunnel refused to delete the pod; releasing it all the same");
        }
        let Some(entry) = inner.table.remove(uid) else {
            return Ok(false);
        };
        let rules = self.rules.clone();
        let (entry, removed) = blocking(uid, move || {
            let removed = rules.remove(entry.netns.as_fd());
            (entry, removed)
        })
        .await?;
        if let Err(err) = removed {
            tracing::warn!(%uid, netns = %entry.netns_path.display(), %err, "the pod's rules could not be removed; it stays captured");
            inner.table.insert(uid.to_string(), entry);
            return Err(err.into());
        }
        tracing::info!(%uid, pod = %format!("{}/{}", entry.pod.namespace, entry.pod.name), "pod released");
        Ok(true)
    }

    /// Every captured pod, in uid order.
    pub async fn list(&self) -> Vec<CapturedPod> {
        let inner = self.inner.lock().await;
        inner
            .table
            .iter()
            .map(|(uid, entry)| CapturedPod {
                uid: uid.clone(),
                pod: entry.pod.clone(),
                netns: entry.netns_path.clone(),
            })
            .collect()
    }

    /// Releases every pod (ztunnel told, rules removed), so that a stopped agent leaves no
    /// rules behind, and refuses later adds. Answers the pods whose rules could not be
    /// removed, with why; they are forgotten all the same.
    pub async fn remove_all(&self) -> Vec<(String, PodError)> {
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        inner.stopping = true;
        let mut failed = Vec::new();
        for (uid, entry) in std::mem::take(&mut inner.table) {
            let request = Request::Del { uid: uid.clone() };
            if let Delivery::Refused(reason) = inner.ztunnel.deliver(&request).await {
                tracing::warn!(%uid, %reason, "ztunnel refused to delete the pod; releasing it all the same");
            }
            let rules = self.rules.clone();
            match blocking(&uid, move || rules.remove(entry.netns.as_fd())).await {
                Ok(Ok(())) => tracing::info!(%uid, "pod released"),
                Ok(Err(err)) => failed.push((uid, err.into())),
                Err(err) => failed.push((uid, err)),
            }
        }
        failed
    }

    /// Makes `conn` the ztunnel connection: replays every pod as an `Add`, in uid order, then
    /// `SnapshotSent`. The connection it replaces is dropped.
    pub(crate) async fn attach_ztunnel(&self, id: u64, conn: ZdsServerConn) {
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        if inner.stopping {
            tracing::info!(
                conn = id,
                "ztunnel connected while the agent stops; closing it"
            );
            return;
        }
        let mut snapshot = Vec::with_capacity(inner.table.len() + 1);
        for (uid, entry) in &inner.table {
            match add_request(uid, entry) {
                Ok(request) => snapshot.push(request),
                Err(err) => {
                    // Out of descriptors: a partial snapshot would make ztunnel drop the pod.
                    tracing::warn!(conn = id, %err, "cannot build the snapshot; closing the ztunnel connection");
                    return;
                }
            }
        }
        snapshot.push(Request::SnapshotSent);
        inner.ztunnel.replace(id, conn, snapshot).await;
    }
}
