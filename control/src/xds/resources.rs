//! A [`Snapshot`] encoded as xDS resources, once per publish, so every stream diffs against the
//! same bytes: names and aliases as istiod sends them (wire facts §1.4), and a version that is
//! a hash of the encoded resource — equal content, equal version, across restarts too, so a
//! reconnecting ztunnel that announces its versions is sent only what really changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;

use dataplane::xds::proto::envoy::service::discovery::v3::Resource;
use dataplane::xds::proto::google::protobuf::Any;
use dataplane::xds::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WAYPOINT_TYPE_URL, authorization_to_proto,
    service_to_proto, workload_to_proto,
};

use crate::snapshot::{Snapshot, WaypointProxies};

/// One resource ready to send, encoded once and shared: a publish that keeps a resource keeps
/// the same `Arc` (so a stream still diffing against an older publish costs that publish's
/// map, not its resources), and its encoded body is `Bytes`, so every stream's responses hold
/// a reference to the same bytes, never a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub resource: Arc<Resource>,
    /// Who may be sent it, where not everyone subscribed may: a waypoint's configuration
    /// goes only to callers that act as that waypoint ([`crate::xds::Caller`]).
    pub viewers: Option<Arc<WaypointProxies>>,
}

/// Every resource of one publish, by type URL and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishedResources {
    /// Increases with every publish; for logs.
    pub generation: u64,
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Published>>,
    /// What differs from the publish before, when known: streams that were up to date with
    /// it look only at these names, so a push costs the change, not the cluster, per stream.
    pub changes: Option<Changes>,
}

/// The names, per type URL, whose resource was added, changed or removed since `since`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub since: u64,
    pub by_type: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Changes {
    /// What differs between `before` and the resources `now`, by version.
    pub fn between(
        before: &PublishedResources,
        now: &BTreeMap<&'static str, BTreeMap<String, Published>>,
    ) -> Changes {
        Changes {
            since: before.generation,
            by_type: now
                .iter()
                .map(|(type_url, now)| {
                    let empty = BTreeMap::new();
                    let then = before.of(type_url).unwrap_or(&empty);
                    let changed = now
                        .iter()
                        .filter(|(name, p)| {
                            then.get(*name).map(|t| &t.resource.version)
                                != Some(&p.resource.version)
                        })
                        .map(|(name, _)| name.clone())
                        .chain(then.keys().filter(|name| !now.contains_key(*name)).cloned())
                        .collect();
                    (*type_url, changed)
                })
                .collect(),
        }
    }
}

/// The type URLs served: the two ztunnels subscribe to, in the order they subscribe, then
/// the waypoints' own. A stream is only ever sent the types it subscribed to, so serving the
/// third changes nothing for ztunnels, which never ask for it.
pub const TYPE_URLS: [&str; 3] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WAYPOINT_TYPE_URL];

/// FNV-1a, 64 bit: stable across processes and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn alias(network: &str, ip: &IpAddr) -> String {
    format!("{network}/{ip}")
}

/// Wraps an encoded message as a named, versioned resource.
pub fn resource(type_url: &str, name: String, aliases: Vec<String>, value: Vec<u8>) -> Published {
    let version = format!("{:016x}", fnv1a(&value));
    Published {
        resource: Arc::new(Resource {
            version,
            resource: Some(Any {
                type_url: type_url.to_string(),
                value: value.into(),
            }),
            name,
            aliases,
            ttl: None,
            cache_control: None,
        }),
        viewers: None,
    }
}

/// A waypoint's configuration, for the callers that act as it (nobody, when its pods are not
/// known). Its version covers who may see it too, so a change of either reaches every
/// stream: sent to a caller that now acts as the waypoint, removed from one that no longer
/// does.
fn waypoint_resource(key: &str, value: Vec<u8>, proxies: Option<&WaypointProxies>) -> Published {
    let viewers = Arc::new(proxies.cloned().unwrap_or_default());
    let mut published = resource(WAYPOINT_TYPE_URL, key.to_string(), Vec::new(), value);
    let seen_by = viewers
        .identities
        .iter()
        .chain(std::iter::once(&String::new()))
        .chain(&viewers.nodes)
        .fold(String::new(), |all, name| all + name + "\n");
    let body = published.resource.resource.as_ref().map(|a| &a.value[..]);
    let version = fnv1a(&[body.unwrap_or_default(), seen_by.as_bytes()].concat());
    Arc::make_mut(&mut published.resource).version = format!("{version:016x}");
    published.viewers = Some(viewers);
    published
}

