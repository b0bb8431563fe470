//! Responses computed late and bounded: a large state split into pieces whose union is the
//! whole, the response that makes a client ready coming after everything, publishes a client
//! did not read subsumed by what it is sent later.

use std::collections::BTreeMap;
use std::sync::Arc;

use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use dataplane::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;

use super::{Held, MAX_RESPONSE_BYTES, XdsStream};
use crate::xds::resources::{Changes, PublishedResources, resource};

/// `addresses` Address resources of `size` bytes and `policies` Authorization ones of 100;
/// a resource's body depends on its name and on `variant` (a variant changes every version).
pub(crate) fn publish(
    generation: u64,
    addresses: usize,
    size: usize,
    policies: usize,
    variant: u64,
    previous: Option<&PublishedResources>,
) -> Arc<PublishedResources> {
    let body = |name: &str, size: usize| -> Vec<u8> {
        let seed = format!("{name}#{variant}");
        let mut body = seed.repeat(size / seed.len() + 1).into_bytes();
        body.truncate(size.max(seed.len()));
        body
    };
    let mut by_type = BTreeMap::new();
    let named = |type_url: &'static str, prefix: &str, count: usize, size: usize| {
        (0..count)
            .map(|i| {
                let name = format!("{prefix}-{i:05}");
                let value = body(&name, size);
                (name.clone(), resource(type_url, name, Vec::new(), value))
            })
            .collect::<BTreeMap<_, _>>()
    };
    by_type.insert(
        ADDRESS_TYPE_URL,
        named(ADDRESS_TYPE_URL, "Kubernetes//Pod/ns/pod", addresses, size),
    );
    by_type.insert(
        AUTHORIZATION_TYPE_URL,
        named(AUTHORIZATION_TYPE_URL, "ns/policy", policies, 100),
    );
    let changes = previous.map(|before| Changes::between(before, &by_type));
    Arc::new(PublishedResources {
        generation,
        by_type,
        changes,
    })
}

pub(crate) fn subscribe(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// What a client holds: (type URL, name) → version, built from the responses it applied.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Client {
    pub held: BTreeMap<(String, String), String>,
    /// The types it has had a response of.
    pub answered: Vec<String>,
}

impl Client {
    pub fn apply(&mut self, response: &DeltaDiscoveryResponse) {
        for r in &response.resources {
            self.held.insert(
                (response.type_url.clone(), r.name.clone()),
                r.version.clone(),
            );
        }
        for name in &response.removed_resources {
            self.held.remove(&(response.type_url.clone(), name.clone()));
        }
        if !self.answered.contains(&response.type_url) {
            self.answered.push(response.type_url.clone());
        }
    }

    /// What a client holding all of `published` of both ztunnel types holds.
    pub fn expected(published: &PublishedResources) -> BTreeMap<(String, String), String> {
        [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]
            .into_iter()
            .flat_map(|t| {
                published
                    .of(t)
                    .into_iter()
                    .flatten()
                    .map(move |(n, p)| ((t.to_string(), n.clone()), p.resource.version.clone()))
            })
            .collect()
    }
}

/// The bytes of resources (and removed names) a response carries.
fn payload(response: &DeltaDiscoveryResponse) -> usize {
    response
        .resources
        .iter()
        .map(Message::encoded_len)
        .chain(response.removed_resources.iter().map(String::len))
        .sum()
}

