//! The waypoint's cost, measured side by side in one run: HTTP/1.1 and HTTP/2 requests from a
//! client through its ztunnel to a server through the server's ztunnel, once straight (a
//! Service with no waypoint) and once through a waypoint (a Service bound to it, one HTTPRoute
//! entry to the same backend); requests per second, p50/p99 latency and allocations per
//! request. Then route matching against 1, 100 and 10,000 routes (criterion).
//!
//! Everything runs in this process on one two-worker runtime (both ztunnels, the waypoint,
//! the servers, the client): the added latency is the waypoint's work and its extra HBONE hop
//! on loopback, not separate processes' scheduling. `BENCH_QUICK=1` shrinks it to a smoke run.
//! The summary is printed and written to `target/bench-waypoint.json`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::CountingAlloc;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use dataplane::identity::LocalCa;
use dataplane::localconfig::LocalConfig;
use dataplane::seams::{Clock, Seams, SystemClock};
use dataplane::state::{State, StateHandle};
use dataplane::waypoint::{self, RouteTable, Waypoint};
use dataplane::xds::proto::ambient::waypoint as pb;
use dataplane::ztunnel::{self, Config, LocalCaProvider, Ztunnel};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The benchmark's own block, apart from the tests' and the HBONE bench's.
const NET: [u8; 3] = [127, 98, 0];
const H1_PORT: u16 = 8080;
const H2_PORT: u16 = 8082;

fn ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(NET[0], NET[1], NET[2], host))
}

/// web-0 on node-a (.2), echo-0 on node-b (.3), the waypoint wp-0 (.4); Services `direct`
/// (.100) and `routed` (.101, bound to the waypoint), ports 80 (HTTP/1.1) and 81 (HTTP/2).
fn topology() -> String {
    format!(
        r#"
workloads:
- {{uid: web-0, name: web-0, namespace: shop, serviceAccount: web, trustDomain: cluster.local,
   workloadIps: ["{web}"], protocol: HBONE, node: node-a}}
- {{uid: echo-0, name: echo-0, namespace: shop, serviceAccount: echo, trustDomain: cluster.local,
   workloadIps: ["{echo}"], protocol: HBONE, node: node-b,
   services: {{"shop/direct.shop.svc.cluster.local": {{80: {H1_PORT}, 81: {H2_PORT}}},
              "shop/routed.shop.svc.cluster.local": {{80: {H1_PORT}, 81: {H2_PORT}}}}}}}
- {{uid: wp-0, name: wp-0, namespace: shop, serviceAccount: waypoint, trustDomain: cluster.local,
   workloadIps: ["{wp}"], protocol: HBONE, node: node-b,
   services: {{"shop/waypoint.shop.svc.cluster.local": {{15008: 15008}}}}}}
services:
- {{name: direct, namespace: shop, hostname: direct.shop.svc.cluster.local, vips: ["/{direct}"],
   ports: {{80: {H1_PORT}, 81: {H2_PORT}}}}}
- {{name: routed, namespace: shop, hostname: routed.shop.svc.cluster.local, vips: ["/{routed}"],
   ports: {{80: {H1_PORT}, 81: {H2_PORT}}},
   waypoint: {{destination: "shop/waypoint.shop.svc.cluster.local", hboneMtlsPort: 15008}}}}
- {{name: waypoint, namespace: shop, hostname: waypoint.shop.svc.cluster.local,
   vips: ["/{wpvip}"], ports: {{15008: 15008}}}}
"#,
        web = ip(2),
        echo = ip(3),
        wp = ip(4),
        direct = ip(100),
        routed = ip(101),
        wpvip = ip(102),
    )
}

fn state(yaml: &str) -> StateHandle {
    let mut state = State::default();
    LocalConfig::parse(yaml)
        .expect("benchmark topology parses")
        .apply_to(&mut state);
    StateHandle::new(state)
}

