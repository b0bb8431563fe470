//! A Delta ADS client as a ztunnel speaks it (wildcard subscriptions to both upstream types,
//! every response ACKed), keeping what istiod has told it, so a test can wait for a state and
//! measure how long it took to arrive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use dataplane::xds::proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Node};
use dataplane::xds::proto::istio::workload::Address;
use dataplane::xds::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, AddressResource, address_from_proto,
};
use prost::Message;
use tokio::sync::{mpsc, watch};

/// What the client holds, as istiod last said.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Address resources by name (`Kubernetes//Pod/ns/name`, `ns/hostname`).
    pub addresses: BTreeMap<String, AddressResource>,
    /// Authorization resource names (`ns/name`).
    pub policies: Vec<String>,
    /// Responses received.
    pub responses: u64,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
}

impl View {
    /// The workload of pod `namespace/name`, if held.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&dataplane::state::Workload> {
        self.addresses.values().find_map(|a| match a {
            AddressResource::Workload(w) if w.namespace == namespace && w.name == name => {
                Some(&**w)
            }
            _ => None,
        })
    }

    /// The service `namespace/hostname`, if held.
    pub fn service(&self, key: &str) -> Option<&dataplane::state::Service> {
        match self.addresses.get(key) {
            Some(AddressResource::Service(s)) => Some(s),
            _ => None,
        }
    }

    pub fn has_policy(&self, key: &str) -> bool {
        self.policies.iter().any(|p| p == key)
    }
}

/// A connected client; the stream lives as long as it does.
pub struct AdsClient {
    view: watch::Receiver<View>,
    _requests: mpsc::Sender<DeltaDiscoveryRequest>,
}

fn subscribe(type_url: &str, node: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Node::default()
        }),
        type_url: type_url.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

impl AdsClient {
    /// Connects to istiod's plaintext port, retrying for up to `limit` while istiod starts.
    pub async fn connect(address: SocketAddr, node: &str, limit: Duration) -> AdsClient {
        let started = Instant::now();
        let channel = loop {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap();
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if started.elapsed() < limit => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("istiod at {address} never answered: {e}"),
            }
        };
        let (tx, mut rx) = mpsc::channel(16);
        for type_url in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
            tx.send(subscribe(type_url, node)).await.unwrap();
        }
        let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(requests)
            .await
            .unwrap()
            .into_inner();
        let (view_tx, view) = watch::channel(View::default());
        let acks = tx.clone();
        tokio::spawn(async move {
            loop {
                let response = match responses.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        view_tx.send_modify(|v| v.ended = Some("closed by istiod".into()));
                        return;
                    }
                    Err(status) => {
                        view_tx.send_modify(|v| v.ended = Some(status.to_string()));
                        return;
                    }
                };
                view_tx.send_modify(|v| {
                    v.responses += 1;
                    if response.type_url == ADDRESS_TYPE_URL {
                        for name in &response.removed_resources {
                            v.addresses.remove(name);
                        }
                        for resource in &response.resources {
                            let Some(any) = &resource.resource else {
                                continue;
                            };
                            let decoded = Address::decode(&any.value[..])
                                .map_err(|e| e.to_string())
                                .and_then(|a| address_from_proto(a).map_err(|e| e.0));
                            match decoded {
                                Ok(address) => {
                                    v.addresses.insert(resource.name.clone(), address);
                                }
                                Err(e) => panic!("undecodable {}: {e}", resource.name),
                            }
                        }
                    } else if response.type_url == AUTHORIZATION_TYPE_URL {
                        v.policies
                            .retain(|p| !response.removed_resources.contains(p));
                        for resource in &response.resources {
                            if !v.policies.contains(&resource.name) {
                                v.policies.push(resource.name.clone());
                            }
                        }
                    }
                });
                let ack = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    ..DeltaDiscoveryRequest::default()
                };
                if acks.send(ack).await.is_err() {
                    return;
                }
            }
        });
        AdsClient {
            view,
            _requests: tx,
        }
    }

    /// What the client holds now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Waits until `condition` holds of the view, for at most `limit`: how long it took, or
    /// `None` on timeout.
    pub async fn wait(
        &mut self,
        limit: Duration,
        condition: impl Fn(&View) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        let met = matches!(
            tokio::time::timeout(limit, self.view.wait_for(|v| condition(v))).await,
            Ok(Ok(_))
        );
        // Otherwise the time is up, or the reader task ended (the stream closed).
        (met || condition(&self.view.borrow())).then(|| started.elapsed())
    }
}

/// The view as a short text, for failure messages.
pub fn describe(view: &View) -> String {
    let mut names: Vec<&str> = view.addresses.keys().map(String::as_str).collect();
    names.extend(view.policies.iter().map(String::as_str));
    format!(
        "{} responses, ended: {:?}, holding: {}",
        view.responses,
        view.ended,
        names.join(", ")
    )
}
