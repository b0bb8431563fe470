//! One ztunnel's Delta ADS stream as a state machine, apart from the transport so it can be
//! tested message by message.
//!
//! Per type URL the stream remembers what the client holds (name → version). A new
//! subscription starts from the client's `initial_resource_versions` and is always answered,
//! even with nothing (ztunnel's readiness waits for both types); afterwards each publish sends
//! only the difference. A request that changes the subscription is answered too, an ACK or
//! NACK that carries the change included (whatever its nonce), and a name subscribed again is
//! sent again even if the client is believed to hold it, as Delta xDS requires. Wildcard
//! subscriptions get everything; on-demand keys (`<network>/<ip>` or `<namespace>/<hostname>`)
//! match a resource by name or alias, and a key that matches nothing is answered as removed so
//! the client stops waiting.
//!
//! The same machine serves waypoints their `WaypointConfig` (by name `<namespace>/<name>`, or
//! wildcard). Only subscribed types are ever sent, so a ztunnel, which subscribes to the two
//! upstream types alone, never sees it.
//!
//! What a client writes that ends up in logs or in istiod's memory (its node id, a NACK's
//! `error_detail` message, an echoed nonce, an unknown type URL) is cut to
//! [`MAX_CLIENT_TEXT`] bytes here, before it leaves the request: one request may be as large
//! as the gRPC decoding limit (tonic's default, 4 MiB, which istiod keeps), and a client that
//! NACKs with megabytes of detail must not grow the log or the kept NACKs by as much.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};

use super::resources::{Published, PublishedResources, TYPE_URLS};

/// How many bytes of a client's text (node id, NACK message, nonce, type URL) are logged and
/// kept. A NACK names the resources it rejects and why; a kilobyte says that, and a longer
/// message is almost always a dump nobody reads in a log line.
pub const MAX_CLIENT_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes at a char boundary, saying how many bytes were dropped.
/// A cut copy is a fresh allocation, so the client's (possibly megabytes long) string is
/// freed with the request instead of living on in a shorter `String` of the same capacity.
pub fn capped(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    format!("{}… [{dropped} more bytes dropped]", &text[..cut])
}

#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    /// On-demand keys asked for. A key stays subscribed until the client unsubscribes it,
    /// as Delta xDS has it: one that matches nothing now is sent when it appears.
    keys: BTreeSet<String>,
    /// Keys already answered as absent, so the client is told once, not on every publish.
    absent: BTreeSet<String>,
    /// What the client holds: name → version.
    sent: BTreeMap<String, String>,
    /// The publish `sent` fully reflects, if any.
    synced: Option<u64>,
}

impl Subscription {
    fn wants(&self, name: &str, published: &Published) -> bool {
        self.wildcard
            || self.keys.contains(name)
            || published
                .resource
                .aliases
                .iter()
                .any(|a| self.keys.contains(a))
    }
}

/// What the server learned from one request, for logs and counters. Client text in it is
/// already [`capped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Subscribed {
        type_url: String,
    },
    Ack {
        type_url: String,
        nonce: String,
    },
    Nack {
        type_url: String,
        nonce: String,
        message: String,
    },
    UnknownType {
        type_url: String,
    },
}

/// The state of one stream.
#[derive(Debug)]
pub struct XdsStream {
    node: Option<String>,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
    resources: Arc<PublishedResources>,
}

impl XdsStream {
    pub fn new(resources: Arc<PublishedResources>) -> Self {
        XdsStream {
            node: None,
            subscriptions: BTreeMap::new(),
            nonce: 0,
            resources,
        }
    }

