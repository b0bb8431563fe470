//! Shared fixtures: a two-node topology on loopback, an echo server, a SOCKS5 client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use dataplane::DescriptorPlan;
use dataplane::identity::{Identity, LocalCa};
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, ManualClock, Seams, SystemClock};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, Config, LocalCaProvider, Ztunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);

/// A fresh 127.x.y.0 block per test so tests can run in parallel on fixed ports.
pub fn subnet() -> [u8; 3] {
    let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
    [127, 77, n]
}

pub fn ip(subnet: [u8; 3], host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], host))
}

pub const ECHO_PORT: u16 = 8080;

/// Local-config YAML for: `client` (shop/web) on node-a at .2, `server` (shop/echo) on node-b
/// at .3, with `policies` appended verbatim.
pub fn topology_yaml(subnet: [u8; 3], policies: &str) -> String {
    let a = ip(subnet, 2);
    let b = ip(subnet, 3);
    format!(
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
  workloadName: web
  canonicalName: web
- uid: Kubernetes//Pod/shop/echo-0
  name: echo-0
  namespace: shop
  serviceAccount: echo
  trustDomain: cluster.local
  workloadIps: ["{b}"]
  protocol: HBONE
  node: node-b
  workloadName: echo
  canonicalName: echo
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
        vip = ip(subnet, 100),
    )
}

pub fn state(yaml: &str) -> StateHandle {
    let mut state = State::default();
    LocalConfig::parse(yaml).unwrap().apply_to(&mut state);
    StateHandle::new(state)
}

/// Starts a ztunnel for `node` listening on `listen`.
pub async fn start(
    node: &str,
    listen: IpAddr,
    state: StateHandle,
    ca: &Arc<LocalCa>,
    clock: Arc<dyn Clock>,
) -> Ztunnel {
    start_planned(node, listen, state, ca, clock, DescriptorPlan::default()).await
}

/// [`start`], sharing out `descriptors` as the binary would its own limit.
pub async fn start_planned(
    node: &str,
    listen: IpAddr,
    state: StateHandle,
    ca: &Arc<LocalCa>,
    clock: Arc<dyn Clock>,
    descriptors: DescriptorPlan,
) -> Ztunnel {
    let config = Config {
        node_name: node.into(),
        listen_ip: listen,
        enable_socks5: true,
        handshake_timeout: Duration::from_secs(2),
        drain_deadline: Duration::from_millis(500),
        descriptors,
        ..Config::default()
    };
    let ca = LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap();
    let provider = Arc::new(LocalCaProvider::new(
        ca,
        config.certificate_ttl,
        clock.clone(),
    ));
    // A seed of its own for each ztunnel, as the binary draws one: trace ids must not repeat
    // across the tests' ztunnels (they share one log).
    let seed = match listen {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) as u64,
    };
    let seams = Seams {
        clock,
        ..Seams::real(seed)
    };
    ztunnel::run(config, seams, state, provider).await.unwrap()
}

pub fn new_ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::generate("cluster.local", SystemClock.now()).unwrap())
}

pub fn manual_clock() -> ManualClock {
    ManualClock::new(Arc::new(SystemClock))
}

/// A TCP echo server on `addr`; runs until the test's runtime ends.
pub async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// Opens a SOCKS5 CONNECT through `proxy` to `target`, from `source`. Returns the reply code
/// and, on success, the stream.
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
    assert_eq!(method, [5, 0]);
    let IpAddr::V4(v4) = target.ip() else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    match s.read_exact(&mut reply).await {
        Ok(_) => (reply[1], (reply[1] == 0).then_some(s)),
        Err(_) => (255, None),
    }
}

/// Writes `msg` and reads back as many bytes, or fails on EOF.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(back)
}

/// A client workload's certificate, for tests that speak HBONE by hand.
pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

/// One HTTP/1.1 request on a fresh connection; the status and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// Everything the tests' ztunnels log, in upstream's format, for assertions on log lines.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the log capture (once per test binary).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                dataplane::logging::DEFAULT_FILTER,
            ))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .event_format(dataplane::logging::UpstreamFormat)
            .try_init();
    });
}

