//! `istiod --kube`: the same store fed from a live cluster. One watcher per kind; each
//! (re-)list (`Init` … `InitDone`, which the watcher repeats by itself after a lost watch)
//! replaces that kind's objects in the store, so objects deleted while the watch was down go
//! away too. `control/tests/control_plane/kube/` runs this against a real API server.
//!
//! Objects arrive untyped and are read one by one: a single object our types cannot read (a
//! field of the wrong type, which a CRD that keeps unknown fields lets through, or a typo in
//! one of Istio's kinds) is reported and left out, while the rest of its kind keeps flowing.
//! Read typed, the one bad object would fail the whole list, and with it every later re-list
//! of that kind. Like an object the store refuses, an unreadable update leaves the last
//! readable version in place; a delete needs only the name, so it always goes through.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::{self, BoxStream, StreamExt};
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::object::{Kind, Object, ObjectKey};
use crate::store::{Store, StoreError};
use crate::types::fault::FaultInjection;
use crate::types::security::{AuthorizationPolicy, PeerAuthentication};

/// What the loop tells its caller, who logs and pushes.
#[derive(Debug)]
pub enum Report {
    /// The store changed: time to translate and push.
    Changed,
    /// The cluster holds an object the store refuses; it is left out.
    Rejected(StoreError),
    /// The cluster holds an object our types cannot read; it is left out.
    Unreadable { key: ObjectKey, error: String },
    /// A watch failed; the watcher backs off and re-lists by itself.
    WatchFailed { kind: Kind, error: String },
}

/// Where the API serves `kind`, with the version istiod reads. Exhaustive over [`Kind`], so a
/// new kind cannot be forgotten here; the RBAC role istiod ships grants list/watch on exactly
/// these (a test checks).
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        // The experimental-channel type: still `gateway.networking.k8s.io/v1` `httproutes`,
        // and it reads what a standard-channel CRD serves as well.
        Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::GrpcRoute => ApiResource::erase::<GrpcRoute>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        Kind::FaultInjection => ApiResource::erase::<FaultInjection>(&()),
    }
}

/// Reads one object of `kind` as the API server sent it. Kubernetes' own types ignore fields
/// they do not know (the server may be newer than `k8s-openapi`); Istio's and ours refuse
/// them, as from YAML.
fn read(kind: Kind, raw: DynamicObject) -> Result<Object, serde_json::Error> {
    use serde_json::from_value as from;
    let value = serde_json::to_value(raw)?;
    Ok(match kind {
        Kind::Namespace => Object::Namespace(from(value)?),
        Kind::Node => Object::Node(from(value)?),
        Kind::ServiceAccount => Object::ServiceAccount(from(value)?),
        Kind::Service => Object::Service(from(value)?),
        Kind::EndpointSlice => Object::EndpointSlice(from(value)?),
        Kind::Deployment => Object::Deployment(from(value)?),
        Kind::Pod => Object::Pod(from(value)?),
        Kind::Gateway => Object::Gateway(from(value)?),
        Kind::HttpRoute => Object::HttpRoute(from(value)?),
        Kind::GrpcRoute => Object::GrpcRoute(from(value)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(from(value)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(from(value)?),
        Kind::FaultInjection => Object::FaultInjection(from(value)?),
    })
}

fn key_of(kind: Kind, raw: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: raw.metadata.namespace.clone().unwrap_or_default(),
        name: raw.metadata.name.clone().unwrap_or_default(),
    }
}

type Events = BoxStream<'static, (Kind, Result<Event<DynamicObject>, watcher::Error>)>;

fn watch(client: &kube::Client, kind: Kind) -> Events {
    let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource(kind));
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| (kind, event))
        .boxed()
}

/// Watches every kind the control plane reads and keeps `store` in step until the streams
/// end (they do not, short of the client going away). The store should be created with
/// `require_namespaces: false` (kinds arrive in no particular order) and
/// `deploy_waypoints: false` (the cluster's istiod creates waypoint deployments, and they
/// arrive here like any other object) and `schedule: false` (pods are placed, and addressed,
/// by the cluster: a pod counts once its status names its node and address). FaultInjection needs our CRD in the cluster; without
/// it that watch fails and re-lists with backoff (reported as `WatchFailed`) while every
/// other kind works on.
pub async fn run(client: kube::Client, store: Arc<Mutex<Store>>, mut report: impl FnMut(Report)) {
    let streams: Vec<Events> = Kind::ALL.iter().map(|&k| watch(&client, k)).collect();
    let mut events = stream::select_all(streams);
    // Per kind, the keys seen since the current re-list began.
    let mut relisting: Vec<(Kind, BTreeSet<ObjectKey>)> = Vec::new();
    while let Some((kind, event)) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                report(Report::WatchFailed {
                    kind,
                    error: error.to_string(),
                });
                continue;
            }
        };
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match event {
            Event::Apply(raw) => apply(&mut store, kind, raw, &mut report),
            Event::Delete(raw) => {
                let key = key_of(kind, &raw);
                store.delete(kind, &key.namespace, &key.name)
            }
            Event::Init => {
                relisting.retain(|(k, _)| *k != kind);
                relisting.push((kind, BTreeSet::new()));
                false
            }
            Event::InitApply(raw) => {
                // Seen even when unreadable: its last readable version stays.
                if let Some((_, seen)) = relisting.iter_mut().find(|(k, _)| *k == kind) {
                    seen.insert(key_of(kind, &raw));
                }
                apply(&mut store, kind, raw, &mut report)
            }
            Event::InitDone => {
                let seen = relisting
                    .iter()
                    .position(|(k, _)| *k == kind)
                    .map(|i| relisting.swap_remove(i).1)
                    .unwrap_or_default();
                // Declared objects only: anything the store generated is not the
                // watcher's to remove.
                let gone: Vec<ObjectKey> = store
                    .declared()
                    .filter(|o| o.kind() == kind)
                    .map(Object::key)
                    .filter(|key| !seen.contains(key))
                    .collect();
                let mut changed = false;
                for key in gone {
                    changed |= store.delete(key.kind, &key.namespace, &key.name);
                }
                changed
            }
        };
        drop(store);
        if changed {
            report(Report::Changed);
        }
    }
}

fn apply(
    store: &mut Store,
    kind: Kind,
    raw: DynamicObject,
    report: &mut impl FnMut(Report),
) -> bool {
    let key = key_of(kind, &raw);
    let object = match read(kind, raw) {
        Ok(object) => object,
        Err(error) => {
            report(Report::Unreadable {
                key,
                error: error.to_string(),
            });
            return false;
        }
    };
    store.apply(object).unwrap_or_else(|error| {
        report(Report::Rejected(error));
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn kubernetes_kinds_read_fields_newer_than_their_types() {
        let pod = raw(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [], "aFieldFromKubernetes2030": true},
            "status": {"podIP": "10.0.0.5"},
        }));
        let Object::Pod(pod) = read(Kind::Pod, pod).unwrap() else {
            panic!("not a pod");
        };
        assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn istio_kinds_refuse_what_they_cannot_read() {
        let wrong_type = raw(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"rules": "everyone"},
        }));
        let error = read(Kind::AuthorizationPolicy, wrong_type).unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
        let misspelt = raw(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"rulez": []},
        }));
        let error = read(Kind::AuthorizationPolicy, misspelt).unwrap_err();
        assert!(error.to_string().contains("rulez"), "{error}");
        assert_eq!(
            key_of(
                Kind::AuthorizationPolicy,
                &raw(serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}}))
            )
            .to_string(),
            "AuthorizationPolicy shop/p"
        );
    }
}