impl PublishedResources {
    /// Encodes `snapshot`.
    pub fn encode(snapshot: &Snapshot, generation: u64) -> Self {
        Self::encode_since(snapshot, generation, None)
    }

    /// Encodes `snapshot`, reusing the encoding of every entry equal to the one in `previous`
    /// (the snapshot and resources of the last publish): a change to one policy re-encodes
    /// one resource, not the whole cluster.
    pub fn encode_since(
        snapshot: &Snapshot,
        generation: u64,
        previous: Option<(&Snapshot, &PublishedResources)>,
    ) -> Self {
        let reuse = |type_url: &str, key: &str, unchanged: bool| -> Option<Published> {
            let (_, resources) = previous.filter(|_| unchanged)?;
            resources.of(type_url)?.get(key).cloned()
        };
        let mut addresses = BTreeMap::new();
        for (uid, w) in &snapshot.workloads {
            let unchanged = previous.is_some_and(|(p, _)| p.workloads.get(uid) == Some(w));
            if let Some(published) = reuse(ADDRESS_TYPE_URL, uid, unchanged) {
                addresses.insert(uid.clone(), published);
                continue;
            }
            let aliases = w
                .workload_ips
                .iter()
                .map(|ip| alias(&w.network, ip))
                .collect();
            let value = workload_to_proto(w).encode_to_vec();
            addresses.insert(
                uid.clone(),
                resource(ADDRESS_TYPE_URL, uid.clone(), aliases, value),
            );
        }
        for (key, s) in &snapshot.services {
            let unchanged = previous.is_some_and(|(p, _)| p.services.get(key) == Some(s));
            if let Some(published) = reuse(ADDRESS_TYPE_URL, key, unchanged) {
                addresses.insert(key.clone(), published);
                continue;
            }
            let aliases = s
                .vips
                .iter()
                .map(|v| alias(&v.network, &v.address))
                .collect();
            let value = service_to_proto(s).encode_to_vec();
            addresses.insert(
                key.clone(),
                resource(ADDRESS_TYPE_URL, key.clone(), aliases, value),
            );
        }
        let mut policies = BTreeMap::new();
        for (key, p) in &snapshot.policies {
            let unchanged = previous.is_some_and(|(prev, _)| prev.policies.get(key) == Some(p));
            if let Some(published) = reuse(AUTHORIZATION_TYPE_URL, key, unchanged) {
                policies.insert(key.clone(), published);
                continue;
            }
            let value = authorization_to_proto(p).encode_to_vec();
            policies.insert(
                key.clone(),
                resource(AUTHORIZATION_TYPE_URL, key.clone(), Vec::new(), value),
            );
        }
        // Named `<namespace>/<gateway name>`; a waypoint subscribes to its own name.
        let waypoints = snapshot
            .waypoints
            .iter()
            .map(|(key, config)| {
                let proxies = snapshot.waypoint_proxies.get(key);
                let published = waypoint_resource(key, config.encode_to_vec(), proxies);
                (key.clone(), published)
            })
            .collect();
        let mut by_type = BTreeMap::new();
        by_type.insert(ADDRESS_TYPE_URL, addresses);
        by_type.insert(AUTHORIZATION_TYPE_URL, policies);
        by_type.insert(WAYPOINT_TYPE_URL, waypoints);
        let changes = previous.map(|(_, before)| Changes::between(before, &by_type));
        PublishedResources {
            generation,
            by_type,
            changes,
        }
    }

    /// The resources of `type_url` (empty for a type we do not serve).
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Published>> {
        self.by_type.get(type_url)
    }
}

/// What the xDS server watches.
pub type SharedResources = Arc<PublishedResources>;
