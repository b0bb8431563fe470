//! The waypoint: the L7 proxy. [`run`] is what the binary and the simulator call.
//!
//! It terminates HBONE on 15008 (the CONNECT authority is the original destination: a
//! Service VIP:port or a pod IP:port), serves HTTP/1.1 or HTTP/2 on the tunnelled stream as
//! the Service port's protocol says, routes each request by the Gateway API routes the
//! control plane resolved into its [`RouteTable`], and sends it on over HBONE, with its own
//! identity, to the chosen backend's endpoint through that endpoint's ztunnel. Readiness
//! (15021), metrics (15020) and admin (15000) are served as the ztunnel serves them.

mod access_log;
mod admin;
mod authorize;
mod config;
mod control_plane;
mod filters;
mod forward;
mod inbound;
mod metrics;
mod proxy;
pub mod routes;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::hbone::Pool;
use crate::listeners::{ListenerCap, TrafficBudget, admin_ip, bind, spawn_accept_loop};
use crate::seams::Seams;
use crate::state::StateHandle;
use crate::xds::proto::ambient::waypoint::WaypointConfig;
use crate::ztunnel::{
    CertificateManager, CertificateProvider, ControlPlaneClient, StartError, XdsMetrics,
    run_subscriber,
};

pub use config::{Config, Ports};
pub use metrics::Metrics;
pub use routes::RouteTable;

/// State shared by every task of one waypoint.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) seams: Seams,
    /// Workloads and Services, to resolve backends to endpoints.
    pub(crate) state: StateHandle,
    pub(crate) routes: watch::Sender<Arc<RouteTable>>,
    pub(crate) certificates: CertificateManager,
    pub(crate) pool: Pool,
    /// The descriptors all traffic draws from (see [`crate::listeners::DescriptorPlan`]).
    pub(crate) traffic: TrafficBudget,
    pub(crate) metrics: Metrics,
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) ready: AtomicBool,
    /// A configuration has arrived (from xDS, or handed in).
    pub(crate) configured: AtomicBool,
    /// Every subscribed xDS type has been answered (only waited for with `XDS_ADDRESS`).
    pub(crate) xds_synced: Arc<AtomicBool>,
    pub(crate) quit: watch::Sender<bool>,
    /// Requests being handled, for a drain to wait on.
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
}

impl Inner {
    /// What readiness still waits for, or `None` when ready.
    pub(crate) fn pending_readiness(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) {
            Some("startup")
        } else if self.config.mesh.xds_address.is_some() && !self.xds_synced.load(Ordering::Acquire)
        {
            Some("xDS state")
        } else if !self.configured.load(Ordering::Acquire) {
            Some("waypoint configuration")
        } else {
            None
        }
    }
}

/// The addresses a running waypoint listens on.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub inbound: SocketAddr,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
}

