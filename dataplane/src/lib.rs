//! The mesh data plane: ztunnel (node L4 proxy) and the waypoint (L7 proxy).
//!
//! Everything that touches the outside world goes through [`seams`], so the binaries and the
//! simulator run the same functions.

#[cfg(test)]
pub(crate) mod fuzzing;
pub mod hbone;
pub mod identity;
mod listeners;
pub mod localconfig;
pub mod logging;
pub mod memory;
pub mod node_agent;
pub mod policy;
pub mod process;
pub mod seams;
pub mod state;
pub mod waypoint;
pub mod xds;
pub mod yaml_shape;
pub mod zds;
pub mod ztunnel;

pub use listeners::{
    AcceptBackoff, Admitted, DescriptorPlan, IdleLimit, ListenerCap, REFUSAL_LOG_INTERVAL,
};
