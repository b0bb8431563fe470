//! The Delta ADS stream, message by message (wire facts §1.5).

use std::collections::BTreeMap;
use std::sync::Arc;

use control::snapshot::WaypointProxies;
use control::xds::{Caller, PublishedResources, Received, XdsStream};
use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use dataplane::xds::proto::google::rpc::Status;
use dataplane::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use crate::common::*;

/// The fixture cluster on one fixed subnet, so only `policies` differ between publishes.
fn published(policies: &str, generation: u64) -> Arc<PublishedResources> {
    Arc::new(PublishedResources::encode(
        &snapshot([10, 1, 1], policies),
        generation,
    ))
}

fn subscribe(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: "ztunnel~10.0.0.1~ztunnel-a.istio-system~istio-system.svc.cluster.local".into(),
            ..Node::default()
        }),
        type_url: type_url.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// `request` handled, then the stream's next response (as the server computes it once the
/// transport can take it), and what the request was.
fn ask(
    stream: &mut XdsStream,
    request: DeltaDiscoveryRequest,
) -> (Option<DeltaDiscoveryResponse>, Received) {
    let received = stream.on_request(request);
    (stream.next_response(), received)
}

/// A publish, and every response it leads to.
fn push(stream: &mut XdsStream, resources: Arc<PublishedResources>) -> Vec<DeltaDiscoveryResponse> {
    stream.on_publish(resources);
    stream.responses()
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

#[test]
fn both_types_are_answered_even_when_empty() {
    let empty = Arc::new(PublishedResources::encode(&Default::default(), 0));
    let mut stream = XdsStream::new(empty);
    for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        let (response, received) = ask(&mut stream, subscribe(type_url));
        let response = response.expect("an initial response, even with nothing in it");
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
        assert_eq!(response.type_url, type_url);
        assert!(!response.nonce.is_empty());
        assert_eq!(
            received,
            Received::Subscribed {
                type_url: type_url.into()
            }
        );
    }
    assert!(stream.node().unwrap().starts_with("ztunnel~"));
}

#[test]
fn initial_push_has_everything_then_only_changes() {
    let first = published(&allow_only("cluster.local/ns/shop/sa/web"), 1);
    let mut stream = XdsStream::new(first.clone());
    let (addresses, _) = ask(&mut stream, subscribe(ADDRESS_TYPE_URL));
    let names: Vec<_> = addresses
        .unwrap()
        .resources
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/shop/echo-0",
            "Kubernetes//Pod/shop/web-0",
            "shop/echo.shop.svc.cluster.local"
        ]
    );
    let (policies, _) = ask(&mut stream, subscribe(AUTHORIZATION_TYPE_URL));
    assert_eq!(policies.unwrap().resources[0].name, "shop/echo-policy");

    // The same content again: nothing to send.
    assert!(push(&mut stream, first.clone()).is_empty());

    // Only the policy changed: one Authorization response with just it.
    let second = published(&allow_only("cluster.local/ns/shop/sa/other"), 2);
    let pushes = push(&mut stream, second);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(pushes[0].resources.len(), 1);

    // The policy is deleted: reported removed.
    let third = published("", 3);
    let pushes = push(&mut stream, third);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].removed_resources, ["shop/echo-policy"]);
    assert!(pushes[0].resources.is_empty());
}

#[test]
fn reconnect_with_versions_gets_only_what_changed_and_what_went() {
    let current = published(&allow_only("cluster.local/ns/shop/sa/web"), 1);
    let held = current.of(ADDRESS_TYPE_URL).unwrap();
    let mut versions: BTreeMap<String, String> = held
        .iter()
        .map(|(n, p)| (n.clone(), p.resource.version.clone()))
        .collect();
    // The client holds one stale version and a workload istiod no longer has.
    versions.insert("Kubernetes//Pod/shop/web-0".into(), "stale".into());
    versions.insert("Kubernetes//Pod/shop/gone-0".into(), "1".into());
    let mut stream = XdsStream::new(current);
    let mut request = subscribe(ADDRESS_TYPE_URL);
    request.initial_resource_versions = versions;
    let (response, _) = ask(&mut stream, request);
    let response = response.unwrap();
    let sent: Vec<_> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["Kubernetes//Pod/shop/web-0"]);
    assert_eq!(response.removed_resources, ["Kubernetes//Pod/shop/gone-0"]);
}

