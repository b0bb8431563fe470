//! `istiod explain`: what the mesh would decide for one connection or request, and why,
//! from the control plane's view alone — no traffic. The configuration is translated as it
//! would be pushed, the route is the one the client's ztunnel would take (policy-semantics
//! §4.4), and each hop that enforces policy is judged by the dataplane's own evaluators (the
//! waypoint's for L7, the destination ztunnel's for L4), so an explanation here is what the
//! proxies would say in their logs.

use std::net::IpAddr;

use dataplane::identity::Identity;
use dataplane::policy::request::{self, HttpAttributes, RequestContext};
use dataplane::policy::{ConnectionContext, evaluate};
use dataplane::state::{
    GatewayAddress, GatewayDestination, Service, State, TunnelProtocol, Workload, WorkloadStatus,
};
use dataplane::waypoint::RouteTable;
use dataplane::waypoint::routes::Protocol;

use crate::snapshot::{MeshConfig, Snapshot};

/// The connection or request to explain.
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// `namespace/pod` of the client.
    pub from: String,
    /// `host:port`: a Service hostname (`echo.shop`, `echo.shop.svc.cluster.local`), a
    /// Service VIP or a pod IP.
    pub to: String,
    /// For HTTP ports; default `GET`.
    pub method: Option<String>,
    /// For HTTP ports; default `/`.
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// One hop that judged the traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hop {
    /// `waypoint ns/name` or `ztunnel on <node> (inbound to ns/pod)`.
    pub component: String,
    /// Who the hop sees: a principal, or `plaintext from <ip>`.
    pub source: String,
    pub allowed: bool,
    pub reason: String,
    /// Per policy considered, the rule and attribute that matched or failed.
    pub steps: Vec<String>,
}

/// The decision, what the client would see, and the hops that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Answer {
    pub allowed: bool,
    /// What the client sees: `allowed`, `403 RBAC: access denied (waypoint …)`, …
    pub outcome: String,
    /// The path taken, one line per step.
    pub route: Vec<String>,
    pub hops: Vec<Hop>,
}

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("--from {0:?}: expected namespace/pod")]
    BadSource(String),
    #[error("--from {0}: no such pod in the configuration")]
    UnknownSource(String),
    #[error("--to {0:?}: expected host:port")]
    BadDestination(String),
    #[error("--to {0}: no Service or pod has that name or address")]
    UnknownDestination(String),
    #[error("--to {service}: no healthy endpoint serves port {port}")]
    NoEndpoint { service: String, port: u16 },
    #[error("header {0:?}: expected name:value")]
    BadHeader(String),
}

fn state_of(snapshot: &Snapshot) -> State {
    let mut state = State::default();
    for w in snapshot.workloads.values() {
        state.insert_workload(w.clone());
    }
    for s in snapshot.services.values() {
        state.insert_service(s.clone());
    }
    for p in snapshot.policies.values() {
        state.insert_policy(p.clone());
    }
    state
}

enum Target {
    Service(std::sync::Arc<Service>),
    Pod(std::sync::Arc<Workload>),
}

fn resolve_destination(state: &State, mesh: &MeshConfig, host: &str) -> Option<Target> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        if let Some(s) = state.service_by_vip(&mesh.network, ip) {
            return Some(Target::Service(s));
        }
        return state.workload_by_ip(&mesh.network, ip).map(Target::Pod);
    }
    let host = host.trim_end_matches('.');
    state
        .services()
        .find(|s| s.hostname == host || s.hostname.starts_with(&format!("{host}.")))
        .cloned()
        .map(Target::Service)
}

/// The first healthy endpoint (in uid order) of `service` that serves `port`, and its
/// target port. The ztunnel picks by weighted chance; an explanation names one.
fn endpoint(
    state: &State,
    service: &Service,
    port: u16,
) -> Option<(std::sync::Arc<Workload>, u16)> {
    state
        .endpoints(&service.key())
        .into_iter()
        .filter(|w| w.status == WorkloadStatus::Healthy && !w.workload_ips.is_empty())
        .find_map(|w| {
            let target = w
                .services
                .get(&service.key())
                .and_then(|ports| ports.get(&port))
                .or_else(|| service.ports.get(&port))
                .copied()
                .filter(|t| *t != 0)?;
            Some((w, target))
        })
}

fn describe(w: &Workload) -> String {
    format!("{}/{}", w.namespace, w.name)
}

/// The waypoint a reference names: its config key (`ns/gateway`) and one of its pods.
fn waypoint_of(
    state: &State,
    address: &GatewayAddress,
) -> Option<(String, Option<std::sync::Arc<Workload>>)> {
    match &address.destination {
        GatewayDestination::Hostname(name) => {
            let gateway = name.hostname.split('.').next().unwrap_or_default();
            let pod = state.endpoints(&name.key()).into_iter().next();
            Some((format!("{}/{gateway}", name.namespace), pod))
        }
        GatewayDestination::Address(addr) => {
            let pod = state.workload_by_ip(&addr.network, addr.address)?;
            let gateway = pod.workload_name.clone();
            Some((format!("{}/{gateway}", pod.namespace), Some(pod)))
        }
    }
}

