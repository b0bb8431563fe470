//! Bytes that are not the protocol a port speaks: random noise, another port's protocol, a
//! TLS record header promising more than comes, and each port's own handshake cut short.
//! A listener may answer or close as it likes; it must stay up, keep serving, and give back
//! what the connections held.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;

use super::{Ctx, Findings};
use crate::mesh::ports;
use crate::wire::{h2raw, tcp, tls};

/// Deterministic noise (xorshift64*), so a failing run can be replayed byte for byte.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A real TLS 1.3 ClientHello with ALPN h2, as a client would open with.
pub fn client_hello(to: SocketAddr) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(tls::no_certificate()), name)
        .expect("a client connection for an IP address");
    let mut out = Vec::new();
    let _ = conn.write_tls(&mut out);
    out
}

pub const HTTP_REQUEST: &[u8] =
    b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nUser-Agent: robustness\r\nAccept: */*\r\n\r\n";

/// The bytes a well-behaved client opens `to` with.
pub fn handshake(to: SocketAddr) -> Vec<u8> {
    match to.port() {
        ports::HBONE | ports::XDS_TLS => client_hello(to),
        ports::SOCKS5 => {
            let mut b = vec![5, 1, 0, 5, 1, 0, 1];
            if let std::net::IpAddr::V4(v4) = to.ip() {
                b.extend_from_slice(&v4.octets());
            }
            b.extend_from_slice(&crate::mesh::ECHO_PORT.to_be_bytes());
            b
        }
        ports::XDS_PLAINTEXT => {
            let mut b = h2raw::PREFACE.to_vec();
            b.extend_from_slice(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
            b
        }
        _ => HTTP_REQUEST.to_vec(),
    }
}

/// Another protocol than the one `to` speaks.
fn wrong_protocol(to: SocketAddr) -> Vec<u8> {
    match to.port() {
        ports::HBONE | ports::XDS_TLS | ports::SOCKS5 | ports::XDS_PLAINTEXT => {
            HTTP_REQUEST.to_vec()
        }
        _ => client_hello(to),
    }
}

/// Sends `payload` to `to`, reads for up to `wait`, closes (with a reset if `rst`).
async fn hit(
    to: SocketAddr,
    payload: Vec<u8>,
    wait: Duration,
    rst: bool,
) -> Result<bool, std::io::Error> {
    let mut s = tcp::connect_from(None, to, Duration::from_secs(2)).await?;
    let _ = s.write_all(&payload).await;
    let closed = tcp::closed_within(&mut s, wait).await;
    if rst {
        tcp::reset(s);
    }
    Ok(closed)
}

/// Runs `payloads(to)` against every listener at once; the per-listener notes.
async fn spray(
    ctx: &Ctx<'_>,
    payloads: impl Fn(SocketAddr) -> Vec<Vec<u8>>,
    wait: Duration,
) -> Findings {
    let mut findings = Findings::default();
    let listeners = ctx.mesh.listeners();
    let per_listener = listeners.iter().map(|(who, to)| {
        let payloads = payloads(*to);
        async move {
            let hits = payloads.into_iter().enumerate().flat_map(|(i, p)| {
                (0..4).map(move |round| hit(*to, p.clone(), wait, (i + round) % 2 == 0))
            });
            let results = join_all(hits).await;
            let sent = results.len();
            let refused = results.iter().filter(|r| r.is_err()).count();
            let closed = results.iter().filter(|r| matches!(r, Ok(true))).count();
            (*who, *to, sent, refused, closed)
        }
    });
    for (who, to, sent, refused, closed) in join_all(per_listener).await {
        if refused > 0 {
            findings.note(format!("{who} {to}: {refused}/{sent} connects failed"));
        }
        findings.note(format!(
            "{who} {to}: closed {closed}/{sent} within {wait:?}"
        ));
    }
    findings
}

pub async fn garbage(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let payloads = |to: SocketAddr| {
        let seed = u64::from(to.port()) << 8;
        let mut tls_header = vec![0x16, 3, 1, 0x40, 0];
        tls_header.extend(noise(seed + 1, 100));
        let mut good_then_bad = handshake(to);
        good_then_bad.extend(noise(seed + 2, 2048));
        vec![
            noise(seed, 4096),
            wrong_protocol(to),
            tls_header,
            vec![0u8; 64 * 1024],
            good_then_bad,
        ]
    };
    Ok(spray(ctx, payloads, Duration::from_secs(1)).await)
}

pub async fn truncated(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let payloads = |to: SocketAddr| {
        let full = handshake(to);
        vec![
            full[..1].to_vec(),
            full[..full.len() / 2].to_vec(),
            full[..full.len() - 1].to_vec(),
        ]
    };
    // Closed by us right after sending: the server sees the end of a half handshake.
    Ok(spray(ctx, payloads, Duration::from_millis(100)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_repeatable_and_not_constant() {
        assert_eq!(noise(7, 64), noise(7, 64));
        assert_ne!(noise(7, 64), noise(8, 64));
        let n = noise(1, 4096);
        assert!(n.iter().any(|b| *b != n[0]));
    }

    #[test]
    fn a_client_hello_is_a_tls_handshake_record() {
        let hello = client_hello("127.0.0.1:15008".parse().unwrap());
        assert_eq!(&hello[..2], &[0x16, 0x03]);
        assert!(hello.len() > 100);
    }
}