#[test]
fn acks_and_nacks_are_told_apart() {
    let mut stream = XdsStream::new(published("", 1));
    let (response, _) = ask(&mut stream, subscribe(AUTHORIZATION_TYPE_URL));
    let nonce = response.unwrap().nonce;
    let (none, received) = ask(&mut stream, ack(AUTHORIZATION_TYPE_URL, &nonce));
    assert!(none.is_none());
    assert!(matches!(received, Received::Ack { .. }));
    let mut nack = ack(AUTHORIZATION_TYPE_URL, &nonce);
    nack.error_detail = Some(Status {
        code: 0,
        message: "shop/p: unknown action 7".into(),
        details: Vec::new(),
    });
    let (none, received) = ask(&mut stream, nack);
    assert!(none.is_none());
    assert_eq!(
        received,
        Received::Nack {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            nonce,
            message: "shop/p: unknown action 7".into()
        }
    );
    let (none, received) = ask(
        &mut stream,
        subscribe("type.googleapis.com/envoy.config.Cluster"),
    );
    assert!(none.is_none());
    assert!(matches!(received, Received::UnknownType { .. }));
}

#[test]
fn on_demand_keys_match_by_alias_and_unknown_keys_are_answered() {
    let net = subnet();
    let current = Arc::new(PublishedResources::encode(&snapshot(net, ""), 1));
    let mut stream = XdsStream::new(current);
    let mut request = subscribe(ADDRESS_TYPE_URL);
    request.resource_names_subscribe = vec!["*".into()];
    request.resource_names_unsubscribe = vec!["*".into()];
    let (response, _) = ask(&mut stream, request);
    assert!(
        response.unwrap().resources.is_empty(),
        "subscribed to nothing"
    );

    let mut demand = subscribe(ADDRESS_TYPE_URL);
    demand.node = None;
    demand.resource_names_subscribe = vec![format!("/{}", ip(net, 3)), "/10.9.9.9".into()];
    let (response, _) = ask(&mut stream, demand);
    let response = response.unwrap();
    let sent: Vec<_> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["Kubernetes//Pod/shop/echo-0"]);
    assert_eq!(response.removed_resources, ["/10.9.9.9"]);
}

