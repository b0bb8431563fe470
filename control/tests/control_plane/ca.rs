//! The CA API over real TLS: who may get which identity, and bad input refused with a clear
//! status while the CA keeps serving everyone else.

use std::collections::BTreeMap;
use std::time::Duration;

use dataplane::identity::{CertificateRequest, Identity};
use dataplane::seams::Clock;
use dataplane::seams::{Seams, SystemClock};
use dataplane::xds::proto::istio::v1::auth::IstioCertificateRequest;
use dataplane::xds::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use dataplane::ztunnel::{AuthToken, CaClient, CertificateProvider, ControlPlaneClient};
use prost_types::{Struct, Value, value::Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn client(net: [u8; 3], root: &str, token: Option<String>) -> ControlPlaneClient {
    let seams = Seams::real(1);
    ControlPlaneClient::new(
        &format!("https://{}:15012", ip(net, 1)),
        root,
        token.map(AuthToken::Literal),
        "Kubernetes",
        seams.network,
        seams.clock,
    )
    .unwrap()
}

async fn fetch(client: ControlPlaneClient, identity: &Identity) -> Result<Identity, String> {
    CaClient::new(client, Duration::from_secs(3600))
        .fetch(identity)
        .await
        .map(|c| c.identity)
        .map_err(|e| e.to_string())
}

fn web() -> Identity {
    Identity::new("cluster.local", "shop", "web")
}

#[tokio::test]
async fn a_node_gets_identities_of_its_own_workloads_only() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    istiod.publish(snapshot(net, ""));
    let bundle = istiod.trust_bundle();
    let node_a = istiod.issue_token("node-a", None, Duration::from_secs(60));
    let node_b = istiod.issue_token("node-b", None, Duration::from_secs(60));

    assert_eq!(
        fetch(client(net, &bundle, Some(node_a)), &web()).await,
        Ok(web())
    );
    let err = fetch(client(net, &bundle, Some(node_b)), &web())
        .await
        .unwrap_err();
    assert!(
        err.contains(
            "no workload with identity spiffe://cluster.local/ns/shop/sa/web runs on node node-b"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tokens_are_checked() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    istiod.publish(snapshot(net, ""));
    let bundle = istiod.trust_bundle();

    let err = fetch(client(net, &bundle, None), &web()).await.unwrap_err();
    assert!(err.contains("no bearer token"), "{err}");

    let expired = control::ca::TokenSigner::new(&TOKEN_SECRET).issue(
        "node-a",
        None,
        Duration::from_secs(60),
        SystemClock.now() - Duration::from_secs(3600),
    );
    let err = fetch(client(net, &bundle, Some(expired)), &web())
        .await
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");

    let forged = control::ca::TokenSigner::new(&[1; 32]).issue(
        "node-a",
        None,
        Duration::from_secs(60),
        SystemClock.now(),
    );
    let err = fetch(client(net, &bundle, Some(forged)), &web())
        .await
        .unwrap_err();
    assert!(err.contains("signature"), "{err}");
}

async fn raw_request(
    client: &ControlPlaneClient,
    csr: String,
    ttl: i64,
    impersonate: &str,
) -> Result<Vec<String>, tonic::Status> {
    let metadata = Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_string(),
            Value {
                kind: Some(Kind::StringValue(impersonate.into())),
            },
        )]),
    };
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: Some(metadata),
    });
    client.authorize(&mut request).unwrap();
    IstioCertificateServiceClient::new(client.channel())
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    istiod.publish(snapshot(net, ""));
    let token = istiod.issue_token("node-a", None, Duration::from_secs(60));
    let c = client(net, &istiod.trust_bundle(), Some(token));
    let good_csr = CertificateRequest::new(&web()).unwrap().csr_pem;

    let chain = raw_request(&c, good_csr.clone(), 0, &web().to_string())
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "[leaf, roots]");
    assert_eq!(chain[1], istiod.trust_bundle());

    let err = raw_request(&c, "not a CSR".into(), 0, &web().to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("CSR rejected"), "{}", err.message());

    let err = raw_request(&c, good_csr.clone(), 365 * 24 * 3600, &web().to_string())
        .await
        .unwrap_err();
    assert!(
        err.message().contains("exceeds the maximum"),
        "{}",
        err.message()
    );

    let err = raw_request(&c, good_csr.clone(), 0, "spiffe://evil.org/ns/shop/sa/web")
        .await
        .unwrap_err();
    assert!(
        err.message().contains("outside trust domain"),
        "{}",
        err.message()
    );

    let err = raw_request(&c, good_csr.clone(), 0, "not-spiffe")
        .await
        .unwrap_err();
    assert!(
        err.message().contains("not a SPIFFE identity"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn garbage_and_stalled_clients_on_15012_disturb_no_one() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    istiod.publish(snapshot(net, ""));
    let address = std::net::SocketAddr::new(ip(net, 1), 15012);

    // One client stalls without a byte; another sends garbage instead of a TLS hello.
    let _stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(address).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the garbage connection is closed, not left hanging"
    );

    // Meanwhile a real client is served.
    let token = istiod.issue_token("node-a", None, Duration::from_secs(60));
    let c = client(net, &istiod.trust_bundle(), Some(token));
    assert_eq!(fetch(c, &web()).await, Ok(web()));
}

#[tokio::test]
async fn a_client_with_the_wrong_root_does_not_trust_istiod() {
    let net = subnet();
    let istiod = start_istiod(net, &new_ca()).await;
    istiod.publish(snapshot(net, ""));
    let token = istiod.issue_token("node-a", None, Duration::from_secs(60));
    let other_root = new_ca().root_pem();
    let err = fetch(client(net, &other_root, Some(token)), &web())
        .await
        .unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
}
