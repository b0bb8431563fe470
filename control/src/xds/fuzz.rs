//! Fuzz target for the Delta ADS state machine ([`XdsStream`]): random sequences of client
//! requests (subscriptions by wildcard, name and alias, unsubscriptions, initial versions,
//! ACKs and NACKs echoing the current nonce, a stale one, one of another type or one never
//! sent, some carrying subscription changes, NACKs with megabytes of detail, unknown type
//! URLs, absurd node ids) interleaved with publishes. Every ztunnel and waypoint holds one of
//! these, and a client can send anything, so beyond never panicking the stream must keep the
//! protocol's promises, checked against a model client that applies every response:
//!
//! - after every step, what the client holds of each subscribed type is exactly the
//!   published resources it asked for (by wildcard, name or alias), at their versions;
//! - a subscription is answered, and so is an ACK or NACK that changes one, whatever its
//!   nonce; an ACK or NACK alone never is, and changes nothing;
//! - every key subscribed is answered in full (its resources sent even if held, or the key
//!   said removed when it names nothing), as Delta xDS requires;
//! - only subscribed types are sent, each resource in a body of its response's type, never
//!   one the client already holds at that version unless it just asked for it, never both
//!   sent and removed;
//! - nonces are unique and increasing;
//! - client text kept by the server (node id, NACK message, nonce, type URL) is capped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use dataplane::xds::proto::google::rpc::Status;
use proptest::prelude::*;

use super::resources::Changes;
use super::*;
use crate::fuzzing::{bounded, config, hostile_text};

/// Resource names, and keys a client subscribes to: names, aliases of some of them, one
/// that never exists, and the wildcard.
const NAMES: &[&str] = &["a", "b", "c", "ns/a.svc"];
const KEYS: &[&str] = &[
    "a",
    "b",
    "ns/a.svc",
    "net/10.0.0.1",
    "net/10.0.0.2",
    "nothing",
    "*",
];

/// The aliases of a resource follow from its content (as a workload's addresses are in its
/// encoding), so equal versions mean equal aliases.
fn aliases(value: u8) -> Vec<String> {
    match value % 3 {
        0 => Vec::new(),
        1 => vec!["net/10.0.0.1".to_string()],
        _ => vec!["net/10.0.0.1".to_string(), "net/10.0.0.2".to_string()],
    }
}

/// One publish: for each type, some of the names with one of a few contents.
fn publish() -> impl Strategy<Value = BTreeMap<&'static str, BTreeMap<String, u8>>> {
    let of_type = prop::collection::btree_map(
        prop::sample::select(NAMES).prop_map(str::to_string),
        0u8..6,
        0..4,
    );
    prop::collection::vec(of_type, TYPE_URLS.len())
        .prop_map(|maps| TYPE_URLS.iter().copied().zip(maps).collect())
}

fn encode(
    content: &BTreeMap<&'static str, BTreeMap<String, u8>>,
    generation: u64,
    before: Option<&PublishedResources>,
) -> PublishedResources {
    let by_type: BTreeMap<&'static str, BTreeMap<String, Published>> = content
        .iter()
        .map(|(t, names)| {
            let resources = names
                .iter()
                .map(|(n, v)| (n.clone(), resource(t, n.clone(), aliases(*v), vec![*v])))
                .collect();
            (*t, resources)
        })
        .collect();
    // What changed since the publish before, as istiod computes it (by version).
    let changes = before.map(|before| Changes {
        since: before.generation,
        by_type: by_type
            .iter()
            .map(|(t, now)| {
                let then = before.of(t).cloned().unwrap_or_default();
                let version = |m: &BTreeMap<String, Published>, n: &String| {
                    m.get(n).map(|p| p.resource.version.clone())
                };
                let names: BTreeSet<&String> = now.keys().chain(then.keys()).collect();
                let changed = names
                    .into_iter()
                    .filter(|n| version(now, n) != version(&then, n))
                    .cloned()
                    .collect();
                (*t, changed)
            })
            .collect(),
    });
    PublishedResources {
        generation,
        by_type,
        changes,
    }
}

fn type_url() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(TYPE_URLS.to_vec()).prop_map(str::to_string),
        1 => hostile_text(),
        1 => (1usize..200_000).prop_map(|n| "t".repeat(n)),
    ]
}

/// Text a client controls: usually short, sometimes far over the cap.
fn client_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{1,3}",
        1 => hostile_text(),
        1 => (1usize..300_000, prop::sample::select(vec!["x", "é", "\u{1F600}"]))
            .prop_map(|(n, unit)| unit.repeat(n)),
    ]
}

