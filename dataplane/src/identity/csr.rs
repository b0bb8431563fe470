//! Asking a CA for a certificate, as ztunnel does: a fresh ECDSA P-256 key, a CSR with an empty
//! subject and one critical SPIFFE URI SAN, and the CA's `[leaf, intermediates…, roots]`
//! answer turned into a [`WorkloadCertificate`] — but only if it is for the identity asked for.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{CertificateError, Identity, WorkloadCertificate};

/// A pending request: the CSR to send and the key that stays here.
pub struct CertificateRequest {
    pub identity: Identity,
    /// PEM `CERTIFICATE REQUEST`, the CA API's `csr` field.
    pub csr_pem: String,
    key: KeyPair,
}

impl CertificateRequest {
    pub fn new(identity: &Identity) -> Result<Self, CertificateError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(CertificateRequest {
            identity: identity.clone(),
            csr_pem,
            key,
        })
    }

    /// Builds the certificate from the CA's answer: element 0 is the leaf, the middle ones are
    /// intermediates presented on the wire, the last holds the trust anchors (possibly several
    /// concatenated PEMs, e.g. during a root rotation).
    pub fn finish(self, cert_chain: &[String]) -> Result<WorkloadCertificate, CertificateError> {
        let [leaf, middle @ .., roots] = cert_chain else {
            return Err(CertificateError::Response(format!(
                "no root certificate present ({} element(s); the CA must answer [leaf, …, root])",
                cert_chain.len()
            )));
        };
        let mut chain = vec![one_cert(leaf, "leaf")?];
        for pem in middle {
            chain.push(one_cert(pem, "intermediate")?);
        }
        let roots = CertificateDer::pem_slice_iter(roots.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CertificateError::Pem {
                what: "root certificates",
                source,
            })?;
        if roots.is_empty() {
            return Err(CertificateError::Empty("root certificates"));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let certificate = WorkloadCertificate::from_der(chain, key, roots)?;
        if certificate.identity != self.identity {
            return Err(CertificateError::Response(format!(
                "CA issued {} but {} was requested",
                certificate.identity, self.identity
            )));
        }
        Ok(certificate)
    }
}

fn one_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, CertificateError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|source| CertificateError::Pem { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::LocalCa;
    use std::time::{Duration, SystemTime};
    use x509_parser::prelude::FromDer;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn csr_has_upstream_shape() {
        let id = Identity::new("cluster.local", "shop", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let der = pem::parse(&request.csr_pem).unwrap();
        assert_eq!(der.tag(), "CERTIFICATE REQUEST");
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.contents())
                .unwrap();
        assert!(
            csr.certification_request_info
                .subject
                .iter()
                .next()
                .is_none()
        );
        let san = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .find_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    Some(san.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            format!("{:?}", san.general_names),
            format!("[URI(\"{id}\")]")
        );
    }

    #[test]
    fn signed_by_the_ca_and_finished_into_a_usable_certificate() {
        let ca = LocalCa::generate("cluster.local", now()).unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let chain = ca
            .sign_csr(&request.csr_pem, &id, Duration::from_secs(86_400), now())
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert!(chain.iter().all(|pem| pem.ends_with('\n')));
        let cert = request.finish(&chain).unwrap();
        assert_eq!(cert.identity, id);
        assert_eq!(cert.roots(), &[ca.root().clone()]);
        let clock = std::sync::Arc::new(crate::seams::SystemClock);
        assert!(crate::identity::server_config(&cert, clock.clone()).is_ok());
        assert!(crate::identity::client_config(&cert, vec![id], clock).is_ok());
    }

    #[test]
    fn the_ca_decides_the_identity_and_the_client_checks_it() {
        let ca = LocalCa::generate("cluster.local", now()).unwrap();
        let asked = Identity::new("cluster.local", "shop", "web");
        let caller = Identity::new("cluster.local", "shop", "other");
        let request = CertificateRequest::new(&asked).unwrap();
        // istiod ignores the CSR's SANs and signs the caller's identity
        let chain = ca
            .sign_csr(&request.csr_pem, &caller, Duration::from_secs(3600), now())
            .unwrap();
        let err = request.finish(&chain).err().unwrap();
        assert!(
            err.to_string()
                .contains("CA issued spiffe://cluster.local/ns/shop/sa/other"),
            "{err}"
        );
    }

    #[test]
    fn bad_csrs_and_bad_answers_are_clear_errors() {
        let ca = LocalCa::generate("cluster.local", now()).unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        let garbage = ca.sign_csr("not a csr", &id, Duration::from_secs(60), now());
        assert!(
            garbage
                .unwrap_err()
                .to_string()
                .contains("certificate signing request rejected")
        );
        // a CSR whose signature does not verify
        let request = CertificateRequest::new(&id).unwrap();
        let mut der = pem::parse(&request.csr_pem).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x55;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(
            ca.sign_csr(&tampered, &id, Duration::from_secs(60), now())
                .is_err()
        );
        // a leaf-only answer has no trust anchor
        let chain = ca
            .sign_csr(&request.csr_pem, &id, Duration::from_secs(60), now())
            .unwrap();
        let err = request.finish(&chain[..1]).err().unwrap();
        assert!(
            err.to_string().contains("no root certificate present"),
            "{err}"
        );
    }

    #[test]
    fn several_roots_in_the_last_element_are_all_trusted() {
        let old = LocalCa::generate("cluster.local", now()).unwrap();
        let new = LocalCa::generate("cluster.local", now()).unwrap();
        let id = Identity::new("cluster.local", "shop", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let mut chain = new
            .sign_csr(&request.csr_pem, &id, Duration::from_secs(60), now())
            .unwrap();
        chain[1] = format!("{}{}", new.root_pem(), old.root_pem());
        let cert = request.finish(&chain).unwrap();
        assert_eq!(cert.roots().len(), 2);
    }
}
