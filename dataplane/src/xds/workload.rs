//! `istio.workload.Address` ↔ the model. Decoding applies upstream ztunnel's rules: what it
//! would NACK (unknown enum numbers, address lengths other than 4/16 bytes, a gateway without a
//! destination, a `services` key without `/`, LEGACY_ISTIO_MTLS) is an error naming the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ConvertError;
use super::proto::istio::workload as pb;
use crate::state::{
    GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress, PortMap, Service,
    TunnelProtocol, Workload, WorkloadStatus,
};

/// One decoded Address resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Box<Workload>),
    Service(Service),
}

fn err(field: &str, reason: impl std::fmt::Display) -> ConvertError {
    ConvertError(format!("{field}: {reason}"))
}

pub(crate) fn ip_from_bytes(field: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(bytes);
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes);
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        n => Err(err(
            field,
            format!("an address must be 4 or 16 bytes, not {n}"),
        )),
    }
}

pub(crate) fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn port(field: &str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| err(field, format!("port {value} is out of range")))
}

/// Checks an enum number is one the schema knows.
fn known<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, ConvertError> {
    E::try_from(value).map_err(|_| err(field, format!("unknown enum value {value}")))
}

fn network_address(field: &str, a: &pb::NetworkAddress) -> Result<NetworkAddress, ConvertError> {
    let address = ip_from_bytes(field, &a.address)?;
    if let Some(length) = a.length {
        let host = if address.is_ipv4() { 32 } else { 128 };
        if length != host {
            return Err(err(field, format!("CIDR VIP /{length} is not supported")));
        }
    }
    Ok(NetworkAddress {
        network: a.network.clone(),
        address,
    })
}

fn gateway(field: &str, g: &pb::GatewayAddress) -> Result<GatewayAddress, ConvertError> {
    use pb::gateway_address::Destination;
    let destination = match &g.destination {
        Some(Destination::Hostname(h)) => GatewayDestination::Hostname(NamespacedHostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
        Some(Destination::Address(a)) => GatewayDestination::Address(network_address(field, a)?),
        None => return Err(err(field, "gateway address has no destination")),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port(field, g.hbone_mtls_port)?,
    })
}

fn gateway_to_proto(g: &GatewayAddress) -> pb::GatewayAddress {
    use pb::gateway_address::Destination;
    let destination = match &g.destination {
        GatewayDestination::Hostname(h) => Destination::Hostname(pb::NamespacedHostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
        GatewayDestination::Address(a) => Destination::Address(network_address_to_proto(a)),
    };
    pb::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(g.hbone_mtls_port),
    }
}

fn network_address_to_proto(a: &NetworkAddress) -> pb::NetworkAddress {
    pb::NetworkAddress {
        network: a.network.clone(),
        address: ip_to_bytes(a.address),
        length: None,
    }
}

fn ports(field: &str, list: &[pb::Port]) -> Result<PortMap, ConvertError> {
    list.iter()
        .map(|p| Ok((port(field, p.service_port)?, port(field, p.target_port)?)))
        .collect()
}

fn ports_to_proto(map: &PortMap) -> Vec<pb::Port> {
    map.iter()
        .map(|(service, target)| pb::Port {
            service_port: u32::from(*service),
            target_port: u32::from(*target),
            app_protocol: 0,
        })
        .collect()
}

fn workload_from_proto(w: pb::Workload) -> Result<Workload, ConvertError> {
    let workload_ips = w
        .addresses
        .iter()
        .map(|a| ip_from_bytes("addresses", a))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match known::<pb::TunnelProtocol>("tunnel_protocol", w.tunnel_protocol)? {
        pb::TunnelProtocol::None => TunnelProtocol::None,
        pb::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
        pb::TunnelProtocol::LegacyIstioMtls => {
            return Err(err("tunnel_protocol", "LEGACY_ISTIO_MTLS is not supported"));
        }
    };
    let status = match known::<pb::WorkloadStatus>("status", w.status)? {
        pb::WorkloadStatus::Healthy => WorkloadStatus::Healthy,
        pb::WorkloadStatus::Unhealthy => WorkloadStatus::Unhealthy,
    };
    let workload_type = match known::<pb::WorkloadType>("workload_type", w.workload_type)? {
        pb::WorkloadType::Deployment => "deployment",
        pb::WorkloadType::Cronjob => "cronjob",
        pb::WorkloadType::Pod => "pod",
        pb::WorkloadType::Job => "job",
    };
    known::<pb::NetworkMode>("network_mode", w.network_mode)?;
    if let Some(tunnel) = &w.application_tunnel {
        known::<pb::application_tunnel::Protocol>("application_tunnel.protocol", tunnel.protocol)?;
    }
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        if !key.contains('/') {
            return Err(err(
                "services",
                format!("key {key:?} is not <namespace>/<hostname>"),
            ));
        }
        services.insert(key.clone(), ports("services", &list.ports)?);
    }
    Ok(Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        workload_ips,
        network: w.network,
        protocol,
        trust_domain: w.trust_domain,
        service_account: w.service_account,
        waypoint: w
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?,
        network_gateway: w
            .network_gateway
            .as_ref()
            .map(|g| gateway("network_gateway", g))
            .transpose()?,
        node: w.node,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_type: workload_type.to_string(),
        workload_name: w.workload_name,
        native_tunnel: w.native_tunnel,
        services,
        authorization_policies: w.authorization_policies,
        status,
        cluster_id: w.cluster_id,
        capacity: w.capacity.unwrap_or(1),
    })
}

