//! The control plane in istiod's role: Kubernetes objects in, xDS and certificates out.
//!
//! Empty until the control-plane issue: the ztunnel runs from local config and a local CA.
