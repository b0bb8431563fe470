//! The waypoint's routing table, compiled from a [`WaypointConfig`]: the Services bound to the
//! waypoint by VIP, and for each Service port the route entries the control plane already
//! sorted by Gateway API precedence. A request takes the first entry that matches; finding
//! it goes through an index on the path (exact paths, and prefixes walked segment by
//! segment), so matching cost grows with the request's path depth, not the number of routes.

mod index;
mod matching;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::request::{RequestPolicy, compile};
use crate::xds::proto::ambient::waypoint::{self as pb, RouteKind, WaypointConfig};

pub(crate) use index::RuleIndex;
pub use matching::MatchError;
pub(crate) use matching::{Matcher, RequestView};

/// What the waypoint speaks on a Service port (chosen as upstream does: the port's
/// `appProtocol`, else its name's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (`http2`, `grpc`, `kubernetes.io/h2c`).
    Http2,
    /// Anything else: bytes passed through to the Service.
    Tcp,
}

impl Protocol {
    /// Upstream's protocol selection: `appProtocol` first, then the port name
    /// (`<protocol>` or `<protocol>-<suffix>`).
    pub fn detect(app_protocol: &str, port_name: &str) -> Protocol {
        let by = |p: &str| match p.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http1),
            "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "" => None,
            _ => Some(Protocol::Tcp),
        };
        if let Some(p) = by(app_protocol) {
            return p;
        }
        let prefix = port_name.split('-').next().unwrap_or_default();
        match prefix.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http1,
            "http2" | "grpc" => Protocol::Http2,
            _ => Protocol::Tcp,
        }
    }
}

/// One route entry ready to serve: its match compiled (or why it could not be), and the
/// entry itself for its filters, backends, timeouts and retries.
#[derive(Debug)]
pub struct Rule {
    pub(crate) entry: pb::RouteRule,
    pub(crate) matcher: Result<Matcher, MatchError>,
}

impl Rule {
    /// Where the entry sends requests (with weights and errors), for explanations.
    pub fn backends(&self) -> &[pb::Backend] {
        &self.entry.backends
    }

    /// `namespace/name` of the route and the rule, for logs and metrics.
    pub fn describe(&self) -> String {
        let e = &self.entry;
        if e.rule_name.is_empty() {
            format!(
                "{}/{} rule {}",
                e.route_namespace, e.route_name, e.rule_index
            )
        } else {
            format!(
                "{}/{} rule {}",
                e.route_namespace, e.route_name, e.rule_name
            )
        }
    }
}

/// The entries of one Service port for one audience (every client, or one consumer namespace).
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    index: RuleIndex,
}