fn provider(ca: &LocalCa) -> Arc<LocalCaProvider> {
    let ca = LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).expect("CA round-trips");
    Arc::new(LocalCaProvider::new(
        ca,
        Duration::from_secs(86_400),
        Arc::new(SystemClock),
    ))
}

async fn start_ztunnel(node: &str, host: u8, yaml: &str, ca: &LocalCa) -> Ztunnel {
    let config = Config {
        node_name: node.into(),
        listen_ip: ip(host),
        enable_socks5: true,
        ..Config::default()
    };
    ztunnel::run(config, Seams::real(7), state(yaml), provider(ca))
        .await
        .expect("ztunnel starts")
}

/// One entry on each port of `routed`: everything to `direct`, the same backend.
fn waypoint_config() -> pb::WaypointConfig {
    let port = |port: u32, target: u16, name: &str| pb::ServicePort {
        port,
        target_port: u32::from(target),
        name: name.into(),
        kind: pb::RouteKind::Http.into(),
        rules: vec![pb::RouteRule {
            kind: pb::RouteKind::Http.into(),
            route_namespace: "shop".into(),
            route_name: "routed".into(),
            backends: vec![pb::Backend {
                service: "shop/direct.shop.svc.cluster.local".into(),
                port,
                weight: 1,
                port_name: name.into(),
                ..pb::Backend::default()
            }],
            ..pb::RouteRule::default()
        }],
        app_protocol: String::new(),
    };
    pb::WaypointConfig {
        namespace: "shop".into(),
        name: "waypoint".into(),
        services: vec![pb::BoundService {
            key: "shop/routed.shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            name: "routed".into(),
            hostname: "routed.shop.svc.cluster.local".into(),
            vips: vec![ip(101).to_string()],
            ports: vec![port(80, H1_PORT, "http"), port(81, H2_PORT, "http2")],
            policies: Vec::new(),
        }],
        policies: Vec::new(),
        layered_policies: Vec::new(),
    }
}

/// A small HTTP answer for every request, HTTP/1.1 on one port and HTTP/2 on the other.
async fn spawn_http_servers() {
    for (port, h2) in [(H1_PORT, false), (H2_PORT, true)] {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip(3), port))
            .await
            .expect("server port");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
    }
}

/// A SOCKS5 tunnel from web-0 through node-a to `target`.
async fn tunnel(socks5: SocketAddr, target: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip(2), 0))
        .expect("bind web's address");
    let mut s = socket.connect(socks5).await.expect("SOCKS5 port");
    let _ = s.set_nodelay(true);
    let IpAddr::V4(v4) = target.ip() else {
        unreachable!("IPv4 block")
    };
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&v4.octets());
    hello.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&hello).await.expect("SOCKS5 request");
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.expect("SOCKS5 reply");
    assert_eq!(reply[3], 0, "SOCKS5 refused {target}");
    s
}

