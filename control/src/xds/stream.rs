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
//! # Responses are computed when the transport can take them, and bounded
//!
//! Requests and publishes only record what changed ([`XdsStream::on_request`],
//! [`XdsStream::on_publish`]); [`XdsStream::next_response`] computes the next response when
//! the caller can send it, against the latest publish. A client that does not read therefore
//! costs one response, not one per publish: the publishes it missed are subsumed by the diff
//! it is eventually sent, which brings it to the latest state all the same.
//!
//! One response carries at most about [`MAX_RESPONSE_BYTES`] of resources (Delta xDS lets a
//! server spread a type's resources over several responses): the rest follows in the next
//! ones, each computed only once the one before was taken. Every response is encoded whole
//! into one buffer on its way out, so this bounds what a slow stream holds in the transport,
//! instead of one copy of the whole configuration per stream that has not read its initial
//! state.
//!
//! What a stream keeps is small too: what its client holds is, most of the time, "what publish
//! N has", a pointer to the publish every stream shares (see [`super::held`]), and a diff in
//! progress is that plus the name it stopped at. A response shares each resource's encoded
//! body with the publish (`bytes::Bytes`), so the only per-stream copies of the configuration
//! are the responses on their way out, which the paragraph above bounds.
//!
//! Readiness is kept as it was: ztunnel (ours and upstream's) is ready once it has received
//! one response of *each* subscribed type, so a type split over several responses must not be
//! the one whose first response makes it ready. On a new stream the types not answered yet
//! are answered largest first, each completely (all its pieces) before the next is started,
//! and the type answered last has its first response sent whole, whatever its size, after
//! every other type is complete: the response that makes a ztunnel ready comes after the
//! whole configuration. For a ztunnel that is the Authorization type (a few policies, against
//! thousands of addresses), so its addresses are split and its policies come whole; addresses
//! are split even while they are the only type subscribed, since ztunnels and waypoints always
//! subscribe to another type right after them. A stream that subscribes to another type only
//! gets its first response whole, as before. Later pushes
//! larger than the bound arrive in pieces, applied as they come, as the two types of one
//! publish already are.
//!
//! What a client writes that ends up in logs or in istiod's memory (its node id, a NACK's
//! `error_detail` message, an echoed nonce, an unknown type URL) is cut to
//! [`MAX_CLIENT_TEXT`] bytes here, before it leaves the request: one request may be as large
//! as the gRPC decoding limit (tonic's default, 4 MiB, which istiod keeps), and a client that
//! NACKs with megabytes of detail must not grow the log or the kept NACKs by as much.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use prost::Message;

use dataplane::xds::ADDRESS_TYPE_URL;
use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::caller::Caller;
use super::held::{Held, Interest, first_after, least};
use super::resources::{PublishedResources, TYPE_URLS};

/// How many bytes of a client's text (node id, NACK message, nonce, type URL) are logged and
/// kept. A NACK names the resources it rejects and why; a kilobyte says that, and a longer
/// message is almost always a dump nobody reads in a log line.
pub const MAX_CLIENT_TEXT: usize = 1024;

/// How many bytes of resources (and removed names) one response carries, about: a response
/// ends with the resource that reaches it, so it is exceeded by at most one resource. 16 KiB,
/// HTTP/2's default frame size.
///
/// What a stream costs in the transport scales with it: tonic keeps each stream's encoding
/// buffer as large as the largest response it encoded, for the stream's life, and a stalled
/// stream also holds one encoded response in HTTP/2 and one computed response in its channel.
/// Measured with `benches/benches/xds_memory.rs` (100 stalled streams, 10,000 workloads), a
/// stalled stream costs istiod about 120 KiB at 16 KiB, 200 KiB at 32 KiB and 600 KiB at
/// 128 KiB, against some 80 KiB for an idle connection. A cluster of 10,000 workloads takes a
/// few hundred responses, sent back to back: a client's ACKs do not pace them, its window does.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

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

