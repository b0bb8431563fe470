//! istiod's role as one entry function: [`run`] binds the xDS/CA ports through the network
//! seam (15010 plaintext, 15012 TLS with istiod's own serving certificate), serves Delta ADS and
//! the CA API on both, and publishes whatever [`Istiod::publish`] is given. The binary, the
//! tests and the simulator all call it.

mod follow;
pub mod root_rotation;
pub mod state_dir;

pub use follow::SharedStore;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use dataplane::identity::{Identity, LocalCa, control_plane_server_config};
use dataplane::seams::Seams;
use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use dataplane::xds::proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use dataplane::{DescriptorPlan, ListenerCap};

use crate::ca::{CaService, CaShared, CertificateAuthority, TokenSigner};
use crate::listener::incoming;
use crate::snapshot::{MeshConfig, Snapshot};
use crate::xds::{AdsService, PublishedResources, SharedResources, XdsStats};

/// The name ztunnels dial istiod by (and verify its certificate against).
pub const ISTIOD_HOSTNAME: &str = "istiod.istio-system.svc";

/// How long istiod's own serving certificate lasts.
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often root-rotation phases are checked.
const ROTATION_TICK: Duration = Duration::from_secs(60);
/// How often a running istiod looks at its state directory for `istiod rotate-root`'s steps.
pub const STATE_DIR_POLL: Duration = Duration::from_secs(2);

/// What istiod needs to start.
#[derive(Debug, Clone)]
pub struct IstiodConfig {
    pub mesh: MeshConfig,
    pub listen_ip: IpAddr,
    /// Plaintext xDS (and CA) port, upstream's 15010.
    pub plaintext_port: u16,
    /// TLS xDS and CA port, upstream's 15012.
    pub tls_port: u16,
    /// Extra names (DNS or IP) the serving certificate carries besides
    /// `istiod.istio-system.svc` and the listen address.
    pub serving_names: Vec<String>,
    pub handshake_timeout: Duration,
    /// Default lifetime of issued workload certificates.
    pub certificate_ttl: Duration,
    /// How long a burst of changes is collected before one push.
    pub debounce: Duration,
    /// How the process's descriptors are shared out: each xDS port holds at most half of
    /// the traffic share, so idle connections to one cannot stop the other from accepting.
    /// The binary plans from its own `RLIMIT_NOFILE`.
    pub descriptors: DescriptorPlan,
}

impl Default for IstiodConfig {
    fn default() -> Self {
        IstiodConfig {
            mesh: MeshConfig::default(),
            listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            plaintext_port: 15010,
            tls_port: 15012,
            serving_names: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            certificate_ttl: crate::ca::DEFAULT_TTL,
            debounce: Duration::from_millis(100),
            descriptors: DescriptorPlan::default(),
        }
    }
}

/// Why istiod could not start.
#[derive(Debug, thiserror::Error)]
pub enum IstiodError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot issue the serving certificate: {0}")]
    ServingCertificate(#[from] dataplane::identity::LocalCaError),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] dataplane::identity::TlsError),
}

/// Publishes snapshots to the xDS server and the CA's view of the cluster.
#[derive(Clone)]
struct Publisher {
    resources: watch::Sender<SharedResources>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    generation: Arc<AtomicU64>,
    /// False after resources were published directly: then nothing is reused.
    consistent: Arc<AtomicBool>,
}

impl Publisher {
    fn publish(&self, snapshot: Snapshot) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let previous_snapshot = self.snapshot.borrow().clone();
        let previous_resources = self.resources.borrow().clone();
        let previous = self
            .consistent
            .swap(true, Ordering::AcqRel)
            .then_some((&*previous_snapshot, &*previous_resources));
        let encoded = PublishedResources::encode_since(&snapshot, generation, previous);
        self.snapshot.send_replace(Arc::new(snapshot));
        self.resources.send_replace(Arc::new(encoded));
        generation
    }
}

