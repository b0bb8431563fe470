//! The agent's side of ZDS: accepts ztunnel connections on the ZDS socket, gives each the
//! snapshot of captured pods, and sends it every later change.
//!
//! Only one ztunnel serves a node's pods at a time, so the newest connection replaces the one
//! before it (a restarted ztunnel). A connection that breaks, or does not acknowledge a request
//! in time, is logged and forgotten; its pods stay captured, so their traffic is refused while
//! no ztunnel serves them (as upstream's), until a ztunnel connects and is given them again.

use std::time::Duration;

use tokio::task::JoinSet;

use super::pods::Pods;
use crate::AcceptBackoff;
use crate::zds::{Request, ZdsListener, ZdsServerConn};

/// How long a new connection has to say hello before it is closed, so a silent client holds
/// nothing.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long ztunnel has to acknowledge a request before its connection is dropped. Every
/// change to the table waits for the ack, so a ztunnel that stopped reading must not hold
/// the CNI side for longer than this.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What came of telling ztunnel something.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Acked,
    /// ztunnel answered with an error.
    Refused(String),
    /// No ztunnel is connected (any more).
    Nobody,
}

#[derive(Debug)]
struct Connection {
    id: u64,
    conn: ZdsServerConn,
}

/// The pod a request is about, for logs.
fn subject(request: &Request) -> &str {
    match request {
        Request::Add { uid, .. } | Request::Keep { uid } | Request::Del { uid } => uid,
        Request::SnapshotSent => "(snapshot sent)",
    }
}

/// The ztunnel connection the agent currently serves, if any.
#[derive(Debug)]
pub(crate) struct Ztunnel {
    current: Option<Connection>,
    ack_timeout: Duration,
}

impl Ztunnel {
    pub(crate) fn new(ack_timeout: Duration) -> Ztunnel {
        Ztunnel {
            current: None,
            ack_timeout,
        }
    }

    /// Sends `request` on `conn` and waits for its ack; `None` when the connection is unusable.
    async fn send(
        id: u64,
        conn: &ZdsServerConn,
        request: &Request,
        ack_timeout: Duration,
    ) -> Option<Result<(), String>> {
        match tokio::time::timeout(ack_timeout, conn.request(request)).await {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(err)) => {
                tracing::warn!(conn = id, %err, "ztunnel connection lost; its pods stay captured until a ztunnel connects again");
                None
            }
            Err(_) => {
                tracing::warn!(conn = id, timeout = ?ack_timeout, "ztunnel did not acknowledge in time; dropping its connection");
                None
            }
        }
    }

    /// Tells the current ztunnel, if any; a connection that fails is forgotten.
    pub(crate) async fn deliver(&mut self, request: &Request) -> Delivery {
        let Some(current) = &self.current else {
            return Delivery::Nobody;
        };
        match Ztunnel::send(current.id, &current.conn, request, self.ack_timeout).await {
            Some(Ok(())) => Delivery::Acked,
            Some(Err(reason)) => Delivery::Refused(reason),
            None => {
                self.current = None;
                Delivery::Nobody
            }
        }
    }

    /// Makes `conn` (accepted as the `id`th) the current connection once `snapshot` is
    /// delivered on it. An older connection is dropped; one accepted after `conn` that is
    /// already current keeps its place.
    pub(crate) async fn replace(&mut self, id: u64, conn: ZdsServerConn, snapshot: Vec<Request>) {
        if let Some(current) = &self.current {
            if current.id > id {
                tracing::info!(
                    conn = id,
                    current = current.id,
                    "a newer ztunnel connection is already served; closing this one"
                );
                return;
            }
            tracing::info!(
                conn = id,
                replaced = current.id,
                "a new ztunnel connection replaces the previous one"
            );
        }
        self.current = None;
        let pods = snapshot.len().saturating_sub(1);
        for request in &snapshot {
            match Ztunnel::send(id, &conn, request, self.ack_timeout).await {
                Some(Ok(())) => {}
                Some(Err(reason)) => {
                    tracing::warn!(conn = id, uid = subject(request), %reason, "ztunnel refused a pod of the snapshot");
                }
                None => return,
            }
        }
        tracing::info!(conn = id, pods, "ztunnel connected and given the snapshot");
        self.current = Some(Connection { id, conn });
    }
}

/// Accepts ztunnel connections on `listener` for as long as the returned future is polled:
/// each says hello (within [`HELLO_TIMEOUT`]) and is then attached to `pods`. Dropping the
/// future stops accepting and drops connections still saying hello.
pub async fn serve(listener: ZdsListener, pods: Pods) {
    let mut backoff = AcceptBackoff::default();
    let mut next_id: u64 = 0;
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(socket) => {
                    backoff.succeeded();
                    next_id += 1;
                    let id = next_id;
                    let pods = pods.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HELLO_TIMEOUT, ZdsServerConn::handshake(socket)).await {
                            Ok(Ok(conn)) => pods.attach_ztunnel(id, conn).await,
                            Ok(Err(err)) => tracing::warn!(conn = id, %err, "ztunnel connection closed before a valid hello"),
                            Err(_) => tracing::warn!(conn = id, timeout = ?HELLO_TIMEOUT, "no hello from the ztunnel connection in time; closing it"),
                        }
                    });
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(%err, ?wait, "accepting a ztunnel connection failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            },
            Some(_) = handshakes.join_next() => {}
        }
    }
}
