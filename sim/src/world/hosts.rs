//! The turmoil hosts, running the production code: istiod (`control::istiod::run`) and every
//! node's ztunnel (`dataplane::ztunnel::run`) with its pods' applications and clients.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use control::ca::CertificateAuthority;
use control::istiod::{self, ISTIOD_HOSTNAME, IstiodConfig};
use dataplane::identity::LocalCa;
use dataplane::seams::{Clock, Entropy, Seams};
use dataplane::state::StateHandle;
use dataplane::waypoint;
use dataplane::ztunnel::{self, AuthToken, CaClient, Config, ControlPlaneClient};

use super::clients::clients;
use super::{Driver, PodInfo, Shared, TOKEN_SECRET};
use crate::apps;
use crate::scenario::ISTIOD;

impl Driver<'_> {
    pub(super) fn register_hosts(&mut self) {
        let shared = self.shared.clone();
        self.sim.host(ISTIOD_HOSTNAME, move || {
            let shared = shared.clone();
            async move {
                istiod_main(shared)
                    .await
                    .map_err(|e| format!("istiod: {e:#}").into())
            }
        });
        self.hosts
            .insert(ISTIOD.to_string(), self.sim.lookup(ISTIOD_HOSTNAME));
        for (index, node) in self.scenario.nodes.iter().enumerate() {
            let shared = self.shared.clone();
            let name = node.clone();
            self.sim.host(node.as_str(), move || {
                let shared = shared.clone();
                let name = name.clone();
                async move {
                    node_main(name.clone(), index, shared)
                        .await
                        .map_err(|e| format!("{name}: {e:#}").into())
                }
            });
            self.hosts
                .insert(node.clone(), self.sim.lookup(node.as_str()));
        }
    }
}

/// The turmoil host name of a waypoint pod: `<namespace>/<pod>`, as timelines name it.
pub(crate) fn waypoint_host(pod: &PodInfo) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

impl Driver<'_> {
    /// Gives a waypoint pod its host (once; a pod that comes back after being deleted gets
    /// its host restarted) and returns the host's name.
    pub(super) fn ensure_waypoint_host(&mut self, pod: &PodInfo) -> String {
        let name = waypoint_host(pod);
        if !self.hosts.contains_key(&name) {
            let shared = self.shared.clone();
            let info = pod.clone();
            let host = name.clone();
            self.sim.host(name.as_str(), move || {
                let shared = shared.clone();
                let info = info.clone();
                let host = host.clone();
                async move {
                    waypoint_main(host.clone(), info, shared)
                        .await
                        .map_err(|e| format!("{host}: {e:#}").into())
                }
            });
            self.hosts
                .insert(name.clone(), self.sim.lookup(name.as_str()));
        } else if self.retired_waypoints.remove(&name) {
            self.sim.bounce(self.hosts[&name]);
            self.down.remove(&name);
        }
        name
    }
}

/// A waypoint pod: the production `waypoint::run`, fed by istiod over xDS, its certificate
/// from istiod's CA (asked for by its node's credentials, as a node proxy asks for a pod's),
/// its outbound connections coming from its pod IP.
async fn waypoint_main(host: String, pod: PodInfo, shared: Rc<Shared>) -> anyhow::Result<()> {
    let address = format!("https://{ISTIOD_HOSTNAME}:15012");
    let Some((gateway, service_account)) = pod.waypoint.clone() else {
        anyhow::bail!("{host} is not a waypoint pod");
    };
    let mut config = waypoint::Config {
        gateway_namespace: pod.namespace.clone(),
        gateway_name: gateway,
        service_account,
        pod_ip: Some(pod.ip),
        ..waypoint::Config::default()
    };
    // A seed of its own, from its address: load-balancing picks must not mirror a node's.
    let seed = shared.seed
        ^ match pod.ip {
            std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)) << 16,
            std::net::IpAddr::V6(v6) => u128::from(v6) as u64,
        };
    config.mesh = Config {
        node_name: pod.node.clone(),
        xds_address: Some(address.clone()),
        ca_address: Some(address.clone()),
        xds_root_ca: shared.root_pem.clone(),
        ca_root_ca: shared.root_pem.clone(),
        auth_token: Some(AuthToken::Literal(
            shared.tokens.get(&pod.node).cloned().unwrap_or_default(),
        )),
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        instance_ip: pod.ip.to_string(),
        certificate_ttl: shared.settings.certificate_ttl.0,
        seed,
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(shared.clock.clone());
    let seams = Seams {
        network: Arc::new(shared.network.clone()),
        clock: clock.clone(),
        entropy: Entropy::seeded(seed),
    };
    let client = ControlPlaneClient::new(
        &address,
        &shared.root_pem,
        config.mesh.auth_token.clone(),
        &config.mesh.cluster_id,
        seams.network.clone(),
        clock,
    )?;
    let ca = Arc::new(CaClient::new(client, config.mesh.certificate_ttl));
    let proxy = Rc::new(waypoint::run(config, seams, StateHandle::default(), ca).await?);
    shared.waypoints.borrow_mut().insert(host, proxy);
    std::future::pending::<()>().await;
    Ok(())
}

