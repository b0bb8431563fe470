//! A tap on the simulated wire between two hosts: every TCP segment that crosses it, with its
//! payload bytes, reassembled per flow.
//!
//! turmoil keeps each message on its link until its latency has passed and exposes it through
//! [`turmoil::Sim::links`] as a [`turmoil::SentRef`], whose [`turmoil::Protocol`] carries the
//! real payload (`Segment::Data(seq, bytes)`). With a minimum link latency of at least one
//! tick, a message sent during a step is still on its link when that step returns, so reading
//! the links after every step sees every segment. Each flow's segments are numbered from 1; a
//! gap means the tap missed something, and the tap then says so rather than vouching for bytes
//! it never saw.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use turmoil::{Protocol, Segment, Sim};

/// One direction of one TCP connection, as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The sending end, as turmoil addresses it (node address and port).
    pub src: SocketAddr,
    /// The receiving end.
    pub dst: SocketAddr,
    /// The payload, in sequence order.
    pub bytes: Vec<u8>,
    /// Data and FIN segments seen.
    pub segments: usize,
    /// Whether the segments seen are exactly `1..=n`, i.e. none was missed.
    pub complete: bool,
}

impl Flow {
    /// Whether `needle` occurs in this flow's payload (across segment boundaries too).
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Whether either end of the flow is `port`.
    pub fn touches_port(&self, port: u16) -> bool {
        self.src.port() == port || self.dst.port() == port
    }
}

/// Everything the tap saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireReport {
    /// In (src, dst) order.
    pub flows: Vec<Flow>,
}

impl WireReport {
    /// The flows whose payload contains `needle`.
    pub fn flows_containing(&self, needle: &[u8]) -> Vec<&Flow> {
        self.flows.iter().filter(|f| f.contains(needle)).collect()
    }

    /// Flows with a gap in their segment numbers.
    pub fn incomplete(&self) -> Vec<&Flow> {
        self.flows.iter().filter(|f| !f.complete).collect()
    }

    /// `<flows> flows, <segments> segments, <bytes> bytes`, for logs and reports.
    pub fn summary(&self) -> String {
        let segments: usize = self.flows.iter().map(|f| f.segments).sum();
        let bytes: usize = self.flows.iter().map(|f| f.bytes.len()).sum();
        format!(
            "{} flows, {segments} segments, {bytes} bytes",
            self.flows.len()
        )
    }
}

/// What one segment carried: payload, or the end of the flow.
type Seen = Option<Vec<u8>>;

/// Records the TCP segments on the link between two hosts.
#[derive(Debug)]
pub struct WireTap {
    a: IpAddr,
    b: IpAddr,
    /// (src, dst) → segment number → payload. Ordered maps, so the report is deterministic.
    flows: BTreeMap<(SocketAddr, SocketAddr), BTreeMap<u64, Seen>>,
}

impl WireTap {
    /// A tap on the link between the hosts at `a` and `b` (both directions).
    pub fn new(a: IpAddr, b: IpAddr) -> Self {
        WireTap {
            a,
            b,
            flows: BTreeMap::new(),
        }
    }

    /// Reads every message currently on the tapped link. Call after every `Sim::step`.
    pub fn observe(&mut self, sim: &Sim<'_>) {
        let (a, b) = (self.a, self.b);
        let flows = &mut self.flows;
        sim.links(|links| {
            for link in links {
                let (x, y) = link.pair();
                if !((x == a && y == b) || (x == b && y == a)) {
                    continue;
                }
                for sent in link {
                    let (src, dst) = sent.pair();
                    let (seq, seen) = match sent.protocol() {
                        Protocol::Tcp(Segment::Data(seq, bytes)) => (*seq, Some(bytes.to_vec())),
                        Protocol::Tcp(Segment::Fin(seq)) => (*seq, None),
                        _ => continue,
                    };
                    // A message stays on the link for several steps; the first sighting counts.
                    flows
                        .entry((src, dst))
                        .or_default()
                        .entry(seq)
                        .or_insert(seen);
                }
            }
        });
    }

    /// Reassembles what was seen so far.
    pub fn report(&self) -> WireReport {
        let flows = self
            .flows
            .iter()
            .map(|(&(src, dst), segments)| {
                let complete = segments.keys().copied().eq(1..=segments.len() as u64);
                let bytes = segments.values().flatten().flatten().copied().collect();
                Flow {
                    src,
                    dst,
                    bytes,
                    segments: segments.len(),
                    complete,
                }
            })
            .collect();
        WireReport { flows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needle_across_segments_and_gaps() {
        let addr = |p| SocketAddr::from(([192, 168, 0, 1], p));
        let mut tap = WireTap::new(addr(1).ip(), "192.168.0.2".parse().unwrap());
        let flow = tap.flows.entry((addr(49152), addr(15008))).or_default();
        flow.insert(2, Some(b"et payload".to_vec()));
        flow.insert(1, Some(b"a secr".to_vec()));
        flow.insert(3, None);
        let report = tap.report();
        assert_eq!(report.flows[0].bytes, b"a secret payload");
        assert!(report.flows[0].complete);
        assert_eq!(report.flows_containing(b"secret").len(), 1);
        assert!(report.flows[0].touches_port(15008));
        assert!(report.incomplete().is_empty());

        tap.flows
            .entry((addr(49153), addr(15008)))
            .or_default()
            .insert(2, Some(b"x".to_vec()));
        assert_eq!(tap.report().incomplete().len(), 1, "segment 1 was missed");
        assert_eq!(tap.report().summary(), "2 flows, 4 segments, 17 bytes");
    }
}
