//! The control plane in istiod's role: Kubernetes objects in, xDS and certificates out.
//!
//! The object model (`object`) sits below everything: sources (YAML files, a live cluster)
//! read objects and feed them to the store; the store keeps and schedules them; translation
//! turns the store into a snapshot; the xDS server and the CA serve it.

pub mod ca;
pub mod crds;
pub mod explain;
pub mod features;
// The fuzz targets' shared helpers: test code, so included by path rather than exported.
#[cfg(test)]
#[path = "../../dataplane/src/fuzzing.rs"]
pub(crate) mod fuzzing;
pub mod istiod;
pub mod listener;
pub mod mesh_config;
pub mod object;
pub mod snapshot;
pub mod sources;
pub mod store;
pub mod translate;
pub mod types;
pub mod xds;
