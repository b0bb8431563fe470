//! The same two-node topology inside turmoil, running the same `ztunnel::run` through the
//! simulated seams: SOCKS5 and capture on node-a, pod IPs routed to nodes, mTLS between them.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Entropy, Network, Seams, SimClock, SimNetwork};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, Config, LocalCaProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "10.0.1.2";
const ECHO: &str = "10.0.2.2";

fn yaml() -> String {
    format!(
        r#"
workloads:
- {{uid: web, name: web-0, namespace: shop, serviceAccount: web, trustDomain: cluster.local,
    workloadIps: ["{WEB}"], protocol: HBONE, node: node-a}}
- {{uid: echo, name: echo-0, namespace: shop, serviceAccount: echo, trustDomain: cluster.local,
    workloadIps: ["{ECHO}"], protocol: HBONE, node: node-b}}
"#
    )
}

fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

/// Builds the world: node-a and node-b running ztunnels, an echo app on node-b. Every second,
/// node-a's pooled HBONE connection count is stored in `pooled`.
fn world(sim: &mut turmoil::Sim<'_>, network: &SimNetwork) -> Arc<AtomicUsize> {
    let pooled = Arc::new(AtomicUsize::new(0));
    let ca = LocalCa::generate("cluster.local", epoch()).unwrap();
    let (root, key) = (ca.root_pem(), ca.key_pem().to_string());
    for node in ["node-a", "node-b"] {
        let network = network.clone();
        let (root, key) = (root.clone(), key.clone());
        let pooled = pooled.clone();
        sim.host(node, move || {
            let network = network.clone();
            let (root, key) = (root.clone(), key.clone());
            let pooled = pooled.clone();
            async move {
                let mut state = State::default();
                LocalConfig::parse(&yaml()).unwrap().apply_to(&mut state);
                let config = Config {
                    node_name: node.into(),
                    enable_socks5: true,
                    ..Config::default()
                };
                let ca = LocalCa::from_pem(&root, &key).unwrap();
                let provider = Arc::new(LocalCaProvider::new(
                    ca,
                    config.certificate_ttl,
                    Arc::new(SimClock),
                ));
                let seams = Seams {
                    network: Arc::new(network),
                    clock: Arc::new(SimClock),
                    entropy: Entropy::seeded(1),
                };
                let ztunnel = ztunnel::run(config, seams, StateHandle::new(state), provider)
                    .await
                    .unwrap();
                if node == "node-b" {
                    let listener = turmoil::net::TcpListener::bind("0.0.0.0:8080").await?;
                    loop {
                        let (s, _) = listener.accept().await?;
                        tokio::spawn(async move {
                            let (mut r, mut w) = s.into_split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                }
                loop {
                    pooled.store(ztunnel.pooled_connections(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    network.add_route(WEB.parse().unwrap(), sim.lookup("node-a"));
    network.add_route(ECHO.parse().unwrap(), sim.lookup("node-b"));
    pooled
}

fn sim<'a>() -> turmoil::Sim<'a> {
    turmoil::Builder::new()
        .epoch(epoch())
        .rng_seed(7)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(5))
        .build()
}

/// The web pod's captured connection to echo, as the node's redirection rules deliver it.
async fn captured_connect(network: &SimNetwork) -> std::io::Result<turmoil::net::TcpStream> {
    let node_a = turmoil::lookup("node-a");
    network
        .connect_redirected(
            Some(WEB.parse::<IpAddr>().unwrap()),
            SocketAddr::new(ECHO.parse().unwrap(), 8080),
            SocketAddr::new(node_a, 15001),
        )
        .await
}

/// The web pod's connection through node-a's SOCKS5 port to `target`.
async fn socks5_connect(
    network: &SimNetwork,
    target: SocketAddr,
) -> std::io::Result<turmoil::net::TcpStream> {
    let socks5 = SocketAddr::new(turmoil::lookup("node-a"), 15080);
    let mut s = network
        .connect_redirected(Some(WEB.parse::<IpAddr>().unwrap()), socks5, socks5)
        .await?;
    let IpAddr::V4(ip) = target.ip() else {
        panic!("IPv4 targets only")
    };
    let mut request = vec![5, 1, 0, 5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).await?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await?;
    assert_eq!(
        &reply[..4],
        &[5, 0, 5, 0],
        "SOCKS5 method and success replies"
    );
    Ok(s)
}

/// An HTTP/1.1 GET over the simulated network, the body as text.
async fn http_get(network: &SimNetwork, to: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = network.connect(None, to).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// A log sink shared with the subscriber that writes into it.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn same_topology_under_turmoil() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            dataplane::logging::DEFAULT_FILTER,
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .event_format(dataplane::logging::UpstreamFormat)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut sim = sim();
        let network = SimNetwork::new();
        let _pooled = world(&mut sim, &network);
        sim.client("web", async move {
            let echo = SocketAddr::new(ECHO.parse().unwrap(), 8080);
            // injected through SOCKS5, as on loopback
            let mut s = socks5_connect(&network, echo).await?;
            s.write_all(b"hello from the simulator").await?;
            let mut back = [0u8; 24];
            s.read_exact(&mut back).await?;
            assert_eq!(&back, b"hello from the simulator");
            drop(s);
            // and captured, with the original destination from the network seam
            let mut s = captured_connect(&network).await?;
            s.write_all(b"captured").await?;
            let mut back = [0u8; 8];
            s.read_exact(&mut back).await?;
            assert_eq!(&back, b"captured");
            drop(s);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // node-b counted both as mTLS from web's verified identity
            let node_b = turmoil::lookup("node-b");
            let metrics = http_get(&network, SocketAddr::new(node_b, 15020), "/metrics").await?;
            let opened = metrics
                .lines()
                .find(|l| {
                    l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                        && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"")
                        && l.contains("connection_security_policy=\"mutual_tls\"")
                })
                .unwrap_or_else(|| {
                    panic!("no mTLS connection from web in node-b's metrics:\n{metrics}")
                });
            assert!(opened.ends_with(" 2"), "{opened}");
            Ok(())
        });
        sim.run().unwrap();
    });
    // node-b's access log names the client's verified identity, for each connection
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let inbound: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("\taccess\tconnection complete\t") && l.contains("direction=\"inbound\"")
        })
        .collect();
    assert_eq!(inbound.len(), 2, "{logs}");
    for line in inbound {
        assert!(
            line.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/web\"")
                && line.contains(&format!("src.addr={WEB}:")),
            "{line}"
        );
    }
}

#[test]
fn keepalive_detects_a_partitioned_peer() {
    let mut sim = sim();
    let network = SimNetwork::new();
    let _pooled = world(&mut sim, &network);
    sim.client("web", async move {
        let mut s = captured_connect(&network).await?;
        s.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await?;
        // Cut the nodes apart: the tunnel's streams hang silently, so only HTTP/2 PINGs can
        // tell the peer is gone (first after 10 s, unanswered for 20 s).
        turmoil::partition("node-a", "node-b");
        let cut = tokio::time::Instant::now();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection not closed after the partition: {read:?}"
        );
        let waited = cut.elapsed();
        assert!(
            waited >= Duration::from_secs(20) && waited <= Duration::from_secs(35),
            "dead peer detected after {waited:?}"
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn idle_pooled_connections_are_released() {
    let mut sim = sim();
    let network = SimNetwork::new();
    let pooled = world(&mut sim, &network);
    sim.client("web", async move {
        let mut s = captured_connect(&network).await?;
        s.write_all(b"once").await?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await?;
        drop(s);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            pooled.load(Ordering::SeqCst),
            1,
            "the HBONE connection stays pooled"
        );
        tokio::time::sleep(Duration::from_secs(4 * 60)).await;
        assert_eq!(
            pooled.load(Ordering::SeqCst),
            1,
            "not yet idle for 5 minutes"
        );
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(
            pooled.load(Ordering::SeqCst),
            0,
            "released after 5 minutes idle"
        );
        Ok(())
    });
    sim.run().unwrap();
}
