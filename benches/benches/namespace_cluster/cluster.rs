//! The cluster the benchmark runs on: two nodes and two pods in network namespaces, routed as
//! a CNI routes them (each pod behind a veth to its node, the nodes on a bridge), with our
//! istiod beside them. The same pods are measured four ways: uncaptured; captured in-pod by
//! our node agent and served by our ztunnel, one process of each per node; through
//! upstream's ztunnel in dedicated mode, one process in each pod; and through the ceiling's
//! splice relays, also one process in each pod.
//!
//! ```text
//!   cp      198.18.0.1    istiod
//!   node-1  198.18.0.11   node-agent, ztunnel  ── veth ── client-0 10.244.1.2
//!   node-2  198.18.0.12   node-agent, ztunnel  ── veth ── server-0 10.244.2.2 (echo 8080, sink 8081)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::node_agent::{AddPod, DelPod, PodClient, PodRequest, PodResponse};
use harness::{Lan, Netns, Process};

pub const ISTIOD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 12)];
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 8081;
/// The pods' gateway: an address of the node's end of each pod's veth.
const GATEWAY: &str = "169.254.1.1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: bench, labels: {app: client}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: app, image: client}]
status: {phase: Running, podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server-0, namespace: bench, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers: [{name: app, image: echo, ports: [{containerPort: 8080}, {containerPort: 8081}]}]
status: {phase: Running, podIP: 10.244.2.2}
"#;

/// Upstream's dedicated-mode capture in the client pod (the ceiling's relays use it too): the
/// app's connections to the server ports go to its 15001; its own (to 15008 and istiod) are
/// left alone.
const UPSTREAM_CAPTURE: &str = "table ip bench-upstream {}
delete table ip bench-upstream
table ip bench-upstream {
  chain output {
    type nat hook output priority -100; policy accept;
    tcp dport { 8080, 8081 } redirect to :15001
  }
}
";
const UPSTREAM_RELEASE: &str = "table ip bench-upstream {}\ndelete table ip bench-upstream\n";

/// The binaries measured.
pub struct Binaries {
    pub istiod: PathBuf,
    pub ztunnel: PathBuf,
    pub agent: PathBuf,
    pub upstream: Option<PathBuf>,
}

/// One pod: its namespace and how the node agent knows it.
pub struct Pod {
    pub netns: Netns,
    name: &'static str,
    service_account: &'static str,
    node: usize,
    ip: Ipv4Addr,
}

/// The running cluster. Fields drop in order: processes before their namespaces.
pub struct Cluster {
    upstream: Vec<Process>,
    ceiling: Vec<Process>,
    ours: Vec<Process>,
    istiod: Process,
    pub client: Pod,
    pub server: Pod,
    _nodes: Vec<Netns>,
    _cp: Netns,
    _lan: Lan,
    dir: PathBuf,
    root: PathBuf,
    istiod_bin: PathBuf,
    upstream_bin: Option<PathBuf>,
    pod_sockets: Vec<PathBuf>,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn token(istiod: &Path, dir: &Path, node: &str, identity: Option<&str>) -> Result<PathBuf, String> {
    let mut command = Command::new(istiod);
    command
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--issue-token", node]);
    if let Some(identity) = identity {
        command.args(["--identity", identity]);
    }
    let out = command.output().map_err(e)?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let name = identity.map_or(node.to_string(), |i| i.replace(['/', ':'], "_"));
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, String::from_utf8_lossy(&out.stdout).trim()).map_err(e)?;
    Ok(path)
}

fn spawn(
    netns: &Netns,
    name: &str,
    program: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Process, String> {
    let mut command = netns.command(program);
    command
        .current_dir(dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn(name, command, &dir.join(format!("{name}.log")))
        .map_err(|err| format!("starting {name}: {err}"))
}

/// `GET /healthz/ready` on `addr` from inside `netns` answers 200.
fn ready(netns: &Netns, addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    netns
        .enter(|| {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            Ok::<_, std::io::Error>(answer.starts_with("HTTP/1.1 200"))
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

fn wait_ready(netns: &Netns, addr: SocketAddr, process: &mut Process) -> Result<(), String> {
    wait_until(process, |_| ready(netns, addr))
}

/// Waits until `done` says `process` is ready; it exiting first, or [`READY_TIMEOUT`]
/// passing, is an error with its log.
fn wait_until(process: &mut Process, done: impl Fn(&Process) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !done(process) {
        if let Some(status) = process.exited() {
            return Err(format!(
                "{} exited ({status}):\n{}",
                process.name(),
                process.log_tail(3000)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready:\n{}",
                process.name(),
                process.log_tail(3000)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Cluster {
    pub fn start(bins: &Binaries) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(e)?;
        harness::remove_dir_at_exit(dir.clone());
        std::fs::write(dir.join("cluster.yaml"), CLUSTER).map_err(e)?;

        let lan = Lan::create().map_err(e)?;
        let cp = Netns::create("istiod").map_err(e)?;
        lan.attach(&cp, &format!("{ISTIOD_IP}/24")).map_err(e)?;
        let mut nodes = Vec::new();
        for (i, ip) in NODE_IPS.iter().enumerate() {
            let node = Netns::create(&format!("node-{}", i + 1)).map_err(e)?;
            lan.attach(&node, &format!("{ip}/24")).map_err(e)?;
            node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
                .map_err(e)?;
            nodes.push(node);
        }
        // Each node reaches the other's pods through it; istiod reaches both.
        let cidr = |n: usize| format!("10.244.{}.0/24", n + 1);
        for (i, node) in nodes.iter().enumerate() {
            let other = 1 - i;
            node.ip(&[
                "route",
                "add",
                &cidr(other),
                "via",
                &NODE_IPS[other].to_string(),
            ])
            .map_err(e)?;
            cp.ip(&["route", "add", &cidr(i), "via", &NODE_IPS[i].to_string()])
                .map_err(e)?;
        }
        let pod = |name: &'static str,
                   service_account,
                   node: usize,
                   ip: Ipv4Addr|
         -> Result<Pod, String> {
            let netns = Netns::create(name).map_err(e)?;
            let host = &nodes[node];
            let link = format!("v{name}");
            let link = &link[..link.len().min(15)];
            host.ip(&[
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ])
            .map_err(e)?;
            host.ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", link])
                .map_err(e)?;
            host.ip(&["link", "set", link, "up"]).map_err(e)?;
            host.ip(&["route", "add", &format!("{ip}/32"), "dev", link])
                .map_err(e)?;
            netns
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])
                .map_err(e)?;
            netns.ip(&["link", "set", "eth0", "up"]).map_err(e)?;
            netns
                .ip(&["route", "add", GATEWAY, "dev", "eth0"])
                .map_err(e)?;
            netns
                .ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])
                .map_err(e)?;
            Ok(Pod {
                netns,
                name,
                service_account,
                node,
                ip,
            })
        };
        let client = pod("client-0", "client", 0, CLIENT_IP)?;
        let server = pod("server-0", "server", 1, SERVER_IP)?;
        // Thousands of short connections per round, each leaving an end in TIME_WAIT — in
        // the server pod too, where a proxy delivering to the app closes first: let new
        // connections reuse those ports, and use all of them, so the connection rate
        // measures the path rather than a search for a free port (without it the fifth round
        // found none left in the server pod). The range starts above the mesh's own ports
        // (15000–15090), or an ephemeral port can take a listener's (upstream's 15021 was).
        for pod in [&client, &server] {
            for setting in [
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=16000 65000",
            ] {
                pod.netns.exec("sysctl", &["-qw", setting]).map_err(e)?;
            }
        }

        let root = dir.join("root-cert.pem");
        let config = dir.join("cluster.yaml");
        let state = dir.join("state");
        let istiod_ip = ISTIOD_IP.to_string();
        let mut istiod = spawn(
            &cp,
            "istiod",
            &bins.istiod,
            &dir,
            &[
                "--config-dir",
                &config.display().to_string(),
                "--state-dir",
                &state.display().to_string(),
                "--listen",
                &istiod_ip,
                "--write-root-cert",
                &root.display().to_string(),
            ],
            &[("RUST_LOG", "warn".into())],
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !root.exists() {
            if istiod.exited().is_some() || Instant::now() > deadline {
                return Err(format!("istiod did not start:\n{}", istiod.log_tail(3000)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let xds = format!("https://{ISTIOD_IP}:15012");
        let root_s = root.display().to_string();
        let mut ours = Vec::new();
        let mut pod_sockets = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("node-{}", i + 1);
            let sockets = dir.join(&name);
            std::fs::create_dir_all(&sockets).map_err(e)?;
            let zds = sockets.join("ztunnel.sock");
            let pods = sockets.join("pods.sock");
            let agent = spawn(
                node,
                &format!("node-agent-{}", i + 1),
                &bins.agent,
                &dir,
                &[
                    "--zds-socket",
                    &zds.display().to_string(),
                    "--pod-socket",
                    &pods.display().to_string(),
                ],
                &[("RUST_LOG", "warn".into())],
            )?;
            let token = token(&bins.istiod, &dir, &name, None)?;
            let mut ztunnel = spawn(
                node,
                &format!("ztunnel-{}", i + 1),
                &bins.ztunnel,
                &dir,
                &["proxy"],
                &[
                    ("XDS_ADDRESS", xds.clone()),
                    ("CA_ADDRESS", xds.clone()),
                    ("XDS_ROOT_CA", root_s.clone()),
                    ("CA_ROOT_CA", root_s.clone()),
                    ("AUTH_TOKEN", token.display().to_string()),
                    ("NODE_NAME", name.clone()),
                    ("POD_NAME", format!("ztunnel-{name}")),
                    ("POD_NAMESPACE", "istio-system".into()),
                    ("INSTANCE_IP", NODE_IPS[i].to_string()),
                    ("INPOD_UDS", zds.display().to_string()),
                    ("RUST_LOG", "warn".into()),
                    (
                        "ZTUNNEL_WORKER_THREADS",
                        std::env::var("ZTUNNEL_WORKER_THREADS").unwrap_or_else(|_| "2".into()),
                    ),
                ],
            )?;
            wait_ready(node, SocketAddr::from((NODE_IPS[i], 15021)), &mut ztunnel)?;
            ours.push(agent);
            ours.push(ztunnel);
            pod_sockets.push(pods);
        }
        Ok(Cluster {
            upstream: Vec::new(),
            ceiling: Vec::new(),
            ours,
            istiod,
            client,
            server,
            _nodes: nodes,
            _cp: cp,
            _lan: lan,
            dir,
            root,
            istiod_bin: bins.istiod.clone(),
            upstream_bin: bins.upstream.clone(),
            pod_sockets,
        })
    }

    pub fn has_upstream(&self) -> bool {
        self.upstream_bin.is_some()
    }

    /// Our mesh on or off: what to tell the node agents so they capture both pods (rules in,
    /// handed to the ztunnels) or release them (rules out, listeners closed). Sent by
    /// [`tell_agents`].
    pub fn ours(&self, on: bool) -> Vec<(PathBuf, PodRequest)> {
        [&self.client, &self.server]
            .iter()
            .map(|pod| {
                let request = if on {
                    PodRequest::Add(AddPod {
                        uid: format!("uid-{}", pod.name),
                        name: pod.name.into(),
                        namespace: "bench".into(),
                        service_account: pod.service_account.into(),
                        netns: Path::new("/run/netns").join(pod.netns.name()),
                    })
                } else {
                    PodRequest::Del(DelPod {
                        uid: format!("uid-{}", pod.name),
                    })
                };
                (self.pod_sockets[pod.node].clone(), request)
            })
            .collect()
    }

    /// Upstream's ztunnel in dedicated mode in each pod, and the client pod's capture.
    pub fn start_upstream(&mut self) -> Result<(), String> {
        let Some(bin) = self.upstream_bin.clone() else {
            return Err("no upstream ztunnel".into());
        };
        let xds = format!("https://{ISTIOD_IP}:15012");
        let root = self.root.display().to_string();
        for pod in [&self.client, &self.server] {
            let identity = format!("spiffe://cluster.local/ns/bench/sa/{}", pod.service_account);
            let node = format!("node-{}", pod.node + 1);
            let token = token(&self.istiod_bin, &self.dir, &node, Some(&identity))?;
            let mut process = spawn(
                &pod.netns,
                &format!("upstream-{}", pod.name),
                &bin,
                &self.dir,
                &["proxy"],
                &[
                    ("XDS_ADDRESS", xds.clone()),
                    ("CA_ADDRESS", xds.clone()),
                    ("XDS_ROOT_CA", root.clone()),
                    ("CA_ROOT_CA", root.clone()),
                    ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc".into()),
                    ("ALT_CA_HOSTNAME", "istiod.istio-system.svc".into()),
                    ("AUTH_TOKEN", token.display().to_string()),
                    ("NODE_NAME", node),
                    ("POD_NAME", pod.name.into()),
                    ("POD_NAMESPACE", "bench".into()),
                    ("INSTANCE_IP", pod.ip.to_string()),
                    ("PROXY_MODE", "dedicated".into()),
                    (
                        "PROXY_WORKLOAD_INFO",
                        format!("bench/{}/{}", pod.name, pod.service_account),
                    ),
                    ("ENABLE_ORIG_SRC", "false".into()),
                    ("RUST_LOG", "warn".into()),
                ],
            )?;
            wait_ready(&pod.netns, SocketAddr::from((pod.ip, 15021)), &mut process)?;
            self.upstream.push(process);
        }
        nft(&self.client.netns, UPSTREAM_CAPTURE)
    }

    pub fn stop_upstream(&mut self) -> Result<(), String> {
        release(&self.client.netns, &mut self.upstream)
    }

    /// The splice relays of [`crate::ceiling`] in both pods (this binary, re-run as a relay),
    /// on the client pod's capture.
    pub fn start_ceiling(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(e)?;
        for (pod, side) in [(&self.client, "outbound"), (&self.server, "inbound")] {
            let name = format!("splice-relay-{}", pod.name);
            let mut process = spawn(
                &pod.netns,
                &name,
                &exe,
                &self.dir,
                &[crate::ceiling::ARG, side],
                &[],
            )?;
            wait_until(&mut process, |p| p.log_tail(500).contains("listening"))?;
            self.ceiling.push(process);
        }
        nft(&self.client.netns, UPSTREAM_CAPTURE)
    }

    pub fn stop_ceiling(&mut self) -> Result<(), String> {
        release(&self.client.netns, &mut self.ceiling)
    }

    /// Processes for a failure message.
    pub fn logs(&self) -> String {
        std::iter::once(&self.istiod)
            .chain(&self.ours)
            .chain(&self.upstream)
            .chain(&self.ceiling)
            .map(|p| format!("--- {}:\n{}", p.name(), p.log_tail(2000)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Sends each request to the node agent on its socket; every one must be carried out.
pub async fn tell_agents(requests: Vec<(PathBuf, PodRequest)>) -> Result<(), String> {
    for (socket, request) in requests {
        let mut agent = PodClient::connect(&socket).await.map_err(e)?;
        match agent.request(&request).await.map_err(e)? {
            PodResponse::Ok { .. } => {}
            other => return Err(format!("node agent: {other:?}")),
        }
    }
    Ok(())
}

/// Takes the client pod's dedicated-mode capture out, then stops the proxies it fed.
fn release(client: &Netns, proxies: &mut Vec<Process>) -> Result<(), String> {
    nft(client, UPSTREAM_RELEASE)?;
    for mut process in proxies.drain(..) {
        process.kill();
    }
    Ok(())
}

fn nft(netns: &Netns, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut command = netns.command("nft");
    command
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|err| format!("nft: {err}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(e)?;
    }
    let status = child.wait().map_err(e)?;
    if !status.success() {
        return Err(format!("nft refused the bench's rules ({status})"));
    }
    Ok(())
}
