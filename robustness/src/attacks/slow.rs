//! Slow and idle peers: a client that connects and says nothing, one that sends half its
//! handshake and nothing more, and one that sends its handshake at a byte a second. Each
//! holds a descriptor and a task on the server for as long as the server lets it, so every
//! listener must drop them by its deadline (the ztunnel's `HANDSHAKE_TIMEOUT`, istiod's
//! handshake timeout), give or take [`Ctx::LATE`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;

use super::junk::{handshake, noise};
use super::{Ctx, Findings};
use crate::mesh::ports;
use crate::wire::{grpc, h2raw, tcp, tls};

/// How many of each kind of slow client every listener gets.
const PER_LISTENER: usize = 10;

/// Connects to `to`, sends `first`, then waits up to `bound` for the server to close;
/// how long that took (`None`: still open at `bound`).
async fn hold(to: SocketAddr, first: Vec<u8>, bound: Duration) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    let mut s = tcp::connect_from(None, to, Duration::from_secs(2)).await?;
    if !first.is_empty() {
        let _ = s.write_all(&first).await;
    }
    let closed = tcp::closed_within(&mut s, bound).await;
    tcp::reset(s);
    Ok(closed.then(|| started.elapsed()))
}

/// Finishes TLS with istiod on `to`, sends half the HTTP/2 preface, then waits up to
/// `bound` for istiod to close; how long that took.
async fn hold_after_tls(
    ctx: &Ctx<'_>,
    to: SocketAddr,
    bound: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    let mut s = tls::connect(None, to, grpc::istiod_tls(ctx.mesh)?).await?;
    s.write_all(&h2raw::PREFACE[..12]).await?;
    s.flush().await?;
    let closed = tcp::closed_within(&mut s, bound).await;
    Ok(closed.then(|| started.elapsed()))
}

/// Sends `to`'s handshake (then noise) one byte per second until the server closes or
/// `bound` passes; how long the server took to close.
async fn trickle_one(to: SocketAddr, bound: Duration) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    let mut bytes = handshake(to);
    bytes.extend(noise(u64::from(to.port()), 64));
    let mut s = tcp::connect_from(None, to, Duration::from_secs(2)).await?;
    for byte in bytes {
        if s.write_all(&[byte]).await.is_err() {
            return Ok(Some(started.elapsed()));
        }
        let left = bound.saturating_sub(started.elapsed());
        if tcp::closed_within(&mut s, left.min(Duration::from_secs(1))).await {
            tcp::reset(s);
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= bound {
            break;
        }
    }
    tcp::reset(s);
    Ok(None)
}

/// Judges one listener's slow clients: every one must have been dropped.
fn judge(
    findings: &mut Findings,
    kind: &str,
    who: &str,
    to: SocketAddr,
    deadline: Duration,
    results: Vec<anyhow::Result<Option<Duration>>>,
) {
    let total = results.len();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    let closed: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied().flatten())
        .collect();
    let held = total - errors.len() - closed.len();
    let slowest = closed.iter().max().copied().unwrap_or_default();
    findings.note(format!(
        "{kind} {who} {to}: {}/{total} dropped, slowest after {:.1}s (deadline {deadline:?})",
        closed.len(),
        slowest.as_secs_f64()
    ));
    if let Some(first) = errors.first() {
        findings.note(format!(
            "{kind} {who} {to}: {} failed: {first}",
            errors.len()
        ));
    }
    findings.expect(held == 0, || {
        format!(
            "{who} {to}: {held}/{total} {kind} clients still connected after {:?} (deadline {deadline:?})",
            deadline + Ctx::LATE
        )
    });
}

pub async fn idle_and_stalled(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let listeners = ctx.mesh.listeners();
    let runs = listeners.iter().map(|(who, to)| {
        let bound = ctx.deadline(to.port()) + Ctx::LATE;
        let full = handshake(*to);
        let half = full[..full.len().div_ceil(2)].to_vec();
        async move {
            let idle = join_all((0..PER_LISTENER).map(|_| hold(*to, Vec::new(), bound)));
            let stalled = join_all((0..PER_LISTENER).map(|_| hold(*to, half.clone(), bound)));
            let (idle, stalled) = tokio::join!(idle, stalled);
            (*who, *to, idle, stalled)
        }
    });
    // istiod's TLS port: past TLS, half the HTTP/2 preface, then nothing.
    let tls_port = SocketAddr::new(ctx.mesh.istiod_ip(), ports::XDS_TLS);
    let bound = ctx.istiod_deadline + Ctx::LATE;
    let after_tls = join_all((0..PER_LISTENER).map(|_| hold_after_tls(ctx, tls_port, bound)));
    let (results, after_tls) = tokio::join!(join_all(runs), after_tls);
    for (who, to, idle, stalled) in results {
        let deadline = ctx.deadline(to.port());
        judge(&mut findings, "idle", who, to, deadline, idle);
        judge(&mut findings, "half-handshake", who, to, deadline, stalled);
    }
    judge(
        &mut findings,
        "TLS-then-half-preface",
        "istiod",
        tls_port,
        ctx.istiod_deadline,
        after_tls,
    );
    Ok(findings)
}

pub async fn trickle(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let listeners = ctx.mesh.listeners();
    let runs = listeners.iter().map(|(who, to)| {
        let bound = ctx.deadline(to.port()) + Ctx::LATE;
        async move {
            let results = join_all((0..PER_LISTENER / 2).map(|_| trickle_one(*to, bound))).await;
            (*who, *to, results)
        }
    });
    for (who, to, results) in join_all(runs).await {
        judge(
            &mut findings,
            "trickling",
            who,
            to,
            ctx.deadline(to.port()),
            results,
        );
    }
    Ok(findings)
}
