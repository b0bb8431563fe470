//! Fuzz targets for every xDS resource a ztunnel decodes (`istio.workload.Address`, as a
//! Workload or a Service, and `istio.security.Authorization`), through the path a response
//! takes: [`apply_response`] into the state. The control plane is trusted, but what it sends
//! may come from a newer or older istiod, a bug, or a man in the middle of a broken TLS
//! setup: a response must never panic the ztunnel, must reject exactly what upstream ztunnel
//! rejects (written out here as an independent oracle), must name every rejected resource in
//! its NACK, and must leave the state equal to what was accepted.
//!
//! Inputs are both arbitrary bytes and structurally valid messages with hostile values
//! (unknown enum numbers, 3-byte addresses, ports over 65535, gateways without destinations,
//! colliding names and addresses).

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;

use super::proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use super::proto::istio::security as sec;
use super::proto::istio::workload as pb;
use super::*;
use crate::fuzzing::{bounded, config, hostile_text};
use crate::state::StateHandle;

fn ip_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // a small pool, so workloads collide on addresses
        4 => prop::collection::vec(prop::sample::select(vec![0u8, 10, 255]), 4),
        2 => any::<[u8; 16]>().prop_map(|b| b.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

/// An enum field: one of the `known` numbers mostly, any number sometimes.
fn number(known: i32) -> impl Strategy<Value = i32> {
    prop_oneof![8 => 0..known, 1 => any::<i32>()]
}

fn port() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..=65_535, 1 => any::<u32>()]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "shop", "a/b", "cluster.local", "node-a"])
            .prop_map(str::to_string),
        2 => "\\PC{0,12}",
        1 => hostile_text(),
    ]
}

/// Resource names from a small pool, so removals and replacements hit.
fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "w1",
        "w2",
        "shop/a.svc",
        "shop/b.svc",
        "shop/p",
        "x/y/z",
        "",
    ])
    .prop_map(str::to_string)
}

fn network_address() -> BoxedStrategy<pb::NetworkAddress> {
    let length = prop::option::of(prop_oneof![Just(32u32), Just(128u32), any::<u32>()]);
    (text(), ip_bytes(), length)
        .prop_map(|(network, address, length)| pb::NetworkAddress {
            network,
            address,
            length,
        })
        .boxed()
}

fn gateway() -> BoxedStrategy<pb::GatewayAddress> {
    use pb::gateway_address::Destination;
    let destination = prop::option::of(prop_oneof![
        (text(), text()).prop_map(|(namespace, hostname)| Destination::Hostname(
            pb::NamespacedHostname {
                namespace,
                hostname
            }
        )),
        network_address().prop_map(Destination::Address),
    ]);
    (destination, port())
        .prop_map(|(destination, hbone_mtls_port)| pb::GatewayAddress {
            destination,
            hbone_mtls_port,
        })
        .boxed()
}

fn ports() -> impl Strategy<Value = Vec<pb::Port>> {
    prop::collection::vec(
        (port(), port(), number(6)).prop_map(|(s, t, a)| pb::Port {
            service_port: s,
            target_port: t,
            app_protocol: a,
        }),
        0..3,
    )
}

fn workload() -> BoxedStrategy<pb::Workload> {
    let services = prop::collection::btree_map(
        prop_oneof![name(), text()],
        ports().prop_map(|ports| pb::PortList { ports }),
        0..3,
    );
    let tunnel = prop::option::of(number(2).prop_map(|protocol| pb::ApplicationTunnel {
        protocol,
        port: 15088,
    }));
    (
        (
            name(),
            text(),
            text(),
            prop::collection::vec(ip_bytes(), 0..3),
            text(),
        ),
        (number(3), number(2), number(4), number(2), tunnel),
        (prop::option::of(gateway()), prop::option::of(gateway())),
        (
            services,
            prop::collection::vec(name(), 0..2),
            prop::option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (uid, name, namespace, addresses, network),
                (tunnel_protocol, status, workload_type, network_mode, application_tunnel),
                (waypoint, network_gateway),
                (services, authorization_policies, capacity),
            )| pb::Workload {
                uid,
                name,
                namespace,
                addresses,
                network,
                tunnel_protocol,
                status,
                workload_type,
                network_mode,
                application_tunnel,
                waypoint,
                network_gateway,
                services: services.into_iter().collect(),
                authorization_policies,
                capacity,
                ..pb::Workload::default()
            },
        )
        .boxed()
}

