//! The ztunnel as a client of its control plane: the gRPC channel to istiod (TLS checked
//! against the configured root, a bearer token and the cluster id on every call), the Delta
//! ADS client that keeps the state current, and the CA client that issues certificates.

mod ca_client;
mod channel;
mod xds_client;

pub use ca_client::CaClient;
pub use channel::{AuthToken, ControlPlaneClient, ControlPlaneError, Target};
pub(crate) use xds_client::node;
pub use xds_client::{Subscriber, run_subscriber, run_xds_client};
