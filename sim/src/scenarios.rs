//! The built-in scenarios. Each is a plan (policies, traffic, timeline) and a check of what
//! the run produced; the doc comment on each builder says what the scenario proves.
//!
//! Payloads carry a recognisable marker so the wire tap can look for them between the nodes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use dataplane::identity::{DEFAULT_TRUST_DOMAIN, Identity};
use dataplane::policy::{
    Action as PolicyAction, Authorization, Clause, Match, Rule, Scope, StringMatch,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

use crate::world::{
    Action, Ctx, ECHO_IP, ECHO_PORT, ECHO_SERVICE_PORT, ECHO_VIP, NODE_A, NODE_B, OUTSIDER_IP,
    Plan, RunOutput, Step, Task, WEB_IP, local_config_yaml,
};

/// A built-in scenario.
pub struct Scenario {
    /// The name `cargo sim run` selects it by and the output line shows.
    pub name: &'static str,
    /// One line on what it proves (`sim list`).
    pub about: &'static str,
    /// The seed `cargo sim` runs it with.
    pub default_seed: u64,
    pub(crate) plan: fn() -> Plan,
    /// Judges the run once it is over: `Err` carries the reason it failed.
    pub(crate) check: fn(&RunOutput) -> Result<(), String>,
}

/// Every built-in scenario, in the order `cargo sim` runs them.
pub const ALL: [Scenario; 4] = [
    Scenario {
        name: "basic-mtls",
        about: "captured web → echo by pod IP and by service VIP travels HBONE; no plaintext between nodes",
        default_seed: 1,
        plan: basic_mtls,
        check: check_basic_mtls,
    },
    Scenario {
        name: "strict-refuses-plaintext",
        about: "STRICT (converted static policy): plaintext to echo is closed before echo sees a byte",
        default_seed: 2,
        plan: strict_refuses_plaintext,
        check: check_strict_refuses_plaintext,
    },
    Scenario {
        name: "permissive-accepts-plaintext",
        about: "without STRICT, plaintext to echo through inbound capture is delivered and echoed",
        default_seed: 3,
        plan: permissive_accepts_plaintext,
        check: check_permissive_accepts_plaintext,
    },
    Scenario {
        name: "deny-closes-open-connection",
        about: "a DENY pushed mid-connection closes the open HBONE connection and refuses a new one",
        default_seed: 4,
        plan: deny_closes_open_connection,
        check: check_deny_closes_open_connection,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

// ---------------------------------------------------------------------------------------------
// Payloads.

const BASIC_BY_POD_IP: &[u8] = b"MARKER-basic-mtls-by-pod-ip: web says hello to echo";
const BASIC_BY_VIP: &[u8] = b"MARKER-basic-mtls-by-vip: web says hello to echo.shop";
const PLAINTEXT_STRICT: &[u8] = b"MARKER-strict: plaintext from outside the mesh";
const PLAINTEXT_PERMISSIVE: &[u8] = b"MARKER-permissive: plaintext from outside the mesh";
const DENY_FIRST: &[u8] = b"MARKER-deny-1: before the policy";
const DENY_SECOND: &[u8] = b"MARKER-deny-2: still before the policy";
const DENY_AFTER: &[u8] = b"MARKER-deny-3: after the policy, on a new connection";

/// How long a reply (an echo or a close) may take before the peer counts as silent.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// **basic-mtls** proves that a captured mesh pod's traffic reaches the destination pod
/// through HBONE, both when it dials the pod IP and when it dials the service VIP, and that
/// its bytes never cross the wire between the nodes in plaintext: the tap sees the node-a ↔
/// node-b segments (only on port 15008), and neither payload appears in them.
fn basic_mtls() -> Plan {
    Plan {
        local_config: local_config_yaml(&[], ""),
        tasks: vec![Task {
            node: NODE_A,
            name: "web",
            body: Box::new(|ctx| Box::pin(basic_mtls_web(ctx))),
        }],
        timeline: Vec::new(),
    }
}

async fn basic_mtls_web(ctx: Ctx) -> anyhow::Result<()> {
    let targets = [
        (SocketAddr::new(ECHO_IP, ECHO_PORT), BASIC_BY_POD_IP),
        (SocketAddr::new(ECHO_VIP, ECHO_SERVICE_PORT), BASIC_BY_VIP),
    ];
    for (destination, payload) in targets {
        let mut stream = connect_captured(&ctx, NODE_A, WEB_IP, destination).await?;
        expect_echo(&ctx, &mut stream, payload).await?;
        stream.shutdown().await.context("half-close")?;
        expect_closed(&ctx, &mut stream).await?;
    }
    Ok(())
}

fn check_basic_mtls(out: &RunOutput) -> Result<(), String> {
    for payload in [BASIC_BY_POD_IP, BASIC_BY_VIP] {
        if !out.echo_received(payload) {
            return Err(format!("echo never received {}", show(payload)));
        }
    }
    no_plaintext_between_nodes(out, &[BASIC_BY_POD_IP, BASIC_BY_VIP])?;
    only_hbone_between_nodes(out)?;
    access_logged(out, NODE_B, "spiffe://cluster.local/ns/shop/sa/web")
}

/// The node's ztunnel wrote an access-log line for an mTLS connection from `identity`.
fn access_logged(out: &RunOutput, node: &str, identity: &str) -> Result<(), String> {
    let identity = format!("src.identity=\"{identity}\"");
    let logged = out.events.iter().any(|e| {
        e.host == node && e.what.contains("connection complete") && e.what.contains(&identity)
    });
    if logged {
        Ok(())
    } else {
        Err(format!(
            "{node}'s ztunnel wrote no access log for {identity}"
        ))
    }
}

/// **strict-refuses-plaintext** proves that PeerAuthentication STRICT, as istiod converts it
/// (the static `istio-system/istio_converted_static_strict` DENY of any peer without a
/// principal, referenced by echo), makes node-b's ztunnel close a plaintext connection that
/// inbound capture redirected to its 15006, and that the echo app never receives those bytes.
fn strict_refuses_plaintext() -> Plan {
    Plan {
        local_config: local_config_yaml(&[STRICT_POLICY_KEY], STRICT_POLICY_YAML),
        tasks: vec![Task {
            node: NODE_A,
            name: "outsider",
            body: Box::new(|ctx| Box::pin(strict_outsider(ctx))),
        }],
        timeline: Vec::new(),
    }
}

const STRICT_POLICY_KEY: &str = "istio-system/istio_converted_static_strict";
const STRICT_POLICY_YAML: &str = r#"- name: istio_converted_static_strict
  namespace: istio-system
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - notPrincipals: [!Presence []]
"#;

async fn strict_outsider(ctx: Ctx) -> anyhow::Result<()> {
    let destination = SocketAddr::new(ECHO_IP, ECHO_PORT);
    let mut stream = connect_uncaptured(&ctx, OUTSIDER_IP, destination, NODE_B).await?;
    match exchange(&mut stream, PLAINTEXT_STRICT).await {
        Reply::Closed { received: 0 } | Reply::Failed(_) => {
            ctx.record("outsider: connection closed without a reply");
            Ok(())
        }
        other => bail!("plaintext under STRICT was not refused: {other}"),
    }
}

fn check_strict_refuses_plaintext(out: &RunOutput) -> Result<(), String> {
    if out.echo_received(PLAINTEXT_STRICT) {
        return Err("echo received plaintext that STRICT should have refused".into());
    }
    denied_by(out, NODE_B, STRICT_POLICY_KEY, 1)
}

/// **permissive-accepts-plaintext** is the same connection without the STRICT policy: node-b's
/// ztunnel admits plaintext on 15006 and delivers it, and echo answers. It is also the wire
/// tap's positive control: the plaintext that legitimately crosses between the nodes here must
/// be visible to the tap, which shows the tap reads the real in-flight bytes.
fn permissive_accepts_plaintext() -> Plan {
    Plan {
        local_config: local_config_yaml(&[], ""),
        tasks: vec![Task {
            node: NODE_A,
            name: "outsider",
            body: Box::new(|ctx| Box::pin(permissive_outsider(ctx))),
        }],
        timeline: Vec::new(),
    }
}

async fn permissive_outsider(ctx: Ctx) -> anyhow::Result<()> {
    let destination = SocketAddr::new(ECHO_IP, ECHO_PORT);
    let mut stream = connect_uncaptured(&ctx, OUTSIDER_IP, destination, NODE_B).await?;
    expect_echo(&ctx, &mut stream, PLAINTEXT_PERMISSIVE).await?;
    stream.shutdown().await.context("half-close")?;
    expect_closed(&ctx, &mut stream).await
}

fn check_permissive_accepts_plaintext(out: &RunOutput) -> Result<(), String> {
    if !out.echo_received(PLAINTEXT_PERMISSIVE) {
        return Err("echo never received the plaintext".into());
    }
    complete_tap(out)?;
    let seen = out.wire.flows_containing(PLAINTEXT_PERMISSIVE);
    let inbound_plaintext = dataplane::ztunnel::Ports::default().inbound_plaintext;
    if !seen.iter().any(|f| f.dst.port() == inbound_plaintext) {
        return Err(format!(
            "wire tap did not see the plaintext on its way to node-b:{inbound_plaintext} ({})",
            out.wire.summary()
        ));
    }
    Ok(())
}

/// **deny-closes-open-connection** proves that policy applies to connections already open:
/// web holds an HBONE connection to echo (two round trips succeed), then a DENY for web's
/// principal is pushed into node-b's ztunnel state; the open connection must be closed, and a
/// new connection refused before echo sees its bytes. No payload crosses between the nodes in
/// plaintext.
fn deny_closes_open_connection() -> Plan {
    Plan {
        local_config: local_config_yaml(&[], ""),
        tasks: vec![Task {
            node: NODE_A,
            name: "web",
            body: Box::new(|ctx| Box::pin(deny_web(ctx))),
        }],
        timeline: vec![Step {
            at: DENY_AT,
            node: NODE_B,
            action: Action::InsertPolicy(deny_web_policy()),
        }],
    }
}

/// When the DENY is pushed.
const DENY_AT: Duration = Duration::from_millis(1500);
/// When web checks, on the open connection, that it still works just before the DENY.
const STILL_OPEN_AT: Duration = Duration::from_millis(1000);
const DENY_POLICY_KEY: &str = "shop/deny-web";

/// An AuthorizationPolicy in `shop` without a selector (so namespace scope) denying web's
/// principal, as istiod converts it.
fn deny_web_policy() -> Authorization {
    let web = Identity::new(DEFAULT_TRUST_DOMAIN, "shop", "web");
    Authorization {
        name: "deny-web".into(),
        namespace: "shop".into(),
        scope: Scope::Namespace,
        action: PolicyAction::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    principals: vec![StringMatch::Exact(web.principal())],
                    ..Match::default()
                }],
            }],
        }],
        dry_run: false,
    }
}

