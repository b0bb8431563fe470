//! `istiod --kube` against a real Kubernetes API server (the `harness` crate's private one):
//! the CRDs and the RBAC role the repository ships, installed from their files; the real
//! `istiod` binary under its own least-privileged identity; a Delta ADS client seeing what
//! it pushes.
//!
//! One API server (with its controller manager) is shared by the tests of this binary, each
//! in namespaces and nodes of its own, because starting one takes about 5 s. The restart test
//! takes one of its own: it kills it. Without the binaries each test prints `SKIP …` and
//! passes; with `REAL_COMPONENTS_REQUIRED=1` it fails.

mod ads;
mod bad_input;
mod cluster;
mod files;
mod lifecycle;
mod policies;
mod rbac;
mod restart;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use harness::objects;
use harness::{Cluster, Components, Options, Process};
use tokio::sync::OnceCell;

use ads::AdsClient;

const ISTIOD: &str = env!("CARGO_BIN_EXE_istiod");

/// How long a change in the API may take to reach an ADS client: a watch event, istiod's
/// 100 ms debounce, one push. Measured times are printed; they are well under a second.
pub const PUSH_LIMIT: Duration = Duration::from_secs(10);

/// The repository's files, as a user (or kind) would apply them.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// The API server shared by this binary's tests, started (and set up) by the first to ask;
/// `None` after a skip message when the binaries are missing.
pub async fn shared_cluster(test: &str) -> Option<&'static Cluster> {
    let components = Components::find_or_skip(test)?;
    let cluster = SHARED
        .get_or_init(|| start(components, Options::default()))
        .await;
    match cluster {
        Ok(cluster) => Some(cluster),
        Err(error) => panic!("{test}: the shared API server did not start: {error}"),
    }
}

/// Starts an API server and installs what istiod needs: the CRDs and istiod's RBAC.
pub async fn start(components: Components, options: Options) -> Result<Cluster, String> {
    let started = Instant::now();
    let cluster = Cluster::start(&components, options)
        .await
        .map_err(|e| e.to_string())?;
    let ready = started.elapsed();
    install(&cluster).await;
    eprintln!(
        "API server at {} ready in {ready:?}, CRDs and RBAC installed in {:?}",
        cluster.server(),
        started.elapsed() - ready
    );
    Ok(cluster)
}

/// Applies `control/crds/*.yaml` and `control/rbac/istiod.yaml`, as a user would.
async fn install(cluster: &Cluster) {
    let client = cluster.admin_client().await.unwrap();
    let mut texts = Vec::new();
    for file in control::crds::files() {
        let path = repo_file("crds").join(file.name);
        texts.push((
            file.name.to_string(),
            std::fs::read_to_string(path).unwrap(),
        ));
    }
    let rbac = std::fs::read_to_string(repo_file("rbac/istiod.yaml")).unwrap();
    texts.push(("rbac/istiod.yaml".to_string(), rbac));
    harness::manifests::apply(&client, &texts).await;
}

/// The real istiod binary with `--kube`, on free loopback ports, as `cluster`'s istiod
/// identity; killed when dropped.
pub struct Istiod {
    process: Process,
    pub xds: SocketAddr,
    dir: PathBuf,
}

impl Istiod {
    pub fn start(name: &str, cluster: &Cluster) -> Istiod {
        let dir = cluster.dir().join(format!("istiod-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = harness::ports::free_port().unwrap();
        let tls_port = harness::ports::free_port().unwrap();
        let mut command = Command::new(ISTIOD);
        command
            .arg("--kube")
            .args(["--listen", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("KUBECONFIG", cluster.istiod_kubeconfig())
            .env("RUST_LOG", "info");
        let process = Process::spawn("istiod", command, &dir.join("istiod.log")).unwrap();
        Istiod {
            process,
            xds: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
        }
    }

    /// A ztunnel-like client on the plaintext port.
    pub async fn client(&self, node: &str) -> AdsClient {
        AdsClient::connect(self.xds, node, Duration::from_secs(30)).await
    }

    /// Everything istiod has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// Log lines containing `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!("istiod's log: {}", self.process.log_path().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
