//! The store → one [`WaypointConfig`] per waypoint: the Services bound to it, the HTTPRoutes
//! and GRPCRoutes attached to those Services (GAMMA: `parentRefs` of kind Service) or to the
//! waypoint Gateway itself, and the AuthorizationPolicies that target the waypoint or its
//! Services (`targetRefs`). Pure and deterministic: every list is sorted, so two equal stores
//! give byte-identical resources and the xDS server pushes nothing.
//!
//! The waypoint does no resolution of its own. Here, not there:
//! - Gateway API defaults are filled in (implicit `PathPrefix /`, redirect 302, weight 1,
//!   mirror 100 %, CORS max-age 5 s);
//! - every match of every rule becomes one [`RouteRule`], and the entries of a Service port
//!   are sorted by Gateway API precedence (gateway-api-semantics §8.1), so the waypoint takes
//!   the first that matches;
//! - a GRPCRoute on a Service port drops the HTTPRoutes there (§8.11);
//! - backends that cannot be used keep their place and weight with a [`BackendError`], so
//!   the waypoint answers their share with 500 (§8.3); mirrors that cannot be used are
//!   dropped (§8.5); filters that cannot be applied become `unsupported` (500, never skipped).
//!
//! Retries: the standard-channel route types the store holds have no `retry` field, so
//! `RouteRule.retry` stays unset until the store reads the experimental channel.
//!
//! Routes whose parent is the waypoint Gateway (rather than a Service) are our choice of
//! meaning: they apply to every Service bound to the waypoint whose hostname the route's
//! `hostnames` admit (all when it has none), on every port, as producer routes.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use dataplane::xds::proto::ambient::waypoint::{
    self as pb, Action, Backend, BackendError, BoundService, Cors, Filter, GrpcMatch,
    HeaderModifier, HttpMatch, MatchType, PathMatch, PathModifier, RequestMirror, RequestRedirect,
    RouteKind, RouteRule, ServicePort, Timeouts, UrlRewrite, ValueMatch, WaypointConfig, filter,
    path_modifier, route_rule,
};
use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesTimeouts,
};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::services::{self, TargetPort};
use super::waypoints::{self, TrafficKind};
use crate::snapshot::MeshConfig;
use crate::sources::{Kind, Object};
use crate::store::Store;
use crate::types::security::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, PolicyTargetReference, Rule,
    Source,
};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The annotation that makes a policy log-only.
pub const DRY_RUN: &str = "istio.io/dry-run";

/// Every waypoint's configuration, keyed `<namespace>/<gateway name>`.
pub fn waypoint_configs(store: &Store, mesh: &MeshConfig) -> BTreeMap<String, WaypointConfig> {
    let mut building: BTreeMap<String, Building> = store
        .gateways()
        .filter(|g| waypoints::is_waypoint(g))
        .map(|g| {
            let namespace = g.metadata.namespace.clone().unwrap_or_default();
            let name = g.metadata.name.clone().unwrap_or_default();
            (
                format!("{namespace}/{name}"),
                Building {
                    namespace,
                    name,
                    ..Building::default()
                },
            )
        })
        .collect();
    // (service namespace, service name) → waypoint key.
    let mut bound: BTreeMap<(String, String), String> = BTreeMap::new();
    for service in store.services() {
        if let Some((key, entry)) = bind(store, mesh, service)
            && let Some(waypoint) = building.get_mut(&key)
        {
            bound.insert(
                (entry.service.namespace.clone(), entry.service.name.clone()),
                key,
            );
            waypoint.services.insert(entry.service.key.clone(), entry);
        }
    }
    let ctx = Context { store, mesh };
    for route in store.http_routes() {
        attach_http(&ctx, route, &bound, &mut building);
    }
    for route in store.grpc_routes() {
        attach_grpc(&ctx, route, &bound, &mut building);
    }
    for policy in store.authorization_policies() {
        attach_policy(mesh, policy, &bound, &mut building);
    }
    building
        .into_iter()
        .map(|(key, b)| (key, b.finish()))
        .collect()
}

