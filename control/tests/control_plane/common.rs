//! Fixtures: an istiod and ztunnels fed by it on loopback addresses, an echo server, SOCKS5.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use control::ca::CertificateAuthority;
use control::istiod::{self, Istiod, IstiodConfig};
use control::snapshot::Snapshot;
use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, Seams, SystemClock};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, AuthToken, CaClient, Config, ControlPlaneClient, Ztunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

/// A fresh 127.78.n.0 block per test, so tests run in parallel on fixed ports.
pub fn subnet() -> [u8; 3] {
    [127, 78, NEXT_SUBNET.fetch_add(1, Ordering::Relaxed)]
}

pub fn ip(subnet: [u8; 3], host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], host))
}

pub const ECHO_PORT: u16 = 8080;
pub const TOKEN_SECRET: [u8; 32] = [42; 32];

/// The cluster as ztunnels should see it: web (node-a, .2) and echo (node-b, .3, service VIP
/// .100:80) in `shop`, and `policies` (local-config YAML) appended.
pub fn snapshot(subnet: [u8; 3], policies: &str) -> Snapshot {
    let yaml = format!(
        r#"
workloads:
- uid: Kubernetes//Pod/shop/web-0
  name: web-0
  namespace: shop
  serviceAccount: web
  trustDomain: cluster.local
  workloadIps: ["{a}"]
  protocol: HBONE
  node: node-a
- uid: Kubernetes//Pod/shop/echo-0
  name: echo-0
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["{b}"]
  protocol: HBONE
  node: node-b
  authorizationPolicies: ["shop/echo-policy"]
  services:
    "shop/echo.shop.svc.cluster.local": {{80: {ECHO_PORT}}}
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc.cluster.local
  vips: ["/{vip}"]
  ports: {{80: {ECHO_PORT}}}
{policies}"#,
        a = ip(subnet, 2),
        b = ip(subnet, 3),
        vip = ip(subnet, 100),
    );
    let mut state = State::default();
    LocalConfig::parse(&yaml).unwrap().apply_to(&mut state);
    Snapshot {
        workloads: state
            .workloads()
            .map(|w| (w.uid.clone(), (**w).clone()))
            .collect(),
        services: state.services().map(|s| (s.key(), (**s).clone())).collect(),
        policies: state.policies().map(|p| (p.key(), (**p).clone())).collect(),
        waypoints: Default::default(),
        waypoint_proxies: Default::default(),
    }
}

/// An ALLOW policy on echo admitting only `principal`.
pub fn allow_only(principal: &str) -> String {
    format!(
        r#"policies:
- name: echo-policy
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact "{principal}"]
"#
    )
}

pub fn new_ca() -> LocalCa {
    LocalCa::generate("cluster.local", SystemClock.now()).unwrap()
}

/// Starts istiod on `<subnet>.1` (ports 15010/15012) signing with `root`.
pub async fn start_istiod(subnet: [u8; 3], root: &LocalCa) -> Istiod {
    start_istiod_planned(subnet, root, dataplane::DescriptorPlan::default()).await
}

/// [`start_istiod`], sharing out `descriptors` as the binary would its own limit.
pub async fn start_istiod_planned(
    subnet: [u8; 3],
    root: &LocalCa,
    descriptors: dataplane::DescriptorPlan,
) -> Istiod {
    let root = LocalCa::from_pem(&root.root_pem(), root.key_pem()).unwrap();
    let config = IstiodConfig {
        listen_ip: ip(subnet, 1),
        handshake_timeout: Duration::from_secs(1),
        descriptors,
        ..IstiodConfig::default()
    };
    let authority = CertificateAuthority::new(root, "cluster.local", config.certificate_ttl);
    istiod::run(config, Seams::real(1), authority, &TOKEN_SECRET)
        .await
        .unwrap()
}

/// Starts the ztunnel for `node` on `listen`, with istiod at `<subnet>.1:15012` as its only
/// source of state and certificates.
pub async fn start_ztunnel(
    subnet: [u8; 3],
    node: &str,
    listen: IpAddr,
    root_pem: &str,
    token: String,
) -> Ztunnel {
    let address = format!("https://{}:15012", ip(subnet, 1));
    let config = Config {
        node_name: node.into(),
        listen_ip: listen,
        enable_socks5: true,
        handshake_timeout: Duration::from_secs(2),
        drain_deadline: Duration::from_millis(500),
        xds_address: Some(address.clone()),
        ca_address: Some(address.clone()),
        xds_root_ca: root_pem.to_string(),
        ca_root_ca: root_pem.to_string(),
        auth_token: Some(AuthToken::Literal(token)),
        pod_name: format!("ztunnel-{node}"),
        pod_namespace: "istio-system".into(),
        instance_ip: listen.to_string(),
        ..Config::default()
    };
    let seams = Seams::real(7);
    let ca = ControlPlaneClient::new(
        &address,
        root_pem,
        config.auth_token.clone(),
        &config.cluster_id,
        seams.network.clone(),
        seams.clock.clone(),
    )
    .unwrap();
    let certificates = Arc::new(CaClient::new(ca, config.certificate_ttl));
    ztunnel::run(config, seams, StateHandle::default(), certificates)
        .await
        .unwrap()
}

/// Waits until `condition` holds, polling every 20 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// A TCP echo server on `addr`.
pub async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// SOCKS5 CONNECT through `proxy` to `target` from `source`: the reply code and the stream.
pub async fn socks5(
    proxy: SocketAddr,
    source: IpAddr,
    target: SocketAddr,
) -> (u8, Option<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await.unwrap();
    let IpAddr::V4(v4) = target.ip() else {
        panic!("v4 only")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    match s.read_exact(&mut reply).await {
        Ok(_) => (reply[1], (reply[1] == 0).then_some(s)),
        Err(_) => (255, None),
    }
}

/// Writes `msg` and reads as many bytes back.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(back)
}

/// Client (web, node-a) → echo through the mesh: true when bytes come back.
pub async fn web_reaches_echo(subnet: [u8; 3], client: &Ztunnel) -> bool {
    let Some(socks) = client.addresses().socks5 else {
        return false;
    };
    let vip = SocketAddr::new(ip(subnet, 100), 80);
    match socks5(socks, ip(subnet, 2), vip).await {
        (0, Some(mut s)) => round_trip(&mut s, b"ping")
            .await
            .is_ok_and(|b| b == b"ping"),
        _ => false,
    }
}
