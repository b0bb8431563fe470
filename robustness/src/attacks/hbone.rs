//! HBONE abuse on node-b's 15008 with certificates istiod's CA really issued, so every
//! attack gets past TLS into HTTP/2 and the ztunnel's own checks: CONNECT to the ztunnel's
//! own listeners and malformed authorities (by hand, since a client library will not send
//! them), header blocks that are too big or never end, streams reset as soon as they open,
//! and clients whose certificate the mesh must not accept.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::junk::noise;
use super::{Ctx, Findings};
use crate::canary::Canaries;
use crate::mesh::{TRUST_DOMAIN, ports};
use crate::wire::h2raw::{self, CONTINUATION, END_HEADERS, HEADERS, Raw, frame};
use crate::wire::tls;

/// Frames we send are at most this (HTTP/2's default SETTINGS_MAX_FRAME_SIZE).
const FRAME: usize = 16 * 1024;

type Conn = Raw<TlsStream<TcpStream>>;

fn hbone_addr(ctx: &Ctx<'_>) -> SocketAddr {
    SocketAddr::new(ctx.mesh.node_b_ip(), ports::HBONE)
}

/// A raw HTTP/2 connection to node-b's 15008 as web, with `config`.
async fn raw(ctx: &Ctx<'_>, config: rustls::ClientConfig) -> anyhow::Result<Conn> {
    let tls = tls::connect(Some(ctx.mesh.node_a_ip()), hbone_addr(ctx), config).await?;
    Ok(Raw::start(tls).await?)
}

async fn web_config(ctx: &Ctx<'_>) -> anyhow::Result<rustls::ClientConfig> {
    let web = tls::ca_issued(ctx.mesh, &tls::identity("shop", "web")).await?;
    tls::hbone_config(&web, tls::identity("shop", "echo"))
}

/// HEADERS then CONTINUATIONs carrying `block` on `stream`; END_HEADERS on the last one
/// only if `end`.
fn header_frames(stream: u32, block: &[u8], end: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(FRAME).collect()
    };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last && end { END_HEADERS } else { 0 };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// Sends one CONNECT for `block` on a fresh connection and waits up to 5 s for an answer;
