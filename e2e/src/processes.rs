//! The real processes of a run: `istiod` in its namespace, per node a `node-agent` and a
//! `ztunnel` in the node's namespace, and a `waypoint` inside each waypoint pod's namespace;
//! each logs to `<run dir>/<name>.log` and is killed with the run ([`harness::Process`]).
//!
//! istiod serves the scenario's manifests from `--config-dir` with its state (CA root, token
//! key) in `--state-dir`, so a restart keeps its root; it says it is ready by writing its root
//! (`--write-root-cert`), which every ztunnel and waypoint trusts. Node tokens come from
//! `istiod --issue-token NODE`, as in the interop tests. The node agent listens on the ZDS
//! socket the ztunnel connects to (`INPOD_UDS`) and on the pod socket this runner enrols pods
//! through ([`enroll`]): one line of JSON per request, one line back.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Netns, Process};
use sim::Scenario;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::Error;
use crate::placement::{ISTIOD_IP, PodInfo, workload_uid};

/// istiod's TLS xDS and CA address, as ztunnels and waypoints dial it.
pub fn istiod_address() -> String {
    format!("https://{ISTIOD_IP}:15012")
}

/// How long a process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node agent may take to answer an `add` (capture rules in, ztunnel acked).
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);
/// The readiness port of ztunnels and waypoints.
pub const READINESS_PORT: u16 = 15021;

/// Where the binaries are: `istiod`, `ztunnel`, `waypoint` and `node-agent` side by side.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `target/<profile>/` or `E2E_BIN_DIR`.
    pub dir: PathBuf,
}

/// The binaries this runner needs, by the package that builds them.
pub const BUILT_BY: &str = "cargo build [--release] -p control --bin istiod -p dataplane --bins";

/// Builds what [`BUILT_BY`] names in `profile` (`debug`, `release`, …), so a cluster runs the
/// current source.
pub fn build(profile: &str) -> Result<(), String> {
    harness::build::cargo_build(
        &[
            "-p",
            "control",
            "--bin",
            "istiod",
            "-p",
            "dataplane",
            "--bins",
        ],
        profile,
    )
}

impl Binaries {
    /// `E2E_BIN_DIR`, else the directory of this executable (`target/<profile>/`; from a test,
    /// `target/<profile>/deps/`'s parent).
    pub fn beside_current_exe() -> Result<Binaries, Error> {
        if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
            return Ok(Binaries {
                dir: PathBuf::from(dir),
            });
        }
        let exe = std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(parent) = dir.parent()
        {
            dir = parent.to_path_buf();
        }
        Ok(Binaries { dir })
    }

    fn find(&self, name: &str, hint: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::NotBuilt(format!(
                "{} not found: {hint}",
                path.display()
            )))
        }
    }

    /// istiod, or how to build it.
    pub fn istiod(&self) -> Result<PathBuf, Error> {
        self.find("istiod", &format!("`{BUILT_BY}` (or set E2E_BIN_DIR)"))
    }

    /// The ztunnel, or how to build it.
    pub fn ztunnel(&self) -> Result<PathBuf, Error> {
        self.find("ztunnel", &format!("`{BUILT_BY}` (or set E2E_BIN_DIR)"))
    }

    /// The waypoint proxy, or how to build it.
    pub fn waypoint(&self) -> Result<PathBuf, Error> {
        self.find("waypoint", &format!("`{BUILT_BY}` (or set E2E_BIN_DIR)"))
    }

    /// The node agent: absent until the in-pod data plane (the `node-agent` binary of crate
    /// dataplane, and ztunnel's `INPOD_UDS` mode) has landed and been built.
    pub fn node_agent(&self) -> Result<PathBuf, Error> {
        self.find(
            "node-agent",
            &format!(
                "the mesh needs the in-pod data plane: crate dataplane's `node-agent` binary and \
                 ztunnel's in-pod mode (INPOD_UDS), which are not in this build. Build them \
                 (`{BUILT_BY}`) once they have landed, or run with --no-dataplane (only \
                 scenarios where no pod is enrolled run)"
            ),
        )
    }
}

