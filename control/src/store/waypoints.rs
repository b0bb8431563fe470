//! istiod's gateway deployment controller, for waypoints, played by the store when there is no
//! cluster. Upstream, a Gateway of class `istio-waypoint` makes istiod create a ServiceAccount,
//! a Deployment and a Service named after the Gateway; nothing else in file mode would, so the
//! store derives them here and they are scheduled, numbered and translated like any other.
//!
//! What is generated follows upstream's `waypoint.yaml` template and `extractServicePorts`:
//!
//! - the pods are labelled `gateway.networking.k8s.io/gateway-name` (the label translation
//!   recognises a waypoint's own pods by, and the Service's selector), and
//!   `istio.io/dataplane-mode: none`: ztunnel does not capture a waypoint, it speaks HBONE
//!   itself;
//! - the service account is the Gateway's name (or its `gateway.istio.io/service-account`
//!   annotation), so the waypoint's identity is `spiffe://<td>/ns/<ns>/sa/<gateway>`;
//! - the Service's ports are `status-port` 15021, then one per listener port, named after the
//!   listener, with the listener's protocol lower-cased as `appProtocol` (`mesh` 15008 `hbone`
//!   for the standard waypoint listener): the 15008 entry is what ztunnel needs to route to
//!   the waypoint (wire facts §5);
//! - the Gateway's infrastructure labels and annotations (`spec.infrastructure`, else the
//!   Gateway's own metadata, as upstream copies them by default) are carried over.
//!
//! Gateways with addresses other than one IP are not managed (upstream assumes they point at a
//! deployment of their own). The `gateway.istio.io/name-override` annotation is not honoured:
//! translation addresses a waypoint by `<gateway>.<ns>.svc`, so a renamed Service would not be
//! found.
//!
//! Generated objects are a pure function of the declared ones: two equal sets of manifests give
//! the same objects, so the scheduler numbers pods and services exactly as if a user had
//! written these manifests.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::object::{Kind, Object, ObjectKey};
use crate::translate::waypoints::{GATEWAY_NAME, WAYPOINT_CLASS, is_waypoint};

/// Label naming the class of the Gateway a generated object belongs to.
pub const GATEWAY_CLASS_NAME: &str = "gateway.networking.k8s.io/gateway-class-name";
/// Istio's older label for a gateway's own pods; upstream still sets it and tools select on it.
pub const ISTIO_GATEWAY_NAME: &str = "istio.io/gateway-name";
/// Label marking objects istiod's gateway controller manages.
pub const MANAGED: &str = "gateway.istio.io/managed";
/// The value of [`MANAGED`] for waypoints (the mesh controller's).
pub const MESH_CONTROLLER: &str = "istio.io-mesh-controller";
/// Gateway annotation naming the service account to run the waypoint as.
pub const SERVICE_ACCOUNT_OVERRIDE: &str = "gateway.istio.io/service-account";
/// The waypoint's health port (`status-port`), always the Service's first port.
pub const STATUS_PORT: i32 = 15021;

/// Annotations upstream does not copy from the Gateway: they are instructions to istiod or
/// kubectl bookkeeping, not metadata for the generated objects.
const NOT_COPIED: [&str; 4] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "gateway.istio.io/name-override",
    SERVICE_ACCOUNT_OVERRIDE,
    "gateway.istio.io/controller-version",
];

/// The objects istiod would create for the waypoint Gateways among `declared`, leaving out any
/// whose `(kind, namespace, name)` is declared: a user's own Deployment, Service or
/// ServiceAccount of that name is the one that counts, as it is upstream where users customise
/// a waypoint that way.
pub(super) fn generate(declared: &BTreeMap<ObjectKey, Object>) -> BTreeMap<ObjectKey, Object> {
    let mut generated = BTreeMap::new();
    for (_, object) in super::kind_range(declared, Kind::Gateway) {
        let Object::Gateway(gateway) = object else {
            continue;
        };
        if !is_waypoint(gateway) || !managed(gateway) {
            continue;
        }
        let waypoint = Waypoint::new(gateway);
        for object in [
            Object::ServiceAccount(waypoint.service_account()),
            Object::Service(waypoint.service()),
            Object::Deployment(waypoint.deployment()),
        ] {
            let key = object.key();
            if !declared.contains_key(&key) {
                // Two Gateways may share a service account by annotation: the first (in name
                // order) makes it.
                generated.entry(key).or_insert(object);
            }
        }
    }
    generated
}

/// Whether istiod deploys this Gateway: no addresses, or a single IP one. Any other address
/// names an existing deployment the user runs themselves.
pub(crate) fn managed(gateway: &Gateway) -> bool {
    match gateway.spec.addresses.as_deref().unwrap_or_default() {
        [] => true,
        [one] => one.r#type.as_deref().is_none_or(|t| t == "IPAddress"),
        _ => false,
    }
}

