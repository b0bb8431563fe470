//! istiod and ztunnels together: xDS, the CA API, tokens, on real loopback sockets.

mod ca;
mod common;
mod end_to_end;
mod listeners;
mod processes;
mod root_rotation;
mod simulated;
mod xds_stream;
