//! The key material a private API server needs, made fresh for each one with `rcgen`: a CA,
//! the API server's serving certificate for the loopback address (signed by it, so clients
//! verify the server as they would a real cluster's), and the service-account signing key.
//! All ECDSA P-256, which Kubernetes takes for every one of these roles.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The names the serving certificate carries: how tests reach it (`127.0.0.1`, `localhost`)
/// and how in-cluster clients would (`kubernetes.default.svc`, the first service IP).
const SERVING_NAMES: [&str; 6] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "10.96.0.1",
];

/// Paths of the PEM files written by [`write`].
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA clients trust (and the API server's `--client-ca-file`).
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// PKCS#8: the API server signs ServiceAccount tokens with it, the controller manager
    /// too (legacy token Secrets).
    pub service_account_key: PathBuf,
    /// Its public half, which verifies them (the API server does not derive it from a
    /// PKCS#8 private key).
    pub service_account_public_key: PathBuf,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a fresh CA, serving certificate and service-account key into `dir`.
pub fn write(dir: &Path) -> Result<CertFiles, crate::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("harness-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(SERVING_NAMES.map(String::from).to_vec())?;
    serving.distinguished_name = name("kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let service_account_key = KeyPair::generate()?;

    let files = CertFiles {
        ca: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_public_key: dir.join("service-account.pub"),
    };
    for (path, pem) in [
        (&files.ca, ca_cert.pem()),
        (&files.serving_cert, serving_cert.pem()),
        (&files.serving_key, serving_key.serialize_pem()),
        (
            &files.service_account_key,
            service_account_key.serialize_pem(),
        ),
        (
            &files.service_account_public_key,
            service_account_key.public_key_pem(),
        ),
    ] {
        crate::write_file(path, pem.as_bytes())?;
    }
    Ok(files)
}
