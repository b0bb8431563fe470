//! Routing: where a local workload's connection goes, following upstream's outbound decision
//! tree (wire facts §4.7). Pure over the state, so every branch is tested on its own.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Addresses;
use crate::hbone;
use crate::identity::Identity;
use crate::seams::Entropy;
use crate::state::{
    GatewayAddress, GatewayDestination, Service, State, TunnelProtocol, Workload, WorkloadStatus,
};

/// Why no route exists.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("destination {0} is one of this proxy's own listeners")]
    Internal(SocketAddr),
    #[error("destination {0} is a loopback or unspecified address that no workload owns")]
    Local(SocketAddr),
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoEndpoint { service: String, port: u16 },
    #[error("waypoint {0} could not be resolved")]
    Waypoint(String),
}

/// What routing needs: the state, this ztunnel's network and listeners, and the entropy seam
/// for endpoint picks.
pub(crate) struct Router<'a> {
    pub(crate) state: &'a State,
    pub(crate) network: &'a str,
    pub(crate) own: &'a Addresses,
    pub(crate) entropy: &'a Entropy,
}

/// How the connection will travel.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// HBONE (with this authority and these acceptable identities) or plain TCP.
    pub(crate) hbone: Option<(String, Vec<Identity>)>,
    /// The TCP address to dial: a peer's 15008 for HBONE, the destination itself otherwise.
    pub(crate) next_hop: SocketAddr,
    pub(crate) destination: Option<Arc<Workload>>,
    pub(crate) service: Option<Arc<Service>>,
}

fn target_port(endpoint: &Workload, service: &Service, port: u16) -> Option<u16> {
    let mapped = endpoint
        .services
        .get(&service.key())
        .and_then(|ports| ports.get(&port))
        .or_else(|| service.ports.get(&port))
        .copied()?;
    (mapped != 0).then_some(mapped)
}

/// A healthy endpoint of `service` serving `port`, and the port to dial on it, chosen by
/// capacity with the entropy seam. Shared by the ztunnel and the waypoint.
pub(crate) fn pick_endpoint(
    state: &State,
    service: &Service,
    port: u16,
    entropy: &Entropy,
) -> Option<(Arc<Workload>, u16)> {
    let candidates: Vec<(Arc<Workload>, u16)> = state
        .endpoints(&service.key())
        .into_iter()
        .filter(|w| w.status == WorkloadStatus::Healthy && !w.workload_ips.is_empty())
        .filter_map(|w| target_port(&w, service, port).map(|t| (w, t)))
        .collect();
    let weights: Vec<u32> = candidates.iter().map(|(w, _)| w.capacity.max(1)).collect();
    let index = entropy.weighted_index(&weights)?;
    candidates.into_iter().nth(index)
}