/// Which nonce a request echoes: none (a subscription), the latest the client got for the
/// type (a current ACK), any one it got before (stale, or of another type), or text the
/// server never sent.
#[derive(Debug, Clone)]
enum Nonce {
    Empty,
    Latest,
    Earlier(prop::sample::Index),
    Text(String),
}

fn nonce() -> impl Strategy<Value = Nonce> {
    prop_oneof![
        4 => Just(Nonce::Empty),
        3 => Just(Nonce::Latest),
        2 => any::<prop::sample::Index>().prop_map(Nonce::Earlier),
        1 => client_text().prop_map(Nonce::Text),
    ]
}

/// A request, its nonce still to be picked from what the client has received.
#[derive(Debug, Clone)]
struct Request {
    request: DeltaDiscoveryRequest,
    nonce: Nonce,
}

#[derive(Debug, Clone)]
enum Step {
    Request(Box<Request>),
    Publish(BTreeMap<&'static str, BTreeMap<String, u8>>),
}

fn request() -> impl Strategy<Value = Request> {
    let keys = || prop::collection::vec(prop::sample::select(KEYS).prop_map(str::to_string), 0..3);
    let initial = prop::collection::btree_map(
        prop::sample::select(NAMES).prop_map(str::to_string),
        (0u8..6).prop_map(|v| {
            resource("", String::new(), Vec::new(), vec![v])
                .resource
                .version
                .clone()
        }),
        0..3,
    );
    let status = prop::option::of(client_text().prop_map(|message| Status {
        code: 3,
        message,
        details: Vec::new(),
    }));
    (
        (type_url(), prop::option::of(client_text())),
        (keys(), keys(), initial),
        (nonce(), status),
    )
        .prop_map(
            |((type_url, node), (subscribe, unsubscribe, initial), (nonce, error_detail))| {
                Request {
                    request: DeltaDiscoveryRequest {
                        node: node.map(|id| Node {
                            id,
                            ..Node::default()
                        }),
                        type_url,
                        resource_names_subscribe: subscribe,
                        resource_names_unsubscribe: unsubscribe,
                        initial_resource_versions: initial.into_iter().collect(),
                        response_nonce: String::new(),
                        error_detail,
                    },
                    nonce,
                }
            },
        )
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => request().prop_map(|r| Step::Request(Box::new(r))),
        1 => publish().prop_map(Step::Publish),
    ];
    prop::collection::vec(step, 1..16)
}

/// What a request asked of the server, as the client sees it.
#[derive(Debug, Default)]
struct Asked {
    /// The request must be answered: a subscription, or an ACK/NACK changing one.
    answered: bool,
    /// It opened the type's subscription.
    first: bool,
    /// Keys it subscribed to and left subscribed: each must be answered.
    keys: BTreeSet<String>,
}

/// The client: what it asked for, what it holds, and the nonces it got, per type.
#[derive(Debug, Default)]
struct Client {
    wildcard: BTreeMap<String, bool>,
    keys: BTreeMap<String, BTreeSet<String>>,
    held: BTreeMap<String, BTreeMap<String, String>>,
    nonces: BTreeMap<String, Vec<String>>,
    last_nonce: u64,
}

impl Client {
    /// The nonce `choice` names, from what this client has received.
    fn nonce(&self, type_url: &str, choice: &Nonce) -> String {
        match choice {
            Nonce::Empty => String::new(),
            // "0" is never sent (nonces start at 1): an ACK of nothing.
            Nonce::Latest => self
                .nonces
                .get(type_url)
                .and_then(|n| n.last().cloned())
                .unwrap_or_else(|| "0".to_string()),
            Nonce::Earlier(at) => {
                let all: Vec<&String> = self.nonces.values().flatten().collect();
                if all.is_empty() {
                    "0".to_string()
                } else {
                    all[at.index(all.len())].clone()
                }
            }
            Nonce::Text(text) => text.clone(),
        }
    }

