//! The wire between nodes, read as the simulator's `plaintext` invariant reads its own: a
//! packet capture (`AF_PACKET`, [`harness::capture`]) on every node's LAN link for the whole
//! run. Two things must hold of what crossed:
//!
//! - no request marker of a traffic that must be encrypted appears in any flow's bytes (the
//!   simulator's rule, with its default: encrypted when the source pod is captured);
//! - between two enrolled pods (or a waypoint), every flow is HBONE: one end on 15008, and its
//!   bytes nothing but TLS records, from the first to the last.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddrV4};

use harness::capture::{self, Capture};
use sim::scenario::{Capture as CaptureMode, Scenario};

use crate::Error;
use crate::placement::Placement;
use crate::topology::Topology;

/// The HBONE port: the only one mesh traffic between pods may use.
const HBONE: u16 = 15008;

/// Captures running on every node's link.
pub struct Tap {
    captures: Vec<(String, Capture)>,
}

/// What the tap saw, and what it found wrong.
#[derive(Debug, Default)]
pub struct WireReport {
    /// Flows (one direction of a connection) with data between pods.
    pub pod_flows: usize,
    /// Of those, HBONE flows whose every byte was a TLS record.
    pub tls_flows: usize,
    pub violations: Vec<String>,
}

impl Tap {
    pub fn start(topology: &Topology) -> Result<Tap, Error> {
        let mut captures = Vec::new();
        for (name, node) in &topology.nodes {
            let capture = Capture::start(&node.netns, "eth0")
                .map_err(|e| Error::io(format!("capturing on {name}'s link"), e))?;
            captures.push((name.clone(), capture));
        }
        Ok(Tap { captures })
    }

    /// Stops capturing and checks what crossed.
    pub fn finish(self, scenario: &Scenario, placement: &Placement) -> Result<WireReport, Error> {
        let mut segments = Vec::new();
        for (name, capture) in self.captures {
            segments.extend(
                capture
                    .stop()
                    .map_err(|e| Error::io(format!("the capture on {name}'s link"), e))?,
            );
        }
        Ok(check(&capture::flows(&segments), scenario, placement))
    }
}

/// Whether `traffic`'s requests must cross encrypted (the simulator's default: when its source
/// is captured, which on a kernel means enrolled).
fn must_be_encrypted(scenario: &Scenario, placement: &Placement, traffic: usize) -> bool {
    let Some(t) = scenario.traffic.get(traffic) else {
        return false;
    };
    t.encrypted.unwrap_or(match t.capture {
        CaptureMode::Captured => true,
        CaptureMode::Uncaptured => false,
        CaptureMode::Auto => placement.pods_of(&t.from.0).iter().all(|p| p.enrolled),
    })
}

fn check(
    flows: &BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<u8>>,
    scenario: &Scenario,
    placement: &Placement,
) -> WireReport {
    // Pods whose traffic between nodes must be HBONE: enrolled ones and waypoints.
    let meshed = |ip: IpAddr| {
        placement
            .pods
            .iter()
            .any(|p| p.ip == ip && (p.enrolled || p.waypoint.is_some()))
    };
    let is_pod = |ip: IpAddr| placement.pods.iter().any(|p| p.ip == ip);
    let mut report = WireReport::default();
    for ((source, destination), bytes) in flows {
        for (traffic, n) in sim::wire::markers_in(bytes) {
            if must_be_encrypted(scenario, placement, traffic) {
                let name = scenario
                    .traffic
                    .get(traffic)
                    .map_or("?", |t| t.name.as_str());
                report.violations.push(format!(
                    "request {name}#{n} crossed from {source} to {destination} in plaintext, \
                     but the scenario says this traffic is encrypted"
                ));
            }
        }
        let (s, d) = (IpAddr::V4(*source.ip()), IpAddr::V4(*destination.ip()));
        if !(is_pod(s) && is_pod(d)) {
            continue;
        }
        report.pod_flows += 1;
        let hbone = source.port() == HBONE || destination.port() == HBONE;
        if meshed(s) && meshed(d) && !hbone {
            report.violations.push(format!(
                "{source} -> {destination}: between two meshed pods, but not on {HBONE}"
            ));
        }
        if hbone {
            match capture::tls_records_only(bytes) {
                Ok(_) => report.tls_flows += 1,
                Err(why) => report.violations.push(format!(
                    "{source} -> {destination} (HBONE) is not only TLS: {why}"
                )),
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn scenario() -> Scenario {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sim/scenarios/basic-mtls.yaml"
        );
        Scenario::load(std::path::Path::new(path)).expect("a shipped scenario")
    }

    fn at(ip: IpAddr, port: u16) -> SocketAddrV4 {
        match ip {
            IpAddr::V4(v4) => SocketAddrV4::new(v4, port),
            IpAddr::V6(_) => panic!("IPv4 pods"),
        }
    }

    #[test]
    fn only_tls_on_15008_between_meshed_pods_passes_and_anything_else_is_named() {
        let scenario = scenario();
        let placement = Placement::of(&scenario).unwrap();
        let web = placement
            .pods
            .iter()
            .find(|p| p.name.starts_with("web"))
            .unwrap()
            .ip;
        let echo = placement
            .pods
            .iter()
            .find(|p| p.name.starts_with("echo"))
            .unwrap()
            .ip;
        let tls = [
            0x16, 0x03, 0x01, 0x00, 0x01, 0x00, 0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb,
        ];
        let mut flows = BTreeMap::new();
        flows.insert((at(web, 40000), at(echo, HBONE)), tls.to_vec());
        // Between nodes, not pods (xDS to istiod): not this check's business.
        flows.insert(
            (
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40001),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 15010),
            ),
            b"plain".to_vec(),
        );
        let report = check(&flows, &scenario, &placement);
        assert_eq!(report.violations, Vec::<String>::new());
        assert_eq!((report.pod_flows, report.tls_flows), (1, 1));

        // A request marker of this captured traffic, in the clear.
        let marker = sim::wire::marker(0, 7);
        flows.insert(
            (at(web, 40002), at(echo, HBONE)),
            format!("{marker} hi").into_bytes(),
        );
        // Meshed pods talking past the mesh.
        flows.insert((at(web, 40003), at(echo, 8080)), tls.to_vec());
        let report = check(&flows, &scenario, &placement);
        let all = report.violations.join("\n");
        assert!(
            all.contains("#7 crossed") && all.contains("in plaintext"),
            "{all}"
        );
        assert!(all.contains("not only TLS"), "{all}");
        assert!(all.contains("not on 15008"), "{all}");
        assert_eq!(report.violations.len(), 3, "{all}");
    }
}