/// A waypoint's configuration while routes and policies are being attached.
#[derive(Default)]
struct Building {
    namespace: String,
    name: String,
    /// By service key.
    services: BTreeMap<String, ServiceEntry>,
    /// By `namespace/name`.
    policies: BTreeMap<String, pb::AuthorizationPolicy>,
}

struct ServiceEntry {
    service: BoundService,
    /// By port number.
    ports: BTreeMap<u32, PortEntry>,
    policies: BTreeMap<String, pb::AuthorizationPolicy>,
}

struct PortEntry {
    port: ServicePort,
    http: Vec<(HttpPrecedence, RouteRule)>,
    grpc: Vec<(GrpcPrecedence, RouteRule)>,
}

/// Gateway API's order for HTTPRoute matches (gateway-api-semantics §8.1): Exact before
/// PathPrefix before RegularExpression (implementation-specific: we put every regex after
/// every prefix), longer path first, a method first, more headers, more query params, then the
/// older route, then `namespace/name`, then rule and match order. Hostnames do not take part:
/// in the mesh selection is by Service, not Host.
type HttpPrecedence = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    RouteOrder,
);
/// GRPCRoute's order: longer service, longer method, more headers, then as for HTTP.
type GrpcPrecedence = (Reverse<usize>, Reverse<usize>, Reverse<usize>, RouteOrder);
/// Creation time (seconds), `namespace/name`, rule index, match index.
type RouteOrder = (i64, String, usize, usize);

impl Building {
    fn finish(self) -> WaypointConfig {
        let services = self
            .services
            .into_values()
            .map(|entry| {
                let mut service = entry.service;
                service.ports = entry.ports.into_values().map(PortEntry::finish).collect();
                // Already enforced for the whole waypoint: listing it again changes nothing.
                service.policies = entry
                    .policies
                    .into_iter()
                    .filter(|(key, _)| !self.policies.contains_key(key))
                    .map(|(_, p)| p)
                    .collect();
                service
            })
            .collect();
        WaypointConfig {
            namespace: self.namespace,
            name: self.name,
            services,
            policies: self.policies.into_values().collect(),
        }
    }
}

impl PortEntry {
    fn finish(mut self) -> ServicePort {
        if !self.grpc.is_empty() {
            self.grpc.sort_by(|a, b| a.0.cmp(&b.0));
            self.port.kind = RouteKind::Grpc.into();
            self.port.rules = self.grpc.into_iter().map(|(_, r)| r).collect();
        } else if !self.http.is_empty() {
            self.http.sort_by(|a, b| a.0.cmp(&b.0));
            self.port.kind = RouteKind::Http.into();
            self.port.rules = self.http.into_iter().map(|(_, r)| r).collect();
        }
        self.port
    }
}

/// The waypoint key and entry of a Service bound to a waypoint.
fn bind(store: &Store, mesh: &MeshConfig, service: &KubeService) -> Option<(String, ServiceEntry)> {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let (gw_ns, gw_name) = waypoints::bound_to(
        store,
        &namespace,
        labels(&service.metadata),
        TrafficKind::Service,
    )?;
    let hostname = services::hostname(mesh, &namespace, &name);
    let names: BTreeMap<i32, String> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.port, p.name.clone().unwrap_or_default()))
        .collect();
    let ports = services::port_targets(service)
        .into_iter()
        .map(|(port, target)| {
            let entry = PortEntry {
                port: ServicePort {
                    port: port.into(),
                    target_port: match target {
                        TargetPort::Number(n) => n.into(),
                        TargetPort::Named(_) => 0,
                    },
                    name: names.get(&i32::from(port)).cloned().unwrap_or_default(),
                    kind: RouteKind::None.into(),
                    rules: Vec::new(),
                },
                http: Vec::new(),
                grpc: Vec::new(),
            };
            (u32::from(port), entry)
        })
        .collect();
    let service = BoundService {
        key: format!("{namespace}/{hostname}"),
        vips: store
            .service_ips(service)
            .iter()
            .map(ToString::to_string)
            .collect(),
        namespace,
        name,
        hostname,
        ports: Vec::new(),
        policies: Vec::new(),
    };
    Some((
        format!("{gw_ns}/{gw_name}"),
        ServiceEntry {
            service,
            ports,
            policies: BTreeMap::new(),
        },
    ))
}

fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// A route's `parentRef`, whichever route kind it came from.
struct ParentRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    section_name: Option<&'a str>,
}

/// Where one parentRef attaches a route: `(waypoint key, service key, port, consumer
/// namespace)` per Service port.
type Attachment = (String, String, u32, String);

/// The Service ports a route attaches to, for every parentRef.
fn attachments<'a>(
    store: &Store,
    route_meta: &ObjectMeta,
    hostnames: &[String],
    parents: impl Iterator<Item = ParentRef<'a>>,
    bound: &BTreeMap<(String, String), String>,
    building: &BTreeMap<String, Building>,
) -> BTreeSet<Attachment> {
    let route_ns = route_meta.namespace.as_deref().unwrap_or("");
    let mut out = BTreeSet::new();
    for parent in parents {
        let namespace = parent.namespace.unwrap_or(route_ns);
        let group = parent.group.unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.unwrap_or("Gateway");
        // `kind: Service` without `group: ""` is a Service of the Gateway API group (the
        // field's default): no GAMMA parent.
        if kind == "Service" && (group.is_empty() || group == "core") {
            // GAMMA: the Service as parent; a route from another namespace is a consumer
            // route (gateway-api-semantics §8.11).
            let Some(waypoint) = bound.get(&(namespace.to_string(), parent.name.to_string()))
            else {
                continue;
            };
            let Some(entry) = building.get(waypoint).and_then(|b| {
                b.services
                    .values()
                    .find(|s| s.service.namespace == namespace && s.service.name == parent.name)
            }) else {
                continue;
            };
            let consumer = if route_ns == namespace {
                String::new()
            } else {
                route_ns.to_string()
            };
            for (number, port) in &entry.ports {
                let port_ok = parent
                    .port
                    .is_none_or(|p| u32::try_from(p).is_ok_and(|p| p == *number));
                let section_ok = parent.section_name.is_none_or(|s| s == port.port.name);
                if port_ok && section_ok {
                    out.insert((
                        waypoint.clone(),
                        entry.service.key.clone(),
                        *number,
                        consumer.clone(),
                    ));
                }
            }
        } else if kind == "Gateway" && group == GATEWAY_GROUP {
            let key = format!("{namespace}/{}", parent.name);
            let Some(waypoint) = building.get(&key) else {
                continue;
            };
            let admitted = store
                .gateway(namespace, parent.name)
                .is_some_and(|g| waypoints::admits(store, g, route_ns));
            if !admitted {
                continue;
            }
            for entry in waypoint.services.values() {
                if !hostname_admitted(hostnames, &entry.service.hostname) {
                    continue;
                }
                for number in entry.ports.keys() {
                    out.insert((
                        key.clone(),
                        entry.service.key.clone(),
                        *number,
                        String::new(),
                    ));
                }
            }
        }
    }
    out
}

/// Whether a route's `hostnames` admit `hostname`: none admit all; `*.example.com` admits any
/// depth below `example.com` but not `example.com` itself.
fn hostname_admitted(hostnames: &[String], hostname: &str) -> bool {
    hostnames.is_empty()
        || hostnames.iter().any(|h| match h.strip_prefix('*') {
            Some(suffix) => hostname.ends_with(suffix) && hostname.len() > suffix.len(),
            None => h == hostname,
        })
}

fn port_entry<'b>(
    building: &'b mut BTreeMap<String, Building>,
    (waypoint, service, port, _): &Attachment,
) -> Option<&'b mut PortEntry> {
    building
        .get_mut(waypoint)?
        .services
        .get_mut(service)?
        .ports
        .get_mut(port)
}