#[test]
fn a_large_state_is_split_into_bounded_responses_whose_union_is_the_whole_state() {
    // About 3 MiB of addresses, a few policies.
    let state = publish(1, 3_000, 1_024, 5, 0, None);
    let mut stream = XdsStream::new(state.clone());
    stream.on_request(subscribe(ADDRESS_TYPE_URL));
    stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
    let responses = stream.responses();

    let largest = state.of(ADDRESS_TYPE_URL).into_iter().flatten();
    let largest = largest
        .map(|(_, p)| p.resource.encoded_len())
        .max()
        .unwrap_or(0);
    let addresses: Vec<&DeltaDiscoveryResponse> = responses
        .iter()
        .filter(|r| r.type_url == ADDRESS_TYPE_URL)
        .collect();
    assert!(
        addresses.len() >= 3_000 * 1_024 / MAX_RESPONSE_BYTES,
        "split: {} responses",
        addresses.len()
    );
    for r in &addresses {
        assert!(
            payload(r) < MAX_RESPONSE_BYTES + largest,
            "a response of {} bytes",
            payload(r)
        );
    }
    // Each name once, and together every one.
    let names: Vec<&str> = addresses
        .iter()
        .flat_map(|r| r.resources.iter().map(|x| x.name.as_str()))
        .collect();
    let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(distinct.len(), names.len(), "a name sent twice");
    let mut client = Client::default();
    responses.iter().for_each(|r| client.apply(r));
    assert_eq!(client.held, Client::expected(&state));
    let mut nonces: Vec<&str> = responses.iter().map(|r| r.nonce.as_str()).collect();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), responses.len(), "a nonce per response");
    // Nothing more to say until the next publish.
    assert!(stream.next_response().is_none());
}

/// Applies `responses` to a fresh client and returns what it held the moment it had a
/// response of every type in `types` (ztunnel's readiness).
fn held_when_ready(
    responses: &[DeltaDiscoveryResponse],
    types: &[&str],
) -> Option<BTreeMap<(String, String), String>> {
    let mut client = Client::default();
    for r in responses {
        client.apply(r);
        if types.iter().all(|t| client.answered.iter().any(|a| a == t)) {
            return Some(client.held);
        }
    }
    None
}

#[test]
fn the_response_that_makes_a_client_ready_comes_after_the_whole_state() {
    let both = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];
    // Many addresses, few policies: the addresses in pieces, then the policies whole.
    let state = publish(1, 2_000, 1_024, 3, 0, None);
    let mut stream = XdsStream::new(state.clone());
    both.iter().for_each(|t| {
        stream.on_request(subscribe(t));
    });
    let responses = stream.responses();
    assert!(responses.len() > 2, "the addresses are split");
    assert_eq!(
        responses.last().map(|r| r.type_url.as_str()),
        Some(AUTHORIZATION_TYPE_URL)
    );
    assert_eq!(
        held_when_ready(&responses, &both),
        Some(Client::expected(&state))
    );

    // Few addresses, many large policies: the policies are split, the addresses whole, last.
    let state = publish(1, 10, 100, 2_000, 0, None);
    let big_policies = {
        let mut by_type = state.by_type.clone();
        for p in by_type
            .get_mut(AUTHORIZATION_TYPE_URL)
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            *p = resource(
                AUTHORIZATION_TYPE_URL,
                p.resource.name.clone(),
                Vec::new(),
                vec![7; 1_024],
            );
        }
        Arc::new(PublishedResources {
            generation: 1,
            by_type,
            changes: None,
        })
    };
    let mut stream = XdsStream::new(big_policies.clone());
    both.iter().for_each(|t| {
        stream.on_request(subscribe(t));
    });
    let responses = stream.responses();
    let policy_responses = responses
        .iter()
        .filter(|r| r.type_url == AUTHORIZATION_TYPE_URL)
        .count();
    assert!(policy_responses > 1, "the policies are split");
    assert_eq!(
        responses.last().map(|r| r.type_url.as_str()),
        Some(ADDRESS_TYPE_URL)
    );
    assert_eq!(
        held_when_ready(&responses, &both),
        Some(Client::expected(&big_policies))
    );
}

#[test]
fn a_stream_of_one_type_gets_its_first_response_whole_and_later_pushes_in_pieces() {
    // A waypoint-like client of one type: 2,000 policies, about 300 KiB.
    let first = publish(1, 0, 0, 2_000, 0, None);
    let mut stream = XdsStream::new(first.clone());
    stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
    let responses = stream.responses();
    let [whole] = responses.as_slice() else {
        panic!("one response: {}", responses.len())
    };
    assert_eq!(whole.resources.len(), 2_000);

    // Every policy changes: the push is split.
    let second = publish(2, 0, 0, 2_000, 1, Some(&first));
    stream.on_publish(second.clone());
    let pushes = stream.responses();
    assert!(pushes.len() > 1, "a large push in pieces");
    assert!(pushes.iter().all(|p| payload(p) < 2 * MAX_RESPONSE_BYTES));
    let mut client = Client::default();
    responses
        .iter()
        .chain(&pushes)
        .for_each(|r| client.apply(r));
    assert_eq!(client.held, Client::expected(&second));
}

