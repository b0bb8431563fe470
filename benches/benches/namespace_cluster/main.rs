//! The whole-binary benchmark on the namespace cluster: the same two pods, on two nodes,
//! measured uncaptured, through our mesh (in-pod capture, our node agent and ztunnel as
//! separate processes per node), through upstream's ztunnel (dedicated mode, one process
//! per pod) and through the ceiling (two relays that only splice bytes, where upstream's
//! proxies sit: see `ceiling.rs`), interleaved in one run. The client is a plain
//! `TcpStream::connect` to the server pod's IP from inside the client pod: the kernel's rules
//! decide whether a proxy carries it.
//!
//! Measured: throughput with 1 and 8 streams, 1 KiB request/response latency (p50/p99) on
//! one connection, and new connections per second (connect, one byte there and back, close,
//! one after another). Ratios are taken within each round (uncaptured, ours, upstream
//! back to back) and the median over rounds is reported, with every round's value.
//!
//! Needs root (namespaces, nft); without it a `SKIP` line. Upstream's ztunnel comes from
//! `UPSTREAM_ZTUNNEL` or `../shared/bin/` (its column is left out when absent).
//! `BENCH_QUICK=1` (and `cargo test --benches`) is one short round; the full run is five.
//! The table is printed and written to `target/bench-namespace-cluster.json`.

mod ceiling;
mod cluster;
mod traffic;

use std::net::SocketAddr;

use benches::{built_binary, target_and_profile};
use cluster::{Binaries, Cluster, ECHO_PORT, SERVER_IP, SINK_PORT};
use harness::components::{self, Component};
use traffic::{Measured, Sizes};