/// What conversions need besides the route.
struct Context<'a> {
    store: &'a Store,
    mesh: &'a MeshConfig,
}

fn created(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

fn attach_http(
    ctx: &Context<'_>,
    route: &HttpRoute,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let hostnames = route.spec.hostnames.clone().unwrap_or_default();
    let targets = attachments(
        ctx.store,
        &route.metadata,
        &hostnames,
        parents,
        bound,
        building,
    );
    if targets.is_empty() {
        return;
    }
    let route_ns = route.metadata.namespace.clone().unwrap_or_default();
    let route_name = route.metadata.name.clone().unwrap_or_default();
    let order_of = |rule: usize, m: usize| {
        (
            created(&route.metadata),
            format!("{route_ns}/{route_name}"),
            rule,
            m,
        )
    };
    // No rules: the API's default, one rule matching everything with no backends (500).
    let default_rules = [HttpRouteRules::default()];
    let rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
    let mut entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let action = http_action(ctx, &route_ns, rule);
        let default_matches = [HttpRouteRulesMatches::default()];
        let matches = rule.matches.as_deref().unwrap_or(&default_matches);
        let matches = if matches.is_empty() {
            &default_matches[..]
        } else {
            matches
        };
        for (m, spec) in matches.iter().enumerate() {
            let matched = http_match(spec);
            let path = matched.path.clone().unwrap_or_default();
            let precedence = (
                match path.r#type() {
                    MatchType::Exact => 0,
                    MatchType::Prefix => 1,
                    MatchType::Regex => 2,
                },
                Reverse(prefix_len(&path)),
                Reverse(!matched.method.is_empty()),
                Reverse(matched.headers.len()),
                Reverse(matched.query_params.len()),
                order_of(index, m),
            );
            let entry = RouteRule {
                kind: RouteKind::Http.into(),
                route_namespace: route_ns.clone(),
                route_name: route_name.clone(),
                rule_index: u32::try_from(index).unwrap_or(u32::MAX),
                rule_name: rule.name.clone().unwrap_or_default(),
                r#match: Some(route_rule::Match::Http(matched)),
                ..action.clone()
            };
            entries.push((precedence, entry));
        }
    }
    for target in &targets {
        if let Some(port) = port_entry(building, target) {
            port.http.extend(entries.iter().map(|(p, e)| {
                let mut e = e.clone();
                e.consumer_namespace = target.3.clone();
                (p.clone(), e)
            }));
        }
    }
}

fn attach_grpc(
    ctx: &Context<'_>,
    route: &GrpcRoute,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let parents = route.spec.parent_refs.iter().flatten().map(|p| ParentRef {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
        section_name: p.section_name.as_deref(),
    });
    let hostnames = route.spec.hostnames.clone().unwrap_or_default();
    let targets = attachments(
        ctx.store,
        &route.metadata,
        &hostnames,
        parents,
        bound,
        building,
    );
    if targets.is_empty() {
        return;
    }
    let route_ns = route.metadata.namespace.clone().unwrap_or_default();
    let route_name = route.metadata.name.clone().unwrap_or_default();
    let default_rules = [GrpcRouteRules::default()];
    let rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
    let mut entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let action = grpc_action(ctx, &route_ns, rule);
        let default_matches = [GrpcRouteRulesMatches::default()];
        let matches = rule.matches.as_deref().unwrap_or(&default_matches);
        let matches = if matches.is_empty() {
            &default_matches[..]
        } else {
            matches
        };
        for (m, spec) in matches.iter().enumerate() {
            let matched = grpc_match(spec);
            let precedence = (
                Reverse(matched.service.len()),
                Reverse(matched.method.len()),
                Reverse(matched.headers.len()),
                (
                    created(&route.metadata),
                    format!("{route_ns}/{route_name}"),
                    index,
                    m,
                ),
            );
            let entry = RouteRule {
                kind: RouteKind::Grpc.into(),
                route_namespace: route_ns.clone(),
                route_name: route_name.clone(),
                rule_index: u32::try_from(index).unwrap_or(u32::MAX),
                rule_name: rule.name.clone().unwrap_or_default(),
                r#match: Some(route_rule::Match::Grpc(matched)),
                ..action.clone()
            };
            entries.push((precedence, entry));
        }
    }
    for target in &targets {
        if let Some(port) = port_entry(building, target) {
            port.grpc.extend(entries.iter().map(|(p, e)| {
                let mut e = e.clone();
                e.consumer_namespace = target.3.clone();
                (p.clone(), e)
            }));
        }
    }
}

