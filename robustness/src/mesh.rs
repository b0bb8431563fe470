//! The small mesh every attack runs against: the real `istiod` serving a manifest directory
//! (web on node-a, echo on node-b, the echo Service and a policy that lets only web call it),
//! and two real `ztunnel` processes with no local config, fed over xDS and given their
//! certificates by istiod's CA, each on its own loopback address. The echo backend is a task
//! of this runner.
//!
//! Addresses in the mesh's `/24` (`127.x.y.0`): istiod `.1`, node-a and web `.2`, node-b
//! and echo `.3`, the echo Service's VIP `.100`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::limits::{self, NoFile};
use crate::procfs::{self, Usage};

/// The echo backend's port on node-b's address, and the Service port in front of it.
pub const ECHO_PORT: u16 = 8080;
pub const SERVICE_PORT: u16 = 80;
/// The trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The ztunnel's listeners (upstream's ports) and istiod's.
pub mod ports {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    pub const HBONE: u16 = 15008;
    pub const SOCKS5: u16 = 15080;
    pub const READINESS: u16 = 15021;
    pub const METRICS: u16 = 15020;
    pub const ADMIN: u16 = 15000;
    pub const XDS_PLAINTEXT: u16 = 15010;
    pub const XDS_TLS: u16 = 15012;
    /// Every ztunnel listener.
    pub const ZTUNNEL: [u16; 7] = [
        OUTBOUND,
        INBOUND_PLAINTEXT,
        HBONE,
        SOCKS5,
        READINESS,
        METRICS,
        ADMIN,
    ];
    /// The ztunnel listeners that speak HTTP/1.1 to anyone who connects.
    pub const HTTP: [u16; 3] = [ADMIN, METRICS, READINESS];
    pub const ISTIOD: [u16; 2] = [XDS_PLAINTEXT, XDS_TLS];
}

/// How the processes are started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `ztunnel` and `istiod` are.
    pub bin_dir: PathBuf,
    /// The ztunnels' `HANDSHAKE_TIMEOUT` (the deadline for a silent or slow client on every
    /// listener); `None` keeps the binary's default (10 s).
    pub handshake_timeout: Option<Duration>,
    /// The descriptor limits the processes get: the environment's default, not the runner's.
    pub nofile: NoFile,
    /// The mesh's `/24`.
    pub net: [u8; 3],
    /// Where the manifests, state and logs go.
    pub dir: PathBuf,
}

/// One process of the mesh, killed when dropped.
pub struct Process {
    pub name: &'static str,
    pub pid: u32,
    child: Mutex<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Whether it is still running (not exited, not a zombie waiting for us).
    pub fn alive(&self) -> Result<(), String> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(err) => Err(format!("{}: {err}", self.name)),
        }
    }

    /// Sends `signal` to it (our own child: its pid cannot have been reused before we reap it).
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.pid).map_err(std::io::Error::other)?;
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `within` for it to exit; its status, or `None` if still running.
    pub async fn exited_within(&self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = {
                let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
                child.try_wait().ok().flatten()
            };
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        procfs::usage(self.pid)
    }

    /// The last `n` lines of its log, for a failure report.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The running mesh.
pub struct Mesh {
    pub options: Options,
    pub istiod: Process,
    pub node_a: Process,
    pub node_b: Process,
    /// istiod's root, which its serving certificate and every workload certificate chain to.
    pub root_pem: String,
    /// The caller token istiod issued for node-a (node-b's stays with its ztunnel).
    pub token_a: String,
    pub state_dir: PathBuf,
    echo: tokio::task::JoinHandle<()>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.echo.abort();
    }
}

pub fn ip(net: [u8; 3], host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], host))
}

