//! The control plane's costs, in one run:
//!
//! - **store → snapshot**: translating a store of 1,000 and 10,000 workloads (Deployments
//!   expanded by the scheduler, one Service each, policies), and the whole cost of one policy
//!   change (apply, translate, encode the xDS resources that changed) — with the 10k/1k ratio, which is ~10
//!   when the cost grows linearly;
//! - **push**: istiod and 100 or 1,000 simulated ztunnels in turmoil (each a host running only
//!   the production xDS client over TLS, in a 100-workload cluster); one AuthorizationPolicy is
//!   applied to istiod's store and the simulated time until every ztunnel holds it is measured
//!   (istiod's 100 ms debounce included), with the wall time the push took to simulate;
//! - **load**: what reading a large manifest costs, as `istiod --check` and istiod's startup do
//!   it (one YAML file of 100,000 Pods through `sources::validate`): the wall time, and the
//!   bytes per pod retained by the store and at the peak of loading (the file's text
//!   included), so a waste that grows with the input shows as bytes per pod.
//!
//! `BENCH_QUICK=1` keeps to 1,000 workloads, 100 ztunnels and 20,000 pods loaded;
//! `cargo test --benches` to 2,000 pods loaded (an unoptimised build); `BENCH_LOAD_PODS=a,b`
//! loads those numbers of pods instead.
//! Results are printed as a table and written to `target/bench-control-plane.json`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::{CountingAlloc, cluster_manifests};
use control::ca::{CertificateAuthority, TokenSigner};
use control::istiod::{self, ISTIOD_HOSTNAME, IstiodConfig, SharedStore};
use control::snapshot::MeshConfig;
use control::sources::{apply_loaded, parse_str};
use control::store::{Store, StoreConfig};
use control::translate;
use control::xds::PublishedResources;
use dataplane::identity::LocalCa;
use dataplane::seams::{Entropy, Seams, SimClock, SimNetwork};
use dataplane::state::StateHandle;
use dataplane::ztunnel::{AuthToken, Config, ControlPlaneClient, XdsMetrics, run_xds_client};

const TOKEN_SECRET: [u8; 32] = [9; 32];

/// The benches crate's counting allocator (bytes allocated), plus the bytes live and their
/// peak while [`Live::start`] is on: what loading keeps, and what it needs on the way.
struct Live;

#[global_allocator]
static ALLOC: Live = Live;

static LIVE_ON: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);

impl Live {
    #[inline]
    fn grow(by: i64) {
        if LIVE_ON.load(Ordering::Relaxed) {
            let now = LIVE_BYTES.fetch_add(by, Ordering::Relaxed) + by;
            PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn start() {
        LIVE_BYTES.store(0, Ordering::Relaxed);
        PEAK_BYTES.store(0, Ordering::Relaxed);
        LIVE_ON.store(true, Ordering::SeqCst);
        CountingAlloc::start();
    }

    /// (live, peak, allocated) bytes since [`Live::start`]. Frees of memory allocated before
    /// it count against `live`, so the measured code must not drop older allocations.
    fn stop() -> (i64, i64, u64) {
        let allocated = CountingAlloc::stop().1;
        LIVE_ON.store(false, Ordering::SeqCst);
        (
            LIVE_BYTES.load(Ordering::Relaxed),
            PEAK_BYTES.load(Ordering::Relaxed),
            allocated,
        )
    }
}

// SAFETY: every call is forwarded unchanged to `CountingAlloc` (itself `System`).
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { CountingAlloc.alloc(layout) };
        if !p.is_null() {
            Self::grow(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { CountingAlloc.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grow(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { CountingAlloc.dealloc(ptr, layout) };
        Self::grow(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { CountingAlloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::grow(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

fn store(workloads: usize) -> Store {
    let mut store = Store::new(StoreConfig::default());
    let loaded = parse_str(&cluster_manifests(workloads), "bench.yaml").expect("manifests parse");
    apply_loaded(&mut store, loaded).expect("manifests apply");
    store
}

fn policy(name: &str) -> control::object::Object {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: ns0}}\n\
         spec: {{action: DENY, rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns1/sa/app1]}}}}]}}]}}\n"
    );
    parse_str(&yaml, "policy.yaml").expect("policy parses")[0]
        .object
        .clone()
}

/// Median of `f`'s wall time over `reps` runs.
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

struct StoreCost {
    workloads: usize,
    translate: Duration,
    /// One policy change end to end: apply, translate, encode.
    change: Duration,
    /// Its parts.
    apply: Duration,
    encode: Duration,
}

