//! A ztunnel never carries traffic to itself: its own listeners (admin with `/quitquitquit`,
//! metrics, readiness) and the machine's loopback are not destinations, whichever way a
//! connection arrives (SOCKS5, capture, HBONE).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::*;

/// Asks a ztunnel to stop through `stream`, as an attacker with a tunnel would.
async fn try_to_quit(stream: &mut TcpStream) {
    let _ = stream
        .write_all(b"POST /quitquitquit HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

/// `/quitquitquit` has not been called on `z`.
async fn not_asked_to_quit(z: &dataplane::ztunnel::Ztunnel) {
    let quit = tokio::time::timeout(Duration::from_millis(200), z.quit_requested()).await;
    assert!(quit.is_err(), "the ztunnel was asked to stop");
}

#[tokio::test]
async fn socks5_to_the_ztunnels_own_listeners_is_not_allowed() {
    let pair = Pair::start("").await;
    let own = pair.a.addresses();
    let admin_port = own.admin.port();
    let targets = [
        own.admin,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin_port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), admin_port),
        own.metrics,
        own.readiness,
        own.inbound,
        // node-b's admin sits on echo's address: reached through the mesh, node-b refuses it
        SocketAddr::new(ip(pair.net, 3), pair.b.addresses().admin.port()),
    ];
    for target in targets {
        let (code, stream) = pair.connect(target).await;
        if let Some(mut stream) = stream {
            try_to_quit(&mut stream).await;
        }
        assert_ne!(code, 0, "SOCKS5 carried a connection to {target}");
    }
    not_asked_to_quit(&pair.a).await;
    not_asked_to_quit(&pair.b).await;
    // and a loopback address no workload owns is refused too, as "not allowed"
    let (code, _) = pair
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 22))
        .await;
    assert_eq!(code, 2);
    pair.still_serves().await;
}

#[tokio::test]
async fn hbone_connect_to_the_ztunnels_own_ports_is_refused() {
    let pair = Pair::start("").await;
    let own = pair.b.addresses();
    let mut send = pair.raw_as(&identity("shop", "web")).await.unwrap();
    for port in [own.admin.port(), own.metrics.port(), own.readiness.port()] {
        let authority = SocketAddr::new(ip(pair.net, 3), port).to_string();
        let status = raw_request(&mut send, connect_request(&authority)).await;
        assert_eq!(status, Ok(503), "CONNECT {authority}");
    }
    log_line(&["status=503", "one of this proxy's own ports"]).await;
    not_asked_to_quit(&pair.b).await;
    // the same HBONE connection still reaches the workload
    let status = raw_request(&mut send, connect_request(&pair.echo().to_string())).await;
    assert_eq!(status, Ok(200));
}

#[tokio::test]
async fn an_ipv4_mapped_ipv6_destination_cannot_bypass_the_mesh() {
    let deny = r#"policies:
- name: echo-policy
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web]
"#;
    let pair = Pair::start(deny).await;
    let IpAddr::V4(echo) = pair.echo().ip() else {
        unreachable!()
    };
    // CONNECT to [::ffff:echo]:8080 by hand (the common client speaks IPv4 only), from web's
    // address so that the ztunnel knows the client
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(pair.net, 2), 0)).unwrap();
    let mut s = socket
        .connect(pair.a.addresses().socks5.unwrap())
        .await
        .unwrap();
    let mut request = vec![5, 1, 0, 5, 1, 0, 4];
    request.extend_from_slice(&echo.to_ipv6_mapped().octets());
    request.extend_from_slice(&ECHO_PORT.to_be_bytes());
    s.write_all(&request).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    // it went through HBONE to node-b, whose policy denies web: "not allowed"
    assert_eq!(&reply[..2], &[5, 0]);
    assert_eq!(reply[3], 2, "reply {reply:?}");
}

#[tokio::test]
async fn admin_serves_only_origin_form_targets() {
    let pair = Pair::start("").await;
    let admin = pair.a.addresses().admin;
    for target in ["http://evil.example/config_dump", "evil.example:80"] {
        let method = if target.starts_with("http") {
            "GET"
        } else {
            "CONNECT"
        };
        let (status, _) = http(admin, method, target).await;
        assert_eq!(status, 400, "{method} {target}");
    }
    let (status, _) = http(admin, "POST", "http://localhost/quitquitquit").await;
    assert_eq!(status, 400);
    not_asked_to_quit(&pair.a).await;
    let (status, _) = http_get(admin, "/config_dump").await;
    assert_eq!(status, 200);
}

/// An idle client, a trickling one and a forgotten keep-alive are each closed on `port`.
async fn drops_idle_and_trickling_clients(port: SocketAddr) {
    // Connected, then silent.
    let mut idle = TcpStream::connect(port).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)).await,
        "{port}: an idle connection is kept"
    );
    // One byte of a request line per 500 ms: never a whole header block in time.
    let mut trickle = TcpStream::connect(port).await.unwrap();
    let mut closed = false;
    for byte in b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n".iter() {
        if trickle.write_all(&[*byte]).await.is_err()
            || closed_within(&mut trickle, Duration::from_millis(500)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "{port}: a trickling client is kept");
    // Keep-alive after an answer: idle again, closed again.
    let mut kept = TcpStream::connect(port).await.unwrap();
    kept.write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut kept, Duration::from_secs(4)).await,
        "{port}: an idle keep-alive connection is kept"
    );
}

#[tokio::test]
async fn the_http_ports_close_idle_and_trickling_clients() {
    // The ztunnel's handshake timeout (2 s here) bounds them.
    let pair = Pair::start("").await;
    let addresses = pair.a.addresses();
    tokio::join!(
        drops_idle_and_trickling_clients(addresses.admin),
        drops_idle_and_trickling_clients(addresses.metrics),
        drops_idle_and_trickling_clients(addresses.readiness),
    );
    // And the ports still answer.
    let (status, _) = http_get(addresses.admin, "/config_dump").await;
    assert_eq!(status, 200);
}
