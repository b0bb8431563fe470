//! Pure translations from Kubernetes objects to what the data plane enforces.

pub mod authorization;
pub mod peer_authentication;
