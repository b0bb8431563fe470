//! Two in-process ztunnels on real loopback sockets: traffic, identity and refusals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::seams::{Clock, ManualClock, SystemClock};

use super::common::*;

#[tokio::test]
async fn hbone_between_two_ztunnels_via_socks5() {
    let pair = Pair::start("").await;
    // by pod IP and by service VIP
    for target in [pair.echo(), SocketAddr::new(ip(pair.net, 100), 80)] {
        let (code, stream) = pair.connect(target).await;
        assert_eq!(code, 0, "SOCKS5 reply for {target}");
        let mut s = stream.unwrap();
        assert_eq!(
            round_trip(&mut s, b"hello hbone").await.unwrap(),
            b"hello hbone"
        );
    }
    assert_eq!(
        pair.a.pooled_connections(),
        1,
        "both streams share one HBONE connection"
    );
    let (status, metrics) = http_get(pair.b.addresses().metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{reporter=\"destination\"")
            && metrics.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/web\""),
        "{metrics}"
    );
    let (status, ready) = http_get(pair.a.addresses().readiness, "/healthz/ready").await;
    assert_eq!((status, ready.as_str()), (200, "ready\n"));
    let (status, dump) = http_get(pair.b.addresses().admin, "/config_dump").await;
    assert_eq!(status, 200);
    assert!(
        dump.contains("\"identity\": \"spiffe://cluster.local/ns/shop/sa/echo\""),
        "{dump}"
    );
    // the server side's access log names the client's verified identity
    let src = format!("src.addr={}", ip(pair.net, 2));
    let line = log_line(&[
        "\taccess\tconnection complete\t",
        &src,
        "direction=\"inbound\"",
    ])
    .await;
    assert!(
        line.contains("src.identity=\"spiffe://cluster.local/ns/shop/sa/web\""),
        "{line}"
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

/// The `id=` a log line carries: the connection's traceparent.
fn trace_id(line: &str) -> &str {
    let at = line
        .find(" id=00-")
        .expect("line carries the connection's trace id")
        + 4;
    &line[at..at + 55]
}

#[tokio::test]
async fn one_connection_carries_one_trace_id_and_its_service_across_both_nodes() {
    let pair = Pair::start("").await;
    // to the service VIP: the CONNECT's authority is the pod address, so only the
    // `forwarded` header tells node-b which service was dialled
    let mut s = pair.tunnel(SocketAddr::new(ip(pair.net, 100), 80)).await;
    assert_eq!(round_trip(&mut s, b"traced").await.unwrap(), b"traced");
    drop(s);
    let src = format!("src.addr={}:", ip(pair.net, 2));
    let outbound = log_line(&[
        "\taccess\tconnection complete\t",
        &src,
        "direction=\"outbound\"",
    ])
    .await;
    let id = trace_id(&outbound);
    let inbound = log_line(&[
        "\taccess\tconnection complete\t",
        "direction=\"inbound\"",
        &format!("id={id}"),
    ])
    .await;
    assert!(inbound.contains(&src), "{inbound}");
    assert!(
        inbound.contains("dst.service=\"echo.shop.svc.cluster.local\""),
        "{inbound}"
    );
    // one column of key=value pairs: the id joins the access log's own
    assert_eq!(inbound.split('\t').count(), 5, "{inbound}");
}
#[tokio::test]
async fn server_presenting_the_wrong_identity_is_refused() {
    let pair = Pair::start("").await;
    // node-a believes echo runs as sa/echo-expected; node-b serves it as sa/echo
    let yaml = topology_yaml(pair.net, "")
        .replace("serviceAccount: echo\n", "serviceAccount: echo-expected\n");
    pair.a.state().update(|s| {
        dataplane::localconfig::LocalConfig::parse(&yaml)
            .unwrap()
            .apply_to(s);
    });
    let (code, stream) = pair.connect(pair.echo()).await;
    assert_ne!(code, 0, "a mismatched server identity must not connect");
    assert!(stream.is_none());
    log_line(&[
        "connection failed",
        "TLS handshake",
        &pair.echo_hbone().to_string(),
    ])
    .await;
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let pair = Pair::start("").await;
    let foreign = dataplane::identity::Identity::new("evil.domain", "shop", "web");
    let result = match pair.raw_as(&foreign).await {
        Ok(mut send) => raw_request(&mut send, connect_request(&pair.echo().to_string())).await,
        Err(e) => Err(e),
    };
    assert!(result.is_err(), "foreign trust domain got {result:?}");
    log_line(&[
        "connection failed",
        "TLS handshake failed",
        &pair.echo_hbone().to_string(),
    ])
    .await;
    pair.still_serves().await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let pair = Pair::start("").await;
    // A client certificate valid for one hour, presented after the clock moved two hours on.
    let web = identity("shop", "web");
    let cert = pair
        .ca
        .issue(&web, Duration::from_secs(3600), SystemClock.now())
        .unwrap();
    pair.clock.advance(Duration::from_secs(2 * 3600));
    let client_clock = ManualClock::new(Arc::new(SystemClock));
    client_clock.advance(Duration::from_secs(2 * 3600));
    let result = match raw_hbone(
        ip(pair.net, 2),
        pair.echo_hbone(),
        &cert,
        identity("shop", "echo"),
        Arc::new(client_clock),
    )
    .await
    {
        Ok(mut send) => raw_request(&mut send, connect_request(&pair.echo().to_string())).await,
        Err(e) => Err(e),
    };
    assert!(result.is_err(), "expired certificate got {result:?}");
    let line = log_line(&[
        "connection failed",
        &pair.echo_hbone().to_string(),
        "xpired",
    ])
    .await;
    assert!(line.contains("TLS handshake failed"), "{line}");
}

#[tokio::test]
async fn deny_policy_applied_while_open_closes_the_connection() {
    let pair = Pair::start("").await;
    let mut s = pair.tunnel(pair.echo()).await;
    assert_eq!(round_trip(&mut s, b"before").await.unwrap(), b"before");
    assert_eq!(pair.b.open_inbound_connections(), 1);

    let deny = r#"
policies:
- name: echo-policy
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web]
"#;
    let policy = dataplane::localconfig::LocalConfig::parse(deny).unwrap();
    pair.b.state().update(|st| policy.apply_to(st));

    // the open connection is closed: reads end
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {read:?}"
    );
    let line = log_line(&[
        "policy change closes open connection",
        &ip(pair.net, 2).to_string(),
    ])
    .await;
    assert!(
        line.contains("explicitly denied by shop/echo-policy rule 0"),
        "{line}"
    );
    // the access log keeps the bytes the connection moved before it was closed
    let src = format!("src.addr={}", ip(pair.net, 2));
    let line = log_line(&["connection complete", "closed by policy change", &src]).await;
    assert!(line.contains("bytes_sent=6 bytes_recv=6"), "{line}");
    // and a new one is refused with "not allowed"
    let (code, _) = pair.connect(pair.echo()).await;
    assert_eq!(code, 2, "SOCKS5 reply for a 401 from the server");
}

