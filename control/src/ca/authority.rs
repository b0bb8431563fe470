//! The certificate authority: signs workload CSRs as the identity the caller may have, answers
//! `[leaf, trust bundle]`, and rotates its root with an overlap.
//!
//! Rotation runs in three phases so that no connection fails on the way:
//! 1. [`CertificateAuthority::begin_rotation`]: a new root joins the trust bundle but does not
//!    sign yet; every certificate renewed from now on trusts both roots.
//! 2. After `activate_after` (at least one certificate lifetime, so every live certificate has
//!    been renewed with the two-root bundle) the new root signs; the old one stays trusted.
//! 3. After `overlap` more (every old-root leaf has expired) the old root leaves the bundle.
//!
//! The same rotation can be handed in whole, as a [`PlannedRoot`] with both times
//! ([`CertificateAuthority::adopt`]): what `istiod rotate-root` keeps in the state directory,
//! so that a restart mid-rotation comes back in the same phase.

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

/// A root on its way in: trusted from the start, signing from `activate_at`, and the root it
/// replaces trusted until `retire_at`.
pub struct PlannedRoot {
    pub next: LocalCa,
    pub activate_at: SystemTime,
    pub retire_at: SystemTime,
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

    /// Takes the roots from outside (the state directory): `base` is the root before the
    /// rotation, `plan` the one replacing it, each in the role its times give it at `now`.
    /// Whatever rotation was running in memory is replaced.
    pub fn adopt(&mut self, base: LocalCa, plan: Option<PlannedRoot>, now: SystemTime) {
        self.pending = None;
        self.retiring.clear();
        match plan {
            None => self.active = base,
            Some(plan) if now < plan.activate_at => {
                self.active = base;
                self.pending = Some(Pending {
                    ca: plan.next,
                    activate_at: plan.activate_at,
                    overlap: plan
                        .retire_at
                        .duration_since(plan.activate_at)
                        .unwrap_or_default(),
                });
            }
            Some(plan) => {
                self.active = plan.next;
                if now < plan.retire_at {
                    self.retiring.push(Retiring {
                        root_pem: base.root_pem(),
                        retire_at: plan.retire_at,
                    });
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn roots_in(bundle: &str) -> usize {
        bundle.matches("BEGIN CERTIFICATE").count()
    }

    #[test]
    fn an_adopted_rotation_takes_the_phase_its_times_give_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let fresh = || LocalCa::generate("cluster.local", t0).unwrap();
        let copy = |ca: &LocalCa| LocalCa::from_pem(&ca.root_pem(), ca.key_pem()).unwrap();
        let base = fresh();
        let next = fresh();
        let plan = || PlannedRoot {
            next: copy(&next),
            activate_at: t0 + HOUR,
            retire_at: t0 + 2 * HOUR,
        };
        let mut ca = CertificateAuthority::new(copy(&base), "cluster.local", DEFAULT_TTL);

        // Before activation: the base signs, both are trusted, and ticking activates on time.
        ca.adopt(copy(&base), Some(plan()), t0);
        assert_eq!(ca.active().root(), base.root());
        assert_eq!(roots_in(&ca.trust_bundle()), 2);
        assert_eq!(ca.next_transition(), Some(t0 + HOUR));
        assert!(ca.tick(t0 + HOUR));
        assert_eq!(ca.active().root(), next.root());
        assert_eq!(ca.next_transition(), Some(t0 + 2 * HOUR));

        // Adopted between the times: the next root signs, the base is trusted until retired.
        ca.adopt(copy(&base), Some(plan()), t0 + HOUR + HOUR / 2);
        assert_eq!(ca.active().root(), next.root());
        assert!(ca.trust_bundle().contains(&base.root_pem()));
        ca.tick(t0 + 2 * HOUR);
        assert_eq!(ca.trust_bundle(), next.root_pem());

        // Adopted after both: the next root alone; and no rotation at all: the base alone.
        ca.adopt(copy(&base), Some(plan()), t0 + 3 * HOUR);
        assert_eq!(ca.trust_bundle(), next.root_pem());
        ca.adopt(copy(&base), None, t0 + 3 * HOUR);
        assert_eq!(ca.trust_bundle(), base.root_pem());
        assert_eq!(ca.next_transition(), None);
    }
}
