//! Applying a Delta xDS response to the ztunnel's state, resource by resource, as upstream
//! does: what decodes and converts is applied, what does not is named in a NACK
//! (`<name>: <reason>; …`), and only accepted resources have their versions remembered, so a
//! reconnect asks again for the rejected ones.

use std::collections::BTreeMap;

use prost::Message;

use super::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use super::proto::google::rpc::Status;
use super::proto::istio::security as security_pb;
use super::proto::istio::workload as workload_pb;
use super::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, AddressResource, ConvertError, address_from_proto,
    authorization_from_proto,
};
use crate::state::{State, StateHandle};

/// Versions of accepted resources, per type URL and name: what a reconnect sends as
/// `initial_resource_versions`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResourceVersions {
    by_type: BTreeMap<String, BTreeMap<String, String>>,
}

impl ResourceVersions {
    /// The versions to announce for `type_url` on a new stream.
    pub fn initial(&self, type_url: &str) -> BTreeMap<String, String> {
        self.by_type.get(type_url).cloned().unwrap_or_default()
    }

    pub(crate) fn accept(&mut self, type_url: &str, name: &str, version: &str) {
        self.by_type
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), version.to_string());
    }

    pub(crate) fn forget(&mut self, type_url: &str, name: &str) {
        if let Some(names) = self.by_type.get_mut(type_url) {
            names.remove(name);
        }
    }
}

enum Decoded {
    Address(AddressResource),
    Authorization(crate::policy::Authorization),
}

fn decode(type_url: &str, resource: &Resource) -> Result<Decoded, ConvertError> {
    let any = resource
        .resource
        .as_ref()
        .ok_or_else(|| ConvertError("resource has no body".into()))?;
    if any.type_url != type_url {
        return Err(ConvertError(format!(
            "body is {} in a {type_url} response",
            any.type_url
        )));
    }
    match type_url {
        ADDRESS_TYPE_URL => {
            let message = workload_pb::Address::decode(&any.value[..])
                .map_err(|e| ConvertError(format!("cannot decode: {e}")))?;
            address_from_proto(message).map(Decoded::Address)
        }
        _ => {
            let message = security_pb::Authorization::decode(&any.value[..])
                .map_err(|e| ConvertError(format!("cannot decode: {e}")))?;
            authorization_from_proto(message).map(Decoded::Authorization)
        }
    }
}

fn remove(state: &mut State, type_url: &str, name: &str) {
    if type_url == AUTHORIZATION_TYPE_URL {
        state.remove_policy(name);
    } else if state.remove_workload(name).is_none() {
        // Not a workload uid: a service key `<namespace>/<hostname>` (a hostname with '/' is
        // no hostname, and is ignored).
        if let Some((_, hostname)) = name.split_once('/')
            && !hostname.contains('/')
        {
            state.remove_service(name);
        }
    }
}

/// Applies `response` to `state` and returns the ACK, or the NACK listing what was rejected.
/// Every change lands in one state update, so watchers see the response whole.
pub fn apply_response(
    state: &StateHandle,
    versions: &mut ResourceVersions,
    response: &DeltaDiscoveryResponse,
) -> DeltaDiscoveryRequest {
    let type_url = response.type_url.as_str();
    let known = type_url == ADDRESS_TYPE_URL || type_url == AUTHORIZATION_TYPE_URL;
    let mut errors = Vec::new();
    if known {
        state.update(|state| {
            for name in &response.removed_resources {
                remove(state, type_url, name);
                versions.forget(type_url, name);
            }
            for resource in &response.resources {
                match decode(type_url, resource) {
                    Ok(Decoded::Address(AddressResource::Workload(w))) => state.insert_workload(*w),
                    Ok(Decoded::Address(AddressResource::Service(s))) => state.insert_service(s),
                    Ok(Decoded::Authorization(p)) => state.insert_policy(p),
                    Err(err) => {
                        versions.forget(type_url, &resource.name);
                        errors.push(format!("{}: {err}", resource.name));
                        continue;
                    }
                }
                versions.accept(type_url, &resource.name, &resource.version);
            }
        });
    }
    let error_detail = (!errors.is_empty()).then(|| Status {
        code: 0,
        message: errors.join("; "),
        details: Vec::new(),
    });
    if let Some(status) = &error_detail {
        tracing::warn!(type_url, nonce = %response.nonce, errors = %status.message, "NACK: some resources were rejected");
    }
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        error_detail,
        ..DeltaDiscoveryRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localconfig::LocalConfig;
    use crate::xds::{authorization_to_proto, service_to_proto, workload_to_proto};

    fn resource(type_url: &str, name: &str, version: &str, body: Vec<u8>) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(crate::xds::proto::google::protobuf::Any {
                type_url: type_url.into(),
                value: body.into(),
            }),
            ..Resource::default()
        }
    }

    const CONFIG: &str = r#"
workloads:
- {uid: "Kubernetes//Pod/shop/web-0", name: web-0, namespace: shop, workloadIps: ["10.0.1.2"],
   protocol: HBONE, services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.1"],
   ports: {80: 8080}}