impl Router<'_> {
    fn pick_endpoint(&self, service: &Service, port: u16) -> Option<(Arc<Workload>, u16)> {
        pick_endpoint(self.state, service, port, self.entropy)
    }

    /// The waypoint's address and identities, unless the source is that waypoint itself.
    fn resolve_waypoint(
        &self,
        waypoint: &GatewayAddress,
        source: &Workload,
    ) -> Result<Option<(SocketAddr, Vec<Identity>)>, RouteError> {
        let state = self.state;
        match &waypoint.destination {
            GatewayDestination::Hostname(name) => {
                let key = name.key();
                let service = state
                    .service(&key)
                    .ok_or_else(|| RouteError::Waypoint(key.clone()))?;
                if state.endpoints(&key).iter().any(|w| w.uid == source.uid) {
                    return Ok(None);
                }
                let (endpoint, port) = self
                    .pick_endpoint(&service, waypoint.hbone_mtls_port)
                    .ok_or_else(|| RouteError::Waypoint(key.clone()))?;
                let mut expected = vec![endpoint.identity()];
                expected.extend(
                    service
                        .subject_alt_names
                        .iter()
                        .filter_map(|s| s.parse().ok()),
                );
                Ok(Some((
                    SocketAddr::new(endpoint.workload_ips[0], port),
                    expected,
                )))
            }
            GatewayDestination::Address(addr) => {
                let endpoint = state
                    .workload_by_ip(&addr.network, addr.address)
                    .ok_or_else(|| RouteError::Waypoint(addr.address.to_string()))?;
                if endpoint.uid == source.uid {
                    return Ok(None);
                }
                Ok(Some((
                    SocketAddr::new(addr.address, waypoint.hbone_mtls_port),
                    vec![endpoint.identity()],
                )))
            }
        }
    }

    /// Decides the route for a connection from `source` to `destination`.
    pub(crate) fn route(
        &self,
        source: &Workload,
        destination: SocketAddr,
    ) -> Result<Route, RouteError> {
        // An IPv4-mapped IPv6 address is its IPv4 form, so it cannot slip past the checks.
        let destination = SocketAddr::new(destination.ip().to_canonical(), destination.port());
        if self.own.reached_by(destination) {
            return Err(RouteError::Internal(destination));
        }
        let (state, network) = (self.state, self.network);
        let authority = destination.to_string();
        if let Some(service) = state.service_by_vip(network, destination.ip()) {
            if let Some(waypoint) = &service.waypoint
                && let Some((next_hop, expected)) = self.resolve_waypoint(waypoint, source)?
            {
                return Ok(Route {
                    hbone: Some((authority, expected)),
                    next_hop,
                    destination: None,
                    service: Some(service),
                });
            }
            let (endpoint, port) = self
                .pick_endpoint(&service, destination.port())
                .ok_or_else(|| RouteError::NoEndpoint {
                    service: service.hostname.clone(),
                    port: destination.port(),
                })?;
            return Ok(endpoint_route(endpoint, port, Some(service)));
        }
        if let Some(workload) = state.workload_by_ip(network, destination.ip()) {
            if let Some(waypoint) = &workload.waypoint
                && let Some((next_hop, expected)) = self.resolve_waypoint(waypoint, source)?
            {
                return Ok(Route {
                    hbone: Some((authority, expected)),
                    next_hop,
                    destination: Some(workload),
                    service: None,
                });
            }
            return Ok(endpoint_route(workload, destination.port(), None));
        }
        // Unknown destination: passthrough, but never to this machine's own loopback or
        // unspecified address, where the node's private services listen.
        if destination.ip().is_loopback() || destination.ip().is_unspecified() {
            return Err(RouteError::Local(destination));
        }
        Ok(Route {
            hbone: None,
            next_hop: destination,
            destination: None,
            service: None,
        })
    }
}

