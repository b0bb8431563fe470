//! A workload's certificate: its chain, private key, the roots it trusts and its validity.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Identity;

/// Why certificate material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no certificate found in {0}")]
    Empty(&'static str),
    #[error("{what} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    #[error("certificate carries no SPIFFE identity in its URI SANs")]
    NoIdentity,
    #[error("unusable CA response: {0}")]
    Response(String),
    #[error("certificate authority error: {0}")]
    Ca(#[from] rcgen::Error),
}

/// Everything a workload needs to speak mTLS as its identity.
pub struct WorkloadCertificate {
    pub identity: Identity,
    /// Leaf first, then intermediates: what is presented on the wire.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Trust anchors for peers.
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Clone for WorkloadCertificate {
    fn clone(&self) -> Self {
        WorkloadCertificate {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertificateError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(CertificateError::Empty(what));
    }
    Ok(certs)
}

impl WorkloadCertificate {
    /// Builds from PEM: `chain` is the leaf followed by intermediates; `roots` may hold several
    /// concatenated trust anchors (during a root rotation both are trusted).
    pub fn from_pem(chain: &str, key: &str, roots: &str) -> Result<Self, CertificateError> {
        let chain = parse_certs(chain, "certificate chain")?;
        let roots = parse_certs(roots, "root certificates")?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|source| {
            CertificateError::Pem {
                what: "private key",
                source,
            }
        })?;
        Self::from_der(chain, key, roots)
    }

    pub(crate) fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertificateError> {
        let leaf = chain
            .first()
            .ok_or(CertificateError::Empty("certificate chain"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| CertificateError::Parse(e.to_string()))?;
        let identity = identity_of_parsed(&parsed).ok_or(CertificateError::NoIdentity)?;
        let validity = parsed.validity();
        let to_system = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                UNIX_EPOCH
            }
        };
        let not_before = to_system(&validity.not_before);
        let not_after = to_system(&validity.not_after);
        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            roots,
            not_before,
            not_after,
        })
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the certificate is outside its validity window at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after || now < self.not_before
    }

    /// When to fetch a replacement: half-way through the validity, as upstream.
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }

    /// The leaf as PEM, for the admin API.
    pub fn leaf_pem(&self) -> String {
        self.chain
            .first()
            .map(|c| pem_encode("CERTIFICATE", c))
            .unwrap_or_default()
    }
}

/// The first parsable SPIFFE identity among a certificate's URI SANs.
pub(crate) fn identity_of_der(der: &CertificateDer<'_>) -> Option<Identity> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    cert.valid_uri_names().find_map(|uri| uri.parse().ok())
}

fn identity_of_parsed(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Identity> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.parse().ok(),
        _ => None,
    })
}

/// PEM-encodes DER bytes.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}