/// the status (0 for one HPACK does not index statically), or what happened instead.
async fn one_request(ctx: &Ctx<'_>, config: rustls::ClientConfig, block: Vec<u8>) -> String {
    let mut conn = match raw(ctx, config).await {
        Ok(c) => c,
        Err(e) => return format!("no connection: {e:#}"),
    };
    if let Err(e) = conn.send(&header_frames(1, &block, true)).await {
        return format!("write failed: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let o = conn.observed();
        if let Some(status) = o.statuses.get(&1) {
            let cancel = frame(h2raw::RST_STREAM, 0, 1, &h2raw::CANCEL.to_be_bytes());
            let _ = conn.send(&cancel).await;
            return match status {
                0 => "status other".into(),
                s => format!("status {s}"),
            };
        }
        if o.reset_streams.contains(&1) {
            return "stream reset".into();
        }
        if let Some(code) = o.goaway {
            return format!("GOAWAY {code}");
        }
        if o.closed {
            return "connection closed".into();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "no answer in 5 s".into()
}

pub async fn authorities(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let config = web_config(ctx).await?;
    let canaries = Canaries::bind(&ports::ZTUNNEL).await;
    let b = ctx.mesh.node_b_ip();
    let mut targets = Vec::new();
    for port in ports::ZTUNNEL {
        for host in [
            b.to_string(),
            "127.0.0.1".into(),
            "0.0.0.0".into(),
            "[::ffff:127.0.0.1]".into(),
            format!("[::ffff:{b}]"),
            "[::1]".into(),
            "[::]".into(),
            "localhost".into(),
        ] {
            targets.push(format!("{host}:{port}"));
        }
    }
    targets.push(format!("{}:{}", ctx.mesh.istiod_ip(), ports::XDS_TLS));
    let malformed = [
        String::new(),
        "echo".into(),
        ":8080".into(),
        "[::1".into(),
        "300.1.1.1:80".into(),
        format!("{b}:99999"),
        format!("{b}:-1"),
        format!("{b}:8080:1"),
        format!("user@{b}:8080"),
        format!("{b}:0"),
        format!(" {b}:8080"),
        format!("{b}:8080\0"),
        "%2e%2e:80".into(),
        "*:80".into(),
        format!("{}:80", "a".repeat(8000)),
        String::from_utf8_lossy(&noise(3, 200)).into_owned(),
    ];
    targets.extend(malformed);
    let answers = join_all(
        targets
            .iter()
            .map(|authority| one_request(ctx, config.clone(), h2raw::connect_block(authority))),
    )
    .await;
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (authority, answer) in targets.iter().zip(&answers) {
        *tally.entry(answer.clone()).or_default() += 1;
        if answer != "status 400" {
            findings.note(format!("CONNECT {:?}: {answer}", truncate(authority)));
        }
        findings.expect(answer != "status 200", || {
            format!("CONNECT {:?} was carried (200)", truncate(authority))
        });
    }
    findings.note(format!("answers: {tally:?}"));
    // The control: the same path to echo itself is carried.
    let control = one_request(
        ctx,
        config,
        h2raw::connect_block(&ctx.mesh.echo().to_string()),
    )
    .await;
    findings.expect(control == "status 200", || {
        format!("the control CONNECT to echo got {control}")
    });
    for (addr, n) in canaries.hit() {
        findings.violation(format!("node-b connected to canary {addr} {n} time(s)"));
    }
    Ok(findings)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A block with CONNECT to echo and `extra` bytes of literal headers (`count` of them).
fn padded_block(ctx: &Ctx<'_>, count: usize, value_len: usize) -> Vec<u8> {
    let mut block = h2raw::connect_block(&ctx.mesh.echo().to_string());
    let value = vec![b'v'; value_len];
    for i in 0..count {
        h2raw::literal(&mut block, None, format!("x-pad-{i}").as_bytes(), &value);
    }
    block
}

pub async fn headers(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let config = web_config(ctx).await?;
    for (name, block) in [
        ("one 70 KiB header", padded_block(ctx, 1, 70 * 1024)),
        ("a 1 MiB header block", padded_block(ctx, 64, 16 * 1024)),
        ("10,000 small headers", padded_block(ctx, 10_000, 1)),
    ] {
        let answer = one_request(ctx, config.clone(), block).await;
        findings.expect(answer != "status 200", || format!("{name}: carried (200)"));
        findings.note(format!("{name}: {answer}"));
    }
    continuation_flood(ctx, config, &mut findings).await?;
    Ok(findings)
}

/// The most a CONTINUATION flood may send before the server must have stopped it.
const FLOOD_LIMIT: usize = 64 << 20;

/// A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
/// until the server closes or stops reading.
async fn continuation_flood(
    ctx: &Ctx<'_>,
    config: rustls::ClientConfig,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let mut conn = raw(ctx, config).await?;
    let block = padded_block(ctx, 1, 100);
    conn.send(&frame(HEADERS, 0, 1, &block)).await?;
    let mut filler = Vec::new();
    let mut i = 0;
    while filler.len() < FRAME - 64 {
        h2raw::literal(
            &mut filler,
            None,
            format!("x-c{i}").as_bytes(),
            b"continuation",
        );
        i += 1;
    }
    let chunk = frame(CONTINUATION, 0, 1, &filler);
    let started = Instant::now();
    let mut sent = 0usize;
    let ending = loop {
        if sent >= FLOOD_LIMIT {
            break "still reading".to_string();
        }
        let o = conn.observed();
        if o.closed || o.goaway.is_some() {
            break format!("stopped by the server (GOAWAY {:?})", o.goaway);
        }
        match tokio::time::timeout(Duration::from_secs(2), conn.send(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => break format!("write failed: {e}"),
            Err(_) => break "the server stopped reading".to_string(),
        }
    };
    findings.note(format!(
        "CONTINUATION flood: {} KiB sent in {:.1}s, {ending}",
        sent / 1024,
        started.elapsed().as_secs_f64()
    ));
    findings.expect(sent < FLOOD_LIMIT, || {
        format!(
            "CONTINUATION flood: the server took {} MiB of one header block without stopping it",
            sent >> 20
        )
    });
    Ok(())
}

/// Streams opened and reset at once, per connection.
const RAPID_RESETS: u32 = 10_000;

pub async fn rapid_reset(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let config = web_config(ctx).await?;
    let block = h2raw::connect_block(&ctx.mesh.echo().to_string());
    for round in 0..2 {
        let mut conn = raw(ctx, config.clone()).await?;
        let started = Instant::now();
        let mut sent = 0u32;
        let mut batch = Vec::new();
        while sent < RAPID_RESETS {
            let id = 2 * sent + 1;
            batch.extend(frame(HEADERS, END_HEADERS, id, &block));
            batch.extend(frame(
                h2raw::RST_STREAM,
                0,
                id,
                &h2raw::CANCEL.to_be_bytes(),
            ));
            sent += 1;
            if sent.is_multiple_of(250) {
                let written = tokio::time::timeout(Duration::from_secs(2), conn.send(&batch)).await;
                batch.clear();
                if !matches!(written, Ok(Ok(()))) || conn.observed().closed {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let o = conn.observed();
        findings.note(format!(
            "round {round}: {sent} streams opened and reset in {:.1}s; server answered {} headers, reset {}, GOAWAY {:?}, closed {}",
            started.elapsed().as_secs_f64(),
            o.headers,
            o.resets,
            o.goaway,
            o.closed
        ));
    }
    Ok(findings)
}

pub async fn untrusted(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let web = tls::identity("shop", "web");
    let echo = tls::identity("shop", "echo");
    // istiod's own root key, from its state directory, for certificates the real CA never
    // issued: expired, and for another trust domain.
    let state = control::istiod::state_dir::load_or_create(
        &ctx.mesh.state_dir,
        TRUST_DOMAIN,
        SystemTime::now(),
    )?;
    let hour = Duration::from_secs(3600);
    let expired = state.root.issue(&web, hour, SystemTime::now() - 3 * hour)?;
    let other_domain = dataplane::identity::Identity::new("evil.example", "shop", "web");
    let foreign_domain = state.root.issue(&other_domain, hour, SystemTime::now())?;
    let clients = [
        ("no client certificate", tls::no_certificate()),
        (
            "a certificate from a foreign root",
            tls::accepting_any_server(tls::hbone_config(&tls::foreign(&web)?, echo.clone())?),
        ),
        (
            "an expired certificate from istiod's root",
            tls::accepting_any_server(tls::hbone_config(&expired, echo.clone())?),
        ),
        (
            "istiod's root, trust domain evil.example",
            tls::accepting_any_server(tls::hbone_config(&foreign_domain, echo)?),
        ),
    ];
    let block = h2raw::connect_block(&ctx.mesh.echo().to_string());
    for (name, config) in clients {
        let answer = one_request(ctx, config, block.clone()).await;
        findings.expect(answer != "status 200", || {
            format!("{name}: CONNECT to echo carried (200)")
        });
        findings.note(format!("{name}: {answer}"));
    }
    Ok(findings)
}