/// A running istiod.
pub struct Istiod {
    config: IstiodConfig,
    seams: Seams,
    publisher: Publisher,
    ca: Arc<CaShared>,
    tokens: Arc<TokenSigner>,
    stats: Arc<XdsStats>,
    plaintext_address: SocketAddr,
    tls_address: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

/// Starts istiod with `authority` signing and tokens checked under `token_secret`.
pub async fn run(
    config: IstiodConfig,
    seams: Seams,
    authority: CertificateAuthority,
    token_secret: &[u8],
) -> Result<Istiod, IstiodError> {
    let now = seams.clock.now();
    let mut names = vec![ISTIOD_HOSTNAME.to_string(), "istiod".to_string()];
    if !config.listen_ip.is_unspecified() {
        names.push(config.listen_ip.to_string());
    }
    names.extend(config.serving_names.iter().cloned());
    let serving = authority
        .active()
        .issue_serving(&names, SERVING_CERT_TTL, now)?;
    let tls = Arc::new(control_plane_server_config(
        serving.chain,
        serving.key,
        seams.clock.clone(),
    )?);

    let (resources_tx, resources_rx) = watch::channel(Arc::new(PublishedResources::encode(
        &Snapshot::default(),
        0,
    )));
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let tokens = Arc::new(TokenSigner::new(token_secret));
    let stats = Arc::new(XdsStats::default());
    let ca = Arc::new(CaShared {
        authority: Mutex::new(authority),
        tokens: TokenSigner::new(token_secret),
        clock: seams.clock.clone(),
        snapshot: snapshot_rx,
        issued: AtomicU64::new(0),
    });

    let bind = |port: u16| {
        let network = seams.network.clone();
        let address = SocketAddr::new(config.listen_ip, port);
        async move {
            network
                .bind(address)
                .await
                .map_err(|source| IstiodError::Bind { address, source })
        }
    };
    let plaintext = bind(config.plaintext_port).await?;
    let secure = bind(config.tls_port).await?;
    let plaintext_address = plaintext.local_addr();
    let tls_address = secure.local_addr();

    let mut tasks = Vec::new();
    let (stop, stopped) = watch::channel(false);
    for (listener, tls, authenticated, name) in [
        (plaintext, None, false, "xds-plaintext"),
        (secure, Some(tls), true, "xds-tls"),
    ] {
        let ads = AdsService::new(
            resources_rx.clone(),
            authenticated.then(|| tokens.clone()),
            seams.clock.clone(),
            stats.clone(),
        );
        let ca_service = CaService::new(ca.clone());
        let connections = incoming(
            listener,
            tls,
            ListenerCap::new(config.descriptors.traffic / 2),
            config.handshake_timeout,
            stopped.clone(),
            name,
        );
        let accept_task = connections.accept_task.abort_handle();
        let mut stopping = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _stop_accepting = AbortOnDrop(accept_task.clone());
            let served = Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(AggregatedDiscoveryServiceServer::new(ads))
                .add_service(IstioCertificateServiceServer::new(ca_service))
                .serve_with_incoming_shutdown(connections, async move {
                    let _ = stopping.wait_for(|s| *s).await;
                })
                .await;
            accept_task.abort();
            if let Err(err) = served {
                tracing::error!(listener = name, %err, "gRPC server stopped");
            }
        }));
    }

    let ticker = ca.clone();
    let clock = seams.clock.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let wait = {
                let authority = ticker
                    .authority
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                authority
                    .next_transition()
                    .map(|t| t.duration_since(clock.now()).unwrap_or(Duration::ZERO))
                    .unwrap_or(ROTATION_TICK)
                    .min(ROTATION_TICK)
            };
            tokio::time::sleep(wait).await;
            ticker
                .authority
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .tick(clock.now());
        }
    }));

    tracing::info!(plaintext = %plaintext_address, tls = %tls_address, "istiod serving xDS and the CA");
    Ok(Istiod {
        config,
        seams,
        publisher: Publisher {
            resources: resources_tx,
            snapshot: snapshot_tx,
            generation: Arc::new(AtomicU64::new(0)),
            consistent: Arc::new(AtomicBool::new(true)),
        },
        ca,
        tokens,
        stats,
        plaintext_address,
        tls_address,
        tasks: Mutex::new(tasks),
        stop,
    })
}