#[test]
fn waypoint_configs_go_to_waypoints_only() {
    use dataplane::xds::WAYPOINT_TYPE_URL;
    use dataplane::xds::proto::ambient::waypoint::WaypointConfig;
    use prost::Message;

    let publish = |services: &[&str], generation| {
        let mut snapshot = snapshot([10, 1, 1], "");
        for name in ["waypoint", "other"] {
            let config = WaypointConfig {
                namespace: "shop".into(),
                name: name.into(),
                services: services
                    .iter()
                    .map(
                        |key| dataplane::xds::proto::ambient::waypoint::BoundService {
                            key: (*key).into(),
                            ..Default::default()
                        },
                    )
                    .collect(),
                policies: Vec::new(),
                layered_policies: Vec::new(),
            };
            snapshot.waypoints.insert(format!("shop/{name}"), config);
        }
        snapshot
            .waypoint_proxies
            .insert("shop/waypoint".into(), waypoint_proxies("node-w"));
        Arc::new(PublishedResources::encode(&snapshot, generation))
    };
    let first = publish(&["shop/echo.shop.svc.cluster.local"], 1);

    // A ztunnel: the two upstream types, wildcard.
    let mut ztunnel = XdsStream::new(first.clone());
    for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        let (response, _) = ask(&mut ztunnel, subscribe(type_url));
        let response = response.unwrap();
        assert_eq!(response.type_url, type_url);
        assert!(
            response
                .resources
                .iter()
                .all(|r| r.resource.as_ref().unwrap().type_url == type_url)
        );
    }

    // A waypoint: its own config, by name.
    let mut waypoint = XdsStream::for_caller(first, waypoint_identity());
    let mut request = subscribe(WAYPOINT_TYPE_URL);
    request.resource_names_subscribe = vec!["shop/waypoint".into()];
    let (response, received) = ask(&mut waypoint, request);
    assert_eq!(
        received,
        Received::Subscribed {
            type_url: WAYPOINT_TYPE_URL.into()
        }
    );
    let response = response.unwrap();
    assert_eq!(response.type_url, WAYPOINT_TYPE_URL);
    let [resource] = response.resources.as_slice() else {
        panic!("only the subscribed waypoint: {:?}", response.resources)
    };
    assert_eq!(resource.name, "shop/waypoint");
    let any = resource.resource.as_ref().unwrap();
    assert_eq!(any.type_url, WAYPOINT_TYPE_URL);
    let config = WaypointConfig::decode(&any.value[..]).unwrap();
    assert_eq!(config.services[0].key, "shop/echo.shop.svc.cluster.local");

    // Only the waypoint configs change: the waypoint is told, the ztunnel is sent nothing.
    let second = publish(
        &[
            "shop/echo.shop.svc.cluster.local",
            "shop/v2.shop.svc.cluster.local",
        ],
        2,
    );
    assert!(push(&mut ztunnel, second.clone()).is_empty());
    let updates = push(&mut waypoint, second);
    let [update] = updates.as_slice() else {
        panic!("one update: {updates:?}")
    };
    assert_eq!(update.type_url, WAYPOINT_TYPE_URL);
    let names: Vec<_> = update.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/waypoint"]);
}

#[test]
fn incremental_pushes_match_full_diffs_and_a_stream_that_missed_one_catches_up() {
    let net = [10, 2, 2];
    let first = snapshot(net, &allow_only("cluster.local/ns/shop/sa/web"));
    let second = snapshot(net, &allow_only("cluster.local/ns/shop/sa/other"));
    let third = snapshot(net, "");
    let g1 = Arc::new(PublishedResources::encode(&first, 1));
    let g2 = Arc::new(PublishedResources::encode_since(
        &second,
        2,
        Some((&first, &g1)),
    ));
    let g3 = Arc::new(PublishedResources::encode_since(
        &third,
        3,
        Some((&second, &g2)),
    ));
    assert_eq!(
        g2.changes.as_ref().unwrap().by_type[AUTHORIZATION_TYPE_URL]
            .iter()
            .collect::<Vec<_>>(),
        ["shop/echo-policy"]
    );

    let subscribed = || {
        let mut stream = XdsStream::new(g1.clone());
        for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
            ask(&mut stream, subscribe(type_url));
        }
        stream
    };
    // Up to date with every publish: each push carries exactly the change.
    let mut steady = subscribed();
    let pushes = push(&mut steady, g2.clone());
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].resources[0].name, "shop/echo-policy");
    let pushes = push(&mut steady, g3.clone());
    assert_eq!(pushes[0].removed_resources, ["shop/echo-policy"]);

    // Missed generation 2: generation 3's changes are relative to 2, so it compares
    // everything and ends with the same state (the policy it holds is removed).
    let mut behind = subscribed();
    let pushes = push(&mut behind, g3);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].removed_resources, ["shop/echo-policy"]);
    assert!(pushes[0].resources.is_empty());
}

