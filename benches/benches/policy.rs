//! What authorization costs. Per connection at the ztunnel: finding the policies that apply
//! to the destination workload (global, its namespace's, the ones it names) and evaluating
//! them, against 1, 100 and 10,000 policies in the mesh — upstream's shape, DENY policies of
//! 10 rules, spread over namespaces and selectors — and, for contrast, 10,000 that all apply
//! to the workload (no index can help there). Per request at the waypoint: 1 and 1,000 L7
//! policies. A policy update against 10,000 open connections (the re-check that closes the
//! ones now denied). `BENCH_QUICK=1` shrinks it to a smoke run.
//!
//! Each number is also measured by hand (mean of many rounds) for the table and
//! `target/bench-policy.json`; criterion keeps its own statistics.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use dataplane::identity::Identity;
use dataplane::policy::request::{self, HttpAttributes, RequestContext};
use dataplane::policy::{
    Action, Authorization, Clause, ConnectionContext, Match, Rule, Scope, StringMatch, evaluate,
};
use dataplane::state::{State, TunnelProtocol, Workload};
use dataplane::xds::proto::ambient::waypoint as pb;
use dataplane::ztunnel::ConnectionTracker;

/// Policies per namespace in the spread-out mesh.
const PER_NAMESPACE: usize = 100;

fn identity(ns: &str, sa: &str) -> Identity {
    Identity {
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

/// A DENY rule that does not match the benchmark's connection: a principal, a namespace and
/// a port it does not have.
fn deny_rule(i: usize) -> Rule {
    Rule {
        clauses: vec![
            Clause {
                matches: vec![Match {
                    principals: vec![StringMatch::Exact(format!(
                        "cluster.local/ns/other/sa/sa{i}"
                    ))],
                    namespaces: vec![StringMatch::Prefix(format!("blocked{i}"))],
                    ..Match::default()
                }],
            },
            Clause {
                matches: vec![Match {
                    destination_ports: vec![9000 + (i % 100) as u16],
                    ..Match::default()
                }],
            },
        ],
    }
}

fn deny_policy(namespace: &str, name: String, scope: Scope) -> Authorization {
    Authorization {
        name,
        namespace: namespace.into(),
        scope,
        action: Action::Deny,
        rules: (0..10).map(deny_rule).collect(),
        dry_run: false,
    }
}

fn workload(uid: &str, namespace: &str, ip: IpAddr, names: Vec<String>) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: namespace.into(),
        service_account: "server".into(),
        trust_domain: "cluster.local".into(),
        workload_ips: vec![ip],
        protocol: TunnelProtocol::Hbone,
        authorization_policies: names,
        ..Workload::default()
    }
}

/// `n` DENY policies of 10 rules: in namespaces of 100 policies each, the first of each
/// namespace namespace-wide, the rest selector-scoped; the server workload in `ns0` names
/// two of its namespace's selector policies. With `all_apply`, every policy is instead
/// namespace-wide in `ns0`.
fn mesh(n: usize, all_apply: bool) -> (State, Workload) {
    let mut state = State::default();
    for i in 0..n {
        let (namespace, scope) = if all_apply {
            ("ns0".to_string(), Scope::Namespace)
        } else {
            let scope = if i % PER_NAMESPACE == 0 {
                Scope::Namespace
            } else {
                Scope::WorkloadSelector
            };
            (format!("ns{}", i / PER_NAMESPACE), scope)
        };
        state.insert_policy(deny_policy(&namespace, format!("deny-{i}"), scope));
    }
    let names = ["ns0/deny-1", "ns0/deny-2"]
        .iter()
        .filter(|k| !all_apply && state.policies().any(|p| p.key() == **k))
        .map(|k| k.to_string())
        .collect();
    let server = workload("server", "ns0", "10.0.0.2".parse().expect("ip"), names);
    state.insert_workload(server.clone());
    (state, server)
}