fn service() -> BoxedStrategy<pb::Service> {
    let balancing = prop::option::of(
        (prop::collection::vec(number(7), 0..3), number(4), number(2)).prop_map(
            |(routing_preference, mode, health_policy)| pb::LoadBalancing {
                routing_preference,
                mode,
                health_policy,
            },
        ),
    );
    let weighted = prop::collection::vec(
        (prop::option::of(gateway()), any::<u32>()).prop_map(|(destination, weight)| {
            pb::WeightedWaypoint {
                destination,
                weight,
            }
        }),
        0..2,
    );
    (
        (
            prop_oneof![Just("a.svc".to_string()), text()],
            text(),
            text(),
        ),
        (prop::collection::vec(network_address(), 0..3), ports()),
        (prop::option::of(gateway()), balancing, number(4), weighted),
    )
        .prop_map(
            |(
                (hostname, namespace, name),
                (addresses, ports),
                (waypoint, load_balancing, ip_families, weighted_waypoints),
            )| pb::Service {
                hostname,
                namespace,
                name,
                addresses,
                ports,
                waypoint,
                load_balancing,
                ip_families,
                weighted_waypoints,
                ..pb::Service::default()
            },
        )
        .boxed()
}

fn authorization() -> BoxedStrategy<sec::Authorization> {
    use sec::string_match::MatchType;
    let string_match = prop_oneof![
        text().prop_map(|s| Some(MatchType::Exact(s))),
        text().prop_map(|s| Some(MatchType::Prefix(s))),
        text().prop_map(|s| Some(MatchType::Suffix(s))),
        Just(Some(MatchType::Presence(()))),
        Just(None),
    ]
    .prop_map(|match_type| sec::StringMatch { match_type });
    let cidr = (ip_bytes(), prop_oneof![0u32..=128, any::<u32>()])
        .prop_map(|(address, length)| sec::Address { address, length });
    let matches = (
        prop::collection::vec(string_match, 0..3),
        prop::collection::vec(cidr, 0..3),
        prop::collection::vec(port(), 0..3),
    )
        .prop_map(|(principals, source_ips, destination_ports)| sec::Match {
            principals,
            source_ips,
            destination_ports,
            ..sec::Match::default()
        });
    let rules = prop::collection::vec(
        prop::collection::vec(prop::collection::vec(matches, 0..2), 0..2).prop_map(|clauses| {
            sec::Rule {
                clauses: clauses
                    .into_iter()
                    .map(|matches| sec::Clause { matches })
                    .collect(),
            }
        }),
        0..2,
    );
    (name(), text(), number(3), number(2), rules)
        .prop_map(
            |(name, namespace, scope, action, rules)| sec::Authorization {
                name,
                namespace,
                scope,
                action,
                rules,
                ..sec::Authorization::default()
            },
        )
        .boxed()
}

/// Upstream ztunnel's acceptance rules, written from its behaviour rather than our code.
fn gateway_ok(g: &pb::GatewayAddress) -> bool {
    use pb::gateway_address::Destination;
    g.hbone_mtls_port <= 65_535
        && match &g.destination {
            None => false,
            Some(Destination::Hostname(_)) => true,
            Some(Destination::Address(a)) => address_ok(a),
        }
}

fn address_ok(a: &pb::NetworkAddress) -> bool {
    match a.address.len() {
        4 => a.length.is_none_or(|l| l == 32),
        16 => a.length.is_none_or(|l| l == 128),
        _ => false,
    }
}

fn ports_ok(ports: &[pb::Port]) -> bool {
    ports
        .iter()
        .all(|p| p.service_port <= 65_535 && p.target_port <= 65_535)
}

fn workload_ok(w: &pb::Workload) -> bool {
    w.addresses.iter().all(|a| a.len() == 4 || a.len() == 16)
        && (0..=1).contains(&w.tunnel_protocol)
        && (0..=1).contains(&w.status)
        && (0..=3).contains(&w.workload_type)
        && (0..=1).contains(&w.network_mode)
        && w.application_tunnel
            .as_ref()
            .is_none_or(|t| (0..=1).contains(&t.protocol))
        && w.services
            .iter()
            .all(|(k, l)| k.contains('/') && ports_ok(&l.ports))
        && w.waypoint.as_ref().is_none_or(gateway_ok)
        && w.network_gateway.as_ref().is_none_or(gateway_ok)
}

