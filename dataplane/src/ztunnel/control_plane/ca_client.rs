//! Certificates from istiod's CA API (wire facts §3): a fresh key and CSR per request, the
//! workload identity asked for as `ImpersonatedIdentity` (this ztunnel serves every workload
//! of its node), and the answer accepted only if it is for that identity.

use std::collections::BTreeMap;
use std::time::Duration;

use prost_types::{Struct, Value, value::Kind};

use super::channel::{ControlPlaneClient, ControlPlaneError};
use crate::identity::{CertificateRequest, Identity, WorkloadCertificate};
use crate::seams::network::BoxFuture;
use crate::xds::proto::istio::v1::auth::IstioCertificateRequest;
use crate::xds::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::ztunnel::certificates::{CertificateFetchError, CertificateProvider};

/// The CA API client.
pub struct CaClient {
    client: ControlPlaneClient,
    ttl: Duration,
}

impl CaClient {
    /// Requests certificates of lifetime `ttl` (`SECRET_TTL`).
    pub fn new(client: ControlPlaneClient, ttl: Duration) -> Self {
        CaClient { client, ttl }
    }

    async fn request(&self, identity: &Identity) -> Result<WorkloadCertificate, String> {
        let csr = CertificateRequest::new(identity).map_err(|e| e.to_string())?;
        let metadata = Struct {
            fields: BTreeMap::from([(
                "ImpersonatedIdentity".to_string(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem.clone(),
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        self.client
            .authorize(&mut request)
            .map_err(|e| e.to_string())?;
        let response = IstioCertificateServiceClient::new(self.client.channel())
            .create_certificate(request)
            .await
            .map_err(|s| ControlPlaneError::Status(s).to_string())?;
        csr.finish(&response.into_inner().cert_chain)
            .map_err(|e| format!("unusable CA response: {e}"))
    }
}

impl CertificateProvider for CaClient {
    fn fetch(
        &self,
        identity: &Identity,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CertificateFetchError>> {
        let identity = identity.clone();
        Box::pin(async move {
            self.request(&identity)
                .await
                .map_err(|reason| CertificateFetchError::Issue { identity, reason })
        })
    }
}
