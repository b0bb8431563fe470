//! The happy path, asked after every attack and at every step of a measurement: a fresh
//! SOCKS5 connection from web on node-a through both ztunnels over HBONE to echo on node-b
//! gets its bytes back, both ztunnels answer readiness, and a fresh Delta ADS stream to
//! istiod on each of its ports gets both of the ztunnel's types. All of it within 2 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dataplane::seams::{Seams, SystemClock};
use dataplane::ztunnel::{AuthToken, ControlPlaneClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mesh::{Mesh, ports, ready};
use crate::wire::grpc;
use crate::wire::socks5::{self, Destination};

/// How long the whole happy path may take.
pub const WITHIN: Duration = Duration::from_secs(2);

/// web → echo's Service VIP through node-a's SOCKS5, HBONE to node-b, and back.
pub async fn web_reaches_echo(mesh: &Mesh) -> anyhow::Result<()> {
    let socks = SocketAddr::new(mesh.node_a_ip(), ports::SOCKS5);
    let (code, stream) =
        socks5::connect(socks, mesh.node_a_ip(), &Destination::Ip(mesh.vip())).await?;
    let mut s = stream.with_context(|| format!("SOCKS5 reply {code}"))?;
    s.write_all(b"happy path").await?;
    let mut back = [0u8; 10];
    s.read_exact(&mut back).await.context("echo reply")?;
    if &back != b"happy path" {
        bail!("echo answered {back:?}");
    }
    Ok(())
}

/// A fresh Delta ADS stream on istiod's TLS (`tls`) or plaintext port gets both types.
pub async fn xds_answers(mesh: &Mesh, tls: bool) -> anyhow::Result<()> {
    let address = if tls {
        format!("https://{}:{}", mesh.istiod_ip(), ports::XDS_TLS)
    } else {
        format!("http://{}:{}", mesh.istiod_ip(), ports::XDS_PLAINTEXT)
    };
    let mut stream = ads_at(mesh, &address).await?;
    grpc::both_answered(&mut stream).await?;
    Ok(())
}

/// A Delta ADS stream to the istiod at `address` (`http://` or `https://` with the mesh's
/// root) as node-a, with node-a's token and its first requests sent.
pub async fn ads_at(mesh: &Mesh, address: &str) -> anyhow::Result<grpc::AdsStream> {
    let client = ControlPlaneClient::new(
        address,
        &mesh.root_pem,
        Some(AuthToken::Literal(mesh.token_a.clone())),
        "Kubernetes",
        Seams::real(3).network,
        std::sync::Arc::new(SystemClock),
    )?;
    let node = grpc::node(mesh, "node-a", mesh.node_a_ip());
    grpc::open_ads(&client, grpc::initial_requests(&node)).await
}

async fn readiness(addr: SocketAddr) -> anyhow::Result<()> {
    if ready(addr).await {
        Ok(())
    } else {
        bail!("{addr} not ready")
    }
}

/// The whole happy path; how long it took, or what failed (each part named, a part that
/// did not finish in time as such).
pub async fn happy_path(mesh: &Mesh) -> Result<Duration, String> {
    let started = Instant::now();
    let (web, ready_a, ready_b, xds_tls, xds_plain) = tokio::join!(
        timed("web->echo", Box::pin(web_reaches_echo(mesh))),
        timed(
            "node-a ready",
            Box::pin(readiness(SocketAddr::new(
                mesh.node_a_ip(),
                ports::READINESS
            )))
        ),
        timed(
            "node-b ready",
            Box::pin(readiness(SocketAddr::new(
                mesh.node_b_ip(),
                ports::READINESS
            )))
        ),
        timed("istiod xDS 15012", Box::pin(xds_answers(mesh, true))),
        timed("istiod xDS 15010", Box::pin(xds_answers(mesh, false))),
    );
    let failures: Vec<String> = [web, ready_a, ready_b, xds_tls, xds_plain]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if failures.is_empty() {
        Ok(started.elapsed())
    } else {
        Err(failures.join("; "))
    }
}

/// One part under the happy path's deadline, its failure named.
async fn timed(name: &'static str, part: Part<'_>) -> Result<(), String> {
    match tokio::time::timeout(WITHIN, part).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{name}: {e:#}")),
        Err(_) => Err(format!("{name}: no answer within {WITHIN:?}")),
    }
}

/// One part of the happy path.
type Part<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>>;