/// A running waypoint.
pub struct Waypoint {
    inner: Arc<Inner>,
    addresses: Addresses,
    drain: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a waypoint: binds its listeners and fetches its certificate. It routes once a
/// configuration arrives ([`Waypoint::configure`], or xDS when `XDS_ADDRESS` is set), and is
/// ready from then on.
pub async fn run(
    config: Config,
    seams: Seams,
    state: StateHandle,
    certificates: Arc<dyn CertificateProvider>,
) -> Result<Waypoint, StartError> {
    let ip = config.listen_ip();
    let admin_ip = admin_ip(ip);
    let network = seams.network.clone();
    let bind = |listener: &'static str, ip: IpAddr, port: u16| {
        let network = network.clone();
        async move { bind(&*network, listener, SocketAddr::new(ip, port)).await }
    };
    let ports = config.ports;
    let inbound_l = bind("inbound HBONE", ip, ports.inbound).await?;
    let readiness_l = bind("readiness", ip, ports.readiness).await?;
    let metrics_l = bind("metrics", ip, ports.metrics).await?;
    let admin_l = bind("admin", admin_ip, ports.admin).await?;
    let addresses = Addresses {
        inbound: inbound_l.local_addr(),
        readiness: readiness_l.local_addr(),
        metrics: metrics_l.local_addr(),
        admin: admin_l.local_addr(),
    };
    let (drain_tx, drain) = watch::channel(false);
    let plan = config.mesh.descriptors;
    let inner = Arc::new(Inner {
        certificates: CertificateManager::new(certificates, seams.clock.clone()),
        config,
        seams,
        state,
        routes: watch::Sender::new(Arc::new(RouteTable::default())),
        pool: Pool::new(),
        traffic: TrafficBudget::new(plan.traffic),
        metrics: Metrics::default(),
        drain,
        ready: AtomicBool::new(false),
        configured: AtomicBool::new(false),
        xds_synced: Arc::new(AtomicBool::new(false)),
        quit: watch::Sender::new(false),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut tasks = Vec::new();
    let i = inner.clone();
    // The one traffic listener: an HBONE connection holds itself, each tunnel one more.
    let cap = ListenerCap::traffic(plan.traffic, &inner.traffic, 1);
    tasks.push(spawn_accept_loop(
        inbound_l,
        inner.drain.clone(),
        cap,
        move |a| inbound::serve(i.clone(), a),
    ));
    let (_never, stay_up) = watch::channel(false);
    for (l, endpoint, cap) in [
        (readiness_l, admin::Endpoint::Readiness, plan.endpoint),
        (metrics_l, admin::Endpoint::Metrics, plan.endpoint),
        (admin_l, admin::Endpoint::Admin, plan.admin),
    ] {
        let i = inner.clone();
        let cap = ListenerCap::new(cap);
        tasks.push(spawn_accept_loop(l, stay_up.clone(), cap, move |a| {
            admin::serve(i.clone(), endpoint, a)
        }));
    }
    tasks.push(tokio::spawn(async move {
        // Keeps the HTTP endpoints' stop signal open for as long as the waypoint runs.
        let _never = _never;
        std::future::pending::<()>().await
    }));
    if let Some(address) = &inner.config.mesh.xds_address {
        let client = ControlPlaneClient::new(
            address,
            &inner.config.mesh.xds_root_ca,
            inner.config.mesh.auth_token.clone(),
            &inner.config.mesh.cluster_id,
            inner.seams.network.clone(),
            inner.seams.clock.clone(),
        )?;
        let subscriber = control_plane::WaypointSubscriber {
            inner: inner.clone(),
        };
        let synced = inner.xds_synced.clone();
        tasks.push(tokio::spawn(async move {
            run_subscriber(&subscriber, client, synced, XdsMetrics::default()).await
        }));
    }
    let identity = inner.config.identity();
    if let Err(err) = inner.certificates.certificate(&identity).await {
        tracing::warn!(%identity, %err, "certificate prefetch failed");
    }
    inner.ready.store(true, Ordering::Release);
    tracing::info!(
        inbound = %addresses.inbound,
        admin = %addresses.admin,
        waypoint = %inner.config.resource_name(),
        %identity,
        "waypoint started"
    );
    Ok(Waypoint {
        inner,
        addresses,
        drain: drain_tx,
        tasks,
    })
}

impl Waypoint {
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// Applies a new configuration: requests that start from now on route by it.
    pub fn configure(&self, config: WaypointConfig) {
        configure(&self.inner, config);
    }

    /// The state (workloads and Services) backends are resolved from.
    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether `/healthz/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.pending_readiness().is_none()
    }

    /// Resolves when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        let mut quit = self.inner.quit.subscribe();
        let _ = quit.wait_for(|q| *q).await;
    }

    /// Graceful drain: stop accepting, GOAWAY on every HBONE connection, wait for the
    /// requests in flight (at most the drain deadline), then stop.
    pub async fn shutdown(self) {
        tracing::info!(deadline = ?self.inner.config.mesh.drain_deadline, "waypoint draining");
        self.inner.ready.store(false, Ordering::Release);
        self.drain.send_replace(true);
        self.inner.pool.clear();
        let deadline = tokio::time::Instant::now() + self.inner.config.mesh.drain_deadline;
        while self.inner.in_flight.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!("waypoint stopped");
    }
}

/// Compiles `config` and swaps it in; entries that could not be compiled are logged (they
/// answer 500 when chosen, never skipped).
pub(crate) fn configure(inner: &Inner, config: WaypointConfig) {
    let table = RouteTable::build(config);
    tracing::info!(
        services = table.source.services.len(),
        entries = table
            .source
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .map(|p| p.rules.len())
            .sum::<usize>(),
        "waypoint configuration applied"
    );
    for error in &table.errors {
        tracing::warn!(%error, "route entry cannot be applied; matching requests get 500");
    }
    inner.routes.send_replace(Arc::new(table));
    inner.configured.store(true, Ordering::Release);
}