/// A diff cut at [`MAX_RESPONSE_BYTES`]: every name up to and including `after` was brought
/// to `target`, the rest is as the subscription's [`Held`] says.
#[derive(Debug)]
struct Progress {
    target: Arc<PublishedResources>,
    after: String,
}

#[derive(Debug, Default)]
struct Subscription {
    interest: Interest,
    /// Keys already answered as absent, so the client is told once, not on every publish.
    absent: BTreeSet<String>,
    /// What the client holds (or will, once it has read what was sent), apart from a diff in
    /// progress.
    held: Held,
    /// A subscribe request not answered yet: its response is sent even if empty.
    owed: bool,
    /// Whether any response of this type was sent on this stream (the client's readiness).
    answered: bool,
    /// A diff cut short, to be continued.
    progress: Option<Progress>,
}

impl Subscription {
    /// Whether the client lacks something: an answer to a request, or the latest publish.
    fn behind(&self, latest: &Arc<PublishedResources>) -> bool {
        self.owed || self.progress.is_some() || !self.held.is(latest)
    }

    /// What the client holds, a diff in progress included, as one [`Held`]; the diff is
    /// forgotten.
    fn settle(&mut self) -> Held {
        let held = std::mem::take(&mut self.held);
        match self.progress.take() {
            Some(p) => Held::Split {
                below: p.target,
                upto: p.after,
                above: Box::new(held),
            },
            None => held,
        }
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
    /// Who the client is, as its token says; decides what of the waypoints' configurations
    /// it may be sent.
    caller: Caller,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
    resources: Arc<PublishedResources>,
}

impl XdsStream {
    /// A stream for a caller without a token: everything but the waypoints' configurations.
    pub fn new(resources: Arc<PublishedResources>) -> Self {
        Self::for_caller(resources, Caller::Anonymous)
    }

