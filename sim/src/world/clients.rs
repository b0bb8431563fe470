//! A node's pods' clients: they take the requests the driver queues for the node, make them
//! (each on its own connection, or on one kept per source pod) and report what they saw.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use super::shared::{Finished, Inboxed};
use super::{RequestRecord, Shared};
use crate::apps::{self, Conn, HttpResponse, Job};
use crate::scenario::Outcome;

/// The node's pods' clients: takes requests from the node's inbox and makes them.
pub(super) async fn clients(node: String, shared: Rc<Shared>) {
    let notify = shared.inboxes[&node].notify.clone();
    // Persistent connections by (traffic, source pod): a worker each.
    let mut workers: BTreeMap<(usize, IpAddr), tokio::sync::mpsc::UnboundedSender<Option<Job>>> =
        BTreeMap::new();
    loop {
        let next = shared.inboxes[&node].jobs.borrow_mut().pop_front();
        let Some(item) = next else {
            notify.notified().await;
            continue;
        };
        match item {
            Inboxed::Request(job) if job.persistent => {
                let key = (job.traffic, job.source);
                let sender = workers.entry(key).or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let task = shared.tasks.pod_task(&node);
                    let worker = persistent_worker(shared.clone(), node.clone(), rx);
                    tokio::task::spawn_local(async move {
                        worker.await;
                        drop(task);
                    });
                    tx
                });
                let _ = sender.send(Some(*job));
            }
            Inboxed::Request(job) => {
                let task = shared.tasks.pod_task(&node);
                let request = one_request(shared.clone(), node.clone(), *job);
                tokio::task::spawn_local(async move {
                    request.await;
                    drop(task);
                });
            }
            Inboxed::Close(traffic) => {
                let keys: Vec<_> = workers.keys().filter(|k| k.0 == traffic).copied().collect();
                for key in keys {
                    if let Some(tx) = workers.remove(&key) {
                        let _ = tx.send(None);
                    }
                }
            }
        }
    }
}

fn report(
    shared: &Shared,
    node: &str,
    job: &Job,
    started: Duration,
    (outcome, backend, response): (Outcome, Option<String>, Option<HttpResponse>),
) {
    let finished = turmoil::sim_elapsed().unwrap_or_default();
    shared.finished.borrow_mut().push(Finished {
        record: RequestRecord {
            traffic: job.traffic,
            request: job.request,
            conn: job.conn.clone(),
            source_node: node.to_string(),
            started,
            finished,
            outcome,
            backend,
            response,
        },
    });
}

/// A request on its own connection, closed afterwards.
async fn one_request(shared: Rc<Shared>, node: String, job: Job) {
    let started = turmoil::sim_elapsed().unwrap_or_default();
    let attempt = async {
        let mut conn = apps::connect(&shared.network, &job).await.ok()?;
        let answer = apps::exchange(&mut conn, &job).await;
        close(&mut conn).await;
        Some((answer.outcome, answer.backend, answer.response))
    };
    let outcome = match tokio::time::timeout(job.timeout, attempt).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => (Outcome::Refused, None, None),
        Err(_) => (Outcome::Timeout, None, None),
    };
    report(&shared, &node, &job, started, outcome);
}

/// Half-closes and waits (briefly) for the peer's close, so connections end cleanly.
async fn close(conn: &mut Conn) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = conn.shutdown().await;
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Requests from one pod of one persistent traffic, on one connection while it lasts.
async fn persistent_worker(
    shared: Rc<Shared>,
    node: String,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Option<Job>>,
) {
    let mut conn: Option<Conn> = None;
    while let Some(Some(job)) = jobs.recv().await {
        let started = turmoil::sim_elapsed().unwrap_or_default();
        let attempt = async {
            if conn.is_none() {
                conn = apps::connect(&shared.network, &job).await.ok();
            }
            let c = conn.as_mut()?;
            let answer = apps::exchange(c, &job).await;
            if !answer.reusable {
                conn = None;
            }
            Some((answer.outcome, answer.backend, answer.response))
        };
        let outcome = match tokio::time::timeout(job.timeout, attempt).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => (Outcome::Refused, None, None),
            Err(_) => {
                conn = None;
                (Outcome::Timeout, None, None)
            }
        };
        if outcome.0 != Outcome::Succeed
            && let Some(c) = conn.as_mut()
        {
            close(c).await;
            conn = None;
        }
        report(&shared, &node, &job, started, outcome);
    }
    if let Some(mut c) = conn {
        close(&mut c).await;
    }
}
