//! The waypoint on loopback: a client's request through its ztunnel to the waypoint, routed
//! by HTTPRoute entries, and on to the chosen backend through the backend's ztunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane::seams::{Clock, Seams};
use dataplane::waypoint::{self, Waypoint};
use dataplane::xds::proto::ambient::waypoint as pb;
use dataplane::ztunnel::{LocalCaProvider, Ztunnel};
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpStream;

use super::common::*;

/// Echo's HTTP port behind each backend.
pub(super) const HTTP_PORT: u16 = 8080;
/// Echo's gRPC (HTTP/2 prior knowledge) port behind echo-v1.
pub(super) const GRPC_PORT: u16 = 8082;

/// Local config: web-0 (.2, node-a); echo-v1 (.3, node-b) and echo-v2 (.5, node-c) behind
/// Services `echo` (VIP .100, bound to the waypoint) and `echo-v2` (.102); the waypoint
/// wp-0 at .4 behind Service `waypoint` (.101).
pub(super) fn topology(net: [u8; 3]) -> String {
    let ip = |h| ip(net, h);
    format!(
        r#"
workloads:
- {{uid: web-0, name: web-0, namespace: shop, serviceAccount: web, trustDomain: cluster.local,
   workloadIps: ["{web}"], protocol: HBONE, node: node-a, workloadName: web, canonicalName: web}}
- {{uid: echo-v1-0, name: echo-v1-0, namespace: shop, serviceAccount: echo,
   trustDomain: cluster.local, workloadIps: ["{v1}"], protocol: HBONE, node: node-b,
   workloadName: echo-v1, canonicalName: echo,
   services: {{"shop/echo.shop.svc.cluster.local": {{80: {HTTP_PORT}, 81: {GRPC_PORT}}}}}}}
- {{uid: echo-v2-0, name: echo-v2-0, namespace: shop, serviceAccount: echo,
   trustDomain: cluster.local, workloadIps: ["{v2}"], protocol: HBONE, node: node-c,
   workloadName: echo-v2, canonicalName: echo,
   services: {{"shop/echo-v2.shop.svc.cluster.local": {{80: {HTTP_PORT}}}}}}}
- {{uid: wp-0, name: wp-0, namespace: shop, serviceAccount: waypoint,
   trustDomain: cluster.local, workloadIps: ["{wp}"], protocol: HBONE, node: node-b,
   services: {{"shop/waypoint.shop.svc.cluster.local": {{15008: 15008}}}}}}
services:
- {{name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/{vip}"],
   ports: {{80: {HTTP_PORT}, 81: {GRPC_PORT}}},
   waypoint: {{destination: "shop/waypoint.shop.svc.cluster.local", hboneMtlsPort: 15008}}}}
- {{name: echo-v2, namespace: shop, hostname: echo-v2.shop.svc.cluster.local,
   vips: ["/{vip2}"], ports: {{80: {HTTP_PORT}}}}}
- {{name: waypoint, namespace: shop, hostname: waypoint.shop.svc.cluster.local,
   vips: ["/{wpvip}"], ports: {{15008: 15008}}}}
"#,
        web = ip(2),
        v1 = ip(3),
        wp = ip(4),
        v2 = ip(5),
        vip = ip(100),
        wpvip = ip(101),
        vip2 = ip(102),
    )
}

/// Every request the echoes received: (pod, path and query).
static SEEN: std::sync::Mutex<Vec<(&str, String)>> = std::sync::Mutex::new(Vec::new());

