//! Fixtures for the HBONE benchmarks: two in-process ztunnels on loopback (node-a runs the
//! client workload, node-b the server workload), the echo and sink servers behind them, a
//! dialer that reaches those servers either directly (plain TCP) or through node-a's SOCKS5
//! port (HBONE), and a global allocator that can count allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, Seams, SystemClock};
use dataplane::state::{State, StateHandle};
use dataplane::ztunnel::{self, Config, LocalCaProvider, Ztunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The benchmark's own 127.x.y.0 block, apart from the integration tests' 127.77.n.0.
pub const SUBNET: [u8; 3] = [127, 99, 0];
/// Node-a's address, which is also the client workload's.
pub const CLIENT_HOST: u8 = 2;
/// Node-b's address, which is also the server workload's.
pub const SERVER_HOST: u8 = 3;
/// Echoes every byte back.
pub const ECHO_PORT: u16 = 8080;
/// Discards everything, then answers the byte count (8 bytes, big-endian) and closes.
pub const SINK_PORT: u16 = 8081;

pub fn ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host))
}

/// Local-config YAML: `web-0` (shop/web) on node-a, `echo-0` (shop/echo) on node-b, both
/// HBONE, no policies (everything allowed).
pub fn topology_yaml() -> String {
    let a = ip(CLIENT_HOST);
    let b = ip(SERVER_HOST);
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
"#
    )
}

/// Manifests of a cluster of `workloads` pods, as a user would `kubectl apply` them: 50
/// nodes, `workloads / 100` Deployments of 100 replicas in ten ambient namespaces, a Service
/// per Deployment, a policy per namespace. Shared by the control-plane benchmarks, which load
/// it into a store in-process or hand it to the `istiod` binary as its `--config-dir`.
pub fn cluster_manifests(workloads: usize) -> String {
    let mut y = String::new();
    for n in 0..50 {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-{n:02}}}\nspec: {{podCIDR: 10.{}.{}.0/20}}\n---\n",
            100 + n / 16,
            (n % 16) * 16
        ));
    }
    for ns in 0..10 {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
        ));
        y.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: same-namespace, namespace: ns{ns}}}\n\
             spec: {{action: ALLOW, rules: [{{from: [{{source: {{namespaces: [ns{ns}]}}}}]}}]}}\n---\n"
        ));
    }
    for d in 0..workloads / 100 {
        let ns = d % 10;
        y.push_str(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{d}, namespace: ns{ns}}}\n\
             spec: {{replicas: 100, selector: {{matchLabels: {{app: app{d}}}}}, template: {{metadata: {{labels: {{app: app{d}}}}}, \
             spec: {{serviceAccountName: app{d}, containers: [{{name: c, image: i, ports: [{{containerPort: 8080}}]}}]}}}}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: app{d}, namespace: ns{ns}}}\n\
             spec: {{selector: {{app: app{d}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n"
        ));
    }
    y
}

fn state(yaml: &str) -> StateHandle {
    let mut state = State::default();
    LocalConfig::parse(yaml)
        .expect("benchmark topology parses")
        .apply_to(&mut state);
    StateHandle::new(state)
}

async fn start_ztunnel(node: &str, listen: IpAddr, yaml: &str, ca: &LocalCa) -> Ztunnel {
    let config = Config {
        node_name: node.into(),
        listen_ip: listen,
        enable_socks5: true,
        handshake_timeout: Duration::from_secs(5),
        drain_deadline: Duration::from_millis(200),
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ca = LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).expect("CA round-trips");
    let provider = Arc::new(LocalCaProvider::new(
        ca,
        config.certificate_ttl,
        clock.clone(),
    ));
    let seams = Seams {
        clock,
        ..Seams::real(7)
    };
    ztunnel::run(config, seams, state(yaml), provider)
        .await
        .unwrap_or_else(|err| panic!("{node} did not start: {err}"))
}

/// Both ztunnels and both servers, running on the current tokio runtime.
pub struct Testbed {
    pub node_a: Ztunnel,
    pub node_b: Ztunnel,
}

