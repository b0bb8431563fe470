//! Workload identity: SPIFFE IDs, certificates, the local CA, and the mTLS configurations
//! HBONE runs on.

mod certificate;
mod control_plane_tls;
mod csr;
mod local_ca;
mod spiffe;
mod tls;

pub use certificate::{CertificateError, WorkloadCertificate};
pub use control_plane_tls::{control_plane_client_config, control_plane_server_config};
pub use csr::CertificateRequest;
pub use local_ca::{LocalCa, LocalCaError, ServingCertificate};
pub use spiffe::{Identity, IdentityError};
pub use tls::{TlsError, client_config, peer_identity, server_config};

/// The trust domain used when none is configured, as upstream.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