#[tokio::test]
async fn allow_policy_admits_only_its_principals() {
    let allow = r#"policies:
- name: echo-policy
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web]
        destinationPorts: [8080]
"#;
    let pair = Pair::start(allow).await;
    pair.still_serves().await;
    // another identity (same trust domain) is refused with 401
    let mut send = pair.raw_as(&identity("shop", "intruder")).await.unwrap();
    let status = raw_request(&mut send, connect_request(&pair.echo().to_string())).await;
    assert_eq!(status, Ok(401));
    let line = log_line(&["status=401", "spiffe://cluster.local/ns/shop/sa/intruder"]).await;
    assert!(
        line.contains("allow policies exist, but none allowed"),
        "{line}"
    );
}

#[tokio::test]
async fn admin_explains_what_policy_would_decide() {
    let allow = r#"policies:
- name: echo-policy
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/web]
"#;
    let pair = Pair::start(allow).await;
    let (web, echo) = (ip(pair.net, 2), ip(pair.net, 3));
    let query = |id: &str| {
        format!(
            "/debug/authorize?src={web}&dst={echo}&port=8080&identity=spiffe://cluster.local/ns/shop/sa/{id}"
        )
    };
    let (status, body) = http_get(pair.b.addresses().admin, &query("web")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"allowed\": true") && body.contains("allowed by shop/echo-policy rule 0"),
        "{body}"
    );
    let (_, body) = http_get(pair.b.addresses().admin, &query("other")).await;
    assert!(
        body.contains("\"allowed\": false") && body.contains("none allowed"),
        "{body}"
    );
    let (status, _) = http_get(pair.b.addresses().admin, "/debug/authorize?src=nope").await;
    assert_eq!(status, 400);
}

