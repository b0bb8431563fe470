//! The HBONE TLS configurations against peers that break each rule of wire facts §4.2, with
//! both ends in memory: every refusal is asserted as the exact rustls error on the side that
//! must raise it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::ExtendedKeyUsagePurpose as Eku;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, Error,
    PeerIncompatible, ServerConnection, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;
use crate::identity::LocalCa;

const TRUST_DOMAIN: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        now()
    }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(FixedClock)
}

fn client_id() -> Identity {
    Identity::new(TRUST_DOMAIN, "shop", "web")
}

fn server_id() -> Identity {
    Identity::new(TRUST_DOMAIN, "shop", "echo")
}

struct Fixture {
    ca: LocalCa,
    client: WorkloadCertificate,
    server: WorkloadCertificate,
}

impl Fixture {
    fn new() -> Fixture {
        let ca = LocalCa::generate(TRUST_DOMAIN, now()).unwrap();
        let client = ca.issue(&client_id(), DAY, now()).unwrap();
        let server = ca.issue(&server_id(), DAY, now()).unwrap();
        Fixture { ca, client, server }
    }

    fn client_config(&self) -> ClientConfig {
        client_config(&self.client, vec![server_id()], clock()).unwrap()
    }

    fn server_config(&self) -> ServerConfig {
        server_config(&self.server, clock()).unwrap()
    }
}

/// Which end raised a handshake error.
#[derive(Debug, PartialEq)]
enum Side {
    Client,
    Server,
}

/// Moves TLS records between the two ends until both finish or one fails.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), (Side, Error)> {
    for _ in 0..10 {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        server.read_tls(&mut records.as_slice()).unwrap();
        server
            .process_new_packets()
            .map_err(|e| (Side::Server, e))?;
        let mut records = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut records).unwrap();
        }
        client.read_tls(&mut records.as_slice()).unwrap();
        client
            .process_new_packets()
            .map_err(|e| (Side::Client, e))?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 10 flights");
}

fn connect(client: ClientConfig, server: ServerConfig) -> Result<(), (Side, Error)> {
    connections(client, server).map(|_| ())
}

