//! rustls configurations for HBONE, as upstream's data plane: TLS 1.3 only, AES-GCM suites,
//! ALPN `h2`, no SNI, no resumption, mandatory client certificates. The server accepts any
//! peer of its own trust domain (who may connect is left to authorization policy); the client
//! requires one URI SAN to equal an expected identity. Certificate validity is checked against
//! the clock seam.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::TrustAnchor;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::certificate::identity_of_der;
use super::{Identity, WorkloadCertificate};
use crate::seams::Clock;
use crate::seams::clock::RustlsTime;

/// The ALPN protocol HBONE negotiates.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchor is not a usable CA certificate: {0}")]
    TrustAnchor(webpki::Error),
    #[error("rustls rejected the configuration: {0}")]
    Rustls(#[from] Error),
}

/// The crypto provider: ring, restricted to upstream's cipher suites.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

fn trust_anchors(roots: &[CertificateDer<'static>]) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    roots
        .iter()
        .map(|root| {
            webpki::anchor_from_trusted_cert(root)
                .map(|anchor| anchor.to_owned())
                .map_err(TlsError::TrustAnchor)
        })
        .collect()
}

fn pki_error(err: webpki::Error) -> Error {
    use webpki::Error as E;
    let cert = match err {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::CertRevoked => CertificateError::Revoked,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(cert)
}

/// Chain verification shared by both sides.
#[derive(Debug)]
struct ChainVerifier {
    roots: Vec<TrustAnchor<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ChainVerifier {
    fn new(roots: &[CertificateDer<'static>], provider: &CryptoProvider) -> Result<Self, TlsError> {
        Ok(ChainVerifier {
            roots: trust_anchors(roots)?,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// Verifies the chain for `usage` and returns the peer's URI SANs as identities.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<Vec<Identity>, Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        Ok(cert
            .valid_uri_names()
            .filter_map(|uri| uri.parse::<Identity>().ok())
            .collect())
    }
}

/// Client side: the server must present one of the expected identities.
#[derive(Debug)]
struct ExpectedIdentityVerifier {
    chain: ChainVerifier,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented =
            self.chain
                .verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        if presented.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::debug!(?presented, expected = ?self.expected, "server identity mismatch");
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.chain.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.chain.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.algorithms.supported_schemes()
    }
}

/// Server side: any client of our trust domain, with a certificate from our roots.
#[derive(Debug)]
struct TrustDomainVerifier {
    chain: ChainVerifier,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let presented =
            self.chain
                .verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        if presented
            .iter()
            .any(|id| id.trust_domain == self.trust_domain)
        {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::debug!(?presented, trust_domain = %self.trust_domain, "client trust domain mismatch");
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.chain.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.chain.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.algorithms.supported_schemes()
    }
}

/// The HBONE client configuration for `cert`, accepting only servers with an `expected`
/// identity.
pub fn client_config(
    cert: &WorkloadCertificate,
    expected: Vec<Identity>,
    clock: Arc<dyn Clock>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = ExpectedIdentityVerifier {
        chain: ChainVerifier::new(cert.roots(), &provider)?,
        expected,
    };
    let mut config = ClientConfig::builder_with_details(provider, Arc::new(RustlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain().to_vec(), cert.key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The HBONE server configuration for `cert`: clients must present a certificate of the same
/// trust domain, chained to the same roots.
pub fn server_config(
    cert: &WorkloadCertificate,
    clock: Arc<dyn Clock>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = TrustDomainVerifier {
        chain: ChainVerifier::new(cert.roots(), &provider)?,
        trust_domain: cert.identity.trust_domain.clone(),
    };
    let mut config = ServerConfig::builder_with_details(provider, Arc::new(RustlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain().to_vec(), cert.key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The identity a verified peer presented: its first parsable SPIFFE URI SAN.
///
/// Only certificates that passed the verifiers above reach a finished handshake, so this is
/// always a verified identity, never one taken from a header.
pub fn peer_identity(state: &rustls::CommonState) -> Option<Identity> {
    state.peer_certificates()?.first().and_then(identity_of_der)
}

#[cfg(test)]
mod tests;