/// Whether `pod` received `target` within 5 s.
pub(super) async fn seen(pod: &str, target: &str) -> bool {
    for _ in 0..100 {
        if SEEN
            .lock()
            .unwrap()
            .iter()
            .any(|(p, t)| *p == pod && t == target)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An HTTP/1.1 echo on `addr` answering `pod=<name> method=… path=… host=…` and one line per
/// request header, so tests can see what the backend received.
pub(super) async fn http_echo(addr: SocketAddr, pod: &'static str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/ws" {
                            // A WebSocket endpoint: accept the upgrade, then echo raw bytes.
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(upgraded) = upgrade.await {
                                    let io = hyper_util::rt::TokioIo::new(upgraded);
                                    let (mut r, mut w) = tokio::io::split(io);
                                    let _ = tokio::io::copy(&mut r, &mut w).await;
                                }
                            });
                            let response = http::Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .header("x-backend", pod)
                                .body(http_body_util::Full::new(Bytes::new()))
                                .unwrap();
                            return Ok::<_, std::convert::Infallible>(response);
                        }
                        let target = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string();
                        SEEN.lock().unwrap().push((pod, target));
                        if let Some(ms) = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("delay="))
                            .and_then(|d| d.parse::<u64>().ok())
                        {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let mut body = format!(
                            "pod={pod}\nmethod={}\npath={}\n",
                            req.method(),
                            req.uri().path_and_query().map_or("/", |p| p.as_str())
                        );
                        for (name, value) in req.headers() {
                            body.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                        }
                        let status = req
                            .uri()
                            .path()
                            .strip_prefix("/status/")
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(200);
                        let response = http::Response::builder()
                            .status(status)
                            .header("x-backend", pod)
                            .body(http_body_util::Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

/// A gRPC-shaped HTTP/2 server: every call answers 200 with `grpc-status: 0` and the path it
/// was called on.
pub(super) async fn grpc_echo(addr: SocketAddr, pod: &'static str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0")
                            .header("x-backend", pod)
                            .header("x-path", req.uri().path())
                            .body(http_body_util::Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
}

pub(super) struct Mesh {
    pub(super) net: [u8; 3],
    pub(super) a: Ztunnel,
    _b: Ztunnel,
    _c: Ztunnel,
    pub(super) waypoint: Waypoint,
}

impl Mesh {
    pub(super) async fn start() -> Mesh {
        capture_logs();
        let net = subnet();
        let yaml = topology(net);
        let ca = new_ca();
        let clock: Arc<dyn Clock> = Arc::new(manual_clock());
        let a = start("node-a", ip(net, 2), state(&yaml), &ca, clock.clone()).await;
        let b = start("node-b", ip(net, 3), state(&yaml), &ca, clock.clone()).await;
        let c = start("node-c", ip(net, 5), state(&yaml), &ca, clock.clone()).await;
        http_echo(SocketAddr::new(ip(net, 3), HTTP_PORT), "echo-v1-0").await;
        http_echo(SocketAddr::new(ip(net, 5), HTTP_PORT), "echo-v2-0").await;
        grpc_echo(SocketAddr::new(ip(net, 3), GRPC_PORT), "echo-v1-0").await;
        let mut config = waypoint::Config {
            gateway_namespace: "shop".into(),
            gateway_name: "waypoint".into(),
            service_account: "waypoint".into(),
            ..waypoint::Config::default()
        };
        config.mesh.listen_ip = ip(net, 4);
        config.mesh.drain_deadline = Duration::from_millis(200);
        config.mesh.handshake_timeout = Duration::from_secs(1);
        let local = dataplane::identity::LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap();
        let provider = Arc::new(LocalCaProvider::new(
            local,
            config.mesh.certificate_ttl,
            clock.clone(),
        ));
        let seams = Seams {
            clock,
            ..Seams::real(7)
        };
        let waypoint = waypoint::run(config, seams, state(&yaml), provider)
            .await
            .unwrap();
        Mesh {
            net,
            a,
            _b: b,
            _c: c,
            waypoint,
        }
    }

    pub(super) fn service(&self, rules: Vec<pb::RouteRule>) -> pb::WaypointConfig {
        pb::WaypointConfig {
            namespace: "shop".into(),
            name: "waypoint".into(),
            services: vec![pb::BoundService {
                key: "shop/echo.shop.svc.cluster.local".into(),
                namespace: "shop".into(),
                name: "echo".into(),
                hostname: "echo.shop.svc.cluster.local".into(),
                vips: vec![ip(self.net, 100).to_string()],
                ports: vec![pb::ServicePort {
                    port: 80,
                    target_port: u32::from(HTTP_PORT),
                    name: "http".into(),
                    kind: if rules.is_empty() {
                        pb::RouteKind::None
                    } else {
                        pb::RouteKind::Http
                    }
                    .into(),
                    rules,
                    app_protocol: String::new(),
                }],
                policies: Vec::new(),
            }],
            policies: Vec::new(),
            layered_policies: Vec::new(),
        }
    }

    /// A raw connection from web through node-a's SOCKS5 to echo's VIP (and so through the
    /// waypoint).
    pub(super) async fn tunnel(&self) -> TcpStream {
        let vip = SocketAddr::new(ip(self.net, 100), 80);
        let (code, stream) = socks5(self.a.addresses().socks5.unwrap(), ip(self.net, 2), vip).await;
        assert_eq!(code, 0, "SOCKS5 to the echo VIP");
        stream.unwrap()
    }

    /// One request from web through node-a's SOCKS5 to echo's VIP: status, headers, body.
    pub(super) async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, String) {
        self.request("GET", path, headers).await
    }

    pub(super) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, String) {
        let vip = SocketAddr::new(ip(self.net, 100), 80);
        let (code, stream) = socks5(self.a.addresses().socks5.unwrap(), ip(self.net, 2), vip).await;
        assert_eq!(code, 0, "SOCKS5 to the echo VIP");
        let stream: TcpStream = stream.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "echo.shop.svc.cluster.local");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            send.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
        )
        .await
        .expect("an answer within 10 s")
        .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

pub(super) fn backend(service: &str, weight: u32) -> pb::Backend {
    pb::Backend {
        service: format!("shop/{service}.shop.svc.cluster.local"),
        port: 80,
        weight,
        ..pb::Backend::default()
    }
}

pub(super) fn prefix(path: &str) -> Option<pb::route_rule::Match> {
    Some(pb::route_rule::Match::Http(pb::HttpMatch {
        path: Some(pb::PathMatch {
            r#type: pb::MatchType::Prefix.into(),
            value: path.into(),
        }),
        ..pb::HttpMatch::default()
    }))
}

pub(super) fn rule(
    name: &str,
    m: Option<pb::route_rule::Match>,
    backends: Vec<pb::Backend>,
) -> pb::RouteRule {
    pb::RouteRule {
        kind: pb::RouteKind::Http.into(),
        route_namespace: "shop".into(),
        route_name: "echo-route".into(),
        rule_name: name.into(),
        r#match: m,
        backends,
        ..pb::RouteRule::default()
    }
}

mod authorization;
mod bad_input;
mod protocols;
mod routing;