    /// The client's node id, once it has sent one.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// The response bringing `type_url`'s client up to date, if anything differs (or `always`).
    fn diff(&mut self, type_url: &str, always: bool) -> Option<DeltaDiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = self.resources.of(type_url).unwrap_or(&empty);
        let generation = self.resources.generation;
        // Only the names that changed, when this subscription was up to date with the publish
        // the changes are relative to; otherwise everything.
        let changed = self.resources.changes.as_ref().and_then(|c| {
            let sub = self.subscriptions.get(type_url)?;
            (sub.synced == Some(c.since)).then(|| c.by_type.get(type_url))
        });
        let sub = self.subscriptions.get_mut(type_url)?;
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut consider = |name: &String, sub: &mut Subscription| match current
            .get(name)
            .filter(|p| sub.wants(name, p))
        {
            Some(published) => {
                if sub.sent.get(name) != Some(&published.resource.version) {
                    sub.sent
                        .insert(name.clone(), published.resource.version.clone());
                    resources.push(published.resource.clone());
                }
            }
            None => {
                if sub.sent.remove(name).is_some() {
                    removed.push(name.clone());
                }
            }
        };
        match changed {
            Some(names) => {
                for name in names.into_iter().flatten() {
                    consider(name, sub);
                }
            }
            None => {
                let names: BTreeSet<&String> = current.keys().chain(sub.sent.keys()).collect();
                let names: Vec<String> = names.into_iter().cloned().collect();
                for name in &names {
                    consider(name, sub);
                }
            }
        }
        sub.synced = Some(generation);
        // On-demand keys nothing answers: say so, once (the client stops waiting), and keep
        // them subscribed, so a resource that appears later is sent.
        let answered = |k: &String| {
            current
                .iter()
                .any(|(n, p)| n == k || p.resource.aliases.iter().any(|a| a == k))
        };
        sub.absent.retain(|k| sub.keys.contains(k) && !answered(k));
        // A key just reported removed above has been told.
        for name in &removed {
            if sub.keys.contains(name) {
                sub.absent.insert(name.clone());
            }
        }
        let unanswered: Vec<String> = sub
            .keys
            .iter()
            .filter(|k| !answered(k) && !sub.absent.contains(*k) && !sub.sent.contains_key(*k))
            .cloned()
            .collect();
        for key in unanswered {
            sub.absent.insert(key.clone());
            removed.push(key);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: self.resources.generation.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce: self.next_nonce(),
            removed_resources: removed,
        })
    }

    /// Handles one request; the response to send, if any, and what it was.
    pub fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
    ) -> (Option<DeltaDiscoveryResponse>, Received) {
        if self.node.is_none()
            && let Some(node) = &request.node
        {
            self.node = Some(capped(node.id.clone(), MAX_CLIENT_TEXT));
        }
        let type_url = request.type_url.clone();
        if !TYPE_URLS.contains(&type_url.as_str()) {
            return (
                None,
                Received::UnknownType {
                    type_url: capped(type_url, MAX_CLIENT_TEXT),
                },
            );
        }
        let DeltaDiscoveryRequest {
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: initial,
            response_nonce: nonce,
            error_detail,
            ..
        } = request;
        let changes = !subscribe.is_empty() || !unsubscribe.is_empty();
        let received = if nonce.is_empty() {
            Received::Subscribed {
                type_url: type_url.clone(),
            }
        } else {
            let nonce = capped(nonce, MAX_CLIENT_TEXT);
            // Only the capped message outlives this call; the status (and its `details`)
            // goes with the request.
            match error_detail {
                Some(status) => Received::Nack {
                    type_url: type_url.clone(),
                    nonce,
                    message: capped(status.message, MAX_CLIENT_TEXT),
                },
                None => Received::Ack {
                    type_url: type_url.clone(),
                    nonce,
                },
            }
        };
        // An ACK or NACK is answered only when it also changes the subscription: Delta xDS
        // lets any request carry subscription changes, ACKs included (Envoy sends them that
        // way), and whatever its nonce pairs it with, what the client asks for stands.
        if !matches!(received, Received::Subscribed { .. }) && !changes {
            return (None, received);
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let sub = self.subscriptions.entry(type_url.clone()).or_default();
        if first {
            sub.wildcard = subscribe.is_empty() || subscribe.iter().any(|n| n == "*");
            sub.sent = initial.into_iter().collect();
        }
        for name in &subscribe {
            if name != "*" {
                sub.keys.insert(name.clone());
            }
        }
        // What the client wants changed: compare everything on the next diff.
        sub.synced = None;
        for name in &unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.keys.remove(name);
            }
        }
        if !first {
            // Every name subscribed is answered, even one the client is believed to hold:
            // it may have dropped it and asked again before its unsubscribe arrived (Delta
            // xDS says the server must). A key nothing answers is said absent again.
            let current = self.resources.of(&type_url);
            for key in subscribe.iter().filter(|k| sub.keys.contains(*k)) {
                sub.absent.remove(key);
                sub.sent.remove(key);
                let aliased = current
                    .into_iter()
                    .flatten()
                    .filter(|(_, p)| p.resource.aliases.iter().any(|a| a == key));
                for (name, _) in aliased {
                    sub.sent.remove(name);
                }
            }
        }
        (self.diff(&type_url, true), received)
    }

    /// A new publish: the responses for every subscribed type that changed.
    pub fn on_publish(
        &mut self,
        resources: Arc<PublishedResources>,
    ) -> Vec<DeltaDiscoveryResponse> {
        self.resources = resources;
        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
        types.iter().filter_map(|t| self.diff(t, false)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resources::resource;
    use dataplane::xds::ADDRESS_TYPE_URL;

    /// Workload `w` with address alias `net/10.0.0.1`, published once.
    fn stream() -> XdsStream {
        let w = resource(
            ADDRESS_TYPE_URL,
            "w".into(),
            vec!["net/10.0.0.1".into()],
            vec![1],
        );
        let by_type = [(ADDRESS_TYPE_URL, [("w".to_string(), w)].into())].into();
        XdsStream::new(Arc::new(PublishedResources {
            generation: 1,
            by_type,
            changes: None,
        }))
    }

    fn request(nonce: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    /// Found by `fuzz_xds_stream`: an ACK that also subscribes (Envoy sends them so) had its
    /// subscription dropped, and the client waited for a resource that never came.
    #[test]
    fn an_ack_carrying_a_subscription_is_answered() {
        let mut stream = stream();
        let (first, _) = stream.on_request(request("", &["nothing"]));
        let nonce = first.unwrap().nonce;
        let (response, received) = stream.on_request(request(&nonce, &["net/10.0.0.1"]));
        assert!(matches!(received, Received::Ack { .. }));
        assert_eq!(names(&response.unwrap()), ["w"]);
        // A stale nonce, or one never sent, pairs with nothing; the subscription stands.
        let (response, _) = stream.on_request(request("999", &["w"]));
        assert_eq!(names(&response.unwrap()), ["w"]);
        let (none, _) = stream.on_request(request(&nonce, &[]));
        assert!(none.is_none(), "a plain ACK is not answered");
    }

    /// Delta xDS: a name subscribed again is sent again, even though the client is believed
    /// to hold it (it may have dropped it before its unsubscribe arrived).
    #[test]
    fn a_name_subscribed_again_is_sent_again() {
        let mut stream = stream();
        let (response, _) = stream.on_request(request("", &["w"]));
        assert_eq!(names(&response.unwrap()), ["w"]);
        let (response, _) = stream.on_request(request("", &["net/10.0.0.1"]));
        assert_eq!(names(&response.unwrap()), ["w"]);
        let (response, _) = stream.on_request(request("", &["nothing"]));
        assert_eq!(response.unwrap().removed_resources, ["nothing"]);
        let (response, _) = stream.on_request(request("", &["nothing"]));
        assert_eq!(
            response.unwrap().removed_resources,
            ["nothing"],
            "absent, said again"
        );
    }
}