fn connection() -> ConnectionContext {
    ConnectionContext {
        source_identity: Some(identity("client", "web")),
        source_ip: "10.0.0.1".parse().expect("ip"),
        destination_ip: "10.0.0.2".parse().expect("ip"),
        destination_port: 8080,
    }
}

/// What the ztunnel does per inbound connection.
fn authorize_connection(state: &State, server: &Workload, ctx: &ConnectionContext) -> bool {
    let policies = state.policies_for(server);
    evaluate(ctx, policies.iter().map(|p| &**p)).allowed()
}

fn mean_ns(rounds: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn quick_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    quick: bool,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    if quick {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
    }
    group
}

/// (policies in the mesh, all apply, mean ns per connection, policies that applied)
fn per_connection(c: &mut Criterion, quick: bool) -> Vec<(usize, bool, f64, usize)> {
    let mut results = Vec::new();
    let ctx = connection();
    let mut group = quick_group(c, "ztunnel_connection", quick);
    for (n, all_apply) in [(1, false), (100, false), (10_000, false), (10_000, true)] {
        let (state, server) = mesh(n, all_apply);
        assert!(
            authorize_connection(&state, &server, &ctx),
            "nothing denies"
        );
        let applied = state.policies_for(&server).len();
        let id = format!("{n}{}", if all_apply { "-all-apply" } else { "" });
        group.bench_with_input(BenchmarkId::from_parameter(&id), &n, |b, _| {
            b.iter(|| authorize_connection(&state, &server, &ctx))
        });
        let rounds = match (quick, all_apply) {
            (true, _) => 200,
            (false, true) => 2_000,
            (false, false) => 200_000,
        };
        let ns = mean_ns(rounds, || {
            std::hint::black_box(authorize_connection(&state, &server, &ctx));
        });
        results.push((n, all_apply, ns, applied));
    }
    group.finish();
    results
}

/// `n` L7 DENY policies on paths the request does not take, then one ALLOW for readers.
fn waypoint_policies(n: usize) -> Vec<request::RequestPolicy> {
    let mut policies: Vec<pb::AuthorizationPolicy> = (0..n.saturating_sub(1))
        .map(|i| pb::AuthorizationPolicy {
            namespace: "shop".into(),
            name: format!("deny-{i}"),
            action: pb::Action::Deny.into(),
            rules: vec![pb::Rule {
                to: vec![pb::Operation {
                    methods: vec!["DELETE".into(), "PUT".into()],
                    paths: vec![format!("/admin/{i}/*")],
                    ..pb::Operation::default()
                }],
                when: vec![pb::Condition {
                    key: "request.headers[x-tenant]".into(),
                    values: vec![format!("tenant-{i}")],
                    not_values: Vec::new(),
                }],
                ..pb::Rule::default()
            }],
            ..pb::AuthorizationPolicy::default()
        })
        .collect();
    policies.push(pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: "readers".into(),
        action: pb::Action::Allow.into(),
        rules: vec![pb::Rule {
            from: vec![pb::Source {
                principals: vec!["cluster.local/ns/shop/sa/web".into()],
                ..pb::Source::default()
            }],
            to: vec![pb::Operation {
                methods: vec!["GET".into()],
                paths: vec!["/api/*".into()],
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
        ..pb::AuthorizationPolicy::default()
    });
    policies.iter().map(request::compile).collect()
}

/// (policies, mean ns per request)
fn per_request(c: &mut Criterion, quick: bool) -> Vec<(usize, f64)> {
    let id = identity("shop", "web");
    let principal = id.principal();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("tenant-none"));
    let ctx = RequestContext {
        identity: Some(&id),
        principal: Some(&principal),
        source_ip: "10.0.0.1".parse().expect("ip"),
        destination_ip: "10.96.0.10".parse().expect("ip"),
        destination_port: 80,
        http: Some(HttpAttributes {
            method: "GET",
            host: "echo.shop.svc.cluster.local",
            path: "/api/items/42",
            headers: &headers,
        }),
    };
    let mut results = Vec::new();
    let mut group = quick_group(c, "waypoint_request", quick);
    for n in [1usize, 1_000] {
        let policies = waypoint_policies(n);
        assert!(request::evaluate(&ctx, &policies).allowed);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| request::evaluate(&ctx, &policies))
        });
        let rounds = if quick { 500 } else { 20_000 };
        let ns = mean_ns(rounds, || {
            std::hint::black_box(request::evaluate(&ctx, &policies));
        });
        results.push((n, ns));
    }
    group.finish();
    results
}

