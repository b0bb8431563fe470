//! The certificate authority: signs workload CSRs as the identity the caller may have, answers
//! `[leaf, trust bundle]`, and rotates its root with an overlap.
//!
//! Rotation runs in three phases so that no connection fails on the way:
//! 1. [`CertificateAuthority::begin_rotation`]: a new root joins the trust bundle but does not
//!    sign yet; every certificate renewed from now on trusts both roots.
//! 2. After `activate_after` (at least one certificate lifetime, so every live certificate has
//!    been renewed with the two-root bundle) the new root signs; the old one stays trusted.
//! 3. After `overlap` more (every old-root leaf has expired) the old root leaves the bundle.

use std::time::{Duration, SystemTime};

use dataplane::identity::{Identity, LocalCa, LocalCaError};

/// istiod's default workload certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a caller may ask for (istiod's 90 days).
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("requested lifetime {requested} s exceeds the maximum {max} s")]
    TtlTooLong { requested: u64, max: u64 },
    #[error("requested lifetime is negative: {0} s")]
    NegativeTtl(i64),
    #[error("CSR rejected: {0}")]
    Csr(LocalCaError),
}

struct Retiring {
    root_pem: String,
    retire_at: SystemTime,
}

struct Pending {
    ca: LocalCa,
    activate_at: SystemTime,
    overlap: Duration,
}

/// The signing root, roots on their way in and out, and the issuing policy.
pub struct CertificateAuthority {
    active: LocalCa,
    pending: Option<Pending>,
    retiring: Vec<Retiring>,
    default_ttl: Duration,
    trust_domain: String,
}

impl CertificateAuthority {
    pub fn new(root: LocalCa, trust_domain: &str, default_ttl: Duration) -> Self {
        CertificateAuthority {
            active: root,
            pending: None,
            retiring: Vec::new(),
            default_ttl,
            trust_domain: trust_domain.to_string(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root that signs today.
    pub fn active(&self) -> &LocalCa {
        &self.active
    }

    /// Every root a workload must trust now, concatenated: the CA API's last element.
    pub fn trust_bundle(&self) -> String {
        let mut bundle = self.active.root_pem();
        if let Some(p) = &self.pending {
            bundle.push_str(&p.ca.root_pem());
        }
        for r in &self.retiring {
            bundle.push_str(&r.root_pem);
        }
        bundle
    }

    /// Starts a rotation to `next` (phase 1 above).
    pub fn begin_rotation(
        &mut self,
        next: LocalCa,
        now: SystemTime,
        activate_after: Duration,
        overlap: Duration,
    ) {
        self.pending = Some(Pending {
            ca: next,
            activate_at: now + activate_after,
            overlap,
        });
    }

    /// Moves the rotation along at `now`; true when the signing root changed (so callers can
    /// persist it).
    pub fn tick(&mut self, now: SystemTime) -> bool {
        let mut changed = false;
        if self.pending.as_ref().is_some_and(|p| now >= p.activate_at)
            && let Some(p) = self.pending.take()
        {
            let old = std::mem::replace(&mut self.active, p.ca);
            self.retiring.push(Retiring {
                root_pem: old.root_pem(),
                retire_at: now + p.overlap,
            });
            tracing::info!("root rotation: the new root now signs; the old one stays trusted");
            changed = true;
        }
        let before = self.retiring.len();
        self.retiring.retain(|r| now < r.retire_at);
        if self.retiring.len() != before {
            tracing::info!("root rotation: the old root left the trust bundle");
        }
        changed
    }

    /// When [`CertificateAuthority::tick`] next has something to do.
    pub fn next_transition(&self) -> Option<SystemTime> {
        let pending = self.pending.as_ref().map(|p| p.activate_at);
        let retiring = self.retiring.iter().map(|r| r.retire_at).min();
        pending.into_iter().chain(retiring).min()
    }

    /// The lifetime to issue for a request of `requested` seconds (0: the default).
    pub fn lifetime(&self, requested: i64) -> Result<Duration, SignError> {
        if requested < 0 {
            return Err(SignError::NegativeTtl(requested));
        }
        let requested = requested.unsigned_abs();
        if requested == 0 {
            return Ok(self.default_ttl);
        }
        if requested > MAX_TTL.as_secs() {
            return Err(SignError::TtlTooLong {
                requested,
                max: MAX_TTL.as_secs(),
            });
        }
        Ok(Duration::from_secs(requested))
    }

    /// Signs `csr_pem` as `identity`: `[leaf, trust bundle]`.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        requested_ttl: i64,
        now: SystemTime,
    ) -> Result<Vec<String>, SignError> {
        let ttl = self.lifetime(requested_ttl)?;
        let mut chain = self
            .active
            .sign_csr(csr_pem, identity, ttl, now)
            .map_err(SignError::Csr)?;
        if let Some(last) = chain.last_mut() {
            *last = self.trust_bundle();
        }
        Ok(chain)
    }
}