impl Mesh {
    pub fn ip(&self, host: u8) -> IpAddr {
        ip(self.options.net, host)
    }
    pub fn istiod_ip(&self) -> IpAddr {
        self.ip(1)
    }
    /// node-a's listen address, which is also web's pod address.
    pub fn node_a_ip(&self) -> IpAddr {
        self.ip(2)
    }
    /// node-b's listen address, which is also echo's pod address.
    pub fn node_b_ip(&self) -> IpAddr {
        self.ip(3)
    }
    pub fn echo(&self) -> SocketAddr {
        SocketAddr::new(self.node_b_ip(), ECHO_PORT)
    }
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(self.ip(100), SERVICE_PORT)
    }
    /// Where istiod wrote its root certificate (what the ztunnels trust).
    pub fn root_path(&self) -> PathBuf {
        self.options.dir.join("root-cert.pem")
    }
    /// The file of manifests istiod serves.
    pub fn config_path(&self) -> PathBuf {
        self.options.dir.join("cluster.yaml")
    }
    pub fn processes(&self) -> [&Process; 3] {
        [&self.istiod, &self.node_a, &self.node_b]
    }
    /// Every listener of the mesh: (process name, address).
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut all = Vec::new();
        for (name, ip) in [("node-a", self.node_a_ip()), ("node-b", self.node_b_ip())] {
            for port in ports::ZTUNNEL {
                all.push((name, SocketAddr::new(ip, port)));
            }
        }
        for port in ports::ISTIOD {
            all.push(("istiod", SocketAddr::new(self.istiod_ip(), port)));
        }
        all
    }

    /// Starts istiod, waits for its root, starts both ztunnels and the echo backend, and
    /// waits until both ztunnels are ready and web reaches echo through the mesh.
    pub async fn start(options: Options) -> anyhow::Result<Mesh> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let net = options.net;
        let config = dir.join("cluster.yaml");
        std::fs::write(&config, manifests(net))?;
        let state_dir = dir.join("state");
        let istiod_bin = options.bin_dir.join("istiod");
        let token_a = issue_token(&istiod_bin, &state_dir, "node-a")?;
        let token_b = issue_token(&istiod_bin, &state_dir, "node-b")?;
        let root_path = dir.join("root-cert.pem");
        let _ = std::fs::remove_file(&root_path);
        let mut command = Command::new(&istiod_bin);
        command
            .arg("--config-dir")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--listen", &ip(net, 1).to_string()])
            .arg("--write-root-cert")
            .arg(&root_path);
        let istiod = spawn(&options, "istiod", command)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let root_pem = loop {
            if let Ok(pem) = std::fs::read_to_string(&root_path)
                && pem.contains("END CERTIFICATE")
            {
                break pem;
            }
            istiod.alive().map_err(anyhow::Error::msg)?;
            if Instant::now() > deadline {
                bail!("istiod wrote no root certificate:\n{}", istiod.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let echo = echo_server(SocketAddr::new(ip(net, 3), ECHO_PORT)).await?;
        let node_a = spawn_ztunnel(&options, "node-a", ip(net, 2), &root_path, &token_a)?;
        let node_b = spawn_ztunnel(&options, "node-b", ip(net, 3), &root_path, &token_b)?;
        let mesh = Mesh {
            options,
            istiod,
            node_a,
            node_b,
            root_pem,
            token_a,
            state_dir,
            echo,
        };
        for (p, ip) in [(&mesh.node_a, ip(net, 2)), (&mesh.node_b, ip(net, 3))] {
            wait_ready(p, SocketAddr::new(ip, ports::READINESS)).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match crate::probe::web_reaches_echo(&mesh).await {
                Ok(()) => break,
                Err(err) if Instant::now() > deadline => {
                    bail!("web never reached echo through the mesh: {err}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(mesh)
    }
}

/// Starts `command` as `name` with the default descriptor limits, its stderr in `name.log`.
pub fn spawn(
    options: &Options,
    name: &'static str,
    mut command: Command,
) -> anyhow::Result<Process> {
    let log = options.dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    limits::restore_for_child(&mut command, options.nofile);
    let child = command
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
    Ok(Process {
        name,
        pid: child.id(),
        child: Mutex::new(child),
        log,
    })
}

/// Starts a ztunnel for `node`, listening on `listen`, fed by the mesh's istiod.
fn spawn_ztunnel(
    options: &Options,
    node: &'static str,
    listen: IpAddr,
    root: &Path,
    token: &str,
) -> anyhow::Result<Process> {
    spawn(
        options,
        node,
        ztunnel_command(options, node, listen, root, token),
    )
}

/// The command line of a ztunnel for `node` on `listen`, with istiod's xDS and CA.
pub fn ztunnel_command(
    options: &Options,
    node: &str,
    listen: IpAddr,
    root: &Path,
    token: &str,
) -> Command {
    let address = format!("https://{}:{}", ip(options.net, 1), ports::XDS_TLS);
    let mut command = Command::new(options.bin_dir.join("ztunnel"));
    command
        .arg("proxy")
        .env("NODE_NAME", node)
        .env("POD_NAME", format!("ztunnel-{node}"))
        .env("POD_NAMESPACE", "istio-system")
        .env("INSTANCE_IP", listen.to_string())
        .env("LISTEN_IP", listen.to_string())
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env("XDS_ADDRESS", &address)
        .env("CA_ADDRESS", &address)
        .env("XDS_ROOT_CA", root)
        .env("CA_ROOT_CA", root)
        .env("AUTH_TOKEN", token)
        .env("CONNECTION_TERMINATION_DEADLINE", "1s");
    if let Some(timeout) = options.handshake_timeout {
        command.env("HANDSHAKE_TIMEOUT", format!("{}ms", timeout.as_millis()));
    }
    command
}

fn issue_token(istiod: &Path, state: &Path, node: &str) -> anyhow::Result<String> {
    let out = Command::new(istiod)
        .arg("--state-dir")
        .arg(state)
        .args(["--issue-token", node])
        .output()
        .with_context(|| format!("running {}", istiod.display()))?;
    if !out.status.success() {
        bail!(
            "istiod --issue-token {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// `GET /healthz/ready` answered 200.
pub async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(request).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out.starts_with(b"HTTP/1.1 200")
}

/// Waits (up to 20 s) until `process` answers readiness on `addr`.
pub async fn wait_ready(process: &Process, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        process.alive().map_err(anyhow::Error::msg)?;
        if ready(addr).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} at {addr} never became ready:\n{}",
        process.name,
        process.log_tail(20)
    )
}

/// A TCP echo server: what web talks to through the mesh.
async fn echo_server(addr: SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("echo backend on {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                // Out of descriptors in the runner: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    }))
}

/// What a user would `kubectl apply`: web and echo pinned to the two nodes, the echo
/// Service, and an ALLOW policy on echo for web's identity only.
fn manifests(net: [u8; 3]) -> String {
    let (web, echo, vip) = (ip(net, 2), ip(net, 3), ip(net, 100));
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {{app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{{name: web, image: curl}}]
status:
  phase: Running
  podIP: {web}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-0
  namespace: shop
  labels: {{app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers: [{{name: echo, image: echo, ports: [{{containerPort: {ECHO_PORT}}}]}}]
status:
  phase: Running
  podIP: {echo}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{port: {SERVICE_PORT}, targetPort: {ECHO_PORT}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-policy
  namespace: shop
spec:
  selector:
    matchLabels: {{app: echo}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["{TRUST_DOMAIN}/ns/shop/sa/web"]
"#
    )
}
