//! A tap on the simulated wire between nodes: every TCP segment that crosses between two node
//! hosts, scanned for the markers the simulator's applications put in every request.
//!
//! turmoil keeps each message on its link until its latency has passed and exposes it through
//! [`turmoil::Sim::links`] as a [`turmoil::SentRef`], whose [`turmoil::Protocol`] carries the
//! real payload (`Segment::Data(seq, bytes)`). With a minimum link latency of at least one
//! tick, a message sent during a step is still on its link when that step returns, so reading
//! the links after every step sees every segment. Each flow's segments are numbered from 1; a
//! gap means the tap missed something, and the tap then says so rather than vouching for bytes
//! it never saw.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use turmoil::{Protocol, Segment, Sim};

/// The prefix of every request marker: `SIMREQ:<traffic index>:<request number>;`.
pub const MARKER: &[u8] = b"SIMREQ:";

/// The marker of request `n` of traffic `traffic`.
pub fn marker(traffic: usize, n: u64) -> String {
    format!("SIMREQ:{traffic}:{n};")
}

/// Every marker in `bytes`, as (traffic index, request number).
pub fn markers_in(bytes: &[u8]) -> Vec<(usize, u64)> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(MARKER.len()).position(|w| w == MARKER) {
        rest = &rest[at + MARKER.len()..];
        let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
        let parsed = std::str::from_utf8(&rest[..end.min(40)])
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(t, n)| Some((t.parse().ok()?, n.parse().ok()?)));
        if let Some(m) = parsed {
            found.push(m);
        }
    }
    found
}

/// A marker seen in plaintext on the wire between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub traffic: usize,
    pub request: u64,
}

/// What the tap has seen of one direction of one TCP connection.
#[derive(Debug)]
struct FlowState {
    /// Every segment below this one has been seen (segments are numbered from 1).
    next: u64,
    /// Segments seen beyond `next`: a gap before them is still open.
    ahead: BTreeSet<u64>,
    segments: usize,
    /// The last bytes of the flow, so a marker split across segments is found too.
    tail: Vec<u8>,
    bytes: usize,
}

impl Default for FlowState {
    fn default() -> Self {
        FlowState {
            next: 1,
            ahead: BTreeSet::new(),
            segments: 0,
            tail: Vec::new(),
            bytes: 0,
        }
    }
}

impl FlowState {
    /// Marks segment `seq` seen; false when it had been already (a message stays on its link
    /// for several steps, and only the first sighting counts).
    fn first_sighting(&mut self, seq: u64) -> bool {
        if seq < self.next || !self.ahead.insert(seq) {
            return false;
        }
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
        self.segments += 1;
        true
    }
}

/// Totals for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireReport {
    pub flows: usize,
    pub segments: usize,
    pub bytes: usize,
    /// Flows with a gap in their segment numbers (the tap missed a segment).
    pub incomplete: usize,
}

impl WireReport {
    /// `<flows> flows, <segments> segments, <bytes> bytes`.
    pub fn summary(&self) -> String {
        format!(
            "{} flows, {} segments, {} bytes",
            self.flows, self.segments, self.bytes
        )
    }
}

/// Records the TCP segments between any two of a set of hosts.
#[derive(Debug, Default)]
pub struct WireTap {
    hosts: BTreeSet<IpAddr>,
    flows: BTreeMap<(SocketAddr, SocketAddr), FlowState>,
}

impl WireTap {
    /// A tap on every link between two of `hosts`.
    pub fn new(hosts: impl IntoIterator<Item = IpAddr>) -> Self {
        WireTap {
            hosts: hosts.into_iter().collect(),
            flows: BTreeMap::new(),
        }
    }

    /// Reads every message on the tapped links; returns the markers in segments seen for the
    /// first time (a marker may be reported more than once).
    /// Call after every `Sim::step`.
    pub fn observe(&mut self, sim: &Sim<'_>) -> Vec<Sighting> {
        let hosts = &self.hosts;
        let flows = &mut self.flows;
        let mut sightings = Vec::new();
        sim.links(|links| {
            for link in links {
                let (x, y) = link.pair();
                // Most links are empty on most steps: ask whether a link is tapped only when
                // it carries something.
                let mut tapped = None;
                for sent in link {
                    if !*tapped
                        .get_or_insert_with(|| x != y && hosts.contains(&x) && hosts.contains(&y))
                    {
                        break;
                    }
                    let (src, dst) = sent.pair();
                    let (seq, bytes) = match sent.protocol() {
                        Protocol::Tcp(Segment::Data(seq, bytes)) => (*seq, Some(bytes)),
                        Protocol::Tcp(Segment::Fin(seq)) => (*seq, None),
                        _ => continue,
                    };
                    let flow = flows.entry((src, dst)).or_default();
                    if !flow.first_sighting(seq) {
                        continue;
                    }
                    let Some(bytes) = bytes else { continue };
                    flow.bytes += bytes.len();
                    let mut window = std::mem::take(&mut flow.tail);
                    window.extend_from_slice(bytes);
                    for (traffic, request) in markers_in(&window) {
                        sightings.push(Sighting {
                            src,
                            dst,
                            traffic,
                            request,
                        });
                    }
                    // Enough to complete a marker cut at the segment boundary (a marker
                    // wholly inside it is reported again: callers keep the first sighting).
                    let keep = window.len().min(31);
                    flow.tail = window.split_off(window.len() - keep);
                }
            }
        });
        sightings
    }

    /// Totals so far.
    pub fn report(&self) -> WireReport {
        let mut report = WireReport {
            flows: self.flows.len(),
            ..WireReport::default()
        };
        for flow in self.flows.values() {
            report.segments += flow.segments;
            report.bytes += flow.bytes;
            if !flow.ahead.is_empty() {
                report.incomplete += 1;
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_and_parsed() {
        let text = format!("GET /x {} and {}", marker(3, 17), marker(0, 1));
        assert_eq!(markers_in(text.as_bytes()), vec![(3, 17), (0, 1)]);
        assert!(markers_in(b"SIMREQ:x:1;").is_empty());
        assert!(markers_in(b"nothing here").is_empty());
    }

    #[test]
    fn a_flow_counts_each_segment_once_and_knows_its_gaps() {
        let mut flow = FlowState::default();
        assert!(flow.first_sighting(1));
        assert!(!flow.first_sighting(1));
        assert!(flow.first_sighting(3));
        assert!(!flow.first_sighting(3));
        assert!(!flow.ahead.is_empty(), "segment 2 is missing");
        assert!(flow.first_sighting(2));
        assert!(flow.ahead.is_empty());
        assert_eq!((flow.next, flow.segments), (4, 3));
    }
}
