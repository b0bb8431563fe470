//! The ztunnel: the node L4 proxy. [`run`] is what the binary and the simulator call.
//!
//! Listeners: outbound capture (15001), inbound plaintext (15006), inbound HBONE (15008),
//! SOCKS5 (15080, opt-in), readiness (15021), metrics (15020), admin (15000).

mod access_log;
mod admin;
mod certificates;
mod config;
mod connections;
mod control_plane;
mod inbound;
mod inbound_plaintext;
mod inpod;
mod metrics;
mod outbound;
pub(crate) mod route;
mod socks5;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::hbone::Pool;
use crate::identity::Identity;
pub(crate) use crate::listeners::signalled;
use crate::listeners::{ListenerCap, TrafficBudget, admin_ip, bind, spawn_accept_loop};
use crate::seams::Seams;
use crate::state::{State, StateHandle, TunnelProtocol, Workload};

pub use certificates::{
    CertificateFetchError, CertificateManager, CertificateProvider, LocalCaProvider,
};
pub use config::{Config, ConfigError, Ports, parse_duration};
pub use connections::ConnectionTracker;
pub(crate) use control_plane::node as xds_node;
pub use control_plane::{
    AuthToken, CaClient, ControlPlaneClient, ControlPlaneError, Subscriber, Target, run_subscriber,
    run_xds_client,
};
pub use metrics::{Metrics, XdsMetrics};

/// How often idle pooled connections are looked for.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why the ztunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("control plane: {0}")]
    ControlPlane(#[from] ControlPlaneError),
    #[error("cannot listen for {listener} on {address}: {source}")]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        source: io::Error,
    },
}

/// State shared by every task of one ztunnel.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) seams: Seams,
    pub(crate) state: StateHandle,
    pub(crate) certificates: CertificateManager,
    pub(crate) pool: Pool,
    /// The descriptors all traffic draws from (see [`crate::listeners::DescriptorPlan`]).
    pub(crate) traffic: TrafficBudget,
    pub(crate) metrics: Metrics,
    pub(crate) tracker: Arc<ConnectionTracker>,
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) terminate: watch::Receiver<bool>,
    pub(crate) ready: AtomicBool,
    /// Both xDS types have been answered at least once.
    pub(crate) xds_synced: Arc<AtomicBool>,
    /// In-pod mode: the node agent's first snapshot of pods is being served (always true
    /// otherwise).
    pub(crate) pods_synced: AtomicBool,
    pub(crate) quit: watch::Sender<bool>,
    /// Where this ztunnel's own listeners answer: never a destination for proxied traffic.
    pub(crate) addresses: Addresses,
}

impl Inner {
    pub(crate) fn is_local(&self, workload: &Workload) -> bool {
        self.config.node_name.is_empty() || workload.node == self.config.node_name
    }

    /// What readiness still waits for, or `None` when ready.
    pub(crate) fn pending_readiness(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) {
            Some("startup")
        } else if self.config.xds_address.is_some() && !self.xds_synced.load(Ordering::Acquire) {
            Some("xDS state")
        } else if !self.pods_synced.load(Ordering::Acquire) {
            Some("pod snapshot")
        } else {
            None
        }
    }

    /// Identities of the mesh workloads this node serves.
    fn local_identities(&self) -> BTreeSet<Identity> {
        self.state.read(|state| {
            state
                .workloads()
                .filter(|w| self.is_local(w) && w.protocol == TunnelProtocol::Hbone)
                .map(|w| w.identity())
                .collect()
        })
    }

    /// The workload on this node that owns `ip`.
    pub(crate) fn local_workload(&self, state: &State, ip: IpAddr) -> Option<Arc<Workload>> {
        state
            .workload_by_ip(&self.config.network, ip)
            .filter(|w| self.is_local(w))
    }
}

/// The addresses a running ztunnel listens on.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub outbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub inbound: SocketAddr,
    pub socks5: Option<SocketAddr>,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
}

impl Addresses {
    fn all(&self) -> impl Iterator<Item = SocketAddr> {
        [
            self.outbound,
            self.inbound_plaintext,
            self.inbound,
            self.readiness,
            self.metrics,
            self.admin,
        ]
        .into_iter()
        .chain(self.socks5)
    }

    /// Whether a connection to `destination` would reach one of these listeners — the proxy
    /// itself, admin and `/quitquitquit` included — rather than a workload. A wildcard
    /// listener answers on every local address, and loopback or the unspecified address with
    /// one of our ports is taken to be us: closed by default, since a proxy that forwards to
    /// itself can be stopped by anyone who can reach it (upstream refuses its own ports too).
    pub(crate) fn reached_by(&self, destination: SocketAddr) -> bool {
        let ip = destination.ip().to_canonical();
        self.all().any(|own| {
            own.port() == destination.port()
                && (own.ip().is_unspecified()
                    || own.ip().to_canonical() == ip
                    || ip.is_loopback()
                    || ip.is_unspecified())
        })
    }
}

