//! `istiod --kube`: the same store fed from a live cluster. One watcher per kind; each
//! (re-)list (`Init` … `InitDone`, which the watcher repeats by itself after a lost watch)
//! replaces that kind's objects in the store, so objects deleted while the watch was down go
//! away too. Without a cluster this is only compile-checked; the YAML path exercises the same
//! `Store::apply`/`delete`.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::{self, BoxStream, StreamExt};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use crate::object::{Kind, Object, ObjectKey};
use crate::store::{Store, StoreError};

/// What the loop tells its caller, who logs and pushes.
#[derive(Debug)]
pub enum Report {
    /// The store changed: time to translate and push.
    Changed,
    /// The cluster holds an object the store refuses; it is left out.
    Rejected(StoreError),
    /// A watch failed; the watcher backs off and re-lists by itself.
    WatchFailed { kind: Kind, error: String },
}

type Events = BoxStream<'static, (Kind, Result<Event<Object>, watcher::Error>)>;

fn watch<K>(client: &kube::Client, kind: Kind, wrap: fn(K) -> Object) -> Events
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let event = event.map(|e| match e {
                Event::Apply(o) => Event::Apply(wrap(o)),
                Event::Delete(o) => Event::Delete(wrap(o)),
                Event::Init => Event::Init,
                Event::InitApply(o) => Event::InitApply(wrap(o)),
                Event::InitDone => Event::InitDone,
            });
            (kind, event)
        })
        .boxed()
}

/// Watches every kind the control plane reads and keeps `store` in step until the streams
/// end (they do not, short of the client going away). The store should be created with
/// `require_namespaces: false` (kinds arrive in no particular order) and
/// `deploy_waypoints: false` (the cluster's istiod creates waypoint deployments, and they
/// arrive here like any other object).
pub async fn run(client: kube::Client, store: Arc<Mutex<Store>>, mut report: impl FnMut(Report)) {
    let streams: Vec<Events> = vec![
        watch(&client, Kind::Namespace, Object::Namespace),
        watch(&client, Kind::Node, Object::Node),
        watch(&client, Kind::ServiceAccount, Object::ServiceAccount),
        watch(&client, Kind::Service, Object::Service),
        watch(&client, Kind::EndpointSlice, Object::EndpointSlice),
        watch(&client, Kind::Deployment, Object::Deployment),
        watch(&client, Kind::Pod, Object::Pod),
        watch(&client, Kind::Gateway, Object::Gateway),
        // The experimental-channel type: still `gateway.networking.k8s.io/v1` `httproutes`,
        // and it reads what a standard-channel CRD serves as well.
        watch(&client, Kind::HttpRoute, Object::HttpRoute),
        watch(&client, Kind::GrpcRoute, Object::GrpcRoute),
        watch(
            &client,
            Kind::AuthorizationPolicy,
            Object::AuthorizationPolicy,
        ),
        watch(
            &client,
            Kind::PeerAuthentication,
            Object::PeerAuthentication,
        ),
        // Needs our CRD in the cluster; without it this watch fails and re-lists with
        // backoff (reported as `WatchFailed`) while every other kind works on.
        watch(&client, Kind::FaultInjection, Object::FaultInjection),
    ];
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
            Event::Apply(object) => apply(&mut store, object, &mut report),
            Event::Delete(object) => store.delete(kind, object.namespace(), object.name()),
            Event::Init => {
                relisting.retain(|(k, _)| *k != kind);
                relisting.push((kind, BTreeSet::new()));
                false
            }
            Event::InitApply(object) => {
                if let Some((_, seen)) = relisting.iter_mut().find(|(k, _)| *k == kind) {
                    seen.insert(object.key());
                }
                apply(&mut store, object, &mut report)
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

fn apply(store: &mut Store, object: Object, report: &mut impl FnMut(Report)) -> bool {
    store.apply(object).unwrap_or_else(|error| {
        report(Report::Rejected(error));
        false
    })
}
