//! The Delta ADS gRPC service: one task per ztunnel stream, driving an [`XdsStream`] from the
//! client's requests and from publishes, and computing each response only when the transport
//! has taken the one before: a client that does not read holds one response in istiod, plus
//! what HTTP/2 buffers on its way out, whatever the number of publishes meanwhile.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use dataplane::seams::Clock;
use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::caller::Caller;
use super::resources::SharedResources;
use super::stream::{Received, XdsStream};
use crate::ca::{TokenSigner, authenticate};

/// Counters and the last NACKs, for logs, tests and the debug endpoint.
#[derive(Debug, Default)]
pub struct XdsStats {
    pub streams_opened: AtomicU64,
    pub streams_open: AtomicU64,
    pub responses_sent: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    /// `<node>: <type>: <message>` of the most recent NACKs (newest last, at most 32), each
    /// part cut to [`MAX_CLIENT_TEXT`](super::MAX_CLIENT_TEXT) bytes: at most ~100 KiB in all.
    pub recent_nacks: Mutex<Vec<String>>,
}

/// How many NACK messages are kept.
const RECENT_NACKS: usize = 32;

/// The ADS service for one port. istiod serves it with tonic's default decoding limit of
/// 4 MiB per message (as upstream's `ISTIO_GPRC_MAXRECVMSGSIZE` default): a larger request
/// ends its stream with `OUT_OF_RANGE` before any of it is read, so one request never holds
/// more than that; what a request leaves behind is capped in [`XdsStream`].
#[derive(Clone)]
pub struct AdsService {
    resources: watch::Receiver<SharedResources>,
    /// `None`: no caller authentication (the plaintext port, as upstream's 15010).
    tokens: Option<Arc<TokenSigner>>,
    clock: Arc<dyn Clock>,
    stats: Arc<XdsStats>,
}

impl AdsService {
    pub fn new(
        resources: watch::Receiver<SharedResources>,
        tokens: Option<Arc<TokenSigner>>,
        clock: Arc<dyn Clock>,
        stats: Arc<XdsStats>,
    ) -> Self {
        AdsService {
            resources,
            tokens,
            clock,
            stats,
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn record(stats: &XdsStats, node: &str, received: &Received) {
    match received {
        Received::Subscribed { type_url } => {
            tracing::debug!(node, type_url, "subscribed");
        }
        Received::Ack { type_url, nonce } => {
            stats.acks.fetch_add(1, Ordering::Relaxed);
            // Debug only (one per response), but there to be read: a test proving that an
            // upstream ztunnel accepted every type finds its ACKs here, not just no NACK.
            tracing::debug!(node, type_url, nonce, "ACK");
        }
        Received::Nack {
            type_url,
            nonce,
            message,
        } => {
            stats.nacks.fetch_add(1, Ordering::Relaxed);
            // `error_detail`, not `message`: that name is the event's own text in `tracing`.
            tracing::warn!(node, type_url, nonce, error_detail = message, "NACK");
            let mut recent = stats
                .recent_nacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            recent.push(format!("{node}: {type_url}: {message}"));
            if recent.len() > RECENT_NACKS {
                recent.remove(0);
            }
        }
        Received::UnknownType { type_url } => {
            tracing::warn!(
                node,
                type_url,
                "request for a type this server does not serve"
            );
        }
    }
}

/// How many computed responses wait for the transport, per stream: one. The next response
/// is computed only once the transport has taken the one before, and the transport (tonic
/// over hyper's HTTP/2) takes one only when the client's flow-control window has room, so
/// the client's reading paces istiod's work and bounds what waits for it; see
/// [`XdsStream`] for why nothing is lost by computing late.
const RESPONSES_WAITING: usize = 1;

/// Runs one stream until the client goes away or the response channel closes: requests and
/// publishes are recorded as they come; a response is computed when the channel has room.
async fn drive<R>(
    mut requests: R,
    caller: Caller,
    mut resources: watch::Receiver<SharedResources>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    stats: Arc<XdsStats>,
) where
    R: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Unpin,
{
    let mut stream = XdsStream::for_caller(resources.borrow_and_update().clone(), caller);
    let mut publishes_open = true;
    // Whether the stream may have something to send: set by every request and publish,
    // cleared when it has nothing.
    let mut pending = false;
    loop {
        tokio::select! {
            biased;
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    let received = stream.on_request(request);
                    record(&stats, stream.node().unwrap_or("unknown"), &received);
                    pending |= matches!(received, Received::Subscribed { .. });
                }
                None => {
                    tracing::info!(node = stream.node().unwrap_or("unknown"), "xDS stream closed by the client");
                    break;
                }
                Some(Err(status)) => {
                    tracing::warn!(node = stream.node().unwrap_or("unknown"), error = %status.message(), "xDS stream failed");
                    break;
                }
            },
            changed = resources.changed(), if publishes_open => {
                if changed.is_err() {
                    publishes_open = false;
                    continue;
                }
                stream.on_publish(resources.borrow_and_update().clone());
                pending = true;
            }
            permit = responses.reserve(), if pending => {
                let Ok(permit) = permit else {
                    return;
                };
                match stream.next_response() {
                    Some(response) => {
                        stats.responses_sent.fetch_add(1, Ordering::Relaxed);
                        permit.send(Ok(response));
                    }
                    None => pending = false,
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world xDS is not served; use DeltaAggregatedResources",
        ))
    }

    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = match &self.tokens {
            Some(tokens) => authenticate(request.metadata(), tokens, self.clock.as_ref())
                .map(|claims| Caller::from_claims(&claims))
                .inspect_err(|s| tracing::warn!(error = %s.message(), "xDS stream refused"))?,
            None => Caller::Anonymous,
        };
        let (tx, mut rx) = mpsc::channel(RESPONSES_WAITING);
        let stats = self.stats.clone();
        stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        stats.streams_open.fetch_add(1, Ordering::Relaxed);
        let resources = self.resources.clone();
        tokio::spawn(async move {
            drive(request.into_inner(), caller, resources, tx, stats.clone()).await;
            stats.streams_open.fetch_sub(1, Ordering::Relaxed);
        });
        let out = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
