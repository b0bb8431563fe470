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
//!   dropped (§8.5); filters that cannot be applied become `unsupported` (500, never skipped);
//! - an `ExtensionRef` filter naming one of our FaultInjection objects (group
//!   `testbed.ambient.io`, in the route's namespace) becomes a `fault` filter; any other
//!   `ExtensionRef`, or one whose object is missing, stays `unsupported` (§8.3);
//! - HTTPRoute retries (GEP-1731, from the experimental-channel type the store holds) are
//!   copied with `attempts` filled in: a `retry` stanza without `attempts` means 1 retry
//!   (the GEP leaves the count to the implementation; §8.7 wants connection failures retried
//!   whenever the stanza exists, so at least one, and one multiplies load the least).
//!
//! Routes whose parent is the waypoint Gateway (rather than a Service) are our choice of
//! meaning: they apply to every Service bound to the waypoint whose hostname the route's
//! `hostnames` admit (all when it has none), on every port, as producer routes.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use dataplane::xds::proto::ambient::waypoint::{
    self as pb, Action, Backend, BackendError, BoundService, Cors, FaultAbort, FaultDelay, Filter,
    GrpcMatch, HeaderModifier, HttpMatch, MatchType, PathMatch, PathModifier, RequestMirror,
    RequestRedirect, Retry, RouteKind, RouteRule, ServicePort, Timeouts, UrlRewrite, ValueMatch,
    WaypointConfig, fault_abort, filter, path_modifier, route_rule,
};
// HTTPRoute from the experimental channel (what the store holds, `retry` included); its
// filter type is also the one every other filter struct is read through.
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersExtensionRef,
    HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteRulesTimeouts,
};
use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::services::{self, TargetPort};
use super::waypoints::{self, TrafficKind};
use crate::object::{Kind, Object};
use crate::snapshot::MeshConfig;
use crate::store::Store;
use crate::types::fault::{self as fault_types, FaultInjectionSpec};
use crate::types::security::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, PolicyTargetReference, Rule,
    Source,
};

mod filters;
mod policies;
mod routes;

use filters::*;
use policies::*;
pub use routes::duration_ms;
use routes::*;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The annotation that makes a policy log-only.
pub use super::authorization::DRY_RUN;

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
    if mesh.features.layered_waypoint_authorization_policies {
        attach_layered(store, mesh, &mut building);
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
    /// Selector policies selecting the waypoint's pods (the layered flag), by key.
    layered: BTreeMap<String, pb::AuthorizationPolicy>,
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
            layered_policies: self.layered.into_values().collect(),
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
    let names: BTreeMap<i32, (String, String)> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            (p.port, (name, p.app_protocol.clone().unwrap_or_default()))
        })
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
                    kind: RouteKind::None.into(),
                    rules: Vec::new(),
                    ..names
                        .get(&i32::from(port))
                        .map(|(name, app_protocol)| ServicePort {
                            name: name.clone(),
                            app_protocol: app_protocol.clone(),
                            ..ServicePort::default()
                        })
                        .unwrap_or_default()
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
