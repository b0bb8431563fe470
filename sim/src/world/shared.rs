//! The state the driver and every host share (all on the driver's thread): the seams, the
//! store, the pod table, and the queues through which nodes get requests to make and report
//! what clients saw and applications received.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use control::istiod::{Istiod, SharedStore};
use dataplane::seams::{ManualClock, SimNetwork};
use dataplane::waypoint::Waypoint;
use dataplane::ztunnel::Ztunnel;
use tokio::sync::Notify;

use super::RequestRecord;
use crate::apps::{AppKind, Job};
use crate::tasks::TaskLedger;
use crate::trace::Trace;

/// A pod as the world knows it: where it runs and what it listens on.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: IpAddr,
    pub enrolled: bool,
    pub deployment: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Its service account: the identity (`spiffe://cluster.local/ns/<ns>/sa/<sa>`) its
    /// connections carry in the mesh, which the HTTP echo reports for its peers.
    pub service_account: String,
    /// Container port → named port and app.
    pub ports: BTreeMap<u16, (Option<String>, AppKind)>,
    /// For one of a waypoint's own pods: the waypoint Gateway's name and the pod's service
    /// account. Such a pod runs the production waypoint on a host of its own.
    pub waypoint: Option<(String, String)>,
}

/// What a request's client reports back to the driver.
pub(super) struct Finished {
    pub(super) record: RequestRecord,
}

/// What an application reports: it received a request marker.
pub(super) struct Received {
    pub(super) at: Duration,
    pub(super) node: String,
    pub(super) pod: SocketAddr,
    pub(super) peer: SocketAddr,
    pub(super) traffic: usize,
    pub(super) request: u64,
}

/// A node's inbox of requests to make, filled by the driver.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) jobs: RefCell<VecDeque<Inboxed>>,
    pub(super) notify: Arc<Notify>,
}

pub(super) enum Inboxed {
    Request(Box<Job>),
    /// The traffic is over: close its persistent connections.
    Close(usize),
}

/// State shared by the driver and every host closure (all on the driver's thread).
pub(crate) struct Shared {
    pub(crate) seed: u64,
    pub(crate) trace: Trace,
    pub(crate) network: SimNetwork,
    pub(super) clock: ManualClock,
    pub(super) root_pem: String,
    pub(super) key_pem: String,
    pub(super) settings: crate::scenario::Settings,
    pub(super) store: SharedStore,
    pub(super) tokens: BTreeMap<String, String>,
    pub(super) app_ports: BTreeSet<u16>,
    pub(crate) pods: RefCell<BTreeMap<IpAddr, PodInfo>>,
    pub(super) istiod: RefCell<Option<Rc<Istiod>>>,
    pub(super) rotations: RefCell<VecDeque<(Duration, Duration)>>,
    pub(super) ztunnels: RefCell<BTreeMap<String, Rc<Ztunnel>>>,
    /// Running waypoints by host name (`<namespace>/<pod>`).
    pub(super) waypoints: RefCell<BTreeMap<String, Rc<Waypoint>>>,
    pub(super) inboxes: BTreeMap<String, Inbox>,
    pub(super) finished: RefCell<Vec<Finished>>,
    pub(super) received: RefCell<Vec<Received>>,
    pub(super) app_connections: RefCell<BTreeMap<String, i64>>,
    pub(crate) tasks: Rc<TaskLedger>,
    /// Requests each flaky path has had, per pod.
    pub(crate) flaky: RefCell<BTreeMap<(IpAddr, String), u64>>,
    pub(super) panics: Rc<RefCell<Vec<String>>>,
}

impl Shared {
    /// The app for a connection to `ip:port` arriving on `node`, if a pod there listens.
    pub(crate) fn app_for(&self, node: &str, ip: IpAddr, port: u16) -> Option<AppKind> {
        let pods = self.pods.borrow();
        let pod = pods.get(&ip).filter(|p| p.node == node)?;
        pod.ports.get(&port).map(|(_, kind)| *kind)
    }

    pub(crate) fn app_connection_opened(&self, node: &str) {
        *self
            .app_connections
            .borrow_mut()
            .entry(node.to_string())
            .or_default() += 1;
    }

    pub(crate) fn app_connection_closed(&self, node: &str) {
        *self
            .app_connections
            .borrow_mut()
            .entry(node.to_string())
            .or_default() -= 1;
    }

    pub(crate) fn app_received(
        &self,
        node: &str,
        pod: SocketAddr,
        peer: SocketAddr,
        traffic: usize,
        request: u64,
    ) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.trace.record_conn(
            node,
            "app",
            &format!("t{traffic}#{request}"),
            format!("{pod} received request from {peer}"),
        );
        self.received.borrow_mut().push(Received {
            at,
            node: node.to_string(),
            pod,
            peer,
            traffic,
            request,
        });
    }
}