policies:
- {name: allow-web, namespace: shop, scope: Namespace, action: Allow, dryRun: false, rules: [[]]}
"#;

    #[test]
    fn applies_what_converts_and_nacks_the_rest_by_name() {
        let config = LocalConfig::parse(CONFIG).unwrap();
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let good = workload_to_proto(&config.workloads[0]).encode_to_vec();
        let service = service_to_proto(&config.services[0]).encode_to_vec();
        let mut bad = workload_pb::Workload {
            uid: "bad".into(),
            addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let bad_body = workload_pb::Address {
            r#type: Some(workload_pb::address::Type::Workload(bad.clone())),
        }
        .encode_to_vec();
        bad.tunnel_protocol = 2;
        let legacy = workload_pb::Address {
            r#type: Some(workload_pb::address::Type::Workload(bad)),
        }
        .encode_to_vec();
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n1".into(),
            resources: vec![
                resource(ADDRESS_TYPE_URL, "Kubernetes//Pod/shop/web-0", "v1", good),
                resource(
                    ADDRESS_TYPE_URL,
                    "shop/web.shop.svc.cluster.local",
                    "v1",
                    service,
                ),
                resource(ADDRESS_TYPE_URL, "bad", "v1", bad_body),
                resource(ADDRESS_TYPE_URL, "legacy", "v1", legacy),
                resource(ADDRESS_TYPE_URL, "garbage", "v1", vec![0xff, 0xff, 0xff]),
            ],
            ..Default::default()
        };
        let reply = apply_response(&state, &mut versions, &response);
        assert_eq!(reply.response_nonce, "n1");
        let message = reply.error_detail.unwrap().message;
        assert!(
            message.starts_with(
                "bad: addresses: an address must be 4 or 16 bytes, not 3; legacy: addresses:"
            ),
            "{message}"
        );
        assert!(message.contains("garbage: cannot decode"), "{message}");
        // the good ones applied
        assert!(state.read(|s| s.workload("Kubernetes//Pod/shop/web-0").is_some()));
        assert_eq!(
            state.read(|s| s.endpoints("shop/web.shop.svc.cluster.local").len()),
            1
        );
        // only accepted resources have versions
        let initial = versions.initial(ADDRESS_TYPE_URL);
        assert_eq!(
            initial.keys().collect::<Vec<_>>(),
            [
                "Kubernetes//Pod/shop/web-0",
                "shop/web.shop.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn removals_and_acks() {
        let config = LocalConfig::parse(CONFIG).unwrap();
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let add = DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "a1".into(),
            resources: vec![resource(
                AUTHORIZATION_TYPE_URL,
                "shop/allow-web",
                "1",
                authorization_to_proto(&config.policies[0]).encode_to_vec(),
            )],
            ..Default::default()
        };
        let ack = apply_response(&state, &mut versions, &add);
        assert!(ack.error_detail.is_none());
        assert_eq!(state.read(|s| s.policies().count()), 1);
        let remove = DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce: "a2".into(),
            removed_resources: vec!["shop/allow-web".into()],
            ..Default::default()
        };
        apply_response(&state, &mut versions, &remove);
        assert_eq!(state.read(|s| s.policies().count()), 0);
        assert!(versions.initial(AUTHORIZATION_TYPE_URL).is_empty());

        // Address removals: a workload uid, else a service key
        let mut s = State::default();
        config.apply_to(&mut s);
        let state = StateHandle::new(s);
        let remove = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "r".into(),
            removed_resources: vec![
                "Kubernetes//Pod/shop/web-0".into(),
                "shop/web.shop.svc.cluster.local".into(),
            ],
            ..Default::default()
        };
        apply_response(&state, &mut versions, &remove);
        assert_eq!(
            state.read(|s| (s.workloads().count(), s.services().count())),
            (0, 0)
        );
    }

    #[test]
    fn unknown_type_urls_are_acked_without_touching_state() {
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let changes = state.subscribe();
        let response = DeltaDiscoveryResponse {
            type_url: "type.googleapis.com/something.Else".into(),
            nonce: "x".into(),
            resources: vec![resource(
                "type.googleapis.com/something.Else",
                "a",
                "1",
                vec![1],
            )],
            ..Default::default()
        };
        let ack = apply_response(&state, &mut versions, &response);
        assert!(ack.error_detail.is_none());
        assert_eq!(ack.response_nonce, "x");
        assert!(!changes.has_changed().unwrap());
    }

    #[test]
    fn a_body_of_the_wrong_type_is_rejected() {
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "w".into(),
            resources: vec![resource(AUTHORIZATION_TYPE_URL, "p", "1", Vec::new())],
            ..Default::default()
        };
        let nack = apply_response(&state, &mut versions, &response);
        assert!(
            nack.error_detail
                .unwrap()
                .message
                .starts_with("p: body is type.googleapis.com/istio.security.Authorization")
        );
    }
}