/// istiod: the production `istiod::run`, following the store the driver changes.
async fn istiod_main(shared: Rc<Shared>) -> anyhow::Result<()> {
    let root = LocalCa::from_pem(&shared.root_pem, &shared.key_pem).context("cluster CA")?;
    let clock: Arc<dyn Clock> = Arc::new(shared.clock.clone());
    let seams = Seams {
        network: Arc::new(shared.network.clone()),
        clock: clock.clone(),
        entropy: Entropy::seeded(shared.seed),
    };
    // Checked when the scenario was read.
    let mesh = shared.settings.mesh().map_err(anyhow::Error::msg)?;
    let config = IstiodConfig {
        certificate_ttl: shared.settings.certificate_ttl.0,
        debounce: shared.settings.debounce.0,
        mesh,
        ..IstiodConfig::default()
    };
    let authority =
        CertificateAuthority::new(root, &config.mesh.trust_domain, config.certificate_ttl);
    let istiod = Rc::new(istiod::run(config, seams, authority, TOKEN_SECRET).await?);
    istiod.follow(shared.store.clone());
    *shared.istiod.borrow_mut() = Some(istiod.clone());
    shared
        .trace
        .record(ISTIOD_HOSTNAME, "sim", "istiod serving");
    drop(istiod);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rotation = shared.rotations.borrow_mut().pop_front();
        if let Some((activate_after, overlap)) = rotation {
            let next = LocalCa::generate("cluster.local", clock.now())?;
            if let Some(istiod) = shared.istiod.borrow().as_ref() {
                istiod.begin_root_rotation(next, activate_after, overlap);
            }
            shared
                .trace
                .record(ISTIOD_HOSTNAME, "sim", "root rotation begun");
        }
    }
}

/// A node: its pods' applications, its ztunnel fed by istiod, and its pods' clients.
async fn node_main(node: String, index: usize, shared: Rc<Shared>) -> anyhow::Result<()> {
    shared.tasks.node_started(&node);
    for &port in &shared.app_ports {
        apps::listen(shared.clone(), node.clone(), port)
            .await
            .with_context(|| format!("app port {port}"))?;
    }
    let address = format!("https://{ISTIOD_HOSTNAME}:15012");
    let config = Config {
        node_name: node.clone(),
        xds_address: Some(address.clone()),
        ca_address: Some(address.clone()),
        xds_root_ca: shared.root_pem.clone(),
        ca_root_ca: shared.root_pem.clone(),
        auth_token: Some(AuthToken::Literal(
            shared.tokens.get(&node).cloned().unwrap_or_default(),
        )),
        pod_name: format!("ztunnel-{node}"),
        pod_namespace: "istio-system".into(),
        certificate_ttl: shared.settings.certificate_ttl.0,
        seed: shared.seed ^ (index as u64 + 1),
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(shared.clock.clone());
    let seams = Seams {
        network: Arc::new(shared.network.clone()),
        clock: clock.clone(),
        entropy: Entropy::seeded(shared.seed ^ (index as u64 + 1)),
    };
    let client = ControlPlaneClient::new(
        &address,
        &shared.root_pem,
        config.auth_token.clone(),
        &config.cluster_id,
        seams.network.clone(),
        clock,
    )?;
    let ca = Arc::new(CaClient::new(client, config.certificate_ttl));
    let ztunnel = Rc::new(ztunnel::run(config, seams, StateHandle::default(), ca).await?);
    shared
        .ztunnels
        .borrow_mut()
        .insert(node.clone(), ztunnel.clone());
    let ledger = shared.tasks.clone();
    let sampled = node.clone();
    tokio::task::spawn_local(async move { ledger.sample(sampled, || ztunnel.is_ready()).await });
    clients(node, shared).await;
    Ok(())
}
