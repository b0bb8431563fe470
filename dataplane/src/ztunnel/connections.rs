//! Open inbound connections and the authorization context they were admitted with, so that a
//! policy change can re-check them and close the ones it now denies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::policy::{ConnectionContext, evaluate};
use crate::state::State;

struct Tracked {
    context: ConnectionContext,
    workload_uid: String,
    close: watch::Sender<Option<String>>,
}

/// The registry of open inbound connections.
#[derive(Default)]
pub struct ConnectionTracker {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Tracked>>,
}

/// A registered connection; dropping it unregisters. `closed` carries the reason when a
/// policy change denies the connection.
pub struct TrackedConnection {
    id: u64,
    tracker: Arc<ConnectionTracker>,
    pub closed: watch::Receiver<Option<String>>,
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.tracker.lock().remove(&self.id);
    }
}

impl ConnectionTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Tracked>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(
        self: &Arc<Self>,
        context: ConnectionContext,
        workload_uid: String,
    ) -> TrackedConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(None);
        self.lock().insert(
            id,
            Tracked {
                context,
                workload_uid,
                close,
            },
        );
        TrackedConnection {
            id,
            tracker: self.clone(),
            closed,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Re-evaluates every open connection against `state`; closes those now denied.
    /// Returns how many were closed.
    pub fn recheck(&self, state: &State) -> usize {
        let mut closed = 0;
        for (id, tracked) in self.lock().iter() {
            let reason = match state.workload(&tracked.workload_uid) {
                None => Some("destination workload removed".to_string()),
                Some(workload) => {
                    let policies = state.policies_for(&workload);
                    let decision = evaluate(&tracked.context, policies.iter().map(|p| &**p));
                    (!decision.allowed()).then(|| decision.to_string())
                }
            };
            if let Some(reason) = reason
                && tracked.close.borrow().is_none()
            {
                tracing::info!(connection = id, src = %tracked.context.source_ip, %reason, "policy change closes open connection");
                tracked.close.send_replace(Some(reason));
                closed += 1;
            }
        }
        closed
    }
}

/// Resolves with the reason once a tracked connection is closed by a policy change.
pub(crate) async fn policy_closed(closed: &mut watch::Receiver<Option<String>>) -> String {
    let reason = match closed.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}
