//! The waypoint's HTTP endpoints: readiness (15021), metrics (15020) and admin (15000:
//! `/config_dump` with the routes as applied, `/quitquitquit` for loopback peers).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Inner;
use crate::listeners::{json, metrics, readiness, serve_http, text};
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
    serve_http(accepted, move |request| handle(&inner, endpoint, request)).await;
}