impl Testbed {
    /// Starts node-a, node-b, the echo server and the sink server. Must run inside a tokio
    /// runtime; everything is spawned onto it.
    pub async fn start() -> io::Result<Testbed> {
        let yaml = topology_yaml();
        let ca = LocalCa::generate("cluster.local", SystemClock.now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let node_a = start_ztunnel("node-a", ip(CLIENT_HOST), &yaml, &ca).await;
        let node_b = start_ztunnel("node-b", ip(SERVER_HOST), &yaml, &ca).await;
        spawn_echo_server(SocketAddr::new(ip(SERVER_HOST), ECHO_PORT)).await?;
        spawn_sink_server(SocketAddr::new(ip(SERVER_HOST), SINK_PORT)).await?;
        Ok(Testbed { node_a, node_b })
    }

    pub fn echo_addr(&self) -> SocketAddr {
        SocketAddr::new(ip(SERVER_HOST), ECHO_PORT)
    }

    pub fn sink_addr(&self) -> SocketAddr {
        SocketAddr::new(ip(SERVER_HOST), SINK_PORT)
    }

    /// A dialer for `path`.
    pub fn dialer(&self, path: Path) -> Dialer {
        Dialer {
            path,
            source: ip(CLIENT_HOST),
            socks5: self
                .node_a
                .addresses()
                .socks5
                .expect("node-a has SOCKS5 enabled"),
        }
    }

    pub async fn shutdown(self) {
        self.node_a.shutdown().await;
        self.node_b.shutdown().await;
    }
}

/// The echo server: every connection gets its bytes back until it half-closes.
pub async fn spawn_echo_server(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

/// The sink server: reads and discards until EOF, then answers how many bytes it got.
pub async fn spawn_sink_server(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(())
}

/// How a client reaches a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to the server over loopback TCP.
    Plain,
    /// SOCKS5 into node-a, HBONE (HTTP/2 CONNECT over mTLS) to node-b, TCP to the server.
    Hbone,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Plain => "plain",
            Path::Hbone => "hbone",
        }
    }
}

/// Opens client connections along one [`Path`], always from the client workload's IP.
#[derive(Debug, Clone, Copy)]
pub struct Dialer {
    pub path: Path,
    pub source: IpAddr,
    pub socks5: SocketAddr,
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind the address now, pick the port at connect time, so the
/// kernel can reuse ports by 4-tuple (and reuse loopback TIME_WAIT ones) under a high
/// connection rate instead of running out of ephemeral ports.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
    }
    const IPPROTO_IP: i32 = 0;
    const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
    let one: i32 = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the length given.
    unsafe {
        setsockopt(
            socket.as_raw_fd(),
            IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const i32).cast(),
            4,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) {}

impl Dialer {
    async fn tcp(&self, to: SocketAddr) -> io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(self.source, 0))?;
        socket.set_nodelay(true)?;
        socket.connect(to).await
    }

    /// A connection to `target`, ready for payload.
    pub async fn connect(&self, target: SocketAddr) -> io::Result<TcpStream> {
        match self.path {
            Path::Plain => self.tcp(target).await,
            Path::Hbone => {
                let mut s = self.tcp(self.socks5).await?;
                socks5_handshake(&mut s, target).await?;
                Ok(s)
            }
        }
    }
}

/// A SOCKS5 no-auth CONNECT to an IPv4 `target`, greeting and request in one write (as
/// optimistic clients send them: the only method offered is the one the ztunnel takes), then
/// the method and the reply. Waiting for the method before sending the request would add a
/// round trip through the ztunnel that captured traffic, which upstream's figures measure,
/// does not have: a captured application sends its bytes as soon as `connect` returns.
pub async fn socks5_handshake(s: &mut TcpStream, target: SocketAddr) -> io::Result<()> {
    let IpAddr::V4(v4) = target.ip() else {
        return Err(io::Error::other("IPv4 targets only"));
    };
    let o = v4.octets();
    let p = target.port().to_be_bytes();
    s.write_all(&[5, 1, 0, 5, 1, 0, 1, o[0], o[1], o[2], o[3], p[0], p[1]])
        .await?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await?;
    if method != [5, 0] {
        return Err(io::Error::other(format!("SOCKS5 method reply {method:?}")));
    }
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(io::Error::other(format!(
            "SOCKS5 CONNECT to {target} answered {}",
            reply[1]
        )));
    }
    Ok(())
}