    /// Mirrors what the request asks of the server (Delta xDS semantics: subscription
    /// changes stand in any request, ACKs and NACKs included, whatever their nonce).
    fn send(&mut self, r: &DeltaDiscoveryRequest) -> Asked {
        let changes =
            !r.resource_names_subscribe.is_empty() || !r.resource_names_unsubscribe.is_empty();
        if !TYPE_URLS.contains(&r.type_url.as_str()) || (!r.response_nonce.is_empty() && !changes) {
            return Asked::default();
        }
        let t = r.type_url.clone();
        let first = !self.wildcard.contains_key(&t);
        if first {
            let wildcard = r.resource_names_subscribe.is_empty()
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            self.wildcard.insert(t.clone(), wildcard);
            let initial = r.initial_resource_versions.clone().into_iter().collect();
            self.held.insert(t.clone(), initial);
        }
        let keys = self.keys.entry(t.clone()).or_default();
        let subscribed: BTreeSet<String> = r
            .resource_names_subscribe
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        keys.extend(subscribed.iter().cloned());
        for n in &r.resource_names_unsubscribe {
            if n == "*" {
                self.wildcard.insert(t.clone(), false);
            } else {
                keys.remove(n);
            }
        }
        Asked {
            answered: true,
            first,
            keys: subscribed.intersection(keys).cloned().collect(),
        }
    }

    /// Applies a response. Only subscribed types, bodies of the response's type, nonces
    /// increasing, nothing both sent and removed; a resource the client already holds at
    /// that version only when `asked` named it (a subscription is answered in full).
    fn receive(
        &mut self,
        r: &DeltaDiscoveryResponse,
        asked: &BTreeSet<String>,
    ) -> Result<(), TestCaseError> {
        let held = self.held.get_mut(&r.type_url);
        prop_assert!(held.is_some(), "sent unsubscribed type {}", r.type_url);
        let held = held.unwrap();
        let nonce: u64 = r.nonce.parse().map_err(|_| TestCaseError::fail("nonce"))?;
        prop_assert!(
            nonce > self.last_nonce,
            "nonce {} after {}",
            nonce,
            self.last_nonce
        );
        self.last_nonce = nonce;
        self.nonces
            .entry(r.type_url.clone())
            .or_default()
            .push(r.nonce.clone());
        let mut sent = BTreeSet::new();
        for resource in &r.resources {
            let body = resource.resource.as_ref().map(|a| a.type_url.as_str());
            prop_assert_eq!(body, Some(r.type_url.as_str()));
            prop_assert!(sent.insert(&resource.name), "{} sent twice", resource.name);
            let named = asked.contains(&resource.name)
                || resource.aliases.iter().any(|a| asked.contains(a));
            prop_assert!(
                named || held.get(&resource.name) != Some(&resource.version),
                "{} resent at the version held",
                resource.name
            );
            held.insert(resource.name.clone(), resource.version.clone());
        }
        for name in &r.removed_resources {
            prop_assert!(!sent.contains(name), "{} sent and removed", name);
            held.remove(name);
        }
        Ok(())
    }

    /// Holds exactly what it asked for of every subscribed type.
    fn check(&self, published: &PublishedResources) -> Result<(), TestCaseError> {
        for (t, held) in &self.held {
            let keys = &self.keys[t];
            let wanted: BTreeMap<String, String> = published
                .of(t)
                .into_iter()
                .flatten()
                .filter(|(n, p)| {
                    self.wildcard[t]
                        || keys.contains(*n)
                        || p.resource.aliases.iter().any(|a| keys.contains(a))
                })
                .map(|(n, p)| (n.clone(), p.resource.version.clone()))
                .collect();
            prop_assert_eq!(held, &wanted, "type {}", t);
        }
        Ok(())
    }
}

/// Every key a request subscribed to is answered: each published resource it names is in
/// the response (unless the subscription opened with the client holding it at that version),
/// and a key naming none is in `removed_resources`.
fn check_answered(
    asked: &Asked,
    response: &DeltaDiscoveryResponse,
    initial: &BTreeMap<String, String>,
    published: &PublishedResources,
) -> Result<(), TestCaseError> {
    let current = published
        .of(&response.type_url)
        .cloned()
        .unwrap_or_default();
    for key in &asked.keys {
        let named: Vec<_> = current
            .iter()
            .filter(|(n, p)| *n == key || p.resource.aliases.contains(key))
            .collect();
        if named.is_empty() {
            prop_assert!(
                response.removed_resources.contains(key),
                "{} named nothing and was not answered",
                key
            );
        }
        for (name, p) in named {
            let sent = response.resources.iter().any(|r| &r.name == name);
            let had = asked.first && initial.get(name) == Some(&p.resource.version);
            prop_assert!(sent || had, "{} (asked as {}) not sent", name, key);
        }
    }
    Ok(())
}