#[test]
fn addresses_subscribed_alone_come_in_pieces_and_readiness_still_comes_last() {
    let both = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];
    let state = publish(1, 2_000, 1_024, 3, 0, None);
    let mut stream = XdsStream::new(state.clone());
    // The server computes a response before the client's second request arrives.
    stream.on_request(subscribe(ADDRESS_TYPE_URL));
    let first = stream.next_response().expect("a first piece");
    assert!(
        payload(&first) < 2 * MAX_RESPONSE_BYTES,
        "{}",
        payload(&first)
    );
    stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
    let mut responses = vec![first];
    responses.extend(stream.responses());
    assert!(
        responses
            .iter()
            .all(|r| payload(r) < MAX_RESPONSE_BYTES + 2_000)
    );
    assert_eq!(
        responses.last().map(|r| r.type_url.as_str()),
        Some(AUTHORIZATION_TYPE_URL)
    );
    assert_eq!(
        held_when_ready(&responses, &both),
        Some(Client::expected(&state))
    );
}

#[test]
fn publishes_while_the_client_is_not_read_are_subsumed_by_one_diff_against_the_latest() {
    let mut published = publish(1, 1_000, 1_024, 5, 0, None);
    let mut stream = XdsStream::new(published.clone());
    stream.on_request(subscribe(ADDRESS_TYPE_URL));
    stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
    let mut client = Client::default();
    // The client takes two pieces of its initial state, then stops reading.
    for _ in 0..2 {
        let r = stream.next_response().expect("a piece");
        client.apply(&r);
    }
    // 50 publishes meanwhile: addresses come and go, every one changes, policies too.
    for g in 2..52u64 {
        let addresses = 900 + (g as usize * 7) % 200;
        let next = publish(
            g,
            addresses,
            1_024,
            3 + (g as usize % 4),
            g,
            Some(&published),
        );
        stream.on_publish(next.clone());
        published = next;
    }
    // Reading again: only what the latest publish needs, computed now.
    let rest = stream.responses();
    rest.iter().for_each(|r| client.apply(r));
    assert_eq!(client.held, Client::expected(&published));
    let needed = 1_100 * 1_100 / MAX_RESPONSE_BYTES + 3;
    assert!(
        rest.len() <= needed,
        "{} responses for one state of ~1 MiB",
        rest.len()
    );

    // Up to date, then 50 small publishes unread: one response per type at most.
    for g in 52..102u64 {
        let mut next = (*published).clone();
        next.generation = g;
        let name = format!("ns/policy-{:05}", g % 3);
        if let Some(p) = next
            .by_type
            .get_mut(AUTHORIZATION_TYPE_URL)
            .and_then(|m| m.get_mut(&name))
        {
            *p = resource(AUTHORIZATION_TYPE_URL, name, Vec::new(), vec![g as u8; 50]);
        }
        next.changes = Some(Changes::between(&published, &next.by_type));
        let next = Arc::new(next);
        stream.on_publish(next.clone());
        published = next;
    }
    let rest = stream.responses();
    assert_eq!(rest.len(), 1, "the policies that differ, in one response");
    rest.iter().for_each(|r| client.apply(r));
    assert_eq!(client.held, Client::expected(&published));
}

/// Where a resource's encoded body lives.
fn body(resource: &Resource) -> Option<*const u8> {
    resource.resource.as_ref().map(|any| any.value.as_ptr())
}

#[test]
fn every_stream_sends_the_publish_s_encoding_not_a_copy_of_it() {
    let state = publish(1, 500, 1_024, 3, 0, None);
    let synced = || {
        let mut stream = XdsStream::new(state.clone());
        stream.on_request(subscribe(ADDRESS_TYPE_URL));
        stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
        stream.responses()
    };
    let (one, two) = (synced(), synced());
    let mut compared = 0;
    for (a, b) in one.iter().zip(&two) {
        for (x, y) in a.resources.iter().zip(&b.resources) {
            let published = state
                .of(&a.type_url)
                .and_then(|m| m.get(&x.name))
                .expect("a published resource");
            assert!(body(x).is_some());
            assert_eq!(body(x), body(&published.resource), "{}", x.name);
            assert_eq!(body(y), body(&published.resource), "{}", y.name);
            compared += 1;
        }
    }
    assert_eq!(compared, 503);
}