/// The length that ranks a path: a prefix's trailing `/` does not count (`/match/` matches
/// like `/match`).
fn prefix_len(path: &PathMatch) -> usize {
    match path.r#type() {
        MatchType::Prefix if path.value.len() > 1 => path.value.trim_end_matches('/').len(),
        _ => path.value.len(),
    }
}

/// The text Kubernetes spells an enum value with (`GET`, `https`, …).
fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn http_match(spec: &HttpRouteRulesMatches) -> HttpMatch {
    let path = spec.path.as_ref();
    let r#type = match path.and_then(|p| p.r#type.as_ref()) {
        Some(HttpRouteRulesMatchesPathType::Exact) => MatchType::Exact,
        Some(HttpRouteRulesMatchesPathType::RegularExpression) => MatchType::Regex,
        Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => MatchType::Prefix,
    };
    let value = path
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    // Only the first entry per name counts (§8.1); header names are case-insensitive.
    let mut seen = BTreeSet::new();
    let headers = spec
        .headers
        .iter()
        .flatten()
        .filter(|h| seen.insert(h.name.to_ascii_lowercase()))
        .map(|h| ValueMatch {
            name: h.name.clone(),
            r#type: match h.r#type {
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => MatchType::Regex,
                _ => MatchType::Exact,
            }
            .into(),
            value: h.value.clone(),
        })
        .collect();
    let mut seen = BTreeSet::new();
    let query_params = spec
        .query_params
        .iter()
        .flatten()
        .filter(|q| seen.insert(q.name.clone()))
        .map(|q| ValueMatch {
            name: q.name.clone(),
            r#type: match q.r#type {
                Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => MatchType::Regex,
                _ => MatchType::Exact,
            }
            .into(),
            value: q.value.clone(),
        })
        .collect();
    HttpMatch {
        path: Some(PathMatch {
            r#type: r#type.into(),
            value,
        }),
        headers,
        query_params,
        method: spec.method.as_ref().map(wire_name).unwrap_or_default(),
    }
}

fn grpc_match(spec: &GrpcRouteRulesMatches) -> GrpcMatch {
    let method = spec.method.as_ref();
    let regex = method
        .and_then(|m| m.r#type.as_ref())
        .is_some_and(|t| wire_name(t) == "RegularExpression");
    let mut seen = BTreeSet::new();
    let headers = spec
        .headers
        .iter()
        .flatten()
        .filter(|h| seen.insert(h.name.to_ascii_lowercase()))
        .map(|h| ValueMatch {
            name: h.name.clone(),
            r#type: if h
                .r#type
                .as_ref()
                .is_some_and(|t| wire_name(t) == "RegularExpression")
            {
                MatchType::Regex
            } else {
                MatchType::Exact
            }
            .into(),
            value: h.value.clone(),
        })
        .collect();
    GrpcMatch {
        service: method.and_then(|m| m.service.clone()).unwrap_or_default(),
        method: method.and_then(|m| m.method.clone()).unwrap_or_default(),
        r#type: if regex {
            MatchType::Regex
        } else {
            MatchType::Exact
        }
        .into(),
        headers,
    }
}

/// A rule's action (filters, backends, timeouts), to be copied into each of its matches.
fn http_action(ctx: &Context<'_>, route_ns: &str, rule: &HttpRouteRules) -> RouteRule {
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| {
            let mut backend = backend(
                ctx,
                route_ns,
                BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                },
            );
            backend.weight = weight(b.weight);
            backend.filters = filters(ctx, route_ns, b.filters.as_deref().unwrap_or_default());
            backend
        })
        .collect();
    RouteRule {
        filters: filters(ctx, route_ns, rule.filters.as_deref().unwrap_or_default()),
        backends,
        timeouts: rule.timeouts.as_ref().map(timeouts),
        ..RouteRule::default()
    }
}

