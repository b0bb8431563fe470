//! Fuzz targets for the SOCKS5 handshake (15080): any local process can connect and write
//! anything, in any number of pieces, so the handshake is read against arbitrary bytes cut
//! at arbitrary points. It must never panic, never take more than its fixed buffer from the
//! client (an endless client is cut off, not buffered), answer on the wire exactly what
//! RFC 1928 says whatever the cuts were, and hand every byte behind the request upstream
//! once: a lost or repeated byte would corrupt the proxied stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::*;
use crate::fuzzing::{bounded, config};

/// What the client side of a [`Scripted`] stream saw.
#[derive(Debug, Default)]
struct Wire {
    /// Bytes handed to the reader.
    handed: usize,
    /// Bytes the server wrote.
    written: Vec<u8>,
}

/// A client that sends `input` in reads of at most `cuts[i]` bytes each (cycling), then
/// either ends or, `endless`, keeps sending filler without ever ending.
struct Scripted {
    input: Vec<u8>,
    at: usize,
    cuts: Vec<usize>,
    reads: usize,
    endless: bool,
    wire: Arc<Mutex<Wire>>,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let cut = self.cuts[self.reads % self.cuts.len()].max(1);
        self.reads += 1;
        let n = if self.at < self.input.len() {
            let n = cut.min(buf.remaining()).min(self.input.len() - self.at);
            buf.put_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            n
        } else if self.endless {
            let n = cut.min(buf.remaining());
            buf.put_slice(&vec![b'A'; n]);
            n
        } else {
            0
        };
        self.wire.lock().unwrap().handed += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.wire.lock().unwrap().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How a handshake ended, comparable across the implementation and the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Connect(SocketAddr),
    Eof,
    Version(u8),
    NoAuth,
    Command(u8),
    AddressType(u8),
    UnknownHost(String),
}

fn outcome(result: &Result<SocketAddr, Socks5Error>) -> Outcome {
    match result {
        Ok(a) => Outcome::Connect(*a),
        Err(Socks5Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Outcome::Eof,
        Err(Socks5Error::Io(e)) => panic!("unexpected I/O error {e}"),
        Err(Socks5Error::Version(v)) => Outcome::Version(*v),
        Err(Socks5Error::NoAuth) => Outcome::NoAuth,
        Err(Socks5Error::Command(c)) => Outcome::Command(*c),
        Err(Socks5Error::AddressType(t)) => Outcome::AddressType(*t),
        Err(Socks5Error::UnknownHost(h)) => Outcome::UnknownHost(h.clone()),
    }
}

/// RFC 1928 read straight from the text over the whole input: the outcome, whether the
/// no-auth method was selected, and how many bytes the greeting and request took.
fn reference(input: &[u8], names: &BTreeMap<String, IpAddr>) -> (Outcome, bool, usize) {
    let mut at = 0;
    let mut take = |n: usize| {
        let taken = input.get(at..at + n);
        at += n;
        taken
    };
    let Some(&[version, methods]) = take(2) else {
        return (Outcome::Eof, false, 0);
    };
    if version != 5 {
        return (Outcome::Version(version), false, 0);
    }
    let Some(methods) = take(usize::from(methods)) else {
        return (Outcome::Eof, false, 0);
    };
    if !methods.contains(&0) {
        return (Outcome::NoAuth, false, 0);
    }
    let Some(&[version, command, _, kind]) = take(4) else {
        return (Outcome::Eof, true, 0);
    };
    let refused = |o| (o, true, 0);
    if version != 5 {
        return refused(Outcome::Version(version));
    }
    if command != 1 {
        return refused(Outcome::Command(command));
    }
    let ip = match kind {
        1 => match take(4) {
            Some(b) => IpAddr::from(<[u8; 4]>::try_from(b).unwrap()),
            None => return refused(Outcome::Eof),
        },
        4 => match take(16) {
            Some(b) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap())).to_canonical(),
            None => return refused(Outcome::Eof),
        },
        3 => {
            let Some(&[len]) = take(1) else {
                return refused(Outcome::Eof);
            };
            let Some(name) = take(usize::from(len)) else {
                return refused(Outcome::Eof);
            };
            let name = String::from_utf8_lossy(name).into_owned();
            match names.get(&name) {
                Some(ip) => *ip,
                None => return refused(Outcome::UnknownHost(name)),
            }
        }
        other => return refused(Outcome::AddressType(other)),
    };
    let Some(&[high, low]) = take(2) else {
        return refused(Outcome::Eof);
    };
    let port = u16::from_be_bytes([high, low]);
    (Outcome::Connect(SocketAddr::new(ip, port)), true, at)
}

