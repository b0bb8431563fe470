//! What the waypoint speaks: WebSocket upgrades, gRPC over HTTP/2, mirrors and timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dataplane::xds::proto::ambient::waypoint as pb;

use super::super::common::*;
use super::*;

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

#[tokio::test]
async fn grpc_calls_are_routed_by_service_and_method_over_http2() {
    let mesh = Mesh::start().await;
    let mut config = mesh.service(Vec::new());
    let grpc = |service: &str, method: &str| {
        Some(pb::route_rule::Match::Grpc(pb::GrpcMatch {
            service: service.into(),
            method: method.into(),
            r#type: pb::MatchType::Exact.into(),
            headers: Vec::new(),
        }))
    };
    let mut say = rule("say", grpc("shop.Echo", "Say"), Vec::new());
    say.kind = pb::RouteKind::Grpc.into();
    say.backends = vec![pb::Backend {
        port: 81,
        port_name: "grpc".into(),
        ..backend("echo", 1)
    }];
    config.services[0].ports.push(pb::ServicePort {
        port: 81,
        target_port: u32::from(GRPC_PORT),
        name: "grpc".into(),
        kind: pb::RouteKind::Grpc.into(),
        rules: vec![say],
        app_protocol: String::new(),
    });
    mesh.waypoint.configure(config);
    // An HTTP/2 client, as a gRPC stub would be, through web's ztunnel to the VIP's port 81.
    let vip = SocketAddr::new(ip(mesh.net, 100), 81);
    let (code, stream) = socks5(mesh.a.addresses().socks5.unwrap(), ip(mesh.net, 2), vip).await;
    assert_eq!(code, 0);
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut call = |path: &str| {
        let request = http::Request::post(format!("http://echo.shop.svc.cluster.local:81{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .unwrap();
        send.send_request(request)
    };
    let response = call("/shop.Echo/Say").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(response.headers()["x-backend"], "echo-v1-0");
    assert_eq!(response.headers()["x-path"], "/shop.Echo/Say");
    // A method no entry matches: UNIMPLEMENTED from the waypoint itself.
    let response = call("/shop.Echo/Shout").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "12");
    assert!(!response.headers().contains_key("x-backend"));
}