/// Sends HTTP requests on one connection.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    async fn connect(socks5: SocketAddr, target: SocketAddr, h2: bool) -> Client {
        let io = TokioIo::new(tunnel(socks5, target).await);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    async fn get(&mut self, authority: &str) {
        let response = match self {
            Client::H1(send) => {
                let request = hyper::Request::get("/bench")
                    .header("host", authority)
                    .body(Empty::new())
                    .expect("request");
                send.ready().await.expect("the connection takes a request");
                send.send_request(request).await
            }
            Client::H2(send) => {
                let request = hyper::Request::get(format!("http://{authority}/bench"))
                    .body(Empty::new())
                    .expect("request");
                send.ready().await.expect("the connection takes a request");
                send.send_request(request).await
            }
        }
        .expect("an answer");
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// One path's numbers.
#[derive(Debug, Clone, Copy, Default)]
struct Numbers {
    p50: Duration,
    p99: Duration,
    per_second: f64,
    allocations_per_request: f64,
}

struct Testbed {
    a: Ztunnel,
    _b: Ztunnel,
    _waypoint: Waypoint,
}

async fn start() -> Testbed {
    let yaml = topology();
    let ca = LocalCa::generate("cluster.local", SystemClock.now()).expect("CA");
    let a = start_ztunnel("node-a", 2, &yaml, &ca).await;
    let b = start_ztunnel("node-b", 3, &yaml, &ca).await;
    spawn_http_servers().await;
    let mut config = waypoint::Config {
        gateway_namespace: "shop".into(),
        gateway_name: "waypoint".into(),
        service_account: "waypoint".into(),
        ..waypoint::Config::default()
    };
    config.mesh.listen_ip = ip(4);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let seams = Seams {
        clock,
        ..Seams::real(9)
    };
    let wp = waypoint::run(config, seams, state(&yaml), provider(&ca))
        .await
        .expect("waypoint starts");
    wp.configure(waypoint_config());
    Testbed {
        a,
        _b: b,
        _waypoint: wp,
    }
}

/// Interleaved blocks of sequential requests on one connection per path, so both paths see
/// the same host conditions: (straight, through the waypoint).
async fn measure(bed: &Testbed, h2: bool, requests: usize, block: usize) -> (Numbers, Numbers) {
    let socks5 = bed.a.addresses().socks5.expect("SOCKS5");
    let port = if h2 { 81 } else { 80 };
    let targets = [
        (
            SocketAddr::new(ip(100), port),
            "direct.shop.svc.cluster.local",
        ),
        (
            SocketAddr::new(ip(101), port),
            "routed.shop.svc.cluster.local",
        ),
    ];
    let mut clients = Vec::new();
    for (target, _) in &targets {
        clients.push(Client::connect(socks5, *target, h2).await);
    }
    // Warm up: certificates, pooled connections, first allocations.
    for _ in 0..50 {
        for (i, client) in clients.iter_mut().enumerate() {
            client.get(targets[i].1).await;
        }
    }
    let mut samples = [Vec::new(), Vec::new()];
    let mut busy = [Duration::ZERO; 2];
    let mut allocations = [0u64; 2];
    let mut done = 0;
    while done < requests {
        for (i, client) in clients.iter_mut().enumerate() {
            CountingAlloc::start();
            let block_start = Instant::now();
            for _ in 0..block {
                let t = Instant::now();
                client.get(targets[i].1).await;
                samples[i].push(t.elapsed());
            }
            busy[i] += block_start.elapsed();
            allocations[i] += CountingAlloc::stop().0;
        }
        done += block;
    }
    let numbers = |i: usize| {
        let mut sorted = samples[i].clone();
        sorted.sort();
        Numbers {
            p50: percentile(&sorted, 0.5),
            p99: percentile(&sorted, 0.99),
            per_second: sorted.len() as f64 / busy[i].as_secs_f64(),
            allocations_per_request: allocations[i] as f64 / sorted.len() as f64,
        }
    };
    (numbers(0), numbers(1))
}

/// A table with `n` prefix routes `/svc<i>` on one port, plus a catch-all.
fn table(n: usize) -> RouteTable {
    let rule = |name: String, value: String| pb::RouteRule {
        kind: pb::RouteKind::Http.into(),
        route_namespace: "shop".into(),
        route_name: name,
        r#match: Some(pb::route_rule::Match::Http(pb::HttpMatch {
            path: Some(pb::PathMatch {
                r#type: pb::MatchType::Prefix.into(),
                value,
            }),
            ..pb::HttpMatch::default()
        })),
        ..pb::RouteRule::default()
    };
    let mut rules: Vec<pb::RouteRule> = (0..n)
        .map(|i| rule(format!("r{i}"), format!("/svc{i}")))
        .collect();
    rules.push(rule("catch-all".into(), "/".into()));
    RouteTable::build(pb::WaypointConfig {
        services: vec![pb::BoundService {
            key: "shop/routed.shop.svc.cluster.local".into(),
            vips: vec!["10.96.0.1".into()],
            ports: vec![pb::ServicePort {
                port: 80,
                name: "http".into(),
                rules,
                ..pb::ServicePort::default()
            }],
            ..pb::BoundService::default()
        }],
        ..pb::WaypointConfig::default()
    })
}

