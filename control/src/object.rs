//! The kinds the control plane reads, as one typed [`Object`], so that the YAML path and the
//! Kubernetes watcher hand the store the same thing.

use std::fmt;

use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
// The experimental channel's HTTPRoute, a superset of the standard one: `retry` and the
// other experimental fields users write are kept, not refused as unknown.
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::types::fault::{self, FaultInjection};
use crate::types::security::{AuthorizationPolicy, PeerAuthentication};

/// A kind the control plane understands. The order is the store's order, and the order a
/// batch is applied in: namespaces and nodes before what lives in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    ServiceAccount,
    Service,
    EndpointSlice,
    Deployment,
    Pod,
    Gateway,
    HttpRoute,
    GrpcRoute,
    AuthorizationPolicy,
    PeerAuthentication,
    /// Ours (`testbed.ambient.io`), named by HTTPRoute `ExtensionRef` filters.
    FaultInjection,
}

impl Kind {
    /// Every kind, in store order.
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Node,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::Pod,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::FaultInjection,
    ];

    /// The Kubernetes `kind` string.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::FaultInjection => fault::KIND,
        }
    }

    /// Parses a Kubernetes `kind` string.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `apiVersion`s accepted for this kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Node | Kind::ServiceAccount | Kind::Service | Kind::Pod => {
                &["v1"]
            }
            Kind::EndpointSlice => &["discovery.k8s.io/v1"],
            Kind::Deployment => &["apps/v1"],
            Kind::Gateway | Kind::HttpRoute => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
            ],
            Kind::GrpcRoute => &["gateway.networking.k8s.io/v1"],
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            Kind::FaultInjection => &["testbed.ambient.io/v1alpha1"],
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One Kubernetes object of a kind the control plane reads.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // objects are few and stored once; boxing buys nothing
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    ServiceAccount(ServiceAccount),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Deployment(Deployment),
    Pod(Pod),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    FaultInjection(FaultInjection),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Deployment(_) => Kind::Deployment,
            Object::Pod(_) => Kind::Pod,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::FaultInjection(_) => Kind::FaultInjection,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::FaultInjection(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::FaultInjection(o) => &mut o.metadata,
        }
    }

    /// `metadata.name`, empty when missing.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace`; empty for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("")
    }

    /// The store key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind(),
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
        }
    }
}

/// Where an object lives: `(kind, namespace, name)`, the namespace empty for cluster-scoped
/// kinds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
