//! From the store to ztunnels: every change to the store marks it dirty; after the debounce
//! interval of quiet (but never more than ten intervals after the first change of a burst)
//! the store is translated once and the snapshot published.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::Istiod;
use crate::store::Store;
use crate::translate;

/// The store istiod translates from, shared with whatever feeds it (files, watchers, the
/// simulator), and the signal that it changed.
#[derive(Clone)]
pub struct SharedStore {
    store: Arc<Mutex<Store>>,
    changes: watch::Sender<u64>,
}

impl SharedStore {
    pub fn new(store: Store) -> Self {
        SharedStore {
            store: Arc::new(Mutex::new(store)),
            changes: watch::Sender::new(0),
        }
    }

    /// Changes the store; istiod pushes the result after the debounce.
    pub fn update<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let result = f(&mut self.store.lock().unwrap_or_else(PoisonError::into_inner));
        self.mark_changed();
        result
    }

    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// For feeders that hold the store themselves (the `kube` watchers): call after a change.
    pub fn mark_changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The store itself, for feeders that take it directly.
    pub fn inner(&self) -> Arc<Mutex<Store>> {
        self.store.clone()
    }
}

impl Istiod {
    /// Publishes `store` now and after every burst of changes to it.
    pub fn follow(&self, store: SharedStore) {
        let debounce = self.config.debounce.max(MIN_DEBOUNCE);
        let mesh = self.config.mesh.clone();
        let publisher = self.publisher();
        let mut changes = store.changes.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                let snapshot = store.read(|s| translate::snapshot(s, &mesh));
                let took = started.elapsed();
                let generation = publisher.publish(snapshot);
                tracing::debug!(generation, ?took, "store translated and published");
                if changes.changed().await.is_err() {
                    return;
                }
                // Collect the rest of the burst.
                let deadline = tokio::time::Instant::now() + debounce * 10;
                loop {
                    let quiet = tokio::time::sleep(debounce);
                    tokio::select! {
                        biased;
                        () = quiet => break,
                        changed = changes.changed() => {
                            if changed.is_err() || tokio::time::Instant::now() >= deadline {
                                break;
                            }
                        }
                    }
                }
                changes.borrow_and_update();
            }
        });
        self.keep(task);
    }
}

/// A debounce of zero would spin on a burst; this is the smallest honoured.
const MIN_DEBOUNCE: Duration = Duration::from_millis(1);
