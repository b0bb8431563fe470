//! The mesh every check runs against, started once for the whole file: our istiod, upstream's
//! ztunnel and ours, each in a network namespace of its own on one private LAN
//! (`198.18.0.0/24`, the benchmarking range: nothing on this machine routes it).
//!
//! ```text
//!   cp  198.18.0.1  istiod (real binary, --config-dir written here)
//!   a   198.18.0.2  pod interop/a-0 (sa upstream, node-a): upstream ztunnel, dedicated mode
//!   b   198.18.0.3  pod interop/b-0 (sa ours,     node-b): our ztunnel
//!   svc-a 198.18.1.2 → a-0, svc-b 198.18.1.3 → b-0 (80 → 8080, 90 → 9090)
//! ```
//!
//! Each pod's namespace runs the app (an echo server on 8080 and 9090) and redirects
//! plaintext arriving for those ports to its ztunnel's 15006, as istio-cni does in a pod, so
//! STRICT has something to refuse. The mesh lives in a static: its processes are killed and
//! its namespaces removed when the test process exits (`harness`'s at-exit cleanup).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::components::{self, Component};
use harness::{Lan, Netns, Process};

use crate::wire;

pub const ISTIOD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const SVC_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const SVC_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
/// The app port every policy admits.
pub const APP_PORT: u16 = 8080;
/// The app port each side's DENY policy closes to the other side's identity.
pub const DENIED_PORT: u16 = 9090;
/// Service ports in front of them.
pub const SVC_PORT: u16 = 80;
pub const SVC_DENIED_PORT: u16 = 90;

pub const UPSTREAM_ID: &str = "spiffe://cluster.local/ns/interop/sa/upstream";
pub const OURS_ID: &str = "spiffe://cluster.local/ns/interop/sa/ours";
/// How upstream names itself to istiod (wire facts §1.2).
pub const UPSTREAM_NODE_ID: &str = "ztunnel~198.18.0.2~a-0.interop~interop.svc.cluster.local";

const ISTIOD: &str = env!("CARGO_BIN_EXE_istiod");
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a user would `kubectl apply`.
const CLUSTER: &str = include_str!("cluster.yaml");

/// The running mesh. Fields drop in order: processes before the namespaces they run in.
pub struct Mesh {
    pub istiod: Process,
    pub upstream: Process,
    pub ours: Process,
    pub a: Netns,
    pub b: Netns,
    _cp: Netns,
    _lan: Lan,
    /// Our CA's root, as istiod wrote it (`--write-root-cert`).
    pub root_pem: String,
    /// Whether plaintext to the app ports reaches the ztunnels (needs `iptables`).
    pub redirect: Result<(), String>,
    /// From the first namespace to both ztunnels ready.
    pub started_in: Duration,
}

enum Setup {
    Ready(Box<Mesh>),
    Skipped(String),
    Failed(String),
}

/// The mesh, started by the first test that asks. `None` (after a `SKIP` line, or a panic
/// where `REAL_COMPONENTS_REQUIRED=1`) where this machine cannot run it.
pub fn mesh(test: &str) -> Option<&'static Mesh> {
    static MESH: OnceLock<Setup> = OnceLock::new();
    match MESH.get_or_init(setup) {
        Setup::Ready(mesh) => Some(mesh),
        Setup::Skipped(why) => {
            harness::skip(test, why);
            None
        }
        Setup::Failed(why) => panic!("{test}: the mesh did not start: {why}"),
    }
}

fn setup() -> Setup {
    if let Err(why) = harness::netns::check() {
        return Setup::Skipped(why);
    }
    let upstream = match components::find(Component::UpstreamZtunnel) {
        Ok(path) => path,
        Err(why) => return Setup::Skipped(why.to_string()),
    };
    // Ours is built beside istiod by `cargo test --workspace`, not by `-p control` alone.
    let ours = Path::new(ISTIOD).with_file_name("ztunnel");
    if !ours.is_file() {
        return Setup::Failed(format!(
            "{} not built: `cargo build -p dataplane --bin ztunnel` first",
            ours.display()
        ));
    }
    match start(&upstream, &ours) {
        Ok(mesh) => Setup::Ready(Box::new(mesh)),
        Err(why) => Setup::Failed(why),
    }
}

