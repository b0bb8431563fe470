//! Fuzz targets for what an HBONE peer reads from a CONNECT: the request's admission (method,
//! header-list size, `host:port` authority), the authority as the ztunnel reads it, and the
//! `traceparent` and `forwarded` headers. Any mesh workload with a certificate can send any
//! of these, so each is read against arbitrary text as well as the shapes the sending side
//! writes, and what our own client renders must read back as exactly what it meant: a
//! CONNECT that does not survive the trip goes to the wrong place or loses its trace.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method, Request};
use proptest::prelude::*;
use regex::Regex;

use super::client::connect_request;
use super::server::{Authority, Refusal, admit};
use super::{ConnectHeaders, SERVER_MAX_HEADER_LIST, TraceParent, forwarded_host};
use crate::fuzzing::{bounded, config, hostile_text};
use crate::seams::Entropy;

/// W3C trace-context §3.2, version 00, written out independently of the parser.
fn w3c(value: &str) -> bool {
    let shape = Regex::new("^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$").unwrap();
    shape
        .captures(value)
        .is_some_and(|c| c[1].bytes().any(|b| b != b'0') && c[2].bytes().any(|b| b != b'0'))
}

/// Text near a traceparent: valid ones, one character off, case and length changed.
fn traceparent_like() -> impl Strategy<Value = String> {
    let valid = (any::<u128>(), any::<u64>(), any::<u8>())
        .prop_map(|(t, s, f)| format!("00-{t:032x}-{s:016x}-{f:02x}"));
    let zeros = (prop::bool::ANY, any::<u64>()).prop_map(|(zero_trace, x)| {
        let (t, s) = if zero_trace {
            (0, x)
        } else {
            (u128::from(x), 0)
        };
        format!("00-{t:032x}-{s:016x}-01")
    });
    let edited = (
        valid.clone(),
        any::<prop::sample::Index>(),
        prop::sample::select(vec!["", "0", "A", "g", "-", "+", " ", "é", "00", "\u{0}"]),
        0usize..3,
    )
        .prop_map(|(v, at, with, cut)| {
            let at = at.index(v.len());
            format!("{}{with}{}", &v[..at], &v[(at + cut).min(v.len())..])
        });
    prop_oneof![
        2 => valid.clone(),
        1 => valid.prop_map(|v| v.to_uppercase()),
        1 => zeros,
        4 => edited,
        2 => "\\PC{0,70}",
    ]
}

/// An address as a route renders it: any IP (v6 without scope or flow label), any port.
fn address() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A DNS name, as a Service hostname is.
fn hostname() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,10}[a-z0-9])?){0,4}"
}