fn endpoint_route(endpoint: Arc<Workload>, port: u16, service: Option<Arc<Service>>) -> Route {
    let ip = endpoint.workload_ips[0];
    let hbone = (endpoint.protocol == TunnelProtocol::Hbone).then(|| {
        let mut expected = vec![endpoint.identity()];
        if let Some(s) = &service {
            expected.extend(s.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
        }
        (SocketAddr::new(ip, port).to_string(), expected)
    });
    let next_hop = if hbone.is_some() {
        SocketAddr::new(ip, hbone::HBONE_PORT)
    } else {
        SocketAddr::new(ip, port)
    };
    Route {
        hbone,
        next_hop,
        destination: Some(endpoint),
        service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localconfig::LocalConfig;

    const TOPOLOGY: &str = r#"
workloads:
- {uid: web, name: web-0, namespace: shop, serviceAccount: web, trustDomain: cluster.local,
   workloadIps: ["10.0.1.2"], protocol: HBONE, node: a}
- {uid: cart-0, name: cart-0, namespace: shop, serviceAccount: cart, trustDomain: cluster.local,
   workloadIps: ["10.0.2.2"], protocol: HBONE, node: b,
   services: {"shop/cart.shop.svc.cluster.local": {80: 8080}}}
- {uid: cart-1, name: cart-1, namespace: shop, serviceAccount: cart, trustDomain: cluster.local,
   workloadIps: ["10.0.2.3"], protocol: HBONE, node: b, capacity: 3,
   services: {"shop/cart.shop.svc.cluster.local": {80: 9090}}}
- {uid: cart-sick, name: cart-2, namespace: shop, serviceAccount: cart, trustDomain: cluster.local,
   workloadIps: ["10.0.2.4"], protocol: HBONE, node: b, status: Unhealthy,
   services: {"shop/cart.shop.svc.cluster.local": {80: 8080}}}
- {uid: legacy, name: legacy-0, namespace: shop, serviceAccount: legacy, trustDomain: cluster.local,
   workloadIps: ["10.0.3.2"], protocol: TCP, node: c}
- {uid: pay, name: pay-0, namespace: shop, serviceAccount: pay, trustDomain: cluster.local,
   workloadIps: ["10.0.4.2"], protocol: HBONE, node: b,
   waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}}
- {uid: wp, name: wp-0, namespace: shop, serviceAccount: wp, trustDomain: cluster.local,
   workloadIps: ["10.0.5.2"], protocol: HBONE, node: b,
   services: {"shop/wp.shop.svc.cluster.local": {15008: 15008}}}
services:
- {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local,
   vips: ["/10.96.0.10"], ports: {80: 8080}}
- {name: orders, namespace: shop, hostname: orders.shop.svc.cluster.local,
   vips: ["/10.96.0.11"], ports: {80: 8080},
   waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}}
- {name: wp, namespace: shop, hostname: wp.shop.svc.cluster.local,
   vips: ["/10.96.0.12"], ports: {15008: 15008}}
- {name: empty, namespace: shop, hostname: empty.shop.svc.cluster.local,
   vips: ["/10.96.0.13"], ports: {80: 8080}}
"#;

    fn state() -> State {
        let mut s = State::default();
        LocalConfig::parse(TOPOLOGY).unwrap().apply_to(&mut s);
        s
    }

    /// A ztunnel at 10.0.2.1 with upstream's ports, admin on loopback.
    fn own() -> Addresses {
        let at = |ip: &str, port| SocketAddr::new(ip.parse().unwrap(), port);
        Addresses {
            outbound: at("10.0.2.1", 15001),
            inbound_plaintext: at("10.0.2.1", 15006),
            inbound: at("10.0.2.1", 15008),
            socks5: Some(at("10.0.2.1", 15080)),
            readiness: at("10.0.2.1", 15021),
            metrics: at("10.0.2.1", 15020),
            admin: at("127.0.0.1", 15000),
        }
    }

    fn route(state: &State, seed: u64, source: &str, dst: &str) -> Result<Route, RouteError> {
        let entropy = Entropy::seeded(seed);
        let own = own();
        let router = Router {
            state,
            network: "",
            own: &own,
            entropy: &entropy,
        };
        let source = state.workload(source).unwrap();
        router.route(&source, dst.parse().unwrap())
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "shop", sa)
    }

    #[test]
    fn service_vip_goes_to_a_healthy_endpoint_with_its_target_port() {
        let s = state();
        let mut seen = std::collections::BTreeMap::new();
        for seed in 0..200 {
            let r = route(&s, seed, "web", "10.96.0.10:80").unwrap();
            let (authority, expected) = r.hbone.clone().unwrap();
            assert_eq!(expected, vec![id("cart")]);
            assert_eq!(r.next_hop.port(), 15008);
            assert_eq!(r.service.as_ref().unwrap().name, "cart");
            // per-endpoint port maps win over the service's
            match r.next_hop.ip().to_string().as_str() {
                "10.0.2.2" => assert_eq!(authority, "10.0.2.2:8080"),
                "10.0.2.3" => assert_eq!(authority, "10.0.2.3:9090"),
                other => panic!("unhealthy or unknown endpoint {other} chosen"),
            }
            *seen.entry(r.next_hop.ip()).or_insert(0) += 1;
        }
        // capacity 3 vs 1: the heavier endpoint gets most picks
        let heavy = seen[&"10.0.2.3".parse::<std::net::IpAddr>().unwrap()];
        assert!((120..=180).contains(&heavy), "{seen:?}");
    }

    #[test]
    fn endpoint_choice_is_a_function_of_the_seed() {
        let s = state();
        let picks = |seed| {
            let entropy = Entropy::seeded(seed);
            let own = own();
            let router = Router {
                state: &s,
                network: "",
                own: &own,
                entropy: &entropy,
            };
            let web = s.workload("web").unwrap();
            (0..20)
                .map(|_| {
                    router
                        .route(&web, "10.96.0.10:80".parse().unwrap())
                        .unwrap()
                        .next_hop
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(5), picks(5));
    }

    #[test]
    fn service_without_endpoints_is_refused() {
        let err = route(&state(), 1, "web", "10.96.0.13:80").unwrap_err();
        assert!(
            matches!(err, RouteError::NoEndpoint { ref service, port: 80 } if service == "empty.shop.svc.cluster.local")
        );
        // a port the service does not expose has no endpoint either
        assert!(route(&state(), 1, "web", "10.96.0.10:81").is_err());
    }

    #[test]
    fn service_waypoint_gets_the_original_destination_as_authority() {
        let r = route(&state(), 1, "web", "10.96.0.11:80").unwrap();
        assert_eq!(r.next_hop, "10.0.5.2:15008".parse().unwrap());
        assert_eq!(r.hbone, Some(("10.96.0.11:80".into(), vec![id("wp")])));
        // traffic from the waypoint itself is not sent back to it
        assert!(
            route(&state(), 1, "wp", "10.96.0.11:80").is_err(),
            "orders has no endpoints"
        );
    }

    #[test]
    fn workload_waypoint_applies_to_pod_ip_traffic() {
        let r = route(&state(), 1, "web", "10.0.4.2:8080").unwrap();
        assert_eq!(r.next_hop, "10.0.5.2:15008".parse().unwrap());
        assert_eq!(r.hbone.unwrap().0, "10.0.4.2:8080");
        let from_waypoint = route(&state(), 1, "wp", "10.0.4.2:8080").unwrap();
        assert_eq!(from_waypoint.next_hop, "10.0.4.2:15008".parse().unwrap());
        assert_eq!(from_waypoint.hbone.unwrap().1, vec![id("pay")]);
    }

    #[test]
    fn plain_workloads_and_unknown_destinations_get_plain_tcp() {
        let r = route(&state(), 1, "web", "10.0.3.2:5432").unwrap();
        assert!(r.hbone.is_none());
        assert_eq!(r.next_hop, "10.0.3.2:5432".parse().unwrap());
        let r = route(&state(), 1, "web", "192.0.2.9:443").unwrap();
        assert!(r.hbone.is_none() && r.destination.is_none());
        assert_eq!(r.next_hop, "192.0.2.9:443".parse().unwrap());
    }

    #[test]
    fn pod_ip_traffic_keeps_its_port_and_expects_the_pod_identity() {
        let r = route(&state(), 1, "web", "10.0.2.2:8080").unwrap();
        assert_eq!(r.hbone, Some(("10.0.2.2:8080".into(), vec![id("cart")])));
        assert_eq!(r.next_hop, "10.0.2.2:15008".parse().unwrap());
    }

    #[test]
    fn the_proxys_own_listeners_are_never_a_destination() {
        let internal =
            |dst: &str| matches!(route(&state(), 1, "web", dst), Err(RouteError::Internal(_)));
        // admin (and `/quitquitquit`) on loopback, in every spelling of it
        for dst in [
            "127.0.0.1:15000",
            "0.0.0.0:15000",
            "127.9.9.9:15000",
            "[::1]:15000",
            "[::]:15000",
            "[::ffff:127.0.0.1]:15000",
        ] {
            assert!(internal(dst), "{dst}");
        }
        // every listener at the node's own address, and the traffic ports on loopback
        for port in [15001, 15006, 15008, 15080, 15021, 15020] {
            assert!(internal(&format!("10.0.2.1:{port}")), "{port}");
            assert!(internal(&format!("127.0.0.1:{port}")), "{port}");
            assert!(internal(&format!("[::ffff:10.0.2.1]:{port}")), "{port}");
        }
        // the same ports on a workload's own address are that workload's
        assert!(route(&state(), 1, "web", "10.0.2.2:15020").is_ok());
    }

    #[test]
    fn loopback_and_unspecified_destinations_no_workload_owns_are_refused() {
        for dst in [
            "127.0.0.1:8080",
            "0.0.0.0:22",
            "[::1]:6443",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                matches!(route(&state(), 1, "web", dst), Err(RouteError::Local(_))),
                "{dst}"
            );
        }
        // a mapped address that is a workload's routes like its IPv4 form
        let r = route(&state(), 1, "web", "[::ffff:10.0.2.2]:8080").unwrap();
        assert_eq!(r.next_hop, "10.0.2.2:15008".parse().unwrap());
    }
}
