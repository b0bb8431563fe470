//! What the CONNECT headers besides `:authority` carry, and how a receiver reads them
//! (wire facts §4.4): `traceparent` ties both ends' log lines for one connection together;
//! `forwarded`'s `host=` names the service the client meant, for the receiver's telemetry.

use std::fmt;

use crate::seams::Entropy;

/// A W3C `traceparent`, version 00: new for each outbound connection, adopted by the receiver
/// as the id of its own log lines for that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    span_id: u64,
}

impl TraceParent {
    /// The `traceparent` a CONNECT carries, adopted as this side's log id so one
    /// connection's lines on both ends share it; a new one when it is missing or malformed.
    pub fn adopt(headers: &http::HeaderMap, entropy: &Entropy) -> TraceParent {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .unwrap_or_else(|| TraceParent::generate(entropy))
    }

    /// A fresh one from the entropy seam (so simulated runs repeat), never the all-zero ids
    /// W3C reserves as invalid.
    pub fn generate(entropy: &Entropy) -> TraceParent {
        let high = u128::from(entropy.next_u64());
        let low = u128::from(entropy.next_u64());
        TraceParent {
            trace_id: ((high << 64) | low).max(1),
            span_id: entropy.next_u64().max(1),
        }
    }

    /// Reads a received header: exactly `00-<32 hex>-<16 hex>-<2 hex>` (55 characters), ids not
    /// all zero. Anything else is not adopted.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let b = value.as_bytes();
        let shaped = b.len() == 55
            && value.starts_with("00-")
            && b[35] == b'-'
            && b[52] == b'-'
            && [3..35, 36..52, 53..55].iter().all(|r| {
                b[r.clone()]
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            });
        if !shaped {
            return None;
        }
        let trace_id = u128::from_str_radix(&value[3..35], 16).ok()?;
        let span_id = u64::from_str_radix(&value[36..52], 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-00", self.trace_id, self.span_id)
    }
}

/// The `host=` of a `forwarded` header (RFC 7239), unquoted: the service hostname the client
/// dialled. Only the first element counts, as it is the one the sending ztunnel wrote.
pub fn forwarded_host(value: &str) -> Option<&str> {
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (name, v) = pair.trim().split_once('=')?;
        if !name.eq_ignore_ascii_case("host") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_has_the_w3c_shape() {
        let entropy = Entropy::seeded(7);
        let t = TraceParent::generate(&entropy);
        let text = t.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceParent::parse(&text), Some(t));
        // the same seed, the same ids
        assert_eq!(TraceParent::generate(&Entropy::seeded(7)), t);
    }

    #[test]
    fn traceparent_parse_refuses_what_is_not_version_00() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(TraceParent::parse(good).is_some());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_host_reads_the_first_elements_host() {
        assert_eq!(
            forwarded_host("for=\"10.0.0.1:4000\";host=echo.shop.svc.cluster.local"),
            Some("echo.shop.svc.cluster.local")
        );
        assert_eq!(
            forwarded_host("for=\"10.0.0.1:4000\"; Host=\"a.b\", host=c.d"),
            Some("a.b")
        );
        assert_eq!(forwarded_host("for=\"10.0.0.1:4000\""), None);
        assert_eq!(forwarded_host("for=x;host="), None);
        assert_eq!(forwarded_host("garbage"), None);
        assert_eq!(forwarded_host(""), None);
    }
}