/// Waits up to 5 s for a captured log line containing every one of `needles`.
pub async fn log_line(needles: &[&str]) -> String {
    for _ in 0..100 {
        let found = {
            let logs = LOGS.lock().unwrap();
            String::from_utf8_lossy(&logs)
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        };
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needles:?}");
}

/// A hand-rolled HBONE client connection (TLS + HTTP/2) presenting `cert`, for tests that
/// need to misbehave. `expect` is the server identity the client accepts.
pub async fn raw_hbone(
    source: IpAddr,
    destination: SocketAddr,
    cert: &dataplane::identity::WorkloadCertificate,
    expect: Identity,
    clock: Arc<dyn Clock>,
) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
    let tls = dataplane::identity::client_config(cert, vec![expect], clock).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket
        .connect(destination)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::IpAddress(destination.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Sends a request on a raw HBONE connection; the status or the error text.
pub async fn raw_request(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> Result<u16, String> {
    let mut ready = send.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, _body) = ready
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

pub fn connect_request(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

/// A two-node topology, running, with an echo server behind node-b.
pub struct Pair {
    pub net: [u8; 3],
    pub ca: Arc<LocalCa>,
    pub clock: ManualClock,
    pub a: Ztunnel,
    pub b: Ztunnel,
}

impl Pair {
    pub async fn start(policies: &str) -> Pair {
        Pair::start_planned(policies, DescriptorPlan::default()).await
    }

    /// [`Pair::start`], both ztunnels sharing out `descriptors` as the binary would its own
    /// limit.
    pub async fn start_planned(policies: &str, descriptors: DescriptorPlan) -> Pair {
        capture_logs();
        let net = subnet();
        let yaml = topology_yaml(net, policies);
        let ca = new_ca();
        let clock = manual_clock();
        let a = start_planned(
            "node-a",
            ip(net, 2),
            state(&yaml),
            &ca,
            Arc::new(clock.clone()),
            descriptors,
        )
        .await;
        let b = start_planned(
            "node-b",
            ip(net, 3),
            state(&yaml),
            &ca,
            Arc::new(clock.clone()),
            descriptors,
        )
        .await;
        echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await;
        Pair {
            net,
            ca,
            clock,
            a,
            b,
        }
    }

    pub fn echo(&self) -> SocketAddr {
        SocketAddr::new(ip(self.net, 3), ECHO_PORT)
    }

    pub fn echo_hbone(&self) -> SocketAddr {
        SocketAddr::new(ip(self.net, 3), 15008)
    }

    /// SOCKS5 from the web workload through node-a to `target`.
    pub async fn connect(&self, target: SocketAddr) -> (u8, Option<TcpStream>) {
        socks5(self.a.addresses().socks5.unwrap(), ip(self.net, 2), target).await
    }

    /// A certificate for `id` from this pair's CA, valid for a day from the pair's clock.
    pub fn cert(&self, id: &Identity) -> dataplane::identity::WorkloadCertificate {
        self.ca
            .issue(id, Duration::from_secs(86_400), self.clock.now())
            .unwrap()
    }

    /// A hand-rolled HBONE connection from web's address to echo's 15008, presenting `id`.
    pub async fn raw_as(
        &self,
        id: &Identity,
    ) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
        let cert = self.cert(id);
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        raw_hbone(
            ip(self.net, 2),
            self.echo_hbone(),
            &cert,
            identity("shop", "echo"),
            clock,
        )
        .await
    }

    /// A tunnel to `target` through node-a's SOCKS5, which must have succeeded.
    pub async fn tunnel(&self, target: SocketAddr) -> TcpStream {
        let (code, stream) = self.connect(target).await;
        assert_eq!(code, 0, "SOCKS5 reply for {target}");
        stream.expect("a stream with the success reply")
    }

    /// Proves the server still serves a well-behaved client.
    pub async fn still_serves(&self) {
        let mut s = self.tunnel(self.echo()).await;
        assert_eq!(
            round_trip(&mut s, b"still here").await.unwrap(),
            b"still here"
        );
    }
}

/// Whether the server closes `stream` within `within`: EOF or a reset.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