impl Istiod {
    pub fn config(&self) -> &IstiodConfig {
        &self.config
    }

    /// The plaintext and TLS addresses actually bound.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        (self.plaintext_address, self.tls_address)
    }

    /// Pushes `snapshot` to every connected ztunnel (only what changed for each).
    pub fn publish(&self, snapshot: Snapshot) {
        self.publisher.publish(snapshot);
    }

    fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    fn keep(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Publishes already-encoded resources as they are (tests use this to send a resource a
    /// ztunnel must reject).
    pub fn publish_resources(&self, resources: PublishedResources) {
        self.publisher.consistent.store(false, Ordering::Release);
        self.publisher.resources.send_replace(Arc::new(resources));
    }

    /// The snapshot last published.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.snapshot.borrow().clone()
    }

    pub fn stats(&self) -> &XdsStats {
        &self.stats
    }

    /// A token for the ztunnel on `node`, valid for `ttl`.
    pub fn issue_token(&self, node: &str, identity: Option<&Identity>, ttl: Duration) -> String {
        self.tokens
            .issue(node, identity, ttl, self.seams.clock.now())
    }

    /// Workload certificates issued since start.
    pub fn certificates_issued(&self) -> u64 {
        self.ca.issued.load(Ordering::Relaxed)
    }

    /// Every root workloads must trust now.
    pub fn trust_bundle(&self) -> String {
        self.ca
            .authority
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trust_bundle()
    }

    /// Starts a root rotation to `next`: trusted now, signing after `activate_after`, the old
    /// root trusted for `overlap` after that.
    pub fn begin_root_rotation(&self, next: LocalCa, activate_after: Duration, overlap: Duration) {
        self.ca
            .authority
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin_rotation(next, self.seams.clock.now(), activate_after, overlap);
    }

    /// Takes the CA's roots from outside: `base` and the rotation replacing it, each in the
    /// role its times give it now (see [`CertificateAuthority::adopt`]).
    pub fn adopt_roots(&self, base: LocalCa, plan: Option<crate::ca::PlannedRoot>) {
        adopt_roots(&self.ca, base, plan);
    }

    /// Follows the root rotation in the state directory `dir`, as `istiod rotate-root`
    /// changes it: read every [`STATE_DIR_POLL`], adopted when it changed. A directory that
    /// cannot be read is logged and the roots in use are kept.
    pub fn follow_state_dir(&self, dir: std::path::PathBuf) {
        let ca = self.ca.clone();
        // Taken now, not when the task first runs: a step written in between (the task may
        // start late on a busy machine) would otherwise count as already seen, and be missed.
        let mut seen = root_rotation::fingerprint(&dir);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(STATE_DIR_POLL).await;
                let now = root_rotation::fingerprint(&dir);
                if now == seen {
                    continue;
                }
                match root_rotation::load_roots(&dir) {
                    Ok((base, plan)) => {
                        adopt_roots(&ca, base, plan);
                        let phase = root_rotation::status(&dir, ca.clock.now())
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        tracing::info!(dir = %dir.display(), %phase, "root rotation changed in the state directory; adopted");
                        seen = now;
                    }
                    Err(err) => {
                        tracing::warn!(dir = %dir.display(), %err, "cannot read the root rotation; keeping the roots in use");
                    }
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Stops serving: listeners close and open streams end.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

fn adopt_roots(ca: &CaShared, base: LocalCa, plan: Option<crate::ca::PlannedRoot>) {
    ca.authority
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .adopt(base, plan, ca.clock.now());
}

/// Aborts a task when dropped, so an aborted server also stops its accept loop.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.shutdown();
    }
}