/// `name` running `program args…` inside `netns`, from `dir`, logging to `dir/<name>.log`.
pub fn spawn(
    netns: &Netns,
    name: &str,
    program: &Path,
    dir: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<Process, Error> {
    let mut command = netns.command(program);
    command
        .current_dir(dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn(name, command, &log_path(dir, name))
        .map_err(|e| Error::io(format!("starting {name} ({})", program.display()), e))
}

/// Where process `name` logs: `dir/<name>.log`, with `/` made `_` (waypoints are `ns/pod`).
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.log", name.replace('/', "_")))
}

/// The last lines of `process`'s log, for a failure message.
pub fn tail(process: &Process) -> String {
    process.log_tail(3000)
}

/// `istiod --state-dir DIR --issue-token NODE`: a node's token, written to `dir/<node>.token`
/// without the trailing newline (a token file is sent as it is).
pub fn issue_token(
    istiod: &Path,
    state_dir: &Path,
    dir: &Path,
    node: &str,
) -> Result<PathBuf, Error> {
    let out = Command::new(istiod)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--issue-token", node])
        .output()
        .map_err(|e| Error::io(format!("running {} --issue-token", istiod.display()), e))?;
    if !out.status.success() {
        return Err(Error::Process {
            what: format!("istiod --issue-token {node} failed ({})", out.status),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let path = dir.join(format!("{node}.token"));
    std::fs::write(&path, String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// `istiod rotate-root begin` on the serving istiod's state directory (what an operator
/// runs): the new root is trusted at once and signs after `activate_after`, the old one stays
/// trusted `overlap` longer. The running istiod follows its state directory within seconds.
pub fn begin_root_rotation(
    istiod: &Path,
    state_dir: &Path,
    activate_after: Duration,
    overlap: Duration,
) -> Result<String, Error> {
    let out = Command::new(istiod)
        .args(["rotate-root", "begin", "--state-dir"])
        .arg(state_dir)
        .args(["--activate-after", &millis(activate_after)])
        .args(["--overlap", &millis(overlap)])
        .output()
        .map_err(|e| Error::io(format!("running {} rotate-root begin", istiod.display()), e))?;
    if !out.status.success() {
        return Err(Error::Process {
            what: format!("istiod rotate-root begin failed ({})", out.status),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// How istiod is started, kept to start it again after a `crash`.
#[derive(Debug, Clone)]
pub struct IstiodSpec {
    /// The istiod binary (also what issues tokens).
    pub program: PathBuf,
    /// The run directory: its working directory and where it logs.
    pub dir: PathBuf,
    /// Its flags (config dir, state dir, listen address, root, settings).
    pub args: Vec<String>,
    /// The scenario's feature flags, and its log level.
    pub env: Vec<(String, String)>,
    /// Where it writes its root when it is up.
    pub root: PathBuf,
}

/// A duration as the binaries' flags read it.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl IstiodSpec {
    /// istiod for `scenario`: its config dir (written by the placement), state dir, LAN
    /// address, root, and the scenario's settings (certificate lifetime, debounce, mesh config,
    /// feature flags).
    pub fn new(
        program: PathBuf,
        dir: &Path,
        config_dir: &Path,
        state_dir: &Path,
        scenario: &Scenario,
    ) -> Result<IstiodSpec, Error> {
        let root = dir.join("root-cert.pem");
        let path = |p: &Path| p.display().to_string();
        let settings = &scenario.settings;
        let mut args = vec![
            "--config-dir".into(),
            path(config_dir),
            "--state-dir".into(),
            path(state_dir),
            "--listen".into(),
            ISTIOD_IP.to_string(),
            "--write-root-cert".into(),
            path(&root),
            "--secret-ttl".into(),
            millis(settings.certificate_ttl.0),
            "--debounce".into(),
            millis(settings.debounce.0),
            "--config-poll".into(),
            millis(crate::config_dir::POLL),
        ];
        if !settings.mesh_config.trim().is_empty() {
            let mesh = dir.join("mesh-config.yaml");
            std::fs::write(&mesh, &settings.mesh_config)
                .map_err(|e| Error::io(format!("writing {}", mesh.display()), e))?;
            args.extend(["--mesh-config".into(), path(&mesh)]);
        }
        let mut env: Vec<(String, String)> = settings
            .istiod_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("RUST_LOG".into(), "info".into()));
        Ok(IstiodSpec {
            program,
            dir: dir.to_path_buf(),
            args,
            env,
            root,
        })
    }

    /// Starts istiod in `netns` and waits for its root: the process and the root PEM.
    pub async fn start(&self, netns: &Netns) -> Result<(Process, String), Error> {
        let _ = std::fs::remove_file(&self.root);
        let mut process = spawn(
            netns,
            "istiod",
            &self.program,
            &self.dir,
            &self.args,
            &self.env,
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(pem) = std::fs::read_to_string(&self.root)
                && pem.contains("END CERTIFICATE")
            {
                return Ok((process, pem));
            }
            if let Some(status) = process.exited() {
                return Err(Error::Process {
                    what: format!("istiod exited ({status}) before writing its root"),
                    log: tail(&process),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Process {
                    what: format!("istiod wrote no root within {READY_TIMEOUT:?}"),
                    log: tail(&process),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a node's and a waypoint's mesh settings share.
#[derive(Debug, Clone)]
pub struct MeshEnv {
    /// istiod's root (a file).
    pub root: PathBuf,
    /// The workload certificates' lifetime.
    pub secret_ttl: Duration,
}

impl MeshEnv {
    fn common(&self, node: &str, token: &Path) -> Vec<(String, String)> {
        let address = istiod_address();
        let root = self.root.display().to_string();
        vec![
            ("NODE_NAME".into(), node.into()),
            ("XDS_ADDRESS".into(), address.clone()),
            ("CA_ADDRESS".into(), address),
            ("XDS_ROOT_CA".into(), root.clone()),
            ("CA_ROOT_CA".into(), root),
            ("AUTH_TOKEN".into(), token.display().to_string()),
            ("SECRET_TTL".into(), millis(self.secret_ttl)),
            ("RUST_LOG".into(), "info".into()),
        ]
    }
}

/// A node's data plane: its node agent and its in-pod ztunnel.
#[derive(Debug)]
pub struct NodeProcesses {
    /// `node-agent --zds-socket … --pod-socket …` in the node's namespace.
    pub node_agent: Process,
    /// `ztunnel proxy` with `INPOD_UDS`, in the node's namespace.
    pub ztunnel: Process,
    /// Where pods are enrolled ([`enroll`]).
    pub pod_socket: PathBuf,
}

/// How a node's data plane is started, kept to start it again after a `crash`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The node's name (`NODE_NAME`, the token's node).
    pub node: String,
    /// Where its ztunnel answers readiness, and its `INSTANCE_IP`.
    pub lan_ip: IpAddr,
    /// The node-agent binary.
    pub node_agent: PathBuf,
    /// The ztunnel binary.
    pub ztunnel: PathBuf,
    /// Whether it is upstream's (which also needs its mode and istiod's certificate name).
    pub upstream: bool,
    /// The run directory; the node's sockets are in `dir/<node>/`.
    pub dir: PathBuf,
    /// The node's token file (`istiod --issue-token`).
    pub token: PathBuf,
    /// istiod's root and the certificates' lifetime.
    pub mesh: MeshEnv,
}

impl NodeSpec {
    fn socket_dir(&self) -> PathBuf {
        self.dir.join(&self.node)
    }

    /// `<run dir>/<node>/pods.sock`: where this runner enrols the node's pods.
    pub fn pod_socket(&self) -> PathBuf {
        self.socket_dir().join("pods.sock")
    }

    /// `<run dir>/<node>/ztunnel.sock`: the node agent's ZDS socket (the ztunnel's
    /// `INPOD_UDS`).
    pub fn zds_socket(&self) -> PathBuf {
        self.socket_dir().join("ztunnel.sock")
    }

    /// Starts the node agent, waits for its pod socket, starts the ztunnel (in-pod mode, on the
    /// agent's ZDS socket) and waits until the ztunnel says it is ready, asked from `probe`'s
    /// namespace.
    pub async fn start(&self, netns: &Netns, probe: &Netns) -> Result<NodeProcesses, Error> {
        let sockets = self.socket_dir();
        std::fs::create_dir_all(&sockets)
            .map_err(|e| Error::io(format!("creating {}", sockets.display()), e))?;
        let (pod_socket, zds_socket) = (self.pod_socket(), self.zds_socket());
        let _ = std::fs::remove_file(&pod_socket);
        let _ = std::fs::remove_file(&zds_socket);
        let mut node_agent = spawn(
            netns,
            &format!("node-agent-{}", self.node),
            &self.node_agent,
            &self.dir,
            &[
                "--zds-socket".into(),
                zds_socket.display().to_string(),
                "--pod-socket".into(),
                pod_socket.display().to_string(),
            ],
            &[("RUST_LOG".into(), "info".into())],
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !pod_socket.exists() {
            if let Some(status) = node_agent.exited() {
                return Err(Error::Process {
                    what: format!("node-agent of {} exited ({status})", self.node),
                    log: tail(&node_agent),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Process {
                    what: format!(
                        "node-agent of {} made no pod socket {} within {READY_TIMEOUT:?}",
                        self.node,
                        pod_socket.display()
                    ),
                    log: tail(&node_agent),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut env = self.mesh.common(&self.node, &self.token);
        env.extend([
            ("POD_NAME".into(), format!("ztunnel-{}", self.node)),
            ("POD_NAMESPACE".into(), "istio-system".into()),
            ("INSTANCE_IP".into(), self.lan_ip.to_string()),
            ("INPOD_UDS".into(), zds_socket.display().to_string()),
        ]);
        if self.upstream {
            env.extend([
                ("PROXY_MODE".into(), "shared".into()),
                ("ALT_XDS_HOSTNAME".into(), "istiod.istio-system.svc".into()),
                ("ALT_CA_HOSTNAME".into(), "istiod.istio-system.svc".into()),
            ]);
        }
        let mut ztunnel = spawn(
            netns,
            &format!("ztunnel-{}", self.node),
            &self.ztunnel,
            &self.dir,
            &["proxy".into()],
            &env,
        )?;
        let ready = SocketAddr::new(self.lan_ip, READINESS_PORT);
        wait_ready(&mut ztunnel, probe, ready).await?;
        if let Some(status) = node_agent.exited() {
            return Err(Error::Process {
                what: format!("node-agent of {} exited ({status})", self.node),
                log: tail(&node_agent),
            });
        }
        Ok(NodeProcesses {
            node_agent,
            ztunnel,
            pod_socket,
        })
    }
}

/// Waits until `process` answers `GET /healthz/ready` with 200 on `at`, asked from inside
/// `probe`.
pub async fn wait_ready(process: &mut Process, probe: &Netns, at: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let answer =
            crate::net::http_get(probe, at, "/healthz/ready", Duration::from_secs(1)).await;
        if answer == Ok(200) {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            return Err(Error::Process {
                what: format!("{} exited ({status})", process.name()),
                log: tail(process),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Process {
                what: format!(
                    "{} not ready on {at} within {READY_TIMEOUT:?} (last answer: {answer:?})",
                    process.name()
                ),
                log: tail(process),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a waypoint pod's proxy is started, kept to start it again after a `crash`.
#[derive(Debug, Clone)]
pub struct WaypointSpec {
    /// `namespace/pod`, the host name a timeline uses.
    pub host: String,
    /// The waypoint binary.
    pub program: PathBuf,
    /// The run directory (working directory, logs).
    pub dir: PathBuf,
    /// Its settings: the Gateway, service account, pod IP, istiod, root and node token.
    pub env: Vec<(String, String)>,
    /// Where it answers readiness.
    pub pod_ip: IpAddr,
}

impl WaypointSpec {
    /// The waypoint of `pod` (a waypoint Gateway's pod), acting with its node's token.
    pub fn new(
        program: PathBuf,
        dir: &Path,
        pod: &PodInfo,
        mesh: &MeshEnv,
        token: &Path,
    ) -> Option<WaypointSpec> {
        let (gateway, service_account) = pod.waypoint.clone()?;
        let mut env = mesh.common(&pod.node, token);
        env.extend([
            ("GATEWAY_NAME".into(), gateway),
            ("GATEWAY_NAMESPACE".into(), pod.namespace.clone()),
            ("SERVICE_ACCOUNT".into(), service_account),
            ("INSTANCE_IP".into(), pod.ip.to_string()),
            ("POD_NAME".into(), pod.name.clone()),
            ("POD_NAMESPACE".into(), pod.namespace.clone()),
        ]);
        Some(WaypointSpec {
            host: format!("{}/{}", pod.namespace, pod.name),
            program,
            dir: dir.to_path_buf(),
            env,
            pod_ip: pod.ip,
        })
    }

    /// Starts it inside its pod's namespace and waits until it is ready.
    pub async fn start(&self, netns: &Netns, probe: &Netns) -> Result<Process, Error> {
        let mut process = spawn(
            netns,
            &format!("waypoint-{}", self.host),
            &self.program,
            &self.dir,
            &["proxy".into()],
            &self.env,
        )?;
        wait_ready(
            &mut process,
            probe,
            SocketAddr::new(self.pod_ip, READINESS_PORT),
        )
        .await?;
        Ok(process)
    }
}

/// Hands `pod` (its namespace at `netns_path`) to the node agent listening on `pod_socket`;
/// returns once the agent says its capture rules are in and the ztunnel acked.
pub async fn enroll(pod_socket: &Path, pod: &PodInfo, netns_path: &Path) -> Result<(), Error> {
    let request = serde_json::json!({
        "add": {
            "uid": workload_uid(pod),
            "name": pod.name,
            "namespace": pod.namespace,
            "serviceAccount": pod.service_account,
            "netns": netns_path.display().to_string(),
        }
    });
    ask(pod_socket, &request)
        .await
        .map_err(|why| Error::Enroll {
            pod: format!("{}/{}", pod.namespace, pod.name),
            why,
        })
}

/// Tells the node agent `pod` is gone.
pub async fn unenroll(pod_socket: &Path, pod: &PodInfo) -> Result<(), Error> {
    let request = serde_json::json!({ "del": { "uid": workload_uid(pod) } });
    ask(pod_socket, &request)
        .await
        .map_err(|why| Error::Enroll {
            pod: format!("{}/{}", pod.namespace, pod.name),
            why,
        })
}

/// One request line on the pod socket and its one answer line: `{"ok":true}` or
/// `{"error":"…"}`.
async fn ask(pod_socket: &Path, request: &serde_json::Value) -> Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(pod_socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", pod_socket.display()))?;
        let mut line = request.to_string();
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("writing to {}: {e}", pod_socket.display()))?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("reading from {}: {e}", pod_socket.display()))?;
        let value: serde_json::Value = serde_json::from_str(answer.trim())
            .map_err(|e| format!("the node agent answered {answer:?}: {e}"))?;
        if value.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
            Ok(())
        } else if let Some(error) = value.get("error") {
            Err(format!(
                "the node agent refused: {}",
                error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_string)
            ))
        } else {
            Err(format!("the node agent answered {answer:?}"))
        }
    };
    match tokio::time::timeout(ENROLL_TIMEOUT, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "no answer from the node agent within {ENROLL_TIMEOUT:?} (does the ztunnel run in \
             in-pod mode and ack the pod?)"
        )),
    }
}
