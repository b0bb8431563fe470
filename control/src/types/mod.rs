//! The Kubernetes kinds the control plane reads that are not in `k8s-openapi` or
//! `gateway-api`: upstream Istio's security kinds, and our own FaultInjection.

pub mod fault;
pub mod security;
