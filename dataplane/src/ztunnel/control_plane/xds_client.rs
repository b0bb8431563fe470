//! The Delta ADS client (wire facts §1): one stream carrying both types, the node sent on the
//! first request of each, every response applied resource by resource and answered with an
//! ACK or a NACK naming what was rejected, reconnects announcing the versions held, and
//! readiness once both types have been answered.
//!
//! While istiod is away the state stays as it was: connections keep being served from it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost_types::{Struct, Value, value::Kind};
use tokio::sync::mpsc;

use super::channel::{ControlPlaneClient, ControlPlaneError};
use crate::state::StateHandle;
use crate::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use crate::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, ResourceVersions, apply_response};
use crate::ztunnel::Config;
use crate::ztunnel::metrics::{XdsMetrics, XdsTerminationLabels, XdsUrlLabels};

/// Largest response accepted, as upstream.
const MAX_MESSAGE: usize = 200 * 1024 * 1024;
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The node a proxy announces (wire facts §1.2): `role` is `ztunnel` or `waypoint`.
pub(crate) fn node(config: &Config, role: &str) -> Node {
    let id = format!(
        "{role}~{}~{}.{}~{}.svc.cluster.local",
        config.instance_ip, config.pod_name, config.pod_namespace, config.pod_namespace
    );
    let string = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let fields = BTreeMap::from([
        ("NAME".to_string(), string(&config.pod_name)),
        ("NAMESPACE".to_string(), string(&config.pod_namespace)),
        ("INSTANCE_IPS".to_string(), string(&config.instance_ip)),
        ("NODE_NAME".to_string(), string(&config.node_name)),
        ("CLUSTER_ID".to_string(), string(&config.cluster_id)),
    ]);
    Node {
        id,
        metadata: Some(Struct { fields }),
        ..Node::default()
    }
}

/// What a Delta ADS client asks for and how it applies what arrives: the ztunnel's two
/// upstream types, or a waypoint's addresses and its own configuration.
pub trait Subscriber: Send + Sync + 'static {
    /// The node announced on the first request of each type.
    fn node(&self) -> Node;
    /// Type URLs with the names asked for (none: wildcard).
    fn subscriptions(&self) -> Vec<(&'static str, Vec<String>)>;
    /// Applies one response; the ACK or NACK to send.
    fn apply(
        &self,
        versions: &mut ResourceVersions,
        response: &DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest;
}

/// The ztunnel's subscriptions: every address and every authorization policy, applied to
/// its state.
struct ZtunnelSubscriber {
    config: Arc<Config>,
    state: StateHandle,
}

impl Subscriber for ZtunnelSubscriber {
    fn node(&self) -> Node {
        node(&self.config, "ztunnel")
    }

    fn subscriptions(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            (ADDRESS_TYPE_URL, Vec::new()),
            (AUTHORIZATION_TYPE_URL, Vec::new()),
        ]
    }

    fn apply(
        &self,
        versions: &mut ResourceVersions,
        response: &DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest {
        apply_response(&self.state, versions, response)
    }
}

/// How one stream ended.
struct Ended {
    error: Option<ControlPlaneError>,
    /// Whether any response arrived (then the next attempt starts from a short backoff).
    progressed: bool,
}

async fn session(
    subscriber: &dyn Subscriber,
    client: &ControlPlaneClient,
    synced: &AtomicBool,
    versions: &mut ResourceVersions,
    metrics: &XdsMetrics,
) -> Ended {
    let mut progressed = false;
    let result = async {
        let (tx, mut rx) = mpsc::channel(16);
        let subscriptions = subscriber.subscriptions();
        for (type_url, names) in &subscriptions {
            let initial = DeltaDiscoveryRequest {
                node: Some(subscriber.node()),
                type_url: type_url.to_string(),
                resource_names_subscribe: names.clone(),
                initial_resource_versions: versions.initial(type_url),
                ..DeltaDiscoveryRequest::default()
            };
            let _ = tx.try_send(initial);
        }
        let mut request =
            tonic::Request::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        client.authorize(&mut request)?;
        let mut ads = AggregatedDiscoveryServiceClient::new(client.channel())
            .max_decoding_message_size(MAX_MESSAGE);
        let mut responses = ads.delta_aggregated_resources(request).await?.into_inner();
        tracing::info!(target = %client.target.host, "xDS stream open");
        let mut answered = BTreeSet::new();
        while let Some(response) = responses.message().await? {
            progressed = true;
            let labels = XdsUrlLabels {
                url: response.type_url.clone(),
            };
            metrics.messages.get_or_create(&labels).inc();
            metrics
                .message_bytes
                .get_or_create(&labels)
                .inc_by(prost::Message::encoded_len(&response) as u64);
            let reply = subscriber.apply(versions, &response);
            answered.insert(response.type_url.clone());
            if tx.send(reply).await.is_err() {
                break;
            }
            if subscriptions
                .iter()
                .all(|(type_url, _)| answered.contains(*type_url))
                && !synced.swap(true, Ordering::AcqRel)
            {
                tracing::info!("xDS synced: every subscribed type received");
            }
        }
        Ok::<_, ControlPlaneError>(())
    }
    .await;
    Ended {
        error: result.err(),
        progressed,
    }
}

/// Keeps a stream to istiod open for as long as it runs, applying what arrives to `state`;
/// `synced` turns true once both types have been answered. The ztunnel runs this; so do
/// benchmarks that simulate many ztunnels' control-plane side only.
pub async fn run_xds_client(
    config: Arc<Config>,
    client: ControlPlaneClient,
    state: StateHandle,
    synced: Arc<AtomicBool>,
    metrics: XdsMetrics,
) {
    let subscriber = ZtunnelSubscriber { config, state };
    run_subscriber(&subscriber, client, synced, metrics).await
}

/// Keeps a stream open for `subscriber`, reconnecting with backoff and announcing the
/// versions it holds; `synced` turns true once every subscribed type has been answered.
pub async fn run_subscriber(
    subscriber: &dyn Subscriber,
    client: ControlPlaneClient,
    synced: Arc<AtomicBool>,
    metrics: XdsMetrics,
) {
    let mut versions = ResourceVersions::default();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let ended = session(subscriber, &client, &synced, &mut versions, &metrics).await;
        let reason = match &ended.error {
            None => "Complete",
            Some(ControlPlaneError::Connect(_)) => "ConnectionError",
            Some(_) => "Error",
        };
        metrics
            .terminations
            .get_or_create(&XdsTerminationLabels {
                reason: reason.into(),
            })
            .inc();
        if ended.progressed {
            backoff = INITIAL_BACKOFF;
        }
        match ended.error {
            None => tracing::info!("xDS stream ended by the server; reconnecting"),
            Some(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "xDS stream failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
