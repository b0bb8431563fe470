//! Pure translations from Kubernetes objects to what the data plane enforces.

pub mod authorization;