fn store_costs(workloads: usize, reps: usize) -> StoreCost {
    let mesh = MeshConfig::default();
    let mut store = store(workloads);
    let snapshot = translate::snapshot(&store, &mesh);
    assert_eq!(snapshot.workloads.len(), workloads, "every pod scheduled");
    let translate = median(reps, || {
        std::hint::black_box(translate::snapshot(&store, &mesh));
    });
    let encode = median(reps, || {
        std::hint::black_box(PublishedResources::encode(&snapshot, 1));
    });
    let mut n: u64 = 0;
    let apply = median(reps, || {
        n += 1;
        store
            .apply(policy(&format!("apply-{n}")))
            .expect("policy applies");
    });
    let mut previous = (snapshot.clone(), PublishedResources::encode(&snapshot, 0));
    let change = median(reps, || {
        n += 1;
        store
            .apply(policy(&format!("change-{n}")))
            .expect("policy applies");
        let snapshot = translate::snapshot(&store, &mesh);
        let resources =
            PublishedResources::encode_since(&snapshot, n, Some((&previous.0, &previous.1)));
        previous = (snapshot, resources);
    });
    StoreCost {
        workloads,
        translate,
        change,
        apply,
        encode,
    }
}

/// The istiod side of one push, without the network: a policy change applied, translated and
/// encoded, then diffed for `streams` connected ztunnels (each an `XdsStream` that holds the
/// previous state), in a cluster of `workloads`.
fn push_compute(workloads: usize, streams: usize) -> Duration {
    use control::xds::XdsStream;
    use dataplane::xds::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let mesh = MeshConfig::default();
    let mut store = store(workloads);
    let snapshot = translate::snapshot(&store, &mesh);
    let resources = Arc::new(PublishedResources::encode(&snapshot, 1));
    let mut connected: Vec<XdsStream> = (0..streams)
        .map(|_| {
            let mut stream = XdsStream::new(resources.clone());
            for type_url in control::xds::TYPE_URLS.iter().take(2) {
                stream.on_request(DeltaDiscoveryRequest {
                    type_url: type_url.to_string(),
                    ..DeltaDiscoveryRequest::default()
                });
            }
            stream.responses();
            stream
        })
        .collect();
    let start = Instant::now();
    store.apply(policy("pushed")).expect("policy applies");
    let next = translate::snapshot(&store, &mesh);
    let encoded = Arc::new(PublishedResources::encode_since(
        &next,
        2,
        Some((&snapshot, &resources)),
    ));
    let mut responses = 0;
    for stream in &mut connected {
        stream.on_publish(encoded.clone());
        responses += stream.responses().len();
    }
    let took = start.elapsed();
    assert_eq!(responses, streams, "one Authorization response per ztunnel");
    took
}

/// `pods` Pods (about 250 bytes of YAML each, as a real pod manifest without its status) on 50
/// nodes in ten ambient namespaces.
fn pod_manifests(pods: usize) -> String {
    let mut y = String::with_capacity(pods * 260 + 8_192);
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
    }
    for p in 0..pods {
        let (ns, app, node) = (p % 10, p % 1_000, p % 50);
        y.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app{app}-{p:06}\n  namespace: ns{ns}\n  \
             labels: {{app: app{app}, version: v1}}\nspec:\n  nodeName: node-{node:02}\n  \
             serviceAccountName: app{app}\n  containers:\n  - name: main\n    \
             image: registry.example/app{app}:1.0\n    ports:\n    - containerPort: 8080\n---\n"
        ));
    }
    y
}

struct LoadCost {
    pods: usize,
    yaml_bytes: usize,
    wall: Duration,
    /// Of `wall`, reading and parsing (the rest is applying to the store, scheduler included).
    parse: Duration,
    /// Bytes still held once loaded (the store), its peak during loading, and all bytes
    /// allocated on the way.
    retained: i64,
    peak: i64,
    allocated: u64,
}

/// One file of `pods` Pods loaded as `istiod --check` (`sources::validate`) loads it.
fn load_cost(pods: usize) -> LoadCost {
    let yaml = pod_manifests(pods);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-load");
    let file = dir.join(format!("pods-{pods}.yaml"));
    std::fs::create_dir_all(&dir).expect("bench directory");
    std::fs::write(&file, &yaml).expect("manifest written");
    let paths = [file.clone()];
    let start = Instant::now();
    Live::start();
    // `sources::validate`, in its two steps: read and parse, then apply to a fresh store.
    let loaded = control::sources::load_paths(&paths).expect("pods parse");
    let parse = start.elapsed();
    let mut store = Store::new(StoreConfig::default());
    apply_loaded(&mut store, loaded).expect("pods apply");
    let (retained, peak, allocated) = Live::stop();
    let wall = start.elapsed();
    assert_eq!(store.len(), pods + 60, "every object loaded");
    drop(store);
    let _ = std::fs::remove_file(&file);
    LoadCost {
        pods,
        yaml_bytes: yaml.len(),
        wall,
        parse,
        retained,
        peak,
        allocated,
    }
}

