use super::*;
use crate::xds::proto::ambient::waypoint::{HttpMatch, MatchType, PathMatch, ValueMatch};
use http::{HeaderMap, Method};

fn entry(name: &str, m: Option<HttpMatch>, consumer: &str) -> pb::RouteRule {
    pb::RouteRule {
        route_namespace: "ns".into(),
        route_name: "r".into(),
        rule_name: name.into(),
        consumer_namespace: consumer.into(),
        r#match: m.map(pb::route_rule::Match::Http),
        ..pb::RouteRule::default()
    }
}

fn path(kind: MatchType, value: &str) -> HttpMatch {
    HttpMatch {
        path: Some(PathMatch {
            r#type: kind.into(),
            value: value.into(),
        }),
        ..HttpMatch::default()
    }
}

fn table(entries: Vec<pb::RouteRule>) -> RouteTable {
    RouteTable::build(WaypointConfig {
        services: vec![pb::BoundService {
            key: "ns/svc.ns.svc.cluster.local".into(),
            vips: vec!["/10.96.0.1".into(), "10.96.0.2".into()],
            ports: vec![pb::ServicePort {
                port: 80,
                name: "http-web".into(),
                rules: entries,
                ..pb::ServicePort::default()
            }],
            ..pb::BoundService::default()
        }],
        ..WaypointConfig::default()
    })
}

/// The name of the entry `table` picks for a GET of `target` by a client from `namespace`.
fn pick(
    table: &RouteTable,
    namespace: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let view = RequestView {
        method: &Method::GET,
        path,
        query,
        headers: &map,
    };
    let service = table.service_by_vip("10.96.0.1".parse().unwrap())?;
    let set = service.ports.get(&80)?.rules_for(namespace)?;
    set.find(&view).map(|r| r.entry.rule_name.clone())
}

#[test]
fn the_first_matching_entry_in_control_plane_order_wins() {
    let t = table(vec![
        entry("exact", Some(path(MatchType::Exact, "/a/b")), ""),
        entry("long-prefix", Some(path(MatchType::Prefix, "/a/b/")), ""),
        entry("short-prefix", Some(path(MatchType::Prefix, "/a")), ""),
        entry(
            "header-only",
            Some(HttpMatch {
                headers: vec![ValueMatch {
                    name: "Version".into(),
                    r#type: MatchType::Exact.into(),
                    value: "two".into(),
                }],
                ..HttpMatch::default()
            }),
            "",
        ),
        entry("regex", Some(path(MatchType::Regex, "/r/[0-9]+")), ""),
        entry("root", None, ""),
    ]);
    let p = |target: &str| pick(&t, "ns", target, &[]);
    assert_eq!(p("/a/b").as_deref(), Some("exact"));
    assert_eq!(p("/a/b/c").as_deref(), Some("long-prefix"));
    assert_eq!(p("/a/b/").as_deref(), Some("long-prefix"));
    assert_eq!(p("/a/bc").as_deref(), Some("short-prefix"));
    assert_eq!(p("/ab").as_deref(), Some("root"));
    assert_eq!(p("/r/12").as_deref(), Some("regex"));
    assert_eq!(p("/r/12x").as_deref(), Some("root"));
    assert_eq!(
        pick(&t, "ns", "/x", &[("version", "two")]).as_deref(),
        Some("header-only")
    );
    // the other VIP spelling reaches the same Service
    assert!(t.service_by_vip("10.96.0.2".parse().unwrap()).is_some());
}

#[test]
fn query_and_method_matches() {
    let t = table(vec![
        entry(
            "query",
            Some(HttpMatch {
                query_params: vec![ValueMatch {
                    name: "animal".into(),
                    r#type: MatchType::Exact.into(),
                    value: "whale".into(),
                }],
                ..HttpMatch::default()
            }),
            "",
        ),
        entry(
            "head",
            Some(HttpMatch {
                method: "HEAD".into(),
                ..HttpMatch::default()
            }),
            "",
        ),
    ]);
    assert_eq!(
        pick(&t, "ns", "/?animal=whale", &[]).as_deref(),
        Some("query")
    );
    // case-sensitive; HEAD does not match a GET
    assert_eq!(pick(&t, "ns", "/?ANIMAL=Whale", &[]), None);
}

#[test]
fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
    let t = table(vec![
        entry("producer", None, ""),
        entry("consumer", None, "client-ns"),
    ]);
    assert_eq!(pick(&t, "client-ns", "/", &[]).as_deref(), Some("consumer"));
    assert_eq!(pick(&t, "other", "/", &[]).as_deref(), Some("producer"));
    // no route at all: default routing
    let empty = table(Vec::new());
    let port = &empty.service("ns/svc.ns.svc.cluster.local").unwrap().ports[&80];
    assert!(port.rules_for("ns").is_none());
    assert_eq!(port.protocol, Protocol::Http1);
}

#[test]
fn an_entry_that_cannot_be_compiled_is_chosen_not_skipped() {
    let t = table(vec![
        entry("broken", Some(path(MatchType::Regex, "/(unclosed")), ""),
        entry("root", None, ""),
    ]);
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert!(
        t.errors[0].contains("invalid regular expression"),
        "{:?}",
        t.errors
    );
    assert_eq!(pick(&t, "ns", "/anything", &[]).as_deref(), Some("broken"));
}

#[test]
fn protocol_follows_app_protocol_then_the_port_name() {
    assert_eq!(
        Protocol::detect("kubernetes.io/h2c", "tcp"),
        Protocol::Http2
    );
    assert_eq!(Protocol::detect("", "grpc-api"), Protocol::Http2);
    assert_eq!(Protocol::detect("", "http2"), Protocol::Http2);
    assert_eq!(Protocol::detect("", "http-web"), Protocol::Http1);
    assert_eq!(Protocol::detect("HTTP", "redis"), Protocol::Http1);
    assert_eq!(Protocol::detect("", "redis"), Protocol::Tcp);
    assert_eq!(Protocol::detect("mysql", "http"), Protocol::Tcp);
}

#[test]
fn ten_thousand_routes_are_indexed_not_scanned() {
    let entries: Vec<pb::RouteRule> = (0..10_000)
        .map(|i| {
            entry(
                &format!("r{i}"),
                Some(path(MatchType::Prefix, &format!("/svc{i}"))),
                "",
            )
        })
        .collect();
    let t = table(entries);
    assert_eq!(pick(&t, "ns", "/svc9999/x", &[]).as_deref(), Some("r9999"));
    assert_eq!(pick(&t, "ns", "/svc5", &[]).as_deref(), Some("r5"));
    assert_eq!(pick(&t, "ns", "/nothing", &[]), None);
    let set = t
        .service_by_vip("10.96.0.1".parse().unwrap())
        .unwrap()
        .ports[&80]
        .rules_for("ns")
        .unwrap();
    // only the entries on the path's segment prefixes are looked at
    assert_eq!(set.index.candidates("/svc42/a/b").len(), 1);
}