/// Writes `total` bytes (repeating `chunk`), half-closes, and waits for the sink's count.
pub async fn bulk_send(s: &mut TcpStream, chunk: &[u8], total: u64) -> io::Result<()> {
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let got = u64::from_be_bytes(count);
    if got != total {
        return Err(io::Error::other(format!("sink got {got} bytes of {total}")));
    }
    Ok(())
}

/// Sends `request` and reads as many bytes back.
pub async fn round_trip(s: &mut TcpStream, request: &[u8], response: &mut [u8]) -> io::Result<()> {
    s.write_all(request).await?;
    s.read_exact(&mut response[..request.len()]).await?;
    Ok(())
}

/// A new connection to the echo server, one byte there and back, closed.
pub async fn connect_round_trip(dialer: &Dialer, echo: SocketAddr) -> io::Result<()> {
    let mut s = dialer.connect(echo).await?;
    s.write_all(&[0x2a]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    drop(s);
    Ok(())
}

/// A global allocator over [`System`] that counts allocations while counting is switched
/// on. Switched off, it costs one uncontended relaxed load per call, so timed runs are not
/// disturbed; counts are taken in separate runs.
pub struct CountingAlloc;

#[repr(align(128))]
struct Counters {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

#[repr(align(128))]
struct Switch(AtomicBool);

static COUNTING: Switch = Switch(AtomicBool::new(false));
static COUNTERS: Counters = Counters {
    allocations: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

impl CountingAlloc {
    #[inline]
    fn record(size: usize) {
        if COUNTING.0.load(Ordering::Relaxed) {
            COUNTERS.allocations.fetch_add(1, Ordering::Relaxed);
            COUNTERS.bytes.fetch_add(size as u64, Ordering::Relaxed);
        }
    }

    /// Resets the counters and starts counting.
    pub fn start() {
        COUNTERS.allocations.store(0, Ordering::Relaxed);
        COUNTERS.bytes.store(0, Ordering::Relaxed);
        COUNTING.0.store(true, Ordering::SeqCst);
    }

    /// Stops counting; returns (allocations, bytes allocated) since [`CountingAlloc::start`].
    pub fn stop() -> (u64, u64) {
        COUNTING.0.store(false, Ordering::SeqCst);
        (
            COUNTERS.allocations.load(Ordering::Relaxed),
            COUNTERS.bytes.load(Ordering::Relaxed),
        )
    }
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The workspace's `target` directory and this benchmark's profile (`release` or `debug`),
/// from where the running benchmark binary sits (`target/<profile>/deps/xds_memory-…`).
pub fn target_and_profile() -> (PathBuf, String) {
    let fallback = || {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        (target, "release".to_string())
    };
    let Ok(exe) = std::env::current_exe() else {
        return fallback();
    };
    let Some(profile_dir) = exe.parent().and_then(std::path::Path::parent) else {
        return fallback();
    };
    match (
        profile_dir.parent(),
        profile_dir.file_name().and_then(|n| n.to_str()),
    ) {
        (Some(target), Some(profile)) => (target.to_path_buf(), profile.to_string()),
        _ => fallback(),
    }
}

/// The istiod binary to measure: `BENCH_ISTIOD`, or this profile's, built now so it is the
/// current source's.
pub fn istiod_binary() -> Result<PathBuf, String> {
    built_binary("control", "istiod", "BENCH_ISTIOD")
}

/// Binary `bin` of `package`: the path in environment variable `var` when set, or this
/// profile's, built now so it is the current source's.
pub fn built_binary(package: &str, bin: &str, var: &str) -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var(var) {
        return Ok(PathBuf::from(path));
    }
    let (target, profile) = target_and_profile();
    harness::build::cargo_build(&["-p", package, "--bin", bin], &profile)?;
    Ok(target.join(profile).join(bin))
}

/// `VmRSS` of `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
