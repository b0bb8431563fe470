//! Bad input on the HBONE port: each gets a clear log line, and the ztunnel keeps serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::*;

#[tokio::test]
async fn garbage_bytes_on_15008() {
    let pair = Pair::start("").await;
    let mut s = TcpStream::connect(pair.echo_hbone()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nthis is not TLS\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    log_line(&[
        "connection failed",
        &pair.echo_hbone().to_string(),
        "TLS handshake failed",
    ])
    .await;
    pair.still_serves().await;
}

#[tokio::test]
async fn tls_without_a_client_certificate() {
    let pair = Pair::start("").await;
    // A client that would accept any server, so that the handshake reaches the server's
    // demand for a certificate, and presents none.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(pair.echo_hbone()).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(pair.echo_hbone().ip().into());
    // TLS 1.3: the client finishes its side first; the server's refusal arrives as an alert.
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the client side of the handshake completes");
    let mut buf = [0u8; 1];
    let read = tls.read(&mut buf).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "server carried data for a client without a certificate: {read:?}"
    );
    log_line(&[
        "connection failed",
        &pair.echo_hbone().to_string(),
        "TLS handshake failed: peer sent no certificates",
    ])
    .await;
    pair.still_serves().await;
}

/// Accepts any server certificate: only for reaching the server's own checks.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn raw(pair: &Pair) -> h2::client::SendRequest<bytes::Bytes> {
    pair.raw_as(&identity("shop", "web")).await.unwrap()
}

#[tokio::test]
async fn non_connect_method_gets_400() {
    let pair = Pair::start("").await;
    let mut send = raw(&pair).await;
    let get = http::Request::builder()
        .method("GET")
        .uri(format!("https://{}/", pair.echo()))
        .body(())
        .unwrap();
    assert_eq!(raw_request(&mut send, get).await, Ok(400));
    log_line(&["not a CONNECT", "method=GET"]).await;
    // the server advertised upstream's SETTINGS_MAX_CONCURRENT_STREAMS
    assert_eq!(send.current_max_send_streams(), 200);
    // the same HTTP/2 connection still carries a good CONNECT
    assert_eq!(
        raw_request(&mut send, connect_request(&pair.echo().to_string())).await,
        Ok(200)
    );
}

#[tokio::test]
async fn malformed_or_mismatched_authority_gets_400() {
    let pair = Pair::start("").await;
    let mut send = raw(&pair).await;
    // no port
    let no_port = connect_request(&ip(pair.net, 3).to_string());
    assert_eq!(raw_request(&mut send, no_port).await, Ok(400));
    log_line(&[
        "without a host:port authority",
        &ip(pair.net, 2).to_string(),
    ])
    .await;
    // an IP that is not the one dialled
    let other = format!("{}:{}", ip(pair.net, 9), ECHO_PORT);
    assert_eq!(
        raw_request(&mut send, connect_request(&other)).await,
        Ok(400)
    );
    log_line(&["does not match the dialled address", &other]).await;
    // a hostname that is not one of this workload's services
    assert_eq!(
        raw_request(&mut send, connect_request("nope.example:80")).await,
        Ok(400)
    );
    // nothing listens there: 503, and only after the upstream connect failed
    let closed = format!("{}:9", ip(pair.net, 3));
    assert_eq!(
        raw_request(&mut send, connect_request(&closed)).await,
        Ok(503)
    );
    log_line(&["status=503", &closed, "connect to"]).await;
    // a proxy port is never a target
    let self_call = format!("{}:15001", ip(pair.net, 3));
    assert_eq!(
        raw_request(&mut send, connect_request(&self_call)).await,
        Ok(503)
    );
    assert_eq!(
        raw_request(&mut send, connect_request(&pair.echo().to_string())).await,
        Ok(200)
    );
}

#[tokio::test]
async fn hostname_authority_reaches_the_service_port() {
    let pair = Pair::start("").await;
    let mut send = raw(&pair).await;
    let status = raw_request(&mut send, connect_request("echo.shop.svc.cluster.local:80")).await;
    assert_eq!(status, Ok(200));
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let pair = Pair::start("").await;
    let mut send = raw(&pair).await;
    let mut request = connect_request(&pair.echo().to_string());
    let big = "x".repeat(70 * 1024);
    request
        .headers_mut()
        .insert("x-padding", http::HeaderValue::from_str(&big).unwrap());
    // h2 enforces the advertised SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB) itself with a 431,
    // and says so in a line that names the peer (the connection's span).
    assert_eq!(raw_request(&mut send, request).await, Ok(431));
    log_line(&[
        "REQUEST_HEADER_FIELDS_TOO_LARGE",
        &format!("src.addr={}:", ip(pair.net, 2)),
    ])
    .await;
    // the connection survives, and so does everyone else's
    assert_eq!(
        raw_request(&mut send, connect_request(&pair.echo().to_string())).await,
        Ok(200)
    );
    pair.still_serves().await;
}

#[tokio::test]
async fn peer_stalling_in_the_tls_handshake_is_dropped() {
    let pair = Pair::start("").await;
    let mut stalled = TcpStream::connect(pair.echo_hbone()).await.unwrap();
    // while it stalls, others are served
    pair.still_serves().await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(6), stalled.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "stalled peer not dropped: {read:?}"
    );
    log_line(&["connection failed", "did not finish within"]).await;
}

#[tokio::test]
async fn socks5_garbage_is_rejected() {
    let pair = Pair::start("").await;
    let mut s = TcpStream::connect(pair.a.addresses().socks5.unwrap())
        .await
        .unwrap();
    s.write_all(b"\x04\x01garbage").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    log_line(&["SOCKS5 request rejected", "not SOCKS5"]).await;
    pair.still_serves().await;
}

#[tokio::test]
async fn socks5_client_offering_no_acceptable_method_gets_one_answer() {
    let pair = Pair::start("").await;
    let mut s = TcpStream::connect(pair.a.addresses().socks5.unwrap())
        .await
        .unwrap();
    // username/password and GSSAPI only
    s.write_all(&[5, 2, 2, 1]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("the server closes after refusing")
        .unwrap();
    assert_eq!(
        answer,
        [5, 0xff],
        "exactly the method refusal, nothing after it"
    );
    pair.still_serves().await;
}
