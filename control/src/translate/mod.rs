//! Pure translations from Kubernetes objects to what the data plane enforces.

pub mod authorization;
pub mod peer_authentication;
pub mod services;
mod snapshot;
pub mod trust_domain_aliases;
pub mod waypoint_config;
pub mod waypoints;
pub mod workloads;

pub use snapshot::snapshot;
