//! Fuzz targets for the waypoint's `WaypointConfig` (`ambient.waypoint.WaypointConfig`), the
//! one xDS resource a waypoint decodes itself: bytes through `decode` and [`RouteTable::build`]
//! (what `configure` swaps in), then requests through the compiled table. A configuration
//! from a newer, older or broken istiod must not panic the waypoint, compile in bounded time
//! (regular expressions included), and route every request to the entry a plain
//! first-match scan picks: the path index may skip entries only when they cannot match.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::fuzzing::{bounded, config, hostile_text};
use crate::policy::request::{HttpAttributes, RequestContext, evaluate};
use crate::xds::proto::ambient::waypoint::route_rule;

/// Path segments shared by rules and requests, so they meet.
fn path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec!["", "a", "b", "api", "v1", "a.b", "%2F", ".."]);
    prop::collection::vec(segment, 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn regex() -> impl Strategy<Value = String> {
    prop_oneof![
        path().prop_map(|p| format!("{p}.*")),
        prop::sample::select(vec![
            ".*",
            "(",
            "[",
            "a{1000}{1000}",
            "(a|b)*c",
            "\\",
            "(?i)/API/.*",
            "\\p{L}+",
            "(a*)*b",
            "[^/]+/[^/]+",
            "",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ]
}

fn value_match() -> impl Strategy<Value = pb::ValueMatch> {
    let name = prop_oneof![
        prop::sample::select(vec!["x-user", "X-User", "version", "bad name", ":path", ""])
            .prop_map(str::to_string),
        "\\PC{0,8}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec!["a", "b", ""]).prop_map(str::to_string),
        regex()
    ];
    (name, 0i32..3, value).prop_map(|(name, r#type, value)| pb::ValueMatch {
        name,
        r#type,
        value,
    })
}

fn route_match() -> impl Strategy<Value = Option<route_rule::Match>> {
    let path_match = prop_oneof![path(), regex(), hostile_text()];
    let http = (
        prop::option::of(
            (0i32..4, path_match).prop_map(|(r#type, value)| pb::PathMatch { r#type, value }),
        ),
        prop::collection::vec(value_match(), 0..2),
        prop::collection::vec(value_match(), 0..2),
        prop::sample::select(vec!["", "GET", "POST", "get", "BAD METHOD", "\u{0}"]),
    )
        .prop_map(|(path, headers, query_params, method)| {
            route_rule::Match::Http(pb::HttpMatch {
                path,
                headers,
                query_params,
                method: method.to_string(),
            })
        });
    let grpc = (
        regex(),
        regex(),
        0i32..4,
        prop::collection::vec(value_match(), 0..2),
    )
        .prop_map(|(service, method, r#type, headers)| {
            route_rule::Match::Grpc(pb::GrpcMatch {
                service,
                method,
                r#type,
                headers,
            })
        });
    prop::option::of(prop_oneof![4 => http, 1 => grpc])
}

fn rule() -> impl Strategy<Value = pb::RouteRule> {
    let consumer = prop::sample::select(vec!["", "", "shop", "other"]);
    (route_match(), consumer, any::<u32>()).prop_map(|(r#match, consumer, rule_index)| {
        pb::RouteRule {
            r#match,
            consumer_namespace: consumer.to_string(),
            rule_index,
            route_name: "r".into(),
            ..pb::RouteRule::default()
        }
    })
}

fn policy() -> impl Strategy<Value = pb::AuthorizationPolicy> {
    let strings = || prop::collection::vec(prop_oneof![hostile_text(), path()], 0..2);
    let source =
        (strings(), strings(), strings()).prop_map(|(principals, ip_blocks, namespaces)| {
            pb::Source {
                principals,
                ip_blocks,
                namespaces,
                ..pb::Source::default()
            }
        });
    let operation = (
        strings(),
        prop::collection::vec(any::<u32>(), 0..2),
        strings(),
    )
        .prop_map(|(paths, ports, methods)| pb::Operation {
            paths,
            ports,
            methods,
            ..pb::Operation::default()
        });
    let condition = (hostile_text(), strings()).prop_map(|(key, values)| pb::Condition {
        key,
        values,
        ..pb::Condition::default()
    });
    let rule = (
        prop::collection::vec(source, 0..2),
        prop::collection::vec(operation, 0..2),
        prop::collection::vec(condition, 0..2),
    )
        .prop_map(|(from, to, when)| pb::Rule { from, to, when });
    (
        any::<i32>(),
        0i32..5,
        any::<bool>(),
        prop::collection::vec(rule, 0..2),
    )
        .prop_map(|(n, action, dry_run, rules)| pb::AuthorizationPolicy {
            name: format!("p{n}"),
            action,
            dry_run,
            rules,
            ..pb::AuthorizationPolicy::default()
        })
}

fn config_strategy() -> impl Strategy<Value = WaypointConfig> {
    let vip = prop_oneof![
        Just("10.96.0.1".to_string()),
        Just("/10.96.0.2".to_string()),
        Just("net/fd00::1".to_string()),
        hostile_text(),
    ];
    let port = (
        prop_oneof![Just(80u32), Just(8080u32), any::<u32>()],
        prop::collection::vec(rule(), 0..8),
    )
        .prop_map(|(port, rules)| pb::ServicePort {
            port,
            rules,
            ..pb::ServicePort::default()
        });
    let service = (
        prop::sample::select(vec!["shop/a", "shop/b", ""]),
        prop::collection::vec(vip, 0..3),
        prop::collection::vec(port, 0..3),
        prop::collection::vec(policy(), 0..2),
    )
        .prop_map(|(key, vips, ports, policies)| pb::BoundService {
            key: key.to_string(),
            vips,
            ports,
            policies,
            ..pb::BoundService::default()
        });
    (
        prop::collection::vec(service, 0..3),
        prop::collection::vec(policy(), 0..2),
    )
        .prop_map(|(services, policies)| WaypointConfig {
            services,
            policies,
            ..WaypointConfig::default()
        })
}

/// A request to `vip:port` from a client in `namespace`.
#[derive(Debug, Clone)]
struct Request {
    port: u16,
    namespace: &'static str,
    method: Method,
    path: String,
    query: Option<String>,
    header: Option<(&'static str, String)>,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![80u16, 8080, 0]),
        prop::sample::select(vec!["shop", "other", "default"]),
        prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE]),
        prop_oneof![4 => path(), 1 => Just("*".to_string())],
        prop::option::of("(version|a)=(a|b)(&a=b)?"),
        prop::option::of((prop::sample::select(vec!["x-user", "version"]), "[ab]{0,2}")),
    )
        .prop_map(|(port, namespace, method, path, query, header)| Request {
            port,
            namespace,
            method,
            path,
            query,
            header,
        })
}

/// Every request: the indexed lookup agrees with a first-match scan over the same entries,
/// and what is found is the port's entry for the client's namespace.
fn check_routes(table: &RouteTable, requests: &[Request]) -> Result<(), TestCaseError> {
    for service in table.by_key.values() {
        for r in requests {
            let Some(port) = service.ports.get(&r.port) else {
                continue;
            };
            let Some(set) = port.rules_for(r.namespace) else {
                continue;
            };
            let mut headers = HeaderMap::new();
            if let Some((name, value)) = &r.header {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            let view = RequestView {
                method: &r.method,
                path: &r.path,
                query: r.query.as_deref(),
                headers: &headers,
            };
            let found = set.find(&view).map(Arc::as_ptr);
            let scanned = set
                .rules
                .iter()
                .find(|rule| match &rule.matcher {
                    Ok(m) => m.matches(&view),
                    Err(_) => true,
                })
                .map(Arc::as_ptr);
            prop_assert_eq!(found, scanned, "{:?}", r);
            if let Some(rule) = set.find(&view) {
                let consumer = &rule.entry.consumer_namespace;
                prop_assert!(consumer.is_empty() || consumer == r.namespace);
            }
        }
    }
    Ok(())
}

/// Policies as the waypoint meets them: an unevaluable one denies whatever it covers.
fn check_policies(table: &RouteTable) -> Result<(), TestCaseError> {
    let headers = HeaderMap::new();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let ctx = RequestContext {
        identity: None,
        principal: None,
        source_ip: ip,
        destination_ip: ip,
        destination_port: 80,
        http: Some(HttpAttributes {
            method: "GET",
            host: "a",
            path: "/a",
            headers: &headers,
        }),
    };
    for policies in
        std::iter::once(&table.policies).chain(table.by_key.values().map(|s| &s.policies))
    {
        let decision = evaluate(&ctx, policies);
        if policies
            .iter()
            .any(|p| !p.dry_run && p.unevaluable.is_some())
        {
            prop_assert!(!decision.allowed);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as a WaypointConfig: decoded or refused, never a panic; whatever
    /// decodes builds a table that routes.
    #[test]
    fn fuzz_waypoint_config_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        requests in prop::collection::vec(request(), 1..4),
    ) {
        if let Ok(config) = WaypointConfig::decode(bytes.as_slice()) {
            let table = bounded("building the route table", || RouteTable::build(config))?;
            check_routes(&table, &requests)?;
        }
    }

    /// Structurally valid configurations with hostile values: invalid regular expressions,
    /// header names and methods (answered 500, listed in `errors`), ports over 65535
    /// (dropped), unparseable VIPs (ignored), unevaluable policies (deny).
    #[test]
    fn fuzz_waypoint_config_hostile(
        config in config_strategy(),
        requests in prop::collection::vec(request(), 1..6),
    ) {
        let bytes = config.encode_to_vec();
        let decoded = WaypointConfig::decode(bytes.as_slice()).unwrap();
        let table = bounded("building the route table", || RouteTable::build(decoded))?;
        let failed = table
            .by_key
            .values()
            .flat_map(|s| s.ports.values())
            .flat_map(|p| std::iter::once(&p.producers).chain(p.consumers.values()))
            .flat_map(|set| &set.rules)
            .filter(|r| r.matcher.is_err())
            .count();
        prop_assert!(table.errors.len() >= failed);
        for (key, bound) in &table.by_key {
            // The last service with the key is the one kept; its ports are never truncated.
            let written = config.services.iter().rev().find(|s| &s.key == key).unwrap();
            for port in bound.ports.keys() {
                prop_assert!(written.ports.iter().any(|p| p.port == u32::from(*port)));
            }
        }
        for service in &config.services {
            for vip in &service.vips {
                let address = vip.rsplit_once('/').map_or(vip.as_str(), |(_, a)| a);
                if let Ok(ip) = address.parse::<IpAddr>() {
                    prop_assert!(table.service_by_vip(ip).is_some());
                }
            }
        }
        bounded("routing", || check_routes(&table, &requests))??;
        check_policies(&table)?;
    }
}
