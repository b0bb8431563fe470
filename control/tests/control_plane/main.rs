//! istiod and ztunnels together: xDS, the CA API, tokens, on real loopback sockets; and
//! istiod `--kube` against a real API server (`kube`).

mod ca;
mod common;
mod end_to_end;
mod kube;
mod listeners;
mod processes;
mod root_rotation;
mod simulated;
mod xds_stream;