async fn deny_web(ctx: Ctx) -> anyhow::Result<()> {
    let destination = SocketAddr::new(ECHO_IP, ECHO_PORT);
    let mut stream = connect_captured(&ctx, NODE_A, WEB_IP, destination).await?;
    expect_echo(&ctx, &mut stream, DENY_FIRST).await?;
    sleep_until(STILL_OPEN_AT).await;
    expect_echo(&ctx, &mut stream, DENY_SECOND).await?;

    // The DENY arrives; the open connection must be closed, with nothing more echoed.
    let mut buf = [0u8; 256];
    let deadline = (DENY_AT + REPLY_TIMEOUT).saturating_sub(sim_now());
    match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
        Err(_) => bail!("the open connection was still open after the DENY policy"),
        Ok(Ok(n)) if n > 0 => bail!("{n} unexpected bytes on the open connection"),
        Ok(result) => {
            let now = sim_now();
            if now < DENY_AT {
                bail!(
                    "the connection closed at {}ms, before the DENY policy at {}ms",
                    now.as_millis(),
                    DENY_AT.as_millis()
                );
            }
            let how = match result {
                Ok(_) => "closed (EOF)".to_string(),
                Err(e) => format!("failed ({e})"),
            };
            ctx.record(format!("web: open connection {how} after the DENY"));
        }
    }

    drop(stream);

    // A new connection must be refused.
    let mut stream = connect_captured(&ctx, NODE_A, WEB_IP, destination).await?;
    match exchange(&mut stream, DENY_AFTER).await {
        Reply::Closed { received: 0 } | Reply::Failed(_) => {
            ctx.record("web: new connection closed without a reply");
            Ok(())
        }
        other => bail!("a new connection after the DENY was not refused: {other}"),
    }
}

