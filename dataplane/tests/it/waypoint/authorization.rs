//! L7 authorization at the waypoint, end to end: the client's identity as its ztunnel
//! tunnelled it, requests judged by method, path, host and headers, Envoy's answers to a
//! denial, changes applied to open connections, and the admin API's explanation.

use std::net::SocketAddr;
use std::time::Duration;

use dataplane::xds::proto::ambient::waypoint as pb;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn policy(name: &str, action: pb::Action, rules: Vec<pb::Rule>) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: name.into(),
        action: action.into(),
        rules,
        ..pb::AuthorizationPolicy::default()
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Only web's service account may read (GET) `/api/*`.
fn readers() -> pb::AuthorizationPolicy {
    policy(
        "readers",
        pb::Action::Allow,
        vec![pb::Rule {
            from: vec![pb::Source {
                principals: strings(&["cluster.local/ns/shop/sa/web"]),
                ..pb::Source::default()
            }],
            to: vec![pb::Operation {
                methods: strings(&["GET"]),
                paths: strings(&["/api/*"]),
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
    )
}

#[tokio::test]
async fn an_allow_policy_admits_the_tunnelled_identity_and_denies_the_rest_with_403() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    config.services[0].policies = vec![readers()];
    mesh.waypoint.configure(config);
    let (status, _, body) = mesh.get("/api/items", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pod=echo-v1-0"));
    let (status, headers, body) = mesh.request("DELETE", "/api/items", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(mesh.get("/other", &[]).await.0, 403);
    let line = log_line(&["method=DELETE", "authorization="]).await;
    assert!(
        line.contains("denied: ALLOW policies apply, but none matched")
            && line.contains("response_flags=RBAC"),
        "{line}"
    );
    log_line(&[
        "path=\"/api/items\"",
        "status=200",
        "allowed: ALLOW shop/readers rules[0] matched",
    ])
    .await;
}

#[tokio::test]
async fn a_dot_segment_cannot_walk_around_a_deny_and_the_backend_sees_the_judged_path() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    config.policies = vec![policy(
        "no-admin",
        pb::Action::Deny,
        vec![pb::Rule {
            to: vec![pb::Operation {
                paths: strings(&["/admin*"]),
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
    )];
    mesh.waypoint.configure(config);
    assert_eq!(mesh.get("/public/../admin/keys", &[]).await.0, 403);
    assert_eq!(mesh.get("/public/%2e%2e/admin", &[]).await.0, 403);
    let (status, _, body) = mesh.get("/public/./a/../b?x=1", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("path=/public/b?x=1"), "{body}");
}

#[tokio::test]
async fn headers_and_hosts_are_judged_and_dry_run_and_audit_change_nothing() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    let mut shadow = policy("shadow-deny", pb::Action::Deny, vec![pb::Rule::default()]);
    shadow.dry_run = true;
    config.services[0].policies = vec![
        policy(
            "canary-header",
            pb::Action::Allow,
            vec![pb::Rule {
                to: vec![pb::Operation {
                    hosts: strings(&["echo.shop.svc.cluster.local"]),
                    ..pb::Operation::default()
                }],
                when: vec![pb::Condition {
                    key: "request.headers[x-canary]".into(),
                    values: strings(&["yes"]),
                    not_values: Vec::new(),
                }],
                ..pb::Rule::default()
            }],
        ),
        shadow,
        policy("audit-all", pb::Action::Audit, vec![pb::Rule::default()]),
    ];
    mesh.waypoint.configure(config);
    assert_eq!(mesh.get("/", &[("x-canary", "yes")]).await.0, 200);
    assert_eq!(mesh.get("/", &[("x-canary", "no")]).await.0, 403);
    let line = log_line(&["status=200", "canary-header"]).await;
    assert!(
        line.contains("audited")
            && line.contains("dry-run DENY shop/shadow-deny matched (would deny)"),
        "{line}"
    );
}

#[tokio::test]
async fn grpc_denials_are_permission_denied() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    config.services[0].ports.push(pb::ServicePort {
        port: 81,
        target_port: u32::from(GRPC_PORT),
        name: "grpc".into(),
        kind: pb::RouteKind::None.into(),
        rules: Vec::new(),
        app_protocol: "grpc".into(),
    });
    config.policies = vec![policy(
        "no-delete",
        pb::Action::Deny,
        vec![pb::Rule {
            to: vec![pb::Operation {
                paths: strings(&["/shop.Items/Delete"]),
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
    )];
    mesh.waypoint.configure(config);
    let vip = SocketAddr::new(ip(mesh.net, 100), 81);
    let (code, stream) = socks5(mesh.a.addresses().socks5.unwrap(), ip(mesh.net, 2), vip).await;
    assert_eq!(code, 0);
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let call = |path: &str| {
        http::Request::post(format!("http://echo.shop.svc.cluster.local:81{path}"))
            .header("content-type", "application/grpc")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let allowed = send.send_request(call("/shop.Items/Get")).await.unwrap();
    assert_eq!(allowed.headers()["grpc-status"], "0");
    let denied = send.send_request(call("/shop.Items/Delete")).await.unwrap();
    assert_eq!(denied.status(), 200);
    assert_eq!(denied.headers()["grpc-status"], "7");
    assert_eq!(denied.headers()["grpc-message"], "RBAC: access denied");
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_on_an_open_connection() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(mesh.service(Vec::new()));
    let stream = mesh.tunnel().await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        http::Request::get("/api/items")
            .header("host", "echo.shop.svc.cluster.local")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(get()).await.unwrap().status(), 200);
    assert_eq!(send.send_request(get()).await.unwrap().status(), 200);
    let mut config = mesh.service(Vec::new());
    config.policies = vec![policy(
        "deny-all",
        pb::Action::Deny,
        vec![pb::Rule::default()],
    )];
    mesh.waypoint.configure(config);
    assert_eq!(send.send_request(get()).await.unwrap().status(), 403);
}

/// Service port 81 as plain TCP (no `http` or `grpc` name): bytes to echo's gRPC port.
fn with_tcp_port(mesh: &Mesh, policies: Vec<pb::AuthorizationPolicy>) -> pb::WaypointConfig {
    let mut config = mesh.service(Vec::new());
    config.services[0].ports.push(pb::ServicePort {
        port: 81,
        target_port: u32::from(GRPC_PORT),
        name: "tcp".into(),
        kind: pb::RouteKind::None.into(),
        rules: Vec::new(),
        app_protocol: String::new(),
    });
    config.services[0].policies = policies;
    config
}

/// A tunnel to echo's port 81; `None` when the client's ztunnel already saw it refused.
async fn tcp_tunnel(mesh: &Mesh) -> Option<tokio::net::TcpStream> {
    let vip = SocketAddr::new(ip(mesh.net, 100), 81);
    let (_, stream) = socks5(mesh.a.addresses().socks5.unwrap(), ip(mesh.net, 2), vip).await;
    stream
}

/// Sends an HTTP/1.1 request as raw bytes to the HTTP/2 echo; what it answers (its SETTINGS
/// at least) within 3 s, or nothing at EOF.
async fn raw_exchange(stream: &mut tokio::net::TcpStream) -> String {
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        .await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn on_a_tcp_port_a_deny_on_http_attributes_closes_every_connection() {
    let mesh = Mesh::start().await;
    mesh.waypoint.configure(with_tcp_port(&mesh, Vec::new()));
    let mut open = tcp_tunnel(&mesh).await.expect("a tunnel with no policy");
    assert!(!raw_exchange(&mut open).await.is_empty());
    let deny_post = policy(
        "deny-post",
        pb::Action::Deny,
        vec![pb::Rule {
            to: vec![pb::Operation {
                methods: strings(&["POST"]),
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
    );
    mesh.waypoint
        .configure(with_tcp_port(&mesh, vec![deny_post]));
    // New connections are refused (closed as soon as the waypoint judges them, which the
    // client's ztunnel may see before it answers the client): the method cannot be read,
    // so the DENY counts as matched.
    if let Some(mut denied) = tcp_tunnel(&mesh).await {
        assert_eq!(raw_exchange(&mut denied).await, "");
    }
    log_line(&["connection denied", "DENY shop/deny-post rules[0] matched"]).await;
    // And the connection opened before the change is closed.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), open.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    log_line(&["no longer allowed after a policy update", "shop/deny-post"]).await;
}

#[tokio::test]
async fn the_admin_api_explains_a_decision() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    config.services[0].policies = vec![readers()];
    mesh.waypoint.configure(config);
    let admin = mesh.waypoint.addresses().admin;
    let query = format!(
        "/debug/authorize?src={}&dst={}&port=80&identity=spiffe://cluster.local/ns/shop/sa/web&method=POST&path=/api/x",
        ip(mesh.net, 2),
        ip(mesh.net, 100)
    );
    let (status, body) = http_get(admin, &query).await;
    assert_eq!(status, 200, "{body}");
    let explanation: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explanation["allowed"], false);
    let step = explanation["steps"][0].as_str().unwrap();
    assert!(
        step.contains("ALLOW shop/readers")
            && step.contains("rules[0].to[0].methods: \"POST\" not in [\"GET\"]"),
        "{step}"
    );
    let (status, body) = http_get(admin, &query.replace("POST", "GET")).await;
    assert_eq!(status, 200);
    let explanation: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explanation["allowed"], true, "{body}");
    let (status, _) = http_get(admin, "/debug/authorize?src=nope").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn layered_policies_judge_the_hbone_connection_before_any_request() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    // A selector policy on the waypoint's pods (istiod's layered flag): web may not connect.
    config.layered_policies = vec![policy(
        "no-web-at-the-waypoint",
        pb::Action::Deny,
        vec![pb::Rule {
            from: vec![pb::Source {
                principals: strings(&["cluster.local/ns/shop/sa/web"]),
                ..pb::Source::default()
            }],
            to: vec![pb::Operation {
                // HTTP-only: on the connection it counts as matched, as on a TCP chain.
                methods: strings(&["POST"]),
                ..pb::Operation::default()
            }],
            ..pb::Rule::default()
        }],
    )];
    mesh.waypoint.configure(config.clone());
    let vip = SocketAddr::new(ip(mesh.net, 100), 80);
    let (code, _) = socks5(mesh.a.addresses().socks5.unwrap(), ip(mesh.net, 2), vip).await;
    assert_ne!(code, 0, "the waypoint refused web's CONNECT");
    log_line(&["layered authorization: denied: DENY shop/no-web-at-the-waypoint rules[0] matched"])
        .await;
    config.layered_policies.clear();
    mesh.waypoint.configure(config);
    assert_eq!(mesh.get("/", &[]).await.0, 200);
}