impl RuleSet {
    fn build(entries: Vec<pb::RouteRule>) -> Self {
        let rules: Vec<Arc<Rule>> = entries
            .into_iter()
            .map(|entry| {
                let matcher = Matcher::compile(entry.r#match.as_ref());
                Arc::new(Rule { entry, matcher })
            })
            .collect();
        let index = RuleIndex::build(&rules);
        RuleSet { rules, index }
    }

    /// The first entry (in precedence order) that matches. An entry whose match could not be
    /// compiled is a candidate for every request its index position admits, and is chosen
    /// (to answer 500) rather than skipped.
    pub(crate) fn find(&self, request: &RequestView<'_>) -> Option<&Arc<Rule>> {
        self.index
            .candidates(request.path)
            .into_iter()
            .map(|i| &self.rules[i])
            .find(|rule| match &rule.matcher {
                Ok(m) => m.matches(request),
                Err(_) => true,
            })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A Service port of a bound Service.
#[derive(Debug)]
pub struct PortRoutes {
    pub port: u16,
    pub target_port: u16,
    pub name: String,
    pub protocol: Protocol,
    pub kind: RouteKind,
    producers: RuleSet,
    consumers: BTreeMap<String, RuleSet>,
}

impl PortRoutes {
    /// The entries a client from `namespace` sees: its namespace's consumer routes replace
    /// the producer routes (GAMMA, gateway-api-semantics §8.11). `None`: no route attaches,
    /// so default routing applies.
    pub(crate) fn rules_for(&self, namespace: &str) -> Option<&RuleSet> {
        if let Some(set) = self.consumers.get(namespace) {
            return Some(set);
        }
        (!self.producers.is_empty()).then_some(&self.producers)
    }
}

/// A Service whose traffic this waypoint carries.
#[derive(Debug)]
pub struct BoundService {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub ports: BTreeMap<u16, PortRoutes>,
    /// The AuthorizationPolicies that apply to this Service's traffic, compiled: the
    /// waypoint's own (Gateway and GatewayClass attached), then the Service's.
    pub policies: Arc<[RequestPolicy]>,
}

/// Everything the waypoint routes by, rebuilt whenever its configuration changes.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub namespace: String,
    pub name: String,
    by_vip: BTreeMap<IpAddr, Arc<BoundService>>,
    by_key: BTreeMap<String, Arc<BoundService>>,
    /// Policies attached to the waypoint itself: all that workload-addressed traffic meets.
    pub policies: Arc<[RequestPolicy]>,
    /// Selector policies selecting the waypoint's pods (istiod's layered flag), judged once
    /// per HBONE connection before anything is routed.
    pub layered: Arc<[RequestPolicy]>,
    /// The configuration this was built from, for `/config_dump`.
    pub(crate) source: WaypointConfig,
    /// Entries whose matches could not be compiled, with why.
    pub errors: Vec<String>,
}

impl RouteTable {
    pub fn build(config: WaypointConfig) -> RouteTable {
        let mut table = RouteTable {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            policies: config.policies.iter().map(compile).collect(),
            layered: config.layered_policies.iter().map(compile).collect(),
            ..RouteTable::default()
        };
        for service in &config.services {
            let mut ports = BTreeMap::new();
            for p in &service.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let mut producers = Vec::new();
                let mut consumers: BTreeMap<String, Vec<pb::RouteRule>> = BTreeMap::new();
                for entry in &p.rules {
                    if entry.consumer_namespace.is_empty() {
                        producers.push(entry.clone());
                    } else {
                        consumers
                            .entry(entry.consumer_namespace.clone())
                            .or_default()
                            .push(entry.clone());
                    }
                }
                let routes = PortRoutes {
                    port,
                    target_port: u16::try_from(p.target_port).unwrap_or(0),
                    name: p.name.clone(),
                    protocol: Protocol::detect(&p.app_protocol, &p.name),
                    kind: p.kind(),
                    producers: RuleSet::build(producers),
                    consumers: consumers
                        .into_iter()
                        .map(|(ns, entries)| (ns, RuleSet::build(entries)))
                        .collect(),
                };
                for set in std::iter::once(&routes.producers).chain(routes.consumers.values()) {
                    for rule in &set.rules {
                        if let Err(err) = &rule.matcher {
                            table.errors.push(format!("{}: {err}", rule.describe()));
                        }
                    }
                }
                ports.insert(port, routes);
            }
            let policies = table
                .policies
                .iter()
                .cloned()
                .chain(service.policies.iter().map(compile))
                .collect();
            let bound = Arc::new(BoundService {
                key: service.key.clone(),
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                hostname: service.hostname.clone(),
                ports,
                policies,
            });
            for vip in &service.vips {
                // `network/address` or a bare address.
                let address = vip.rsplit_once('/').map_or(vip.as_str(), |(_, a)| a);
                if let Ok(ip) = address.parse::<IpAddr>() {
                    table.by_vip.insert(ip, bound.clone());
                }
            }
            table.by_key.insert(service.key.clone(), bound);
        }
        table.source = config;
        table
    }

    /// The bound Service whose VIP is `ip`.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<BoundService>> {
        self.by_vip.get(&ip)
    }

    pub fn service(&self, key: &str) -> Option<&Arc<BoundService>> {
        self.by_key.get(key)
    }

    /// The entry a request would take: to `vip:port`, from a client in `namespace`, with
    /// this method, target (path and query) and headers. `None` when no route attaches or
    /// nothing matches. What the proxy does per request, for explanations and benchmarks.
    pub fn find(
        &self,
        vip: IpAddr,
        port: u16,
        namespace: &str,
        method: &http::Method,
        target: &str,
        headers: &http::HeaderMap,
    ) -> Option<Arc<Rule>> {
        let set = self
            .by_vip
            .get(&vip)?
            .ports
            .get(&port)?
            .rules_for(namespace)?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let view = RequestView {
            method,
            path,
            query,
            headers,
        };
        set.find(&view).cloned()
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
