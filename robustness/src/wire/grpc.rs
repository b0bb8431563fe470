//! gRPC to istiod: Delta ADS streams through tonic (for the happy-path probe and NACKs), and
//! through a bare HTTP/2 connection whose receive window is zero, for a client that opens
//! streams and never reads what it is sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use dataplane::seams::SystemClock;
use dataplane::xds::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use dataplane::xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
};
use dataplane::xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use dataplane::ztunnel::ControlPlaneClient;
use prost::Message;
use prost_types::{Struct, Value, value::Kind};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::mesh::Mesh;

/// The node a ztunnel on `node` announces.
pub fn node(mesh: &Mesh, node: &str, ip: std::net::IpAddr) -> Node {
    let string = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let _ = mesh;
    Node {
        id: format!("ztunnel~{ip}~ztunnel-{node}.istio-system~istio-system.svc.cluster.local"),
        metadata: Some(Struct {
            fields: BTreeMap::from([
                ("NAME".to_string(), string(&format!("ztunnel-{node}"))),
                ("NAMESPACE".to_string(), string("istio-system")),
                ("INSTANCE_IPS".to_string(), string(&ip.to_string())),
                ("NODE_NAME".to_string(), string(node)),
                ("CLUSTER_ID".to_string(), string("Kubernetes")),
            ]),
        }),
        ..Node::default()
    }
}

/// The first request of each of the ztunnel's two types.
pub fn initial_requests(node: &Node) -> Vec<DeltaDiscoveryRequest> {
    [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]
        .into_iter()
        .map(|type_url| DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.to_string(),
            ..DeltaDiscoveryRequest::default()
        })
        .collect()
}

/// An open Delta ADS stream: what to send on, and what arrives.
pub struct AdsStream {
    pub send: mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: Streaming<DeltaDiscoveryResponse>,
}

/// Opens a Delta ADS stream through `client` and sends `first`.
pub async fn open_ads(
    client: &ControlPlaneClient,
    first: Vec<DeltaDiscoveryRequest>,
) -> anyhow::Result<AdsStream> {
    let (send, mut rx) = mpsc::channel(64);
    for request in first {
        send.try_send(request)?;
    }
    let mut request =
        tonic::Request::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    client.authorize(&mut request)?;
    let responses = AggregatedDiscoveryServiceClient::new(client.channel())
        .max_decoding_message_size(64 << 20)
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    Ok(AdsStream { send, responses })
}

/// Waits for one response of each of the ztunnel's types; their nonces by type.
pub async fn both_answered(stream: &mut AdsStream) -> anyhow::Result<BTreeMap<String, String>> {
    let mut nonces = BTreeMap::new();
    while nonces.len() < 2 {
        let response = stream
            .responses
            .message()
            .await?
            .context("the stream ended before both types were answered")?;
        nonces.insert(response.type_url, response.nonce);
    }
    Ok(nonces)
}

/// gRPC's length-prefixed framing of one message.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// istiod's TLS client configuration (its root, ALPN h2).
pub fn istiod_tls(mesh: &Mesh) -> anyhow::Result<rustls::ClientConfig> {
    let roots = CertificateDer::pem_slice_iter(mesh.root_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("istiod's root")?;
    Ok(dataplane::identity::control_plane_client_config(
        &roots,
        Arc::new(SystemClock),
    )?)
}

/// An HTTP/2 connection to istiod's TLS port that grants no receive window: the server can
/// answer headers but never send a byte of a response body.
pub async fn never_reading_connection(mesh: &Mesh) -> anyhow::Result<H2Connection> {
    let to = SocketAddr::new(mesh.istiod_ip(), crate::mesh::ports::XDS_TLS);
    let tls = super::tls::connect(None, to, istiod_tls(mesh)?).await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .initial_connection_window_size(65_535)
        .handshake(tls)
        .await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H2Connection { send, driver })
}

/// An HTTP/2 client connection whose socket closes when this is dropped.
pub struct H2Connection {
    pub send: h2::client::SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens one Delta ADS stream on `send` carrying `body`, and never reads its response. The
/// stream's send half is kept (returned) so that the request stays open.
pub async fn open_unread_stream(
    send: &mut h2::client::SendRequest<Bytes>,
    host: &str,
    token: &str,
    body: Bytes,
) -> anyhow::Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://{host}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .header("clusterid", "Kubernetes")
        .body(())?;
    let mut ready = tokio::time::timeout(Duration::from_secs(2), send.clone().ready())
        .await
        .context("no stream capacity within 2 s")??;
    let (response, mut stream) = ready.send_request(request, false)?;
    stream.send_data(body, false)?;
    Ok((response, stream))
}
