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
const HTTP_PORT: u16 = 8080;

/// Local config: web-0 (.2, node-a); echo-v1 (.3, node-b) and echo-v2 (.5, node-c) behind
/// Services `echo` (VIP .100, bound to the waypoint) and `echo-v2` (.102); the waypoint
/// wp-0 at .4 behind Service `waypoint` (.101).
fn topology(net: [u8; 3]) -> String {
    let ip = |h| ip(net, h);
    format!(
        r#"
workloads:
- {{uid: web-0, name: web-0, namespace: shop, serviceAccount: web, trustDomain: cluster.local,
   workloadIps: ["{web}"], protocol: HBONE, node: node-a, workloadName: web, canonicalName: web}}
- {{uid: echo-v1-0, name: echo-v1-0, namespace: shop, serviceAccount: echo,
   trustDomain: cluster.local, workloadIps: ["{v1}"], protocol: HBONE, node: node-b,
   workloadName: echo-v1, canonicalName: echo,
   services: {{"shop/echo.shop.svc.cluster.local": {{80: {HTTP_PORT}}}}}}}
- {{uid: echo-v2-0, name: echo-v2-0, namespace: shop, serviceAccount: echo,
   trustDomain: cluster.local, workloadIps: ["{v2}"], protocol: HBONE, node: node-c,
   workloadName: echo-v2, canonicalName: echo,
   services: {{"shop/echo-v2.shop.svc.cluster.local": {{80: {HTTP_PORT}}}}}}}
- {{uid: wp-0, name: wp-0, namespace: shop, serviceAccount: waypoint,
   trustDomain: cluster.local, workloadIps: ["{wp}"], protocol: HBONE, node: node-b,
   services: {{"shop/waypoint.shop.svc.cluster.local": {{15008: 15008}}}}}}
services:
- {{name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/{vip}"],
   ports: {{80: {HTTP_PORT}}},
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
async fn seen(pod: &str, target: &str) -> bool {
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
async fn http_echo(addr: SocketAddr, pod: &'static str) {
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

struct Mesh {
    net: [u8; 3],
    a: Ztunnel,
    _b: Ztunnel,
    _c: Ztunnel,
    waypoint: Waypoint,
}

impl Mesh {
    async fn start() -> Mesh {
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

    fn service(&self, rules: Vec<pb::RouteRule>) -> pb::WaypointConfig {
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
        }
    }

    /// A raw connection from web through node-a's SOCKS5 to echo's VIP (and so through the
    /// waypoint).
    async fn tunnel(&self) -> TcpStream {
        let vip = SocketAddr::new(ip(self.net, 100), 80);
        let (code, stream) = socks5(self.a.addresses().socks5.unwrap(), ip(self.net, 2), vip).await;
        assert_eq!(code, 0, "SOCKS5 to the echo VIP");
        stream.unwrap()
    }

    /// One request from web through node-a's SOCKS5 to echo's VIP: status, headers, body.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
        self.request("GET", path, headers).await
    }

    async fn request(
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

fn backend(service: &str, weight: u32) -> pb::Backend {
    pb::Backend {
        service: format!("shop/{service}.shop.svc.cluster.local"),
        port: 80,
        weight,
        ..pb::Backend::default()
    }
}

fn prefix(path: &str) -> Option<pb::route_rule::Match> {
    Some(pb::route_rule::Match::Http(pb::HttpMatch {
        path: Some(pb::PathMatch {
            r#type: pb::MatchType::Prefix.into(),
            value: path.into(),
        }),
        ..pb::HttpMatch::default()
    }))
}

fn rule(name: &str, m: Option<pb::route_rule::Match>, backends: Vec<pb::Backend>) -> pb::RouteRule {
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

#[tokio::test]
async fn without_routes_requests_reach_the_service_and_the_backend_sees_the_waypoint() {
    let mesh = Mesh::start().await;
    assert!(
        !mesh.waypoint.is_ready(),
        "not ready before a configuration"
    );
    mesh.waypoint.configure(mesh.service(Vec::new()));
    assert!(mesh.waypoint.is_ready());
    let (status, headers, body) = mesh.get("/hello?x=1", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-backend"], "echo-v1-0");
    assert!(body.contains("path=/hello?x=1"), "{body}");
    assert!(body.contains("host: echo.shop.svc.cluster.local"), "{body}");
    // node-b's ztunnel saw the waypoint's identity, never the client's
    let line = log_line(&[
        "direction=\"inbound\"",
        &format!("src.addr={}:", ip(mesh.net, 4)),
    ])
    .await;
    assert!(
        line.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/waypoint\""),
        "{line}"
    );
    // the waypoint counted the request with upstream's labels
    let metrics = mesh.waypoint.metrics().encode();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"waypoint\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\"")
                && l.contains("destination_service=\"echo.shop.svc.cluster.local\"")
                && l.contains("response_code=\"200\"")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_pick_backends_by_path_and_answer_404_when_nothing_matches() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(vec![
        rule("v2", prefix("/v2"), vec![backend("echo-v2", 1)]),
        rule("v1", prefix("/v1"), vec![backend("echo", 1)]),
    ]));
    let (status, headers, _) = mesh.get("/v2/items", &[]).await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"echo-v2-0".parse().unwrap())
    );
    let (status, headers, _) = mesh.get("/v1", &[]).await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"echo-v1-0".parse().unwrap())
    );
    // segment-wise: /v2example is not under /v2
    let (status, _, _) = mesh.get("/v2example", &[]).await;
    assert_eq!(status, 404);
    log_line(&["path=\"/v2example\"", "status=404", "response_flags=NR"]).await;
}

#[tokio::test]
async fn filters_modify_headers_redirect_and_invalid_backends_answer_500() {
    let mesh = Mesh::start().await;
    let mut modify = rule("modify", prefix("/modify"), vec![backend("echo", 1)]);
    modify.filters = vec![
        pb::Filter {
            kind: Some(pb::filter::Kind::RequestHeaderModifier(
                pb::HeaderModifier {
                    set: vec![pb::Header {
                        name: "x-set".into(),
                        value: "set-value".into(),
                    }],
                    add: vec![pb::Header {
                        name: "x-add".into(),
                        value: "added".into(),
                    }],
                    remove: vec!["x-remove".into()],
                },
            )),
        },
        pb::Filter {
            kind: Some(pb::filter::Kind::ResponseHeaderModifier(
                pb::HeaderModifier {
                    set: vec![pb::Header {
                        name: "x-backend".into(),
                        value: "rewritten".into(),
                    }],
                    ..pb::HeaderModifier::default()
                },
            )),
        },
    ];
    let mut redirect = rule("redirect", prefix("/old"), Vec::new());
    redirect.filters = vec![pb::Filter {
        kind: Some(pb::filter::Kind::RequestRedirect(pb::RequestRedirect {
            hostname: "example.org".into(),
            status_code: 301,
            ..pb::RequestRedirect::default()
        })),
    }];
    let mut invalid = backend("missing", 1);
    invalid.error = pb::BackendError::NotFound.into();
    mesh.waypoint.configure(mesh.service(vec![
        modify,
        redirect,
        rule("invalid", prefix("/invalid"), vec![invalid]),
        rule("none", prefix("/none"), Vec::new()),
    ]));
    let (status, headers, body) = mesh
        .get(
            "/modify",
            &[("x-set", "old"), ("x-add", "first"), ("x-remove", "gone")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-set: set-value\n"), "{body}");
    assert!(!body.contains("x-set: old"), "{body}");
    assert!(body.contains("x-add: first\nx-add: added\n"), "{body}");
    assert!(!body.contains("x-remove"), "{body}");
    assert_eq!(headers["x-backend"], "rewritten");

    let (status, headers, _) = mesh.get("/old/page?q=1", &[]).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "http://example.org/old/page?q=1");

    let (status, _, _) = mesh.get("/invalid", &[]).await;
    assert_eq!(status, 500);
    let (status, _, _) = mesh.get("/none", &[]).await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn weights_split_traffic_and_weight_zero_gets_nothing() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(vec![rule(
        "split",
        None,
        vec![backend("echo", 0), backend("echo-v2", 1)],
    )]));
    for _ in 0..10 {
        let (status, headers, _) = mesh.get("/", &[]).await;
        assert_eq!(
            (status, &headers["x-backend"]),
            (200, &"echo-v2-0".parse().unwrap())
        );
    }
    mesh.waypoint.configure(mesh.service(vec![rule(
        "split",
        None,
        vec![backend("echo", 1), backend("echo-v2", 1)],
    )]));
    let mut v1 = 0;
    for _ in 0..40 {
        let (_, headers, _) = mesh.get("/", &[]).await;
        if headers["x-backend"] == "echo-v1-0" {
            v1 += 1;
        }
    }
    // 50/50 over 40 requests: 8..=32 covers far more than 3 standard deviations
    assert!((8..=32).contains(&v1), "{v1} of 40 to v1");
}

/// Writes `raw` on a fresh tunnel and reads what comes back until the waypoint closes.
async fn raw_exchange(mesh: &Mesh, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = mesh.tunnel().await;
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bad_requests_get_the_answer_the_spec_names_and_nothing_else_breaks() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(Vec::new()));
    // An oversized header: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: echo\r\nx-big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let answer = raw_exchange(&mesh, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    // Request smuggling: Content-Length and Transfer-Encoding together are framed by
    // Transfer-Encoding alone and the connection closes after the answer (RFC 9112 §6.1), so
    // the request hidden behind the chunked body is never read; two lengths are a 400.
    let answer = raw_exchange(
        &mesh,
        b"POST / HTTP/1.1\r\nhost: echo\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nhost: echo\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.120}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(!answer.contains("/admin"), "smuggled: {answer}");
    assert!(
        !answer.contains("content-length: 5"),
        "the backend saw the stale length: {answer}"
    );
    let answer = raw_exchange(
        &mesh,
        b"POST / HTTP/1.1\r\nhost: echo\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.120}");
    // A client that stalls in its headers is closed after the header deadline (1 s here).
    let started = tokio::time::Instant::now();
    let answer = raw_exchange(&mesh, b"GET / HTTP/1.1\r\nhost: ec").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(!answer.contains("200"), "{answer}");
    // Garbage on the waypoint's 15008: a TLS failure, logged.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(mesh.waypoint.addresses().inbound)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nnot TLS\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        log_line(&[
            "connection failed",
            &mesh.waypoint.addresses().inbound.to_string(),
            "TLS handshake failed",
        ])
        .await;
    }
    // And a well-behaved client is still served.
    let (status, _, body) = mesh.get("/after", &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_invalid_regex_answers_500_for_its_matches_only() {
    let mesh = Mesh::start().await;
    let broken = Some(pb::route_rule::Match::Http(pb::HttpMatch {
        path: Some(pb::PathMatch {
            r#type: pb::MatchType::Regex.into(),
            value: "/broken/(".into(),
        }),
        ..pb::HttpMatch::default()
    }));
    mesh.waypoint.configure(mesh.service(vec![
        rule("fine", prefix("/fine"), vec![backend("echo", 1)]),
        rule("broken", broken, vec![backend("echo", 1)]),
    ]));
    assert_eq!(mesh.get("/fine", &[]).await.0, 200);
    assert_eq!(mesh.get("/other", &[]).await.0, 500);
    log_line(&[
        "route entry cannot be applied",
        "invalid regular expression",
    ])
    .await;
}

#[tokio::test]
async fn a_websocket_upgrade_is_carried_through_the_waypoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(vec![rule(
        "ws",
        prefix("/ws"),
        vec![backend("echo-v2", 1)],
    )]));
    let mut s = mesh.tunnel().await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: echo\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("the 101 arrives")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-backend: echo-v2-0"), "{head}");
    // From here on the bytes are the WebSocket's, both ways.
    s.write_all(b"frames both ways").await.unwrap();
    let mut back = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the echo comes back")
        .unwrap();
    assert_eq!(&back, b"frames both ways");
}

