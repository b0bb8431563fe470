//! One in-memory store of every object the control plane reads, keyed by
//! `(kind, namespace, name)`, plus where the scheduler put pods and which cluster IPs it gave
//! services. The YAML sources and the `kube` watcher both feed it through
//! [`Store::apply`]/[`Store::delete`]; translation reads it and nothing else.
//!
//! Without a cluster the store also stands in for the controllers that would create objects
//! from others: today istiod's own, which deploys waypoints ([`waypoints`]). What they create
//! is kept apart from what the sources declared, in a second map recomputed from the first
//! after every change that can affect it, because:
//! - it is derived, not given: `apply`/`delete` only ever touch declared objects, so deleting
//!   a Gateway takes its objects with it and a declared object of the same name simply shadows
//!   the generated one (and the generated one comes back when the declared one goes);
//! - everything that reads objects ([`Store::get`], [`Store::of_kind`], the typed iterators,
//!   the scheduler) sees the two merged in key order, so a generated Deployment or Service is
//!   scheduled, numbered and translated exactly as if a user had written it, and translation
//!   needs no notion of where an object came from;
//! - counting and re-listing still see only what was declared ([`Store::len`],
//!   [`Store::declared`]): `istiod --check` reports the manifests it read, and the `kube`
//!   watcher never deletes what it did not add.

mod pods;
mod schedule;
mod validate;
pub mod waypoints;

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane::policy::Cidr;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use pods::{PodOwner, PodView};
use schedule::Schedule;
pub use validate::MAX_REPLICAS;

use crate::object::{Kind, Object, ObjectKey};
use crate::types::fault::FaultInjection;
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
    /// Play istiod's gateway deployment controller: behave as if each waypoint Gateway's
    /// Deployment, Service and ServiceAccount existed ([`waypoints`]). On for manifests, where
    /// nothing else would create them; off with `--kube`, where istiod's controller in the
    /// cluster creates the real ones and the watchers bring them in: invented ones would be
    /// pods with addresses nothing answers on, for as long as the real ones are missing.
    pub deploy_waypoints: bool,
    /// Play the scheduler and the kubelets: each Deployment's pods exist, a pod without a node
    /// or an address gets them from a Node's `podCIDR`, a Service without a `clusterIP` gets
    /// one. On for manifests, where nothing else would; off with `--kube`, where the
    /// cluster's controllers, scheduler and kubelets do it and their results arrive through
    /// the watches: invented pods would be addresses nothing answers on.
    pub schedule: bool,
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
            deploy_waypoints: true,
            schedule: true,
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
    /// What is wrong with it.
    pub message: String,
}

/// Which object of a batch was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {index} of the batch: {error}")]
pub struct BatchError {
    /// Position in the batch as given.
    pub index: usize,
    /// Why it was refused.
    pub error: StoreError,
}

/// The objects, and the scheduler's decisions about them.
#[derive(Debug, Clone, Default)]
pub struct Store {
    config: StoreConfig,
    /// What the sources applied: the only objects `apply` and `delete` change.
    declared: BTreeMap<ObjectKey, Object>,
    /// What controllers would have created from `declared`, never under a declared key: a
    /// function of `declared` and `config`, recomputed after changes, never edited.
    generated: BTreeMap<ObjectKey, Object>,
    schedule: Schedule,
}

type Entry<'a> = (&'a ObjectKey, &'a Object);

/// The entries of `kind` in `objects`, in `(namespace, name)` order.
fn kind_range(
    objects: &BTreeMap<ObjectKey, Object>,
    kind: Kind,
) -> impl Iterator<Item = Entry<'_>> {
    let start = ObjectKey {
        kind,
        namespace: String::new(),
        name: String::new(),
    };
    objects
        .range(start..)
        .take_while(move |(k, _)| k.kind == kind)
}