#[test]
fn a_resource_is_encoded_once_and_shared_by_publishes_and_streams() {
    let net = [10, 3, 3];
    let first = snapshot(net, &allow_only("cluster.local/ns/shop/sa/web"));
    let second = snapshot(net, &allow_only("cluster.local/ns/shop/sa/other"));
    let g1 = Arc::new(PublishedResources::encode(&first, 1));
    let g2 = Arc::new(PublishedResources::encode_since(
        &second,
        2,
        Some((&first, &g1)),
    ));
    // The addresses did not change: the second publish holds the first one's, not a copy.
    let (a1, a2) = (
        &g1.of(ADDRESS_TYPE_URL).unwrap(),
        &g2.of(ADDRESS_TYPE_URL).unwrap(),
    );
    assert!(!a1.is_empty());
    for (name, p) in a1.iter() {
        assert!(Arc::ptr_eq(&p.resource, &a2[name].resource), "{name}");
    }
    // Two streams, one before and one after the second publish, send the same bytes.
    let body = |r: &dataplane::xds::proto::envoy::service::discovery::v3::Resource| {
        r.resource.as_ref().map(|any| any.value.as_ptr())
    };
    let mut early = XdsStream::new(g1.clone());
    let (sent_early, _) = ask(&mut early, subscribe(ADDRESS_TYPE_URL));
    let mut late = XdsStream::new(g2.clone());
    let (sent_late, _) = ask(&mut late, subscribe(ADDRESS_TYPE_URL));
    let (sent_early, sent_late) = (sent_early.unwrap(), sent_late.unwrap());
    assert_eq!(sent_early.resources.len(), a1.len());
    for (x, y) in sent_early.resources.iter().zip(&sent_late.resources) {
        assert_eq!(x.name, y.name);
        assert!(body(x).is_some());
        assert_eq!(body(x), body(y), "{}", x.name);
        assert_eq!(body(x), body(&a1[&x.name].resource), "{}", x.name);
    }
}

#[test]
fn a_subscribed_name_that_appears_later_is_sent_then() {
    use dataplane::xds::WAYPOINT_TYPE_URL;
    use dataplane::xds::proto::ambient::waypoint::WaypointConfig;

    let publish = |with_waypoint: bool, generation| {
        let mut snapshot = snapshot([10, 1, 1], "");
        if with_waypoint {
            snapshot.waypoints.insert(
                "shop/waypoint".into(),
                WaypointConfig {
                    namespace: "shop".into(),
                    name: "waypoint".into(),
                    ..WaypointConfig::default()
                },
            );
            snapshot
                .waypoint_proxies
                .insert("shop/waypoint".into(), waypoint_proxies("node-w"));
        }
        Arc::new(PublishedResources::encode(&snapshot, generation))
    };
    // A waypoint that starts before istiod has its configuration: told it is absent, once.
    let mut waypoint = XdsStream::for_caller(publish(false, 1), waypoint_identity());
    let mut request = subscribe(WAYPOINT_TYPE_URL);
    request.resource_names_subscribe = vec!["shop/waypoint".into()];
    let (response, _) = ask(&mut waypoint, request);
    assert_eq!(response.unwrap().removed_resources, ["shop/waypoint"]);
    assert!(
        push(&mut waypoint, publish(false, 2)).is_empty(),
        "absence is said once"
    );
    // The Gateway arrives: the configuration is sent without the client asking again.
    let updates = push(&mut waypoint, publish(true, 3));
    let [update] = updates.as_slice() else {
        panic!("one update: {updates:?}")
    };
    let names: Vec<_> = update.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/waypoint"]);
    // It goes away again: removed, once.
    let updates = push(&mut waypoint, publish(false, 4));
    assert_eq!(updates[0].removed_resources, ["shop/waypoint"]);
    assert!(push(&mut waypoint, publish(false, 5)).is_empty());
}

/// A NACK `error_detail` of `len` bytes: one ASCII byte, then two-byte characters, so a cut at
/// an even byte count falls inside a character.
fn huge_detail(len: usize) -> String {
    let mut detail = String::with_capacity(len);
    detail.push('x');
    while detail.len() + 2 <= len {
        detail.push('é');
    }
    detail
}

