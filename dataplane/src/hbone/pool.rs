//! The client connection pool: streams with the same key share HTTP/2 connections, up to the
//! stream limit; connections unused for a while are released. One connection per key is
//! opened at a time, so a burst of new streams shares it rather than racing to open many; a
//! connection whose peer sent GOAWAY is left to finish while new streams move on.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::time::Instant;

use super::client::{ConnectHeaders, Connection, HboneError, connect_stream};
use super::stream::H2Stream;
use super::{CLIENT_MAX_STREAMS, POOL_IDLE_TIMEOUT};
use crate::identity::Identity;

/// What makes two streams interchangeable on one connection: who speaks, whom it expects,
/// where, and from which address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub source_identity: Identity,
    pub expected_identities: Vec<Identity>,
    pub destination: SocketAddr,
    pub source_ip: Option<IpAddr>,
}

struct Usage {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

struct Entry {
    connection: Connection,
    usage: Arc<Usage>,
}

/// Shared HBONE connections.
#[derive(Clone, Default)]
pub struct Pool {
    entries: Arc<Mutex<BTreeMap<PoolKey, Vec<Entry>>>>,
    /// Held while a connection for the key is being opened.
    opening: Arc<Mutex<BTreeMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A connection checked out for one stream; dropping it returns the slot.
pub struct Lease {
    connection: Connection,
    usage: Arc<Usage>,
}

impl Deref for Lease {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.usage.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .usage
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

fn lease(entry: &Entry) -> Lease {
    entry.usage.active.fetch_add(1, Ordering::AcqRel);
    Lease {
        connection: entry.connection.clone(),
        usage: entry.usage.clone(),
    }
}

impl Pool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream to `authority` on a connection for `key`, opening a connection with `open`
    /// when none has a free slot. A peer that turns the stream away unprocessed (GOAWAY,
    /// REFUSED_STREAM) gets it sent once more, on another connection. `first_flight` goes
    /// right behind the CONNECT ([`connect_stream`]), on the retry too.
    pub async fn open_stream<F, Fut>(
        &self,
        key: &PoolKey,
        open: F,
        authority: &str,
        headers: &ConnectHeaders,
        first_flight: &Bytes,
    ) -> Result<(H2Stream, Lease), HboneError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let lease = self.checkout(key, &open).await?;
        match connect_stream(&lease, authority, headers, first_flight).await {
            Ok(stream) => Ok((stream, lease)),
            Err(err) if err.unprocessed() => {
                tracing::debug!(%err, "peer turned the stream away; retrying on another connection");
                drop(lease);
                let lease = self.checkout(key, &open).await?;
                let stream = connect_stream(&lease, authority, headers, first_flight).await?;
                Ok((stream, lease))
            }
            Err(err) => Err(err),
        }
    }

    /// A connection for `key` with a free stream slot, opening one with `open` when none has.
    async fn checkout<F, Fut>(&self, key: &PoolKey, open: &F) -> Result<Lease, HboneError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        if let Some(lease) = self.free(key) {
            return Ok(lease);
        }
        let gate = self.lock_opening().entry(key.clone()).or_default().clone();
        let _opening = gate.lock().await;
        // Whoever held the gate before may have opened one with room for us.
        if let Some(lease) = self.free(key) {
            return Ok(lease);
        }
        let connection = open().await?;
        let entry = Entry {
            connection,
            usage: Arc::new(Usage {
                active: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
            }),
        };
        let leased = lease(&entry);
        self.lock().entry(key.clone()).or_default().push(entry);
        Ok(leased)
    }

    /// A lease on a live connection for `key` with a free stream slot.
    fn free(&self, key: &PoolKey) -> Option<Lease> {
        let mut entries = self.lock();
        let list = entries.get_mut(key)?;
        list.retain(|e| !e.connection.is_closed());
        list.iter()
            .find(|e| {
                let limit = e.connection.max_streams().clamp(1, CLIENT_MAX_STREAMS);
                e.usage.active.load(Ordering::Acquire) < limit
            })
            .map(lease)
    }

    /// Releases connections that are closed, or idle longer than the idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut entries = self.lock();
        for list in entries.values_mut() {
            list.retain(|e| {
                if e.connection.is_closed() {
                    return false;
                }
                if e.usage.active.load(Ordering::Acquire) > 0 {
                    return true;
                }
                let idle_since = *e
                    .usage
                    .idle_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                now.duration_since(idle_since) < POOL_IDLE_TIMEOUT
            });
        }
        entries.retain(|_, list| !list.is_empty());
        drop(entries);
        // Gates nobody holds or waits on.
        self.lock_opening()
            .retain(|_, gate| Arc::strong_count(gate) > 1);
    }

    /// Open connections, for the admin API and tests.
    pub fn connection_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Drops every pooled connection (their streams finish; no new ones are started on them).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PoolKey, Vec<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_opening(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<PoolKey, Arc<tokio::sync::Mutex<()>>>> {
        self.opening.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