fn grpc_action(ctx: &Context<'_>, route_ns: &str, rule: &GrpcRouteRules) -> RouteRule {
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| {
            let mut backend = backend(
                ctx,
                route_ns,
                BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                },
            );
            backend.weight = weight(b.weight);
            backend.filters = filters(ctx, route_ns, b.filters.as_deref().unwrap_or_default());
            backend
        })
        .collect();
    RouteRule {
        filters: filters(ctx, route_ns, rule.filters.as_deref().unwrap_or_default()),
        backends,
        ..RouteRule::default()
    }
}

/// Weight default 1; negative (refused by validation) counts as 0.
fn weight(weight: Option<i32>) -> u32 {
    weight.map_or(1, |w| u32::try_from(w).unwrap_or(0))
}

/// A backendRef or a mirror's backendRef.
struct BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
}

fn backend(ctx: &Context<'_>, route_ns: &str, r: BackendRef<'_>) -> Backend {
    let namespace = r.namespace.unwrap_or(route_ns);
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or("Service");
    let port = r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let error = if !(group.is_empty() || group == "core") || kind != "Service" {
        BackendError::InvalidKind
    } else if !matches!(
        ctx.store.get(Kind::Service, namespace, r.name),
        Some(Object::Service(_))
    ) {
        BackendError::NotFound
    } else if port == 0 {
        BackendError::InvalidPort
    } else {
        BackendError::None
    };
    let service = if error == BackendError::InvalidKind {
        format!("{namespace}/{}", r.name)
    } else {
        format!(
            "{namespace}/{}",
            services::hostname(ctx.mesh, namespace, r.name)
        )
    };
    Backend {
        service,
        port,
        weight: 1,
        filters: Vec::new(),
        error: error.into(),
    }
}

/// The rule-level HTTPRoute filter type, from any route filter type. The gateway-api crate
/// generates one struct per place a filter may appear (rule or backendRef, HTTP or gRPC), all
/// with the same fields and the same YAML; reading the others through that YAML keeps one
/// conversion for all of them.
fn as_http_filter<T: Serialize + Any>(filter: &T) -> Result<HttpRouteRulesFilters, String> {
    if let Some(f) = (filter as &dyn Any).downcast_ref::<HttpRouteRulesFilters>() {
        return Ok(f.clone());
    }
    serde_json::to_value(filter)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("unreadable filter: {e}"))
}

fn filters<T: Serialize + Any>(ctx: &Context<'_>, route_ns: &str, list: &[T]) -> Vec<Filter> {
    list.iter()
        .filter_map(|f| match as_http_filter(f) {
            Ok(f) => convert_filter(ctx, route_ns, &f),
            Err(e) => Some(filter::Kind::Unsupported(e)),
        })
        .map(|kind| Filter { kind: Some(kind) })
        .collect()
}

fn header_modifier<S: Serialize>(modifier: Option<&S>) -> Option<HeaderModifier> {
    // Request and response modifiers have the same shape (and distinct generated types).
    #[derive(serde::Deserialize)]
    struct NameValue {
        name: String,
        value: String,
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(default)]
        set: Vec<NameValue>,
        #[serde(default)]
        add: Vec<NameValue>,
        #[serde(default)]
        remove: Vec<String>,
    }
    let shape: Shape = serde_json::to_value(modifier?)
        .and_then(serde_json::from_value)
        .ok()?;
    let headers = |list: Vec<NameValue>| {
        list.into_iter()
            .map(|h| pb::Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    };
    Some(HeaderModifier {
        set: headers(shape.set),
        add: headers(shape.add),
        remove: shape.remove,
    })
}

