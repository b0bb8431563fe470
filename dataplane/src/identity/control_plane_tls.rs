//! rustls configurations for the control-plane channel (xDS and the CA API), as upstream:
//! server-authenticated TLS 1.3 with the same suites as the data plane, no client certificate
//! (callers prove who they are with a bearer token), the server checked by DNS name or IP
//! against a configured root (`XDS_ROOT_CA` / `CA_ROOT_CA`), ALPN `h2` for gRPC.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::{ALPN_H2, TlsError, provider};
use crate::seams::Clock;
use crate::seams::clock::RustlsTime;

/// What istiod presents on its TLS port.
pub fn control_plane_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clock: Arc<dyn Clock>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_details(provider(), Arc::new(RustlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// What a ztunnel uses to reach istiod: the server must chain to one of `roots` and carry the
/// name the client dials.
pub fn control_plane_client_config(
    roots: &[CertificateDer<'static>],
    clock: Arc<dyn Clock>,
) -> Result<ClientConfig, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = ClientConfig::builder_with_details(provider(), Arc::new(RustlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
