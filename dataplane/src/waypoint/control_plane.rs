//! The waypoint as a client of istiod: one Delta ADS stream carrying every address (to
//! resolve backends to endpoints) and the waypoint's own `WaypointConfig`, by name. A
//! configuration that does not decode is NACKed and the last good one kept.

use std::sync::Arc;

use prost::Message;

use super::{Inner, configure};
use crate::xds::proto::ambient::waypoint::WaypointConfig;
use crate::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use crate::xds::proto::google::rpc::Status;
use crate::xds::{ADDRESS_TYPE_URL, ResourceVersions, WAYPOINT_TYPE_URL, apply_response};
use crate::ztunnel::{Subscriber, xds_node};

pub(crate) struct WaypointSubscriber {
    pub(crate) inner: Arc<Inner>,
}

impl WaypointSubscriber {
    fn apply_config(
        &self,
        versions: &mut ResourceVersions,
        response: &DeltaDiscoveryResponse,
    ) -> Option<Status> {
        let name = self.inner.config.resource_name();
        let mut errors = Vec::new();
        for removed in &response.removed_resources {
            versions.forget(WAYPOINT_TYPE_URL, removed);
            if *removed == name {
                tracing::warn!(waypoint = %name, "istiod has no configuration for this waypoint");
                configure(&self.inner, WaypointConfig::default());
            }
        }
        for resource in &response.resources {
            let decoded = match &resource.resource {
                Some(any) if any.type_url == WAYPOINT_TYPE_URL => {
                    WaypointConfig::decode(&any.value[..])
                        .map_err(|e| format!("cannot decode: {e}"))
                }
                Some(any) => Err(format!(
                    "body is {} in a {WAYPOINT_TYPE_URL} response",
                    any.type_url
                )),
                None => Err("resource has no body".to_string()),
            };
            match decoded {
                Ok(config) if resource.name == name => {
                    configure(&self.inner, config);
                    versions.accept(WAYPOINT_TYPE_URL, &resource.name, &resource.version);
                }
                // Another waypoint's configuration (a wildcard server): not ours to apply.
                Ok(_) => versions.accept(WAYPOINT_TYPE_URL, &resource.name, &resource.version),
                Err(err) => {
                    versions.forget(WAYPOINT_TYPE_URL, &resource.name);
                    errors.push(format!("{}: {err}", resource.name));
                }
            }
        }
        (!errors.is_empty()).then(|| Status {
            code: 0,
            message: errors.join("; "),
            details: Vec::new(),
        })
    }
}

impl Subscriber for WaypointSubscriber {
    fn node(&self) -> Node {
        xds_node(&self.inner.config.mesh, "waypoint")
    }

    fn subscriptions(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            (ADDRESS_TYPE_URL, Vec::new()),
            (WAYPOINT_TYPE_URL, vec![self.inner.config.resource_name()]),
        ]
    }

    fn apply(
        &self,
        versions: &mut ResourceVersions,
        response: &DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest {
        if response.type_url != WAYPOINT_TYPE_URL {
            return apply_response(&self.inner.state, versions, response);
        }
        let error_detail = self.apply_config(versions, response);
        if let Some(status) = &error_detail {
            tracing::warn!(nonce = %response.nonce, errors = %status.message, "NACK: waypoint configuration rejected");
        }
        DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..DeltaDiscoveryRequest::default()
        }
    }
}
