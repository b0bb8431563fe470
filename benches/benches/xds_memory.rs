//! istiod's resident memory with slow xDS streams: the real `istiod` binary, as it is deployed
//! (its own process, its RSS read from `/proc/<pid>/status` `VmRSS`), serving a configuration
//! directory of 10,000 workloads.
//!
//! For each run a fresh istiod is started and, once a probe client has received the whole
//! configuration from it, its RSS is taken with no stream open ("none"). Then 100 Delta ADS
//! streams, each on its own connection to istiod's plaintext xDS port (upstream's 15010, which
//! upstream also serves without authentication: the same gRPC/HTTP/2 server as 15012, minus
//! TLS and the token), subscribe wildcard to both ztunnel types (Address, Authorization) and
//! never read their responses: their HTTP/2 connections stay alive (PINGs answered,
//! flow-control windows as a tonic client has them) but the application takes nothing, so
//! istiod can only send what the clients' windows admit and has to hold — or not compute —
//! the rest. RSS is taken again once it is stable ("slow"), and the ratio is the
//! measure (the target is under 1.5x). A second istiod per run gets 100 streams that read
//! everything ("reading"), for comparison: what any stream costs, slow or not.
//!
//! The binary does not watch its `--config-dir` (only `--kube` follows changes), so no push
//! can be triggered from outside while the streams are stalled: what a stalled stream holds
//! across pushes is covered by `control`'s unit tests of the stream driver instead.
//!
//! The binary is built first (`cargo build -p control --bin istiod`, in this benchmark's own
//! profile, so `cargo bench` measures `target/release/istiod`); `BENCH_ISTIOD=/path/to/istiod`
//! measures another one instead (e.g. a copy of an older build, for a before/after).
//!
//! `BENCH_QUICK=1` (and `cargo test --benches`) keeps to 1,000 workloads, 20 streams, one run;
//! the full run is 10,000 workloads, 100 streams, `BENCH_XDS_RUNS` runs (default 5);
//! `BENCH_XDS_WORKLOADS` and `BENCH_XDS_STREAMS` change the sizes. Results are printed and
//! written to `target/bench-xds-memory.json`. Nothing is asserted.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use benches::{cluster_manifests, istiod_binary, rss, target_and_profile};
use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use dataplane::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// What the client side accepts in one response (upstream ztunnel's limit).
const MAX_MESSAGE: usize = 200 * 1024 * 1024;

/// A child process killed when dropped, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on loopback right now (istiod binds it a moment later).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Samples `pid`'s RSS every 200 ms until ten samples in a row stay within 1% (or `max`
/// passes): the settled value and the peak seen.
async fn settled_rss(pid: u32, max: Duration) -> (u64, u64) {
    let start = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(now) = rss(pid) else {
            break;
        };
        samples.push(now);
        let window = &samples[samples.len().saturating_sub(10)..];
        let (lo, hi) = (
            window.iter().copied().min().unwrap_or(0),
            window.iter().copied().max().unwrap_or(0),
        );
        if (window.len() == 10 && hi - lo <= hi / 100) || start.elapsed() >= max {
            break;
        }
    }
    let last = samples.last().copied().unwrap_or(0);
    (last, samples.into_iter().max().unwrap_or(0))
}

fn subscriptions(client: usize) -> Vec<DeltaDiscoveryRequest> {
    [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]
        .into_iter()
        .map(|type_url| DeltaDiscoveryRequest {
            node: Some(Node {
                id: format!(
                    "ztunnel~127.0.0.1~bench-{client}.istio-system~istio-system.svc.cluster.local"
                ),
                ..Node::default()
            }),
            type_url: type_url.into(),
            ..DeltaDiscoveryRequest::default()
        })
        .collect()
}

/// A Delta ADS stream on a connection of its own, subscribed wildcard to both ztunnel types;
/// the request side stays open. The responses are the caller's to read, or not.
async fn open_stream(
    address: SocketAddr,
    client: usize,
) -> Result<Streaming<DeltaDiscoveryResponse>, String> {
    let channel: Channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting to istiod: {e}"))?;
    let requests = futures_util::stream::iter(subscriptions(client))
        .chain(futures_util::stream::pending::<DeltaDiscoveryRequest>());
    let response = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .delta_aggregated_resources(requests)
        .await
        .map_err(|s| format!("opening the stream: {s}"))?;
    Ok(response.into_inner())
}

/// Reads `stream` until both types were answered and at least `addresses` Address resources
/// arrived (one response or several).
async fn read_until_synced(
    stream: &mut Streaming<DeltaDiscoveryResponse>,
    addresses: usize,
) -> Result<(), String> {
    let (mut seen_addresses, mut policies_answered) = (0usize, false);
    while seen_addresses < addresses || !policies_answered {
        let response = stream
            .message()
            .await
            .map_err(|s| format!("reading: {s}"))?
            .ok_or("the stream ended")?;
        if response.type_url == ADDRESS_TYPE_URL {
            seen_addresses += response.resources.len();
        } else {
            policies_answered = true;
        }
    }
    Ok(())
}

