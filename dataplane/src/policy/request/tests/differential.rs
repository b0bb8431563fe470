//! Differential tests: random policy sets and requests (HTTP and not) through the
//! production path (`compile` + `evaluate` + `explain`) against a reference evaluator
//! written straight from policy-semantics §2 over the xDS form. The reference shares no code
//! with the evaluator: not `StringMatch`, `Cidr`, `PathPattern`, `Key` nor `Identity`'s
//! principal.
//!
//! Bugs planted in the reference while writing this, each caught within the default case
//! count: `notPaths` read as positive; a `{**}` that also takes `/files`; hosts compared
//! case-sensitively; an ALLOW rule on a TCP port keeping its L4 sources.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::super::{HttpAttributes, RequestContext, compile, evaluate, explain};
use crate::identity::Identity;
use crate::xds::proto::ambient::waypoint as pb;

/// A request as the reference sees it.
#[derive(Debug, Clone)]
struct Req {
    /// (trust domain, namespace, service account)
    peer: Option<(String, String, String)>,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    port: u16,
    http: Option<(String, String, String, Vec<String>)>,
}

/// `*` = present, `*x` suffix, `x*` prefix, else exact.
fn written(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.len() >= suffix.len() && value[value.len() - suffix.len()..] == *suffix;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.len() >= prefix.len() && value[..prefix.len()] == *prefix;
    }
    pattern == value
}

/// A path pattern: templates compared segment list against segment list.
fn path_hit(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') {
        return written(pattern, path);
    }
    let want: Vec<&str> = pattern[1..].split('/').collect();
    let have: Vec<&str> = path
        .strip_prefix('/')
        .unwrap_or("\u{0}")
        .split('/')
        .collect();
    if !path.starts_with('/') {
        return false;
    }
    if want.last() == Some(&"{**}") {
        let fixed = &want[..want.len() - 1];
        return have.len() > fixed.len()
            && fixed
                .iter()
                .zip(&have)
                .all(|(w, h)| (*w == "{*}" && !h.is_empty()) || w == h);
    }
    want.len() == have.len()
        && want
            .iter()
            .zip(&have)
            .all(|(w, h)| (*w == "{*}" && !h.is_empty()) || w == h)
}

fn host_hit(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_lowercase();
    let host = host.to_lowercase();
    let bare = match host.rfind(':') {
        Some(i) if host[i + 1..].chars().all(|c| c.is_ascii_digit()) && i + 1 < host.len() => {
            host[..i].to_string()
        }
        _ => host.clone(),
    };
    written(&pattern, &host) || written(&pattern, &bare)
}

fn cidr_hit(cidr: &str, ip: Ipv4Addr) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().unwrap()),
        None => (cidr, 32),
    };
    let net: Ipv4Addr = net.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(net) & mask == u32::from(ip) & mask
}

/// The request's value for a field or `when` key; `Err(())` when it is HTTP-only and the
/// request is not HTTP.
enum Val {
    None,
    Text(String),
    Ip(Ipv4Addr),
    Port(u16),
}

fn value_of(key: &str, r: &Req) -> Result<Val, ()> {
    let http_only = key.starts_with("request.") || matches!(key, "hosts" | "methods" | "paths");
    if http_only && r.http.is_none() {
        return Err(());
    }
    let peer = r.peer.as_ref();
    Ok(match key {
        "principals" | "source.principal" => match peer {
            Some((td, ns, sa)) => Val::Text(format!("{td}/ns/{ns}/sa/{sa}")),
            None => Val::None,
        },
        "namespaces" | "source.namespace" => peer.map_or(Val::None, |p| Val::Text(p.1.clone())),
        "trustDomains" => peer.map_or(Val::None, |p| Val::Text(p.0.clone())),
        "serviceAccounts" => peer.map_or(Val::None, |p| Val::Text(format!("{}/{}", p.1, p.2))),
        "ipBlocks" | "source.ip" => Val::Ip(r.source),
        "destination.ip" => Val::Ip(r.destination),
        "ports" | "destination.port" => Val::Port(r.port),
        "connection.sni" => Val::None,
        _ => {
            let (method, host, path, header) = r.http.as_ref().unwrap();
            match key {
                "methods" => Val::Text(method.clone()),
                "hosts" => Val::Text(host.clone()),
                "paths" => Val::Text(path.clone()),
                "request.headers[x-v]" if !header.is_empty() => Val::Text(header.join(",")),
                _ => Val::None,
            }
        }
    })
}