fn service_from_proto(s: pb::Service) -> Result<Service, ConvertError> {
    known::<pb::IpFamilies>("ip_families", s.ip_families)?;
    if let Some(lb) = &s.load_balancing {
        for scope in &lb.routing_preference {
            let scope =
                known::<pb::load_balancing::Scope>("load_balancing.routing_preference", *scope)?;
            if scope == pb::load_balancing::Scope::UnspecifiedScope {
                return Err(err(
                    "load_balancing.routing_preference",
                    "UNSPECIFIED_SCOPE is not a scope",
                ));
            }
        }
        known::<pb::load_balancing::Mode>("load_balancing.mode", lb.mode)?;
        known::<pb::load_balancing::HealthPolicy>(
            "load_balancing.health_policy",
            lb.health_policy,
        )?;
    }
    for w in &s.weighted_waypoints {
        if let Some(g) = &w.destination {
            gateway("weighted_waypoints", g)?;
        }
    }
    Ok(Service {
        vips: s
            .addresses
            .iter()
            .map(|a| network_address("addresses", a))
            .collect::<Result<_, _>>()?,
        ports: ports("ports", &s.ports)?,
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway("waypoint", g))
            .transpose()?,
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        subject_alt_names: s.subject_alt_names,
    })
}

/// Decodes one Address resource.
pub fn address_from_proto(address: pb::Address) -> Result<AddressResource, ConvertError> {
    match address.r#type {
        Some(pb::address::Type::Workload(w)) => {
            workload_from_proto(w).map(|w| AddressResource::Workload(Box::new(w)))
        }
        Some(pb::address::Type::Service(s)) => service_from_proto(s).map(AddressResource::Service),
        None => Err(ConvertError("unknown address type".into())),
    }
}