fn route_matching(c: &mut Criterion, quick: bool) -> Vec<(usize, f64)> {
    let mut group = c.benchmark_group("route_matching");
    if quick {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
    }
    let vip: IpAddr = "10.96.0.1".parse().expect("address");
    let headers = http::HeaderMap::new();
    let method = http::Method::GET;
    let mut per_match = Vec::new();
    for n in [1usize, 100, 10_000] {
        let t = table(n);
        let target = format!("/svc{}/items/42?x=1", n - 1);
        let hit = t
            .find(vip, 80, "shop", &method, &target, &headers)
            .expect("the last route matches");
        assert_eq!(hit.describe(), format!("shop/r{} rule 0", n - 1));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| t.find(vip, 80, "shop", &method, &target, &headers))
        });
        // The same measured by hand for the summary: the mean of many lookups.
        let rounds = if quick { 20_000 } else { 200_000 };
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(t.find(vip, 80, "shop", &method, &target, &headers));
        }
        per_match.push((n, start.elapsed().as_nanos() as f64 / rounds as f64));
    }
    group.finish();
    per_match
}

fn main() {
    let quick =
        std::env::var_os("BENCH_QUICK").is_some() || std::env::args().any(|a| a == "--test");
    let (requests, block) = if quick { (200, 50) } else { (5_000, 250) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (h1, h2) = runtime.block_on(async {
        let bed = start().await;
        let h1 = measure(&bed, false, requests, block).await;
        let h2 = measure(&bed, true, requests, block).await;
        (h1, h2)
    });
    let mut criterion = Criterion::default().configure_from_args();
    let matching = route_matching(&mut criterion, quick);

    println!(
        "\nwaypoint: {requests} sequential requests per path and protocol, interleaved in blocks of {block}"
    );
    println!(
        "{:<10} {:>12} {:>12} {:>10} {:>10} {:>12} {:>14}",
        "protocol", "path", "requests/s", "p50 µs", "p99 µs", "allocs/req", "added p50 µs"
    );
    let mut json = Vec::new();
    for (name, (straight, through)) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        for (path, n) in [("straight", straight), ("waypoint", through)] {
            println!(
                "{:<10} {:>12} {:>12.0} {:>10.1} {:>10.1} {:>12.1} {:>14}",
                name,
                path,
                n.per_second,
                n.p50.as_secs_f64() * 1e6,
                n.p99.as_secs_f64() * 1e6,
                n.allocations_per_request,
                if path == "waypoint" {
                    format!(
                        "{:.1}",
                        (through.p50.as_secs_f64() - straight.p50.as_secs_f64()) * 1e6
                    )
                } else {
                    String::new()
                }
            );
        }
        json.push(serde_json::json!({
            "protocol": name,
            "straight": {"requests_per_second": straight.per_second, "p50_us": straight.p50.as_secs_f64() * 1e6,
                         "p99_us": straight.p99.as_secs_f64() * 1e6, "allocations_per_request": straight.allocations_per_request},
            "waypoint": {"requests_per_second": through.per_second, "p50_us": through.p50.as_secs_f64() * 1e6,
                         "p99_us": through.p99.as_secs_f64() * 1e6, "allocations_per_request": through.allocations_per_request},
            "added_p50_us": (through.p50.as_secs_f64() - straight.p50.as_secs_f64()) * 1e6,
            "throughput_ratio": through.per_second / straight.per_second,
        }));
    }
    println!("\nroute matching (mean per lookup, the last of N prefix routes):");
    for (n, ns) in &matching {
        println!("  {n:>6} routes: {ns:>8.0} ns");
    }
    let report = serde_json::json!({
        "requests": json,
        "route_matching_ns": matching.iter().map(|(n, ns)| serde_json::json!({"routes": n, "ns": ns})).collect::<Vec<_>>(),
    });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-waypoint.json");
    if let Err(err) = std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {err}", path.display());
    }
    criterion.final_summary();
}