fn hit(key: &str, pattern: &str, v: &Val) -> bool {
    match v {
        Val::None => false,
        Val::Text(t) if key == "hosts" => host_hit(pattern, t),
        Val::Text(t) if key == "paths" => path_hit(pattern, t),
        Val::Text(t) if key == "serviceAccounts" => pattern == t,
        Val::Text(t) => written(pattern, t),
        Val::Ip(ip) => cidr_hit(pattern, *ip),
        Val::Port(p) => pattern.parse::<u16>() == Ok(*p),
    }
}

/// One field: positive values (one must hit) or negative (none may hit). Off HTTP an
/// HTTP-only field holds for anything but ALLOW (ALLOW rules with one are dropped before).
fn field(key: &str, values: &[String], negative: bool, r: &Req) -> bool {
    if values.is_empty() {
        return true;
    }
    match value_of(key, r) {
        Err(()) => true,
        Ok(v) => values.iter().any(|p| hit(key, p, &v)) != negative,
    }
}

fn source_fields(s: &pb::Source) -> Vec<(&'static str, &Vec<String>, bool)> {
    vec![
        ("principals", &s.principals, false),
        ("principals", &s.not_principals, true),
        ("namespaces", &s.namespaces, false),
        ("namespaces", &s.not_namespaces, true),
        ("serviceAccounts", &s.service_accounts, false),
        ("serviceAccounts", &s.not_service_accounts, true),
        ("ipBlocks", &s.ip_blocks, false),
        ("ipBlocks", &s.not_ip_blocks, true),
        ("trustDomains", &s.trust_domains, false),
        ("trustDomains", &s.not_trust_domains, true),
        ("request.auth.principal", &s.request_principals, false),
        ("request.auth.principal", &s.not_request_principals, true),
    ]
}

fn operation_fields(o: &pb::Operation) -> Vec<(&'static str, Vec<String>, bool)> {
    let ports = |l: &[u32]| l.iter().map(u32::to_string).collect();
    vec![
        ("hosts", o.hosts.clone(), false),
        ("hosts", o.not_hosts.clone(), true),
        ("ports", ports(&o.ports), false),
        ("ports", ports(&o.not_ports), true),
        ("methods", o.methods.clone(), false),
        ("methods", o.not_methods.clone(), true),
        ("paths", o.paths.clone(), false),
        ("paths", o.not_paths.clone(), true),
    ]
}

fn names_http(rule: &pb::Rule) -> bool {
    let sources = rule
        .from
        .iter()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let operations = rule.to.iter().any(|o| {
        [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|l| !l.is_empty())
    });
    sources || operations || rule.when.iter().any(|c| c.key.starts_with("request."))
}

fn rule_hit(rule: &pb::Rule, allow: bool, r: &Req) -> bool {
    if allow && r.http.is_none() && names_http(rule) {
        return false;
    }
    let from = rule.from.is_empty()
        || rule.from.iter().any(|s| {
            let fields = source_fields(s);
            fields.iter().any(|(_, v, _)| !v.is_empty())
                && fields.iter().all(|(k, v, n)| field(k, v, *n, r))
        });
    let to = rule.to.is_empty()
        || rule.to.iter().any(|o| {
            let fields = operation_fields(o);
            fields.iter().any(|(_, v, _)| !v.is_empty())
                && fields.iter().all(|(k, v, n)| field(k, v, *n, r))
        });
    let when = rule
        .when
        .iter()
        .all(|c| field(&c.key, &c.values, false, r) && field(&c.key, &c.not_values, true, r));
    from && to && when
}

fn policy_hit(p: &pb::AuthorizationPolicy, r: &Req) -> bool {
    let allow = p.action() == pb::Action::Allow;
    p.rules.iter().any(|rule| rule_hit(rule, allow, r))
}

/// §2.1: CUSTOM (denies: no authorizer), DENY, no ALLOW → allow, some ALLOW must match.
fn reference(policies: &[pb::AuthorizationPolicy], r: &Req) -> bool {
    let live: Vec<&pb::AuthorizationPolicy> = policies.iter().filter(|p| !p.dry_run).collect();
    let with = |a: pb::Action| live.iter().filter(move |p| p.action() == a);
    if with(pb::Action::Custom).any(|p| policy_hit(p, r)) {
        return false;
    }
    if with(pb::Action::Deny).any(|p| policy_hit(p, r)) {
        return false;
    }
    let mut allows = with(pb::Action::Allow).peekable();
    allows.peek().is_none() || allows.any(|p| policy_hit(p, r))
}

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(values), 0..=2)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// Most fields left empty, so rules are neither always nor never matching.
fn sparse(values: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![3 => Just(Vec::new()), 1 => pick(values)]
}

