//! The control plane's integration tests, one binary (link time matters on two cores).

mod common;
mod example_cluster;
mod istiod_command;
mod layering;
mod policies;
mod policy_validation;
mod schedule;
mod services;
mod sources;
mod translate_authorization;
mod translate_peer_authentication;
mod trust_domain_aliases;
mod waypoint_config;
mod waypoint_deployment;
mod waypoints;
mod workloads;