/// The longest a capped text can be: the cap, and the note saying how much was dropped.
const CAPPED: usize = MAX_CLIENT_TEXT + "… [18446744073709551615 more bytes dropped]".len();

fn check_capped(kept: &str, sent: &str) -> Result<(), TestCaseError> {
    prop_assert!(kept.len() <= CAPPED);
    if sent.len() <= MAX_CLIENT_TEXT {
        prop_assert_eq!(kept, sent);
    } else {
        prop_assert!(sent.starts_with(kept.split("… [").next().unwrap_or_default()));
    }
    Ok(())
}

/// How the stream classified a request of a known type, against what was sent.
fn check_received(received: &Received, sent: &DeltaDiscoveryRequest) -> Result<(), TestCaseError> {
    let known = TYPE_URLS.contains(&sent.type_url.as_str());
    match received {
        Received::UnknownType { type_url } => {
            prop_assert!(!known);
            check_capped(type_url, &sent.type_url)?;
        }
        Received::Ack { nonce, .. } => {
            prop_assert!(known && sent.error_detail.is_none());
            check_capped(nonce, &sent.response_nonce)?;
        }
        Received::Nack { nonce, message, .. } => {
            prop_assert!(known && !sent.response_nonce.is_empty());
            check_capped(nonce, &sent.response_nonce)?;
            let detail = sent.error_detail.as_ref().map(|s| s.message.as_str());
            check_capped(message, detail.unwrap_or_default())?;
        }
        Received::Subscribed { .. } => {
            prop_assert!(known && sent.response_nonce.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn fuzz_xds_stream(first in publish(), steps in steps()) {
        let mut generation = 1;
        let mut published = Arc::new(encode(&first, generation, None));
        let mut stream = XdsStream::new(published.clone());
        let mut client = Client::default();
        let mut first_node = None;
        for step in steps {
            match step {
                Step::Request(request) => {
                    let Request { mut request, nonce } = *request;
                    request.response_nonce = client.nonce(&request.type_url, &nonce);
                    let asked = client.send(&request);
                    let sent = request.clone();
                    let received = bounded("a request", || stream.on_request(request))?;
                    // The answer may come in pieces; the client reads them all.
                    let pieces = bounded("its answer", || stream.responses())?;
                    check_received(&received, &sent)?;
                    // A subscription, or an ACK or NACK changing one, is always answered;
                    // an ACK or NACK alone (current, stale or made up) never is.
                    prop_assert_eq!(!pieces.is_empty(), asked.answered, "{:?}", received);
                    let response = joined(pieces);
                    if let Some(response) = &response {
                        prop_assert_eq!(&response.type_url, &sent.type_url);
                        let initial = sent.initial_resource_versions.clone().into_iter().collect();
                        check_answered(&asked, response, &initial, &published)?;
                        client.receive(response, &asked.keys)?;
                    }
                    if first_node.is_none() {
                        first_node = sent.node.as_ref().map(|n| n.id.clone());
                    }
                    if let Some(first) = &first_node {
                        check_capped(stream.node().unwrap_or_default(), first)?;
                    }
                }
                Step::Publish(content) => {
                    generation += 1;
                    let before = previous(&published, generation);
                    published = Arc::new(encode(&content, generation, before));
                    stream.on_publish(published.clone());
                    let responses = bounded("a publish", || stream.responses())?;
                    for response in &responses {
                        let empty = response.resources.is_empty()
                            && response.removed_resources.is_empty();
                        prop_assert!(!empty, "an empty push");
                        client.receive(response, &BTreeSet::new())?;
                    }
                }
            }
            client.check(&published)?;
        }
    }
}

/// The pieces of one answer as one response (the last piece's nonce, which the client
/// ACKs), checked against what the answer must hold; `None` for no answer. Every piece
/// must be of one type.
fn joined(pieces: Vec<DeltaDiscoveryResponse>) -> Option<DeltaDiscoveryResponse> {
    let mut pieces = pieces.into_iter();
    let mut whole = pieces.next()?;
    for piece in pieces {
        assert_eq!(piece.type_url, whole.type_url, "one answer, one type");
        whole.resources.extend(piece.resources);
        whole.removed_resources.extend(piece.removed_resources);
        whole.nonce = piece.nonce;
    }
    Some(whole)
}

/// The publish before, for computing changes: istiod knows it except after a restart of
/// its publisher (every fifth generation here), when streams compare everything.
fn previous(before: &PublishedResources, generation: u64) -> Option<&PublishedResources> {
    (!generation.is_multiple_of(5)).then_some(before)
}
