//! What a listener may hold at once, so that a flood on one port cannot take the descriptors
//! every other port (and the control path) needs.
//!
//! A process's descriptor limit is shared out by a [`DescriptorPlan`]: a reserve nobody's
//! traffic may touch (connections to istiod for xDS and certificates, files, the runtime's
//! own), a small fixed share for each HTTP endpoint (readiness, metrics, admin), and the rest
//! for traffic. Traffic is bounded twice: each traffic listener holds at most half of the
//! traffic share, so a flood on one port leaves room for the others; and every traffic
//! connection, together with the upstream connection it opens, draws from one
//! [`TrafficBudget`], so all ports flooded at once still leave the reserve whole. A
//! connection over its listener's cap or the budget is closed at once rather than left
//! waiting: the client learns immediately, and nothing is held on its behalf.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A process's descriptors, shared out between its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The limit the plan was made from (the process's `RLIMIT_NOFILE`).
    pub limit: u64,
    /// Never used by listeners' connections: what the control path and the process need.
    pub reserve: usize,
    /// Connections each of readiness and metrics may hold.
    pub endpoint: usize,
    /// Connections admin may hold (it is for the node's own operator).
    pub admin: usize,
    /// Descriptors all traffic together may hold: accepted connections and what they open.
    pub traffic: usize,
    /// Connections one traffic listener may hold: half the traffic share, at two descriptors
    /// each (the connection and its upstream).
    pub per_traffic_listener: usize,
}

impl DescriptorPlan {
    /// The limit the simulator and in-process tests plan with: a typical container's.
    pub const DEFAULT_LIMIT: u64 = 65_536;

    /// Shares out `limit` descriptors: an eighth (at least 64) kept back, a share for each
    /// HTTP endpoint that grows with the limit up to 128, and the rest for traffic.
    pub fn for_limit(limit: u64) -> Self {
        let total = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 30);
        let reserve = (total / 8).max(64).min(total);
        let rest = total - reserve;
        let endpoint = (rest / 32).clamp(2, 128);
        let admin = (endpoint / 2).max(1);
        let traffic = rest.saturating_sub(2 * endpoint + admin);
        DescriptorPlan {
            limit,
            reserve,
            endpoint,
            admin,
            traffic,
            per_traffic_listener: traffic / 4,
        }
    }
}

impl Default for DescriptorPlan {
    fn default() -> Self {
        DescriptorPlan::for_limit(Self::DEFAULT_LIMIT)
    }
}

/// The descriptors all traffic of one process draws from: a connection takes two (itself
/// and the upstream it opens), and each further tunnel on an HBONE connection one more.
#[derive(Debug, Clone)]
pub struct TrafficBudget {
    descriptors: Arc<Semaphore>,
}

impl TrafficBudget {
    pub fn new(descriptors: usize) -> Self {
        TrafficBudget {
            descriptors: Arc::new(Semaphore::new(descriptors)),
        }
    }

    /// `n` descriptors, held until the permit is dropped; none when the budget is spent.
    pub fn take(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        self.descriptors.clone().try_acquire_many_owned(n).ok()
    }

    /// Descriptors not held right now.
    pub fn available(&self) -> usize {
        self.descriptors.available_permits()
    }
}

/// One listener's cap: how many connections it holds at once and, for a traffic listener,
/// what each one draws from the process's [`TrafficBudget`].
#[derive(Debug, Clone)]
pub struct ListenerCap {
    connections: Arc<Semaphore>,
    limit: usize,
    budget: Option<(TrafficBudget, u32)>,
    refused: Arc<AtomicU64>,
}

/// What an admitted connection holds until it ends.
#[derive(Debug)]
pub struct Admitted {
    _connection: OwnedSemaphorePermit,
    _descriptors: Option<OwnedSemaphorePermit>,
}

impl ListenerCap {
    /// At most `limit` connections at once, drawing nothing from the traffic budget: the
    /// HTTP endpoints and istiod's ports, which open nothing per connection.
    pub fn new(limit: usize) -> Self {
        ListenerCap {
            connections: Arc::new(Semaphore::new(limit)),
            limit,
            budget: None,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// At most `limit` connections at once, each drawing `descriptors` from `budget`.
    pub(crate) fn traffic(limit: usize, budget: &TrafficBudget, descriptors: u32) -> Self {
        ListenerCap {
            budget: Some((budget.clone(), descriptors)),
            ..ListenerCap::new(limit)
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Room for one more connection, or `None` (counted as refused) when the listener is
    /// at its cap or traffic's budget is spent.
    pub fn admit(&self) -> Option<Admitted> {
        let admitted = self
            .connections
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|connection| {
                let descriptors = match &self.budget {
                    Some((budget, n)) => Some(budget.take(*n)?),
                    None => None,
                };
                Some(Admitted {
                    _connection: connection,
                    _descriptors: descriptors,
                })
            });
        if admitted.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Connections refused since the last call: what a rate-limited log line reports.
    pub fn take_refused(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }
}

/// How often a listener at its cap says so: a flood must not become a flood of log lines.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_keeps_its_reserve_and_never_overspends() {
        // Below a few hundred descriptors there is nothing to share out; from there on:
        for limit in [256, 1024, 4096, 65_536, 524_288, 1 << 20, u64::MAX] {
            let plan = DescriptorPlan::for_limit(limit);
            let total = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 30);
            assert!(plan.reserve >= 64, "{limit}: {plan:?}");
            // Everything every listener can hold at once fits beside the reserve.
            assert!(
                plan.reserve + 2 * plan.endpoint + plan.admin + plan.traffic <= total,
                "{limit}: {plan:?}"
            );
            // Two full traffic listeners (two descriptors per connection) fit the share.
            assert!(4 * plan.per_traffic_listener <= plan.traffic, "{plan:?}");
        }
        let plan = DescriptorPlan::for_limit(1024);
        assert_eq!(
            (plan.reserve, plan.endpoint, plan.admin, plan.traffic),
            (128, 28, 14, 826)
        );
        assert_eq!(plan.per_traffic_listener, 206);
    }

    #[test]
    fn a_listener_refuses_past_its_cap_and_takes_again_when_one_ends() {
        let cap = ListenerCap::new(2);
        let a = cap.admit().unwrap();
        let _b = cap.admit().unwrap();
        assert!(cap.admit().is_none());
        assert!(cap.admit().is_none());
        assert_eq!(cap.take_refused(), 2);
        assert_eq!(cap.take_refused(), 0);
        drop(a);
        assert!(cap.admit().is_some());
    }

    #[test]
    fn traffic_listeners_share_one_budget() {
        let budget = TrafficBudget::new(5);
        let outbound = ListenerCap::traffic(10, &budget, 2);
        let inbound = ListenerCap::traffic(10, &budget, 1);
        let _o1 = outbound.admit().unwrap();
        let _o2 = outbound.admit().unwrap();
        // One descriptor left: not enough for a connection and its upstream...
        assert!(outbound.admit().is_none());
        // ...but enough for an HBONE connection, whose tunnels draw on their own.
        let i1 = inbound.admit().unwrap();
        assert_eq!(budget.available(), 0);
        assert!(budget.take(1).is_none());
        drop(i1);
        assert!(budget.take(1).is_some());
    }
}