fn path_modifier(
    full: Option<&String>,
    prefix: Option<&String>,
    replace_prefix: bool,
) -> PathModifier {
    let kind = if replace_prefix {
        path_modifier::Kind::ReplacePrefixMatch(prefix.cloned().unwrap_or_default())
    } else {
        path_modifier::Kind::ReplaceFullPath(full.cloned().unwrap_or_default())
    };
    PathModifier { kind: Some(kind) }
}

/// One filter; `None` when it is dropped (a mirror to a backend that cannot be used).
fn convert_filter(
    ctx: &Context<'_>,
    route_ns: &str,
    f: &HttpRouteRulesFilters,
) -> Option<filter::Kind> {
    let missing = || {
        Some(filter::Kind::Unsupported(format!(
            "{} filter without its settings",
            wire_name(&f.r#type)
        )))
    };
    match f.r#type {
        FilterType::RequestHeaderModifier => {
            match header_modifier(f.request_header_modifier.as_ref()) {
                Some(m) => Some(filter::Kind::RequestHeaderModifier(m)),
                None => missing(),
            }
        }
        FilterType::ResponseHeaderModifier => {
            match header_modifier(f.response_header_modifier.as_ref()) {
                Some(m) => Some(filter::Kind::ResponseHeaderModifier(m)),
                None => missing(),
            }
        }
        FilterType::RequestRedirect => {
            let Some(r) = &f.request_redirect else {
                return missing();
            };
            Some(filter::Kind::RequestRedirect(RequestRedirect {
                scheme: r.scheme.as_ref().map(wire_name).unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        wire_name(&p.r#type) == "ReplacePrefixMatch",
                    )
                }),
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                status_code: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(302),
            }))
        }
        FilterType::UrlRewrite => {
            let Some(r) = &f.url_rewrite else {
                return missing();
            };
            Some(filter::Kind::UrlRewrite(UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                        p.r#type == RewritePathType::ReplacePrefixMatch,
                    )
                }),
            }))
        }
        FilterType::RequestMirror => {
            let Some(m) = &f.request_mirror else {
                return missing();
            };
            let b = &m.backend_ref;
            let mut backend = backend(
                ctx,
                route_ns,
                BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                },
            );
            // An unusable mirror is dropped; the primary traffic is unaffected (§8.5).
            if backend.error() != BackendError::None {
                return None;
            }
            backend.weight = 1;
            let (numerator, denominator) = match (m.percent, &m.fraction) {
                (Some(p), _) => (p, 100),
                (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
                (None, None) => (100, 100),
            };
            Some(filter::Kind::RequestMirror(RequestMirror {
                backend: Some(backend),
                numerator: u32::try_from(numerator).unwrap_or(0),
                denominator: u32::try_from(denominator).unwrap_or(100),
            }))
        }
        FilterType::Cors => {
            let Some(c) = &f.cors else {
                return missing();
            };
            Some(filter::Kind::Cors(Cors {
                allow_origins: c.allow_origins.clone().unwrap_or_default(),
                allow_methods: c.allow_methods.clone().unwrap_or_default(),
                allow_headers: c.allow_headers.clone().unwrap_or_default(),
                expose_headers: c.expose_headers.clone().unwrap_or_default(),
                allow_credentials: c.allow_credentials.unwrap_or(false),
                max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()).unwrap_or(5),
            }))
        }
        FilterType::ExtensionRef => Some(filter::Kind::Unsupported(match &f.extension_ref {
            Some(e) => format!("ExtensionRef {}/{} {}", e.group, e.kind, e.name),
            None => "ExtensionRef".into(),
        })),
    }
}

fn timeouts(t: &HttpRouteRulesTimeouts) -> Timeouts {
    Timeouts {
        request_ms: t.request.as_deref().and_then(duration_ms),
        backend_request_ms: t.backend_request.as_deref().and_then(duration_ms),
    }
}

/// A GEP-2257 duration (`1h30m`, `500ms`, `0s`) in milliseconds; `None` when it does not
/// parse (validation refuses those), which leaves the waypoint's default.
pub fn duration_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(value.checked_mul(unit)?)?;
    }
    Some(total)
}

