//! The ztunnel's HTTP endpoints: readiness (15021), Prometheus metrics (15020) and admin
//! (15000: `/config_dump`, `/debug/authorize`, `/quitquitquit`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Inner;
use crate::identity::Identity;
use crate::listeners::{json, metrics, readiness, serve_http, text};
use crate::policy::{ConnectionContext, evaluate};
use crate::seams::Accepted;
use crate::state::{GatewayAddress, GatewayDestination};

/// Which endpoint set a listener serves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Readiness,
    Metrics,
    Admin,
}

fn gateway(g: &Option<GatewayAddress>) -> Value {
    match g {
        None => Value::Null,
        Some(g) => {
            let destination = match &g.destination {
                GatewayDestination::Hostname(h) => h.key(),
                GatewayDestination::Address(a) => format!("{}/{}", a.network, a.address),
            };
            json!({"destination": destination, "hboneMtlsPort": g.hbone_mtls_port})
        }
    }
}

fn config_dump(inner: &Inner) -> Value {
    let (workloads, services, policies) = inner.state.read(|state| {
        let workloads: Vec<Value> = state
            .workloads()
            .map(|w| {
                json!({
                    "uid": w.uid,
                    "name": w.name,
                    "namespace": w.namespace,
                    "workloadIps": w.workload_ips,
                    "protocol": format!("{:?}", w.protocol),
                    "identity": w.identity().to_string(),
                    "node": w.node,
                    "local": inner.is_local(w),
                    "services": w.services,
                    "authorizationPolicies": w.authorization_policies,
                    "waypoint": gateway(&w.waypoint),
                })
            })
            .collect();
        let services: Vec<Value> = state
            .services()
            .map(|s| {
                json!({
                    "key": s.key(),
                    "vips": s.vips.iter().map(|v| format!("{}/{}", v.network, v.address)).collect::<Vec<_>>(),
                    "ports": s.ports,
                    "endpoints": state.endpoints(&s.key()).iter().map(|w| w.uid.clone()).collect::<Vec<_>>(),
                    "waypoint": gateway(&s.waypoint),
                })
            })
            .collect();
        let policies: Vec<Value> = state
            .policies()
            .map(|p| {
                json!({
                    "key": p.key(),
                    "scope": format!("{:?}", p.scope),
                    "action": format!("{:?}", p.action),
                    "dryRun": p.dry_run,
                    "rules": p.rules.len(),
                })
            })
            .collect();
        (workloads, services, policies)
    });
    let certificates: Vec<Value> = inner
        .certificates
        .snapshot()
        .iter()
        .map(|c| {
            let secs = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            };
            json!({
                "identity": c.identity.to_string(),
                "notBefore": secs(c.not_before()),
                "notAfter": secs(c.not_after()),
                "leaf": c.leaf_pem(),
            })
        })
        .collect();
    json!({
        "node": inner.config.node_name,
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "certificates": certificates,
        "openInboundConnections": inner.tracker.len(),
        "pooledHboneConnections": inner.pool.connection_count(),
    })
}

/// `/debug/authorize?src=IP&dst=IP&port=N[&identity=spiffe://…]`: what policy would decide
/// for such a connection, and why.
fn authorize(inner: &Inner, query: &str) -> Response<Full<Bytes>> {
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let parse_ip = |k: &str| params.get(k).and_then(|v| v.parse::<IpAddr>().ok());
    let (Some(src), Some(dst), Some(port)) = (
        parse_ip("src"),
        parse_ip("dst"),
        params.get("port").and_then(|p| p.parse::<u16>().ok()),
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /debug/authorize?src=IP&dst=IP&port=N[&identity=spiffe://td/ns/N/sa/S]\n",
        );
    };
    let identity = match params.get("identity").map(|s| s.parse::<Identity>()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let context = ConnectionContext {
        source_identity: identity,
        source_ip: src,
        destination_ip: dst,
        destination_port: port,
    };
    let verdict = inner.state.read(|state| {
        let workload = state.workload_by_ip(&inner.config.network, dst)?;
        let policies = state.policies_for(&workload);
        let decision = evaluate(&context, policies.iter().map(|p| &**p));
        Some(json!({
            "workload": workload.uid,
            "allowed": decision.allowed(),
            "policy": decision.policy,
            "rule": decision.rule,
            "explanation": decision.to_string(),
        }))
    });
    match verdict {
        Some(v) => json(&v),
        None => text(StatusCode::NOT_FOUND, format!("no workload at {dst}\n")),
    }
}

fn handle(inner: &Inner, endpoint: Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    match (endpoint, request.method(), path) {
        (Endpoint::Readiness, &Method::GET, "/healthz/ready") => {
            readiness(inner.pending_readiness())
        }
        (Endpoint::Metrics, &Method::GET, "/metrics" | "/stats/prometheus") => {
            metrics(inner.metrics.encode())
        }
        (Endpoint::Admin, &Method::GET, "/config_dump") => json(&config_dump(inner)),
        (Endpoint::Admin, &Method::GET, "/debug/authorize") => {
            authorize(inner, request.uri().query().unwrap_or(""))
        }
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            tracing::info!("stop requested through /quitquitquit");
            inner.quit.send_replace(true);
            text(StatusCode::OK, "OK\n")
        }
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "/config_dump\n/debug/authorize?src=IP&dst=IP&port=N[&identity=ID]\n/quitquitquit (POST)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves one HTTP/1.1 connection on an admin-type listener.
pub(crate) async fn serve(inner: Arc<Inner>, endpoint: Endpoint, accepted: Accepted) {
    let deadline = inner.config.handshake_timeout;
    serve_http(accepted, deadline, move |request| {
        handle(&inner, endpoint, request)
    })
    .await;
}
