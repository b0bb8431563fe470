//! istiod and three ztunnels inside turmoil, all through the simulated seams: a policy pushed
//! at t=10 s reaches every node and changes new connections; istiod crashes and traffic keeps
//! flowing on cached state and certificates; istiod restarts and the ztunnels resync without
//! dropping connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control::ca::{CertificateAuthority, TokenSigner};
use control::istiod::{self, ISTIOD_HOSTNAME, IstiodConfig};
use control::snapshot::Snapshot;
use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, Entropy, Seams, SimClock, SimNetwork};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, AuthToken, CaClient, Config, ControlPlaneClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TOKEN_SECRET;

const NODES: [(&str, &str, &str); 3] = [
    ("node-a", "web", "10.0.1.2"),
    ("node-b", "echo", "10.0.2.2"),
    ("node-c", "curl", "10.0.3.2"),
];
const ECHO: &str = "10.0.2.2";

fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

/// The cluster: one pod per node, `extra` (local-config YAML) appended.
fn cluster(extra: &str) -> Snapshot {
    let mut yaml = String::from("workloads:\n");
    for (node, app, ip) in NODES {
        yaml.push_str(&format!(
            "- {{uid: Kubernetes//Pod/shop/{app}-0, name: {app}-0, namespace: shop, serviceAccount: {app}, \
             trustDomain: cluster.local, workloadIps: [\"{ip}\"], protocol: HBONE, node: {node}, \
             authorizationPolicies: [shop/echo-policy]}}\n"
        ));
    }
    yaml.push_str(extra);
    let mut state = State::default();
    LocalConfig::parse(&yaml).unwrap().apply_to(&mut state);
    Snapshot {
        workloads: state
            .workloads()
            .map(|w| (w.uid.clone(), (**w).clone()))
            .collect(),
        services: Default::default(),
        policies: state.policies().map(|p| (p.key(), (**p).clone())).collect(),
        waypoints: Default::default(),
        waypoint_proxies: Default::default(),
    }
}

fn deny(principal: &str) -> String {
    format!(
        "policies:\n- {{name: echo-policy, namespace: shop, scope: WorkloadSelector, action: Deny, dryRun: false, \
         rules: [[[{{principals: [!Exact \"{principal}\"]}}]]]}}\n"
    )
}

/// What the test drives and observes.
#[derive(Clone, Default)]
struct Shared {
    /// What istiod should publish; it polls this as if it were its store.
    desired: Arc<Mutex<(u64, Snapshot)>>,
    /// Per node: how many policies its ztunnel holds.
    policies: Arc<[AtomicUsize; 3]>,
    /// A root rotation for istiod to begin: (activate after, overlap).
    rotate: Arc<Mutex<Option<(Duration, Duration)>>>,
    /// istiod's trust bundle, as last seen.
    bundle: Arc<Mutex<String>>,
    /// Certificates istiod has issued.
    issued: Arc<AtomicUsize>,
    /// Lifetime the ztunnels ask for (`SECRET_TTL`); 24 h when zero.
    certificate_ttl: Arc<Mutex<Duration>>,
}