fn arb_source() -> impl Strategy<Value = pb::Source> {
    const PRINCIPALS: &[&str] = &[
        "cluster.local/ns/a/sa/x",
        "cluster.local/ns/b/sa/y",
        "*",
        "other.td/*",
        "*/sa/x",
    ];
    const NAMESPACES: &[&str] = &["a", "b*", "*", "*c"];
    const ACCOUNTS: &[&str] = &["a/x", "b/y", "c/x"];
    const BLOCKS: &[&str] = &["10.0.0.0/24", "10.0.1.2", "10.0.0.0/16", "0.0.0.0/0"];
    const DOMAINS: &[&str] = &["cluster.local", "other.td"];
    (
        (sparse(PRINCIPALS), sparse(PRINCIPALS)),
        (sparse(NAMESPACES), sparse(NAMESPACES)),
        (sparse(ACCOUNTS), sparse(ACCOUNTS)),
        (sparse(BLOCKS), sparse(BLOCKS)),
        (sparse(DOMAINS), sparse(DOMAINS)),
        prop_oneof![5 => Just(Vec::new()), 1 => Just(vec!["*".to_string()])],
    )
        .prop_map(|(p, n, s, i, t, rp)| pb::Source {
            principals: p.0,
            not_principals: p.1,
            namespaces: n.0,
            not_namespaces: n.1,
            service_accounts: s.0,
            not_service_accounts: s.1,
            ip_blocks: i.0,
            not_ip_blocks: i.1,
            trust_domains: t.0,
            not_trust_domains: t.1,
            request_principals: rp,
            ..pb::Source::default()
        })
}

fn arb_operation() -> impl Strategy<Value = pb::Operation> {
    const HOSTS: &[&str] = &["echo.shop", "*.shop", "other.*", "*"];
    const METHODS: &[&str] = &["GET", "POST", "*"];
    const PATHS: &[&str] = &[
        "/api*",
        "/api/items",
        "*/7",
        "/files/{**}",
        "/api/{*}/7",
        "*",
        "/",
    ];
    let ports = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(prop::sample::select(&[80u32, 8080][..]), 1..=2)
    ];
    (
        (sparse(HOSTS), sparse(HOSTS)),
        (ports.clone(), ports),
        (sparse(METHODS), sparse(METHODS)),
        (sparse(PATHS), sparse(PATHS)),
    )
        .prop_map(|(h, p, m, pa)| pb::Operation {
            hosts: h.0,
            not_hosts: h.1,
            ports: p.0,
            not_ports: p.1,
            methods: m.0,
            not_methods: m.1,
            paths: pa.0,
            not_paths: pa.1,
        })
}

fn arb_condition() -> impl Strategy<Value = pb::Condition> {
    let keyed = |key: &'static str, values: &'static [&'static str]| {
        let some = prop::collection::vec(prop::sample::select(values), 1..=2)
            .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        (some, sparse(values)).prop_map(move |(values, not_values)| pb::Condition {
            key: key.into(),
            values,
            not_values,
        })
    };
    prop_oneof![
        keyed("request.headers[x-v]", &["v1", "v*", "*2"]),
        keyed("source.ip", &["10.0.0.0/24", "10.0.1.3"]),
        keyed("destination.port", &["80", "9090"]),
        keyed("source.namespace", &["a", "b*"]),
        keyed("source.principal", &["cluster.local/ns/c/sa/x", "*"]),
        keyed("request.auth.claims[iss]", &["issuer"]),
        keyed("connection.sni", &["*"]),
        keyed("destination.ip", &["10.96.0.0/16", "10.96.0.10"]),
    ]
}

fn arb_rule() -> impl Strategy<Value = pb::Rule> {
    (
        prop::collection::vec(arb_source(), 0..=2),
        prop::collection::vec(arb_operation(), 0..=2),
        prop::collection::vec(arb_condition(), 0..=1),
    )
        .prop_map(|(from, to, when)| pb::Rule { from, to, when })
}