fn connections(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<(ClientConnection, ServerConnection), (Side, Error)> {
    // Any name: SNI is off and the verifiers do not check names.
    let name = ServerName::try_from("ztunnel.invalid").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    handshake(&mut c, &mut s)?;
    Ok((c, s))
}

#[test]
fn handshake_agrees_on_upstreams_parameters() {
    let f = Fixture::new();
    let (client, server) = connections(f.client_config(), f.server_config()).unwrap();
    for side in [&**client as &rustls::CommonState, &**server] {
        assert_eq!(
            side.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(side.alpn_protocol(), Some(ALPN_H2));
        let suite = side.negotiated_cipher_suite().unwrap().suite();
        assert!(
            [
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
            .contains(&suite),
            "{suite:?}"
        );
    }
    assert_eq!(server.server_name(), None, "the client must not send SNI");
    assert_eq!(peer_identity(&server), Some(client_id()));
    assert_eq!(peer_identity(&client), Some(server_id()));
}

#[test]
fn client_accepts_any_identity_of_the_expected_set() {
    let f = Fixture::new();
    let other = Identity::new(TRUST_DOMAIN, "shop", "waypoint");
    let client = client_config(&f.client, vec![other, server_id()], clock()).unwrap();
    connect(client, f.server_config()).unwrap();
}

#[test]
fn client_refuses_a_server_outside_the_expected_identities() {
    let f = Fixture::new();
    let expected = vec![Identity::new(TRUST_DOMAIN, "shop", "db")];
    let client = client_config(&f.client, expected, clock()).unwrap();
    assert_eq!(
        connect(client, f.server_config()),
        Err((
            Side::Client,
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        ))
    );
}

#[test]
fn server_refuses_a_client_of_another_trust_domain_even_from_its_own_roots() {
    let f = Fixture::new();
    let foreign = Identity::new("other.example", "shop", "web");
    let cert = f.ca.issue(&foreign, DAY, now()).unwrap();
    let client = client_config(&cert, vec![server_id()], clock()).unwrap();
    assert_eq!(
        connect(client, f.server_config()),
        Err((
            Side::Server,
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        ))
    );
}

#[test]
fn server_refuses_a_client_chained_to_other_roots() {
    let f = Fixture::new();
    let stranger = LocalCa::generate("stranger.example", now()).unwrap();
    let cert = stranger.issue(&client_id(), DAY, now()).unwrap();
    // The client trusts our server's roots, but its own certificate comes from elsewhere.
    let mut client = f.client_config();
    client.client_auth_cert_resolver = client_config(&cert, vec![server_id()], clock())
        .unwrap()
        .client_auth_cert_resolver;
    assert_eq!(
        connect(client, f.server_config()),
        Err((
            Side::Server,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ))
    );
}

/// Accepts any server: lets a test client reach the server's checks of the client.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client that verifies nothing and, unless given one, presents no certificate.
fn lax_client(provider: CryptoProvider, cert: Option<&WorkloadCertificate>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain().to_vec(), c.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

#[test]
fn server_requires_a_client_certificate() {
    let f = Fixture::new();
    let client = lax_client(ring::default_provider(), None);
    assert_eq!(
        connect(client, f.server_config()),
        Err((Side::Server, Error::NoCertificatesPresented))
    );
}

#[test]
fn chacha20_is_not_offered_or_accepted() {
    let f = Fixture::new();
    let mut chacha = ring::default_provider();
    chacha.cipher_suites = vec![ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    let client = lax_client(chacha, Some(&f.client));
    assert_eq!(
        connect(client, f.server_config()),
        Err((
            Side::Server,
            Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon)
        ))
    );
    assert!(
        provider()
            .cipher_suites
            .iter()
            .all(|s| !format!("{:?}", s.suite()).contains("CHACHA")),
        "our own client must not offer ChaCha20"
    );
}

#[test]
fn a_client_offering_alpn_without_h2_is_refused_and_none_is_accepted() {
    let f = Fixture::new();
    let mut client = lax_client(ring::default_provider(), Some(&f.client));
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert_eq!(
        connect(client, f.server_config()),
        Err((Side::Server, Error::NoApplicationProtocol))
    );
    let mut client = lax_client(ring::default_provider(), Some(&f.client));
    client.alpn_protocols = Vec::new();
    let (_, server) = connections(client, f.server_config()).unwrap();
    assert_eq!(server.alpn_protocol(), None);
}

/// A well-formed TLS 1.2 ClientHello (no `supported_versions` extension), written out by hand: our rustls
/// build has no TLS 1.2 client to make one.
fn tls12_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x03]; // legacy_version TLS 1.2
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-{ECDSA,RSA}-AES128-GCM
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    hello.extend_from_slice(&[
        0x00, 0x10, // extensions, 16 bytes
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04,
        0x03, // signature_algorithms: ecdsa_p256_sha256
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
    ]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(hello.len()).unwrap().to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn a_tls12_client_is_refused() {
    let f = Fixture::new();
    let mut server = ServerConnection::new(Arc::new(f.server_config())).unwrap();
    server
        .read_tls(&mut tls12_client_hello().as_slice())
        .unwrap();
    // A TLS 1.3 server needs `supported_versions` naming 1.3; a 1.2 client cannot send it.
    assert_eq!(
        server.process_new_packets().err(),
        Some(Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
        ))
    );
}

#[test]
fn a_client_certificate_without_client_auth_usage_is_refused() {
    let f = Fixture::new();
    let cert =
        f.ca.issue_with_usages(&client_id(), vec![Eku::ServerAuth], DAY, now())
            .unwrap();
    let client = client_config(&cert, vec![server_id()], clock()).unwrap();
    assert_eq!(
        connect(client, f.server_config()),
        Err((
            Side::Server,
            Error::InvalidCertificate(CertificateError::InvalidPurpose)
        ))
    );
}

#[test]
fn a_server_certificate_without_server_auth_usage_is_refused() {
    let f = Fixture::new();
    let cert =
        f.ca.issue_with_usages(&server_id(), vec![Eku::ClientAuth], DAY, now())
            .unwrap();
    let server = server_config(&cert, clock()).unwrap();
    assert_eq!(
        connect(f.client_config(), server),
        Err((
            Side::Client,
            Error::InvalidCertificate(CertificateError::InvalidPurpose)
        ))
    );
}

#[test]
fn certificates_without_any_extended_key_usage_are_accepted() {
    // EKUs are checked only when present, as webpki and upstream do.
    let f = Fixture::new();
    let client =
        f.ca.issue_with_usages(&client_id(), Vec::new(), DAY, now())
            .unwrap();
    let server =
        f.ca.issue_with_usages(&server_id(), Vec::new(), DAY, now())
            .unwrap();
    connect(
        client_config(&client, vec![server_id()], clock()).unwrap(),
        server_config(&server, clock()).unwrap(),
    )
    .unwrap();
}

#[test]
fn validity_is_read_from_the_clock_seam() {
    #[derive(Debug)]
    struct Later;
    impl Clock for Later {
        fn now(&self) -> SystemTime {
            now() + 2 * DAY
        }
    }
    let f = Fixture::new();
    // Only the server's clock has moved past the client certificate's end.
    let server = server_config(&f.server, Arc::new(Later)).unwrap();
    assert_eq!(
        connect(f.client_config(), server),
        Err((
            Side::Server,
            Error::InvalidCertificate(CertificateError::Expired)
        ))
    );
}