fn service_ok(s: &pb::Service) -> bool {
    (0..=3).contains(&s.ip_families)
        && s.load_balancing.as_ref().is_none_or(|lb| {
            lb.routing_preference.iter().all(|r| (1..=6).contains(r))
                && (0..=3).contains(&lb.mode)
                && (0..=1).contains(&lb.health_policy)
        })
        && s.weighted_waypoints
            .iter()
            .all(|w| w.destination.as_ref().is_none_or(gateway_ok))
        && s.addresses.iter().all(address_ok)
        && ports_ok(&s.ports)
        && s.waypoint.as_ref().is_none_or(gateway_ok)
}

/// One resource of a response: a hostile message of the response's type, arbitrary bytes,
/// a body of the other type, or no body.
#[derive(Debug, Clone)]
enum Body {
    Address(Box<pb::Address>),
    Authorization(Box<sec::Authorization>),
    Bytes(Vec<u8>),
    WrongType(Vec<u8>),
    Missing,
}

fn body() -> BoxedStrategy<Body> {
    let address = prop_oneof![
        workload().prop_map(|w| Some(pb::address::Type::Workload(w))),
        service().prop_map(|s| Some(pb::address::Type::Service(s))),
        Just(None),
    ];
    prop_oneof![
        4 => address.prop_map(|r#type| Body::Address(Box::new(pb::Address { r#type }))),
        2 => authorization().prop_map(|a| Body::Authorization(Box::new(a))),
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Body::WrongType),
        1 => Just(Body::Missing),
    ]
    .boxed()
}

/// The encoded body, and whether `type_url` must accept it.
fn encode(body: &Body, type_url: &str) -> (Option<super::proto::google::protobuf::Any>, bool) {
    let any = |type_url: &str, value: Vec<u8>| {
        let type_url = type_url.to_string();
        Some(super::proto::google::protobuf::Any {
            type_url,
            value: value.into(),
        })
    };
    let verdict = |bytes: &[u8]| {
        if type_url == ADDRESS_TYPE_URL {
            match pb::Address::decode(bytes).ok().and_then(|a| a.r#type) {
                Some(pb::address::Type::Workload(w)) => workload_ok(&w),
                Some(pb::address::Type::Service(s)) => service_ok(&s),
                None => false,
            }
        } else {
            sec::Authorization::decode(bytes)
                .is_ok_and(|a| (0..=2).contains(&a.scope) && (0..=1).contains(&a.action))
        }
    };
    let bytes = match body {
        Body::Address(a) => a.encode_to_vec(),
        Body::Authorization(a) => a.encode_to_vec(),
        Body::Bytes(b) => b.clone(),
        Body::WrongType(b) => return (any("type.googleapis.com/other", b.clone()), false),
        Body::Missing => return (None, false),
    };
    let ok = verdict(&bytes);
    (any(type_url, bytes), ok)
}

type Response = (bool, Vec<(String, String, Body)>, Vec<String>);