/// Two key-ordered sequences as one, in key order. The keys of the two never overlap
/// (generated objects are left out where one is declared); were they to, `a` comes first.
fn merge<'a>(
    a: impl Iterator<Item = Entry<'a>>,
    b: impl Iterator<Item = Entry<'a>>,
) -> impl Iterator<Item = &'a Object> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((x, _)), Some((y, _))) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
    .map(|(_, object)| object)
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
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Store {
            config,
            declared: BTreeMap::new(),
            generated: BTreeMap::new(),
            schedule: Schedule::default(),
        }
    }

    /// The settings it was created with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Adds or replaces one object. Returns whether anything changed; a refused object
    /// leaves the store as it was.
    pub fn apply(&mut self, object: Object) -> Result<bool, StoreError> {
        let kind = object.kind();
        let changed = self.insert(object)?;
        if changed {
            self.settle(kind);
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
            next.regenerate();
            next.reschedule();
            *self = next;
        }
        Ok(changed)
    }

    fn insert(&mut self, object: Object) -> Result<bool, StoreError> {
        validate::object(&object, self)?;
        let key = object.key();
        if self.declared.get(&key) == Some(&object) {
            return Ok(false);
        }
        self.declared.insert(key, object);
        Ok(true)
    }

    /// After a declared object of `kind` changed: re-derives what controllers would create,
    /// then re-runs the scheduler if pods or services may have moved. Only the kinds that can
    /// matter trigger either, so a policy change costs nothing here however large the cluster.
    fn settle(&mut self, kind: Kind) {
        let regenerated = affects_generation(kind) && self.regenerate();
        if regenerated || affects_scheduling(kind) {
            self.reschedule();
        }
    }

    /// Recomputes the generated objects; returns whether they changed.
    fn regenerate(&mut self) -> bool {
        let generated = if self.config.deploy_waypoints {
            waypoints::generate(&self.declared)
        } else {
            BTreeMap::new()
        };
        if generated == self.generated {
            return false;
        }
        self.generated = generated;
        true
    }

    fn reschedule(&mut self) {
        let objects: Vec<&Object> = merge(self.declared.iter(), self.generated.iter()).collect();
        if self.config.schedule {
            self.schedule.reconcile(&objects, &self.config.service_cidr);
        } else {
            self.schedule.as_reported(&objects);
        }
    }

    /// Removes one declared object; deleting a Namespace removes everything in it, as
    /// Kubernetes does. Returns whether anything changed. A generated object cannot be deleted
    /// (its controller would recreate it): delete what it was generated from.
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
        if self.declared.remove(&key).is_none() {
            return false;
        }
        if kind == Kind::Namespace {
            self.declared.retain(|k, _| k.namespace != name);
        }
        self.settle(kind);
        true
    }

    /// One object, declared or generated.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        let key = ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.declared.get(&key).or_else(|| self.generated.get(&key))
    }

    /// Every object, declared and generated, in `(kind, namespace, name)` order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        merge(self.declared.iter(), self.generated.iter())
    }

    /// The objects the sources declared, in `(kind, namespace, name)` order.
    pub fn declared(&self) -> impl Iterator<Item = &Object> {
        self.declared.values()
    }

    /// The objects the store generated in a controller's place (today: waypoint deployments),
    /// in `(kind, namespace, name)` order.
    pub fn generated(&self) -> impl Iterator<Item = &Object> {
        self.generated.values()
    }

    /// How many objects the sources declared; generated ones are not counted.
    pub fn len(&self) -> usize {
        self.declared.len()
    }

    /// Whether the sources declared nothing.
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    /// The objects of one kind, declared and generated, in `(namespace, name)` order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        merge(
            kind_range(&self.declared, kind),
            kind_range(&self.generated, kind),
        )
    }

    typed_iter!(
        /// Namespaces, by name.
        namespaces,
        Namespace,
        Namespace
    );
    typed_iter!(
        /// Nodes, by name.
        nodes,
        Node,
        Node
    );
    typed_iter!(
        /// ServiceAccounts, declared and generated.
        service_accounts,
        ServiceAccount,
        ServiceAccount
    );
    typed_iter!(
        /// Services, declared and generated.
        services,
        Service,
        Service
    );
    typed_iter!(
        /// EndpointSlices.
        endpoint_slices,
        EndpointSlice,
        EndpointSlice
    );
    typed_iter!(
        /// Deployments, declared and generated.
        deployments,
        Deployment,
        Deployment
    );
    typed_iter!(
        /// Pod objects as given; [`Store::pods`] adds the scheduler's view and Deployment pods.
        pod_objects,
        Pod,
        Pod
    );
    typed_iter!(
        /// Gateways, of every class.
        gateways,
        Gateway,
        Gateway
    );
    typed_iter!(
        /// HTTPRoutes, as the experimental channel types them (so `retry` is there).
        http_routes,
        HttpRoute,
        HttpRoute
    );
    typed_iter!(
        /// GRPCRoutes.
        grpc_routes,
        GrpcRoute,
        GrpcRoute
    );
    typed_iter!(
        /// AuthorizationPolicies.
        authorization_policies,
        AuthorizationPolicy,
        AuthorizationPolicy
    );
    typed_iter!(
        /// PeerAuthentications.
        peer_authentications,
        PeerAuthentication,
        PeerAuthentication
    );
    typed_iter!(
        /// FaultInjections (ours), which HTTPRoute `ExtensionRef` filters name.
        fault_injections,
        FaultInjection,
        FaultInjection
    );

    /// A Namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.get(Kind::Namespace, "", name) {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    /// A Gateway by namespace and name.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        match self.get(Kind::Gateway, namespace, name) {
            Some(Object::Gateway(g)) => Some(g),
            _ => None,
        }
    }

    /// A FaultInjection by namespace and name: what an `ExtensionRef` filter resolves to.
    pub fn fault_injection(&self, namespace: &str, name: &str) -> Option<&FaultInjection> {
        match self.get(Kind::FaultInjection, namespace, name) {
            Some(Object::FaultInjection(f)) => Some(f),
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

/// Whether a change to `kind` can move pods or service IPs: only those re-run the scheduler.
fn affects_scheduling(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Namespace | Kind::Node | Kind::Pod | Kind::Deployment | Kind::Service
    )
}

/// Whether a change to `kind` can change the generated objects: their Gateways, and the
/// declared objects that shadow them.
fn affects_generation(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Namespace | Kind::Gateway | Kind::Deployment | Kind::Service | Kind::ServiceAccount
    )
}
