//! In-pod capture: the node agent hands this ztunnel each pod it captures, with the pod's
//! network namespace, over ZDS (wire facts §2.4). For each, the ztunnel opens its outbound
//! (15001), inbound plaintext (15006) and HBONE (15008) listeners *inside* the pod's namespace,
//! where the pod's redirection rules send its traffic, and serves them from this one process.
//! Connections it makes for the pod are made from inside the pod too (the network seam's
//! `connect_from_pod`).
//!
//! The agent replays its pods whenever the ztunnel connects, so a restarted ztunnel gets every
//! pod back; pods missing from a replay are dropped at `SnapshotSent`. Losing the agent leaves
//! the pods served; the ztunnel reconnects and is replayed to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Inner, spawn_traffic_listeners};
use crate::zds::{PodInfo, Request, ZdsClient, ZdsError};

/// First wait before reconnecting to the node agent; doubled up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// The listeners serving one pod, closed when dropped — and with them every connection
/// they accepted (upstream drains a removed pod's connections; ours end at once).
struct PodListeners {
    /// Which namespace they are in (device, inode): an `Add` for the same one is a no-op.
    netns: (u64, u64),
    name: String,
    tasks: Vec<JoinHandle<()>>,
    /// Dropped with the pod: its connections see the channel close and end.
    _gone: watch::Sender<bool>,
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Talks to the node agent at `socket` for as long as the ztunnel runs.
pub(super) async fn run(inner: Arc<Inner>, socket: PathBuf) {
    let mut pods: BTreeMap<String, PodListeners> = BTreeMap::new();
    let mut wait = RECONNECT_MIN;
    let mut told = false;
    loop {
        match ZdsClient::connect(&socket).await {
            Ok(client) => {
                tracing::info!(socket = %socket.display(), "connected to the node agent");
                wait = RECONNECT_MIN;
                told = false;
                let err = serve(&inner, &client, &mut pods).await;
                tracing::warn!(%err, pods = pods.len(), "lost the node agent; its pods stay served, reconnecting");
            }
            Err(err) if !told => {
                told = true;
                tracing::warn!(socket = %socket.display(), %err, "cannot reach the node agent; retrying");
            }
            Err(err) => tracing::debug!(%err, "node agent still unreachable"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// Carries out the agent's requests until the connection fails.
async fn serve(
    inner: &Arc<Inner>,
    client: &ZdsClient,
    pods: &mut BTreeMap<String, PodListeners>,
) -> ZdsError {
    // The uids of this connection's replay, until `SnapshotSent` ends it.
    let mut replayed = Some(BTreeSet::new());
    loop {
        let request = match client.next().await {
            Ok(request) => request,
            Err(err) => return err,
        };
        let outcome = match request {
            Request::Add { uid, pod, netns } => {
                if let Some(seen) = replayed.as_mut() {
                    seen.insert(uid.clone());
                }
                add(inner, pods, uid, &pod, netns).await
            }
            Request::Keep { uid } => match replayed.as_mut() {
                Some(seen) if pods.contains_key(&uid) => {
                    seen.insert(uid);
                    Ok(())
                }
                Some(_) => Err(format!(
                    "keep for pod {uid}, which this ztunnel does not have"
                )),
                None => Err(format!("keep for pod {uid} after the snapshot")),
            },
            Request::Del { uid } => {
                remove(inner, pods, &uid);
                Ok(())
            }
            Request::SnapshotSent => {
                if let Some(seen) = replayed.take() {
                    let stale: Vec<String> = pods
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in stale {
                        remove(inner, pods, &uid);
                    }
                }
                inner.pods_synced.store(true, Ordering::Release);
                tracing::info!(pods = pods.len(), "pod snapshot served");
                Ok(())
            }
        };
        if let Err(why) = &outcome {
            tracing::warn!(%why, "node agent request refused");
        }
        if let Err(err) = client.ack(outcome).await {
            return err;
        }
    }
}

fn namespace_id(netns: OwnedFd) -> Result<((u64, u64), OwnedFd), String> {
    let file = std::fs::File::from(netns);
    let meta = file
        .metadata()
        .map_err(|e| format!("the namespace descriptor: {e}"))?;
    Ok(((meta.dev(), meta.ino()), OwnedFd::from(file)))
}

async fn add(
    inner: &Arc<Inner>,
    pods: &mut BTreeMap<String, PodListeners>,
    uid: String,
    pod: &PodInfo,
    netns: OwnedFd,
) -> Result<(), String> {
    let name = format!("{}/{}", pod.namespace, pod.name);
    let (id, netns) = namespace_id(netns)?;
    if pods.get(&uid).is_some_and(|p| p.netns == id) {
        tracing::debug!(pod = %name, %uid, "already served in that namespace");
        return Ok(());
    }
    remove(inner, pods, &uid);
    let network = &inner.seams.network;
    let addresses = network
        .adopt_pod(&uid, netns)
        .map_err(|e| format!("cannot enter pod {name}'s network namespace: {e}"))?;
    let ports = inner.config.ports;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let bind = |port| network.bind_in_pod(&uid, SocketAddr::new(any, port));
    let bound = async {
        Ok::<_, std::io::Error>((
            bind(ports.outbound).await?,
            bind(ports.inbound_plaintext).await?,
            bind(ports.inbound).await?,
        ))
    }
    .await;
    let (outbound, plaintext, hbone) = match bound {
        Ok(listeners) => listeners,
        Err(e) => {
            network.release_pod(&uid);
            return Err(format!("cannot listen inside pod {name}: {e}"));
        }
    };
    let (gone, pod_gone) = watch::channel(false);
    let tasks = spawn_traffic_listeners(inner, outbound, plaintext, hbone, Some(pod_gone));
    tracing::info!(pod = %name, %uid, ?addresses, "serving the pod inside its network namespace");
    pods.insert(
        uid,
        PodListeners {
            netns: id,
            name,
            tasks,
            _gone: gone,
        },
    );
    Ok(())
}

fn remove(inner: &Inner, pods: &mut BTreeMap<String, PodListeners>, uid: &str) {
    if let Some(pod) = pods.remove(uid) {
        tracing::info!(pod = %pod.name, %uid, "no longer serving the pod");
    }
    inner.seams.network.release_pod(uid);
}
