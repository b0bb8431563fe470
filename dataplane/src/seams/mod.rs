//! The seams through which every outside effect passes: network, wall clock and entropy.
//!
//! The binaries hand in the real implementations; the simulator hands in turmoil-backed ones.
//! Production code never reaches past these to the OS, which is what lets one code path run
//! on a real kernel and, deterministically, inside the simulator.

pub mod clock;
pub mod entropy;
pub mod network;

use std::sync::Arc;

pub use clock::{Clock, ManualClock, SimClock, SystemClock};
pub use entropy::Entropy;
pub use network::{Accepted, BoxStream, Listener, Network, RealNetwork, SimNetwork};

/// The three seams, bundled so an entry function takes one value.
#[derive(Clone)]
pub struct Seams {
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Entropy,
}

impl Seams {
    /// Real sockets, the system clock and entropy seeded from `seed`.
    pub fn real(seed: u64) -> Self {
        Seams {
            network: Arc::new(RealNetwork::default()),
            clock: Arc::new(SystemClock),
            entropy: Entropy::seeded(seed),
        }
    }
}
