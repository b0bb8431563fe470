//! TLS as an HBONE or control-plane client: a certificate istiod's CA really issued (so the
//! attack reaches past the handshake into HTTP/2 and the proxy's own checks), one from a CA
//! nobody trusts, or none at all.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use dataplane::identity::{Identity, LocalCa, WorkloadCertificate, client_config};
use dataplane::seams::{Seams, SystemClock};
use dataplane::ztunnel::{AuthToken, CaClient, CertificateProvider, ControlPlaneClient};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tcp::connect_from;
use crate::mesh::{Mesh, TRUST_DOMAIN, ports};

pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, ns, sa)
}

/// A control-plane client to istiod's TLS port presenting `token` (none: anonymous).
pub fn control_plane(mesh: &Mesh, token: Option<&str>) -> anyhow::Result<ControlPlaneClient> {
    let address = format!("https://{}:{}", mesh.istiod_ip(), ports::XDS_TLS);
    Ok(ControlPlaneClient::new(
        &address,
        &mesh.root_pem,
        token.map(|t| AuthToken::Literal(t.to_string())),
        "Kubernetes",
        Seams::real(1).network,
        Arc::new(SystemClock),
    )?)
}

/// A certificate for `id` from istiod's CA, asked for by node-a's ztunnel token, as node-a's
/// ztunnel would for a workload on its node.
pub async fn ca_issued(mesh: &Mesh, id: &Identity) -> anyhow::Result<WorkloadCertificate> {
    let client = control_plane(mesh, Some(&mesh.token_a))?;
    let ca = CaClient::new(client, Duration::from_secs(3600));
    ca.fetch(id)
        .await
        .with_context(|| format!("istiod's CA would not issue {id}"))
}

/// A certificate for `id` from a root the mesh does not trust.
pub fn foreign(id: &Identity) -> anyhow::Result<WorkloadCertificate> {
    let now = SystemTime::now();
    let ca = LocalCa::generate(TRUST_DOMAIN, now)?;
    Ok(ca.issue(id, Duration::from_secs(3600), now)?)
}

/// The HBONE client configuration for `cert`, accepting `server` as the peer.
pub fn hbone_config(cert: &WorkloadCertificate, server: Identity) -> anyhow::Result<ClientConfig> {
    Ok(client_config(cert, vec![server], Arc::new(SystemClock))?)
}

/// A TLS 1.3 client with ALPN h2 that presents no certificate and accepts any server: only
/// for reaching the server's demand for one.
pub fn no_certificate() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// `config` with its server check replaced by one that accepts anything: for presenting a
/// client certificate the server must judge, whatever the server presents.
pub fn accepting_any_server(mut config: ClientConfig) -> ClientConfig {
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyServer));
    config
}

/// TLS over a fresh TCP connection from `source` to `to`.
pub async fn connect(
    source: Option<IpAddr>,
    to: SocketAddr,
    config: ClientConfig,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(source, to, Duration::from_secs(2)).await?;
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(tls)
}

/// An HTTP/2 connection over HBONE TLS. Its driver runs on its own task, which closes the
/// socket when dropped (aborted).
pub struct Hbone {
    pub send: h2::client::SendRequest<bytes::Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Hbone {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub async fn hbone(source: IpAddr, to: SocketAddr, config: ClientConfig) -> anyhow::Result<Hbone> {
    let tls = connect(Some(source), to, config).await?;
    let (send, conn) = h2::client::Builder::new()
        .max_concurrent_reset_streams(100_000)
        .handshake(tls)
        .await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Hbone { send, driver })
}

/// Accepts any server certificate.
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