/// Adds `policy` to what its `targetRefs` (and the older single `targetRef`) name: the
/// waypoint Gateway, the `istio-waypoint` GatewayClass from the root namespace (every
/// waypoint), or a Service bound to a waypoint (policy-semantics §2.6). A reference into
/// another namespace is ignored; a Service without a waypoint enforces it nowhere.
fn attach_policy(
    mesh: &MeshConfig,
    policy: &AuthorizationPolicy,
    bound: &BTreeMap<(String, String), String>,
    building: &mut BTreeMap<String, Building>,
) {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
    let name = policy.metadata.name.as_deref().unwrap_or("");
    let refs: Vec<&PolicyTargetReference> = policy
        .spec
        .target_ref
        .iter()
        .chain(&policy.spec.target_refs)
        .collect();
    if refs.is_empty() || policy.spec.selector.is_some() {
        return;
    }
    let key = format!("{namespace}/{name}");
    let converted = convert_policy(namespace, name, policy);
    for r in refs {
        if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            continue;
        }
        match (r.group.as_str(), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => {
                if let Some(waypoint) = building.get_mut(&format!("{namespace}/{}", r.name)) {
                    waypoint.policies.insert(key.clone(), converted.clone());
                }
            }
            (GATEWAY_GROUP, "GatewayClass")
                if r.name == waypoints::WAYPOINT_CLASS && namespace == mesh.root_namespace =>
            {
                for waypoint in building.values_mut() {
                    waypoint.policies.insert(key.clone(), converted.clone());
                }
            }
            ("" | "core", "Service") => {
                let Some(waypoint) = bound.get(&(namespace.to_string(), r.name.clone())) else {
                    continue;
                };
                let service = building.get_mut(waypoint).and_then(|b| {
                    b.services
                        .values_mut()
                        .find(|s| s.service.namespace == namespace && s.service.name == r.name)
                });
                if let Some(service) = service {
                    service.policies.insert(key.clone(), converted.clone());
                }
            }
            _ => {}
        }
    }
}

fn convert_policy(
    namespace: &str,
    name: &str,
    policy: &AuthorizationPolicy,
) -> pb::AuthorizationPolicy {
    let spec = &policy.spec;
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Audit => Action::Audit,
        AuthorizationAction::Custom => Action::Custom,
    };
    let dry_run = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    pb::AuthorizationPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        action: action.into(),
        provider: spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        dry_run,
        rules: spec.rules.iter().map(|r| rule(namespace, r)).collect(),
    }
}

fn rule(namespace: &str, rule: &Rule) -> pb::Rule {
    pb::Rule {
        from: rule
            .from
            .iter()
            .flatten()
            .map(|f| source(namespace, &f.source))
            .collect(),
        to: rule
            .to
            .iter()
            .flatten()
            .map(|t| operation(&t.operation))
            .collect(),
        when: rule.when.iter().flatten().map(condition).collect(),
    }
}

/// A bare service account means one in the policy's namespace.
fn service_accounts(namespace: &str, values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|sa| {
            if sa.contains('/') {
                sa.clone()
            } else {
                format!("{namespace}/{sa}")
            }
        })
        .collect()
}

fn source(namespace: &str, s: &Source) -> pb::Source {
    pb::Source {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        service_accounts: service_accounts(namespace, &s.service_accounts),
        not_service_accounts: service_accounts(namespace, &s.not_service_accounts),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        trust_domains: s.trust_domains.clone(),
        not_trust_domains: s.not_trust_domains.clone(),
    }
}

/// Ports were validated as 1..65535 when the store took the policy.
fn ports(values: &[String]) -> Vec<u32> {
    values.iter().filter_map(|p| p.parse().ok()).collect()
}

fn operation(o: &Operation) -> pb::Operation {
    pb::Operation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

fn condition(c: &Condition) -> pb::Condition {
    pb::Condition {
        key: c.key.clone(),
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    }
}
