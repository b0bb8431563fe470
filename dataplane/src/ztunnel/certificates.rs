//! Certificates for the workloads this ztunnel serves: fetched from a provider (the local CA
//! today, istiod's CA with the control plane), cached, and replaced at half-life.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

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
        match self.fetch(identity).await {
            Ok(fresh) => Ok(fresh),
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

    async fn fetch(&self, identity: &Identity) -> Result<Arc<Cached>, CertificateFetchError> {
        let certificate = self.provider.fetch(identity).await?;
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

    /// Fetches a new certificate for `identity` now; on failure the cached one stays.
    pub async fn renew(&self, identity: &Identity) -> Result<(), CertificateFetchError> {
        self.fetch(identity).await.map(|_| ())
    }

    /// The cached identities whose certificates are past half-life at `now`.
    pub fn due(&self, now: SystemTime) -> Vec<Identity> {
        self.lock()
            .iter()
            .filter(|(_, c)| now >= c.certificate.refresh_at())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// When the next cached certificate reaches half-life.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        self.lock()
            .values()
            .map(|c| c.certificate.refresh_at())
            .min()
    }

    /// Drops the certificates of identities no longer served here.
    pub fn retain(&self, keep: &BTreeSet<Identity>) {
        self.lock().retain(|id, _| keep.contains(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Identity, Arc<Cached>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
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

/// How often the maintenance loop looks again even without a reason (clock jumps).
const MAINTENANCE_TICK: Duration = Duration::from_secs(60);
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(150);

/// Keeps the node's certificates current: fetches one when a workload with a new identity
/// arrives (prefetch), renews at half-life, retries failures with backoff (1 s doubling to
/// 150 s, as upstream) while the old certificate keeps serving, and forgets identities whose
/// last workload left.
pub(crate) async fn maintain(inner: Arc<crate::ztunnel::Inner>, mut known: BTreeSet<Identity>) {
    let mut changes = inner.state.subscribe();
    // identity → (next attempt, current delay)
    let mut retry: BTreeMap<Identity, (tokio::time::Instant, Duration)> = BTreeMap::new();
    loop {
        let now = inner.seams.clock.now();
        let mut wait = inner
            .certificates
            .next_refresh()
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
            .unwrap_or(MAINTENANCE_TICK)
            .min(MAINTENANCE_TICK);
        let instant_now = tokio::time::Instant::now();
        if let Some((at, _)) = retry.values().min_by_key(|(at, _)| *at) {
            wait = wait.min(at.saturating_duration_since(instant_now));
        }
        // Due certificates under backoff must not spin the loop.
        if wait.is_zero() && !retry.is_empty() {
            wait = retry
                .values()
                .map(|(at, _)| at.saturating_duration_since(instant_now))
                .min()
                .unwrap_or(RETRY_INITIAL);
        }
        tokio::select! {
            biased;
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        let local = inner.local_identities();
        inner.certificates.retain(&local);
        retry.retain(|id, _| local.contains(id));
        let now = inner.seams.clock.now();
        let instant_now = tokio::time::Instant::now();
        let mut work: BTreeSet<Identity> = local.difference(&known).cloned().collect();
        work.extend(inner.certificates.due(now));
        for identity in work {
            if retry
                .get(&identity)
                .is_some_and(|(at, _)| *at > instant_now)
            {
                continue;
            }
            match inner.certificates.renew(&identity).await {
                Ok(()) => {
                    retry.remove(&identity);
                }
                Err(err) => {
                    let delay = retry
                        .get(&identity)
                        .map(|(_, d)| (*d * 2).min(RETRY_MAX))
                        .unwrap_or(RETRY_INITIAL);
                    tracing::warn!(%identity, %err, retry_in = ?delay, "certificate fetch failed");
                    retry.insert(identity, (tokio::time::Instant::now() + delay, delay));
                }
            }
        }
        known = local;
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