fn names() -> BTreeMap<String, IpAddr> {
    [
        ("echo.shop.svc.cluster.local", "10.96.0.10"),
        ("a", "fd00::1"),
    ]
    .into_iter()
    .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
    .collect()
}

/// What the server wrote and what it made of the input, plus the early data and whatever was
/// left to read after the handshake.
struct Run {
    result: Result<SocketAddr, Socks5Error>,
    wire: Wire,
    /// Bytes the handshake read (the rest were read after it).
    taken: usize,
    early: Vec<u8>,
    rest: Vec<u8>,
}

/// Runs the handshake as `serve` does (answering with the reply it would send) over
/// `input` cut by `cuts`.
fn run(input: &[u8], cuts: &[usize], endless: bool) -> Run {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let mut stream: BoxStream = Box::new(Scripted {
        input: input.to_vec(),
        at: 0,
        cuts: cuts.to_vec(),
        reads: 0,
        endless,
        wire: wire.clone(),
    });
    let names = names();
    let mut taken = 0;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (result, early, rest) = runtime.block_on(async {
        let mut handshake = Handshake::new();
        let result = handshake
            .read_request(&mut stream, |name| names.get(name).copied())
            .await;
        match &result {
            Ok(_) => handshake.reply(&mut stream, REPLY_OK).await.unwrap(),
            Err(Socks5Error::NoAuth) => {}
            Err(e) => handshake.reply(&mut stream, e.reply_code()).await.unwrap(),
        }
        let early = handshake.early_data().to_vec();
        taken = wire.lock().unwrap().handed;
        let mut rest = Vec::new();
        if !endless {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        (result, early, rest)
    });
    let wire = std::mem::take(&mut *wire.lock().unwrap());
    Run {
        result,
        wire,
        taken,
        early,
        rest,
    }
}

/// The bytes RFC 1928 has the server write for `outcome`.
fn expected_wire(outcome: &Outcome, selected: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if selected {
        out.extend_from_slice(&[5, 0]);
    }
    let code = match outcome {
        Outcome::NoAuth => return [5, 0xff].to_vec(),
        Outcome::Connect(_) => REPLY_OK,
        Outcome::Command(_) => REPLY_COMMAND_UNSUPPORTED,
        Outcome::AddressType(_) => REPLY_ADDRESS_UNSUPPORTED,
        Outcome::UnknownHost(_) => REPLY_HOST_UNREACHABLE,
        Outcome::Eof | Outcome::Version(_) => REPLY_FAILURE,
    };
    out.extend_from_slice(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
    out
}

/// Compares a run against the reference.
fn check(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let run = bounded("the SOCKS5 handshake", || run(input, cuts, false))?;
    let (expected, selected, consumed) = reference(input, &names());
    let got = outcome(&run.result);
    prop_assert_eq!(&got, &expected);
    prop_assert_eq!(run.wire.written, expected_wire(&expected, selected));
    prop_assert!(run.taken <= MAX_HANDSHAKE.min(input.len()));
    if let Outcome::Connect(_) = got {
        // Every byte behind the request reaches upstream once, in order.
        let mut after = run.early.clone();
        after.extend_from_slice(&run.rest);
        prop_assert_eq!(after, input[consumed..].to_vec());
    }
    Ok(())
}

/// A well-formed request for one of three kinds of destination, with the no-auth method
/// somewhere among the offered ones.
fn request() -> impl Strategy<Value = (Vec<u8>, SocketAddr)> {
    let names: Vec<(String, IpAddr)> = names().into_iter().collect();
    let destination = prop_oneof![
        any::<[u8; 4]>().prop_map(|b| (vec![1u8].into_iter().chain(b).collect(), IpAddr::from(b))),
        any::<[u8; 16]>().prop_map(|b| {
            let ip = IpAddr::V6(Ipv6Addr::from(b)).to_canonical();
            (vec![4u8].into_iter().chain(b).collect(), ip)
        }),
        prop::sample::select(names).prop_map(|(name, ip)| {
            let mut bytes = vec![3u8, name.len() as u8];
            bytes.extend_from_slice(name.as_bytes());
            (bytes, ip)
        }),
    ];
    let methods = (
        prop::collection::vec(1u8..=255, 0..20),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut m, at)| {
            m.insert(at.index(m.len() + 1), 0);
            m
        });
    (methods, destination, any::<u16>()).prop_map(|(methods, (address, ip), port)| {
        let mut bytes = vec![5, methods.len() as u8];
        bytes.extend_from_slice(&methods);
        bytes.extend_from_slice(&[5, 1, 0]);
        bytes.extend_from_slice(&address);
        bytes.extend_from_slice(&port.to_be_bytes());
        (bytes, SocketAddr::new(ip, port))
    })
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 1usize..600], 1..6)
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary bytes: the outcome and the wire output are RFC 1928's, whatever the cuts.
    #[test]
    fn fuzz_socks5_arbitrary_bytes(
        input in prop::collection::vec(any::<u8>(), 0..700),
        cuts in cuts(),
    ) {
        check(&input, &cuts)?;
    }

    /// Near-valid handshakes (a valid request with one byte changed, cut short, or followed
    /// by payload) reach the deeper branches random bytes rarely do.
    #[test]
    fn fuzz_socks5_mutated_requests(
        (mut input, _) in request(),
        flip in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        cut in prop::option::of(any::<prop::sample::Index>()),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        cuts in cuts(),
    ) {
        if let Some((at, byte)) = flip {
            let at = at.index(input.len());
            input[at] = byte;
        }
        input.extend_from_slice(&payload);
        if let Some(cut) = cut {
            input.truncate(cut.index(input.len() + 1));
        }
        check(&input, &cuts)?;
    }

    /// A valid request reaches the destination it names (an IPv4-mapped IPv6 address as
    /// IPv4, a name as its service's VIP), and the payload behind it goes upstream intact.
    #[test]
    fn fuzz_socks5_request_round_trip(
        (mut input, destination) in request(),
        payload in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in cuts(),
    ) {
        let request_len = input.len();
        input.extend_from_slice(&payload);
        let run = bounded("the SOCKS5 handshake", || run(&input, &cuts, false))?;
        prop_assert_eq!(outcome(&run.result), Outcome::Connect(destination));
        let mut after = run.early;
        after.extend_from_slice(&run.rest);
        prop_assert_eq!(&after[..], &input[request_len..]);
    }

    /// A client that never stops sending is held to the handshake's fixed buffer: the
    /// handshake ends (with an answer) having taken at most MAX_HANDSHAKE bytes.
    #[test]
    fn fuzz_socks5_endless_client_is_bounded(
        input in prop::collection::vec(any::<u8>(), 0..300),
        cuts in cuts(),
    ) {
        let run = bounded("the SOCKS5 handshake", || run(&input, &cuts, true))?;
        prop_assert!(run.taken <= MAX_HANDSHAKE, "took {} bytes", run.taken);
        prop_assert!(!run.wire.written.is_empty());
        prop_assert!(!matches!(outcome(&run.result), Outcome::Eof));
    }
}
