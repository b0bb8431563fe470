//! The scenario's traffic, made as the simulator's driver makes it (`sim/src/world/dispatch.rs`
//! and `clients.rs`) but on real sockets: request `n` of a traffic starts at `start + n·every`
//! (wall clock from when the cluster was ready) while that is before `start + duration`, from
//! the `n`-th running pod of the source (name order, pods on crashed nodes left out), to the
//! first VIP of a Service or the `n`-th pod of a pod/deployment destination. Each is a plain
//! `connect` from inside the source pod's namespace, nothing else: capture, kube-proxy and the
//! mesh are the kernel's and the processes' business. `connection: persistent` keeps one
//! connection per (traffic, source pod), reconnecting after a failure, as the simulator does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use sim::RequestRecord;
use sim::apps::{Exchanged, Job};
use sim::scenario::{ConnectionMode, Outcome, Scenario, Target};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::cluster::{Cluster, close};
use crate::placement::PodInfo;

/// Every request made, in the order they finished.
pub type Records = Rc<RefCell<Vec<RequestRecord>>>;

/// Makes every request of `scenario`'s traffic against `cluster` and returns when all have
/// finished. Must run on the runtime's `LocalSet`.
pub async fn drive(cluster: Rc<Cluster>, scenario: Rc<Scenario>) -> Vec<RequestRecord> {
    let records: Records = Rc::default();
    let mut streams = tokio::task::JoinSet::new();
    for index in 0..scenario.traffic.len() {
        let (cluster, scenario, records) = (cluster.clone(), scenario.clone(), records.clone());
        streams.spawn_local(stream(cluster, scenario, index, records));
    }
    while streams.join_next().await.is_some() {}
    let mut all = records.borrow().clone();
    all.sort_by_key(|r| (r.started, r.traffic, r.request));
    all
}

/// One traffic's requests, each started on time.
async fn stream(cluster: Rc<Cluster>, scenario: Rc<Scenario>, index: usize, records: Records) {
    let traffic = &scenario.traffic[index];
    let mut requests = tokio::task::JoinSet::new();
    let mut workers: BTreeMap<IpAddr, mpsc::UnboundedSender<(Job, PodInfo)>> = BTreeMap::new();
    let end = traffic.start.0 + traffic.duration.0;
    for n in 0u64.. {
        let at = traffic.start.0 + traffic.every.0 * u32::try_from(n).unwrap_or(u32::MAX);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(cluster.clock().instant(at).into()).await;
        let Some((job, source)) = job(&cluster, &scenario, index, n, &records) else {
            continue;
        };
        if traffic.connection == ConnectionMode::Persistent {
            let sender = workers.entry(source.ip).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                requests.spawn_local(persistent(cluster.clone(), rx, records.clone()));
                tx
            });
            let _ = sender.send((job, source));
        } else {
            let (cluster, records) = (cluster.clone(), records.clone());
            requests.spawn_local(async move {
                let from = format!("{}/{}", source.namespace, source.name);
                let record = cluster.send(&job, &from, &source.node).await;
                records.borrow_mut().push(record);
            });
        }
    }
    // The traffic is over: persistent connections close once their queue is done.
    drop(workers);
    while requests.join_next().await.is_some() {}
}

/// The `n`-th of `list`, taken in turn.
fn pick<T>(list: &[T], n: u64) -> Option<&T> {
    if list.is_empty() {
        return None;
    }
    list.get(usize::try_from(n % list.len() as u64).unwrap_or(0))
}

/// Request `n` of traffic `index`: its source pod and how it is made, or `None` if it is not
/// made (no running source pod; or no destination pod, recorded as refused at once, as the
/// simulator does).
fn job(
    cluster: &Cluster,
    scenario: &Scenario,
    index: usize,
    n: u64,
    records: &Records,
) -> Option<(Job, PodInfo)> {
    let traffic = &scenario.traffic[index];
    let placement = cluster.placement();
    let conn = format!("{}#{n}", traffic.name);
    let sources: Vec<&PodInfo> = placement
        .pods_of(&traffic.from.0)
        .into_iter()
        .filter(|p| !cluster.is_down(&p.node))
        .collect();
    let source = (*pick(&sources, n)?).clone();
    let port = traffic.to.port;
    let (destination, authority) = match &traffic.to.target {
        Target::Service(ns, name) => {
            let vip = placement.service(ns, name)?.vips.first().copied()?;
            (
                SocketAddr::new(vip, port),
                format!("{name}.{ns}.svc.cluster.local"),
            )
        }
        target => {
            let pods = placement.pods_of(target);
            let Some(pod) = pick(&pods, n) else {
                let now = cluster.clock().now();
                records.borrow_mut().push(RequestRecord {
                    traffic: index,
                    request: n,
                    conn,
                    source_node: source.node.clone(),
                    started: now,
                    finished: now,
                    outcome: Outcome::Refused,
                    backend: None,
                    response: None,
                });
                return None;
            };
            (SocketAddr::new(pod.ip, port), pod.ip.to_string())
        }
    };
    let job = Job {
        traffic: index,
        request: n,
        conn,
        source: source.ip,
        destination,
        // The kernel decides; the simulator's field for where its network delivers it.
        via: destination,
        protocol: traffic.protocol,
        timeout: traffic.timeout.0,
        persistent: traffic.connection == ConnectionMode::Persistent,
        authority,
        http: traffic.http.clone(),
        record: traffic.record,
    };
    Some((job, source))
}

/// Requests from one pod of one persistent traffic, on one connection while it lasts
/// (`sim/src/world/clients.rs` `persistent_worker`).
async fn persistent(
    cluster: Rc<Cluster>,
    mut jobs: mpsc::UnboundedReceiver<(Job, PodInfo)>,
    records: Records,
) {
    let mut conn: Option<TcpStream> = None;
    while let Some((job, source)) = jobs.recv().await {
        let from = format!("{}/{}", source.namespace, source.name);
        let started = cluster.clock().now();
        let attempt = async {
            if conn.is_none() {
                conn = cluster.connect(&from, job.destination).await.ok();
            }
            let c = conn.as_mut()?;
            let answer = sim::apps::exchange(c, &job).await;
            if !answer.reusable {
                conn = None;
            }
            Some(answer)
        };
        let answer = match tokio::time::timeout(job.timeout, attempt).await {
            Ok(Some(answer)) => answer,
            Ok(None) => failed(Outcome::Refused),
            Err(_) => {
                conn = None;
                failed(Outcome::Timeout)
            }
        };
        if answer.outcome != Outcome::Succeed
            && let Some(c) = conn.as_mut()
        {
            close(c).await;
            conn = None;
        }
        let record = cluster.record(&job, &source.node, started, answer);
        records.borrow_mut().push(record);
    }
    if let Some(mut c) = conn {
        close(&mut c).await;
    }
}

fn failed(outcome: Outcome) -> Exchanged {
    Exchanged {
        outcome,
        reusable: false,
        backend: None,
        response: None,
    }
}

/// How long after the last request the runner still listens for late deliveries before
/// judging (a denied request that reached an app late still counts).
pub const DRAIN: Duration = Duration::from_millis(500);
