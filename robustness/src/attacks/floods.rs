//! Floods: thousands of connections held on every port at once, and thousands of HBONE
//! tunnels through one ztunnel to a workload. While the connection flood is held the happy
//! path must still answer (the default descriptor limit is far above it); after either,
//! everything the flood made the processes open must be closed again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{Ctx, Findings};
use crate::mesh::ports;
use crate::wire::{tcp, tls};

/// Connections held on each listener during the connection flood.
const PER_LISTENER: usize = 1000;
/// Connects in flight at once: enough to be a flood, few enough not to overflow a backlog.
const IN_FLIGHT: usize = 256;

/// Opens `count` connections to `to`; the open ones and how many failed (with the first
/// error).
pub async fn open_many(
    to: SocketAddr,
    count: usize,
    in_flight: &Arc<Semaphore>,
    within: Duration,
) -> (Vec<tokio::net::TcpStream>, usize, Option<String>) {
    let attempts = (0..count).map(|_| {
        let in_flight = in_flight.clone();
        async move {
            let _permit = in_flight.acquire().await;
            tcp::connect_from(None, to, within).await
        }
    });
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first = None;
    for result in join_all(attempts).await {
        match result {
            Ok(s) => open.push(s),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (open, failed, first)
}

/// Opens `PER_LISTENER` connections on each of `listeners` at once; per listener, what
/// was opened (the streams, how many failed, the first error).
async fn flood(
    listeners: &[(&'static str, SocketAddr)],
) -> Vec<(
    &'static str,
    SocketAddr,
    Vec<TcpStream>,
    usize,
    Option<String>,
)> {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    join_all(listeners.iter().map(|(who, to)| {
        let in_flight = in_flight.clone();
        async move {
            let (open, failed, first) =
                open_many(*to, PER_LISTENER, &in_flight, Duration::from_secs(2)).await;
            (*who, *to, open, failed, first)
        }
    }))
    .await
}

/// Every listener but readiness flooded at once, the whole happy path asked during it; then
/// readiness itself flooded, where the listener's cap must close what is over it at once.
pub async fn connections(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let started = Instant::now();
    let (readiness, others): (Vec<_>, Vec<_>) = ctx
        .mesh
        .listeners()
        .into_iter()
        .partition(|(_, to)| to.port() == ports::READINESS);
    let floods = flood(&others).await;
    let opened: usize = floods.iter().map(|f| f.2.len()).sum();
    findings.note(format!(
        "{opened} connections open after {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let during = crate::probe::happy_path(ctx.mesh).await;
    findings.expect(during.is_ok(), || {
        format!(
            "happy path failed during the flood of {PER_LISTENER} connections per listener: {}",
            during.as_ref().err().cloned().unwrap_or_default()
        )
    });
    for (who, to, open, failed, first) in floods {
        let dropped = open.iter().filter(|s| tcp::already_closed(s)).count();
        findings.note(format!(
            "{who} {to}: {} open ({dropped} already dropped by the server), {failed} failed{}",
            open.len(),
            first.map(|e| format!(" ({e})")).unwrap_or_default()
        ));
        open.into_iter().for_each(tcp::reset);
    }
    // Readiness over its cap: what the cap has no room for is closed at once, so the
    // process's descriptors (the truth; a client's view of which connections are still open
    // lags) never rise more than the cap above where they were.
    let cap = ztunnel_plan(ctx).endpoint;
    for (who, process) in [("node-a", &ctx.mesh.node_a), ("node-b", &ctx.mesh.node_b)] {
        let to: Vec<_> = readiness
            .iter()
            .filter(|(w, _)| *w == who)
            .copied()
            .collect();
        let before = process.usage().map_or(0, |u| u.fds);
        let peak = PeakFds::watch(process.pid);
        let floods = flood(&to).await;
        let peak = peak.stop();
        for (who, to, open, failed, _) in floods {
            findings.note(format!(
                "{who} {to}: {} opened, {failed} failed; {who} peaked at {peak} descriptors from {before} (cap {cap})",
                open.len()
            ));
            findings.expect(peak <= before + (cap + CAP_SLACK) as u64, || {
                format!(
                    "{who} {to}: descriptors rose from {before} to {peak}, over the readiness cap of {cap}"
                )
            });
            open.into_iter().for_each(tcp::reset);
        }
    }
    Ok(findings)
}

/// The most descriptors a process had while it was watched (every 10 ms).
struct PeakFds {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakFds {
    fn watch(pid: u32) -> PeakFds {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(u) = crate::procfs::usage(pid) {
                    seen.fetch_max(u.fds, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        PeakFds { peak, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Descriptors a listener's process may show over its cap: connections it has accepted and
/// not yet closed when we look, and the process's own comings and goings.
const CAP_SLACK: usize = 16;

/// Descriptors a ztunnel holds of its own (runtime, xDS, logs, pooled connections): what
/// it may hold beyond its listeners' shares without touching the reserve meant for them.
const PROCESS_OWN: u64 = 100;

/// How a ztunnel shares out its descriptors: it raises its soft limit to the hard one
/// (`dataplane::process::descriptor_plan`), so the plan is made from the hard limit.
fn ztunnel_plan(ctx: &Ctx<'_>) -> dataplane::DescriptorPlan {
    dataplane::DescriptorPlan::for_limit(ctx.mesh.options.nofile.hard)
}

/// node-a's traffic listeners flooded, from helper processes, with more connections in all
/// than its descriptor limit: the listener caps and the traffic budget must refuse the excess
/// so that node-a keeps the reserve, stays under its limit, and keeps answering readiness,
/// metrics and istiod.
pub async fn descriptor_limit(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mesh = ctx.mesh;
    let plan = ztunnel_plan(ctx);
    let limit = usize::try_from(plan.limit).unwrap_or(usize::MAX);
    let ip = mesh.node_a_ip();
    // The listeners that hold an idle client until its deadline (15001 and 15006 close one
    // at once here: on loopback its destination is the listener itself).
    let targets = [
        ports::HBONE,
        ports::SOCKS5,
        ports::OUTBOUND,
        ports::INBOUND_PLAINTEXT,
    ];
    let share = limit / 2 + 500;
    let started = Instant::now();
    let peak = PeakFds::watch(mesh.node_a.pid);
    let holds = join_all(
        targets
            .iter()
            .map(|port| crate::hold::hold(SocketAddr::new(ip, *port), share, b"")),
    )
    .await;
    let opened_in = started.elapsed();
    // While they are held: what must keep answering.
    let ready_a = crate::mesh::ready(SocketAddr::new(ip, ports::READINESS));
    let metrics = tcp::http_status(
        None,
        SocketAddr::new(ip, ports::METRICS),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (ready_a, metrics, xds) = tokio::join!(
        tokio::time::timeout(crate::probe::WITHIN, ready_a),
        tokio::time::timeout(crate::probe::WITHIN, metrics),
        tokio::time::timeout(crate::probe::WITHIN, crate::probe::xds_answers(mesh, true)),
    );
    let mut helpers = Vec::new();
    let mut attempted = 0;
    for (port, hold) in targets.iter().zip(holds) {
        let (h, held) = hold?;
        attempted += held.opened + held.failed;
        findings.note(format!(
            "node-a {port}: {} opened, {} failed, {} still held when all were open",
            held.opened, held.failed, held.held
        ));
        helpers.extend(h);
    }
    let peak = peak.stop();
    findings.note(format!(
        "{attempted} connections tried in {:.1}s against a limit of {limit}; node-a peaked at {peak} descriptors (reserve {}, traffic {}, {} per traffic listener)",
        opened_in.as_secs_f64(),
        plan.reserve,
        plan.traffic,
        plan.per_traffic_listener
    ));
    findings.expect(ready_a.unwrap_or(false), || {
        "node-a's readiness did not answer 200 within 2 s during the flood".to_string()
    });
    findings.expect(matches!(metrics, Ok(Ok(200))), || {
        format!("node-a's metrics did not answer 200 within 2 s during the flood: {metrics:?}")
    });
    findings.expect(matches!(xds, Ok(Ok(()))), || {
        "istiod's xDS did not answer within 2 s during the flood".to_string()
    });
    // What the listeners may hold, plus what the process itself always has open.
    let bound = plan.limit.saturating_sub(plan.reserve as u64) + PROCESS_OWN;
    findings.expect(peak <= bound, || {
        format!(
            "node-a reached {peak} descriptors, into its reserve ({} of {}: at most {bound})",
            plan.reserve, plan.limit
        )
    });
    tokio::task::spawn_blocking(move || drop(helpers)).await?;
    Ok(findings)
}

/// HBONE connections and streams per connection of the tunnel flood.
const TUNNEL_CONNECTIONS: usize = 40;
const STREAMS_PER_CONNECTION: usize = 100;

pub async fn tunnels(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mesh = ctx.mesh;
    let web = tls::ca_issued(mesh, &tls::identity("shop", "web")).await?;
    let config = tls::hbone_config(&web, tls::identity("shop", "echo"))?;
    let hbone = std::net::SocketAddr::new(mesh.node_b_ip(), ports::HBONE);
    let started = Instant::now();
    let connections = join_all(
        (0..TUNNEL_CONNECTIONS).map(|_| tls::hbone(mesh.node_a_ip(), hbone, config.clone())),
    )
    .await;
    let mut held = Vec::new();
    let mut streams_ok = 0usize;
    let mut errors = Vec::new();
    for connection in connections {
        let connection = match connection {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("connection: {e:#}"));
                continue;
            }
        };
        let opened = join_all(
            (0..STREAMS_PER_CONNECTION).map(|_| tunnel(connection.send.clone(), mesh.echo())),
        )
        .await;
        for result in opened {
            match result {
                Ok(stream) => {
                    streams_ok += 1;
                    held.push(stream);
                }
                Err(e) => errors.push(e),
            }
        }
        held.push(Box::new(connection) as Box<dyn Send>);
    }
    findings.note(format!(
        "{streams_ok} tunnels carried a round trip in {:.1}s; node-b held {:?}",
        started.elapsed().as_secs_f64(),
        mesh.node_b.usage()
    ));
    if !errors.is_empty() {
        findings.note(format!(
            "{} tunnels failed, first: {}",
            errors.len(),
            errors[0]
        ));
    }
    findings.expect(
        streams_ok >= TUNNEL_CONNECTIONS * STREAMS_PER_CONNECTION / 2,
        || format!("only {streams_ok} of the flood's tunnels worked: the flood did not happen"),
    );
    drop(held);
    Ok(findings)
}

/// One tunnel to `echo` with a round trip through it; what keeps it open.
async fn tunnel(
    send: h2::client::SendRequest<Bytes>,
    echo: SocketAddr,
) -> Result<Box<dyn Send>, String> {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(echo.to_string())
        .body(())
        .map_err(|e| e.to_string())?;
    let work = async {
        let mut ready = send.ready().await.map_err(|e| e.to_string())?;
        let (response, mut out) = ready
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        let response = response.await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("CONNECT answered {}", response.status()));
        }
        out.send_data(Bytes::from_static(b"x"), false)
            .map_err(|e| e.to_string())?;
        let mut body = response.into_body();
        let data = body
            .data()
            .await
            .ok_or("tunnel closed")?
            .map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(data.len());
        Ok(Box::new((out, body)) as Box<dyn Send>)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "tunnel timed out".to_string())?
}