fn check_deny_closes_open_connection(out: &RunOutput) -> Result<(), String> {
    for payload in [DENY_FIRST, DENY_SECOND] {
        if !out.echo_received(payload) {
            return Err(format!("echo never received {}", show(payload)));
        }
    }
    if out.echo_received(DENY_AFTER) {
        return Err("echo received bytes sent after the DENY policy".into());
    }
    // One for the open connection it closed, one for the new connection it refused.
    denied_by(out, NODE_B, DENY_POLICY_KEY, 2)?;
    no_plaintext_between_nodes(out, &[DENY_FIRST, DENY_SECOND, DENY_AFTER])?;
    only_hbone_between_nodes(out)
}

// ---------------------------------------------------------------------------------------------
// Traffic helpers.

/// Connects from the mesh pod `source` on `node` to `destination` the way in-pod capture
/// does: the connection lands on the node's ztunnel outbound listener (15001), which learns
/// `destination` as the original destination.
async fn connect_captured(
    ctx: &Ctx,
    node: &str,
    source: IpAddr,
    destination: SocketAddr,
) -> anyhow::Result<TcpStream> {
    let via = ctx.outbound_capture(node)?;
    ctx.record(format!("{source} connects to {destination} (captured)"));
    ctx.network
        .connect_redirected(Some(source), destination, via)
        .await
        .with_context(|| format!("{source} → {destination} via {via}"))
}