fn build(sim: &mut turmoil::Sim<'_>, network: &SimNetwork, shared: &Shared) {
    let root = LocalCa::generate("cluster.local", epoch()).unwrap();
    let (root_pem, key_pem) = (root.root_pem(), root.key_pem().to_string());
    {
        let (root_pem, key_pem, shared) = (root_pem.clone(), key_pem.clone(), shared.clone());
        let network = network.clone();
        sim.host(ISTIOD_HOSTNAME, move || {
            let (root_pem, key_pem, shared) = (root_pem.clone(), key_pem.clone(), shared.clone());
            let network = network.clone();
            async move {
                let root = LocalCa::from_pem(&root_pem, &key_pem)?;
                let seams = Seams {
                    network: Arc::new(network),
                    clock: Arc::new(SimClock),
                    entropy: Entropy::seeded(1),
                };
                let config = IstiodConfig::default();
                let authority =
                    CertificateAuthority::new(root, "cluster.local", config.certificate_ttl);
                let istiod = istiod::run(config, seams, authority, &TOKEN_SECRET).await?;
                let mut published = None;
                loop {
                    let (generation, snapshot) = shared.desired.lock().unwrap().clone();
                    if published != Some(generation) {
                        istiod.publish(snapshot);
                        published = Some(generation);
                    }
                    if let Some((activate_after, overlap)) = shared.rotate.lock().unwrap().take() {
                        let next = LocalCa::generate("cluster.local", SimClock.now())?;
                        istiod.begin_root_rotation(next, activate_after, overlap);
                    }
                    *shared.bundle.lock().unwrap() = istiod.trust_bundle();
                    shared
                        .issued
                        .store(istiod.certificates_issued() as usize, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    let tokens = TokenSigner::new(&TOKEN_SECRET);
    for (index, (node, _, _)) in NODES.into_iter().enumerate() {
        let token = tokens.issue(node, None, Duration::from_secs(7 * 24 * 3600), epoch());
        let (root_pem, shared, network) = (root_pem.clone(), shared.clone(), network.clone());
        sim.host(node, move || {
            let (root_pem, shared, network) = (root_pem.clone(), shared.clone(), network.clone());
            let token = token.clone();
            async move {
                let address = format!("https://{ISTIOD_HOSTNAME}:15012");
                let config = Config {
                    node_name: node.into(),
                    xds_address: Some(address.clone()),
                    ca_address: Some(address.clone()),
                    xds_root_ca: root_pem.clone(),
                    ca_root_ca: root_pem.clone(),
                    auth_token: Some(AuthToken::Literal(token)),
                    pod_name: format!("ztunnel-{node}"),
                    pod_namespace: "istio-system".into(),
                    ..Config::default()
                };
                let ttl = *shared.certificate_ttl.lock().unwrap();
                let config = if ttl.is_zero() {
                    config
                } else {
                    Config {
                        certificate_ttl: ttl,
                        ..config
                    }
                };
                let seams = Seams {
                    network: Arc::new(network),
                    clock: Arc::new(SimClock),
                    entropy: Entropy::seeded(index as u64),
                };
                let client = ControlPlaneClient::new(
                    &address,
                    &root_pem,
                    config.auth_token.clone(),
                    &config.cluster_id,
                    seams.network.clone(),
                    seams.clock.clone(),
                )?;
                let ca = Arc::new(CaClient::new(client, config.certificate_ttl));
                let ztunnel = ztunnel::run(config, seams, StateHandle::default(), ca).await?;
                if node == "node-b" {
                    let listener = turmoil::net::TcpListener::bind("0.0.0.0:8080").await?;
                    tokio::spawn(async move {
                        while let Ok((s, _)) = listener.accept().await {
                            tokio::spawn(async move {
                                let (mut r, mut w) = s.into_split();
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                        }
                    });
                }
                loop {
                    let count = ztunnel.state().read(|s| s.policies().count());
                    shared.policies[index].store(count, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    for (node, _, ip) in NODES {
        network.add_route(ip.parse().unwrap(), sim.lookup(node));
    }
}

fn sim<'a>() -> turmoil::Sim<'a> {
    sim_for(Duration::from_secs(300), Duration::from_millis(5))
}

fn sim_for<'a>(duration: Duration, tick: Duration) -> turmoil::Sim<'a> {
    turmoil::Builder::new()
        .epoch(epoch())
        .rng_seed(11)
        .simulation_duration(duration)
        .tick_duration(tick)
        .build()
}

/// A captured connection from the pod at `source` (on `node`) to echo.
async fn connect(
    network: &SimNetwork,
    node: &str,
    source: &str,
) -> std::io::Result<turmoil::net::TcpStream> {
    network
        .connect_redirected(
            Some(source.parse::<IpAddr>().unwrap()),
            SocketAddr::new(ECHO.parse().unwrap(), 8080),
            SocketAddr::new(turmoil::lookup(node), 15001),
        )
        .await
}

async fn echoes(s: &mut turmoil::net::TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == msg
}

async fn new_connection_works(network: &SimNetwork, node: &str, source: &str) -> bool {
    match connect(network, node, source).await {
        Ok(mut s) => echoes(&mut s, b"hello").await,
        Err(_) => false,
    }
}

#[test]
fn a_policy_pushed_at_ten_seconds_reaches_every_ztunnel() {
    let mut sim = sim();
    let network = SimNetwork::new();
    let shared = Shared::default();
    *shared.desired.lock().unwrap() = (1, cluster(""));
    build(&mut sim, &network, &shared);
    let observed = shared.clone();
    sim.client("traffic", async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            new_connection_works(&network, "node-a", "10.0.1.2").await,
            "web before the policy"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        // t = 10 s: DENY web.
        *observed.desired.lock().unwrap() = (2, cluster(&deny("cluster.local/ns/shop/sa/web")));
        let pushed = tokio::time::Instant::now();
        while observed
            .policies
            .iter()
            .any(|p| p.load(Ordering::SeqCst) != 1)
        {
            assert!(
                pushed.elapsed() < Duration::from_secs(1),
                "not every ztunnel got the policy within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !new_connection_works(&network, "node-a", "10.0.1.2").await,
            "web is denied now"
        );
        assert!(
            new_connection_works(&network, "node-c", "10.0.3.2").await,
            "curl is still allowed"
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn istiod_crash_and_restart_drop_no_connection() {
    let mut sim = sim();
    let network = SimNetwork::new();
    let shared = Shared::default();
    *shared.desired.lock().unwrap() = (1, cluster(""));
    build(&mut sim, &network, &shared);
    let failures = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    {
        let (failures, rounds, network) = (failures.clone(), rounds.clone(), network.clone());
        sim.client("traffic", async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut open = connect(&network, "node-a", "10.0.1.2").await?;
            loop {
                if !echoes(&mut open, b"open").await {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                if !new_connection_works(&network, "node-a", "10.0.1.2").await {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                rounds.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                if turmoil::sim_elapsed().unwrap_or_default() > Duration::from_secs(60) {
                    return Ok(());
                }
            }
        });
    }
    let run_until = |sim: &mut turmoil::Sim<'_>, t: u64| {
        while sim.elapsed() < Duration::from_secs(t) {
            sim.step().unwrap();
        }
    };
    run_until(&mut sim, 8);
    sim.crash(ISTIOD_HOSTNAME);
    run_until(&mut sim, 30);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "traffic failed while istiod was down"
    );
    sim.bounce(ISTIOD_HOSTNAME);
    // After the restart a change is pushed: the ztunnels' streams are the new istiod's.
    *shared.desired.lock().unwrap() = (2, cluster(&deny("cluster.local/ns/shop/sa/nobody")));
    run_until(&mut sim, 50);
    assert!(
        shared
            .policies
            .iter()
            .all(|p| p.load(Ordering::SeqCst) == 1),
        "ztunnels did not resync with the restarted istiod"
    );
    while !sim.step().unwrap() {}
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no connection may fail");
    let rounds = rounds.load(Ordering::SeqCst);
    // One round a second plus turmoil's per-message latency (up to 100 ms) from 3 s to 60 s.
    assert!(rounds >= 40, "only {rounds} rounds of traffic");
}

#[test]
#[ignore = "simulates a whole day: .ci/run runs it in release mode"]
fn certificates_rotate_at_half_life_for_a_day_and_the_root_rotates_without_a_failure() {
    const HOUR: Duration = Duration::from_secs(3600);
    let mut sim = sim_for(26 * HOUR, Duration::from_millis(100));
    let network = SimNetwork::new();
    let shared = Shared::default();
    *shared.desired.lock().unwrap() = (1, cluster(""));
    *shared.certificate_ttl.lock().unwrap() = 2 * HOUR;
    build(&mut sim, &network, &shared);
    let observed = shared.clone();
    sim.client("traffic", async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let first_bundle = observed.bundle.lock().unwrap().clone();
        let mut failures = Vec::new();
        let mut rounds = 0;
        let mut long_lived = connect(&network, "node-a", "10.0.1.2").await?;
        while turmoil::sim_elapsed().unwrap_or_default() < 24 * HOUR {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            if now >= 6 * HOUR
                && rounds > 0
                && observed.rotate.lock().unwrap().is_none()
                && observed.bundle.lock().unwrap().as_str() == first_bundle
            {
                // New root trusted now, signing after one certificate lifetime, the old one
                // trusted for one more lifetime after that.
                *observed.rotate.lock().unwrap() = Some((2 * HOUR, 2 * HOUR));
            }
            if !new_connection_works(&network, "node-a", "10.0.1.2").await {
                failures.push(format!("new connection at {now:?}"));
            }
            if !echoes(&mut long_lived, b"still here").await {
                failures.push(format!("long-lived connection at {now:?}"));
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        assert!(
            failures.is_empty(),
            "{} failures, the first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(rounds > 600, "{rounds} rounds");
        // Three identities, renewed every hour (half of two) for a day.
        let issued = observed.issued.load(Ordering::SeqCst);
        assert!(
            (3 * 23..=3 * 26).contains(&issued),
            "{issued} certificates issued"
        );
        let last_bundle = observed.bundle.lock().unwrap().clone();
        assert_ne!(last_bundle, first_bundle, "the root was rotated");
        assert_eq!(
            last_bundle.matches("BEGIN CERTIFICATE").count(),
            1,
            "the old root retired"
        );
        Ok(())
    });
    sim.run().unwrap();
}