fn response() -> impl Strategy<Value = Response> {
    (
        prop::bool::ANY,
        prop::collection::vec((name(), "[0-9a-f]{0,4}", body()), 0..6),
        prop::collection::vec(name(), 0..3),
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// Decoded resources survive encoding back (what istiod sends reads as the same model);
    /// arbitrary bytes never panic the decoders.
    #[test]
    fn fuzz_xds_decode_round_trip(body in body()) {
        if let Body::Address(a) = &body {
            let ok = match &a.r#type {
                Some(pb::address::Type::Workload(w)) => workload_ok(w),
                Some(pb::address::Type::Service(s)) => service_ok(s),
                None => false,
            };
            let decoded = bounded("decoding", || address_from_proto(*a.clone()))?;
            prop_assert_eq!(decoded.is_ok(), ok, "{:?}", decoded);
            let again = match &decoded {
                Ok(AddressResource::Workload(w)) => Some(address_from_proto(workload_to_proto(w))),
                Ok(AddressResource::Service(s)) => Some(address_from_proto(service_to_proto(s))),
                Err(_) => None,
            };
            if let Some(again) = again {
                prop_assert_eq!(again, decoded);
            }
        }
        if let Body::Authorization(a) = &body {
            let ok = (0..=2).contains(&a.scope) && (0..=1).contains(&a.action);
            let decoded = bounded("decoding", || authorization_from_proto(*a.clone()))?;
            prop_assert_eq!(decoded.is_ok(), ok);
            if let Ok(p) = decoded {
                prop_assert_eq!(authorization_from_proto(authorization_to_proto(&p)), Ok(p));
            }
        }
        if let Body::Bytes(b) | Body::WrongType(b) = &body {
            bounded("decoding bytes", || {
                if let Ok(a) = pb::Address::decode(b.as_slice()) {
                    let _ = address_from_proto(a);
                }
                if let Ok(a) = sec::Authorization::decode(b.as_slice()) {
                    let _ = authorization_from_proto(a);
                }
            })?;
        }
    }

    /// Responses applied one after another: each is answered with its own nonce and type,
    /// the NACK names exactly the rejected resources, only accepted versions are
    /// remembered, and the state holds what was accepted and not removed since.
    #[test]
    fn fuzz_xds_apply_responses(responses in prop::collection::vec(response(), 1..5)) {
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let mut held: BTreeMap<(bool, String), String> = BTreeMap::new();
        for (i, (policies, resources, removed)) in responses.into_iter().enumerate() {
            let type_url = if policies { AUTHORIZATION_TYPE_URL } else { ADDRESS_TYPE_URL };
            let mut expected_errors = Vec::new();
            let mut wire = Vec::new();
            for name in &removed {
                held.remove(&(policies, name.clone()));
            }
            for (name, version, body) in &resources {
                let (any, ok) = encode(body, type_url);
                if ok {
                    held.insert((policies, name.clone()), version.clone());
                } else {
                    held.remove(&(policies, name.clone()));
                    expected_errors.push(name.clone());
                }
                wire.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: any,
                    ..Resource::default()
                });
            }
            let response = DeltaDiscoveryResponse {
                type_url: type_url.to_string(),
                nonce: i.to_string(),
                resources: wire,
                removed_resources: removed,
                ..DeltaDiscoveryResponse::default()
            };
            let ack = bounded("applying a response", || {
                apply_response(&state, &mut versions, &response)
            })?;
            prop_assert_eq!(&ack.response_nonce, &response.nonce);
            prop_assert_eq!(&ack.type_url, &response.type_url);
            let message = ack.error_detail.as_ref().map(|s| s.message.as_str());
            prop_assert_eq!(message.is_some(), !expected_errors.is_empty());
            for name in &expected_errors {
                let named = format!("{name}: ");
                prop_assert!(message.is_some_and(|m| m.contains(&named)), "{:?}", message);
            }
            for (p, url) in [(false, ADDRESS_TYPE_URL), (true, AUTHORIZATION_TYPE_URL)] {
                let expected: BTreeMap<String, String> = held
                    .iter()
                    .filter(|((q, _), _)| *q == p)
                    .map(|((_, n), v)| (n.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(versions.initial(url), expected);
            }
        }
        state.read(|s| -> Result<(), TestCaseError> {
            // Every address lookup answers with a live workload that has that address.
            for w in s.workloads() {
                for ip in &w.workload_ips {
                    if let Some(found) = s.workload_by_ip(&w.network, *ip) {
                        prop_assert!(found.workload_ips.contains(ip) && found.network == w.network);
                        let live = s.workload(&found.uid);
                        prop_assert_eq!(live.as_ref(), Some(&found));
                    }
                }
            }
            for svc in s.services() {
                for vip in &svc.vips {
                    if let Some(found) = s.service_by_vip(&vip.network, vip.address) {
                        prop_assert!(found.vips.contains(vip));
                        let live = s.service(&found.key());
                        prop_assert_eq!(live.as_ref(), Some(&found));
                    }
                }
            }
            Ok(())
        })?;
    }

    /// A response of a type the ztunnel does not handle changes nothing and is not NACKed.
    #[test]
    fn fuzz_xds_unknown_type(type_url in text(), (_, resources, removed) in response()) {
        prop_assume!(type_url != ADDRESS_TYPE_URL && type_url != AUTHORIZATION_TYPE_URL);
        let state = StateHandle::default();
        let mut versions = ResourceVersions::default();
        let response = DeltaDiscoveryResponse {
            type_url: type_url.clone(),
            resources: resources
                .iter()
                .map(|(name, _, body)| Resource {
                    name: name.clone(),
                    resource: encode(body, &type_url).0,
                    ..Resource::default()
                })
                .collect(),
            removed_resources: removed,
            ..DeltaDiscoveryResponse::default()
        };
        let ack = bounded("applying a response", || {
            apply_response(&state, &mut versions, &response)
        })?;
        prop_assert!(ack.error_detail.is_none());
        prop_assert_eq!(versions, ResourceVersions::default());
        prop_assert_eq!(state.read(|s| s.workloads().count() + s.services().count()), 0);
    }
}
