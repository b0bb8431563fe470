//! One in-memory store of every object the control plane reads, keyed by
//! `(kind, namespace, name)`, plus where the scheduler put pods and which cluster IPs it gave
//! services. The YAML sources and the `kube` watcher both feed it through
//! [`Store::apply`]/[`Store::delete`]; translation reads it and nothing else.

mod pods;
mod schedule;
mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane::policy::Cidr;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use pods::{PodOwner, PodView};
use schedule::Schedule;

use crate::sources::{Kind, Object, ObjectKey};
use crate::types::security::{AuthorizationPolicy, PeerAuthentication};

/// Settings the store needs to validate and schedule without a real cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// istiod's namespace: always exists, like `default` and `kube-system`.
    pub root_namespace: String,
    /// Refuse objects whose namespace does not exist, as the API server does. The `kube`
    /// watcher turns this off: its kinds arrive in no particular order.
    pub require_namespaces: bool,
    /// Where Services without a `clusterIP` get one (kube-apiserver's
    /// `--service-cluster-ip-range`).
    pub service_cidr: Cidr,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            root_namespace: "istio-system".into(),
            require_namespaces: true,
            service_cidr: Cidr {
                address: IpAddr::from([10, 96, 0, 0]),
                length: 16,
            },
        }
    }
}

/// An object the store refused, naming it and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct StoreError {
    /// `Kind namespace/name`.
    pub object: String,
    /// The field's path, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub field: String,
    pub message: String,
}

/// Which object of a batch was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {index} of the batch: {error}")]
pub struct BatchError {
    /// Position in the batch as given.
    pub index: usize,
    pub error: StoreError,
}

/// The objects, and the scheduler's decisions about them.
#[derive(Debug, Clone, Default)]
pub struct Store {
    config: StoreConfig,
    objects: BTreeMap<ObjectKey, Object>,
    schedule: Schedule,
}

macro_rules! typed_iter {
    ($(#[$doc:meta])* $fn:ident, $variant:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $fn(&self) -> impl Iterator<Item = &$ty> {
            self.of_kind(Kind::$variant).filter_map(|o| match o {
                Object::$variant(x) => Some(x),
                _ => None,
            })
        }
    };
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        Store {
            config,
            objects: BTreeMap::new(),
            schedule: Schedule::default(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Adds or replaces one object. Returns whether anything changed; a refused object
    /// leaves the store as it was.
    pub fn apply(&mut self, object: Object) -> Result<bool, StoreError> {
        let schedules = affects_scheduling(object.kind());
        let changed = self.insert(object)?;
        if changed && schedules {
            self.schedule
                .reconcile(&self.objects, &self.config.service_cidr);
        }
        Ok(changed)
    }

    /// Applies a batch all or nothing. Namespaces go first (whatever their place in the
    /// batch) so a manifest may list a namespace after what lives in it; the scheduler then
    /// runs once, so new pods and services are numbered in sorted order, not file order.
    pub fn apply_all(
        &mut self,
        objects: impl IntoIterator<Item = Object>,
    ) -> Result<bool, BatchError> {
        let mut batch: Vec<(usize, Object)> = objects.into_iter().enumerate().collect();
        batch.sort_by_key(|(_, o)| o.kind() != Kind::Namespace);
        let mut next = self.clone();
        let mut changed = false;
        for (index, object) in batch {
            changed |= next
                .insert(object)
                .map_err(|error| BatchError { index, error })?;
        }
        if changed {
            next.schedule
                .reconcile(&next.objects, &next.config.service_cidr);
            *self = next;
        }
        Ok(changed)
    }

    fn insert(&mut self, object: Object) -> Result<bool, StoreError> {
        validate::object(&object, self)?;
        let key = object.key();
        if self.objects.get(&key) == Some(&object) {
            return Ok(false);
        }
        self.objects.insert(key, object);
        Ok(true)
    }

    /// Removes one object; deleting a Namespace removes everything in it, as Kubernetes
    /// does. Returns whether anything changed.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = ObjectKey {
            kind,
            namespace: if kind.namespaced() {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        };
        if self.objects.remove(&key).is_none() {
            return false;
        }
        if kind == Kind::Namespace {
            self.objects.retain(|k, _| k.namespace != name);
        }
        if affects_scheduling(kind) {
            self.schedule
                .reconcile(&self.objects, &self.config.service_cidr);
        }
        true
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        self.objects.get(&ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Every object, in `(kind, namespace, name)` order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects of one kind, in `(namespace, name)` order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        let start = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o)
    }

    typed_iter!(namespaces, Namespace, Namespace);
    typed_iter!(nodes, Node, Node);
    typed_iter!(service_accounts, ServiceAccount, ServiceAccount);
    typed_iter!(services, Service, Service);
    typed_iter!(endpoint_slices, EndpointSlice, EndpointSlice);
    typed_iter!(deployments, Deployment, Deployment);
    typed_iter!(
        /// Pod objects as given; [`Store::pods`] adds the scheduler's view and Deployment pods.
        pod_objects,
        Pod,
        Pod
    );
    typed_iter!(gateways, Gateway, Gateway);
    typed_iter!(http_routes, HttpRoute, HttpRoute);
    typed_iter!(grpc_routes, GrpcRoute, GrpcRoute);
    typed_iter!(
        authorization_policies,
        AuthorizationPolicy,
        AuthorizationPolicy
    );
    typed_iter!(peer_authentications, PeerAuthentication, PeerAuthentication);

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.get(Kind::Namespace, "", name) {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        match self.get(Kind::Gateway, namespace, name) {
            Some(Object::Gateway(g)) => Some(g),
            _ => None,
        }
    }

    /// Whether objects may live in `namespace`: it exists, or is one Kubernetes (and istiod)
    /// always has.
    pub fn namespace_exists(&self, namespace: &str) -> bool {
        namespace == "default"
            || namespace == "kube-system"
            || namespace == self.config.root_namespace
            || self.namespace(namespace).is_some()
    }

    /// A Service's cluster IPs: the ones it states, else the one the store allocated; empty
    /// for headless and ExternalName services.
    pub fn service_ips(&self, service: &Service) -> Vec<IpAddr> {
        let namespace = service.metadata.namespace.as_deref().unwrap_or("");
        let name = service.metadata.name.as_deref().unwrap_or("");
        match schedule::stated_cluster_ips(service) {
            schedule::ClusterIps::Stated(ips) => ips,
            schedule::ClusterIps::None => Vec::new(),
            schedule::ClusterIps::Allocate => self
                .schedule
                .cluster_ip(namespace, name)
                .into_iter()
                .collect(),
        }
    }
}

/// Whether a change to `kind` can move pods or service IPs: only those re-run the scheduler,
/// so a policy change costs nothing here however large the cluster.
fn affects_scheduling(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Namespace | Kind::Node | Kind::Pod | Kind::Deployment | Kind::Service
    )
}
