//! The control plane in istiod's role: Kubernetes objects in, xDS and certificates out.
//!
//! So far: the `security.istio.io/v1` types and their translation into what ztunnels enforce.
//! Sources, the store, the xDS server and the CA come with the rest of the control-plane issue.

pub mod ca;
pub mod explain;
pub mod features;
pub mod istiod;
pub mod listener;
pub mod mesh_config;
pub mod snapshot;
pub mod sources;
pub mod store;
pub mod translate;
pub mod types;
pub mod xds;
