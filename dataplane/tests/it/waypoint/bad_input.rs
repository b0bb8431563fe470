//! Bad input: each gets the answer the spec names, and nothing else breaks.

use std::time::Duration;

use dataplane::xds::proto::ambient::waypoint as pb;
use tokio::net::TcpStream;

use super::super::common::*;
use super::*;

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
