//! The Kubernetes kinds the control plane reads that are not in `k8s-openapi`.

pub mod security;