/// One istiod serving `config_dir`, ready once a probe stream received every address.
async fn start_istiod(
    binary: &Path,
    config_dir: &Path,
    log: &Path,
    workloads: usize,
) -> Result<(Proc, SocketAddr), String> {
    let (port, tls_port) = (free_port()?, free_port()?);
    let log = std::fs::File::create(log).map_err(|e| format!("log file: {e}"))?;
    let child = Command::new(binary)
        .arg("--config-dir")
        .arg(config_dir)
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .args(["--tls-port", &tls_port.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let istiod = Proc(child);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut probe = loop {
        match open_stream(address, usize::MAX).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        read_until_synced(&mut probe, workloads),
    )
    .await
    .map_err(|_| "istiod did not serve the whole configuration in 120 s".to_string())??;
    drop(probe);
    Ok((istiod, address))
}

/// One istiod's RSS with no stream, then with `streams` streams that read (`read`) or not.
struct Measured {
    none: u64,
    with: u64,
    peak: u64,
}

async fn measure(
    binary: &Path,
    config_dir: &Path,
    workloads: usize,
    streams: usize,
    read: bool,
) -> Result<Measured, String> {
    let log = config_dir.with_file_name(if read {
        "istiod-reading.log"
    } else {
        "istiod-slow.log"
    });
    let (istiod, address) = start_istiod(binary, config_dir, &log, workloads).await?;
    let pid = istiod.0.id();
    let (none, _) = settled_rss(pid, Duration::from_secs(10)).await;
    let mut open = Vec::with_capacity(streams);
    let mut readers = Vec::new();
    for client in 0..streams {
        let mut stream = open_stream(address, client).await?;
        if read {
            readers.push(tokio::spawn(async move {
                let synced = read_until_synced(&mut stream, workloads).await;
                (stream, synced)
            }));
        } else {
            // Kept, never polled: the application takes nothing.
            open.push(stream);
        }
    }
    for reader in readers {
        let (stream, synced) = reader.await.map_err(|e| e.to_string())?;
        synced?;
        open.push(stream);
    }
    let (with, peak) = settled_rss(pid, Duration::from_secs(30)).await;
    drop(open);
    drop(istiod);
    Ok(Measured { none, with, peak })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let testing = !std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") || testing;
    let number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (workloads, streams, runs) = if quick {
        (1_000, 20, 1)
    } else {
        (10_000, 100, number("BENCH_XDS_RUNS", 5).max(1))
    };
    let workloads = number("BENCH_XDS_WORKLOADS", workloads);
    let streams = number("BENCH_XDS_STREAMS", streams);
    let binary = match istiod_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xds memory bench: {e}");
            std::process::exit(2);
        }
    };
    let (target, _) = target_and_profile();
    let dir = target.join("bench-xds-memory");
    let config_dir = dir.join("config");
    let written = std::fs::create_dir_all(&config_dir).and_then(|()| {
        std::fs::write(
            config_dir.join("cluster.yaml"),
            cluster_manifests(workloads),
        )
    });
    if let Err(e) = written {
        eprintln!("xds memory bench: writing the configuration: {e}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xds memory bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "\nistiod RSS with slow xDS streams: {} ({workloads} workloads, {streams} streams, {runs} run(s))",
        binary.display()
    );
    println!(
        "{:<6}{:>12}{:>12}{:>12}{:>9}{:>14}{:>9}",
        "run", "none", "slow", "peak", "ratio", "reading", "ratio"
    );
    let mut results = Vec::new();
    for run in 0..runs {
        let outcome = runtime.block_on(async {
            let slow = measure(&binary, &config_dir, workloads, streams, false).await?;
            let reading = measure(&binary, &config_dir, workloads, streams, true).await?;
            Ok::<_, String>((slow, reading))
        });
        let (slow, reading) = match outcome {
            Ok(m) => m,
            Err(e) => {
                eprintln!("xds memory bench: run {run}: {e}");
                std::process::exit(2);
            }
        };
        let ratio = slow.with as f64 / slow.none.max(1) as f64;
        let reading_ratio = reading.with as f64 / reading.none.max(1) as f64;
        println!(
            "{:<6}{:>8.1} MiB{:>8.1} MiB{:>8.1} MiB{:>8.2}x{:>10.1} MiB{:>8.2}x",
            run,
            mib(slow.none),
            mib(slow.with),
            mib(slow.peak),
            ratio,
            mib(reading.with),
            reading_ratio
        );
        results.push(serde_json::json!({
            "rss_none_bytes": slow.none,
            "rss_slow_bytes": slow.with,
            "rss_slow_peak_bytes": slow.peak,
            "ratio_slow_over_none": ratio,
            "reading_rss_none_bytes": reading.none,
            "reading_rss_bytes": reading.with,
            "ratio_reading_over_none": reading_ratio,
        }));
    }
    let mut ratios: Vec<f64> = results
        .iter()
        .filter_map(|r| r["ratio_slow_over_none"].as_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied();
    if let Some(m) = median {
        println!("median ratio, slow streams over none: {m:.2}x (target: under 1.5x)");
    }
    let json = serde_json::json!({
        "quick": quick,
        "istiod": binary.display().to_string(),
        "workloads": workloads,
        "streams": streams,
        "runs": results,
        "median_ratio_slow_over_none": median,
    });
    let _ = std::fs::write(
        target.join("bench-xds-memory.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
    );
}