/// Serves the three capture listeners — outbound (15001), inbound plaintext (15006) and
/// inbound HBONE (15008) — whether they are the node's own or a pod's (in-pod mode). A pod's
/// connections end when `pod_gone` fires or its sender drops: the pod was removed.
pub(crate) fn spawn_traffic_listeners(
    inner: &Arc<Inner>,
    outbound_l: Box<dyn crate::seams::Listener>,
    plaintext_l: Box<dyn crate::seams::Listener>,
    inbound_l: Box<dyn crate::seams::Listener>,
    pod_gone: Option<watch::Receiver<bool>>,
) -> Vec<JoinHandle<()>> {
    let drain = inner.drain.clone();
    let plan = inner.config.descriptors;
    // A captured or plaintext connection holds itself and its upstream; an HBONE connection
    // holds itself, and each of its tunnels draws one more as it opens.
    let traffic = |per_connection| {
        ListenerCap::traffic(plan.per_traffic_listener, &inner.traffic, per_connection)
    };
    let mut tasks = Vec::with_capacity(3);
    let (i, gone) = (inner.clone(), pod_gone.clone());
    tasks.push(spawn_accept_loop(
        outbound_l,
        drain.clone(),
        traffic(2),
        move |a| {
            let work = outbound::handle_captured(i.clone(), a.stream, a.peer, a.destination);
            until_gone(gone.clone(), work)
        },
    ));
    let (i, gone) = (inner.clone(), pod_gone.clone());
    tasks.push(spawn_accept_loop(
        plaintext_l,
        drain.clone(),
        traffic(2),
        move |a| until_gone(gone.clone(), inbound_plaintext::serve(i.clone(), a)),
    ));
    let i = inner.clone();
    tasks.push(spawn_accept_loop(inbound_l, drain, traffic(1), move |a| {
        until_gone(pod_gone.clone(), inbound::serve(i.clone(), a))
    }));
    tasks
}

/// Runs a connection's `work` until it ends or, for a pod's connection, the pod is removed.
async fn until_gone(pod_gone: Option<watch::Receiver<bool>>, work: impl Future<Output = ()>) {
    match pod_gone {
        None => work.await,
        Some(mut gone) => {
            tokio::select! {
                biased;
                () = signalled(&mut gone) => {}
                () = work => {}
            }
        }
    }
}

/// A running ztunnel.
pub struct Ztunnel {
    inner: Arc<Inner>,
    addresses: Addresses,
    drain: watch::Sender<bool>,
    terminate: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a ztunnel: binds every listener, prefetches certificates for local workloads, and
/// serves until [`Ztunnel::shutdown`].
pub async fn run(
    config: Config,
    seams: Seams,
    state: StateHandle,
    certificates: Arc<dyn CertificateProvider>,
) -> Result<Ztunnel, StartError> {
    let (drain_tx, drain) = watch::channel(false);
    let (terminate_tx, terminate) = watch::channel(false);

    let ip = config.listen_ip;
    let admin_ip = admin_ip(ip);
    let ports = config.ports;
    let network = seams.network.clone();
    let bind = |listener: &'static str, ip: IpAddr, port: u16| {
        let network = network.clone();
        async move { bind(&*network, listener, SocketAddr::new(ip, port)).await }
    };
    let outbound_l = bind("outbound", ip, ports.outbound).await?;
    let plaintext_l = bind("inbound plaintext", ip, ports.inbound_plaintext).await?;
    let inbound_l = bind("inbound HBONE", ip, ports.inbound).await?;
    let socks5_l = if config.enable_socks5 {
        Some(bind("SOCKS5", ip, ports.socks5).await?)
    } else {
        None
    };
    let readiness_l = bind("readiness", ip, ports.readiness).await?;
    let metrics_l = bind("metrics", ip, ports.metrics).await?;
    let admin_l = bind("admin", admin_ip, ports.admin).await?;
    let addresses = Addresses {
        outbound: outbound_l.local_addr(),
        inbound_plaintext: plaintext_l.local_addr(),
        inbound: inbound_l.local_addr(),
        socks5: socks5_l.as_ref().map(|l| l.local_addr()),
        readiness: readiness_l.local_addr(),
        metrics: metrics_l.local_addr(),
        admin: admin_l.local_addr(),
    };
    let descriptors = config.descriptors;
    let inpod_socket = config.inpod_socket.clone();
    let inner = Arc::new(Inner {
        certificates: CertificateManager::new(certificates, seams.clock.clone()),
        config,
        seams,
        state,
        pool: Pool::new(),
        traffic: TrafficBudget::new(descriptors.traffic),
        metrics: Metrics::default(),
        tracker: Arc::new(ConnectionTracker::default()),
        drain,
        terminate,
        ready: AtomicBool::new(false),
        xds_synced: Arc::new(AtomicBool::new(false)),
        pods_synced: AtomicBool::new(inpod_socket.is_none()),
        quit: watch::Sender::new(false),
        addresses,
    });