/// One waypoint Gateway and the names and metadata its objects share.
struct Waypoint<'a> {
    gateway: &'a Gateway,
    namespace: String,
    name: String,
    service_account: String,
    /// Infrastructure labels and annotations, with the gateway labels added.
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl<'a> Waypoint<'a> {
    fn new(gateway: &'a Gateway) -> Self {
        let namespace = gateway.metadata.namespace.clone().unwrap_or_default();
        let name = gateway.metadata.name.clone().unwrap_or_default();
        let gateway_annotations = gateway.metadata.annotations.as_ref();
        let service_account = gateway_annotations
            .and_then(|a| a.get(SERVICE_ACCOUNT_OVERRIDE))
            .filter(|sa| !sa.is_empty())
            .cloned()
            .unwrap_or_else(|| name.clone());
        let infrastructure = gateway.spec.infrastructure.as_ref();
        let mut labels: BTreeMap<String, String> =
            match infrastructure.and_then(|i| i.labels.as_ref()) {
                // The Gateway API reserves its own prefix: a user may not set those this way.
                Some(labels) => labels
                    .iter()
                    .filter(|(k, _)| !k.starts_with("gateway.networking.k8s.io/"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => gateway.metadata.labels.clone().unwrap_or_default(),
            };
        labels.insert(GATEWAY_NAME.into(), name.clone());
        labels.insert(GATEWAY_CLASS_NAME.into(), WAYPOINT_CLASS.into());
        labels.insert(ISTIO_GATEWAY_NAME.into(), name.clone());
        let annotations = infrastructure
            .and_then(|i| i.annotations.as_ref())
            .or(gateway_annotations)
            .into_iter()
            .flatten()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Waypoint {
            gateway,
            namespace,
            name,
            service_account,
            labels,
            annotations,
        }
    }

    fn metadata(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            // Deleting the Gateway deletes these, as Kubernetes' garbage collector would.
            owner_references: Some(vec![OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "Gateway".into(),
                name: self.name.clone(),
                uid: self.gateway.metadata.uid.clone().unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(GATEWAY_NAME.to_string(), self.name.clone())])
    }

    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.metadata(
                &self.service_account,
                self.labels.clone(),
                self.annotations.clone(),
            ),
            ..ServiceAccount::default()
        }
    }

    fn service(&self) -> Service {
        let mut annotations = BTreeMap::from([(
            "networking.istio.io/traffic-distribution".to_string(),
            "PreferClose".to_string(),
        )]);
        annotations.extend(self.annotations.clone());
        Service {
            metadata: self.metadata(&self.name, self.labels.clone(), annotations),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ip_family_policy: Some("PreferDualStack".into()),
                ports: Some(service_ports(self.gateway)),
                selector: Some(self.selector()),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn deployment(&self) -> Deployment {
        let mut labels = self.labels.clone();
        labels.insert(MANAGED.into(), MESH_CONTROLLER.into());
        // Upstream's pod labels: defaults first, so the Gateway's infrastructure labels may
        // override them (e.g. enrol the waypoint in the mesh), the gateway labels last.
        let mut pod_labels: BTreeMap<String, String> = [
            ("sidecar.istio.io/inject", "false"),
            ("istio.io/dataplane-mode", "none"),
            ("service.istio.io/canonical-name", self.name.as_str()),
            ("service.istio.io/canonical-revision", "latest"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        pod_labels.extend(labels.clone());
        let container_port = |port: i32, name: &str| ContainerPort {
            container_port: port,
            name: Some(name.into()),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        };
        Deployment {
            metadata: self.metadata(&self.name, labels, self.annotations.clone()),
            spec: Some(DeploymentSpec {
                // Unset, as upstream (an autoscaler may own it): one pod.
                replicas: None,
                selector: LabelSelector {
                    match_labels: Some(self.selector()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: (!self.annotations.is_empty())
                            .then(|| self.annotations.clone()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(self.service_account.clone()),
                        containers: vec![Container {
                            name: "istio-proxy".into(),
                            ports: Some(vec![
                                container_port(15020, "metrics"),
                                container_port(STATUS_PORT, "status-port"),
                                container_port(15090, "http-envoy-prom"),
                            ]),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }
}

/// `status-port`, then the first listener on each port: named after the listener (Service
/// port names allow no dots and 63 characters), `appProtocol` its protocol in lower case.
fn service_ports(gateway: &Gateway) -> Vec<ServicePort> {
    let port = |name: String, port: i32, app_protocol: String| ServicePort {
        name: Some(name),
        port,
        protocol: Some("TCP".into()),
        app_protocol: Some(app_protocol),
        ..ServicePort::default()
    };
    let mut ports = vec![port("status-port".into(), STATUS_PORT, "tcp".into())];
    // Upstream only de-duplicates listener ports; a listener on 15021 would give the Service
    // a duplicate port, which the API server refuses, so it is skipped here too.
    let mut seen = BTreeSet::from([STATUS_PORT]);
    for (i, listener) in gateway.spec.listeners.iter().enumerate() {
        if !seen.insert(listener.port) {
            continue;
        }
        let protocol = listener.protocol.to_lowercase();
        let mut name: String = listener.name.replace('.', "-").chars().take(63).collect();
        if name.is_empty() {
            name = format!("{protocol}-{i}");
        }
        ports.push(port(name, listener.port, protocol));
    }
    ports
}
