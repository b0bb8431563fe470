//! The wire types ambient speaks with its control plane — Delta ADS, `istio.workload.Address`,
//! `istio.security.Authorization`, the CA API, our own `ambient.waypoint.WaypointConfig` — and
//! their conversion to and from the model.

mod apply;
mod authorization;
#[cfg(test)]
mod fuzz;
mod workload;

pub use apply::{ResourceVersions, apply_response};
pub use authorization::{authorization_from_proto, authorization_to_proto};
pub use workload::{AddressResource, address_from_proto, service_to_proto, workload_to_proto};

/// Why a resource cannot be applied; its text becomes the NACK's `<name>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

/// Generated protobuf and gRPC types, one module per protobuf package.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub mod istio {
        pub mod workload {
            tonic::include_proto!("istio.workload");
        }
        pub mod security {
            tonic::include_proto!("istio.security");
        }
        pub mod v1 {
            pub mod auth {
                tonic::include_proto!("istio.v1.auth");
            }
        }
    }
    pub mod envoy {
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.discovery.v3");
                }
            }
        }
    }
    pub mod ambient {
        pub mod waypoint {
            tonic::include_proto!("ambient.waypoint");
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
        /// `Any` alone (its `value` as shared `Bytes`); the other well-known types are
        /// prost-types'.
        pub mod protobuf {
            tonic::include_proto!("google.protobuf");
        }
    }
}

/// The Address resource type URL.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// The Authorization resource type URL.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// The waypoint L7 configuration type URL: our own type, served only to streams that
/// subscribe to it (waypoints); ztunnels never do.
pub const WAYPOINT_TYPE_URL: &str = "type.googleapis.com/ambient.waypoint.WaypointConfig";
