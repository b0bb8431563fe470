//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the caller by its
//! token, decide the identity it may have, and sign.
//!
//! Identity, as istiod decides it (wire facts §3): with `ImpersonatedIdentity` in the request
//! metadata (a node ztunnel asking for one of its workloads), the identity must be in our
//! trust domain and some workload with that namespace and service account must run on the
//! caller's node; otherwise the caller gets its own identity.

use std::sync::{Arc, Mutex, PoisonError};

use tonic::{Request, Response, Status};

use dataplane::identity::Identity;
use dataplane::seams::Clock;
use dataplane::xds::proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use dataplane::xds::proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

use super::authority::CertificateAuthority;
use super::token::{Claims, TokenSigner, bearer};
use crate::snapshot::Snapshot;

/// The metadata key a node ztunnel names the workload identity with.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The namespace and service account of a node ztunnel's own identity.
const ZTUNNEL_NAMESPACE: &str = "istio-system";
const ZTUNNEL_SERVICE_ACCOUNT: &str = "ztunnel";

/// What the CA service needs from the running istiod.
pub struct CaShared {
    pub authority: Mutex<CertificateAuthority>,
    pub tokens: TokenSigner,
    pub clock: Arc<dyn Clock>,
    /// The newest published snapshot: who runs where, for the node check.
    pub snapshot: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// Certificates issued so far.
    pub issued: std::sync::atomic::AtomicU64,
}

/// Checks the caller's bearer token; the gRPC status says why it was refused.
pub fn authenticate(
    metadata: &tonic::metadata::MetadataMap,
    tokens: &TokenSigner,
    clock: &dyn Clock,
) -> Result<Claims, Status> {
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
    bearer(header)
        .and_then(|token| tokens.verify(token, clock.now()))
        .map_err(|e| Status::unauthenticated(format!("authentication failed: {e}")))
}

/// The identity the caller may be issued, given its claims and the impersonation it asked for.
pub fn authorize(
    claims: &Claims,
    impersonated: Option<&str>,
    trust_domain: &str,
    snapshot: &Snapshot,
) -> Result<Identity, Status> {
    let Some(requested) = impersonated else {
        return match &claims.identity {
            Some(own) => own.parse().map_err(|e| {
                Status::unauthenticated(format!("token identity {own:?} is not usable: {e}"))
            }),
            None => Ok(Identity::new(
                trust_domain,
                ZTUNNEL_NAMESPACE,
                ZTUNNEL_SERVICE_ACCOUNT,
            )),
        };
    };
    let identity: Identity = requested.parse().map_err(|e| {
        Status::invalid_argument(format!(
            "{IMPERSONATED_IDENTITY} {requested:?} is not a SPIFFE identity: {e}"
        ))
    })?;
    if claims.identity.is_some() {
        return Err(Status::unauthenticated(
            "request impersonation authentication failure: the caller is not a node proxy",
        ));
    }
    if identity.trust_domain != trust_domain {
        return Err(Status::unauthenticated(format!(
            "request impersonation authentication failure: {identity} is outside trust domain {trust_domain}"
        )));
    }
    let on_node = snapshot.workloads.values().any(|w| {
        w.node == claims.node
            && w.namespace == identity.namespace
            && w.identity().service_account == identity.service_account
    });
    if !on_node {
        return Err(Status::unauthenticated(format!(
            "request impersonation authentication failure: no workload with identity {identity} runs on node {}",
            claims.node
        )));
    }
    Ok(identity)
}

fn impersonated(request: &IstioCertificateRequest) -> Result<Option<String>, Status> {
    use prost_types::value::Kind;
    let Some(metadata) = &request.metadata else {
        return Ok(None);
    };
    match metadata
        .fields
        .get(IMPERSONATED_IDENTITY)
        .and_then(|v| v.kind.as_ref())
    {
        None => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Status::invalid_argument(format!(
            "{IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct CaService {
    shared: Arc<CaShared>,
}

impl CaService {
    pub fn new(shared: Arc<CaShared>) -> Self {
        CaService { shared }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let shared = &self.shared;
        let claims = authenticate(request.metadata(), &shared.tokens, shared.clock.as_ref())
            .inspect_err(|s| tracing::warn!(error = %s.message(), "CSR refused"))?;
        let request = request.into_inner();
        let snapshot = shared.snapshot.borrow().clone();
        let authority = shared
            .authority
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let identity = impersonated(&request)
            .and_then(|i| authorize(&claims, i.as_deref(), authority.trust_domain(), &snapshot))
            .inspect_err(
                |s| tracing::warn!(node = %claims.node, error = %s.message(), "CSR refused"),
            )?;
        let chain = authority
            .sign(
                &request.csr,
                &identity,
                request.validity_duration,
                shared.clock.now(),
            )
            .map_err(|e| {
                tracing::warn!(node = %claims.node, %identity, error = %e, "CSR refused");
                Status::invalid_argument(e.to_string())
            })?;
        shared
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(node = %claims.node, %identity, "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}