fn header_value(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

proptest! {
    #![proptest_config(config(1024))]

    /// `parse` takes exactly the W3C grammar, and what it takes it renders back (with the
    /// flags, which it does not keep, as `00`); `adopt` keeps a valid one and otherwise makes
    /// a fresh, valid one.
    #[test]
    fn fuzz_traceparent_parse(value in traceparent_like(), seed in any::<u64>()) {
        let parsed = bounded("parsing", || TraceParent::parse(&value))?;
        prop_assert_eq!(parsed.is_some(), w3c(&value), "{:?}", value);
        if let Some(t) = parsed {
            prop_assert_eq!(t.to_string(), format!("{}00", &value[..53]));
            prop_assert_eq!(TraceParent::parse(&t.to_string()), Some(t));
        }
        let mut headers = HeaderMap::new();
        if let Some(v) = header_value(&value) {
            headers.insert("traceparent", v);
        }
        let adopted = TraceParent::adopt(&headers, &Entropy::seeded(seed));
        prop_assert!(w3c(&adopted.to_string()));
        if headers.contains_key("traceparent") && parsed.is_some() {
            prop_assert_eq!(Some(adopted), parsed);
        }
    }

    /// The `host=` of the first `forwarded` element, from what the sending ztunnel writes
    /// (with later elements, spacing, case and quoting varied); on any text, whatever is
    /// read is non-empty text of the first element.
    #[test]
    fn fuzz_forwarded_host(
        peer in address(),
        host in hostname(),
        spaced in prop::bool::ANY,
        quoted in prop::bool::ANY,
        upper in prop::bool::ANY,
        later in prop::option::of(hostile_text()),
        noise in "\\PC{0,80}",
    ) {
        let key = if upper { "Host" } else { "host" };
        let value = if quoted { format!("\"{host}\"") } else { host.clone() };
        let sep = if spaced { " ; " } else { ";" };
        let mut written = format!("for=\"{peer}\"{sep}{key}={value}");
        if let Some(later) = later {
            written.push_str(&format!(", {later}"));
        }
        prop_assert_eq!(bounded("reading", || forwarded_host(&written))?, Some(host.as_str()));
        for text in [noise.as_str(), &format!("{noise};host={host}")] {
            if let Some(h) = bounded("reading", || forwarded_host(text))? {
                let first = text.split(',').next().unwrap_or_default();
                prop_assert!(!h.is_empty() && first.contains(h) && !h.contains(','));
            }
        }
    }

    /// Admission of any request http can represent: anything but CONNECT is a 400, a header
    /// list over SERVER_MAX_HEADER_LIST (RFC 7541 size) a 431, and what is admitted carries
    /// a `host:port` authority the ztunnel can read, which reads back the same.
    #[test]
    fn fuzz_connect_admission(
        method in prop_oneof![
            4 => Just(Method::CONNECT),
            1 => prop::sample::select(vec![Method::GET, Method::POST, Method::OPTIONS]),
        ],
        uri in prop_oneof![
            address().prop_map(|a| a.to_string()),
            (hostname(), any::<u16>()).prop_map(|(h, p)| format!("{h}:{p}")),
            (hostname(), hostile_text()).prop_map(|(h, p)| format!("{h}:{p}")),
            hostile_text(),
            "\\PC{0,40}",
            address().prop_map(|a| format!("http://{a}/path")),
        ],
        headers in prop::collection::vec(
            ("[a-z][a-z0-9-]{0,20}", 0usize..40_000, any::<u8>()),
            0..6,
        ),
    ) {
        let Ok(request) = Request::builder().method(method.clone()).uri(uri.as_str()).body(())
        else {
            return Ok(());
        };
        let (mut parts, ()) = request.into_parts();
        for (name, len, byte) in &headers {
            let fill = char::from(b'a' + byte % 26).to_string().repeat(*len);
            parts.headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&fill).unwrap());
        }
        let size: usize = parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let admitted = bounded("admission", || admit(&parts))?;
        if method != Method::CONNECT {
            prop_assert_eq!(admitted, Err(Refusal::NotConnect(method)));
        } else if size > SERVER_MAX_HEADER_LIST as usize {
            prop_assert_eq!(&admitted, &Err(Refusal::HeadersTooLarge(size)));
            prop_assert_eq!(admitted.unwrap_err().status().as_u16(), 431);
        } else if let Ok(authority) = admitted {
            let read = Authority::parse(&authority);
            prop_assert!(read.is_some(), "admitted {:?} unreadable", authority);
            let again = read.map(|a| a.to_string());
            prop_assert_eq!(again.as_deref().and_then(Authority::parse), read);
        } else {
            prop_assert_eq!(admitted.unwrap_err().status().as_u16(), 400);
        }
    }

    /// Our client's CONNECT, as the peer reads it: always built, whatever the telemetry
    /// headers hold (they are informational and must never cost the connection); admitted
    /// with the same authority, which the ztunnel reads as the same address; and the
    /// `traceparent` and `forwarded` host read back as written.
    #[test]
    fn fuzz_connect_round_trip(
        destination in address(),
        peer in address(),
        host in prop::option::of(hostname()),
        baggage in prop_oneof![hostile_text(), "[a-z0-9.=,-]{0,80}"],
        seed in any::<u64>(),
    ) {
        let trace = TraceParent::generate(&Entropy::seeded(seed));
        let headers = ConnectHeaders {
            baggage: baggage.clone(),
            forwarded: match &host {
                Some(h) => format!("for=\"{peer}\";host={h}"),
                None => format!("for=\"{peer}\""),
            },
            traceparent: trace.to_string(),
        };
        let authority = destination.to_string();
        let request = bounded("building the CONNECT", || connect_request(&authority, &headers))?;
        prop_assert!(request.is_ok(), "{:?}", request.err());
        let (parts, ()) = request.unwrap().into_parts();
        let admitted = admit(&parts);
        prop_assert_eq!(admitted.as_deref(), Ok(authority.as_str()));
        prop_assert_eq!(
            Authority::parse(&authority),
            Some(Authority::Address(destination))
        );
        prop_assert_eq!(TraceParent::adopt(&parts.headers, &Entropy::seeded(0)), trace);
        let forwarded = parts.headers.get("forwarded").and_then(|v| v.to_str().ok());
        prop_assert_eq!(forwarded.and_then(forwarded_host), host.as_deref());
        let sent = parts.headers.get("baggage").map(HeaderValue::as_bytes);
        match header_value(&baggage).filter(|_| !baggage.is_empty()) {
            Some(v) => prop_assert_eq!(sent, Some(v.as_bytes())),
            None => prop_assert_eq!(sent, None),
        }
    }

    /// Authorities: a hostname and port, or an address, read back from their rendering;
    /// arbitrary text never panics, and whatever it reads as renders to text that reads the
    /// same.
    #[test]
    fn fuzz_authority_round_trip(
        address in address(),
        host in hostname(),
        port in any::<u16>(),
        text in prop_oneof![hostile_text(), "\\PC{0,40}", "[0-9a-f:.\\[\\]+]{0,30}"],
    ) {
        let a = Authority::Address(address);
        let rendered = a.to_string();
        prop_assert_eq!(Authority::parse(&rendered), Some(a));
        let h = Authority::Host(&host, port);
        let rendered = h.to_string();
        prop_assert_eq!(Authority::parse(&rendered), Some(h));
        if let Some(read) = bounded("parsing", || Authority::parse(&text))? {
            let rendered = read.to_string();
            prop_assert_eq!(Authority::parse(&rendered), Some(read), "from {:?}", text);
        }
    }
}