fn nack(type_url: &str, nonce: &str, detail: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: detail,
            details: Vec::new(),
        }),
        ..ack(type_url, nonce)
    }
}

#[test]
fn a_nack_keeps_only_the_capped_detail() {
    use control::xds::MAX_CLIENT_TEXT;

    let mut stream = XdsStream::new(published("", 1));
    let (response, _) = ask(&mut stream, subscribe(AUTHORIZATION_TYPE_URL));
    let nonce = response.unwrap().nonce;
    let detail = huge_detail(3 << 20);
    let total = detail.len();
    let (_, received) = ask(&mut stream, nack(AUTHORIZATION_TYPE_URL, &nonce, detail));
    let Received::Nack { message, .. } = received else {
        panic!("a NACK: {received:?}")
    };
    // 'x' and 511 'é' fill 1023 bytes; byte 1024 is inside the next 'é'.
    let kept = 1 + 511 * 2;
    assert!(
        message.starts_with(&format!("x{}…", "é".repeat(511))),
        "cut at the char boundary below {MAX_CLIENT_TEXT}: {:?}",
        message.chars().take(64).collect::<String>()
    );
    assert!(
        message.ends_with(&format!("[{} more bytes dropped]", total - kept)),
        "{message:?}"
    );
    assert!(message.len() < MAX_CLIENT_TEXT + 64, "{}", message.len());
    assert!(
        message.capacity() < 2 * MAX_CLIENT_TEXT,
        "a fresh, small string"
    );

    // The node id a client sends is capped too: it is in every log line about the stream.
    let mut stream = XdsStream::new(published("", 1));
    let mut request = subscribe(AUTHORIZATION_TYPE_URL);
    request.node.as_mut().unwrap().id = "n".repeat(1 << 20);
    ask(&mut stream, request);
    assert!(stream.node().unwrap().len() < MAX_CLIENT_TEXT + 64);
}

/// istiod's xDS warnings, from every test of this binary (a process-wide subscriber: a
/// thread-local one misses events whose callsite another thread registered first).
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capture of `control::xds` warnings (once per test binary).
fn capture_xds_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("control::xds=warn"))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// Captured lines containing `needle`.
fn logged(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_3_mb_nack_over_a_real_stream_is_logged_and_kept_capped() {
    use control::xds::MAX_CLIENT_TEXT;
    use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    capture_xds_warnings();
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    // The plaintext port: no token needed.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}:15010", ip(net, 1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let mut first = subscribe(AUTHORIZATION_TYPE_URL);
    first.node.as_mut().unwrap().id = "huge-nack-client".into();
    tx.send(first).await.unwrap();
    let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(requests)
        .await
        .unwrap()
        .into_inner();
    let nonce = responses.message().await.unwrap().unwrap().nonce;

    let detail = huge_detail(3 << 20);
    let total = detail.len();
    tx.send(nack(AUTHORIZATION_TYPE_URL, &nonce, detail))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || istiod
            .stats()
            .nacks
            .load(Ordering::Relaxed)
            == 1)
        .await,
        "the NACK never arrived"
    );
    let dropped = format!("[{} more bytes dropped]", total - 1023);
    let kept = istiod.stats().recent_nacks.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].len() < 2 * MAX_CLIENT_TEXT,
        "{} bytes kept",
        kept[0].len()
    );
    assert!(
        kept[0].ends_with(&dropped),
        "{}",
        kept[0].chars().take(200).collect::<String>()
    );

    let lines = logged("node=\"huge-nack-client\"");
    let [line] = lines.as_slice() else {
        panic!("one NACK log line: {} of them", lines.len())
    };
    assert!(
        line.len() < 2 * MAX_CLIENT_TEXT,
        "a {} byte log line",
        line.len()
    );
    assert!(line.contains(&dropped), "{line}");
    assert!(line.contains("error_detail="), "{line}");
    // The stream survives: the client may still ACK.
    tx.send(ack(AUTHORIZATION_TYPE_URL, &nonce)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || istiod
            .stats()
            .acks
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
}