#[test]
fn a_stream_in_sync_holds_a_pointer_to_the_publish_not_a_copy_of_it() {
    let state = publish(1, 2_000, 256, 3, 0, None);
    let before = Arc::strong_count(&state);
    let streams: Vec<XdsStream> = (0..10)
        .map(|_| {
            let mut stream = XdsStream::new(state.clone());
            stream.on_request(subscribe(ADDRESS_TYPE_URL));
            stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
            stream.responses();
            stream
        })
        .collect();
    for stream in &streams {
        for (type_url, sub) in &stream.subscriptions {
            assert!(sub.held.is(&state), "{type_url}: {:?}", sub.held);
            assert!(sub.progress.is_none());
        }
    }
    // One for the stream's latest publish, one per type for what its client holds: no
    // name → version map, whatever the size of the configuration.
    assert_eq!(Arc::strong_count(&state), before + 10 * 3);
}

/// A deterministic pseudo-random number from `seed` (splitmix64).
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Publish `generation` of a churning cluster: of 300 possible addresses, about a fifth absent
/// and a third changed since the publish before; policies come and go too.
fn churned(generation: u64, previous: Option<&PublishedResources>) -> Arc<PublishedResources> {
    let named = |type_url: &'static str, prefix: &str, count: u64, size: usize| {
        (0..count)
            .filter(|i| !mix(i ^ (generation << 20)).is_multiple_of(5))
            .map(|i| {
                let name = format!("{prefix}-{i:05}");
                let variant = mix(i ^ (generation << 32)).is_multiple_of(3);
                let epoch = if variant { generation } else { generation / 4 };
                let seed = format!("{name}#{epoch}");
                let mut value = seed.repeat(size / seed.len() + 1).into_bytes();
                value.truncate(size);
                (name.clone(), resource(type_url, name, Vec::new(), value))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let mut by_type = BTreeMap::new();
    by_type.insert(
        ADDRESS_TYPE_URL,
        named(ADDRESS_TYPE_URL, "Kubernetes//Pod/ns/pod", 300, 1_000),
    );
    by_type.insert(
        AUTHORIZATION_TYPE_URL,
        named(AUTHORIZATION_TYPE_URL, "ns/policy", 8, 100),
    );
    let changes = previous.map(|before| Changes::between(before, &by_type));
    Arc::new(PublishedResources {
        generation,
        by_type,
        changes,
    })
}

#[test]
fn reads_and_publishes_interleaved_end_with_the_latest_state_and_send_nothing_twice() {
    for seed in 0..10u64 {
        let mut published = churned(1, None);
        let mut stream = XdsStream::new(published.clone());
        stream.on_request(subscribe(ADDRESS_TYPE_URL));
        stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
        let mut client = Client::default();
        let mut generation = 1;
        let take = |stream: &mut XdsStream, client: &mut Client| -> bool {
            let Some(r) = stream.next_response() else {
                return false;
            };
            // Only what the client lacks: a changed version, or a name it holds removed.
            for x in &r.resources {
                let key = (r.type_url.clone(), x.name.clone());
                assert_ne!(client.held.get(&key), Some(&x.version), "{} again", x.name);
            }
            for name in &r.removed_resources {
                let key = (r.type_url.clone(), name.clone());
                assert!(client.held.contains_key(&key), "{name} removed, not held");
            }
            client.apply(&r);
            true
        };
        for step in 0..60u64 {
            let roll = mix(seed << 8 | step);
            if roll.is_multiple_of(3) {
                generation += 1;
                let next = churned(generation, Some(&published));
                stream.on_publish(next.clone());
                published = next;
            } else {
                for _ in 0..roll % 4 {
                    take(&mut stream, &mut client);
                }
            }
            // What a stream keeps is one level deep, whatever it missed.
            for sub in stream.subscriptions.values() {
                if let Held::Split { above, .. } = &sub.held {
                    assert!(!matches!(**above, Held::Split { .. }));
                }
            }
        }
        while take(&mut stream, &mut client) {}
        assert_eq!(
            client.held,
            Client::expected(&published),
            "seed {seed}, generation {generation}"
        );
    }
}

#[test]
fn a_subscription_changed_half_way_through_a_large_state_ends_with_what_it_asks_for() {
    let state = publish(1, 1_000, 1_024, 0, 0, None);
    let mut stream = XdsStream::new(state.clone());
    stream.on_request(subscribe(ADDRESS_TYPE_URL));
    stream.on_request(subscribe(AUTHORIZATION_TYPE_URL));
    let mut client = Client::default();
    for _ in 0..2 {
        let r = stream.next_response().expect("a piece");
        assert_eq!(r.type_url, ADDRESS_TYPE_URL);
        client.apply(&r);
    }
    assert!(client.held.len() > 10, "{}", client.held.len());
    // On-demand from now on: two names, one of them held already, one not yet sent.
    let wanted = [
        "Kubernetes//Pod/ns/pod-00001",
        "Kubernetes//Pod/ns/pod-00900",
    ];
    let mut request = subscribe(ADDRESS_TYPE_URL);
    request.resource_names_subscribe = wanted.iter().map(|n| n.to_string()).collect();
    request.resource_names_unsubscribe = vec!["*".into()];
    stream.on_request(request);
    let rest = stream.responses();
    rest.iter().for_each(|r| client.apply(r));
    let expected: BTreeMap<(String, String), String> = wanted
        .iter()
        .filter_map(|n| {
            let p = state.of(ADDRESS_TYPE_URL)?.get(*n)?;
            Some((
                (ADDRESS_TYPE_URL.to_string(), n.to_string()),
                p.resource.version.clone(),
            ))
        })
        .collect();
    assert_eq!(client.held, expected);
    assert!(rest.len() <= 2, "{} responses", rest.len());
}

/// Workload `w` with address alias `net/10.0.0.1`, published once.
fn one_workload() -> XdsStream {
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

fn on_demand(nonce: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

fn sent(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

/// Found by `fuzz_xds_stream`: an ACK that also subscribes (Envoy sends them so) had its
/// subscription dropped, and the client waited for a resource that never came.
#[test]
fn an_ack_carrying_a_subscription_is_answered() {
    let mut stream = one_workload();
    stream.on_request(on_demand("", &["nothing"]));
    let nonce = stream.next_response().unwrap().nonce;
    let received = stream.on_request(on_demand(&nonce, &["net/10.0.0.1"]));
    assert!(matches!(received, super::Received::Ack { .. }));
    assert_eq!(sent(&stream.next_response().unwrap()), ["w"]);
    // A stale nonce, or one never sent, pairs with nothing; the subscription stands.
    stream.on_request(on_demand("999", &["w"]));
    assert_eq!(sent(&stream.next_response().unwrap()), ["w"]);
    stream.on_request(on_demand(&nonce, &[]));
    assert!(
        stream.next_response().is_none(),
        "a plain ACK is not answered"
    );
}

/// Delta xDS: a name subscribed again is sent again, even though the client is believed
/// to hold it (it may have dropped it before its unsubscribe arrived).
#[test]
fn a_name_subscribed_again_is_sent_again() {
    let mut stream = one_workload();
    stream.on_request(on_demand("", &["w"]));
    assert_eq!(sent(&stream.next_response().unwrap()), ["w"]);
    stream.on_request(on_demand("", &["net/10.0.0.1"]));
    assert_eq!(sent(&stream.next_response().unwrap()), ["w"]);
    stream.on_request(on_demand("", &["nothing"]));
    assert_eq!(
        stream.next_response().unwrap().removed_resources,
        ["nothing"]
    );
    stream.on_request(on_demand("", &["nothing"]));
    assert_eq!(
        stream.next_response().unwrap().removed_resources,
        ["nothing"],
        "absent, said again"
    );
}