/// The destination ztunnel's L4 decision for a connection from `identity` at `source_ip`.
fn ztunnel_hop(
    state: &State,
    destination: &Workload,
    identity: Option<Identity>,
    source_ip: IpAddr,
    port: u16,
) -> Hop {
    let source = match &identity {
        Some(id) => id.principal(),
        None => format!("plaintext from {source_ip}"),
    };
    let ctx = ConnectionContext {
        source_identity: identity,
        source_ip,
        destination_ip: destination.workload_ips[0],
        destination_port: port,
    };
    let policies = state.policies_for(destination);
    let decision = evaluate(&ctx, policies.iter().map(|p| &**p));
    let steps = policies
        .iter()
        .map(|p| match p.matching_rule(&ctx) {
            Some(rule) => format!("{:?} {}: rule {rule} matches", p.action, p.key()),
            None if p.rules.is_empty() => {
                format!("{:?} {}: no rules, matches nothing", p.action, p.key())
            }
            None => format!("{:?} {}: no rule matches", p.action, p.key()),
        })
        .collect();
    Hop {
        component: format!(
            "ztunnel on {} (inbound to {})",
            destination.node,
            describe(destination)
        ),
        source,
        allowed: decision.allowed(),
        reason: decision.to_string(),
        steps,
    }
}

