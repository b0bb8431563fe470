//! istiod fed by a real Kubernetes API server (the `harness` crate's private etcd,
//! kube-apiserver and controller manager on loopback), the real `istiod --kube` binary as its
//! own process, and the production ztunnel xDS client (`run_xds_client`, each a TLS stream of
//! its own to 15012 with its own node token):
//!
//! - **propagation**: the time from an AuthorizationPolicy created through the API server to
//!   every ztunnel holding it, with 1, 10 and 100 clients (watch event, istiod's 100 ms
//!   debounce, translation, one push to each) — median and worst of five policies, after one
//!   not counted;
//! - **memory**: istiod's resident set (`VmRSS`) with 1,000 and 10,000 running pods in the
//!   API server (one Service per ten), once a client holds every one of them.
//!
//! `BENCH_QUICK=1` (CI): 1 and 10 clients, three policies, 200 pods. It needs the outside
//! components (`KUBE_APISERVER`, `KUBE_CONTROLLER_MANAGER`, `ETCD`, or `../shared/bin`), and
//! builds `istiod` in its own profile first (as `xds_memory` does); without them it prints
//! `SKIP` and exits 0, unless `REAL_COMPONENTS_REQUIRED=1`.
//! Results are printed and written to `target/bench-api-server.json`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::{Cluster, Components, Options, Process, objects};
use serde_json::json;

use dataplane::seams::{RealNetwork, SystemClock};
use dataplane::state::StateHandle;
use dataplane::ztunnel::{AuthToken, Config, ControlPlaneClient, XdsMetrics, run_xds_client};

const NS: &str = "bench";
const NODE: &str = "bench-node";
/// How long any one step may take before the benchmark gives up (the propagation measured is
/// well under a second; loading 10,000 pods takes tens of seconds).
const LIMIT: Duration = Duration::from_secs(300);
/// Concurrent writes while filling the API server with pods.
const WRITERS: usize = 32;

struct Sizes {
    fleets: &'static [usize],
    policies: usize,
    pods: &'static [usize],
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || !bench;
    let sizes = if quick {
        Sizes {
            fleets: &[1, 10],
            policies: 3,
            pods: &[200],
        }
    } else {
        Sizes {
            fleets: &[1, 10, 100],
            policies: 5,
            pods: &[1_000, 10_000],
        }
    };
    let Some(components) = Components::find_or_skip("bench api_server") else {
        return;
    };
    let istiod = match benches::istiod_binary() {
        Ok(istiod) => istiod,
        Err(why) => {
            harness::skip("bench api_server", &why);
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime.block_on(run(components, istiod, sizes));
    let out = harness::components::workspace_root().join("target/bench-api-server.json");
    let text = serde_json::to_string_pretty(&results).expect("JSON");
    if let Err(e) = std::fs::write(&out, text + "\n") {
        eprintln!("writing {}: {e}", out.display());
    }
    println!("written to {}", out.display());
}

async fn run(components: Components, istiod_binary: PathBuf, sizes: Sizes) -> serde_json::Value {
    let cluster = Cluster::start(&components, Options::default())
        .await
        .expect("the private API server starts");
    let admin = cluster.admin_client().await.expect("an admin client");
    install(&admin).await;
    let istiod = Istiod::start(&istiod_binary, &cluster);
    objects::ambient_namespace(&admin, NS, true).await;
    objects::node(&admin, NODE, "10.244.0.0/16").await;

    println!("propagation: AuthorizationPolicy created through the API → held by every ztunnel");
    println!("{:>9} {:>10} {:>10}", "ztunnels", "median", "worst");
    let mut propagation = Vec::new();
    for &fleet in sizes.fleets {
        let ztunnels = Fleet::connect(&istiod, fleet).await;
        let mut times = Vec::new();
        // The first policy after a fleet connects is not counted: it also pays for the
        // clients' first change after sync.
        for i in 0..=sizes.policies {
            let name = format!("pushed-{fleet}-{i}");
            let created = Instant::now();
            create_policy(&admin, &name).await;
            ztunnels
                .wait(|s| s.policies().any(|p| p.key() == format!("{NS}/{name}")))
                .await;
            if i > 0 {
                times.push(created.elapsed());
            }
        }
        times.sort();
        let (median, worst) = (times[times.len() / 2], times[times.len() - 1]);
        println!("{fleet:>9} {median:>10.1?} {worst:>10.1?}");
        propagation.push(json!({
            "ztunnels": fleet,
            "median_ms": millis(median),
            "worst_ms": millis(worst),
            "all_ms": times.iter().map(|t| millis(*t)).collect::<Vec<_>>(),
        }));
    }

    println!("memory: istiod's resident set by running pods in the API server");
    let watcher = Fleet::connect(&istiod, 1).await;
    let base = benches::rss(istiod.process.id()).unwrap_or(0);
    println!(
        "{:>7} {:>10} {:>12} {:>10}",
        "pods", "RSS MiB", "KiB/pod", "load"
    );
    let mut memory = vec![json!({"pods": 0, "rss_bytes": base})];
    let mut made = 0;
    for &pods in sizes.pods {
        let started = Instant::now();
        fill(&admin, made, pods).await;
        made = pods;
        watcher.wait(|s| s.workloads().count() >= pods).await;
        let loaded = started.elapsed();
        // Let the push settle and the allocator return what the load freed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = benches::rss(istiod.process.id()).unwrap_or(0);
        let per_pod = (rss.saturating_sub(base)) as f64 / pods as f64 / 1024.0;
        println!(
            "{pods:>7} {:>10.1} {per_pod:>12.1} {loaded:>10.1?}",
            rss as f64 / (1 << 20) as f64
        );
        memory.push(json!({"pods": pods, "rss_bytes": rss, "load_ms": millis(loaded)}));
    }
    json!({"propagation": propagation, "memory": memory})
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The repository's CRDs and istiod's RBAC, as a user applies them.
async fn install(admin: &kube::Client) {
    let control = harness::components::workspace_root().join("control");
    let mut texts = Vec::new();
    for file in control::crds::files() {
        let path = control.join("crds").join(file.name);
        texts.push((file.name.to_string(), read(&path)));
    }
    let rbac = control.join("rbac/istiod.yaml");
    texts.push(("rbac/istiod.yaml".to_string(), read(&rbac)));
    harness::manifests::apply(admin, &texts).await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An ALLOW policy for the whole namespace: every ztunnel receives it.
async fn create_policy(admin: &kube::Client, name: &str) {
    let resource = control::sources::kube::api_resource(control::object::Kind::AuthorizationPolicy);
    let spec = json!({"spec": {"rules": [{"from": [{"source": {"namespaces": [NS]}}]}]}});
    objects::custom(admin, &resource, NS, name, spec).await;
}

/// Pods `from..to`, bound to the bench node and reported running, with a Service for every
/// ten (created with the tenth's first pod).
async fn fill(admin: &kube::Client, from: usize, to: usize) {
    futures_util::stream::iter(from..to)
        .map(|i| async move {
            let app = format!("app-{}", i / 10);
            if i % 10 == 0 {
                objects::service(admin, NS, &app, &app).await;
            }
            let name = format!("pod-{i}");
            objects::pod(admin, NS, &name, NODE, &app).await;
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 1)) + i as u32);
            objects::pod_running(admin, NS, &name, &ip.to_string()).await;
        })
        .buffer_unordered(WRITERS)
        .collect::<()>()
        .await;
}

/// The real istiod binary with `--kube`, as the cluster's istiod identity.
struct Istiod {
    process: Process,
    tls: SocketAddr,
    dir: PathBuf,
    binary: PathBuf,
}

impl Istiod {
    fn start(binary: &Path, cluster: &Cluster) -> Istiod {
        let dir = cluster.dir().join("istiod");
        std::fs::create_dir_all(&dir).expect("istiod's directory");
        let port = harness::ports::free_port().expect("a free port");
        let tls_port = harness::ports::free_port().expect("a free port");
        let mut command = Command::new(binary);
        command
            .arg("--kube")
            .args(["--listen", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--write-root-cert")
            .arg(dir.join("root.pem"))
            .env("KUBECONFIG", cluster.istiod_kubeconfig())
            .env("RUST_LOG", "warn");
        let process = Process::spawn("istiod", command, &dir.join("istiod.log")).expect("istiod");
        Istiod {
            process,
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port)),
            dir,
            binary: binary.to_path_buf(),
        }
    }

