//! A certificate authority in-process, for standalone runs and tests: it issues certificates
//! shaped like istiod's (empty subject, one critical SPIFFE URI SAN, serverAuth + clientAuth).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certificate::pem_encode;
use super::{CertificateError, Identity, WorkloadCertificate};

/// How far back a certificate's validity starts, to absorb small clock differences.
const BACKDATE: Duration = Duration::from_secs(60);
/// Root validity, as istiod's self-signed root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the local CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    #[error("CA key is not a valid PEM private key: {0}")]
    Key(rcgen::Error),
    #[error("CA certificate is not a valid PEM certificate: {0}")]
    Certificate(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("certificate signing request rejected: {0}")]
    Csr(rcgen::Error),
    #[error("issued certificate unusable: {0}")]
    Issued(#[from] CertificateError),
}

/// A root CA that can issue workload certificates.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    key_pem: String,
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

impl LocalCa {
    /// Generates a self-signed root (ECDSA P-256) for `trust_domain`, valid from `now`.
    pub fn generate(trust_domain: &str, now: SystemTime) -> Result<Self, LocalCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time(now + ROOT_VALIDITY);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            root: cert.der().clone(),
            key_pem,
        })
    }

    /// Loads a root and its key from PEM (as written by [`LocalCa::root_pem`] and
    /// [`LocalCa::key_pem`]).
    pub fn from_pem(root_pem: &str, key_pem: &str) -> Result<Self, LocalCaError> {
        let key = KeyPair::from_pem(key_pem).map_err(LocalCaError::Key)?;
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| LocalCaError::Certificate(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(root_pem, key)
            .map_err(|e| LocalCaError::Certificate(e.to_string()))?;
        Ok(LocalCa {
            issuer,
            root,
            key_pem: key_pem.to_string(),
        })
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn root_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.root)
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `identity`, valid for `ttl` from `now`, with a fresh key.
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<WorkloadCertificate, LocalCaError> {
        self.sign_leaf(leaf_params(identity, ttl, now)?)
    }

    /// Signs `params` for a fresh key, as a workload certificate chained to this root.
    fn sign_leaf(&self, params: CertificateParams) -> Result<WorkloadCertificate, LocalCaError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(WorkloadCertificate::from_der(
            vec![cert.der().clone()],
            key,
            vec![self.root.clone()],
        )?)
    }

    /// Signs a PEM CSR as `identity`, the way istiod does: the CSR's signature must verify,
    /// but its own SANs are ignored — the identity comes from the authenticated caller. The
    /// answer is the CA API's `[leaf, root]`, one PEM per element.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<String>, LocalCaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(LocalCaError::Csr)?;
        let leaf = leaf_params(identity, ttl, now)?.signed_by(&csr.public_key, &self.issuer)?;
        Ok(vec![leaf.pem(), self.root_pem()])
    }
}

#[cfg(test)]
impl LocalCa {
    /// Issues a workload leaf whose extended key usages are `usages` (none: no EKU extension),
    /// for the tests of the EKU rules.
    pub(crate) fn issue_with_usages(
        &self,
        identity: &Identity,
        usages: Vec<ExtendedKeyUsagePurpose>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<WorkloadCertificate, LocalCaError> {
        let mut params = leaf_params(identity, ttl, now)?;
        params.extended_key_usages = usages;
        self.sign_leaf(params)
    }
}

/// The key and chain a server presents under DNS names and IPs rather than a SPIFFE identity
/// (istiod's own serving certificate, `istiod.istio-system.svc`).
pub struct ServingCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl LocalCa {
    /// Issues a serving certificate for `names` (DNS names, or IP addresses as text).
    pub fn issue_serving(
        &self,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<ServingCertificate, LocalCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(first) = names.first() {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_time(now - BACKDATE);
        params.not_after = to_time(now + ttl);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCertificate {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// A workload leaf as istiod issues it: empty subject (so rcgen marks the SAN critical), one
/// SPIFFE URI SAN, serverAuth + clientAuth, digitalSignature + keyEncipherment.
fn leaf_params(
    identity: &Identity,
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_time(now - backdate(ttl));
    params.not_after = to_time(now + ttl);
    Ok(params)
}

/// How far a leaf's validity starts before issuance: [`BACKDATE`], but never more than a tenth
/// of the lifetime — renewal is due at half of `not_after − not_before`, and a backdate close
/// to half the lifetime would make a fresh certificate due at once.
fn backdate(ttl: Duration) -> Duration {
    BACKDATE.min(ttl / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_leaf_has_upstream_shape() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = LocalCa::generate("cluster.local", now).unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        let cert = ca.issue(&id, Duration::from_secs(86_400), now).unwrap();
        assert_eq!(cert.identity, id);
        assert!(!cert.is_expired(now));
        assert!(cert.is_expired(now + Duration::from_secs(86_401)));
        assert_eq!(
            cert.refresh_at(),
            cert.not_before() + (cert.not_after().duration_since(cert.not_before()).unwrap() / 2)
        );

        let (_, x) = x509_parser::parse_x509_certificate(&cert.chain()[0]).unwrap();
        assert!(x.subject().iter().next().is_none(), "subject must be empty");
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn short_lived_certificates_are_not_due_when_issued() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = LocalCa::generate("cluster.local", now).unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        for ttl in [60, 120, 300, 86_400] {
            let cert = ca.issue(&id, Duration::from_secs(ttl), now).unwrap();
            let due_in = cert.refresh_at().duration_since(now).unwrap();
            assert!(
                due_in >= Duration::from_secs(ttl * 2 / 5),
                "a {ttl} s certificate is due after {due_in:?}"
            );
        }
    }

    #[test]
    fn round_trips_through_pem() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = LocalCa::generate("cluster.local", now).unwrap();
        let again = LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.root(), ca.root());
        let id = Identity::new("cluster.local", "a", "b");
        let cert = again.issue(&id, Duration::from_secs(3600), now).unwrap();
        assert_eq!(cert.roots()[0], *ca.root());
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = LocalCa::from_pem("not pem", "not a key").err().unwrap();
        assert!(err.to_string().contains("CA key"), "{err}");
    }
}