const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";

/// `shop/waypoint` runs as `WAYPOINT_ID` on `node`.
fn waypoint_proxies(node: &str) -> WaypointProxies {
    WaypointProxies {
        identities: [WAYPOINT_ID.to_string()].into(),
        nodes: [node.to_string()].into(),
    }
}

fn waypoint_identity() -> Caller {
    Caller::Workload {
        identity: Some(WAYPOINT_ID.into()),
    }
}

/// A waypoint's configuration lists every policy and Service behind it: it goes to the
/// waypoint's own identity and to the node proxy of a node its pods run on, and to no one
/// else — a caller without a token, another identity, another node's proxy are told it is
/// absent, by name or wildcard alike. When the waypoint's pods move, who may see it follows.
#[test]
fn a_waypoint_config_goes_only_to_a_caller_that_acts_as_that_waypoint() {
    use dataplane::xds::WAYPOINT_TYPE_URL;
    use dataplane::xds::proto::ambient::waypoint::WaypointConfig;

    let publish = |node: &str, generation| {
        let mut snapshot = snapshot([10, 4, 4], "");
        for name in ["waypoint", "other"] {
            let config = WaypointConfig {
                namespace: "shop".into(),
                name: name.into(),
                ..Default::default()
            };
            snapshot.waypoints.insert(format!("shop/{name}"), config);
        }
        snapshot
            .waypoint_proxies
            .insert("shop/waypoint".into(), waypoint_proxies(node));
        Arc::new(PublishedResources::encode(&snapshot, generation))
    };
    let first = publish("node-w", 1);
    let by_name = || {
        let mut request = subscribe(WAYPOINT_TYPE_URL);
        request.resource_names_subscribe = vec!["shop/waypoint".into()];
        request
    };
    let sent = |stream: &mut XdsStream, request| {
        let (response, _) = ask(stream, request);
        let response = response.expect("a subscription is answered");
        let names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
        (names, response.removed_resources)
    };
    let node_proxy = |node: &str| Caller::NodeProxy { node: node.into() };
    let own = ["shop/waypoint".to_string()];

    for (caller, sees) in [
        (waypoint_identity(), true),
        (node_proxy("node-w"), true),
        (node_proxy("node-x"), false),
        (Caller::Anonymous, false),
        (
            Caller::Workload {
                identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            },
            false,
        ),
    ] {
        let mut stream = XdsStream::for_caller(first.clone(), caller.clone());
        let (names, removed) = sent(&mut stream, by_name());
        if sees {
            assert_eq!(names, own, "{caller:?}");
        } else {
            assert!(names.is_empty(), "{caller:?} was sent {names:?}");
            assert_eq!(removed, own, "{caller:?} is told it is absent");
        }
        // Wildcard: only what the caller acts as, never another waypoint's.
        let mut stream = XdsStream::for_caller(first.clone(), caller.clone());
        let (names, _) = sent(&mut stream, subscribe(WAYPOINT_TYPE_URL));
        let expected: &[String] = if sees { &own } else { &[] };
        assert_eq!(names, expected, "{caller:?}, wildcard");
    }

    // The waypoint's pod moves from node-w to node-x: node-w's proxy loses it, node-x's
    // gains it, the waypoint's own identity keeps it (sent again: its viewers changed).
    let mut old_node = XdsStream::for_caller(first.clone(), node_proxy("node-w"));
    let mut new_node = XdsStream::for_caller(first.clone(), node_proxy("node-x"));
    sent(&mut old_node, by_name());
    sent(&mut new_node, by_name());
    let moved = publish("node-x", 2);
    let pushed = push(&mut old_node, moved.clone());
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0].removed_resources, own);
    let pushed = push(&mut new_node, moved);
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    let names: Vec<&str> = pushed[0]
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["shop/waypoint"]);
}
