//! The waypoint's HTTP endpoints: readiness (15021), metrics (15020) and admin (15000:
//! `/config_dump` with the routes as applied, `/debug/authorize` to explain a decision,
//! `/quitquitquit` for loopback peers).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use std::net::{IpAddr, SocketAddr};

use super::Inner;
use super::authorize::policies_for;
use super::inbound::resolve;
use crate::identity::Identity;
use crate::listeners::{json, metrics, readiness, serve_http, text};
use crate::policy::request::{HttpAttributes, RequestContext, explain, normalize};
use crate::seams::Accepted;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Readiness,
    Metrics,
    Admin,
}

/// The routes as applied: every bound Service's ports, each entry in the order matching
/// tries them, and the entries that could not be compiled.
fn config_dump(inner: &Inner) -> Value {
    let table = inner.routes.borrow().clone();
    let services: Vec<Value> = table
        .source
        .services
        .iter()
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let entries: Vec<Value> = p
                        .rules
                        .iter()
                        .map(|r| {
                            json!({
                                "route": format!("{}/{}", r.route_namespace, r.route_name),
                                "rule": r.rule_index,
                                "name": r.rule_name,
                                "consumerNamespace": r.consumer_namespace,
                                "match": format!("{:?}", r.r#match),
                                "filters": r.filters.len(),
                                "backends": r.backends.iter().map(|b| json!({
                                    "service": b.service, "port": b.port, "weight": b.weight,
                                    "error": b.error().as_str_name(),
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    let protocol = table
                        .service(&s.key)
                        .and_then(|b| b.ports.get(&(p.port as u16)))
                        .map(|r| format!("{:?}", r.protocol));
                    json!({"port": p.port, "name": p.name, "protocol": protocol, "rules": entries})
                })
                .collect();
            json!({"key": s.key, "vips": s.vips, "ports": ports})
        })
        .collect();
    json!({
        "waypoint": inner.config.resource_name(),
        "identity": inner.config.identity().to_string(),
        "services": services,
        "errors": table.errors,
        "pooledHboneConnections": inner.pool.connection_count(),
    })
}

/// `/debug/authorize?src=IP&dst=IP&port=N[&identity=spiffe://…][&method=M&path=P&host=H]
/// [&header=name:value…]`: what the waypoint's policies decide for such a request (no
/// `method`: a connection on a port that does not speak HTTP), with every policy's reason.
fn authorize(inner: &Inner, query: &str) -> Response<Full<Bytes>> {
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let param = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let parse_ip = |k: &str| param(k).and_then(|v| v.parse::<IpAddr>().ok());
    let (Some(src), Some(dst), Some(port)) = (
        parse_ip("src"),
        parse_ip("dst"),
        param("port").and_then(|p| p.parse::<u16>().ok()),
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /debug/authorize?src=IP&dst=IP&port=N[&identity=ID][&method=M&path=P&host=H][&header=name:value]\n",
        );
    };
    let identity = match param("identity").map(str::parse::<Identity>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let mut headers = http::HeaderMap::new();
    for (_, v) in params.iter().filter(|(k, _)| *k == "header") {
        let parsed = v.split_once(':').and_then(|(name, value)| {
            Some((
                http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                http::HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                headers.append(name, value);
            }
            None => return text(StatusCode::BAD_REQUEST, format!("bad header {v:?}\n")),
        }
    }
    let authority = SocketAddr::new(dst, port);
    let Some((destination, _)) = resolve(inner, authority) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{authority} is neither a Service bound to this waypoint nor a known workload\n"
            ),
        );
    };
    let policies = policies_for(inner, &destination);
    let principal = identity.as_ref().map(Identity::principal);
    let host = param("host").map_or_else(|| authority.to_string(), str::to_string);
    let path = normalize(param("path").unwrap_or("/")).into_owned();
    let http = param("method").map(|method| HttpAttributes {
        method,
        host: &host,
        path: &path,
        headers: &headers,
    });
    let ctx = RequestContext {
        identity: identity.as_ref(),
        principal: principal.as_deref(),
        source_ip: src,
        destination_ip: dst,
        destination_port: port,
        http,
    };
    json(&serde_json::to_value(explain(&ctx, &policies)).unwrap_or(Value::Null))
}

fn handle(inner: &Inner, endpoint: Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri();
    match (endpoint, request.method(), uri.path()) {
        (Endpoint::Readiness, &Method::GET, "/healthz/ready") => {
            readiness(inner.pending_readiness())
        }
        (Endpoint::Metrics, &Method::GET, "/metrics" | "/stats/prometheus") => {
            metrics(inner.metrics.encode())
        }
        (Endpoint::Admin, &Method::GET, "/config_dump") => json(&config_dump(inner)),
        (Endpoint::Admin, &Method::GET, "/debug/authorize") => {
            authorize(inner, uri.query().unwrap_or(""))
        }
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            tracing::info!("stop requested through /quitquitquit");
            inner.quit.send_replace(true);
            text(StatusCode::OK, "OK\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves one HTTP/1.1 connection on an admin-type listener.
pub(crate) async fn serve(inner: Arc<Inner>, endpoint: Endpoint, accepted: Accepted) {
    let deadline = inner.config.mesh.handshake_timeout;
    serve_http(accepted, deadline, move |request| {
        handle(&inner, endpoint, request)
    })
    .await;
}
