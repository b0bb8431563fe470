//! Certificates for the workloads this ztunnel serves: fetched from a provider (the local CA
//! today, istiod's CA with the control plane), cached, and replaced at half-life.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};

use crate::identity::{
    Identity, LocalCa, LocalCaError, TlsError, WorkloadCertificate, client_config, server_config,
};
use crate::seams::Clock;
use crate::seams::network::BoxFuture;

/// Why a workload has no usable certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateFetchError {
    #[error("certificate for {identity} could not be issued: {reason}")]
    Issue { identity: Identity, reason: String },
    #[error("TLS configuration for {0} could not be built: {1}")]
    Tls(Identity, TlsError),
}

/// Where certificates come from.
pub trait CertificateProvider: Send + Sync + 'static {
    fn fetch(
        &self,
        identity: &Identity,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CertificateFetchError>>;
}

/// Issues certificates from a CA held in-process (standalone runs, tests, the simulator
/// before the control plane takes over).
pub struct LocalCaProvider {
    ca: LocalCa,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl LocalCaProvider {
    pub fn new(ca: LocalCa, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        LocalCaProvider { ca, ttl, clock }
    }
}

impl CertificateProvider for LocalCaProvider {
    fn fetch(
        &self,
        identity: &Identity,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CertificateFetchError>> {
        let result =
            self.ca
                .issue(identity, self.ttl, self.clock.now())
                .map_err(|e: LocalCaError| CertificateFetchError::Issue {
                    identity: identity.clone(),
                    reason: e.to_string(),
                });
        Box::pin(async move { result })
    }
}

struct Cached {
    certificate: Arc<WorkloadCertificate>,
    server: Arc<ServerConfig>,
}

/// The per-identity certificate cache and the TLS configurations built from it.
pub struct CertificateManager {
    provider: Arc<dyn CertificateProvider>,
    clock: Arc<dyn Clock>,
    cache: Mutex<BTreeMap<Identity, Arc<Cached>>>,
}

impl CertificateManager {
    pub fn new(provider: Arc<dyn CertificateProvider>, clock: Arc<dyn Clock>) -> Self {
        CertificateManager {
            provider,
            clock,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    async fn cached(&self, identity: &Identity) -> Result<Arc<Cached>, CertificateFetchError> {
        let now = self.clock.now();
        let existing = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(identity)
            .cloned();
        if let Some(c) = &existing
            && now < c.certificate.refresh_at()
        {
            return Ok(c.clone());
        }
        match self.provider.fetch(identity).await {
            Ok(certificate) => {
                let server = server_config(&certificate, self.clock.clone())
                    .map_err(|e| CertificateFetchError::Tls(identity.clone(), e))?;
                let fresh = Arc::new(Cached {
                    certificate: Arc::new(certificate),
                    server: Arc::new(server),
                });
                self.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(identity.clone(), fresh.clone());
                Ok(fresh)
            }
            // Keep serving with the last good certificate while it is still valid.
            Err(err) => match existing {
                Some(c) if !c.certificate.is_expired(now) => {
                    tracing::warn!(%identity, %err, "certificate refresh failed; keeping the current one");
                    Ok(c)
                }
                _ => Err(err),
            },
        }
    }

    /// The certificate for `identity`, fetching or refreshing it when needed.
    pub async fn certificate(
        &self,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, CertificateFetchError> {
        Ok(self.cached(identity).await?.certificate.clone())
    }

    /// The HBONE server configuration presenting `identity`.
    pub async fn server_config(
        &self,
        identity: &Identity,
    ) -> Result<Arc<ServerConfig>, CertificateFetchError> {
        Ok(self.cached(identity).await?.server.clone())
    }

    /// An HBONE client configuration presenting `identity` and accepting only `expected`.
    pub async fn client_config(
        &self,
        identity: &Identity,
        expected: Vec<Identity>,
    ) -> Result<Arc<ClientConfig>, CertificateFetchError> {
        let cached = self.cached(identity).await?;
        client_config(&cached.certificate, expected, self.clock.clone())
            .map(Arc::new)
            .map_err(|e| CertificateFetchError::Tls(identity.clone(), e))
    }

    /// Identities with a cached certificate, for the admin API.
    pub fn snapshot(&self) -> Vec<Arc<WorkloadCertificate>> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| c.certificate.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::{ManualClock, SystemClock};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts fetches and can be told to fail, around a real local CA.
    struct Flaky {
        inner: LocalCaProvider,
        fetches: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    impl CertificateProvider for Flaky {
        fn fetch(
            &self,
            identity: &Identity,
        ) -> BoxFuture<'_, Result<WorkloadCertificate, CertificateFetchError>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                let err = CertificateFetchError::Issue {
                    identity: identity.clone(),
                    reason: "CA unavailable".into(),
                };
                return Box::pin(async move { Err(err) });
            }
            self.inner.fetch(identity)
        }
    }

    fn setup() -> (ManualClock, Arc<Flaky>, CertificateManager) {
        let clock = ManualClock::new(Arc::new(SystemClock));
        let ca = LocalCa::generate("cluster.local", clock.now()).unwrap();
        let provider = Arc::new(Flaky {
            inner: LocalCaProvider::new(ca, Duration::from_secs(3600), Arc::new(clock.clone())),
            fetches: AtomicUsize::new(0),
            failing: Default::default(),
        });
        let manager = CertificateManager::new(provider.clone(), Arc::new(clock.clone()));
        (clock, provider, manager)
    }

    #[tokio::test]
    async fn cached_until_half_life_then_renewed() {
        let (clock, provider, manager) = setup();
        let id = Identity::new("cluster.local", "shop", "web");
        let first = manager.certificate(&id).await.unwrap();
        let again = manager.certificate(&id).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);
        // past half of the one-hour lifetime (plus the 60 s backdate), a new one is fetched
        clock.advance(Duration::from_secs(31 * 60));
        let renewed = manager.certificate(&id).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(renewed.not_after() > first.not_after());
        assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn keeps_the_last_good_certificate_while_valid_then_fails() {
        let (clock, provider, manager) = setup();
        let id = Identity::new("cluster.local", "shop", "web");
        let first = manager.certificate(&id).await.unwrap();
        provider.failing.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(40 * 60));
        let kept = manager.certificate(&id).await.unwrap();
        assert!(Arc::ptr_eq(&first, &kept), "still valid: keep serving it");
        clock.advance(Duration::from_secs(30 * 60));
        let err = manager.certificate(&id).await.unwrap_err();
        assert!(err.to_string().contains("CA unavailable"), "{err}");
    }
}
