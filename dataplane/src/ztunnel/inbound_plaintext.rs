//! Inbound plaintext (15006): connections captured on their way into a local workload that did
//! not come through HBONE. They carry no identity, so PeerAuthentication STRICT (a DENY of
//! anything without a principal) and identity-based ALLOW policies refuse them.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::Inner;
use super::access_log::{ConnectionLog, Direction};
use super::connections::policy_closed;
use super::metrics::{Reporter, Traffic};
use crate::hbone::{ByteCounts, Counted};
use crate::policy::{ConnectionContext, evaluate};
use crate::seams::Accepted;

pub(crate) async fn serve(inner: Arc<Inner>, accepted: Accepted) {
    let started = tokio::time::Instant::now();
    let Accepted {
        mut stream,
        peer,
        destination,
    } = accepted;
    let fail = |reason: &str| {
        tracing::warn!(src.addr = %peer, dst.addr = %destination, direction = "inbound", error = %reason, "connection failed");
    };
    let Some(workload) = inner
        .state
        .read(|state| inner.local_workload(state, destination.ip()))
    else {
        return fail("no local workload at the original destination");
    };
    if inner
        .config
        .ports
        .proxy_ports()
        .contains(&destination.port())
        || inner.addresses.reached_by(destination)
    {
        return fail("destination is one of this proxy's own ports");
    }
    let context = ConnectionContext {
        source_identity: None,
        source_ip: peer.ip(),
        destination_ip: destination.ip(),
        destination_port: destination.port(),
    };
    let decision = inner.state.read(|state| {
        let policies = state.policies_for(&workload);
        evaluate(&context, policies.iter().map(|p| &**p))
    });
    let labels = |flags: &'static str| {
        Traffic {
            reporter: Reporter::Destination,
            source: None,
            source_identity: None,
            destination: Some(&workload),
            destination_identity: None,
            service: None,
            response_flags: flags,
            mutual_tls: false,
        }
        .labels()
    };
    if !decision.allowed() {
        inner.metrics.failed.get_or_create(&labels("DENY")).inc();
        // Logged as decided, before the client can see the close.
        fail(&decision.to_string());
        let _ = stream.shutdown().await;
        return;
    }
    let tracked = inner.tracker.register(context, workload.uid.clone());
    let counts = Arc::new(ByteCounts::default());
    // From the client's own address where this host can, as on the HBONE path.
    let mut upstream = match inner
        .seams
        .network
        .connect_from_pod(destination.ip(), Some(peer.ip()), destination)
        .await
    {
        Ok(s) => Counted::new(s, counts.clone()),
        Err(err) => {
            inner.metrics.failed.get_or_create(&labels("CONNECT")).inc();
            return fail(&format!("connect to {destination} failed: {err}"));
        }
    };
    let labels = labels("-");
    inner.metrics.opened.get_or_create(&labels).inc();
    let mut closed = tracked.closed.clone();
    let mut terminate = inner.terminate.clone();
    let result = tokio::select! {
        biased;
        () = super::signalled(&mut terminate) => Err("proxy terminated".to_string()),
        reason = policy_closed(&mut closed) => Err(format!("closed by policy change: {reason}")),
        r = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => r.map(|_| ()).map_err(|e| e.to_string()),
    };
    drop(tracked);
    let error = result.err();
    let (recv, sent) = (counts.written(), counts.read());
    inner.metrics.closed.get_or_create(&labels).inc();
    inner
        .metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(recv);
    inner.metrics.sent_bytes.get_or_create(&labels).inc_by(sent);
    ConnectionLog {
        direction: Direction::Inbound,
        src_addr: peer,
        dst_addr: destination,
        hbone_authority: None,
        source: None,
        source_identity: None,
        destination: Some(&workload),
        destination_identity: None,
        service: None,
        bytes_sent: sent,
        bytes_recv: recv,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
}
