//! Integration tests for the ztunnel on real loopback sockets, as processes, and for bad input.

mod bad_input;
mod caps;
mod common;
mod hbone;
mod inpod;
mod loopback;
mod processes;
mod self_defence;
mod simulated;
mod waypoint;