    let mut tasks = spawn_traffic_listeners(&inner, outbound_l, plaintext_l, inbound_l, None);
    let plan = inner.config.descriptors;
    if let Some(l) = socks5_l {
        let i = inner.clone();
        let cap = ListenerCap::traffic(plan.per_traffic_listener, &inner.traffic, 2);
        tasks.push(spawn_accept_loop(l, inner.drain.clone(), cap, move |a| {
            socks5::serve(i.clone(), a)
        }));
    }
    // The HTTP endpoints stay up through a drain (readiness and metrics must answer).
    for (l, endpoint, cap) in [
        (readiness_l, admin::Endpoint::Readiness, plan.endpoint),
        (metrics_l, admin::Endpoint::Metrics, plan.endpoint),
        (admin_l, admin::Endpoint::Admin, plan.admin),
    ] {
        let i = inner.clone();
        let cap = ListenerCap::new(cap);
        tasks.push(spawn_accept_loop(
            l,
            inner.terminate.clone(),
            cap,
            move |a| admin::serve(i.clone(), endpoint, a),
        ));
    }

    // Re-check open connections whenever the state changes.
    let i = inner.clone();
    let mut changes = i.state.subscribe();
    tasks.push(tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            i.state.read(|state| i.tracker.recheck(state));
        }
    }));
    let i = inner.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(POOL_SWEEP_INTERVAL).await;
            i.pool.sweep();
        }
    }));

    if let Some(address) = &inner.config.xds_address {
        let client = ControlPlaneClient::new(
            address,
            &inner.config.xds_root_ca,
            inner.config.auth_token.clone(),
            &inner.config.cluster_id,
            inner.seams.network.clone(),
            inner.seams.clock.clone(),
        )?;
        tasks.push(tokio::spawn(run_xds_client(
            Arc::new(inner.config.clone()),
            client,
            inner.state.clone(),
            inner.xds_synced.clone(),
            inner.metrics.xds.clone(),
        )));
    }

    if let Some(path) = inpod_socket {
        tasks.push(tokio::spawn(inpod::run(inner.clone(), path)));
    }

    // Certificates for the workloads this node serves: fetched when they arrive, renewed at
    // half-life, dropped when the last workload with that identity leaves.
    let local = inner.local_identities();
    for identity in &local {
        if let Err(err) = inner.certificates.certificate(identity).await {
            tracing::warn!(%identity, %err, "certificate prefetch failed");
        }
    }
    tasks.push(tokio::spawn(certificates::maintain(inner.clone(), local)));
    inner.ready.store(true, Ordering::Release);
    tracing::info!(
        outbound = %addresses.outbound,
        inbound = %addresses.inbound,
        inbound_plaintext = %addresses.inbound_plaintext,
        socks5 = ?addresses.socks5,
        admin = %addresses.admin,
        "ztunnel ready"
    );
    Ok(Ztunnel {
        inner,
        addresses,
        drain: drain_tx,
        terminate: terminate_tx,
        tasks,
    })
}

impl Ztunnel {
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The state this ztunnel serves from; updates apply immediately.
    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    /// Whether `/healthz/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.pending_readiness().is_none()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Open inbound connections (HBONE and plaintext).
    pub fn open_inbound_connections(&self) -> usize {
        self.inner.tracker.len()
    }

    pub fn pooled_connections(&self) -> usize {
        self.inner.pool.connection_count()
    }

    /// Resolves when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        let mut quit = self.inner.quit.subscribe();
        let _ = quit.wait_for(|q| *q).await;
    }

    /// Graceful drain: stop accepting, GOAWAY on HBONE connections, give open connections the
    /// drain deadline to finish, then close whatever is left.
    pub async fn shutdown(self) {
        tracing::info!(deadline = ?self.inner.config.drain_deadline, open = self.inner.tracker.len(), "ztunnel draining");
        self.inner.ready.store(false, Ordering::Release);
        self.drain.send_replace(true);
        self.inner.pool.clear();
        let deadline = tokio::time::Instant::now() + self.inner.config.drain_deadline;
        while !self.inner.tracker.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.terminate.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!("ztunnel stopped");
    }
}