    /// A node token from `istiod --issue-token`, as a ztunnel's deployment would hold one.
    fn token(&self, node: &str) -> String {
        let out = Command::new(&self.binary)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--issue-token", node])
            .output()
            .expect("istiod --issue-token");
        assert!(out.status.success(), "--issue-token: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The root certificate, once istiod has written it.
    async fn root(&self) -> String {
        let path = self.dir.join("root.pem");
        let started = Instant::now();
        loop {
            if let Ok(pem) = std::fs::read_to_string(&path)
                && pem.contains("END CERTIFICATE")
            {
                return pem;
            }
            assert!(
                started.elapsed() < LIMIT,
                "istiod never wrote its root; log:\n{}",
                self.process.log_tail(3000)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `count` ztunnels' xDS side: the production client, each on its own stream, holding what
/// istiod pushes in its own state.
struct Fleet {
    states: Vec<StateHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    async fn connect(istiod: &Istiod, count: usize) -> Fleet {
        let root = istiod.root().await;
        let address = format!("https://{}", istiod.tls);
        let mut fleet = Fleet {
            states: Vec::new(),
            tasks: Vec::new(),
        };
        let mut synced = Vec::new();
        for i in 0..count {
            let node = format!("ztunnel-{count}-{i}");
            let config = Arc::new(Config {
                node_name: node.clone(),
                pod_name: format!("ztunnel-{node}"),
                pod_namespace: "istio-system".into(),
                ..Config::default()
            });
            let token = AuthToken::Literal(istiod.token(&node));
            let client = ControlPlaneClient::new(
                &address,
                &root,
                Some(token),
                "Kubernetes",
                Arc::new(RealNetwork::default()),
                Arc::new(SystemClock),
            )
            .expect("a control-plane client");
            let state = StateHandle::default();
            let ready = Arc::new(AtomicBool::new(false));
            fleet.tasks.push(tokio::spawn(run_xds_client(
                config,
                client,
                state.clone(),
                ready.clone(),
                XdsMetrics::default(),
            )));
            fleet.states.push(state);
            synced.push(ready);
        }
        let started = Instant::now();
        while !synced.iter().all(|s| s.load(Ordering::SeqCst)) {
            assert!(
                started.elapsed() < LIMIT,
                "{count} ztunnels never synced; istiod's log:\n{}",
                istiod.process.log_tail(3000)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fleet
    }

    /// Until every ztunnel's state satisfies `holds`, checked on each change it sees.
    async fn wait(&self, holds: impl Fn(&dataplane::state::State) -> bool + Clone) {
        let waits = self.states.iter().map(|state| {
            let holds = holds.clone();
            async move {
                let mut changes = state.subscribe();
                while !state.read(&holds) {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(LIMIT, futures_util::future::join_all(waits))
            .await
            .expect("every ztunnel reaches the state in time");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
