//! The xDS server: Delta ADS for `istio.workload.Address` and `istio.security.Authorization`,
//! as upstream istiod serves ztunnels (wire facts §1), and our own
//! `ambient.waypoint.WaypointConfig` for waypoints that subscribe to it.

mod caller;
#[cfg(test)]
mod fuzz;
mod held;
mod resources;
mod server;
mod stream;

pub use caller::Caller;
pub use resources::{Changes, Published, PublishedResources, SharedResources, TYPE_URLS, resource};
pub use server::{AdsService, XdsStats};
pub use stream::{MAX_CLIENT_TEXT, MAX_RESPONSE_BYTES, Received, XdsStream, capped};