/// Encodes a workload as istiod sends it.
pub fn workload_to_proto(w: &Workload) -> pb::Address {
    let workload_type = match w.workload_type.as_str() {
        "cronjob" => pb::WorkloadType::Cronjob,
        "pod" => pb::WorkloadType::Pod,
        "job" => pb::WorkloadType::Job,
        _ => pb::WorkloadType::Deployment,
    };
    let workload = pb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.workload_ips.iter().map(|ip| ip_to_bytes(*ip)).collect(),
        network: w.network.clone(),
        tunnel_protocol: match w.protocol {
            TunnelProtocol::None => pb::TunnelProtocol::None,
            TunnelProtocol::Hbone => pb::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: w.waypoint.as_ref().map(gateway_to_proto),
        network_gateway: w.network_gateway.as_ref().map(gateway_to_proto),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_type: workload_type as i32,
        workload_name: w.workload_name.clone(),
        native_tunnel: w.native_tunnel,
        services: w
            .services
            .iter()
            .map(|(key, map)| {
                (
                    key.clone(),
                    pb::PortList {
                        ports: ports_to_proto(map),
                    },
                )
            })
            .collect(),
        authorization_policies: w.authorization_policies.clone(),
        status: match w.status {
            WorkloadStatus::Healthy => pb::WorkloadStatus::Healthy,
            WorkloadStatus::Unhealthy => pb::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.clone(),
        capacity: (w.capacity != 1).then_some(w.capacity),
        ..pb::Workload::default()
    };
    pb::Address {
        r#type: Some(pb::address::Type::Workload(workload)),
    }
}

/// Encodes a service as istiod sends it.
pub fn service_to_proto(s: &Service) -> pb::Address {
    let service = pb::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s.vips.iter().map(network_address_to_proto).collect(),
        ports: ports_to_proto(&s.ports),
        subject_alt_names: s.subject_alt_names.clone(),
        waypoint: s.waypoint.as_ref().map(gateway_to_proto),
        ..pb::Service::default()
    };
    pb::Address {
        r#type: Some(pb::address::Type::Service(service)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localconfig::LocalConfig;
    use prost::Message;

    const CONFIG: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: td.example
  workloadIps: ["10.10.2.7", "fd00::7"]
  protocol: HBONE
  node: node-b
  workloadName: cart
  workloadType: pod
  canonicalName: cart
  canonicalRevision: v2
  capacity: 3
  status: Unhealthy
  authorizationPolicies: ["shop/cart-from-web"]
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
  networkGateway: {destination: "net2/192.0.2.1", hboneMtlsPort: 15009}
  services:
    "shop/cart.shop.svc.cluster.local": {80: 8080, 443: 8443}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.10", "net2/10.97.0.10"]
  ports: {80: 8080}
  subjectAltNames: ["spiffe://td.example/ns/shop/sa/cart-legacy"]
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
"#;

    /// Through the wire and back: encode, decode bytes, convert.
    fn over_the_wire(address: pb::Address) -> Result<AddressResource, ConvertError> {
        let bytes = address.encode_to_vec();
        address_from_proto(pb::Address::decode(bytes.as_slice()).unwrap())
    }

    #[test]
    fn workloads_and_services_round_trip_through_protobuf() {
        let config = LocalConfig::parse(CONFIG).unwrap();
        let w = &config.workloads[0];
        assert_eq!(
            over_the_wire(workload_to_proto(w)),
            Ok(AddressResource::Workload(Box::new(w.clone())))
        );
        let s = &config.services[0];
        assert_eq!(
            over_the_wire(service_to_proto(s)),
            Ok(AddressResource::Service(s.clone()))
        );
    }

    fn workload(f: impl FnOnce(&mut pb::Workload)) -> pb::Address {
        let mut w = pb::Workload {
            uid: "u".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..pb::Workload::default()
        };
        f(&mut w);
        pb::Address {
            r#type: Some(pb::address::Type::Workload(w)),
        }
    }

    #[test]
    fn what_upstream_nacks_is_an_error_naming_the_field() {
        let cases: Vec<(pb::Address, &str)> = vec![
            (
                workload(|w| w.addresses = vec![vec![1, 2, 3]]),
                "addresses: an address must be 4 or 16 bytes, not 3",
            ),
            (
                workload(|w| w.tunnel_protocol = 2),
                "tunnel_protocol: LEGACY_ISTIO_MTLS is not supported",
            ),
            (
                workload(|w| w.tunnel_protocol = 9),
                "tunnel_protocol: unknown enum value 9",
            ),
            (workload(|w| w.status = 5), "status: unknown enum value 5"),
            (
                workload(|w| w.network_mode = 3),
                "network_mode: unknown enum value 3",
            ),
            (
                workload(|w| {
                    w.waypoint = Some(pb::GatewayAddress {
                        destination: None,
                        hbone_mtls_port: 15008,
                    })
                }),
                "waypoint: gateway address has no destination",
            ),
            (
                workload(|w| {
                    w.services
                        .insert("no-slash".into(), pb::PortList::default());
                }),
                "services: key \"no-slash\" is not <namespace>/<hostname>",
            ),
            (pb::Address { r#type: None }, "unknown address type"),
            (
                pb::Address {
                    r#type: Some(pb::address::Type::Service(pb::Service {
                        load_balancing: Some(pb::LoadBalancing {
                            routing_preference: vec![0],
                            ..pb::LoadBalancing::default()
                        }),
                        ..pb::Service::default()
                    })),
                },
                "load_balancing.routing_preference: UNSPECIFIED_SCOPE is not a scope",
            ),
        ];
        for (address, expected) in cases {
            assert_eq!(over_the_wire(address), Err(ConvertError(expected.into())));
        }
    }

    #[test]
    fn defaults_follow_upstream() {
        let Ok(AddressResource::Workload(w)) = over_the_wire(workload(|_| {})) else {
            panic!("valid workload rejected");
        };
        assert_eq!(w.capacity, 1);
        assert_eq!(w.workload_type, "deployment");
        assert_eq!(
            w.identity().to_string(),
            "spiffe://cluster.local/ns//sa/default"
        );
    }
}