/// Answers `question` against what `snapshot` would push.
pub fn explain(
    snapshot: &Snapshot,
    mesh: &MeshConfig,
    question: &Question,
) -> Result<Answer, ExplainError> {
    let state = state_of(snapshot);
    let (namespace, pod) = question
        .from
        .split_once('/')
        .ok_or_else(|| ExplainError::BadSource(question.from.clone()))?;
    let source = state
        .workloads()
        .find(|w| w.namespace == namespace && w.name == pod)
        .cloned()
        .ok_or_else(|| ExplainError::UnknownSource(question.from.clone()))?;
    let (host, port) = question
        .to
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| ExplainError::BadDestination(question.to.clone()))?;
    let target = resolve_destination(&state, mesh, host)
        .ok_or_else(|| ExplainError::UnknownDestination(question.to.clone()))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &question.headers {
        let parsed = http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .zip(http::HeaderValue::from_str(value).ok());
        let Some((name, value)) = parsed else {
            return Err(ExplainError::BadHeader(format!("{name}:{value}")));
        };
        headers.append(name, value);
    }
    let source_ip = source
        .workload_ips
        .first()
        .copied()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let captured = source.protocol == TunnelProtocol::Hbone;
    let mut route = vec![format!(
        "from {} ({}, {})",
        describe(&source),
        source_ip,
        if captured {
            "captured: its ztunnel sends HBONE"
        } else {
            "not in the mesh: plaintext"
        }
    )];
    let mut hops = Vec::new();

    // The waypoint in the way, if the client is captured and is not that waypoint itself.
    let (vip, waypoint) = match &target {
        Target::Service(s) => (s.vips.first().map(|v| v.address), s.waypoint.as_ref()),
        Target::Pod(w) => (None, w.waypoint.as_ref()),
    };
    let waypoint = waypoint
        .filter(|_| captured)
        .and_then(|address| waypoint_of(&state, address))
        .filter(|(_, pod)| pod.as_ref().is_none_or(|p| p.uid != source.uid));

    let mut backend: Option<std::sync::Arc<Service>> = match &target {
        Target::Service(s) => Some(s.clone()),
        Target::Pod(_) => None,
    };
    let mut from_identity = captured.then(|| source.identity());
    let mut from_ip = source_ip;
    let mut http_port = false;
    if let Some((key, pod)) = waypoint {
        let table = snapshot
            .waypoints
            .get(&key)
            .map(|c| RouteTable::build(c.clone()))
            .unwrap_or_default();
        let destination_ip = match (&target, vip) {
            (Target::Service(_), Some(vip)) => vip,
            (Target::Pod(w), _) => w.workload_ips[0],
            _ => IpAddr::from([0, 0, 0, 0]),
        };
        let bound = table.service_by_vip(destination_ip).cloned();
        let policies = bound
            .as_ref()
            .map_or_else(|| table.policies.clone(), |b| b.policies.clone());
        let port_routes = bound.as_ref().and_then(|b| b.ports.get(&port));
        http_port = port_routes.is_some_and(|p| p.protocol != Protocol::Tcp);
        let method = question.method.clone().unwrap_or_else(|| "GET".into());
        let path = request::normalize(question.path.as_deref().unwrap_or("/")).into_owned();
        let host = host.to_string();
        let identity = source.identity();
        let principal = identity.principal();
        let ctx = RequestContext {
            identity: Some(&identity),
            principal: Some(&principal),
            source_ip,
            destination_ip,
            destination_port: port,
            http: http_port.then_some(HttpAttributes {
                method: &method,
                host: &host,
                path: &path,
                headers: &headers,
            }),
        };
        let explanation = request::explain(&ctx, &policies);
        route.push(format!(
            "through waypoint {key}{} ({})",
            pod.as_ref()
                .map(|p| format!(" at {}", describe(p)))
                .unwrap_or_default(),
            if http_port {
                format!("HTTP: {method} {path}")
            } else {
                "a TCP port: judged as a connection".into()
            }
        ));
        hops.push(Hop {
            component: format!("waypoint {key}"),
            source: principal.clone(),
            allowed: explanation.allowed,
            reason: explanation.reason.clone(),
            steps: explanation.steps.clone(),
        });
        if !explanation.allowed {
            let outcome = if http_port {
                format!("403 RBAC: access denied (waypoint {key})")
            } else {
                format!("connection closed by waypoint {key}")
            };
            return Ok(Answer {
                allowed: false,
                outcome,
                route,
                hops,
            });
        }
        // The route the waypoint takes, if an HTTPRoute attaches: its first backend.
        if http_port && let Some(vip) = vip {
            let target_path = question.path.clone().unwrap_or_else(|| "/".into());
            let method = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
            if let Some(rule) = table.find(
                vip,
                port,
                &source.namespace,
                &method,
                &target_path,
                &headers,
            ) {
                let next = rule
                    .backends()
                    .iter()
                    .find(|b| b.weight > 0 && b.error == 0)
                    .and_then(|b| state.service(&b.service));
                route.push(format!(
                    "route {} chose {}",
                    rule.describe(),
                    next.as_ref()
                        .map_or("no valid backend".into(), |s| s.hostname.clone())
                ));
                if next.is_none() {
                    return Ok(Answer {
                        allowed: false,
                        outcome: "500 from the waypoint: the route has no valid backend".into(),
                        route,
                        hops,
                    });
                }
                backend = next;
            }
        }
        let waypoint_pod = pod;
        from_identity = waypoint_pod.as_ref().map(|p| p.identity());
        from_ip = waypoint_pod
            .as_ref()
            .and_then(|p| p.workload_ips.first().copied())
            .unwrap_or(from_ip);
    }

    let (destination, target_port) = match (&backend, &target) {
        (Some(service), _) => {
            endpoint(&state, service, port).ok_or_else(|| ExplainError::NoEndpoint {
                service: service.hostname.clone(),
                port,
            })?
        }
        (None, Target::Pod(w)) => (w.clone(), port),
        (None, Target::Service(s)) => {
            return Err(ExplainError::NoEndpoint {
                service: s.hostname.clone(),
                port,
            });
        }
    };
    route.push(format!(
        "to {} ({}:{target_port}{})",
        describe(&destination),
        destination.workload_ips[0],
        if destination.protocol == TunnelProtocol::Hbone {
            ", captured: its ztunnel judges the connection"
        } else {
            ", not captured: no policy is enforced there"
        }
    ));
    if destination.protocol != TunnelProtocol::Hbone {
        return Ok(Answer {
            allowed: true,
            outcome: "allowed".into(),
            route,
            hops,
        });
    }
    let hop = ztunnel_hop(&state, &destination, from_identity, from_ip, target_port);
    let allowed = hop.allowed;
    hops.push(hop);
    let outcome = match (allowed, hops.len() > 1, http_port) {
        (true, _, _) => "allowed".to_string(),
        (false, true, true) => {
            "503 from the waypoint: the destination's ztunnel refused its connection".into()
        }
        (false, _, _) => "connection reset: the destination's ztunnel refused it".into(),
    };
    Ok(Answer {
        allowed,
        outcome,
        route,
        hops,
    })
}

/// The answer as a person reads it.
pub fn render(answer: &Answer) -> String {
    let mut out = String::new();
    out.push_str(if answer.allowed { "ALLOWED" } else { "DENIED" });
    out.push_str(": ");
    out.push_str(&answer.outcome);
    out.push('\n');
    for step in &answer.route {
        out.push_str("  ");
        out.push_str(step);
        out.push('\n');
    }
    for hop in &answer.hops {
        out.push_str(&format!(
            "{} sees {}: {}\n",
            hop.component, hop.source, hop.reason
        ));
        for step in &hop.steps {
            out.push_str("    ");
            out.push_str(step);
            out.push('\n');
        }
    }
    out
}