/// The ways the same pods talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Uncaptured,
    Ours,
    Upstream,
    Ceiling,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Uncaptured => "uncaptured",
            Path::Ours => "ours (in-pod)",
            Path::Upstream => "upstream (dedicated)",
            Path::Ceiling => "ceiling (splice relays)",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(ceiling::ARG) {
        if let Err(err) = ceiling::main(&args[2..]) {
            eprintln!("{err}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run then.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
        || !std::env::args().any(|a| a == "--bench");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(why) = harness::netns::check() {
        harness::skip("namespace_cluster bench", &why);
        return;
    }
    if let Err(why) = std::process::Command::new("nft").arg("--version").output() {
        harness::skip("namespace_cluster bench", &format!("nft: {why}"));
        return;
    }
    let sizes = Sizes::new(quick);
    let binaries = match binaries() {
        Ok(b) => b,
        Err(why) => panic!("namespace_cluster bench: {why}"),
    };
    let mut cluster = match Cluster::start(&binaries) {
        Ok(c) => c,
        Err(why) => panic!("namespace_cluster bench: the cluster did not start: {why}"),
    };
    let rt = match traffic::client_runtime(&cluster.client.netns) {
        Ok(rt) => rt,
        Err(why) => panic!("namespace_cluster bench: {why}"),
    };
    if let Err(why) = traffic::serve_apps(&cluster.server.netns, &rt) {
        panic!("namespace_cluster bench: {why}");
    }
    let echo = SocketAddr::from((SERVER_IP, ECHO_PORT));
    let sink = SocketAddr::from((SERVER_IP, SINK_PORT));
    let mut paths = vec![Path::Uncaptured, Path::Ours];
    if cluster.has_upstream() {
        paths.push(Path::Upstream);
    } else {
        eprintln!("namespace_cluster bench: no upstream ztunnel; its column is left out");
    }
    paths.push(Path::Ceiling);
    let mut rounds: Vec<Vec<(Path, Measured)>> = Vec::new();
    for round in 0..sizes.rounds {
        let mut measured = Vec::new();
        for &path in &paths {
            let switched = match path {
                Path::Uncaptured => Ok(()),
                Path::Ours => traffic::run(&rt, cluster::tell_agents(cluster.ours(true))),
                Path::Upstream => cluster.start_upstream(),
                Path::Ceiling => cluster.start_ceiling(),
            };
            if let Err(why) = switched {
                panic!(
                    "namespace_cluster bench: switching to {}: {why}\n{}",
                    path.name(),
                    cluster.logs()
                );
            }
            let result = traffic::measure(&rt, sizes, echo, sink);
            let restored = match path {
                Path::Uncaptured => Ok(()),
                Path::Ours => traffic::run(&rt, cluster::tell_agents(cluster.ours(false))),
                Path::Upstream => cluster.stop_upstream(),
                Path::Ceiling => cluster.stop_ceiling(),
            };
            let m = result.unwrap_or_else(|why| {
                panic!(
                    "namespace_cluster bench: {} round {round}: {why}\n{}",
                    path.name(),
                    cluster.logs()
                )
            });
            if let Err(why) = restored {
                panic!("namespace_cluster bench: leaving {}: {why}", path.name());
            }
            eprintln!("round {round} {:<22} {m}", path.name());
            measured.push((path, m));
        }
        rounds.push(measured);
    }
    let report = report(&rounds, &paths);
    println!("{report}");
    let (target, _) = target_and_profile();
    let json = traffic::json(
        &rounds
            .iter()
            .map(|r| r.iter().map(|(p, m)| (p.name(), m)).collect())
            .collect::<Vec<Vec<_>>>(),
    );
    let _ = std::fs::write(target.join("bench-namespace-cluster.json"), json);
}

fn binaries() -> Result<Binaries, String> {
    Ok(Binaries {
        istiod: built_binary("control", "istiod", "BENCH_ISTIOD")?,
        ztunnel: built_binary("dataplane", "ztunnel", "BENCH_ZTUNNEL")?,
        agent: built_binary("dataplane", "node-agent", "BENCH_NODE_AGENT")?,
        upstream: components::find(Component::UpstreamZtunnel).ok(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table: per path the medians, then the ratios the issue sets targets for.
fn report(rounds: &[Vec<(Path, Measured)>], paths: &[Path]) -> String {
    let of = |path: Path, f: &dyn Fn(&Measured) -> f64| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| r.iter().find(|(p, _)| *p == path).map(|(_, m)| f(m)))
            .collect()
    };
    let mut out = String::from(
        "\nnamespace cluster: client-0 (node-1) → server-0 (node-2), medians over rounds\n\n\
         path                    1 stream MiB/s  8 streams MiB/s  p50 µs  p99 µs  conns/s\n",
    );
    for &path in paths {
        out.push_str(&format!(
            "{:<22} {:>15.0} {:>16.0} {:>7.1} {:>7.1} {:>8.0}\n",
            path.name(),
            median(of(path, &|m| m.tp1)),
            median(of(path, &|m| m.tp8)),
            median(of(path, &|m| m.p50_us)),
            median(of(path, &|m| m.p99_us)),
            median(of(path, &|m| m.conns_per_s)),
        ));
    }
    let ratio = |a: Path, b: Path, f: &dyn Fn(&Measured) -> f64| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| {
                let x = r.iter().find(|(p, _)| *p == a)?;
                let y = r.iter().find(|(p, _)| *p == b)?;
                Some(f(&x.1) / f(&y.1))
            })
            .collect()
    };
    let added = |a: Path| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| {
                let x = r.iter().find(|(p, _)| *p == a)?;
                let base = r.iter().find(|(p, _)| *p == Path::Uncaptured)?;
                Some(x.1.p50_us - base.1.p50_us)
            })
            .collect()
    };
    out.push('\n');
    let mut row = |name: &str, values: Vec<f64>, target: Option<(&str, bool)>| {
        let m = median(values.clone());
        let verdict = match target {
            Some((t, met)) => format!("  target {t}: {}", if met { "met" } else { "NOT met" }),
            None => String::new(),
        };
        out.push_str(&format!(
            "{name:<44} {m:>7.2}  [{}]{verdict}\n",
            list(&values)
        ));
    };
    let ours_tp1 = ratio(Path::Ours, Path::Uncaptured, &|m| m.tp1);
    let met = median(ours_tp1.clone()) >= 0.45;
    row(
        "ours / uncaptured, 1 stream",
        ours_tp1,
        Some(("≥ 0.45", met)),
    );
    row(
        "ours / uncaptured, 8 streams",
        ratio(Path::Ours, Path::Uncaptured, &|m| m.tp8),
        None,
    );
    row(
        "ours / uncaptured, conns/s",
        ratio(Path::Ours, Path::Uncaptured, &|m| m.conns_per_s),
        None,
    );
    row("ours added p50 µs", added(Path::Ours), None);
    row(
        "ceiling / uncaptured, 1 stream",
        ratio(Path::Ceiling, Path::Uncaptured, &|m| m.tp1),
        None,
    );
    row("ceiling added p50 µs", added(Path::Ceiling), None);
    row(
        "ours / ceiling, 1 stream",
        ratio(Path::Ours, Path::Ceiling, &|m| m.tp1),
        None,
    );
    if paths.contains(&Path::Upstream) {
        row(
            "upstream / uncaptured, 1 stream",
            ratio(Path::Upstream, Path::Uncaptured, &|m| m.tp1),
            None,
        );
        row("upstream added p50 µs", added(Path::Upstream), None);
        let tp1 = ratio(Path::Ours, Path::Upstream, &|m| m.tp1);
        let met = median(tp1.clone()) >= 2.0;
        row("ours / upstream, 1 stream", tp1, Some(("≥ 2", met)));
        let tp8 = ratio(Path::Ours, Path::Upstream, &|m| m.tp8);
        let met = median(tp8.clone()) >= 2.0;
        row("ours / upstream, 8 streams", tp8, Some(("≥ 2", met)));
        let latency: Vec<f64> = added(Path::Ours)
            .iter()
            .zip(added(Path::Upstream))
            .map(|(o, u)| o / u)
            .collect();
        let met = median(latency.clone()) <= 0.7;
        row(
            "ours added p50 / upstream added p50",
            latency,
            Some(("≤ 0.7", met)),
        );
        let conns = ratio(Path::Ours, Path::Upstream, &|m| m.conns_per_s);
        let met = median(conns.clone()) >= 1.3;
        row("ours / upstream, conns/s", conns, Some(("≥ 1.3", met)));
        // Where the targets lie against the ceiling: above 1 (throughput) or below 1
        // (latency), no proxy in these places reaches them on this machine, encrypting or not.
        let wanted = |path: Path, f: &dyn Fn(&Measured) -> f64| ratio(path, Path::Ceiling, f);
        row(
            "2 × upstream / ceiling, 1 stream",
            wanted(Path::Upstream, &|m| 2.0 * m.tp1),
            None,
        );
        row(
            "2 × upstream / ceiling, 8 streams",
            wanted(Path::Upstream, &|m| 2.0 * m.tp8),
            None,
        );
        let floor: Vec<f64> = added(Path::Upstream)
            .iter()
            .zip(added(Path::Ceiling))
            .map(|(u, c)| 0.7 * u / c)
            .collect();
        row("0.7 × upstream added p50 / ceiling added", floor, None);
    }
    out
}
