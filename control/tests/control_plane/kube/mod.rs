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
mod objects;
mod rbac;
mod restart;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, Components, Options, Process};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use serde::de::DeserializeOwned;
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

/// The documents of a multi-document YAML file, typed; empty documents skipped.
pub fn documents<T: DeserializeOwned>(text: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|doc| {
            <Option<serde_yaml::Value> as serde::Deserialize>::deserialize(doc).unwrap()
        })
        .map(|value| serde_yaml::from_value(value).unwrap())
        .collect()
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

/// Applies `control/crds/*.yaml` and `control/rbac/istiod.yaml` and waits until every CRD is
/// served.
async fn install(cluster: &Cluster) {
    let client = cluster.admin_client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in control::crds::files() {
        let text = std::fs::read_to_string(repo_file("crds").join(file.name)).unwrap();
        for crd in documents::<CustomResourceDefinition>(&text) {
            names.push(crd.metadata.name.clone().unwrap());
            crds.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.name));
        }
    }
    let rbac = std::fs::read_to_string(repo_file("rbac/istiod.yaml")).unwrap();
    for value in documents::<serde_yaml::Value>(&rbac) {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("ClusterRole") => {
                let role: ClusterRole = serde_yaml::from_value(value).unwrap();
                Api::all(client.clone())
                    .create(&PostParams::default(), &role)
                    .await
                    .unwrap();
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = serde_yaml::from_value(value).unwrap();
                Api::all(client.clone())
                    .create(&PostParams::default(), &binding)
                    .await
                    .unwrap();
            }
            other => panic!("rbac/istiod.yaml: unexpected kind {other:?}"),
        }
    }
    for name in names {
        let established = objects::poll(Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
        assert!(established.is_some(), "CRD {name} never became established");
    }
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