/// Connects from `source`, a pod outside the mesh, to the mesh pod `destination` on
/// `destination_node`: nothing captures it on the way out, and the destination's inbound
/// capture hands it to that node's ztunnel inbound plaintext listener (15006).
async fn connect_uncaptured(
    ctx: &Ctx,
    source: IpAddr,
    destination: SocketAddr,
    destination_node: &str,
) -> anyhow::Result<TcpStream> {
    let via = ctx.inbound_plaintext_capture(destination_node)?;
    ctx.record(format!("{source} connects to {destination} (not captured)"));
    ctx.network
        .connect_redirected(Some(source), destination, via)
        .await
        .with_context(|| format!("{source} → {destination} via {via}"))
}

/// What came back after sending a payload.
#[derive(Debug)]
enum Reply {
    /// The same bytes.
    Echoed,
    /// The peer closed after sending `received` bytes (fewer than the payload, or different).
    Closed { received: usize },
    /// Writing or reading failed (e.g. the connection was reset).
    Failed(String),
    /// Nothing within [`REPLY_TIMEOUT`].
    Silent,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Echoed => write!(f, "the payload was echoed"),
            Reply::Closed { received } => write!(f, "closed after {received} bytes"),
            Reply::Failed(e) => write!(f, "failed: {e}"),
            Reply::Silent => write!(f, "no reply within {}s", REPLY_TIMEOUT.as_secs()),
        }
    }
}

/// Sends `payload` and reads until as many bytes came back, the peer closed, or time ran out.
async fn exchange(stream: &mut TcpStream, payload: &[u8]) -> Reply {
    if let Err(e) = stream.write_all(payload).await {
        return Reply::Failed(e.to_string());
    }
    let read = async {
        let mut back = Vec::with_capacity(payload.len());
        let mut buf = [0u8; 1024];
        while back.len() < payload.len() {
            match stream.read(&mut buf).await {
                Ok(0) => {
                    return Reply::Closed {
                        received: back.len(),
                    };
                }
                Ok(n) => back.extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) => return Reply::Failed(e.to_string()),
            }
        }
        if back == payload {
            Reply::Echoed
        } else {
            Reply::Closed {
                received: back.len(),
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, read)
        .await
        .unwrap_or(Reply::Silent)
}

/// Sends `payload` and requires it back.
async fn expect_echo(ctx: &Ctx, stream: &mut TcpStream, payload: &[u8]) -> anyhow::Result<()> {
    match exchange(stream, payload).await {
        Reply::Echoed => {
            ctx.record(format!("echoed {} bytes", payload.len()));
            Ok(())
        }
        other => bail!("sent {}: {other}", show(payload)),
    }
}

/// Requires the peer to close (after our half-close) with nothing more to say.
async fn expect_closed(ctx: &Ctx, stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(0)) => {
            ctx.record("connection closed");
            Ok(())
        }
        Ok(Ok(n)) => bail!("{n} unexpected bytes before the close"),
        Ok(Err(e)) => bail!("connection failed instead of closing: {e}"),
        Err(_) => bail!("peer did not close within {}s", REPLY_TIMEOUT.as_secs()),
    }
}

fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Sleeps until `at` (simulated time since the start of the run).
async fn sleep_until(at: Duration) {
    tokio::time::sleep(at.saturating_sub(sim_now())).await;
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn show(payload: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(payload))
}

/// The tap must have seen every segment of every flow, or its verdicts mean nothing.
fn complete_tap(out: &RunOutput) -> Result<(), String> {
    if out.wire.flows.is_empty() {
        return Err("nothing crossed between node-a and node-b".into());
    }
    let incomplete = out.wire.incomplete();
    if let Some(flow) = incomplete.first() {
        return Err(format!(
            "wire tap missed segments of {} → {} ({} flows incomplete)",
            flow.src,
            flow.dst,
            incomplete.len()
        ));
    }
    Ok(())
}

/// None of `payloads` appears in any flow between the nodes.
fn no_plaintext_between_nodes(out: &RunOutput, payloads: &[&[u8]]) -> Result<(), String> {
    complete_tap(out)?;
    for payload in payloads {
        if let Some(flow) = out.wire.flows_containing(payload).first() {
            return Err(format!(
                "plaintext {} crossed between the nodes: {} → {}",
                show(payload),
                flow.src,
                flow.dst
            ));
        }
    }
    Ok(())
}

/// Every flow between the nodes is HBONE (to or from 15008).
fn only_hbone_between_nodes(out: &RunOutput) -> Result<(), String> {
    let hbone = dataplane::hbone::HBONE_PORT;
    match out.wire.flows.iter().find(|f| !f.touches_port(hbone)) {
        Some(flow) => Err(format!(
            "non-HBONE flow between the nodes: {} → {}",
            flow.src, flow.dst
        )),
        None => Ok(()),
    }
}

/// The ztunnel on `node` logged at least `times` denials by `policy`: the evaluator's own
/// explanation (`… denied by <policy> rule <n>`), so the refusal is known to come from that
/// policy and not from some other failure.
fn denied_by(out: &RunOutput, node: &str, policy: &str, times: usize) -> Result<(), String> {
    let needle = format!("denied by {policy}");
    let seen = out
        .events
        .iter()
        .filter(|e| e.host == node && e.what.contains(&needle))
        .count();
    if seen >= times {
        Ok(())
    } else {
        Err(format!(
            "{node}'s ztunnel logged {seen} denials by {policy}, expected at least {times}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world;

    /// The negative control for the wire tap: with echo taken out of the mesh (protocol TCP),
    /// web's ztunnel connects to it directly in plaintext, and basic-mtls's check must catch
    /// the payload on the wire.
    #[test]
    fn wire_tap_catches_plaintext_when_the_mesh_does_not_encrypt() {
        let mut plan = basic_mtls();
        let hbone_echo = format!("workloadIps: [\"{ECHO_IP}\"]\n  protocol: HBONE");
        assert!(plan.local_config.contains(&hbone_echo));
        plan.local_config = plan.local_config.replace(
            &hbone_echo,
            &format!("workloadIps: [\"{ECHO_IP}\"]\n  protocol: TCP"),
        );
        let out = world::run(plan, 1);
        assert_eq!(out.failure, None, "the traffic itself still works");
        let err = check_basic_mtls(&out).unwrap_err();
        assert!(err.starts_with("plaintext \"MARKER-basic-mtls"), "{err}");
    }
}