/// A fresh directory for config, tokens and logs, removed at exit; those of earlier runs
/// that were killed before their exit ran are removed first.
fn run_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("interop-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(format!("{pid}")).exists() && pid != std::process::id() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    harness::remove_dir_at_exit(dir.clone());
    Ok(dir)
}

/// `istiod --issue-token NODE [--identity ID]`, written without the trailing newline:
/// upstream sends a token file's content as it is.
fn token(dir: &Path, node: &str, identity: Option<&str>) -> Result<PathBuf, String> {
    let mut command = Command::new(ISTIOD);
    command
        .args(["--state-dir"])
        .arg(dir.join("state"))
        .args(["--issue-token", node]);
    if let Some(identity) = identity {
        command.args(["--identity", identity]);
    }
    let out = command
        .output()
        .map_err(|e| format!("istiod --issue-token: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let path = dir.join(format!("{node}.token"));
    std::fs::write(&path, String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// `program args…` inside `netns`, from `dir`, logging to `dir/<name>.log`.
fn spawn(
    netns: &Netns,
    name: &str,
    program: &Path,
    dir: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> Result<Process, String> {
    let mut command = netns.command(program);
    command
        .current_dir(dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn(name, command, &dir.join(format!("{name}.log")))
        .map_err(|e| format!("starting {name}: {e}"))
}

fn start(upstream_bin: &Path, ours_bin: &Path) -> Result<Mesh, String> {
    let begun = Instant::now();
    let dir = run_dir()?;
    let config = dir.join("cluster.yaml");
    std::fs::write(&config, CLUSTER).map_err(|e| e.to_string())?;
    let upstream_token = token(&dir, "node-a", Some(UPSTREAM_ID))?;
    let ours_token = token(&dir, "node-b", None)?;

    let e = |e: harness::netns::NetnsError| e.to_string();
    let lan = Lan::create().map_err(e)?;
    let cp = Netns::create("istiod").map_err(e)?;
    let a = Netns::create("upstream").map_err(e)?;
    let b = Netns::create("ours").map_err(e)?;
    for (netns, ip) in [(&cp, ISTIOD_IP), (&a, A_IP), (&b, B_IP)] {
        lan.attach(netns, &format!("{ip}/24")).map_err(e)?;
    }
    let redirect = [&a, &b]
        .iter()
        .try_for_each(|netns| capture_plaintext(netns));

    let root = dir.join("root-cert.pem");
    let path = |p: &Path| p.display().to_string();
    let mut istiod = spawn(
        &cp,
        "istiod",
        Path::new(ISTIOD),
        &dir,
        &[
            "--config-dir".into(),
            path(&config),
            "--state-dir".into(),
            path(&dir.join("state")),
            "--listen".into(),
            ISTIOD_IP.to_string(),
            "--write-root-cert".into(),
            path(&root),
        ],
        // The ACKs a check reads are debug lines.
        &[("RUST_LOG", "info,control::xds::server=debug".into())],
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !root.exists() {
        if istiod.exited().is_some() || Instant::now() > deadline {
            return Err(format!("istiod did not start:\n{}", istiod.log_tail(3000)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let root_pem = std::fs::read_to_string(&root).map_err(|e| e.to_string())?;

    for (netns, pod) in [(&a, "a-0"), (&b, "b-0")] {
        for port in [APP_PORT, DENIED_PORT] {
            wire::serve_app(netns, pod, port)?;
        }
    }

    let xds = format!("https://{ISTIOD_IP}:15012");
    let root_s = root.display().to_string();
    let upstream = spawn(
        &a,
        "upstream-ztunnel",
        upstream_bin,
        &dir,
        &["proxy".into()],
        &[
            // README of shared/bin: dedicated mode against our istiod.
            ("XDS_ADDRESS", xds.clone()),
            ("CA_ADDRESS", xds.clone()),
            ("XDS_ROOT_CA", root_s.clone()),
            ("CA_ROOT_CA", root_s.clone()),
            ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc".into()),
            ("ALT_CA_HOSTNAME", "istiod.istio-system.svc".into()),
            ("AUTH_TOKEN", upstream_token.display().to_string()),
            ("NODE_NAME", "node-a".into()),
            ("POD_NAME", "a-0".into()),
            ("POD_NAMESPACE", "interop".into()),
            ("INSTANCE_IP", A_IP.to_string()),
            ("PROXY_MODE", "dedicated".into()),
            ("PROXY_WORKLOAD_INFO", "interop/a-0/upstream".into()),
            ("UNSTABLE_ENABLE_SOCKS5", "true".into()),
            // The client's address is not routable back through this proxy.
            ("ENABLE_ORIG_SRC", "false".into()),
            ("RUST_LOG", "info".into()),
        ],
    )?;
    let ours = spawn(
        &b,
        "ours-ztunnel",
        ours_bin,
        &dir,
        &["proxy".into()],
        &[
            ("XDS_ADDRESS", xds.clone()),
            ("CA_ADDRESS", xds),
            ("XDS_ROOT_CA", root_s.clone()),
            ("CA_ROOT_CA", root_s),
            ("AUTH_TOKEN", ours_token.display().to_string()),
            ("NODE_NAME", "node-b".into()),
            ("POD_NAME", "ztunnel-node-b".into()),
            ("POD_NAMESPACE", "istio-system".into()),
            ("INSTANCE_IP", B_IP.to_string()),
            ("LISTEN_IP", B_IP.to_string()),
            ("UNSTABLE_ENABLE_SOCKS5", "true".into()),
            ("RUST_LOG", "info".into()),
        ],
    )?;
    let mut mesh = Mesh {
        istiod,
        upstream,
        ours,
        a,
        b,
        _cp: cp,
        _lan: lan,
        root_pem,
        redirect,
        started_in: Duration::ZERO,
    };
    wait_ready(&mut mesh, deadline)?;
    mesh.started_in = begun.elapsed();
    Ok(mesh)
}

/// Plaintext for the app ports, arriving from the LAN, goes to the ztunnel's inbound
/// plaintext listener (15006), keeping its original destination for `SO_ORIGINAL_DST`.
fn capture_plaintext(netns: &Netns) -> Result<(), String> {
    let ports = format!("{APP_PORT},{DENIED_PORT}");
    netns
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "eth0",
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                &ports,
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ],
        )
        .map_err(|e| format!("{e} (apt-get install -y iptables)"))
}

fn wait_ready(mesh: &mut Mesh, deadline: Instant) -> Result<(), String> {
    let probes = [
        ("upstream", SocketAddr::new(IpAddr::V4(A_IP), 15021)),
        ("ours", SocketAddr::new(IpAddr::V4(B_IP), 15021)),
    ];
    for (which, addr) in probes {
        loop {
            let netns = if which == "upstream" {
                &mesh.a
            } else {
                &mesh.b
            };
            let answer = netns
                .enter(|| wire::http_get(addr, "/healthz/ready"))
                .map_err(|e| e.to_string())?;
            if matches!(answer, Ok((200, _))) {
                break;
            }
            let exited = [&mut mesh.istiod, &mut mesh.upstream, &mut mesh.ours]
                .into_iter()
                .find_map(|p| p.exited().map(|s| format!("{} exited ({s})", p.name())));
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!(
                    "{which} ztunnel not ready ({}; last answer {answer:?}); logs:\n{}",
                    exited.unwrap_or_else(|| format!("after {READY_TIMEOUT:?}")),
                    mesh.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

impl Mesh {
    /// The end of every log, for a failure message.
    pub fn logs(&self) -> String {
        [&self.istiod, &self.upstream, &self.ours]
            .iter()
            .map(|p| format!("--- {}:\n{}", p.name(), p.log_tail(4000)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