/// A TCP connection from the client pod's address to node-a's SOCKS5 port, no handshake yet.
async fn socks5_client(pair: &Pair) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(pair.net, 2), 0)).unwrap();
    socket
        .connect(pair.a.addresses().socks5.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn socks5_resolves_service_hostnames() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pair = Pair::start("").await;
    let mut s = socks5_client(&pair).await;
    let host = b"echo.shop.svc.cluster.local";
    let mut hello = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    hello.extend_from_slice(host);
    hello.extend_from_slice(&80u16.to_be_bytes());
    s.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!((reply[2], reply[3]), (5, 0), "{reply:?}");
    assert_eq!(round_trip(&mut s, b"by name").await.unwrap(), b"by name");
    // an unknown name is "host unreachable"
    let mut s = socks5_client(&pair).await;
    let mut hello = vec![5, 1, 0, 5, 1, 0, 3, 4];
    hello.extend_from_slice(b"nope");
    hello.extend_from_slice(&80u16.to_be_bytes());
    s.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!((reply[2], reply[3]), (5, 4), "{reply:?}");
}

/// A client that sends greeting, request and its first payload in one write, without waiting
/// for any reply, gets both replies in one read and its payload delivered upstream.
#[tokio::test]
async fn socks5_pipelined_handshake_with_early_payload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pair = Pair::start("").await;
    let mut s = socks5_client(&pair).await;
    let std::net::IpAddr::V4(echo) = pair.echo().ip() else {
        panic!("v4 only")
    };
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&echo.octets());
    hello.extend_from_slice(&pair.echo().port().to_be_bytes());
    hello.extend_from_slice(b"sent early");
    s.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..4], [5, 0, 5, 0], "{reply:?}");
    let mut echoed = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("early payload echoed")
        .unwrap();
    assert_eq!(&echoed, b"sent early");
    assert_eq!(
        round_trip(&mut s, b"and later").await.unwrap(),
        b"and later"
    );
}

#[tokio::test]
async fn a_selector_policy_added_later_applies_on_a_pooled_connection() {
    let pair = Pair::start("").await;
    pair.still_serves().await;
    // The pooled HBONE connection to node-b now exists. Echo's workload then gains a reference
    // to a selector-scoped ALLOW for another identity, as istiod would push it.
    let late = r#"policies:
- name: late-policy
  namespace: shop
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/other]
"#;
    let policy = dataplane::localconfig::LocalConfig::parse(late).unwrap();
    pair.b.state().update(|st| {
        policy.apply_to(st);
        let mut echo = (*st.workload("Kubernetes//Pod/shop/echo-0").unwrap()).clone();
        echo.authorization_policies.push("shop/late-policy".into());
        st.insert_workload(echo);
    });
    assert_eq!(pair.b.pooled_connections() + pair.a.pooled_connections(), 1);
    let (code, _) = pair.connect(pair.echo()).await;
    assert_eq!(
        code, 2,
        "refused: the CONNECT is judged against today's workload"
    );
}

#[tokio::test]
async fn on_a_wildcard_address_admin_listens_on_loopback_only() {
    let ca = new_ca();
    let config = dataplane::ztunnel::Config {
        node_name: "node-w".into(),
        listen_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        ports: dataplane::ztunnel::Ports {
            outbound: 0,
            inbound_plaintext: 0,
            inbound: 0,
            socks5: 0,
            readiness: 0,
            metrics: 0,
            admin: 0,
        },
        ..dataplane::ztunnel::Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = Arc::new(dataplane::ztunnel::LocalCaProvider::new(
        dataplane::identity::LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap(),
        config.certificate_ttl,
        clock,
    ));
    let z = dataplane::ztunnel::run(
        config,
        dataplane::seams::Seams::real(1),
        state(""),
        provider,
    )
    .await
    .unwrap();
    let addresses = z.addresses();
    assert!(addresses.admin.ip().is_loopback(), "{:?}", addresses.admin);
    for open in [addresses.inbound, addresses.metrics, addresses.readiness] {
        assert!(open.ip().is_unspecified(), "{open:?}");
    }
    let (status, _) = http_get(addresses.admin, "/config_dump").await;
    assert_eq!(status, 200);
    z.shutdown().await;
}