    /// A stream for `caller`, who is sent only the waypoint configurations of waypoints it
    /// acts as.
    pub fn for_caller(resources: Arc<PublishedResources>, caller: Caller) -> Self {
        XdsStream {
            node: None,
            caller,
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

    /// Handles one request: what it was. A subscription's answer comes from
    /// [`XdsStream::next_response`].
    pub fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Received {
        if self.node.is_none()
            && let Some(node) = &request.node
        {
            self.node = Some(capped(node.id.clone(), MAX_CLIENT_TEXT));
        }
        let type_url = request.type_url.clone();
        if !TYPE_URLS.contains(&type_url.as_str()) {
            return Received::UnknownType {
                type_url: capped(type_url, MAX_CLIENT_TEXT),
            };
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
            return received;
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let caller = self.caller.clone();
        let node = self.node.clone();
        let sub = self.subscriptions.entry(type_url.clone()).or_default();
        if first {
            sub.interest.caller = caller;
        }
        // What the client holds, as its subscription so far saw it: for a change, name by
        // name, compared in full on the next diff. (Subscriptions change in on-demand mode,
        // where a client holds the few resources it asked for.)
        let mut held = if first {
            sub.interest.wildcard = subscribe.is_empty() || subscribe.iter().any(|n| n == "*");
            initial.into_iter().collect()
        } else {
            sub.settle().names(&type_url, &sub.interest)
        };
        for name in &subscribe {
            if name != "*" {
                sub.interest.keys.insert(name.clone());
            }
        }
        for name in &unsubscribe {
            if name == "*" {
                sub.interest.wildcard = false;
            } else {
                sub.interest.keys.remove(name);
            }
        }
        if !first {
            // Every name subscribed (and not unsubscribed with it) is answered, even one the
            // client is believed to hold: it may have dropped it and asked again before its
            // unsubscribe arrived (Delta xDS says the server must). A key nothing answers is
            // said absent again.
            let current = self.resources.of(&type_url);
            for key in subscribe.iter().filter(|k| sub.interest.keys.contains(*k)) {
                sub.absent.remove(key);
                held.remove(key);
                let aliased = current
                    .into_iter()
                    .flatten()
                    .filter(|(_, p)| p.resource.aliases.iter().any(|a| a == key));
                for (name, _) in aliased {
                    held.remove(name);
                }
            }
        }
        sub.held = Held::Names(held);
        sub.owed = true;
        // Said where it is decided: a waypoint asking for a configuration it may not see is
        // told it is absent, and would otherwise not know why.
        let current = self.resources.of(&type_url);
        for (name, published) in current.into_iter().flatten() {
            if subscribe.contains(name)
                && sub.interest.wants_any(name, published)
                && !sub.interest.wants(name, published)
            {
                tracing::warn!(
                    node = node.as_deref().unwrap_or(""),
                    caller = ?sub.interest.caller,
                    resource = %name,
                    "withheld: the caller does not act as this waypoint"
                );
            }
        }
        received
    }

    /// A new publish. What it changes for this client is computed by
    /// [`XdsStream::next_response`], when the client can be sent it.
    pub fn on_publish(&mut self, resources: Arc<PublishedResources>) {
        self.resources = resources;
    }

    /// The next response to send, if the client lacks anything: at most about
    /// [`MAX_RESPONSE_BYTES`] of resources, except the first response of the type answered
    /// last on this stream, which is whole (see the module documentation).
    pub fn next_response(&mut self) -> Option<DeltaDiscoveryResponse> {
        loop {
            let (type_url, limit) = self.pick()?;
            if let Some(response) = self.diff(&type_url, limit) {
                return Some(response);
            }
            // That type is up to date now, with nothing to say: look again.
        }
    }

    /// Every response the client lacks, one after the other: for tests and benchmarks that
    /// play a client reading everything at once.
    pub fn responses(&mut self) -> Vec<DeltaDiscoveryResponse> {
        std::iter::from_fn(|| self.next_response()).collect()
    }

    /// Which type to bring up to date next, and how many bytes its response may carry.
    fn pick(&self) -> Option<(String, usize)> {
        let latest = &self.resources;
        let behind = || {
            self.subscriptions
                .iter()
                .filter(move |(_, s)| s.behind(latest))
        };
        // A type cut short is finished first, so a client's first pieces of a type are
        // followed by the rest of it before anything else.
        if let Some((type_url, _)) = behind().find(|(_, s)| s.progress.is_some()) {
            return Some((type_url.clone(), MAX_RESPONSE_BYTES));
        }
        let unanswered: Vec<&String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| !s.answered)
            .map(|(t, _)| t)
            .collect();
        let size = |type_url: &str| self.resources.of(type_url).map_or(0, BTreeMap::len);
        match unanswered.as_slice() {
            [] => behind()
                .next()
                .map(|(t, _)| (t.clone(), MAX_RESPONSE_BYTES)),
            // The client's readiness: every other type complete first, then this one whole.
            [last] => match behind().find(|(t, _)| t != last) {
                Some((t, _)) => Some((t.clone(), MAX_RESPONSE_BYTES)),
                // Addresses subscribed alone: ztunnels and waypoints subscribe to them first
                // and to another type right after (wire facts §1.3), and it is that type's
                // answer that makes them ready, after these pieces. Sent whole because the
                // second request had not arrived yet, they would be one response of the
                // whole cluster per stream.
                None if self.subscriptions.len() == 1 && last.as_str() == ADDRESS_TYPE_URL => {
                    Some(((*last).clone(), MAX_RESPONSE_BYTES))
                }
                None => Some(((*last).clone(), usize::MAX)),
            },
            // The largest first: the smallest is the one left to send whole.
            several => several
                .iter()
                .max_by_key(|t| size(t))
                .map(|t| ((*t).clone(), MAX_RESPONSE_BYTES)),
        }
    }

    /// The next response bringing `type_url`'s client up to date, with at most about `limit`
    /// bytes of resources, if anything differs or an answer is owed.
    ///
    /// A diff cut at `limit` continues from where it stopped on the next call. If a publish
    /// came in between, what the client has so far (the diff's publish up to where it
    /// stopped, what it held before after that) becomes a [`Held::Split`] and the diff starts
    /// over against the newest publish, skipping what the client already has; a diff from a
    /// split is finished against its own publish instead, then followed by one against the
    /// newest, so what a stream keeps stays one level deep however many publishes it misses.
    fn diff(&mut self, type_url: &str, limit: usize) -> Option<DeltaDiscoveryResponse> {
        let latest = self.resources.clone();
        let sub = self.subscriptions.get_mut(type_url)?;
        let (target, after) = match sub.progress.take() {
            Some(p)
                if Arc::ptr_eq(&p.target, &latest) || matches!(sub.held, Held::Split { .. }) =>
            {
                (p.target, Some(p.after))
            }
            Some(p) => {
                sub.progress = Some(p);
                sub.held = sub.settle();
                (latest, None)
            }
            None => (latest, None),
        };
        let empty = BTreeMap::new();
        let no_names = BTreeSet::new();
        let current = target.of(type_url).unwrap_or(&empty);
        // Only the names that changed, when the client holds the publish the changes are
        // relative to (nothing, when it holds this one); otherwise every name either
        // published or held.
        let changed: Option<&BTreeSet<String>> = match &sub.held {
            Held::Publish(base) if Arc::ptr_eq(base, &target) => Some(&no_names),
            Held::Publish(base) => target
                .changes
                .as_ref()
                .filter(|c| c.since == base.generation)
                .map(|c| c.by_type.get(type_url).unwrap_or(&no_names)),
            _ => None,
        };
        let (held, interest) = (&sub.held, &sub.interest);
        let mut cursor: Option<&str> = after.as_deref();
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut bytes = 0usize;
        let mut complete = true;
        loop {
            let name = match changed {
                Some(names) => {
                    let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
                    names
                        .range::<str, _>((from, Bound::Unbounded))
                        .next()
                        .map(String::as_str)
                }
                None => least(
                    first_after(current, cursor),
                    held.next_name(type_url, cursor),
                ),
            };
            let Some(name) = name else {
                break;
            };
            let then = held.version(type_url, name, interest);
            match current.get(name).filter(|p| interest.wants(name, p)) {
                Some(p) if then != Some(p.resource.version.as_str()) => {
                    bytes += p.resource.encoded_len();
                    // The body is `Bytes`: this shares the publish's encoding.
                    resources.push(Resource::clone(&p.resource));
                }
                Some(_) => {}
                None => {
                    if then.is_some() {
                        bytes += name.len();
                        removed.push(name.to_string());
                    }
                }
            }
            cursor = Some(name);
            if bytes >= limit {
                complete = false;
                break;
            }
        }
        let cursor = cursor.map(str::to_owned);
        if complete {
            sub.held = Held::Publish(target.clone());
            // On-demand keys nothing answers: say so, once (the client stops waiting), and
            // keep them subscribed, so a resource that appears later is sent.
            // A key counts as answered only by what this caller may be sent: a waypoint
            // configuration withheld from it is absent, as far as it can tell.
            let interest = &sub.interest;
            let answered = |k: &String| {
                current.iter().any(|(n, p)| {
                    (n == k || p.resource.aliases.iter().any(|a| a == k)) && interest.wants(n, p)
                })
            };
            let keys = &sub.interest.keys;
            sub.absent.retain(|k| keys.contains(k) && !answered(k));
            // A key just reported removed above has been told.
            for name in &removed {
                if keys.contains(name) {
                    sub.absent.insert(name.clone());
                }
            }
            let unanswered: Vec<String> = keys
                .iter()
                .filter(|k| !answered(k) && !sub.absent.contains(*k))
                .cloned()
                .collect();
            for key in unanswered {
                sub.absent.insert(key.clone());
                removed.push(key);
            }
        } else {
            sub.progress = cursor.map(|after| Progress {
                target: target.clone(),
                after,
            });
        }
        if resources.is_empty() && removed.is_empty() && !sub.owed {
            return None;
        }
        sub.owed = false;
        sub.answered = true;
        Some(DeltaDiscoveryResponse {
            system_version_info: target.generation.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce: self.next_nonce(),
            removed_resources: removed,
        })
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
pub(crate) mod tests;