/// A DENY for one client namespace arrives while 10,000 connections are open to 100
/// workloads (in 10,000 spread-out policies): the time to re-check them all, and how many
/// it closed (the tenth of them from that namespace).
fn update_against_open_connections(quick: bool) -> (usize, f64, usize) {
    let connections = if quick { 1_000 } else { 10_000 };
    let (mut state, _) = mesh(10_000, false);
    for w in 0..100u8 {
        let ip = IpAddr::from([10, 1, 0, w]);
        state.insert_workload(workload(&format!("server-{w}"), "ns0", ip, Vec::new()));
    }
    let tracker = std::sync::Arc::new(ConnectionTracker::default());
    let mut open = Vec::with_capacity(connections);
    for i in 0..connections {
        let client_ns = format!("client{}", i % 10);
        let ctx = ConnectionContext {
            source_identity: Some(identity(&client_ns, "web")),
            source_ip: IpAddr::from([10, 2, (i / 256) as u8, (i % 256) as u8]),
            destination_ip: IpAddr::from([10, 1, 0, (i % 100) as u8]),
            destination_port: 8080,
        };
        open.push(tracker.register(ctx, format!("server-{}", i % 100)));
    }
    assert_eq!(tracker.recheck(&state), 0, "nothing denied yet");
    state.insert_policy(Authorization {
        name: "deny-client0".into(),
        namespace: "ns0".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    namespaces: vec![StringMatch::Exact("client0".into())],
                    ..Match::default()
                }],
            }],
        }],
        dry_run: false,
    });
    let start = Instant::now();
    let closed = tracker.recheck(&state);
    let ns = start.elapsed().as_nanos() as f64;
    drop(open);
    (connections, ns, closed)
}

fn main() {
    let quick =
        std::env::var_os("BENCH_QUICK").is_some() || std::env::args().any(|a| a == "--test");
    let mut criterion = Criterion::default().configure_from_args();
    let connection = per_connection(&mut criterion, quick);
    let request = per_request(&mut criterion, quick);
    let (open, update_ns, closed) = update_against_open_connections(quick);

    println!("\nztunnel, per connection (find the applicable policies, then evaluate):");
    println!(
        "{:>10} {:>16} {:>12} {:>10}",
        "policies", "shape", "applied", "µs"
    );
    for (n, all_apply, ns, applied) in &connection {
        println!(
            "{n:>10} {:>16} {applied:>12} {:>10.2}",
            if *all_apply {
                "all apply"
            } else {
                "spread (index)"
            },
            ns / 1000.0
        );
    }
    println!("\nwaypoint, per request (L7 policies, all attached to the Service):");
    for (n, ns) in &request {
        println!("{n:>10} policies: {:>10.2} µs", ns / 1000.0);
    }
    println!(
        "\npolicy update against {open} open connections: re-checked in {:.2} ms, {closed} closed",
        update_ns / 1e6
    );
    let report = serde_json::json!({
        "ztunnel_connection": connection.iter().map(|(n, all, ns, applied)| serde_json::json!({
            "policies": n, "all_apply": all, "applied": applied, "us": ns / 1000.0,
        })).collect::<Vec<_>>(),
        "waypoint_request": request.iter().map(|(n, ns)| serde_json::json!({"policies": n, "us": ns / 1000.0})).collect::<Vec<_>>(),
        "update": {"open_connections": open, "ms": update_ns / 1e6, "closed": closed},
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-policy.json");
    if let Err(err) = std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {err}", path.display());
    }
    criterion.final_summary();
}