fn arb_policy() -> impl Strategy<Value = pb::AuthorizationPolicy> {
    (
        prop::sample::select(
            &[
                pb::Action::Allow,
                pb::Action::Allow,
                pb::Action::Deny,
                pb::Action::Audit,
                pb::Action::Custom,
            ][..],
        ),
        prop::collection::vec(arb_rule(), 0..=2),
        prop::bool::weighted(0.15),
        0..1000u32,
    )
        .prop_map(|(action, rules, dry_run, id)| pb::AuthorizationPolicy {
            namespace: "ns".into(),
            name: format!("p{id}"),
            action: action.into(),
            provider: "ext".into(),
            dry_run,
            rules,
        })
}

fn arb_request() -> impl Strategy<Value = Req> {
    let peer = prop::option::weighted(
        0.85,
        (
            prop::sample::select(&["cluster.local", "other.td"][..]),
            prop::sample::select(&["a", "b", "bc", "c"][..]),
            prop::sample::select(&["x", "y"][..]),
        )
            .prop_map(|(t, n, s)| (t.to_string(), n.to_string(), s.to_string())),
    );
    let http = prop::option::weighted(
        0.8,
        (
            prop::sample::select(&["GET", "POST", "DELETE"][..]),
            prop::sample::select(
                &["echo.shop", "ECHO.shop:80", "other.example", "x.shop:8080"][..],
            ),
            prop::sample::select(
                &[
                    "/",
                    "/api",
                    "/api/items",
                    "/api/items/7",
                    "/api//7",
                    "/files",
                    "/files/",
                    "/files/a/b",
                ][..],
            ),
            prop::collection::vec(prop::sample::select(&["v1", "v2"][..]), 0..=2),
        )
            .prop_map(|(m, h, p, v)| {
                (
                    m.to_string(),
                    h.to_string(),
                    p.to_string(),
                    v.into_iter().map(String::from).collect(),
                )
            }),
    );
    (
        peer,
        prop::sample::select(
            &[
                [10, 0, 0, 1],
                [10, 0, 1, 2],
                [10, 0, 1, 3],
                [192, 168, 0, 1],
            ][..],
        ),
        prop::sample::select(&[[10, 96, 0, 10], [10, 0, 0, 9]][..]),
        prop::sample::select(&[80u16, 8080, 9090][..]),
        http,
    )
        .prop_map(|(peer, s, d, port, http)| Req {
            peer,
            source: Ipv4Addr::from(s),
            destination: Ipv4Addr::from(d),
            port,
            http,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_waypoint_decides_as_the_semantics_say(
        policies in prop::collection::vec(arb_policy(), 0..=5),
        request in arb_request(),
    ) {
        let compiled: Vec<_> = policies.iter().map(compile).collect();
        let identity = request.peer.as_ref().map(|(td, ns, sa)| Identity {
            trust_domain: td.clone(),
            namespace: ns.clone(),
            service_account: sa.clone(),
        });
        let principal = identity.as_ref().map(Identity::principal);
        let mut headers = http::HeaderMap::new();
        if let Some((_, _, _, values)) = &request.http {
            for v in values {
                headers.append("x-v", http::HeaderValue::from_str(v).unwrap());
            }
        }
        let ctx = RequestContext {
            identity: identity.as_ref(),
            principal: principal.as_deref(),
            source_ip: IpAddr::V4(request.source),
            destination_ip: IpAddr::V4(request.destination),
            destination_port: request.port,
            http: request.http.as_ref().map(|(method, host, path, _)| HttpAttributes {
                method,
                host,
                path,
                headers: &headers,
            }),
        };
        let decision = evaluate(&ctx, &compiled);
        prop_assert_eq!(decision.allowed, reference(&policies, &request), "{:?}", decision);
        // The deciding policy really matched, and has the action that decided.
        if let Some(i) = decision.policy {
            let p = &policies[i];
            prop_assert!(!p.dry_run);
            prop_assert!(policy_hit(p, &request), "{} did not match", p.name);
            if decision.allowed {
                prop_assert_eq!(p.action(), pb::Action::Allow);
            } else {
                prop_assert!(matches!(p.action(), pb::Action::Deny | pb::Action::Custom));
            }
            let rule = decision.rule.unwrap();
            prop_assert!(rule_hit(&p.rules[rule], p.action() == pb::Action::Allow, &request));
        }
        let explanation = explain(&ctx, &compiled);
        prop_assert_eq!(explanation.allowed, decision.allowed);
        prop_assert_eq!(explanation.steps.len(), policies.len());
    }
}