struct PushCost {
    ztunnels: usize,
    converged: Duration,
    wall: Duration,
}

fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

/// istiod and `ztunnels` xDS clients in turmoil: the simulated time for one policy change to
/// reach them all.
fn push(ztunnels: usize) -> PushCost {
    let mut sim = turmoil::Builder::new()
        .epoch(epoch())
        .rng_seed(1)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .simulation_duration(Duration::from_secs(600))
        // turmoil delivers per host over every link, so a step costs hosts × links: a 10 ms
        // tick keeps 1,000 hosts affordable and is the resolution of the measured time.
        .tick_duration(Duration::from_millis(10))
        // istiod's socket holds every ztunnel's segments at once.
        .tcp_capacity(1 << 20)
        .build();
    let network = SimNetwork::new();
    let root = LocalCa::generate("cluster.local", epoch()).expect("CA");
    let (root_pem, key_pem) = (root.root_pem(), root.key_pem().to_string());
    // A small cluster: the initial sync of every ztunnel is not what is measured, and
    // turmoil's per-step cost grows with the bytes in flight.
    let shared = SharedStore::new(store(100));
    {
        let (network, shared, root_pem, key_pem) = (
            network.clone(),
            shared.clone(),
            root_pem.clone(),
            key_pem.clone(),
        );
        sim.host(ISTIOD_HOSTNAME, move || {
            let (network, shared) = (network.clone(), shared.clone());
            let (root_pem, key_pem) = (root_pem.clone(), key_pem.clone());
            async move {
                let seams = Seams {
                    network: Arc::new(network),
                    clock: Arc::new(SimClock),
                    entropy: Entropy::seeded(1),
                };
                let config = IstiodConfig::default();
                let authority = CertificateAuthority::new(
                    LocalCa::from_pem(&root_pem, &key_pem)?,
                    "cluster.local",
                    config.certificate_ttl,
                );
                let istiod = istiod::run(config, seams, authority, &TOKEN_SECRET).await?;
                istiod.follow(shared);
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let synced = Arc::new(AtomicUsize::new(0));
    let holding = Arc::new(AtomicUsize::new(0));
    let tokens = TokenSigner::new(&TOKEN_SECRET);
    for i in 0..ztunnels {
        let node = format!("node-{i:04}");
        let token = tokens.issue(&node, None, Duration::from_secs(3600), epoch());
        let (network, root_pem) = (network.clone(), root_pem.clone());
        let (synced, holding) = (synced.clone(), holding.clone());
        sim.host(node.clone(), move || {
            let (network, root_pem, token) = (network.clone(), root_pem.clone(), token.clone());
            let (synced, holding, node) = (synced.clone(), holding.clone(), node.clone());
            async move {
                let address = format!("https://{ISTIOD_HOSTNAME}:15012");
                let config = Arc::new(Config {
                    node_name: node.clone(),
                    pod_name: format!("ztunnel-{node}"),
                    pod_namespace: "istio-system".into(),
                    ..Config::default()
                });
                let client = ControlPlaneClient::new(
                    &address,
                    &root_pem,
                    Some(AuthToken::Literal(token)),
                    "Kubernetes",
                    Arc::new(network),
                    Arc::new(SimClock),
                )?;
                let state = StateHandle::default();
                let ready = Arc::new(AtomicBool::new(false));
                tokio::spawn(run_xds_client(
                    config,
                    client,
                    state.clone(),
                    ready.clone(),
                    XdsMetrics::default(),
                ));
                let mut counted_sync = false;
                let mut changes = state.subscribe();
                loop {
                    if !counted_sync && ready.load(Ordering::SeqCst) {
                        counted_sync = true;
                        synced.fetch_add(1, Ordering::SeqCst);
                    }
                    if state.read(|s| s.policies().any(|p| p.key() == "ns0/pushed")) {
                        holding.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
                }
            }
        });
    }
    while synced.load(Ordering::SeqCst) < ztunnels {
        sim.step().expect("simulation step");
    }
    let changed_at = sim.elapsed();
    let push_wall = Instant::now();
    shared.update(|s| s.apply(policy("pushed")).expect("policy applies"));
    while holding.load(Ordering::SeqCst) < ztunnels {
        sim.step().expect("simulation step");
    }
    PushCost {
        ztunnels,
        converged: sim.elapsed() - changed_at,
        wall: push_wall.elapsed(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let testing = !std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || testing;
    let only_store = std::env::var("BENCH_STORE_ONLY").is_ok_and(|v| v == "1");
    let (sizes, fleets, reps): (&[usize], &[usize], usize) = if quick {
        (&[1_000], &[100], 3)
    } else {
        (&[1_000, 10_000], &[100, 1_000], 7)
    };
    let costs: Vec<StoreCost> = sizes
        .iter()
        .map(|&w| {
            let c = store_costs(w, reps);
            eprintln!("measured the store at {w} workloads");
            c
        })
        .collect();
    // `BENCH_LOAD_PODS=50000,229000` measures loading at those sizes instead.
    let load_sizes: Vec<usize> = match std::env::var("BENCH_LOAD_PODS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) if testing => vec![2_000],
        Err(_) if quick => vec![20_000],
        Err(_) => vec![20_000, 100_000],
    };
    let loads: Vec<LoadCost> = load_sizes
        .iter()
        .map(|&pods| {
            let l = load_cost(pods);
            eprintln!("measured loading {pods} pods");
            l
        })
        .collect();
    let compute: Vec<(usize, Duration)> =
        sizes.iter().map(|&w| (w, push_compute(w, 1_000))).collect();
    let fleets = if only_store { &[][..] } else { fleets };
    let pushes: Vec<PushCost> = fleets
        .iter()
        .map(|&n| {
            let p = push(n);
            eprintln!("measured a push to {n} ztunnels");
            p
        })
        .collect();

    println!("\ncontrol plane");
    println!(
        "{:<24}{:>12}{:>12}{:>12}{:>16}",
        "store", "apply", "translate", "encode", "policy change"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for c in &costs {
        println!(
            "{:<24}{:>9.2} ms{:>9.2} ms{:>9.2} ms{:>13.2} ms",
            format!("{} workloads", c.workloads),
            ms(c.apply),
            ms(c.translate),
            ms(c.encode),
            ms(c.change)
        );
    }
    let ratio =
        (costs.len() == 2).then(|| costs[1].change.as_secs_f64() / costs[0].change.as_secs_f64());
    if let Some(r) = ratio {
        println!("10k / 1k policy-change cost: {r:.1}x (linear growth: ~10x)");
    }
    for (w, took) in &compute {
        println!(
            "push computed for 1000 ztunnels, {w} workloads: {:.2} ms wall (apply, translate, encode, 1000 diffs)",
            ms(*took)
        );
    }
    println!(
        "{:<34}{:>14}{:>16}",
        "push to every ztunnel", "simulated", "wall"
    );
    for p in &pushes {
        println!(
            "{:<34}{:>11.0} ms{:>13.0} ms",
            format!("{} ztunnels", p.ztunnels),
            p.converged.as_secs_f64() * 1e3,
            p.wall.as_secs_f64() * 1e3
        );
    }
    println!(
        "{:<34}{:>10}{:>12}{:>12}{:>14}{:>12}{:>14}",
        "load (istiod --check)",
        "YAML",
        "wall",
        "of it parse",
        "retained/pod",
        "peak/pod",
        "allocated/pod"
    );
    let per_pod = |bytes: f64, l: &LoadCost| bytes / l.pods as f64;
    for l in &loads {
        println!(
            "{:<34}{:>7.1} MB{:>9.0} ms{:>9.0} ms{:>12.0} B{:>10.0} B{:>12.0} B",
            format!("{} pods, one file", l.pods),
            l.yaml_bytes as f64 / 1e6,
            ms(l.wall),
            ms(l.parse),
            per_pod(l.retained as f64, l),
            per_pod(l.peak as f64, l),
            per_pod(l.allocated as f64, l)
        );
    }
    let json = serde_json::json!({
        "quick": quick,
        "store": costs.iter().map(|c| serde_json::json!({
            "workloads": c.workloads,
            "apply_ms": c.apply.as_secs_f64() * 1e3,
            "translate_ms": c.translate.as_secs_f64() * 1e3,
            "encode_ms": c.encode.as_secs_f64() * 1e3,
            "policy_change_ms": c.change.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
        "change_cost_ratio_10k_over_1k": ratio,
        "push_compute_1000_ztunnels": compute.iter().map(|(w, d)| serde_json::json!({
            "workloads": w,
            "wall_ms": d.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
        "load": loads.iter().map(|l| serde_json::json!({
            "pods": l.pods,
            "yaml_bytes": l.yaml_bytes,
            "wall_ms": l.wall.as_secs_f64() * 1e3,
            "parse_ms": l.parse.as_secs_f64() * 1e3,
            "retained_bytes_per_pod": per_pod(l.retained as f64, l),
            "peak_bytes_per_pod": per_pod(l.peak as f64, l),
            "allocated_bytes_per_pod": per_pod(l.allocated as f64, l),
        })).collect::<Vec<_>>(),
        "push": pushes.iter().map(|p| serde_json::json!({
            "ztunnels": p.ztunnels,
            "simulated_ms": p.converged.as_secs_f64() * 1e3,
            "wall_ms": p.wall.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("bench-control-plane.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
    );
}
