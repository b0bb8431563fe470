//! Order-independent fingerprints of xDS state, so the convergence check can compare what
//! each ztunnel holds with what istiod's translation of the store publishes.

use control::snapshot::Snapshot;
use dataplane::state::State;

use crate::trace::fnv1a64;

/// Order-independent fingerprint of what a ztunnel holds (or istiod publishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Fingerprint {
    pub(super) workloads: usize,
    pub(super) services: usize,
    pub(super) policies: usize,
    sum: u64,
}

fn fingerprint<'a>(
    workloads: impl Iterator<Item = &'a dataplane::state::Workload>,
    services: impl Iterator<Item = &'a dataplane::state::Service>,
    policies: impl Iterator<Item = &'a dataplane::policy::Authorization>,
) -> Fingerprint {
    let mut f = Fingerprint::default();
    for w in workloads {
        f.workloads += 1;
        let key = format!(
            "w {} {:?} {:?} {:?} {:?}",
            w.uid, w.workload_ips, w.protocol, w.authorization_policies, w.services
        );
        f.sum = f.sum.wrapping_add(fnv1a64(key.as_bytes()));
    }
    for s in services {
        f.services += 1;
        f.sum = f
            .sum
            .wrapping_add(fnv1a64(format!("s {}", s.key()).as_bytes()));
    }
    for p in policies {
        f.policies += 1;
        let key = format!("p {} {:?} {}", p.key(), p.action, p.rules.len());
        f.sum = f.sum.wrapping_add(fnv1a64(key.as_bytes()));
    }
    f
}

pub(super) fn snapshot_fingerprint(s: &Snapshot) -> Fingerprint {
    fingerprint(
        s.workloads.values(),
        s.services.values(),
        s.policies.values(),
    )
}

pub(super) fn state_fingerprint(s: &State) -> Fingerprint {
    fingerprint(
        s.workloads().map(|w| &**w),
        s.services().map(|w| &**w),
        s.policies().map(|w| &**w),
    )
}