#[tokio::test]
async fn mirrors_get_a_copy_and_timeouts_answer_504() {
    let mesh = Mesh::start().await;
    let mut mirrored = rule("mirrored", prefix("/mirrored"), vec![backend("echo", 1)]);
    mirrored.filters = vec![pb::Filter {
        kind: Some(pb::filter::Kind::RequestMirror(pb::RequestMirror {
            backend: Some(backend("echo-v2", 1)),
            numerator: 100,
            denominator: 100,
        })),
    }];
    let mut slow = rule("slow", prefix("/slow"), vec![backend("echo", 1)]);
    slow.timeouts = Some(pb::Timeouts {
        request_ms: Some(300),
        backend_request_ms: None,
    });
    mesh.waypoint.configure(mesh.service(vec![mirrored, slow]));
    // The answer is the primary's; the mirror got the same path and query.
    let target = format!("/mirrored?id={}", mesh.net[2]);
    let (status, headers, _) = mesh.get(&target, &[]).await;
    assert_eq!(
        (status, &headers["x-backend"]),
        (200, &"echo-v1-0".parse().unwrap())
    );
    assert!(seen("echo-v2-0", &target).await, "the mirror saw {target}");
    // A backend slower than the request timeout: 504, at the timeout.
    let started = tokio::time::Instant::now();
    let (status, _, _) = mesh.get("/slow?delay=3000", &[]).await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    // The same path within its budget is answered.
    assert_eq!(mesh.get("/slow?delay=10", &[]).await.0, 200);
}
